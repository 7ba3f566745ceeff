// The replay device (docs/devices.md, "Record and replay"): a session recorded with
// `pcinet trace --for-replay` played back as the device, against the live driver. It presents the
// recorded description (config space, BARs, MSI-X), expects the host's messages in the recorded
// order (MMIO writes and volatile reads, config writes, resets, the detach), answers volatile reads
// with the recorded completions, and sends what the recorded device sent (shadow updates, DMA
// writes, interrupts, push rules, virtqueue rounds) once the host messages before it in the
// recording have come; a recorded DMA read is made again, and what followed its completion waits
// for it. The IOVAs in all of it are the live run's (relocation.ts).
//
// The first place the live driver does something else is a divergence: logged (trace event
// replay.divergence), counted, and shown by `pcinet status`. With strict=on (the default) the
// device then stops answering as a surprise-removed one does: every register reads all-ones and
// nothing more is sent, so the driver's test fails there. With strict=off it goes on where it can.
import type { DeviceDescription } from '../description.js';
import type { DeviceModel, DirtyRange, HostPort } from '../host-port.js';
import { msixSizes } from '../pci/caps.js';
import { PCI_CAP_ID_MSIX, walkCaps } from '../pci/config.js';
import { rd16, rd32 } from '../pci/le.js';
import type { Span } from '../pci/registers.js';
import type { PushRule } from '../push.js';
import { deviceSpec, intOption, pathOption, switchOption } from '../spec.js';
import type { ReplayRecording } from './records.js';
import { Relocation } from './relocation.js';
import {
  bytes,
  compile,
  describeHost,
  type HostMessage,
  type Script,
  type Step,
  sameMessage,
} from './script.js';

/** How far ahead strict=off looks for the recorded place of a host message that is not the one
 *  expected: far enough to step over a few missing or reordered accesses, near enough that an
 *  unrelated later access to the same register is not taken for it. */
export const RESYNC_WINDOW = 64;
/** Bytes of each BAR a strict replay turns to all-ones when it stops: the registers of every model
 *  we have fit; a large memory BAR beyond it keeps its last contents. */
export const DEAD_FILL_MAX = 1 << 20;

export type DivergenceKind =
  /** The host sent another message than the recorded one (or none where one was recorded). */
  | 'message'
  /** The same message with other bytes, outside the addresses in it. */
  | 'data'
  /** A DMA read (of memory the driver wrote, or pushed with a doorbell) found other bytes, or the
   *  host refused it. */
  | 'dma'
  /** A recorded device address has no live translation. */
  | 'address'
  /** The host lacks what the recording used (virtqueue rounds). */
  | 'host';

export interface Divergence {
  /** Packet number of the recorded record in the capture (`pcinet trace -r FILE`, line N). */
  record: number;
  /** Its time in the recording, µs after the Attach. */
  us: number;
  kind: DivergenceKind;
  expected: string;
  got: string;
  /** Byte of the message's data (or DMA range) where they first differ. */
  offset?: number;
}

export interface ReplayOptions {
  /** Stop answering (all-ones) at the first divergence; default true. */
  strict?: boolean;
}

interface ReadState {
  done: boolean;
  ok: boolean;
  data?: Uint8Array;
  /** No translation: nothing was read (reported where it was issued). */
  skipped?: boolean;
}

const hex = (v: number | bigint) => `0x${v.toString(16)}`;
const seconds = (us: number) => `+${(us / 1e6).toFixed(6)} s`;

export class ReplayDevice implements DeviceModel {
  readonly description: DeviceDescription;
  readonly #rec: ReplayRecording;
  readonly #script: Script;
  readonly #strict: boolean;
  /** Index of each expect step in #script.steps, by seq. */
  readonly #expectAt: number[];
  readonly #reloc: Relocation;
  /** Host-owned (MSI-X) and volatile ranges per BAR: left alone when the device goes dead. */
  readonly #keepOut = new Map<number, Span[]>();

  #port: HostPort | undefined;
  /** Bumped by attach and detach: async work of an older run is ignored. */
  #epoch = 0;
  /** Next step to carry out. */
  #p = 0;
  /** Expects matched so far (the next one expected is #hp). */
  #hp = 0;
  #walking = false;
  #reads = new Map<number, ReadState>();
  #dirty: DirtyRange[] = [];
  /** Live first half of a 64-bit register written in two (the recorded word is an address). */
  #half: { bar: number; at: number; live: Uint8Array; offset: number } | undefined;
  /** Push rules this run set (at their live addresses), to take down when it stops. */
  #rules = new Map<number, PushRule>();
  /** The last answer of each volatile register (bar:offset:size): what it keeps reading after the
   *  recording ends. */
  #last = new Map<string, Uint8Array>();
  #dead = false;
  #ended: 'detach' | 'unplug' | 'end' | undefined;
  #first: Divergence | undefined;
  #count = { divergences: 0, missed: 0, extra: 0, beyond: 0, idleKicks: 0, runs: 0, complete: 0 };
  /** Expects passed over as idle kicks (the live run did without them). */
  #skipped = new Set<number>();
  /** Per virtqueue push rule: the avail idx its driver area showed at its last notify. */
  #availIdx = new Map<number, number>();

  constructor(recording: ReplayRecording, o: ReplayOptions = {}) {
    this.#rec = recording;
    this.description = recording.description;
    this.#script = compile(recording.records, recording.description);
    this.#strict = o.strict ?? true;
    this.#expectAt = [];
    this.#script.steps.forEach((s, i) => {
      if (s.op === 'expect') this.#expectAt.push(i);
    });
    this.#reloc = new Relocation(this.#script.used);
    for (const b of recording.description.bars) this.#keepOut.set(b.index, [...b.volatile]);
    for (const [bar, span] of msixSpans(recording.description)) this.#keepOut.get(bar)?.push(span);
  }

  /** The first divergence of the current (or last) run, if any. */
  get divergence(): Divergence | undefined {
    return this.#first;
  }

  /** The run reached the end of the recording. */
  get ended(): boolean {
    return this.#ended !== undefined;
  }

  // ---- DeviceModel ----

  attach(port: HostPort): void {
    this.#epoch++;
    this.#port = port;
    this.#p = 0;
    this.#hp = 0;
    this.#reads = new Map();
    this.#dirty = [];
    this.#half = undefined;
    this.#rules.clear();
    this.#last.clear();
    this.#reloc.clear();
    this.#dead = false;
    this.#ended = undefined;
    this.#first = undefined;
    this.#count = { ...this.#count, divergences: 0, missed: 0, extra: 0, beyond: 0, idleKicks: 0 };
    this.#skipped.clear();
    this.#availIdx.clear();
    this.#count.runs++;
    port.trace('replay.start', {
      source: this.#rec.source,
      records: this.#rec.records.length,
      hostMessages: this.#script.expects,
      strict: this.#strict,
    });
    this.#walk();
  }

  detach(): void {
    const port = this.#port;
    if (!port) return;
    if (!this.#dead && !this.#ended) {
      const s = this.#expected();
      const gone: HostMessage = { kind: 'detach' };
      const d = s && (sameMessage(s.msg, gone) ? s : this.#pastIdle(s, gone));
      if (d) {
        // What the recording sent before it goes out if it can; what waits for a read cannot now.
        this.#hp = d.seq + 1;
        this.#walk();
        this.#end('detach');
      } else if (s) this.#diverge(s, 'message', describeHost(s.msg), 'the host removed the device');
    }
    if (this.#ended === 'detach' && !this.#first) {
      this.#count.complete++;
      port.trace('replay.complete', {
        source: this.#rec.source,
        records: this.#rec.records.length,
        hostMessages: this.#script.expects,
        relocations: this.#reloc.learned,
        idleKicks: this.#count.idleKicks,
      });
    }
    this.#epoch++;
    this.#port = undefined;
    this.#dirty = [];
  }

  mmioWrite(bar: number, offset: number, data: Uint8Array): void {
    this.#host({ kind: 'mmioWrite', bar, offset, data });
  }

  mmioRead(bar: number, offset: number, size: number): Uint8Array {
    const key = `${bar}:${offset}:${size}`;
    if (this.#dead) return new Uint8Array(size).fill(0xff);
    const s = this.#host({ kind: 'mmioRead', bar, offset, size });
    if (this.#dead) return new Uint8Array(size).fill(0xff);
    let out: Uint8Array | undefined;
    if (s?.op === 'expect') {
      if (s.answer && !this.#echoes(s, BigInt(offset), s.answer)) return new Uint8Array(size).fill(0xff);
      out = s.answer ? this.#reloc.translateData(BigInt(offset), s.answer).slice() : undefined;
      if (out) this.#last.set(key, out);
    } else out = this.#last.get(key)?.slice();
    return out ?? new Uint8Array(size).fill(0xff);
  }

  configWrite(offset: number, size: number, value: number): void {
    this.#host({ kind: 'configWrite', offset, size, value: value >>> 0 });
  }

  reset(): void {
    this.#host({ kind: 'functionReset' });
  }

  takeDirty(): DirtyRange[] {
    const d = this.#dirty;
    if (d.length) this.#dirty = [];
    return d;
  }

  counters(): Record<string, number> {
    return {
      records: this.#rec.records.length,
      hostMessages: this.#script.expects,
      matched: this.#hp,
      position: this.#position(),
      divergences: this.#count.divergences,
      divergedAt: this.#first?.record ?? 0,
      missed: this.#count.missed,
      extra: this.#count.extra,
      beyond: this.#count.beyond,
      idleKicks: this.#count.idleKicks,
      ended: this.#ended ? 1 : 0,
      complete: this.#count.complete,
      relocations: this.#reloc.learned,
      runs: this.#count.runs,
    };
  }

  /** What `pcinet status` shows of the replay. */
  notes(): string[] {
    const where = `record ${this.#position()} of ${this.#rec.source}`;
    const lines: string[] = [];
    const d = this.#first;
    if (d) {
      lines.push(
        `replay diverged at record ${d.record} (${seconds(d.us)}): ${d.kind}: expected ${d.expected}; got ${d.got}` +
          (this.#dead ? ' (strict: the device no longer answers)' : ''),
      );
      if (this.#count.divergences > 1) lines.push(`${this.#count.divergences} divergences in all`);
    }
    if (this.#ended) {
      const last = this.#rec.records.at(-1);
      lines.push(
        `replay reached the end of the recording (record ${last?.n ?? this.#rec.attachN}` +
          `${this.#ended === 'detach' ? ', the host’s detach' : this.#ended === 'unplug' ? ', the endpoint’s unplug' : ''})` +
          (this.#count.beyond ? `; ${this.#count.beyond} host messages beyond it` : ''),
      );
    } else if (!d) lines.push(`replay at ${where}: no divergence`);
    return lines;
  }

  // ---- the walk ----

  #expected(): (Step & { op: 'expect' }) | undefined {
    return this.#expectStep(this.#hp);
  }

  /** Packet number of the last record carried out. */
  #position(): number {
    return this.#script.steps[this.#p - 1]?.n ?? this.#rec.attachN;
  }

  /** A message from the host: matched against the next expected one. Returns the recorded step it
   *  matched, if any. */
  #host(m: HostMessage): (Step & { op: 'expect' }) | undefined {
    const port = this.#port;
    if (!port || this.#dead) return undefined;
    const s = this.#expected();
    if (!s) {
      this.#count.beyond++;
      if (this.#count.beyond === 1)
        port.trace('replay.beyond', {
          got: describeHost(m),
          note: 'the recording has ended: writes are ignored, volatile reads answer their last value',
        });
      return undefined;
    }
    if (sameMessage(s.msg, m)) return this.#matched(s, m);
    const past = this.#pastIdle(s, m);
    if (past) return this.#matched(past, m);
    if (this.#extraKick(m)) return undefined;
    this.#diverge(s, 'message', describeHost(s.msg), describeHost(m));
    if (this.#strict) return undefined;
    // Where else in the near future the recording has this message.
    for (let k = 1; k <= RESYNC_WINDOW; k++) {
      const i = this.#expectAt[this.#hp + k];
      if (i === undefined) break;
      const later = this.#script.steps[i] as Step & { op: 'expect' };
      if (!sameMessage(later.msg, m)) continue;
      this.#count.missed += k;
      this.#hp += k;
      return this.#matched(later, m);
    }
    this.#count.extra++;
    return undefined;
  }

  /** The recording has idle kicks (script.ts markIdle) where the live run went on without them:
   *  the expect after them that `m` is, if any; they are passed over, not emitted. */
  #pastIdle(s: Step & { op: 'expect' }, m: HostMessage): (Step & { op: 'expect' }) | undefined {
    let k = s.seq;
    while (this.#expectStep(k)?.idle && !sameMessage(this.#expectStep(k)!.msg, m)) k++;
    const next = this.#expectStep(k);
    if (k === s.seq || !next || !sameMessage(next.msg, m)) return undefined;
    this.#skipIdle(s.seq, k);
    return next;
  }

  /**
   * A notify the recording has no place for here (it expects another message: the detach, a
   * register) that brought the device nothing: its virtqueue's driver area, pushed with it, shows
   * the avail idx it showed at the last notify. One kick more than the recording (pcinet.ko's
   * recheck racing the driver's notify) is passed over, as where a kick was expected.
   */
  #extraKick(m: HostMessage): boolean {
    if (m.kind !== 'mmioWrite') return false;
    for (const [id, rule] of this.#rules) {
      if (rule.kind !== 'virtq' || rule.bar !== m.bar || rule.notify !== m.offset) continue;
      const before = this.#availIdx.get(id);
      const area = this.#port?.dmaReadNow?.(rule.avail, 6 + 2 * rule.size);
      if (before === undefined || !area || rd16(area, 2) !== before) return false;
      this.#count.idleKicks++;
      this.#port?.trace('replay.idle-kick', {
        record: this.#expected()?.n,
        note: 'a doorbell write that brought the device nothing new: not in the recording, passed over',
      });
      return true;
    }
    return false;
  }

  #expectStep(seq: number): (Step & { op: 'expect' }) | undefined {
    const i = this.#expectAt[seq];
    return i === undefined ? undefined : (this.#script.steps[i] as Step & { op: 'expect' });
  }

  /** Expects [from, to) were idle kicks the live run did not repeat. */
  #skipIdle(from: number, to: number): void {
    for (let k = from; k < to; k++) this.#skipped.add(k);
    this.#count.idleKicks += to - from;
    this.#port?.trace('replay.idle-kick', {
      record: this.#expectStep(from)!.n,
      note: 'a doorbell write the recorded device did nothing for: the live run did without it',
    });
  }

  #matched(s: Step & { op: 'expect' }, m: HostMessage): Step & { op: 'expect' } {
    this.#hp = s.seq + 1;
    this.#checkData(s, m);
    this.#walk();
    return s;
  }

  /** The live message's data against the recorded one's, learning the addresses in it. */
  #checkData(s: Step & { op: 'expect' }, m: HostMessage): void {
    const want = s.msg;
    if (want.kind === 'configWrite' && m.kind === 'configWrite' && want.value !== m.value) {
      this.#diverge(s, 'data', describeHost(want), describeHost(m));
      return;
    }
    if (want.kind !== 'mmioWrite' || m.kind !== 'mmioWrite') return;
    const h = s.half;
    if (h && this.#reloc.addressLike(h.value)) {
      // One half of an address register: the word is compared (learned) when both are in.
      if (h.first) {
        this.#half = { bar: m.bar, at: h.at, live: m.data.slice(), offset: m.offset };
        return;
      }
      const first = this.#half;
      this.#half = undefined;
      if (first && first.bar === m.bar && first.at === h.at) {
        const word = new Uint8Array(8);
        word.set(first.live, first.offset - h.at);
        word.set(m.data, m.offset - h.at);
        const live = new DataView(word.buffer).getBigUint64(0, true);
        if (live !== 0n) {
          this.#reloc.learn(h.value, live);
          return;
        }
        this.#diverge(
          s,
          'data',
          `${describeHost(want)} (the register holds ${hex(h.value)}, an address)`,
          `${describeHost(m)} (the register holds 0)`,
          0,
        );
        return;
      }
    }
    const at = this.#reloc.learnFrom(BigInt(want.offset), want.data, m.data);
    if (at >= 0)
      this.#diverge(
        s,
        'data',
        `${describeHost(want)}: byte ${at} is ${bytes(want.data, at)}`,
        `${bytes(m.data, at)}`,
        at,
      );
  }

  /** Carries out steps until one must wait for the host (an expect not yet matched, a read not yet
   *  completed) or the recording ends. */
  #walk(): void {
    if (this.#walking) return;
    this.#walking = true;
    try {
      const steps = this.#script.steps;
      while (this.#p < steps.length && this.#port && !this.#dead) {
        const s = steps[this.#p]!;
        if (s.op === 'expect') {
          if (s.seq >= this.#hp) return;
          if (this.#skipped.has(s.seq)) {
            // An idle kick the live run did without: nothing of its is carried out.
            this.#p = this.#expectAt[s.seq + 1] ?? steps.length;
            continue;
          }
        } else if (s.op === 'read') this.#read(s);
        else if (s.op === 'readDone') {
          const r = this.#reads.get(s.key);
          if (!r?.done) return;
          this.#reads.delete(s.key);
          if (this.#readDone(s, r)) continue;
        } else if (s.op === 'emit') this.#emit(s);
        else {
          this.#p++;
          this.#end(s.why);
          continue;
        }
        this.#p++;
      }
      if (this.#p >= steps.length && !this.#ended && !this.#dead && this.#hp >= this.#script.expects)
        this.#end('end');
    } finally {
      this.#walking = false;
    }
  }

  #end(why: 'detach' | 'unplug' | 'end'): void {
    if (this.#ended) return;
    this.#ended = why;
    this.#port?.trace('replay.end', {
      source: this.#rec.source,
      record: this.#position(),
      why:
        why === 'detach'
          ? 'the host detached the device, as recorded'
          : why === 'unplug'
            ? 'the recorded endpoint unplugged the device'
            : 'the capture ends here: the device keeps its last state',
      divergences: this.#count.divergences,
    });
  }

  #read(s: Step & { op: 'read' }): void {
    if (this.#reads.get(s.key)?.done) return; // read already (an idle kick's bytes, idleKick)
    const port = this.#port!;
    const st: ReadState = { done: false, ok: false };
    this.#reads.set(s.key, st);
    const live = this.#reloc.translate(s.iova, s.len);
    if (live === undefined) {
      st.done = true;
      st.skipped = true;
      this.#untranslated(s, s.iova, s.len, s.pushed ? 'pushed memory' : 'DMA read');
      return;
    }
    // Bytes at hand (pushed) are taken now, so the walk goes on at once: a doorbell's pushes are
    // all read while its write is being handled, before a later doorbell of the same batch of
    // messages replaces them with its own (the recorded device read them at its doorbell too).
    const now = port.dmaReadNow?.(live, s.len);
    if (now) {
      st.done = true;
      st.ok = true;
      st.data = now;
      return;
    }
    const epoch = this.#epoch;
    port.dmaRead(live, s.len).then(
      (data) => {
        st.done = true;
        st.ok = true;
        st.data = data;
        if (epoch === this.#epoch) this.#walk();
      },
      () => {
        st.done = true;
        if (epoch === this.#epoch) this.#walk();
      },
    );
  }

  /** A read's bytes against the recorded ones. True when the walk was moved (an idle kick). */
  #readDone(s: Step & { op: 'readDone' }, r: ReadState): boolean {
    if (r.skipped) return false;
    if (s.pushed && r.ok && this.#idleKick(s, r.data!)) return true;
    this.#compareRead(s, r);
    return false;
  }

  /**
   * Pushed bytes that differ from the recorded ones, where a doorbell write is an idle kick on one
   * side only (script.ts markIdle): the recorded kick was idle and the live bytes are those of the
   * next kick of the same doorbell (the live run did without it: go on from that one), or the live
   * write brought nothing new, its bytes those of the last push of that memory (the live run kicked
   * once more: wait for the recorded kick again). Only while nothing after the kick was matched.
   */
  #idleKick(s: Step & { op: 'readDone' }, live: Uint8Array): boolean {
    const kick = s.kick === undefined ? undefined : this.#expectStep(s.kick);
    if (!kick || this.#hp !== kick.seq + 1 || this.#reloc.differs(s.iova, s.data, live) < 0) return false;
    const steps = this.#script.steps;
    if (kick.idle) {
      let k = kick.seq + 1;
      while (this.#expectStep(k)?.idle && !sameMessage(this.#expectStep(k)!.msg, kick.msg)) k++;
      const next = this.#expectStep(k);
      if (!next || !sameMessage(next.msg, kick.msg)) return false;
      // The next kick's push of the same memory, if it had one and the live bytes are its.
      let same: (Step & { op: 'readDone' }) | undefined;
      let read: (Step & { op: 'read' }) | undefined;
      for (let i = this.#expectAt[k]! + 1; i < steps.length; i++) {
        const x = steps[i]!;
        if ((x.op !== 'read' && x.op !== 'readDone') || x.kick !== k) break;
        if (x.iova !== s.iova || (x.op === 'read' ? x.len : x.data.length) !== s.data.length) continue;
        if (x.op === 'read') read = x;
        else same = x;
      }
      if (!same || !read || this.#reloc.differs(s.iova, same.data, live) >= 0) return false;
      this.#skipIdle(kick.seq, k);
      this.#hp = k + 1;
      this.#reads.set(read.key, { done: true, ok: true, data: live });
      this.#p = this.#expectAt[k]! + 1;
      return true;
    }
    // A notify of a virtqueue whose avail idx has not moved since its last one brought nothing.
    const before = s.avail === undefined ? undefined : this.#availIdx.get(s.avail);
    if (before === undefined || live.length < 4 || rd16(live, 2) !== before) return false;
    // Undo the match: the recorded kick is still to come.
    for (let i = this.#expectAt[kick.seq]! + 1; i <= this.#p; i++) {
      const x = steps[i]!;
      if (x.op === 'read' || x.op === 'readDone') this.#reads.delete(x.key);
    }
    this.#hp = kick.seq;
    this.#p = this.#expectAt[kick.seq]!;
    this.#count.idleKicks++;
    this.#port?.trace('replay.idle-kick', {
      record: kick.n,
      note: 'a doorbell write that brought the device nothing new: not in the recording, passed over',
    });
    return true;
  }

  #compareRead(s: Step & { op: 'readDone' }, r: ReadState): void {
    if (s.avail !== undefined && r.ok && r.data!.length >= 4) this.#availIdx.set(s.avail, rd16(r.data!, 2));
    const what = `${s.pushed ? 'memory pushed' : 'a DMA read'} at ${hex(s.iova)} (+${s.data.length || (r.data?.length ?? 0)})`;
    if (!s.ok || !r.ok) {
      if (s.ok !== r.ok)
        this.#diverge(
          s,
          'dma',
          `${what}: ${s.ok ? 'read' : 'refused by the host'}`,
          r.ok ? 'read' : 'refused by the host',
        );
      return;
    }
    const data = r.data!;
    const at =
      data.length === s.data.length
        ? this.#reloc.learnFrom(s.iova, s.data, data)
        : Math.min(data.length, s.data.length);
    if (at >= 0) this.#diverge(s, 'dma', `${what}: byte ${at} is ${bytes(s.data, at)}`, bytes(data, at), at);
  }

  #emit(s: Step & { op: 'emit' }): void {
    const port = this.#port!;
    const r = s.rec;
    switch (r.kind) {
      case 'shadow':
        if (!this.#echoes(s, BigInt(r.offset), r.data)) return;
        this.#dirty.push({
          bar: r.bar,
          offset: r.offset,
          data: this.#reloc.translateData(BigInt(r.offset), r.data),
        });
        port.changed();
        return;
      case 'dmaWrite': {
        const live = this.#reloc.translate(r.iova, r.data.length);
        if (live === undefined) {
          this.#untranslated(s, r.iova, r.data.length, 'DMA write');
          return;
        }
        // The bytes as recorded: data may hold any value, an address's among them (relocation.ts).
        port.dmaWrite(live, r.data);
        return;
      }
      case 'interrupt':
        port.raiseMsix(r.vector);
        return;
      case 'pushRule': {
        if (r.rule?.kind === 'nvme-sq' && r.rule.eventIdx !== undefined && !port.sqEventIdx) {
          this.#diverge(
            s,
            'host',
            'a host that keeps NVMe SQ event indices (CAP_SQ_EVENT_IDX), as the recorded one did',
            'this host does not',
          );
          return;
        }
        const rule = r.rule && this.#liveRule(s, r.rule);
        if (r.rule && !rule) return;
        port.setPushRule(r.id, rule);
        if (rule) this.#rules.set(r.id, rule);
        else this.#rules.delete(r.id);
        return;
      }
      case 'virtqRound':
        if (!port.virtqRound) {
          this.#diverge(
            s,
            'host',
            'a host that ends virtqueue rounds (VirtqDone), as the recorded one did',
            'this host does not (CAP_VIRTQ_ROUNDS)',
          );
          return;
        }
        port.virtqRound(r.round);
        return;
    }
  }

  /** A recorded push rule with its rings at their live addresses (undefined: one has none). */
  #liveRule(s: Step, rule: PushRule): PushRule | undefined {
    const t = (iova: bigint, len: number) => {
      const live = this.#reloc.translate(iova, len);
      if (live === undefined) this.#untranslated(s, iova, len, 'push rule ring');
      return live;
    };
    if (rule.kind === 'virtq') {
      const desc = t(rule.desc, rule.size * 16);
      const avail = desc === undefined ? undefined : t(rule.avail, 6 + 2 * rule.size);
      return desc === undefined || avail === undefined ? undefined : { ...rule, desc, avail };
    }
    const base = t(rule.base, rule.entries * 64);
    if (base === undefined) return undefined;
    if (rule.eventIdx === undefined) return { ...rule, base };
    const eventIdx = t(rule.eventIdx, 4);
    return eventIdx === undefined ? undefined : { ...rule, base, eventIdx };
  }

  #untranslated(s: Step, iova: bigint, len: number, what: string): void {
    this.#diverge(
      s,
      'address',
      `a live address for the recorded ${what} at ${hex(iova)} (+${len})`,
      this.#reloc.ambiguity(iova) ?? 'none: the live driver never gave the device an address for that memory',
    );
  }

  /** Whether register bytes the recording gave can be given live: false (a divergence) when one
   *  echoes an address the live run gave two values for. */
  #echoes(s: Step, at: bigint, data: Uint8Array): boolean {
    const rec = this.#reloc.ambiguousEcho(at, data);
    if (rec === undefined) return true;
    this.#diverge(
      s,
      'address',
      `the live address for recorded ${hex(rec)}, which the register holds`,
      this.#reloc.ambiguity(rec)!,
    );
    return false;
  }

  #diverge(s: Step, kind: DivergenceKind, expected: string, got: string, offset?: number): void {
    const d: Divergence = {
      record: s.n,
      us: s.us,
      kind,
      expected,
      got,
      ...(offset !== undefined ? { offset } : {}),
    };
    this.#count.divergences++;
    this.#first ??= d;
    this.#port?.trace('replay.divergence', {
      record: d.record,
      at: seconds(d.us),
      kind,
      expected,
      got,
      ...(offset !== undefined ? { offset } : {}),
      strict: this.#strict,
    });
    if (this.#strict) this.#die();
  }

  /** Strict replay after a divergence: every register reads all-ones, as a device gone from the
   *  bus does, and nothing more is sent. */
  #die(): void {
    if (this.#dead) return;
    this.#dead = true;
    const port = this.#port;
    if (!port) return;
    for (const id of this.#rules.keys()) port.setPushRule(id, undefined);
    this.#rules.clear();
    this.#dirty = [];
    for (const b of this.description.bars) {
      const keep = this.#keepOut.get(b.index) ?? [];
      for (const [offset, length] of gaps(Math.min(b.size, DEAD_FILL_MAX), keep))
        this.#dirty.push({ bar: b.index, offset, data: new Uint8Array(length).fill(0xff) });
    }
    port.changed();
  }
}

/** The MSI-X table and PBA of a description (the host owns them): [bar, span]. */
function msixSpans(d: DeviceDescription): [number, Span][] {
  const cap = walkCaps(d.config).find((c) => c.id === PCI_CAP_ID_MSIX);
  if (!cap) return [];
  const vectors = (rd16(d.config, cap.offset + 2) & 0x7ff) + 1;
  const table = rd32(d.config, cap.offset + 4);
  const pba = rd32(d.config, cap.offset + 8);
  const s = msixSizes(vectors);
  return [
    [table & 7, { offset: table & ~7, length: s.table }],
    [pba & 7, { offset: pba & ~7, length: s.pba }],
  ];
}

/** [offset, length] of what lies in [0, size) outside `spans`. */
function gaps(size: number, spans: readonly Span[]): [number, number][] {
  const out: [number, number][] = [];
  let at = 0;
  for (const s of [...spans].sort((a, b) => a.offset - b.offset)) {
    if (s.offset > at) out.push([at, Math.min(s.offset, size) - at]);
    at = Math.max(at, s.offset + s.length);
    if (at >= size) break;
  }
  if (at < size) out.push([at, size - at]);
  return out.filter(([, len]) => len > 0);
}

export const replaySpec = deviceSpec({
  name: 'replay',
  summary:
    'a session recorded with pcinet trace --for-replay, played back as the device: the live driver is checked against the recording',
  options: {
    trace: pathOption('the capture (pcinet trace --for-replay -w FILE)'),
    device: intOption(1, 0xffff, 'which device of the capture (needed when it holds several)'),
    strict: switchOption(
      'on (default): stop answering (all-ones) at the first divergence; off: report and go on',
    ),
  },
  create: (o, card) => {
    if (!o.trace) throw new Error('replay needs trace=FILE, a capture of pcinet trace --for-replay');
    return new ReplayDevice(card.recording({ path: o.trace, device: o.device }), { strict: o.strict });
  },
});
