import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeFrame,
  encodeControl,
  encodeMsg,
  encodeSequenced,
  encodeSequencedParts,
  GATHER_MIN,
} from './codec.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { ErrorCode, long, MAX_FRAME_BYTES, ProtocolError, pcinet } from './wire.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function codeOf(f: () => unknown): ErrorCode | 'ok' | string {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof ProtocolError) return e.code;
    return `not a ProtocolError: ${(e as Error).stack}`;
  }
}

describe('frame codec on raw bytes', () => {
  it('encodes a sequenced frame of one MmioWrite exactly', () => {
    const m = encodeMsg({ mmioWrite: { dev: 1, bar: 0, offset: long(0x14), data: hex('01000000') } });
    // Msg field 20 (mmio_write), length 12: dev=1, bar=0 (set, so written), offset=0x14, data.
    expect(toHex(m)).toBe('a2010c' + '0801' + '1000' + '1814' + '220401000000');
    // Frame: seq=7, ack=3, msgs[0]
    expect(toHex(encodeSequenced(7, 3, [m]))).toBe('0807' + '1003' + '1a0f' + toHex(m));
  });

  it('decodes a hand-written frame: seq 2, ack 1, Interrupt{dev 1, vector 5}', () => {
    // Msg field 35 (interrupt) = tag (35<<3|2) = 0x11a -> varint 9a 02
    const f = decodeFrame(hex('0802 1001 1a07 9a0204 0801 1005'));
    expect(f.seq).toBe(2);
    expect(f.ack).toBe(1);
    expect(f.msgs).toHaveLength(1);
    expect(f.msgs[0]!.interrupt).toMatchObject({ dev: 1, vector: 5 });
  });

  it('decodes a control frame: Hello with version 1', () => {
    const bytes = encodeControl(0, [{ hello: { version: 1, agent: 'x' } }]);
    const f = decodeFrame(bytes);
    expect(f.seq).toBe(0);
    expect(f.msgs[0]!.hello?.version).toBe(1);
  });

  it.each([
    ['empty frame', '', ErrorCode.BAD_LENGTH],
    ['truncated length-delimited field', '0801 1a05 9a02', ErrorCode.MALFORMED],
    ['a length that lies (runs past the end)', '1aff7f00', ErrorCode.MALFORMED],
    ['invalid wire type 7', '0f', ErrorCode.MALFORMED],
    ['message with no known body (field 99)', '0801 1a03 9a0600', ErrorCode.UNKNOWN_MESSAGE],
    ['data message in an unsequenced frame', '1a03 9a0200', ErrorCode.UNEXPECTED_MESSAGE],
    ['Hello in a sequenced frame', '0801 1a04 0a020801', ErrorCode.UNEXPECTED_MESSAGE],
    ['sequenced frame with no messages', '0805', ErrorCode.BAD_LENGTH],
    ['seq beyond 2^53', '08ffffffffffffffff01 1a03 9a0200', ErrorCode.BAD_ARGUMENT],
  ])('%s -> %s', (_name, bytes, code) => {
    expect(codeOf(() => decodeFrame(hex(bytes)))).toBe(code);
  });

  it('refuses a frame over the maximum before decoding it', () => {
    expect(codeOf(() => decodeFrame(new Uint8Array(MAX_FRAME_BYTES + 1)))).toBe(ErrorCode.FRAME_TOO_LARGE);
  });
});

describe('length-prefixed framing', () => {
  it('splits frames across arbitrary chunk boundaries', () => {
    const frames = [hex('0801'), hex('aa'.repeat(300)), hex('0203')];
    const stream = Buffer.concat(frames.flatMap((f) => [lengthPrefix(f.length), f]));
    for (let cut = 1; cut < stream.length; cut += 7) {
      const p = new FrameParser();
      const out = [...p.push(stream.subarray(0, cut)), ...p.push(stream.subarray(cut))];
      expect(out.map(toHex)).toEqual(frames.map(toHex));
    }
  });

  it('checks the length prefix before allocating', () => {
    const p = new FrameParser();
    expect(codeOf(() => p.push(hex('ffffffff')))).toBe(ErrorCode.FRAME_TOO_LARGE);
    expect(codeOf(() => new FrameParser().push(hex('00000000')))).toBe(ErrorCode.BAD_LENGTH);
  });
});

// ≥ 10^5 inputs across the decoders in this file; every failure must be a ProtocolError.
describe('fuzzing the decoders', () => {
  const onlyCoded = (f: () => unknown) => {
    const r = codeOf(f);
    if (typeof r === 'string' && r !== 'ok') throw new Error(r);
  };

  it('decodeFrame: random bytes (40 000 inputs)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), (b) => onlyCoded(() => decodeFrame(b))),
      { numRuns: 40_000 },
    );
  });

  const validFrame = fc
    .record({
      seq: fc.integer({ min: 1, max: 1e6 }),
      ack: fc.integer({ min: 0, max: 1e6 }),
      dev: fc.integer({ min: 0, max: 10 }),
      data: fc.uint8Array({ maxLength: 64 }),
    })
    .map(({ seq, ack, dev, data }) =>
      encodeSequenced(seq, ack, [
        encodeMsg({ mmioWrite: { dev, bar: 0, offset: long(8), data } }),
        encodeMsg({ dmaReadCpl: { dev, tag: 3, status: 0, data } }),
      ]),
    );

  it('decodeFrame: mutated valid frames (40 000 inputs)', () => {
    fc.assert(
      fc.property(
        validFrame,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat(),
        (frame, flips, cut) => {
          const b = frame.slice(0, Math.max(0, frame.length - (cut % 4)));
          for (const [at, v] of flips) if (b.length > 0) b[at % b.length] = v;
          onlyCoded(() => decodeFrame(b));
        },
      ),
      { numRuns: 40_000 },
    );
  });

  it('FrameParser: random chunks (25 000 inputs)', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 6 }), (chunks) => {
        const p = new FrameParser();
        onlyCoded(() => {
          for (const c of chunks) for (const f of p.push(c)) decodeFrame(f);
        });
      }),
      { numRuns: 25_000 },
    );
  });

  it('gathers a frame: large messages by reference, the rest copied in runs; the bytes are what protobufjs writes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 40 }),
        fc.integer({ min: 0, max: 2 ** 40 }),
        fc.array(fc.integer({ min: 0, max: 3 * GATHER_MIN }), { minLength: 1, maxLength: 6 }),
        (seq, ack, sizes) => {
          const encoded = sizes.map((n, i) =>
            encodeMsg({ dmaWrite: { dev: i, iova: long(n), data: new Uint8Array(n).fill(i + 1) } }),
          );
          const parts = encodeSequencedParts(seq, ack, encoded);
          const want = pcinet.Frame.encode({
            seq: long(seq),
            ack: ack === 0 ? undefined : long(ack), // 0 is not written
            msgs: encoded.map((e) => pcinet.Msg.decode(e)),
          }).finish();
          expect(toHex(Buffer.concat(parts))).toBe(toHex(want));
          // Every large message is one of the parts itself (not a copy); small ones are not.
          for (const e of encoded) expect(parts.includes(e)).toBe(e.length >= GATHER_MIN);
          expect(parts.length).toBeLessThanOrEqual(2 * encoded.length + 1);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('encodes a handed-over payload by reference: the bytes protobufjs writes, the payload itself a part', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 3 * GATHER_MIN }),
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.boolean(),
        (n, dev, iova, cpl) => {
          const data = new Uint8Array(n).map((_, i) => i * 7);
          const m: pcinet.IMsg = cpl
            ? { dmaReadCpl: { dev, tag: dev ^ 5, status: 0, data } }
            : { dmaWrite: { dev, iova: long(iova), data } };
          const e = encodeMsg(m, data);
          const whole = pcinet.Msg.encode(m).finish();
          if (n < GATHER_MIN) {
            expect(e).toBeInstanceOf(Uint8Array);
            return;
          }
          expect(Array.isArray(e)).toBe(true);
          const parts = e as Uint8Array[];
          expect(parts[1]).toBe(data);
          expect(toHex(Buffer.concat(parts))).toBe(toHex(whole));
          const f = decodeFrame(encodeSequenced(9, 4, [e, encodeMsg({ interrupt: { dev, vector: 1 } })]));
          expect(toHex(pcinet.Msg.encode(f.msgs[0]!).finish())).toBe(toHex(whole));
        },
      ),
      { numRuns: 200 },
    );
    // Only the message's own payload goes by reference; other bodies are encoded whole.
    const big = new Uint8Array(GATHER_MIN);
    expect(encodeMsg({ dmaWrite: { dev: 1, iova: long(0), data: big } }, big.slice())).toBeInstanceOf(
      Uint8Array,
    );
    expect(encodeMsg({ shadowUpdate: { dev: 1, bar: 0, offset: long(0), data: big } }, big)).toBeInstanceOf(
      Uint8Array,
    );
  });

  it('round-trips every message kind through encodeSequenced/decodeFrame', () => {
    const m: pcinet.IMsg = { dmaWrite: { dev: 2, iova: long(0xfeed_0000_1000n), data: hex('0102') } };
    const f = decodeFrame(encodeSequenced(1, 0, [encodeMsg(m)]));
    expect(toHex(pcinet.Msg.encode(f.msgs[0]!).finish())).toBe(toHex(encodeMsg(m)));
  });
});
