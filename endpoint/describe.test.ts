import { expect, describe as group, it } from 'vitest';
import type { DeviceDescription } from '../devices/description.js';
import { TestDevice } from '../devices/test/device.js';
import { TEST_ERR } from '../devices/test/regs.js';
import { ErrorCode, pcinet, u64 } from '../proto/wire.js';
import { wireDescription } from './describe.js';
import { dmaFault } from './dma.js';

const desc = (): DeviceDescription => {
  const shadow = new Uint8Array(0x4000);
  shadow[4] = 7;
  return {
    model: 'x',
    config: new Uint8Array(256).fill(1),
    configWmask: new Uint8Array(256).fill(2),
    configW1cmask: new Uint8Array(256).fill(3),
    bars: [
      {
        index: 0,
        kind: 'mem64',
        prefetchable: false,
        size: 0x4000,
        shadow,
        volatile: [{ offset: 0x40, length: 4 }],
        doorbell: [{ offset: 0x44, length: 4 }],
      },
      {
        index: 2,
        kind: 'mem32',
        prefetchable: true,
        size: 0x1000,
        shadow: new Uint8Array(0x1000),
        volatile: [],
        doorbell: [],
      },
      {
        index: 3,
        kind: 'io',
        prefetchable: false,
        size: 0x20,
        shadow: new Uint8Array(0),
        volatile: [],
        doorbell: [],
      },
    ],
    msixVectors: 5,
  };
};

group('wireDescription', () => {
  it('carries config, masks, BAR kinds and sizes, trimmed shadows, ranges and the vector count', () => {
    const d = desc();
    const w = wireDescription(d);
    expect(w.model).toBe('x');
    expect(w.config).toEqual(d.config);
    expect(w.configWmask).toEqual(d.configWmask);
    expect(w.configW1cmask).toEqual(d.configW1cmask);
    expect(w.msixVectors).toBe(5);
    const [b0, b2, b3] = w.bars!;
    expect(b0.index).toBe(0);
    expect(b0.kind).toBe(pcinet.BarKind.BAR_MEM64);
    expect(u64(b0.size)).toBe(0x4000n);
    expect([...b0.shadow!]).toEqual([0, 0, 0, 0, 7]);
    expect(b0.volatile!.map((r) => [u64(r.offset), u64(r.length)])).toEqual([[0x40n, 4n]]);
    expect(b0.doorbell!.map((r) => [u64(r.offset), u64(r.length)])).toEqual([[0x44n, 4n]]);
    expect(b2.kind).toBe(pcinet.BarKind.BAR_MEM32);
    expect(b2.prefetchable).toBe(true);
    expect(b2.shadow!.length).toBe(0);
    expect(b3.kind).toBe(pcinet.BarKind.BAR_IO);
  });

  it('encodes as a valid DeviceDescription, and a device model’s does too', () => {
    for (const d of [desc(), new TestDevice().description]) {
      const bytes = pcinet.DeviceDescription.encode(wireDescription(d)).finish();
      const back = pcinet.DeviceDescription.decode(bytes);
      expect(back.model).toBe(d.model);
      expect(back.msixVectors).toBe(d.msixVectors);
      expect(new Uint8Array(back.config)).toEqual(d.config);
      expect(back.bars.map((b) => [b.index, u64(b.size)])).toEqual(
        d.bars.map((b) => [b.index, BigInt(b.size)]),
      );
    }
  });
});

group('device codes and the wire', () => {
  it('the test device reports ErrorCode numbers in ERROR', () => {
    expect(TEST_ERR).toEqual({
      OK: ErrorCode.OK,
      BAD_ARGUMENT: ErrorCode.BAD_ARGUMENT,
      DMA_FAULT: ErrorCode.DMA_FAULT,
    });
  });

  it('a refused DmaReadCpl is a refusal; a host shutting down abandons the read', () => {
    expect(dmaFault(ErrorCode.DMA_FAULT)).toBe('refused');
    expect(dmaFault(ErrorCode.BAD_ARGUMENT)).toBe('refused');
    expect(dmaFault(ErrorCode.SHUTDOWN)).toBe('shutdown');
  });
});
