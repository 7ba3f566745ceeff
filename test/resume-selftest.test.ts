// Resume under fire: the TCP connection between host-agent (sim channel) and endpoint is cut again
// and again while the test device's selftest streams MMIO, volatile reads, interrupts and
// megabytes of DMA both ways. The session resumes each time; every selftest round must pass, which
// needs every message delivered once and in order (a lost MmioWrite breaks read-after-write, a
// duplicated Interrupt breaks the exact counts, a reordered DmaWrite breaks the pattern check).
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { EndpointServer } from '../endpoint/server.js';
import { Relay } from '../host-agent/relay.js';
import { SimChannel } from '../host-agent/sim/channel.js';
import { TestDriver } from '../host-agent/sim/test-driver.js';
import { openSession } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { CutProxy } from './cut-proxy.js';

const log = pino({ level: 'silent' });
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

it('the selftest passes while the connection is cut every 25 ms', { timeout: 60_000 }, async () => {
  const server = new EndpointServer({ models: [new TestDevice({ vectors: 16 })], log });
  const where = await server.listen({ scheme: 'tcp', host: '127.0.0.1', port: 0, path: '/' });
  cleanup.push(() => server.close());
  const proxy = await CutProxy.start(Number(where.split(':').pop()));
  cleanup.push(() => proxy.close());

  const channel = new SimChannel({ log });
  const session = await openSession(() => dialTcp('127.0.0.1', proxy.port), { log });
  cleanup.push(() => session.close());
  const relay = new Relay(session, channel, log);
  await new Promise<void>((r) => {
    relay.onSettled = () => r();
  });
  const fn = channel.functions[0]!;
  const driver = new TestDriver(fn, channel.memory, channel.iommu);
  driver.probe();

  // Cut only a connection that carried something since the last cut: on a loaded machine a resume
  // can take longer than the interval, and cutting every fresh connection would starve it.
  let seen = -1;
  const cutter = setInterval(() => {
    const frames = session.stats().framesIn;
    if (session.connected && frames !== seen) {
      seen = frames;
      proxy.cutAll();
    }
  }, 25);
  const rounds: string[][] = [];
  try {
    for (let i = 0; i < 6; i++) {
      const checks = await driver.selftest();
      rounds.push(checks.filter((c) => !c.ok).map((c) => `${c.name}: ${c.detail}`));
    }
  } finally {
    clearInterval(cutter);
  }
  expect(rounds).toEqual(Array(6).fill([]));
  expect(session.stats().resumes).toBeGreaterThanOrEqual(3);
  expect(proxy.cuts).toBeGreaterThanOrEqual(3);
  expect(fn.counters.readTimeouts).toBe(0);
  expect(session.closed).toBe(false);
});
