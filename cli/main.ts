#!/usr/bin/env node
// The `pcinet` command. Only argument handling lives here; each command calls into its part.
import './threadpool.js';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { deviceHelp } from '../endpoint/device-spec.js';
import { labCommand } from '../lab/cli.js';
import { runVpnDemo } from '../lab/demo-vpn.js';
import { runZfsDemo } from '../lab/demo-zfs.js';
import { defaultControlDir } from '../proto/control.js';
import { VERSION } from '../proto/version.js';
import { checkEndpoint, checkHost, runEndpoint, runHost, runId } from './commands.js';
import { mergeOptions, readConfigFile } from './config.js';
import { EXIT_USAGE, UsageError } from './errors.js';
import { type InjectFlags, runInject } from './inject.js';
import { LOG_LEVELS, type LogLevel, makeLogger } from './log.js';
import { runStatus, type StatusFlags } from './status.js';
import { DEFAULT_SNAPLEN, runTrace, type TraceFlags } from './trace.js';
import { modelsDir, superviseEndpoint } from './watch.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

/** Whole seconds, 0 included (0: forever). Below ~11.6 days, which setTimeout can wait. */
function seconds(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isSafeInteger(n) || n < 0 || n > 1_000_000)
    throw new InvalidArgumentError('must be a whole number of seconds from 0 to 1000000');
  return n;
}

const indent = (text: string) => text.replace(/^/gm, '  ');

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function nonNegativeInt(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError('must be an integer >= 0');
  return n;
}

function collectInt(v: string, prev: number[] = []): number[] {
  return [...prev, nonNegativeInt(v)];
}

/** 100000, 64K, 100M, 1G (powers of 1024). */
function size(v: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError('want a size such as 100M');
  const n = Number(m[1]) * 1024 ** ' KMG'.indexOf((m[2] || ' ').toUpperCase());
  if (n < 4096) throw new InvalidArgumentError('at least 4K');
  return n;
}

function common(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'read options from a JSON file (flags win)')
    .option(
      '--check',
      'check the options (flags and --config) and exit: 0 if it would start with them',
      false,
    )
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS).default('info'))
    .option('--identity <dir>', 'identity directory (key + certificate)', defaultIdentityDir())
    .option('--insecure', 'allow plain TCP/WebSocket to a non-loopback address', false)
    .option('--keepalive-ms <ms>', 'keep-alive interval', positiveInt, 1000)
    .option('--dead-after-ms <ms>', 'a silent peer is dead after this long', positiveInt, 3000)
    .option('--grace-ms <ms>', 'how long a lost connection may be resumed', positiveInt, 30000)
    .option(
      '--control <path>',
      `the control socket pcinet status and trace talk to (default ${defaultControlDir()}/${cmd.name()}.sock)`,
    )
    .option('--no-control', 'serve no control socket');
}

/** `--check` passed: one line saying so (systemd's ExecStartPre, a person editing /etc/pcinet). */
function checked(what: string, addr: { scheme?: string; host: string; port: number }): void {
  process.stdout.write(
    `pcinet ${what}: options ok (${addr.scheme ? `${addr.scheme}://` : ''}${addr.host}:${addr.port})\n`,
  );
  // Device specs may have opened their backends (a file, a TAP) to check them: nothing else runs.
  process.exit(0);
}

export function defaultIdentityDir(): string {
  const base = process.env.XDG_CONFIG_HOME ?? `${process.env.HOME ?? '/root'}/.config`;
  return process.env.PCINET_HOME ?? `${base}/pcinet`;
}

/** Flags over the --config file; the file's keys are validated by readConfigFile, and each value
 *  then goes through its flag's own parser (choices, ranges), so a file cannot say what a flag
 *  may not. */
function options<T extends { config?: string }>(cmd: Command): T & { logLevel: LogLevel } {
  const cli = cmd.opts<T & { logLevel: LogLevel }>();
  if (!cli.config) return cli;
  const file = readConfigFile(cli.config);
  for (const opt of cmd.options) {
    const key = opt.attributeName();
    const value = file[key];
    // Lists are checked per entry where they are used (device specs, fingerprints).
    if (value === undefined || Array.isArray(value) || typeof value === 'boolean' || !opt.parseArg) continue;
    try {
      file[key] = opt.parseArg(String(value), undefined);
    } catch (e) {
      throw new UsageError(`config file ${cli.config}: "${key}": ${(e as Error).message}`);
    }
  }
  const merged = mergeOptions(cli, file, (k) => cmd.getOptionValueSource(k) === 'cli');
  if (!LOG_LEVELS.includes(merged.logLevel)) throw new UsageError(`unknown log level "${merged.logLevel}"`);
  return merged;
}

export function buildProgram(): Command {
  const program = new Command('pcinet')
    .description('PCIe devices over the network')
    .version(VERSION)
    .showHelpAfterError(false);

  common(
    program
      .command('endpoint')
      .description('serve device models to hosts (the card side)')
      .option('--listen <addr>', 'HOST:PORT, tcp://, tls://, ws:// or wss:// address', '127.0.0.1:7470')
      .option('--device <spec>', 'a device to serve, e.g. test or test:vectors=16 (repeatable)', collect)
      .option('--allow <fingerprint>', "a host's key fingerprint to accept (repeatable)", collect)
      .option(
        '--inject <spec>',
        'a fault to inject from the start, KIND:key=value,... as pcinet inject spells it (repeatable)',
        collect,
      )
      .option(
        '--watch [dir]',
        'the edit loop: run the endpoint again whenever a compiled device model changes (under DIR; default the models this pcinet runs, e.g. rebuilt by tsc --watch)',
      )
      .addHelpText('after', () => `\nDevices (--device NAME[:key=value,...]):\n${indent(deviceHelp())}\n`),
  ).action(async (_o, cmd: Command) => {
    const o = options<EndpointFlags>(cmd);
    if (o.check) return checked('endpoint', checkEndpoint(o).addr);
    if (o.watch) {
      const dir = typeof o.watch === 'string' ? o.watch : modelsDir();
      process.exitCode = await superviseEndpoint(
        withoutWatch(process.argv.slice(1)),
        dir,
        makeLogger(o.logLevel, 'watch'),
      );
      return;
    }
    await runEndpoint(o, makeLogger(o.logLevel, 'endpoint'));
  });

  common(
    program
      .command('host')
      .description('put an endpoint’s devices on this machine (the workstation side)')
      .option('--connect <addr>', "the endpoint's address (required, here or in the config file)")
      .addOption(
        new Option('--channel <name>', 'where devices appear').choices(['sim', 'kernel']).default('kernel'),
      )
      .option('--pin <fingerprint>', "the endpoint's key fingerprint (required for TLS)")
      .option('--selftest', 'sim channel: run the test device selftest and exit 0 only if it passes', false)
      .option('--ready-file <path>', 'write a JSON line per attached device here once all are attached')
      .option(
        '--reconnect',
        'when the endpoint is lost, keep its devices (link down), redial and bring them back (default with the kernel channel)',
      )
      .option('--no-reconnect', 'remove the devices of an endpoint lost past the grace period, and exit')
      .option(
        '--ctrl-loss-tmo <seconds>',
        'with reconnect: remove devices whose endpoint is still lost after this long (0: never)',
        seconds,
        600,
      )
      .option(
        '--no-kernel-link',
        'kernel channel: keep the data plane in the host-agent instead of pcinet.ko’s own connection to the endpoint',
      ),
  ).action(async (_o, cmd: Command) => {
    const o = options<HostFlags>(cmd);
    if (o.check) return checked('host', checkHost(o).addr);
    process.exitCode = await runHost(o, makeLogger(o.logLevel, 'host'));
  });

  program
    .command('id')
    .description("print this machine's key fingerprint (creating the identity on first use)")
    .option('--identity <dir>', 'identity directory', defaultIdentityDir())
    .action(async (o: { identity: string }) => {
      process.stdout.write(`${await runId(o.identity)}\n`);
    });

  program
    .command('status')
    .description('what a running pcinet host or endpoint is doing: devices, session, rates')
    .option(
      '--socket <path>',
      `a control socket (repeatable; default: ${defaultControlDir()}/host.sock and endpoint.sock, those that exist)`,
      collect,
    )
    .option('--watch', 'refresh in place every --interval, like top (Ctrl-C stops)', false)
    .option('--json', 'print JSON (with --watch: one object per line and refresh)', false)
    .option(
      '--interval <ms>',
      'time between the two snapshots rates come from, and between refreshes',
      positiveInt,
      1000,
    )
    .option('--count <n>', 'with --watch: stop after this many refreshes', positiveInt)
    .action(async (o: StatusFlags) => {
      process.exitCode = await runStatus(o);
    });

  program
    .command('inject')
    .description("inject faults into a running endpoint's devices, for drivers' error paths")
    .argument(
      '[kind]',
      'delay, fail, drop-irq, dup-irq, refuse-dma, link-down, all-ones (or a whole KIND:key=value,... spec)',
    )
    .argument('[value]', 'delay: milliseconds; link-down: seconds')
    .option('--socket <path>', `the endpoint's control socket (default ${defaultControlDir()}/endpoint.sock)`)
    .option('--device <dev>', 'the device: its id, model name or bus address as pcinet status shows them')
    .option('--count <n>', 'inject on the next N occurrences (default 1)')
    .option(
      '--probability <p>',
      'inject on each occurrence with this chance (0 < p <= 1); with --count, at most N times',
    )
    .option('--ms <ms>', 'delay: how long completions (interrupts, for models without commands) are held')
    .option('--seconds <s>', 'link-down: how long')
    .option('--sct <n>', 'fail: status code type (NVMe; default 0, generic)')
    .option('--sc <n>', 'fail: status code, e.g. 0x81 (NVMe)')
    .option('--dnr', 'fail: set Do Not Retry')
    .option(
      '--status <n>',
      "fail: the whole status field in the model's encoding, instead of --sct/--sc/--dnr",
    )
    .option('--opcode <op>', 'fail, delay: only this command (a name such as read, or a number)')
    .option('--queue <q>', 'fail, delay: only commands from this queue (default: every I/O queue)')
    .option('--vector <v>', 'drop-irq, dup-irq: only this MSI-X vector')
    .option('--dir <dir>', 'refuse-dma: read, write or any (default)')
    .option('--bar <n>', 'all-ones: the BAR (default the first)')
    .option('--offset <off>', 'all-ones: only reads of the register at this offset')
    .option('--list', 'list the injections with what each has done', false)
    .option('--clear [id]', 'remove every injection, or the one with this id')
    .option('--json', 'print the answer as JSON', false)
    .action(async (kind: string | undefined, value: string | undefined, o: InjectFlags) => {
      process.exitCode = await runInject(kind, value, o);
    });

  program
    .command('trace')
    .description("record a session's messages (pcapng for Wireshark, or decoded text)")
    .option(
      '--socket <path>',
      `a control socket (default: ${defaultControlDir()}/endpoint.sock, which sees kernel links too, else host.sock)`,
    )
    .option('-w, --write <file>', 'write a pcapng file (Wireshark: packaging/wireshark/pcinet.lua)')
    .option('-r, --read <file>', 'print a capture written with -w as text, and exit')
    .option('--text', 'print decoded messages as they pass (the default without -w)', false)
    .option(
      '--max-size <size>',
      'bytes per file (K, M, G); without --ring the capture stops there',
      size,
      64 << 20,
    )
    .option(
      '--ring <n>',
      'keep the last N files of --max-size, writing FILE-00001.pcapng, … (0: one file)',
      nonNegativeInt,
      0,
    )
    .option('--duration <s>', 'stop after this many seconds', positiveInt)
    .option('--count <n>', 'stop after this many messages', positiveInt)
    .option('--device <id>', 'only this device (repeatable)', collectInt)
    .option('--kind <kind>', 'only this message kind, e.g. mmioWrite, dmaRead (repeatable)', collect)
    .option(
      '--bar <n>',
      'only MMIO (MmioWrite, MmioRead and its completion, ShadowUpdate) of this BAR',
      nonNegativeInt,
    )
    .option('--offset <range>', 'only MMIO at these BAR offsets: LO, LO-HI (HI excluded) or LO+LEN')
    .option('--snaplen <bytes>', 'payload bytes kept per message', nonNegativeInt, DEFAULT_SNAPLEN)
    .option(
      '--for-replay',
      'a capture the replay device can play back (--device replay:trace=FILE): every message whole, into one -w FILE; start it before the host connects',
      false,
    )
    .action(async (o: TraceFlags, cmd: Command) => {
      process.exitCode = await runTrace({
        ...o,
        snaplenGiven: cmd.getOptionValueSource('snaplen') === 'cli',
      });
    });

  labCommand(program);
  const demo = program.command('demo').description('scripted demos on the lab');
  demo
    .command('zfs')
    .description('a ZFS pool on the card (zfs-fuse) shown to the lab workstation as one NVMe disk')
    .action(async () => {
      process.exitCode = await runZfsDemo();
    });
  demo
    .command('vpn')
    .description("a NIC whose WireGuard VPN runs on the card: the workstation's traffic leaves it encrypted")
    .action(async () => {
      const r = await runVpnDemo();
      process.exitCode = r.code !== 0 ? r.code : r.problems.length === 0 ? 0 : 1;
    });
  return program;
}

export interface CommonFlags {
  config?: string;
  check: boolean;
  logLevel: LogLevel;
  identity: string;
  insecure: boolean;
  keepaliveMs: number;
  deadAfterMs: number;
  graceMs: number;
  /** A path; false: --no-control; undefined: the default path. */
  control?: string | false;
}
export interface EndpointFlags extends CommonFlags {
  listen: string;
  device?: string[];
  allow?: string[];
  /** --inject SPEC (endpoint/faults.ts) */
  inject?: string[];
  /** --watch [dir] */
  watch?: boolean | string;
}

/** The endpoint's own command line, less `--watch [dir]` (its child must not supervise too). */
export function withoutWatch(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--watch=')) continue;
    if (a === '--watch') {
      if (argv[i + 1] !== undefined && !argv[i + 1]!.startsWith('-')) i++;
      continue;
    }
    out.push(a);
  }
  return out;
}
export interface HostFlags extends CommonFlags {
  connect: string;
  channel: 'sim' | 'kernel';
  pin?: string;
  selftest: boolean;
  readyFile?: string;
  /** Undefined: the channel's default (kernel: on). */
  reconnect?: boolean;
  ctrlLossTmo: number;
  kernelLink: boolean;
}

function usageExit(message: string): never {
  process.stderr.write(`pcinet: ${message.replace(/^error: /, '')}\n`);
  process.exit(EXIT_USAGE);
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  program.exitOverride();
  for (const c of program.commands) c.exitOverride();
  program.configureOutput({ writeErr: () => {}, outputError: () => {} });
  for (const c of program.commands) c.configureOutput({ writeErr: () => {}, outputError: () => {} });
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return; // --help, --version
      usageExit(e.message);
    }
    if (e instanceof UsageError) usageExit(e.message);
    throw e;
  }
}

main(process.argv).catch((e: unknown) => {
  process.stderr.write(`pcinet: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
