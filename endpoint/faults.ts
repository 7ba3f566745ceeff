// Fault injection for driver developers (`pcinet inject`, docs/devices.md "Fault injection"): what
// a driver's error paths need to see — a late completion, a command failed with a chosen status, a
// lost or doubled interrupt, a refused DMA, a link that goes down, all-ones from a register — made
// to happen on demand, per device, for the next N occurrences or with a probability.
//
// Injections live here, outside the device models: the runtime (endpoint/runtime.ts) asks at the
// places where a device's interrupts, DMA and volatile reads leave it, on the session and on
// kernel links alike, and models that run commands ask through HostPort.commandFault (they only
// obey the answer). The server owns one Faults for its models, so injections outlive a session
// (a link-down ends one) until they are used up or cleared. Every injection that fires is logged
// and counted (`pcinet status`: dev1.injected, dev1.injectedFail …).
import type { Logger } from 'pino';
import type { CommandFault, CommandRef, DeviceModel } from '../devices/host-port.js';

export const FAULT_KINDS = [
  'delay',
  'fail',
  'drop-irq',
  'dup-irq',
  'refuse-dma',
  'link-down',
  'all-ones',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** A spec's options, each kind's own and those every kind takes. */
const COMMON = ['dev', 'count', 'probability'];
const KEYS: Record<FaultKind, readonly string[]> = {
  delay: ['ms', 'opcode', 'queue'],
  fail: ['sct', 'sc', 'dnr', 'status', 'opcode', 'queue'],
  'drop-irq': ['vector'],
  'dup-irq': ['vector'],
  'refuse-dma': ['dir'],
  'link-down': ['seconds'],
  'all-ones': ['bar', 'offset'],
};
/** The key a bare value after the kind stands for (`pcinet inject delay 5000`). */
export const MAIN_KEY: Partial<Record<FaultKind, string>> = { delay: 'ms', 'link-down': 'seconds' };

/** Longest delay and link-down: long enough for any driver timeout, short enough that a typo does
 *  not park a device for a day. */
export const MAX_DELAY_MS = 600_000;
export const MAX_LINK_DOWN_S = 3600;
/** NVMe status field bits (NVMe Base 2.0, Figure 101): SC 7:0, SCT 10:8, DNR 14. */
const DNR = 0x4000;

export class FaultSpecError extends Error {
  override readonly name = 'FaultSpecError';
}

/** One parsed spec: `KIND[:key=value,...]`. */
export interface FaultSpec {
  kind: FaultKind;
  /** Device id (1..N, as `pcinet status` shows it). */
  dev: number;
  /** Occurrences left to inject; undefined: no limit (with a probability). */
  count: number | undefined;
  /** Chance that an occurrence is injected (1: every one until `count` runs out). */
  probability: number;
  delayMs?: number;
  /** fail: the status the command completes with (the model's encoding). */
  status?: number;
  opcode?: number;
  queue?: number;
  /** opcode named an admin command: queue 0 only; a named I/O command: the other queues. */
  admin?: boolean;
  vector?: number;
  dir?: 'read' | 'write' | 'any';
  seconds?: number;
  bar?: number;
  offset?: number;
}

/** What the parser needs to know of the devices it may name (ids 1..N in order). */
export interface FaultTarget {
  dev: number;
  model: DeviceModel;
  /** Bus address once attached, e.g. "0000:01:00.0" (also accepted as a name). */
  address?: string;
}

function int(key: string, v: string, lo: number, hi: number): number {
  const n = /^0x[0-9a-f]+$/i.test(v) ? Number.parseInt(v, 16) : /^\d+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < lo || n > hi)
    throw new FaultSpecError(`${key}=${v}: want a whole number from ${lo} to ${hi} (decimal or 0x hex)`);
  return n;
}

/** `name`, a bus address, or an id: the one device it names, or a FaultSpecError listing them. */
function device(name: string | undefined, targets: readonly FaultTarget[]): FaultTarget {
  const known = () =>
    targets
      .map((t) => `${t.dev} (${t.model.description.model}${t.address ? ` ${t.address}` : ''})`)
      .join(', ');
  if (name === undefined) {
    if (targets.length === 1) return targets[0]!;
    throw new FaultSpecError(`which device? give dev=ID (the endpoint serves ${known()})`);
  }
  const byId = /^\d+$/.test(name) ? targets.find((t) => t.dev === Number(name)) : undefined;
  if (byId) return byId;
  const byAddress = targets.find((t) => t.address && (t.address === name || t.address.endsWith(`:${name}`)));
  if (byAddress) return byAddress;
  const byModel = targets.filter((t) => t.model.description.model === name);
  if (byModel.length === 1) return byModel[0]!;
  if (byModel.length > 1)
    throw new FaultSpecError(`dev=${name}: ${byModel.length} devices are ${name}s; give the id (${known()})`);
  throw new FaultSpecError(`dev=${name}: no such device (the endpoint serves ${known()})`);
}

/**
 * Parses `KIND[:key=value,...]` against the devices it may name, e.g.
 * `delay:dev=nvme,ms=5000,count=1`, `fail:dev=1,opcode=read,sct=0,sc=0x80`, `drop-irq:probability=0.1`.
 * Every mistake is a FaultSpecError that says what is wrong.
 */
export function parseFaultSpec(text: string, targets: readonly FaultTarget[]): FaultSpec {
  const colon = text.indexOf(':');
  const kindText = (colon < 0 ? text : text.slice(0, colon)).trim();
  const kind = FAULT_KINDS.find((k) => k === kindText);
  if (!kind) throw new FaultSpecError(`unknown kind "${kindText}" (kinds: ${FAULT_KINDS.join(', ')})`);
  const opts = new Map<string, string>();
  for (const part of colon < 0 ? [] : text.slice(colon + 1).split(',')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    const key = (eq < 0 ? part : part.slice(0, eq)).trim();
    const value = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (!COMMON.includes(key) && !KEYS[kind].includes(key))
      throw new FaultSpecError(
        `${kind} takes no "${key}" (it takes ${[...KEYS[kind], ...COMMON].join(', ')})`,
      );
    if (opts.has(key)) throw new FaultSpecError(`${key} given twice`);
    if (value === '' && key !== 'dnr') throw new FaultSpecError(`${key} needs a value (${key}=…)`);
    opts.set(key, value);
  }
  const t = device(opts.get('dev'), targets);
  const model = t.model;
  const spec: FaultSpec = { kind, dev: t.dev, count: undefined, probability: 1 };
  const p = opts.get('probability');
  if (p !== undefined) {
    const n = Number(p);
    if (!/^[0-9.]+$/.test(p) || !(n > 0 && n <= 1))
      throw new FaultSpecError(`probability=${p}: want a number above 0, at most 1`);
    spec.probability = n;
  }
  const c = opts.get('count');
  if (c !== undefined) spec.count = int('count', c, 1, 1_000_000_000);
  else if (p === undefined) spec.count = 1;

  const need = (key: string) => {
    const v = opts.get(key);
    if (v === undefined) throw new FaultSpecError(`${kind} needs ${key}=…`);
    return v;
  };
  const commandsOf = () => {
    if (!model.commands)
      throw new FaultSpecError(
        `${kind}: device ${t.dev} (${model.description.model}) runs no commands a fault can pick`,
      );
    return model.commands;
  };
  const commandMatch = () => {
    const op = opts.get('opcode');
    if (op !== undefined) {
      const names = commandsOf();
      const named = names[op];
      if (named) {
        spec.opcode = named.opcode;
        spec.admin = named.admin;
      } else if (/^(0x)?[0-9a-f]+$/i.test(op)) spec.opcode = int('opcode', op, 0, 255);
      else
        throw new FaultSpecError(
          `opcode=${op}: ${model.description.model} knows ${Object.keys(names).join(', ')} (or give a number)`,
        );
    }
    const q = opts.get('queue');
    if (q !== undefined) spec.queue = int('queue', q, 0, 65535);
    if (spec.admin !== undefined && spec.queue !== undefined && spec.admin !== (spec.queue === 0))
      throw new FaultSpecError(`opcode=${op} never comes on queue ${spec.queue}`);
  };

  switch (kind) {
    case 'delay':
      spec.delayMs = int('ms', need('ms'), 1, MAX_DELAY_MS);
      if (model.commands) commandMatch();
      else if (opts.has('opcode') || opts.has('queue'))
        throw new FaultSpecError(
          `delay: device ${t.dev} (${model.description.model}) runs no commands; its interrupts are delayed (no opcode/queue)`,
        );
      break;
    case 'fail': {
      commandsOf();
      commandMatch();
      if (opts.has('status')) {
        if (opts.has('sc') || opts.has('sct') || opts.has('dnr'))
          throw new FaultSpecError('give status=… or sct=/sc=/dnr, not both');
        spec.status = int('status', opts.get('status')!, 1, 0x7fff);
      } else {
        const sc = int('sc', need('sc'), 0, 255);
        const sct = opts.has('sct') ? int('sct', opts.get('sct')!, 0, 7) : 0;
        if (sc === 0 && sct === 0) throw new FaultSpecError('sct=0,sc=0 is success: nothing would fail');
        const dnr = opts.get('dnr');
        if (dnr !== undefined && !['', '0', '1'].includes(dnr))
          throw new FaultSpecError(`dnr=${dnr}: want dnr, dnr=1 or dnr=0`);
        spec.status = (sct << 8) | sc | (dnr === '' || dnr === '1' ? DNR : 0);
      }
      break;
    }
    case 'drop-irq':
    case 'dup-irq': {
      const v = opts.get('vector');
      const vectors = model.description.msixVectors;
      if (vectors === 0)
        throw new FaultSpecError(
          `${kind}: device ${t.dev} (${model.description.model}) has no MSI-X vectors`,
        );
      if (v !== undefined) spec.vector = int('vector', v, 0, vectors - 1);
      break;
    }
    case 'refuse-dma': {
      const d = opts.get('dir') ?? 'any';
      if (d !== 'read' && d !== 'write' && d !== 'any')
        throw new FaultSpecError(`dir=${d}: want read, write or any`);
      spec.dir = d;
      break;
    }
    case 'link-down':
      if (opts.has('count') || opts.has('probability'))
        throw new FaultSpecError('link-down happens once, at once: no count or probability');
      spec.seconds = int('seconds', need('seconds'), 1, MAX_LINK_DOWN_S);
      spec.count = 1;
      break;
    case 'all-ones': {
      const bars = model.description.bars;
      spec.bar = opts.has('bar') ? int('bar', opts.get('bar')!, 0, 5) : (bars[0]?.index ?? 0);
      const bar = bars.find((b) => b.index === spec.bar);
      if (!bar) throw new FaultSpecError(`all-ones: device ${t.dev} has no BAR ${spec.bar}`);
      if (opts.has('offset')) spec.offset = int('offset', opts.get('offset')!, 0, bar.size - 1);
      const reaches = bar.volatile.some(
        (s) => spec.offset === undefined || (spec.offset >= s.offset && spec.offset < s.offset + s.length),
      );
      if (!reaches)
        throw new FaultSpecError(
          `all-ones: BAR ${spec.bar} of device ${t.dev} (${model.description.model}) has no volatile register${spec.offset === undefined ? 's' : ` at 0x${spec.offset.toString(16)}`}: its reads are answered from the host's shadow and never reach the card`,
        );
      break;
    }
  }
  return spec;
}

/** The spec written back out, as `pcinet inject --list` shows it. */
export function formatFaultSpec(s: FaultSpec): string {
  const o: string[] = [`dev=${s.dev}`];
  const hex = (n: number) => `0x${n.toString(16)}`;
  if (s.delayMs !== undefined) o.push(`ms=${s.delayMs}`);
  if (s.seconds !== undefined) o.push(`seconds=${s.seconds}`);
  if (s.status !== undefined) o.push(`status=${hex(s.status)}`);
  if (s.opcode !== undefined) o.push(`opcode=${hex(s.opcode)}`);
  if (s.queue !== undefined) o.push(`queue=${s.queue}`);
  if (s.vector !== undefined) o.push(`vector=${s.vector}`);
  if (s.dir !== undefined) o.push(`dir=${s.dir}`);
  if (s.bar !== undefined) o.push(`bar=${s.bar}`);
  if (s.offset !== undefined) o.push(`offset=${hex(s.offset)}`);
  if (s.probability !== 1) o.push(`probability=${s.probability}`);
  return `${s.kind}:${o.join(',')}`;
}

/** An injection as `pcinet inject --list` shows it. */
export interface InjectionInfo {
  id: number;
  spec: string;
  kind: FaultKind;
  dev: number;
  /** Times it fired. */
  fired: number;
  /** Occurrences it may still fire on; null: no limit. */
  left: number | null;
  /** Occurrences that matched and were let through (probability). */
  passed: number;
}

interface Injection {
  id: number;
  spec: FaultSpec;
  text: string;
  fired: number;
  passed: number;
}

/** What the runtime is told to do with an interrupt. */
export type IrqFault = { drop: true } | { dup: true } | { delayMs: number };

export interface FaultsOptions {
  log: Logger;
  /** Takes the devices' link down for `seconds` (the server ends the session, refuses the next). */
  linkDown(seconds: number, why: string): void;
  /** Chance source, for tests; default Math.random. */
  random?: () => number;
}

/** Counter names: dev1.injected (all kinds) and dev1.injected<Kind>. */
const counterName = (k: FaultKind) =>
  `injected${k.replace(/(^|-)([a-z])/g, (_m, _d, c: string) => c.toUpperCase())}`;

export class Faults {
  readonly #targets: FaultTarget[];
  readonly #o: FaultsOptions;
  readonly #log: Logger;
  readonly #random: () => number;
  /** Injections with occurrences left, per device, in the order given. */
  readonly #live = new Map<number, Injection[]>();
  readonly #all: Injection[] = [];
  readonly #counts = new Map<number, Map<FaultKind, number>>();
  #nextId = 1;
  /** Timers of held completions and interrupts, cleared with the injections. */
  readonly #timers = new Set<{ timer: NodeJS.Timeout; release: () => void }>();

  constructor(models: readonly DeviceModel[], o: FaultsOptions) {
    this.#targets = models.map((model, i) => ({ dev: i + 1, model }));
    this.#o = o;
    this.#log = o.log;
    this.#random = o.random ?? Math.random;
  }

  /** True while some injection is live: the runtime asks nothing otherwise. */
  get armed(): boolean {
    return this.#live.size > 0;
  }

  /** Bus addresses, once the devices are attached: dev=0000:01:00.0 names them too. */
  setAddresses(addresses: ReadonlyMap<number, string>): void {
    for (const t of this.#targets) t.address = addresses.get(t.dev) || t.address;
  }

  /** Parses and installs a spec (FaultSpecError if it is wrong). link-down fires at once. */
  add(text: string): InjectionInfo {
    const spec = parseFaultSpec(text, this.#targets);
    const inj: Injection = { id: this.#nextId++, spec, text: formatFaultSpec(spec), fired: 0, passed: 0 };
    this.#all.push(inj);
    this.#log.warn({ id: inj.id, dev: spec.dev, spec: inj.text, count: spec.count }, 'fault injection armed');
    if (spec.kind === 'link-down') {
      this.#fired(inj);
      this.#o.linkDown(spec.seconds!, `pcinet inject ${inj.text} (#${inj.id})`);
      return this.#info(inj);
    }
    const list = this.#live.get(spec.dev) ?? [];
    list.push(inj);
    this.#live.set(spec.dev, list);
    return this.#info(inj);
  }

  list(): InjectionInfo[] {
    return this.#all.map((i) => this.#info(i));
  }

  /** Removes injection `id` (all of them without one; held completions are let go at once).
   *  Returns how many were removed. */
  clear(id?: number): number {
    const gone = id === undefined ? [...this.#all] : this.#all.filter((i) => i.id === id);
    for (const g of gone) {
      this.#all.splice(this.#all.indexOf(g), 1);
      const list = this.#live.get(g.spec.dev);
      if (list?.includes(g)) this.#retire(g);
    }
    if (id === undefined) {
      for (const t of this.#timers) {
        clearTimeout(t.timer);
        t.release();
      }
      this.#timers.clear();
    }
    if (gone.length) this.#log.warn({ ids: gone.map((g) => g.id) }, 'fault injection cleared');
    return gone.length;
  }

  /** dev<N>.injected and dev<N>.injected<Kind> of the kinds that fired. */
  counters(dev: number): Record<string, number> {
    const out: Record<string, number> = {};
    const c = this.#counts.get(dev);
    if (!c) return out;
    let all = 0;
    for (const [k, n] of c) {
      out[counterName(k)] = n;
      all += n;
    }
    out.injected = all;
    return out;
  }

  // ---- asked by the runtime and, through HostPort.commandFault, by models ----

  /** An interrupt about to leave device `dev`. */
  interrupt(dev: number, vector: number, model: DeviceModel): IrqFault | undefined {
    const inj = this.#take(dev, (s) => {
      if (s.kind === 'drop-irq' || s.kind === 'dup-irq') return s.vector === undefined || s.vector === vector;
      return s.kind === 'delay' && !model.commands;
    });
    if (!inj) return undefined;
    this.#fired(inj, { vector });
    if (inj.spec.kind === 'drop-irq') return { drop: true };
    if (inj.spec.kind === 'dup-irq') return { dup: true };
    return { delayMs: inj.spec.delayMs! };
  }

  /** A DMA read or write of device `dev`: true if it is to be refused. */
  dma(dev: number, dir: 'read' | 'write', iova: bigint, len: number): boolean {
    const inj = this.#take(dev, (s) => s.kind === 'refuse-dma' && (s.dir === 'any' || s.dir === dir));
    if (!inj) return false;
    this.#fired(inj, { dir, iova: `0x${iova.toString(16)}`, len });
    return true;
  }

  /** A volatile read of device `dev`: true if it is to return all-ones instead of reaching it. */
  allOnes(dev: number, bar: number, offset: number, size: number): boolean {
    const inj = this.#take(
      dev,
      (s) =>
        s.kind === 'all-ones' &&
        s.bar === bar &&
        (s.offset === undefined || (s.offset < offset + size && offset < s.offset + 4)),
    );
    if (!inj) return false;
    this.#fired(inj, { bar, offset: `0x${offset.toString(16)}`, size });
    return true;
  }

  /** A command device `dev` is about to run (HostPort.commandFault). */
  command(dev: number, cmd: CommandRef): CommandFault | undefined {
    const inj = this.#take(dev, (s) => {
      if (s.kind !== 'fail' && s.kind !== 'delay') return false;
      if (s.opcode !== undefined && s.opcode !== cmd.opcode) return false;
      if (s.queue !== undefined) return s.queue === cmd.queue;
      if (s.admin !== undefined) return s.admin === (cmd.queue === 0);
      // Unless told otherwise, I/O commands: failing the admin queue's would stop most drivers
      // before they are up.
      return cmd.queue !== 0;
    });
    if (!inj) return undefined;
    const s = inj.spec;
    this.#fired(inj, {
      queue: cmd.queue,
      opcode: `0x${cmd.opcode.toString(16)}`,
      ...(s.status !== undefined ? { status: `0x${s.status.toString(16)}` } : { ms: s.delayMs }),
    });
    if (s.status !== undefined) return { status: s.status };
    return { hold: this.hold(s.delayMs!) };
  }

  /** Resolves after `ms`, or at once when the injections are cleared. */
  hold(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = {
        timer: setTimeout(() => {
          this.#timers.delete(t);
          resolve();
        }, ms),
        release: resolve,
      };
      this.#timers.add(t);
    });
  }

  /** Stops every timer (the endpoint is stopping). */
  close(): void {
    for (const t of this.#timers) {
      clearTimeout(t.timer);
      t.release();
    }
    this.#timers.clear();
  }

  /** The first live injection of `dev` that matches and fires on this occurrence. */
  #take(dev: number, match: (s: FaultSpec) => boolean): Injection | undefined {
    const list = this.#live.get(dev);
    if (!list) return undefined;
    for (const inj of list) {
      if (!match(inj.spec)) continue;
      if (inj.spec.probability < 1 && this.#random() >= inj.spec.probability) {
        inj.passed++;
        continue;
      }
      return inj;
    }
    return undefined;
  }

  #fired(inj: Injection, fields: Record<string, unknown> = {}): void {
    const s = inj.spec;
    inj.fired++;
    let c = this.#counts.get(s.dev);
    if (!c) {
      c = new Map();
      this.#counts.set(s.dev, c);
    }
    c.set(s.kind, (c.get(s.kind) ?? 0) + 1);
    const left = s.count === undefined ? undefined : s.count - inj.fired;
    const t = this.#targets.find((x) => x.dev === s.dev)!;
    this.#log.warn(
      {
        id: inj.id,
        dev: s.dev,
        model: t.model.description.model,
        kind: s.kind,
        fired: inj.fired,
        left,
        ...fields,
      },
      'fault injected',
    );
    if (left === 0 && s.kind !== 'link-down') this.#retire(inj);
  }

  #retire(inj: Injection): void {
    const list = this.#live.get(inj.spec.dev);
    if (!list) return;
    const rest = list.filter((i) => i !== inj);
    if (rest.length) this.#live.set(inj.spec.dev, rest);
    else this.#live.delete(inj.spec.dev);
  }

  #info(i: Injection): InjectionInfo {
    const left = i.spec.count === undefined ? null : i.spec.count - i.fired;
    return {
      id: i.id,
      spec: i.text,
      kind: i.spec.kind,
      dev: i.spec.dev,
      fired: i.fired,
      left,
      passed: i.passed,
    };
  }
}
