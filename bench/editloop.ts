// bench/editloop: the driver developer's edit loop, in the lab (issue 16 item 7). The lab's
// endpoint runs with `--watch DIR`; in each round the guest asks "the card" (lab/card-control.ts)
// to save a model file there, as `tsc --watch` would, and times from the save to the device being
// back with its driver bound and answering (the host-agent's ready file rewritten, the PCI driver
// and, on a virtio device, the virtio driver bound, and a read through the driver served). Reference in the same run, alternating with it: the
// endpoint killed (SIGKILL) and started again by the lab, the path without --watch. The target is
// 2 s. Times are the guest's clock from the moment the card's answer arrives (the save is a few
// milliseconds earlier: the answer's trip is not counted); the endpoint's own restart (model
// changed -> listening) comes from its log, on this machine's clock. Prints a table and writes an
// SVG chart; asserts nothing.
//
//   node dist/bench/editloop.js [--rounds 5] [--nvme] [--chart FILE]
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { askCard, startCardControl } from '../lab/card-control.js';
import { READY_FILE } from '../lab/guest-script.js';
import { prepareLab } from '../lab/prepare.js';
import { runInLab } from '../lab/run.js';
import { parseBenchArgs } from './args.js';
import { writeChart } from './chart.js';

const TARGET_MS = 2000;
/** A round whose device is not back within this failed (the guest says so and goes on). */
const BACK_TIMEOUT_S = 60;
const KINDS = ['edit', 'restart'] as const;
const LABEL = { edit: 'model saved (--watch)', restart: 'endpoint killed and started again' };

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The guest's rounds: one line `round KIND MS` (or `round KIND timeout`) each. */
/** A read through the driver that only a working device answers: an NVMe disk's first block, or
 *  bytes from the virtio-rng (the hwrng core's current device). A driver stays bound through a
 *  restarted endpoint (link down, then up and reset), so being bound says nothing. */
const ANSWERS = {
  nvme: 'c=$(ls /sys/bus/pci/devices/$a/nvme/ 2> /dev/null | head -n 1); [ -n "$c" ] && timeout 1 dd if=/dev/"$c"n1 of=/dev/null bs=4096 count=1 iflag=direct 2> /dev/null',
  rng: 'timeout 1 dd if=/dev/hwrng of=/dev/null bs=16 count=1 2> /dev/null',
} as const;

function guestScript(rounds: number, answers: string): string {
  return `
# Every device in the ready file has its driver, a virtio device its virtio driver, and the device
# answers a read through them.
answers() { ${answers}; }
back() {
  [ -s ${READY_FILE} ] || return 1
  for a in $(sed -n 's/.*"address":"\\([^"]*\\)".*/\\1/p' ${READY_FILE}); do
    d=/sys/bus/pci/devices/$a
    [ -e $d/driver ] || return 1
    for v in $d/virtio*; do [ ! -e "$v" ] || [ -e "$v/driver" ] || return 1; done
    answers || return 1
  done
}
for i in $(seq ${rounds}); do
  for kind in ${KINDS.join(' ')}; do
    rm -f ${READY_FILE}
    ${askCard('$kind')} > /dev/null || { echo "round $kind card"; continue; }
    t0=$(date +%s%N)
    n=0
    until back; do
      n=$((n + 1)); [ $n -le $((${BACK_TIMEOUT_S} * 100)) ] || break
      sleep 0.01
    done
    t1=$(date +%s%N)
    if back; then echo "round $kind $(( (t1 - t0) / 1000000 ))"; else echo "round $kind timeout"; fi
  done
done
`;
}

async function main(): Promise<void> {
  const args = parseBenchArgs(
    'editloop',
    process.argv.slice(2),
    { rounds: { value: 5, range: '1..50', ok: (n) => Number.isInteger(n) && n >= 1 && n <= 50 } },
    ['nvme'],
  );
  const assets = await prepareLab({ modules: true });
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-bench-editloop-'));
  const models = join(dir, 'models');
  const disk = join(dir, 'disk.img');
  const device = args.nvme ? `nvme:file=${disk},size=64M` : 'virtio-rng';
  let saves = 0;
  try {
    if (args.nvme) {
      writeFileSync(disk, '');
      truncateSync(disk, 64 << 20);
    }
    mkdirSync(models); // it must exist before the endpoint watches it
    const r = await runInLab({
      assets,
      devices: [device],
      watch: models,
      command: guestScript(args.rounds, args.nvme ? ANSWERS.nvme : ANSWERS.rng),
      timeoutMs: args.rounds * KINDS.length * (BACK_TIMEOUT_S + 30) * 1000,
      card: async (card) => {
        const port = startCardControl(card, async (word) => {
          if (word === 'edit') writeFileSync(join(models, 'device.js'), `// saved ${++saves}\n`);
          // Killed, and started again without waiting for it: the guest's clock runs from the kill,
          // as from the save, so both include the new endpoint's start.
          else if (word === 'restart') {
            await card.stopEndpoint();
            void card.startEndpoint();
          } else throw new Error(`unknown command ${word}`);
        });
        return async () => {
          port.stdin!.end();
          port.kill();
        };
      },
    });
    if (args.log)
      console.log(`--- the endpoint's log ---\n${r.endpointLog}\n--- the guest's output ---\n${r.stdout}`);
    if (r.code !== 0) throw new Error(`bench/editloop: the guest's script failed (${r.code}):\n${r.stderr}`);
    const got = new Map<string, number[]>(KINDS.map((k) => [k, []]));
    const failed = new Map<string, number>(KINDS.map((k) => [k, 0]));
    for (const m of r.stdout.matchAll(/^round (\w+) (\d+|timeout|card)$/gm)) {
      if (/^\d+$/.test(m[2]!)) got.get(m[1]!)!.push(Number(m[2]));
      else failed.set(m[1]!, failed.get(m[1]!)! + 1);
    }
    // The endpoint's own restarts: "a device model changed" -> the next "endpoint listening".
    const restarts: number[] = [];
    let changedAt: number | undefined;
    // The lab's endpoint log holds each start's output (a line may come more than once).
    const lines = [...new Set(r.endpointLog.split('\n'))].sort(
      (a, b) => Number(/"time":(\d+)/.exec(a)?.[1] ?? 0) - Number(/"time":(\d+)/.exec(b)?.[1] ?? 0),
    );
    for (const line of lines) {
      const m = /"time":(\d+).*"msg":"([^"]*)"/.exec(line);
      if (!m) continue;
      if (m[2] === 'a device model changed: restarting the endpoint') changedAt = Number(m[1]);
      else if (m[2] === 'endpoint listening' && changedAt !== undefined) {
        restarts.push(Number(m[1]) - changedAt);
        changedAt = undefined;
      }
    }
    console.log(
      `bench/editloop: ${device.split(':')[0]} in the lab (QEMU TCG, 2 vCPUs), ${args.rounds} rounds of each, alternating; target ${TARGET_MS} ms`,
    );
    const rows = [
      ['from', 'to the device back with its driver: median ms', 'min', 'max', 'failed', 'vs target'],
    ];
    for (const k of KINDS) {
      const xs = got.get(k)!;
      rows.push([
        LABEL[k],
        xs.length ? median(xs).toFixed(0) : '-',
        xs.length ? Math.min(...xs).toFixed(0) : '-',
        xs.length ? Math.max(...xs).toFixed(0) : '-',
        String(failed.get(k)),
        xs.length ? `${(median(xs) / TARGET_MS).toFixed(2)}x` : '-',
      ]);
    }
    const widths = rows[0]!.map((_, j) => Math.max(...rows.map((row) => row[j]!.length)));
    for (const row of rows) console.log(row.map((cell, j) => cell.padStart(widths[j]!)).join('  '));
    if (restarts.length)
      console.log(
        `  of which the endpoint's restart (model changed -> listening, its log): median ${median(restarts).toFixed(0)} ms over ${restarts.length}`,
      );
    writeChart(args.chart, {
      title: 'The edit loop: a saved model to the device back under its driver',
      notes: [
        `${device.split(':')[0]}, lab (QEMU TCG), ${args.rounds} rounds each; ${new Date().toISOString().slice(0, 10)}; target ${TARGET_MS} ms`,
      ],
      series: KINDS.map((k) => LABEL[k]),
      groups: [
        {
          label: 'median',
          unit: 'ms',
          values: KINDS.map((k) => median(got.get(k)!.length ? got.get(k)! : [0])),
        },
        {
          label: 'minimum',
          unit: 'ms',
          values: KINDS.map((k) => Math.min(...(got.get(k)!.length ? got.get(k)! : [0]))),
        },
      ],
      scale: 'linear',
    });
    console.log(`chart: ${args.chart}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
