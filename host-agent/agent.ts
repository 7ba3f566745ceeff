// The host-agent process (`pcinet host`): dials the endpoint, opens a resumable session, opens the
// channel (sim or kernel) and relays between them until a signal, the endpoint, or a lost session
// ends it. With --selftest (sim channel) it runs the test device's selftest on every test device
// and exits with its verdict. With reconnect (the kernel channel's default), an endpoint declared
// unreachable (its connection silent for the dead-peer interval, a redial that fails) or lost for
// good parks its devices (link down, if the channel can; else they are removed): their drivers
// quiesce and keep their I/O queued. The agent redials (capped exponential backoff with jitter)
// until it is back, then brings them up again; devices still down after ctrl-loss-tmo are removed
// (host-agent/parking.ts).
//
// Exit status: 0 orderly end or selftest passed; 1 the session failed, an attach failed, or the
// selftest failed. (2, bad usage, is the CLI's.)
import { lookup } from 'node:dns/promises';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { type Address, ipBytes } from '../proto/address.js';
import type { Identity } from '../proto/identity.js';
import { jittered, openSession, type Session, type SessionOptions } from '../proto/session.js';
import { dialTcp } from '../proto/tcp.js';
import type { Transport } from '../proto/transport.js';
import { VERSION } from '../proto/version.js';
import {
  Capability,
  ErrorCode,
  long,
  type Msg,
  num,
  OUR_CAPABILITIES,
  type ProtocolError,
} from '../proto/wire.js';
import { dialWs } from '../proto/ws.js';
import type { Channel, LinkEndpoint } from './channel.js';
import { openKernelChannel } from './kernel/channel.js';
import { DEFAULT_LOSS_MS, Parking } from './parking.js';
import { type AttachedDevice, Relay } from './relay.js';
import { SimChannel } from './sim/channel.js';
import { type Check, TestDriver } from './sim/test-driver.js';
import { type HostStatus, STATUS_NONCE_BASE } from './status.js';

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
  /** Every device of an attach round is on the bus (again after each reconnect). */
  onReady?: (devices: AttachedDevice[]) => void;
  /** When the endpoint goes away for good (resume refused or the grace period over), keep
   *  redialling and attach its devices again when it is back, instead of exiting. Not with
   *  the selftest. The first session must open, or the agent exits 1. */
  reconnect?: boolean;
  /** With reconnect: how long devices wait link down for a lost endpoint before they are removed
   *  (`--ctrl-loss-tmo`, in ms); 0 forever. Default DEFAULT_LOSS_MS (600 s, as NVMe/TCP). */
  ctrlLossMs?: number;
  /** Kernel channel over TCP or TLS: let pcinet.ko carry each device's data plane on a connection
   *  of its own (docs/KERNEL-ABI.md, W_CONNECT; sealed on TLS). Default true. */
  kernelLink?: boolean;
  /** What `pcinet status` is shown (host-agent/status.ts): told of each session. */
  status?: HostStatus;
}

export function dialer(
  address: Address,
  tls?: { identity: Identity; pin: string },
): () => Promise<Transport> {
  const ws = address.scheme === 'ws' || address.scheme === 'wss';
  return () =>
    ws ? dialWs(address.host, address.port, address.path, tls) : dialTcp(address.host, address.port, tls);
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
export async function runSelftest(
  channel: SimChannel,
  log: Logger,
  out: (line: string) => void,
): Promise<boolean> {
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
    out(
      `selftest ${fn.address}: ${passed ? 'PASS' : 'FAIL'} (${checks.length} checks, ${Date.now() - started} ms)`,
    );
    out(formatChecks(checks));
    log.info({ address: fn.address, passed, checks: checks.length }, 'selftest done');
  }
  return ok;
}

/**
 * SIGUSR1 logs statistics: this session's (frames, messages, bytes, resumes) and the endpoint's
 * counters (per device: MMIO, DMA requests and bytes, interrupts), fetched with a StatsRequest.
 * Returns the function that stops listening.
 */
function statsOnSignal(session: Session, log: Logger): () => void {
  let nonce = 0;
  const onSignal = () => {
    nonce++;
    log.info({ session: session.stats() }, 'session statistics');
    session.send({ statsRequest: { nonce: long(nonce) } });
    session.flush();
  };
  const onMessages = (msgs: Msg[]) => {
    for (const m of msgs) {
      // Status probes (host-agent/status.ts) have nonces of their own.
      if (!m.stats || num(m.stats.nonce, 'nonce') >= STATUS_NONCE_BASE) continue;
      const counters = Object.fromEntries(
        (m.stats.counters ?? []).map((c) => [c.name ?? '', num(c.value, 'counter')]),
      );
      log.info({ nonce: num(m.stats.nonce, 'nonce'), counters }, 'endpoint statistics');
    }
  };
  process.on('SIGUSR1', onSignal);
  session.on('messages', onMessages);
  return () => {
    process.off('SIGUSR1', onSignal);
    session.off('messages', onMessages);
  };
}

/** Where the kernel's links go: the endpoint's address, resolved now, when links are possible (the
 *  kernel channel, TCP or TLS; sealed on TLS). */
async function linkTarget(o: HostAgentOptions): Promise<LinkEndpoint | undefined> {
  // WebSocket endpoints listen on HTTP: no link there.
  const scheme = o.address.scheme ?? (o.tls ? 'tls' : 'tcp');
  if (o.channel !== 'kernel' || o.kernelLink === false || (scheme !== 'tcp' && scheme !== 'tls'))
    return undefined;
  try {
    const a = await lookup(o.address.host);
    const ip = ipBytes(a.address);
    return {
      host: a.address,
      family: ip.family,
      address: ip.bytes,
      port: o.address.port,
      sealed: !!o.tls,
    };
  } catch (e) {
    o.log.warn(
      { host: o.address.host, err: (e as Error).message },
      'cannot resolve the endpoint: no kernel link',
    );
    return undefined;
  }
}

/** Redial delays after the endpoint went away: doubling from the first to the last, each less up
 *  to RECONNECT_JITTER of it at random (hosts that lost the same card do not redial in step). The
 *  cap keeps a card that is back waiting at most this long; a dial that cannot connect costs one
 *  TCP handshake. */
const RECONNECT_FIRST_MS = 250;
/** How often pcinet.ko's counters are looked at for losses and refusals. */
const KERNEL_CHECK_MS = 5000;
const RECONNECT_MAX_MS = 5000;
const RECONNECT_JITTER = 0.2;
/** For this long after the endpoint went away, tries come every RECONNECT_FAST_STEP_MS instead
 *  (and quietly): an endpoint restarting — a model's edit loop, an upgrade — is back within it and
 *  found within one step; a refused dial costs one round trip. */
const RECONNECT_FAST_MS = 2000;
const RECONNECT_FAST_STEP_MS = 50;

/** One line per redial while the endpoint is away: since when its devices are down, when the next
 *  try is, and when they will be removed. */
function logLost(log: Logger, parking: Parking | undefined, waitMs: number): void {
  const since = parking?.downSince;
  if (since === undefined) {
    log.warn({ retryMs: waitMs }, `endpoint lost; next try in ${waitMs / 1000} s`);
    return;
  }
  const removeAt = parking!.removeAt;
  const removeInS =
    removeAt === undefined ? undefined : Math.max(0, Math.round((removeAt - Date.now()) / 1000));
  const downSince = new Date(since).toISOString();
  log.warn(
    { devices: parking!.size, downSince, retryMs: waitMs, removeInS },
    `endpoint lost: link down since ${downSince} (${Math.round((Date.now() - since) / 1000)} s), ` +
      `next try in ${waitMs / 1000} s${removeInS === undefined ? '' : `, removal in ${removeInS} s`}`,
  );
}

export async function runHostAgent(o: HostAgentOptions): Promise<number> {
  const log = o.log;
  const channel = await openChannel(o.channel, log);
  const reconnect = (o.reconnect ?? false) && !o.selftest;
  // Devices wait on the bus, link down, for as long as NVMe/TCP would wait for its controller.
  const parking = reconnect ? new Parking({ lossMs: o.ctrlLossMs ?? DEFAULT_LOSS_MS, log }) : undefined;
  if (o.status) o.status.parking = parking;
  // What pcinet.ko lost or refused goes to our log too (host-agent/status.ts checkKernel).
  const status = o.status;
  const watch = status ? setInterval(() => status.checkKernel(log), KERNEL_CHECK_MS) : undefined;
  watch?.unref();
  try {
    return await hostAgentRounds(o, channel, reconnect, parking, log);
  } finally {
    clearInterval(watch);
  }
}

async function hostAgentRounds(
  o: HostAgentOptions,
  channel: Channel,
  reconnect: boolean,
  parking: Parking | undefined,
  log: HostAgentOptions['log'],
): Promise<number> {
  const signalled = o.untilSignal.then((name) => ({ kind: 'signal' as const, name }));
  let delay = RECONNECT_FIRST_MS;
  let rounds = 0;
  /** When the endpoint went away, for the fast tries after it. */
  let lostAt: number | undefined;
  for (;;) {
    const quiet = lostAt !== undefined && Date.now() - lostAt < RECONNECT_FAST_MS;
    const r = await serveSession(
      o,
      channel,
      { mustOpen: rounds++ === 0, reconnect, parking, quiet },
      signalled,
    );
    if (r.kind === 'done') {
      await parking?.evictAll('the host-agent is stopping');
      await channel.close();
      return r.code;
    }
    if (r.attached) {
      delay = RECONNECT_FIRST_MS;
      lostAt = undefined;
    }
    lostAt ??= Date.now();
    const fast = Date.now() - lostAt < RECONNECT_FAST_MS;
    // The endpoint is gone (or not back yet): its devices are parked (link down) or were removed.
    // One that refused our resume is back already (restarted): no wait for it.
    const waitMs = r.back ? 0 : jittered(fast ? RECONNECT_FAST_STEP_MS : delay, RECONNECT_JITTER);
    if (!quiet) logLost(log, parking, waitMs);
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<'retry'>((resolve) => {
      timer = setTimeout(() => resolve('retry'), waitMs);
    });
    const next = await Promise.race([wait, signalled]);
    clearTimeout(timer);
    if (next !== 'retry') {
      log.info({ signal: next.name }, 'stopping');
      await parking?.evictAll('the host-agent is stopping');
      await channel.close();
      return 0;
    }
    if (!fast) delay = Math.min(delay * 2, RECONNECT_MAX_MS);
  }
}

/** 'lost' with `back`: the endpoint answered, but as a new process (it refused the session's
 *  resume): it is listening, so the next session opens at once. */
type Served = { kind: 'done'; code: number } | { kind: 'lost'; attached: boolean; back?: boolean };

/**
 * One session: open it, relay until it ends. 'done' with the exit status when the process should
 * end (a signal, the selftest's verdict, a failed first dial, or any end without `reconnect`);
 * 'lost' when the endpoint went away and the caller tries again.
 */
async function serveSession(
  o: HostAgentOptions,
  channel: Channel,
  round: { mustOpen: boolean; reconnect: boolean; parking: Parking | undefined; quiet?: boolean },
  signalled: Promise<{ kind: 'signal'; name: string }>,
): Promise<Served> {
  const log = o.log;
  const link = await linkTarget(o);
  let session: Session;
  try {
    session = await openSession(dialer(o.address, o.tls), {
      ...o.session,
      log,
      agent: `pcinet-host/${VERSION} (${hostname()})`,
      capabilities: link ? OUR_CAPABILITIES | Capability.CAP_KERNEL_LINK : OUR_CAPABILITIES,
    });
  } catch (e) {
    // The fast tries right after a loss are expected to fail while the endpoint restarts.
    (round.quiet ? log.debug : log.error).call(
      log,
      { err: (e as Error).message },
      'cannot open a session with the endpoint',
    );
    return round.mustOpen || !round.reconnect ? { kind: 'done', code: 1 } : { kind: 'lost', attached: false };
  }
  log.info({ endpoint: session.remote, peer: session.peerAgent }, 'session open');
  session.on('disconnected', (e: Error) => log.warn({ err: e.message }, 'connection lost; resuming'));
  session.on('resumed', () => log.info({ endpoint: session.remote }, 'session resumed'));

  const relay = new Relay(
    session,
    channel,
    log,
    round.parking,
    session.capabilities & Capability.CAP_KERNEL_LINK ? link : undefined,
  );
  o.status?.opened(session, relay);
  const stopStats = statsOnSignal(session, log);
  relay.done.then(stopStats, stopStats);
  let attached = false;
  const settled = new Promise<boolean>((resolve) => {
    relay.onSettled = (devices, failed) => {
      relay.onSettled = () => {};
      for (const f of failed)
        log.error(
          { dev: f.dev, model: f.model, code: ErrorCode[f.code], err: f.message },
          'device not attached',
        );
      attached = devices.length > 0;
      // Devices the endpoint came back without are not coming back.
      void round.parking?.evictAll('the endpoint no longer has them');
      if (failed.length === 0) o.onReady?.(devices);
      resolve(failed.length === 0);
    };
  });

  type Outcome =
    | { kind: 'ready'; ok: boolean }
    | { kind: 'ended'; err: Error | undefined }
    | { kind: 'signal'; name: string };
  const ended = relay.done.then((err): Outcome => ({ kind: 'ended', err }));

  let outcome: Outcome = await Promise.race([
    settled.then((ok): Outcome => ({ kind: 'ready', ok })),
    ended,
    signalled,
  ]);
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
    if (round.reconnect) {
      const back = (outcome.err as ProtocolError | undefined)?.code === ErrorCode.SESSION_UNKNOWN;
      return { kind: 'lost', attached, back };
    }
    return { kind: 'done', code: outcome.err ? 1 : code };
  }
  if (outcome.kind === 'signal') log.info({ signal: outcome.name }, 'stopping');
  // Orderly: devices detached, session closed after the endpoint acknowledged everything.
  const stop = (async () => {
    await relay.detachAll();
    await session.close();
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
  return { kind: 'done', code };
}
