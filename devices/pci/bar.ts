// A BAR's backing bytes with dirty tracking. The host answers reads from its shadow of these bytes;
// every change is recorded here and pushed to it (ShadowUpdate) before the device's next message.
import type { DirtyRange } from '../host-port.js';
import { rd8, rd16, rd32, rd64, wr8, wr16, wr32, wr64 } from './le.js';
import type { Span } from './registers.js';

/** Dirty ranges this close together are pushed as one: a ShadowUpdate costs about 16 bytes of
 *  headers, so resending a gap that small is cheaper than a second message. */
export const DIRTY_MERGE_GAP = 16;
/** Most separate dirty ranges kept per BAR; past it the two closest merge. Bounds the work per
 *  write and the number of messages per push when a driver scatters writes. */
export const MAX_DIRTY_RANGES = 64;

export class BarStorage {
  readonly bytes: Uint8Array;
  /** Sorted, disjoint [start, end) pairs. */
  #dirty: [number, number][] = [];
  /** Volatile ranges and host-owned ranges (MSI-X): never pushed to the shadow. */
  readonly #unshadowed: readonly Span[];
  /** Called after a range became dirty (the device tells its host something changed). */
  onDirty: (() => void) | undefined;

  constructor(
    readonly index: number,
    readonly size: number,
    unshadowed: readonly Span[] = [],
  ) {
    this.bytes = new Uint8Array(size);
    this.#unshadowed = [...unshadowed].sort((a, b) => a.offset - b.offset);
  }

  u8(off: number): number {
    return rd8(this.bytes, off);
  }
  u16(off: number): number {
    return rd16(this.bytes, off);
  }
  u32(off: number): number {
    return rd32(this.bytes, off);
  }
  u64(off: number): bigint {
    return rd64(this.bytes, off);
  }

  set8(off: number, v: number): void {
    wr8(this.bytes, off, v);
    this.markDirty(off, 1);
  }
  set16(off: number, v: number): void {
    wr16(this.bytes, off, v);
    this.markDirty(off, 2);
  }
  set32(off: number, v: number): void {
    wr32(this.bytes, off, v);
    this.markDirty(off, 4);
  }
  set64(off: number, v: bigint): void {
    wr64(this.bytes, off, v);
    this.markDirty(off, 8);
  }

  /** A copy of `len` bytes at `off`. */
  read(off: number, len: number): Uint8Array {
    this.#check(off, len);
    return this.bytes.slice(off, off + len);
  }

  write(off: number, data: Uint8Array): void {
    this.#check(off, data.length);
    this.bytes.set(data, off);
    this.markDirty(off, data.length);
  }

  /** Replaces the contents, marking only the bytes that differ (reset to power-on values). */
  load(contents: Uint8Array): void {
    if (contents.length !== this.size)
      throw new RangeError(`BAR ${this.index}: load of ${contents.length} bytes`);
    let start = -1;
    for (let i = 0; i <= this.size; i++) {
      const differs = i < this.size && this.bytes[i] !== contents[i];
      if (differs && start < 0) start = i;
      else if (!differs && start >= 0) {
        this.markDirty(start, i - start);
        start = -1;
      }
    }
    this.bytes.set(contents);
  }

  /** Records [off, off + len) as changed, except bytes that are never shadowed. */
  markDirty(off: number, len: number): void {
    this.#check(off, len);
    if (len === 0) return;
    let start = off;
    const end = off + len;
    let added = false;
    for (const v of this.#unshadowed) {
      const vEnd = v.offset + v.length;
      if (vEnd <= start || v.offset >= end) continue;
      if (v.offset > start) added = this.#add(start, v.offset) || added;
      start = Math.max(start, vEnd);
    }
    if (start < end) added = this.#add(start, end) || added;
    if (added) this.onDirty?.();
  }

  get dirty(): boolean {
    return this.#dirty.length > 0;
  }

  /** The dirty ranges with copies of their current bytes, in offset order; clears them. */
  takeDirty(): DirtyRange[] {
    const out = this.#dirty.map(([a, b]) => ({ bar: this.index, offset: a, data: this.bytes.slice(a, b) }));
    this.#dirty = [];
    return out;
  }

  /** Forgets pending changes (the host's shadow was just built from these bytes). */
  clearDirty(): void {
    this.#dirty = [];
  }

  #add(a: number, b: number): true {
    const d = this.#dirty;
    // First range whose end (plus the merge gap) reaches a.
    let lo = 0;
    let hi = d.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (d[mid][1] + DIRTY_MERGE_GAP < a) lo = mid + 1;
      else hi = mid;
    }
    let i = lo;
    let start = a;
    let end = b;
    while (i < d.length && d[i][0] <= end + DIRTY_MERGE_GAP) {
      const [s0, e0] = d[i];
      // Never bridge a gap holding unshadowed bytes: the host's MSI-X table is not ours to write.
      if (e0 < start && !this.#clear(e0, start)) {
        lo = ++i;
        continue;
      }
      if (s0 > end && !this.#clear(end, s0)) break;
      start = Math.min(start, s0);
      end = Math.max(end, e0);
      i++;
    }
    d.splice(lo, i - lo, [start, end]);
    if (d.length > MAX_DIRTY_RANGES) this.#mergeClosest();
    return true;
  }

  /** No unshadowed byte in [a, b). */
  #clear(a: number, b: number): boolean {
    return !this.#unshadowed.some((u) => a < u.offset + u.length && u.offset < b);
  }

  /** Merges the two neighbours with the smallest gap that may be bridged. A soft bound: when every
   *  gap holds unshadowed bytes, the ranges stay. */
  #mergeClosest(): void {
    const d = this.#dirty;
    let best = -1;
    for (let i = 0; i < d.length - 1; i++) {
      const gap = d[i + 1][0] - d[i][1];
      if ((best < 0 || gap < d[best + 1][0] - d[best][1]) && this.#clear(d[i][1], d[i + 1][0])) best = i;
    }
    if (best >= 0) d.splice(best, 2, [d[best][0], d[best + 1][1]]);
  }

  #check(off: number, len: number): void {
    if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 0 || off + len > this.size) {
      throw new RangeError(
        `BAR ${this.index}: [0x${off.toString(16)}, +${len}) is outside its ${this.size} bytes`,
      );
    }
  }
}
