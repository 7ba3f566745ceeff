// virtio-blk in the lab with the real stack: Linux's own virtio_pci and virtio_blk drive the model
// through pcinet.ko; ext4 lives on it, fio verifies it, discards reach the card's backing file,
// flushes reach its backend. The backing file is on this machine (the card), so the test reads it.
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';
import { FIO_VERIFY, FIO_VERIFY_OK } from './block-workloads.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 300_000;
const SERIAL = 'PCINETVBLK';

/** The disk of the virtio device at PCI address $PCINET_LAB_DEVICES, and its driver. */
const findDisk = [
  'set -e',
  'dev=$PCINET_LAB_DEVICES',
  'for i in $(seq 100); do ls /sys/bus/pci/devices/$dev/virtio*/block/ > /dev/null 2>&1 && break; sleep 0.1; done',
  'vd=$(ls /sys/bus/pci/devices/$dev/virtio*/block/)',
  'disk=/dev/$vd',
  'echo "disk=$disk driver=$(basename $(readlink /sys/bus/pci/devices/$dev/virtio*/driver))"',
];

/** Asks the host-agent for the endpoint's counters (SIGUSR1) and waits until they are logged. */
const logCounters = [
  `pkill -USR1 -f ' host --connect'`,
  'for i in $(seq 100); do grep -q "endpoint statistics" /run/pcinet-lab/host-agent.log && break; sleep 0.1; done',
];

/** The endpoint's counters from the host-agent's log (the model's are dev1.virtio-blk.*). */
function counters(hostAgentLog: string): Record<string, number> {
  const line = hostAgentLog.split('\n').find((l) => l.includes('endpoint statistics'));
  expect(line, hostAgentLog).toBeDefined();
  return JSON.parse(line!).counters as Record<string, number>;
}

describe.skipIf(!root)('virtio-blk through pcinet.ko: a virtio disk that lives on the card', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-vblk-e2e-'));
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('virtio_blk binds; ext4 round trip; fio verifies; discards free the card’s file; flushes reach it', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const file = join(dir, 'disk.img');
    let most = 0;
    const poll = setInterval(() => {
      try {
        most = Math.max(most, statSync(file).blocks * 512);
      } catch {}
    }, 100);
    const r = await runInLab({
      assets,
      devices: [`virtio-blk:file=${file},size=128M,serial=${SERIAL}`],
      command: [
        ...findDisk,
        'q=/sys/block/$vd/queue',
        'echo "sectors=$(cat /sys/block/$vd/size) serial=$(cat /sys/block/$vd/serial) cache=$(cat $q/write_cache) discard=$(cat $q/discard_max_bytes)"',
        'mkfs.ext4 -q -F $disk',
        'mkdir -p /tmp/mnt && mount $disk /tmp/mnt',
        'mkdir -p /tmp/mnt/tree/a/b',
        'for i in $(seq 1 30); do head -c $((i * 7919)) /dev/urandom > /tmp/mnt/tree/a/b/f$i; done',
        '(cd /tmp/mnt/tree && find . -type f | sort | xargs sha256sum) > /tmp/sums',
        'sync; umount /tmp/mnt',
        'echo 3 > /proc/sys/vm/drop_caches',
        'mount $disk /tmp/mnt',
        '(cd /tmp/mnt/tree && sha256sum -c --quiet /tmp/sums) && echo checksums-ok',
        'umount /tmp/mnt',
        FIO_VERIFY,
        'dd if=/dev/urandom of=$disk bs=1M count=32 oflag=direct conv=fsync status=none && echo flushed',
        'sleep 1',
        'blkdiscard $disk && echo discarded',
        ...logCounters,
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    }).finally(() => clearInterval(poll));
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.code, out).toBe(0);
    expect(r.stdout).toMatch(/^disk=\/dev\/vd[a-z]+ driver=virtio_blk$/m);
    expect(r.stdout).toMatch(
      new RegExp(`^sectors=262144 serial=${SERIAL} cache=write back discard=[1-9]\\d*$`, 'm'),
    );
    expect(r.stdout).toMatch(/^checksums-ok$/m);
    expect(r.stdout).toMatch(FIO_VERIFY_OK);
    expect(r.stdout).toMatch(/^flushed$/m);
    expect(r.stdout).toMatch(/^discarded$/m);
    // ext4's bytes are in the card's file; the discard gave the space back.
    const final = statSync(file).blocks * 512;
    expect(most).toBeGreaterThanOrEqual(32 << 20);
    expect(final).toBeLessThan(8 << 20);
    const c = counters(r.hostAgentLog);
    expect(c['dev1.virtio-blk.flushes']).toBeGreaterThan(0);
    expect(c['dev1.virtio-blk.discards']).toBeGreaterThan(0);
    expect(c['dev1.virtio-blk.reads']).toBeGreaterThan(0);
    expect(c['dev1.virtio-blk.writes']).toBeGreaterThan(0);
    expect(c['dev1.virtio-blk.errors']).toBe(0);
    console.log(
      `virtio-blk backing file: at most ${most >> 20} MiB, at the end ${final >> 20} MiB; ${JSON.stringify(c)}`,
    );
    // The whole disk was discarded: the card's file reads zeros (holes).
    expect(readFileSync(file).equals(Buffer.alloc(128 << 20))).toBe(true);
  });
});
