import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { counterDelta, parseStats, statsShell } from './guest-stats.js';

const line = (counters: Record<string, number>) =>
  `{"level":30,"name":"host","counters":${JSON.stringify(counters)},"msg":"endpoint statistics"}`;

it('parses STATS lines by label and sums a counter’s change over the devices', () => {
  const out = [
    `STATS nic up before ${line({ 'dev1.dmaReads': 10, 'dev2.dmaReads': 5, 'dev1.virtio-net.txFrames': 3 })}`,
    'unrelated output',
    'NOSTATS nic down before',
    `STATS nic up after ${line({ 'dev1.dmaReads': 14, 'dev2.dmaReads': 6, 'dev1.virtio-net.txFrames': 103 })}`,
  ].join('\n');
  const s = parseStats(out);
  expect([...s.keys()]).toEqual(['nic up before', 'nic up after']);
  expect(counterDelta(s, 'nic up', 'dmaReads')).toBe(5);
  expect(counterDelta(s, 'nic up', 'virtio-net.txFrames')).toBe(100);
  expect(counterDelta(s, 'nic up', 'nothing')).toBeUndefined();
  expect(counterDelta(s, 'nic down', 'dmaReads')).toBeUndefined();
});

it('the shell side signals the host-agent and prints its next statistics line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pcinet-stats-'));
  const log = join(dir, 'ha.log');
  writeFileSync(log, `${line({ 'dev1.x': 1 })}\n`);
  writeFileSync(join(dir, 'next'), `${line({ 'dev1.x': 2 })}\n`);
  // A stand-in host-agent: on SIGUSR1 it appends a statistics line, as the real one does.
  const script = `${statsShell}
sh -c 'trap "cat ${join(dir, 'next')} >> ${log}" USR1; while :; do sleep 0.1; done' &
ha=$!
sleep 0.5
stats $ha ${log} phase after
kill $ha
`;
  const out = execFileSync('sh', ['-c', script], { encoding: 'utf8', timeout: 30_000 });
  expect(out).toMatch(/^STATS phase after /m);
  expect(parseStats(out).get('phase after')).toEqual({ 'dev1.x': 2 });
});
