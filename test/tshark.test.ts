import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureTshark } from './tshark.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-tshark-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('ensureTshark', () => {
  it('fails naming tshark when it is missing and cannot be installed (never a silent skip)', () => {
    // A PATH with no tshark and an apt-get that cannot install anything.
    writeFileSync(
      join(dir, 'apt-get'),
      '#!/bin/sh\necho "E: Unable to locate package tshark" >&2\nexit 100\n',
    );
    chmodSync(join(dir, 'apt-get'), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${dir}:/nonexistent`;
    try {
      expect(() => ensureTshark()).toThrow(
        process.getuid?.() === 0
          ? /tshark is missing and apt-get install tshark failed:\nE: Unable to locate/
          : /tshark is not installed/,
      );
    } finally {
      process.env.PATH = path;
    }
  });
});
