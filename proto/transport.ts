// A transport carries whole frames (encoded pcinet.Frame bytes) between two peers. TCP, TLS,
// WebSocket and the in-process loop all implement it; the session layer sees nothing else.
import type { EventEmitter } from 'node:events';
import type { FrameParts } from './codec.js';

export interface TransportEvents {
  /** One complete frame, exactly as the peer passed it to send(). */
  frame: [frame: Uint8Array];
  /** The send buffer fell below its high-water mark after send() returned false. */
  drain: [];
  /** The connection is gone. `err` is a ProtocolError for framing violations, any Error for I/O
   *  failures, undefined for an orderly close. Emitted once. */
  close: [err?: Error];
}

export interface Transport extends EventEmitter<TransportEvents> {
  /** Queues one frame, given whole or as parts (their concatenation; stream transports write them
   *  with one gather write, copying nothing). The transport may keep references to the bytes until
   *  they are written: nobody modifies them afterwards. Returns false once buffered data is over the
   *  high-water mark: the caller should stop sending until 'drain'. Never drops. */
  send(frame: Uint8Array | FrameParts): boolean;
  /** Stop / restart delivering 'frame' events (inbound backpressure). */
  pause(): void;
  resume(): void;
  /** Idempotent. Emits 'close' (asynchronously) if not closed yet. */
  close(err?: Error): void;
  /** Human-readable peer description for logs, e.g. "tls://127.0.0.1:40022". */
  readonly remote: string;
  /** "sha256:<hex>" of the peer's public key (SPKI DER) on authenticated transports. */
  readonly peerFingerprint: string | undefined;
  /** The peer gets copies of what is sent (a socket's bytes): once it has acknowledged a frame,
   *  nothing it holds is ours. Absent: it may hold the very buffers sent (the in-process loop). */
  readonly copiesOut?: boolean;
  /** If some of what was sent is not yet the kernel's (still queued in this process, so still read
   *  from the buffers given to send()), ends the connection at once: that never goes out. True if
   *  it did. With it the session may send memory its owner takes back (proto/replay.ts) by
   *  reference; without, it sends copies. */
  dropQueued?(): boolean;
}
