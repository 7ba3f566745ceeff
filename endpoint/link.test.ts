// The endpoint's side of kernel links, against a scripted pcinet.ko: a host session over TCP that
// offers CAP_KERNEL_LINK, and a second connection speaking the kernel's records the way link.c
// does (hello, the endpoint's answer, records both ways).
import { createDecipheriv } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import pino from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { CMD, REG, testPattern } from '../devices/test/regs.js';
import { type Identity, loadOrCreateIdentity } from '../proto/identity.js';
import { ABI_VERSION, LINK_HELLO_SIZE, LINK_MAGIC, R, SEAL_TAG, W } from '../proto/kernel-abi.js';
import { RecordStream } from '../proto/kernel-link.js';
import { openSession, type Session } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { decodeRecord, TF_LINK, TF_TO_HOST } from '../proto/trace.js';
import { Capability, ErrorCode, long, type Msg, OUR_CAPABILITIES } from '../proto/wire.js';
import { sealFrame } from './sealed-fixture.js';
import { EndpointServer } from './server.js';

const log = pino({ level: 'silent' });
const servers: EndpointServer[] = [];
const sockets: net.Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function endpoint(tls?: { identity: Identity; allow: string[] }): Promise<number> {
  const server = new EndpointServer({ models: [new TestDevice()], log });
  servers.push(server);
  const where = await server.listen(
    { scheme: tls ? 'tls' : 'tcp', host: '127.0.0.1', port: 0, path: '/' },
    tls,
  );
  return Number(where.split(':').at(-1));
}

function openFrames(key: Uint8Array, bytes: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let seq = 0;
  for (let at = 0; bytes.length - at >= 4; ) {
    const len = bytes.readUInt32LE(at);
    if (bytes.length - at - 4 < len) break;
    const iv = Buffer.alloc(12);
    iv[0] = 1;
    iv.writeBigUInt64LE(BigInt(seq++), 4);
    const d = createDecipheriv('aes-256-gcm', key, iv);
    d.setAAD(bytes.subarray(at, at + 4));
    d.setAuthTag(bytes.subarray(at + 4 + len - SEAL_TAG, at + 4 + len));
    out.push(Buffer.concat([d.update(bytes.subarray(at + 4, at + 4 + len - SEAL_TAG)), d.final()]));
    at += 4 + len;
  }
  return out;
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
async function kernelLink(port: number, token: Uint8Array, sealed = false) {
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
  /** Everything after the answer, as it came (sealed links: frames). */
  let raw = Buffer.alloc(0);
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
    raw = Buffer.concat([raw, chunk]);
    if (sealed) {
      wake();
      return;
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
    get raw() {
      return raw;
    },
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

/** The host's AttachResult for `dev`: attached, its data plane on the kernel link. */
function attachedOnLink(session: Session, dev: number | null | undefined): void {
  session.send({ attachResult: { dev, code: ErrorCode.OK, address: '0010:00:00.0', link: true } });
  session.flush();
}

async function hostSession(port: number, link: boolean, tls?: { identity: Identity; pin: string }) {
  const session = await openSession(() => dialTcp('127.0.0.1', port, tls), {
    log,
    capabilities: link ? OUR_CAPABILITIES | Capability.CAP_KERNEL_LINK : OUR_CAPABILITIES,
  });
  const box = inbox(session);
  const attach = (await box.next((m) => !!m.attach)).attach!;
  return { session, box, attach };
}

const tlsDir = mkdtempSync(join(tmpdir(), 'pcinet-link-'));
afterAll(() => rmSync(tlsDir, { recursive: true, force: true }));
let tlsIds: Identity[] | undefined;

/** An endpoint on TLS and a host session to it: its kernel links are sealed. */
async function tlsSetup() {
  tlsIds ??= await Promise.all(['endpoint', 'host'].map((n) => loadOrCreateIdentity(join(tlsDir, n))));
  const ids = tlsIds;
  const port = await endpoint({ identity: ids[0]!, allow: [ids[1]!.fingerprint] });
  const h = await hostSession(port, true, { identity: ids[1]!, pin: ids[0]!.fingerprint });
  return { ...h, port };
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
    attachedOnLink(session, attach.dev);
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

  it('carries a DMA write as W_DMA_WRITE records, plain and sealed: the bytes the device wrote', async () => {
    for (const sealed of [false, true]) {
      const tls = sealed ? await tlsSetup() : undefined;
      const port = tls ? tls.port : await endpoint();
      const { session, attach } = tls ?? (await hostSession(port, true));
      const k = await kernelLink(port, attach.linkToken!, sealed);
      expect(await k.accepted()).toBe(true);
      attachedOnLink(session, attach.dev);
      // The test device hands its pattern over: records reference it (and pad it) as they go out.
      const size = 150_001;
      const dst = 0x4000_0000n;
      const cmd = [
        mmioWrite(0, REG.DST_ADDR, Number(dst & 0xffff_ffffn)),
        mmioWrite(0, REG.DST_ADDR + 4, Number(dst >> 32n)),
        mmioWrite(0, REG.SIZE, size),
        mmioWrite(0, REG.ARG, 5),
        mmioWrite(0, REG.COMMAND, CMD.DMA_WRITE),
      ];
      k.socket.write(sealed ? sealFrame(attach.linkKey!, 0, Buffer.concat(cmd)) : Buffer.concat(cmd));
      const records = (): Buffer[] => {
        if (!sealed) return k.records;
        const whole = new RecordStream().push(Buffer.concat(openFrames(attach.linkKey!, k.raw)));
        const out: Buffer[] = [];
        for (let at = 0; at < whole.length; at += whole.readUInt32LE(at + 4))
          out.push(whole.subarray(at, at + whole.readUInt32LE(at + 4)));
        return out;
      };
      const writes = () => records().filter((r) => typeOf(r) === W.DMA_WRITE);
      await k.until(() => writes().reduce((n, r) => n + r.readUInt32LE(8), 0) >= size);
      const data = Buffer.alloc(size);
      for (const r of writes()) {
        const at = Number(r.readBigUInt64LE(16) - dst);
        r.copy(data, at, 24, 24 + r.readUInt32LE(8));
        expect(r.length % 8).toBe(0);
      }
      expect(data.equals(Buffer.from(testPattern(5, size)))).toBe(true);
      // pcinet.ko takes only sealed frames of whole records.
      if (sealed)
        for (const t of openFrames(attach.linkKey!, k.raw))
          expect(new RecordStream().push(t)).toHaveLength(t.length);
      await session.close();
    }
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
    attachedOnLink(session, attach.dev);
    const err = await closed;
    expect(err?.message).toMatch(/UNEXPECTED_MESSAGE.*kernel link/);
  });

  it('a record the endpoint cannot parse closes the link', async () => {
    const port = await endpoint();
    const { session, attach } = await hostSession(port, true);
    const k = await kernelLink(port, attach.linkToken!);
    expect(await k.accepted()).toBe(true);
    attachedOnLink(session, attach.dev);
    const bad = Buffer.alloc(16);
    bad.writeUInt16LE(0x7f, 0);
    bad.writeUInt32LE(16, 4);
    k.socket.write(bad);
    await expect(k.until(() => false)).rejects.toThrow(/closed the link/);
    await session.close();
  });

  it('answers the device’s DMA reads from R_DMA_READ_CPL records, pieces put together, traced or not', async () => {
    for (const traced of [false, true]) {
      const port = await endpoint();
      const stop = traced ? servers.at(-1)!.trace.subscribe({ sink: () => true }) : undefined;
      const { session, attach } = await hostSession(port, true);
      const k = await kernelLink(port, attach.linkToken!);
      expect(await k.accepted()).toBe(true);
      attachedOnLink(session, attach.dev);
      // Host memory the kernel answers from: 150 000 bytes (three records' worth), or a refusal.
      const src = 0x5000_0000n;
      const memory = Buffer.from(testPattern(9, 150_000));
      let refuse = false;
      let answered = 0;
      // BAR 0 as the host's shadow has it.
      const shadow = Buffer.alloc(0x4000);
      let seen = 0;
      let paced = Promise.resolve();
      const answer = () => {
        for (; seen < k.records.length; seen++) {
          const r = k.records[seen]!;
          if (typeOf(r) === W.SHADOW && r.readUInt32LE(8) === 0)
            r.copy(shadow, Number(r.readBigUInt64LE(16)), 24, 24 + r.readUInt32LE(12));
          if (typeOf(r) !== W.DMA_READ) continue;
          const tag = r.readUInt32LE(8);
          const size = r.readUInt32LE(12);
          const at = Number(r.readBigUInt64LE(16) - src);
          const data = refuse ? Buffer.alloc(0) : memory.subarray(at, at + size);
          const cpl = Buffer.alloc((24 + data.length + 7) & ~7);
          cpl.writeUInt16LE(R.DMA_READ_CPL, 0);
          cpl.writeUInt32LE(cpl.length, 4);
          cpl.writeUInt32LE(tag, 8);
          cpl.writeUInt32LE(refuse ? 1 : 0, 12);
          cpl.writeUInt32LE(data.length, 16);
          data.copy(cpl, 24);
          // One at a time, apart: each completion is a read of its own (the large ones land in
          // the same reused buffer, where the link reads records that span reads).
          paced = paced.then(async () => {
            k.socket.write(cpl);
            await new Promise((r) => setTimeout(r, 5));
          });
          answered++;
        }
      };
      const read = async (size: number) => {
        k.socket.write(
          Buffer.concat([
            mmioWrite(0, REG.SRC_ADDR, Number(src)),
            mmioWrite(0, REG.SRC_ADDR + 4, 0),
            mmioWrite(0, REG.SIZE, size),
            mmioWrite(0, REG.COMMAND, CMD.DMA_READ),
          ]),
        );
        // Until the command is done: STATUS in the shadow says so.
        await k.until(() => {
          answer();
          return (shadow.readUInt32LE(REG.STATUS) & 3) !== 0;
        });
        const status = shadow.readUInt32LE(REG.STATUS);
        k.socket.write(mmioWrite(0, REG.STATUS, 3));
        await k.until(() => {
          answer();
          return (shadow.readUInt32LE(REG.STATUS) & 3) === 0;
        });
        return status;
      };
      expect(await read(150_000)).toBe(1);
      // Three records' worth: three pieces, put together for the device (its checksum says it got
      // them as they were sent).
      expect(answered).toBe(3);
      expect(shadow.readUInt32LE(REG.CHECKSUM)).toBe(crc32(memory));
      refuse = true;
      expect(await read(64)).toBe(3); // done, failed
      expect(shadow.readUInt32LE(REG.ERROR)).toBe(ErrorCode.DMA_FAULT);
      stop?.();
      await session.close();
    }
  });

  it('pushed bytes outlive the read buffer they came in: a later read is served what was pushed', async () => {
    for (const traced of [false, true]) {
      const port = await endpoint();
      const stop = traced ? servers.at(-1)!.trace.subscribe({ sink: () => true }) : undefined;
      const { session, attach } = await hostSession(port, true);
      const k = await kernelLink(port, attach.linkToken!);
      expect(await k.accepted()).toBe(true);
      attachedOnLink(session, attach.dev);
      const pushOf = (iova: bigint, data: Buffer) => {
        const push = Buffer.alloc((24 + data.length + 7) & ~7);
        push.writeUInt16LE(R.PUSH, 0);
        push.writeUInt32LE(push.length, 4);
        push.writeUInt32LE(data.length, 8);
        push.writeUInt32LE(0, 12);
        push.writeBigUInt64LE(iova, 16);
        data.copy(push, 24);
        return push;
      };
      const shadow = Buffer.alloc(0x4000);
      let writes = 0;
      /** Records as a read of their own each: sent, then waited for (WritesApplied counts). */
      const alone = async (...rs: Buffer[]) => {
        const all = [...rs, mmioWrite(0, REG.SCRATCH, 1)];
        writes += all.filter((r) => typeOf(r) === R.MMIO_WRITE).length;
        k.socket.write(Buffer.concat(all));
        await k.until(() => {
          const done = k.records.some(
            (r) => typeOf(r) === W.WRITES_APPLIED && r.readBigUInt64LE(8) === BigInt(writes),
          );
          absorb();
          return done;
        });
      };
      /** The records so far into the shadow; a DMA read would mean the pushed bytes went unused. */
      const absorb = () => {
        for (const r of k.records.splice(0))
          if (typeOf(r) === W.SHADOW && r.readUInt32LE(8) === 0)
            r.copy(shadow, Number(r.readBigUInt64LE(16)), 24, 24 + r.readUInt32LE(12));
          else if (typeOf(r) === W.DMA_READ) throw new Error('the pushed bytes were not used');
      };
      const checksum = async (src: bigint, size: number) => {
        k.socket.write(
          Buffer.concat([
            mmioWrite(0, REG.SRC_ADDR, Number(src & 0xffff_ffffn)),
            mmioWrite(0, REG.SRC_ADDR + 4, 0),
            mmioWrite(0, REG.SIZE, size),
            mmioWrite(0, REG.COMMAND, CMD.DMA_READ),
          ]),
        );
        await k.until(() => {
          absorb();
          return (shadow.readUInt32LE(REG.STATUS) & 3) !== 0;
        });
        expect(shadow.readUInt32LE(REG.STATUS) & 3).toBe(1);
        const sum = shadow.readUInt32LE(REG.CHECKSUM);
        k.socket.write(mmioWrite(0, REG.STATUS, 3));
        await k.until(() => {
          absorb();
          return (shadow.readUInt32LE(REG.STATUS) & 3) === 0;
        });
        return sum;
      };
      // A small push (it stays in the reused read buffer) and a large one (a record longer than
      // that buffer: read into a buffer of its own, reused for the next such record), each with a
      // write that makes it readable; then reads of other records, small and large, into the
      // same buffers.
      const small = Buffer.from(testPattern(3, 3000));
      const large = Buffer.from(testPattern(4, 65536));
      await alone(pushOf(0x6000_0000n, small));
      await alone(pushOf(0x6100_0000n, large));
      for (let i = 0; i < 3; i++) {
        await alone(...Array.from({ length: 50 }, () => mmioWrite(0, REG.ARG, i)));
        await alone(pushOf(0x6200_0000n + BigInt(i) * 0x10_0000n, Buffer.alloc(65536, i)));
      }
      expect(await checksum(0x6000_0000n, small.length)).toBe(crc32(small));
      expect(await checksum(0x6100_0000n, large.length)).toBe(crc32(large));
      stop?.();
      await session.close();
    }
  });

  it('a record the host got wrong ends the session as its message would, traced or not', async () => {
    // Untraced, records reach the runtime without messages; traced, as messages: the same checks.
    for (const traced of [false, true]) {
      for (const [offset, why] of [
        [0x10_0000n, /BAD_ARGUMENT.*outside BAR 0/],
        [1n << 60n, /BAD_ARGUMENT.*MmioWrite offset out of range/],
      ] as const) {
        const port = await endpoint();
        const stop = traced ? servers.at(-1)!.trace.subscribe({ sink: () => true }) : undefined;
        const { session, attach } = await hostSession(port, true);
        const closed = new Promise<Error | undefined>((r) => session.once('close', r));
        const k = await kernelLink(port, attach.linkToken!);
        expect(await k.accepted()).toBe(true);
        attachedOnLink(session, attach.dev);
        const w = mmioWrite(0, 0, 1);
        w.writeBigUInt64LE(offset, 16);
        k.socket.write(w);
        expect((await closed)?.message).toMatch(why);
        stop?.();
      }
    }
  });

  describe('on a TLS session: sealed links', () => {
    const setup = tlsSetup;

    it('the Attach carries a key, and the link speaks sealed frames both ways', async () => {
      const { session, attach, port } = await setup();
      const key = attach.linkKey!;
      expect(key.length).toBe(32);
      const k = await kernelLink(port, attach.linkToken!, true);
      expect(await k.accepted()).toBe(true);
      attachedOnLink(session, attach.dev);
      // One frame of two records, sent a byte at a time: the endpoint puts frames together.
      const frame = sealFrame(
        key,
        0,
        Buffer.concat([mmioWrite(0, REG.SCRATCH, 7), mmioRead(9, 0, REG.COUNTER)]),
      );
      for (const b of frame) k.socket.write(Buffer.of(b));
      const texts = async () => {
        await k.until(() => {
          try {
            const t = Buffer.concat(openFrames(key, k.raw));
            return t.includes(Buffer.from([W.MMIO_READ_CPL, 0]));
          } catch {
            return false;
          }
        });
        return Buffer.concat(openFrames(key, k.raw));
      };
      const text = await texts();
      const s = new RecordStream();
      const types: number[] = [];
      const whole = s.push(text);
      for (let at = 0; at < whole.length; at += whole.readUInt32LE(at + 4))
        types.push(whole.readUInt16LE(at));
      expect(types).toContain(W.WRITES_APPLIED);
      expect(types).toContain(W.MMIO_READ_CPL);
      await session.close();
    });

    it('a frame under the wrong key, or replayed, closes the link', async () => {
      for (const bad of ['key', 'replay'] as const) {
        const { session, attach, port } = await setup();
        const key = attach.linkKey!;
        const k = await kernelLink(port, attach.linkToken!, true);
        expect(await k.accepted()).toBe(true);
        attachedOnLink(session, attach.dev);
        const good = sealFrame(key, 0, mmioWrite(0, REG.SCRATCH, 1));
        if (bad === 'key')
          k.socket.write(sealFrame(new Uint8Array(32).fill(1), 0, mmioWrite(0, REG.SCRATCH, 1)));
        else k.socket.write(Buffer.concat([good, good]));
        await expect(k.until(() => false)).rejects.toThrow(/closed the link/);
        await session.close();
      }
    });
  });
});

describe('tracing a device on a kernel link (pcinet trace, endpoint/control.ts)', () => {
  it('records what the link carries both ways, marked as the link, and the session’s messages apart', async () => {
    const port = await endpoint();
    const server = servers.at(-1)!;
    const got: Buffer[] = [];
    const stop = server.trace.subscribe({
      sink: (records) => {
        for (const [, r] of records) got.push(Buffer.from(r));
        return true;
      },
    });
    const { session, attach } = await hostSession(port, true);
    const k = await kernelLink(port, attach.linkToken!);
    expect(await k.accepted()).toBe(true);
    attachedOnLink(session, attach.dev);
    k.socket.write(mmioWrite(0, REG.SCRATCH, 0xabcd_0123));
    k.socket.write(mmioRead(9, 0, REG.COUNTER));
    await k.until(() => k.records.some((r) => typeOf(r) === W.MMIO_READ_CPL));
    await new Promise((r) => setImmediate(r));
    stop();
    const recs = got.map((b) => decodeRecord(b));
    const seen = (kind: string, flags: number) =>
      recs.find((r) => r.kind === kind && (r.flags & (TF_LINK | TF_TO_HOST)) === flags);
    // The Attach went out on the session, without the link's key; the AttachResult came in on it.
    expect(seen('attach', TF_TO_HOST)).toBeDefined();
    expect(seen('attachResult', 0)).toBeDefined();
    // The data plane on the link: the kernel's write and read in, the fence and completion out.
    const w = seen('mmioWrite', TF_LINK)!;
    expect(w.dev).toBe(attach.dev);
    expect(Buffer.from(w.msg.mmioWrite!.data!).readUInt32LE(0)).toBe(0xabcd_0123);
    expect(seen('mmioRead', TF_LINK)?.msg.mmioRead?.tag).toBe(9);
    expect(seen('writesApplied', TF_LINK | TF_TO_HOST)).toBeDefined();
    expect(seen('mmioReadCpl', TF_LINK | TF_TO_HOST)?.msg.mmioReadCpl?.tag).toBe(9);
    expect(recs.filter((r) => r.kind === 'mmioWrite' && !(r.flags & TF_LINK))).toEqual([]);
    // Off again: the runtime holds no tap, so the data path records nothing.
    expect(server.active?.runtime.tap).toBeUndefined();
    await session.close();
  });
});
