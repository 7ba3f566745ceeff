// The endpoint's side of kernel links, against a scripted pcinet.ko: a host session over TCP that
// offers CAP_KERNEL_LINK, and a second connection speaking the kernel's records the way link.c
// does (hello, the endpoint's answer, records both ways).
import net from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { REG } from '../devices/test/regs.js';
import { ABI_VERSION, LINK_HELLO_SIZE, LINK_MAGIC, R, W } from '../proto/kernel-abi.js';
import { RecordStream } from '../proto/kernel-link.js';
import { openSession, type Session } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { Capability, ErrorCode, long, type Msg, OUR_CAPABILITIES } from '../proto/wire.js';
import { EndpointServer } from './server.js';

const log = pino({ level: 'silent' });
const servers: EndpointServer[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function endpoint(): Promise<number> {
  const server = new EndpointServer({ models: [new TestDevice()], log });
  servers.push(server);
  const where = await server.listen({ scheme: 'tcp', host: '127.0.0.1', port: 0, path: '/' });
  return Number(where.split(':').at(-1));
}

/** Messages of the session as they come, and a way to wait for one. */
function inbox(session: Session) {
  const got: Msg[] = [];
  const waiters: (() => void)[] = [];
  session.on('messages', (msgs: Msg[]) => {
    got.push(...msgs);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (pick: (m: Msg) => boolean): Promise<Msg> => {
    for (;;) {
      const m = got.find(pick);
      if (m) return m;
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return { next };
}

/** A scripted kernel link: hello out, then records both ways. */
async function kernelLink(port: number, token: Uint8Array) {
  const s = net.connect({ host: '127.0.0.1', port });
  sockets.push(s);
  await new Promise<void>((r, j) => s.once('connect', r).once('error', j));
  const hello = Buffer.alloc(LINK_HELLO_SIZE);
  LINK_MAGIC.copy(hello, 0);
  hello.set(token, 8);
  hello.writeUInt32LE(ABI_VERSION, 24);
  s.write(hello);
  const stream = new RecordStream();
  const records: Buffer[] = [];
  let answer = Buffer.alloc(0);
  let closed = false;
  const waiters: (() => void)[] = [];
  const wake = () => {
    for (const w of waiters.splice(0)) w();
  };
  s.on('data', (chunk: Buffer) => {
    if (answer.length < 8) {
      const need = 8 - answer.length;
      answer = Buffer.concat([answer, chunk.subarray(0, need)]);
      chunk = chunk.subarray(need);
    }
    const whole = stream.push(chunk);
    for (let at = 0; at < whole.length; at += whole.readUInt32LE(at + 4)) {
      records.push(whole.subarray(at, at + whole.readUInt32LE(at + 4)));
    }
    wake();
  });
  s.on('close', () => {
    closed = true;
    wake();
  });
  const until = async (ok: () => boolean) => {
    while (!ok()) {
      if (closed) throw new Error('the endpoint closed the link');
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return {
    socket: s,
    /** True once the endpoint answered the hello; false if it closed the link instead. */
    accepted: async () => {
      try {
        await until(() => answer.length === 8);
        return answer.equals(LINK_MAGIC);
      } catch {
        return false;
      }
    },
    records,
    until,
    get closed() {
      return closed;
    },
  };
}

function mmioWrite(bar: number, offset: number, value: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt16LE(R.MMIO_WRITE, 0);
  b.writeUInt32LE(32, 4);
  b.writeUInt32LE(bar, 8);
  b.writeUInt32LE(4, 12);
  b.writeBigUInt64LE(BigInt(offset), 16);
  b.writeUInt32LE(value, 24);
  return b;
}

function mmioRead(tag: number, bar: number, offset: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt16LE(R.MMIO_READ, 0);
  b.writeUInt32LE(32, 4);
  b.writeUInt32LE(tag, 8);
  b.writeUInt32LE(bar, 12);
  b.writeUInt32LE(4, 16);
  b.writeBigUInt64LE(BigInt(offset), 24);
  return b;
}

const typeOf = (r: Buffer) => r.readUInt16LE(0);

async function hostSession(port: number, link: boolean) {
  const session = await openSession(() => dialTcp('127.0.0.1', port), {
    log,
    capabilities: link ? OUR_CAPABILITIES | Capability.CAP_KERNEL_LINK : OUR_CAPABILITIES,
  });
  const box = inbox(session);
  const attach = (await box.next((m) => !!m.attach)).attach!;
  return { session, box, attach };
}

describe('kernel links at the endpoint', () => {
  it('a device whose host opened a link speaks the kernel records on it: writes, fences, volatile reads', async () => {
    const port = await endpoint();
    const { session, attach } = await hostSession(port, true);
    expect(attach.linkToken?.length).toBe(16);
    const k = await kernelLink(port, attach.linkToken!);
    expect(await k.accepted()).toBe(true);
    // Records the kernel queued while the device was being attached wait for the AttachResult.
    k.socket.write(mmioWrite(0, REG.SCRATCH, 0x1234_5678));
    session.send({
      attachResult: { dev: attach.dev, code: ErrorCode.OK, address: '0010:00:00.0', link: true },
    });
    session.flush();
    await k.until(() => k.records.some((r) => typeOf(r) === W.WRITES_APPLIED));
    const applied = k.records.find((r) => typeOf(r) === W.WRITES_APPLIED)!;
    expect(applied.readBigUInt64LE(8)).toBe(1n);
    // The shadow update the write caused comes on the link too, before the fence.
    const shadows = k.records.filter((r) => typeOf(r) === W.SHADOW);
    expect(shadows.length).toBeGreaterThan(0);
    expect(k.records.indexOf(shadows.at(-1)!)).toBeLessThan(k.records.indexOf(applied));

    k.socket.write(mmioRead(7, 0, REG.COUNTER));
    await k.until(() => k.records.some((r) => typeOf(r) === W.MMIO_READ_CPL));
    const cpl = k.records.find((r) => typeOf(r) === W.MMIO_READ_CPL)!;
    expect(cpl.readUInt32LE(8)).toBe(7);
    expect(cpl.readUInt32LE(12)).toBe(0);
    await session.close();
  });

  it('a token nobody offered is refused: the connection closes without the answer', async () => {
    const port = await endpoint();
    const { session } = await hostSession(port, true);
    const k = await kernelLink(port, new Uint8Array(16).fill(0xee));
    expect(await k.accepted()).toBe(false);
    await session.close();
  });

  it('no token without CAP_KERNEL_LINK, and the device works over the session as before', async () => {
    const port = await endpoint();
    const { session, box, attach } = await hostSession(port, false);
    expect(attach.linkToken?.length ?? 0).toBe(0);
    session.send({ attachResult: { dev: attach.dev, code: ErrorCode.OK, address: 'sim:00:01.0' } });
    session.send({ mmioRead: { dev: attach.dev, tag: 3, bar: 0, offset: long(REG.COUNTER), size: 4 } });
    session.flush();
    const c = (await box.next((m) => !!m.mmioReadCpl)).mmioReadCpl!;
    expect(c.tag).toBe(3);
    await session.close();
  });

  it('an AttachResult that claims a link the endpoint never saw ends the session', async () => {
    const port = await endpoint();
    const { session, attach } = await hostSession(port, true);
    const closed = new Promise<Error | undefined>((r) => session.once('close', r));
    session.send({
      attachResult: { dev: attach.dev, code: ErrorCode.OK, address: '0010:00:00.0', link: true },
    });
    session.flush();
    const err = await closed;
    expect(err?.message).toMatch(/UNEXPECTED_MESSAGE.*kernel link/);
  });

  it('a record the endpoint cannot parse closes the link', async () => {
    const port = await endpoint();
    const { session, attach } = await hostSession(port, true);
    const k = await kernelLink(port, attach.linkToken!);
    expect(await k.accepted()).toBe(true);
    session.send({
      attachResult: { dev: attach.dev, code: ErrorCode.OK, address: '0010:00:00.0', link: true },
    });
    session.flush();
    const bad = Buffer.alloc(16);
    bad.writeUInt16LE(0x7f, 0);
    bad.writeUInt32LE(16, 4);
    k.socket.write(bad);
    await expect(k.until(() => false)).rejects.toThrow(/closed the link/);
    await session.close();
  });
});
