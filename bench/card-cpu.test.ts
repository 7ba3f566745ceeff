import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type CpuGroup, ioCalls, sample, statTicks } from './card-cpu.js';

const NBD: CpuGroup = { name: 'nbd', match: { comm: 'nbd-server' } };
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A fake /proc with processes given as [pid, comm, cmdline args, utime, stime, network namespace]. */
function fakeProc(procs: [number, string, string[], number, number, string?][]): string {
  const dir = mkdtempSync(join(tmpdir(), 'card-cpu-'));
  dirs.push(dir);
  for (const [pid, comm, args, ut, st, netns] of procs) {
    mkdirSync(join(dir, String(pid)));
    mkdirSync(join(dir, String(pid), 'ns'));
    symlinkSync(netns ?? 'net:[4026531840]', join(dir, String(pid), 'ns', 'net'));
    // Fields after the name: state, then 10 more before utime (14th field) and stime (15th).
    const stat = `${pid} (${comm}) S 1 1 1 0 -1 4194560 100 0 0 0 ${ut} ${st} 0 0 20 0 1 0 5 0 0`;
    writeFileSync(join(dir, String(pid), 'stat'), stat);
    writeFileSync(join(dir, String(pid), 'cmdline'), `${args.join('\0')}\0`);
  }
  mkdirSync(join(dir, 'self'));
  return dir;
}

describe('card-cpu', () => {
  it('reads utime + stime past a name with spaces and parentheses', () => {
    expect(statTicks('42 (a (b) c) S 1 1 1 0 -1 0 0 0 0 0 7 5 0 0')).toBe(12);
  });

  it('sums every process of a group, by name or by command line', () => {
    const proc = fakeProc([
      [10, 'nbd-server', ['nbd-server', '-C', 'x'], 3, 4],
      [11, 'nbd-server', ['nbd-server', '-C', 'x'], 10, 1],
      [12, 'node', ['node', 'main.js', 'endpoint', '--listen', 'tcp://127.0.0.1:7471'], 50, 5],
      [13, 'node', ['node', 'main.js', 'endpoint', '--listen', 'tls://127.0.0.1:7470'], 20, 2],
      [14, 'bash', ['bash'], 99, 99],
    ]);
    const got = sample(
      [
        { name: 'nbd', match: { comm: 'nbd-server' } },
        { name: 'tcp', match: { cmd: 'endpoint --listen tcp://127.0.0.1:7471' } },
        { name: 'tls', match: { cmd: 'endpoint --listen tls://' } },
        { name: 'none', match: { comm: 'nothing' } },
      ],
      proc,
    );
    expect(Object.fromEntries(got)).toEqual({ nbd: 18, tcp: 55, tls: 22, none: 0 });
  });

  it("with a namespace, counts that namespace's processes only: other lab runs' endpoints look the same", () => {
    const ours = 'net:[4026532301]';
    const endpoint = ['node', 'main.js', 'endpoint', '--listen', 'tls://127.0.0.1:7470'];
    const proc = fakeProc([
      [20, 'node', endpoint, 30, 3, ours],
      [21, 'node', endpoint, 500, 50, 'net:[4026532999]'],
      [22, 'nbd-server', ['nbd-server'], 4, 1, ours],
      [23, 'nbd-server', ['nbd-server'], 70, 7],
    ]);
    const groups: CpuGroup[] = [NBD, { name: 'tls', match: { cmd: 'endpoint --listen tls://' } }];
    expect(Object.fromEntries(sample(groups, proc, false, ours))).toEqual({ nbd: 5, tls: 33 });
    expect(Object.fromEntries(sample(groups, proc))).toEqual({ nbd: 82, tls: 583 });
  });

  it('adds read and write system calls from /proc/PID/io when asked', () => {
    const proc = fakeProc([
      [10, 'nbd-server', ['nbd-server'], 1, 1],
      [11, 'nbd-server', ['nbd-server'], 1, 1],
    ]);
    writeFileSync(join(proc, '10', 'io'), 'rchar: 5\nwchar: 6\nsyscr: 30\nsyscw: 40\n');
    // 11 has no io file (gone, or not ours to read): counted as none.
    const got = sample([NBD], proc, true);
    expect(Object.fromEntries(got)).toEqual({ nbd: 4, 'nbd.r': 30, 'nbd.w': 40 });
    expect(ioCalls(undefined)).toEqual({ r: 0, w: 0 });
  });
});
