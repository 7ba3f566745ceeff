// The Wireshark dissector (packaging/wireshark/pcinet.lua) run by tshark on a capture of a live
// session (endpoint runtime and test device, loop transport, relay, sim channel, the test
// driver's selftest), plus records of the kinds that session does not make (kernel link, cut
// payloads): every packet decodes to what proto/trace.ts says it holds, and display filters work.
// tshark is installed here if missing (Debian's package, as root, like .ci/run); if it cannot be,
// the test fails naming it: it never skips.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaptureWriter, readCapture } from '../cli/pcapng.js';
import { TestDevice } from '../devices/test/device.js';
import { EndpointServer } from '../endpoint/server.js';
import { loopHost } from '../host-agent/sim/loop-host.js';
import { TestDriver } from '../host-agent/sim/test-driver.js';
import { repoRoot } from '../lab/paths.js';
import {
  decodeRecord,
  encodeRecord,
  TF_HOST_SIDE,
  TF_LINK,
  TF_TO_HOST,
  TF_TRUNCATED,
} from '../proto/trace.js';
import { long } from '../proto/wire.js';
import { ensureTshark } from './tshark.js';

const LUA = join(repoRoot(), 'packaging/wireshark/pcinet.lua');
const dir = mkdtempSync(join(tmpdir(), 'pcinet-dissector-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = pino({ level: 'silent' });

function tshark(args: string[]): string {
  const r = spawnSync('tshark', ['-X', `lua_script:${LUA}`, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`tshark ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  // A Lua error in the dissector is printed, not fatal: fail on it.
  expect(r.stderr).not.toMatch(/Lua|Error/);
  return r.stdout;
}

const snake = (s: string) => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();

describe('the Wireshark dissector', () => {
  const file = join(dir, 'session.pcapng');
  beforeAll(async () => {
    ensureTshark();
    const server = new EndpointServer({ models: [new TestDevice({ vectors: 8 })], log });
    const w = new CaptureWriter({ path: file, maxBytes: 64 << 20, ring: 0, snaplen: 128, name: 'test' });
    const stop = server.trace.subscribe({
      snaplen: 128,
      sink: (records) => {
        for (const [us, r] of records) w.write(us, r);
        return true;
      },
    });
    const { channel, session } = await loopHost((t) => server.accept(t), log);
    const d = new TestDriver(channel.functions[0]!, channel.memory, channel.iommu);
    d.probe();
    expect((await d.selftest()).filter((c) => !c.ok)).toEqual([]);
    await session.close();
    await server.close();
    await channel.close();
    stop();
    // What this session did not do: a kernel link's cut DMA write, a host-side record, a stats reply.
    const t = Date.now() * 1000;
    const big = new Uint8Array(8192).fill(0xa5);
    w.write(
      t,
      encodeRecord(
        { dmaWrite: { dev: 2, iova: long(0xfeed_f000n), data: big } },
        TF_TO_HOST | TF_LINK,
        2,
        64,
      ),
    );
    w.write(
      t + 1,
      encodeRecord(
        { stats: { nonce: long(7), counters: [{ name: 'dev1.mmioWrites', value: long(42) }] } },
        TF_TO_HOST | TF_HOST_SIDE,
        0,
        64,
      ),
    );
    w.close(t + 2);
  }, 600_000);

  it('is what scripts/gen-dissector.mjs writes from proto/pcinet.proto', () => {
    execFileSync(process.execPath, ['scripts/gen-dissector.mjs', '--check'], { cwd: repoRoot() });
  });

  it('decodes every packet of a live session to the record it is', () => {
    const mine = readCapture(file).packets.map(([, b]) => decodeRecord(b));
    expect(mine.length).toBeGreaterThan(100);
    const rows = tshark([
      '-r',
      file,
      '-T',
      'fields',
      '-E',
      'separator=;',
      '-e',
      'pcinet.kind',
      '-e',
      'pcinet.dev',
      '-e',
      'pcinet.to_host',
      '-e',
      'pcinet.link',
      '-e',
      'pcinet.truncated',
      '-e',
      'pcinet.payload_len',
      '-e',
      '_ws.col.Info',
    ])
      .trim()
      .split('\n');
    expect(rows.length).toBe(mine.length);
    const flag = (v: string) => v === '1' || v === 'True';
    rows.forEach((row, i) => {
      const [kind, dev, toHost, link, cut, payload, info] = row.split(';');
      const r = mine[i]!;
      expect(
        {
          kind,
          dev: Number(dev),
          toHost: flag(toHost!),
          link: flag(link!),
          cut: flag(cut!),
          payload: Number(payload),
        },
        `packet ${i + 1}: ${info}`,
      ).toEqual({
        kind: snake(r.kind!),
        dev: r.dev,
        toHost: !!(r.flags & TF_TO_HOST),
        link: !!(r.flags & TF_LINK),
        cut: !!(r.flags & TF_TRUNCATED),
        payload: r.origLen,
      });
      expect(info).not.toMatch(/malformed/);
    });
    const kinds = new Set(mine.map((r) => r.kind));
    for (const k of [
      'attach',
      'attachResult',
      'mmioWrite',
      'mmioRead',
      'mmioReadCpl',
      'dmaRead',
      'dmaReadCpl',
      'dmaWrite',
      'interrupt',
      'shadowUpdate',
      'writesApplied',
      'detach',
      'stats',
    ])
      expect(kinds, k).toContain(k);
  });

  it('shows fields by name, with filters on them', () => {
    const writes = readCapture(file)
      .packets.map(([, b], i) => ({ i: i + 1, r: decodeRecord(b) }))
      .filter(({ r }) => r.kind === 'mmioWrite' && Number(r.msg.mmioWrite!.offset) === 0x8);
    expect(writes.length).toBeGreaterThan(0);
    const frames = tshark([
      '-r',
      file,
      '-Y',
      'pcinet.mmio_write.offset == 0x8 && pcinet.to_host == 0',
      '-T',
      'fields',
      '-e',
      'frame.number',
    ])
      .trim()
      .split('\n')
      .map(Number);
    expect(frames).toEqual(writes.map((w) => w.i));
    const v = tshark(['-r', file, '-Y', 'pcinet.link == 1 && pcinet.kind == "dma_write"', '-V']);
    expect(v).toMatch(/pcinet, DmaWrite, device to host link/);
    expect(v).toMatch(/iova: 0x00000000feedf000/);
    expect(v).toMatch(/Payload length before truncation: 8192/);
    expect(v).toMatch(/data: (a5){24,}/);
    const s = tshark(['-r', file, '-Y', 'pcinet.host_side == 1', '-V']);
    expect(s).toMatch(/name: dev1\.mmioWrites/);
    expect(s).toMatch(/value: 42/);
    const list = tshark(['-r', file, '-Y', 'pcinet.kind == "interrupt"']);
    expect(list).toMatch(/dev1 → host +pcinet \d+ session Interrupt vector=\d+/);
  });
});
