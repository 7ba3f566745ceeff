// A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than calling
// cpio(1) so the archive is a pure function of its entries: same inputs, same bytes, same hash.

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Uint8Array; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; major: number; minor: number; mode?: number };

const NEWC_MAGIC = '070701';
const TRAILER = 'TRAILER!!!';

/** File type bits of st_mode (inode(7)). */
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function header(
  ino: number,
  mode: number,
  size: number,
  nlink: number,
  name: string,
  rdev: [number, number] = [0, 0],
): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const fields = [
    NEWC_MAGIC,
    hex8(ino),
    hex8(mode),
    hex8(0), // uid
    hex8(0), // gid
    hex8(nlink),
    hex8(0), // mtime: fixed, so the archive is reproducible
    hex8(size),
    hex8(0), // devmajor
    hex8(0), // devminor
    hex8(rdev[0]),
    hex8(rdev[1]),
    hex8(nameBytes.length),
    hex8(0), // check
  ].join('');
  const head = Buffer.concat([Buffer.from(fields, 'ascii'), nameBytes]);
  return Buffer.concat([head, Buffer.alloc(pad4(head.length))]);
}

export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, '');
    if (path === '' || path.split('/').includes('..')) throw new Error(`cpio: bad path "${e.path}"`);
    let body: Buffer;
    let mode: number;
    let rdev: [number, number] = [0, 0];
    switch (e.kind) {
      case 'dir':
        body = Buffer.alloc(0);
        mode = S_IFDIR | (e.mode ?? 0o755);
        break;
      case 'file':
        body = Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength);
        mode = S_IFREG | (e.mode ?? 0o644);
        break;
      case 'symlink':
        body = Buffer.from(e.target, 'utf8');
        mode = S_IFLNK | 0o777;
        break;
      case 'chardev':
        body = Buffer.alloc(0);
        mode = S_IFCHR | (e.mode ?? 0o600);
        rdev = [e.major, e.minor];
        break;
    }
    parts.push(header(ino++, mode, body.length, e.kind === 'dir' ? 2 : 1, path, rdev));
    parts.push(body, Buffer.alloc(pad4(body.length)));
  }
  parts.push(header(0, 0, 0, 1, TRAILER));
  return Buffer.concat(parts);
}
