// What docs/INSTALL.md installs: the systemd units (checked by systemd-analyze, with ExecStart
// pointed at this checkout's bin/pcinet), the example configuration files (read by the built
// `pcinet` command itself, through the same checks as its flags), and one version everywhere.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../lab/paths.js';
import { VERSION } from '../proto/version.js';

const ROOT = repoRoot();
const PCINET = join(ROOT, 'bin/pcinet');
const tmp = mkdtempSync(join(tmpdir(), 'pcinet-packaging-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function sh(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` }),
    );
  });
}

describe('packaging', () => {
  it('package.json, kernel/dkms.conf, MODULE_VERSION and proto/version.ts give one version', () => {
    const version = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version;
    const dkms = /^PACKAGE_VERSION="([^"]+)"$/m.exec(readFileSync(join(ROOT, 'kernel/dkms.conf'), 'utf8'));
    const module = /^MODULE_VERSION\("([^"]+)"\);$/m.exec(readFileSync(join(ROOT, 'kernel/core.c'), 'utf8'));
    expect([dkms?.[1], module?.[1], VERSION]).toEqual([version, version, version]);
  });

  const units = readdirSync(join(ROOT, 'packaging/systemd')).filter((f) => f.endsWith('.service'));

  it('systemd-analyze verify finds nothing to say about the units', async () => {
    expect(existsSync('/usr/bin/systemd-analyze'), 'systemd-analyze (Debian package systemd)').toBe(true);
    expect(units.sort()).toEqual(['pcinet-endpoint.service', 'pcinet-host.service']);
    const paths = units.map((u) => {
      const text = readFileSync(join(ROOT, 'packaging/systemd', u), 'utf8');
      expect(text).toMatch(/^ExecStart=\/usr\/local\/bin\/pcinet /m);
      const p = join(tmp, u);
      writeFileSync(p, text.replaceAll('/usr/local/bin/pcinet', PCINET));
      return p;
    });
    const r = await sh('systemd-analyze', ['verify', ...paths]);
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });

  it('each unit runs the command its example configuration is for', () => {
    for (const [unit, cmd, conf] of [
      ['pcinet-host.service', 'host', 'host.json'],
      ['pcinet-endpoint.service', 'endpoint', 'endpoint.json'],
    ]) {
      const text = readFileSync(join(ROOT, 'packaging/systemd', unit!), 'utf8');
      expect(text).toContain(`ExecStart=/usr/local/bin/pcinet ${cmd} --config /etc/pcinet/${conf}\n`);
      expect(text).toContain(`ConditionPathExists=/etc/pcinet/${conf}\n`);
      expect(existsSync(join(ROOT, 'packaging/etc', conf!))).toBe(true);
    }
  });

  // The examples hold placeholders for the peers' fingerprints: `--check` refuses them, and passes
  // once they are real (given here as flags, which win over the file).
  const FP = `sha256:${'ab'.repeat(32)}`;

  it('pcinet host --check: the example passes once its pin is real', async () => {
    const conf = join(ROOT, 'packaging/etc/host.json');
    const placeholder = await sh(PCINET, ['host', '--config', conf, '--check']);
    expect(placeholder.code).toBe(2);
    expect(placeholder.out).toMatch(/--pin sha256:REPLACE-WITH-THE-ENDPOINT-FINGERPRINT: expected sha256:/);
    const r = await sh(PCINET, ['host', '--config', conf, '--pin', FP, '--check']);
    expect(r).toEqual({ code: 0, out: 'pcinet host: options ok (tls://card.local:7470)\n' });
  });

  it('pcinet endpoint --check: the example passes once its allow list is real', async () => {
    // Its disk in a directory of ours instead of /var/lib/pcinet (systemd's StateDirectory).
    const conf = join(tmp, 'endpoint.json');
    writeFileSync(
      conf,
      readFileSync(join(ROOT, 'packaging/etc/endpoint.json'), 'utf8').replaceAll('/var/lib/pcinet', tmp),
    );
    const placeholder = await sh(PCINET, ['endpoint', '--config', conf, '--check']);
    expect(placeholder.code).toBe(2);
    expect(placeholder.out).toMatch(/--allow sha256:REPLACE-WITH-THE-HOST-FINGERPRINT/);
    const r = await sh(PCINET, ['endpoint', '--config', conf, '--allow', FP, '--check']);
    expect(r).toEqual({ code: 0, out: 'pcinet endpoint: options ok (tls://0.0.0.0:7470)\n' });
  });
});
