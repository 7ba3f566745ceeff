// SimFunction: one PCI function on the simulated root complex, built from nothing but the
// endpoint's DeviceDescription — the software twin of what pcinet.ko does for a real bus:
//
// - config space from the image with the write masks applied, BAR sizing, and the writes the device
//   must know about forwarded as ConfigWrite (every write but BARs and ROM, as the module does);
// - BAR reads served from a shadow the endpoint keeps current (ShadowUpdate), after WritesApplied
//   has caught up with the writes sent before the read (read-your-writes); volatile ranges read
//   synchronously from the device (MmioRead / MmioReadCpl);
// - the MSI-X table and PBA kept here, with per-vector and function masks and pending bits;
// - DMA through the software IOMMU, refused unless bus mastering is on and a live mapping allows it;
//   a DmaWrite's data may be read straight into host memory (placeDmaWrite) when the write would be
//   allowed then, its place cancelled when it no longer would (unmap, bus mastering off, removal);
// - push rules (docs/PUSH.md, host-agent/sim/push.ts): a driver write to a rule's doorbell is
//   preceded by Push messages carrying what the device is about to read, and unmapping a mapping
//   pushed from sends PushDrop.
//
// Driver mistakes (accesses outside a BAR, bad sizes) throw RangeError: the sim's drivers are ours,
// so a mistake is a bug in a test. Endpoint mistakes throw ProtocolError: the relay closes the
// session with its code.
import assert from 'node:assert/strict';
import type { Logger } from 'pino';
import {
  PCI_EXP_DEVCTL,
  PCI_EXP_DEVCTL_BCR_FLR,
  PCI_MSIX_ENTRY_SIZE,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_MSIX_PBA,
  PCI_MSIX_TABLE,
} from '../../devices/pci/caps.js';
import {
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_EXP,
  PCI_CAP_ID_MSIX,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_ROM_ADDRESS,
  walkCaps,
} from '../../devices/pci/config.js';
import { leBytes, rd16, rd32, rdN, wrN } from '../../devices/pci/le.js';
import { MAX_PUSH_RULES, type PushRule } from '../../devices/push.js';
import { virtqRound } from '../../devices/virtio/virtqueue.js';
import {
  type DeviceDescription,
  ErrorCode,
  long,
  MAX_DMA_CHUNK,
  type Msg,
  num,
  ProtocolError,
  pcinet,
  u64,
} from '../../proto/wire.js';
import type { ChannelDevice, DeviceSink } from '../channel.js';
import { checkPushRule } from '../push-rule.js';
import { newSimCounters, type SimCounters } from './counters.js';
import type { PushWatcher, SoftIommu } from './iommu.js';
import { type Peek, PushRules, type SqPort } from './push.js';

/** How long a read waits for the device (volatile completion, or the write fence). Like a PCIe
 *  completion timeout: the read then returns all-ones. */
export const READ_TIMEOUT_MS = 2000;

interface Span {
  offset: number;
  length: number;
}

interface SimBar {
  index: number;
  size: number;
  kind: pcinet.BarKind;
  prefetchable: boolean;
  shadow: Uint8Array;
  volatile: Span[];
  doorbell: Span[];
  /** Address the sim assigned (what the BAR register holds). */
  address: bigint;
}

const inside = (spans: readonly Span[], off: number, len: number) =>
  spans.some((s) => off >= s.offset && off + len <= s.offset + s.length);
const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
const bad = (why: string): never => {
  throw new ProtocolError(ErrorCode.BAD_CONFIG, why);
};

export type { SimCounters };

export class SimFunction implements ChannelDevice {
  readonly address: string;
  readonly dev: number;
  readonly model: string;
  readonly config: Uint8Array;
  readonly counters: SimCounters = newSimCounters();
  /** The driver's interrupt handler; called once per delivered interrupt. */
  onInterrupt: (vector: number) => void = () => {};
  /** Called when the device goes away (detach, session loss). */
  onRemove: (reason: ErrorCode) => void = () => {};

  readonly #wmask: Uint8Array;
  readonly #w1c: Uint8Array;
  readonly #bars = new Map<number, SimBar>();
  readonly #sink: DeviceSink;
  readonly #iommu: SoftIommu;
  readonly #log: Logger;
  /** BAR sizing: a BAR register the driver wrote all-ones to reads back its size mask. */
  readonly #sizing = new Set<number>();
  readonly #vectors: number;
  #msixCap = 0;
  #msixBar = -1;
  #table: Span = { offset: 0, length: 0 };
  #pba: Span = { offset: 0, length: 0 };
  readonly #msix: Uint8Array;
  readonly #pending: Uint8Array;
  #pcieCap = 0;

  #writesSent = 0;
  #writesApplied = 0;
  #fences: { count: number; done(gone: boolean): void }[] = [];
  #nextTag = 1;
  readonly #reads = new Map<number, { size: number; resolve(d: Uint8Array): void }>();
  #removed = false;
  /** What the endpoint said about the device: push rules are checked against it. */
  readonly #desc: DeviceDescription;
  readonly #rules = new PushRules();
  readonly #peek: Peek = (iova, len) => this.#iommu.peek(iova, len);
  /** The place given for a DmaWrite's data and not applied yet: one at a time (a session places
   *  one frame at a time; a place whose frame never came, its connection gone, is given up when
   *  the next is asked for). `cancel` is what the IOMMU calls on unmap. */
  #placed: { data: Uint8Array; cancel: () => void } | undefined;
  /** Registered with the IOMMU for each mapping this function pushed from. */
  readonly #pushDropped: PushWatcher = (iova, length) => {
    this.counters.pushDrops++;
    this.#sink({ pushDrop: { dev: this.dev, iova: long(iova), length: long(length) } });
  };

  constructor(
    dev: number,
    desc: DeviceDescription,
    address: string,
    sink: DeviceSink,
    iommu: SoftIommu,
    log: Logger,
    /** Where BAR addresses start (each function gets its own window). */
    window: bigint,
  ) {
    this.dev = dev;
    this.address = address;
    this.model = desc.model ?? '';
    this.#desc = desc;
    this.#sink = sink;
    this.#iommu = iommu;
    this.#log = log;
    const cfg = desc.config ?? new Uint8Array(0);
    if (cfg.length !== 256 && cfg.length !== 4096)
      bad(`config space of ${cfg.length} bytes (want 256 or 4096)`);
    if (desc.configWmask?.length !== cfg.length || desc.configW1cmask?.length !== cfg.length) {
      bad('config write masks are not the size of config space');
    }
    this.config = cfg.slice();
    this.#wmask = desc.configWmask!.slice();
    this.#w1c = desc.configW1cmask!.slice();

    let next = window;
    for (const b of desc.bars ?? []) {
      const index = b.index ?? 0;
      const size = num(b.size, 'BAR size');
      const kind = b.kind ?? pcinet.BarKind.BAR_NONE;
      if (index > 5 || this.#bars.has(index)) bad(`BAR ${index} is out of range or given twice`);
      if (kind !== pcinet.BarKind.BAR_MEM32 && kind !== pcinet.BarKind.BAR_MEM64) {
        bad(`BAR ${index}: only memory BARs are supported (kind ${kind})`);
      }
      if (kind === pcinet.BarKind.BAR_MEM64 && index === 5) bad('BAR 5 cannot be 64-bit');
      if (!isPow2(size) || size < 16 || size > 1 << 30)
        bad(`BAR ${index}: size ${size} is not a power of two in 16..1 GiB`);
      const span = (r: pcinet.IRange): Span => {
        const s = { offset: num(r.offset, 'range offset'), length: num(r.length, 'range length') };
        if (s.length === 0 || s.offset + s.length > size)
          bad(`BAR ${index}: range [${s.offset}, +${s.length}) is outside`);
        return s;
      };
      const shadow = new Uint8Array(size);
      if ((b.shadow?.length ?? 0) > size) bad(`BAR ${index}: shadow larger than the BAR`);
      if (b.shadow) shadow.set(b.shadow);
      next = (next + BigInt(size) - 1n) & ~(BigInt(size) - 1n);
      this.#bars.set(index, {
        index,
        size,
        kind,
        prefetchable: b.prefetchable ?? false,
        shadow,
        volatile: (b.volatile ?? []).map(span),
        doorbell: (b.doorbell ?? []).map(span),
        address: next,
      });
      next += BigInt(size);
    }
    for (const b of this.#bars.values()) {
      if (b.kind === pcinet.BarKind.BAR_MEM64 && this.#bars.has(b.index + 1)) {
        bad(`BAR ${b.index} is 64-bit, so BAR ${b.index + 1} cannot exist`);
      }
    }

    this.#vectors = desc.msixVectors ?? 0;
    for (const c of walkCaps(this.config)) {
      if (c.id === PCI_CAP_ID_EXP) this.#pcieCap = c.offset;
      if (c.id !== PCI_CAP_ID_MSIX) continue;
      this.#msixCap = c.offset;
      const n = (rd16(this.config, c.offset + PCI_MSIX_FLAGS) & 0x7ff) + 1;
      if (n !== this.#vectors) bad(`msix_vectors is ${this.#vectors} but the MSI-X capability says ${n}`);
      const table = rd32(this.config, c.offset + PCI_MSIX_TABLE);
      const pba = rd32(this.config, c.offset + PCI_MSIX_PBA);
      this.#msixBar = table & 7;
      if ((pba & 7) !== this.#msixBar) bad('MSI-X table and PBA in different BARs are not supported');
      this.#table = { offset: table & ~7, length: n * PCI_MSIX_ENTRY_SIZE };
      this.#pba = { offset: pba & ~7, length: Math.ceil(n / 64) * 8 };
      const bar = this.#bars.get(this.#msixBar);
      if (!bar) bad(`MSI-X table in BAR ${this.#msixBar}, which does not exist`);
      for (const s of [this.#table, this.#pba]) {
        if (s.offset + s.length > bar!.size) bad('MSI-X table or PBA outside its BAR');
      }
    }
    if (this.#vectors > 0 && this.#msixCap === 0)
      bad(`msix_vectors is ${this.#vectors} but there is no MSI-X capability`);
    this.#msix = new Uint8Array(this.#vectors * PCI_MSIX_ENTRY_SIZE);
    for (let v = 0; v < this.#vectors; v++) this.#msix[v * PCI_MSIX_ENTRY_SIZE + 12] = 1; // masked
    this.#pending = new Uint8Array(this.#pba.length);
  }

  get removed(): boolean {
    return this.#removed;
  }

  get vectors(): number {
    return this.#vectors;
  }

  barSize(bar: number): number {
    return this.#bars.get(bar)?.size ?? 0;
  }

  // ---- config space (the driver's side) ----

  configRead(offset: number, size: number): number {
    this.#checkConfig(offset, size);
    const bar = this.#barRegister(offset);
    if (bar) {
      const regs = new Uint8Array(8);
      this.#barValue(bar, regs);
      return Number(rdN(regs, offset - (PCI_BASE_ADDRESS_0 + 4 * bar.index), size));
    }
    return Number(rdN(this.config, offset, size));
  }

  configWrite(offset: number, size: number, value: number): void {
    this.#checkConfig(offset, size);
    const bar = this.#barRegister(offset);
    if (bar === null) return;
    if (bar) {
      // Sizing: all-ones in the low dword reads back the size mask; anything else sets the address
      // (which the sim chose already and keeps: the driver only ever sizes).
      const low = offset === PCI_BASE_ADDRESS_0 + 4 * bar.index;
      if (low && size === 4 && value >>> 0 === 0xffffffff) this.#sizing.add(bar.index);
      else this.#sizing.delete(bar.index);
      return;
    }
    if (offset >= PCI_ROM_ADDRESS && offset < PCI_ROM_ADDRESS + 4) return;
    const before = this.config.slice(offset, offset + size);
    for (let i = 0; i < size; i++) {
      const b = (value >>> (8 * i)) & 0xff;
      const o = offset + i;
      const kept = before[i] & ~this.#wmask[o];
      this.config[o] = (kept | (b & this.#wmask[o])) & ~(b & this.#w1c[o]) & 0xff;
    }
    const now = Number(rdN(this.config, offset, size)) >>> 0;
    if (!(rd16(this.config, PCI_COMMAND) & PCI_COMMAND_MASTER)) this.#cancelPlace();
    this.#sink({ configWrite: { dev: this.dev, offset, size, value: now } });
    if (this.#pcieCap && this.#overlaps(offset, size, this.#pcieCap + PCI_EXP_DEVCTL, 2)) {
      const devctl = rd16(this.config, this.#pcieCap + PCI_EXP_DEVCTL);
      if (devctl & PCI_EXP_DEVCTL_BCR_FLR) {
        wrN(this.config, this.#pcieCap + PCI_EXP_DEVCTL, 2, devctl & ~PCI_EXP_DEVCTL_BCR_FLR);
        this.#functionReset();
      }
    }
    if (this.#msixCap && this.#overlaps(offset, size, this.#msixCap + PCI_MSIX_FLAGS, 2))
      this.#deliverPending();
  }

  /** The place of a DmaWrite that is the next message for this device, in host memory, if the
   *  write would be allowed now (ChannelDevice.placeDmaWrite). */
  placeDmaWrite(iova: bigint, length: number, cancel: () => void): Uint8Array | undefined {
    this.#givePlaceUp();
    if (this.#removed || length > MAX_DMA_CHUNK || !(rd16(this.config, PCI_COMMAND) & PCI_COMMAND_MASTER))
      return undefined;
    const placed: { data: Uint8Array; cancel: () => void } = {
      data: new Uint8Array(0),
      cancel: () => {
        if (this.#placed === placed) this.#givePlaceUp();
        cancel();
      },
    };
    const data = this.#iommu.placeWrite(iova, length, placed.cancel);
    if (!data) return undefined;
    placed.data = data;
    this.#placed = placed;
    return data;
  }

  #givePlaceUp(): void {
    if (!this.#placed) return;
    this.#iommu.releasePlace(this.#placed.cancel);
    this.#placed = undefined;
  }

  /** Writes can no longer land (bus mastering off, removal): a place given must not be written. */
  #cancelPlace(): void {
    this.#placed?.cancel();
  }

  #functionReset(): void {
    this.#sink({ functionReset: { dev: this.dev } });
    // The endpoint forgets every push on FunctionReset, and models set their rules again when the
    // driver sets the queues up again (docs/PUSH.md "Rules").
    this.#forgetPushes();
    this.#writesSent = 0;
    this.#writesApplied = 0;
    this.#pending.fill(0);
    for (let v = 0; v < this.#vectors; v++) {
      this.#msix.fill(0, v * PCI_MSIX_ENTRY_SIZE, v * PCI_MSIX_ENTRY_SIZE + 12);
      this.#msix[v * PCI_MSIX_ENTRY_SIZE + 12] = 1;
    }
  }

  #overlaps(off: number, len: number, at: number, n: number): boolean {
    return off < at + n && at < off + len;
  }

  #checkConfig(offset: number, size: number): void {
    if (
      ![1, 2, 4].includes(size) ||
      offset % size !== 0 ||
      offset < 0 ||
      offset + size > this.config.length
    ) {
      throw new RangeError(`${this.address}: config access of ${size} bytes at 0x${offset.toString(16)}`);
    }
  }

  /** The BAR whose register holds `offset`; null for a BAR register no BAR uses (reads as the
   *  image, writes ignored); undefined outside the BAR registers. */
  #barRegister(offset: number): SimBar | null | undefined {
    if (offset < PCI_BASE_ADDRESS_0 || offset >= PCI_BASE_ADDRESS_0 + 24) return undefined;
    const i = Math.floor((offset - PCI_BASE_ADDRESS_0) / 4);
    const b = this.#bars.get(i);
    if (b) return b;
    const low = this.#bars.get(i - 1);
    return low?.kind === pcinet.BarKind.BAR_MEM64 ? low : null;
  }

  /** The 4 or 8 bytes of a BAR's register(s). */
  #barValue(b: SimBar, out: Uint8Array): void {
    const flags = BigInt(rd32(this.config, PCI_BASE_ADDRESS_0 + 4 * b.index) & 0xf);
    const value = this.#sizing.has(b.index) ? ~(BigInt(b.size) - 1n) & 0xffff_ffff_ffff_fff0n : b.address;
    wrN(out, 0, 8, (value & ~0xfn) | flags);
  }

  // ---- MMIO (the driver's side) ----

  #bar(bar: number, offset: number, size: number): SimBar {
    const b = this.#bars.get(bar);
    if (!b || offset < 0 || size < 1 || offset + size > b.size) {
      throw new RangeError(
        `${this.address}: MMIO of ${size} bytes at BAR ${bar} + 0x${offset.toString(16)} is outside`,
      );
    }
    return b;
  }

  #memoryEnabled(): boolean {
    return (rd16(this.config, PCI_COMMAND) & PCI_COMMAND_MEMORY) !== 0;
  }

  #hostOwned(bar: number, offset: number, size: number): 'table' | 'pba' | undefined {
    if (bar !== this.#msixBar) return undefined;
    if (inside([this.#table], offset, size)) return 'table';
    if (inside([this.#pba], offset, size)) return 'pba';
    if (this.#overlaps(offset, size, this.#table.offset, this.#table.length)) {
      throw new RangeError(`${this.address}: MMIO straddles the MSI-X table`);
    }
    return undefined;
  }

  /** A posted write: 1, 2, 4 or 8 bytes, or longer (a string move). */
  write(bar: number, offset: number, data: Uint8Array): void {
    const b = this.#bar(bar, offset, data.length);
    if (this.#removed || !this.#memoryEnabled()) return; // master abort: dropped
    const owned = this.#hostOwned(bar, offset, data.length);
    if (owned === 'table') {
      this.#msix.set(data, offset - this.#table.offset);
      this.#deliverPending();
      return;
    }
    if (owned === 'pba') return; // read-only
    this.#send(bar, offset, data, b);
  }

  /** A write on its way to the device: the pushes it triggers, then the write itself. */
  #send(bar: number, offset: number, data: Uint8Array, b: SimBar): void {
    this.counters.mmioWrites++;
    if (!inside(b.doorbell, offset, data.length)) this.#writesSent++;
    this.#push(bar, offset, data);
    this.#sink({ mmioWrite: { dev: this.dev, bar, offset: long(offset), data: data.slice() } });
  }

  /** The pushes a write triggers, sent in front of it (docs/PUSH.md "Rules"). None without bus
   *  mastering: the device could not read the memory then, so neither may a push. */
  #push(bar: number, offset: number, data: Uint8Array): void {
    if (this.#rules.size === 0 || !(rd16(this.config, PCI_COMMAND) & PCI_COMMAND_MASTER)) return;
    const pushes = this.#rules.onWrite(bar, offset, data, this.#peek);
    this.counters.pushSkipped = this.#rules.skipped;
    for (const p of pushes) {
      this.#iommu.markPushed(p.iova, p.data.length, this.#pushDropped);
      this.counters.pushes++;
      this.counters.pushBytes += p.data.length;
      this.#sink({ push: { dev: this.dev, iova: long(p.iova), data: p.data, rule: p.rule } });
    }
    // An SQ's event index follows its doorbell before the driver goes on, so its next submission
    // rings, unless the SQ goes quiet (docs/PUSH.md "Shadow doorbells", "Quiet submission queues"):
    // the device's own write, made early by the host.
    const tail = data.length >= 4 ? rd32(data, 0) : data.length >= 2 ? rd16(data, 0) : (data[0] ?? 0);
    for (const ei of this.#rules.eventIndices(bar, offset, tail))
      this.#sqPort.writeEventIdx(ei.iova, ei.value);
  }

  /** Quiet SQs' way to memory and to the doorbell path (host-agent/sim/push.ts). */
  readonly #sqPort: SqPort = {
    peek: (iova, len) => this.#peek(iova, len),
    writeEventIdx: (iova, value) => {
      if (this.#iommu.deviceWrite(iova, leBytes(value, 4))) this.counters.eventIdxWrites++;
      else this.counters.eventIdxRefused++;
    },
    ring: (r, tail) => {
      // Split where one doorbell's push budget would not hold the entries and their data.
      const id = this.#rules.idOf(r);
      for (let i = 0; i < r.entries && id !== undefined && this.#rules.last(id) !== tail; i++) {
        const from = this.#rules.last(id);
        this.counters.virtqKicks++;
        const end = this.#rules.nvmeFits(id, tail, this.#peek);
        this.#send(r.bar, r.doorbell, leBytes(end, 4), this.#bar(r.bar, r.doorbell, 4));
        if (this.#rules.last(id) === from) break;
      }
    },
  };

  #forgetPushes(): void {
    this.#rules.clear(this.#sqPort);
    this.#iommu.forgetPushes(this.#pushDropped);
  }

  /** A read of `size` (1, 2, 4, 8) bytes. All-ones when the device is gone or does not answer. */
  async read(bar: number, offset: number, size: number): Promise<Uint8Array> {
    const b = this.#bar(bar, offset, size);
    if (![1, 2, 4, 8].includes(size)) throw new RangeError(`${this.address}: MMIO read of ${size} bytes`);
    if (this.#removed || !this.#memoryEnabled()) return new Uint8Array(size).fill(0xff);
    const owned = this.#hostOwned(bar, offset, size);
    if (owned === 'table')
      return this.#msix.slice(offset - this.#table.offset, offset - this.#table.offset + size);
    if (owned === 'pba')
      return this.#pending.slice(offset - this.#pba.offset, offset - this.#pba.offset + size);
    if (inside(b.volatile, offset, size)) {
      this.counters.volatileReads++;
      const tag = this.#nextTag;
      this.#nextTag = (this.#nextTag % 0xffff_ffff) + 1;
      const data = new Promise<Uint8Array>((resolve) => this.#reads.set(tag, { size, resolve }));
      this.#sink({ mmioRead: { dev: this.dev, tag, bar, offset: long(offset), size } });
      return this.#bounded(data, () => this.#reads.delete(tag), size);
    }
    this.counters.shadowReads++;
    if (this.#writesApplied < this.#writesSent) {
      this.counters.fenceWaits++;
      const count = this.#writesSent;
      const fenced = new Promise<Uint8Array>((resolve) =>
        this.#fences.push({
          count,
          done: (gone) =>
            resolve(gone ? new Uint8Array(size).fill(0xff) : b.shadow.slice(offset, offset + size)),
        }),
      );
      return this.#bounded(fenced, () => {}, size);
    }
    return b.shadow.slice(offset, offset + size);
  }

  async #bounded(p: Promise<Uint8Array>, abandon: () => void, size: number): Promise<Uint8Array> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<Uint8Array>((resolve) => {
      timer = setTimeout(() => {
        abandon();
        this.counters.readTimeouts++;
        this.#log.warn({ address: this.address }, 'MMIO read timed out: returning all-ones');
        resolve(new Uint8Array(size).fill(0xff));
      }, READ_TIMEOUT_MS);
    });
    try {
      return await Promise.race([p, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async read32(bar: number, offset: number): Promise<number> {
    return rd32(await this.read(bar, offset, 4), 0);
  }

  async read64(bar: number, offset: number): Promise<bigint> {
    return rdN(await this.read(bar, offset, 8), 0, 8) as bigint;
  }

  write32(bar: number, offset: number, value: number): void {
    const d = new Uint8Array(4);
    wrN(d, 0, 4, value >>> 0);
    this.write(bar, offset, d);
  }

  write64(bar: number, offset: number, value: bigint): void {
    const d = new Uint8Array(8);
    wrN(d, 0, 8, value);
    this.write(bar, offset, d);
  }

  // ---- MSI-X ----

  #vectorMasked(v: number): boolean {
    return (this.#msix[v * PCI_MSIX_ENTRY_SIZE + 12] & 1) !== 0;
  }

  #msixControl(): number {
    return this.#msixCap ? rd16(this.config, this.#msixCap + PCI_MSIX_FLAGS) : 0;
  }

  #blocked(v: number): boolean {
    const ctl = this.#msixControl();
    return !(ctl & PCI_MSIX_FLAGS_ENABLE) || (ctl & PCI_MSIX_FLAGS_MASKALL) !== 0 || this.#vectorMasked(v);
  }

  #deliverPending(): void {
    for (let v = 0; v < this.#vectors; v++) {
      const bit = 1 << (v % 8);
      if (!(this.#pending[v >> 3] & bit) || this.#blocked(v)) continue;
      this.#pending[v >> 3] &= ~bit;
      this.#fire(v);
    }
  }

  #fire(v: number): void {
    this.counters.interrupts++;
    this.onInterrupt(v);
  }

  /** Pending bits of the PBA, for tests. */
  pending(v: number): boolean {
    return (this.#pending[v >> 3] & (1 << (v % 8))) !== 0;
  }

  // ---- device -> host (from the session, via the relay) ----

  deliver(m: Msg): void {
    if (this.#removed) return;
    if (m.shadowUpdate) {
      const u = m.shadowUpdate;
      const data = u.data ?? new Uint8Array(0);
      const b = this.#deviceRange(
        u.bar ?? 0,
        num(u.offset, 'ShadowUpdate offset'),
        data.length,
        'ShadowUpdate',
      );
      b.shadow.set(data, num(u.offset));
    } else if (m.writesApplied) {
      const count = num(m.writesApplied.count, 'WritesApplied count');
      if (count > this.#writesSent) {
        throw new ProtocolError(
          ErrorCode.BAD_ARGUMENT,
          `${this.address}: WritesApplied ${count}, but only ${this.#writesSent} writes were sent`,
        );
      }
      this.#writesApplied = Math.max(this.#writesApplied, count);
      const ready = this.#fences.filter((f) => f.count <= this.#writesApplied);
      this.#fences = this.#fences.filter((f) => f.count > this.#writesApplied);
      for (const f of ready) f.done(false);
    } else if (m.mmioReadCpl) {
      const c = m.mmioReadCpl;
      const r = this.#reads.get(c.tag ?? 0);
      if (!r) return; // late completion of a read that timed out
      this.#reads.delete(c.tag ?? 0);
      const data = c.data ?? new Uint8Array(0);
      if ((c.status ?? 0) !== ErrorCode.OK) r.resolve(new Uint8Array(r.size).fill(0xff));
      else if (data.length !== r.size) {
        throw new ProtocolError(
          ErrorCode.BAD_LENGTH,
          `${this.address}: MmioReadCpl of ${data.length} bytes for a ${r.size}-byte read`,
        );
      } else r.resolve(data.slice());
    } else if (m.dmaRead) {
      const r = m.dmaRead;
      const len = r.length ?? 0;
      if (len < 1 || len > MAX_DMA_CHUNK) {
        throw new ProtocolError(ErrorCode.BAD_LENGTH, `${this.address}: DmaRead of ${len} bytes`);
      }
      const read = this.#master() ? this.#iommu.lendRead(u64(r.iova), len) : undefined;
      if (read instanceof Uint8Array) {
        // A copy of host memory, this completion's alone until the endpoint has it.
        const data = read;
        this.#sink({ dmaReadCpl: { dev: this.dev, tag: r.tag, status: ErrorCode.OK, data } }, data, () =>
          this.#iommu.recycle(data),
        );
      } else if (read) {
        // Host memory itself, lent until the endpoint has it (iommu.ts, the file's head).
        this.#sink(
          { dmaReadCpl: { dev: this.dev, tag: r.tag, status: ErrorCode.OK, data: read.bytes } },
          read,
        );
      } else {
        this.counters.dmaReadFaults++;
        this.#sink({ dmaReadCpl: { dev: this.dev, tag: r.tag, status: ErrorCode.DMA_FAULT } });
      }
    } else if (m.dmaWrite) {
      const w = m.dmaWrite;
      const data = w.data ?? new Uint8Array(0);
      if (data.length > MAX_DMA_CHUNK) {
        throw new ProtocolError(ErrorCode.BAD_LENGTH, `${this.address}: DmaWrite of ${data.length} bytes`);
      }
      // Data read straight into host memory (placeDmaWrite) is applied where it is.
      const placed = this.#placed?.data === data;
      if (placed) this.#givePlaceUp();
      if (!this.#master() || !this.#iommu.deviceWrite(u64(w.iova), data)) {
        this.counters.dmaWriteFaults++;
        // Whatever would refuse it cancels its place first, which drops its frame.
        assert(!placed, `${this.address}: a DmaWrite read into host memory is refused when applied`);
      }
    } else if (m.pushRule) {
      this.#setPushRule(m.pushRule);
    } else if (m.interrupt) {
      this.#raise(this.#vector(m.interrupt.vector ?? 0, 'Interrupt'));
    } else if (m.virtqDone) {
      this.#virtqDone(m.virtqDone);
    } else {
      throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `${this.address}: not a device -> host message`);
    }
  }

  #vector(v: number, what: string): number {
    if (v >= this.#vectors) {
      throw new ProtocolError(
        ErrorCode.BAD_ARGUMENT,
        `${this.address}: ${what} for vector ${v}, but the device has ${this.#vectors} vectors`,
      );
    }
    return v;
  }

  #raise(v: number): void {
    if (this.#blocked(v)) {
      this.counters.interruptsPending++;
      this.#pending[v >> 3] |= 1 << (v % 8);
    } else this.#fire(v);
  }

  /**
   * VirtqDone (docs/PUSH.md "Virtqueue rounds"), as pcinet.ko's pcinet_virtq_done(): the device's
   * DmaWrites before it are applied (messages are handled in order), so the driver area read now
   * is what a ring read issued after them would see. A rule that is gone gets the interrupt.
   */
  #virtqDone(v: pcinet.IVirtqDone): void {
    const id = v.rule ?? 0;
    if (id >= MAX_PUSH_RULES)
      throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `${this.address}: VirtqDone for rule ${id}`);
    const vector = v.interrupt ? this.#vector(v.vector ?? 0, 'VirtqDone') : 0;
    this.counters.virtqRounds++;
    const r = this.#rules.get(id);
    const q = r?.kind === 'virtq' ? r : undefined;
    const master = (rd16(this.config, PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
    if (r?.kind === 'nvme-sq') {
      // A round of a quiet-capable SQ (docs/PUSH.md "Quiet submission queues"): `kick` is the tail taken.
      if (v.recheck && master && !this.#removed && this.#memoryEnabled())
        this.#rules.sqRound(id, (v.kick ?? 0) & 0xffff, this.#sqPort);
      return;
    }
    const rd = (iova: bigint) => {
      const b = this.#peek(iova, 2);
      return b ? rd16(b, 0) : undefined;
    };
    const [old, next] = [(v.oldUsed ?? 0) & 0xffff, (v.newUsed ?? 0) & 0xffff];
    if (v.interrupt && old !== next) {
      if (virtqRound.wantsInterrupt(rd, q, v.eventIdx ?? false, old, next)) this.#raise(vector);
      else this.counters.virtqIrqsSkipped++;
    }
    // Without bus mastering a notify pushes nothing and `last` stays: a kick would only bring the
    // device back here, round after round.
    const idx = v.recheck && q && master ? rd(q.avail + 2n) : undefined;
    if (
      q &&
      idx !== undefined &&
      virtqRound.unannounced(idx, this.#rules.last(id) ?? idx, q.size) &&
      !this.#removed &&
      this.#memoryEnabled()
    ) {
      this.counters.virtqKicks++;
      this.#send(q.bar, q.notify, leBytes(v.kick ?? 0, 2), this.#bar(q.bar, q.notify, 2));
    }
  }

  /** A PushRule from the endpoint, checked as the kernel channel checks it (host-agent/push-rule.ts,
   *  the limits pcinet.ko enforces on W_PUSH_RULE): a rule the host cannot apply is the endpoint
   *  breaking the protocol. Answered with PushRuleSet, after which no push comes from the rule as
   *  it was (docs/PUSH.md "Rules"). */
  #setPushRule(m: pcinet.IPushRule): void {
    const p = checkPushRule(m, this.#desc);
    const id = p.id ?? 0;
    const bar = p.bar ?? 0;
    const entries = p.entries ?? 0;
    const dataMax = p.dataMax ?? 0;
    // Checked: the doorbell lies inside a BAR of at most 1 GiB, so it is a safe number.
    const at = Number(u64(p.offset));
    let rule: PushRule | undefined;
    if (p.kind === pcinet.PushKind.PUSH_NVME_SQ) {
      const lbaShift = p.lbaShift ?? 0;
      const eventIdx = u64(p.avail);
      rule = { kind: 'nvme-sq', bar, doorbell: at, base: u64(p.ring), entries, dataMax, lbaShift };
      if (eventIdx) rule.eventIdx = eventIdx;
      if (eventIdx && u64(p.shadow)) rule.shadow = u64(p.shadow);
    } else if (p.kind === pcinet.PushKind.PUSH_VIRTQ) {
      const [desc, avail, indirect] = [u64(p.ring), u64(p.avail), p.indirect ?? false];
      rule = { kind: 'virtq', bar, notify: at, desc, avail, size: entries, dataMax, indirect };
    }
    this.#rules.set(id, rule, this.#sqPort);
    this.#sink({ pushRuleSet: { dev: this.dev, id } });
  }

  /** Push rules, for tests. */
  get pushRules(): PushRules {
    return this.#rules;
  }

  #master(): boolean {
    const on = (rd16(this.config, PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
    if (!on) this.counters.masterAbortDma++;
    return on;
  }

  #deviceRange(bar: number, offset: number, len: number, what: string): SimBar {
    const b = this.#bars.get(bar);
    if (!b || offset + len > b.size) {
      throw new ProtocolError(
        ErrorCode.BAD_ARGUMENT,
        `${this.address}: ${what} of ${len} bytes at BAR ${bar} + 0x${offset.toString(16)} is outside`,
      );
    }
    return b;
  }

  async remove(reason: ErrorCode): Promise<void> {
    if (this.#removed) return;
    this.#removed = true;
    this.#cancelPlace();
    this.#forgetPushes();
    for (const r of this.#reads.values()) r.resolve(new Uint8Array(r.size).fill(0xff));
    this.#reads.clear();
    for (const f of this.#fences) f.done(true);
    this.#fences = [];
    this.#log.info({ address: this.address, reason: ErrorCode[reason] }, 'sim device removed');
    this.onRemove(reason);
  }
}
