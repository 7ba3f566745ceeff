// The push-rule walkers (docs/PUSH.md) over simulated host memory: queues and buffers are laid out
// byte by byte the way the Linux nvme and virtio drivers lay them out, mapped through the soft
// IOMMU, and the doorbell value is the raw bytes the driver stores. NVMe SQs and the rule table
// here, virtqueues in push-virtq.test.ts.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { leBytes, wr16, wr32, wr64 } from '../../devices/pci/le.js';
import type { PushRule } from '../../devices/push.js';
import { PAGE } from './iommu.js';
import { PUSH_RECORD_BYTES, PushRules } from './push.js';
import { SMALL_BUDGET, spans, world } from './push-world.js';

const SQ_DB = 0x1008; // SQ 1 tail doorbell, stride 0
const OP_WRITE = 0x01;
const OP_READ = 0x02;

function sqe(opcode: number, o: { prp1?: bigint; prp2?: bigint; nlb?: number; cid?: number } = {}) {
  const b = new Uint8Array(64);
  b[0] = opcode;
  wr16(b, 2, o.cid ?? 0);
  wr32(b, 4, 1); // NSID
  wr64(b, 24, o.prp1 ?? 0n);
  wr64(b, 32, o.prp2 ?? 0n);
  wr32(b, 48, o.nlb ?? 0);
  return b;
}

/** An SQ as the driver allocates it (coherent memory: mapped both ways). */
function nvmeQueue(w: ReturnType<typeof world>, entries: number, rule: Partial<PushRule> = {}, id = 3) {
  const q = w.buffer(64 * entries, 'bidirectional');
  w.rules.set(id, {
    kind: 'nvme-sq',
    bar: 0,
    doorbell: SQ_DB,
    base: q.iova,
    entries,
    dataMax: 128 << 10,
    lbaShift: 12,
    ...rule,
  } as PushRule);
  return {
    ...q,
    put: (slot: number, entry: Uint8Array) => q.bytes.set(entry, 64 * slot),
    at: (slot: number) => q.iova + BigInt(64 * slot),
  };
}

/** A PRP list page for `pages` (and a chain pointer), `offset` bytes into its page. */
function prpList(w: ReturnType<typeof world>, entries: bigint[], offset = 0) {
  const l = w.buffer(8 * entries.length, 'to-device', offset);
  for (const [i, e] of entries.entries()) wr64(l.bytes, 8 * i, e);
  return l;
}

describe('NVME_SQ push rules', () => {
  it('pushes the new entries on the tail doorbell, and only the new ones next time', () => {
    const w = world();
    const sq = nvmeQueue(w, 8);
    for (let i = 0; i < 5; i++) sq.put(i, sqe(OP_READ, { cid: i }));
    expect(spans(w.ring(0, SQ_DB, 3))).toEqual([[3, sq.iova, 192]]);
    expect(w.rules.last(3)).toBe(3);
    const next = w.ring(0, SQ_DB, 5);
    expect(spans(next)).toEqual([[3, sq.at(3), 128]]);
    expect(next[0].data[2]).toBe(3); // CID of entry 3
    expect(w.ring(0, SQ_DB, 5)).toEqual([]); // tail == last: nothing new
    expect(w.rules.skipped).toBe(0);
  });

  it('keeps its position when replaced for the same ring (an event index added mid-stream)', () => {
    const w = world();
    const sq = nvmeQueue(w, 8);
    for (let i = 0; i < 6; i++) sq.put(i, sqe(OP_READ, { cid: i }));
    w.ring(0, SQ_DB, 5);
    // Doorbell Buffer Config after a reset, with I/O running: the same SQ, now with an event index.
    const rule = w.rules.get(3)!;
    w.rules.set(3, { ...rule, eventIdx: w.buffer(4, 'bidirectional').iova } as PushRule);
    expect(w.rules.last(3)).toBe(5);
    // Only the new entry: entries 0..4 were consumed long ago (their PRP lists may be free now).
    expect(spans(w.ring(0, SQ_DB, 6))).toEqual([[3, sq.at(5), 64]]);
    // A rule for another ring (a queue deleted and created again elsewhere) starts at 0.
    const other = w.buffer(64 * 8, 'bidirectional');
    w.rules.set(3, { ...rule, base: other.iova } as PushRule);
    expect(w.rules.last(3)).toBe(0);
  });

  it('pushes a ring that wraps as two ranges, the older entries first', () => {
    const w = world();
    const sq = nvmeQueue(w, 8);
    w.ring(0, SQ_DB, 6);
    expect(spans(w.ring(0, SQ_DB, 2))).toEqual([
      [3, sq.at(6), 128],
      [3, sq.iova, 128],
    ]);
    // Wrapping to exactly 0 is one range.
    w.ring(0, SQ_DB, 7);
    expect(spans(w.ring(0, SQ_DB, 0))).toEqual([[3, sq.at(7), 64]]);
  });

  it('pushes nothing and keeps its position for a tail past the queue', () => {
    const w = world();
    nvmeQueue(w, 8);
    w.ring(0, SQ_DB, 2);
    expect(w.ring(0, SQ_DB, 8)).toEqual([]);
    expect(w.ring(0, SQ_DB, 0xffff_ffff)).toEqual([]);
    expect(w.rules.last(3)).toBe(2);
  });

  it('triggers only on a write whose first byte is the doorbell, in the rule BAR', () => {
    const w = world();
    nvmeQueue(w, 8);
    expect(w.ring(0, SQ_DB + 1, 1)).toEqual([]);
    expect(w.ring(0, SQ_DB - 4, 1)).toEqual([]);
    expect(w.ring(2, SQ_DB, 1)).toEqual([]);
    expect(w.rules.last(3)).toBe(0);
    // A 2-byte store carries the low half of the tail.
    expect(w.rules.onWrite(0, SQ_DB, leBytes(1, 2), w.peek)).toHaveLength(1);
    expect(w.rules.last(3)).toBe(1);
  });

  it('pushes only the entries of the admin queue (data_max 0), writes included', () => {
    const w = world();
    const sq = nvmeQueue(w, 4, { dataMax: 0 });
    const data = w.buffer(PAGE);
    sq.put(0, sqe(OP_WRITE, { prp1: data.iova }));
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([[3, sq.iova, 64]]);
  });

  it('pushes the data of a write with PRP1 only (one page, or less at an offset)', () => {
    const w = world();
    const sq = nvmeQueue(w, 4, { lbaShift: 9 });
    const page = w.buffer(PAGE);
    page.bytes.fill(0xa5);
    const part = w.buffer(1024, 'to-device', 0x800);
    sq.put(0, sqe(OP_WRITE, { prp1: page.iova, nlb: 7 })); // 8 x 512 = 4 KiB
    sq.put(1, sqe(OP_WRITE, { prp1: part.iova, nlb: 1 })); // 1 KiB from the middle of a page
    const out = w.ring(0, SQ_DB, 2);
    expect(spans(out)).toEqual([
      [3, sq.iova, 128],
      [3, page.iova, PAGE],
      [3, part.iova, 1024],
    ]);
    expect(out[1].data.every((b) => b === 0xa5)).toBe(true);
  });

  it('pushes PRP1 then PRP2 when the data crosses one page boundary', () => {
    const w = world();
    const sq = nvmeQueue(w, 4, { lbaShift: 9 });
    const a = w.buffer(2048, 'to-device', 0x800);
    const b = w.buffer(PAGE);
    sq.put(0, sqe(OP_WRITE, { prp1: a.iova, prp2: b.iova, nlb: 7 })); // 4 KiB = 2 KiB + 2 KiB
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([
      [3, sq.iova, 64],
      [3, a.iova, 2048],
      [3, b.iova, 2048],
    ]);
  });

  it('stops at a PRP2 with offset bits (the controller fails the command)', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const a = w.buffer(3 * PAGE); // PRP2's 4 KiB are readable: only the offset stops it
    sq.put(0, sqe(OP_WRITE, { prp1: a.iova, prp2: a.iova + 4100n, nlb: 1 }));
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([
      [3, sq.iova, 64],
      [3, a.iova, PAGE],
    ]);
  });

  it('walks a PRP list: the list bytes, then each page; contiguous pages go as one push', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const data = w.buffer(4 * PAGE); // one mapping: consecutive IOVAs
    for (let i = 0; i < data.bytes.length; i++) data.bytes[i] = i >> 12;
    const pg = (i: number) => data.iova + BigInt(i * PAGE);
    const list = prpList(w, [pg(1), pg(2), pg(3)]);
    sq.put(0, sqe(OP_WRITE, { prp1: pg(0), prp2: list.iova, nlb: 3 })); // 16 KiB
    const out = w.ring(0, SQ_DB, 1);
    expect(spans(out)).toEqual([
      [3, sq.iova, 64],
      [3, pg(0), PAGE],
      [3, list.iova, 24],
      [3, pg(1), 3 * PAGE],
    ]);
    expect(out[3].data[PAGE]).toBe(2);
  });

  it('stops at a list entry with offset bits, keeping what came before', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const p = [w.buffer(PAGE), w.buffer(PAGE), w.buffer(2 * PAGE)];
    const list = prpList(w, [p[1].iova, p[2].iova + 8n]); // readable, but not a page
    sq.put(0, sqe(OP_WRITE, { prp1: p[0].iova, prp2: list.iova, nlb: 2 }));
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([
      [3, sq.iova, 64],
      [3, p[0].iova, PAGE],
      [3, list.iova, 16],
      [3, p[1].iova, PAGE],
    ]);
  });

  it('follows a chained PRP list over two list pages', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const data = w.buffer(5 * PAGE);
    const pg = (i: number) => data.iova + BigInt(i * PAGE);
    // The second list page holds the last three pages; the first starts in its page's last two
    // slots: one page, then the chain (docs/PUSH.md: "else take − 1").
    const second = prpList(w, [pg(2), pg(3), pg(4)]);
    const first = prpList(w, [pg(1), second.iova], PAGE - 16);
    sq.put(0, sqe(OP_WRITE, { prp1: pg(0), prp2: first.iova, nlb: 4 })); // 20 KiB
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([
      [3, sq.iova, 64],
      [3, pg(0), PAGE],
      [3, first.iova, 16],
      [3, pg(1), PAGE],
      [3, second.iova, 24],
      [3, pg(2), 3 * PAGE],
    ]);
  });

  it('stops at a list pointer between entries and at a chain pointer that is not a page', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const data = w.buffer(5 * PAGE);
    const pg = (i: number) => data.iova + BigInt(i * PAGE);
    const list = w.buffer(64);
    wr64(list.bytes, 4, pg(1));
    sq.put(0, sqe(OP_WRITE, { prp1: pg(0), prp2: list.iova + 4n, nlb: 2 }));
    const second = w.buffer(2 * PAGE); // readable at +8: only the offset stops the walk
    wr64(second.bytes, 8, pg(2));
    wr64(second.bytes, 16, pg(3));
    const first = prpList(w, [pg(1), second.iova + 8n], PAGE - 16);
    sq.put(1, sqe(OP_WRITE, { prp1: pg(0), prp2: first.iova, nlb: 3 })); // 3 pages after PRP1
    expect(spans(w.ring(0, SQ_DB, 2))).toEqual([
      [3, sq.iova, 128],
      [3, pg(0), PAGE],
      [3, pg(0), PAGE],
      [3, first.iova, 16],
      [3, pg(1), PAGE],
    ]);
  });

  it('pushes the list pages but not the data of a write of more than 512 pages (over the budget)', () => {
    const w = world();
    // 520 pages (2 MiB + 32 KiB): two list pages, 512 + 8 slots. More than the budget, so the data
    // is not pushed at all; the entry and both list pages are (the controller reads them first).
    const sq = nvmeQueue(w, 4, { dataMax: 4 << 20 });
    const data = w.buffer(520 * PAGE);
    const pg = (i: number) => data.iova + BigInt(i * PAGE);
    const second = prpList(
      w,
      Array.from({ length: 8 }, (_, i) => pg(512 + i)),
    );
    const first = prpList(w, [...Array.from({ length: 511 }, (_, i) => pg(1 + i)), second.iova]);
    expect(first.bytes.length).toBe(PAGE);
    sq.put(0, sqe(OP_WRITE, { prp1: pg(0), prp2: first.iova, nlb: 519 }));
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([
      [3, sq.iova, 64],
      [3, first.iova, PAGE],
      [3, second.iova, 8 * 8],
    ]);
    expect(w.rules.skipped).toBe(1);
  });

  it('pushes the PRP list of a read, never its data pages (the device writes them)', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const data = w.buffer(32 * PAGE, 'from-device');
    const pg = (i: number) => data.iova + BigInt(i * PAGE);
    const list = prpList(
      w,
      Array.from({ length: 31 }, (_, i) => pg(1 + i)),
    );
    sq.put(0, sqe(OP_READ, { prp1: pg(0), prp2: list.iova, nlb: 31 }));
    sq.put(1, sqe(OP_READ, { prp1: pg(0), prp2: pg(1), nlb: 1 })); // two pages: no list
    expect(spans(w.ring(0, SQ_DB, 2))).toEqual([
      [3, sq.iova, 128],
      [3, list.iova, 31 * 8],
    ]);
    expect(w.rules.skipped).toBe(0);
  });

  it('does not push the data of a write larger than data_max', () => {
    const w = world();
    const sq = nvmeQueue(w, 4, { dataMax: 4096 });
    const d = w.buffer(2 * PAGE);
    sq.put(0, sqe(OP_WRITE, { prp1: d.iova, nlb: 0 })); // 4 KiB: pushed
    sq.put(1, sqe(OP_WRITE, { prp1: d.iova, prp2: d.iova + 4096n, nlb: 1 })); // 8 KiB: not
    expect(spans(w.ring(0, SQ_DB, 2))).toEqual([
      [3, sq.iova, 128],
      [3, d.iova, PAGE],
    ]);
    expect(w.rules.skipped).toBe(0); // not pushed by design, not skipped
  });

  it('skips data the device may not read while the entries and the other data still go', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const good = w.buffer(PAGE);
    const readOnly = w.buffer(PAGE, 'from-device'); // the device may only write it
    const gone = w.buffer(PAGE);
    w.iommu.unmap(gone.iova);
    sq.put(0, sqe(OP_WRITE, { prp1: gone.iova }));
    sq.put(1, sqe(OP_WRITE, { prp1: readOnly.iova }));
    sq.put(2, sqe(OP_WRITE, { prp1: good.iova }));
    expect(spans(w.ring(0, SQ_DB, 3))).toEqual([
      [3, sq.iova, 192],
      [3, good.iova, PAGE],
    ]);
    expect(w.rules.skipped).toBe(2);
    expect(w.iommu.counters.readFaults).toBe(0); // a push is not a device access
  });

  it('reads no command out of entries it could not push', () => {
    const w = world();
    const sq = nvmeQueue(w, 4);
    const d = w.buffer(PAGE);
    sq.put(0, sqe(OP_WRITE, { prp1: d.iova }));
    w.iommu.unmap(sq.iova);
    expect(w.ring(0, SQ_DB, 1)).toEqual([]);
    expect(w.rules.last(3)).toBe(1); // the position still moves with the doorbell
  });

  it('stays within its budget per doorbell (256 KiB here), in pushes of at most 64 KiB', () => {
    const w = world(16 << 20, SMALL_BUDGET);
    const sq = nvmeQueue(w, 8);
    const writes = [0, 1].map(() => {
      const data = w.buffer(32 * PAGE);
      const pg = (i: number) => data.iova + BigInt(i * PAGE);
      const list = prpList(
        w,
        Array.from({ length: 31 }, (_, i) => pg(1 + i)),
      );
      return { data, pg, list };
    });
    for (const [i, x] of writes.entries())
      sq.put(i, sqe(OP_WRITE, { prp1: x.pg(0), prp2: x.list.iova, nlb: 31 }));
    const out = w.ring(0, SQ_DB, 2);
    const [a] = writes;
    expect(spans(out)).toEqual([
      [3, sq.iova, 128],
      [3, a.pg(0), PAGE],
      [3, a.list.iova, 31 * 8],
      [3, a.pg(1), PUSH_RECORD_BYTES],
      [3, a.pg(1) + BigInt(PUSH_RECORD_BYTES), 31 * PAGE - PUSH_RECORD_BYTES],
      [3, writes[1]!.list.iova, 31 * 8],
    ]);
    // The second 128 KiB did not fit what was left: its data is not pushed at all, its list is.
    expect(w.rules.skipped).toBe(1);
  });

  it('nvmeFits: where a doorbell covering many submissions splits so each part is pushed whole', () => {
    const w = world(16 << 20, SMALL_BUDGET);
    const sq = nvmeQueue(w, 8);
    for (let i = 0; i < 3; i++) {
      const data = w.buffer(32 * PAGE);
      const pg = (k: number) => data.iova + BigInt(k * PAGE);
      const list = prpList(
        w,
        Array.from({ length: 31 }, (_, k) => pg(1 + k)),
      );
      sq.put(i, sqe(OP_WRITE, { prp1: pg(0), prp2: list.iova, nlb: 31 }));
    }
    sq.put(3, sqe(OP_READ, { prp1: 0x1000n }));
    sq.put(4, sqe(OP_READ, { prp1: 0x1000n }));
    // Two 128 KiB writes are past the budget: one per doorbell, each pushed whole.
    expect(w.rules.nvmeFits(3, 5, w.peek)).toBe(1);
    w.ring(0, SQ_DB, 1);
    expect(w.rules.nvmeFits(3, 5, w.peek)).toBe(2);
    w.ring(0, SQ_DB, 2);
    // The last write and both 4 KiB reads fit one doorbell; nothing was skipped on the way.
    expect(w.rules.nvmeFits(3, 5, w.peek)).toBe(5);
    w.ring(0, SQ_DB, 5);
    expect(w.rules.skipped).toBe(0);
    // Reads cost their entries only; a tail past the queue is left to the doorbell's own check.
    expect(w.rules.nvmeFits(3, 5, w.peek)).toBe(5);
    expect(w.rules.nvmeFits(3, 9, w.peek)).toBe(9);
  });

  it('pushes eight 128 KiB writes with one trapped doorbell at the default budget', () => {
    const w = world(32 << 20);
    const sq = nvmeQueue(w, 16);
    for (let i = 0; i < 8; i++) {
      const data = w.buffer(32 * PAGE);
      data.bytes.fill(i + 1);
      const pg = (k: number) => data.iova + BigInt(k * PAGE);
      const list = prpList(
        w,
        Array.from({ length: 31 }, (_, k) => pg(1 + k)),
      );
      sq.put(i, sqe(OP_WRITE, { prp1: pg(0), prp2: list.iova, nlb: 31 }));
    }
    // Rung for the driver (a quiet SQ) it would go as parts of at most 256 KiB: one write each.
    expect(w.rules.nvmeFits(3, 8, w.peek)).toBe(1);
    const out = w.ring(0, SQ_DB, 8);
    // 8 SQEs, then per write its first page, its list and its other 31 pages.
    const data = out.filter((p) => p.data.length >= PAGE && p.iova !== sq.iova);
    expect(data.reduce((n, p) => n + p.data.length, 0)).toBe(8 * 32 * PAGE);
    expect(w.rules.skipped).toBe(0);
  });

  it('shares one budget between rules on one doorbell, in id order', () => {
    const w = world(16 << 20, SMALL_BUDGET);
    const b = nvmeQueue(w, 8192, { dataMax: 0 }, 9);
    const a = nvmeQueue(w, 8192, { dataMax: 0 }, 2);
    expect(spans(w.ring(0, SQ_DB, 1))).toEqual([
      [2, a.iova, 64],
      [9, b.iova, 64],
    ]);
    // 4094 entries are 262016 bytes: rule 2 takes them in four pieces, and what is left of the
    // budget is too little for rule 9's, which moves on all the same.
    const k = BigInt(PUSH_RECORD_BYTES);
    expect(spans(w.ring(0, SQ_DB, 4095))).toEqual([
      [2, a.at(1), PUSH_RECORD_BYTES],
      [2, a.at(1) + k, PUSH_RECORD_BYTES],
      [2, a.at(1) + 2n * k, PUSH_RECORD_BYTES],
      [2, a.at(1) + 3n * k, 4094 * 64 - 3 * PUSH_RECORD_BYTES],
    ]);
    expect(w.rules.skipped).toBe(1);
    expect(w.rules.last(9)).toBe(4095);
    expect(spans(w.ring(0, SQ_DB, 4097))).toEqual([
      [2, a.at(4095), 128],
      [9, b.at(4095), 128],
    ]);
  });
});

describe('the rule table', () => {
  it('replaces, removes and clears rules; ids outside 0..127 are a bug', () => {
    const r = new PushRules();
    const rule: PushRule = {
      kind: 'virtq',
      bar: 0,
      notify: 0,
      desc: 0n,
      avail: 0n,
      size: 8,
      dataMax: 0,
      indirect: false,
    };
    r.set(0, rule);
    r.set(127, rule);
    r.set(127, rule);
    expect(r.size).toBe(2);
    r.set(0, undefined);
    expect(r.size).toBe(1);
    r.clear();
    expect(r.size).toBe(0);
    expect(() => r.set(128, rule)).toThrow(RangeError);
    expect(() => r.set(-1, rule)).toThrow(RangeError);
  });

  it('never throws on hostile rings and rules, and pushes only true copies within the budget', () => {
    const small = (max: number) => fc.oneof(fc.nat(max), fc.nat(0xffff_ffff));
    const rule = fc.oneof(
      fc.record({
        kind: fc.constant('nvme-sq' as const),
        entries: fc.constantFrom(0, 1, 2, 3, 16, 64, 65536, 70000),
        dataMax: fc.oneof(fc.constant(1 << 20), fc.nat(0xffff_ffff)),
        lbaShift: fc.oneof(fc.integer({ min: 9, max: 12 }), fc.nat(64)),
      }),
      fc.record({
        kind: fc.constant('virtq' as const),
        size: fc.constantFrom(0, 1, 2, 3, 4, 8, 16, 32768),
        dataMax: fc.oneof(fc.constant(1 << 20), fc.nat(0xffff_ffff)),
        indirect: fc.boolean(),
      }),
    );
    let walked = 0;
    fc.assert(
      fc.property(
        rule,
        fc.integer(), // seeds the memory (generating 16 KiB arrays is what would take the time)
        fc.array(small(20), { minLength: 1, maxLength: 4 }),
        (r, seed, doorbells) => {
          const w = world(8 * PAGE);
          const mem = w.buffer(4 * PAGE, 'bidirectional');
          let x = seed | 1;
          const rand = (n: number) => {
            x ^= x << 13;
            x ^= x >>> 17;
            x ^= x << 5;
            return (x >>> 0) % n;
          };
          /** Usually an IOVA in the mapping, page-aligned or not; sometimes anything. */
          const pointer = () =>
            rand(8) === 0
              ? BigInt(rand(0x7fff_ffff)) << BigInt(rand(40))
              : mem.iova + BigInt(rand(4) * PAGE + (rand(2) ? 0 : rand(PAGE)));
          for (let i = 0; i < mem.bytes.length; i++) mem.bytes[i] = rand(256);
          if (r.kind === 'nvme-sq') {
            // Plausible SQEs all over: writes whose PRPs point into the mapping, small NLBs.
            for (let o = 0; o < mem.bytes.length; o += 64) {
              mem.bytes[o] = rand(3) ? 0x01 : rand(256);
              wr64(mem.bytes, o + 24, pointer());
              wr64(mem.bytes, o + 32, pointer());
              wr32(mem.bytes, o + 48, rand(4) ? rand(80) : rand(0x1_0000));
              // PRP list entries: qwords in the rest of the entry.
              for (let q = 8; q < 24; q += 8) wr64(mem.bytes, o + q, pointer());
              for (let q = 40; q < 64; q += 8) if (q !== 48) wr64(mem.bytes, o + q, pointer());
            }
          } else {
            // Plausible descriptors all over (main and indirect tables alike), then the avail ring.
            for (let o = 0; o < mem.bytes.length; o += 16) {
              wr64(mem.bytes, o, pointer());
              wr32(mem.bytes, o + 8, rand(3) ? 16 * rand(5) : rand(0x1_0000));
              wr16(mem.bytes, o + 12, rand(8));
              wr16(mem.bytes, o + 14, rand(r.size + 2));
            }
            for (let i = 0; i < 20; i++) wr16(mem.bytes, 2048 + 4 + 2 * i, rand(r.size + 2));
          }
          const full: PushRule =
            r.kind === 'nvme-sq'
              ? { ...r, bar: 0, doorbell: 0, base: mem.iova }
              : { ...r, bar: 0, notify: 0, desc: mem.iova, avail: mem.iova + 2048n };
          w.rules.set(0, full);
          w.rules.set(1, full);
          for (const v of doorbells) {
            if (r.kind === 'virtq') wr16(mem.bytes, 2048 + 2, v); // the driver's avail idx
            if (w.ring(0, 0, v).length > 4) walked++;
          }
        },
      ),
      { numRuns: 400 },
    );
    // The memory was plausible enough for walks to go past the rings.
    expect(walked).toBeGreaterThan(10);
  });
});
