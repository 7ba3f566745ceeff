// The description of a PciDevice (devices/description.ts): config space, masks, BARs with their
// power-on contents and their volatile and doorbell ranges. The host builds the PCI function from
// this and nothing else.
import type { BarDescription, DeviceDescription } from '../description.js';
import type { PciConfig } from './config.js';
import type { Span } from './registers.js';

export interface BarContents {
  index: number;
  /** Power-on contents. */
  shadow: Uint8Array;
  volatile?: readonly Span[];
  doorbell?: readonly Span[];
}

const copy = (s: readonly Span[] = []): Span[] => s.map((r) => ({ offset: r.offset, length: r.length }));

/** Builds the description. Every BAR of `config` needs its contents; throws otherwise (our bug). */
export function describe(model: string, config: PciConfig, bars: readonly BarContents[]): DeviceDescription {
  const out: BarDescription[] = config.bars.map((b) => {
    const c = bars.find((x) => x.index === b.index);
    if (!c) throw new Error(`describe: no contents for BAR ${b.index}`);
    if (c.shadow.length > b.size) throw new Error(`describe: BAR ${b.index} contents exceed ${b.size} bytes`);
    for (const r of [...(c.volatile ?? []), ...(c.doorbell ?? [])]) {
      if (r.offset < 0 || r.length <= 0 || r.offset + r.length > b.size) {
        throw new Error(`describe: BAR ${b.index} range [${r.offset}, +${r.length}) is outside the BAR`);
      }
    }
    return {
      index: b.index,
      kind: b.kind,
      prefetchable: b.prefetchable ?? false,
      size: b.size,
      shadow: c.shadow.slice(),
      volatile: copy(c.volatile),
      doorbell: copy(c.doorbell),
    };
  });
  return {
    model,
    config: config.image.slice(),
    configWmask: config.wmask.slice(),
    configW1cmask: config.w1cmask.slice(),
    bars: out,
    msixVectors: config.msix?.vectors ?? 0,
  };
}
