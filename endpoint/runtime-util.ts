// Small helpers of endpoint/runtime.ts: record offsets, span checks, trace fields for the log.
import { ErrorCode, ProtocolError } from '../proto/wire.js';

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A 64-bit BAR offset from a record as a number; past 2^53 it is the host's mistake, as num() says
 *  for the same offset in a message. */
export function safeOffset(v: bigint, what: string): number {
  if (v > MAX_SAFE) throw new ProtocolError(ErrorCode.BAD_ARGUMENT, `${what} out of range: ${v.toString()}`);
  return Number(v);
}

const U64_MAX = (1n << 64n) - 1n;

/** BigInt.asUintN(64, v) without a new bigint for a `v` that is one already (every IOVA a model
 *  passes that is not its own mistake). */
export function u64Of(v: bigint): bigint {
  return v >= 0n && v <= U64_MAX ? v : BigInt.asUintN(64, v);
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
