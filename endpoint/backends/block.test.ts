// Block backends against the real file system: sparse creation, size checks, round trips, hole
// punching that really frees blocks, and the one-line errors a user sees.
import { mkdtempSync, rmSync, statfsSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockError, FileBackend, IN_PLACE_MAX, MemoryBackend, parseSize } from './block.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-block-'));
/** A tmpfs directory (Linux always has /dev/shm). */
const shm = mkdtempSync('/dev/shm/pcinet-block-');
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
});
const EXT4_MAGIC = 0xef53;

describe('FileBackend', () => {
  it('creates a sparse file of the given size and round-trips data', async () => {
    const path = join(dir, 'a.img');
    const b = FileBackend.open(path, { size: 8 << 20 });
    expect(b.size).toBe(8 << 20);
    expect(statSync(path).blocks * 512).toBeLessThan(1 << 20);
    const data = Uint8Array.from({ length: 10000 }, (_, i) => (i * 7) & 0xff);
    await b.write(4093, data);
    await b.flush();
    expect(await b.read(4093, 10000)).toEqual(data);
    expect(await b.read(0, 16)).toEqual(new Uint8Array(16));
    await b.close();
    // Opened again: same size, same bytes; a different size is refused.
    const again = FileBackend.open(path);
    expect(await again.read(4093, 10000)).toEqual(data);
    await again.close();
    expect(() => FileBackend.open(path, { size: 1 << 20 })).toThrow(/has 8388608 bytes, not size=1048576/);
  });

  it('discard punches holes: the allocated size shrinks and the range reads zeros', async () => {
    const path = join(dir, 'b.img');
    const b = FileBackend.open(path, { size: 4 << 20 });
    await b.write(0, new Uint8Array(4 << 20).fill(0xab));
    await b.flush();
    const full = statSync(path).blocks * 512;
    expect(full).toBeGreaterThanOrEqual(4 << 20);
    await b.discard(1 << 20, 2 << 20);
    expect(statSync(path).blocks * 512).toBeLessThanOrEqual(full - (2 << 20));
    expect(await b.read(1 << 20, 4096)).toEqual(new Uint8Array(4096));
    expect((await b.read(0, 1))[0]).toBe(0xab);
    await b.writeZeroes(0, 4096);
    expect(await b.read(0, 4096)).toEqual(new Uint8Array(4096));
    await b.close();
  });

  it('does I/O of a file in memory in place, and hands large I/O to the thread pool', async () => {
    const path = join(shm, 'm.img');
    const b = FileBackend.open(path, { size: 4 << 20 });
    const data = Uint8Array.from({ length: 10000 }, (_, i) => (i * 13) & 0xff);
    await b.write(4093, data);
    expect(await b.read(4093, 10000)).toEqual(data);
    expect(b.stats).toEqual({ inPlace: 2, pooled: 0, punchRefused: 0 });
    const big = new Uint8Array(IN_PLACE_MAX + 4096).fill(0x5a);
    await b.write(8192, big);
    expect(await b.read(8192, big.length)).toEqual(big);
    expect(b.stats).toEqual({ inPlace: 2, pooled: 2, punchRefused: 0 });
    // Shortened behind our back: past its end reads zeros, in place too.
    truncateSync(path, 8192);
    const past = await b.read(4096, 8192);
    expect(past.subarray(0, 4096)).toEqual(data.subarray(3, 4099));
    expect(past.subarray(4096)).toEqual(new Uint8Array(4096));
    await b.close();
  });

  it('reads what the page cache holds in place where the file system can say so (RWF_NOWAIT)', async () => {
    const b = FileBackend.open(join(dir, 'n.img'), { size: 1 << 20 });
    const data = Uint8Array.from({ length: 8192 }, (_, i) => (i * 5) & 0xff);
    await b.write(0, data); // a write to the page cache: the bytes are cached now
    expect(await b.read(0, 8192)).toEqual(data);
    expect(await b.read(16384, 4096)).toEqual(new Uint8Array(4096)); // a hole
    // ext4 (this project's machines) supports it for reads; other file systems may go to the pool,
    // and must still read the same bytes.
    if (statfsSync(dir).type === EXT4_MAGIC)
      expect(b.stats).toEqual({ inPlace: 2, pooled: 1, punchRefused: 0 });
    await b.close();
  });

  it('does at once (readNow, writeNow) what it would do in place, and says when it cannot', async () => {
    const m = FileBackend.open(join(shm, 'now.img'), { size: 4 << 20 });
    const data = Uint8Array.from({ length: 8192 }, (_, i) => (i * 11) & 0xff);
    expect(m.writeNow(4096, data)).toBe(true);
    expect(m.readNow(4096, 8192)).toEqual(data);
    expect(await m.read(4096, 8192)).toEqual(data);
    // Past IN_PLACE_MAX: the caller must wait for read() and write().
    expect(m.readNow(0, IN_PLACE_MAX + 4096)).toBeUndefined();
    expect(m.writeNow(0, new Uint8Array(IN_PLACE_MAX + 4096))).toBe(false);
    expect(() => m.readNow(4 << 20, 1)).toThrow(BlockError);
    expect(() => m.writeNow(4 << 20, Uint8Array.of(1))).toThrow(BlockError);
    expect(m.stats).toEqual({ inPlace: 3, pooled: 0, punchRefused: 0 });
    await m.close();
    // Not in memory: writes always wait; reads of what the page cache holds need not (where the
    // file system can say so), and the same bytes come either way.
    const f = FileBackend.open(join(dir, 'now.img'), { size: 1 << 20 });
    expect(f.writeNow(0, data)).toBe(false);
    await f.write(0, data);
    const now = f.readNow(0, 8192);
    if (now) expect(now).toEqual(data);
    if (statfsSync(dir).type === EXT4_MAGIC) expect(now).toBeDefined();
    await f.close();
    expect(() => f.readNow(0, 1)).toThrow(/closed/);
  });

  it('refuses what it cannot use, in one line', async () => {
    expect(() => FileBackend.open(join(dir, 'missing.img'))).toThrow(
      /does not exist \(give size= to create it\)/,
    );
    expect(() => FileBackend.open(dir)).toThrow(/neither a regular file nor a block device/);
    writeFileSync(join(dir, 'empty.img'), '');
    expect(() => FileBackend.open(join(dir, 'empty.img'))).toThrow(/is empty/);
    const b = FileBackend.open(join(dir, 'c.img'), { size: 4096 });
    await expect(b.read(4000, 200)).rejects.toThrow(BlockError);
    await b.close();
    await expect(b.read(0, 1)).rejects.toThrow(/closed/);
  });
});

describe('MemoryBackend and sizes', () => {
  it('keeps bytes in memory and checks bounds', async () => {
    const m = new MemoryBackend(1 << 16);
    await m.write(100, Uint8Array.of(1, 2, 3));
    expect(await m.read(99, 5)).toEqual(Uint8Array.of(0, 1, 2, 3, 0));
    await m.discard(100, 2);
    expect(await m.read(100, 3)).toEqual(Uint8Array.of(0, 0, 3));
    await expect(m.write(1 << 16, Uint8Array.of(1))).rejects.toThrow(/outside/);
    // At once, the same.
    expect(m.writeNow(200, Uint8Array.of(9))).toBe(true);
    expect(m.readNow(199, 3)).toEqual(Uint8Array.of(0, 9, 0));
    expect(() => m.readNow(1 << 16, 1)).toThrow(/outside/);
  });

  it('parses sizes with suffixes', () => {
    expect(parseSize('512')).toBe(512);
    expect(parseSize('64M')).toBe(64 << 20);
    expect(parseSize('2g')).toBe(2 * 1024 ** 3);
    expect(() => parseSize('12Q')).toThrow(/not a size/);
    expect(() => parseSize('0')).toThrow(/out of range/);
  });
});
