// The whole relay path without a kernel: endpoint runtime + test device, a session (loop transport
// and TCP), the relay and the sim root complex, driven by the test driver's selftest.
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { REG, TEST_REG_BAR } from '../devices/test/regs.js';
import { EndpointServer } from '../endpoint/server.js';
import { loopPair } from '../proto/loop.js';
import { openSession, type Session } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { ErrorCode } from '../proto/wire.js';
import { Relay } from './relay.js';
import { SimChannel } from './sim/channel.js';
import { TestDriver } from './sim/test-driver.js';

const log = pino({ level: 'silent' });
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function connect(o: { vectors?: number; devices?: number; tcp?: boolean } = {}) {
  const models = Array.from({ length: o.devices ?? 1 }, () => new TestDevice({ vectors: o.vectors ?? 8 }));
  const server = new EndpointServer({ models, log });
  let dial: () => Promise<import('../proto/transport.js').Transport>;
  if (o.tcp) {
    const where = await server.listen({ scheme: 'tcp', host: '127.0.0.1', port: 0, path: '/' });
    const port = Number(where.split(':').pop());
    dial = () => dialTcp('127.0.0.1', port);
  } else {
    dial = async () => {
      const [a, b] = loopPair();
      server.accept(b);
      return a;
    };
  }
  const channel = new SimChannel({ log });
  const session: Session = await openSession(dial, { log });
  const relay = new Relay(session, channel, log);
  const ready = new Promise<void>((resolve) => {
    relay.onSettled = () => resolve();
  });
  cleanup.push(async () => {
    await session.close();
    await server.close();
    await channel.close();
  });
  await ready;
  return { server, channel, session, relay, models };
}

describe('selftest through the sim channel', () => {
  it('passes every check over the loop transport', { timeout: 30_000 }, async () => {
    const { channel, relay } = await connect();
    expect(relay.devices).toEqual([{ dev: 1, model: 'test', address: 'sim:00:00.0' }]);
    const fn = channel.functions[0]!;
    const d = new TestDriver(fn, channel.memory, channel.iommu);
    d.probe();
    const checks = await d.selftest();
    expect(checks.filter((c) => !c.ok)).toEqual([]);
    expect(checks.length).toBeGreaterThanOrEqual(15);
    // Every vector fired exactly twice in msix.every-vector, plus the others' own.
    expect(fn.counters.readTimeouts).toBe(0);
    expect(channel.iommu.live).toBe(0);
  });

  it('passes over TCP with 64 vectors and two devices', { timeout: 30_000 }, async () => {
    const { channel } = await connect({ tcp: true, vectors: 64, devices: 2 });
    expect(channel.functions.map((f) => f.address)).toEqual(['sim:00:00.0', 'sim:00:01.0']);
    const results = await Promise.all(
      channel.functions.map(async (fn) => {
        const d = new TestDriver(fn, channel.memory, channel.iommu);
        d.probe();
        return d.selftest();
      }),
    );
    for (const checks of results) expect(checks.filter((c) => !c.ok)).toEqual([]);
  });

  it('fails a check when the device misbehaves: the selftest can fail', { timeout: 30_000 }, async () => {
    const { channel, models } = await connect();
    const fn = channel.functions[0]!;
    // Sabotage: the device model raises the wrong vector for doorbells.
    const model = models[0]!;
    const real = model.mmioWrite.bind(model);
    model.mmioWrite = (bar, offset, data) => {
      if (bar === TEST_REG_BAR && offset === REG.IRQ_DOORBELL && data[0] === 3)
        data = Uint8Array.of(4, 0, 0, 0);
      real(bar, offset, data);
    };
    const d = new TestDriver(fn, channel.memory, channel.iommu);
    d.probe();
    const checks = await d.selftest();
    const failed = checks.filter((c) => !c.ok).map((c) => c.name);
    expect(failed).toEqual(['msix.every-vector']);
  });

  it('reads return all-ones and waits end when the endpoint detaches', { timeout: 30_000 }, async () => {
    const { channel, server } = await connect();
    const fn = channel.functions[0]!;
    new TestDriver(fn, channel.memory, channel.iommu).probe();
    expect(await fn.read32(TEST_REG_BAR, REG.MAGIC)).not.toBe(0xffffffff);
    const removed = new Promise<ErrorCode>((r) => {
      fn.onRemove = r;
    });
    await server.close();
    expect(await removed).toBe(ErrorCode.SHUTDOWN);
    expect(await fn.read32(TEST_REG_BAR, REG.COUNTER)).toBe(0xffffffff);
    expect(channel.functions).toEqual([]);
  });
});
