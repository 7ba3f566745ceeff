// The replay device against scripted drivers: a session of a real model is recorded (Recorder,
// the way a trace on the endpoint records it), then played back to the same script run with other
// DMA addresses — it must answer as the model did, with no divergence — and to a script that does
// one thing differently — it must say exactly where.
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import type { DeviceModel } from '../host-port.js';
import { FakeBus, FakeHost, settle } from '../pci/fake-host.js';
import { leBytes, rd32 } from '../pci/le.js';
import { TestDevice } from '../test/device.js';
import { CMD, REG, TEST_REG_BAR, testPattern } from '../test/regs.js';
import { FakeVirtioDriver } from '../virtio/fake-driver.js';
import { CC } from '../virtio/pci.js';
import { type EntropySource, VirtioRng } from '../virtio-rng/device.js';
import { ReplayDevice } from './device.js';
import { Recorder } from './fake-recorder.js';
import type { ReplayRecord, ReplayRecording } from './records.js';

/** Bytes that say where they came from: 0, 1, 2 … */
class Counting implements EntropySource {
  next = 0;
  fill(buf: Uint8Array): void {
    for (let i = 0; i < buf.length; i++) buf[i] = this.next++ & 0xff;
  }
}

const R = TEST_REG_BAR;

// ---- virtio-rng, as Linux's virtio-rng drives it ----

interface RngRun {
  bytes: number[][];
  used: { id: number; len: number }[][];
  status: number;
}

/** The driver's part: queue set up, then two requests, each waited for. `skew` moves its buffers
 *  within their pages; `room` is the first buffer's size. */
async function rngScript(
  d: FakeVirtioDriver<VirtioRng>,
  o: { skew?: number; room?: number } = {},
): Promise<RngRun> {
  d.setupQueues(1);
  if (o.skew) d.alloc(o.skew);
  const out: RngRun = { bytes: [], used: [], status: 0 };
  const a = d.chain(0, 0, [{ room: o.room ?? 64 }])[0]!;
  d.offer(0, 0);
  await d.until(() => d.usedIdx(0) === 1, 50);
  out.used.push(d.used(0));
  out.bytes.push([...d.read(a, 64)]);
  const [b1, b2] = d.chain(0, 1, [{ room: 16 }, { room: 32 }]);
  d.offer(0, 1);
  await d.until(() => d.usedIdx(0) === 2, 50);
  out.used.push(d.used(0));
  out.bytes.push([...d.read(b1!, 16), ...d.read(b2!, 32)]);
  out.status = d.status();
  return out;
}

async function recordRng(rounds: boolean): Promise<{ recording: ReplayRecording; run: RngRun }> {
  const rec = new Recorder(new VirtioRng({ source: new Counting() }));
  const d = new FakeVirtioDriver(rec as unknown as VirtioRng, { rounds });
  const run = await rngScript(d);
  await d.bus.settle();
  rec.detach();
  return { recording: rec.recording(), run };
}

describe.each([true, false])('replay of virtio-rng (host ends rounds: %s)', (rounds) => {
  it('answers the same script at other addresses as the model did, with no divergence', async () => {
    const { recording, run } = await recordRng(rounds);
    expect(run.used).toEqual([[{ id: 0, len: 64 }], [{ id: 1, len: 48 }]]);
    const dev = new ReplayDevice(recording);
    // Host memory elsewhere, and the buffers 48 bytes further into their page.
    const d = new FakeVirtioDriver(dev as unknown as VirtioRng, { rounds, base: 0x4000_0000n });
    const again = await rngScript(d, { skew: 48 });
    expect(again).toEqual(run);
    expect(dev.divergence).toBeUndefined();
    // Every DMA write landed in the live buffers and rings, none at a recorded address.
    expect(d.host.events.filter((e) => e.kind === 'dma-fault')).toEqual([]);
    dev.detach();
    expect(dev.counters()).toMatchObject({ divergences: 0, ended: 1, complete: 1, runs: 1 });
    expect(dev.counters().relocations).toBeGreaterThanOrEqual(4);
    expect(d.host.traced('replay.complete')).toBe(1);
    expect(dev.notes()[0]).toMatch(
      /^replay reached the end of the recording \(record \d+, the host’s detach\)$/,
    );
  });

  it('reports a driver that posts a smaller buffer where its descriptor was read, and stops answering', async () => {
    const { recording } = await recordRng(rounds);
    // Where the recorded device read the first descriptor: 16 bytes, length 64 at byte 8.
    const cpl = recording.records.find(
      (r) => r.kind === 'dmaReadCpl' && r.data.length >= 16 && rd32(r.data, 8) === 64,
    )!;
    expect(cpl).toBeDefined();
    const dev = new ReplayDevice(recording);
    const d = new FakeVirtioDriver(dev as unknown as VirtioRng, { rounds, base: 0x4000_0000n });
    await expect(rngScript(d, { room: 32 })).rejects.toThrow(/condition not reached/);
    expect(dev.divergence).toMatchObject({ record: cpl.n, us: cpl.us, kind: 'dma', offset: 8 });
    // The virtio core reads the descriptor table (16 entries) at once.
    expect(dev.divergence!.expected).toMatch(/^a DMA read at 0x10000000 \(\+256\): byte 8 is 40000000/);
    expect(dev.divergence!.got).toMatch(/^20000000/);
    expect(d.host.traced('replay.divergence')).toBe(1);
    // Strict: the device is gone from the driver's point of view.
    expect(d.status()).toBe(0xff);
    expect(d.bus.read32(0, CC.DF)).toBe(0xffffffff);
    expect(dev.counters()).toMatchObject({ divergences: 1, divergedAt: cpl.n });
    expect(dev.notes()[0]).toContain(`replay diverged at record ${cpl.n}`);
  });
});

// ---- the test device, register by register ----

interface TestRun {
  scratch: number;
  counters: number[];
  checksum: number;
  status: number;
  written: number[];
  irqs: number[];
}

/** A driver of the test device on `host`: scratch, volatile reads, a DMA read (SRC_ADDR in one
 *  8-byte write), a DMA write (DST_ADDR in two halves), an interrupt. Its buffers are at `at`. */
async function testScript(
  bus: FakeBus,
  host: FakeHost,
  o: { at?: number; scratch?: number; skip?: 'scratch'; extra?: boolean } = {},
): Promise<TestRun> {
  const at = o.at ?? 0x2000;
  const src = host.base + BigInt(at);
  const dst = host.base + BigInt(at + 0x1000);
  host.memory.set(testPattern(5, 256), at);
  const out: TestRun = { scratch: 0, counters: [], checksum: 0, status: 0, written: [], irqs: [] };
  if (o.skip !== 'scratch') bus.write32(R, REG.SCRATCH, o.scratch ?? 0x1234);
  out.scratch = bus.read32(R, REG.SCRATCH);
  out.counters.push(bus.read32(R, REG.COUNTER), bus.read32(R, REG.COUNTER));
  bus.write32(R, REG.IRQ_VECTOR, 1);
  bus.write64(R, REG.SRC_ADDR, src);
  bus.write32(R, REG.SIZE, 256);
  bus.write32(R, REG.COMMAND, CMD.DMA_READ);
  await bus.settle();
  await bus.settle();
  out.checksum = bus.read32(R, REG.CHECKSUM);
  if (o.extra) bus.write32(R, REG.SCRATCH, 0x5555);
  bus.write32(R, REG.STATUS, 3);
  bus.write32(R, REG.DST_ADDR, Number(dst & 0xffffffffn));
  bus.write32(R, REG.DST_ADDR + 4, Number(dst >> 32n));
  bus.write32(R, REG.SIZE, 128);
  bus.write32(R, REG.ARG, 9);
  bus.write32(R, REG.COMMAND, CMD.DMA_WRITE);
  await bus.settle();
  await bus.settle();
  out.status = bus.read32(R, REG.STATUS);
  out.written = [...host.memory.subarray(at + 0x1000, at + 0x1000 + 128)];
  out.irqs = host.interrupts;
  return out;
}

async function recordTest(o: { detach?: boolean } = {}) {
  const rec = new Recorder(new TestDevice());
  const host = new FakeHost();
  const bus = new FakeBus(rec, host);
  const run = await testScript(bus, host);
  if (o.detach !== false) rec.detach();
  return { recording: rec.recording(), run, rec };
}

function replay(recording: ReplayRecording, o: { strict?: boolean } = {}) {
  const dev = new ReplayDevice(recording, o);
  const host = new FakeHost({ base: 0x7000_0000n });
  const bus = new FakeBus(dev, host);
  return { dev, host, bus };
}

const nth = (recording: ReplayRecording, pick: (r: ReplayRecord) => boolean) => recording.records.find(pick)!;

describe('replay of the test device', () => {
  it('reads and computes the same at other addresses, DMA landing in the live buffers', async () => {
    const { recording, run } = await recordTest();
    expect(run.checksum).toBe(crc32(testPattern(5, 256)) >>> 0);
    expect(run.written).toEqual([...testPattern(9, 128)]);
    const { dev, host, bus } = replay(recording);
    const again = await testScript(bus, host, { at: 0x5040 });
    expect(again).toEqual(run);
    expect(dev.divergence).toBeUndefined();
    dev.detach();
    expect(dev.counters()).toMatchObject({ divergences: 0, complete: 1, relocations: 2 });
  });

  it('reports a register written with another value, with its record, and reads all-ones after', async () => {
    const { recording } = await recordTest();
    const w = nth(recording, (r) => r.kind === 'mmioWrite' && r.offset === REG.SCRATCH);
    const { dev, host, bus } = replay(recording);
    const run = await testScript(bus, host, { scratch: 0x1235 });
    expect(dev.divergence).toEqual({
      record: w.n,
      us: w.us,
      kind: 'data',
      expected: 'MmioWrite bar 0 +0x8 [4] 34120000: byte 0 is 34120000',
      got: '35120000',
      offset: 0,
    });
    expect(run.scratch).toBe(0xffffffff);
    expect(run.checksum).toBe(0xffffffff);
    expect(run.irqs).toEqual([]);
    expect(host.events.filter((e) => e.kind === 'dma-read' || e.kind === 'dma-write')).toEqual([]);
  });

  it('strict=off reports an extra access and a missing one, and goes on to the same results', async () => {
    const { recording, run } = await recordTest();
    const extra = replay(recording, { strict: false });
    expect(await testScript(extra.bus, extra.host, { at: 0x3000, extra: true })).toEqual(run);
    const status = nth(recording, (r) => r.kind === 'mmioWrite' && r.offset === REG.STATUS);
    expect(extra.dev.divergence).toMatchObject({
      record: status.n,
      kind: 'message',
      expected: 'MmioWrite bar 0 +0x14 [4] 03000000',
      got: 'MmioWrite bar 0 +0x8 [4] 55550000',
    });
    expect(extra.dev.counters()).toMatchObject({ divergences: 1, extra: 1, missed: 0 });

    const missing = replay(recording, { strict: false });
    const again = await testScript(missing.bus, missing.host, { skip: 'scratch' });
    expect(again).toEqual({ ...run, scratch: 0 });
    // SCRATCH reads come from the host's shadow: the next message the device sees is COUNTER's.
    const scratch = nth(recording, (r) => r.kind === 'mmioWrite' && r.offset === REG.SCRATCH);
    expect(missing.dev.divergence).toMatchObject({
      record: scratch.n,
      kind: 'message',
      expected: 'MmioWrite bar 0 +0x8 [4] 34120000',
      got: 'MmioRead bar 0 +0x40 [4]',
    });
    expect(missing.dev.counters()).toMatchObject({ divergences: 1, missed: 1, extra: 0 });
  });

  it('after the end of a recording keeps its last state and counts what comes beyond it', async () => {
    const { recording, run } = await recordTest({ detach: false });
    const { dev, host, bus } = replay(recording);
    expect(await testScript(bus, host)).toEqual(run);
    await bus.settle();
    expect(dev.ended).toBe(true);
    expect(host.traced('replay.end')).toBe(1);
    bus.write32(R, REG.SCRATCH, 1);
    expect(bus.read32(R, REG.COUNTER)).toBe(run.counters[1]);
    expect(bus.read32(R, REG.CHECKSUM)).toBe(run.checksum);
    expect(dev.counters()).toMatchObject({ beyond: 2, divergences: 0, ended: 1, complete: 0 });
    expect(host.traced('replay.beyond')).toBe(1);
    expect(dev.notes()).toEqual([
      `replay reached the end of the recording (record ${recording.records.at(-1)!.n}); 2 host messages beyond it`,
    ]);
  });

  it('a detach before the recording is done is a divergence; a new attach replays from the start', async () => {
    const { recording, run } = await recordTest();
    const { dev, host, bus } = replay(recording);
    bus.write32(R, REG.SCRATCH, 0x1234);
    dev.detach();
    expect(dev.divergence).toMatchObject({ kind: 'message', got: 'the host removed the device' });
    const live = new FakeHost({ base: 0x9000_0000n });
    const bus2 = new FakeBus(dev, live);
    expect(await testScript(bus2, live)).toEqual(run);
    expect(dev.divergence).toBeUndefined();
    expect(dev.counters()).toMatchObject({ runs: 2 });
    expect(host.traced('replay.start')).toBe(1);
  });

  it('a device address the live driver never gave is reported, not sent', () => {
    const model: DeviceModel = new TestDevice();
    const records: ReplayRecord[] = [
      {
        n: 2,
        us: 5,
        toHost: false,
        kind: 'mmioWrite',
        bar: 0,
        offset: REG.DST_ADDR,
        data: leBytes(0x1000_2000n, 8),
      },
      { n: 3, us: 6, toHost: true, kind: 'dmaWrite', iova: 0x1000_2000n, data: new Uint8Array(4) },
      { n: 4, us: 7, toHost: true, kind: 'dmaWrite', iova: 0x2000_0000n, data: new Uint8Array(4) },
      { n: 5, us: 8, toHost: false, kind: 'mmioWrite', bar: 0, offset: REG.SCRATCH, data: leBytes(1, 4) },
    ];
    const { dev, host, bus } = replay(
      { source: 'hand-made', description: model.description, records, attachN: 1 },
      { strict: false },
    );
    bus.write64(R, REG.DST_ADDR, 0x7000_1000n);
    expect(dev.divergence).toEqual({
      record: 4,
      us: 7,
      kind: 'address',
      expected: 'a live address for the recorded DMA write at 0x20000000 (+4)',
      got: 'none: the live driver never gave the device an address for that memory',
    });
    expect(host.events).toEqual([{ kind: 'dma-write', iova: 0x7000_1000n, len: 4 }]);
  });
});

it('reports what the live host lacks: virtqueue rounds, NVMe SQ event indices', () => {
  const model: DeviceModel = new TestDevice();
  const write = (n: number): ReplayRecord => ({
    n,
    us: n,
    toHost: false,
    kind: 'mmioWrite',
    bar: 0,
    offset: REG.SCRATCH,
    data: leBytes(n, 4),
  });
  const recording = (r: ReplayRecord): ReplayRecording => ({
    source: 'hand-made',
    description: model.description,
    records: [write(2), r, write(4)],
    attachN: 1,
  });
  const round = { rule: 0, vector: 1, oldUsed: 0, newUsed: 1, eventIdx: true, kick: undefined };
  const a = new ReplayDevice(recording({ n: 3, us: 3, toHost: true, kind: 'virtqRound', round }));
  new FakeBus(a, new FakeHost({ rounds: false })).write32(R, REG.SCRATCH, 2);
  expect(a.divergence).toMatchObject({
    record: 3,
    kind: 'host',
    got: 'this host does not (CAP_VIRTQ_ROUNDS)',
  });
  const rule = {
    kind: 'nvme-sq' as const,
    bar: 0,
    doorbell: 0x44,
    base: 0x1000_0000n,
    entries: 2,
    dataMax: 0,
    lbaShift: 9,
    eventIdx: 0x1000_1000n,
  };
  const b = new ReplayDevice(recording({ n: 3, us: 3, toHost: true, kind: 'pushRule', id: 1, rule }));
  const host = new FakeHost({ sqEventIdx: false });
  new FakeBus(b, host).write32(R, REG.SCRATCH, 2);
  expect(b.divergence).toMatchObject({ record: 3, kind: 'host', got: 'this host does not' });
  expect(host.pushRules.size).toBe(0);
});

it('waits for a recorded DMA read before what followed it', async () => {
  const { recording } = await recordTest();
  const { dev, host, bus } = replay(recording);
  host.memory.set(testPattern(5, 256), 0x2000);
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const read = host.dmaRead.bind(host);
  host.dmaRead = async (iova, len) => {
    await gate;
    return read(iova, len);
  };
  bus.write32(R, REG.SCRATCH, 0x1234);
  bus.read32(R, REG.SCRATCH);
  bus.read32(R, REG.COUNTER);
  bus.read32(R, REG.COUNTER);
  bus.write32(R, REG.IRQ_VECTOR, 1);
  bus.write64(R, REG.SRC_ADDR, host.base + 0x2000n);
  bus.write32(R, REG.SIZE, 256);
  bus.write32(R, REG.COMMAND, CMD.DMA_READ);
  await settle();
  expect(host.interrupts).toEqual([]);
  release();
  await bus.settle();
  expect(host.interrupts).toEqual([1]);
  expect(bus.read32(R, REG.CHECKSUM)).toBe(crc32(testPattern(5, 256)) >>> 0);
  expect(dev.divergence).toBeUndefined();
});
