// For the sim host's tests over real TCP (placed-write.test.ts, lent-read.test.ts): an endpoint
// session whose messages the test sends by hand, and a host-agent (sim channel, relay, session)
// dialling it, optionally through a proxy the test controls (or over another transport).
import pino from 'pino';
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from '../../devices/pci/config.js';
import { TestDevice } from '../../devices/test/device.js';
import { wireDescription } from '../../endpoint/describe.js';
import { openSession, type Session, SessionServer } from '../../proto/session.js';
import { dialTcp, listenTcp } from '../../proto/tcp.js';
import type { pcinet } from '../../proto/wire.js';
import type { Channel } from '../channel.js';
import { Relay } from '../relay.js';
import { SimChannel } from './channel.js';
import type { SimFunction } from './function.js';

export const log = pino({ level: 'silent' });

/** Waits until `cond` holds, polling; fails naming `what` after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export interface TcpWorldOptions {
  /** Undone after the test, last first. */
  cleanup: (() => unknown)[];
  /** Given the endpoint's port, the port the host dials instead (a proxy); default: the endpoint's. */
  via?: (port: number) => Promise<number>;
  /** Instead of TCP: how the host reaches the endpoint's server (e.g. the in-process loop). */
  dial?: (server: SessionServer) => Parameters<typeof openSession>[0];
  memory?: number;
  /** The channel the relay uses, wrapping the sim's. */
  channelOf?: (sim: SimChannel) => Channel;
}

/** Both sides up, device 1 (the test device) attached, memory and bus mastering on; `fromHost`
 *  collects what the endpoint receives, `cpls` its DMA read completions. */
export async function tcpWorld(o: TcpWorldOptions) {
  let ep: Session | undefined;
  const server = new SessionServer({ log }, (s) => {
    ep = s;
  });
  o.cleanup.push(() => server.close());
  let dial = o.dial?.(server);
  if (!dial) {
    const listener = await listenTcp('127.0.0.1', 0, undefined, (t) => server.accept(t));
    o.cleanup.push(() => listener.close());
    const port = o.via ? await o.via(listener.port) : listener.port;
    dial = () => dialTcp('127.0.0.1', port);
  }
  const sim = new SimChannel({ log, memory: o.memory });
  const host = await openSession(dial, { log });
  o.cleanup.push(() => host.close());
  const relay = new Relay(host, o.channelOf ? o.channelOf(sim) : sim, log);
  await until(() => ep !== undefined, 'the endpoint session');
  const fromHost: pcinet.Msg[] = [];
  const cpls: pcinet.IDmaReadCpl[] = [];
  ep!.on('messages', (msgs: pcinet.Msg[]) => {
    for (const m of msgs) {
      fromHost.push(m);
      if (m.dmaReadCpl) cpls.push(m.dmaReadCpl);
    }
  });
  ep!.send({ attach: { dev: 1, desc: wireDescription(new TestDevice().description) } });
  ep!.flush();
  await until(() => relay.devices.length === 1, 'the attach');
  const fn = sim.functions[0] as SimFunction;
  fn.configWrite(PCI_COMMAND, 2, fn.configRead(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  return { ep: ep!, host, relay, sim, fn, fromHost, cpls };
}
