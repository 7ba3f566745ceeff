// A hostile network (issue 14, item 5): what a man in the middle or a stranger on the network can
// send a listening endpoint — a frame it recorded, replayed on a connection of its own; a Resume
// naming a session that is not there (any more), or one from another key; a connection that never
// finishes its handshake; a flood of connections with an unknown key — is refused, and a session
// already running carries on undisturbed. All on loopback, every loop bounded.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeFrame, encodeControl, encodeMsg, encodeSequenced } from './codec.js';
import { FrameParser, lengthPrefix } from './framing.js';
import { type Identity, loadOrCreateIdentity } from './identity.js';
import {
  MAX_PENDING_HANDSHAKES,
  openSession,
  type Session,
  type SessionOptions,
  SessionServer,
} from './session.js';
import { dialTcp, type Listener, listenTcp, MAX_HANDSHAKES } from './tcp.js';
import { ErrorCode, long, type Msg, PROTOCOL_VERSION, ProtocolError, type pcinet } from './wire.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

let dir: string;
let endpointId: Identity;
let hostId: Identity;
let strangerId: Identity;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pcinet-hostile-'));
  [endpointId, hostId, strangerId] = await Promise.all(
    ['endpoint', 'host', 'stranger'].map((n) => loadOrCreateIdentity(join(dir, n))),
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** An endpoint-side session server on loopback, plain TCP or TLS allowing `allow`. */
async function server(opts: SessionOptions = {}, allow?: string[]) {
  const sessions: Session[] = [];
  const refused: string[] = [];
  const s = new SessionServer(opts, (x) => {
    sessions.push(x);
    // Answers every StatsRequest (something to carry both ways while the network misbehaves).
    x.on('messages', (msgs: Msg[]) => {
      for (const m of msgs) if (m.statsRequest) x.send({ stats: { nonce: m.statsRequest.nonce } });
      x.flush();
    });
  });
  const l: Listener = await listenTcp(
    '127.0.0.1',
    0,
    allow ? { identity: endpointId, allow } : undefined,
    (t) => s.accept(t),
    (_remote, why) => refused.push(why),
  );
  cleanup.push(async () => {
    await s.close();
    await l.close();
  });
  return { sessions, refused, listener: l, port: l.port };
}

/** A host session that keeps its messages coming; counts disconnections. */
async function runningSession(dial: () => ReturnType<typeof dialTcp>, opts: SessionOptions = {}) {
  const host = await openSession(dial, opts);
  cleanup.push(() => host.close());
  let drops = 0;
  host.on('disconnected', () => drops++);
  return { host, drops: () => drops };
}

/** A raw TCP peer: sends bytes we choose, collects the frames it gets back. */
async function rawPeer(port: number) {
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((r, j) => sock.once('connect', r).once('error', j));
  const parser = new FrameParser();
  const got: pcinet.Msg[] = [];
  sock.on('data', (d) => {
    for (const f of parser.push(d)) got.push(...decodeFrame(f).msgs);
  });
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  return {
    got,
    closed,
    frame(b: Uint8Array) {
      sock.write(lengthPrefix(b.length));
      sock.write(b);
    },
    raw(b: Uint8Array) {
      sock.write(b);
    },
    destroy() {
      sock.destroy();
    },
  };
}

const errorCode = (msgs: pcinet.Msg[]) => msgs.find((m) => m.error)?.error?.code;

/** The flood's process: FLOOD connections to 127.0.0.1:PORT, CONCURRENT at a time, each closed
 *  by the server or after 2 s; prints "done N". */
const FLOOD_SCRIPT = `
const net = require('node:net');
const tls = require('node:tls');
const { PORT, KEY, CERT } = process.env;
const FLOOD = Number(process.env.FLOOD);
let started = 0;
let done = 0;
const one = () => new Promise((resolve) => {
  const n = started++;
  const s = n % 2 === 0
    ? tls.connect({ host: '127.0.0.1', port: Number(PORT), key: KEY, cert: CERT, rejectUnauthorized: false, minVersion: 'TLSv1.3' })
    : net.connect(Number(PORT), '127.0.0.1');
  const end = () => { s.destroy(); resolve(); };
  s.on('error', end);
  s.on('close', end);
  s.setTimeout(2000, end);
}).then(() => { done++; });
const worker = async () => { while (started < FLOOD) await one(); };
Promise.all(Array.from({ length: Number(process.env.CONCURRENT) }, worker)).then(() => {
  console.log('done ' + done);
});
`;

describe('a hostile network', () => {
  it('a sequenced frame replayed as the first frame of a new connection is refused', async () => {
    const { port, sessions } = await server();
    const { host, drops } = await runningSession(() => dialTcp('127.0.0.1', port));
    // What a recorder on the path saw: the host's first data frame.
    const m: Msg = { mmioWrite: { dev: 1, bar: 0, offset: long(0), data: new Uint8Array([1]) } };
    const recorded = encodeSequenced(1, 0, [encodeMsg(m)]);
    const peer = await rawPeer(port);
    peer.frame(recorded);
    await peer.closed;
    expect(errorCode(peer.got)).toBe(ErrorCode.UNEXPECTED_MESSAGE);
    expect(sessions).toHaveLength(1);
    expect(drops()).toBe(0);
    expect(host.closed).toBe(false);
  });

  it('a frame replayed into a resumed session is refused as out of order (the session ends, not corrupts)', async () => {
    const { port, sessions } = await server();
    const { host } = await runningSession(() => dialTcp('127.0.0.1', port));
    const got: Msg[][] = [];
    await until(() => sessions.length === 1, 2000, 'the session');
    sessions[0]!.on('messages', (msgs: Msg[]) => got.push(msgs));
    await new Promise((r) => setTimeout(r, 50));
    const sent: Msg = { statsRequest: { nonce: long(1) } };
    host.send(sent);
    host.flush();
    await until(() => got.length === 1, 2000, 'the frame');
    // The recorder resumes the session itself (plain TCP: the id is all it needs) and replays
    // the frame it saw: a duplicate sequence number.
    const peer = await rawPeer(port);
    peer.frame(
      encodeControl(0, [{ resume: { version: PROTOCOL_VERSION, sessionId: host.id, receivedSeq: long(0) } }]),
    );
    await until(() => peer.got.length > 0, 2000, 'the Resume answer');
    peer.frame(encodeSequenced(1, 0, [encodeMsg(sent)]));
    await peer.closed;
    expect(errorCode(peer.got)).toBe(ErrorCode.OUT_OF_ORDER);
    expect(got).toHaveLength(1); // delivered once, never twice
  });

  it('a Resume with an unknown id, or an expired one, is refused with SESSION_UNKNOWN', async () => {
    const { port } = await server({ graceMs: 100, keepaliveMs: 20, deadAfterMs: 60 });
    const resume = (id: Uint8Array) =>
      encodeControl(0, [{ resume: { version: PROTOCOL_VERSION, sessionId: id, receivedSeq: long(0) } }]);
    const wrong = await rawPeer(port);
    wrong.frame(resume(new Uint8Array(16).fill(7)));
    await wrong.closed;
    expect(errorCode(wrong.got)).toBe(ErrorCode.SESSION_UNKNOWN);

    // A session whose host vanished: after the grace period its id opens nothing.
    const host = await openSession(() => dialTcp('127.0.0.1', port), { graceMs: 100 });
    const id = host.id;
    host.removeAllListeners();
    await host.close(new ProtocolError(ErrorCode.TIMEOUT, 'vanish')); // tells the endpoint
    await new Promise((r) => setTimeout(r, 300));
    const late = await rawPeer(port);
    late.frame(resume(id));
    await late.closed;
    expect(errorCode(late.got)).toBe(ErrorCode.SESSION_UNKNOWN);
  });

  it('a Resume from another key than the session’s is refused (TLS)', async () => {
    const { port } = await server({}, [hostId.fingerprint, strangerId.fingerprint]);
    const pin = endpointId.fingerprint;
    const { host, drops } = await runningSession(() => dialTcp('127.0.0.1', port, { identity: hostId, pin }));
    // The stranger may connect (allowed, say, for devices of its own) but not take this session.
    const t = await dialTcp('127.0.0.1', port, { identity: strangerId, pin });
    const answer = new Promise<pcinet.Msg[]>((r) =>
      t.once('frame', (f: Uint8Array) => r(decodeFrame(f).msgs)),
    );
    t.send(
      encodeControl(0, [{ resume: { version: PROTOCOL_VERSION, sessionId: host.id, receivedSeq: long(0) } }]),
    );
    expect(errorCode(await answer)).toBe(ErrorCode.AUTH_REFUSED);
    t.close();
    expect(drops()).toBe(0);
    expect(host.closed).toBe(false);
  });

  it('a peer that connects and never finishes its handshake is dropped after handshakeMs', async () => {
    const { port } = await server({ handshakeMs: 300 });
    const silent = await rawPeer(port);
    const half = await rawPeer(port);
    half.raw(lengthPrefix(100)); // a frame that never comes
    const t0 = Date.now();
    await Promise.all([silent.closed, half.closed]);
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(5000);
    expect(errorCode(silent.got)).toBe(ErrorCode.TIMEOUT);
  });

  it('a flood of connections with an unknown key leaves a running session undisturbed; handshakes in flight stay bounded', {
    timeout: 60_000,
  }, async () => {
    const { port, listener, refused } = await server({ keepaliveMs: 100, deadAfterMs: 1000 }, [
      hostId.fingerprint,
    ]);
    const pin = endpointId.fingerprint;
    const { host, drops } = await runningSession(
      () => dialTcp('127.0.0.1', port, { identity: hostId, pin }),
      {
        keepaliveMs: 100,
        deadAfterMs: 1000,
      },
    );
    // The flood, from a process of its own (so that only the endpoint's side of it runs here):
    // FLOOD attempts, CONCURRENT at a time, every other one a TLS handshake with the stranger's
    // key, the others plain connections that say nothing (held until either side gives up).
    const FLOOD = 800;
    const CONCURRENT = 4 * MAX_HANDSHAKES;
    const flood = spawn(process.execPath, ['-e', FLOOD_SCRIPT], {
      env: {
        PORT: String(port),
        KEY: strangerId.key,
        CERT: strangerId.cert,
        FLOOD: String(FLOOD),
        CONCURRENT: String(CONCURRENT),
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    cleanup.push(() => {
      flood.kill('SIGKILL');
    });
    let out = '';
    flood.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const finished = new Promise<number | null>((r) => flood.once('exit', r));
    // Meanwhile the session carries messages both ways and must see every reply.
    let replies = 0;
    host.on('messages', (msgs: Msg[]) => {
      replies += msgs.length;
    });
    const ticker = setInterval(() => {
      host.send({ statsRequest: { nonce: long(1) } });
      host.flush();
    }, 20);
    try {
      expect(await finished).toBe(0);
    } finally {
      clearInterval(ticker);
    }
    expect(out).toMatch(`done ${FLOOD}`);
    const h = listener.handshakes!();
    expect(h.most).toBeLessThanOrEqual(MAX_HANDSHAKES);
    expect(h.turnedAway).toBeGreaterThan(0);
    expect(refused.some((r) => /not allowed/.test(r))).toBe(true);
    expect(drops()).toBe(0);
    expect(host.closed).toBe(false);
    // Requests every 20 ms over the flood's seconds: the answers kept coming.
    expect(replies).toBeGreaterThan(10);
  });

  it('connections that never say Hello are bounded too (plain TCP: BUSY past the bound)', async () => {
    const { port, sessions } = await server({ handshakeMs: 5000 });
    const peers = await Promise.all(Array.from({ length: MAX_PENDING_HANDSHAKES + 8 }, () => rawPeer(port)));
    await until(() => peers.filter((p) => errorCode(p.got) === ErrorCode.BUSY).length >= 8, 5000, 'BUSY');
    for (const p of peers) p.destroy();
    await Promise.all(peers.map((p) => p.closed));
    // The bound frees as they go: a host gets its session again (once the server saw them close).
    let host: Session | undefined;
    for (let i = 0; i < 50 && !host; i++) {
      host = await openSession(() => dialTcp('127.0.0.1', port)).catch(async (e: ProtocolError) => {
        expect(e.code).toBe(ErrorCode.BUSY);
        await new Promise((r) => setTimeout(r, 20));
        return undefined;
      });
    }
    cleanup.push(() => host?.close());
    expect(host).toBeDefined();
    expect(sessions).toHaveLength(1);
  });
});
