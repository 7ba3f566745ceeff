// A control port on "the card" for lab tests and demos: the guest connects to 10.0.2.2:PORT (QEMU user
// networking maps it to the lab namespace's loopback), sends a command word, and gets "ok" once
// the test (on this machine) has carried it out — e.g. restarting the endpoint mid-I/O.
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { LabCard } from './run.js';

export const CONTROL_PORT = 7998;

/** Guest shell line: sends `word` to the control port and waits (bounded) for "ok". */
export const askCard = (word: string, timeoutS = 60) =>
  `node -e "const s = require('net').connect(${CONTROL_PORT}, '10.0.2.2', () => s.write('${word}\\n')); ` +
  `s.on('data', (d) => { if (String(d).includes('ok')) { console.log('card: ${word} ok'); process.exit(0); } }); ` +
  `setTimeout(() => { console.log('card: ${word} timed out'); process.exit(1); }, ${timeoutS * 1000});"`;

const server = `
const net = require('node:net');
const rl = require('node:readline').createInterface({ input: process.stdin });
let waiting = [];
rl.on('line', (l) => { if (l === 'ok') for (const c of waiting.splice(0)) c.end('ok\\n'); });
net.createServer((c) => c.on('data', (d) => {
  waiting.push(c);
  process.stdout.write(String(d).trim().split('\\n')[0] + '\\n');
})).listen(${CONTROL_PORT}, '127.0.0.1');
process.stdin.on('end', () => process.exit(0));
`;

/** Starts the control port in the lab's namespace; `handle` carries out each command word. */
export function startCardControl(card: LabCard, handle: (word: string) => Promise<void>): ChildProcess {
  const [node, ...args] = card.wrap([process.execPath, '-e', server]);
  const proc = spawn(node!, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  createInterface({ input: proc.stdout! }).on('line', (word) => {
    handle(word)
      .then(() => proc.stdin!.write('ok\n'))
      .catch((e: Error) => console.error(`card control: ${word}: ${e.message}`));
  });
  return proc;
}

/**
 * A runInLab `card` hook whose control port carries out the endpoint's lifecycle: `restart`,
 * `stop`, `start`, `pause`, `resume` (LabCard's). `setup` runs first; `started` after every (re)start, for what
 * the card must redo then (a TAP the new endpoint made). Stops the port when the run ends.
 */
export function endpointControl(
  o: { setup?: (card: LabCard) => Promise<void>; started?: (card: LabCard) => Promise<void> } = {},
) {
  return async (card: LabCard): Promise<() => Promise<void>> => {
    await o.setup?.(card);
    const proc = startCardControl(card, async (word) => {
      if (word === 'stop') return card.stopEndpoint();
      if (word === 'pause') return card.pauseEndpoint();
      if (word === 'resume') return card.resumeEndpoint();
      if (word === 'restart') await card.restartEndpoint();
      else if (word === 'start') await card.startEndpoint();
      else throw new Error(`unknown command ${word}`);
      await o.started?.(card);
    });
    return async () => {
      proc.kill('SIGTERM');
    };
  };
}
