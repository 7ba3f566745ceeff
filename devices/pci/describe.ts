// The DeviceDescription sent in Attach: config space, masks, BARs with their initial shadow and
// their volatile and doorbell ranges. The host builds the PCI function from this and nothing else.
import { type DeviceDescription, long, pcinet } from '../../proto/wire.js';
import type { BarKindName, PciConfig } from './config.js';
import type { Span } from './registers.js';

export interface BarContents {
  index: number;
  /** Power-on contents; trailing zeros are not sent. */
  shadow: Uint8Array;
  volatile?: readonly Span[];
  doorbell?: readonly Span[];
}

const KIND: Record<BarKindName, pcinet.BarKind> = {
  mem32: pcinet.BarKind.BAR_MEM32,
  mem64: pcinet.BarKind.BAR_MEM64,
  io: pcinet.BarKind.BAR_IO,
};

function trimZeros(b: Uint8Array): Uint8Array {
  let n = b.length;
  while (n > 0 && b[n - 1] === 0) n--;
  return b.slice(0, n);
}

const ranges = (s: readonly Span[] = []) =>
  s.map((r) => ({ offset: long(r.offset), length: long(r.length) }));

/** Builds the description. Every BAR of `config` needs its contents; throws otherwise (our bug). */
export function describe(model: string, config: PciConfig, bars: readonly BarContents[]): DeviceDescription {
  const out: pcinet.IBar[] = config.bars.map((b) => {
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
      kind: KIND[b.kind],
      prefetchable: b.prefetchable ?? false,
      size: long(b.size),
      shadow: trimZeros(c.shadow),
      volatile: ranges(c.volatile),
      doorbell: ranges(c.doorbell),
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
