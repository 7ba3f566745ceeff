// NVMe Base Specification 2.0, §4.1.1 "Physical Region Page Entry and List": where a command's data
// lies in host memory. PRP1 is the first page (with an offset); for a transfer within two pages PRP2
// is the second, for a longer one a pointer to a list of entries (whose last slot, on a full list
// page, chains to the next list page). Walking a list needs its pages: the walk asks for each read
// and is handed the bytes, so one walker serves a controller that has them at once (pushed with the
// doorbell) and one that must wait for them.
import { rd64 } from '../pci/le.js';
import { PAGE } from './spec.js';

/** A piece of host memory a transfer moves. */
export interface Seg {
  iova: bigint;
  len: number;
}

/** Host memory the walk needs read next: `len` bytes of a PRP list at `iova`. */
export interface ListRead {
  iova: bigint;
  len: number;
}

/** A PRP entry with offset bits where it may have none: the command fails with Invalid PRP Offset
 *  (§4.1.1); `detail` goes in its trace. */
export class PrpError extends Error {
  constructor(readonly detail: Record<string, unknown>) {
    super('invalid PRP offset');
  }
}

const PAGE_MASK = BigInt(PAGE - 1);

/** The segments of a PRP1/PRP2 transfer of `len` bytes when PRP1 and PRP2 alone say (at most two
 *  pages: no list to read); else undefined. Most I/O is that small. */
export function prpsNow(prp1: bigint, prp2: bigint, len: number): Seg[] | undefined {
  const first = Math.min(len, PAGE - Number(prp1 & PAGE_MASK));
  const left = len - first;
  if (left === 0) return [{ iova: prp1, len: first }];
  if (left > PAGE) return undefined;
  if (prp2 & PAGE_MASK) throw new PrpError({ prp2 });
  return [
    { iova: prp1, len: first },
    { iova: prp2, len: left },
  ];
}

/**
 * The segments of a PRP1/PRP2 transfer of `len` bytes: yields each list read it needs and is given
 * its bytes back (`next(bytes)`), returns the segments, physically contiguous pages merged. Throws
 * PrpError. Ends: each list page read consumes at least one data page, or (a list starting in its
 * last slot) only a chain to a page-aligned list page, which then holds 511 data pages.
 */
export function* prpWalk(prp1: bigint, prp2: bigint, len: number): Generator<ListRead, Seg[], Uint8Array> {
  const now = prpsNow(prp1, prp2, len);
  if (now) return now;
  const segs: Seg[] = [];
  const first = Math.min(len, PAGE - Number(prp1 & PAGE_MASK));
  segs.push({ iova: prp1, len: first });
  let left = len - first;
  if (prp2 & 7n) throw new PrpError({ list: prp2 });
  let list = prp2;
  while (left > 0) {
    const slots = (PAGE - Number(list & PAGE_MASK)) / 8;
    const need = Math.ceil(left / PAGE);
    const take = Math.min(need, slots);
    const raw: Uint8Array = yield { iova: list, len: take * 8 };
    const last = need > slots ? take - 1 : take; // the last slot of a full list page chains
    for (let i = 0; i < last; i++) {
      const e = rd64(raw, i * 8);
      if (e & PAGE_MASK) throw new PrpError({ list, entry: i, prp: e });
      const n = Math.min(PAGE, left);
      const prev = segs[segs.length - 1]!;
      if (prev.iova + BigInt(prev.len) === e) prev.len += n;
      else segs.push({ iova: e, len: n });
      left -= n;
    }
    if (need > slots) {
      list = rd64(raw, (take - 1) * 8);
      // A chained list page starts at a page boundary (PRP entries have no offset); anything
      // else would let a list point into itself and never end.
      if (list & PAGE_MASK) throw new PrpError({ chained: list });
    }
  }
  return segs;
}
