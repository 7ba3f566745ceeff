// The NVMe controller's NVM commands, driven as Linux's nvme driver drives them (fake-driver.ts):
// reads and writes through PRPs and PRP lists, data that waits, Dataset Management and Write
// Zeroes, backend errors, what a failed command does with what was pushed for it, and injected
// faults.
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../endpoint/backends/block.js';
import { settle } from '../pci/fake-host.js';
import { rd16, rd64, wr32, wr64 } from '../pci/le.js';
import { type BlockBackend, BlockError } from './backend.js';
import { DATA, Driver, eachHostMemory, pattern, SCRATCH, sc } from './fake-driver.js';
import { ADMIN, DNR, FEAT, IO, LOG, REG, SC } from './spec.js';

eachHostMemory(() => {
  describe('NVMe controller', () => {
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
