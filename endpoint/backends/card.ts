// What this machine (the card) gives device models (devices/spec.ts CardBackends): storage from
// block.ts, TAP interfaces from tap.ts, entropy from node:crypto, recorded sessions from
// ../replay-trace.ts. Models ask; only this opens.
import { randomFillSync } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { BlockSource, CardBackends } from '../../devices/spec.js';
import { loadReplayTrace } from '../replay-trace.js';
import { FileBackend, MemoryBackend } from './block.js';
import { TapBackend } from './tap.js';

let temps = 0;

export const cardBackends: CardBackends = {
  block(src: BlockSource) {
    if ('path' in src) return FileBackend.open(src.path, { size: src.size });
    if ('mem' in src) return new MemoryBackend(src.mem);
    // A temporary file, unlinked at once so that it goes when the endpoint does.
    const tmp = `${tmpdir()}/pcinet-disk-${process.pid}-${Date.now()}-${temps++}.img`;
    const b = FileBackend.open(tmp, { size: src.temp });
    unlinkSync(tmp);
    return b;
  },
  tap: (name, o) => new TapBackend(name, o),
  // The kernel's CSPRNG (getrandom), as /dev/urandom on the card gives it.
  entropy: () => ({ fill: (buf) => void randomFillSync(buf) }),
  recording: (o) => loadReplayTrace(o.path, o.device),
};
