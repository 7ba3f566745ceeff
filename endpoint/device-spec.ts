// Device specs on the command line: NAME[:key=value,...], e.g. `test`, `test:vectors=16`. Each
// device model registers a factory with its options; a bad spec is an Error with one line that
// names the spec and the problem.
import type { DeviceModel } from '../devices/host-port.js';
import { TestDevice } from '../devices/test/device.js';
import { VirtioNet } from '../devices/virtio-net/device.js';
import { checkTapName, TapBackend } from './backends/tap.js';
import { TEST_DEFAULT_VECTORS, TEST_MAX_VECTORS } from '../devices/test/regs.js';

/** Parses one option value; throws Error("<what it must be>") when it is bad. */
export interface OptionParser<T> {
  /** For help: "1..64", "PATH" … */
  readonly syntax: string;
  readonly help: string;
  parse(value: string): T;
}

type Parsers = Record<string, OptionParser<unknown>>;
type Parsed<P extends Parsers> = { [K in keyof P]?: P[K] extends OptionParser<infer T> ? T : never };

export interface DeviceFactory {
  /** One line for help output. */
  readonly summary: string;
  readonly options: Readonly<Parsers>;
  create(options: Record<string, unknown>): DeviceModel;
}

/** A registry entry with typed options. */
export function device<P extends Parsers>(d: {
  summary: string;
  options: P;
  create(options: Parsed<P>): DeviceModel;
}): DeviceFactory {
  return { summary: d.summary, options: d.options, create: (o) => d.create(o as Parsed<P>) };
}

/** An integer option in [min, max], decimal or 0x hex. */
export function intOption(min: number, max: number, help: string): OptionParser<number> {
  return {
    syntax: `${min}..${max}`,
    help,
    parse(value) {
      const n = /^(0|[1-9][0-9]*|0x[0-9a-f]+)$/i.test(value) ? Number(value) : Number.NaN;
      if (!Number.isSafeInteger(n) || n < min || n > max)
        throw new Error(`must be an integer ${min}..${max}`);
      return n;
    },
  };
}

/** A MAC address aa:bb:cc:dd:ee:ff (unicast). */
export const macOption: OptionParser<Uint8Array> = {
  syntax: 'xx:xx:xx:xx:xx:xx',
  help: 'MAC address (default: 52:54:00 and three bytes derived from the TAP name)',
  parse(value) {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(value)) throw new Error('must be six hex bytes separated by colons');
    const mac = Uint8Array.from(value.split(':').map((b) => Number.parseInt(b, 16)));
    if (mac[0]! & 1) throw new Error('must be a unicast address (first byte even)');
    return mac;
  },
};

/** A stable, locally administered MAC for a TAP name: the guest keeps its address across restarts. */
export function defaultMac(name: string): Uint8Array {
  let h = 2166136261;
  for (const c of name) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return Uint8Array.of(0x52, 0x54, 0x00, (h >>> 16) & 0xff, (h >>> 8) & 0xff, h & 0xff);
}

/** The device models `--device` knows. nvme and virtio-net add themselves here. */
export const DEVICES: Readonly<Record<string, DeviceFactory>> = {
  test: device({
    summary: 'the conformance device (docs/devices.md): registers, MSI-X, DMA, volatile reads, doorbells',
    options: { vectors: intOption(1, TEST_MAX_VECTORS, `MSI-X vectors (default ${TEST_DEFAULT_VECTORS})`) },
    create: (o) => new TestDevice({ vectors: o.vectors }),
  }),
  'virtio-net': device({
    summary: 'a virtio 1.x network card whose wire is a TAP interface on this machine (docs/devices.md)',
    options: {
      tap: {
        syntax: 'NAME',
        help: 'TAP interface to use, created if absent (required)',
        parse: (v: string) => checkTapName(v),
      } satisfies OptionParser<string>,
      mac: macOption,
      mtu: intOption(68, 65535, 'MTU the driver is told (default 1500)'),
    },
    create: (o) => {
      if (!o.tap) throw new Error('virtio-net needs tap=NAME (the TAP interface frames go to)');
      return new VirtioNet({ mac: o.mac ?? defaultMac(o.tap), mtu: o.mtu, backend: new TapBackend(o.tap) });
    },
  }),
};

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
  registry: Readonly<Record<string, DeviceFactory>> = DEVICES,
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
    return factory.create(parsed);
  } catch (e) {
    throw new Error(`device "${spec}": ${(e as Error).message}`);
  }
}

/** Help text: one line per device and option. */
export function deviceHelp(registry: Readonly<Record<string, DeviceFactory>> = DEVICES): string {
  const lines: string[] = [];
  for (const name of Object.keys(registry).sort()) {
    const f = registry[name];
    lines.push(`${name}  ${f.summary}`);
    for (const [key, o] of Object.entries(f.options)) lines.push(`  ${name}:${key}=${o.syntax}  ${o.help}`);
  }
  return lines.join('\n');
}
