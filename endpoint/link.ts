// A kernel link on the endpoint's side: the TCP connection pcinet.ko opened for one device
// (W_CONNECT, docs/KERNEL-ABI.md). It carries the kernel's own records both ways, so the host's
// data plane never passes through its host-agent. Inbound records become the messages the runtime
// handles; the runtime's messages for the device become records (proto/kernel-link.ts). The
// runtime uses it in place of the session for everything the device says.
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { AbiError, LINK_MAGIC, parseRecords } from '../proto/kernel-abi.js';
import { RecordStream, RecordTranslator } from '../proto/kernel-link.js';
import type { Msg } from '../proto/wire.js';

/** Events: 'drain' () the socket took what was waiting; 'close' (err?: Error) the link is gone. */
export class KernelLink extends EventEmitter {
  readonly remote: string;
  readonly #socket: net.Socket;
  readonly #stream = new RecordStream();
  #records: RecordTranslator | undefined;
  #out: Buffer[] = [];
  #inbound: Msg[] = [];
  #deliver: ((msgs: Msg[]) => void) | undefined;
  #closed = false;
  #error: Error | undefined;
  /** When the last inbound records arrived, until something goes out (hrtime, ns). */
  #lastIn: bigint | undefined;
  /** Replies: writes that followed inbound records, and the time from those records to the write,
   *  in µs (what the endpoint and its backend spend per request; the rest of an I/O's time is the
   *  host and the network). */
  readonly stats = { replies: 0, replyUs: 0 };

  /** `socket` is paused, its hello read; nothing is read until start(). */
  constructor(socket: net.Socket) {
    super();
    this.#socket = socket;
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
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

  /** Tells pcinet.ko the link is accepted (the hello's magic back) for device `dev`. */
  accept(dev: number): void {
    this.#records = new RecordTranslator({
      dev,
      sink: (m) => this.#inbound.push(m),
      write: (r) => this.#out.push(r),
    });
    this.#socket.write(LINK_MAGIC);
  }

  /** Starts reading: every chunk's whole records go to `deliver` as one batch. An error thrown
   *  by `deliver` (the kernel broke the protocol) closes the link with it. */
  start(deliver: (msgs: Msg[]) => void): void {
    this.#deliver = deliver;
    this.#socket.resume();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Queues a device -> host message (dropped once the link is gone: nobody is listening). */
  send(m: Msg): void {
    if (this.#closed || !this.#records) return;
    this.#records.toKernel(m);
  }

  /** Writes what send() queued, in one system call. */
  flush(): void {
    if (this.#out.length === 0 || this.#closed) {
      this.#out = [];
      return;
    }
    const out = this.#out.length === 1 ? this.#out[0]! : Buffer.concat(this.#out);
    this.#out = [];
    this.#socket.write(out);
    if (this.#lastIn !== undefined) {
      this.stats.replies++;
      this.stats.replyUs += Number(process.hrtime.bigint() - this.#lastIn) / 1000;
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

  #onData(chunk: Buffer): void {
    if (this.#closed || !this.#records || !this.#deliver) return;
    try {
      const whole = this.#stream.push(chunk);
      if (whole.length === 0) return;
      this.#lastIn = process.hrtime.bigint();
      for (const r of parseRecords(whole)) this.#records.fromKernel(r);
      const msgs = this.#inbound;
      this.#inbound = [];
      this.#deliver(msgs);
    } catch (e) {
      this.close(
        e instanceof AbiError ? new Error(`kernel link ${this.remote}: ${e.message}`) : (e as Error),
      );
    }
  }
}
