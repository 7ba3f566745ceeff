// bench/net: iperf3 through pcinet's virtio-net NIC, side by side with iperf3 over the path the
// NIC's traffic itself travels (guest → QEMU user networking → the card's loopback), in the same
// lab run. Two NICs: one with checksum and TSO offloads (the default), one with offloads=off (every
// frame at most the MTU), and the upload once more with the guest's TSO floor raised
// (net.ipv4.tcp_min_tso_segs) and once with virtio_net's TX NAPI off (frames orphaned at transmit).
// Prints a table and the ratio; asserts nothing.
//
//   node dist/bench/net.js [--seconds 10] [--rounds 3] [--tls] [--no-link] [--chart FILE] [--log]
//
// The NIC with offloads and the transport path alternate, --rounds times each way (the lab's
// throughput drifts with what else runs on the machine: a reference measured minutes apart is not a
// reference); the table gives the median of each and the ratio of the medians, and every round's
// figures. The NIC without offloads runs once, in the first round.
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
import { type Counters, counterDelta, parseStats, statsShell } from './guest-stats.js';
import { median } from './measure.js';
import { napiTxShell } from './napi.js';

/** The NICs: TAP on the card, MAC, subnet, device options. */
const NICS = [
  { label: 'nic', tap: 'pnb0', mac: '52:54:00:be:4c:01', net: '10.77.0', spec: '' },
  { label: 'plain', tap: 'pnb1', mac: '52:54:00:be:4c:02', net: '10.78.0', spec: ',offloads=off' },
] as const;
const DIRECT_PORT = 5299;
/** An iperf3 client's bound beyond its -t: connecting, the results exchange, a slow teardown. */
const IPERF_SLACK_S = 60;
/** The guest's TCP sizes TSO segments to ~1 ms of its pacing rate (at least
 *  net.ipv4.tcp_min_tso_segs, default 2), so a slow round shrinks the next segments and every
 *  segment costs the NIC a round: the upload is also measured with the floor at a full 64 KiB
 *  segment (docs/devices.md, "Tuning"). */
const TSO_FLOOR = 44;
/** With TX NAPI (virtio_net's default) a sent frame holds its socket's send budget until the
 *  device completes it, and TCP small queues keep ~1 ms of the pacing rate (about two 64 KiB
 *  segments) waiting for that completion: the upload is also measured with it off (`ethtool -C
 *  tx-frames 0`, only while the interface is down; docs/devices.md, "Tuning"). */
const NAPI_OFF = 'nicnonapi';

/** Per frame the driver sent (up) or received (down), from the endpoint's counters. */
const PER_FRAME = [
  { counter: 'mmioWrites', label: 'MMIO writes', digits: 2 },
  { counter: 'dmaReads', label: 'DMA reads', digits: 2 },
  { counter: 'pushHits', label: 'push hits', digits: 2 },
  { counter: 'pushBytes', label: 'push bytes', digits: 0 },
  // Interrupts are decided by the host at the end of each round (VirtqDone), or sent by the
  // device without host rounds.
  { counter: 'virtqRounds', label: 'rounds', digits: 2 },
  { counter: 'interrupts', label: 'interrupts', digits: 2 },
  // Frames of the kernel link's replies: rounds that left the endpoint together share one.
  { counter: 'linkReplies', label: 'replies', digits: 2 },
  { counter: 'linkReplyUs', label: 'endpoint µs', digits: 0 },
] as const;

/** The phases of one NIC and direction: one per round it ran in. */
function phasesOf(label: string, dir: string, rounds: number): string[] {
  return Array.from({ length: rounds }, (_, k) => `${label} ${dir} r${k + 1}`);
}

/** A counter's change summed over phases; undefined when no phase has it. */
function deltaOver(stats: Map<string, Counters>, phases: string[], counter: string): number | undefined {
  let sum: number | undefined;
  for (const p of phases) {
    const d = counterDelta(stats, p, counter);
    if (d !== undefined) sum = (sum ?? 0) + d;
  }
  return sum;
}

function breakdown(stats: Map<string, Counters>, rounds: number): void {
  console.log(
    "\nper frame (the endpoint's counters around each run; up: per frame sent, down: per frame received)",
  );
  console.log(`run          frames   bytes/frame  ${PER_FRAME.map((c) => c.label.padStart(12)).join(' ')}`);
  const runs = [
    ...NICS.flatMap((n) => (['up', 'down'] as const).map((dir) => ({ label: n.label, dir }))),
    { label: 'nictso', dir: 'up' as const },
    { label: NAPI_OFF, dir: 'up' as const },
  ];
  for (const { label, dir } of runs) {
    const phase = `${label} ${dir}`;
    const phases = phasesOf(label, dir, label === 'plain' ? 1 : rounds);
    const kind = dir === 'up' ? 'tx' : 'rx';
    const frames = deltaOver(stats, phases, `virtio-net.${kind}Frames`);
    const bytes = deltaOver(stats, phases, `virtio-net.${kind}Bytes`);
    if (!frames) {
      console.log(`${phase.padEnd(11)}  no counters`);
      continue;
    }
    const per = (v: number | undefined, digits: number) =>
      v === undefined ? '?' : (v / frames).toFixed(digits);
    console.log(
      `${phase.padEnd(11)}  ${String(frames).padStart(6)}  ${per(bytes, 0).padStart(12)}  ${PER_FRAME.map((c) => per(deltaOver(stats, phases, c.counter), c.digits).padStart(12)).join(' ')}`,
    );
  }
}

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
    {
      seconds: { value: 10, range: '1..120', ok: (n) => n > 0 && n <= 120 },
      rounds: { value: 3, range: '1..9', ok: (n) => Number.isInteger(n) && n >= 1 && n <= 9 },
    },
    ['tls', 'no-link'],
  );
  const hop = args['no-link'] ? 'host-agent → session' : 'kernel link';
  const path = `virtio_net → pcinet.ko → ${hop} (${args.tls ? 'TLS' : 'TCP'}) → endpoint → TAP`;
  const { seconds, rounds } = args;
  // iperf3 runs on both sides from this machine's root (the guest sees it over 9p).
  await ensurePackages(['iperf3'], (l) => console.error(`bench/net: ${l}`));
  const assets = await prepareLab({ modules: true });
  const procs: ChildProcess[] = [];
  // Each client bounded (a control connection that stalls would hold the run until the lab's
  // deadline and show nothing): one that fails or overruns says so, and the report names it.
  const iperf = (label: string, target: string, extra: string) =>
    `{ timeout -s INT ${seconds + IPERF_SLACK_S} iperf3 -c ${target} ${extra} -t ${seconds} -f m || echo "${label} FAILED $?"; } 2>&1 | grep -E "(sender|receiver|FAILED [0-9]+)$|^iperf3: " | sed "s/^/${label} /"`;
  const napiTx = (frames: 0 | 1) => napiTxShell('$nicifc', `${NICS[0].net}.1`, frames);
  const r = await runInLab({
    assets,
    insecure: !args.tls,
    kernelLink: !args['no-link'],
    devices: NICS.map((n) => `virtio-net:tap=${n.tap},mac=${n.mac}${n.spec}`),
    timeoutMs: ((6 * rounds + 2) * 3 * seconds + 150) * 1000,
    command: [
      statsShell,
      // The lab's host-agent (its log is its standard output) answers SIGUSR1 with the endpoint's
      // counters.
      `ha=$(pid_of " host --connect ") && halog=$(readlink /proc/$ha/fd/1)`,
      'set -e',
      'tso0=$(sysctl -n net.ipv4.tcp_min_tso_segs)',
      ...NICS.flatMap((n) => [
        `ifc=$(grep -lx ${n.mac} /sys/class/net/*/address | cut -d/ -f5)`,
        `ip addr add ${n.net}.2/24 dev $ifc && ip link set $ifc up`,
        ...(n.label === 'nic' ? ['nicifc=$ifc'] : []),
        'for i in $(seq 100); do [ "$(cat /sys/class/net/$ifc/carrier)" = 1 ] && break; sleep 0.1; done',
        `ping -c 3 -W 2 ${n.net}.1 > /dev/null`,
        `ethtool -k $ifc 2>/dev/null | grep -E "^(tx-checksumming|tcp-segmentation-offload|rx-checksumming):" | sed "s/^/${n.label}-offload /" || true`,
      ]),
      ...Array.from({ length: rounds }, (_, k) => k + 1).flatMap((round) =>
        (['up', 'down'] as const).flatMap((dir) => [
          ...NICS.filter((n) => n.label === 'nic' || round === 1).flatMap((n) => [
            `stats $ha $halog ${n.label} ${dir} r${round} before`,
            iperf(`${n.label}-${dir}-r${round}`, `${n.net}.1`, dir === 'down' ? '-R' : ''),
            `stats $ha $halog ${n.label} ${dir} r${round} after`,
          ]),
          ...(dir === 'up'
            ? [
                `sysctl -q -w net.ipv4.tcp_min_tso_segs=${TSO_FLOOR}`,
                `stats $ha $halog nictso up r${round} before`,
                iperf(`nictso-up-r${round}`, `${NICS[0].net}.1`, ''),
                `stats $ha $halog nictso up r${round} after`,
                'sysctl -q -w net.ipv4.tcp_min_tso_segs=$tso0',
                ...napiTx(0),
                `stats $ha $halog ${NAPI_OFF} up r${round} before`,
                iperf(`${NAPI_OFF}-up-r${round}`, `${NICS[0].net}.1`, ''),
                `stats $ha $halog ${NAPI_OFF} up r${round} after`,
                ...napiTx(1),
              ]
            : []),
          iperf(`direct-${dir}-r${round}`, '10.0.2.2', `-p ${DIRECT_PORT}${dir === 'down' ? ' -R' : ''}`),
        ]),
      ),
    ].join('\n'),
    card: async (card: LabCard) => {
      for (const n of NICS) {
        await run(card.wrap(['ip', 'addr', 'add', `${n.net}.1/24`, 'dev', n.tap]));
        await run(card.wrap(['ip', 'link', 'set', n.tap, 'up']));
      }
      for (const args of [
        ...NICS.map((n) => ['-s', '-B', `${n.net}.1`]),
        ['-s', '-B', '127.0.0.1', '-p', String(DIRECT_PORT)],
      ]) {
        const [cmd, ...rest] = card.wrap([
          'timeout',
          String((6 * rounds + 2) * 3 * seconds + 60),
          'iperf3',
          ...args,
        ]);
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
    if (!m)
      throw new Error(
        `bench/net: no iperf3 result for ${label} (its lines: ${
          r.stdout
            .split('\n')
            .filter((l) => l.startsWith(`${label} `))
            .join(' | ') || 'none'
        }):\n${r.stdout}`,
      );
    return Number(m[1]);
  };
  const rates = (label: string, dir: string, n: number) =>
    Array.from({ length: n }, (_, k) => rate(`${label}-${dir}-r${k + 1}`));
  const rows = (['up', 'down'] as const).map((dir) => {
    const nic = rates('nic', dir, rounds);
    const direct = rates('direct', dir, rounds);
    return {
      what: dir === 'up' ? 'guest → card' : 'card → guest',
      nic,
      tso: dir === 'up' ? rates('nictso', dir, rounds) : undefined,
      nonapi: dir === 'up' ? rates(NAPI_OFF, dir, rounds) : undefined,
      direct,
      plain: rate(`plain-${dir}-r1`),
    };
  });
  for (const l of r.stdout.split('\n').filter((l) => / *-offload /.test(l))) console.log(l);
  console.log(
    `bench/net: iperf3 TCP, ${seconds} s each, ${rounds} alternating round(s), lab guest (QEMU TCG, 2 vCPUs); pcinet NIC: ${path}`,
  );
  console.log(
    `direction       pcinet NIC   no offloads   min TSO ${TSO_FLOOR}   TX NAPI off   transport path   ratio   ratio, min TSO   ratio, NAPI off   (medians)`,
  );
  const mb = (v: number, w: number) => `${v.toFixed(1).padStart(w)} Mb/s`;
  const ratio = (a: number | undefined, b: number) => (a === undefined ? '   —' : (a / b).toFixed(2));
  const med = (v: number[] | undefined) => (v ? median(v) : undefined);
  const orDash = (v: number | undefined, w: number) => (v === undefined ? '—'.padStart(w + 5) : mb(v, w));
  for (const { what, nic, tso, nonapi, plain, direct } of rows) {
    console.log(
      `${what.padEnd(14)}  ${mb(median(nic), 7)}  ${mb(plain, 7)}  ${orDash(med(tso), 7)}  ${orDash(med(nonapi), 7)}  ${mb(median(direct), 9)}   ${ratio(median(nic), median(direct))}   ${ratio(med(tso), median(direct)).padStart(14)}   ${ratio(med(nonapi), median(direct)).padStart(15)}`,
    );
  }
  console.log(
    `\nround  direction      pcinet NIC   min TSO ${TSO_FLOOR}   TX NAPI off   transport path   ratio`,
  );
  for (let k = 0; k < rounds; k++) {
    for (const { what, nic, tso, nonapi, direct } of rows) {
      console.log(
        `${String(k + 1).padStart(5)}  ${what.padEnd(13)}  ${mb(nic[k]!, 7)}  ${orDash(tso?.[k], 7)}  ${orDash(nonapi?.[k], 7)}  ${mb(direct[k]!, 9)}   ${ratio(nic[k], direct[k]!)}`,
      );
    }
  }
  breakdown(parseStats(r.stdout), rounds);
  writeChart(args.chart, {
    title: 'iperf3 through the pcinet NIC vs the path it rides on',
    notes: [
      `lab guest: QEMU TCG, 2 vCPUs; iperf3 TCP, ${seconds} s each, medians of ${rounds} alternating rounds; ${new Date().toISOString().slice(0, 10)}`,
      `pcinet NIC: ${path}; transport path: guest → QEMU user networking → the card`,
      ...(args.log ? ['log scale'] : []),
    ],
    series: [
      'pcinet NIC',
      'pcinet NIC, offloads=off',
      `pcinet NIC, tcp_min_tso_segs=${TSO_FLOOR}`,
      'pcinet NIC, TX NAPI off',
      'transport path',
    ],
    groups: rows.map(({ what, nic, tso, nonapi, plain, direct }) => ({
      label: what,
      unit: 'Mb/s',
      values: [median(nic), plain, med(tso), med(nonapi), median(direct)],
    })),
    scale: args.log ? 'log' : 'linear',
  });
  console.log(`chart: ${args.chart}`);
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
