// Takes the lab's network away: a runInLab `card` hook that puts a CutProxy process
// (test/cut-proxy-main.ts) in the lab's namespace between the guest and the endpoint — the guest
// dials OUTAGE_DIAL_PORT (runInLab's `dialPort`), the proxy forwards to the endpoint — and opens
// the card's control port (lab/card-control.ts) with words for the guest to say:
//   net-hold   a silent network (nothing moves, nothing is lost: a pulled cable)
//   net-cut    a broken one (every connection reset, new ones refused: a host that lost its route)
//   net-up     the network is back
//   net-cut-next-link
//              the network stays, until the first record the next kernel link carries from the
//              guest past its hello (pcinet.ko's first access to a device whose link came up):
//              then net-cut, before that record reaches the endpoint (in `events` as cut-at-link)
// the endpoint's lifecycle words (stop, start, restart, pause, resume), and `inject SPEC` (a fault
// injected through the endpoint's control socket, as `pcinet inject` does; endpoint/faults.ts).
// `events` records when each was carried out.
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startCardControl } from '../lab/card-control.js';
import { LAB_ENDPOINT_PORT } from '../lab/commands.js';
import { repoRoot } from '../lab/paths.js';
import type { LabAssets } from '../lab/prepare.js';
import { runOk } from '../lab/proc.js';
import { type LabCard, type LabResult, MAX_SLOWDOWN, runInLab } from '../lab/run.js';
import { ControlClient } from '../proto/control.js';

/** Where the guest dials: the proxy. Any free port of the lab's private namespace. */
export const OUTAGE_DIAL_PORT = 7471;
const PROXY_START_MS = 20_000;
const PROXY_ANSWER_MS = 10_000;

export interface NetworkEvent {
  word: string;
  at: number;
}

/** A card hook (runInLab's `card`) with the proxy and the control port; `events` fills as the
 *  guest speaks. `setup` runs first (e.g. addresses the card's TAP); what it returns runs at the
 *  end. */
export function networkControl(events: NetworkEvent[] = [], setup?: (card: LabCard) => Promise<() => void>) {
  return async (card: LabCard): Promise<() => Promise<void>> => {
    const undo = await setup?.(card);
    const main = join(repoRoot(), 'dist', 'test', 'cut-proxy-main.js');
    const [cmd, ...args] = card.wrap([
      process.execPath,
      main,
      String(OUTAGE_DIAL_PORT),
      String(LAB_ENDPOINT_PORT),
    ]);
    const proxy: ChildProcess = spawn(cmd!, args, { stdio: ['pipe', 'pipe', 'inherit'] });
    const waiting = new Map<string, () => void>();
    const lines = createInterface({ input: proxy.stdout! });
    const listening = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the outage proxy did not start')), PROXY_START_MS);
      proxy.once('exit', (code) => reject(new Error(`the outage proxy exited (${code})`)));
      lines.on('line', (l) => {
        if (l.startsWith('listening ')) {
          clearTimeout(timer);
          resolve();
        }
        const m = /^ok (\S+)$/.exec(l);
        if (m) waiting.get(m[1]!)?.();
        const fired = /^fired (\S+)$/.exec(l);
        if (fired) events.push({ word: fired[1]!, at: Date.now() });
      });
    });
    await listening;
    const tell = (word: string) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the proxy did not do ${word}`)), PROXY_ANSWER_MS);
        waiting.set(word, () => {
          clearTimeout(timer);
          waiting.delete(word);
          resolve();
        });
        proxy.stdin!.write(`${word}\n`);
      });
    const control = startCardControl(card, async (word) => {
      if (word === 'net-hold') await tell('hold');
      else if (word === 'net-cut') await tell('cut');
      else if (word === 'net-up') await tell('up');
      else if (word === 'net-cut-next-link') await tell('cut-next-link');
      else if (word.startsWith('inject ')) await inject(card.controlSocket, word.slice('inject '.length));
      else if (word === 'stop') await card.stopEndpoint();
      else if (word === 'start') await card.startEndpoint();
      else if (word === 'restart') await card.restartEndpoint();
      else if (word === 'pause') card.pauseEndpoint();
      else if (word === 'resume') card.resumeEndpoint();
      else throw new Error(`unknown command ${word}`);
      events.push({ word, at: Date.now() });
    });
    return async () => {
      control.kill('SIGTERM');
      proxy.kill('SIGTERM');
      undo?.();
    };
  };
}

/** Arms fault `spec` on the endpoint behind `socket` (its control socket). */
async function inject(socket: string, spec: string): Promise<void> {
  const c = await ControlClient.connect(socket);
  try {
    await c.request('inject', { spec });
  } finally {
    c.close();
  }
}

/** A `setup` for networkControl: the card's TAP (`tap`, made by the NIC's endpoint) given
 *  `address`/24 and up, and a TCP echo server on `address`:`port` for the guest's connections,
 *  which exits after `lifetimeMs` at the latest. */
export function echoCard(o: { tap: string; address: string; port: number; lifetimeMs: number }) {
  const server = `
require('node:net').createServer((c) => { c.on('error', () => {}); c.pipe(c); }).listen(${o.port}, '${o.address}');
setTimeout(() => process.exit(0), ${o.lifetimeMs});
`;
  return async (card: LabCard): Promise<() => void> => {
    await runOk(card.wrap(['ip', 'addr', 'add', `${o.address}/24`, 'dev', o.tap]));
    await runOk(card.wrap(['ip', 'link', 'set', o.tap, 'up']));
    const [cmd, ...args] = card.wrap([process.execPath, '-e', server]);
    const echo = spawn(cmd!, args, { stdio: 'ignore' });
    return () => echo.kill('SIGTERM');
  };
}

/**
 * One lab run of a pcinet NIC (virtio-net on the card's TAP `tap`) behind the outage proxy, with
 * echoCard serving `address`:`port` and the network words at the guest's disposal: the result, its
 * output for assertion messages (guest, stderr, host-agent log) and the network's events. Prints
 * the guest's output and the host-agent's warnings and link lines.
 */
export async function runNicOutage(o: {
  assets: LabAssets;
  tap: string;
  mac: string;
  address: string;
  port: number;
  command: string;
  timeoutMs: number;
  hostArgs?: string[];
}): Promise<{ r: LabResult; out: string; events: NetworkEvent[] }> {
  const events: NetworkEvent[] = [];
  const setup = echoCard({
    tap: o.tap,
    address: o.address,
    port: o.port,
    lifetimeMs: o.timeoutMs * MAX_SLOWDOWN,
  });
  const r = await runInLab({
    assets: o.assets,
    devices: [`virtio-net:tap=${o.tap},mac=${o.mac}`],
    dialPort: OUTAGE_DIAL_PORT,
    reconnect: true,
    hostArgs: o.hostArgs ?? [],
    command: o.command,
    timeoutMs: o.timeoutMs,
    card: networkControl(events, setup),
  });
  console.log(r.stdout);
  console.log(
    r.hostAgentLog
      .split('\n')
      .filter((l) => /"level":[45]0|link up|recovered|resumed|removing/.test(l))
      .join('\n'),
  );
  return { r, out: `${r.stdout}\n${r.stderr}\n${r.hostAgentLog}`, events };
}
