// The virtio-pci core as Linux's virtio_pci_modern sees it: capabilities it accepts, for devices
// with and without device-specific configuration.
import { describe, expect, it } from 'vitest';
import { walkCaps } from '../pci/config.js';
import { checkVirtioCaps, FakeBus } from '../pci/fake-host.js';
import { DEVICE_CFG, VirtioPciDevice } from './pci.js';
import type { SplitQueue } from './virtqueue.js';

/** A device with one queue that does nothing, and `configSize` bytes of device config. */
class Bare extends VirtioPciDevice<Bare> {
  constructor(configSize: number) {
    super({
      model: 'bare',
      deviceType: 4, // entropy: needs no device config
      classCode: 0xff0000,
      features: 0n,
      queueSizes: [64],
      config: configSize ? [{ name: 'X', at: 0, size: 1, access: 'ro' }] : [],
      configSize,
    });
  }
  protected async serviceQueue(_q: number, _ring: SplitQueue): Promise<void> {}
  protected onDeviceReset(): void {}
}

const vendorCaps = (d: Bare) => {
  const cfg = d.description.config;
  return walkCaps(cfg)
    .filter((c) => c.id === 0x09)
    .map((c) => cfg[c.offset + 3]);
};

describe('virtio-pci capabilities', () => {
  it('a device without device config has no device-config capability, and binds', () => {
    const d = new Bare(0);
    expect(vendorCaps(d)).toEqual([1, 2, 3]);
    expect(() => new FakeBus(d)).not.toThrow();
  });

  it('a device with device config has it, at DEVICE_CFG', () => {
    const d = new Bare(4);
    expect(vendorCaps(d)).toEqual([1, 2, 3, 4]);
    const cfg = d.description.config;
    const cap = walkCaps(cfg).find((c) => c.id === 0x09 && cfg[c.offset + 3] === 4)!;
    expect([cfg[cap.offset + 8]! | (cfg[cap.offset + 9]! << 8), cfg[cap.offset + 12]]).toEqual([
      DEVICE_CFG,
      4,
    ]);
    expect(() => checkVirtioCaps(d)).not.toThrow();
  });

  it('refuses what Linux refuses: a zero-length structure, a missing one, one past its BAR', () => {
    const d = new Bare(4);
    const cfg = d.description.config;
    const caps = walkCaps(cfg).filter((c) => c.id === 0x09);
    const device = caps.find((c) => cfg[c.offset + 3] === 4)!;
    const saved = cfg.slice();
    cfg.fill(0, device.offset + 12, device.offset + 16);
    expect(() => checkVirtioCaps(d)).toThrow(/bad capability len 0/);
    cfg.set(saved);
    cfg[device.offset + 8] = 0xff;
    cfg[device.offset + 9] = 0xff;
    expect(() => checkVirtioCaps(d)).toThrow(/past BAR 0/);
    cfg.set(saved);
    const isr = caps.find((c) => cfg[c.offset + 3] === 3)!;
    cfg[isr.offset + 3] = 9; // no longer an ISR capability
    expect(() => checkVirtioCaps(d)).toThrow(/no ISR capability/);
    cfg.set(saved);
  });
});
