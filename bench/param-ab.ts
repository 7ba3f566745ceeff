// bench/param-ab: one of pcinet.ko's module parameters judged against its other values in one lab
// boot. Between rounds the guest writes each value in turn (the order alternating from round to
// round) and runs the same tests on a pcinet NVMe disk (or, with --nic, iperf3 through a pcinet
// NIC); the table gives each test's median per value with its spread, and pcinet.ko's own clock
// per I/O. One boot, so the values share the guest, the endpoint and the machine's load: the way
// a change to the data path behind a parameter is judged beside its reference. Asserts nothing,
// except that the disk gives back what was written: every round reads an 8 MiB random pattern
// back and compares its MD5 (a wrong value read is a bug, whatever the speed).
//
//   npm run build && sudo node dist/bench/param-ab.js --param NAME --values A,B [--rounds 4]
//        [--nic] [--sealed] [--seconds 4]
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensurePackages, prepareLab } from '../lab/prepare.js';
import { type LabCard, runInLab } from '../lab/run.js';
import { formatValue } from './chart.js';
import { measured, median, parseTiming, perEvent, roundOrder, table } from './measure.js';

/** A test of one round: its shell command (prints one line the figure is read from). */
interface AbTest {
  key: string;
  label: string;
  unit: 'MB/s' | 'IOPS' | 'Mb/s';
  tool: 'dd' | 'fio' | 'iperf3';
  rw: 'read' | 'write' | 'randread';
  bs: number;
  sh: (seconds: number) => string;
}

const fio = (rw: string, bs: string, qd: number, offset: string, seconds: number) =>
  `fio --name=ab --filename=$disk --rw=${rw} --bs=${bs} --direct=1 --ioengine=libaio --iodepth=${qd} ` +
  `--offset=${offset} --size=16M --runtime=${seconds} --time_based --output-format=terse --terse-version=3`;

/** The disk's layout: the pattern at 0 (8 MiB), writes from 16 MiB on, the disk 64 MiB. */
export const NVME_TESTS: readonly AbTest[] = [
  {
    key: 'r4',
    label: 'dd 4K read, QD1',
    unit: 'MB/s',
    tool: 'dd',
    rw: 'read',
    bs: 4096,
    sh: () => 'dd if=$disk of=/dev/null bs=4k count=1000 iflag=direct 2>&1',
  },
  {
    key: 'w4',
    label: 'dd 4K write, QD1',
    unit: 'MB/s',
    tool: 'dd',
    rw: 'write',
    bs: 4096,
    sh: () => 'dd if=/dev/zero of=$disk bs=4k count=1000 seek=4096 oflag=direct 2>&1',
  },
  {
    key: 'r128',
    label: 'dd 128K read, QD1',
    unit: 'MB/s',
    tool: 'dd',
    rw: 'read',
    bs: 131072,
    sh: () => 'dd if=$disk of=/dev/null bs=128k count=200 iflag=direct 2>&1',
  },
  {
    key: 'q32',
    label: 'fio 4K randread, QD32',
    unit: 'IOPS',
    tool: 'fio',
    rw: 'randread',
    bs: 4096,
    sh: (s) => fio('randread', '4k', 32, '0', s),
  },
  {
    key: 's8r',
    label: 'fio 128K seq read, QD8',
    unit: 'MB/s',
    tool: 'fio',
    rw: 'read',
    bs: 131072,
    sh: (s) => fio('read', '128k', 8, '0', s),
  },
  {
    key: 's8w',
    label: 'fio 128K seq write, QD8',
    unit: 'MB/s',
    tool: 'fio',
    rw: 'write',
    bs: 131072,
    sh: (s) => fio('write', '128k', 8, '32M', s),
  },
];

const NIC = { tap: 'pab0', mac: '52:54:00:be:4c:0a', net: '10.79.0' } as const;

export const NIC_TESTS: readonly AbTest[] = (['down', 'up'] as const).map((dir) => ({
  key: dir,
  label: dir === 'up' ? 'iperf3 guest → card' : 'iperf3 card → guest',
  unit: 'Mb/s' as const,
  tool: 'iperf3' as const,
  rw: dir === 'up' ? ('write' as const) : ('read' as const),
  bs: 1,
  sh: (s: number) => `iperf3 -c ${NIC.net}.1 ${dir === 'down' ? '-R ' : ''}-t ${s} -f m 2>&1 | grep receiver`,
}));

/** pcinet.ko's timing lines shown per I/O (docs/KERNEL.md "Timing"). */
const TIMING = ['rtt', 'reply', 'apply', 'irq'] as const;

/** A figure from a test's output lines: dd/fio as bench/nvme reads them, iperf3's receiver rate. */
export function figure(t: AbTest, lines: readonly string[]): number | undefined {
  if (t.tool === 'iperf3') {
    for (const l of lines) {
      const m = /([\d.]+) Mbits\/sec.*receiver/.exec(l);
      if (m) return Number(m[1]);
    }
    return undefined;
  }
  return measured({ ...t, tool: t.tool, unit: t.unit === 'IOPS' ? 'IOPS' : 'MB/s' }, lines)?.value;
}

/** The guest's script: marks each test's output with `@ ROUND VALUE KEY` and `TIMING…` lines. */
function guestScript(
  param: string,
  values: readonly string[],
  rounds: number,
  tests: readonly AbTest[],
  seconds: number,
  nic: boolean,
): string {
  const timing = 'cat /sys/bus/pci/devices/$dev/pcinet_timing | tr "\\n" ";"';
  const lines = [
    'set -e',
    'dev=$PCINET_LAB_DEVICES',
    `p=/sys/module/pcinet/parameters/${param}`,
    `[ -w "$p" ] || { echo "pcinet.ko has no parameter ${param}"; exit 3; }`,
  ];
  if (nic) {
    lines.push(
      `ifc=$(grep -lx ${NIC.mac} /sys/class/net/*/address | cut -d/ -f5)`,
      `ip addr add ${NIC.net}.2/24 dev $ifc && ip link set $ifc up`,
      'for i in $(seq 100); do [ "$(cat /sys/class/net/$ifc/carrier)" = 1 ] && break; sleep 0.1; done',
      `ping -c 3 -W 2 ${NIC.net}.1 > /dev/null`,
      `iperf3 -c ${NIC.net}.1 -R -t 2 > /dev/null`,
    );
  } else {
    lines.push(
      'ctrl=$(ls /sys/bus/pci/devices/$dev/nvme/)',
      'for i in $(seq 100); do [ -e "/dev/$ctrl"n1 ] && break; sleep 0.1; done',
      'disk=/dev/"$ctrl"n1',
      'head -c 8388608 /dev/urandom > /tmp/pattern',
      'want=$(md5sum < /tmp/pattern | cut -c1-32)',
      'dd if=/tmp/pattern of=$disk bs=1M oflag=direct 2> /dev/null',
      // Warm: the endpoint's JIT and caches, as bench/nvme does.
      'dd if=$disk of=/dev/null bs=4k count=500 iflag=direct 2> /dev/null',
      'dd if=$disk of=/dev/null bs=128k count=50 iflag=direct 2> /dev/null',
    );
  }
  lines.push('set +e');
  for (let r = 0; r < rounds; r++) {
    for (const v of roundOrder(values, r)) {
      lines.push(`echo ${v} > $p || { echo "cannot set ${param}=${v}"; exit 3; }`);
      for (const t of tests) {
        lines.push(
          `echo "TIMING ${r} ${v} ${t.key} before $(${timing})"`,
          `${t.sh(seconds)} | sed "s|^|@ ${r} ${v} ${t.key} |"`,
          `echo "TIMING ${r} ${v} ${t.key} after $(${timing})"`,
        );
      }
      if (!nic) {
        lines.push(
          'dd if=$disk of=/tmp/back bs=128k count=64 iflag=direct 2> /dev/null',
          `echo "MD5 ${r} ${v} $(md5sum < /tmp/back | cut -c1-32) $want"`,
        );
      }
    }
  }
  return lines.join('\n');
}

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(argv[0]!, argv.slice(1), { timeout: 10_000 }, (e, _o, err) =>
      e ? reject(new Error(err || e.message)) : resolve(),
    ),
  );
}

async function main(): Promise<void> {
  const usage = 'use --param NAME --values A,B[,…] [--rounds 1..9] [--seconds 1..30] [--nic] [--sealed]';
  const { values: o } = parseArgs({
    options: {
      param: { type: 'string' },
      values: { type: 'string' },
      rounds: { type: 'string', default: '4' },
      seconds: { type: 'string', default: '4' },
      nic: { type: 'boolean', default: false },
      sealed: { type: 'boolean', default: false },
    },
  });
  const param = o.param ?? '';
  const values = (o.values ?? '').split(',').filter((v) => v !== '');
  const rounds = Number(o.rounds);
  const seconds = Number(o.seconds);
  if (!/^[a-z_][a-z0-9_]*$/.test(param))
    throw new Error(`bench/param-ab: --param is a pcinet.ko parameter (${usage})`);
  if (values.length < 2 || values.some((v) => !/^[\w.-]+$/.test(v)))
    throw new Error(`bench/param-ab: --values needs two or more plain values (${usage})`);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 9)
    throw new Error(`bench/param-ab: --rounds (${usage})`);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 30)
    throw new Error(`bench/param-ab: --seconds (${usage})`);
  const tests = o.nic ? NIC_TESTS : NVME_TESTS;
  await ensurePackages(o.nic ? ['iperf3'] : ['fio'], (l) => console.error(`bench/param-ab: ${l}`));
  const assets = await prepareLab({ modules: true });
  const dir = mkdtempSync('/dev/shm/pcinet-param-ab-');
  // A round: the dd rows take ~1–5 s each under TCG, the fio and iperf3 rows `seconds`.
  const roundS = tests.length * (seconds + 20);
  try {
    const r = await runInLab({
      assets,
      insecure: !o.sealed,
      devices: o.nic
        ? [`virtio-net:tap=${NIC.tap},mac=${NIC.mac}`]
        : [`nvme:file=${join(dir, 'disk.img')},size=64M`],
      timeoutMs: (rounds * values.length * roundS + 180) * 1000,
      command: guestScript(param, values, rounds, tests, seconds, o.nic),
      card: o.nic
        ? async (card: LabCard) => {
            await run(card.wrap(['ip', 'addr', 'add', `${NIC.net}.1/24`, 'dev', NIC.tap]));
            await run(card.wrap(['ip', 'link', 'set', NIC.tap, 'up']));
            const bound = String(rounds * values.length * roundS + 120);
            const [cmd, ...rest] = card.wrap(['timeout', bound, 'iperf3', '-s', '-B', `${NIC.net}.1`]);
            const server = spawn(cmd!, rest, { stdio: 'ignore' });
            return async () => {
              server.kill('SIGTERM');
            };
          }
        : undefined,
    });
    if (r.code !== 0)
      throw new Error(`bench/param-ab: the lab run failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
    report(r.stdout, param, values, rounds, tests);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(
  stdout: string,
  param: string,
  values: readonly string[],
  rounds: number,
  tests: readonly AbTest[],
) {
  const out = stdout.split('\n');
  const bad = out
    .filter((l) => l.startsWith('MD5 '))
    .filter((l) => {
      const f = l.split(' ');
      return f[3] !== f[4];
    });
  const cell = (xs: number[]) =>
    xs.length === 0
      ? '?'
      : `${formatValue(median(xs))} [${formatValue(Math.min(...xs))}–${formatValue(Math.max(...xs))}]`;
  const rows: string[][] = [['test', 'unit', ...values.map((v) => `${param}=${v}`)]];
  const clock: string[][] = [['test', 'per I/O (µs)', ...values.map((v) => `${param}=${v}`)]];
  for (const t of tests) {
    const per = values.map((v) => {
      const xs: number[] = [];
      for (let r = 0; r < rounds; r++) {
        const lines = out
          .filter((l) => l.startsWith(`@ ${r} ${v} ${t.key} `))
          .map((l) => l.split(' ').slice(4).join(' '));
        const x = figure(t, lines);
        if (x !== undefined) xs.push(x);
      }
      return xs;
    });
    rows.push([t.label, t.unit, ...per.map(cell)]);
    for (const name of TIMING) {
      const us = values.map((v) => {
        const xs: number[] = [];
        for (let r = 0; r < rounds; r++) {
          const at = (when: string) =>
            parseTiming(
              (out.find((l) => l.startsWith(`TIMING ${r} ${v} ${t.key} ${when} `)) ?? '')
                .split(' ')
                .slice(5)
                .join(' ')
                .replaceAll(';', '\n'),
            );
          const x = perEvent(at('before'), at('after'), name);
          if (x !== undefined) xs.push(x);
        }
        return xs;
      });
      if (us.some((xs) => xs.length > 0)) clock.push([t.label, name, ...us.map(cell)]);
    }
  }
  console.log(
    `\n${param}: ${values.join(' / ')}, ${rounds} rounds in one boot (medians [min–max] of the rounds)\n`,
  );
  console.log(table(rows, 2));
  console.log(
    `\npcinet.ko's clock (docs/KERNEL.md "Timing"), per event of each line, medians of the rounds\n`,
  );
  console.log(table(clock, 2));
  if (!tests.some((t) => t.tool === 'iperf3')) {
    console.log(
      `\ndata read back each round: ${bad.length === 0 ? 'the written MD5 every time' : 'DIFFERENT'}`,
    );
    if (bad.length)
      throw new Error(`bench/param-ab: the disk gave back other data than written:\n${bad.join('\n')}`);
  }
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
