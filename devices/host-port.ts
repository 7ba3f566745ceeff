// The only things a device model may do to, or receive from, its host. Device models are pure:
// no sockets, no files; backends (storage, network) are injected by whoever builds the model.
import type { DeviceDescription } from './description.js';
import type { PushRule, VirtqRound } from './push.js';

/** Everything a device may do to its host. Implemented by the endpoint runtime over a session, and
 *  by test fakes backed by an ArrayBuffer. */
export interface HostPort {
  /** Reads host memory. Rejects with a DmaError when the host's IOMMU refuses. Any length: the port
   *  splits into MAX_DMA_CHUNK requests. `into` (at least `len` bytes), when given, is where the
   *  port may put the bytes instead of a new buffer: the model then leaves it alone until the read
   *  settles, and uses what it resolves with — `into`'s first `len` bytes, or the bytes where the
   *  port had them already (pushed ones), with `into` unchanged. A device reading into its own
   *  buffer again and again then costs no allocation per read. */
  dmaRead(iova: bigint, len: number, into?: Uint8Array): Promise<Uint8Array>;
  /** What dmaRead(iova, len) would resolve with, when the bytes are at hand now (the host pushed
   *  every one of them, docs/PUSH.md): they are then taken, as dmaRead takes them. Otherwise
   *  undefined, nothing changes, and the model calls dmaRead. Bytes that came in pieces are put
   *  together in `into` (at least `len` bytes), when given, instead of a new buffer. Optional:
   *  without it, nothing is at hand. */
  dmaReadNow?(iova: bigint, len: number, into?: Uint8Array): Uint8Array | undefined;
  /** Posted write to host memory; lands before any later raiseMsix or register change of this device
   *  becomes visible (PCIe ordering). The data is copied before returning, unless `handOver`: then
   *  the bytes are the port's from now on (it may send and keep them by reference), and the model
   *  never modifies them again — pass it only for a buffer made for this write (a backend's read,
   *  a generated pattern), never for one the model reuses. */
  dmaWrite(iova: bigint, data: Uint8Array, handOver?: boolean): void;
  /** Fires MSI-X vector `vector`. Register changes made before the call are visible to the host
   *  before the interrupt arrives. */
  raiseMsix(vector: number): void;
  /** Resolves when the link can take more posted traffic. Bulk producers await it between chunks. */
  drain(): Promise<void>;
  /** A guest (driver) mistake or a notable device event, e.g. trace('test.cmd.unknown', { cmd }). */
  trace(event: string, fields?: Record<string, unknown>): void;
  /** BAR contents changed outside a host access (async work finished): the port collects them
   *  (takeDirty) and pushes them to the host soon, batched with the rest of this tick's traffic.
   *  Cheap; calling it during a host access or many times is fine. */
  changed(): void;
  /** Declares (or with `undefined` removes) push rule `id` (0..MAX_PUSH_RULES-1; docs/PUSH.md): the
   *  host may then send what the rule's doorbell makes the device read, and dmaRead is served from
   *  those bytes. A hint only: reads return the same bytes with or without it. Set a rule before the
   *  driver can ring its doorbell (while handling the register write or command that set the queue
   *  up), remove it when the queue goes away. */
  setPushRule(id: number, rule: PushRule | undefined): void;
  /** Present when the host ends virtqueue rounds (docs/PUSH.md "Virtqueue rounds"): posted like a
   *  DMA write, after every write made before it. Absent: the device reads the ring itself to decide
   *  interrupts and to find buffers no notify announced. */
  virtqRound?(round: VirtqRound): void;
  /** True when the host keeps an NVMe SQ push rule's eventIdx (NvmeSqRule.eventIdx; docs/PUSH.md
   *  "Shadow doorbells"). Absent: a device must not give a rule one. */
  readonly sqEventIdx?: boolean;
  /** Present when faults may be injected (`pcinet inject`, docs/devices.md "Fault injection"): a
   *  model that runs commands (DeviceModel.commands) asks before it runs each one whether to fail
   *  it or hold its completion. The model stays pure: it only obeys the answer. */
  commandFault?(command: CommandRef): CommandFault | undefined;
}

/** A command a model is about to run, as fault injection matches it. */
export interface CommandRef {
  /** The queue it came from (NVMe: 0 is the admin queue). */
  queue: number;
  opcode: number;
}

/** What an injected fault does to one command. */
export interface CommandFault {
  /** Complete it with this status instead of running it, in the model's own encoding (NVMe: the
   *  CQE status field, SCT << 8 | SC, DNR 0x4000). */
  status?: number;
  /** Run it, and complete it only once this settles (a slow device). */
  hold?: Promise<void>;
}

/** Why a dmaRead failed: the host refused the access (no live mapping, wrong direction), or the
 *  device is no longer attached (detach, session loss) and nothing can be read. */
export type DmaFault = 'refused' | 'shutdown';

/** Thrown (rejected) by HostPort.dmaRead when the read cannot be done. */
export class DmaError extends Error {
  override readonly name = 'DmaError';
  constructor(
    readonly iova: bigint,
    readonly len: number,
    readonly fault: DmaFault,
  ) {
    const what = fault === 'refused' ? 'refused by the host' : 'abandoned: the device is detached';
    super(`DMA read at 0x${iova.toString(16)} (+${len}) ${what}`);
  }
}

/** A range of a BAR whose contents changed and must be pushed to the host's shadow. */
export interface DirtyRange {
  bar: number;
  offset: number;
  data: Uint8Array;
}

/** What the endpoint runtime needs from a device model. */
export interface DeviceModel {
  /** What the host builds the function from (the endpoint sends it in Attach). Stable for the life of
   *  the model. */
  readonly description: DeviceDescription;
  /** The host is connected: the model may now use the port. Called once per attach. */
  attach(port: HostPort): void;
  /** The device was removed from the host (detach or session loss). Stop all work. */
  detach(): void;
  /** Posted write from the driver; data is 1–8 bytes (CPU access) or longer (string move). `data`
   *  is the model's only during the call (a kernel link reads into its memory again): copy what
   *  is kept. */
  mmioWrite(bar: number, offset: number, data: Uint8Array): void;
  /** Synchronous read of a volatile range; returns exactly `size` bytes. */
  mmioRead(bar: number, offset: number, size: number): Uint8Array;
  /** A config-space write the device must know about (value after the host applied its masks). */
  configWrite(offset: number, size: number, value: number): void;
  /** Function-level reset: registers back to power-on values, in-flight work abandoned. */
  reset(): void;
  /** Returns and clears the BAR ranges changed since the last call (shadow updates to push). */
  takeDirty(): DirtyRange[];
  /** Device-specific counters for stats (may be empty). */
  counters(): Record<string, number>;
  /** Lines a person should read in `pcinet status` about the model's state, beyond its counters
   *  (the replay's divergence); absent on models with nothing to say. */
  notes?(): string[];
  /** Names of the commands fault injection may pick (`opcode=read`), on models that ask
   *  HostPort.commandFault; absent on models that run no commands. `admin`: the command comes on
   *  queue 0 only, else on the other queues. */
  readonly commands?: Readonly<Record<string, { opcode: number; admin: boolean }>>;
}
