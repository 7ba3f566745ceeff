// EndpointRuntime: runs a set of device models for one session. It attaches them (Attach /
// AttachResult), dispatches the host's messages to them, gives each a HostPort (tagged, chunked
// DMA; interrupts; drain) and keeps the PCIe ordering promises of docs/PROTOCOL.md:
//
// - Before any message of a device goes out, the device's changed BAR bytes go out (ShadowUpdate),
//   so a register change is visible before a later interrupt, DMA or read completion.
// - After an inbound batch, each device's changes go out, then WritesApplied{count} if the batch
//   held writes to its non-doorbell ranges (count: cumulative since attach or FunctionReset).
// - The session is flushed at the end of each inbound batch and once per tick of async device work,
//   so messages travel in batches.
//
// Peer errors: receive() throws ProtocolError, and so does the 'messages' listener it is attached
// as; the session (the emitter) must close with err.code. Which errors:
//   UNKNOWN_DEVICE      a message for a device id that is not attached (never was, attach pending
//                       or failed, or the host detached it). Messages for a device *we* detached
//                       are dropped: they crossed our Detach.
//   BAD_ARGUMENT        a BAR index the device does not have; an offset/size outside the BAR or
//                       config space; a config write not 1, 2 or 4 bytes
//   BAD_LENGTH          an empty MmioWrite; a DmaReadCpl whose data is not the requested length
//   BAD_TAG             a DmaReadCpl for a tag that is not outstanding
//   UNEXPECTED_MESSAGE  a device -> host message, or an AttachResult for a device not being attached
//   UNKNOWN_MESSAGE     a message with no body
// A volatile-read request (MmioRead) outside the device's volatile ranges is the host's mistake
// too, but a harmless one: it is answered with status BAD_ARGUMENT and traced.
import { randomBytes } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import type Long from 'long';
import pino, { type Logger } from 'pino';
import { type DeviceModel, DmaError, type HostPort } from '../devices/host-port.js';
import { MAX_PUSH_RULES } from '../devices/push.js';
import type { VirtqDone } from '../proto/kernel-link.js';
import { virtqDoneFlags } from '../proto/kernel-link.js';
import { devOf, type Tap } from '../proto/trace.js';
import {
  Capability,
  ErrorCode,
  kindOf,
  long,
  MAX_DMA_CHUNK,
  type Msg,
  num,
  ProtocolError,
  type pcinet,
  u64,
} from '../proto/wire.js';
import { pushRuleMsg, wireDescription } from './describe.js';
import { DEFAULT_DMA_TAGS, DmaReader } from './dma.js';
import type { Faults, IrqFault } from './faults.js';
import type { KernelLink, LinkReceiver } from './link.js';
import { PushCache, type PushKeep } from './push-cache.js';
import { loggable, safeOffset, u64Of, within } from './runtime-util.js';

/** What the runtime needs of a session (proto/session.ts satisfies it). Events:
 *  'messages' (msgs: Msg[]) — one inbound batch, in order, after the handshake;
 *  'drain' () — backlogged went false; 'close' (err?: Error) — the session is over. */
export interface SessionLike extends EventEmitter {
  /** Queues a sequenced message in the current outbound batch. Encodes (copies) it before
   *  returning: the caller may reuse any buffer the message refers to. */
  send(m: Msg): void;
  /** Sends the current batch as a frame. */
  flush(): void;
  /** The peer is not taking data fast enough: producers should wait for 'drain'. */
  readonly backlogged: boolean;
  /** Capability bits both sides set in Hello (CAP_PUSH_RULES: models' push rules are sent). */
  readonly capabilities?: number;
  /** Ends the session with an error (a kernel link broke the protocol). */
  close?(err?: Error): unknown;
  /** Set by the runtime: where a DmaReadCpl's data may be read straight into (the read's buffer;
   *  proto/frame-place.ts), for sessions whose transport can. */
  placeDmaReadCpl?: ((dev: number, tag: number, length: number) => Uint8Array | undefined) | undefined;
}

/** Where a device's messages go: the session, or the device's kernel link. */
interface Outlet {
  /** `byRef`: the message's payload, which the caller hands over (the session may send it by
   *  reference; a kernel link copies it into records anyway). */
  send(m: Msg, byRef?: Uint8Array): void;
  flush(): void;
  readonly backlogged: boolean;
}

export interface RuntimeOptions {
  log?: Logger;
  /** Outstanding DmaRead tags per device; more requests wait. Default DEFAULT_DMA_TAGS (64). */
  maxDmaTags?: number;
  /** Offer kernel links (Attach.link_token) when the session has CAP_KERNEL_LINK: the server
   *  passes links it accepts to bindLink(). */
  links?: boolean;
  /** The session is encrypted: links are sealed with a key sent in the Attach (link_key). */
  sealLinks?: boolean;
  /** Injected faults (`pcinet inject`, endpoint/faults.ts), asked where interrupts, DMA and
   *  volatile reads leave a device and, through HostPort.commandFault, by its model. */
  faults?: Faults;
}

export interface AttachOutcome {
  dev: number;
  model: string;
  /** OK, or why the host could not create it (SHUTDOWN: we closed before it answered). */
  code: ErrorCode;
  message: string;
  /** Bus address on the host, e.g. "0000:10:00.0". */
  address: string;
}

/** Payload bytes queued in the session before we flush mid-batch: keeps every frame far below
 *  MAX_FRAME_BYTES (4 MiB) whatever the session's own batching does. */
export const FLUSH_BYTES = 1 << 20;
/** Traces of one event per device logged in full before sampling: a driver stuck in a loop of
 *  mistakes must not flood the log. After the burst, one in TRACE_LOG_EVERY is logged. */
export const TRACE_LOG_BURST = 20;
export const TRACE_LOG_EVERY = 1000;

export interface DeviceCounters {
  mmioWrites: number;
  mmioReads: number;
  /** DmaRead requests sent: each is a round trip to the host. */
  dmaReads: number;
  dmaReadBytes: number;
  dmaWriteBytes: number;
  interrupts: number;
  traces: number;
  /** DMA reads served from pushed bytes (no round trip), and their bytes. */
  pushHits: number;
  pushHitBytes: number;
  /** Bytes the host pushed; PushDrops received; pushes discarded (their rule had changed). */
  pushBytes: number;
  pushDrops: number;
  pushStale: number;
  /** Virtqueue rounds the host ended (VirtqDone sent). */
  virtqRounds: number;
}

interface BarInfo {
  size: number;
  volatile: { offset: number; length: number }[];
  doorbell: { offset: number; length: number }[];
}

type DeviceState = 'pending' | 'attached' | 'failed' | 'unplugged' | 'removed';

class Device {
  state: DeviceState = 'pending';
  address = '';
  /** The host's AttachResult (SHUTDOWN if we unplugged first). */
  outcome: { code: ErrorCode; message: string } = { code: ErrorCode.OK, message: '' };
  /** MmioWrites to non-doorbell ranges since attach or FunctionReset. */
  writes = 0;
  /** FunctionResets so far: an interrupt held by a fault is not sent across one. */
  resets = 0;
  /** The inbound batch being handled wrote to a non-doorbell range (WritesApplied follows it). */
  wrote = false;
  readonly bars = new Map<number, BarInfo>();
  readonly configSize: number;
  readonly vectors: number;
  readonly counters: DeviceCounters = {
    mmioWrites: 0,
    mmioReads: 0,
    dmaReads: 0,
    dmaReadBytes: 0,
    dmaWriteBytes: 0,
    interrupts: 0,
    traces: 0,
    pushHits: 0,
    pushHitBytes: 0,
    pushBytes: 0,
    pushDrops: 0,
    pushStale: 0,
    virtqRounds: 0,
  };
  /** What the host pushed and the device has not read yet. */
  readonly pushed = new PushCache();
  /** Rule id -> changes the host has not confirmed (PushRuleSet) yet: its pushes are stale. */
  readonly ruleChanges = new Map<number, number>();
  readonly traceCounts = new Map<string, number>();
  dma!: DmaReader;
  port!: HostPort;
  /** Offered in Attach: a kernel link that presents it carries this device's data plane. */
  linkToken: Uint8Array | undefined;
  linkKey: Uint8Array | undefined;
  link: KernelLink | undefined;
  /** The link of this device that is in the runtime's list of links to flush, if any: a link
   *  that replaced it (a new connection within the same tick) is queued on its own. */
  linkQueued: KernelLink | undefined;

  constructor(
    readonly dev: number,
    readonly model: DeviceModel,
  ) {
    const d = model.description;
    for (const b of d.bars) {
      this.bars.set(b.index, { size: b.size, volatile: [...b.volatile], doorbell: [...b.doorbell] });
    }
    this.configSize = d.config.length;
    this.vectors = d.msixVectors;
  }

  get name(): string {
    return this.model.description.model;
  }
}

export class EndpointRuntime {
  readonly #session: SessionLike;
  readonly #log: Logger;
  readonly #maxTags: number;
  readonly #devices = new Map<number, Device>();
  /** The same devices in order, for the loops of every batch (no iterator). */
  readonly #list: Device[] = [];
  #started = false;
  #closed = false;
  #inBatch = false;
  #flushScheduled = false;
  /** We sent something since the last flush. */
  #unflushed = false;
  #pendingBytes = 0;
  #drainWaiters: (() => void)[] = [];
  #attachDone: { resolve(o: AttachOutcome[]): void; reject(e: Error): void } | undefined;
  readonly #links: boolean;
  readonly #sealLinks: boolean;
  /** Kernel links written to since their last flush (a device's at most once: Device.linkQueued).
   *  An array, not a Set: a Set's delete shrinks its table, a runtime call per I/O. */
  readonly #unflushedLinks: KernelLink[] = [];
  readonly #faults: Faults | undefined;
  /** What port.virtqRound gives a kernel link (KernelLink.virtqDone encodes it at once). */
  readonly #virtqDone: VirtqDone = { id: 0, flags: 0, vector: 0, oldUsed: 0, newUsed: 0, kick: 0 };
  /** Set while `pcinet trace` runs (endpoint/control.ts): every message in and out is recorded,
   *  on the session and on kernel links alike. Off, it costs one test per message. */
  tap: Tap | undefined;

  constructor(session: SessionLike, models: readonly DeviceModel[], options: RuntimeOptions = {}) {
    this.#session = session;
    this.#log = options.log ?? pino({ level: 'silent' });
    this.#maxTags = options.maxDmaTags ?? DEFAULT_DMA_TAGS;
    this.#links = options.links ?? false;
    this.#sealLinks = options.sealLinks ?? false;
    this.#faults = options.faults;
    models.forEach((m, i) => {
      const d = new Device(i + 1, m);
      d.dma = new DmaReader((tag, iova, length) => {
        d.counters.dmaReads++;
        d.counters.dmaReadBytes += length;
        this.#send(d, { dmaRead: { dev: d.dev, tag, iova: long(iova), length } });
      }, this.#maxTags);
      d.port = this.#portFor(d);
      this.#devices.set(d.dev, d);
      this.#list.push(d);
    });
  }

  /** Sends Attach for every device (ids 1..N, in the order given) and resolves when the host has
   *  answered each. Devices the host refused stay unattached (see the outcomes). Rejects if the
   *  session closes first. */
  start(): Promise<AttachOutcome[]> {
    if (this.#started) throw new Error('EndpointRuntime.start called twice');
    this.#started = true;
    const s = this.#session;
    s.on('messages', (msgs: Msg[]) => this.receive(msgs));
    s.on('drain', () => this.#drained());
    s.on('close', (err?: Error) => this.#sessionClosed(err));
    s.placeDmaReadCpl = (dev, tag, length) => this.#devices.get(dev)?.dma.place(tag, length);
    const done = new Promise<AttachOutcome[]>((resolve, reject) => {
      this.#attachDone = { resolve, reject };
    });
    const links = this.#links && ((s.capabilities ?? 0) & Capability.CAP_KERNEL_LINK) !== 0;
    for (const d of this.#devices.values()) {
      d.linkToken = links ? randomBytes(16) : undefined;
      d.linkKey = links && this.#sealLinks ? randomBytes(32) : undefined;
      this.#control({
        attach: {
          dev: d.dev,
          desc: wireDescription(d.model.description),
          linkToken: d.linkToken,
          linkKey: d.linkKey,
        },
      });
    }
    this.#flush();
    this.#checkAttached();
    return done;
  }

  /** A kernel link presenting `token` (its hello): true if it belongs to a device being attached,
   *  which then sends and receives its data plane on it once the host's AttachResult says so. */
  bindLink(token: Uint8Array, link: KernelLink): boolean {
    if (this.#closed) return false;
    const d = [...this.#devices.values()].find(
      (x) => x.state === 'pending' && !x.link && x.linkToken && Buffer.from(x.linkToken).equals(token),
    );
    if (!d) return false;
    d.link = link;
    link.accept(d.dev, d.linkKey);
    link.on('drain', () => this.#drained());
    link.once('close', (err?: Error) => {
      if (d.link !== link) return;
      if (d.state === 'attached')
        this.#log.warn({ dev: d.dev, model: d.name, err: err?.message }, 'kernel link closed');
      // A link the kernel broke the protocol on ends the session like any host mistake.
      if (err instanceof ProtocolError) void this.#session.close?.(err);
    });
    this.#log.info({ dev: d.dev, model: d.name, remote: link.remote }, 'kernel link open');
    return true;
  }

  /** Endpoint-side unplug of every device (orderly shutdown): Detach{reason} for each, models
   *  detached, session flushed. The caller closes the session afterwards. Idempotent. */
  close(reason: ErrorCode = ErrorCode.SHUTDOWN, message = 'endpoint shutting down'): void {
    if (this.#closed) return;
    for (const d of this.#devices.values()) {
      if (d.state !== 'attached' && d.state !== 'pending') continue;
      const wasAttached = d.state === 'attached';
      d.state = 'unplugged';
      this.#control({ detach: { dev: d.dev, reason, message } });
      if (wasAttached) this.#unplugModel(d);
      else d.outcome = { code: ErrorCode.SHUTDOWN, message: 'endpoint closed before AttachResult' };
    }
    this.#closed = true;
    this.#flush();
    this.#checkAttached();
  }

  /** The devices as `pcinet status` shows them (counters apart: counters()). */
  devices(): { dev: number; model: string; address: string; state: string; kernelLink: boolean }[] {
    return [...this.#devices.values()].map((d) => ({
      dev: d.dev,
      model: d.name,
      address: d.address,
      state: d.state === 'attached' ? 'up' : d.state,
      kernelLink: d.link !== undefined,
    }));
  }

  /** Per-device and model counters, as "dev1.mmioWrites", "dev1.test.commands". */
  counters(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const d of this.#devices.values()) {
      for (const [k, v] of Object.entries(d.counters)) out[`dev${d.dev}.${k}`] = v;
      for (const [k, v] of Object.entries(d.model.counters())) out[`dev${d.dev}.${d.name}.${k}`] = v;
      if (d.link) {
        out[`dev${d.dev}.linkReplies`] = d.link.stats.replies;
        out[`dev${d.dev}.linkReplyUs`] = Math.round(d.link.stats.replyUs);
      }
      if (this.#faults)
        for (const [k, v] of Object.entries(this.#faults.counters(d.dev))) out[`dev${d.dev}.${k}`] = v;
    }
    return out;
  }

  /** One inbound batch. Throws ProtocolError when the host broke the protocol (the session must
   *  then close with its code); messages before the bad one have been applied. */
  receive(msgs: readonly Msg[], link = false): void {
    const tap = this.tap;
    if (tap) for (const m of msgs) tap.record(m, false, link, devOf(m));
    this.#batch(() => {
      for (const m of msgs) this.#dispatch(m);
    });
  }

  /** Runs `apply`, which hands one inbound batch to the devices; then each device's changes go
   *  out, and WritesApplied where the batch wrote to non-doorbell ranges; then everything is
   *  flushed. An error thrown by `apply` ends the batch there (nothing more is sent for it). */
  #batch(apply: () => void): void {
    this.#inBatch = true;
    try {
      apply();
      for (const d of this.#list) {
        if (d.state !== 'attached') continue;
        this.#pushShadow(d);
        if (!d.wrote) continue;
        d.wrote = false;
        const link = this.#fastLink(d);
        if (link) link.writesApplied(BigInt(d.writes));
        else this.#toHost(d, { writesApplied: { dev: d.dev, count: long(d.writes) } });
      }
    } finally {
      this.#inBatch = false;
      for (const d of this.#list) d.wrote = false;
    }
    this.#flush();
  }

  #dispatch(m: Msg): void {
    const kind = kindOf(m);
    switch (kind) {
      case 'attachResult':
        this.#attachResult(m.attachResult!);
        return;
      case 'detach': {
        const d = this.#device(m.detach!.dev);
        if (!d) return;
        d.state = 'removed';
        this.#unplugModel(d);
        this.#log.info(
          { dev: d.dev, model: d.name, reason: ErrorCode[m.detach!.reason ?? 0] },
          'host detached device',
        );
        return;
      }
      case 'functionReset': {
        const d = this.#device(m.functionReset!.dev);
        if (d) this.#functionReset(d);
        return;
      }
      case 'mmioWrite': {
        const w = m.mmioWrite!;
        const d = this.#device(w.dev);
        if (d) this.#mmioWrite(d, w.bar ?? 0, w.offset, w.data ?? new Uint8Array(0));
        return;
      }
      case 'mmioRead': {
        const r = m.mmioRead!;
        const d = this.#device(r.dev);
        if (d) this.#mmioRead(d, r.tag ?? 0, r.bar ?? 0, num(r.offset, 'MmioRead offset'), r.size ?? 0);
        return;
      }
      case 'configWrite': {
        const c = m.configWrite!;
        const d = this.#device(c.dev);
        if (d) this.#configWrite(d, c.offset ?? 0, c.size ?? 0, c.value ?? 0);
        return;
      }
      case 'dmaReadCpl': {
        const c = m.dmaReadCpl!;
        const d = this.#device(c.dev);
        if (d) this.#dmaReadCpl(d, c.tag ?? 0, c.status ?? ErrorCode.OK, c.data ?? new Uint8Array(0));
        return;
      }
      case 'push': {
        const p = m.push!;
        const d = this.#device(p.dev);
        if (d) this.#push(d, u64(p.iova), p.data ?? new Uint8Array(0), p.rule ?? 0, 'copy');
        return;
      }
      case 'pushDrop': {
        const p = m.pushDrop!;
        const d = this.#device(p.dev);
        if (d) this.#pushDrop(d, u64(p.iova), u64(p.length));
        return;
      }
      case 'pushRuleSet': {
        const p = m.pushRuleSet!;
        const d = this.#device(p.dev);
        if (d) this.#pushRuleSet(d, p.id ?? 0);
        return;
      }
      case 'statsRequest': {
        const counters = Object.entries(this.counters()).map(([name, value]) => ({
          name,
          value: long(value),
        }));
        this.#control({ stats: { nonce: m.statsRequest!.nonce, counters } });
        return;
      }
      // The session's own business, if it lets them through.
      case 'hello':
      case 'resume':
      case 'keepAlive':
      case 'error':
        return;
      case undefined:
        throw new ProtocolError(ErrorCode.UNKNOWN_MESSAGE, 'message with no body');
      default:
        throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `${kind} is sent by endpoints, not hosts`);
    }
  }

  // ---- what the host says to an attached device: from messages (#dispatch) and straight from a
  // kernel link's records (#linkReceiver), the same checks either way ----

  #functionReset(d: Device): void {
    d.pushed.clear();
    d.dma.dropWaiting();
    d.model.reset();
    d.writes = 0;
    d.resets++;
  }

  /** `at`: the offset as the message or record has it (checked after the data). */
  #mmioWrite(d: Device, bar: number, at: bigint | Long | null | undefined, data: Uint8Array): void {
    if (data.length === 0) throw new ProtocolError(ErrorCode.BAD_LENGTH, `device ${d.dev}: empty MmioWrite`);
    const offset = typeof at === 'bigint' ? safeOffset(at, 'MmioWrite offset') : num(at, 'MmioWrite offset');
    const info = this.#range(d, bar, offset, data.length, 'MmioWrite');
    d.counters.mmioWrites++;
    // The pushes in front of it (if it is a doorbell) become readable together.
    d.pushed.commit();
    if (!within(info.doorbell, offset, data.length)) {
      d.writes++;
      d.wrote = true;
    }
    d.model.mmioWrite(bar, offset, data);
  }

  #mmioRead(d: Device, tag: number, bar: number, offset: number, size: number): void {
    if (size < 1)
      throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `device ${d.dev}: MmioRead of ${size} bytes`);
    const info = this.#range(d, bar, offset, size, 'MmioRead');
    d.counters.mmioReads++;
    if (!within(info.volatile, offset, size)) {
      d.port.trace('endpoint.mmio.read-not-volatile', { bar, offset: `0x${offset.toString(16)}`, size });
      this.#send(d, { mmioReadCpl: { dev: d.dev, tag, status: ErrorCode.BAD_ARGUMENT } });
      return;
    }
    // An injected all-ones read never reaches the device (a link that failed under it).
    const data =
      this.#faults?.armed && this.#faults.allOnes(d.dev, bar, offset, size)
        ? new Uint8Array(size).fill(0xff)
        : d.model.mmioRead(bar, offset, size);
    if (data.length !== size)
      throw new Error(`${d.name}: mmioRead returned ${data.length} bytes, not ${size}`);
    this.#send(d, { mmioReadCpl: { dev: d.dev, tag, status: ErrorCode.OK, data } }, size);
  }

  #configWrite(d: Device, offset: number, size: number, value: number): void {
    if (![1, 2, 4].includes(size) || offset + size > d.configSize) {
      throw new ProtocolError(
        ErrorCode.BAD_ARGUMENT,
        `device ${d.dev}: ConfigWrite of ${size} bytes at ${offset}`,
      );
    }
    d.model.configWrite(offset, size, value >>> 0);
  }

  #dmaReadCpl(d: Device, tag: number, status: ErrorCode, data: Uint8Array): void {
    // The host read this memory after it pushed whatever of it arrived before this completion:
    // those pushed bytes are older than what the device now sees, and serving them later would
    // take it back in time (a ring index moving backwards).
    const r = d.dma.rangeOf(tag);
    if (r) d.pushed.drop(r.iova, r.len);
    d.dma.complete(tag, status, data);
  }

  /** `keep`: how the push cache may keep `data` (a kernel link's records: as they are, owned or
   *  lent for the batch). */
  #push(d: Device, iova: bigint, data: Uint8Array, rule: number, keep: PushKeep): void {
    if (data.length === 0) throw new ProtocolError(ErrorCode.BAD_LENGTH, `device ${d.dev}: empty Push`);
    if (rule >= MAX_PUSH_RULES)
      throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `device ${d.dev}: Push of rule ${rule}`);
    if (d.ruleChanges.has(rule)) {
      d.counters.pushStale++;
      return;
    }
    d.counters.pushBytes += data.length;
    d.pushed.stage(iova, data, rule, keep);
  }

  #pushDrop(d: Device, iova: bigint, length: bigint): void {
    d.counters.pushDrops++;
    d.pushed.drop(iova, length);
  }

  #pushRuleSet(d: Device, id: number): void {
    const n = d.ruleChanges.get(id);
    if (n === undefined)
      throw new ProtocolError(
        ErrorCode.UNEXPECTED_MESSAGE,
        `PushRuleSet for rule ${id}, which did not change`,
      );
    if (n > 1) d.ruleChanges.set(id, n - 1);
    else d.ruleChanges.delete(id);
  }

  /** What device `dev`'s kernel link hands over straight from its records, while no trace runs
   *  (a trace records messages: the link makes them then). Each record is what its message would
   *  be, checked the same way. */
  #linkReceiver(dev: number): LinkReceiver {
    const attached = () => this.#device(dev);
    return {
      direct: () => this.tap === undefined,
      batch: (visit) => this.#batch(visit),
      mmioWrite: (bar, offset, data) => {
        const d = attached();
        if (d) this.#mmioWrite(d, bar, offset, data);
      },
      mmioRead: (tag, bar, size, offset) => {
        const d = attached();
        if (d) this.#mmioRead(d, tag, bar, safeOffset(offset, 'MmioRead offset'), size);
      },
      configWrite: (offset, size, value) => {
        const d = attached();
        if (d) this.#configWrite(d, offset, size, value);
      },
      functionReset: () => {
        const d = attached();
        if (d) this.#functionReset(d);
      },
      dmaReadCpl: (tag, status, data) => {
        const d = attached();
        if (d) this.#dmaReadCpl(d, tag, status, data ?? new Uint8Array(0));
      },
      push: (rule, iova, data, lent) => {
        const d = attached();
        if (d) this.#push(d, iova, data, rule, lent ? 'lend' : 'own');
      },
      pushDrop: (iova, length) => {
        const d = attached();
        if (d) this.#pushDrop(d, iova, length);
      },
      pushRuleSet: (id) => {
        const d = attached();
        if (d) this.#pushRuleSet(d, id);
      },
      // Whatever the device's state: what it keeps must not change under it.
      reclaim: (buffer) => this.#devices.get(dev)?.pushed.settle(buffer),
    };
  }

  #attachResult(r: pcinet.IAttachResult): void {
    const d = this.#devices.get(r.dev ?? 0);
    if (d?.state === 'unplugged') return;
    if (d?.state !== 'pending') {
      throw new ProtocolError(
        ErrorCode.UNEXPECTED_MESSAGE,
        `AttachResult for device ${r.dev}, which is not being attached`,
      );
    }
    const code = r.code ?? ErrorCode.OK;
    d.outcome = { code, message: r.message ?? '' };
    if (code === ErrorCode.OK && r.link && !d.link) {
      throw new ProtocolError(
        ErrorCode.UNEXPECTED_MESSAGE,
        `AttachResult for device ${d.dev} names a kernel link that never reached us`,
      );
    }
    if (d.link && !(code === ErrorCode.OK && r.link)) {
      // The host's kernel could not finish what it started: the session carries the device.
      d.link.close();
      d.link = undefined;
    }
    if (code === ErrorCode.OK) {
      d.state = 'attached';
      d.address = r.address ?? '';
      this.#faults?.setAddresses(new Map([[d.dev, d.address]]));
      d.model.attach(d.port);
      this.#log.info(
        { dev: d.dev, model: d.name, address: d.address, kernelLink: !!d.link },
        'device attached',
      );
      d.link?.start((msgs) => this.receive(msgs, true), this.#linkReceiver(d.dev));
    } else {
      d.state = 'failed';
      this.#log.warn(
        { dev: d.dev, model: d.name, code: ErrorCode[code] ?? code, message: r.message },
        'host refused device',
      );
    }
    this.#checkAttached();
  }

  /** The attached device `dev`, or undefined for one we unplugged (its messages crossed our
   *  Detach and are dropped). Anything else is UNKNOWN_DEVICE. */
  #device(dev: number | null | undefined): Device | undefined {
    const d = this.#devices.get(dev ?? 0);
    if (d?.state === 'attached') return d;
    if (d?.state === 'unplugged') return undefined;
    const why = d ? `is ${d.state === 'pending' ? 'not attached yet' : d.state}` : 'does not exist';
    throw new ProtocolError(ErrorCode.UNKNOWN_DEVICE, `device ${dev} ${why}`);
  }

  #range(d: Device, bar: number, offset: number, len: number, what: string): BarInfo {
    const info = d.bars.get(bar);
    if (!info) throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `${what}: device ${d.dev} has no BAR ${bar}`);
    if (offset + len > info.size) {
      throw new ProtocolError(
        ErrorCode.BAD_ARGUMENT,
        `${what}: [0x${offset.toString(16)}, +${len}) is outside BAR ${bar} of device ${d.dev} (${info.size} bytes)`,
      );
    }
    return info;
  }

  #checkAttached(): void {
    if (!this.#attachDone) return;
    const all = [...this.#devices.values()];
    if (all.some((d) => d.state === 'pending')) return;
    const done = this.#attachDone;
    this.#attachDone = undefined;
    done.resolve(all.map((d) => ({ dev: d.dev, model: d.name, ...d.outcome, address: d.address })));
  }

  #portFor(d: Device): HostPort {
    const live = () => d.state === 'attached';
    const caps = this.#session.capabilities ?? 0;
    const push = (caps & Capability.CAP_PUSH_RULES) !== 0;
    const rounds = push && (caps & Capability.CAP_VIRTQ_ROUNDS) !== 0;
    const faults = this.#faults;
    const port: HostPort = {
      sqEventIdx: push && (caps & Capability.CAP_SQ_EVENT_IDX) !== 0,
      dmaRead: (iova, len, into) => {
        if (!live()) return Promise.reject(new DmaError(iova, len, 'shutdown'));
        if (faults?.armed && faults.dma(d.dev, 'read', iova, len))
          return Promise.reject(new DmaError(iova, len, 'refused'));
        const hit = d.pushed.take(iova, len, into);
        if (!hit) return d.dma.read(iova, len, into);
        d.counters.pushHits++;
        d.counters.pushHitBytes += len;
        return Promise.resolve(hit);
      },
      dmaReadNow: (iova, len, into) => {
        // A fault may refuse the read: dmaRead asks.
        if (!live() || faults?.armed) return undefined;
        const hit = d.pushed.take(iova, len, into);
        if (!hit) return undefined;
        d.counters.pushHits++;
        d.counters.pushHitBytes += len;
        return hit;
      },
      dmaWrite: (iova, data, handOver) => {
        if (!live()) return;
        d.pushed.drop(iova, data.length);
        // Refused as the host's DMA sandbox would: a posted write is lost, nobody tells the device.
        if (faults?.armed && faults.dma(d.dev, 'write', iova, data.length)) return;
        for (let off = 0; off < data.length; off += MAX_DMA_CHUNK) {
          // No copy here: the session encodes (copies) the message before send() returns, or,
          // for bytes the model handed over, keeps a reference to them.
          // The whole of it, the usual case, without a view (a small array's view makes V8 give
          // it a buffer of its own).
          const piece = data.length <= MAX_DMA_CHUNK ? data : data.subarray(off, off + MAX_DMA_CHUNK);
          const at = off === 0 ? u64Of(iova) : BigInt.asUintN(64, iova + BigInt(off));
          d.counters.dmaWriteBytes += piece.length;
          this.#pushShadow(d);
          const link = this.#fastLink(d);
          if (link) link.dmaWrite(at, piece, handOver === true);
          else
            this.#toHost(
              d,
              { dmaWrite: { dev: d.dev, iova: long(at), data: piece } },
              handOver ? piece : undefined,
            );
          this.#queued(piece.length);
        }
      },
      raiseMsix: (vector) => {
        if (!live()) return;
        if (!Number.isInteger(vector) || vector < 0 || vector >= d.vectors) {
          throw new RangeError(`${d.name}: raiseMsix(${vector}) but the device has ${d.vectors} vectors`);
        }
        const f = faults?.armed ? faults.interrupt(d.dev, vector, d.model) : undefined;
        if (f) {
          this.#faultyInterrupt(d, vector, f);
          return;
        }
        d.counters.interrupts++;
        this.#pushShadow(d);
        const link = this.#fastLink(d);
        if (link) link.interrupt(vector);
        else this.#toHost(d, { interrupt: { dev: d.dev, vector } });
        this.#queued(0);
      },
      drain: () => {
        if (!live() || !this.#out(d).backlogged) return Promise.resolve();
        return new Promise((resolve) => this.#drainWaiters.push(resolve));
      },
      trace: (event, fields = {}) => {
        d.counters.traces++;
        const n = (d.traceCounts.get(event) ?? 0) + 1;
        d.traceCounts.set(event, n);
        if (n <= TRACE_LOG_BURST || n % TRACE_LOG_EVERY === 0) {
          this.#log.info({ dev: d.dev, model: d.name, count: n, ...loggable(fields) }, event);
        }
      },
      changed: () => {
        if (live()) this.#scheduleFlush();
      },
      setPushRule: (id, rule) => {
        if (!Number.isInteger(id) || id < 0 || id >= MAX_PUSH_RULES)
          throw new RangeError(`${d.name}: push rule id ${id} (0..${MAX_PUSH_RULES - 1})`);
        if (rule?.kind === 'nvme-sq' && rule.eventIdx !== undefined && !port.sqEventIdx)
          throw new RangeError(`${d.name}: push rule ${id} has an eventIdx, but the host keeps none`);
        if (!live() || !((this.#session.capabilities ?? 0) & Capability.CAP_PUSH_RULES)) return;
        d.ruleChanges.set(id, (d.ruleChanges.get(id) ?? 0) + 1);
        d.pushed.dropRule(id);
        this.#send(d, { pushRule: pushRuleMsg(d.dev, id, rule) });
      },
    };
    if (faults) port.commandFault = (cmd) => (faults.armed ? faults.command(d.dev, cmd) : undefined);
    if (rounds) {
      port.virtqRound = (r) => {
        if (!Number.isInteger(r.rule) || r.rule < 0 || r.rule >= MAX_PUSH_RULES)
          throw new RangeError(`${d.name}: virtqRound for push rule ${r.rule}`);
        if (r.vector !== undefined && (!Number.isInteger(r.vector) || r.vector < 0 || r.vector >= d.vectors))
          throw new RangeError(
            `${d.name}: virtqRound for vector ${r.vector} but the device has ${d.vectors}`,
          );
        if (!live()) return;
        d.counters.virtqRounds++;
        const link = this.#fastLink(d);
        if (link) {
          // Every I/O of an NVMe SQ that may go quiet ends in one: its record without a message
          // (the link encodes it before it returns: one object serves every round).
          this.#pushShadow(d);
          const v = this.#virtqDone;
          v.id = r.rule;
          v.flags = virtqDoneFlags(r.vector !== undefined, r.eventIdx, r.kick !== undefined);
          v.vector = r.vector ?? 0;
          v.oldUsed = r.oldUsed;
          v.newUsed = r.newUsed;
          v.kick = r.kick ?? 0;
          link.virtqDone(v);
          this.#queued(0);
          return;
        }
        this.#send(d, {
          virtqDone: {
            dev: d.dev,
            rule: r.rule,
            interrupt: r.vector !== undefined,
            vector: r.vector ?? 0,
            oldUsed: r.oldUsed & 0xffff,
            newUsed: r.newUsed & 0xffff,
            eventIdx: r.eventIdx,
            recheck: r.kick !== undefined,
            kick: r.kick ?? 0,
          },
        });
      };
    }
    return port;
  }

  /** An interrupt an injected fault drops, doubles or holds (endpoint/faults.ts). */
  #faultyInterrupt(d: Device, vector: number, f: IrqFault): void {
    const send = () => {
      d.counters.interrupts++;
      this.#send(d, { interrupt: { dev: d.dev, vector } });
    };
    if ('dup' in f) {
      send();
      send();
    } else if ('delayMs' in f) {
      const resets = d.resets;
      void this.#faults!.hold(f.delayMs).then(() => {
        if (d.state === 'attached' && d.resets === resets && !this.#closed) send();
      });
    }
  }

  /** The device's outlet: its kernel link if it has one, else the session (marked for flushing). */
  #out(d: Device): Outlet {
    if (d.link) {
      this.#queueLink(d);
      return d.link;
    }
    this.#unflushed = true;
    return this.#session;
  }

  /** The device's kernel link, marked for flushing, when its records may be written without a
   *  message in between (no trace runs, which records messages). */
  #fastLink(d: Device): KernelLink | undefined {
    if (!d.link || this.tap) return undefined;
    this.#queueLink(d);
    return d.link;
  }

  #queueLink(d: Device): void {
    if (d.linkQueued === d.link) return;
    d.linkQueued = d.link;
    this.#unflushedLinks.push(d.link!);
  }

  /** Every message of a device goes through here: its changed BAR bytes first. */
  #send(d: Device, m: Msg, payload = 0, byRef?: Uint8Array): void {
    this.#pushShadow(d);
    this.#toHost(d, m, byRef);
    this.#queued(payload);
  }

  /** A device's message to its outlet (and to the trace, if one runs). */
  #toHost(d: Device, m: Msg, byRef?: Uint8Array): void {
    const out = this.#out(d);
    if (this.tap) this.tap.record(m, true, out !== this.#session, d.dev);
    out.send(m, byRef);
  }

  /** A message of the runtime's own (Attach, Detach, Stats): always on the session. */
  #control(m: Msg): void {
    if (this.tap) this.tap.record(m, true, false, devOf(m));
    this.#session.send(m);
    this.#unflushed = true;
  }

  #pushShadow(d: Device): void {
    // Indexed: asked before every message, and a for-of makes an iterator each time.
    const dirty = d.model.takeDirty();
    for (let i = 0; i < dirty.length; i++) {
      const r = dirty[i]!;
      for (let off = 0; off < r.data.length; off += MAX_DMA_CHUNK) {
        const data = r.data.subarray(off, off + MAX_DMA_CHUNK);
        const link = this.#fastLink(d);
        if (link) link.shadow(r.bar, BigInt(r.offset + off), data);
        else
          this.#toHost(d, { shadowUpdate: { dev: d.dev, bar: r.bar, offset: long(r.offset + off), data } });
        this.#queued(data.length);
      }
    }
  }

  #queued(bytes: number): void {
    this.#pendingBytes += bytes;
    if (this.#pendingBytes >= FLUSH_BYTES) this.#flush();
    else if (!this.#inBatch) this.#scheduleFlush();
  }

  /** Async device work: one flush per tick, after every promise continuation of that tick ran. */
  #scheduleFlush(): void {
    if (this.#inBatch || this.#flushScheduled || this.#closed) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      if (this.#closed) return;
      for (const d of this.#devices.values()) if (d.state === 'attached') this.#pushShadow(d);
      this.#flush();
    });
  }

  #flush(): void {
    this.#pendingBytes = 0;
    const links = this.#unflushedLinks;
    if (links.length > 0) {
      for (const d of this.#list) d.linkQueued = undefined;
      // Popped, not cleared: setting an array's length is a runtime call.
      while (links.length > 0) links.pop()!.flush();
    }
    if (!this.#unflushed) return;
    this.#unflushed = false;
    this.#session.flush();
  }

  #drained(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }

  #unplugModel(d: Device): void {
    d.pushed.clear();
    d.dma.close();
    d.model.detach();
  }

  #sessionClosed(err?: Error): void {
    for (const d of this.#devices.values()) {
      d.link?.close();
      const wasAttached = d.state === 'attached';
      if (d.state === 'attached' || d.state === 'pending') d.state = 'removed';
      if (wasAttached) this.#unplugModel(d);
    }
    this.#closed = true;
    this.#drained();
    if (this.#attachDone) {
      const done = this.#attachDone;
      this.#attachDone = undefined;
      done.reject(err ?? new Error('session closed before every device was attached'));
    }
    this.#log.info({ err: err?.message }, 'session closed: devices detached');
  }
}
