// bench/card-cpu: how much CPU (and how many read and write system calls) the card's servers have
// used so far, summed over every process of each group from /proc. bench/nvme samples it when the
// guest asks through the card's control port (lab/card-control.ts) before and after each phase, so
// the samples fall while the servers are idle between phases.
//
// A group matches by `comm` (the process's name, e.g. every nbd-server process, the forked
// children serving clients included) or by `cmd` (a substring of its command line, arguments
// joined by spaces); with `netns`, only among the processes of that network namespace — every lab
// run's endpoint has the same command line in a namespace of its own, and another run's processes
// coming and going between two samples would count (and a finished one made a negative figure).
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

export interface CpuGroup {
  name: string;
  match: { comm: string } | { cmd: string };
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

/** A process's network namespace, as /proc/PID/ns/net names it ("net:[4026532301]"). */
export function netnsOf(pid: number | string, proc = '/proc'): string | undefined {
  try {
    return readlinkSync(`${proc}/${pid}/ns/net`);
  } catch {
    return undefined; // gone meanwhile
  }
}

/** What each group's processes used so far: clock ticks, and with `calls` their read and write
 *  system calls as `<group>.r` and `<group>.w`; with `netns`, processes of that namespace only. */
export function sample(
  groups: readonly CpuGroup[],
  proc = '/proc',
  calls = false,
  netns?: string,
): Map<string, number> {
  const out = new Map(groups.map((g) => [g.name, 0]));
  if (calls) for (const g of groups) out.set(`${g.name}.r`, 0).set(`${g.name}.w`, 0);
  for (const pid of readdirSync(proc)) {
    if (!/^\d+$/.test(pid)) continue;
    if (netns !== undefined && netnsOf(pid, proc) !== netns) continue;
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

/** Microseconds per clock tick of /proc/PID/stat (getconf CLK_TCK). */
export function usPerTick(): number {
  return 1e6 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
}
