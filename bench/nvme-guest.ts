// bench/nvme, the guest's part: the four disks, the phases, and what the guest prints about them.
//
// Lines printed (stdout), parsed by bench/nvme.ts:
//   CLK_TCK N                             clock ticks per second of /proc/PID/stat
//   OUT DISK TEST LINE                    the output of dd or fio (terse v3) for that phase
//   FAILED DISK TEST STATUS               dd or fio failed, or was stopped at its bound (124; it
//                                         still reports what it did until then)
//   STATS DISK TEST before|after JSON     the host-agent's "endpoint statistics" log line
//   TIMING DISK TEST before|after NAME NS COUNT   pcinet.ko's timing sums for the disk's function
//   NOSTATS DISK TEST before|after        it did not log one within STATS_WAIT_S
//   CPU DISK TEST TCP TLS MS              utime+stime of the two host-agents during the phase (clock
//                                         ticks), and the phase's wall time (ms)
import { askCard } from '../lab/card-control.js';
import { shQuote } from '../lab/guest-script.js';
import { STATS_WAIT_S, statsShell } from './guest-stats.js';

export type Disk = 'tcp' | 'tls' | 'nbd' | 'kernel';
export const DISKS: readonly Disk[] = ['tcp', 'tls', 'nbd', 'kernel'];

export interface Test {
  key: string;
  label: string;
  unit: 'MB/s' | 'IOPS';
  tool: 'dd' | 'fio';
  rw: 'read' | 'write' | 'randread';
  /** Block size in bytes. */
  bs: number;
  /** dd: blocks per phase. */
  count?: number;
  /** fio: queue depth. */
  qd?: number;
}

/** 4K I/Os per dd phase at QD1: ~8 MB, enough for a stable rate, short at pcinet's ~0.5 MB/s. */
export const QD1_4K_IOS = 2000;
/** Warm-up before the first row, per disk and not measured: I/Os of each size and direction the
 *  rows use, so no column pays for JIT compilation (the endpoints are Node processes; a cold one
 *  replied ~2.5× slower for its first few hundred I/Os), first-touch allocations or cold caches. */
const WARM_4K_IOS = 500;
const WARM_128K_IOS = 50;
/** The plain-TCP host-agent's attach: the lab allows its own as long (READY_TIMEOUT_S). */
const ATTACH_WAIT_S = 60;
/** A driver's probe and the namespace scan after attach (or connect) under TCG: the lab allows a
 *  bind 20 s; a disk also needs its namespace scanned, tens of admin commands over pcinet. */
const DISK_WAIT_S = 60;
/** Slowest rates a dd phase is given time for, a few times under the slowest pcinet figures in
 *  docs/PERFORMANCE.md (0.4 MB/s at 4K, 3 MB/s at 128K). Bounds, not expectations: a slower phase
 *  is stopped (SIGINT, so dd still reports) and its rate is that of the I/Os done by then. */
const DD_FLOOR_BPS_4K = 100_000;
const DD_FLOOR_BPS_128K = 1_000_000;
/** fio beyond its --runtime: setup, and draining the queue at the end. */
const FIO_SLACK_S = 60;
const DD_SLACK_S = 30;
/** One warm-up's bound at the dd floors above, with room. */
const WARM_BOUND_S =
  Math.ceil(
    (2 * WARM_4K_IOS * 4096) / DD_FLOOR_BPS_4K + (2 * WARM_128K_IOS * (128 << 10)) / DD_FLOOR_BPS_128K,
  ) + DD_SLACK_S;

export function tests(mib: number): Test[] {
  const big = 128 << 10;
  const bigCount = (mib << 20) / big;
  return [
    {
      key: 'read-4k-qd1',
      label: 'dd 4K read, QD1',
      unit: 'MB/s',
      tool: 'dd',
      rw: 'read',
      bs: 4096,
      count: QD1_4K_IOS,
    },
    {
      key: 'write-4k-qd1',
      label: 'dd 4K write, QD1',
      unit: 'MB/s',
      tool: 'dd',
      rw: 'write',
      bs: 4096,
      count: QD1_4K_IOS,
    },
    {
      key: 'read-128k-qd1',
      label: 'dd 128K read, QD1',
      unit: 'MB/s',
      tool: 'dd',
      rw: 'read',
      bs: big,
      count: bigCount,
    },
    {
      key: 'write-128k-qd1',
      label: 'dd 128K write, QD1',
      unit: 'MB/s',
      tool: 'dd',
      rw: 'write',
      bs: big,
      count: bigCount,
    },
    {
      key: 'randread-4k-qd32',
      label: 'fio 4K randread, QD32',
      unit: 'IOPS',
      tool: 'fio',
      rw: 'randread',
      bs: 4096,
      qd: 32,
    },
    {
      key: 'read-128k-qd8',
      label: 'fio 128K seq read, QD8',
      unit: 'MB/s',
      tool: 'fio',
      rw: 'read',
      bs: big,
      qd: 8,
    },
    {
      key: 'write-128k-qd8',
      label: 'fio 128K seq write, QD8',
      unit: 'MB/s',
      tool: 'fio',
      rw: 'write',
      bs: big,
      qd: 8,
    },
  ];
}

/** How long one phase may take, in seconds. */
export function phaseBoundS(t: Test, seconds: number): number {
  if (t.tool === 'fio') return seconds + FIO_SLACK_S;
  const floor = t.bs <= 4096 ? DD_FLOOR_BPS_4K : DD_FLOOR_BPS_128K;
  return Math.ceil((t.bs * t.count!) / floor) + DD_SLACK_S;
}

/** The dd or fio command line of a row on `dev` (dd reports on stderr). */
export function command(t: Test, dev: string, mib: number, seconds: number): string {
  if (t.tool === 'dd') {
    return t.rw === 'read'
      ? `dd if=${dev} of=/dev/null bs=${t.bs} count=${t.count} iflag=direct`
      : `dd if=/dev/zero of=${dev} bs=${t.bs} count=${t.count} oflag=direct`;
  }
  return (
    `fio --name=b --filename=${dev} --direct=1 --ioengine=libaio --rw=${t.rw} --bs=${t.bs} ` +
    `--iodepth=${t.qd} --size=${mib}M --runtime=${seconds} --time_based --output-format=terse --terse-version=3`
  );
}

export interface GuestPlan {
  mib: number;
  seconds: number;
  /** The plain-TCP host-agent's argv (runs in the guest). */
  tcpHostArgv: readonly string[];
  tcpReadyFile: string;
  /** Where the guest reaches NBD on the card, and the export's name. */
  nbdHost: string;
  nbdPort: number;
  nbdExport: string;
  /** What the lab's own host-agent was told to connect to (to find its pid). */
  tlsConnect: string;
  tlsLog: string;
}

/** Setup: the four disks; then every test on every disk in turn (tests outer, so a slow spell of
 *  this machine hits all four columns of a row alike); cleanup on exit. */
export function guestScript(p: GuestPlan): string {
  const phases: string[] = [];
  for (const t of tests(p.mib)) {
    for (const d of DISKS) {
      phases.push(
        `measure ${d} ${t.key} ${phaseBoundS(t, p.seconds)} ${command(t, `"$dev_${d}"`, p.mib, p.seconds)}`,
      );
    }
  }
  return `
set -e
TCP_LOG=/tmp/pcinet-tcp-host-agent.log
echo "CLK_TCK $(getconf CLK_TCK)"
# Progress, on stderr (the bench shows it as it comes).
say() { echo "bench/nvme: $*" >&2; }

# ---- helpers ----
${statsShell}
# The block device of the NVMe controller at PCI address $1, once it has one.
has_disk() {
  c=$(ls /sys/bus/pci/devices/$1/nvme/ 2> /dev/null | head -n 1)
  [ -n "$c" ] && [ -b /dev/\${c}n1 ]
}
nvme_disk() {
  if wait_for ${DISK_WAIT_S} has_disk $1; then
    echo /dev/\${c}n1
  else
    echo "bench/nvme: no NVMe disk at $1 within ${DISK_WAIT_S} s; driver: $(readlink /sys/bus/pci/devices/$1/driver)" >&2
    dmesg | tail -n 30 >&2
    return 1
  fi
}
# utime + stime (clock ticks) of process $1, all its threads.
cpu() { sed 's/.*) //' /proc/$1/stat | awk '{ print $12 + $13 }'; }
# stats DISK TEST WHEN: the endpoint's counters from the disk's host-agent, and pcinet.ko's timing
# sums for its function (TIMING DISK TEST WHEN NAME NS COUNT).
disk_stats() {
  eval "pid=\\$ha_$1 log=\\$log_$1 pci=\\$pci_$1"
  stats $pid $log "$1 $2 $3"
  [ -r /sys/bus/pci/devices/$pci/pcinet_timing ] && sed "s|^|TIMING $1 $2 $3 |" /sys/bus/pci/devices/$pci/pcinet_timing
  return 0
}
# mark DISK TEST WHEN: the card samples its servers' CPU (bench/card-cpu) through its control port.
# Only a missing figure if it fails.
mark() {
  ${askCard('$1 $2 $3', 10)} > /dev/null 2>&1 || true
}
# measure DISK TEST BOUND COMMAND...: one phase, at most BOUND seconds; both host-agents' CPU time
# and the wall time around it, and for the pcinet disks the endpoint's counters.
measure() {
  disk=$1 test=$2 bound=$3
  shift 3
  say "$disk $test"
  eval "pid=\\$ha_$disk"
  [ -z "$pid" ] || disk_stats $disk $test before
  mark $disk $test before
  c_tcp=$(cpu $ha_tcp) c_tls=$(cpu $ha_tls) w=$(date +%s%N)
  rc=0
  # SIGINT at the bound: dd and fio stop and report what they did until then.
  out=$(timeout -s INT -k 30 $bound "$@" 2>&1) || rc=$?
  echo "CPU $disk $test $(($(cpu $ha_tcp) - c_tcp)) $(($(cpu $ha_tls) - c_tls)) $((($(date +%s%N) - w) / 1000000))"
  [ -z "$pid" ] || disk_stats $disk $test after
  mark $disk $test after
  echo "$out" | sed "s|^|OUT $disk $test |"
  [ $rc -eq 0 ] || echo "FAILED $disk $test $rc"
}
# warm DISK: not measured (WARM_4K_IOS and WARM_128K_IOS of each direction); a disk that fails
# here fails its rows too, so warm-up errors are only reported.
warm() {
  eval "dev=\\$dev_$1"
  say "$1 warm-up"
  timeout -s INT -k 10 ${WARM_BOUND_S} sh -c "
    dd if=$dev of=/dev/null bs=4096 count=${WARM_4K_IOS} iflag=direct &&
    dd if=/dev/zero of=$dev bs=4096 count=${WARM_4K_IOS} oflag=direct &&
    dd if=$dev of=/dev/null bs=128K count=${WARM_128K_IOS} iflag=direct &&
    dd if=/dev/zero of=$dev bs=128K count=${WARM_128K_IOS} oflag=direct" > /dev/null 2>&1 ||
    say "$1 warm-up failed or ran out of time ($?)"
}
ha_tcp= nbd_up= ref_up=
ha_tcp_gone() { ! kill -0 $ha_tcp 2> /dev/null; }
cleanup() {
  set +e
  [ -n "$nbd_up" ] && nbd-client -d /dev/nbd0 > /dev/null 2>&1
  [ -n "$ref_up" ] && nvme disconnect -n pcinet-ref > /dev/null 2>&1
  if [ -n "$ha_tcp" ]; then
    kill -TERM $ha_tcp 2> /dev/null
    if ! wait_for 10 ha_tcp_gone; then
      echo "bench/nvme: the plain-TCP host-agent did not exit within 10 s of SIGTERM" >&2
      kill -KILL $ha_tcp
    fi
  fi
}
trap cleanup EXIT
modprobe nvmet; modprobe nvmet-tcp; modprobe nvme-tcp; modprobe nbd

# ---- pcinet over TLS: the lab's own endpoint and host-agent ----
pci_tls=$PCINET_LAB_DEVICES
dev_tls=$(nvme_disk $PCINET_LAB_DEVICES) || { echo "bench/nvme: no NVMe disk at $PCINET_LAB_DEVICES" >&2; exit 1; }
ha_tls=$(pid_of ${shQuote(` host --connect ${p.tlsConnect}`)}) || { echo "bench/nvme: the lab's host-agent is not running" >&2; exit 1; }
log_tls=${shQuote(p.tlsLog)}

# ---- pcinet over plain TCP: a second host-agent, to the bench's second endpoint ----
say "pcinet TLS: $dev_tls; starting the plain-TCP host-agent"
rm -f ${p.tcpReadyFile}
${p.tcpHostArgv.map(shQuote).join(' ')} < /dev/null > $TCP_LOG 2>&1 &
ha_tcp=$!
log_tcp=$TCP_LOG
# Ready, or gone (then the file stays empty).
tcp_ready() { [ -s ${p.tcpReadyFile} ] || ha_tcp_gone; }
if ! wait_for ${ATTACH_WAIT_S} tcp_ready || [ ! -s ${p.tcpReadyFile} ]; then
  echo "bench/nvme: the plain-TCP host-agent did not attach within ${ATTACH_WAIT_S} s:" >&2
  tail -n 20 $TCP_LOG >&2
  exit 1
fi
a=$(sed -n 's/.*"address" *: *"\\([^"]*\\)".*/\\1/p' ${p.tcpReadyFile} | head -n 1)
pci_tcp=$a
dev_tcp=$(nvme_disk $a) || { echo "bench/nvme: no NVMe disk at $a" >&2; tail -n 20 $TCP_LOG >&2; exit 1; }

# ---- NBD: the card's nbd-server through QEMU user networking, the host-agent's path ----
say "pcinet TCP: $dev_tcp; connecting NBD"
nbd-client ${p.nbdHost} ${p.nbdPort} /dev/nbd0 -N ${shQuote(p.nbdExport)} > /dev/null
nbd_up=1
dev_nbd=/dev/nbd0
nbd_sized() { [ "$(cat /sys/block/nbd0/size)" != 0 ]; }
wait_for ${DISK_WAIT_S} nbd_sized || { echo "bench/nvme: /dev/nbd0 has no size after nbd-client" >&2; exit 1; }

# ---- the kernel's NVMe/TCP over the guest's loopback (never crosses the network) ----
say "NBD: $dev_nbd; setting up NVMe/TCP"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
truncate -s ${p.mib * 2}M /tmp/ref.img
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
ref_up=1
dev_kernel=
ref_disk() {
  for c in /sys/class/nvme/*; do
    [ "$(cat $c/subsysnqn)" = pcinet-ref ] && [ -b /dev/$(basename $c)n1 ] && dev_kernel=/dev/$(basename $c)n1
  done
  [ -n "$dev_kernel" ]
}
wait_for ${DISK_WAIT_S} ref_disk || { echo "bench/nvme: no NVMe/TCP disk within ${DISK_WAIT_S} s" >&2; exit 1; }
say "NVMe/TCP: $dev_kernel"

# ---- warm-up, then the phases ----
${DISKS.map((d) => `warm ${d}`).join('\n')}
${phases.join('\n')}
`;
}

/** Upper bound of the guest script's run time, in seconds (not counting boot). */
export function scriptBoundS(mib: number, seconds: number): number {
  /** Attach, four disks, cleanup (10 s), and spare. */
  const setupS = ATTACH_WAIT_S + 4 * DISK_WAIT_S + 10 + 60 + DISKS.length * (WARM_BOUND_S + 10);
  let s = setupS;
  for (const t of tests(mib)) s += DISKS.length * phaseBoundS(t, seconds) + 2 * 2 * (STATS_WAIT_S + 2);
  return s;
}
