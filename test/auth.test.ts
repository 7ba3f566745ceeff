// Authentication: TLS and wss with mutual keys, pinned by fingerprint. A refused peer never gets a
// session, so no device is ever attached to it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { EndpointServer } from '../endpoint/server.js';
import { parseAddress } from '../proto/address.js';
import { type Identity, loadOrCreateIdentity } from '../proto/identity.js';
import { openSession } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { ErrorCode, ProtocolError } from '../proto/wire.js';
import { dialWs } from '../proto/ws.js';

let dir: string;
let endpointId: Identity;
let hostId: Identity;
let strangerId: Identity;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'pcinet-auth-'));
  [endpointId, hostId, strangerId] = await Promise.all(
    ['endpoint', 'host', 'stranger'].map((n) => loadOrCreateIdentity(join(dir, n))),
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  for (const c of cleanup.splice(0)) await c();
});

async function endpoint(scheme: 'tls' | 'wss', allow: string[]) {
  const model = new TestDevice();
  let attaches = 0;
  const attach = model.attach.bind(model);
  model.attach = (port) => {
    attaches++;
    attach(port);
  };
  const server = new EndpointServer({ models: [model], log: pino({ level: 'silent' }) });
  const where = await server.listen(parseAddress(`${scheme}://127.0.0.1:0`), { identity: endpointId, allow });
  cleanup.push(() => server.close());
  const port = Number(/:(\d+)/.exec(where.replace(/^\w+:\/\//, ''))![1]);
  return { server, port, attaches: () => attaches };
}

function dialer(scheme: 'tls' | 'wss', port: number, identity: Identity, pin: string) {
  return () =>
    scheme === 'tls'
      ? dialTcp('127.0.0.1', port, { identity, pin })
      : dialWs('127.0.0.1', port, '/', { identity, pin });
}

async function refusal(p: Promise<unknown>): Promise<ErrorCode | string> {
  try {
    await p;
    return 'accepted';
  } catch (e) {
    return e instanceof ProtocolError ? e.code : `not coded: ${(e as Error).message}`;
  }
}

describe.each(['tls', 'wss'] as const)('%s', (scheme) => {
  it('a host with the right pin and an allowed key gets its device attached', async () => {
    const ep = await endpoint(scheme, [hostId.fingerprint]);
    const s = await openSession(dialer(scheme, ep.port, hostId, endpointId.fingerprint));
    cleanup.push(() => s.close());
    expect(s.peerFingerprint).toBe(endpointId.fingerprint);
    const attach = await new Promise<unknown>((res) => s.once('messages', (m) => res(m)));
    expect(JSON.stringify(attach)).toContain('"attach"');
    expect(ep.server.active?.session.peerFingerprint).toBe(hostId.fingerprint);
  });

  it('a host with the wrong pin refuses the endpoint before any device is attached', async () => {
    const ep = await endpoint(scheme, [hostId.fingerprint]);
    const code = await refusal(openSession(dialer(scheme, ep.port, hostId, strangerId.fingerprint)));
    expect(code).toBe(ErrorCode.AUTH_REFUSED);
    await new Promise((r) => setTimeout(r, 100));
    expect(ep.server.served).toBe(0);
    expect(ep.attaches()).toBe(0);
  });

  it('an endpoint refuses a host it was not told to allow, before any device is attached', async () => {
    const ep = await endpoint(scheme, [hostId.fingerprint]);
    const code = await refusal(openSession(dialer(scheme, ep.port, strangerId, endpointId.fingerprint)));
    expect(code).toBe(ErrorCode.AUTH_REFUSED);
    expect(ep.server.served).toBe(0);
    expect(ep.attaches()).toBe(0);
  });

  it('a second host is refused with BUSY while the devices are held', async () => {
    const ep = await endpoint(scheme, [hostId.fingerprint, strangerId.fingerprint]);
    const first = await openSession(dialer(scheme, ep.port, hostId, endpointId.fingerprint));
    cleanup.push(() => first.close());
    const code = await refusal(openSession(dialer(scheme, ep.port, strangerId, endpointId.fingerprint)));
    expect(code).toBe(ErrorCode.BUSY);
    expect(ep.server.served).toBe(1);
  });
});
