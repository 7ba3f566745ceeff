import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { decodeFrame } from './codec.js';
import { openSession, type Session, SessionServer } from './session.js';
import type { Listener } from './tcp.js';
import { ErrorCode, long, num, type pcinet } from './wire.js';
import { dialWs, listenWs } from './ws.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function server() {
  const sessions: Session[] = [];
  const s = new SessionServer({}, (x) => sessions.push(x));
  const l: Listener = await listenWs('127.0.0.1', 0, '/pcinet', undefined, (t) => s.accept(t));
  cleanup.push(async () => {
    await s.close();
    await l.close();
  });
  return { sessions, port: l.port, address: l.address };
}

describe('WebSocket transport', () => {
  it('carries a session: one binary message per frame, in order', async () => {
    const { sessions, port, address } = await server();
    expect(address).toBe(`ws://127.0.0.1:${port}/pcinet`);
    const host = await openSession(() => dialWs('127.0.0.1', port, '/pcinet'));
    cleanup.push(() => host.close());
    const got: number[] = [];
    sessions[0]!.on('messages', (msgs: pcinet.Msg[]) => {
      for (const m of msgs) got.push(num(m.dmaWrite!.iova));
    });
    for (let i = 0; i < 500; i++) {
      host.send({ dmaWrite: { dev: 1, iova: long(i), data: new Uint8Array(100) } });
      if (i % 7 === 6) host.flush();
    }
    host.flush();
    const end = Date.now() + 5000;
    while (got.length < 500 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    expect(got).toEqual([...Array(500).keys()]);
  });

  it('a text message is MALFORMED: the peer gets a coded Error, the server keeps serving', async () => {
    const { port } = await server();
    const ws = new WebSocket(`ws://127.0.0.1:${port}/pcinet`);
    await new Promise((r) => ws.once('open', r));
    const frames: pcinet.Msg[][] = [];
    ws.on('message', (d: Buffer) => frames.push(decodeFrame(d).msgs));
    ws.send('hello?');
    await new Promise((r) => ws.once('close', r));
    expect(frames.flat()[0]?.error?.code).toBe(ErrorCode.MALFORMED);
    const again = await openSession(() => dialWs('127.0.0.1', port, '/pcinet'));
    expect(again.closed).toBe(false);
    await again.close();
  });

  it('a wrong path is refused with 404 and plain HTTP with 426', async () => {
    const { port } = await server();
    await expect(dialWs('127.0.0.1', port, '/other')).rejects.toThrow(/404/);
    const res = await fetch(`http://127.0.0.1:${port}/pcinet`);
    expect(res.status).toBe(426);
  });
});
