// Finds kernel trouble in the guest's console log. Any of these fails a lab run, whatever the
// command's status: a test that passes while the kernel warned has found a bug, not passed.
// Lines the lab writes itself ("pcinet-lab: …") are never matched.

export interface KernelReport {
  /** What matched first in this report. */
  kind: string;
  /** 0-based line of the first match. */
  line: number;
  /** The report: a few lines before the first match to the end of its trace. */
  excerpt: string;
}

/** In priority order; the first pattern matching a line names it. */
export const REPORT_PATTERNS: readonly { kind: string; re: RegExp }[] = [
  { kind: 'panic', re: /Kernel panic/ },
  { kind: 'oops', re: /\bOops\b/ },
  { kind: 'general-protection-fault', re: /general protection fault/ },
  { kind: 'kasan', re: /\bKASAN:/ },
  { kind: 'ubsan', re: /\bUBSAN:/ },
  { kind: 'bug', re: /\bBUG[:\s]|kernel BUG at/ },
  { kind: 'warn', re: /\bWARNING: .*(CPU|PID)|\[ cut here \]/ },
  { kind: 'corruption', re: /list_(add|del) corruption|refcount_t: |double free|use-after-free/i },
  { kind: 'hung-task', re: /INFO: task .* blocked for more than/ },
  { kind: 'rcu-stall', re: /rcu: INFO: .*stall|detected stalls on CPUs/ },
  { kind: 'lockdep', re: /possible (circular|recursive) locking|inconsistent lock state/ },
  { kind: 'call-trace', re: /Call Trace:/ },
];

/** Lines before the first match kept in an excerpt. */
const CONTEXT_BEFORE = 3;
/** A trace ends at "---[ end trace" or after this many lines. */
const MAX_REPORT_LINES = 60;

const OURS = /^(\[\s*\d+\.\d+\]\s*)?pcinet-lab:/;

function classify(line: string): string | undefined {
  if (OURS.test(line)) return undefined;
  for (const p of REPORT_PATTERNS) if (p.re.test(line)) return p.kind;
  return undefined;
}

export function scanGuestLog(log: string): KernelReport[] {
  const lines = log.split(/\r?\n/);
  const reports: KernelReport[] = [];
  let i = 0;
  while (i < lines.length) {
    const kind = classify(lines[i]);
    if (!kind) {
      i++;
      continue;
    }
    const start = Math.max(0, i - CONTEXT_BEFORE);
    let end = i + 1;
    while (end < lines.length && end - i < MAX_REPORT_LINES) {
      if (/---\[ end (trace|Kernel panic)/.test(lines[end - 1])) break;
      end++;
    }
    reports.push({ kind, line: i, excerpt: lines.slice(start, end).join('\n') });
    i = end;
  }
  return reports;
}

export function formatReports(reports: readonly KernelReport[]): string {
  return reports
    .map((r) => `--- kernel ${r.kind} (guest log line ${r.line + 1}) ---\n${r.excerpt}`)
    .join('\n');
}
