// One simulated host for the push-rule tests (push.test.ts, push-virtq.test.ts): memory, the soft
// IOMMU and a rule table, and a doorbell store that checks every push it makes is a true copy of
// device-readable memory within the byte budget.
import { expect } from 'vitest';
import { leBytes } from '../../devices/pci/le.js';
import { PUSH_MAX_BYTES } from '../../devices/push.js';
import { type DmaDirection, SimMemory, SoftIommu } from './iommu.js';
import { PUSH_RECORD_BYTES, type Push, PushRules } from './push.js';

/** A smaller doorbell budget (pcinet.ko's push_budget) for the tests that run out of it. */
export const SMALL_BUDGET = 256 << 10;

/** A world of its own per test: memory, IOMMU, a rule table with that byte budget per doorbell. */
export function world(memorySize = 16 << 20, budget = PUSH_MAX_BYTES) {
  const memory = new SimMemory(memorySize);
  const iommu = new SoftIommu(memory);
  const rules = new PushRules(budget);
  const peek = (iova: bigint, len: number) => iommu.peek(iova, len);
  /** A buffer the driver fills, mapped for the device. */
  const buffer = (len: number, dir: DmaDirection = 'to-device', offset = 0) => {
    const buf = memory.alloc(offset + len);
    return { buf, bytes: buf.bytes.subarray(offset), iova: iommu.map(buf, dir, offset, len) };
  };
  /** A doorbell store of `value` (4 bytes, as writel does). */
  const ring = (bar: number, offset: number, value: number) => {
    const pushes = rules.onWrite(bar, offset, leBytes(value, 4), peek);
    // Every push is a true copy of device-readable memory at its IOVA, at most one record long.
    for (const p of pushes) {
      expect(p.data.length).toBeGreaterThan(0);
      expect(p.data.length).toBeLessThanOrEqual(PUSH_RECORD_BYTES);
      const now = iommu.peek(p.iova, p.data.length);
      expect(now && Buffer.compare(now, p.data)).toBe(0);
    }
    expect(pushes.reduce((n, p) => n + p.data.length, 0)).toBeLessThanOrEqual(budget);
    return pushes;
  };
  return { memory, iommu, rules, peek, buffer, ring };
}

/** Pushes as [rule, iova, length], for comparing layouts. */
export const spans = (ps: Push[]) => ps.map((p) => [p.rule, p.iova, p.data.length]);
