// Record and replay in the lab (docs/devices.md, "Record and replay"): Linux's virtio_pci and
// virtio_blk bring up the virtio-blk model (the kernel reads the partition table) and dd reads two
// blocks with O_DIRECT while `pcinet trace --for-replay` records the session on the card; then the
// lab boots again with the replay device, made from that capture, in the model's place, and the
// disk image is gone from the card. The same driver binds and the same reads return the same bytes
// with no divergence: the replay answers from the recording, at the live run's addresses (virtio
// descriptor tables, indirect tables, request headers and data pages all sit elsewhere this time).
// A run that reads one block instead of two is told at which record it parted from the recording.
// virtio-blk rather than virtio-rng: Linux's hwrng core reads virtio-rng on a clock of its own
// (its kthread every uptime/2 s), so how often the device is asked differs from run to run.
// PCINET_E2E_DEBUG=1 streams the guest's output and the lab's phases while it runs. When a test
// fails, the capture and every run's logs (endpoint, host-agent, guest, `pcinet status`) are kept in
// the directory it prints (PCINET_E2E_KEEP=1: kept whatever the outcome).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { compile } from '../../devices/replay/script.js';
import { loadReplayTrace } from '../../endpoint/replay-trace.js';
import { repoRoot } from '../../lab/paths.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import {
  type LabCard,
  LabError,
  type LabResult,
  type RunInLabOptions,
  runInLab,
  testBudget,
} from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 240_000;
const CLI = join(repoRoot(), 'dist/cli/main.js');
/** The model's queue 0 notify address (devices/virtio/pci.ts NOTIFY). */
const NOTIFY = 0x3000;
const BLOCK = 4096;
/** Where dd reads: past what the partition scan reads, so these are requests of dd's own. */
const SKIP = 16;

/** The guest's part: wait for the disk, then `blocks` direct reads of 4 KiB, and their SHA-256. dd
 *  writes a file, so that a failing dd fails the script (a pipe would hash what it got). With
 *  `want`, other bytes are shown whole (od, lines "data: …") for the test to say where they differ. */
function guest(blocks: number, want?: string): string {
  return [
    'set -e',
    'dev=$PCINET_LAB_DEVICES',
    'for i in $(seq 100); do ls /sys/bus/pci/devices/$dev/virtio*/block/ > /dev/null 2>&1 && break; sleep 0.1; done',
    'vd=$(ls /sys/bus/pci/devices/$dev/virtio*/block/)',
    'echo "disk=$vd driver=$(basename $(readlink /sys/bus/pci/devices/$dev/virtio*/driver))"',
    `dd if=/dev/$vd of=/tmp/blocks bs=${BLOCK} skip=${SKIP} count=${blocks} iflag=direct status=none`,
    "sum=$(sha256sum < /tmp/blocks | cut -d' ' -f1)",
    'echo "sum=$sum"',
    ...(want ? [`[ "$sum" = ${want} ] || od -An -v -tx1 /tmp/blocks | sed 's/^/data:/'`] : []),
  ].join('\n');
}

/**
 * `disk` with words in dd's blocks that look like the addresses the recorded device used: the lab's
 * IOVAs are at the top of the 32-bit space (pcinet.ko's soft IOMMU allocates downwards from 4 GiB):
 * block 0 is a 32-bit word in each of its top 1024 pages, block 1 a 64-bit word in each of the top
 * 512. The replay must give them back as they were: data, not addresses (random data has such a
 * word in about 1 run in 100; a replay that rewrote it returned other bytes and reported nothing).
 */
function withAddressLikeWords(disk: Buffer): Buffer {
  for (let i = 0; i < BLOCK / 4; i++)
    disk.writeUInt32LE(2 ** 32 - (i + 1) * 0x1000 + 0x10, SKIP * BLOCK + 4 * i);
  for (let i = 0; i < BLOCK / 8; i++)
    disk.writeBigUInt64LE(BigInt(2 ** 32 - (i + 1) * 0x1000 + 0x18), (SKIP + 1) * BLOCK + 8 * i);
  return disk;
}

/** Where the bytes the guest showed (guest's "data:" lines) differ from `want`: "" when they
 *  do not, or were not shown. */
function whereBytesDiffer(stdout: string, want: Uint8Array): string {
  const hex = stdout
    .split('\n')
    .filter((l) => l.startsWith('data:'))
    .join(' ')
    .replaceAll('data:', ' ')
    .trim();
  if (!hex) return '';
  const got = Uint8Array.from(hex.split(/\s+/), (h) => Number.parseInt(h, 16));
  const out = [`the guest read ${got.length} bytes, ${want.length} expected`];
  const words: string[] = [];
  for (let at = 0; at < Math.max(got.length, want.length); at += 4) {
    const g = Buffer.from(got.subarray(at, at + 4)).toString('hex');
    const w = Buffer.from(want.subarray(at, at + 4)).toString('hex');
    if (g !== w) words.push(`+0x${at.toString(16)} (block ${Math.floor(at / BLOCK)}): ${g} for ${w}`);
  }
  out.push(`${words.length} 4-byte words differ`, ...words.slice(0, 32));
  return out.join('\n');
}

/** The card's `pcinet status` once the guest is gone: the replay's notes stay with the model. */
function cardStatus(card: LabCard, into: string[]): () => Promise<void> {
  return async () => {
    const s = spawnSync(
      process.execPath,
      [CLI, 'status', '--socket', card.controlSocket, '--json', '--interval', '100'],
      { encoding: 'utf8' },
    );
    into.push(s.stdout || s.stderr);
  };
}

/** The endpoint's log lines about the replay (pino JSON: msg is the trace event). */
function replayLog(r: LabResult): Record<string, unknown>[] {
  return r.endpointLog
    .split('\n')
    .filter((l) => l.includes('"msg":"replay.'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const debug = process.env.PCINET_E2E_DEBUG
  ? {
      onOutput: (c: Buffer) => void process.stderr.write(c),
      onPhase: (p: { name: string; detail?: string; ms: number }) =>
        console.error(`phase ${p.name} ${p.detail ?? ''} ${p.ms}`),
    }
  : {};

/** runInLab, with what the run left behind written to `dir` as NAME.*.log, whether it passed or
 *  not (the directory is removed only when every test passed). */
async function runKept(dir: string, name: string, o: RunInLabOptions): Promise<LabResult> {
  const keep = (d: { endpointLog?: string; hostAgentLog?: string; guestLog?: string; output?: string }) => {
    for (const [what, text] of Object.entries({
      endpoint: d.endpointLog,
      'host-agent': d.hostAgentLog,
      guest: d.guestLog,
      output: d.output,
    }))
      if (text !== undefined) writeFileSync(join(dir, `${name}.${what}.log`), text);
  };
  try {
    const r = await runInLab(o);
    keep(r);
    return r;
  } catch (e) {
    if (e instanceof LabError) keep(e.details);
    throw e;
  }
}

describe.skipIf(!root)('record and replay in the lab: virtio-blk under Linux’s own driver', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-replay-e2e-'));
  const capture = join(dir, 'virtio-blk.pcapng');
  const image = join(dir, 'disk.img');
  const disk = withAddressLikeWords(randomBytes(1 << 20));
  const blocks = disk.subarray(SKIP * BLOCK, (SKIP + 2) * BLOCK);
  const want = createHash('sha256').update(blocks).digest('hex');
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);
  let failed = false;
  const keepOnFailure = () =>
    onTestFailed(() => {
      failed = true;
      console.error(`replay e2e: the capture and the runs' logs are kept in ${dir}`);
    });
  afterAll(() => {
    if (process.env.PCINET_E2E_KEEP) console.error(`replay e2e: kept in ${dir}`);
    else if (!failed) rmSync(dir, { recursive: true, force: true });
  });
  let recorded = false;

  it('records the bring-up and two reads with pcinet trace --for-replay', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    keepOnFailure();
    writeFileSync(image, disk);
    let trace: ChildProcess | undefined;
    let traceErr = '';
    const r = await runKept(dir, 'record', {
      assets,
      devices: [`virtio-blk:file=${image}`],
      command: guest(2, want),
      timeoutMs: RUN_TIMEOUT_MS,
      ...debug,
      card: async (card) => {
        trace = spawn(
          process.execPath,
          [CLI, 'trace', '--for-replay', '--device', '1', '--socket', card.controlSocket, '-w', capture],
          { stdio: ['ignore', 'ignore', 'pipe'] },
        );
        trace.stderr!.on('data', (d) => (traceErr += d));
        // Capturing before the guest boots, so that the Attach is in it.
        while (!traceErr.includes('capturing') && trace.exitCode === null)
          await new Promise((res) => setTimeout(res, 100));
        expect(traceErr).toMatch(/capturing/);
        return async () => {
          const done = new Promise((res) => trace!.once('close', res));
          trace!.kill('SIGINT');
          await done;
        };
      },
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^disk=vd[a-z]+ driver=virtio_blk$/m);
    expect(r.stdout, whereBytesDiffer(r.stdout, blocks)).toContain(`sum=${want}`);
    expect(traceErr).toMatch(/trace: \d+ messages \(stopped: interrupted\)/);
    expect(traceErr).not.toMatch(/cannot be replayed|already|max-size/);

    const rec = loadReplayTrace(capture);
    expect(rec.description.model).toBe('virtio-blk');
    const kinds = new Set(rec.records.map((x) => x.kind));
    for (const k of ['configWrite', 'mmioWrite', 'shadow', 'pushRule', 'push', 'dmaWrite', 'virtqRound'])
      expect(kinds, k).toContain(k);
    expect(rec.records.at(-1)).toMatchObject({ kind: 'detach' });
    const notifies = rec.records.filter((x) => x.kind === 'mmioWrite' && x.offset === NOTIFY).length;
    console.log(`recorded: ${rec.records.length} records after the Attach, ${notifies} requests`);
    recorded = true;
  });

  it('the replay device in the model’s place: virtio_blk binds, the same bytes come back, no divergence', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    keepOnFailure();
    expect(recorded, 'the recording run must pass first').toBe(true);
    // What comes back must come from the recording: the card has no disk any more.
    rmSync(image);
    const status: string[] = [];
    const r = await runKept(dir, 'replay', {
      assets,
      devices: [`replay:trace=${capture}`],
      command: guest(2, want),
      timeoutMs: RUN_TIMEOUT_MS,
      ...debug,
      card: async (card) => cardStatus(card, status),
    });
    writeFileSync(join(dir, 'replay.status.json'), status.join('\n'));
    expect(r.code, `${r.stdout}\n${r.stderr}\n${r.endpointLog}`).toBe(0);
    expect(r.stdout).toMatch(/^disk=vd[a-z]+ driver=virtio_blk$/m);
    const differ = whereBytesDiffer(r.stdout, blocks);
    if (differ) writeFileSync(join(dir, 'replay.bytes-differ.txt'), differ);
    expect(r.stdout, `${differ}\n${r.endpointLog}`).toContain(`sum=${want}`);
    const log = replayLog(r);
    expect(
      log.filter((l) => l.msg === 'replay.divergence'),
      r.endpointLog,
    ).toEqual([]);
    const complete = log.find((l) => l.msg === 'replay.complete');
    expect(complete, r.endpointLog).toBeDefined();
    // Rings, descriptor tables, indirect tables, headers, data pages: all relocated.
    expect(complete!.relocations).toBeGreaterThanOrEqual(5);
    const notes = JSON.parse(status[0]!).notes as string[];
    expect(notes).toEqual([
      expect.stringMatching(
        /^dev 1: replay reached the end of the recording \(record \d+, the host’s detach\)$/,
      ),
    ]);
    console.log(`replayed: ${JSON.stringify(complete)}`);
  });

  it('a run that reads one block instead of two is told where it parted from the recording', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    keepOnFailure();
    expect(recorded, 'the recording run must pass first').toBe(true);
    // dd's second block is the recording's last request: where the live driver, instead, lets the
    // device go (a notify after it that brought the device nothing is an idle kick, not expected).
    const rec = loadReplayTrace(capture);
    const last = compile(rec.records, rec.description)
      .steps.filter(
        (x) => x.op === 'expect' && x.msg.kind === 'mmioWrite' && x.msg.offset === NOTIFY && !x.idle,
      )
      .at(-1)!;
    const status: string[] = [];
    const r = await runKept(dir, 'replay-one-block', {
      assets,
      devices: [`replay:trace=${capture}`],
      command: guest(1),
      timeoutMs: RUN_TIMEOUT_MS,
      ...debug,
      card: async (card) => cardStatus(card, status),
    });
    writeFileSync(join(dir, 'replay-one-block.status.json'), status.join('\n'));
    expect(r.code, `${r.stdout}\n${r.stderr}\n${r.endpointLog}`).toBe(0);
    expect(r.stdout).toMatch(/^disk=vd[a-z]+ driver=virtio_blk$/m);
    const d = replayLog(r).filter((l) => l.msg === 'replay.divergence');
    expect(d, r.endpointLog).toHaveLength(1);
    expect(d[0]).toMatchObject({
      record: last.n,
      at: `+${(last.us / 1e6).toFixed(6)} s`,
      kind: 'message',
      expected: 'MmioWrite bar 0 +0x3000 [2] 0000',
      got: 'the host removed the device',
      strict: true,
    });
    expect(replayLog(r).find((l) => l.msg === 'replay.complete')).toBeUndefined();
    const notes = JSON.parse(status[0]!).notes as string[];
    expect(notes[0]).toBe(
      `dev 1: replay diverged at record ${last.n} (+${(last.us / 1e6).toFixed(6)} s): message: expected MmioWrite bar 0 +0x3000 [2] 0000; got the host removed the device (strict: the device no longer answers)`,
    );
    console.log(`divergence: ${notes[0]}`);
  });
});
