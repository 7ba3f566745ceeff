// The virtio-net NIC in the lab with the real stack: Linux's own virtio_pci and virtio_net drive
// it through pcinet.ko; its frames leave the endpoint through a TAP on "the card" (the lab's
// network namespace), which has 10.77.0.1 and runs an iperf3 server. From the guest: the
// interface and its MAC, ethtool, 100 pings, iperf3 both ways, and the card taking the link down
// and up (`ip link set` on the TAP, asked for over the NIC itself); then the endpoint restarted
// under the same interface.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { beforeAll, describe, expect, it } from 'vitest';
import { askCard, endpointControl } from '../../lab/card-control.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { type LabCard, MAX_SLOWDOWN, runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 240_000;
const TAP = 'pn0';
const MAC = '52:54:00:7e:57:01';
const CARD = '10.77.0.1';
const GUEST = '10.77.0.2';
const FLAP_PORT = 7999;

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(argv[0]!, argv.slice(1), { timeout: 10_000 }, (e, _out, err) =>
      e ? reject(new Error(`${argv.join(' ')}: ${err || e.message}`)) : resolve(),
    ),
  );
}

/** On the card: a TCP port that, when told "flap", takes the TAP down for 3 s. */
const flapper = `
const { execFileSync } = require('node:child_process');
const server = require('node:net').createServer((c) => c.on('data', (d) => {
  if (!String(d).includes('flap')) return;
  execFileSync('ip', ['link', 'set', '${TAP}', 'down']);
  setTimeout(() => execFileSync('ip', ['link', 'set', '${TAP}', 'up']), 3000);
}));
server.listen(${FLAP_PORT}, '${CARD}');
setTimeout(() => process.exit(0), ${RUN_TIMEOUT_MS * MAX_SLOWDOWN});
`;

const guestScript = [
  'set -e',
  'dev=$PCINET_LAB_DEVICES',
  'for i in $(seq 100); do ls /sys/bus/pci/devices/$dev/virtio*/net/ > /dev/null 2>&1 && break; sleep 0.1; done',
  'ifc=$(ls /sys/bus/pci/devices/$dev/virtio*/net/)',
  'echo "ifc=$ifc driver=$(basename $(readlink /sys/class/net/$ifc/device/driver))"',
  'ip -o link show $ifc',
  'ethtool -i $ifc',
  `ip addr add ${GUEST}/24 dev $ifc`,
  'ip link set $ifc up',
  'carrier() { for i in $(seq 100); do [ "$(cat /sys/class/net/$ifc/carrier 2>/dev/null)" = "$1" ] && return 0; sleep 0.1; done; return 1; }',
  'carrier 1 && echo carrier-up-at-start',
  `ping -c 100 -i 0.02 -W 2 ${CARD}`,
  `iperf3 -c ${CARD} -t 10 -f m | tail -4`,
  `iperf3 -c ${CARD} -t 10 -f m -R | tail -4`,
  // Sample the carrier from before the request until well after the card's 3 s flap.
  '(for i in $(seq 240); do cat /sys/class/net/$ifc/carrier; sleep 0.05; done > /tmp/carrier) & sampler=$!',
  `node -e "require('net').connect(${FLAP_PORT}, '${CARD}', function () { this.end('flap') })"`,
  'wait $sampler',
  'grep -q "^0$" /tmp/carrier && echo carrier-down-seen',
  'carrier 1 && echo carrier-up-seen',
  `ping -c 5 -i 0.2 -W 2 ${CARD} | grep -E "packets transmitted"`,
].join('\n');

describe.skipIf(!root)('virtio-net through pcinet.ko: the workstation’s NIC is on the card', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it('binds virtio_net with the endpoint’s MAC, pings, runs iperf3 both ways, sees the link flap', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const procs: ChildProcess[] = [];
    const r = await runInLab({
      assets,
      devices: [`virtio-net:tap=${TAP},mac=${MAC}`],
      command: guestScript,
      timeoutMs: RUN_TIMEOUT_MS,
      card: async (card) => {
        await run(card.wrap(['ip', 'addr', 'add', `${CARD}/24`, 'dev', TAP]));
        await run(card.wrap(['ip', 'link', 'set', TAP, 'up']));
        const [iperf, ...iperfArgs] = card.wrap([
          'timeout',
          String((RUN_TIMEOUT_MS * MAX_SLOWDOWN) / 1000),
          'iperf3',
          '-s',
          '-B',
          CARD,
        ]);
        procs.push(spawn(iperf!, iperfArgs, { stdio: 'ignore' }));
        const [node, ...nodeArgs] = card.wrap([process.execPath, '-e', flapper]);
        procs.push(spawn(node!, nodeArgs, { stdio: 'ignore' }));
        return async () => {
          for (const p of procs) p.kill('SIGTERM'); // timeout(1) passes it on to iperf3
        };
      },
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^ifc=\S+ driver=virtio_net$/m);
    expect(r.stdout).toMatch(new RegExp(`link/ether ${MAC} `));
    expect(r.stdout).toMatch(/^driver: virtio_net$/m);
    expect(r.stdout).toMatch(/^carrier-up-at-start$/m);
    expect(r.stdout).toMatch(/^100 packets transmitted, 100 received, 0% packet loss/m);
    // iperf3's summary lines: sender and receiver, both directions.
    const rates = [...r.stdout.matchAll(/([\d.]+) Mbits\/sec\s+\d*\s*(sender|receiver)$/gm)].map((m) =>
      Number(m[1]),
    );
    expect(rates.length).toBeGreaterThanOrEqual(4);
    for (const rate of rates) expect(rate).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/^carrier-down-seen$/m);
    expect(r.stdout).toMatch(/^carrier-up-seen$/m);
    expect(r.stdout).toMatch(/^5 packets transmitted, 5 received/m);
    console.log(`virtio-net iperf3 (Mbit/s): ${rates.join(' ')}`);
  });

  it('comes back without a guest reboot when the endpoint is killed and restarted', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const addressTap = async (card: LabCard) => {
      await run(card.wrap(['ip', 'addr', 'add', `${CARD}/24`, 'dev', TAP]));
      await run(card.wrap(['ip', 'link', 'set', TAP, 'up']));
    };
    const r = await runInLab({
      assets,
      devices: [`virtio-net:tap=${TAP},mac=${MAC}`],
      reconnect: true,
      command: [
        'set -e',
        `nic() { for n in /sys/class/net/*; do [ "$(cat $n/address)" = "${MAC}" ] && basename $n && return 0; done; return 1; }`,
        'carrier() { for i in $(seq 100); do [ "$(cat /sys/class/net/$1/carrier 2>/dev/null)" = 1 ] && return 0; sleep 0.1; done; return 1; }',
        `up() { ifc=$(nic); ip addr add ${GUEST}/24 dev $ifc; ip link set $ifc up; carrier $ifc; echo "up $ifc index $(cat /sys/class/net/$ifc/ifindex)"; }`,
        'up; before=$(cat /sys/class/net/$ifc/ifindex)',
        `ping -c 5 -i 0.2 -W 2 ${CARD} | grep "packets transmitted"`,
        askCard('restart'),
        'for i in $(seq 600); do dmesg | grep -q "link up: recovered" && break; sleep 0.1; done',
        'carrier $ifc && echo "back $(nic) index $(cat /sys/class/net/$ifc/ifindex)"',
        `ping -c 5 -i 0.2 -W 5 ${CARD} | grep "packets transmitted"`,
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
      card: endpointControl({ setup: addressTap, started: addressTap }),
    });
    expect(
      r.code,
      `${r.stdout}\n${r.stderr}\n${r.guestLog
        .split('\n')
        .filter((l) => /pcinet|virtio|eth/.test(l))
        .slice(-30)
        .join('\n')}\n${r.hostAgentLog.slice(-3000)}`,
    ).toBe(0);
    // The same PCI function, its link down and up again: virtio_net has no PCI error handlers, but
    // it stayed bound while the endpoint was away and was frozen and restored with the new one
    // (kernel/freeze.c): the same interface, its address kept, its carrier back.
    const up = /^up (\S+) index (\d+)$/m.exec(r.stdout);
    expect(up).toBeTruthy();
    expect(r.stdout).toMatch(new RegExp(`^back ${up![1]} index ${up![2]}$`, 'm'));
    expect(r.guestLog).toMatch(/link down: the driver stays bound/);
    expect(r.guestLog).toMatch(/link up: recovered/);
    expect(r.hostAgentLog).toMatch(/endpoint back: link up/);
    expect(r.stdout).toMatch(/^card: restart ok$/m);
    expect([...r.stdout.matchAll(/^5 packets transmitted, 5 received/gm)]).toHaveLength(2);
    expect(r.endpointLog).toMatch(/endpoint killed and restarted/);
  });
});
