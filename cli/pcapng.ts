// pcapng files of trace records (proto/trace.ts) for `pcinet trace -w`: one section, one interface
// of link type LINKTYPE_USER0 with microsecond timestamps, an Enhanced Packet Block per record, an
// Interface Statistics Block with the drop count at the end. Bounded: a file ends at maxBytes;
// without a ring that ends the capture, with a ring of N files the oldest goes (like dumpcap -b).
// The block layouts are those of the pcapng specification (IETF draft-ietf-opsawg-pcapng).
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { LINKTYPE_PCINET, TF_TRUNCATED } from '../proto/trace.js';

const SHB = 0x0a0d0d0a;
const IDB = 0x00000001;
const ISB = 0x00000005;
const EPB = 0x00000006;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;

const pad4 = (n: number) => (n + 3) & ~3;

/** An option: code, length, value padded to 4 bytes. */
function option(code: number, value: Uint8Array): Buffer {
  const b = Buffer.alloc(4 + pad4(value.length));
  b.writeUInt16LE(code, 0);
  b.writeUInt16LE(value.length, 2);
  b.set(value, 4);
  return b;
}
const END_OF_OPTIONS = Buffer.alloc(4);

function block(type: number, body: Buffer): Buffer {
  const len = 12 + body.length;
  const b = Buffer.alloc(len);
  b.writeUInt32LE(type, 0);
  b.writeUInt32LE(len, 4);
  body.copy(b, 8);
  b.writeUInt32LE(len, len - 4);
  return b;
}

export function sectionHeader(app: string): Buffer {
  const fixed = Buffer.alloc(16);
  fixed.writeUInt32LE(BYTE_ORDER_MAGIC, 0);
  fixed.writeUInt16LE(1, 4);
  fixed.writeUInt16LE(0, 6);
  fixed.writeBigInt64LE(-1n, 8); // section length not given
  return block(SHB, Buffer.concat([fixed, option(4, Buffer.from(app)), END_OF_OPTIONS])); // shb_userappl
}

export function interfaceDescription(name: string, snaplen: number): Buffer {
  const fixed = Buffer.alloc(8);
  fixed.writeUInt16LE(LINKTYPE_PCINET, 0);
  fixed.writeUInt32LE(snaplen, 4);
  // if_name; if_tsresol 6 (µs) is the default and needs no option.
  return block(IDB, Buffer.concat([fixed, option(2, Buffer.from(name)), END_OF_OPTIONS]));
}

function timestamp(b: Buffer, at: number, us: number): void {
  b.writeUInt32LE(Math.floor(us / 2 ** 32), at);
  b.writeUInt32LE((us % 2 ** 32) >>> 0, at + 4);
}

/** One record as an Enhanced Packet Block; `origLen`: its length had nothing been cut. */
export function enhancedPacket(us: number, record: Uint8Array, origLen = record.length): Buffer {
  const fixed = Buffer.alloc(20 + pad4(record.length));
  fixed.writeUInt32LE(0, 0); // interface 0
  timestamp(fixed, 4, us);
  fixed.writeUInt32LE(record.length, 12);
  fixed.writeUInt32LE(origLen, 16);
  fixed.set(record, 20);
  return block(EPB, fixed);
}

export function interfaceStatistics(us: number, dropped: number): Buffer {
  const fixed = Buffer.alloc(12);
  fixed.writeUInt32LE(0, 0);
  timestamp(fixed, 4, us);
  const drop = Buffer.alloc(8);
  drop.writeBigUInt64LE(BigInt(dropped));
  return block(ISB, Buffer.concat([fixed, option(5, drop), END_OF_OPTIONS])); // isb_ifdrop
}

/** A record's length with its whole payload (the EPB's original length). */
export function originalLength(record: Uint8Array): number {
  if (!(record[1]! & TF_TRUNCATED)) return record.length;
  const full = new DataView(record.buffer, record.byteOffset, record.byteLength).getUint32(8, true);
  // The cut payload is at most the snap length: the rest of it is what is missing.
  return record.length + Math.max(0, full - (record.length - 12));
}

export interface CaptureOptions {
  /** The file, or with a ring the name its files are made from (trace.pcapng: trace-00001.pcapng …). */
  path: string;
  /** Bytes per file. */
  maxBytes: number;
  /** Keep the last `ring` files; 0: one file, and the capture ends when it is full. */
  ring: number;
  snaplen: number;
  /** if_name of the interface, e.g. "pcinet endpoint /run/pcinet/endpoint.sock". */
  name: string;
}

/** Writes records into one file or a ring of files, never more than maxBytes each. */
export class CaptureWriter {
  readonly #o: CaptureOptions;
  #fd = -1;
  #size = 0;
  #seq = 0;
  readonly files: string[] = [];
  /** Records written, and records that did not fit (no ring). */
  written = 0;
  full = false;
  dropped = 0;

  constructor(o: CaptureOptions) {
    if (o.maxBytes < 4096) throw new Error('a capture file needs at least 4096 bytes');
    this.#o = o;
    this.#open();
  }

  #fileName(): string {
    if (this.#o.ring === 0) return this.#o.path;
    const m = /^(.*?)(\.pcapng)?$/.exec(this.#o.path)!;
    return `${m[1]}-${String(this.#seq).padStart(5, '0')}.pcapng`;
  }

  #open(): void {
    this.#seq++;
    const name = this.#fileName();
    this.#fd = openSync(name, 'w', 0o600);
    this.files.push(name);
    if (this.#o.ring > 0 && this.files.length > this.#o.ring) {
      try {
        unlinkSync(this.files.shift()!);
      } catch {}
    }
    this.#size = 0;
    this.#put(sectionHeader('pcinet trace'));
    this.#put(interfaceDescription(this.#o.name, this.#o.snaplen));
  }

  #put(b: Buffer): void {
    writeSync(this.#fd, b);
    this.#size += b.length;
  }

  /** False once the capture is full (no ring): the record was not written. */
  write(us: number, record: Uint8Array): boolean {
    if (this.full) return false;
    const b = enhancedPacket(us, record, originalLength(record));
    // Room is kept for the statistics block at the end.
    if (this.#size + b.length + 64 > this.#o.maxBytes) {
      if (this.#o.ring === 0) {
        this.full = true;
        return false;
      }
      this.#close(us);
      this.#open();
    }
    this.#put(b);
    this.written++;
    return true;
  }

  #close(us: number): void {
    this.#put(interfaceStatistics(us, this.dropped));
    closeSync(this.#fd);
    this.#fd = -1;
  }

  close(us: number): void {
    if (this.#fd >= 0) this.#close(us);
  }
}

/** The packets of a pcapng file we wrote (interface 0 only): [µs, bytes]. For tests and -r. */
export function readCapture(path: string): {
  packets: [number, Buffer][];
  dropped: number;
  linktype: number;
} {
  const b = readFileSync(path);
  const packets: [number, Buffer][] = [];
  let dropped = 0;
  let linktype = -1;
  for (let at = 0; at + 12 <= b.length; ) {
    const type = b.readUInt32LE(at);
    const len = b.readUInt32LE(at + 4);
    if (len < 12 || at + len > b.length) throw new Error(`${path}: block at ${at} of ${len} bytes is cut`);
    if (type === IDB) linktype = b.readUInt16LE(at + 8);
    else if (type === EPB) {
      const us = b.readUInt32LE(at + 12) * 2 ** 32 + b.readUInt32LE(at + 16);
      const cap = b.readUInt32LE(at + 20);
      packets.push([us, b.subarray(at + 28, at + 28 + cap)]);
    } else if (type === ISB) {
      for (let o = at + 20; o + 4 <= at + len - 4; ) {
        const code = b.readUInt16LE(o);
        const olen = b.readUInt16LE(o + 2);
        if (code === 0) break;
        if (code === 5) dropped += Number(b.readBigUInt64LE(o + 4));
        o += 4 + pad4(olen);
      }
    }
    at += len;
  }
  return { packets, dropped, linktype };
}
