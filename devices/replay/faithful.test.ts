// The replay's promise (docs/devices.md, "Record and replay"): the live driver gets the bytes the
// recorded device gave, or a divergence is reported first. Each test here builds a session where a
// replay could give other bytes without saying so, and checks which of the two happens.
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { FakeBus, FakeHost } from '../pci/fake-host.js';
import { leBytes } from '../pci/le.js';
import { TestDevice } from '../test/device.js';
import { CMD, TEST_REG_BAR as R, REG, testPattern } from '../test/regs.js';
import { FakeVirtioDriver } from '../virtio/fake-driver.js';
import { CC, NOTIFY } from '../virtio/pci.js';
import { VRING_DESC_F_WRITE } from '../virtio/virtqueue.js';
import { type EntropySource, VirtioRng } from '../virtio-rng/device.js';
import { ReplayDevice } from './device.js';
import { Recorder } from './fake-recorder.js';
import type { ReplayRecord } from './records.js';

/** Entropy that is `words` (32-bit, little-endian) over and over. */
class Words implements EntropySource {
  #at = 0;
  readonly #bytes: number[];
  constructor(words: number[]) {
    this.#bytes = words.flatMap((w) => [...leBytes(w, 4)]);
  }
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i++) buf[i] = this.#bytes[this.#at++ % this.#bytes.length]!;
  }
}

/** Bytes that say where they came from: 0, 1, 2 … */
class Counting implements EntropySource {
  next = 0;
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i++) buf[i] = this.next++ & 0xff;
  }
}

/** One request of `room` bytes on queue 0; the bytes the device put there. */
async function rngRead(d: FakeVirtioDriver<VirtioRng>, room: number): Promise<number[]> {
  d.setupQueues(1);
  const [buf] = d.chain(0, 0, [{ room }]);
  d.offer(0, 0);
  await d.until(() => d.usedIdx(0) === 1, 50);
  return [...d.read(buf!, room)];
}

describe('what the replay gives the driver', () => {
  it('gives device data that merely looks like an address as it was recorded', async () => {
    // Entropy whose words lie in pages the recorded device used (its rings, at FakeHost's base
    // 0x1000_0000, and its buffer): as a disk's data, read by the recorded driver, can.
    const source = new Words([0x1000_0010, 0x1001_0004, 0xdead_beef, 0x1000_1000]);
    const rec = new Recorder(new VirtioRng({ source }));
    const recorded = await rngRead(new FakeVirtioDriver(rec as unknown as VirtioRng), 64);
    rec.detach();
    const dev = new ReplayDevice(rec.recording());
    // The live driver's memory is elsewhere: every address it gives the device differs.
    const d = new FakeVirtioDriver(dev as unknown as VirtioRng, { base: 0x4000_0000n });
    const live = await rngRead(d, 64);
    expect(dev.divergence).toBeUndefined();
    expect(live).toEqual(recorded);
  });
});

/** The test device's DMA read of 256 bytes at `src` (one 8-byte SRC_ADDR write): the CHECKSUM the
 *  driver reads after it. */
async function checksumOf(bus: FakeBus, host: FakeHost, src: bigint, data: Uint8Array): Promise<number> {
  host.memory.set(data, Number(src - host.base));
  bus.write64(R, REG.SRC_ADDR, src);
  bus.write32(R, REG.SIZE, data.length);
  bus.write32(R, REG.COMMAND, CMD.DMA_READ);
  await bus.settle();
  await bus.settle();
  return bus.read32(R, REG.CHECKSUM);
}

describe('what the replay gives the driver: registers', () => {
  it('gives a register value that merely looks like an address as it was recorded', async () => {
    // The recorded driver's buffer sits in the page its own checksum falls in: CHECKSUM then holds
    // a value in a page the recorded device used, though nobody gave it as an address.
    const data = testPattern(5, 256);
    const sum = crc32(data) >>> 0;
    const page = BigInt(sum) & ~0xfffn;
    const rec = new Recorder(new TestDevice());
    const host = new FakeHost({ base: page - 0x2000n });
    const recorded = await checksumOf(new FakeBus(rec, host), host, page, data);
    expect(recorded).toBe(sum);
    rec.detach();
    const dev = new ReplayDevice(rec.recording());
    const live = new FakeHost({ base: 0x7000_0000n });
    const got = await checksumOf(new FakeBus(dev, live), live, 0x7000_2040n, data);
    expect(dev.divergence).toBeUndefined();
    expect(got).toBe(recorded);
  });
});

describe('what the replay gives the driver: one recorded address, two live ones', () => {
  /** Two requests of 64 bytes, each waited for: the first with descriptor 1, the second with
   *  descriptor 0 (a driver's free list); `buffers` are their buffers. The bytes of the second. */
  async function twoRequests(d: FakeVirtioDriver<VirtioRng>, buffers: [bigint, bigint]): Promise<number[]> {
    d.desc(0, 1, buffers[0], 64, VRING_DESC_F_WRITE);
    d.offer(0, 1);
    await d.until(() => d.usedIdx(0) === 1, 50);
    d.desc(0, 0, buffers[1], 64, VRING_DESC_F_WRITE);
    d.offer(0, 0);
    await d.until(() => d.usedIdx(0) === 2, 50);
    return [...d.read(buffers[1], 64)];
  }

  it('reports an address the live run gave two values for at once, instead of guessing one', async () => {
    // Recorded: both requests used the same buffer, so when the second was made the descriptor
    // table held that address twice (descriptor 1 left from the first request). Live: the second
    // request has a buffer of its own; descriptor 1 still names the first one's.
    const rec = new Recorder(new VirtioRng({ source: new Counting() }));
    const r = new FakeVirtioDriver(rec as unknown as VirtioRng);
    r.setupQueues(1);
    const a = r.alloc(64);
    await twoRequests(r, [a, a]);
    rec.detach();
    const dev = new ReplayDevice(rec.recording());
    const d = new FakeVirtioDriver(dev as unknown as VirtioRng, { base: 0x4000_0000n });
    d.setupQueues(1);
    const first = d.alloc(64);
    const second = d.alloc(64);
    await expect(twoRequests(d, [first, second])).rejects.toThrow(/condition not reached/);
    expect(dev.divergence).toMatchObject({ kind: 'address' });
    expect(dev.divergence!.got).toContain(`0x${second.toString(16)}`);
    expect(dev.divergence!.got).toContain(`0x${first.toString(16)}`);
    // Nothing of the second request's bytes went anywhere.
    const writes = d.host.events.filter((e) => e.kind === 'dma-write' && e.len === 64);
    expect(writes).toEqual([{ kind: 'dma-write', iova: first, len: 64 }]);
  });
});

/** A host that pushes (docs/PUSH.md) as the endpoint's runtime serves pushes: bytes put at hand
 *  before a doorbell write, each taken by one read (at once, or by dmaRead); a DMA write over them
 *  drops them. */
class PushingHost extends FakeHost {
  readonly #pushed = new Map<bigint, Uint8Array>();
  constructor(base: bigint) {
    super({ base });
    this.dmaReadNow = (iova, len) => this.#take(iova, len);
  }
  push(iova: bigint, data: Uint8Array): void {
    this.#pushed.set(iova, data.slice());
  }
  #take(iova: bigint, len: number): Uint8Array | undefined {
    const b = this.#pushed.get(iova);
    if (b?.length !== len) return undefined;
    this.#pushed.delete(iova);
    return b;
  }
  override dmaRead(iova: bigint, len: number): Promise<Uint8Array> {
    const hit = this.#take(iova, len);
    return hit ? Promise.resolve(hit) : super.dmaRead(iova, len);
  }
  override dmaWrite(iova: bigint, data: Uint8Array): void {
    for (const k of this.#pushed.keys())
      if (k >= iova && k < iova + BigInt(data.length)) this.#pushed.delete(k);
    super.dmaWrite(iova, data);
  }
}

describe('what the replay gives the driver: pushes', () => {
  it('reads a doorbell’s pushes as they were at it, when the next doorbell comes in the same batch', async () => {
    // Recorded: a table at 0x1000_0000 names a buffer at 0x1000_1000; each of two doorbells pushed
    // the table and the buffer, and the device wrote into the buffer after each.
    const table = (addr: bigint, fill: number) =>
      Uint8Array.of(...leBytes(addr, 8), ...new Uint8Array(8).fill(fill));
    const T = 0x1000_0000n;
    const B = 0x1000_1000n;
    const doorbell = Uint8Array.of(0, 0);
    const at = (n: number) => ({ n, us: n * 10 });
    const records: ReplayRecord[] = [
      { ...at(2), toHost: false, kind: 'mmioWrite', bar: 0, offset: CC.Q_DESC, data: leBytes(T, 8) },
      { ...at(3), toHost: false, kind: 'push', rule: 0, iova: T, data: table(B, 1) },
      { ...at(4), toHost: false, kind: 'push', rule: 0, iova: B, data: new Uint8Array(16).fill(0xa) },
      { ...at(5), toHost: false, kind: 'mmioWrite', bar: 0, offset: NOTIFY, data: doorbell },
      { ...at(6), toHost: true, kind: 'dmaWrite', iova: B, data: Uint8Array.of(1, 1, 1, 1) },
      { ...at(7), toHost: false, kind: 'push', rule: 0, iova: T, data: table(B, 2) },
      { ...at(8), toHost: false, kind: 'push', rule: 0, iova: B, data: new Uint8Array(16).fill(0xb) },
      { ...at(9), toHost: false, kind: 'mmioWrite', bar: 0, offset: NOTIFY, data: doorbell },
      { ...at(10), toHost: true, kind: 'dmaWrite', iova: B, data: Uint8Array.of(2, 2, 2, 2) },
      { ...at(11), toHost: false, kind: 'detach' },
    ];
    const description = new VirtioRng({ source: new Counting() }).description;
    const dev = new ReplayDevice({ source: 'hand-made', description, records, attachN: 1 });
    const host = new PushingHost(0x4000_0000n);
    const [t, b] = [host.base + 0x8000n, host.base + 0x9040n];
    dev.attach(host);
    dev.mmioWrite(0, CC.Q_DESC, leBytes(t, 8));
    // Both doorbells in one go, as a batch of messages from the host is handled: the second one's
    // pushes replace what the first one's reads have not taken.
    host.push(t, table(b, 1));
    host.push(b, new Uint8Array(16).fill(0xa));
    dev.mmioWrite(0, NOTIFY, doorbell);
    host.push(t, table(b, 2));
    host.push(b, new Uint8Array(16).fill(0xb));
    dev.mmioWrite(0, NOTIFY, doorbell);
    await new Promise((r) => setTimeout(r, 10));
    expect(dev.divergence).toBeUndefined();
    expect(host.events.filter((e) => e.kind === 'dma-write')).toEqual([
      { kind: 'dma-write', iova: b, len: 4 },
      { kind: 'dma-write', iova: b, len: 4 },
    ]);
    expect([...host.memory.subarray(0x9040, 0x9044)]).toEqual([2, 2, 2, 2]);
    dev.detach();
    expect(dev.counters()).toMatchObject({ divergences: 0, complete: 1 });
  });
});

describe('what the replay gives the driver: kicks that may or may not come', () => {
  // Recorded: a notify with a new buffer, then at once a second one with nothing new (pcinet.ko's
  // recheck of the ring racing the driver's notify), and only then the device's answer to the first.
  const D = 0x1000_0000n;
  const A = 0x1000_0400n;
  const B = 0x1000_2000n;
  const SIZE = 16;
  const driverArea = (idx: number) => {
    const b = new Uint8Array(6 + 2 * SIZE);
    b.set(leBytes(idx, 2), 2);
    return b;
  };
  const descTable = (buf: bigint) => {
    const b = new Uint8Array(16 * SIZE);
    b.set(leBytes(buf, 8), 0);
    b.set(leBytes(64, 4), 8);
    b.set(leBytes(VRING_DESC_F_WRITE, 2), 12);
    return b;
  };
  const doorbell = Uint8Array.of(0, 0);
  const at = (n: number) => ({ n, us: n * 10 });
  const data = new Uint8Array(64).fill(0x5c);
  const records: ReplayRecord[] = [
    { ...at(2), toHost: false, kind: 'mmioWrite', bar: 0, offset: CC.Q_DESC, data: leBytes(D, 8) },
    { ...at(3), toHost: false, kind: 'mmioWrite', bar: 0, offset: CC.Q_AVAIL, data: leBytes(A, 8) },
    {
      ...at(4),
      toHost: true,
      kind: 'pushRule',
      id: 0,
      rule: {
        kind: 'virtq',
        bar: 0,
        notify: NOTIFY,
        desc: D,
        avail: A,
        size: SIZE,
        dataMax: 0,
        indirect: false,
      },
    },
    { ...at(5), toHost: false, kind: 'push', rule: 0, iova: A, data: driverArea(1) },
    { ...at(6), toHost: false, kind: 'push', rule: 0, iova: D, data: descTable(B) },
    { ...at(7), toHost: false, kind: 'mmioWrite', bar: 0, offset: NOTIFY, data: doorbell },
    { ...at(8), toHost: false, kind: 'push', rule: 0, iova: A, data: driverArea(1) },
    { ...at(9), toHost: false, kind: 'push', rule: 0, iova: D, data: descTable(B) },
    { ...at(10), toHost: false, kind: 'mmioWrite', bar: 0, offset: NOTIFY, data: doorbell },
    { ...at(11), toHost: true, kind: 'dmaWrite', iova: B, data },
    { ...at(12), toHost: true, kind: 'interrupt', vector: 1 },
    { ...at(13), toHost: false, kind: 'detach' },
  ];
  const description = new VirtioRng({ source: new Counting() }).description;

  async function live(kicks: number) {
    const dev = new ReplayDevice({ source: 'hand-made', description, records, attachN: 1 });
    const host = new PushingHost(0x4000_0000n);
    const [d, a, b] = [host.base + 0x8000n, host.base + 0x8400n, host.base + 0xa040n];
    dev.attach(host);
    dev.mmioWrite(0, CC.Q_DESC, leBytes(d, 8));
    dev.mmioWrite(0, CC.Q_AVAIL, leBytes(a, 8));
    expect(host.pushRules.get(0)).toMatchObject({ desc: d, avail: a });
    for (let k = 0; k < kicks; k++) {
      host.push(a, driverArea(1));
      host.push(d, descTable(b));
      dev.mmioWrite(0, NOTIFY, doorbell);
    }
    await new Promise((r) => setTimeout(r, 10));
    return { dev, host, b };
  }

  it.each([1, 2, 3])(
    'answers the first notify whether the second comes or not, or a third (%i notifies)',
    async (kicks) => {
      const { dev, host, b } = await live(kicks);
      expect(dev.divergence).toBeUndefined();
      expect([...host.memory.subarray(Number(b - host.base), Number(b - host.base) + 64)]).toEqual([...data]);
      expect(host.interrupts).toEqual([1]);
      dev.detach();
      expect(dev.counters()).toMatchObject({ divergences: 0, complete: 1, idleKicks: Math.abs(2 - kicks) });
    },
  );
});
