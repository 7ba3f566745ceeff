// A private network namespace holding only `lo`, in which the lab runs QEMU and its endpoint: the
// guest's slirp network then reaches nothing but that loopback. A holder process (`unshare --net`
// then `sleep`) keeps the namespace alive; the others join it with nsenter, so this process stays
// where it was.
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { unrefDelay } from './proc.js';

const HOLDER_START_MS = 10_000;
/** st column of /proc/net/tcp (include/net/tcp_states.h: TCP_LISTEN = 10). */
const TCP_LISTEN = '0A';

export class PrivateNetns {
  readonly #holder: ChildProcess;
  readonly #path: string;

  private constructor(holder: ChildProcess) {
    this.#holder = holder;
    this.#path = `/proc/${holder.pid}/ns/net`;
  }

  /** `lifetimeS` bounds the holder even if this process dies without closing it. */
  static async create(lifetimeS: number): Promise<PrivateNetns> {
    if (process.getuid?.() !== 0) throw new Error('lab: a private network namespace needs root');
    const holder = spawn(
      'unshare',
      ['--net', '--', 'sh', '-c', `ip link set lo up && echo up && exec sleep ${Math.ceil(lifetimeS)}`],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    holder.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        holder.kill('SIGKILL');
        reject(new Error('lab: the network namespace holder did not start'));
      }, HOLDER_START_MS);
      holder.stdout!.once('data', () => {
        clearTimeout(timer);
        resolve();
      });
      holder.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`lab: unshare --net failed (${code}): ${stderr.trim()}`));
      });
      holder.once('error', (e) => {
        clearTimeout(timer);
        reject(new Error(`lab: cannot run unshare: ${e.message}`));
      });
    });
    return new PrivateNetns(holder);
  }

  /** argv that runs `argv` inside the namespace (nsenter execs it: same pid). */
  wrap(argv: readonly string[]): string[] {
    return ['nsenter', `--net=${this.#path}`, '--', ...argv];
  }

  /** True once a TCP socket in the namespace listens on `port`. Read from the holder's
   *  /proc/PID/net/tcp{,6} rather than by connecting, so the endpoint never sees a probe. */
  listening(port: number): boolean {
    const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
    for (const f of ['tcp', 'tcp6']) {
      let table: string;
      try {
        table = readFileSync(`/proc/${this.#holder.pid}/net/${f}`, 'utf8');
      } catch {
        continue;
      }
      for (const line of table.split('\n').slice(1)) {
        const [, local, , state] = line.trim().split(/\s+/);
        if (local?.endsWith(`:${hexPort}`) && state === TCP_LISTEN) return true;
      }
    }
    return false;
  }

  async close(): Promise<void> {
    if (this.#holder.exitCode !== null || this.#holder.signalCode !== null) return;
    const exited = new Promise((r) => this.#holder.once('exit', r));
    this.#holder.kill('SIGKILL');
    await Promise.race([exited, unrefDelay(2000)]);
  }
}
