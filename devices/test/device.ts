// pcinet test device: the conformance device of devices/test/regs.ts (documented in docs/devices.md),
// in the spirit of Linux's pci-epf-test. BAR 0 holds registers and the host-owned MSI-X table and
// PBA; BAR 2 is plain memory. Commands exercise every path of the protocol: interrupts, DMA reads
// (checksummed), DMA writes (a known pattern), volatile reads (COUNTER) and doorbells; the DMA
// commands' _COPY variants move the same bytes without computing over them (for benches).
//
// Command semantics chosen here (the register comments in regs.ts are the contract):
// - Writing a CMD_* value to COMMAND starts it: STATUS becomes BUSY, ERROR 0. Writing 0 starts
//   nothing (drivers may clear the register). On completion STATUS is DONE, plus ERROR when it
//   failed (ERROR then holds a TEST_ERR code), DONE_COUNT counts it, and IRQ_VECTOR fires unless it
//   is IRQ_NONE. A command completes in the same host batch unless it does DMA.
// - While BUSY, writes to COMMAND and its arguments are traced (test.cmd.busy) and ignored.
// - Bad arguments fail the command with BAD_ARGUMENT and a trace, never an exception.
// - COUNTER increments on every read; a read returns the new value (the first read gives 1).
import { crc32 } from 'node:zlib';
import { DmaError } from '../host-port.js';
import {
  msixCap,
  PciDevice,
  pciConfig,
  pcieCap,
  pmCap,
  type RegisterTable,
  registers,
} from '../pci/index.js';
import { deviceSpec, intOption, type OptionParser, parseSize, switchOption } from '../spec.js';
import {
  CMD,
  IRQ_NONE,
  REG,
  STATUS,
  TEST_CLASS_CODE,
  TEST_DEFAULT_VECTORS,
  TEST_DEVICE_ID,
  TEST_ERR,
  TEST_MAGIC,
  TEST_MAX_BURST,
  TEST_MAX_DMA,
  TEST_MAX_MEM_BAR_SIZE,
  TEST_MAX_VECTORS,
  TEST_MEM_BAR,
  TEST_MEM_BAR_SIZE,
  TEST_MSIX_PBA,
  TEST_MSIX_TABLE,
  TEST_REG_BAR,
  TEST_REG_BAR_SIZE,
  TEST_REVISION,
  TEST_VENDOR_ID,
  TEST_VERSION,
  type TestErr,
  testPattern,
} from './regs.js';

/** Bytes of a DMA_WRITE handed to the port between drain() waits: small enough that a 4 MiB
 *  command does not queue 4 MiB at once, large enough to be one full protocol chunk. */
const DMA_WRITE_BURST = 256 << 10;

export interface TestDeviceOptions {
  /** MSI-X vectors, 1..64; default 8. */
  vectors?: number;
  /** BAR 2's size: a power of two, 4 KiB..256 MiB; default 64 KiB. */
  memSize?: number;
  /** BAR 2 is a 32-bit BAR (default 64-bit). */
  mem32?: boolean;
  /** BAR 2 is prefetchable (default not). */
  prefetch?: boolean;
}

/** What testConfig() lays out for BAR 2. */
export interface TestMemBar {
  size: number;
  kind: 'mem32' | 'mem64';
  prefetchable: boolean;
}

const DEFAULT_MEM_BAR: TestMemBar = { size: TEST_MEM_BAR_SIZE, kind: 'mem64', prefetchable: false };

const idle = (c: TestDevice, name: string) => c.idle(name);

export const bar0: RegisterTable<TestDevice> = registers<TestDevice>([
  { name: 'MAGIC', at: REG.MAGIC, size: 4, access: 'ro', reset: TEST_MAGIC },
  { name: 'VERSION', at: REG.VERSION, size: 4, access: 'ro', reset: TEST_VERSION },
  { name: 'SCRATCH', at: REG.SCRATCH, size: 4, access: 'rw' },
  { name: 'COMMAND', at: REG.COMMAND, size: 4, access: 'rw', guard: idle, onWrite: (c, v) => c.command(v) },
  { name: 'STATUS', at: REG.STATUS, size: 4, access: 'rw1c', mask: STATUS.DONE | STATUS.ERROR },
  { name: 'ARG', at: REG.ARG, size: 4, access: 'rw', guard: idle },
  { name: 'IRQ_VECTOR', at: REG.IRQ_VECTOR, size: 4, access: 'rw', reset: IRQ_NONE, guard: idle },
  { name: 'SRC_ADDR', at: REG.SRC_ADDR, size: 8, access: 'rw', guard: idle },
  { name: 'DST_ADDR', at: REG.DST_ADDR, size: 8, access: 'rw', guard: idle },
  { name: 'SIZE', at: REG.SIZE, size: 4, access: 'rw', guard: idle },
  { name: 'CHECKSUM', at: REG.CHECKSUM, size: 4, access: 'ro' },
  { name: 'ERROR', at: REG.ERROR, size: 4, access: 'ro' },
  { name: 'VECTORS', at: REG.VECTORS, size: 4, access: 'ro' },
  {
    name: 'COUNTER',
    at: REG.COUNTER,
    size: 4,
    access: 'ro',
    volatile: true,
    onRead: (_c, n) => (n + 1) >>> 0,
  },
  {
    name: 'IRQ_DOORBELL',
    at: REG.IRQ_DOORBELL,
    size: 4,
    access: 'wo',
    doorbell: true,
    onWrite: (c, v) => c.doorbell(v),
  },
  { name: 'DONE_COUNT', at: REG.DONE_COUNT, size: 4, access: 'ro' },
]);

export function testConfig(vectors: number, mem: TestMemBar = DEFAULT_MEM_BAR) {
  return pciConfig({
    vendorId: TEST_VENDOR_ID,
    deviceId: TEST_DEVICE_ID,
    classCode: TEST_CLASS_CODE,
    revision: TEST_REVISION,
    bars: [
      { index: TEST_REG_BAR, kind: 'mem64', size: TEST_REG_BAR_SIZE },
      { index: TEST_MEM_BAR, kind: mem.kind, size: mem.size, prefetchable: mem.prefetchable },
    ],
    caps: [
      pcieCap({ type: 'endpoint' }),
      msixCap({ vectors, bar: TEST_REG_BAR, table: TEST_MSIX_TABLE, pba: TEST_MSIX_PBA }),
      pmCap(),
    ],
  });
}

export class TestDevice extends PciDevice<TestDevice> {
  readonly vectors: number;
  /** Bumped by every reset: async work of an older epoch is abandoned. */
  #epoch = 0;
  #busy = false;
  #reads?: { epoch: number; bytes: Uint8Array };
  /** Completion vector of the running command. */
  #irq = IRQ_NONE;
  #commands = 0;
  #failures = 0;
  /** DMA_WRITE_COPY's pattern (#keptPattern). */
  #pattern: { seed: number; bytes: Uint8Array } | undefined;

  constructor(o: TestDeviceOptions = {}) {
    const vectors = o.vectors ?? TEST_DEFAULT_VECTORS;
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > TEST_MAX_VECTORS) {
      throw new RangeError(`test device: vectors must be 1..${TEST_MAX_VECTORS}, got ${vectors}`);
    }
    const mem: TestMemBar = {
      size: o.memSize ?? TEST_MEM_BAR_SIZE,
      kind: o.mem32 ? 'mem32' : 'mem64',
      prefetchable: o.prefetch ?? false,
    };
    if (!isBarSize(mem.size)) {
      throw new RangeError(`test device: BAR 2 must be a power of two of 4K..256M bytes, got ${mem.size}`);
    }
    super({
      model: 'test',
      config: testConfig(vectors, mem),
      bars: [
        { index: TEST_REG_BAR, registers: bar0, reset: { VECTORS: vectors } },
        { index: TEST_MEM_BAR, memory: [{ offset: 0, length: mem.size }] },
      ],
    });
    this.vectors = vectors;
  }

  get #regs() {
    return this.bar(TEST_REG_BAR);
  }

  protected override onReset(): void {
    this.#epoch++;
    this.#busy = false;
    this.#irq = IRQ_NONE;
  }

  override counters(): Record<string, number> {
    return { commands: this.#commands, commandFailures: this.#failures };
  }

  // Register hooks (called from bar0's declarations).

  /** Guard of the command registers: they hold still while a command runs. */
  idle(reg: string): boolean {
    if (this.#busy) this.trace('test.cmd.busy', { reg });
    return !this.#busy;
  }

  doorbell(vector: number): void {
    if (vector >= this.vectors) {
      this.trace('test.doorbell.bad-vector', { vector, vectors: this.vectors });
      return;
    }
    this.host.raiseMsix(vector);
  }

  command(cmd: number): void {
    if (cmd === 0) return;
    const r = this.#regs;
    this.#commands++;
    this.#busy = true;
    r.set32(REG.STATUS, STATUS.BUSY);
    r.set32(REG.ERROR, TEST_ERR.OK);
    this.#irq = IRQ_NONE;
    const irq = r.u32(REG.IRQ_VECTOR);
    if (irq !== IRQ_NONE && irq >= this.vectors) {
      this.#fail(TEST_ERR.BAD_ARGUMENT, 'test.cmd.bad-irq-vector', { vector: irq, vectors: this.vectors });
      return;
    }
    this.#irq = irq;
    switch (cmd) {
      case CMD.RAISE_MSIX: {
        const vector = r.u32(REG.ARG);
        if (vector >= this.vectors) {
          this.#fail(TEST_ERR.BAD_ARGUMENT, 'test.cmd.bad-vector', { vector, vectors: this.vectors });
          return;
        }
        this.host.raiseMsix(vector);
        this.#complete(TEST_ERR.OK);
        return;
      }
      case CMD.RAISE_BURST: {
        const vector = r.u32(REG.ARG);
        const count = r.u32(REG.SIZE);
        if (vector >= this.vectors) {
          this.#fail(TEST_ERR.BAD_ARGUMENT, 'test.cmd.bad-vector', { vector, vectors: this.vectors });
          return;
        }
        if (count < 1 || count > TEST_MAX_BURST) {
          this.#fail(TEST_ERR.BAD_ARGUMENT, 'test.cmd.bad-size', { size: count, max: TEST_MAX_BURST });
          return;
        }
        // All in one host batch: the raises reach the host back to back.
        for (let i = 0; i < count; i++) this.host.raiseMsix(vector);
        this.#complete(TEST_ERR.OK);
        return;
      }
      case CMD.DMA_READ:
      case CMD.DMA_READ_COPY:
      case CMD.DMA_WRITE:
      case CMD.DMA_WRITE_COPY: {
        const size = r.u32(REG.SIZE);
        if (size < 1 || size > TEST_MAX_DMA) {
          this.#fail(TEST_ERR.BAD_ARGUMENT, 'test.cmd.bad-size', { size, max: TEST_MAX_DMA });
          return;
        }
        const seed = r.u32(REG.ARG);
        if (cmd === CMD.DMA_READ || cmd === CMD.DMA_READ_COPY)
          void this.#dmaRead(this.#epoch, r.u64(REG.SRC_ADDR), size, cmd === CMD.DMA_READ);
        else if (cmd === CMD.DMA_WRITE)
          void this.#dmaWrite(this.#epoch, r.u64(REG.DST_ADDR), testPattern(seed, size));
        else void this.#dmaWrite(this.#epoch, r.u64(REG.DST_ADDR), this.#keptPattern(seed, size));
        return;
      }
      default:
        this.#fail(TEST_ERR.BAD_ARGUMENT, 'test.cmd.unknown', { cmd });
    }
  }

  /** `checksum`: DMA_READ's CRC into CHECKSUM; DMA_READ_COPY computes nothing over the bytes and
   *  reads into the device's own buffer, as a device with its own memory would. */
  async #dmaRead(epoch: number, src: bigint, size: number, checksum: boolean): Promise<void> {
    let data: Uint8Array;
    try {
      data = await this.host.dmaRead(src, size, checksum ? undefined : this.#readBuffer(epoch));
    } catch (e) {
      if (epoch !== this.#epoch) return;
      if (!(e instanceof DmaError)) throw e;
      this.#fail(TEST_ERR.DMA_FAULT, 'test.dma.read-fault', {
        iova: `0x${e.iova.toString(16)}`,
        fault: e.fault,
      });
      return;
    }
    if (epoch !== this.#epoch) return;
    if (checksum) this.#regs.set32(REG.CHECKSUM, crc32(data));
    this.#complete(TEST_ERR.OK);
  }

  /** DMA_READ_COPY's destination, kept while the device runs one command at a time; a reset gets
   *  a new one, since a read of the old epoch may still be landing in the old. */
  #readBuffer(epoch: number): Uint8Array {
    if (this.#reads?.epoch !== epoch) this.#reads = { epoch, bytes: new Uint8Array(TEST_MAX_DMA) };
    return this.#reads.bytes;
  }

  /** DMA_WRITE_COPY's bytes: testPattern(seed, size), cut from the whole pattern of the last seed
   *  asked for (a pattern's first bytes do not depend on its length), made only when the seed
   *  changes. Never modified once made: a new seed gets a new buffer, so the old one may still be
   *  referenced by writes handed over earlier. */
  #keptPattern(seed: number, size: number): Uint8Array {
    if (this.#pattern?.seed !== seed) this.#pattern = { seed, bytes: testPattern(seed, TEST_MAX_DMA) };
    return this.#pattern.bytes.subarray(0, size);
  }

  /** Posted writes: the host drops refused ones, so a DMA_WRITE always completes OK (the driver
   *  checks its buffer). Interrupt ordering after the data is the port's job. */
  async #dmaWrite(epoch: number, dst: bigint, data: Uint8Array): Promise<void> {
    const size = data.length;
    for (let off = 0; off < size; off += DMA_WRITE_BURST) {
      // The pattern (made for this command, or kept by #keptPattern) is never modified: handed over.
      this.host.dmaWrite(
        BigInt.asUintN(64, dst + BigInt(off)),
        data.subarray(off, off + DMA_WRITE_BURST),
        true,
      );
      await this.host.drain();
      if (epoch !== this.#epoch) return;
    }
    this.#complete(TEST_ERR.OK);
  }

  #fail(code: TestErr, event: string, fields: Record<string, unknown>): void {
    this.trace(event, fields);
    this.#complete(code);
  }

  #complete(code: TestErr): void {
    const r = this.#regs;
    if (code !== TEST_ERR.OK) this.#failures++;
    r.set32(REG.ERROR, code);
    r.set32(REG.STATUS, STATUS.DONE | (code === TEST_ERR.OK ? 0 : STATUS.ERROR));
    r.set32(REG.DONE_COUNT, (r.u32(REG.DONE_COUNT) + 1) >>> 0);
    this.#busy = false;
    if (this.#irq !== IRQ_NONE) this.host.raiseMsix(this.#irq);
  }
}

const isBarSize = (n: number) =>
  Number.isSafeInteger(n) && n >= 4096 && n <= TEST_MAX_MEM_BAR_SIZE && (n & (n - 1)) === 0;

/** BAR 2's size: SIZE with K/M suffixes, a power of two from 4K to 256M. */
const memSizeOption: OptionParser<number> = {
  syntax: 'SIZE',
  help: 'BAR 2 (plain memory) size, a power of two 4K..256M (default 64K)',
  parse(value) {
    const n = parseSize(value);
    if (!isBarSize(n)) throw new Error('must be a power of two from 4K to 256M');
    return n;
  },
};

export const testDeviceSpec = deviceSpec({
  name: 'test',
  summary: 'the conformance device (docs/devices.md): registers, MSI-X, DMA, volatile reads, doorbells',
  options: {
    vectors: intOption(1, TEST_MAX_VECTORS, `MSI-X vectors (default ${TEST_DEFAULT_VECTORS})`),
    mem: memSizeOption,
    mem32: switchOption('BAR 2 is a 32-bit BAR (default off: 64-bit)'),
    prefetch: switchOption('BAR 2 is prefetchable (default off)'),
  },
  create: (o) => new TestDevice({ vectors: o.vectors, memSize: o.mem, mem32: o.mem32, prefetch: o.prefetch }),
});
