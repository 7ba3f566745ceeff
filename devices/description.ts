// What a device model tells its host about itself: config space with its masks and the BARs with
// their power-on contents and access ranges. Plain data; the endpoint translates it to the wire's
// DeviceDescription (endpoint/describe.ts). The host builds the PCI function from this and nothing else.
import type { BarKindName } from './pci/config.js';
import type { Span } from './pci/registers.js';

export interface BarDescription {
  /** 0..5; a mem64 BAR also occupies index + 1. */
  index: number;
  kind: BarKindName;
  prefetchable: boolean;
  /** Bytes; a power of two, at least 16. */
  size: number;
  /** Power-on contents; may be shorter than `size`, the rest is zero. */
  shadow: Uint8Array;
  /** Reads go to the device synchronously (mmioRead). */
  volatile: readonly Span[];
  /** Writes change no readable state: the host need not wait for them before serving a read. */
  doorbell: readonly Span[];
}

export interface DeviceDescription {
  /** "test", "nvme", "virtio-net" … */
  model: string;
  /** Config space image, 256 or 4096 bytes; the BAR registers hold flag bits only. */
  config: Uint8Array;
  /** Same length as `config`: the bits the driver may write. */
  configWmask: Uint8Array;
  /** Same length as `config`: the bits a driver write of 1 clears. */
  configW1cmask: Uint8Array;
  bars: readonly BarDescription[];
  /** Matches the MSI-X capability in `config`; 0 without one. */
  msixVectors: number;
}
