// Large, 32-bit and prefetchable BARs through pcinet.ko (issue 13, item 2). ioremap() maps the 2 MiB
// stretches of a BAR of 2 MiB or more with 2 MiB page-table entries; pcinet.ko splits them into
// 4 KiB ones before trapping, so every page can be served, given back when the emulator refuses an
// instruction on it, and restored at iounmap(). 32-bit BARs get a window below 4 GiB in a host
// bridge's window. The test device's BAR 2 takes its size and type from the device spec
// (`test:mem=SIZE,mem32=on,prefetch=on`); test/kmod's driver runs its checks on it, string MMIO
// across 2 MiB boundaries and at the BAR's end, and a locked increment (which the emulator refuses)
// on one page: that page is given back untrapped, the kernel goes on, the other pages stay served.
import { beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import type { Machine } from '../../lab/qemu.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 300_000;
const MIB = 1 << 20;
/** IORESOURCE_PREFETCH and IORESOURCE_MEM_64 in /sys/bus/pci/devices/…/resource flags. */
const PREFETCH = 0x2000;
const MEM_64 = 0x100000;

/** Guest shell: `check ADDRESS` runs the driver's checks on one test device, each line prefixed. */
const check = [
  'mount -t debugfs none /sys/kernel/debug',
  'check() {',
  '  dev=$1; d=/sys/kernel/debug/pcinet_test/$dev',
  '  set -- $(sed -n 3p /sys/bus/pci/devices/$dev/resource)',
  '  size=$(grep "^mem_size " $d/info | cut -d" " -f2)',
  '  echo "$dev bar2 start=$1 end=$2 flags=$3 size=$size"',
  '  echo "$dev magic $(cat $d/magic)"',
  '  echo 0x5ca1ab1e > $d/scratch; echo "$dev scratch $(cat $d/scratch)"',
  '  echo 3 > $d/raise && echo "$dev raise ok"',
  '  echo 65536 > $d/dma_read; echo "$dev dma_read $(cat $d/dma_read)"',
  '  echo "65536 5" > $d/dma_write; echo "$dev dma_write $(cat $d/dma_write)"',
  '  echo 500 > $d/stress; echo "$dev stress $(cat $d/stress)"',
  '  echo 65533 > $d/memtest; echo "$dev memtest $(cat $d/memtest)"',
  // Across each 2 MiB boundary the BAR has (at most the first four), and the BAR's last bytes.
  '  at=$((2 * 1048576)); n=0',
  '  while [ $at -lt $size ] && [ $n -lt 4 ]; do',
  '    echo "$((at - 3)) 8192" > $d/memtest_at; echo "$dev memtest_at $(cat $d/memtest_at)"',
  '    at=$((at + 2 * 1048576)); n=$((n + 1))',
  '  done',
  '  echo "$((size - 4099)) 4099" > $d/memtest_at; echo "$dev memtest_at $(cat $d/memtest_at)"',
  // A locked increment on the BAR's last page: refused, that page untrapped, the rest served.
  '  echo $((size - 4096)) > $d/locked_inc; echo "$dev locked_inc $(cat $d/locked_inc)"',
  '  echo "4096 4096" > $d/memtest_at; echo "$dev after $(cat $d/memtest_at)"',
  '  echo "$dev magic after $(cat $d/magic)"',
  '}',
  'for a in $PCINET_LAB_DEVICES; do check $a; done',
];

interface Bar {
  spec: string;
  size: number;
  mem32: boolean;
  prefetch: boolean;
}

const cases: { name: string; machine: Machine; memoryMb?: number; bars: Bar[] }[] = [
  {
    name: '64 MiB, 64-bit',
    machine: 'pc',
    bars: [{ spec: 'mem=64M', size: 64 * MIB, mem32: false, prefetch: false }],
  },
  {
    // 256 MiB: the largest; the guest keeps two copies (shadow and power-on contents).
    name: '256 MiB, 32-bit, prefetchable',
    machine: 'q35',
    memoryMb: 2048,
    bars: [{ spec: 'mem=256M,mem32=on,prefetch=on', size: 256 * MIB, mem32: true, prefetch: true }],
  },
  {
    name: '4 MiB 64-bit prefetchable beside 2 MiB 32-bit',
    machine: 'pc',
    bars: [
      { spec: 'mem=4M,prefetch=on', size: 4 * MIB, mem32: false, prefetch: true },
      { spec: 'mem=2M,mem32=on', size: 2 * MIB, mem32: true, prefetch: false },
    ],
  },
];

describe.skipIf(!root)('pcinet.ko: BARs of 2 MiB to 256 MiB, 32- and 64-bit, prefetchable or not', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it.each(cases)(
    '$name: the test driver’s checks pass',
    { timeout: testBudget(RUN_TIMEOUT_MS) },
    async (c) => {
      const r = await runInLab({
        assets,
        machine: c.machine,
        memoryMb: c.memoryMb,
        devices: c.bars.map((b) => `test:${b.spec}`),
        command: check.join('\n'),
        timeoutMs: RUN_TIMEOUT_MS,
      });
      const out = `${r.stdout}\n${r.stderr}\n${r.guestLog.slice(-4000)}`;
      // A lockup (an instruction faulting again and again) or an oops would have failed runInLab.
      expect(r.code, out).toBe(0);
      expect(r.devices).toHaveLength(c.bars.length);
      // Devices come up in spec order: the lab's endpoint lists them so.
      for (const [i, b] of c.bars.entries()) {
        const dev = r.devices[i]!.replaceAll('.', '\\.');
        const line = (what: string) => new RegExp(`^${dev} ${what}$`, 'm');
        const bar = new RegExp(
          `^${dev} bar2 start=0x([0-9a-f]+) end=0x([0-9a-f]+) flags=0x([0-9a-f]+) size=(\\d+)$`,
          'm',
        ).exec(r.stdout);
        expect(bar, out).not.toBeNull();
        const [start, end, flags] = [BigInt(`0x${bar![1]}`), BigInt(`0x${bar![2]}`), Number(`0x${bar![3]}`)];
        expect(Number(bar![4])).toBe(b.size);
        expect(end - start + 1n).toBe(BigInt(b.size));
        expect(start % BigInt(b.size)).toBe(0n);
        if (b.mem32) expect(end < 1n << 32n, `BAR 2 at 0x${start.toString(16)}`).toBe(true);
        else expect(start >= 1n << 39n, `BAR 2 at 0x${start.toString(16)}`).toBe(true);
        expect(Boolean(flags & MEM_64)).toBe(!b.mem32);
        expect(Boolean(flags & PREFETCH)).toBe(b.prefetch);
        expect(r.stdout, out).toMatch(line('magic 0x544e4350'));
        expect(r.stdout, out).toMatch(line('scratch 0x5ca1ab1e'));
        expect(r.stdout, out).toMatch(line('raise ok'));
        expect(r.stdout, out).toMatch(line('dma_read ok size=65536 .*'));
        expect(r.stdout, out).toMatch(line('dma_write ok size=65536 seed=5'));
        expect(r.stdout, out).toMatch(line('stress ok cpus=2 iterations=500'));
        expect(r.stdout, out).toMatch(line('memtest ok size=65533'));
        const boundaries = Math.min(4, Math.ceil(b.size / (2 * MIB)) - 1);
        for (let k = 1; k <= boundaries; k++)
          expect(r.stdout, out).toMatch(
            line(`memtest_at ok offset=0x${(k * 2 * MIB - 3).toString(16)} size=8192`),
          );
        expect(r.stdout, out).toMatch(
          line(`memtest_at ok offset=0x${(b.size - 4099).toString(16)} size=4099`),
        );
        expect(r.stdout, out).toMatch(line(`locked_inc ok offset=0x${(b.size - 4096).toString(16)}`));
        expect(r.stdout, out).toMatch(line('after ok offset=0x1000 size=4096'));
        expect(r.stdout, out).toMatch(line('magic after 0x544e4350'));
      }
      // Each refused instruction was logged once and its page given back; nothing else failed.
      const refused =
        r.guestLog.match(/cannot emulate the instruction at .* accessing 0x[0-9a-f]+ \(-95\)/g) ?? [];
      expect(refused, out).toHaveLength(c.bars.length);
      const removed = r.guestLog.match(/pcinet: [0-9a-f]{4}:00:00\.0 removed: .*/g) ?? [];
      expect(removed, out).toHaveLength(c.bars.length);
      for (const line of removed) {
        expect(line).toMatch(/emulation failures 1;/);
        expect(line).toMatch(/lost 0;/);
      }
    },
  );
});
