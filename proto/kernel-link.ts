// Kernel records <-> session messages for one device. The host-agent's kernel channel uses it on
// /dev/pcinet; the endpoint uses it on a kernel link, where pcinet.ko sends the same records over
// TCP (W_CONNECT, docs/KERNEL-ABI.md): either way a record from the kernel becomes the message the
// endpoint runtime handles, and a message from the runtime becomes the records the kernel applies.
// Also here: the byte-stream framing of records on a link.
import { GATHER_MIN } from './codec.js';
import {
  AbiError,
  dataRecordSize,
  dmaReadRecord,
  dmaWriteRecord,
  dmaWriteRecordParts,
  HDR,
  INTERRUPT_SIZE,
  interruptRecord,
  type KernelRecord,
  MAX_DATA,
  MAX_RECORD,
  mmioReadCplRecord,
  PUSH_F_INDIRECT,
  pushRuleRecord,
  putDmaWriteHead,
  putInterrupt,
  putShadow,
  putVirtqDone,
  putWritesApplied,
  shadowRecord,
  VIRTQ_DONE_SIZE,
  type VirtqDone,
  VQ_F,
  virtqDoneRecord,
  WRITES_APPLIED_SIZE,
  writesAppliedRecord,
} from './kernel-abi.js';
import { ErrorCode, long, MAX_DMA_CHUNK, type Msg, ProtocolError, type pcinet, u64 } from './wire.js';

export interface TranslatorOptions {
  /** Device id the messages carry. */
  dev: number;
  /** Where messages made from the kernel's records go (in order). */
  sink: (m: Msg) => void;
  /** Where records made from messages go; `mayWait`: the kernel may wait for its reader while
   *  applying it (W_DMA_READ queues a completion). */
  write: (record: Buffer, mayWait: boolean) => void;
  /** Where a record goes as parts (header, a payload handed over, padding) when toKernel() is given
   *  one; without this, such records are put together and go to write(). */
  writeParts?: (parts: Uint8Array[]) => void;
  /** Checks (and may normalise) a device's push rule before it reaches the kernel. */
  checkPushRule?: (p: pcinet.IPushRule) => pcinet.IPushRule;
  /** Where the records of the hot messages (shadow, WritesApplied, DMA writes, interrupts) are
   *  encoded in place instead of going to write() one buffer each. The owner has write() put the
   *  other records there too (RecordOut.ref), so they all stay in order. */
  out?: RecordOut;
}

/** How large RecordOut's buffer starts: a QD1 reply is a few hundred bytes and a 4 KiB read's
 *  data. It grows to what a reply needs (a 256 KiB read's data copied in, say) and stays that size. */
const RECORD_OUT_BYTES = 64 << 10;
/** The most it grows to: a reply past it (the runtime flushes every FLUSH_BYTES, 1 MiB) gets a
 *  buffer of its own size. */
const RECORD_OUT_MAX = 4 << 20;

/**
 * Records going out, encoded straight into one buffer where they follow each other, so a reply of
 * many records is one write without a buffer per record or a copy to put them together. Payloads of
 * GATHER_MIN bytes or more that were handed over go by reference between the buffer's pieces, as
 * in a gather write. take() hands out what was written; the bytes stay untouched until release()
 * says the socket has them (a write that completed), after which the buffer is reused. A buffer
 * too small for what is being written is replaced by a larger one, which is then kept.
 */
export class RecordOut {
  #buf: Buffer = Buffer.allocUnsafeSlow(RECORD_OUT_BYTES);
  /** Where the bytes not taken yet start, and where they end. */
  #from = 0;
  #at = 0;
  /** Pieces closed by a payload by reference, in order. */
  #pieces: Uint8Array[] = [];

  /** Records (or pieces) written and not taken. */
  get pending(): boolean {
    return this.#at > this.#from || this.#pieces.length > 0;
  }

  /** Bytes of the buffer now (for tests). */
  get capacity(): number {
    return this.#buf.length;
  }

  /** The buffer room() gives offsets into (valid until the next room()). */
  get buffer(): Buffer {
    return this.#buf;
  }

  /** `len` bytes for a record (or its head), the first `zero` of them zeroed (the rest the caller
   *  writes whole): their offset in `buffer`. */
  room(len: number, zero = len): number {
    if (this.#at + len > this.#buf.length) {
      // The old buffer may still be the socket's up to #from: a new one, which gets the bytes
      // written since the last take() (nobody has them yet) and room for the record, twice over.
      const open = this.#at - this.#from;
      const size = Math.max(this.#buf.length, Math.min(2 * (open + len), RECORD_OUT_MAX), open + len);
      const next = Buffer.allocUnsafeSlow(size);
      this.#buf.copy(next, 0, this.#from, this.#at);
      this.#buf = next;
      this.#from = 0;
      this.#at = open;
    }
    const at = this.#at;
    zeroBytes(this.#buf, at, at + zero);
    this.#at += len;
    return at;
  }

  /** `data`, handed over, after the bytes written so far: by reference if large, else copied. */
  ref(data: Uint8Array): void {
    if (data.length < GATHER_MIN) {
      const at = this.room(data.length, 0);
      this.#buf.set(data, at);
      return;
    }
    this.#close();
    this.#pieces.push(data);
  }

  /** Everything written since the last take(), as pieces to write in order. */
  take(): Uint8Array[] {
    // Records alone (the usual reply): one piece, in an array of its own size.
    if (this.#pieces.length === 0 && this.#at > this.#from) {
      const one = [this.#buf.subarray(this.#from, this.#at)];
      this.#from = this.#at;
      return one;
    }
    this.#close();
    const out = this.#pieces;
    this.#pieces = [];
    return out;
  }

  /** The socket holds every byte taken so far: the buffer can be written over. */
  release(): void {
    if (this.pending) return;
    this.#from = 0;
    this.#at = 0;
  }

  #close(): void {
    if (this.#at > this.#from) this.#pieces.push(this.#buf.subarray(this.#from, this.#at));
    this.#from = this.#at;
  }
}

/** Up to this many bytes are zeroed by a loop: Buffer.fill is a call into C++, several times
 *  what a record head's few bytes cost (every record of a reply is zeroed first). */
const ZERO_LOOP_MAX = 64;

/** Zeroes bytes [from, to) of `b`. */
export function zeroBytes(b: Uint8Array, from: number, to: number): void {
  if (to - from > ZERO_LOOP_MAX) b.fill(0, from, to);
  else for (let i = from; i < to; i++) b[i] = 0;
}

export type { VirtqDone };

/** W_VIRTQ_DONE's flags from VirtqDone's booleans. */
export const virtqDoneFlags = (interrupt: boolean, eventIdx: boolean, recheck: boolean) =>
  (interrupt ? VQ_F.INTERRUPT : 0) | (eventIdx ? VQ_F.EVENT_IDX : 0) | (recheck ? VQ_F.RECHECK : 0);

/** One device's translation both ways. DMA reads longer than a record are split into MAX_DATA
 *  pieces with tags of our own and put together again. */
export class RecordTranslator {
  readonly #o: TranslatorOptions;
  #nextTag = 1;
  /** Our tags (one per piece) -> the endpoint's request. */
  readonly #dmaReads = new Map<
    number,
    { tag: number; parts: (Uint8Array | undefined)[]; left: number; failed: boolean }
  >();
  readonly #pieceOf = new Map<number, { req: number; index: number }>();
  /** Tags of DMA reads asked for before forget(): their completions are dropped. */
  readonly #staleTags = new Set<number>();
  #reqSeq = 0;
  sink: (m: Msg) => void;

  constructor(o: TranslatorOptions) {
    this.#o = o;
    this.sink = o.sink;
  }

  /** A record from the kernel (not R_ATTACHED or R_LINK_CLOSED, the channel's own business).
   *  Throws AbiError for a completion nobody asked for. */
  fromKernel(r: KernelRecord): void {
    const dev = this.#o.dev;
    switch (r.type) {
      case 'mmio-write':
        this.sink({ mmioWrite: { dev, bar: r.bar, offset: long(r.offset), data: r.data } });
        return;
      case 'mmio-read':
        this.sink({ mmioRead: { dev, tag: r.tag, bar: r.bar, offset: long(r.offset), size: r.size } });
        return;
      case 'config-write':
        this.sink({ configWrite: { dev, offset: r.offset, size: r.size, value: r.value } });
        return;
      case 'function-reset':
        this.sink({ functionReset: { dev } });
        return;
      case 'push':
        this.sink({ push: { dev, iova: long(r.iova), data: r.data, rule: r.rule } });
        return;
      case 'push-drop':
        this.sink({ pushDrop: { dev, iova: long(r.iova), length: long(r.length) } });
        return;
      case 'push-rule-set':
        this.sink({ pushRuleSet: { dev, id: r.id } });
        return;
      case 'dma-read-cpl':
        this.#dmaReadCpl(r);
        return;
      case 'attached':
      case 'link-closed':
        throw new AbiError(`${r.type} is not a data-plane record`);
    }
  }

  #dmaReadCpl(r: Extract<KernelRecord, { type: 'dma-read-cpl' }>): void {
    const dev = this.#o.dev;
    this.dmaReadCpl(r.tag, r.ok, r.data, (tag, status, data) =>
      this.sink(data ? { dmaReadCpl: { dev, tag, status, data } } : { dmaReadCpl: { dev, tag, status } }),
    );
  }

  /** R_DMA_READ_CPL for piece `tag`: once it completes its request, `done` gets the endpoint's tag
   *  and status, and the data if the read succeeded (the pieces put together). Throws AbiError for
   *  a completion nobody asked for. */
  dmaReadCpl(
    tag: number,
    ok: boolean,
    data: Uint8Array,
    done: (tag: number, status: ErrorCode, data?: Uint8Array) => void,
  ): void {
    if (this.#staleTags.delete(tag)) return;
    const piece = this.#pieceOf.get(tag);
    if (!piece) throw new AbiError(`DMA read completion for tag ${tag}, which is not outstanding`);
    this.#pieceOf.delete(tag);
    const req = this.#dmaReads.get(piece.req)!;
    if (ok) req.parts[piece.index] = data;
    else req.failed = true;
    if (--req.left > 0) return;
    this.#dmaReads.delete(piece.req);
    if (req.failed) {
      done(req.tag, ErrorCode.DMA_FAULT);
      return;
    }
    done(
      req.tag,
      ErrorCode.OK,
      req.parts.length === 1 ? req.parts[0]! : Buffer.concat(req.parts as Uint8Array[]),
    );
  }

  /** ShadowUpdate: BAR `bar` holds `data` at `offset` (split into records of MAX_DATA). */
  shadow(bar: number, offset: bigint, data: Uint8Array): void {
    const out = this.#o.out;
    for (let at = 0; at < data.length; at += MAX_DATA) {
      const piece = data.subarray(at, at + MAX_DATA);
      if (out) {
        const i = out.room(dataRecordSize(piece.length));
        putShadow(out.buffer, i, bar, offset + BigInt(at), piece);
      } else this.#o.write(shadowRecord(bar, offset + BigInt(at), piece), false);
    }
  }

  /** WritesApplied{count}. */
  writesApplied(count: bigint): void {
    const out = this.#o.out;
    if (out) {
      const i = out.room(WRITES_APPLIED_SIZE);
      putWritesApplied(out.buffer, i, count);
    } else this.#o.write(writesAppliedRecord(count), false);
  }

  /** Interrupt{vector}. */
  interrupt(vector: number): void {
    const out = this.#o.out;
    if (out) {
      const i = out.room(INTERRUPT_SIZE);
      putInterrupt(out.buffer, i, vector);
    } else this.#o.write(interruptRecord(vector), false);
  }

  /** VirtqDone as W_VIRTQ_DONE (encoded in place on links in the clear: every NVMe I/O on an SQ
   *  that may go quiet ends in one). */
  virtqDone(v: VirtqDone): void {
    const out = this.#o.out;
    if (!out) {
      this.#o.write(virtqDoneRecord(v), false);
      return;
    }
    putVirtqDone(out.buffer, out.room(VIRTQ_DONE_SIZE), v);
  }

  /** DmaWrite of `data` at `iova` (split into records of MAX_DATA); `byRef`: `data` is handed
   *  over, and its records may reference it. */
  dmaWrite(iova: bigint, data: Uint8Array, byRef: boolean): void {
    const out = this.#o.out;
    const parts = byRef ? this.#o.writeParts : undefined;
    for (let at = 0; at < data.length; at += MAX_DATA) {
      // The first record's address as given (the runtime's IOVAs are u64s already, u64() makes
      // the messages' ones so): an out-of-range one throws where it is written.
      const to = at === 0 ? iova : BigInt.asUintN(64, iova + BigInt(at));
      // One record's worth, the usual case: the data itself, no view.
      const piece = data.length <= MAX_DATA ? data : data.subarray(at, at + MAX_DATA);
      if (out) {
        const size = dataRecordSize(piece.length);
        if (byRef && piece.length >= GATHER_MIN) {
          const i = out.room(HDR + 16);
          putDmaWriteHead(out.buffer, i, to, piece.length);
          out.ref(piece);
          if (size > HDR + 16 + piece.length) out.room(size - HDR - 16 - piece.length);
        } else {
          // The data is copied in whole: only the head and the padding need zeros.
          const i = out.room(size, HDR + 16);
          const b = out.buffer;
          putDmaWriteHead(b, i, to, piece.length);
          b.set(piece, i + HDR + 16);
          zeroBytes(b, i + HDR + 16 + piece.length, i + size);
        }
      } else if (parts) parts(dmaWriteRecordParts(to, piece));
      else this.#o.write(dmaWriteRecord(to, piece), false);
    }
  }

  /** A device -> host message as records. Throws ProtocolError for anything else. `byRef`: the
   *  message's payload, handed over by its maker (see Session.send): its records reference it. */
  toKernel(m: Msg, byRef?: Uint8Array): void {
    const write = this.#o.write;
    if (m.shadowUpdate) {
      const u = m.shadowUpdate;
      this.shadow(u.bar ?? 0, u64(u.offset), u.data ?? new Uint8Array(0));
    } else if (m.writesApplied) {
      this.writesApplied(u64(m.writesApplied.count));
    } else if (m.mmioReadCpl) {
      const c = m.mmioReadCpl;
      write(
        mmioReadCplRecord(c.tag ?? 0, (c.status ?? 0) === ErrorCode.OK, c.data ?? new Uint8Array(0)),
        false,
      );
    } else if (m.dmaRead) {
      const r = m.dmaRead;
      const len = r.length ?? 0;
      if (len < 1 || len > MAX_DMA_CHUNK)
        throw new ProtocolError(ErrorCode.BAD_LENGTH, `DmaRead of ${len} bytes`);
      const req = ++this.#reqSeq;
      const pieces = Math.ceil(len / MAX_DATA);
      this.#dmaReads.set(req, { tag: r.tag ?? 0, parts: new Array(pieces), left: pieces, failed: false });
      const iova = u64(r.iova);
      for (let i = 0; i < pieces; i++) {
        const tag = this.#nextTag;
        this.#nextTag = (this.#nextTag % 0xffff_ffff) + 1;
        this.#pieceOf.set(tag, { req, index: i });
        const size = Math.min(MAX_DATA, len - i * MAX_DATA);
        write(dmaReadRecord(tag, BigInt.asUintN(64, iova + BigInt(i * MAX_DATA)), size), true);
      }
    } else if (m.dmaWrite) {
      const w = m.dmaWrite;
      this.dmaWrite(u64(w.iova), w.data ?? new Uint8Array(0), byRef !== undefined && byRef === w.data);
    } else if (m.interrupt) {
      this.interrupt(m.interrupt.vector ?? 0);
    } else if (m.virtqDone) {
      const v = m.virtqDone;
      this.virtqDone({
        id: v.rule ?? 0,
        flags: virtqDoneFlags(!!v.interrupt, !!v.eventIdx, !!v.recheck),
        vector: v.vector ?? 0,
        oldUsed: v.oldUsed ?? 0,
        newUsed: v.newUsed ?? 0,
        kick: v.kick ?? 0,
      });
    } else if (m.pushRule) {
      const p = this.#o.checkPushRule ? this.#o.checkPushRule(m.pushRule) : m.pushRule;
      write(
        pushRuleRecord({
          id: p.id ?? 0,
          kind: p.kind ?? 0,
          bar: p.bar ?? 0,
          entries: p.entries ?? 0,
          offset: u64(p.offset),
          ring: u64(p.ring),
          avail: u64(p.avail),
          dataMax: p.dataMax ?? 0,
          lbaShift: p.lbaShift ?? 0,
          flags: p.indirect ? PUSH_F_INDIRECT : 0,
          shadow: u64(p.shadow),
        }),
        false,
      );
    } else {
      throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, 'not a device -> host message');
    }
  }

  /** The device's other end is gone (link down): completions of reads asked for so far are
   *  dropped when they come. */
  forget(): void {
    for (const tag of this.#pieceOf.keys()) this.#staleTags.add(tag);
    this.#pieceOf.clear();
    this.#dmaReads.clear();
  }
}

/** What a socket reading into our buffers reads into between large records. */
const SCRATCH_BYTES = 64 << 10;

/** How many bytes at the start of `buf` are whole records. Every header there is checked, the
 *  one of a record cut off at the end too (if whole). Throws AbiError for a header no record can
 *  have. */
export function wholeRecords(buf: Buffer, end = buf.length): number {
  let at = 0;
  while (end - at >= HDR) {
    const len = buf.readUInt32LE(at + 4);
    if (len < HDR || len % 8 || len > MAX_RECORD + 8 || buf.readUInt16LE(at + 2) !== 0)
      throw new AbiError(`record of type 0x${buf.readUInt16LE(at).toString(16)} has length ${len}`);
    if (len > end - at) break;
    at += len;
  }
  return at;
}

/** Cuts a byte stream into whole records (a kernel link carries them back to back). */
export class RecordStream {
  #held: Buffer | undefined;
  /** Reading into our buffers: the reused scratch buffer, the last buffer handed out, and the
   *  record being read straight into its own buffer (`have` bytes so far). */
  #scratch: Buffer | undefined;
  /** #scratch's ArrayBuffer (asking a view for it is a runtime call, once per read). */
  #scratchMemory: ArrayBufferLike | undefined;
  #given: Uint8Array | undefined;
  #direct: { record: Buffer; have: number } | undefined;
  /** With `lend`: where records read straight into a buffer of their own go, reused. */
  #spare: Buffer | undefined;
  readonly #lend: boolean;
  /** With `lend`: told before the stream writes into a buffer it lent records in (the scratch
   *  buffer, the spare one), so that whoever still keeps some of them can copy them first. */
  onReuse: ((buffer: ArrayBufferLike) => void) | undefined;

  /** `lend`: what filled() answers is only lent: whole records stay where they were read (the
   *  scratch buffer, or one buffer reused for records that spanned reads), not copied out into
   *  buffers of their own, and onReuse says when that memory is about to be written again. */
  constructor(o: { lend?: boolean } = {}) {
    this.#lend = o.lend ?? false;
  }

  /** The whole records completed by `chunk` (one buffer, possibly empty). Throws AbiError for a
   *  header no record can have. */
  push(chunk: Buffer): Buffer {
    const buf = this.#held ? Buffer.concat([this.#held, chunk]) : chunk;
    const at = wholeRecords(buf);
    this.#held = at < buf.length ? Buffer.from(buf.subarray(at)) : undefined;
    return buf.subarray(0, at);
  }

  /**
   * For a socket that reads into buffers we hand it (net's `onread`): where the next read goes.
   * While a record cut off by the last read is being collected, that is the rest of the record's
   * own buffer, so its payload lands where it stays; otherwise a scratch buffer, whose bytes are
   * copied out.
   */
  readBuffer(): Uint8Array {
    if (this.#direct) {
      this.#given = this.#direct.record.subarray(this.#direct.have);
      if (this.#lend) this.onReuse?.(this.#given.buffer);
    } else {
      if (!this.#scratch) {
        this.#scratch = Buffer.allocUnsafeSlow(SCRATCH_BYTES);
        this.#scratchMemory = this.#scratch.buffer;
      }
      this.#given = this.#scratch;
      if (this.#lend) this.onReuse?.(this.#scratchMemory!);
    }
    return this.#given;
  }

  /** `n` bytes were read into `into`: the whole records they complete (buffers of one or more
   *  records each; lent, with `lend`). `into` is normally what readBuffer() returned last; any
   *  other buffer (a read the socket had been given before this stream took it over) is copied in
   *  as it would have been read. Throws AbiError like push(). */
  filled(into: Uint8Array, n: number): Buffer[] {
    if (into !== this.#given) {
      const out: Buffer[] = [];
      for (let at = 0; at < n; ) {
        const b = this.readBuffer();
        const k = Math.min(b.length, n - at);
        b.set(into.subarray(at, at + k));
        at += k;
        // The next readBuffer() reuses what a lent answer is in: these are copied.
        for (const w of this.filled(b, k)) out.push(this.#lend ? Buffer.from(w) : w);
      }
      return out;
    }
    this.#given = undefined;
    const d = this.#direct;
    if (d) {
      d.have += n;
      if (d.have < d.record.length) return [];
      this.#direct = undefined;
      return [d.record];
    }
    // What the scratch buffer holds is copied out (it is reused), unless lent: the whole records
    // together, and a record begun at its end into a buffer of the record's size (the spare one,
    // lent), where the rest is read.
    // The bytes are buf's first `end` (views only where something is handed out: each view of
    // a Buffer is a runtime call, and this runs once per read).
    const held = this.#held;
    const buf = held ? Buffer.concat([held, this.#scratch!.subarray(0, n)]) : this.#scratch!;
    const end = held ? buf.length : n;
    this.#held = undefined;
    const at = wholeRecords(buf, end);
    const out: Buffer[] =
      at > 0 ? [held || this.#lend ? buf.subarray(0, at) : Buffer.from(buf.subarray(0, at))] : [];
    const rest = end - at;
    if (rest >= HDR) {
      const len = buf.readUInt32LE(at + 4);
      let record: Buffer;
      if (this.#lend) {
        if (!this.#spare || this.#spare.length < len) this.#spare = Buffer.allocUnsafeSlow(len);
        else this.onReuse?.(this.#spare.buffer);
        record = this.#spare.subarray(0, len);
      } else record = Buffer.allocUnsafeSlow(len);
      buf.copy(record, 0, at, end);
      this.#direct = { record, have: rest };
    } else if (rest > 0) this.#held = Buffer.from(buf.subarray(at, end));
    return out;
  }

  /** Bytes of an unfinished record. */
  get pending(): number {
    return (this.#held?.length ?? 0) + (this.#direct?.have ?? 0);
  }
}
