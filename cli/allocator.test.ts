import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../lab/paths.js';
import { ALLOCATOR_ENV, withAllocatorEnv } from './allocator.js';

const WRAPPER = join(repoRoot(), 'bin/pcinet');

describe('allocator settings', () => {
  it('bin/pcinet sets the same values as ALLOCATOR_ENV', () => {
    const text = readFileSync(WRAPPER, 'utf8');
    const set = Object.fromEntries([...text.matchAll(/^: "\$\{(\w+):=(\d+)\}"$/gm)].map((m) => [m[1], m[2]]));
    expect(set).toEqual(ALLOCATOR_ENV);
  });

  it('bin/pcinet execs node on dist/cli/main.js with them, keeping values the caller set', () => {
    // A `node` first on PATH that reports how it was started.
    const dir = mkdtempSync(join(tmpdir(), 'pcinet-wrapper-'));
    try {
      writeFileSync(
        join(dir, 'node'),
        '#!/bin/sh\necho "$MALLOC_MMAP_THRESHOLD_ $MALLOC_TRIM_THRESHOLD_ $*"\n',
        { mode: 0o755 },
      );
      // Through a symlink, as npm installs it.
      symlinkSync(WRAPPER, join(dir, 'pcinet'));
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        PATH: `${dir}:${process.env.PATH}`,
        MALLOC_TRIM_THRESHOLD_: '12345',
      };
      delete env.MALLOC_MMAP_THRESHOLD_;
      const out = execFileSync(join(dir, 'pcinet'), ['endpoint', '--help'], { env }).toString().trim();
      expect(out).toBe(
        `${ALLOCATOR_ENV.MALLOC_MMAP_THRESHOLD_} 12345 ${repoRoot()}/bin/../dist/cli/main.js endpoint --help`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bin/pcinet runs the CLI', () => {
    expect(execFileSync(WRAPPER, ['--help']).toString()).toMatch(/Usage: pcinet/);
  });

  it('withAllocatorEnv adds what the environment does not set', () => {
    expect(withAllocatorEnv({ MALLOC_MMAP_THRESHOLD_: '1', X: 'y' })).toEqual({
      MALLOC_MMAP_THRESHOLD_: '1',
      MALLOC_TRIM_THRESHOLD_: ALLOCATOR_ENV.MALLOC_TRIM_THRESHOLD_,
      X: 'y',
    });
  });
});
