// The pcinet command lines the lab runs: the endpoint (on this machine, in the lab's network
// namespace), the host-agent (in the guest) and `pcinet id`. The CLI is the lead's (cli/main.ts);
// if its flags change, this file is the only one to adjust.

import { withAllocatorArgv } from '../cli/allocator.js';
import { run } from './proc.js';

/** The port the lab's own endpoint listens on. Any port is free: the namespace is private. */
export const LAB_ENDPOINT_PORT = 7470;
/** What a guest reaches this machine's (QEMU's namespace's) 127.0.0.1 as, through slirp. */
export const SLIRP_HOST = '10.0.2.2';

const ID_TIMEOUT_MS = 30_000;

export interface Security {
  /** Plain TCP, no identities. */
  insecure: boolean;
}

export interface EndpointSpec extends Security {
  node: string;
  cli: string;
  port: number;
  devices: readonly string[];
  identityDir?: string;
  /** Host fingerprints to accept. */
  allow?: readonly string[];
  logLevel?: string;
  /** Its control socket (`pcinet status`, `pcinet trace`): the lab's own, so that labs running
   *  side by side never meet at the default path. */
  control?: string;
  /** `--watch [DIR]`: run again whenever a compiled model changes. */
  watch?: boolean | string;
}

/** Scheme spelled out on both sides: a bare 127.0.0.1:PORT would mean plain TCP to the endpoint
 *  (loopback) while the guest, dialling 10.0.2.2, would expect TLS. */
export function endpointArgv(e: EndpointSpec): string[] {
  const argv = [e.cli, 'endpoint', '--listen', `${e.insecure ? 'tcp' : 'tls'}://127.0.0.1:${e.port}`];
  for (const d of e.devices) argv.push('--device', d);
  if (e.insecure) argv.push('--insecure');
  else {
    if (!e.identityDir || !e.allow?.length)
      throw new Error('lab: a TLS endpoint needs an identity and --allow');
    argv.push('--identity', e.identityDir);
    for (const fp of e.allow) argv.push('--allow', fp);
  }
  if (e.logLevel) argv.push('--log-level', e.logLevel);
  if (e.control) argv.push('--control', e.control);
  if (e.watch) argv.push(...(typeof e.watch === 'string' ? ['--watch', e.watch] : ['--watch']));
  return withAllocatorArgv([e.node, ...argv]);
}

export interface HostAgentSpec extends Security {
  node: string;
  cli: string;
  /** Address as the guest dials it, e.g. tls://10.0.2.2:7470. */
  connect: string;
  identityDir?: string;
  /** The endpoint's fingerprint. */
  pin?: string;
  readyFile: string;
  logLevel?: string;
  /** Keep going when the endpoint is lost: redial, attach its devices again. */
  reconnect?: boolean;
  /** false: `--no-kernel-link` (plain TCP keeps the data plane in the host-agent). */
  kernelLink?: boolean;
  /** Its control socket in the guest, when not the default (a second host-agent beside the lab's). */
  control?: string;
  /** Appended as they are. */
  extra?: readonly string[];
}

export function hostAgentArgv(h: HostAgentSpec): string[] {
  const argv = [h.cli, 'host', '--connect', h.connect, '--channel', 'kernel', '--ready-file', h.readyFile];
  if (h.insecure) argv.push('--insecure');
  if (h.identityDir) argv.push('--identity', h.identityDir);
  if (h.pin) argv.push('--pin', h.pin);
  if (h.logLevel) argv.push('--log-level', h.logLevel);
  if (h.reconnect) argv.push('--reconnect');
  if (h.kernelLink === false) argv.push('--no-kernel-link');
  if (h.control) argv.push('--control', h.control);
  if (h.extra) argv.push(...h.extra);
  return withAllocatorArgv([h.node, ...argv]);
}

/** How the guest dials an endpoint given as seen from this machine: loopback becomes the slirp
 *  host alias; a scheme, if any, is kept; without one, plain TCP if insecure, else TLS. */
export function guestDialAddress(endpoint: string, insecure: boolean): string {
  const m = /^(?:([a-z]+):\/\/)?(\[[^\]]+\]|[^:/]+):(\d+)(\/.*)?$/.exec(endpoint);
  if (!m) throw new Error(`lab: cannot parse endpoint address "${endpoint}" (want HOST:PORT)`);
  const [, scheme, host, port, rest] = m;
  const loopback = host === 'localhost' || host === '[::1]' || /^127\./.test(host);
  const guestHost = loopback ? SLIRP_HOST : host;
  return `${scheme ?? (insecure ? 'tcp' : 'tls')}://${guestHost}:${port}${rest ?? ''}`;
}

/** Creates (on first use) the identity in `dir` and returns its fingerprint ("sha256:…"). */
export async function identityFingerprint(node: string, cli: string, dir: string): Promise<string> {
  const r = await run(node, [cli, 'id', '--identity', dir], { timeoutMs: ID_TIMEOUT_MS });
  const fp = r.stdout.trim().split('\n').pop()?.trim() ?? '';
  if (r.code !== 0 || !fp) {
    throw new Error(
      `lab: \`pcinet id --identity ${dir}\` failed (${r.code}): ${(r.stderr || r.stdout).trim() || 'no output'}`,
    );
  }
  return fp;
}
