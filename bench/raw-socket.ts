// Reference for bench/transport: raw TCP throughput between two processes over loopback. The sink
// runs in a child process (this file, run with `sink`), the source in the caller's process. With
// `work`, the two ends also do the per-byte work the test device and the sim host do on pcinet's
// path, so pcinet's own cost shows apart from theirs: 'pattern' (DMA write: the source generates
// the device's xorshift pattern, the sink copies every byte into a host buffer) or 'crc' (DMA read:
// the source copies every chunk out of a host buffer, the sink puts 4 MiB together and CRCs them).
import { fork, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { TEST_MAX_DMA, testPattern } from '../devices/test/regs.js';

/** What the ends do per byte besides moving it (see above). */
export type RawWork = 'none' | 'pattern' | 'crc';

let ticksPerSecond: number | undefined;

/** CPU time process `pid` has used, in ms, from /proc (clock-tick resolution): user + system, and
 *  user alone. */
export function cpuOf(pid: number): { ms: number; userMs: number } {
  ticksPerSecond ??= Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces), from field 3: utime is 14, stime 15.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const tick = 1000 / ticksPerSecond;
  return { ms: (Number(f[11]) + Number(f[12])) * tick, userMs: Number(f[11]) * tick };
}

export const cpuMsOf = (pid: number): number => cpuOf(pid).ms;

/** This process's CPU time in ms: user + system, and user alone. */
export function ownCpu(): { ms: number; userMs: number } {
  const u = process.cpuUsage();
  return { ms: (u.user + u.system) / 1000, userMs: u.user / 1000 };
}

export const ownCpuMs = (): number => ownCpu().ms;

export interface Throughput {
  bytesPerSecond: number;
  /** CPU both processes used for it, in ms. */
  cpuMs: number;
  /** Of which in user space (JavaScript, V8's threads, libuv; the rest is the kernel's). */
  userMs: number;
}

/** Streams `totalBytes` in `chunkBytes` writes to a child process: bytes per second, measured from
 *  the first write until the child reports it has received everything, and the CPU both used. */
export async function rawSocketThroughput(
  totalBytes: number,
  chunkBytes: number,
  work: RawWork = 'none',
): Promise<Throughput> {
  const child = fork(fileURLToPath(import.meta.url), ['sink', String(totalBytes), work], {
    stdio: 'inherit',
  });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.once('message', (m) => resolve(Number(m)));
      child.once('exit', (code) => reject(new Error(`sink exited early (${code})`)));
    });
    const done = new Promise<void>((resolve) => child.once('message', () => resolve()));
    const sock = connect({ host: '127.0.0.1', port, noDelay: true });
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const chunk = Buffer.alloc(chunkBytes, 0xa5);
    const memory = new Uint8Array(TEST_MAX_DMA).fill(0x5a);
    let block: Uint8Array = chunk;
    const own0 = ownCpu();
    const sink0 = cpuOf(child.pid!);
    const start = process.hrtime.bigint();
    for (let sent = 0; sent < totalBytes; sent += chunkBytes) {
      const at = sent % TEST_MAX_DMA;
      let out: Uint8Array = chunk;
      if (work === 'pattern') {
        if (at === 0) block = testPattern(sent / TEST_MAX_DMA + 1, TEST_MAX_DMA);
        out = block.subarray(at, at + chunkBytes);
      } else if (work === 'crc') out = memory.slice(at, at + chunkBytes);
      if (!sock.write(out)) await new Promise((r) => sock.once('drain', r));
    }
    await done;
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const own = ownCpu();
    const sink = cpuOf(child.pid!);
    sock.destroy();
    return {
      bytesPerSecond: totalBytes / seconds,
      cpuMs: own.ms - own0.ms + sink.ms - sink0.ms,
      userMs: own.userMs - own0.userMs + sink.userMs - sink0.userMs,
    };
  } finally {
    child.kill();
  }
}

function sink(totalBytes: number, work: RawWork): void {
  const host = new Uint8Array(TEST_MAX_DMA);
  let crcs = 0;
  const server = createServer((sock) => {
    let got = 0;
    sock.on('data', (d: Buffer) => {
      for (let i = 0; i < d.length; ) {
        const at = (got + i) % TEST_MAX_DMA;
        const n = Math.min(d.length - i, TEST_MAX_DMA - at);
        if (work !== 'none') host.set(d.subarray(i, i + n), at);
        if (work === 'crc' && at + n === TEST_MAX_DMA) crcs ^= crc32(host);
        i += n;
      }
      got += d.length;
      if (got >= totalBytes) {
        process.send?.(`done ${crcs >>> 0}`);
        sock.destroy();
        server.close();
      }
    });
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port));
}

if (process.argv[2] === 'sink') sink(Number(process.argv[3]), (process.argv[4] ?? 'none') as RawWork);
