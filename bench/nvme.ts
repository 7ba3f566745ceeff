// bench/nvme: pcinet's NVMe controller side by side with other block devices on the same path, in
// one lab run (QEMU TCG guest = the workstation, this machine's private network namespace = the
// card). Prints a table and writes an SVG chart; asserts nothing.
//
// Columns:
// - pcinet TCP: a second endpoint in the card's namespace on tcp://127.0.0.1:7471 and a second
//   host-agent in the guest dialling tcp://10.0.2.2:7471 — the command lines runInLab itself uses
//   with `insecure: true` (lab/commands.ts), so both transports are measured in the same boot;
// - pcinet TLS: the lab's own endpoint and host-agent (tls://10.0.2.2:7470); both pcinet columns
//   carry the data plane on pcinet.ko's kernel link (sealed on TLS) unless --no-link, which
//   keeps it in the host-agents (--no-kernel-link) to measure that path in the same way;
// - NBD: Debian's nbd-server in the card's namespace on 127.0.0.1:10809, the guest's nbd driver and
//   nbd-client dialling 10.0.2.2:10809: guest → QEMU user networking → the card's loopback, exactly
//   the path the host-agent takes to its endpoint;
// - NVMe/TCP (kernel-only bound): nvmet-tcp and nvme-tcp over the guest's own loopback; it never
//   crosses the network, so it bounds what the guest's kernel can do, not what the path allows.
// Every disk is backed by a sparse file of the same size on tmpfs (this machine's /dev/shm for the
// card's three, the guest's /tmp for NVMe/TCP).
//
// Rows: dd O_DIRECT at QD1 (4K and 128K, both directions), fio 4K random reads at QD32 (IOPS), fio
// 128K sequential reads and writes at QD8 (MB/s). Per phase for pcinet, from the endpoint's
// counters (SIGUSR1 to the host-agent before and after) and /proc/PID/stat of the host-agent in
// the guest: DMA read round trips, pushed-byte hits, pushed bytes and push drops (when the endpoint
// counts them), MMIO writes, interrupts and host-agent CPU time, each per I/O; and what the other,
// idle host-agent cost meanwhile (two share the guest's vCPUs).
//
//   node dist/bench/nvme.js [--mib 64] [--seconds 10] [--no-link] [--chart FILE] [--log]
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CONTROL_PORT, startCardControl } from '../lab/card-control.js';
import { endpointArgv, hostAgentArgv, LAB_ENDPOINT_PORT, SLIRP_HOST } from '../lab/commands.js';
import { HOST_AGENT_LOG } from '../lab/guest-script.js';
import { GUEST_RUN_DIR } from '../lab/paths.js';
import { ensurePackages, type LabAssets, prepareLab } from '../lab/prepare.js';
import { runOk, tail, unrefDelay } from '../lab/proc.js';
import { type LabCard, runInLab } from '../lab/run.js';
import { parseBenchArgs } from './args.js';
import { type CpuGroup, sample, usPerTick } from './card-cpu.js';
import { formatValue, writeChart } from './chart.js';
import { type Counters, counterDelta, parseStats } from './guest-stats.js';
import { type Measured, measured, table } from './measure.js';
import { DISKS, type Disk, guestScript, scriptBoundS, type Test, tests } from './nvme-guest.js';

/** Tools this machine needs: the guest runs this machine's binaries (its root over 9p). */
const PACKAGES = ['fio', 'nvme-cli', 'nbd-server', 'nbd-client'] as const;
/** The card's files live here: tmpfs, like the guest's /tmp that backs NVMe/TCP. */
const TMPFS = '/dev/shm';
/** The bench's plain-TCP endpoint: next to the lab's own, in the same private namespace. */
const TCP_PORT = LAB_ENDPOINT_PORT + 1;
/** IANA's NBD port; the namespace is private, so it is free. */
const NBD_PORT = 10809;
const NBD_EXPORT = 'pcinet-bench';
const TCP_READY = '/tmp/pcinet-tcp-ready';
const TCP_HOST_CONTROL = '/tmp/pcinet-tcp-host.sock';
/** The card's servers whose CPU bench/card-cpu samples: both endpoints, and every nbd-server
 *  process (the forked child serves the guest). */
const CARD_GROUPS: CpuGroup[] = [
  { name: 'tcp', match: { cmd: `endpoint --listen tcp://127.0.0.1:${TCP_PORT}` } },
  { name: 'tls', match: { cmd: `endpoint --listen tls://127.0.0.1:${LAB_ENDPOINT_PORT}` } },
  { name: 'nbd', match: { comm: 'nbd-server' } },
];
const TCP_SERIAL = 'PCINETTCP1';
/** The card's servers must listen within this. */
const LISTEN_WAIT_MS = 20_000;
const LISTEN_POLL_MS = 100;
const STOP_WAIT_MS = 3000;
/** Boot (~10 s), the lab's attach (≤ 60 s) and teardown (≤ 40 s), with room. */
const LAB_OVERHEAD_S = 150;
/** st column of /proc/net/tcp (include/net/tcp_states.h: TCP_LISTEN = 10). */
const TCP_LISTEN = '0A';

const COLUMNS: Record<Disk, string> = {
  tcp: 'pcinet TCP',
  tls: 'pcinet TLS',
  nbd: 'NBD',
  kernel: 'NVMe/TCP (kernel-only bound)',
};

/** A long-running process on the card: output kept for error messages, stopped by cleanup. */
interface CardProc {
  name: string;
  proc: ChildProcess;
  log: () => string;
}

function startOnCard(card: LabCard, name: string, argv: string[], lifetimeS: number, cwd: string): CardProc {
  // timeout(1) bounds it even if this process dies, and passes SIGTERM on.
  const [cmd, ...args] = card.wrap(['timeout', String(lifetimeS), ...argv]);
  const proc = spawn(cmd!, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (d: Buffer) => {
    if (log.length < 1 << 20) log += d.toString();
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  proc.on('error', (e) => keep(Buffer.from(`cannot run ${argv[0]}: ${e.message}\n`)));
  return { name, proc, log: () => log };
}

async function stopOnCard(p: CardProc): Promise<void> {
  if (p.proc.exitCode !== null || p.proc.signalCode !== null) return;
  const exited = new Promise((r) => p.proc.once('exit', r));
  p.proc.kill('SIGTERM');
  if (await Promise.race([exited.then(() => true), unrefDelay(STOP_WAIT_MS).then(() => false)])) return;
  p.proc.kill('SIGKILL');
  await Promise.race([exited, unrefDelay(STOP_WAIT_MS)]);
}

/** Ports in LISTEN state in the namespace (/proc/net/tcp as a process in it sees it). */
async function listeningPorts(card: LabCard): Promise<Set<number>> {
  const table = await runOk(card.wrap(['cat', '/proc/net/tcp']), { timeoutMs: 10_000 });
  const ports = new Set<number>();
  for (const line of table.split('\n').slice(1)) {
    const [, local, , state] = line.trim().split(/\s+/);
    if (local && state === TCP_LISTEN) ports.add(Number.parseInt(local.split(':')[1]!, 16));
  }
  return ports;
}

/** The card's side of the bench: the plain-TCP endpoint and nbd-server, both listening. */
async function startCard(
  card: LabCard,
  o: {
    assets: LabAssets;
    dir: string;
    diskBytes: number;
    lifetimeS: number;
    procs: CardProc[];
    /** Where the card's CPU samples go, by the guest's label. */
    cardCpu: Parsed['card'];
  },
): Promise<() => Promise<void>> {
  const cleanup = async () => {
    await Promise.all(o.procs.map(stopOnCard));
  };
  try {
    const endpoint = endpointArgv({
      node: process.execPath,
      cli: o.assets.cli!,
      port: TCP_PORT,
      // Its own serial: two controllers with one serial are one NVM subsystem to Linux, which then
      // rejects the second for its duplicate controller ID.
      devices: [`nvme:file=${join(o.dir, 'pcinet-tcp.img')},size=${o.diskBytes},serial=${TCP_SERIAL}`],
      insecure: true,
      // Beside the lab's own endpoint: a control socket of its own.
      control: join(o.dir, 'tcp-endpoint.sock'),
    });
    o.procs.push(startOnCard(card, 'the plain-TCP endpoint', endpoint, o.lifetimeS, o.dir));
    // nbd-server's new-style config: listen on the namespace's loopback (slirp's 10.0.2.2), one
    // export; without `user` it keeps running as root.
    const image = join(o.dir, 'nbd.img');
    writeFileSync(image, '');
    truncateSync(image, o.diskBytes);
    const conf = join(o.dir, 'nbd-server.conf');
    writeFileSync(
      conf,
      `[generic]\nlistenaddr = 127.0.0.1\nport = ${NBD_PORT}\n\n[${NBD_EXPORT}]\nexportname = ${image}\n`,
    );
    // -d: stay in the foreground (each client is still served by a child of its own).
    o.procs.push(startOnCard(card, 'nbd-server', ['nbd-server', '-C', conf, '-d'], o.lifetimeS, o.dir));
    // The guest asks for a sample of the card's CPU before and after each phase (its `mark`):
    // this run's processes only (its network namespace), not those of a lab run beside it.
    const tick = usPerTick();
    const netns = (await runOk(card.wrap(['readlink', '/proc/self/ns/net']), { timeoutMs: 10_000 })).trim();
    const control = startCardControl(card, async (label) => {
      const now = sample(CARD_GROUPS, '/proc', true, netns);
      for (const g of CARD_GROUPS) now.set(g.name, now.get(g.name)! * tick);
      o.cardCpu.set(label, now);
    });
    o.procs.push({ name: "the card's control port", proc: control, log: () => '' });
    const deadline = Date.now() + LISTEN_WAIT_MS;
    for (;;) {
      const dead = o.procs.find((p) => p.proc.exitCode !== null || p.proc.signalCode !== null);
      if (dead) throw new Error(`bench/nvme: ${dead.name} exited before listening:\n${tail(dead.log(), 20)}`);
      const ports = await listeningPorts(card);
      if (ports.has(TCP_PORT) && ports.has(NBD_PORT) && ports.has(CONTROL_PORT)) break;
      if (Date.now() > deadline) {
        const logs = o.procs.map((p) => `--- ${p.name} ---\n${tail(p.log(), 20)}`).join('\n');
        throw new Error(`bench/nvme: the card's servers did not listen within ${LISTEN_WAIT_MS} ms\n${logs}`);
      }
      await unrefDelay(LISTEN_POLL_MS);
    }
    return cleanup;
  } catch (e) {
    await cleanup();
    throw e;
  }
}

// ---- the guest's output ----

interface Parsed {
  clkTck: number;
  /** "disk test" → the phase's dd or fio output lines. */
  out: Map<string, string[]>;
  failed: Map<string, string>;
  /** "disk test before|after" → the endpoint's counters. */
  stats: Map<string, Counters>;
  /** "disk test" → both host-agents' CPU (clock ticks) and the phase's wall time. */
  cpu: Map<string, PhaseCpu>;
  /** "disk test before|after" → pcinet.ko's timing sums: name → [ns, count]. */
  timing: Map<string, Map<string, [number, number]>>;
  /** "disk test before|after" → CPU µs used so far by the card's servers (bench/card-cpu):
   *  tcp and tls (the two endpoints), nbd (every nbd-server process). */
  card: Map<string, Map<string, number>>;
}

interface PhaseCpu {
  tcp: number;
  tls: number;
  ms: number;
}

function parse(stdout: string, cardCpu: Parsed['card']): Parsed {
  const p: Parsed = {
    clkTck: 100,
    out: new Map(),
    failed: new Map(),
    stats: parseStats(stdout),
    cpu: new Map(),
    timing: new Map(),
    card: cardCpu,
  };
  for (const line of stdout.split('\n')) {
    let m = /^CLK_TCK (\d+)$/.exec(line);
    if (m) p.clkTck = Number(m[1]);
    m = /^OUT (\S+ \S+) (.*)$/.exec(line);
    if (m) p.out.set(m[1]!, [...(p.out.get(m[1]!) ?? []), m[2]!]);
    m = /^FAILED (\S+ \S+) (\d+)$/.exec(line);
    if (m) {
      const why =
        m[2] === '124' ? 'stopped at its time bound; the rate is of the I/Os done by then' : `exit ${m[2]}`;
      p.failed.set(m[1]!, why);
    }
    m = /^TIMING (\S+ \S+ \S+) (\w+) (\d+) (\d+)$/.exec(line);
    if (m) {
      const t = p.timing.get(m[1]!) ?? new Map<string, [number, number]>();
      t.set(m[2]!, [Number(m[3]), Number(m[4])]);
      p.timing.set(m[1]!, t);
    }
    m = /^CPU (\S+ \S+) (-?\d+) (-?\d+) (\d+)$/.exec(line);
    if (m) p.cpu.set(m[1]!, { tcp: Number(m[2]), tls: Number(m[3]), ms: Number(m[4]) });
  }
  return p;
}

/** Clock ticks over a wall time, as % of one CPU. */
const percent = (ticks: number, ms: number, clkTck: number) =>
  ms > 0 ? `${((ticks / clkTck / (ms / 1000)) * 100).toFixed(1)} %` : '?';

const fmtRatio = (a: number | undefined, b: number | undefined) =>
  a !== undefined && b !== undefined && b > 0 ? (a / b).toFixed(2) : '?';

/** Per-I/O counters of the endpoint, with the push counters only when the endpoint has them. */
const PER_IO: readonly { counter: string; label: string; push?: boolean; link?: boolean; digits?: number }[] =
  [
    { counter: 'dmaReads', label: 'DMA read RTs' },
    { counter: 'pushHits', label: 'push hits', push: true },
    { counter: 'pushBytes', label: 'push bytes', push: true, digits: 0 },
    { counter: 'pushDrops', label: 'push drops', push: true },
    { counter: 'mmioWrites', label: 'MMIO writes' },
    { counter: 'interrupts', label: 'interrupts' },
    // Kernel link only: from the request's arrival at the endpoint to its reply leaving it.
    { counter: 'linkReplyUs', label: 'endpoint µs', link: true, digits: 0 },
  ];

/** pcinet.ko's own clock (/sys/bus/pci/devices/…/pcinet_timing), per I/O, for the link runs. */
const TIMING = [
  { name: 'mmio', label: 'MMIO handler', per: 'io' },
  { name: 'queue', label: 'queued→taken', per: 'io' },
  { name: 'send', label: 'send', per: 'io' },
  { name: 'rtt', label: 'link RTT', per: 'each' },
  { name: 'apply', label: 'apply', per: 'io' },
  { name: 'irq', label: 'MSI-X', per: 'io' },
  { name: 'map', label: 'DMA map', per: 'io' },
] as const;

function timingTable(p: Parsed, all: readonly Test[], results: Map<string, Measured>): void {
  if (p.timing.size === 0) return;
  console.log('');
  console.log(
    "pcinet.ko's timing, µs (its sums around each phase): per I/O — the fault handler serving the I/O's " +
      'MMIO accesses (the trap itself is not counted), records waiting for the link thread, sending, applying ' +
      "the endpoint's records, MSI-X raise to handler, the driver's DMA map and unmap calls; link RTT: the mean from a send to the next bytes back " +
      '(network both ways and the endpoint); endpoint: its mean reply time; network: RTT minus endpoint; ' +
      "reply: from a reply's first bytes back to its last record applied (its transfer and apply); " +
      "at QD1 also the whole I/O (from the row's rate) and the rest: the I/O minus every step above (the trap, " +
      'the block layer and dd, wake-ups)',
  );
  const rows = [
    ['transport', 'test', ...TIMING.map((t) => t.label), 'endpoint', 'network', 'reply', 'I/O', 'rest'],
  ];
  for (const d of ['tcp', 'tls'] as const) {
    for (const t of all) {
      const key = `${d} ${t.key}`;
      const ios = results.get(key)?.ios;
      const before = p.timing.get(`${key} before`);
      const after = p.timing.get(`${key} after`);
      const diff = (name: string) => {
        const a = after?.get(name);
        const b = before?.get(name);
        return a && b ? [a[0] - b[0], a[1] - b[1]] : undefined;
      };
      const cells = TIMING.map((c) => {
        const v = diff(c.name);
        if (!v || !ios) return '?';
        if (c.per === 'io') return (v[0] / 1000 / ios).toFixed(0);
        return v[1]! > 0 ? (v[0]! / 1000 / v[1]!).toFixed(0) : '-';
      });
      // At QD1 the steps follow each other: what the I/O took beyond their sum is the guest's own
      // (the trap, the block layer and dd, the wake-ups between steps).
      const value = results.get(key)?.value;
      const ioUs = t.tool === 'dd' && value ? t.bs / value : undefined;
      const steps = TIMING.map((c) => diff(c.name)?.[0]);
      const rest =
        ioUs !== undefined && ios && steps.every((v) => v !== undefined)
          ? ioUs - steps.reduce((a, v) => a + v! / 1000 / ios, 0)
          : undefined;
      // The endpoint's reply time per link reply, and what is left of the RTT for the network.
      const rtt = diff('rtt');
      // A reply's first bytes back → its last record applied: its transfer and its apply.
      const reply = diff('reply');
      const replies = counterDelta(p.stats, key, 'linkReplies');
      const replyUs = counterDelta(p.stats, key, 'linkReplyUs');
      const endpoint = replies && replyUs !== undefined ? replyUs / replies : undefined;
      const network =
        rtt && rtt[1]! > 0 && endpoint !== undefined ? rtt[0]! / 1000 / rtt[1]! - endpoint : undefined;
      rows.push([
        COLUMNS[d],
        t.label,
        ...cells,
        endpoint === undefined ? '?' : endpoint.toFixed(0),
        network === undefined ? '?' : network.toFixed(0),
        reply && ios ? (reply[0]! / 1000 / ios).toFixed(0) : '?',
        ioUs === undefined ? '-' : ioUs.toFixed(0),
        rest === undefined ? '-' : rest.toFixed(0),
      ]);
    }
  }
  console.log(table(rows, 2));
}

/** The card's CPU per I/O: each disk's server (pcinet's endpoints, nbd-server) around its phase. */
function cardTable(p: Parsed, all: readonly Test[], results: Map<string, Measured>): void {
  if (p.card.size === 0) {
    console.log("\ncard CPU: no samples (the card's control port did not answer the guest)");
    return;
  }
  const servers = [
    ['tcp', 'pcinet TCP endpoint'],
    ['tls', 'pcinet TLS endpoint'],
    ['nbd', 'nbd-server'],
  ] as const;
  const perIo = (d: (typeof servers)[number][0], t: Test) => {
    const key = `${d} ${t.key}`;
    const a = p.card.get(`${key} after`)?.get(d);
    const b = p.card.get(`${key} before`)?.get(d);
    const ios = results.get(key)?.ios;
    return a !== undefined && b !== undefined && ios ? (a - b) / ios : undefined;
  };
  console.log('');
  console.log(
    "card CPU per I/O, µs: the server behind each disk (utime+stime from the card's /proc around its phase, " +
      'clock-tick resolution), natively on this machine',
  );
  const rows = [['test', ...servers.map(([, l]) => l), 'TCP/NBD']];
  for (const t of all) {
    const v = servers.map(([d]) => perIo(d, t));
    rows.push([t.label, ...v.map((x) => (x === undefined ? '?' : x.toFixed(0))), fmtRatio(v[0], v[2])]);
  }
  console.log(table(rows, 1));
  // System calls per I/O: how many reads and writes each server needs (on loopback into QEMU, a
  // write runs the receiving side too).
  const calls = (d: (typeof servers)[number][0], t: Test) => {
    const key = `${d} ${t.key}`;
    const ios = results.get(key)?.ios;
    const per = (k: 'r' | 'w') => {
      const a = p.card.get(`${key} after`)?.get(`${d}.${k}`);
      const b = p.card.get(`${key} before`)?.get(`${d}.${k}`);
      return a !== undefined && b !== undefined && ios ? ((a - b) / ios).toFixed(1) : '?';
    };
    return `${per('r')} / ${per('w')}`;
  };
  console.log('');
  console.log('card system calls per I/O (reads / writes, from /proc/PID/io)');
  const crows = [['test', ...servers.map(([, l]) => l)]];
  for (const t of all) crows.push([t.label, ...servers.map(([d]) => calls(d, t))]);
  console.log(table(crows, 1));
}

function report(
  args: { mib: number; seconds: number; chart: string; log: boolean; 'no-link': boolean },
  kver: string,
  p: Parsed,
): void {
  const all = tests(args.mib);
  const results = new Map<string, Measured>();
  for (const t of all) {
    for (const d of DISKS) {
      const m = measured(t, p.out.get(`${d} ${t.key}`) ?? []);
      if (m) results.set(`${d} ${t.key}`, m);
    }
  }
  const value = (d: Disk, t: Test) => results.get(`${d} ${t.key}`)?.value;
  const shown = (d: Disk, t: Test) => {
    const v = value(d, t);
    return v === undefined ? '?' : t.unit === 'IOPS' ? v.toFixed(0) : formatValue(v);
  };
  console.log(
    `bench/nvme: one lab run (QEMU TCG, 2 vCPUs, Debian ${kver}); ${args.mib * 2} MiB sparse tmpfs file behind every disk; ` +
      `fio ${args.seconds} s per phase`,
  );
  console.log(
    `  data plane: ${args['no-link'] ? 'through the host-agents (--no-kernel-link)' : "on pcinet.ko's kernel links (sealed with AES-256-GCM on TLS)"}\n` +
      `  pcinet TLS: the lab's endpoint, tls://${SLIRP_HOST}:${LAB_ENDPOINT_PORT}; pcinet TCP: a second endpoint and host-agent ` +
      `in the same run, tcp://${SLIRP_HOST}:${TCP_PORT} (runInLab's insecure command lines)`,
  );
  console.log(
    `  NBD: nbd-server on the card's 127.0.0.1:${NBD_PORT}, the guest's nbd-client to ${SLIRP_HOST}:${NBD_PORT} ` +
      '(the same slirp path as the host-agent); NVMe/TCP: nvmet-tcp over the guest loopback, never crosses the network',
  );
  console.log('');
  const rows = [['test', 'unit', ...DISKS.map((d) => COLUMNS[d]), 'TCP/NBD', 'TLS/TCP']];
  for (const t of all) {
    rows.push([
      t.label,
      t.unit,
      ...DISKS.map((d) => shown(d, t)),
      fmtRatio(value('tcp', t), value('nbd', t)),
      fmtRatio(value('tls', t), value('tcp', t)),
    ]);
  }
  console.log(table(rows, 2));
  for (const [key, why] of p.failed) console.log(`  ${key}: ${why}`);

  const hasPush = [...p.stats.values()].some((c) =>
    Object.keys(c).some((k) => /\.push(Hits|Bytes|Drops)$/.test(k)),
  );
  const hasLink = [...p.stats.values()].some((c) => Object.keys(c).some((k) => /\.linkReplyUs$/.test(k)));
  const perIo = PER_IO.filter((c) => (hasPush || !c.push) && (hasLink || !c.link));
  console.log('');
  console.log(
    `pcinet per I/O: the endpoint's counters (SIGUSR1 to the host-agent before and after each phase) and the ` +
      `host-agent's utime+stime from /proc/PID/stat in the guest (CLK_TCK ${p.clkTck})` +
      (hasPush ? '' : '; no push counters in this endpoint'),
  );
  const other = { tcp: 'tls', tls: 'tcp' } as const;
  const prow = [['transport', 'test', 'I/Os', ...perIo.map((c) => c.label), 'CPU ms', 'other HA CPU']];
  for (const d of ['tcp', 'tls'] as const) {
    for (const t of all) {
      const key = `${d} ${t.key}`;
      const ios = results.get(key)?.ios;
      const per = (n: number | undefined, digits = 2) =>
        n === undefined || !ios ? '?' : (n / ios).toFixed(digits);
      const cpu = p.cpu.get(key);
      prow.push([
        COLUMNS[d],
        t.label,
        ios === undefined ? '?' : ios.toFixed(0),
        ...perIo.map((c) => per(counterDelta(p.stats, key, c.counter), c.digits)),
        per(cpu && (cpu[d] * 1000) / p.clkTck),
        cpu ? percent(cpu[other[d]], cpu.ms, p.clkTck) : '?',
      ]);
    }
  }
  console.log(table(prow, 2));
  cardTable(p, all, results);
  timingTable(p, all, results);
  // Two host-agents share the guest's two vCPUs: what the idle ones cost while the others ran.
  const idle = { tcp: 0, tls: 0, ms: 0 };
  for (const t of all) {
    for (const d of ['nbd', 'kernel'] as const) {
      const c = p.cpu.get(`${d} ${t.key}`);
      if (!c) continue;
      idle.tcp += c.tcp;
      idle.tls += c.tls;
      idle.ms += c.ms;
    }
  }
  console.log(
    `  CPU ms: the transport's own host-agent per I/O; other HA CPU: the other (idle) host-agent during the ` +
      `phase, % of one vCPU. While NBD and NVMe/TCP ran, the idle host-agents used ` +
      `${percent(idle.tcp, idle.ms, p.clkTck)} (TCP) and ${percent(idle.tls, idle.ms, p.clkTck)} (TLS).`,
  );

  writeChart(args.chart, {
    title: 'pcinet NVMe vs NBD on the same path, and the kernel’s NVMe/TCP in the guest',
    notes: [
      `lab guest: QEMU TCG, 2 vCPUs, Debian ${kver}; ${args.mib * 2} MiB tmpfs-backed disks; fio ${args.seconds} s per phase; ${new Date().toISOString().slice(0, 10)}`,
      'pcinet and NBD: guest → QEMU user networking → the card; NVMe/TCP: the guest’s loopback only (kernel-only bound)',
      args.log
        ? 'log scale, one axis for all rows (mixed units: read each bar’s value)'
        : 'each row scaled to its own largest value; the values are on the bars',
    ],
    series: DISKS.map((d) => COLUMNS[d]),
    groups: all.map((t) => ({ label: t.label, unit: t.unit, values: DISKS.map((d) => value(d, t)) })),
    scale: args.log ? 'log' : 'group',
  });
  console.log('');
  console.log(`chart: ${args.chart}`);
}

async function main(): Promise<void> {
  const args = parseBenchArgs(
    'nvme',
    process.argv.slice(2),
    {
      // The guest's 1 GiB holds the NVMe/TCP reference's file in tmpfs: up to 2 × 256 MiB of it.
      mib: { value: 64, range: '8..256', ok: (n) => Number.isInteger(n) && n >= 8 && n <= 256 },
      seconds: { value: 10, range: '1..120', ok: (n) => n >= 1 && n <= 120 },
    },
    ['no-link'],
  );
  await ensurePackages(PACKAGES, (l) => console.error(`bench/nvme: ${l}`));
  const assets = await prepareLab({ modules: true });
  if (assets.pcinetUnavailable) throw new Error(`bench/nvme: pcinet cannot run: ${assets.pcinetUnavailable}`);
  const timeoutS = scriptBoundS(args.mib, args.seconds) + LAB_OVERHEAD_S;
  const diskBytes = args.mib * 2 * (1 << 20);
  const dir = mkdtempSync(join(TMPFS, 'pcinet-bench-nvme-'));
  const procs: CardProc[] = [];
  const cardCpu: Parsed['card'] = new Map();
  const cardLogs = () => procs.map((p) => `--- ${p.name} ---\n${tail(p.log(), 20)}`).join('\n');
  try {
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'pcinet-tls.img')},size=${diskBytes}`],
      kernelLink: !args['no-link'],
      command: guestScript({
        mib: args.mib,
        seconds: args.seconds,
        tcpHostArgv: hostAgentArgv({
          node: process.execPath,
          cli: assets.cli!,
          connect: `tcp://${SLIRP_HOST}:${TCP_PORT}`,
          insecure: true,
          readyFile: TCP_READY,
          kernelLink: !args['no-link'],
          // Beside the lab's own host-agent, which has the default socket.
          control: TCP_HOST_CONTROL,
        }),
        tcpReadyFile: TCP_READY,
        nbdHost: SLIRP_HOST,
        nbdPort: NBD_PORT,
        nbdExport: NBD_EXPORT,
        tlsConnect: `tls://${SLIRP_HOST}:${LAB_ENDPOINT_PORT}`,
        tlsLog: `${GUEST_RUN_DIR}/${HOST_AGENT_LOG}`,
      }),
      timeoutMs: timeoutS * 1000,
      // The guest's progress lines and errors, as they come.
      onOutput: (chunk, stream) => {
        if (stream === 'stderr') process.stderr.write(chunk);
      },
      card: (card) => startCard(card, { assets, dir, diskBytes, lifetimeS: timeoutS + 60, procs, cardCpu }),
    }).catch((e: Error) => {
      throw new Error(`${e.message}\n${cardLogs()}`);
    });
    if (r.code !== 0) {
      throw new Error(
        `bench/nvme: the guest's script failed (${r.code}; its stderr is above); its stdout ends:\n` +
          `${tail(r.stdout, 20)}\n${cardLogs()}`,
      );
    }
    report(args, assets.kver, parse(r.stdout, cardCpu));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
