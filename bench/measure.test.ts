import { describe, expect, it } from 'vitest';
import { measured, median, parseTiming, perEvent, roundOrder, table } from './measure.js';

describe('bench/measure', () => {
  it('median: middle value, mean of the middle two, NaN for none', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([])).toBeNaN();
  });

  it('table aligns columns, text left and figures right', () => {
    expect(
      table([
        ['a', 'bb'],
        ['ccc', '1'],
      ]),
    ).toBe('a    bb\nccc   1');
  });

  it("reads dd's summary and fio's terse line", () => {
    const dd = { tool: 'dd', rw: 'read', bs: 4096, unit: 'MB/s' } as const;
    expect(measured(dd, ['4096000 bytes (4.1 MB, 3.9 MiB) copied, 2 s, 2.0 MB/s'])).toEqual({
      value: 2.048,
      ios: 1000,
    });
    expect(measured(dd, ['dd: error reading'])).toBeUndefined();
    const f = Array(50).fill('0');
    f[0] = '3';
    [f[5], f[6], f[7]] = ['4000', '1000', '250'];
    expect(measured({ tool: 'fio', rw: 'randread', bs: 4096, unit: 'IOPS' }, [f.join(';')])).toEqual({
      value: 250,
      ios: 1000,
    });
  });

  it("per event between two readings of pcinet.ko's timing", () => {
    const a = parseTiming('rtt 1000000 10\nirq 500 1\nnot a line\n');
    const b = parseTiming('rtt 3000000 20\nirq 500 1\n');
    expect(perEvent(a, b, 'rtt')).toBe(200);
    expect(perEvent(a, b, 'irq')).toBeUndefined(); // nothing counted in between
    expect(perEvent(a, b, 'apply')).toBeUndefined();
  });

  it('alternates the order of values from round to round', () => {
    expect(roundOrder(['0', '1'], 0)).toEqual(['0', '1']);
    expect(roundOrder(['0', '1'], 1)).toEqual(['1', '0']);
  });
});
