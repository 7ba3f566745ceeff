// The replay device against scripted drivers: a session of a real model is recorded (Recorder,
// the way a trace on the endpoint records it), then played back to the same script run with other
// DMA addresses — it must answer as the model did, with no divergence — and to a script that does
// one thing differently — it must say exactly where.
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../endpoint/backends/block.js';
import type { DeviceModel } from '../host-port.js';
import { NvmeController } from '../nvme/controller.js';
import { ADMIN, CNS, CC as NVME_CC, REG as NVME_REG } from '../nvme/spec.js';
import { FakeBus, FakeHost, settle } from '../pci/fake-host.js';
import { leBytes, rd16, rd32, wr16, wr32, wr64 } from '../pci/le.js';
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

// ---- NVMe: queue bases in 64-bit registers, PRPs in commands, a PRP list read by DMA ----

/** A driver of the NVMe controller on `host`, everything at offset `at` of its memory: the admin
 *  queue set up with ASQ/ACQ written in 32-bit halves (lo_hi_writeq), Identify Controller into a
 *  page, an I/O queue pair, and a 12 KiB read whose PRP2 is a PRP list. */
async function nvmeScript(bus: FakeBus, host: FakeHost, at: number) {
  const iova = (off: number) => host.base + BigInt(at + off);
  const mem = (off: number, len: number) => host.memory.subarray(at + off, at + off + len);
  const half = (reg: number, v: bigint) => {
    bus.write32(0, reg, Number(v & 0xffffffffn));
    bus.write32(0, reg + 4, Number(v >> 32n));
  };
  const sq = new Map([
    [0, 0x0000],
    [1, 0x2000],
  ]);
  const cq = new Map([
    [0, 0x1000],
    [1, 0x3000],
  ]);
  const tails = new Map([
    [0, 0],
    [1, 0],
  ]);
  const heads = new Map([
    [0, 0],
    [1, 0],
  ]);
  let cid = 0;
  const submit = async (
    q: number,
    opcode: number,
    f: { nsid?: number; prp1?: bigint; prp2?: bigint; cdw?: number[] },
  ) => {
    const e = mem(sq.get(q)! + 64 * tails.get(q)!, 64);
    e.fill(0);
    e[0] = opcode;
    wr16(e, 2, ++cid);
    wr32(e, 4, f.nsid ?? 0);
    wr64(e, 24, f.prp1 ?? 0n);
    wr64(e, 32, f.prp2 ?? 0n);
    for (const [i, v] of (f.cdw ?? []).entries()) wr32(e, 40 + 4 * i, v >>> 0);
    tails.set(q, tails.get(q)! + 1);
    bus.write32(0, NVME_REG.DOORBELLS + 8 * q, tails.get(q)!);
    for (let i = 0; i < 30 && !(rd16(mem(cq.get(q)! + 16 * heads.get(q)!, 16), 14) & 1); i++)
      await bus.settle();
    const c = mem(cq.get(q)! + 16 * heads.get(q)!, 16);
    heads.set(q, heads.get(q)! + 1);
    bus.write32(0, NVME_REG.DOORBELLS + 8 * q + 4, heads.get(q)!);
    return { cid: rd16(c, 12), status: rd16(c, 14) >> 1 };
  };
  bus.write32(0, NVME_REG.AQA, (15 << 16) | 15);
  half(NVME_REG.ASQ, iova(0x0000));
  half(NVME_REG.ACQ, iova(0x1000));
  bus.write32(0, NVME_REG.CC, NVME_CC.EN | (6 << 16) | (4 << 20));
  await bus.settle();
  const rdy = bus.read32(0, NVME_REG.CSTS);
  const identify = await submit(0, ADMIN.IDENTIFY, { prp1: iova(0x4000), cdw: [CNS.CONTROLLER] });
  const serial = Buffer.from(mem(0x4000 + 4, 20))
    .toString()
    .trim();
  const cqCreate = await submit(0, ADMIN.CREATE_CQ, { prp1: iova(0x3000), cdw: [(15 << 16) | 1, 1] });
  const sqCreate = await submit(0, ADMIN.CREATE_SQ, {
    prp1: iova(0x2000),
    cdw: [(15 << 16) | 1, (1 << 16) | 1],
  });
  // 12 KiB from LBA 0: PRP1 the first page, PRP2 a list naming the next two.
  const list = mem(0x5000, 16);
  wr64(list, 0, iova(0x7000));
  wr64(list, 8, iova(0x8000));
  const read = await submit(1, 0x02, { nsid: 1, prp1: iova(0x6000), prp2: iova(0x5000), cdw: [0, 0, 2] });
  const data = [...mem(0x6000, 0x1000), ...mem(0x7000, 0x1000), ...mem(0x8000, 0x1000)];
  return {
    rdy,
    identify,
    serial,
    cqCreate,
    sqCreate,
    read,
    data: createHash('sha256').update(Uint8Array.from(data)).digest('hex'),
  };
}

describe('replay of the NVMe controller', () => {
  const record = async (lbaSize: 512 | 4096) => {
    const backend = new MemoryBackend(1 << 20);
    await backend.write(
      0,
      Uint8Array.from({ length: 3 * 4096 }, (_, i) => (i * 7) & 0xff),
    );
    const rec = new Recorder(new NvmeController({ backend, lbaSize, serial: 'SN-REPLAY', queues: 2 }));
    const host = new FakeHost({ memory: 1 << 20 });
    const run = await nvmeScript(new FakeBus(rec, host), host, 0x10000);
    expect(run).toMatchObject({ rdy: 1, serial: 'SN-REPLAY', read: { status: 0 } });
    rec.detach();
    return { recording: rec.recording(), run };
  };
  // Everything 0x23000 further on: other pages for every queue, page and list.
  const replayed = async (recording: ReplayRecording) => {
    const dev = new ReplayDevice(recording);
    const live = new FakeHost({ memory: 1 << 20, base: 0x5000_0000n });
    return { dev, run: await nvmeScript(new FakeBus(dev, live), live, 0x33000) };
  };

  it('learns the queue bases from register halves and the PRPs from commands and a PRP list', async () => {
    const { recording, run } = await record(4096);
    // The 12 KiB read made the controller read its PRP list by DMA.
    expect(recording.records.filter((r) => r.kind === 'dmaRead' && r.len === 16)).toHaveLength(1);
    const { dev, run: again } = await replayed(recording);
    expect(dev.divergence).toBeUndefined();
    expect(again).toEqual(run);
    dev.detach();
    expect(dev.counters()).toMatchObject({ complete: 1 });
    expect(dev.counters().relocations).toBeGreaterThanOrEqual(8);
  });

  it('compares as data an address the recorded device never used (a PRP2 a short read did not need)', async () => {
    // 512-byte blocks: the same command moves 1.5 KiB, all in PRP1's page; PRP2 is never read.
    const { recording } = await record(512);
    const sqe = recording.records.filter((r) => r.kind === 'dmaReadCpl' && r.data.length === 64).at(-1)!;
    const { dev } = await replayed(recording);
    expect(dev.divergence).toMatchObject({ record: sqe.n, kind: 'dma', offset: 33 });
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
