// bench/card-cpu: runs on the card (in the lab's network namespace) beside the servers a bench
// compares, and tells how much CPU each has used at moments the guest chooses. The guest connects
// to PORT and sends one line (a phase's name and "before" or "after"); this process sums
// utime+stime of every process of each group from /proc, prints
//   CARDCPU <the line> <group>=<µs> <group>.r=<read calls> <group>.w=<write calls> ...
// on stdout, answers "ok" and closes — the guest goes on only then, so the sample is taken while
// the servers are idle between phases.
//
//   node dist/bench/card-cpu.js PORT GROUP=MATCH...
//
// MATCH is `comm:NAME` (the process's name, e.g. every nbd-server process, the forked children
// serving clients included) or `cmd:TEXT` (a substring of its command line, arguments joined by
// spaces). Loopback only; bounded by the caller (timeout(1)).
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';

export interface CpuGroup {
  name: string;
  match: { comm: string } | { cmd: string };
}

/** GROUP=comm:NAME or GROUP=cmd:TEXT. */
export function parseGroup(arg: string): CpuGroup {
  const m = /^(\w+)=(comm|cmd):(.+)$/.exec(arg);
  if (!m) throw new Error(`card-cpu: "${arg}" is not GROUP=comm:NAME or GROUP=cmd:TEXT`);
  return { name: m[1]!, match: m[2] === 'comm' ? { comm: m[3]! } : { cmd: m[3]! } };
}

/** utime + stime (clock ticks) from a /proc/PID/stat line; the name may hold spaces and ')'. */
export function statTicks(stat: string): number {
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined; // gone meanwhile
  }
}

/** read() and write() family system calls so far, from /proc/PID/io (0 if unreadable). */
export function ioCalls(text: string | undefined): { r: number; w: number } {
  const r = /^syscr: (\d+)$/m.exec(text ?? '');
  const w = /^syscw: (\d+)$/m.exec(text ?? '');
  return { r: r ? Number(r[1]) : 0, w: w ? Number(w[1]) : 0 };
}

/** What each group's processes used so far: clock ticks, and with `calls` their read and write
 *  system calls as `<group>.r` and `<group>.w`. */
export function sample(groups: readonly CpuGroup[], proc = '/proc', calls = false): Map<string, number> {
  const out = new Map(groups.map((g) => [g.name, 0]));
  if (calls) for (const g of groups) out.set(`${g.name}.r`, 0).set(`${g.name}.w`, 0);
  for (const pid of readdirSync(proc)) {
    // Not this process: its own command line holds every cmd: pattern.
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const stat = read(`${proc}/${pid}/stat`);
    if (!stat) continue;
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    let cmd: string | undefined;
    for (const g of groups) {
      let hit: boolean;
      if ('comm' in g.match) hit = comm === g.match.comm;
      else {
        cmd ??= (read(`${proc}/${pid}/cmdline`) ?? '').split('\0').join(' ');
        hit = cmd.includes(g.match.cmd);
      }
      if (!hit) continue;
      out.set(g.name, out.get(g.name)! + statTicks(stat));
      if (calls) {
        const io = ioCalls(read(`${proc}/${pid}/io`));
        out.set(`${g.name}.r`, out.get(`${g.name}.r`)! + io.r);
        out.set(`${g.name}.w`, out.get(`${g.name}.w`)! + io.w);
      }
    }
  }
  return out;
}

function main(): void {
  const [port, ...rest] = process.argv.slice(2);
  if (!port || !/^\d+$/.test(port) || rest.length === 0) {
    throw new Error('usage: card-cpu PORT GROUP=comm:NAME|GROUP=cmd:TEXT...');
  }
  const groups = rest.map(parseGroup);
  const usPerTick = 1e6 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  const server = createServer((sock) => {
    let line = '';
    sock.setEncoding('utf8');
    sock.on('error', () => sock.destroy());
    sock.on('data', (d: string) => {
      line += d;
      const nl = line.indexOf('\n');
      if (nl < 0) {
        if (line.length > 256) sock.destroy();
        return;
      }
      const label = line.slice(0, nl).trim();
      const now = sample(groups, '/proc', true);
      const fields = [...now].map(([k, v]) => `${k}=${k.includes('.') ? v : Math.round(v * usPerTick)}`);
      console.log(`CARDCPU ${label} ${fields.join(' ')}`);
      sock.end('ok\n');
    });
  });
  server.listen(Number(port), '127.0.0.1');
}

if (import.meta.url === `file://${process.argv[1]}`) main();
