// What `pcinet endpoint`, `pcinet host` and `pcinet id` do, given parsed flags.
import { renameSync, writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { endpointControl } from '../endpoint/control.js';
import { parseDeviceSpec } from '../endpoint/device-spec.js';
import { parseFaultSpec } from '../endpoint/faults.js';
import { EndpointServer } from '../endpoint/server.js';
import { runHostAgent } from '../host-agent/agent.js';
import { HostStatus } from '../host-agent/status.js';
import { type Address, isLoopback, parseAddress } from '../proto/address.js';
import {
  type ControlHandler,
  type ControlServer,
  defaultControlPath,
  listenControl,
} from '../proto/control.js';
import { loadOrCreateIdentity } from '../proto/identity.js';
import type { SessionOptions } from '../proto/session.js';
import { UsageError } from './errors.js';
import type { CommonFlags, EndpointFlags, HostFlags } from './main.js';

/** Whether an address gets TLS: explicit schemes decide; a bare HOST:PORT is plain on loopback and
 *  TLS elsewhere. Plain transports to other hosts need --insecure. */
export function wantsTls(addr: Address, insecure: boolean): boolean {
  if (addr.scheme === 'tls' || addr.scheme === 'wss') return true;
  const loopback = isLoopback(addr.host);
  if (addr.scheme === 'tcp' || addr.scheme === 'ws') {
    if (!loopback && !insecure) {
      throw new UsageError(
        `${addr.scheme}:// to ${addr.host} is unencrypted; use tls:// or wss://, or pass --insecure`,
      );
    }
    return false;
  }
  return !loopback && !insecure;
}

function address(text: string): Address {
  try {
    return parseAddress(text);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function sessionOptions(o: CommonFlags, log: Logger): SessionOptions {
  return { keepaliveMs: o.keepaliveMs, deadAfterMs: o.deadAfterMs, graceMs: o.graceMs, log };
}

const FINGERPRINT = /^sha256:[0-9a-f]{64}$/;

function checkFingerprint(fp: string, flag: string): string {
  if (!FINGERPRINT.test(fp))
    throw new UsageError(`${flag} ${fp}: expected sha256:<64 hex digits> (see pcinet id)`);
  return fp;
}

export async function runId(identityDir: string): Promise<string> {
  return (await loadOrCreateIdentity(identityDir)).fingerprint;
}

function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
    // Run by `pcinet endpoint --watch`: its end (even by SIGKILL) is ours too.
    if (process.connected) {
      process.once('disconnect', () => resolve('the supervisor is gone'));
      process.channel?.unref(); // the channel alone must not keep the endpoint from exiting
    }
  });
}

/** What `pcinet endpoint` checks before it does anything (`--check` stops here). */
export function checkEndpoint(o: EndpointFlags) {
  const specs = o.device ?? [];
  if (specs.length === 0) throw new UsageError('no --device given (e.g. --device test)');
  const models = specs.map((s) => {
    try {
      return parseDeviceSpec(s);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  });
  const addr = address(o.listen);
  const tls = wantsTls(addr, o.insecure);
  const allow = (o.allow ?? []).map((fp) => checkFingerprint(fp, '--allow'));
  if (tls && allow.length === 0) {
    throw new UsageError(
      'TLS endpoint needs at least one --allow <host fingerprint> (the host prints it with pcinet id)',
    );
  }
  const targets = models.map((model, i) => ({ dev: i + 1, model }));
  for (const spec of o.inject ?? []) {
    try {
      parseFaultSpec(spec, targets);
    } catch (e) {
      throw new UsageError(`--inject ${spec}: ${(e as Error).message}`);
    }
  }
  return { specs, models, addr, tls, allow };
}

/** The process's control socket (proto/control.ts), unless --no-control. Taken before anything
 *  else starts: a second endpoint or host on the same path stops here. */
async function control(
  o: CommonFlags,
  role: 'host' | 'endpoint',
  handlers: Record<string, ControlHandler>,
  log: Logger,
): Promise<ControlServer | undefined> {
  if (o.control === false) return undefined;
  const c = await listenControl(o.control ?? defaultControlPath(role), role, handlers);
  log.info({ path: c.path }, 'control socket');
  return c;
}

export async function runEndpoint(o: EndpointFlags, log: Logger): Promise<void> {
  const { specs, models, addr, tls, allow } = checkEndpoint(o);
  const identity = tls ? await loadOrCreateIdentity(o.identity) : undefined;
  const server = new EndpointServer({ models, log, session: sessionOptions(o, log), inject: o.inject });
  const ctl = await control(o, 'endpoint', endpointControl(server, models), log);
  const where = await server.listen(addr, identity ? { identity, allow } : undefined);
  log.info({ address: where, tls, devices: specs, fingerprint: identity?.fingerprint }, 'endpoint listening');
  const sig = await untilSignal();
  log.info({ signal: sig }, 'shutting down');
  await ctl?.close();
  await server.close();
}

/** One JSON line per device, written whole: a reader never sees a partial file (docs/LAB.md). */
function writeReadyFile(path: string, devices: readonly object[]): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, `${devices.map((d) => JSON.stringify(d)).join('\n')}\n`);
  renameSync(tmp, path);
}

/** What `pcinet host` checks before it does anything (`--check` stops here). */
export function checkHost(o: HostFlags) {
  if (!o.connect) throw new UsageError('--connect is required (or "connect" in the --config file)');
  const addr = address(o.connect);
  const tls = wantsTls(addr, o.insecure);
  if (tls && !o.pin) {
    throw new UsageError(`connecting to ${addr.host} uses TLS: give the endpoint's fingerprint with --pin`);
  }
  if (o.selftest && o.channel !== 'sim') throw new UsageError('--selftest needs --channel sim');
  if (o.selftest && o.reconnect) throw new UsageError('--reconnect and --selftest do not go together');
  // Reconnecting is the kernel channel's default: a disk whose card is briefly away keeps its
  // filesystem and its queued I/O. The sim channel runs tests and the selftest: it ends instead.
  const reconnect = o.reconnect ?? (o.channel === 'kernel' && !o.selftest);
  const pin = o.pin ? checkFingerprint(o.pin, '--pin') : undefined;
  return { addr, tls, pin, reconnect };
}

export async function runHost(o: HostFlags, log: Logger): Promise<number> {
  const { addr, tls, pin, reconnect } = checkHost(o);
  const identity = tls ? await loadOrCreateIdentity(o.identity) : undefined;
  const status = new HostStatus({ address: o.connect, channel: o.channel });
  const ctl = await control(o, 'host', status.handlers(), log);
  try {
    return await runHostAgent({
      address: addr,
      tls: identity && pin ? { identity, pin } : undefined,
      channel: o.channel,
      selftest: o.selftest,
      session: sessionOptions(o, log),
      log,
      untilSignal: untilSignal(),
      onReady: o.readyFile ? (devices) => writeReadyFile(o.readyFile!, devices) : undefined,
      reconnect,
      ctrlLossMs: o.ctrlLossTmo * 1000,
      kernelLink: o.kernelLink,
      status,
    });
  } finally {
    await ctl?.close();
  }
}
