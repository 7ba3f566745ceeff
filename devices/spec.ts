// How a device model offers itself to `--device NAME[:key=value,...]`: each model exports a
// DeviceSpec (its options with their parsers and help, and a factory), and devices/models.ts lists
// them. Parsing stays pure: what a model needs from the card (storage, a TAP, entropy) it asks of
// the CardBackends the endpoint passes to create(), so no model opens a file or a socket itself.
import type { DeviceModel } from './host-port.js';
import type { BlockBackend } from './nvme/backend.js';
import type { ReplayRecording } from './replay/records.js';
import type { NetBackend } from './virtio-net/device.js';
import type { EntropySource } from './virtio-rng/device.js';

/** Parses one option value; throws Error("<what it must be>") when it is bad. */
export interface OptionParser<T> {
  /** For help: "1..64", "PATH" … */
  readonly syntax: string;
  readonly help: string;
  parse(value: string): T;
}

/** Where block storage comes from: a file or block device, memory, or a temporary file. */
export type BlockSource = { path: string; size?: number } | { mem: number } | { temp: number };

/** What the card can give a model; the endpoint's implementation is endpoint/backends/index.ts. */
export interface CardBackends {
  block(source: BlockSource): BlockBackend;
  tap(name: string, o: { netHeader: boolean }): NetBackend;
  entropy(): EntropySource;
  /** A session recorded by `pcinet trace --for-replay` (the replay model): device `device` of the
   *  capture at `path`, or its only one. Throws Error saying what is wrong with the file. */
  recording(o: { path: string; device?: number }): ReplayRecording;
}

type Parsers = Record<string, OptionParser<unknown>>;
type Parsed<P extends Parsers> = { [K in keyof P]?: P[K] extends OptionParser<infer T> ? T : never };

export interface DeviceSpec {
  /** The NAME in --device NAME[:…]. */
  readonly name: string;
  /** One line for help output. */
  readonly summary: string;
  readonly options: Readonly<Parsers>;
  /** Builds the model from parsed options; throws Error with one line when they do not fit. */
  create(options: Record<string, unknown>, backends: CardBackends): DeviceModel;
}

/** A DeviceSpec with typed options. */
export function deviceSpec<P extends Parsers>(d: {
  name: string;
  summary: string;
  options: P;
  create(options: Parsed<P>, backends: CardBackends): DeviceModel;
}): DeviceSpec {
  return { ...d, create: (o, b) => d.create(o as Parsed<P>, b) };
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

/** One of a few words. */
export function choiceOption<T extends string>(choices: readonly T[], help: string): OptionParser<T> {
  return {
    syntax: choices.join('|'),
    help,
    parse(value) {
      if (!choices.includes(value as T)) throw new Error(`must be ${choices.join(' or ')}`);
      return value as T;
    },
  };
}

/** Text of 1..max printable ASCII characters ('_' stands for a space: specs split on commas). */
export function textOption(max: number, help: string): OptionParser<string> {
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

export function pathOption(help: string): OptionParser<string> {
  return {
    syntax: 'PATH',
    help,
    parse(v) {
      if (!v.startsWith('/')) throw new Error('must be an absolute path');
      return v;
    },
  };
}

/** Parses SIZE with an optional K, M, G or T suffix (powers of 1024). */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)$/i.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not a size (e.g. 512M, 4G)`);
  const n = Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`size "${text}" is out of range`);
  return n;
}

/** A size with an optional K, M, G or T suffix. */
export const sizeOption: OptionParser<number> = {
  syntax: 'SIZE',
  help: 'bytes, with K, M, G or T (powers of 1024)',
  parse: (v) => parseSize(v),
};

/** The storage options every block model takes (NVMe, virtio-blk): exactly one of file=, path=,
 *  mem=, or size= alone for a temporary file. */
export const blockOptions = {
  file: pathOption('image file; created sparse with size= if absent'),
  path: pathOption('block device, e.g. /dev/zvol/tank/disk'),
  mem: { ...sizeOption, help: 'SIZE bytes of memory, gone when the endpoint exits' },
  size: { ...sizeOption, help: 'the file’s size; alone: a temporary file of SIZE bytes' },
};

export function blockSource(
  model: string,
  o: { file?: string; path?: string; mem?: number; size?: number },
): BlockSource {
  const given = [o.file, o.path, o.mem].filter((x) => x !== undefined).length;
  if (given > 1) throw new Error('give one of file=, path= and mem=');
  const path = o.file ?? o.path;
  if (path) return { path, size: o.size };
  if (o.mem !== undefined) return { mem: o.mem };
  if (o.size === undefined)
    throw new Error(`${model} needs file=PATH[,size=SIZE], path=/dev/..., mem=SIZE or size=SIZE`);
  return { temp: o.size };
}
