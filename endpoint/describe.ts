// A device model's description (devices/description.ts) as the wire's DeviceDescription, sent in
// Attach. Models know nothing of the encoding; this is where their plain numbers and names become
// protobuf fields, and (modelDescription) where a recorded Attach becomes a description again.
import type { BarDescription, DeviceDescription } from '../devices/description.js';
import type { BarKindName } from '../devices/pci/config.js';
import type { Span } from '../devices/pci/registers.js';
import type { PushRule } from '../devices/push.js';
import { long, num, pcinet, u64 } from '../proto/wire.js';

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

const NAMES = new Map(Object.entries(KIND).map(([name, k]) => [k, name as BarKindName]));

/** A wire description (a recorded Attach's) as a model's. Throws Error naming what is wrong with
 *  it; the host checks the rest when it builds the function. */
export function modelDescription(w: pcinet.IDeviceDescription): DeviceDescription {
  const config = w.config ?? new Uint8Array(0);
  if (config.length !== 256 && config.length !== 4096)
    throw new Error(`its config space has ${config.length} bytes, not 256 or 4096`);
  const wmask = w.configWmask ?? new Uint8Array(0);
  const w1c = w.configW1cmask ?? new Uint8Array(0);
  if (wmask.length !== config.length || w1c.length !== config.length)
    throw new Error('its config masks are not as long as its config space');
  const bars = (w.bars ?? []).map((b): BarDescription => {
    const kind = NAMES.get(b.kind ?? pcinet.BarKind.BAR_NONE);
    if (!kind) throw new Error(`BAR ${b.index ?? 0} has no kind`);
    const size = num(b.size, 'BAR size');
    const shadow = b.shadow ?? new Uint8Array(0);
    if (shadow.length > size) throw new Error(`BAR ${b.index ?? 0}: contents past its ${size} bytes`);
    const spans = (r: pcinet.IRange[] | null | undefined) =>
      (r ?? []).map((x) => ({
        offset: num(x.offset, 'range offset'),
        length: num(x.length, 'range length'),
      }));
    return {
      index: b.index ?? 0,
      kind,
      prefetchable: b.prefetchable ?? false,
      size,
      shadow,
      volatile: spans(b.volatile),
      doorbell: spans(b.doorbell),
    };
  });
  return {
    model: w.model ?? '',
    config,
    configWmask: wmask,
    configW1cmask: w1c,
    bars,
    msixVectors: w.msixVectors ?? 0,
  };
}

/** A model's push rule as the wire's PushRule (kind NONE removes rule `id`). */
export function pushRuleMsg(dev: number, id: number, r: PushRule | undefined): pcinet.IPushRule {
  if (!r) return { dev, id, kind: pcinet.PushKind.PUSH_NONE };
  if (r.kind === 'nvme-sq') {
    return {
      dev,
      id,
      kind: pcinet.PushKind.PUSH_NVME_SQ,
      bar: r.bar,
      offset: long(r.doorbell),
      ring: long(r.base),
      entries: r.entries,
      dataMax: r.dataMax,
      lbaShift: r.lbaShift,
      ...(r.eventIdx !== undefined ? { avail: long(r.eventIdx) } : {}),
      ...(r.shadow !== undefined ? { shadow: long(r.shadow) } : {}),
    };
  }
  return {
    dev,
    id,
    kind: pcinet.PushKind.PUSH_VIRTQ,
    bar: r.bar,
    offset: long(r.notify),
    ring: long(r.desc),
    avail: long(r.avail),
    entries: r.size,
    dataMax: r.dataMax,
    indirect: r.indirect,
  };
}

const PUSH_KINDS = pcinet.PushKind;

/** The wire's PushRule as a model's (a recorded one, for the replay); undefined for kind NONE. */
export function pushRule(r: pcinet.IPushRule): PushRule | undefined {
  switch (r.kind ?? PUSH_KINDS.PUSH_NONE) {
    case PUSH_KINDS.PUSH_NVME_SQ: {
      const eventIdx = u64(r.avail);
      return {
        kind: 'nvme-sq',
        bar: r.bar ?? 0,
        doorbell: num(r.offset),
        base: u64(r.ring),
        entries: r.entries ?? 0,
        dataMax: r.dataMax ?? 0,
        lbaShift: r.lbaShift ?? 0,
        // An event index is never at IOVA 0 (page 0 is never mapped): 0 is "none".
        ...(eventIdx !== 0n ? { eventIdx } : {}),
      };
    }
    case PUSH_KINDS.PUSH_VIRTQ:
      return {
        kind: 'virtq',
        bar: r.bar ?? 0,
        notify: num(r.offset),
        desc: u64(r.ring),
        avail: u64(r.avail),
        size: r.entries ?? 0,
        dataMax: r.dataMax ?? 0,
        indirect: r.indirect ?? false,
      };
    default:
      return undefined;
  }
}
