// virtio-rng in the lab with the real stack: Linux's own virtio_pci and virtio-rng drive the model
// through pcinet.ko, the hwrng core picks it, and /dev/hwrng reads bytes the card made.
import { beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 240_000;
const BYTES = 256 * 1024;

describe.skipIf(!root)('virtio-rng through pcinet.ko: the workstation’s hwrng is on the card', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it('virtio-rng binds, becomes the current hwrng, and /dev/hwrng reads random bytes from the card', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: ['virtio-rng'],
      command: [
        'set -e',
        'dev=$PCINET_LAB_DEVICES',
        'hw=/sys/class/misc/hw_random',
        'for i in $(seq 100); do grep -q virtio_rng $hw/rng_available && break; sleep 0.1; done',
        'echo "driver=$(basename $(readlink /sys/bus/pci/devices/$dev/virtio*/driver))"',
        // Ours by name, whatever else the guest has.
        'name=$(tr " " "\\n" < $hw/rng_available | grep "^virtio_rng" | head -1)',
        'echo $name > $hw/rng_current',
        'echo "current=$(cat $hw/rng_current)"',
        `dd if=/dev/hwrng of=/tmp/r bs=4096 count=${BYTES / 4096} iflag=fullblock status=none`,
        'echo "read=$(wc -c < /tmp/r) gzipped=$(gzip -9 -c /tmp/r | wc -c)"',
        'echo "distinct=$(od -An -v -tu1 -w1 /tmp/r | sort -u | wc -l)"',
        `pkill -USR1 -f ' host --connect'`,
        'for i in $(seq 100); do grep -q "endpoint statistics" /run/pcinet-lab/host-agent.log && break; sleep 0.1; done',
      ].join('\n'),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    const out = `${r.stdout}\n${r.stderr}`;
    expect(r.code, out).toBe(0);
    expect(r.stdout).toMatch(/^driver=virtio_rng$/m);
    expect(r.stdout).toMatch(/^current=virtio_rng\.\d+$/m);
    const m = /^read=(\d+) gzipped=(\d+)$/m.exec(r.stdout);
    expect(Number(m?.[1])).toBe(BYTES);
    // Random bytes do not compress, and every byte value turns up in 256 KiB of them.
    expect(Number(m?.[2])).toBeGreaterThan(BYTES);
    expect(r.stdout).toMatch(/^distinct=256$/m);
    // Every byte the guest read came through the model (the hwrng core reads some more itself).
    const line = r.hostAgentLog.split('\n').find((l) => l.includes('endpoint statistics'));
    expect(line, r.hostAgentLog).toBeDefined();
    const c = JSON.parse(line!).counters as Record<string, number>;
    expect(c['dev1.virtio-rng.bytes']).toBeGreaterThanOrEqual(BYTES);
    console.log(`virtio-rng: ${c['dev1.virtio-rng.requests']} requests, ${c['dev1.virtio-rng.bytes']} bytes`);
  });
});
