// The NVMe disk through a PCI remove + rescan and a function reset (sysfs `reset`, an FLR), as
// admins and tools do to a real NVMe: it comes back with its data, fio verifies on it, and the lab
// tears down cleanly afterwards (issue 13, item 7).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { askCard, endpointControl } from '../../lab/card-control.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';
import { FIO_VERIFY, FIO_VERIFY_OK } from './block-workloads.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 480_000;

/**
 * Guest shell: helpers over $dev (the function's PCI address).
 * - `until_ok TICKS CMD`: runs CMD every 0.1 s until it succeeds, at most TICKS times. The bounds
 *   are far above what a rescan or a reset takes on a slow TCG guest; the lab's own timeout stays
 *   the outer bound.
 * - `disk_back`: waits for the function's controller to be live and its namespace's block device to
 *   have a size, then sets $ctrl and $disk.
 * - `check_known`: reads the known region back with O_DIRECT (not from the page cache) and compares
 *   its checksum with the one written.
 */
const helpers = [
  'set -e',
  'dev=$PCINET_LAB_DEVICES',
  'until_ok() { n=$1; shift; i=0; until "$@"; do i=$((i + 1)); [ $i -le $n ] || return 1; sleep 0.1; done; }',
  'live() { ctrl=$(ls /sys/bus/pci/devices/$dev/nvme/ 2>/dev/null) && [ -n "$ctrl" ] && ' +
    '[ "$(cat /sys/class/nvme/$ctrl/state 2>/dev/null)" = live ] && ' +
    '[ -e /dev/"$ctrl"n1 ] && [ "$(cat /sys/block/"$ctrl"n1/size 2>/dev/null || echo 0)" -gt 0 ]; }',
  'disk_back() { until_ok 600 live || { echo "not back after $1"; dmesg | tail -40; return 1; }; disk=/dev/"$ctrl"n1; echo "$1: ctrl=$ctrl disk=$disk"; }',
  // The known region: 16 MiB from 96 MiB, outside what FIO_VERIFY writes (0–24 MiB, 48–72 MiB).
  'check_known() { got=$(dd if=$disk bs=1M skip=96 count=16 iflag=direct status=none | sha256sum | cut -d" " -f1); ' +
    '[ "$got" = "$want" ] && echo "known-data-ok $1" || echo "known-data-BAD $1"; }',
];

describe.skipIf(!root)('NVMe through pcinet.ko: remove + rescan and function reset', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-nvme-reset-e2e-'));
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('the disk comes back with its data after remove + rescan and after a function reset; fio verifies; the lab tears down', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'disk.img')},size=128M`],
      command: [
        ...helpers,
        'disk_back attach',
        'head -c 16777216 /dev/urandom > /tmp/known',
        'want=$(sha256sum < /tmp/known | cut -d" " -f1)',
        'dd if=/tmp/known of=$disk bs=1M seek=96 oflag=direct conv=fsync status=none',
        'check_known written',
        // A remove takes the driver off and the function off the bus; a rescan finds it again.
        'echo 1 > /sys/bus/pci/devices/$dev/remove',
        '[ ! -e /sys/bus/pci/devices/$dev ] && echo removed',
        'echo 1 > /sys/bus/pci/rescan',
        'disk_back rescan',
        'check_known rescan',
        `${FIO_VERIFY} | sed "s/^/rescan: /"`,
        // A function reset: the PCI core saves state, resets the function (FLR), restores it; the
        // nvme driver disables the controller before and resets it after.
        'echo "reset_method=$(cat /sys/bus/pci/devices/$dev/reset_method)"',
        'echo 1 > /sys/bus/pci/devices/$dev/reset && echo reset-written',
        'disk_back reset',
        'check_known reset',
        `${FIO_VERIFY} | sed "s/^/reset: /"`,
        // Once more both ways: nothing of the first round is left over.
        'echo 1 > /sys/bus/pci/devices/$dev/remove; echo 1 > /sys/bus/pci/rescan',
        'disk_back rescan2',
        'echo 1 > /sys/bus/pci/devices/$dev/reset',
        'disk_back reset2',
        'check_known again',
        'dmesg | grep -E "pcinet|nvme" | tail -30',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.code, out).toBe(0);
    expect(r.stdout, out).toMatch(/^removed$/m);
    expect(r.stdout, out).toMatch(/^reset_method=flr$/m); // FLR only: no PM or bus reset to offer
    for (const when of ['written', 'rescan', 'reset', 'again'])
      expect(r.stdout, out).toMatch(new RegExp(`^known-data-ok ${when}$`, 'm'));
    const ok = new RegExp(FIO_VERIFY_OK.source.slice(1), 'm');
    expect(r.stdout, out).toMatch(new RegExp(`^rescan: ${ok.source}`, 'm'));
    expect(r.stdout, out).toMatch(new RegExp(`^reset: ${ok.source}`, 'm'));
    // The removal reset the function; the rescanned one's DMA went through the sandbox.
    expect(r.stdout, out).toMatch(/removed from the bus: reset to its power-on state/);
    expect(r.guestLog, out).not.toMatch(/refused: no live mapping/);
    expect(r.guestLog).not.toMatch(/nvme.*(timeout|I\/O error)/i);
  });

  // The function removed while its driver waits on it: the lab's teardown stops the host-agent
  // (SIGTERM, W_DETACH) while the card hangs with writes in flight. The removed function's config
  // space reads all-ones, so nvme_remove() sees the device gone and cancels its commands at once.
  // It used to wait for their timeouts (30 s for I/O, 60 s for an admin command of a probe) inside
  // the host-agent's write() of W_DETACH, where SIGTERM could not stop it: the teardown failed.
  it('teardown while the card hangs with writes in flight: the driver lets go at once; the lab tears down', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'hung.img')},size=64M`],
      card: endpointControl(),
      command: [
        ...helpers,
        'disk_back attach',
        'fio --name=busy --filename=$disk --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio --direct=1 ' +
          '--time_based --runtime=600 > /tmp/fio.log 2>&1 &',
        'inflight() { set -- $(cat /sys/block/"$ctrl"n1/inflight); [ $(($1 + $2)) -gt 0 ]; }',
        'until_ok 600 inflight && echo io-in-flight',
        askCard('pause'),
        // The command ends with writes in flight that will never complete: teardown now.
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.code, out).toBe(0);
    expect(r.stdout, out).toMatch(/^io-in-flight$/m);
    expect(r.stdout, out).toMatch(/^card: pause ok$/m);
    // runInLab rejects a teardown that fails; and no request had to time out for the driver to go.
    expect(r.guestLog, out).toMatch(/pcinet: \S+ removed: /);
    expect(r.guestLog, out).not.toMatch(/nvme\S* \S+: (I\/O \d+ .*timeout|controller is down)/);
  });
});
