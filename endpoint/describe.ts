// A device model's description (devices/description.ts) as the wire's DeviceDescription, sent in
// Attach. Models know nothing of the encoding; this is where their plain numbers and names become
// protobuf fields.
import type { DeviceDescription } from '../devices/description.js';
import type { BarKindName } from '../devices/pci/config.js';
import type { Span } from '../devices/pci/registers.js';
import { long, pcinet } from '../proto/wire.js';

const KIND: Record<BarKindName, pcinet.BarKind> = {
  mem32: pcinet.BarKind.BAR_MEM32,
  mem64: pcinet.BarKind.BAR_MEM64,
  io: pcinet.BarKind.BAR_IO,
};

/** The shadow up to its last non-zero byte: the host fills the rest of the BAR with zeros. */
function trimZeros(b: Uint8Array): Uint8Array {
  let n = b.length;
  while (n > 0 && b[n - 1] === 0) n--;
  return b.subarray(0, n);
}

const ranges = (s: readonly Span[]): pcinet.IRange[] =>
  s.map((r) => ({ offset: long(r.offset), length: long(r.length) }));

/** The Attach form of `d`. Shares byte arrays with `d` (encoding copies them). */
export function wireDescription(d: DeviceDescription): pcinet.IDeviceDescription {
  return {
    model: d.model,
    config: d.config,
    configWmask: d.configWmask,
    configW1cmask: d.configW1cmask,
    bars: d.bars.map((b) => ({
      index: b.index,
      kind: KIND[b.kind],
      prefetchable: b.prefetchable,
      size: long(b.size),
      shadow: trimZeros(b.shadow),
      volatile: ranges(b.volatile),
      doorbell: ranges(b.doorbell),
    })),
    msixVectors: d.msixVectors,
  };
}
