// The NVMe controller driven as Linux's nvme driver drives it: registers through FakeBus (the
// host's shadow), queues and data in FakeHost memory, storage in a MemoryBackend (or one that
// fails on purpose). Each helper below is one step a driver takes.
import { beforeEach, describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../endpoint/backends/block.js';
import { FakeBus, FakeHost, settle } from '../pci/fake-host.js';
import { rd16, rd32, rd64, wr16, wr32, wr64 } from '../pci/le.js';
import { type BlockBackend, BlockError } from './backend.js';
import { NvmeController } from './controller.js';
import { ADMIN, CC, CNS, CSTS, DNR, FEAT, IO, LOG, REG, SC } from './spec.js';

const MEM = 8 << 20;
const BASE = 0x1000_0000n;
const ASQ = BASE;
const ACQ = BASE + 0x1000n;
const IOSQ = BASE + 0x2000n;
const IOCQ = BASE + 0x3000n;
const SCRATCH = BASE + 0x10000n; // identify pages, PRP lists
const DATA = BASE + 0x100000n;
const DBS = BASE + 0x8000n; // shadow doorbells (Doorbell Buffer Config)
const EIS = BASE + 0x9000n; // their event indices
const QSIZE = 16;

/** Linux's nvme_dbbuf_need_event: whether moving a doorbell from `old` to `next` passes `event`. */
const needEvent = (event: number, next: number, old: number) =>
  ((next - event - 1) & 0xffff) < ((next - old) & 0xffff);

interface Cqe {
  dw0: number;
  sqhd: number;
  sqid: number;
  cid: number;
  status: number;
}

class Driver {
  readonly host: FakeHost;
  readonly bus: FakeBus;
  readonly dev: NvmeController;
  readonly tails = new Map<number, number>();
  readonly heads = new Map<number, number>();
  readonly phases = new Map<number, number>();
  /** Shadow doorbells in use for I/O queues (after Doorbell Buffer Config), as Linux uses them. */
  shadow = false;
  /** Doorbell registers written, SQ tail and CQ head. */
  readonly rung = { sq: 0, cq: 0 };
  #cid = 0;

  constructor(
    backend: BlockBackend = new MemoryBackend(4 << 20),
    o: { lbaSize?: number; sqEventIdx?: boolean } = {},
  ) {
    this.host = new FakeHost({ memory: MEM, base: BASE, sqEventIdx: o.sqEventIdx, atHand });
    this.dev = new NvmeController({
      backend,
      lbaSize: o.lbaSize,
      serial: 'SN-TEST',
      model: 'Model X',
      firmware: 'FW1',
      queues: 4,
    });
    this.bus = new FakeBus(this.dev, this.host);
  }

  mem(iova: bigint, len: number): Uint8Array {
    const off = Number(iova - BASE);
    return this.host.memory.subarray(off, off + len);
  }

  csts(): number {
    return this.bus.read32(0, REG.CSTS);
  }

  async enable(): Promise<void> {
    this.bus.write32(0, REG.AQA, ((QSIZE - 1) << 16) | (QSIZE - 1));
    this.bus.write64(0, REG.ASQ, ASQ);
    this.bus.write64(0, REG.ACQ, ACQ);
    this.bus.write32(0, REG.CC, CC.EN | (6 << 16) | (4 << 20));
    for (const q of [0, 1]) {
      this.tails.set(q, 0);
      this.heads.set(q, 0);
      this.phases.set(q, 1);
    }
    await this.bus.settle();
  }

  /** Builds an SQE. */
  sqe(opcode: number, f: { nsid?: number; prp1?: bigint; prp2?: bigint; cdw?: number[] } = {}): Uint8Array {
    const b = new Uint8Array(64);
    b[0] = opcode;
    wr16(b, 2, ++this.#cid & 0xffff);
    wr32(b, 4, f.nsid ?? 0);
    wr64(b, 24, f.prp1 ?? 0n);
    wr64(b, 32, f.prp2 ?? 0n);
    for (const [i, v] of (f.cdw ?? []).entries()) wr32(b, 40 + 4 * i, v >>> 0);
    return b;
  }

  /** Writes doorbell `db` (2q: SQ q's tail, 2q + 1: CQ q's head) as Linux does: with shadow
   *  doorbells, the shadow first, and the register only if the event index asks for it. */
  ring(db: number, value: number): void {
    if (this.shadow && db >= 2) {
      const slot = this.mem(DBS + BigInt(db * 4), 4);
      const old = rd32(slot, 0);
      wr32(slot, 0, value);
      if (!needEvent(rd32(this.mem(EIS + BigInt(db * 4), 4), 0) & 0xffff, value, old)) return;
    }
    this.rung[db & 1 ? 'cq' : 'sq']++;
    this.bus.write32(0, REG.DOORBELLS + 4 * db, value);
  }

  /** Puts `sqe` on queue q and rings. */
  post(q: number, sqe: Uint8Array): void {
    const sqBase = q === 0 ? ASQ : IOSQ;
    const tail = this.tails.get(q)!;
    this.mem(sqBase + BigInt(tail * 64), 64).set(sqe);
    this.tails.set(q, (tail + 1) % QSIZE);
    this.ring(2 * q, this.tails.get(q)!);
  }

  /** Submits on queue q (0 admin, 1 I/O), rings the doorbell, waits, reaps one completion. */
  async submit(q: number, sqe: Uint8Array): Promise<Cqe> {
    this.post(q, sqe);
    for (let i = 0; i < 20; i++) await settle();
    const cqe = this.reap(q);
    if (!cqe) throw new Error(`no completion on queue ${q}`);
    return cqe;
  }

  reap(q: number): Cqe | undefined {
    const cqBase = q === 0 ? ACQ : IOCQ;
    const head = this.heads.get(q)!;
    const e = this.mem(cqBase + BigInt(head * 16), 16);
    if ((rd16(e, 14) & 1) !== this.phases.get(q)) return undefined;
    const next = (head + 1) % QSIZE;
    if (next === 0) this.phases.set(q, this.phases.get(q)! ^ 1);
    this.heads.set(q, next);
    this.ring(2 * q + 1, next);
    return {
      dw0: rd32(e, 0),
      sqhd: rd16(e, 8),
      sqid: rd16(e, 10),
      cid: rd16(e, 12),
      status: rd16(e, 14) >>> 1,
    };
  }

  async ioQueues(): Promise<void> {
    expect(
      (
        await this.submit(
          0,
          this.sqe(ADMIN.CREATE_CQ, { prp1: IOCQ, cdw: [((QSIZE - 1) << 16) | 1, (1 << 16) | 3] }),
        )
      ).status,
    ).toBe(0);
    expect(
      (
        await this.submit(
          0,
          this.sqe(ADMIN.CREATE_SQ, { prp1: IOSQ, cdw: [((QSIZE - 1) << 16) | 1, (1 << 16) | 1] }),
        )
      ).status,
    ).toBe(0);
  }

  rw(opcode: number, slba: number, nlb: number, prp1: bigint, prp2 = 0n, fua = false): Uint8Array {
    return this.sqe(opcode, { nsid: 1, prp1, prp2, cdw: [slba, 0, (nlb - 1) | (fua ? 1 << 30 : 0)] });
  }
}

const sc = (status: number) => status & 0x7ff; // without DNR
const pattern = (len: number, seed: number) =>
  Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);

// Every test twice: host memory read as it comes (every read waits), and at hand (as when the host
// pushed it with the doorbell: commands then complete without waiting).
let atHand = false;

describe.each([
  ['read as it comes', false],
  ['at hand', true],
])('host memory %s', (_, now) => {
  beforeEach(() => {
    atHand = now;
  });

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

    it('reads and writes through PRP lists across pages, at an offset, with FUA', async () => {
      const backend = new MemoryBackend(4 << 20);
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      // 20 KiB starting 512 bytes into a page: PRP1 + a list of 5 entries.
      const len = 20 << 10;
      const buf = DATA + 512n;
      const list = SCRATCH;
      for (let i = 0; i < 5; i++) wr64(d.mem(list + BigInt(8 * i), 8), 0, DATA + BigInt((i + 1) * 4096));
      const data = pattern(len, 7);
      d.mem(buf, len).set(data);
      const w = await d.submit(1, d.rw(IO.WRITE, 100, len / 512, buf, list, true));
      expect(w).toMatchObject({ status: 0, sqid: 1 });
      expect(await backend.read(100 * 512, len)).toEqual(data);
      d.mem(buf, len).fill(0);
      expect((await d.submit(1, d.rw(IO.READ, 100, len / 512, buf, list))).status).toBe(0);
      expect(d.mem(buf, len)).toEqual(data);
      // Two pages: PRP2 is the second page itself.
      expect((await d.submit(1, d.rw(IO.READ, 0, 16, DATA, DATA + 0x10000n))).status).toBe(0);
      expect(d.host.interrupts).toContain(1);
    });

    it('data that waits keeps its own bytes while later commands are done at once', async () => {
      // A write over three scattered pages whose middle page must be read (and takes its time),
      // then writes and reads done at once in between: none may see another's bytes.
      const backend = new MemoryBackend(4 << 20);
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      const pages = [DATA, DATA + 0x3000n, DATA + 0x5000n];
      const list = SCRATCH;
      for (let i = 1; i < 3; i++) wr64(d.mem(list + BigInt(8 * (i - 1)), 8), 0, pages[i]!);
      const a = pattern(3 * 4096, 1);
      for (let i = 0; i < 3; i++) d.mem(pages[i]!, 4096).set(a.subarray(i * 4096, (i + 1) * 4096));
      const slow = pages[1]!;
      let release: (() => void) | undefined;
      const hostRead = d.host.dmaRead.bind(d.host);
      d.host.dmaRead = (iova, len) =>
        iova === slow ? new Promise((r) => (release = () => r(hostRead(iova, len)))) : hostRead(iova, len);
      const now = d.host.dmaReadNow;
      if (now) d.host.dmaReadNow = (iova, len, into) => (iova === slow ? undefined : now(iova, len, into));
      d.post(1, d.rw(IO.WRITE, 0, 24, pages[0]!, list));
      for (let i = 0; i < 5; i++) await settle();
      expect(release).toBeDefined();
      // Meanwhile: 8 KiB written and read back (two pages: PRP2 the second).
      const b = pattern(8192, 2);
      d.mem(DATA + 0x10000n, 8192).set(b);
      expect((await d.submit(1, d.rw(IO.WRITE, 64, 16, DATA + 0x10000n, DATA + 0x11000n))).status).toBe(0);
      d.mem(DATA + 0x20000n, 8192).fill(0);
      expect((await d.submit(1, d.rw(IO.READ, 64, 16, DATA + 0x20000n, DATA + 0x21000n))).status).toBe(0);
      expect(d.mem(DATA + 0x20000n, 8192)).toEqual(b);
      release!();
      for (let i = 0; i < 5; i++) await settle();
      expect(d.reap(1)).toMatchObject({ status: 0 });
      expect(await backend.read(0, 3 * 4096)).toEqual(a);
      expect(await backend.read(64 * 512, 8192)).toEqual(b);
    });

    it('follows a PRP list chained across list pages, and refuses a chain pointer with an offset', async () => {
      const backend = new MemoryBackend(4 << 20);
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      // 16 KiB from a page boundary: PRP1 + 3 list entries. The list starts 16 bytes before the end
      // of its page, so its second slot chains to a list page holding the last two entries.
      const len = 16 << 10;
      const first = SCRATCH + 0x1000n - 16n;
      const next = SCRATCH + 0x3000n;
      wr64(d.mem(first, 8), 0, DATA + 0x1000n);
      wr64(d.mem(first + 8n, 8), 0, next);
      wr64(d.mem(next, 8), 0, DATA + 0x2000n);
      wr64(d.mem(next + 8n, 8), 0, DATA + 0x3000n);
      const data = pattern(len, 3);
      d.mem(DATA, len).set(data);
      expect((await d.submit(1, d.rw(IO.WRITE, 64, len / 512, DATA, first))).status).toBe(0);
      expect(await backend.read(64 * 512, len)).toEqual(data);
      // A chain into the middle of a page (here: back into the list itself) is the driver's mistake.
      wr64(d.mem(first + 8n, 8), 0, first);
      expect(sc((await d.submit(1, d.rw(IO.WRITE, 64, len / 512, DATA, first))).status)).toBe(
        SC.INVALID_PRP_OFFSET,
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

    it('deallocates and writes zeroes; SMART counts the I/O; features stick', async () => {
      const backend = new MemoryBackend(4 << 20);
      await backend.write(0, pattern(64 << 10, 3));
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      const ranges = d.mem(SCRATCH, 32);
      wr32(ranges, 4, 8); // 8 blocks at LBA 0
      wr64(ranges, 8, 0n);
      wr32(ranges, 20, 16); // 16 blocks at LBA 64
      wr64(ranges, 24, 64n);
      expect((await d.submit(1, d.sqe(IO.DSM, { nsid: 1, prp1: SCRATCH, cdw: [1, 4] }))).status).toBe(0);
      expect(await backend.read(0, 4096)).toEqual(new Uint8Array(4096));
      expect(await backend.read(64 * 512, 8192)).toEqual(new Uint8Array(8192));
      expect((await backend.read(4096, 16))[0]).not.toBe(0);
      expect((await d.submit(1, d.sqe(IO.WRITE_ZEROES, { nsid: 1, cdw: [100, 0, 7] }))).status).toBe(0);
      expect(await backend.read(100 * 512, 4096)).toEqual(new Uint8Array(4096));
      await d.submit(1, d.rw(IO.READ, 0, 8, DATA));
      await d.submit(1, d.rw(IO.WRITE, 0, 8, DATA));
      expect(
        (await d.submit(0, d.sqe(ADMIN.GET_LOG_PAGE, { prp1: SCRATCH, cdw: [LOG.SMART | (127 << 16)] })))
          .status,
      ).toBe(0);
      const smart = d.mem(SCRATCH, 512);
      expect(rd64(smart, 64)).toBe(1n); // host read commands
      expect(rd64(smart, 80)).toBe(1n); // host write commands
      expect(rd64(smart, 32)).toBe(1n); // data units read (rounded up)
      expect(
        (await d.submit(0, d.sqe(ADMIN.SET_FEATURES, { cdw: [FEAT.NUM_QUEUES, (7 << 16) | 7] }))).dw0,
      ).toBe((3 << 16) | 3);
      expect((await d.submit(0, d.sqe(ADMIN.SET_FEATURES, { cdw: [FEAT.VOLATILE_WC, 0] }))).status).toBe(0);
      expect((await d.submit(0, d.sqe(ADMIN.GET_FEATURES, { cdw: [FEAT.VOLATILE_WC] }))).dw0).toBe(0);
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

    it.each([
      ['done at once (readNow, writeNow)', true],
      ['waited for', false],
    ])(
      'maps backend errors to statuses by errno code and failed call, never by message; keeps going: %s',
      async (_, now) => {
        const mem = new MemoryBackend(1 << 20);
        let fail: string | undefined;
        // Messages that name the other operation (or none): only code and op may decide.
        const writeError = () => new BlockError(fail!, 'write', 'read-back check failed');
        const readError = () => new BlockError(fail!, 'read', 'write cache lost');
        const backend: BlockBackend = Object.assign(Object.create(mem) as BlockBackend, {
          write: (off: number, data: Uint8Array) =>
            fail ? Promise.reject(writeError()) : mem.write(off, data),
          read: (off: number, len: number) => (fail ? Promise.reject(readError()) : mem.read(off, len)),
          readNow: now
            ? (off: number, len: number) => {
                if (fail) throw readError();
                return mem.readNow(off, len);
              }
            : undefined,
          writeNow: now
            ? (off: number, data: Uint8Array) => {
                if (fail) throw writeError();
                return mem.writeNow(off, data);
              }
            : undefined,
          flush: () => (fail ? Promise.reject(new BlockError(fail, 'flush', 'injected')) : mem.flush()),
        });
        const d = new Driver(backend);
        await d.enable();
        await d.ioQueues();
        fail = 'EIO';
        expect((await d.submit(1, d.rw(IO.WRITE, 0, 1, DATA))).status).toBe(SC.WRITE_FAULT);
        expect((await d.submit(1, d.rw(IO.READ, 0, 1, DATA))).status).toBe(SC.UNRECOVERED_READ);
        expect((await d.submit(1, d.sqe(IO.FLUSH, { nsid: 1 }))).status).toBe(SC.WRITE_FAULT);
        fail = 'ENOSPC';
        expect((await d.submit(1, d.rw(IO.WRITE, 0, 1, DATA))).status).toBe(SC.CAP_EXCEEDED | DNR);
        fail = 'EDQUOT';
        expect((await d.submit(1, d.rw(IO.WRITE, 0, 1, DATA))).status).toBe(SC.CAP_EXCEEDED | DNR);
        fail = 'EBADF';
        expect((await d.submit(1, d.rw(IO.READ, 0, 1, DATA))).status).toBe(SC.INTERNAL);
        fail = undefined;
        expect((await d.submit(1, d.rw(IO.WRITE, 0, 1, DATA))).status).toBe(0);
        expect(d.dev.counters().mediaErrors).toBe(6);
        expect(d.host.traces.filter((t) => t.event === 'nvme.backend.error').map((t) => t.fields.op)).toEqual(
          ['write', 'read', 'flush', 'write', 'write', 'read'],
        );
      },
    );

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

    it('a command that waits keeps its entry while later ones run, end and reuse theirs', async () => {
      let release: (() => void) | undefined;
      const mem = new MemoryBackend(1 << 20);
      await mem.write(0, pattern(512, 1));
      await mem.write(512, pattern(512, 2));
      // LBA 0 must be waited for; LBA 1 is read at once.
      const backend: BlockBackend = Object.assign(Object.create(mem) as BlockBackend, {
        readNow: (off: number, len: number, into?: Uint8Array) =>
          off === 0 ? undefined : mem.readNow(off, len, into),
        read: (off: number, len: number) =>
          off === 0
            ? new Promise<Uint8Array>((r) => (release = () => r(mem.read(off, len))))
            : mem.read(off, len),
      });
      const d = new Driver(backend);
      await d.enable();
      await d.ioQueues();
      const held = d.rw(IO.READ, 0, 1, DATA);
      d.post(1, held);
      await d.bus.settle();
      for (let i = 0; i < 3; i++) {
        const sqe = d.rw(IO.READ, 1, 1, DATA + 0x1000n);
        const c = await d.submit(1, sqe);
        expect([c.status, c.cid]).toEqual([0, rd16(sqe, 2)]);
        expect(d.mem(DATA + 0x1000n, 512)).toEqual(pattern(512, 2));
      }
      release!();
      for (let i = 0; i < 20; i++) await d.bus.settle();
      const c = d.reap(1);
      expect([c?.status, c?.cid]).toEqual([0, rd16(held, 2)]);
      expect(d.mem(DATA, 512)).toEqual(pattern(512, 1));
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

  describe('NVMe commands that fail take what was pushed for them', () => {
    it('reads a failed write’s PRP list and data before completing it (no stale push left behind)', async () => {
      const d = new Driver(new MemoryBackend(4 << 20));
      await d.enable();
      await d.ioQueues();
      // 12 KiB: PRP1 and a list of two entries, past the end of the namespace (a driver mistake).
      const list = SCRATCH;
      for (let i = 0; i < 2; i++) wr64(d.mem(list + BigInt(8 * i), 8), 0, DATA + BigInt((i + 1) * 4096));
      const reads = (iova: bigint) =>
        d.host.events.filter((e) => e.kind === 'dma-read' && e.iova === iova).length;
      const w = await d.submit(1, d.rw(IO.WRITE, 8192 - 1, 24, DATA, list));
      expect(sc(w.status)).toBe(SC.LBA_RANGE);
      expect(reads(list)).toBe(1);
      expect(reads(DATA)).toBe(1); // the three pages are contiguous: one read
      // A read that failed: its list only (its data pages are the device's to write).
      const r = await d.submit(1, d.rw(IO.READ, 8192 - 1, 24, DATA, list));
      expect(sc(r.status)).toBe(SC.LBA_RANGE);
      expect(reads(list)).toBe(2);
      expect(reads(DATA)).toBe(1);
      // One that succeeded reads everything once, as before.
      const ok = await d.submit(1, d.rw(IO.WRITE, 0, 24, DATA, list));
      expect(ok.status).toBe(0);
      expect(reads(list)).toBe(3);
      expect(reads(DATA)).toBe(2);
    });
  });

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

  describe('NVMe controller: injected faults (HostPort.commandFault)', () => {
    it('names its commands; a failed command completes with the status and touches no storage', async () => {
      const backend = new MemoryBackend(4 << 20);
      const d = new Driver(backend);
      expect(d.dev.commands.read).toEqual({ opcode: IO.READ, admin: false });
      await d.enable();
      await d.ioQueues();
      const asked: { queue: number; opcode: number }[] = [];
      d.host.commandFault = (cmd) => {
        asked.push(cmd);
        return cmd.opcode === IO.WRITE ? { status: 0x281 | DNR } : undefined;
      };
      d.mem(DATA, 512).set(pattern(512, 3));
      const w = await d.submit(1, d.rw(IO.WRITE, 8, 1, DATA));
      expect(w.status).toBe(0x281 | DNR);
      expect(await backend.read(8 * 512, 512)).toEqual(new Uint8Array(512));
      expect(d.dev.counters().errors).toBe(1);
      expect((await d.submit(1, d.rw(IO.READ, 8, 1, DATA))).status).toBe(0);
      expect(asked).toEqual([
        { queue: 1, opcode: IO.WRITE },
        { queue: 1, opcode: IO.READ },
      ]);
    });

    it('a held command completes when the hold settles, and not at all across a reset', async () => {
      const d = new Driver(new MemoryBackend(4 << 20));
      await d.enable();
      await d.ioQueues();
      let release = () => {};
      d.host.commandFault = () => ({ hold: new Promise<void>((r) => (release = r)) });
      d.post(1, d.rw(IO.READ, 0, 1, DATA));
      for (let i = 0; i < 20; i++) await settle();
      expect(d.reap(1)).toBeUndefined();
      release();
      for (let i = 0; i < 20; i++) await settle();
      expect(d.reap(1)).toMatchObject({ status: 0, sqid: 1 });
      // Held again, then the driver resets the controller: the late completion is dropped.
      d.post(1, d.rw(IO.READ, 0, 1, DATA));
      for (let i = 0; i < 20; i++) await settle();
      d.bus.write32(0, REG.CC, 0);
      await d.bus.settle();
      release();
      for (let i = 0; i < 20; i++) await settle();
      expect(d.reap(1)).toBeUndefined();
    });
  });
});
