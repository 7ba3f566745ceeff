// What the tests that run the built `pcinet` command share: where it is, a free loopback port, and
// the children it started, killed after each test so none outlives it.
import type { ChildProcess } from 'node:child_process';
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
