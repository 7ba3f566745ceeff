// Record and replay through the whole endpoint: a model served to the sim host (session, push
// rules, virtqueue rounds, the runtime's DMA tags) is traced as `pcinet trace --for-replay` does,
// into a pcapng file; the replay device loaded from that file is served to a new sim host whose
// IOVAs are elsewhere, and the same driver must get the same answers with no divergence. A driver
// that does one thing differently is told where.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CaptureWriter } from '../cli/pcapng.js';
import type { DeviceModel } from '../devices/host-port.js';
import { PCI_MSIX_ENTRY_SIZE, PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE } from '../devices/pci/caps.js';
import {
  PCI_CAP_ID_MSIX,
  PCI_COMMAND,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  walkCaps,
} from '../devices/pci/config.js';
import { rd16, rd32, wr16, wr32, wr64 } from '../devices/pci/le.js';
import { ReplayDevice } from '../devices/replay/device.js';
import { compile } from '../devices/replay/script.js';
import { TestDevice } from '../devices/test/device.js';
import { REG } from '../devices/test/regs.js';
import {
  CC,
  NOTIFY,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
} from '../devices/virtio/pci.js';
import { VirtioRng } from '../devices/virtio-rng/device.js';
import type { SimFunction } from '../host-agent/sim/function.js';
import type { HostBuffer, SimMemory, SoftIommu } from '../host-agent/sim/iommu.js';
import { type LoopHost, loopHost } from '../host-agent/sim/loop-host.js';
import { TestDriver } from '../host-agent/sim/test-driver.js';
import { MAX_SNAPLEN } from '../proto/trace.js';
import { endpointStatus } from './control.js';
import { DEVICES, deviceHelp, parseDeviceSpec } from './device-spec.js';
import { loadReplayTrace, ReplayTraceError } from './replay-trace.js';
import { EndpointServer } from './server.js';

const log = pino({ level: 'silent' });
const dir = mkdtempSync(join(tmpdir(), 'pcinet-replay-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

let files = 0;

/** Serves `models` to a sim host, traced as `pcinet trace --for-replay` does from before the host
 *  connects; `drive` uses the host; its host-agent then detaches in order. Returns the capture. */
async function record<T>(
  models: DeviceModel[],
  drive: (h: LoopHost) => Promise<T>,
  o: { snaplen?: number; devs?: number[]; late?: boolean } = {},
): Promise<{ file: string; result: T }> {
  const file = join(dir, `rec-${files++}.pcapng`);
  const snaplen = o.snaplen ?? MAX_SNAPLEN;
  const writer = new CaptureWriter({ path: file, maxBytes: 64 << 20, ring: 0, snaplen, name: 'test' });
  const server = new EndpointServer({ models, log });
  const trace = () =>
    server.trace.subscribe({
      snaplen,
      filter: { devs: o.devs },
      sink: (records, dropped) => {
        for (const [us, r] of records) writer.write(us, r);
        writer.dropped += dropped;
        return true;
      },
    });
  let stop = o.late ? undefined : trace();
  const host = await loopHost((t) => server.accept(t), log);
  if (o.late) stop = trace();
  try {
    const result = await drive(host);
    await host.relay.detachAll();
    await host.session.close();
    await new Promise((r) => setTimeout(r, 20));
    return { file, result };
  } finally {
    stop!();
    writer.close(Date.now() * 1000);
    await host.channel.close();
    await server.close();
  }
}

/** The replay of `file` served to a new sim host whose IOVAs start `shift` pages further on. */
async function replay(file: string, o: { strict?: boolean; shift?: number; device?: number } = {}) {
  const model = new ReplayDevice(loadReplayTrace(file, o.device), { strict: o.strict });
  const server = new EndpointServer({ models: [model], log });
  cleanup.push(() => server.close());
  const host = await loopHost((t) => server.accept(t), log);
  cleanup.push(async () => {
    await host.session.close();
    await host.channel.close();
  });
  // Mappings nobody uses: every IOVA the driver gets is elsewhere than in the recording.
  host.channel.iommu.map(host.channel.memory.alloc(4096 * (o.shift ?? 5)), 'bidirectional');
  return { model, server, host };
}

const settle = () => new Promise((r) => setTimeout(r, 5));

/** Waits for `done`, or gives up once `stop` says so. The bound is for a wedged run only: a healthy
 *  one ends when `done` holds, however busy the machine. */
async function until(
  what: string,
  done: () => boolean | Promise<boolean>,
  stop: () => boolean = () => false,
  ms = 5 * 60_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await done())) {
    if (stop()) throw new Error(`${what}: given up`);
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await settle();
  }
}

// ---- a virtio-rng driver on the sim host, as Linux's virtio_pci and virtio-rng do it ----

const QSIZE = 16;
const VRING_DESC_F_WRITE = 2;
const VRING_DESC_F_INDIRECT = 4;

class SimRngDriver {
  readonly irqs: number[] = [];
  #ring!: { buf: HostBuffer; desc: bigint; avail: bigint; used: bigint };
  #avail = 0;

  constructor(
    readonly fn: SimFunction,
    readonly memory: SimMemory,
    readonly iommu: SoftIommu,
  ) {
    fn.onInterrupt = (v) => this.irqs.push(v);
  }

  async probe(): Promise<void> {
    const f = this.fn;
    f.configWrite(PCI_COMMAND, 2, f.configRead(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    const cap = walkCaps(f.config).find((c) => c.id === PCI_CAP_ID_MSIX)!;
    const table = f.configRead(cap.offset + 4, 4) & ~7;
    for (let v = 0; v < f.vectors; v++) {
      const at = table + v * PCI_MSIX_ENTRY_SIZE;
      f.write32(0, at, 0xfee0_0000);
      f.write32(0, at + 4, 0);
      f.write32(0, at + 8, v);
      f.write32(0, at + 12, 0);
    }
    f.configWrite(
      cap.offset + PCI_MSIX_FLAGS,
      2,
      f.configRead(cap.offset + PCI_MSIX_FLAGS, 2) | PCI_MSIX_FLAGS_ENABLE,
    );
    const status = (v: number) => f.write(0, CC.STATUS, Uint8Array.of(v));
    status(0);
    status(STATUS_ACKNOWLEDGE);
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const feature = async (sel: number) => {
      f.write32(0, CC.DFSELECT, sel);
      return f.read32(0, CC.DF);
    };
    const lo = await feature(0);
    const hi = await feature(1);
    f.write32(0, CC.GFSELECT, 0);
    f.write32(0, CC.GF, lo);
    f.write32(0, CC.GFSELECT, 1);
    f.write32(0, CC.GF, hi);
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!((await f.read(0, CC.STATUS, 1))[0]! & STATUS_FEATURES_OK)) throw new Error('features refused');
    // One page: descriptors, then the driver area, then the device area.
    const buf = this.memory.alloc(4096);
    const desc = this.iommu.map(buf, 'bidirectional');
    this.#ring = { buf, desc, avail: desc + 0x400n, used: desc + 0x800n };
    f.write(0, CC.Q_SELECT, Uint8Array.of(0, 0));
    f.write(0, CC.Q_SIZE, Uint8Array.of(QSIZE, 0));
    f.write(0, CC.Q_MSIX, Uint8Array.of(1, 0));
    for (const [reg, v] of [
      [CC.Q_DESC, this.#ring.desc],
      [CC.Q_AVAIL, this.#ring.avail],
      [CC.Q_USED, this.#ring.used],
    ] as const) {
      f.write32(0, reg, Number(v & 0xffffffffn));
      f.write32(0, reg + 4, Number(v >> 32n));
    }
    f.write(0, CC.Q_ENABLE, Uint8Array.of(1, 0));
    f.write(0, CC.MSIX, Uint8Array.of(0, 0));
    status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  }

  usedIdx(): number {
    return rd16(this.#ring.buf.bytes, 0x802);
  }

  #abandoned = false;
  /** A request still waiting gives up (rejects): for a device that will never answer. */
  abandon(): void {
    this.#abandoned = true;
  }

  /** One request of `len` bytes into a buffer at `offset` of a fresh page: the bytes it got.
   *  `indirect`: the buffer is named by an indirect descriptor table, in a page of its own.
   *  `again`: the driver notifies once more when it is done, with nothing new (an idle kick). */
  async request(len: number, offset = 0x10, indirect = false, again = false): Promise<Uint8Array> {
    const page = this.memory.alloc(4096);
    const iova = this.iommu.map(page, 'from-device', offset, len);
    const m = this.#ring.buf.bytes;
    const head = this.#avail % QSIZE;
    const desc = (at: Uint8Array, i: number, addr: bigint, n: number, flags: number) => {
      wr64(at, i * 16, addr);
      wr32(at, i * 16 + 8, n);
      wr16(at, i * 16 + 12, flags);
      wr16(at, i * 16 + 14, 0);
    };
    if (indirect) {
      const table = this.memory.alloc(4096);
      desc(table.bytes.subarray(0x40), 0, iova, len, VRING_DESC_F_WRITE);
      desc(m, head, this.iommu.map(table, 'to-device', 0x40, 16), 16, VRING_DESC_F_INDIRECT);
    } else desc(m, head, iova, len, VRING_DESC_F_WRITE);
    wr16(m, 0x400 + 4 + 2 * (this.#avail % QSIZE), head);
    this.#avail++;
    wr16(m, 0x402, this.#avail);
    const before = this.usedIdx();
    this.fn.write(0, NOTIFY, Uint8Array.of(0, 0));
    await until(
      'the request',
      () => this.usedIdx() !== before,
      () => this.#abandoned,
    );
    const got = rd32(m, 0x800 + 4 + 8 * (before % QSIZE) + 4);
    // used_event: interrupt me when the next one is used (VIRTIO_RING_F_EVENT_IDX).
    wr16(m, 0x400 + 4 + 2 * QSIZE, this.usedIdx());
    if (again) {
      this.fn.write(0, NOTIFY, Uint8Array.of(0, 0));
      await settle();
    }
    return page.bytes.slice(offset, offset + got);
  }
}

async function rngSession(
  h: LoopHost,
  sizes: number[],
  offset = 0x10,
  indirect = false,
  again: number[] = [],
) {
  const d = new SimRngDriver(h.channel.functions[0]!, h.channel.memory, h.channel.iommu);
  await d.probe();
  const bytes: number[][] = [];
  for (const [i, n] of sizes.entries())
    bytes.push([...(await d.request(n, offset, indirect, again.includes(i)))]);
  await until('the last interrupt', () => d.irqs.length >= sizes.length);
  return { bytes, irqs: d.irqs.length, status: (await d.fn.read(0, CC.STATUS, 1))[0]! };
}

// ---- the test device, through the sim host's test driver ----

async function testSession(h: LoopHost) {
  const fn = h.channel.functions[0]!;
  const d = new TestDriver(fn, h.channel.memory, h.channel.iommu);
  d.probe();
  fn.write32(0, REG.SCRATCH, 0xfeed);
  const counter = [await fn.read32(0, REG.COUNTER), await fn.read32(0, REG.COUNTER)];
  const checks = [await d.dmaRead(3000, 11, 1), await d.dmaWrite(5000, 12, 2), await d.dmaRead(100, 13, 1)];
  return { counter, checks: checks.map((c) => [c.name, c.ok]), irqs: [...d.irqCounts] };
}

describe('record and replay through the endpoint', () => {
  it('the test device: DMA addresses from its registers are relocated, every answer the same', async () => {
    const { file, result } = await record([new TestDevice()], testSession);
    expect(result.checks).toEqual([
      ['dma.read 3000', true],
      ['dma.write 5000', true],
      ['dma.read 100', true],
    ]);
    const { model, host } = await replay(file);
    expect(await testSession(host)).toEqual(result);
    expect(model.divergence).toBeUndefined();
    expect(model.counters().relocations).toBeGreaterThanOrEqual(3);
  });

  it('virtio-rng: pushes, rounds and a buffer elsewhere in its page; the recorded bytes come back', async () => {
    const { file, result } = await record([new VirtioRng({ source: { fill: (b) => b.fill(0x5a) } })], (h) =>
      rngSession(h, [64, 64, 32]),
    );
    expect(result.bytes.map((b) => b.length)).toEqual([64, 64, 32]);
    const rec = loadReplayTrace(file);
    // The first notify came before the host had the queue's push rule: the device read the rings
    // by DMA; after that they were pushed with each notify, and the host ended every round.
    const count = (kind: string) => rec.records.filter((r) => r.kind === kind).length;
    expect(count('dmaRead')).toBe(2);
    expect(count('push')).toBeGreaterThanOrEqual(4);
    expect(count('virtqRound')).toBeGreaterThanOrEqual(3);
    const { model, server, host } = await replay(file);
    const again = await rngSession(host, [64, 64, 32], 0x910);
    expect(again).toEqual(result);
    expect(model.divergence).toBeUndefined();
    expect(endpointStatus(server, [model]).notes).toEqual([
      expect.stringMatching(/^dev 1: replay at record \d+ of .*rec-\d+\.pcapng, device 1: no divergence$/),
    ]);
    // The host pushed the live rings, and the replay read them from those pushes.
    const c = server.active!.runtime.counters();
    expect(c['dev1.pushHits']).toBeGreaterThanOrEqual(4);
    expect(c['dev1.dmaReads']).toBe(2);
  });

  it('virtio-rng through indirect tables: each pushed table is read once the one naming it was', async () => {
    const { file, result } = await record([new VirtioRng({ source: { fill: (b) => b.fill(0x77) } })], (h) =>
      rngSession(h, [64, 48, 32], 0x10, true),
    );
    const rec = loadReplayTrace(file);
    // Pushed with a notify: the driver area, the descriptor table, then the indirect table it names.
    const pushes = rec.records.filter((r) => r.kind === 'push');
    expect(pushes.some((p) => p.data.length === 16 && rd32(p.data, 8) === 48)).toBe(true);
    const { model, host } = await replay(file);
    expect(await rngSession(host, [64, 48, 32], 0x230, true)).toEqual(result);
    expect(model.divergence).toBeUndefined();
  });

  it('virtio-rng: a kick with nothing new is not compared, whichever run has it', async () => {
    const fill = { fill: (b: Uint8Array) => b.fill(0x33) };
    // Recorded with an idle kick after the second request; replayed without it, and the other way.
    const once = await record([new VirtioRng({ source: fill })], (h) =>
      rngSession(h, [64, 64, 64], 0x10, false, [1]),
    );
    const rec = loadReplayTrace(once.file);
    const idle = compile(rec.records, rec.description).steps.filter((s) => s.op === 'expect' && s.idle);
    expect(idle.length).toBeGreaterThanOrEqual(1);
    const a = await replay(once.file);
    expect(await rngSession(a.host, [64, 64, 64])).toEqual(once.result);
    expect(a.model.divergence).toBeUndefined();
    expect(a.model.counters().idleKicks).toBe(1);

    const plain = await record([new VirtioRng({ source: fill })], (h) => rngSession(h, [64, 64, 64]));
    const b = await replay(plain.file);
    expect(await rngSession(b.host, [64, 64, 64], 0x10, false, [0, 1])).toEqual(plain.result);
    expect(b.model.divergence).toBeUndefined();
    expect(b.model.counters().idleKicks).toBe(2);
  });

  it('virtio-rng: a different read size is reported where the device read the descriptor, and it goes dead', async () => {
    const { file } = await record([new VirtioRng({ source: { fill: (b) => b.fill(1) } })], (h) =>
      rngSession(h, [64, 64]),
    );
    const rec = loadReplayTrace(file);
    // The descriptor table as the device first saw it (read by DMA: the rule came after the notify).
    const desc = rec.records.find(
      (r) => (r.kind === 'push' || r.kind === 'dmaReadCpl') && r.data.length >= 16 && rd32(r.data, 8) === 64,
    )!;
    expect(desc.kind).toBe('dmaReadCpl');
    const { model, server, host } = await replay(file);
    const d = new SimRngDriver(host.channel.functions[0]!, host.channel.memory, host.channel.iommu);
    await d.probe();
    const used = d.usedIdx();
    const request = d.request(48);
    await until('the divergence', () => model.divergence !== undefined);
    // Strict: the device stopped at the descriptor's read, before it could use the buffer.
    for (let i = 0; i < 20; i++) await settle();
    expect(d.usedIdx()).toBe(used);
    d.abandon();
    await expect(request).rejects.toThrow(/given up/);
    expect(model.divergence).toMatchObject({ record: desc.n, kind: 'dma', offset: 8 });
    expect(model.divergence!.expected).toMatch(/^a DMA read at 0x[0-9a-f]+ \(\+256\): byte 8 is 40000000/);
    expect(model.divergence!.got).toMatch(/^30000000/);
    expect(endpointStatus(server, [model]).notes![0]).toMatch(
      new RegExp(
        `^dev 1: replay diverged at record ${desc.n} \\(\\+\\d+\\.\\d{6} s\\): dma: .* \\(strict: the device no longer answers\\)$`,
      ),
    );
    expect((await d.fn.read(0, CC.STATUS, 1))[0]).toBe(0xff);
  });

  it('picks one device of several, and a capture begun after the attach is refused with the reason', async () => {
    const scratch = async (fn: SimFunction) => {
      fn.configWrite(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
      fn.write32(0, REG.SCRATCH, 7);
    };
    const { file } = await record([new TestDevice(), new TestDevice({ vectors: 4 })], (h) =>
      scratch(h.channel.functions[1]!),
    );
    expect(() => loadReplayTrace(file)).toThrow(
      `trace ${file}: it holds devices 1, 2: pick one with device=N`,
    );
    expect(loadReplayTrace(file, 2).records.find((r) => r.kind === 'mmioWrite')).toMatchObject({
      offset: REG.SCRATCH,
    });
    expect(() => loadReplayTrace(file, 3)).toThrow(
      `trace ${file}: it holds no messages of device 3 (devices in it: 1, 2)`,
    );
    const late = await record([new TestDevice()], (h) => scratch(h.channel.functions[0]!), { late: true });
    expect(() => loadReplayTrace(late.file, 1)).toThrow(
      /it holds no Attach of device 1: the trace began after the host had attached it; start pcinet trace --for-replay before the host connects/,
    );
  });

  it('refuses captures that are not whole: cut payloads, lost messages, a cut file, not pcapng, none', async () => {
    const { file } = await record([new TestDevice()], testSession, { snaplen: 64 });
    expect(() => loadReplayTrace(file)).toThrow(
      /^trace .*: packet \d+ \(dmaReadCpl\) was cut to the snap length \(3000 bytes of payload\): record with pcinet trace --for-replay/,
    );
    const whole = await record([new TestDevice()], testSession);
    const bytes = readFileSync(whole.file);
    const cut = join(dir, 'cut.pcapng');
    writeFileSync(cut, bytes.subarray(0, bytes.length - 100));
    expect(() => loadReplayTrace(cut)).toThrow(
      new RegExp(
        `^trace ${cut}: cut at byte ${bytes.length - 100}: block \\d+ \\(\\w+ \\w+ \\w+\\) at byte \\d+ has \\d+ bytes, only \\d+ are there`,
      ),
    );
    const text = join(dir, 'text.pcapng');
    writeFileSync(text, 'hello, world\n');
    expect(() => loadReplayTrace(text)).toThrow(
      `trace ${text}: not a pcapng file (it starts with 68656c6c6f2c2077)`,
    );
    expect(() => loadReplayTrace(join(dir, 'absent.pcapng'))).toThrow(/absent\.pcapng: no such file$/);
    // A capture that could not keep up.
    const lossy = join(dir, 'lossy.pcapng');
    const w = new CaptureWriter({ path: lossy, maxBytes: 1 << 20, ring: 0, snaplen: MAX_SNAPLEN, name: 't' });
    for (const p of readCaptureRecords(whole.file)) w.write(p[0], p[1]);
    w.dropped = 3;
    w.close(Date.now() * 1000);
    expect(() => loadReplayTrace(lossy)).toThrow(
      `trace ${lossy}: the capture lost 3 messages (the trace could not keep up): a replay needs every one; capture again with less traffic on the endpoint`,
    );
    expect(loadReplayTrace(whole.file)).toBeInstanceOf(Object);
    expect(() => loadReplayTrace(whole.file, undefined, 1000)).toThrow(
      `trace ${whole.file}: ${bytes.length} bytes, more than a replay holds (1000): record a bring-up, not bulk I/O`,
    );
    expect(() => loadReplayTrace(text)).toThrow(ReplayTraceError);
  });
});

function readCaptureRecords(file: string): [number, Uint8Array][] {
  // The writer's own reader is lenient; any will do for copying a good capture.
  const b = readFileSync(file);
  const out: [number, Uint8Array][] = [];
  for (let at = 0; at + 12 <= b.length; ) {
    const type = b.readUInt32LE(at);
    const len = b.readUInt32LE(at + 4);
    if (type === 6) {
      const us = b.readUInt32LE(at + 12) * 2 ** 32 + b.readUInt32LE(at + 16);
      out.push([us, b.subarray(at + 28, at + 28 + b.readUInt32LE(at + 20))]);
    }
    at += len;
  }
  return out;
}

describe('the replay device spec', () => {
  it('is a model --device knows, with its options in the help, and says what it needs', async () => {
    expect(DEVICES.replay).toBeDefined();
    expect(deviceHelp()).toMatch(/^replay {2}a session recorded with pcinet trace --for-replay/m);
    expect(deviceHelp()).toContain('replay:trace=PATH');
    expect(() => parseDeviceSpec('replay')).toThrow(
      'device "replay": replay needs trace=FILE, a capture of pcinet trace --for-replay',
    );
    expect(() => parseDeviceSpec('replay:trace=rel.pcapng')).toThrow('trace must be an absolute path');
    expect(() => parseDeviceSpec(`replay:trace=${dir}/none.pcapng`)).toThrow(
      `device "replay:trace=${dir}/none.pcapng": trace ${dir}/none.pcapng: no such file`,
    );
    const { file } = await record([new TestDevice()], async () => {});
    const m = parseDeviceSpec(`replay:trace=${file},strict=off`);
    expect(m.description.model).toBe('test');
    expect([...m.description.config]).toEqual([...new TestDevice().description.config]);
  });
});
