// DMA reads of one device: split into MAX_DMA_CHUNK requests, each under a tag, with a bounded number
// of tags outstanding (the PCIe analogue: a requester's limited tag space). Requests beyond the
// bound wait in order. The runtime feeds completions back in; anything inconsistent is the host
// breaking the protocol.
import { DmaError, type DmaFault } from '../devices/host-port.js';
import { ErrorCode, MAX_DMA_CHUNK, ProtocolError } from '../proto/wire.js';

/** A refused DmaReadCpl's status as the model sees it: the host shutting down abandons the read,
 *  anything else (DMA_FAULT from its IOMMU, mostly) is a refusal. */
export function dmaFault(status: ErrorCode): DmaFault {
  return status === ErrorCode.SHUTDOWN ? 'shutdown' : 'refused';
}

/** Default outstanding DmaRead tags per device: enough to keep a 256 KiB-chunked 16 MiB read in
 *  flight on a fast link, few enough that one device cannot flood the host's IOMMU path. */
export const DEFAULT_DMA_TAGS = 64;

interface Request {
  iova: bigint;
  len: number;
  /** Where the chunks are put together: the model's own buffer when it gave one, else a new one;
   *  none for a request of one chunk without it, which resolves with the completion's bytes
   *  themselves (fresh from the wire, never reused). */
  buf: Uint8Array | undefined;
  /** Chunks not yet completed. */
  remaining: number;
  failed: boolean;
  resolve(data: Uint8Array): void;
  reject(err: Error): void;
}

interface Chunk {
  req: Request;
  /** Offset in the request. */
  offset: number;
  len: number;
  /** place() gave its place in the request's buffer (once only). */
  placed?: boolean;
}

/** Sends one DmaRead; the runtime pushes the device's shadow first. */
export type SendDmaRead = (tag: number, iova: bigint, len: number) => void;

export class DmaReader {
  readonly #send: SendDmaRead;
  readonly #maxTags: number;
  readonly #outstanding = new Map<number, Chunk>();
  #queue: Chunk[] = [];
  #nextTag = 0;
  #closed = false;

  constructor(
    send: SendDmaRead,
    maxTags = DEFAULT_DMA_TAGS,
    readonly chunk = MAX_DMA_CHUNK,
  ) {
    if (!Number.isInteger(maxTags) || maxTags < 1)
      throw new RangeError(`DMA tags must be >= 1, got ${maxTags}`);
    this.#send = send;
    this.#maxTags = maxTags;
  }

  get outstanding(): number {
    return this.#outstanding.size;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /** HostPort.dmaRead: `into`, when given, gets the bytes (and place() reads into it). */
  read(iova: bigint, len: number, into?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isSafeInteger(len) || len < 0) return Promise.reject(new RangeError(`dmaRead length ${len}`));
    if (into && into.length < len)
      return Promise.reject(new RangeError(`dmaRead of ${len} bytes into a buffer of ${into.length}`));
    if (this.#closed) return Promise.reject(new DmaError(iova, len, 'shutdown'));
    if (len === 0) return Promise.resolve(new Uint8Array(0));
    return new Promise((resolve, reject) => {
      const chunks = Math.ceil(len / this.chunk);
      const req: Request = {
        iova,
        len,
        // Every byte is overwritten before it resolves: no zero fill. A plain Uint8Array, as
        // models get everywhere (a Buffer's slice() would be a view, not the copy they expect).
        buf: into
          ? into.subarray(0, len)
          : chunks > 1
            ? new Uint8Array(Buffer.allocUnsafeSlow(len).buffer, 0, len)
            : undefined,
        remaining: chunks,
        failed: false,
        resolve,
        reject,
      };
      for (let off = 0; off < len; off += this.chunk) {
        this.#queue.push({ req, offset: off, len: Math.min(this.chunk, len - off) });
      }
      this.#issue();
    });
  }

  /** The host memory outstanding read `tag` asked for, if it is outstanding. */
  rangeOf(tag: number): { iova: bigint; len: number } | undefined {
    const c = this.#outstanding.get(tag);
    return c && { iova: c.req.iova + BigInt(c.offset), len: c.len };
  }

  /**
   * Where the data of outstanding read `tag` may be read (by the transport, before its completion
   * is delivered): the chunk's own place in its request's buffer, when the request has one (the
   * model gave it, or it has more than one chunk) and `len` is the chunk's length. Once per tag: a second frame for the
   * same tag (a peer's mistake) is decoded as any other, and refused at its delivery, never read
   * over the first. The buffer is the model's only when every chunk is complete.
   */
  place(tag: number, len: number): Uint8Array | undefined {
    const c = this.#outstanding.get(tag);
    if (!c || c.placed || c.len !== len || !c.req.buf || c.req.failed) return undefined;
    c.placed = true;
    return c.req.buf.subarray(c.offset, c.offset + len);
  }

  /** A DmaReadCpl. Throws ProtocolError for a tag that is not outstanding or a wrong length. */
  complete(tag: number, status: ErrorCode, data: Uint8Array): void {
    const c = this.#outstanding.get(tag);
    if (!c) throw new ProtocolError(ErrorCode.BAD_TAG, `DmaReadCpl for tag ${tag}, which is not outstanding`);
    if (status === ErrorCode.OK && data.length !== c.len) {
      throw new ProtocolError(
        ErrorCode.BAD_LENGTH,
        `DmaReadCpl tag ${tag}: ${data.length} bytes for a ${c.len}-byte read`,
      );
    }
    this.#outstanding.delete(tag);
    const r = c.req;
    if (!r.failed) {
      if (status === ErrorCode.OK) {
        if (!r.buf) r.resolve(new Uint8Array(data.buffer, data.byteOffset, data.length));
        else {
          // Data that place() put where it belongs is there already.
          if (data.buffer !== r.buf.buffer || data.byteOffset !== r.buf.byteOffset + c.offset)
            r.buf.set(data, c.offset);
          if (--r.remaining === 0) r.resolve(r.buf);
        }
      } else {
        // The first refused chunk fails the request; its chunks not yet sent are not sent.
        r.failed = true;
        this.#queue = this.#queue.filter((q) => q.req !== r);
        r.reject(new DmaError(r.iova + BigInt(c.offset), c.len, dmaFault(status)));
      }
    }
    this.#issue();
  }

  /** FunctionReset: requests not yet sent are abandoned (a reset device issues no new reads).
   *  Outstanding tags stay until their completions arrive. */
  dropWaiting(): void {
    const reqs = new Set(this.#queue.map((c) => c.req));
    this.#queue = [];
    for (const r of reqs) this.#fail(r);
  }

  /** Detach or session loss: everything fails; late completions are the caller's to ignore. */
  close(): void {
    this.#closed = true;
    const reqs = new Set([...this.#queue, ...this.#outstanding.values()].map((c) => c.req));
    this.#queue = [];
    this.#outstanding.clear();
    for (const r of reqs) this.#fail(r);
  }

  #fail(r: Request): void {
    if (r.failed) return;
    r.failed = true;
    r.reject(new DmaError(r.iova, r.len, 'shutdown'));
  }

  #issue(): void {
    while (!this.#closed && this.#queue.length > 0 && this.#outstanding.size < this.#maxTags) {
      const c = this.#queue.shift()!;
      const tag = this.#allocTag();
      this.#outstanding.set(tag, c);
      this.#send(tag, c.req.iova + BigInt(c.offset), c.len);
    }
  }

  /** Tags roll through the 32-bit space so a stale completion is caught as BAD_TAG rather than
   *  taken for a newer request. */
  #allocTag(): number {
    let t = this.#nextTag;
    while (this.#outstanding.has(t)) t = (t + 1) >>> 0;
    this.#nextTag = (t + 1) >>> 0;
    return t;
  }
}
