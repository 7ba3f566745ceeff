// `pcinet endpoint --watch`: the edit loop of a device model. This process only supervises: it runs
// the endpoint as a child with the same arguments (less --watch) and, when a compiled model changes
// (dist/devices/, as `tsc --watch` rewrites it), stops the child in order (its devices detach) and
// starts a new one, which the host-agent finds within one redial (docs/devices.md).
import { type ChildProcess, spawn } from 'node:child_process';
import { type FSWatcher, watch } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import { EXIT_USAGE } from './errors.js';

/** tsc writes one change as many files: they make one restart. */
const SETTLE_MS = 150;
/** An endpoint that does not stop in order within this is killed. */
const STOP_MS = 5000;

/** Where the device models this CLI runs are: dist/devices beside dist/cli. */
export function modelsDir(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', 'devices');
}

/**
 * Runs `node argv…` (an endpoint command line without --watch) and runs it again whenever a
 * `.js` file under `dir` changes, until SIGINT or SIGTERM. Resolves with the exit status: 0, or
 * EXIT_USAGE when the endpoint refused its options (nothing to wait for then).
 */
export function superviseEndpoint(argv: readonly string[], dir: string, log: Logger): Promise<number> {
  let child: ChildProcess | undefined;
  let stopping = false;
  let settle: NodeJS.Timeout | undefined;
  let changed: string[] = [];
  /** Restarts run one after the other. */
  let restarting = Promise.resolve();
  let finish: (code: number) => void = () => {};
  const done = new Promise<number>((r) => (finish = r));

  const start = () => {
    // The IPC channel only tells the child when we are gone (even by SIGKILL): it stops then.
    const c = spawn(process.execPath, [...process.execArgv, ...argv], {
      stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    });
    child = c;
    c.on('exit', (code, signal) => {
      if (c !== child) return;
      child = undefined;
      if (stopping) return;
      if (code === EXIT_USAGE) {
        void shutdown(EXIT_USAGE);
        return;
      }
      log.warn({ code, signal }, 'endpoint exited: it starts again when a model changes');
    });
  };
  const stop = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    child = undefined; // its exit is ours, not news
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    const timer = setTimeout(() => {
      log.warn({ pid: c.pid }, `endpoint did not stop within ${STOP_MS / 1000} s: killed`);
      c.kill('SIGKILL');
    }, STOP_MS);
    await exited;
    clearTimeout(timer);
  };
  const onChange = (file: string | null) => {
    if (stopping || !file?.endsWith('.js')) return;
    changed.push(file);
    clearTimeout(settle);
    settle = setTimeout(() => {
      const files = [...new Set(changed)];
      changed = [];
      restarting = restarting.then(async () => {
        if (stopping) return;
        log.info({ files }, 'a device model changed: restarting the endpoint');
        await stop();
        if (!stopping) start();
      });
    }, SETTLE_MS);
  };
  let watcher: FSWatcher;
  try {
    watcher = watch(dir, { recursive: true }, (_event, file) => onChange(file));
  } catch (e) {
    log.error({ dir, err: (e as Error).message }, 'cannot watch the models');
    return Promise.resolve(1);
  }
  const shutdown = async (code: number) => {
    if (stopping) return;
    stopping = true;
    clearTimeout(settle);
    watcher.close();
    await restarting;
    await stop();
    finish(code);
  };
  process.once('SIGINT', () => void shutdown(0));
  process.once('SIGTERM', () => void shutdown(0));
  log.info({ dir }, 'watching the device models');
  start();
  return done;
}
