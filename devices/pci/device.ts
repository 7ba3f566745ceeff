// PciDevice: most of DeviceModel, driven by declarations. A device model declares its config space
// (pciConfig) and BARs (register tables, plain memory); this class serves MMIO from the BARs' backing
// bytes, tracks what changed for the host's shadow, applies access rules, traces guest mistakes and
// survives them. The subclass writes only the side effects.
//
// Guest mistakes (trace events; the access is dropped, nothing else happens):
//   pci.mmio.ro-write     write to a read-only register
//   pci.mmio.unmapped     access to bytes that are no register and no memory
//   pci.mmio.misaligned   access not naturally aligned to its size
//   pci.mmio.oversized    access larger than the register, or not 1/2/4/8 bytes
//   pci.mmio.host-owned   write to the MSI-X table or PBA (the host should have kept it)
//   pci.mmio.outside-bar  access past the end of the BAR, or to a BAR that does not exist
//   pci.config.outside    ConfigWrite past the end of config space
import type { DeviceDescription } from '../description.js';
import { type DeviceModel, type DirtyRange, DmaError, type HostPort } from '../host-port.js';
import { BarStorage } from './bar.js';
import { msixSizes } from './caps.js';
import { PCI_COMMAND, PCI_COMMAND_MASTER, type PciConfig } from './config.js';
import { describe } from './describe.js';
import { rd16, rdN, wrN } from './le.js';

/** takeDirty()'s answer when nothing changed (shared: callers only read it). */
const NOTHING_DIRTY: DirtyRange[] = Object.freeze([]) as unknown as DirtyRange[];

import type { Register, RegisterTable, Span } from './registers.js';

export interface BarLayout<C> {
  index: number;
  /** Register declarations. Accesses that hit no register and no `memory` span are traced. */
  registers?: RegisterTable<C>;
  /** Reset values that depend on the instance (an option), by register name. */
  reset?: Record<string, number | bigint>;
  /** Plain storage: writes of any size land as they are and are pushed back to the shadow. */
  memory?: Span[];
}

export interface PciDeviceSpec<C> {
  /** "test", "nvme" … */
  model: string;
  config: PciConfig;
  /** One entry per BAR of `config`. */
  bars: BarLayout<C>[];
}

interface BarState<C> {
  storage: BarStorage;
  registers: RegisterTable<C> | undefined;
  memory: readonly Span[];
  /** MSI-X table and PBA: served by the host, never by us. */
  hostOwned: readonly Span[];
  doorbell: readonly Span[];
  powerOn: Uint8Array;
}

// Plain loops: asked on every MMIO write.
function within(spans: readonly Span[], off: number, len: number): boolean {
  for (const s of spans) if (off >= s.offset && off + len <= s.offset + s.length) return true;
  return false;
}
function overlaps(spans: readonly Span[], off: number, len: number): boolean {
  for (const s of spans) if (off < s.offset + s.length && s.offset < off + len) return true;
  return false;
}
const hex = (v: number | bigint) => `0x${v.toString(16)}`;
/** An MMIO access's trace fields (made only for a trace). */
const where = (bar: number, offset: number, len: number) => ({ bar, offset: hex(offset), len });

/** The port of a detached device: async work that outlived the attachment goes nowhere. */
const DETACHED: HostPort = {
  dmaRead: (iova, len) => Promise.reject(new DmaError(iova, len, 'shutdown')),
  dmaWrite: () => {},
  raiseMsix: () => {},
  drain: () => Promise.resolve(),
  trace: () => {},
  changed: () => {},
  setPushRule: () => {},
};

/** Base of declarative device models. `Self` is the subclass: register hooks receive it. */
export abstract class PciDevice<Self = unknown> implements DeviceModel {
  readonly description: DeviceDescription;
  readonly config: PciConfig;
  /** Config space as the driver last wrote it (from ConfigWrite), for state such as bus mastering. */
  readonly cfg: Uint8Array;
  readonly #bars = new Map<number, BarState<Self>>();
  /** The same BARs, for takeDirty()'s loop (no iterator). */
  readonly #barList: BarState<Self>[] = [];
  /** Some BAR may have dirty ranges (set as one becomes dirty, cleared by takeDirty()). */
  #maybeDirty = false;
  #port: HostPort | undefined;

  constructor(spec: PciDeviceSpec<Self>) {
    this.config = spec.config;
    this.cfg = spec.config.image.slice();
    for (const b of spec.config.bars) {
      const layout = spec.bars.find((l) => l.index === b.index);
      if (!layout) throw new Error(`${spec.model}: no layout for BAR ${b.index}`);
      this.#bars.set(b.index, buildBar(spec.model, b.index, b.size, layout, spec.config));
    }
    for (const l of spec.bars) {
      if (!this.#bars.has(l.index)) throw new Error(`${spec.model}: layout for undeclared BAR ${l.index}`);
    }
    this.description = describe(
      spec.model,
      spec.config,
      [...this.#bars.entries()].map(([index, b]) => ({
        index,
        shadow: b.powerOn,
        volatile: b.registers?.volatile,
        doorbell: b.doorbell,
      })),
    );
    for (const b of this.#bars.values()) {
      this.#barList.push(b);
      b.storage.bytes.set(b.powerOn);
      b.storage.onDirty = () => {
        this.#maybeDirty = true;
        this.#port?.changed();
      };
    }
  }

  /** The BAR's backing bytes, for the subclass's side effects (set32 … mark them for the shadow). */
  protected bar(index: number): BarStorage {
    const b = this.#bars.get(index);
    if (!b) throw new Error(`no BAR ${index}`);
    return b.storage;
  }

  /** The host while attached; afterwards a port where everything goes nowhere. */
  protected get host(): HostPort {
    return this.#port ?? DETACHED;
  }

  get attached(): boolean {
    return this.#port !== undefined;
  }

  /** Command register Bus Master Enable, as last written by the driver. */
  get busMaster(): boolean {
    return (rd16(this.cfg, PCI_COMMAND) & PCI_COMMAND_MASTER) !== 0;
  }

  protected trace(event: string, fields?: Record<string, unknown>): void {
    this.#port?.trace(event, fields);
  }

  /** Registers are back at power-on values (attach, FunctionReset, detach): drop device state and
   *  abandon in-flight work. */
  protected onReset(): void {}

  /** A config write the device must know about; `cfg` already holds it. */
  protected onConfigWrite(_offset: number, _size: number, _value: number): void {}

  attach(port: HostPort): void {
    this.#powerOn();
    for (const b of this.#bars.values()) b.storage.clearDirty();
    this.#port = port;
  }

  detach(): void {
    this.#port = undefined;
    this.#powerOn();
    for (const b of this.#bars.values()) b.storage.clearDirty();
  }

  reset(): void {
    this.#powerOn();
  }

  takeDirty(): DirtyRange[] {
    // Asked before every message the device sends: nothing changed is the usual answer.
    if (!this.#maybeDirty) return NOTHING_DIRTY;
    this.#maybeDirty = false;
    let out: DirtyRange[] | undefined;
    for (const b of this.#barList) {
      if (!b.storage.dirty) continue;
      out ??= [];
      out.push(...b.storage.takeDirty());
    }
    return out ?? NOTHING_DIRTY;
  }

  counters(): Record<string, number> {
    return {};
  }

  configWrite(offset: number, size: number, value: number): void {
    if (![1, 2, 4].includes(size) || offset < 0 || offset + size > this.cfg.length) {
      this.trace('pci.config.outside', { offset: hex(offset), size });
      return;
    }
    wrN(this.cfg, offset, size, value >>> 0);
    this.onConfigWrite(offset, size, value >>> 0);
  }

  mmioWrite(bar: number, offset: number, data: Uint8Array): void {
    const b = this.#bars.get(bar);
    const len = data.length;
    if (!b || len === 0 || offset < 0 || offset + len > b.storage.size) {
      this.trace('pci.mmio.outside-bar', where(bar, offset, len));
      return;
    }
    if (within(b.memory, offset, len)) {
      b.storage.write(offset, data);
      return;
    }
    if (overlaps(b.hostOwned, offset, len)) {
      this.trace('pci.mmio.host-owned', where(bar, offset, len));
      return;
    }
    const reg = b.registers?.find(offset);
    if (!reg) this.trace('pci.mmio.unmapped', where(bar, offset, len));
    else if (![1, 2, 4, 8].includes(len) || offset + len > reg.at + reg.size) {
      this.trace('pci.mmio.oversized', { ...where(bar, offset, len), reg: reg.name });
    } else if (offset % len) this.trace('pci.mmio.misaligned', { ...where(bar, offset, len), reg: reg.name });
    else {
      this.#writeRegister(b, reg, offset, data);
      return;
    }
    // Dropped: make sure the host's shadow still shows our bytes.
    if (!overlaps(b.doorbell, offset, len)) b.storage.markDirty(offset, len);
  }

  mmioRead(bar: number, offset: number, size: number): Uint8Array {
    const b = this.#bars.get(bar);
    if (!b || size <= 0 || offset < 0 || offset + size > b.storage.size) {
      this.trace('pci.mmio.outside-bar', { bar, offset: hex(offset), len: size });
      // What a PCI read of nothing returns.
      return new Uint8Array(Math.max(size, 0)).fill(0xff);
    }
    const regs = b.registers;
    for (let p = offset; regs && p < offset + size; ) {
      const reg = regs.find(p);
      if (!reg) {
        p++;
        continue;
      }
      if (reg.onRead) {
        const ctx = this as unknown as Self;
        const bytes = b.storage.bytes;
        if (reg.size === 8) wrN(bytes, reg.at, 8, reg.onRead(ctx, rdN(bytes, reg.at, 8) as bigint));
        else wrN(bytes, reg.at, reg.size, reg.onRead(ctx, rdN(bytes, reg.at, reg.size) as number));
      }
      p = reg.at + reg.size;
    }
    return b.storage.read(offset, size);
  }

  #writeRegister(b: BarState<Self>, reg: Register<Self>, offset: number, data: Uint8Array): void {
    const s = b.storage;
    const size = reg.size;
    const ctx = this as unknown as Self;
    // A whole write-only register of up to 4 bytes (every doorbell, once per I/O): the value as
    // written, in plain numbers and without copies; the same outcome as the general path below.
    if (reg.access === 'wo' && reg.size !== 8 && data.length === size && !reg.guard) {
      if (!reg.doorbell) s.markDirty(reg.at, size);
      reg.onWrite?.(ctx, rdN(data, 0, size) as number, rdN(s.bytes, reg.at, size) as number);
      return;
    }
    const at = offset - reg.at;
    const merged = s.bytes.slice(reg.at, reg.at + size);
    merged.set(data, at);
    const written = new Uint8Array(size);
    written.set(data, at);
    const old = BigInt(rdN(s.bytes, reg.at, size));
    const all = (1n << BigInt(8 * size)) - 1n;
    const mask = reg.mask === undefined ? all : BigInt(reg.mask) & all;
    let next: bigint;
    switch (reg.access) {
      case 'ro':
        this.trace('pci.mmio.ro-write', {
          bar: s.index,
          reg: reg.name,
          offset: hex(offset),
          value: hex(BigInt(rdN(data, 0, data.length))),
        });
        s.markDirty(reg.at, size);
        return;
      case 'rw':
        next = (old & ~mask) | (BigInt(rdN(merged, 0, size)) & mask);
        break;
      case 'rw1c':
        next = old & ~(BigInt(rdN(written, 0, size)) & mask);
        break;
      case 'wo':
        next = BigInt(rdN(written, 0, size));
        break;
    }
    if (reg.guard && !reg.guard(ctx, reg.name)) {
      if (!reg.doorbell) s.markDirty(reg.at, size);
      return;
    }
    if (reg.access !== 'wo') wrN(s.bytes, reg.at, size, next);
    if (!reg.doorbell) s.markDirty(reg.at, size);
    if (reg.size === 8) reg.onWrite?.(ctx, next, old);
    else reg.onWrite?.(ctx, Number(next), Number(old));
  }

  #powerOn(): void {
    for (const b of this.#bars.values()) b.storage.load(b.powerOn);
    this.cfg.set(this.config.image);
    this.onReset();
  }
}

function buildBar<C>(
  model: string,
  index: number,
  size: number,
  l: BarLayout<C>,
  cfg: PciConfig,
): BarState<C> {
  const bad = (why: string): never => {
    throw new Error(`${model}: BAR ${index}: ${why}`);
  };
  const regs = l.registers;
  if (regs && regs.end > size) bad(`registers end at 0x${regs.end.toString(16)}, past the BAR`);
  const memory = l.memory ?? [];
  const hostOwned: Span[] = [];
  if (cfg.msix && cfg.msix.bar === index) {
    const s = msixSizes(cfg.msix.vectors);
    hostOwned.push({ offset: cfg.msix.table, length: s.table }, { offset: cfg.msix.pba, length: s.pba });
  }
  for (const m of memory) {
    if (m.offset < 0 || m.offset + m.length > size)
      bad(`memory [0x${m.offset.toString(16)}, +${m.length}) is outside`);
    if (overlaps(hostOwned, m.offset, m.length)) bad('memory overlaps the MSI-X table or PBA');
    if (regs?.regs.some((r) => overlaps([m], r.at, r.size))) bad('memory overlaps registers');
  }
  if (regs?.regs.some((r) => overlaps(hostOwned, r.at, r.size)))
    bad('registers overlap the MSI-X table or PBA');

  const powerOn = new Uint8Array(size);
  for (const r of regs?.regs ?? []) if (r.reset !== undefined) wrN(powerOn, r.at, r.size, r.reset);
  for (const [name, v] of Object.entries(l.reset ?? {})) {
    const r = regs?.byName(name) ?? bad(`reset value for unknown register ${name}`);
    wrN(powerOn, r.at, r.size, v);
  }
  const volatile = regs?.volatile ?? [];
  return {
    storage: new BarStorage(index, size, [...volatile, ...hostOwned]),
    registers: regs,
    memory,
    hostOwned,
    doorbell: regs?.doorbell ?? [],
    powerOn,
  };
}
