// Frame codec: encoded pcinet.Frame bytes <-> checked frames. Every failure is a ProtocolError with
// a code that names the problem; nothing a peer sends can make this throw anything else.
//
// Sequenced frames are built here from individually encoded messages, so a batch can be split into
// several frames below FRAME_SOFT_BYTES without encoding anything twice.
import assert from 'node:assert/strict';
import { ErrorCode, long, MAX_FRAME_BYTES, type Msg, num, ProtocolError, pcinet } from './wire.js';

/** Messages that travel outside the sequence (seq = 0), and only there. */
const UNSEQUENCED = new Set(['hello', 'resume', 'keepAlive', 'error']);

export function isUnsequenced(m: Msg): boolean {
  const body = (m as pcinet.Msg).body;
  return body !== undefined && UNSEQUENCED.has(body);
}

/** A frame as byte ranges written one after another (a gather write): the wire carries their
 *  concatenation, the same bytes encodeSequenced() returns. */
export type FrameParts = readonly Uint8Array[];

/** Encoded messages at least this long are not copied into their frame: they go to the transport as
 *  parts of their own, by reference (the socket's writev takes them as they are). Shorter ones are
 *  copied together, so a frame of many small messages stays one or a few parts. */
export const GATHER_MIN = 16 << 10;

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
  checkMsgs(seq, msgs);
  return { seq, ack, msgs };
}

/** Throws the ProtocolError decodeFrame throws for frame `seq` with these messages, if any. */
export function checkMsgs(seq: number, msgs: pcinet.Msg[]): void {
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
}

/** Encodes an unsequenced frame (handshake, keep-alive, ack-only, error). */
export function encodeControl(ack: number, msgs: Msg[]): Uint8Array {
  return pcinet.Frame.encode({ seq: long(0), ack: long(ack), msgs }).finish();
}

/** One encoded message: its bytes, or parts whose concatenation they are (a large payload by
 *  reference after the bytes before it). */
export type EncodedMsg = Uint8Array | readonly Uint8Array[];

/** Message bodies whose last field is a payload that may travel by reference: that field's key. */
const PAYLOAD_KEY: Partial<Record<string, number>> = {
  dmaWrite: 0x1a, // DmaWrite.data = 3
  dmaReadCpl: 0x22, // DmaReadCpl.data = 4
};
const NO_BYTES = new Uint8Array(0);

/** One message, encoded once, ready to be placed in a frame. With `byRef` (the message's payload,
 *  GATHER_MIN bytes or more, handed over by the caller: nobody modifies it afterwards), the payload
 *  is not copied: the result is [everything before it, the payload]. */
export function encodeMsg(m: Msg): Uint8Array;
export function encodeMsg(m: Msg, byRef: Uint8Array | undefined): EncodedMsg;
export function encodeMsg(m: Msg, byRef?: Uint8Array): EncodedMsg {
  if (!byRef || byRef.length < GATHER_MIN) return pcinet.Msg.encode(m).finish();
  // A message made by the caller is a plain object: its body is whichever field is set.
  const name = m.dmaWrite ? 'dmaWrite' : m.dmaReadCpl ? 'dmaReadCpl' : undefined;
  const key = name && PAYLOAD_KEY[name];
  const body = name && (m as Record<string, { data?: Uint8Array | null }>)[name];
  if (!key || !body || body.data !== byRef) return pcinet.Msg.encode(m).finish();
  // The message with an empty payload: the body's key, its length, the body ending in (key, 0).
  const shell = pcinet.Msg.encode({ [name!]: { ...body, data: NO_BYTES } }).finish();
  let at = 0;
  while (shell[at++]! & 0x80);
  const keyEnd = at;
  let len = 0;
  for (let scale = 1; ; scale *= 0x80) {
    const b = shell[at++]!;
    len += (b & 0x7f) * scale;
    if (!(b & 0x80)) break;
  }
  assert(
    at + len === shell.length && shell[shell.length - 2] === key && shell[shell.length - 1] === 0,
    `codec: ${name}'s payload is not its last field`,
  );
  const bodyLen = len - 1 + varintSize(byRef.length) + byRef.length;
  const head = Buffer.allocUnsafe(keyEnd + varintSize(bodyLen) + len - 1 + varintSize(byRef.length));
  head.set(shell.subarray(0, keyEnd));
  let h = putVarint(head, keyEnd, bodyLen);
  head.set(shell.subarray(at, shell.length - 1), h);
  h += len - 1;
  putVarint(head, h, byRef.length);
  return [head, byRef];
}

/** Bytes of an encoded message. */
export function encodedLength(e: EncodedMsg): number {
  return e instanceof Uint8Array ? e.length : partsLength(e);
}

/** Bytes a message adds to a frame: field tag, length varint, body. */
export function framedSize(encoded: EncodedMsg): number {
  const n = encodedLength(encoded);
  return 1 + varintSize(n) + n;
}

function varintSize(n: number): number {
  let s = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    s++;
  }
  return s;
}

/** Builds Frame{seq, ack, msgs} from already encoded messages, as parts: runs of small pieces
 *  (the frame's header, every message's field prefix, small messages) copied together, pieces of
 *  GATHER_MIN bytes or more referenced. */
export function encodeSequencedParts(seq: number, ack: number, encoded: readonly EncodedMsg[]): Uint8Array[] {
  const head = Buffer.allocUnsafe(2 + 2 * varintSize(Math.max(seq, ack)));
  head[0] = 0x08;
  let h = putVarint(head, 1, seq);
  if (ack !== 0) {
    head[h++] = 0x10;
    h = putVarint(head, h, ack);
  }
  const pieces: Uint8Array[] = [head.subarray(0, h)];
  for (const e of encoded) {
    const n = encodedLength(e);
    const prefix = Buffer.allocUnsafe(1 + varintSize(n));
    prefix[0] = 0x1a;
    putVarint(prefix, 1, n);
    pieces.push(prefix);
    if (e instanceof Uint8Array) pieces.push(e);
    else pieces.push(...e);
  }
  return gather(pieces);
}

/** Pieces to write one after another, for a gather write: runs of pieces shorter than GATHER_MIN
 *  copied together, longer ones as they are (referenced, never copied). */
export function gather(pieces: Iterable<Uint8Array>): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let run: Uint8Array[] = [];
  let runBytes = 0;
  const cut = () => {
    if (run.length > 0) parts.push(run.length === 1 ? run[0]! : Buffer.concat(run, runBytes));
    run = [];
    runBytes = 0;
  };
  for (const piece of pieces) {
    if (piece.length >= GATHER_MIN) {
      cut();
      parts.push(piece);
    } else {
      run.push(piece);
      runBytes += piece.length;
    }
  }
  cut();
  return parts;
}

/** Builds Frame{seq, ack, msgs} from already encoded messages, as one buffer. */
export function encodeSequenced(seq: number, ack: number, encoded: readonly EncodedMsg[]): Uint8Array {
  const parts = encodeSequencedParts(seq, ack, encoded);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** Total bytes of a frame given as parts. */
export function partsLength(parts: FrameParts): number {
  let n = 0;
  for (const p of parts) n += p.length;
  return n;
}

/** Writes `n` (a non-negative safe integer) as a protobuf varint at `at`; returns the end. */
function putVarint(b: Uint8Array, at: number, n: number): number {
  while (n >= 0x80) {
    b[at++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  b[at++] = n;
  return at;
}
