import { crc32 } from 'node:zlib';
import { expect, describe as group, it } from 'vitest';
import { FakeBus, FakeHost } from '../pci/fake-host.js';
import { TestDevice, testDeviceSpec } from './device.js';
import {
  CMD,
  IRQ_NONE,
  REG,
  STATUS,
  TEST_ERR,
  TEST_MAGIC,
  TEST_MAX_BURST,
  TEST_MAX_DMA,
  TEST_MEM_BAR,
  TEST_MEM_BAR_SIZE,
  TEST_REG_BAR,
  TEST_VERSION,
  testPattern,
} from './regs.js';

const R = TEST_REG_BAR;

function world(o: { vectors?: number; memory?: number } = {}) {
  const dev = new TestDevice({ vectors: o.vectors });
  const host = new FakeHost({ memory: o.memory });
  const bus = new FakeBus(dev, host);
  const rd = (reg: number) => bus.read32(R, reg);
  const wr = (reg: number, v: number) => bus.write32(R, reg, v);
  return { dev, host, bus, rd, wr };
}

function fill(host: FakeHost, seed = 7): void {
  let x = seed;
  for (let i = 0; i < host.memory.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    host.memory[i] = x >>> 24;
  }
}

group('test device', () => {
  it('identifies itself: MAGIC, VERSION, VECTORS; power-on STATUS 0, IRQ_VECTOR none', () => {
    const { rd } = world();
    expect(rd(REG.MAGIC)).toBe(TEST_MAGIC);
    expect(rd(REG.VERSION)).toBe(TEST_VERSION);
    expect(rd(REG.VECTORS)).toBe(8);
    expect(rd(REG.STATUS)).toBe(0);
    expect(rd(REG.IRQ_VECTOR)).toBe(IRQ_NONE);
    expect(rd(REG.DONE_COUNT)).toBe(0);
    expect(world({ vectors: 64 }).rd(REG.VECTORS)).toBe(64);
  });

  it('refuses vectors outside 1..64', () => {
    expect(() => new TestDevice({ vectors: 0 })).toThrow(RangeError);
    expect(() => new TestDevice({ vectors: 65 })).toThrow('vectors must be 1..64');
  });

  it('SCRATCH stores what the driver writes', () => {
    const { rd, wr } = world();
    wr(REG.SCRATCH, 0xcafef00d);
    expect(rd(REG.SCRATCH)).toBe(0xcafef00d);
  });

  it('writes to read-only registers are traced and change nothing', () => {
    const { rd, wr, host } = world();
    wr(REG.MAGIC, 0);
    wr(REG.CHECKSUM, 1);
    wr(REG.DONE_COUNT, 5);
    expect(rd(REG.MAGIC)).toBe(TEST_MAGIC);
    expect(rd(REG.DONE_COUNT)).toBe(0);
    expect(host.traced('pci.mmio.ro-write')).toBe(3);
  });

  it('COUNTER increments on every read and is never pushed to the shadow', () => {
    const { rd, dev, bus } = world();
    expect([rd(REG.COUNTER), rd(REG.COUNTER), rd(REG.COUNTER)]).toEqual([1, 2, 3]);
    expect(dev.takeDirty()).toEqual([]);
    expect(bus.shadows.get(R)![REG.COUNTER]).toBe(0);
  });

  it('RAISE_MSIX raises ARG, then completes with DONE and the completion vector, for every vector', () => {
    const { rd, wr, host } = world();
    wr(REG.IRQ_VECTOR, 7);
    for (let v = 0; v < 8; v++) {
      wr(REG.ARG, v);
      wr(REG.COMMAND, CMD.RAISE_MSIX);
      expect(rd(REG.STATUS)).toBe(STATUS.DONE);
      expect(rd(REG.ERROR)).toBe(0);
    }
    expect(host.interrupts).toEqual([0, 7, 1, 7, 2, 7, 3, 7, 4, 7, 5, 7, 6, 7, 7, 7]);
    expect(rd(REG.DONE_COUNT)).toBe(8);
  });

  it('RAISE_MSIX reaches every one of 64 vectors without a completion interrupt when IRQ_VECTOR is none', () => {
    const { wr, host } = world({ vectors: 64 });
    for (let v = 0; v < 64; v++) {
      wr(REG.ARG, v);
      wr(REG.COMMAND, CMD.RAISE_MSIX);
    }
    expect(host.interrupts).toEqual(Array.from({ length: 64 }, (_, i) => i));
  });

  it('RAISE_MSIX of a vector past VECTORS fails with BAD_ARGUMENT and still signals completion', () => {
    const { rd, wr, host } = world();
    wr(REG.IRQ_VECTOR, 2);
    wr(REG.ARG, 8);
    wr(REG.COMMAND, CMD.RAISE_MSIX);
    expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
    expect(rd(REG.ERROR)).toBe(TEST_ERR.BAD_ARGUMENT);
    expect(host.interrupts).toEqual([2]);
    expect(host.traces.at(-1)).toEqual({ event: 'test.cmd.bad-vector', fields: { vector: 8, vectors: 8 } });
  });

  it('an IRQ_VECTOR past VECTORS fails the command with BAD_ARGUMENT and raises nothing', () => {
    const { rd, wr, host } = world();
    wr(REG.IRQ_VECTOR, 8);
    wr(REG.ARG, 1);
    wr(REG.COMMAND, CMD.RAISE_MSIX);
    expect(rd(REG.ERROR)).toBe(TEST_ERR.BAD_ARGUMENT);
    expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
    expect(host.interrupts).toEqual([]);
    expect(host.traced('test.cmd.bad-irq-vector')).toBe(1);
  });

  it('an unknown command fails with BAD_ARGUMENT; command 0 starts nothing', () => {
    const { rd, wr, host } = world();
    wr(REG.COMMAND, 0);
    expect(rd(REG.STATUS)).toBe(0);
    wr(REG.COMMAND, 99);
    expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
    expect(rd(REG.ERROR)).toBe(TEST_ERR.BAD_ARGUMENT);
    expect(rd(REG.DONE_COUNT)).toBe(1);
    expect(host.traces).toEqual([{ event: 'test.cmd.unknown', fields: { cmd: 99 } }]);
  });

  it('a new command clears ERROR', () => {
    const { rd, wr } = world();
    wr(REG.COMMAND, 99);
    wr(REG.ARG, 0);
    wr(REG.COMMAND, CMD.RAISE_MSIX);
    expect(rd(REG.ERROR)).toBe(0);
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
  });

  it('DMA_READ checksums SIZE bytes at SRC_ADDR (CRC-32) and interrupts on completion', async () => {
    const { rd, wr, bus, host } = world();
    fill(host);
    bus.write64(R, REG.SRC_ADDR, host.base + 0x123n);
    wr(REG.SIZE, 5000);
    wr(REG.IRQ_VECTOR, 3);
    wr(REG.COMMAND, CMD.DMA_READ);
    expect(rd(REG.STATUS)).toBe(STATUS.BUSY);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(rd(REG.CHECKSUM)).toBe(crc32(host.memory.subarray(0x123, 0x123 + 5000)));
    expect(host.interrupts).toEqual([3]);
    expect(rd(REG.DONE_COUNT)).toBe(1);
  });

  it('DMA_READ of TEST_MAX_DMA bytes', async () => {
    const { rd, wr, bus, host } = world({ memory: TEST_MAX_DMA + 4096 });
    fill(host, 3);
    bus.write64(R, REG.SRC_ADDR, host.base + 4096n);
    wr(REG.SIZE, TEST_MAX_DMA);
    wr(REG.COMMAND, CMD.DMA_READ);
    await bus.settle();
    expect(rd(REG.CHECKSUM)).toBe(crc32(host.memory.subarray(4096)));
  });

  it('DMA_READ outside memory sets STATUS.ERROR and ERROR=DMA_FAULT', async () => {
    const { rd, wr, bus, host } = world();
    bus.write64(R, REG.SRC_ADDR, host.base - 16n);
    wr(REG.SIZE, 64);
    wr(REG.IRQ_VECTOR, 0);
    wr(REG.COMMAND, CMD.DMA_READ);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
    expect(rd(REG.ERROR)).toBe(TEST_ERR.DMA_FAULT);
    expect(host.interrupts).toEqual([0]);
    expect(host.traced('test.dma.read-fault')).toBe(1);
  });

  it.each([0, TEST_MAX_DMA + 1])('DMA commands with SIZE %s fail with BAD_ARGUMENT', async (size) => {
    const { rd, wr, bus, host } = world();
    for (const cmd of [CMD.DMA_READ, CMD.DMA_WRITE, CMD.DMA_READ_COPY, CMD.DMA_WRITE_COPY]) {
      wr(REG.SIZE, size);
      wr(REG.COMMAND, cmd);
      await bus.settle();
      expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
      expect(rd(REG.ERROR)).toBe(TEST_ERR.BAD_ARGUMENT);
    }
    expect(host.traced('test.cmd.bad-size')).toBe(4);
    expect(host.events.filter((e) => e.kind !== 'msix')).toEqual([]);
  });

  it('DMA_WRITE writes testPattern(ARG, SIZE) to DST_ADDR, then interrupts', async () => {
    const { rd, wr, bus, host } = world();
    bus.write64(R, REG.DST_ADDR, host.base + 0x10n);
    wr(REG.ARG, 0x1234);
    wr(REG.SIZE, 1001);
    wr(REG.IRQ_VECTOR, 5);
    wr(REG.COMMAND, CMD.DMA_WRITE);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(Buffer.compare(host.memory.subarray(0x10, 0x10 + 1001), testPattern(0x1234, 1001))).toBe(0);
    expect(host.memory[0x10 + 1001]).toBe(0);
    expect(host.events.at(-1)).toEqual({ kind: 'msix', vector: 5 });
  });

  it('DMA_WRITE of TEST_MAX_DMA bytes arrives whole, in bursts', async () => {
    const { rd, wr, bus, host } = world({ memory: TEST_MAX_DMA });
    bus.write64(R, REG.DST_ADDR, host.base);
    wr(REG.ARG, 0);
    wr(REG.SIZE, TEST_MAX_DMA);
    wr(REG.COMMAND, CMD.DMA_WRITE);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(Buffer.compare(host.memory, testPattern(0, TEST_MAX_DMA))).toBe(0);
    expect(host.events.filter((e) => e.kind === 'dma-write').length).toBeGreaterThan(1);
  });

  it('DMA_READ_COPY reads SIZE bytes at SRC_ADDR, computes nothing (CHECKSUM unchanged), interrupts', async () => {
    const { rd, wr, bus, host } = world({ memory: TEST_MAX_DMA + 4096 });
    fill(host, 5);
    bus.write64(R, REG.SRC_ADDR, host.base + 0x40n);
    wr(REG.SIZE, 3000);
    wr(REG.COMMAND, CMD.DMA_READ);
    await bus.settle();
    const crc = rd(REG.CHECKSUM);
    expect(crc).toBe(crc32(host.memory.subarray(0x40, 0x40 + 3000)));
    bus.write64(R, REG.SRC_ADDR, host.base + 4096n);
    wr(REG.SIZE, TEST_MAX_DMA);
    wr(REG.IRQ_VECTOR, 2);
    wr(REG.COMMAND, CMD.DMA_READ_COPY);
    expect(rd(REG.STATUS)).toBe(STATUS.BUSY);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(rd(REG.CHECKSUM)).toBe(crc);
    expect(host.events.filter((e) => e.kind === 'dma-read').at(-1)).toEqual({
      kind: 'dma-read',
      iova: host.base + 4096n,
      len: TEST_MAX_DMA,
    });
    expect(host.events.at(-1)).toEqual({ kind: 'msix', vector: 2 });
    bus.write64(R, REG.SRC_ADDR, host.base - 16n);
    wr(REG.SIZE, 64);
    wr(REG.COMMAND, CMD.DMA_READ_COPY);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
    expect(rd(REG.ERROR)).toBe(TEST_ERR.DMA_FAULT);
  });

  it('DMA_WRITE_COPY writes what DMA_WRITE writes; a kept pattern handed over is never changed', async () => {
    const { rd, wr, bus, host } = world({ memory: 2 * TEST_MAX_DMA });
    const handed: { data: Uint8Array; copy: Uint8Array }[] = [];
    const write = host.dmaWrite.bind(host);
    host.dmaWrite = (iova: bigint, data: Uint8Array, handOver?: boolean) => {
      if (handOver) handed.push({ data, copy: data.slice() });
      write(iova, data);
    };
    const run = async (cmd: number, seed: number, size: number, at: number) => {
      bus.write64(R, REG.DST_ADDR, host.base + BigInt(at));
      wr(REG.ARG, seed);
      wr(REG.SIZE, size);
      wr(REG.COMMAND, cmd);
      await bus.settle();
      expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    };
    await run(CMD.DMA_WRITE, 0x77, 1001, 0);
    await run(CMD.DMA_WRITE_COPY, 0x77, 1001, 4096);
    expect(host.memory.subarray(4096, 4096 + 1001)).toEqual(host.memory.subarray(0, 1001));
    expect(host.memory[4096 + 1001]).toBe(0);
    await run(CMD.DMA_WRITE_COPY, 0x77, TEST_MAX_DMA, TEST_MAX_DMA);
    expect(Buffer.compare(host.memory.subarray(TEST_MAX_DMA), testPattern(0x77, TEST_MAX_DMA))).toBe(0);
    await run(CMD.DMA_WRITE_COPY, 0x78, 5000, 0);
    expect(Buffer.compare(host.memory.subarray(0, 5000), testPattern(0x78, 5000))).toBe(0);
    expect(handed.length).toBeGreaterThan(3);
    for (const h of handed) expect(Buffer.compare(h.data, h.copy)).toBe(0);
  });

  it('DMA_WRITE to unmapped memory completes (posted writes have no completion); the host drops it', async () => {
    const { rd, wr, bus, host } = world();
    bus.write64(R, REG.DST_ADDR, 0x10n);
    wr(REG.SIZE, 16);
    wr(REG.COMMAND, CMD.DMA_WRITE);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(host.events).toEqual([{ kind: 'dma-fault', dir: 'write', iova: 0x10n, len: 16 }]);
  });

  it('while BUSY, command registers are traced and ignored; SCRATCH and STATUS clears still work', async () => {
    const { rd, wr, bus, host } = world();
    bus.write64(R, REG.SRC_ADDR, host.base);
    wr(REG.SIZE, 64);
    wr(REG.COMMAND, CMD.DMA_READ);
    for (const reg of [REG.COMMAND, REG.ARG, REG.IRQ_VECTOR, REG.SIZE]) wr(reg, 1);
    bus.write64(R, REG.SRC_ADDR, 0n);
    bus.write64(R, REG.DST_ADDR, 0n);
    wr(REG.SCRATCH, 9);
    wr(REG.STATUS, STATUS.BUSY);
    expect(rd(REG.STATUS)).toBe(STATUS.BUSY);
    expect(rd(REG.SIZE)).toBe(64);
    expect(rd(REG.IRQ_VECTOR)).toBe(IRQ_NONE);
    expect(bus.read64(R, REG.SRC_ADDR)).toBe(host.base);
    expect(rd(REG.SCRATCH)).toBe(9);
    expect(host.traces.map((t) => t.fields.reg)).toEqual([
      'COMMAND',
      'ARG',
      'IRQ_VECTOR',
      'SIZE',
      'SRC_ADDR',
      'DST_ADDR',
    ]);
    expect(host.traced('test.cmd.busy')).toBe(6);
    await bus.settle();
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(rd(REG.DONE_COUNT)).toBe(1);
  });

  it('STATUS: DONE and ERROR are write-1-to-clear, BUSY is read-only', () => {
    const { rd, wr } = world();
    wr(REG.COMMAND, 99);
    wr(REG.STATUS, STATUS.ERROR);
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    wr(REG.STATUS, 0xffffffff);
    expect(rd(REG.STATUS)).toBe(0);
  });

  it('IRQ_DOORBELL raises vector N at once; a bad N is traced; it is not stored', () => {
    const { rd, wr, dev, host } = world();
    wr(REG.IRQ_DOORBELL, 6);
    wr(REG.IRQ_DOORBELL, 8);
    expect(host.interrupts).toEqual([6]);
    expect(host.traced('test.doorbell.bad-vector')).toBe(1);
    expect(rd(REG.IRQ_DOORBELL)).toBe(0);
    expect(dev.takeDirty()).toEqual([]);
  });

  it('BAR2 is plain memory: CPU and string writes land and come back through the shadow', () => {
    const { bus, dev } = world();
    bus.write32(TEST_MEM_BAR, 0x100, 0xdeadbeef);
    const block = testPattern(9, 4096);
    dev.mmioWrite(TEST_MEM_BAR, TEST_MEM_BAR_SIZE - 4096, block);
    expect(dev.takeDirty().map((d) => [d.bar, d.offset, d.data.length])).toEqual([
      [TEST_MEM_BAR, TEST_MEM_BAR_SIZE - 4096, 4096],
    ]);
    bus.write(TEST_MEM_BAR, TEST_MEM_BAR_SIZE - 4096, block);
    expect(bus.read32(TEST_MEM_BAR, 0x100)).toBe(0xdeadbeef);
    expect(bus.read(TEST_MEM_BAR, TEST_MEM_BAR_SIZE - 4096, 4096)).toEqual(block);
  });

  it('tracks what changed: COMMAND+STATUS, ERROR, DONE_COUNT (never across the volatile COUNTER)', () => {
    const { dev } = world();
    dev.mmioWrite(R, REG.COMMAND, new Uint8Array([99, 0, 0, 0]));
    expect(dev.takeDirty().map((d) => [d.offset, d.data.length])).toEqual([
      [REG.COMMAND, 8],
      [REG.ERROR, 4],
      [REG.DONE_COUNT, 4],
    ]);
  });

  it('reset abandons a running command and returns registers to power-on values', async () => {
    const { rd, wr, bus, host, dev } = world();
    bus.write64(R, REG.SRC_ADDR, host.base);
    wr(REG.SIZE, 64);
    wr(REG.IRQ_VECTOR, 1);
    wr(REG.SCRATCH, 5);
    rd(REG.COUNTER);
    wr(REG.COMMAND, CMD.DMA_READ);
    dev.reset();
    await bus.settle();
    expect(host.interrupts).toEqual([]);
    expect(rd(REG.STATUS)).toBe(0);
    expect(rd(REG.SCRATCH)).toBe(0);
    expect(rd(REG.IRQ_VECTOR)).toBe(IRQ_NONE);
    expect(rd(REG.VECTORS)).toBe(8);
    expect(rd(REG.COUNTER)).toBe(1);
    // Not busy any more: a new command runs.
    wr(REG.ARG, 0);
    wr(REG.COMMAND, CMD.RAISE_MSIX);
    expect(host.interrupts).toEqual([0]);
  });

  it('RAISE_BURST raises ARG SIZE times back to back, then completes; bad SIZE or ARG fail', () => {
    const { rd, wr, host } = world();
    wr(REG.IRQ_VECTOR, 0);
    wr(REG.ARG, 3);
    wr(REG.SIZE, 500);
    wr(REG.COMMAND, CMD.RAISE_BURST);
    expect(rd(REG.STATUS)).toBe(STATUS.DONE);
    expect(host.interrupts).toEqual([...Array.from({ length: 500 }, () => 3), 0]);
    for (const [arg, size] of [
      [3, 0],
      [3, TEST_MAX_BURST + 1],
      [8, 1],
    ] as const) {
      wr(REG.STATUS, STATUS.DONE | STATUS.ERROR);
      wr(REG.ARG, arg);
      wr(REG.SIZE, size);
      wr(REG.COMMAND, CMD.RAISE_BURST);
      expect(rd(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
      expect(rd(REG.ERROR)).toBe(TEST_ERR.BAD_ARGUMENT);
    }
  });

  it('BAR 2 takes its size, width and prefetchability from the options (--device test:mem=…)', () => {
    const o = testDeviceSpec.options;
    const size = o.mem!.parse('16M') as number;
    const dev = testDeviceSpec.create(
      { mem: size, mem32: o.mem32!.parse('on'), prefetch: o.prefetch!.parse('on') },
      {} as never,
    ) as TestDevice;
    const bar = dev.description.bars.find((b) => b.index === TEST_MEM_BAR)!;
    expect(bar).toMatchObject({ kind: 'mem32', size: 16 << 20, prefetchable: true });
    expect(o.mem!.parse('256M')).toBe(256 << 20);
    // BAR 2's register: 32-bit (type 00), prefetchable (bit 3).
    const cfg = dev.description.config!;
    expect(cfg[0x18]! & 0xf).toBe(0x8);
    const bus = new FakeBus(dev, new FakeHost());
    bus.write32(TEST_MEM_BAR, size - 4, 0x600dcafe);
    expect(bus.read32(TEST_MEM_BAR, size - 4)).toBe(0x600dcafe);
    expect(new TestDevice().description.bars.find((b) => b.index === TEST_MEM_BAR)).toMatchObject({
      kind: 'mem64',
      size: TEST_MEM_BAR_SIZE,
      prefetchable: false,
    });
    expect(() => testDeviceSpec.options.mem!.parse('3M')).toThrow('power of two from 4K to 256M');
    expect(() => testDeviceSpec.options.mem!.parse('512M')).toThrow('power of two');
    expect(() => new TestDevice({ memSize: 1000 })).toThrow(RangeError);
  });

  it('counts commands and failures', () => {
    const { wr, dev } = world();
    wr(REG.COMMAND, 99);
    wr(REG.ARG, 0);
    wr(REG.COMMAND, CMD.RAISE_MSIX);
    expect(dev.counters()).toEqual({ commands: 2, commandFailures: 1 });
  });
});
