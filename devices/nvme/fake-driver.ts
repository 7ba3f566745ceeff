// An NVMe driver for the controller's unit tests, doing what Linux's nvme driver does: registers
// through FakeBus (the host's shadow), queues and data in FakeHost memory, storage in a
// MemoryBackend unless a test gives one that fails on purpose. Each method is one step a driver
// takes; the tests are controller-admin.test.ts, controller-io.test.ts and controller-dbbuf.test.ts.
import { beforeEach, describe, expect } from 'vitest';
import { MemoryBackend } from '../../endpoint/backends/block.js';
import { FakeBus, FakeHost, settle } from '../pci/fake-host.js';
import { rd16, rd32, wr16, wr32, wr64 } from '../pci/le.js';
import type { BlockBackend } from './backend.js';
import { NvmeController } from './controller.js';
import { ADMIN, CC, REG } from './spec.js';

const MEM = 8 << 20;
export const BASE = 0x1000_0000n;
export const ASQ = BASE;
export const ACQ = BASE + 0x1000n;
export const IOSQ = BASE + 0x2000n;
export const IOCQ = BASE + 0x3000n;
export const SCRATCH = BASE + 0x10000n; // identify pages, PRP lists
export const DATA = BASE + 0x100000n;
export const DBS = BASE + 0x8000n; // shadow doorbells (Doorbell Buffer Config)
export const EIS = BASE + 0x9000n; // their event indices
export const QSIZE = 16;

/** Linux's nvme_dbbuf_need_event: whether moving a doorbell from `old` to `next` passes `event`. */
const needEvent = (event: number, next: number, old: number) =>
  ((next - event - 1) & 0xffff) < ((next - old) & 0xffff);

export interface Cqe {
  dw0: number;
  sqhd: number;
  sqid: number;
  cid: number;
  status: number;
}

export class Driver {
  readonly host: FakeHost;
  readonly bus: FakeBus;
  readonly dev: NvmeController;
  readonly tails = new Map<number, number>();
  readonly heads = new Map<number, number>();
  readonly phases = new Map<number, number>();
  /** Shadow doorbells in use for I/O queues (after Doorbell Buffer Config), as Linux uses them. */
  shadow = false;
  /** Doorbell registers written, SQ tail and CQ head. */
  readonly rung = { sq: 0, cq: 0 };
  #cid = 0;

  constructor(
    backend: BlockBackend = new MemoryBackend(4 << 20),
    o: { lbaSize?: number; sqEventIdx?: boolean } = {},
  ) {
    this.host = new FakeHost({
      memory: MEM,
      base: BASE,
      sqEventIdx: o.sqEventIdx,
      atHand: hostMemory.atHand,
    });
    this.dev = new NvmeController({
      backend,
      lbaSize: o.lbaSize,
      serial: 'SN-TEST',
      model: 'Model X',
      firmware: 'FW1',
      queues: 4,
    });
    this.bus = new FakeBus(this.dev, this.host);
  }

  mem(iova: bigint, len: number): Uint8Array {
    const off = Number(iova - BASE);
    return this.host.memory.subarray(off, off + len);
  }

  csts(): number {
    return this.bus.read32(0, REG.CSTS);
  }

  async enable(): Promise<void> {
    this.bus.write32(0, REG.AQA, ((QSIZE - 1) << 16) | (QSIZE - 1));
    this.bus.write64(0, REG.ASQ, ASQ);
    this.bus.write64(0, REG.ACQ, ACQ);
    this.bus.write32(0, REG.CC, CC.EN | (6 << 16) | (4 << 20));
    for (const q of [0, 1]) {
      this.tails.set(q, 0);
      this.heads.set(q, 0);
      this.phases.set(q, 1);
    }
    await this.bus.settle();
  }

  /** Builds an SQE. */
  sqe(opcode: number, f: { nsid?: number; prp1?: bigint; prp2?: bigint; cdw?: number[] } = {}): Uint8Array {
    const b = new Uint8Array(64);
    b[0] = opcode;
    wr16(b, 2, ++this.#cid & 0xffff);
    wr32(b, 4, f.nsid ?? 0);
    wr64(b, 24, f.prp1 ?? 0n);
    wr64(b, 32, f.prp2 ?? 0n);
    for (const [i, v] of (f.cdw ?? []).entries()) wr32(b, 40 + 4 * i, v >>> 0);
    return b;
  }

  /** Writes doorbell `db` (2q: SQ q's tail, 2q + 1: CQ q's head) as Linux does: with shadow
   *  doorbells, the shadow first, and the register only if the event index asks for it. */
  ring(db: number, value: number): void {
    if (this.shadow && db >= 2) {
      const slot = this.mem(DBS + BigInt(db * 4), 4);
      const old = rd32(slot, 0);
      wr32(slot, 0, value);
      if (!needEvent(rd32(this.mem(EIS + BigInt(db * 4), 4), 0) & 0xffff, value, old)) return;
    }
    this.rung[db & 1 ? 'cq' : 'sq']++;
    this.bus.write32(0, REG.DOORBELLS + 4 * db, value);
  }

  /** Puts `sqe` on queue q and rings. */
  post(q: number, sqe: Uint8Array): void {
    const sqBase = q === 0 ? ASQ : IOSQ;
    const tail = this.tails.get(q)!;
    this.mem(sqBase + BigInt(tail * 64), 64).set(sqe);
    this.tails.set(q, (tail + 1) % QSIZE);
    this.ring(2 * q, this.tails.get(q)!);
  }

  /** Submits on queue q (0 admin, 1 I/O), rings the doorbell, waits, reaps one completion. */
  async submit(q: number, sqe: Uint8Array): Promise<Cqe> {
    this.post(q, sqe);
    for (let i = 0; i < 20; i++) await settle();
    const cqe = this.reap(q);
    if (!cqe) throw new Error(`no completion on queue ${q}`);
    return cqe;
  }

  reap(q: number): Cqe | undefined {
    const cqBase = q === 0 ? ACQ : IOCQ;
    const head = this.heads.get(q)!;
    const e = this.mem(cqBase + BigInt(head * 16), 16);
    if ((rd16(e, 14) & 1) !== this.phases.get(q)) return undefined;
    const next = (head + 1) % QSIZE;
    if (next === 0) this.phases.set(q, this.phases.get(q)! ^ 1);
    this.heads.set(q, next);
    this.ring(2 * q + 1, next);
    return {
      dw0: rd32(e, 0),
      sqhd: rd16(e, 8),
      sqid: rd16(e, 10),
      cid: rd16(e, 12),
      status: rd16(e, 14) >>> 1,
    };
  }

  async ioQueues(): Promise<void> {
    expect(
      (
        await this.submit(
          0,
          this.sqe(ADMIN.CREATE_CQ, { prp1: IOCQ, cdw: [((QSIZE - 1) << 16) | 1, (1 << 16) | 3] }),
        )
      ).status,
    ).toBe(0);
    expect(
      (
        await this.submit(
          0,
          this.sqe(ADMIN.CREATE_SQ, { prp1: IOSQ, cdw: [((QSIZE - 1) << 16) | 1, (1 << 16) | 1] }),
        )
      ).status,
    ).toBe(0);
  }

  rw(opcode: number, slba: number, nlb: number, prp1: bigint, prp2 = 0n, fua = false): Uint8Array {
    return this.sqe(opcode, { nsid: 1, prp1, prp2, cdw: [slba, 0, (nlb - 1) | (fua ? 1 << 30 : 0)] });
  }
}

export const sc = (status: number) => status & 0x7ff; // without DNR
export const pattern = (len: number, seed: number) =>
  Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);

/** How the Drivers made from now on find host memory (eachHostMemory). */
const hostMemory = { atHand: false };

/** Runs `tests` twice: host memory read as it comes (every read waits), and at hand (as when the
 *  host pushed it with the doorbell: commands then complete without waiting). */
export function eachHostMemory(tests: () => void): void {
  describe.each([
    ['read as it comes', false],
    ['at hand', true],
  ])('host memory %s', (_, now) => {
    beforeEach(() => {
      hostMemory.atHand = now;
    });
    tests();
  });
}
