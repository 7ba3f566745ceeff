// A split virtqueue (virtio 1.x §2.7) seen from the device, over DMA. Every access to the rings is
// a HostPort DMA: reads cost a round trip to the host, writes are posted. So a ring read takes the
// whole driver area (flags, idx, the ring and used_event) and the whole descriptor table at once
// (two reads in flight together). Completions are published as posted writes; whether the driver
// wants an interrupt for them is decided from the next ring read issued after them (the host
// applies posted writes before a later read, so that read sees the driver's answer to them), so a
// busy queue pays no extra round trip for interrupt suppression.
//
// When the host ends rounds (HostPort.virtqRound, docs/PUSH.md "Virtqueue rounds"), neither needs a
// ring read: a round ends with avail_event published and one posted message, and the host decides
// the interrupt from the driver's used_event and kicks the queue if buffers came that no notify
// announced. Every buffer then reaches the device with a notify, and the push that goes with it.
//
// Driver mistakes (a head or next index out of range, a loop in a chain, an indirect table of a bad
// size, a readable descriptor after a writable one) are traced, and the queue stops until the device
// is reset ("needs reset"): the spec allows no better, and nothing is ever guessed.
import { DmaError, type HostPort } from '../host-port.js';
import { rd16, rd32, rd64, wr16, wr32 } from '../pci/le.js';

export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
const DESC_SIZE = 16;
/** Longest chain we follow (the spec bounds chains by the queue size; indirect tables too). */
const MAX_CHAIN = 1024;

export interface Segment {
  addr: bigint;
  len: number;
}

/** One buffer the driver made available: device-readable segments, then device-writable ones. */
export interface Chain {
  head: number;
  readable: Segment[];
  writable: Segment[];
}

export interface QueueConfig {
  /** The queue's index: its push rule's id and the value its notify carries. */
  index: number;
  size: number;
  desc: bigint;
  driver: bigint;
  device: bigint;
  eventIdx: boolean;
  indirect: boolean;
}

/** vring_need_event: should the device interrupt, having moved used idx from old to next? */
export function needEvent(event: number, next: number, old: number): boolean {
  return ((next - event - 1) & 0xffff) < ((next - old) & 0xffff);
}

/**
 * The host's end of a virtqueue round (docs/PUSH.md "Virtqueue rounds"), shared by every host that
 * does them in TypeScript (the sim channel, the unit tests' FakeHost; pcinet.ko has its own).
 * `read16` reads the driver's memory (undefined: not readable).
 */
export const virtqRound = {
  /** Does the driver want an interrupt for used idx moving from `old` to `next`? An unreadable
   *  driver area (or a rule that is gone: `avail` undefined) gets one: one too many is harmless. */
  wantsInterrupt(
    read16: (iova: bigint) => number | undefined,
    q: { avail: bigint; size: number } | undefined,
    eventIdx: boolean,
    old: number,
    next: number,
  ): boolean {
    if (old === next) return false;
    const w = q && read16(eventIdx ? q.avail + BigInt(4 + 2 * q.size) : q.avail);
    if (w === undefined) return true;
    return eventIdx ? needEvent(w, next, old) : (w & 1) === 0; // VRING_AVAIL_F_NO_INTERRUPT
  },
  /** Did the driver make buffers available past `last` (what the rule pushed) without a notify?
   *  A jump past the ring size is a broken ring, not buffers: no kick. */
  unannounced(idx: number, last: number, size: number): boolean {
    const n = (idx - last) & 0xffff;
    return n > 0 && n <= size;
  },
};

export class QueueBroken extends Error {
  override readonly name = 'QueueBroken';
}

export class SplitQueue {
  readonly #c: QueueConfig;
  readonly #port: () => HostPort;
  /** Next available-ring index to take. */
  #lastAvail = 0;
  /** Next used-ring index to fill. */
  #usedIdx = 0;
  /** used idx when we last decided about an interrupt. */
  #signalledUsed = 0;
  /** Heads made available but not yet consumed, from the last ring read. */
  #pending: number[] = [];
  #table: Uint8Array | undefined;
  /** From the last ring read: avail.flags, used_event, and our used idx when it was issued. */
  #availFlags = 0;
  #usedEvent = 0;
  #usedIdxAtRead = 0;
  /** A notify came since the last ring read (set by the transport): new buffers may be there. */
  notified = true;
  broken = false;

  constructor(c: QueueConfig, port: () => HostPort) {
    this.#c = c;
    this.#port = port;
  }

  get size(): number {
    return this.#c.size;
  }

  /** Reads the available ring (and the descriptor table) when nothing is pending, or always with
   *  `force` (to see new buffers and the driver's interrupt wishes after our completions).
   *  Returns the number of chains ready to pop. */
  async refresh(force = false): Promise<number> {
    if (this.broken) return 0;
    if (this.#pending.length > 0 && !force) return this.#pending.length;
    const { size, driver, desc } = this.#c;
    const usedIdx = this.#usedIdx;
    this.notified = false;
    const [ring, table] = await Promise.all([
      this.#port().dmaRead(driver, 6 + 2 * size),
      this.#port().dmaRead(desc, DESC_SIZE * size),
    ]);
    const idx = rd16(ring, 2);
    const n = (idx - this.#lastAvail) & 0xffff;
    if (n > size)
      throw this.#break('avail.idx moved by more than the queue size', { idx, last: this.#lastAvail });
    this.#pending = [];
    for (let i = 0; i < n; i++) this.#pending.push(rd16(ring, 4 + 2 * ((this.#lastAvail + i) % size)));
    this.#table = table;
    this.#availFlags = rd16(ring, 0);
    this.#usedEvent = rd16(ring, 4 + 2 * size);
    this.#usedIdxAtRead = usedIdx;
    return n;
  }

  /** Whether the driver wants an interrupt for the completions the last ring read was issued
   *  after (those since the previous decision). Later completions are decided by a later read. */
  interruptDue(): boolean {
    const old = this.#signalledUsed;
    const next = this.#usedIdxAtRead;
    // Nothing new since the last decision (interruptNow may already have covered this read).
    if (((next - old) & 0xffff) === 0 || ((next - old) & 0xffff) > this.#c.size) return false;
    this.#signalledUsed = next;
    if (this.#c.eventIdx) return needEvent(this.#usedEvent, next, old);
    return (this.#availFlags & 1) === 0; // VRING_AVAIL_F_NO_INTERRUPT
  }

  /** Takes the next available chain, or undefined when the ring is empty (call refresh first). */
  async pop(): Promise<Chain | undefined> {
    if (this.broken || this.#pending.length === 0) return undefined;
    const head = this.#pending.shift()!;
    this.#lastAvail = (this.#lastAvail + 1) & 0xffff;
    return this.#walk(head, this.#table!);
  }

  /** Chains found by the last ring read and not yet taken. */
  get available(): number {
    return this.broken ? 0 : this.#pending.length;
  }

  /** Takes every available chain (at most `max`); their indirect tables are read all at once (one
   *  round trip for the lot instead of one per chain). In ring order. */
  async popAll(max = this.#pending.length): Promise<Chain[]> {
    if (this.broken) return [];
    const heads = this.#pending.splice(0, max);
    this.#lastAvail = (this.#lastAvail + heads.length) & 0xffff;
    const table = this.#table!;
    return Promise.all(heads.map((h) => this.#walk(h, table)));
  }

  /** Follows the chain starting at `head` in the descriptor table `table`. */
  async #walk(head: number, table: Uint8Array): Promise<Chain> {
    if (head >= this.#c.size) throw this.#break('avail ring names a descriptor past the table', { head });
    const chain: Chain = { head, readable: [], writable: [] };
    let count = this.#c.size;
    let i = head;
    let indirect = false;
    for (let steps = 0; ; steps++) {
      if (steps >= MAX_CHAIN || steps >= count) throw this.#break('descriptor chain loops', { head });
      const at = i * DESC_SIZE;
      const addr = rd64(table, at);
      const len = rd32(table, at + 8);
      const flags = rd16(table, at + 12);
      const next = rd16(table, at + 14);
      if (flags & VRING_DESC_F_INDIRECT) {
        if (indirect || !this.#c.indirect)
          throw this.#break('indirect descriptor not allowed here', { head });
        if (len === 0 || len % DESC_SIZE) throw this.#break('indirect table length', { head, len });
        if (flags & VRING_DESC_F_NEXT) throw this.#break('indirect descriptor with NEXT', { head });
        table = await this.#port().dmaRead(addr, len);
        count = len / DESC_SIZE;
        indirect = true;
        i = 0;
        steps = -1;
        continue;
      }
      if (len > 0) {
        if (flags & VRING_DESC_F_WRITE) chain.writable.push({ addr, len });
        else if (chain.writable.length > 0)
          throw this.#break('readable descriptor after a writable one', { head });
        else chain.readable.push({ addr, len });
      }
      if (!(flags & VRING_DESC_F_NEXT)) break;
      if (next >= count) throw this.#break('next index past the table', { head, next });
      i = next;
    }
    return chain;
  }

  /** Bytes a chain's readable segments hold. */
  static readableBytes(chain: Chain): number {
    let n = 0;
    for (const s of chain.readable) n += s.len;
    return n;
  }

  /** Reads every readable byte of a chain; with `into` (at least readableBytes long), into it:
   *  the result is then a view of `into`, and no buffer is made per segment. */
  async read(chain: Chain, into?: Uint8Array): Promise<Uint8Array> {
    if (into) {
      const port = this.#port();
      const reads: Promise<Uint8Array>[] = [];
      let at = 0;
      for (const s of chain.readable) {
        reads.push(port.dmaRead(s.addr, s.len, into.subarray(at, at + s.len)));
        at += s.len;
      }
      const parts = await Promise.all(reads);
      // A read may return its own bytes rather than fill `into` (HostPort.dmaRead).
      at = 0;
      for (const p of parts) {
        if (p.buffer !== into.buffer || p.byteOffset !== into.byteOffset + at) into.set(p, at);
        at += p.length;
      }
      return into.subarray(0, at);
    }
    const parts = await Promise.all(chain.readable.map((s) => this.#port().dmaRead(s.addr, s.len)));
    if (parts.length === 1) return parts[0]!;
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Writes `data` into the chain's writable segments from `offset`; returns bytes written. */
  write(chain: Chain, data: Uint8Array, offset = 0): number {
    let skip = offset;
    let done = 0;
    for (const s of chain.writable) {
      if (done >= data.length) break;
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      const n = Math.min(s.len - skip, data.length - done);
      this.#port().dmaWrite(s.addr + BigInt(skip), data.subarray(done, done + n));
      done += n;
      skip = 0;
    }
    return done;
  }

  /** Puts a used element (head, bytes written) in the used ring and publishes used idx. */
  push(head: number, written: number): void {
    const { size, device } = this.#c;
    const elem = new Uint8Array(8);
    wr32(elem, 0, head);
    wr32(elem, 4, written);
    this.#port().dmaWrite(device + BigInt(4 + 8 * (this.#usedIdx % size)), elem);
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    const idx = new Uint8Array(2);
    wr16(idx, 0, this.#usedIdx);
    this.#port().dmaWrite(device + 2n, idx);
  }

  /** With event index: tells the driver to notify once avail idx passes what we last read (all of
   *  it taken, when the callers publish: nothing pending). */
  publishAvailEvent(): void {
    if (!this.#c.eventIdx) return;
    const v = new Uint8Array(2);
    // The avail idx of the last ring read: what was taken, and what is pending.
    wr16(v, 0, (this.#lastAvail + this.#pending.length) & 0xffff);
    this.#port().dmaWrite(this.#c.device + BigInt(4 + 8 * this.#c.size), v);
  }

  /** Whether the host ends rounds (HostPort.virtqRound): then endRound replaces ring re-reads. */
  get hostRounds(): boolean {
    return this.#port().virtqRound !== undefined;
  }

  /**
   * Ends a round in the host (docs/PUSH.md "Virtqueue rounds"): publishes avail_event, then asks
   * the host to raise `vector` if the driver wants an interrupt for what was completed since the
   * last decision (undefined: no decision now), and with `recheck` to notify the queue if the
   * driver made buffers available that no notify announced. Only when hostRounds.
   */
  endRound(vector: number | undefined, recheck: boolean): void {
    const port = this.#port();
    if (!port.virtqRound) throw new Error('virtqueue: the host does not end rounds');
    if (this.broken) return;
    this.publishAvailEvent();
    port.virtqRound({
      rule: this.#c.index,
      vector,
      oldUsed: this.#signalledUsed,
      newUsed: this.#usedIdx,
      eventIdx: this.#c.eventIdx,
      kick: recheck ? this.#c.index : undefined,
    });
    if (vector !== undefined) this.#signalledUsed = this.#usedIdx;
  }

  /**
   * An interrupt now for everything pushed so far, if the driver's wishes as last read say so.
   * Those may be stale, but only in one direction that matters: a driver that has since asked for
   * fewer interrupts gets one it did not need (it finds the used ring unchanged or already
   * handled); one that asked for more is served by the next decision from a fresh read, because
   * nothing is marked signalled unless this says yes. Saves a round trip before the interrupt.
   */
  interruptNow(): boolean {
    const old = this.#signalledUsed;
    const next = this.#usedIdx;
    if (old === next) return false;
    const want = this.#c.eventIdx ? needEvent(this.#usedEvent, next, old) : (this.#availFlags & 1) === 0;
    if (want) this.#signalledUsed = next;
    return want;
  }

  /** Whether the driver wants an interrupt for everything pushed so far: one ring read after the
   *  posted used-ring writes (which also picks up new buffers). */
  async shouldInterrupt(): Promise<boolean> {
    if (this.#signalledUsed === this.#usedIdx) return false;
    await this.refresh(true);
    return this.interruptDue();
  }

  #break(why: string, fields: Record<string, unknown>): QueueBroken {
    this.broken = true;
    this.#port().trace('virtio.queue.broken', { why, ...fields });
    return new QueueBroken(why);
  }
}

/** True for errors that mean "stop this work quietly": DMA refused, queue broken, device gone. */
export function isExpected(e: unknown): boolean {
  return e instanceof DmaError || e instanceof QueueBroken;
}
