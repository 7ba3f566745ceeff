import { crc32 } from 'node:zlib';
import pino from 'pino';
import { expect, describe as group, it } from 'vitest';
import { type DeviceModel, type DirtyRange, DmaError, type HostPort } from '../devices/host-port.js';
import { settle } from '../devices/pci/fake-host.js';
import { leBytes, rd32 } from '../devices/pci/le.js';
import { TestDevice } from '../devices/test/device.js';
import { CMD, REG, STATUS, testPattern } from '../devices/test/regs.js';
import { ErrorCode, long, MAX_DMA_CHUNK, type Msg, ProtocolError, pcinet, u64 } from '../proto/wire.js';
import { wireDescription } from './describe.js';
import { FakeSession, summary } from './fake-session.js';
import { EndpointRuntime, FLUSH_BYTES, type RuntimeOptions, TRACE_LOG_BURST } from './runtime.js';

const w32 = (dev: number, bar: number, off: number, v: number): Msg => ({
  mmioWrite: { dev, bar, offset: long(off), data: leBytes(v, 4) },
});
const w64 = (dev: number, bar: number, off: number, v: bigint): Msg => ({
  mmioWrite: { dev, bar, offset: long(off), data: leBytes(v, 8) },
});
const ok = (dev: number, address = `0000:10:0${dev}.0`): Msg => ({
  attachResult: { dev, code: ErrorCode.OK, address },
});

/** A runtime over a fake session with its devices attached. */
async function world(models: DeviceModel[] = [new TestDevice()], options: RuntimeOptions = {}) {
  const session = new FakeSession();
  const runtime = new EndpointRuntime(session, models, options);
  const started = runtime.start();
  session.deliver(...models.map((_, i) => ok(i + 1)));
  const outcomes = await started;
  session.reset();
  return { session, runtime, outcomes };
}

function protocolCode(fn: () => void): ErrorCode | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e.code;
    throw e;
  }
  return undefined;
}

/** The device's register as the host's shadow would have it after these messages. */
function shadowed(msgs: readonly Msg[], bar: number, reg: number): number | undefined {
  let v: number | undefined;
  for (const m of msgs) {
    const s = m.shadowUpdate;
    if (!s || s.bar !== bar) continue;
    const off = Number(u64(s.offset));
    if (reg >= off && reg + 4 <= off + s.data!.length) v = rd32(s.data!, reg - off);
  }
  return v;
}

/** A model that hands its port to the test and records what it is told. */
class Probe implements DeviceModel {
  readonly description = new TestDevice().description;
  port: HostPort | undefined;
  dirty: DirtyRange[] = [];
  resets = 0;
  attach(port: HostPort): void {
    this.port = port;
  }
  detach(): void {
    this.port = undefined;
  }
  mmioWrite(): void {}
  mmioRead(_bar: number, _offset: number, size: number): Uint8Array {
    return new Uint8Array(size);
  }
  configWrite(): void {}
  reset(): void {
    this.resets++;
  }
  takeDirty(): DirtyRange[] {
    const d = this.dirty;
    this.dirty = [];
    return d;
  }
  counters(): Record<string, number> {
    return { probes: 1 };
  }
}

group('EndpointRuntime: attach', () => {
  it('sends Attach for each device in one frame, ids 1..N, and resolves with the host answers', async () => {
    const session = new FakeSession();
    const a = new TestDevice();
    const b = new TestDevice({ vectors: 2 });
    const runtime = new EndpointRuntime(session, [a, b]);
    const started = runtime.start();
    expect(session.frames.length).toBe(1);
    expect(summary(session.frames[0])).toEqual(['attach 1', 'attach 2']);
    expect(session.frames[0][1].attach!.desc).toEqual(wireDescription(b.description));
    session.deliver(ok(1, '0000:10:00.0'));
    expect(a.attached).toBe(true);
    session.deliver({ attachResult: { dev: 2, code: ErrorCode.BAD_CONFIG, message: 'no room' } });
    expect(await started).toEqual([
      { dev: 1, model: 'test', code: ErrorCode.OK, message: '', address: '0000:10:00.0' },
      { dev: 2, model: 'test', code: ErrorCode.BAD_CONFIG, message: 'no room', address: '' },
    ]);
    expect(b.attached).toBe(false);
    // The refused device does not exist for the host.
    expect(protocolCode(() => session.deliver(w32(2, 0, REG.SCRATCH, 1)))).toBe(ErrorCode.UNKNOWN_DEVICE);
  });

  it('refuses device messages before AttachResult, and AttachResult twice', () => {
    const session = new FakeSession();
    void new EndpointRuntime(session, [new TestDevice()]).start();
    expect(protocolCode(() => session.deliver(w32(1, 0, REG.SCRATCH, 1)))).toBe(ErrorCode.UNKNOWN_DEVICE);
    session.deliver(ok(1));
    expect(protocolCode(() => session.deliver(ok(1)))).toBe(ErrorCode.UNEXPECTED_MESSAGE);
    expect(protocolCode(() => session.deliver(ok(7)))).toBe(ErrorCode.UNEXPECTED_MESSAGE);
  });

  it('close() before AttachResult: Detach sent, outcome SHUTDOWN, the late answer ignored', async () => {
    const session = new FakeSession();
    const dev = new TestDevice();
    const runtime = new EndpointRuntime(session, [dev]);
    const started = runtime.start();
    runtime.close();
    expect(summary(session.sent)).toEqual(['attach 1', 'detach 1']);
    session.deliver(ok(1));
    expect(dev.attached).toBe(false);
    expect((await started)[0]).toMatchObject({ dev: 1, code: ErrorCode.SHUTDOWN });
  });

  it('rejects start when the session closes first', async () => {
    const session = new FakeSession();
    const started = new EndpointRuntime(session, [new TestDevice()]).start();
    session.close(new Error('gone'));
    await expect(started).rejects.toThrow('gone');
  });
});

group('EndpointRuntime: ordering', () => {
  it('pushes register changes before the interrupts they announce, WritesApplied last, one frame', async () => {
    const { session } = await world();
    session.deliver(
      w32(1, 0, REG.IRQ_VECTOR, 5),
      w32(1, 0, REG.ARG, 2),
      w32(1, 0, REG.COMMAND, CMD.RAISE_MSIX),
    );
    expect(session.frames.length).toBe(1);
    const f = summary(session.frames[0]);
    expect(f.filter((x) => x.startsWith('interrupt'))).toEqual(['interrupt 2', 'interrupt 5']);
    expect(f.at(-1)).toBe('applied 3');
    // Everything the driver's ISR reads is in the shadow before the completion interrupt.
    const before = session.frames[0].slice(0, f.indexOf('interrupt 5'));
    expect(shadowed(before, 0, REG.STATUS)).toBe(STATUS.DONE);
    expect(shadowed(before, 0, REG.DONE_COUNT)).toBe(1);
    expect(shadowed(before, 0, REG.IRQ_VECTOR)).toBe(5);
  });

  it('WritesApplied counts non-doorbell writes cumulatively; doorbell-only batches send none', async () => {
    const { session } = await world();
    session.deliver(w32(1, 0, REG.SCRATCH, 1), w32(1, 2, 0x10, 2));
    session.deliver(w32(1, 0, REG.IRQ_DOORBELL, 3));
    session.deliver(w32(1, 0, REG.IRQ_DOORBELL, 4), w32(1, 0, REG.SCRATCH, 9));
    expect(session.frames.map(summary)).toEqual([
      ['shadow 0 0x8+4', 'shadow 2 0x10+4', 'applied 2'],
      ['interrupt 3'],
      ['interrupt 4', 'shadow 0 0x8+4', 'applied 3'],
    ]);
  });

  it('writes to read-only, unmapped or memory bytes count too (the host waits for them)', async () => {
    const { session } = await world();
    session.deliver(w32(1, 0, REG.MAGIC, 0), w32(1, 0, 0x1000, 0), w32(1, 2, 0xfffc, 7));
    expect(summary(session.frames[0]).at(-1)).toBe('applied 3');
    expect(shadowed(session.frames[0], 0, REG.MAGIC)).toBe(0x544e4350);
  });

  it('FunctionReset restarts the count and pushes the registers it reset', async () => {
    const dev = new TestDevice();
    const { session } = await world([dev]);
    session.deliver(w32(1, 0, REG.SCRATCH, 0x55), w32(1, 0, REG.ARG, 1));
    session.deliver({ functionReset: { dev: 1 } });
    // SCRATCH's low byte and ARG's low byte changed; the 15 bytes between ride along.
    expect(summary(session.frames[1])).toEqual(['shadow 0 0x8+17']);
    expect(shadowed(session.frames[1], 0, REG.SCRATCH)).toBe(0);
    session.deliver(w32(1, 0, REG.SCRATCH, 1));
    expect(summary(session.frames[2]).at(-1)).toBe('applied 1');
  });

  it('answers volatile reads from the device and refuses others with BAD_ARGUMENT and a trace', async () => {
    const { session, runtime } = await world();
    const read = (tag: number, offset: number): Msg => ({
      mmioRead: { dev: 1, tag, bar: 0, offset: long(offset), size: 4 },
    });
    session.deliver(read(7, REG.COUNTER), read(8, REG.COUNTER), read(9, REG.SCRATCH));
    const cpl = session.frames[0].map((m) => m.mmioReadCpl!);
    expect(cpl.map((c) => [c.tag, c.status, c.data ? rd32(c.data, 0) : undefined])).toEqual([
      [7, ErrorCode.OK, 1],
      [8, ErrorCode.OK, 2],
      [9, ErrorCode.BAD_ARGUMENT, undefined],
    ]);
    expect(runtime.counters()['dev1.traces']).toBe(1);
    expect(runtime.counters()['dev1.mmioReads']).toBe(3);
  });

  it('a read completion is preceded by the shadow changes of earlier writes', async () => {
    const { session } = await world();
    session.deliver(w32(1, 0, REG.SCRATCH, 3), {
      mmioRead: { dev: 1, tag: 1, bar: 0, offset: long(REG.COUNTER), size: 4 },
    });
    expect(summary(session.frames[0])).toEqual(['shadow 0 0x8+4', 'readCpl 1 0', 'applied 1']);
  });

  it('passes config writes to the model', async () => {
    const dev = new TestDevice();
    const { session } = await world([dev]);
    session.deliver({ configWrite: { dev: 1, offset: 4, size: 2, value: 0x6 } });
    expect(dev.busMaster).toBe(true);
  });
});

group('EndpointRuntime: DMA', () => {
  it('DMA_READ: chunked at MAX_DMA_CHUNK, tags bounded, checksum and interrupt after the data', async () => {
    const dev = new TestDevice();
    const { session } = await world([dev], { maxDmaTags: 4 });
    const size = 8 * MAX_DMA_CHUNK + 100;
    const host = testPattern(42, size);
    const base = 0x8000_0000n;
    session.deliver(
      w64(1, 0, REG.SRC_ADDR, base),
      w32(1, 0, REG.SIZE, size),
      w32(1, 0, REG.IRQ_VECTOR, 1),
      w32(1, 0, REG.COMMAND, CMD.DMA_READ),
    );
    await settle();
    const reads = () => session.sent.flatMap((m) => (m.dmaRead ? [m.dmaRead] : []));
    expect(reads().length).toBe(4);
    const answered = new Set<number>();
    // Answer one at a time, newest first, checking the bound holds throughout.
    while (answered.size < 9) {
      const open = reads().filter((r) => !answered.has(r.tag!));
      expect(open.length).toBeLessThanOrEqual(4);
      const r = open.at(-1)!;
      const off = Number(u64(r.iova) - base);
      answered.add(r.tag!);
      session.deliver({
        dmaReadCpl: { dev: 1, tag: r.tag, status: ErrorCode.OK, data: host.slice(off, off + r.length!) },
      });
      await settle();
    }
    const all = reads();
    expect(new Set(all.map((r) => r.tag)).size).toBe(9);
    expect(all.every((r) => r.length! <= MAX_DMA_CHUNK)).toBe(true);
    expect(all.reduce((n, r) => n + r.length!, 0)).toBe(size);
    const tail = summary(session.frames.at(-1)!);
    expect(tail.at(-1)).toBe('interrupt 1');
    expect(shadowed(session.frames.at(-1)!, 0, REG.CHECKSUM)).toBe(crc32(host));
    expect(shadowed(session.frames.at(-1)!, 0, REG.STATUS)).toBe(STATUS.DONE);
  });

  it('a refused DMA read reaches the device as DMA_FAULT', async () => {
    const { session } = await world();
    session.deliver(w32(1, 0, REG.SIZE, 16), w32(1, 0, REG.COMMAND, CMD.DMA_READ));
    const r = session.sent.find((m) => m.dmaRead)!.dmaRead!;
    session.deliver({ dmaReadCpl: { dev: 1, tag: r.tag, status: ErrorCode.DMA_FAULT } });
    await settle();
    const last = session.frames.at(-1)!;
    expect(shadowed(last, 0, REG.ERROR)).toBe(ErrorCode.DMA_FAULT);
    expect(shadowed(last, 0, REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
  });

  it('dmaRead rejects with DmaError and sends none of the chunks still waiting', async () => {
    const probe = new Probe();
    const { session } = await world([probe], { maxDmaTags: 1 });
    const p = probe.port!.dmaRead(0x1000n, 3 * MAX_DMA_CHUNK);
    await settle();
    const first = session.sent.filter((m) => m.dmaRead);
    expect(first.length).toBe(1);
    session.deliver({ dmaReadCpl: { dev: 1, tag: first[0].dmaRead!.tag, status: ErrorCode.DMA_FAULT } });
    await expect(p).rejects.toBeInstanceOf(DmaError);
    await expect(p).rejects.toMatchObject({ fault: 'refused', iova: 0x1000n });
    expect(session.sent.filter((m) => m.dmaRead).length).toBe(1);
  });

  it('DMA_WRITE: split at MAX_DMA_CHUNK, data copied, completion after the data', async () => {
    const { session } = await world();
    const size = 2 * MAX_DMA_CHUNK + 1000;
    session.deliver(
      w64(1, 0, REG.DST_ADDR, 0x4000n),
      w32(1, 0, REG.ARG, 77),
      w32(1, 0, REG.SIZE, size),
      w32(1, 0, REG.IRQ_VECTOR, 0),
      w32(1, 0, REG.COMMAND, CMD.DMA_WRITE),
    );
    await settle();
    const writes = session.sent.flatMap((m) => (m.dmaWrite ? [m.dmaWrite] : []));
    expect(writes.map((w) => [u64(w.iova), w.data!.length])).toEqual([
      [0x4000n, MAX_DMA_CHUNK],
      [0x4000n + BigInt(MAX_DMA_CHUNK), MAX_DMA_CHUNK],
      [0x4000n + BigInt(2 * MAX_DMA_CHUNK), 1000],
    ]);
    const joined = new Uint8Array(size);
    let off = 0;
    for (const w of writes) {
      joined.set(w.data!, off);
      off += w.data!.length;
    }
    expect(Buffer.compare(joined, testPattern(77, size))).toBe(0);
    const s = summary(session.sent);
    expect(s.indexOf('interrupt 0')).toBeGreaterThan(
      s.lastIndexOf(`dmaWrite 0x${(0x4000 + 2 * MAX_DMA_CHUNK).toString(16)}+1000`),
    );
    expect(shadowed(session.sent.slice(0, s.indexOf('interrupt 0')), 0, REG.STATUS)).toBe(STATUS.DONE);
  });

  it('dmaWrite copies: the device may reuse its buffer at once', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    const buf = new Uint8Array([1, 2, 3]);
    probe.port!.dmaWrite(0x10n, buf);
    buf.fill(0);
    expect([...session.sent[0].dmaWrite!.data!]).toEqual([1, 2, 3]);
  });

  it('async work of one tick goes out as one frame, shadow first', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    probe.dirty.push({ bar: 0, offset: 0x14, data: leBytes(1, 4) });
    probe.port!.dmaWrite(0x10n, new Uint8Array(8));
    probe.port!.raiseMsix(3);
    probe.port!.raiseMsix(4);
    expect(session.frames.length).toBe(0);
    await settle();
    expect(session.frames.map(summary)).toEqual([
      ['shadow 0 0x14+4', 'dmaWrite 0x10+8', 'interrupt 3', 'interrupt 4'],
    ]);
  });

  it('flushes mid-tick once FLUSH_BYTES are queued, so no frame grows past it', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    probe.port!.dmaWrite(0n, new Uint8Array(FLUSH_BYTES * 2 + MAX_DMA_CHUNK));
    await settle();
    const sizes = session.frames.map((f) => f.reduce((n, m) => n + (m.dmaWrite?.data?.length ?? 0), 0));
    expect(sizes).toEqual([FLUSH_BYTES, FLUSH_BYTES, MAX_DMA_CHUNK]);
  });

  it('changed() alone (a register set by async work) is pushed on the next tick', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    probe.dirty.push({ bar: 0, offset: 0x14, data: leBytes(1, 4) });
    probe.port!.changed();
    await settle();
    expect(session.frames.map(summary)).toEqual([['shadow 0 0x14+4']]);
  });

  it('raiseMsix of a vector the device does not have is a bug in the device', async () => {
    const probe = new Probe();
    await world([probe]);
    expect(() => probe.port!.raiseMsix(8)).toThrow(RangeError);
  });

  it('drain waits while the session is backlogged', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    await probe.port!.drain();
    session.backlogged = true;
    let drained = false;
    void probe.port!.drain().then(() => {
      drained = true;
    });
    await settle();
    expect(drained).toBe(false);
    session.backlogged = false;
    await settle();
    expect(drained).toBe(true);
  });

  it('FunctionReset drops reads not yet sent; completions of sent ones are still accepted', async () => {
    const probe = new Probe();
    const { session } = await world([probe], { maxDmaTags: 1 });
    const p = probe.port!.dmaRead(0n, 2 * MAX_DMA_CHUNK);
    p.catch(() => {});
    await settle();
    const r = session.sent.find((m) => m.dmaRead)!.dmaRead!;
    session.deliver({ functionReset: { dev: 1 } });
    expect(probe.resets).toBe(1);
    await expect(p).rejects.toMatchObject({ fault: 'shutdown' });
    session.deliver({
      dmaReadCpl: { dev: 1, tag: r.tag, status: ErrorCode.OK, data: new Uint8Array(MAX_DMA_CHUNK) },
    });
    expect(session.sent.filter((m) => m.dmaRead).length).toBe(1);
  });
});

group('EndpointRuntime: wire', () => {
  it('everything it sends survives protobuf encoding', async () => {
    const session = new FakeSession();
    const runtime = new EndpointRuntime(session, [new TestDevice()]);
    const started = runtime.start();
    session.deliver(ok(1));
    await started;
    session.deliver(
      w64(1, 0, REG.SRC_ADDR, 0xfedc_ba98_7654_3210n),
      w32(1, 0, REG.SIZE, 8),
      w32(1, 0, REG.IRQ_VECTOR, 3),
      w32(1, 0, REG.COMMAND, CMD.DMA_READ),
      { mmioRead: { dev: 1, tag: 4, bar: 0, offset: long(REG.COUNTER), size: 4 } },
      { statsRequest: { nonce: long(1) } },
    );
    const r = session.sent.find((m) => m.dmaRead)!.dmaRead!;
    session.deliver({ dmaReadCpl: { dev: 1, tag: r.tag, status: ErrorCode.OK, data: new Uint8Array(8) } });
    await settle();
    runtime.close();
    const again = session.sent.map((m) => pcinet.Msg.decode(pcinet.Msg.encode(m).finish()));
    expect(summary(again)).toEqual(summary(session.sent));
    expect(summary(again)).toContain('dmaRead 0xfedcba9876543210+8');
    expect(again.find((m) => m.attach)!.attach!.desc!.config!.length).toBe(4096);
  });
});

group('EndpointRuntime: protocol errors', () => {
  it.each<[string, Msg, ErrorCode]>([
    ['an unknown device', w32(9, 0, 0, 0), ErrorCode.UNKNOWN_DEVICE],
    ['device 0', w32(0, 0, 0, 0), ErrorCode.UNKNOWN_DEVICE],
    ['a BAR the device lacks', w32(1, 1, 0, 0), ErrorCode.BAD_ARGUMENT],
    ['BAR index 6', w32(1, 6, 0, 0), ErrorCode.BAD_ARGUMENT],
    ['a write past the BAR', w32(1, 0, 0x3ffe, 0), ErrorCode.BAD_ARGUMENT],
    ['an empty write', { mmioWrite: { dev: 1, bar: 0, offset: long(0) } }, ErrorCode.BAD_LENGTH],
    [
      'a read past the BAR',
      { mmioRead: { dev: 1, tag: 1, bar: 2, offset: long(0x10000), size: 4 } },
      ErrorCode.BAD_ARGUMENT,
    ],
    [
      'a read of 0 bytes',
      { mmioRead: { dev: 1, tag: 1, bar: 0, offset: long(0x40), size: 0 } },
      ErrorCode.BAD_ARGUMENT,
    ],
    [
      'an offset past 2^53',
      { mmioWrite: { dev: 1, bar: 0, offset: long(1n << 60n), data: new Uint8Array(4) } },
      ErrorCode.BAD_ARGUMENT,
    ],
    [
      'a config write past config space',
      { configWrite: { dev: 1, offset: 4094, size: 4, value: 0 } },
      ErrorCode.BAD_ARGUMENT,
    ],
    [
      'a config write of 3 bytes',
      { configWrite: { dev: 1, offset: 4, size: 3, value: 0 } },
      ErrorCode.BAD_ARGUMENT,
    ],
    [
      'a completion for an unknown tag',
      { dmaReadCpl: { dev: 1, tag: 5, status: ErrorCode.OK } },
      ErrorCode.BAD_TAG,
    ],
    ['a device -> host message', { interrupt: { dev: 1, vector: 0 } }, ErrorCode.UNEXPECTED_MESSAGE],
    ['a message with no body', {}, ErrorCode.UNKNOWN_MESSAGE],
  ])('%s', async (_why, msg, code) => {
    const { session } = await world();
    expect(protocolCode(() => session.deliver(msg))).toBe(code);
  });

  it('a completion of the wrong length', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    void probe.port!.dmaRead(0n, 16).catch(() => {});
    await settle();
    const r = session.sent.find((m) => m.dmaRead)!.dmaRead!;
    expect(
      protocolCode(() =>
        session.deliver({
          dmaReadCpl: { dev: 1, tag: r.tag, status: ErrorCode.OK, data: new Uint8Array(8) },
        }),
      ),
    ).toBe(ErrorCode.BAD_LENGTH);
  });

  it('a completion for a tag already completed', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    void probe.port!.dmaRead(0n, 4);
    await settle();
    const cpl: Msg = {
      dmaReadCpl: {
        dev: 1,
        tag: session.sent[0].dmaRead!.tag,
        status: ErrorCode.OK,
        data: new Uint8Array(4),
      },
    };
    session.deliver(cpl);
    expect(protocolCode(() => session.deliver(cpl))).toBe(ErrorCode.BAD_TAG);
  });
});

group('EndpointRuntime: detach and close', () => {
  it('session close detaches every device and fails its DMA', async () => {
    const probe = new Probe();
    const dev = new TestDevice();
    const { session } = await world([probe, dev]);
    const p = probe.port!.dmaRead(0n, 4);
    const port = probe.port!;
    session.close();
    expect(probe.port).toBeUndefined();
    expect(dev.attached).toBe(false);
    await expect(p).rejects.toMatchObject({ fault: 'shutdown' });
    // A port that outlived the session goes nowhere.
    port.raiseMsix(1);
    await settle();
    expect(session.sent.filter((m) => m.interrupt)).toEqual([]);
  });

  it('close() sends Detach for each device; messages that crossed it are dropped', async () => {
    const a = new TestDevice();
    const b = new TestDevice();
    const { session, runtime } = await world([a, b]);
    runtime.close();
    expect(session.frames.map(summary)).toEqual([['detach 1', 'detach 2']]);
    expect(session.frames[0][0].detach!.reason).toBe(ErrorCode.SHUTDOWN);
    expect(a.attached).toBe(false);
    session.deliver(w32(1, 0, REG.SCRATCH, 1), { dmaReadCpl: { dev: 2, tag: 0, status: ErrorCode.OK } });
    expect(session.frames.length).toBe(1);
  });

  it('a host Detach unplugs that device only; later messages for it are errors', async () => {
    const a = new TestDevice();
    const b = new TestDevice();
    const { session } = await world([a, b]);
    session.deliver({ detach: { dev: 1, reason: ErrorCode.SHUTDOWN } });
    expect(a.attached).toBe(false);
    expect(b.attached).toBe(true);
    expect(protocolCode(() => session.deliver(w32(1, 0, REG.SCRATCH, 1)))).toBe(ErrorCode.UNKNOWN_DEVICE);
  });

  it('logs traces, a burst per event and then one in a thousand', async () => {
    const lines: { msg: string; count: number; reg?: string }[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
    const probe = new Probe();
    const { runtime } = await world([probe], { log });
    lines.length = 0;
    for (let i = 0; i < 1000; i++) probe.port!.trace('probe.oops', { reg: 'X' });
    probe.port!.trace('probe.other');
    expect(lines.filter((l) => l.msg === 'probe.oops').map((l) => l.count)).toEqual([
      ...Array.from({ length: TRACE_LOG_BURST }, (_, i) => i + 1),
      1000,
    ]);
    expect(lines.find((l) => l.msg === 'probe.oops')?.reg).toBe('X');
    expect(lines.filter((l) => l.msg === 'probe.other').length).toBe(1);
    expect(runtime.counters()['dev1.traces']).toBe(1001);
  });

  it('answers StatsRequest with runtime and model counters', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    session.deliver(w32(1, 0, REG.SCRATCH, 1), { statsRequest: { nonce: long(9) } });
    const stats = session.sent.find((m) => m.stats)!.stats!;
    expect(u64(stats.nonce)).toBe(9n);
    const byName = Object.fromEntries(stats.counters!.map((c) => [c.name, Number(u64(c.value))]));
    expect(byName).toMatchObject({ 'dev1.mmioWrites': 1, 'dev1.test.probes': 1, 'dev1.interrupts': 0 });
  });
});

group('EndpointRuntime: push rules (docs/PUSH.md)', () => {
  const rule = {
    kind: 'nvme-sq',
    bar: 0,
    doorbell: 0x1008,
    base: 0x10000n,
    entries: 16,
    dataMax: 0,
    lbaShift: 9,
  } as const;
  const push = (iova: bigint, data: Uint8Array, r = 1): Msg => ({
    push: { dev: 1, iova: long(iova), data, rule: r },
  });
  const sqes = Uint8Array.from({ length: 128 }, (_, i) => i);
  /** The doorbell write the host sends after a doorbell's pushes: they become readable with it. */
  const doorbell = (): Msg => ({
    mmioWrite: { dev: 1, bar: 0, offset: long(0x1008), data: Uint8Array.of(1, 0, 0, 0) },
  });

  /** A probe with rule 1 set and confirmed by the host. */
  async function withRule() {
    const probe = new Probe();
    const w = await world([probe]);
    probe.port!.setPushRule(1, rule);
    w.session.deliver({ pushRuleSet: { dev: 1, id: 1 } });
    return { ...w, probe, port: probe.port! };
  }
  const dmaReads = (s: FakeSession) => s.sent.filter((m) => m.dmaRead).length;

  it('sends the rule as PushRule, and nothing when the host did not offer CAP_PUSH_RULES', async () => {
    const probe = new Probe();
    const { session } = await world([probe]);
    probe.port!.setPushRule(1, rule);
    probe.port!.setPushRule(2, undefined);
    await settle();
    expect(session.sent.map((m) => m.pushRule)).toMatchObject([
      { dev: 1, id: 1, kind: pcinet.PushKind.PUSH_NVME_SQ, bar: 0, entries: 16, lbaShift: 9 },
      { dev: 1, id: 2, kind: pcinet.PushKind.PUSH_NONE },
    ]);
    expect(u64(session.sent[0]!.pushRule!.offset)).toBe(0x1008n);
    expect(u64(session.sent[0]!.pushRule!.ring)).toBe(0x10000n);
    expect(() => probe.port!.setPushRule(128, rule)).toThrow(RangeError);

    const other = new Probe();
    const w = await world([other]);
    w.session.capabilities = 0;
    other.port!.setPushRule(1, rule);
    await settle();
    expect(w.session.sent).toEqual([]);
  });

  it('serves a covered read from pushed bytes without a round trip, each byte once', async () => {
    const { session, runtime, port } = await withRule();
    session.deliver(push(0x10000n, sqes), doorbell());
    expect(await port.dmaRead(0x10040n, 64)).toEqual(sqes.subarray(64));
    expect(dmaReads(session)).toBe(0);
    // The same memory again goes to the host: it may have changed since.
    void port.dmaRead(0x10040n, 64);
    await settle();
    expect(summary(session.sent)).toContain('dmaRead 0x10040+64');
    expect(runtime.counters()).toMatchObject({
      'dev1.pushHits': 1,
      'dev1.pushHitBytes': 64,
      'dev1.pushBytes': 128,
    });
  });

  it('dmaReadNow: pushed bytes at once, taken as dmaRead takes them; otherwise nothing, and no DmaRead', async () => {
    const { session, runtime, port } = await withRule();
    session.deliver(push(0x10000n, sqes));
    // Staged, not readable until the doorbell's write.
    expect(port.dmaReadNow!(0x10000n, 64)).toBeUndefined();
    session.deliver(doorbell());
    expect(port.dmaReadNow!(0x10000n, 64)).toEqual(sqes.subarray(0, 64));
    expect(port.dmaReadNow!(0x10000n, 64)).toBeUndefined(); // each byte once
    expect(port.dmaReadNow!(0x10040n, 128)).toBeUndefined(); // only part of it is there
    expect(await port.dmaRead(0x10040n, 64)).toEqual(sqes.subarray(64)); // untouched by the miss
    await settle();
    expect(dmaReads(session)).toBe(0);
    expect(runtime.counters()).toMatchObject({ 'dev1.pushHits': 2, 'dev1.pushHitBytes': 128 });
    session.deliver(push(0x10000n, sqes), doorbell(), { detach: { dev: 1 } });
    expect(port.dmaReadNow!(0x10000n, 64)).toBeUndefined();
  });

  it('makes a doorbell’s pushes readable together, when its write arrives', async () => {
    const { session, port } = await withRule();
    // A virtqueue's table and then its driver area, pushed for one notify: a read between them
    // (or before the write) must not pair the new area with what an older notify left.
    session.deliver(push(0x10000n, sqes.subarray(0, 64)));
    void port.dmaRead(0x10000n, 64);
    await settle();
    expect(dmaReads(session)).toBe(1);
    session.deliver(push(0x10000n, sqes.subarray(0, 64)), push(0x10040n, sqes.subarray(64)));
    void port.dmaRead(0x10040n, 64);
    await settle();
    expect(dmaReads(session)).toBe(2);
    session.deliver(doorbell());
    expect(await port.dmaRead(0x10000n, 128)).toEqual(sqes);
    expect(dmaReads(session)).toBe(2);
  });

  it('falls back to a DMA read when pushed bytes cover only part of a read', async () => {
    const { session, port } = await withRule();
    session.deliver(push(0x10000n, sqes), doorbell());
    void port.dmaRead(0x10040n, 128);
    await settle();
    expect(summary(session.sent).filter((s) => s.startsWith('dmaRead'))).toEqual(['dmaRead 0x10040+128']);
  });

  it('forgets pushed bytes of an unmapped buffer (PushDrop), and those the device wrote over', async () => {
    const { session, port } = await withRule();
    session.deliver(push(0x10000n, sqes), doorbell(), {
      pushDrop: { dev: 1, iova: long(0x10000n), length: long(64) },
    });
    void port.dmaRead(0x10000n, 64);
    port.dmaWrite(0x10050n, new Uint8Array(4));
    void port.dmaRead(0x10040n, 64);
    await settle();
    expect(summary(session.sent).filter((s) => s.startsWith('dmaRead'))).toEqual([
      'dmaRead 0x10000+64',
      'dmaRead 0x10040+64',
    ]);
  });

  it('a read completion overtakes older pushes of its range: a ring index never goes backwards', async () => {
    const { session, port } = await withRule();
    // The device reads the index itself (no push yet); meanwhile the driver rings the doorbell
    // and the host pushes the index as it was then (5); the completion, read later, says 6.
    const first = port.dmaRead(0x10000n, 2);
    await settle();
    const tag = session.sent.find((m) => m.dmaRead)!.dmaRead!.tag!;
    session.deliver(push(0x10000n, Uint8Array.of(5, 0)), doorbell(), {
      dmaReadCpl: { dev: 1, tag, status: ErrorCode.OK, data: Uint8Array.of(6, 0) },
    });
    expect(await first).toEqual(Uint8Array.of(6, 0));
    // The next read must not be served the stale 5: it goes to the host.
    session.reset();
    void port.dmaRead(0x10000n, 2);
    await settle();
    expect(summary(session.sent).filter((x) => x.startsWith('dmaRead'))).toEqual(['dmaRead 0x10000+2']);
    // A push that arrives after the completion is newer, and is served.
    const tag2 = session.sent.find((m) => m.dmaRead)!.dmaRead!.tag!;
    session.deliver(
      { dmaReadCpl: { dev: 1, tag: tag2, status: ErrorCode.OK, data: Uint8Array.of(6, 0) } },
      push(0x10000n, Uint8Array.of(7, 0)),
      doorbell(),
    );
    expect(await port.dmaRead(0x10000n, 2)).toEqual(Uint8Array.of(7, 0));
  });

  it('discards pushes of a changed rule until the host confirms it, and forgets what it pushed', async () => {
    const { session, runtime, port } = await withRule();
    session.deliver(push(0x10000n, sqes.subarray(0, 64)), doorbell());
    port.setPushRule(1, { ...rule, base: 0x20000n }); // the queue was deleted and created again
    // Pushed under the old rule before the host applied the change: stale.
    session.deliver(push(0x10040n, sqes.subarray(64)), doorbell());
    session.deliver({ pushRuleSet: { dev: 1, id: 1 } });
    session.deliver(push(0x20000n, sqes), doorbell());
    void port.dmaRead(0x10000n, 64);
    void port.dmaRead(0x10040n, 64);
    expect(await port.dmaRead(0x20000n, 128)).toEqual(sqes);
    await settle();
    expect(summary(session.sent).filter((s) => s.startsWith('dmaRead'))).toEqual([
      'dmaRead 0x10000+64',
      'dmaRead 0x10040+64',
    ]);
    expect(runtime.counters()['dev1.pushStale']).toBe(1);
    expect(protocolCode(() => session.deliver({ pushRuleSet: { dev: 1, id: 1 } }))).toBe(
      ErrorCode.UNEXPECTED_MESSAGE,
    );
  });

  it('forgets everything at a function reset; refuses empty pushes and rule ids past 127', async () => {
    const { session, port } = await withRule();
    session.deliver(push(0x10000n, sqes), doorbell(), { functionReset: { dev: 1 } });
    void port.dmaRead(0x10000n, 64);
    await settle();
    expect(dmaReads(session)).toBe(1);
    expect(protocolCode(() => session.deliver(push(0x10000n, new Uint8Array(0))))).toBe(ErrorCode.BAD_LENGTH);
    expect(protocolCode(() => session.deliver(push(0x10000n, sqes, 128)))).toBe(ErrorCode.BAD_ARGUMENT);
  });
});
