// The command line every bench shares: numeric options with their bounds, on/off flags of the
// bench's own, `--chart FILE` (default bench/results/NAME.svg) and `--log`. Anything else is an
// error naming the usage.
import { join, resolve } from 'node:path';
import { repoRoot } from '../lab/paths.js';

export interface NumberOption {
  value: number;
  /** What the option accepts, e.g. "1..120", and the test for it. */
  range: string;
  ok: (n: number) => boolean;
}

export function parseBenchArgs<K extends string, F extends string = never>(
  bench: string,
  argv: readonly string[],
  numbers: Record<K, NumberOption>,
  flags: readonly F[] = [],
): Record<K, number> & Record<F, boolean> & { chart: string; log: boolean } {
  const values = Object.fromEntries(Object.entries<NumberOption>(numbers).map(([k, o]) => [k, o.value]));
  const off = Object.fromEntries(flags.map((f) => [f, false]));
  const o = { ...values, ...off, chart: join(repoRoot(), 'bench', 'results', `${bench}.svg`), log: false };
  const usage = `use ${[
    ...Object.entries<NumberOption>(numbers).map(([k, n]) => `--${k} ${n.range}`),
    ...flags.map((f) => `--${f}`),
  ].join(', ')}, --chart FILE, --log`;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--log') {
      o.log = true;
      continue;
    }
    if ((flags as readonly string[]).includes(a.slice(2)) && a.startsWith('--')) {
      (o as Record<string, unknown>)[a.slice(2)] = true;
      continue;
    }
    const v = argv[++i];
    if (v === undefined) throw new Error(`bench/${bench}: ${a} needs a value (${usage})`);
    const name = a.slice(2);
    const spec = a.startsWith('--') ? (numbers as Record<string, NumberOption>)[name] : undefined;
    if (spec?.ok(Number(v))) (o as Record<string, unknown>)[name] = Number(v);
    else if (a === '--chart') o.chart = resolve(v);
    else throw new Error(`bench/${bench}: bad argument ${a} ${v} (${usage})`);
  }
  return o as Record<K, number> & Record<F, boolean> & { chart: string; log: boolean };
}
