// bench/net: iperf3 through pcinet's virtio-net NIC, side by side with iperf3 over the path the
// NIC's traffic itself travels (guest → QEMU user networking → the card's loopback), in the same
// lab run. Prints a table and the ratio; asserts nothing.
//
//   node dist/bench/net.js [--seconds 10] [--tls] [--no-link] [--chart FILE] [--log]
//
// Needs root (the lab). The NIC's frames go guest → virtio_net → pcinet.ko → its kernel link →
// endpoint → TAP on the card: plain TCP by default, sealed on a TLS session with --tls; --no-link
// sends them through the host-agent instead; the reference runs the same iperf3 over guest → slirp → card
// directly, which is the transport pcinet rides on. The chart (--chart, default
// bench/results/net.svg) has the same figures.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { ensurePackages, prepareLab } from '../lab/prepare.js';
import { type LabCard, runInLab } from '../lab/run.js';
import { parseBenchArgs } from './args.js';
import { writeChart } from './chart.js';

const TAP = 'pnb0';
const MAC = '52:54:00:be:4c:01';
const CARD = '10.77.0.1';
const GUEST = '10.77.0.2';
const DIRECT_PORT = 5299;

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(argv[0]!, argv.slice(1), { timeout: 10_000 }, (e, _o, err) =>
      e ? reject(new Error(err || e.message)) : resolve(),
    ),
  );
}

async function main(): Promise<void> {
  const args = parseBenchArgs(
    'net',
    process.argv.slice(2),
    { seconds: { value: 10, range: '1..120', ok: (n) => n > 0 && n <= 120 } },
    ['tls', 'no-link'],
  );
  const hop = args['no-link'] ? 'host-agent → session' : 'kernel link';
  const path = `virtio_net → pcinet.ko → ${hop} (${args.tls ? 'TLS' : 'TCP'}) → endpoint → TAP`;
  const { seconds } = args;
  // iperf3 runs on both sides from this machine's root (the guest sees it over 9p).
  await ensurePackages(['iperf3'], (l) => console.error(`bench/net: ${l}`));
  const assets = await prepareLab({ modules: true });
  const procs: ChildProcess[] = [];
  const iperf = (label: string, target: string, extra: string) =>
    `iperf3 -c ${target} ${extra} -t ${seconds} -f m | grep -E "(sender|receiver)$" | sed "s/^/${label} /"`;
  const r = await runInLab({
    assets,
    insecure: !args.tls,
    kernelLink: !args['no-link'],
    devices: [`virtio-net:tap=${TAP},mac=${MAC}`],
    timeoutMs: (8 * seconds + 120) * 1000,
    command: [
      'set -e',
      `ifc=$(grep -lx ${MAC} /sys/class/net/*/address | cut -d/ -f5)`,
      `ip addr add ${GUEST}/24 dev $ifc && ip link set $ifc up`,
      'for i in $(seq 100); do [ "$(cat /sys/class/net/$ifc/carrier)" = 1 ] && break; sleep 0.1; done',
      `ping -c 3 -W 2 ${CARD} > /dev/null`,
      iperf('nic-up', CARD, ''),
      iperf('nic-down', CARD, '-R'),
      iperf('direct-up', '10.0.2.2', `-p ${DIRECT_PORT}`),
      iperf('direct-down', '10.0.2.2', `-p ${DIRECT_PORT} -R`),
    ].join('\n'),
    card: async (card: LabCard) => {
      await run(card.wrap(['ip', 'addr', 'add', `${CARD}/24`, 'dev', TAP]));
      await run(card.wrap(['ip', 'link', 'set', TAP, 'up']));
      for (const args of [
        ['-s', '-B', CARD],
        ['-s', '-B', '127.0.0.1', '-p', String(DIRECT_PORT)],
      ]) {
        const [cmd, ...rest] = card.wrap(['timeout', String(8 * seconds + 60), 'iperf3', ...args]);
        procs.push(spawn(cmd!, rest, { stdio: 'ignore' }));
      }
      return async () => {
        for (const p of procs) p.kill('SIGTERM'); // timeout(1) passes it on to iperf3
      };
    },
  });
  if (r.code !== 0) throw new Error(`bench/net: the lab run failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  const rate = (label: string) => {
    const m = new RegExp(`^${label} .* ([\\d.]+) Mbits/sec.*receiver$`, 'm').exec(r.stdout);
    if (!m) throw new Error(`bench/net: no iperf3 result for ${label}:\n${r.stdout}`);
    return Number(m[1]);
  };
  const rows = [
    ['guest → card', rate('nic-up'), rate('direct-up')],
    ['card → guest', rate('nic-down'), rate('direct-down')],
  ] as const;
  console.log(`bench/net: iperf3 TCP, ${seconds} s each, lab guest (QEMU TCG, 2 vCPUs); pcinet NIC: ${path}`);
  console.log('direction       pcinet NIC   transport path   ratio');
  for (const [what, nic, direct] of rows) {
    console.log(
      `${what.padEnd(14)}  ${nic.toFixed(1).padStart(7)} Mb/s  ${direct.toFixed(1).padStart(9)} Mb/s   ${(nic / direct).toFixed(2)}`,
    );
  }
  writeChart(args.chart, {
    title: 'iperf3 through the pcinet NIC vs the path it rides on',
    notes: [
      `lab guest: QEMU TCG, 2 vCPUs; iperf3 TCP, ${seconds} s each; ${new Date().toISOString().slice(0, 10)}`,
      `pcinet NIC: ${path}; transport path: guest → QEMU user networking → the card`,
      ...(args.log ? ['log scale'] : []),
    ],
    series: ['pcinet NIC', 'transport path'],
    groups: rows.map(([what, nic, direct]) => ({ label: what, unit: 'Mb/s', values: [nic, direct] })),
    scale: args.log ? 'log' : 'linear',
  });
  console.log(`chart: ${args.chart}`);
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
