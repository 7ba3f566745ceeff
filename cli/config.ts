// `--config FILE`: a JSON object whose keys are the long options in camelCase, e.g.
// { "listen": "0.0.0.0:7470", "device": ["test"], "allow": ["sha256:…"], "logLevel": "debug" }.
// Flags given on the command line win over the file.
import { readFileSync } from 'node:fs';
import { UsageError } from './errors.js';

type Kind = 'string' | 'number' | 'boolean' | 'string[]' | 'string|false';

/** Every key a config file may hold, with its type. */
export const CONFIG_KEYS: Record<string, Kind> = {
  listen: 'string',
  device: 'string[]',
  allow: 'string[]',
  inject: 'string[]',
  connect: 'string',
  channel: 'string',
  pin: 'string',
  identity: 'string',
  insecure: 'boolean',
  logLevel: 'string',
  keepaliveMs: 'number',
  deadAfterMs: 'number',
  graceMs: 'number',
  readyFile: 'string',
  reconnect: 'boolean',
  ctrlLossTmo: 'number',
  kernelLink: 'boolean',
  control: 'string|false',
};

export function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read config file ${path}: ${(e as NodeJS.ErrnoException).code ?? e}`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new UsageError(`config file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    throw new UsageError(`config file ${path} must hold a JSON object`);
  }
  for (const [key, value] of Object.entries(obj)) {
    const kind = CONFIG_KEYS[key];
    if (!kind) throw new UsageError(`config file ${path}: unknown key "${key}"`);
    const ok =
      kind === 'string[]'
        ? Array.isArray(value) && value.every((v) => typeof v === 'string')
        : kind === 'string|false'
          ? typeof value === 'string' || value === false
          : typeof value === kind;
    if (!ok)
      throw new UsageError(
        `config file ${path}: "${key}" must be a ${kind === 'string|false' ? 'string or false' : kind}`,
      );
  }
  return obj as Record<string, unknown>;
}

/** Options from the command line over options from the file (arrays are replaced, not merged). */
export function mergeOptions<T extends object>(
  cli: T,
  fromFile: Record<string, unknown>,
  given: (key: string) => boolean,
): T {
  const out: Record<string, unknown> = { ...fromFile };
  for (const [k, v] of Object.entries(cli)) {
    if (given(k) || !(k in out)) out[k] = v;
  }
  return out as T;
}
