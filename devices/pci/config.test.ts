import { expect, describe as group, it } from 'vitest';
import {
  msixCap,
  PCI_EXP_DEVCAP,
  PCI_EXP_DEVCAP_FLR,
  PCI_EXP_DEVCTL,
  PCI_EXP_DEVSTA,
  PCI_EXP_FLAGS,
  PCI_MSIX_FLAGS,
  PCI_MSIX_PBA,
  PCI_MSIX_TABLE,
  PCI_PM_CTRL,
  PCI_PM_PMC,
  pcieCap,
  pmCap,
  vendorCap,
} from './caps.js';
import {
  PCI_BASE_ADDRESS_0,
  PCI_CAP_ID_EXP,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_PM,
  PCI_CAP_ID_VNDR,
  PCI_CAPABILITY_LIST,
  PCI_COMMAND,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_STATUS,
  type PciConfigOptions,
  pciConfig,
  walkCaps,
} from './config.js';
import { describe } from './describe.js';
import { rd8, rd16, rd32 } from './le.js';

const base = (over: Partial<PciConfigOptions> = {}): PciConfigOptions => ({
  vendorId: 0x7063,
  deviceId: 0x00aa,
  classCode: 0x020000,
  bars: [
    { index: 0, kind: 'mem64', size: 0x4000 },
    { index: 2, kind: 'mem32', size: 0x1000, prefetchable: true },
    { index: 3, kind: 'io', size: 0x20 },
  ],
  caps: [pcieCap({ type: 'endpoint' }), msixCap({ vectors: 5, bar: 0, table: 0x2000, pba: 0x3000 }), pmCap()],
  ...over,
});

group('pciConfig', () => {
  it('chains capabilities from 0x40 in declaration order, DWORD aligned, ending in 0', () => {
    const c = pciConfig(base());
    expect(rd16(c.image, PCI_STATUS) & 0x10).toBe(0x10);
    expect(rd8(c.image, PCI_CAPABILITY_LIST)).toBe(0x40);
    expect(walkCaps(c.image)).toEqual([
      { id: PCI_CAP_ID_EXP, offset: 0x40 },
      { id: PCI_CAP_ID_MSIX, offset: 0x7c },
      { id: PCI_CAP_ID_PM, offset: 0x88 },
    ]);
    expect(rd8(c.image, 0x88 + 1)).toBe(0);
    expect(c.caps.map((x) => x.name)).toEqual(['pcie', 'msix', 'pm']);
  });

  it('rounds odd capability sizes up to a DWORD', () => {
    const c = pciConfig(base({ caps: [vendorCap(new Uint8Array([1, 2])), pmCap()] }));
    expect(walkCaps(c.image)).toEqual([
      { id: PCI_CAP_ID_VNDR, offset: 0x40 },
      { id: PCI_CAP_ID_PM, offset: 0x48 },
    ]);
    expect([...c.image.subarray(0x42, 0x45)]).toEqual([5, 1, 2]);
  });

  it('writes MSI-X table size N-1, table and PBA BIR+offset; enable and mask-all are the only writable bits', () => {
    const c = pciConfig(base());
    const at = 0x7c;
    expect(rd16(c.image, at + PCI_MSIX_FLAGS)).toBe(4);
    expect(rd32(c.image, at + PCI_MSIX_TABLE)).toBe(0x2000);
    expect(rd32(c.image, at + PCI_MSIX_PBA)).toBe(0x3000);
    expect(rd16(c.wmask, at + PCI_MSIX_FLAGS)).toBe(0xc000);
    expect(rd32(c.wmask, at + PCI_MSIX_TABLE)).toBe(0);
    expect(c.msix).toEqual({ vectors: 5, bar: 0, table: 0x2000, pba: 0x3000 });
    const onBar2 = pciConfig(base({ caps: [msixCap({ vectors: 1, bar: 2, table: 0x800, pba: 0x810 })] }));
    expect(rd32(onBar2.image, 0x40 + PCI_MSIX_TABLE)).toBe(0x802);
    expect(rd32(onBar2.image, 0x40 + PCI_MSIX_PBA)).toBe(0x812);
  });

  it('command and status masks: space enables, bus master, parity, SERR, INTx disable; status errors RW1C', () => {
    const c = pciConfig(base());
    expect(rd16(c.wmask, PCI_COMMAND)).toBe(0x0547);
    expect(rd16(c.w1cmask, PCI_COMMAND)).toBe(0);
    expect(rd16(c.wmask, PCI_STATUS)).toBe(0);
    expect(rd16(c.w1cmask, PCI_STATUS)).toBe(0xf900);
    // No I/O BAR: I/O Space Enable is hardwired to 0.
    const memOnly = pciConfig(base({ bars: [{ index: 0, kind: 'mem64', size: 0x4000 }] }));
    expect(rd16(memOnly.wmask, PCI_COMMAND)).toBe(0x0546);
    expect(rd8(c.wmask, PCI_INTERRUPT_LINE)).toBe(0xff);
    expect(rd8(c.image, PCI_INTERRUPT_PIN)).toBe(0);
    expect(rd8(pciConfig(base({ interruptPin: 1 })).image, PCI_INTERRUPT_PIN)).toBe(1);
  });

  it('BAR registers hold flag bits only and are not writable', () => {
    const c = pciConfig(base());
    expect(rd32(c.image, PCI_BASE_ADDRESS_0)).toBe(0x4);
    expect(rd32(c.image, PCI_BASE_ADDRESS_0 + 4)).toBe(0);
    expect(rd32(c.image, PCI_BASE_ADDRESS_0 + 8)).toBe(0x8);
    expect(rd32(c.image, PCI_BASE_ADDRESS_0 + 12)).toBe(0x1);
    for (let off = 0x10; off < 0x28; off++) expect(c.wmask[off]).toBe(0);
  });

  it('PCIe capability v2 endpoint: FLR capable, device control writable with FLR, device status RW1C', () => {
    const c = pciConfig(base());
    const at = 0x40;
    expect(rd16(c.image, at + PCI_EXP_FLAGS)).toBe(0x0002);
    expect(rd32(c.image, at + PCI_EXP_DEVCAP) & PCI_EXP_DEVCAP_FLR).toBe(PCI_EXP_DEVCAP_FLR);
    expect(rd16(c.image, at + PCI_EXP_DEVCTL)).toBe(0x2810);
    expect(rd16(c.wmask, at + PCI_EXP_DEVCTL)).toBe(0xf9ff);
    expect(rd16(c.w1cmask, at + PCI_EXP_DEVSTA)).toBe(0x000f);
    const noFlr = pciConfig(base({ caps: [pcieCap({ type: 'endpoint', flr: false })] }));
    expect(rd32(noFlr.image, at + PCI_EXP_DEVCAP) & PCI_EXP_DEVCAP_FLR).toBe(0);
    expect(rd16(noFlr.wmask, at + PCI_EXP_DEVCTL) & 0x8000).toBe(0);
  });

  it('PM capability: version 1.2, D0/D3hot via PowerState, no PME, No_Soft_Reset', () => {
    const c = pciConfig(base());
    expect(rd16(c.image, 0x88 + PCI_PM_PMC)).toBe(3);
    expect(rd16(c.image, 0x88 + PCI_PM_CTRL)).toBe(0x0008);
    expect(rd16(c.wmask, 0x88 + PCI_PM_CTRL)).toBe(0x0003);
  });

  it('uses extended config space with PCIe, 256 bytes without', () => {
    expect(pciConfig(base()).image.length).toBe(4096);
    expect(pciConfig(base({ caps: [pmCap()] })).image.length).toBe(256);
    expect(pciConfig(base({ caps: [] })).image[PCI_STATUS] & 0x10).toBe(0);
  });

  it.each([
    [
      'used twice',
      {
        bars: [
          { index: 0, kind: 'mem64', size: 16 },
          { index: 1, kind: 'mem32', size: 16 },
        ],
      },
    ],
    ['needs slot 6', { bars: [{ index: 5, kind: 'mem64', size: 16 }] }],
    ['not a power of two', { bars: [{ index: 0, kind: 'mem32', size: 0x3000 }] }],
    ['not a power of two >= 16', { bars: [{ index: 0, kind: 'mem32', size: 8 }] }],
    ['table does not fit', { caps: [msixCap({ vectors: 2048, bar: 0, table: 0, pba: 0x3f00 })] }],
    ['overlap', { caps: [msixCap({ vectors: 8, bar: 0, table: 0x2000, pba: 0x2040 })] }],
    ['BAR 4 is not declared', { caps: [msixCap({ vectors: 8, bar: 4, table: 0, pba: 0x100 })] }],
    ['8-byte aligned', { caps: [msixCap({ vectors: 8, bar: 0, table: 0x2004, pba: 0x3000 })] }],
    ['given twice', { caps: [pmCap(), pmCap()] }],
    ['do not fit in 256 bytes', { caps: Array.from({ length: 5 }, () => vendorCap(new Uint8Array(50))) }],
  ] as [string, Partial<PciConfigOptions>][])('refuses a declaration where %s', (why, over) => {
    expect(() => pciConfig(base(over))).toThrow(why);
  });
});

group('describe', () => {
  it('carries config, masks, BARs with their contents and ranges, and the MSI-X vector count', () => {
    const c = pciConfig(base());
    const shadow = new Uint8Array(0x4000);
    shadow[4] = 7;
    const d = describe('x', c, [
      { index: 0, shadow, volatile: [{ offset: 0x40, length: 4 }], doorbell: [{ offset: 0x44, length: 4 }] },
      { index: 2, shadow: new Uint8Array(0x1000) },
      { index: 3, shadow: new Uint8Array(0x20) },
    ]);
    expect(d.model).toBe('x');
    expect(d.config).toEqual(c.image);
    expect(d.configWmask).toEqual(c.wmask);
    expect(d.configW1cmask).toEqual(c.w1cmask);
    expect(d.msixVectors).toBe(5);
    const [b0, b2, b3] = d.bars;
    expect(b0).toMatchObject({ index: 0, kind: 'mem64', prefetchable: false, size: 0x4000 });
    expect(b0.shadow).toEqual(shadow);
    expect(b0.shadow).not.toBe(shadow);
    expect(b0.volatile).toEqual([{ offset: 0x40, length: 4 }]);
    expect(b0.doorbell).toEqual([{ offset: 0x44, length: 4 }]);
    expect(b2.prefetchable).toBe(true);
    expect(b2.volatile).toEqual([]);
    expect(b3.kind).toBe('io');
  });

  it('refuses a BAR without contents or a range outside the BAR', () => {
    const c = pciConfig(base({ bars: [{ index: 0, kind: 'mem64', size: 0x4000 }], caps: [] }));
    expect(() => describe('x', c, [])).toThrow('no contents for BAR 0');
    expect(() =>
      describe('x', c, [{ index: 0, shadow: new Uint8Array(0), volatile: [{ offset: 0x3ffc, length: 8 }] }]),
    ).toThrow('outside the BAR');
  });
});
