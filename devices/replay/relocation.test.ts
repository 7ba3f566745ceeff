import { describe, expect, it } from 'vitest';
import { leBytes, rd64 } from '../pci/le.js';
import { Relocation } from './relocation.js';

// The recorded device used: a ring at 0xfffff000 (one page), a buffer run of two pages at
// 0xffffd000..0xffffefff, and a page far away at 0x10000000.
const used: [bigint, number][] = [
  [0xfffff000n, 1024],
  [0xfffff4c0n, 8],
  [0xffffd010n, 0x1ff0],
  [0x1000_0000n, 16],
];

describe('Relocation', () => {
  it('calls a value an address when it lies in a page the recorded device used', () => {
    const r = new Relocation(used);
    expect(r.pages).toBe(4);
    expect(r.addressLike(0xfffff000n)).toBe(true);
    expect(r.addressLike(0xfffff6c4n)).toBe(true); // same page, never touched itself
    expect(r.addressLike(0xffffe910n)).toBe(true);
    expect(r.addressLike(0xffffc000n)).toBe(false);
    expect(r.addressLike(0x40n)).toBe(false);
    expect(r.addressLike(0n)).toBe(false);
  });

  it('translates through the learned base nearest below, within one run of used pages', () => {
    const r = new Relocation(used);
    expect(r.translate(0xfffff4c4n, 8)).toBeUndefined(); // nothing learned yet
    r.learn(0xfffff000n, 0xabcd000n);
    r.learn(0xfffff4c0n, 0xabcd8c0n);
    expect(r.translate(0xfffff010n, 16)).toBe(0xabcd010n);
    expect(r.translate(0xfffff4c4n, 8)).toBe(0xabcd8c4n); // the used ring's own base, not the table's
    expect(r.translate(0xfffff6c4n, 2)).toBe(0xabcdac4n);
    // A buffer at another offset in its page: learned exactly, and the run reaches the next page.
    r.learn(0xffffdf10n, 0x5000910n);
    expect(r.translate(0xffffdf10n, 64)).toBe(0x5000910n);
    expect(r.translate(0xffffe000n, 16)).toBe(0x5000a00n);
    // Below every base of its run, past its run, or across pages nobody used: no translation.
    expect(r.translate(0xffffd010n, 4)).toBeUndefined();
    expect(r.translate(0xfffffff0n, 32)).toBeUndefined();
    expect(r.translate(0x1000_0000n, 4)).toBeUndefined();
    r.learn(0x1000_0000n, 0x2000_0000n);
    expect(r.translate(0x1000_0008n, 8)).toBe(0x2000_0008n);
    // A reused recorded address follows its latest live one.
    r.learn(0xffffdf10n, 0x6000010n);
    expect(r.translate(0xffffdf20n, 4)).toBe(0x6000020n);
    expect(r.learned).toBe(4);
    r.clear();
    expect(r.translate(0xfffff010n, 16)).toBeUndefined();
  });

  it('learns from 64-bit and 32-bit address words and compares everything else', () => {
    const r = new Relocation(used);
    // A virtio descriptor: addr (64), len, flags, next.
    const desc = (addr: bigint, len: number) =>
      Uint8Array.of(...leBytes(addr, 8), ...leBytes(len, 4), 2, 0, 1, 0);
    expect(r.learnFrom(0xfffff000n, desc(0xffffef10n, 64), desc(0xffffe910n, 64))).toBe(-1);
    expect(r.translate(0xffffef10n, 64)).toBe(0xffffe910n);
    // The length differs: reported at its first byte.
    expect(r.learnFrom(0xfffff000n, desc(0xffffef10n, 64), desc(0xffffe910n, 32))).toBe(8);
    // An address where the live driver put a null pointer.
    expect(r.learnFrom(0xfffff000n, desc(0xffffef10n, 64), desc(0n, 64))).toBe(0);
    // 32-bit address words at 4-aligned places outside 64-bit ones (address in the high half).
    const w = Uint8Array.of(1, 2, 3, 4, ...leBytes(0xfffff400, 4));
    const l = Uint8Array.of(1, 2, 3, 4, ...leBytes(0x12345400, 4));
    expect(r.learnFrom(0x100n, w, l)).toBe(-1);
    expect(r.translate(0xfffff408n, 4)).toBe(0x12345408n);
    // Alignment follows the recorded address: at +4 the 64-bit word starts 4 bytes in.
    const x = Uint8Array.of(9, 9, 9, 9, ...leBytes(0xfffff4c0n, 8));
    const y = Uint8Array.of(9, 9, 9, 9, ...leBytes(0x777000c0n, 8));
    expect(r.learnFrom(0x104n, x, y)).toBe(-1);
    expect(r.translate(0xfffff4c2n, 2)).toBe(0x777000c2n);
    // Plain data must be equal.
    expect(r.learnFrom(0n, Uint8Array.of(1, 2, 3), Uint8Array.of(1, 2, 4))).toBe(2);
  });

  it('translates in register bytes only the words that echo a learned address, exactly', () => {
    const r = new Relocation(used);
    r.learn(0xfffff000n, 0x4000_0000n);
    const data = Uint8Array.of(
      ...leBytes(0xfffff000n, 8),
      ...leBytes(0xdeadbeefn, 8),
      ...leBytes(0xffffd020n, 8),
      ...leBytes(0xfffff010n, 8),
    );
    const out = r.translateData(0x20n, data);
    expect(rd64(out, 0)).toBe(0x4000_0000n);
    expect(rd64(out, 8)).toBe(0xdeadbeefn);
    expect(rd64(out, 16)).toBe(0xffffd020n); // an address without a translation stays
    // In a used page, even one with a translation, but not an address the host gave: a value
    // (a checksum, a count) that happens to look like one stays as recorded.
    expect(rd64(out, 24)).toBe(0xfffff010n);
    expect(rd64(data, 0)).toBe(0xfffff000n); // a copy
    const plain = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
    expect(r.translateData(0n, plain)).toBe(plain);
  });

  it('takes a recorded address given two live values in one snapshot as ambiguous, until one alone', () => {
    const r = new Relocation(used);
    r.learn(0xffffd000n, 0x5000_0000n);
    // A descriptor table whose entries 0 and 1 both hold 0xffffd100 in the recording: live, one
    // is a buffer of the driver's now, the other one it used before.
    const desc = (a: bigint, b: bigint) =>
      Uint8Array.of(...leBytes(a, 8), 0, 1, 0, 0, 2, 0, 0, 0, ...leBytes(b, 8), 0, 1, 0, 0, 2, 0, 0, 0);
    expect(r.learnFrom(0xfffff000n, desc(0xffffd100n, 0xffffd100n), desc(0x6000_0100n, 0x6000_0900n))).toBe(
      -1,
    );
    expect(r.translate(0xffffd100n, 64)).toBeUndefined();
    expect(r.translate(0xffffd140n, 4)).toBeUndefined(); // not through the base below either
    expect(r.translate(0xffffd010n, 4)).toBe(0x5000_0010n);
    expect(r.ambiguity(0xffffd140n)).toBe(
      'two: the live driver gave recorded 0xffffd100 as 0x60000100 and as 0x60000900 at once',
    );
    expect(r.ambiguity(0xffffd010n)).toBeUndefined();
    const echo = Uint8Array.of(...leBytes(0xffffd100n, 8));
    expect(r.ambiguousEcho(0n, echo)).toBe(0xffffd100n);
    expect(r.translateData(0n, echo)).toBe(echo);
    // The same live value twice is no ambiguity; a later snapshot that says it alone settles it.
    expect(r.learnFrom(0xfffff000n, desc(0xffffd100n, 0xffffd100n), desc(0x6000_0900n, 0x6000_0900n))).toBe(
      -1,
    );
    expect(r.translate(0xffffd104n, 4)).toBe(0x6000_0904n);
    expect(r.ambiguousEcho(0n, echo)).toBeUndefined();
  });
});
