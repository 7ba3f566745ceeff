// A scripted pcinet.ko on one kernel link, for benches: it speaks the records of
// kernel/uapi/pcinet.h to an endpoint (docs/KERNEL-ABI.md) the way kernel/link.c does, from the
// other side than proto/kernel-link.ts: R_* records out (MMIO writes, pushes, DMA read
// completions, push rule confirmations), W_* records in (shadow, fences, DMA, interrupts, push
// rules). Host memory is one flat buffer at `base`, all of it mapped both ways; push rules are
// walked by host-agent/sim/push.ts, the software twin of kernel/push-walk.c, so a doorbell carries
// exactly the pushes the kernel would send.
import net from 'node:net';
import type { NvmeSqRule, PushRule } from '../devices/push.js';
import { PushRules, type SqPort } from '../host-agent/sim/push.js';
import { ABI_VERSION, HDR, LINK_HELLO_SIZE, LINK_MAGIC, PUSH_KIND, R, VQ_F, W } from '../proto/kernel-abi.js';
import { RecordStream } from '../proto/kernel-link.js';

const pad8 = (n: number) => (n + 7) & ~7;

/** A record of `type` with a `head`-byte fixed part (header included) and `data` after it. */
function rRecord(type: number, head: number, data?: Uint8Array): Buffer {
  const len = pad8(head + (data?.length ?? 0));
  const b = Buffer.alloc(len);
  b.writeUInt16LE(type, 0);
  b.writeUInt32LE(len, 4);
  if (data) b.set(data, head);
  return b;
}

/** R_MMIO_WRITE (struct pcinet_r_mmio_write): bar, size, offset, data. */
export function mmioWriteRecord(bar: number, offset: number, data: Uint8Array): Buffer {
  const b = rRecord(R.MMIO_WRITE, 24, data);
  b.writeUInt32LE(bar, 8);
  b.writeUInt32LE(data.length, 12);
  b.writeBigUInt64LE(BigInt(offset), 16);
  return b;
}

/** R_PUSH (struct pcinet_r_push): size, rule, iova, data. */
export function pushRecord(rule: number, iova: bigint, data: Uint8Array): Buffer {
  const b = rRecord(R.PUSH, 24, data);
  b.writeUInt32LE(data.length, 8);
  b.writeUInt32LE(rule, 12);
  b.writeBigUInt64LE(iova, 16);
  return b;
}

/** R_DMA_READ_CPL (struct pcinet_r_dma_read_cpl): tag, status, size, data (none if refused). */
export function dmaReadCplRecord(tag: number, data: Uint8Array | undefined): Buffer {
  const b = rRecord(R.DMA_READ_CPL, 24, data);
  b.writeUInt32LE(tag, 8);
  b.writeUInt32LE(data ? 0 : 1, 12);
  b.writeUInt32LE(data?.length ?? 0, 16);
  return b;
}

/** R_PUSH_RULE_SET: rule `id` is in force. */
export function pushRuleSetRecord(id: number): Buffer {
  const b = rRecord(R.PUSH_RULE_SET, 16);
  b.writeUInt32LE(id, 8);
  return b;
}

/** A W_* record from the endpoint, as this peer uses it. */
export type WRecord =
  | { type: 'shadow'; bar: number; offset: number; data: Uint8Array }
  | { type: 'writes-applied'; count: bigint }
  | { type: 'mmio-read-cpl'; tag: number }
  | { type: 'dma-read'; tag: number; iova: bigint; size: number }
  | { type: 'dma-write'; iova: bigint; data: Uint8Array }
  | { type: 'interrupt'; vector: number }
  | { type: 'push-rule'; id: number; rule: PushRule | undefined }
  | { type: 'virtq-done'; id: number; recheck: boolean; kick: number }
  | { type: 'other'; code: number };

/** One W_* record (a whole one, as RecordStream cuts them). Views, not copies. */
export function parseWRecord(r: Buffer): WRecord {
  const type = r.readUInt16LE(0);
  switch (type) {
    case W.SHADOW:
      return {
        type: 'shadow',
        bar: r.readUInt32LE(8),
        offset: Number(r.readBigUInt64LE(16)),
        data: r.subarray(24, 24 + r.readUInt32LE(12)),
      };
    case W.WRITES_APPLIED:
      return { type: 'writes-applied', count: r.readBigUInt64LE(8) };
    case W.MMIO_READ_CPL:
      return { type: 'mmio-read-cpl', tag: r.readUInt32LE(8) };
    case W.DMA_READ:
      return {
        type: 'dma-read',
        tag: r.readUInt32LE(8),
        size: r.readUInt32LE(12),
        iova: r.readBigUInt64LE(16),
      };
    case W.DMA_WRITE:
      return { type: 'dma-write', iova: r.readBigUInt64LE(16), data: r.subarray(24, 24 + r.readUInt32LE(8)) };
    case W.INTERRUPT:
      return { type: 'interrupt', vector: r.readUInt32LE(8) };
    case W.PUSH_RULE: {
      const id = r.readUInt32LE(8);
      if (r.readUInt32LE(12) !== PUSH_KIND.NVME_SQ) return { type: 'push-rule', id, rule: undefined };
      const avail = r.readBigUInt64LE(40);
      const shadow = r.readBigUInt64LE(64);
      const rule: NvmeSqRule = {
        kind: 'nvme-sq',
        bar: r.readUInt32LE(16),
        entries: r.readUInt32LE(20),
        doorbell: Number(r.readBigUInt64LE(24)),
        base: r.readBigUInt64LE(32),
        dataMax: r.readUInt32LE(48),
        lbaShift: r.readUInt32LE(52),
        ...(avail ? { eventIdx: avail } : {}),
        ...(shadow ? { shadow } : {}),
      };
      return { type: 'push-rule', id, rule };
    }
    case W.VIRTQ_DONE:
      return {
        type: 'virtq-done',
        id: r.readUInt32LE(8),
        recheck: (r.readUInt32LE(12) & VQ_F.RECHECK) !== 0,
        kick: r.readUInt16LE(24),
      };
    default:
      return { type: 'other', code: type };
  }
}

/** Counts of what the endpoint sent, for the bench's per-I/O figures. */
export interface PeerCounters {
  records: number;
  reads: number;
  dmaReads: number;
  interrupts: number;
  shadows: number;
  /** Rounds of NVMe SQs (W_VIRTQ_DONE with recheck), and doorbells the peer rang for the driver
   *  after one (a quiet SQ's submissions). */
  rounds: number;
  rungForDriver: number;
}

/** One device's kernel link, seen from pcinet.ko. Only NVMe SQ push rules are walked (the bench
 *  drives NVMe); a virtqueue rule is confirmed and ignored. As link.c does for a rule with an event
 *  index, every doorbell write sets the SQ's event index in host memory, and a round (W_VIRTQ_DONE
 *  with recheck) of a rule with a shadow tail rings what the driver submitted without ringing
 *  (docs/PUSH.md "Shadow doorbells", "Quiet submission queues"; host-agent/sim/push.ts). */
export class KernelPeer {
  readonly memory: Uint8Array;
  /** BAR 0 as the host's shadow has it (W_SHADOW). */
  readonly shadow: Uint8Array;
  readonly counters: PeerCounters = {
    records: 0,
    reads: 0,
    dmaReads: 0,
    interrupts: 0,
    shadows: 0,
    rounds: 0,
    rungForDriver: 0,
  };
  readonly #socket: net.Socket;
  readonly #base: bigint;
  readonly #rules = new PushRules();
  readonly #stream = new RecordStream();
  #answer = Buffer.alloc(0);
  #waiters: (() => void)[] = [];
  #interrupts = 0;
  #closed: Error | undefined;
  /** What quiet SQs need of this "kernel": memory, event index writes, rings of its own. */
  readonly #sqPort: SqPort = {
    peek: (iova, len) => this.#peek(iova, len),
    writeEventIdx: (iova, value) => this.#writeLe32(iova, value),
    ring: (rule, tail) => {
      this.counters.rungForDriver++;
      this.write32(rule.bar, rule.doorbell, tail);
    },
  };

  private constructor(socket: net.Socket, base: bigint, memory: number, barSize: number) {
    this.#socket = socket;
    this.#base = base;
    this.memory = new Uint8Array(memory);
    this.shadow = new Uint8Array(barSize);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (e) => {
      this.#closed ??= e;
    });
    socket.on('close', () => {
      this.#closed ??= new Error('the endpoint closed the kernel link');
      this.#wake();
    });
  }

  /** Opens a link to the endpoint at `port` with `token` (from its Attach) and waits for the
   *  answer to the hello. Host memory: `memory` bytes at IOVA `base`. */
  static async open(
    port: number,
    token: Uint8Array,
    o: { base: bigint; memory: number; barSize: number },
  ): Promise<KernelPeer> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const peer = new KernelPeer(socket, o.base, o.memory, o.barSize);
    const hello = Buffer.alloc(LINK_HELLO_SIZE);
    LINK_MAGIC.copy(hello, 0);
    hello.set(token, 8);
    hello.writeUInt32LE(ABI_VERSION, 24);
    socket.write(hello);
    await peer.until(() => peer.#answer.length === LINK_MAGIC.length, 5000);
    if (!peer.#answer.equals(LINK_MAGIC)) throw new Error('the endpoint answered the hello wrongly');
    return peer;
  }

  /** Host memory at `iova`, `len` bytes (a view). */
  mem(iova: bigint, len: number): Uint8Array {
    const at = Number(iova - this.#base);
    if (at < 0 || at + len > this.memory.length) throw new RangeError(`iova 0x${iova.toString(16)} unmapped`);
    return this.memory.subarray(at, at + len);
  }

  /** Interrupts received so far. */
  get interrupts(): number {
    return this.#interrupts;
  }

  /** The driver's 32-bit store at BAR `bar` + `offset`: the pushes its doorbell rule makes, then
   *  the write, in one send (link.c queues them together). */
  write32(bar: number, offset: number, value: number): void {
    const data = Buffer.alloc(4);
    data.writeUInt32LE(value >>> 0);
    for (const e of this.#rules.eventIndices(bar, offset, value >>> 0)) this.#writeLe32(e.iova, e.value);
    const pushes = this.#rules.onWrite(bar, offset, data, (iova, len) => this.#peek(iova, len)?.slice());
    const out = pushes.map((p) => pushRecord(p.rule, p.iova, p.data));
    out.push(mmioWriteRecord(bar, offset, data));
    this.#socket.write(out.length === 1 ? out[0]! : Buffer.concat(out));
  }

  /** Resolves once `ok()` holds; rejects after `timeoutMs` or when the link closes. */
  async until(ok: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ok()) {
      if (this.#closed) throw this.#closed;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`kernel peer: nothing came in ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.#socket.destroy();
  }

  /** Host memory at `iova` (a view), or undefined outside it. */
  #peek(iova: bigint, len: number): Uint8Array | undefined {
    const at = Number(iova - this.#base);
    return at >= 0 && at + len <= this.memory.length ? this.memory.subarray(at, at + len) : undefined;
  }

  #writeLe32(iova: bigint, value: number): void {
    const b = this.#peek(iova, 4);
    if (b) new DataView(b.buffer, b.byteOffset, 4).setUint32(0, value >>> 0, true);
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  #onData(chunk: Buffer): void {
    this.counters.reads++;
    if (this.#answer.length < LINK_MAGIC.length) {
      const need = LINK_MAGIC.length - this.#answer.length;
      this.#answer = Buffer.concat([this.#answer, chunk.subarray(0, need)]);
      chunk = chunk.subarray(need);
    }
    const whole = this.#stream.push(chunk);
    const replies: Buffer[] = [];
    for (let at = 0; at + HDR <= whole.length; ) {
      const len = whole.readUInt32LE(at + 4);
      this.#apply(parseWRecord(whole.subarray(at, at + len)), replies);
      at += len;
    }
    if (replies.length) this.#socket.write(replies.length === 1 ? replies[0]! : Buffer.concat(replies));
    this.#wake();
  }

  #apply(r: WRecord, replies: Buffer[]): void {
    this.counters.records++;
    switch (r.type) {
      case 'shadow':
        if (r.bar === 0) this.shadow.set(r.data, r.offset);
        this.counters.shadows++;
        return;
      case 'dma-read': {
        this.counters.dmaReads++;
        const at = Number(r.iova - this.#base);
        const ok = at >= 0 && at + r.size <= this.memory.length;
        replies.push(dmaReadCplRecord(r.tag, ok ? this.memory.subarray(at, at + r.size) : undefined));
        return;
      }
      case 'dma-write':
        this.mem(r.iova, r.data.length).set(r.data);
        return;
      case 'interrupt':
        this.counters.interrupts++;
        this.#interrupts++;
        return;
      case 'push-rule':
        this.#rules.set(r.id, r.rule, this.#sqPort);
        replies.push(pushRuleSetRecord(r.id));
        return;
      case 'virtq-done':
        if (r.recheck) {
          this.counters.rounds++;
          this.#rules.sqRound(r.id, r.kick, this.#sqPort);
        }
        return;
      default:
        return;
    }
  }
}
