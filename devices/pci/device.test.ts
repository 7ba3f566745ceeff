import { expect, describe as group, it } from 'vitest';
import { msixCap } from './caps.js';
import { PCI_COMMAND, pciConfig } from './config.js';
import { PciDevice } from './device.js';
import { FakeBus } from './fake-host.js';
import { leBytes } from './le.js';
import { registers } from './registers.js';

type Seen = [string, number | bigint, number | bigint];

const toyRegs = registers<Toy>([
  { name: 'ID', at: 0x00, size: 4, access: 'ro', reset: 0x1234 },
  {
    name: 'CTRL',
    at: 0x04,
    size: 4,
    access: 'rw',
    mask: 0xffff,
    onWrite: (c, v, o) => c.seen.push(['CTRL', v, o]),
  },
  { name: 'STS', at: 0x08, size: 4, access: 'rw1c', reset: 0xf0f0, mask: 0xff00 },
  { name: 'ADDR', at: 0x10, size: 8, access: 'rw', onWrite: (c, v, o) => c.seen.push(['ADDR', v, o]) },
  {
    name: 'KICK',
    at: 0x18,
    size: 4,
    access: 'wo',
    doorbell: true,
    onWrite: (c, v, o) => c.seen.push(['KICK', v, o]),
  },
  { name: 'TICK', at: 0x1c, size: 4, access: 'ro', volatile: true, onRead: (_c, n) => n + 1 },
  { name: 'LOCKED', at: 0x20, size: 4, access: 'rw', guard: (c, name) => c.allow(name) },
  { name: 'BYTE', at: 0x24, size: 1, access: 'rw' },
  { name: 'SIZE', at: 0x28, size: 4, access: 'ro' },
]);

class Toy extends PciDevice<Toy> {
  seen: Seen[] = [];
  locked = false;
  resets = 0;

  constructor(size = 0x40) {
    super({
      model: 'toy',
      config: pciConfig({
        vendorId: 0x7063,
        deviceId: 0xfffe,
        classCode: 0xff0000,
        bars: [
          { index: 0, kind: 'mem32', size: 0x1000 },
          { index: 1, kind: 'mem32', size: 0x100 },
        ],
        caps: [msixCap({ vectors: 4, bar: 0, table: 0x800, pba: 0x900 })],
      }),
      bars: [
        { index: 0, registers: toyRegs, reset: { SIZE: size } },
        { index: 1, memory: [{ offset: 0, length: 0x100 }] },
      ],
    });
  }

  allow(name: string): boolean {
    if (this.locked) this.trace('toy.locked', { reg: name });
    return !this.locked;
  }

  protected override onReset(): void {
    this.resets++;
  }

  /** Async work: a register change outside any host access. */
  later(v: number): void {
    this.bar(0).set32(0x28, v);
  }
}

function world() {
  const dev = new Toy();
  const bus = new FakeBus(dev);
  return { dev, bus, host: bus.host };
}

group('PciDevice', () => {
  it('describes power-on contents, instance reset values, volatile and doorbell ranges', () => {
    const d = new Toy(0x77).description;
    const b0 = d.bars[0];
    expect(d.model).toBe('toy');
    expect([...b0.shadow.subarray(0, 4)]).toEqual([0x34, 0x12, 0, 0]);
    expect(b0.shadow[0x28]).toBe(0x77);
    expect(b0.volatile).toEqual([{ offset: 0x1c, length: 4 }]);
    expect(b0.doorbell).toEqual([{ offset: 0x18, length: 4 }]);
    expect(d.msixVectors).toBe(4);
  });

  it('rw stores masked bits, merges partial writes and calls onWrite with new and old', () => {
    const { dev, bus } = world();
    bus.write32(0, 0x04, 0xabcd1234);
    expect(bus.read32(0, 0x04)).toBe(0x1234);
    bus.write(0, 0x05, new Uint8Array([0x99]));
    expect(bus.read32(0, 0x04)).toBe(0x9934);
    expect(dev.seen).toEqual([
      ['CTRL', 0x1234, 0],
      ['CTRL', 0x9934, 0x1234],
    ]);
  });

  it('a 64-bit register takes one 8-byte write or two 4-byte halves', () => {
    const { dev, bus } = world();
    bus.write64(0, 0x10, 0x1122334455667788n);
    expect(bus.read64(0, 0x10)).toBe(0x1122334455667788n);
    bus.write32(0, 0x14, 0xdeadbeef);
    expect(bus.read64(0, 0x10)).toBe(0xdeadbeef55667788n);
    expect(dev.seen.at(-1)).toEqual(['ADDR', 0xdeadbeef55667788n, 0x1122334455667788n]);
  });

  it('ro writes are traced as pci.mmio.ro-write and change nothing', () => {
    const { bus, host } = world();
    bus.write32(0, 0x00, 0xffffffff);
    expect(bus.read32(0, 0x00)).toBe(0x1234);
    expect(host.traces).toEqual([
      { event: 'pci.mmio.ro-write', fields: { bar: 0, reg: 'ID', offset: '0x0', value: '0xffffffff' } },
    ]);
  });

  it('rw1c clears written 1s within its mask only', () => {
    const { bus } = world();
    bus.write32(0, 0x08, 0x1010);
    expect(bus.read32(0, 0x08)).toBe(0xe0f0);
    bus.write(0, 0x08, new Uint8Array([0xff]));
    expect(bus.read32(0, 0x08)).toBe(0xe0f0);
    bus.write(0, 0x09, new Uint8Array([0xff]));
    expect(bus.read32(0, 0x08)).toBe(0x00f0);
  });

  it('a write-only doorbell is not stored and leaves nothing dirty', () => {
    const { dev, bus } = world();
    dev.mmioWrite(0, 0x18, leBytes(7, 4));
    expect(dev.seen).toEqual([['KICK', 7, 0]]);
    expect(dev.takeDirty()).toEqual([]);
    expect(bus.read32(0, 0x18)).toBe(0);
  });

  it('volatile registers compute on read and are never pushed', () => {
    const { dev, bus } = world();
    expect(bus.read32(0, 0x1c)).toBe(1);
    expect(bus.read32(0, 0x1c)).toBe(2);
    expect(dev.takeDirty()).toEqual([]);
    expect(bus.shadows.get(0)![0x1c]).toBe(0);
  });

  it.each([
    ['pci.mmio.misaligned', 0x05, 2, { bar: 0, offset: '0x5', len: 2, reg: 'CTRL' }],
    ['pci.mmio.misaligned', 0x12, 4, { bar: 0, offset: '0x12', len: 4, reg: 'ADDR' }],
    ['pci.mmio.oversized', 0x04, 8, { bar: 0, offset: '0x4', len: 8, reg: 'CTRL' }],
    ['pci.mmio.oversized', 0x04, 3, { bar: 0, offset: '0x4', len: 3, reg: 'CTRL' }],
    ['pci.mmio.oversized', 0x00, 32, { bar: 0, offset: '0x0', len: 32, reg: 'ID' }],
    ['pci.mmio.unmapped', 0x40, 4, { bar: 0, offset: '0x40', len: 4 }],
    ['pci.mmio.host-owned', 0x800, 4, { bar: 0, offset: '0x800', len: 4 }],
    ['pci.mmio.outside-bar', 0xffe, 4, { bar: 0, offset: '0xffe', len: 4 }],
  ] as const)('traces %s (offset %s, %s bytes) and survives', (event, offset, len, fields) => {
    const { dev, bus, host } = world();
    const before = bus.shadows.get(0)!.slice();
    dev.mmioWrite(0, offset, new Uint8Array(len).fill(0xee));
    bus.sync();
    expect(host.traces).toEqual([{ event, fields }]);
    expect(bus.shadows.get(0)).toEqual(before);
    expect(dev.seen).toEqual([]);
  });

  it('a dropped write re-pushes its bytes (the shadow is right even if the host guessed), except host-owned', () => {
    const { dev } = world();
    dev.mmioWrite(0, 0x40, leBytes(1, 4));
    expect(dev.takeDirty().map((d) => [d.offset, d.data.length])).toEqual([[0x40, 4]]);
    dev.mmioWrite(0, 0x800, leBytes(1, 4));
    expect(dev.takeDirty()).toEqual([]);
  });

  it('a guard refuses a write and the register keeps its value', () => {
    const { dev, bus, host } = world();
    bus.write32(0, 0x20, 5);
    dev.locked = true;
    bus.write32(0, 0x20, 6);
    expect(bus.read32(0, 0x20)).toBe(5);
    expect(host.traced('toy.locked')).toBe(1);
  });

  it('plain memory takes writes of any size, pushed back to the shadow', () => {
    const { dev, bus } = world();
    const data = Uint8Array.from({ length: 100 }, (_, i) => i);
    dev.mmioWrite(1, 3, data);
    expect(dev.takeDirty().map((d) => [d.bar, d.offset, d.data.length])).toEqual([[1, 3, 100]]);
    bus.write(1, 3, data);
    expect(bus.read(1, 3, 100)).toEqual(data);
  });

  it('reset returns registers to power-on values, pushing only what changed', () => {
    const { dev, bus } = world();
    bus.write32(0, 0x04, 0x55);
    bus.write(0, 0x24, new Uint8Array([9]));
    bus.write(1, 0x10, new Uint8Array([1, 2]));
    const resets = dev.resets;
    dev.reset();
    expect(dev.resets).toBe(resets + 1);
    expect(dev.takeDirty().map((d) => [d.bar, d.offset, [...d.data]])).toEqual([
      [0, 0x04, [0]],
      [0, 0x24, [0]],
      [1, 0x10, [0, 0]],
    ]);
  });

  it('attach powers on with nothing dirty; detach resets and cuts the host off', () => {
    const { dev, bus, host } = world();
    expect(dev.attached).toBe(true);
    expect(dev.takeDirty()).toEqual([]);
    bus.write32(0, 0x04, 0x55);
    dev.detach();
    expect(dev.attached).toBe(false);
    expect(dev.takeDirty()).toEqual([]);
    dev.later(3);
    dev.mmioWrite(0, 0, leBytes(1, 4));
    expect(host.traces).toEqual([]);
  });

  it('changes outside a host access tell the host (changed)', () => {
    const { dev, bus, host } = world();
    const before = host.changes;
    dev.later(0x42);
    expect(host.changes).toBe(before + 1);
    bus.sync();
    expect(bus.read32(0, 0x28)).toBe(0x42);
  });

  it('config writes land in cfg; FLR-style reset restores it', () => {
    const { dev } = world();
    expect(dev.busMaster).toBe(false);
    dev.configWrite(PCI_COMMAND, 2, 0x0006);
    expect(dev.busMaster).toBe(true);
    dev.reset();
    expect(dev.busMaster).toBe(false);
  });
});

group('registers', () => {
  it.each([
    [
      'overlaps A',
      [
        { name: 'A', at: 0, size: 4, access: 'rw' },
        { name: 'B', at: 2, size: 2, access: 'rw' },
      ],
    ],
    ['not aligned', [{ name: 'A', at: 2, size: 4, access: 'rw' }]],
    ['size 3', [{ name: 'A', at: 0, size: 3, access: 'rw' }]],
    [
      'name used twice',
      [
        { name: 'A', at: 0, size: 4, access: 'rw' },
        { name: 'A', at: 4, size: 4, access: 'rw' },
      ],
    ],
    ['onRead without volatile', [{ name: 'A', at: 0, size: 4, access: 'ro', onRead: () => 0 }]],
    ['doorbell must be write-only', [{ name: 'A', at: 0, size: 4, access: 'rw', doorbell: true }]],
  ])('refuses a table where %s', (why, regs) => {
    expect(() => registers(regs as never)).toThrow(why);
  });
});
