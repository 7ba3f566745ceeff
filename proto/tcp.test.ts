// Stream transports reading into buffers of the parser's choosing (net's `onread` on dialed plain
// TCP): large frames land straight in their own buffers, everything else in a reused scratch
// buffer. Frames are checked only after all of them arrived, so a frame that shares memory with a
// later read shows.
import net from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameParser } from './framing.js';
import { dialTcp } from './tcp.js';

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
          frames.push(...p.filled(n));
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
