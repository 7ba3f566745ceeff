// The VPN demo's card-side network, for real: a fresh namespace plays the card, the topology of
// lab/vpn.ts is built in and around it, and a "workstation" namespace stands in for the QEMU guest.
//
// The workstation reaches the card through the card's TAP, as the guest's virtio-net NIC would:
// a small forwarder on the card attaches to that TAP with the endpoint's own TapBackend and copies
// every frame to and from a second TAP that it moved into the workstation's namespace. So the card
// sees frames arrive on its TAP from a user-space reader, as with the endpoint; only virtio and the
// network between workstation and card are left out. The forwarder runs the built tap.ts (dist/;
// it must run inside the card's namespace, hence in a child process; npm test builds first).
//
// Needs root, /dev/net/tun, wireguard-go, wg, tcpdump, iperf3, ping.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PrivateNetns } from './netns.js';
import { repoRoot } from './paths.js';
import { run, unrefDelay } from './proc.js';
import { interfacesHere, missingVpnTools, netnsPath, startVpnTopology, type VpnTopology } from './vpn.js';
import { formatSummary } from './vpn-pcap.js';

const onPath = (cmd: string) =>
  (process.env.PATH ?? '').split(delimiter).some((d) => {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
const missing =
  process.getuid?.() !== 0
    ? ['root']
    : [...missingVpnTools(), ...['iperf3', 'ping'].filter((c) => !onPath(c)).map((c) => `${c} not found`)];

/** Bounds every namespace and helper process of the test, even if vitest dies. */
const LIFETIME_S = 120;
const WS_TAP = 'pcnws0';
const CARD_TAP = 'pcnvpn0';
const IPERF_PORT = 5201;
const IPERF_SECONDS = 3;
const PINGS = 20;

const forwarderScript = (tapModule: string, cardTap: string, wsTap: string, wsNetns: string) => `
import { execFileSync } from 'node:child_process';
import { TapBackend } from ${JSON.stringify(tapModule)};
const card = new TapBackend(${JSON.stringify(cardTap)});
const ws = new TapBackend(${JSON.stringify(wsTap)});
execFileSync('ip', ['link', 'set', ${JSON.stringify(wsTap)}, 'netns', ${JSON.stringify(wsNetns)}]);
// A frame that finds the other side's write queue full is dropped, as on a wire.
function pipe(from, to) {
  let full = false;
  from.onReceive = (frame) => {
    if (full) return;
    const p = to.send(frame);
    if (p) { full = true; p.then(() => { full = false; }); }
  };
}
pipe(card, ws);
pipe(ws, card);
process.on('SIGTERM', () => { card.close(); ws.close(); process.exit(0); });
console.log('ready');
`;

/** endpoint/backends/tap.ts, built (npm test builds first), as the module the script imports. */
function tapModuleIn(dir: string): string {
  const built = join(repoRoot(), 'dist/endpoint/backends/tap.js');
  if (!existsSync(built)) throw new Error(`${built} is missing: run npm run build`);
  writeFileSync(join(dir, 'tap.mjs'), `export * from ${JSON.stringify(built)};\n`);
  return join(dir, 'tap.mjs');
}

/** Starts a process and resolves once a line of its stdout matches; rejects on exit or timeout. */
function startUntil(argv: string[], ready: RegExp, timeoutMs: number): Promise<ChildProcess> {
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${argv.join(' ')}: not ready: ${out}`));
    }, timeoutMs);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (ready.test(out)) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`${argv[0]} exited with ${code}: ${out}`));
    });
  });
}

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const closed = new Promise((r) => child.once('close', r));
  child.kill('SIGTERM');
  await Promise.race([closed, unrefDelay(3000)]);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

async function sh(ns: PrivateNetns, line: string, timeoutMs = 10_000): Promise<string> {
  const [cmd, ...args] = ns.wrap(line.split(' '));
  const r = await run(cmd, args, { timeoutMs });
  if (r.code !== 0) throw new Error(`${line}: exited with ${r.code}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

interface IperfResult {
  end: { sum_received: { bits_per_second: number }; sum_sent: { retransmits?: number } };
}

/** The card, the topology around it, and a workstation on the far side of the card's TAP. */
interface World {
  card: PrivateNetns;
  ws: PrivateNetns;
  topo: VpnTopology;
  procs: ChildProcess[];
}

/**
 * Builds a world in `dir` and runs `body` in it; everything is taken down afterwards, also on
 * failure. `tapFirst`: the forwarder creates the card's TAP before the topology exists, as the
 * lab's endpoint does (the topology adopts it); otherwise the topology creates it.
 */
async function inWorld(dir: string, tapFirst: boolean, body: (w: World) => Promise<void>): Promise<void> {
  const procs: ChildProcess[] = [];
  let card: PrivateNetns | undefined;
  let ws: PrivateNetns | undefined;
  let topo: VpnTopology | undefined;
  try {
    card = await PrivateNetns.create(LIFETIME_S);
    ws = await PrivateNetns.create(LIFETIME_S);
    const tapModule = tapModuleIn(dir);
    const startForwarder = async (cardNs: PrivateNetns, wsNs: PrivateNetns) => {
      const script = forwarderScript(tapModule, CARD_TAP, WS_TAP, netnsPath(wsNs));
      const argv = cardNs.wrap([
        'timeout',
        `${LIFETIME_S}`,
        process.execPath,
        '--input-type=module',
        '-e',
        script,
      ]);
      procs.push(await startUntil(argv, /^ready$/m, 10_000));
    };
    if (tapFirst) await startForwarder(card, ws);
    topo = await startVpnTopology({ card, tapName: CARD_TAP, lifetimeS: LIFETIME_S });
    if (!tapFirst) await startForwarder(card, ws);
    await sh(ws, `ip addr add ${topo.workstation.addr}/${topo.workstation.prefix} dev ${WS_TAP}`);
    await sh(ws, `ip link set ${WS_TAP} mtu ${topo.mtu} up`);
    await sh(ws, `ip route add default via ${topo.workstation.gateway}`);
    await body({ card, ws, topo, procs });
  } finally {
    for (const p of procs.reverse()) await stopChild(p);
    await topo?.stop().catch(() => {});
    await ws?.close();
    await card?.close();
  }
}

async function pingHidden(
  w: World,
  count: number,
  marker: Buffer,
): Promise<{ sent: number; received: number }> {
  const [cmd, ...args] = w.ws.wrap(
    `ping -n -c ${count} -i 0.05 -W 1 -p ${marker.toString('hex')} ${w.topo.hiddenHost}`.split(' '),
  );
  const r = await run(cmd, args, { timeoutMs: 20_000 });
  const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
  if (!m) throw new Error(`ping: ${r.stdout}${r.stderr}`);
  const rtt = /= [\d.]+\/([\d.]+)\//.exec(r.stdout)?.[1];
  if (rtt) console.log(`ping: ${m[2]}/${m[1]} answered, rtt avg ${rtt} ms`);
  return { sent: Number(m[1]), received: Number(m[2]) };
}

describe.skipIf(missing.length > 0)('the VPN demo’s card-side network', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'pcinet-vpn-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('the workstation reaches the hidden host through WireGuard; the uplink carries only ciphertext', {
    timeout: 60_000,
  }, async () => {
    await inWorld(dir, false, async (w) => {
      const { topo, card } = w;
      w.procs.push(
        spawn(
          ...splitArgv(topo.hidden.wrap(['timeout', `${LIFETIME_S}`, 'iperf3', '-s', '-p', `${IPERF_PORT}`])),
          { stdio: 'ignore' },
        ),
      );
      const marker = randomBytes(16);
      const uplink = await topo.capture('uplink', { marker });
      const tunnel = await topo.capture('tunnel', { marker });

      const ping = await pingHidden(w, PINGS, marker);
      expect(ping).toEqual({ sent: PINGS, received: PINGS });

      for (let i = 0; i < 50 && !topo.hidden.listening(IPERF_PORT); i++) await unrefDelay(100);
      const rates: number[] = [];
      for (const reverse of [false, true]) {
        const flags = `-c ${topo.hiddenHost} -p ${IPERF_PORT} -t ${IPERF_SECONDS} -J${reverse ? ' -R' : ''}`;
        const r = JSON.parse(await sh(w.ws, `iperf3 ${flags}`, 20_000)) as IperfResult;
        const mbps = r.end.sum_received.bits_per_second / 1e6;
        console.log(
          `iperf3 ${reverse ? 'hidden host → workstation' : 'workstation → hidden host'}: ` +
            `${mbps.toFixed(1)} Mbit/s, ${r.end.sum_sent.retransmits ?? 0} retransmits`,
        );
        rates.push(mbps);
      }
      expect(Math.min(...rates)).toBeGreaterThan(1);

      const onUplink = await uplink.stop();
      const inTunnel = await tunnel.stop();
      for (const c of [onUplink, inTunnel]) {
        console.log(
          `${c.point}: ${formatSummary(c)}; addresses ${c.addresses.join(' ')}; dropped ${c.dropped}`,
        );
      }

      // The uplink: WireGuard between the uplink addresses, nothing else (ARP at most).
      expect(topo.plaintextProblems(onUplink)).toEqual([]);
      expect(onUplink.byKind.wireguard).toBeGreaterThan(2 * PINGS);
      expect(onUplink.addresses).toEqual([topo.uplink.card, topo.uplink.server]);
      // Inside the tunnel the same traffic is plaintext, and the same check says so.
      expect(inTunnel.byKind.icmp).toBeGreaterThanOrEqual(2 * PINGS);
      expect(inTunnel.byKind.tcp).toBeGreaterThan(0);
      expect(inTunnel.markerPackets).toBeGreaterThanOrEqual(2 * PINGS);
      expect(inTunnel.addresses).toEqual(expect.arrayContaining([topo.workstation.addr, topo.hiddenHost]));
      const problems = topo.plaintextProblems(inTunnel).join('\n');
      expect(problems).toMatch(/icmp packet/);
      expect(problems).toMatch(/private addresses in headers: .*10\.77\.0\.2/);
      expect(problems).toMatch(/payload marker/);

      // A card that routes the hidden subnet out of the uplink instead of the tunnel is caught by
      // the check; and the server, which forwards nothing that arrives on its uplink, drops it.
      await sh(
        card,
        `ip route replace ${topo.hiddenNet} via ${topo.uplink.server} dev ${topo.uplink.ifname}`,
      );
      const leak = await topo.capture('uplink', { marker });
      const leakPing = await pingHidden(w, 3, marker);
      const leaked = await leak.stop();
      console.log(`uplink with a leaking route: ${topo.plaintextProblems(leaked).join('; ')}`);
      expect(leakPing).toEqual({ sent: 3, received: 0 });
      expect(leaked.byKind.icmp).toBeGreaterThanOrEqual(3);
      expect(topo.plaintextProblems(leaked)).toEqual(
        expect.arrayContaining([
          expect.stringMatching(/icmp packet/),
          expect.stringMatching(/payload marker/),
        ]),
      );

      // Stop leaves the card as it was: the created TAP and the uplink gone (only lo and, until
      // the forwarder ends, nothing else), ip_forward back to 0, no wireguard-go sockets.
      for (const p of w.procs.splice(0)) await stopChild(p);
      await topo.stop();
      await topo.stop();
      expect((await sh(card, 'ip -o link show')).trim().split('\n')).toHaveLength(1);
      expect((await sh(card, 'sysctl -n net.ipv4.ip_forward')).trim()).toBe('0');
      expect(existsSync(onUplink.file)).toBe(false);
      for (const name of [topo.wgInterfaces.card, topo.wgInterfaces.server]) {
        expect(existsSync(`/var/run/wireguard/${name}.sock`)).toBe(false);
      }
    });
  });

  it('adopts a TAP the endpoint already made, as in the lab, and leaves it on stop', {
    timeout: 30_000,
  }, async () => {
    await inWorld(dir, true, async (w) => {
      const marker = randomBytes(16);
      const uplink = await w.topo.capture('uplink', { marker });
      expect(await pingHidden(w, 5, marker)).toEqual({ sent: 5, received: 5 });
      const onUplink = await uplink.stop();
      console.log(`uplink (adopted TAP): ${formatSummary(onUplink)}`);
      expect(w.topo.plaintextProblems(onUplink)).toEqual([]);
      await w.topo.stop();
      const tap = await sh(w.card, `ip -o addr show dev ${CARD_TAP}`);
      expect(tap).not.toMatch(/10\.77\.0\.1/);
    });
  });

  it('a failed start takes down what it had built, and says why in one line', async () => {
    // A wireguard-go that dies at once, found first on PATH.
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    writeFileSync(join(bin, 'wireguard-go'), '#!/bin/sh\necho "boom: no TUN for you" >&2\nexit 1\n', {
      mode: 0o755,
    });
    const path = process.env.PATH;
    const card = await PrivateNetns.create(LIFETIME_S);
    try {
      process.env.PATH = `${bin}${delimiter}${path}`;
      await expect(startVpnTopology({ card, tapName: CARD_TAP, lifetimeS: LIFETIME_S })).rejects.toThrow(
        /^vpn: wireguard-go wgcard\w+ exited with 1: boom: no TUN for you$/,
      );
      process.env.PATH = path;
      expect((await sh(card, 'ip -o link show')).trim().split('\n')).toHaveLength(1);
      expect((await sh(card, 'sysctl -n net.ipv4.ip_forward')).trim()).toBe('0');
    } finally {
      process.env.PATH = path;
      await card.close();
    }
  });

  // Only where this process's namespace has interfaces besides lo (a real network, as far as we
  // can tell); in a bare one the call would rightly build the topology here.
  it.skipIf(!interfacesHere().some((i) => i !== 'lo'))(
    'refuses to build in the machine’s own network namespace',
    async () => {
      await expect(startVpnTopology({})).rejects.toThrow(/the machine's own network\?/);
    },
  );
});

it('names the package of every missing tool, before touching anything', async () => {
  const path = process.env.PATH;
  process.env.PATH = '/nonexistent';
  try {
    expect(missingVpnTools()).toEqual(
      expect.arrayContaining([
        'wireguard-go not found: apt-get install wireguard-go',
        'wg not found: apt-get install wireguard-tools',
        'tcpdump not found: apt-get install tcpdump',
        'ip not found: apt-get install iproute2',
      ]),
    );
    await expect(startVpnTopology({})).rejects.toThrow(/^vpn: ip not found: apt-get install iproute2; /);
  } finally {
    process.env.PATH = path;
  }
});

function splitArgv(argv: string[]): [string, string[]] {
  return [argv[0], argv.slice(1)];
}
