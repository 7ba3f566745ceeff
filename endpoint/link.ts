// A kernel link on the endpoint's side: the TCP connection pcinet.ko opened for one device
// (W_CONNECT, docs/KERNEL-ABI.md). It carries the kernel's own records both ways, so the host's
// data plane never passes through its host-agent. Inbound records become the messages the runtime
// handles; the runtime's messages for the device become records (proto/kernel-link.ts). The
// runtime uses it in place of the session for everything the device says. On an encrypted
// session the link is sealed: frames of whole records under AES-256-GCM with a key the session
// carried (kernel/uapi/pcinet.h, PCINET_LINK_F_SEAL).
import { createCipheriv } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { gather } from '../proto/codec.js';
import {
  AbiError,
  LINK_MAGIC,
  parseRecords,
  type RecordVisitor,
  SEAL_MAX,
  SEAL_TAG,
  visitRecords,
} from '../proto/kernel-abi.js';
import { RecordOut, RecordStream, RecordTranslator, type VirtqDone } from '../proto/kernel-link.js';
import type { SocketReads } from '../proto/tcp.js';
import type { ErrorCode, Msg } from '../proto/wire.js';
import { SealedFrames, sealNonce } from './sealed-in.js';

/**
 * The runtime's side of a link's inbound records when they need not become messages first: each
 * call is what the record's message would say (for the link's device), within batch(). A record's
 * 64-bit fields come as they are; the receiver checks them as it checks a message's.
 */
export interface LinkReceiver {
  /** False while records must reach the runtime as messages (a trace records messages). */
  direct(): boolean;
  /** One inbound batch: `visit` hands its records over, then the runtime ends the batch. */
  batch(visit: () => void): void;
  mmioWrite(bar: number, offset: bigint, data: Uint8Array): void;
  mmioRead(tag: number, bar: number, size: number, offset: bigint): void;
  configWrite(offset: number, size: number, value: number): void;
  functionReset(): void;
  /** A DMA read of the runtime's (`tag`) completed; `data` when its status is OK. */
  dmaReadCpl(tag: number, status: ErrorCode, data: Uint8Array | undefined): void;
  /** `data` is a view of a buffer nobody writes again, or, `lent`, of one the link reads into
   *  again: reclaim() says when, and what is kept of it must be copied then. */
  push(rule: number, iova: bigint, data: Uint8Array, lent: boolean): void;
  /** The link is about to write into `buffer` again (pushes it lent may be in it). */
  reclaim(buffer: ArrayBufferLike): void;
  pushDrop(iova: bigint, length: bigint): void;
  pushRuleSet(id: number): void;
}

const NO_RECORDS: Buffer[] = [];

/** Events: 'drain' () the socket took what was waiting; 'close' (err?: Error) the link is gone. */
export class KernelLink extends EventEmitter {
  readonly remote: string;
  readonly #socket: net.Socket;
  /** Lends what it reads into our buffers (reused once a batch is over); see #onRecords. */
  readonly #stream = new RecordStream({ lend: true });
  #records: RecordTranslator | undefined;
  #key: Uint8Array | undefined;
  #txSeq = 0n;
  /** Sealed links: the inbound frames. */
  #sealed: SealedFrames | undefined;
  /** Sealed links: records queued by send(), each whole or as its parts (a sealed frame never
   *  splits one). */
  #out: (Uint8Array | Uint8Array[])[] = [];
  /** Links in the clear: records queued by send(), encoded one after another. */
  readonly #recordOut = new RecordOut();
  #inbound: Msg[] = [];
  #deliver: ((msgs: Msg[]) => void) | undefined;
  #receiver: LinkReceiver | undefined;
  /** The records of a batch to #receiver (made once, in start()). */
  #visitor: RecordVisitor | undefined;
  /** The buffers of whole records of the batch #visitBatch hands over. */
  #batchWholes: Buffer[] = [];
  /** Made once: a batch's records to the receiver's visitor (no closure per batch). */
  readonly #visitBatch = () => {
    const v = this.#visitor!;
    const wholes = this.#batchWholes;
    for (let i = 0; i < wholes.length; i++) visitRecords(wholes[i]!, true, v);
  };

  /** The batch being visited is lent (#onRecords). */
  #lent = false;
  #closed = false;
  #error: Error | undefined;
  /** When the last inbound records arrived, until something goes out (performance.now(), ms). */
  #lastIn: number | undefined;
  /** Replies: writes that followed inbound records, and the time from those records to the write,
   *  in µs (what the endpoint and its backend spend per request; the rest of an I/O's time is the
   *  host and the network). */
  readonly stats = { replies: 0, replyUs: 0 };

  /** `socket` is paused, its hello read; nothing is read until start(). `reads`: the socket
   *  reads into buffers we give it (proto/tcp.ts), instead of emitting 'data'. */
  constructor(socket: net.Socket, reads?: SocketReads) {
    super();
    this.#socket = socket;
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.setNoDelay(true);
    this.#stream.onReuse = (buffer) => this.#receiver?.reclaim(buffer);
    if (reads) {
      // In the clear, records are read into the stream's buffers (a large one straight into its
      // own); sealed frames are opened into new buffers, so their reads can go anywhere fresh.
      reads.buffer = () => (this.#sealed ? this.#sealed.readBuffer() : this.#stream.readBuffer());
      reads.sink = (n, buf) => this.#onRead(n, buf);
    } else socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => this.emit('drain'));
    socket.on('error', (e) => {
      this.#error ??= e;
    });
    socket.on('close', () => {
      if (this.#closed) return;
      this.#closed = true;
      this.emit('close', this.#error);
    });
  }

  /** Tells pcinet.ko the link is accepted (the hello's magic back) for device `dev`; sealed
   *  with `key` when given. */
  accept(dev: number, key?: Uint8Array): void {
    this.#key = key;
    if (key) this.#sealed = new SealedFrames(key);
    const out = this.#recordOut;
    this.#records = key
      ? new RecordTranslator({
          dev,
          sink: (m) => this.#inbound.push(m),
          write: (r) => this.#out.push(r),
          writeParts: (parts) => this.#out.push(parts),
        })
      : new RecordTranslator({ dev, sink: (m) => this.#inbound.push(m), write: (r) => out.ref(r), out });
    this.#socket.write(LINK_MAGIC);
  }

  /** Starts reading: every chunk's whole records go to `deliver` as one batch of messages, or,
   *  with a `receiver` whose direct() says so, to it without messages. An error thrown by either
   *  (the kernel broke the protocol) closes the link with it. */
  start(deliver: (msgs: Msg[]) => void, receiver?: LinkReceiver): void {
    this.#deliver = deliver;
    this.#receiver = receiver;
    if (receiver) this.#visitor = this.#visitorFor(receiver);
    this.#socket.resume();
  }

  #visitorFor(rx: LinkReceiver): RecordVisitor {
    const notDataPlane = (what: string) => {
      throw new AbiError(`${what} is not a data-plane record`);
    };
    const cpl = (tag: number, status: ErrorCode, data?: Uint8Array) => rx.dmaReadCpl(tag, status, data);
    return {
      attached: () => notDataPlane('attached'),
      linkClosed: () => notDataPlane('link-closed'),
      mmioWrite: (bar, offset, data) => rx.mmioWrite(bar, offset, data),
      mmioRead: (tag, bar, size, offset) => rx.mmioRead(tag, bar, size, offset),
      configWrite: (offset, size, value) => rx.configWrite(offset, size, value),
      functionReset: () => rx.functionReset(),
      // The device keeps what it read: a copy of lent bytes.
      dmaReadCpl: (tag, ok, data) =>
        this.#records!.dmaReadCpl(tag, ok, this.#lent ? new Uint8Array(data) : data, cpl),
      push: (rule, iova, data) => rx.push(rule, iova, data, this.#lent),
      pushDrop: (iova, length) => rx.pushDrop(iova, length),
      pushRuleSet: (id) => rx.pushRuleSet(id),
    };
  }

  /** Queues a device -> host message (dropped once the link is gone: nobody is listening).
   *  `byRef`: its payload, handed over (the records reference it instead of copying it). */
  send(m: Msg, byRef?: Uint8Array): void {
    if (this.#closed || !this.#records) return;
    this.#records.toKernel(m, byRef);
  }

  /** The records of the hot messages, without a message in between (see send()). */
  shadow(bar: number, offset: bigint, data: Uint8Array): void {
    if (!this.#closed) this.#records?.shadow(bar, offset, data);
  }

  writesApplied(count: bigint): void {
    if (!this.#closed) this.#records?.writesApplied(count);
  }

  interrupt(vector: number): void {
    if (!this.#closed) this.#records?.interrupt(vector);
  }

  virtqDone(v: VirtqDone): void {
    if (!this.#closed) this.#records?.virtqDone(v);
  }

  /** `handOver`: the bytes are the link's from now on (see send()'s byRef). */
  dmaWrite(iova: bigint, data: Uint8Array, handOver: boolean): void {
    if (!this.#closed) this.#records?.dmaWrite(iova, data, handOver);
  }

  /** Writes what send() queued, in one system call: in the clear the records as they were encoded
   *  (a large payload handed over by reference beside them); sealed, runs of small pieces copied
   *  together and large ones (a sealed frame's bulk) as they are, in one corked writev. */
  flush(): void {
    if (this.#closed) {
      this.#out = [];
      this.#recordOut.take();
      return;
    }
    const pieces = this.#key
      ? this.#out.length
        ? gather(this.#seal(this.#out))
        : []
      : this.#recordOut.take();
    this.#out = [];
    if (pieces.length === 0) return;
    if (pieces.length === 1) this.#socket.write(pieces[0]!);
    else {
      this.#socket.cork();
      for (const b of pieces) this.#socket.write(b);
      this.#socket.uncork();
    }
    // Written through (nothing left queued in the socket): the record buffer is free again.
    if (this.#socket.writableLength === 0) this.#recordOut.release();
    if (this.#lastIn !== undefined) {
      this.stats.replies++;
      this.stats.replyUs += (performance.now() - this.#lastIn) * 1000;
      this.#lastIn = undefined;
    }
  }

  get backlogged(): boolean {
    return this.#socket.writableNeedDrain;
  }

  close(err?: Error): void {
    if (this.#closed) return;
    this.#error ??= err;
    this.#socket.destroy();
  }

  /** Frames of whole records, at most SEAL_MAX bytes each, sealed: the pieces to write in order
   *  (each record enciphered as it is; GCM is a stream, so the pieces make the same frame). */
  #seal(records: (Uint8Array | Uint8Array[])[]): Uint8Array[] {
    const size = (r: Uint8Array | Uint8Array[]) =>
      r instanceof Uint8Array ? r.length : r.reduce((a, p) => a + p.length, 0);
    const pieces: Uint8Array[] = [];
    for (let i = 0; i < records.length; ) {
      let n = 0;
      let bytes = 0;
      while (i + n < records.length && (n === 0 || bytes + size(records[i + n]!) <= SEAL_MAX)) {
        bytes += size(records[i + n]!);
        n++;
      }
      const len = Buffer.alloc(4);
      len.writeUInt32LE(bytes + SEAL_TAG);
      const c = createCipheriv('aes-256-gcm', this.#key!, sealNonce(1, this.#txSeq++));
      c.setAAD(len);
      pieces.push(len);
      for (const r of records.slice(i, i + n).flat()) pieces.push(c.update(r));
      pieces.push(c.final(), c.getAuthTag());
      i += n;
    }
    return pieces;
  }

  #onData(chunk: Buffer): void {
    if (!this.#reading()) return;
    let wholes: Buffer[];
    try {
      if (this.#sealed) wholes = this.#sealed.push(chunk);
      else {
        const whole = this.#stream.push(chunk);
        wholes = whole.length > 0 ? [whole] : [];
      }
    } catch (e) {
      this.#broken(e);
      return;
    }
    this.#onRecords(wholes, false);
  }

  /** `n` bytes were read into `buf` (reads into our buffers): in the clear they are lent (see
   *  #onRecords), sealed frames are opened into new buffers. */
  #onRead(n: number, buf: Uint8Array): void {
    if (!this.#reading()) return;
    const sealed = this.#sealed;
    let wholes: Buffer[];
    try {
      wholes = sealed ? sealed.filled(buf, n) : this.#stream.filled(buf, n);
    } catch (e) {
      this.#broken(e);
      return;
    }
    this.#onRecords(wholes, !sealed);
  }

  #reading(): boolean {
    return !this.#closed && this.#records !== undefined && this.#deliver !== undefined;
  }

  /** The kernel broke the protocol (an AbiError), or a receiver threw: the link closes. */
  #broken(e: unknown): void {
    this.close(e instanceof AbiError ? new Error(`kernel link ${this.remote}: ${e.message}`) : (e as Error));
  }

  /** Delivers `wholes` (buffers of whole records) as one batch. Unless `lent`, every buffer of
   *  records here is new (read into, put together or opened for this call) and never written
   *  again: payloads may stay views of it. `lent`: the buffers are read into again later
   *  (RecordStream's lend): the receiver is told which pushes are lent (and reclaim() before
   *  their memory is written), the rest and messages get copies. */
  #onRecords(wholes: Buffer[], lent: boolean): void {
    if (wholes.length === 0) return;
    try {
      this.#lastIn = performance.now();
      const rx = this.#receiver;
      if (rx?.direct()) {
        this.#lent = lent;
        this.#batchWholes = wholes;
        try {
          rx.batch(this.#visitBatch);
        } finally {
          this.#batchWholes = NO_RECORDS;
        }
        return;
      }
      for (const whole of wholes) for (const r of parseRecords(whole, !lent)) this.#records!.fromKernel(r);
      const msgs = this.#inbound;
      this.#inbound = [];
      this.#deliver!(msgs);
    } catch (e) {
      this.#broken(e);
    }
  }
}
