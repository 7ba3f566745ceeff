// The lab's ends of the guest's serial ports: unix-socket servers QEMU connects to at start-up
// (`-chardev socket,path=…`, client mode), so no polling for sockets QEMU would create.
import { createServer, type Server, type Socket } from 'node:net';
import { StringDecoder } from 'node:string_decoder';

/** Output kept in memory per stream; more is still passed to the callbacks, not kept. */
export const MAX_KEPT_BYTES = 64 << 20;

export class SerialPort {
  readonly #server: Server;
  #socket: Socket | undefined;
  #chunks: Buffer[] = [];
  #kept = 0;
  #truncated = false;
  readonly closed: Promise<void>;
  #onData: (chunk: Buffer) => void;

  private constructor(server: Server, onData: (chunk: Buffer) => void) {
    this.#server = server;
    this.#onData = onData;
    let done: () => void = () => {};
    this.closed = new Promise((r) => {
      done = r;
    });
    server.on('connection', (s) => {
      if (this.#socket) {
        s.destroy(); // one peer: QEMU
        return;
      }
      this.#socket = s;
      s.on('data', (d: Buffer) => this.#data(d));
      s.on('close', () => done());
      s.on('error', () => done());
    });
  }

  static listen(path: string, onData: (chunk: Buffer) => void): Promise<SerialPort> {
    return new Promise((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(path, () => resolve(new SerialPort(server, onData)));
    });
  }

  #data(d: Buffer): void {
    if (this.#kept + d.length <= MAX_KEPT_BYTES) {
      this.#chunks.push(d);
      this.#kept += d.length;
    } else {
      this.#truncated = true;
    }
    this.#onData(d);
  }

  text(): string {
    const s = Buffer.concat(this.#chunks).toString('utf8');
    return this.#truncated ? `${s}\n[lab: output beyond ${MAX_KEPT_BYTES} bytes not kept]\n` : s;
  }

  close(): void {
    this.#socket?.destroy();
    this.#server.close();
  }
}

/** Splits a byte stream into lines (without "\r\n"), calling `onLine` for each complete one. */
export function lineSplitter(onLine: (line: string) => void): { push(d: Buffer): void; flush(): void } {
  let pending = '';
  const decoder = new StringDecoder('utf8');
  return {
    push(d: Buffer) {
      pending += decoder.write(d);
      let nl = pending.indexOf('\n');
      while (nl >= 0) {
        onLine(pending.slice(0, nl).replace(/\r$/, ''));
        pending = pending.slice(nl + 1);
        nl = pending.indexOf('\n');
      }
    },
    flush() {
      pending += decoder.end();
      if (pending) onLine(pending.replace(/\r$/, ''));
      pending = '';
    },
  };
}
