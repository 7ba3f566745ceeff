// The `pcinet` command as a user runs it: real processes, real sockets (loopback), the built CLI
// (dist/cli/main.js, which `npm test` builds first).
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MODELS } from '../devices/models.js';
import { CLI, children, freePort } from './cli-procs.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function pcinet(args: string[], timeoutMs = 30_000): Promise<Result> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Starts `pcinet endpoint` and resolves once it listens. */
/** `pcinet host` on the sim channel against 127.0.0.1:port, writing its ready file; log collected. */
function simHost(port: number, ready: string, extra: string[]): { c: ChildProcess; log: () => string } {
  const c = spawn(
    process.execPath,
    [CLI, 'host', '--connect', `127.0.0.1:${port}`, '--channel', 'sim', '--ready-file', ready, ...extra],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  children.push(c);
  let log = '';
  c.stderr!.on('data', (d) => (log += d));
  return { c, log: () => log };
}

/** Polls `what` until true or `ms` pass; its last answer. */
async function until(what: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!what() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  return what();
}

async function endpoint(args: string[]): Promise<ChildProcess> {
  const c = spawn(process.execPath, [CLI, 'endpoint', '--log-level', 'info', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(c);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`endpoint did not start: ${out}`)), 15_000);
    const onData = (d: Buffer) => {
      out += d;
      if (out.includes('endpoint listening')) {
        clearTimeout(timer);
        resolve();
      }
    };
    c.stdout!.on('data', onData);
    c.stderr!.on('data', onData);
    c.on('exit', (code) => reject(new Error(`endpoint exited ${code}: ${out}`)));
  });
  return c;
}

describe('pcinet host --selftest against pcinet endpoint', () => {
  it('passes over plain TCP on loopback and exits 0', { timeout: 60_000 }, async () => {
    const port = await freePort();
    await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test', '--device', 'test:vectors=32']);
    const r = await pcinet([
      'host',
      '--connect',
      `127.0.0.1:${port}`,
      '--channel',
      'sim',
      '--selftest',
      '--log-level',
      'warn',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^selftest sim:00:00.0: PASS/m);
    expect(r.stdout).toMatch(/^selftest sim:00:01.0: PASS/m);
    expect(r.stdout).toMatch(/msix.every-vector +32 vectors, each fired once per raise/);
    expect(r.stdout).not.toMatch(/FAIL/);
  });

  it('passes over WebSockets', { timeout: 60_000 }, async () => {
    const port = await freePort();
    await endpoint(['--listen', `ws://127.0.0.1:${port}/pcinet`, '--device', 'test']);
    const r = await pcinet([
      'host',
      '--connect',
      `ws://127.0.0.1:${port}/pcinet`,
      '--channel',
      'sim',
      '--selftest',
      '--log-level',
      'warn',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/PASS/);
  });

  it('passes over TLS with pinned identities; a wrong pin is refused before any device', {
    timeout: 60_000,
  }, async () => {
    const host = (await pcinet(['id', '--identity', join(dir, 'host')])).stdout.trim();
    const ep = (await pcinet(['id', '--identity', join(dir, 'ep')])).stdout.trim();
    expect(host).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect((await pcinet(['id', '--identity', join(dir, 'host')])).stdout.trim()).toBe(host);
    const port = await freePort();
    await endpoint([
      '--listen',
      `tls://127.0.0.1:${port}`,
      '--device',
      'test',
      '--identity',
      join(dir, 'ep'),
      '--allow',
      host,
    ]);
    const ok = await pcinet([
      'host',
      '--connect',
      `tls://127.0.0.1:${port}`,
      '--pin',
      ep,
      '--identity',
      join(dir, 'host'),
      '--channel',
      'sim',
      '--selftest',
      '--log-level',
      'warn',
    ]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/PASS/);
    const wrong = await pcinet([
      'host',
      '--connect',
      `tls://127.0.0.1:${port}`,
      '--pin',
      host,
      '--identity',
      join(dir, 'host'),
      '--channel',
      'sim',
      '--selftest',
      '--log-level',
      'warn',
    ]);
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).not.toMatch(/selftest/);
    expect(wrong.stderr).toMatch(/AUTH_REFUSED.*is not the pinned/);
  });

  it('refuses a second host with BUSY while the first holds the devices', { timeout: 30_000 }, async () => {
    const port = await freePort();
    await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test']);
    const first = spawn(process.execPath, [
      CLI,
      'host',
      '--connect',
      `127.0.0.1:${port}`,
      '--channel',
      'sim',
      '--log-level',
      'warn',
      // Two hosts at once: only one may have the default control socket.
      '--no-control',
    ]);
    children.push(first);
    await new Promise((r) => setTimeout(r, 1500));
    const second = await pcinet([
      'host',
      '--connect',
      `127.0.0.1:${port}`,
      '--channel',
      'sim',
      '--selftest',
      '--log-level',
      'warn',
    ]);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/BUSY/);
  });
});

describe('pcinet host lifecycle', () => {
  it('writes the ready file atomically and exits 0 within 10 s of SIGTERM', { timeout: 60_000 }, async () => {
    const port = await freePort();
    await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test', '--device', 'test']);
    const ready = join(dir, 'ready');
    const { c } = simHost(port, ready, ['--log-level', 'warn']);
    await until(() => existsSync(ready), 20_000);
    const lines = readFileSync(ready, 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines).toEqual([
      { dev: 1, model: 'test', address: 'sim:00:00.0' },
      { dev: 2, model: 'test', address: 'sim:00:01.0' },
    ]);
    const t0 = Date.now();
    c.kill('SIGTERM');
    const code = await new Promise((r) => c.on('exit', r));
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });
});

describe('pcinet host statistics', () => {
  it('logs session and endpoint counters on SIGUSR1', { timeout: 60_000 }, async () => {
    const port = await freePort();
    await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test']);
    const ready = join(dir, 'ready-stats');
    const { c, log } = simHost(port, ready, ['--log-level', 'info']);
    await until(() => existsSync(ready), 20_000);
    c.kill('SIGUSR1');
    await until(() => /endpoint statistics/.test(log()), 20_000);
    expect(log()).toMatch(/session statistics/);
    const line = log()
      .split('\n')
      .find((l) => l.includes('endpoint statistics'))!;
    const counters = JSON.parse(line).counters as Record<string, number>;
    expect(counters['dev1.mmioWrites']).toBeGreaterThanOrEqual(0);
    expect(counters).toHaveProperty('dev1.dmaReads');
    c.kill('SIGTERM');
    expect(await new Promise((r) => c.on('exit', r))).toBe(0);
  });
});

describe('pcinet host --reconnect', () => {
  it('attaches the devices again when a killed endpoint comes back', { timeout: 60_000 }, async () => {
    const port = await freePort();
    const first = await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test']);
    const ready = join(dir, 'ready-reconnect');
    const { c, log } = simHost(port, ready, ['--reconnect', '--log-level', 'info', '--grace-ms', '2000']);
    expect(await until(() => existsSync(ready), 20_000)).toBe(true);
    rmSync(ready);
    first.kill('SIGKILL');
    expect(await until(() => /endpoint lost; next try in [\d.]+ s/.test(log()), 10_000)).toBe(true);
    // Down for a while: the agent keeps trying; then a new endpoint on the same address.
    await new Promise((r) => setTimeout(r, 1000));
    expect(c.exitCode).toBeNull();
    await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test', '--device', 'test']);
    expect(await until(() => existsSync(ready), 20_000)).toBe(true);
    const lines = readFileSync(ready, 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    c.kill('SIGTERM');
    expect(await new Promise((r) => c.on('exit', r))).toBe(0);
  });
});

describe('pcinet host after an endpoint restart (the edit loop)', () => {
  it('opens the next session at once when the restarted endpoint refuses the old one', {
    timeout: 60_000,
  }, async () => {
    const port = await freePort();
    const first = await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test']);
    const ready = join(dir, 'ready-restart');
    const { c, log } = simHost(port, ready, ['--reconnect', '--log-level', 'info']);
    expect(await until(() => existsSync(ready), 20_000)).toBe(true);
    rmSync(ready);
    first.kill('SIGKILL');
    await endpoint(['--listen', `127.0.0.1:${port}`, '--device', 'test']);
    expect(await until(() => existsSync(ready), 20_000)).toBe(true);
    // The session redialled the new process, which refused its resume: it is listening, so no
    // back-off before the next session.
    expect(log()).toMatch(/endpoint resumed a different session|SESSION_UNKNOWN|no session/);
    expect(log()).toMatch(/next try in 0 s/);
    c.kill('SIGTERM');
    expect(await new Promise((r) => c.on('exit', r))).toBe(0);
  });
});

describe('pcinet endpoint --watch (the edit loop)', () => {
  it('runs the endpoint again when a model changes; the host attaches its devices again', {
    timeout: 60_000,
  }, async () => {
    const port = await freePort();
    const models = mkdtempSync(join(dir, 'models-'));
    const ep = await endpoint(['--watch', models, '--listen', `127.0.0.1:${port}`, '--device', 'test']);
    let out = '';
    ep.stdout!.on('data', (d) => (out += d));
    ep.stderr!.on('data', (d) => (out += d));
    const ready = join(dir, 'ready-watch');
    const { c } = simHost(port, ready, ['--reconnect', '--log-level', 'info']);
    expect(await until(() => existsSync(ready), 20_000)).toBe(true);
    rmSync(ready);
    writeFileSync(join(models, 'device.js'), '// edited\n');
    expect(await until(() => existsSync(ready), 20_000)).toBe(true);
    expect(out).toMatch(/a device model changed: restarting the endpoint/);
    expect(out).toMatch(/endpoint listening/); // the new endpoint's
    expect(out).not.toMatch(/endpoint exited/); // a restart is not news
    expect(out).not.toMatch(/did not stop/); // the old one ended on its own, in order
    c.kill('SIGTERM');
    expect(await new Promise((r) => c.on('exit', r))).toBe(0);
    ep.kill('SIGTERM');
    expect(await new Promise((r) => ep.on('exit', r))).toBe(0);
  });

  it('exits 2 when the endpoint refuses its options, instead of waiting for a change', async () => {
    const models = mkdtempSync(join(dir, 'models-'));
    const r = await pcinet(['endpoint', '--watch', models, '--listen', '127.0.0.1:1', '--device', 'nosuch']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/nosuch/);
  });
});

describe('pcinet endpoint --help', () => {
  it('lists every device model with all its options', async () => {
    const r = await pcinet(['endpoint', '--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^Devices \(--device NAME\[:key=value,\.\.\.\]\):$/m);
    for (const m of MODELS) {
      expect(r.stdout).toContain(`\n  ${m.name}  ${m.summary}\n`);
      for (const [key, o] of Object.entries(m.options))
        expect(r.stdout).toContain(`\n    ${m.name}:${key}=${o.syntax}  ${o.help}\n`);
    }
  });
});

describe('bad input: one clear line, exit 2', () => {
  const cases: [string, string[], RegExp][] = [
    ['unknown flag', ['host', '--connect', '127.0.0.1:1', '--bogus'], /unknown option '--bogus'/],
    ['bad address', ['host', '--connect', 'nonsense'], /nonsense/],
    ['host without an endpoint', ['host', '--channel', 'sim'], /--connect is required/],
    [
      'plain TCP to another host',
      ['host', '--connect', 'tcp://192.0.2.1:7470', '--channel', 'sim'],
      /unencrypted.*--insecure/,
    ],
    ['TLS without a pin', ['host', '--connect', 'tls://127.0.0.1:7470', '--channel', 'sim'], /--pin/],
    [
      'selftest on the kernel channel',
      ['host', '--connect', '127.0.0.1:7470', '--channel', 'kernel', '--selftest'],
      /--selftest needs --channel sim/,
    ],
    [
      'selftest with reconnect',
      ['host', '--connect', '127.0.0.1:7470', '--channel', 'sim', '--selftest', '--reconnect'],
      /--reconnect and --selftest/,
    ],
    [
      'ctrl-loss-tmo not whole seconds',
      ['host', '--connect', '127.0.0.1:7470', '--ctrl-loss-tmo', '1.5'],
      /--ctrl-loss-tmo.*whole number of seconds/,
    ],
    ['unknown device', ['endpoint', '--device', 'toaster'], /unknown device "toaster"/],
    ['bad device option', ['endpoint', '--device', 'test:vectors=0'], /vectors must be an integer 1\.\.64/],
    ['no device', ['endpoint'], /no --device/],
    [
      'TLS endpoint without --allow',
      ['endpoint', '--listen', 'tls://127.0.0.1:7470', '--device', 'test'],
      /--allow/,
    ],
    ['bad log level', ['endpoint', '--device', 'test', '--log-level', 'loud'], /loud/],
  ];
  for (const [what, args, msg] of cases) {
    it(what, async () => {
      const r = await pcinet(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^pcinet: /);
    });
  }

  it('bad config files', async () => {
    const bad = join(dir, 'bad.json');
    for (const [text, msg] of [
      ['{not json', /not valid JSON/],
      ['[]', /must hold a JSON object/],
      ['{"lisen": "x"}', /unknown key "lisen"/],
      ['{"device": "test"}', /"device" must be a string\[\]/],
      // Each value goes through its flag's parser: what the flag refuses, the file may not say.
      ['{"keepaliveMs": -5}', /"keepaliveMs": must be a positive integer/],
      ['{"graceMs": 1.5}', /"graceMs": must be a positive integer/],
      ['{"logLevel": "loud"}', /"logLevel": Allowed choices are/],
      ['{"control": 5}', /"control" must be a string or false/],
    ] as const) {
      writeFileSync(bad, text);
      const r = await pcinet(['endpoint', '--config', bad]);
      expect(r.code, text).toBe(2);
      expect(r.stderr, text).toMatch(msg);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    }
    writeFileSync(bad, '{"channel": "simm"}');
    const host = await pcinet(['host', '--connect', '127.0.0.1:9', '--config', bad]);
    expect(host.code).toBe(2);
    expect(host.stderr).toMatch(/"channel": Allowed choices are sim, kernel/);
    for (const [text, msg] of [
      ['{"ctrlLossTmo": -1}', /"ctrlLossTmo": must be a whole number of seconds/],
      ['{"ctrlLossTmo": 2.5}', /"ctrlLossTmo": must be a whole number of seconds/],
      ['{"ctrlLossTmo": "600"}', /"ctrlLossTmo" must be a number/],
      ['{"reconnect": "yes"}', /"reconnect" must be a boolean/],
    ] as const) {
      writeFileSync(bad, text);
      const r = await pcinet(['host', '--connect', '127.0.0.1:9', '--config', bad, '--check']);
      expect(r.code, text).toBe(2);
      expect(r.stderr, text).toMatch(msg);
    }
    const good = join(dir, 'good.json');
    writeFileSync(good, '{"ctrlLossTmo": 0, "reconnect": false}');
    const ok = await pcinet(['host', '--connect', '127.0.0.1:9', '--config', good, '--check']);
    expect(ok.code, ok.stderr).toBe(0);
    const r = await pcinet(['endpoint', '--config', join(dir, 'missing.json')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot read config file/);
  });
});
