// Running helper programs with a bound on time and on captured output.
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Captured output kept per stream; enough for any error message, small enough to hold in memory. */
const MAX_CAPTURE = 1 << 20;

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export function run(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; timeoutMs: number; env?: NodeJS.ProcessEnv; input?: string },
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.on('data', (d: Buffer) => {
      if (stdout.length < MAX_CAPTURE) stdout += d.toString();
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < MAX_CAPTURE) stderr += d.toString();
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** The last `n` lines of a text, for error messages. */
export function tail(text: string, n: number): string {
  const lines = text.replace(/\s+$/, '').split('\n');
  return lines.slice(Math.max(0, lines.length - n)).join('\n');
}

export function describeFailure(what: string, r: RunResult, lines = 15): string {
  const how = r.timedOut ? 'timed out' : r.signal ? `was killed by ${r.signal}` : `exited with ${r.code}`;
  const out = tail(`${r.stdout}\n${r.stderr}`, lines);
  return `${what} ${how}${out ? `:\n${out}` : ''}`;
}

/** A delay that does not keep the process alive; for bounding waits with Promise.race. */
export function unrefDelay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Runs argv; its stdout, or an error naming the command, how it ended and its last lines. */
export async function runOk(
  argv: readonly string[],
  opts: { timeoutMs?: number; input?: string; what?: string } = {},
): Promise<string> {
  const [cmd, ...args] = argv;
  const r = await run(cmd!, args, { timeoutMs: opts.timeoutMs ?? 60_000, input: opts.input });
  if (r.code !== 0) throw new Error(describeFailure(opts.what ?? argv.join(' '), r, 5));
  return r.stdout;
}

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {}
  }
  return false;
}

/** The tools the lab's guest commands use, with the Debian package of each: the guest runs this
 *  machine's root, so a command that names one needs it installed here. */
export const GUEST_TOOLS: readonly (readonly [string, string])[] = [
  ['ping', 'iputils-ping'],
  ['fio', 'fio'],
  ['nvme', 'nvme-cli'],
  ['iperf3', 'iperf3'],
  ['mkfs.ext4', 'e2fsprogs'],
  ['e2fsck', 'e2fsprogs'],
  ['ethtool', 'ethtool'],
  ['tcpdump', 'tcpdump'],
  ['tc', 'iproute2'],
  ['ip', 'iproute2'],
  ['lspci', 'pciutils'],
  ['nbd-client', 'nbd-client'],
  ['wg', 'wireguard-tools'],
];

/** Where a shell command word starts: a line, after ; | & ( or a backtick, after a shell keyword
 *  that runs its operand, or after `timeout N`. */
const COMMAND_START = String.raw`(?:^|[;|&(\x60]|\b(?:then|do|else|if|while|until|time|exec|nohup)\s|\btimeout\s+\S+\s)\s*`;

/** The GUEST_TOOLS a shell command runs (as a command word) that are not installed, one line
 *  each: a missing tool must fail the run by name, not as a bare exit status 127 later. */
export function missingGuestTools(command: string): string[] {
  const named = GUEST_TOOLS.filter(([cmd]) =>
    new RegExp(`${COMMAND_START}${cmd.replace('.', '\\.')}(?=[\\s;|&)]|$)`, 'm').test(command),
  );
  return missingTools(named);
}

/** One line per [command, Debian package] not on PATH: "wg not found: apt-get install wireguard-tools". */
export function missingTools(tools: readonly (readonly [string, string])[]): string[] {
  return tools
    .filter(([cmd]) => !onPath(cmd))
    .map(([cmd, pkg]) => `${cmd} not found: apt-get install ${pkg}`);
}
