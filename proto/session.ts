// The session layer: a reliable, ordered, resumable stream of message batches over any Transport.
//
// - Every batch the user flushes becomes one sequenced frame (seq = previous + 1). Frames stay in a
//   bounded replay buffer until the peer acknowledges them (Frame.ack, cumulative; piggybacked on
//   our own frames, or an ack-only frame when we have nothing to say).
// - When the connection drops, the host (client) redials and sends Resume{received_seq}; the
//   endpoint (server) answers with its own. Each side replays what the other has not received, so
//   nothing is lost, duplicated or reordered. The session is held for the grace period; after it
//   the session closes with TIMEOUT.
// - Keep-alives: an idle direction sends KeepAlive; a connection that brings nothing for
//   deadAfterMs is declared dead and dropped (which starts a resume).
// - 'unreachable': the peer is declared dead — its connection went silent for deadAfterMs, or
//   (host side) a redial after a dropped connection failed. The session still waits for a resume
//   until the grace period ends; its owner may stop waiting for the peer's answers meanwhile (the
//   host-agent takes its devices' links down so drivers quiesce instead of timing out).
// - Peer mistakes close the session with Error{code} (docs/PROTOCOL.md). A 'messages' listener may
//   throw a ProtocolError: the session closes with its code. Anything else it throws is our bug:
//   logged with its stack, session closed with INTERNAL.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import {
  type DecodedFrame,
  decodeFrame,
  type EncodedMsg,
  encodeControl,
  encodeMsg,
  encodeSequencedParts,
  type FrameParts,
  framedSize,
  partsLength,
} from './codec.js';
import { canPlace, type PlaceableHead, type PlacedFrame, type Placer, placedFrame } from './frame-place.js';
import {
  checkVersion,
  DEFAULTS,
  firstFrame,
  ourCapabilities,
  peerError,
  type Resolved,
  resolve,
  type SessionOptions,
} from './handshake.js';
import { isLoan, type Loan, ReplayBuffer } from './replay.js';
import { devOf, type Tap } from './trace.js';
import type { Transport } from './transport.js';
import {
  ErrorCode,
  long,
  MAX_FRAME_BYTES,
  type Msg,
  num,
  PROTOCOL_VERSION,
  ProtocolError,
  type pcinet,
} from './wire.js';

export { DEFAULT_GRACE_MS, firstFrame, type SessionOptions } from './handshake.js';
// Opening sessions lives beside (it makes Session objects); its names stay importable from here.
export {
  MAX_PENDING_HANDSHAKES,
  openSession,
  SessionServer,
  type SessionServerOptions,
} from './session-server.js';

/** A batch grows to at most this before it is flushed on its own: frames stay far below the hard
 *  maximum while still carrying hundreds of messages. */
export const FRAME_SOFT_BYTES = 1 << 20;

/** How long a received frame may wait for an acknowledgment when we have nothing to send. Short
 *  enough that the peer's replay buffer never fills on a fast link, long enough to piggyback. */
const ACK_DELAY_MS = 5;

/** Redials after a dropped connection (host side): the first at once, then every REDIAL_FIRST_MS
 *  for REDIAL_FAST_MS (an endpoint restarting, as in a model's edit loop, is back within that and
 *  found within one step: a refused dial costs one round trip), then backing off, doubling up to
 *  REDIAL_MAX_MS. Each delay is drawn from its upper REDIAL_JITTER share at random so that hosts
 *  that lost the same card do not redial in step. */
const REDIAL_FIRST_MS = 50;
const REDIAL_FAST_MS = 2000;
const REDIAL_MAX_MS = 1000;
const REDIAL_JITTER = 0.25;

export type SessionRole = 'host' | 'endpoint';

/** Where the data of DmaReadCpl (dev, tag) of `length` bytes may be read straight into, or
 *  undefined. Must not throw. */
export type PlaceDmaReadCpl = (dev: number, tag: number, length: number) => Uint8Array | undefined;

/** Where the data of DmaWrite (dev, iova) of `length` bytes, the next message to be delivered,
 *  may be read straight into (host memory), or undefined. Must not throw. The DmaWrite is then
 *  delivered with that place as its data. `cancel` must be called as soon as nothing more may be
 *  written there (the mapping went away): if the frame is still being read, its connection ends
 *  and the frame comes again, decoded, on the next one. */
export type PlaceDmaWrite = (
  dev: number,
  iova: bigint,
  length: number,
  cancel: () => void,
) => Uint8Array | undefined;

export interface SessionStats {
  framesOut: number;
  framesIn: number;
  msgsOut: number;
  msgsIn: number;
  bytesOut: number;
  bytesIn: number;
  ackOnlyOut: number;
  keepalivesOut: number;
  resumes: number;
  replayedFrames: number;
  /** Unacknowledged frames / bytes right now. */
  replayFrames: number;
  replayBytes: number;
  /** The last keep-alive's round trip in ms (keep-alives go out when a direction is idle), if one
   *  came back yet. */
  rttMs?: number;
}

/** Events: 'messages' (msgs: pcinet.Msg[]) one inbound batch, in order; 'drain' () backlogged went
 *  false; 'disconnected' (err) the connection dropped, a resume is under way; 'unreachable' (err)
 *  the peer is declared dead (once per outage, after 'disconnected'); 'resumed' ();
 *  'close' (err?: Error) the session is over — undefined for an orderly close by either side. */
export class Session extends EventEmitter {
  readonly role: SessionRole;
  /** 16 bytes chosen by the endpoint. */
  readonly id: Uint8Array;
  /** Capability bits both sides set. */
  readonly capabilities: number;
  readonly peerAgent: string;
  /** The authenticated peer key this session was opened with (resumes must present the same). */
  readonly peerFingerprint: string | undefined;
  readonly #o: Resolved;
  readonly #log: Logger;
  readonly #peerKeepaliveMs: number;
  /** Host side: how to get a new connection. */
  readonly #redial: (() => Promise<Transport>) | undefined;

  #t: Transport | undefined;
  #detach: (() => void) | undefined;
  #closed = false;
  #closing = false;
  #everAttached = false;
  /** 'unreachable' was emitted for the current outage. */
  #unreachable = false;

  #outSeq = 0;
  #inSeq = 0;
  /** Highest ack we have sent. */
  #ackSent = 0;
  readonly #replay = new ReplayBuffer(() => this.#dropQueued());
  /** Connections let go of that may still be writing frames with lent memory (until they close). */
  readonly #retiring = new Set<Transport>();
  #batch: EncodedMsg[] = [];
  #batchBytes = 0;
  #batchReleases: (() => void)[] = [];
  #batchLoans: Loan[] = [];
  #writeBlocked = false;
  #reportedBacklog = false;
  #paused = false;
  /** Inbound batches that arrived before a 'messages' listener existed. */
  #early: pcinet.Msg[][] = [];

  #lastRx = Date.now();
  #lastTx = Date.now();
  #tick: NodeJS.Timeout | undefined;
  #ackTimer: NodeJS.Timeout | undefined;
  #graceTimer: NodeJS.Timeout | undefined;
  /** Set while the host-agent's `pcinet trace` runs (host-agent/status.ts): every sequenced
   *  message in and out is recorded. Off, it costs one test per message. */
  tap: Tap | undefined;
  #place: PlaceDmaReadCpl | undefined;
  #placeWrite: PlaceDmaWrite | undefined;
  readonly #placer: Placer = {
    place: (head, cancel) => this.#placeFor(head, cancel),
    arrived: (f) => this.#onPlaced(f),
  };
  #keepaliveNonce = 0;
  /** When keep-alive #keepaliveNonce went out (performance.now()). */
  #keepaliveSentAt = 0;
  #rttMs: number | undefined;
  readonly #stats: SessionStats = {
    framesOut: 0,
    framesIn: 0,
    msgsOut: 0,
    msgsIn: 0,
    bytesOut: 0,
    bytesIn: 0,
    ackOnlyOut: 0,
    keepalivesOut: 0,
    resumes: 0,
    replayedFrames: 0,
    replayFrames: 0,
    replayBytes: 0,
  };

  /** @internal — use openSession() or SessionServer. */
  constructor(
    role: SessionRole,
    id: Uint8Array,
    peer: pcinet.IHello,
    peerFingerprint: string | undefined,
    options: SessionOptions,
    redial?: () => Promise<Transport>,
  ) {
    super();
    this.role = role;
    this.id = id;
    this.capabilities = Number(peer.capabilities ?? 0) & ourCapabilities(options);
    this.peerAgent = peer.agent ?? '';
    this.peerFingerprint = peerFingerprint;
    this.#o = resolve(options);
    this.#log = this.#o.log.child({ session: Buffer.from(id).toString('hex').slice(0, 8) });
    this.#peerKeepaliveMs = peer.keepaliveMs ?? DEFAULTS.keepaliveMs;
    this.#redial = redial;
    this.on('newListener', (event: string) => {
      if (event === 'messages' && this.#early.length > 0) setImmediate(() => this.#deliverEarly());
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  get connected(): boolean {
    return this.#t !== undefined;
  }

  /** Current connection, for logs. */
  get remote(): string {
    return this.#t?.remote ?? '(disconnected)';
  }

  /** Where the data of a DmaReadCpl (dev, tag) of `length` bytes goes, when its receiver has a
   *  place for it (the endpoint: the read's buffer): transports that can (plain TCP) then read a
   *  frame that is nothing but that completion straight there (proto/frame-place.ts). */
  get placeDmaReadCpl(): PlaceDmaReadCpl | undefined {
    return this.#place;
  }

  set placeDmaReadCpl(place: PlaceDmaReadCpl | undefined) {
    this.#place = place;
    this.#setPlacer();
  }

  /** Where the data of a DmaWrite goes, when its receiver has a place for it (the sim host: host
   *  memory, when the write may land now): transports that can (plain TCP) then read the data of a
   *  frame that starts with that DmaWrite straight there (proto/frame-place.ts). */
  get placeDmaWrite(): PlaceDmaWrite | undefined {
    return this.#placeWrite;
  }

  set placeDmaWrite(place: PlaceDmaWrite | undefined) {
    this.#placeWrite = place;
    this.#setPlacer();
  }

  #setPlacer(): void {
    const t = this.#t;
    if (t && canPlace(t)) t.setPlacer(this.#place || this.#placeWrite ? this.#placer : undefined);
  }

  /** A place for the frame whose head this is, the next one to be delivered; only when it would be
   *  delivered as soon as it is complete (nothing held, someone listening) and is in order. */
  #placeFor(head: PlaceableHead, cancel: () => void): Uint8Array | undefined {
    if (this.#closed || this.#paused || this.#early.length > 0 || this.listenerCount('messages') === 0)
      return undefined;
    if (head.seq !== this.#inSeq + 1 || head.ack > this.#outSeq) return undefined;
    if (head.kind === 'dmaReadCpl') return this.#place?.(head.dev, head.tag, head.dataLength);
    return this.#placeWrite?.(head.dev, head.iova, head.dataLength, cancel);
  }

  /** True while producers should wait for 'drain': disconnected, the socket is full, or the peer
   *  has not acknowledged replayBytes. */
  get backlogged(): boolean {
    return this.#closed || !this.#t || this.#writeBlocked || this.#replay.bytes > this.#o.replayBytes;
  }

  /** Queues one sequenced message in the current batch. Ignored once the session is closed (device
   *  work racing the close). `byRef`: the message's payload, handed over (nobody modifies it
   *  afterwards), so a large one is sent and kept for replay by reference instead of copied.
   *  `release`: called once `byRef` is no longer needed (the peer acknowledged the frame, which it
   *  got a copy of), so that its owner may reuse it; never, if the session ends first. `byRef` may
   *  be lent memory instead (a DmaReadCpl's data, proto/replay.ts): sent by reference on
   *  transports that can drop queued writes, copied on others; it ends once acknowledged or when
   *  the session ends. */
  send(m: Msg, byRef?: Uint8Array | Loan, release?: () => void): void {
    if (this.#closed) {
      if (isLoan(byRef)) byRef.end();
      return;
    }
    let payload: Uint8Array | undefined;
    let loan: Loan | undefined;
    if (isLoan(byRef)) {
      loan = byRef;
      // The owner may have taken it back while it waited (the relay holds messages of a device
      // being attached): the message carries what the loan holds now.
      if (m.dmaReadCpl && m.dmaReadCpl.data !== byRef.bytes)
        m = { dmaReadCpl: { ...m.dmaReadCpl, data: byRef.bytes } };
      payload = byRef.bytes;
    } else payload = byRef;
    if (this.tap) this.tap.record(m, this.role === 'endpoint', false, devOf(m));
    const e = encodeMsg(m, payload);
    const size = framedSize(e);
    if (size > MAX_FRAME_BYTES - 64)
      throw new Error(`session: one message of ${size} bytes cannot be framed`);
    // A large DMA read's data goes in a frame of its own, which the endpoint can read straight
    // into the read's buffer; a large DMA write's starts a frame, which the host can read straight
    // into its memory, what follows it (the completion, the interrupt) read after it
    // (proto/frame-place.ts).
    const byReference = Array.isArray(e);
    const alone = m.dmaReadCpl != null && byReference;
    const first = m.dmaWrite != null && byReference;
    if ((alone || first || this.#batchBytes + size > FRAME_SOFT_BYTES) && this.#batch.length > 0)
      this.flush();
    this.#batch.push(e);
    this.#batchBytes += size;
    if (release) this.#batchReleases.push(release);
    if (loan) this.#batchLoans.push(loan);
    if (alone) this.flush();
  }

  /** Sends the current batch as one frame (nothing if it is empty). */
  flush(): void {
    if (this.#closed || this.#batch.length === 0) return;
    const seq = ++this.#outSeq;
    this.#stats.msgsOut += this.#batch.length;
    const p = this.#replay.add(
      seq,
      encodeSequencedParts(seq, this.#inSeq, this.#batch),
      this.#batchReleases,
      this.#batchLoans,
    );
    this.#batch = [];
    this.#batchBytes = 0;
    this.#batchReleases = [];
    this.#batchLoans = [];
    if (this.#replay.bytes > 4 * this.#o.replayBytes) {
      this.#fail(
        new ProtocolError(ErrorCode.REPLAY_OVERFLOW, `peer has not acknowledged ${this.#replay.bytes} bytes`),
      );
      return;
    }
    if (this.#t) {
      this.#replay.written(p, !this.#t.copiesOut, lends(this.#t));
      this.#write(p.parts, this.#inSeq);
    }
    this.#checkDrain();
  }

  /** Inbound backpressure: stop / restart delivering 'messages'. */
  pause(): void {
    this.#paused = true;
    this.#t?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#t?.resume();
  }

  stats(): SessionStats {
    return {
      ...this.#stats,
      replayFrames: this.#replay.frames,
      replayBytes: this.#replay.bytes,
      ...(this.#rttMs !== undefined ? { rttMs: this.#rttMs } : {}),
    };
  }

  /** Closes the session. Orderly (no `err`): sends what is batched, waits (bounded) until the peer
   *  has acknowledged everything, then Error{SHUTDOWN}. With `err`: Error{code} right away. */
  async close(err?: Error): Promise<void> {
    if (this.#closed || this.#closing) return;
    if (err) {
      this.#fail(err);
      return;
    }
    this.#closing = true;
    this.flush();
    const deadline = Date.now() + 2000;
    while (this.#t && this.#replay.frames > 0 && Date.now() < deadline && !this.#closed) {
      await new Promise((r) => setTimeout(r, 5));
    }
    if (this.#closed) return;
    this.#sendControl({ error: { code: ErrorCode.SHUTDOWN, message: 'closing' } });
    this.#finish(undefined, true);
  }

  // ---- connection management -------------------------------------------------------------

  /** @internal Takes a connection whose handshake is done; `peerReceived` is the peer's
   *  received_seq (0 for a new session). The transport must be paused; it is resumed here. */
  attach(t: Transport, peerReceived: number): void {
    if (this.#closed) {
      t.close();
      return;
    }
    const resumed = this.#everAttached;
    this.#everAttached = true;
    this.#dropTransport();
    if (peerReceived > this.#outSeq) {
      this.#fail(
        new ProtocolError(
          ErrorCode.BAD_ARGUMENT,
          `peer says it received ${peerReceived}, we sent ${this.#outSeq}`,
        ),
      );
      t.close();
      return;
    }
    this.#replay.acked(peerReceived);
    const first = this.#replay.firstSeq;
    if (first !== undefined && first !== peerReceived + 1) {
      this.#fail(
        new ProtocolError(ErrorCode.INTERNAL, `replay starts at ${first}, peer has ${peerReceived}`),
      );
      t.close();
      return;
    }
    clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#unreachable = false;
    this.#t = t;
    this.#writeBlocked = false;
    const onFrame = (f: Uint8Array) => this.#onFrame(f);
    const onDrain = () => {
      this.#writeBlocked = false;
      this.#checkDrain();
    };
    const onClose = (e?: Error) => this.#onTransportClose(t, e);
    t.on('frame', onFrame);
    t.on('drain', onDrain);
    t.on('close', onClose);
    if ((this.#place || this.#placeWrite) && canPlace(t)) t.setPlacer(this.#placer);
    this.#detach = () => {
      t.off('frame', onFrame);
      t.off('drain', onDrain);
      t.off('close', onClose);
      if (canPlace(t)) t.setPlacer(undefined);
    };
    this.#lastRx = Date.now();
    for (const p of this.#replay.entries) {
      this.#replay.written(p, !t.copiesOut, lends(t));
      this.#write(p.parts, this.#inSeq);
      if (resumed) this.#stats.replayedFrames++;
    }
    if (resumed) {
      this.#stats.resumes++;
      this.#log.info({ remote: t.remote, replayed: this.#replay.frames }, 'session resumed');
    }
    this.#tick ??= setInterval(
      () => this.#onTick(),
      Math.max(10, Math.min(this.#o.keepaliveMs, this.#o.deadAfterMs) / 4),
    );
    this.#tick.unref?.();
    if (!this.#paused) t.resume();
    if (resumed) this.emit('resumed');
    this.#checkDrain();
  }

  /** The highest sequenced frame received in order (for Resume). */
  get receivedSeq(): number {
    return this.#inSeq;
  }

  /** Lets go of the connection; `closed`: it has closed already (nothing of it is written any
   *  more). */
  #dropTransport(closed = false): Transport | undefined {
    const t = this.#t;
    this.#detach?.();
    this.#detach = undefined;
    this.#t = undefined;
    if (t && !closed && this.#replay.lending) {
      // It may still write frames with lent memory after we let go (close() sends what is queued).
      this.#retiring.add(t);
      t.once('close', () => {
        this.#retiring.delete(t);
        if (this.#closed && this.#retiring.size === 0) this.#replay.endLoans();
      });
    }
    return t;
  }

  /** A loan was taken back: no connection may write the memory it lent from now on. Those whose
   *  writes the kernel has taken already are left alone; any other ends here (and the session
   *  resumes on a new one, replaying the frame from its copy). */
  #dropQueued(): void {
    this.#t?.dropQueued?.();
    for (const t of this.#retiring) t.dropQueued?.();
  }

  #onTransportClose(t: Transport, e?: Error): void {
    if (t !== this.#t) return;
    this.#dropTransport(true);
    if (e instanceof ProtocolError) {
      // The peer broke framing: no resume.
      this.#fail(e);
      return;
    }
    this.#lost(e ?? new Error('connection closed'));
  }

  /** The connection is gone but the session is not: hold it for the grace period. */
  #lost(why: Error): void {
    if (this.#closed) return;
    if (this.#closing) {
      this.#finish(undefined, false);
      return;
    }
    this.#log.warn({ err: why.message }, 'connection lost; resuming');
    this.emit('disconnected', why);
    this.#checkDrain();
    this.#graceTimer ??= setTimeout(() => {
      this.#fail(new ProtocolError(ErrorCode.TIMEOUT, `no resume within ${this.#o.graceMs} ms`));
    }, this.#o.graceMs);
    if (this.#redial) void this.#redialLoop(this.#redial);
  }

  /** The peer is dead for now (see the file's head): said once per outage. */
  #declareUnreachable(why: Error): void {
    if (this.#closed || this.#t || this.#unreachable) return;
    this.#unreachable = true;
    this.#log.warn({ err: why.message }, 'peer unreachable');
    this.emit('unreachable', why);
  }

  async #redialLoop(dial: () => Promise<Transport>): Promise<void> {
    const lost = Date.now();
    let delay = 0;
    while (!this.#closed && !this.#t) {
      if (delay) await new Promise((r) => setTimeout(r, jittered(delay, REDIAL_JITTER)));
      delay = Date.now() - lost < REDIAL_FAST_MS ? REDIAL_FIRST_MS : Math.min(2 * delay, REDIAL_MAX_MS);
      if (this.#closed || this.#t) return;
      let t: Transport;
      try {
        t = await dial();
      } catch (e) {
        if (e instanceof ProtocolError && e.code === ErrorCode.AUTH_REFUSED) {
          this.#fail(e);
          return;
        }
        this.#log.debug({ err: (e as Error).message }, 'redial failed');
        this.#declareUnreachable(e as Error);
        continue;
      }
      if (this.#closed) {
        t.close();
        return;
      }
      try {
        t.send(
          encodeControl(0, [
            { resume: { version: PROTOCOL_VERSION, sessionId: this.id, receivedSeq: long(this.#inSeq) } },
          ]),
        );
        const f = await firstFrame(t, this.#o.handshakeMs);
        const m = f.msgs[0];
        if (m?.error) throw peerError(m.error);
        if (!m?.resume)
          throw new ProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE,
            `expected Resume, got ${m?.body ?? 'nothing'}`,
          );
        checkVersion(m.resume.version);
        if (Buffer.compare(Buffer.from(m.resume.sessionId ?? []), Buffer.from(this.id)) !== 0) {
          throw new ProtocolError(ErrorCode.SESSION_UNKNOWN, 'endpoint resumed a different session');
        }
        this.attach(t, num(m.resume.receivedSeq, 'received_seq'));
        this.#onAck(f.ack);
      } catch (e) {
        t.close();
        if (e instanceof ProtocolError && e.code !== ErrorCode.TIMEOUT) {
          this.#fail(e);
          return;
        }
        this.#log.debug({ err: (e as Error).message }, 'resume attempt failed');
        this.#declareUnreachable(e as Error);
      }
    }
  }

  // ---- inbound -----------------------------------------------------------------------------

  #onFrame(bytes: Uint8Array): void {
    if (this.#closed) return;
    let f: DecodedFrame;
    try {
      f = decodeFrame(bytes);
    } catch (e) {
      this.#countIn(bytes.length);
      this.#fail(e as Error);
      return;
    }
    this.#onDecoded(f, bytes.length);
  }

  /** A frame whose data the transport read where placeDmaReadCpl or placeDmaWrite said. */
  #onPlaced(p: PlacedFrame): void {
    if (this.#closed) return;
    let f: DecodedFrame;
    try {
      f = placedFrame(p);
    } catch (e) {
      this.#countIn(p.length);
      this.#fail(e as Error);
      return;
    }
    this.#onDecoded(f, p.length);
  }

  #countIn(length: number): void {
    this.#lastRx = Date.now();
    this.#stats.bytesIn += length;
    this.#stats.framesIn++;
  }

  #onDecoded(f: DecodedFrame, length: number): void {
    this.#countIn(length);
    try {
      this.#onAck(f.ack);
    } catch (e) {
      this.#fail(e as Error);
      return;
    }
    if (f.seq === 0) {
      for (const m of f.msgs) this.#onControl(m);
      return;
    }
    if (f.seq !== this.#inSeq + 1) {
      this.#fail(new ProtocolError(ErrorCode.OUT_OF_ORDER, `frame ${f.seq} after ${this.#inSeq}`));
      return;
    }
    this.#inSeq = f.seq;
    this.#stats.msgsIn += f.msgs.length;
    this.#scheduleAck();
    if (this.#early.length > 0 || this.listenerCount('messages') === 0) {
      // Nobody listens yet (the owner is still wiring up after the handshake): keep it, in order,
      // and stop reading until someone does.
      this.#early.push(f.msgs);
      this.#t?.pause();
      return;
    }
    this.#deliver(f.msgs);
  }

  #deliverEarly(): void {
    while (this.#early.length > 0 && !this.#closed) this.#deliver(this.#early.shift()!);
    if (!this.#paused) this.#t?.resume();
  }

  #deliver(msgs: pcinet.Msg[]): void {
    const tap = this.tap;
    if (tap) for (const m of msgs) tap.record(m, this.role === 'host', false, devOf(m));
    try {
      this.emit('messages', msgs);
    } catch (e) {
      if (!(e instanceof ProtocolError)) {
        this.#log.error({ err: e }, 'internal error handling messages');
        this.#fail(new ProtocolError(ErrorCode.INTERNAL, (e as Error).message));
        return;
      }
      this.#fail(e);
    }
  }

  #onAck(ack: number): void {
    if (ack > this.#outSeq) {
      throw new ProtocolError(
        ErrorCode.BAD_ARGUMENT,
        `ack ${ack} for a frame never sent (last ${this.#outSeq})`,
      );
    }
    if (this.#acked(ack)) this.#checkDrain();
  }

  /** Drops acknowledged frames from the replay buffer; true if any were. */
  #acked(ack: number): boolean {
    return this.#replay.acked(ack);
  }

  #onControl(m: pcinet.Msg): void {
    if (m.keepAlive) {
      if (!m.keepAlive.reply) this.#sendControl({ keepAlive: { nonce: m.keepAlive.nonce, reply: true } });
      else if (num(m.keepAlive.nonce, 'nonce') === this.#keepaliveNonce)
        this.#rttMs = performance.now() - this.#keepaliveSentAt;
      return;
    }
    if (m.error) {
      const e = m.error;
      if ((e.code ?? 0) === ErrorCode.SHUTDOWN) {
        this.#log.info('peer closed the session');
        this.#finish(undefined, true);
      } else {
        this.#finish(peerError(e), true);
      }
      return;
    }
    this.#fail(new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `${m.body} after the handshake`));
  }

  // ---- outbound ----------------------------------------------------------------------------

  #write(frame: Uint8Array | FrameParts, ack: number): void {
    const t = this.#t!;
    this.#stats.framesOut++;
    this.#stats.bytesOut += frame instanceof Uint8Array ? frame.length : partsLength(frame);
    this.#lastTx = Date.now();
    if (ack > this.#ackSent) this.#ackSent = ack;
    if (this.#ackSent >= this.#inSeq) {
      clearTimeout(this.#ackTimer);
      this.#ackTimer = undefined;
    }
    if (!t.send(frame)) this.#writeBlocked = true;
  }

  #sendControl(m: Msg): void {
    if (!this.#t) return;
    this.#write(encodeControl(this.#inSeq, [m]), this.#inSeq);
  }

  #scheduleAck(): void {
    if (this.#ackTimer) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = undefined;
      if (this.#t && this.#ackSent < this.#inSeq) {
        this.#stats.ackOnlyOut++;
        this.#write(encodeControl(this.#inSeq, []), this.#inSeq);
      }
    }, ACK_DELAY_MS);
  }

  #checkDrain(): void {
    const b = this.backlogged;
    if (b) this.#reportedBacklog = true;
    else if (this.#reportedBacklog) {
      this.#reportedBacklog = false;
      this.emit('drain');
    }
  }

  #onTick(): void {
    if (!this.#t) return;
    const now = Date.now();
    const dead = Math.max(this.#o.deadAfterMs, 2 * this.#peerKeepaliveMs);
    if (now - this.#lastRx > dead) {
      const t = this.#dropTransport()!;
      t.close(new Error('peer silent'));
      const why = new Error(`nothing from the peer for ${now - this.#lastRx} ms`);
      this.#lost(why);
      this.#declareUnreachable(why);
      return;
    }
    if (now - this.#lastTx >= this.#o.keepaliveMs) {
      this.#stats.keepalivesOut++;
      this.#keepaliveSentAt = performance.now();
      this.#sendControl({ keepAlive: { nonce: long(++this.#keepaliveNonce), reply: false } });
    }
  }

  // ---- closing -----------------------------------------------------------------------------

  /** Closes because of `err`: tells the peer why (if connected), then finishes. */
  #fail(err: Error): void {
    if (this.#closed) return;
    const code = err instanceof ProtocolError ? err.code : ErrorCode.INTERNAL;
    this.#log.warn({ code: ErrorCode[code], err: err.message }, 'closing session');
    this.#sendControl({ error: { code, message: err.message.slice(0, 500) } });
    this.#finish(err, true);
  }

  #finish(err: Error | undefined, closeTransport: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#tick);
    clearTimeout(this.#ackTimer);
    clearTimeout(this.#graceTimer);
    const t = this.#dropTransport();
    if (closeTransport) t?.close(err);
    this.#batch = [];
    this.#batchReleases = [];
    for (const l of this.#batchLoans) l.end();
    this.#batchLoans = [];
    // Loans end once no connection can write them any more.
    if (this.#retiring.size === 0) this.#replay.endLoans();
    this.emit('close', err);
  }
}

/** Lent memory may go out by reference on `t`: the peer gets copies, and writes still queued can be
 *  dropped when a loan is taken back. */
const lends = (t: Transport) => t.copiesOut === true && t.dropQueued !== undefined;

/** `ms` less up to `share` of it, at random. */
export function jittered(ms: number, share: number): number {
  return Math.round(ms * (1 - share * Math.random()));
}
