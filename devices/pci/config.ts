// PCI configuration space builder: a type 0 header (PCI Local Bus Spec 3.0 §6.2; PCIe Base Spec
// 4.0 §7.5.1) with a capability list, as three images: contents, the bits a driver may write
// (wmask) and the bits a written 1 clears (w1cmask). The host serves config space from these alone;
// the device only hears about writes it must act on (ConfigWrite).
import { rd8, rd16, wrN } from './le.js';

// Type 0 header offsets, named as in the spec (and Linux's pci_regs.h).
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
export const PCI_CLASS_PROG = 0x09;
export const PCI_CACHE_LINE_SIZE = 0x0c;
export const PCI_LATENCY_TIMER = 0x0d;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_ROM_ADDRESS = 0x30;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;

export const PCI_COMMAND_IO = 1 << 0;
export const PCI_COMMAND_MEMORY = 1 << 1;
export const PCI_COMMAND_MASTER = 1 << 2;
export const PCI_COMMAND_PARITY = 1 << 6;
export const PCI_COMMAND_SERR = 1 << 8;
export const PCI_COMMAND_INTX_DISABLE = 1 << 10;

export const PCI_STATUS_INTERRUPT = 1 << 3;
export const PCI_STATUS_CAP_LIST = 1 << 4;
/** Status error bits, all RW1C (PCIe Base Spec §7.5.1.1.4): master data parity error, signaled
 *  target abort, received target abort, received master abort, signaled system error, detected
 *  parity error. */
export const PCI_STATUS_W1C = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);

export const PCI_BASE_ADDRESS_SPACE_IO = 0x01;
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_VNDR = 0x09;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

/** Standard capabilities start after the 64-byte header. */
export const PCI_CAP_START = 0x40;
export const PCI_CFG_SPACE_SIZE = 256;
export const PCI_CFG_SPACE_EXP_SIZE = 4096;

export type BarKindName = 'mem32' | 'mem64' | 'io';

export interface BarDecl {
  index: number;
  kind: BarKindName;
  /** Bytes; a power of two, at least 16. */
  size: number;
  prefetchable?: boolean;
}

/** Where the MSI-X table and PBA live (from the MSI-X capability). The host emulates both. */
export interface MsixLayout {
  vectors: number;
  bar: number;
  table: number;
  pba: number;
}

/** Writes into the three images; offsets are absolute config-space offsets. */
export class ConfigImage {
  readonly image: Uint8Array;
  readonly wmask: Uint8Array;
  readonly w1cmask: Uint8Array;

  constructor(size: number) {
    this.image = new Uint8Array(size);
    this.wmask = new Uint8Array(size);
    this.w1cmask = new Uint8Array(size);
  }

  /** A register of `size` bytes: its reset value, the bits the driver may write, the bits a written
   *  1 clears. */
  field(off: number, size: number, value: number, wmask = 0, w1c = 0): void {
    wrN(this.image, off, size, value);
    wrN(this.wmask, off, size, wmask);
    wrN(this.w1cmask, off, size, w1c);
  }
}

export interface CapContext {
  readonly bars: readonly BarDecl[];
}

/** A standard capability. pciConfig writes the ID and next pointer; `build` writes the rest. */
export interface Capability {
  readonly id: number;
  readonly name: string;
  /** Bytes including the 2-byte header. */
  readonly size: number;
  build(cfg: ConfigImage, at: number, ctx: CapContext): void;
  /** Set by msixCap. */
  readonly msix?: MsixLayout;
}

export interface PciConfigOptions {
  vendorId: number;
  deviceId: number;
  /** Defaults to vendorId / deviceId. */
  subsystemVendorId?: number;
  subsystemId?: number;
  /** base class << 16 | subclass << 8 | programming interface. */
  classCode: number;
  revision?: number;
  /** INTx pin 1..4 (INTA..INTD); 0 (default): no INTx, MSI-X only. */
  interruptPin?: number;
  bars: BarDecl[];
  caps: Capability[];
  /** Default: 4096 when a PCIe capability is present (extended config space), else 256. */
  configSize?: 256 | 4096;
}

export interface PciConfig {
  readonly image: Uint8Array;
  readonly wmask: Uint8Array;
  readonly w1cmask: Uint8Array;
  readonly bars: readonly BarDecl[];
  readonly msix: MsixLayout | undefined;
  /** Where each capability landed, in chain order. */
  readonly caps: readonly { id: number; name: string; offset: number }[];
}

function fail(why: string): never {
  throw new Error(`pciConfig: ${why}`);
}

const isPow2 = (n: number) => Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;

function checkBars(bars: readonly BarDecl[]): void {
  const used = new Set<number>();
  for (const b of bars) {
    if (!Number.isInteger(b.index) || b.index < 0 || b.index > 5) fail(`BAR index ${b.index} is not 0..5`);
    const slots = b.kind === 'mem64' ? [b.index, b.index + 1] : [b.index];
    if (b.kind === 'mem64' && b.index > 4) fail(`64-bit BAR ${b.index} needs slot ${b.index + 1}`);
    for (const s of slots) {
      if (used.has(s)) fail(`BAR slot ${s} used twice`);
      used.add(s);
    }
    // 16 bytes is the smallest memory BAR (PCI 3.0 §6.2.5.1); the protocol asks the same of I/O.
    if (!isPow2(b.size) || b.size < 16) fail(`BAR ${b.index} size ${b.size} is not a power of two >= 16`);
    if (b.kind === 'io' && b.size > 256) fail(`I/O BAR ${b.index} is over 256 bytes`);
    if (b.kind === 'mem32' && b.size > 2 ** 31) fail(`32-bit BAR ${b.index} is over 2 GiB`);
    if (b.kind === 'io' && b.prefetchable) fail(`I/O BAR ${b.index} cannot be prefetchable`);
  }
}

/** Builds config space. Throws on an inconsistent declaration (a bug in the device model). */
export function pciConfig(o: PciConfigOptions): PciConfig {
  checkBars(o.bars);
  const pcie = o.caps.some((c) => c.id === PCI_CAP_ID_EXP);
  const size = o.configSize ?? (pcie ? PCI_CFG_SPACE_EXP_SIZE : PCI_CFG_SPACE_SIZE);
  const pin = o.interruptPin ?? 0;
  if (pin < 0 || pin > 4) fail(`interrupt pin ${pin} is not 0..4`);
  const cfg = new ConfigImage(size);

  const hasIo = o.bars.some((b) => b.kind === 'io');
  const hasMem = o.bars.some((b) => b.kind !== 'io');
  cfg.field(PCI_VENDOR_ID, 2, o.vendorId);
  cfg.field(PCI_DEVICE_ID, 2, o.deviceId);
  // Space enables without a BAR of that kind are hardwired to 0 (PCIe Base Spec §7.5.1.1.3).
  const cmdWmask =
    (hasIo ? PCI_COMMAND_IO : 0) |
    (hasMem ? PCI_COMMAND_MEMORY : 0) |
    PCI_COMMAND_MASTER |
    PCI_COMMAND_PARITY |
    PCI_COMMAND_SERR |
    PCI_COMMAND_INTX_DISABLE;
  cfg.field(PCI_COMMAND, 2, 0, cmdWmask);
  cfg.field(PCI_STATUS, 2, o.caps.length > 0 ? PCI_STATUS_CAP_LIST : 0, 0, PCI_STATUS_W1C);
  cfg.field(PCI_REVISION_ID, 1, o.revision ?? 0);
  cfg.field(PCI_CLASS_PROG, 1, o.classCode & 0xff);
  cfg.field(PCI_CLASS_PROG + 1, 2, (o.classCode >>> 8) & 0xffff);
  // Cache Line Size has no effect on PCIe but must be read/write (§7.5.1.1.7); Latency Timer and
  // BIST are hardwired to 0; header type 0, single function.
  cfg.field(PCI_CACHE_LINE_SIZE, 1, 0, 0xff);
  cfg.field(PCI_HEADER_TYPE, 1, 0);

  // BAR registers: flag bits only, wmask 0. The host owns sizing and addresses.
  for (const b of o.bars) {
    const off = PCI_BASE_ADDRESS_0 + 4 * b.index;
    let flags = 0;
    if (b.kind === 'io') flags = PCI_BASE_ADDRESS_SPACE_IO;
    else {
      if (b.kind === 'mem64') flags |= PCI_BASE_ADDRESS_MEM_TYPE_64;
      if (b.prefetchable) flags |= PCI_BASE_ADDRESS_MEM_PREFETCH;
    }
    cfg.field(off, 4, flags);
  }
  cfg.field(PCI_SUBSYSTEM_VENDOR_ID, 2, o.subsystemVendorId ?? o.vendorId);
  cfg.field(PCI_SUBSYSTEM_ID, 2, o.subsystemId ?? o.deviceId);
  cfg.field(PCI_INTERRUPT_LINE, 1, 0, 0xff);
  cfg.field(PCI_INTERRUPT_PIN, 1, pin);

  // The capability chain, in declaration order from 0x40, each DWORD aligned.
  const placed: { id: number; name: string; offset: number }[] = [];
  let at = PCI_CAP_START;
  let prevNext = PCI_CAPABILITY_LIST;
  const ids = new Set<number>();
  let msix: MsixLayout | undefined;
  for (const cap of o.caps) {
    if (ids.has(cap.id) && cap.id !== PCI_CAP_ID_VNDR) fail(`capability ${cap.name} given twice`);
    ids.add(cap.id);
    if (cap.size < 2) fail(`capability ${cap.name} has size ${cap.size}`);
    if (at + cap.size > PCI_CFG_SPACE_SIZE) fail(`capabilities do not fit in 256 bytes (${cap.name})`);
    cfg.field(prevNext, 1, at);
    cfg.field(at, 1, cap.id);
    cap.build(cfg, at, { bars: o.bars });
    placed.push({ id: cap.id, name: cap.name, offset: at });
    if (cap.msix) msix = cap.msix;
    prevNext = at + 1;
    at += (cap.size + 3) & ~3;
  }
  // The last next pointer stays 0. With extended config space and no extended capabilities the
  // header at 0x100 is all zero (PCIe Base Spec §7.6.3), which it already is.

  return { image: cfg.image, wmask: cfg.wmask, w1cmask: cfg.w1cmask, bars: o.bars, msix, caps: placed };
}

/** Walks the capability list of a config image: [id, offset] in chain order. Stops at a loop. */
export function walkCaps(image: Uint8Array): { id: number; offset: number }[] {
  const out: { id: number; offset: number }[] = [];
  if (!(rd16(image, PCI_STATUS) & PCI_STATUS_CAP_LIST)) return out;
  const seen = new Set<number>();
  let p = rd8(image, PCI_CAPABILITY_LIST) & ~3;
  while (p !== 0 && !seen.has(p) && p + 2 <= image.length) {
    seen.add(p);
    out.push({ id: rd8(image, p), offset: p });
    p = rd8(image, p + 1) & ~3;
  }
  return out;
}
