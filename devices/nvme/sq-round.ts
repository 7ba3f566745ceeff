// The host's half of quiet NVMe submission queues (docs/PUSH.md "Quiet submission queues"), as
// pcinet.ko keeps it (kernel/push-sq.c, pcinet_sq_*): the sim channel and the test fakes keep it
// with this class, so the model's unit tests and the sim run against the rules the module follows.
//
// A push rule that names the SQ tail's shadow doorbell (NvmeSqRule.shadow) comes with the device's
// promise of a round for every tail doorbell write. While a doorbell is unanswered the host sets
// the SQ's event index past any tail: the driver submits without ringing (no trap, no record), and
// the round brings the host back to ring from the shadow tail what was submitted meanwhile, in one
// doorbell. With nothing unanswered the index goes back to the tail: the next submission rings.

/** The event index of a quiet SQ: past any tail, so the driver rings only when its tail wraps. */
export const QUIET_EVENT_IDX = 0xffff;

/** What a quiet SQ needs of its host. */
export interface SqHost {
  /** The driver's shadow tail, read after the event index written before it (pcinet.ko puts a
   *  full barrier between them); undefined when unreadable or not a slot of the SQ. */
  shadow(): number | undefined;
  /** The device's write of the SQ's event index, made by the host. */
  eventIdx(value: number): void;
  /** Rings `tail` for the driver, as its own doorbell write would be: pushes first; the host's
   *  doorbell path then calls rung(tail). */
  ring(tail: number): void;
}

export class QuietSq {
  /** The event index says "do not ring". */
  quiet = false;
  /** The tail last rung (sent to the device). */
  #last: number;
  /** The tail the device last said it took. */
  #answered: number;

  /** `last`: the tail the rule has pushed up to (a replaced rule's), with nothing unanswered. */
  constructor(last = 0) {
    this.#last = last;
    this.#answered = last;
  }

  /** The tail last rung. */
  get last(): number {
    return this.#last;
  }

  /** A tail doorbell of `tail` goes to the device: the event index the driver reads next. */
  rung(tail: number, allowed = true): number {
    this.#last = tail;
    this.quiet = allowed && tail !== this.#answered;
    return this.quiet ? QUIET_EVENT_IDX : tail;
  }

  /** The device's round: it took the SQ up to `taken`. What the driver submitted without ringing
   *  is rung; with nothing unanswered the SQ stops being quiet, and the shadow is read once more
   *  after the index moved (the driver writes its shadow, then reads the index: one of us sees the
   *  other). */
  round(taken: number, h: SqHost): void {
    this.#answered = taken;
    for (let i = 0; i < 4; i++) {
      const tail = h.shadow();
      if (tail === undefined) break;
      if (tail !== this.#last) {
        h.ring(tail);
        if (this.quiet) return; // that doorbell's round comes back here
        continue;
      }
      if (!this.quiet || this.#last !== this.#answered) return;
      this.quiet = false;
      h.eventIdx(this.#last);
    }
    this.unquiet(h);
  }

  /** The device forgets the SQ (reset, link loss) or its rule goes: the index back at the
   *  driver's tail, so its next submission rings. */
  unquiet(h: SqHost): void {
    if (!this.quiet) return;
    this.quiet = false;
    let tail = this.#last;
    for (let i = 0; i < 4; i++) {
      h.eventIdx(tail);
      const now = h.shadow();
      if (now === undefined || now === tail) return;
      tail = now;
    }
  }
}
