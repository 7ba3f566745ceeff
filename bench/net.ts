// bench/net: iperf3 through pcinet's virtio-net NIC, side by side with iperf3 over the path the
// NIC's traffic itself travels (guest → QEMU user networking → the card's loopback), in the same
// lab run. Prints a table and the ratio; asserts nothing.
//
//   node dist/bench/net.js [--seconds 10]
//
// Needs root (the lab). The NIC's frames go guest → virtio_net → pcinet.ko → host-agent → TCP/TLS
// → endpoint → TAP on the card; the reference runs the same iperf3 over guest → slirp → card
// directly, which is the transport pcinet rides on.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { prepareLab } from '../lab/prepare.js';
import { type LabCard, runInLab } from '../lab/run.js';

const TAP = 'pnb0';
const MAC = '52:54:00:be:4c:01';
const CARD = '10.77.0.1';
const GUEST = '10.77.0.2';
const DIRECT_PORT = 5299;

function parseArgs(argv: string[]): { seconds: number } {
  const o = { seconds: 10 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = Number(argv[i + 1]);
    if (argv[i] === '--seconds' && v > 0 && v <= 120) o.seconds = v;
    else throw new Error(`bench/net: bad argument ${argv[i]} (use --seconds 1..120)`);
  }
  return o;
}

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(argv[0]!, argv.slice(1), { timeout: 10_000 }, (e, _o, err) =>
      e ? reject(new Error(err || e.message)) : resolve(),
    ),
  );
}

async function main(): Promise<void> {
  const { seconds } = parseArgs(process.argv.slice(2));
  const assets = await prepareLab({ modules: true });
  const procs: ChildProcess[] = [];
  const iperf = (label: string, target: string, extra: string) =>
    `iperf3 -c ${target} ${extra} -t ${seconds} -f m | grep -E "(sender|receiver)$" | sed "s/^/${label} /"`;
  const r = await runInLab({
    assets,
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
  console.log(`bench/net: iperf3 TCP, ${seconds} s each, lab guest (QEMU TCG, 2 vCPUs)`);
  console.log('direction       pcinet NIC   transport path   ratio');
  for (const [what, nic, direct] of rows) {
    console.log(
      `${what.padEnd(14)}  ${nic.toFixed(1).padStart(7)} Mb/s  ${direct.toFixed(1).padStart(9)} Mb/s   ${(nic / direct).toFixed(2)}`,
    );
  }
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
