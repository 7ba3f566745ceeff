// `pcinet lab` (the demo), `pcinet lab run -- CMD…` and `pcinet lab prepare`. cli/main.ts calls
// labCommand(program); lab/main.ts is a stand-alone entry with the same commands.
//
// Exit status of `lab run`: the command's own; 124 when the run timed out; 125 when the lab failed
// (kernel oops/BUG/WARN, boot failure, pcinet stack missing or not coming up); 2 for bad flags.
import { type Command, InvalidArgumentError, Option } from 'commander';
import { demoScript } from './demo.js';
import { type LabAssets, prepareLab } from './prepare.js';
import {
  DEFAULT_TIMEOUT_MS,
  guestSees,
  LabError,
  type LabPhase,
  type RunInLabOptions,
  runInLab,
} from './run.js';

export const EXIT_TIMEOUT = 124;
export const EXIT_LAB_FAILURE = 125;
/** 128 + SIGINT, as a shell reports an interrupted command. */
export const EXIT_INTERRUPTED = 130;
const EXIT_USAGE = 2;

/** The demo's devices when none are given. */
export const DEMO_DEVICES = ['test'];

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function envPair(v: string, prev: Record<string, string> = {}): Record<string, string> {
  const eq = v.indexOf('=');
  if (eq <= 0 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(v.slice(0, eq))) {
    throw new InvalidArgumentError('must be NAME=VALUE');
  }
  return { ...prev, [v.slice(0, eq)]: v.slice(eq + 1) };
}

interface VmFlags {
  device?: string[];
  timeout: number;
  machine: 'pc' | 'q35';
  accel: 'tcg' | 'kvm';
  cpus: number;
  memory: number;
  qemuArg?: string[];
  kernelArg?: string[];
  insecure: boolean;
  logLevel?: string;
  console: boolean;
  keep: boolean;
}

interface RunFlags extends VmFlags {
  endpoint?: string;
  pin?: string;
  hostIdentity?: string;
  env?: Record<string, string>;
  cwd?: string;
  verbose: boolean;
  watch?: boolean | string;
}

interface DemoFlags extends VmFlags {
  pcinet: boolean;
}

/** Options shared by the demo and `run`. */
function vmOptions(cmd: Command): Command {
  return cmd
    .option('--device <spec>', 'a device for the lab’s endpoint, e.g. test (repeatable)', collect)
    .option('--timeout <s>', 'bound on the whole run, seconds', positiveInt, DEFAULT_TIMEOUT_MS / 1000)
    .addOption(new Option('--machine <type>', 'QEMU machine').choices(['pc', 'q35']).default('pc'))
    .addOption(new Option('--accel <accel>', 'QEMU accelerator').choices(['tcg', 'kvm']).default('tcg'))
    .option('--cpus <n>', 'guest vCPUs', positiveInt, 2)
    .option('--memory <mb>', 'guest memory, MiB', positiveInt, 1024)
    .option('--qemu-arg <arg>', 'extra QEMU argument (repeatable)', collect)
    .option('--kernel-arg <arg>', 'extra guest kernel argument (repeatable)', collect)
    .option('--insecure', 'plain TCP between host-agent and endpoint, no identities', false)
    .option('--log-level <level>', 'endpoint and host-agent log level')
    .option('--console', 'copy the guest console (kernel log) to stderr as it arrives', false)
    .option('--keep', 'keep the run directory (scripts, logs) and print its path', false);
}

function vmRunOptions(f: VmFlags): Omit<RunInLabOptions, 'command'> {
  return {
    devices: f.device,
    timeoutMs: f.timeout * 1000,
    machine: f.machine,
    accel: f.accel,
    cpus: f.cpus,
    memoryMb: f.memory,
    extraQemuArgs: f.qemuArg,
    extraKernelArgs: f.kernelArg,
    insecure: f.insecure,
    logLevel: f.logLevel,
    onConsole: f.console ? (l) => process.stderr.write(`console| ${l}\n`) : undefined,
    keepRunDir: f.keep,
  };
}

const PHASE_TEXT: Record<string, (d: string) => string> = {
  prepare: (d) => `lab prepared (guest kernel ${d})`,
  endpoint: (d) => `endpoint listening on ${d}`,
  qemu: () => 'QEMU started',
  init: () => 'guest kernel booted, /init running',
  root: () => 'this machine’s root mounted over 9p; chroot',
  module: () => 'pcinet.ko loaded',
  'host-agent': () => 'host-agent started',
  ready: (d) => `${d} device(s) attached`,
  bound: (d) => `${d.replace(' ', ' bound to ')}`,
  unbound: (d) => `${d.replace(' ', ': no driver for ')}`,
  command: () => 'running the command',
  teardown: () => 'command finished; tearing down',
  done: () => 'guest powering off',
};

export function formatPhase(p: LabPhase): string {
  const text =
    PHASE_TEXT[p.name]?.(p.detail) ?? (p.name === 'progress' ? p.detail : `${p.name} ${p.detail}`.trim());
  return `[${(p.ms / 1000).toFixed(1).padStart(5)}s] ${text}`;
}

function printPhase(p: LabPhase): void {
  process.stderr.write(`${formatPhase(p)}\n`);
}

function streamOutput(chunk: Buffer, stream: 'stdout' | 'stderr'): void {
  (stream === 'stdout' ? process.stdout : process.stderr).write(chunk);
}

function failureStatus(e: unknown): number {
  if (!(e instanceof LabError)) throw e;
  process.stderr.write(`pcinet: ${e.message}\n`);
  if (e.kind === 'aborted') return EXIT_INTERRUPTED;
  return e.kind === 'timeout' ? EXIT_TIMEOUT : EXIT_LAB_FAILURE;
}

/** Ctrl-C or SIGTERM stops the run cleanly (QEMU, endpoint, namespace, run directory) instead of
 *  leaving them to the exit hook. */
async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

async function demo(f: DemoFlags, cmd: Command): Promise<void> {
  const t0 = Date.now();
  let devices = f.pcinet ? (f.device ?? DEMO_DEVICES) : [];
  if (!f.pcinet && f.device)
    cmd.error('--device and --no-pcinet do not go together', { exitCode: EXIT_USAGE });
  process.stderr.write('[  0.0s] preparing the lab (installs and builds on first use)\n');
  let assets: LabAssets;
  try {
    assets = await prepareLab({
      modules: devices.length > 0,
      onProgress: (l) => printPhase({ name: 'progress', detail: l, ms: Date.now() - t0 }),
    });
  } catch (e) {
    process.exitCode = failureStatus(new LabError('prepare', (e as Error).message));
    return;
  }
  if (devices.length > 0 && assets.pcinetUnavailable) {
    process.stderr.write(`pcinet: no pcinet devices in this demo: ${assets.pcinetUnavailable}\n`);
    devices = [];
  }
  try {
    const r = await interruptible((signal) =>
      runInLab({
        signal,
        ...vmRunOptions(f),
        assets,
        startedAt: t0,
        devices,
        command: demoScript(),
        onPhase: printPhase,
        onOutput: streamOutput,
      }),
    );
    process.stderr.write(`boot took ${(r.bootMs / 1000).toFixed(1)} s (QEMU start to command)\n`);
    if (r.runDir) process.stderr.write(`run directory kept: ${r.runDir}\n`);
    process.exitCode = r.code;
  } catch (e) {
    process.exitCode = failureStatus(e);
  }
}

async function runCmd(command: string[], f: RunFlags, cmd: Command): Promise<void> {
  if (f.endpoint && f.device)
    cmd.error('--endpoint and --device do not go together', { exitCode: EXIT_USAGE });
  if (f.endpoint && f.watch)
    cmd.error('--watch restarts the lab’s own endpoint: not with --endpoint', { exitCode: EXIT_USAGE });
  if (f.endpoint && !f.insecure && !(f.pin && f.hostIdentity)) {
    cmd.error('--endpoint needs --pin and --host-identity, or --insecure', { exitCode: EXIT_USAGE });
  }
  try {
    const r = await interruptible((signal) =>
      runInLab({
        signal,
        ...vmRunOptions(f),
        // One argument is a shell command line ("lspci | head"); several are an argv, run as is.
        command: command.length === 1 ? command[0] : command,
        endpoint: f.endpoint,
        watch: f.watch,
        pin: f.pin,
        hostIdentity: f.hostIdentity,
        env: f.env,
        // The guest has its own /tmp: from there, start in /.
        cwd: f.cwd ?? (guestSees(process.cwd()) ? process.cwd() : '/'),
        onPhase: f.verbose ? printPhase : undefined,
        onOutput: streamOutput,
      }),
    );
    if (r.runDir) process.stderr.write(`run directory kept: ${r.runDir}\n`);
    process.exitCode = r.code;
  } catch (e) {
    process.exitCode = failureStatus(e);
  }
}

/** Registers `lab` on `program`: `lab [demo]` (the default), `lab run`, `lab prepare`. `lab` has
 *  no options of its own, so a subcommand's flags are never taken by it. */
export function labCommand(program: Command): void {
  const lab = program
    .command('lab')
    .description('a QEMU VM that plays the workstation, with this machine as the card')
    .enablePositionalOptions();

  vmOptions(
    lab
      .command('demo', { isDefault: true })
      .description('boot with devices, show lspci, the bound drivers and a short tour (the default)')
      .option('--no-pcinet', 'boot without module, endpoint and host-agent'),
  ).action(async (_o, cmd: Command) => demo(cmd.opts<DemoFlags>(), cmd));

  vmOptions(
    lab
      .command('run')
      .description('run CMD as root in the lab VM; exits with its status (124 timeout, 125 lab failure)')
      .usage('[options] -- <command...>')
      .argument('<command...>', 'one argument: a shell command line; several: an argv')
      .passThroughOptions()
      .option('--endpoint <addr>', 'use an endpoint you started (HOST:PORT as seen from here) instead')
      .option('--pin <fingerprint>', 'with --endpoint: the endpoint’s fingerprint')
      .option('--host-identity <dir>', 'with --endpoint: the host-agent’s identity directory')
      .option('--env <name=value>', 'environment for the command (repeatable)', envPair)
      .option('--cwd <dir>', 'working directory in the guest (default: the current one)')
      .option(
        '--watch [dir]',
        'the lab’s endpoint runs again whenever a compiled device model changes (pcinet endpoint --watch): edit, rebuild, and the device comes back under its driver mid-run',
      )
      .option('-v, --verbose', 'show boot phases with elapsed times on stderr', false),
  ).action(async (command: string[], _o, cmd: Command) => runCmd(command, cmd.opts<RunFlags>(), cmd));

  lab
    .command('prepare')
    .description(
      'install packages, fetch the guest kernel, build the initramfs and modules; print what it made',
    )
    .action(async () => {
      const a = await prepareLab({ onProgress: (l) => process.stderr.write(`${l}\n`) });
      process.stdout.write(`${JSON.stringify(a, null, 2)}\n`);
    });

  // Nested commands do not get the exit override and silent error output cli/main.ts gives the
  // top-level ones: a bad flag must reach it as a CommanderError, which it prints as one line with
  // status 2.
  for (const c of [lab, ...lab.commands]) {
    c.exitOverride();
    c.configureOutput({ writeErr: () => {}, outputError: () => {} });
  }
}
