// Every test file gets a control-socket directory of its own (proto/control.ts, PCINET_RUN_DIR):
// the pcinet processes its tests start take their default sockets there, not in /run/pcinet,
// where test files running side by side would find each other's.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-run-'));
process.env.PCINET_RUN_DIR = dir;
afterAll(() => rmSync(dir, { recursive: true, force: true }));
