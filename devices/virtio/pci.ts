// virtio-pci 1.x (modern) transport (virtio 1.2 §4.1) on the declarative PCI core: the common,
// notify, ISR and device-config structures in BAR 0, found through vendor capabilities; MSI-X for
// the config change and per-queue vectors; feature negotiation; split virtqueues. A device type
// (virtio-net, virtio-blk, virtio-rng) supplies its device ID, features, config registers and what
// to do with a kicked queue: either a handler per chain (`VirtioQueue.serve`: the core owns the
// servicing loop, the in-flight bound and every interrupt decision), or its own serviceQueue.
//
// BAR 0 (64-bit, 32 KiB):  0x0000 common config · 0x1000 ISR · 0x2000 device config ·
//                          0x3000 notify (4 bytes per queue) · 0x4000 MSI-X table · 0x6000 PBA
//
// Guest mistakes (traced, survived): features the device did not offer (FEATURES_OK refused),
// a queue enabled with a bad size or address (the queue stays off), a vector past the table (reads
// back NO_VECTOR), kicks of a disabled or broken queue.
import {
  msixCap,
  PciDevice,
  pciConfig,
  pcieCap,
  pmCap,
  type Register,
  registers,
  vendorCap,
} from '../pci/index.js';
import { leBytes } from '../pci/le.js';
import { type Chain, isExpected, SplitQueue } from './virtqueue.js';

export const VIRTIO_VENDOR_ID = 0x1af4;
export const VIRTIO_PCI_DEVICE_BASE = 0x1040;

export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;

export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

export const NO_VECTOR = 0xffff;

/** PCI class codes by virtio device ID, as QEMU's virtio-pci gives them (Linux binds by vendor and
 *  device ID, so the class is for lspci and udev); any other type is "other" (0xff0000). */
export const VIRTIO_CLASS: Readonly<Record<number, number>> = {
  1: 0x020000, // network: Ethernet controller
  2: 0x010000, // block: SCSI storage controller
};

/** Chains whose device-readable bytes fit this are pushed with the kick (docs/PUSH.md): a TX frame
 *  with its header (a 64 KiB GSO frame included) then costs no data read. */
export const PUSH_CHAIN_MAX = 65536 + 4096;

export const VIRTIO_BAR = 0;
export const VIRTIO_BAR_SIZE = 0x8000;
export const COMMON = 0x0000;
export const ISR = 0x1000;
export const DEVICE_CFG = 0x2000;
export const NOTIFY = 0x3000;
export const NOTIFY_MULTIPLIER = 4;
export const MSIX_TABLE = 0x4000;
export const MSIX_PBA = 0x6000;

/** Common configuration structure offsets (§4.1.4.3). */
export const CC = {
  DFSELECT: 0x00,
  DF: 0x04,
  GFSELECT: 0x08,
  GF: 0x0c,
  MSIX: 0x10,
  NUMQ: 0x12,
  STATUS: 0x14,
  CFGGEN: 0x15,
  Q_SELECT: 0x16,
  Q_SIZE: 0x18,
  Q_MSIX: 0x1a,
  Q_ENABLE: 0x1c,
  Q_NOFF: 0x1e,
  Q_DESC: 0x20,
  Q_AVAIL: 0x28,
  Q_USED: 0x30,
} as const;

const CFG_COMMON = 1;
const CFG_NOTIFY = 2;
const CFG_ISR = 3;
const CFG_DEVICE = 4;

/** One chain being served (VirtioQueue.serve): its readable bytes on demand, its writable room. */
export interface ChainRequest {
  readonly chain: Chain;
  /** Device-readable bytes in the chain. */
  readonly readable: number;
  /** Device-writable bytes in the chain. */
  readonly writable: number;
  /** Reads every readable byte (rejects with DmaError when the host refuses). */
  read(): Promise<Uint8Array>;
  /** Writes `data` into the writable part from `offset` (posted); returns bytes written. */
  write(data: Uint8Array, offset?: number): number;
}

/** Serves one chain; returns the bytes it wrote into the chain (the used element's len). May be
 *  async: chains are served concurrently and completed in any order. A DmaError or QueueBroken it
 *  throws is traced and the chain returned with 0 bytes; anything else is a bug and propagates. */
export type ChainHandler<Self> = (device: Self, req: ChainRequest) => number | Promise<number>;

export interface VirtioQueue<Self> {
  /** Maximum size (a power of two); the driver may choose less. */
  size: number;
  /** Serve each available chain with this; without it the model overrides serviceQueue. */
  serve?: ChainHandler<Self>;
}

export interface VirtioOptions<Self> {
  model: string;
  /** Virtio device ID (1 = net, 2 = block, 4 = entropy …); the PCI device ID is 0x1040 + it. */
  deviceType: number;
  /** Default: VIRTIO_CLASS by device type. */
  classCode?: number;
  /** Device-specific feature bits offered (transport bits are added here). Default none. */
  features?: bigint;
  queues: VirtioQueue<Self>[];
  /** Device config registers, offsets relative to the device config structure. Default none. */
  config?: Register<Self>[];
  /** Bytes of device config; default: up to the end of the last register. */
  configSize?: number;
}

interface QueueState {
  size: number;
  maxSize: number;
  vector: number;
  enabled: boolean;
  desc: bigint;
  avail: bigint;
  used: bigint;
  ring: SplitQueue | undefined;
  /** A kick arrived while the queue was being serviced. */
  again: boolean;
  running: boolean;
  /** Chains handed to `serve` and not yet returned (bounded by the queue size). */
  inFlight: number;
  /** The serving loop stopped with chains left because inFlight reached the queue size. */
  full: boolean;
  /** Async completions are waiting for their interrupt decision (one per microtask turn). */
  deciding: boolean;
}

/** A queue as after a device reset: driver-chosen size back to the maximum, nothing set up. */
const resetQueue = (maxSize: number): QueueState => ({
  size: maxSize,
  maxSize,
  vector: NO_VECTOR,
  enabled: false,
  desc: 0n,
  avail: 0n,
  used: 0n,
  ring: undefined,
  again: false,
  running: false,
  inFlight: 0,
  full: false,
  deciding: false,
});

const hex = (v: number | bigint) => `0x${v.toString(16)}`;
const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
const bytesIn = (segs: { len: number }[]) => segs.reduce((n, s) => n + s.len, 0);

function cap(cfgType: number, offset: number, length: number, extra: number[] = []): Uint8Array {
  // virtio_pci_cap after cap_vndr/cap_next/cap_len: cfg_type, bar, id, padding[2], offset, length.
  const b = new Uint8Array(13 + extra.length * 4);
  b[0] = cfgType;
  b[1] = VIRTIO_BAR;
  b.set(leBytes(offset, 4), 5);
  b.set(leBytes(length, 4), 9);
  for (const [i, v] of extra.entries()) b.set(leBytes(v, 4), 13 + 4 * i);
  return b;
}

export abstract class VirtioPciDevice<Self extends VirtioPciDevice<Self>> extends PciDevice<Self> {
  readonly offered: bigint;
  readonly #queues: QueueState[];
  readonly #handlers: (ChainHandler<Self> | undefined)[];
  #driverFeatures = 0n;
  #isr = 0;
  #epoch = 0;

  constructor(o: VirtioOptions<Self>) {
    const nq = o.queues.length;
    const vectors = nq + 1;
    const config = o.config ?? [];
    const configSize = o.configSize ?? Math.max(0, ...config.map((r) => r.at + r.size));
    const offered =
      (o.features ?? 0n) |
      (1n << BigInt(VIRTIO_F_VERSION_1)) |
      (1n << BigInt(VIRTIO_F_ACCESS_PLATFORM)) |
      (1n << BigInt(VIRTIO_F_EVENT_IDX)) |
      (1n << BigInt(VIRTIO_F_INDIRECT_DESC));
    const common: Register<Self>[] = [
      { name: 'DFSELECT', at: CC.DFSELECT, size: 4, access: 'rw', onWrite: (c, v) => c.#selectFeatures(v) },
      { name: 'DF', at: CC.DF, size: 4, access: 'ro', reset: Number(offered & 0xffffffffn) },
      {
        name: 'GFSELECT',
        at: CC.GFSELECT,
        size: 4,
        access: 'rw',
        onWrite: (c, v) => c.#selectDriverFeatures(v),
      },
      { name: 'GF', at: CC.GF, size: 4, access: 'rw', onWrite: (c, v) => c.#setDriverFeatures(v) },
      {
        name: 'MSIX',
        at: CC.MSIX,
        size: 2,
        access: 'rw',
        reset: NO_VECTOR,
        onWrite: (c, v) => c.#setConfigVector(v),
      },
      { name: 'NUMQ', at: CC.NUMQ, size: 2, access: 'ro', reset: nq },
      { name: 'STATUS', at: CC.STATUS, size: 1, access: 'rw', onWrite: (c, v, old) => c.#setStatus(v, old) },
      { name: 'CFGGEN', at: CC.CFGGEN, size: 1, access: 'ro' },
      { name: 'Q_SELECT', at: CC.Q_SELECT, size: 2, access: 'rw', onWrite: (c) => c.#loadQueue() },
      {
        name: 'Q_SIZE',
        at: CC.Q_SIZE,
        size: 2,
        access: 'rw',
        reset: o.queues[0]?.size ?? 0,
        onWrite: (c, v) => c.#queueField('size', v),
      },
      {
        name: 'Q_MSIX',
        at: CC.Q_MSIX,
        size: 2,
        access: 'rw',
        reset: NO_VECTOR,
        onWrite: (c, v) => c.#queueField('vector', v),
      },
      {
        name: 'Q_ENABLE',
        at: CC.Q_ENABLE,
        size: 2,
        access: 'rw',
        onWrite: (c, v) => c.#queueField('enabled', v),
      },
      { name: 'Q_NOFF', at: CC.Q_NOFF, size: 2, access: 'ro' },
      { name: 'Q_DESC', at: CC.Q_DESC, size: 8, access: 'rw', onWrite: (c, v) => c.#queueAddr('desc', v) },
      { name: 'Q_AVAIL', at: CC.Q_AVAIL, size: 8, access: 'rw', onWrite: (c, v) => c.#queueAddr('avail', v) },
      { name: 'Q_USED', at: CC.Q_USED, size: 8, access: 'rw', onWrite: (c, v) => c.#queueAddr('used', v) },
    ];
    const isr: Register<Self> = {
      name: 'ISR',
      at: ISR,
      size: 1,
      access: 'ro',
      volatile: true,
      onRead: (c) => c.#readIsr(),
    };
    const notify: Register<Self>[] = o.queues.map((_, q) => ({
      name: `NOTIFY${q}`,
      at: NOTIFY + q * NOTIFY_MULTIPLIER,
      size: 2,
      access: 'wo',
      doorbell: true,
      onWrite: (c: Self) => c.#notified(q),
    }));
    const deviceCfg = config.map((r) => ({ ...r, at: r.at + DEVICE_CFG }) as Register<Self>);
    super({
      model: o.model,
      config: pciConfig({
        vendorId: VIRTIO_VENDOR_ID,
        deviceId: VIRTIO_PCI_DEVICE_BASE + o.deviceType,
        subsystemVendorId: VIRTIO_VENDOR_ID,
        subsystemId: VIRTIO_PCI_DEVICE_BASE + o.deviceType,
        classCode: o.classCode ?? VIRTIO_CLASS[o.deviceType] ?? 0xff0000,
        revision: 1,
        bars: [{ index: VIRTIO_BAR, kind: 'mem64', size: VIRTIO_BAR_SIZE, prefetchable: false }],
        caps: [
          pcieCap({ type: 'endpoint' }),
          msixCap({ vectors, bar: VIRTIO_BAR, table: MSIX_TABLE, pba: MSIX_PBA }),
          pmCap(),
          vendorCap(cap(CFG_COMMON, COMMON, 0x38), 'virtio-common'),
          vendorCap(cap(CFG_NOTIFY, NOTIFY, nq * NOTIFY_MULTIPLIER, [NOTIFY_MULTIPLIER]), 'virtio-notify'),
          vendorCap(cap(CFG_ISR, ISR, 1), 'virtio-isr'),
          // No device-specific config, no capability: Linux refuses one of length 0.
          ...(configSize > 0 ? [vendorCap(cap(CFG_DEVICE, DEVICE_CFG, configSize), 'virtio-device')] : []),
        ],
      }),
      bars: [{ index: VIRTIO_BAR, registers: registers<Self>([...common, isr, ...notify, ...deviceCfg]) }],
    });
    for (const { size } of o.queues)
      if (!isPow2(size) || size > 32768) throw new Error(`${o.model}: queue size ${size}`);
    this.offered = offered;
    this.#queues = o.queues.map((q) => resetQueue(q.size));
    this.#handlers = o.queues.map((q) => q.serve);
  }

  get #regs() {
    return this.bar(VIRTIO_BAR);
  }

  get status(): number {
    return this.#regs.u8(CC.STATUS);
  }

  /** Features both sides agreed on (valid once FEATURES_OK is set). */
  get negotiated(): bigint {
    return this.#driverFeatures & this.offered;
  }

  has(bit: number): boolean {
    return (this.negotiated & (1n << BigInt(bit))) !== 0n;
  }

  get driverOk(): boolean {
    return (this.status & STATUS_DRIVER_OK) !== 0 && (this.status & STATUS_NEEDS_RESET) === 0;
  }

  /** The split queue `q`, if the driver enabled it. */
  protected queue(q: number): SplitQueue | undefined {
    return this.#queues[q]?.ring;
  }

  /** Service a kicked queue; called again if kicked while running. Errors that are not guest
   *  mistakes or DMA refusals propagate (bugs). Default: serve each chain with the queue's `serve`
   *  handler. */
  protected serviceQueue(q: number, ring: SplitQueue, epoch: number): Promise<void> {
    const serve = this.#handlers[q];
    if (!serve) throw new Error(`${this.description.model}: queue ${q} has no serve handler`);
    return this.#serve(q, ring, epoch, serve);
  }
  /** The device was reset (status 0, FLR, attach): drop device state. Default: nothing to drop. */
  protected onDeviceReset(): void {}

  /** Has work of `epoch` been abandoned by a reset? */
  protected stale(epoch: number): boolean {
    return epoch !== this.#epoch || !this.attached;
  }

  protected get epoch(): number {
    return this.#epoch;
  }

  /** Raises queue q's vector (after its used-ring writes, which the port orders first). */
  protected interruptQueue(q: number): void {
    this.#isr |= 1;
    const v = this.#queues[q]!.vector;
    if (v !== NO_VECTOR) this.host.raiseMsix(v);
  }

  /**
   * Ends a round of queue q in the host (only when `ring.hostRounds`; docs/PUSH.md "Virtqueue
   * rounds"): with `interrupt`, the host raises the queue's vector if the driver wants it for what
   * the round completed; with `recheck`, it notifies the queue if buffers came that no notify
   * announced.
   */
  protected endRound(q: number, ring: SplitQueue, o: { interrupt: boolean; recheck: boolean }): void {
    const v = this.#queues[q]!.vector;
    if (o.interrupt) this.#isr |= 1;
    ring.endRound(o.interrupt && v !== NO_VECTOR ? v : undefined, o.recheck);
  }

  /** Device config changed: bump the generation, raise the config vector. */
  protected configChanged(): void {
    const r = this.#regs;
    r.set8(CC.CFGGEN, (r.u8(CC.CFGGEN) + 1) & 0xff);
    this.#isr |= 2;
    const v = r.u16(CC.MSIX);
    if (v !== NO_VECTOR && this.driverOk) this.host.raiseMsix(v);
  }

  /** Schedules service of queue q (a kick, or the device has new work for it). */
  protected kick(q: number): void {
    this.#kick(q);
  }

  protected override onReset(): void {
    this.#reset();
  }

  #reset(): void {
    this.#epoch++;
    this.#driverFeatures = 0n;
    this.#isr = 0;
    // In place: a service still running holds its queue object and sees it reset.
    for (const [i, q] of this.#queues.entries()) {
      if (q.enabled) this.host.setPushRule(i, undefined);
      Object.assign(q, resetQueue(q.maxSize));
    }
    this.onDeviceReset();
  }

  #selectFeatures(sel: number): void {
    const word = sel < 2 ? Number((this.offered >> BigInt(32 * sel)) & 0xffffffffn) : 0;
    this.#regs.set32(CC.DF, word);
  }

  #selectDriverFeatures(sel: number): void {
    const word = sel < 2 ? Number((this.#driverFeatures >> BigInt(32 * sel)) & 0xffffffffn) : 0;
    this.#regs.set32(CC.GF, word);
  }

  #setDriverFeatures(v: number): void {
    const sel = this.#regs.u32(CC.GFSELECT);
    if (sel > 1) {
      if (v !== 0) this.trace('virtio.features.unknown-word', { select: sel, value: hex(v) });
      return;
    }
    if (this.status & STATUS_FEATURES_OK) {
      this.trace('virtio.features.after-features-ok', { value: hex(v) });
      return;
    }
    const shift = BigInt(32 * sel);
    this.#driverFeatures = (this.#driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v >>> 0) << shift);
  }

  #setConfigVector(v: number): void {
    if (v !== NO_VECTOR && v >= this.#queues.length + 1) {
      this.trace('virtio.msix.bad-vector', { vector: v });
      this.#regs.set16(CC.MSIX, NO_VECTOR);
    }
  }

  #setStatus(v: number, old: number): void {
    const r = this.#regs;
    if (v === 0) {
      // Device reset (§2.4): the driver polls until STATUS reads 0. PCI config is untouched.
      this.#reset();
      r.set8(CC.STATUS, 0);
      r.set16(CC.MSIX, NO_VECTOR);
      r.set32(CC.GF, 0);
      r.set16(CC.Q_SELECT, 0);
      this.#loadQueue();
      return;
    }
    if (old & ~v & 0xff) {
      this.trace('virtio.status.cleared-bits', { old: hex(old), value: hex(v) });
      r.set8(CC.STATUS, old | v);
    }
    if (v & STATUS_FEATURES_OK && !(old & STATUS_FEATURES_OK)) {
      const extra = this.#driverFeatures & ~this.offered;
      const v1 = (this.#driverFeatures >> BigInt(VIRTIO_F_VERSION_1)) & 1n;
      if (extra !== 0n || v1 === 0n) {
        this.trace('virtio.features.refused', { features: hex(this.#driverFeatures), unoffered: hex(extra) });
        r.set8(CC.STATUS, (old | v) & ~STATUS_FEATURES_OK);
      }
    }
    if (v & STATUS_DRIVER_OK && !(old & STATUS_DRIVER_OK)) this.onDriverOk();
  }

  /** DRIVER_OK was set: the device may start using its queues. */
  protected onDriverOk(): void {}

  #selected(): QueueState | undefined {
    const q = this.#queues[this.#regs.u16(CC.Q_SELECT)];
    return q;
  }

  #loadQueue(): void {
    const r = this.#regs;
    const sel = r.u16(CC.Q_SELECT);
    const q = this.#queues[sel];
    // A queue that does not exist reads queue_size 0 (§4.1.4.3.1).
    r.set16(CC.Q_SIZE, q ? q.size : 0);
    r.set16(CC.Q_MSIX, q ? q.vector : NO_VECTOR);
    r.set16(CC.Q_ENABLE, q?.enabled ? 1 : 0);
    r.set16(CC.Q_NOFF, q ? sel : 0);
    r.set64(CC.Q_DESC, q?.desc ?? 0n);
    r.set64(CC.Q_AVAIL, q?.avail ?? 0n);
    r.set64(CC.Q_USED, q?.used ?? 0n);
  }

  #queueField(field: 'size' | 'vector' | 'enabled', v: number): void {
    const q = this.#selected();
    const r = this.#regs;
    if (!q) {
      this.trace('virtio.queue.no-such-queue', { queue: r.u16(CC.Q_SELECT) });
      this.#loadQueue();
      return;
    }
    if (q.enabled && field !== 'vector') {
      this.trace('virtio.queue.changed-while-enabled', { field });
      this.#loadQueue();
      return;
    }
    if (field === 'size') {
      if (!isPow2(v) || v > q.maxSize) {
        this.trace('virtio.queue.bad-size', { size: v, max: q.maxSize });
        r.set16(CC.Q_SIZE, q.size);
        return;
      }
      q.size = v;
    } else if (field === 'vector') {
      if (v !== NO_VECTOR && v >= this.#queues.length + 1) {
        this.trace('virtio.msix.bad-vector', { vector: v });
        r.set16(CC.Q_MSIX, NO_VECTOR);
        q.vector = NO_VECTOR;
        return;
      }
      q.vector = v;
    } else if (v === 1) {
      if (q.desc === 0n || q.avail === 0n || q.used === 0n) {
        this.trace('virtio.queue.enable-without-rings', { queue: r.u16(CC.Q_SELECT) });
        r.set16(CC.Q_ENABLE, 0);
        return;
      }
      q.enabled = true;
      const index = r.u16(CC.Q_SELECT);
      q.ring = new SplitQueue(
        {
          index,
          size: q.size,
          desc: q.desc,
          driver: q.avail,
          device: q.used,
          eventIdx: this.has(VIRTIO_F_EVENT_IDX),
          indirect: this.has(VIRTIO_F_INDIRECT_DESC),
        },
        () => this.host,
      );
      this.host.setPushRule(index, {
        kind: 'virtq',
        bar: VIRTIO_BAR,
        notify: NOTIFY + index * NOTIFY_MULTIPLIER,
        desc: q.desc,
        avail: q.avail,
        size: q.size,
        dataMax: PUSH_CHAIN_MAX,
        indirect: this.has(VIRTIO_F_INDIRECT_DESC),
      });
    } else if (v !== 0) {
      this.trace('virtio.queue.bad-enable', { value: v });
      r.set16(CC.Q_ENABLE, q.enabled ? 1 : 0);
    }
  }

  #queueAddr(field: 'desc' | 'avail' | 'used', v: bigint): void {
    const q = this.#selected();
    if (!q || q.enabled) {
      this.trace('virtio.queue.address-ignored', { field });
      this.#loadQueue();
      return;
    }
    q[field] = v;
  }

  #readIsr(): number {
    const v = this.#isr;
    this.#isr = 0;
    return v;
  }

  /** The driver (or the host, ending a round) notified queue q: its ring has news. */
  #notified(q: number): void {
    const ring = this.#queues[q]?.ring;
    if (ring) ring.notified = true;
    this.#kick(q);
  }

  /**
   * The servicing loop of a queue whose chains are served one by one (VirtioQueue.serve). Takes
   * what the driver made available (at most the queue size in flight), starts a handler per chain,
   * and returns each chain used when its handler is done. Interrupts as virtio-net's TX does: with
   * host rounds, each pass ends with one VirtqDone (the host decides from used_event and rechecks
   * for buffers that raced avail_event); without, avail_event goes out before every ring read and
   * the interrupt is decided from a ring read issued after the used-ring writes, or at once when
   * the last read already says yes.
   */
  async #serve(q: number, ring: SplitQueue, epoch: number, serve: ChainHandler<Self>): Promise<void> {
    const s = this.#queues[q]!;
    const rounds = ring.hostRounds;
    for (;;) {
      let n: number;
      if (rounds) {
        // Every buffer comes with a notify, whose push holds the ring: no notify, nothing new.
        n = ring.notified ? await ring.refresh(true) : ring.available;
      } else {
        ring.publishAvailEvent();
        n = await ring.refresh(true);
      }
      if (this.stale(epoch)) return;
      if (!rounds && ring.interruptDue()) this.interruptQueue(q);
      const room = ring.size - s.inFlight;
      s.full = n > 0 && room <= 0;
      if (n === 0 || room <= 0) break;
      const chains = await ring.popAll(room);
      if (this.stale(epoch)) return;
      for (const chain of chains) this.#start(q, ring, epoch, serve, chain);
      if (rounds) break;
      if (ring.interruptNow()) this.interruptQueue(q);
    }
    if (rounds && !this.stale(epoch)) this.endRound(q, ring, { interrupt: true, recheck: true });
  }

  /** Hands one chain to its handler. A handler that answers at once is covered by the loop's own
   *  decision; later answers are decided together, once per microtask turn. */
  #start(q: number, ring: SplitQueue, epoch: number, serve: ChainHandler<Self>, chain: Chain): void {
    const s = this.#queues[q]!;
    s.inFlight++;
    const req: ChainRequest = {
      chain,
      readable: bytesIn(chain.readable),
      writable: bytesIn(chain.writable),
      read: () => ring.read(chain),
      // Nothing reaches host memory for a chain a reset abandoned: the driver may reuse it.
      write: (data, offset) => (this.stale(epoch) ? 0 : ring.write(chain, data, offset)),
    };
    const done = (written: number, later: boolean) => {
      if (this.stale(epoch)) return;
      s.inFlight--;
      ring.push(chain.head, written);
      if (later) this.#decideLater(q, ring, epoch);
    };
    const failed = (e: unknown, later: boolean) => {
      if (!isExpected(e)) throw e;
      if (!this.stale(epoch))
        this.trace('virtio.chain.failed', { queue: q, head: chain.head, why: (e as Error).message });
      done(0, later);
    };
    let r: number | Promise<number>;
    try {
      r = serve(this as unknown as Self, req);
    } catch (e) {
      failed(e, false);
      return;
    }
    if (typeof r === 'number') done(r, false);
    else
      r.then(
        (n) => done(n, true),
        (e) => failed(e, true),
      );
  }

  /** After async completions: an interrupt now if the last ring read says so; otherwise (and with
   *  host rounds, and when chains wait for room) another pass of the loop decides. */
  #decideLater(q: number, ring: SplitQueue, epoch: number): void {
    const s = this.#queues[q]!;
    if (s.deciding) return;
    s.deciding = true;
    queueMicrotask(() => {
      s.deciding = false;
      if (this.stale(epoch)) return;
      const rounds = ring.hostRounds;
      const now = !rounds && ring.interruptNow();
      if (now) this.interruptQueue(q);
      if (rounds || !now || s.full) this.#kick(q);
    });
  }

  #kick(q: number): void {
    const s = this.#queues[q];
    if (!s?.ring || !this.driverOk) {
      this.trace('virtio.queue.kick-ignored', { queue: q, enabled: s?.enabled ?? false });
      return;
    }
    if (s.running) {
      s.again = true;
      return;
    }
    s.running = true;
    const epoch = this.#epoch;
    const ring = s.ring;
    const run = async () => {
      try {
        do {
          s.again = false;
          await this.serviceQueue(q, ring, epoch);
        } while (s.again && !this.stale(epoch) && !ring.broken);
      } catch (e) {
        if (!isExpected(e)) throw e;
        if (e instanceof Error && !this.stale(epoch))
          this.trace('virtio.queue.stopped', { queue: q, why: e.message });
        if (ring.broken && !this.stale(epoch)) {
          this.#regs.set8(CC.STATUS, this.status | STATUS_NEEDS_RESET);
          this.configChanged();
        }
      } finally {
        if (!this.stale(epoch)) s.running = false;
      }
    };
    void run();
  }
}
