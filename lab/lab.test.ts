// Boots the lab VM (no pcinet stack: that is test/e2e's business) and checks what every e2e test
// relies on: the guest kernel, node over 9p, exit status, output streams, the kernel-report check.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from './prepare.js';
import { LabError, runInLab } from './run.js';

/** Stands in for dist/cli/main.js (fixtures/fake-pcinet.mjs). */
const FAKE_CLI = fileURLToPath(new URL('./fixtures/fake-pcinet.mjs', import.meta.url));
/** Stands in for pcinet.ko: any module of the image without dependencies loads and unloads. */
const STAND_IN_MODULE = 'kernel/lib/crc16.ko';

/** The lab needs root (network namespace; apt on first use). */
const root = process.getuid?.() === 0;
/** A cold prepare installs packages and downloads ~70 MB. */
const PREPARE_TIMEOUT_MS = 30 * 60_000;
const RUN_TIMEOUT_MS = 120_000;
const TEST_TIMEOUT_MS = RUN_TIMEOUT_MS + 30_000;

describe.skipIf(!root)('lab VM', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: false });
  }, PREPARE_TIMEOUT_MS);

  it(
    'boots Debian’s 6.1 kernel, runs node over 9p and returns the command’s status',
    async () => {
      const r = await runInLab({
        command: `uname -r; node -e 'console.log("node", process.version, 6 * 7)'; exit 3`,
        timeoutMs: RUN_TIMEOUT_MS,
      });
      expect(r.code).toBe(3);
      expect(r.stdout).toMatch(/^6\.1\.\d+-\d+-amd64$/m);
      expect(r.stdout).toContain(`node ${process.version} 42`);
      expect(r.guestLog).toContain('Run /init as init process');
      expect(r.phases.map((p) => p.name)).toEqual(
        expect.arrayContaining(['prepare', 'qemu', 'init', 'root', 'command', 'done']),
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'passes an argv exactly, keeps stdout and stderr apart and boots q35 too',
    async () => {
      const weird = `it's "quoted" $HOME \\ ;`;
      const r = await runInLab({
        command: ['sh', '-c', 'printf "%s|" "$1" "$PWD" "$GREETING"; echo oops >&2; exit 0', 'sh', weird],
        env: { GREETING: 'hello world' },
        cwd: '/usr',
        machine: 'q35',
        timeoutMs: RUN_TIMEOUT_MS,
      });
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`${weird}|/usr|hello world|`);
      expect(r.stderr).toBe('oops\n');
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'a kernel that locks up before /init is stopped and booted once more, then the run fails',
    async () => {
      // The kernel echoes its command line before anything else: this one carries the soft-lockup
      // watchdog's words, as a kernel stuck in its own start-up prints them.
      const qemuStarts: number[] = [];
      const err = await runInLab({
        command: 'true',
        extraKernelArgs: ['pcinet_lab_test="watchdog: BUG: soft lockup - CPU#0 stuck for 26s!"'],
        timeoutMs: RUN_TIMEOUT_MS,
        onPhase: (p) => {
          if (p.name === 'qemu') qemuStarts.push(p.ms);
        },
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LabError);
      expect((err as LabError).kind).toBe('boot-stuck');
      expect((err as LabError).message).toMatch(/locked up before \/init/);
      expect(qemuStarts).toHaveLength(2);
    },
    2 * TEST_TIMEOUT_MS,
  );

  it(
    'fails the run when the guest kernel prints a call trace',
    async () => {
      // SysRq-l: backtraces of all CPUs, a "Call Trace:" without harming anything.
      const err = await runInLab({
        command: 'echo l >/proc/sysrq-trigger; sleep 1',
        timeoutMs: RUN_TIMEOUT_MS,
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LabError);
      expect((err as LabError).kind).toBe('kernel');
      expect((err as LabError).message).toMatch(/Call Trace:/);
      expect((err as LabError).details.code).toBe(0);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'brings a (fake) pcinet stack up: endpoint in its namespace, host-agent over slirp, drivers bound',
    async () => {
      const module = join(assets.modulesDir, STAND_IN_MODULE);
      expect(existsSync(module)).toBe(true);
      const r = await runInLab({
        assets: { ...assets, cli: FAKE_CLI, pcinetKo: module, testKos: [], pcinetUnavailable: undefined },
        devices: ['test', 'nvme:size=1M'],
        command: 'echo "$PCINET_LAB_DEVICES"; grep -c "^crc16 " /proc/modules',
        timeoutMs: RUN_TIMEOUT_MS,
      });
      expect(r.code).toBe(0);
      const [addresses, loaded] = r.stdout.trim().split('\n');
      expect(addresses.split(' ')).toHaveLength(2);
      expect(loaded).toBe('1');
      expect(r.devices).toEqual(addresses.split(' '));
      expect(r.phases.filter((p) => p.name === 'bound').map((p) => p.detail.split(' ')[1])).toEqual([
        'virtio-pci',
        'virtio-pci',
      ]);
      expect(r.endpointLog).toMatch(/--listen tls:\/\/127\.0\.0\.1:7470 --device test --device nvme:size=1M/);
      expect(r.hostAgentLog).toMatch(/--connect tls:\/\/10\.0\.2\.2:7470 --channel kernel --ready-file/);
      expect(r.hostAgentLog).toContain('SIGTERM');
      expect(r.guestLog).toMatch(/host-agent exited with status 0/);
    },
    TEST_TIMEOUT_MS,
  );
});
