// Stream transports reading into buffers of the parser's choosing (net's `onread`, on dialed and on
// accepted plain TCP): large frames land straight in their own buffers, everything else in a reused
// scratch buffer. Frames are checked only after all of them arrived, so a frame that shares memory with a
// later read shows.
import net from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { encodeMsg, encodeSequenced } from './codec.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { LINK_HELLO_SIZE, LINK_MAGIC } from './kernel-abi.js';
import { adoptWithReads, dialTcp, type LinkHello, listenTcp } from './tcp.js';
import type { Transport } from './transport.js';

const servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** The stream of length-prefixed frames of these sizes, frame i filled with i + 1. */
function stream(sizes: number[]): Buffer {
  return Buffer.concat(
    sizes.map((n, i) => {
      const b = Buffer.alloc(4 + n, (i + 1) & 0xff);
      b.writeUInt32LE(n, 0);
      return b;
    }),
  );
}

function expectFrames(frames: Uint8Array[], sizes: number[]): void {
  expect(frames.map((f) => f.length)).toEqual(sizes);
  for (const [i, f] of frames.entries()) expect(f.every((x) => x === ((i + 1) & 0xff))).toBe(true);
}

const SIZES = fc.array(fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1, max: 300_000 })), {
  minLength: 1,
  maxLength: 12,
});

describe('FrameParser reading into its own buffers', () => {
  it('returns every frame intact whatever the reads return (1000 streams)', () => {
    fc.assert(
      fc.property(SIZES, fc.array(fc.integer({ min: 1, max: 1 << 20 }), { minLength: 1 }), (sizes, reads) => {
        const bytes = stream(sizes);
        const p = new FrameParser();
        const frames: Uint8Array[] = [];
        for (let at = 0, i = 0; at < bytes.length; i++) {
          const into = p.readBuffer();
          const n = Math.min(into.length, bytes.length - at, reads[i % reads.length]!);
          into.set(bytes.subarray(at, at + n));
          at += n;
          frames.push(...(p.filled(n) as Uint8Array[]));
        }
        expect(p.pending).toBe(0);
        expectFrames(frames, sizes);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('dialed TCP transport', () => {
  it('delivers frames of every size intact, large ones read straight into their buffers', async () => {
    const sizes = [10, 200_000, 7, 70_000, 65_536, 16_387, 1, 1 << 20, 3, 100_000];
    const all = Array.from({ length: 8 }, () => sizes).flat();
    const server = net.createServer((s) => s.end(stream(all)));
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const t = await dialTcp('127.0.0.1', (server.address() as net.AddressInfo).port);
    const frames: Uint8Array[] = [];
    await new Promise<void>((resolve) => {
      t.on('frame', (f) => frames.push(f));
      t.on('close', () => resolve());
    });
    expectFrames(frames, all);
  });
});

describe('sending on a TCP transport', () => {
  it('frames sent back to back, whole or in parts, arrive whole and in order, even when it closes right after', async () => {
    const got: Buffer[] = [];
    const ended = new Promise<void>((resolve) => {
      const server = net.createServer((s) => {
        s.on('data', (d: Buffer) => got.push(d));
        s.on('end', () => resolve());
      });
      servers.push(server);
      server.listen(0, '127.0.0.1');
    });
    const server = servers.at(-1)!;
    await new Promise<void>((r) => (server.listening ? r() : server.once('listening', () => r())));
    const t = await dialTcp('127.0.0.1', (server.address() as net.AddressInfo).port);
    const sizes = [5, 70_000, 1, 300_000, 9];
    for (const [i, n] of sizes.entries())
      t.send(i % 2 ? [new Uint8Array(n).fill(i + 1)] : new Uint8Array(n).fill(i + 1));
    t.close();
    await ended;
    const p = new FrameParser();
    expectFrames(p.push(Buffer.concat(got)) as Uint8Array[], sizes);
  });
});

describe('placing frames on a dialed TCP transport', () => {
  it('a placer removed while a frame is being placed ends the connection: nothing more lands in the place', async () => {
    const data = new Uint8Array(256 << 10).fill(7);
    const f = encodeSequenced(1, 0, [encodeMsg({ dmaReadCpl: { dev: 1, tag: 4, data } }, data)]);
    const wire = Buffer.concat([lengthPrefix(f.length), f]);
    let rest = () => {};
    const server = net.createServer((s) => {
      // The head and part of the data, the rest only when asked.
      s.write(wire.subarray(0, 1000));
      rest = () => s.end(wire.subarray(1000));
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const t = await dialTcp('127.0.0.1', (server.address() as net.AddressInfo).port);
    const place = new Uint8Array(data.length);
    let asked: () => void = () => {};
    const placing = new Promise<void>((r) => (asked = r));
    const arrived: unknown[] = [];
    t.setPlacer({
      place: (head) => {
        expect(head.kind === 'dmaReadCpl' && [head.dev, head.tag, head.dataLength]).toEqual([
          1,
          4,
          data.length,
        ]);
        asked();
        return place;
      },
      arrived: (p) => arrived.push(p),
    });
    const closed = new Promise<Error | undefined>((r) => t.on('close', r));
    await placing;
    t.setPlacer(undefined);
    rest();
    expect((await closed)?.message).toMatch(/placed frame/);
    expect(arrived).toEqual([]);
    // What was read before the placer left, and nothing after.
    expect(place.subarray(0, 1000 - (wire.length - data.length)).every((b) => b === 7)).toBe(true);
    expect(place.subarray(1000).every((b) => b === 0)).toBe(true);
  });
});

describe('accepted TCP transport', () => {
  const sizes = [10, 200_000, 7, 70_000, 65_536, 16_387, 1, 1 << 20, 3, 100_000];
  const all = Array.from({ length: 4 }, () => sizes).flat();

  /** Sends `bytes` to a listener (sniffing for kernel links when `links`) and collects the frames
   *  of the transport it accepts until the connection ends. */
  async function accepted(bytes: Buffer, links: boolean) {
    const got: { transport?: Transport; frames: Uint8Array[]; links: LinkHello[] } = {
      frames: [],
      links: [],
    };
    let ended = () => {};
    const done = new Promise<void>((r) => (ended = r));
    const l = await listenTcp(
      '127.0.0.1',
      0,
      undefined,
      (t) => {
        got.transport = t;
        t.on('frame', (f) => got.frames.push(f));
        t.on('close', () => ended());
      },
      undefined,
      undefined,
      links
        ? (socket, hello) => {
            got.links.push(hello);
            socket.destroy();
            ended();
          }
        : undefined,
    );
    const c = net.connect(l.port, '127.0.0.1');
    // In pieces, so the listener's first reads are short.
    c.write(bytes.subarray(0, 3));
    setTimeout(() => c.end(bytes.subarray(3)), 20);
    await done;
    await l.close();
    return got;
  }

  for (const links of [false, true]) {
    it(`reads frames of every size intact into its own buffers${links ? ', after sniffing for a kernel link' : ''}`, async () => {
      const got = await accepted(stream(all), links);
      expectFrames(got.frames, all);
      // A large frame is a buffer of its own (read into directly), not a view of a bigger read.
      const big = got.frames[all.indexOf(1 << 20)]!;
      expect(big.byteOffset).toBe(0);
      expect(big.buffer.byteLength).toBe(1 << 20);
    });
  }

  it('this Node lets an accepted socket read into our buffers (else every read is a copy)', async () => {
    const mine = new Uint8Array(1000);
    const seen: { n: number; ours: boolean }[] = [];
    let done = () => {};
    const finished = new Promise<void>((r) => (done = r));
    const server = net.createServer({ pauseOnConnect: true }, (raw) => {
      const s = adoptWithReads(raw, {
        buffer: () => mine,
        sink: (n, buf) => seen.push({ n, ours: buf === mine }),
      });
      expect(s).toBeDefined();
      s!.on('end', () => s!.destroy());
      s!.on('close', () => done());
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    net.connect((server.address() as net.AddressInfo).port, '127.0.0.1').end(Buffer.alloc(5000, 1));
    await finished;
    expect(seen.reduce((a, r) => a + r.n, 0)).toBe(5000);
    expect(seen.every((r) => r.ours && r.n <= 1000)).toBe(true);
    expect(mine.every((x) => x === 1)).toBe(true);
  });

  it('a peer that resets the connection while its first bytes are sniffed only ends it', async () => {
    let transports = 0;
    const l = await listenTcp(
      '127.0.0.1',
      0,
      undefined,
      () => transports++,
      undefined,
      undefined,
      () => {},
    );
    const c = net.connect(l.port, '127.0.0.1');
    c.on('error', () => {});
    await new Promise((r) => c.once('connect', r));
    c.write(LINK_MAGIC.subarray(0, 3)); // could still be a kernel link: undecided
    await new Promise((r) => setTimeout(r, 20));
    c.resetAndDestroy();
    // An 'error' nobody listens to would be an uncaught exception here (the endpoint's crash).
    await new Promise((r) => setTimeout(r, 50));
    expect(transports).toBe(0);
    await l.close();
  });

  it("hands a kernel link's hello over with the socket's reads", async () => {
    const hello = Buffer.alloc(LINK_HELLO_SIZE);
    LINK_MAGIC.copy(hello, 0);
    hello.fill(9, 8, 24);
    hello.writeUInt32LE(3, 24);
    const got = await accepted(hello, true);
    expect(got.frames).toEqual([]);
    expect(got.links.length).toBe(1);
    expect(Buffer.from(got.links[0]!.token).equals(Buffer.alloc(16, 9))).toBe(true);
    expect(got.links[0]!.abiVersion).toBe(3);
    expect(got.links[0]!.reads).toBeDefined();
  });
});
