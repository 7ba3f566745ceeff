// pcinet.ko's lifecycle and robustness in the lab: attach/detach cycles then rmmod; random and
// malformed records from user space; the host-agent killed with SIGKILL while the driver is busy.
// Any oops, WARN or BUG in the guest log fails a run (lab/README.md).
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../lab/paths.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 240_000;
const REPO = repoRoot();
const fixture = (name: string) => join(REPO, 'test/e2e/fixtures', name);
/** The suite's counts; test/kernel-long.sh runs the long variant (100 cycles, 10^5 records). */
const FUZZ_RECORDS = Number(process.env.PCINET_FUZZ_RECORDS ?? 12_000);
const CYCLES = Number(process.env.PCINET_LIFECYCLE_CYCLES ?? 20);
/** Runs scale with the counts: the suite's are what RUN_TIMEOUT_MS is for. */
const scaled = (n: number, base: number) => Math.round(RUN_TIMEOUT_MS * Math.max(1, n / base));

describe.skipIf(!root)('pcinet.ko lifecycle', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it(`${CYCLES} attach/detach cycles, then rmmod, with a clean log`, {
    timeout: testBudget(scaled(CYCLES, 20)),
  }, async () => {
    const r = await runInLab({
      assets,
      command: [
        'set -e',
        `insmod ${assets.pcinetKo}`,
        `node ${fixture('kernel-cycles.mjs')} ${REPO} ${CYCLES}`,
        'rmmod pcinet && echo rmmod-ok',
        'echo "attached $(dmesg | grep -c "pcinet: .* attached") removed $(dmesg | grep -c "pcinet: .* removed")"',
      ].join('\n'),
      timeoutMs: scaled(CYCLES, 20),
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect([...r.stdout.matchAll(/^cycle \d+ attached [0-9a-f]{4}:00:00\.0$/gm)]).toHaveLength(CYCLES);
    expect(r.stdout).toMatch(new RegExp(`^cycles done ${CYCLES}$`, 'm'));
    expect(r.stdout).toMatch(/^rmmod-ok$/m);
    expect(r.stdout).toMatch(new RegExp(`^attached ${CYCLES} removed ${CYCLES}$`, 'm'));
  });

  it(`${FUZZ_RECORDS} random and malformed records: only errors, the module still works`, {
    timeout: testBudget(scaled(FUZZ_RECORDS, 12_000)),
  }, async () => {
    const seed = Date.now() % 1_000_000;
    const r = await runInLab({
      assets,
      command: [
        'set -e',
        `insmod ${assets.pcinetKo}`,
        `node ${fixture('kernel-fuzz.mjs')} ${REPO} ${FUZZ_RECORDS} ${seed}`,
        `node ${fixture('kernel-cycles.mjs')} ${REPO} 1`,
        'rmmod pcinet && echo rmmod-ok',
      ].join('\n'),
      timeoutMs: scaled(FUZZ_RECORDS, 12_000),
    });
    expect(r.code, `seed ${seed}\n${r.stdout}\n${r.stderr}`).toBe(0);
    const line = new RegExp(`^fuzz seed ${seed} records ${FUZZ_RECORDS} read \\d+ bytes (.*)$`, 'm').exec(
      r.stdout,
    );
    expect(line, r.stdout).not.toBeNull();
    const outcomes = Object.fromEntries(line![1]!.split(' ').map((kv) => kv.split('=') as [string, string]));
    // Errnos the ABI documents, and successes; nothing else. Node names errno 95 (the module's
    // EOPNOTSUPP, e.g. an attach with an I/O BAR) ENOTSUP, as Linux gives both names one value.
    // W_CONNECT to the guest's own closed ports: refused, timed out, or a family it does not take.
    const documented = ['ok', 'EINVAL', 'EBUSY', 'EPROTO', 'ENOTSUP', 'ENOSPC', 'ENOMEM'];
    const link = ['ECONNREFUSED', 'ETIMEDOUT', 'EAFNOSUPPORT'];
    for (const k of Object.keys(outcomes)) expect([...documented, ...link]).toContain(k);
    expect(Number(outcomes.EINVAL)).toBeGreaterThan(FUZZ_RECORDS / 4);
    expect(Number(outcomes.ok)).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/^cycle 0 attached/m);
    expect(r.stdout).toMatch(/^rmmod-ok$/m);
    console.log(`fuzz (seed ${seed}): ${line![1]}`);
  });

  it("the endpoint's records written after link down are dropped and counted, none applied", {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      command: ['set -e', `insmod ${assets.pcinetKo}`, `node ${fixture('kernel-linkdown.mjs')} ${REPO}`].join(
        '\n',
      ),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const line = /^linkdown (.*)$/m.exec(r.stdout);
    expect(line, r.stdout).not.toBeNull();
    const got = Object.fromEntries(line![1]!.split(' ').map((kv) => kv.split('=') as [string, string]));
    expect(got).toEqual({
      interrupt: 'ok',
      'dma-write': 'ok',
      'dma-read': 'ok',
      'read-cpl': 'ok',
      link_dropped: '4',
      interrupts: '0',
      interrupts_pending: '0',
      dma_refused: '0',
      dma_bytes: '0',
    });
  });

  it('host-agent killed with SIGKILL while the driver is busy: removed, no oops, rmmod works', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: ['test'],
      command: [
        'mount -t debugfs none /sys/kernel/debug',
        'dev=$PCINET_LAB_DEVICES; d=/sys/kernel/debug/pcinet_test/$dev',
        '(echo 100000 > $d/stress; echo "stress exit $?") &',
        '(for i in $(seq 50); do echo 4194304 > $d/dma_read || break; done; echo "dma loop exit $?") &',
        'sleep 3',
        'pkill -KILL -f "main.js host" && echo agent-killed',
        'wait',
        'for i in $(seq 100); do [ -e /sys/bus/pci/devices/$dev ] || break; sleep 0.1; done',
        '[ -e /sys/bus/pci/devices/$dev ] && echo still-there || echo device-removed',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    // The lab's own teardown then finds the agent gone and rmmods pcinet_test and pcinet.
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/^agent-killed$/m);
    expect(r.stdout).toMatch(/^device-removed$/m);
    expect(r.guestLog).toMatch(/pcinet: [0-9a-f]{4}:00:00\.0 removed: /);
  });
});
