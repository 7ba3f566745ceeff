// In-process transport: two linked ends that hand frames over in memory, asynchronously and in
// order, with the same backpressure contract as a socket. First-class: the session, endpoint and
// host-agent are tested over it with no network.
import { EventEmitter } from 'node:events';
import type { FrameParts } from './codec.js';
import type { Transport, TransportEvents } from './transport.js';

/** Bytes queued towards a peer before send() says "slow down". */
const LOOP_HIGH_WATER = 1 << 20;

class LoopEnd extends EventEmitter<TransportEvents> implements Transport {
  peer!: LoopEnd;
  readonly remote: string;
  readonly peerFingerprint: string | undefined;
  /** Frames on their way to this end. */
  #inbox: Uint8Array[] = [];
  #inboxBytes = 0;
  #paused = false;
  #scheduled = false;
  #closed = false;
  #wantDrain = false;

  constructor(name: string, fingerprint?: string) {
    super();
    this.remote = `loop:${name}`;
    this.peerFingerprint = fingerprint;
  }

  send(frame: Uint8Array | FrameParts): boolean {
    if (this.#closed) return false;
    const p = this.peer;
    if (p.#closed) return false;
    // A copy, as a socket would make: the receiver may keep views of what it gets.
    // (Uint8Array's slice: a Buffer's own slice() would be a view.)
    const bytes = frame instanceof Uint8Array ? Uint8Array.prototype.slice.call(frame) : Buffer.concat(frame);
    p.#inbox.push(bytes);
    p.#inboxBytes += bytes.length;
    p.#schedule();
    if (p.#inboxBytes > LOOP_HIGH_WATER) {
      this.#wantDrain = true;
      return false;
    }
    return true;
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#schedule();
  }

  close(err?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#inbox = [];
    queueMicrotask(() => this.emit('close', err));
    const p = this.peer;
    // The peer sees an orderly end of stream after whatever was already on its way.
    setImmediate(() => p.#peerClosed());
  }

  #peerClosed(): void {
    if (this.#closed) return;
    if (this.#inbox.length > 0) {
      setImmediate(() => this.#peerClosed());
      return;
    }
    this.#closed = true;
    this.emit('close', undefined);
  }

  #schedule(): void {
    if (this.#scheduled || this.#paused) return;
    this.#scheduled = true;
    setImmediate(() => this.#deliver());
  }

  #deliver(): void {
    this.#scheduled = false;
    while (!this.#paused && !this.#closed && this.#inbox.length > 0) {
      const f = this.#inbox.shift()!;
      this.#inboxBytes -= f.length;
      this.emit('frame', f);
    }
    const p = this.peer;
    if (p.#wantDrain && this.#inboxBytes <= LOOP_HIGH_WATER / 2) {
      p.#wantDrain = false;
      p.emit('drain');
    }
  }
}

/** Two linked transports. Fingerprints stand in for authenticated peer keys in tests. */
export function loopPair(
  opts: { aFingerprint?: string; bFingerprint?: string } = {},
): [Transport, Transport] {
  const a = new LoopEnd('a', opts.bFingerprint);
  const b = new LoopEnd('b', opts.aFingerprint);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
