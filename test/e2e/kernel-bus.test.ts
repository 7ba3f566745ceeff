// pcinet.ko in the lab with the real stack: the lab's endpoint serves the test device, the
// host-agent (kernel channel) attaches it through /dev/pcinet, and the guest's own PCI core scans
// it on pcinet's virtual root bus: config space (IDs, class, BARs in their window, the capability
// chain), config writes to the endpoint, removal and rmmod. pcinet_test (test/kmod) binds and
// enables MSI-X; test/e2e/kernel-device.test.ts drives it.
import { beforeAll, describe, expect, it } from 'vitest';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { runInLab, testBudget } from '../../lab/run.js';

const root = process.getuid?.() === 0;
const RUN_TIMEOUT_MS = 150_000;

describe.skipIf(!root)('pcinet.ko: the device on a real Linux PCI bus', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it('lspci lists the test device with the endpoint’s IDs, class ff00, and its BARs', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: ['test:vectors=16'],
      command: 'echo "dev=$PCINET_LAB_DEVICES"; lspci -nn; lspci -vv -s "$PCINET_LAB_DEVICES"',
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, r.stderr).toBe(0);
    const dev = /^dev=(\S+)$/m.exec(r.stdout)?.[1];
    expect(dev).toMatch(/^00[1-9a-f][0-9a-f]:00:00\.0$/);
    expect(r.stdout).toMatch(
      new RegExp(`^${dev} Unassigned class \\[ff00\\]: .*\\[7063:0001\\] \\(rev 01\\)$`, 'm'),
    );
    expect(r.stdout).toMatch(/Region 0: Memory at [0-9a-f]+ \(64-bit, non-prefetchable\) \[size=16K\]/);
    expect(r.stdout).toMatch(/Region 2: Memory at [0-9a-f]+ \(64-bit, non-prefetchable\) \[size=64K\]/);
    expect(r.stdout).toMatch(/Capabilities: \[[0-9a-f]+\] MSI-X: Enable\+ Count=16 Masked-/);
    expect(r.stdout).toMatch(/Vector table: BAR=0 offset=00002000/);
    expect(r.stdout).toMatch(/Express \(v2\) Endpoint/);
    expect(r.guestLog).toMatch(/pcinet: [0-9a-f]{4}:00:00\.0 attached \(7063:0001\)/);
    // The driver enabled memory decoding and MSI-X: config writes the endpoint had to see.
    expect(r.endpointLog).toMatch(/device attached/);
    expect(r.guestLog).toMatch(/host-agent exited with status 0/);
    expect(r.guestLog).toMatch(/pcinet: [0-9a-f]{4}:00:00\.0 removed/);
  });

  it('survives config-space abuse from user space: BAR sizing, masks, setpci', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const r = await runInLab({
      assets,
      devices: ['test'],
      command: [
        'd=$PCINET_LAB_DEVICES',
        'before=$(setpci -s $d BASE_ADDRESS_0)',
        'setpci -s $d BASE_ADDRESS_0=ffffffff; echo sized=$(setpci -s $d BASE_ADDRESS_0)',
        'setpci -s $d BASE_ADDRESS_0=$before; echo restored=$(setpci -s $d BASE_ADDRESS_0) before=$before',
        'setpci -s $d VENDOR_ID=1234; echo vendor=$(setpci -s $d VENDOR_ID)',
        'setpci -s $d STATUS=ffff; echo status=$(setpci -s $d STATUS)',
        'dd if=/sys/bus/pci/devices/$d/config bs=4096 count=1 2>/dev/null | wc -c',
      ].join('; '),
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^sized=ffffc004$/m); // 16 KiB, 64-bit, non-prefetchable
    const m = /^restored=(\S+) before=(\S+)$/m.exec(r.stdout);
    expect(m?.[1]).toBe(m?.[2]);
    expect(r.stdout).toMatch(/^vendor=7063$/m); // read-only
    expect(r.stdout).toMatch(/^status=0010$/m); // capability list bit only; W1C bits stay clear
    expect(r.stdout).toMatch(/^4096$/m);
  });

  it('opens /dev/pcinet only with CAP_SYS_ADMIN, even as root', {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    // Whoever holds the file presents devices to the machine's drivers. setpriv (util-linux)
    // drops the capability from the bounding set, so root keeps its file access but not it.
    const open = `sh -c 'exec 3<>/dev/pcinet' 2>&1; echo "rc=$?"`;
    const r = await runInLab({
      assets,
      devices: ['test'],
      command: `echo "without: $(setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin -- ${open})"; echo "with: $(${open})"`,
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^without: .*Operation not permitted\nrc=[1-9]$/m);
    expect(r.stdout).toMatch(/^with: rc=0$/m);
  });
});
