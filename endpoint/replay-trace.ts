// Reads a capture of `pcinet trace --for-replay` (a pcapng file of trace records, proto/trace.ts)
// for the replay model (devices/replay/): the session of one device from its Attach to its end, as
// plain records. Strict where cli/pcapng.ts's reader is lenient: a replay needs every message
// whole, so a capture that was cut, dropped messages, cut payloads to a snap length, or never saw
// the Attach is refused, saying what and where.
import { readFileSync, statSync } from 'node:fs';
import type { ReplayRecord, ReplayRecording } from '../devices/replay/records.js';
import {
  decodeRecord,
  LINKTYPE_PCINET,
  TF_HOST_SIDE,
  TF_TO_HOST,
  TF_TRUNCATED,
  type TraceRecord,
} from '../proto/trace.js';
import { ErrorCode, num, u64 } from '../proto/wire.js';
import { modelDescription, pushRule } from './describe.js';

/** pcapng block types (draft-ietf-opsawg-pcapng §4). */
const SHB = 0x0a0d0d0a;
const IDB = 0x00000001;
const ISB = 0x00000005;
const EPB = 0x00000006;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
/** isb_ifdrop: packets the capture lost. */
const ISB_IFDROP = 5;

const BLOCK_NAMES: Record<number, string> = {
  [SHB]: 'Section Header Block',
  [IDB]: 'Interface Description Block',
  [ISB]: 'Interface Statistics Block',
  [EPB]: 'Enhanced Packet Block',
};

/** Largest capture the replay loads: it holds the whole session in memory. A bring-up is KiB to a
 *  few MiB; a capture of bulk I/O is the wrong thing to replay anyway. */
export const MAX_REPLAY_BYTES = 1 << 30;

/** A capture the replay cannot use; the message says what and where. */
export class ReplayTraceError extends Error {
  override readonly name = 'ReplayTraceError';
}

interface Packet {
  /** 1-based, as Wireshark and `pcinet trace -r` count them. */
  n: number;
  us: number;
  rec: TraceRecord;
}

/** Every packet of the capture, decoded; throws ReplayTraceError on anything not whole. */
function readPackets(path: string, maxBytes: number): Packet[] {
  const fail = (why: string): never => {
    throw new ReplayTraceError(`trace ${path}: ${why}`);
  };
  let b: Buffer;
  try {
    const size = statSync(path).size;
    if (size > maxBytes)
      fail(`${size} bytes, more than a replay holds (${maxBytes}): record a bring-up, not bulk I/O`);
    b = readFileSync(path);
  } catch (e) {
    if (e instanceof ReplayTraceError) throw e;
    const err = e as NodeJS.ErrnoException;
    return fail(err.code === 'ENOENT' ? 'no such file' : `cannot be read (${err.code ?? err.message})`);
  }
  if (b.length < 12 || b.readUInt32LE(0) !== SHB)
    fail(`not a pcapng file (it starts with ${b.subarray(0, 8).toString('hex') || 'nothing'})`);
  const packets: Packet[] = [];
  let dropped = 0;
  let linktype = -1;
  let blocks = 0;
  for (let at = 0; at < b.length; ) {
    blocks++;
    if (at + 12 > b.length)
      fail(
        `cut at byte ${at}: ${b.length - at} bytes where block ${blocks} should start (was pcinet trace killed?)`,
      );
    const type = b.readUInt32LE(at);
    const len = b.readUInt32LE(at + 4);
    const name = BLOCK_NAMES[type] ?? `block type 0x${type.toString(16)}`;
    if (len < 12 || len % 4 !== 0) fail(`block ${blocks} (${name}) at byte ${at} says it has ${len} bytes`);
    if (at + len > b.length)
      fail(
        `cut at byte ${b.length}: block ${blocks} (${name}) at byte ${at} has ${len} bytes, only ${b.length - at} are there (was pcinet trace killed?)`,
      );
    if (b.readUInt32LE(at + len - 4) !== len)
      fail(`block ${blocks} (${name}) at byte ${at}: its trailing length is not ${len}`);
    if (type === SHB) {
      if (b.readUInt32LE(at + 8) !== BYTE_ORDER_MAGIC)
        fail(`section at byte ${at} is not little-endian pcapng (pcinet trace writes little-endian)`);
      if (at !== 0) fail(`a second section at byte ${at}: give one file of a ring, not several joined`);
    } else if (type === IDB) {
      if (linktype >= 0) fail(`a second interface at byte ${at}: not a capture of pcinet trace`);
      linktype = b.readUInt16LE(at + 8);
      if (linktype !== LINKTYPE_PCINET)
        fail(`its interface has link type ${linktype}, not pcinet's trace records (${LINKTYPE_PCINET})`);
    } else if (type === EPB) {
      const n = packets.length + 1;
      if (linktype < 0) fail(`packet ${n} at byte ${at} comes before any interface`);
      const cap = b.readUInt32LE(at + 20);
      if (28 + cap > len - 4)
        fail(`packet ${n} at byte ${at} says it has ${cap} bytes, its block holds less`);
      const us = b.readUInt32LE(at + 12) * 2 ** 32 + b.readUInt32LE(at + 16);
      let rec: TraceRecord;
      try {
        rec = decodeRecord(b.subarray(at + 28, at + 28 + cap));
      } catch (e) {
        return fail(`packet ${n} at byte ${at}: ${(e as Error).message}`);
      }
      packets.push({ n, us, rec });
    } else if (type === ISB) {
      for (let o = at + 20; o + 4 <= at + len - 4; ) {
        const code = b.readUInt16LE(o);
        const olen = b.readUInt16LE(o + 2);
        if (code === 0) break;
        if (code === ISB_IFDROP && olen === 8) dropped += Number(b.readBigUInt64LE(o + 4));
        o += 4 + ((olen + 3) & ~3);
      }
    }
    at += len;
  }
  if (dropped > 0)
    fail(
      `the capture lost ${dropped} messages (the trace could not keep up): a replay needs every one; capture again with less traffic on the endpoint`,
    );
  return packets;
}

const bytes = (b: Uint8Array | null | undefined) => b ?? new Uint8Array(0);

/** One trace record as a replay record. */
function replayRecord(p: Packet, us: number): ReplayRecord {
  const m = p.rec.msg;
  const at = { n: p.n, us };
  const kind = p.rec.kind;
  if (!(p.rec.flags & TF_TO_HOST)) {
    const host = { ...at, toHost: false as const };
    switch (kind) {
      case 'mmioWrite': {
        const w = m.mmioWrite!;
        return { ...host, kind, bar: w.bar ?? 0, offset: num(w.offset), data: bytes(w.data) };
      }
      case 'mmioRead': {
        const r = m.mmioRead!;
        return { ...host, kind, tag: r.tag ?? 0, bar: r.bar ?? 0, offset: num(r.offset), size: r.size ?? 0 };
      }
      case 'configWrite': {
        const c = m.configWrite!;
        return { ...host, kind, offset: c.offset ?? 0, size: c.size ?? 0, value: (c.value ?? 0) >>> 0 };
      }
      case 'functionReset':
        return { ...host, kind };
      case 'detach':
        return { ...host, kind };
      case 'dmaReadCpl': {
        const c = m.dmaReadCpl!;
        return {
          ...host,
          kind,
          tag: c.tag ?? 0,
          ok: (c.status ?? ErrorCode.OK) === ErrorCode.OK,
          data: bytes(c.data),
        };
      }
      case 'push': {
        const x = m.push!;
        return { ...host, kind, rule: x.rule ?? 0, iova: u64(x.iova), data: bytes(x.data) };
      }
      default:
        return { ...host, kind: 'hostOther', what: kind ?? '?' };
    }
  }
  const dev = { ...at, toHost: true as const };
  switch (kind) {
    case 'shadowUpdate': {
      const s = m.shadowUpdate!;
      return { ...dev, kind: 'shadow', bar: s.bar ?? 0, offset: num(s.offset), data: bytes(s.data) };
    }
    case 'mmioReadCpl': {
      const c = m.mmioReadCpl!;
      return {
        ...dev,
        kind,
        tag: c.tag ?? 0,
        ok: (c.status ?? ErrorCode.OK) === ErrorCode.OK,
        data: bytes(c.data),
      };
    }
    case 'dmaRead': {
      const r = m.dmaRead!;
      return { ...dev, kind, tag: r.tag ?? 0, iova: u64(r.iova), len: r.length ?? 0 };
    }
    case 'dmaWrite': {
      const w = m.dmaWrite!;
      return { ...dev, kind, iova: u64(w.iova), data: bytes(w.data) };
    }
    case 'interrupt':
      return { ...dev, kind, vector: m.interrupt!.vector ?? 0 };
    case 'pushRule':
      return { ...dev, kind, id: m.pushRule!.id ?? 0, rule: pushRule(m.pushRule!) };
    case 'virtqDone': {
      const v = m.virtqDone!;
      return {
        ...dev,
        kind: 'virtqRound',
        round: {
          rule: v.rule ?? 0,
          vector: v.interrupt ? (v.vector ?? 0) : undefined,
          oldUsed: v.oldUsed ?? 0,
          newUsed: v.newUsed ?? 0,
          eventIdx: v.eventIdx ?? false,
          kick: v.recheck ? (v.kick ?? 0) : undefined,
        },
      };
    }
    case 'detach':
      return { ...dev, kind: 'unplug' };
    default:
      return { ...dev, kind: 'deviceOther', what: kind ?? '?' };
  }
}

/**
 * The session of `device` in the capture at `path` (the first one, from its Attach to the host's
 * Detach, the endpoint's, the next Attach or the end of the capture). Without `device`, the capture
 * must hold one device's Attach. Throws ReplayTraceError saying what is wrong and where.
 */
export function loadReplayTrace(path: string, device?: number, maxBytes = MAX_REPLAY_BYTES): ReplayRecording {
  const packets = readPackets(path, maxBytes);
  const fail = (why: string): never => {
    throw new ReplayTraceError(`trace ${path}: ${why}`);
  };
  const attaches = packets.filter((p) => p.rec.kind === 'attach');
  const devs = [...new Set(packets.map((p) => p.rec.dev).filter((d) => d !== 0))].sort((a, b) => a - b);
  const hint = 'start pcinet trace --for-replay before the host connects, so that it records the attach';
  let dev = device;
  if (dev === undefined) {
    const attached = [...new Set(attaches.map((p) => p.rec.dev))];
    if (attached.length > 1) fail(`it holds devices ${attached.join(', ')}: pick one with device=N`);
    if (attached.length === 0)
      fail(
        packets.length === 0
          ? 'it holds no messages'
          : `it holds no device's Attach (devices ${devs.join(', ') || 'none'} appear after theirs): ${hint}`,
      );
    dev = attached[0]!;
  }
  const start = attaches.findIndex((p) => p.rec.dev === dev);
  if (start < 0) {
    if (!devs.includes(dev))
      fail(`it holds no messages of device ${dev} (devices in it: ${devs.join(', ') || 'none'})`);
    fail(`it holds no Attach of device ${dev}: the trace began after the host had attached it; ${hint}`);
  }
  const attach = attaches[start]!;
  if (attach.rec.flags & TF_HOST_SIDE)
    fail(
      `it was recorded on the host-agent (packet ${attach.n}), which does not see pcinet.ko's kernel links: record on the endpoint`,
    );
  let description: ReplayRecording['description'];
  try {
    description = modelDescription(attach.rec.msg.attach!.desc ?? {});
  } catch (e) {
    return fail(
      `the Attach (packet ${attach.n}) describes no device we can present: ${(e as Error).message}`,
    );
  }
  const records: ReplayRecord[] = [];
  for (const p of packets.slice(packets.indexOf(attach) + 1)) {
    if (p.rec.dev !== dev) continue;
    if (p.rec.kind === 'attach') break; // the next session
    if (p.rec.flags & TF_TRUNCATED)
      fail(
        `packet ${p.n} (${p.rec.kind}) was cut to the snap length (${p.rec.origLen} bytes of payload): record with pcinet trace --for-replay, which keeps whole messages`,
      );
    let r: ReplayRecord;
    try {
      r = replayRecord(p, p.us - attach.us);
    } catch (e) {
      return fail(`packet ${p.n} (${p.rec.kind}): ${(e as Error).message}`);
    }
    records.push(r);
    if (p.rec.kind === 'detach') break;
  }
  return { source: `${path}, device ${dev}`, description, records, attachN: attach.n };
}
