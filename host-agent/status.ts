// The host-agent's "status" control command (proto/control.ts): its devices as the workstation
// sees them (PCI address, the driver bound, link up or parked down, kernel link or not, pcinet.ko's
// timing sums from sysfs), the session (peer, RTT, frames, bytes, replays, reconnects, uptime), and
// the endpoint's counters of each device, fetched with a StatsRequest (the one SIGUSR1 logs too)
// whose round trip is the snapshot's probe RTT. agent.ts tells it what is current. And "trace":
// the session's messages (not what pcinet.ko's kernel links carry: the endpoint's trace has those).
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { basename } from 'node:path';
import type { ControlHandler } from '../proto/control.js';
import type { Session } from '../proto/session.js';
import {
  type DeviceStatus,
  kernelTrouble,
  processStatus,
  type StatusSnapshot,
  sessionStatus,
  splitCounters,
} from '../proto/status.js';
import { type Tap, TraceHub, traceHandler } from '../proto/trace.js';
import { long, type Msg, num } from '../proto/wire.js';
import type { Parking } from './parking.js';
import type { Relay } from './relay.js';

/** StatsRequest nonces of status probes start here; SIGUSR1's count up from 1. */
export const STATUS_NONCE_BASE = 2 ** 32;
/** A status answers without the endpoint's counters if they take longer than this. */
const PROBE_TIMEOUT_MS = 2000;

const SYS_PCI = '/sys/bus/pci/devices';

/** The driver bound to a PCI function, "" for none, undefined if there is no such function. */
export function boundDriver(address: string, sys = SYS_PCI): string | undefined {
  try {
    return basename(readlinkSync(`${sys}/${address}/driver`));
  } catch {
    return existsSync(`${sys}/${address}`) ? '' : undefined;
  }
}

/** pcinet.ko's timing sums of a function ("name ns count" lines), if it has them. */
export function readTiming(address: string, sys = SYS_PCI): Record<string, [number, number]> | undefined {
  let text: string;
  try {
    text = readFileSync(`${sys}/${address}/pcinet_timing`, 'utf8');
  } catch {
    return undefined;
  }
  const out: Record<string, [number, number]> = {};
  for (const line of text.split('\n')) {
    const [name, ns, n] = line.trim().split(/\s+/);
    if (name && ns !== undefined && n !== undefined) out[name] = [Number(ns), Number(n)];
  }
  return out;
}

/** pcinet.ko's counters of a function ("name value" lines), if it has them. */
export function readKernelCounters(address: string, sys = SYS_PCI): Record<string, number> | undefined {
  let text: string;
  try {
    text = readFileSync(`${sys}/${address}/pcinet_counters`, 'utf8');
  } catch {
    return undefined;
  }
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const [name, value] = line.trim().split(/\s+/);
    if (name && value !== undefined) out[name] = Number(value);
  }
  return out;
}

export class HostStatus {
  readonly #address: string;
  readonly #channel: string;
  readonly #sys: string;
  #nonce = STATUS_NONCE_BASE;
  #session: Session | undefined;
  #relay: Relay | undefined;
  #openedAt = 0;
  #sessions = 0;
  /** Set by the agent when it reconnects (host-agent/parking.ts). */
  parking: Parking | undefined;
  /** `pcinet trace` on the host-agent: the session's messages. What a device sends on its kernel
   *  link never passes here (the endpoint's trace has it). */
  readonly trace = new TraceHub((tap) => {
    this.#tap = tap;
    if (this.#session) this.#session.tap = tap;
  }, true);
  #tap: Tap | undefined;
  /** The kernel counters last looked at by checkKernel(), per PCI address. */
  readonly #kernelSeen = new Map<string, Record<string, number>>();

  constructor(o: { address: string; channel: string; sys?: string }) {
    this.#address = o.address;
    this.#channel = o.channel;
    this.#sys = o.sys ?? SYS_PCI;
  }

  /** A session is open and `relay` serves it. */
  opened(session: Session, relay: Relay): void {
    this.#session = session;
    session.tap = this.#tap;
    this.#relay = relay;
    this.#openedAt = performance.now();
    this.#sessions++;
  }

  /** Asks the endpoint for its counters; resolves with them and the round trip, or undefined. */
  #probe(s: Session): Promise<{ counters: Record<string, number>; rttMs: number } | undefined> {
    if (s.closed || !s.connected) return Promise.resolve(undefined);
    const nonce = ++this.#nonce;
    const sent = performance.now();
    return new Promise((resolve) => {
      const done = (r: { counters: Record<string, number>; rttMs: number } | undefined) => {
        clearTimeout(timer);
        s.off('messages', onMessages);
        s.off('close', onClose);
        resolve(r);
      };
      const onMessages = (msgs: Msg[]) => {
        for (const m of msgs) {
          if (!m.stats || num(m.stats.nonce, 'nonce') !== nonce) continue;
          const counters = Object.fromEntries(
            (m.stats.counters ?? []).map((c) => [c.name ?? '', num(c.value, 'counter')]),
          );
          done({ counters, rttMs: performance.now() - sent });
        }
      };
      const onClose = () => done(undefined);
      const timer = setTimeout(() => done(undefined), PROBE_TIMEOUT_MS);
      s.on('messages', onMessages);
      s.once('close', onClose);
      s.send({ statsRequest: { nonce: long(nonce) } });
      s.flush();
    });
  }

  async snapshot(): Promise<StatusSnapshot> {
    const s = this.#session && !this.#session.closed ? this.#session : undefined;
    const probe = s ? await this.#probe(s) : undefined;
    const counters = splitCounters(probe?.counters ?? {});
    const devices: DeviceStatus[] = [];
    const add = (dev: number, model: string, address: string, link: string, kernelLink: boolean) => {
      const c = counters.get(dev);
      const d: DeviceStatus = {
        dev,
        model,
        address,
        link,
        kernelLink,
        counters: c?.counters ?? {},
        modelCounters: c?.modelCounters ?? {},
      };
      if (this.#channel === 'kernel') {
        d.driver = boundDriver(address, this.#sys);
        d.timing = readTiming(address, this.#sys);
        d.kernelCounters = readKernelCounters(address, this.#sys);
      }
      devices.push(d);
    };
    if (s && this.#relay) {
      const linked = this.#relay.linked;
      for (const d of this.#relay.devices) add(d.dev, d.model, d.address, 'up', linked.get(d.dev) ?? false);
    }
    for (const p of this.parking?.list ?? []) add(p.dev, p.model, p.address, 'down', false);
    devices.sort((a, b) => a.dev - b.dev);
    const session = s ? sessionStatus(s, this.#openedAt, this.#sessions - 1) : null;
    if (session && probe) session.probeRttMs = probe.rttMs;
    return {
      ...processStatus('host'),
      address: this.#address,
      channel: this.#channel,
      session,
      devices,
    };
  }

  /**
   * Looks at pcinet.ko's counters of every device (kernel channel) and logs a warning for each one
   * that says something was lost, refused or failed since the last look (KERNEL_TROUBLE): the
   * module counts and rate-limits such events in the kernel log; this puts them where the
   * operator of the host-agent looks. The first look at a device reports what it already has.
   */
  checkKernel(log: { warn(o: object, msg: string): void }): void {
    if (this.#channel !== 'kernel') return;
    const addresses = new Set<string>();
    for (const d of this.#relay?.devices ?? []) addresses.add(d.address);
    for (const p of this.parking?.list ?? []) addresses.add(p.address);
    for (const address of addresses) {
      if (!address) continue;
      const cur = readKernelCounters(address, this.#sys);
      if (!cur) continue;
      for (const t of kernelTrouble(this.#kernelSeen.get(address), cur)) {
        log.warn(
          { address, counter: t.name, added: t.added, total: t.total },
          `pcinet.ko: ${t.added} ${t.means}`,
        );
      }
      this.#kernelSeen.set(address, cur);
    }
    for (const a of this.#kernelSeen.keys()) if (!addresses.has(a)) this.#kernelSeen.delete(a);
  }

  handlers(): Record<string, ControlHandler> {
    return { status: () => this.snapshot(), trace: traceHandler(this.trace) };
  }
}
