// bench/param-ab: one of pcinet.ko's module parameters judged against its other values in one lab
// boot. Between rounds the guest writes each value in turn (the order alternating from round to
// round) and runs bench/nvme's rows on a pcinet NVMe disk (or, with --nic, iperf3 through a
// pcinet NIC); the table gives each test's median per value with its spread, and pcinet.ko's own clock
// per I/O. One boot, so the values share the guest, the endpoint and the machine's load: the way
// a change to the data path behind a parameter is judged beside its reference. Asserts nothing,
// except that the disk gives back what was written: every round reads an 8 MiB random pattern
// back and compares its MD5 (a wrong value read is a bug, whatever the speed).
//
//   npm run build && sudo node dist/bench/param-ab.js --param NAME --values A,B [--rounds 4]
//        [--nic] [--sealed] [--seconds 4] [--rows KEY,…] [--timing NAME,…]
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensurePackages, prepareLab } from '../lab/prepare.js';
import { type LabCard, runInLab } from '../lab/run.js';
import { formatValue } from './chart.js';
import { measured, median, parseTiming, perEvent, roundOrder, table } from './measure.js';
import { napiTxShell } from './napi.js';
import { command, phaseBoundS, tests } from './nvme-guest.js';

/** A row of the table: the shell command a round runs (its output is what `figure` reads). */
interface Row {
  key: string;
  label: string;
  unit: string;
  sh: string;
  figure: (lines: readonly string[]) => number | undefined;
}

/** The disk: 64 MiB; bench/nvme's rows at MIB (their I/O stays below it), the pattern from
 *  PATTERN_AT MiB. */
const MIB = 16;
const PATTERN_AT = 32;

/** bench/nvme's rows, each bounded as bench/nvme bounds it. */
function nvmeRows(seconds: number): Row[] {
  return tests(MIB).map((t) => ({
    key: t.key,
    label: t.label,
    unit: t.unit,
    sh: `timeout -s INT ${phaseBoundS(t, seconds)} ${command(t, '"$disk"', MIB, seconds)} 2>&1`,
    figure: (lines) => measured(t, lines)?.value,
  }));
}

const NIC = { tap: 'pab0', mac: '52:54:00:be:4c:0a', net: '10.79.0' } as const;

/** virtio_net's TX NAPI switched and checked (bench/napi.ts), as one shell condition. */
const napiTx = (frames: 0 | 1) => napiTxShell('$ifc', `${NIC.net}.1`, frames).join(' && ');

function nicRows(seconds: number): Row[] {
  return (['down', 'up', 'up-nonapi'] as const).map((dir) => ({
    key: dir,
    label:
      dir === 'down'
        ? 'iperf3 card → guest'
        : dir === 'up'
          ? 'iperf3 guest → card'
          : 'iperf3 guest → card, TX NAPI off',
    unit: 'Mb/s',
    sh:
      dir === 'up-nonapi'
        ? `{ ${napiTx(0)} && iperf3 -c ${NIC.net}.1 -t ${seconds} -f m 2>&1 | grep receiver; ${napiTx(1)}; }`
        : `iperf3 -c ${NIC.net}.1 ${dir === 'down' ? '-R ' : ''}-t ${seconds} -f m 2>&1 | grep receiver`,
    figure: (lines) => {
      for (const l of lines) {
        const m = /([\d.]+) Mbits\/sec.*receiver/.exec(l);
        if (m) return Number(m[1]);
      }
      return undefined;
    },
  }));
}

/** pcinet.ko's timing lines shown per event unless --timing names others (docs/KERNEL.md "Timing"). */
const TIMING = ['rtt', 'reply', 'apply', 'irq'];

/** The guest's script: marks each test's output with `@ ROUND VALUE KEY` and `TIMING…` lines. */
function guestScript(
  param: string,
  values: readonly string[],
  rounds: number,
  rows: readonly Row[],
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
      `dd if=/tmp/pattern of=$disk bs=1M seek=${PATTERN_AT} oflag=direct 2> /dev/null`,
      // Warm: the endpoint's JIT and caches, as bench/nvme does.
      'dd if=$disk of=/dev/null bs=4k count=500 iflag=direct 2> /dev/null',
      'dd if=$disk of=/dev/null bs=128k count=50 iflag=direct 2> /dev/null',
    );
  }
  lines.push('set +e');
  for (let r = 0; r < rounds; r++) {
    for (const v of roundOrder(values, r)) {
      lines.push(`echo ${v} > $p || { echo "cannot set ${param}=${v}"; exit 3; }`);
      for (const t of rows) {
        lines.push(
          `echo "TIMING ${r} ${v} ${t.key} before $(${timing})"`,
          `${t.sh} | sed "s|^|@ ${r} ${v} ${t.key} |"`,
          `echo "TIMING ${r} ${v} ${t.key} after $(${timing})"`,
        );
      }
      if (!nic) {
        lines.push(
          `dd if=$disk of=/tmp/back bs=1M skip=${PATTERN_AT} count=8 iflag=direct 2> /dev/null`,
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
  const usage =
    'use --param NAME --values A,B[,…] [--rounds 1..9] [--seconds 1..30] [--nic] [--sealed] [--rows KEY,…] [--timing NAME,…]';
  const { values: o } = parseArgs({
    options: {
      param: { type: 'string' },
      values: { type: 'string' },
      rounds: { type: 'string', default: '4' },
      seconds: { type: 'string', default: '4' },
      nic: { type: 'boolean', default: false },
      sealed: { type: 'boolean', default: false },
      rows: { type: 'string' },
      timing: { type: 'string', default: TIMING.join(',') },
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
  const all = o.nic ? nicRows(seconds) : nvmeRows(seconds);
  const keys = o.rows?.split(',') ?? all.map((t) => t.key);
  const unknown = keys.filter((k) => !all.some((t) => t.key === k));
  if (unknown.length || keys.length === 0)
    throw new Error(`bench/param-ab: --rows takes ${all.map((t) => t.key).join(', ')} (${usage})`);
  const rows = all.filter((t) => keys.includes(t.key));
  const timingNames = o.timing!.split(',');
  if (timingNames.some((n) => !/^[a-z]+$/.test(n)))
    throw new Error(`bench/param-ab: --timing takes names of pcinet_timing's lines (${usage})`);
  await ensurePackages(o.nic ? ['iperf3'] : ['fio'], (l) => console.error(`bench/param-ab: ${l}`));
  const assets = await prepareLab({ modules: true });
  const dir = mkdtempSync('/dev/shm/pcinet-param-ab-');
  // A round: the dd rows take ~1–5 s each under TCG, the fio and iperf3 rows `seconds`.
  const roundS = rows.length * (seconds + 20);
  try {
    const r = await runInLab({
      assets,
      insecure: !o.sealed,
      devices: o.nic
        ? [`virtio-net:tap=${NIC.tap},mac=${NIC.mac}`]
        : [`nvme:file=${join(dir, 'disk.img')},size=64M`],
      timeoutMs: (rounds * values.length * roundS + 180) * 1000,
      command: guestScript(param, values, rounds, rows, o.nic),
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
    report(r.stdout, param, values, rounds, rows, timingNames, !o.nic);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function report(
  stdout: string,
  param: string,
  values: readonly string[],
  rounds: number,
  rows: readonly Row[],
  timingNames: readonly string[],
  checked: boolean,
) {
  const out = stdout.split('\n');
  const bad = out.filter((l) => l.startsWith('MD5 ')).filter((l) => l.split(' ')[3] !== l.split(' ')[4]);
  /** f's figure in every round that has one. */
  const overRounds = (f: (r: number) => number | undefined) => {
    const xs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const x = f(r);
      if (x !== undefined) xs.push(x);
    }
    return xs;
  };
  const cell = (xs: number[]) =>
    xs.length === 0
      ? '?'
      : `${formatValue(median(xs))} [${formatValue(Math.min(...xs))}–${formatValue(Math.max(...xs))}]`;
  const figures: string[][] = [['test', 'unit', ...values.map((v) => `${param}=${v}`)]];
  const clock: string[][] = [['test', 'per I/O (µs)', ...values.map((v) => `${param}=${v}`)]];
  for (const t of rows) {
    const lines = (r: number, v: string) =>
      out.filter((l) => l.startsWith(`@ ${r} ${v} ${t.key} `)).map((l) => l.split(' ').slice(4).join(' '));
    figures.push([t.label, t.unit, ...values.map((v) => cell(overRounds((r) => t.figure(lines(r, v)))))]);
    const timing = (r: number, v: string, when: string) =>
      parseTiming(
        (out.find((l) => l.startsWith(`TIMING ${r} ${v} ${t.key} ${when} `)) ?? '')
          .split(' ')
          .slice(5)
          .join(' ')
          .replaceAll(';', '\n'),
      );
    for (const name of timingNames) {
      const us = values.map((v) =>
        overRounds((r) => perEvent(timing(r, v, 'before'), timing(r, v, 'after'), name)),
      );
      if (us.some((xs) => xs.length > 0)) clock.push([t.label, name, ...us.map(cell)]);
    }
  }
  console.log(
    `\n${param}: ${values.join(' / ')}, ${rounds} rounds in one boot (medians [min–max] of the rounds)\n`,
  );
  console.log(table(figures, 2));
  console.log(
    `\npcinet.ko's clock (docs/KERNEL.md "Timing"), per event of each line, medians of the rounds\n`,
  );
  console.log(table(clock, 2));
  if (!checked) return;
  console.log(
    `\ndata read back each round: ${bad.length === 0 ? 'the written MD5 every time' : 'DIFFERENT'}`,
  );
  if (bad.length)
    throw new Error(`bench/param-ab: the disk gave back other data than written:\n${bad.join('\n')}`);
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
