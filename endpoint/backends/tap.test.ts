// The TAP backend against the real kernel, inside a private network namespace (unshare -n): an
// ARP request written into the TAP is answered by the kernel, and the answer comes back out.
// Needs root (CAP_NET_ADMIN) and /dev/net/tun; runs the built backend (dist/), as npm test builds
// first.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { repoRoot } from '../../lab/paths.js';
import { checkTapName } from './tap.js';

const root = process.getuid?.() === 0 && existsSync('/dev/net/tun');

/** Runs `script(path of the built tap.js)` as an ES module in a new network namespace. */
function inPrivateNetns(script: (dist: string) => string): Promise<{ code: number; text: string }> {
  const dist = join(repoRoot(), 'dist/endpoint/backends/tap.js');
  return new Promise((resolve) => {
    execFile(
      'unshare',
      ['-n', process.execPath, '--input-type=module', '-e', script(dist)],
      { timeout: 15_000, cwd: repoRoot() },
      (err, stdout, stderr) => resolve({ code: err ? 1 : 0, text: stdout + stderr }),
    );
  });
}

const script = (dist: string) => `
import { execFileSync } from 'node:child_process';
import { TapBackend } from '${dist}';
const tap = new TapBackend('pcn0');
execFileSync('ip', ['link', 'set', 'pcn0', 'up']);
execFileSync('ip', ['addr', 'add', '10.77.0.1/24', 'dev', 'pcn0']);
const me = [0x52, 0x54, 0, 0, 0, 2];
const arp = Uint8Array.from([
  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, ...me, 0x08, 0x06,
  0, 1, 0x08, 0, 6, 4, 0, 1, ...me, 10, 77, 0, 2, 0, 0, 0, 0, 0, 0, 10, 77, 0, 1,
]);
const timer = setTimeout(() => { console.log('timeout'); process.exit(1); }, 5000);
tap.onReceive = (f) => {
  const reply = f[12] === 0x08 && f[13] === 0x06 && f[21] === 2 && f.slice(28, 32).join('.') === '10.77.0.1';
  if (!reply) return;
  console.log('arp-reply from', [...f.slice(22, 28)].map((b) => b.toString(16).padStart(2, '0')).join(':'));
  clearTimeout(timer);
  tap.close();
  process.exit(0);
};
tap.send(arp);
`;

it.skipIf(!root)(
  'a frame written to the TAP reaches the kernel and its answer comes back',
  { timeout: 20_000 },
  async () => {
    const out = await inPrivateNetns(script);
    expect(out.text).toMatch(/^arp-reply from ([0-9a-f]{2}:){5}[0-9a-f]{2}$/m);
    expect(out.code).toBe(0);
  },
);

it.skipIf(!root)('says what is wrong with a bad interface', async () => {
  const { TapBackend } = await import('./tap.js');
  expect(() => new TapBackend('no spaces allowed')).toThrow(/is not 1\.\.15 letters/);
  expect(() => checkTapName('a'.repeat(16))).toThrow(/1\.\.15/);
});

const linkScript = (dist: string) => `
import { execFileSync } from 'node:child_process';
import { TapBackend } from '${dist}';
const tap = new TapBackend('pcn1');
const seen = [tap.linkUp];
const timer = setTimeout(() => { console.log('timeout', seen.join(',')); process.exit(1); }, 5000);
tap.onLink = (up) => {
  seen.push(up);
  if (seen.length === 2) execFileSync('ip', ['link', 'set', 'pcn1', 'down']);
  if (seen.length === 3) {
    console.log('link', seen.join(','));
    clearTimeout(timer);
    tap.close();
    process.exit(0);
  }
};
execFileSync('ip', ['link', 'set', 'pcn1', 'up']);
`;

it.skipIf(!root)('the link follows the TAP’s administrative state', { timeout: 20_000 }, async () => {
  const out = await inPrivateNetns(linkScript);
  // Created down, brought up by the card, taken down again.
  expect(out.text).toMatch(/^link false,true,false$/m);
  expect(out.code).toBe(0);
});

const headerScript = (dist: string) => `
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { TapBackend } from '${dist}';
const tap = new TapBackend('pcn2', { netHeader: true });
execFileSync('ip', ['link', 'set', 'pcn2', 'up']);
execFileSync('ip', ['addr', 'add', '10.77.0.1/24', 'dev', 'pcn2']);
execFileSync('ip', ['neigh', 'add', '10.77.0.2', 'lladdr', '52:54:00:00:00:02', 'dev', 'pcn2']);
const timer = setTimeout(() => { console.log('timeout'); process.exit(1); }, 8000);
const out = dgram.createSocket('udp4');
const sock = dgram.createSocket('udp4');
sock.bind(7001, '10.77.0.1');
const udpOut = (f) => f.length > 12 + 42 && f[12 + 12] === 0x08 && f[12 + 13] === 0 && f[12 + 23] === 17;
const hdr = (f) => ({ flags: f[0], gso: f[1], start: f[8] | (f[9] << 8), offset: f[10 - 0] | (f[11] << 8) });
let step = 0;
tap.onReceive = (f) => {
  if (!udpOut(f)) return;
  const h = f.subarray(0, 12);
  if (step === 0) {
    console.log('plain', h[0], h[1]);
    step = 1;
    tap.setOffloads({ csum: true, tso4: true, tso6: true, ecn: false });
    out.send(Buffer.alloc(100, 1), 9, '10.77.0.2');
  } else if (step === 1) {
    console.log('offloaded', h[0], h[1], h[6] | (h[7] << 8), h[8] | (h[9] << 8));
    step = 2;
    // A UDP datagram from 10.77.0.2 with its checksum left to the card (NEEDS_CSUM).
    const payload = Buffer.from('checksum left to the card');
    const ip = Buffer.alloc(20);
    ip[0] = 0x45; ip.writeUInt16BE(20 + 8 + payload.length, 2); ip[8] = 64; ip[9] = 17;
    ip.set([10, 77, 0, 2], 12); ip.set([10, 77, 0, 1], 16);
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += ip.readUInt16BE(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    ip.writeUInt16BE(~sum & 0xffff, 10);
    const udp = Buffer.alloc(8);
    udp.writeUInt16BE(4000, 0); udp.writeUInt16BE(7001, 2); udp.writeUInt16BE(8 + payload.length, 4);
    const eth = Buffer.from([...f.subarray(12 + 6, 12 + 12), ...f.subarray(12, 12 + 6), 0x08, 0]);
    const vh = Buffer.alloc(12);
    vh[0] = 1; vh.writeUInt16LE(14 + 20, 6); vh.writeUInt16LE(6, 8);
    tap.send(Buffer.concat([vh, eth, ip, udp, payload]));
  }
};
sock.on('message', (m) => {
  console.log('received', m.toString());
  clearTimeout(timer);
  tap.close();
  process.exit(0);
});
out.send(Buffer.alloc(100, 1), 9, '10.77.0.2');
`;

it.skipIf(!root)(
  'with net headers: checksums offloaded both ways once the driver takes them',
  { timeout: 20_000 },
  async () => {
    const out = await inPrivateNetns(headerScript);
    // Before setOffloads the kernel hands over checksummed frames (flags 0); after it, the UDP
    // checksum is left to the driver: NEEDS_CSUM from the IP header's end, at offset 6.
    expect(out.text).toMatch(/^plain 0 0$/m);
    expect(out.text).toMatch(/^offloaded 1 0 34 6$/m);
    // A frame whose checksum the workstation left to the card reaches the card's socket.
    expect(out.text).toMatch(/^received checksum left to the card$/m);
    expect(out.code).toBe(0);
  },
);

const burstScript = (dist: string) => `
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import { TapBackend, READ_BURST } from '${dist}';
const tap = new TapBackend('pcn3');
execFileSync('ip', ['link', 'set', 'pcn3', 'up']);
execFileSync('ip', ['addr', 'add', '10.77.0.1/24', 'dev', 'pcn3']);
execFileSync('ip', ['neigh', 'add', '10.77.0.2', 'lladdr', '52:54:00:00:00:02', 'dev', 'pcn3']);
const timer = setTimeout(() => { console.log('timeout', seen.join(',')); process.exit(1); }, 8000);
const seen = [];
let burst = 0;
tap.onReceive = (f) => {
  // Only our datagrams: IPv4 UDP to port 9, numbered in their first payload byte.
  if (!(f[12] === 0x08 && f[13] === 0 && f[23] === 17 && f[36] === 0 && f[37] === 9)) return;
  if (burst++ === 0) setImmediate(() => { console.log('burst', burst); burst = 0; });
  seen.push(f[42]);
  if (seen.length === 40) {
    setImmediate(() => {
      console.log('order', seen.every((v, i) => v === i) ? 'kept' : seen.join(','));
      console.log('limit', READ_BURST);
      clearTimeout(timer);
      tap.close();
      process.exit(0);
    });
  }
};
const out = dgram.createSocket('udp4');
out.bind(0, '10.77.0.1', () => {
  for (let i = 0; i < 40; i++) out.send(Buffer.from([i, 1, 2, 3]), 9, '10.77.0.2');
});
`;

it.skipIf(!root)(
  'frames already waiting reach onReceive together, in order, at most READ_BURST per turn',
  { timeout: 20_000 },
  async () => {
    const out = await inPrivateNetns(burstScript);
    expect(out.code).toBe(0);
    expect(out.text).toMatch(/^order kept$/m);
    const limit = Number(/^limit (\d+)$/m.exec(out.text)?.[1]);
    const bursts = [...out.text.matchAll(/^burst (\d+)$/gm)].map((m) => Number(m[1]));
    expect(bursts.reduce((a, b) => a + b, 0)).toBe(40);
    // The 40 datagrams are in the TAP's queue before the first read returns: they come in a few
    // turns of the event loop, not 40.
    expect(Math.max(...bursts)).toBeGreaterThan(1);
    expect(Math.max(...bursts)).toBeLessThanOrEqual(limit);
  },
);
