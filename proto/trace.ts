// Trace records: a session's messages as `pcinet trace` captures them (docs/OPERATING.md, "pcinet trace"). One record
// is one message, as a pcapng packet of link type LINKTYPE_USER0 that the Wireshark dissector
// (packaging/wireshark/pcinet.lua) decodes:
//
//   0  u8     TRACE_VERSION (1)
//   1  u8     flags: TF_TO_HOST (device -> host; else host -> device), TF_LINK (it travelled on the
//             device's kernel link, not the session), TF_TRUNCATED (its payload was cut to the
//             snap length), TF_HOST_SIDE (recorded by the host-agent; else by the endpoint)
//   2  u16    reserved, 0
//   4  u32le  device id (0: none)
//   8  u32le  the payload's length before truncation (DmaWrite/DmaReadCpl/Push/ShadowUpdate/
//             MmioWrite/MmioReadCpl data; 0 for messages without one)
//   12 ...    the message, an encoded pcinet.Msg (its payload cut to the snap length)
//
// A Tap is what the data path calls for every message while a trace is running, and only then: the
// runtime and the session hold `tap: Tap | undefined` and test it once per message, so a trace
// that is off costs that one branch.
import { ControlError, type ControlHandler } from './control.js';
import { kindOf, type Msg, type MsgKind, num, pcinet } from './wire.js';

export const TRACE_VERSION = 1;
export const TRACE_HEADER = 12;
export const TF_TO_HOST = 1;
export const TF_LINK = 2;
export const TF_TRUNCATED = 4;
export const TF_HOST_SIDE = 8;

/** pcapng link type of trace records: LINKTYPE_USER0, which no other protocol claims. */
export const LINKTYPE_PCINET = 147;

/** Payload bytes kept per message by default: a DMA of 128 KiB costs the trace its first 256. */
export const DEFAULT_SNAPLEN = 256;

export interface Tap {
  /** One message of device `dev` (0: not a device's), in the direction given, on the session or
   *  a kernel link. Called synchronously on the data path: must not throw or block. */
  record(m: Msg, toHost: boolean, link: boolean, dev: number): void;
}

/** Which messages a trace keeps. Empty lists and absent fields keep everything. */
export interface TraceFilter {
  devs?: number[];
  kinds?: MsgKind[];
  /** MMIO at this BAR (MmioWrite, MmioRead and its completion, ShadowUpdate)... */
  bar?: number;
  /** ... in [lo, hi). With `bar` or `offset`, messages without a BAR offset are not kept. */
  offset?: [number, number];
}

/** Every message kind (the compiler checks the list is complete). */
const KINDS: Record<MsgKind, true> = {
  hello: true,
  resume: true,
  keepAlive: true,
  error: true,
  attach: true,
  attachResult: true,
  detach: true,
  functionReset: true,
  statsRequest: true,
  stats: true,
  mmioWrite: true,
  mmioRead: true,
  dmaReadCpl: true,
  configWrite: true,
  push: true,
  pushDrop: true,
  pushRuleSet: true,
  shadowUpdate: true,
  writesApplied: true,
  mmioReadCpl: true,
  dmaRead: true,
  dmaWrite: true,
  interrupt: true,
  pushRule: true,
  virtqDone: true,
};
export const MSG_KINDS = Object.keys(KINDS) as MsgKind[];

/** The message's device id, if it has one. */
export function devOf(m: Msg, kind = kindOf(m)): number {
  if (!kind) return 0;
  const body = (m as Record<string, { dev?: number | null } | null | undefined>)[kind];
  return body?.dev ?? 0;
}

/** Message bodies whose last field is a payload the trace may cut. */
const PAYLOAD: Partial<Record<MsgKind, true>> = {
  mmioWrite: true,
  mmioReadCpl: true,
  shadowUpdate: true,
  dmaWrite: true,
  dmaReadCpl: true,
  push: true,
};

/** Checks a filter as it arrives from a client: a message naming what is wrong, or undefined. */
export function checkFilter(f: TraceFilter): string | undefined {
  for (const d of f.devs ?? []) if (!Number.isInteger(d) || d < 0) return `device ${d}: not a device id`;
  for (const k of f.kinds ?? []) if (!MSG_KINDS.includes(k)) return `unknown message kind "${k}"`;
  if (f.bar !== undefined && !(Number.isInteger(f.bar) && f.bar >= 0 && f.bar <= 5))
    return `BAR ${f.bar}: not 0..5`;
  if (f.offset !== undefined) {
    const [lo, hi] = f.offset;
    if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || lo < 0 || hi <= lo)
      return `offset range ${lo}..${hi}: want 0 <= LO < HI`;
  }
  return undefined;
}

/** A filter, compiled: keep(m) says whether a message is traced. MmioReadCpls are kept when the
 *  MmioRead they answer was (by tag, per device). */
export class TraceSelector {
  readonly #f: TraceFilter;
  readonly #devs: Set<number> | undefined;
  readonly #kinds: Set<string> | undefined;
  readonly #byOffset: boolean;
  /** dev -> tags of kept MmioReads whose completion has not passed yet. */
  readonly #reads = new Map<number, Set<number>>();

  constructor(f: TraceFilter) {
    this.#f = f;
    this.#devs = f.devs?.length ? new Set(f.devs) : undefined;
    this.#kinds = f.kinds?.length ? new Set(f.kinds) : undefined;
    this.#byOffset = f.bar !== undefined || f.offset !== undefined;
  }

  keep(m: Msg, kind: MsgKind | undefined, dev: number): boolean {
    if (this.#devs && !this.#devs.has(dev)) return false;
    if (this.#kinds && !(kind && this.#kinds.has(kind))) return false;
    if (!this.#byOffset) return true;
    let at: { bar?: number | null; offset?: unknown } | null | undefined;
    let len = 1;
    if (kind === 'mmioWrite' || kind === 'shadowUpdate') {
      at = m[kind];
      len = Math.max(1, m[kind]!.data?.length ?? 1);
    } else if (kind === 'mmioRead') {
      at = m.mmioRead;
      len = Math.max(1, m.mmioRead!.size ?? 1);
    } else if (kind === 'mmioReadCpl') {
      const tags = this.#reads.get(dev);
      const tag = m.mmioReadCpl!.tag ?? 0;
      if (!tags?.has(tag)) return false;
      tags.delete(tag);
      return true;
    } else return false;
    if (this.#f.bar !== undefined && (at?.bar ?? 0) !== this.#f.bar) return false;
    if (this.#f.offset) {
      const off = num(at?.offset as number, 'offset');
      const [lo, hi] = this.#f.offset;
      if (off + len <= lo || off >= hi) return false;
    }
    if (kind === 'mmioRead') {
      const tags = this.#reads.get(dev) ?? new Set<number>();
      this.#reads.set(dev, tags);
      tags.add(m.mmioRead!.tag ?? 0);
    }
    return true;
  }
}

const REDACTED = new Uint8Array(0);

/** Encodes one trace record: the header, then the message with its payload cut to `snaplen`. */
export function encodeRecord(m: Msg, flags: number, dev: number, snaplen: number): Uint8Array {
  const kind = kindOf(m);
  let msg = m;
  let orig = 0;
  if (kind && PAYLOAD[kind]) {
    const body = (m as Record<string, { data?: Uint8Array | null }>)[kind]!;
    const data = body.data ?? undefined;
    orig = data?.length ?? 0;
    if (data && data.length > snaplen) {
      msg = { [kind]: { ...body, data: data.subarray(0, snaplen) } };
      flags |= TF_TRUNCATED;
    }
  } else if (kind === 'attach' && m.attach!.linkKey?.length) {
    // A sealed link's key stays out of every capture.
    msg = { attach: { ...m.attach!, linkKey: REDACTED } };
  }
  const bytes = pcinet.Msg.encode(msg).finish();
  const out = Buffer.allocUnsafe(TRACE_HEADER + bytes.length);
  out[0] = TRACE_VERSION;
  out[1] = flags;
  out.writeUInt16LE(0, 2);
  out.writeUInt32LE(dev >>> 0, 4);
  out.writeUInt32LE(orig >>> 0, 8);
  out.set(bytes, TRACE_HEADER);
  return out;
}

export interface TraceRecord {
  flags: number;
  dev: number;
  /** The payload's length before truncation. */
  origLen: number;
  msg: pcinet.Msg;
  kind: MsgKind | undefined;
}

/** Decodes a record encodeRecord() made (throws on anything else). */
export function decodeRecord(b: Uint8Array): TraceRecord {
  if (b.length < TRACE_HEADER || b[0] !== TRACE_VERSION)
    throw new Error(`not a pcinet trace record (version ${b[0]}, ${b.length} bytes)`);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const msg = pcinet.Msg.decode(b.subarray(TRACE_HEADER));
  return { flags: b[1]!, dev: v.getUint32(4, true), origLen: v.getUint32(8, true), msg, kind: msg.body };
}

/** Microseconds since the epoch, with the monotonic clock's resolution. */
export function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Records of one subscriber not yet handed over before it is slow: more are dropped (counted). */
export const MAX_PENDING_RECORDS = 4096;

export interface TraceOptions {
  filter?: TraceFilter;
  snaplen?: number;
  /** The records of a tick, [µs since the epoch, record][]; false: the consumer is full (what
   *  comes before it takes more is dropped and counted). */
  sink: (records: [number, Uint8Array][], dropped: number) => boolean;
}

interface Subscriber {
  selector: TraceSelector;
  snaplen: number;
  sink: TraceOptions['sink'];
  pending: [number, Uint8Array][];
  dropped: number;
  full: boolean;
}

/** Fans one data path's messages out to the traces running on it. `onActive(tap)` is told when the
 *  first trace starts (install `tap` on the data path) and when the last ends (undefined: take it
 *  off again), so nothing is recorded while nobody traces. */
export class TraceHub implements Tap {
  readonly #subs = new Set<Subscriber>();
  readonly #flags: number;
  readonly #onActive: (tap: Tap | undefined) => void;
  #scheduled = false;

  /** `hostSide`: records say they were made by the host-agent. */
  constructor(onActive: (tap: Tap | undefined) => void, hostSide = false) {
    this.#onActive = onActive;
    this.#flags = hostSide ? TF_HOST_SIDE : 0;
  }

  get active(): boolean {
    return this.#subs.size > 0;
  }

  /** Starts a trace; the function returned ends it (what is pending is handed over first). */
  subscribe(o: TraceOptions): () => void {
    const s: Subscriber = {
      selector: new TraceSelector(o.filter ?? {}),
      snaplen: o.snaplen ?? DEFAULT_SNAPLEN,
      sink: o.sink,
      pending: [],
      dropped: 0,
      full: false,
    };
    this.#subs.add(s);
    if (this.#subs.size === 1) this.#onActive(this);
    return () => {
      if (!this.#subs.delete(s)) return;
      this.#hand(s);
      if (this.#subs.size === 0) this.#onActive(undefined);
    };
  }

  /** A subscriber's consumer took what it had: records are kept again. */
  drained(sink: TraceOptions['sink']): void {
    for (const s of this.#subs) if (s.sink === sink) s.full = false;
  }

  record(m: Msg, toHost: boolean, link: boolean, dev: number): void {
    const kind = kindOf(m);
    const ts = nowUs();
    const flags = this.#flags | (toHost ? TF_TO_HOST : 0) | (link ? TF_LINK : 0);
    for (const s of this.#subs) {
      if (!s.selector.keep(m, kind, dev)) continue;
      if (s.full || s.pending.length >= MAX_PENDING_RECORDS) {
        s.dropped++;
        continue;
      }
      s.pending.push([ts, encodeRecord(m, flags, dev, s.snaplen)]);
    }
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => {
        this.#scheduled = false;
        for (const s of this.#subs) this.#hand(s);
      });
    }
  }

  #hand(s: Subscriber): void {
    if (s.pending.length === 0 && s.dropped === 0) return;
    const records = s.pending;
    s.pending = [];
    const dropped = s.dropped;
    s.dropped = 0;
    if (!s.sink(records, dropped)) s.full = true;
  }
}

/** Largest snap length a trace may ask for: a whole DMA chunk, the largest payload a message
 *  carries, so a trace with it keeps every message whole (`pcinet trace --for-replay`). */
export const MAX_SNAPLEN = 256 << 10;

/** A trace request's arguments, checked: the filter, snap length, and how many records at most. */
export function traceArgs(args: Record<string, unknown>): { filter: TraceFilter; snaplen: number } {
  const ints = (v: unknown, what: string): number[] | undefined => {
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x)))
      throw new ControlError('BAD_ARGUMENT', `"${what}" must be a list of integers`);
    return v as number[];
  };
  const filter: TraceFilter = {
    devs: ints(args.devs, 'devs'),
    kinds: args.kinds as MsgKind[] | undefined,
    bar: args.bar as number | undefined,
    offset: args.offset as [number, number] | undefined,
  };
  if (filter.kinds !== undefined && !Array.isArray(filter.kinds))
    throw new ControlError('BAD_ARGUMENT', '"kinds" must be a list of message kinds');
  if (filter.offset !== undefined && (!Array.isArray(filter.offset) || filter.offset.length !== 2))
    throw new ControlError('BAD_ARGUMENT', '"offset" must be [LO, HI]');
  const bad = checkFilter(filter);
  if (bad) throw new ControlError('BAD_ARGUMENT', bad);
  const snaplen = (args.snaplen as number | undefined) ?? DEFAULT_SNAPLEN;
  if (!Number.isInteger(snaplen) || snaplen < 0 || snaplen > MAX_SNAPLEN)
    throw new ControlError('BAD_ARGUMENT', `"snaplen" must be 0..${MAX_SNAPLEN}`);
  return { filter, snaplen };
}

/**
 * "trace": events {records: [[µs, base64 record], ...], dropped} until the client cancels; the
 * final result says how many were sent and dropped. Records the client is too slow for are
 * dropped (and counted), never queued without bound.
 */
export function traceHandler(hub: TraceHub): ControlHandler {
  return async (args, ctx) => {
    const { filter, snaplen } = traceArgs(args);
    let sent = 0;
    let dropped = 0;
    const sink = (records: [number, Uint8Array][], lost: number) => {
      sent += records.length;
      dropped += lost;
      const ok = ctx.emit({
        records: records.map(([ts, r]) => [ts, Buffer.from(r).toString('base64')]),
        dropped: lost,
      });
      if (!ok) void ctx.drained().then(() => hub.drained(sink));
      return ok;
    };
    const stop = hub.subscribe({ filter, snaplen, sink });
    ctx.emit({ started: { snaplen } });
    await new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      else ctx.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    stop();
    return { records: sent, dropped };
  };
}
