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
    const dist = join(repoRoot(), 'dist/endpoint/backends/tap.js');
    const out = await new Promise<{ code: number; text: string }>((resolve) => {
      execFile(
        'unshare',
        ['-n', process.execPath, '--input-type=module', '-e', script(dist)],
        { timeout: 15_000, cwd: repoRoot() },
        (err, stdout, stderr) => resolve({ code: err ? 1 : 0, text: stdout + stderr }),
      );
    });
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
  const dist = join(repoRoot(), 'dist/endpoint/backends/tap.js');
  const out = await new Promise<{ code: number; text: string }>((resolve) => {
    execFile(
      'unshare',
      ['-n', process.execPath, '--input-type=module', '-e', linkScript(dist)],
      { timeout: 15_000, cwd: repoRoot() },
      (err, stdout, stderr) => resolve({ code: err ? 1 : 0, text: stdout + stderr }),
    );
  });
  // Created down, brought up by the card, taken down again.
  expect(out.text).toMatch(/^link false,true,false$/m);
  expect(out.code).toBe(0);
});
