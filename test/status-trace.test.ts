// `pcinet status` and `pcinet trace` as a user runs them, against a real `pcinet endpoint` and
// `pcinet host` (sim channel, the test device's selftest for traffic): the built CLI
// (dist/cli/main.js), control sockets in a directory of the test's own.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readCapture } from '../cli/pcapng.js';
import { decodeRecord, LINKTYPE_PCINET, TF_TO_HOST } from '../proto/trace.js';
import { freePort, start, until } from './cli-procs.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-st-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pcinet status and pcinet trace', () => {
  it('trace records the selftest into pcapng and as filtered text; status shows the endpoint', {
    timeout: 90_000,
  }, async () => {
    const port = await freePort();
    const ep = join(dir, 'ep.sock');
    const endpoint = start([
      'endpoint',
      '--listen',
      `127.0.0.1:${port}`,
      '--device',
      'test',
      '--control',
      ep,
    ]);
    await until(() => endpoint.err().includes('endpoint listening'), 20_000, endpoint.err);

    const file = join(dir, 'selftest.pcapng');
    const capture = start(['trace', '--socket', ep, '-w', file]);
    const text = start(['trace', '--socket', ep, '--text', '--kind', 'Interrupt', '--kind', 'dma_read']);
    await until(
      () => capture.err().includes('capturing') && text.err().includes('capturing'),
      20_000,
      () => capture.err() + text.err(),
    );

    const host = start([
      'host',
      '--connect',
      `127.0.0.1:${port}`,
      '--channel',
      'sim',
      '--selftest',
      '--control',
      join(dir, 'host.sock'),
    ]);
    expect(await host.done, host.err()).toBe(0);
    expect(host.out()).toMatch(/selftest sim:00:00\.0: PASS/);

    // The endpoint after its host left: no session, counters gone with it.
    const st = start(['status', '--socket', ep, '--json', '--interval', '100']);
    expect(await st.done, st.err()).toBe(0);
    const snap = JSON.parse(st.out());
    expect(snap).toMatchObject({ role: 'endpoint', session: null, devices: [] });
    expect(snap.address).toBe(`tcp://127.0.0.1:${port}`);

    for (const t of [capture, text]) t.c.kill('SIGINT');
    expect(await capture.done, capture.err()).toBe(0);
    expect(await text.done, text.err()).toBe(0);
    expect(capture.err()).toMatch(/trace: \d+ messages \(stopped: interrupted\); .*selftest\.pcapng/);

    // The capture: the whole session, both directions, every record decodable.
    const c = readCapture(file);
    expect(c.linktype).toBe(LINKTYPE_PCINET);
    const recs = c.packets.map(([, b]) => decodeRecord(b));
    const kinds = new Set(recs.map((r) => r.kind));
    for (const k of [
      'attach',
      'attachResult',
      'configWrite',
      'mmioWrite',
      'shadowUpdate',
      'dmaRead',
      'dmaReadCpl',
      'dmaWrite',
      'interrupt',
      'detach',
    ])
      expect(kinds, k).toContain(k);
    expect(recs.find((r) => r.kind === 'mmioWrite')!.flags & TF_TO_HOST).toBe(0);
    expect(recs.find((r) => r.kind === 'interrupt')!.flags & TF_TO_HOST).toBe(TF_TO_HOST);
    const ts = c.packets.map(([us]) => us);
    expect([...ts].sort((a, b) => a - b)).toEqual(ts);
    expect(Math.abs(ts[0]! / 1000 - Date.now())).toBeLessThan(60_000);

    // The text view kept what it was asked for, decoded.
    const lines = text.out().trim().split('\n');
    expect(lines.length).toBeGreaterThan(5);
    for (const l of lines)
      expect(l).toMatch(
        /^\d\d:\d\d:\d\d\.\d{6} E dev1 dev->host sess (interrupt +vector=\d+|dmaRead +tag=\d+ iova=0x[0-9a-f]+ length=0x[0-9a-f]+)$/,
      );

    // -r prints the file the same way.
    const read = start(['trace', '-r', file]);
    expect(await read.done).toBe(0);
    expect(read.out().trim().split('\n').length).toBe(c.packets.length);
    expect(read.out()).toMatch(/ host->dev sess mmioWrite +bar=0 offset=0x[0-9a-f]+ data\[4\]=/);
    endpoint.c.kill('SIGTERM');
    await endpoint.done;
  });

  it('the control socket comes from the config file; a second process on it is refused, saying why', {
    timeout: 60_000,
  }, async () => {
    const port = await freePort();
    const sock = join(dir, 'from-config.sock');
    const conf = join(dir, 'endpoint.json');
    writeFileSync(conf, JSON.stringify({ listen: `127.0.0.1:${port}`, device: ['test'], control: sock }));
    const endpoint = start(['endpoint', '--config', conf]);
    await until(() => endpoint.err().includes('endpoint listening'), 20_000, endpoint.err);
    const st = start(['status', '--socket', sock, '--json', '--interval', '50']);
    expect(await st.done, st.err()).toBe(0);
    expect(JSON.parse(st.out())).toMatchObject({ role: 'endpoint', pid: endpoint.c.pid });
    /** Another endpoint with the same control socket. */
    const onSocket = async (path: string) =>
      start(['endpoint', '--listen', `127.0.0.1:${await freePort()}`, '--device', 'test', '--control', path]);
    const second = await onSocket(sock);
    expect(await second.done).toBe(1);
    expect(second.err()).toMatch(
      `control socket ${sock} is in use by a running process (another pcinet endpoint?)`,
    );
    // Killed, it leaves its socket behind; the next one takes it over.
    endpoint.c.kill('SIGKILL');
    await endpoint.done;
    const third = await onSocket(sock);
    await until(() => third.err().includes('endpoint listening'), 20_000, third.err);
    const again = start(['status', '--socket', sock, '--json', '--interval', '50']);
    expect(await again.done, again.err()).toBe(0);
    expect(JSON.parse(again.out())).toMatchObject({ role: 'endpoint', pid: third.c.pid });
    third.c.kill('SIGTERM');
    await third.done;
  });

  it('status and trace say what is wrong when nothing listens, and refuse bad filters', async () => {
    const none = start(['status', '--socket', join(dir, 'nothing.sock')]);
    expect(await none.done).toBe(1);
    expect(none.err()).toMatch(/control socket .*nothing\.sock: no such socket/);
    const kind = start(['trace', '--socket', join(dir, 'nothing.sock'), '--kind', 'toaster']);
    expect(await kind.done).toBe(2);
    expect(kind.err()).toMatch(/unknown message kind "toaster"/);
    const range = start(['trace', '--offset', '0x10-0x8']);
    expect(await range.done).toBe(2);
    expect(range.err()).toMatch(/--offset 0x10-0x8: the range is empty/);
  });
});
