// What the tests that run the built `pcinet` command share: where it is, a free loopback port,
// starting it with its output kept, waiting for a condition, and the children it started, killed
// after each test so none outlives it.
import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import { repoRoot } from '../lab/paths.js';

export const CLI = join(repoRoot(), 'dist/cli/main.js');

/** Children of the current test: SIGKILLed after it if still running. */
export const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

/** A loopback TCP port nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** A `pcinet` child: its output so far, and its exit. */
export interface Proc {
  c: ChildProcess;
  out: () => string;
  err: () => string;
  done: Promise<number | null>;
}

/** Starts the built `pcinet` with `args` (killed after the test if still running). */
export function start(args: string[]): Proc {
  const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(c);
  let out = '';
  let err = '';
  c.stdout!.on('data', (d) => (out += d));
  c.stderr!.on('data', (d) => (err += d));
  const done = new Promise<number | null>((r) => c.on('close', (code) => r(code)));
  return { c, out: () => out, err: () => err, done };
}

/** Runs the built `pcinet` with `args` to its end. */
export async function run(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const p = start(args);
  const code = await p.done;
  return { code, out: p.out(), err: p.err() };
}

/** Polls `what` every 50 ms; throws with `why()` if it is still false after `ms`. */
export async function until(what: () => boolean, ms: number, why: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!what()) {
    if (Date.now() > end) throw new Error(`timed out: ${why()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
