import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CutProxy } from '../test/cut-proxy.js';
import { decodeFrame, encodeControl, encodeMsg, encodeSequenced, GATHER_MIN } from './codec.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { loopPair } from './loop.js';
import { openSession, type Session, type SessionOptions, SessionServer } from './session.js';
import { dialTcp, type Listener, listenTcp } from './tcp.js';
import type { Transport } from './transport.js';
import { ErrorCode, long, type Msg, num, ProtocolError, type pcinet } from './wire.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

function closed(s: Session): Promise<Error | undefined> {
  return new Promise((res) => (s.closed ? res(undefined) : s.once('close', res)));
}

/** Collects numbered messages (DmaWrite.iova = n) arriving on `s`. */
function collect(s: Session): number[] {
  const got: number[] = [];
  s.on('messages', (msgs: pcinet.Msg[]) => {
    for (const m of msgs) got.push(num(m.dmaWrite!.iova));
  });
  return got;
}

/** Sends n numbered messages in batches of `batch`, honouring backpressure. */
/** Sends n numbered DmaWrites, `batch` per frame; `gapMs` between frames keeps a stream going
 *  long enough for cuts to land in it. */
async function stream(s: Session, n: number, batch: number, payload = 512, gapMs = 0): Promise<void> {
  const data = new Uint8Array(payload).fill(0xa5);
  for (let i = 0; i < n; ) {
    while (s.backlogged && !s.closed) await new Promise((r) => s.once('drain', r));
    if (s.closed) throw new Error('session closed while streaming');
    for (let k = 0; k < batch && i < n; k++, i++) s.send({ dmaWrite: { dev: 1, iova: long(i), data } });
    s.flush();
    await new Promise((r) => (gapMs ? setTimeout(r, gapMs) : setImmediate(r)));
  }
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function loopServer(opts: SessionOptions = {}) {
  const sessions: Session[] = [];
  const transports: Transport[] = [];
  const server = new SessionServer(opts, (s) => sessions.push(s));
  const dial = async () => {
    const [a, b] = loopPair();
    transports.push(a);
    server.accept(b);
    return a;
  };
  cleanup.push(() => server.close());
  return { server, sessions, dial, transports };
}

async function tcpServer(opts: SessionOptions = {}) {
  const sessions: Session[] = [];
  const server = new SessionServer(opts, (s) => sessions.push(s));
  const l: Listener = await listenTcp('127.0.0.1', 0, undefined, (t) => server.accept(t));
  cleanup.push(async () => {
    await server.close();
    await l.close();
  });
  return { server, sessions, port: l.port };
}

describe('session over the loop transport', () => {
  it('handshakes, then carries batches both ways in order', async () => {
    const { sessions, dial } = loopServer();
    const host = await openSession(dial);
    cleanup.push(() => host.close());
    expect(host.id).toHaveLength(16);
    const ep = sessions[0]!;
    expect(Buffer.from(ep.id).equals(Buffer.from(host.id))).toBe(true);
    const atEp = collect(ep);
    const atHost = collect(host);
    await Promise.all([stream(host, 3000, 17), stream(ep, 2000, 50)]);
    await until(() => atEp.length === 3000 && atHost.length === 2000, 10_000, 'all messages');
    expect(atEp).toEqual([...Array(3000).keys()]);
    expect(atHost).toEqual([...Array(2000).keys()]);
    await until(() => host.stats().replayFrames === 0 && ep.stats().replayFrames === 0, 2000, 'acks');
  });

  it('an orderly close reaches the peer as a close without error', async () => {
    const { sessions, dial } = loopServer();
    const host = await openSession(dial);
    const ep = sessions[0]!;
    const seen = closed(ep);
    await host.close();
    expect(await seen).toBeUndefined();
  });

  it('a ProtocolError thrown by a listener closes both sides with its code', async () => {
    const { sessions, dial } = loopServer();
    const host = await openSession(dial);
    sessions[0]!.on('messages', () => {
      throw new ProtocolError(ErrorCode.UNKNOWN_DEVICE, 'no device 9');
    });
    const hostClosed = closed(host);
    host.send({ interrupt: { dev: 9, vector: 0 } });
    host.flush();
    const err = await hostClosed;
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as ProtocolError).code).toBe(ErrorCode.UNKNOWN_DEVICE);
  });

  it('the grace period ends a session that cannot resume, on both sides, with TIMEOUT', async () => {
    const { sessions, dial, transports } = loopServer({ graceMs: 300 });
    let reachable = true;
    const host = await openSession(
      async () => {
        if (!reachable) throw new Error('unreachable');
        return dial();
      },
      { graceMs: 300 },
    );
    const [hostErr, epErr] = [closed(host), closed(sessions[0]!)];
    reachable = false;
    transports.at(-1)!.close(new Error('cable pulled'));
    for (const e of [await hostErr, await epErr]) {
      expect(e).toBeInstanceOf(ProtocolError);
      expect((e as ProtocolError).code).toBe(ErrorCode.TIMEOUT);
    }
  });

  it('resumes after the connection drops: nothing lost, duplicated or reordered', async () => {
    const { sessions, dial, transports } = loopServer();
    const host = await openSession(dial);
    cleanup.push(() => host.close());
    const ep = sessions[0]!;
    const atEp = collect(ep);
    const atHost = collect(host);
    const cutter = setInterval(() => transports.at(-1)!.close(new Error('cut')), 20);
    try {
      await Promise.all([stream(host, 4000, 13, 512, 1), stream(ep, 4000, 29, 512, 1)]);
      await until(() => atEp.length >= 4000 && atHost.length >= 4000, 20_000, 'all messages');
    } finally {
      clearInterval(cutter);
    }
    expect(atEp).toEqual([...Array(4000).keys()]);
    expect(atHost).toEqual([...Array(4000).keys()]);
    expect(host.stats().resumes).toBeGreaterThanOrEqual(2);
  });
});

/** A host session to a TCP endpoint through a proxy that can cut the connection. */
async function behindCutProxy() {
  const { sessions, port } = await tcpServer();
  const proxy = await CutProxy.start(port);
  cleanup.push(() => proxy.close());
  const host = await openSession(() => dialTcp('127.0.0.1', proxy.port));
  cleanup.push(() => host.close());
  return { host, ep: sessions[0]!, proxy };
}

describe('session over TCP', () => {
  it('survives repeated cuts of the TCP connection during a long stream', async () => {
    const { host, ep, proxy } = await behindCutProxy();
    const atEp = collect(ep);
    const atHost = collect(host);
    const cutter = setInterval(() => proxy.cutAll(), 40);
    const N = 20_000;
    try {
      await Promise.all([stream(host, N, 40, 1024), stream(ep, N, 40, 1024)]);
      await until(() => atEp.length >= N && atHost.length >= N, 60_000, 'all messages');
    } finally {
      clearInterval(cutter);
    }
    expect(atEp.length).toBe(N);
    expect(atEp.every((v, i) => v === i)).toBe(true);
    expect(atHost.every((v, i) => v === i)).toBe(true);
    expect(proxy.cuts).toBeGreaterThan(2);
    expect(host.stats().resumes).toBeGreaterThan(1);
  });

  it('sends handed-over payloads by reference and replays them intact across connection cuts', async () => {
    const { host, ep, proxy } = await behindCutProxy();
    const got: { iova: number; ok: boolean }[] = [];
    host.on('messages', (msgs: pcinet.Msg[]) => {
      for (const m of msgs) {
        const i = num(m.dmaWrite!.iova);
        const d = m.dmaWrite!.data!;
        got.push({ iova: i, ok: d.length === 2 * GATHER_MIN && d.every((x) => x === (i & 0xff)) });
      }
    });
    const cutter = setInterval(() => proxy.cutAll(), 40);
    const N = 300;
    try {
      for (let i = 0; i < N; i++) {
        while (ep.backlogged && !ep.closed) await new Promise((r) => ep.once('drain', r));
        // A buffer made for this message and never touched again: handed over.
        const data = new Uint8Array(2 * GATHER_MIN).fill(i & 0xff);
        ep.send({ dmaWrite: { dev: 1, iova: long(i), data } }, data);
        if (i % 8 === 7) {
          ep.flush();
          await new Promise((r) => setTimeout(r, 2));
        }
      }
      ep.flush();
      await until(() => got.length >= N, 60_000, 'all messages');
    } finally {
      clearInterval(cutter);
    }
    expect(got.map((g) => g.iova)).toEqual([...Array(N).keys()]);
    expect(got.every((g) => g.ok)).toBe(true);
    expect(proxy.cuts).toBeGreaterThan(0);
    expect(host.stats().resumes).toBeGreaterThan(0);
  });

  it('reads handed-over DMA read completions into the places the endpoint gives, intact across connection cuts', async () => {
    const { host, ep, proxy } = await behindCutProxy();
    const N = 200;
    const LEN = 16 * GATHER_MIN;
    // Every tag's place in one buffer, with a guard byte either side; each place given once, as
    // DmaReader.place does.
    const places = new Uint8Array(N * (LEN + 2));
    const placeOf = (tag: number) => places.subarray(tag * (LEN + 2) + 1, tag * (LEN + 2) + 1 + LEN);
    const given = new Set<number>();
    ep.placeDmaReadCpl = (dev, tag, length) => {
      if (dev !== 1 || tag >= N || length !== LEN || given.has(tag)) return undefined;
      given.add(tag);
      return placeOf(tag);
    };
    const got: { tag: number; ok: boolean; placed: boolean; kept: Uint8Array }[] = [];
    const vectors: number[] = [];
    ep.on('messages', (msgs: pcinet.Msg[]) => {
      for (const m of msgs) {
        if (m.interrupt) {
          vectors.push(m.interrupt.vector ?? 0);
          continue;
        }
        const c = m.dmaReadCpl!;
        const d = c.data!;
        const tag = c.tag ?? 0;
        const placed = d.buffer === places.buffer && d.byteOffset === placeOf(tag).byteOffset;
        got.push({
          tag,
          ok: d.length === LEN && d.every((x) => x === (tag & 0xff)),
          placed,
          kept: d.slice(),
        });
      }
    });
    const cutter = setInterval(() => proxy.cutAll(), 40);
    try {
      for (let tag = 0; tag < N; tag++) {
        while (host.backlogged && !host.closed) await new Promise((r) => host.once('drain', r));
        // As the sim host's completions: a fresh copy of host memory, handed over.
        const data = new Uint8Array(LEN).fill(tag & 0xff);
        host.send({ dmaReadCpl: { dev: 1, tag, data } }, data);
        host.send({ interrupt: { dev: 1, vector: tag & 7 } });
        if (tag % 4 === 3) {
          host.flush();
          await new Promise((r) => setTimeout(r, 2));
        }
      }
      host.flush();
      await until(() => got.length >= N && vectors.length >= N, 60_000, 'all messages');
    } finally {
      clearInterval(cutter);
    }
    expect(got.map((g) => g.tag)).toEqual([...Array(N).keys()]);
    expect(vectors).toEqual([...Array(N).keys()].map((t) => t & 7));
    expect(got.every((g) => g.ok)).toBe(true);
    // Most were placed (a frame cut while being placed is replayed and decoded instead).
    expect(got.filter((g) => g.placed).length).toBeGreaterThan(N / 2);
    expect(proxy.cuts).toBeGreaterThan(0);
    // Nothing was read into a place after its completion was delivered, nor next to one.
    for (const g of got) if (g.placed) expect(Buffer.compare(placeOf(g.tag), g.kept)).toBe(0);
    for (let tag = 0; tag < N; tag++) {
      expect(places[tag * (LEN + 2)]).toBe(0);
      expect(places[tag * (LEN + 2) + LEN + 1]).toBe(0);
    }
  });

  it('detects a silent peer within deadAfterMs and resumes when it speaks again', async () => {
    const opts = { keepaliveMs: 50, deadAfterMs: 300 };
    const { port } = await tcpServer(opts);
    const proxy = await CutProxy.start(port);
    cleanup.push(() => proxy.close());
    const host = await openSession(() => dialTcp('127.0.0.1', proxy.port), opts);
    cleanup.push(() => host.close());
    const t0 = Date.now();
    const lost = new Promise((r) => host.once('disconnected', r));
    proxy.blackhole(true);
    await lost;
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(2000);
    proxy.blackhole(false);
    await new Promise((r) => host.once('resumed', r));
    expect(host.connected).toBe(true);
  });

  it('declares a silent peer unreachable once per outage, and again after a resume', async () => {
    const opts = { keepaliveMs: 50, deadAfterMs: 300 };
    const { port } = await tcpServer(opts);
    const proxy = await CutProxy.start(port);
    cleanup.push(() => proxy.close());
    const host = await openSession(() => dialTcp('127.0.0.1', proxy.port), opts);
    cleanup.push(() => host.close());
    const said: string[] = [];
    for (const e of ['disconnected', 'unreachable', 'resumed']) host.on(e, () => said.push(e));
    for (let round = 0; round < 2; round++) {
      proxy.hold(true);
      await until(() => said.filter((e) => e === 'unreachable').length > round, 5000, 'unreachable');
      // Redials meanwhile (held too, so they fail on the handshake timeout or not at all): no
      // second 'unreachable' for the same outage.
      await new Promise((r) => setTimeout(r, 600));
      proxy.hold(false);
      proxy.cutAll(); // the held connections carry stale bytes: start afresh
      await until(() => said.filter((e) => e === 'resumed').length > round, 10_000, 'resumed');
    }
    expect(said.filter((e) => e === 'unreachable')).toHaveLength(2);
    expect(said.indexOf('disconnected')).toBeLessThan(said.indexOf('unreachable'));
    expect(host.closed).toBe(false);
  });

  it('a connection reset is not "unreachable" while the redial succeeds; a refused redial is', async () => {
    const { port } = await tcpServer();
    const proxy = await CutProxy.start(port);
    cleanup.push(() => proxy.close());
    const host = await openSession(() => dialTcp('127.0.0.1', proxy.port));
    cleanup.push(() => host.close());
    const unreachable: Error[] = [];
    host.on('unreachable', (e: Error) => unreachable.push(e));
    proxy.cutAll();
    await new Promise((r) => host.once('resumed', r));
    expect(unreachable).toHaveLength(0);

    proxy.refuse(true);
    proxy.cutAll();
    await until(() => unreachable.length > 0, 5000, 'unreachable');
    expect(unreachable[0]!.message).toMatch(/ECONNRESET|closed|socket hang up/);
    proxy.refuse(false);
    await new Promise((r) => host.once('resumed', r));
    expect(unreachable).toHaveLength(1);
    expect(proxy.refused).toBeGreaterThan(0);
  });

  it('measures the round trip of its keep-alives (pcinet status)', async () => {
    const opts = { keepaliveMs: 20, deadAfterMs: 1000 };
    const { port } = await tcpServer(opts);
    const host = await openSession(() => dialTcp('127.0.0.1', port), opts);
    cleanup.push(() => host.close());
    expect(host.stats().rttMs).toBeUndefined();
    const end = Date.now() + 5000;
    while (host.stats().rttMs === undefined && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    const rtt = host.stats().rttMs!;
    expect(rtt).toBeGreaterThan(0);
    expect(rtt).toBeLessThan(1000);
  });
});

/** A raw TCP peer that speaks bytes we choose, for bad-input tests. */
async function rawPeer(port: number) {
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const parser = new FrameParser();
  const frames: pcinet.Msg[][] = [];
  sock.on('data', (d) => {
    for (const f of parser.push(d)) frames.push(decodeFrame(f).msgs);
  });
  const ended = new Promise<void>((r) => sock.once('close', () => r()));
  return {
    sendFrame(b: Uint8Array) {
      sock.write(lengthPrefix(b.length));
      sock.write(b);
    },
    raw(b: Uint8Array) {
      sock.write(b);
    },
    end() {
      sock.end();
    },
    frames,
    ended,
    /** The code of the Error the server sent before closing. */
    async errorCode(): Promise<ErrorCode | undefined> {
      await ended;
      for (const msgs of frames) for (const m of msgs) if (m.error) return m.error.code ?? 0;
      return undefined;
    },
  };
}

const hello = (version = 1): Msg => ({ hello: { version, agent: 'raw' } });

describe('bad input closes only the offending session, with a code that names it', () => {
  const cases: [string, (p: Awaited<ReturnType<typeof rawPeer>>) => void, ErrorCode][] = [
    ['wrong protocol version', (p) => p.sendFrame(encodeControl(0, [hello(7)])), ErrorCode.BAD_VERSION],
    [
      'data before Hello',
      (p) => p.sendFrame(encodeSequenced(1, 0, [encodeMsg({ interrupt: { dev: 1, vector: 0 } })])),
      ErrorCode.UNEXPECTED_MESSAGE,
    ],
    ['garbage frame', (p) => p.sendFrame(Uint8Array.of(0xff, 0xff, 0xff)), ErrorCode.MALFORMED],
    [
      'oversized length prefix',
      (p) => p.raw(Uint8Array.of(0xff, 0xff, 0xff, 0x7f)),
      ErrorCode.FRAME_TOO_LARGE,
    ],
    ['zero length prefix', (p) => p.raw(Uint8Array.of(0, 0, 0, 0)), ErrorCode.BAD_LENGTH],
    [
      'resume of an unknown session',
      (p) =>
        p.sendFrame(
          encodeControl(0, [{ resume: { version: 1, sessionId: new Uint8Array(16), receivedSeq: long(0) } }]),
        ),
      ErrorCode.SESSION_UNKNOWN,
    ],
    [
      'out-of-order frame after the handshake',
      (p) => {
        p.sendFrame(encodeControl(0, [hello()]));
        p.sendFrame(encodeSequenced(2, 0, [encodeMsg({ interrupt: { dev: 1, vector: 0 } })]));
      },
      ErrorCode.OUT_OF_ORDER,
    ],
    [
      'ack of a frame never sent',
      (p) => {
        p.sendFrame(encodeControl(0, [hello()]));
        p.sendFrame(encodeControl(99, []));
      },
      ErrorCode.BAD_ARGUMENT,
    ],
    [
      'unknown message type',
      (p) => {
        p.sendFrame(encodeControl(0, [hello()]));
        p.sendFrame(Uint8Array.from(Buffer.from('08011a039a0600', 'hex')));
      },
      ErrorCode.UNKNOWN_MESSAGE,
    ],
    [
      'Hello twice',
      (p) => {
        p.sendFrame(encodeControl(0, [hello()]));
        p.sendFrame(encodeControl(0, [hello()]));
      },
      ErrorCode.UNEXPECTED_MESSAGE,
    ],
  ];

  it.each(cases)('%s', async (_name, act, code) => {
    const { sessions, port } = await tcpServer();
    // A good session is up before and keeps working after.
    const good = await openSession(() => dialTcp('127.0.0.1', port));
    cleanup.push(() => good.close());
    const p = await rawPeer(port);
    act(p);
    expect(await p.errorCode()).toBe(code);
    const got = collect(sessions[0]!);
    await stream(good, 10, 5);
    await until(() => got.length === 10, 2000, 'the good session');
    expect(good.closed).toBe(false);
  });

  it('a frame cut short by the end of the stream is a lost connection: nothing delivered, resumable', async () => {
    const { sessions, port } = await tcpServer();
    const p = await rawPeer(port);
    p.sendFrame(encodeControl(0, [hello()]));
    await until(() => sessions.length === 1, 2000, 'session');
    const s = sessions[0]!;
    const got = collect(s);
    const lost = new Promise<Error>((r) => s.once('disconnected', r));
    p.raw(Uint8Array.of(100, 0, 0, 0, 1, 2, 3));
    p.end();
    const e = await lost;
    expect(e).not.toBeInstanceOf(ProtocolError);
    expect(e.message).toMatch(/connection ended inside a frame \(3 bytes\)/);
    expect(s.closed).toBe(false);
    expect(got).toEqual([]);
  });
});

describe('payloads handed over with a release', () => {
  it('are released once the peer acknowledged the frame over TCP (a copy), never before, never over the loop', async () => {
    const { host, ep, proxy } = await behindCutProxy();
    const N = 40;
    const got: number[] = [];
    ep.on('messages', (msgs: pcinet.Msg[]) => {
      for (const m of msgs) got.push(m.dmaReadCpl!.tag ?? 0);
    });
    const released: number[] = [];
    // Held: nothing reaches the endpoint, so nothing is acknowledged, so nothing may be released.
    proxy.hold(true);
    for (let tag = 0; tag < N; tag++) {
      const data = new Uint8Array(2 * GATHER_MIN).fill(tag);
      host.send({ dmaReadCpl: { dev: 1, tag, data } }, data, () => released.push(tag));
    }
    host.flush();
    await new Promise((r) => setTimeout(r, 100));
    expect(released).toEqual([]);
    proxy.hold(false);
    await until(() => released.length === N, 10_000, 'every release');
    // Each only once the endpoint had its frame.
    expect(got.length).toBe(N);
    expect(released).toEqual([...Array(N).keys()]);

    const loop = loopServer();
    const onLoop = await openSession(loop.dial);
    cleanup.push(() => onLoop.close());
    const atEp = loop.sessions[0]!;
    let seen = 0;
    atEp.on('messages', (msgs: pcinet.Msg[]) => {
      seen += msgs.length;
    });
    let loopReleased = 0;
    for (let tag = 0; tag < N; tag++) {
      const data = new Uint8Array(2 * GATHER_MIN).fill(tag);
      onLoop.send({ dmaReadCpl: { dev: 1, tag, data } }, data, () => loopReleased++);
    }
    onLoop.flush();
    await until(() => seen === N && onLoop.stats().replayFrames === 0, 10_000, 'acknowledged on the loop');
    // The endpoint holds the very buffers sent: they are never given back.
    expect(loopReleased).toBe(0);
  });
});
