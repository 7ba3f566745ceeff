// An NVMe 1.4 controller with one namespace, for Linux's unmodified nvme driver and nvme-cli
// (docs/devices.md, "NVMe"). BAR 0: the controller registers, doorbells from 0x1000 (stride 4),
// the MSI-X table and PBA (host-owned). Queues live in host memory and are reached by DMA: a tail
// doorbell makes the controller fetch the new entries in one read, run them concurrently (up to
// MAX_INFLIGHT per queue), and post completions with phase tags, then the queue's vector.
//
// Storage is an injected BlockBackend (a file, a block device, memory). Driver mistakes get the
// status the specification gives and a trace; nothing the driver writes can make the model throw.
import { type CommandFault, DmaError } from '../host-port.js';
import {
  leBytes,
  msixCap,
  PciDevice,
  pciConfig,
  pcieCap,
  pmCap,
  type Register,
  type RegisterTable,
  rd16,
  rd32,
  rd64,
  registers,
  wr16,
  wr32,
} from '../pci/index.js';
import { type BlockBackend, BlockError } from './backend.js';
import {
  firmwareSlotLog,
  type Identity,
  identifyController,
  identifyNamespace,
  nsDescriptors,
  smartLog,
} from './pages.js';
import { type ListRead, PrpError, prpsNow, prpWalk, type Seg } from './prp.js';
import {
  ADMIN,
  BAR_SIZE,
  CC,
  CNS,
  CQE_SIZE,
  CSTS,
  DNR,
  FEAT,
  IO,
  LOG,
  MSIX_PBA,
  MSIX_TABLE,
  NVME_CLASS_CODE,
  NVME_DEVICE_ID,
  NVME_VENDOR_ID,
  PAGE,
  REG,
  SC,
  SQE_SIZE,
} from './spec.js';

/** Entries per queue (CAP.MQES is this minus one). */
export const MAX_QUEUE_ENTRIES = 1024;
/** Commands of one submission queue running at once. */
export const MAX_INFLIGHT = 64;
/** Largest transfer: 2^MDTS pages. */
export const MDTS = 6;
const MAX_TRANSFER = PAGE << MDTS;
/** Writes up to this size get their data pushed with the doorbell. Larger ones are bound by the
 *  bytes, not by the one round trip of their data read; it also keeps a QD32 burst of pushes within
 *  the endpoint's push cache (endpoint/push-cache.ts). */
const PUSH_WRITE_MAX = 128 << 10;
/** Async event requests held at once (AERL + 1). */
const AER_LIMIT = 4;
const NSID = 1;

export interface NvmeOptions {
  backend: BlockBackend;
  /** 512 or 4096. */
  lbaSize?: number;
  serial?: string;
  model?: string;
  firmware?: string;
  /** I/O queue pairs, 1..32; default 8. */
  queues?: number;
}

interface Sq {
  id: number;
  base: bigint;
  size: number;
  cqid: number;
  head: number;
  tail: number;
  inflight: number;
  fetching: boolean;
  /** Its push rule has the shadow tail: every tail doorbell and completion ends in a round. */
  rounds?: boolean;
}

interface Cq {
  id: number;
  base: bigint;
  size: number;
  vector: number;
  ien: boolean;
  head: number;
  tail: number;
  phase: number;
  /** Completions waiting for room (the driver has not consumed the queue). */
  waiting: Uint8Array[];
  /** A read of its shadow head doorbell is under way (#refreshHead). */
  refreshing: boolean;
}

/** A command between fetch and completion. */
interface Running {
  sq: Sq;
  sqe: Uint8Array;
  cid: number;
  /** Date.now() when it started (stats.busyMs). */
  started: number;
  epoch: number;
  /** What fault injection said about it. */
  injected: CommandFault | undefined;
  /** `sqe` is one of the controller's entry buffers (#sqeFree), given back when it ends. */
  pooled: boolean;
}

/** Entry buffers kept for reuse: a command fetched alone is copied into one (pushed entries are
 *  only lent), instead of a new one per command. Past this many, ended ones are dropped. */
const SQE_POOL = MAX_INFLIGHT;

/** Where Doorbell Buffer Config put the shadow doorbells and their event indices: one 4-byte slot
 *  per doorbell at each, in doorbell order (stride 4). */
interface DoorbellBuffer {
  dbs: bigint;
  eis: bigint;
}

/** A CQ's event index while its driver need not ring: it rings only when its head wraps. */
const CQ_EVENT_IDLE = 0xffff;

/** A command's outcome: status (SCT << 8 | SC, maybe DNR), and dword 0. */
interface Done {
  status: number;
  dw0?: number;
}

/** Success without a dword 0 (every read and write): one object, since nobody changes a Done. */
const OK: Done = Object.freeze({ status: SC.SUCCESS, dw0: 0 });
const ok = (dw0 = 0): Done => (dw0 === 0 ? OK : { status: SC.SUCCESS, dw0 });
/** Not completed now: an async event request waits for an event. */
const HELD = -1;
const fail = (status: number, dnr = true): Done => ({ status: status | (dnr ? DNR : 0) });

/** Commands by name for fault injection (DeviceModel.commands). */
const NVME_COMMANDS = {
  flush: { opcode: IO.FLUSH, admin: false },
  write: { opcode: IO.WRITE, admin: false },
  read: { opcode: IO.READ, admin: false },
  'write-zeroes': { opcode: IO.WRITE_ZEROES, admin: false },
  dsm: { opcode: IO.DSM, admin: false },
  identify: { opcode: ADMIN.IDENTIFY, admin: true },
  'get-log-page': { opcode: ADMIN.GET_LOG_PAGE, admin: true },
  'set-features': { opcode: ADMIN.SET_FEATURES, admin: true },
  'get-features': { opcode: ADMIN.GET_FEATURES, admin: true },
  'create-sq': { opcode: ADMIN.CREATE_SQ, admin: true },
  'create-cq': { opcode: ADMIN.CREATE_CQ, admin: true },
  'delete-sq': { opcode: ADMIN.DELETE_SQ, admin: true },
  'delete-cq': { opcode: ADMIN.DELETE_CQ, admin: true },
  abort: { opcode: ADMIN.ABORT, admin: true },
} as const;

/** The controller was reset while the command ran: it ends without a trace of it. */
class Abandoned extends Error {}

/** Byte offset of queue y's doorbell (SQ tail, or CQ head) among the doorbells: in the register
 *  file from REG.DOORBELLS, and in the shadow doorbell and event index buffers alike (stride 4). */
const doorbellAt = (y: number, cq: boolean) => (2 * y + (cq ? 1 : 0)) * 4;

export class NvmeController extends PciDevice<NvmeController> {
  readonly backend: BlockBackend;
  readonly lbaSize: number;
  readonly blocks: number;
  readonly serial: string;
  readonly modelName: string;
  readonly firmware: string;
  readonly maxQueues: number;
  readonly #sqs = new Map<number, Sq>();
  readonly #cqs = new Map<number, Cq>();
  readonly #features = new Map<number, number>();
  #aers: number[] = [];
  /** Bumped by every controller reset: work of an older epoch is dropped. */
  #epoch = 0;
  /** Backend calls under way. A reset lets them finish before it reports CSTS.RDY=0, and an
   *  enable before it reports CSTS.RDY=1: no write of an older epoch reaches storage after the
   *  driver was told the controller is reset (QEMU's nvme drains its block backend the same way). */
  #backendBusy = 0;
  /** Resolved when #backendBusy drops to 0. */
  #idle: { promise: Promise<void>; resolve: () => void } | undefined;
  /** Vectors to raise (a few at most: one per CQ with completions this tick). */
  #irqPending: number[] = [];
  /** Doorbell Buffer Config in force (I/O queues only, as Linux uses it); cleared by a reset. */
  #dbbuf: DoorbellBuffer | undefined;
  #irqScheduled = false;
  /** Doorbell writes being handled (doorbell()): interrupts wait for the write's end. */
  #inDoorbell = 0;
  readonly #roundsPending: Sq[] = [];
  /** Entry buffers no command holds (SQE_POOL). */
  readonly #sqeFree: Uint8Array[] = [];
  /** Where the data of a read or write done at once is (read from storage, or its pushed pieces
   *  put together): the controller's own, reused, so large I/O allocates nothing. Nothing holds it
   *  past the call that filled it: the port copies what is written from it, and data that must
   *  wait for something is copied out first. */
  #xfer: Uint8Array | undefined;
  /** A completion posted at once is put together here (HostPort.dmaWrite copies it). */
  readonly #cqe = new Uint8Array(CQE_SIZE);
  /** The last #scratch(len) handed out. */
  #xferView: Uint8Array | undefined;
  #startedAt = Date.now();
  readonly stats = {
    readBytes: 0,
    writtenBytes: 0,
    readCommands: 0,
    writeCommands: 0,
    otherCommands: 0,
    busyMs: 0,
    mediaErrors: 0,
    errors: 0,
    unsafeShutdowns: 0,
    shutdowns: 0,
    resets: 0,
  };

  constructor(o: NvmeOptions) {
    const lbaSize = o.lbaSize ?? 512;
    if (lbaSize !== 512 && lbaSize !== 4096)
      throw new RangeError(`nvme: lba must be 512 or 4096, not ${lbaSize}`);
    const queues = o.queues ?? 8;
    if (!Number.isInteger(queues) || queues < 1 || queues > 32)
      throw new RangeError(`nvme: queues must be 1..32, not ${queues}`);
    if (o.backend.size < lbaSize || o.backend.size % lbaSize) {
      throw new RangeError(
        `nvme: ${o.backend.name} has ${o.backend.size} bytes, not a multiple of the ${lbaSize}-byte LBA`,
      );
    }
    const vectors = queues + 1;
    super({
      model: 'nvme',
      config: pciConfig({
        vendorId: NVME_VENDOR_ID,
        deviceId: NVME_DEVICE_ID,
        classCode: NVME_CLASS_CODE,
        revision: 1,
        bars: [{ index: 0, kind: 'mem64', size: BAR_SIZE }],
        caps: [
          pcieCap({ type: 'endpoint' }),
          msixCap({ vectors, bar: 0, table: MSIX_TABLE, pba: MSIX_PBA }),
          pmCap(),
        ],
      }),
      bars: [{ index: 0, registers: nvmeRegisters(queues) }],
    });
    this.backend = o.backend;
    this.lbaSize = lbaSize;
    this.blocks = o.backend.size / lbaSize;
    this.serial = (o.serial ?? 'PCINET0001').slice(0, 20);
    this.modelName = (o.model ?? 'pcinet NVMe').slice(0, 40);
    this.firmware = (o.firmware ?? '0.1.0').slice(0, 8);
    this.maxQueues = queues;
  }

  /** What `pcinet inject fail|delay` may name (opcode=read); the others go by number. */
  readonly commands = NVME_COMMANDS;

  override counters(): Record<string, number> {
    return { ...this.stats, ioQueues: Math.max(0, this.#sqs.size - 1) };
  }

  get #regs() {
    return this.bar(0);
  }

  protected override onReset(): void {
    this.#resetController();
  }

  override detach(): void {
    // The host is gone without a shutdown notification: keep what was written.
    if (this.#sqs.size) this.stats.unsafeShutdowns++;
    void this.#backendCall(undefined, () => this.backend.flush()).catch(() => {});
    super.detach();
  }

  /**
   * Runs a backend call for a command of `epoch` (undefined: the controller's own, such as the
   * shutdown flush): once the controller was reset, a command starts none (it is abandoned, as the
   * reset aborted it), and a reset waits for the calls that did start (#afterDrain).
   */
  async #backendCall<T>(epoch: number | undefined, call: () => Promise<T>): Promise<T> {
    if (epoch !== undefined && epoch !== this.#epoch) throw new Abandoned();
    this.#backendBusy++;
    try {
      return await call();
    } finally {
      if (--this.#backendBusy === 0) {
        this.#idle?.resolve();
        this.#idle = undefined;
      }
    }
  }

  /** Resolves once no backend call is under way. */
  #drained(): Promise<void> {
    if (!this.#backendBusy) return Promise.resolve();
    if (!this.#idle) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.#idle = { promise, resolve };
    }
    return this.#idle.promise;
  }

  /** Runs `f` once no backend call is under way: now if none is, else when the last one ends,
   *  unless the controller was reset or detached meanwhile (a later CC write decides then). */
  #afterDrain(what: string, f: () => void): void {
    if (!this.#backendBusy) {
      f();
      return;
    }
    const epoch = this.#epoch;
    this.trace('nvme.reset.draining', { what, calls: this.#backendBusy });
    void this.#drained().then(() => {
      if (epoch === this.#epoch && this.attached) f();
    });
  }

  #resetController(): void {
    this.#epoch++;
    for (const id of this.#sqs.keys()) this.host.setPushRule(id, undefined);
    this.#sqs.clear();
    this.#cqs.clear();
    this.#dbbuf = undefined;
    this.#aers = [];
    this.#irqPending.length = 0;
    this.#roundsPending.length = 0;
    this.#features.clear();
    this.#features.set(FEAT.VOLATILE_WC, 1);
    this.#features.set(FEAT.NUM_QUEUES, ((this.maxQueues - 1) << 16) | (this.maxQueues - 1));
    this.#features.set(FEAT.ARBITRATION, 0);
    this.#features.set(FEAT.POWER_MGMT, 0);
    this.#features.set(FEAT.TEMP_THRESHOLD, 343);
    this.#features.set(FEAT.ERROR_RECOVERY, 0);
    this.#features.set(FEAT.IRQ_COALESCE, 0);
    this.#features.set(FEAT.WRITE_ATOMIC, 0);
    this.#features.set(FEAT.ASYNC_EVENT, 0);
  }

  // ---- registers ----

  /** CC written: enable, disable (reset), shutdown. */
  ccWritten(cc: number, old: number): void {
    const r = this.#regs;
    const shn = (cc & CC.SHN_MASK) >>> CC.SHN_SHIFT;
    // An enable after a reset (CC.EN 1→0, or a function reset) whose backend calls still run
    // waits for them, so the new controller's commands come after them.
    if (cc & CC.EN && !(old & CC.EN)) this.#afterDrain('enable', () => this.#enable(cc));
    else if (!(cc & CC.EN) && old & CC.EN) {
      // NVMe Base 2.0 §3.7.2: a Controller Reset aborts outstanding commands; CSTS.RDY goes to 0
      // once the reset is done — here, once writes already handed to the backend have landed.
      this.stats.resets++;
      this.#resetController();
      this.#afterDrain('disable', () => r.set32(REG.CSTS, r.u32(REG.CSTS) & ~(CSTS.RDY | CSTS.CFS)));
    }
    if (shn && !((old & CC.SHN_MASK) >>> CC.SHN_SHIFT)) void this.#shutdown(this.#epoch);
  }

  #enable(cc: number): void {
    const r = this.#regs;
    const aqa = r.u32(REG.AQA);
    const asqs = (aqa & 0xfff) + 1;
    const acqs = ((aqa >>> 16) & 0xfff) + 1;
    const asq = r.u64(REG.ASQ);
    const acq = r.u64(REG.ACQ);
    const mps = (cc >>> CC.MPS_SHIFT) & 0xf;
    const css = (cc >>> 4) & 0x7;
    const bad =
      asqs < 2
        ? 'admin SQ size'
        : acqs < 2
          ? 'admin CQ size'
          : !asq || asq & 0xfffn
            ? 'ASQ'
            : !acq || acq & 0xfffn
              ? 'ACQ'
              : mps !== 0
                ? 'CC.MPS (only 4 KiB pages)'
                : css !== 0
                  ? 'CC.CSS'
                  : undefined;
    if (bad) {
      this.trace('nvme.enable.bad', { what: bad });
      r.set32(REG.CSTS, r.u32(REG.CSTS) | CSTS.CFS);
      return;
    }
    this.#resetController();
    this.#cqs.set(0, {
      id: 0,
      base: acq,
      size: acqs,
      vector: 0,
      ien: true,
      head: 0,
      tail: 0,
      phase: 1,
      waiting: [],
      refreshing: false,
    });
    this.#sqs.set(0, {
      id: 0,
      base: asq,
      size: asqs,
      cqid: 0,
      head: 0,
      tail: 0,
      inflight: 0,
      fetching: false,
    });
    this.#pushSq(0, asq, asqs);
    this.#startedAt = Date.now();
    r.set32(REG.CSTS, (r.u32(REG.CSTS) & ~(CSTS.CFS | (3 << 2))) | CSTS.RDY);
  }

  async #shutdown(epoch: number): Promise<void> {
    const r = this.#regs;
    r.set32(REG.CSTS, (r.u32(REG.CSTS) & ~(3 << 2)) | CSTS.SHST_OCCURRING);
    // The flush covers every write handed to the backend: those still running first.
    await this.#drained();
    try {
      await this.#backendCall(undefined, () => this.backend.flush());
    } catch (e) {
      if (!(e instanceof BlockError)) throw e;
      this.trace('nvme.shutdown.flush-failed', { code: e.code, err: e.message });
    }
    if (epoch !== this.#epoch || !this.attached) return;
    this.stats.shutdowns++;
    r.set32(REG.CSTS, (r.u32(REG.CSTS) & ~(3 << 2)) | CSTS.SHST_COMPLETE);
  }

  /** A doorbell: y = queue id, cq = head doorbell of CQ y, else tail doorbell of SQ y. Commands it
   *  lets complete at once (#run) complete before it returns, and their interrupts are raised as
   *  it returns: they go out with the host's write, not after it. */
  doorbell(y: number, cq: boolean, value: number): void {
    this.#inDoorbell++;
    try {
      this.#doorbell(y, cq, value);
    } finally {
      if (--this.#inDoorbell === 0 && !this.#irqScheduled) this.#raisePending();
    }
  }

  #doorbell(y: number, cq: boolean, value: number): void {
    if (!(this.#regs.u32(REG.CSTS) & CSTS.RDY)) {
      this.trace('nvme.doorbell.not-ready', { queue: y, cq });
      return;
    }
    if (cq) {
      const q = this.#cqs.get(y);
      if (!q || value >= q.size) {
        this.trace('nvme.doorbell.bad-cq', { queue: y, value });
        return;
      }
      q.head = value;
      this.#postWaiting(q);
      return;
    }
    const q = this.#sqs.get(y);
    // Answered even when refused: the host counts on a round for every tail doorbell.
    if (q) this.#round(q);
    if (!q || value >= q.size) {
      this.trace('nvme.doorbell.bad-sq', { queue: y, value });
      return;
    }
    q.tail = value;
    this.#fetch(q, this.#epoch);
  }

  /** Lets the host push SQ `id`'s new entries with its tail doorbell (docs/PUSH.md), and for I/O
   *  queues the data of writes up to PUSH_WRITE_MAX: the command fetch and the data read then cost
   *  no round trip. Rule id = queue id. With shadow doorbells and a host that ends rounds, the rule
   *  names the shadow tail too, and the SQ may go quiet (docs/PUSH.md "Quiet submission queues"):
   *  then every tail doorbell and every completion of the SQ ends in a round (#round). */
  #pushSq(id: number, base: bigint, entries: number): void {
    const shadow =
      id && this.#dbbuf && this.host.virtqRound ? this.#dbbuf.dbs + BigInt(doorbellAt(id, false)) : 0n;
    const sq = this.#sqs.get(id);
    if (sq) sq.rounds = shadow !== 0n;
    this.host.setPushRule(id, {
      kind: 'nvme-sq',
      bar: 0,
      doorbell: REG.DOORBELLS + doorbellAt(id, false),
      base,
      entries,
      dataMax: id === 0 ? 0 : PUSH_WRITE_MAX,
      lbaShift: Math.log2(this.lbaSize),
      ...(id && this.#dbbuf ? { eventIdx: this.#dbbuf.eis + BigInt(doorbellAt(id, false)) } : {}),
      ...(shadow ? { shadow } : {}),
    });
  }

  // ---- submission ----

  /** Runs SQ `sq`'s new entries. Those at hand (pushed with the doorbell) are fetched and run at
   *  once; a fetch that must wait for host memory goes on when it comes (`fetching` meanwhile). */
  #fetch(sq: Sq, epoch: number): void {
    if (sq.fetching) return;
    sq.fetching = true;
    this.#fetchMore(sq, epoch);
  }

  /** #fetch's loop: returns with `fetching` cleared, or with a read of entries under way. */
  #fetchMore(sq: Sq, epoch: number): void {
    try {
      while (
        sq.head !== sq.tail &&
        sq.inflight < MAX_INFLIGHT &&
        epoch === this.#epoch &&
        this.#sqs.get(sq.id) === sq
      ) {
        const upto = sq.tail > sq.head ? sq.tail : sq.size;
        const n = Math.min(upto - sq.head, MAX_INFLIGHT - sq.inflight);
        const iova = sq.base + BigInt(sq.head * SQE_SIZE);
        const into = n === 1 ? (this.#sqeFree.pop() ?? new Uint8Array(SQE_SIZE)) : undefined;
        const entries = this.host.dmaReadNow?.(iova, n * SQE_SIZE, into);
        // The entry is in `into` (lent bytes copied), or where the port had it.
        const pooled = into !== undefined && entries === into;
        if (into && !pooled) this.#sqeFree.push(into);
        if (!entries) {
          void this.#fetchWait(sq, epoch, iova, n);
          return;
        }
        this.#start(sq, entries, n, epoch, pooled);
      }
    } catch (e) {
      sq.fetching = false;
      throw e;
    }
    sq.fetching = false;
  }

  /** Entries that must be read from host memory: read, run, and the fetch goes on. */
  async #fetchWait(sq: Sq, epoch: number, iova: bigint, n: number): Promise<void> {
    let entries: Uint8Array;
    try {
      entries = await this.host.dmaRead(iova, n * SQE_SIZE);
    } catch (e) {
      sq.fetching = false;
      if (!(e instanceof DmaError)) throw e;
      // The queue itself is unreachable: nothing can be completed on it.
      this.trace('nvme.sq.unreadable', { queue: sq.id, iova: `0x${e.iova.toString(16)}` });
      this.#fatal(epoch);
      return;
    }
    if (epoch !== this.#epoch || this.#sqs.get(sq.id) !== sq) {
      sq.fetching = false;
      return;
    }
    try {
      this.#start(sq, entries, n, epoch);
    } catch (e) {
      sq.fetching = false;
      throw e;
    }
    this.#fetchMore(sq, epoch);
  }

  /** The `n` entries fetched from the SQ's head: the head moves past them all, then each runs. */
  #start(sq: Sq, entries: Uint8Array, n: number, epoch: number, pooled = false): void {
    for (let i = 0; i < n; i++) {
      sq.head = (sq.head + 1) % sq.size;
      sq.inflight++;
    }
    if (n === 1) this.#run(sq, entries, epoch, pooled);
    else
      for (let i = 0; i < n; i++)
        this.#run(sq, entries.subarray(i * SQE_SIZE, (i + 1) * SQE_SIZE), epoch, false);
  }

  /** The controller cannot go on (a queue in memory it cannot reach): CSTS.CFS, the driver resets. */
  #fatal(epoch: number): void {
    if (epoch !== this.#epoch) return;
    this.#regs.set32(REG.CSTS, this.#regs.u32(REG.CSTS) | CSTS.CFS);
  }

  /**
   * Runs one command. Where every step can be done at once (its data at hand, storage that need not
   * wait: the usual read or write) it completes before this returns, without a promise; otherwise
   * it goes on asynchronously. Either way the same steps, checks and outcome.
   */
  #run(sq: Sq, sqe: Uint8Array, epoch: number, pooled: boolean): void {
    const cmd: Running = {
      sq,
      sqe,
      cid: rd16(sqe, 2),
      started: Date.now(),
      epoch,
      injected: this.host.commandFault?.({ queue: sq.id, opcode: sqe[0]! }),
      pooled,
    };
    let done: Done | undefined;
    try {
      if (cmd.injected?.status !== undefined) done = { status: cmd.injected.status };
      else {
        const r = sq.id === 0 ? this.#admin(sqe, epoch) : this.#io(sqe, epoch);
        if (r instanceof Promise) {
          void this.#runWait(cmd, r);
          return;
        }
        done = r;
      }
    } catch (e) {
      try {
        done = this.#failed(cmd, e);
      } catch (bug) {
        // Our own bug: as loud as in an async command (an unhandled rejection), not the caller's.
        void Promise.reject(bug);
        return;
      }
    }
    if (done) this.#finish(cmd, done);
  }

  async #runWait(cmd: Running, pending: Promise<Done>): Promise<void> {
    let done: Done | undefined;
    try {
      done = await pending;
    } catch (e) {
      done = this.#failed(cmd, e);
    }
    if (done) this.#finish(cmd, done);
  }

  /** A failed command's outcome, traced; undefined if it was abandoned (a reset), which ends it
   *  here. Anything but a command's failure is rethrown. */
  #failed(cmd: Running, e: unknown): Done | undefined {
    const { sq, sqe } = cmd;
    if (e instanceof Abandoned) {
      sq.inflight--;
      return undefined;
    }
    if (e instanceof PrpError) {
      const done = fail(SC.INVALID_PRP_OFFSET);
      this.trace('nvme.command.refused', {
        queue: sq.id,
        cid: cmd.cid,
        opcode: sqe[0],
        status: `0x${(done.status & 0x7ff).toString(16)}`,
        prp1: rd64(sqe, 24),
        prp2: rd64(sqe, 32),
        ...e.detail,
      });
      return done;
    }
    if (e instanceof DmaError) {
      this.trace('nvme.dma.refused', { queue: sq.id, iova: `0x${e.iova.toString(16)}`, len: e.len });
      return fail(SC.DATA_XFER_ERROR, false);
    }
    if (e instanceof BlockError) return this.#backendError(e);
    throw e;
  }

  /** A command's outcome, to its CQ: at once, or after what must come first. */
  #finish(cmd: Running, done: Done): void {
    const { sq, sqe } = cmd;
    // A read or write that failed may have ended before it read what the host pushed for it.
    const consume = done.status !== SC.SUCCESS && (sqe[0] === IO.READ || sqe[0] === IO.WRITE) && sq.id !== 0;
    if (consume || cmd.injected?.hold) void this.#finishWait(cmd, done, consume);
    else this.#end(cmd, done);
  }

  async #finishWait(cmd: Running, done: Done, consume: boolean): Promise<void> {
    if (consume) await this.#consumePushed(cmd.sqe);
    if (cmd.injected?.hold) await cmd.injected.hold;
    this.#end(cmd, done);
  }

  #end(cmd: Running, done: Done): void {
    const { sq, epoch } = cmd;
    // Nothing reads the entry from here on (a command abandoned by a reset drops its buffer).
    if (cmd.pooled && this.#sqeFree.length < SQE_POOL) this.#sqeFree.push(cmd.sqe);
    this.stats.busyMs += Date.now() - cmd.started;
    sq.inflight--;
    if (epoch !== this.#epoch || this.#sqs.get(sq.id) !== sq) return;
    if (done.status === HELD) return;
    if (done.status !== SC.SUCCESS) this.stats.errors++;
    this.#complete(sq, cmd.cid, done);
    this.#round(sq);
    if (sq.head !== sq.tail) this.#fetch(sq, epoch);
  }

  /** A backend error's status, from its errno code and the call that failed (never its text). */
  #backendError(e: BlockError): Done {
    this.stats.mediaErrors++;
    this.trace('nvme.backend.error', { code: e.code, op: e.op, err: e.message });
    switch (e.code) {
      case 'ENOSPC':
      case 'EDQUOT':
        return fail(SC.CAP_EXCEEDED); // retrying cannot make room: DNR
      case 'EIO':
        // Media errors (SCT 2): the data could not be read, or not be stored.
        return fail(e.op === 'read' ? SC.UNRECOVERED_READ : SC.WRITE_FAULT, false);
      default:
        return fail(SC.INTERNAL, false);
    }
  }

  // ---- completion ----

  #complete(sq: Sq, cid: number, done: Done): void {
    const cq = this.#cqs.get(sq.cqid);
    if (!cq) return; // deleted under it
    // With room and nobody ahead of it (the usual case) the entry goes out from the controller's
    // own buffer (the port copies it); one that must wait gets a buffer of its own.
    const now = cq.waiting.length === 0 && (cq.tail + 1) % cq.size !== cq.head;
    const cqe = now ? this.#cqe : new Uint8Array(CQE_SIZE);
    wr32(cqe, 0, done.dw0 ?? 0);
    wr16(cqe, 8, sq.head);
    wr16(cqe, 10, sq.id);
    wr16(cqe, 12, cid);
    wr16(cqe, 14, done.status << 1);
    if (now) {
      this.#post(cq, cqe);
      if (cq.ien) this.#interrupt(cq.vector);
      return;
    }
    cq.waiting.push(cqe);
    this.#postWaiting(cq);
  }

  #postWaiting(cq: Cq): void {
    let posted = false;
    while (cq.waiting.length && (cq.tail + 1) % cq.size !== cq.head) {
      this.#post(cq, cq.waiting.shift()!);
      posted = true;
    }
    if (posted && cq.ien) this.#interrupt(cq.vector);
    if (cq.waiting.length && cq.id && this.#dbbuf) void this.#refreshHead(cq, this.#dbbuf, this.#epoch);
  }

  /** `cqe` at the CQ's tail, with its phase tag (CQ has room). */
  #post(cq: Cq, cqe: Uint8Array): void {
    cqe[14] = (cqe[14]! & 0xfe) | cq.phase;
    this.host.dmaWrite(cq.base + BigInt(cq.tail * CQE_SIZE), cqe);
    cq.tail++;
    if (cq.tail === cq.size) {
      cq.tail = 0;
      cq.phase ^= 1;
    }
  }

  /**
   * A shadowed CQ looks full: its driver rings the head doorbell only when told to (the event
   * index), so the head we know may be old. Reads the shadow head; if the driver has not moved,
   * sets the event index to that head (its next move rings) and reads once more, since it may
   * have moved before seeing the new index (the driver writes the shadow, then reads the index;
   * we write the index, then read the shadow: one of us sees the other).
   */
  async #refreshHead(cq: Cq, db: DoorbellBuffer, epoch: number): Promise<void> {
    if (cq.refreshing) return;
    cq.refreshing = true;
    const slot = BigInt(doorbellAt(cq.id, true));
    const current = () => epoch === this.#epoch && this.#cqs.get(cq.id) === cq;
    try {
      for (let attempt = 0; attempt < 2; attempt++) {
        const head = rd32(await this.host.dmaRead(db.dbs + slot, 4), 0);
        if (!current()) return;
        if (head >= cq.size) {
          this.trace('nvme.dbbuf.bad-cq-head', { queue: cq.id, value: head });
          return; // a real head doorbell may still come
        }
        if (head !== cq.head) {
          cq.head = head;
          this.#postWaiting(cq);
          return;
        }
        if (attempt === 0) this.host.dmaWrite(db.eis + slot, leBytes(cq.head, 4));
      }
    } catch (e) {
      if (!(e instanceof DmaError)) throw e;
      this.trace('nvme.dbbuf.unreadable', { queue: cq.id, iova: `0x${e.iova.toString(16)}` });
      this.#fatal(epoch);
    } finally {
      cq.refreshing = false;
    }
  }

  /** One interrupt per vector per tick, however many completions it covers: at the end of the
   *  doorbell write being handled, else in a microtask. */
  #interrupt(vector: number): void {
    if (!this.#irqPending.includes(vector)) this.#irqPending.push(vector);
    this.#raiseSoon();
  }

  /** SQ `sq` took a tail doorbell or completed a command: one round per tick, after the tick's
   *  interrupts; it tells the host the tail taken, and the host rings what the driver submitted
   *  without ringing (docs/PUSH.md "Quiet submission queues"). */
  #round(sq: Sq): void {
    if (!sq.rounds || this.#roundsPending.includes(sq)) return;
    this.#roundsPending.push(sq);
    this.#raiseSoon();
  }

  #raiseSoon(): void {
    if (this.#irqScheduled || this.#inDoorbell) return;
    this.#irqScheduled = true;
    queueMicrotask(() => {
      this.#irqScheduled = false;
      this.#raisePending();
    });
  }

  #raisePending(): void {
    // Emptied by pop(), which keeps the arrays' room: setting length is a runtime call, and an
    // array emptied that way or by shift() gets new room at its next push (once per I/O).
    const vectors = this.#irqPending;
    for (let i = 0; i < vectors.length; i++) this.host.raiseMsix(vectors[i]!);
    while (vectors.length > 0) vectors.pop();
    const sqs = this.#roundsPending;
    for (let i = 0; i < sqs.length; i++) {
      const sq = sqs[i]!;
      // A queue deleted or reset meanwhile has no rule to end a round of.
      if (this.#sqs.get(sq.id) !== sq || !sq.rounds) continue;
      this.host.virtqRound!({
        rule: sq.id,
        vector: undefined,
        oldUsed: 0,
        newUsed: 0,
        eventIdx: false,
        kick: sq.tail,
      });
    }
    while (sqs.length > 0) sqs.pop();
  }

  // ---- data transfer ----

  /** The segments of command `sqe`'s `len` bytes of data (its PRP1 and PRP2). Within PRP1's page
   *  (every 4 KiB I/O of a page-aligned buffer) PRP2 is not used, nor read. */
  #dataPrps(sqe: Uint8Array, len: number): Seg[] | Promise<Seg[]> {
    if ((rd32(sqe, 24) & (PAGE - 1)) + len <= PAGE) return [{ iova: rd64(sqe, 24), len }];
    return this.#prps(rd64(sqe, 24), rd64(sqe, 32), len);
  }

  /** The host memory segments of a PRP1/PRP2 transfer of `len` bytes (prp.ts): now, when the PRP
   *  list pages it needs are at hand (pushed with the doorbell), else a promise. */
  #prps(prp1: bigint, prp2: bigint, len: number): Seg[] | Promise<Seg[]> {
    const now = prpsNow(prp1, prp2, len);
    if (now) return now;
    const walk = prpWalk(prp1, prp2, len);
    let step = walk.next();
    while (!step.done) {
      const list = this.host.dmaReadNow?.(step.value.iova, step.value.len);
      if (!list) return this.#prpsWait(walk, step.value);
      step = walk.next(list);
    }
    return step.value;
  }

  async #prpsWait(walk: Generator<ListRead, Seg[], Uint8Array>, read: ListRead): Promise<Seg[]> {
    let step = walk.next(await this.host.dmaRead(read.iova, read.len));
    while (!step.done) step = walk.next(await this.host.dmaRead(step.value.iova, step.value.len));
    return step.value;
  }

  /**
   * Reads, and drops, what the host pushed for a failed read or write (its PRP list pages, and a
   * write's data up to what is pushed): pushed bytes no read takes would stay in the cache, and a
   * later command whose list lands at the same address (a pool page, never unmapped) could be
   * served them when its own push is skipped (docs/PUSH.md). Before the completion: the driver may
   * reuse that memory once it has it. What cannot be walked was not pushed either.
   */
  async #consumePushed(sqe: Uint8Array): Promise<void> {
    const len = ((rd32(sqe, 48) & 0xffff) + 1) * this.lbaSize;
    try {
      const segs = await this.#dataPrps(sqe, len);
      if (sqe[0] === IO.WRITE && len <= PUSH_WRITE_MAX)
        await Promise.all(segs.map((seg) => this.host.dmaRead(seg.iova, seg.len)));
    } catch (e) {
      if (!(e instanceof PrpError || e instanceof DmaError)) throw e;
    }
  }

  /** Writes `data` (the command's own buffer: a backend read's result) to the command's PRPs,
   *  unless the controller was reset meanwhile: now if its PRPs are at hand, else a promise. */
  #toHost(sqe: Uint8Array, data: Uint8Array, epoch: number): undefined | Promise<void> {
    const segs = this.#dataPrps(sqe, data.length);
    if (segs instanceof Promise) return segs.then((s) => this.#place(s, data, epoch, true));
    this.#place(segs, data, epoch, true);
    return undefined;
  }

  /** `data` to the segments; `handOver`: the port may keep it (HostPort.dmaWrite). */
  #place(segs: Seg[], data: Uint8Array, epoch: number, handOver: boolean): void {
    if (epoch !== this.#epoch) throw new Abandoned();
    if (segs.length === 1) {
      this.host.dmaWrite(segs[0]!.iova, data, handOver);
      return;
    }
    let at = 0;
    for (const s of segs) {
      this.host.dmaWrite(s.iova, data.subarray(at, at + s.len), handOver);
      at += s.len;
    }
  }

  /** The command's `len` bytes from host memory, in a buffer of their own (kept across awaits). */
  async #fromHost(sqe: Uint8Array, len: number): Promise<Uint8Array> {
    const segs = await this.#dataPrps(sqe, len);
    const data = this.#gather(segs, len);
    if (data instanceof Promise) return data;
    return this.#inScratch(data) ? data.slice() : data;
  }

  /** The segments' bytes in one buffer: now, in the transfer buffer or a view of what the host
   *  pushed, when they are all at hand; else a promise of a buffer of their own. */
  #gather(segs: Seg[], len: number): Uint8Array | Promise<Uint8Array> {
    const scratch = this.#scratch(len);
    if (segs.length === 1) {
      const s = segs[0]!;
      return this.host.dmaReadNow?.(s.iova, s.len, scratch) ?? this.host.dmaRead(s.iova, s.len);
    }
    // Each segment into its place in the transfer buffer; once one must be read (and waited for),
    // the bytes leave the transfer buffer for one of their own (another command may use it
    // meanwhile), and the rest go there.
    let waits: Promise<void>[] | undefined;
    let out = scratch;
    let at = 0;
    for (const s of segs) {
      const place = at;
      const region = out.subarray(place, place + s.len);
      const now = this.host.dmaReadNow?.(s.iova, s.len, region);
      if (now) {
        if (now.buffer !== region.buffer || now.byteOffset !== region.byteOffset) out.set(now, place);
      } else {
        if (!waits) {
          waits = [];
          out = scratch.slice();
        }
        const into = out.subarray(place, place + s.len);
        waits.push(
          this.host.dmaRead(s.iova, s.len, into).then((b) => {
            if (b.buffer !== into.buffer || b.byteOffset !== into.byteOffset) into.set(b);
          }),
        );
      }
      at += s.len;
    }
    if (!waits) return out;
    return Promise.all(waits).then(() => out);
  }

  // ---- admin commands ----

  async #admin(sqe: Uint8Array, epoch: number): Promise<Done> {
    const opcode = sqe[0]!;
    const cdw10 = rd32(sqe, 40);
    const cdw11 = rd32(sqe, 44);
    if ((sqe[1]! >>> 6) & 3) return fail(SC.INVALID_FIELD); // SGLs: not offered
    this.stats.otherCommands++;
    switch (opcode) {
      case ADMIN.IDENTIFY:
        return this.#identify(sqe, cdw10 & 0xff, rd32(sqe, 4), epoch);
      case ADMIN.GET_LOG_PAGE:
        return this.#getLogPage(sqe, cdw10, cdw11, epoch);
      case ADMIN.CREATE_CQ:
        return this.#createCq(sqe, cdw10, cdw11);
      case ADMIN.CREATE_SQ:
        return this.#createSq(sqe, cdw10, cdw11);
      case ADMIN.DELETE_SQ:
        return this.#deleteSq(cdw10 & 0xffff);
      case ADMIN.DELETE_CQ:
        return this.#deleteCq(cdw10 & 0xffff);
      case ADMIN.SET_FEATURES:
        return this.#setFeature(cdw10 & 0xff, cdw11);
      case ADMIN.GET_FEATURES:
        return this.#getFeature(cdw10 & 0xff, (cdw10 >>> 8) & 7);
      case ADMIN.ASYNC_EVENT:
        if (this.#aers.length >= AER_LIMIT) return fail(SC.AER_LIMIT);
        this.#aers.push(rd16(sqe, 2));
        return { status: HELD }; // until an event (none is generated yet) or a reset
      case ADMIN.DBBUF:
        return this.#doorbellBuffer(sqe);
      case ADMIN.ABORT:
        return ok(1); // bit 0: not aborted (commands here finish quickly)
      default:
        this.trace('nvme.admin.bad-opcode', { opcode });
        return fail(SC.INVALID_OPCODE);
    }
  }

  #identity(): Identity {
    const { serial, modelName: model, firmware, blocks, lbaSize } = this;
    return { serial, model, firmware, blocks, lbaSize };
  }

  async #identify(sqe: Uint8Array, cns: number, nsid: number, epoch: number): Promise<Done> {
    const b = new Uint8Array(PAGE);
    switch (cns) {
      case CNS.CONTROLLER:
        identifyController(b, this.#identity(), {
          mdts: MDTS,
          aerLimit: AER_LIMIT,
          dbbuf: !!this.host.sqEventIdx,
        });
        break;
      case CNS.NAMESPACE:
        if (nsid !== NSID) return fail(SC.INVALID_NS);
        identifyNamespace(b, this.#identity());
        break;
      case CNS.ACTIVE_NS_LIST:
        if (nsid < NSID) wr32(b, 0, NSID);
        break;
      case CNS.NS_DESCRIPTORS:
        if (nsid !== NSID) return fail(SC.INVALID_NS);
        nsDescriptors(b, this.serial);
        break;
      default:
        this.trace('nvme.identify.bad-cns', { cns });
        return fail(SC.INVALID_FIELD);
    }
    await this.#toHost(sqe, b, epoch);
    return ok();
  }

  async #getLogPage(sqe: Uint8Array, cdw10: number, cdw11: number, epoch: number): Promise<Done> {
    const lid = cdw10 & 0xff;
    const dwords = (((cdw11 & 0xffff) << 16) | (cdw10 >>> 16)) + 1;
    const offset = Number(rd64(sqe, 48));
    const len = dwords * 4;
    if (len > MAX_TRANSFER) return fail(SC.INVALID_FIELD);
    let page: Uint8Array;
    switch (lid) {
      case LOG.ERROR:
        page = new Uint8Array(64 * 64);
        break;
      case LOG.SMART:
        page = smartLog(this.stats, Date.now() - this.#startedAt);
        break;
      case LOG.FW_SLOT:
        page = firmwareSlotLog(this.firmware);
        break;
      default:
        this.trace('nvme.log.bad-lid', { lid });
        return fail(SC.INVALID_LOG_PAGE);
    }
    if (offset % 4 || offset > page.length) return fail(SC.INVALID_FIELD);
    const out = new Uint8Array(len);
    out.set(page.subarray(offset, offset + len));
    await this.#toHost(sqe, out, epoch);
    return ok();
  }

  /** Doorbell Buffer Config: PRP1 the shadow doorbells, PRP2 their event indices. I/O queues use
   *  them from now on; the host keeps each SQ's event index at its doorbell writes (the push rule's
   *  eventIdx), so the driver rings every submission; CQ heads are read from the shadow when a CQ
   *  looks full, and the driver rings them only when its head wraps or we ask. */
  #doorbellBuffer(sqe: Uint8Array): Done {
    if (!this.host.sqEventIdx) {
      this.trace('nvme.admin.bad-opcode', { opcode: ADMIN.DBBUF });
      return fail(SC.INVALID_OPCODE);
    }
    const dbs = rd64(sqe, 24);
    const eis = rd64(sqe, 32);
    if (!dbs || !eis || dbs & BigInt(PAGE - 1) || eis & BigInt(PAGE - 1)) return fail(SC.INVALID_FIELD);
    this.#dbbuf = { dbs, eis };
    for (const cq of this.#cqs.values()) if (cq.id) this.#shadowCq(cq.id);
    for (const sq of this.#sqs.values()) {
      if (!sq.id) continue;
      this.#shadowSq(sq);
      this.#pushSq(sq.id, sq.base, sq.size);
    }
    return ok();
  }

  /** SQ `sq`'s event index at its tail: the driver's next submission rings. */
  #shadowSq(sq: Sq): void {
    this.host.dmaWrite(this.#dbbuf!.eis + BigInt(doorbellAt(sq.id, false)), leBytes(sq.tail, 4));
  }

  #shadowCq(id: number): void {
    this.host.dmaWrite(this.#dbbuf!.eis + BigInt(doorbellAt(id, true)), leBytes(CQ_EVENT_IDLE, 4));
  }

  #createCq(sqe: Uint8Array, cdw10: number, cdw11: number): Done {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const vector = cdw11 >>> 16;
    const base = rd64(sqe, 24);
    if (qid === 0 || qid > this.maxQueues || this.#cqs.has(qid)) return fail(SC.QID_INVALID);
    if (size < 2 || size > MAX_QUEUE_ENTRIES) return fail(SC.QUEUE_SIZE);
    if (!(cdw11 & 1)) return fail(SC.INVALID_FIELD); // only physically contiguous queues (CAP.CQR)
    if (vector > this.maxQueues) return fail(SC.INVALID_VECTOR);
    if (base & BigInt(PAGE - 1) || !base) return fail(SC.INVALID_PRP_OFFSET);
    this.#cqs.set(qid, {
      id: qid,
      base,
      size,
      vector,
      ien: (cdw11 & 2) !== 0,
      head: 0,
      tail: 0,
      phase: 1,
      waiting: [],
      refreshing: false,
    });
    if (this.#dbbuf) this.#shadowCq(qid);
    return ok();
  }

  #createSq(sqe: Uint8Array, cdw10: number, cdw11: number): Done {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const cqid = cdw11 >>> 16;
    const base = rd64(sqe, 24);
    if (cqid === 0 || !this.#cqs.has(cqid)) return fail(SC.CQ_INVALID);
    if (qid === 0 || qid > this.maxQueues || this.#sqs.has(qid)) return fail(SC.QID_INVALID);
    if (size < 2 || size > MAX_QUEUE_ENTRIES) return fail(SC.QUEUE_SIZE);
    if (!(cdw11 & 1)) return fail(SC.INVALID_FIELD);
    if (base & BigInt(PAGE - 1) || !base) return fail(SC.INVALID_PRP_OFFSET);
    this.#sqs.set(qid, { id: qid, base, size, cqid, head: 0, tail: 0, inflight: 0, fetching: false });
    if (this.#dbbuf) this.#shadowSq(this.#sqs.get(qid)!);
    this.#pushSq(qid, base, size);
    return ok();
  }

  #deleteSq(qid: number): Done {
    if (qid === 0 || !this.#sqs.has(qid)) return fail(SC.QID_INVALID);
    this.#sqs.delete(qid); // its running commands complete nowhere
    this.host.setPushRule(qid, undefined);
    return ok();
  }

  #deleteCq(qid: number): Done {
    if (qid === 0 || !this.#cqs.has(qid)) return fail(SC.QID_INVALID);
    for (const sq of this.#sqs.values()) if (sq.cqid === qid) return fail(SC.INVALID_QUEUE_DELETION);
    this.#cqs.delete(qid);
    return ok();
  }

  #setFeature(fid: number, value: number): Done {
    switch (fid) {
      case FEAT.NUM_QUEUES: {
        const nsq = Math.min((value & 0xffff) + 1, this.maxQueues);
        const ncq = Math.min((value >>> 16) + 1, this.maxQueues);
        if ((value & 0xffff) === 0xffff || value >>> 16 === 0xffff) return fail(SC.INVALID_FIELD);
        this.#features.set(fid, ((ncq - 1) << 16) | (nsq - 1));
        return ok(((ncq - 1) << 16) | (nsq - 1));
      }
      case FEAT.VOLATILE_WC:
        this.#features.set(fid, value & 1);
        if (!(value & 1)) void this.#backendCall(undefined, () => this.backend.flush()).catch(() => {});
        return ok();
      case FEAT.ARBITRATION:
      case FEAT.POWER_MGMT:
      case FEAT.TEMP_THRESHOLD:
      case FEAT.ERROR_RECOVERY:
      case FEAT.IRQ_COALESCE:
      case FEAT.WRITE_ATOMIC:
      case FEAT.ASYNC_EVENT:
        if (fid === FEAT.POWER_MGMT && (value & 0x1f) !== 0) return fail(SC.INVALID_FIELD); // one power state
        this.#features.set(fid, value);
        return ok();
      case FEAT.IRQ_CONFIG:
        if ((value & 0xffff) > this.maxQueues) return fail(SC.INVALID_FIELD);
        return ok();
      default:
        this.trace('nvme.feature.unsupported', { fid, set: true });
        return fail(SC.INVALID_FIELD);
    }
  }

  #getFeature(fid: number, sel: number): Done {
    if (sel === 3) return ok(0x4); // capabilities: changeable, not saveable, not per namespace
    if (fid === FEAT.IRQ_CONFIG) return ok(0);
    const v = this.#features.get(fid);
    if (v === undefined) {
      this.trace('nvme.feature.unsupported', { fid, set: false });
      return fail(SC.INVALID_FIELD);
    }
    return ok(v);
  }

  // ---- NVM commands ----

  /** An NVM command: reads and writes through #read and #write (done at once where they can be),
   *  the others asynchronously. */
  #io(sqe: Uint8Array, epoch: number): Done | Promise<Done> {
    const opcode = sqe[0]!;
    if (opcode !== IO.READ && opcode !== IO.WRITE) return this.#ioOther(sqe, epoch);
    if ((sqe[1]! >>> 6) & 3) return fail(SC.INVALID_FIELD); // SGLs: not offered
    if (rd32(sqe, 4) !== NSID) return fail(SC.INVALID_NS);
    const cdw12 = rd32(sqe, 48);
    const nlb = (cdw12 & 0xffff) + 1;
    // SLBA in plain numbers: past 2^53 (high dword past 2^21) it is past any namespace.
    const slbaHigh = rd32(sqe, 44);
    const slba = rd32(sqe, 40) + slbaHigh * 2 ** 32;
    if (slbaHigh >= 1 << 21 || slba + nlb > this.blocks) return fail(SC.LBA_RANGE);
    const offset = slba * this.lbaSize;
    const len = nlb * this.lbaSize;
    if (len > MAX_TRANSFER) return fail(SC.INVALID_FIELD);
    if (opcode === IO.READ) return this.#read(sqe, offset, len, epoch);
    return this.#write(sqe, offset, len, (cdw12 & (1 << 30)) !== 0, epoch);
  }

  /** The transfer buffer (#xfer), `len` bytes of it. */
  #scratch(len: number): Uint8Array {
    this.#xfer ??= new Uint8Array(MAX_TRANSFER);
    // The last view is kept: I/O comes in runs of one size, and a view is a runtime call.
    if (this.#xferView?.length !== len) this.#xferView = this.#xfer.subarray(0, len);
    return this.#xferView;
  }

  #inScratch(data: Uint8Array): boolean {
    return data.buffer === this.#xfer?.buffer;
  }

  #read(sqe: Uint8Array, offset: number, len: number, epoch: number): Done | Promise<Done> {
    if (epoch !== this.#epoch) throw new Abandoned(); // as #backendCall: no new call after a reset
    const data = this.backend.readNow?.(offset, len, this.#scratch(len));
    if (!data) return this.#readWait(sqe, offset, len, epoch);
    const segs = this.#dataPrps(sqe, len);
    // The transfer buffer is copied by the port as it is written; a backend's own buffer is
    // handed over. Data that must wait for its PRP list leaves the transfer buffer first.
    const own = !this.#inScratch(data);
    if (segs instanceof Promise) {
      const kept = own ? data : data.slice();
      return segs.then((s) => {
        this.#place(s, kept, epoch, true);
        return this.#readDone(len);
      });
    }
    this.#place(segs, data, epoch, own);
    return this.#readDone(len);
  }

  async #readWait(sqe: Uint8Array, offset: number, len: number, epoch: number): Promise<Done> {
    const data = await this.#backendCall(epoch, () => this.backend.read(offset, len));
    await this.#toHost(sqe, data, epoch);
    return this.#readDone(len);
  }

  #readDone(len: number): Done {
    this.stats.readCommands++;
    this.stats.readBytes += len;
    return OK;
  }

  #write(sqe: Uint8Array, offset: number, len: number, fua: boolean, epoch: number): Done | Promise<Done> {
    const segs = this.#dataPrps(sqe, len);
    if (segs instanceof Promise) return segs.then((s) => this.#writeFrom(s, offset, len, fua, epoch));
    return this.#writeFrom(segs, offset, len, fua, epoch);
  }

  /** The data from the segments to storage; from the transfer buffer only within this call. */
  #writeFrom(segs: Seg[], offset: number, len: number, fua: boolean, epoch: number): Done | Promise<Done> {
    const data = this.#gather(segs, len);
    if (data instanceof Promise) return data.then((d) => this.#store(offset, d, fua, epoch));
    return this.#store(offset, data, fua, epoch);
  }

  /** A write's data to storage, then a flush if FUA or no volatile write cache. */
  #store(offset: number, data: Uint8Array, fua: boolean, epoch: number): Done | Promise<Done> {
    // Its data may have come after a reset: then it is abandoned here, before the backend.
    if (epoch !== this.#epoch) throw new Abandoned();
    if (!this.backend.writeNow?.(offset, data))
      return this.#storeWait(offset, this.#inScratch(data) ? data.slice() : data, fua, epoch);
    if (fua || this.#features.get(FEAT.VOLATILE_WC) === 0)
      return this.#backendCall(epoch, () => this.backend.flush()).then(() => this.#writeDone(data.length));
    return this.#writeDone(data.length);
  }

  async #storeWait(offset: number, data: Uint8Array, fua: boolean, epoch: number): Promise<Done> {
    await this.#backendCall(epoch, () => this.backend.write(offset, data));
    if (fua || this.#features.get(FEAT.VOLATILE_WC) === 0)
      await this.#backendCall(epoch, () => this.backend.flush());
    return this.#writeDone(data.length);
  }

  #writeDone(len: number): Done {
    this.stats.writeCommands++;
    this.stats.writtenBytes += len;
    return OK;
  }

  /** NVM commands other than Read and Write. */
  async #ioOther(sqe: Uint8Array, epoch: number): Promise<Done> {
    const opcode = sqe[0]!;
    const nsid = rd32(sqe, 4);
    if ((sqe[1]! >>> 6) & 3) return fail(SC.INVALID_FIELD);
    if (opcode === IO.FLUSH) {
      if (nsid !== NSID && nsid !== 0xffffffff) return fail(SC.INVALID_NS);
      this.stats.otherCommands++;
      await this.#backendCall(epoch, () => this.backend.flush());
      return ok();
    }
    if (opcode !== IO.WRITE_ZEROES && opcode !== IO.DSM) {
      this.trace('nvme.io.bad-opcode', { opcode });
      return fail(SC.INVALID_OPCODE);
    }
    if (nsid !== NSID) return fail(SC.INVALID_NS);
    if (opcode === IO.DSM) return this.#dsm(sqe, epoch);
    const slba = rd64(sqe, 40);
    const nlb = (rd32(sqe, 48) & 0xffff) + 1;
    if (slba + BigInt(nlb) > BigInt(this.blocks)) return fail(SC.LBA_RANGE);
    this.stats.otherCommands++;
    await this.#backendCall(epoch, () =>
      this.backend.writeZeroes(Number(slba) * this.lbaSize, nlb * this.lbaSize),
    );
    return ok();
  }

  async #dsm(sqe: Uint8Array, epoch: number): Promise<Done> {
    const ranges = (rd32(sqe, 40) & 0xff) + 1;
    const attrs = rd32(sqe, 44);
    this.stats.otherCommands++;
    const list = await this.#fromHost(sqe, ranges * 16);
    if (!(attrs & 4)) return ok(); // only deallocate does anything here
    for (let i = 0; i < ranges; i++) {
      const nlb = rd32(list, i * 16 + 4);
      const slba = rd64(list, i * 16 + 8);
      if (nlb === 0) continue;
      if (slba + BigInt(nlb) > BigInt(this.blocks)) return fail(SC.LBA_RANGE);
      await this.#backendCall(epoch, () =>
        this.backend.discard(Number(slba) * this.lbaSize, nlb * this.lbaSize),
      );
    }
    return ok();
  }
}

/** BAR 0's registers, with a doorbell pair per queue (admin and `queues` I/O queues). */
function nvmeRegisters(queues: number): RegisterTable<NvmeController> {
  const cap =
    BigInt(MAX_QUEUE_ENTRIES - 1) | // MQES
    (1n << 16n) | // CQR: queues must be physically contiguous
    (20n << 24n) | // TO: 10 s to become ready, in 500 ms units
    (1n << 37n); // CSS: the NVM command set
  const regs: Register<NvmeController>[] = [
    { name: 'CAP', at: REG.CAP, size: 8, access: 'ro', reset: cap },
    { name: 'VS', at: REG.VS, size: 4, access: 'ro', reset: 0x00010400 },
    { name: 'INTMS', at: REG.INTMS, size: 4, access: 'rw' }, // MSI-X: masks are in the table
    { name: 'INTMC', at: REG.INTMC, size: 4, access: 'rw' },
    {
      name: 'CC',
      at: REG.CC,
      size: 4,
      access: 'rw',
      mask: 0x00fffff1,
      onWrite: (c, v, old) => c.ccWritten(v, old),
    },
    { name: 'CSTS', at: REG.CSTS, size: 4, access: 'ro' },
    { name: 'NSSR', at: REG.NSSR, size: 4, access: 'ro' },
    { name: 'AQA', at: REG.AQA, size: 4, access: 'rw', mask: 0x0fff0fff },
    { name: 'ASQ', at: REG.ASQ, size: 8, access: 'rw', mask: ~0xfffn & ((1n << 64n) - 1n) },
    { name: 'ACQ', at: REG.ACQ, size: 8, access: 'rw', mask: ~0xfffn & ((1n << 64n) - 1n) },
  ];
  for (let y = 0; y <= queues; y++) {
    for (const cq of [false, true]) {
      regs.push({
        name: `${cq ? 'CQ' : 'SQ'}${y}${cq ? 'HDBL' : 'TDBL'}`,
        at: REG.DOORBELLS + doorbellAt(y, cq),
        size: 4,
        access: 'wo',
        doorbell: true,
        onWrite: (c, v) => c.doorbell(y, cq, v),
      });
    }
  }
  return registers(regs);
}
