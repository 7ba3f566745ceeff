// Opening sessions: the host dials and says Hello (openSession); the endpoint runs handshakes on
// the connections it accepts, creates sessions and resumes them (SessionServer).
import { randomBytes } from 'node:crypto';
import pino, { type Logger } from 'pino';
import { type DecodedFrame, encodeControl } from './codec.js';
import {
  checkVersion,
  DEFAULTS,
  firstFrame,
  ourCapabilities,
  peerError,
  resolve,
  type SessionOptions,
} from './handshake.js';
import { Session } from './session.js';
import type { Transport } from './transport.js';
import { ErrorCode, long, num, PROTOCOL_VERSION, ProtocolError } from './wire.js';

/** Host side: dials, says Hello, and returns the session once the endpoint answered. `dial` is
 *  called again for every reconnect. Rejects with the endpoint's coded refusal (AUTH_REFUSED, BUSY,
 *  BAD_VERSION …) or the dial error. */
export async function openSession(
  dial: () => Promise<Transport>,
  options: SessionOptions = {},
): Promise<Session> {
  const o = resolve(options);
  const t = await dial();
  try {
    t.send(
      encodeControl(0, [
        {
          hello: {
            version: PROTOCOL_VERSION,
            capabilities: long(o.capabilities),
            agent: o.agent,
            keepaliveMs: o.keepaliveMs,
          },
        },
      ]),
    );
    const f = await firstFrame(t, o.handshakeMs);
    const m = f.msgs[0]!;
    if (m.error) throw peerError(m.error);
    if (!m.hello) throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `expected Hello, got ${m.body}`);
    checkVersion(m.hello.version);
    const id = m.hello.sessionId ?? new Uint8Array();
    if (id.length !== 16) throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `session id of ${id.length} bytes`);
    const s = new Session('host', id, m.hello, t.peerFingerprint, options, dial);
    s.attach(t, 0);
    return s;
  } catch (e) {
    if (e instanceof ProtocolError && e.code !== ErrorCode.TIMEOUT && !e.message.startsWith('peer closed')) {
      // Tell the endpoint why we give up (it may log it); best effort.
      t.send(encodeControl(0, [{ error: { code: e.code, message: e.message.slice(0, 500) } }]));
    }
    t.close();
    throw e;
  }
}

/** Connections waiting for their Hello or Resume at once; more are refused with BUSY. A peer that
 *  connects and says nothing is dropped after handshakeMs; this bounds how many it can keep. */
export const MAX_PENDING_HANDSHAKES = 64;

export interface SessionServerOptions extends SessionOptions {
  /** Decides whether a new session may start (e.g. BUSY while another host holds the devices).
   *  Return a ProtocolError to refuse. */
  admit?: (peerFingerprint: string | undefined) => ProtocolError | undefined;
}

/** Endpoint side: runs handshakes on accepted connections, creates sessions and resumes them. */
export class SessionServer {
  readonly #o: SessionServerOptions;
  readonly #log: Logger;
  readonly #onSession: (s: Session) => void;
  readonly #sessions = new Map<string, Session>();
  readonly #pending = new Set<Transport>();
  #closed = false;

  constructor(options: SessionServerOptions, onSession: (s: Session) => void) {
    this.#o = options;
    this.#log = options.log ?? pino({ level: 'silent' });
    this.#onSession = onSession;
  }

  get sessions(): Session[] {
    return [...this.#sessions.values()];
  }

  /** Takes a new connection; never throws (a bad peer only closes its own connection). */
  accept(t: Transport): void {
    if (this.#closed) {
      t.close();
      return;
    }
    if (this.#pending.size >= MAX_PENDING_HANDSHAKES) {
      this.#refuse(t, new ProtocolError(ErrorCode.BUSY, `${MAX_PENDING_HANDSHAKES} handshakes in flight`));
      return;
    }
    this.#pending.add(t);
    firstFrame(t, this.#o.handshakeMs ?? DEFAULTS.handshakeMs)
      .then((f) => this.#handshake(t, f))
      .catch((e: Error) => this.#refuse(t, e))
      .finally(() => this.#pending.delete(t));
  }

  #refuse(t: Transport, e: Error): void {
    const code = e instanceof ProtocolError ? e.code : ErrorCode.INTERNAL;
    this.#log.warn({ remote: t.remote, code: ErrorCode[code], err: e.message }, 'handshake refused');
    t.send(encodeControl(0, [{ error: { code, message: e.message.slice(0, 500) } }]));
    t.close(e);
  }

  #handshake(t: Transport, f: DecodedFrame): void {
    const m = f.msgs[0]!;
    if (m.error) throw peerError(m.error);
    if (m.hello) {
      checkVersion(m.hello.version);
      if (m.hello.sessionId && m.hello.sessionId.length > 0) {
        throw new ProtocolError(ErrorCode.BAD_ARGUMENT, 'a new session starts with an empty session id');
      }
      const refusal = this.#o.admit?.(t.peerFingerprint);
      if (refusal) throw refusal;
      const id = randomBytes(16);
      const s = new Session('endpoint', id, m.hello, t.peerFingerprint, this.#o);
      const key = id.toString('hex');
      this.#sessions.set(key, s);
      s.once('close', () => this.#sessions.delete(key));
      t.send(
        encodeControl(0, [
          {
            hello: {
              version: PROTOCOL_VERSION,
              capabilities: long(ourCapabilities(this.#o)),
              agent: this.#o.agent ?? 'pcinet',
              sessionId: id,
              keepaliveMs: this.#o.keepaliveMs ?? DEFAULTS.keepaliveMs,
            },
          },
        ]),
      );
      this.#log.info({ remote: t.remote, peer: m.hello.agent, session: key.slice(0, 8) }, 'session opened');
      this.#onSession(s);
      s.attach(t, 0);
      return;
    }
    if (m.resume) {
      checkVersion(m.resume.version);
      const key = Buffer.from(m.resume.sessionId ?? []).toString('hex');
      const s = this.#sessions.get(key);
      if (!s || s.closed)
        throw new ProtocolError(ErrorCode.SESSION_UNKNOWN, `no session ${key || '(empty id)'}`);
      if (s.peerFingerprint !== t.peerFingerprint) {
        throw new ProtocolError(ErrorCode.AUTH_REFUSED, 'resume from a different host key');
      }
      t.send(
        encodeControl(0, [
          { resume: { version: PROTOCOL_VERSION, sessionId: s.id, receivedSeq: long(s.receivedSeq) } },
        ]),
      );
      s.attach(t, num(m.resume.receivedSeq, 'received_seq'));
      return;
    }
    throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `${m.body} before Hello`);
  }

  /** Closes every session (orderly) and refuses new connections. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const t of this.#pending) t.close();
    await Promise.all([...this.#sessions.values()].map((s) => s.close()));
  }
}
