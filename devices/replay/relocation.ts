// Address relocation for replay (docs/devices.md, "Record and replay"): the IOVAs a driver gives its
// device differ from run to run (another kmalloc slot, another allocation order), so the device
// addresses the replay sends must be the live run's, not the recording's. They are learned from
// what the host sends, where the live bytes differ from the recorded ones in address words:
//
// - An address word is an aligned 64-bit word (or, outside those, an aligned 32-bit word) whose
//   *recorded* value lies in a page (4 KiB) the recorded device used: a page it read or wrote by
//   DMA, that was pushed to it, or that holds a ring of one of its push rules, anywhere in the
//   session. Random data or a length almost never does; an address the device never used is
//   compared as data.
// - Each such word teaches recorded -> live (the live word, equal or not). A later word with the
//   same recorded value replaces it: the recording reused the address for a new buffer.
// - A recorded address X (+len) translates through the learned recorded base B nearest below it,
//   X + (live(B) - B), when B, X and X+len-1 lie in one run of consecutive used pages: a ring or
//   buffer is contiguous in IOVA space, and no translation reaches across memory the recorded
//   device never touched. Anything else has no translation (the replay reports it).
import { rd32, rd64, wr32, wr64 } from '../pci/le.js';

export const PAGE_SHIFT = 12n;

const page = (a: bigint) => a >> PAGE_SHIFT;

/** Recorded addresses kept at most. The keys are values from the recording (the live driver cannot
 *  add others), so this only bounds a pathological recording. */
export const MAX_BASES = 1 << 16;

export class Relocation {
  /** Used page -> the id of its run of consecutive used pages. */
  readonly #runs = new Map<bigint, number>();
  /** Learned recorded base -> live address; #sorted holds the keys in order. */
  readonly #bases = new Map<bigint, bigint>();
  #sorted: bigint[] = [];

  /** `used`: [iova, length] of every range the recorded device used. */
  constructor(used: Iterable<readonly [bigint, number]>) {
    const pages = new Set<bigint>();
    for (const [iova, len] of used) {
      if (len <= 0) continue;
      for (let p = page(iova); p <= page(iova + BigInt(len) - 1n); p++) pages.add(p);
    }
    let run = 0;
    for (const p of [...pages].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (!pages.has(p - 1n)) run++;
      this.#runs.set(p, run);
    }
  }

  /** Pages the recorded device used. */
  get pages(): number {
    return this.#runs.size;
  }

  /** Recorded addresses learned so far. */
  get learned(): number {
    return this.#bases.size;
  }

  /** A recorded value that is an address: in a page the recorded device used. */
  addressLike(v: bigint): boolean {
    return v !== 0n && this.#runs.has(page(v));
  }

  /** Recorded `rec` is `live` in this run. */
  learn(rec: bigint, live: bigint): void {
    if (!this.#bases.has(rec)) {
      if (this.#bases.size >= MAX_BASES) return;
      this.#sorted.splice(this.#below(rec) + 1, 0, rec);
    }
    this.#bases.set(rec, live);
  }

  /** Forgets everything learned (a new attach: a new run of the driver). */
  clear(): void {
    this.#bases.clear();
    this.#sorted = [];
  }

  /** The live address of recorded [rec, +len), or undefined without a translation. */
  translate(rec: bigint, len: number): bigint | undefined {
    const i = this.#below(rec);
    if (i < 0) return undefined;
    const base = this.#sorted[i]!;
    const run = this.#runs.get(page(base));
    if (run === undefined) return undefined;
    if (this.#runs.get(page(rec)) !== run) return undefined;
    if (this.#runs.get(page(rec + BigInt(Math.max(len, 1)) - 1n)) !== run) return undefined;
    // Every page between them is in the run too: runs are consecutive pages.
    return BigInt.asUintN(64, rec + (this.#bases.get(base)! - base));
  }

  /** Index in #sorted of the greatest key <= v, or -1. */
  #below(v: bigint): number {
    let lo = 0;
    let hi = this.#sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#sorted[mid]! <= v) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  }

  /**
   * Host -> device bytes of the live run against the recorded ones, both at recorded address (or
   * BAR offset) `at`: address words teach the mapping and may differ; every other byte must be
   * equal. Returns the offset of the first byte that differs outside an address word, or of an
   * address word whose live value is 0 (a null pointer where the recording had an address); -1 when
   * they agree; with other lengths, the shorter one's.
   */
  learnFrom(at: bigint, rec: Uint8Array, live: Uint8Array): number {
    return this.#compare(at, rec, live, true);
  }

  /** learnFrom without learning: address words must hold what they translate to, where a
   *  translation is known. */
  differs(at: bigint, rec: Uint8Array, live: Uint8Array): number {
    return this.#compare(at, rec, live, false);
  }

  #compare(at: bigint, rec: Uint8Array, live: Uint8Array, learn: boolean): number {
    if (rec.length !== live.length) return Math.min(rec.length, live.length);
    const covered = this.#words(at, rec, (k, size, value) => {
      const got = size === 8 ? rd64(live, k) : BigInt(rd32(live, k));
      if (got === 0n) return false;
      if (learn) this.learn(value, got);
      else {
        const want = this.translate(value, 1);
        if (want !== undefined && (size === 8 ? want : want & 0xffffffffn) !== got) return false;
      }
      return true;
    });
    for (let k = 0; k < rec.length; k++) {
      if (covered?.[k]) continue;
      if (rec[k] !== live[k]) return k;
    }
    return -1;
  }

  /** A copy of recorded device -> host bytes at recorded `at` with their address words translated
   *  (those with a translation); `data` itself when nothing changes. */
  translateData(at: bigint, data: Uint8Array): Uint8Array {
    let out: Uint8Array | undefined;
    this.#words(at, data, (k, size, value) => {
      const live = this.translate(value, 1);
      if (live === undefined || live === value) return true;
      out ??= data.slice();
      if (size === 8) wr64(out, k, live);
      else wr32(out, k, Number(live & 0xffffffffn));
      return true;
    });
    return out ?? data;
  }

  /** Calls `f` for each address word of recorded `data` at `at`: aligned 64-bit words first, then
   *  aligned 32-bit words outside them. Returns which bytes were taken (f returned true), or
   *  undefined when none were. */
  #words(
    at: bigint,
    data: Uint8Array,
    f: (offset: number, size: 4 | 8, value: bigint) => boolean,
  ): Uint8Array | undefined {
    if (this.#runs.size === 0 || data.length < 4) return undefined;
    let taken: Uint8Array | undefined;
    for (const size of [8, 4] as const) {
      const mis = Number(BigInt.asUintN(3, at) % BigInt(size));
      for (let k = mis === 0 ? 0 : size - mis; k + size <= data.length; k += size) {
        if (taken?.[k] || (size === 4 && taken?.[k + 3])) continue;
        const value = size === 8 ? rd64(data, k) : BigInt(rd32(data, k));
        if (!this.addressLike(value) || !f(k, size, value)) continue;
        taken ??= new Uint8Array(data.length);
        taken.fill(1, k, k + size);
      }
    }
    return taken;
  }
}
