// The `kernel` channel: each device is one open file of /dev/pcinet (kernel/pcinet.c). Attach
// writes the description as records and waits for R_ATTACHED; afterwards a read loop turns kernel
// records into messages for the endpoint and deliver() turns the endpoint's messages into records.
// Plain fs.read/fs.write on the descriptor: no native addon. A read blocks in the thread pool until
// the kernel has records; W_DETACH ends it (read returns 0), so removal never hangs on it.
import { close, open, read, writev, writevSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import {
  AbiError,
  attachRecord,
  barKind,
  connectRecord,
  emptyRecord,
  type KernelRecord,
  MAX_DATA,
  parseRecords,
  RANGE_DOORBELL,
  RANGE_VOLATILE,
  rangeRecord,
  shadowRecord,
  W,
} from '../../proto/kernel-abi.js';
import { RecordTranslator } from '../../proto/kernel-link.js';
import { type DeviceDescription, ErrorCode, type Msg, ProtocolError, u64 } from '../../proto/wire.js';
import type { AttachOptions, Channel, ChannelDevice, DeviceSink } from '../channel.js';
import { checkPushRule } from '../push-rule.js';

export const DEFAULT_DEVICE = '/dev/pcinet';
/** How long the kernel may take to put a device on the bus (the driver's probe runs meanwhile). */
const ATTACH_TIMEOUT_MS = 30_000;
const READ_BUFFER = 1 << 20;
/** Most bytes of records given to one write(). */
const WRITE_BATCH = 1 << 20;

const openFd = (path: string) =>
  new Promise<number>((resolve, reject) => open(path, 'r+', (e, fd) => (e ? reject(e) : resolve(fd))));
const closeFd = (fd: number) => new Promise<void>((resolve) => close(fd, () => resolve()));

/** Writes every byte of `bufs` (whole records each) in as few system calls as the kernel allows:
 *  writev() takes them without a copy; a write stops early only at a record the kernel refused, and
 *  the next call starts there and gets the error. */
function writeAll(fd: number, bufs: readonly Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (rest: readonly Buffer[]) => {
      if (rest.length === 0) return resolve();
      writev(fd, rest, null, (e, n) => {
        if (e) return reject(e);
        let i = 0;
        while (i < rest.length && n >= rest[i]!.length) n -= rest[i++]!.length;
        step(n > 0 ? [rest[i]!.subarray(n), ...rest.slice(i + 1)] : rest.slice(i));
      });
    };
    step(bufs);
  });
}

/** writeAll from the event loop, for records the kernel takes without waiting for us. */
function writeAllSync(fd: number, bufs: readonly Buffer[]): void {
  let rest = bufs;
  while (rest.length > 0) {
    let n = writevSync(fd, rest as Buffer[]);
    let i = 0;
    while (i < rest.length && n >= rest[i]!.length) n -= rest[i++]!.length;
    rest = n > 0 ? [rest[i]!.subarray(n), ...rest.slice(i + 1)] : rest.slice(i);
  }
}

/** One line for an errno from /dev/pcinet. (Node names errno 95, the module's EOPNOTSUPP, ENOTSUP.) */
function errnoText(e: NodeJS.ErrnoException): string {
  const why: Record<string, string> = {
    ENOENT: 'no /dev/pcinet: is pcinet.ko loaded? (insmod kernel/pcinet.ko)',
    EACCES: 'permission denied (/dev/pcinet is root-only)',
    EPROTO: 'the module speaks another ABI version than this host-agent',
    ENOTSUP: 'the module does not support this device (see the kernel log)',
    EINVAL: 'the module refused the description (see the kernel log)',
    ENOMEM: 'out of memory or address space (see the kernel log)',
  };
  return why[e.code ?? ''] ?? `${e.code ?? ''} ${e.message}`.trim();
}

/** How long pcinet.ko may take to connect a kernel link and hear the endpoint's answer. */
const LINK_CONNECT_MS = 10_000;

class KernelDevice implements ChannelDevice {
  address = '';
  readonly #fd: number;
  readonly #dev: number;
  readonly #log: Logger;
  /** Records for the kernel not yet written, in order; one writer drains them, as many as are
   *  waiting in one write() (each write() costs a thread-pool trip and a system call). */
  #queue: Buffer[] = [];
  #writing: Promise<void> | undefined;
  /** Records in #queue the kernel may wait for us while taking (see #write). */
  readonly #mayWait = new Set<Buffer>();
  #gone = false;
  #onAttached: ((r: Extract<KernelRecord, { type: 'attached' }>) => void) | undefined;
  readonly #records: RecordTranslator;
  /** The description the device was attached (or last brought up) with. */
  #desc: DeviceDescription = {};
  /** The data plane is on a kernel link (W_CONNECT): nothing but control records come here. */
  linked = false;
  /** The kernel took the link down itself (its link failed). */
  #kernelLinkDown = false;
  #onLinkLost: ((why: string) => void) | undefined;

  constructor(fd: number, dev: number, sink: DeviceSink, log: Logger) {
    this.#fd = fd;
    this.#dev = dev;
    this.#log = log;
    this.#records = new RecordTranslator({
      dev,
      sink,
      write: (r, mayWait) => this.#write(r, mayWait),
      checkPushRule: (p) => checkPushRule(p, this.#desc),
    });
  }

  /** Writes the description, the kernel link if asked for, and START; resolves with the bus
   *  address. */
  async start(desc: DeviceDescription, o: AttachOptions = {}): Promise<string> {
    this.#desc = desc;
    const bars = desc.bars ?? [];
    const records: Buffer[] = [
      attachRecord({
        vectors: desc.msixVectors ?? 0,
        bars: bars.map((b) => ({
          index: b.index ?? 0,
          size: u64(b.size),
          kind: barKind(b.kind),
          prefetchable: b.prefetchable ?? false,
        })),
        config: pad(desc.config),
        wmask: pad(desc.configWmask),
        w1cmask: pad(desc.configW1cmask),
      }),
    ];
    for (const b of bars) {
      const bar = b.index ?? 0;
      for (const r of b.volatile ?? [])
        records.push(rangeRecord(bar, RANGE_VOLATILE, u64(r.offset), u64(r.length)));
      for (const r of b.doorbell ?? [])
        records.push(rangeRecord(bar, RANGE_DOORBELL, u64(r.offset), u64(r.length)));
    }
    records.push(...initialShadow(desc));
    const attached = new Promise<Extract<KernelRecord, { type: 'attached' }>>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(new ProtocolError(ErrorCode.ATTACH_FAILED, `no R_ATTACHED within ${ATTACH_TIMEOUT_MS} ms`)),
        ATTACH_TIMEOUT_MS,
      );
      this.#onAttached = (r) => {
        clearTimeout(timer);
        resolve(r);
      };
    });
    try {
      await writeAll(this.#fd, records);
      await this.#connect(o);
      await writeAll(this.#fd, [emptyRecord(W.START)]);
    } catch (e) {
      throw new ProtocolError(
        ErrorCode.ATTACH_FAILED,
        `/dev/pcinet: ${errnoText(e as NodeJS.ErrnoException)}`,
      );
    }
    this.#readLoop();
    const a = await attached;
    this.address = `${a.domain.toString(16).padStart(4, '0')}:${a.bus.toString(16).padStart(2, '0')}:${(a.devfn >> 3).toString(16).padStart(2, '0')}.${a.devfn & 7}`;
    return this.address;
  }

  /** W_CONNECT when a link is asked for. A link the kernel cannot open is not fatal: the data
   *  plane then stays on the session, through us. */
  async #connect(o: AttachOptions): Promise<void> {
    this.linked = false;
    this.#kernelLinkDown = false;
    this.#onLinkLost = o.onLinkLost;
    const t = o.link;
    if (!t) return;
    try {
      await writeAll(this.#fd, [
        connectRecord({
          family: t.family,
          address: t.address,
          port: t.port,
          timeoutMs: LINK_CONNECT_MS,
          token: t.token,
          key: t.key,
        }),
      ]);
      this.linked = true;
      this.#log.info(
        { dev: this.#dev, endpoint: `${t.host}:${t.port}`, sealed: !!t.key },
        'kernel link open: the data plane bypasses the host-agent',
      );
    } catch (e) {
      this.#log.warn(
        { dev: this.#dev, err: errnoText(e as NodeJS.ErrnoException) },
        'no kernel link: the data plane goes through the host-agent',
      );
    }
  }

  #readLoop(): void {
    const buf = Buffer.allocUnsafe(READ_BUFFER);
    const next = () => {
      read(this.#fd, buf, 0, READ_BUFFER, null, (e, n) => {
        if (e || n === 0) {
          if (e && !this.#gone)
            this.#log.error({ address: this.address, err: e.message }, '/dev/pcinet read failed');
          this.#lost(e ? `read failed: ${e.message}` : undefined);
          return;
        }
        try {
          for (const r of parseRecords(buf.subarray(0, n))) this.#fromKernel(r);
        } catch (err) {
          if (!(err instanceof AbiError)) throw err;
          this.#log.error(
            { address: this.address, err: err.message },
            '/dev/pcinet sent a record we do not understand',
          );
          void this.remove(ErrorCode.INTERNAL);
          return;
        }
        next();
      });
    };
    next();
  }

  /** The kernel ended the device (or reading failed): tell the endpoint unless we removed it. */
  #lost(why: string | undefined): void {
    if (this.#gone) return;
    this.#gone = true;
    this.#records.sink({
      detach: { dev: this.#dev, reason: ErrorCode.INTERNAL, message: why ?? 'the kernel removed the device' },
    });
    void closeFd(this.#fd);
  }

  #fromKernel(r: KernelRecord): void {
    switch (r.type) {
      case 'attached':
        this.#onAttached?.(r);
        this.#onAttached = undefined;
        return;
      case 'link-closed': {
        // The kernel has taken the link down (the driver is told); whoever owns the session
        // decides between waiting for the endpoint and removing the device.
        this.#kernelLinkDown = true;
        const why = `kernel link of ${this.address} lost (errno ${r.error})`;
        this.#log.warn({ address: this.address, errno: r.error }, 'kernel link lost: link down');
        this.#onLinkLost?.(why);
        return;
      }
      default:
        this.#records.fromKernel(r);
    }
  }

  /** Queues a record; the writer starts after the current batch of messages has been delivered,
   *  so a frame's data, completion and interrupt reach the kernel in one write(). `mayWait`: the
   *  kernel may wait for *us* while taking it (W_DMA_READ queues a completion for read() and waits
   *  while the read queue is full; link changes run error recovery): such batches are written from
   *  the thread pool, everything else straight from the event loop. */
  #write(buf: Buffer, mayWait = false): void {
    this.#queue.push(buf);
    if (mayWait) this.#mayWait.add(buf);
    this.#writing ??= Promise.resolve().then(() => this.#drain());
  }

  /** Resolves when everything queued so far is written (or the device is gone). */
  get #writes(): Promise<void> {
    return this.#writing ?? Promise.resolve();
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.#gone) {
        let n = 0;
        let bytes = 0;
        let wait = false;
        while (n < this.#queue.length && (n === 0 || bytes + this.#queue[n]!.length <= WRITE_BATCH)) {
          bytes += this.#queue[n]!.length;
          wait ||= this.#mayWait.delete(this.#queue[n]!);
          n++;
        }
        const batch = this.#queue.splice(0, n);
        try {
          // A data-plane write() returns in microseconds: a trip through the thread pool (two
          // thread switches) would cost more than the system call itself.
          if (wait) await writeAll(this.#fd, batch);
          else writeAllSync(this.#fd, batch);
        } catch (e) {
          this.#log.error(
            { address: this.address, err: errnoText(e as NodeJS.ErrnoException) },
            '/dev/pcinet refused a record',
          );
          this.#lost(`write failed: ${(e as Error).message}`);
        }
      }
    } finally {
      this.#writing = undefined;
      this.#queue = [];
      this.#mayWait.clear();
    }
  }

  deliver(m: Msg): void {
    if (this.#gone) return;
    this.#records.toKernel(m);
  }

  /** pcinet.ko's hint (kernel/sysfs.c, pcinet_recovers); false if it cannot be read. */
  async recoversFromLinkDown(): Promise<boolean> {
    if (this.#gone || !this.address) return false;
    const text = await readFile(`/sys/bus/pci/devices/${this.address}/pcinet_recovers`, 'utf8').catch(
      () => '0',
    );
    return text.trim() === '1';
  }

  async linkDown(): Promise<void> {
    if (this.#gone) throw new Error('the device is gone');
    // Whatever the kernel said before it heard of the link loss was for the old endpoint.
    this.#records.sink = () => {};
    this.#records.forget();
    this.#onLinkLost = undefined;
    if (!this.#kernelLinkDown) {
      this.#write(emptyRecord(W.LINK_DOWN), true);
      await this.#writes;
      if (this.#gone) throw new Error('the kernel refused W_LINK_DOWN');
    }
    this.#log.warn({ address: this.address }, 'link down: the driver is told (PCI error recovery)');
  }

  async linkUp(desc: DeviceDescription, sink: DeviceSink, o: AttachOptions = {}): Promise<void> {
    if (this.#gone) throw new Error('the device is gone');
    // The kernel queues nothing while the link is down, so everything read from now on is the
    // new instance's business.
    this.#records.sink = sink;
    this.#desc = desc;
    await this.#writes;
    await this.#connect(o);
    this.#write(Buffer.concat([...initialShadow(desc), emptyRecord(W.LINK_UP)]), true);
    await this.#writes;
    if (this.#gone) throw new Error('the kernel refused W_LINK_UP');
    this.#log.info({ address: this.address }, 'link up: the driver resets the device');
  }

  async remove(reason: ErrorCode): Promise<void> {
    if (this.#gone) return;
    this.#log.info({ address: this.address, reason: ErrorCode[reason] }, 'removing device');
    const detach = emptyRecord(W.DETACH);
    await this.#writes;
    this.#gone = true;
    try {
      await writeAll(this.#fd, [detach]);
    } catch {
      // Already detached by the kernel: closing below removes whatever is left.
    }
    await closeFd(this.#fd);
  }
}

/** W_SHADOW records with the BARs' contents as the description gives them. */
function initialShadow(desc: DeviceDescription): Buffer[] {
  const records: Buffer[] = [];
  for (const b of desc.bars ?? []) {
    const shadow = b.shadow ?? new Uint8Array(0);
    for (let at = 0; at < shadow.length; at += MAX_DATA) {
      records.push(shadowRecord(b.index ?? 0, BigInt(at), shadow.subarray(at, at + MAX_DATA)));
    }
  }
  return records;
}

function pad(b: Uint8Array | null | undefined): Uint8Array {
  const out = new Uint8Array(4096);
  if (b) out.set(b.subarray(0, 4096));
  return out;
}

class KernelChannel implements Channel {
  readonly name = 'kernel';
  readonly #path: string;
  readonly #log: Logger;
  readonly #devices = new Set<KernelDevice>();

  constructor(path: string, log: Logger) {
    this.#path = path;
    this.#log = log;
  }

  async attach(
    dev: number,
    desc: DeviceDescription,
    sink: DeviceSink,
    o: AttachOptions = {},
  ): Promise<ChannelDevice> {
    let fd: number;
    try {
      fd = await openFd(this.#path);
    } catch (e) {
      throw new ProtocolError(
        ErrorCode.ATTACH_FAILED,
        `${this.#path}: ${errnoText(e as NodeJS.ErrnoException)}`,
      );
    }
    const d = new KernelDevice(fd, dev, sink, this.#log);
    try {
      await d.start(desc, o);
    } catch (e) {
      await d.remove(ErrorCode.ATTACH_FAILED);
      throw e;
    }
    this.#devices.add(d);
    return d;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#devices].map((d) => d.remove(ErrorCode.SHUTDOWN)));
    this.#devices.clear();
  }
}

/** Opens the kernel channel. Fails early, with one clear line, if /dev/pcinet is not usable. */
export async function openKernelChannel(o: { log: Logger; path?: string }): Promise<Channel> {
  const path = o.path ?? DEFAULT_DEVICE;
  try {
    await closeFd(await openFd(path));
  } catch (e) {
    throw new Error(`${path}: ${errnoText(e as NodeJS.ErrnoException)}`);
  }
  return new KernelChannel(path, o.log);
}
