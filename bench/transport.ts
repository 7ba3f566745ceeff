// bench/transport: streaming DMA between the host-agent (sim channel, this process) and a real
// `pcinet endpoint` process over TCP loopback, side by side with raw socket throughput between two
// processes measured in the same run. Prints a table and writes an SVG chart (--chart FILE, default
// bench/results/transport.svg); asserts nothing.
//
//   npm run bench                      # both directions, 256 MiB each
//   node dist/bench/transport.js --mib 1024 --rounds 3 [--devices 1..16] [--no-write | --no-read] [--chart FILE]
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import { ALLOCATOR_ENV, withAllocatorEnv } from '../cli/allocator.js';
import { CMD, REG, STATUS, TEST_MAX_DMA, TEST_REG_BAR } from '../devices/test/regs.js';
import { Relay } from '../host-agent/relay.js';
import { SimChannel } from '../host-agent/sim/channel.js';
import { TestDriver } from '../host-agent/sim/test-driver.js';
import { repoRoot } from '../lab/paths.js';
import { openSession } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { parseBenchArgs } from './args.js';
import { writeChart } from './chart.js';
import { cpuMsOf, ownCpuMs, type RawWork, rawSocketThroughput, type Throughput } from './raw-socket.js';

function parseArgs(argv: string[]) {
  const whole = (max: number) => (n: number) => Number.isInteger(n) && n >= 1 && n <= max;
  return parseBenchArgs(
    'transport',
    argv,
    {
      mib: { value: 256, range: '1..65536', ok: whole(65536) },
      rounds: { value: 3, range: '1..100', ok: whole(100) },
      /** Test devices streaming at once (each runs one command at a time). */
      devices: { value: 4, range: '1..16', ok: whole(16) },
    },
    ['no-write', 'no-read'],
  );
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

async function startEndpoint(port: number, devices: number): Promise<ChildProcess> {
  const cli = join(repoRoot(), 'dist/cli/main.js');
  const c = spawn(
    process.execPath,
    [
      ...(process.env.PCINET_BENCH_PROF
        ? ['--cpu-prof', `--cpu-prof-dir=${process.env.PCINET_BENCH_PROF}`]
        : []),
      cli,
      'endpoint',
      // Its own run, beside any other endpoint on this machine: no control socket.
      '--no-control',
      '--listen',
      `127.0.0.1:${port}`,
      ...Array(devices).fill(['--device', 'test']).flat(),
      '--log-level',
      'info',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], env: withAllocatorEnv() },
  );
  await new Promise<void>((resolve, reject) => {
    let out = '';
    // Logs go to stderr; keep draining it so the endpoint never blocks on a full pipe.
    c.stderr!.on('data', (d) => {
      out += d;
      if (out.includes('endpoint listening')) resolve();
    });
    c.on('exit', (code) => reject(new Error(`endpoint exited ${code}`)));
  });
  return c;
}

/** A device's DMA buffer in sim host memory, mapped for both directions: set up once, outside the
 *  timed runs (the harness's page faults are not pcinet's work). */
interface Stream {
  driver: TestDriver;
  iova: bigint;
}

function setUpStream(driver: TestDriver, channel: SimChannel): Stream {
  const buf = channel.memory.alloc(TEST_MAX_DMA);
  buf.bytes.fill(0x5a);
  return { driver, iova: channel.iommu.map(buf, 'bidirectional') };
}

/** Moves `totalBytes` with DMA commands of TEST_MAX_DMA bytes in direction `cmd`, one command at a
 *  time on one device. */
async function stream(s: Stream, cmd: number, totalBytes: number): Promise<number> {
  const size = TEST_MAX_DMA;
  const count = Math.max(1, Math.round(totalBytes / size));
  const f = s.driver.fn;
  for (let i = 0; i < count; i++) {
    const { status } = await s.driver.command(cmd, 0, () => {
      f.write64(TEST_REG_BAR, cmd === CMD.DMA_READ ? REG.SRC_ADDR : REG.DST_ADDR, s.iova);
      f.write32(TEST_REG_BAR, REG.SIZE, size);
      f.write32(TEST_REG_BAR, REG.ARG, i + 1);
    });
    if (status !== STATUS.DONE) throw new Error(`DMA command ${cmd} failed: status 0x${status.toString(16)}`);
  }
  return count * size;
}

/** Every device streaming its share of `totalBytes` at once: bytes per second, and the CPU this
 *  process (the host-agent's side) and the endpoint used for it. */
async function dmaThroughput(
  streams: Stream[],
  cmd: number,
  totalBytes: number,
  endpointPid: number,
): Promise<Throughput & { hostCpuMs: number }> {
  const host0 = ownCpuMs();
  const ep0 = cpuMsOf(endpointPid);
  const start = process.hrtime.bigint();
  const moved = await Promise.all(streams.map((st) => stream(st, cmd, totalBytes / streams.length)));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const hostCpuMs = ownCpuMs() - host0;
  return {
    bytesPerSecond: moved.reduce((a, b) => a + b, 0) / seconds,
    cpuMs: hostCpuMs + cpuMsOf(endpointPid) - ep0,
    hostCpuMs,
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mbs = (bps: number) => (bps / 1e6).toFixed(0).padStart(7);
/** CPU per MiB moved, in ms: what a busy machine changes least (throughput depends on who else
 *  runs; the work per byte does not). */
const perMib = (cpuMs: number, bytes: number) => (cpuMs / (bytes / 2 ** 20)).toFixed(2);

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const total = o.mib << 20;
  const log = pino({ level: 'silent' });
  const port = await freePort();
  const endpoint = await startEndpoint(port, o.devices);
  const channel = new SimChannel({ log, memory: (o.devices + 1) * TEST_MAX_DMA });
  const session = await openSession(() => dialTcp('127.0.0.1', port), { log });
  try {
    const relay = new Relay(session, channel, log);
    await new Promise<void>((r) => {
      relay.onSettled = () => r();
    });
    const drivers = channel.functions.map((f) => new TestDriver(f, channel.memory, channel.iommu));
    for (const d of drivers) d.probe();
    const streams = drivers.map((d) => setUpStream(d, channel));
    type Run = Throughput & { hostCpuMs?: number };
    const rows: { name: string; work: RawWork; ours: Run[]; raw: Run[]; worked: Run[] }[] = [
      { name: 'DMA write (device -> host)', work: 'pattern', ours: [], raw: [], worked: [] },
      { name: 'DMA read  (host -> device)', work: 'crc', ours: [], raw: [], worked: [] },
    ];
    const skip = [o['no-write'], o['no-read']];
    // Warm up both paths, then interleave rounds so machine noise hits both alike.
    await dmaThroughput(streams, CMD.DMA_WRITE, 16 << 20, endpoint.pid!);
    await rawSocketThroughput(16 << 20, 256 << 10);
    for (let r = 0; r < o.rounds; r++) {
      for (const [i, cmd] of [CMD.DMA_WRITE, CMD.DMA_READ].entries()) {
        if (skip[i]) continue;
        rows[i]!.ours.push(await dmaThroughput(streams, cmd, total, endpoint.pid!));
        rows[i]!.raw.push(await rawSocketThroughput(total, 256 << 10));
        rows[i]!.worked.push(await rawSocketThroughput(total, 256 << 10, rows[i]!.work));
      }
    }
    const stats = session.stats();
    process.stdout.write(
      `bench/transport: ${o.mib} MiB per measurement, median of ${o.rounds} rounds, TCP loopback, ` +
        `${o.devices} test devices streaming ${TEST_MAX_DMA >> 20} MiB DMA commands at once; raw: one TCP stream between two processes;\n` +
        `+work: the same stream, its ends doing the test device's and the sim host's per-byte work (pattern / CRC, copies into and out of host memory)\n\n` +
        `CPU ms per MiB: both processes (pcinet: host-agent side + endpoint; raw: source + sink), median\n\n` +
        `${'path'.padEnd(28)} ${'pcinet MB/s'.padStart(11)} ${'raw MB/s'.padStart(9)}  ratio  ${'+work MB/s'.padStart(10)}  ratio  ` +
        `${'CPU/MiB pcinet (host+ep)'.padStart(24)} ${'raw'.padStart(5)} ${'+work'.padStart(5)}\n`,
    );
    const chartGroups: { label: string; unit: string; values: number[] }[] = [];
    for (const row of rows) {
      if (row.ours.length === 0) continue;
      const ours = median(row.ours.map((x) => x.bytesPerSecond));
      const raw = median(row.raw.map((x) => x.bytesPerSecond));
      const cpu = median(row.ours.map((x) => x.cpuMs));
      const host = median(row.ours.map((x) => x.hostCpuMs ?? 0));
      const cpuRaw = median(row.raw.map((x) => x.cpuMs));
      const worked = median(row.worked.map((x) => x.bytesPerSecond));
      const cpuWorked = median(row.worked.map((x) => x.cpuMs));
      const split = `${perMib(cpu, total)} (${perMib(host, total)}+${perMib(cpu - host, total)})`;
      process.stdout.write(
        `${row.name.padEnd(28)} ${mbs(ours).padStart(11)} ${mbs(raw).padStart(9)}  ${(ours / raw).toFixed(2)}  ` +
          `${mbs(worked).padStart(10)}  ${(ours / worked).toFixed(2)}  ` +
          `${split.padStart(24)} ${perMib(cpuRaw, total).padStart(5)} ${perMib(cpuWorked, total).padStart(5)}\n`,
      );
      const label = row.name.split('(')[0]!.trim();
      chartGroups.push({ label, unit: 'MB/s', values: [ours / 1e6, raw / 1e6, worked / 1e6] });
      chartGroups.push({
        label: `${label}, CPU`,
        unit: 'ms per MiB',
        values: [cpu / (total / 2 ** 20), cpuRaw / (total / 2 ** 20), cpuWorked / (total / 2 ** 20)],
      });
    }
    writeChart(o.chart, {
      title: 'pcinet session (sim host-agent ↔ endpoint process) against raw TCP, same run',
      notes: [
        `TCP loopback, ${o.devices} test devices streaming ${TEST_MAX_DMA >> 20} MiB DMA commands; ${o.mib} MiB per measurement, median of ${o.rounds}; ${new Date().toISOString().slice(0, 10)}`,
        'CPU: both processes (pcinet: host-agent side + endpoint; raw: source + sink); each row scaled to its own largest value',
      ],
      series: ['pcinet', 'raw TCP', 'raw TCP + device work'],
      groups: chartGroups,
      scale: 'group',
    });
    process.stdout.write(`\nchart: ${o.chart}\n`);
    process.stdout.write(
      `\nsession: ${stats.framesOut} frames out, ${stats.framesIn} in; ${(stats.bytesIn / 2 ** 20).toFixed(0)} MiB in, ` +
        `${(stats.bytesOut / 2 ** 20).toFixed(0)} MiB out\n`,
    );
  } finally {
    await session.close();
    endpoint.kill('SIGTERM');
  }
}

// This process is the host-agent's side: run it with the allocator settings `pcinet host` has
// (bin/pcinet), starting again under them if whoever started it did not set them.
if (Object.keys(ALLOCATOR_ENV).some((k) => process.env[k] === undefined)) {
  const r = spawnSync(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: withAllocatorEnv(),
  });
  process.exit(r.status ?? 1);
} else
  main().catch((e: unknown) => {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`${msg.startsWith('bench/transport:') ? '' : 'bench/transport: '}${msg}\n`);
    process.exit(1);
  });
