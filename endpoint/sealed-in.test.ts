import { describe, expect, it } from 'vitest';
import { interruptRecord, SEAL_MAX, SEAL_TAG, writesAppliedRecord } from '../proto/kernel-abi.js';
import { sealFrame } from './sealed-fixture.js';
import { SealedFrames } from './sealed-in.js';

const KEY = new Uint8Array(32).fill(7);
/** Three frames of whole records, numbered 0, 1, 2 as pcinet.ko numbers them. */
const TEXTS = [
  Buffer.concat([interruptRecord(1), writesAppliedRecord(5n)]),
  Buffer.concat(Array.from({ length: 2000 }, (_, i) => writesAppliedRecord(BigInt(i)))),
  interruptRecord(3),
];
const WIRE = Buffer.concat(TEXTS.map((t, i) => sealFrame(KEY, i, t)));

describe('SealedFrames', () => {
  it('opens frames however the reads cut them: one byte at a time, inside the length, many at once', () => {
    for (const cut of [1, 3, 4, 5, 1448, 65536, WIRE.length]) {
      const s = new SealedFrames(KEY);
      const out: Buffer[] = [];
      for (let at = 0; at < WIRE.length; at += cut) out.push(...s.push(WIRE.subarray(at, at + cut)));
      expect(out, `pieces of ${cut}`).toEqual(TEXTS);
    }
  });

  it("reads straight into its buffer (readBuffer, filled), or copies a buffer that isn't its own", () => {
    const s = new SealedFrames(KEY);
    const out: Buffer[] = [];
    for (let at = 0; at < WIRE.length; ) {
      const b = s.readBuffer();
      const n = Math.min(b.length, 1000, WIRE.length - at);
      b.set(WIRE.subarray(at, at + n));
      out.push(...s.filled(b, n));
      at += n;
    }
    expect(out).toEqual(TEXTS);
    const t = new SealedFrames(KEY);
    expect(t.filled(Uint8Array.from(WIRE), WIRE.length)).toEqual(TEXTS);
  });

  it('takes a frame of the largest size with a read behind it', () => {
    const text = Buffer.concat(
      Array.from({ length: SEAL_MAX / 16 }, (_, i) => writesAppliedRecord(BigInt(i))),
    );
    const wire = Buffer.concat([sealFrame(KEY, 0, text), sealFrame(KEY, 1, TEXTS[0]!)]);
    const s = new SealedFrames(KEY);
    const out: Buffer[] = [];
    for (let at = 0; at < wire.length; ) {
      const b = s.readBuffer();
      const n = Math.min(b.length, wire.length - at);
      b.set(wire.subarray(at, at + n));
      out.push(...s.filled(b, n));
      at += n;
    }
    expect(out).toEqual([text, TEXTS[0]]);
  });

  it('refuses a forged frame, one out of order, one of a length no link sends, one cutting a record', () => {
    const forged = sealFrame(KEY, 0, TEXTS[0]!);
    forged[10] ^= 1;
    expect(() => new SealedFrames(KEY).push(forged)).toThrow();
    expect(() => new SealedFrames(KEY).push(sealFrame(KEY, 1, TEXTS[0]!))).toThrow();
    const long = Buffer.alloc(8);
    long.writeUInt32LE(SEAL_MAX + SEAL_TAG + 1);
    expect(() => new SealedFrames(KEY).push(long)).toThrow(/sealed frame of/);
    expect(() => new SealedFrames(KEY).push(sealFrame(KEY, 0, TEXTS[0]!.subarray(0, 12)))).toThrow(
      /inside a record/,
    );
  });
});
