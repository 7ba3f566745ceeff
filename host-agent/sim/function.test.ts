// Push rules through a SimFunction (docs/PUSH.md): the endpoint's PushRule is checked, applied and
// answered; a doorbell write is preceded by its pushes in the device's stream; unmapping what was
// pushed from sends PushDrop; reset and removal forget the rules. Messages cross the protobuf codec
// both ways, as they do on a session.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR } from '../../devices/pci/caps.js';
import {
  PCI_CAP_ID_EXP,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  walkCaps,
} from '../../devices/pci/config.js';
import { rd32, wr16, wr32, wr64 } from '../../devices/pci/le.js';
import { PUSH_MAX_BYTES } from '../../devices/push.js';
import { TestDevice } from '../../devices/test/device.js';
import { wireDescription } from '../../endpoint/describe.js';
import { ErrorCode, kindOf, long, type Msg, num, ProtocolError, pcinet, u64 } from '../../proto/wire.js';
import { SimChannel } from './channel.js';
import type { SimFunction } from './function.js';
import { PAGE } from './iommu.js';

const log = pino({ level: 'silent' });
const SQ_DB = 0x1008; // inside BAR 0 of the test device, below its MSI-X table
const NOTIFY = 0x1100;

/** Through the codec, as the relay hands messages over. */
const wire = (m: Msg): pcinet.Msg => pcinet.Msg.decode(pcinet.Msg.encode(m).finish());

/** A test-device function on a fresh sim bus, enabled and bus-mastering, recording its stream. */
async function bus(functions = 1) {
  const channel = new SimChannel({ log });
  const fns: { fn: SimFunction; sent: pcinet.Msg[] }[] = [];
  for (let dev = 1; dev <= functions; dev++) {
    const sent: pcinet.Msg[] = [];
    const fn = (await channel.attach(dev, wireDescription(new TestDevice().description), (m) =>
      sent.push(wire(m)),
    )) as SimFunction;
    fn.configWrite(PCI_COMMAND, 2, fn.configRead(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    sent.length = 0;
    fns.push({ fn, sent });
  }
  const { memory, iommu } = channel;
  /** The driver's buffer, filled with `fill` and mapped. */
  const buffer = (len: number, fill = 0, dir: 'to-device' | 'bidirectional' = 'to-device') => {
    const buf = memory.alloc(len);
    buf.bytes.fill(fill);
    return { buf, bytes: buf.bytes, iova: iommu.map(buf, dir) };
  };
  return { channel, iommu, buffer, ...fns[0], fns };
}

type Bus = Awaited<ReturnType<typeof bus>>;

const nvmeRule = (ring: bigint, o: Partial<pcinet.IPushRule> = {}): Msg => ({
  pushRule: {
    dev: 1,
    id: 3,
    kind: pcinet.PushKind.PUSH_NVME_SQ,
    bar: 0,
    offset: long(SQ_DB),
    ring: long(ring),
    entries: 8,
    dataMax: 128 << 10,
    lbaShift: 12,
    ...o,
  },
});

/** An I/O SQ with one 4 KiB NVM Write in slot 0, its rule applied. */
function nvmeQueue(b: Bus, fn = b.fn, id = 3) {
  const sq = b.buffer(8 * 64, 0, 'bidirectional');
  const data = b.buffer(PAGE, 0x5a);
  sq.bytes[0] = 0x01;
  wr64(sq.bytes, 24, data.iova);
  wr32(sq.bytes, 48, 0); // NLB 0: one 4 KiB block
  fn.deliver(wire(nvmeRule(sq.iova, { dev: fn.dev, id })));
  return { sq, data };
}

const kinds = (ms: pcinet.Msg[]) => ms.map((m) => kindOf(m));

describe('SimFunction push rules', () => {
  it('answers a PushRule with PushRuleSet, and sends the pushes before the doorbell write', async () => {
    const b = await bus();
    const { sq, data } = nvmeQueue(b);
    expect(kinds(b.sent)).toEqual(['pushRuleSet']);
    expect([b.sent[0].pushRuleSet?.dev, b.sent[0].pushRuleSet?.id]).toEqual([1, 3]);
    b.sent.length = 0;
    b.fn.write32(0, SQ_DB, 1);
    expect(kinds(b.sent)).toEqual(['push', 'push', 'mmioWrite']);
    const [entry, payload] = b.sent.map((m) => m.push!);
    expect([u64(entry.iova), entry.data?.length, entry.rule, entry.dev]).toEqual([sq.iova, 64, 3, 1]);
    expect([u64(payload.iova), payload.data?.length, payload.rule]).toEqual([data.iova, PAGE, 3]);
    expect(payload.data!.every((x) => x === 0x5a)).toBe(true);
    expect(num(b.sent[2].mmioWrite!.offset)).toBe(SQ_DB);
    expect(b.fn.counters).toMatchObject({ pushes: 2, pushBytes: 64 + PAGE, pushSkipped: 0, pushDrops: 0 });
    expect(b.iommu.counters.readFaults).toBe(0);
  });

  it("writes an SQ rule's event index with each doorbell value, before the driver goes on", async () => {
    const b = await bus();
    const { sq } = nvmeQueue(b);
    const shadow = b.buffer(PAGE, 0, 'bidirectional');
    const ei = shadow.iova + 8n;
    b.fn.deliver(wire(nvmeRule(sq.iova, { avail: long(ei) })));
    b.fn.write32(0, SQ_DB, 1);
    expect(rd32(shadow.bytes, 8)).toBe(1);
    b.fn.write32(0, SQ_DB, 5);
    expect(rd32(shadow.bytes, 8)).toBe(5);
    expect(b.fn.counters).toMatchObject({ eventIdxWrites: 2, eventIdxRefused: 0 });
    // A slot the device may not write is refused and counted, like its own DMA writes.
    const readOnly = b.buffer(PAGE, 0, 'to-device');
    b.fn.deliver(wire(nvmeRule(sq.iova, { avail: long(readOnly.iova) })));
    b.fn.write32(0, SQ_DB, 6);
    expect(rd32(readOnly.bytes, 0)).toBe(0);
    expect(b.fn.counters).toMatchObject({ eventIdxWrites: 2, eventIdxRefused: 1 });
  });

  it('a rule with the shadow tail: the SQ goes quiet while a doorbell is unanswered; rounds ring the rest (docs/PUSH.md)', async () => {
    const b = await bus();
    const { sq } = nvmeQueue(b);
    const dbs = b.buffer(PAGE, 0, 'bidirectional');
    const eis = b.buffer(PAGE, 0, 'bidirectional');
    b.fn.deliver(wire(nvmeRule(sq.iova, { avail: long(eis.iova + 8n), shadow: long(dbs.iova + 8n) })));
    const round = (taken: number) =>
      b.fn.deliver(wire({ virtqDone: { dev: 1, rule: 3, recheck: true, kick: taken } }));
    const tails = () => b.sent.flatMap((m) => (m.mmioWrite ? [rd32(m.mmioWrite.data!, 0)] : []));
    // The driver's doorbell for tail 1: unanswered, so the index says "do not ring".
    wr32(dbs.bytes, 8, 1);
    b.fn.write32(0, SQ_DB, 1);
    expect(rd32(eis.bytes, 8)).toBe(0xffff);
    // Two more submissions write only the shadow; the round for tail 1 rings tail 3 for them.
    wr32(dbs.bytes, 8, 3);
    round(1);
    expect(tails()).toEqual([1, 3]);
    expect(rd32(eis.bytes, 8)).toBe(0xffff);
    expect(b.fn.counters.virtqKicks).toBe(1);
    // Answered, nothing new: the index goes back to the tail.
    round(3);
    expect(rd32(eis.bytes, 8)).toBe(3);
    expect(tails()).toEqual([1, 3]);
    // Quiet again, then the rule is replaced: the driver rings again before it goes.
    wr32(dbs.bytes, 8, 4);
    b.fn.write32(0, SQ_DB, 4);
    wr32(dbs.bytes, 8, 5);
    expect(rd32(eis.bytes, 8)).toBe(0xffff);
    b.fn.deliver(wire(nvmeRule(sq.iova, { avail: long(eis.iova + 8n) })));
    expect(rd32(eis.bytes, 8)).toBe(5);
    // Without the shadow tail, rounds do nothing and every doorbell's index follows it.
    round(4);
    b.fn.write32(0, SQ_DB, 6);
    expect(rd32(eis.bytes, 8)).toBe(6);
    expect(tails()).toEqual([1, 3, 4, 6]);
  });

  it('pushes a virtqueue ring and table before its notify write', async () => {
    const b = await bus();
    const ring = b.buffer(16 * 4 + 6 + 2 * 4, 0, 'bidirectional');
    const avail = ring.iova + 64n;
    wr16(ring.bytes, 64 + 2, 1); // avail idx 1: head 0 (a zeroed, empty descriptor)
    b.fn.deliver(
      wire({
        pushRule: {
          dev: 1,
          id: 0,
          kind: pcinet.PushKind.PUSH_VIRTQ,
          bar: 0,
          offset: long(NOTIFY),
          ring: long(ring.iova),
          avail: long(avail),
          entries: 4,
          indirect: true,
        },
      }),
    );
    b.fn.write(0, NOTIFY, new Uint8Array(2));
    expect(kinds(b.sent)).toEqual(['pushRuleSet', 'push', 'push', 'mmioWrite']);
    expect(b.sent.slice(1, 3).map((m) => [u64(m.push!.iova), m.push!.data!.length])).toEqual([
      [avail, 14],
      [ring.iova, 64],
    ]);
    expect(b.fn.pushRules.last(0)).toBe(1);
  });

  it('ends a virtqueue round: the interrupt as used_event says, a kick for buffers no notify announced', async () => {
    const b = await bus();
    const ring = b.buffer(16 * 4 + 6 + 2 * 4, 0, 'bidirectional');
    const avail = ring.iova + 64n;
    const rule = { dev: 1, id: 0, kind: pcinet.PushKind.PUSH_VIRTQ, bar: 0, offset: long(NOTIFY) };
    b.fn.deliver(wire({ pushRule: { ...rule, ring: long(ring.iova), avail: long(avail), entries: 4 } }));
    wr16(ring.bytes, 64 + 2, 1);
    b.fn.write(0, NOTIFY, new Uint8Array(2)); // the driver's notify: last = 1
    b.sent.length = 0;
    const raised = () => b.fn.counters.interrupts + b.fn.counters.interruptsPending;
    const round = (o: Partial<pcinet.IVirtqDone>) =>
      b.fn.deliver(wire({ virtqDone: { dev: 1, rule: 0, vector: 1, eventIdx: true, ...o } }));
    // used_event 3: used idx 1 -> 2 does not pass it, 2 -> 4 does.
    wr16(ring.bytes, 64 + 4 + 2 * 4, 3);
    round({ interrupt: true, oldUsed: 1, newUsed: 2 });
    expect([raised(), b.fn.counters.virtqIrqsSkipped]).toEqual([0, 1]);
    round({ interrupt: true, oldUsed: 2, newUsed: 4 });
    expect(raised()).toBe(1);
    // Without event index: avail.flags NO_INTERRUPT says no.
    wr16(ring.bytes, 64, 1);
    round({ interrupt: true, oldUsed: 4, newUsed: 5, eventIdx: false });
    expect(raised()).toBe(1);
    // Nothing new in the ring: no kick. Two buffers without a notify: pushed, then the kick.
    round({ recheck: true, kick: 7 });
    expect(kinds(b.sent)).toEqual([]);
    wr16(ring.bytes, 64 + 2, 3);
    round({ recheck: true, kick: 7 });
    expect(kinds(b.sent)).toEqual(['push', 'push', 'mmioWrite']);
    expect([num(b.sent[2].mmioWrite!.offset), [...b.sent[2].mmioWrite!.data!]]).toEqual([NOTIFY, [7, 0]]);
    expect(b.fn.pushRules.last(0)).toBe(3);
    expect(b.fn.counters).toMatchObject({ virtqRounds: 5, virtqKicks: 1 });
    // A rule that is gone (a reset crossed the message): the interrupt is raised.
    b.fn.deliver(wire({ pushRule: { dev: 1, id: 0, kind: pcinet.PushKind.PUSH_NONE } }));
    round({ interrupt: true, oldUsed: 5, newUsed: 6, recheck: true });
    expect(raised()).toBe(2);
    expect(() => round({ interrupt: true, vector: 99, oldUsed: 0, newUsed: 1 })).toThrow(ProtocolError);
  });

  it('sends PushDrop when a mapping pushed from is unmapped before the device read it', async () => {
    const b = await bus();
    const { sq, data } = nvmeQueue(b);
    const other = b.buffer(PAGE);
    b.fn.write32(0, SQ_DB, 1);
    b.sent.length = 0;
    b.iommu.unmap(other.iova); // never pushed from: nothing to say
    expect(b.sent).toEqual([]);
    b.iommu.unmap(data.iova);
    const drop = (m: pcinet.Msg) => [
      kindOf(m),
      m.pushDrop?.dev,
      u64(m.pushDrop?.iova),
      u64(m.pushDrop?.length),
    ];
    expect(b.sent.map(drop)).toEqual([['pushDrop', 1, data.iova, BigInt(PAGE)]]);
    // The device's read of it now goes to the host and is refused like any read of unmapped memory.
    b.fn.deliver(wire({ dmaRead: { dev: 1, tag: 7, iova: long(data.iova), length: PAGE } }));
    expect(b.sent[1].dmaReadCpl?.status).toBe(ErrorCode.DMA_FAULT);
    b.iommu.unmap(sq.iova);
    expect(kinds(b.sent)).toEqual(['pushDrop', 'dmaReadCpl', 'pushDrop']);
    expect(b.fn.counters.pushDrops).toBe(2);
  });

  it('tells each function that pushed from a shared mapping, and only those', async () => {
    const b = await bus(3);
    const [one, two, three] = b.fns;
    const a = nvmeQueue(b, one.fn, 1);
    // Function 2's queue names the same data buffer; function 3 has no rule.
    const sq2 = b.buffer(8 * 64, 0, 'bidirectional');
    sq2.bytes.set(a.sq.bytes.subarray(0, 64));
    two.fn.deliver(wire(nvmeRule(sq2.iova, { dev: 2, id: 1 })));
    one.fn.write32(0, SQ_DB, 1);
    two.fn.write32(0, SQ_DB, 1);
    three.fn.write32(0, SQ_DB, 1);
    for (const f of b.fns) f.sent.length = 0;
    b.iommu.unmap(a.data.iova);
    expect(one.sent.map((m) => [m.pushDrop?.dev, u64(m.pushDrop?.iova)])).toEqual([[1, a.data.iova]]);
    expect(two.sent.map((m) => [m.pushDrop?.dev, u64(m.pushDrop?.iova)])).toEqual([[2, a.data.iova]]);
    expect(three.sent).toEqual([]);
  });

  it('counts what it could not push: the entries still go', async () => {
    const b = await bus();
    const { data } = nvmeQueue(b);
    b.iommu.unmap(data.iova);
    b.fn.write32(0, SQ_DB, 1);
    expect(kinds(b.sent)).toEqual(['pushRuleSet', 'push', 'mmioWrite']);
    expect(b.fn.counters).toMatchObject({ pushes: 1, pushBytes: 64, pushSkipped: 1 });
  });

  it('forgets its rules and pushes on a function reset', async () => {
    const b = await bus();
    const { data } = nvmeQueue(b);
    b.fn.write32(0, SQ_DB, 1);
    const exp = walkCaps(b.fn.config).find((c) => c.id === PCI_CAP_ID_EXP)!.offset;
    b.fn.configWrite(
      exp + PCI_EXP_DEVCTL,
      2,
      b.fn.configRead(exp + PCI_EXP_DEVCTL, 2) | PCI_EXP_DEVCTL_BCR_FLR,
    );
    expect(b.fn.pushRules.size).toBe(0);
    b.sent.length = 0;
    b.fn.write32(0, SQ_DB, 2);
    expect(kinds(b.sent)).toEqual(['mmioWrite']);
    // The endpoint forgot those pushes with the reset: no drop for them.
    b.iommu.unmap(data.iova);
    expect(kinds(b.sent)).toEqual(['mmioWrite']);
  });

  it('pushes nothing, and drops nothing, once removed', async () => {
    const b = await bus();
    const { data } = nvmeQueue(b);
    b.fn.write32(0, SQ_DB, 1);
    await b.fn.remove(ErrorCode.SHUTDOWN);
    b.sent.length = 0;
    b.fn.write32(0, SQ_DB, 2);
    b.iommu.unmap(data.iova);
    expect(b.sent).toEqual([]);
    expect(b.fn.pushRules.size).toBe(0);
  });

  it('pushes nothing without bus mastering, and the write still goes', async () => {
    const b = await bus();
    nvmeQueue(b);
    b.fn.configWrite(PCI_COMMAND, 2, b.fn.configRead(PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER);
    b.sent.length = 0;
    b.fn.write32(0, SQ_DB, 1);
    expect(kinds(b.sent)).toEqual(['mmioWrite']);
    expect(b.fn.counters.masterAbortDma).toBe(0); // a push is not the device's DMA
    // Nothing was pushed, so the position did not move: turned back on, the entry still goes.
    b.fn.configWrite(PCI_COMMAND, 2, b.fn.configRead(PCI_COMMAND, 2) | PCI_COMMAND_MASTER);
    b.sent.length = 0;
    b.fn.write32(0, SQ_DB, 1);
    expect(kinds(b.sent)).toEqual(['push', 'push', 'mmioWrite']);
  });

  it('removes a rule on PUSH_NONE, and answers that too', async () => {
    const b = await bus();
    nvmeQueue(b);
    b.fn.deliver(wire({ pushRule: { dev: 1, id: 3, kind: pcinet.PushKind.PUSH_NONE } }));
    expect(b.fn.pushRules.size).toBe(0);
    b.fn.write32(0, SQ_DB, 1);
    expect(kinds(b.sent)).toEqual(['pushRuleSet', 'pushRuleSet', 'mmioWrite']);
  });

  it('refuses a PushRule it cannot apply: the endpoint broke the protocol', async () => {
    const b = await bus();
    const virtq = (o: Partial<pcinet.IPushRule>): Msg =>
      nvmeRule(0n, { kind: pcinet.PushKind.PUSH_VIRTQ, entries: 256, lbaShift: 0, ...o });
    const bad: Msg[] = [
      nvmeRule(0n, { id: 128 }),
      nvmeRule(0n, { id: 0xffff_ffff, kind: pcinet.PushKind.PUSH_NONE }),
      nvmeRule(0n, { kind: 7 as pcinet.PushKind }),
      nvmeRule(0n, { bar: 1 }), // the upper half of 64-bit BAR 0
      nvmeRule(0n, { bar: 4 }),
      nvmeRule(0n, { offset: long(0x3ffd) }), // the doorbell's 4 bytes must be in the BAR
      nvmeRule(0n, { dataMax: PUSH_MAX_BYTES + 1 }),
      nvmeRule(0n, { avail: long(0x1002) }), // an event index is a 4-byte slot
      nvmeRule(0n, { avail: long(0x1000), shadow: long(0x2002) }), // so is the shadow tail
      nvmeRule(0n, { shadow: long(0x2000) }), // a shadow tail needs an event index
      virtq({ shadow: long(0x2000) }),
      nvmeRule(0n, { indirect: true }),
      virtq({ lbaShift: 9 }),
      nvmeRule(0n, { offset: long(1n << 60n) }),
      nvmeRule(0n, { entries: 1 }),
      nvmeRule(0n, { entries: 65537 }),
      nvmeRule(0n, { lbaShift: 8 }),
      nvmeRule(0n, { lbaShift: 13 }),
      virtq({ entries: 0 }),
      virtq({ entries: 3 }),
      virtq({ entries: 65536 }),
    ];
    for (const m of bad) {
      let err: unknown;
      try {
        b.fn.deliver(wire(m));
      } catch (e) {
        err = e;
      }
      expect(err, String(Object.entries(m.pushRule!))).toBeInstanceOf(ProtocolError);
      expect((err as ProtocolError).code).toBe(ErrorCode.BAD_ARGUMENT);
    }
    expect(b.sent).toEqual([]);
    expect(b.fn.pushRules.size).toBe(0);
    // The limits themselves are fine.
    for (const m of [
      nvmeRule(0n, { entries: 2, lbaShift: 9 }),
      nvmeRule(0n, { entries: 65536, lbaShift: 12, offset: long(0x3ffc), dataMax: PUSH_MAX_BYTES }),
      virtq({ entries: 1 }),
      virtq({ entries: 32768, id: 127 }),
    ])
      b.fn.deliver(wire(m));
    expect(kinds(b.sent)).toEqual(['pushRuleSet', 'pushRuleSet', 'pushRuleSet', 'pushRuleSet']);
    expect(b.fn.pushRules.get(127)).toMatchObject({ kind: 'virtq', size: 32768 });
  });
});
