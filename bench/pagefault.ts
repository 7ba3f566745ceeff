// bench/pagefault: what pcinet.ko costs the workstation's ordinary page faults (issue 13 item 1).
// In one lab run (QEMU TCG guest), a program that maps anonymous memory and writes one byte per
// page (bench/pagefault-guest.c: one minor fault each) is timed with no module loaded and with
// pcinet.ko loaded (no device attached: the module's fault hook is what is measured), and with
// --kmmio also with the module as of KMMIO_REV, which raised kmmio_count and so sent every fault
// of the machine through a kprobe. Configurations alternate in every round, in a rotating order,
// on one vCPU (taskset), so the measurements of a round are seconds apart. QEMU runs with
// `-icount` and one vCPU: the guest's clock advances a fixed step per guest instruction, so the
// time a fault takes counts the instructions it costs, whatever else this machine is doing (the
// lab shares it; wall-clock figures swing by a factor of three there). --wall measures real time
// instead, on the lab's usual two vCPUs. The table gives each
// one's ns per fault (minimum and median over the rounds) and its difference from "none": the
// median of the per-round differences (each against the same round's "none", which cancels
// what drifts slower than a round: the host's other load) and the difference of the minima
// (the least disturbed measurements). Figures from TCG are the emulator's, not a CPU's; compare
// only columns of one run. Prints a table and writes an SVG chart (--chart FILE, default
// bench/results/pagefault.svg); asserts nothing.
//
//   node dist/bench/pagefault.js [--rounds 40] [--mib 16] [--passes 4] [--kmmio] [--wall]
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir, repoRoot } from '../lab/paths.js';
import { prepareLab } from '../lab/prepare.js';
import { runInLab } from '../lab/run.js';
import { parseBenchArgs } from './args.js';
import { writeChart } from './chart.js';

/** The last commit whose pcinet.ko took MMIO faults by raising kmmio_count. */
const KMMIO_REV = 'd8dea65';
/** Guest nanoseconds per guest instruction under icount: 2^3 (the figures are divided back). */
const ICOUNT_SHIFT = 3;
/** Without a line from the guest for this long the run is stuck: a round takes seconds. */
const STALL_MS = 180_000;

interface Config {
  name: string;
  /** The module to load, if any. */
  ko?: string;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const args = parseBenchArgs(
    'pagefault',
    process.argv.slice(2),
    {
      rounds: { value: 40, range: '1..999', ok: (n) => Number.isInteger(n) && n >= 1 && n <= 999 },
      mib: { value: 16, range: '1..512', ok: (n) => Number.isInteger(n) && n >= 1 && n <= 512 },
      passes: { value: 4, range: '1..1000', ok: (n) => Number.isInteger(n) && n >= 1 && n <= 1000 },
    },
    ['kmmio', 'wall'],
  );
  const assets = await prepareLab({ modules: true });
  if (!assets.pcinetKo)
    throw new Error(`bench/pagefault: pcinet.ko was not built (${assets.pcinetUnavailable})`);
  const dir = join(cacheDir(), 'bench-pagefault');
  mkdirSync(dir, { recursive: true });
  const prog = join(dir, 'pagefault');
  execFileSync('gcc', ['-O2', '-Wall', '-o', prog, join(repoRoot(), 'bench', 'pagefault-guest.c')]);

  const configs: Config[] = [{ name: 'none' }, { name: 'pcinet.ko', ko: assets.pcinetKo }];
  if (args.kmmio) {
    const old = join(dir, 'kmmio');
    rmSync(old, { recursive: true, force: true });
    mkdirSync(old);
    execFileSync('sh', ['-c', `git -C "${repoRoot()}" archive ${KMMIO_REV} kernel | tar -x -C "${old}"`]);
    execFileSync('make', ['-C', join(old, 'kernel'), `KDIR=${assets.headersDir}`], { stdio: 'ignore' });
    configs.push({ name: `pcinet.ko ${KMMIO_REV} (kmmio)`, ko: join(old, 'kernel', 'pcinet.ko') });
  }

  const lines: string[] = ['cpu=$(($(nproc) - 1))'];
  for (let round = 0; round < args.rounds; round++) {
    for (let k = 0; k < configs.length; k++) {
      const c = configs[(round + k) % configs.length]!;
      const i = configs.indexOf(c);
      if (c.ko) lines.push(`insmod ${c.ko} || exit 3`);
      lines.push(`echo "config=${i} $(taskset -c $cpu ${prog} ${args.mib} ${args.passes})" || exit 4`);
      if (c.ko) lines.push('rmmod pcinet || exit 5');
    }
  }

  const abort = new AbortController();
  let stall = setTimeout(() => abort.abort(), STALL_MS);
  const progress = () => {
    clearTimeout(stall);
    stall = setTimeout(() => abort.abort(), STALL_MS);
  };
  const r = await runInLab({
    assets,
    pcinet: false,
    command: lines.join('\n'),
    extraQemuArgs: args.wall ? [] : ['-icount', `shift=${ICOUNT_SHIFT},sleep=on`],
    // QEMU 7.2 under icount hangs bringing up a second vCPU; one is all the workload needs.
    cpus: args.wall ? undefined : 1,
    // The stall watchdog decides; this only bounds a run that keeps printing forever.
    timeoutMs: args.rounds * configs.length * STALL_MS,
    signal: abort.signal,
    onOutput: progress,
    onPhase: (p) => {
      if (args.log) console.error(`bench/pagefault: ${p.name} ${p.detail} ${p.ms} ms`);
      progress();
    },
  }).finally(() => clearTimeout(stall));
  if (r.code !== 0)
    throw new Error(`bench/pagefault: the guest failed (${r.code}):\n${r.stdout}\n${r.stderr}`);

  // perFault[config][round]: the script prints one line per configuration and round, in order.
  const perFault = configs.map(() => [] as number[]);
  let faults = 0;
  const unit = args.wall ? 1 : 2 ** ICOUNT_SHIFT;
  for (const m of r.stdout.matchAll(/^config=(\d+) pagefault faults=(\d+) ns=(\d+)$/gm)) {
    faults = Number(m[2]);
    perFault[Number(m[1])]!.push(Number(m[3]) / unit / Number(m[2]));
  }
  if (perFault.some((xs) => xs.length !== args.rounds))
    throw new Error(`bench/pagefault: expected ${args.rounds} results per configuration:\n${r.stdout}`);
  const none = perFault[0]!;
  const pct = (x: number) => `${(x * 100).toFixed(2)} %`;
  console.log(
    `bench/pagefault: ${faults} faults per measurement (${args.mib} MiB × ${args.passes}), ${args.rounds} rounds, TCG lab, ${args.wall ? 'wall clock' : 'icount: guest instructions'}`,
  );
  const per = args.wall ? 'ns/fault' : 'instructions/fault';
  const rows = [['module', `${per} min`, 'median', 'max', 'vs none: per round (median)', 'min vs min']];
  configs.forEach((c, i) => {
    const xs = perFault[i]!;
    const paired = xs.map((x, round) => x / none[round]! - 1);
    rows.push([
      c.name,
      Math.min(...xs).toFixed(0),
      median(xs).toFixed(0),
      Math.max(...xs).toFixed(0),
      i === 0 ? '' : pct(median(paired)),
      i === 0 ? '' : pct(Math.min(...xs) / Math.min(...none) - 1),
    ]);
  });
  const widths = rows[0]!.map((_, j) => Math.max(...rows.map((row) => row[j]!.length)));
  for (const row of rows) console.log(row.map((cell, j) => cell.padStart(widths[j]!)).join('  '));
  writeChart(args.chart, {
    title: 'Ordinary page faults in the lab guest, with and without pcinet.ko',
    notes: [
      `${faults} faults per measurement, ${args.rounds} rounds, configurations alternating; TCG lab, ${args.wall ? 'wall clock' : 'icount: guest instructions per fault'}; ${new Date().toISOString().slice(0, 10)}`,
      'one linear axis from 0: the bars differ by what the module costs each fault',
    ],
    series: configs.map((c) => c.name),
    groups: [
      { label: 'median', unit: per, values: perFault.map((xs) => median(xs)) },
      { label: 'minimum', unit: per, values: perFault.map((xs) => Math.min(...xs)) },
    ],
    scale: 'linear',
  });
  console.log(`chart: ${args.chart}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
