// Golden files for the test device's config space: the first 256 bytes as `lspci -x` prints them,
// and what `lspci -vvv -n` makes of them (lspci reads the dump with -F, so this checks our encoding
// against an independent decoder). UPDATE_GOLDEN=1 rewrites both.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, describe as group, it } from 'vitest';
import { walkCaps } from '../pci/config.js';
import { hexDump, rd16 } from '../pci/le.js';
import { TestDevice } from './device.js';
import { TEST_CLASS_CODE, TEST_DEVICE_ID, TEST_VENDOR_ID } from './regs.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const HEX_GOLDEN = join(here, 'config.golden.txt');
const LSPCI_GOLDEN = join(here, 'lspci.golden.txt');
const update = process.env.UPDATE_GOLDEN === '1';

function lspciVersion(): string | undefined {
  try {
    return execFileSync('lspci', ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return undefined;
  }
}

group('test device config space', () => {
  const config = new TestDevice().description.config!;
  const dump = hexDump(config, 256);

  it('matches the golden hex dump', () => {
    if (update || !existsSync(HEX_GOLDEN)) writeFileSync(HEX_GOLDEN, dump);
    expect(dump).toBe(readFileSync(HEX_GOLDEN, 'utf8'));
  });

  it('is 4096 bytes with IDs, class and a PCIe, MSI-X, PM chain', () => {
    expect(config.length).toBe(4096);
    expect(rd16(config, 0)).toBe(TEST_VENDOR_ID);
    expect(rd16(config, 2)).toBe(TEST_DEVICE_ID);
    expect((config[0x0b] << 16) | (config[0x0a] << 8) | config[0x09]).toBe(TEST_CLASS_CODE);
    expect(walkCaps(config).map((c) => c.id)).toEqual([0x10, 0x11, 0x01]);
    expect(rd16(config, 0x7c + 2)).toBe(7);
  });

  // The golden file's first line names the lspci that wrote it; other versions print differently.
  const version = lspciVersion();
  const golden = existsSync(LSPCI_GOLDEN) ? readFileSync(LSPCI_GOLDEN, 'utf8') : undefined;
  const goldenVersion = golden?.split('\n', 1)[0].replace(/^# /, '');
  const runnable = version !== undefined && (update || !golden || goldenVersion === version);

  it.runIf(runnable)('decodes with lspci -vvv as the golden file says', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pcinet-lspci-'));
    try {
      const file = join(dir, 'dump');
      writeFileSync(file, `00:00.0 pcinet test device\n${dump}`);
      const out = execFileSync('lspci', ['-F', file, '-vvv', '-n'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      const text = `# ${version}\n${out}`;
      if (update || !golden) writeFileSync(LSPCI_GOLDEN, text);
      expect(text).toBe(readFileSync(LSPCI_GOLDEN, 'utf8'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
