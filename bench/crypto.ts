// bench/crypto: what sealing a kernel link costs where it happens. The guest's kernel AEADs
// (AES-256-GCM, the sealed link's cipher, and ChaCha20-Poly1305 for comparison) through AF_ALG,
// side by side with the endpoint's side of the same work (Node's OpenSSL on this machine),
// per frame size the link uses. Under TCG the guest's numbers are the emulator's, not a CPU's:
// they bound what a sealed link can reach in the lab. Prints a table and writes an SVG chart (--chart
// FILE, default bench/results/crypto.svg); asserts nothing.
//
//   node dist/bench/crypto.js [--seconds 2] [--chart FILE]
import { createCipheriv, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { repoRoot } from '../lab/paths.js';
import { ensurePackages, prepareLab } from '../lab/prepare.js';
import { runInLab } from '../lab/run.js';
import { parseBenchArgs } from './args.js';
import { writeChart } from './chart.js';

/** Frame sizes: a 4K I/O's data, a 64 KiB record, a full 128 KiB I/O. */
const SIZES = [4096, 65536, 131072];
const GUEST_MODULES = [
  'algif_aead',
  'aesni_intel',
  'ghash-clmulni-intel',
  'chacha_x86_64',
  'poly1305_x86_64',
  'chacha20poly1305',
];

/** MB/s of sealing `size`-byte frames with Node (as the endpoint does), for about `seconds`. */
function nodeRate(cipher: 'aes-256-gcm' | 'chacha20-poly1305', size: number, seconds: number): number {
  const key = randomBytes(32);
  const iv = randomBytes(12);
  const data = randomBytes(size);
  const aad = Buffer.alloc(4);
  let n = 0;
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let now = start;
  while (now < end) {
    const c =
      cipher === 'aes-256-gcm'
        ? createCipheriv(cipher, key, iv)
        : createCipheriv(cipher, key, iv, { authTagLength: 16 });
    c.setAAD(aad);
    c.update(data);
    c.final();
    c.getAuthTag();
    n++;
    now = process.hrtime.bigint();
  }
  return (n * size) / (Number(now - start) / 1e9) / 1e6;
}

async function main(): Promise<void> {
  const args = parseBenchArgs('crypto', process.argv.slice(2), {
    seconds: { value: 2, range: '0.5..30', ok: (n) => n >= 0.5 && n <= 30 },
  });
  await ensurePackages(['python3'], (l) => console.error(`bench/crypto: ${l}`));
  const assets = await prepareLab({});
  const script = join(repoRoot(), 'bench', 'crypto-guest.py');
  const r = await runInLab({
    assets,
    pcinet: false,
    command: [
      ...GUEST_MODULES.map((m) => `modprobe ${m} || echo "bench/crypto: no module ${m}" >&2`),
      `python3 ${script} ${SIZES.join(',')} ${args.seconds}`,
    ].join('\n'),
    timeoutMs: (SIZES.length * 2 * args.seconds + 120) * 1000,
  });
  if (r.code !== 0) throw new Error(`bench/crypto: the guest failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  const guest = new Map<string, { driver: string; mbps: number }>();
  for (const line of r.stdout.split('\n')) {
    const m = /^AEAD (\S+) (\S+) (\d+) (\d+) ([\d.]+)$/.exec(line);
    if (m)
      guest.set(`${m[1]} ${m[3]}`, {
        driver: m[2]!,
        mbps: (Number(m[4]) * Number(m[3])) / Number(m[5]) / 1e6,
      });
  }
  const rows = [
    [
      'cipher',
      'frame',
      'guest kernel (TCG)',
      'µs per frame',
      'this machine (Node)',
      'µs per frame',
      'guest driver',
    ],
  ];
  const algos = [
    ['gcm(aes)', 'aes-256-gcm'],
    ['rfc7539(chacha20,poly1305)', 'chacha20-poly1305'],
  ] as const;
  const groups: { label: string; unit: string; values: (number | undefined)[] }[] = [];
  for (const [kernel, node] of algos) {
    for (const size of SIZES) {
      const g = guest.get(`${kernel} ${size}`);
      nodeRate(node, size, Math.min(0.5, args.seconds)); // warm-up: JIT and OpenSSL's first calls
      const n = nodeRate(node, size, args.seconds);
      groups.push({ label: `${node}, ${size / 1024} KiB`, unit: 'MB/s', values: [g?.mbps, n] });
      rows.push([
        node,
        `${size / 1024} KiB`,
        g ? `${g.mbps.toFixed(1)} MB/s` : '?',
        g ? (size / g.mbps).toFixed(0) : '?',
        `${n.toFixed(0)} MB/s`,
        (size / n).toFixed(1),
        g?.driver ?? '?',
      ]);
    }
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  console.log(`bench/crypto: sealing frames, ${args.seconds} s each; guest: QEMU TCG, ${assets.kver}`);
  for (const row of rows)
    console.log(
      row
        .map((cell, c) => (c < 2 || c === 6 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!)))
        .join('  '),
    );
  writeChart(args.chart, {
    title: 'Sealing a kernel link’s frames: the lab guest’s kernel against this machine’s Node',
    notes: [
      `guest: QEMU TCG, ${assets.kver}, AF_ALG; this machine: Node ${process.versions.node} (OpenSSL); ${args.seconds} s per cell; ${new Date().toISOString().slice(0, 10)}`,
      args.log ? 'log scale, one axis for all rows' : 'one linear axis for all rows',
    ],
    series: ['guest kernel (TCG)', 'this machine (Node)'],
    groups,
    scale: args.log ? 'log' : 'linear',
  });
  console.log(`chart: ${args.chart}`);
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
