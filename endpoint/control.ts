// The endpoint's control commands (proto/control.ts): "status" (its devices, the session, the
// counters) and "trace" (the messages of the active session as trace records, proto/trace.ts).
// The endpoint is where a device's whole data plane passes, whether it travels on the session or
// on pcinet.ko's kernel link (endpoint/link.ts): its runtime records both, so a trace taken here
// misses nothing a device said or was told.
import { ControlError, type ControlHandler } from '../proto/control.js';
import { type DeviceStatus, type StatusSnapshot, sessionStatus, splitCounters } from '../proto/status.js';
import { checkFilter, DEFAULT_SNAPLEN, type TraceFilter } from '../proto/trace.js';
import type { MsgKind } from '../proto/wire.js';
import type { EndpointServer } from './server.js';

const VERSION = '0.1.0';
/** Largest snap length a trace may ask for: a whole DMA chunk. */
const MAX_SNAPLEN = 256 << 10;

export function endpointStatus(server: EndpointServer): StatusSnapshot {
  const a = server.active;
  const devices: DeviceStatus[] = [];
  if (a) {
    const counters = splitCounters(a.runtime.counters());
    for (const d of a.runtime.devices()) {
      const c = counters.get(d.dev);
      devices.push({
        ...d,
        link: d.state,
        counters: c?.counters ?? {},
        modelCounters: c?.modelCounters ?? {},
      });
    }
  }
  return {
    role: 'endpoint',
    pid: process.pid,
    version: VERSION,
    uptimeMs: Math.round(process.uptime() * 1000),
    at: performance.now(),
    address: server.addresses.join(' '),
    session: a ? sessionStatus(a.session, a.openedAt, server.served - 1) : null,
    devices,
  };
}

/** A trace request's arguments, checked: the filter, snap length, and how many records at most. */
export function traceArgs(args: Record<string, unknown>): { filter: TraceFilter; snaplen: number } {
  const ints = (v: unknown, what: string): number[] | undefined => {
    if (v === undefined) return undefined;
    if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x)))
      throw new ControlError('BAD_ARGUMENT', `"${what}" must be a list of integers`);
    return v as number[];
  };
  const filter: TraceFilter = {
    devs: ints(args.devs, 'devs'),
    kinds: args.kinds as MsgKind[] | undefined,
    bar: args.bar as number | undefined,
    offset: args.offset as [number, number] | undefined,
  };
  if (filter.kinds !== undefined && !Array.isArray(filter.kinds))
    throw new ControlError('BAD_ARGUMENT', '"kinds" must be a list of message kinds');
  if (filter.offset !== undefined && (!Array.isArray(filter.offset) || filter.offset.length !== 2))
    throw new ControlError('BAD_ARGUMENT', '"offset" must be [LO, HI]');
  const bad = checkFilter(filter);
  if (bad) throw new ControlError('BAD_ARGUMENT', bad);
  const snaplen = (args.snaplen as number | undefined) ?? DEFAULT_SNAPLEN;
  if (!Number.isInteger(snaplen) || snaplen < 0 || snaplen > MAX_SNAPLEN)
    throw new ControlError('BAD_ARGUMENT', `"snaplen" must be 0..${MAX_SNAPLEN}`);
  return { filter, snaplen };
}

/**
 * "trace": events {records: [[µs, base64 record], ...], dropped} until the client cancels; the
 * final result says how many were sent and dropped. Records the client is too slow for are
 * dropped (and counted), never queued without bound.
 */
export function traceHandler(hub: EndpointServer['trace']): ControlHandler {
  return async (args, ctx) => {
    const { filter, snaplen } = traceArgs(args);
    let sent = 0;
    let dropped = 0;
    const sink = (records: [number, Uint8Array][], lost: number) => {
      sent += records.length;
      dropped += lost;
      const ok = ctx.emit({
        records: records.map(([ts, r]) => [ts, Buffer.from(r).toString('base64')]),
        dropped: lost,
      });
      if (!ok) void ctx.drained().then(() => hub.drained(sink));
      return ok;
    };
    const stop = hub.subscribe({ filter, snaplen, sink });
    ctx.emit({ started: { snaplen } });
    await new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      else ctx.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    stop();
    return { records: sent, dropped };
  };
}

export function endpointControl(server: EndpointServer): Record<string, ControlHandler> {
  return {
    status: () => endpointStatus(server),
    trace: traceHandler(server.trace),
  };
}
