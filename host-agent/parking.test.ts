// Devices parked while their endpoint is away: the relay keeps them (link down) when a session is
// lost, hands them back (link up) when the next session attaches the same device, and removes them
// when the endpoint comes back with another device, without them, or not in time. The bus is the
// sim channel; its devices are wrapped to record the link calls the kernel channel would turn into
// W_LINK_DOWN / W_LINK_UP.
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { EndpointServer } from '../endpoint/server.js';
import { loopPair } from '../proto/loop.js';
import { openSession, type Session } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import { type DeviceDescription, ErrorCode, long, ProtocolError } from '../proto/wire.js';
import { CutProxy } from '../test/cut-proxy.js';
import type { Channel, ChannelDevice, DeviceSink } from './channel.js';
import { differs, Parking } from './parking.js';
import { Relay } from './relay.js';
import { SimChannel } from './sim/channel.js';

const log = pino({ level: 'silent' });
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** The sim channel, its devices able to go link down and up (as the kernel channel's are). */
class LinkChannel implements Channel {
  readonly name = 'sim+link';
  readonly sim = new SimChannel({ log });
  readonly events: string[] = [];
  attaches = 0;
  /** While set, a link up waits for it (a slow W_LINK_UP). */
  upGate: Promise<void> | undefined;
  /** What its devices' drivers do at a link down: ride it out (nvme), or be unbound (a NIC). */
  constructor(readonly recovers = true) {}

  async attach(dev: number, desc: DeviceDescription, sink: DeviceSink): Promise<ChannelDevice> {
    this.attaches++;
    let current = sink;
    const inner = await this.sim.attach(dev, desc, (m) => current(m));
    const events = this.events;
    const recovers = this.recovers;
    const channel = this;
    return {
      recoversFromLinkDown: async () => recovers,
      get address() {
        return inner.address;
      },
      deliver: (m) => inner.deliver(m),
      async remove(reason) {
        events.push(`remove ${ErrorCode[reason]}`);
        await inner.remove(reason);
      },
      async linkDown() {
        events.push('down');
        current = () => {};
      },
      async linkUp(d, s) {
        events.push(`up vectors=${d.msixVectors}`);
        await channel.upGate;
        current = s;
      },
    };
  }

  close(): Promise<void> {
    return this.sim.close();
  }
}

async function endpoint(vectors: number): Promise<{ session: Session; server: EndpointServer }> {
  const server = new EndpointServer({ models: [new TestDevice({ vectors })], log });
  const session = await openSession(
    async () => {
      const [a, b] = loopPair();
      server.accept(b);
      return a;
    },
    { log },
  );
  cleanup.push(async () => {
    if (!session.closed) await session.close();
    await server.close();
  });
  return { session, server };
}

/** A relay over a session to a fresh endpoint; resolves once its attach round settled. */
async function serve(channel: Channel, parking: Parking, vectors = 4) {
  const { session } = await endpoint(vectors);
  const relay = new Relay(session, channel, log, parking);
  await new Promise<void>((resolve) => {
    relay.onSettled = () => resolve();
  });
  return { session, relay };
}

const lose = (session: Session) => session.close(new ProtocolError(ErrorCode.TIMEOUT, 'endpoint lost'));

describe('parking devices while the endpoint is away', () => {
  it('keeps the device through a lost session and brings it back for the same device', async () => {
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 10_000, log });
    const first = await serve(channel, parking);
    const address = first.relay.devices[0]!.address;
    await lose(first.session);
    await first.relay.done;
    expect(channel.events).toEqual(['down']);
    expect(parking.size).toBe(1);

    const second = await serve(channel, parking);
    expect(channel.events).toEqual(['down', 'up vectors=4']);
    expect(channel.attaches).toBe(1); // no new function on the bus
    expect(second.relay.devices).toEqual([{ dev: 1, model: 'test', address }]);
    expect(parking.size).toBe(0);
  });

  it('removes the parked device when the endpoint comes back with another one', async () => {
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 10_000, log });
    const first = await serve(channel, parking, 4);
    await lose(first.session);
    await first.relay.done;
    await serve(channel, parking, 8);
    expect(channel.events).toEqual(['down', 'remove TIMEOUT']);
    expect(channel.attaches).toBe(2);
  });

  it('removes parked devices when the grace period ends', async () => {
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 50, log });
    const first = await serve(channel, parking);
    await lose(first.session);
    await first.relay.done;
    await new Promise((r) => setTimeout(r, 200));
    expect(channel.events).toEqual(['down', 'remove TIMEOUT']);
    expect(parking.size).toBe(0);
  });

  it('an orderly close removes the device instead of parking it', async () => {
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 10_000, log });
    const first = await serve(channel, parking);
    await first.session.close();
    await first.relay.done;
    expect(channel.events).toEqual(['remove SHUTDOWN']);
    expect(parking.size).toBe(0);
  });

  it('a device whose link came up as its session was lost waits parked for the next one', async () => {
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 10_000, log });
    const first = await serve(channel, parking);
    await lose(first.session);
    await first.relay.done;
    // The endpoint is back, and lost again while the device's link comes up.
    let release!: () => void;
    channel.upGate = new Promise((r) => {
      release = r;
    });
    const { session } = await endpoint(4);
    const relay = new Relay(session, channel, log, parking);
    await until(() => channel.events.length === 2, 5000, 'the link up to start');
    await lose(session);
    let done = false;
    void relay.done.then(() => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    // The relay is not done while the link up is under way: the next session must find the
    // device parked, not attach a second one beside it.
    expect(done).toBe(false);
    release();
    await relay.done;
    expect(channel.events).toEqual(['down', 'up vectors=4', 'down']);
    expect(parking.size).toBe(1);
    channel.upGate = undefined;
    await serve(channel, parking);
    expect(channel.events).toEqual(['down', 'up vectors=4', 'down', 'up vectors=4']);
    expect(channel.attaches).toBe(1);
  });

  it('with ctrl-loss-tmo 0 parked devices wait for ever', async () => {
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 0, log });
    const first = await serve(channel, parking);
    await lose(first.session);
    await first.relay.done;
    expect(parking.removeAt).toBeUndefined();
    expect(parking.downSince).toBeLessThanOrEqual(Date.now());
    await new Promise((r) => setTimeout(r, 200));
    expect(channel.events).toEqual(['down']);
    expect(parking.size).toBe(1);
  });

  it('without link support the device is removed, as before', async () => {
    const channel = new SimChannel({ log });
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 10_000, log });
    const first = await serve(channel, parking);
    await lose(first.session);
    await first.relay.done;
    expect(parking.size).toBe(0);
    expect(channel.functions).toHaveLength(0);
  });
});

describe('differs', () => {
  const base: DeviceDescription = {
    model: 'test',
    msixVectors: 4,
    config: new Uint8Array([1, 2, 3]),
    bars: [{ index: 0, size: long(4096), kind: 1, volatile: [{ offset: long(0), length: long(8) }] }],
  };
  it('accepts the same description', () => {
    expect(differs(base, { ...base, config: new Uint8Array([1, 2, 3]) })).toBeUndefined();
  });
  it('names what changed', () => {
    expect(differs(base, { ...base, msixVectors: 8 })).toBe('MSI-X vector count');
    expect(differs(base, { ...base, config: new Uint8Array([1, 2, 4]) })).toBe('config space');
    expect(differs(base, { ...base, bars: [{ ...base.bars![0]!, size: long(8192) }] })).toBe('BAR layout');
    expect(
      differs(base, {
        ...base,
        bars: [{ ...base.bars![0]!, volatile: [{ offset: long(0), length: long(16) }] }],
      }),
    ).toBe('BAR layout');
  });
});

/** The endpoint over TCP behind a CutProxy, with short keep-alives: its network can be taken away. */
async function behindProxy() {
  const opts = { keepaliveMs: 50, deadAfterMs: 300, graceMs: 20_000 };
  const server = new EndpointServer({ models: [new TestDevice({ vectors: 4 })], log, session: opts });
  const where = await server.listen({ scheme: 'tcp', host: '127.0.0.1', port: 0, path: '/' });
  const proxy = await CutProxy.start(Number(where.split(':').pop()));
  cleanup.push(async () => {
    await proxy.close();
    await server.close();
  });
  const open = async (channel: Channel, parking: Parking) => {
    const session = await openSession(() => dialTcp('127.0.0.1', proxy.port), { ...opts, log });
    cleanup.push(async () => {
      if (!session.closed) await session.close();
    });
    const relay = new Relay(session, channel, log, parking);
    await new Promise<void>((resolve) => {
      relay.onSettled = () => resolve();
    });
    return { session, relay };
  };
  return { server, proxy, open };
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('an unreachable endpoint (issue 14)', () => {
  it('takes the links down as soon as the endpoint is declared dead, long before the grace period', async () => {
    const { server, proxy, open } = await behindProxy();
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 60_000, log });
    const first = await open(channel, parking);
    const address = first.relay.devices[0]!.address;
    const t0 = Date.now();
    proxy.hold(true);
    await until(() => channel.events.includes('down'), 5000, 'link down');
    // The dead-peer interval (300 ms), not the grace period (20 s), and the session still waits.
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(first.session.closed).toBe(false);
    expect(parking.size).toBe(1);
    expect(first.relay.devices).toEqual([]);

    // The network is back and the session resumes: its devices' state on the endpoint is stale,
    // so the relay ends it, which frees them on the endpoint too.
    proxy.hold(false);
    proxy.cutAll();
    const err = await first.relay.done;
    expect((err as ProtocolError).code).toBe(ErrorCode.TIMEOUT);
    await until(() => server.active === undefined, 5000, 'the endpoint to free its devices');

    const second = await open(channel, parking);
    expect(channel.events).toEqual(['down', 'up vectors=4']);
    expect(channel.attaches).toBe(1);
    expect(second.relay.devices).toEqual([{ dev: 1, model: 'test', address }]);
    expect(parking.size).toBe(0);
  });

  it('a device whose driver cannot ride out a link down waits for the resume instead', async () => {
    const { proxy, open } = await behindProxy();
    const channel = new LinkChannel(false);
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 60_000, log });
    const first = await open(channel, parking);
    const unreachable = new Promise((r) => first.session.once('unreachable', r));
    proxy.hold(true);
    await unreachable;
    await new Promise((r) => setTimeout(r, 200));
    expect(channel.events).toEqual([]);
    proxy.hold(false);
    proxy.cutAll();
    await new Promise((r) => first.session.once('resumed', r));
    await new Promise((r) => setTimeout(r, 100));
    // Resumed in place: the same device, never down, the session open.
    expect(channel.events).toEqual([]);
    expect(first.relay.devices).toHaveLength(1);
    expect(first.session.closed).toBe(false);
    expect(parking.size).toBe(0);
  });

  it('without a Parking (no reconnect) the devices wait for the resume as before', async () => {
    const { proxy, open } = await behindProxy();
    const channel = new LinkChannel();
    cleanup.push(() => channel.close());
    const parking = new Parking({ lossMs: 60_000, log });
    const first = await open(channel, parking);
    // The same session, but a relay that was given no Parking.
    const session = await openSession(() => dialTcp('127.0.0.1', proxy.port), {
      keepaliveMs: 50,
      deadAfterMs: 300,
      log,
    }).catch((e: Error) => e);
    expect(session).toBeInstanceOf(ProtocolError); // BUSY: the endpoint serves one host
    await first.session.close();
    await first.relay.done;
    const plain = await openSession(() => dialTcp('127.0.0.1', proxy.port), {
      keepaliveMs: 50,
      deadAfterMs: 300,
      log,
    });
    cleanup.push(() => plain.close());
    const relay = new Relay(plain, channel, log);
    await new Promise<void>((resolve) => {
      relay.onSettled = () => resolve();
    });
    const unreachable = new Promise((r) => plain.once('unreachable', r));
    proxy.hold(true);
    await unreachable;
    await new Promise((r) => setTimeout(r, 100));
    proxy.hold(false);
    proxy.cutAll();
    await new Promise((r) => plain.once('resumed', r));
    expect(channel.events).toEqual(['remove SHUTDOWN']);
    expect(relay.devices).toHaveLength(1);
    expect(plain.closed).toBe(false);
  });
});
