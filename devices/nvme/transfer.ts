// Where an NVMe command's data lies in host memory and how it gets there and back: the command's
// PRPs (NVMe 1.4 §4.3, walked by prp.ts) as segments, read now when the host pushed what they need
// with the doorbell, else read and waited for; data written to the segments; a transfer buffer of
// the controller's own, reused, so large I/O allocates nothing.
import { DmaError, type HostPort } from '../host-port.js';
import { rd32, rd64 } from '../pci/index.js';
import { Abandoned } from './command.js';
import { type ListRead, PrpError, prpsNow, prpWalk, type Seg } from './prp.js';
import { IO, PAGE } from './spec.js';

/** Largest transfer: 2^MDTS pages. */
export const MDTS = 6;
export const MAX_TRANSFER = PAGE << MDTS;
/** Writes up to this size get their data pushed with the doorbell. Larger ones are bound by the
 *  bytes, not by the one round trip of their data read; it also keeps a QD32 burst of pushes within
 *  the endpoint's push cache (endpoint/push-cache.ts). */
export const PUSH_WRITE_MAX = 128 << 10;

export class Transfer {
  /** Where the data of a read or write done at once is (read from storage, or its pushed pieces
   *  put together): the controller's own, reused, so large I/O allocates nothing. Nothing holds it
   *  past the call that filled it: the port copies what is written from it, and data that must
   *  wait for something is copied out first. */
  #xfer: Uint8Array | undefined;
  /** The last scratch(len) handed out. */
  #xferView: Uint8Array | undefined;
  readonly #port: () => HostPort;
  readonly #current: (epoch: number) => boolean;

  /** `host`: the controller's host now; `current(epoch)`: no reset since `epoch`. */
  constructor(host: () => HostPort, current: (epoch: number) => boolean) {
    this.#port = host;
    this.#current = current;
  }

  get #host(): HostPort {
    return this.#port();
  }

  /** The transfer buffer, `len` bytes of it. */
  scratch(len: number): Uint8Array {
    this.#xfer ??= new Uint8Array(MAX_TRANSFER);
    // The last view is kept: I/O comes in runs of one size, and a view is a runtime call.
    if (this.#xferView?.length !== len) this.#xferView = this.#xfer.subarray(0, len);
    return this.#xferView;
  }

  inScratch(data: Uint8Array): boolean {
    return data.buffer === this.#xfer?.buffer;
  }

  /** The segments of command `sqe`'s `len` bytes of data (its PRP1 and PRP2). Within PRP1's page
   *  (every 4 KiB I/O of a page-aligned buffer) PRP2 is not used, nor read. */
  dataPrps(sqe: Uint8Array, len: number): Seg[] | Promise<Seg[]> {
    if ((rd32(sqe, 24) & (PAGE - 1)) + len <= PAGE) return [{ iova: rd64(sqe, 24), len }];
    return this.#prps(rd64(sqe, 24), rd64(sqe, 32), len);
  }

  /** The host memory segments of a PRP1/PRP2 transfer of `len` bytes (prp.ts): now, when the PRP
   *  list pages it needs are at hand (pushed with the doorbell), else a promise. */
  #prps(prp1: bigint, prp2: bigint, len: number): Seg[] | Promise<Seg[]> {
    const now = prpsNow(prp1, prp2, len);
    if (now) return now;
    const walk = prpWalk(prp1, prp2, len);
    let step = walk.next();
    while (!step.done) {
      const list = this.#host.dmaReadNow?.(step.value.iova, step.value.len);
      if (!list) return this.#prpsWait(walk, step.value);
      step = walk.next(list);
    }
    return step.value;
  }

  async #prpsWait(walk: Generator<ListRead, Seg[], Uint8Array>, read: ListRead): Promise<Seg[]> {
    let step = walk.next(await this.#host.dmaRead(read.iova, read.len));
    while (!step.done) step = walk.next(await this.#host.dmaRead(step.value.iova, step.value.len));
    return step.value;
  }

  /**
   * Reads, and drops, what the host pushed for a failed read or write (its PRP list pages, and a
   * write's data up to what is pushed): pushed bytes no read takes would stay in the cache, and a
   * later command whose list lands at the same address (a pool page, never unmapped) could be
   * served them when its own push is skipped (docs/PUSH.md). Before the completion: the driver may
   * reuse that memory once it has it. What cannot be walked was not pushed either.
   */
  async consumePushed(sqe: Uint8Array, lbaSize: number): Promise<void> {
    const len = ((rd32(sqe, 48) & 0xffff) + 1) * lbaSize;
    try {
      const segs = await this.dataPrps(sqe, len);
      if (sqe[0] === IO.WRITE && len <= PUSH_WRITE_MAX)
        await Promise.all(segs.map((seg) => this.#host.dmaRead(seg.iova, seg.len)));
    } catch (e) {
      if (!(e instanceof PrpError || e instanceof DmaError)) throw e;
    }
  }

  /** Writes `data` (the command's own buffer: a backend read's result) to the command's PRPs,
   *  unless the controller was reset meanwhile: now if its PRPs are at hand, else a promise. */
  toHost(sqe: Uint8Array, data: Uint8Array, epoch: number): undefined | Promise<void> {
    const segs = this.dataPrps(sqe, data.length);
    if (segs instanceof Promise) return segs.then((s) => this.place(s, data, epoch, true));
    this.place(segs, data, epoch, true);
    return undefined;
  }

  /** `data` to the segments; `handOver`: the port may keep it (HostPort.dmaWrite). */
  place(segs: Seg[], data: Uint8Array, epoch: number, handOver: boolean): void {
    if (!this.#current(epoch)) throw new Abandoned();
    if (segs.length === 1) {
      this.#host.dmaWrite(segs[0]!.iova, data, handOver);
      return;
    }
    let at = 0;
    for (const s of segs) {
      this.#host.dmaWrite(s.iova, data.subarray(at, at + s.len), handOver);
      at += s.len;
    }
  }

  /** The command's `len` bytes from host memory, in a buffer of their own (kept across awaits). */
  async fromHost(sqe: Uint8Array, len: number): Promise<Uint8Array> {
    const segs = await this.dataPrps(sqe, len);
    const data = this.gather(segs, len);
    if (data instanceof Promise) return data;
    return this.inScratch(data) ? data.slice() : data;
  }

  /** The segments' bytes in one buffer: now, in the transfer buffer or a view of what the host
   *  pushed, when they are all at hand; else a promise of a buffer of their own. */
  gather(segs: Seg[], len: number): Uint8Array | Promise<Uint8Array> {
    const scratch = this.scratch(len);
    if (segs.length === 1) {
      const s = segs[0]!;
      return this.#host.dmaReadNow?.(s.iova, s.len, scratch) ?? this.#host.dmaRead(s.iova, s.len);
    }
    // Each segment into its place in the transfer buffer; once one must be read (and waited for),
    // the bytes leave the transfer buffer for one of their own (another command may use it
    // meanwhile), and the rest go there.
    let waits: Promise<void>[] | undefined;
    let out = scratch;
    let at = 0;
    for (const s of segs) {
      const place = at;
      const region = out.subarray(place, place + s.len);
      const now = this.#host.dmaReadNow?.(s.iova, s.len, region);
      if (now) {
        if (now.buffer !== region.buffer || now.byteOffset !== region.byteOffset) out.set(now, place);
      } else {
        if (!waits) {
          waits = [];
          out = scratch.slice();
        }
        const into = out.subarray(place, place + s.len);
        waits.push(
          this.#host.dmaRead(s.iova, s.len, into).then((b) => {
            if (b.buffer !== into.buffer || b.byteOffset !== into.byteOffset) into.set(b);
          }),
        );
      }
      at += s.len;
    }
    if (!waits) return out;
    return Promise.all(waits).then(() => out);
  }
}
