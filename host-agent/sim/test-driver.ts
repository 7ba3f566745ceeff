// A driver for the test device (docs/devices.md) on the simulated root complex, and the selftest
// `pcinet host --channel sim --selftest` runs. It drives the device only through its registers,
// config space, MSI-X and host memory mapped through the IOMMU — what test/kmod/ (pcinet_test.ko)
// does in a real kernel — so a passing selftest means the endpoint, the session and the relay
// carried every kind of traffic correctly.
import { crc32 } from 'node:zlib';
import { PCI_MSIX_ENTRY_SIZE, PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE } from '../../devices/pci/caps.js';
import {
  PCI_CAP_ID_MSIX,
  PCI_CLASS_PROG,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_DEVICE_ID,
  PCI_VENDOR_ID,
  walkCaps,
} from '../../devices/pci/config.js';
import {
  CMD,
  IRQ_NONE,
  REG,
  STATUS,
  TEST_CLASS_CODE,
  TEST_DEVICE_ID,
  TEST_MAGIC,
  TEST_MEM_BAR,
  TEST_MSIX_TABLE,
  TEST_REG_BAR,
  TEST_VENDOR_ID,
  testPattern,
} from '../../devices/test/regs.js';
import { ErrorCode } from '../../proto/wire.js';
import type { SimFunction } from './function.js';
import type { DmaDirection, SimMemory, SoftIommu } from './iommu.js';

/** How long the driver waits for an interrupt or a command. */
export const WAIT_MS = 10_000;

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

const hex = (v: number | bigint) => `0x${v.toString(16)}`;

export class TestDriver {
  readonly fn: SimFunction;
  readonly #memory: SimMemory;
  readonly #iommu: SoftIommu;
  readonly irqCounts: number[];
  #waiters: { vector: number; count: number; resolve(): void }[] = [];

  constructor(fn: SimFunction, memory: SimMemory, iommu: SoftIommu) {
    if (fn.model !== 'test') throw new Error(`${fn.address}: not a test device (${fn.model})`);
    this.fn = fn;
    this.#memory = memory;
    this.#iommu = iommu;
    this.irqCounts = new Array(fn.vectors).fill(0);
    fn.onInterrupt = (v) => {
      this.irqCounts[v]++;
      const ready = this.#waiters.filter((w) => w.vector === v && this.irqCounts[v] >= w.count);
      this.#waiters = this.#waiters.filter((w) => !ready.includes(w));
      for (const w of ready) w.resolve();
    };
    fn.onRemove = () => {
      for (const w of this.#waiters) w.resolve();
      this.#waiters = [];
    };
  }

  /** Probe: IDs, memory decoding and bus mastering, MSI-X enabled with every vector unmasked. */
  probe(): void {
    const f = this.fn;
    const vendor = f.configRead(PCI_VENDOR_ID, 2);
    const device = f.configRead(PCI_DEVICE_ID, 2);
    const cls = f.configRead(PCI_CLASS_PROG - 1, 4) >>> 8;
    if (vendor !== TEST_VENDOR_ID || device !== TEST_DEVICE_ID || cls !== TEST_CLASS_CODE) {
      throw new Error(
        `${f.address}: IDs ${hex(vendor)}:${hex(device)} class ${hex(cls)} are not the test device's`,
      );
    }
    f.configWrite(PCI_COMMAND, 2, f.configRead(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const cap = walkCaps(f.config).find((c) => c.id === PCI_CAP_ID_MSIX);
    if (!cap) throw new Error(`${f.address}: no MSI-X capability`);
    for (let v = 0; v < f.vectors; v++) this.setMask(v, false);
    f.configWrite(
      cap.offset + PCI_MSIX_FLAGS,
      2,
      f.configRead(cap.offset + PCI_MSIX_FLAGS, 2) | PCI_MSIX_FLAGS_ENABLE,
    );
  }

  /** Sets or clears the mask bit in MSI-X table entry `v` (address/data are the sim's: the vector). */
  setMask(v: number, masked: boolean): void {
    const at = TEST_MSIX_TABLE + v * PCI_MSIX_ENTRY_SIZE;
    this.fn.write32(TEST_REG_BAR, at, 0xfee0_0000);
    this.fn.write32(TEST_REG_BAR, at + 4, 0);
    this.fn.write32(TEST_REG_BAR, at + 8, v);
    this.fn.write32(TEST_REG_BAR, at + 12, masked ? 1 : 0);
  }

  /** Resolves when vector `v` has fired `count` times in all; rejects after WAIT_MS. */
  waitIrq(v: number, count: number, what: string): Promise<void> {
    if (this.irqCounts[v] >= count) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const w = {
        vector: v,
        count,
        resolve: () => {
          clearTimeout(timer);
          if (this.fn.removed) reject(new Error(`${what}: the device was removed`));
          else resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((x) => x !== w);
        reject(new Error(`${what}: vector ${v} did not fire within ${WAIT_MS} ms`));
      }, WAIT_MS);
      this.#waiters.push(w);
    });
  }

  /** Runs a command that completes with vector `irq`; resolves with STATUS and ERROR. */
  async command(cmd: number, irq: number, setup: () => void): Promise<{ status: number; error: number }> {
    const f = this.fn;
    const before = this.irqCounts[irq];
    f.write32(TEST_REG_BAR, REG.STATUS, STATUS.DONE | STATUS.ERROR);
    f.write32(TEST_REG_BAR, REG.IRQ_VECTOR, irq);
    setup();
    f.write32(TEST_REG_BAR, REG.COMMAND, cmd);
    await this.waitIrq(irq, before + 1, `command ${cmd}`);
    return {
      status: await f.read32(TEST_REG_BAR, REG.STATUS),
      error: await f.read32(TEST_REG_BAR, REG.ERROR),
    };
  }

  #buffer(len: number, dir: DmaDirection) {
    const buf = this.#memory.alloc(len);
    const iova = this.#iommu.map(buf, dir);
    return {
      buf,
      iova,
      release: () => {
        this.#iommu.unmap(iova);
        this.#memory.free(buf);
      },
    };
  }

  /** DMA_READ of `size` bytes of a pattern; returns whether the device's CRC matches. */
  async dmaRead(size: number, seed: number, irq = 0): Promise<Check> {
    const b = this.#buffer(size, 'to-device');
    try {
      b.buf.bytes.set(testPattern(seed, size));
      const { status, error } = await this.command(CMD.DMA_READ, irq, () => {
        this.fn.write64(TEST_REG_BAR, REG.SRC_ADDR, b.iova);
        this.fn.write32(TEST_REG_BAR, REG.SIZE, size);
      });
      const want = crc32(b.buf.bytes) >>> 0;
      const got = await this.fn.read32(TEST_REG_BAR, REG.CHECKSUM);
      const ok = status === STATUS.DONE && error === 0 && got === want;
      return {
        name: `dma.read ${size}`,
        ok,
        detail: `status ${hex(status)} error ${error} crc ${hex(got)} want ${hex(want)}`,
      };
    } finally {
      b.release();
    }
  }

  /** DMA_WRITE of `size` bytes; returns whether host memory holds the pattern. */
  async dmaWrite(size: number, seed: number, irq = 0): Promise<Check> {
    const b = this.#buffer(size, 'from-device');
    try {
      const { status, error } = await this.command(CMD.DMA_WRITE, irq, () => {
        this.fn.write64(TEST_REG_BAR, REG.DST_ADDR, b.iova);
        this.fn.write32(TEST_REG_BAR, REG.SIZE, size);
        this.fn.write32(TEST_REG_BAR, REG.ARG, seed);
      });
      const want = testPattern(seed, size);
      const diff = b.buf.bytes.findIndex((x, i) => x !== want[i]);
      const ok = status === STATUS.DONE && error === 0 && diff < 0;
      return {
        name: `dma.write ${size}`,
        ok,
        detail: `status ${hex(status)} error ${error}${diff < 0 ? '' : ` first difference at ${diff}`}`,
      };
    } finally {
      b.release();
    }
  }

  /** Every check of the selftest, in order; stops early only if the device goes away. */
  async selftest(): Promise<Check[]> {
    const f = this.fn;
    const checks: Check[] = [];
    const check = async (name: string, body: () => Promise<[boolean, string]>) => {
      try {
        const [ok, detail] = await body();
        checks.push({ name, ok, detail });
      } catch (e) {
        checks.push({ name, ok: false, detail: (e as Error).message });
      }
    };

    await check('mmio.shadow-read', async () => {
      const magic = await f.read32(TEST_REG_BAR, REG.MAGIC);
      const vectors = await f.read32(TEST_REG_BAR, REG.VECTORS);
      return [magic === TEST_MAGIC && vectors === f.vectors, `MAGIC ${hex(magic)} VECTORS ${vectors}`];
    });
    await check('mmio.read-after-write', async () => {
      const values = [0x12345678, 0xdeadbeef, 0, 0xffffffff, 0x0badf00d];
      for (const v of values) {
        f.write32(TEST_REG_BAR, REG.SCRATCH, v);
        const got = await f.read32(TEST_REG_BAR, REG.SCRATCH);
        if (got !== v >>> 0) return [false, `wrote ${hex(v)}, read ${hex(got)}`];
      }
      return [true, `${values.length} values`];
    });
    await check('mmio.volatile-read', async () => {
      const a = await f.read32(TEST_REG_BAR, REG.COUNTER);
      const b = await f.read32(TEST_REG_BAR, REG.COUNTER);
      const c = await f.read32(TEST_REG_BAR, REG.COUNTER);
      return [b === a + 1 && c === b + 1, `COUNTER ${a}, ${b}, ${c}`];
    });
    await check('mmio.memory-bar', async () => {
      const data = testPattern(7, 256);
      f.write(TEST_MEM_BAR, 0x100, data);
      for (let i = 0; i < data.length; i += 8) {
        const got = await f.read(TEST_MEM_BAR, 0x100 + i, 8);
        if (got.some((x, j) => x !== data[i + j])) return [false, `mismatch at ${0x100 + i}`];
      }
      return [true, '256 bytes, 8-byte reads'];
    });
    await check('msix.every-vector', async () => {
      for (let v = 0; v < f.vectors; v++) {
        const before = this.irqCounts[v];
        f.write32(TEST_REG_BAR, REG.IRQ_DOORBELL, v);
        await this.waitIrq(v, before + 1, `doorbell ${v}`);
      }
      // Exactly once each: give stray duplicates a moment to show up.
      const snapshot = this.irqCounts.slice();
      for (let v = 0; v < f.vectors; v++) f.write32(TEST_REG_BAR, REG.IRQ_DOORBELL, v);
      for (let v = 0; v < f.vectors; v++) await this.waitIrq(v, snapshot[v] + 1, `doorbell ${v} again`);
      await f.read32(TEST_REG_BAR, REG.MAGIC);
      const extra = this.irqCounts.findIndex((n, v) => n !== snapshot[v] + 1);
      return [
        extra < 0,
        extra < 0
          ? `${f.vectors} vectors, each fired once per raise`
          : `vector ${extra} fired ${this.irqCounts[extra] - snapshot[extra]} times`,
      ];
    });
    await check('msix.masked-then-unmasked', async () => {
      const v = f.vectors - 1;
      const before = this.irqCounts[v];
      this.setMask(v, true);
      f.write32(TEST_REG_BAR, REG.IRQ_DOORBELL, v);
      // A volatile read is a round trip: the doorbell's interrupt, if any, has arrived after it.
      await f.read32(TEST_REG_BAR, REG.COUNTER);
      const held = this.irqCounts[v] === before && f.pending(v);
      this.setMask(v, false);
      await this.waitIrq(v, before + 1, 'unmask');
      return [held && this.irqCounts[v] === before + 1 && !f.pending(v), `held while masked: ${held}`];
    });
    await check('msix.command-completion', async () => {
      const { status, error } = await this.command(CMD.RAISE_MSIX, 0, () =>
        f.write32(TEST_REG_BAR, REG.ARG, 1 % f.vectors),
      );
      return [status === STATUS.DONE && error === 0, `status ${hex(status)} error ${error}`];
    });
    for (const [size, seed] of [
      [1, 1],
      [4093, 2],
      [1 << 20, 3],
      [(4 << 20) - 3, 4],
    ] as const) {
      await check(`dma.read ${size}`, async () => {
        const c = await this.dmaRead(size, seed);
        return [c.ok, c.detail];
      });
      await check(`dma.write ${size}`, async () => {
        const c = await this.dmaWrite(size, seed);
        return [c.ok, c.detail];
      });
    }
    await check('dma.outside-mapping-refused', async () => {
      const b = this.#buffer(4096, 'to-device');
      b.release(); // the IOVA is now stale
      const { status, error } = await this.command(CMD.DMA_READ, 0, () => {
        f.write64(TEST_REG_BAR, REG.SRC_ADDR, b.iova);
        f.write32(TEST_REG_BAR, REG.SIZE, 4096);
      });
      return [
        status === (STATUS.DONE | STATUS.ERROR) && error === ErrorCode.DMA_FAULT,
        `status ${hex(status)} error ${error}`,
      ];
    });
    await check('dma.wrong-direction-refused', async () => {
      const b = this.#buffer(4096, 'from-device');
      try {
        const { status, error } = await this.command(CMD.DMA_READ, 0, () => {
          f.write64(TEST_REG_BAR, REG.SRC_ADDR, b.iova);
          f.write32(TEST_REG_BAR, REG.SIZE, 4096);
        });
        return [
          status === (STATUS.DONE | STATUS.ERROR) && error === ErrorCode.DMA_FAULT,
          `status ${hex(status)} error ${error}`,
        ];
      } finally {
        b.release();
      }
    });
    f.write32(TEST_REG_BAR, REG.IRQ_VECTOR, IRQ_NONE);
    return checks;
  }
}
