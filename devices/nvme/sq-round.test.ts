import { describe, expect, it } from 'vitest';
import { QUIET_EVENT_IDX, QuietSq, type SqHost } from './sq-round.js';

/** Linux's nvme_dbbuf_need_event(): did moving the tail from `old` to `next` pass `ei`? */
const needEvent = (ei: number, next: number, old: number) =>
  ((next - ei - 1) & 0xffff) < ((next - old) & 0xffff);

/**
 * A driver with shadow doorbells, a host keeping a QuietSq, and a device answering every tail
 * doorbell with a round, all in one process. The driver's tail is also kept as an unwrapped count,
 * so a doorbell's value can be checked against what was submitted. `race` lets the driver submit
 * at the host's worst moments: just before the host's event index write lands, and just before
 * it reads the shadow.
 */
class World {
  readonly size: number;
  shadow = 0;
  ei = 0;
  /** Submitted entries, unwrapped; the driver never fills the queue (Linux keeps one free). */
  submitted = 0;
  rings = 0;
  /** Doorbell values on their way to the device, and rounds on their way back. */
  readonly toDevice: number[] = [];
  readonly toHost: number[] = [];
  /** The device's tail, unwrapped. */
  taken = 0;
  readonly q = new QuietSq();
  readonly host: SqHost;
  #rand: () => number;

  constructor(size: number, seed: number, race: number) {
    this.size = size;
    let x = seed;
    this.#rand = () => {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      return x / 0x80000000;
    };
    this.host = {
      shadow: () => {
        if (this.#rand() < race) this.submit();
        return this.shadow;
      },
      eventIdx: (v) => {
        if (this.#rand() < race) this.submit();
        this.ei = v;
      },
      ring: (tail) => this.#doorbell(tail),
    };
  }

  rand(): number {
    return this.#rand();
  }

  /** The host's doorbell path (the driver's trap, or a ring for it): the event index first. */
  #doorbell(tail: number): void {
    this.ei = this.q.rung(tail);
    this.toDevice.push(tail);
  }

  /** One submission, as nvme_submit_cmd() with nvme_dbbuf_update_and_check_event(). */
  submit(): void {
    if (this.submitted - this.taken >= this.size - 1) return; // full, from the driver's view
    const old = this.shadow;
    this.submitted++;
    this.shadow = this.submitted % this.size;
    if (needEvent(this.ei, this.shadow, old)) {
      this.rings++;
      this.#doorbell(this.shadow);
    }
  }

  /** The device takes the oldest doorbell: its tail may not run past what was submitted, nor back. */
  device(): void {
    const v = this.toDevice.shift();
    if (v === undefined) return;
    const ahead = (v - (this.taken % this.size) + this.size) % this.size;
    this.taken += ahead;
    expect(this.taken).toBeLessThanOrEqual(this.submitted);
    this.toHost.push(v);
  }

  hostRound(): void {
    const v = this.toHost.shift();
    if (v !== undefined) this.q.round(v, this.host);
  }

  /** Everything on its way delivered, until nothing moves. */
  drain(): void {
    for (let i = 0; i < 1000 && (this.toDevice.length || this.toHost.length); i++) {
      this.device();
      this.hostRound();
    }
  }
}

describe('QuietSq (docs/PUSH.md "Quiet submission queues")', () => {
  it('submissions while a doorbell is unanswered do not ring; the round rings them as one', () => {
    const w = new World(64, 1, 0);
    w.submit();
    expect(w.rings).toBe(1);
    expect(w.ei).toBe(QUIET_EVENT_IDX);
    for (let i = 0; i < 5; i++) w.submit();
    expect(w.rings).toBe(1);
    w.device();
    w.hostRound(); // answers tail 1: tails 2..6 are rung for the driver, in one doorbell
    expect(w.toDevice).toEqual([6]);
    expect(w.q.quiet).toBe(true);
    w.device();
    w.hostRound(); // nothing new, nothing unanswered: the driver rings again
    expect(w.q.quiet).toBe(false);
    expect(w.ei).toBe(6);
    w.submit();
    expect(w.rings).toBe(2);
    expect(w.taken).toBe(6);
  });

  it('without quiet allowed, every submission rings and the index follows the tail', () => {
    const q = new QuietSq();
    expect(q.rung(1, false)).toBe(1);
    expect(q.quiet).toBe(false);
    expect(q.rung(2, false)).toBe(2);
  });

  it('a duplicate of an answered tail does not make the SQ quiet', () => {
    const q = new QuietSq(5);
    expect(q.rung(5)).toBe(5);
    expect(q.quiet).toBe(false);
  });

  it('unquiet puts the index at the shadow tail, following a driver that moves meanwhile', () => {
    const w = new World(64, 3, 0);
    w.submit(); // quiet
    w.submit();
    w.submit(); // shadow 3, not rung
    w.q.unquiet(w.host);
    expect(w.q.quiet).toBe(false);
    expect(w.ei).toBe(3);
    w.submit();
    expect(w.rings).toBe(2);
  });

  it('an unreadable shadow gives ringing back to the driver', () => {
    const q = new QuietSq();
    let ei = -1;
    q.rung(1);
    q.round(1, { shadow: () => undefined, eventIdx: (v) => (ei = v), ring: () => expect.fail('no ring') });
    expect(q.quiet).toBe(false);
    expect(ei).toBe(1);
  });

  it('never loses a submission nor sends a tail backwards, whatever the interleaving (200 seeds)', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const size = [2, 3, 8, 64, 1024][seed % 5]!;
      const w = new World(size, seed, 0.3);
      for (let step = 0; step < 400; step++) {
        const r = w.rand();
        if (r < 0.5) w.submit();
        else if (r < 0.75) w.device();
        else w.hostRound();
      }
      w.drain();
      // Quiet at rest would strand the driver's next submission: it must ring, or be taken.
      expect(w.taken, `seed ${seed}`).toBe(w.submitted);
      expect(w.q.quiet, `seed ${seed}`).toBe(false);
      const before = w.rings;
      w.submit();
      if (w.submitted > w.taken) expect(w.rings, `seed ${seed}`).toBe(before + 1);
    }
  });

  it('rings far less often than it submits when the device answers late', () => {
    const w = new World(1024, 7, 0);
    for (let i = 0; i < 1000; i++) {
      w.submit();
      if (i % 8 === 7) {
        w.device();
        w.hostRound();
      }
    }
    w.drain();
    expect(w.taken).toBe(w.submitted);
    expect(w.rings).toBeLessThan(w.submitted / 4);
  });
});
