// A TAP interface on the card's Linux as a virtio-net backend: frames the driver transmits are
// written to the TAP; frames the card's kernel sends out of the TAP go to the driver. The interface
// is created if absent, or attached if it exists (e.g. made persistent with `ip tuntap add`).
//
// Node has no ioctl, so TUNSETIFF goes through koffi (FFI into libc); everything else is plain
// fs.read/fs.write on the descriptor, each call one whole frame (IFF_NO_PI: no packet header).
//
// The link follows the TAP's administrative state: `ip link set NAME down` on the card takes the
// NIC's link down for the workstation, `up` brings it back (SIOCGIFFLAGS on a socket of this
// process's network namespace, every LINK_POLL_MS; sysfs would show the namespace it was mounted
// in). A TAP this backend creates starts down until the card configures it.
import { closeSync, constants, openSync, read, write } from 'node:fs';
import koffi from 'koffi';
import type { NetBackend } from '../../devices/virtio-net/device.js';

const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFNAMSIZ = 16;
/** Largest frame we read (a TAP with a 64 KiB MTU and an Ethernet header). */
const MAX_FRAME = 65536 + 14;
/** Frames written to the TAP but not yet accepted: the TX queue waits beyond this. */
const MAX_WRITES_IN_FLIGHT = 64;
const LINK_POLL_MS = 250;
const IFF_UP = 0x1;

const SIOCGIFFLAGS = 0x8913;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

const POLLIN = 0x1;
/** A reader waits for frames in poll() calls this long, so no thread is ever blocked for good. */
const READ_POLL_MS = 200;

type Ioctl = (fd: number, req: number, ...args: unknown[]) => number;
interface AsyncPoll {
  async(fds: Buffer, nfds: number, timeout: number, cb: (err: unknown, res: number) => void): void;
}
let libc:
  | { ioctl: Ioctl; socket: (domain: number, type: number, proto: number) => number; poll: AsyncPoll }
  | undefined;

function loadLibc(): NonNullable<typeof libc> {
  if (!libc) {
    const lib = koffi.load('libc.so.6');
    libc = {
      ioctl: lib.func('int ioctl(int fd, unsigned long req, ...)') as unknown as Ioctl,
      socket: lib.func('int socket(int domain, int type, int protocol)') as unknown as (
        d: number,
        t: number,
        p: number,
      ) => number,
      poll: lib.func('int poll(uint8_t *fds, unsigned long nfds, int timeout)') as unknown as AsyncPoll,
    };
  }
  return libc;
}

/** A socket to ask the kernel about interfaces of this process's network namespace. */
function ifSocket(): number | undefined {
  const fd = loadLibc().socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  return fd < 0 ? undefined : fd;
}

/** The interface's flags (IFF_*), or undefined when it cannot be asked. */
function ifFlags(sock: number | undefined, name: string): number | undefined {
  if (sock === undefined) return undefined;
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0, IFNAMSIZ - 1, 'ascii');
  if (loadLibc().ioctl(sock, SIOCGIFFLAGS, 'uint8_t *', ifr) < 0) return undefined;
  return ifr.readUInt16LE(IFNAMSIZ);
}

function tunSetIff(fd: number, name: string): void {
  const { ioctl } = loadLibc();
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0, IFNAMSIZ - 1, 'ascii');
  ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI, IFNAMSIZ);
  const r = ioctl(fd, TUNSETIFF, 'uint8_t *', ifr);
  if (r < 0) {
    const errno = koffi.errno();
    const why =
      errno === 1
        ? 'operation not permitted (needs CAP_NET_ADMIN, e.g. root)'
        : errno === 16
          ? 'the interface is busy (another process has it open)'
          : errno === 22
            ? 'invalid argument (is it a TUN, not a TAP, interface?)'
            : `errno ${errno}`;
    throw new Error(`tap ${name}: TUNSETIFF failed: ${why}`);
  }
}

export function checkTapName(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) {
    throw new Error(`tap name "${name}" is not 1..15 letters, digits, '_', '.', '-'`);
  }
  return name;
}

export class TapBackend implements NetBackend {
  readonly name: string;
  onReceive: ((frame: Uint8Array) => void) | undefined;
  readonly #fd: number;
  #closed = false;
  #inFlight = 0;
  #waiters: (() => void)[] = [];
  /** Write errors (e.g. the interface is down: EIO): counted, the frame is lost like on a wire. */
  writeErrors = 0;
  onLink: ((up: boolean) => void) | undefined;
  #linkUp = false;
  readonly #linkTimer: NodeJS.Timeout;
  readonly #sock: number | undefined;

  constructor(name: string) {
    this.name = checkTapName(name);
    let fd: number;
    try {
      fd = openSync('/dev/net/tun', constants.O_RDWR | constants.O_NONBLOCK);
    } catch (e) {
      throw new Error(`tap ${name}: cannot open /dev/net/tun: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
    try {
      tunSetIff(fd, name);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.#fd = fd;
    this.#sock = ifSocket();
    this.#linkUp = this.#adminUp(ifFlags(this.#sock, this.name));
    this.#linkTimer = setInterval(() => this.#pollLink(), LINK_POLL_MS);
    this.#linkTimer.unref();
    this.#readLoop();
  }

  get linkUp(): boolean {
    return this.#linkUp;
  }

  #adminUp(flags: number | undefined): boolean {
    return flags === undefined ? this.#linkUp : (flags & IFF_UP) !== 0;
  }

  #pollLink(): void {
    if (this.#closed) return;
    const up = this.#adminUp(ifFlags(this.#sock, this.name));
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    this.onLink?.(up);
  }

  /**
   * Reads frames until closed. The descriptor is non-blocking: when no frame is waiting, a poll()
   * of at most READ_POLL_MS runs in the thread pool, so closing (or exiting) never waits on a read
   * that no frame will ever end.
   */
  #readLoop(): void {
    const buf = Buffer.allocUnsafe(MAX_FRAME);
    const pfd = Buffer.alloc(8);
    pfd.writeInt32LE(this.#fd, 0);
    pfd.writeInt16LE(POLLIN, 4);
    const next = () => {
      if (this.#closed) return;
      read(this.#fd, buf, 0, MAX_FRAME, null, (err, n) => {
        if (this.#closed) return;
        if (err?.code === 'EAGAIN') {
          loadLibc().poll.async(pfd, 1, READ_POLL_MS, () => next());
          return;
        }
        if (err) {
          this.#closed = true;
          return;
        }
        if (n > 0) this.onReceive?.(Uint8Array.prototype.slice.call(buf, 0, n));
        next();
      });
    };
    next();
  }

  send(frame: Uint8Array): void | Promise<void> {
    if (this.#closed) return;
    this.#inFlight++;
    write(this.#fd, frame, 0, frame.length, null, (err) => {
      this.#inFlight--;
      if (err) this.writeErrors++;
      const w = this.#waiters.shift();
      w?.();
    });
    if (this.#inFlight >= MAX_WRITES_IN_FLIGHT) return new Promise((resolve) => this.#waiters.push(resolve));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#linkTimer);
    if (this.#sock !== undefined) closeSync(this.#sock);
    // A read blocked in the thread pool returns when the descriptor closes or the process ends.
    closeSync(this.#fd);
    for (const w of this.#waiters.splice(0)) w();
  }
}
