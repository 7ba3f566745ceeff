// DmaReader on its own: chunking under tags, completions in any order, and what a model gets back.
import { describe, expect, it } from 'vitest';
import { DmaError } from '../devices/host-port.js';
import { ErrorCode, ProtocolError } from '../proto/wire.js';
import { DmaReader } from './dma.js';

function reader(maxTags = 4, chunk = 16) {
  const sent: { tag: number; iova: bigint; len: number }[] = [];
  const r = new DmaReader((tag, iova, len) => sent.push({ tag, iova, len }), maxTags, chunk);
  return { r, sent };
}

describe('DmaReader', () => {
  it('splits a read into chunks under a bounded number of tags and puts completions together in any order', async () => {
    const { r, sent } = reader(2, 16);
    const p = r.read(0x1000n, 40);
    expect(sent).toEqual([
      { tag: 0, iova: 0x1000n, len: 16 },
      { tag: 1, iova: 0x1010n, len: 16 },
    ]);
    r.complete(1, ErrorCode.OK, new Uint8Array(16).fill(2));
    expect(sent[2]).toEqual({ tag: 2, iova: 0x1020n, len: 8 });
    r.complete(2, ErrorCode.OK, new Uint8Array(8).fill(3));
    r.complete(0, ErrorCode.OK, Buffer.alloc(16, 1));
    const got = await p;
    // What models get everywhere: a plain Uint8Array (a Buffer's slice() would not copy).
    expect(Object.getPrototypeOf(got)).toBe(Uint8Array.prototype);
    expect([...got]).toEqual([...Array(16).fill(1), ...Array(16).fill(2), ...Array(8).fill(3)]);
  });

  it('resolves a one-chunk read with the completion bytes themselves, as a plain Uint8Array', async () => {
    const { r } = reader();
    const p = r.read(0x2000n, 12);
    const frame = Buffer.alloc(64, 7); // the completion's data is a view into a received frame
    r.complete(0, ErrorCode.OK, frame.subarray(20, 32));
    const got = await p;
    expect(Object.getPrototypeOf(got)).toBe(Uint8Array.prototype);
    expect(got.buffer).toBe(frame.buffer);
    expect(got.byteOffset).toBe(frame.byteOffset + 20);
    expect([...got]).toEqual(Array(12).fill(7));
  });

  it("puts a read into the model's own buffer when it gives one: chunks, a single chunk and places", async () => {
    const { r } = reader(4, 16);
    const into = new Uint8Array(48).fill(0xee);
    const p = r.read(0x3000n, 40, into);
    r.complete(1, ErrorCode.OK, new Uint8Array(16).fill(2));
    const place = r.place(2, 8)!; // the transport reads the last chunk straight into it
    expect(place.buffer).toBe(into.buffer);
    expect(place.byteOffset).toBe(into.byteOffset + 32);
    place.fill(3);
    r.complete(2, ErrorCode.OK, place);
    r.complete(0, ErrorCode.OK, new Uint8Array(16).fill(1));
    const got = await p;
    expect(got.buffer).toBe(into.buffer);
    expect(got.length).toBe(40);
    expect([...into]).toEqual([
      ...Array(16).fill(1),
      ...Array(16).fill(2),
      ...Array(8).fill(3),
      ...Array(8).fill(0xee),
    ]);

    // One chunk: copied into the buffer (the completion's frame is not the model's to keep), or
    // read straight into it through its place.
    const one = r.read(0x4000n, 12, into);
    const frame = Buffer.alloc(64, 7);
    r.complete(3, ErrorCode.OK, frame.subarray(20, 32));
    expect((await one).buffer).toBe(into.buffer);
    expect([...into.subarray(0, 12)]).toEqual(Array(12).fill(7));
    const placed = r.read(0x5000n, 12, into);
    const spot = r.place(4, 12)!;
    expect(spot.byteOffset).toBe(into.byteOffset);
    spot.fill(9);
    r.complete(4, ErrorCode.OK, spot);
    expect([...(await placed)]).toEqual(Array(12).fill(9));

    await expect(r.read(0x6000n, 49, into)).rejects.toThrow(RangeError);
  });

  it('fails a read on its first refused chunk and checks what the host says', async () => {
    const { r, sent } = reader(4, 16);
    const p = r.read(0x3000n, 48);
    r.complete(1, ErrorCode.DMA_FAULT, new Uint8Array(0));
    await expect(p).rejects.toBeInstanceOf(DmaError);
    expect(() => r.complete(9, ErrorCode.OK, new Uint8Array(16))).toThrow(ProtocolError);
    expect(() => r.complete(0, ErrorCode.OK, new Uint8Array(3))).toThrow(/3 bytes for a 16-byte read/);
    expect(sent).toHaveLength(3);
  });

  it('gives a chunk of a read of several its place in the read buffer, once, and takes it back without a copy', async () => {
    const { r } = reader(4, 16);
    const p = r.read(0x4000n, 40);
    const one = r.place(1, 16)!;
    expect(one.length).toBe(16);
    // Once per tag; never for the wrong length.
    expect(r.place(1, 16)).toBeUndefined();
    expect(r.place(0, 15)).toBeUndefined();
    // The transport reads the data there, then the completion comes with those very bytes.
    one.fill(2);
    r.complete(1, ErrorCode.OK, one);
    const zero = r.place(0, 16)!;
    expect(zero.buffer).toBe(one.buffer);
    zero.fill(1);
    r.complete(0, ErrorCode.OK, zero);
    // A completion that was not placed is copied in as before.
    r.complete(2, ErrorCode.OK, new Uint8Array(8).fill(3));
    const got = await p;
    expect(got.buffer).toBe(one.buffer);
    expect([...got]).toEqual([...Array(16).fill(1), ...Array(16).fill(2), ...Array(8).fill(3)]);
    // Done: nothing of it is placeable any more.
    expect(r.place(0, 16)).toBeUndefined();
    expect(r.place(1, 16)).toBeUndefined();
  });

  it("a place given and refused by a second frame keeps the first frame's bytes; a one-chunk read has no place", async () => {
    const { r } = reader(4, 16);
    expect(r.place(0, 12)).toBeUndefined();
    r.read(0x5000n, 12).catch(() => {});
    expect(r.place(0, 12)).toBeUndefined();
    const p = r.read(0x6000n, 32);
    const at = r.place(1, 16)!;
    at.fill(9);
    // A second frame for tag 1 (a peer's mistake) is decoded, not placed: its data is copied in
    // at its completion, and the tag's own completion then is one too many.
    expect(r.place(1, 16)).toBeUndefined();
    r.complete(1, ErrorCode.OK, at);
    expect(() => r.complete(1, ErrorCode.OK, new Uint8Array(16).fill(5))).toThrow(ProtocolError);
    r.complete(2, ErrorCode.OK, new Uint8Array(16).fill(4));
    expect([...(await p)]).toEqual([...Array(16).fill(9), ...Array(16).fill(4)]);
  });

  it('no place for a read that failed or was abandoned', async () => {
    const { r } = reader(4, 16);
    const p = r.read(0x7000n, 48);
    r.complete(0, ErrorCode.DMA_FAULT, new Uint8Array(0));
    await expect(p).rejects.toBeInstanceOf(DmaError);
    expect(r.place(1, 16)).toBeUndefined();
    const q = r.read(0x8000n, 48);
    r.close();
    await expect(q).rejects.toBeInstanceOf(DmaError);
    expect(r.place(3, 16)).toBeUndefined();
    expect(r.place(4, 16)).toBeUndefined();
  });
});
