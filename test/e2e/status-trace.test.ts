// `pcinet status` and `pcinet trace` on the lab's NVMe disk with the real nvme driver: status in
// the guest (the host-agent's socket) shows the controller bound to nvme, its kernel link up and
// rates moving while fio runs, and the card's status (the endpoint's socket) says the same from
// its side; a trace taken on the card records the MMIO and DMA of `nvme smart-log`, which travel
// on pcinet.ko's sealed kernel link, and tshark decodes them with the dissector.
// PCINET_E2E_DEBUG=1 streams the guest's output and the lab's phases while it runs.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readCapture } from '../../cli/pcapng.js';
import { askCard, startCardControl } from '../../lab/card-control.js';
import { repoRoot } from '../../lab/paths.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';
import { decodeRecord, TF_LINK, TF_TO_HOST, type TraceRecord } from '../../proto/trace.js';
import { u64 } from '../../proto/wire.js';
import { ensureTshark } from '../tshark.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 300_000;
const CLI = join(repoRoot(), 'dist/cli/main.js');

/** NVMe Base 2.0 §5.16: Get Log Page (opcode 02h); CDW10 bits 7:0 the log page identifier,
 *  02h SMART / Health Information, 512 bytes. */
const GET_LOG_PAGE = 0x02;
const LID_SMART = 0x02;

describe.skipIf(!root)('pcinet status and pcinet trace on the lab’s NVMe disk', () => {
  let assets: LabAssets;
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-st-e2e-'));
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
    ensureTshark();
  }, 30 * 60_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('status moves during I/O, bound to nvme on a kernel link; trace records smart-log’s MMIO and DMA', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const capture = join(dir, 'card.pcapng');
    let trace: ChildProcess | undefined;
    let traceErr = '';
    const cardStatus: string[] = [];
    const r = await runInLab({
      assets,
      devices: [`nvme:file=${join(dir, 'disk.img')},size=64M`],
      command: [
        'set -e',
        'dev=$PCINET_LAB_DEVICES',
        'ctrl=$(ls /sys/bus/pci/devices/$dev/nvme/)',
        'for i in $(seq 50); do [ -e "/dev/$ctrl"n1 ] && break; sleep 0.1; done',
        'disk=/dev/"$ctrl"n1',
        // Reads and writes until both sides' status has been taken in the middle of them (TCG on
        // a busy machine is slow: the I/O runs until then, however long that is, bounded).
        'fio --name=load --filename=$disk --rw=randrw --bs=4k --iodepth=8 --ioengine=libaio --direct=1 ' +
          '--time_based --runtime=240 --size=32M > /tmp/fio.log 2>&1 & fio=$!',
        `reads() { awk '{print $1}' /sys/block/"$ctrl"n1/stat; }`,
        'start=$(reads); for i in $(seq 600); do [ $(reads) -gt $((start + 200)) ] && break; sleep 0.2; done',
        `node ${CLI} status --json --interval 2000 > /tmp/status.json`,
        askCard('status'),
        `node ${CLI} status --interval 1000`,
        'kill -INT $fio; wait $fio || true',
        'grep -E "^ *(read|write):" /tmp/fio.log || cat /tmp/fio.log',
        'echo "status-json $(cat /tmp/status.json)"',
        'echo smart-log-start',
        'nvme smart-log /dev/$ctrl | grep -E "^(critical_warning|temperature)"',
        'echo smart-log-end',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
      onOutput: process.env.PCINET_E2E_DEBUG ? (c) => process.stderr.write(c) : undefined,
      onPhase: process.env.PCINET_E2E_DEBUG
        ? (p) => console.error(`phase ${p.name} ${p.detail} ${p.ms}`)
        : undefined,
      card: async (card) => {
        trace = spawn(
          process.execPath,
          [CLI, 'trace', '--socket', card.controlSocket, '-w', capture, '--snaplen', '1024'],
          {
            stdio: ['ignore', 'ignore', 'pipe'],
          },
        );
        trace.stderr!.on('data', (d) => (traceErr += d));
        const started = Date.now();
        while (!traceErr.includes('capturing') && Date.now() - started < 60_000)
          await new Promise((res) => setTimeout(res, 100));
        expect(traceErr).toMatch(/capturing/);
        const port = startCardControl(card, async (word) => {
          if (word !== 'status') throw new Error(`unknown command ${word}`);
          const s = spawnSync(
            process.execPath,
            [CLI, 'status', '--socket', card.controlSocket, '--json', '--interval', '2000'],
            {
              encoding: 'utf8',
            },
          );
          cardStatus.push(s.stdout || s.stderr);
        });
        return async () => {
          port.stdin!.end();
          port.kill();
          const done = new Promise((res) => trace!.once('close', res));
          trace!.kill('SIGINT');
          await done;
        };
      },
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.code, out).toBe(0);
    console.log(
      r.stdout
        .split('\n')
        .filter((l) => !l.startsWith('status-json'))
        .join('\n'),
    );

    // The workstation's view: bound to nvme, link up on the kernel link, everything moving.
    const host = JSON.parse(/^status-json (.*)$/m.exec(r.stdout)![1]!);
    expect(host).toMatchObject({
      role: 'host',
      channel: 'kernel',
      session: { connected: true, reconnects: 0 },
    });
    expect(host.session.probeRttMs).toBeGreaterThan(0);
    expect(host.devices).toHaveLength(1);
    const d = host.devices[0];
    expect(d).toMatchObject({
      dev: 1,
      model: 'nvme',
      address: r.devices[0],
      driver: 'nvme',
      link: 'up',
      kernelLink: true,
    });
    expect(d.timing.rtt[1]).toBeGreaterThan(0); // pcinet.ko's timing sums, from sysfs
    // ... and its counters: MMIO writes counted, nothing lost or dropped on a healthy run.
    expect(d.kernelCounters.mmio_writes).toBeGreaterThan(0);
    expect(d.kernelCounters).toMatchObject({ lost_records: 0, queue_drops: 0, stalls: 0 });
    const rates = host.rates['1'];
    for (const k of ['iops', 'ioBps', 'dmaReadBps', 'dmaWriteBps', 'irqs'])
      expect(rates[k], k).toBeGreaterThan(0);
    expect(r.stdout).toMatch(new RegExp(`^1 +${r.devices[0]} +nvme +nvme +up +kernel-link +`, 'm'));

    // The card's view of the same moment.
    expect(cardStatus).toHaveLength(1);
    const card = JSON.parse(cardStatus[0]!);
    expect(card).toMatchObject({
      role: 'endpoint',
      devices: [{ dev: 1, model: 'nvme', address: r.devices[0], link: 'up', kernelLink: true }],
    });
    expect(card.rates['1'].iops).toBeGreaterThan(0);

    // The trace: smart-log's Get Log Page went in (pushed with its doorbell, or read by DMA), its
    // 512-byte log and completion came out by DMA, then the interrupt; all on the kernel link.
    expect(traceErr).toMatch(/trace: \d+ messages \(stopped: interrupted\)/);
    const recs = readCapture(capture).packets.map(([, b]) => decodeRecord(b));
    const sqeIn = (rec: TraceRecord) => {
      const data =
        rec.kind === 'push'
          ? rec.msg.push!.data
          : rec.kind === 'dmaReadCpl'
            ? rec.msg.dmaReadCpl!.data
            : undefined;
      if (!data) return false;
      for (let at = 0; at + 64 <= data.length; at += 64)
        if (data[at] === GET_LOG_PAGE && data[at + 40] === LID_SMART) return true;
      return false;
    };
    const cmd = recs.findIndex(sqeIn);
    expect(cmd, `no Get Log Page (SMART) among ${recs.length} records`).toBeGreaterThan(0);
    const after = recs.slice(cmd);
    const doorbell = after.findIndex(
      (x) => x.kind === 'mmioWrite' && u64(x.msg.mmioWrite!.offset) >= 0x1000n,
    );
    const log = after.findIndex((x) => x.kind === 'dmaWrite' && x.origLen === 512);
    const irq = after.findIndex((x, i) => i > log && x.kind === 'interrupt');
    expect(doorbell).toBeGreaterThanOrEqual(0);
    expect(log).toBeGreaterThan(doorbell);
    expect(irq).toBeGreaterThan(log);
    expect(after[doorbell]!.flags & (TF_LINK | TF_TO_HOST)).toBe(TF_LINK);
    expect(after[log]!.flags & (TF_LINK | TF_TO_HOST)).toBe(TF_LINK | TF_TO_HOST);
    // The attach itself travelled on the session.
    expect(recs.find((x) => x.kind === 'attach')!.flags & TF_LINK).toBe(0);

    // tshark decodes the same packets.
    const ts = spawnSync(
      'tshark',
      [
        '-X',
        `lua_script:${join(repoRoot(), 'packaging/wireshark/pcinet.lua')}`,
        '-r',
        capture,
        '-Y',
        'pcinet.link == 1 && pcinet.dma_write.data',
        '-T',
        'fields',
        '-e',
        'pcinet.payload_len',
      ],
      { encoding: 'utf8', maxBuffer: 256 << 20 },
    );
    expect(ts.status, ts.stderr).toBe(0);
    expect(ts.stdout.split('\n')).toContain('512');
  });
});
