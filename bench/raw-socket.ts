// Reference for bench/transport: raw TCP throughput between two processes over loopback. The sink
// runs in a child process (this file, run with `sink`), the source in the caller's process.
import { fork } from 'node:child_process';
import { type AddressInfo, connect, createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

/** Streams `totalBytes` in `chunkBytes` writes to a child process and returns bytes per second,
 *  measured from the first write until the child reports it has received everything. */
export async function rawSocketThroughput(totalBytes: number, chunkBytes: number): Promise<number> {
  const child = fork(fileURLToPath(import.meta.url), ['sink', String(totalBytes)], { stdio: 'inherit' });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m) => resolve(Number(m)));
      child.once('exit', (code) => reject(new Error(`sink exited early (${code})`)));
    });
    const done = new Promise<void>((resolve) => child.once('message', () => resolve()));
    const sock = connect({ host: '127.0.0.1', port, noDelay: true });
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const chunk = Buffer.alloc(chunkBytes, 0xa5);
    const start = process.hrtime.bigint();
    for (let sent = 0; sent < totalBytes; sent += chunkBytes) {
      if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
    }
    await done;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    sock.destroy();
    return totalBytes / seconds;
  } finally {
    child.kill();
  }
}

function sink(totalBytes: number): void {
  const server = createServer((sock) => {
    let got = 0;
    sock.on('data', (d) => {
      got += d.length;
      if (got >= totalBytes) {
        process.send?.('done');
        sock.destroy();
        server.close();
      }
    });
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port));
}

if (process.argv[2] === 'sink') sink(Number(process.argv[3]));
