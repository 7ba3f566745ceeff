// Everything a lab run needs on this machine, made idempotently: Debian packages, the guest kernel
// (Debian's own 6.1 image, the version linux-headers-amd64 depends on, so the module built against
// the installed headers loads in the guest), the initramfs, and pcinet.ko. Cached under
// cacheDir(); a second call costs a few dpkg-query calls, a hash of ~3 MB and an incremental make.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildInitramfs } from './initramfs.js';
import { withLock } from './lock.js';
import { cacheDir, cliEntry, kernelSourceDir, repoRoot } from './paths.js';
import { describeFailure, run } from './proc.js';

/** Packages the lab itself uses. Test tools (fio, nvme-cli, …) are the tests' business. */
export const LAB_PACKAGES = [
  'qemu-system-x86',
  'busybox-static',
  'kmod',
  'pciutils',
  'iproute2',
  'xz-utils',
  'linux-headers-amd64',
] as const;
/** Needed only to build the module. */
export const BUILD_PACKAGES = ['build-essential'] as const;

/** apt may download hundreds of MB on a fresh machine. */
const APT_TIMEOUT_MS = 20 * 60_000;
const DPKG_TIMEOUT_MS = 60_000;
/** A cold kbuild of one module takes ~20 s on 2 cores; a no-op one ~1 s. */
const MAKE_TIMEOUT_MS = 5 * 60_000;
const BUSYBOX = '/bin/busybox';

export interface LabAssets {
  /** e.g. "6.1.0-56-amd64" */
  kver: string;
  /** Debian package version of image and headers, e.g. "6.1.192-2" */
  kpkgVersion: string;
  /** What QEMU boots: the uncompressed ELF vmlinux (PVH entry) when it could be extracted, else
   *  the bzImage. */
  kernel: string;
  vmlinuz: string;
  /** The unpacked image's lib/modules/<kver> (with modules.dep), visible to the guest over 9p. */
  modulesDir: string;
  initramfs: string;
  /** KDIR for the module build. */
  headersDir: string;
  /** kernel/pcinet.ko, if it was built. */
  pcinetKo?: string;
  /** Modules from test/kmod/, if built. */
  testKos: string[];
  /** dist/cli/main.js, if present. */
  cli?: string;
  /** Why the pcinet stack (module, endpoint, host-agent) cannot run, if it cannot. */
  pcinetUnavailable?: string;
}

export interface PrepareOptions {
  /** Build kernel/ (and test/kmod/) too. Default true. */
  modules?: boolean;
  /** Progress lines ("fetching linux-image-…"). */
  onProgress?: (line: string) => void;
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** dpkg-query output formats (dpkg-query(1)), not template strings. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format
const DPKG_STATUS_FORMAT = '${Package} ${db:Status-Abbrev}\n';
// biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format
const DPKG_DEPENDS_FORMAT = '${Depends}';

async function missingPackages(pkgs: readonly string[]): Promise<string[]> {
  // Exits non-zero when some package is unknown, but still lists the others.
  const r = await run('dpkg-query', ['-W', `-f=${DPKG_STATUS_FORMAT}`, ...pkgs], {
    timeoutMs: DPKG_TIMEOUT_MS,
  });
  const installed = new Set(
    r.stdout
      .split('\n')
      .filter((l) => / ii/.test(l))
      .map((l) => l.split(' ')[0]),
  );
  return pkgs.filter((p) => !installed.has(p));
}

const APT_ENV = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };

/** apt-get with one `apt-get update` and retry if the first attempt fails (stale lists). */
async function apt(args: string[], cwd: string | undefined, what: string): Promise<void> {
  let r = await run('apt-get', args, { cwd, timeoutMs: APT_TIMEOUT_MS, env: APT_ENV });
  if (r.code === 0) return;
  const u = await run('apt-get', ['update', '-q'], { timeoutMs: APT_TIMEOUT_MS, env: APT_ENV });
  if (u.code !== 0) throw new Error(describeFailure('lab: apt-get update', u));
  r = await run('apt-get', args, { cwd, timeoutMs: APT_TIMEOUT_MS, env: APT_ENV });
  if (r.code !== 0) throw new Error(describeFailure(`lab: ${what}`, r));
}

export async function ensurePackages(pkgs: readonly string[], say: (l: string) => void): Promise<void> {
  const missing = await missingPackages(pkgs);
  if (missing.length === 0) return;
  if (!isRoot()) {
    throw new Error(
      `lab: missing Debian packages (${missing.join(' ')}); run as root or apt-get install them`,
    );
  }
  say(`installing ${missing.join(' ')}`);
  await apt(['install', '-y', '-q', '--no-install-recommends', ...missing], undefined, 'apt-get install');
}

/** The kernel version linux-headers-amd64 points at: Depends "linux-headers-6.1.0-56-amd64 (= 6.1.192-2)". */
export function parseHeadersDepends(depends: string): { kver: string; version: string } | undefined {
  const m = /linux-headers-(\d[^\s,(]*-amd64)\s*\(=\s*([^)\s]+)\)/.exec(depends);
  return m ? { kver: m[1], version: m[2] } : undefined;
}

async function guestKernelVersion(): Promise<{ kver: string; version: string }> {
  const r = await run('dpkg-query', ['-W', `-f=${DPKG_DEPENDS_FORMAT}`, 'linux-headers-amd64'], {
    timeoutMs: DPKG_TIMEOUT_MS,
  });
  const v = r.code === 0 ? parseHeadersDepends(r.stdout) : undefined;
  if (!v)
    throw new Error(`lab: cannot tell which kernel linux-headers-amd64 depends on (${r.stdout.trim()})`);
  return v;
}

/** Downloads and unpacks linux-image-<kver> into <cache>/kernel/<kver>, then runs depmod on it
 *  (the package's postinst would; modules.dep lets the initramfs and the guest resolve modules). */
async function ensureKernelImage(
  cache: string,
  kver: string,
  version: string,
  say: (l: string) => void,
): Promise<string> {
  const dir = join(cache, 'kernel', kver);
  const stamp = join(dir, '.complete');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === version) return dir;
  if (!isRoot()) throw new Error(`lab: the kernel image ${kver} is not cached in ${dir}; run once as root`);
  const work = join(cache, 'kernel', `.${kver}.tmp-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    let pkg = `linux-image-${kver}`;
    say(`fetching ${pkg} ${version}`);
    try {
      await apt(['download', '-q', `${pkg}=${version}`], work, `apt-get download ${pkg}`);
    } catch {
      pkg = `linux-image-${kver}-unsigned`;
      say(`fetching ${pkg} ${version}`);
      await apt(['download', '-q', `${pkg}=${version}`], work, `apt-get download ${pkg}`);
    }
    const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`lab: apt-get download ${pkg} left no .deb in ${work}`);
    say(`unpacking ${deb}`);
    const img = join(work, 'img');
    const x = await run('dpkg-deb', ['-x', join(work, deb), img], { timeoutMs: 5 * 60_000 });
    if (x.code !== 0) throw new Error(describeFailure(`lab: dpkg-deb -x ${deb}`, x));
    const d = await run('depmod', ['-b', img, kver], { timeoutMs: 5 * 60_000 });
    if (d.code !== 0) throw new Error(describeFailure(`lab: depmod -b ${img} ${kver}`, d));
    if (!existsSync(join(img, 'boot', `vmlinuz-${kver}`))) throw new Error(`lab: ${deb} has no vmlinuz`);
    writeFileSync(join(img, '.complete'), `${version}\n`);
    rmSync(dir, { recursive: true, force: true });
    renameSync(img, dir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return dir;
}

/** The files of the kernel tree checkpatch.pl reads with --no-tree. */
const CHECKPATCH_FILES = ['checkpatch.pl', 'spelling.txt', 'const_structs.checkpatch'];

/**
 * The kernel's scripts/checkpatch.pl, from Debian's linux-source package of the guest kernel's
 * version (linux-source-6.1 for 6.1.x), taken once into <cache>/checkpatch/<version>/: the style
 * check kernel code is held to. Returns the path of checkpatch.pl.
 */
export async function prepareCheckpatch(say: (l: string) => void = () => {}): Promise<string> {
  const cache = cacheDir(repoRoot());
  mkdirSync(cache, { recursive: true });
  return withLock(join(cache, 'prepare.lock'), async () => {
    const { version } = await guestKernelVersion();
    const dir = join(cache, 'checkpatch', version);
    const script = join(dir, 'checkpatch.pl');
    if (existsSync(join(dir, '.complete'))) return script;
    if (!isRoot()) throw new Error(`lab: checkpatch.pl is not cached in ${dir}; run once as root`);
    const series = /^\d+\.\d+/.exec(version)?.[0];
    if (!series) throw new Error(`lab: cannot tell the kernel series of ${version}`);
    await ensurePackages(['xz-utils', 'perl'], say);
    const pkg = `linux-source-${series}`;
    const work = join(cache, 'checkpatch', `.tmp-${process.pid}`);
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { recursive: true });
    try {
      say(`fetching ${pkg} ${version} (for scripts/checkpatch.pl)`);
      await apt(['download', '-q', `${pkg}=${version}`], work, `apt-get download ${pkg}`);
      const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
      if (!deb) throw new Error(`lab: apt-get download ${pkg} left no .deb in ${work}`);
      const tarball = `./usr/src/${pkg}.tar.xz`;
      const x = await run(
        'sh',
        ['-c', `dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" "$3"`, 'sh', join(work, deb), work, tarball],
        {
          timeoutMs: 5 * 60_000,
        },
      );
      if (x.code !== 0) throw new Error(describeFailure(`lab: unpacking ${tarball} from ${deb}`, x));
      const members = CHECKPATCH_FILES.map((f) => `${pkg}/scripts/${f}`);
      const t = await run('tar', ['-xJf', join(work, tarball), '-C', work, ...members], {
        timeoutMs: 10 * 60_000,
      });
      if (t.code !== 0) throw new Error(describeFailure(`lab: tar -x ${members.join(' ')}`, t));
      const out = join(work, 'out');
      mkdirSync(out);
      for (const f of CHECKPATCH_FILES) renameSync(join(work, pkg, 'scripts', f), join(out, f));
      writeFileSync(join(out, '.complete'), `${version}\n`);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(join(cache, 'checkpatch'), { recursive: true });
      renameSync(out, dir);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
    return script;
  });
}

/** Offsets in the bzImage setup header (Documentation/x86/boot.rst). */
const BZ_SETUP_SECTS = 0x1f1;
const BZ_PAYLOAD_OFFSET = 0x248;
const BZ_PAYLOAD_LENGTH = 0x24c;
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

/** Extracts the ELF vmlinux from the bzImage's XZ payload, once. Booting it through QEMU's PVH
 *  entry skips the in-guest decompression, which under TCG costs ~3 s of a ~6 s boot. Returns
 *  undefined (boot the bzImage) when the kernel lacks CONFIG_PVH or the payload is not XZ. */
async function ensureVmlinux(
  imageDir: string,
  kver: string,
  say: (l: string) => void,
): Promise<string | undefined> {
  const out = join(imageDir, 'boot', `vmlinux-${kver}`);
  if (existsSync(out)) return out;
  const config = readFileSync(join(imageDir, 'boot', `config-${kver}`), 'utf8');
  if (!/^CONFIG_PVH=y$/m.test(config)) return undefined;
  const bz = readFileSync(join(imageDir, 'boot', `vmlinuz-${kver}`));
  const start = ((bz[BZ_SETUP_SECTS] || 4) + 1) * 512 + bz.readUInt32LE(BZ_PAYLOAD_OFFSET);
  const payload = bz.subarray(start, start + bz.readUInt32LE(BZ_PAYLOAD_LENGTH));
  if (!payload.subarray(0, XZ_MAGIC.length).equals(XZ_MAGIC)) return undefined;
  say(`extracting vmlinux-${kver} for a PVH boot`);
  const xzPath = `${out}.xz.tmp-${process.pid}`;
  const tmp = `${out}.tmp-${process.pid}`;
  writeFileSync(xzPath, payload);
  try {
    const r = await run('sh', ['-c', 'xz -dc --single-stream "$1" > "$2"', 'sh', xzPath, tmp], {
      timeoutMs: 2 * 60_000,
    });
    if (r.code !== 0) throw new Error(describeFailure('lab: xz -d of the kernel payload', r));
    const elf = readFileSync(tmp).subarray(0, 4);
    if (elf.readUInt32BE(0) !== 0x7f454c46) throw new Error('lab: the kernel payload is not an ELF vmlinux');
    renameSync(tmp, out);
  } finally {
    rmSync(xzPath, { force: true });
    rmSync(tmp, { force: true });
  }
  return out;
}

/** Writes <cache>/initramfs-<hash>.cpio if absent; removes older ones. */
function ensureInitramfs(cache: string, kver: string, imageDir: string, say: (l: string) => void): string {
  const { data, hash } = buildInitramfs({ kver, imageDir, busyboxPath: BUSYBOX });
  const name = `initramfs-${kver}-${hash}.cpio`;
  const path = join(cache, name);
  if (!existsSync(path)) {
    say(`writing ${name}`);
    const tmp = `${path}.tmp-${process.pid}`;
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  }
  for (const f of readdirSync(cache)) {
    if (/^initramfs-.*\.cpio$/.test(f) && f !== name) rmSync(join(cache, f), { force: true });
  }
  return path;
}

/** `make -C DIR KDIR=…`; returns the .ko files it produced, or a reason it could not. */
async function buildModuleDir(dir: string, headersDir: string): Promise<string[]> {
  const r = await run('make', ['-C', dir, `KDIR=${headersDir}`], { timeoutMs: MAKE_TIMEOUT_MS });
  if (r.code !== 0) throw new Error(describeFailure(`lab: make -C ${dir} KDIR=${headersDir}`, r, 30));
  return readdirSync(dir)
    .filter((f) => f.endsWith('.ko'))
    .map((f) => join(dir, f));
}

/** Installs and builds everything once. Safe to call from many processes at a time (file lock). */
export async function prepareLab(opts: PrepareOptions = {}): Promise<LabAssets> {
  const say = opts.onProgress ?? (() => {});
  const root = repoRoot();
  const cache = cacheDir(root);
  mkdirSync(cache, { recursive: true });
  return withLock(join(cache, 'prepare.lock'), async () => {
    await ensurePackages(LAB_PACKAGES, say);
    const { kver, version } = await guestKernelVersion();
    const headersDir = `/usr/src/linux-headers-${kver}`;
    if (!existsSync(join(headersDir, 'Makefile'))) {
      throw new Error(`lab: ${headersDir} is missing; apt-get install linux-headers-${kver}`);
    }
    const imageDir = await ensureKernelImage(cache, kver, version, say);
    const initramfs = ensureInitramfs(cache, kver, imageDir, say);
    const vmlinuz = join(imageDir, 'boot', `vmlinuz-${kver}`);
    const assets: LabAssets = {
      kver,
      kpkgVersion: version,
      kernel: (await ensureVmlinux(imageDir, kver, say)) ?? vmlinuz,
      vmlinuz,
      modulesDir: join(imageDir, 'lib', 'modules', kver),
      initramfs,
      headersDir,
      testKos: [],
    };
    const cli = cliEntry(root);
    if (existsSync(cli)) assets.cli = cli;
    const kdir = kernelSourceDir(root);
    const unavailable: string[] = [];
    if (!assets.cli) unavailable.push(`${cli} does not exist (run npm run build)`);
    if (!existsSync(join(kdir, 'Makefile'))) unavailable.push(`${kdir}/Makefile does not exist yet`);
    if (opts.modules !== false && existsSync(join(kdir, 'Makefile'))) {
      await ensurePackages(BUILD_PACKAGES, say);
      say(`make -C ${kdir} KDIR=${headersDir}`);
      const kos = await buildModuleDir(kdir, headersDir);
      const ko = kos.find((k) => k.endsWith('/pcinet.ko'));
      if (ko) assets.pcinetKo = ko;
      else unavailable.push(`make -C ${kdir} produced no pcinet.ko`);
      const tdir = join(root, 'test', 'kmod');
      if (existsSync(join(tdir, 'Makefile'))) {
        say(`make -C ${tdir} KDIR=${headersDir}`);
        assets.testKos = await buildModuleDir(tdir, headersDir);
      }
    } else if (opts.modules === false) {
      unavailable.push('the module build was skipped');
    }
    if (unavailable.length > 0) assets.pcinetUnavailable = unavailable.join('; ');
    return assets;
  });
}
