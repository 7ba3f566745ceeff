// Device specs on the command line: NAME[:key=value,...], e.g. `test`, `test:vectors=16`. Each
// device model registers a factory with its options; a bad spec is an Error with one line that
// names the spec and the problem.
import { unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { DeviceModel } from '../devices/host-port.js';
import { NvmeController } from '../devices/nvme/controller.js';
import { TestDevice } from '../devices/test/device.js';
import { TEST_DEFAULT_VECTORS, TEST_MAX_VECTORS } from '../devices/test/regs.js';
import { VirtioNet } from '../devices/virtio-net/device.js';
import { type BlockBackend, FileBackend, MemoryBackend, parseSize } from './backends/block.js';
import { checkTapName, TapBackend } from './backends/tap.js';

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

/** on or off. */
export function switchOption(help: string): OptionParser<boolean> {
  return {
    syntax: 'on|off',
    help,
    parse(value) {
      if (value !== 'on' && value !== 'off') throw new Error('must be on or off');
      return value === 'on';
    },
  };
}

/** A MAC address aa:bb:cc:dd:ee:ff (unicast). */
export const macOption: OptionParser<Uint8Array> = {
  syntax: 'xx:xx:xx:xx:xx:xx',
  help: 'MAC address (default: 52:54:00 and three bytes derived from the TAP name)',
  parse(value) {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(value))
      throw new Error('must be six hex bytes separated by colons');
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

/** A size with an optional K, M, G or T suffix. */
export const sizeOption: OptionParser<number> = {
  syntax: 'SIZE',
  help: 'bytes, with K, M, G or T (powers of 1024)',
  parse: (v) => parseSize(v),
};

/** Text of 1..max printable ASCII characters ('_' stands for a space: specs split on commas). */
function textOption(max: number, help: string): OptionParser<string> {
  return {
    syntax: 'TEXT',
    help,
    parse(v) {
      if (!/^[\x21-\x7e]+$/.test(v) || v.length > max)
        throw new Error(`must be 1..${max} printable ASCII characters`);
      return v.replaceAll('_', ' ');
    },
  };
}

const pathOption = (help: string): OptionParser<string> => ({
  syntax: 'PATH',
  help,
  parse(v) {
    if (!v.startsWith('/')) throw new Error('must be an absolute path');
    return v;
  },
});

/** The NVMe namespace's storage, from exactly one of file=, path=, mem=, or size= alone. */
function nvmeBackend(o: { file?: string; path?: string; mem?: number; size?: number }): BlockBackend {
  const given = [o.file, o.path, o.mem].filter((x) => x !== undefined).length;
  if (given > 1) throw new Error('give one of file=, path= and mem=');
  if (o.file) return FileBackend.open(o.file, { size: o.size });
  if (o.path) return FileBackend.open(o.path, { size: o.size });
  if (o.mem !== undefined) return new MemoryBackend(o.mem);
  if (o.size === undefined)
    throw new Error('nvme needs file=PATH[,size=SIZE], path=/dev/..., mem=SIZE or size=SIZE');
  // size= alone: a temporary file, unlinked at once so that it goes when the endpoint does.
  const tmp = `${tmpdir()}/pcinet-nvme-${process.pid}-${Date.now()}.img`;
  const b = FileBackend.open(tmp, { size: o.size });
  unlinkSync(tmp);
  return b;
}

/** The device models `--device` knows. */
export const DEVICES: Readonly<Record<string, DeviceFactory>> = {
  test: device({
    summary: 'the conformance device (docs/devices.md): registers, MSI-X, DMA, volatile reads, doorbells',
    options: { vectors: intOption(1, TEST_MAX_VECTORS, `MSI-X vectors (default ${TEST_DEFAULT_VECTORS})`) },
    create: (o) => new TestDevice({ vectors: o.vectors }),
  }),
  nvme: device({
    summary: 'an NVMe SSD with one namespace stored in a file, a block device or memory (docs/devices.md)',
    options: {
      file: pathOption('image file; created sparse with size= if absent'),
      path: pathOption('block device, e.g. /dev/zvol/tank/disk'),
      mem: sizeOption,
      size: sizeOption,
      lba: {
        syntax: '512|4096',
        help: 'LBA size (default 512)',
        parse(v: string) {
          if (v !== '512' && v !== '4096') throw new Error('must be 512 or 4096');
          return Number(v);
        },
      } satisfies OptionParser<number>,
      serial: textOption(20, 'serial number (default PCINET0001)'),
      model: textOption(40, "model name, '_' for spaces (default pcinet NVMe)"),
      fw: textOption(8, 'firmware revision (default 0.1.0)'),
      queues: intOption(1, 32, 'I/O queue pairs (default 8)'),
    },
    create: (o) =>
      new NvmeController({
        backend: nvmeBackend(o),
        lbaSize: o.lba,
        serial: o.serial,
        model: o.model,
        firmware: o.fw,
        queues: o.queues,
      }),
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
      offloads: switchOption('checksum and TSO offloads through the TAP (default on)'),
    },
    create: (o) => {
      if (!o.tap) throw new Error('virtio-net needs tap=NAME (the TAP interface frames go to)');
      const offloads = o.offloads ?? true;
      return new VirtioNet({
        mac: o.mac ?? defaultMac(o.tap),
        mtu: o.mtu,
        offloads,
        backend: new TapBackend(o.tap, { netHeader: offloads }),
      });
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
