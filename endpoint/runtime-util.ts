// Small helpers of endpoint/runtime.ts: record offsets, span checks, trace fields for the log.
import { ErrorCode, ProtocolError } from '../proto/wire.js';

/** A 64-bit BAR offset from a record as a number; past 2^53 it is the host's mistake, as num() says
 *  for the same offset in a message. */
export function safeOffset(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER))
    throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `${what} out of range: ${v.toString()}`);
  return Number(v);
}

/** Whether [off, off + len) lies in one of `spans` (a plain loop: asked on every MMIO write). */
export function within(
  spans: readonly { offset: number; length: number }[],
  off: number,
  len: number,
): boolean {
  for (const s of spans) if (off >= s.offset && off + len <= s.offset + s.length) return true;
  return false;
}

/** Trace fields as log fields: bigints as hex (JSON has no bigint). */
export function loggable(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) out[k] = typeof v === 'bigint' ? `0x${v.toString(16)}` : v;
  return out;
}
