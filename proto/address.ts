// Addresses on the command line: HOST:PORT, [V6]:PORT, or SCHEME://HOST:PORT[/path] with scheme
// tcp, tls, ws or wss. Whether a bare HOST:PORT gets TLS is the CLI's policy (cli/commands.ts).
import { isIP } from 'node:net';

export type Scheme = 'tcp' | 'tls' | 'ws' | 'wss';

export interface Address {
  /** undefined: a bare HOST:PORT. */
  scheme: Scheme | undefined;
  /** Without brackets for IPv6. */
  host: string;
  port: number;
  /** WebSocket path, default "/". */
  path: string;
}

const SCHEMES: readonly string[] = ['tcp', 'tls', 'ws', 'wss'];
const FORM = /^(?:([a-zA-Z][a-zA-Z0-9+.-]*):\/\/)?(\[[0-9a-fA-F:.]+\]|[^:/[\]\s]+):(\d+)(\/\S*)?$/;

export function parseAddress(text: string): Address {
  const m = FORM.exec(text.trim());
  if (!m) throw new Error(`address "${text}": expected HOST:PORT or tcp|tls|ws|wss://HOST:PORT`);
  const [, scheme, rawHost, rawPort, path] = m;
  if (scheme !== undefined && !SCHEMES.includes(scheme.toLowerCase())) {
    throw new Error(`address "${text}": unknown scheme "${scheme}" (tcp, tls, ws or wss)`);
  }
  const s = scheme?.toLowerCase() as Scheme | undefined;
  if (path !== undefined && s !== 'ws' && s !== 'wss') {
    throw new Error(`address "${text}": a path is only meaningful for ws:// and wss://`);
  }
  const port = Number(rawPort);
  if (!Number.isInteger(port) || port > 65535)
    throw new Error(`address "${text}": port ${rawPort} out of range`);
  const host = rawHost!.startsWith('[') ? rawHost!.slice(1, -1) : rawHost!;
  if (rawHost!.startsWith('[') && isIP(host) !== 6) throw new Error(`address "${text}": bad IPv6 address`);
  return { scheme: s, host, port, path: path ?? '/' };
}

export function isLoopback(host: string): boolean {
  const h = host.toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '::ffff:127.0.0.1';
}

/** "tls://127.0.0.1:7470", "ws://[::1]:80/pcinet" */
export function formatAddress(a: Address, scheme: Scheme): string {
  const host = isIP(a.host) === 6 ? `[${a.host}]` : a.host;
  const path = scheme === 'ws' || scheme === 'wss' ? a.path : '';
  return `${scheme}://${host}:${a.port}${path}`;
}

/** The bytes of an IP address in text form, as a socket address holds them (network order): 4 for
 *  IPv4, 16 for IPv6 (with `::` and a trailing dotted quad). Throws for anything else. */
export function ipBytes(text: string): { family: 4 | 6; bytes: Uint8Array } {
  const family = isIP(text);
  if (family === 4) return { family, bytes: Uint8Array.from(text.split('.').map(Number)) };
  if (family !== 6) throw new Error(`"${text}" is not an IP address`);
  const groups = (part: string) => {
    const g = part ? part.split(':') : [];
    const last = g.at(-1);
    if (!last?.includes('.')) return g;
    const b = last.split('.').map(Number);
    return [...g.slice(0, -1), ((b[0]! << 8) | b[1]!).toString(16), ((b[2]! << 8) | b[3]!).toString(16)];
  };
  const [head = '', tail] = text.split('::');
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => {
    const v = Number.parseInt(g, 16);
    bytes[2 * i] = v >> 8;
    bytes[2 * i + 1] = v & 0xff;
  });
  return { family, bytes };
}
