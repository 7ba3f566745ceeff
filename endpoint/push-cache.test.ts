import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PushCache } from './push-cache.js';

const bytes = (n: number, seed = 1) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

describe('PushCache', () => {
  it('serves a read covered by one push, once', () => {
    const c = new PushCache();
    const data = bytes(64);
    c.add(0x1000n, data, 1);
    expect(c.take(0x1010n, 16)).toEqual(data.subarray(16, 32));
    // Those 16 bytes are consumed; the rest is still there.
    expect(c.take(0x1010n, 16)).toBeUndefined();
    expect(c.take(0x1000n, 16)).toEqual(data.subarray(0, 16));
    expect(c.take(0x1020n, 32)).toEqual(data.subarray(32));
    expect(c.bytes).toBe(0);
    expect(c.segments).toBe(0);
  });

  it('serves a read across adjacent pushes (a data buffer pushed in pieces) and not across a gap', () => {
    const c = new PushCache();
    c.add(0x2000n, bytes(4096, 1), 0);
    c.add(0x3000n, bytes(4096, 2), 0);
    c.add(0x5000n, bytes(4096, 3), 0);
    const got = c.take(0x2800n, 4096)!;
    expect(got.subarray(0, 2048)).toEqual(bytes(4096, 1).subarray(2048));
    expect(got.subarray(2048)).toEqual(bytes(4096, 2).subarray(0, 2048));
    expect(c.take(0x3800n, 0x2000)).toBeUndefined(); // 0x4000 was never pushed
    expect(c.bytes).toBe(2048 + 2048 + 4096);
  });

  it('keeps an owned push that is most of its buffer as it is; copies others', () => {
    const c = new PushCache();
    // A record's buffer: a 24-byte head, then the pushed bytes (a kernel link's R_PUSH).
    const record = new Uint8Array(24 + 4096);
    const data = record.subarray(24);
    data.set(bytes(4096, 5));
    c.stage(0x1000n, data, 0, 'own');
    // A small push from the same kind of buffer is copied: it would keep the rest alive.
    const big = new Uint8Array(65536);
    c.stage(0x8000n, big.subarray(64, 128), 0, 'own');
    // Not owned: copied, whatever its size.
    const mine = bytes(4096, 6);
    c.stage(0x3000n, mine, 0);
    c.commit();
    const a = c.take(0x1000n, 4096)!;
    expect(a.buffer).toBe(record.buffer);
    expect(a).toEqual(bytes(4096, 5));
    expect(c.take(0x8000n, 64)!.buffer).not.toBe(big.buffer);
    const b = c.take(0x3000n, 4096)!;
    expect(b.buffer).not.toBe(mine.buffer);
    expect(b).toEqual(bytes(4096, 6));
  });

  it('lent bytes: served as copies, and copied when settled; never the lender’s buffer afterwards', () => {
    const c = new PushCache();
    // The link's read buffer: two pushes in it, lent.
    const readBuf = new Uint8Array(8192);
    readBuf.set(bytes(4096, 1), 0);
    readBuf.set(bytes(4096, 2), 4096);
    c.stage(0x1000n, readBuf.subarray(0, 4096), 0, 'lend');
    c.stage(0x9000n, readBuf.subarray(4096), 0, 'lend');
    c.commit();
    // Read during the batch: a copy, into the caller's buffer when given.
    const into = new Uint8Array(8192);
    const a = c.take(0x1000n, 4096, into)!;
    expect(a.buffer).toBe(into.buffer);
    expect(a).toEqual(bytes(4096, 1));
    const part = c.take(0x9000n, 16)!;
    expect(part.buffer).not.toBe(readBuf.buffer);
    // Another lender's buffer about to be reused: nothing of this one is copied.
    const other = new Uint8Array(64).fill(7);
    c.stage(0x4000n, other, 0, 'lend');
    c.settle(readBuf.buffer);
    // This lender's buffer about to be reused: what is left of it is copied first.
    readBuf.fill(0xee);
    expect(c.take(0x9010n, 4080)).toEqual(bytes(4096, 2).subarray(16));
    other.fill(8);
    c.commit();
    expect(c.take(0x4000n, 64)).toEqual(new Uint8Array(64).fill(8)); // still lent: as it is now
    // Staged, not yet committed: copied as well.
    c.stage(0x2000n, readBuf.subarray(0, 64), 0, 'lend');
    c.settle(readBuf.buffer);
    readBuf.fill(0x11);
    c.commit();
    expect(c.take(0x2000n, 64)).toEqual(new Uint8Array(64).fill(0xee));
  });

  it('keeps the newest bytes where pushes overlap', () => {
    const c = new PushCache();
    c.add(0x1000n, new Uint8Array(32).fill(1), 0);
    c.add(0x1008n, new Uint8Array(8).fill(2), 0);
    expect([...c.take(0x1000n, 32)!]).toEqual([
      ...new Array(8).fill(1),
      ...new Array(8).fill(2),
      ...new Array(16).fill(1),
    ]);
  });

  it('copies what it keeps: the buffer a push arrived in may be reused', () => {
    const c = new PushCache();
    const frame = bytes(16);
    c.add(0n, frame, 0);
    frame.fill(0);
    expect(c.take(0n, 16)).toEqual(bytes(16));
  });

  it('drop forgets a range (an unmapped buffer), dropRule what one rule pushed', () => {
    const c = new PushCache();
    c.add(0x1000n, bytes(0x100), 1);
    c.add(0x4000n, bytes(0x100), 2);
    c.drop(0x1080n, 0x10n);
    expect(c.take(0x1000n, 0x100)).toBeUndefined();
    expect(c.take(0x1000n, 0x80)).toEqual(bytes(0x100).subarray(0, 0x80));
    c.dropRule(2);
    expect(c.take(0x4000n, 1)).toBeUndefined();
    expect(c.bytes).toBe(0x100 - 0x80 - 0x10);
    c.clear();
    expect(c.bytes).toBe(0);
  });

  it('evicts the oldest bytes beyond its bound', () => {
    const c = new PushCache(8192);
    c.add(0x1000n, bytes(4096, 1), 0);
    c.add(0x9000n, bytes(4096, 2), 0);
    c.add(0x5000n, bytes(4096, 3), 0);
    expect(c.evicted).toBe(1);
    expect(c.take(0x1000n, 1)).toBeUndefined();
    expect(c.take(0x9000n, 4096)).toEqual(bytes(4096, 2));
    expect(c.take(0x5000n, 4096)).toEqual(bytes(4096, 3));
  });

  it('serves staged pushes only from their commit (the doorbell write), all of them at once', () => {
    const c = new PushCache();
    c.add(0x1000n, bytes(64, 1), 0); // an older doorbell's table, unread
    c.stage(0x1000n, bytes(64, 2), 0); // this doorbell's table …
    c.stage(0x2000n, bytes(16, 3), 0); // … and its ring
    expect(c.staged).toBe(80);
    expect(c.take(0x2000n, 16)).toBeUndefined();
    expect(c.take(0x1000n, 64)).toEqual(bytes(64, 1));
    c.stage(0x1000n, bytes(64, 4), 0);
    c.commit();
    expect([c.staged, c.bytes]).toEqual([0, 80]);
    expect(c.take(0x2000n, 16)).toEqual(bytes(16, 3));
    expect(c.take(0x1000n, 64)).toEqual(bytes(64, 4)); // staged later, newer
  });

  it('drops staged bytes too: a read completion or an unmap between a push and its doorbell', () => {
    const c = new PushCache();
    c.stage(0x1000n, bytes(64, 1), 0);
    c.stage(0x3000n, bytes(64, 2), 1);
    c.drop(0x1010n, 16);
    c.dropRule(1);
    c.commit();
    expect(c.bytes).toBe(48);
    expect(c.take(0x1000n, 16)).toEqual(bytes(64, 1).subarray(0, 16));
    expect(c.take(0x1010n, 16)).toBeUndefined();
    expect(c.take(0x1020n, 32)).toEqual(bytes(64, 1).subarray(32));
    expect(c.take(0x3000n, 1)).toBeUndefined();
    c.stage(0x4000n, bytes(8), 0);
    c.clear();
    c.commit();
    expect(c.bytes).toBe(0);
  });

  it('evicts a doorbell’s pushes together', () => {
    const c = new PushCache(8192);
    c.stage(0x1000n, bytes(2048, 1), 0);
    c.stage(0x8000n, bytes(2048, 2), 0);
    c.commit();
    c.add(0x5000n, bytes(4096, 3), 0);
    c.add(0x9000n, bytes(1024, 4), 0);
    expect(c.evicted).toBe(2);
    expect(c.take(0x8000n, 1)).toBeUndefined();
    expect(c.take(0x1000n, 1)).toBeUndefined();
    expect(c.take(0x5000n, 4096)).toEqual(bytes(4096, 3));
  });

  it('agrees with a byte map under random pushes, drops and takes', () => {
    const op = fc.oneof(
      fc.record({ k: fc.constant('add' as const), at: fc.nat(512), len: fc.integer({ min: 1, max: 96 }) }),
      fc.record({ k: fc.constant('drop' as const), at: fc.nat(512), len: fc.integer({ min: 1, max: 96 }) }),
      fc.record({ k: fc.constant('take' as const), at: fc.nat(512), len: fc.integer({ min: 1, max: 96 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const c = new PushCache();
        const model = new Map<number, number>();
        let n = 0;
        for (const o of ops) {
          if (o.k === 'add') {
            const data = Uint8Array.from({ length: o.len }, () => ++n & 0xff);
            c.add(BigInt(o.at), data, 0);
            for (const [i, b] of data.entries()) model.set(o.at + i, b);
          } else if (o.k === 'drop') {
            c.drop(BigInt(o.at), o.len);
            for (let i = 0; i < o.len; i++) model.delete(o.at + i);
          } else {
            const want: number[] = [];
            for (let i = 0; i < o.len; i++) if (model.has(o.at + i)) want.push(model.get(o.at + i)!);
            const got = c.take(BigInt(o.at), o.len);
            if (want.length === o.len) {
              expect(got && [...got]).toEqual(want);
              for (let i = 0; i < o.len; i++) model.delete(o.at + i);
            } else expect(got).toBeUndefined();
          }
          expect(c.bytes).toBe(model.size);
        }
      }),
    );
  });
});
