// Length-prefixed framing for byte streams (TCP, TLS): a 4-byte little-endian length, then that many
// bytes of an encoded Frame. The parser is a two-state machine that runs until it lacks bytes; the
// length is checked before anything is allocated, so a lying prefix costs nothing.
import assert from 'node:assert/strict';
import { PLACEABLE_HEAD, type PlacedFrame, type Placer, peekPlaceable } from './frame-place.js';
import { ErrorCode, MAX_FRAME_BYTES, ProtocolError } from './wire.js';

export const PREFIX_BYTES = 4;

/** What a socket reading into our buffers (net's `onread`) reads into between large frames. */
const SCRATCH_BYTES = 64 << 10;
/** A frame with at least this much still to come is read straight into its own buffer. */
const DIRECT_MIN = 16 << 10;
/** Between placed frames reads stop at a frame's prefix and head (frame-place.ts; PLACEABLE_HEAD
 *  bytes at most), so the data after them is read where it belongs, not into the scratch buffer. */
const PEEK_BYTES = PREFIX_BYTES + PLACEABLE_HEAD;

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
  /** Reading into our buffers: the reused scratch buffer, and the large frame being read straight
   *  into its own buffer (`have` bytes so far). */
  #scratch: Uint8Array | undefined;
  #direct: { frame: Uint8Array; have: number } | undefined;
  /** The frame whose data is being read into the place its placer gave (`have` bytes so far). */
  #placing: (PlacedFrame & { have: number }) | undefined;
  /** A placed frame whose data is all here: its tail (its further messages) is being collected,
   *  as the frame `#want` bytes long. */
  #tailOf: PlacedFrame | undefined;
  /** Asked where a placeable frame's data goes (frame-place.ts); only while reading into our
   *  buffers. */
  placer: Placer | undefined;
  /** The last frame was placed: read only as far as the next one's head (PEEK_BYTES). */
  #peek = false;

  /**
   * For a socket that reads into buffers we hand it (net's `onread`): where the next read goes.
   * While a large frame is being collected that is the rest of the frame's own buffer, or the
   * place its placer gave for its data, so the kernel copies its bytes to where they stay and
   * nothing here copies them again; otherwise a scratch buffer, whose bytes filled() copies out.
   * Call filled() after every read, and this after the frames it returned have been handled: a
   * large frame's place is asked for here, so its placer has seen every frame before it.
   */
  readBuffer(): Uint8Array {
    if (!this.#placing && !this.#direct && this.#want - this.#buffered >= DIRECT_MIN) this.#collect();
    if (this.#placing) return this.#placing.data.subarray(this.#placing.have);
    if (this.#direct) return this.#direct.frame.subarray(this.#direct.have);
    // A plain Uint8Array: its slice() copies (a Buffer's would be a view of the reused bytes).
    this.#scratch ??= new Uint8Array(SCRATCH_BYTES);
    return this.#peek ? this.#scratch.subarray(0, PEEK_BYTES) : this.#scratch;
  }

  /** `n` bytes were read into the buffer readBuffer() returned: the frames they complete (a placed
   *  one as its head and place). */
  filled(n: number): (Uint8Array | PlacedFrame)[] {
    const p = this.#placing;
    if (p) {
      p.have += n;
      if (p.have < p.data.length) return [];
      this.#placing = undefined;
      const { have: _, ...placed } = p;
      // Read small next: only the next frame's head, or a short tail and that head.
      this.#peek = p.head.tailLength < PEEK_BYTES;
      if (p.head.tailLength === 0) {
        this.#want = -1;
        return [placed];
      }
      // The tail is read as a frame of its own would be (a long one into a buffer of its own).
      this.#want = p.head.tailLength;
      this.#tailOf = placed;
      return [];
    }
    const d = this.#direct;
    if (d) {
      d.have += n;
      if (d.have < d.frame.length) return [];
      this.#direct = undefined;
      this.#want = -1;
      const tailOf = this.#tailOf;
      this.#tailOf = undefined;
      return [tailOf ? { ...tailOf, tail: d.frame } : d.frame];
    }
    // The scratch buffer is reused: keep a copy of what it holds.
    const out = this.#push(this.#scratch!.slice(0, n));
    // Anything but a large frame still to come (readBuffer() decides on it) or a short tail: reads
    // fill the scratch buffer again.
    if (this.#want - this.#buffered < DIRECT_MIN && !this.#tailOf) this.#peek = false;
    return out;
  }

  /** The large frame being collected (`#buffered` bytes of `#want` so far): placed if it can be,
   *  else read into a buffer of its own (`#direct`), or, still reading small, left for now. */
  #collect(): void {
    // A tail is not a frame: nothing to place in it.
    const placed = this.#tailOf ? 'no' : this.#place();
    if (placed === 'placed' || placed === 'head') return;
    this.#peek = false;
    const frame: Uint8Array = Buffer.allocUnsafeSlow(this.#want);
    let at = 0;
    for (const c of this.#chunks) {
      frame.set(c, at);
      at += c.length;
    }
    this.#chunks = [];
    this.#buffered = 0;
    this.#direct = { frame, have: at };
  }

  /** Whether the data of a frame not handed out yet is read, or is to be read, into `place`. */
  holds(place: Uint8Array): boolean {
    return this.#placing?.data === place || this.#tailOf?.data === place;
  }

  /** Adds bytes; returns the frames they complete, in order. Throws ProtocolError on a bad prefix. */
  push(chunk: Uint8Array): Uint8Array[] {
    // Nothing is placed unless reads go through readBuffer(): every frame is bytes.
    return this.#push(chunk) as Uint8Array[];
  }

  #push(chunk: Uint8Array): (Uint8Array | PlacedFrame)[] {
    const out: (Uint8Array | PlacedFrame)[] = [];
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
      const bytes = this.#take(this.#want);
      this.#want = -1;
      if (this.#tailOf) {
        out.push({ ...this.#tailOf, tail: bytes });
        this.#tailOf = undefined;
      } else out.push(bytes);
    }
    return out;
  }

  /** Bytes of an unfinished frame (a peer that closes mid-frame truncated it). */
  get pending(): number {
    const p = this.#placing;
    const t = this.#tailOf;
    return (
      this.#buffered +
      (this.#direct?.have ?? 0) +
      (p ? p.head.dataOffset + p.have : 0) +
      (t ? t.head.dataOffset + t.data.length : 0)
    );
  }

  /** A frame's data is being read into its placer's place. */
  get placing(): boolean {
    return this.#placing !== undefined;
  }

  /** Placer.place's `cancel` for `place`: the transport that owns this parser closes if the frame
   *  is still its own (holds(), or read and not handed over yet). */
  onCancel: (place: Uint8Array) => void = () => {};

  /** The frame being collected (`#buffered` bytes of `#want` so far) placed, if its head is all
   *  here, it is placeable and the placer gives a place: the data read so far is copied there and
   *  the rest will be read there ('placed'). 'head': reading small, the head is not all here yet. */
  #place(): 'placed' | 'head' | 'no' {
    if (!this.placer) return 'no';
    if (this.#peek && this.#buffered < PLACEABLE_HEAD) return 'head';
    const have = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#buffered);
    const head = peekPlaceable(have, this.#want);
    // Data all here already (a long tail still to come): nothing to gain.
    if (!head || head.dataOffset > have.length || have.length >= head.dataOffset + head.dataLength)
      return 'no';
    let data: Uint8Array | undefined;
    const cancel = () => {
      if (data) this.onCancel(data);
    };
    data = this.placer.place(head, cancel);
    if (!data) return 'no';
    assert(data.length === head.dataLength, 'framing: a place of the wrong size');
    const got = have.subarray(head.dataOffset);
    data.set(got);
    // A view: the chunks are this parser's own copies.
    const headBytes = have.subarray(0, head.dataOffset);
    this.#placing = { head, headBytes, data, length: this.#want, have: got.length };
    this.#chunks = [];
    this.#buffered = 0;
    return 'placed';
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
