// virtio-rng driven as Linux's virtio-rng drives it: one buffer posted at a time, filled by the
// device from its entropy source; both with and without host-ended virtqueue rounds.
import { describe, expect, it } from 'vitest';
import { walkCaps } from '../pci/config.js';
import { rd16, rd32 } from '../pci/le.js';
import { FakeVirtioDriver } from '../virtio/fake-driver.js';
import { type EntropySource, RNG_MAX_REQUEST, VirtioRng } from './device.js';

/** A source whose bytes say where they came from: 0, 1, 2 … across calls. */
class Counting implements EntropySource {
  next = 0;
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i++) buf[i] = this.next++ & 0xff;
  }
}
const counting = (from: number, n: number) => Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);

describe.each([true, false])('virtio-rng, host ends rounds: %s', (rounds) => {
  const driver = () => {
    const source = new Counting();
    const d = new FakeVirtioDriver(new VirtioRng({ source }), { rounds, memory: 1 << 20 });
    d.setupQueues(1);
    return { d, source };
  };

  it('is an entropy device: 1af4:1044, class ff0000, no device configuration, no features of its own', () => {
    const { d } = driver();
    const cfg = d.dev.config.image;
    expect([rd16(cfg, 0), rd16(cfg, 2), rd32(cfg, 8) >>> 8]).toEqual([0x1af4, 0x1044, 0xff0000]);
    const vendor = walkCaps(cfg).filter((c) => c.id === 0x09);
    expect(vendor.map((c) => cfg[c.offset + 3])).toEqual([1, 2, 3]);
    expect(d.deviceFeatures() & 0xffffffn).toBe(0n);
  });

  it('fills each posted buffer from the source, reports its length, interrupts', async () => {
    const { d } = driver();
    const a = d.chain(0, 0, [{ room: 64 }])[0]!;
    d.offer(0, 0);
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: 0, len: 64 }]);
    expect(d.read(a, 64)).toEqual(counting(0, 64));
    const [b1, b2] = d.chain(0, 1, [{ room: 16 }, { room: 32 }]);
    d.offer(0, 1);
    await d.until(() => d.usedIdx(0) === 2);
    expect(d.used(0)).toEqual([{ id: 1, len: 48 }]);
    expect([...d.read(b1!, 16), ...d.read(b2!, 32)]).toEqual([...counting(64, 48)]);
    await d.bus.settle();
    expect(d.host.interrupts.filter((v) => v === 1).length).toBeGreaterThanOrEqual(1);
    expect(d.dev.counters()).toEqual({ requests: 2, bytes: 112 });
  });

  it('gives at most RNG_MAX_REQUEST bytes per buffer', async () => {
    const { d, source } = driver();
    d.chain(0, 0, [{ room: RNG_MAX_REQUEST + 4096 }]);
    d.offer(0, 0);
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: 0, len: RNG_MAX_REQUEST }]);
    expect(source.next).toBe(RNG_MAX_REQUEST);
  });

  it('traces a device-readable buffer (the driver must not give one) and still fills the rest', async () => {
    const { d } = driver();
    d.chain(0, 0, [{ data: new Uint8Array(8) }, { room: 8 }]);
    d.offer(0, 0);
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: 0, len: 8 }]);
    expect(d.host.traced('virtio-rng.readable-buffer')).toBe(1);
  });
});
