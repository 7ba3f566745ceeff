// The QEMU command line for the lab VM. Three serial ports, each a unix-socket client connecting to
// the lab process: ttyS0 is the console (kernel log and "pcinet-lab:" lines), ttyS1 the command's
// stdout, ttyS2 its stderr, so guest output never mixes with kernel messages. Two 9p shares: this
// machine's root (read-only) and the run directory (writable). One virtio NIC on slirp.
import { TAG_ROOT, TAG_RUN } from './paths.js';

export type Machine = 'pc' | 'q35';
export type Accel = 'tcg' | 'kvm';

export interface QemuConfig {
  /** An ELF vmlinux (booted through the PVH entry) or a bzImage. */
  kernel: string;
  initramfs: string;
  /** Host directory shared writable at GUEST_RUN_DIR. */
  runShare: string;
  sockets: { console: string; stdout: string; stderr: string };
  machine: Machine;
  accel: Accel;
  cpus: number;
  memoryMb: number;
  extraKernelArgs?: readonly string[];
  extraQemuArgs?: readonly string[];
}

/** Kernel arguments. panic=-1 with -no-reboot turns a panic into a QEMU exit rather than a hang;
 *  console loglevel 7 keeps KERN_INFO and above (WARN splats are KERN_WARNING) on the log the
 *  lab scans. */
export function kernelArgs(extra: readonly string[] = []): string {
  return ['console=ttyS0', 'loglevel=7', 'panic=-1', 'rdinit=/init', ...extra].join(' ');
}

/** QEMU option values escape a comma by doubling it. */
function q(value: string): string {
  return value.replace(/,/g, ',,');
}

export function qemuArgv(c: QemuConfig): string[] {
  const fs = (id: string, path: string, readonly: boolean) =>
    `local,id=${id},path=${q(path)},security_model=none,multidevs=remap${readonly ? ',readonly=on' : ''}`;
  return [
    '-machine',
    `${c.machine},accel=${c.accel}`,
    '-cpu',
    c.accel === 'kvm' ? 'host' : 'max',
    '-smp',
    String(c.cpus),
    '-m',
    String(c.memoryMb),
    // Threads named by role ("CPU 0/TCG", the main loop that runs slirp): a profile of the lab
    // from this machine can tell the guest's vCPUs from its network.
    '-name',
    'pcinet-lab,debug-threads=on',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    c.kernel,
    '-initrd',
    c.initramfs,
    '-append',
    kernelArgs(c.extraKernelArgs),
    '-chardev',
    `socket,id=con,path=${q(c.sockets.console)}`,
    '-serial',
    'chardev:con',
    '-chardev',
    `socket,id=out,path=${q(c.sockets.stdout)}`,
    '-serial',
    'chardev:out',
    '-chardev',
    `socket,id=err,path=${q(c.sockets.stderr)}`,
    '-serial',
    'chardev:err',
    '-fsdev',
    fs('fsroot', '/', true),
    '-device',
    `virtio-9p-pci,fsdev=fsroot,mount_tag=${TAG_ROOT}`,
    '-fsdev',
    fs('fsrun', c.runShare, false),
    '-device',
    `virtio-9p-pci,fsdev=fsrun,mount_tag=${TAG_RUN}`,
    '-netdev',
    'user,id=net0',
    '-device',
    'virtio-net-pci,netdev=net0',
    ...(c.extraQemuArgs ?? []),
  ];
}
