import { describe, expect, it } from 'vitest';
import { ipBytes } from './address.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('ipBytes', () => {
  it('IPv4: four bytes in network order', () => {
    expect(ipBytes('10.0.2.2')).toEqual({ family: 4, bytes: Uint8Array.of(10, 0, 2, 2) });
  });

  it('IPv6: full, compressed at either end or inside, with a dotted quad', () => {
    const six = (t: string) => {
      const r = ipBytes(t);
      expect(r.family).toBe(6);
      return hex(r.bytes);
    };
    expect(six('2001:db8:0:0:1:0:0:1')).toBe('20010db8000000000001000000000001');
    expect(six('::1')).toBe('00000000000000000000000000000001');
    expect(six('::')).toBe('00000000000000000000000000000000');
    expect(six('fe80::')).toBe('fe800000000000000000000000000000');
    expect(six('2001:db8::8a2e:370:7334')).toBe('20010db8000000000000' + '8a2e03707334');
    expect(six('::ffff:10.0.2.2')).toBe('00000000000000000000ffff0a000202');
    expect(six('64:ff9b::192.0.2.33')).toBe('0064ff9b0000000000000000c0000221');
  });

  it('refuses what is not an address', () => {
    expect(() => ipBytes('card.local')).toThrow(/not an IP address/);
    expect(() => ipBytes('1.2.3')).toThrow(/not an IP address/);
  });
});
