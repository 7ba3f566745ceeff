// Device specs on the command line: NAME[:key=value,...], e.g. `test`, `test:vectors=16`. The
// models and their options are the models' own (devices/models.ts, each model's DeviceSpec); this
// file only splits, looks up, parses and builds. A bad spec is an Error with one line that names
// the spec and the problem.
import type { DeviceModel } from '../devices/host-port.js';
import { MODELS } from '../devices/models.js';
import type { CardBackends, DeviceSpec } from '../devices/spec.js';
import { cardBackends } from './backends/card.js';

export type { DeviceSpec, OptionParser } from '../devices/spec.js';
export { deviceSpec, intOption, switchOption } from '../devices/spec.js';

export type Registry = Readonly<Record<string, DeviceSpec>>;

/** The device models `--device` knows, by name. */
export const DEVICES: Registry = Object.fromEntries(MODELS.map((m) => [m.name, m]));

export interface SplitSpec {
  name: string;
  options: Map<string, string>;
}

const NAME = /^[a-z][a-z0-9-]*$/;
const KEY = /^[a-z][a-zA-Z0-9-]*$/;

/** Syntax only: name and raw key/value pairs. */
export function splitDeviceSpec(spec: string): SplitSpec {
  const bad = (why: string): never => {
    throw new Error(`device "${spec}": ${why}`);
  };
  if (spec === '') bad('empty spec (want NAME[:key=value,...], e.g. test:vectors=16)');
  const colon = spec.indexOf(':');
  const name = colon < 0 ? spec : spec.slice(0, colon);
  if (!NAME.test(name)) bad(`"${name}" is not a device name (lower-case letters, digits, '-')`);
  const options = new Map<string, string>();
  if (colon < 0) return { name, options };
  const rest = spec.slice(colon + 1);
  if (rest === '') bad(`nothing after ':' (want key=value,...)`);
  for (const item of rest.split(',')) {
    if (item === '') bad('empty option (two commas, or a trailing comma?)');
    const eq = item.indexOf('=');
    if (eq < 0) bad(`option "${item}" needs a value (${item}=...)`);
    const key = item.slice(0, eq);
    const value = item.slice(eq + 1);
    if (!KEY.test(key)) bad(`"${key}" is not an option name`);
    if (value === '') bad(`option "${key}" has an empty value`);
    if (options.has(key)) bad(`option "${key}" given twice`);
    options.set(key, value);
  }
  return { name, options };
}

/** Parses a spec and builds the device model. Throws Error with one line on any problem. */
export function parseDeviceSpec(
  spec: string,
  registry: Registry = DEVICES,
  backends: CardBackends = cardBackends,
): DeviceModel {
  const { name, options } = splitDeviceSpec(spec);
  const factory = Object.hasOwn(registry, name) ? registry[name] : undefined;
  if (!factory) {
    throw new Error(
      `device "${spec}": unknown device "${name}" (known: ${Object.keys(registry).sort().join(', ')})`,
    );
  }
  const parsed: Record<string, unknown> = {};
  for (const [key, raw] of options) {
    const opt = Object.hasOwn(factory.options, key) ? factory.options[key] : undefined;
    if (!opt) {
      const known = Object.keys(factory.options).sort();
      throw new Error(
        `device "${spec}": ${name} has no option "${key}" (${known.length ? `known: ${known.join(', ')}` : 'it takes none'})`,
      );
    }
    try {
      parsed[key] = opt.parse(raw);
    } catch (e) {
      throw new Error(`device "${spec}": ${key} ${(e as Error).message}, got "${raw}"`);
    }
  }
  try {
    return factory.create(parsed, backends);
  } catch (e) {
    throw new Error(`device "${spec}": ${(e as Error).message}`);
  }
}

/** Help text: one line per device and option. */
export function deviceHelp(registry: Registry = DEVICES): string {
  const lines: string[] = [];
  for (const name of Object.keys(registry).sort()) {
    const f = registry[name];
    lines.push(`${name}  ${f.summary}`);
    for (const [key, o] of Object.entries(f.options)) lines.push(`  ${name}:${key}=${o.syntax}  ${o.help}`);
  }
  return lines.join('\n');
}
