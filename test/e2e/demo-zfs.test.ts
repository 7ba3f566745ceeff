// `pcinet demo zfs` as a user runs it: a zfs-fuse raidz pool on this machine (the card), a
// compressed dataset holding the NVMe disk's image, the lab workstation writing files to it.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runZfsDemo } from '../../lab/demo-zfs.js';

const root = process.getuid?.() === 0;
const haveZfs = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v zfs-fuse && command -v zpool']);
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!root || !haveZfs)('pcinet demo zfs', () => {
  it('shows the dataset filling and compressing as the workstation writes, and a healthy pool', {
    timeout: 600_000,
  }, async () => {
    const lines: string[] = [];
    const code = await runZfsDemo({ out: (l) => lines.push(l) });
    const text = lines.join('\n');
    expect(code, text).toBe(0);
    expect(text).toMatch(/== workstation: \/dev\/nvme\d+n1 .* ZFSDEMO +pcinet disk on ZFS/);
    const rounds = [
      ...text.matchAll(/== card: dataset \S+ uses ([\d.]+)([KMG]), compression ratio ([\d.]+)x/g),
    ].map((m) => ({
      used: Number(m[1]) * { K: 1, M: 1024, G: 1024 * 1024 }[m[2] as 'K' | 'M' | 'G'],
      ratio: Number(m[3]),
    }));
    expect(rounds).toHaveLength(4); // after mkfs, then after each of three rounds
    for (let i = 2; i < rounds.length; i++) expect(rounds[i]!.used).toBeGreaterThan(rounds[i - 1]!.used);
    expect(rounds[3]!.ratio).toBeGreaterThan(1.5); // text compresses; the random part does not
    expect(text).toMatch(/state: ONLINE/);
    expect(text).toMatch(/errors: No known data errors/);
    expect(text).not.toMatch(/cleanup:/);
  });
});
