// Frame codec: encoded pcinet.Frame bytes <-> checked frames. Every failure is a ProtocolError with
// a code that names the problem; nothing a peer sends can make this throw anything else.
//
// Sequenced frames are built here from individually encoded messages, so a batch can be split into
// several frames below FRAME_SOFT_BYTES without encoding anything twice.
import protobuf from 'protobufjs/minimal.js';
import { ErrorCode, long, MAX_FRAME_BYTES, type Msg, num, ProtocolError, pcinet } from './wire.js';

/** Messages that travel outside the sequence (seq = 0), and only there. */
const UNSEQUENCED = new Set(['hello', 'resume', 'keepAlive', 'error']);

export function isUnsequenced(m: Msg): boolean {
  const body = (m as pcinet.Msg).body;
  return body !== undefined && UNSEQUENCED.has(body);
}

/** A decoded, checked frame: numbers as numbers, every message with a known body. */
export interface DecodedFrame {
  seq: number;
  ack: number;
  msgs: pcinet.Msg[];
}

/** Decodes one frame (the bytes inside the length prefix or WebSocket message). */
export function decodeFrame(bytes: Uint8Array): DecodedFrame {
  if (bytes.length === 0) throw new ProtocolError(ErrorCode.BAD_LENGTH, 'empty frame');
  if (bytes.length > MAX_FRAME_BYTES) {
    throw new ProtocolError(
      ErrorCode.FRAME_TOO_LARGE,
      `frame of ${bytes.length} bytes (max ${MAX_FRAME_BYTES})`,
    );
  }
  let f: pcinet.Frame;
  try {
    f = pcinet.Frame.decode(bytes);
  } catch (e) {
    throw new ProtocolError(ErrorCode.MALFORMED, `frame does not decode: ${(e as Error).message}`);
  }
  const seq = num(f.seq, 'seq');
  const ack = num(f.ack, 'ack');
  const msgs = f.msgs as pcinet.Msg[];
  msgs.forEach((m, i) => {
    if (m.body === undefined) {
      throw new ProtocolError(ErrorCode.UNKNOWN_MESSAGE, `message ${i} of frame ${seq} has no known body`);
    }
    if (UNSEQUENCED.has(m.body) !== (seq === 0)) {
      throw new ProtocolError(
        ErrorCode.UNEXPECTED_MESSAGE,
        seq === 0 ? `${m.body} in an unsequenced frame` : `${m.body} in sequenced frame ${seq}`,
      );
    }
  });
  if (seq !== 0 && msgs.length === 0)
    throw new ProtocolError(ErrorCode.BAD_LENGTH, `sequenced frame ${seq} is empty`);
  return { seq, ack, msgs };
}

/** Encodes an unsequenced frame (handshake, keep-alive, ack-only, error). */
export function encodeControl(ack: number, msgs: Msg[]): Uint8Array {
  return pcinet.Frame.encode({ seq: long(0), ack: long(ack), msgs }).finish();
}

/** One message, encoded once, ready to be placed in a frame. */
export function encodeMsg(m: Msg): Uint8Array {
  return pcinet.Msg.encode(m).finish();
}

/** Bytes a message adds to a frame: field tag, length varint, body. */
export function framedSize(encoded: Uint8Array): number {
  return 1 + varintSize(encoded.length) + encoded.length;
}

function varintSize(n: number): number {
  let s = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    s++;
  }
  return s;
}

/** Builds Frame{seq, ack, msgs} from already encoded messages. */
export function encodeSequenced(seq: number, ack: number, encoded: readonly Uint8Array[]): Uint8Array {
  const w = protobuf.Writer.create();
  w.uint32(0x08).uint64(seq);
  if (ack !== 0) w.uint32(0x10).uint64(ack);
  for (const e of encoded) w.uint32(0x1a).bytes(e);
  return w.finish();
}
