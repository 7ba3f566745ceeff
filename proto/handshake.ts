// Opening a session's connections (proto/session.ts): the options both sides take, and the
// first frame of a connection (Hello, Resume or Error) that every handshake starts with.
import pino, { type Logger } from 'pino';
import { type DecodedFrame, decodeFrame } from './codec.js';
import type { Transport } from './transport.js';
import { ErrorCode, OUR_CAPABILITIES, PROTOCOL_VERSION, ProtocolError, type pcinet } from './wire.js';

export interface SessionOptions {
  /** Send a KeepAlive after this long without sending anything. Default 1000. */
  keepaliveMs?: number;
  /** A connection that brings nothing for this long is dead. Default 3000. */
  deadAfterMs?: number;
  /** How long a dropped connection may be resumed. Default 30 000. */
  graceMs?: number;
  /** Unacknowledged bytes above which the session reports backlogged. Default 32 MiB; four times
   *  this closes the session with REPLAY_OVERFLOW. */
  replayBytes?: number;
  /** How long a handshake may take. Default 10 000. */
  handshakeMs?: number;
  log?: Logger;
  /** Free text sent in Hello. */
  agent?: string;
  /** Capability bits we set in Hello. Default OUR_CAPABILITIES; CAP_KERNEL_LINK is added only by
   *  a side that can use it (the host-agent on the kernel channel, the endpoint's server). */
  capabilities?: number;
}

/** How long a lost connection may be resumed (and a host keeps devices of a lost endpoint). */
export const DEFAULT_GRACE_MS = 30_000;

export const DEFAULTS = {
  keepaliveMs: 1000,
  deadAfterMs: 3000,
  graceMs: DEFAULT_GRACE_MS,
  replayBytes: 32 << 20,
  handshakeMs: 10_000,
} as const;

export type Resolved = Required<Omit<SessionOptions, 'log' | 'agent'>> & { log: Logger; agent: string };

export const ourCapabilities = (o: SessionOptions) => o.capabilities ?? OUR_CAPABILITIES;

export function resolve(o: SessionOptions): Resolved {
  return {
    keepaliveMs: o.keepaliveMs ?? DEFAULTS.keepaliveMs,
    deadAfterMs: o.deadAfterMs ?? DEFAULTS.deadAfterMs,
    graceMs: o.graceMs ?? DEFAULTS.graceMs,
    replayBytes: o.replayBytes ?? DEFAULTS.replayBytes,
    handshakeMs: o.handshakeMs ?? DEFAULTS.handshakeMs,
    log: o.log ?? pino({ level: 'silent' }),
    agent: o.agent ?? 'pcinet',
    capabilities: ourCapabilities(o),
  };
}

export function peerError(e: pcinet.IError): ProtocolError {
  const code = (e.code ?? ErrorCode.INTERNAL) as ErrorCode;
  return new ProtocolError(code, `peer closed the session: ${e.message ?? ''}`);
}

export function checkVersion(v: number | null | undefined): void {
  if (v !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      ErrorCode.BAD_VERSION,
      `protocol version ${v ?? 0} (we speak ${PROTOCOL_VERSION})`,
    );
  }
}

/** Waits for the first frame of a connection (a handshake message) and pauses the transport so
 *  that nothing after it is lost before the session takes over. */
export function firstFrame(t: Transport, timeoutMs: number): Promise<DecodedFrame> {
  return new Promise((res, rej) => {
    const cleanup = () => {
      clearTimeout(timer);
      t.off('frame', onFrame);
      t.off('close', onClose);
    };
    const onFrame = (bytes: Uint8Array) => {
      cleanup();
      t.pause();
      try {
        const f = decodeFrame(bytes);
        if (f.seq !== 0 || f.msgs.length !== 1) {
          throw new ProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE,
            'the first frame must be one Hello, Resume or Error',
          );
        }
        res(f);
      } catch (e) {
        rej(e);
      }
    };
    const onClose = (e?: Error) => {
      cleanup();
      rej(e ?? new Error(`${t.remote}: closed during the handshake`));
    };
    const timer = setTimeout(() => {
      cleanup();
      rej(new ProtocolError(ErrorCode.TIMEOUT, `${t.remote}: no handshake within ${timeoutMs} ms`));
    }, timeoutMs);
    t.on('frame', onFrame);
    t.on('close', onClose);
  });
}
