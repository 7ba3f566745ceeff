// A CutProxy as a process: `node dist/test/cut-proxy-main.js LISTEN_PORT TARGET_PORT` forwards
// 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT and takes commands on stdin, one a line, each
// answered with "ok WORD" on stdout once done:
//   hold     a silent network: nothing moves, nothing is lost (connections stay open)
//   cut      a broken one: every connection is reset and new ones are refused
//   up       the network is back (undoes hold and cut)
//   cut-next-link
//            arms a cut at a moment: the next kernel link's first record past its hello (pcinet.ko's
//            first access to a device whose link came up) is not forwarded, and the network is cut
//            as by `cut` instead; "fired cut-at-link" is printed then
// "listening PORT" is printed first. The lab runs it in its network namespace between the guest
// and the endpoint (test/e2e/outage.test.ts).
import { createInterface } from 'node:readline';
import { CutProxy } from './cut-proxy.js';

const [listen, target] = process.argv.slice(2).map(Number);
if (!listen || !target) {
  process.stderr.write('usage: cut-proxy-main LISTEN_PORT TARGET_PORT\n');
  process.exit(2);
}
const proxy = await CutProxy.start(target, '127.0.0.1', listen);
process.stdout.write(`listening ${proxy.port}\n`);
createInterface({ input: process.stdin }).on('line', (line) => {
  const word = line.trim();
  if (word === 'hold') proxy.hold(true);
  else if (word === 'cut') {
    proxy.refuse(true);
    proxy.cutAll();
  } else if (word === 'cut-next-link') proxy.cutNextLink(() => process.stdout.write('fired cut-at-link\n'));
  else if (word === 'up') {
    proxy.refuse(false);
    proxy.hold(false);
  } else {
    process.stdout.write(`unknown ${word}\n`);
    return;
  }
  process.stdout.write(`ok ${word}\n`);
});
process.stdin.on('end', () => process.exit(0));
