// Standard capabilities: PCI Express (PCIe Base Spec 4.0 §7.5.3), MSI-X (PCI Local Bus Spec 3.0
// §6.8.2), Power Management (PCI Bus Power Management Interface Spec 1.2 §3.2) and vendor-specific
// (PCI 3.0 §6.7, used by virtio-pci).
import {
  type Capability,
  type CapContext,
  type ConfigImage,
  type MsixLayout,
  PCI_CAP_ID_EXP,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_PM,
  PCI_CAP_ID_VNDR,
} from './config.js';

// PCI Express capability registers, offsets from the capability.
export const PCI_EXP_FLAGS = 0x02;
export const PCI_EXP_DEVCAP = 0x04;
export const PCI_EXP_DEVCTL = 0x08;
export const PCI_EXP_DEVSTA = 0x0a;
export const PCI_EXP_LNKCAP = 0x0c;
export const PCI_EXP_LNKCTL = 0x10;
export const PCI_EXP_LNKSTA = 0x12;
export const PCI_EXP_DEVCAP2 = 0x24;
export const PCI_EXP_DEVCTL2 = 0x28;
export const PCI_EXP_LNKCAP2 = 0x2c;
export const PCI_EXP_LNKCTL2 = 0x30;
/** A version 2 capability, through Slot Status 2. */
export const PCI_EXP_SIZEOF_V2 = 0x3c;

export const PCI_EXP_FLAGS_VERS_2 = 2;
export const PCI_EXP_TYPE_ENDPOINT = 0x0;
export const PCI_EXP_TYPE_LEG_END = 0x1;

export const PCI_EXP_DEVCAP_EXT_TAG = 1 << 5;
/** Role-Based Error Reporting: required of every device since PCIe 1.1 (§7.5.3.3). */
export const PCI_EXP_DEVCAP_RBER = 1 << 15;
export const PCI_EXP_DEVCAP_FLR = 1 << 28;

export const PCI_EXP_DEVCTL_CERE = 1 << 0;
export const PCI_EXP_DEVCTL_NFERE = 1 << 1;
export const PCI_EXP_DEVCTL_FERE = 1 << 2;
export const PCI_EXP_DEVCTL_URRE = 1 << 3;
export const PCI_EXP_DEVCTL_RELAX_EN = 1 << 4;
export const PCI_EXP_DEVCTL_PAYLOAD = 0x7 << 5;
export const PCI_EXP_DEVCTL_EXT_TAG = 1 << 8;
export const PCI_EXP_DEVCTL_NOSNOOP_EN = 1 << 11;
export const PCI_EXP_DEVCTL_READRQ = 0x7 << 12;
export const PCI_EXP_DEVCTL_READRQ_512B = 0x2 << 12;
/** Initiate Function Level Reset. Always reads 0; the host turns a write of 1 into FunctionReset. */
export const PCI_EXP_DEVCTL_BCR_FLR = 1 << 15;

/** Correctable, non-fatal, fatal, unsupported request detected: RW1C (§7.5.3.5). */
export const PCI_EXP_DEVSTA_W1C = 0xf;

/** ASPM Optionality Compliance: must be 1 in every function compliant with PCIe 3.0+ (§7.5.3.6). */
export const PCI_EXP_LNKCAP_ASPM_OPT = 1 << 22;
export const PCI_EXP_LNKCTL_ASPMC = 0x3;
export const PCI_EXP_LNKCTL_RCB = 1 << 3;
export const PCI_EXP_LNKCTL_CCC = 1 << 6;
export const PCI_EXP_LNKCTL_ES = 1 << 7;
/** Slot Clock Configuration: the device uses the platform's reference clock. */
export const PCI_EXP_LNKSTA_SLC = 1 << 12;

// MSI-X capability registers.
export const PCI_MSIX_FLAGS = 0x02;
export const PCI_MSIX_TABLE = 0x04;
export const PCI_MSIX_PBA = 0x08;
export const PCI_MSIX_SIZEOF = 12;
export const PCI_MSIX_FLAGS_QSIZE = 0x7ff;
export const PCI_MSIX_FLAGS_MASKALL = 1 << 14;
export const PCI_MSIX_FLAGS_ENABLE = 1 << 15;
/** One table entry: message address (8), data (4), vector control (4). */
export const PCI_MSIX_ENTRY_SIZE = 16;
/** The largest table: Table Size is 11 bits, N - 1. */
export const PCI_MSIX_MAX_VECTORS = 2048;

// Power Management capability registers.
export const PCI_PM_PMC = 0x02;
export const PCI_PM_CTRL = 0x04;
export const PCI_PM_SIZEOF = 8;
/** PMC version 011b: compliant with PM spec 1.2. */
export const PCI_PM_CAP_VER_1_2 = 3;
export const PCI_PM_CTRL_STATE_MASK = 0x3;
export const PCI_PM_CTRL_NO_SOFT_RESET = 1 << 3;

export type LinkSpeed = 1 | 2 | 3 | 4 | 5;
export type LinkWidth = 1 | 2 | 4 | 8 | 12 | 16 | 32;

export interface PcieCapOptions {
  /** 'endpoint' (PCI Express Endpoint) or 'legacy-endpoint'. */
  type: 'endpoint' | 'legacy-endpoint';
  /** Max_Payload_Size Supported in bytes, 128..4096. Default 128: any root port accepts it. */
  maxPayload?: 128 | 256 | 512 | 1024 | 2048 | 4096;
  /** Link speed: 1 = 2.5 GT/s, 2 = 5, 3 = 8, 4 = 16, 5 = 32. Cosmetic (lspci); default 1. */
  linkSpeed?: LinkSpeed;
  /** Lanes. Cosmetic; default 1. */
  linkWidth?: LinkWidth;
  /** Function Level Reset Capability. Default true: FLR arrives as FunctionReset. */
  flr?: boolean;
}

/** PCI Express capability, version 2, for an endpoint with a link. */
export function pcieCap(o: PcieCapOptions): Capability {
  const mps = Math.log2((o.maxPayload ?? 128) / 128);
  const speed = o.linkSpeed ?? 1;
  const width = o.linkWidth ?? 1;
  const type = o.type === 'endpoint' ? PCI_EXP_TYPE_ENDPOINT : PCI_EXP_TYPE_LEG_END;
  return {
    id: PCI_CAP_ID_EXP,
    name: 'pcie',
    size: PCI_EXP_SIZEOF_V2,
    build(cfg: ConfigImage, at: number) {
      cfg.field(at + PCI_EXP_FLAGS, 2, PCI_EXP_FLAGS_VERS_2 | (type << 4));
      cfg.field(
        at + PCI_EXP_DEVCAP,
        4,
        mps | PCI_EXP_DEVCAP_EXT_TAG | PCI_EXP_DEVCAP_RBER | (o.flr === false ? 0 : PCI_EXP_DEVCAP_FLR),
      );
      // Reset values (§7.5.3.4): relaxed ordering and no snoop enabled, 512-byte read requests,
      // 128-byte payload. Phantom functions and aux power are not supported, so read-only.
      const devctlW =
        PCI_EXP_DEVCTL_CERE |
        PCI_EXP_DEVCTL_NFERE |
        PCI_EXP_DEVCTL_FERE |
        PCI_EXP_DEVCTL_URRE |
        PCI_EXP_DEVCTL_RELAX_EN |
        PCI_EXP_DEVCTL_PAYLOAD |
        PCI_EXP_DEVCTL_EXT_TAG |
        PCI_EXP_DEVCTL_NOSNOOP_EN |
        PCI_EXP_DEVCTL_READRQ |
        (o.flr === false ? 0 : PCI_EXP_DEVCTL_BCR_FLR);
      cfg.field(
        at + PCI_EXP_DEVCTL,
        2,
        PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_NOSNOOP_EN | PCI_EXP_DEVCTL_READRQ_512B,
        devctlW,
      );
      cfg.field(at + PCI_EXP_DEVSTA, 2, 0, 0, PCI_EXP_DEVSTA_W1C);
      // No ASPM support, port number 0.
      cfg.field(at + PCI_EXP_LNKCAP, 4, speed | (width << 4) | PCI_EXP_LNKCAP_ASPM_OPT);
      cfg.field(
        at + PCI_EXP_LNKCTL,
        2,
        0,
        PCI_EXP_LNKCTL_ASPMC | PCI_EXP_LNKCTL_RCB | PCI_EXP_LNKCTL_CCC | PCI_EXP_LNKCTL_ES,
      );
      // The link is always up at its full speed and width.
      cfg.field(at + PCI_EXP_LNKSTA, 2, speed | (width << 4) | PCI_EXP_LNKSTA_SLC);
      // Supported Link Speeds Vector: bit n for speed n, all up to the maximum (§7.5.3.18).
      cfg.field(at + PCI_EXP_LNKCAP2, 4, ((1 << (speed + 1)) - 2) & 0xfe);
      cfg.field(at + PCI_EXP_LNKCTL2, 2, speed);
    },
  };
}

export interface MsixCapOptions {
  /** 1..2048. */
  vectors: number;
  /** BAR index holding the table and the PBA. */
  bar: number;
  /** Byte offsets in that BAR, 8-byte aligned. */
  table: number;
  pba: number;
}

/** MSI-X capability. The host emulates the table and PBA; the device only raises vectors. */
export function msixCap(o: MsixCapOptions): Capability {
  const layout: MsixLayout = { vectors: o.vectors, bar: o.bar, table: o.table, pba: o.pba };
  return {
    id: PCI_CAP_ID_MSIX,
    name: 'msix',
    size: PCI_MSIX_SIZEOF,
    msix: layout,
    build(cfg: ConfigImage, at: number, ctx: CapContext) {
      checkMsix(layout, ctx);
      cfg.field(at + PCI_MSIX_FLAGS, 2, o.vectors - 1, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
      cfg.field(at + PCI_MSIX_TABLE, 4, (o.table | o.bar) >>> 0);
      cfg.field(at + PCI_MSIX_PBA, 4, (o.pba | o.bar) >>> 0);
    },
  };
}

/** Bytes of the MSI-X table and PBA for `vectors` vectors. */
export function msixSizes(vectors: number): { table: number; pba: number } {
  return { table: vectors * PCI_MSIX_ENTRY_SIZE, pba: Math.ceil(vectors / 64) * 8 };
}

function checkMsix(m: MsixLayout, ctx: CapContext): void {
  const bad = (why: string): never => {
    throw new Error(`pciConfig: MSI-X ${why}`);
  };
  if (!Number.isInteger(m.vectors) || m.vectors < 1 || m.vectors > PCI_MSIX_MAX_VECTORS) {
    bad(`vectors ${m.vectors} is not 1..${PCI_MSIX_MAX_VECTORS}`);
  }
  const bar = ctx.bars.find((b) => b.index === m.bar);
  if (!bar) bad(`BAR ${m.bar} is not declared`);
  if (bar!.kind === 'io') bad(`BAR ${m.bar} is an I/O BAR`);
  if (m.table % 8 || m.pba % 8)
    bad('table and PBA offsets must be 8-byte aligned (the low 3 bits are the BIR)');
  const s = msixSizes(m.vectors);
  if (m.table + s.table > bar!.size) bad(`table does not fit in BAR ${m.bar}`);
  if (m.pba + s.pba > bar!.size) bad(`PBA does not fit in BAR ${m.bar}`);
  if (m.table < m.pba + s.pba && m.pba < m.table + s.table) bad('table and PBA overlap');
}

export interface PmCapOptions {
  /** No_Soft_Reset: D3hot -> D0 keeps the device's state. Default true: ours never resets then. */
  noSoftReset?: boolean;
}

/** Power Management capability: D0 and D3hot only, no PME. */
export function pmCap(o: PmCapOptions = {}): Capability {
  return {
    id: PCI_CAP_ID_PM,
    name: 'pm',
    size: PCI_PM_SIZEOF,
    build(cfg: ConfigImage, at: number) {
      cfg.field(at + PCI_PM_PMC, 2, PCI_PM_CAP_VER_1_2);
      cfg.field(
        at + PCI_PM_CTRL,
        2,
        o.noSoftReset === false ? 0 : PCI_PM_CTRL_NO_SOFT_RESET,
        PCI_PM_CTRL_STATE_MASK,
      );
    },
  };
}

/** Vendor-specific capability: byte 2 is its length, then `body` (read-only unless `wmask`). */
export function vendorCap(body: Uint8Array, name = 'vendor', wmask?: Uint8Array): Capability {
  const size = 3 + body.length;
  if (size > 255) throw new Error(`pciConfig: vendor capability ${name} is over 255 bytes`);
  return {
    id: PCI_CAP_ID_VNDR,
    name,
    size,
    build(cfg: ConfigImage, at: number) {
      cfg.field(at + 2, 1, size);
      cfg.image.set(body, at + 3);
      if (wmask) cfg.wmask.set(wmask.subarray(0, body.length), at + 3);
    },
  };
}
