// Placing a DMA read's data where it belongs while it is read (NVMe/TCP's C2HData lands in the
// command's buffer the same way): a frame that is one DmaReadCpl of OK status whose data runs to
// the frame's end is recognised from its first bytes, the receiver says where that data goes (the
// read's own buffer), and the socket reads it there. Nothing is put together or copied afterwards,
// and no frame-sized buffer is allocated for it.
//
// The frame's head is read strictly: every field in order, at most once, no other fields, so the
// frame it stands for decodes to exactly what peekPlaceable returns. Anything else (another shape,
// a long varint, a refused read) is left to the ordinary decoder, which checks everything: a hostile
// frame is never placed, only decoded.
import { pcinet } from './wire.js';

/** A placeable frame's head: everything in the frame but the data. */
export interface PlaceableHead {
  seq: number;
  ack: number;
  dev: number;
  tag: number;
  /** Where the data starts in the frame; it runs to the frame's end. */
  dataOffset: number;
  dataLength: number;
}

/** A frame whose data was read into the place its receiver gave: the head and that place. */
export interface PlacedFrame {
  head: PlaceableHead;
  data: Uint8Array;
  /** The frame's length (as its prefix said). */
  length: number;
}

/** Who a transport asks where a placeable frame's data goes, and tells when it has arrived. */
export interface Placer {
  /** Exactly `length` bytes where the data of DmaReadCpl(dev, tag) goes, or undefined (then the
   *  frame is read and decoded as any other). Must not throw. */
  place(dev: number, tag: number, length: number): Uint8Array | undefined;
  /** A frame placed is complete, in its order among the others. */
  arrived(f: PlacedFrame): void;
}

/** A transport that can place frames (plain TCP reading into our buffers). */
export interface Placing {
  /** Who places from now on; undefined: nobody. Removing the placer while a frame is being placed
   *  ends the connection, reading nothing more (its next read would land in the place given). */
  setPlacer(p: Placer | undefined): void;
}

export function canPlace(t: object): t is Placing {
  return typeof (t as Partial<Placing>).setPlacer === 'function';
}

/** Field keys (field number << 3 | wire type) of the frame's shape. */
const FRAME_SEQ = 0x08;
const FRAME_ACK = 0x10;
const FRAME_MSGS = 0x1a;
/** Msg.dma_read_cpl = 22, length-delimited: a two-byte varint key. */
const MSG_DMA_READ_CPL = [0xb2, 0x01] as const;
const CPL_DEV = 0x08;
const CPL_TAG = 0x10;
const CPL_STATUS = 0x18;
const CPL_DATA = 0x22;

/** The longest head peekPlaceable reads (every field present, every varint as long as it takes):
 *  a reader that has this much of a frame can tell whether it is placeable. */
export const PLACEABLE_HEAD = 1 + 7 + 1 + 7 + 1 + 5 + 2 + 5 + 3 * (1 + 5) + 1 + 5;

/** Longest varints read here: 32-bit fields in 5 bytes, seq/ack in 7 (below 2^49, safe integers);
 *  anything longer is left to the decoder. */
const MAX_U32_BYTES = 5;
const MAX_SEQ_BYTES = 7;

/** The head of the frame of `frameLength` bytes that starts with `bytes`, if it is placeable and
 *  `bytes` holds all of it; else undefined. */
export function peekPlaceable(bytes: Uint8Array, frameLength: number): PlaceableHead | undefined {
  let at = 0;
  /** A varint of at most `max` bytes, or -1. */
  const varint = (max: number): number => {
    let n = 0;
    for (let i = 0, scale = 1; i < max && at < bytes.length; i++, scale *= 0x80) {
      const b = bytes[at++]!;
      n += (b & 0x7f) * scale;
      if (!(b & 0x80)) return n;
    }
    return -1;
  };
  const key = (k: number) => {
    if (bytes[at] !== k) return false;
    at++;
    return true;
  };
  if (!key(FRAME_SEQ)) return undefined;
  const seq = varint(MAX_SEQ_BYTES);
  if (seq <= 0) return undefined;
  let ack = 0;
  if (key(FRAME_ACK)) {
    ack = varint(MAX_SEQ_BYTES);
    if (ack < 0) return undefined;
  }
  // One message, running to the frame's end; its body a DmaReadCpl running to the message's end.
  if (!key(FRAME_MSGS) || varint(MAX_U32_BYTES) !== frameLength - at) return undefined;
  if (!key(MSG_DMA_READ_CPL[0]) || !key(MSG_DMA_READ_CPL[1])) return undefined;
  if (varint(MAX_U32_BYTES) !== frameLength - at) return undefined;
  const dev = key(CPL_DEV) ? varint(MAX_U32_BYTES) : 0;
  const tag = key(CPL_TAG) ? varint(MAX_U32_BYTES) : 0;
  if (dev < 0 || tag < 0 || dev > 0xffffffff || tag > 0xffffffff) return undefined;
  // A status present must be OK (0): a refusal carries no data to place.
  if (key(CPL_STATUS) && varint(MAX_U32_BYTES) !== 0) return undefined;
  if (!key(CPL_DATA)) return undefined;
  const dataLength = varint(MAX_U32_BYTES);
  if (dataLength <= 0 || at + dataLength !== frameLength) return undefined;
  return { seq, ack, dev, tag, dataOffset: at, dataLength };
}

/** The frame a placed one stands for, as decodeFrame would return it. */
export function placedMessages(f: PlacedFrame): pcinet.Msg[] {
  const { dev, tag } = f.head;
  return [pcinet.Msg.create({ dmaReadCpl: pcinet.DmaReadCpl.create({ dev, tag, data: f.data }) })];
}
