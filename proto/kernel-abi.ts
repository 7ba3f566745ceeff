// The /dev/pcinet record format, mirrored from kernel/uapi/pcinet.h (docs/KERNEL-ABI.md). Every
// record: u16 type, u16 flags (0), u32 len (whole record, multiple of 8); little-endian. The same
// records are the wire format of the kernel link (W_CONNECT): pcinet.ko sends its R_* records to
// the endpoint, which answers with W_* records (proto/kernel-link.ts).
import { u64Of32 } from '../devices/pci/le.js';
import { pcinet } from './wire.js';

export const ABI_VERSION = 4;
export const MAX_DATA = 65536;
export const CONFIG_SIZE = 4096;
export const NUM_BARS = 6;
export const HDR = 8;

export const W = {
  ATTACH: 1,
  RANGE: 2,
  SHADOW: 3,
  START: 4,
  WRITES_APPLIED: 5,
  MMIO_READ_CPL: 6,
  DMA_READ: 7,
  DMA_WRITE: 8,
  INTERRUPT: 9,
  DETACH: 10,
  LINK_DOWN: 11,
  LINK_UP: 12,
  PUSH_RULE: 13,
  CONNECT: 14,
  VIRTQ_DONE: 15,
} as const;

export const R = {
  ATTACHED: 0x81,
  MMIO_WRITE: 0x82,
  MMIO_READ: 0x83,
  CONFIG_WRITE: 0x84,
  DMA_READ_CPL: 0x85,
  FUNCTION_RESET: 0x86,
  PUSH: 0x87,
  PUSH_DROP: 0x88,
  PUSH_RULE_SET: 0x89,
  LINK_CLOSED: 0x8a,
} as const;

export const BAR_KIND = { NONE: 0, MEM32: 1, MEM64: 2, IO: 3 } as const;
export const RANGE_VOLATILE = 1;
export const RANGE_DOORBELL = 2;
export const STATUS_OK = 0;
export const STATUS_ERROR = 1;

/** Push rules (docs/PUSH.md): enum pcinet_push_kind, PCINET_PUSH_F_INDIRECT, the limits. */
export const PUSH_KIND = { NONE: 0, NVME_SQ: 1, VIRTQ: 2 } as const;
export const PUSH_F_INDIRECT = 1;
// One source for the limits the models and the sim use too; abi.test.ts checks them against C.
export { MAX_PUSH_RULES, PUSH_MAX_BYTES } from '../devices/push.js';

/** sizeof(struct pcinet_w_push_rule). */
export const PUSH_RULE_SIZE = 72;
/** W_VIRTQ_DONE (docs/PUSH.md, "Virtqueue rounds"): its flags and size. */
export const VQ_F = { INTERRUPT: 1, EVENT_IDX: 2, RECHECK: 4 } as const;
export const VIRTQ_DONE_SIZE = 32;

/** The kernel link: the hello's magic (also the endpoint's answer), token length, sizes. */
export const LINK_MAGIC = Buffer.from('PCINETL1', 'latin1');
export const LINK_TOKEN = 16;
export const LINK_KEY = 32;
/** W_CONNECT flags: sealed frames (AES-256-GCM, kernel/uapi/pcinet.h). */
export const LINK_F_SEAL = 1;
/** Most record bytes in one sealed frame, and the tag after them. */
export const SEAL_MAX = 256 * 1024 - 64;
export const SEAL_TAG = 16;
/** sizeof(struct pcinet_link_hello), sizeof(struct pcinet_w_connect). */
export const LINK_HELLO_SIZE = 32;
export const CONNECT_SIZE = 88;
/** Largest record either way (an attach, or a DMA write with MAX_DATA bytes). */
export const MAX_RECORD = Math.max(HDR + 8 + 6 * 16 + 3 * 4096, HDR + 16 + MAX_DATA);

/** sizeof(struct pcinet_w_attach): header, version, vectors, 6 BARs of 16 bytes, three images. */
export const ATTACH_SIZE = HDR + 8 + NUM_BARS * 16 + 3 * CONFIG_SIZE;

const pad8 = (n: number) => (n + 7) & ~7;

function record(type: number, bodyLen: number): { buf: Buffer; body: number } {
  const len = pad8(HDR + bodyLen);
  const buf = Buffer.alloc(len);
  buf.writeUInt16LE(type, 0);
  buf.writeUInt32LE(len, 4);
  return { buf, body: HDR };
}

export interface AttachBar {
  index: number;
  size: bigint;
  kind: number;
  prefetchable: boolean;
}

export function attachRecord(o: {
  vectors: number;
  bars: AttachBar[];
  config: Uint8Array;
  wmask: Uint8Array;
  w1cmask: Uint8Array;
}): Buffer {
  const { buf } = record(W.ATTACH, ATTACH_SIZE - HDR);
  buf.writeUInt32LE(ABI_VERSION, 8);
  buf.writeUInt32LE(o.vectors, 12);
  for (const b of o.bars) {
    const at = 16 + 16 * b.index;
    buf.writeBigUInt64LE(b.size, at);
    buf.writeUInt32LE(b.kind, at + 8);
    buf.writeUInt32LE(b.prefetchable ? 1 : 0, at + 12);
  }
  const images = 16 + 16 * NUM_BARS;
  buf.set(o.config.subarray(0, CONFIG_SIZE), images);
  buf.set(o.wmask.subarray(0, CONFIG_SIZE), images + CONFIG_SIZE);
  buf.set(o.w1cmask.subarray(0, CONFIG_SIZE), images + 2 * CONFIG_SIZE);
  return buf;
}

export function rangeRecord(bar: number, kind: number, offset: bigint, length: bigint): Buffer {
  const { buf } = record(W.RANGE, 24);
  buf.writeUInt32LE(bar, 8);
  buf.writeUInt32LE(kind, 12);
  buf.writeBigUInt64LE(offset, 16);
  buf.writeBigUInt64LE(length, 24);
  return buf;
}

/** 2^32, and the largest u64 a double holds exactly. */
const TWO_32 = 0x1_0000_0000;
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);

/** The u64 at `at` of `b` (bounds-checked, as Node's readBigUInt64LE, which makes three bigints;
 *  below 2^53 — every BAR offset, most IOVAs — this makes one). */
export function getU64(b: Buffer, at: number): bigint {
  return u64Of32(b.readUInt32LE(at + 4), b.readUInt32LE(at));
}

/** `v` (0 <= v < 2^64) as the u64 at `at` of `b`. Below 2^53 without bigint arithmetic (Node's
 *  writeBigUInt64LE makes several bigints); a value out of range throws as Node's does. */
export function putU64(b: Buffer, at: number, v: bigint): void {
  if (v >= 0n && v <= SAFE_MAX) {
    const n = Number(v);
    const lo = n % TWO_32;
    b.writeUInt32LE(lo, at);
    b.writeUInt32LE((n - lo) / TWO_32, at + 4);
  } else b.writeBigUInt64LE(v, at);
}

/** Bytes of a W_SHADOW or W_DMA_WRITE record carrying `n` bytes (a 24-byte head, padding). */
export const dataRecordSize = (n: number) => pad8(HDR + 16 + n);

/** A record's header at `at` of `b` (a zeroed region of `len` bytes). */
function header(b: Buffer, at: number, type: number, len: number): void {
  b.writeUInt16LE(type, at);
  b.writeUInt32LE(len, at + 4);
}

/** W_SHADOW into the zeroed dataRecordSize(data.length) bytes at `at` of `b`. */
export function putShadow(b: Buffer, at: number, bar: number, offset: bigint, data: Uint8Array): void {
  header(b, at, W.SHADOW, dataRecordSize(data.length));
  b.writeUInt32LE(bar, at + 8);
  b.writeUInt32LE(data.length, at + 12);
  putU64(b, at + 16, offset);
  b.set(data, at + 24);
}

/** W_DMA_WRITE's 24-byte head for `size` bytes into zeroed bytes at `at` of `b` (the data follows
 *  it, then padding to dataRecordSize(size)). */
export function putDmaWriteHead(b: Buffer, at: number, iova: bigint, size: number): void {
  header(b, at, W.DMA_WRITE, dataRecordSize(size));
  b.writeUInt32LE(size, at + 8);
  putU64(b, at + 16, iova);
}

/** sizeof(struct pcinet_w_writes_applied), sizeof(struct pcinet_w_interrupt). */
export const WRITES_APPLIED_SIZE = 16;
export const INTERRUPT_SIZE = 16;

export function putWritesApplied(b: Buffer, at: number, count: bigint): void {
  header(b, at, W.WRITES_APPLIED, WRITES_APPLIED_SIZE);
  putU64(b, at + 8, count);
}

export function putInterrupt(b: Buffer, at: number, vector: number): void {
  header(b, at, W.INTERRUPT, INTERRUPT_SIZE);
  b.writeUInt32LE(vector, at + 8);
}

/** Shadow contents; `data` at most MAX_DATA bytes (callers split). */
export function shadowRecord(bar: number, offset: bigint, data: Uint8Array): Buffer {
  const buf = Buffer.alloc(dataRecordSize(data.length));
  putShadow(buf, 0, bar, offset, data);
  return buf;
}

export function emptyRecord(type: number): Buffer {
  return record(type, 0).buf;
}

export function writesAppliedRecord(count: bigint): Buffer {
  const buf = Buffer.alloc(WRITES_APPLIED_SIZE);
  putWritesApplied(buf, 0, count);
  return buf;
}

export function mmioReadCplRecord(tag: number, ok: boolean, data: Uint8Array): Buffer {
  const { buf } = record(W.MMIO_READ_CPL, 16);
  buf.writeUInt32LE(tag, 8);
  buf.writeUInt32LE(ok ? STATUS_OK : STATUS_ERROR, 12);
  buf.set(data.subarray(0, 8), 16);
  return buf;
}

export function dmaReadRecord(tag: number, iova: bigint, size: number): Buffer {
  const { buf } = record(W.DMA_READ, 16);
  buf.writeUInt32LE(tag, 8);
  buf.writeUInt32LE(size, 12);
  buf.writeBigUInt64LE(iova, 16);
  return buf;
}

export function dmaWriteRecord(iova: bigint, data: Uint8Array): Buffer {
  return Buffer.concat(dmaWriteRecordParts(iova, data));
}

/** The same record as its header, `data` itself (not copied) and the padding, if any. */
export function dmaWriteRecordParts(iova: bigint, data: Uint8Array): Uint8Array[] {
  const len = dataRecordSize(data.length);
  const head = Buffer.alloc(HDR + 16);
  putDmaWriteHead(head, 0, iova, data.length);
  const pad = len - head.length - data.length;
  return pad > 0 ? [head, data, Buffer.alloc(pad)] : [head, data];
}

export function interruptRecord(vector: number): Buffer {
  const buf = Buffer.alloc(INTERRUPT_SIZE);
  putInterrupt(buf, 0, vector);
  return buf;
}

/** W_VIRTQ_DONE's fields (docs/PUSH.md "Virtqueue rounds"; VirtqDone's, as the record has them). */
export interface VirtqDone {
  id: number;
  flags: number;
  vector: number;
  oldUsed: number;
  newUsed: number;
  kick: number;
}

/** W_VIRTQ_DONE at `at` of `b` (VIRTQ_DONE_SIZE bytes): the device ended a round of the queue
 *  behind push rule `id`. */
export function putVirtqDone(b: Buffer, at: number, o: VirtqDone): void {
  header(b, at, W.VIRTQ_DONE, VIRTQ_DONE_SIZE);
  b.writeUInt32LE(o.id, at + 8);
  b.writeUInt32LE(o.flags, at + 12);
  b.writeUInt32LE(o.vector, at + 16);
  b.writeUInt16LE(o.oldUsed & 0xffff, at + 20);
  b.writeUInt16LE(o.newUsed & 0xffff, at + 22);
  b.writeUInt16LE(o.kick & 0xffff, at + 24);
}

export function virtqDoneRecord(o: VirtqDone): Buffer {
  const buf = Buffer.alloc(VIRTQ_DONE_SIZE);
  putVirtqDone(buf, 0, o);
  return buf;
}

/** W_PUSH_RULE: installs, replaces or (kind NONE) removes rule `id`; answered by R_PUSH_RULE_SET. */
export function pushRuleRecord(o: {
  id: number;
  kind: number;
  bar: number;
  entries: number;
  offset: bigint;
  ring: bigint;
  avail: bigint;
  dataMax: number;
  lbaShift: number;
  flags: number;
  /** NVMe with avail (ABI 4): the SQ tail's shadow doorbell; the device ends rounds. */
  shadow?: bigint;
}): Buffer {
  const { buf } = record(W.PUSH_RULE, PUSH_RULE_SIZE - HDR);
  buf.writeUInt32LE(o.id, 8);
  buf.writeUInt32LE(o.kind, 12);
  buf.writeUInt32LE(o.bar, 16);
  buf.writeUInt32LE(o.entries, 20);
  buf.writeBigUInt64LE(o.offset, 24);
  buf.writeBigUInt64LE(o.ring, 32);
  buf.writeBigUInt64LE(o.avail, 40);
  buf.writeUInt32LE(o.dataMax, 48);
  buf.writeUInt32LE(o.lbaShift, 52);
  buf.writeUInt32LE(o.flags, 56);
  buf.writeBigUInt64LE(o.shadow ?? 0n, 64);
  return buf;
}

/** W_CONNECT: carry the data plane on a TCP connection to `address` (IPv4 or IPv6); sealed with
 *  `key` when one is given. */
export function connectRecord(o: {
  family: 4 | 6;
  address: Uint8Array;
  port: number;
  timeoutMs: number;
  token: Uint8Array;
  key?: Uint8Array;
}): Buffer {
  const { buf } = record(W.CONNECT, CONNECT_SIZE - HDR);
  buf.writeUInt16LE(o.family === 4 ? 2 : 10, 8);
  buf.writeUInt16BE(o.port, 10);
  buf.writeUInt32LE(o.timeoutMs, 12);
  buf.set(o.address.subarray(0, 16), 16);
  buf.set(o.token.subarray(0, LINK_TOKEN), 32);
  if (o.key) {
    buf.writeUInt32LE(LINK_F_SEAL, 48);
    buf.set(o.key.subarray(0, LINK_KEY), 56);
  }
  return buf;
}

/** A record read from the kernel. */
export type KernelRecord =
  | { type: 'attached'; domain: number; bus: number; devfn: number }
  | { type: 'mmio-write'; bar: number; offset: bigint; data: Uint8Array }
  | { type: 'mmio-read'; tag: number; bar: number; size: number; offset: bigint }
  | { type: 'config-write'; offset: number; size: number; value: number }
  | { type: 'dma-read-cpl'; tag: number; ok: boolean; data: Uint8Array }
  | { type: 'function-reset' }
  | { type: 'push'; rule: number; iova: bigint; data: Uint8Array }
  | { type: 'push-drop'; iova: bigint; length: bigint }
  | { type: 'push-rule-set'; id: number }
  | { type: 'link-closed'; error: number };

export class AbiError extends Error {
  override readonly name = 'AbiError';
}

/**
 * The records of the kernel, field by field: what parseRecords() makes objects of, for a reader that
 * acts on each record as it comes (a kernel link's data plane: no object per record). Payloads are
 * as parseRecords() gives them.
 */
export interface RecordVisitor {
  attached(domain: number, bus: number, devfn: number): void;
  mmioWrite(bar: number, offset: bigint, data: Uint8Array): void;
  mmioRead(tag: number, bar: number, size: number, offset: bigint): void;
  configWrite(offset: number, size: number, value: number): void;
  dmaReadCpl(tag: number, ok: boolean, data: Uint8Array): void;
  functionReset(): void;
  push(rule: number, iova: bigint, data: Uint8Array): void;
  pushDrop(iova: bigint, length: bigint): void;
  pushRuleSet(id: number): void;
  linkClosed(error: number): void;
}

/** Splits what one read() returned into records. Throws AbiError on anything inconsistent (a
 *  kernel/agent version mismatch: nothing to recover). Payloads are copies, since a read buffer
 *  is usually reused; with `owned` (`buf` is never written again) they are views of it. */
export function parseRecords(buf: Uint8Array, owned = false): KernelRecord[] {
  const out: KernelRecord[] = [];
  visitRecords(buf, owned, {
    attached: (domain, bus, devfn) => out.push({ type: 'attached', domain, bus, devfn }),
    mmioWrite: (bar, offset, data) => out.push({ type: 'mmio-write', bar, offset, data }),
    mmioRead: (tag, bar, size, offset) => out.push({ type: 'mmio-read', tag, bar, size, offset }),
    configWrite: (offset, size, value) => out.push({ type: 'config-write', offset, size, value }),
    dmaReadCpl: (tag, ok, data) => out.push({ type: 'dma-read-cpl', tag, ok, data }),
    functionReset: () => out.push({ type: 'function-reset' }),
    push: (rule, iova, data) => out.push({ type: 'push', rule, iova, data }),
    pushDrop: (iova, length) => out.push({ type: 'push-drop', iova, length }),
    pushRuleSet: (id) => out.push({ type: 'push-rule-set', id }),
    linkClosed: (error) => out.push({ type: 'link-closed', error }),
  });
  return out;
}

/** Each record of `buf` to `v`, in order (see parseRecords for `owned` and the errors). A record
 *  is checked whole before it is given to `v`; the ones before a bad record have been given. */
export function visitRecords(buf: Uint8Array, owned: boolean, v: RecordVisitor): void {
  const b = buf instanceof Buffer ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  // Fields are read at absolute offsets (`at` + field) of `b`: no view and no closure per record,
  // since every MMIO write and push of a kernel link comes through here. Payload views are made
  // on `b`'s memory, asked for once.
  const mem = b.buffer;
  const base = b.byteOffset;
  for (let at = 0; at < b.length; ) {
    if (b.length - at < HDR) throw new AbiError(`truncated record header at ${at}`);
    const type = b.readUInt16LE(at);
    const len = b.readUInt32LE(at + 4);
    if (len < HDR || len % 8 || len > b.length - at)
      throw new AbiError(`record of type 0x${type.toString(16)} has length ${len}`);
    switch (type) {
      case R.ATTACHED:
        need(type, len, 16);
        v.attached(b.readUInt32LE(at + 8), b[at + 12]!, b[at + 13]!);
        break;
      case R.MMIO_WRITE: {
        const data = payload(b, mem, base, at, type, len, 12, owned);
        v.mmioWrite(b.readUInt32LE(at + 8), getU64(b, at + 16), data);
        break;
      }
      case R.MMIO_READ:
        need(type, len, 32);
        v.mmioRead(
          b.readUInt32LE(at + 8),
          b.readUInt32LE(at + 12),
          b.readUInt32LE(at + 16),
          getU64(b, at + 24),
        );
        break;
      case R.CONFIG_WRITE:
        need(type, len, 24);
        v.configWrite(b.readUInt32LE(at + 8), b.readUInt32LE(at + 12), b.readUInt32LE(at + 16));
        break;
      case R.DMA_READ_CPL: {
        const data = payload(b, mem, base, at, type, len, 16, owned);
        v.dmaReadCpl(b.readUInt32LE(at + 8), b.readUInt32LE(at + 12) === STATUS_OK, data);
        break;
      }
      case R.FUNCTION_RESET:
        v.functionReset();
        break;
      case R.PUSH: {
        const data = payload(b, mem, base, at, type, len, 8, owned);
        v.push(b.readUInt32LE(at + 12), getU64(b, at + 16), data);
        break;
      }
      case R.PUSH_DROP:
        need(type, len, 24);
        v.pushDrop(getU64(b, at + 8), getU64(b, at + 16));
        break;
      case R.PUSH_RULE_SET:
        need(type, len, 16);
        v.pushRuleSet(b.readUInt32LE(at + 8));
        break;
      case R.LINK_CLOSED:
        need(type, len, 16);
        v.linkClosed(b.readUInt32LE(at + 8));
        break;
      default:
        throw new AbiError(`unknown record type 0x${type.toString(16)}`);
    }
    at += len;
  }
}

/** Throws unless a record of `type` and `len` bytes has the `n` its fields need. */
function need(type: number, len: number, n: number): void {
  if (len < n) throw new AbiError(`record of type 0x${type.toString(16)} is ${len} bytes, needs ${n}`);
}

/** The data after the 24-byte head of the record at `at` of `v` (whose memory is `mem`, from
 *  `base`), whose size field is at `sizeAt`
 *  (a plain Uint8Array, a copy unless `owned`). Called before the head's other fields are read: it
 *  checks the head is there. */
function payload(
  v: Buffer,
  mem: ArrayBufferLike,
  base: number,
  at: number,
  type: number,
  len: number,
  sizeAt: number,
  owned: boolean,
): Uint8Array {
  need(type, len, 24);
  const size = v.readUInt32LE(at + sizeAt);
  need(type, len, 24 + size);
  const from = at + 24;
  return owned
    ? new Uint8Array(mem, base + from, size)
    : (Uint8Array.prototype.slice.call(v, from, from + size) as Uint8Array);
}

export function barKind(k: pcinet.BarKind | null | undefined): number {
  switch (k) {
    case pcinet.BarKind.BAR_MEM32:
      return BAR_KIND.MEM32;
    case pcinet.BarKind.BAR_MEM64:
      return BAR_KIND.MEM64;
    case pcinet.BarKind.BAR_IO:
      return BAR_KIND.IO;
    default:
      return BAR_KIND.NONE;
  }
}
