// Where the lab finds the repository and keeps its cache. The lab runs both from sources (vitest,
// lab/*.ts) and compiled (dist/lab/*.js), so the repository root is found by walking up to the
// package.json named "pcinet" rather than by a fixed number of "..".
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** How far up from this file the repository root may be (lab/ is 1, dist/lab/ is 2). */
const MAX_ROOT_DEPTH = 4;

export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i <= MAX_ROOT_DEPTH; i++) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'pcinet') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    dir = dirname(dir);
  }
  throw new Error(`lab: cannot find the pcinet repository above ${fileURLToPath(import.meta.url)}`);
}

/** The cache (kernel image, initramfs, locks): `$PCINET_LAB_CACHE`, else `<repo>/.lab` (gitignored).
 *  It must be visible to the guest, which sees this machine's root read-only, so not under /tmp. */
export function cacheDir(root = repoRoot()): string {
  return resolve(process.env.PCINET_LAB_CACHE ?? join(root, '.lab'));
}

/** The compiled command line the endpoint and the host-agent run from. */
export function cliEntry(root = repoRoot()): string {
  return join(root, 'dist', 'cli', 'main.js');
}

export function kernelSourceDir(root = repoRoot()): string {
  return join(root, 'kernel');
}

/** Mount point of the per-run shared directory inside the guest (on the guest's own tmpfs /run). */
export const GUEST_RUN_DIR = '/run/pcinet-lab';

/** 9p mount tags. */
export const TAG_ROOT = 'pcinet-root';
export const TAG_RUN = 'pcinet-run';
