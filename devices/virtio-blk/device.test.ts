// virtio-blk driven as Linux's virtio_blk drives it: header, data, status byte per request, many
// requests in flight; storage is the memory backend the endpoint also uses, wrapped where a test
// needs to see or hold what reaches it. Both with and without host-ended virtqueue rounds.
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../endpoint/backends/block.js';
import { type BlockBackend, BlockError, type BlockOp } from '../nvme/backend.js';
import { walkCaps } from '../pci/config.js';
import { rd16, rd32, rd64, wr32, wr64 } from '../pci/le.js';
import { FakeVirtioDriver } from '../virtio/fake-driver.js';
import { DEVICE_CFG } from '../virtio/pci.js';
import { BLK_CFG, BLK_S, BLK_T, VIRTIO_BLK_F, VirtioBlk } from './device.js';

const DISK = 1 << 20;
const bit = (b: number) => 1n << BigInt(b);
const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);

/** A backend that logs what reaches it and, when gated, holds each call until released. */
class Watched implements BlockBackend {
  readonly inner = new MemoryBackend(DISK);
  readonly size = DISK;
  readonly name = 'watched memory';
  readonly ops: string[] = [];
  gated = false;
  fail: string | undefined;
  readonly #held: (() => void)[] = [];
  async #op<T>(what: string, run: () => Promise<T>): Promise<T> {
    this.ops.push(what);
    if (this.gated) await new Promise<void>((go) => this.#held.push(go));
    if (this.fail) {
      const op = what.startsWith('zeroes') ? 'writeZeroes' : (what.split(' ')[0] as BlockOp);
      throw new BlockError(this.fail, op, `${what}: injected ${this.fail}`);
    }
    return run();
  }
  get waiting(): number {
    return this.#held.length;
  }
  release(): void {
    for (const go of this.#held.splice(0)) go();
  }
  read = (o: number, n: number) => this.#op(`read ${o} ${n}`, () => this.inner.read(o, n));
  write = (o: number, d: Uint8Array) => this.#op(`write ${o} ${d.length}`, () => this.inner.write(o, d));
  flush = () => this.#op('flush', () => this.inner.flush());
  writeZeroes = (o: number, n: number) => this.#op(`zeroes ${o} ${n}`, () => this.inner.writeZeroes(o, n));
  discard = (o: number, n: number) => this.#op(`discard ${o} ${n}`, () => this.inner.discard(o, n));
  close = () => this.inner.close();
}

const header = (type: number, sector: bigint | number) => {
  const h = new Uint8Array(16);
  wr32(h, 0, type);
  wr64(h, 8, BigInt(sector));
  return h;
};
const range = (sector: number, sectors: number, flags = 0) => {
  const r = new Uint8Array(16);
  wr64(r, 0, BigInt(sector));
  wr32(r, 8, sectors);
  wr32(r, 12, flags);
  return r;
};

describe.each([true, false])('virtio-blk, host ends rounds: %s', (rounds) => {
  let head = 0;
  const driver = (o: { features?: bigint } = {}) => {
    const backend = new Watched();
    const d = new FakeVirtioDriver(new VirtioBlk({ backend, serial: 'VBLK-E2E' }), {
      rounds,
      memory: 4 << 20,
      queueSize: 64,
      features: o.features,
    });
    d.setupQueues(1);
    head = 0;
    return { d, backend };
  };
  type D = ReturnType<typeof driver>['d'];

  /** Posts one request (header, data out or room in, status) and notifies; returns where its
   *  data and status are. */
  const submit = (
    d: D,
    type: number,
    sector: bigint | number,
    o: { out?: Uint8Array[]; inLen?: number[] } = {},
  ) => {
    const parts = [
      { data: header(type, sector) },
      ...(o.out ?? []).map((data) => ({ data })),
      ...(o.inLen ?? []).map((room) => ({ room })),
      { room: 1 },
    ];
    const h = head;
    head += parts.length;
    const addrs = d.chain(0, h, parts);
    d.offer(0, h);
    return { head: h, data: addrs.slice(1, -1), status: addrs.at(-1)! };
  };
  const status = (d: D, r: { status: bigint }) => d.read(r.status, 1)[0];

  it('is a block device: 1af4:1042, class 010000, capacity and limits in its configuration', () => {
    const { d } = driver();
    const cfg = d.dev.config.image;
    expect([rd16(cfg, 0), rd16(cfg, 2), rd32(cfg, 8) >>> 8]).toEqual([0x1af4, 0x1042, 0x010000]);
    expect(
      walkCaps(cfg)
        .filter((c) => c.id === 0x09)
        .map((c) => cfg[c.offset + 3]),
    ).toEqual([1, 2, 3, 4]);
    const conf = d.bus.read(0, DEVICE_CFG, 60);
    expect(rd64(conf, BLK_CFG.CAPACITY)).toBe(BigInt(DISK / 512));
    expect(rd32(conf, BLK_CFG.SEG_MAX)).toBe(254);
    expect(rd32(conf, BLK_CFG.BLK_SIZE)).toBe(512);
    expect(rd32(conf, BLK_CFG.MAX_DISCARD_SECTORS)).toBeGreaterThan(0);
    const f = d.deviceFeatures();
    for (const b of Object.values(VIRTIO_BLK_F)) expect(f & bit(b)).toBe(bit(b));
  });

  it('writes and reads back across segments; a read reports its data and status bytes', async () => {
    const { d, backend } = driver();
    const w = submit(d, BLK_T.OUT, 8, { out: [pattern(1024, 1), pattern(512, 2)] });
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: w.head, len: 1 }]);
    expect(status(d, w)).toBe(BLK_S.OK);
    expect(await backend.inner.read(8 * 512, 1536)).toEqual(
      new Uint8Array([...pattern(1024, 1), ...pattern(512, 2)]),
    );
    const r = submit(d, BLK_T.IN, 10, { inLen: [512, 512] });
    await d.until(() => d.usedIdx(0) === 2);
    expect(d.used(0)).toEqual([{ id: r.head, len: 1025 }]);
    expect(status(d, r)).toBe(BLK_S.OK);
    // Sector 10 is the write's third sector, 11 was never written.
    expect(d.read(r.data[0]!, 512)).toEqual(pattern(512, 2));
    expect(d.read(r.data[1]!, 512)).toEqual(new Uint8Array(512));
    expect(d.dev.counters()).toEqual({ reads: 1, writes: 1, flushes: 0, discards: 0, errors: 0 });
  });

  it('flushes on FLUSH; without FLUSH negotiated every write is written through', async () => {
    const { d, backend } = driver();
    submit(d, BLK_T.OUT, 0, { out: [pattern(512, 3)] });
    const f = submit(d, BLK_T.FLUSH, 0);
    await d.until(() => d.usedIdx(0) === 2);
    expect(status(d, f)).toBe(BLK_S.OK);
    expect(backend.ops).toEqual(['write 0 512', 'flush']);
    const plain = driver({ features: bit(32) | bit(33) });
    submit(plain.d, BLK_T.OUT, 0, { out: [pattern(512, 3)] });
    await plain.d.until(() => plain.d.usedIdx(0) === 1);
    expect(plain.backend.ops).toEqual(['write 0 512', 'flush']);
  });

  it('discards and writes zeroes (with or without unmap); bad flags or segment counts are refused', async () => {
    const { d, backend } = driver();
    await backend.inner.write(0, pattern(8192, 4));
    const disc = submit(d, BLK_T.DISCARD, 0, { out: [range(0, 8)] });
    const zero = submit(d, BLK_T.WRITE_ZEROES, 0, { out: [range(8, 4, 1)] });
    const flags = submit(d, BLK_T.DISCARD, 0, { out: [range(0, 8, 1)] });
    const two = submit(d, BLK_T.DISCARD, 0, { out: [range(0, 1), range(2, 1)] });
    await d.until(() => d.usedIdx(0) === 4);
    expect([disc, zero, flags, two].map((r) => status(d, r))).toEqual([
      BLK_S.OK,
      BLK_S.OK,
      BLK_S.UNSUPP,
      BLK_S.IOERR,
    ]);
    expect(await backend.inner.read(0, 6144)).toEqual(new Uint8Array(6144));
    expect(await backend.inner.read(6144, 2048)).toEqual(pattern(8192, 4).subarray(6144));
    expect(d.host.traced('virtio-blk.req.bad-flags')).toBe(1);
    expect(d.host.traced('virtio-blk.req.bad-segments')).toBe(1);
  });

  it('answers IOERR for a range past the end or not in sectors, UNSUPP for an unknown type', async () => {
    const { d, backend } = driver();
    const past = submit(d, BLK_T.IN, DISK / 512 - 1, { inLen: [1024] });
    const huge = submit(d, BLK_T.OUT, 1n << 60n, { out: [pattern(512, 5)] });
    const odd = submit(d, BLK_T.OUT, 0, { out: [pattern(100, 5)] });
    const what = submit(d, 99, 0);
    await d.until(() => d.usedIdx(0) === 4);
    expect([past, huge, odd, what].map((r) => status(d, r))).toEqual([
      BLK_S.IOERR,
      BLK_S.IOERR,
      BLK_S.IOERR,
      BLK_S.UNSUPP,
    ]);
    expect(d.host.traced('virtio-blk.req.bad-range')).toBe(3);
    expect(d.host.traced('virtio-blk.req.unsupported')).toBe(1);
    expect(backend.ops).toEqual([]);
  });

  it('GET_ID gives the serial, NUL-padded to 20 bytes', async () => {
    const { d } = driver();
    const r = submit(d, BLK_T.GET_ID, 0, { inLen: [20] });
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: r.head, len: 21 }]);
    expect(new TextDecoder().decode(d.read(r.data[0]!, 20))).toBe('VBLK-E2E'.padEnd(20, '\0'));
  });

  it('a backend error is IOERR, traced and counted; the device keeps serving', async () => {
    const { d, backend } = driver();
    backend.fail = 'EIO';
    const bad = submit(d, BLK_T.IN, 0, { inLen: [512] });
    await d.until(() => d.usedIdx(0) === 1);
    expect(status(d, bad)).toBe(BLK_S.IOERR);
    expect(d.host.traced('virtio-blk.backend.error')).toBe(1);
    backend.fail = undefined;
    const good = submit(d, BLK_T.IN, 0, { inLen: [512] });
    await d.until(() => d.usedIdx(0) === 2);
    expect(status(d, good)).toBe(BLK_S.OK);
    expect(d.dev.counters()).toMatchObject({ errors: 1, reads: 1 });
  });

  it('a chain without a header or a status byte is traced and returned empty', async () => {
    const { d } = driver();
    d.chain(0, 0, [{ data: new Uint8Array(8) }, { room: 1 }]);
    d.offer(0, 0);
    await d.until(() => d.usedIdx(0) === 1);
    expect(d.used(0)).toEqual([{ id: 0, len: 0 }]);
    expect(d.host.traced('virtio-blk.req.malformed')).toBe(1);
  });

  it('runs requests concurrently: all reach the backend before the first completes', async () => {
    const { d, backend } = driver();
    backend.gated = true;
    const reqs = Array.from({ length: 8 }, (_, i) => submit(d, BLK_T.IN, i, { inLen: [512] }));
    await d.until(() => backend.waiting === 8);
    expect(d.usedIdx(0)).toBe(0);
    backend.release();
    await d.until(() => d.usedIdx(0) === 8);
    expect(reqs.map((r) => status(d, r))).toEqual(new Array(8).fill(BLK_S.OK));
  });

  it('a reset abandons requests in flight: nothing is written to host memory for them', async () => {
    const { d, backend } = driver();
    await backend.inner.write(0, pattern(512, 6));
    backend.gated = true;
    const r = submit(d, BLK_T.IN, 0, { inLen: [512] });
    d.host.memory.fill(0x55, d.mem(r.status), d.mem(r.status) + 1);
    await d.until(() => backend.waiting === 1);
    d.status(0);
    const events = d.host.events.length;
    backend.release();
    for (let i = 0; i < 10; i++) await d.bus.settle();
    expect(d.host.events.slice(events)).toEqual([]);
    expect(d.read(r.data[0]!, 512)).toEqual(new Uint8Array(512));
    expect(status(d, r)).toBe(0x55);
    expect(d.usedIdx(0)).toBe(0);
  });
});
