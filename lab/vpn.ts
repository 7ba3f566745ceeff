// The card-side network of the VPN demo. The workstation's virtio-net NIC comes out of a TAP on
// the card; the card routes that TAP into a WireGuard tunnel (wireguard-go, in user space: this
// machine's kernel has TUN but no wireguard module) to a "VPN server" in a namespace of its own,
// behind which sits a "hidden host" that only the tunnel reaches. A capture on the uplink (card ↔
// server) then shows ciphertext only. Topology, addresses and MTU: docs/VPN.md.
//
//   workstation ── TAP ── card ══ wg over uplink veth ══ vpn-server ── veth ── hidden-host
//   10.77.0.2   10.77.0.1  192.0.2.1            192.0.2.2  10.78.0.1        10.78.0.2
//
// The card is a network namespace given by the caller (the lab's, where the endpoint runs), or
// this process's own when that is not the machine's. Everything else lives in namespaces made
// here, held by processes that die after `lifetimeS` even if this one is killed; wireguard-go and
// tcpdump run under timeout(1) for the same reason.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PrivateNetns } from './netns.js';
import { describeFailure, missingTools, run, runOk, tail, unrefDelay } from './proc.js';
import { type CaptureSummary, plaintextProblems, readPcap, summarize } from './vpn-pcap.js';

/** The workstation's subnet, on the TAP. */
export const WORKSTATION_NET = {
  gateway: '10.77.0.1',
  workstation: '10.77.0.2',
  prefix: 24,
  cidr: '10.77.0.0/24',
};
/** Behind the VPN server. */
export const HIDDEN_NET = { server: '10.78.0.1', host: '10.78.0.2', prefix: 24, cidr: '10.78.0.0/24' };
/** The tunnel's own addresses (for `ping` across it and for diagnostics; routing needs none). */
const TUNNEL_NET = { card: '10.99.0.1', server: '10.99.0.2', prefix: 24, cidr: '10.99.0.0/24' };
/** The uplink, card ↔ VPN server: TEST-NET-1 (RFC 5737), never routed anywhere real. */
const UPLINK_NET = { card: '192.0.2.1', server: '192.0.2.2', prefix: 30 };
/** WireGuard's customary port; the server listens on it, the card picks any. */
const WG_PORT = 51820;
/** The uplink is an ordinary Ethernet link. */
const UPLINK_MTU = 1500;
/**
 * WireGuard adds 32 bytes (type, receiver index, counter: 16; Poly1305 tag: 16) plus outer UDP (8)
 * and IP (20 for IPv4, 40 for IPv6): 60 or 80. 1500 − 80 = 1420, wg-quick's default, which also
 * holds when the real uplink is IPv6. The TAP gets the same MTU so that the workstation never
 * sends a packet the tunnel would have to refuse (DF) or fragment.
 */
export const TUNNEL_MTU = UPLINK_MTU - 80;
/** Interface names inside the namespaces made here (private to them, so fixed). */
const IF = {
  cardUplink: 'vpn-uplink',
  serverUplink: 'uplink',
  serverHidden: 'to-hidden',
  hidden: 'to-server',
};
/** Every `ip`, `wg`, `sysctl` call is quick; a hang is a bug. */
const CMD_TIMEOUT_MS = 10_000;
/** wireguard-go creates its interface and control socket within milliseconds. */
const DAEMON_READY_MS = 5_000;
const POLL_MS = 50;
/** SIGTERM, then SIGKILL after this. */
const STOP_GRACE_MS = 2_000;
/** wireguard-go's control sockets (wireguard-go/ipc/uapi_linux.go); one directory for the whole
 *  machine, whatever the namespace, hence names unique per run. */
const WG_SOCKET_DIR = '/var/run/wireguard';
/** tcpdump's kernel buffer, KiB: a few seconds of iperf3 through wireguard-go without drops. */
const CAPTURE_BUFFER_KIB = 8192;
/** Bytes kept per packet: whole pings and all headers; a bulk TCP stream stays a few MB. */
const DEFAULT_SNAPLEN = 256;
/** Output kept per helper process, for error messages and tcpdump's statistics. */
const MAX_DAEMON_OUTPUT = 1 << 16;

/** What the card's namespace must offer: lab/netns.ts's PrivateNetns has it. */
export interface Netns {
  wrap(argv: readonly string[]): string[];
}

export interface VpnOptions {
  /** The card's network namespace; default this process's, which must not be the machine's own. */
  card?: Netns;
  /** The TAP the endpoint's virtio-net attaches to (`--device virtio-net:tap=NAME,mtu=1420`):
   *  created (persistent) if absent and deleted on stop; if it exists (the endpoint made it),
   *  configured and left in place on stop, without our address. */
  tapName?: string;
  /** Upper bound on every namespace and process started here, even if this process dies. */
  lifetimeS?: number;
  /** Progress lines (`vpn: …`); silent by default. */
  log?: (line: string) => void;
}

export type CapturePoint = 'uplink' | 'tunnel' | 'hidden';

export interface CaptureResult extends CaptureSummary {
  point: CapturePoint;
  file: string;
  /** Packets the kernel dropped before tcpdump saw them (from its exit statistics). */
  dropped: number;
}

export interface Capture {
  readonly point: CapturePoint;
  stop(): Promise<CaptureResult>;
}

export interface VpnTopology {
  tapName: string;
  /** MTU of the TAP and the tunnel; the workstation's NIC should use it too. */
  mtu: number;
  workstation: { addr: string; prefix: number; gateway: string };
  hiddenHost: string;
  /** The subnet behind the VPN server: the workstation routes it via `workstation.gateway`. */
  hiddenNet: string;
  uplink: { card: string; server: string; ifname: string };
  wgPort: number;
  /** wireguard-go's interfaces (`wg show NAME` works from anywhere: it talks to their sockets). */
  wgInterfaces: { card: string; server: string };
  /** Subnets that must never appear on the uplink. */
  privateNets: readonly string[];
  /** The VPN server's and the hidden host's namespaces (wrap() to run commands there). */
  server: PrivateNetns;
  hidden: PrivateNetns;
  /** Starts tcpdump: 'uplink' on the card's uplink, 'tunnel' on the server's WireGuard interface
   *  (what was inside the tunnel), 'hidden' on the hidden host's link. The marker (≤ 16 bytes, e.g.
   *  what `ping -p` fills payloads with) is counted in every captured packet. */
  capture(point: CapturePoint, opts?: { marker?: Uint8Array; snapLen?: number }): Promise<Capture>;
  /** Problems with a capture as seen from the uplink; [] = only WireGuard (see vpn-pcap.ts). */
  plaintextProblems(s: CaptureSummary): string[];
  /** Idempotent; also what a failed start has already done. */
  stop(): Promise<void>;
}

const TOOLS: readonly (readonly [string, string])[] = [
  ['ip', 'iproute2'],
  ['nsenter', 'util-linux'],
  ['unshare', 'util-linux'],
  ['timeout', 'coreutils'],
  ['sysctl', 'procps'],
  ['wireguard-go', 'wireguard-go'],
  ['wg', 'wireguard-tools'],
  ['tcpdump', 'tcpdump'],
];

/** One line per missing prerequisite, e.g. "wireguard-go not found: apt-get install wireguard-go". */
export function missingVpnTools(): string[] {
  const missing = missingTools(TOOLS);
  if (!existsSync('/dev/net/tun')) missing.push('/dev/net/tun is missing: modprobe tun');
  return missing;
}

/** The namespace file behind a wrap(): the place `ip link … netns` moves an interface to. */
export function netnsPath(ns: Netns): string {
  const arg = ns.wrap([]).find((a) => a.startsWith('--net='));
  if (!arg) throw new Error('vpn: cannot tell which network namespace this is');
  return arg.slice('--net='.length);
}

const here: Netns = { wrap: (argv) => [...argv] };

/** Interfaces of this process's network namespace (/proc/self/net is per namespace, unlike sysfs). */
export function interfacesHere(): string[] {
  return readFileSync('/proc/self/net/dev', 'utf8')
    .split('\n')
    .slice(2)
    .map((l) => l.split(':')[0].trim())
    .filter((n) => n !== '');
}

/** A command as one string of words (no quoting: none of ours needs any) or as an argv. */
type Command = string | readonly string[];

function argvOf(command: Command): readonly string[] {
  return typeof command === 'string' ? command.trim().split(/\s+/) : command;
}

function runIn(ns: Netns, command: Command) {
  const [cmd, ...args] = ns.wrap(argvOf(command));
  return run(cmd, args, { timeoutMs: CMD_TIMEOUT_MS });
}

function exec(ns: Netns, command: Command, input?: string): Promise<string> {
  const argv = argvOf(command);
  return runOk(ns.wrap(argv), { timeoutMs: CMD_TIMEOUT_MS, input, what: `vpn: ${argv.join(' ')}` });
}

/** A long-running helper (wireguard-go, tcpdump), bounded by timeout(1), its output kept. */
class Daemon {
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;
  /** stdout and stderr together: wireguard-go logs to stdout, tcpdump to stderr. */
  output = '';
  exit: string | undefined;

  constructor(
    readonly name: string,
    ns: Netns,
    argv: readonly string[],
    lifetimeS: number,
  ) {
    const [cmd, ...args] = ns.wrap(['timeout', '--signal=TERM', `${Math.ceil(lifetimeS)}`, ...argv]);
    this.#child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (d: Buffer) => {
      if (this.output.length < MAX_DAEMON_OUTPUT) this.output += d.toString();
    };
    this.#child.stdout!.on('data', keep);
    this.#child.stderr!.on('data', keep);
    this.#exited = new Promise((resolve) => {
      this.#child.once('error', (e) => {
        this.exit = `could not start: ${e.message}`;
        resolve();
      });
      this.#child.once('close', (code, signal) => {
        this.exit ??= signal ? `killed by ${signal}` : `exited with ${code}`;
        resolve();
      });
    });
  }

  /** Polls `ready` until true; throws if the process ends first or the time runs out. */
  async waitFor(what: string, ready: () => boolean, timeoutMs = DAEMON_READY_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      if (this.exit !== undefined) throw new Error(`vpn: ${this.name} ${this.exit}: ${tail(this.output, 5)}`);
      if (Date.now() > deadline) throw new Error(`vpn: ${this.name}: no ${what} after ${timeoutMs} ms`);
      await unrefDelay(POLL_MS);
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.exit !== undefined) return;
    // timeout(1) passes the signal on to its child.
    this.#child.kill(signal);
    await Promise.race([this.#exited, unrefDelay(STOP_GRACE_MS)]);
    if (this.exit !== undefined) return;
    this.#child.kill('SIGKILL');
    await Promise.race([this.#exited, unrefDelay(STOP_GRACE_MS)]);
  }
}

/** Undo steps, run last-first; every step runs even if an earlier one failed. */
class Teardown {
  readonly #steps: { what: string; fn: () => Promise<void> | void }[] = [];
  #done: Promise<void> | undefined;

  get started(): boolean {
    return this.#done !== undefined;
  }

  push(what: string, fn: () => Promise<void> | void): void {
    this.#steps.push({ what, fn });
  }

  run(): Promise<void> {
    this.#done ??= (async () => {
      const errors: string[] = [];
      for (const step of this.#steps.slice().reverse()) {
        try {
          await step.fn();
        } catch (e) {
          errors.push(`${step.what}: ${(e as Error).message}`);
        }
      }
      if (errors.length > 0) throw new Error(`vpn: cleanup incomplete: ${errors.join('; ')}`);
    })();
    return this.#done;
  }
}

let runCount = 0;

/** A tag unique on this machine for names that are not private to a namespace. */
function runTag(): string {
  runCount = (runCount + 1) % 36;
  return `${process.pid.toString(36)}${runCount.toString(36)}`;
}

async function wgKeys(dir: string, who: string): Promise<{ privateFile: string; publicKey: string }> {
  const priv = (await exec(here, ['wg', 'genkey'])).trim();
  const privateFile = join(dir, `${who}.key`);
  writeFileSync(privateFile, `${priv}\n`, { mode: 0o600 });
  const publicKey = (await exec(here, ['wg', 'pubkey'], `${priv}\n`)).trim();
  return { privateFile, publicKey };
}

async function startWireGuard(ns: Netns, name: string, lifetimeS: number, teardown: Teardown): Promise<void> {
  const socket = join(WG_SOCKET_DIR, `${name}.sock`);
  if (existsSync(socket)) throw new Error(`vpn: ${socket} exists: another wireguard-go named ${name}?`);
  const wg = new Daemon(`wireguard-go ${name}`, ns, ['wireguard-go', '--foreground', name], lifetimeS);
  teardown.push(`stop wireguard-go ${name}`, () => wg.stop());
  await wg.waitFor('control socket', () => existsSync(socket));
}

export async function startVpnTopology(opts: VpnOptions = {}): Promise<VpnTopology> {
  const missing = missingVpnTools();
  if (missing.length > 0) throw new Error(`vpn: ${missing.join('; ')}`);
  if (process.getuid?.() !== 0) throw new Error('vpn: needs root (network namespaces, TAP, WireGuard)');
  const card = opts.card ?? here;
  const others = opts.card ? [] : interfacesHere().filter((i) => i !== 'lo');
  if (others.length > 0) {
    throw new Error(
      `vpn: this process's network namespace has ${others.join(', ')}: the machine's own network? ` +
        'Run under `unshare -n` or pass `card`',
    );
  }
  const tap = opts.tapName ?? 'pcnvpn0';
  if (!/^[A-Za-z0-9_-]{1,15}$/.test(tap)) throw new Error(`vpn: bad TAP name "${tap}"`);
  const lifetimeS = opts.lifetimeS ?? 3600;
  const log = opts.log ?? (() => {});
  const tag = runTag();
  const wgCard = `wgcard${tag}`;
  const wgServer = `wgsrv${tag}`;
  const { cardUplink, serverUplink, serverHidden, hidden: hiddenIf } = IF;
  const ws = WORKSTATION_NET;
  const hn = HIDDEN_NET;
  const tn = TUNNEL_NET;
  const up = UPLINK_NET;

  const teardown = new Teardown();
  try {
    // The endpoint creates its TAP when it starts, if absent: the lab starts it before calling
    // here, so an existing TAP is adopted (and only our address taken off it again).
    const existing = await runIn(card, `ip -d link show dev ${tap}`);
    if (existing.code === 0 && !/\btun type tap\b/.test(existing.stdout)) {
      throw new Error(`vpn: ${tap} exists in the card's namespace and is not a TAP`);
    }
    const adoptTap = existing.code === 0;
    const dir = mkdtempSync(join(tmpdir(), 'pcinet-vpn-'));
    teardown.push('remove the key and capture directory', () =>
      rmSync(dir, { recursive: true, force: true }),
    );

    const server = await PrivateNetns.create(lifetimeS);
    teardown.push('close the vpn-server namespace', () => server.close());
    const hidden = await PrivateNetns.create(lifetimeS);
    teardown.push('close the hidden-host namespace', () => hidden.close());
    for (const ns of [server, hidden]) {
      await exec(ns, 'sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1');
    }
    log(`vpn: namespaces vpn-server and hidden-host (run ${tag})`);

    // The uplink. IPv6 off before it comes up: no router solicitations or MLD reports in captures.
    await exec(
      card,
      `ip link add ${cardUplink} type veth peer name ${serverUplink} netns ${netnsPath(server)}`,
    );
    teardown.push(`delete ${cardUplink}`, () => deleteLink(card, cardUplink));
    await exec(card, `sysctl -qw net.ipv6.conf.${cardUplink}.disable_ipv6=1`);
    await exec(server, `sysctl -qw net.ipv6.conf.${serverUplink}.disable_ipv6=1`);
    await exec(card, `ip addr add ${up.card}/${up.prefix} dev ${cardUplink}`);
    await exec(card, `ip link set ${cardUplink} mtu ${UPLINK_MTU} up`);
    await exec(server, `ip addr add ${up.server}/${up.prefix} dev ${serverUplink}`);
    await exec(server, `ip link set ${serverUplink} mtu ${UPLINK_MTU} up`);

    // Server ↔ hidden host; the hidden host knows no way out but the server.
    await exec(
      server,
      `ip link add ${serverHidden} type veth peer name ${hiddenIf} netns ${netnsPath(hidden)}`,
    );
    await exec(server, `ip addr add ${hn.server}/${hn.prefix} dev ${serverHidden}`);
    await exec(server, `ip link set ${serverHidden} up`);
    await exec(hidden, `ip addr add ${hn.host}/${hn.prefix} dev ${hiddenIf}`);
    await exec(hidden, `ip link set ${hiddenIf} up`);
    await exec(hidden, `ip route add default via ${hn.server}`);

    // The TAP, made persistent so that the endpoint attaches to it by name: the workstation's
    // gateway, with the tunnel's MTU.
    if (adoptTap) {
      log(`vpn: ${tap} exists (the endpoint's?): configuring it`);
    } else {
      await exec(card, `ip tuntap add mode tap name ${tap}`);
      teardown.push(`delete ${tap}`, () => deleteLink(card, tap));
    }
    await exec(card, `ip addr add ${ws.gateway}/${ws.prefix} dev ${tap}`);
    if (adoptTap) teardown.push(`unaddress ${tap}`, () => unaddress(card, tap, `${ws.gateway}/${ws.prefix}`));
    await exec(card, `ip link set ${tap} mtu ${TUNNEL_MTU} up`);

    // WireGuard: fresh keys; the card dials the server. AllowedIPs is the routing table inside the
    // tunnel: the card sends the hidden subnet to the server, the server the workstation's back.
    const cardKeys = await wgKeys(dir, 'card');
    const serverKeys = await wgKeys(dir, 'server');
    await startWireGuard(card, wgCard, lifetimeS, teardown);
    await startWireGuard(server, wgServer, lifetimeS, teardown);
    await exec(server, [
      ...argvOf(`wg set ${wgServer} listen-port ${WG_PORT} private-key`),
      serverKeys.privateFile,
      ...argvOf(`peer ${cardKeys.publicKey} allowed-ips ${tn.card}/32,${ws.cidr}`),
    ]);
    await exec(card, [
      ...argvOf(`wg set ${wgCard} private-key`),
      cardKeys.privateFile,
      ...argvOf(
        `peer ${serverKeys.publicKey} endpoint ${up.server}:${WG_PORT} allowed-ips ${tn.server}/32,${hn.cidr}`,
      ),
    ]);
    for (const [ns, ifname, addr] of [
      [card, wgCard, tn.card],
      [server, wgServer, tn.server],
    ] as const) {
      await exec(ns, `ip addr add ${addr}/${tn.prefix} dev ${ifname}`);
      await exec(ns, `ip link set ${ifname} mtu ${TUNNEL_MTU} up`);
    }
    await exec(card, `ip route add ${hn.cidr} dev ${wgCard}`);
    await exec(server, `ip route add ${ws.cidr} dev ${wgServer}`);

    // Forwarding: TAP ↔ wg on the card, wg ↔ hidden link on the server. No NAT: the server routes
    // the workstation's subnet back into the tunnel. The card's namespace is the caller's, so its
    // old value is put back.
    const oldForward = (await exec(card, 'sysctl -n net.ipv4.ip_forward')).trim();
    teardown.push('restore ip_forward on the card', async () => {
      await exec(card, `sysctl -qw net.ipv4.ip_forward=${oldForward}`);
    });
    await exec(card, 'sysctl -qw net.ipv4.ip_forward=1');
    await exec(server, 'sysctl -qw net.ipv4.ip_forward=1');
    // ip_forward turned forwarding on for every interface. For IPv4 that flag is checked on the
    // interface a packet arrives on (ip_route_input_slow): off on both ends of the uplink, nothing
    // that comes in plaintext over the uplink is routed on — the hidden host is reachable through
    // the tunnel only, and the workstation gets nothing from the uplink that did not come through
    // it. No firewall needed.
    await exec(card, `sysctl -qw net.ipv4.conf.${cardUplink}.forwarding=0`);
    await exec(server, `sysctl -qw net.ipv4.conf.${serverUplink}.forwarding=0`);
    log(
      `vpn: ${tap} ${ws.gateway}/${ws.prefix} → ${wgCard} ⇒ ${up.server}:${WG_PORT} ${wgServer} → ${hn.host}`,
    );

    const where: Record<CapturePoint, [Netns, string]> = {
      uplink: [card, cardUplink],
      tunnel: [server, wgServer],
      hidden: [hidden, hiddenIf],
    };
    let captures = 0;
    const privateNets = [ws.cidr, hn.cidr, tn.cidr];

    return {
      tapName: tap,
      mtu: TUNNEL_MTU,
      workstation: { addr: ws.workstation, prefix: ws.prefix, gateway: ws.gateway },
      hiddenHost: hn.host,
      hiddenNet: hn.cidr,
      uplink: { card: up.card, server: up.server, ifname: cardUplink },
      wgPort: WG_PORT,
      wgInterfaces: { card: wgCard, server: wgServer },
      privateNets,
      server,
      hidden,
      async capture(point, copts = {}) {
        if (teardown.started) throw new Error('vpn: the topology is stopped');
        const [ns, ifname] = where[point];
        const file = join(dir, `${point}-${++captures}.pcap`);
        const snapLen = copts.snapLen ?? DEFAULT_SNAPLEN;
        // -Z root: tcpdump would otherwise drop to its own user, who cannot write in our 0700
        // directory. --immediate-mode: without it packets wait in a kernel block until it fills or
        // a second passes, and those of the last second are lost when the capture stops.
        const argv = [
          ...argvOf(
            `tcpdump -i ${ifname} -n -s ${snapLen} -B ${CAPTURE_BUFFER_KIB} --immediate-mode -Z root -w`,
          ),
          file,
        ];
        const d = new Daemon(`tcpdump on ${point}`, ns, argv, lifetimeS);
        teardown.push(`stop tcpdump on ${point}`, () => d.stop());
        await d.waitFor('"listening on"', () => d.output.includes('listening on'));
        return {
          point,
          async stop() {
            // SIGINT: tcpdump flushes what it buffered and prints its statistics.
            await d.stop('SIGINT');
            if (!existsSync(file))
              throw new Error(`vpn: tcpdump on ${point} ${d.exit}: ${tail(d.output, 5)}`);
            const summary = summarize(readPcap(await readFile(file)), {
              wgPort: WG_PORT,
              marker: copts.marker,
            });
            const dropped = Number(/(\d+) packets? dropped by kernel/.exec(d.output)?.[1] ?? 0);
            return { ...summary, point, file, dropped };
          },
        };
      },
      plaintextProblems: (s) => plaintextProblems(s, { privateNets }),
      stop: () => teardown.run(),
    };
  } catch (e) {
    await teardown.run().catch((cleanup: Error) => log(cleanup.message));
    throw e;
  }
}

/** Takes an address off an interface; an interface that is gone (the endpoint exited) is fine. */
async function unaddress(ns: Netns, ifname: string, cidr: string): Promise<void> {
  const r = await runIn(ns, `ip addr del ${cidr} dev ${ifname}`);
  if (r.code !== 0 && !/Cannot find device|does not exist|Cannot assign/.test(r.stderr)) {
    throw new Error(describeFailure(`ip addr del ${cidr} dev ${ifname}`, r, 3));
  }
}

/** Deletes an interface; one that is already gone is fine. */
async function deleteLink(ns: Netns, ifname: string): Promise<void> {
  const r = await runIn(ns, ['ip', 'link', 'del', 'dev', ifname]);
  if (r.code !== 0 && !/Cannot find device|does not exist/.test(r.stderr)) {
    throw new Error(describeFailure(`ip link del ${ifname}`, r, 3));
  }
}
