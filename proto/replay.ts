// The session's replay buffer (proto/session.ts): every sequenced frame, kept as written until the
// peer acknowledges it, and what the owners of payloads sent by reference are told about them.
//
// Two kinds of payload travel by reference:
// - handed over: bytes made for the message that nobody modifies (a device's pattern, a copy); the
//   owner may get them back once acknowledged (`release`);
// - lent (a Loan): memory its owner will change, such as a DMA read's completion sent straight from
//   host memory. The owner takes a loan back before the memory changes or goes (an unmap, a device
//   write over it): the loan's bytes become a copy of what the memory held, the replayed frame
//   carries that copy, and writes of the frame still queued in a connection (not yet taken by the
//   kernel, so still reading the memory) are dropped by ending that connection; the frame is then
//   replayed, from the copy, on the next one.

/** Memory lent for a payload (see above). */
export interface Loan {
  /** The payload: the lent memory itself, or, once taken back or settled, a copy of what it held. */
  readonly bytes: Uint8Array;
  /** Set by whoever holds the loan: called, synchronously, when the owner takes it back (`bytes`
   *  is the copy by then; `lent` is the memory, about to change). */
  onTakeBack: ((lent: Uint8Array) => void) | undefined;
  /** The holder wants a copy now (it cannot keep the owner's memory safe: a transport that keeps
   *  what it is given, or cannot drop queued writes). Idempotent; the loan is over afterwards. */
  settle(): void;
  /** The holder no longer needs it (the peer acknowledged it, or the session is over). Idempotent. */
  end(): void;
}

export const isLoan = (x: Uint8Array | Loan | undefined): x is Loan =>
  x !== undefined && !(x instanceof Uint8Array);

interface Entry {
  seq: number;
  /** The frame as written (parts reference the batch's encoded messages and lent memory). */
  parts: Uint8Array[];
  length: number;
  /** Called once the peer has acknowledged the frame, unless it went out on a transport that
   *  does not copy (`shared`). */
  releases?: (() => void)[];
  shared?: boolean;
  loans?: Loan[];
}

export class ReplayBuffer {
  #entries: Entry[] = [];
  #bytes = 0;
  #loans = 0;
  readonly #onTakeBack: () => void;

  /** `onTakeBack`: a loan of a frame here was taken back (connections must drop queued writes). */
  constructor(onTakeBack: () => void) {
    this.#onTakeBack = onTakeBack;
  }

  get frames(): number {
    return this.#entries.length;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Loans of frames here, not over yet: connections that wrote them may still be reading them. */
  get lending(): boolean {
    return this.#loans > 0;
  }

  get firstSeq(): number | undefined {
    return this.#entries[0]?.seq;
  }

  /** Frames in order, for writing them again. */
  get entries(): readonly Readonly<Entry>[] {
    return this.#entries;
  }

  add(seq: number, parts: Uint8Array[], releases: (() => void)[], loans: Loan[]): Readonly<Entry> {
    let length = 0;
    for (const p of parts) length += p.length;
    const e: Entry = { seq, parts, length };
    if (releases.length > 0) e.releases = releases;
    if (loans.length > 0) {
      e.loans = loans;
      this.#loans += loans.length;
      for (const l of loans) l.onTakeBack = (lent) => this.#takenBack(e, l, lent);
    }
    this.#entries.push(e);
    this.#bytes += length;
    return e;
  }

  #takenBack(e: Entry, l: Loan, lent: Uint8Array): void {
    const i = e.parts.indexOf(lent);
    if (i >= 0) e.parts[i] = l.bytes;
    this.#onTakeBack();
  }

  /** The frames are about to be written on a transport: one that holds what it is given (`shares`)
   *  never releases them; one that cannot keep lent memory safe (`lends` false) gets copies. */
  written(e: Readonly<Entry>, shares: boolean, lends: boolean): void {
    const w = e as Entry;
    if (shares) w.shared = true;
    if (!lends && w.loans) this.#settle(w);
  }

  #settle(e: Entry): void {
    for (const l of e.loans!) {
      const lent = l.bytes;
      l.settle();
      const i = e.parts.indexOf(lent);
      if (i >= 0) e.parts[i] = l.bytes;
      l.onTakeBack = undefined;
    }
    this.#loans -= e.loans!.length;
    e.loans = undefined;
  }

  /** Drops frames up to `ack`; true if any were. */
  acked(ack: number): boolean {
    let n = 0;
    while (n < this.#entries.length && this.#entries[n]!.seq <= ack) {
      const e = this.#entries[n]!;
      this.#bytes -= e.length;
      if (e.releases && !e.shared) for (const r of e.releases) r();
      if (e.loans) this.#end(e);
      n++;
    }
    if (n > 0) this.#entries.splice(0, n);
    return n > 0;
  }

  #end(e: Entry): void {
    for (const l of e.loans!) {
      l.onTakeBack = undefined;
      l.end();
    }
    this.#loans -= e.loans!.length;
    e.loans = undefined;
  }

  /** The session is over: loans end (nothing will be written again); frames stay for counting. */
  endLoans(): void {
    for (const e of this.#entries) if (e.loans) this.#end(e);
  }
}
