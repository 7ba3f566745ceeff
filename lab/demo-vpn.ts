// `pcinet demo vpn`: a network card whose VPN runs on the card. The workstation (the lab guest)
// has a virtio-net NIC; its frames come out of a TAP on the card (the lab's network namespace),
// which lab/vpn.ts routes into a WireGuard tunnel (wireguard-go) to a "VPN server" in a namespace
// of its own; behind the server sits a host reachable only through the tunnel. The workstation
// pings that host and runs iperf3 against it, while tcpdump watches the card's uplink and the
// inside of the tunnel. The uplink must show WireGuard only: no plaintext protocol, no private
// address, and not the marker bytes the workstation put in every ping.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { prepareLab } from './prepare.js';
import { type LabCard, runInLab } from './run.js';
import {
  type Capture,
  type CaptureResult,
  HIDDEN_NET,
  missingVpnTools,
  startVpnTopology,
  TUNNEL_MTU,
  type VpnTopology,
  WORKSTATION_NET,
} from './vpn.js';
import { formatSummary } from './vpn-pcap.js';

const TAP = 'pnvpn0';
const MAC = '52:54:00:0f:7e:01';
const PINGS = 20;
const GUEST_LOG_LINES = 30;

export interface VpnDemoOptions {
  out?: (line: string) => void;
  /** iperf3 seconds per direction (default 5). */
  seconds?: number;
}

export interface VpnDemoResult {
  /** The guest script's exit status (0: pings and both iperf3 runs succeeded). */
  code: number;
  uplink: CaptureResult;
  /** Captured on the VPN server's WireGuard interface: what travelled inside the tunnel. */
  tunnel: CaptureResult;
  /** What the uplink showed that it must not; [] = ciphertext only. */
  problems: string[];
}

/** The guest's part (it runs before the card hook, so it takes vpn.ts's fixed plan). Lines
 *  starting with "== " are the demo's output. */
/** The demo's lab run may take this long on an idle machine (it stretches on a busy one). */
export function vpnDemoRunMs(seconds: number): number {
  return (4 * seconds + 240) * 1000;
}

function guestScript(markerHex: string, seconds: number): string {
  const w = WORKSTATION_NET;
  const host = HIDDEN_NET.host;
  return [
    'set -e',
    `nic=$(grep -lx ${MAC} /sys/class/net/*/address | cut -d/ -f5)`,
    `[ -n "$nic" ] || { echo "no interface with MAC ${MAC}" >&2; exit 1; }`,
    `ip addr add ${w.workstation}/${w.prefix} dev $nic && ip link set $nic mtu ${TUNNEL_MTU} up`,
    'for i in $(seq 100); do [ "$(cat /sys/class/net/$nic/carrier)" = 1 ] && break; sleep 0.1; done',
    `ip route add ${HIDDEN_NET.cidr} via ${w.gateway}`,
    `echo "== workstation: $nic ${w.workstation}/${w.prefix} mtu ${TUNNEL_MTU}, ${HIDDEN_NET.cidr} via the card (${w.gateway})"`,
    `ping -c ${PINGS} -i 0.2 -W 3 -p ${markerHex} ${host} | tail -2 | sed "s/^/== workstation: ping ${host}: /"`,
    `iperf3 -c ${host} -t ${seconds} -f m | grep -E "receiver$" | sed "s/^/== workstation: iperf3 upload: /"`,
    `iperf3 -c ${host} -t ${seconds} -f m -R | grep -E "receiver$" | sed "s/^/== workstation: iperf3 download: /"`,
  ].join('\n');
}

export async function runVpnDemo(o: VpnDemoOptions = {}): Promise<VpnDemoResult> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const seconds = o.seconds ?? 5;
  const missing = missingVpnTools();
  if (missing.length > 0) throw new Error(`demo vpn: ${missing.join('; ')}`);
  // ping -p takes up to 16 pattern bytes; 12 random ones never occur in a WireGuard packet by chance.
  const marker = randomBytes(12);
  const lifetimeS = 4 * seconds + 300;
  const assets = await prepareLab({ modules: true });

  let topo: VpnTopology | undefined;
  let captures: { uplink: Capture; tunnel: Capture } | undefined;
  let iperf: ChildProcess | undefined;
  let result: { uplink: CaptureResult; tunnel: CaptureResult } | undefined;
  let partial = '';
  /** The guest's other output, shown if its script fails. */
  const guestLog: string[] = [];
  const r = await runInLab({
    assets,
    devices: [`virtio-net:tap=${TAP},mac=${MAC},mtu=${TUNNEL_MTU}`],
    command: guestScript(marker.toString('hex'), seconds),
    timeoutMs: vpnDemoRunMs(seconds),
    onOutput: (chunk) => {
      partial += chunk.toString();
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const l of lines) {
        if (l.startsWith('== ')) out(l);
        else guestLog.push(l);
        if (guestLog.length > GUEST_LOG_LINES) guestLog.shift();
      }
    },
    card: async (c: LabCard) => {
      topo = await startVpnTopology({ card: c, tapName: TAP, lifetimeS, log: (l) => out(`== card: ${l}`) });
      const [cmd, ...args] = topo.hidden.wrap([
        'timeout',
        String(lifetimeS),
        'iperf3',
        '-s',
        '-B',
        topo.hiddenHost,
      ]);
      iperf = spawn(cmd!, args, { stdio: 'ignore' });
      captures = {
        uplink: await topo.capture('uplink', { marker }),
        tunnel: await topo.capture('tunnel', { marker }),
      };
      out(
        `== card: capturing on the uplink (${topo.uplink.ifname}) and inside the tunnel (${topo.wgInterfaces.server})`,
      );
      return async () => {
        if (captures) result = { uplink: await captures.uplink.stop(), tunnel: await captures.tunnel.stop() };
        iperf?.kill('SIGTERM'); // timeout(1) passes it on
        await topo?.stop();
      };
    },
  });
  if (r.code !== 0) {
    out(`== workstation: the script failed (exit ${r.code}); its last lines:`);
    for (const l of guestLog) out(`==   ${l}`);
  }
  if (!topo || !result)
    throw new Error(`demo vpn: the lab ended before the card was set up (exit ${r.code})`);
  const problems = topo.plaintextProblems(result.uplink);
  out(`== card: uplink ${topo.uplink.ifname}: ${formatSummary(result.uplink)}`);
  out(`== card: inside the tunnel: ${formatSummary(result.tunnel)}`);
  for (const c of [result.uplink, result.tunnel]) {
    if (c.dropped > 0) out(`== card: tcpdump on ${c.point} dropped ${c.dropped} packets`);
  }
  out(
    problems.length === 0
      ? "== card: the uplink carried only WireGuard: none of the workstation's plaintext left the card"
      : `== card: PLAINTEXT ON THE UPLINK: ${problems.join('; ')}`,
  );
  return { code: r.code, uplink: result.uplink, tunnel: result.tunnel, problems };
}
