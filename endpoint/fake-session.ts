// A session for tests of the runtime: captures what is sent, frame by frame (one frame per flush),
// and delivers hand-built host batches.
import { EventEmitter } from 'node:events';
import { kindOf, type Msg, OUR_CAPABILITIES, u64 } from '../proto/wire.js';
import type { SessionLike } from './runtime.js';

export class FakeSession extends EventEmitter implements SessionLike {
  readonly sent: Msg[] = [];
  readonly frames: Msg[][] = [];
  #batch: Msg[] = [];
  #backlogged = false;
  /** As negotiated in Hello: everything we implement, unless a test says otherwise. */
  capabilities: number = OUR_CAPABILITIES;

  get backlogged(): boolean {
    return this.#backlogged;
  }

  set backlogged(v: boolean) {
    const was = this.#backlogged;
    this.#backlogged = v;
    if (was && !v) this.emit('drain');
  }

  /** Keeps a copy of the message's data, as the real session's encoding does. */
  send(m: Msg): void {
    const kept = m.dmaWrite ? { dmaWrite: { ...m.dmaWrite, data: m.dmaWrite.data?.slice() } } : m;
    this.sent.push(kept);
    this.#batch.push(kept);
  }

  flush(): void {
    if (this.#batch.length === 0) throw new Error('FakeSession: flush of an empty batch');
    this.frames.push(this.#batch);
    this.#batch = [];
  }

  /** Messages sent but not flushed. */
  get unflushed(): readonly Msg[] {
    return this.#batch;
  }

  /** One host batch, as the session emits it. */
  deliver(...msgs: Msg[]): void {
    this.emit('messages', msgs);
  }

  close(err?: Error): void {
    this.emit('close', err);
  }

  /** Clears what was captured so far. */
  reset(): void {
    this.sent.length = 0;
    this.frames.length = 0;
  }
}

/** A compact view of messages for assertions: "shadow 0 0x14+4", "interrupt 3", "applied 2" … */
export function summary(msgs: readonly Msg[]): string[] {
  return msgs.map((m) => {
    const k = kindOf(m);
    switch (k) {
      case 'shadowUpdate': {
        const s = m.shadowUpdate!;
        return `shadow ${s.bar} 0x${u64(s.offset).toString(16)}+${s.data?.length}`;
      }
      case 'interrupt':
        return `interrupt ${m.interrupt!.vector}`;
      case 'writesApplied':
        return `applied ${u64(m.writesApplied!.count)}`;
      case 'dmaRead':
        return `dmaRead 0x${u64(m.dmaRead!.iova).toString(16)}+${m.dmaRead!.length}`;
      case 'dmaWrite':
        return `dmaWrite 0x${u64(m.dmaWrite!.iova).toString(16)}+${m.dmaWrite!.data?.length}`;
      case 'mmioReadCpl':
        return `readCpl ${m.mmioReadCpl!.tag} ${m.mmioReadCpl!.status ?? 0}`;
      case 'attach':
        return `attach ${m.attach!.dev}`;
      case 'detach':
        return `detach ${m.detach!.dev}`;
      case 'pushRule':
        return `pushRule ${m.pushRule!.id} ${m.pushRule!.kind ?? 0}`;
      case 'virtqDone': {
        const v = m.virtqDone!;
        return `virtqDone ${v.rule ?? 0} ${v.oldUsed ?? 0}->${v.newUsed ?? 0}${v.interrupt ? ` irq ${v.vector ?? 0}` : ''}${v.recheck ? ` kick ${v.kick ?? 0}` : ''}`;
      }
      default:
        return String(k);
    }
  });
}
