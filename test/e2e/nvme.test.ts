// The NVMe controller in the lab with the real stack: Linux's own nvme driver binds through
// pcinet.ko, nvme-cli talks to it, ext4 lives on it, fio verifies it, discards reach the card's
// backing file. The backing file is on this machine (the card), so the test reads it afterwards.
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { askCard, endpointControl } from '../../lab/card-control.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';
import { FIO_VERIFY, FIO_VERIFY_OK } from './block-workloads.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 300_000;
const SERIAL = 'PCINET0E2E';
const MODEL = 'pcinet e2e disk';
const FW = '0.9.1';

/** The block device of the first namespace of the controller at PCI address $PCINET_LAB_DEVICES. */
const findDisk = [
  'set -e',
  'dev=$PCINET_LAB_DEVICES',
  'ctrl=$(ls /sys/bus/pci/devices/$dev/nvme/)',
  'for i in $(seq 50); do [ -e "/dev/$ctrl"n1 ] && break; sleep 0.1; done',
  'disk=/dev/"$ctrl"n1',
  'echo "ctrl=$ctrl disk=$disk driver=$(basename $(readlink /sys/bus/pci/devices/$dev/driver))"',
];

/** A file of MARKED_BLOCKS 4 KiB blocks, each saying which it is: findable in the disk image. */
const MARKED_BLOCKS = 256;
const markedBlock = (n: number) =>
  Buffer.from(`pcinet e2e block ${String(n).padStart(6, '0')} `.repeat(4096 / 24).padEnd(4096, '.'));
const markedBlocks = () => Array.from({ length: MARKED_BLOCKS }, (_, n) => markedBlock(n));
const writeMarked = `const b = (n) => Buffer.from(("pcinet e2e block " + String(n).padStart(6, "0") + " ").repeat(4096 / 24).padEnd(4096, ".")); require("fs").writeFileSync(process.argv[1], Buffer.concat(Array.from({ length: ${MARKED_BLOCKS} }, (_, n) => b(n))));`;

describe.skipIf(!root)('NVMe through pcinet.ko: a disk that lives on the card', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-nvme-e2e-'));
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('nvme binds; id-ctrl/id-ns show the endpoint’s values; smart-log counts I/O; ext4 round trip', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const file = join(dir, 'disk.img');
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${file},size=64M,serial=${SERIAL},model=${MODEL.replaceAll(' ', '_')},fw=${FW}`],
      command: [
        ...findDisk,
        'nvme id-ctrl /dev/$ctrl | grep -E "^(sn|mn|fr) "',
        'nvme id-ns $disk | grep -E "^nsze|in use"',
        'before=$(nvme smart-log /dev/$ctrl | grep -E "^host_write_commands" | tr -dc 0-9)',
        'mkfs.ext4 -q -F $disk',
        'mkdir -p /tmp/mnt && mount $disk /tmp/mnt',
        'mkdir -p /tmp/mnt/tree/a/b',
        'for i in $(seq 1 40); do head -c $((i * 7919)) /dev/urandom > /tmp/mnt/tree/a/b/f$i; done',
        `node -e '${writeMarked}' /tmp/mnt/tree/marked`,
        '(cd /tmp/mnt/tree && find . -type f | sort | xargs sha256sum) > /tmp/sums',
        'sync; umount /tmp/mnt',
        'mount $disk /tmp/mnt',
        '(cd /tmp/mnt/tree && sha256sum -c --quiet /tmp/sums) && echo checksums-ok',
        'umount /tmp/mnt',
        'after=$(nvme smart-log /dev/$ctrl | grep -E "^host_write_commands" | tr -dc 0-9)',
        'echo "writes before=$before after=$after"',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/driver=nvme$/m);
    expect(r.stdout).toMatch(new RegExp(`^sn\\s+: ${SERIAL}\\s*$`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^mn\\s+: ${MODEL}\\s*$`, 'm'));
    expect(r.stdout).toMatch(new RegExp(`^fr\\s+: ${FW.replaceAll('.', '\\.')}\\s*$`, 'm'));
    expect(r.stdout).toMatch(/^nsze\s+: 0x20000$/m); // 64 MiB of 512-byte blocks
    expect(r.stdout).toMatch(/^checksums-ok$/m);
    const w = /^writes before=(\d+) after=(\d+)$/m.exec(r.stdout);
    expect(Number(w?.[2])).toBeGreaterThan(Number(w?.[1]) + 10);
    // The same bytes are in the card's backing file: every block of the marked file is in it.
    const image = readFileSync(file);
    expect(image.length).toBe(64 << 20);
    const missing = markedBlocks().filter((b) => !image.includes(b)).length;
    expect(missing).toBe(0);
  });

  // The data plane three ways: on pcinet.ko's kernel link sealed (TLS, the lab's default) or in the
  // clear (plain TCP), and through the host-agent (--no-kernel-link).
  const paths = [
    { name: 'sealed kernel link, TLS', insecure: false, kernelLink: true, sealed: true },
    { name: 'kernel link, plain TCP', insecure: true, kernelLink: true, sealed: false },
    { name: 'through the host-agent, TLS', insecure: false, kernelLink: false, sealed: false },
  ];
  /** The host-agent's log says which path the device's data plane took. */
  const tookPath = (hostAgentLog: string, p: (typeof paths)[number]) => {
    if (!p.kernelLink) expect(hostAgentLog).not.toMatch(/kernel link open/);
    else expect(hostAgentLog).toMatch(new RegExp(`"sealed":${p.sealed},"msg":"kernel link open`));
  };
  for (const p of paths) {
    it(`fio with crc32c verification: random writes 4K–128K, iodepth 32, two jobs (${p.name})`, {
      timeout: testBudget(RUN_TIMEOUT_MS),
    }, async () => {
      const r = await runInLab({
        assets,
        insecure: p.insecure,
        kernelLink: p.kernelLink,
        devices: [`nvme:file=${join(dir, `fio-${p.insecure}-${p.kernelLink}.img`)},size=128M`],
        command: [...findDisk, FIO_VERIFY, 'echo fio-status=$?'].join('\n'),
        timeoutMs: RUN_TIMEOUT_MS,
      });
      expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(FIO_VERIFY_OK);
      expect(r.stdout).toMatch(/^fio-status=0$/m);
      tookPath(r.hostAgentLog, p);
      expect(r.endpointLog).toMatch(`"kernelLink":${p.kernelLink}`);
    });
  }

  it('blkdiscard and fstrim give the space back in the card’s backing file', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const file = join(dir, 'trim.img');
    let most = 0;
    const poll = setInterval(() => {
      try {
        most = Math.max(most, statSync(file).blocks * 512);
      } catch {}
    }, 100);
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${file},size=64M`],
      command: [
        ...findDisk,
        'dd if=/dev/urandom of=$disk bs=1M count=32 oflag=direct status=none',
        'sleep 1',
        'blkdiscard $disk && echo discarded',
        'mkfs.ext4 -q -F -E nodiscard $disk && mkdir -p /tmp/mnt && mount $disk /tmp/mnt',
        'head -c 8000000 /dev/urandom > /tmp/mnt/x && sync && rm /tmp/mnt/x && sync',
        'sleep 1',
        'fstrim -v /tmp/mnt && umount /tmp/mnt',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    }).finally(() => clearInterval(poll));
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^discarded$/m);
    expect(r.stdout).toMatch(/: \d+(\.\d+)? \w*B \(\d+ bytes\) trimmed/m);
    const final = statSync(file).blocks * 512;
    expect(most).toBeGreaterThanOrEqual(32 << 20);
    expect(final).toBeLessThan(8 << 20);
    console.log(`backing file allocated: at most ${most >> 20} MiB, at the end ${final >> 20} MiB`);
  });

  it('another driver bound while the link is down (pci-stub) is left alone at link up: no oops', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'stub.img')},size=16M`],
      reconnect: true,
      command: [
        ...findDisk,
        // dmesg lines are waited for with the wall clock: TCG on a busy machine is slow.
        'await_log() { end=$(($(date +%s) + 90)); until dmesg | grep -q "$1"; do [ $(date +%s) -lt $end ] || return 1; sleep 0.2; done; }',
        askCard('stop'),
        'await_log "link down: the driver waits for a reset"',
        'echo $dev > /sys/bus/pci/drivers/nvme/unbind',
        'modprobe pci-stub',
        'echo pci-stub > /sys/bus/pci/devices/$dev/driver_override',
        'echo $dev > /sys/bus/pci/drivers/pci-stub/bind',
        'echo "while down: $(basename $(readlink /sys/bus/pci/devices/$dev/driver))"',
        askCard('start'),
        'await_log "link up: "',
        'echo "after: $(basename $(readlink /sys/bus/pci/devices/$dev/driver))"',
        'dmesg | grep -E "pcinet|pci-stub" | grep -E "link (up|down)" || true',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
      card: endpointControl(),
    });
    const out = `${r.stdout}\n${r.stderr}`;
    // A NULL dereference here used to oops the workstation: slot_reset() of a driver without
    // error handlers. The lab fails any run whose kernel log shows an oops.
    expect(r.code, out).toBe(0);
    expect(r.stdout, out).toMatch(/^while down: pci-stub$/m);
    expect(r.stdout, out).toMatch(/link up: pci-stub was bound while the link was down; leaving it/);
    expect(r.stdout, out).toMatch(/^after: pci-stub$/m);
    expect(r.guestLog).not.toMatch(/BUG: kernel NULL pointer|Oops|general protection fault/);
  });

  for (const p of [paths[0]!, paths[2]!]) {
    it(`endpoint killed and restarted during I/O: the driver resets the controller, the mounted filesystem carries on (${p.name})`, {
      timeout: testBudget(RUN_TIMEOUT_MS),
    }, async () => {
      const r = await runInLab({
        assets,
        insecure: p.insecure,
        kernelLink: p.kernelLink,
        devices: [`nvme:file=${join(dir, `restart-${p.kernelLink}.img`)},size=64M`],
        reconnect: true,
        command: [
          ...findDisk,
          'mkfs.ext4 -q -F $disk && mkdir -p /tmp/m && mount $disk /tmp/m',
          'head -c 4194304 /dev/urandom > /tmp/m/flushed && sync',
          'before=$(md5sum < /tmp/m/flushed)',
          // Writes in flight when the endpoint dies, verified after: none may be lost. Paced, so
          // they still run at the restart however fast the disk is (1536 writes at 300 per s).
          'fio --name=busy --filename=/tmp/m/busy --size=6M --rw=randwrite --bs=4k --iodepth=8 --ioengine=libaio ' +
            '--direct=1 --verify=crc32c --do_verify=1 --rate_iops=300 > /tmp/fio.log 2>&1 & fio=$!',
          'sleep 3',
          'kill -0 $fio && echo fio-running-at-restart',
          askCard('restart'),
          'if wait $fio; then echo fio-verified; else cat /tmp/fio.log; fi',
          // fio's requeued I/O completes before the reset work ends (Doorbell Buffer Config, then
          // LIVE): wait for the state, bounded by nvme's own admin command timeout (60 s).
          'c=$(ls /sys/bus/pci/devices/$dev/nvme/)',
          'for i in $(seq 600); do [ "$(cat /sys/class/nvme/$c/state)" = live ] && break; sleep 0.1; done',
          'echo "after: ctrl=$c state=$(cat /sys/class/nvme/$c/state)"',
          '[ "$(md5sum < /tmp/m/flushed)" = "$before" ] && echo flushed-data-intact',
          'echo more > /tmp/m/after && sync && cat /tmp/m/after',
          'umount /tmp/m && e2fsck -fn $disk > /tmp/fsck.log 2>&1 && echo fsck-clean || cat /tmp/fsck.log',
          'dmesg | grep -E "pcinet|nvme" | grep -iE "link|reset" || true',
        ].join('\n'),
        timeoutMs: RUN_TIMEOUT_MS,
        card: endpointControl(),
      });
      const out = `${r.stdout}\n${r.stderr}`;
      expect(r.code, out).toBe(0);
      expect(r.stdout).toMatch(/^card: restart ok$/m);
      expect(r.stdout, out).toMatch(/^fio-running-at-restart$/m);
      expect(r.endpointLog).toMatch(/endpoint killed and restarted/);
      // The same controller, reset by its driver through PCI error recovery, not a new one.
      const ctrl = /^ctrl=(nvme\d+) /m.exec(r.stdout)?.[1];
      expect(r.stdout, out).toMatch(new RegExp(`^after: ctrl=${ctrl} state=live$`, 'm'));
      expect(r.stdout, out).toMatch(/link down: the driver waits for a reset/);
      expect(r.stdout, out).toMatch(/restart after slot reset/);
      expect(r.stdout, out).toMatch(/link up: recovered/);
      expect(r.stdout, out).toMatch(/^fio-verified$/m);
      expect(r.stdout, out).toMatch(/^flushed-data-intact$/m);
      expect(r.stdout, out).toMatch(/^more$/m);
      expect(r.stdout, out).toMatch(/^fsck-clean$/m);
      expect(r.hostAgentLog).toMatch(/endpoint back: link up/);
      // With a kernel link, the kernel saw the endpoint go first and took the link down itself.
      tookPath(r.hostAgentLog, p);
      if (p.kernelLink) expect(r.hostAgentLog).toMatch(/kernel link lost/);
    });
  }
});
