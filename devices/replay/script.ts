// A recording (records.ts) turned into the steps the replay (device.ts) walks: what the host must
// send next (expect), what the device sends (emit), the device's DMA reads (read, then readDone
// where the recording had the completion) and where the session ends.
//
// What the model never sees drops out here: AttachResult, PushDrop, PushRuleSet and WritesApplied
// are the runtime's business, and a read of a register that is not volatile is answered by the
// runtime itself. Pushes become reads: the recorded device read what the host pushed in front of a
// doorbell after that doorbell's write arrived, so the replay reads the same ranges there (the live
// run's pushes serve them, or a DMA read does), which is how it sees the rings and commands the live
// driver wrote.
import type { DeviceDescription } from '../description.js';
import { rd16 } from '../pci/le.js';
import type { Span } from '../pci/registers.js';
import type { PushRule } from '../push.js';
import type { DeviceRecord, RecordAt, ReplayRecord } from './records.js';

/** A host message as the model receives it. */
export type HostMessage =
  | { kind: 'mmioWrite'; bar: number; offset: number; data: Uint8Array }
  | { kind: 'mmioRead'; bar: number; offset: number; size: number }
  | { kind: 'configWrite'; offset: number; size: number; value: number }
  | { kind: 'functionReset' }
  | { kind: 'detach' };

/** What the device sends, as the replay sends it again. */
export type EmitRecord = Extract<
  DeviceRecord,
  { kind: 'shadow' | 'dmaWrite' | 'interrupt' | 'pushRule' | 'virtqRound' }
>;

/** One half of a 64-bit register written as two 32-bit writes in a row: the recorded word. */
export interface Half {
  /** BAR offset of the word (8-aligned). */
  at: number;
  value: bigint;
  first: boolean;
}

export type Step = RecordAt &
  (
    | {
        op: 'expect';
        /** Its place among the expects, 0.. */
        seq: number;
        msg: HostMessage;
        /** mmioRead: the bytes the device answered (undefined: an error, or no answer recorded). */
        answer?: Uint8Array;
        half?: Half;
        /** A doorbell write after which the recorded device changed nothing (idleKicks). */
        idle?: boolean;
      }
    | {
        op: 'read';
        key: number;
        iova: bigint;
        len: number;
        /** Pushed with the doorbell write of expect `kick` (else a DMA read of the device's). */
        pushed: boolean;
        kick?: number;
      }
    | {
        op: 'readDone';
        key: number;
        ok: boolean;
        data: Uint8Array;
        iova: bigint;
        pushed: boolean;
        kick?: number;
        /** A push of the driver area of this virtqueue push rule (its avail idx at byte 2). */
        avail?: number;
      }
    | { op: 'emit'; rec: EmitRecord }
    | { op: 'end'; why: 'detach' | 'unplug' }
  );

export interface Script {
  steps: Step[];
  /** Expect steps. */
  expects: number;
  /** [iova, length] of every range the recorded device used (DMA, pushes, push rules' rings). */
  used: [bigint, number][];
}

const within = (spans: readonly Span[], off: number, len: number) =>
  spans.some((s) => off >= s.offset && off + len <= s.offset + s.length);

/** NVMe Base 2.0 §4.2: 64-byte SQ entries. virtio 1.2 §2.7: 16-byte descriptors; the driver area
 *  is flags, idx, ring[size], used_event. */
const SQE_BYTES = 64;
const DESC_BYTES = 16;

export function compile(records: readonly ReplayRecord[], description: DeviceDescription): Script {
  const volatile = new Map(description.bars.map((b) => [b.index, b.volatile]));
  const steps: Step[] = [];
  const used: [bigint, number][] = [];
  let seq = 0;
  let key = 0;
  /** Recorded DMA read tag -> its read's key, until the completion. */
  const reads = new Map<number, { key: number; iova: bigint }>();
  /** Pushes waiting for the MMIO write they came in front of. */
  let pushes: (RecordAt & { iova: bigint; data: Uint8Array })[] = [];
  /** The push rules the recorded device had set, by id. */
  const rules = new Map<number, PushRule>();

  /** Each volatile read's answer, by tag (tags repeat: the first after the read is its). */
  const completions = new Map<number, Extract<ReplayRecord, { kind: 'mmioReadCpl' }>[]>();
  for (const r of records) {
    if (!r.toHost || r.kind !== 'mmioReadCpl') continue;
    const list = completions.get(r.tag);
    if (list) list.push(r);
    else completions.set(r.tag, [r]);
  }

  for (const r of records) {
    const at: RecordAt = { n: r.n, us: r.us };
    if (!r.toHost) {
      switch (r.kind) {
        case 'mmioWrite': {
          steps.push({ ...at, op: 'expect', seq: seq++, msg: r });
          // The doorbell's pushes became readable with it: read them one after the other, in the
          // order the host walked them (a ring, then the descriptors it names, then the tables and
          // buffers those name): each one's addresses are learned before the next is translated.
          for (const p of pushes) {
            const k = key++;
            const where = { n: p.n, us: p.us, iova: p.iova, pushed: true, kick: seq - 1 };
            const avail = [...rules].find(([, x]) => x.kind === 'virtq' && x.avail === p.iova)?.[0];
            steps.push({ ...where, op: 'read', key: k, len: p.data.length });
            steps.push({ ...where, op: 'readDone', key: k, ok: true, data: p.data, avail });
          }
          pushes = [];
          break;
        }
        case 'mmioRead': {
          if (!within(volatile.get(r.bar) ?? [], r.offset, r.size)) break;
          const cpl = completions.get(r.tag)?.find((c) => c.n > r.n);
          const answer = cpl?.ok && cpl.data.length === r.size ? cpl.data : undefined;
          steps.push({ ...at, op: 'expect', seq: seq++, msg: r, answer });
          break;
        }
        case 'configWrite':
        case 'functionReset':
          steps.push({ ...at, op: 'expect', seq: seq++, msg: r });
          break;
        case 'detach':
          steps.push({ ...at, op: 'expect', seq: seq++, msg: { kind: 'detach' } });
          steps.push({ ...at, op: 'end', why: 'detach' });
          break;
        case 'dmaReadCpl': {
          const rd = reads.get(r.tag);
          if (!rd) break;
          reads.delete(r.tag);
          steps.push({
            ...at,
            op: 'readDone',
            key: rd.key,
            ok: r.ok,
            data: r.data,
            iova: rd.iova,
            pushed: false,
          });
          break;
        }
        case 'push':
          pushes.push({ ...at, iova: r.iova, data: r.data });
          used.push([r.iova, r.data.length]);
          break;
        case 'hostOther':
          break;
      }
      continue;
    }
    switch (r.kind) {
      case 'dmaRead': {
        const k = key++;
        reads.set(r.tag, { key: k, iova: r.iova });
        steps.push({ ...at, op: 'read', key: k, iova: r.iova, len: r.len, pushed: false });
        used.push([r.iova, r.len]);
        break;
      }
      case 'dmaWrite':
        used.push([r.iova, r.data.length]);
        steps.push({ ...at, op: 'emit', rec: r });
        break;
      case 'pushRule':
        if (r.rule) rules.set(r.id, r.rule);
        else rules.delete(r.id);
        if (r.rule?.kind === 'virtq') {
          used.push([r.rule.desc, r.rule.size * DESC_BYTES], [r.rule.avail, 6 + 2 * r.rule.size]);
        } else if (r.rule?.kind === 'nvme-sq') {
          used.push([r.rule.base, r.rule.entries * SQE_BYTES]);
          if (r.rule.eventIdx !== undefined) used.push([r.rule.eventIdx, 4]);
        }
        steps.push({ ...at, op: 'emit', rec: r });
        break;
      case 'shadow':
      case 'interrupt':
      case 'virtqRound':
        steps.push({ ...at, op: 'emit', rec: r });
        break;
      case 'unplug':
        steps.push({ ...at, op: 'end', why: 'unplug' });
        break;
      case 'mmioReadCpl':
      case 'deviceOther':
        break;
    }
  }
  pairHalves(steps);
  markIdle(steps, description);
  return { steps: afterTheirWork(steps), expects: seq, used };
}

/**
 * Marks the doorbell writes (writes to a description's doorbell range) that brought the recorded
 * device nothing: a driver's kick with no new work, or pcinet.ko's recheck of a ring (a VirtqDone's
 * kick) racing the driver's own. Whether one happens depends on timing, not on what the driver
 * does, so the replay lets the live run skip them, or send one more (ReplayDevice, "idle kicks").
 *
 * A kick that pushed a virtqueue's driver area brought nothing when the area's avail idx is the one
 * its previous push showed: what the device does after it is the work of an earlier kick, whose
 * answer the recording had come after this one (the device was still at it). Any other kick brought
 * nothing when the device changed nothing after it: no register, interrupt, push rule or DMA read
 * (pushed bytes it may have read), no progress in a virtqueue round, DMA writes only of bytes that
 * were there already.
 */
function markIdle(steps: Step[], description: DeviceDescription): void {
  const doorbells = new Map(description.bars.map((b) => [b.index, b.doorbell]));
  const written = new Map<string, string>();
  /** Per virtqueue push rule: the avail idx of the last push of its driver area. */
  const availIdx = new Map<number, number>();
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
  let current: (Step & { op: 'expect' }) | undefined;
  let idle = false;
  /** The current kick pushed a driver area: whether its avail idx had not moved. */
  let nothingNew: boolean | undefined;
  const close = () => {
    if (current && (nothingNew ?? idle)) current.idle = true;
  };
  for (const s of steps) {
    if (s.op === 'expect') {
      close();
      const m = s.msg;
      current = s;
      idle = m.kind === 'mmioWrite' && within(doorbells.get(m.bar) ?? [], m.offset, m.data.length);
      nothingNew = undefined;
      continue;
    }
    if (s.op === 'readDone' && s.avail !== undefined && s.ok && s.data.length >= 4) {
      const idx = rd16(s.data, 2);
      const before = availIdx.get(s.avail);
      availIdx.set(s.avail, idx);
      if (idle && s.kick === current?.seq) nothingNew = (nothingNew ?? true) && before === idx;
    }
    if (s.op === 'read') {
      if (!s.pushed) idle = false;
    } else if (s.op === 'emit') {
      const r = s.rec;
      if (r.kind === 'dmaWrite') {
        const k = `${r.iova}+${r.data.length}`;
        const same = written.get(k) === hex(r.data);
        written.set(k, hex(r.data));
        if (!same) idle = false;
      } else if (r.kind !== 'virtqRound' || r.round.oldUsed !== r.round.newUsed) idle = false;
    } else if (s.op === 'end') idle = false;
  }
  close();
}

/**
 * Each idle kick (with the reads of its pushes) moved to just before the next host message or the
 * end: what the recording has after it is an earlier kick's work, which must not wait for a kick
 * the live run may never send (the live driver waits for that work first).
 */
function afterTheirWork(steps: Step[]): Step[] {
  const out: Step[] = [];
  let held: Step[] = [];
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i]!;
    if (s.op === 'expect' || s.op === 'end') {
      out.push(...held);
      held = [];
    }
    if (s.op === 'expect' && s.idle) {
      held.push(s);
      while (steps[i + 1] && isRead(steps[i + 1]!) && (steps[i + 1] as { kick?: number }).kick === s.seq)
        held.push(steps[++i]!);
      continue;
    }
    out.push(s);
  }
  out.push(...held);
  return out;
}

const isRead = (s: Step) => s.op === 'read' || s.op === 'readDone';

/** Marks 32-bit writes that are the two halves of one 64-bit register, one right after the other
 *  among the host's messages (lo_hi_writeq, hi_lo_writeq, virtio's queue addresses). */
function pairHalves(steps: Step[]): void {
  const expects = steps.filter((s) => s.op === 'expect');
  for (let i = 0; i + 1 < expects.length; i++) {
    const a = expects[i]!;
    const b = expects[i + 1]!;
    if (a.msg.kind !== 'mmioWrite' || b.msg.kind !== 'mmioWrite' || a.half) continue;
    if (a.msg.data.length !== 4 || b.msg.data.length !== 4 || a.msg.bar !== b.msg.bar) continue;
    if (a.msg.offset % 4 !== 0 || (a.msg.offset ^ 4) !== b.msg.offset) continue;
    const lo = a.msg.offset < b.msg.offset ? a.msg.data : b.msg.data;
    const hi = a.msg.offset < b.msg.offset ? b.msg.data : a.msg.data;
    const value = (BigInt(u32(hi)) << 32n) | BigInt(u32(lo));
    const at = a.msg.offset & ~7;
    a.half = { at, value, first: true };
    b.half = { at, value, first: false };
    i++;
  }
}

const u32 = (b: Uint8Array) => (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;

const hex = (v: number | bigint) => `0x${v.toString(16)}`;
/** Bytes for a message: at most 16 of them. */
export function bytes(b: Uint8Array, from = 0): string {
  const part = Buffer.from(b.subarray(from, from + 16)).toString('hex');
  return b.length - from > 16 ? `${part}…` : part;
}

/** A host message for a person: "MmioWrite bar 0 +0x3000 [2] 0000". */
export function describeHost(m: HostMessage): string {
  switch (m.kind) {
    case 'mmioWrite':
      return `MmioWrite bar ${m.bar} +${hex(m.offset)} [${m.data.length}] ${bytes(m.data)}`;
    case 'mmioRead':
      return `MmioRead bar ${m.bar} +${hex(m.offset)} [${m.size}]`;
    case 'configWrite':
      return `ConfigWrite +${hex(m.offset)} [${m.size}] = ${hex(m.value)}`;
    case 'functionReset':
      return 'FunctionReset';
    case 'detach':
      return 'Detach (the host removed the device)';
  }
}

/** Whether a live message is the recorded one: the same kind at the same place and size (the
 *  data is compared after, with the addresses in it relocated). */
export function sameMessage(want: HostMessage, got: HostMessage): boolean {
  if (want.kind !== got.kind) return false;
  switch (want.kind) {
    case 'mmioWrite': {
      const g = got as typeof want;
      return g.bar === want.bar && g.offset === want.offset && g.data.length === want.data.length;
    }
    case 'mmioRead': {
      const g = got as typeof want;
      return g.bar === want.bar && g.offset === want.offset && g.size === want.size;
    }
    case 'configWrite': {
      const g = got as typeof want;
      return g.offset === want.offset && g.size === want.size;
    }
    default:
      return true;
  }
}
