// Shared vocabulary of the wire protocol: generated message types, limits, coded errors.
// The schema of record is proto/pcinet.proto; docs/PROTOCOL.md explains it.
import Long from 'long';
import { pcinet } from './gen/pcinet.js';

export { pcinet };
export const ErrorCode = pcinet.ErrorCode;
export type ErrorCode = pcinet.ErrorCode;
export const Capability = pcinet.Capability;
export type Msg = pcinet.IMsg;
export type Frame = pcinet.IFrame;
export type DeviceDescription = pcinet.IDeviceDescription;

export const PROTOCOL_VERSION = 1;

/** Hard maximum of one encoded frame. Large enough for a 1 MiB DMA completion plus headers; checked
 *  before any allocation so a lying length prefix costs nothing. */
export const MAX_FRAME_BYTES = 4 << 20;

/** Largest DMA read or write carried by one message. Larger transfers are split by the sender;
 *  256 KiB keeps a frame of several completions far below MAX_FRAME_BYTES. */
export const MAX_DMA_CHUNK = 256 << 10;

/** Capabilities this implementation sets in Hello. */
export const OUR_CAPABILITIES =
  Capability.CAP_WRITES_APPLIED |
  Capability.CAP_STATS |
  Capability.CAP_PUSH_RULES |
  Capability.CAP_VIRTQ_ROUNDS |
  Capability.CAP_SQ_EVENT_IDX;

/** The peer broke the protocol (or refused us): the session closes with `code`. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(`${ErrorCode[code] ?? code}: ${message}`);
  }
}

export type MsgKind = Exclude<pcinet.Msg['body'], undefined>;

/** Which member of the oneof is set, for decoded and hand-built messages alike. */
export function kindOf(m: Msg): MsgKind | undefined {
  if (m instanceof pcinet.Msg) return m.body;
  for (const k in m) {
    const v = (m as Record<string, unknown>)[k];
    if (v !== undefined && v !== null) return k as MsgKind;
  }
  return undefined;
}

type U64 = Long | number | string | null | undefined;

/** A decoded 64-bit field as bigint (IOVAs, offsets). */
export function u64(v: U64): bigint {
  if (v === null || v === undefined) return 0n;
  if (typeof v === 'number') return BigInt(v);
  if (typeof v === 'string') return BigInt(v);
  return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
}

/** A decoded 64-bit field that must fit a JS number (sequence numbers, BAR offsets). Values past
 *  2^53 are a peer error. */
export function num(v: U64, what = 'value'): number {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'number') return v;
  const n = typeof v === 'string' ? Number(v) : v.toNumber();
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `${what} out of range: ${v.toString()}`);
  }
  return n;
}

/** A bigint as a field value for encoding a 64-bit field. */
export function long(v: bigint | number): Long {
  const b = BigInt.asUintN(64, BigInt(v));
  return new Long(Number(b & 0xffffffffn) | 0, Number(b >> 32n) | 0, true);
}
