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
import { accessSync, constants, existsSync, mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { PrivateNetns } from './netns.js';
import { describeFailure, run, tail, unrefDelay } from './proc.js';
import { type CaptureSummary, plaintextProblems, readPcap, summarize } from './vpn-pcap.js';

/** The workstation's subnet, on the TAP. */
const WORKSTATION_NET = { gateway: '10.77.0.1', workstation: '10.77.0.2', prefix: 24, cidr: '10.77.0.0/24' };
/** Behind the VPN server. */
const HIDDEN_NET = { server: '10.78.0.1', host: '10.78.0.2', prefix: 24, cidr: '10.78.0.0/24' };
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
const TUNNEL_MTU = UPLINK_MTU - 80;
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

/** What the card's namespace must offer: lab/netns.ts's PrivateNetns has it. */
export interface Netns {
  wrap(argv: readonly string[]): string[];
}

export interface VpnOptions {
  /** The card's network namespace; default this process's, which must not be the machine's own. */
  card?: Netns;
  /** The TAP the endpoint's virtio-net attaches to (`--device virtio-net:tap=NAME`). */
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
  uplink: { card: string; server: string; ifname: string };
  wgPort: number;
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

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {}
  }
  return false;
}

/** One line per missing prerequisite, e.g. "wireguard-go not found: apt-get install wireguard-go". */
export function missingVpnTools(): string[] {
  const missing = TOOLS.filter(([cmd]) => !onPath(cmd)).map(
    ([cmd, pkg]) => `${cmd} not found: apt-get install ${pkg}`,
  );
  if (!existsSync('/dev/net/tun')) missing.push('/dev/net/tun is missing: modprobe tun');
  return missing;
}

/** The namespace file behind a wrap(): the place `ip link … netns` moves an interface to. */
function netnsPath(ns: Netns): string {
  const arg = ns.wrap([]).find((a) => a.startsWith('--net='));
  if (!arg) throw new Error('vpn: cannot tell which network namespace this is');
  return arg.slice('--net='.length);
}

const here: Netns = { wrap: (argv) => [...argv] };

async function exec(ns: Netns, argv: readonly string[], input?: string): Promise<string> {
  const [cmd, ...args] = ns.wrap(argv);
  const r = await run(cmd, args, { timeoutMs: CMD_TIMEOUT_MS, input });
  if (r.code !== 0) throw new Error(describeFailure(`vpn: ${argv.join(' ')}`, r, 5));
  return r.stdout;
}

/** A long-running helper (wireguard-go, tcpdump), bounded by timeout(1), its stderr kept. */
class Daemon {
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;
  stderr = '';
  exit: string | undefined;

  constructor(
    readonly name: string,
    ns: Netns,
    argv: readonly string[],
    lifetimeS: number,
  ) {
    const [cmd, ...args] = ns.wrap(['timeout', '--signal=TERM', `${Math.ceil(lifetimeS)}`, ...argv]);
    this.#child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.#child.stderr!.on('data', (d: Buffer) => {
      if (this.stderr.length < 1 << 16) this.stderr += d.toString();
    });
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
      if (this.exit !== undefined) throw new Error(`vpn: ${this.name} ${this.exit}: ${tail(this.stderr, 5)}`);
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

  push(what: string, fn: () => Promise<void> | void): void {
    this.#steps.push({ what, fn });
  }

  run(): Promise<void> {
    this.#done ??= (async () => {
      const errors: string[] = [];
      for (const step of this.#steps.reverse()) {
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
  const wg = new Daemon(`wireguard-go ${name}`, ns, ['wireguard-go', '--foreground', name], lifetimeS);
  teardown.push(`stop wireguard-go ${name}`, () => wg.stop());
  const socket = join(WG_SOCKET_DIR, `${name}.sock`);
  await wg.waitFor('control socket', () => existsSync(socket));
}

export async function startVpnTopology(opts: VpnOptions = {}): Promise<VpnTopology> {
  const missing = missingVpnTools();
  if (missing.length > 0) throw new Error(`vpn: ${missing.join('; ')}`);
  if (process.getuid?.() !== 0) throw new Error('vpn: needs root (network namespaces, TAP, WireGuard)');
  const card = opts.card ?? here;
  if (!opts.card && readlinkSync('/proc/self/ns/net') === readlinkSync('/proc/1/ns/net')) {
    throw new Error(
      "vpn: this is the machine's own network namespace; run under `unshare -n` or pass `card`",
    );
  }
  const tapName = opts.tapName ?? 'pcnvpn0';
  if (!/^[A-Za-z0-9_-]{1,15}$/.test(tapName)) throw new Error(`vpn: bad TAP name "${tapName}"`);
  const lifetimeS = opts.lifetimeS ?? 3600;
  const log = opts.log ?? (() => {});
  const tag = runTag();
  const wgCard = `wgcard${tag}`;
  const wgServer = `wgsrv${tag}`;

  const teardown = new Teardown();
  const captures = new Set<Capture>();
  try {
    const dir = mkdtempSync(join(tmpdir(), 'pcinet-vpn-'));
    teardown.push('remove the key and capture directory', () =>
      rmSync(dir, { recursive: true, force: true }),
    );

    const probe = await run(
      card.wrap(['ip', 'link', 'show', 'dev', tapName])[0],
      card.wrap(['ip', 'link', 'show', 'dev', tapName]).slice(1),
      {
        timeoutMs: CMD_TIMEOUT_MS,
      },
    );
    if (probe.code === 0) throw new Error(`vpn: ${tapName} already exists in the card's namespace`);

    const server = await PrivateNetns.create(lifetimeS);
    teardown.push('close the vpn-server namespace', () => server.close());
    const hidden = await PrivateNetns.create(lifetimeS);
    teardown.push('close the hidden-host namespace', () => hidden.close());
    for (const ns of [server, hidden]) {
      await exec(ns, [
        'sysctl',
        '-qw',
        'net.ipv6.conf.all.disable_ipv6=1',
        'net.ipv6.conf.default.disable_ipv6=1',
      ]);
    }
    log(`vpn: namespaces vpn-server and hidden-host (tag ${tag})`);

    // The uplink. IPv6 off before it comes up: no router solicitations or MLD reports in captures.
    await exec(card, [
      'ip',
      'link',
      'add',
      IF.cardUplink,
      'type',
      'veth',
      'peer',
      'name',
      IF.serverUplink,
      'netns',
      netnsPath(server),
    ]);
    teardown.push(`delete ${IF.cardUplink}`, () => deleteLink(card, IF.cardUplink));
    await exec(card, ['sysctl', '-qw', `net.ipv6.conf.${IF.cardUplink}.disable_ipv6=1`]);
    await exec(server, ['sysctl', '-qw', `net.ipv6.conf.${IF.serverUplink}.disable_ipv6=1`]);
    await exec(card, ['ip', 'addr', 'add', `${UPLINK_NET.card}/${UPLINK_NET.prefix}`, 'dev', IF.cardUplink]);
    await exec(card, ['ip', 'link', 'set', IF.cardUplink, 'mtu', `${UPLINK_MTU}`, 'up']);
    await exec(server, [
      'ip',
      'addr',
      'add',
      `${UPLINK_NET.server}/${UPLINK_NET.prefix}`,
      'dev',
      IF.serverUplink,
    ]);
    await exec(server, ['ip', 'link', 'set', IF.serverUplink, 'mtu', `${UPLINK_MTU}`, 'up']);

    // Server ↔ hidden host.
    await exec(server, [
      'ip',
      'link',
      'add',
      IF.serverHidden,
      'type',
      'veth',
      'peer',
      'name',
      IF.hidden,
      'netns',
      netnsPath(hidden),
    ]);
    await exec(server, [
      'ip',
      'addr',
      'add',
      `${HIDDEN_NET.server}/${HIDDEN_NET.prefix}`,
      'dev',
      IF.serverHidden,
    ]);
    await exec(server, ['ip', 'link', 'set', IF.serverHidden, 'up']);
    await exec(hidden, ['ip', 'addr', 'add', `${HIDDEN_NET.host}/${HIDDEN_NET.prefix}`, 'dev', IF.hidden]);
    await exec(hidden, ['ip', 'link', 'set', IF.hidden, 'up']);
    await exec(hidden, ['ip', 'route', 'add', 'default', 'via', HIDDEN_NET.server]);

    // The TAP, persistent so that the endpoint attaches to it by name; the workstation's gateway.
    await exec(card, ['ip', 'tuntap', 'add', 'mode', 'tap', 'name', tapName]);
    teardown.push(`delete ${tapName}`, () => deleteLink(card, tapName));
    await exec(card, [
      'ip',
      'addr',
      'add',
      `${WORKSTATION_NET.gateway}/${WORKSTATION_NET.prefix}`,
      'dev',
      tapName,
    ]);
    await exec(card, ['ip', 'link', 'set', tapName, 'mtu', `${TUNNEL_MTU}`, 'up']);

    // WireGuard: fresh keys, the card dials the server; cryptokey routing = AllowedIPs.
    const cardKeys = await wgKeys(dir, 'card');
    const serverKeys = await wgKeys(dir, 'server');
    await startWireGuard(card, wgCard, lifetimeS, teardown);
    await startWireGuard(server, wgServer, lifetimeS, teardown);
    await exec(server, [
      'wg',
      'set',
      wgServer,
      'private-key',
      serverKeys.privateFile,
      'listen-port',
      `${WG_PORT}`,
      'peer',
      cardKeys.publicKey,
      'allowed-ips',
      `${TUNNEL_NET.card}/32,${WORKSTATION_NET.cidr}`,
    ]);
    await exec(card, [
      'wg',
      'set',
      wgCard,
      'private-key',
      cardKeys.privateFile,
      'peer',
      serverKeys.publicKey,
      'endpoint',
      `${UPLINK_NET.server}:${WG_PORT}`,
      'allowed-ips',
      `${TUNNEL_NET.server}/32,${HIDDEN_NET.cidr}`,
    ]);
    for (const [ns, ifname, addr] of [
      [card, wgCard, TUNNEL_NET.card],
      [server, wgServer, TUNNEL_NET.server],
    ] as const) {
      await exec(ns, ['ip', 'addr', 'add', `${addr}/${TUNNEL_NET.prefix}`, 'dev', ifname]);
      await exec(ns, ['ip', 'link', 'set', ifname, 'mtu', `${TUNNEL_MTU}`, 'up']);
    }
    await exec(card, ['ip', 'route', 'add', HIDDEN_NET.cidr, 'dev', wgCard]);
    await exec(server, ['ip', 'route', 'add', WORKSTATION_NET.cidr, 'dev', wgServer]);

    // Forwarding: TAP ↔ wg on the card, wg ↔ hidden link on the server. The card's old value is
    // put back: its namespace is the caller's.
    const oldForward = (await exec(card, ['sysctl', '-n', 'net.ipv4.ip_forward'])).trim();
    teardown.push('restore ip_forward on the card', () =>
      exec(card, ['sysctl', '-qw', `net.ipv4.ip_forward=${oldForward}`]).then(() => {}),
    );
    await exec(card, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    await exec(server, ['sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    log(
      `vpn: ${tapName} ${WORKSTATION_NET.gateway}/${WORKSTATION_NET.prefix} → ${wgCard} ⇒ ${wgServer} → ${HIDDEN_NET.host}`,
    );

    const where: Record<CapturePoint, [Netns, string]> = {
      uplink: [card, IF.cardUplink],
      tunnel: [server, wgServer],
      hidden: [hidden, IF.hidden],
    };
    let captureCount = 0;
    const privateNets = [WORKSTATION_NET.cidr, HIDDEN_NET.cidr, TUNNEL_NET.cidr];

    const topology: VpnTopology = {
      tapName,
      mtu: TUNNEL_MTU,
      workstation: {
        addr: WORKSTATION_NET.workstation,
        prefix: WORKSTATION_NET.prefix,
        gateway: WORKSTATION_NET.gateway,
      },
      hiddenHost: HIDDEN_NET.host,
      uplink: { card: UPLINK_NET.card, server: UPLINK_NET.server, ifname: IF.cardUplink },
      wgPort: WG_PORT,
      privateNets,
      server,
      hidden,
      async capture(point, copts = {}) {
        const [ns, ifname] = where[point];
        const file = join(dir, `${point}-${++captureCount}.pcap`);
        const snapLen = copts.snapLen ?? DEFAULT_SNAPLEN;
        // -Z root: tcpdump would otherwise drop to its own user, who cannot write in our 0700 directory.
        const d = new Daemon(
          `tcpdump on ${point}`,
          ns,
          [
            'tcpdump',
            '-i',
            ifname,
            '-n',
            '-s',
            `${snapLen}`,
            '-B',
            `${CAPTURE_BUFFER_KIB}`,
            '-Z',
            'root',
            '-w',
            file,
          ],
          lifetimeS,
        );
        teardown.push(`stop tcpdump on ${point}`, () => d.stop());
        await d.waitFor('"listening on"', () => d.stderr.includes('listening on'));
        const c: Capture = {
          point,
          async stop() {
            captures.delete(c);
            // SIGINT: tcpdump flushes its buffer and prints its statistics.
            await d.stop('SIGINT');
            if (!existsSync(file))
              throw new Error(`vpn: tcpdump on ${point} ${d.exit}: ${tail(d.stderr, 5)}`);
            const summary = summarize(readPcap(await readFile(file)), {
              wgPort: WG_PORT,
              marker: copts.marker,
            });
            const dropped = Number(/(\d+) packets? dropped by kernel/.exec(d.stderr)?.[1] ?? 0);
            return { ...summary, point, file, dropped };
          },
        };
        captures.add(c);
        return c;
      },
      plaintextProblems: (s) => plaintextProblems(s, { privateNets }),
      stop: () => teardown.run(),
    };
    return topology;
  } catch (e) {
    await teardown.run().catch((cleanup: Error) => log(cleanup.message));
    throw e;
  }
}

/** Deletes an interface; one that is already gone is fine. */
async function deleteLink(ns: Netns, ifname: string): Promise<void> {
  const [cmd, ...args] = ns.wrap(['ip', 'link', 'del', 'dev', ifname]);
  const r = await run(cmd, args, { timeoutMs: CMD_TIMEOUT_MS });
  if (r.code !== 0 && !/Cannot find device|does not exist/.test(r.stderr)) {
    throw new Error(describeFailure(`ip link del ${ifname}`, r, 3));
  }
}
