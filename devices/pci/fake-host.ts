// A host for unit tests of device models: host memory is an ArrayBuffer at a fixed IOVA, interrupts
// and traces are recorded, and FakeBus plays the host's side of MMIO (a shadow of every BAR kept
// current from takeDirty(), volatile reads sent to the device) so tests drive a device through its
// registers exactly as a driver would.
import {
  type CommandFault,
  type CommandRef,
  type DeviceModel,
  DmaError,
  type HostPort,
} from '../host-port.js';
import { QuietSq, type SqHost } from '../nvme/sq-round.js';
import type { NvmeSqRule, PushRule, VirtqRound } from '../push.js';
import { virtqRound } from '../virtio/virtqueue.js';
import { walkCaps } from './config.js';
import { leBytes, rd16, rd32, rd64 } from './le.js';

export interface FakeHostOptions {
  /** Bytes of host memory; default 1 MiB. */
  memory?: number;
  /** IOVA of its first byte; default 0x1000_0000. Everything else faults. */
  base?: bigint;
  /** The host ends virtqueue rounds (HostPort.virtqRound); default true. */
  rounds?: boolean;
  /** The host keeps NVMe SQ event indices (HostPort.sqEventIdx); default true. */
  sqEventIdx?: boolean;
  /** Every byte of host memory is at hand, as if pushed (HostPort.dmaReadNow answers what
   *  dmaRead would, at once); default false: nothing is, every read waits. */
  atHand?: boolean;
}

export type HostEvent =
  | { kind: 'dma-read'; iova: bigint; len: number }
  | { kind: 'dma-write'; iova: bigint; len: number }
  | { kind: 'dma-fault'; dir: 'read' | 'write'; iova: bigint; len: number }
  | { kind: 'msix'; vector: number }
  | { kind: 'round'; round: VirtqRound }
  | { kind: 'kick'; rule: number };

export class FakeHost implements HostPort {
  readonly memory: Uint8Array;
  readonly base: bigint;
  readonly events: HostEvent[] = [];
  readonly traces: { event: string; fields: Record<string, unknown> }[] = [];
  /** How often the device said it changed BAR contents on its own. */
  changes = 0;

  /** Set by FakeBus: a doorbell write the host makes for the driver (a round's recheck). */
  onKick: ((bar: number, offset: number, data: Uint8Array) => void) | undefined;
  /** Per virtq rule: avail idx at the driver's last notify (what a push would have taken). */
  readonly #notifiedIdx = new Map<number, number>();
  virtqRound?: (round: VirtqRound) => void;
  readonly sqEventIdx: boolean;
  /** A test's injected faults (HostPort.commandFault). */
  commandFault?: (command: CommandRef) => CommandFault | undefined;
  /** With `atHand`: a read of mapped memory at once (recorded like dmaRead's); else undefined. */
  dmaReadNow?: (iova: bigint, len: number, into?: Uint8Array) => Uint8Array | undefined;

  constructor(o: FakeHostOptions = {}) {
    this.memory = new Uint8Array(new ArrayBuffer(o.memory ?? 1 << 20));
    this.base = o.base ?? 0x1000_0000n;
    if (o.rounds !== false) this.virtqRound = (r) => this.#round(r);
    this.sqEventIdx = o.sqEventIdx !== false;
    if (o.atHand)
      this.dmaReadNow = (iova, len, into) => {
        const off = this.#at(iova, len);
        if (off === undefined) return undefined; // dmaRead refuses it
        this.events.push({ kind: 'dma-read', iova, len });
        // Put together where the model says, as a port does with bytes pushed in pieces.
        if (!into) return this.memory.slice(off, off + len);
        into.set(this.memory.subarray(off, off + len));
        return into.length === len ? into : into.subarray(0, len);
      };
  }

  #rd16(iova: bigint): number | undefined {
    const off = this.#at(iova, 2);
    return off === undefined ? undefined : rd16(this.memory, off);
  }

  /** FakeBus saw `data` written at (bar, offset): a virtq rule's notify takes the ring as it is
   *  now; an NVMe rule's event index takes the value (docs/PUSH.md "Shadow doorbells"). */
  notified(bar: number, offset: number, data: Uint8Array): void {
    for (const [id, r] of this.pushRules) {
      if (r.kind === 'nvme-sq' && r.eventIdx !== undefined && r.bar === bar && r.doorbell === offset) {
        const v = new Uint8Array(4);
        v.set(data.subarray(0, 4));
        const tail = rd32(v, 0);
        const q = this.#quiet.get(id);
        this.#writeEventIdx(r, q ? q.rung(tail) : tail);
        continue;
      }
      if (r.kind !== 'virtq' || r.bar !== bar || r.notify !== offset) continue;
      const idx = this.#rd16(r.avail + 2n);
      if (idx !== undefined) this.#notifiedIdx.set(id, idx);
    }
  }

  #writeEventIdx(r: NvmeSqRule, value: number): void {
    const at = this.#at(r.eventIdx!, 4);
    if (at !== undefined) this.memory.set(leBytes(value, 4), at);
  }

  /** Quiet SQs by rule id (docs/PUSH.md "Quiet submission queues"). */
  readonly #quiet = new Map<number, QuietSq>();

  #sqHost(id: number, r: NvmeSqRule, q: QuietSq): SqHost {
    return {
      shadow: () => {
        const at = this.#at(r.shadow!, 4);
        const tail = at === undefined ? undefined : rd32(this.memory, at);
        return tail !== undefined && tail < r.entries ? tail : undefined;
      },
      eventIdx: (v) => this.#writeEventIdx(r, v),
      ring: (tail) => {
        // The host's doorbell path takes the tail at once; the write reaches the device later,
        // like a record the host queues.
        this.#writeEventIdx(r, q.rung(tail));
        this.events.push({ kind: 'kick', rule: id });
        const data = leBytes(tail, 4);
        setImmediate(() => this.onKick?.(r.bar, r.doorbell, data));
      },
    };
  }

  /** What pcinet.ko does with W_VIRTQ_DONE (docs/PUSH.md "Virtqueue rounds", and for NVMe SQ
   *  rules "Quiet submission queues"). */
  #round(round: VirtqRound): void {
    this.events.push({ kind: 'round', round });
    const r = this.pushRules.get(round.rule);
    const sq = r?.kind === 'nvme-sq' ? this.#quiet.get(round.rule) : undefined;
    if (sq && round.kick !== undefined) sq.round(round.kick, this.#sqHost(round.rule, r as NvmeSqRule, sq));
    if (r?.kind === 'nvme-sq') return;
    const q = r?.kind === 'virtq' ? r : undefined;
    const read16 = (iova: bigint) => this.#rd16(iova);
    if (
      round.vector !== undefined &&
      virtqRound.wantsInterrupt(read16, q, round.eventIdx, round.oldUsed, round.newUsed)
    )
      this.raiseMsix(round.vector);
    if (round.kick === undefined || !q) return;
    const idx = this.#rd16(q.avail + 2n);
    if (idx === undefined || !virtqRound.unannounced(idx, this.#notifiedIdx.get(round.rule) ?? 0, q.size))
      return;
    this.#notifiedIdx.set(round.rule, idx);
    this.events.push({ kind: 'kick', rule: round.rule });
    const kick = leBytes(round.kick, 2);
    // Later, like a record the host queues: not inside the device's own call.
    setImmediate(() => this.onKick?.(q.bar, q.notify, kick));
  }

  /** Offset into memory of [iova, +len), or undefined when any of it is outside. */
  #at(iova: bigint, len: number): number | undefined {
    const off = iova - this.base;
    if (off < 0n || off + BigInt(len) > BigInt(this.memory.length)) return undefined;
    return Number(off);
  }

  async dmaRead(iova: bigint, len: number, into?: Uint8Array): Promise<Uint8Array> {
    await Promise.resolve();
    const off = this.#at(iova, len);
    if (off === undefined) {
      this.events.push({ kind: 'dma-fault', dir: 'read', iova, len });
      throw new DmaError(iova, len, 'refused');
    }
    this.events.push({ kind: 'dma-read', iova, len });
    if (!into) return this.memory.slice(off, off + len);
    into.set(this.memory.subarray(off, off + len));
    return into.subarray(0, len);
  }

  dmaWrite(iova: bigint, data: Uint8Array): void {
    const off = this.#at(iova, data.length);
    if (off === undefined) {
      // Posted: the host counts and drops it.
      this.events.push({ kind: 'dma-fault', dir: 'write', iova, len: data.length });
      return;
    }
    this.memory.set(data, off);
    this.events.push({ kind: 'dma-write', iova, len: data.length });
  }

  raiseMsix(vector: number): void {
    this.events.push({ kind: 'msix', vector });
  }

  drain(): Promise<void> {
    return Promise.resolve();
  }

  trace(event: string, fields: Record<string, unknown> = {}): void {
    this.traces.push({ event, fields });
  }

  changed(): void {
    this.changes++;
  }

  /** The push rules the device declared, by id (docs/PUSH.md). */
  readonly pushRules = new Map<number, PushRule>();

  setPushRule(id: number, rule: PushRule | undefined): void {
    const old = this.pushRules.get(id);
    const q = this.#quiet.get(id);
    // The old rule's SQ may be quiet: the driver rings again before the rule goes.
    if (q && old?.kind === 'nvme-sq') q.unquiet(this.#sqHost(id, old, q));
    this.#quiet.delete(id);
    if (rule?.kind === 'nvme-sq' && rule.shadow !== undefined && rule.eventIdx !== undefined)
      this.#quiet.set(id, new QuietSq(q && old?.kind === 'nvme-sq' && old.base === rule.base ? q.last : 0));
    if (rule) this.pushRules.set(id, rule);
    else this.pushRules.delete(id);
  }

  get interrupts(): number[] {
    return this.events.flatMap((e) => (e.kind === 'msix' ? [e.vector] : []));
  }

  traced(event: string): number {
    return this.traces.filter((t) => t.event === event).length;
  }
}

/** Event-loop turns settle() waits: promise chains run between turns, and work scheduled for the
 *  next turn (the runtime's once-per-tick flush) needs one more after the chain that scheduled it. */
const SETTLE_TURNS = 3;

/** Waits until the device's async work (promise chains, drain waits, scheduled flushes) has run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < SETTLE_TURNS; i++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * The checks Linux's virtio_pci_modern makes of a virtio device's vendor capabilities before it
 * binds (vp_modern_probe, vp_modern_map_capability): the common, notify and ISR structures must be
 * there; every structure must name a BAR the device has and lie inside it with a length past the
 * part the driver maps; notify needs its multiplier. Throws what Linux would log. Not a virtio
 * device (vendor 0x1af4): nothing to check.
 */
export function checkVirtioCaps(d: DeviceModel): void {
  const cfg = d.description.config;
  if (rd16(cfg, 0) !== 0x1af4) return;
  const bars = new Map(d.description.bars.map((b) => [b.index, b.size]));
  const found = new Set<number>();
  for (const c of walkCaps(cfg)) {
    if (c.id !== 0x09) continue;
    const type = cfg[c.offset + 3]!;
    const bar = cfg[c.offset + 4]!;
    const offset = rd32(cfg, c.offset + 8);
    const length = rd32(cfg, c.offset + 12);
    const size = bars.get(bar);
    // The part of each structure the driver maps at least (the common config's fields, one
    // notify register, the ISR byte, the device config's first byte).
    const least = { 1: 0x38, 2: 2, 3: 1, 4: 1 }[type];
    if (least === undefined) continue;
    if (size === undefined) throw new Error(`virtio cap type ${type}: BAR ${bar} does not exist`);
    if (length < least)
      throw new Error(`virtio cap type ${type}: bad capability len ${length} (>=${least} expected)`);
    if (offset + length > size)
      throw new Error(`virtio cap type ${type}: [${offset}, +${length}) past BAR ${bar}`);
    if (type === 2 && cfg[c.offset + 2]! < 20) throw new Error('virtio notify cap without its multiplier');
    found.add(type);
  }
  for (const [type, what] of [
    [1, 'common'],
    [2, 'notify'],
    [3, 'ISR'],
  ] as const) {
    if (!found.has(type)) throw new Error(`virtio: no ${what} capability (virtio_pci_modern would not bind)`);
  }
}

/** The host's side of MMIO for one device, as the runtime and the real host do it. Checks a
 *  virtio device's capabilities the way Linux does first (checkVirtioCaps). */
export class FakeBus {
  readonly shadows = new Map<number, Uint8Array>();
  readonly #volatile = new Map<number, { offset: number; length: number }[]>();

  constructor(
    readonly device: DeviceModel,
    readonly host = new FakeHost(),
  ) {
    checkVirtioCaps(device);
    for (const b of device.description.bars) {
      const shadow = new Uint8Array(b.size);
      shadow.set(b.shadow);
      this.shadows.set(b.index, shadow);
      this.#volatile.set(b.index, [...b.volatile]);
    }
    host.onKick = (bar, offset, data) => this.write(bar, offset, data);
    device.attach(this.host);
  }

  /** Applies the device's pending shadow updates. */
  sync(): void {
    for (const d of this.device.takeDirty()) this.shadows.get(d.bar)!.set(d.data, d.offset);
  }

  write(bar: number, offset: number, data: Uint8Array): void {
    this.host.notified(bar, offset, data);
    this.device.mmioWrite(bar, offset, data);
    this.sync();
  }
  write32(bar: number, offset: number, v: number): void {
    this.write(bar, offset, leBytes(v, 4));
  }
  write64(bar: number, offset: number, v: bigint): void {
    this.write(bar, offset, leBytes(v, 8));
  }

  read(bar: number, offset: number, len: number): Uint8Array {
    this.sync();
    const vol = this.#volatile.get(bar) ?? [];
    if (vol.some((r) => offset < r.offset + r.length && r.offset < offset + len)) {
      return this.device.mmioRead(bar, offset, len);
    }
    return this.shadows.get(bar)!.slice(offset, offset + len);
  }
  read32(bar: number, offset: number): number {
    return rd32(this.read(bar, offset, 4), 0);
  }
  read64(bar: number, offset: number): bigint {
    return rd64(this.read(bar, offset, 8), 0);
  }

  /** Lets async device work finish, then applies its shadow updates. */
  async settle(): Promise<void> {
    await settle();
    this.sync();
  }
}
