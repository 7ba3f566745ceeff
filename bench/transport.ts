// bench/transport: streaming DMA between the host-agent (sim channel, this process) and a real
// `pcinet endpoint` process over TCP loopback, side by side with raw socket throughput between two
// processes measured in the same run. Each direction runs twice: with the test device's copy
// commands (DMA_WRITE_COPY from a pattern made once, DMA_READ_COPY without a CRC: what moving memory
// costs pcinet, against raw TCP) and with its pattern and CRC (against raw TCP whose ends do the
// same per-byte work). Prints a table and writes an SVG chart (--chart FILE, default
// bench/results/transport.svg); asserts nothing.
//
//   npm run bench                      # both directions, 256 MiB each
//   node dist/bench/transport.js --mib 1024 --rounds 3 [--devices 1..16] [--no-write | --no-read]
//        [--no-copy | --no-pattern] [--no-raw] [--chart FILE]
//   (--no-raw: pcinet only, for profiles: PCINET_BENCH_PROF=DIR profiles the endpoint)
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
import { cpuOf, ownCpu, type RawWork, rawSocketThroughput, type Throughput } from './raw-socket.js';

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
    ['no-write', 'no-read', 'no-copy', 'no-pattern', 'no-raw'],
  );
}

/** Moved with each row's command before the measured rounds: enough commands (16 per device) for V8
 *  to compile the path's hot functions, which a first round would otherwise pay for. */
const WARM_UP_BYTES = 256 << 20;

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

/** A device's DMA buffer in sim host memory, mapped once for each direction as a driver maps a
 *  streaming buffer (reads from a to-device mapping are sent straight from host memory,
 *  host-agent/sim/iommu.ts): set up once, outside the timed runs (the harness's page faults are not
 *  pcinet's work). */
interface Stream {
  driver: TestDriver;
  toDevice: bigint;
  fromDevice: bigint;
}

function setUpStream(driver: TestDriver, channel: SimChannel): Stream {
  const buf = channel.memory.alloc(TEST_MAX_DMA);
  buf.bytes.fill(0x5a);
  return {
    driver,
    toDevice: channel.iommu.map(buf, 'to-device'),
    fromDevice: channel.iommu.map(buf, 'from-device'),
  };
}

/** Moves `totalBytes` with DMA commands of TEST_MAX_DMA bytes in direction `cmd`, one command at a
 *  time on one device. DMA_WRITE gets a new seed every time (the device makes a new pattern),
 *  DMA_WRITE_COPY the same one (the device makes it once). */
async function stream(s: Stream, cmd: number, totalBytes: number): Promise<number> {
  const size = TEST_MAX_DMA;
  const count = Math.max(1, Math.round(totalBytes / size));
  const f = s.driver.fn;
  const read = cmd === CMD.DMA_READ || cmd === CMD.DMA_READ_COPY;
  for (let i = 0; i < count; i++) {
    const { status } = await s.driver.command(cmd, 0, () => {
      f.write64(TEST_REG_BAR, read ? REG.SRC_ADDR : REG.DST_ADDR, read ? s.toDevice : s.fromDevice);
      f.write32(TEST_REG_BAR, REG.SIZE, size);
      f.write32(TEST_REG_BAR, REG.ARG, cmd === CMD.DMA_WRITE ? i + 1 : 1);
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
  const host0 = ownCpu();
  const ep0 = cpuOf(endpointPid);
  const start = process.hrtime.bigint();
  const moved = await Promise.all(streams.map((st) => stream(st, cmd, totalBytes / streams.length)));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const host = ownCpu();
  const ep = cpuOf(endpointPid);
  const hostCpuMs = host.ms - host0.ms;
  return {
    bytesPerSecond: moved.reduce((a, b) => a + b, 0) / seconds,
    cpuMs: hostCpuMs + ep.ms - ep0.ms,
    userMs: host.userMs - host0.userMs + ep.userMs - ep0.userMs,
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
  const total = o.mib * 2 ** 20;
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
    interface Row {
      name: string;
      cmd: number;
      /** The reference: raw TCP, or raw TCP doing the device's work. */
      against: 'raw TCP' | 'raw + work';
      work: RawWork;
      ours: Run[];
      ref: Run[];
    }
    const row = (name: string, cmd: number, work: RawWork): Row => ({
      name,
      cmd,
      against: work === 'none' ? 'raw TCP' : 'raw + work',
      work,
      ours: [],
      ref: [],
    });
    // Per direction: the copy command against raw TCP (what pcinet itself costs), then the
    // pattern/CRC command against raw TCP doing the same per-byte work.
    const directions = [
      [
        row('DMA write, copy (dev -> host)', CMD.DMA_WRITE_COPY, 'none'),
        row('DMA write, pattern', CMD.DMA_WRITE, 'pattern'),
      ],
      [
        row('DMA read, copy (host -> dev)', CMD.DMA_READ_COPY, 'none'),
        row('DMA read, CRC', CMD.DMA_READ, 'crc'),
      ],
    ];
    const skipDirection = [o['no-write'], o['no-read']];
    const skipRow = [o['no-copy'], o['no-pattern']];
    // Warm up every path measured (its JavaScript compiled, on both sides, before its first round),
    // then interleave rounds so machine noise hits both alike.
    await dmaThroughput(streams, CMD.DMA_WRITE_COPY, 16 << 20, endpoint.pid!);
    for (const [i, rows] of directions.entries()) {
      if (skipDirection[i]) continue;
      for (const [k, w] of rows.entries())
        if (!skipRow[k]) await dmaThroughput(streams, w.cmd, WARM_UP_BYTES, endpoint.pid!);
    }
    if (!o['no-raw']) await rawSocketThroughput(16 << 20, 256 << 10);
    for (let r = 0; r < o.rounds; r++) {
      for (const [i, rows] of directions.entries()) {
        if (skipDirection[i]) continue;
        for (const [k, w] of rows.entries()) {
          if (skipRow[k]) continue;
          w.ours.push(await dmaThroughput(streams, w.cmd, total, endpoint.pid!));
          if (!o['no-raw']) w.ref.push(await rawSocketThroughput(total, 256 << 10, w.work));
        }
      }
    }
    const stats = session.stats();
    process.stdout.write(
      `bench/transport: ${o.mib} MiB per measurement, median of ${o.rounds} rounds, TCP loopback, ` +
        `${o.devices} test devices streaming ${TEST_MAX_DMA >> 20} MiB DMA commands at once;\n` +
        `copy: the test device's DMA_WRITE_COPY (a pattern made once) / DMA_READ_COPY (no CRC), against raw TCP: one TCP stream between two processes;\n` +
        `pattern, CRC: DMA_WRITE (a new pattern per command) / DMA_READ (CRC), against raw + work: the same stream, its ends doing the\n` +
        `test device's and the sim host's per-byte work (pattern / CRC, copies into and out of host memory)\n\n` +
        `CPU ms per MiB: both processes (pcinet: host-agent side + endpoint; raw: source + sink), median\n\n` +
        `${'path'.padEnd(30)} ${'pcinet MB/s'.padStart(11)}  ${'against'.padEnd(10)} ${'MB/s'.padStart(6)}  ratio  ` +
        `${'CPU/MiB pcinet (host+ep)'.padStart(24)} ${'against'.padStart(7)}\n`,
    );
    const chartGroups: { label: string; unit: string; values: (number | undefined)[] }[] = [];
    /** Of the CPU above, what was user space (JavaScript, V8's threads, libuv): the kernel's work
     *  (socket copies, TCP) is the same bytes on both paths, so this is mostly where they differ. */
    const userLines: string[] = [];
    for (const w of directions.flat()) {
      if (w.ours.length === 0) continue;
      const ours = median(w.ours.map((x) => x.bytesPerSecond));
      const cpu = median(w.ours.map((x) => x.cpuMs));
      const host = median(w.ours.map((x) => x.hostCpuMs ?? 0));
      const ref = w.ref.length > 0 ? median(w.ref.map((x) => x.bytesPerSecond)) : undefined;
      const cpuRef = w.ref.length > 0 ? median(w.ref.map((x) => x.cpuMs)) : undefined;
      const split = `${perMib(cpu, total)} (${perMib(host, total)}+${perMib(cpu - host, total)})`;
      process.stdout.write(
        `${w.name.padEnd(30)} ${mbs(ours).padStart(11)}  ${w.against.padEnd(10)} ${ref ? mbs(ref).padStart(6) : '     -'}  ` +
          `${ref ? (ours / ref).toFixed(2) : '   -'}  ${split.padStart(24)} ${cpuRef ? perMib(cpuRef, total).padStart(7) : '      -'}\n`,
      );
      const user = median(w.ours.map((x) => x.userMs));
      const userRef = w.ref.length > 0 ? median(w.ref.map((x) => x.userMs)) : undefined;
      userLines.push(
        `${w.name.padEnd(30)} ${perMib(user, total).padStart(6)}  ${userRef === undefined ? '     -' : perMib(userRef, total).padStart(6)}\n`,
      );
      const label = w.name.split('(')[0]!.trim();
      chartGroups.push({ label, unit: 'MB/s', values: [ours / 1e6, ref && ref / 1e6] });
      chartGroups.push({
        label: `${label}, CPU`,
        unit: 'ms per MiB',
        values: [cpu / (total / 2 ** 20), cpuRef && cpuRef / (total / 2 ** 20)],
      });
    }
    writeChart(o.chart, {
      title: 'pcinet session (sim host-agent ↔ endpoint process) against raw TCP, same run',
      notes: [
        `TCP loopback, ${o.devices} test devices streaming ${TEST_MAX_DMA >> 20} MiB DMA commands; ${o.mib} MiB per measurement, median of ${o.rounds}; ${new Date().toISOString().slice(0, 10)}`,
        "copy rows against raw TCP, pattern/CRC rows against raw TCP doing the device's and sim host's per-byte work",
        'CPU: both processes (pcinet: host-agent side + endpoint; raw: source + sink); each row scaled to its own largest value',
      ],
      series: ['pcinet', 'reference (raw TCP / raw + work)'],
      groups: chartGroups,
      scale: 'group',
    });
    process.stdout.write(
      `\nof which user space (the rest: the kernel's), CPU ms per MiB, median\n${'path'.padEnd(30)} ${'pcinet'.padStart(6)}  ${'against'.padStart(6)}\n${userLines.join('')}`,
    );
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
