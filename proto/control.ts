// The local control socket of `pcinet host` and `pcinet endpoint` (docs/OPERATING.md): a UNIX
// socket, mode 0600, that `pcinet status` and `pcinet trace` talk to. Requests and replies are
// JSON objects, one per line:
//
//   -> {"id": 1, "cmd": "status", "args": {...}}
//   <- {"id": 1, "event": {...}}                        zero or more, for streaming commands
//   <- {"id": 1, "ok": true, "result": {...}}           exactly one, ends the request
//   <- {"id": 1, "ok": false, "error": {"code": "BAD_ARGUMENT", "message": "..."}}
//
// A client may run several requests on one connection; {"cmd": "cancel", "args": {"id": N}} (or
// closing the connection) ends a streaming request N, which then sends its final reply. "hello"
// names the process and its commands. A command is a handler in a table: adding one (say
// `inject`) is one more entry on the side that serves it, and one CLI subcommand that calls it.
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';

export const CONTROL_VERSION = 1;

/** Why a request failed, for scripts. */
export type ControlErrorCode =
  | 'UNKNOWN_COMMAND'
  | 'BAD_REQUEST'
  | 'BAD_ARGUMENT'
  | 'UNAVAILABLE'
  | 'INTERNAL';

export class ControlError extends Error {
  override readonly name = 'ControlError';
  constructor(
    readonly code: ControlErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface ControlContext {
  /** Aborted when the client cancels the request or goes away. */
  readonly signal: AbortSignal;
  /** Sends an event of a streaming request. False: the client is not reading fast enough (the
   *  event was still queued; the caller should hold back until `drained`). */
  emit(event: unknown): boolean;
  /** Resolves when the client's connection has taken what was queued. */
  drained(): Promise<void>;
}

export type ControlHandler = (args: Record<string, unknown>, ctx: ControlContext) => unknown;

/** Bytes queued to a client above which emit() says it is slow. */
const CLIENT_HIGH_WATER = 4 << 20;
/** Longest request line: requests are small; a longer one is a confused client. */
const MAX_REQUEST_BYTES = 64 << 10;

/** Where sockets go by default: $PCINET_RUN_DIR, /run/pcinet for root, else the user's runtime
 *  directory. */
export function defaultControlDir(): string {
  if (process.env.PCINET_RUN_DIR) return process.env.PCINET_RUN_DIR;
  if (process.getuid?.() === 0) return '/run/pcinet';
  const base = process.env.XDG_RUNTIME_DIR ?? `/tmp/pcinet-${process.getuid?.() ?? 'user'}`;
  return `${base}/pcinet`;
}

export function defaultControlPath(role: 'host' | 'endpoint'): string {
  return `${defaultControlDir()}/${role}.sock`;
}

/** True if something accepts connections on the UNIX socket at `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface ControlServer {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Serves `handlers` on a UNIX socket at `path` (mode 0600; its directory is created 0755 if
 * missing). A socket left behind by a process that is gone is removed; one a live process
 * answers on, or a path that is not a socket, is refused with an Error that says so.
 */
export async function listenControl(
  path: string,
  role: string,
  handlers: Record<string, ControlHandler>,
): Promise<ControlServer> {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  let st: ReturnType<typeof lstatSync> | undefined;
  try {
    st = lstatSync(path);
  } catch {}
  if (st) {
    if (!st.isSocket()) throw new Error(`control socket ${path}: the path exists and is not a socket`);
    if (await answers(path))
      throw new Error(
        `control socket ${path} is in use by a running process (another pcinet ${role}?): stop it, or give this one another path with --control`,
      );
    unlinkSync(path); // stale: its process is gone
  }
  const table: Record<string, ControlHandler> = {
    hello: () => ({ version: CONTROL_VERSION, role, pid: process.pid, commands: Object.keys(table) }),
    ...handlers,
  };
  const conns = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    conns.add(socket);
    socket.once('close', () => conns.delete(socket));
    serveConnection(socket, table);
  });
  // The socket is created 0600 (no moment in which others could connect), not chmod'ed after.
  const umask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(umask);
  }
  chmodSync(path, 0o600);
  server.unref();
  return {
    path,
    close: async () => {
      for (const c of conns) c.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      try {
        unlinkSync(path);
      } catch {}
    },
  };
}

function serveConnection(socket: net.Socket, table: Record<string, ControlHandler>): void {
  const running = new Map<number, AbortController>();
  let buf = '';
  const send = (o: object) => {
    if (socket.destroyed) return false;
    socket.write(`${JSON.stringify(o)}\n`);
    return socket.writableLength < CLIENT_HIGH_WATER;
  };
  const drained = () =>
    socket.writableLength < CLIENT_HIGH_WATER || socket.destroyed
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const done = () => {
            socket.off('drain', done);
            socket.off('close', done);
            resolve();
          };
          socket.on('drain', done);
          socket.on('close', done);
        });
  const fail = (id: unknown, code: ControlErrorCode, message: string) =>
    send({ id, ok: false, error: { code, message } });

  const request = (line: string) => {
    let req: { id?: unknown; cmd?: unknown; args?: unknown };
    try {
      req = JSON.parse(line);
    } catch {
      fail(null, 'BAD_REQUEST', 'a request is one JSON object per line');
      return;
    }
    const id = req?.id;
    if (typeof req !== 'object' || req === null || typeof id !== 'number' || typeof req.cmd !== 'string') {
      fail(id ?? null, 'BAD_REQUEST', 'a request is {"id": number, "cmd": string, "args"?: object}');
      return;
    }
    const args = (req.args ?? {}) as Record<string, unknown>;
    if (typeof args !== 'object' || Array.isArray(args)) {
      fail(id, 'BAD_REQUEST', '"args" must be an object');
      return;
    }
    if (req.cmd === 'cancel') {
      running.get(args.id as number)?.abort();
      send({ id, ok: true, result: {} });
      return;
    }
    const handler = table[req.cmd];
    if (!handler) {
      fail(
        id,
        'UNKNOWN_COMMAND',
        `unknown command "${req.cmd}" (this one knows ${Object.keys(table).join(', ')})`,
      );
      return;
    }
    if (running.has(id)) {
      fail(id, 'BAD_REQUEST', `request ${id} is still running`);
      return;
    }
    const ac = new AbortController();
    running.set(id, ac);
    const ctx: ControlContext = { signal: ac.signal, emit: (event) => send({ id, event }), drained };
    Promise.resolve()
      .then(() => handler(args, ctx))
      .then(
        (result) => send({ id, ok: true, result: result ?? {} }),
        (e: unknown) =>
          e instanceof ControlError
            ? fail(id, e.code, e.message)
            : fail(id, 'INTERNAL', e instanceof Error ? e.message : String(e)),
      )
      .finally(() => running.delete(id));
  };

  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buf += chunk;
    let nl = buf.indexOf('\n');
    while (nl >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) request(line);
      nl = buf.indexOf('\n');
    }
    if (buf.length > MAX_REQUEST_BYTES) {
      fail(null, 'BAD_REQUEST', `request longer than ${MAX_REQUEST_BYTES} bytes`);
      socket.end();
    }
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    for (const ac of running.values()) ac.abort();
  });
}

/** A connection to a control socket. */
export class ControlClient {
  readonly #socket: net.Socket;
  #nextId = 1;
  #buf = '';
  readonly #waiting = new Map<
    number,
    { resolve(r: unknown): void; reject(e: Error): void; onEvent?: (e: unknown) => void }
  >();
  #closedWith: Error | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.#onData(chunk));
    const gone = (e?: Error) => {
      this.#closedWith ??= e ?? new Error('the control socket closed');
      for (const w of this.#waiting.values()) w.reject(this.#closedWith);
      this.#waiting.clear();
    };
    socket.on('error', (e) => gone(e));
    socket.on('close', () => gone());
  }

  /** Connects to the socket at `path`; rejects with an Error that names the path. */
  static connect(path: string): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new ControlClient(s)));
      s.once('error', (e: NodeJS.ErrnoException) => {
        const why =
          e.code === 'ENOENT'
            ? 'no such socket (is the process running? is it its --control path?)'
            : e.code === 'ECONNREFUSED'
              ? 'nothing listens on it (the process is gone)'
              : e.code === 'EACCES'
                ? 'permission denied (the socket is 0600: run as its owner)'
                : e.message;
        reject(new Error(`control socket ${path}: ${why}`));
      });
    });
  }

  /** Runs `cmd`; resolves with its result, rejects with a ControlError. Events of a streaming
   *  command go to `onEvent`. */
  request(cmd: string, args: object = {}, onEvent?: (e: unknown) => void): Promise<unknown> & { id: number } {
    const id = this.#nextId++;
    const p = new Promise<unknown>((resolve, reject) => {
      if (this.#closedWith) {
        reject(this.#closedWith);
        return;
      }
      this.#waiting.set(id, { resolve, reject, onEvent });
      this.#socket.write(`${JSON.stringify({ id, cmd, args })}\n`);
    });
    return Object.assign(p, { id });
  }

  /** Ends streaming request `id` (its promise then resolves with its final result). */
  cancel(id: number): void {
    if (!this.#closedWith)
      this.#socket.write(`${JSON.stringify({ id: this.#nextId++, cmd: 'cancel', args: { id } })}\n`);
  }

  /** Stops reading replies (the server holds events back) / starts again. */
  pause(): void {
    this.#socket.pause();
  }

  resume(): void {
    this.#socket.resume();
  }

  close(): void {
    this.#socket.destroy();
  }

  #onData(chunk: string): void {
    this.#buf += chunk;
    let nl = this.#buf.indexOf('\n');
    while (nl >= 0) {
      const line = this.#buf.slice(0, nl);
      this.#buf = this.#buf.slice(nl + 1);
      nl = this.#buf.indexOf('\n');
      let r: {
        id?: number;
        ok?: boolean;
        event?: unknown;
        result?: unknown;
        error?: { code: ControlErrorCode; message: string };
      };
      try {
        r = JSON.parse(line);
      } catch {
        continue;
      }
      const w = this.#waiting.get(r.id ?? -1);
      if (!w) continue;
      if ('event' in r) {
        w.onEvent?.(r.event);
        continue;
      }
      this.#waiting.delete(r.id!);
      if (r.ok) w.resolve(r.result);
      else w.reject(new ControlError(r.error?.code ?? 'INTERNAL', r.error?.message ?? 'failed'));
    }
  }
}
