// The kernel code is held to the kernel's own style check: scripts/checkpatch.pl of the guest
// kernel's version (Debian's linux-source package, fetched once by lab/prepare.ts) on every C file
// and header of pcinet.ko, its uapi header and the test driver, with no error and no warning.
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../lab/paths.js';
import { prepareCheckpatch } from '../lab/prepare.js';

const ROOT = repoRoot();
const root = process.getuid?.() === 0;
/** A cold fetch downloads ~140 MB and unpacks three files out of a ~140 MB tarball. */
const FETCH_TIMEOUT_MS = 30 * 60_000;

/** The sources checked: written by us, not kbuild's generated *.mod.c. */
function sources(): string[] {
  const out: string[] = [];
  for (const dir of ['kernel', 'kernel/uapi', 'test/kmod']) {
    for (const f of readdirSync(join(ROOT, dir)).sort()) {
      if (/\.(c|h)$/.test(f) && !f.endsWith('.mod.c')) out.push(join(dir, f));
    }
  }
  return out;
}

describe.skipIf(!root)('checkpatch', () => {
  it('pcinet.ko, its uapi header and the test driver: no errors, no warnings', {
    timeout: FETCH_TIMEOUT_MS,
  }, async () => {
    const checkpatch = await prepareCheckpatch();
    const files = sources();
    expect(files).toContain('kernel/core.c');
    const r = await new Promise<{ code: number; out: string }>((resolve) =>
      execFile(
        'perl',
        [checkpatch, '--no-tree', '--terse', '--show-types', '-f', ...files],
        { cwd: ROOT, timeout: 5 * 60_000, maxBuffer: 16 << 20 },
        (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` }),
      ),
    );
    const findings = r.out.split('\n').filter((l) => /: (ERROR|WARNING|CHECK):/.test(l));
    expect(findings, r.out).toEqual([]);
    expect(r.code, r.out).toBe(0);
  });
});
