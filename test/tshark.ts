// tshark for the tests that decode captures with the dissector (test/dissector.test.ts,
// test/e2e/status-trace.test.ts): installed with apt-get (Debian's package, as root, as .ci/run
// does) when missing; if it cannot be, an Error that names it, so those tests fail, never skip.
import { spawnSync } from 'node:child_process';

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/** tshark, installed with apt-get if it is missing; an Error naming what is missing otherwise. */
export function ensureTshark(): void {
  if (has('tshark')) return;
  if (process.getuid?.() !== 0)
    throw new Error(
      'tshark is not installed and this is not root: apt-get install tshark (Debian package tshark)',
    );
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '-q', '--no-install-recommends', 'tshark'], {
      env,
      encoding: 'utf8',
    });
  let r = install();
  if (r.status !== 0) {
    spawnSync('apt-get', ['update', '-q'], { env });
    r = install();
  }
  if (r.status !== 0 || !has('tshark'))
    throw new Error(`tshark is missing and apt-get install tshark failed:\n${r.stderr ?? r.error}`);
}
