#!/usr/bin/env node
// Stand-alone entry for the lab: `node dist/lab/main.js [run|prepare] …`, the same commands as
// `pcinet lab`, usable while the rest of the CLI is being written.
import { Command, CommanderError } from 'commander';
import { labCommand } from './cli.js';

const EXIT_USAGE = 2;

async function main(argv: string[]): Promise<void> {
  const program = new Command('pcinet')
    .exitOverride()
    .configureOutput({ writeErr: () => {}, outputError: () => {} });
  labCommand(program);
  try {
    await program.parseAsync(['lab', ...argv], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return; // --help
      process.stderr.write(`pcinet: ${e.message.replace(/^error: /, '')}\n`);
      process.exit(EXIT_USAGE);
    }
    throw e;
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`pcinet: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
