// virtio-net driven the way Linux's virtio_pci_modern + virtio_net drive it: capabilities, feature
// negotiation, queue setup in host memory (FakeHost), RX buffers, TX chains, the used ring, event
// index suppression, link changes, reset.
import { beforeAll, describe, expect, it } from 'vitest';
import { walkCaps } from '../pci/config.js';
import { leBytes, rd16, rd32, wr16, wr32, wr64 } from '../pci/le.js';
import { FakeVirtioDriver } from '../virtio/fake-driver.js';
import {
  CC,
  DEVICE_CFG,
  NO_VECTOR,
  NOTIFY,
  NOTIFY_MULTIPLIER,
  PUSH_CHAIN_MAX,
  STATUS_FEATURES_OK,
  STATUS_NEEDS_RESET,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
} from '../virtio/pci.js';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../virtio/virtqueue.js';
import {
  MAX_TX_FRAME,
  NET_CFG,
  NET_HDR_F_DATA_VALID,
  NET_HDR_F_NEEDS_CSUM,
  NET_HDR_GSO_ECN,
  NET_HDR_GSO_TCPV4,
  NET_HDR_GSO_TCPV6,
  NET_HDR_SIZE,
  type NetBackend,
  RX_BACKLOG,
  RX_QUEUE,
  type RxOffloads,
  TX_QUEUE,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_S_LINK_UP,
  VirtioNet,
} from './device.js';

const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

class Wire implements NetBackend {
  sent: Uint8Array[] = [];
  /** Offloads set by the device, in order. */
  offloads: RxOffloads[] = [];
  constructor(readonly netHeader = false) {}
  setOffloads(o: RxOffloads): void {
    this.offloads.push(o);
  }
  onReceive: ((frame: Uint8Array) => void) | undefined;
  onLink: ((up: boolean) => void) | undefined;
  send(frame: Uint8Array): void {
    this.sent.push(frame.slice());
  }
  close(): void {}
}

/** Entries per queue the driver chooses. */
const QSIZE = 16;
/** Whether the FakeHost ends virtqueue rounds: every test runs both ways. */
let hostRounds = true;

/** What virtio_net does on top of the common virtio driver: RX buffers, TX frames. */
class Driver extends FakeVirtioDriver<VirtioNet> {
  readonly wire: Wire;

  constructor(o: { features?: bigint; netHeader?: boolean; offloads?: boolean; memory?: number } = {}) {
    const wire = new Wire(o.netHeader);
    super(new VirtioNet({ mac: MAC, backend: wire, offloads: o.offloads }), {
      rounds: hostRounds,
      features: o.features,
      queueSize: QSIZE,
      memory: o.memory,
    });
    this.wire = wire;
  }

  override setupQueues(): void {
    for (let q = 0; q < 2; q++) {
      this.bus.write(0, CC.Q_SELECT, leBytes(q, 2));
      expect(rd16(this.bus.read(0, CC.Q_SIZE, 2), 0)).toBe(256);
    }
    super.setupQueues(2);
    for (let q = 0; q < 2; q++) {
      this.bus.write(0, CC.Q_SELECT, leBytes(q, 2));
      expect(rd16(this.bus.read(0, CC.Q_ENABLE, 2), 0)).toBe(1);
    }
  }

  /** Posts RX buffers 0..n-1 of `size` bytes each. */
  postRx(n: number, size: number): void {
    const s = this.q[RX_QUEUE]!;
    for (let i = 0; i < n; i++) this.desc(RX_QUEUE, i, s.buf + BigInt(i * 0x1000), size, VRING_DESC_F_WRITE);
    this.offer(RX_QUEUE, ...Array.from({ length: n }, (_, i) => i));
  }

  rxBuffer(i: number, len: number): Uint8Array {
    const at = this.mem(this.q[RX_QUEUE]!.buf) + i * 0x1000;
    return this.host.memory.slice(at, at + len);
  }

  /** Queues a frame for TX in descriptor `i` (header and data in one buffer). */
  transmit(i: number, frame: Uint8Array, hdr: Uint8Array = new Uint8Array(NET_HDR_SIZE)): void {
    const s = this.q[TX_QUEUE]!;
    const addr = s.buf + BigInt(i * 0x1000);
    this.host.memory.set(hdr, this.mem(addr));
    this.host.memory.set(frame, this.mem(addr) + NET_HDR_SIZE);
    this.desc(TX_QUEUE, i, addr, NET_HDR_SIZE + frame.length, 0);
    this.offer(TX_QUEUE, i);
  }
}

const frame = (n: number, seed = 1) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
const bit = (b: number) => 1n << BigInt(b);

/** A virtio net header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset. */
function netHdr(flags: number, gso: number, gsoSize = 0): Uint8Array {
  const h = new Uint8Array(NET_HDR_SIZE);
  h[0] = flags;
  h[1] = gso;
  wr16(h, 2, 54);
  wr16(h, 4, gsoSize);
  wr16(h, 6, 34);
  wr16(h, 8, 16);
  return h;
}
const withHdr = (h: Uint8Array, f: Uint8Array) => {
  const out = new Uint8Array(h.length + f.length);
  out.set(h);
  out.set(f, h.length);
  return out;
};

describe.each([true, false])('virtio-net, host ends rounds: %s', (rounds) => {
  beforeAll(() => {
    hostRounds = rounds;
  });

  it('is found through its capabilities: IDs, class, virtio vendor caps', () => {
    const d = new Driver();
    const cfg = d.dev.config.image;
    expect(rd16(cfg, 0)).toBe(0x1af4);
    expect(rd16(cfg, 2)).toBe(0x1041);
    expect(rd32(cfg, 8) >>> 8).toBe(0x020000);
    const vendor = walkCaps(cfg)
      .filter((c) => c.id === 0x09)
      .map((c) => cfg[c.offset + 3]);
    expect(vendor).toEqual([1, 2, 3, 4]); // common, notify, ISR, device
    expect([...d.bus.read(0, DEVICE_CFG + NET_CFG.MAC, 6)]).toEqual([...MAC]);
    expect(rd16(d.bus.read(0, DEVICE_CFG + NET_CFG.MTU, 2), 0)).toBe(1500);
  });

  it('negotiates: offers VERSION_1 and ACCESS_PLATFORM; refuses unoffered features', () => {
    const d = new Driver();
    expect(d.deviceFeatures() & (1n << 32n)).not.toBe(0n);
    expect(d.deviceFeatures() & (1n << 33n)).not.toBe(0n);
    expect(d.status() & STATUS_FEATURES_OK).toBe(STATUS_FEATURES_OK);
    const bad = new Driver({ features: (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << 60n) });
    expect(bad.status() & STATUS_FEATURES_OK).toBe(0);
    expect(bad.host.traced('virtio.features.refused')).toBe(1);
    const legacy = new Driver({ features: 1n << 5n });
    expect(legacy.status() & STATUS_FEATURES_OK).toBe(0);
  });

  it('declares a push rule per enabled queue (ring, table, readable chains) and drops them at reset', () => {
    const d = new Driver();
    d.setupQueues();
    expect([...d.host.pushRules.keys()]).toEqual([0, 1]);
    expect(d.host.pushRules.get(1)).toEqual({
      kind: 'virtq',
      bar: 0,
      notify: NOTIFY + NOTIFY_MULTIPLIER,
      desc: d.q[1]!.desc,
      avail: d.q[1]!.avail,
      size: QSIZE,
      dataMax: PUSH_CHAIN_MAX,
      indirect: true,
    });
    d.status(0);
    expect(d.host.pushRules.size).toBe(0);
  });

  it('transmits frames to the backend and returns the buffers', async () => {
    const d = new Driver();
    d.setupQueues();
    d.transmit(0, frame(60));
    d.transmit(1, frame(1514, 3));
    await d.bus.settle();
    expect(d.wire.sent).toEqual([frame(60), frame(1514, 3)]);
    expect(d.used(TX_QUEUE).map((u) => u.id)).toEqual([0, 1]);
  });

  it('receives into posted buffers with num_buffers = 1 and interrupts the RX vector', async () => {
    const d = new Driver();
    d.setupQueues();
    d.postRx(4, 2048);
    await d.bus.settle();
    d.wire.onReceive!(frame(100, 9));
    await d.bus.settle();
    const used = d.used(RX_QUEUE);
    expect(used).toEqual([{ id: 0, len: NET_HDR_SIZE + 100 }]);
    const buf = d.rxBuffer(0, NET_HDR_SIZE + 100);
    expect(rd16(buf, 10)).toBe(1);
    expect(buf.subarray(NET_HDR_SIZE)).toEqual(frame(100, 9));
    expect(d.host.interrupts).toContain(RX_QUEUE + 1);
  });

  it('merges small RX buffers for a large frame', async () => {
    const d = new Driver();
    d.setupQueues();
    d.postRx(4, 512);
    d.wire.onReceive!(frame(1400, 5));
    await d.bus.settle();
    const used = d.used(RX_QUEUE);
    expect(used.map((u) => u.id)).toEqual([0, 1, 2]);
    expect(used.reduce((n, u) => n + u.len, 0)).toBe(NET_HDR_SIZE + 1400);
    const joined = new Uint8Array(3 * 512);
    for (let i = 0; i < 3; i++) joined.set(d.rxBuffer(i, 512), i * 512);
    expect(rd16(joined, 10)).toBe(3);
    expect(joined.subarray(NET_HDR_SIZE, NET_HDR_SIZE + 1400)).toEqual(frame(1400, 5));
  });

  it('holds frames in a bounded backlog until buffers come, then counts drops', async () => {
    const d = new Driver();
    d.setupQueues();
    for (let i = 0; i < RX_BACKLOG + 5; i++) d.wire.onReceive!(frame(64, i));
    await d.bus.settle();
    expect(d.dev.counters()).toMatchObject({ rxDropNoBuffer: 5, rxBacklog: RX_BACKLOG, rxFrames: 0 });
    d.postRx(QSIZE, 2048);
    await d.bus.settle();
    expect(d.used(RX_QUEUE)).toHaveLength(QSIZE);
    expect(d.dev.counters()).toMatchObject({ rxFrames: QSIZE, rxBacklog: RX_BACKLOG - QSIZE });
    expect(d.rxBuffer(0, NET_HDR_SIZE + 64).subarray(NET_HDR_SIZE)).toEqual(frame(64, 0));
  });

  it('without mergeable buffers a frame too big for a buffer is dropped and counted', async () => {
    const d = new Driver({ features: (1n << BigInt(VIRTIO_F_VERSION_1)) | (1n << 5n) });
    d.setupQueues();
    expect(d.dev.has(VIRTIO_NET_F_MRG_RXBUF)).toBe(false);
    d.postRx(2, 256);
    d.wire.onReceive!(frame(1000));
    d.wire.onReceive!(frame(100));
    await d.bus.settle();
    expect(d.used(RX_QUEUE)).toEqual([{ id: 0, len: NET_HDR_SIZE + 100 }]);
    expect(d.dev.counters()).toMatchObject({ rxDropTooBig: 1, rxFrames: 1 });
  });

  it('sends a batch longer than its arena in parts: every frame whole, in order', async () => {
    const d = new Driver({ memory: 4 << 20 });
    d.setupQueues();
    // 14 frames of ~64 KiB: more than the 1 MiB the device reads at once.
    const frames = Array.from({ length: 14 }, (_, i) => frame(65_000 - i, i + 1));
    frames.forEach((f, i) => {
      const at = d.alloc(NET_HDR_SIZE + f.length);
      d.host.memory.set(f, d.mem(at) + NET_HDR_SIZE);
      d.desc(TX_QUEUE, i, at, NET_HDR_SIZE + f.length, 0);
    });
    d.offer(TX_QUEUE, ...frames.map((_, i) => i));
    await d.bus.settle();
    expect(d.wire.sent).toEqual(frames);
    expect(d.used(TX_QUEUE).map((u) => u.id)).toEqual(frames.map((_, i) => i));
  });

  it('a chain longer than any frame is returned unsent, traced and counted; the next one goes', async () => {
    const d = new Driver({ memory: 2 << 20 });
    d.setupQueues();
    const big = d.alloc(MAX_TX_FRAME + 1);
    d.desc(TX_QUEUE, 0, big, MAX_TX_FRAME + 1, 0);
    d.offer(TX_QUEUE, 0);
    d.transmit(1, frame(200, 5));
    await d.bus.settle();
    expect(d.wire.sent).toEqual([frame(200, 5)]);
    expect(d.used(TX_QUEUE).map((u) => u.id)).toEqual([0, 1]);
    expect(d.dev.counters()).toMatchObject({ txDropTooBig: 1, txFrames: 1 });
    expect(d.host.traced('virtio-net.tx.too-big')).toBe(1);
  });

  it('follows chained and indirect TX descriptors', async () => {
    const d = new Driver();
    d.setupQueues();
    const s = d.q[TX_QUEUE]!;
    const f = frame(300, 4);
    // Chain: header in descriptor 0, data split over 1 and 2.
    d.host.memory.set(new Uint8Array(NET_HDR_SIZE), d.mem(s.buf));
    d.host.memory.set(f.subarray(0, 100), d.mem(s.buf) + 0x100);
    d.host.memory.set(f.subarray(100), d.mem(s.buf) + 0x200);
    d.desc(TX_QUEUE, 0, s.buf, NET_HDR_SIZE, VRING_DESC_F_NEXT, 1);
    d.desc(TX_QUEUE, 1, s.buf + 0x100n, 100, VRING_DESC_F_NEXT, 2);
    d.desc(TX_QUEUE, 2, s.buf + 0x200n, 200, 0);
    d.offer(TX_QUEUE, 0);
    // Indirect: a table of two descriptors at buf + 0x800.
    const table = s.buf + 0x800n;
    const t = d.mem(table);
    wr64(d.host.memory, t, s.buf);
    wr32(d.host.memory, t + 8, NET_HDR_SIZE);
    wr16(d.host.memory, t + 12, VRING_DESC_F_NEXT);
    wr16(d.host.memory, t + 14, 1);
    wr64(d.host.memory, t + 16, s.buf + 0x200n);
    wr32(d.host.memory, t + 24, 200);
    d.desc(TX_QUEUE, 3, table, 32, VRING_DESC_F_INDIRECT);
    d.offer(TX_QUEUE, 3);
    await d.bus.settle();
    expect(d.wire.sent).toEqual([f, f.subarray(100)]);
  });

  it('a chain that loops breaks the queue: traced, NEEDS_RESET, reset recovers', async () => {
    const d = new Driver();
    d.setupQueues();
    const s = d.q[TX_QUEUE]!;
    d.desc(TX_QUEUE, 0, s.buf, 64, VRING_DESC_F_NEXT, 1);
    d.desc(TX_QUEUE, 1, s.buf, 64, VRING_DESC_F_NEXT, 0);
    d.offer(TX_QUEUE, 0);
    await d.bus.settle();
    expect(d.host.traced('virtio.queue.broken')).toBe(1);
    expect(d.status() & STATUS_NEEDS_RESET).toBe(STATUS_NEEDS_RESET);
    d.status(0);
    expect(d.status()).toBe(0);
    d.bus.write(0, CC.Q_SELECT, leBytes(1, 2));
    expect(rd16(d.bus.read(0, CC.Q_ENABLE, 2), 0)).toBe(0);
    expect(rd16(d.bus.read(0, CC.Q_MSIX, 2), 0)).toBe(NO_VECTOR);
  });

  it('TX: one ring read per notify when the host ends rounds, which decides the interrupt', async () => {
    const d = new Driver();
    d.setupQueues();
    d.transmit(0, frame(60));
    await d.bus.settle();
    const avail = d.q[TX_QUEUE]!.avail;
    const ringReads = d.host.events.filter((e) => e.kind === 'dma-read' && e.iova === avail).length;
    const rounds = d.host.events.flatMap((e) => (e.kind === 'round' ? [e.round] : []));
    if (rounds.length > 0) expect(hostRounds).toBe(true);
    if (hostRounds) {
      expect(ringReads).toBe(1);
      expect(rounds).toEqual([
        { rule: TX_QUEUE, vector: TX_QUEUE + 1, oldUsed: 0, newUsed: 1, eventIdx: true, kick: TX_QUEUE },
      ]);
    } else {
      expect(ringReads).toBe(2); // the re-read after the completion
    }
    expect(d.wire.sent).toEqual([frame(60)]);
    expect(d.host.interrupts).toContain(TX_QUEUE + 1);
  });

  it('a buffer made available without a notify while the device was busy is still sent', async () => {
    const d = new Driver();
    d.setupQueues();
    // The device reads the ring when notified; the second frame comes right after that read,
    // without a notify of its own (the driver saw avail_event before the device moved it).
    d.transmit(0, frame(60, 1));
    const s = d.q[TX_QUEUE]!;
    d.host.memory.set(new Uint8Array(NET_HDR_SIZE), d.mem(s.buf + 0x1000n));
    d.host.memory.set(frame(70, 2), d.mem(s.buf + 0x1000n) + NET_HDR_SIZE);
    d.desc(TX_QUEUE, 1, s.buf + 0x1000n, NET_HDR_SIZE + 70, 0);
    d.offerQuietly(TX_QUEUE, 1);
    for (let i = 0; i < 5 && d.wire.sent.length < 2; i++) await d.bus.settle();
    expect(d.wire.sent).toEqual([frame(60, 1), frame(70, 2)]);
    if (hostRounds) expect(d.host.events.filter((e) => e.kind === 'kick')).toHaveLength(1);
  });

  it('suppresses interrupts with the event index', async () => {
    const d = new Driver();
    d.setupQueues();
    expect(d.dev.has(VIRTIO_F_EVENT_IDX)).toBe(true);
    d.usedEvent(TX_QUEUE, 5); // interrupt only when used idx passes 5
    for (let i = 0; i < 3; i++) {
      d.transmit(i, frame(60, i));
      await d.bus.settle();
    }
    expect(d.host.interrupts.filter((v) => v === TX_QUEUE + 1)).toHaveLength(0);
    for (let i = 3; i < 6; i++) {
      d.transmit(i, frame(60, i));
      await d.bus.settle();
    }
    expect(d.host.interrupts.filter((v) => v === TX_QUEUE + 1)).toHaveLength(1);
    // The device asked to be kicked at the next buffer: avail_event = 6.
    expect(rd16(d.host.memory, d.mem(d.q[TX_QUEUE]!.used) + 4 + 8 * QSIZE)).toBe(6);
  });

  it('link down and up: status bit, config generation, config interrupt, RX drops while down', async () => {
    const d = new Driver();
    d.setupQueues();
    d.postRx(2, 2048);
    const gen = d.bus.read(0, CC.CFGGEN, 1)[0]!;
    d.host.interrupts.length = 0;
    d.dev.setLink(false);
    expect(rd16(d.bus.read(0, DEVICE_CFG + NET_CFG.STATUS, 2), 0)).toBe(0);
    expect(d.bus.read(0, CC.CFGGEN, 1)[0]).toBe(gen + 1);
    expect(d.host.interrupts).toContain(0);
    d.wire.onReceive!(frame(60));
    await d.bus.settle();
    expect(d.dev.counters()).toMatchObject({ rxDropLinkDown: 1, rxFrames: 0 });
    d.dev.setLink(true);
    expect(rd16(d.bus.read(0, DEVICE_CFG + NET_CFG.STATUS, 2), 0)).toBe(VIRTIO_NET_S_LINK_UP);
    d.wire.onReceive!(frame(60));
    await d.bus.settle();
    expect(d.dev.counters()).toMatchObject({ rxFrames: 1 });
  });

  it('DRIVER_OK raises a config change: a driver restored without a probe reads the link status again', () => {
    const d = new Driver();
    const gen = d.bus.read(0, CC.CFGGEN, 1)[0]!;
    d.setupQueues();
    expect(d.host.interrupts.filter((v) => v === 0)).toHaveLength(1);
    expect(d.bus.read(0, CC.CFGGEN, 1)[0]).toBe(gen + 1);
    expect(rd16(d.bus.read(0, DEVICE_CFG + NET_CFG.STATUS, 2), 0)).toBe(VIRTIO_NET_S_LINK_UP);
  });

  it('the backend’s link state drives the link: down at creation, then its changes', () => {
    const wire = new Wire();
    Object.assign(wire, { linkUp: false });
    const dev = new VirtioNet({ mac: MAC, backend: wire });
    expect(dev.linkUp).toBe(false);
    wire.onLink!(true);
    expect(dev.linkUp).toBe(true);
    wire.onLink!(false);
    expect(dev.linkUp).toBe(false);
  });

  it('survives driver mistakes: bad queue size, bad vector, enable without rings, kick of a disabled queue', () => {
    const d = new Driver();
    d.bus.write(0, CC.Q_SELECT, leBytes(0, 2));
    d.bus.write(0, CC.Q_SIZE, leBytes(100, 2));
    expect(rd16(d.bus.read(0, CC.Q_SIZE, 2), 0)).toBe(256);
    d.bus.write(0, CC.Q_MSIX, leBytes(99, 2));
    expect(rd16(d.bus.read(0, CC.Q_MSIX, 2), 0)).toBe(NO_VECTOR);
    d.bus.write(0, CC.Q_ENABLE, leBytes(1, 2));
    expect(rd16(d.bus.read(0, CC.Q_ENABLE, 2), 0)).toBe(0);
    d.bus.write(0, NOTIFY, leBytes(0, 2));
    d.bus.write(0, CC.Q_SELECT, leBytes(7, 2));
    expect(rd16(d.bus.read(0, CC.Q_SIZE, 2), 0)).toBe(0);
    for (const e of [
      'virtio.queue.bad-size',
      'virtio.msix.bad-vector',
      'virtio.queue.enable-without-rings',
      'virtio.queue.kick-ignored',
    ]) {
      expect(d.host.traced(e), e).toBe(1);
    }
  });

  describe('offloads', () => {
    const OFFLOADS = [0, 1, 7, 8, 9, 11, 12, 13].reduce((f, b) => f | bit(b), 0n);

    it('are offered only with a backend that takes net headers, and not when turned off', () => {
      expect(new Driver().deviceFeatures() & OFFLOADS).toBe(0n);
      expect(new Driver({ netHeader: true }).deviceFeatures() & OFFLOADS).toBe(OFFLOADS);
      expect(new Driver({ netHeader: true, offloads: false }).deviceFeatures() & OFFLOADS).toBe(0n);
    });

    it('tell the backend what the driver takes when it is ready, and nothing after a reset', () => {
      const d = new Driver({ netHeader: true });
      d.setupQueues();
      expect(d.wire.offloads.at(-1)).toEqual({ csum: true, tso4: true, tso6: true, ecn: true });
      d.status(0);
      expect(d.wire.offloads.at(-1)).toEqual({ csum: false, tso4: false, tso6: false, ecn: false });
      const plain = new Driver();
      plain.setupQueues();
      expect(plain.wire.offloads).toEqual([]);
    });

    it('TX: a TSO segment goes to the backend with its header, unchanged', async () => {
      const d = new Driver({ netHeader: true });
      d.setupQueues();
      const hdr = netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV4, 1448);
      d.transmit(0, frame(3000, 2), hdr);
      d.transmit(1, frame(60, 3));
      await d.bus.settle();
      expect(d.wire.sent).toEqual([
        withHdr(hdr, frame(3000, 2)),
        withHdr(new Uint8Array(NET_HDR_SIZE), frame(60, 3)),
      ]);
      expect(d.dev.counters()).toMatchObject({ txFrames: 2, txBytes: 3060, txDropOffload: 0 });
    });

    it('TX: a header asking for what was not negotiated is traced and dropped, the buffer returned', async () => {
      const only = (...b: number[]) =>
        b.reduce((f, x) => f | bit(x), bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF));
      const d = new Driver({ netHeader: true, features: only(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4) });
      d.setupQueues();
      d.transmit(0, frame(100), netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV6, 1428)); // TSO6 not taken
      d.transmit(1, frame(100), netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV4 | NET_HDR_GSO_ECN, 1448));
      d.transmit(2, frame(100), netHdr(0, 3, 1400)); // UDP fragmentation: never offered
      d.transmit(3, frame(100), netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV4, 1448));
      await d.bus.settle();
      expect(d.wire.sent).toHaveLength(1);
      expect(d.used(TX_QUEUE).map((u) => u.id)).toEqual([0, 1, 2, 3]);
      expect(d.host.traced('virtio-net.tx.offload-not-negotiated')).toBe(3);
      expect(d.dev.counters()).toMatchObject({ txFrames: 1, txDropOffload: 3 });
      // Without a header backend every offload is unnegotiated.
      const plain = new Driver();
      plain.setupQueues();
      plain.transmit(0, frame(100), netHdr(NET_HDR_F_NEEDS_CSUM, 0));
      await plain.bus.settle();
      expect(plain.wire.sent).toEqual([]);
      expect(plain.dev.counters()).toMatchObject({ txDropOffload: 1 });
    });

    it('RX: a 60 KiB TSO segment spreads over mergeable buffers, its header kept, num_buffers set', async () => {
      const d = new Driver({ netHeader: true });
      d.setupQueues();
      d.postRx(QSIZE, 4096);
      const hdr = netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV6, 1428);
      const f = frame(60000, 6);
      d.wire.onReceive!(withHdr(hdr, f));
      await d.bus.settle();
      const used = d.used(RX_QUEUE);
      expect(used).toHaveLength(15);
      const got = new Uint8Array(15 * 4096);
      for (const [i, u] of used.entries()) got.set(d.rxBuffer(u.id, u.len), i * 4096);
      const want = withHdr(hdr, f);
      wr16(want, 10, 15);
      expect(got.subarray(0, NET_HDR_SIZE + 60000)).toEqual(want);
      expect(d.dev.counters()).toMatchObject({ rxFrames: 1, rxBytes: 60000 });
    });

    it('RX: frames needing an offload the driver did not take are dropped; DATA_VALID cleared without GUEST_CSUM', async () => {
      const base = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
      const d = new Driver({
        netHeader: true,
        features: base | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4),
      });
      d.setupQueues();
      d.postRx(4, 2048);
      d.wire.onReceive!(withHdr(netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV6, 1428), frame(1500)));
      d.wire.onReceive!(
        withHdr(netHdr(NET_HDR_F_NEEDS_CSUM, NET_HDR_GSO_TCPV4 | NET_HDR_GSO_ECN, 1448), frame(1500)),
      );
      d.wire.onReceive!(withHdr(netHdr(NET_HDR_F_DATA_VALID | 4, 0), frame(100)));
      await d.bus.settle();
      expect(d.dev.counters()).toMatchObject({ rxFrames: 1, rxDropOffload: 2 });
      expect(d.rxBuffer(0, 1)[0]).toBe(NET_HDR_F_DATA_VALID); // unknown flag bits not passed on
      const noCsum = new Driver({ netHeader: true, features: base });
      noCsum.setupQueues();
      noCsum.postRx(4, 2048);
      noCsum.wire.onReceive!(withHdr(netHdr(NET_HDR_F_DATA_VALID, 0), frame(100)));
      noCsum.wire.onReceive!(withHdr(netHdr(NET_HDR_F_NEEDS_CSUM, 0), frame(100)));
      await noCsum.bus.settle();
      expect(noCsum.used(RX_QUEUE)).toEqual([{ id: 0, len: NET_HDR_SIZE + 100 }]);
      expect(noCsum.rxBuffer(0, 1)[0]).toBe(0);
      expect(noCsum.dev.counters()).toMatchObject({ rxFrames: 1, rxDropOffload: 1 });
      expect(noCsum.dev.has(VIRTIO_NET_F_HOST_TSO6)).toBe(false);
    });
  });
});
