// Fault injection (`pcinet inject`, endpoint/faults.ts) against Linux's own nvme driver in the lab:
// the guest asks the card (lab/card-control.ts) to inject through the endpoint's control socket,
// right before the I/O that is to meet the fault, and the test checks what the kernel logged, what
// the tools saw, and that the driver recovered with the data intact (issue 16, item 5).
//  (a) a read's completion held past the driver's I/O timeout: it aborts, then resets the
//      controller, retries, and the read returns the right data; an interrupt dropped: the
//      timeout handler finds the completion by polling;
//  (b) commands failed with chosen statuses: a read with Unrecovered Read Error and DNR fails (a
//      media error: ENODATA to dd) and the kernel logs the status; a write with Internal Error and
//      DNR fails with EIO; the same status without DNR is retried by the driver and the write
//      succeeds; later I/O works;
//  (c) the link taken down for a few seconds under fio: the host-agent parks the disk, the driver
//      rides out the link down, it comes back up and fio verifies every block.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { askCard, startCardControl } from '../../lab/card-control.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { type LabCard, type LabResult, runInLab, testBudget } from '../../lab/run.js';
import { ControlClient } from '../../proto/control.js';
import type { StatusSnapshot } from '../../proto/status.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 300_000;
/** The driver's I/O timeout in the guest (ms), set through sysfs: short, so a held completion
 *  meets it soon; long enough for a TCG guest's ordinary I/O. */
const IO_TIMEOUT_MS = 4000;

/** Guest shell: $disk, a known 4 MiB at the start of it, `check WHEN` reads it back (O_DIRECT),
 *  `wait_live WHEN` waits (bounded) for the controller to be live again. */
const setup = [
  'set -e',
  'dev=$PCINET_LAB_DEVICES',
  'ctrl=$(ls /sys/bus/pci/devices/$dev/nvme/)',
  'for i in $(seq 100); do [ -e "/dev/$ctrl"n1 ] && break; sleep 0.1; done',
  'disk=/dev/"$ctrl"n1',
  `echo ${IO_TIMEOUT_MS} > /sys/block/"$ctrl"n1/queue/io_timeout`,
  'echo "io_timeout=$(cat /sys/block/"$ctrl"n1/queue/io_timeout)"',
  'head -c 4194304 /dev/urandom > /tmp/known',
  'want=$(sha256sum < /tmp/known | cut -d" " -f1)',
  'dd if=/tmp/known of=$disk bs=1M oflag=direct conv=fsync status=none',
  'check() { got=$(dd if=$disk bs=1M count=4 iflag=direct status=none | sha256sum | cut -d" " -f1); ' +
    '[ "$got" = "$want" ] && echo "data-ok $1" || echo "data-BAD $1"; }',
  'live() { [ "$(cat /sys/class/nvme/$ctrl/state)" = live ]; }',
  'wait_live() { i=0; until live; do i=$((i + 1)); [ $i -le 600 ] || return 1; sleep 0.1; done; echo "live $1"; }',
  'check written',
];

/** What the guest saw, for whoever reads the run. */
const show = (stdout: string) =>
  console.log(
    stdout
      .split('\n')
      .filter((l) => /nvme|pcinet|card:|data-|failed-|-read|fio|live|error/.test(l))
      .join('\n'),
  );

/** A card hook whose control port carries out `inject SPEC` and `stats` (the endpoint's status). */
function injector(stats: StatusSnapshot[], injected: string[]) {
  return async (card: LabCard) => {
    const proc = startCardControl(card, async (word) => {
      const c = await ControlClient.connect(card.controlSocket);
      try {
        if (word.startsWith('inject ')) {
          await c.request('inject', { spec: word.slice('inject '.length) });
          injected.push(word);
        } else if (word === 'stats') stats.push((await c.request('status')) as StatusSnapshot);
        else throw new Error(`unknown command ${word}`);
      } finally {
        c.close();
      }
    });
    return async () => {
      proc.kill('SIGTERM');
    };
  };
}

describe.skipIf(!root)('fault injection against the nvme driver', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-inject-e2e-'));
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** One lab run on a fresh NVMe disk (`disk`.img) with the injector on the card: the guest runs
   *  the disk setup, then `lines`; the run must succeed. */
  const injectRun = async (disk: string, lines: string[], logs = (r: LabResult) => r.endpointLog) => {
    const stats: StatusSnapshot[] = [];
    const injected: string[] = [];
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, `${disk}.img`)},size=64M`],
      card: injector(stats, injected),
      command: [...setup, ...lines].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    const out = `${r.stdout}\n${r.stderr}\n${logs(r)}`;
    show(r.stdout);
    expect(r.code, out).toBe(0);
    return { r, out, stats, injected };
  };

  it('a completion held past io_timeout: abort, controller reset, the read retried with its data; a dropped interrupt: completion polled', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const { r, out, stats, injected } = await injectRun('delay', [
      // The next read's completion is held for a minute: far past the abort and the reset.
      askCard('inject delay:dev=nvme,opcode=read,ms=60000'),
      'dd if=$disk of=/tmp/delayed bs=4k count=1 skip=16 iflag=direct status=none && echo delayed-read-returned',
      'cmp -i 0:65536 -n 4096 /tmp/delayed /tmp/known && echo delayed-read-same',
      'wait_live after-reset',
      'check after-reset',
      askCard('inject drop-irq:dev=nvme'),
      't0=$(date +%s%N)',
      'dd if=$disk of=/tmp/dropped bs=4k count=1 skip=32 iflag=direct status=none && echo dropped-irq-read-returned',
      'echo "dropped-irq-read-ms=$(( ($(date +%s%N) - t0) / 1000000 ))"',
      'cmp -i 0:131072 -n 4096 /tmp/dropped /tmp/known && echo dropped-irq-read-same',
      'check after-drop',
      askCard('stats'),
      'dmesg | grep -E "nvme|pcinet" | tail -40',
    ]);
    expect(r.stdout, out).toMatch(new RegExp(`^io_timeout=${IO_TIMEOUT_MS}$`, 'm'));
    expect(injected).toHaveLength(2);
    // (a) The held read: the driver aborted it, then reset the controller, then retried it.
    expect(r.stdout, out).toMatch(/nvme\d+: I\/O \d+ (\(.*\) )?QID [1-9]\d* timeout, aborting/);
    expect(r.stdout, out).toMatch(/nvme\d+: I\/O \d+ (\(.*\) )?QID [1-9]\d* timeout, reset controller/);
    expect(r.stdout, out).toMatch(/^delayed-read-returned$/m);
    expect(r.stdout, out).toMatch(/^delayed-read-same$/m);
    expect(r.stdout, out).toMatch(/^live after-reset$/m);
    for (const when of ['written', 'after-reset', 'after-drop'])
      expect(r.stdout, out).toMatch(new RegExp(`^data-ok ${when}$`, 'm'));
    // The dropped interrupt: found by the timeout handler's poll, after about one io_timeout.
    expect(r.stdout, out).toMatch(/nvme\d+: I\/O \d+ (\(.*\) )?QID [1-9]\d* timeout, completion polled/);
    expect(r.stdout, out).toMatch(/^dropped-irq-read-same$/m);
    const droppedMs = Number(/^dropped-irq-read-ms=(\d+)$/m.exec(r.stdout)?.[1]);
    expect(droppedMs, out).toBeGreaterThanOrEqual(IO_TIMEOUT_MS - 500);
    // Each injection fired once, and the endpoint logged it.
    const dev = stats.at(-1)?.devices[0];
    expect(dev?.counters, out).toMatchObject({ injected: 2, injectedDelay: 1, injectedDropIrq: 1 });
    expect(r.endpointLog.match(/"msg":"fault injected"/g)?.length, out).toBe(2);
    expect(r.guestLog, out).not.toMatch(/Call Trace/);
  });

  it('commands failed with chosen statuses: ENODATA/EIO to dd, the status in the kernel log, a retried one succeeds, later I/O works', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const { r, out, stats, injected } = await injectRun('fail', [
      // Unrecovered Read Error (SCT 2h, SC 81h), Do Not Retry.
      askCard('inject fail:dev=nvme,opcode=read,sct=2,sc=0x81,dnr'),
      'if dd if=$disk of=/dev/null bs=4k count=1 skip=64 iflag=direct status=none 2>/tmp/err; ' +
        'then echo "failed-read: succeeded"; else echo "failed-read: exit $?"; fi; sed "s/^/failed-read: /" /tmp/err',
      'check after-read-fail',
      // Internal Error (SCT 0h, SC 06h), Do Not Retry.
      askCard('inject fail:dev=nvme,opcode=write,sct=0,sc=0x6,dnr'),
      'if dd if=/tmp/known of=$disk bs=4k count=1 oflag=direct status=none 2>/tmp/err; ' +
        'then echo "failed-write: succeeded"; else echo "failed-write: exit $?"; fi; sed "s/^/failed-write: /" /tmp/err',
      'check after-write-fail',
      // Internal Error (SCT 0h, SC 06h) without DNR: the driver retries, the write succeeds.
      askCard('inject fail:dev=nvme,opcode=write,sct=0,sc=0x6'),
      'head -c 4194304 /dev/urandom > /tmp/known',
      'want=$(sha256sum < /tmp/known | cut -d" " -f1)',
      'dd if=/tmp/known of=$disk bs=1M oflag=direct conv=fsync status=none && echo retried-write-ok',
      'check after-retry',
      askCard('stats'),
      'dmesg | grep -E "nvme|pcinet|I/O error|medium error" | tail -40',
    ]);
    expect(injected).toHaveLength(3);
    expect(r.stdout, out).toMatch(/^failed-read: exit 1$/m);
    // A media error reaches the caller as ENODATA (the block layer's BLK_STS_MEDIUM), others as EIO.
    expect(r.stdout, out).toMatch(/^failed-read: dd: error reading '\/dev\/nvme\d+n1': No data available$/m);
    expect(r.stdout, out).toMatch(/^failed-write: exit 1$/m);
    expect(r.stdout, out).toMatch(
      /^failed-write: dd: error writing '\/dev\/nvme\d+n1': Input\/output error$/m,
    );
    // The kernel logged each status as the driver decoded it (nvme_log_error), and the block
    // layer's verdict.
    expect(r.stdout, out).toMatch(/nvme\d+n1: .*\(0x2\) @ LBA 512, 8 blocks, .*\(sct 0x2 \/ sc 0x81\) DNR/);
    expect(r.stdout, out).toMatch(/nvme\d+n1: .*\(0x1\) @ LBA 0, 8 blocks, .*\(sct 0x0 \/ sc 0x6\) DNR/);
    expect(r.stdout, out).toMatch(/critical medium error, dev nvme\d+n1, sector 512 op 0x0:\(READ\)/);
    expect(r.stdout, out).toMatch(/I\/O error, dev nvme\d+n1, sector 0 op 0x1:\(WRITE\)/);
    expect(r.stdout, out).toMatch(/^retried-write-ok$/m);
    for (const when of ['written', 'after-read-fail', 'after-write-fail', 'after-retry'])
      expect(r.stdout, out).toMatch(new RegExp(`^data-ok ${when}$`, 'm'));
    const dev = stats.at(-1)?.devices[0];
    expect(dev?.counters, out).toMatchObject({ injected: 3, injectedFail: 3 });
    expect(dev?.modelCounters.errors, out).toBeGreaterThanOrEqual(3);
    expect(r.endpointLog.match(/"msg":"fault injected"/g)?.length, out).toBe(3);
    expect(r.guestLog, out).not.toMatch(/Call Trace/);
  });
  it('link-down for 5 s under fio: the disk goes link down, comes back up, the driver recovers, fio verifies', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const { r, out, stats, injected } = await injectRun(
      'link',
      [
        'fio --name=link --filename=$disk --offset=8M --size=8M --rw=randwrite --bsrange=4k-64k --iodepth=8 ' +
          '--ioengine=libaio --direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1 > /tmp/fio.log 2>&1 & fio=$!',
        'sleep 1',
        'kill -0 $fio && echo fio-running-at-link-down',
        askCard('inject link-down:dev=nvme,seconds=5'),
        // The controller stays "live" through PCI error recovery: what the kernel says is the sign.
        'seen() { dmesg | grep -q "$1"; }',
        'i=0; until seen "link down: the driver waits"; do i=$((i + 1)); [ $i -le 600 ] || break; sleep 0.1; done',
        'i=0; until seen "link up: recovered"; do i=$((i + 1)); [ $i -le 1200 ] || break; sleep 0.1; done',
        'wait_live after-link-down',
        'if wait $fio; then echo fio-verified; else cat /tmp/fio.log; fi',
        'check after-link-down',
        askCard('stats'),
        'dmesg | grep -E "nvme|pcinet" | tail -40',
      ],
      (r) => `${r.endpointLog}\n${r.hostAgentLog}`,
    );
    expect(injected).toHaveLength(1);
    expect(r.stdout, out).toMatch(/^fio-running-at-link-down$/m);
    expect(r.stdout, out).toMatch(/kernel link lost \(error -\d+\): link down/);
    expect(r.stdout, out).toMatch(/link down: the driver waits for a reset/);
    expect(r.stdout, out).toMatch(/link up: recovered/);
    expect(r.stdout, out).toMatch(/^live after-link-down$/m);
    expect(r.stdout, out).toMatch(/^fio-verified$/m);
    for (const when of ['written', 'after-link-down'])
      expect(r.stdout, out).toMatch(new RegExp(`^data-ok ${when}$`, 'm'));
    // The endpoint ended the session and refused the host until the link was up again.
    expect(r.endpointLog, out).toMatch(/"msg":"link down: session ended, sessions refused until it is up"/);
    expect(r.endpointLog, out).toMatch(/"msg":"link up: sessions admitted again"/);
    expect(r.hostAgentLog, out).toMatch(/recovered after [\d.]+ s link down/);
    const downS = Number(/recovered after ([\d.]+) s link down/.exec(r.hostAgentLog)?.[1]);
    expect(downS, out).toBeGreaterThanOrEqual(4.5);
    expect(stats.at(-1)?.devices[0]?.counters, out).toMatchObject({ injected: 1, injectedLinkDown: 1 });
    expect(r.guestLog, out).not.toMatch(/Call Trace/);
  });
});
