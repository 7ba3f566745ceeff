// The virtio-pci core as Linux's virtio_pci_modern sees it: capabilities it accepts, for devices
// with and without device-specific configuration.
import { describe, expect, it } from 'vitest';
import { walkCaps } from '../pci/config.js';
import { checkVirtioCaps, FakeBus } from '../pci/fake-host.js';
import { FakeVirtioDriver } from './fake-driver.js';
import { type ChainRequest, DEVICE_CFG, VirtioPciDevice } from './pci.js';
import type { SplitQueue } from './virtqueue.js';

/** A device with one queue that does nothing, and `configSize` bytes of device config. */
class Bare extends VirtioPciDevice<Bare> {
  constructor(configSize: number) {
    super({
      model: 'bare',
      deviceType: 4, // entropy: needs no device config
      queues: [{ size: 64 }],
      config: configSize ? [{ name: 'X', at: 0, size: 1, access: 'ro' }] : [],
      configSize,
    });
  }
  protected override async serviceQueue(_q: number, _ring: SplitQueue): Promise<void> {}
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

/** A device whose one queue is served by the core's loop: it fills each chain's writable part with
 *  `fill` bytes, at once or (async) when the test answers. */
class Echo extends VirtioPciDevice<Echo> {
  async = false;
  readonly held: { req: ChainRequest; answer: (n: number) => void }[] = [];
  readonly served: number[] = [];

  constructor() {
    super({ model: 'echo', deviceType: 63, queues: [{ size: 16, serve: (d, req) => d.#serve(req) }] });
  }

  #serve(req: ChainRequest): number | Promise<number> {
    this.served.push(req.chain.head);
    if (req.readable > 0) return req.read().then(() => req.write(new Uint8Array(req.writable).fill(0xee)));
    if (!this.async) return req.write(new Uint8Array(req.writable).fill(0xee));
    return new Promise((answer) => this.held.push({ req, answer }));
  }
}

describe.each([true, false])('serving chains (VirtioQueue.serve), host ends rounds: %s', (rounds) => {
  const driver = (queueSize = 16) => {
    const d = new FakeVirtioDriver(new Echo(), { rounds, queueSize });
    d.setupQueues(1);
    return d;
  };
  const vector1 = (d: FakeVirtioDriver<Echo>) => d.host.interrupts.filter((v) => v === 1).length;

  it('serves each chain; the used length is what the handler returned; the driver is interrupted', async () => {
    const d = driver();
    const bufs = [0, 1, 2].map((h) => d.chain(0, h, [{ room: 8 + h }])[0]!);
    d.offer(0, 0, 1, 2);
    await d.until(() => d.dev.served.length === 3);
    await d.bus.settle();
    expect(d.used(0)).toEqual([
      { id: 0, len: 8 },
      { id: 1, len: 9 },
      { id: 2, len: 10 },
    ]);
    expect([...d.read(bufs[2]!, 10)]).toEqual(new Array(10).fill(0xee));
    expect(vector1(d)).toBeGreaterThanOrEqual(1);
  });

  it('async answers complete in any order, each chain once, and interrupt', async () => {
    const d = driver();
    d.dev.async = true;
    for (const h of [0, 1, 2]) d.chain(0, h, [{ room: 4 }]);
    d.offer(0, 0, 1, 2);
    await d.until(() => d.dev.held.length === 3);
    expect(d.used(0)).toEqual([]);
    const before = vector1(d);
    d.dev.held[2]!.answer(d.dev.held[2]!.req.write(Uint8Array.of(1, 2)));
    d.dev.held[0]!.answer(0);
    await d.until(() => d.usedIdx(0) === 2 && vector1(d) > before);
    expect(d.used(0)).toEqual([
      { id: 2, len: 2 },
      { id: 0, len: 0 },
    ]);
    d.dev.held[1]!.answer(3);
    await d.until(() => d.usedIdx(0) === 3);
    expect(d.dev.served).toEqual([0, 1, 2]);
  });

  it('never has more chains in flight than the queue has entries; the rest wait for room', async () => {
    const d = driver(4);
    d.dev.async = true;
    for (const h of [0, 1, 2, 3]) d.chain(0, h, [{ room: 4 }]);
    d.offer(0, 0, 1, 2, 3);
    await d.until(() => d.dev.held.length === 4);
    d.offer(0, 0, 1); // a driver reusing descriptors it has not got back: served only as room frees
    for (let i = 0; i < 10; i++) await d.bus.settle();
    expect(d.dev.held).toHaveLength(4);
    d.dev.held[0]!.answer(0);
    await d.until(() => d.dev.held.length === 5);
    for (const h of d.dev.held.slice(1)) h.answer(0);
    await d.until(() => d.dev.held.length === 6);
    d.dev.held[5]!.answer(0);
    await d.until(() => d.usedIdx(0) === 6);
  });

  it('a reset abandons chains in flight: their late answers write nothing', async () => {
    const d = driver();
    d.dev.async = true;
    d.chain(0, 0, [{ room: 4 }]);
    d.offer(0, 0);
    await d.until(() => d.dev.held.length === 1);
    d.status(0);
    const events = d.host.events.length;
    d.dev.held[0]!.answer(d.dev.held[0]!.req.write(Uint8Array.of(9)));
    for (let i = 0; i < 5; i++) await d.bus.settle();
    expect(d.host.events.slice(events)).toEqual([]);
    expect(d.usedIdx(0)).toBe(0);
  });

  it('a chain whose bytes the host refuses is traced and returned empty', async () => {
    const d = driver();
    d.chain(0, 1, [{ room: 4 }]);
    d.desc(0, 0, 0x10n, 64, 1, 1); // a readable buffer at an address the host never mapped
    d.offer(0, 0);
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: 0, len: 0 }]);
    expect(d.host.traced('virtio.chain.failed')).toBe(1);
  });

  it('suppresses interrupts with the event index', async () => {
    const d = driver();
    d.usedEvent(0, 2); // interrupt only when used idx passes 2
    for (let h = 0; h < 3; h++) {
      d.chain(0, h, [{ room: 4 }]);
      d.offer(0, h);
      await d.until(() => d.dev.served.length === h + 1);
      await d.bus.settle();
      expect(vector1(d)).toBe(h < 2 ? 0 : 1);
    }
    expect(d.availEvent(0)).toBe(3);
  });

  it('decides an async answer’s interrupt from used_event as it is after the answer, not before', async () => {
    const d = driver();
    d.dev.async = true;
    d.usedEvent(0, 5); // no interrupt wanted when the chain is taken
    d.chain(0, 0, [{ room: 4 }]);
    d.offer(0, 0);
    await d.until(() => d.dev.held.length === 1);
    d.usedEvent(0, 0); // then the driver asks for one at the next used entry
    d.dev.held[0]!.answer(4);
    await d.until(() => vector1(d) === 1);
    expect(d.usedIdx(0)).toBe(1);
  });

  // Only the host's round recheck finds such a chain (without rounds the device re-reads its ring,
  // and no test of a kick applies): defined for that mode only, not skipped in the other.
  if (!rounds) return;
  it('a chain made available without a notify while the device was busy is served', async () => {
    const d = driver();
    d.dev.async = true;
    for (const h of [0, 1]) d.chain(0, h, [{ room: 4 }]);
    d.offer(0, 0);
    await d.until(() => d.dev.held.length === 1);
    d.offerQuietly(0, 1); // the driver read avail_event before the device moved it: no notify
    d.dev.held[0]!.answer(0);
    await d.until(() => d.dev.held.length === 2);
    expect(d.host.events.filter((e) => e.kind === 'kick')).toHaveLength(1);
  });
});
