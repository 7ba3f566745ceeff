// Unit tests for the lab's pieces that need no VM: cpio, module resolution, scripts, addresses, CLI.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { describe, expect, it } from 'vitest';
import { labCommand } from './cli.js';
import { endpointArgv, guestDialAddress, hostAgentArgv } from './commands.js';
import { cpioNewc } from './cpio.js';
import { commandScript, envScript, guestScript, shQuote } from './guest-script.js';
import { isStaticElf, resolveModules } from './initramfs.js';
import { repoRoot } from './paths.js';
import { parseHeadersDepends } from './prepare.js';
import { missingGuestTools } from './proc.js';
import { MAX_SLOWDOWN, slowdown, testBudget } from './run.js';

describe('cpioNewc', () => {
  it('writes an archive cpio(1) reads back', () => {
    const data = cpioNewc([
      { kind: 'dir', path: 'bin' },
      { kind: 'file', path: 'bin/hello', data: Buffer.from('hi\n'), mode: 0o755 },
      { kind: 'symlink', path: 'bin/sh', target: 'hello' },
      { kind: 'chardev', path: 'console', major: 5, minor: 1 },
    ]);
    expect(data.subarray(0, 6).toString()).toBe('070701');
    expect(data.length % 4).toBe(0);
    const dir = mkdtempSync(join(tmpdir(), 'cpio-test-'));
    try {
      writeFileSync(join(dir, 'a.cpio'), data);
      const list = execFileSync('cpio', ['-it', '-F', join(dir, 'a.cpio')], { stdio: 'pipe' }).toString();
      expect(list.trim().split('\n')).toEqual(['bin', 'bin/hello', 'bin/sh', 'console']);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // no cpio(1) here: header checks only
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses paths that climb out', () => {
    expect(() => cpioNewc([{ kind: 'dir', path: '../etc' }])).toThrow(/bad path/);
  });
});

describe('resolveModules', () => {
  const dep = [
    'kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko',
    'kernel/net/9p/9pnet.ko:',
    'kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko',
    'kernel/fs/netfs/netfs.ko:',
    'kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko',
    'kernel/drivers/virtio/virtio_ring.ko:',
  ].join('\n');

  it('puts every module after its dependencies, each once', () => {
    expect(resolveModules(dep, ['9p', '9pnet_virtio'])).toEqual([
      'kernel/net/9p/9pnet.ko',
      'kernel/fs/netfs/netfs.ko',
      'kernel/fs/fscache/fscache.ko',
      'kernel/fs/9p/9p.ko',
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/net/9p/9pnet_virtio.ko',
    ]);
  });

  it('says which module is missing', () => {
    expect(() => resolveModules(dep, ['virtio_net'])).toThrow(/virtio_net is not in/);
  });
});

describe('missingGuestTools', () => {
  it('names a tool the guest command runs that this machine lacks, with its package', () => {
    const bin = mkdtempSync(join(tmpdir(), 'pcinet-tools-'));
    const path = process.env.PATH;
    try {
      for (const t of ['fio', 'ip']) writeFileSync(join(bin, t), '#!/bin/sh\n', { mode: 0o755 });
      process.env.PATH = bin;
      expect(missingGuestTools('fio --name=x; ping -c 3 10.0.2.2 | grep loss')).toEqual([
        'ping not found: apt-get install iputils-ping',
      ]);
      expect(missingGuestTools('for i in 1 2; do timeout 20 iperf3 -c x; done')).toEqual([
        'iperf3 not found: apt-get install iperf3',
      ]);
      expect(missingGuestTools('x=$(mkfs.ext4 -q /dev/x)')).toEqual([
        'mkfs.ext4 not found: apt-get install e2fsprogs',
      ]);
      // Named only as an argument or a path: not run, not needed.
      expect(missingGuestTools('modprobe nvme; ls /sys/class/nvme; echo ping; ip link')).toEqual([]);
    } finally {
      process.env.PATH = path;
      rmSync(bin, { recursive: true, force: true });
    }
  });
});

describe('isStaticElf', () => {
  it('tells a static busybox from a dynamic node', () => {
    expect(isStaticElf(readFileSync(process.execPath))).toBe(false);
    expect(isStaticElf(Buffer.from('#!/bin/sh\n'))).toBe(false);
  });
});

describe('scripts', () => {
  it('quotes anything for sh', () => {
    const weird = `it's "q" $HOME \`x\` \\ \n end`;
    const out = execFileSync('sh', ['-c', `printf %s ${shQuote(weird)}`]).toString();
    expect(out).toBe(weird);
  });

  it('runs a string as a script and an array as an exact argv', () => {
    expect(commandScript('lspci | head')).toBe('. /run/pcinet-lab/env.sh\nlspci | head\n');
    expect(commandScript(['echo', "a b'c"])).toBe(`. /run/pcinet-lab/env.sh\nexec 'echo' 'a b'\\''c'\n`);
  });

  it('refuses bad environment names', () => {
    expect(envScript({ A_1: 'x y' })).toContain("export A_1='x y'");
    expect(() => envScript({ 'A-B': '1' })).toThrow(/bad environment variable name/);
  });

  it('writes a guest.sh that sh accepts, with and without pcinet', () => {
    const pcinet = {
      modules: ['/r/kernel/pcinet.ko'],
      hostArgv: ['/usr/bin/node', '/r/dist/cli/main.js', 'host'],
      expectDevices: 2,
      readyTimeoutS: 60,
      bindTimeoutS: 20,
      stopTimeoutS: 10,
    };
    for (const plan of [
      { cwd: '/r', path: '/usr/bin:/bin', watchdogS: 100 },
      { cwd: "/it's", path: '/usr/bin:/bin', watchdogS: 100, pcinet },
    ]) {
      const script = guestScript(plan);
      expect(() => execFileSync('sh', ['-n', '-c', script])).not.toThrow();
    }
    expect(guestScript({ cwd: '/r', path: '/bin', watchdogS: 1, pcinet })).toContain('rmmod "$m"');
  });

  it('names the kernel’s messages about a device whose driver did not bind', () => {
    const pcinet = {
      modules: [],
      hostArgv: ['node'],
      readyTimeoutS: 1,
      bindTimeoutS: 1,
      stopTimeoutS: 1,
    };
    const script = guestScript({ cwd: '/r', path: '/bin', watchdogS: 1, pcinet });
    const fn = /^device_messages\(\) \{\n[\s\S]*?\n\}\n/m.exec(script)?.[0];
    expect(fn).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'lab-dmesg-'));
    try {
      // A dmesg of our own: the device's lines among others.
      writeFileSync(
        join(dir, 'dmesg'),
        [
          '#!/bin/sh',
          "echo '[    1.000000] pci 0000:00:01.0: other device'",
          "echo '[   12.345678] virtio_rng: probe of virtio3 failed with error -22'",
          "echo '[   12.400000] virtio_pci 0010:00:00.0: virtio_pci: leaving for legacy driver'",
          "echo '[   12.500000] virtio30: not this one'",
        ].join('\n'),
        { mode: 0o755 },
      );
      const out = execFileSync(
        'sh',
        ['-c', `${fn}device_messages /sys/bus/pci/devices/0010:00:00.0/virtio3 0010:00:00.0`],
        {
          env: { PATH: `${dir}:/usr/bin:/bin` },
        },
      ).toString();
      expect(out).toBe(
        'virtio_rng: probe of virtio3 failed with error -22 | virtio_pci 0010:00:00.0: virtio_pci: leaving for legacy driver',
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('addresses and command lines', () => {
  it('maps loopback to the slirp host and keeps or picks a scheme', () => {
    expect(guestDialAddress('127.0.0.1:7470', false)).toBe('tls://10.0.2.2:7470');
    expect(guestDialAddress('localhost:7470', true)).toBe('tcp://10.0.2.2:7470');
    expect(guestDialAddress('ws://127.0.0.1:80/pcinet', false)).toBe('ws://10.0.2.2:80/pcinet');
    expect(guestDialAddress('192.168.1.5:7470', false)).toBe('tls://192.168.1.5:7470');
    expect(() => guestDialAddress('nonsense', false)).toThrow(/cannot parse/);
  });

  it('pins both ways with TLS, and says --insecure otherwise', () => {
    // Both run with the allocator settings (cli/allocator.ts).
    const ENV = `env MALLOC_MMAP_THRESHOLD_=${32 << 20} MALLOC_TRIM_THRESHOLD_=${64 << 20}`;
    const ep = endpointArgv({
      node: 'node',
      cli: 'main.js',
      port: 7470,
      devices: ['test', 'nvme'],
      insecure: false,
      identityDir: '/id',
      allow: ['sha256:aa'],
    });
    expect(ep.join(' ')).toBe(
      `${ENV} node main.js endpoint --listen tls://127.0.0.1:7470 --device test --device nvme --identity /id --allow sha256:aa`,
    );
    const host = hostAgentArgv({
      node: 'node',
      cli: 'main.js',
      connect: 'tcp://10.0.2.2:7470',
      insecure: true,
      readyFile: '/run/pcinet-lab/ready',
    });
    expect(host.join(' ')).toBe(
      `${ENV} node main.js host --connect tcp://10.0.2.2:7470 --channel kernel --ready-file /run/pcinet-lab/ready --insecure`,
    );
    expect(() => endpointArgv({ node: 'n', cli: 'c', port: 1, devices: [], insecure: false })).toThrow(
      /--allow/,
    );
  });

  it('reads the kernel version from linux-headers-amd64’s Depends', () => {
    expect(parseHeadersDepends('linux-headers-6.1.0-56-amd64 (= 6.1.192-2)')).toEqual({
      kver: '6.1.0-56-amd64',
      version: '6.1.192-2',
    });
    expect(parseHeadersDepends('something-else')).toBeUndefined();
  });
});

describe('labCommand', () => {
  function parse(
    argv: string[],
  ): Promise<{ which: string; command?: string[]; opts: Record<string, unknown> }> {
    const program = new Command('pcinet').exitOverride();
    labCommand(program);
    const lab = program.commands.find((c) => c.name() === 'lab')!;
    return new Promise((resolve, reject) => {
      for (const c of lab.commands) {
        c.action((...args: unknown[]) => {
          const cmd = args[args.length - 1] as Command;
          const command = c.name() === 'run' ? (args[0] as string[]) : undefined;
          resolve({ which: c.name(), command, opts: cmd.opts() });
        });
      }
      program.parseAsync(argv, { from: 'user' }).catch(reject);
    });
  }

  it('gives `run` its own flags and the command after --', async () => {
    const r = await parse(['lab', 'run', '--device', 'test', '--env', 'A=1', '--', 'ls', '-l', '--device']);
    expect(r.which).toBe('run');
    expect(r.command).toEqual(['ls', '-l', '--device']);
    expect(r.opts).toMatchObject({ device: ['test'], env: { A: '1' }, timeout: 180, machine: 'pc' });
  });

  it('runs the demo when no subcommand is given', async () => {
    const r = await parse(['lab', '--device', 'nvme', '--machine', 'q35']);
    expect(r).toMatchObject({ which: 'demo', opts: { device: ['nvme'], machine: 'q35', pcinet: true } });
  });

  it.each([
    [['lab', 'run', '--bogus', '--', 'true'], /unknown option '--bogus'/],
    [['lab', 'run', '--timeout', 'soon', '--', 'true'], /positive integer/],
    [['lab', 'run', '--machine', 'virt', '--', 'true'], /virt/],
    [['lab', 'run', '--env', 'NOEQUALS', '--', 'true'], /NAME=VALUE/],
    [['lab', 'run'], /missing required argument/],
  ])('rejects %j with one CommanderError', async (argv, message) => {
    const err = await parse(argv).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommanderError);
    expect((err as CommanderError).message).toMatch(message);
  });
});

describe('a lab run on a busy machine', () => {
  it('stretches its deadline by how much slower than idle it came up, within bounds', () => {
    expect(slowdown(8_000)).toBe(1); // an idle machine: the test's own budget
    expect(slowdown(30_000)).toBe(2);
    expect(slowdown(10_000_000)).toBe(MAX_SLOWDOWN);
    // The test's own timeout outlasts the longest stretch.
    expect(testBudget(240_000)).toBeGreaterThan(240_000 * MAX_SLOWDOWN);
  });

  it('every lab test gives vitest the stretched budget, not a fixed timeout the run can outlast', () => {
    // A fixed `timeout:` ends a slow run that its own (stretched) deadline still allows: CI failed
    // that way on a busy machine (status-trace, 360 s).
    const dir = join(repoRoot(), 'test/e2e');
    const lab = readdirSync(dir)
      .filter((f) => f.endsWith('.test.ts'))
      .map((f) => ({ f, text: readFileSync(join(dir, f), 'utf8') }))
      .filter(({ text }) => /runInLab|run\w*Demo\(/.test(text));
    expect(lab.length).toBeGreaterThan(10);
    for (const { f, text } of lab) {
      // A test's options: `{ timeout: … }` right before its async body.
      const budgets = [...text.matchAll(/\{\s*timeout: ([^\n}]+?),?\s*\},\s*async/g)].map((m) => m[1]!);
      expect(budgets.length, f).toBeGreaterThan(0);
      for (const b of budgets) expect(b, f).toMatch(/testBudget\(/);
    }
  });
});
