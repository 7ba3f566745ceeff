import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  AbiError,
  HDR,
  MAX_DATA,
  MAX_RECORD,
  parseRecords,
  R,
  VQ_F,
  virtqDoneRecord,
  W,
} from './kernel-abi.js';
import { RecordOut, RecordStream, RecordTranslator, virtqDoneFlags } from './kernel-link.js';
import { ErrorCode, long, type Msg, ProtocolError } from './wire.js';

function translator() {
  const msgs: Msg[] = [];
  const records: { r: Buffer; mayWait: boolean }[] = [];
  const t = new RecordTranslator({
    dev: 3,
    sink: (m) => msgs.push(m),
    write: (r, mayWait) => records.push({ r, mayWait }),
  });
  return { t, msgs, records };
}

function dmaReadCpl(tag: number, data: Uint8Array | undefined): Buffer {
  const size = data?.length ?? 0;
  const b = Buffer.alloc(24 + ((size + 7) & ~7));
  b.writeUInt16LE(R.DMA_READ_CPL, 0);
  b.writeUInt32LE(b.length, 4);
  b.writeUInt32LE(tag, 8);
  b.writeUInt32LE(data ? 0 : 1, 12);
  b.writeUInt32LE(size, 16);
  if (data) b.set(data, 24);
  return b;
}

describe('RecordTranslator', () => {
  it('splits a DMA read into record-sized pieces and answers once with the whole', () => {
    const { t, msgs, records } = translator();
    const len = 2 * MAX_DATA + 100;
    t.toKernel({ dmaRead: { dev: 3, tag: 42, iova: long(0x10000n), length: len } });
    expect(records.map((x) => [x.r.readUInt16LE(0), x.r.readUInt32LE(12), x.mayWait])).toEqual([
      [W.DMA_READ, MAX_DATA, true],
      [W.DMA_READ, MAX_DATA, true],
      [W.DMA_READ, 100, true],
    ]);
    const tags = records.map((x) => x.r.readUInt32LE(8));
    expect(records.map((x) => x.r.readBigUInt64LE(16))).toEqual([
      0x10000n,
      0x10000n + BigInt(MAX_DATA),
      0x10000n + 2n * BigInt(MAX_DATA),
    ]);
    // Out of order: the pieces still land in place.
    const piece = (i: number, n: number) => new Uint8Array(n).fill(i + 1);
    for (const i of [2, 0, 1]) {
      for (const r of parseRecords(dmaReadCpl(tags[i]!, piece(i, i === 2 ? 100 : MAX_DATA)))) t.fromKernel(r);
      if (i !== 1) expect(msgs).toEqual([]);
    }
    expect(msgs.length).toBe(1);
    const c = msgs[0]!.dmaReadCpl!;
    expect(c.tag).toBe(42);
    expect(c.status).toBe(ErrorCode.OK);
    expect(c.data!.length).toBe(len);
    expect([c.data![0], c.data![MAX_DATA], c.data![len - 1]]).toEqual([1, 2, 3]);
  });

  it('a refused piece fails the whole read; a completion nobody asked for is an ABI error', () => {
    const { t, msgs, records } = translator();
    t.toKernel({ dmaRead: { dev: 3, tag: 9, iova: long(0), length: MAX_DATA + 8 } });
    const tags = records.map((x) => x.r.readUInt32LE(8));
    for (const r of parseRecords(dmaReadCpl(tags[0]!, undefined))) t.fromKernel(r);
    for (const r of parseRecords(dmaReadCpl(tags[1]!, new Uint8Array(8)))) t.fromKernel(r);
    expect(msgs.map((m) => m.dmaReadCpl?.status)).toEqual([ErrorCode.DMA_FAULT]);
    expect(() => {
      for (const r of parseRecords(dmaReadCpl(999, new Uint8Array(8)))) t.fromKernel(r);
    }).toThrow(AbiError);
  });

  it('after forget(), completions of earlier reads are dropped', () => {
    const { t, msgs, records } = translator();
    t.toKernel({ dmaRead: { dev: 3, tag: 1, iova: long(0), length: 8 } });
    t.forget();
    for (const r of parseRecords(dmaReadCpl(records[0]!.r.readUInt32LE(8), new Uint8Array(8))))
      t.fromKernel(r);
    expect(msgs).toEqual([]);
  });

  it('DMA writes and shadow updates are cut at MAX_DATA; host -> device messages are refused', () => {
    const { t, records } = translator();
    t.toKernel({ dmaWrite: { dev: 3, iova: long(0x1000n), data: new Uint8Array(MAX_DATA + 1) } });
    t.toKernel({ shadowUpdate: { dev: 3, bar: 2, offset: long(8), data: new Uint8Array(MAX_DATA * 2) } });
    expect(records.map((x) => [x.r.readUInt16LE(0), x.mayWait])).toEqual([
      [W.DMA_WRITE, false],
      [W.DMA_WRITE, false],
      [W.SHADOW, false],
      [W.SHADOW, false],
    ]);
    expect(records[1]!.r.readBigUInt64LE(16)).toBe(0x1000n + BigInt(MAX_DATA));
    expect(records[3]!.r.readBigUInt64LE(16)).toBe(8n + BigInt(MAX_DATA));
    expect(() =>
      t.toKernel({ mmioWrite: { dev: 3, bar: 0, offset: long(0), data: new Uint8Array(4) } }),
    ).toThrow(ProtocolError);
  });
});

describe('RecordStream', () => {
  const rec = (type: number, body: number) => {
    const b = Buffer.alloc(HDR + body);
    b.writeUInt16LE(type, 0);
    b.writeUInt32LE(b.length, 4);
    return b;
  };

  it('gives whole records only, however the bytes are cut', () => {
    const all = Buffer.concat([rec(R.FUNCTION_RESET, 0), rec(R.PUSH_RULE_SET, 8), rec(R.FUNCTION_RESET, 0)]);
    for (let cut = 0; cut <= all.length; cut++) {
      const s = new RecordStream();
      const a = s.push(all.subarray(0, cut));
      const b = s.push(all.subarray(cut));
      expect(Buffer.concat([a, b])).toEqual(all);
      expect(s.pending).toBe(0);
      expect(a.length % 8).toBe(0);
    }
  });

  it('reading into its own buffers: every record intact, large ones in buffers of their own (500 streams)', () => {
    const bodies = fc.array(
      fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: (MAX_RECORD - HDR) >> 3 })),
      { minLength: 1, maxLength: 10 },
    );
    const reads = fc.array(fc.tuple(fc.integer({ min: 1, max: 200_000 }), fc.boolean()), { minLength: 1 });
    fc.assert(
      fc.property(bodies, reads, (words, cuts) => {
        // Record i is filled with i + 1 after its header.
        const records = words.map((w, i) => {
          const r = rec(R.PUSH_RULE_SET, w * 8);
          r.fill((i + 1) & 0xff, HDR);
          return r;
        });
        const bytes = Buffer.concat(records);
        const s = new RecordStream();
        const got: Buffer[] = [];
        for (let at = 0, i = 0; at < bytes.length; i++) {
          const [want, foreign] = cuts[i % cuts.length]!;
          // Now and then a read lands in a buffer the socket had before (any size).
          const into = foreign ? new Uint8Array(want) : s.readBuffer();
          const n = Math.min(into.length, bytes.length - at, want);
          into.set(bytes.subarray(at, at + n));
          at += n;
          for (const whole of s.filled(into, n)) {
            // Whole records back to back, each as long as its header says.
            for (let r = 0; r < whole.length; r += whole.readUInt32LE(r + 4)) {
              got.push(whole.subarray(r, r + whole.readUInt32LE(r + 4)));
            }
          }
        }
        // Records are checked only now: one that shares memory with a later read shows.
        expect(got.map((r) => r.length)).toEqual(records.map((r) => r.length));
        for (const [i, r] of got.entries()) expect(r.equals(records[i]!)).toBe(true);
        expect(s.pending).toBe(0);
      }),
      { numRuns: 500 },
    );
    // A large record read through the stream's buffers is one buffer of its own.
    const big = rec(R.PUSH_RULE_SET, MAX_DATA);
    const s = new RecordStream();
    const wholes: Buffer[] = [];
    for (let at = 0; at < big.length; ) {
      const into = s.readBuffer();
      const n = Math.min(into.length, big.length - at, 1000);
      into.set(big.subarray(at, at + n));
      at += n;
      wholes.push(...s.filled(into, n));
    }
    expect(wholes.length).toBe(1);
    expect(wholes[0]!.buffer.byteLength).toBe(big.length);
  });

  it('lending: every record intact until its memory is reused, which the stream says first (500 streams)', () => {
    const bodies = fc.array(
      fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: (MAX_RECORD - HDR) >> 3 })),
      { minLength: 1, maxLength: 10 },
    );
    const reads = fc.array(fc.tuple(fc.integer({ min: 1, max: 200_000 }), fc.boolean()), { minLength: 1 });
    fc.assert(
      fc.property(bodies, reads, (words, cuts) => {
        const records = words.map((w, i) => {
          const r = rec(R.PUSH_RULE_SET, w * 8);
          r.fill((i + 1) & 0xff, HDR);
          return r;
        });
        const bytes = Buffer.concat(records);
        const s = new RecordStream({ lend: true });
        // The records as they came, kept as views until the stream says their memory is to be
        // written again; then copied (as the push cache does).
        const got: Buffer[] = [];
        s.onReuse = (buffer) => {
          for (const [i, r] of got.entries()) if (r.buffer === buffer) got[i] = Buffer.from(r);
        };
        for (let at = 0, i = 0; at < bytes.length; i++) {
          const [want, foreign] = cuts[i % cuts.length]!;
          const into = foreign ? new Uint8Array(want) : s.readBuffer();
          const n = Math.min(into.length, bytes.length - at, want);
          into.set(bytes.subarray(at, at + n));
          at += n;
          for (const whole of s.filled(into, n))
            for (let r = 0; r < whole.length; r += whole.readUInt32LE(r + 4))
              got.push(whole.subarray(r, r + whole.readUInt32LE(r + 4)));
        }
        expect(got.map((r) => r.length)).toEqual(records.map((r) => r.length));
        for (const [i, r] of got.entries()) expect(r.equals(records[i]!)).toBe(true);
        expect(s.pending).toBe(0);
      }),
      { numRuns: 500 },
    );
    // Small records stay in the scratch buffer; large ones that span reads share one buffer.
    const s = new RecordStream({ lend: true });
    const small = Buffer.concat([rec(R.FUNCTION_RESET, 0), rec(R.PUSH_RULE_SET, 8)]);
    const into = s.readBuffer();
    into.set(small);
    const [w] = s.filled(into, small.length);
    expect(w!.buffer).toBe((into as Buffer).buffer);
    const big = rec(R.PUSH_RULE_SET, MAX_DATA);
    const spans: Buffer[] = [];
    for (let k = 0; k < 2; k++) {
      for (let at = 0; at < big.length; ) {
        const b = s.readBuffer();
        const n = Math.min(b.length, big.length - at, 1000);
        b.set(big.subarray(at, at + n));
        at += n;
        spans.push(...s.filled(b, n));
      }
    }
    expect(spans).toHaveLength(2);
    expect(spans[0]!.buffer).toBe(spans[1]!.buffer);
    expect(spans[1]!.equals(big)).toBe(true);
  });

  it('refuses a length no record can have, and flags', () => {
    const bad = rec(R.FUNCTION_RESET, 0);
    bad.writeUInt32LE(12, 4);
    expect(() => new RecordStream().push(bad)).toThrow(AbiError);
    const flagged = rec(R.FUNCTION_RESET, 0);
    flagged.writeUInt16LE(1, 2);
    expect(() => new RecordStream().push(flagged)).toThrow(AbiError);
    const huge = rec(R.FUNCTION_RESET, 0);
    huge.writeUInt32LE(1 << 30, 4);
    expect(() => new RecordStream().push(huge)).toThrow(AbiError);
  });
});

describe('RecordOut: records encoded in place', () => {
  /** The same messages through a translator that writes a buffer per record, and one that
   *  encodes into a RecordOut (the other records through write() into it as well). */
  function both(send: (t: RecordTranslator) => void) {
    const { t, records } = translator();
    send(t);
    const out = new RecordOut();
    const t2 = new RecordTranslator({ dev: 3, sink: () => {}, write: (r) => out.ref(r), out });
    send(t2);
    return { plain: Buffer.concat(records.map((x) => x.r)), pieces: out.take(), out };
  }

  it('gives the bytes a buffer per record gives, in order, in one piece', () => {
    const { plain, pieces } = both((t) => {
      t.toKernel({ shadowUpdate: { dev: 3, bar: 0, offset: long(0x1c), data: Uint8Array.of(1, 0, 0, 0) } });
      t.toKernel({ dmaWrite: { dev: 3, iova: long(0x1000_0000n), data: new Uint8Array(4096).fill(7) } });
      t.toKernel({ dmaRead: { dev: 3, tag: 1, iova: long(0x2000), length: 64 } });
      t.toKernel({ dmaWrite: { dev: 3, iova: long(0x1000_2000n), data: Uint8Array.of(1, 2, 3) } });
      t.toKernel({ interrupt: { dev: 3, vector: 2 } });
      t.toKernel({ writesApplied: { dev: 3, count: long(9) } });
    });
    expect(pieces).toHaveLength(1);
    expect(Buffer.from(pieces[0]!).equals(plain)).toBe(true);
    expect(parseTypes(plain)).toEqual([
      W.SHADOW,
      W.DMA_WRITE,
      W.DMA_READ,
      W.DMA_WRITE,
      W.INTERRUPT,
      W.WRITES_APPLIED,
    ]);
  });

  it('W_VIRTQ_DONE in place: the bytes of virtqDoneRecord(), no record buffer on the way', () => {
    const v = { id: 5, flags: VQ_F.RECHECK, vector: 0, oldUsed: 0x1fffe, newUsed: 3, kick: 0x10007 };
    const { plain, pieces } = both((t) => {
      t.toKernel({ interrupt: { dev: 3, vector: 1 } });
      t.toKernel({
        virtqDone: { dev: 3, rule: 5, recheck: true, oldUsed: 0x1fffe, newUsed: 3, kick: 0x10007 },
      });
      t.virtqDone(v);
    });
    expect(Buffer.from(pieces[0]!).equals(plain)).toBe(true);
    expect(plain.subarray(16, 48).equals(virtqDoneRecord(v))).toBe(true);
    expect(plain.subarray(48).equals(virtqDoneRecord(v))).toBe(true);
    let written = 0;
    const out = new RecordOut();
    const write = (r: Uint8Array) => {
      written++;
      out.ref(r);
    };
    const t = new RecordTranslator({ dev: 3, sink: () => {}, write, out });
    t.virtqDone(v);
    expect(written).toBe(0);
    expect(Buffer.from(out.take()[0]!).equals(virtqDoneRecord(v))).toBe(true);
    expect(virtqDoneFlags(true, true, true)).toBe(VQ_F.INTERRUPT | VQ_F.EVENT_IDX | VQ_F.RECHECK);
    expect(virtqDoneFlags(false, false, true)).toBe(VQ_F.RECHECK);
  });

  it('references a large payload handed over, between the pieces around it, padded', () => {
    const data = new Uint8Array(20_001).fill(0xab);
    const { plain, pieces } = both((t) => {
      t.toKernel({ interrupt: { dev: 3, vector: 1 } });
      t.toKernel({ dmaWrite: { dev: 3, iova: long(0x4000), data } }, data);
      t.toKernel({ interrupt: { dev: 3, vector: 1 } });
    });
    expect(pieces).toHaveLength(3);
    expect(pieces[1]!.buffer).toBe(data.buffer); // referenced, not copied
    expect(Buffer.concat(pieces).equals(plain)).toBe(true);
  });

  it('writes over its buffer only after release(); a record larger than it gets one of its own', () => {
    const out = new RecordOut();
    const t = new RecordTranslator({ dev: 3, sink: () => {}, write: (r) => out.ref(r), out });
    t.interrupt(1);
    const [first] = out.take();
    const kept = Buffer.from(first!);
    t.interrupt(2);
    expect(Buffer.from(first!).equals(kept)).toBe(true);
    const [second] = out.take();
    expect(second!.byteOffset).toBe(first!.byteOffset + first!.length);
    out.release();
    t.interrupt(3);
    expect(out.take()[0]!.byteOffset).toBe(first!.byteOffset);
    t.shadow(0, 0n, new Uint8Array(MAX_DATA));
    t.dmaWrite(0n, new Uint8Array(MAX_DATA), false);
    const big = out.take();
    expect(big.reduce((n, p) => n + p.length, 0)).toBe(2 * (MAX_DATA + 24));
    expect(parseTypes(Buffer.concat(big))).toEqual([W.SHADOW, W.DMA_WRITE]);
  });
});

describe('RecordOut: growing to what a reply needs', () => {
  it('keeps a larger buffer once a reply needed one, without touching bytes already taken', () => {
    const out = new RecordOut();
    const t = new RecordTranslator({ dev: 3, sink: () => {}, write: (r) => out.ref(r), out });
    const small = out.capacity;
    t.interrupt(1);
    const [first] = out.take();
    const kept = Buffer.from(first!);
    // A 256 KiB read's data, copied in (not handed over): four records after the interrupt.
    const data = Uint8Array.from({ length: 256 << 10 }, (_, i) => (i * 7) & 0xff);
    t.interrupt(2);
    t.dmaWrite(0x1000n, data, false);
    t.interrupt(3);
    const reply = out.take();
    expect(Buffer.from(first!).equals(kept)).toBe(true); // the socket may still have it
    expect(reply).toHaveLength(1);
    expect(out.capacity).toBeGreaterThan(small);
    const bytes = Buffer.from(reply[0]!);
    expect(parseTypes(bytes)).toEqual([
      W.INTERRUPT,
      W.DMA_WRITE,
      W.DMA_WRITE,
      W.DMA_WRITE,
      W.DMA_WRITE,
      W.INTERRUPT,
    ]);
    const got = Buffer.concat(
      [0, 1, 2, 3].map((k) => bytes.subarray(16 + k * (24 + MAX_DATA) + 24, 16 + (k + 1) * (24 + MAX_DATA))),
    );
    expect(got.equals(Buffer.from(data))).toBe(true);
    // Released, the next reply of that size reuses it: no new buffer.
    out.release();
    const grown = out.capacity;
    t.dmaWrite(0x1000n, data, false);
    const again = out.take();
    expect(again[0]!.buffer).toBe(reply[0]!.buffer);
    expect(out.capacity).toBe(grown);
  });

  it('pads a copied record with zeros whatever the buffer held before', () => {
    const out = new RecordOut();
    const t = new RecordTranslator({ dev: 3, sink: () => {}, write: (r) => out.ref(r), out });
    t.dmaWrite(0n, new Uint8Array(64).fill(0xff), false);
    out.take();
    out.release();
    t.dmaWrite(0n, Uint8Array.of(1, 2, 3), false);
    const [r] = out.take();
    expect([...r!]).toEqual([
      8, 0, 0, 0, 32, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0,
    ]);
  });
});

function parseTypes(b: Buffer): number[] {
  const types: number[] = [];
  for (let at = 0; at < b.length; at += b.readUInt32LE(at + 4)) types.push(b.readUInt16LE(at));
  return types;
}
