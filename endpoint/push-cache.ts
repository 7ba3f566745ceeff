// PushCache: the host memory a host pushed to one device (docs/PUSH.md), kept until the device reads
// it. A read is served only when pushed bytes cover all of it, and each byte is served once: a
// second read of the same memory goes to the host and sees what is there now. Bytes are forgotten
// when the mapping they came from is unmapped (PushDrop), when the device writes over them, when the
// rule that pushed them changes, and oldest first when the cache is full.
//
// A doorbell's pushes become readable together, when its MMIO write arrives (commit): the host
// sends them in front of that write, and a device that read while only some had arrived could pair
// a virtqueue's new driver area with a descriptor table left from an older doorbell — and send
// frames to buffers long returned. Until then they are staged; drops apply to staged bytes too.

/** Bytes kept per device. A QD32 burst of 128 KiB writes is 4 MiB; more than that waits in the
 *  device's own queue limits anyway. Reads of evicted bytes fall back to DMA. */
export const PUSH_CACHE_BYTES = 8 << 20;

interface Seg {
  start: bigint;
  end: bigint;
  data: Uint8Array;
  rule: number;
  /** Insertion order, for eviction (set when a staged push is committed). */
  seq: number;
  /** `data` is only lent (see stage()). */
  lent: boolean;
}

/** How stage() keeps pushed bytes: a copy; `data` itself, whose buffer nobody writes again
 *  ('own': kept if it is most of that buffer, else copied, so little keeps much alive); or `data`
 *  lent until settle() ('lend': its buffer is written again after that). */
export type PushKeep = 'copy' | 'own' | 'lend';

export class PushCache {
  readonly #max: number;
  /** Sorted by start, never overlapping. */
  #segs: Seg[] = [];
  #bytes = 0;
  #seq = 0;
  /** Pushes waiting for their doorbell's write, in arrival order. */
  #staged: Seg[] = [];
  #stagedBytes = 0;
  /** Some bytes, staged or not, are only lent (settle() copies them). */
  #lent = false;
  evicted = 0;

  constructor(maxBytes = PUSH_CACHE_BYTES) {
    this.#max = maxBytes;
  }

  get bytes(): number {
    return this.#bytes;
  }

  get segments(): number {
    return this.#segs.length;
  }

  /** Pushed bytes at `iova`, readable at once (a doorbell of its own). */
  add(iova: bigint, data: Uint8Array, rule: number): void {
    this.stage(iova, data, rule);
    this.commit();
  }

  /** Pushed bytes at `iova`, readable from the next commit, kept as `keep` says (PushKeep). A
   *  batch past the cache's size is committed as it goes (the oldest bytes go). */
  stage(iova: bigint, data: Uint8Array, rule: number, keep: PushKeep = 'copy'): void {
    if (data.length === 0) return;
    if (this.#stagedBytes + data.length > this.#max) this.commit();
    const lent = keep === 'lend';
    const as = lent || (keep === 'own' && data.length * 2 >= data.buffer.byteLength);
    const kept = as ? data : data.slice();
    this.#staged.push({ start: iova, end: iova + BigInt(kept.length), data: kept, rule, seq: 0, lent });
    this.#stagedBytes += data.length;
    if (lent) this.#lent = true;
  }

  /** Lent bytes still kept (not read yet) in `buffer` (or anywhere) become copies: the lender is
   *  about to write there again. */
  settle(buffer?: ArrayBufferLike): void {
    if (!this.#lent) return;
    let left = false;
    for (const p of this.#staged) {
      if (!p.lent) continue;
      if (buffer && p.data.buffer !== buffer) left = true;
      else {
        p.data = p.data.slice();
        p.lent = false;
      }
    }
    for (const s of this.#segs) {
      if (!s.lent) continue;
      if (buffer && s.data.buffer !== buffer) left = true;
      else {
        s.data = s.data.slice();
        s.lent = false;
      }
    }
    this.#lent = left;
  }

  /** The doorbell's write came: its staged pushes become readable, newer bytes replacing older
   *  ones where they overlap. One batch, evicted together. */
  commit(): void {
    if (this.#staged.length === 0) return;
    const seq = this.#seq++;
    for (const p of this.#staged) {
      this.#cut(p.start, p.end);
      p.seq = seq;
      // Usually the cache is empty, or the new bytes lie past the rest: appended, no splice.
      const i = this.#firstEndingAfter(p.start);
      if (i === this.#segs.length) this.#segs.push(p);
      else this.#segs.splice(i, 0, p);
      this.#bytes += p.data.length;
    }
    // Popped, not replaced: the array keeps its room for the next doorbell's pushes.
    while (this.#staged.length > 0) this.#staged.pop();
    this.#stagedBytes = 0;
    while (this.#bytes > this.#max) this.#evictOldest();
  }

  /** Bytes staged, waiting for their doorbell's write. */
  get staged(): number {
    return this.#stagedBytes;
  }

  /** The `len` bytes at `iova` if pushed bytes cover every one of them, which are then forgotten;
   *  otherwise undefined and nothing changes. Bytes of several pushes, or lent ones, are copied
   *  into `into` (at least `len` bytes) when given, else into a new buffer: what take() answers
   *  is the caller's to keep. */
  take(iova: bigint, len: number, into?: Uint8Array): Uint8Array | undefined {
    if (len <= 0 || this.#segs.length === 0) return undefined;
    const end = iova + BigInt(len);
    let i = this.#firstEndingAfter(iova);
    const first = this.#segs[i];
    if (!first || first.start > iova) return undefined;
    // Fast path: one segment holds it all (the usual case: an SQE run, one data buffer).
    if (first.end >= end) {
      const from = Number(iova - first.start);
      let out = from === 0 && len === first.data.length ? first.data : first.data.subarray(from, from + len);
      if (first.lent) {
        if (into) {
          into.set(out);
          out = into.length === len ? into : into.subarray(0, len);
        } else out = out.slice();
      }
      this.#cut(iova, end);
      return out;
    }
    let at = first.end;
    for (i++; at < end; i++) {
      const s = this.#segs[i];
      if (!s || s.start !== at) return undefined;
      at = s.end;
    }
    const out = into ? into.subarray(0, len) : new Uint8Array(len);
    for (let j = this.#firstEndingAfter(iova), got = 0; got < len; j++) {
      const s = this.#segs[j]!;
      const from = s.start < iova ? Number(iova - s.start) : 0;
      const n = Math.min(s.data.length - from, len - got);
      out.set(s.data.subarray(from, from + n), got);
      got += n;
    }
    this.#cut(iova, end);
    return out;
  }

  /** Forgets pushed bytes in [iova, iova + len), staged ones included. */
  drop(iova: bigint, len: bigint | number): void {
    // Every DMA write of the device asks: usually nothing is kept.
    if (this.#segs.length === 0 && this.#staged.length === 0) return;
    const end = iova + BigInt(len);
    this.#cut(iova, end);
    if (this.#staged.length === 0) return;
    const kept: Seg[] = [];
    for (const p of this.#staged) {
      if (p.end <= iova || p.start >= end) {
        kept.push(p);
        continue;
      }
      if (p.start < iova) kept.push({ ...p, end: iova, data: p.data.subarray(0, Number(iova - p.start)) });
      if (p.end > end) kept.push({ ...p, start: end, data: p.data.subarray(Number(end - p.start)) });
    }
    this.#staged = kept;
    this.#stagedBytes = kept.reduce((n, p) => n + p.data.length, 0);
  }

  /** Forgets everything rule `rule` pushed, staged or not. */
  dropRule(rule: number): void {
    const keep = this.#segs.filter((s) => s.rule !== rule);
    for (const s of this.#segs) if (s.rule === rule) this.#bytes -= s.data.length;
    this.#segs = keep;
    this.#staged = this.#staged.filter((p) => p.rule !== rule);
    this.#stagedBytes = this.#staged.reduce((n, p) => n + p.data.length, 0);
  }

  clear(): void {
    this.#segs = [];
    this.#bytes = 0;
    this.#staged = [];
    this.#stagedBytes = 0;
  }

  /** Index of the first segment whose end is past `at`. */
  #firstEndingAfter(at: bigint): number {
    let lo = 0;
    let hi = this.#segs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#segs[mid]!.end <= at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Removes [start, end) from every segment, splitting where needed. */
  #cut(start: bigint, end: bigint): void {
    let i = this.#firstEndingAfter(start);
    while (i < this.#segs.length) {
      const s = this.#segs[i]!;
      if (s.start >= end) break;
      if (s.start >= start && s.end <= end) {
        // All of it goes (a read that takes what one push brought, the usual case).
        this.#bytes -= s.data.length;
        if (i === this.#segs.length - 1) this.#segs.pop();
        else this.#segs.splice(i, 1);
        continue;
      }
      const pieces: Seg[] = [];
      if (s.start < start)
        pieces.push({ ...s, end: start, data: s.data.subarray(0, Number(start - s.start)) });
      if (s.end > end) pieces.push({ ...s, start: end, data: s.data.subarray(Number(end - s.start)) });
      const kept = pieces.reduce((n, p) => n + p.data.length, 0);
      this.#bytes -= s.data.length - kept;
      this.#segs.splice(i, 1, ...pieces);
      i += pieces.length;
    }
  }

  /** Forgets the oldest batch whole: half a doorbell's pushes could pair new bytes with old. */
  #evictOldest(): void {
    let oldest = this.#segs[0]!.seq;
    for (const s of this.#segs) if (s.seq < oldest) oldest = s.seq;
    const keep: Seg[] = [];
    for (const s of this.#segs) {
      if (s.seq === oldest) {
        this.#bytes -= s.data.length;
        this.evicted++;
      } else keep.push(s);
    }
    this.#segs = keep;
  }
}
