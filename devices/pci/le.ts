// Little-endian field access on byte arrays, and named bit fields inside register values. PCI config
// space and every register map we implement are little-endian (PCI Local Bus Spec 3.0 §6.1).

export function rd8(b: Uint8Array, off: number): number {
  return b[off];
}

export function rd16(b: Uint8Array, off: number): number {
  return b[off] | (b[off + 1] << 8);
}

export function rd32(b: Uint8Array, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}

/** The u64 of two 32-bit halves: below 2^53 (the high half up to 0x1fffff) one bigint from an
 *  exact double, not the four of shifting and or-ing. */
export function u64Of32(hi: number, lo: number): bigint {
  return hi <= 0x1f_ffff ? BigInt(hi * 0x1_0000_0000 + lo) : (BigInt(hi) << 32n) | BigInt(lo);
}

export function rd64(b: Uint8Array, off: number): bigint {
  return u64Of32(rd32(b, off + 4), rd32(b, off));
}

export function wr8(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
}

export function wr16(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
}

export function wr32(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = (v >>> 16) & 0xff;
  b[off + 3] = (v >>> 24) & 0xff;
}

export function wr64(b: Uint8Array, off: number, v: bigint): void {
  const u = BigInt.asUintN(64, v);
  wr32(b, off, Number(u & 0xffffffffn));
  wr32(b, off + 4, Number(u >> 32n));
}

/** A value of `size` bytes (1, 2, 4 or 8) at `off`: number for up to 4 bytes, bigint for 8. */
export function rdN(b: Uint8Array, off: number, size: number): number | bigint {
  switch (size) {
    case 1:
      return rd8(b, off);
    case 2:
      return rd16(b, off);
    case 4:
      return rd32(b, off);
    case 8:
      return rd64(b, off);
    default:
      throw new RangeError(`rdN: size ${size} is not 1, 2, 4 or 8`);
  }
}

export function wrN(b: Uint8Array, off: number, size: number, v: number | bigint): void {
  switch (size) {
    case 1:
      wr8(b, off, Number(v));
      break;
    case 2:
      wr16(b, off, Number(v));
      break;
    case 4:
      wr32(b, off, Number(BigInt.asUintN(32, BigInt(v))));
      break;
    case 8:
      wr64(b, off, BigInt(v));
      break;
    default:
      throw new RangeError(`wrN: size ${size} is not 1, 2, 4 or 8`);
  }
}

/** `size` bytes holding `v` little-endian. */
export function leBytes(v: number | bigint, size: number): Uint8Array {
  const out = new Uint8Array(size);
  wrN(out, 0, size, v);
  return out;
}

/** A bit field of a register of up to 32 bits: `CC.EN.get(v)`, `CC.EN.set(v, 1)`. */
export interface Bits {
  readonly shift: number;
  readonly width: number;
  /** The field's bits in place. */
  readonly mask: number;
  get(v: number): number;
  /** `v` with the field replaced by `field`. */
  set(v: number, field: number): number;
}

export function bits(shift: number, width: number): Bits {
  if (shift < 0 || width < 1 || shift + width > 32) throw new RangeError(`bits(${shift}, ${width})`);
  const low = width === 32 ? 0xffffffff : (1 << width) - 1;
  const mask = (low << shift) >>> 0;
  return {
    shift,
    width,
    mask,
    get: (v) => ((v >>> shift) & low) >>> 0,
    set: (v, field) => ((v & ~mask) | ((field & low) << shift)) >>> 0,
  };
}

/** Hex dump in `lspci -x` layout: "00: 63 70 01 00 …", 16 bytes a line. */
export function hexDump(b: Uint8Array, len = b.length): string {
  const lines: string[] = [];
  for (let off = 0; off < len; off += 16) {
    const row = Array.from(b.subarray(off, Math.min(off + 16, len)), (x) => x.toString(16).padStart(2, '0'));
    lines.push(`${off.toString(16).padStart(len > 256 ? 3 : 2, '0')}: ${row.join(' ')}`);
  }
  return `${lines.join('\n')}\n`;
}
