// What the "status" command of a control socket (proto/control.ts) answers, on the host-agent
// (host-agent/status.ts) and on the endpoint (endpoint/control.ts) alike. Counters are cumulative;
// `pcinet status` (cli/status.ts) turns two snapshots into rates.
import type { Session, SessionStats } from './session.js';
import { VERSION } from './version.js';

export interface SessionStatus extends SessionStats {
  /** First 8 hex digits of the session id, as the logs print it. */
  id: string;
  /** The peer's address, or "(disconnected)" while a resume is under way. */
  peer: string;
  peerAgent: string;
  connected: boolean;
  uptimeMs: number;
  /** Sessions opened again after the endpoint was lost (host-agent --reconnect). */
  reconnects: number;
  /** The round trip of a StatsRequest made for this snapshot (host side), in ms: the RTT as the
   *  data path sees it, behind whatever is queued. */
  probeRttMs?: number;
}

export interface DeviceStatus {
  dev: number;
  model: string;
  /** The host's PCI address ("0000:10:00.0"), once attached. */
  address: string;
  /** The driver bound to it on the host (kernel channel), "" for none; absent where unknown. */
  driver?: string;
  /** up; down (parked: the endpoint is gone, the driver waits); pending / failed / removed
   *  (endpoint's view of an attach). */
  link: string;
  /** Its data plane is on pcinet.ko's kernel link. */
  kernelLink: boolean;
  /** The endpoint's counters of it (endpoint/runtime.ts DeviceCounters), when known. */
  counters: Record<string, number>;
  /** Its model's own counters (nvme: readCommands, readBytes …). */
  modelCounters: Record<string, number>;
  /** pcinet.ko's timing sums (sysfs pcinet_timing): name -> [ns, count]. */
  timing?: Record<string, [number, number]>;
  /** pcinet.ko's counters of the function (sysfs pcinet_counters): lost_records, stalls … */
  kernelCounters?: Record<string, number>;
}

export interface StatusSnapshot {
  role: 'host' | 'endpoint';
  pid: number;
  version: string;
  /** The process's uptime. */
  uptimeMs: number;
  /** When the snapshot was taken (monotonic ms, for rates between two). */
  at: number;
  /** host: where it dials; endpoint: where it listens. */
  address: string;
  /** host: sim or kernel. */
  channel?: string;
  session: SessionStatus | null;
  devices: DeviceStatus[];
  /** Endpoint: what its models have to say beyond counters, "dev N: …" (a replay's divergence),
   *  with or without a session. */
  notes?: string[];
}

/** The endpoint's flat counters ("dev1.mmioWrites", "dev1.nvme.readBytes") by device: runtime
 *  counters and model counters apart. */
export function splitCounters(
  flat: Record<string, number>,
): Map<number, { counters: Record<string, number>; modelCounters: Record<string, number> }> {
  const out = new Map<number, { counters: Record<string, number>; modelCounters: Record<string, number> }>();
  for (const [name, value] of Object.entries(flat)) {
    const m = /^dev(\d+)\.(?:([^.]+)\.)?([^.]+)$/.exec(name);
    if (!m) continue;
    const dev = Number(m[1]);
    let e = out.get(dev);
    if (!e) {
      e = { counters: {}, modelCounters: {} };
      out.set(dev, e);
    }
    if (m[2]) e.modelCounters[m[3]!] = value;
    else e.counters[m[3]!] = value;
  }
  return out;
}

/** What every snapshot starts with: who answers, since when, and when it was taken. */
export function processStatus(role: StatusSnapshot['role']) {
  return {
    role,
    pid: process.pid,
    version: VERSION,
    uptimeMs: Math.round(process.uptime() * 1000),
    at: performance.now(),
  };
}

export function sessionStatus(s: Session, openedAt: number, reconnects: number): SessionStatus {
  return {
    ...s.stats(),
    id: Buffer.from(s.id).toString('hex').slice(0, 8),
    peer: s.remote,
    peerAgent: s.peerAgent,
    connected: s.connected,
    uptimeMs: Math.round(performance.now() - openedAt),
    reconnects,
  };
}

/** pcinet.ko's counters that mean something was lost, refused or failed, and what each says. */
export const KERNEL_TROUBLE: Readonly<Record<string, string>> = {
  lost_records: 'records lost: out of memory in atomic context',
  queue_drops: 'records dropped: the queue for the host-agent or link was full',
  read_timeouts: 'reads answered all-ones: the device did not answer in time',
  stalls: 'times the device stopped answering',
  queue_overruns: 'writers that gave up waiting for queue space',
  emulate_failures: 'BAR accesses the emulator refused (their page is no longer trapped)',
  nested_faults: 'BAR accesses inside the fault handler: failed',
  interrupts_dropped: 'interrupts dropped: raised while MSI-X was off or unprogrammed',
  dma_refused: 'DMA refused: outside the live mappings or against their direction',
  link_dropped: 'writes and records dropped while the link was down',
};

/** The trouble counters of `cur` that grew since `prev`, with the growth. */
export function kernelTrouble(
  prev: Record<string, number> | undefined,
  cur: Record<string, number>,
): { name: string; added: number; total: number; means: string }[] {
  const out: { name: string; added: number; total: number; means: string }[] = [];
  for (const [name, means] of Object.entries(KERNEL_TROUBLE)) {
    const total = cur[name];
    if (total === undefined) continue;
    const added = total - (prev?.[name] ?? 0);
    if (added > 0) out.push({ name, added, total, means });
  }
  return out;
}
