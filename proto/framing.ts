// Length-prefixed framing for byte streams (TCP, TLS): a 4-byte little-endian length, then that many
// bytes of an encoded Frame. The parser is a two-state machine that runs until it lacks bytes; the
// length is checked before anything is allocated, so a lying prefix costs nothing.
import { ErrorCode, MAX_FRAME_BYTES, ProtocolError } from './wire.js';

export const PREFIX_BYTES = 4;

export function lengthPrefix(n: number): Uint8Array {
  const p = new Uint8Array(PREFIX_BYTES);
  new DataView(p.buffer).setUint32(0, n, true);
  return p;
}

export class FrameParser {
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  /** Length of the frame being collected, or -1 while reading the prefix. */
  #want = -1;

  /** Adds bytes; returns the frames they complete, in order. Throws ProtocolError on a bad prefix. */
  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (chunk.length === 0) return out;
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    for (;;) {
      if (this.#want < 0) {
        if (this.#buffered < PREFIX_BYTES) break;
        const p = this.#take(PREFIX_BYTES);
        const n = new DataView(p.buffer, p.byteOffset, PREFIX_BYTES).getUint32(0, true);
        if (n === 0) throw new ProtocolError(ErrorCode.BAD_LENGTH, 'zero-length frame');
        if (n > MAX_FRAME_BYTES) {
          throw new ProtocolError(ErrorCode.FRAME_TOO_LARGE, `length prefix ${n} (max ${MAX_FRAME_BYTES})`);
        }
        this.#want = n;
      }
      if (this.#buffered < this.#want) break;
      out.push(this.#take(this.#want));
      this.#want = -1;
    }
    return out;
  }

  /** Bytes of an unfinished frame (a peer that closes mid-frame truncated it). */
  get pending(): number {
    return this.#buffered;
  }

  #take(n: number): Uint8Array {
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      const r = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#buffered -= n;
      return r;
    }
    // Every byte is overwritten below: skip the zero fill (frames are up to 4 MiB).
    const r: Uint8Array = Buffer.allocUnsafeSlow(n);
    let at = 0;
    while (at < n) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length, n - at);
      r.set(c.subarray(0, k), at);
      at += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.#buffered -= n;
    return r;
  }
}
