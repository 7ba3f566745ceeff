// A TAP interface on the card's Linux as a virtio-net backend: frames the driver transmits are
// written to the TAP; frames the card's kernel sends out of the TAP go to the driver. The interface
// is created if absent, or attached if it exists (e.g. made persistent with `ip tuntap add`).
//
// Node has no ioctl, so TUNSETIFF goes through koffi (FFI into libc); everything else is plain
// fs.read/fs.write on the descriptor, each call one whole frame (IFF_NO_PI: no packet header).
//
// With `netHeader` the TAP is opened with IFF_VNET_HDR: every frame both ways starts with the
// 12-byte virtio net header (little-endian, TUNSETVNETHDRSZ/TUNSETVNETLE), so virtio-net's checksum
// and TSO offloads pass straight through to the card's kernel, which checks each header as it does
// a VM's and segments or checksums whatever leaves the card on an interface that cannot. What the
// driver takes on received frames is set with TUNSETOFFLOAD (setOffloads); until then the kernel
// hands over only complete, checksummed frames.
//
// The link follows the TAP's administrative state: `ip link set NAME down` on the card takes the
// NIC's link down for the workstation, `up` brings it back (SIOCGIFFLAGS on a socket of this
// process's network namespace, every LINK_POLL_MS; sysfs would show the namespace it was mounted
// in). A TAP this backend creates starts down until the card configures it.
import { closeSync, constants, openSync, read, readSync, writeSync } from 'node:fs';
import koffi from 'koffi';
import { checkTapName, type NetBackend, type RxOffloads } from '../../devices/virtio-net/device.js';

export { checkTapName };

const TUNSETIFF = 0x400454ca;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const TUNSETVNETLE = 0x400454dc;
const TUN_F_CSUM = 0x1;
const TUN_F_TSO4 = 0x2;
const TUN_F_TSO6 = 0x4;
const TUN_F_TSO_ECN = 0x8;
/** struct virtio_net_hdr_v1 (with num_buffers), as virtio-net's NET_HDR_SIZE. */
const VNET_HDR_SIZE = 12;
const IFNAMSIZ = 16;
/** Largest frame we read: a 64 KiB IP packet (a TSO segment, or a TAP with a 64 KiB MTU), its
 *  Ethernet and VLAN headers and the net header. */
const MAX_FRAME = VNET_HDR_SIZE + 18 + 65535;
const LINK_POLL_MS = 250;
const IFF_UP = 0x1;

const SIOCGIFFLAGS = 0x8913;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

const POLLIN = 0x1;
/** A reader waits for frames in poll() calls this long, so no thread is ever blocked for good. */
const READ_POLL_MS = 200;
/** Frames one wakeup hands over at most: after a read from the thread pool, those already
 *  waiting are read at once (the descriptor is non-blocking), so the device serves them in one
 *  round — one interrupt and one reply on the link instead of one each. */
export const READ_BURST = 32;

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

function tunSetIff(fd: number, name: string, netHeader: boolean): void {
  const { ioctl } = loadLibc();
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0, IFNAMSIZ - 1, 'ascii');
  ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI | (netHeader ? IFF_VNET_HDR : 0), IFNAMSIZ);
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
  if (!netHeader) return;
  // The header's size and byte order (little-endian, as virtio 1.x; a big-endian card needs it).
  for (const [req, what] of [
    [TUNSETVNETHDRSZ, VNET_HDR_SIZE],
    [TUNSETVNETLE, 1],
  ] as const) {
    const v = Buffer.alloc(4);
    v.writeInt32LE(what);
    if (ioctl(fd, req, 'uint8_t *', v) < 0)
      throw new Error(`tap ${name}: setting up net headers failed: errno ${koffi.errno()}`);
  }
  tunSetOffload(fd, name, 0);
}

function tunSetOffload(fd: number, name: string, flags: number): void {
  if (loadLibc().ioctl(fd, TUNSETOFFLOAD, 'unsigned long', flags) < 0)
    throw new Error(`tap ${name}: TUNSETOFFLOAD 0x${flags.toString(16)} failed: errno ${koffi.errno()}`);
}

/** TUN_F_* for what a driver takes; TSO only with checksums (the kernel refuses it alone). */
export function tunOffloadFlags(o: RxOffloads): number {
  if (!o.csum) return 0;
  return (
    TUN_F_CSUM |
    (o.tso4 ? TUN_F_TSO4 : 0) |
    (o.tso6 ? TUN_F_TSO6 : 0) |
    (o.ecn && (o.tso4 || o.tso6) ? TUN_F_TSO_ECN : 0)
  );
}

export interface TapOptions {
  /** Frames carry virtio net headers and offloads pass through (IFF_VNET_HDR). */
  netHeader?: boolean;
}

export class TapBackend implements NetBackend {
  readonly name: string;
  readonly netHeader: boolean;
  onReceive: ((frame: Uint8Array) => void) | undefined;
  readonly #fd: number;
  #closed = false;
  /** Write errors (e.g. the interface is down: EIO): counted, the frame is lost like on a wire. */
  writeErrors = 0;
  /** TUNSETOFFLOAD calls the kernel refused. */
  offloadErrors = 0;
  onLink: ((up: boolean) => void) | undefined;
  #linkUp = false;
  readonly #linkTimer: NodeJS.Timeout;
  readonly #sock: number | undefined;

  constructor(name: string, o: TapOptions = {}) {
    this.name = checkTapName(name);
    this.netHeader = o.netHeader === true;
    let fd: number;
    try {
      fd = openSync('/dev/net/tun', constants.O_RDWR | constants.O_NONBLOCK);
    } catch (e) {
      throw new Error(`tap ${name}: cannot open /dev/net/tun: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
    try {
      tunSetIff(fd, name, this.netHeader);
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
   * that no frame will ever end. A frame read through the thread pool is followed by up to
   * READ_BURST - 1 more read synchronously, as long as frames are waiting: all of them reach
   * onReceive in the same turn of the event loop.
   */
  #readLoop(): void {
    const buf = Buffer.allocUnsafe(MAX_FRAME);
    const pfd = Buffer.alloc(8);
    pfd.writeInt32LE(this.#fd, 0);
    pfd.writeInt16LE(POLLIN, 4);
    const deliver = (n: number) => {
      if (n > 0) this.onReceive?.(Uint8Array.prototype.slice.call(buf, 0, n));
    };
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
        deliver(n);
        for (let i = 1; i < READ_BURST && !this.#closed; i++) {
          try {
            deliver(readSync(this.#fd, buf, 0, MAX_FRAME, null));
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') this.#closed = true;
            break;
          }
        }
        next();
      });
    };
    next();
  }

  /** What the driver takes on received frames (TUNSETOFFLOAD): the kernel segments and checksums
   *  the rest before handing it over. */
  setOffloads(o: RxOffloads): void {
    if (this.#closed || !this.netHeader) return;
    try {
      tunSetOffload(this.#fd, this.name, tunOffloadFlags(o));
    } catch {
      // The kernel keeps the previous setting; frames the driver cannot take are dropped and
      // counted by the device (rxDropOffload).
      this.offloadErrors++;
    }
  }

  /**
   * Writes one frame. Synchronously: a TAP write never waits (the kernel takes the frame into its
   * stack or drops it), and frames must reach the wire in the order the driver sent them —
   * writes spread over the thread pool overtake each other, and TCP through the card saw
   * reordering and spurious retransmissions.
   */
  send(frame: Uint8Array): void {
    if (this.#closed) return;
    try {
      writeSync(this.#fd, frame, 0, frame.length);
    } catch {
      // EIO while the interface is down, EINVAL for a header the kernel refuses: lost like on a wire.
      this.writeErrors++;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#linkTimer);
    if (this.#sock !== undefined) closeSync(this.#sock);
    // A read blocked in the thread pool returns when the descriptor closes or the process ends.
    closeSync(this.#fd);
  }
}
