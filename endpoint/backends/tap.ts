// A TAP interface on the card's Linux as a virtio-net backend: frames the driver transmits are
// written to the TAP; frames the card's kernel sends out of the TAP go to the driver. The interface
// is created if absent, or attached if it exists (e.g. made persistent with `ip tuntap add`).
//
// Node has no ioctl, so TUNSETIFF goes through koffi (FFI into libc); everything else is plain
// fs.read/fs.write on the descriptor, each call one whole frame (IFF_NO_PI: no packet header).
import { closeSync, openSync, read, write } from 'node:fs';
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

type Ioctl = (fd: number, req: number, ...args: unknown[]) => number;
let ioctl: Ioctl | undefined;

function tunSetIff(fd: number, name: string): void {
  if (!ioctl) {
    const libc = koffi.load('libc.so.6');
    ioctl = libc.func('int ioctl(int fd, unsigned long req, ...)') as unknown as Ioctl;
  }
  const ifr = Buffer.alloc(40);
  ifr.write(name, 0, IFNAMSIZ - 1, 'ascii');
  ifr.writeUInt16LE(IFF_TAP | IFF_NO_PI, IFNAMSIZ);
  const r = ioctl!(fd, TUNSETIFF, 'uint8_t *', ifr);
  if (r < 0) {
    const errno = koffi.errno();
    const why =
      errno === 1 ? 'operation not permitted (needs CAP_NET_ADMIN, e.g. root)' : errno === 16 ? 'the interface is busy (another process has it open)' : errno === 22 ? 'invalid argument (is it a TUN, not a TAP, interface?)' : `errno ${errno}`;
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

  constructor(name: string) {
    this.name = checkTapName(name);
    let fd: number;
    try {
      fd = openSync('/dev/net/tun', 'r+');
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
    this.#readLoop();
  }

  #readLoop(): void {
    const buf = Buffer.allocUnsafe(MAX_FRAME);
    const next = () => {
      if (this.#closed) return;
      read(this.#fd, buf, 0, MAX_FRAME, null, (err, n) => {
        if (this.#closed) return;
        if (err) {
          // EAGAIN cannot happen on a blocking descriptor; anything else ends the backend.
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
    // A read blocked in the thread pool returns when the descriptor closes or the process ends.
    closeSync(this.#fd);
    for (const w of this.#waiters.splice(0)) w();
  }
}
