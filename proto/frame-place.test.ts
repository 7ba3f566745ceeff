// Placing frames: which heads are placeable (and that the ordinary decoder always agrees with what a
// placeable head says), and the frame parser reading placed data where its placer says.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeFrame, encodeMsg, encodeSequenced } from './codec.js';
import { PLACEABLE_HEAD, type PlacedFrame, peekPlaceable, placedMessages } from './frame-place.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { ErrorCode, long, type Msg, type pcinet } from './wire.js';

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

/** What a decoded message says: its body and every field a DmaReadCpl has (defaults included). */
function fields(m: pcinet.Msg) {
  const c = m.dmaReadCpl;
  return {
    body: m.body,
    keys: Object.keys(m).filter((k) => (m as unknown as Record<string, unknown>)[k] != null),
    cpl: c && { dev: c.dev, tag: c.tag, status: c.status, data: Buffer.from(c.data ?? []).toString('hex') },
  };
}

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
          expect(head).toEqual({ seq, ack, dev, tag, dataOffset: bytes.length - len, dataLength: len });
          const placed = placedMessages({ head: head!, data, length: bytes.length });
          const decoded = decodeFrame(bytes);
          expect({ seq: decoded.seq, ack: decoded.ack }).toEqual({ seq, ack });
          expect(placed.map(fields)).toEqual(decoded.msgs.map(fields));
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
      seq: 5,
      ack: 3,
      dev: 1,
      tag: 300,
      dataOffset: bytes.length - 4,
      dataLength: 4,
    });
    expect(decodeFrame(bytes).msgs[0]!.dmaReadCpl!.tag).toBe(300);
  });

  it('leaves everything else to the decoder', () => {
    const data = pattern(20_000, 1);
    const cases: [string, Uint8Array, number?][] = [
      ['two completions', frame(1, 0, [cpl(1, 1, data), cpl(1, 2, data)])],
      ['a refused completion', frame(1, 0, [cpl(1, 1, new Uint8Array(0), ErrorCode.DMA_FAULT)])],
      ['a DmaWrite', frame(1, 0, [{ dmaWrite: { dev: 1, iova: long(0), data } }])],
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
    const base = frame(7, 2, [cpl(3, 9, pattern(64, 5))]);
    const mutated = fc
      .tuple(fc.integer({ min: 0, max: 24 }), fc.integer({ min: 0, max: 255 }))
      .map(([at, b]) => {
        const m = Uint8Array.from(base);
        m[at] = b;
        return m;
      });
    fc.assert(
      fc.property(fc.oneof(mutated, fc.uint8Array({ minLength: 1, maxLength: 80 })), (bytes) => {
        const head = peekPlaceable(bytes, bytes.length);
        if (!head) return;
        const data = bytes.subarray(head.dataOffset);
        const decoded = decodeFrame(bytes);
        expect({ seq: decoded.seq, ack: decoded.ack }).toEqual({ seq: head.seq, ack: head.ack });
        const placed = placedMessages({ head, data, length: bytes.length });
        expect(placed.map(fields)).toEqual(decoded.msgs.map(fields));
      }),
      { numRuns: 5000 },
    );
  });
});

interface Sent {
  bytes: Uint8Array;
  /** The completion's data, for a placeable frame. */
  data?: Uint8Array;
  tag?: number;
}

/** Frames of every kind: placeable completions (large and small), other large frames, small ones. */
const FRAMES = fc.array(
  fc.oneof(
    fc.record({ kind: fc.constant('cpl' as const), len: fc.integer({ min: 1, max: 150_000 }) }),
    fc.record({ kind: fc.constant('write' as const), len: fc.integer({ min: 1, max: 70_000 }) }),
    fc.record({ kind: fc.constant('small' as const), len: fc.integer({ min: 0, max: 100 }) }),
  ),
  { minLength: 1, maxLength: 10 },
);

function build(kinds: { kind: 'cpl' | 'write' | 'small'; len: number }[]): Sent[] {
  return kinds.map((k, i) => {
    const data = pattern(k.len, i);
    if (k.kind === 'cpl') return { bytes: frame(i + 1, i, [cpl(1, i, data)]), data, tag: i };
    if (k.kind === 'write')
      return { bytes: frame(i + 1, 0, [{ dmaWrite: { dev: 1, iova: long(i), data } }]) };
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
          p.placer = {
            place: (dev, tag, length) => {
              expect(dev).toBe(1);
              const at = new Uint8Array(length + 8).subarray(4, 4 + length);
              places.set(tag, at);
              return at;
            },
            arrived: () => {},
          };
          const out: (Uint8Array | PlacedFrame)[] = [];
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
            // Only completions are placed, in the place given for their tag, with their own bytes.
            expect(s.tag).toBeDefined();
            expect(f.head.tag).toBe(s.tag);
            expect(f.length).toBe(s.bytes.length);
            expect(f.data).toBe(places.get(s.tag!));
            expect(Buffer.compare(f.data, s.data!)).toBe(0);
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
    p.placer = { place: (_d, _t, length) => new Uint8Array(length), arrived: () => {} };
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
