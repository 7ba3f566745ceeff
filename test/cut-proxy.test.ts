// CutProxy's cut at a moment (cutNextLink): a kernel link's hello passes, its first record
// does not, and at that record every connection is reset and new ones are refused.
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { LINK_HELLO_SIZE, LINK_MAGIC } from '../proto/kernel-abi.js';
import { CutProxy } from './cut-proxy.js';

/** A server that keeps what each connection sent, in order of connection. */
async function recorder() {
  const got: Buffer[][] = [];
  const server = net.createServer((s) => {
    const chunks: Buffer[] = [];
    got.push(chunks);
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => {});
  });
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  return { got, server, port: (server.address() as net.AddressInfo).port };
}

/** Connects to the proxy; resolves with the socket and a promise of how it ended. */
async function dial(port: number) {
  const s = net.connect(port, '127.0.0.1');
  const ended = new Promise<string>((res) => {
    s.on('error', (e) => res((e as NodeJS.ErrnoException).code ?? e.message));
    s.on('close', () => res('closed'));
  });
  await new Promise<void>((res) => s.once('connect', () => res()));
  return { s, ended };
}

const until = async (cond: () => boolean, what: string) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`never: ${what}`);
};

describe('CutProxy.cutNextLink', () => {
  const cleanup: (() => unknown)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0)) await f();
  });

  it('passes a session’s bytes, older links’ records and the hello; cuts at the next link’s first record', async () => {
    const rec = await recorder();
    cleanup.push(() => rec.server.close());
    const proxy = await CutProxy.start(rec.port);
    cleanup.push(() => proxy.close());
    const hello = Buffer.alloc(LINK_HELLO_SIZE);
    LINK_MAGIC.copy(hello);
    const old = await dial(proxy.port);
    old.s.write(hello);
    await until(() => Buffer.concat(rec.got[0] ?? []).length === LINK_HELLO_SIZE, 'the old hello');
    let fired = 0;
    proxy.cutNextLink(() => fired++);

    // A link opened before the trap was armed carries its records.
    old.s.write(Buffer.from('an old record'));
    await until(() => Buffer.concat(rec.got[0]!).length > LINK_HELLO_SIZE, 'the old record');
    const session = await dial(proxy.port);
    session.s.write(Buffer.from('a session frame'));
    await until(() => rec.got[1]?.length === 1, 'the session bytes');

    const link = await dial(proxy.port);
    link.s.write(hello);
    await until(() => Buffer.concat(rec.got[2] ?? []).length === LINK_HELLO_SIZE, 'the hello');
    expect(fired).toBe(0);

    link.s.write(Buffer.from('a record'));
    expect(await link.ended).toBe('ECONNRESET');
    expect(await session.ended).toBe('ECONNRESET');
    expect(await old.ended).toBe('ECONNRESET');
    expect(fired).toBe(1);
    expect(Buffer.concat(rec.got[2]!)).toEqual(hello);
    // New connections are refused, as after a cut.
    const late = net.connect(proxy.port, '127.0.0.1');
    const refused = await new Promise<string>((res) => {
      late.on('error', (e) => res((e as NodeJS.ErrnoException).code ?? e.message));
      late.on('close', () => res('closed'));
    });
    expect(['ECONNRESET', 'closed']).toContain(refused);
    expect(proxy.refused).toBe(1);
  });

  it('a hello and a record in one chunk: the hello passes, the record does not', async () => {
    const rec = await recorder();
    cleanup.push(() => rec.server.close());
    const proxy = await CutProxy.start(rec.port);
    cleanup.push(() => proxy.close());
    let fired = 0;
    proxy.cutNextLink(() => fired++);
    const link = await dial(proxy.port);
    const hello = Buffer.alloc(LINK_HELLO_SIZE);
    LINK_MAGIC.copy(hello);
    link.s.write(Buffer.concat([hello, Buffer.from('a record')]));
    expect(await link.ended).toBe('ECONNRESET');
    expect(fired).toBe(1);
    await until(() => rec.got.length === 1, 'the upstream connection');
    await new Promise((r) => setTimeout(r, 50));
    expect(Buffer.concat(rec.got[0]!)).toEqual(hello);
  });
});
