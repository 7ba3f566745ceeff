// Fault injection (endpoint/faults.ts): the spec parser and its errors, then each kind through the
// runtime (a fake session, as runtime.test.ts), the "inject" control command, and link-down with a
// sim host on the in-process loop transport.
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceModel, DirtyRange, HostPort } from '../devices/host-port.js';
import { NvmeController } from '../devices/nvme/controller.js';
import { settle } from '../devices/pci/fake-host.js';
import { leBytes, rd32 } from '../devices/pci/le.js';
import { TestDevice } from '../devices/test/device.js';
import { CMD, REG, STATUS } from '../devices/test/regs.js';
import { loopHost } from '../host-agent/sim/loop-host.js';
import { TestDriver } from '../host-agent/sim/test-driver.js';
import { ErrorCode, long, type Msg, ProtocolError, u64 } from '../proto/wire.js';
import { MemoryBackend } from './backends/block.js';
import { injectHandler } from './control.js';
import { FakeSession } from './fake-session.js';
import { FaultSpecError, Faults, formatFaultSpec, parseFaultSpec } from './faults.js';
import { EndpointRuntime } from './runtime.js';
import { EndpointServer } from './server.js';

const log = pino({ level: 'silent' });
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

const nvme = () => new NvmeController({ backend: new MemoryBackend(1 << 20) });
const targets = (...models: DeviceModel[]) => models.map((model, i) => ({ dev: i + 1, model }));

function specError(text: string, t = targets(new TestDevice(), nvme())): string {
  try {
    parseFaultSpec(text, t);
  } catch (e) {
    expect(e).toBeInstanceOf(FaultSpecError);
    return (e as Error).message;
  }
  throw new Error(`${text} parsed`);
}

describe('fault specs', () => {
  it('parses each kind, with a device by id, model name or address', () => {
    const t = targets(new TestDevice(), nvme());
    expect(parseFaultSpec('delay:dev=nvme,ms=5000', t)).toMatchObject({
      kind: 'delay',
      dev: 2,
      delayMs: 5000,
      count: 1,
      probability: 1,
    });
    expect(parseFaultSpec('fail:dev=2,opcode=read,sct=2,sc=0x81,dnr,count=3', t)).toMatchObject({
      kind: 'fail',
      opcode: 0x02,
      admin: false,
      status: 0x4281,
      count: 3,
    });
    expect(parseFaultSpec('fail:dev=2,queue=0,opcode=identify,status=0x2', t)).toMatchObject({
      queue: 0,
      opcode: 6,
      status: 2,
    });
    expect(parseFaultSpec('drop-irq:dev=test,vector=3,probability=0.25', t)).toMatchObject({
      dev: 1,
      vector: 3,
      probability: 0.25,
      count: undefined,
    });
    expect(parseFaultSpec('dup-irq:dev=1,count=2', t)).toMatchObject({ kind: 'dup-irq', count: 2 });
    expect(parseFaultSpec('refuse-dma:dev=1', t)).toMatchObject({ dir: 'any' });
    expect(parseFaultSpec('refuse-dma:dev=1,dir=write', t)).toMatchObject({ dir: 'write' });
    expect(parseFaultSpec('link-down:dev=2,seconds=5', t)).toMatchObject({ seconds: 5, count: 1 });
    expect(parseFaultSpec('all-ones:dev=1,offset=0x40', t)).toMatchObject({ bar: 0, offset: 0x40 });
    // One device: it need not be named. An address names it once attached.
    const one = targets(new TestDevice());
    expect(parseFaultSpec('dup-irq', one).dev).toBe(1);
    expect(parseFaultSpec('dup-irq:dev=0000:01:00.0', [{ ...one[0]!, address: '0000:01:00.0' }]).dev).toBe(1);
    expect(parseFaultSpec('dup-irq:dev=01:00.0', [{ ...one[0]!, address: '0000:01:00.0' }]).dev).toBe(1);
  });

  it('writes a spec back out as it is listed', () => {
    const t = targets(nvme());
    expect(formatFaultSpec(parseFaultSpec('fail:opcode=write,sc=0x80,sct=0', t))).toBe(
      'fail:dev=1,status=0x80,opcode=0x1',
    );
    expect(formatFaultSpec(parseFaultSpec('delay:ms=10,probability=0.5', t))).toBe(
      'delay:dev=1,ms=10,probability=0.5',
    );
  });

  it('says what is wrong', () => {
    expect(specError('explode:dev=1')).toMatch(/unknown kind "explode" \(kinds: delay, fail, /);
    expect(specError('delay:ms=5')).toMatch(/which device\? give dev=ID .*1 \(test\), 2 \(nvme\)/);
    expect(specError('delay:dev=9,ms=5')).toMatch(/dev=9: no such device/);
    expect(specError('delay:dev=disk,ms=5')).toMatch(/dev=disk: no such device/);
    expect(specError('delay:dev=nvme,ms=soon')).toMatch(/ms=soon: want a whole number from 1 to 600000/);
    expect(specError('delay:dev=nvme,ms=0')).toMatch(/ms=0: want a whole number/);
    expect(specError('delay:dev=nvme')).toMatch(/delay needs ms=/);
    expect(specError('delay:dev=nvme,ms=5,count=-1')).toMatch(/count=-1: want a whole number/);
    expect(specError('delay:dev=nvme,ms=5,probability=2')).toMatch(/probability=2: want a number above 0/);
    expect(specError('delay:dev=nvme,ms=5,vector=1')).toMatch(/delay takes no "vector" \(it takes ms, /);
    expect(specError('delay:dev=nvme,ms=5,ms=6')).toMatch(/ms given twice/);
    expect(specError('fail:dev=test,sc=1')).toMatch(/device 1 \(test\) runs no commands/);
    expect(specError('fail:dev=nvme')).toMatch(/fail needs sc=/);
    expect(specError('fail:dev=nvme,sc=0')).toMatch(/is success/);
    expect(specError('fail:dev=nvme,sc=1,sct=8')).toMatch(/sct=8: want a whole number from 0 to 7/);
    expect(specError('fail:dev=nvme,sc=1,opcode=frobnicate')).toMatch(/nvme knows flush, write, read/);
    expect(specError('fail:dev=nvme,sc=1,opcode=read,queue=0')).toMatch(/never comes on queue 0/);
    expect(specError('fail:dev=nvme,sc=1,status=2')).toMatch(/not both/);
    expect(specError('drop-irq:dev=test,vector=8')).toMatch(/vector=8: want a whole number from 0 to 7/);
    expect(specError('refuse-dma:dev=1,dir=sideways')).toMatch(/dir=sideways: want read, write or any/);
    expect(specError('link-down:dev=1,seconds=5,count=2')).toMatch(/no count or probability/);
    expect(specError('all-ones:dev=nvme')).toMatch(
      /no volatile registers: its reads are answered from the host/,
    );
    expect(specError('all-ones:dev=test,offset=0x8')).toMatch(/no volatile register at 0x8/);
    expect(specError('all-ones:dev=test,bar=4')).toMatch(/has no BAR 4/);
    expect(specError('delay:dev=test,ms=5,opcode=read')).toMatch(
      /runs no commands; its interrupts are delayed/,
    );
    const two = targets(new TestDevice(), new TestDevice());
    expect(specError('dup-irq:dev=test', two)).toMatch(/2 devices are tests; give the id/);
  });
});

/** A runtime over a fake session with its devices attached, and the server-side Faults. */
async function world(models: DeviceModel[], random?: () => number) {
  const downs: number[] = [];
  const faults = new Faults(models, { log, linkDown: (s) => downs.push(s), random });
  const session = new FakeSession();
  const runtime = new EndpointRuntime(session, models, { faults });
  const started = runtime.start();
  session.deliver(
    ...models.map(
      (_, i): Msg => ({ attachResult: { dev: i + 1, code: ErrorCode.OK, address: `0000:01:0${i}.0` } }),
    ),
  );
  await started;
  session.reset();
  cleanup.push(() => faults.close());
  return { session, runtime, faults, downs };
}

const w32 = (off: number, v: number): Msg => ({
  mmioWrite: { dev: 1, bar: 0, offset: long(off), data: leBytes(v, 4) },
});
const interrupts = (s: FakeSession) => s.sent.filter((m) => m.interrupt).map((m) => m.interrupt!.vector);

/** A model that hands its port to the test. */
class Probe implements DeviceModel {
  readonly description = new TestDevice().description;
  readonly commands = { read: { opcode: 2, admin: false } };
  port: HostPort | undefined;
  attach(port: HostPort): void {
    this.port = port;
  }
  detach(): void {}
  mmioWrite(): void {}
  mmioRead(_b: number, _o: number, size: number): Uint8Array {
    return new Uint8Array(size);
  }
  configWrite(): void {}
  reset(): void {}
  takeDirty(): DirtyRange[] {
    return [];
  }
  counters(): Record<string, number> {
    return {};
  }
}

describe('faults through the runtime', () => {
  it('drop-irq: the next interrupt of the vector is not sent, the one after is; counted', async () => {
    const { session, runtime, faults } = await world([new TestDevice()]);
    faults.add('drop-irq:vector=2');
    session.deliver(w32(REG.IRQ_DOORBELL, 1), w32(REG.IRQ_DOORBELL, 2), w32(REG.IRQ_DOORBELL, 2));
    expect(interrupts(session)).toEqual([1, 2]);
    expect(runtime.counters()).toMatchObject({
      'dev1.injected': 1,
      'dev1.injectedDropIrq': 1,
      'dev1.interrupts': 2,
    });
    expect(faults.armed).toBe(false);
    expect(faults.list()).toEqual([
      { id: 1, spec: 'drop-irq:dev=1,vector=2', kind: 'drop-irq', dev: 1, fired: 1, left: 0, passed: 0 },
    ]);
  });

  it('dup-irq: sent twice, for count occurrences', async () => {
    const { session } = await world([new TestDevice()]).then(async (w) => {
      w.faults.add('dup-irq:count=2');
      return w;
    });
    session.deliver(w32(REG.IRQ_DOORBELL, 0), w32(REG.IRQ_DOORBELL, 1), w32(REG.IRQ_DOORBELL, 3));
    expect(interrupts(session)).toEqual([0, 0, 1, 1, 3]);
  });

  it('delay on a model without commands holds its interrupt, after the data it announces', async () => {
    const { session, runtime, faults } = await world([new TestDevice()]);
    faults.add('delay:ms=60');
    session.deliver(
      { mmioWrite: { dev: 1, bar: 0, offset: long(REG.DST_ADDR), data: leBytes(0x4000n, 8) } },
      w32(REG.SIZE, 64),
      w32(REG.IRQ_VECTOR, 1),
      w32(REG.COMMAND, CMD.DMA_WRITE),
    );
    await settle();
    expect(session.sent.some((m) => m.dmaWrite)).toBe(true);
    expect(interrupts(session)).toEqual([]);
    const t0 = Date.now();
    for (let i = 0; i < 100 && interrupts(session).length === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(interrupts(session)).toEqual([1]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(40);
    expect(runtime.counters()['dev1.injectedDelay']).toBe(1);
  });

  it('a held interrupt is not sent across a function reset', async () => {
    const { session, faults } = await world([new TestDevice()]);
    faults.add('delay:ms=20');
    session.deliver(w32(REG.IRQ_DOORBELL, 1));
    session.deliver({ functionReset: { dev: 1 } });
    await new Promise((r) => setTimeout(r, 60));
    expect(interrupts(session)).toEqual([]);
  });

  it('refuse-dma dir=read: the device sees the host refuse it (DMA_FAULT), nothing goes out', async () => {
    const { session, runtime, faults } = await world([new TestDevice()]);
    faults.add('refuse-dma:dir=read');
    session.deliver(w32(REG.SIZE, 16), w32(REG.COMMAND, CMD.DMA_READ));
    await settle();
    expect(session.sent.some((m) => m.dmaRead)).toBe(false);
    const regs = session.sent.filter((m) => m.shadowUpdate);
    const last = (reg: number) => {
      let v: number | undefined;
      for (const m of regs) {
        const off = Number(u64(m.shadowUpdate!.offset));
        const d = m.shadowUpdate!.data!;
        if (reg >= off && reg + 4 <= off + d.length) v = rd32(d, reg - off);
      }
      return v;
    };
    expect(last(REG.ERROR)).toBe(ErrorCode.DMA_FAULT);
    expect(last(REG.STATUS)).toBe(STATUS.DONE | STATUS.ERROR);
    expect(runtime.counters()['dev1.injectedRefuseDma']).toBe(1);
    // The next one goes through.
    session.deliver(w32(REG.COMMAND, CMD.DMA_READ));
    await settle();
    expect(session.sent.some((m) => m.dmaRead)).toBe(true);
  });

  it('refuse-dma dir=read refuses what the host pushed too: nothing is at hand while it may fire', async () => {
    const dev = new TestDevice();
    const { session, faults } = await world([dev]);
    const port = (dev as unknown as { host: HostPort }).host;
    faults.add('refuse-dma:dir=read');
    session.deliver({ push: { dev: 1, iova: long(0x10000n), data: new Uint8Array(64), rule: 0 } });
    session.deliver(w32(REG.SCRATCH, 1)); // a write: what was pushed before it is readable
    expect(port.dmaReadNow!(0x10000n, 64)).toBeUndefined();
    await expect(port.dmaRead(0x10000n, 64)).rejects.toThrow(/refused/);
    faults.clear();
    expect(port.dmaReadNow!(0x10000n, 64)).toEqual(new Uint8Array(64));
  });

  it('refuse-dma dir=write: the posted write is lost, the completion still comes', async () => {
    const { session, faults } = await world([new TestDevice()]);
    faults.add('refuse-dma:dir=write');
    session.deliver(w32(REG.SIZE, 16), w32(REG.IRQ_VECTOR, 0), w32(REG.COMMAND, CMD.DMA_WRITE));
    await settle();
    expect(session.sent.some((m) => m.dmaWrite)).toBe(false);
    expect(interrupts(session)).toEqual([0]);
  });

  it('all-ones: the read returns 0xffffffff and never reaches the device', async () => {
    const { session, faults } = await world([new TestDevice()]);
    faults.add(`all-ones:offset=${REG.COUNTER},count=2`);
    const read = (tag: number): Msg => ({
      mmioRead: { dev: 1, tag, bar: 0, offset: long(REG.COUNTER), size: 4 },
    });
    session.deliver(read(1), read(2), read(3));
    const cpl = session.sent.filter((m) => m.mmioReadCpl).map((m) => rd32(m.mmioReadCpl!.data!, 0));
    // COUNTER counts the reads that reached it: the third is its first.
    expect(cpl).toEqual([0xffffffff, 0xffffffff, 1]);
  });

  it('probability: each occurrence drawn; passed ones counted', async () => {
    const draws = [0.9, 0.1, 0.7, 0.2];
    const { session, faults } = await world([new TestDevice()], () => draws.shift()!);
    faults.add('drop-irq:probability=0.5');
    for (let v = 0; v < 4; v++) session.deliver(w32(REG.IRQ_DOORBELL, v));
    expect(interrupts(session)).toEqual([0, 2]);
    expect(faults.list()[0]).toMatchObject({ fired: 2, passed: 2, left: null });
    expect(faults.clear()).toBe(1);
    expect(faults.armed).toBe(false);
  });

  it('fail and delay reach a model that runs commands (HostPort.commandFault), I/O queues by default', async () => {
    const probe = new Probe();
    const { faults, runtime } = await world([probe]);
    const port = probe.port!;
    expect(port.commandFault!({ queue: 1, opcode: 2 })).toBeUndefined();
    faults.add('fail:opcode=read,sc=0x81,sct=2');
    expect(port.commandFault!({ queue: 0, opcode: 2 })).toBeUndefined(); // admin queue: not a read
    expect(port.commandFault!({ queue: 1, opcode: 1 })).toBeUndefined(); // a write
    expect(port.commandFault!({ queue: 3, opcode: 2 })).toEqual({ status: 0x281 });
    expect(port.commandFault!({ queue: 3, opcode: 2 })).toBeUndefined(); // count 1: used up
    faults.add('delay:ms=30,queue=2');
    expect(port.commandFault!({ queue: 1, opcode: 2 })).toBeUndefined();
    const f = port.commandFault!({ queue: 2, opcode: 9 })!;
    const t0 = Date.now();
    await f.hold;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(20);
    expect(runtime.counters()).toMatchObject({
      'dev1.injectedFail': 1,
      'dev1.injectedDelay': 1,
      'dev1.injected': 2,
    });
  });

  it('clearing lets held completions go at once', async () => {
    const probe = new Probe();
    const { faults } = await world([probe]);
    faults.add('delay:ms=600000');
    const f = probe.port!.commandFault!({ queue: 1, opcode: 2 })!;
    faults.clear();
    await f.hold;
  });

  it('link-down asks the server at once and is never live', async () => {
    const { faults, downs } = await world([new TestDevice()]);
    faults.add('link-down:seconds=3');
    expect(downs).toEqual([3]);
    expect(faults.armed).toBe(false);
    expect(faults.list()[0]).toMatchObject({ kind: 'link-down', fired: 1, left: 0 });
  });
});

describe('the inject control command and link-down, with a sim host on the loop transport', () => {
  it('installs, lists and clears; bad specs are BAD_ARGUMENT', async () => {
    const server = new EndpointServer({ models: [new TestDevice()], log });
    cleanup.push(() => server.close());
    const inject = injectHandler(server);
    const ctx = {} as Parameters<typeof inject>[1];
    expect(inject({ spec: 'dup-irq:count=2' }, ctx)).toMatchObject({
      injection: { id: 1, spec: 'dup-irq:dev=1', left: 2 },
    });
    expect(inject({ list: true }, ctx)).toMatchObject({ injections: [{ id: 1 }] });
    expect(() => inject({ spec: 'dup-irq:dev=7' }, ctx)).toThrow(/dev=7: no such device/);
    expect(() => inject({ spec: 'dup-irq:dev=7' }, ctx)).toThrow(
      expect.objectContaining({ code: 'BAD_ARGUMENT' }),
    );
    expect(() => inject({ clear: 5 }, ctx)).toThrow(/no injection 5/);
    expect(() => inject({}, ctx)).toThrow(/one of spec, list or clear/);
    expect(inject({ clear: 1 }, ctx)).toEqual({ cleared: 1 });
    expect(inject({ list: true }, ctx)).toEqual({ injections: [] });
  });

  it('every kind but link-down as the sim host sees it, on the session: a driver meets each once', {
    timeout: 30_000,
  }, async () => {
    const server = new EndpointServer({ models: [new TestDevice()], log });
    cleanup.push(() => server.close());
    const host = await loopHost((t) => server.accept(t), log);
    cleanup.push(async () => {
      await host.session.close();
      await host.channel.close();
    });
    const fn = host.channel.functions[0]!;
    const d = new TestDriver(fn, host.channel.memory, host.channel.iommu);
    d.probe();
    const f = server.faults;

    f.add(`all-ones:offset=${REG.COUNTER}`);
    expect(await fn.read32(0, REG.COUNTER)).toBe(0xffffffff);
    expect(await fn.read32(0, REG.COUNTER)).toBe(1);

    f.add('dup-irq:vector=2');
    fn.write32(0, REG.IRQ_DOORBELL, 2);
    await d.waitIrq(2, 2, 'doubled');
    fn.write32(0, REG.IRQ_DOORBELL, 2);
    await d.waitIrq(2, 3, 'single');

    f.add('drop-irq:vector=3');
    fn.write32(0, REG.IRQ_DOORBELL, 3);
    fn.write32(0, REG.IRQ_DOORBELL, 3);
    await d.waitIrq(3, 1, 'the second');
    await new Promise((r) => setTimeout(r, 50));
    expect(d.irqCounts[3]).toBe(1);

    f.add('delay:ms=200');
    const t0 = Date.now();
    fn.write32(0, REG.IRQ_DOORBELL, 4);
    await d.waitIrq(4, 1, 'delayed');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(180);

    f.add('refuse-dma:dir=read');
    expect(await d.dmaRead(4096, 7)).toMatchObject({ ok: false, detail: expect.stringMatching(/error 13 /) });
    expect(await d.dmaRead(4096, 7)).toMatchObject({ ok: true });
    f.add('refuse-dma:dir=write');
    expect(await d.dmaWrite(4096, 9)).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/first difference/),
    });
    expect(await d.dmaWrite(4096, 9)).toMatchObject({ ok: true });

    expect(server.active!.runtime.counters()).toMatchObject({
      'dev1.injected': 6,
      'dev1.injectedAllOnes': 1,
      'dev1.injectedDupIrq': 1,
      'dev1.injectedDropIrq': 1,
      'dev1.injectedDelay': 1,
      'dev1.injectedRefuseDma': 2,
    });
    expect(f.armed).toBe(false);
  });

  it('link-down ends the session with LINK_LOST, refuses the next until it is up, then admits one', {
    timeout: 20_000,
  }, async () => {
    const server = new EndpointServer({ models: [new TestDevice()], log });
    cleanup.push(() => server.close());
    const first = await loopHost((t) => server.accept(t), log);
    cleanup.push(() => first.channel.close());
    const ended = new Promise<Error | undefined>((resolve) => first.session.once('close', resolve));
    const at = Date.now();
    server.faults.add('link-down:seconds=1');
    const err = await ended;
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as ProtocolError).code).toBe(ErrorCode.LINK_LOST);
    await expect(loopHost((t) => server.accept(t), log)).rejects.toMatchObject({ code: ErrorCode.BUSY });
    await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - at)) + 50));
    const second = await loopHost((t) => server.accept(t), log);
    cleanup.push(async () => {
      await second.session.close();
      await second.channel.close();
    });
    expect(second.channel.functions.length).toBe(1);
    expect(server.active?.session).toBeDefined();
  });
});
