// DKMS (kernel/dkms.conf, docs/INSTALL.md): pcinet.ko's source added, built against the lab
// kernel's 6.1 headers and installed under /lib/modules/<kver>/updates/dkms, as a workstation's
// kernel updates would rebuild it; then the lab boots with that installed module instead of the
// tree's build, and the test device binds through it. The package gets a version of its own, so a
// real installation on this machine is not touched, and it is removed afterwards.
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../lab/paths.js';
import { ensurePackages, type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runOk } from '../../lab/proc.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 150_000;
/** dkms build compiles the module once (about 20 s here); the bound is for a machine far busier. */
const DKMS_TIMEOUT_MS = 10 * 60_000;

describe.skipIf(!root)('DKMS: pcinet.ko built and installed for the lab kernel', () => {
  let assets: LabAssets;
  const version = `0.1.0-e2e${process.pid}`;
  const src = mkdtempSync(join(tmpdir(), 'pcinet-dkms-'));
  let added = false;

  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
    await ensurePackages(['dkms'], (l) => process.stderr.write(`${l}\n`));
  }, 30 * 60_000);

  afterAll(async () => {
    if (added) await runOk(['dkms', 'remove', `pcinet/${version}`, '--all'], { timeoutMs: DKMS_TIMEOUT_MS });
    rmSync(`/usr/src/pcinet-${version}`, { recursive: true, force: true });
    rmSync(src, { recursive: true, force: true });
  }, DKMS_TIMEOUT_MS);

  it('dkms add, build, install; the installed module carries the test device in the lab', {
    timeout: 3 * DKMS_TIMEOUT_MS + testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    // The tree as a user would add it (built objects in it are cleaned by dkms first).
    cpSync(join(repoRoot(), 'kernel'), src, { recursive: true });
    const conf = join(src, 'dkms.conf');
    const text = readFileSync(conf, 'utf8');
    expect(text).toMatch(/^PACKAGE_VERSION="[^"]+"$/m);
    writeFileSync(conf, text.replace(/^PACKAGE_VERSION=.*$/m, `PACKAGE_VERSION="${version}"`));

    await runOk(['dkms', 'add', src], { timeoutMs: DKMS_TIMEOUT_MS });
    added = true;
    const k = ['-k', assets.kver];
    await runOk(['dkms', 'build', `pcinet/${version}`, ...k], { timeoutMs: DKMS_TIMEOUT_MS });
    await runOk(['dkms', 'install', `pcinet/${version}`, ...k], { timeoutMs: DKMS_TIMEOUT_MS });
    const status = await runOk(['dkms', 'status', `pcinet/${version}`], { timeoutMs: 60_000 });
    expect(status).toMatch(new RegExp(`pcinet/${version}, ${assets.kver}, x86_64: installed`));

    const ko = `/lib/modules/${assets.kver}/updates/dkms/pcinet.ko`;
    expect(existsSync(ko), `${ko} after dkms install`).toBe(true);
    const info = (field: string) => runOk(['modinfo', '-F', field, ko]).then((s) => s.trim());
    expect(await info('vermagic')).toMatch(new RegExp(`^${assets.kver.replace(/\./g, '\\.')} SMP `));
    expect(await info('version')).toBe(
      JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')).version,
    );
    // The checksum of the sources it was built from: the loaded module must show the same.
    const srcversion = await info('srcversion');
    expect(srcversion).toMatch(/^[0-9A-F]{23}$/);

    // The guest's /lib/modules/<kver> is the lab image's: it loads a byte-for-byte copy.
    const copy = join(src, 'installed', 'pcinet.ko');
    mkdirSync(dirname(copy));
    copyFileSync(ko, copy);
    const r = await runInLab({
      assets: { ...assets, pcinetKo: copy },
      devices: ['test'],
      command: 'echo "srcversion=$(cat /sys/module/pcinet/srcversion)"; lspci -n -s "$PCINET_LAB_DEVICES"',
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`srcversion=${srcversion}`);
    expect(r.stdout).toMatch(/ ff00: 7063:0001 \(rev 01\)$/m);
  });
});
