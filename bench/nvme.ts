// bench/nvme: pcinet's NVMe controller (file backend on the card) side by side with the kernel's
// NVMe/TCP (nvmet-tcp target in the same guest, file on tmpfs, nvme-tcp initiator over loopback),
// in one lab run: dd O_DIRECT at queue depth 1 with 4K and 128K blocks, both directions, and fio 4K
// random reads at queue depth 32. Also the network round trips per 4K I/O at QD1, from the
// endpoint's counters (SIGUSR1 to the host-agent before and after). Prints a table; asserts
// nothing.
//
//   node dist/bench/nvme.js [--mib 64] [--seconds 10]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareLab } from '../lab/prepare.js';
import { runInLab } from '../lab/run.js';

function parseArgs(argv: string[]): { mib: number; seconds: number } {
  const o = { mib: 64, seconds: 10 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = Number(argv[i + 1]);
    if (argv[i] === '--mib' && v >= 8 && v <= 1024) o.mib = v;
    else if (argv[i] === '--seconds' && v > 0 && v <= 120) o.seconds = v;
    else throw new Error(`bench/nvme: bad argument ${argv[i]} (use --mib 8..1024, --seconds 1..120)`);
  }
  return o;
}

const QD1_4K_IOS = 2000;

/** The guest side: prints "RESULT <disk> <test> <value>" lines. */
function guestScript(mib: number, seconds: number): string {
  return `
set -e
dev=$PCINET_LAB_DEVICES
pcinet=/dev/$(ls /sys/bus/pci/devices/$dev/nvme/)n1
modprobe nvmet; modprobe nvmet-tcp; modprobe nvme-tcp
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
truncate -s ${mib * 2}M /tmp/ref.img
S=/sys/kernel/config/nvmet/subsystems/pcinet-ref
mkdir $S && echo 1 > $S/attr_allow_any_host
mkdir $S/namespaces/1
echo -n /tmp/ref.img > $S/namespaces/1/device_path
echo 1 > $S/namespaces/1/buffered_io
echo 1 > $S/namespaces/1/enable
P=/sys/kernel/config/nvmet/ports/1
mkdir $P
echo ipv4 > $P/addr_adrfam; echo tcp > $P/addr_trtype; echo 127.0.0.1 > $P/addr_traddr; echo 4420 > $P/addr_trsvcid
ln -s $S $P/subsystems/pcinet-ref
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n pcinet-ref > /dev/null
ref=
for i in $(seq 100); do
  for c in /sys/class/nvme/*; do [ "$(cat $c/subsysnqn)" = pcinet-ref ] && [ -e /dev/$(basename $c)n1 ] && ref=/dev/$(basename $c)n1; done
  [ -n "$ref" ] && break; sleep 0.1
done
[ -n "$ref" ] || { echo "no NVMe/TCP disk"; exit 1; }
mbps() { sed -n 's/.* s, \\([0-9.]*\\) \\([kMG]\\)B\\/s$/\\1 \\2/p' | awk '{ v = $1; if ($2 == "k") v /= 1000; if ($2 == "G") v *= 1000; print v }'; }
stats() { pkill -USR1 -f "main.js host" || true; sleep 1; }
for d in $pcinet $ref; do
  name=$([ $d = $pcinet ] && echo pcinet || echo nvme-tcp)
  [ $name = pcinet ] && stats
  echo "RESULT $name read-4k-qd1 $(dd if=$d of=/dev/null bs=4k count=${QD1_4K_IOS} iflag=direct 2>&1 | mbps)"
  [ $name = pcinet ] && stats
  echo "RESULT $name write-4k-qd1 $(dd if=/dev/zero of=$d bs=4k count=${QD1_4K_IOS} oflag=direct 2>&1 | mbps)"
  echo "RESULT $name read-128k-qd1 $(dd if=$d of=/dev/null bs=128k count=$((${mib} * 8)) iflag=direct 2>&1 | mbps)"
  echo "RESULT $name write-128k-qd1 $(dd if=/dev/zero of=$d bs=128k count=$((${mib} * 8)) oflag=direct 2>&1 | mbps)"
  iops=$(fio --name=rr --filename=$d --direct=1 --ioengine=libaio --rw=randread --bs=4k --iodepth=32 \\
    --size=${mib}M --runtime=${seconds} --time_based --output-format=terse --terse-version=3 | cut -d';' -f8)
  echo "RESULT $name randread-4k-qd32-iops $iops"
done
nvme disconnect -n pcinet-ref > /dev/null
`;
}

async function main(): Promise<void> {
  const { mib, seconds } = parseArgs(process.argv.slice(2));
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-bench-nvme-'));
  try {
    const assets = await prepareLab({ modules: true });
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'disk.img')},size=${mib * 2}M`],
      command: guestScript(mib, seconds),
      timeoutMs: (6 * seconds + 600) * 1000,
    });
    if (r.code !== 0)
      throw new Error(`bench/nvme: the lab run failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
    const results = new Map<string, number>();
    for (const m of r.stdout.matchAll(/^RESULT (\S+) (\S+) ([\d.]+)$/gm))
      results.set(`${m[1]} ${m[2]}`, Number(m[3]));
    const tests: [string, string, string][] = [
      ['read-4k-qd1', 'dd 4K read, QD1', 'MB/s'],
      ['write-4k-qd1', 'dd 4K write, QD1', 'MB/s'],
      ['read-128k-qd1', 'dd 128K read, QD1', 'MB/s'],
      ['write-128k-qd1', 'dd 128K write, QD1', 'MB/s'],
      ['randread-4k-qd32-iops', 'fio 4K randread, QD32', 'IOPS'],
    ];
    console.log(
      `bench/nvme: lab guest (QEMU TCG, 2 vCPUs); pcinet file backend vs nvmet-tcp on tmpfs over loopback`,
    );
    console.log('test                      pcinet        NVMe/TCP      ratio');
    for (const [key, label, unit] of tests) {
      const a = results.get(`pcinet ${key}`);
      const b = results.get(`nvme-tcp ${key}`);
      const fmt = (v: number | undefined) =>
        (v === undefined ? '?' : v.toFixed(unit === 'IOPS' ? 0 : 1)).padStart(8);
      const ratio = a !== undefined && b ? (a / b).toFixed(2) : '?';
      console.log(`${label.padEnd(24)}  ${fmt(a)} ${unit.padEnd(4)}  ${fmt(b)} ${unit.padEnd(4)}  ${ratio}`);
    }
    // Round trips per 4K read at QD1: the endpoint's DmaRead requests during that phase.
    const snaps = [...r.hostAgentLog.matchAll(/"counters":(\{[^}]*\}),"msg":"endpoint statistics"/g)].map(
      (m) => JSON.parse(m[1]!) as Record<string, number>,
    );
    if (snaps.length >= 2) {
      const d = (k: string) => (snaps[1]![k] ?? 0) - (snaps[0]![k] ?? 0);
      console.log(
        `4K read at QD1: ${(d('dev1.dmaReads') / QD1_4K_IOS).toFixed(2)} endpoint→host DMA reads (round trips) and ` +
          `${(d('dev1.mmioWrites') / QD1_4K_IOS).toFixed(2)} MMIO writes per I/O`,
      );
    } else {
      console.log('4K read at QD1: round trips unknown (no endpoint statistics in the host-agent log)');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
