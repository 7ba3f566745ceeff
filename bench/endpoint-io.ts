// bench/endpoint-io: what the endpoint spends per QD1 NVMe I/O (4 KiB and 128 KiB reads and writes)
// on a kernel link, natively, without the lab. The endpoint runs as `pcinet endpoint` (a child, with the allocator settings
// bin/pcinet gives it) serving an NVMe disk in a tmpfs file; this process plays the workstation: a
// host session that offers kernel links, and a scripted pcinet.ko (bench/kernel-peer.ts) under an
// NVMe driver (bench/link-nvme.ts) that brings the controller up and issues QD1 reads and writes.
//
//   npm run build && node dist/bench/endpoint-io.js [--ios 20000] [--warmup 5000] [--runs 5]
//        [--tree DIR]... [--cpu-prof DIR] [--trace-gc] [--only read|write] [--sizes 4k,128k]
//        [--node-option OPT]... [--gap-us N [--gap-spin]] [--dbbuf] [--endpoint-log FILE]
//
// Each --tree is a checkout whose dist/ is built (default: this one); with several, runs alternate
// between them, so a change is judged against its reference in the same session. Per I/O it
// reports the endpoint's CPU time (all its threads, /proc/PID/stat; and its main thread alone,
// /proc/PID/task/PID/schedstat), the wall time, the records it sent, its read and write system
// calls (/proc/PID/io: the link's socket and the disk file alike) and, with --trace-gc, its garbage
// collections. Medians over the runs at the end. --endpoint-log appends the endpoints' standard
// output to FILE (with --node-option=--trace-gc-nvp: what each young collection found allocated).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { withAllocatorEnv } from '../cli/allocator.js';
import { repoRoot } from '../lab/paths.js';
import { openSession, type Session } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { Capability, ErrorCode, type Msg, OUR_CAPABILITIES, u64 } from '../proto/wire.js';
import { ioCalls } from './card-cpu.js';
import { KernelPeer } from './kernel-peer.js';
import { DRIVER_MEMORY, LinkNvmeDriver, MAX_IO } from './link-nvme.js';

/** IOVA of the driver's memory (any page-aligned address works; this one is recognisable). */
const BASE = 0x1_0000_0000n;
/** The disk: large enough that sequential 4 KiB I/O does not stay in one page of the file. */
const DISK_BYTES = 64 << 20;
/** Endpoint start-up: how long to keep dialling it. */
const DIAL_TRIES = 100;
const DIAL_PAUSE_MS = 50;
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

interface Cpu {
  /** All threads, µs (clock-tick resolution): in user space (JavaScript, V8, libuv) and in the
   *  kernel (system calls: on loopback a socket write runs the receiver's side too). */
  user: number;
  sys: number;
  /** The main (JavaScript) thread, µs. */
  main: number;
}

function cpuOf(pid: number): Cpu {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) are at 11 and 12 after the name.
  const user = (Number(f[11]) / CLK_TCK) * 1e6;
  const sys = (Number(f[12]) / CLK_TCK) * 1e6;
  const main = Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1000;
  return { user, sys, main };
}

/** Read and write system calls of the whole process so far (/proc/PID/io). */
function callsOf(pid: number): { r: number; w: number } {
  return ioCalls(readFileSync(`/proc/${pid}/io`, 'utf8'));
}

/** What one phase (N reads or N writes) cost, per I/O. */
interface Phase {
  cpu: number;
  user: number;
  sys: number;
  main: number;
  wall: number;
  records: number;
  /** Doorbells the driver rang (the rest went to the shadow: --dbbuf). */
  rung: number;
  /** read() and write() family system calls (socket and file). */
  syscr: number;
  syscw: number;
  /** Collections per 1000 I/Os: all of them, and the full (mark-compact) ones among them. */
  gcs: number;
  majors: number;
}

/** A phase: `size`-byte reads or writes. */
interface Kind {
  size: number;
  write: boolean;
}

const kindName = (k: Kind) => `${k.size >> 10}K ${k.write ? 'write' : 'read'}`;

interface RunResult {
  tree: string;
  /** By kindName(). */
  phases: Map<string, Phase>;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** The first message of the session that `pick` accepts (bounded by `timeoutMs`). */
function nextMsg(session: Session, pick: (m: Msg) => boolean, timeoutMs: number): Promise<Msg> {
  return new Promise((resolveMsg, reject) => {
    const t = setTimeout(() => {
      session.off('messages', on);
      reject(new Error(`no such message in ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (msgs: Msg[]) => {
      const m = msgs.find(pick);
      if (!m) return;
      clearTimeout(t);
      session.off('messages', on);
      resolveMsg(m);
    };
    session.on('messages', on);
  });
}

async function dial(port: number): Promise<Session> {
  const log = pino({ level: 'silent' });
  for (let i = 0; ; i++) {
    try {
      return await openSession(() => dialTcp('127.0.0.1', port), {
        log,
        capabilities: OUR_CAPABILITIES | Capability.CAP_KERNEL_LINK,
      });
    } catch (e) {
      if (i + 1 >= DIAL_TRIES) throw e;
      await new Promise((r) => setTimeout(r, DIAL_PAUSE_MS));
    }
  }
}

/** One endpoint from `tree`, brought up, warmed and measured. */
async function run(tree: string, o: Options): Promise<RunResult> {
  const dir = mkdtempSync('/dev/shm/pcinet-endpoint-io-');
  const port = await freePort();
  const node = [
    ...(o.cpuProf ? ['--cpu-prof', '--cpu-prof-dir', o.cpuProf] : []),
    ...(o.traceGc ? ['--trace-gc'] : []),
    ...o.nodeOptions,
  ];
  const child: ChildProcess = spawn(
    process.execPath,
    [
      ...node,
      join(tree, 'dist', 'cli', 'main.js'),
      'endpoint',
      '--listen',
      `127.0.0.1:${port}`,
      '--device',
      `nvme:file=${join(dir, 'disk.img')},size=${DISK_BYTES},queues=1`,
      '--no-control',
      '--log-level',
      'warn',
    ],
    { env: withAllocatorEnv(), stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let gcs = 0;
  let majors = 0;
  let out = '';
  /** A line cut off at the end of the last chunk. */
  let partial = '';
  child.stdout!.on('data', (b: Buffer) => {
    if (o.endpointLog) appendFileSync(o.endpointLog, b);
    out = (out + b.toString()).slice(-4096);
    const lines = (partial + b.toString()).split('\n');
    partial = lines.pop()!.slice(-4096);
    for (const line of lines) {
      if (/: (Scavenge|Mark-Compact|Mark-sweep|Minor)/.test(line)) gcs++;
      if (/: (Mark-Compact|Mark-sweep)/.test(line)) majors++;
    }
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  let session: Session | undefined;
  let peer: KernelPeer | undefined;
  try {
    session = await dial(port);
    const attach = (await nextMsg(session, (m) => !!m.attach, 10_000)).attach!;
    const bar0 = (attach.desc?.bars ?? []).find((b) => (b.index ?? 0) === 0);
    peer = await KernelPeer.open(port, attach.linkToken!, {
      base: BASE,
      memory: DRIVER_MEMORY,
      barSize: Number(u64(bar0?.size)),
    });
    session.send({
      attachResult: { dev: attach.dev, code: ErrorCode.OK, address: '0000:01:00.0', link: true },
    });
    session.flush();
    const drv = new LinkNvmeDriver(peer, BASE);
    await drv.start({ dbbuf: o.dbbuf });
    for (const size of o.sizes) await check(drv, size);
    let at = 0;
    const next = (size: number) => {
      at += size;
      if (at + size > DISK_BYTES) at = 0;
      return at;
    };
    // Every kind warms up, in turns, so none of them runs on colder code than another.
    for (let i = 0; i < o.warmup; i++) {
      const k = o.kinds[i % o.kinds.length]!;
      await drv.io(k.write, next(k.size), k.size);
    }
    const phase = async (k: Kind, ios: number): Promise<Phase> => {
      const pid = child.pid!;
      const records = peer!.counters.records;
      const rung = drv.doorbells.rung;
      const gc0 = gcs;
      const major0 = majors;
      const io0 = callsOf(pid);
      const c0 = cpuOf(pid);
      let paused = 0n;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < ios; i++) {
        await drv.io(k.write, next(k.size), k.size);
        if (o.gapUs) paused += gap(o.gapUs, o.gapSpin);
      }
      const wall = Number(process.hrtime.bigint() - t0 - paused) / 1000;
      const c1 = cpuOf(pid);
      const io1 = callsOf(pid);
      return {
        cpu: (c1.user + c1.sys - c0.user - c0.sys) / ios,
        user: (c1.user - c0.user) / ios,
        sys: (c1.sys - c0.sys) / ios,
        main: (c1.main - c0.main) / ios,
        wall: wall / ios,
        records: (peer!.counters.records - records) / ios,
        rung: (drv.doorbells.rung - rung) / ios,
        syscr: (io1.r - io0.r) / ios,
        syscw: (io1.w - io0.w) / ios,
        gcs: ((gcs - gc0) * 1000) / ios,
        majors: ((majors - major0) * 1000) / ios,
      };
    };
    // A kind left out (--only) still runs, briefly, so the table keeps its rows.
    const phases = new Map<string, Phase>();
    for (const k of o.kinds) {
      const out = o.only !== undefined && o.only !== (k.write ? 'write' : 'read');
      phases.set(kindName(k), await phase(k, out ? 100 : o.ios));
    }
    return { tree, phases };
  } catch (e) {
    throw new Error(`${(e as Error).message}\nendpoint output:\n${out}`);
  } finally {
    peer?.close();
    await session?.close().catch(() => {});
    if (child.exitCode === null) child.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The host's own time between two I/Os (the guest's block layer, dd, its interrupt handling: in
 *  the lab a QD1 I/O's round is ~1 ms, most of it not the endpoint's), `us` µs: this thread asleep,
 *  or busy on its core (`spin`), as a vCPU thread would be. Returns how long it took, ns. */
const gapCell = new Int32Array(new SharedArrayBuffer(4));
function gap(us: number, spin: boolean): bigint {
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(us * 1000);
  if (spin) while (process.hrtime.bigint() < end);
  else Atomics.wait(gapCell, 0, 0, us / 1000);
  return process.hrtime.bigint() - t0;
}

/** The disk holds what was written: a pattern written, the buffer cleared, read back. */
async function check(drv: LinkNvmeDriver, size: number): Promise<void> {
  const at = 0x7000;
  const byte = (i: number) => (i * 7 + 3 + (i >> 12)) & 0xff;
  for (let i = 0; i < size; i++) drv.data[i] = byte(i);
  await drv.io(true, at, size);
  drv.data.fill(0);
  await drv.io(false, at, size);
  for (let i = 0; i < size; i++)
    if (drv.data[i] !== byte(i)) throw new Error(`${size}-byte read back differs at byte ${i}`);
}

interface Options {
  ios: number;
  warmup: number;
  runs: number;
  trees: string[];
  cpuProf: string | undefined;
  traceGc: boolean;
  /** Measure only reads or only writes (for a profile of one kind); the other gets 100 I/Os. */
  only: 'read' | 'write' | undefined;
  /** More options for the endpoint's node (--perf-basic-prof for perf(1), a V8 heap flag …). */
  nodeOptions: string[];
  /** The driver uses Doorbell Buffer Config, as Linux's does in the lab. */
  dbbuf: boolean;
  /** Time between I/Os (µs, 0: none), and whether the bench spins through it instead of sleeping. */
  gapUs: number;
  gapSpin: boolean;
  /** Where the endpoints' standard output is appended, if anywhere. */
  endpointLog: string | undefined;
  /** I/O sizes, bytes. */
  sizes: number[];
  /** What a run measures, in order: per size, reads then writes. */
  kinds: Kind[];
}

/** Bad command-line input: reported as its message alone. */
class UsageError extends Error {}

function only(v: string | undefined): 'read' | 'write' | undefined {
  if (v === undefined || v === 'read' || v === 'write') return v;
  throw new UsageError(`--only must be read or write, not ${v}`);
}

/** "4k,128k": sizes in KiB, whole pages up to the driver's MAX_IO. */
function sizes(v: string): number[] {
  const out = v.split(',').map((s) => {
    const m = /^(\d+)k$/i.exec(s.trim());
    const n = m ? Number(m[1]) << 10 : Number.NaN;
    if (!(n >= 0x1000 && n <= MAX_IO && n % 0x1000 === 0))
      throw new UsageError(`--sizes takes KiB like 4k,128k (4k..${MAX_IO >> 10}k, whole pages), not ${s}`);
    return n;
  });
  return [...new Set(out)];
}

const USAGE =
  'usage: node dist/bench/endpoint-io.js [--ios 20000] [--warmup 5000] [--runs 5] [--tree DIR]... ' +
  '[--cpu-prof DIR] [--trace-gc] [--only read|write] [--sizes 4k,128k] [--node-option OPT]... ' +
  '[--gap-us N [--gap-spin]] [--dbbuf] [--endpoint-log FILE]';

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    options: {
      ios: { type: 'string', default: '20000' },
      warmup: { type: 'string', default: '5000' },
      runs: { type: 'string', default: '5' },
      tree: { type: 'string', multiple: true },
      'cpu-prof': { type: 'string' },
      'trace-gc': { type: 'boolean', default: false },
      only: { type: 'string' },
      sizes: { type: 'string', default: '4k,128k' },
      'node-option': { type: 'string', multiple: true },
      'gap-us': { type: 'string', default: '0' },
      'gap-spin': { type: 'boolean', default: false },
      dbbuf: { type: 'boolean', default: false },
      'endpoint-log': { type: 'string' },
    },
  });
}

function options(argv: string[]): Options {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(USAGE);
    process.exit(0);
  }
  let values: ReturnType<typeof parse>['values'];
  try {
    ({ values } = parse(argv));
  } catch (e) {
    // An unknown option or a missing value: the message and the usage, not a stack.
    throw new UsageError(`${(e as Error).message}\n${USAGE}`);
  }
  const int = (name: string, v: string, lo: number, hi: number) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi)
      throw new UsageError(`--${name} must be ${lo}..${hi}, not ${v}`);
    return n;
  };
  const sz = sizes(values.sizes!);
  return {
    sizes: sz,
    kinds: sz.flatMap((size) => [
      { size, write: false },
      { size, write: true },
    ]),
    ios: int('ios', values.ios!, 100, 1_000_000),
    warmup: int('warmup', values.warmup!, 0, 1_000_000),
    runs: int('runs', values.runs!, 1, 50),
    trees: (values.tree ?? [repoRoot()]).map((t) => resolve(t)),
    cpuProf: values['cpu-prof'] && resolve(values['cpu-prof']),
    traceGc: values['trace-gc']!,
    only: only(values.only),
    nodeOptions: values['node-option'] ?? [],
    gapUs: int('gap-us', values['gap-us']!, 0, 100_000),
    gapSpin: values['gap-spin']!,
    dbbuf: values.dbbuf!,
    endpointLog: values['endpoint-log'] && resolve(values['endpoint-log']),
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const f1 = (n: number) => n.toFixed(1);

function row(label: string, p: Phase, gc: boolean): string {
  return `${label.padEnd(40)} cpu ${f1(p.cpu).padStart(6)} µs (user ${f1(p.user).padStart(5)}, sys ${f1(p.sys).padStart(5)})  main ${f1(p.main).padStart(6)} µs  wall ${f1(p.wall).padStart(6)} µs  records ${p.records.toFixed(2)}  rung ${p.rung.toFixed(2)}  calls r/w ${p.syscr.toFixed(2)}/${p.syscw.toFixed(2)}${gc ? `  gc/1000 ${f1(p.gcs)} (full ${f1(p.majors)})` : ''}`;
}

async function main(): Promise<void> {
  const o = options(process.argv.slice(2));
  console.log(
    `bench/endpoint-io: ${o.ios} QD1 I/Os of each kind (${o.kinds.map(kindName).join(', ')}) per run after ${o.warmup} warm-up I/Os, ${o.runs} run(s) per tree, alternating`,
  );
  const results: RunResult[] = [];
  for (let r = 0; r < o.runs; r++) {
    const order = r % 2 ? [...o.trees].reverse() : o.trees;
    for (const tree of order) {
      const res = await run(tree, o);
      results.push(res);
      for (const [name, p] of res.phases) console.log(row(`run ${r + 1} ${tree} ${name}`, p, o.traceGc));
    }
  }
  // The load of a shared machine drifts: each run's trees ran back to back, so the ratio within a
  // run is steadier than the ratio of medians.
  if (o.trees.length === 2) {
    const [ref, mine] = o.trees as [string, string];
    for (const kind of o.kinds.map(kindName)) {
      const ratios = (pick: (p: Phase) => number) =>
        Array.from({ length: o.runs }, (_, r) => {
          const a = results.find((x, i) => x.tree === ref && Math.floor(i / 2) === r)!;
          const b = results.find((x, i) => x.tree === mine && Math.floor(i / 2) === r)!;
          return pick(b.phases.get(kind)!) / pick(a.phases.get(kind)!);
        });
      const pct = (xs: number[]) => `${((median(xs) - 1) * 100).toFixed(0)} %`;
      console.log(
        `${kind}: ${mine} against ${ref}, median of the runs' ratios: cpu ${pct(ratios((p) => p.cpu))}, user ${pct(ratios((p) => p.user))}, main thread ${pct(ratios((p) => p.main))}`,
      );
    }
  }
  console.log(`\nmedians of ${o.runs} run(s), per I/O:`);
  for (const tree of o.trees) {
    const mine = results.filter((x) => x.tree === tree);
    for (const kind of o.kinds.map(kindName)) {
      const ps = mine.map((x) => x.phases.get(kind)!);
      const med: Phase = {
        cpu: median(ps.map((p) => p.cpu)),
        user: median(ps.map((p) => p.user)),
        sys: median(ps.map((p) => p.sys)),
        main: median(ps.map((p) => p.main)),
        wall: median(ps.map((p) => p.wall)),
        records: median(ps.map((p) => p.records)),
        rung: median(ps.map((p) => p.rung)),
        syscr: median(ps.map((p) => p.syscr)),
        syscw: median(ps.map((p) => p.syscw)),
        gcs: median(ps.map((p) => p.gcs)),
        majors: median(ps.map((p) => p.majors)),
      };
      console.log(row(`${tree} ${kind}`, med, o.traceGc));
    }
  }
}

main().catch((e) => {
  console.error(e instanceof UsageError ? `bench/endpoint-io: ${e.message}` : e);
  process.exit(e instanceof UsageError ? 2 : 1);
});
