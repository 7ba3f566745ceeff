// The simulated host's memory and its software IOMMU. Host memory is one ArrayBuffer handed out in
// pages; the device never sees a memory address, only IOVAs of live mappings. A device access is
// honoured only when the whole range lies inside one live mapping that allows its direction;
// everything else is refused and counted, like the kernel module's DMA sandbox (kernel/dma.c).
// Push rules (docs/PUSH.md) read through the same check without counting, and a mapping that was
// pushed from tells whoever pushed when the driver unmaps it. A device write may be given its place
// in host memory before its data arrives (placeWrite: the transport reads it straight there); the
// mapping then tells whoever holds the place when it is unmapped, before anything else can happen,
// so nothing is written into it afterwards.
//
// A large device read from a to-device mapping is not copied: it is lent (lendRead). A to-device
// mapping is a streaming mapping, and under the DMA API its memory is the device's from map to
// unmap: the CPU writes it only afterwards (or after a sync the sim does not have; after the device
// told it it is done, which reaches the host after the endpoint's acknowledgement of the read's
// completion, and so after the loan ended). What can change it while mapped is seen here: an
// unmap, and device writes through another mapping of the same memory (directly or placed); each
// takes back every loan over the memory it changes first, which leaves the loan a copy of what the
// read returned. Bidirectional mappings may be coherent memory (rings) that the CPU writes while
// the device reads: reads from them are copied.

import assert from 'node:assert/strict';
import type { Loan } from '../../proto/replay.js';
import { MAX_DMA_CHUNK } from '../../proto/wire.js';

export const PAGE = 4096;

/** Device reads at least this long are copied into buffers of MAX_DMA_CHUNK bytes that come back
 *  (recycle()) once the endpoint has them: a streaming read then allocates nothing, and its garbage
 *  collector has nothing to collect. Shorter ones get buffers of their own: those cost little. */
const REUSED_MIN = 64 << 10;
/** Buffers kept for reuse; arbitrary: 16 MiB, more than the reads a session keeps unacknowledged
 *  at once when streaming (what is recycled beyond it is left to the garbage collector). */
const MAX_SPARE = 64;

export type DmaDirection = 'to-device' | 'from-device' | 'bidirectional';

/** A buffer of host memory: `bytes` is a view the driver reads and writes directly. */
export interface HostBuffer {
  readonly addr: number;
  readonly bytes: Uint8Array;
}

/** Told when a mapping that something was pushed from is unmapped, with that mapping's IOVA and
 *  length (docs/PUSH.md "Unmapped"): the pushed copies must not outlive the memory. */
export type PushWatcher = (iova: bigint, length: number) => void;

interface Mapping {
  iova: bigint;
  len: number;
  addr: number;
  dir: DmaDirection;
  /** Functions that pushed from it. Functions share the IOMMU, so there may be several. */
  pushedBy?: Set<PushWatcher>;
  /** Cancels of places given in it (placeWrite) whose writes have not been applied yet. */
  placed?: Set<() => void>;
}

export interface IommuCounters {
  maps: number;
  unmaps: number;
  readFaults: number;
  writeFaults: number;
  readBytes: number;
  writeBytes: number;
  /** Device writes whose data was read straight into host memory (placeWrite), and their bytes
   *  (also in writeBytes: the write is counted when it is applied); places cancelled by an unmap. */
  placedWrites: number;
  placedBytes: number;
  placesCancelled: number;
  /** Device reads sent straight from host memory (lendRead), their bytes (also in readBytes), and
   *  loans taken back (copied) before an unmap or a device write changed the memory. */
  lentReads: number;
  lentBytes: number;
  loansTakenBack: number;
}

const pages = (len: number) => Math.max(1, Math.ceil(len / PAGE));

/** Host RAM with a first-fit page allocator. */
export class SimMemory {
  readonly bytes: Uint8Array;
  /** Page -> run length for allocated runs. */
  readonly #runs = new Map<number, number>();
  readonly #used: Uint8Array;

  constructor(size: number) {
    if (size % PAGE !== 0 || size <= 0)
      throw new RangeError(`sim memory: ${size} is not a positive multiple of ${PAGE}`);
    this.bytes = new Uint8Array(size);
    this.#used = new Uint8Array(size / PAGE);
  }

  /** Page-aligned, zeroed. Throws when memory is exhausted (a driver bug in tests). */
  alloc(len: number): HostBuffer {
    const n = pages(len);
    let run = 0;
    for (let p = 0; p < this.#used.length; p++) {
      run = this.#used[p] ? 0 : run + 1;
      if (run === n) {
        const first = p - n + 1;
        this.#used.fill(1, first, first + n);
        this.#runs.set(first, n);
        const addr = first * PAGE;
        this.bytes.fill(0, addr, addr + n * PAGE);
        return { addr, bytes: this.bytes.subarray(addr, addr + len) };
      }
    }
    throw new RangeError(`sim memory: no ${n} free pages`);
  }

  free(b: HostBuffer): void {
    const first = b.addr / PAGE;
    const n = this.#runs.get(first);
    if (n === undefined)
      throw new Error(`sim memory: free of 0x${b.addr.toString(16)}, which is not allocated`);
    this.#runs.delete(first);
    this.#used.fill(0, first, first + n);
  }
}

/** IOVAs start high and never overlap physical addresses, so a device that uses an address it was
 *  not given faults instead of hitting memory by chance. */
const IOVA_BASE = 0x10_0000_0000n;

export class SoftIommu {
  readonly counters: IommuCounters = {
    maps: 0,
    unmaps: 0,
    readFaults: 0,
    writeFaults: 0,
    readBytes: 0,
    writeBytes: 0,
    placedWrites: 0,
    placedBytes: 0,
    placesCancelled: 0,
    lentReads: 0,
    lentBytes: 0,
    loansTakenBack: 0,
  };
  readonly #memory: SimMemory;
  /** Sorted by iova. */
  #maps: Mapping[] = [];
  #next = IOVA_BASE;
  /** Buffers for device reads, back from recycle(). */
  readonly #spare: ArrayBuffer[] = [];
  /** Loans not over yet (bounded by the sessions' replay buffers that hold them). */
  readonly #loans = new Set<Lent>();

  constructor(memory: SimMemory) {
    this.#memory = memory;
  }

  get live(): number {
    return this.#maps.length;
  }

  /** Maps [buf.addr + offset, +len) for the device; returns its IOVA. IOVAs are never reused, so a
   *  stale IOVA always faults. */
  map(buf: HostBuffer, dir: DmaDirection, offset = 0, len = buf.bytes.length - offset): bigint {
    if (offset < 0 || len <= 0 || offset + len > buf.bytes.length) {
      throw new RangeError(`iommu: map of [${offset}, +${len}) outside a ${buf.bytes.length}-byte buffer`);
    }
    const addr = buf.addr + offset;
    // Keep the page offset, as a real IOMMU does.
    const iova = this.#next + BigInt(addr % PAGE);
    this.#next += BigInt(pages((addr % PAGE) + len) * PAGE + PAGE); // a guard page between mappings
    this.#maps.push({ iova, len, addr, dir });
    this.counters.maps++;
    return iova;
  }

  unmap(iova: bigint): void {
    const i = this.#maps.findIndex((m) => m.iova === iova);
    if (i < 0) throw new Error(`iommu: unmap of 0x${iova.toString(16)}, which is not mapped`);
    const [m] = this.#maps.splice(i, 1);
    this.counters.unmaps++;
    // The driver may reuse the memory from now on: loans over it become copies.
    this.#takeBack(m!.addr, m!.len);
    // First: a place in it must not be written from now on (its transport stops reading there).
    for (const cancel of m.placed ?? []) {
      this.counters.placesCancelled++;
      cancel();
    }
    // After the mapping is gone, so a watcher that looks finds it unmapped.
    for (const w of m.pushedBy ?? []) w(m.iova, m.len);
  }

  #find(iova: bigint, len: number, device: 'read' | 'write'): number | undefined {
    const m = this.#mapping(iova, len, device);
    return m && m.addr + Number(iova - m.iova);
  }

  #mapping(iova: bigint, len: number, device: 'read' | 'write'): Mapping | undefined {
    const need: DmaDirection = device === 'read' ? 'to-device' : 'from-device';
    for (const m of this.#maps) {
      if (iova < m.iova || iova + BigInt(len) > m.iova + BigInt(m.len)) continue;
      if (m.dir !== 'bidirectional' && m.dir !== need) return undefined;
      return m;
    }
    return undefined;
  }

  /** Loans over host memory [addr, addr + len) become copies of what it holds now. */
  #takeBack(addr: number, len: number): void {
    if (this.#loans.size === 0) return;
    for (const l of this.#loans) {
      if (l.addr < addr + len && addr < l.addr + l.len) {
        this.counters.loansTakenBack++;
        l.takeBack();
      }
    }
  }

  /** The device reads host memory: lent when it may be (a to-device mapping, REUSED_MIN bytes or
   *  more; see the file's head), else deviceRead's copy; undefined when refused. */
  lendRead(iova: bigint, len: number): Loan | Uint8Array | undefined {
    const m = len >= REUSED_MIN && len <= MAX_DMA_CHUNK ? this.#mapping(iova, len, 'read') : undefined;
    if (m?.dir !== 'to-device') return this.deviceRead(iova, len);
    const at = m.addr + Number(iova - m.iova);
    this.counters.readBytes += len;
    this.counters.lentReads++;
    this.counters.lentBytes += len;
    const l = new Lent(this.#loans, this.#memory.bytes.subarray(at, at + len), at);
    this.#loans.add(l);
    return l;
  }

  /** Loans not over yet, for tests. */
  get loans(): number {
    return this.#loans.size;
  }

  /** The device reads host memory: a copy, or undefined when refused. */
  deviceRead(iova: bigint, len: number): Uint8Array | undefined {
    const at = len > 0 ? this.#find(iova, len, 'read') : undefined;
    if (at === undefined) {
      this.counters.readFaults++;
      return undefined;
    }
    this.counters.readBytes += len;
    // Every byte is overwritten: no zero fill first (slice's), for up to 256 KiB per DmaRead.
    const reused = len >= REUSED_MIN && len <= MAX_DMA_CHUNK;
    const buffer =
      (reused && this.#spare.pop()) || Buffer.allocUnsafeSlow(reused ? MAX_DMA_CHUNK : len).buffer;
    const copy = new Uint8Array(buffer, 0, len);
    copy.set(this.#memory.bytes.subarray(at, at + len));
    return copy;
  }

  /** A copy deviceRead returned is no longer used by anyone: its buffer may be reused. */
  recycle(copy: Uint8Array): void {
    const b = copy.buffer as ArrayBuffer;
    if (b.byteLength !== MAX_DMA_CHUNK || copy.byteLength < REUSED_MIN || this.#spare.length >= MAX_SPARE)
      return;
    assert(!this.#spare.includes(b), 'iommu: a read buffer recycled twice');
    this.#spare.push(b);
  }

  /** What a device read of [iova, iova + len) would return now, for a push: the same check (whole
   *  range in one live mapping the device may read; mappings never adjoin here, a guard page lies
   *  between them, so that is "every byte in live mappings"), but neither counted nor a fault. */
  peek(iova: bigint, len: number): Uint8Array | undefined {
    const at = len > 0 ? this.#find(iova, len, 'read') : undefined;
    return at === undefined ? undefined : this.#memory.bytes.slice(at, at + len);
  }

  /** `watcher` pushed [iova, iova + len): every live mapping holding part of it will call it when
   *  unmapped. */
  markPushed(iova: bigint, len: number, watcher: PushWatcher): void {
    const end = iova + BigInt(len);
    for (const m of this.#maps) {
      if (iova >= m.iova + BigInt(m.len) || m.iova >= end) continue;
      m.pushedBy ??= new Set();
      m.pushedBy.add(watcher);
    }
  }

  /** `watcher` no longer cares (its function was reset or removed: the endpoint forgot its pushes). */
  forgetPushes(watcher: PushWatcher): void {
    for (const m of this.#maps) m.pushedBy?.delete(watcher);
  }

  /** Where a device write of `len` bytes to `iova` would land now (the same check as
   *  deviceWrite, neither counted nor a fault), for its data to be read straight there; undefined
   *  when it would be refused. `cancel` is called when the mapping is unmapped, until
   *  releasePlace(cancel): the write's data must not be written there from then on. */
  placeWrite(iova: bigint, len: number, cancel: () => void): Uint8Array | undefined {
    const at = len > 0 ? this.#find(iova, len, 'write') : undefined;
    if (at === undefined) return undefined;
    const m = this.#mappingOf(iova)!;
    this.#takeBack(at, len);
    m.placed ??= new Set();
    m.placed.add(cancel);
    return this.#memory.bytes.subarray(at, at + len);
  }

  /** The place given with `cancel` is written no more (its write was applied, or given up). */
  releasePlace(cancel: () => void): void {
    for (const m of this.#maps) m.placed?.delete(cancel);
  }

  #mappingOf(iova: bigint): Mapping | undefined {
    return this.#maps.find((m) => iova >= m.iova && iova < m.iova + BigInt(m.len));
  }

  /** The device writes host memory; false when refused. Data that already is where it goes (read
   *  there through placeWrite) is not copied again. */
  deviceWrite(iova: bigint, data: Uint8Array): boolean {
    const at = data.length > 0 ? this.#find(iova, data.length, 'write') : undefined;
    if (at === undefined) {
      this.counters.writeFaults++;
      return false;
    }
    this.counters.writeBytes += data.length;
    const mem = this.#memory.bytes;
    this.#takeBack(at, data.length);
    if (data.buffer === mem.buffer && data.byteOffset === mem.byteOffset + at) {
      this.counters.placedWrites++;
      this.counters.placedBytes += data.length;
    } else mem.set(data, at);
    return true;
  }
}

/** Host memory lent for a device read's completion (SoftIommu.lendRead). */
class Lent implements Loan {
  bytes: Uint8Array;
  onTakeBack: ((lent: Uint8Array) => void) | undefined;
  readonly addr: number;
  readonly len: number;
  readonly #loans: Set<Lent>;

  constructor(loans: Set<Lent>, bytes: Uint8Array, addr: number) {
    this.#loans = loans;
    this.bytes = bytes;
    this.addr = addr;
    this.len = bytes.length;
  }

  /** The memory is about to change: a copy of it instead, and the holder told. */
  takeBack(): void {
    const lent = this.bytes;
    this.settle();
    this.onTakeBack?.(lent);
  }

  settle(): void {
    if (!this.#loans.delete(this)) return;
    const copy = new Uint8Array(Buffer.allocUnsafeSlow(this.len).buffer, 0, this.len);
    copy.set(this.bytes);
    this.bytes = copy;
  }

  end(): void {
    this.#loans.delete(this);
  }
}
