// Push rules on the sim channel: the software twin of kernel/push.c, implementing docs/PUSH.md
// byte for byte. A rule names a doorbell; when the driver writes it, the host copies what the
// device is about to read (NVMe SQ entries and write data, a virtqueue's rings, descriptors and
// readable buffers) so the bytes travel with the doorbell instead of costing the device a DMA
// round trip each.
//
// This module is pure: it keeps the rules and their `last` positions and turns a doorbell write
// into a list of pushes; reading host memory is the caller's `peek` (the IOMMU's device-readable
// check), sending is the caller's too (host-agent/sim/function.ts). Every value it reads from the
// rings or a rule may be hostile: nothing here throws on them, and every loop is bounded.
//
// kernel/push-walk.c walks the same way and must push the same bytes, including where a doorbell
// runs out of work allowance (PUSH_MAX_STEPS): each read the kernel makes through its peek (an
// SQE, a PRP entry, a descriptor, an avail slot) and each range it offers costs one step here
// too, at the same point. The walk here reads those bytes from the copies it pushed instead of
// peeking again: nothing runs in between, so they are what memory holds.
import { QuietSq, type SqHost } from '../../devices/nvme/sq-round.js';
import { rd16, rd32, rd64 } from '../../devices/pci/le.js';
import {
  MAX_PUSH_RULES,
  type NvmeSqRule,
  PUSH_MAX_BYTES,
  PUSH_PAGE,
  type PushRule,
  type VirtqRule,
} from '../../devices/push.js';
import { MAX_DATA } from '../../proto/kernel-abi.js';

/** Most bytes one Push carries: R_PUSH's data limit (PCINET_MAX_DATA), so a larger range becomes
 *  several pushes of consecutive IOVAs exactly as the kernel's records do (docs/PUSH.md "Bounds"). */
export const PUSH_RECORD_BYTES = MAX_DATA;

/** NVMe Base Specification 2.0, §4.2: a submission queue entry is 64 bytes. */
const SQE_SIZE = 64;
/** NVM Command Set Specification 1.0, §3.2.6: Write. */
const NVME_CMD_WRITE = 0x01;
const NVME_CMD_READ = 0x02;
/** virtio 1.2 §2.7.5: a split-queue descriptor and its flags. */
const DESC_SIZE = 16;
const VIRTQ_DESC_F_NEXT = 1;
const VIRTQ_DESC_F_WRITE = 2;
const VIRTQ_DESC_F_INDIRECT = 4;
const PAGE = BigInt(PUSH_PAGE);

/** Units of work one doorbell write may cost, all rules together (PCINET_PUSH_MAX_STEPS in
 *  kernel/push-walk.h). Drivers that follow the specifications need well under half: a table
 *  whose chains are walked fits the byte budget, so it has at most 16384 descriptors. A hostile
 *  ring (chains sharing descriptors) would otherwise cost entries x entries steps per doorbell. */
export const PUSH_MAX_STEPS = 1 << 17;
/** Most bytes of one part of a doorbell rung for a quiet SQ (PCINET_PUSH_PART_BYTES): smaller than a
 *  doorbell's budget, so the device starts on the first part while the others travel. */
export const PUSH_PART_BYTES = 256 << 10;

/** Copies `len` bytes at `iova` if every one of them is in live mappings the device may read;
 *  undefined otherwise. Must not throw. */
export type Peek = (iova: bigint, len: number) => Uint8Array | undefined;

/** Host memory as it was at the doorbell write, to send before that write. */
export interface Push {
  /** The rule that pushed it (Push.rule, R_PUSH.rule). */
  rule: number;
  iova: bigint;
  data: Uint8Array;
}

interface Slot {
  readonly rule: PushRule;
  /** The ring position pushed up to: an SQ slot, or a 16-bit avail index. */
  last: number;
  /** An NVMe rule with a shadow tail: whether its SQ is quiet (docs/PUSH.md). */
  quiet?: QuietSq;
}

/** What quiet SQs need of the function that keeps the rules (docs/PUSH.md "Quiet submission
 *  queues"): memory, the device's event index writes, and its doorbell path. */
export interface SqPort {
  peek: Peek;
  /** The device's write of 4 bytes `value` at `iova`, made by the host (checked, counted). */
  writeEventIdx(iova: bigint, value: number): void;
  /** Rings `tail` at rule's doorbell for the driver, as its own write: pushes, then the write. */
  ring(rule: NvmeSqRule, tail: number): void;
}

/** An NVMe rule's SqHost over a port. */
function sqHost(rule: NvmeSqRule, port: SqPort): SqHost {
  return {
    shadow: () => {
      const b = rule.shadow === undefined ? undefined : port.peek(rule.shadow, 4);
      const tail = b && rd32(b, 0);
      return tail !== undefined && tail < rule.entries ? tail : undefined;
    },
    eventIdx: (v) => port.writeEventIdx(rule.eventIdx!, v),
    ring: (tail) => port.ring(rule, tail),
  };
}

/** A run of pushed ranges of one rule that follow each other in memory and in order. */
interface Run {
  rule: number;
  iova: bigint;
  len: number;
  parts: Uint8Array[];
}

/** One doorbell write's work: what is left of its budgets, and what it pushed so far. */
interface Doorbell {
  peek: Peek;
  /** Bytes that may still be pushed. */
  left: number;
  /** Units of work left. */
  steps: number;
  exhausted: boolean;
  runs: Run[];
}

/** IOVA arithmetic wraps at 64 bits as the kernel's u64 does; a wrapped range then simply fails the
 *  mapping check. */
const at = (base: bigint, offset: number | bigint) => BigInt.asUintN(64, base + BigInt(offset));

const doorbellOf = (r: PushRule) => (r.kind === 'nvme-sq' ? r.doorbell : r.notify);

/** The rule table of one function (at most MAX_PUSH_RULES rules) and their walkers. */
/** Whether `r` replaces `old` for the same ring (its position carries over; docs/PUSH.md "Rules"). */
function sameRing(old: PushRule, r: PushRule): boolean {
  if (old.kind === 'nvme-sq' && r.kind === 'nvme-sq')
    return (
      old.bar === r.bar && old.doorbell === r.doorbell && old.base === r.base && old.entries === r.entries
    );
  if (old.kind === 'virtq' && r.kind === 'virtq')
    return (
      old.bar === r.bar &&
      old.notify === r.notify &&
      old.desc === r.desc &&
      old.avail === r.avail &&
      old.size === r.size
    );
  return false;
}

export class PushRules {
  /** Most bytes pushed per doorbell write: PUSH_MAX_BYTES, or less (pcinet.ko's push_budget). */
  readonly budget: number;
  readonly #slots: (Slot | undefined)[] = new Array(MAX_PUSH_RULES).fill(undefined);
  #count = 0;
  /** Rules with an event index: without any, a write looks for none. */
  #withEventIdx = 0;
  #skipped = 0;

  constructor(budget = PUSH_MAX_BYTES) {
    if (!Number.isInteger(budget) || budget < PUSH_RECORD_BYTES || budget > PUSH_MAX_BYTES)
      throw new RangeError(`push budget ${budget} is not in ${PUSH_RECORD_BYTES}..${PUSH_MAX_BYTES}`);
    this.budget = budget;
  }

  /** Rules installed. */
  get size(): number {
    return this.#count;
  }

  /** Ranges not pushed because they failed the mapping check or did not fit the byte budget,
   *  unreadable avail indexes, and doorbells that ran out of steps; since construction (clear
   *  does not reset it: it is a counter). */
  get skipped(): number {
    return this.#skipped;
  }

  /** Installs or removes rule `id`; `last` starts at 0, or stays where it was when the rule
   *  replaces one for the same ring. The caller validated the rule against the function
   *  (docs/PUSH.md "Rules"); an id out of range is our own bug. */
  set(id: number, rule: PushRule | undefined, port?: SqPort): void {
    if (!Number.isInteger(id) || id < 0 || id >= MAX_PUSH_RULES)
      throw new RangeError(`push rule id ${id} is not in 0..${MAX_PUSH_RULES - 1}`);
    const slot = this.#slots[id];
    const old = slot?.rule;
    if (old) this.#count--;
    if (old?.kind === 'nvme-sq' && old.eventIdx !== undefined) this.#withEventIdx--;
    // The old rule's SQ may be quiet: the driver rings again before the rule goes.
    if (old?.kind === 'nvme-sq' && slot!.quiet && port) slot!.quiet.unquiet(sqHost(old, port));
    const kept = rule && old && sameRing(old, rule) ? slot!.last : 0;
    this.#slots[id] = rule ? { rule, last: kept } : undefined;
    if (rule?.kind === 'nvme-sq' && rule.shadow !== undefined && rule.eventIdx !== undefined)
      this.#slots[id]!.quiet = new QuietSq(kept);
    if (rule) this.#count++;
    if (rule?.kind === 'nvme-sq' && rule.eventIdx !== undefined) this.#withEventIdx++;
  }

  /** The id of this rule object, if it is installed. */
  idOf(rule: PushRule): number | undefined {
    const id = this.#slots.findIndex((s) => s?.rule === rule);
    return id < 0 ? undefined : id;
  }

  /** The rule with this id, if any. */
  get(id: number): PushRule | undefined {
    return this.#slots[id]?.rule;
  }

  /** Where rule `id` has pushed up to, for tests and traces. */
  last(id: number): number | undefined {
    return this.#slots[id]?.last;
  }

  /** How far from NVMe rule `id`'s `last` towards `tail` one part's pushes fit (PUSH_PART_BYTES, or
   *  the budget if smaller; kernel/push-walk.c pcinet_push_nvme_fits(), the same estimate): the tail
   *  after the last entry that fits, at least one entry on. A quiet SQ's ring for the driver goes as doorbells split at
   *  these tails (docs/PUSH.md "Quiet submission queues"). */
  nvmeFits(id: number, tail: number, peek: Peek): number {
    const s = this.#slots[id];
    const r = s?.rule;
    if (!s || r?.kind !== 'nvme-sq' || tail >= r.entries || s.last >= r.entries || r.lbaShift > 12)
      return tail;
    const part = Math.min(this.budget, PUSH_PART_BYTES);
    let [e, n, used] = [s.last, 0, 0];
    while (e !== tail) {
      let cost = SQE_SIZE;
      const sqe = peek(at(r.base, e * SQE_SIZE), SQE_SIZE);
      if (sqe && (sqe[0] === NVME_CMD_WRITE || sqe[0] === NVME_CMD_READ)) {
        const len = (rd16(sqe, 48) + 1) * 2 ** r.lbaShift;
        if (len > 2 * PUSH_PAGE) cost += 8 * Math.ceil(len / PUSH_PAGE);
        if (sqe[0] === NVME_CMD_WRITE && len <= r.dataMax) cost += len;
      }
      if (n && used + cost > part) break;
      used += cost;
      n++;
      e = e + 1 === r.entries ? 0 : e + 1;
    }
    return e;
  }

  /** The event index writes of the NVMe rules on the doorbell at (`bar`, `offset`) that the
   *  driver's write of `tail` makes (NvmeSqRule.eventIdx; docs/PUSH.md "Shadow doorbells"): the
   *  tail, or with a quiet SQ (NvmeSqRule.shadow) the index that keeps the driver from ringing. */
  eventIndices(bar: number, offset: number, tail: number): { iova: bigint; value: number }[] {
    const out: { iova: bigint; value: number }[] = [];
    if (this.#withEventIdx === 0) return out;
    for (const s of this.#slots) {
      const r = s?.rule;
      if (r?.kind === 'nvme-sq' && r.eventIdx !== undefined && r.bar === bar && r.doorbell === offset)
        out.push({ iova: r.eventIdx, value: s!.quiet ? s!.quiet.rung(tail) : tail });
    }
    return out;
  }

  /** The device's round of NVMe rule `id` (a VirtqDone with recheck): it took the SQ up to
   *  `taken` (docs/PUSH.md "Quiet submission queues"). Nothing for other rules. */
  sqRound(id: number, taken: number, port: SqPort): void {
    const s = this.#slots[id];
    if (s?.rule.kind === 'nvme-sq' && s.quiet) s.quiet.round(taken, sqHost(s.rule, port));
  }

  /** Function reset, link down/up, removal: every rule goes (docs/PUSH.md "Rules"); quiet SQs
   *  ring again. */
  clear(port?: SqPort): void {
    for (const s of this.#slots)
      if (s?.rule.kind === 'nvme-sq' && s.quiet && port) s.quiet.unquiet(sqHost(s.rule, port));
    this.#slots.fill(undefined);
    this.#count = 0;
    this.#withEventIdx = 0;
  }

  /** The driver wrote `data` at `bar` + `offset`: what to push in front of that write, in order.
   *  Rules whose doorbell is the write's first byte run in id order and share one budget. Consecutive pushes of one rule that continue each
   *  other in memory are merged, then cut into pieces of at most PUSH_RECORD_BYTES. */
  onWrite(bar: number, offset: number, data: Uint8Array, peek: Peek): Push[] {
    if (this.#count === 0) return [];
    const d: Doorbell = { peek, left: this.budget, steps: PUSH_MAX_STEPS, exhausted: false, runs: [] };
    for (let id = 0; id < MAX_PUSH_RULES; id++) {
      const s = this.#slots[id];
      if (!s || s.rule.bar !== bar || doorbellOf(s.rule) !== offset) continue;
      if (s.rule.kind === 'nvme-sq') this.#nvmeSq(d, id, s, s.rule, data);
      else this.#virtq(d, id, s, s.rule);
    }
    return pieces(d.runs);
  }

  /** Spends one unit of work; false once the doorbell's allowance is gone. */
  #step(d: Doorbell): boolean {
    if (d.steps > 0) {
      d.steps--;
      return true;
    }
    if (!d.exhausted) this.#skipped++;
    d.exhausted = true;
    return false;
  }

  /** Pushes [iova, iova + len) if it fits the budget and the device may read all of it, whole or
   *  not at all; returns the bytes pushed. Only what is pushed is ever interpreted further (an SQE,
   *  a list page, a table), so the walkers see exactly what the device will be served. */
  #take(d: Doorbell, rule: number, iova: bigint, len: number): Uint8Array | undefined {
    if (!(len > 0) || !this.#step(d)) return undefined;
    if (len > d.left) {
      this.#skipped++;
      return undefined;
    }
    const bytes = d.peek(iova, len);
    if (bytes?.length !== len) {
      this.#skipped++;
      return undefined;
    }
    d.left -= len;
    const prev = d.runs[d.runs.length - 1];
    // Not wrapped: a run never crosses the end of the 64-bit IOVA space.
    if (prev && prev.rule === rule && prev.iova + BigInt(prev.len) === iova) {
      prev.len += len;
      prev.parts.push(bytes);
    } else d.runs.push({ rule, iova, len, parts: [bytes] });
    return bytes;
  }

  // ---- NVME_SQ (docs/PUSH.md "NVME_SQ") ----

  #nvmeSq(d: Doorbell, id: number, s: Slot, r: NvmeSqRule, data: Uint8Array): void {
    // "the first 4 bytes of the write, little-endian"; a shorter write gives what it has.
    let tail = 0;
    for (let i = Math.min(4, data.length) - 1; i >= 0; i--) tail = tail * 256 + data[i];
    const last = s.last;
    if (tail >= r.entries || last >= r.entries) return; // step 1: the device traces the bad doorbell
    s.last = tail;
    if (tail === last) return;
    const spans =
      last < tail
        ? [[last, tail]]
        : [
            [last, r.entries],
            [0, tail],
          ];
    const pushed = spans.map(([from, to]) =>
      this.#take(d, id, at(r.base, SQE_SIZE * from), SQE_SIZE * (to - from)),
    );
    if (!(r.dataMax > 0)) return; // the admin queue: entries only
    for (const sqes of pushed) {
      for (let o = 0; sqes && o + SQE_SIZE <= sqes.length; o += SQE_SIZE) {
        if (!this.#step(d)) return;
        if (sqes[o] === NVME_CMD_WRITE || sqes[o] === NVME_CMD_READ)
          this.#nvmeRw(d, id, r, sqes.subarray(o, o + SQE_SIZE));
      }
    }
  }

  /** The PRP list pages of one NVM Read or Write and, for a Write that fits dataMax and the
   *  budget, its data, walked as the controller walks PRP1/PRP2 (devices/nvme). */
  #nvmeRw(d: Doorbell, id: number, r: NvmeSqRule, sqe: Uint8Array): void {
    // Refused when the rule was set (9..12); the walk does not rely on it. NLB is 0's based
    // (bytes 48-49 of CDW12).
    if (!Number.isInteger(r.lbaShift) || r.lbaShift < 0 || r.lbaShift > 12) return;
    const len = (rd16(sqe, 48) + 1) * 2 ** r.lbaShift;
    let data = sqe[0] === NVME_CMD_WRITE;
    if (!(len <= r.dataMax)) data = false;
    else if (data && len > d.left) {
      // "the push budget allows it": a command's data is pushed whole or not at all.
      this.#skipped++;
      data = false;
    }
    const prp1 = rd64(sqe, 24);
    const prp2 = rd64(sqe, 32);
    const first = Math.min(len, PUSH_PAGE - Number(prp1 % PAGE));
    if (data) this.#take(d, id, prp1, first);
    let left = len - first;
    if (left === 0) return;
    if (left <= PUSH_PAGE) {
      if (prp2 % PAGE !== 0n) return; // offset bits in PRP2: the controller fails the command
      if (data) this.#take(d, id, prp2, left);
      return;
    }
    // PRP2 points into a list page: it may start mid-page, but on an entry (8 bytes); the
    // controller fails anything else (INVALID_PRP_OFFSET), so the walk stops.
    let list = prp2;
    if (list % 8n !== 0n) return;
    // Each pass consumes a list page: at least one data page, or (a list starting in its last
    // slot) only the chain to a page-aligned list page, which then holds 511 data pages. `left`
    // is at most 65536 pages (NLB is 16 bits, lba_shift at most 12), so this ends.
    while (left > 0) {
      const slots = (PUSH_PAGE - Number(list % PAGE)) / 8;
      const need = Math.ceil(left / PUSH_PAGE);
      const take = Math.min(need, slots);
      const entries = this.#take(d, id, list, 8 * take);
      if (!entries) return; // the list is not seen, so neither are the pages it names
      const pages = need <= slots ? take : take - 1;
      for (let i = 0; i < pages; i++) {
        if (!this.#step(d)) return;
        const page = rd64(entries, 8 * i);
        if (page % PAGE !== 0n) return;
        const n = Math.min(PUSH_PAGE, left);
        if (data) this.#take(d, id, page, n);
        left -= n;
      }
      if (need <= slots) return;
      if (!this.#step(d)) return;
      list = rd64(entries, 8 * (take - 1));
      if (list % PAGE !== 0n) return; // a chained list page is a PRP entry: no offset bits
    }
  }

  // ---- VIRTQ (docs/PUSH.md "VIRTQ") ----

  #virtq(d: Doorbell, id: number, s: Slot, r: VirtqRule): void {
    const size = r.size;
    // The index alone decides `last`, pushed or not: a budget spent by an earlier rule must not
    // leave this rule behind the ring, where every later notify would look like a broken ring.
    const idxBytes = this.#step(d) ? d.peek(at(r.avail, 2), 2) : undefined;
    if (idxBytes?.length !== 2) {
      this.#skipped++;
      return;
    }
    const idx = rd16(idxBytes, 0);
    const last = s.last;
    const n = (idx - last) & 0xffff;
    if (!(n <= size)) return; // step 1: the device will find the ring broken
    s.last = idx; // step 4; nothing below changes it
    // The table only with the driver area: a table pushed alone would outlive the ring it goes
    // with, and a later ring read from memory would be paired with descriptors older than it.
    const area = this.#take(d, id, r.avail, 6 + 2 * size);
    const table = area && this.#take(d, id, r.desc, DESC_SIZE * size);
    // Without data or indirect tables to push, walking chains could push nothing.
    if (!area || !table || (!(r.dataMax > 0) && !r.indirect)) return;
    for (let i = 0; i < n && d.left > 0; i++) {
      if (!this.#step(d)) return;
      const head = rd16(area, 4 + 2 * ((last + i) % size));
      const total = this.#chain(d, id, r, table, head, false);
      if (total > 0 && total <= r.dataMax) this.#chain(d, id, r, table, head, true);
    }
  }

  /**
   * One pass over the chain at `head`, as the device follows it (devices/virtio/virtqueue.ts). The
   * first pass pushes the indirect table it meets and adds up the readable bytes (descriptors
   * without WRITE, nonzero length, before the first writable one); the second, run only when the
   * first found the chain whole and that total within data_max, pushes those bytes. A chain the
   * device will find broken gets no data pushed: it reads none of it. Returns the readable total,
   * or -1 when the chain did not end properly (a descriptor without NEXT).
   */
  #chain(d: Doorbell, id: number, r: VirtqRule, main: Uint8Array, head: number, data: boolean): number {
    let table = main;
    let count = r.size;
    let i = head;
    let indirect = false;
    let writable = false;
    let total = 0;
    if (i >= count) return -1; // a head past the table
    for (let steps = 0; ; steps++) {
      if (steps >= count) return -1; // longer than its table: a loop
      if (!this.#step(d)) return -1;
      const o = DESC_SIZE * i;
      const len = rd32(table, o + 8);
      const flags = rd16(table, o + 12);
      const next = rd16(table, o + 14);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // virtio 1.2 §2.7.5.3.1: one table per chain, never nested, never with NEXT, a whole
        // number of descriptors. Anything else is malformed: the device stops there too.
        if (!r.indirect || indirect || flags & VIRTQ_DESC_F_NEXT || len === 0 || len % DESC_SIZE) return -1;
        // The walk goes on only in a pushed table; the second pass finds it pushed already.
        const addr = rd64(table, o);
        const t = data ? d.peek(addr, len) : this.#take(d, id, addr, len);
        if (t?.length !== len) return -1;
        table = t;
        count = len / DESC_SIZE;
        indirect = true;
        i = 0;
        steps = -1;
        continue;
      }
      if (flags & VIRTQ_DESC_F_WRITE) writable = true;
      else if (len > 0 && !writable) {
        if (data) this.#take(d, id, rd64(table, o), len);
        else total += len;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return total;
      if (next >= count) return -1; // next past the table
      i = next;
    }
  }
}

/** Runs as pushes of at most PUSH_RECORD_BYTES, cut from each run's start. */
function pieces(runs: readonly Run[]): Push[] {
  const out: Push[] = [];
  for (const run of runs) {
    const whole = run.parts.length === 1 ? run.parts[0] : concat(run.parts, run.len);
    for (let o = 0; o < run.len; o += PUSH_RECORD_BYTES) {
      const data = run.len <= PUSH_RECORD_BYTES ? whole : whole.subarray(o, o + PUSH_RECORD_BYTES);
      out.push({ rule: run.rule, iova: at(run.iova, o), data });
    }
  }
  return out;
}

function concat(parts: readonly Uint8Array[], len: number): Uint8Array {
  const out = new Uint8Array(len);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
