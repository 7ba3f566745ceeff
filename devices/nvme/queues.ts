// The NVMe controller's queues as it keeps them (NVMe 1.4 §4.1): submission and completion queues
// in host memory with the positions it knows, the admin commands that create and delete I/O queues
// (§5.3 to §5.6), the push rule each SQ gets (docs/PUSH.md), and the shadow doorbells and event
// indices of Doorbell Buffer Config (§5.8). Running commands and posting completions are the
// controller's.
import type { HostPort } from '../host-port.js';
import { leBytes, rd64 } from '../pci/index.js';
import { type Done, fail, ok } from './command.js';
import { PAGE, REG, SC } from './spec.js';
import { PUSH_WRITE_MAX } from './transfer.js';

/** Entries per queue (CAP.MQES is this minus one). */
export const MAX_QUEUE_ENTRIES = 1024;

export interface Sq {
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

export interface Cq {
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
  /** A read of its shadow head doorbell is under way (the controller's #refreshHead). */
  refreshing: boolean;
}

/** Where Doorbell Buffer Config put the shadow doorbells and their event indices: one 4-byte slot
 *  per doorbell at each, in doorbell order (stride 4). */
export interface DoorbellBuffer {
  dbs: bigint;
  eis: bigint;
}

/** A CQ's event index while its driver need not ring: it rings only when its head wraps. */
const CQ_EVENT_IDLE = 0xffff;

/** Byte offset of queue y's doorbell (SQ tail, or CQ head) among the doorbells: in the register
 *  file from REG.DOORBELLS, and in the shadow doorbell and event index buffers alike (stride 4). */
export const doorbellAt = (y: number, cq: boolean) => (2 * y + (cq ? 1 : 0)) * 4;

export class Queues {
  /** By queue id; 0 the admin queues. */
  readonly sqs = new Map<number, Sq>();
  readonly cqs = new Map<number, Cq>();
  /** Doorbell Buffer Config in force (I/O queues only, as Linux uses it); cleared by a reset. */
  dbbuf: DoorbellBuffer | undefined;
  readonly #port: () => HostPort;
  readonly #lbaSize: number;
  readonly #maxQueues: number;

  /** `host`: the controller's host now; `maxQueues`: I/O queue pairs it offers. */
  constructor(host: () => HostPort, lbaSize: number, maxQueues: number) {
    this.#port = host;
    this.#lbaSize = lbaSize;
    this.#maxQueues = maxQueues;
  }

  get #host(): HostPort {
    return this.#port();
  }

  /** A controller reset: no queue, push rule or doorbell buffer is left. */
  clear(): void {
    for (const id of this.sqs.keys()) this.#host.setPushRule(id, undefined);
    this.sqs.clear();
    this.cqs.clear();
    this.dbbuf = undefined;
  }

  /** The admin queues of an enable, from ASQ/ACQ and the sizes in AQA. */
  admin(asq: bigint, asqs: number, acq: bigint, acqs: number): void {
    this.cqs.set(0, {
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
    this.sqs.set(0, {
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
  }

  /** Doorbell Buffer Config: I/O queues use the shadow doorbells at `db.dbs` and the event indices
   *  at `db.eis` from now on. */
  useDoorbellBuffer(db: DoorbellBuffer): void {
    this.dbbuf = db;
    for (const cq of this.cqs.values()) if (cq.id) this.#shadowCq(cq.id);
    for (const sq of this.sqs.values()) {
      if (!sq.id) continue;
      this.#shadowSq(sq);
      this.#pushSq(sq.id, sq.base, sq.size);
    }
  }

  /** SQ `sq`'s event index at its tail: the driver's next submission rings. */
  #shadowSq(sq: Sq): void {
    this.#host.dmaWrite(this.dbbuf!.eis + BigInt(doorbellAt(sq.id, false)), leBytes(sq.tail, 4));
  }

  /** CQ `id`'s event index idle: its driver rings only when its head wraps. */
  #shadowCq(id: number): void {
    this.#host.dmaWrite(this.dbbuf!.eis + BigInt(doorbellAt(id, true)), leBytes(CQ_EVENT_IDLE, 4));
  }

  /** Create I/O Completion Queue (§5.3). */
  createCq(sqe: Uint8Array, cdw10: number, cdw11: number): Done {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const vector = cdw11 >>> 16;
    const base = rd64(sqe, 24);
    if (qid === 0 || qid > this.#maxQueues || this.cqs.has(qid)) return fail(SC.QID_INVALID);
    if (size < 2 || size > MAX_QUEUE_ENTRIES) return fail(SC.QUEUE_SIZE);
    if (!(cdw11 & 1)) return fail(SC.INVALID_FIELD); // only physically contiguous queues (CAP.CQR)
    if (vector > this.#maxQueues) return fail(SC.INVALID_VECTOR);
    if (base & BigInt(PAGE - 1) || !base) return fail(SC.INVALID_PRP_OFFSET);
    this.cqs.set(qid, {
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
    if (this.dbbuf) this.#shadowCq(qid);
    return ok();
  }

  /** Create I/O Submission Queue (§5.4). */
  createSq(sqe: Uint8Array, cdw10: number, cdw11: number): Done {
    const qid = cdw10 & 0xffff;
    const size = (cdw10 >>> 16) + 1;
    const cqid = cdw11 >>> 16;
    const base = rd64(sqe, 24);
    if (cqid === 0 || !this.cqs.has(cqid)) return fail(SC.CQ_INVALID);
    if (qid === 0 || qid > this.#maxQueues || this.sqs.has(qid)) return fail(SC.QID_INVALID);
    if (size < 2 || size > MAX_QUEUE_ENTRIES) return fail(SC.QUEUE_SIZE);
    if (!(cdw11 & 1)) return fail(SC.INVALID_FIELD);
    if (base & BigInt(PAGE - 1) || !base) return fail(SC.INVALID_PRP_OFFSET);
    this.sqs.set(qid, { id: qid, base, size, cqid, head: 0, tail: 0, inflight: 0, fetching: false });
    if (this.dbbuf) this.#shadowSq(this.sqs.get(qid)!);
    this.#pushSq(qid, base, size);
    return ok();
  }

  /** Delete I/O Submission Queue (§5.6). */
  deleteSq(qid: number): Done {
    if (qid === 0 || !this.sqs.has(qid)) return fail(SC.QID_INVALID);
    this.sqs.delete(qid); // its running commands complete nowhere
    this.#host.setPushRule(qid, undefined);
    return ok();
  }

  /** Delete I/O Completion Queue (§5.5). */
  deleteCq(qid: number): Done {
    if (qid === 0 || !this.cqs.has(qid)) return fail(SC.QID_INVALID);
    for (const sq of this.sqs.values()) if (sq.cqid === qid) return fail(SC.INVALID_QUEUE_DELETION);
    this.cqs.delete(qid);
    return ok();
  }

  /** Lets the host push SQ `id`'s new entries with its tail doorbell (docs/PUSH.md), and for I/O
   *  queues the data of writes up to PUSH_WRITE_MAX: the command fetch and the data read then cost
   *  no round trip. Rule id = queue id. With shadow doorbells and a host that ends rounds, the rule
   *  names the shadow tail too, and the SQ may go quiet (docs/PUSH.md "Quiet submission queues"):
   *  then every tail doorbell and every completion of the SQ ends in a round (the controller's #round). */
  #pushSq(id: number, base: bigint, entries: number): void {
    const shadow =
      id && this.dbbuf && this.#host.virtqRound ? this.dbbuf.dbs + BigInt(doorbellAt(id, false)) : 0n;
    const sq = this.sqs.get(id);
    if (sq) sq.rounds = shadow !== 0n;
    this.#host.setPushRule(id, {
      kind: 'nvme-sq',
      bar: 0,
      doorbell: REG.DOORBELLS + doorbellAt(id, false),
      base,
      entries,
      dataMax: id === 0 ? 0 : PUSH_WRITE_MAX,
      lbaShift: Math.log2(this.#lbaSize),
      ...(id && this.dbbuf ? { eventIdx: this.dbbuf.eis + BigInt(doorbellAt(id, false)) } : {}),
      ...(shadow ? { shadow } : {}),
    });
  }
}
