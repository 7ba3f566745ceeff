// The host-agent's status (host-agent/status.ts) on a live in-process session: endpoint runtime
// and test device, loop transport, relay, sim channel, the test driver's selftest for traffic;
// `pcinet status` (cli/status.ts) reads it through a control socket. The endpoint's side too.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { formatStatus, runStatus } from '../cli/status.js';
import { TestDevice } from '../devices/test/device.js';
import { endpointControl, endpointStatus } from '../endpoint/control.js';
import { EndpointServer } from '../endpoint/server.js';
import { listenControl } from '../proto/control.js';
import type { StatusSnapshot } from '../proto/status.js';
import { decodeRecord, TF_HOST_SIDE, TF_LINK, TF_TO_HOST, type TraceRecord } from '../proto/trace.js';
import type { Parking } from './parking.js';
import { loopHost } from './sim/loop-host.js';
import { TestDriver } from './sim/test-driver.js';
import { boundDriver, HostStatus, readKernelCounters, readTiming } from './status.js';

const log = pino({ level: 'silent' });
const dir = mkdtempSync(join(tmpdir(), 'pcinet-status-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

describe('what the host-agent reads from sysfs', () => {
  it('the bound driver and pcinet.ko’s timing sums of a function', () => {
    const sys = join(dir, 'sys');
    mkdirSync(join(sys, '0000:10:00.0'), { recursive: true });
    mkdirSync(join(sys, '0000:11:00.0'), { recursive: true });
    mkdirSync(join(dir, 'drivers', 'nvme'), { recursive: true });
    symlinkSync(join(dir, 'drivers', 'nvme'), join(sys, '0000:10:00.0', 'driver'));
    writeFileSync(join(sys, '0000:10:00.0', 'pcinet_timing'), 'mmio 1200 3\nqueue 0 0\nrtt 99000 4\n');
    expect(boundDriver('0000:10:00.0', sys)).toBe('nvme');
    expect(boundDriver('0000:11:00.0', sys)).toBe('');
    expect(boundDriver('0000:12:00.0', sys)).toBeUndefined();
    expect(readTiming('0000:10:00.0', sys)).toEqual({ mmio: [1200, 3], queue: [0, 0], rtt: [99000, 4] });
    expect(readTiming('0000:11:00.0', sys)).toBeUndefined();
  });

  it('pcinet.ko’s counters: shown in status, and a loss logged once as it grows', async () => {
    const sys = join(dir, 'sys-counters');
    const address = '0000:10:00.0';
    mkdirSync(join(sys, address), { recursive: true });
    const counters = (lost: number, stalls: number) =>
      writeFileSync(
        join(sys, address, 'pcinet_counters'),
        `mmio_writes 812\nlost_records ${lost}\nqueue_drops 0\nstalls ${stalls}\nstall_fails 9\n`,
      );
    counters(0, 0);
    expect(readKernelCounters(address, sys)).toEqual({
      mmio_writes: 812,
      lost_records: 0,
      queue_drops: 0,
      stalls: 0,
      stall_fails: 9,
    });
    expect(readKernelCounters('0000:11:00.0', sys)).toBeUndefined();

    const status = new HostStatus({ address: 'tcp://card:7470', channel: 'kernel', sys });
    status.parking = { list: [{ dev: 1, model: 'nvme', address }] } as unknown as Parking;
    const warned: { o: Record<string, unknown>; msg: string }[] = [];
    const warnLog = { warn: (o: Record<string, unknown>, msg: string) => warned.push({ o, msg }) };
    status.checkKernel(warnLog);
    expect(warned).toEqual([]);
    counters(3, 1);
    status.checkKernel(warnLog);
    expect(warned.map((w) => w.msg)).toEqual([
      'pcinet.ko: 3 records lost: out of memory in atomic context',
      'pcinet.ko: 1 times the device stopped answering',
    ]);
    expect(warned[0]!.o).toEqual({ address, counter: 'lost_records', added: 3, total: 3 });
    status.checkKernel(warnLog);
    expect(warned).toHaveLength(2);

    const snap = await status.snapshot();
    expect(snap.devices[0]!.kernelCounters).toMatchObject({ lost_records: 3, stalls: 1 });
    expect(formatStatus(snap, undefined)).toMatch(/^dev 1 pcinet\.ko: lost_records 3, stalls 1$/m);
  });
});

describe('status of a live session', () => {
  it('host and endpoint: devices, session, and rates that move while the driver works', {
    timeout: 60_000,
  }, async () => {
    const server = new EndpointServer({ models: [new TestDevice({ vectors: 8 })], log });
    const { channel, session, relay } = await loopHost((t) => server.accept(t), log);
    const status = new HostStatus({ address: 'loop', channel: 'sim' });
    status.opened(session, relay);
    const hostSock = join(dir, 'host.sock');
    const epSock = join(dir, 'endpoint.sock');
    const ctl = [
      await listenControl(hostSock, 'host', status.handlers()),
      await listenControl(epSock, 'endpoint', endpointControl(server)),
    ];
    cleanup.push(async () => {
      for (const c of ctl) await c.close();
      await session.close();
      await server.close();
      await channel.close();
    });

    // The driver keeps the device busy while status takes its two snapshots. Status starts only
    // once the device has answered a self-test, so both processes list it in the first snapshot
    // (on a busy machine the endpoint's attach can land after a snapshot taken at once). The loop
    // runs until both snapshots are taken, bounded in count.
    let busy = true;
    const fn = channel.functions[0]!;
    const d = new TestDriver(fn, channel.memory, channel.iommu);
    d.probe();
    await d.selftest();
    expect(endpointStatus(server)).toMatchObject({ devices: [{ dev: 1, link: 'up' }] });
    const work = (async () => {
      for (let i = 0; busy && i < 100_000; i++) await d.selftest();
    })();
    let out = '';
    await runStatus({ socket: [hostSock, epSock], json: true, watch: false, interval: 500 }, (t) => {
      out += t;
    });
    busy = false;
    await work;
    const [host, ep] = JSON.parse(out) as (StatusSnapshot & {
      rates: Record<string, { mmio: number; irqs: number; dmaWriteBps: number }>;
    })[];
    expect(host!.role).toBe('host');
    expect(host!.devices).toMatchObject([
      { dev: 1, model: 'test', address: 'sim:00:00.0', link: 'up', kernelLink: false },
    ]);
    expect(host!.session).toMatchObject({ connected: true, reconnects: 0, peerAgent: 'pcinet-endpoint' });
    expect(host!.session!.probeRttMs).toBeGreaterThan(0);
    expect(host!.session!.framesOut).toBeGreaterThan(0);
    // The endpoint's counters reached the host (StatsRequest) and moved between the snapshots.
    expect(host!.devices[0]!.counters.mmioWrites).toBeGreaterThan(0);
    expect(host!.rates['1']!.mmio).toBeGreaterThan(0);
    expect(host!.rates['1']!.irqs).toBeGreaterThan(0);
    expect(ep!.role).toBe('endpoint');
    expect(ep!.devices).toMatchObject([{ dev: 1, model: 'test', address: 'sim:00:00.0', link: 'up' }]);
    expect(ep!.rates['1']!.mmio).toBeGreaterThan(0);

    // The table a person reads.
    let text = '';
    await runStatus({ socket: [hostSock], json: false, watch: true, count: 2, interval: 100 }, (t) => {
      text += t;
    });
    expect(text).toMatch(/^pcinet host \(pid \d+, up \d+s\) {2}endpoint loop {2}channel sim$/m);
    expect(text).toMatch(/^DEV +ADDRESS +MODEL +DRIVER +LINK +PATH +MMIO\/s/m);
    expect(text).toMatch(/^1 +sim:00:00\.0 +test +- +up +session /m);
    expect(text).toMatch(/stats probe/);
  });
});

describe('trace on the host-agent', () => {
  it('records the session’s messages both ways, marked as the host’s; nothing once it ends', {
    timeout: 60_000,
  }, async () => {
    const server = new EndpointServer({ models: [new TestDevice({ vectors: 8 })], log });
    const { channel, session, relay } = await loopHost((t) => server.accept(t), log);
    cleanup.push(async () => {
      await session.close();
      await server.close();
      await channel.close();
    });
    const status = new HostStatus({ address: 'loop', channel: 'sim' });
    status.opened(session, relay);
    expect(session.tap).toBeUndefined();
    const got: TraceRecord[] = [];
    const stop = status.trace.subscribe({
      sink: (records) => {
        for (const [, r] of records) got.push(decodeRecord(r));
        return true;
      },
    });
    expect(session.tap).toBe(status.trace);
    const d = new TestDriver(channel.functions[0]!, channel.memory, channel.iommu);
    d.probe();
    expect((await d.selftest()).filter((c) => !c.ok)).toEqual([]);
    await new Promise((r) => setImmediate(r));
    stop();
    expect(session.tap).toBeUndefined();
    const dir = (kind: string) =>
      new Set(got.filter((r) => r.kind === kind).map((r) => r.flags & (TF_TO_HOST | TF_HOST_SIDE | TF_LINK)));
    expect(dir('mmioWrite')).toEqual(new Set([TF_HOST_SIDE]));
    expect(dir('dmaReadCpl')).toEqual(new Set([TF_HOST_SIDE]));
    expect(dir('interrupt')).toEqual(new Set([TF_HOST_SIDE | TF_TO_HOST]));
    expect(dir('dmaRead')).toEqual(new Set([TF_HOST_SIDE | TF_TO_HOST]));
    const n = got.length;
    await d.selftest();
    expect(got.length).toBe(n);
  });
});
