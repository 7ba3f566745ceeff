import { describe, expect, it } from 'vitest';
import {
  checkFilter,
  decodeRecord,
  encodeRecord,
  MAX_PENDING_RECORDS,
  type Tap,
  TF_LINK,
  TF_TO_HOST,
  TF_TRUNCATED,
  TRACE_HEADER,
  TraceHub,
  TraceSelector,
} from './trace.js';
import { long, type Msg } from './wire.js';

const mmioWrite = (dev: number, bar: number, offset: number, len = 4): Msg => ({
  mmioWrite: { dev, bar, offset: long(offset), data: new Uint8Array(len).fill(7) },
});

describe('trace records', () => {
  it('carry the header and the message; a payload over the snap length is cut and its length kept', () => {
    const data = new Uint8Array(4096).map((_, i) => i & 0xff);
    const r = encodeRecord({ dmaWrite: { dev: 3, iova: long(0x1000n), data } }, TF_TO_HOST | TF_LINK, 3, 64);
    expect(Buffer.from(r.subarray(0, TRACE_HEADER)).toString('hex')).toBe(
      `01${(TF_TO_HOST | TF_LINK | TF_TRUNCATED).toString(16).padStart(2, '0')}0000` +
        '03000000' +
        '00100000',
    );
    const d = decodeRecord(r);
    expect(d.kind).toBe('dmaWrite');
    expect(d.dev).toBe(3);
    expect(d.origLen).toBe(4096);
    expect(Buffer.from(d.msg.dmaWrite!.data!)).toEqual(Buffer.from(data.subarray(0, 64)));
    // Short payloads are whole and not marked.
    const s = decodeRecord(encodeRecord(mmioWrite(1, 0, 0x14), 0, 1, 64));
    expect(s.flags & TF_TRUNCATED).toBe(0);
    expect(s.origLen).toBe(4);
  });

  it('never carry a kernel link key', () => {
    const key = new Uint8Array(32).fill(0x5a);
    const r = encodeRecord(
      { attach: { dev: 1, linkToken: new Uint8Array(16), linkKey: key } },
      TF_TO_HOST,
      1,
      256,
    );
    expect(Buffer.from(r).includes(Buffer.from(key))).toBe(false);
    expect(decodeRecord(r).msg.attach!.linkToken!.length).toBe(16);
  });
});

describe('trace filters', () => {
  it('keep a device, kinds, and MMIO of a BAR range; a read’s completion follows its read', () => {
    const sel = new TraceSelector({ devs: [2], bar: 0, offset: [0x1000, 0x1008] });
    const keep = (m: Msg, dev: number) => sel.keep(m, Object.keys(m)[0] as never, dev);
    expect(keep(mmioWrite(2, 0, 0x1000), 2)).toBe(true);
    expect(keep(mmioWrite(2, 0, 0x1004), 2)).toBe(true);
    expect(keep(mmioWrite(2, 0, 0x0ffe, 4), 2)).toBe(true); // overlaps the range
    expect(keep(mmioWrite(2, 0, 0x1008), 2)).toBe(false);
    expect(keep(mmioWrite(2, 2, 0x1000), 2)).toBe(false); // another BAR
    expect(keep(mmioWrite(1, 0, 0x1000), 1)).toBe(false); // another device
    expect(keep({ interrupt: { dev: 2, vector: 1 } }, 2)).toBe(false); // no BAR offset
    expect(keep({ mmioReadCpl: { dev: 2, tag: 5 } }, 2)).toBe(false);
    expect(keep({ mmioRead: { dev: 2, tag: 5, bar: 0, offset: long(0x1004), size: 4 } }, 2)).toBe(true);
    expect(keep({ mmioReadCpl: { dev: 2, tag: 5 } }, 2)).toBe(true);
    expect(keep({ mmioReadCpl: { dev: 2, tag: 5 } }, 2)).toBe(false); // answered once
    const kinds = new TraceSelector({ kinds: ['interrupt', 'dmaRead'] });
    expect(kinds.keep({ interrupt: { dev: 1 } }, 'interrupt', 1)).toBe(true);
    expect(kinds.keep(mmioWrite(1, 0, 0), 'mmioWrite', 1)).toBe(false);
  });

  it('are checked as they arrive', () => {
    expect(checkFilter({ kinds: ['mmioWrite'] })).toBeUndefined();
    expect(checkFilter({ kinds: ['toast' as never] })).toMatch(/unknown message kind "toast"/);
    expect(checkFilter({ bar: 6 })).toMatch(/BAR 6/);
    expect(checkFilter({ offset: [8, 8] })).toMatch(/LO < HI/);
    expect(checkFilter({ devs: [-1] })).toMatch(/not a device id/);
  });
});

describe('the trace hub', () => {
  it('installs its tap while a trace runs and takes it off after the last one', async () => {
    let tap: Tap | undefined;
    const hub = new TraceHub((t) => {
      tap = t;
    });
    expect(tap).toBeUndefined();
    const a: Uint8Array[] = [];
    const b: Uint8Array[] = [];
    const into = (list: Uint8Array[]) => (r: [number, Uint8Array][]) => {
      list.push(...r.map(([, x]) => x));
      return true;
    };
    const stopA = hub.subscribe({ sink: into(a) });
    const stopB = hub.subscribe({ filter: { kinds: ['interrupt'] }, sink: into(b) });
    expect(tap).toBe(hub);
    tap!.record(mmioWrite(1, 0, 0), false, false, 1);
    tap!.record({ interrupt: { dev: 1, vector: 0 } }, true, true, 1);
    await new Promise((r) => setImmediate(r));
    expect(a.map((x) => decodeRecord(x).kind)).toEqual(['mmioWrite', 'interrupt']);
    expect(b.map((x) => decodeRecord(x).kind)).toEqual(['interrupt']);
    stopA();
    expect(tap).toBe(hub);
    stopB();
    expect(tap).toBeUndefined();
  });

  it('drops and counts what a slow consumer cannot take, never queueing without bound', async () => {
    const hub = new TraceHub(() => {});
    let taken = 0;
    let dropped = 0;
    let accept = false;
    const sink = (r: [number, Uint8Array][], lost: number) => {
      taken += r.length;
      dropped += lost;
      return accept;
    };
    const stop = hub.subscribe({ sink });
    for (let i = 0; i < MAX_PENDING_RECORDS + 10; i++) hub.record(mmioWrite(1, 0, 0), false, false, 1);
    await new Promise((r) => setImmediate(r));
    expect(taken).toBe(MAX_PENDING_RECORDS);
    expect(dropped).toBe(10);
    // Full: everything is dropped until the consumer has drained.
    hub.record(mmioWrite(1, 0, 0), false, false, 1);
    await new Promise((r) => setImmediate(r));
    expect(dropped).toBe(11);
    accept = true;
    hub.drained(sink);
    hub.record(mmioWrite(1, 0, 0), false, false, 1);
    await new Promise((r) => setImmediate(r));
    expect(taken).toBe(MAX_PENDING_RECORDS + 1);
    stop();
  });
});
