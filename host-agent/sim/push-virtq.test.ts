// The VIRTQ push-rule walker (docs/PUSH.md) over simulated host memory: split virtqueues laid out
// as Linux's virtio_ring lays them out, mapped through the soft IOMMU (push.test.ts: NVMe SQs).
import { describe, expect, it } from 'vitest';
import { leBytes, wr16, wr32, wr64 } from '../../devices/pci/le.js';
import type { PushRule } from '../../devices/push.js';
import { PAGE } from './iommu.js';
import { PUSH_MAX_STEPS, PUSH_RECORD_BYTES } from './push.js';
import { spans, world } from './push-world.js';

const NOTIFY = 0x3000;
const F_NEXT = 1;
const F_WRITE = 2;
const F_INDIRECT = 4;

/** A split virtqueue as vring_create_virtqueue lays it out: descriptors then the driver area, in
 *  one coherent allocation. */
function virtq(w: ReturnType<typeof world>, size: number, rule: Partial<PushRule> = {}, id = 5) {
  const mem = w.buffer(16 * size + 6 + 2 * size, 'bidirectional');
  const desc = mem.iova;
  const avail = mem.iova + BigInt(16 * size);
  w.rules.set(id, {
    kind: 'virtq',
    bar: 4,
    notify: NOTIFY,
    desc,
    avail,
    size,
    dataMax: 64 << 10,
    indirect: true,
    ...rule,
  } as PushRule);
  let idx = 0;
  return {
    desc,
    avail,
    /** Descriptor `i`, in the main table or in a given table's bytes. */
    set(i: number, addr: bigint, len: number, flags = 0, next = 0, table: Uint8Array = mem.bytes) {
      wr64(table, 16 * i, addr);
      wr32(table, 16 * i + 8, len);
      wr16(table, 16 * i + 12, flags);
      wr16(table, 16 * i + 14, next);
    },
    /** Makes `head` available and publishes the index. */
    publish(...heads: number[]) {
      for (const h of heads) wr16(mem.bytes, 16 * size + 4 + 2 * (idx++ % size), h);
      wr16(mem.bytes, 16 * size + 2, idx & 0xffff);
    },
    setIdx(v: number) {
      idx = v;
      wr16(mem.bytes, 16 * size + 2, v & 0xffff);
    },
    /** The driver's notify: the queue index, written to the notify address. */
    notify: () => w.ring(4, NOTIFY, 0),
    /** What every notify pushes first: the driver area, then the descriptor table. */
    rings: (): [number, bigint, number][] => [
      [id, avail, 6 + 2 * size],
      [id, desc, 16 * size],
    ],
  };
}

describe('VIRTQ push rules', () => {
  it('pushes the driver area and the descriptor table on a notify, even with nothing new', () => {
    const w = world();
    const q = virtq(w, 8);
    const out = q.notify();
    expect(spans(out)).toEqual(q.rings());
    expect(out[0].data.length).toBe(22);
  });

  it('pushes the readable buffers of the new heads, and only of new heads next time', () => {
    const w = world();
    const q = virtq(w, 8);
    const hdr = w.buffer(12);
    const frame = w.buffer(1500);
    const hdr2 = w.buffer(12);
    q.set(0, hdr.iova, 12, F_NEXT, 1);
    q.set(1, frame.iova, 1500);
    q.set(2, hdr2.iova, 12);
    q.publish(0);
    expect(spans(q.notify())).toEqual([...q.rings(), [5, hdr.iova, 12], [5, frame.iova, 1500]]);
    q.publish(2);
    expect(spans(q.notify())).toEqual([...q.rings(), [5, hdr2.iova, 12]]);
    expect(w.rules.last(5)).toBe(2);
  });

  it('pushes no data for a chain with only writable buffers (a receive buffer)', () => {
    const w = world();
    const q = virtq(w, 8);
    const rx = w.buffer(2048, 'from-device');
    q.set(3, rx.iova, 2048, F_WRITE);
    q.publish(3);
    expect(spans(q.notify())).toEqual(q.rings());
    expect(w.rules.skipped).toBe(0);
  });

  it('pushes the readable part before the first writable buffer (a block request)', () => {
    const w = world();
    const q = virtq(w, 8);
    const req = w.buffer(16);
    const data = w.buffer(PAGE, 'from-device');
    const status = w.buffer(1, 'from-device');
    const late = w.buffer(8);
    q.set(0, req.iova, 16, F_NEXT, 1);
    q.set(1, data.iova, PAGE, F_NEXT | F_WRITE, 2);
    q.set(2, late.iova, 8, F_NEXT, 3); // readable after writable: not part of the readable bytes
    q.set(3, status.iova, 1, F_WRITE);
    q.publish(0);
    expect(spans(q.notify())).toEqual([...q.rings(), [5, req.iova, 16]]);
  });

  it('does not push the readable bytes of a chain larger than data_max', () => {
    const w = world();
    const q = virtq(w, 8, { dataMax: 1000 });
    const a = w.buffer(600);
    const b = w.buffer(600);
    const c = w.buffer(1000);
    q.set(0, a.iova, 600, F_NEXT, 1);
    q.set(1, b.iova, 600);
    q.set(2, c.iova, 1000);
    q.publish(0, 2);
    expect(spans(q.notify())).toEqual([...q.rings(), [5, c.iova, 1000]]);
  });

  it('pushes no buffers with data_max 0, only the rings', () => {
    const w = world();
    const q = virtq(w, 8, { dataMax: 0, indirect: false });
    const a = w.buffer(64);
    q.set(0, a.iova, 64);
    q.publish(0);
    expect(spans(q.notify())).toEqual(q.rings());
  });

  it('follows an indirect table when the rule allows it, and not without the flag', () => {
    for (const indirect of [true, false]) {
      const w = world();
      const q = virtq(w, 8, { indirect });
      const table = w.buffer(48);
      const hdr = w.buffer(12);
      const frame = w.buffer(300);
      const rx = w.buffer(100, 'from-device');
      q.set(0, hdr.iova, 12, F_NEXT, 1, table.bytes);
      q.set(1, frame.iova, 300, F_NEXT, 2, table.bytes);
      q.set(2, rx.iova, 100, F_WRITE, 0, table.bytes);
      q.set(4, table.iova, 48, F_INDIRECT);
      q.publish(4);
      expect(spans(q.notify())).toEqual(
        indirect ? [...q.rings(), [5, table.iova, 48], [5, hdr.iova, 12], [5, frame.iova, 300]] : q.rings(),
      );
    }
  });

  it('stops at malformed indirect descriptors: bad length, NEXT, nested', () => {
    const w = world();
    const q = virtq(w, 8);
    const buf = w.buffer(64);
    const inner = w.buffer(16);
    q.set(0, buf.iova, 64, 0, 0, inner.bytes);
    const nested = w.buffer(16);
    q.set(0, inner.iova, 16, F_INDIRECT, 0, nested.bytes);
    q.set(0, inner.iova, 24, F_INDIRECT); // not a multiple of 16
    q.set(1, inner.iova, 0, F_INDIRECT); // empty
    q.set(2, inner.iova, 16, F_INDIRECT | F_NEXT, 3); // indirect and NEXT
    q.set(3, nested.iova, 16, F_INDIRECT); // a table whose only descriptor is indirect again
    q.publish(0, 1, 2, 3);
    expect(spans(q.notify())).toEqual([...q.rings(), [5, nested.iova, 16]]);
  });

  it('ends a looping chain, in the main table and in an indirect one, pushing none of its data', () => {
    const w = world();
    const q = virtq(w, 8);
    const a = w.buffer(10);
    const b = w.buffer(10);
    const ok = w.buffer(10);
    q.set(0, a.iova, 10, F_NEXT, 1);
    q.set(1, b.iova, 10, F_NEXT, 0);
    const table = w.buffer(32);
    q.set(0, a.iova, 10, F_NEXT, 1, table.bytes);
    q.set(1, b.iova, 10, F_NEXT, 1, table.bytes);
    q.set(2, table.iova, 32, F_INDIRECT);
    q.set(3, ok.iova, 10);
    q.publish(0, 2, 3);
    expect(spans(q.notify())).toEqual([...q.rings(), [5, table.iova, 32], [5, ok.iova, 10]]);
  });

  it('walks a chain through every descriptor of the table', () => {
    const w = world();
    const q = virtq(w, 8);
    const bufs = Array.from({ length: 8 }, () => w.buffer(100));
    // In reverse table order, so no index is its successor's neighbour.
    for (const [i, b] of bufs.entries()) q.set(7 - i, b.iova, 100, i < 7 ? F_NEXT : 0, 6 - i);
    q.publish(7);
    expect(spans(q.notify())).toEqual([...q.rings(), ...bufs.map((b) => [5, b.iova, 100])]);
  });

  it('ends a chain at a head or next past the table', () => {
    const w = world();
    const q = virtq(w, 8);
    const a = w.buffer(10);
    q.set(0, a.iova, 10, F_NEXT, 8);
    q.publish(0, 9, 0xffff);
    expect(spans(q.notify())).toEqual(q.rings());
  });

  it('pushes nothing when avail idx jumped by more than the queue size, and keeps its position', () => {
    const w = world();
    const q = virtq(w, 8);
    q.setIdx(3);
    q.notify();
    expect(w.rules.last(5)).toBe(3);
    q.setIdx(3 + 9);
    expect(q.notify()).toEqual([]);
    expect(w.rules.last(5)).toBe(3);
    q.setIdx(3 + 8); // exactly a full ring is fine
    expect(spans(q.notify())).toEqual(q.rings());
    expect(w.rules.last(5)).toBe(11);
  });

  it('counts the index modulo 65536', () => {
    const w = world();
    const q = virtq(w, 8);
    q.setIdx(0xfffe);
    expect(q.notify()).toEqual([]); // from 0, that is 65534 new heads: broken
    for (let idx = 8; idx <= 0xfff8; idx += 8) {
      q.setIdx(idx);
      w.rules.onWrite(4, NOTIFY, leBytes(0, 4), w.peek);
    }
    expect(w.rules.last(5)).toBe(0xfff8);
    const bufs = [w.buffer(10), w.buffer(20), w.buffer(30)];
    for (const [i, b] of bufs.entries()) q.set(i, b.iova, b.bytes.length);
    q.setIdx(0xfff8);
    q.publish(0, 1, 2); // ring slots 0xfff8 % 8 = 0, 1, 2
    expect(spans(q.notify()).slice(2)).toEqual(bufs.map((b) => [5, b.iova, b.bytes.length]));
    q.setIdx(0x10002); // 0x0002: seven new, across the wrap
    expect(spans(q.notify())).toHaveLength(2 + 7);
    expect(w.rules.last(5)).toBe(2);
    // Set again for the same ring, it keeps its position; removed and set, it starts from 0.
    const rule = w.rules.get(5);
    w.rules.set(5, rule);
    expect(w.rules.last(5)).toBe(2);
    w.rules.set(5, undefined);
    w.rules.set(5, rule);
    expect(w.rules.last(5)).toBe(0);
  });

  it('stops walking when a doorbell has used its allowance of steps', () => {
    const w = world();
    const q = virtq(w, 8192);
    // Forty heads share one chain of 4096 empty readable descriptors: 160k descriptor reads, more
    // than PUSH_MAX_STEPS, though only the rings and one buffer would be pushed.
    for (let i = 0; i < 4096; i++) q.set(i, 0n, 0, i < 4095 ? F_NEXT : 0, i + 1);
    const last = w.buffer(64);
    q.set(5000, last.iova, 64);
    q.publish(...Array.from({ length: 40 }, () => 0), 5000);
    expect(40 * 4096).toBeGreaterThan(PUSH_MAX_STEPS);
    // The rings: the driver area, and the 128 KiB table in two pushes.
    const rings = [
      [5, q.avail, 6 + 2 * 8192],
      [5, q.desc, PUSH_RECORD_BYTES],
      [5, q.desc + BigInt(PUSH_RECORD_BYTES), PUSH_RECORD_BYTES],
    ];
    expect(spans(q.notify())).toEqual(rings);
    expect(w.rules.skipped).toBe(1);
    expect(w.rules.last(5)).toBe(41);
    // The same buffer behind a short ring is pushed: only the allowance stopped it.
    q.publish(5000);
    expect(spans(q.notify())).toEqual([...rings, [5, last.iova, 64]]);
  });

  it('walks nothing and moves on when the driver area is not readable', () => {
    const w = world();
    const q = virtq(w, 8);
    q.setIdx(2);
    w.iommu.unmap(q.desc);
    expect(q.notify()).toEqual([]);
    expect(w.rules.last(5)).toBe(0);
  });
});
