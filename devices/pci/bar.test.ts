import { expect, describe as group, it } from 'vitest';
import { BarStorage, DIRTY_MERGE_GAP, MAX_DIRTY_RANGES } from './bar.js';

const ranges = (s: BarStorage) => s.takeDirty().map((d) => [d.offset, d.offset + d.data.length]);

group('BarStorage', () => {
  it('stores little-endian values and marks them dirty', () => {
    const s = new BarStorage(0, 0x100);
    s.set32(0x10, 0x11223344);
    s.set64(0x20, 0x0102030405060708n);
    expect(s.u32(0x10)).toBe(0x11223344);
    expect(s.u8(0x10)).toBe(0x44);
    expect(s.u64(0x20)).toBe(0x0102030405060708n);
    const d = s.takeDirty();
    expect(d.map((x) => [x.bar, x.offset, x.data.length])).toEqual([[0, 0x10, 0x18]]);
    expect(s.dirty).toBe(false);
  });

  it('coalesces overlapping, adjacent and nearby ranges, keeps distant ones apart', () => {
    const s = new BarStorage(0, 0x1000);
    s.markDirty(0x100, 4);
    s.markDirty(0x104, 4);
    s.markDirty(0x102, 4);
    s.markDirty(0x108 + DIRTY_MERGE_GAP, 4);
    s.markDirty(0x800, 4);
    s.markDirty(0x10, 1);
    expect(ranges(s)).toEqual([
      [0x10, 0x11],
      [0x100, 0x10c + DIRTY_MERGE_GAP],
      [0x800, 0x804],
    ]);
  });

  it('a range that covers several merges them all', () => {
    const s = new BarStorage(0, 0x1000);
    for (let i = 0; i < 10; i++) s.markDirty(i * 0x40, 4);
    s.markDirty(0x20, 0x100);
    expect(ranges(s)).toEqual([
      [0, 4],
      [0x20, 0x120],
      [0x140, 0x144],
      [0x180, 0x184],
      [0x1c0, 0x1c4],
      [0x200, 0x204],
      [0x240, 0x244],
    ]);
  });

  it('bounds the number of ranges by merging the closest', () => {
    const s = new BarStorage(0, 0x10000);
    for (let i = 0; i < MAX_DIRTY_RANGES + 10; i++) s.markDirty(i * 0x100, 1);
    const r = ranges(s);
    expect(r.length).toBe(MAX_DIRTY_RANGES);
    expect(r[0][0]).toBe(0);
    expect(r[r.length - 1][1]).toBe((MAX_DIRTY_RANGES + 9) * 0x100 + 1);
  });

  it('never marks unshadowed (volatile, host-owned) bytes, nor merges across them', () => {
    const s = new BarStorage(0, 0x100, [
      { offset: 0x40, length: 4 },
      { offset: 0x80, length: 0x10 },
    ]);
    s.markDirty(0x3c, 0x60);
    expect(ranges(s)).toEqual([
      [0x3c, 0x40],
      [0x44, 0x80],
      [0x90, 0x9c],
    ]);
    s.set32(0x40, 1);
    expect(s.dirty).toBe(false);
    s.markDirty(0x3c, 4);
    s.markDirty(0x44, 4);
    s.markDirty(0x48, 4);
    s.markDirty(0x7c, 4);
    s.markDirty(0x90, 4);
    expect(ranges(s)).toEqual([
      [0x3c, 0x40],
      [0x44, 0x4c],
      [0x7c, 0x80],
      [0x90, 0x94],
    ]);
    // Added in the other order, the left neighbour sits behind the wall.
    s.markDirty(0x90, 4);
    s.markDirty(0x7c, 4);
    s.markDirty(0x3c, 4);
    s.markDirty(0x44, 4);
    expect(ranges(s)).toEqual([
      [0x3c, 0x40],
      [0x44, 0x48],
      [0x7c, 0x80],
      [0x90, 0x94],
    ]);
  });

  it('load marks only the bytes that differ', () => {
    const s = new BarStorage(0, 0x100);
    const next = new Uint8Array(0x100);
    next[3] = 1;
    next[0xf0] = 2;
    next[0xf1] = 2;
    s.load(next);
    expect(ranges(s)).toEqual([
      [3, 4],
      [0xf0, 0xf2],
    ]);
    s.load(next);
    expect(s.dirty).toBe(false);
  });

  it('tells its listener once per change and refuses accesses outside', () => {
    const s = new BarStorage(0, 0x100);
    let n = 0;
    s.onDirty = () => n++;
    s.set8(1, 1);
    s.write(0x10, new Uint8Array(4));
    expect(n).toBe(2);
    expect(() => s.write(0xfe, new Uint8Array(4))).toThrow(RangeError);
    expect(() => s.read(-1, 1)).toThrow(RangeError);
  });
});
