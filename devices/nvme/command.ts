// What a command of the NVMe controller is between its fetch and its completion, shared by the
// admin command set (admin.ts) and the NVM command set (io.ts): its outcome (a status code, never
// an exception: NVMe 1.4 §4.6.1), the commands fault injection may name, and what the command sets
// see of their controller.
import type { HostPort } from '../host-port.js';
import type { BlockBackend } from './backend.js';
import type { HealthCounters } from './pages.js';
import { ADMIN, DNR, IO, SC } from './spec.js';
import type { Transfer } from './transfer.js';

/** The one namespace's id. */
export const NSID = 1;

/** A command's outcome: status (SCT << 8 | SC, maybe DNR), and dword 0. */
export interface Done {
  status: number;
  dw0?: number;
}

/** Success without a dword 0 (every read and write): one object, since nobody changes a Done. */
export const OK: Done = Object.freeze({ status: SC.SUCCESS, dw0: 0 });
export const ok = (dw0 = 0): Done => (dw0 === 0 ? OK : { status: SC.SUCCESS, dw0 });
/** Not completed now: an async event request waits for an event. */
export const HELD = -1;
export const fail = (status: number, dnr = true): Done => ({ status: status | (dnr ? DNR : 0) });

/** Commands by name for fault injection (DeviceModel.commands). */
export const NVME_COMMANDS = {
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
export class Abandoned extends Error {}

/** The controller's counters: the SMART / health log's, and the rest `pcinet status` shows. */
export interface NvmeStats extends HealthCounters {
  otherCommands: number;
  shutdowns: number;
}

/** What the command sets see of their controller. It hands them this, not itself: its queues,
 *  registers and resets stay its own. */
export interface CommandContext {
  /** The host now (another one, or none, after attach and detach). */
  host(): HostPort;
  trace(event: string, fields?: Record<string, unknown>): void;
  /** No reset since `epoch`: work of that epoch still counts. */
  current(epoch: number): boolean;
  /** Runs a backend call for a command of `epoch` (undefined: the controller's own); throws
   *  Abandoned once the controller was reset, and a reset waits for the calls that did start. */
  backendCall<T>(epoch: number | undefined, call: () => Promise<T>): Promise<T>;
  readonly backend: BlockBackend;
  readonly lbaSize: number;
  readonly blocks: number;
  readonly stats: NvmeStats;
  /** Feature values by identifier (FEAT), as Set Features left them. */
  readonly features: Map<number, number>;
  /** Moves commands' data between host memory and the controller. */
  readonly data: Transfer;
}
