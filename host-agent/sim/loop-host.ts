// A host-agent for tests and benches in one process with its endpoint: the sim channel, a session
// over the in-process loop transport (proto/loop.ts) handed to `accept` (an endpoint server's), and
// the relay between them, resolved once every device the endpoint attached is on the sim bus.
import type { Logger } from 'pino';
import { loopPair } from '../../proto/loop.js';
import { openSession, type Session } from '../../proto/session.js';
import type { Transport } from '../../proto/transport.js';
import { Relay } from '../relay.js';
import { SimChannel } from './channel.js';

export interface LoopHost {
  channel: SimChannel;
  session: Session;
  relay: Relay;
}

export async function loopHost(accept: (t: Transport) => void, log: Logger): Promise<LoopHost> {
  const channel = new SimChannel({ log });
  const session = await openSession(
    async () => {
      const [a, b] = loopPair();
      accept(b);
      return a;
    },
    { log },
  );
  const relay = new Relay(session, channel, log);
  await new Promise<void>((resolve) => {
    relay.onSettled = () => resolve();
  });
  return { channel, session, relay };
}
