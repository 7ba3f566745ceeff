// A bad network between the workstation and the card (issue 14, item 4): netem on the guest's
// path to the card (delay with jitter, 2 % loss, reordering, duplication) while fio verifies the
// NVMe disk and iperf3 runs both ways through the NIC, both on the card. Nothing may fail; the
// throughput is printed. (netem shapes what the guest sends; QEMU's user network carries the rest.)
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';
import { FIO_VERIFY, FIO_VERIFY_OK } from './block-workloads.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 600_000;
const TAP = 'pn0';
const MAC = '52:54:00:7e:57:03';
const CARD = '10.77.0.1';
const GUEST = '10.77.0.2';
const NETEM = 'delay 10ms 5ms loss 2% reorder 10% 50% duplicate 1%';

function run(argv: string[]): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(argv[0]!, argv.slice(1), { timeout: 10_000 }, (e, _out, err) =>
      e ? reject(new Error(`${argv.join(' ')}: ${err || e.message}`)) : resolve(),
    ),
  );
}

describe.skipIf(!root)('a bad network between the workstation and the card', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-netem-e2e-'));
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it(`netem (${NETEM}): fio verifies the disk, iperf3 runs through the NIC`, {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const procs: ChildProcess[] = [];
    const serverLog: string[] = [];
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'netem.img')},size=128M`, `virtio-net:tap=${TAP},mac=${MAC}`],
      command: [
        'set -e',
        'set -- $PCINET_LAB_DEVICES; nvmedev=$1; netdev=$2',
        'modprobe sch_netem',
        `tc qdisc add dev eth0 root netem ${NETEM}`,
        'tc qdisc show dev eth0',
        'ctrl=$(ls /sys/bus/pci/devices/$nvmedev/nvme/)',
        'for i in $(seq 50); do [ -e "/dev/$ctrl"n1 ] && break; sleep 0.1; done',
        'disk=/dev/"$ctrl"n1',
        `${FIO_VERIFY}`,
        'for i in $(seq 100); do ls /sys/bus/pci/devices/$netdev/virtio*/net/ > /dev/null 2>&1 && break; sleep 0.1; done',
        'ifc=$(ls /sys/bus/pci/devices/$netdev/virtio*/net/)',
        `ip addr add ${GUEST}/24 dev $ifc && ip link set $ifc up`,
        'for i in $(seq 100); do [ "$(cat /sys/class/net/$ifc/carrier)" = 1 ] && break; sleep 0.1; done',
        // -w: wait for every reply (a frame held up by the link's retransmission arrives late, but
        // it arrives); without it ping stops listening two round trips after its last request.
        `ping -c 20 -i 0.1 -w 30 ${CARD} | grep "packets transmitted"`,
        `iperf3 -c ${CARD} -t 8 -f m | tail -4`,
        `iperf3 -c ${CARD} -t 8 -f m -R | tail -4`,
        'tc -s qdisc show dev eth0',
        'echo "io-errors=$(dmesg | grep -ciE "I/O error|timeout, aborting|blk_update_request")"',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
      card: async (card) => {
        await run(card.wrap(['ip', 'addr', 'add', `${CARD}/24`, 'dev', TAP]));
        await run(card.wrap(['ip', 'link', 'set', TAP, 'up']));
        const [iperf, ...args] = card.wrap([
          'timeout',
          String(RUN_TIMEOUT_MS / 1000),
          'iperf3',
          '-s',
          '-B',
          CARD,
        ]);
        const server = spawn(iperf!, args, { stdio: ['ignore', 'pipe', 'pipe'] });
        server.stdout!.on('data', (b: Buffer) => serverLog.push(b.toString()));
        server.stderr!.on('data', (b: Buffer) => serverLog.push(b.toString()));
        procs.push(server);
        return async () => {
          for (const p of procs) p.kill('SIGTERM');
        };
      },
    });
    const out = `${r.stdout}\n${r.stderr}\n--- iperf3 server on the card ---\n${serverLog.join('')}`;
    console.log(r.stdout);
    expect(r.code, out).toBe(0);
    expect(r.stdout).toMatch(/qdisc netem .* loss 2% duplicate 1% reorder 10% 50%/);
    expect(r.stdout, out).toMatch(FIO_VERIFY_OK);
    // Pings ride the NIC, not eth0: the link's TCP retransmits what netem drops, so none is lost.
    expect(r.stdout, out).toMatch(/^20 packets transmitted, 20 received/m);
    const rates = [...r.stdout.matchAll(/([\d.]+) Mbits\/sec\s+\d*\s*(sender|receiver)$/gm)].map((m) =>
      Number(m[1]),
    );
    expect(rates.length, out).toBeGreaterThanOrEqual(4);
    for (const rate of rates) expect(rate).toBeGreaterThan(0);
    // netem did its work: it dropped and duplicated some of what the guest sent.
    expect(r.stdout).toMatch(/dropped [1-9]\d*/);
    expect(r.stdout).toMatch(/^io-errors=0$/m);
    console.log(`under netem, iperf3 through the NIC (Mbit/s): ${rates.join(' ')}`);
  });
});
