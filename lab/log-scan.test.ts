import { describe, expect, it } from 'vitest';
import { formatReports, scanGuestLog } from './log-scan.js';

const CLEAN_BOOT = `[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)
[    1.454990] AMD-Vi: AMD IOMMUv2 functionality not available on this system - This is not a bug.
[    1.888783] Unstable clock detected, switching default tracing clock to "global"
[    2.128346] Run /init as init process
pcinet-lab: phase init
[    2.806273] 9pnet: Limiting 'msize' to 512000 as this is the maximum supported by transport virtio
[    3.008648] pcinet: module verification failed: signature and/or required key missing - tainting kernel
pcinet-lab: phase root
pcinet-lab: error: insmod /x/BUG: WARNING: CPU: Oops failed
pcinet-lab: teardown-error rmmod pcinet failed or hung
[    3.522068] reboot: Power down`;

const OOPS = `[    5.100000] pcinet 0000:10:00.0: enabling device (0000 -> 0002)
[    5.201234] BUG: kernel NULL pointer dereference, address: 0000000000000008
[    5.201300] #PF: supervisor read access in kernel mode
[    5.201400] Oops: 0000 [#1] PREEMPT SMP NOPTI
[    5.201500] CPU: 1 PID: 130 Comm: node Tainted: G           OE      6.1.0-56-amd64 #1  Debian 6.1.192-2
[    5.201600] RIP: 0010:pcinet_mmio_read+0x1a/0x80 [pcinet]
[    5.201700] Call Trace:
[    5.201710]  <TASK>
[    5.201720]  pcinet_dev_read+0x55/0x120 [pcinet]
[    5.201730]  </TASK>
[    5.201800] ---[ end trace 0000000000000000 ]---
[    5.300000] nvme nvme0: pci function 0000:10:00.0`;

const WARN = `[    3.199704] ------------[ cut here ]------------
[    3.199846] WARNING: CPU: 1 PID: 126 at drivers/pci/msi/msi.c:123 pci_msix_enable+0x1a/0x100
[    3.203842] Call Trace:
[    3.204443]  do_one_initcall+0x59/0x220
[    3.207624] ---[ end trace 0000000000000000 ]---`;

describe('scanGuestLog', () => {
  it('finds nothing in a clean boot, and ignores the lab’s own lines', () => {
    expect(scanGuestLog(CLEAN_BOOT)).toEqual([]);
  });

  it('reports an oops as one report running to the end of its trace', () => {
    const reports = scanGuestLog(`${CLEAN_BOOT}\n${OOPS}`);
    expect(reports).toHaveLength(1);
    expect(reports[0].kind).toBe('bug');
    expect(reports[0].excerpt).toContain('Oops: 0000 [#1]');
    expect(reports[0].excerpt).toContain('pcinet_mmio_read');
    expect(reports[0].excerpt).toMatch(/end trace 0+ \]---$/);
    expect(reports[0].excerpt).not.toContain('nvme0');
  });

  it('tells separate reports apart', () => {
    const reports = scanGuestLog(`${WARN}\n[    4.0] ok\n${OOPS}`);
    expect(reports.map((r) => r.kind)).toEqual(['warn', 'bug']);
  });

  it.each([
    [
      'general protection fault, probably for non-canonical address 0xdead: 0000 [#1]',
      'general-protection-fault',
    ],
    ['BUG: KASAN: slab-out-of-bounds in pcinet_ring_pop+0x3c/0x90', 'kasan'],
    ['UBSAN: shift-out-of-bounds in drivers/pcinet/ring.c:42:9', 'ubsan'],
    ['kernel BUG at drivers/nvme/host/pci.c:1234!', 'bug'],
    ['INFO: task node:130 blocked for more than 120 seconds.', 'hung-task'],
    ['rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:', 'rcu-stall'],
    ['list_add corruption. prev->next should be next', 'corruption'],
    ['Kernel panic - not syncing: Fatal exception', 'panic'],
    ['Call Trace:', 'call-trace'],
  ])('classifies "%s" as %s', (line, kind) => {
    const [r] = scanGuestLog(`[    1.0] before\n[    2.0] ${line}\n[    3.0] after`);
    expect(r?.kind).toBe(kind);
  });

  it('formats reports with their line numbers', () => {
    const text = formatReports(scanGuestLog(`a\nb\n${WARN}`));
    expect(text).toMatch(/^--- kernel warn \(guest log line 3\) ---\n/);
    expect(text).toContain('WARNING: CPU: 1 PID: 126');
  });
});
