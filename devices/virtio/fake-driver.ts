// A virtio driver for unit tests of every virtio model, doing what Linux's virtio_pci_modern does
// (the bus checks the capabilities first, as Linux does before it binds): feature negotiation,
// queue setup in a FakeHost's memory, descriptors, the available ring and its notify, the used
// ring, used_event. A model's test adds what its own driver does with the queues.
import { FakeBus, FakeHost } from '../pci/fake-host.js';
import { leBytes, rd16, rd32, wr16, wr32, wr64 } from '../pci/le.js';
import {
  CC,
  NOTIFY,
  NOTIFY_MULTIPLIER,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  type VirtioPciDevice,
} from './pci.js';
import { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from './virtqueue.js';

/** Host memory each queue gets: descriptor table, available ring, used ring, then its buffers. */
export const QUEUE_REGION = 0x40000;
const AVAIL_AT = 0x1000n;
const USED_AT = 0x2000n;
const BUF_AT = 0x10000n;

export interface FakeQueue {
  desc: bigint;
  avail: bigint;
  used: bigint;
  /** This queue's buffer area (QUEUE_REGION - 64 KiB bytes), for the test to lay out. */
  buf: bigint;
  availIdx: number;
  usedSeen: number;
}

export interface FakeDriverOptions {
  /** Features to accept; default every one offered. */
  features?: bigint;
  /** Whether the host ends virtqueue rounds (HostPort.virtqRound); default true. */
  rounds?: boolean;
  /** Host memory; default 1 MiB. Queues take QUEUE_REGION each from its start; alloc() the rest. */
  memory?: number;
  /** Entries the driver gives each queue; default 16. */
  queueSize?: number;
  /** IOVA of host memory's first byte; FakeHost's default otherwise. */
  base?: bigint;
}

/** One segment of a chain the test builds: bytes the device reads, or room it may write. */
export type Part = { data: Uint8Array } | { room: number };

export class FakeVirtioDriver<D extends VirtioPciDevice<D>> {
  readonly host: FakeHost;
  readonly bus: FakeBus;
  readonly q: FakeQueue[] = [];
  readonly queueSize: number;
  /** Next free byte past the queues' regions (alloc). */
  #free = 0;

  constructor(
    readonly dev: D,
    o: FakeDriverOptions = {},
  ) {
    this.host = new FakeHost({ memory: o.memory ?? 1 << 20, rounds: o.rounds, base: o.base });
    this.queueSize = o.queueSize ?? 16;
    this.bus = new FakeBus(dev, this.host);
    this.status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const want = o.features ?? this.deviceFeatures();
    this.bus.write32(0, CC.GFSELECT, 0);
    this.bus.write32(0, CC.GF, Number(want & 0xffffffffn));
    this.bus.write32(0, CC.GFSELECT, 1);
    this.bus.write32(0, CC.GF, Number(want >> 32n));
    this.status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  }

  deviceFeatures(): bigint {
    this.bus.write32(0, CC.DFSELECT, 0);
    const lo = this.bus.read32(0, CC.DF);
    this.bus.write32(0, CC.DFSELECT, 1);
    const hi = this.bus.read32(0, CC.DF);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  status(v?: number): number {
    if (v !== undefined) this.bus.write(0, CC.STATUS, Uint8Array.of(v));
    return this.bus.read(0, CC.STATUS, 1)[0]!;
  }

  /** Offset into host memory of an IOVA. */
  mem(addr: bigint): number {
    return Number(addr - this.host.base);
  }

  /** Sets up and enables `n` queues (vector q + 1 each, config vector 0), then DRIVER_OK. */
  setupQueues(n: number): void {
    for (let q = 0; q < n; q++) {
      const base = this.host.base + BigInt(q * QUEUE_REGION);
      const s = {
        desc: base,
        avail: base + AVAIL_AT,
        used: base + USED_AT,
        buf: base + BUF_AT,
        availIdx: 0,
        usedSeen: 0,
      };
      this.q.push(s);
      this.bus.write(0, CC.Q_SELECT, leBytes(q, 2));
      this.bus.write(0, CC.Q_SIZE, leBytes(this.queueSize, 2));
      this.bus.write(0, CC.Q_MSIX, leBytes(q + 1, 2));
      // Linux writes 64-bit addresses as two 32-bit halves.
      for (const [reg, v] of [
        [CC.Q_DESC, s.desc],
        [CC.Q_AVAIL, s.avail],
        [CC.Q_USED, s.used],
      ] as const) {
        this.bus.write32(0, reg, Number(v & 0xffffffffn));
        this.bus.write32(0, reg + 4, Number(v >> 32n));
      }
      this.bus.write(0, CC.Q_ENABLE, leBytes(1, 2));
    }
    this.#free = n * QUEUE_REGION;
    this.bus.write(0, CC.MSIX, leBytes(0, 2));
    this.status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  }

  /** `len` bytes of host memory past the queues (setupQueues first), 16-byte aligned. */
  alloc(len: number): bigint {
    const at = this.#free;
    this.#free += (len + 15) & ~15;
    if (this.#free > this.host.memory.length) throw new Error('fake driver: out of host memory');
    return this.host.base + BigInt(at);
  }

  desc(q: number, i: number, addr: bigint, len: number, flags: number, next = 0): void {
    const at = this.mem(this.q[q]!.desc) + 16 * i;
    const m = this.host.memory;
    wr64(m, at, addr);
    wr32(m, at + 8, len);
    wr16(m, at + 12, flags);
    wr16(m, at + 14, next);
  }

  /** Lays out a chain from descriptor `head` on (head, head + 1, …) with fresh buffers (alloc) and
   *  returns each part's address. Does not offer it. */
  chain(q: number, head: number, parts: Part[]): bigint[] {
    return parts.map((p, i) => {
      const len = 'data' in p ? p.data.length : p.room;
      const addr = this.alloc(len);
      if ('data' in p) this.host.memory.set(p.data, this.mem(addr));
      const last = i === parts.length - 1;
      const flags = ('room' in p ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT);
      this.desc(q, head + i, addr, len, flags, last ? 0 : head + i + 1);
      return addr;
    });
  }

  /** Makes heads available without a notify (as a driver that read an old avail_event). */
  offerQuietly(q: number, ...heads: number[]): void {
    const s = this.q[q]!;
    const m = this.host.memory;
    for (const head of heads) {
      wr16(m, this.mem(s.avail) + 4 + 2 * (s.availIdx % this.queueSize), head);
      s.availIdx = (s.availIdx + 1) & 0xffff;
    }
    wr16(m, this.mem(s.avail) + 2, s.availIdx);
  }

  /** Makes heads available and notifies. */
  offer(q: number, ...heads: number[]): void {
    this.offerQuietly(q, ...heads);
    this.bus.write(0, NOTIFY + q * NOTIFY_MULTIPLIER, leBytes(q, 2));
  }

  /** Sets used_event (event index) for queue q. */
  usedEvent(q: number, v: number): void {
    wr16(this.host.memory, this.mem(this.q[q]!.avail) + 4 + 2 * this.queueSize, v);
  }

  /** The device's avail_event for queue q. */
  availEvent(q: number): number {
    return rd16(this.host.memory, this.mem(this.q[q]!.used) + 4 + 8 * this.queueSize);
  }

  /** The used ring's idx as the device last wrote it. */
  usedIdx(q: number): number {
    return rd16(this.host.memory, this.mem(this.q[q]!.used) + 2);
  }

  /** New used elements since the last call. */
  used(q: number): { id: number; len: number }[] {
    const s = this.q[q]!;
    const m = this.host.memory;
    const idx = rd16(m, this.mem(s.used) + 2);
    const out: { id: number; len: number }[] = [];
    for (; s.usedSeen !== idx; s.usedSeen = (s.usedSeen + 1) & 0xffff) {
      const at = this.mem(s.used) + 4 + 8 * (s.usedSeen % this.queueSize);
      out.push({ id: rd32(m, at), len: rd32(m, at + 4) });
    }
    return out;
  }

  /** Host memory at an IOVA. */
  read(addr: bigint, len: number): Uint8Array {
    return this.host.memory.slice(this.mem(addr), this.mem(addr) + len);
  }

  /** Waits until `done` holds, letting the device's async work run; fails after `turns` settles
   *  without it (a count of event-loop passes, not time: a busy machine only makes it slower). */
  async until(done: () => boolean, turns = 200): Promise<void> {
    for (let i = 0; i < turns && !done(); i++) await this.bus.settle();
    if (!done()) throw new Error(`fake driver: condition not reached after ${turns} settles`);
  }
}
