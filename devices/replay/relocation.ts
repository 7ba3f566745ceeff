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
//   same recorded value replaces it: the recording reused the address for a new buffer. The same
//   recorded value with two live ones in one snapshot of memory (a descriptor table whose stale
//   entry names, in the recording, the buffer a new entry names) says nothing about which is
//   meant: that address is ambiguous, and has no translation until a snapshot teaches it alone.
// - A recorded address X (+len) translates through the learned recorded base B nearest below it,
//   X + (live(B) - B), when B, X and X+len-1 lie in one run of consecutive used pages: a ring or
//   buffer is contiguous in IOVA space, and no translation reaches across memory the recorded
//   device never touched. Anything else has no translation (the replay reports it).
// - What the device sends is replayed as recorded, but for registers that echo an address the host
//   gave (a queue base read back): a word of a shadow update or a read completion whose recorded
//   value is exactly a learned address becomes its live one. Nothing else is an address there: a
//   checksum or a disk's data may hold any value, and rewriting one would hand the driver bytes the
//   device never gave (translateData; DMA writes' data is not translated at all).
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
  /** Learned bases whose last snapshot gave two live values: [one, the other]. */
  readonly #ambiguous = new Map<bigint, [bigint, bigint]>();

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
    this.#ambiguous.delete(rec);
  }

  /** Recorded `rec` was both `one` and `other` in one snapshot: no translation through it. */
  #confuse(rec: bigint, one: bigint, other: bigint): void {
    this.learn(rec, one);
    if (this.#bases.has(rec)) this.#ambiguous.set(rec, [one, other]);
  }

  /** Forgets everything learned (a new attach: a new run of the driver). */
  clear(): void {
    this.#bases.clear();
    this.#sorted = [];
    this.#ambiguous.clear();
  }

  /** Why recorded `rec` has no translation, when it is that the base it would go through is
   *  ambiguous. */
  ambiguity(rec: bigint): string | undefined {
    const i = this.#below(rec);
    const base = i < 0 ? undefined : this.#sorted[i]!;
    const two = base === undefined ? undefined : this.#ambiguous.get(base);
    if (!two) return undefined;
    return `two: the live driver gave recorded 0x${base!.toString(16)} as 0x${two[0].toString(16)} and as 0x${two[1].toString(16)} at once`;
  }

  /** The live address of recorded [rec, +len), or undefined without a translation. */
  translate(rec: bigint, len: number): bigint | undefined {
    const i = this.#below(rec);
    if (i < 0) return undefined;
    const base = this.#sorted[i]!;
    if (this.#ambiguous.has(base)) return undefined;
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
    /** What this snapshot says each recorded address is, learned once it has all been seen. */
    const said = new Map<bigint, bigint>();
    const twice = new Map<bigint, bigint>();
    const covered = this.#words(at, rec, (k, size, value) => {
      const got = size === 8 ? rd64(live, k) : BigInt(rd32(live, k));
      if (got === 0n) return false;
      if (learn) {
        const before = said.get(value);
        if (before === undefined) said.set(value, got);
        else if (before !== got) twice.set(value, got);
      } else {
        const want = this.translate(value, 1);
        if (want !== undefined && (size === 8 ? want : want & 0xffffffffn) !== got) return false;
      }
      return true;
    });
    for (const [value, got] of said) {
      const other = twice.get(value);
      if (other === undefined) this.learn(value, got);
      else this.#confuse(value, got, other);
    }
    for (let k = 0; k < rec.length; k++) {
      if (covered?.[k]) continue;
      if (rec[k] !== live[k]) return k;
    }
    return -1;
  }

  /** A copy of recorded device -> host register bytes at recorded BAR offset `at` with each word
   *  that echoes a learned address (exactly) made the live one; `data` itself when nothing
   *  changes. An ambiguous echo stays as recorded: see ambiguousEcho. */
  translateData(at: bigint, data: Uint8Array): Uint8Array {
    let out: Uint8Array | undefined;
    this.#words(at, data, (k, size, value) => {
      const live = this.#bases.get(value);
      if (live === undefined || this.#ambiguous.has(value)) return false;
      if (live !== value) {
        out ??= data.slice();
        if (size === 8) wr64(out, k, live);
        else wr32(out, k, Number(live & 0xffffffffn));
      }
      return true;
    });
    return out ?? data;
  }

  /** The first word of register bytes at `at` that echoes an ambiguous address, if any: its live
   *  value is not known, so the bytes cannot be given. */
  ambiguousEcho(at: bigint, data: Uint8Array): bigint | undefined {
    let found: bigint | undefined;
    this.#words(at, data, (_k, _size, value) => {
      if (found === undefined && this.#ambiguous.has(value)) found = value;
      return false;
    });
    return found;
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
