// The replay buffer and lent payloads (proto/replay.ts): a loan taken back leaves the frame to be
// replayed with the copy; a transport that cannot keep lent memory safe gets copies; loans end
// when acknowledged and when the session ends, never before.
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { loopPair } from './loop.js';
import { type Loan, ReplayBuffer } from './replay.js';
import { openSession, type Session, SessionServer } from './session.js';
import { dialTcp, listenTcp } from './tcp.js';
import { ErrorCode, type pcinet } from './wire.js';

/** A loan of `memory` that records what its holder did with it. */
function fakeLoan(memory: Uint8Array) {
  const l = {
    bytes: memory,
    onTakeBack: undefined as Loan['onTakeBack'],
    settled: 0,
    ended: 0,
    settle() {
      if (l.bytes === memory) l.bytes = memory.slice();
      l.settled++;
    },
    end() {
      l.ended++;
    },
    /** What the owner does before the memory changes. */
    takeBack() {
      const lent = l.bytes;
      l.bytes = memory.slice();
      l.onTakeBack?.(lent);
    },
  };
  return l;
}

describe('ReplayBuffer', () => {
  it('replays a loan taken back from its copy, and tells the session', () => {
    const memory = new Uint8Array(64 << 10).fill(1);
    const l = fakeLoan(memory);
    let told = 0;
    const r = new ReplayBuffer(() => told++);
    const head = Uint8Array.of(1, 2, 3);
    const e = r.add(1, [head, memory], [], [l]);
    expect(r.lending).toBe(true);
    l.takeBack();
    memory.fill(7);
    expect(told).toBe(1);
    expect(e.parts[0]).toBe(head);
    expect(e.parts[1]).not.toBe(memory);
    expect(e.parts[1]!.every((x) => x === 1)).toBe(true);
  });

  it('settles loans into copies for a transport that cannot keep lent memory safe', () => {
    const memory = new Uint8Array(64 << 10).fill(1);
    const l = fakeLoan(memory);
    const r = new ReplayBuffer(() => {});
    const e = r.add(1, [memory], [], [l]);
    r.written(e, false, true);
    expect(l.settled).toBe(0);
    r.written(e, false, false);
    expect(l.settled).toBe(1);
    expect(e.parts[0]).not.toBe(memory);
    expect(r.lending).toBe(false);
    l.takeBack(); // the owner no longer reaches the buffer
    expect(e.parts[0]).toBe(e.parts[0]);
  });

  it('ends loans and calls releases once acknowledged (releases not for frames the peer shares)', () => {
    const r = new ReplayBuffer(() => {});
    const l1 = fakeLoan(new Uint8Array(16));
    const l2 = fakeLoan(new Uint8Array(16));
    let released = 0;
    r.add(1, [new Uint8Array(4)], [() => released++], [l1]);
    const e2 = r.add(2, [new Uint8Array(4)], [() => released++], [l2]);
    r.written(e2, true, true);
    expect(r.acked(1)).toBe(true);
    expect([l1.ended, l2.ended, released]).toEqual([1, 0, 1]);
    expect(r.acked(2)).toBe(true);
    expect([l1.ended, l2.ended, released]).toEqual([1, 1, 1]);
    expect(r.frames).toBe(0);
    expect(r.bytes).toBe(0);
    expect(r.lending).toBe(false);
  });
});

describe('a session lending payloads', () => {
  /** A host session and the endpoint's, over the in-process loop, or with `tcp` over TCP to a
   *  listener (through `via`'s port when given: a proxy); `close` ends the server and listener. */
  async function pair(o: { tcp?: boolean; via?: (port: number) => Promise<number>; graceMs?: number } = {}) {
    let ep: Session | undefined;
    const server = new SessionServer({}, (s) => {
      ep = s;
    });
    let dial: Parameters<typeof openSession>[0];
    let listener: { port: number; close(): Promise<void> } | undefined;
    if (o.tcp) {
      const l = await listenTcp('127.0.0.1', 0, undefined, (t) => server.accept(t));
      listener = l;
      const port = o.via ? await o.via(l.port) : l.port;
      dial = () => dialTcp('127.0.0.1', port);
    } else {
      const [a, b] = loopPair();
      server.accept(b);
      dial = async () => a;
    }
    const host = await openSession(dial, { graceMs: o.graceMs });
    while (!ep) await new Promise((r) => setTimeout(r, 1));
    const close = async () => {
      await server.close();
      await listener?.close();
    };
    return { host, ep, server, close };
  }

  it('sends a copy over a transport that cannot drop queued writes (the loop), and the peer gets what was lent', async () => {
    const { host, ep, server } = await pair();
    const got: Uint8Array[] = [];
    ep.on('messages', (msgs: pcinet.Msg[]) => {
      for (const m of msgs) if (m.dmaReadCpl) got.push(m.dmaReadCpl.data!);
    });
    const memory = new Uint8Array(64 << 10).fill(4);
    const l = fakeLoan(memory);
    host.send({ dmaReadCpl: { dev: 1, tag: 1, status: ErrorCode.OK, data: memory } }, l);
    expect(l.settled).toBe(1);
    memory.fill(8);
    while (got.length === 0) await new Promise((r) => setTimeout(r, 1));
    expect(got[0]!.every((x) => x === 4)).toBe(true);
    await host.close();
    await server.close();
  });

  it('sends what the loan holds when it was taken back before the send', async () => {
    const { host, ep, server } = await pair();
    const got: Uint8Array[] = [];
    ep.on('messages', (msgs: pcinet.Msg[]) => {
      for (const m of msgs) if (m.dmaReadCpl) got.push(m.dmaReadCpl.data!);
    });
    const memory = new Uint8Array(64 << 10).fill(4);
    const l = fakeLoan(memory);
    l.takeBack();
    memory.fill(8);
    host.send({ dmaReadCpl: { dev: 1, tag: 1, status: ErrorCode.OK, data: memory } }, l);
    while (got.length === 0) await new Promise((r) => setTimeout(r, 1));
    expect(got[0]!.every((x) => x === 4)).toBe(true);
    await host.close();
    await server.close();
  });

  it('ends loans it still holds when the session ends, once its connection has closed', async () => {
    const { host, close } = await pair({ tcp: true });
    const l = fakeLoan(new Uint8Array(64 << 10));
    host.send({ dmaReadCpl: { dev: 1, tag: 1, status: ErrorCode.OK, data: l.bytes } }, l);
    expect(l.settled).toBe(0);
    await host.close(new Error('test over'));
    expect(l.ended).toBe(0); // its connection may still be writing it
    const end = Date.now() + 5000;
    while (l.ended === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
    expect(l.ended).toBe(1);
    await close();
  });

  it('ends loans when a session whose connection was lost times out', async () => {
    // A proxy the test can cut; the host's redials then find nobody.
    const sockets = new Set<net.Socket>();
    let proxy: net.Server | undefined;
    const via = async (port: number) => {
      proxy = net.createServer((a) => {
        const b = net.connect(port, '127.0.0.1');
        for (const x of [a, b]) {
          sockets.add(x);
          x.on('error', () => {});
          x.on('close', () => {
            a.destroy();
            b.destroy();
          });
        }
        a.pipe(b);
        b.pipe(a);
      });
      await new Promise<void>((r) => proxy!.listen(0, '127.0.0.1', r));
      return (proxy.address() as net.AddressInfo).port;
    };
    const { host, ep, close } = await pair({ tcp: true, via, graceMs: 300 });
    ep.pause(); // nothing is acknowledged
    const l = fakeLoan(new Uint8Array(64 << 10));
    host.send({ dmaReadCpl: { dev: 1, tag: 1, status: ErrorCode.OK, data: l.bytes } }, l);
    await new Promise((r) => setTimeout(r, 20));
    proxy!.close();
    for (const x of sockets) x.destroy();
    const end = Date.now() + 5000;
    while (!host.closed && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    expect(host.closed).toBe(true);
    expect(l.ended).toBe(1);
    await close();
  });
});
