// An NVMe 1.4 controller with one namespace, for Linux's unmodified nvme driver and nvme-cli
// (docs/devices.md, "NVMe"). BAR 0: the controller registers, doorbells from 0x1000 (stride 4),
// the MSI-X table and PBA (host-owned). Queues live in host memory and are reached by DMA: a tail
// doorbell makes the controller fetch the new entries in one read, run them concurrently (up to
// MAX_INFLIGHT per queue), and post completions with phase tags, then the queue's vector.
//
// Storage is an injected BlockBackend (a file, a block device, memory). Driver mistakes get the
// status the specification gives and a trace; nothing the driver writes can make the model throw.
//
// This file holds the controller's state, enable, reset and shutdown, the doorbells, running
// commands and posting their completions. The registers are in regs.ts, the queues in queues.ts,
// the admin commands in admin.ts, the NVM commands in io.ts, moving their data in transfer.ts.
import { type CommandFault, DmaError } from '../host-port.js';
import {
  leBytes,
  msixCap,
  PciDevice,
  pciConfig,
  pcieCap,
  pmCap,
  rd16,
  rd32,
  rd64,
  wr16,
  wr32,
} from '../pci/index.js';
import { AdminCommands, type AdminContext } from './admin.js';
import { type BlockBackend, BlockError } from './backend.js';
import { Abandoned, type Done, fail, HELD, NVME_COMMANDS, type NvmeStats } from './command.js';
import { NvmCommands } from './io.js';
import type { Identity } from './pages.js';
import { PrpError } from './prp.js';
import { type Cq, type DoorbellBuffer, doorbellAt, Queues, type Sq } from './queues.js';
import { nvmeRegisters } from './regs.js';
import {
  BAR_SIZE,
  CC,
  CQE_SIZE,
  CSTS,
  FEAT,
  IO,
  MSIX_PBA,
  MSIX_TABLE,
  NVME_CLASS_CODE,
  NVME_DEVICE_ID,
  NVME_VENDOR_ID,
  REG,
  SC,
  SQE_SIZE,
} from './spec.js';
import { Transfer } from './transfer.js';

export { MAX_QUEUE_ENTRIES } from './queues.js';
export { MDTS } from './transfer.js';

/** Commands of one submission queue running at once. */
export const MAX_INFLIGHT = 64;

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

export class NvmeController extends PciDevice<NvmeController> {
  readonly backend: BlockBackend;
  readonly lbaSize: number;
  readonly blocks: number;
  readonly serial: string;
  readonly modelName: string;
  readonly firmware: string;
  readonly maxQueues: number;
  readonly #queues: Queues;
  readonly #admin: AdminCommands;
  readonly #nvm: NvmCommands;
  readonly #features = new Map<number, number>();
  readonly #aers: number[] = [];
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
  #irqScheduled = false;
  /** Doorbell writes being handled (doorbell()): interrupts wait for the write's end. */
  #inDoorbell = 0;
  readonly #roundsPending: Sq[] = [];
  /** Entry buffers no command holds (SQE_POOL). */
  readonly #sqeFree: Uint8Array[] = [];
  /** Moves commands' data between host memory and the controller (transfer.ts). */
  readonly #data = new Transfer(
    () => this.host,
    (epoch) => epoch === this.#epoch,
  );
  /** A completion posted at once is put together here (HostPort.dmaWrite copies it). */
  readonly #cqe = new Uint8Array(CQE_SIZE);
  #startedAt = Date.now();
  readonly stats: NvmeStats = {
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
    this.#queues = new Queues(() => this.host, lbaSize, queues);
    const context = this.#context();
    this.#admin = new AdminCommands(context);
    this.#nvm = new NvmCommands(context);
  }

  /** What the command sets see of this controller (command.ts, admin.ts). */
  #context(): AdminContext {
    return {
      host: () => this.host,
      trace: (event, fields) => this.trace(event, fields),
      current: (epoch) => epoch === this.#epoch,
      backendCall: (epoch, call) => this.#backendCall(epoch, call),
      backend: this.backend,
      lbaSize: this.lbaSize,
      blocks: this.blocks,
      stats: this.stats,
      features: this.#features,
      data: this.#data,
      maxQueues: this.maxQueues,
      queues: this.#queues,
      aers: this.#aers,
      identity: () => this.#identity(),
      uptimeMs: () => Date.now() - this.#startedAt,
    };
  }

  #identity(): Identity {
    const { serial, modelName: model, firmware, blocks, lbaSize } = this;
    return { serial, model, firmware, blocks, lbaSize };
  }

  /** What `pcinet inject fail|delay` may name (opcode=read); the others go by number. */
  readonly commands = NVME_COMMANDS;

  override counters(): Record<string, number> {
    return { ...this.stats, ioQueues: Math.max(0, this.#queues.sqs.size - 1) };
  }

  get #regs() {
    return this.bar(0);
  }

  protected override onReset(): void {
    this.#resetController();
  }

  override detach(): void {
    // The host is gone without a shutdown notification: keep what was written.
    if (this.#queues.sqs.size) this.stats.unsafeShutdowns++;
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
    this.#queues.clear();
    this.#aers.length = 0;
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
    this.#queues.admin(asq, asqs, acq, acqs);
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
      const q = this.#queues.cqs.get(y);
      if (!q || value >= q.size) {
        this.trace('nvme.doorbell.bad-cq', { queue: y, value });
        return;
      }
      q.head = value;
      this.#postWaiting(q);
      return;
    }
    const q = this.#queues.sqs.get(y);
    // Answered even when refused: the host counts on a round for every tail doorbell.
    if (q) this.#round(q);
    if (!q || value >= q.size) {
      this.trace('nvme.doorbell.bad-sq', { queue: y, value });
      return;
    }
    q.tail = value;
    this.#fetch(q, this.#epoch);
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
        this.#queues.sqs.get(sq.id) === sq
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
    if (epoch !== this.#epoch || this.#queues.sqs.get(sq.id) !== sq) {
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
        const r = sq.id === 0 ? this.#admin.run(sqe, epoch) : this.#nvm.run(sqe, epoch);
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
    if (consume) await this.#data.consumePushed(cmd.sqe, this.lbaSize);
    if (cmd.injected?.hold) await cmd.injected.hold;
    this.#end(cmd, done);
  }

  #end(cmd: Running, done: Done): void {
    const { sq, epoch } = cmd;
    // Nothing reads the entry from here on (a command abandoned by a reset drops its buffer).
    if (cmd.pooled && this.#sqeFree.length < SQE_POOL) this.#sqeFree.push(cmd.sqe);
    this.stats.busyMs += Date.now() - cmd.started;
    sq.inflight--;
    if (epoch !== this.#epoch || this.#queues.sqs.get(sq.id) !== sq) return;
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
    const cq = this.#queues.cqs.get(sq.cqid);
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
    if (cq.waiting.length && cq.id && this.#queues.dbbuf)
      void this.#refreshHead(cq, this.#queues.dbbuf, this.#epoch);
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
    const current = () => epoch === this.#epoch && this.#queues.cqs.get(cq.id) === cq;
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
      if (this.#queues.sqs.get(sq.id) !== sq || !sq.rounds) continue;
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
}
