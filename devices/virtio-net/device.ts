// virtio-net (virtio 1.2 §5.1) on the virtio-pci core: one RX and one TX queue, MAC, link status,
// MTU and mergeable RX buffers. Frames go to and come from an injected NetBackend (a TAP device on
// the card, or a test double); the model never touches sockets or files.
//
// Offloads (§5.1.6.2, §5.1.6.4): with a backend whose frames carry the virtio net header (a TAP with
// IFF_VNET_HDR), the device offers checksum offload and TSO both ways, so a TCP stream crosses the
// card as 64 KiB segments instead of 1.5 KiB frames: one doorbell, one push and one interrupt per
// segment. Headers pass through unchanged (the card's kernel checks them, as it does a VM's); the
// device only refuses what the driver did not negotiate, and tells the backend which offloads the
// driver takes on received frames.
//
// RX never drops silently: frames that arrive while the driver has posted no buffers wait in a
// bounded backlog (RX_BACKLOG frames); past it, and while the link is down or the driver is not
// ready, they are dropped and counted (rxDropNoBuffer, rxDropLinkDown, rxDropNotReady).
import type { Register } from '../pci/index.js';
import { wr16 } from '../pci/le.js';
import { deviceSpec, intOption, type OptionParser, switchOption } from '../spec.js';
import { VirtioPciDevice } from '../virtio/pci.js';
import { type Chain, SplitQueue } from '../virtio/virtqueue.js';

export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_S_LINK_UP = 1;

/** struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const NET_HDR_SIZE = 12;
/** The longest frame a driver transmits, net header included: a TSO segment of 64 KiB of IPv6
 *  payload with its 40-byte header, Ethernet and two VLAN tags. Longer chains are driver mistakes. */
export const MAX_TX_FRAME = NET_HDR_SIZE + 0xffff + 40 + 22;
/** Transmitted frames read at once at most, in bytes (a whole ring of small frames, or 16 TSO
 *  segments). */
const TX_ARENA = 1 << 20;
export const NET_HDR_F_NEEDS_CSUM = 1;
export const NET_HDR_F_DATA_VALID = 2;
export const NET_HDR_GSO_NONE = 0;
export const NET_HDR_GSO_TCPV4 = 1;
export const NET_HDR_GSO_TCPV6 = 4;
export const NET_HDR_GSO_ECN = 0x80;
/** Every offload feature, offered when the backend takes headers. */
const OFFLOAD_FEATURES = [
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
].reduce((f, bit) => f | (1n << BigInt(bit)), 0n);
export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
export const QUEUE_SIZE = 256;
export const RX_BACKLOG = 256;
/** Config layout (§5.1.4). */
export const NET_CFG = { MAC: 0, STATUS: 6, MAX_VQ_PAIRS: 8, MTU: 10 } as const;

/** Offloads the driver takes on received frames (what a TAP's TUNSETOFFLOAD sets). */
export interface RxOffloads {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  ecn: boolean;
}

/** What the card does with frames: implemented by endpoint/backends (TAP) and by tests. */
export interface NetBackend {
  /** Frames both ways start with a virtio net header (NET_HDR_SIZE bytes, little-endian, the
   *  num_buffers field ignored) and may be offloaded: partial checksums, TSO segments. */
  readonly netHeader?: boolean;
  /** Set by the device when the driver's offloads change (driver ready, reset): the backend must
   *  not hand over frames that need more. Only called on backends with `netHeader`. */
  setOffloads?(o: RxOffloads): void;
  /** A frame the driver transmitted; it is the backend's only during the call (until the promise
   *  settles): the device reads the next frame into the same memory. May return a promise to
   *  apply backpressure. */
  send(frame: Uint8Array): void | Promise<void>;
  /** Set by the device: frames for the driver. */
  onReceive: ((frame: Uint8Array) => void) | undefined;
  /** Set by the device: the backend's side of the link went down or up (the card's admin). */
  onLink?: ((up: boolean) => void) | undefined;
  /** The backend's link state now (undefined: it has none; the link stays up). */
  readonly linkUp?: boolean | undefined;
  close(): void;
}

export interface VirtioNetOptions {
  mac: Uint8Array;
  mtu?: number;
  backend: NetBackend;
  /** Offer checksum and TSO offloads when the backend takes net headers (default true). */
  offloads?: boolean;
}

export interface NetCounters {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  rxDropNoBuffer: number;
  rxDropLinkDown: number;
  rxDropNotReady: number;
  rxDropTooBig: number;
  /** Received frames needing an offload the driver did not take (only while offloads change). */
  rxDropOffload: number;
  txDropLinkDown: number;
  /** Transmitted chains longer than any frame (MAX_TX_FRAME): not read, not sent. */
  txDropTooBig: number;
  /** Transmitted frames whose header asks for an offload the driver did not negotiate. */
  txDropOffload: number;
}

export class VirtioNet extends VirtioPciDevice<VirtioNet> {
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly #backend: NetBackend;
  /** The backend's frames carry net headers (and offloads may be offered). */
  readonly #headers: boolean;
  readonly counters_: NetCounters = {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    rxDropNoBuffer: 0,
    rxDropLinkDown: 0,
    rxDropNotReady: 0,
    rxDropTooBig: 0,
    rxDropOffload: 0,
    txDropLinkDown: 0,
    txDropTooBig: 0,
    txDropOffload: 0,
  };
  #backlog: Uint8Array[] = [];
  /** Where transmitted frames are read and handed to the backend (NetBackend.send: the frame is
   *  the backend's only during the call), so a frame costs no allocation. */
  readonly #txArena = new Uint8Array(TX_ARENA);
  /** RX chains taken from the ring but not yet filled (mergeable buffers gather several). */
  #held: Chain[] = [];
  #linkUp = true;

  constructor(o: VirtioNetOptions) {
    if (o.mac.length !== 6) throw new RangeError('virtio-net: a MAC address is 6 bytes');
    const mtu = o.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535)
      throw new RangeError(`virtio-net: MTU ${mtu} is not 68..65535`);
    const headers = o.backend.netHeader === true;
    const config: Register<VirtioNet>[] = [
      ...[...o.mac].map((b, i) => ({
        name: `MAC${i}`,
        at: NET_CFG.MAC + i,
        size: 1 as const,
        access: 'ro' as const,
        reset: b,
      })),
      { name: 'NET_STATUS', at: NET_CFG.STATUS, size: 2, access: 'ro', reset: VIRTIO_NET_S_LINK_UP },
      { name: 'MAX_VQ_PAIRS', at: NET_CFG.MAX_VQ_PAIRS, size: 2, access: 'ro', reset: 1 },
      { name: 'MTU', at: NET_CFG.MTU, size: 2, access: 'ro', reset: mtu },
    ];
    super({
      model: 'virtio-net',
      deviceType: 1,
      features:
        (1n << BigInt(VIRTIO_NET_F_MTU)) |
        (1n << BigInt(VIRTIO_NET_F_MAC)) |
        (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF)) |
        (1n << BigInt(VIRTIO_NET_F_STATUS)) |
        (headers && o.offloads !== false ? OFFLOAD_FEATURES : 0n),
      queues: [{ size: QUEUE_SIZE }, { size: QUEUE_SIZE }],
      config,
      configSize: 12,
    });
    this.mac = o.mac.slice();
    this.mtu = mtu;
    this.#backend = o.backend;
    this.#headers = headers;
    this.#backend.onReceive = (f) => this.receive(f);
    this.#backend.onLink = (up) => this.setLink(up);
    if (this.#backend.linkUp === false) this.setLink(false);
  }

  override counters(): Record<string, number> {
    return { ...this.counters_, rxBacklog: this.#backlog.length };
  }

  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** The card takes the link down or up; the driver sees a config change. */
  setLink(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    this.bar(0).set16(0x2000 + NET_CFG.STATUS, up ? VIRTIO_NET_S_LINK_UP : 0);
    if (!up) {
      this.counters_.rxDropLinkDown += this.#backlog.length;
      this.#backlog = [];
    }
    this.configChanged();
  }

  /** A frame from the network, for the driver (with a net header in front if the backend has them). */
  receive(frame: Uint8Array): void {
    if (!this.#linkUp) {
      this.counters_.rxDropLinkDown++;
      return;
    }
    if (!this.driverOk || !this.queue(RX_QUEUE)) {
      this.counters_.rxDropNotReady++;
      return;
    }
    if (this.#backlog.length >= RX_BACKLOG) {
      this.counters_.rxDropNoBuffer++;
      return;
    }
    let data: Uint8Array;
    if (this.#headers) {
      if (frame.length <= NET_HDR_SIZE) {
        this.trace('virtio-net.rx.short', { bytes: frame.length });
        return;
      }
      data = frame.slice();
      if (!this.#rxHeader(data)) {
        this.counters_.rxDropOffload++;
        return;
      }
    } else {
      data = new Uint8Array(NET_HDR_SIZE + frame.length);
      data.set(frame, NET_HDR_SIZE);
    }
    this.#backlog.push(data);
    this.kick(RX_QUEUE);
  }

  /** Fits a received header to what the driver negotiated; false if the frame needs more. */
  #rxHeader(h: Uint8Array): boolean {
    const csum = this.has(VIRTIO_NET_F_GUEST_CSUM);
    const gso = h[1]!;
    if (h[0]! & NET_HDR_F_NEEDS_CSUM && !csum) return false;
    if (gso & NET_HDR_GSO_ECN && !this.has(VIRTIO_NET_F_GUEST_ECN)) return false;
    const type = gso & ~NET_HDR_GSO_ECN;
    if (
      type === NET_HDR_GSO_TCPV4
        ? !this.has(VIRTIO_NET_F_GUEST_TSO4)
        : type === NET_HDR_GSO_TCPV6
          ? !this.has(VIRTIO_NET_F_GUEST_TSO6)
          : type !== NET_HDR_GSO_NONE
    )
      return false;
    // Without GUEST_CSUM the flags must be zero (§5.1.6.4.1); other bits are not ours to pass on.
    h[0] = csum ? h[0]! & (NET_HDR_F_NEEDS_CSUM | NET_HDR_F_DATA_VALID) : 0;
    return true;
  }

  /** Why a transmitted header asks for more than the driver negotiated, or undefined. */
  #txRefused(h: Uint8Array): string | undefined {
    const gso = h[1]!;
    const type = gso & ~NET_HDR_GSO_ECN;
    if (h[0]! & NET_HDR_F_NEEDS_CSUM && !this.has(VIRTIO_NET_F_CSUM)) return 'checksum offload';
    if (type === NET_HDR_GSO_TCPV4 && !this.has(VIRTIO_NET_F_HOST_TSO4)) return 'TSO over IPv4';
    if (type === NET_HDR_GSO_TCPV6 && !this.has(VIRTIO_NET_F_HOST_TSO6)) return 'TSO over IPv6';
    if (type !== NET_HDR_GSO_NONE && type !== NET_HDR_GSO_TCPV4 && type !== NET_HDR_GSO_TCPV6)
      return `GSO type ${type}`;
    if (gso & NET_HDR_GSO_ECN && !this.has(VIRTIO_NET_F_HOST_ECN)) return 'TSO with ECN';
    return undefined;
  }

  protected override onDeviceReset(): void {
    if (this.#headers) this.#backend.setOffloads?.({ csum: false, tso4: false, tso6: false, ecn: false });
    this.#held = [];
    this.counters_.rxDropNotReady += this.#backlog.length;
    this.#backlog = [];
    // Link state is the card's, not the driver's: it survives a reset.
    this.bar(0).set16(0x2000 + NET_CFG.STATUS, this.#linkUp ? VIRTIO_NET_S_LINK_UP : 0);
  }

  protected override async serviceQueue(q: number, ring: SplitQueue, epoch: number): Promise<void> {
    if (q === TX_QUEUE) await this.#transmit(ring, epoch);
    else if (q === RX_QUEUE) await this.#fillRx(ring, epoch);
  }

  async #transmit(ring: SplitQueue, epoch: number): Promise<void> {
    const rounds = ring.hostRounds;
    for (;;) {
      // Without host rounds: ask for a notify at the next buffer before looking (so none is
      // missed), and decide about the interrupt for what the previous round completed from the
      // same read. With them, the notify's push holds the ring as the driver left it.
      if (!rounds) ring.publishAvailEvent();
      const n = await ring.refresh(true);
      if (this.stale(epoch)) return;
      if (!rounds && ring.interruptDue()) this.interruptQueue(TX_QUEUE);
      if (n === 0) break;
      // Every chain's indirect table, then every frame's bytes, in flight at once: two round
      // trips for the batch, whatever its size (none when the notify pushed them). The frames
      // are read into the queue's arena, TX_ARENA bytes of them at a time.
      const chains = await ring.popAll();
      for (let start = 0; start < chains.length; ) {
        // As many chains as the arena holds (at least one); an over-long one is not read.
        const slots: { at: number; len: number; fits: boolean }[] = [];
        let bytes = 0;
        for (let k = start; k < chains.length; k++) {
          const len = SplitQueue.readableBytes(chains[k]!);
          const fits = len <= MAX_TX_FRAME;
          if (fits && bytes + len > TX_ARENA) break;
          slots.push({ at: bytes, len, fits });
          if (fits) bytes += len;
        }
        const arena = this.#txArena;
        const frames = await Promise.all(
          slots.map((f, k) =>
            f.fits ? ring.read(chains[start + k]!, arena.subarray(f.at, f.at + f.len)) : undefined,
          ),
        );
        if (this.stale(epoch)) return;
        for (let k = 0; k < slots.length; k++)
          await this.#sendFrame(ring, chains[start + k]!, frames[k], slots[k]!.len);
        if (this.stale(epoch)) return;
        start += slots.length;
      }
      if (this.stale(epoch)) return;
      // The host decides the interrupt and notifies us of buffers that came meanwhile.
      if (rounds) break;
      // The driver frees sent buffers on this interrupt, and TCP waits for that (small queues):
      // do not make it wait for another ring read.
      if (ring.interruptNow()) this.interruptQueue(TX_QUEUE);
    }
    if (rounds && !this.stale(epoch)) this.endRound(TX_QUEUE, ring, { interrupt: true, recheck: true });
  }

  /** One transmitted chain: used at once (0 bytes written), its frame to the backend unless it is
   *  dropped; `data` undefined: the chain was longer than any frame (`len` bytes), and not read. */
  async #sendFrame(ring: SplitQueue, chain: Chain, data: Uint8Array | undefined, len: number): Promise<void> {
    ring.push(chain.head, 0);
    if (!data) {
      this.counters_.txDropTooBig++;
      this.trace('virtio-net.tx.too-big', { bytes: len, max: MAX_TX_FRAME });
      return;
    }
    if (data.length <= NET_HDR_SIZE) {
      this.trace('virtio-net.tx.short', { bytes: data.length });
      return;
    }
    const refused = this.#txRefused(data);
    if (refused) {
      this.counters_.txDropOffload++;
      this.trace('virtio-net.tx.offload-not-negotiated', { offload: refused });
      return;
    }
    if (!this.#linkUp) {
      this.counters_.txDropLinkDown++;
      return;
    }
    this.counters_.txFrames++;
    this.counters_.txBytes += data.length - NET_HDR_SIZE;
    await this.#backend.send(this.#headers ? data : data.subarray(NET_HDR_SIZE));
  }

  async #fillRx(ring: SplitQueue, epoch: number): Promise<void> {
    const mergeable = this.has(VIRTIO_NET_F_MRG_RXBUF);
    const rounds = ring.hostRounds;
    let delivered = 0;
    let waiting = false;
    while (this.#backlog.length > 0 && !this.stale(epoch)) {
      const data = this.#backlog[0]!;
      const need = data.length;
      // Gather chains until they hold the frame (one chain without mergeable buffers).
      while (this.#capacity() < need && (mergeable || this.#held.length === 0)) {
        let chain = await ring.pop();
        if (!chain) {
          // With host rounds every buffer comes with a notify: without one since the last look
          // there is nothing new (the round's recheck catches buffers that raced with it).
          // Without: ask for a notify at the next buffer, then look: it may have come meanwhile.
          if (rounds && !ring.notified) {
            waiting = true;
            break;
          }
          if (!rounds) ring.publishAvailEvent();
          if ((await ring.refresh(true)) === 0) {
            waiting = true;
            break;
          }
          chain = await ring.pop();
          if (!chain) break;
        }
        if (this.stale(epoch)) return;
        this.#held.push(chain);
      }
      if (this.#capacity() < need) {
        if (!mergeable && this.#held.length > 0) {
          // The driver's buffer cannot hold this frame: drop it, keep the buffer for the next.
          this.counters_.rxDropTooBig++;
          this.#backlog.shift();
          continue;
        }
        break; // wait for the driver to post buffers (it notifies the RX queue)
      }
      this.#backlog.shift();
      this.#deliver(ring, data);
      delivered++;
    }
    if (this.stale(epoch)) return;
    if (rounds) {
      // Every round publishes avail_event, so every round rechecks: a driver that posted buffers
      // before it saw the new value did not notify.
      if (delivered > 0 || waiting)
        this.endRound(RX_QUEUE, ring, { interrupt: delivered > 0, recheck: true });
    } else if (delivered > 0 && (ring.interruptNow() || (await ring.shouldInterrupt()))) {
      this.interruptQueue(RX_QUEUE);
    }
  }

  #capacity(): number {
    return this.#held.reduce((n, c) => n + c.writable.reduce((m, s) => m + s.len, 0), 0);
  }

  /** Writes a frame (its header first) across the held chains (as few as needed) and returns them
   *  used. */
  #deliver(ring: SplitQueue, data: Uint8Array): void {
    const used: { chain: Chain; len: number }[] = [];
    let left = data.length;
    while (left > 0) {
      const chain = this.#held.shift()!;
      const cap = chain.writable.reduce((m, s) => m + s.len, 0);
      used.push({ chain, len: Math.min(cap, left) });
      left -= Math.min(cap, left);
    }
    wr16(data, 10, used.length); // num_buffers
    let at = 0;
    for (const u of used) {
      ring.write(u.chain, data.subarray(at, at + u.len));
      at += u.len;
    }
    for (const u of used) ring.push(u.chain.head, u.len);
    this.counters_.rxFrames++;
    this.counters_.rxBytes += data.length - NET_HDR_SIZE;
  }

  protected override onDriverOk(): void {
    if (this.#headers)
      this.#backend.setOffloads?.({
        csum: this.has(VIRTIO_NET_F_GUEST_CSUM),
        tso4: this.has(VIRTIO_NET_F_GUEST_TSO4),
        tso6: this.has(VIRTIO_NET_F_GUEST_TSO6),
        ecn: this.has(VIRTIO_NET_F_GUEST_ECN),
      });
    if (this.#backlog.length > 0) this.kick(RX_QUEUE);
    // A driver set up again without a probe (Linux's restore() after hibernation, or after
    // pcinet.ko's link down, docs/KERNEL.md) still holds the link status it last read, which
    // may not be this device's: a config change makes it read the status again.
    this.configChanged();
  }
}

/** A TAP interface name: what the kernel takes (IFNAMSIZ), checked before anything is opened. */
export function checkTapName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) {
    throw new Error(`tap name "${name}" is not 1..15 letters, digits, '_', '.', '-'`);
  }
  return name;
}

/** A MAC address aa:bb:cc:dd:ee:ff (unicast). */
export const macOption: OptionParser<Uint8Array> = {
  syntax: 'xx:xx:xx:xx:xx:xx',
  help: 'MAC address (default: 52:54:00 and three bytes derived from the TAP name)',
  parse(value) {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(value))
      throw new Error('must be six hex bytes separated by colons');
    const mac = Uint8Array.from(value.split(':').map((b) => Number.parseInt(b, 16)));
    if (mac[0]! & 1) throw new Error('must be a unicast address (first byte even)');
    return mac;
  },
};

/** A stable, locally administered MAC for a TAP name: the guest keeps its address across restarts. */
export function defaultMac(name: string): Uint8Array {
  let h = 2166136261;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return Uint8Array.of(0x52, 0x54, 0x00, (h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff);
}

export const virtioNetSpec = deviceSpec({
  name: 'virtio-net',
  summary: 'a virtio 1.x network card whose wire is a TAP interface on this machine (docs/devices.md)',
  options: {
    tap: { syntax: 'NAME', help: 'TAP interface to use, created if absent (required)', parse: checkTapName },
    mac: macOption,
    mtu: intOption(68, 65535, 'MTU the driver is told (default 1500)'),
    offloads: switchOption('checksum and TSO offloads through the TAP (default on)'),
  },
  create: (o, card) => {
    if (!o.tap) throw new Error('virtio-net needs tap=NAME (the TAP interface frames go to)');
    const offloads = o.offloads ?? true;
    return new VirtioNet({
      mac: o.mac ?? defaultMac(o.tap),
      mtu: o.mtu,
      offloads,
      backend: card.tap(o.tap, { netHeader: offloads }),
    });
  },
});
