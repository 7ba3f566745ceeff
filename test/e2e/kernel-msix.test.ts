// MSI-X raises that find pcinet.ko's delivery ring full (issue 13, item 5). A raise that cannot be
// queued sets the vector's PBA bit, as a PCIe function does while it cannot send; the delivery
// work must send it once the ring has room again, or the interrupt is lost (the vector is unmasked,
// so no unmask would ever release it). The test device's RAISE_BURST raises one vector many times
// at once; the module's test hook test_msix_ring shrinks the ring to two entries, and the test
// driver's handler takes 2 ms a run (irq_delay_us), so that a burst overflows it (without the hook
// the raising side waits while the ring is half full). The driver
// checks that the burst's last raise arrives: the handler ran and the PBA bit is clear. Raises of
// a pending vector merge, as on any MSI-X function, so fewer handler runs than raises is fine.
import { beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 240_000;

describe.skipIf(!root)('pcinet.ko: MSI-X raises that overflow the delivery ring', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it('a burst that overflows the ring: the last raise is delivered, the PBA bit clears', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const p = '/sys/module/pcinet/parameters/test_msix_ring';
    const r = await runInLab({
      assets,
      devices: ['test:vectors=8'],
      command: [
        'mount -t debugfs none /sys/kernel/debug',
        'd=/sys/kernel/debug/pcinet_test/$PCINET_LAB_DEVICES',
        `echo 2 > ${p} && echo "ring $(cat ${p})"`,
        'echo 2000 > $d/irq_delay_us',
        'for n in 64 2000; do echo "3 $n" > $d/burst; echo "small ring: $(cat $d/burst)"; done',
        'echo "6 500" > $d/burst; echo "small ring: $(cat $d/burst)"',
        // The whole ring again: a burst of twice its size goes through the raising side's wait
        // and the delivery work's budget.
        `echo 0 > ${p}`,
        'echo 0 > $d/irq_delay_us',
        'echo "5 8192" > $d/burst; echo "full ring: $(cat $d/burst)"',
        'echo "pba $(cat $d/pba)"',
        'echo "magic $(cat $d/magic)"',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.code, out).toBe(0);
    expect(r.stdout, out).toMatch(/^ring 2$/m);
    for (const [v, n] of [
      [3, 64],
      [3, 2000],
      [6, 500],
    ])
      expect(r.stdout, out).toMatch(
        new RegExp(`^small ring: ok vector=${v} raised=${n} delivered=\\d+ status=0x1$`, 'm'),
      );
    expect(r.stdout, out).toMatch(/^full ring: ok vector=5 raised=8192 delivered=\d+ status=0x1$/m);
    expect(r.stdout, out).toMatch(/^pba 0x0+$/m);
    expect(r.stdout, out).toMatch(/^magic 0x544e4350$/m);
    // The small ring did overflow: raises went to the PBA and were sent from there.
    const removed = /pcinet: [0-9a-f]{4}:00:00\.0 removed: (.*)$/m.exec(r.guestLog)?.[1] ?? '';
    expect(Number(/interrupts \d+ pending (\d+)/.exec(removed)?.[1]), removed).toBeGreaterThan(0);
    console.log(`pcinet.ko counters: ${removed}`);
  });
});
