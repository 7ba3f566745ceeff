// Block storage for the NVMe model: a file (sparse, created with `size=` if absent), a block
// device (a disk, a partition, a ZFS zvol), or memory. Every call is asynchronous; what may wait
// for a disk runs off the event loop (fs's thread pool, or koffi's async calls there). What cannot
// wait is done in place, because the pool's hand-off (a worker thread's wake-up, then the event
// loop's) costs more than the copy: every I/O of a file in memory (tmpfs, ramfs), and reads the
// page cache holds, found with preadv2(RWF_NOWAIT) where the file system supports it. flush() reaches stable
// storage (fdatasync). discard() gives the space back: FALLOC_FL_PUNCH_HOLE on files and block
// devices (the kernel turns it into a discard that reads back zeros); writeZeroes() does the
// same, or writes zeros where the file system cannot punch holes (or refuses them some other way:
// zfs-fuse says EIO).
import {
  close,
  closeSync,
  constants,
  fdatasync,
  ftruncateSync,
  openSync,
  read,
  readSync,
  statfsSync,
  statSync,
  unlink,
  write,
  writeSync,
} from 'node:fs';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { type BlockBackend, BlockError, type BlockOp } from '../../devices/nvme/backend.js';
import { parseSize } from '../../devices/spec.js';

export { type BlockBackend, BlockError, type BlockOp, parseSize };

/** A failed system call as a BlockError: its errno code (EIO when it has none). */
function ioError(op: BlockOp, what: string, e: unknown): BlockError {
  const err = e as NodeJS.ErrnoException;
  return new BlockError(err.code ?? 'EIO', op, `${what}: ${err.message}`);
}

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const BLKGETSIZE64 = 0x80081272;

interface AsyncFn {
  async(...args: unknown[]): void;
}
/** File systems whose files live in memory: their I/O never waits for a device. */
const MEMORY_FS = new Set([0x01021994 /* TMPFS_MAGIC */, 0x858458f6 /* RAMFS_MAGIC */]);
/** preadv2() flag: fail with EAGAIN instead of waiting for I/O. */
const RWF_NOWAIT = 0x08;
const EAGAIN = 11;
/** The largest I/O done in place (a copy of this much is still far shorter than a pool hand-off
 *  plus the I/O on a busy machine); larger ones go to the thread pool whatever the file system. */
export const IN_PLACE_MAX = 1 << 20;

interface Libc {
  fallocate: AsyncFn;
  ioctl: (fd: number, req: number, ...a: unknown[]) => number;
  preadv2: (
    fd: number,
    iov: { base: Uint8Array; len: number }[],
    n: number,
    off: number,
    f: number,
  ) => number;
}
let libc: Libc | undefined;
function loadLibc(): NonNullable<typeof libc> {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    koffi.struct('pcinet_iovec', { base: 'void *', len: 'size_t' });
    libc = {
      fallocate: lib.func(
        'int fallocate(int fd, int mode, int64_t offset, int64_t len)',
      ) as unknown as AsyncFn,
      ioctl: lib.func('int ioctl(int fd, unsigned long req, ...)') as unknown as (
        fd: number,
        req: number,
        ...a: unknown[]
      ) => number,
      preadv2: lib.func(
        'long preadv2(int fd, const pcinet_iovec *iov, int n, int64_t off, int flags)',
      ) as unknown as Libc['preadv2'],
    };
  }
  return libc;
}

/** fallocate(2) in the thread pool; resolves with errno (0 on success). */
function fallocate(fd: number, mode: number, offset: number, length: number): Promise<number> {
  return new Promise((resolve, reject) => {
    loadLibc().fallocate.async(fd, mode, offset, length, (err: unknown, r: number) => {
      if (err) reject(err);
      else resolve(r < 0 ? koffi.errno() || 5 : 0);
    });
  });
}

const readAt = promisify(read);
const writeAt = promisify(write);
const datasync = promisify(fdatasync);

/** A file or a block device. Opened synchronously (at startup); every I/O is asynchronous. */
export class FileBackend implements BlockBackend {
  readonly #fd: number;
  readonly #deleteOnClose: string | undefined;
  /** A file in memory: all I/O up to IN_PLACE_MAX in place. */
  readonly #inMemory: boolean;
  /** Reads try preadv2(RWF_NOWAIT) first, until the file system says it cannot. */
  #noWait: boolean;
  #canPunch = true;
  #closed = false;
  /** I/O done in place and through the thread pool; the errno with which the file system refused
   *  a hole (then zeros are written instead), 0 while none was refused. */
  readonly stats = { inPlace: 0, pooled: 0, punchRefused: 0 };

  private constructor(
    fd: number,
    readonly size: number,
    readonly name: string,
    o: { deleteOnClose?: string; inMemory: boolean },
  ) {
    this.#fd = fd;
    this.#deleteOnClose = o.deleteOnClose;
    this.#inMemory = o.inMemory;
    this.#noWait = !o.inMemory;
  }

  /**
   * Opens `path`. A regular file that does not exist is created (sparse) with `size` bytes; one
   * that exists must have that size if it is given. A block device's size is its own (`size`, if
   * given, must match). Errors are one line naming the path.
   */
  static open(path: string, o: { size?: number; deleteOnClose?: boolean } = {}): FileBackend {
    let st: ReturnType<typeof statSync> | undefined;
    try {
      st = statSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`${path}: ${(e as Error).message}`);
    }
    if (!st && o.size === undefined) throw new Error(`${path} does not exist (give size= to create it)`);
    if (st && !st.isFile() && !st.isBlockDevice())
      throw new Error(`${path} is neither a regular file nor a block device`);
    let fd: number;
    try {
      fd = openSync(
        path,
        st ? constants.O_RDWR : constants.O_RDWR | constants.O_CREAT | constants.O_EXCL,
        0o600,
      );
    } catch (e) {
      throw new Error(`${path}: cannot open: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      let size: number;
      if (st?.isBlockDevice()) {
        const out = Buffer.alloc(8);
        if (loadLibc().ioctl(fd, BLKGETSIZE64, 'uint8_t *', out) < 0)
          throw new Error(`${path}: cannot get the device's size`);
        size = Number(out.readBigUInt64LE(0));
        if (o.size !== undefined && o.size !== size)
          throw new Error(`${path} has ${size} bytes, not size=${o.size}`);
      } else if (st) {
        size = Number(st.size);
        if (o.size !== undefined && o.size !== size) {
          throw new Error(`${path} has ${size} bytes, not size=${o.size} (remove it or give its size)`);
        }
      } else {
        size = o.size!;
        ftruncateSync(fd, size);
      }
      if (size <= 0) throw new Error(`${path} is empty`);
      const kind = st?.isBlockDevice() ? 'block device' : 'file';
      return new FileBackend(fd, size, `${kind} ${path}`, {
        deleteOnClose: o.deleteOnClose ? path : undefined,
        inMemory: !st?.isBlockDevice() && MEMORY_FS.has(Number(statfsSync(path).type)),
      });
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  #check(op: BlockOp, offset: number, length: number): void {
    if (this.#closed) throw new BlockError('EBADF', op, `${this.name}: closed`);
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new BlockError(
        'EINVAL',
        op,
        `${this.name}: [${offset}, +${length}) is outside ${this.size} bytes`,
      );
    }
  }

  readNow(offset: number, length: number, into?: Uint8Array): Uint8Array | undefined {
    // What cannot be done in place goes to read(), which tries nothing in place either then.
    if (length > IN_PLACE_MAX || !(this.#inMemory || this.#noWait)) return undefined;
    this.#check('read', offset, length);
    const buf = into ? (into.length === length ? into : into.subarray(0, length)) : new Uint8Array(length);
    let done: number;
    try {
      done = this.#readInPlace(buf, offset);
    } catch (e) {
      throw ioError('read', `${this.name}: read at ${offset}`, e);
    }
    // Part of it (the page cache held the start): read() does it whole.
    return done === length ? buf : undefined;
  }

  writeNow(offset: number, data: Uint8Array): boolean {
    if (!this.#inMemory || data.length > IN_PLACE_MAX) return false;
    this.#check('write', offset, data.length);
    try {
      for (let done = 0; done < data.length; )
        done += writeSync(this.#fd, data, done, data.length - done, offset + done);
    } catch (e) {
      throw ioError('write', `${this.name}: write at ${offset}`, e);
    }
    this.stats.inPlace++;
    return true;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.#check('read', offset, length);
    const buf = new Uint8Array(length);
    let done = 0;
    try {
      if (length <= IN_PLACE_MAX) done = this.#readInPlace(buf, offset);
      if (done < length) this.stats.pooled++;
      while (done < length) {
        const { bytesRead } = await readAt(this.#fd, buf, done, length - done, offset + done);
        if (bytesRead === 0) {
          buf.fill(0, done); // a file shorter than its size reads zeros past its end
          break;
        }
        done += bytesRead;
      }
    } catch (e) {
      throw ioError('read', `${this.name}: read at ${offset}`, e);
    }
    return buf;
  }

  /** Bytes read into `buf` without waiting for a device: all of them from a file in memory, what
   *  the page cache holds elsewhere (where RWF_NOWAIT works); 0 when it must go to the pool. */
  #readInPlace(buf: Uint8Array, offset: number): number {
    if (this.#inMemory) {
      let done = 0;
      while (done < buf.length) {
        const n = readSync(this.#fd, buf, done, buf.length - done, offset + done);
        if (n === 0) {
          buf.fill(0, done);
          break;
        }
        done += n;
      }
      this.stats.inPlace++;
      return buf.length;
    }
    if (!this.#noWait) return 0;
    const n = loadLibc().preadv2(this.#fd, [{ base: buf, len: buf.length }], 1, offset, RWF_NOWAIT);
    if (n > 0) {
      if (n === buf.length) this.stats.inPlace++;
      return n;
    }
    // EAGAIN: not cached. Anything else (EOPNOTSUPP: the file system cannot; a real error, which
    // the pool's read reports): stop trying.
    if (n < 0 && koffi.errno() !== EAGAIN) this.#noWait = false;
    return 0;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check('write', offset, data.length);
    let done = 0;
    try {
      if (this.#inMemory && data.length <= IN_PLACE_MAX) {
        while (done < data.length) done += writeSync(this.#fd, data, done, data.length - done, offset + done);
        this.stats.inPlace++;
        return;
      }
      this.stats.pooled++;
      while (done < data.length) {
        const { bytesWritten } = await writeAt(this.#fd, data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (e) {
      throw ioError('write', `${this.name}: write at ${offset}`, e);
    }
  }

  async flush(): Promise<void> {
    if (this.#closed) throw new BlockError('EBADF', 'flush', `${this.name}: closed`);
    try {
      await datasync(this.#fd);
    } catch (e) {
      throw ioError('flush', `${this.name}: flush`, e);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#check('discard', offset, length);
    if (length === 0) return;
    if (this.#canPunch) {
      const errno = await fallocate(this.#fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      if (errno === 0) return;
      // EOPNOTSUPP is the usual "this file system cannot"; others say it otherwise (zfs-fuse: EIO
      // for every hole). Writing the zeros decides: if that works, only punching is broken, and
      // zeros it is from now on; if it fails, that error is the command's.
      await this.#zero(offset, length);
      this.#canPunch = false;
      this.stats.punchRefused = errno;
      return;
    }
    await this.#zero(offset, length);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.discard(offset, length);
  }

  async #zero(offset: number, length: number): Promise<void> {
    const chunk = Buffer.alloc(Math.min(length, 1 << 20));
    for (let at = 0; at < length; at += chunk.length) {
      await this.write(offset + at, chunk.subarray(0, Math.min(chunk.length, length - at)));
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await promisify(close)(this.#fd);
    if (this.#deleteOnClose) await promisify(unlink)(this.#deleteOnClose).catch(() => {});
  }
}

/** RAM: for tests and throwaway disks. */
export class MemoryBackend implements BlockBackend {
  readonly name = 'memory';
  readonly #bytes: Uint8Array;

  constructor(readonly size: number) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new Error(`memory backend: bad size ${size}`);
    this.#bytes = new Uint8Array(size);
  }

  #check(op: BlockOp, offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new BlockError('EINVAL', op, `memory: [${offset}, +${length}) is outside ${this.size} bytes`);
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.readNow(offset, length);
  }

  readNow(offset: number, length: number, into?: Uint8Array): Uint8Array {
    this.#check('read', offset, length);
    const bytes = this.#bytes.subarray(offset, offset + length);
    if (!into) return bytes.slice();
    into.set(bytes);
    return into.subarray(0, length);
  }

  writeNow(offset: number, data: Uint8Array): boolean {
    this.#check('write', offset, data.length);
    this.#bytes.set(data, offset);
    return true;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check('write', offset, data.length);
    this.#bytes.set(data, offset);
  }

  async flush(): Promise<void> {}

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check('writeZeroes', offset, length);
    this.#bytes.fill(0, offset, offset + length);
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async close(): Promise<void> {}
}
