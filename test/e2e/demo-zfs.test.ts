// `pcinet demo zfs` as a user runs it: a zfs-fuse raidz pool on this machine (the card), a
// compressed dataset holding the NVMe disk's image, the lab workstation writing files to it; then a
// vdev fails under the workstation's writes, is replaced and resilvered, and a scrub finds nothing.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runZfsDemo, ZFS_DEMO_RUN_MS } from '../../lab/demo-zfs.js';
import { testBudget } from '../../lab/run.js';

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
  it('shows the dataset filling and compressing, then the workstation unharmed by a failed, replaced vdev', {
    timeout: testBudget(ZFS_DEMO_RUN_MS) + 120_000, // and the pool's setup and checks
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
    // The act: a vdev taken away mid-write, the pool degraded; every file reads back.
    const act = text.slice(text.indexOf('files checksummed'));
    expect(act).toMatch(/== card: +state: DEGRADED/);
    expect(act).toMatch(/== card: +\S+vdev2 +OFFLINE/);
    expect(act).toMatch(/== workstation: all (\d+) files read back intact from the degraded pool/);
    // Replaced and resilvered, scrubbed clean, and the files still match.
    expect(act).toMatch(/== card: +scrub: resilver completed .* with 0 errors/);
    expect(act).toMatch(/== card: +\S+vdev4 +ONLINE/);
    expect(act).toMatch(/== card: +scrub: scrub completed .* with 0 errors/);
    const [, n] = act.match(/== workstation: all (\d+) files match after the resilver and the scrub/) ?? [];
    expect(Number(n)).toBeGreaterThan(60);
    expect(act).toMatch(/== workstation: kernel I\/O errors: 0$/m);
    expect(act).not.toMatch(/failed:/);
    // The pool at the end.
    const final = text.slice(text.lastIndexOf('zpool status'));
    expect(final).toMatch(/state: ONLINE/);
    expect(final).toMatch(/errors: No known data errors/);
    expect(text).not.toMatch(/cleanup:/);
  });
});
