// The soft IOMMU's side of push rules (docs/PUSH.md "Bounds", "Unmapped"): a push reads through the
// device's read check without counting as a device access, and a mapping pushed from tells each
// function that pushed from it when the driver unmaps it.
import { describe, expect, it } from 'vitest';
import { PAGE, SimMemory, SoftIommu } from './iommu.js';

function world() {
  const memory = new SimMemory(1 << 20);
  const iommu = new SoftIommu(memory);
  return { memory, iommu };
}

describe('SoftIommu for push rules', () => {
  it('peeks what a device read would return, refuses what it would refuse, and counts nothing', () => {
    const { memory, iommu } = world();
    const buf = memory.alloc(2 * PAGE);
    buf.bytes.fill(7);
    const toDevice = iommu.map(buf, 'to-device', 100, 1000);
    const both = iommu.map(buf, 'bidirectional');
    const fromDevice = iommu.map(buf, 'from-device');
    const copy = iommu.peek(toDevice, 1000);
    expect(copy).toEqual(new Uint8Array(1000).fill(7));
    copy![0] = 9; // a copy, not a view of host memory
    expect(buf.bytes[100]).toBe(7);
    expect(iommu.peek(both + 8000n, 192)).toHaveLength(192);
    expect(iommu.peek(toDevice, 1001)).toBeUndefined(); // one byte past the mapping
    expect(iommu.peek(toDevice - 1n, 2)).toBeUndefined();
    expect(iommu.peek(fromDevice, 16)).toBeUndefined(); // the device may only write it
    expect(iommu.peek(toDevice, 0)).toBeUndefined();
    iommu.unmap(both);
    expect(iommu.peek(both, 16)).toBeUndefined();
    expect(iommu.counters).toMatchObject({ readFaults: 0, readBytes: 0 });
    // The device's own read of the same memory is counted as before.
    expect(iommu.deviceRead(fromDevice, 16)).toBeUndefined();
    expect(iommu.counters.readFaults).toBe(1);
  });

  it('tells each watcher of a mapping pushed from, once, with the whole mapping, when it is unmapped', () => {
    const { memory, iommu } = world();
    const a = iommu.map(memory.alloc(PAGE), 'to-device', 16, 256);
    const b = iommu.map(memory.alloc(PAGE), 'to-device');
    const c = iommu.map(memory.alloc(PAGE), 'to-device');
    const heard: string[] = [];
    const one = (iova: bigint, len: number) => heard.push(`one ${iova - a} ${len}`);
    const two = (iova: bigint, len: number) => heard.push(`two ${iova - a} ${len}`);
    iommu.markPushed(a + 10n, 20, one);
    iommu.markPushed(a + 100n, 20, one); // twice from one mapping: still one drop
    iommu.markPushed(a, 256, two);
    iommu.markPushed(b, 64, two);
    iommu.forgetPushes(two); // a function reset: its pushes are forgotten by the endpoint
    iommu.markPushed(b, 64, two);
    iommu.unmap(c); // never pushed from
    expect(heard).toEqual([]);
    iommu.unmap(a);
    expect(heard).toEqual(['one 0 256']);
    iommu.unmap(b);
    expect(heard).toEqual(['one 0 256', `two ${b - a} ${PAGE}`]);
  });

  it('a device read is a copy of host memory, its own: later writes to host memory do not change it', () => {
    const { memory, iommu } = world();
    const buf = memory.alloc(2 * PAGE);
    for (let i = 0; i < buf.bytes.length; i++) buf.bytes[i] = i & 0xff;
    const at = iommu.map(buf, 'to-device');
    const got = iommu.deviceRead(at + 3n, PAGE)!;
    expect(Object.getPrototypeOf(got)).toBe(Uint8Array.prototype);
    expect(got.length).toBe(PAGE);
    expect(got.buffer.byteLength).toBe(PAGE);
    buf.bytes.fill(0);
    expect([...got.subarray(0, 4)]).toEqual([3, 4, 5, 6]);
    expect(got[PAGE - 1]).toBe((PAGE + 2) & 0xff);
    expect(iommu.counters.readBytes).toBe(PAGE);
  });
});

describe('SoftIommu places for device writes', () => {
  it('gives the host memory a write would land in, only where it would be allowed, and cancels it on unmap', () => {
    const { memory, iommu } = world();
    const buf = memory.alloc(2 * PAGE);
    const fromDevice = iommu.map(buf, 'from-device', 100, 1000);
    const toDevice = iommu.map(buf, 'to-device');
    const cancelled: string[] = [];
    const place = iommu.placeWrite(fromDevice + 10n, 90, () => cancelled.push('a'));
    expect(place?.buffer).toBe(memory.bytes.buffer);
    expect(place?.byteOffset).toBe(buf.addr + 110);
    expect(place).toHaveLength(90);
    expect(iommu.placeWrite(fromDevice, 1001, () => {})).toBeUndefined(); // past the mapping
    expect(iommu.placeWrite(toDevice, 16, () => {})).toBeUndefined(); // the device may only read it
    expect(iommu.placeWrite(fromDevice, 0, () => {})).toBeUndefined();
    // Applied where it is: counted, not copied; a place released is not cancelled.
    place!.fill(3);
    expect(iommu.deviceWrite(fromDevice + 10n, place!)).toBe(true);
    expect(iommu.counters).toMatchObject({
      placedWrites: 1,
      placedBytes: 90,
      writeBytes: 90,
      writeFaults: 0,
    });
    const released = () => cancelled.push('released');
    iommu.placeWrite(fromDevice, 16, released);
    iommu.releasePlace(released);
    iommu.unmap(fromDevice);
    expect(cancelled).toEqual(['a']);
    expect(iommu.counters.placesCancelled).toBe(1);
    expect(buf.bytes[110]).toBe(3);
  });
});

describe('SoftIommu read buffers', () => {
  it('copies long reads into buffers that come back when recycled; short ones into their own', () => {
    const { memory, iommu } = world();
    const buf = memory.alloc(128 << 10);
    buf.bytes.fill(1);
    const iova = iommu.map(buf, 'to-device');
    const a = iommu.deviceRead(iova, 100 << 10)!;
    const b = iommu.deviceRead(iova, 100 << 10)!;
    expect(a.buffer).not.toBe(b.buffer);
    iommu.recycle(a);
    buf.bytes.fill(2);
    const c = iommu.deviceRead(iova, 64 << 10)!;
    // a's buffer again, with what host memory holds now; b untouched.
    expect(c.buffer).toBe(a.buffer);
    expect(c.every((x) => x === 2)).toBe(true);
    expect(b.every((x) => x === 1)).toBe(true);
    expect(() => iommu.recycle(b) ?? iommu.recycle(b)).toThrow(/twice/);
    const small = iommu.deviceRead(iova, 4096)!;
    expect(small.buffer.byteLength).toBe(4096);
    iommu.recycle(small);
    expect(iommu.deviceRead(iova, 64 << 10)!.buffer).toBe(b.buffer);
  });
});

describe('SoftIommu lending device reads', () => {
  const CHUNK = 256 << 10;

  it('lends large reads of to-device mappings (host memory itself), copies the rest', () => {
    const { memory, iommu } = world();
    const buf = memory.alloc(CHUNK);
    buf.bytes.fill(3);
    const toDevice = iommu.map(buf, 'to-device');
    const both = iommu.map(buf, 'bidirectional');
    const lent = iommu.lendRead(toDevice, CHUNK);
    expect(lent).not.toBeInstanceOf(Uint8Array);
    const l = lent as Exclude<typeof lent, Uint8Array | undefined>;
    expect(l.bytes.buffer).toBe(memory.bytes.buffer);
    // A bidirectional mapping may be coherent memory the CPU writes while the device reads: a copy.
    const copied = iommu.lendRead(both, CHUNK);
    expect(copied).toBeInstanceOf(Uint8Array);
    expect((copied as Uint8Array).buffer).not.toBe(memory.bytes.buffer);
    // Small reads are copied too.
    expect(iommu.lendRead(toDevice, 4096)).toBeInstanceOf(Uint8Array);
    expect(iommu.counters).toMatchObject({ lentReads: 1, lentBytes: CHUNK, readBytes: 2 * CHUNK + 4096 });
    expect(iommu.loans).toBe(1);
    l.end();
    expect(iommu.loans).toBe(0);
  });

  for (const what of ['unmap', 'device write', 'placed device write'] as const) {
    it(`takes a loan back (a copy, its holder told) before a ${what} changes the memory`, () => {
      const { memory, iommu } = world();
      const buf = memory.alloc(CHUNK);
      buf.bytes.fill(3);
      const toDevice = iommu.map(buf, 'to-device');
      const fromDevice = iommu.map(buf, 'from-device');
      const l = iommu.lendRead(toDevice, CHUNK) as Exclude<
        ReturnType<SoftIommu['lendRead']>,
        Uint8Array | undefined
      >;
      const told: Uint8Array[] = [];
      l.onTakeBack = (lent) => told.push(lent);
      const view = l.bytes;
      if (what === 'unmap') {
        iommu.unmap(toDevice);
        buf.bytes.fill(9); // the driver reuses it
      } else if (what === 'device write') {
        expect(iommu.deviceWrite(fromDevice + 100n, new Uint8Array(10).fill(9))).toBe(true);
      } else {
        const place = iommu.placeWrite(fromDevice + 100n, 10, () => {})!;
        place.fill(9);
      }
      expect(told).toEqual([view]);
      expect(l.bytes).not.toBe(view);
      expect(l.bytes.every((x) => x === 3)).toBe(true);
      expect(iommu.counters.loansTakenBack).toBe(1);
      expect(iommu.loans).toBe(0);
    });
  }

  it('leaves loans over other memory alone, and settles one into a copy without telling its holder', () => {
    const { memory, iommu } = world();
    const a = memory.alloc(CHUNK);
    const b = memory.alloc(CHUNK);
    a.bytes.fill(1);
    const la = iommu.lendRead(iommu.map(a, 'to-device'), CHUNK) as Exclude<
      ReturnType<SoftIommu['lendRead']>,
      Uint8Array | undefined
    >;
    let told = 0;
    la.onTakeBack = () => told++;
    expect(iommu.deviceWrite(iommu.map(b, 'from-device'), new Uint8Array(CHUNK).fill(2))).toBe(true);
    expect(told).toBe(0);
    expect(la.bytes.buffer).toBe(memory.bytes.buffer);
    la.settle();
    expect(la.bytes.buffer).not.toBe(memory.bytes.buffer);
    a.bytes.fill(5);
    expect(la.bytes.every((x) => x === 1)).toBe(true);
    expect(told).toBe(0);
    expect(iommu.loans).toBe(0);
  });
});
