// The endpoint's control commands (proto/control.ts): "status" (its devices, the session, the
// counters) and "trace" (the messages of the active session as trace records, proto/trace.ts).
// The endpoint is where a device's whole data plane passes, whether it travels on the session or
// on pcinet.ko's kernel link (endpoint/link.ts): its runtime records both, so a trace taken here
// misses nothing a device said or was told.
import type { ControlHandler } from '../proto/control.js';
import {
  type DeviceStatus,
  processStatus,
  type StatusSnapshot,
  sessionStatus,
  splitCounters,
} from '../proto/status.js';
import { traceHandler } from '../proto/trace.js';
import type { EndpointServer } from './server.js';

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
    ...processStatus('endpoint'),
    address: server.addresses.join(' '),
    session: a ? sessionStatus(a.session, a.openedAt, server.served - 1) : null,
    devices,
  };
}

export function endpointControl(server: EndpointServer): Record<string, ControlHandler> {
  return {
    status: () => endpointStatus(server),
    trace: traceHandler(server.trace),
  };
}
