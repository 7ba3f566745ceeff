// kernel/emulate.c, the emulator of instructions that fault on trapped MMIO: its userspace harness
// (kernel/test-emulate/) runs ~200k generated instructions natively and through the emulator and
// compares registers, flags, xmm registers and memory, then tests the error paths. Needs only gcc
// and binutils (no root, no lab); builds into its own temporary directory.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';

/** The repository root: the nearest ancestor holding kernel/test-emulate (works from dist/ too). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++, dir = dirname(dir)) {
    if (existsSync(join(dir, 'kernel/test-emulate/Makefile'))) return dir;
  }
  throw new Error('kernel/test-emulate not found above this test');
}

const out = mkdtempSync(join(tmpdir(), 'pcinet-emulate-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

function make(args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(
      'make',
      ['-C', join(repoRoot(), 'kernel/test-emulate'), `O=${out}`, ...args],
      { maxBuffer: 16 << 20, timeout: 300_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, output: `${stdout}${stderr}` });
      },
    );
  });
}

it('emulates every generated instruction like the CPU does, and refuses the rest', {
  timeout: 300_000,
}, async () => {
  const r = await make(['check']);
  expect(r.code, r.output).toBe(0);
  expect(r.output).toMatch(/^ok {3}differential: emulator == CPU$/m);
  const cases = Number(/^\s+(\d+) differential cases$/m.exec(r.output)?.[1]);
  expect(cases).toBeGreaterThanOrEqual(200_000);
  expect(r.output).toMatch(/^PASSED: 0 failures$/m);
});
