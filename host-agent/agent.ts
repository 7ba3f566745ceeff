// The host-agent process (`pcinet host`): dials the endpoint, opens a resumable session, opens the
// channel (sim or kernel) and relays between them until a signal, the endpoint, or a lost session
// ends it. With --selftest (sim channel) it runs the test device's selftest on every test device
// and exits with its verdict.
//
// Exit status: 0 orderly end or selftest passed; 1 the session failed, an attach failed, or the
// selftest failed. (2, bad usage, is the CLI's.)
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { Address } from '../proto/address.js';
import type { Identity } from '../proto/identity.js';
import { openSession, type Session, type SessionOptions } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import type { Transport } from '../proto/transport.js';
import { ErrorCode } from '../proto/wire.js';
import { dialWs } from '../proto/ws.js';
import type { Channel } from './channel.js';
import { openKernelChannel } from './kernel/channel.js';
import { type AttachedDevice, Relay } from './relay.js';
import { SimChannel } from './sim/channel.js';
import { type Check, TestDriver } from './sim/test-driver.js';

const VERSION = '0.1.0';
/** After SIGTERM, give up on an orderly goodbye after this long (the lab waits 10 s). */
const STOP_MS = 5000;

export interface HostAgentOptions {
  address: Address;
  /** TLS with our identity, accepting only the endpoint key `pin`. Absent: plain. */
  tls?: { identity: Identity; pin: string };
  channel: 'sim' | 'kernel';
  selftest: boolean;
  session: SessionOptions;
  log: Logger;
  /** Resolves (with the signal's name) when the process should stop. */
  untilSignal: Promise<string>;
  /** Every device of the first attach round is on the bus. */
  onReady?: (devices: AttachedDevice[]) => void;
}

export function dialer(address: Address, tls?: { identity: Identity; pin: string }): () => Promise<Transport> {
  const ws = address.scheme === 'ws' || address.scheme === 'wss';
  return () => (ws ? dialWs(address.host, address.port, address.path, tls) : dialTcp(address.host, address.port, tls));
}

async function openChannel(name: 'sim' | 'kernel', log: Logger): Promise<Channel> {
  if (name === 'sim') return new SimChannel({ log });
  return openKernelChannel({ log });
}

export function formatChecks(checks: readonly Check[]): string {
  const width = Math.max(...checks.map((c) => c.name.length));
  return checks.map((c) => `${c.ok ? 'ok  ' : 'FAIL'} ${c.name.padEnd(width)}  ${c.detail}`).join('\n');
}

/** Runs the selftest on every test device of a sim channel; true when every check passed. */
export async function runSelftest(channel: SimChannel, log: Logger, out: (line: string) => void): Promise<boolean> {
  const fns = channel.functions.filter((f) => f.model === 'test');
  if (fns.length === 0) {
    out('selftest: the endpoint serves no test device (start it with --device test)');
    return false;
  }
  let ok = true;
  for (const fn of fns) {
    const driver = new TestDriver(fn, channel.memory, channel.iommu);
    driver.probe();
    const started = Date.now();
    const checks = await driver.selftest();
    const passed = checks.every((c) => c.ok);
    ok &&= passed;
    out(`selftest ${fn.address}: ${passed ? 'PASS' : 'FAIL'} (${checks.length} checks, ${Date.now() - started} ms)`);
    out(formatChecks(checks));
    log.info({ address: fn.address, passed, checks: checks.length }, 'selftest done');
  }
  return ok;
}

export async function runHostAgent(o: HostAgentOptions): Promise<number> {
  const log = o.log;
  const channel = await openChannel(o.channel, log);
  let session: Session;
  try {
    session = await openSession(dialer(o.address, o.tls), {
      ...o.session,
      log,
      agent: `pcinet-host/${VERSION} (${hostname()})`,
    });
  } catch (e) {
    await channel.close();
    log.error({ err: (e as Error).message }, 'cannot open a session with the endpoint');
    return 1;
  }
  log.info({ endpoint: session.remote, peer: session.peerAgent }, 'session open');
  session.on('disconnected', (e: Error) => log.warn({ err: e.message }, 'connection lost; resuming'));
  session.on('resumed', () => log.info({ endpoint: session.remote }, 'session resumed'));

  const relay = new Relay(session, channel, log);
  const settled = new Promise<boolean>((resolve) => {
    relay.onSettled = (devices, failed) => {
      relay.onSettled = () => {};
      for (const f of failed) log.error({ dev: f.dev, model: f.model, code: ErrorCode[f.code], err: f.message }, 'device not attached');
      if (failed.length === 0) o.onReady?.(devices);
      resolve(failed.length === 0);
    };
  });

  type Outcome = { kind: 'ready'; ok: boolean } | { kind: 'ended'; err: Error | undefined } | { kind: 'signal'; name: string };
  const ended = relay.done.then((err): Outcome => ({ kind: 'ended', err }));
  const signalled = o.untilSignal.then((name): Outcome => ({ kind: 'signal', name }));

  let outcome = await Promise.race([settled.then((ok): Outcome => ({ kind: 'ready', ok })), ended, signalled]);
  let code = 0;
  if (outcome.kind === 'ready') {
    if (!outcome.ok) code = 1;
    else if (o.selftest) {
      const passed = await Promise.race([
        runSelftest(channel as SimChannel, log, (l) => process.stdout.write(`${l}\n`)),
        ended.then(() => false),
      ]);
      code = passed ? 0 : 1;
    } else {
      outcome = await Promise.race([ended, signalled]);
    }
  }
  if (outcome.kind === 'ended') {
    if (outcome.err) log.error({ err: outcome.err.message }, 'session ended');
    else log.info('endpoint closed the session');
    await channel.close();
    return outcome.err ? 1 : code;
  }
  if (outcome.kind === 'signal') log.info({ signal: outcome.name }, 'stopping');
  // Orderly: devices detached, session closed after the endpoint acknowledged everything.
  const stop = (async () => {
    await relay.detachAll();
    await session.close();
    await channel.close();
  })();
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      log.warn('orderly stop took too long; closing now');
      resolve();
    }, STOP_MS);
  });
  await Promise.race([stop, late]);
  clearTimeout(timer);
  if (!session.closed) await session.close(new Error('host stopping'));
  await channel.close();
  return code;
}
