// `pcinet demo zfs`: a ZFS pool on the card shown to the workstation as one plain NVMe disk.
//
// On this machine (the card): zfs-fuse (real ZFS over FUSE), a raidz pool of three file vdevs,
// a compressed dataset, and in it the file that backs the NVMe namespace. In the lab guest (the
// workstation): the disk is formatted and mounted, files are written in rounds; after each round
// the card prints the dataset's space and compression ratio next to the workstation's df. Then why
// ZFS: while the workstation writes, the card takes one vdev away (offline, then its contents
// overwritten with noise); the workstation goes on writing and reads every file back; the card
// replaces the vdev, the pool resilvers, a scrub comes back clean, and the workstation checks every
// file once more. At the end: zpool status. Everything is created in a temporary directory and
// destroyed afterwards.
//
// A real card does the same with OpenZFS and a zvol (docs/ZFS.md): --device nvme:path=/dev/zvol/…
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { askCard, startCardControl } from './card-control.js';
import { prepareLab } from './prepare.js';
import { missingTools, runOk } from './proc.js';
import { runInLab } from './run.js';

const VDEV_BYTES = 512 << 20;
const DISK_BYTES = 768 << 20;
const ROUNDS = 3;
/** How long the card may take to resilver or scrub the pool (zfs-fuse on a busy machine). */
const POOL_WORK_S = 600;

const sh = (argv: string[]) => runOk(argv);

/** The guest's part: format, mount, write rounds of files, ask the card for its numbers. */
function guestScript(): string {
  return [
    'set -e',
    'dev=$PCINET_LAB_DEVICES',
    'ctrl=$(ls /sys/bus/pci/devices/$dev/nvme/)',
    'for i in $(seq 50); do [ -e /dev/"$ctrl"n1 ] && break; sleep 0.1; done',
    'disk=/dev/"$ctrl"n1',
    'echo "== workstation: $(nvme list | grep $disk)"',
    'mkfs.ext4 -q -F -E nodiscard $disk && mkdir -p /tmp/zdisk && mount $disk /tmp/zdisk',
    'echo "== workstation: ext4 on $disk: $(df -h /tmp/zdisk | tail -1)"',
    askCard('stats'),
    `for r in $(seq 1 ${ROUNDS}); do`,
    '  mkdir -p /tmp/zdisk/round$r',
    '  for f in $(seq 1 20); do cat /usr/share/common-licenses/* /usr/share/common-licenses/* > /tmp/zdisk/round$r/text$f; done',
    '  head -c 4000000 /dev/urandom > /tmp/zdisk/round$r/random.bin',
    '  sync',
    '  echo "== workstation: round $r written: $(du -sh /tmp/zdisk | cut -f1) in $(find /tmp/zdisk -type f | wc -l) files; df: $(df -h /tmp/zdisk | tail -1 | tr -s " " | cut -d" " -f3) used"',
    `  ${askCard('stats')}`,
    'done',
    // Why ZFS: a vdev goes away while the workstation writes.
    'cd /tmp/zdisk && find . -type f -exec sha256sum {} + > /tmp/sums && cd /',
    'echo "== workstation: $(wc -l < /tmp/sums) files checksummed; writing more while the card loses a disk"',
    'mkdir -p /tmp/zdisk/degraded',
    '( for f in $(seq 1 10); do cat /usr/share/common-licenses/* > /tmp/zdisk/degraded/text$f; head -c 1000000 /dev/urandom > /tmp/zdisk/degraded/random$f; sleep 0.2; done; sync ) & writer=$!',
    askCard('fail', POOL_WORK_S),
    'wait $writer',
    'cd /tmp/zdisk && find degraded -type f -exec sha256sum {} + >> /tmp/sums && cd /',
    // Read back from the device, not the page cache.
    'sync && echo 3 > /proc/sys/vm/drop_caches',
    '(cd /tmp/zdisk && sha256sum -c --quiet /tmp/sums)',
    'echo "== workstation: all $(wc -l < /tmp/sums) files read back intact from the degraded pool"',
    askCard('replace', POOL_WORK_S),
    askCard('scrub', POOL_WORK_S),
    'sync && echo 3 > /proc/sys/vm/drop_caches',
    '(cd /tmp/zdisk && sha256sum -c --quiet /tmp/sums)',
    'echo "== workstation: all $(wc -l < /tmp/sums) files match after the resilver and the scrub"',
    "errs=$(dmesg | grep -ciE 'i/o error|blk_update_request|nvme.*(timeout|abort)' || true)",
    'echo "== workstation: kernel I/O errors: $errs"',
    "dmesg | grep -iE 'i/o error|blk_update_request|nvme.*(timeout|abort)' | sort | uniq -c | sort -rn | head -5 | sed 's/^/== workstation:   /'",
    'umount /tmp/zdisk',
  ].join('\n');
}

/** The pool's state line and the config lines of its vdevs, from zpool status. */
function poolSummary(status: string): string[] {
  return status
    .split('\n')
    .filter((l) => /^\s*(state|scrub):|^\s+\S+\s+(ONLINE|OFFLINE|DEGRADED|FAULTED|UNAVAIL|REMOVED)/.test(l))
    .map((l) => l.replace(/^\s+/, (m) => (m.includes('\t') ? '  ' : ' ')));
}

/** The pool stays busy for a moment after its last user (the endpoint) exits. */
async function destroyPool(pool: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await sh(['zfs', 'unmount', '-a']).catch(() => {});
      await sh(['zpool', 'destroy', '-f', pool]);
      return;
    } catch (e) {
      if (i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** The demo's lab run may take this long on an idle machine (it stretches on a busy one). */
export const ZFS_DEMO_RUN_MS = 600_000;

export interface ZfsDemoOptions {
  /** Where the demo's lines go (default stdout). */
  out?: (line: string) => void;
}

/** Runs the demo; resolves with the lab command's exit status. */
export async function runZfsDemo(o: ZfsDemoOptions = {}): Promise<number> {
  const out = o.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const missing = missingTools([
    ['zfs-fuse', 'zfs-fuse'],
    ['zpool', 'zfs-fuse'],
    ['zfs', 'zfs-fuse'],
  ]);
  if (missing.length > 0) throw new Error(`demo zfs: ${missing.join('; ')}`);
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-zfs-'));
  const pool = `pcinet${process.pid}`;
  let daemon: ChildProcess | undefined;
  let poolCreated = false;
  try {
    const running = await sh(['sh', '-c', 'pgrep -x zfs-fuse || true']);
    if (!running.trim()) {
      daemon = spawn('zfs-fuse', ['--no-daemon'], { stdio: 'ignore' });
      for (let i = 0; i < 50; i++) {
        if (
          await sh(['zpool', 'list']).then(
            () => true,
            () => false,
          )
        )
          break;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const vdevs = [1, 2, 3].map((i) => join(dir, `vdev${i}`));
    for (const v of vdevs) {
      writeFileSync(v, '');
      truncateSync(v, VDEV_BYTES);
    }
    await sh(['zpool', 'create', '-m', join(dir, 'pool'), pool, 'raidz', ...vdevs]);
    poolCreated = true;
    await sh(['zfs', 'create', '-o', 'compression=gzip', `${pool}/disks`]);
    const image = join(dir, 'pool', 'disks', 'nvme.img');
    out(
      `== card: raidz pool ${pool} of 3 × ${VDEV_BYTES >> 20} MiB file vdevs, dataset ${pool}/disks (compression=gzip)`,
    );
    out(`== card: the workstation's disk is ${image} (${DISK_BYTES >> 20} MiB, sparse)`);

    const stats = async () => {
      // ZFS accounts space when a transaction group commits; a snapshot forces one now.
      await sh(['zfs', 'snapshot', `${pool}/disks@now`]);
      await sh(['zfs', 'destroy', `${pool}/disks@now`]);
      const ds = (await sh(['zfs', 'get', '-H', '-o', 'value', 'used,compressratio', `${pool}/disks`]))
        .trim()
        .split('\n');
      const pl = (await sh(['zpool', 'list', '-H', '-o', 'alloc,free', pool])).trim().split('\t');
      out(
        `== card: dataset ${pool}/disks uses ${ds[0]}, compression ratio ${ds[1]}; pool allocated ${pl[0]}, free ${pl[1]}`,
      );
    };
    const status = async () => sh(['zpool', 'status', pool]);
    const show = async (what: string) => {
      out(`== card: ${what}`);
      for (const l of poolSummary(await status())) out(`== card:   ${l.trim()}`);
    };
    /** Waits for a resilver or scrub to finish; bounded, and it says so if the pool gives up. */
    const settle = async (what: string) => {
      const until = Date.now() + POOL_WORK_S * 1000;
      for (;;) {
        const st = await status();
        if (!/in progress/.test(st)) return;
        if (Date.now() > until) throw new Error(`${what} still running after ${POOL_WORK_S} s`);
        await new Promise((r) => setTimeout(r, 500));
      }
    };
    // The vdev that fails, and the new one that replaces it.
    const failing = vdevs[1]!;
    const spare = join(dir, 'vdev4');
    const act = async (word: string) => {
      if (word === 'stats') return stats();
      if (word === 'fail') {
        await sh(['zpool', 'offline', pool, failing]);
        // What a dying disk leaves: 64 MiB of noise over its data (the labels at both ends kept).
        const fd = openSync(failing, 'r+');
        try {
          for (let at = 8 << 20; at < 72 << 20; at += 1 << 20)
            writeSync(fd, randomBytes(1 << 20), 0, 1 << 20, at);
        } finally {
          closeSync(fd);
        }
        return show(`${failing} taken offline and overwritten with 64 MiB of noise`);
      }
      if (word === 'replace') {
        writeFileSync(spare, '');
        truncateSync(spare, VDEV_BYTES);
        await sh(['zpool', 'replace', pool, failing, spare]);
        await settle('resilver');
        return show(`${failing} replaced by ${spare}`);
      }
      if (word === 'scrub') {
        await sh(['zpool', 'scrub', pool]);
        await settle('scrub');
        return show('scrub of the whole pool');
      }
      throw new Error(`unknown command ${word}`);
    };
    const procs: ChildProcess[] = [];
    let partial = '';
    const assets = await prepareLab({ modules: true });
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${image},size=${DISK_BYTES},serial=ZFSDEMO,model=pcinet_disk_on_ZFS`],
      command: guestScript(),
      timeoutMs: ZFS_DEMO_RUN_MS,
      onOutput: (chunk) => {
        partial += chunk.toString();
        const lines = partial.split('\n');
        partial = lines.pop()!;
        for (const line of lines) if (line.trim() && !line.startsWith('card: ')) out(line);
      },
      card: async (card) => {
        procs.push(
          startCardControl(card, (word) =>
            act(word).catch((e: Error) => {
              // The guest times out waiting; the reason is here.
              out(`== card: ${word} failed: ${e.message}`);
              throw e;
            }),
          ),
        );
        return async () => {
          for (const p of procs) p.kill('SIGTERM');
        };
      },
    });
    out(`== card: zpool status ${pool}`);
    for (const l of (await sh(['zpool', 'status', pool])).trimEnd().split('\n')) out(l);
    return r.code;
  } finally {
    if (poolCreated) await destroyPool(pool).catch((e: Error) => out(`demo zfs: cleanup: ${e.message}`));
    if (daemon) {
      daemon.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 500));
    }
    rmSync(dir, { recursive: true, force: true });
  }
}
