// `pcinet trace --for-replay`: what it refuses, and a capture of a whole session, taken from the
// endpoint's control socket as the command does, that the replay device then loads.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { TestDevice } from '../devices/test/device.js';
import { REG } from '../devices/test/regs.js';
import { endpointControl } from '../endpoint/control.js';
import { loadReplayTrace } from '../endpoint/replay-trace.js';
import { EndpointServer } from '../endpoint/server.js';
import { loopHost } from '../host-agent/sim/loop-host.js';
import { listenControl } from '../proto/control.js';
import { UsageError } from './errors.js';
import { runTrace, type TraceFlags } from './trace.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-trace-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = pino({ level: 'silent' });

const flags = (o: Partial<TraceFlags>): TraceFlags => ({
  text: false,
  maxSize: 64 << 20,
  ring: 0,
  snaplen: 256,
  forReplay: true,
  ...o,
});

describe('pcinet trace --for-replay', () => {
  it('refuses what would make a capture the replay cannot use, before it connects', async () => {
    const w = join(dir, 'x.pcapng');
    const socket = join(dir, 'none.sock');
    await expect(runTrace(flags({ socket }))).rejects.toThrow(new UsageError('--for-replay needs -w FILE'));
    await expect(runTrace(flags({ socket, write: w, kind: ['mmioWrite'], ring: 4 }))).rejects.toThrow(
      '--for-replay records every message whole into one file: not with --kind, --ring',
    );
    await expect(runTrace(flags({ socket, write: w, snaplenGiven: true, bar: 0 }))).rejects.toThrow(
      'not with --bar, --snaplen',
    );
  });

  it('captures a session from before the attach to the detach, whole, for the replay device', async () => {
    const server = new EndpointServer({ models: [new TestDevice()], log });
    const socket = join(dir, 'ep.sock');
    const ctl = await listenControl(socket, 'endpoint', endpointControl(server));
    const file = join(dir, 'session.pcapng');
    const err: string[] = [];
    try {
      // The trace first (as the lab's card hook starts it), the host after.
      const traced = runTrace(
        flags({ socket, write: file, device: [1], duration: 3 }),
        () => {},
        (l) => err.push(l),
      );
      while (!err.some((l) => l.includes('capturing'))) await new Promise((r) => setTimeout(r, 10));
      const host = await loopHost((t) => server.accept(t), log);
      const fn = host.channel.functions[0]!;
      fn.configWrite(4, 2, 2);
      const big = new Uint8Array(4096).map((_, i) => i);
      fn.write(2, 0, big); // a string move into BAR 2: more than the default snap length
      fn.write32(0, REG.SCRATCH, 5);
      await host.relay.detachAll();
      await host.session.close();
      await host.channel.close();
      expect(await traced).toBe(0);
      expect(err.join('\n')).not.toMatch(/attached already|cannot be replayed/);
      const rec = loadReplayTrace(file);
      expect(rec.description.model).toBe('test');
      const w = rec.records.find((r) => r.kind === 'mmioWrite' && r.bar === 2);
      expect(w && w.kind === 'mmioWrite' && [...w.data]).toEqual([...big]);
      expect(rec.records.at(-1)).toMatchObject({ kind: 'detach' });

      // Started while a host holds the device: said so.
      const host2 = await loopHost((t) => server.accept(t), log);
      const late: string[] = [];
      expect(
        await runTrace(
          flags({ socket, write: join(dir, 'late.pcapng'), duration: 1 }),
          () => {},
          (l) => late.push(l),
        ),
      ).toBe(0);
      expect(late[0]).toBe(
        'trace: device 1 is attached already: this capture misses its attach and bring-up, which a replay starts from (start the trace before the host connects, or restart pcinet host)',
      );
      await host2.session.close();
      await host2.channel.close();
    } finally {
      await ctl.close();
      await server.close();
    }
  });
});
