// The split virtqueue's interrupt decisions over plain memory: event-index suppression from a
// fresh ring read, interrupts decided early from the last read (never missing one the driver asked
// for since), and popAll taking every chain with its indirect tables read together.
import { describe, expect, it } from 'vitest';
import type { HostPort } from '../host-port.js';
import { rd16, wr16, wr32, wr64 } from '../pci/le.js';
import { SplitQueue, VRING_DESC_F_INDIRECT } from './virtqueue.js';

const SIZE = 8;
const DESC = 0x1000n;
const DRIVER = 0x2000n;
const DEVICE = 0x3000n;

/** Host memory as one array. Reads answer on a later tick, like a round trip; the most reads in
 *  flight at once is kept. */
function memoryPort() {
  const mem = new Uint8Array(0x10000);
  let inflight = 0;
  let most = 0;
  const port: HostPort = {
    async dmaRead(iova, len) {
      most = Math.max(most, ++inflight);
      await new Promise((r) => setTimeout(r, 1));
      inflight--;
      return mem.slice(Number(iova), Number(iova) + len);
    },
    dmaWrite(iova, data) {
      mem.set(data, Number(iova));
    },
    raiseMsix() {},
    drain: async () => {},
    trace() {},
    changed() {},
    setPushRule() {},
  };
  return {
    mem,
    port,
    mostInFlight: () => most,
    reset: () => {
      most = 0;
    },
  };
}

function queue(port: HostPort) {
  return new SplitQueue(
    { index: 0, size: SIZE, desc: DESC, driver: DRIVER, device: DEVICE, eventIdx: true, indirect: true },
    () => port,
  );
}

/** The driver makes descriptor `d` (one readable buffer) available. */
function offer(mem: Uint8Array, d: number, addr: number, len: number): void {
  wr64(mem, Number(DESC) + 16 * d, BigInt(addr));
  wr32(mem, Number(DESC) + 16 * d + 8, len);
  wr16(mem, Number(DESC) + 16 * d + 12, 0);
  const idx = rd16(mem, Number(DRIVER) + 2);
  wr16(mem, Number(DRIVER) + 4 + 2 * (idx % SIZE), d);
  wr16(mem, Number(DRIVER) + 2, (idx + 1) & 0xffff);
}

const setUsedEvent = (mem: Uint8Array, v: number) => wr16(mem, Number(DRIVER) + 4 + 2 * SIZE, v);

describe('split virtqueue interrupts', () => {
  it('follows used_event from the ring read after the completions', async () => {
    const { mem, port } = memoryPort();
    const q = queue(port);
    setUsedEvent(mem, 1); // interrupt when used idx passes 1
    offer(mem, 0, 0x8000, 10);
    offer(mem, 1, 0x8100, 10);
    await q.refresh(true);
    const [a, b] = await q.popAll();
    q.push(a!.head, 0);
    await q.refresh(true);
    expect(q.interruptDue()).toBe(false); // used idx 1 has not passed 1
    q.push(b!.head, 0);
    await q.refresh(true);
    expect(q.interruptDue()).toBe(true);
    expect(q.interruptDue()).toBe(false); // nothing new
  });

  it('an early decision from an older read may interrupt, never withholds what a fresh read grants', async () => {
    const { mem, port } = memoryPort();
    const q = queue(port);
    setUsedEvent(mem, 50); // no interrupts wanted
    offer(mem, 0, 0x8000, 10);
    await q.refresh(true);
    const [a] = await q.popAll();
    setUsedEvent(mem, 0); // the driver wants one now; the device has not read it
    q.push(a!.head, 0);
    expect(q.interruptNow()).toBe(false); // the older wish says no ...
    await q.refresh(true);
    expect(q.interruptDue()).toBe(true); // ... the fresh read says yes: not missed
  });

  it('an early yes is not signalled twice', async () => {
    const { mem, port } = memoryPort();
    const q = queue(port);
    setUsedEvent(mem, 0);
    offer(mem, 0, 0x8000, 10);
    await q.refresh(true);
    const [a] = await q.popAll();
    q.push(a!.head, 0);
    expect(q.interruptNow()).toBe(true);
    await q.refresh(true);
    expect(q.interruptDue()).toBe(false);
  });

  it('popAll reads every indirect table in one round', async () => {
    const { mem, port, mostInFlight, reset } = memoryPort();
    const q = queue(port);
    for (let d = 0; d < 3; d++) {
      const table = 0x4000 + 0x100 * d;
      wr64(mem, table, BigInt(0x9000 + 0x100 * d));
      wr32(mem, table + 8, 20 + d);
      offer(mem, d, table, 16);
      wr16(mem, Number(DESC) + 16 * d + 12, VRING_DESC_F_INDIRECT);
    }
    await q.refresh(true);
    reset();
    const chains = await q.popAll();
    expect(mostInFlight()).toBe(3); // all three in flight together, not one after another's answer
    expect(chains.map((c) => c.readable)).toEqual([
      [{ addr: 0x9000n, len: 20 }],
      [{ addr: 0x9100n, len: 21 }],
      [{ addr: 0x9200n, len: 22 }],
    ]);
  });
});
