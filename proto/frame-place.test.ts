// Placing frames: which heads are placeable (and that the ordinary decoder always agrees with what a
// placeable head says), and the frame parser reading placed data where its placer says.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeFrame, encodeMsg, encodeSequenced } from './codec.js';
import { PLACEABLE_HEAD, type PlacedFrame, peekPlaceable, placedFrame } from './frame-place.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { ErrorCode, long, type Msg, type pcinet, u64 } from './wire.js';

const cpl = (dev: number, tag: number, data: Uint8Array, status?: ErrorCode): Msg => ({
  dmaReadCpl: { dev, tag, data, ...(status !== undefined ? { status } : {}) },
});

/** A frame as the session sends it: messages encoded one by one (large payloads by reference). */
function frame(seq: number, ack: number, msgs: Msg[]): Uint8Array {
  return encodeSequenced(
    seq,
    ack,
    msgs.map((m) => encodeMsg(m, m.dmaReadCpl?.data ?? m.dmaWrite?.data ?? undefined)),
  );
}

/** What a decoded message says: its body and every field a DmaReadCpl, DmaWrite or Interrupt has
 *  (defaults included). */
function fields(m: pcinet.Msg) {
  const c = m.dmaReadCpl;
  const w = m.dmaWrite;
  return {
    body: m.body,
    keys: Object.keys(m).filter((k) => (m as unknown as Record<string, unknown>)[k] != null),
    cpl: c && { dev: c.dev, tag: c.tag, status: c.status, data: Buffer.from(c.data ?? []).toString('hex') },
    write: w && { dev: w.dev, iova: u64(w.iova), data: Buffer.from(w.data ?? []).toString('hex') },
    interrupt: m.interrupt && { dev: m.interrupt.dev, vector: m.interrupt.vector },
  };
}

/** An encoded Interrupt message. */
const pcinet_interrupt = (dev: number, vector: number) => encodeMsg({ interrupt: { dev, vector } });

const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

describe('peekPlaceable', () => {
  it('reads the head of a frame that is one DmaReadCpl of OK status, as the decoder reads the frame', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 48 }),
        fc.integer({ min: 0, max: 2 ** 48 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.integer({ min: 1, max: 70_000 }),
        fc.boolean(),
        (seq, ack, dev, tag, len, statusOk) => {
          const data = pattern(len, tag);
          const bytes = frame(seq, ack, [cpl(dev, tag, data, statusOk ? ErrorCode.OK : undefined)]);
          const head = peekPlaceable(bytes.subarray(0, PLACEABLE_HEAD), bytes.length);
          const dataOffset = bytes.length - len;
          expect(head).toEqual({
            kind: 'dmaReadCpl',
            seq,
            ack,
            dev,
            tag,
            dataOffset,
            dataLength: len,
            tailLength: 0,
          });
          const headBytes = bytes.subarray(0, dataOffset);
          const placed = placedFrame({ head: head!, headBytes, data, length: bytes.length });
          const decoded = decodeFrame(bytes);
          expect({ seq: placed.seq, ack: placed.ack }).toEqual({ seq, ack });
          expect(placed.msgs.map(fields)).toEqual(decoded.msgs.map(fields));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('takes a hand-written head: seq 5, ack 3, dev 1, tag 300, 4 bytes', () => {
    // Frame{1: 5, 2: 3, 3: Msg{22: DmaReadCpl{1: 1, 2: 300, 4: de ad be ef}}}
    const bytes = Buffer.from(
      '0805' + '1003' + '1a0e' + 'b2010b' + '0801' + '10ac02' + '2204deadbeef',
      'hex',
    );
    expect(peekPlaceable(bytes, bytes.length)).toEqual({
      kind: 'dmaReadCpl',
      seq: 5,
      ack: 3,
      dev: 1,
      tag: 300,
      dataOffset: bytes.length - 4,
      dataLength: 4,
      tailLength: 0,
    });
    expect(decodeFrame(bytes).msgs[0]!.dmaReadCpl!.tag).toBe(300);
  });

  it('takes a hand-written DmaWrite head with a tail: seq 9, dev 2, iova 0x1000, 3 bytes, then an Interrupt', () => {
    // Frame{1: 9, 3: Msg{34: DmaWrite{1: 2, 2: fixed64 0x1000, 3: aa bb cc}}, 3: Msg{Interrupt{1: 2, 2: 5}}}
    const msg = '0802' + '110010000000000000' + '1a03aabbcc';
    const irq = Buffer.from(pcinet_interrupt(2, 5)).toString('hex');
    const irqLength = (irq.length / 2).toString(16).padStart(2, '0');
    const bytes = Buffer.from(['0809', '1a13', '9202', '10', msg, '1a', irqLength, irq].join(''), 'hex');
    const head = peekPlaceable(bytes, bytes.length);
    expect(head).toEqual({
      kind: 'dmaWrite',
      seq: 9,
      ack: 0,
      dev: 2,
      iova: 0x1000n,
      dataOffset: 2 + 2 + 3 + 2 + 9 + 2,
      dataLength: 3,
      tailLength: 2 + irq.length / 2,
    });
    const decoded = decodeFrame(bytes);
    expect(u64(decoded.msgs[0]!.dmaWrite!.iova)).toBe(0x1000n);
    expect(decoded.msgs[1]!.interrupt!.vector).toBe(5);
    const h = head!;
    const placed = placedFrame({
      head: h,
      headBytes: bytes.subarray(0, h.dataOffset),
      data: bytes.subarray(h.dataOffset, h.dataOffset + 3),
      tail: bytes.subarray(h.dataOffset + 3),
      length: bytes.length,
    });
    expect(placed.msgs.map(fields)).toEqual(decoded.msgs.map(fields));
  });

  it('reads a DmaWrite first in its frame, and whatever follows it, as the decoder reads the frame', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 48 }),
        fc.integer({ min: 0, max: 2 ** 48 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 1, max: 70_000 }),
        fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 4 }),
        (seq, ack, dev, iova, len, vectors) => {
          const data = pattern(len, dev);
          const after: Msg[] = vectors.map((v) => ({ interrupt: { dev, vector: v } }));
          const bytes = frame(seq, ack, [{ dmaWrite: { dev, iova: long(iova), data } }, ...after]);
          const head = peekPlaceable(bytes.subarray(0, PLACEABLE_HEAD), bytes.length)!;
          expect(head).toMatchObject({ kind: 'dmaWrite', seq, ack, dev, iova, dataLength: len });
          expect(Buffer.compare(bytes.subarray(head.dataOffset, head.dataOffset + len), data)).toBe(0);
          expect(head.dataOffset + len + head.tailLength).toBe(bytes.length);
          const placed = placedFrame({
            head,
            headBytes: bytes.subarray(0, head.dataOffset),
            data,
            tail: bytes.subarray(head.dataOffset + len),
            length: bytes.length,
          });
          const decoded = decodeFrame(bytes);
          expect({ seq: placed.seq, ack: placed.ack }).toEqual({ seq: decoded.seq, ack: decoded.ack });
          expect(placed.msgs.map(fields)).toEqual(decoded.msgs.map(fields));
          expect(placed.msgs[0]!.dmaWrite!.data).toBe(data);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('leaves everything else to the decoder', () => {
    const data = pattern(20_000, 1);
    const cases: [string, Uint8Array, number?][] = [
      ['two completions', frame(1, 0, [cpl(1, 1, data), cpl(1, 2, data)])],
      ['a refused completion', frame(1, 0, [cpl(1, 1, new Uint8Array(0), ErrorCode.DMA_FAULT)])],
      [
        'a DmaWrite after another message',
        frame(1, 0, [{ interrupt: { dev: 1 } }, { dmaWrite: { dev: 1, iova: long(0), data } }]),
      ],
      ['an empty DmaWrite', frame(1, 0, [{ dmaWrite: { dev: 1, iova: long(0), data: new Uint8Array(0) } }])],
      ['an empty completion', frame(1, 0, [cpl(1, 1, new Uint8Array(0))])],
      ['an unsequenced frame', Buffer.from('08001a05b2010208 01'.replace(/ /g, ''), 'hex')],
      ['a frame longer than its message', frame(1, 0, [cpl(1, 1, data)]), 1],
      ['a frame shorter than its message', frame(1, 0, [cpl(1, 1, data)]), -1],
    ];
    for (const [what, bytes, extra = 0] of cases) {
      expect(peekPlaceable(bytes, bytes.length + extra), what).toBeUndefined();
    }
    // A field past the data (the data is then not the frame's end).
    const withTail = Buffer.concat([frame(1, 0, [cpl(1, 1, data)]), Buffer.from('1801', 'hex')]);
    expect(peekPlaceable(withTail, withTail.length)).toBeUndefined();
    // A head cut short: not placeable from what is there.
    const whole = frame(1, 0, [cpl(1, 1, data)]);
    for (let n = 0; n < whole.length - data.length; n++)
      expect(peekPlaceable(whole.subarray(0, n), whole.length)).toBeUndefined();
  });

  it('never calls placeable what the decoder reads differently (random and mutated heads)', () => {
    const bases = [
      frame(7, 2, [cpl(3, 9, pattern(64, 5))]),
      frame(7, 2, [
        { dmaWrite: { dev: 3, iova: long(0x1234), data: pattern(64, 5) } },
        { interrupt: { dev: 3, vector: 1 } },
      ]),
    ];
    const mutated = fc
      .tuple(
        fc.integer({ min: 0, max: 1 }),
        fc.integer({ min: 0, max: 99 }),
        fc.integer({ min: 0, max: 255 }),
      )
      .map(([which, at, b]) => {
        const m = Uint8Array.from(bases[which]!);
        m[at % m.length] = b;
        return m;
      });
    fc.assert(
      fc.property(fc.oneof(mutated, fc.uint8Array({ minLength: 1, maxLength: 80 })), (bytes) => {
        const head = peekPlaceable(bytes, bytes.length);
        if (!head) return;
        const dataEnd = head.dataOffset + head.dataLength;
        const f = {
          head,
          headBytes: bytes.subarray(0, head.dataOffset),
          data: bytes.subarray(head.dataOffset, dataEnd),
          tail: bytes.subarray(dataEnd),
          length: bytes.length,
        };
        // Where the decoder refuses the frame, so does placedFrame; else both read the same.
        let decoded: ReturnType<typeof decodeFrame>;
        try {
          decoded = decodeFrame(bytes);
        } catch {
          expect(() => placedFrame(f)).toThrow();
          return;
        }
        const placed = placedFrame(f);
        expect({ seq: placed.seq, ack: placed.ack }).toEqual({ seq: decoded.seq, ack: decoded.ack });
        expect(placed.msgs.map(fields)).toEqual(decoded.msgs.map(fields));
      }),
      { numRuns: 5000 },
    );
  });
});

interface Sent {
  bytes: Uint8Array;
  /** The data, for a placeable frame (a completion, or a DmaWrite first in its frame). */
  data?: Uint8Array;
  /** The completion's tag or the DmaWrite's iova: the frame's index. */
  key?: number;
  /** The messages after a DmaWrite's data, encoded. */
  tail?: Uint8Array;
}

/** Frames of every kind: placeable completions (large and small), DmaWrites first in their frames
 *  (with 0 to 3 messages after them), small ones. */
const FRAMES = fc.array(
  fc.oneof(
    fc.record({
      kind: fc.constant('cpl' as const),
      len: fc.integer({ min: 1, max: 150_000 }),
      after: fc.constant(0),
    }),
    fc.record({
      kind: fc.constant('write' as const),
      len: fc.integer({ min: 1, max: 70_000 }),
      after: fc.integer({ min: 0, max: 3 }),
      // A large message after it too (a peer that batches DmaWrites): a long tail.
      big: fc.integer({ min: 0, max: 40_000 }),
    }),
    fc.record({
      kind: fc.constant('small' as const),
      len: fc.integer({ min: 0, max: 100 }),
      after: fc.constant(0),
    }),
  ),
  { minLength: 1, maxLength: 10 },
);

type Kind = { kind: 'cpl' | 'write' | 'small'; len: number; after?: number; big?: number };

function build(kinds: Kind[]): Sent[] {
  return kinds.map((k, i) => {
    const data = pattern(k.len, i);
    if (k.kind === 'cpl') return { bytes: frame(i + 1, i, [cpl(1, i, data)]), data, key: i };
    if (k.kind === 'write') {
      const after: Msg[] = Array.from({ length: k.after ?? 0 }, (_, v) => ({
        interrupt: { dev: 1, vector: v },
      }));
      if (k.big) after.push({ dmaWrite: { dev: 1, iova: long(1 << 20), data: pattern(k.big, 3) } });
      const bytes = frame(i + 1, 0, [{ dmaWrite: { dev: 1, iova: long(i), data } }, ...after]);
      const tailAt = encodeSequenced(i + 1, 0, [
        encodeMsg({ dmaWrite: { dev: 1, iova: long(i), data } }),
      ]).length;
      return { bytes, data, key: i, tail: bytes.subarray(tailAt) };
    }
    return { bytes: frame(i + 1, 0, [{ interrupt: { dev: 1, vector: k.len } }]) };
  });
}

function wire(frames: Sent[]): Uint8Array {
  return Buffer.concat(frames.flatMap((f) => [lengthPrefix(f.bytes.length), f.bytes]));
}

describe('FrameParser placing frames', () => {
  it('reads placeable data where the placer says, everything else as before, whatever the reads return', () => {
    fc.assert(
      fc.property(
        FRAMES,
        fc.array(fc.integer({ min: 1, max: 1 << 20 }), { minLength: 1 }),
        (kinds, reads) => {
          const sent = build(kinds);
          const bytes = wire(sent);
          const p = new FrameParser();
          const places = new Map<number, Uint8Array>();
          const out: (Uint8Array | PlacedFrame)[] = [];
          p.placer = {
            place: (head) => {
              expect(head.dev).toBe(1);
              const key = head.kind === 'dmaReadCpl' ? head.tag : Number(head.iova);
              // Asked only once every frame before it has been handed out.
              expect(out.length).toBe(key);
              const at = new Uint8Array(head.dataLength + 8).subarray(4, 4 + head.dataLength);
              places.set(key, at);
              return at;
            },
            arrived: () => {},
          };
          for (let at = 0, i = 0; at < bytes.length; i++) {
            const into = p.readBuffer();
            const n = Math.min(into.length, bytes.length - at, reads[i % reads.length]!);
            into.set(bytes.subarray(at, at + n));
            at += n;
            out.push(...p.filled(n));
          }
          expect(p.pending).toBe(0);
          expect(out.length).toBe(sent.length);
          for (const [i, f] of out.entries()) {
            const s = sent[i]!;
            if (f instanceof Uint8Array) {
              expect(Buffer.compare(f, s.bytes)).toBe(0);
              continue;
            }
            // Only placeable frames are placed, in the place given for them, with their own bytes.
            expect(s.key).toBe(i);
            expect(f.head.kind === 'dmaReadCpl' ? f.head.tag : Number(f.head.iova)).toBe(i);
            expect(f.length).toBe(s.bytes.length);
            expect(f.data).toBe(places.get(i));
            expect(Buffer.compare(f.data, s.data!)).toBe(0);
            expect(Buffer.compare(f.tail ?? new Uint8Array(0), s.tail ?? new Uint8Array(0))).toBe(0);
            // The frame it stands for is the frame sent.
            const decoded = decodeFrame(s.bytes);
            const placed = placedFrame(f);
            expect({ seq: placed.seq, ack: placed.ack }).toEqual({ seq: decoded.seq, ack: decoded.ack });
            expect(placed.msgs.map(fields)).toEqual(decoded.msgs.map(fields));
            // The bytes either side of the place are untouched.
            const around = new Uint8Array(f.data.buffer);
            expect([...around.subarray(0, 4), ...around.subarray(4 + f.data.length)]).toEqual([
              0, 0, 0, 0, 0, 0, 0, 0,
            ]);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('places large completions in a stream of them, reading only their heads outside the place', () => {
    const sent = build(Array.from({ length: 6 }, () => ({ kind: 'cpl' as const, len: 256 << 10 })));
    const bytes = wire(sent);
    const p = new FrameParser();
    const reads: number[] = [];
    p.placer = { place: (head) => new Uint8Array(head.dataLength), arrived: () => {} };
    const out: (Uint8Array | PlacedFrame)[] = [];
    for (let at = 0; at < bytes.length; ) {
      const into = p.readBuffer();
      // A socket with everything already there fills whatever it is given.
      const n = Math.min(into.length, bytes.length - at);
      into.set(bytes.subarray(at, at + n));
      at += n;
      reads.push(n);
      out.push(...p.filled(n));
    }
    expect(out.every((f) => !(f instanceof Uint8Array))).toBe(true);
    // The first frame starts in the scratch buffer; after it, reads stop at the next head.
    expect(reads.filter((n) => n <= 4 + PLACEABLE_HEAD).length).toBe(sent.length - 1);
  });

  it('reads a long tail after placed data in a few large reads, not head-sized ones', () => {
    const data = pattern(256 << 10, 1);
    const more = [1, 2, 3].map((i) => ({
      dmaWrite: { dev: 1, iova: long(i << 20), data: pattern(256 << 10, i) },
    }));
    const bytes = frame(1, 0, [{ dmaWrite: { dev: 1, iova: long(0), data } }, ...more]);
    const stream = Buffer.concat([lengthPrefix(bytes.length), bytes]);
    const p = new FrameParser();
    p.placer = { place: (head) => new Uint8Array(head.dataLength), arrived: () => {} };
    const out: (Uint8Array | PlacedFrame)[] = [];
    let reads = 0;
    for (let at = 0; at < stream.length; reads++) {
      const into = p.readBuffer();
      const n = Math.min(into.length, stream.length - at);
      into.set(stream.subarray(at, at + n));
      at += n;
      out.push(...p.filled(n));
    }
    expect(out).toHaveLength(1);
    const f = out[0] as PlacedFrame;
    expect(Buffer.compare(f.data, data)).toBe(0);
    expect(placedFrame(f).msgs.map(fields)).toEqual(decodeFrame(bytes).msgs.map(fields));
    // Scratch, the place, the tail's own buffer.
    expect(reads).toBeLessThanOrEqual(4);
  });

  it('a place refused (no placer, or it says no) reads the frame as before', () => {
    const sent = build([
      { kind: 'cpl', len: 100_000 },
      { kind: 'cpl', len: 100_000 },
    ]);
    const bytes = wire(sent);
    const p = new FrameParser();
    let asked = 0;
    p.placer = {
      place: () => {
        asked++;
        return undefined;
      },
      arrived: () => {},
    };
    const out: (Uint8Array | PlacedFrame)[] = [];
    for (let at = 0; at < bytes.length; ) {
      const into = p.readBuffer();
      const n = Math.min(into.length, bytes.length - at, 50_000);
      into.set(bytes.subarray(at, at + n));
      at += n;
      out.push(...p.filled(n));
    }
    expect(asked).toBe(2);
    expect(out.map((f) => Buffer.compare(f as Uint8Array, sent[out.indexOf(f)]!.bytes))).toEqual([0, 0]);
  });
});
