// Placing DMA data where it belongs while it is read (NVMe/TCP's C2HData and H2CData land in the
// command's buffer the same way). Two frame shapes are recognised from their first bytes:
//
// - a frame that is one DmaReadCpl of OK status whose data runs to the frame's end (the endpoint
//   reads it into the read's own buffer);
// - a frame whose first message is a DmaWrite with its data last (the sim host reads it into host
//   memory, when the write may land now); the frame's further messages, the tail, follow the data
//   and are decoded as usual once it has arrived.
//
// The receiver says where the data goes, and the socket reads it there: nothing is put together or
// copied afterwards, and no frame-sized buffer is allocated for it.
//
// The frame's head is read strictly: every field in order, at most once, no other fields, so the
// frame it stands for decodes to exactly what placedMessages returns. Anything else (another shape,
// a long varint, a refused read) is left to the ordinary decoder, which checks everything: a hostile
// frame is never placed, only decoded; a tail that is not plain messages is decoded with the rest
// of its frame.
import { checkMsgs, type DecodedFrame, decodeFrame } from './codec.js';
import { ErrorCode, long, ProtocolError, pcinet } from './wire.js';

/** A placeable frame's head: everything in the frame but the data (and a DmaWrite's tail). */
export type PlaceableHead = {
  seq: number;
  ack: number;
  dev: number;
  /** Where the data starts in the frame. */
  dataOffset: number;
  dataLength: number;
  /** Bytes after the data: the frame's further messages (DmaWrite frames only; else 0). */
  tailLength: number;
} & ({ kind: 'dmaReadCpl'; tag: number } | { kind: 'dmaWrite'; iova: bigint });

/** A frame whose data was read into the place its receiver gave: the head and that place. */
export interface PlacedFrame {
  head: PlaceableHead;
  /** The frame's bytes before the data. */
  headBytes: Uint8Array;
  data: Uint8Array;
  /** The frame's bytes after the data (head.tailLength of them). */
  tail?: Uint8Array;
  /** The frame's length (as its prefix said). */
  length: number;
}

/** Who a transport asks where a placeable frame's data goes, and tells when it has arrived. */
export interface Placer {
  /** Exactly `head.dataLength` bytes where the frame's data goes, or undefined (then the frame is
   *  read and decoded as any other). Must not throw. `cancel`: called by whoever gave the place
   *  when nothing more may be written into it; if the frame has not been handed to arrived() yet,
   *  its connection ends there, reading nothing more (it is replayed, and decoded then). */
  place(head: PlaceableHead, cancel: () => void): Uint8Array | undefined;
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
/** Msg.dma_write = 34, length-delimited: a two-byte varint key. */
const MSG_DMA_WRITE = [0x92, 0x02] as const;
const WRITE_DEV = 0x08;
/** DmaWrite.iova is fixed64: 8 bytes, little-endian. */
const WRITE_IOVA = 0x11;
const WRITE_DATA = 0x1a;

/** The longest head peekPlaceable reads (every field present, every varint as long as it takes;
 *  a DmaReadCpl's is the longer): a reader that has this much of a frame can tell whether it is
 *  placeable. */
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
  const u32 = (n: number) => n >= 0 && n <= 0xffffffff;
  if (!key(FRAME_SEQ)) return undefined;
  const seq = varint(MAX_SEQ_BYTES);
  if (seq <= 0) return undefined;
  let ack = 0;
  if (key(FRAME_ACK)) {
    ack = varint(MAX_SEQ_BYTES);
    if (ack < 0) return undefined;
  }
  if (!key(FRAME_MSGS)) return undefined;
  const msgLength = varint(MAX_U32_BYTES);
  if (msgLength <= 0 || at + msgLength > frameLength) return undefined;
  const msgEnd = at + msgLength;
  if (key(MSG_DMA_READ_CPL[0])) {
    // One message, running to the frame's end; its body a DmaReadCpl running to the message's end.
    if (msgEnd !== frameLength || !key(MSG_DMA_READ_CPL[1])) return undefined;
    if (varint(MAX_U32_BYTES) !== msgEnd - at) return undefined;
    const dev = key(CPL_DEV) ? varint(MAX_U32_BYTES) : 0;
    const tag = key(CPL_TAG) ? varint(MAX_U32_BYTES) : 0;
    if (!u32(dev) || !u32(tag)) return undefined;
    // A status present must be OK (0): a refusal carries no data to place.
    if (key(CPL_STATUS) && varint(MAX_U32_BYTES) !== 0) return undefined;
    if (!key(CPL_DATA)) return undefined;
    const dataLength = varint(MAX_U32_BYTES);
    if (dataLength <= 0 || at + dataLength !== frameLength) return undefined;
    return { kind: 'dmaReadCpl', seq, ack, dev, tag, dataOffset: at, dataLength, tailLength: 0 };
  }
  // The first message, a DmaWrite whose body runs to the message's end and whose data is last.
  if (!key(MSG_DMA_WRITE[0]) || !key(MSG_DMA_WRITE[1])) return undefined;
  if (varint(MAX_U32_BYTES) !== msgEnd - at) return undefined;
  const dev = key(WRITE_DEV) ? varint(MAX_U32_BYTES) : 0;
  if (!u32(dev)) return undefined;
  let iova = 0n;
  if (key(WRITE_IOVA)) {
    if (at + 8 > bytes.length) return undefined;
    iova = new DataView(bytes.buffer, bytes.byteOffset + at, 8).getBigUint64(0, true);
    at += 8;
  }
  if (!key(WRITE_DATA)) return undefined;
  const dataLength = varint(MAX_U32_BYTES);
  if (dataLength <= 0 || at + dataLength !== msgEnd) return undefined;
  return {
    kind: 'dmaWrite',
    seq,
    ack,
    dev,
    iova,
    dataOffset: at,
    dataLength,
    tailLength: frameLength - msgEnd,
  };
}

/** The messages of a tail that is nothing but Frame.msgs entries, or undefined. */
function tailMessages(tail: Uint8Array): pcinet.Msg[] | undefined {
  const msgs: pcinet.Msg[] = [];
  let at = 0;
  while (at < tail.length) {
    if (tail[at++] !== FRAME_MSGS) return undefined;
    let n = 0;
    let i = 0;
    for (let scale = 1; ; scale *= 0x80, i++) {
      if (i >= MAX_U32_BYTES || at >= tail.length) return undefined;
      const b = tail[at++]!;
      n += (b & 0x7f) * scale;
      if (!(b & 0x80)) break;
    }
    if (at + n > tail.length) return undefined;
    try {
      msgs.push(pcinet.Msg.decode(tail.subarray(at, at + n)));
    } catch (e) {
      throw new ProtocolError(ErrorCode.MALFORMED, `frame does not decode: ${(e as Error).message}`);
    }
    at += n;
  }
  return msgs;
}

/** The frame a placed one stands for, as decodeFrame would return it (checked as it checks it:
 *  throws its ProtocolErrors). */
export function placedFrame(f: PlacedFrame): DecodedFrame {
  const h = f.head;
  if (h.kind === 'dmaReadCpl') {
    const cpl = pcinet.DmaReadCpl.create({ dev: h.dev, tag: h.tag, data: f.data });
    return { seq: h.seq, ack: h.ack, msgs: [pcinet.Msg.create({ dmaReadCpl: cpl })] };
  }
  const write = pcinet.Msg.create({
    dmaWrite: pcinet.DmaWrite.create({ dev: h.dev, iova: long(h.iova), data: f.data }),
  });
  const tail = f.tail ?? new Uint8Array(0);
  const rest = tailMessages(tail);
  if (rest === undefined) {
    // Not plain messages (a field the head does not allow, or cut short): the decoder reads it all
    // as it would have without placing; the DmaWrite's data is where it was placed.
    const whole = decodeFrame(Buffer.concat([f.headBytes, f.data, tail]));
    const first = whole.msgs[0]?.dmaWrite;
    if (first) first.data = f.data;
    return whole;
  }
  const msgs = [write, ...rest];
  checkMsgs(h.seq, msgs);
  return { seq: h.seq, ack: h.ack, msgs };
}
