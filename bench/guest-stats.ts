// The endpoint's counters around a bench phase, read from inside the lab guest: SIGUSR1 makes a
// host-agent ask its endpoint for statistics and log them ("endpoint statistics"); the guest prints
// that line as `STATS LABEL JSON` (or `NOSTATS LABEL` when none came), and the bench takes the
// differences of its counters between a phase's "before" and "after".

export type Counters = Record<string, number>;

/** The host-agent answers SIGUSR1 within a round trip; this bounds a lost answer. */
export const STATS_WAIT_S = 10;

/**
 * Shell functions for a guest script:
 *   pid_of TEXT            the first process whose command line contains TEXT
 *   wait_for S CMD...      runs CMD every 0.1 s until it succeeds; fails after S seconds (wall
 *                          clock: under TCG on a busy machine a loop is far slower than its sleeps)
 *   stats PID LOG LABEL... SIGUSR1 to host-agent PID (logging to LOG), then prints its next
 *                          statistics line as `STATS LABEL JSON`
 */
export const statsShell = `
pid_of() {
  for p in /proc/[0-9]*; do
    case "$(tr '\\0' ' ' 2>/dev/null < $p/cmdline)" in *"$1"*) echo \${p#/proc/}; return 0 ;; esac
  done
  return 1
}
wait_for() {
  end=$(($(date +%s) + $1))
  shift
  until "$@"; do
    [ $(date +%s) -lt $end ] || return 1
    sleep 0.1
  done
}
stats_lines() { grep -c '"endpoint statistics"' "$stats_log" || true; }
more_stats() { [ "$(stats_lines)" -gt "$stats_n" ]; }
stats() {
  stats_pid=$1 stats_log=$2
  shift 2
  stats_n=$(stats_lines)
  kill -USR1 $stats_pid
  if wait_for ${STATS_WAIT_S} more_stats; then
    echo "STATS $* $(grep '"endpoint statistics"' "$stats_log" | tail -n 1)"
  else
    echo "NOSTATS $*"
  fi
}
`;

/** Each `STATS LABEL … "counters":{…}` line of a guest's output: label → counters. A label is
 *  every word before the host-agent's JSON. */
export function parseStats(stdout: string): Map<string, Counters> {
  const out = new Map<string, Counters>();
  for (const line of stdout.split('\n')) {
    const m = /^STATS ([^{]*?) \{.*"counters":(\{[^}]*\})/.exec(line);
    if (m) out.set(m[1]!, JSON.parse(m[2]!) as Counters);
  }
  return out;
}

/** Sum over the endpoint's devices ("dev1.dmaReads", …) of one counter's change from the label
 *  `${phase} before` to `${phase} after`; undefined when either is missing or no device has it. */
export function counterDelta(
  stats: Map<string, Counters>,
  phase: string,
  counter: string,
): number | undefined {
  const before = stats.get(`${phase} before`);
  const after = stats.get(`${phase} after`);
  if (!before || !after) return undefined;
  const re = new RegExp(`^dev\\d+\\.${counter.replace(/[.]/g, '\\.')}$`);
  let sum = 0;
  let seen = false;
  for (const [k, v] of Object.entries(after)) {
    if (!re.test(k)) continue;
    seen = true;
    sum += v - (before[k] ?? 0);
  }
  return seen ? sum : undefined;
}
