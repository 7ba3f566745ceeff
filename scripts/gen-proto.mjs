// Compiles proto/pcinet.proto to static protobufjs code (proto/gen/), skipped when up to date.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';

const src = 'proto/pcinet.proto';
const js = 'proto/gen/pcinet.js';
const dts = 'proto/gen/pcinet.d.ts';
const fresh = (f) => existsSync(f) && statSync(f).mtimeMs >= statSync(src).mtimeMs;
if (fresh(js) && fresh(dts)) process.exit(0);
mkdirSync('proto/gen', { recursive: true });
const bin = 'node_modules/protobufjs-cli/bin';
execFileSync(
  process.execPath,
  [
    `${bin}/pbjs`,
    '-t',
    'static-module',
    '-w',
    'es6',
    '--es6',
    '--force-long',
    '--no-verify',
    '--no-convert',
    '--no-delimited',
    '--no-typeurl',
    '-o',
    js,
    src,
  ],
  { stdio: 'inherit' },
);
// Node's ESM loader needs the file extension, and protobufjs/minimal is CommonJS (default export).
const code = readFileSync(js, 'utf8').replace(
  'import * as $protobuf from "protobufjs/minimal";',
  'import $protobuf from "protobufjs/minimal.js";',
);
writeFileSync(js, code);
execFileSync(process.execPath, [`${bin}/pbts`, '-o', dts, js], { stdio: 'inherit' });
