// DMA reads from to-device mappings sent straight from sim host memory (SoftIommu.lendRead,
// proto/replay.ts) over real TCP, the host's frames held back by a proxy that stops reading: what
// the endpoint receives is what host memory held when each read was served, even when the driver
// unmaps and overwrites the memory while completions are still queued in the host's socket or
// waiting in its replay buffer.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { loopPair } from '../../proto/loop.js';
import type { Session } from '../../proto/session.js';
import { long, MAX_DMA_CHUNK, type pcinet } from '../../proto/wire.js';
import type { SimChannel } from './channel.js';
import { tcpWorld, until } from './tcp-world.js';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** A proxy that, on the first connection, stops reading what the host sends while `hold()` is in
 *  force (the host's socket fills up and its writes queue); later connections pass everything. */
async function stall(targetPort: number) {
  let connections = 0;
  let firstClosed = false;
  let fromHost: net.Socket | undefined;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((host) => {
    const first = connections++ === 0;
    const ep = net.connect(targetPort, '127.0.0.1');
    for (const s of [host, ep]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        host.destroy();
        ep.destroy();
        if (first) firstClosed = true;
      });
    }
    host.on('data', (d) => ep.write(d));
    ep.on('data', (d) => host.write(d));
    if (first) fromHost = host;
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanup.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return {
    port: (server.address() as net.AddressInfo).port,
    hold: () => fromHost!.pause(),
    open: () => fromHost!.resume(),
    get firstClosed() {
      return firstClosed;
    },
    get connections() {
      return connections;
    },
  };
}

/** The host-agent and an endpoint over TCP, through `proxy` when given (tcp-world.ts). */
function world(proxy?: (port: number) => Promise<number>) {
  return tcpWorld({ cleanup, via: proxy, memory: 32 << 20 });
}

/** The endpoint reads `n` chunks from `iova` on, tags 1..n. */
function readChunks(ep: Session, iova: bigint, n: number): void {
  for (let i = 0; i < n; i++)
    ep.send({
      dmaRead: { dev: 1, tag: i + 1, iova: long(iova + BigInt(i * MAX_DMA_CHUNK)), length: MAX_DMA_CHUNK },
    });
  ep.flush();
}

/** `n` chunks of sim memory mapped for the device to read, chunk i filled with i + 1. */
function chunks(sim: SimChannel, n: number) {
  const buf = sim.memory.alloc(n * MAX_DMA_CHUNK);
  for (let i = 0; i < n; i++) buf.bytes.fill(i + 1, i * MAX_DMA_CHUNK, (i + 1) * MAX_DMA_CHUNK);
  return { bytes: buf.bytes, iova: sim.iommu.map(buf, 'to-device') };
}

/** Every completion whole and holding what its chunk held when served (chunk tag - 1 filled with tag). */
function expectServedBytes(cpls: pcinet.IDmaReadCpl[], n: number): void {
  expect(cpls.map((c) => c.tag).sort((a, b) => a! - b!)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
  for (const c of cpls) {
    const d = c.data!;
    expect(d.length).toBe(MAX_DMA_CHUNK);
    const wrong = d.findIndex((x) => x !== c.tag);
    expect(wrong, `completion ${c.tag}: byte ${wrong} is ${d[wrong]}`).toBe(-1);
  }
}

describe('DMA reads lent from sim host memory', () => {
  it('go out by reference, and the loans end when the endpoint acknowledges them', async () => {
    const w = await world();
    const n = 8;
    const src = chunks(w.sim, n);
    readChunks(w.ep, src.iova, n);
    await until(() => w.cpls.length === n, 'the completions');
    expectServedBytes(w.cpls, n);
    expect(w.sim.iommu.counters).toMatchObject({
      lentReads: n,
      lentBytes: n * MAX_DMA_CHUNK,
      loansTakenBack: 0,
    });
    await until(() => w.sim.iommu.loans === 0, 'the acknowledgements');
    expect(w.host.stats().resumes).toBe(0);
  });

  it('unmapped and overwritten while completions wait in the socket: those writes are dropped, the frames replayed from copies', async () => {
    let proxy: Awaited<ReturnType<typeof stall>> | undefined;
    const w = await world(async (port) => {
      proxy = await stall(port);
      return proxy.port;
    });
    const p = proxy!;
    p.hold();
    // Far more than loopback's socket buffers hold: the last completions wait in the host's queue.
    const n = 96;
    const src = chunks(w.sim, n);
    readChunks(w.ep, src.iova, n);
    await until(() => w.sim.iommu.counters.lentReads === n, 'every read served');
    await new Promise((r) => setTimeout(r, 50));
    // The driver gives up on the reads: unmaps, and reuses the memory.
    w.sim.iommu.unmap(src.iova);
    src.bytes.fill(0xee);
    expect(w.sim.iommu.counters.loansTakenBack).toBe(n);
    p.open();
    await until(() => w.cpls.length === n, 'the completions');
    expectServedBytes(w.cpls, n);
    // The connection whose queue read the memory ended; the rest came on the next one.
    expect(p.firstClosed).toBe(true);
    expect(p.connections).toBe(2);
    expect(w.host.stats().resumes).toBe(1);
    expect(w.host.closed).toBe(false);
  });

  it('overwritten by a device write through another mapping while unacknowledged: replayed as served', async () => {
    let proxy: Awaited<ReturnType<typeof stall>> | undefined;
    const w = await world(async (port) => {
      proxy = await stall(port);
      return proxy.port;
    });
    const p = proxy!;
    p.hold();
    const n = 96;
    const buf = w.sim.memory.alloc(n * MAX_DMA_CHUNK);
    for (let i = 0; i < n; i++) buf.bytes.fill(i + 1, i * MAX_DMA_CHUNK, (i + 1) * MAX_DMA_CHUNK);
    const toDevice = w.sim.iommu.map(buf, 'to-device');
    const fromDevice = w.sim.iommu.map(buf, 'from-device');
    readChunks(w.ep, toDevice, n);
    await until(() => w.sim.iommu.counters.lentReads === n, 'every read served');
    // The last chunk, overwritten by the device through the other mapping.
    const at = (n - 1) * MAX_DMA_CHUNK;
    expect(w.sim.iommu.deviceWrite(fromDevice + BigInt(at), new Uint8Array(MAX_DMA_CHUNK).fill(0xdd))).toBe(
      true,
    );
    expect(buf.bytes[at]).toBe(0xdd);
    expect(w.sim.iommu.counters.loansTakenBack).toBe(1);
    p.open();
    await until(() => w.cpls.length === n, 'the completions');
    expectServedBytes(w.cpls, n);
  });

  it('are copied on a transport that keeps what it is given (the in-process loop)', async () => {
    const w = await tcpWorld({
      cleanup,
      dial: (server) => {
        const [a, b] = loopPair();
        server.accept(b);
        return async () => a;
      },
    });
    const { sim } = w;
    const src = chunks(sim, 1);
    readChunks(w.ep, src.iova, 1);
    await until(() => w.cpls.length === 1, 'the completion');
    src.bytes.fill(0xee);
    expect(w.cpls[0]!.data!.every((x) => x === 1)).toBe(true);
    expect(sim.iommu.loans).toBe(0);
  });
});
