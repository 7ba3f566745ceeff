// `pcinet trace`: the messages of a running session, from a control socket's "trace" command
// (endpoint/control.ts), into a pcapng file (cli/pcapng.ts; Wireshark decodes it with
// packaging/wireshark/pcinet.lua) and/or as decoded text lines, filtered by device, message kind
// and BAR offset on the serving side. `-r FILE` prints a capture as text.
import { existsSync } from 'node:fs';
import { ControlClient, ControlError, defaultControlPath } from '../proto/control.js';
import {
  DEFAULT_SNAPLEN,
  decodeRecord,
  MAX_SNAPLEN,
  MSG_KINDS,
  TF_HOST_SIDE,
  TF_LINK,
  TF_TO_HOST,
  TF_TRUNCATED,
  type TraceRecord,
} from '../proto/trace.js';
import { ErrorCode, type MsgKind, pcinet, u64 } from '../proto/wire.js';
import { UsageError } from './errors.js';
import { CaptureWriter, readCapture } from './pcapng.js';

export interface TraceFlags {
  socket?: string;
  write?: string;
  read?: string;
  text: boolean;
  maxSize: number;
  ring: number;
  duration?: number;
  count?: number;
  device?: number[];
  kind?: string[];
  bar?: number;
  offset?: string;
  snaplen: number;
  /** Whole messages, nothing filtered but --device, one file: a capture the replay device can
   *  play back (docs/devices.md "Record and replay"). */
  forReplay?: boolean;
  /** --snaplen was given on the command line (it conflicts with --for-replay). */
  snaplenGiven?: boolean;
}

/** A message kind as a person may type it: mmioWrite, MmioWrite, mmio_write, mmio-write. */
export function parseKind(text: string): MsgKind {
  const want = text.toLowerCase().replace(/[-_]/g, '');
  const k = MSG_KINDS.find((x) => x.toLowerCase() === want);
  if (!k) throw new UsageError(`unknown message kind "${text}" (one of ${MSG_KINDS.join(', ')})`);
  return k;
}

/** LO, LO-HI (HI excluded) or LO+LEN, decimal or 0x hex, as [lo, hi). */
export function parseOffsetRange(text: string): [number, number] {
  const n = (s: string) => {
    const v = Number(s);
    if (!/^(0x[0-9a-f]+|\d+)$/i.test(s) || !Number.isSafeInteger(v))
      throw new UsageError(`--offset ${text}: "${s}" is not a number`);
    return v;
  };
  const m = /^([^-+]+)(?:([-+])(.+))?$/.exec(text.trim());
  if (!m) throw new UsageError(`--offset ${text}: want LO, LO-HI or LO+LEN`);
  const lo = n(m[1]!);
  const hi = m[2] === '-' ? n(m[3]!) : m[2] === '+' ? lo + n(m[3]!) : lo + 1;
  if (hi <= lo) throw new UsageError(`--offset ${text}: the range is empty`);
  return [lo, hi];
}

const HEX_FIELDS = new Set(['iova', 'offset', 'ring', 'avail', 'value', 'length']);
const ENUM_FIELDS: Record<string, Record<number, string>> = {
  status: ErrorCode as unknown as Record<number, string>,
  code: ErrorCode as unknown as Record<number, string>,
  reason: ErrorCode as unknown as Record<number, string>,
  kind: pcinet.PushKind as unknown as Record<number, string>,
};
/** Payload bytes a text line shows. */
const TEXT_BYTES = 16;

function hex(b: Uint8Array, n: number): string {
  return Buffer.from(b.subarray(0, n)).toString('hex');
}

function fieldText(key: string, v: unknown, rec: TraceRecord): string | undefined {
  if (v === null || v === undefined) return undefined;
  if (v instanceof Uint8Array) {
    const total = key === 'data' && rec.flags & TF_TRUNCATED ? rec.origLen : v.length;
    if (key === 'linkKey') return `${key}[${v.length}]`;
    return `${key}[${total}]=${hex(v, TEXT_BYTES)}${total > TEXT_BYTES ? '…' : ''}`;
  }
  if (typeof v === 'object' && 'low' in (v as object)) {
    const b = u64(v as Parameters<typeof u64>[0]);
    return `${key}=${HEX_FIELDS.has(key) ? `0x${b.toString(16)}` : b.toString()}`;
  }
  if (typeof v === 'number') {
    const e = ENUM_FIELDS[key];
    if (e) return `${key}=${e[v] ?? v}`;
    return `${key}=${HEX_FIELDS.has(key) ? `0x${v.toString(16)}` : v}`;
  }
  if (typeof v === 'boolean' || typeof v === 'string') return `${key}=${v}`;
  if (Array.isArray(v)) return `${key}[${v.length}]`;
  if (key === 'desc') return `model=${(v as pcinet.IDeviceDescription).model ?? '?'}`;
  return undefined;
}

function clock(us: number): string {
  const d = new Date(Math.floor(us / 1000));
  const hms = d.toISOString().slice(11, 19);
  return `${hms}.${String(us % 1_000_000).padStart(6, '0')}`;
}

/** One record as a line: time, who recorded it, device, direction, path, kind, fields. */
export function formatRecord(us: number, rec: TraceRecord): string {
  const dir = rec.flags & TF_TO_HOST ? 'dev->host' : 'host->dev';
  const path = rec.flags & TF_LINK ? 'link' : 'sess';
  const side = rec.flags & TF_HOST_SIDE ? 'H' : 'E';
  const kind = rec.kind ?? '?';
  const body =
    (rec.kind ? (rec.msg as unknown as Record<string, Record<string, unknown>>)[rec.kind] : {}) ?? {};
  const fields = Object.keys(body)
    .filter((k) => k !== 'dev')
    .map((k) => fieldText(k, body[k], rec))
    .filter((x) => x !== undefined);
  return `${clock(us)} ${side} dev${rec.dev} ${dir} ${path} ${kind.padEnd(13)} ${fields.join(' ')}`.trimEnd();
}

/** The socket to trace on: --socket, else the endpoint's (it sees kernel links too), else the
 *  host-agent's. */
function traceSocket(given: string | undefined): string {
  if (given) return given;
  for (const p of [defaultControlPath('endpoint'), defaultControlPath('host')]) if (existsSync(p)) return p;
  throw new Error(
    `no control socket at ${defaultControlPath('endpoint')} or ${defaultControlPath('host')}: is pcinet endpoint running (with another --control, give it as --socket)?`,
  );
}

export async function runTrace(
  o: TraceFlags,
  out: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
  err: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
): Promise<number> {
  if (o.read) {
    const { packets, dropped } = readCapture(o.read);
    for (const [us, b] of packets) out(formatRecord(us, decodeRecord(b)));
    if (dropped) err(`trace: ${dropped} messages were dropped while capturing`);
    return 0;
  }
  if (o.forReplay) o = forReplay(o);
  const kinds = o.kind?.map(parseKind);
  const offset = o.offset !== undefined ? parseOffsetRange(o.offset) : undefined;
  const text = o.text || !o.write;
  const path = traceSocket(o.socket);
  const client = await ControlClient.connect(path);
  if (o.forReplay) {
    try {
      for (const line of await attachedAlready(client, o.device)) err(line);
    } catch (e) {
      client.close();
      throw e;
    }
  }
  const writer = o.write
    ? new CaptureWriter({
        path: o.write,
        maxBytes: o.maxSize,
        ring: o.ring,
        snaplen: o.snaplen,
        name: `pcinet ${path}`,
      })
    : undefined;
  let seen = 0;
  let dropped = 0;
  let why = '';
  let last = 0;
  const req = client.request(
    'trace',
    { devs: o.device, kinds, bar: o.bar, offset, snaplen: o.snaplen },
    (e) => {
      const ev = e as { records?: [number, string][]; dropped?: number; started?: object };
      if (ev.started) {
        err(`trace: capturing on ${path}${o.write ? ` into ${o.write}` : ''} (Ctrl-C stops)`);
        return;
      }
      dropped += ev.dropped ?? 0;
      if (writer) writer.dropped = dropped;
      for (const [us, b64] of ev.records ?? []) {
        if (why) break;
        const rec = Buffer.from(b64, 'base64');
        last = us;
        if (writer && !writer.write(us, rec)) {
          why = `${o.write} reached ${o.maxSize} bytes`;
          client.cancel(req.id);
          break;
        }
        if (text) out(formatRecord(us, decodeRecord(rec)));
        if (++seen === o.count) {
          why = `${seen} messages`;
          client.cancel(req.id);
          break;
        }
      }
    },
  );
  const stop = (reason: string) => {
    if (!why) why = reason;
    client.cancel(req.id);
  };
  const onSig = () => stop('interrupted');
  process.on('SIGINT', onSig);
  process.on('SIGTERM', onSig);
  const timer = o.duration ? setTimeout(() => stop(`${o.duration} s`), o.duration * 1000) : undefined;
  try {
    await req;
  } catch (e) {
    // The traced process went away (it stopped, or was restarted): what was captured is kept.
    if (e instanceof ControlError) throw e;
    why ||= `${path} closed`;
  } finally {
    clearTimeout(timer);
    process.off('SIGINT', onSig);
    process.off('SIGTERM', onSig);
    writer?.close(last || Date.now() * 1000);
    client.close();
  }
  err(
    `trace: ${seen} messages${dropped ? `, ${dropped} dropped (the trace could not keep up)` : ''}` +
      `${why ? ` (stopped: ${why})` : ''}${writer ? `; ${writer.files.join(' ')}` : ''}`,
  );
  if (o.forReplay && dropped)
    err(
      `trace: ${o.write} cannot be replayed: it lost ${dropped} messages (capture again with less traffic)`,
    );
  else if (o.forReplay && writer?.full)
    err(`trace: ${o.write} ends where it reached --max-size: a replay of it ends there too`);
  return 0;
}

/** --for-replay: every message of the device(s), whole, into one file. */
function forReplay(o: TraceFlags): TraceFlags {
  const clash = [
    o.kind?.length && '--kind',
    o.bar !== undefined && '--bar',
    o.offset !== undefined && '--offset',
    o.ring > 0 && '--ring',
    o.snaplenGiven && '--snaplen',
    o.read && '-r',
  ].filter(Boolean);
  if (clash.length)
    throw new UsageError(
      `--for-replay records every message whole into one file: not with ${clash.join(', ')}`,
    );
  if (!o.write) throw new UsageError('--for-replay needs -w FILE');
  return { ...o, snaplen: MAX_SNAPLEN };
}

/** Warnings for devices the host has attached already: their capture misses the attach and the
 *  bring-up, which a replay starts from (it replays a later session of theirs, if one comes). */
async function attachedAlready(client: ControlClient, devs: number[] | undefined): Promise<string[]> {
  const s = (await client.request('status', {})) as { devices?: { dev: number; link: string }[] };
  return (s.devices ?? [])
    .filter((d) => (d.link === 'up' || d.link === 'pending') && (!devs?.length || devs.includes(d.dev)))
    .map(
      (d) =>
        `trace: device ${d.dev} is attached already: this capture misses its attach and bring-up, which a replay starts from (start the trace before the host connects, or restart pcinet host)`,
    );
}

export { DEFAULT_SNAPLEN };
