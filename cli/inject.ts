// `pcinet inject`: fault injection on a running endpoint through its control socket ("inject",
// endpoint/control.ts; the kinds and their options in endpoint/faults.ts). The flags only spell a
// spec, `KIND:key=value,...`, the same text `pcinet endpoint --inject` takes; the endpoint parses
// it against its devices and says what is wrong.
import { ControlClient, ControlError, defaultControlPath } from '../proto/control.js';
import { UsageError } from './errors.js';

export interface InjectFlags {
  socket?: string;
  list: boolean;
  /** --clear [id]: true for all. */
  clear?: boolean | string;
  json: boolean;
  device?: string;
  count?: string;
  probability?: string;
  ms?: string;
  seconds?: string;
  sct?: string;
  sc?: string;
  dnr?: boolean;
  status?: string;
  opcode?: string;
  queue?: string;
  vector?: string;
  dir?: string;
  bar?: string;
  offset?: string;
}

/** Flag -> spec key. */
const KEYS: [keyof InjectFlags, string][] = [
  ['device', 'dev'],
  ['count', 'count'],
  ['probability', 'probability'],
  ['ms', 'ms'],
  ['seconds', 'seconds'],
  ['sct', 'sct'],
  ['sc', 'sc'],
  ['status', 'status'],
  ['opcode', 'opcode'],
  ['queue', 'queue'],
  ['vector', 'vector'],
  ['dir', 'dir'],
  ['bar', 'bar'],
  ['offset', 'offset'],
];

/** The bare value after a kind: `delay 5000` is ms, `link-down 5` seconds. */
const MAIN_KEY: Record<string, string> = { delay: 'ms', 'link-down': 'seconds' };

/** The spec the arguments spell: `KIND[:...]` as given, plus one key per flag. */
export function injectSpec(kind: string, value: string | undefined, o: InjectFlags): string {
  const colon = kind.indexOf(':');
  const name = colon < 0 ? kind : kind.slice(0, colon);
  const parts =
    colon < 0
      ? []
      : kind
          .slice(colon + 1)
          .split(',')
          .filter((p) => p !== '');
  if (value !== undefined) {
    const key = MAIN_KEY[name];
    if (!key) throw new UsageError(`${name} takes no bare value "${value}" (give its options as flags)`);
    parts.push(`${key}=${value}`);
  }
  for (const [flag, key] of KEYS) {
    const v = o[flag];
    if (typeof v === 'string') {
      if (v.includes(',') || v.includes('='))
        throw new UsageError(`--${flag} ${v}: no "," or "=" in a value`);
      parts.push(`${key}=${v}`);
    }
  }
  if (o.dnr) parts.push('dnr');
  return parts.length ? `${name}:${parts.join(',')}` : name;
}

interface Injection {
  id: number;
  spec: string;
  fired: number;
  left: number | null;
  passed: number;
}

function line(i: Injection): string {
  const left = i.left === null ? 'until cleared' : i.left === 0 ? 'done' : `${i.left} left`;
  return `#${i.id}  ${i.spec}  fired ${i.fired}, ${left}${i.passed ? `, ${i.passed} let through` : ''}`;
}

export async function runInject(
  kind: string | undefined,
  value: string | undefined,
  o: InjectFlags,
): Promise<number> {
  const modes = [kind !== undefined, o.list, o.clear !== undefined].filter(Boolean).length;
  if (modes !== 1)
    throw new UsageError('give a fault (e.g. pcinet inject delay 5000 --device 1), --list or --clear');
  let args: object;
  if (o.list) args = { list: true };
  else if (o.clear !== undefined) {
    if (o.clear === true) args = { clear: true };
    else {
      const id = Number(o.clear);
      if (!Number.isSafeInteger(id) || id < 1)
        throw new UsageError(`--clear ${o.clear}: an injection id (see --list)`);
      args = { clear: id };
    }
  } else args = { spec: injectSpec(kind!, value, o) };

  const path = o.socket ?? defaultControlPath('endpoint');
  const c = await ControlClient.connect(path);
  try {
    const r = (await c.request('inject', args)) as {
      injection?: Injection;
      injections?: Injection[];
      cleared?: number;
    };
    if (o.json) process.stdout.write(`${JSON.stringify(r)}\n`);
    else if (r.injection) process.stdout.write(`armed ${line(r.injection)}\n`);
    else if (r.injections)
      process.stdout.write(
        r.injections.length ? `${r.injections.map(line).join('\n')}\n` : 'no injections\n',
      );
    else process.stdout.write(`cleared ${r.cleared}\n`);
    return 0;
  } catch (e) {
    if (e instanceof ControlError && e.code === 'BAD_ARGUMENT') throw new UsageError(e.message);
    throw e;
  } finally {
    c.close();
  }
}
