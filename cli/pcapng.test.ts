import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { encodeRecord, LINKTYPE_PCINET, TF_TO_HOST } from '../proto/trace.js';
import { long } from '../proto/wire.js';
import { CaptureWriter, enhancedPacket, readCapture, sectionHeader } from './pcapng.js';

const dir = mkdtempSync(join(tmpdir(), 'pcinet-pcapng-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const record = (i: number) =>
  encodeRecord(
    { dmaWrite: { dev: 1, iova: long(i * 4096), data: new Uint8Array(1000).fill(i) } },
    TF_TO_HOST,
    1,
    256,
  );

describe('pcapng captures', () => {
  it('blocks as the pcapng specification lays them out', () => {
    const shb = sectionHeader('x');
    expect(shb.readUInt32LE(0)).toBe(0x0a0d0d0a);
    expect(shb.readUInt32LE(4)).toBe(shb.length);
    expect(shb.readUInt32LE(shb.length - 4)).toBe(shb.length);
    expect(shb.readUInt32LE(8)).toBe(0x1a2b3c4d);
    const epb = enhancedPacket(0x1_0000_0002, new Uint8Array([1, 2, 3]), 10);
    expect(epb.toString('hex')).toBe(
      '06000000' +
        '24000000' +
        '00000000' +
        '01000000' +
        '02000000' +
        '03000000' +
        '0a000000' +
        '01020300' +
        '24000000',
    );
  });

  it('one file stops at its size, keeping every record whole, with the drops in its statistics', () => {
    const path = join(dir, 'one.pcapng');
    const w = new CaptureWriter({ path, maxBytes: 8192, ring: 0, snaplen: 256, name: 'test' });
    let n = 0;
    while (w.write(1_700_000_000_000_000 + n, record(n))) n++;
    w.dropped = 3;
    w.close(1_700_000_000_000_000 + n);
    expect(statSync(path).size).toBeLessThanOrEqual(8192);
    const c = readCapture(path);
    expect(c.linktype).toBe(LINKTYPE_PCINET);
    expect(c.packets.length).toBe(n);
    expect(n).toBeGreaterThan(10);
    expect(c.packets[5]![0]).toBe(1_700_000_000_000_005);
    expect(Buffer.from(c.packets[5]![1]).equals(Buffer.from(record(5)))).toBe(true);
    expect(c.dropped).toBe(3);
  });

  it('a ring keeps the last N files, each within its size', () => {
    const path = join(dir, 'ring.pcapng');
    const w = new CaptureWriter({ path, maxBytes: 8192, ring: 3, snaplen: 256, name: 'test' });
    for (let i = 0; i < 200; i++) expect(w.write(i, record(i))).toBe(true);
    w.close(200);
    expect(w.files.length).toBe(3);
    expect(existsSync(join(dir, 'ring-00001.pcapng'))).toBe(false);
    const last = w.files.at(-1)!;
    expect(last).toMatch(/ring-\d{5}\.pcapng$/);
    for (const f of w.files) expect(statSync(f).size).toBeLessThanOrEqual(8192);
    // The newest file ends with the last record.
    const c = readCapture(last);
    expect(c.packets.at(-1)![0]).toBe(199);
    expect(readFileSync(last).subarray(0, 4).readUInt32LE(0)).toBe(0x0a0d0d0a);
  });
});
