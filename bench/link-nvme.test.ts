// bench/endpoint-io's workstation side against an endpoint in this process: the scripted kernel
// link (kernel-peer.ts) and the NVMe driver on it (link-nvme.ts) bring a controller up and move
// data both ways; and the records they speak, byte for byte.
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { NvmeController } from '../devices/nvme/controller.js';
import { MemoryBackend } from '../endpoint/backends/block.js';
import { EndpointServer } from '../endpoint/server.js';
import { parseRecords, W } from '../proto/kernel-abi.js';
import { openSession, type Session } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { Capability, ErrorCode, type Msg, OUR_CAPABILITIES, u64 } from '../proto/wire.js';
import { dmaReadCplRecord, KernelPeer, mmioWriteRecord, parseWRecord, pushRecord } from './kernel-peer.js';
import { DRIVER_MEMORY, LinkNvmeDriver, MAX_IO, needEvent } from './link-nvme.js';

const log = pino({ level: 'silent' });
const BASE = 0x2000_0000n;
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('the records the kernel peer speaks', () => {
  it('R_MMIO_WRITE, R_PUSH and R_DMA_READ_CPL parse as the endpoint parses them', () => {
    const recs = parseRecords(
      Buffer.concat([
        mmioWriteRecord(0, 0x1008, Uint8Array.of(5, 0, 0, 0)),
        pushRecord(1, 0x1234_5000n, Uint8Array.of(1, 2, 3)),
        dmaReadCplRecord(9, Uint8Array.of(7, 7)),
        dmaReadCplRecord(10, undefined),
      ]),
    );
    const plain = recs.map((r) => ('data' in r ? { ...r, data: [...r.data] } : r));
    expect(plain).toEqual([
      { type: 'mmio-write', bar: 0, offset: 0x1008n, data: [5, 0, 0, 0] },
      { type: 'push', rule: 1, iova: 0x1234_5000n, data: [1, 2, 3] },
      { type: 'dma-read-cpl', tag: 9, ok: true, data: [7, 7] },
      { type: 'dma-read-cpl', tag: 10, ok: false, data: [] },
    ]);
  });

  it('W records from raw bytes: an interrupt, a DMA read, an NVMe push rule', () => {
    const hex = (s: string) => Buffer.from(s.replace(/ /g, ''), 'hex');
    expect(parseWRecord(hex('0900 0000 10000000 03000000 00000000'))).toEqual({
      type: 'interrupt',
      vector: 3,
    });
    expect(parseWRecord(hex('0700 0000 18000000 05000000 40000000 0010000000000000'))).toEqual({
      type: 'dma-read',
      tag: 5,
      size: 64,
      iova: 0x1000n,
    });
    const rule = Buffer.alloc(72);
    rule.writeUInt16LE(W.PUSH_RULE, 0);
    rule.writeUInt32LE(72, 4);
    rule.writeUInt32LE(1, 8); // id
    rule.writeUInt32LE(1, 12); // NVMe SQ
    rule.writeUInt32LE(1024, 20);
    rule.writeBigUInt64LE(0x1008n, 24);
    rule.writeBigUInt64LE(0x8000n, 32);
    rule.writeUInt32LE(131072, 48);
    rule.writeUInt32LE(9, 52);
    expect(parseWRecord(rule)).toEqual({
      type: 'push-rule',
      id: 1,
      rule: {
        kind: 'nvme-sq',
        bar: 0,
        entries: 1024,
        doorbell: 0x1008,
        base: 0x8000n,
        dataMax: 131072,
        lbaShift: 9,
      },
    });
  });
});

async function endpointWithDisk(): Promise<{ port: number; backend: MemoryBackend }> {
  const backend = new MemoryBackend(1 << 20);
  const server = new EndpointServer({ models: [new NvmeController({ backend, queues: 1 })], log });
  cleanup.push(() => server.close());
  const where = await server.listen({ scheme: 'tcp', host: '127.0.0.1', port: 0, path: '/' });
  return { port: Number(where.split(':').at(-1)), backend };
}

function next(session: Session, pick: (m: Msg) => boolean): Promise<Msg> {
  return new Promise((resolve) => {
    const on = (msgs: Msg[]) => {
      const m = msgs.find(pick);
      if (!m) return;
      session.off('messages', on);
      resolve(m);
    };
    session.on('messages', on);
  });
}

async function driverOnLink(
  o: { dbbuf?: boolean } = {},
): Promise<{ drv: LinkNvmeDriver; peer: KernelPeer; backend: MemoryBackend }> {
  const { port, backend } = await endpointWithDisk();
  const session = await openSession(() => dialTcp('127.0.0.1', port), {
    log,
    capabilities: OUR_CAPABILITIES | Capability.CAP_KERNEL_LINK,
  });
  cleanup.push(() => session.close());
  const attach = (await next(session, (m) => !!m.attach)).attach!;
  const peer = await KernelPeer.open(port, attach.linkToken!, {
    base: BASE,
    memory: DRIVER_MEMORY,
    barSize: Number(u64(attach.desc!.bars![0]!.size)),
  });
  cleanup.push(() => peer.close());
  session.send({
    attachResult: { dev: attach.dev, code: ErrorCode.OK, address: '0000:01:00.0', link: true },
  });
  session.flush();
  const drv = new LinkNvmeDriver(peer, BASE);
  await drv.start(o);
  return { drv, peer, backend };
}

describe('an NVMe driver on the kernel peer', () => {
  it('brings the controller up and writes and reads 4 KiB, the write data pushed with the doorbell', async () => {
    const { drv, peer, backend } = await driverOnLink();
    const data = drv.data.subarray(0, 0x1000);
    for (let i = 0; i < 0x1000; i++) data[i] = i & 0xff;
    const dmaReads = peer.counters.dmaReads;
    await drv.io(true, 0x3000);
    // The SQE and the data came with the doorbell: the endpoint read nothing over the link.
    expect(peer.counters.dmaReads).toBe(dmaReads);
    const stored = await backend.read(0x3000, 0x1000);
    expect(Buffer.from(stored).equals(Buffer.from(data))).toBe(true);
    data.fill(0);
    await drv.io(false, 0x3000);
    expect(data[0x123]).toBe(0x23);
    expect(Buffer.from(data).equals(Buffer.from(stored))).toBe(true);
  });

  it('moves 128 KiB through a PRP list, the list and the data pushed with the doorbell', async () => {
    const { drv, peer, backend } = await driverOnLink();
    expect(drv.data.length).toBe(MAX_IO);
    for (let i = 0; i < MAX_IO; i++) drv.data[i] = (i ^ (i >> 12)) & 0xff;
    const written = Buffer.from(drv.data);
    const dmaReads = peer.counters.dmaReads;
    await drv.io(true, 0x40000, MAX_IO);
    expect(peer.counters.dmaReads).toBe(dmaReads);
    expect(Buffer.from(await backend.read(0x40000, MAX_IO)).equals(written)).toBe(true);
    drv.data.fill(0);
    await drv.io(false, 0x40000, MAX_IO);
    expect(Buffer.from(drv.data).equals(written)).toBe(true);
    // Two pages: PRP2 is the second page itself, no list.
    drv.data.fill(0);
    await drv.io(false, 0x41000, 0x2000);
    expect(Buffer.from(drv.data.subarray(0, 0x2000)).equals(written.subarray(0x1000, 0x3000))).toBe(true);
    expect(peer.counters.dmaReads).toBe(dmaReads);
  });

  it('with Doorbell Buffer Config, as Linux in the lab: one doorbell per I/O, the CQ head in the shadow', async () => {
    const { drv, peer, backend } = await driverOnLink({ dbbuf: true });
    for (let i = 0; i < 0x1000; i++) drv.data[i] = (i * 5) & 0xff;
    const written = Buffer.from(drv.data.subarray(0, 0x1000));
    const rung = drv.doorbells.rung;
    const rounds = peer.counters.rounds;
    const dmaReads = peer.counters.dmaReads;
    for (let i = 0; i < 20; i++) await drv.io(true, 0x5000 + i * 0x1000);
    for (let i = 0; i < 20; i++) {
      drv.data.fill(0, 0, 0x1000);
      await drv.io(false, 0x5000 + i * 0x1000);
      expect(Buffer.from(drv.data.subarray(0, 0x1000)).equals(written)).toBe(true);
    }
    expect(Buffer.from(await backend.read(0x5000, 0x1000)).equals(written)).toBe(true);
    // Every submission rang (QD1: its round came before the next one); no CQ head did.
    expect(drv.doorbells.rung - rung).toBe(40);
    expect(drv.doorbells.shadowed).toBeGreaterThanOrEqual(40);
    // The model ends a round of the SQ with every doorbell, and nothing was read over the link.
    expect(peer.counters.rounds - rounds).toBeGreaterThanOrEqual(40);
    expect(peer.counters.dmaReads).toBe(dmaReads);
  });
});

describe('needEvent (Linux nvme_dbbuf_need_event)', () => {
  it('rings when the move passes the event index, in 16 bits', () => {
    expect(needEvent(5, 6, 5)).toBe(true);
    expect(needEvent(5, 5, 4)).toBe(false);
    expect(needEvent(5, 8, 4)).toBe(true);
    expect(needEvent(0xffff, 1, 0)).toBe(false);
    expect(needEvent(0xffff, 0, 0xffff)).toBe(true);
  });
});
