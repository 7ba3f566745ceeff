// What the lab benches share: a median, a text table, and the figure of a dd or fio phase.
import type { Test } from './nvme-guest.js';

/** The median (the mean of the middle two for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Rows of cells as aligned columns: the first `rightFrom` left-aligned, the rest right-aligned. */
export function table(rows: readonly (readonly string[])[], rightFrom = 1): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows
    .map((r) =>
      r.map((cell, c) => (c < rightFrom ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '),
    )
    .join('\n');
}

export interface Measured {
  /** MB/s or IOPS, as the test's unit says. */
  value: number;
  ios: number;
}

/** The phase's figure from dd's summary line or fio's terse v3 line (fields 6–8 read, 47–49 write:
 *  KiB moved, KiB/s, IOPS). */
export function measured(
  t: Pick<Test, 'tool' | 'rw' | 'bs' | 'unit'>,
  lines: readonly string[],
): Measured | undefined {
  if (t.tool === 'dd') {
    for (const l of lines) {
      const m = /^(\d+) bytes .* copied, ([\d.e+-]+) s,/.exec(l);
      if (m && Number(m[2]) > 0)
        return { value: Number(m[1]) / Number(m[2]) / 1e6, ios: Number(m[1]) / t.bs };
    }
    return undefined;
  }
  const f = lines.find((l) => l.startsWith('3;'))?.split(';');
  if (!f) return undefined;
  const at = t.rw === 'write' ? 46 : 5;
  const [kib, kibps, iops] = [Number(f[at]), Number(f[at + 1]), Number(f[at + 2])];
  if (!(kib > 0)) return undefined;
  return { value: t.unit === 'IOPS' ? iops : (kibps * 1024) / 1e6, ios: (kib * 1024) / t.bs };
}

/** `name ns count` lines of pcinet_timing. */
export function parseTiming(text: string): Map<string, [number, number]> {
  const m = new Map<string, [number, number]>();
  for (const l of text.split('\n')) {
    const f = l.trim().split(/\s+/);
    if (f.length === 3 && /^\d+$/.test(f[1]!) && /^\d+$/.test(f[2]!))
      m.set(f[0]!, [Number(f[1]), Number(f[2])]);
  }
  return m;
}

/** µs per counted event between two timing readings, or undefined when nothing was counted. */
export function perEvent(
  before: Map<string, [number, number]>,
  after: Map<string, [number, number]>,
  name: string,
): number | undefined {
  const a = before.get(name);
  const b = after.get(name);
  if (!a || !b || b[1] <= a[1]) return undefined;
  return (b[0] - a[0]) / (b[1] - a[1]) / 1000;
}

/** The values in the order of round `r`: as given in even rounds, reversed in odd ones. */
export function roundOrder<T>(values: readonly T[], r: number): T[] {
  return r % 2 ? [...values].reverse() : [...values];
}
