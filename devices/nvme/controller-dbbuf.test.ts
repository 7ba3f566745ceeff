// The NVMe controller's shadow doorbells (Doorbell Buffer Config, NVMe 1.4 §5.8), driven as
// Linux's nvme driver drives them (fake-driver.ts): event indices, quiet submission queues
// (docs/PUSH.md), full completion queues, and a reset.
import { describe, expect, it } from 'vitest';
import { settle } from '../pci/fake-host.js';
import { rd16, rd32 } from '../pci/le.js';
import { DATA, DBS, Driver, EIS, eachHostMemory, QSIZE, SCRATCH, sc } from './fake-driver.js';
import { ADMIN, CNS, IO, REG, SC } from './spec.js';

eachHostMemory(() => {
  describe('NVMe shadow doorbells (Doorbell Buffer Config)', () => {
    const oacs = async (d: Driver) => {
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { prp1: SCRATCH, cdw: [CNS.CONTROLLER] }))).status,
      ).toBe(0);
      return rd16(d.mem(SCRATCH, 512), 256);
    };
    const dbbuf = (d: Driver) => d.submit(0, d.sqe(ADMIN.DBBUF, { prp1: DBS, prp2: EIS }));
    const dmaReads = (d: Driver, iova: bigint) =>
      d.host.events.filter((e) => e.kind === 'dma-read' && e.iova === iova).length;
    const CQ1_SLOT = 3 * 4; // doorbell 2q + 1 for q = 1

    it('is offered only by a host that keeps SQ event indices', async () => {
      const without = new Driver(undefined, { sqEventIdx: false });
      await without.enable();
      expect((await oacs(without)) & (1 << 8)).toBe(0);
      expect(sc((await dbbuf(without)).status)).toBe(SC.INVALID_OPCODE);

      const d = new Driver();
      await d.enable();
      expect((await oacs(d)) & (1 << 8)).toBe(1 << 8);
      expect(sc((await d.submit(0, d.sqe(ADMIN.DBBUF, { prp1: DBS + 8n, prp2: EIS }))).status)).toBe(
        SC.INVALID_FIELD,
      );
    });

    it('rings every SQ doorbell, the CQ head about once a lap; data intact over three laps', async () => {
      const d = new Driver();
      await d.enable();
      await d.ioQueues();
      expect((await dbbuf(d)).status).toBe(0);
      // The SQ's rule carries its event index; the CQ's index says "only when you wrap".
      expect(d.host.pushRules.get(1)).toMatchObject({ kind: 'nvme-sq', eventIdx: EIS + 8n });
      expect(rd32(d.mem(EIS + BigInt(CQ1_SLOT), 4), 0)).toBe(0xffff);
      d.shadow = true;
      d.rung.sq = d.rung.cq = 0; // the admin queue's so far
      const laps = 3;
      for (let i = 0; i < laps * QSIZE; i++) {
        const data = d.mem(DATA, 512);
        data.fill(i & 0xff);
        expect((await d.submit(1, d.rw(IO.WRITE, i, 1, DATA))).status).toBe(0);
        data.fill(0);
        expect((await d.submit(1, d.rw(IO.READ, i, 1, DATA))).status).toBe(0);
        expect(data.every((b) => b === (i & 0xff))).toBe(true);
      }
      // Two commands per iteration: every one rang its SQ doorbell (the host kept the event index
      // at the tail), the CQ head rang only when it wrapped, and the device read the shadow head
      // only when the CQ looked full.
      expect(d.rung.sq).toBe(2 * laps * QSIZE);
      expect(d.rung.cq).toBe(2 * laps);
      expect(rd32(d.mem(EIS + 8n, 4), 0)).toBe(d.tails.get(1));
      expect(dmaReads(d, DBS + BigInt(CQ1_SLOT))).toBeGreaterThan(0);
      expect(dmaReads(d, DBS + BigInt(CQ1_SLOT))).toBeLessThanOrEqual(2 * laps + 1);
    });

    it('a quiet SQ (docs/PUSH.md): what is submitted before the device answers rings nothing, then goes as one doorbell', async () => {
      const d = new Driver();
      // Rounds reach the host later, as over a network (this fake applies them at once).
      const apply = d.host.virtqRound!;
      d.host.virtqRound = (r) => setImmediate(() => apply(r));
      await d.enable();
      await d.ioQueues();
      expect((await dbbuf(d)).status).toBe(0);
      // The rule names the shadow tail: every tail doorbell is answered with a round.
      expect(d.host.pushRules.get(1)).toMatchObject({ kind: 'nvme-sq', shadow: DBS + 8n });
      d.shadow = true;
      d.rung.sq = 0;
      for (let i = 0; i < 6; i++) {
        d.mem(DATA + BigInt(i * 512), 512).fill(0x40 + i);
        d.post(1, d.rw(IO.WRITE, i, 1, DATA + BigInt(i * 512)));
      }
      // The first rang and made the SQ quiet; the five after it only wrote the shadow.
      expect(d.rung.sq).toBe(1);
      expect(rd32(d.mem(EIS + 8n, 4), 0)).toBe(0xffff);
      for (let i = 0; i < 20; i++) await d.bus.settle();
      const done = [];
      for (let c = d.reap(1); c; c = d.reap(1)) done.push(c.status);
      expect(done).toEqual([0, 0, 0, 0, 0, 0]);
      // The host rang tail 6 for the driver after the first round; the second round found nothing
      // new and nothing unanswered: the index is back at the tail, and the next submission rings.
      expect(d.host.events.filter((e) => e.kind === 'kick')).toEqual([{ kind: 'kick', rule: 1 }]);
      expect(rd32(d.mem(EIS + 8n, 4), 0)).toBe(6);
      for (let i = 0; i < 6; i++) {
        const data = d.mem(DATA, 512).fill(0);
        expect((await d.submit(1, d.rw(IO.READ, i, 1, DATA))).status).toBe(0);
        expect(data.every((b) => b === 0x40 + i)).toBe(true);
      }
      expect(d.rung.sq).toBe(1 + 6);
    });

    it('no shadow in the rule, no rounds, when the host does not end rounds', async () => {
      const d = new Driver();
      d.host.virtqRound = undefined;
      await d.enable();
      await d.ioQueues();
      expect((await dbbuf(d)).status).toBe(0);
      expect(d.host.pushRules.get(1)).not.toHaveProperty('shadow');
      d.shadow = true;
      expect((await d.submit(1, d.rw(IO.READ, 0, 1, DATA))).status).toBe(0);
      expect(d.host.events.some((e) => e.kind === 'round')).toBe(false);
    });

    it('a full CQ waits: the device asks for the next head move, which rings and frees it', async () => {
      const d = new Driver();
      await d.enable();
      await d.ioQueues();
      expect((await dbbuf(d)).status).toBe(0);
      d.shadow = true;
      d.rung.sq = d.rung.cq = 0;
      // QSIZE commands without reaping: the CQ holds QSIZE - 1, the last completion waits.
      for (let i = 0; i < QSIZE; i++) {
        d.post(1, d.rw(IO.READ, i, 1, DATA));
        await d.bus.settle();
      }
      for (let i = 0; i < 20; i++) await settle();
      expect(d.rung.sq).toBe(QSIZE);
      // It read the shadow head, found no progress, set the CQ's event index at that head and read
      // once more.
      expect(dmaReads(d, DBS + BigInt(CQ1_SLOT))).toBe(2);
      expect(rd32(d.mem(EIS + BigInt(CQ1_SLOT), 4), 0)).toBe(0);
      const cids = new Set<number>();
      for (let i = 0; i < QSIZE - 1; i++) cids.add(d.reap(1)!.cid);
      expect(d.rung.cq).toBe(1); // the first reap passed the event index
      for (let i = 0; i < 20; i++) await settle();
      const last = d.reap(1);
      expect(last?.status).toBe(0);
      cids.add(last!.cid);
      expect(cids.size).toBe(QSIZE);
    });

    it('a reset forgets the doorbell buffer: rules lose their event index until it is set again', async () => {
      const d = new Driver();
      await d.enable();
      await d.ioQueues();
      expect((await dbbuf(d)).status).toBe(0);
      d.bus.write32(0, REG.CC, 0);
      await d.bus.settle();
      await d.enable();
      await d.ioQueues();
      expect(d.host.pushRules.get(1)?.kind).toBe('nvme-sq');
      expect((d.host.pushRules.get(1) as { eventIdx?: bigint }).eventIdx).toBeUndefined();
    });
  });
});
