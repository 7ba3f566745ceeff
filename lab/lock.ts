// A lock between processes (vitest runs test files in parallel workers, each may prepare the lab):
// mkdir is atomic; the holder's pid inside lets a later process take over after a crash.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** How long to wait for another holder: a cold prepare downloads ~70 MB and builds a module. */
const LOCK_WAIT_MS = 30 * 60_000;
const LOCK_POLL_MS = 200;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function acquire(dir: string, token: string): Promise<void> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      mkdirSync(dir);
      writeFileSync(join(dir, 'owner'), token);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = '';
    try {
      owner = readFileSync(join(dir, 'owner'), 'utf8');
    } catch {
      // between the holder's mkdir and its write; wait
    }
    const pid = Number(owner.split(':')[0]);
    if (owner && Number.isSafeInteger(pid) && pid > 0 && !alive(pid)) {
      rmSync(dir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new Error(`lab: gave up waiting for the lock ${dir} (held by ${owner})`);
    await sleep(LOCK_POLL_MS);
  }
}

let counter = 0;

export async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const token = `${process.pid}:${++counter}`;
  await acquire(dir, token);
  try {
    return await fn();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
