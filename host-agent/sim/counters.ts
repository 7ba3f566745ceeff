// What a sim function counts (SimFunction.counters): the sim channel's twin of pcinet.ko's
// pcinet_counters, read by tests and `pcinet status` alike.

/** Counts since the function was created. */
export interface SimCounters {
  mmioWrites: number;
  shadowReads: number;
  volatileReads: number;
  readTimeouts: number;
  fenceWaits: number;
  interrupts: number;
  interruptsPending: number;
  dmaReadFaults: number;
  dmaWriteFaults: number;
  masterAbortDma: number;
  /** Push messages sent, and their bytes. */
  pushes: number;
  pushBytes: number;
  /** Ranges a push rule did not push: not device-readable, or over the budget of a doorbell. */
  pushSkipped: number;
  /** PushDrop messages sent (a mapping pushed from was unmapped). */
  pushDrops: number;
  /** SQ event indices written at doorbell writes, and those the IOMMU refused. */
  eventIdxWrites: number;
  eventIdxRefused: number;
  /** VirtqDone messages applied; interrupts they found unwanted; doorbells they rang for the
   *  driver (virtqueue notifies, quiet NVMe SQs' tails). */
  virtqRounds: number;
  virtqIrqsSkipped: number;
  virtqKicks: number;
}

export function newSimCounters(): SimCounters {
  return {
    mmioWrites: 0,
    shadowReads: 0,
    volatileReads: 0,
    readTimeouts: 0,
    fenceWaits: 0,
    interrupts: 0,
    interruptsPending: 0,
    dmaReadFaults: 0,
    dmaWriteFaults: 0,
    masterAbortDma: 0,
    pushes: 0,
    pushBytes: 0,
    pushSkipped: 0,
    pushDrops: 0,
    eventIdxWrites: 0,
    eventIdxRefused: 0,
    virtqRounds: 0,
    virtqIrqsSkipped: 0,
    virtqKicks: 0,
  };
}
