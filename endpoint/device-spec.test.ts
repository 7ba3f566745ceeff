import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, describe as group, it } from 'vitest';
import { MODELS } from '../devices/models.js';
import { NvmeController } from '../devices/nvme/controller.js';
import { TestDevice } from '../devices/test/device.js';
import type { VirtioBlk } from '../devices/virtio-blk/device.js';
import { defaultMac } from '../devices/virtio-net/device.js';
import { VirtioRng } from '../devices/virtio-rng/device.js';
import {
  DEVICES,
  type DeviceSpec,
  deviceHelp,
  deviceSpec,
  intOption,
  parseDeviceSpec,
  splitDeviceSpec,
} from './device-spec.js';

group('parseDeviceSpec', () => {
  it('builds the test device with default and given options', () => {
    const plain = parseDeviceSpec('test');
    expect(plain).toBeInstanceOf(TestDevice);
    expect((plain as TestDevice).vectors).toBe(8);
    expect((parseDeviceSpec('test:vectors=16') as TestDevice).vectors).toBe(16);
    expect((parseDeviceSpec('test:vectors=0x40') as TestDevice).vectors).toBe(64);
    expect(plain.description.msixVectors).toBe(8);
  });

  it('builds a new model each time', () => {
    expect(parseDeviceSpec('test')).not.toBe(parseDeviceSpec('test'));
  });

  it.each([
    ['', 'device "": empty spec'],
    ['toaster', 'device "toaster": unknown device "toaster" (known: '],
    ['Test', 'device "Test": "Test" is not a device name'],
    ['test:', `device "test:": nothing after ':'`],
    ['test:vectors', 'device "test:vectors": option "vectors" needs a value (vectors=...)'],
    ['test:vectors=', 'device "test:vectors=": option "vectors" has an empty value'],
    ['test:vectors=4,', 'device "test:vectors=4,": empty option'],
    ['test:vectors=4,vectors=5', 'device "test:vectors=4,vectors=5": option "vectors" given twice'],
    [
      'test:vectorz=4',
      'device "test:vectorz=4": test has no option "vectorz" (known: mem, mem32, prefetch, vectors)',
    ],
    ['test:vectors=65', 'device "test:vectors=65": vectors must be an integer 1..64, got "65"'],
    ['test:vectors=0', 'device "test:vectors=0": vectors must be an integer 1..64, got "0"'],
    ['test:vectors=8x', 'device "test:vectors=8x": vectors must be an integer 1..64, got "8x"'],
    ['test:mem=3M', 'device "test:mem=3M": mem must be a power of two from 4K to 256M, got "3M"'],
    ['test:mem32=yes', 'device "test:mem32=yes": mem32 must be on or off, got "yes"'],
    ['test:vectors=-1', 'device "test:vectors=-1": vectors must be an integer 1..64, got "-1"'],
    ['test:vectors=08', 'device "test:vectors=08": vectors must be an integer 1..64, got "08"'],
    ['test:=3', 'device "test:=3": "" is not an option name'],
    ['toString', 'device "toString": "toString" is not a device name'],
    ['constructor', 'device "constructor": unknown device "constructor"'],
  ])('refuses %j with one line', (spec, message) => {
    let err: Error | undefined;
    try {
      parseDeviceSpec(spec);
    } catch (e) {
      err = e as Error;
    }
    expect(err?.message.startsWith(message)).toBe(true);
    expect(err?.message).not.toContain('\n');
  });

  it('takes a registry, so other models can register', () => {
    const made: unknown[] = [];
    const registry: Record<string, DeviceSpec> = {
      fake: deviceSpec({
        name: 'fake',
        summary: 'a fake',
        options: { depth: intOption(1, 4, 'how deep') },
        create: (o) => {
          made.push(o);
          return new TestDevice();
        },
      }),
    };
    parseDeviceSpec('fake:depth=3', registry);
    expect(made).toEqual([{ depth: 3 }]);
    expect(() => parseDeviceSpec('test', registry)).toThrow('unknown device "test" (known: fake)');
    expect(deviceHelp(registry)).toBe('fake  a fake\n  fake:depth=1..4  how deep');
  });

  it('knows every model by its own name, and the help lists each with all its options', () => {
    expect(Object.keys(DEVICES).sort()).toEqual([
      'nvme',
      'replay',
      'test',
      'virtio-blk',
      'virtio-net',
      'virtio-rng',
    ]);
    const help = deviceHelp();
    for (const m of MODELS) {
      expect(DEVICES[m.name]).toBe(m);
      expect(help).toContain(`${m.name}  ${m.summary}`);
      for (const [key, o] of Object.entries(m.options))
        expect(help).toContain(`  ${m.name}:${key}=${o.syntax}  ${o.help}`);
    }
  });

  it('splits without knowing devices', () => {
    expect(splitDeviceSpec('virtio-net:mac=52:54:00:12:34:56,mtu=1500')).toEqual({
      name: 'virtio-net',
      options: new Map([
        ['mac', '52:54:00:12:34:56'],
        ['mtu', '1500'],
      ]),
    });
  });
});

group('virtio-net specs', () => {
  it('needs a TAP name and checks MAC and MTU', () => {
    expect(() => parseDeviceSpec('virtio-net')).toThrow('device "virtio-net": virtio-net needs tap=NAME');
    expect(() => parseDeviceSpec('virtio-net:tap=x,mac=01:00:00:00:00:01')).toThrow(
      'mac must be a unicast address',
    );
    expect(() => parseDeviceSpec('virtio-net:tap=x,mac=52:54')).toThrow('mac must be six hex bytes');
    expect(() => parseDeviceSpec('virtio-net:tap=x,mtu=20')).toThrow('mtu must be an integer 68..65535');
    expect(() => parseDeviceSpec('virtio-net:tap=way-too-long-name')).toThrow('is not 1..15 letters');
  });

  it('derives a stable locally administered MAC from the TAP name', () => {
    expect([...defaultMac('pcn0')]).toEqual([...defaultMac('pcn0')]);
    expect(defaultMac('pcn0')).not.toEqual(defaultMac('pcn1'));
    expect([...defaultMac('pcn0').subarray(0, 3)]).toEqual([0x52, 0x54, 0x00]);
  });
});

group('nvme specs', () => {
  it('builds a controller on memory, a temporary file, or a named file', async () => {
    const m = parseDeviceSpec(
      'nvme:mem=1M,serial=S1,model=My_Disk,fw=2.0,lba=4096,queues=2',
    ) as NvmeController;
    expect(m).toBeInstanceOf(NvmeController);
    expect([m.serial, m.modelName, m.firmware, m.lbaSize, m.blocks, m.maxQueues]).toEqual([
      'S1',
      'My Disk',
      '2.0',
      4096,
      256,
      2,
    ]);
    const t = parseDeviceSpec('nvme:size=64K') as NvmeController;
    expect(t.blocks).toBe(128);
    await t.backend.close();
    const dir = mkdtempSync(join(tmpdir(), 'pcinet-spec-'));
    try {
      const f = parseDeviceSpec(`nvme:file=${dir}/d.img,size=1M`) as NvmeController;
      expect(f.backend.name).toBe(`file ${dir}/d.img`);
      await f.backend.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says what is wrong, in one line', () => {
    expect(() => parseDeviceSpec('nvme')).toThrow(
      'device "nvme": nvme needs file=PATH[,size=SIZE], path=/dev/..., mem=SIZE or size=SIZE',
    );
    expect(() => parseDeviceSpec('nvme:file=disk.img,size=1M')).toThrow('file must be an absolute path');
    expect(() => parseDeviceSpec('nvme:mem=1M,lba=1024')).toThrow('lba must be 512 or 4096');
    expect(() => parseDeviceSpec('nvme:mem=1M,file=/x')).toThrow('give one of file=, path= and mem=');
    expect(() => parseDeviceSpec('nvme:mem=12X')).toThrow('mem "12X" is not a size');
    expect(() => parseDeviceSpec('nvme:file=/nonexistent/dir/d.img,size=1M')).toThrow(
      /device "nvme:file=\/nonexistent\/dir\/d\.img,size=1M": \/nonexistent\/dir\/d\.img: cannot open: ENOENT/,
    );
    expect(() => parseDeviceSpec('nvme:mem=1000')).toThrow('not a multiple of the 512-byte LBA');
  });
});

group('virtio-rng and virtio-blk specs', () => {
  it('virtio-rng takes no options and draws from the card', () => {
    const r = parseDeviceSpec('virtio-rng');
    expect(r).toBeInstanceOf(VirtioRng);
    expect(() => parseDeviceSpec('virtio-rng:rate=1')).toThrow(
      'virtio-rng has no option "rate" (it takes none)',
    );
  });

  it('virtio-blk takes the same storage options as nvme, and a serial', async () => {
    const b = parseDeviceSpec('virtio-blk:mem=1M,serial=VB_1') as VirtioBlk;
    expect([b.backend.size, b.backend.name, b.serial]).toEqual([1 << 20, 'memory', 'VB 1']);
    const t = parseDeviceSpec('virtio-blk:size=64K') as VirtioBlk;
    expect(t.backend.size).toBe(64 << 10);
    await t.backend.close();
    expect(() => parseDeviceSpec('virtio-blk')).toThrow(
      'device "virtio-blk": virtio-blk needs file=PATH[,size=SIZE], path=/dev/..., mem=SIZE or size=SIZE',
    );
    expect(() => parseDeviceSpec('virtio-blk:mem=1000')).toThrow('not a multiple of 512');
    expect(() => parseDeviceSpec('virtio-blk:mem=1M,serial=123456789012345678901')).toThrow(
      'serial must be 1..20 printable ASCII characters',
    );
  });
});
