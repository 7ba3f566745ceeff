// Register declarations for a BAR. Values live in the BAR's backing bytes, so a read is a bounds
// check and a load; only writes with side effects (and volatile reads) have code.

export type Access = 'ro' | 'rw' | 'rw1c' | 'wo';

interface RegisterBase<C> {
  name: string;
  /** Byte offset in the BAR; naturally aligned to `size`. */
  at: number;
  /** ro: writes are traced and dropped. rw: stored. rw1c: a written 1 clears that bit. wo: not
   *  stored (reads return the reset value); only onWrite sees the value. */
  access: Access;
  /** Reads go to the device (MmioRead), never to the host's shadow. Needs onRead or changes that
   *  need no push; changes to volatile bytes are never pushed as ShadowUpdate. */
  volatile?: boolean;
  /** Writes change nothing readable, so the host does not wait for them before its next read. */
  doorbell?: boolean;
  /** Return false to refuse a write (the register keeps its value). The guard traces why. */
  guard?: (ctx: C, name: string) => boolean;
}

export interface Register32<C> extends RegisterBase<C> {
  size: 1 | 2 | 4;
  reset?: number;
  /** Bits the driver may write (rw) or clear (rw1c); the others are read-only. Default all. */
  mask?: number;
  /** After the write was applied. For rw1c, `value` is the register after clearing. */
  onWrite?: (ctx: C, value: number, old: number) => void;
  /** Volatile registers: the value this read returns (and stores). */
  onRead?: (ctx: C, current: number) => number;
}

export interface Register64<C> extends RegisterBase<C> {
  size: 8;
  reset?: bigint;
  mask?: bigint;
  onWrite?: (ctx: C, value: bigint, old: bigint) => void;
  onRead?: (ctx: C, current: bigint) => bigint;
}

export type Register<C> = Register32<C> | Register64<C>;

export interface Span {
  offset: number;
  length: number;
}

export interface RegisterTable<C> {
  readonly regs: readonly Register<C>[];
  /** One past the last register byte. */
  readonly end: number;
  /** The register holding byte `offset`. */
  find(offset: number): Register<C> | undefined;
  byName(name: string): Register<C> | undefined;
  /** Volatile and doorbell ranges, adjacent registers merged. */
  readonly volatile: readonly Span[];
  readonly doorbell: readonly Span[];
}

function spans<C>(regs: readonly Register<C>[]): Span[] {
  const out: Span[] = [];
  for (const r of [...regs].sort((a, b) => a.at - b.at)) {
    const last = out[out.length - 1];
    if (last && last.offset + last.length === r.at) last.length += r.size;
    else out.push({ offset: r.at, length: r.size });
  }
  return out;
}

/** Declares a BAR's registers. Throws on overlaps, misalignment or inconsistent flags (a bug in
 *  the device model). */
export function registers<C>(regs: Register<C>[]): RegisterTable<C> {
  const bad = (r: Register<C>, why: string): never => {
    throw new Error(`registers: ${r.name} at 0x${r.at.toString(16)}: ${why}`);
  };
  const names = new Set<string>();
  for (const r of regs) {
    if (![1, 2, 4, 8].includes(r.size)) bad(r, `size ${r.size} is not 1, 2, 4 or 8`);
    if (!Number.isInteger(r.at) || r.at < 0 || r.at % r.size) bad(r, `not aligned to its size ${r.size}`);
    if (names.has(r.name)) bad(r, 'name used twice');
    names.add(r.name);
    if (r.onRead && !r.volatile) bad(r, 'onRead without volatile: the host never asks');
    if (r.doorbell && r.access !== 'wo') bad(r, 'a doorbell must be write-only');
  }
  const end = regs.reduce((m, r) => Math.max(m, r.at + r.size), 0);
  const index = new Int16Array(end).fill(-1);
  regs.forEach((r, i) => {
    for (let b = r.at; b < r.at + r.size; b++) {
      if (index[b] !== -1) bad(r, `overlaps ${regs[index[b]].name}`);
      index[b] = i;
    }
  });
  const byName = new Map(regs.map((r) => [r.name, r]));
  return {
    regs,
    end,
    find: (offset) => (offset >= 0 && offset < end && index[offset] >= 0 ? regs[index[offset]] : undefined),
    byName: (name) => byName.get(name),
    volatile: spans(regs.filter((r) => r.volatile)),
    doorbell: spans(regs.filter((r) => r.doorbell)),
  };
}
