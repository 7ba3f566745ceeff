// DmaWrite data read straight into sim host memory (proto/frame-place.ts, SimFunction.placeDmaWrite)
// over real TCP, the endpoint's frames passed through a gate that holds bytes back at a chosen
// point of a frame: the data lands while the write is allowed and the messages before it are
// applied, never after an unmap or bus mastering off (the connection ends instead; the frame comes
// again and is refused as any decoded write would be), never while an attach before it is pending.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PCI_COMMAND, PCI_COMMAND_MASTER } from '../../devices/pci/config.js';
import { TestDevice } from '../../devices/test/device.js';
import { wireDescription } from '../../endpoint/describe.js';
import { long, MAX_DMA_CHUNK } from '../../proto/wire.js';
import type { Channel } from '../channel.js';
import type { SimChannel } from './channel.js';
import { tcpWorld, until } from './tcp-world.js';

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** A proxy whose endpoint -> host bytes pass only as far as allowed (`allow`), on the first
 *  connection; later ones (the host's redials) pass everything. */
async function gate(targetPort: number) {
  let allowed = Number.POSITIVE_INFINITY;
  let passed = 0;
  let connections = 0;
  let firstClosed = false;
  const held: Buffer[] = [];
  let toHost: net.Socket | undefined;
  const pump = () => {
    while (toHost && held.length > 0 && passed < allowed) {
      const c = held[0]!;
      const n = Math.min(c.length, allowed - passed);
      toHost.write(c.subarray(0, n));
      passed += n;
      if (n === c.length) held.shift();
      else held[0] = c.subarray(n);
    }
  };
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
    if (first) {
      toHost = host;
      ep.on('data', (d: Buffer) => {
        held.push(d);
        pump();
      });
    } else ep.on('data', (d) => host.write(d));
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
    /** From now on, pass endpoint -> host bytes only up to `n` more. */
    allow(n: number) {
      allowed = passed + n;
      pump();
    },
    open() {
      allowed = Number.POSITIVE_INFINITY;
      pump();
    },
    get firstClosed() {
      return firstClosed;
    },
    get connections() {
      return connections;
    },
  };
}

/** The host-agent and an endpoint over TCP behind a gate (tcp-world.ts). */
async function world(channelOf?: (sim: SimChannel) => Channel) {
  let g: Awaited<ReturnType<typeof gate>> | undefined;
  const w = await tcpWorld({
    cleanup,
    channelOf,
    via: async (port) => {
      g = await gate(port);
      return g.port;
    },
  });
  const { sim } = w;
  /** A buffer of sim host memory mapped for the device to write. */
  const buffer = (len: number) => {
    const buf = sim.memory.alloc(len);
    return { bytes: buf.bytes, iova: sim.iommu.map(buf, 'from-device') };
  };
  return { ...w, gate: g!, buffer };
}

const count = (b: Uint8Array, v: number) => b.reduce((n, x) => n + (x === v ? 1 : 0), 0);

describe('DmaWrite data read into sim host memory', () => {
  it('lands where the write goes, with no copy, and what follows it in the frame is applied after it', async () => {
    const w = await world();
    const dst = w.buffer(MAX_DMA_CHUNK);
    const done = w.buffer(64);
    const data = new Uint8Array(MAX_DMA_CHUNK).fill(0xab);
    let seenAtMarker = -1;
    const deliver = w.fn.deliver.bind(w.fn);
    w.fn.deliver = (m) => {
      deliver(m);
      // The marker after the data in the same frame: the data is all there by then.
      if (m.dmaWrite && m.dmaWrite.data?.length === 1) seenAtMarker = count(dst.bytes, 0xab);
    };
    w.ep.send({ dmaWrite: { dev: 1, iova: long(dst.iova), data } }, data);
    w.ep.send({ dmaWrite: { dev: 1, iova: long(done.iova), data: Uint8Array.of(1) } });
    w.ep.flush();
    await until(() => done.bytes[0] === 1, 'the marker');
    expect(seenAtMarker).toBe(MAX_DMA_CHUNK);
    expect(w.sim.iommu.counters).toMatchObject({
      placedWrites: 1,
      placedBytes: MAX_DMA_CHUNK,
      writeFaults: 0,
    });
    expect(w.host.stats().resumes).toBe(0);
  });

  for (const what of ['unmapped', 'bus mastering turned off'] as const) {
    it(`stops writing a place the moment its mapping is ${what} mid-frame; the frame comes again and is refused`, async () => {
      const w = await world();
      const dst = w.buffer(MAX_DMA_CHUNK);
      const done = w.buffer(64);
      const data = new Uint8Array(MAX_DMA_CHUNK).fill(0xab);
      // The frame's head and about 100 KiB of its data, then nothing until the test says.
      w.gate.allow(100_000);
      w.ep.send({ dmaWrite: { dev: 1, iova: long(dst.iova), data } }, data);
      w.ep.send({ dmaWrite: { dev: 1, iova: long(done.iova), data: Uint8Array.of(1) } });
      w.ep.flush();
      await until(() => count(dst.bytes, 0xab) > 60_000, 'part of the data in place');
      await new Promise((r) => setTimeout(r, 20));
      const landed = count(dst.bytes, 0xab);
      if (what === 'unmapped') w.sim.iommu.unmap(dst.iova);
      else w.fn.configWrite(PCI_COMMAND, 2, w.fn.configRead(PCI_COMMAND, 2) & ~PCI_COMMAND_MASTER);
      w.gate.open();
      // The host ended that connection; everything else of the frame arrives on the next one.
      await until(() => w.gate.firstClosed && w.host.stats().resumes === 1, 'a resume');
      expect(landed).toBeGreaterThan(60_000);
      expect(landed).toBeLessThan(MAX_DMA_CHUNK);
      if (what === 'bus mastering turned off') {
        // The replayed frame is refused whole: the write and the marker after it.
        await until(() => w.fn.counters.dmaWriteFaults === 2, 'both writes refused');
        expect(count(dst.bytes, 0xab)).toBe(landed);
        expect(done.bytes[0]).toBe(0);
        expect(w.sim.iommu.counters.placedWrites).toBe(0);
        return;
      }
      await until(() => done.bytes[0] === 1, 'the marker');
      // Nothing more was written after the unmap: neither by the socket nor by the replayed write.
      expect(count(dst.bytes, 0xab)).toBe(landed);
      expect(w.sim.iommu.counters).toMatchObject({ placesCancelled: 1, writeFaults: 1, placedWrites: 0 });
      expect(w.host.closed).toBe(false);
    });
  }

  it('is not placed while an attach before it is pending: host memory is untouched until the attach is done', async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    const w = await world((sim) => ({
      name: 'sim',
      placesDmaWrites: true,
      attach: async (dev, desc, sink) => {
        if (dev === 2) await held;
        return sim.attach(dev, desc, sink);
      },
      close: () => sim.close(),
    }));
    const dst = w.buffer(MAX_DMA_CHUNK);
    const data = new Uint8Array(MAX_DMA_CHUNK).fill(0xcd);
    w.ep.send({ attach: { dev: 2, desc: wireDescription(new TestDevice().description) } });
    w.ep.flush();
    w.ep.send({ dmaWrite: { dev: 1, iova: long(dst.iova), data } }, data);
    w.ep.flush();
    // Every byte of the DmaWrite's frame has reached the host, and none of it host memory.
    await until(() => w.host.stats().bytesIn > MAX_DMA_CHUNK, 'the frames');
    await new Promise((r) => setTimeout(r, 50));
    expect(count(dst.bytes, 0xcd)).toBe(0);
    release();
    await until(() => count(dst.bytes, 0xcd) === MAX_DMA_CHUNK, 'the write, after the attach');
    expect(w.relay.devices.map((d) => d.dev).sort()).toEqual([1, 2]);
    expect(w.sim.iommu.counters.placedWrites).toBe(0);
  });
});
