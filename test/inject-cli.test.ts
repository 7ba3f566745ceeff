// `pcinet inject` and `pcinet endpoint --inject` as a user runs them: the built CLI against a real
// `pcinet endpoint` on a control socket of the test's own. What each kind does is tested in
// endpoint/faults.test.ts and, with Linux's nvme driver, test/e2e/inject.test.ts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, run, start, until } from './cli-procs.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-inject-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('pcinet inject', () => {
  it('arms from the start and on the socket, lists, clears; bad specs exit 2 with the reason', {
    timeout: 60_000,
  }, async () => {
    const bad = await run(['endpoint', '--device', 'test', '--inject', 'fail:sc=1', '--check']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/--inject fail:sc=1: fail: device 1 \(test\) runs no commands a fault can pick/);

    const sock = join(dir, 'ep.sock');
    const endpoint = start([
      'endpoint',
      '--listen',
      `127.0.0.1:${await freePort()}`,
      '--device',
      'test',
      '--device',
      'nvme:mem=16M',
      '--inject',
      'fail:dev=nvme,opcode=read,sct=2,sc=0x81,dnr,count=2',
      '--control',
      sock,
    ]);
    await until(() => endpoint.err().includes('endpoint listening'), 20_000, endpoint.err);
    expect(endpoint.err()).toMatch(
      /"spec":"fail:dev=2,status=0x4281,opcode=0x2".*"msg":"fault injection armed"/,
    );

    const inject = (...args: string[]) => run(['inject', '--socket', sock, ...args]);
    let r = await inject('--list');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe('#1  fail:dev=2,status=0x4281,opcode=0x2  fired 0, 2 left\n');

    r = await inject('delay', '5000', '--device', 'nvme', '--opcode', 'write', '--probability', '0.5');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe('armed #2  delay:dev=2,ms=5000,opcode=0x1,probability=0.5  fired 0, until cleared\n');
    r = await inject('dup-irq:dev=test,vector=3', '--count', '4', '--json');
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out)).toEqual({
      injection: {
        id: 3,
        spec: 'dup-irq:dev=1,vector=3',
        kind: 'dup-irq',
        dev: 1,
        fired: 0,
        left: 4,
        passed: 0,
      },
    });

    for (const [args, why] of [
      [['explode', '--device', '1'], /^pcinet: unknown kind "explode" \(kinds: delay, fail, /],
      [
        ['dup-irq', '--device', '9'],
        /^pcinet: dev=9: no such device \(the endpoint serves 1 \(test\), 2 \(nvme\)\)/,
      ],
      [['delay', 'soon', '--device', '2'], /^pcinet: ms=soon: want a whole number/],
      [['drop-irq', '5', '--device', '1'], /^pcinet: drop-irq takes no bare value "5"/],
      [
        ['all-ones', '--device', 'nvme'],
        /^pcinet: all-ones: BAR 0 of device 2 \(nvme\) has no volatile registers/,
      ],
      [['--clear', '7'], /^pcinet: no injection 7/],
      [[], /^pcinet: give a fault/],
    ] as const) {
      r = await inject(...args);
      expect(r.code, `${args.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err).toMatch(why);
    }

    r = await inject('--clear', '2');
    expect(r.out).toBe('cleared 1\n');
    r = await inject('--list');
    expect(
      r.out
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split('  ')[0]),
    ).toEqual(['#1', '#3']);
    r = await inject('--clear');
    expect(r.out).toBe('cleared 2\n');
    r = await inject('--list');
    expect(r.out).toBe('no injections\n');

    r = await run(['inject', '--socket', join(dir, 'none.sock'), '--list']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/control socket .*none\.sock: no such socket/);
    endpoint.c.kill('SIGTERM');
    expect(await endpoint.done).toBe(0);
  });
});
