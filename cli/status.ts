// `pcinet status`: what a running host-agent or endpoint is doing, from its control socket
// (proto/control.ts, "status"). Rates come from two snapshots: a one-shot status takes two,
// --interval apart; --watch redraws every --interval like top; --json prints snapshots with their
// rates for scripts.
import { existsSync } from 'node:fs';
import { ControlClient, defaultControlPath } from '../proto/control.js';
import { type DeviceStatus, kernelTrouble, type StatusSnapshot } from '../proto/status.js';

export interface StatusFlags {
  socket?: string[];
  json: boolean;
  watch: boolean;
  interval: number;
  /** Stop --watch after this many refreshes. */
  count?: number;
}

/** Per second, between two snapshots of one device. */
export interface DeviceRates {
  mmio: number;
  /** DMA bytes read from the host (round trips and pushed bytes alike) and written to it. */
  dmaReadBps: number;
  dmaWriteBps: number;
  irqs: number;
  /** I/O operations (commands, requests, frames) and their bytes, where the model counts them. */
  iops?: number;
  ioBps?: number;
}

/** Which model counters are I/Os and their bytes. */
const MODEL_IO: Record<string, { ops: string[]; bytes: string[] }> = {
  nvme: { ops: ['readCommands', 'writeCommands'], bytes: ['readBytes', 'writtenBytes'] },
  'virtio-blk': { ops: ['reads', 'writes'], bytes: [] },
  'virtio-net': { ops: ['rxFrames', 'txFrames'], bytes: ['rxBytes', 'txBytes'] },
};

const sum = (c: Record<string, number>, keys: string[]) => keys.reduce((n, k) => n + (c[k] ?? 0), 0);

export function deviceRates(prev: DeviceStatus, cur: DeviceStatus, seconds: number): DeviceRates {
  const d = (c: (x: DeviceStatus) => number) => Math.max(0, c(cur) - c(prev)) / seconds;
  const r: DeviceRates = {
    mmio: d((x) => sum(x.counters, ['mmioWrites', 'mmioReads'])),
    dmaReadBps: d((x) => sum(x.counters, ['dmaReadBytes', 'pushHitBytes'])),
    dmaWriteBps: d((x) => sum(x.counters, ['dmaWriteBytes'])),
    irqs: d((x) => sum(x.counters, ['interrupts'])),
  };
  const io = MODEL_IO[cur.model];
  if (io) {
    r.iops = d((x) => sum(x.modelCounters, io.ops));
    if (io.bytes.length) r.ioBps = d((x) => sum(x.modelCounters, io.bytes));
  }
  return r;
}

/** Rates of every device in both snapshots of the same process; undefined without a usable pair. */
export function rates(
  prev: StatusSnapshot | undefined,
  cur: StatusSnapshot,
): Map<number, DeviceRates> | undefined {
  if (!prev || prev.pid !== cur.pid || prev.role !== cur.role) return undefined;
  const seconds = (cur.at - prev.at) / 1000;
  if (seconds <= 0) return undefined;
  const out = new Map<number, DeviceRates>();
  for (const c of cur.devices) {
    const p = prev.devices.find((x) => x.dev === c.dev && x.address === c.address);
    if (p) out.set(c.dev, deviceRates(p, c, seconds));
  }
  return out;
}

function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

const mbps = (bps: number | undefined) => (bps === undefined ? '-' : (bps / 1e6).toFixed(2));
const per = (n: number | undefined) =>
  n === undefined ? '-' : n < 10 ? n.toFixed(1) : Math.round(n).toString();
const ms = (n: number | undefined) => (n === undefined ? '-' : `${n.toFixed(2)} ms`);

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** The human-readable status of one process. */
export function formatStatus(s: StatusSnapshot, r: Map<number, DeviceRates> | undefined): string {
  const lines: string[] = [];
  const where = s.role === 'host' ? `endpoint ${s.address}  channel ${s.channel}` : `listening ${s.address}`;
  lines.push(`pcinet ${s.role} (pid ${s.pid}, up ${duration(s.uptimeMs)})  ${where}`);
  const x = s.session;
  if (!x) lines.push('session: none');
  else {
    lines.push(
      `session ${x.id}  peer ${x.peer} (${x.peerAgent || '?'})  ${x.connected ? 'connected' : 'RESUMING'}  up ${duration(x.uptimeMs)}`,
    );
    lines.push(
      `  rtt ${ms(x.rttMs)} keep-alive${x.probeRttMs !== undefined ? `, ${ms(x.probeRttMs)} stats probe` : ''}` +
        `  frames in ${x.framesIn} out ${x.framesOut}  bytes in ${bytes(x.bytesIn)} out ${bytes(x.bytesOut)}`,
    );
    lines.push(
      `  replayed ${x.replayedFrames} frames  resumes ${x.resumes}  reconnects ${x.reconnects}  unacked ${x.replayFrames} (${bytes(x.replayBytes)})`,
    );
  }
  const rows = [
    [
      'DEV',
      'ADDRESS',
      'MODEL',
      'DRIVER',
      'LINK',
      'PATH',
      'MMIO/s',
      'DMA-RD MB/s',
      'DMA-WR MB/s',
      'IRQ/s',
      'IOPS',
      'IO MB/s',
    ],
  ];
  for (const d of s.devices) {
    const rt = r?.get(d.dev);
    rows.push([
      String(d.dev),
      d.address || '-',
      d.model,
      d.driver === undefined ? '-' : d.driver || '(none)',
      d.link,
      d.kernelLink ? 'kernel-link' : 'session',
      per(rt?.mmio),
      mbps(rt?.dmaReadBps),
      mbps(rt?.dmaWriteBps),
      per(rt?.irqs),
      per(rt?.iops),
      mbps(rt?.ioBps),
    ]);
  }
  lines.push(s.devices.length ? table(rows) : 'devices: none');
  for (const d of s.devices) {
    const trouble = kernelTrouble(undefined, d.kernelCounters ?? {});
    if (trouble.length)
      lines.push(`dev ${d.dev} pcinet.ko: ${trouble.map((t) => `${t.name} ${t.total}`).join(', ')}`);
    const c = d.counters;
    if (c.injected) {
      const kinds = Object.entries(c)
        .filter(([k, v]) => k.startsWith('injected') && k !== 'injected' && v > 0)
        .map(
          ([k, v]) =>
            `${k.slice('injected'.length).replace(/[A-Z]/g, (x, i) => (i ? '-' : '') + x.toLowerCase())} ${v}`,
        );
      lines.push(`dev ${d.dev} faults injected: ${kinds.join(', ')} (pcinet inject --list)`);
    }
  }
  for (const n of s.notes ?? []) lines.push(n);
  if (!r) lines.push('(rates: need two snapshots)');
  return lines.join('\n');
}

/** The sockets to ask: --socket, else the default host and endpoint sockets that exist. */
export function statusSockets(given: string[] | undefined): string[] {
  if (given?.length) return given;
  const found = [defaultControlPath('host'), defaultControlPath('endpoint')].filter((p) => existsSync(p));
  if (found.length === 0)
    throw new Error(
      `no control socket at ${defaultControlPath('host')} or ${defaultControlPath('endpoint')}: is pcinet host or endpoint running (with another --control, give it as --socket)?`,
    );
  return found;
}

export async function snapshot(c: ControlClient): Promise<StatusSnapshot> {
  return (await c.request('status')) as StatusSnapshot;
}

function ratesJson(r: Map<number, DeviceRates> | undefined): Record<string, DeviceRates> | null {
  return r ? Object.fromEntries([...r].map(([dev, x]) => [String(dev), x])) : null;
}

export async function runStatus(
  o: StatusFlags,
  out: (text: string) => void = (t) => process.stdout.write(t),
): Promise<number> {
  const paths = statusSockets(o.socket);
  const clients = await Promise.all(paths.map((p) => ControlClient.connect(p)));
  const prev = new Map<number, StatusSnapshot>();
  const tty = process.stdout.isTTY && !o.json;
  let stop = false;
  const onSig = () => {
    stop = true;
  };
  process.once('SIGINT', onSig);
  try {
    const take = async () => {
      const snaps = await Promise.all(clients.map((c) => snapshot(c)));
      const shown = snaps.map((s, i) => ({ s, r: rates(prev.get(i), s) }));
      for (const [i, s] of snaps.entries()) prev.set(i, s);
      return shown;
    };
    const wait = () => new Promise((r) => setTimeout(r, o.interval));
    if (!o.watch) {
      await take();
      await wait();
      const shown = await take();
      out(
        o.json
          ? `${JSON.stringify(shown.length === 1 ? { ...shown[0]!.s, rates: ratesJson(shown[0]!.r) } : shown.map(({ s, r }) => ({ ...s, rates: ratesJson(r) })))}\n`
          : `${shown.map(({ s, r }) => formatStatus(s, r)).join('\n\n')}\n`,
      );
      return 0;
    }
    for (let n = 0; !stop && (o.count === undefined || n < o.count); n++) {
      if (n > 0) await wait();
      if (stop) break;
      const shown = await take();
      if (o.json) for (const { s, r } of shown) out(`${JSON.stringify({ ...s, rates: ratesJson(r) })}\n`);
      else
        out(
          `${tty ? '\x1b[H\x1b[2J' : n > 0 ? '\n' : ''}${shown.map(({ s, r }) => formatStatus(s, r)).join('\n\n')}\n`,
        );
    }
    return 0;
  } finally {
    process.off('SIGINT', onSig);
    for (const c of clients) c.close();
  }
}
