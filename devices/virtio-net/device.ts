// virtio-net (virtio 1.2 §5.1) on the virtio-pci core: one RX and one TX queue, MAC, link status,
// MTU and mergeable RX buffers. Frames go to and come from an injected NetBackend (a TAP device on
// the card, or a test double); the model never touches sockets or files.
//
// RX never drops silently: frames that arrive while the driver has posted no buffers wait in a
// bounded backlog (RX_BACKLOG frames); past it, and while the link is down or the driver is not
// ready, they are dropped and counted (rxDropNoBuffer, rxDropLinkDown, rxDropNotReady).
import type { Register } from '../pci/index.js';
import { wr16 } from '../pci/le.js';
import { VirtioPciDevice } from '../virtio/pci.js';
import type { Chain, SplitQueue } from '../virtio/virtqueue.js';

export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_S_LINK_UP = 1;

/** struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const NET_HDR_SIZE = 12;
export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
export const QUEUE_SIZE = 256;
export const RX_BACKLOG = 256;
/** Config layout (§5.1.4). */
export const NET_CFG = { MAC: 0, STATUS: 6, MAX_VQ_PAIRS: 8, MTU: 10 } as const;

/** What the card does with frames: implemented by endpoint/backends (TAP) and by tests. */
export interface NetBackend {
  /** A frame the driver transmitted. May return a promise to apply backpressure. */
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
  txDropLinkDown: number;
}

export class VirtioNet extends VirtioPciDevice<VirtioNet> {
  readonly mac: Uint8Array;
  readonly mtu: number;
  readonly #backend: NetBackend;
  readonly counters_: NetCounters = {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    rxDropNoBuffer: 0,
    rxDropLinkDown: 0,
    rxDropNotReady: 0,
    rxDropTooBig: 0,
    txDropLinkDown: 0,
  };
  #backlog: Uint8Array[] = [];
  /** RX chains taken from the ring but not yet filled (mergeable buffers gather several). */
  #held: Chain[] = [];
  #linkUp = true;

  constructor(o: VirtioNetOptions) {
    if (o.mac.length !== 6) throw new RangeError('virtio-net: a MAC address is 6 bytes');
    const mtu = o.mtu ?? 1500;
    if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535)
      throw new RangeError(`virtio-net: MTU ${mtu} is not 68..65535`);
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
      classCode: 0x020000,
      features:
        (1n << BigInt(VIRTIO_NET_F_MTU)) |
        (1n << BigInt(VIRTIO_NET_F_MAC)) |
        (1n << BigInt(VIRTIO_NET_F_MRG_RXBUF)) |
        (1n << BigInt(VIRTIO_NET_F_STATUS)),
      queueSizes: [QUEUE_SIZE, QUEUE_SIZE],
      config,
      configSize: 12,
    });
    this.mac = o.mac.slice();
    this.mtu = mtu;
    this.#backend = o.backend;
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

  /** A frame from the network, for the driver. */
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
    this.#backlog.push(frame.slice());
    this.kick(RX_QUEUE);
  }

  protected override onDeviceReset(): void {
    this.#held = [];
    this.counters_.rxDropNotReady += this.#backlog.length;
    this.#backlog = [];
    // Link state is the card's, not the driver's: it survives a reset.
    this.bar(0).set16(0x2000 + NET_CFG.STATUS, this.#linkUp ? VIRTIO_NET_S_LINK_UP : 0);
  }

  protected async serviceQueue(q: number, ring: SplitQueue, epoch: number): Promise<void> {
    if (q === TX_QUEUE) await this.#transmit(ring, epoch);
    else if (q === RX_QUEUE) await this.#fillRx(ring, epoch);
  }

  async #transmit(ring: SplitQueue, epoch: number): Promise<void> {
    for (;;) {
      // Ask for a kick at the next buffer before looking (so none is missed), and decide about
      // the interrupt for what the previous round completed from the same read.
      ring.publishAvailEvent();
      const n = await ring.refresh(true);
      if (this.stale(epoch)) return;
      if (ring.interruptDue()) this.interruptQueue(TX_QUEUE);
      if (n === 0) break;
      // Every chain's indirect table, then every frame's bytes, in flight at once: two round
      // trips for the batch, whatever its size.
      const chains = await ring.popAll();
      const frames = await Promise.all(chains.map((c) => ring.read(c)));
      if (this.stale(epoch)) return;
      for (let i = 0; i < chains.length; i++) {
        const chain = chains[i]!;
        const data = frames[i]!;
        ring.push(chain.head, 0);
        if (data.length <= NET_HDR_SIZE) {
          this.trace('virtio-net.tx.short', { bytes: data.length });
          continue;
        }
        const frame = data.subarray(NET_HDR_SIZE);
        if (!this.#linkUp) {
          this.counters_.txDropLinkDown++;
          continue;
        }
        this.counters_.txFrames++;
        this.counters_.txBytes += frame.length;
        await this.#backend.send(frame);
      }
      if (this.stale(epoch)) return;
      // The driver frees sent buffers on this interrupt, and TCP waits for that (small queues):
      // do not make it wait for another ring read.
      if (ring.interruptNow()) this.interruptQueue(TX_QUEUE);
    }
  }

  async #fillRx(ring: SplitQueue, epoch: number): Promise<void> {
    const mergeable = this.has(VIRTIO_NET_F_MRG_RXBUF);
    let delivered = 0;
    while (this.#backlog.length > 0 && !this.stale(epoch)) {
      const frame = this.#backlog[0]!;
      const need = NET_HDR_SIZE + frame.length;
      // Gather chains until they hold the frame (one chain without mergeable buffers).
      while (this.#capacity() < need && (mergeable || this.#held.length === 0)) {
        let chain = await ring.pop();
        if (!chain) {
          // Ask for a kick at the next buffer, then look: it may have come meanwhile.
          ring.publishAvailEvent();
          if ((await ring.refresh(true)) === 0) break;
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
        break; // wait for the driver to post buffers (it kicks the RX queue)
      }
      this.#backlog.shift();
      this.#deliver(ring, frame, need);
      delivered++;
    }
    if (delivered > 0 && (ring.interruptNow() || (await ring.shouldInterrupt())))
      this.interruptQueue(RX_QUEUE);
  }

  #capacity(): number {
    return this.#held.reduce((n, c) => n + c.writable.reduce((m, s) => m + s.len, 0), 0);
  }

  /** Writes header + frame across the held chains (as few as needed) and returns them used. */
  #deliver(ring: SplitQueue, frame: Uint8Array, need: number): void {
    const used: { chain: Chain; len: number }[] = [];
    let left = need;
    while (left > 0) {
      const chain = this.#held.shift()!;
      const cap = chain.writable.reduce((m, s) => m + s.len, 0);
      used.push({ chain, len: Math.min(cap, left) });
      left -= Math.min(cap, left);
    }
    const hdr = new Uint8Array(NET_HDR_SIZE);
    wr16(hdr, 10, used.length);
    const bytes = new Uint8Array(need);
    bytes.set(hdr);
    bytes.set(frame, NET_HDR_SIZE);
    let at = 0;
    for (const u of used) {
      ring.write(u.chain, bytes.subarray(at, at + u.len));
      at += u.len;
    }
    for (const u of used) ring.push(u.chain.head, u.len);
    this.counters_.rxFrames++;
    this.counters_.rxBytes += frame.length;
  }

  protected override onDriverOk(): void {
    if (this.#backlog.length > 0) this.kick(RX_QUEUE);
  }
}
