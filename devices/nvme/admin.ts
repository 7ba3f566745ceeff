// The admin command set (NVMe 1.4 §5): Identify and Get Log Page (their pages built by pages.ts),
// Set and Get Features, Asynchronous Event Request, Abort, Doorbell Buffer Config, and the queue
// commands, which the controller's Queues (queues.ts) carry out.
import { rd16, rd32, rd64, wr32 } from '../pci/index.js';
import { type CommandContext, type Done, fail, HELD, NSID, ok } from './command.js';
import {
  firmwareSlotLog,
  type Identity,
  identifyController,
  identifyNamespace,
  nsDescriptors,
  smartLog,
} from './pages.js';
import type { Queues } from './queues.js';
import { ADMIN, CNS, FEAT, LOG, PAGE, SC } from './spec.js';
import { MAX_TRANSFER, MDTS } from './transfer.js';

/** Async event requests held at once (AERL + 1). */
const AER_LIMIT = 4;

/** What the admin commands see of their controller besides what every command does. */
export interface AdminContext extends CommandContext {
  /** I/O queue pairs offered. */
  readonly maxQueues: number;
  readonly queues: Queues;
  /** The command ids of the async event requests held; emptied by a reset. */
  readonly aers: number[];
  identity(): Identity;
  /** Milliseconds since the controller was last enabled. */
  uptimeMs(): number;
}

/** The admin commands of one controller. */
export class AdminCommands {
  readonly #c: AdminContext;

  constructor(c: AdminContext) {
    this.#c = c;
  }

  /** An admin command: the queue commands through Queues, the others here. */
  async run(sqe: Uint8Array, epoch: number): Promise<Done> {
    const opcode = sqe[0]!;
    const cdw10 = rd32(sqe, 40);
    const cdw11 = rd32(sqe, 44);
    if ((sqe[1]! >>> 6) & 3) return fail(SC.INVALID_FIELD); // SGLs: not offered
    this.#c.stats.otherCommands++;
    switch (opcode) {
      case ADMIN.IDENTIFY:
        return this.#identify(sqe, cdw10 & 0xff, rd32(sqe, 4), epoch);
      case ADMIN.GET_LOG_PAGE:
        return this.#getLogPage(sqe, cdw10, cdw11, epoch);
      case ADMIN.CREATE_CQ:
        return this.#c.queues.createCq(sqe, cdw10, cdw11);
      case ADMIN.CREATE_SQ:
        return this.#c.queues.createSq(sqe, cdw10, cdw11);
      case ADMIN.DELETE_SQ:
        return this.#c.queues.deleteSq(cdw10 & 0xffff);
      case ADMIN.DELETE_CQ:
        return this.#c.queues.deleteCq(cdw10 & 0xffff);
      case ADMIN.SET_FEATURES:
        return this.#setFeature(cdw10 & 0xff, cdw11);
      case ADMIN.GET_FEATURES:
        return this.#getFeature(cdw10 & 0xff, (cdw10 >>> 8) & 7);
      case ADMIN.ASYNC_EVENT:
        if (this.#c.aers.length >= AER_LIMIT) return fail(SC.AER_LIMIT);
        this.#c.aers.push(rd16(sqe, 2));
        return { status: HELD }; // until an event (none is generated yet) or a reset
      case ADMIN.DBBUF:
        return this.#doorbellBuffer(sqe);
      case ADMIN.ABORT:
        return ok(1); // bit 0: not aborted (commands here finish quickly)
      default:
        this.#c.trace('nvme.admin.bad-opcode', { opcode });
        return fail(SC.INVALID_OPCODE);
    }
  }

  async #identify(sqe: Uint8Array, cns: number, nsid: number, epoch: number): Promise<Done> {
    const b = new Uint8Array(PAGE);
    switch (cns) {
      case CNS.CONTROLLER:
        identifyController(b, this.#c.identity(), {
          mdts: MDTS,
          aerLimit: AER_LIMIT,
          dbbuf: !!this.#c.host().sqEventIdx,
        });
        break;
      case CNS.NAMESPACE:
        if (nsid !== NSID) return fail(SC.INVALID_NS);
        identifyNamespace(b, this.#c.identity());
        break;
      case CNS.ACTIVE_NS_LIST:
        if (nsid < NSID) wr32(b, 0, NSID);
        break;
      case CNS.NS_DESCRIPTORS:
        if (nsid !== NSID) return fail(SC.INVALID_NS);
        nsDescriptors(b, this.#c.identity().serial);
        break;
      default:
        this.#c.trace('nvme.identify.bad-cns', { cns });
        return fail(SC.INVALID_FIELD);
    }
    await this.#c.data.toHost(sqe, b, epoch);
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
        page = smartLog(this.#c.stats, this.#c.uptimeMs());
        break;
      case LOG.FW_SLOT:
        page = firmwareSlotLog(this.#c.identity().firmware);
        break;
      default:
        this.#c.trace('nvme.log.bad-lid', { lid });
        return fail(SC.INVALID_LOG_PAGE);
    }
    if (offset % 4 || offset > page.length) return fail(SC.INVALID_FIELD);
    const out = new Uint8Array(len);
    out.set(page.subarray(offset, offset + len));
    await this.#c.data.toHost(sqe, out, epoch);
    return ok();
  }

  /** Doorbell Buffer Config: PRP1 the shadow doorbells, PRP2 their event indices. I/O queues use
   *  them from now on; the host keeps each SQ's event index at its doorbell writes (the push rule's
   *  eventIdx), so the driver rings every submission; CQ heads are read from the shadow when a CQ
   *  looks full, and the driver rings them only when its head wraps or we ask. */
  #doorbellBuffer(sqe: Uint8Array): Done {
    if (!this.#c.host().sqEventIdx) {
      this.#c.trace('nvme.admin.bad-opcode', { opcode: ADMIN.DBBUF });
      return fail(SC.INVALID_OPCODE);
    }
    const dbs = rd64(sqe, 24);
    const eis = rd64(sqe, 32);
    if (!dbs || !eis || dbs & BigInt(PAGE - 1) || eis & BigInt(PAGE - 1)) return fail(SC.INVALID_FIELD);
    this.#c.queues.useDoorbellBuffer({ dbs, eis });
    return ok();
  }

  #setFeature(fid: number, value: number): Done {
    switch (fid) {
      case FEAT.NUM_QUEUES: {
        const nsq = Math.min((value & 0xffff) + 1, this.#c.maxQueues);
        const ncq = Math.min((value >>> 16) + 1, this.#c.maxQueues);
        if ((value & 0xffff) === 0xffff || value >>> 16 === 0xffff) return fail(SC.INVALID_FIELD);
        this.#c.features.set(fid, ((ncq - 1) << 16) | (nsq - 1));
        return ok(((ncq - 1) << 16) | (nsq - 1));
      }
      case FEAT.VOLATILE_WC:
        this.#c.features.set(fid, value & 1);
        if (!(value & 1)) void this.#c.backendCall(undefined, () => this.#c.backend.flush()).catch(() => {});
        return ok();
      case FEAT.ARBITRATION:
      case FEAT.POWER_MGMT:
      case FEAT.TEMP_THRESHOLD:
      case FEAT.ERROR_RECOVERY:
      case FEAT.IRQ_COALESCE:
      case FEAT.WRITE_ATOMIC:
      case FEAT.ASYNC_EVENT:
        if (fid === FEAT.POWER_MGMT && (value & 0x1f) !== 0) return fail(SC.INVALID_FIELD); // one power state
        this.#c.features.set(fid, value);
        return ok();
      case FEAT.IRQ_CONFIG:
        if ((value & 0xffff) > this.#c.maxQueues) return fail(SC.INVALID_FIELD);
        return ok();
      default:
        this.#c.trace('nvme.feature.unsupported', { fid, set: true });
        return fail(SC.INVALID_FIELD);
    }
  }

  #getFeature(fid: number, sel: number): Done {
    if (sel === 3) return ok(0x4); // capabilities: changeable, not saveable, not per namespace
    if (fid === FEAT.IRQ_CONFIG) return ok(0);
    const v = this.#c.features.get(fid);
    if (v === undefined) {
      this.#c.trace('nvme.feature.unsupported', { fid, set: false });
      return fail(SC.INVALID_FIELD);
    }
    return ok(v);
  }
}
