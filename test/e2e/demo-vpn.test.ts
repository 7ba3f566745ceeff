// `pcinet demo vpn` end to end: the workstation (lab guest, virtio_net) reaches a host behind a
// WireGuard server through the card; the card's uplink carries only WireGuard, while inside the
// tunnel the workstation's pings — recognised by their payload marker — are there (so the uplink
// check is looking at the right traffic and could fail).
import { describe, expect, it } from 'vitest';
import { runVpnDemo, vpnDemoRunMs } from '../../lab/demo-vpn.js';
import { testBudget } from '../../lab/run.js';
import { missingVpnTools } from '../../lab/vpn.js';

const root = process.getuid?.() === 0;
const SECONDS = 3;

describe.skipIf(!root || missingVpnTools().length > 0)('pcinet demo vpn', () => {
  it('pings and streams to the hidden host; the uplink shows only WireGuard', {
    timeout: testBudget(vpnDemoRunMs(SECONDS)) + 120_000, // and the WireGuard peers' setup
  }, async () => {
    const lines: string[] = [];
    const r = await runVpnDemo({ out: (l) => lines.push(l), seconds: SECONDS });
    const text = lines.join('\n');
    expect(r.code, text).toBe(0);
    expect(text).toMatch(/ping 10\.78\.0\.2: 20 packets transmitted, 20 received, 0% packet loss/);
    expect(text).toMatch(/iperf3 upload: .* [\d.]+ Mbits\/sec .*receiver/);
    expect(text).toMatch(/iperf3 download: .* [\d.]+ Mbits\/sec .*receiver/);
    expect(r.problems, text).toEqual([]);
    expect(r.uplink.byKind.wireguard).toBeGreaterThan(40);
    // Inside the tunnel: every echo request and reply carries the marker.
    expect(r.tunnel.markerPackets, text).toBeGreaterThanOrEqual(40);
    expect(r.tunnel.addresses).toEqual(expect.arrayContaining(['10.77.0.2', '10.78.0.2']));
  });
});
