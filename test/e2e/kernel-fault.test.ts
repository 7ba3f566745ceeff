// pcinet.ko's MMIO fault path (docs/KERNEL.md, "MMIO trapping"): faults on BAR pages that arrive
// where the module's handler cannot serve them must not oops the machine.
// - Inside another kprobe: a kprobe event whose argument reads a trapped BAR page (what a
//   tracing user may well do) faults while that kprobe runs. Our kprobe on bad_area_nosemaphore()
//   is skipped then and the kernel's fixup for copy_from_kernel_nofault() answers. The module
//   that raised kmmio_count instead sent this fault into kmmio_handler(), whose tables mmiotrace
//   never set up: a NULL dereference in get_kmmio_fault_page().
// - Inside the module's own fault handler: the test_nested_fault hook makes the handler read the
//   BAR page again before serving the access; the nested read fails like a completion timeout
//   (all-ones), is counted and logged once, and the outer access is served as usual.
import { beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 150_000;
const MAGIC = '0x544e4350';

const setup = [
  'mount -t debugfs none /sys/kernel/debug',
  'd=/sys/kernel/debug/pcinet_test/$PCINET_LAB_DEVICES',
  `echo "magic $(cat $d/magic)"`,
];

describe.skipIf(!root)('pcinet.ko: BAR faults where the handler cannot serve them', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it('a kprobe event reading a BAR page gets the kernel’s fault fixup, not an oops', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: ['test'],
      command: [
        ...setup,
        'mount -t tracefs nodev /sys/kernel/tracing',
        // The kernel virtual address of BAR 0's mapping (kptr_restrict 1: real addresses for root).
        'echo 1 > /proc/sys/kernel/kptr_restrict',
        'bar0=$(head -1 /sys/bus/pci/devices/$PCINET_LAB_DEVICES/resource | cut -d" " -f1)',
        'va=$(grep "phys=$bar0 " /proc/vmallocinfo | head -1 | cut -d- -f1)',
        'echo "va $va"',
        't=/sys/kernel/tracing',
        'echo "p:pcinet_bar ksys_sync v=@$va:u32" >> $t/kprobe_events',
        'echo 1 > $t/events/kprobes/pcinet_bar/enable',
        'sync',
        'echo 0 > $t/events/kprobes/pcinet_bar/enable',
        'echo "events $(grep -c "pcinet_bar:" $t/trace)"',
        'echo "-:pcinet_bar" >> $t/kprobe_events',
        // The driver's own accesses are still served.
        `echo "magic after $(cat $d/magic)"`,
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    // A kernel report would have made runInLab reject.
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^magic ${MAGIC}$`, 'm'));
    expect(r.stdout).toMatch(/^va 0xffff[0-9a-f]{12}$/m);
    expect(Number(/^events (\d+)$/m.exec(r.stdout)?.[1])).toBeGreaterThanOrEqual(1);
    expect(r.stdout).toMatch(new RegExp(`^magic after ${MAGIC}$`, 'm'));
    // Not ours to serve: nothing counted as nested.
    expect(r.guestLog).toMatch(/pcinet: [0-9a-f]{4}:00:00\.0 removed: .*; nested faults 0;/);
  });

  it('a BAR access inside the fault handler reads all-ones, counted and logged once', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const p = '/sys/module/pcinet/parameters/test_nested_fault';
    const r = await runInLab({
      assets,
      devices: ['test'],
      command: [
        ...setup,
        `echo 2 > ${p}`,
        `echo "magic hooked $(cat $d/magic) $(cat $d/magic)"`,
        `echo "hook left $(cat ${p})"`,
        `echo "magic after $(cat $d/magic)"`,
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    // The outer accesses were served; the hook fired once for each of them.
    expect(r.stdout).toMatch(new RegExp(`^magic hooked ${MAGIC} ${MAGIC}$`, 'm'));
    expect(r.stdout).toMatch(/^hook left 0$/m);
    expect(r.stdout).toMatch(new RegExp(`^magic after ${MAGIC}$`, 'm'));
    const reads = r.guestLog.match(
      /test hook: a read of BAR page 0x[0-9a-f]+ inside the fault handler read (0x[0-9a-f]+)/g,
    );
    expect(reads).toHaveLength(2);
    for (const line of reads ?? []) expect(line).toMatch(/read 0xffffffff$/);
    expect(
      r.guestLog.match(/faulted inside the MMIO fault handler: failed like a completion timeout/g),
    ).toHaveLength(1);
    expect(r.guestLog).toMatch(/pcinet: [0-9a-f]{4}:00:00\.0 removed: .*; nested faults 2;/);
  });
});
