// The NVMe controller's registers and admin commands, driven as Linux's nvme driver drives them
// (fake-driver.ts): enable, reset and shutdown, the push rules of its queues, Identify, and the
// statuses driver mistakes get.
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../endpoint/backends/block.js';
import { rd32, rd64 } from '../pci/le.js';
import type { BlockBackend } from './backend.js';
import { ACQ, ASQ, DATA, Driver, eachHostMemory, IOCQ, IOSQ, QSIZE, SCRATCH, sc } from './fake-driver.js';
import { ADMIN, CC, CNS, CSTS, IO, REG, SC } from './spec.js';

eachHostMemory(() => {
  describe('NVMe controller', () => {
    it('declares push rules: the admin SQ at enable, I/O SQs with their write data, none after reset', async () => {
      const d = new Driver(new MemoryBackend(4 << 20), { lbaSize: 4096 });
      await d.enable();
      expect([...d.host.pushRules]).toEqual([
        [
          0,
          {
            kind: 'nvme-sq',
            bar: 0,
            doorbell: REG.DOORBELLS,
            base: ASQ,
            entries: QSIZE,
            dataMax: 0,
            lbaShift: 12,
          },
        ],
      ]);
      await d.ioQueues();
      expect(d.host.pushRules.get(1)).toEqual({
        kind: 'nvme-sq',
        bar: 0,
        doorbell: REG.DOORBELLS + 8,
        base: IOSQ,
        entries: QSIZE,
        dataMax: 128 << 10,
        lbaShift: 12,
      });
      expect((await d.submit(0, d.sqe(ADMIN.DELETE_SQ, { cdw: [1] }))).status).toBe(0);
      expect([...d.host.pushRules.keys()]).toEqual([0]);
      d.bus.write32(0, REG.CC, 0);
      await d.bus.settle();
      expect(d.host.pushRules.size).toBe(0);
    });

    it('enables: CSTS.RDY after CC.EN with valid admin queues; a bad ASQ is a fatal status', async () => {
      const d = new Driver();
      expect(d.bus.read64(0, REG.CAP) & 0xffffn).toBe(1023n);
      expect(d.bus.read32(0, REG.VS)).toBe(0x10400);
      await d.enable();
      expect(d.csts() & CSTS.RDY).toBe(CSTS.RDY);
      d.bus.write32(0, REG.CC, 0);
      await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(0);

      const bad = new Driver();
      bad.bus.write32(0, REG.AQA, 0x000f000f);
      bad.bus.write64(0, REG.ASQ, 0n);
      bad.bus.write64(0, REG.ACQ, ACQ);
      bad.bus.write32(0, REG.CC, CC.EN);
      await bad.bus.settle();
      expect(bad.csts() & (CSTS.RDY | CSTS.CFS)).toBe(CSTS.CFS);
      expect(bad.host.traced('nvme.enable.bad')).toBe(1);
    });

    it('identifies the controller and the namespace with the configured values', async () => {
      const d = new Driver(new MemoryBackend(8 << 20), { lbaSize: 4096 });
      await d.enable();
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { prp1: SCRATCH, cdw: [CNS.CONTROLLER] }))).status,
      ).toBe(0);
      const c = d.mem(SCRATCH, 4096);
      const text = (at: number, len: number) => String.fromCharCode(...c.subarray(at, at + len)).trimEnd();
      expect(text(4, 20)).toBe('SN-TEST');
      expect(text(24, 40)).toBe('Model X');
      expect(text(64, 8)).toBe('FW1');
      expect(c[77]).toBe(6);
      expect(rd32(c, 516)).toBe(1);
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { nsid: 1, prp1: SCRATCH, cdw: [CNS.NAMESPACE] }))).status,
      ).toBe(0);
      expect(rd64(d.mem(SCRATCH, 8), 0)).toBe(2048n); // 8 MiB of 4 KiB blocks
      expect(d.mem(SCRATCH, 4096)[130]).toBe(12);
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { prp1: SCRATCH, cdw: [CNS.ACTIVE_NS_LIST] }))).status,
      ).toBe(0);
      expect(rd32(d.mem(SCRATCH, 8), 0)).toBe(1);
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { nsid: 1, prp1: SCRATCH, cdw: [CNS.NS_DESCRIPTORS] })))
          .status,
      ).toBe(0);
      expect([...d.mem(SCRATCH, 2)]).toEqual([1, 8]);
      expect(
        sc(
          (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { nsid: 2, prp1: SCRATCH, cdw: [CNS.NAMESPACE] }))).status,
        ),
      ).toBe(SC.INVALID_NS);
      expect(sc((await d.submit(0, d.sqe(ADMIN.IDENTIFY, { prp1: SCRATCH, cdw: [0x55] }))).status)).toBe(
        SC.INVALID_FIELD,
      );
    });

    it('answers driver mistakes with the status the specification gives', async () => {
      const d = new Driver();
      await d.enable();
      expect(sc((await d.submit(0, d.sqe(0x7f))).status)).toBe(SC.INVALID_OPCODE);
      expect(
        sc(
          (
            await d.submit(
              0,
              d.sqe(ADMIN.CREATE_SQ, { prp1: IOSQ, cdw: [((QSIZE - 1) << 16) | 1, (1 << 16) | 1] }),
            )
          ).status,
        ),
      ).toBe(SC.CQ_INVALID);
      expect(
        sc(
          (await d.submit(0, d.sqe(ADMIN.CREATE_CQ, { prp1: IOCQ, cdw: [((QSIZE - 1) << 16) | 9, 1] })))
            .status,
        ),
      ).toBe(SC.QID_INVALID);
      expect(
        sc((await d.submit(0, d.sqe(ADMIN.CREATE_CQ, { prp1: IOCQ, cdw: [(4096 << 16) | 1, 1] }))).status),
      ).toBe(SC.QUEUE_SIZE);
      expect(
        sc(
          (
            await d.submit(
              0,
              d.sqe(ADMIN.CREATE_CQ, { prp1: IOCQ, cdw: [((QSIZE - 1) << 16) | 1, (9 << 16) | 1] }),
            )
          ).status,
        ),
      ).toBe(SC.INVALID_VECTOR);
      expect(sc((await d.submit(0, d.sqe(ADMIN.DELETE_SQ, { cdw: [3] }))).status)).toBe(SC.QID_INVALID);
      expect(
        sc(
          (await d.submit(0, d.sqe(ADMIN.GET_LOG_PAGE, { prp1: SCRATCH, cdw: [0x7f | (127 << 16)] }))).status,
        ),
      ).toBe(SC.INVALID_LOG_PAGE);
      expect(sc((await d.submit(0, d.sqe(ADMIN.GET_FEATURES, { cdw: [0x55] }))).status)).toBe(
        SC.INVALID_FIELD,
      );
      await d.ioQueues();
      expect(sc((await d.submit(0, d.sqe(ADMIN.DELETE_CQ, { cdw: [1] }))).status)).toBe(
        SC.INVALID_QUEUE_DELETION,
      );
      const r = await d.submit(1, d.rw(IO.READ, 8192, 1, DATA)); // past the 4 MiB namespace
      expect(sc(r.status)).toBe(SC.LBA_RANGE);
      expect(r.status & 0x4000).toBe(0x4000); // do not retry
      expect(sc((await d.submit(1, d.sqe(IO.READ, { nsid: 2, prp1: DATA }))).status)).toBe(SC.INVALID_NS);
      expect(sc((await d.submit(1, d.sqe(0x7e, { nsid: 1 }))).status)).toBe(SC.INVALID_OPCODE);
      expect(sc((await d.submit(1, d.rw(IO.READ, 0, 16, DATA, DATA + 0x123n))).status)).toBe(
        SC.INVALID_PRP_OFFSET,
      );
      // Memory the host refuses (outside FakeHost's memory): a data transfer error, retryable.
      const x = await d.submit(1, d.rw(IO.WRITE, 0, 8, 0x9000_0000n));
      expect(x.status).toBe(SC.DATA_XFER_ERROR);
      expect(d.host.traced('nvme.dma.refused')).toBe(1);
      // Doorbells of queues that do not exist are traced and ignored.
      d.bus.write32(0, REG.DOORBELLS + 8 * 3, 1);
      expect(d.host.traced('nvme.doorbell.bad-sq')).toBe(1);
    });

    it('shuts down only after the backend has flushed; flushes on FUA and Flush', async () => {
      let flushes = 0;
      let release: (() => void) | undefined;
      const mem = new MemoryBackend(1 << 20);
      const backend: BlockBackend = Object.assign(Object.create(mem) as BlockBackend, {
        flush: () => {
          flushes++;
          return new Promise<void>((r) => (release = r));
        },
      });
      const d = new Driver(backend);
      await d.enable();
      d.bus.write32(0, REG.CC, CC.EN | (1 << CC.SHN_SHIFT) | (6 << 16) | (4 << 20));
      await d.bus.settle();
      expect(d.csts() & (3 << 2)).toBe(CSTS.SHST_OCCURRING);
      release!();
      await d.bus.settle();
      expect(d.csts() & (3 << 2)).toBe(CSTS.SHST_COMPLETE);
      expect(flushes).toBe(1);
    });

    it('CC.EN 1→0 waits for backend writes under way before CSTS.RDY=0; none reaches the backend after', async () => {
      const mem = new MemoryBackend(1 << 20);
      const reached: string[] = [];
      let finishA: (() => void) | undefined;
      const backend: BlockBackend = Object.assign(Object.create(mem) as BlockBackend, {
        writeNow: undefined,
        write: (off: number, data: Uint8Array) => {
          reached.push(`write ${off} (RDY=${d.csts() & CSTS.RDY})`);
          if (off !== 0) return mem.write(off, data);
          return new Promise<void>((r) => (finishA = () => r(mem.write(off, data))));
        },
      });
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      // Write A is in the backend and stays there; write B's data is still on its way from the host.
      const hostRead = d.host.dmaRead.bind(d.host);
      let dataB: (() => void) | undefined;
      d.host.dmaRead = (iova, len) =>
        iova === DATA + 0x1000n
          ? new Promise((r) => (dataB = () => r(hostRead(iova, len))))
          : hostRead(iova, len);
      // At hand or not, B's data is not: it must be read, and takes its time.
      const now = d.host.dmaReadNow;
      if (now) d.host.dmaReadNow = (iova, len) => (iova === DATA + 0x1000n ? undefined : now(iova, len));
      d.post(1, d.rw(IO.WRITE, 0, 1, DATA));
      d.post(1, d.rw(IO.WRITE, 8, 1, DATA + 0x1000n));
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(reached).toEqual(['write 0 (RDY=1)']);
      expect(dataB).toBeDefined();

      d.bus.write32(0, REG.CC, 0);
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(CSTS.RDY); // A has not landed: the reset is not done
      expect(d.host.traced('nvme.reset.draining')).toBe(1);
      dataB!(); // B's data arrives after the reset began: B is abandoned, never written
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(CSTS.RDY);
      finishA!();
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(0);
      expect(reached).toEqual(['write 0 (RDY=1)']);
      expect(d.reap(1)).toBeUndefined(); // neither completes into the reset queues
      await d.enable();
      expect(d.csts() & CSTS.RDY).toBe(CSTS.RDY);
    });

    it('after a function reset, CC.EN=1 waits for the old backend calls before CSTS.RDY=1', async () => {
      const mem = new MemoryBackend(1 << 20);
      let finish: (() => void) | undefined;
      const backend: BlockBackend = Object.assign(Object.create(mem) as BlockBackend, {
        writeNow: undefined,
        write: (off: number, data: Uint8Array) =>
          new Promise<void>((r) => (finish = () => r(mem.write(off, data)))),
      });
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      d.post(1, d.rw(IO.WRITE, 0, 1, DATA));
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(finish).toBeDefined();
      d.dev.reset(); // FunctionReset: registers at power-on, CSTS.RDY=0 at once
      await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(0);
      await d.enable();
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(0); // the old write is still under way
      finish!();
      for (let i = 0; i < 5; i++) await d.bus.settle();
      expect(d.csts() & CSTS.RDY).toBe(CSTS.RDY);
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { prp1: SCRATCH, cdw: [CNS.CONTROLLER] }))).status,
      ).toBe(0);
    });

    it('a reset drops commands in flight: nothing completes into the old queues', async () => {
      let release: (() => void) | undefined;
      const mem = new MemoryBackend(1 << 20);
      const backend: BlockBackend = Object.assign(Object.create(mem) as BlockBackend, {
        readNow: undefined,
        read: (off: number, len: number) =>
          new Promise<Uint8Array>((r) => (release = () => r(new Uint8Array(len).fill(off & 0xff)))),
      });
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      const sqe = d.rw(IO.READ, 0, 1, DATA);
      d.mem(IOSQ, 64).set(sqe);
      d.bus.write32(0, REG.DOORBELLS + 8, 1);
      await d.bus.settle();
      d.bus.write32(0, REG.CC, 0); // reset with the read still running
      await d.bus.settle();
      const writesBefore = d.host.events.filter((e) => e.kind === 'dma-write').length;
      release!();
      await d.bus.settle();
      expect(d.host.events.filter((e) => e.kind === 'dma-write').length).toBe(writesBefore);
      await d.enable();
      expect(d.csts() & CSTS.RDY).toBe(CSTS.RDY);
      expect(
        (await d.submit(0, d.sqe(ADMIN.IDENTIFY, { prp1: SCRATCH, cdw: [CNS.CONTROLLER] }))).status,
      ).toBe(0);
    });
  });
});
