// The endpoint's control commands (proto/control.ts): "status" (its devices, the session, the
// counters), "trace" (the messages of the active session as trace records, proto/trace.ts) and
// "inject" (faults for driver developers, endpoint/faults.ts).
// The endpoint is where a device's whole data plane passes, whether it travels on the session or
// on pcinet.ko's kernel link (endpoint/link.ts): its runtime records both, so a trace taken here
// misses nothing a device said or was told.
import type { DeviceModel } from '../devices/host-port.js';
import { ControlError, type ControlHandler } from '../proto/control.js';
import {
  type DeviceStatus,
  processStatus,
  type StatusSnapshot,
  sessionStatus,
  splitCounters,
} from '../proto/status.js';
import { traceHandler } from '../proto/trace.js';
import { FaultSpecError } from './faults.js';
import type { EndpointServer } from './server.js';

/** `models`: the endpoint's device models (ids 1..N), whose notes() the status carries. */
export function endpointStatus(server: EndpointServer, models: readonly DeviceModel[] = []): StatusSnapshot {
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
    notes: models.flatMap((m, i) => (m.notes?.() ?? []).map((line) => `dev ${i + 1}: ${line}`)),
  };
}

/** "inject": {spec: "KIND:key=value,..."} installs one (its entry is the result), {list: true}
 *  lists them, {clear: true} removes all, {clear: ID} one. */
export function injectHandler(server: EndpointServer): ControlHandler {
  return (args) => {
    const { spec, list, clear } = args;
    const given = [spec, list, clear].filter((x) => x !== undefined && x !== false).length;
    if (given !== 1) throw new ControlError('BAD_ARGUMENT', 'give one of spec, list or clear');
    if (list === true) return { injections: server.faults.list() };
    if (clear !== undefined) {
      if (clear !== true && !(Number.isSafeInteger(clear) && (clear as number) > 0))
        throw new ControlError('BAD_ARGUMENT', 'clear: true (all) or an injection id');
      const id = clear === true ? undefined : (clear as number);
      const cleared = server.faults.clear(id);
      if (id !== undefined && cleared === 0) throw new ControlError('BAD_ARGUMENT', `no injection ${id}`);
      return { cleared };
    }
    if (typeof spec !== 'string')
      throw new ControlError('BAD_ARGUMENT', 'spec: a string, KIND:key=value,...');
    try {
      return { injection: server.faults.add(spec) };
    } catch (e) {
      if (e instanceof FaultSpecError) throw new ControlError('BAD_ARGUMENT', e.message);
      throw e;
    }
  };
}

export function endpointControl(
  server: EndpointServer,
  models: readonly DeviceModel[] = [],
): Record<string, ControlHandler> {
  return {
    status: () => endpointStatus(server, models),
    trace: traceHandler(server.trace),
    inject: injectHandler(server),
  };
}
