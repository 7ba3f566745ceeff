// An NVMe driver on a scripted kernel link (bench/kernel-peer.ts), doing what Linux's nvme driver
// does to bring a controller up and run QD1 I/O through pcinet.ko: the admin queue by AQA/ASQ/ACQ
// and CC.EN, one I/O CQ and SQ by Create I/O CQ/SQ, then per I/O an SQE in host memory, the SQ tail
// doorbell (which carries the SQE, and a write's data, as pushes), the completion's DMA write and
// interrupt, and the CQ head doorbell. Without `dbbuf` every doorbell is rung; with it the driver
// sets up Doorbell Buffer Config as Linux's does on a controller that offers it (the lab's), writes
// I/O queue doorbells to the shadow and rings only when the event index asks (nvme_dbbuf_need_event):
// then the CQ head is seldom rung. Transfers of up to MAX_IO bytes: past two pages PRP2 points at a
// PRP list, as Linux builds it.

import { ADMIN, CC, CSTS, IO, REG } from '../devices/nvme/spec.js';
import { rd16, rd32, wr16, wr32, wr64 } from '../devices/pci/le.js';
import type { KernelPeer } from './kernel-peer.js';

/** Where the driver keeps its queues and buffers in host memory (offsets from the peer's base). */
const ASQ = 0x0000;
const ACQ = 0x1000;
const IOSQ = 0x2000;
const IOCQ = 0x12000;
/** Doorbell Buffer Config: the shadow doorbells and the event indices (a page each). */
const DBS = 0x1d000;
const EIS = 0x1e000;
/** The PRP list of a transfer of more than two pages. */
const PRP_LIST = 0x1f000;
/** The I/O buffer, physically contiguous: reads land here, writes come from here. */
const DATA = 0x20000;
/** Largest transfer: the endpoint's NVMe MDTS (2^6 pages), Linux's usual max_sectors_kb. */
export const MAX_IO = 128 << 10;
/** Host memory the driver needs (the peer must have at least this much). */
export const DRIVER_MEMORY = DATA + MAX_IO;
const ADMIN_ENTRIES = 32;
/** Linux's default io_queue_depth. */
const IO_ENTRIES = 1024;
/** How long one command may take before the bench gives up (a broken endpoint, not a slow one). */
const COMMAND_TIMEOUT_MS = 10_000;

interface Queue {
  sq: bigint;
  cq: bigint;
  entries: number;
  tail: number;
  head: number;
  phase: number;
  id: number;
}

/** Linux's nvme_dbbuf_need_event: whether moving a doorbell from `old` to `next` passes the
 *  device's event index `ei` (16-bit arithmetic). */
export const needEvent = (ei: number, next: number, old: number) =>
  ((next - ei - 1) & 0xffff) < ((next - old) & 0xffff);

export class LinkNvmeDriver {
  readonly #peer: KernelPeer;
  readonly #base: bigint;
  readonly #queues: Queue[] = [];
  #cid = 0;
  /** LBA size of namespace 1 (512 unless the endpoint says otherwise). */
  readonly lbaSize: number;
  /** Doorbell Buffer Config is in use (start({ dbbuf })). */
  #dbbuf = false;
  /** Doorbell writes: rung, and left to the shadow because the event index did not ask. */
  readonly doorbells = { rung: 0, shadowed: 0 };

  constructor(peer: KernelPeer, base: bigint, lbaSize = 512) {
    this.#peer = peer;
    this.#base = base;
    this.lbaSize = lbaSize;
  }

  /** The buffer I/O moves data through (MAX_IO bytes; an I/O of `size` uses the first `size`). */
  get data(): Uint8Array {
    return this.#peer.mem(this.#base + BigInt(DATA), MAX_IO);
  }

  /** Enables the controller and creates I/O queue pair 1 on vector 1; with `dbbuf`, then Doorbell
   *  Buffer Config (throws if the controller does not take it). */
  async start(o: { dbbuf?: boolean } = {}): Promise<void> {
    const p = this.#peer;
    p.write32(0, REG.AQA, ((ADMIN_ENTRIES - 1) << 16) | (ADMIN_ENTRIES - 1));
    this.#write64(REG.ASQ, this.#base + BigInt(ASQ));
    this.#write64(REG.ACQ, this.#base + BigInt(ACQ));
    p.write32(0, REG.CC, CC.EN | (6 << CC.IOSQES_SHIFT) | (4 << CC.IOCQES_SHIFT));
    await p.until(() => (rd32(p.shadow, REG.CSTS) & CSTS.RDY) !== 0, COMMAND_TIMEOUT_MS);
    this.#queues[0] = this.#queue(0, ASQ, ACQ, ADMIN_ENTRIES);
    const cq = this.#sqe(ADMIN.CREATE_CQ, { prp1: this.#base + BigInt(IOCQ) });
    wr32(cq, 40, ((IO_ENTRIES - 1) << 16) | 1);
    wr32(cq, 44, (1 << 16) | 0b11); // vector 1, interrupts enabled, physically contiguous
    await this.#command(0, cq);
    const sq = this.#sqe(ADMIN.CREATE_SQ, { prp1: this.#base + BigInt(IOSQ) });
    wr32(sq, 40, ((IO_ENTRIES - 1) << 16) | 1);
    wr32(sq, 44, (1 << 16) | 1); // CQ 1, physically contiguous
    await this.#command(0, sq);
    this.#queues[1] = this.#queue(1, IOSQ, IOCQ, IO_ENTRIES);
    if (o.dbbuf) {
      this.#peer.mem(this.#base + BigInt(DBS), 0x2000).fill(0);
      await this.#command(
        0,
        this.#sqe(ADMIN.DBBUF, { prp1: this.#base + BigInt(DBS), prp2: this.#base + BigInt(EIS) }),
      );
      this.#dbbuf = true;
    }
  }

  /** One read (`write` false) or write of `size` bytes (whole pages, at most MAX_IO) at byte
   *  offset `at` of namespace 1, QD1. */
  async io(write: boolean, at: number, size = 0x1000): Promise<void> {
    if (size < 0x1000 || size > MAX_IO || size % 0x1000) throw new RangeError(`I/O of ${size} bytes`);
    const data = this.#base + BigInt(DATA);
    const pages = size / 0x1000;
    let prp2 = 0n;
    if (pages === 2) prp2 = data + 0x1000n;
    else if (pages > 2) {
      // PRP2: a list of the pages after the first (all on one list page: MAX_IO is 32 pages).
      const list = this.#peer.mem(this.#base + BigInt(PRP_LIST), 8 * (pages - 1));
      for (let i = 1; i < pages; i++) wr64(list, 8 * (i - 1), data + BigInt(i * 0x1000));
      prp2 = this.#base + BigInt(PRP_LIST);
    }
    const sqe = this.#sqe(write ? IO.WRITE : IO.READ, { nsid: 1, prp1: data, prp2 });
    wr64(sqe, 40, BigInt(at / this.lbaSize));
    wr32(sqe, 48, size / this.lbaSize - 1);
    await this.#command(1, sqe);
  }

  #queue(id: number, sq: number, cq: number, entries: number): Queue {
    return {
      id,
      sq: this.#base + BigInt(sq),
      cq: this.#base + BigInt(cq),
      entries,
      tail: 0,
      head: 0,
      phase: 1,
    };
  }

  #write64(offset: number, v: bigint): void {
    this.#peer.write32(0, offset, Number(v & 0xffff_ffffn));
    this.#peer.write32(0, offset + 4, Number(v >> 32n));
  }

  #sqe(opcode: number, f: { nsid?: number; prp1?: bigint; prp2?: bigint }): Uint8Array {
    const b = new Uint8Array(64);
    b[0] = opcode;
    this.#cid = (this.#cid + 1) & 0xffff;
    wr16(b, 2, this.#cid);
    wr32(b, 4, f.nsid ?? 0);
    wr64(b, 24, f.prp1 ?? 0n);
    wr64(b, 32, f.prp2 ?? 0n);
    return b;
  }

  /** Posts `sqe` on queue `q`, rings, waits for its completion and interrupt, rings the CQ head.
   *  Throws on an error status. */
  async #command(q: number, sqe: Uint8Array): Promise<void> {
    const p = this.#peer;
    const queue = this.#queues[q]!;
    p.mem(queue.sq + BigInt(queue.tail * 64), 64).set(sqe);
    const oldTail = queue.tail;
    queue.tail = (queue.tail + 1) % queue.entries;
    const irqs = p.interrupts;
    this.#ring(q, false, queue.tail, oldTail);
    const cqe = p.mem(queue.cq + BigInt(queue.head * 16), 16);
    await p.until(() => (rd16(cqe, 14) & 1) === queue.phase && p.interrupts > irqs, COMMAND_TIMEOUT_MS);
    const status = rd16(cqe, 14) >> 1;
    if (rd16(cqe, 12) !== rd16(sqe, 2))
      throw new Error(`completion for cid ${rd16(cqe, 12)}, not ${rd16(sqe, 2)}`);
    if (status !== 0)
      throw new Error(`NVMe command 0x${sqe[0]!.toString(16)} failed: status 0x${status.toString(16)}`);
    const oldHead = queue.head;
    queue.head = (queue.head + 1) % queue.entries;
    if (queue.head === 0) queue.phase ^= 1;
    this.#ring(q, true, queue.head, oldHead);
  }

  /** Queue `q`'s SQ tail or CQ head doorbell moves from `old` to `value`: rung, or with Doorbell
   *  Buffer Config (I/O queues) written to the shadow and rung only if the event index asks. */
  #ring(q: number, cq: boolean, value: number, old: number): void {
    const slot = 8 * q + (cq ? 4 : 0);
    if (this.#dbbuf && q !== 0) {
      const shadow = this.#peer.mem(this.#base + BigInt(DBS + slot), 4);
      wr32(shadow, 0, value);
      const ei = rd32(this.#peer.mem(this.#base + BigInt(EIS + slot), 4), 0);
      if (!needEvent(ei, value, old)) {
        this.doorbells.shadowed++;
        return;
      }
    }
    this.doorbells.rung++;
    this.#peer.write32(0, REG.DOORBELLS + slot, value);
  }
}
