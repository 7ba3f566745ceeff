// One lab run: prepare (cached), start the endpoint in a private network namespace, boot the guest,
// bring the pcinet stack up in it, run the command, tear down, and judge the result.
//
// The command's exit status comes back as a file (`status`) in the writable 9p run directory, not
// as a console line: a file cannot be torn by printk output interleaving with it, cannot be
// confused with anything the command prints, and says "the command finished" (exit N) apart from
// "the lab failed" (lab-error …) apart from "the guest died first" (no file).
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  endpointArgv,
  guestDialAddress,
  hostAgentArgv,
  identityFingerprint,
  LAB_ENDPOINT_PORT,
  SLIRP_HOST,
} from './commands.js';
import {
  commandScript,
  envScript,
  type GuestPcinet,
  guestScript,
  HOST_AGENT_LOG,
  initEnv,
  READY_FILE,
} from './guest-script.js';
import { formatReports, type KernelReport, scanGuestLog } from './log-scan.js';
import { PrivateNetns } from './netns.js';
import { GUEST_RUN_DIR, repoRoot } from './paths.js';
import { type LabAssets, prepareLab } from './prepare.js';
import { missingGuestTools, tail, unrefDelay } from './proc.js';
import { type Accel, type Machine, qemuArgv } from './qemu.js';
import { lineSplitter, MAX_KEPT_BYTES, SerialPort } from './serial.js';

export type LabFailureKind =
  | 'prepare' // packages, kernel image, module build, pcinet stack missing, setup before boot
  | 'endpoint' // the endpoint did not start listening
  | 'qemu' // QEMU did not start
  | 'guest' // the guest could not bring pcinet up (insmod, host-agent, binding)
  | 'kernel' // oops, BUG, WARN, … in the guest log
  | 'timeout'
  | 'aborted' // options.signal fired
  | 'teardown' // host-agent did not stop or a module did not unload
  | 'no-status' // the guest stopped without reporting the command's status
  | 'boot-stuck'; // the guest's kernel locked up before /init (runInLab boots once more first)

export interface LabFailureDetails {
  guestLog?: string;
  output?: string;
  code?: number;
  reports?: KernelReport[];
  hostAgentLog?: string;
  endpointLog?: string;
  /** With keepRunDir. */
  runDir?: string;
}

export class LabError extends Error {
  override readonly name = 'LabError';
  constructor(
    readonly kind: LabFailureKind,
    message: string,
    readonly details: LabFailureDetails = {},
  ) {
    super(message);
  }
}

export interface LabPhase {
  /** prepare, endpoint, qemu, init, root, module, host-agent, ready, bound, unbound, command,
   *  teardown, done */
  name: string;
  detail: string;
  /** Since runInLab was called. */
  ms: number;
}

export interface RunInLabOptions {
  /** A string runs as a shell script (sh); an array is an argv executed as is. */
  command: string | readonly string[];
  /** Device specs for the lab's endpoint (`--device`), e.g. ["test", "nvme:size=64M"]. */
  devices?: readonly string[];
  /** Use an endpoint the caller started (HOST:PORT, or tcp:// / tls:// URL, as seen from this
   *  machine). The lab then stays in the caller's network namespace. */
  endpoint?: string;
  /** The caller's endpoint fingerprint (TLS with `endpoint`). */
  pin?: string;
  /** Host-agent identity directory to use with `endpoint` (copied into the guest). */
  hostIdentity?: string;
  /** Plain TCP without identities. */
  insecure?: boolean;
  /** Put the pcinet stack (module, endpoint, host-agent) up. Default: when devices or endpoint
   *  are given. */
  pcinet?: boolean;
  /** From boot to power-off, excluding prepareLab. Default 180 s. */
  timeoutMs?: number;
  /** Extra environment for the command (it starts from a clean one). */
  env?: Record<string, string>;
  /** Guest working directory (this machine's path, seen read-only). Default: the repository. */
  cwd?: string;
  extraQemuArgs?: readonly string[];
  extraKernelArgs?: readonly string[];
  machine?: Machine;
  accel?: Accel;
  cpus?: number;
  memoryMb?: number;
  /** Host-agent and endpoint log level. */
  logLevel?: string;
  onOutput?: (chunk: Buffer, stream: 'stdout' | 'stderr') => void;
  onPhase?: (phase: LabPhase) => void;
  /** Every guest console line, as it arrives. */
  onConsole?: (line: string) => void;
  /** Keep the run directory (logs, scripts) and say where it is. */
  keepRunDir?: boolean;
  /** What prepareLab() returned, to skip calling it again (benches running many times). */
  assets?: LabAssets;
  /** Phase times are measured from this (Date.now() value). Default: the call. */
  startedAt?: number;
  /** Stops the run (QEMU is killed, everything cleaned up); rejects with kind 'aborted'. */
  signal?: AbortSignal;
  /** Runs on this machine once the lab's endpoint listens, before the guest boots: set up "the
   *  card" (e.g. address a TAP the endpoint created, start a server). `card.wrap(argv)` gives an
   *  argv that runs inside the lab's network namespace. The cleanup it returns runs after the
   *  guest is gone. Not with `endpoint` (the caller's namespace is its own business then). */
  card?: (card: LabCard) => Promise<(() => Promise<void>) | void>;
  /** The guest's host-agent redials a lost endpoint and attaches its devices again
   *  (`pcinet host --reconnect`). */
  reconnect?: boolean;
  /** false: the host-agent keeps the data plane even over plain TCP (`--no-kernel-link`). */
  kernelLink?: boolean;
  /** The port of the card the guest's host-agent dials, instead of the endpoint's own
   *  (LAB_ENDPOINT_PORT): a `card` hook puts something between them there (a proxy that can take
   *  the network away, test/cut-proxy-main.ts). Not with `endpoint`. */
  dialPort?: number;
  /** More arguments for `pcinet host` (e.g. --ctrl-loss-tmo 900). */
  hostArgs?: readonly string[];
  /** The lab's endpoint runs again whenever a compiled device model changes under this directory
   *  (`pcinet endpoint --watch DIR`; true: the models it runs): the edit loop. Not with `endpoint`. */
  watch?: boolean | string;
}

/** What a `card` hook may do on this machine. */
export interface LabCard {
  /** An argv that runs `argv` inside the lab's network namespace. */
  wrap(argv: readonly string[]): string[];
  /** Kills the endpoint with SIGKILL and starts it again (same identity, devices, port); resolves
   *  when the new one listens. */
  restartEndpoint(): Promise<void>;
  /** Kills the endpoint with SIGKILL (the card is gone until startEndpoint). */
  stopEndpoint(): Promise<void>;
  /** Starts the endpoint stopped by stopEndpoint again; resolves when it listens. */
  startEndpoint(): Promise<void>;
  /** Freezes the running endpoint (SIGSTOP): its connections stay open, nothing answers; as a card
   *  that hangs. resumeEndpoint (SIGCONT) lets it go on. */
  pauseEndpoint(): void;
  resumeEndpoint(): void;
  /** The endpoint's control socket on this machine (`pcinet status --socket`, `pcinet trace
   *  --socket`). */
  controlSocket: string;
}

/** Where the lab's endpoint serves its control socket. */
const endpointControlPath = (dir: string) => join(dir, 'endpoint.sock');

export interface LabResult {
  /** The command's exit status (128+n if killed by signal n). */
  code: number;
  /** stdout and stderr as they arrived. */
  output: string;
  stdout: string;
  stderr: string;
  /** The guest console: kernel log and lab progress lines. */
  guestLog: string;
  hostAgentLog: string;
  endpointLog: string;
  /** PCI addresses of the pcinet devices in the guest. */
  devices: string[];
  phases: LabPhase[];
  /** From QEMU start to the command starting. */
  bootMs: number;
  runDir?: string;
}

export const DEFAULT_TIMEOUT_MS = 180_000;
/** From QEMU's start to the command's on an idle machine, the pcinet stack up (measured: 8-12 s). */
const NOMINAL_UP_MS = 15_000;
/** The most a run's deadline stretches on a slow machine (see `slowdown`). */
export const MAX_SLOWDOWN = 4;

/**
 * How much slower than on an idle machine this run is going, judged by its own progress: the time
 * from QEMU's start to the command (boot, module, endpoint, host-agent, drivers bound) against
 * NOMINAL_UP_MS. A run's deadline is `timeoutMs` times this, so a test that fits its budget on an
 * idle machine also fits on a busy one (other VMs, a build), however busy, up to MAX_SLOWDOWN.
 */
export function slowdown(upMs: number): number {
  return Math.min(MAX_SLOWDOWN, Math.max(1, upMs / NOMINAL_UP_MS));
}

/** A test's own timeout around a lab run of `timeoutMs`: the longest the run may stretch to, and
 *  a minute for booting QEMU's tools and tearing down. */
export function testBudget(timeoutMs: number): number {
  return timeoutMs * MAX_SLOWDOWN + 60_000;
}
/** Guest-side bounds (seconds). The host-agent must attach within READY; a loaded driver must
 *  bind within BIND; SIGTERM must stop the host-agent, and rmmod must return, within STOP. */
const READY_TIMEOUT_S = 60;
const BIND_TIMEOUT_S = 20;
const STOP_TIMEOUT_S = 10;
/** After the guest says "teardown", it must power off within this. */
const TEARDOWN_MS = (2 * STOP_TIMEOUT_S + 20) * 1000;
const ENDPOINT_LISTEN_MS = 20_000;
const ENDPOINT_POLL_MS = 100;
const KILL_GRACE_MS = 3000;
const MAX_LOG = 4 << 20;

/** Children to kill if this process exits mid-run (e.g. a test runner timing out). */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(c: ChildProcess): ChildProcess {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const p of live) p.kill('SIGKILL');
    });
  }
  live.add(c);
  c.once('exit', () => live.delete(c));
  return c;
}

async function stop(c: ChildProcess | undefined): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => c.once('exit', r));
  c.kill('SIGTERM');
  if (await Promise.race([exited.then(() => true), unrefDelay(KILL_GRACE_MS).then(() => false)])) return;
  c.kill('SIGKILL');
  await Promise.race([exited, unrefDelay(KILL_GRACE_MS)]);
}

/** Directories the guest mounts its own filesystems over: this machine's are not visible there. */
const GUEST_OWN_MOUNTS = ['/tmp', '/run', '/proc', '/sys', '/dev'];

/** True if `path` on this machine is visible at the same path in the guest. */
export function guestSees(path: string): boolean {
  const p = resolve(path);
  return !GUEST_OWN_MOUNTS.some((m) => p === m || p.startsWith(`${m}/`));
}

/** `path` as the guest sees it. Directories under this machine's /tmp (a checkout in /tmp, say)
 *  are bound into the guest's /tmp at the same path: they are added to `tmpBinds`. */
function guestVisible(path: string, what: string, tmpBinds?: Set<string>): string {
  const p = resolve(path);
  if (tmpBinds && p.startsWith('/tmp/') && !/\s/.test(p)) {
    tmpBinds.add(p);
    return p;
  }
  if (!guestSees(p)) {
    throw new LabError(
      'prepare',
      `lab: ${what} ${p} is not visible in the guest (it has its own /tmp, /run, /dev)`,
    );
  }
  return p;
}

function defaultPath(node: string): string {
  return [dirname(node), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'].join(
    ':',
  );
}

interface Endpoint {
  proc: ChildProcess;
  log: () => string;
  fingerprint?: string;
}

async function startEndpoint(
  netns: PrivateNetns,
  assets: LabAssets,
  o: RunInLabOptions,
  dir: string,
  hostFp: string | undefined,
): Promise<Endpoint> {
  const node = process.execPath;
  let fingerprint: string | undefined;
  const identityDir = join(dir, 'endpoint-identity');
  if (!o.insecure) fingerprint = await identityFingerprint(node, assets.cli!, identityDir);
  const argv = endpointArgv({
    node,
    cli: assets.cli!,
    port: LAB_ENDPOINT_PORT,
    devices: o.devices ?? [],
    insecure: !!o.insecure,
    identityDir,
    allow: hostFp ? [hostFp] : [],
    logLevel: o.logLevel,
    control: endpointControlPath(dir),
    watch: o.watch,
  });
  const [cmd, ...args] = netns.wrap(argv);
  const proc = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: repoRoot() }));
  let log = '';
  const keep = (d: Buffer) => {
    if (log.length < MAX_LOG) log += d.toString();
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  proc.on('error', (e) => keep(Buffer.from(`lab: cannot run the endpoint: ${e.message}\n`)));
  const deadline = Date.now() + ENDPOINT_LISTEN_MS;
  for (;;) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new LabError(
        'endpoint',
        `lab: the endpoint exited (${proc.exitCode ?? proc.signalCode}) before listening:\n` +
          `  ${argv.join(' ')}\n${tail(log, 20)}`,
        { endpointLog: log },
      );
    }
    if (netns.listening(LAB_ENDPOINT_PORT)) break;
    if (Date.now() > deadline) {
      await stop(proc);
      throw new LabError(
        'endpoint',
        `lab: the endpoint did not listen on 127.0.0.1:${LAB_ENDPOINT_PORT} within ${ENDPOINT_LISTEN_MS} ms:\n` +
          `  ${argv.join(' ')}\n${tail(log, 20)}`,
        { endpointLog: log },
      );
    }
    await sleep(ENDPOINT_POLL_MS);
  }
  return { proc, log: () => log, fingerprint };
}

/** The kernel's soft-lockup watchdog (a CPU stuck in the kernel for ~20 s). */
const BOOT_LOCKUP = /watchdog: BUG: soft lockup - CPU#\d+ stuck/;

/** Everything a finished (or killed) run left behind. */
interface Outcome {
  exit: { code: number | null; signal: NodeJS.Signals | null; error?: Error };
  aborted: boolean;
  /** The guest's kernel locked up before /init (BOOT_LOCKUP): QEMU was stopped. */
  bootStuck: boolean;
  timedOut: boolean;
  timeoutMs: number;
  tornDown: boolean;
  teardownErrors: string[];
  phases: LabPhase[];
  guestLog: string;
  stdout: string;
  stderr: string;
  output: string;
  qemuOut: string;
  hostAgentLog: string;
  endpointLog: string;
  /** The `status` file: "exit N", "lab-error MESSAGE", or absent. */
  status?: string;
  bootMs: number;
  runDir?: string;
}

/** The run's result, or the LabError that explains first what went wrong. */
function judge(r: Outcome): LabResult {
  const reports = scanGuestLog(r.guestLog);
  const { guestLog, output, hostAgentLog, endpointLog, phases, status } = r;
  const details: LabFailureDetails = { guestLog, output, reports, hostAgentLog, endpointLog };
  const exitMatch = status ? /^exit (\d+)$/.exec(status) : null;
  if (exitMatch) details.code = Number(exitMatch[1]);
  const last = phases[phases.length - 1];
  const lastPhase = `${last.name} ${last.detail}`.trim();
  const logTail = `--- guest log (last 30 lines) ---\n${tail(guestLog, 30)}`;
  const haTail = hostAgentLog ? `\n--- host-agent log (last 20 lines) ---\n${tail(hostAgentLog, 20)}` : '';
  const epTail = endpointLog ? `\n--- endpoint log (last 20 lines) ---\n${tail(endpointLog, 20)}` : '';
  const commandStatus = details.code === undefined ? '' : ` (the command exited ${details.code})`;
  const fail = (kind: LabFailureKind, message: string) => new LabError(kind, `lab: ${message}`, details);

  if (r.exit.error) throw fail('qemu', `cannot run QEMU: ${r.exit.error.message}`);
  if (r.aborted) throw fail('aborted', `stopped (last phase: ${lastPhase})`);
  if (r.bootStuck) throw fail('boot-stuck', `the guest's kernel locked up before /init\n${logTail}`);
  if (r.timedOut) {
    const why = reports.length ? formatReports(reports) : logTail;
    throw fail('timeout', `timed out after ${r.timeoutMs} ms (last phase: ${lastPhase})\n${why}`);
  }
  if (reports.length > 0) {
    throw fail('kernel', `the guest kernel reported trouble${commandStatus}:\n${formatReports(reports)}`);
  }
  if (!phases.some((p) => p.name === 'init')) {
    const how = r.exit.code ?? r.exit.signal;
    throw fail(
      'qemu',
      `the guest never reached /init (QEMU exited ${how}):\n${tail(r.qemuOut, 20)}\n${logTail}`,
    );
  }
  if (status?.startsWith('lab-error ')) {
    throw fail('guest', `${status.slice('lab-error '.length)}${haTail}${epTail}`);
  }
  if (!exitMatch) {
    throw fail(
      'no-status',
      `the guest stopped without reporting the command's status (last phase: ${lastPhase})\n${logTail}`,
    );
  }
  if (r.tornDown || r.teardownErrors.length > 0) {
    const why = [
      ...r.teardownErrors,
      ...(r.tornDown ? [`the guest did not power off within ${TEARDOWN_MS} ms`] : []),
    ];
    throw fail('teardown', `teardown failed${commandStatus}: ${why.join('; ')}\n${logTail}${haTail}`);
  }
  return {
    code: details.code!,
    output,
    stdout: r.stdout,
    stderr: r.stderr,
    guestLog,
    hostAgentLog,
    endpointLog,
    devices: phases
      .filter((p) => p.name === 'bound' || p.name === 'unbound')
      .map((p) => p.detail.split(' ')[0]),
    phases,
    bootMs: r.bootMs,
    runDir: r.runDir,
  };
}

/** Boots the lab VM, runs `command` in it and returns its status and output. Rejects with a
 *  LabError when the lab itself fails, including any kernel oops/BUG/WARN in the guest log. */
/**
 * Boots the lab, runs the command, judges the run. A guest kernel that locks up before /init runs
 * (a soft lockup in its own start-up: nothing of pcinet or the command has run yet; seen under TCG
 * on a loaded machine, e.g. stuck in keyring set-up) is stopped at once and booted once more from
 * scratch (endpoint, card, run directory), said on standard error; a second such boot fails with
 * 'boot-stuck'.
 */
export async function runInLab(o: RunInLabOptions): Promise<LabResult> {
  try {
    return await runOnce(o);
  } catch (e) {
    if (!(e instanceof LabError) || e.kind !== 'boot-stuck' || o.signal?.aborted) throw e;
    process.stderr.write(`${e.message.split('\n')[0]}: booting once more\n`);
    return runOnce(o);
  }
}

async function runOnce(o: RunInLabOptions): Promise<LabResult> {
  const t0 = o.startedAt ?? Date.now();
  const phases: LabPhase[] = [];
  const phase = (name: string, detail = '') => {
    const p = { name, detail, ms: Date.now() - t0 };
    phases.push(p);
    o.onPhase?.(p);
  };
  const devices = o.devices ?? [];
  const external = o.endpoint !== undefined;
  const pcinet = o.pcinet ?? (devices.length > 0 || external);
  if (!pcinet && (devices.length > 0 || external)) {
    throw new LabError('prepare', 'lab: devices or an endpoint were given with pcinet disabled');
  }
  if (external && o.watch) {
    throw new LabError('prepare', 'lab: watch restarts the lab’s own endpoint; not with --endpoint');
  }
  if (external && o.dialPort !== undefined) {
    throw new LabError('prepare', 'lab: dialPort is for the lab’s own endpoint; not with --endpoint');
  }
  if (external && devices.length > 0) {
    throw new LabError('prepare', 'lab: --device is for the lab’s own endpoint; not with --endpoint');
  }
  if (external && !o.insecure && (!o.pin || !o.hostIdentity)) {
    throw new LabError(
      'prepare',
      'lab: with --endpoint, give --pin (the endpoint’s fingerprint) and --host-identity DIR ' +
        '(an identity the endpoint --allow’s), or --insecure',
    );
  }
  const missing = missingGuestTools(typeof o.command === 'string' ? o.command : o.command.join(' '));
  if (missing.length) throw new LabError('prepare', `lab: the guest command needs: ${missing.join('; ')}`);
  let assets: LabAssets;
  try {
    assets = o.assets ?? (await prepareLab({ modules: pcinet }));
  } catch (e) {
    throw new LabError('prepare', (e as Error).message);
  }
  if (pcinet && assets.pcinetUnavailable) {
    throw new LabError('prepare', `lab: cannot put pcinet devices in the guest: ${assets.pcinetUnavailable}`);
  }
  phase('prepare', assets.kver);
  const node = guestVisible(process.execPath, 'node');
  const tmpBinds = new Set<string>();
  const cwd = guestVisible(o.cwd ?? repoRoot(), 'the working directory', tmpBinds);
  guestVisible(repoRoot(), 'the pcinet checkout', tmpBinds);
  guestVisible(assets.modulesDir, 'the lab cache', tmpBinds);
  const timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  const dir = mkdtempSync(join(tmpdir(), 'pcinet-lab-'));
  const share = join(dir, 'share');
  mkdirSync(share);
  let netns: PrivateNetns | undefined;
  let endpoint: Endpoint | undefined;
  let qemu: ChildProcess | undefined;
  let cardCleanup: (() => Promise<void>) | undefined;
  const ports: SerialPort[] = [];
  try {
    let guestPcinet: GuestPcinet | undefined;
    if (pcinet) {
      const guestIdentity = `${GUEST_RUN_DIR}/host-identity`;
      let hostFp: string | undefined;
      if (external && o.hostIdentity && !o.insecure) {
        cpSync(o.hostIdentity, join(share, 'host-identity'), { recursive: true });
      } else if (!o.insecure) {
        hostFp = await identityFingerprint(node, assets.cli!, join(share, 'host-identity'));
      }
      if (!external) {
        netns = await PrivateNetns.create((timeoutMs * MAX_SLOWDOWN) / 1000 + 60);
        endpoint = await startEndpoint(netns, assets, o, dir, hostFp);
        phase('endpoint', `127.0.0.1:${LAB_ENDPOINT_PORT}`);
        const ns = netns;
        let earlierLogs = '';
        let stopped = false;
        const stopEndpoint = async (note = 'endpoint killed') => {
          if (stopped) return;
          const old = endpoint!;
          const exited =
            old.proc.exitCode !== null ? undefined : new Promise((r) => old.proc.once('exit', r));
          old.proc.kill('SIGKILL');
          await exited;
          stopped = true;
          earlierLogs += `${old.log()}\n--- ${note} ---\n`;
          endpoint = { ...old, log: () => earlierLogs };
        };
        const startAgain = async () => {
          if (!stopped) throw new Error('lab: the endpoint is running');
          const next = await startEndpoint(ns, assets, o, dir, hostFp);
          stopped = false;
          endpoint = { ...next, log: () => earlierLogs + next.log() };
        };
        const restartEndpoint = async () => {
          await stopEndpoint('endpoint killed and restarted');
          await startAgain();
        };
        if (o.card)
          cardCleanup =
            (await o.card({
              wrap: (argv) => ns.wrap(argv),
              restartEndpoint,
              stopEndpoint: () => stopEndpoint(),
              startEndpoint: startAgain,
              pauseEndpoint: () => endpoint!.proc.kill('SIGSTOP'),
              resumeEndpoint: () => endpoint!.proc.kill('SIGCONT'),
              controlSocket: endpointControlPath(dir),
            })) ?? undefined;
      }
      const connect = external
        ? guestDialAddress(o.endpoint!, !!o.insecure)
        : `${o.insecure ? 'tcp' : 'tls'}://${SLIRP_HOST}:${o.dialPort ?? LAB_ENDPOINT_PORT}`;
      const modules = [assets.pcinetKo!, ...assets.testKos];
      for (const ko of modules) {
        // The guest's /lib/modules/<kver> is the lab image's (LAB_MODULES), not this machine's.
        if (resolve(ko).startsWith(`/lib/modules/${assets.kver}/`))
          throw new LabError(
            'prepare',
            `lab: ${ko} is hidden in the guest by the image's modules; copy it elsewhere`,
          );
        guestVisible(dirname(ko), 'the directory of module', tmpBinds);
      }
      guestPcinet = {
        modules,
        hostArgv: hostAgentArgv({
          node,
          cli: assets.cli!,
          connect,
          insecure: !!o.insecure,
          identityDir: o.insecure ? undefined : guestIdentity,
          pin: o.insecure ? undefined : (o.pin ?? endpoint?.fingerprint),
          readyFile: READY_FILE,
          logLevel: o.logLevel,
          reconnect: o.reconnect,
          kernelLink: o.kernelLink,
          extra: o.hostArgs,
        }),
        expectDevices: external ? undefined : devices.length,
        readyTimeoutS: READY_TIMEOUT_S,
        bindTimeoutS: BIND_TIMEOUT_S,
        stopTimeoutS: STOP_TIMEOUT_S,
      };
    } else {
      netns = await PrivateNetns.create((timeoutMs * MAX_SLOWDOWN) / 1000 + 60);
    }

    const path = defaultPath(node);
    writeFileSync(join(share, 'init.env'), initEnv(assets.modulesDir, [...tmpBinds]));
    writeFileSync(
      join(share, 'env.sh'),
      envScript({ PATH: path, HOME: '/tmp', LANG: 'C.UTF-8', TERM: 'dumb', PCINET_LAB: '1', ...o.env }),
    );
    writeFileSync(join(share, 'cmd.sh'), commandScript(o.command));
    writeFileSync(
      join(share, 'guest.sh'),
      // The host's deadline may stretch (slowdown()); the guest's watchdog is the last resort.
      guestScript({
        cwd,
        path,
        watchdogS: Math.ceil((timeoutMs * MAX_SLOWDOWN) / 1000) + 15,
        pcinet: guestPcinet,
      }),
    );

    // The guest's serial ports.
    const outChunks: Buffer[] = [];
    let outKept = 0;
    const keepOut = (d: Buffer) => {
      if (outKept < 2 * MAX_KEPT_BYTES) {
        outChunks.push(d);
        outKept += d.length;
      }
    };
    let timedOut = false;
    let tornDown = false;
    let teardownTimer: NodeJS.Timeout | undefined;
    const teardownErrors: string[] = [];
    let commandAt: number | undefined;
    let qemuAt = 0;
    let deadlineMs = timeoutMs;
    const expire = () => {
      timedOut = true;
      qemu?.kill('SIGKILL');
    };
    let timer: NodeJS.Timeout | undefined;
    let bootStuck = false;
    const lines = lineSplitter((line) => {
      o.onConsole?.(line);
      if (BOOT_LOCKUP.test(line) && !phases.some((p) => p.name === 'init')) {
        bootStuck = true;
        qemu?.kill('SIGKILL');
      }
      const m = /pcinet-lab: (phase|teardown-error) (\S+)(?: (.*))?$/.exec(line);
      if (!m) return;
      if (m[1] === 'teardown-error') {
        teardownErrors.push(`${m[2]} ${m[3] ?? ''}`.trim());
        return;
      }
      if (m[2] === 'command') {
        commandAt = Date.now();
        // The deadline follows this run's pace so far (slowdown()).
        const factor = slowdown(commandAt - qemuAt);
        if (factor > 1 && !timedOut) {
          clearTimeout(timer);
          timer = setTimeout(expire, Math.max(0, qemuAt + timeoutMs * factor - Date.now()));
          deadlineMs = timeoutMs * factor;
        }
      }
      if (m[2] === 'teardown') {
        teardownTimer = setTimeout(() => {
          tornDown = true;
          qemu?.kill('SIGKILL');
        }, TEARDOWN_MS);
      }
      phase(m[2], m[3] ?? '');
    });
    const sock = (n: string) => join(dir, `${n}.sock`);
    const consolePort = await SerialPort.listen(sock('console'), (d) => lines.push(d));
    ports.push(consolePort);
    const stdoutPort = await SerialPort.listen(sock('stdout'), (d) => {
      keepOut(d);
      o.onOutput?.(d, 'stdout');
    });
    ports.push(stdoutPort);
    const stderrPort = await SerialPort.listen(sock('stderr'), (d) => {
      keepOut(d);
      o.onOutput?.(d, 'stderr');
    });
    ports.push(stderrPort);

    const argv = [
      'qemu-system-x86_64',
      ...qemuArgv({
        kernel: assets.kernel,
        initramfs: assets.initramfs,
        runShare: share,
        sockets: { console: sock('console'), stdout: sock('stdout'), stderr: sock('stderr') },
        machine: o.machine ?? 'pc',
        accel: o.accel ?? 'tcg',
        cpus: o.cpus ?? 2,
        memoryMb: o.memoryMb ?? 1024,
        extraKernelArgs: o.extraKernelArgs,
        extraQemuArgs: o.extraQemuArgs,
      }),
    ];
    const [cmd, ...args] = netns ? netns.wrap(argv) : argv;
    qemuAt = Date.now();
    qemu = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    phase('qemu');
    let qemuOut = '';
    const keepQemu = (d: Buffer) => {
      if (qemuOut.length < MAX_LOG) qemuOut += d.toString();
    };
    qemu.stdout!.on('data', keepQemu);
    qemu.stderr!.on('data', keepQemu);
    timer = setTimeout(expire, timeoutMs);
    let aborted = false;
    const abort = () => {
      aborted = true;
      qemu?.kill('SIGKILL');
    };
    o.signal?.addEventListener('abort', abort, { once: true });
    if (o.signal?.aborted) abort();
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>(
      (res) => {
        qemu!.once('error', (error) => res({ code: null, signal: null, error }));
        qemu!.once('exit', (code, signal) => res({ code, signal }));
      },
    );
    clearTimeout(timer);
    clearTimeout(teardownTimer);
    o.signal?.removeEventListener('abort', abort);
    // Let the last bytes in the sockets arrive.
    await Promise.race([Promise.all(ports.map((p) => p.closed)), unrefDelay(1000)]);
    lines.flush();

    const haLogPath = join(share, HOST_AGENT_LOG);
    const statusPath = join(share, 'status');
    return judge({
      exit,
      aborted,
      bootStuck,
      timedOut,
      timeoutMs: deadlineMs,
      tornDown,
      teardownErrors,
      phases,
      guestLog: consolePort.text(),
      stdout: stdoutPort.text(),
      stderr: stderrPort.text(),
      output: Buffer.concat(outChunks).toString('utf8'),
      qemuOut,
      hostAgentLog: existsSync(haLogPath) ? readFileSync(haLogPath, 'utf8') : '',
      endpointLog: endpoint?.log() ?? '',
      status: existsSync(statusPath) ? readFileSync(statusPath, 'utf8').trim() : undefined,
      bootMs: (commandAt ?? Date.now()) - qemuAt,
      runDir: o.keepRunDir ? dir : undefined,
    });
  } catch (e) {
    // Anything not already a LabError happened while setting up (identities, namespace, sockets).
    const err = e instanceof LabError ? e : new LabError('prepare', (e as Error).message);
    if (o.keepRunDir) {
      err.details.runDir = dir;
      err.message += `\nrun directory kept: ${dir}`;
    }
    throw err;
  } finally {
    await stop(qemu);
    for (const p of ports) p.close();
    await cardCleanup?.().catch(() => {});
    await stop(endpoint?.proc);
    await netns?.close();
    if (!o.keepRunDir) rmSync(dir, { recursive: true, force: true });
  }
}
