// Push rules (docs/PUSH.md): a device tells its host which memory a doorbell will make it read, so
// the host can send those bytes with the doorbell instead of waiting for the device's DMA reads.
// Models declare rules through HostPort.setPushRule as the driver sets queues up; they keep reading
// memory as before (the endpoint serves the reads from pushed bytes when it can).

/** NVMe memory page size the PRP walk assumes (CC.MPS = 0; Linux's NVME_CTRL_PAGE_SIZE). */
export const PUSH_PAGE = 4096;
/** Rule ids a device may use: 0..MAX_PUSH_RULES-1 (PCINET_MAX_PUSH_RULES). */
export const MAX_PUSH_RULES = 128;
/** Most bytes pushed for one doorbell write (PCINET_PUSH_MAX_BYTES). */
export const PUSH_MAX_BYTES = 2048 << 10;

/** An NVMe submission queue: SQEs from the tail doorbell, and the data of NVM Writes. */
export interface NvmeSqRule {
  kind: 'nvme-sq';
  bar: number;
  /** BAR offset of the SQ tail doorbell. */
  doorbell: number;
  /** IOVA of entry 0. */
  base: bigint;
  entries: number;
  /** Largest write (bytes) whose data is pushed; 0 for the admin queue. */
  dataMax: number;
  /** log2 of the LBA size of I/O commands. */
  lbaShift: number;
  /** IOVA of the SQ's shadow-doorbell EventIdx (Doorbell Buffer Config): at every write of the
   *  doorbell the host writes the value written there, before the driver goes on, so the driver's
   *  next submission always rings (docs/PUSH.md "Shadow doorbells"). Only when HostPort.sqEventIdx. */
  eventIdx?: bigint;
  /** IOVA of the SQ tail's shadow doorbell, with eventIdx and only when HostPort.virtqRound: the
   *  device promises a round (virtqRound, `kick` = the SQ tail it took) for every tail doorbell
   *  write, after the completions it made at once, and the host may then let the SQ go quiet —
   *  the driver stops ringing while a doorbell is unanswered, and the host rings from the shadow
   *  what it submitted meanwhile (docs/PUSH.md "Quiet submission queues"). */
  shadow?: bigint;
}

/** A virtio split virtqueue: avail ring and descriptors on a notify, and readable buffers. */
export interface VirtqRule {
  kind: 'virtq';
  bar: number;
  /** BAR offset of the queue's notify address. */
  notify: number;
  /** IOVA of the descriptor table. */
  desc: bigint;
  /** IOVA of the driver area (avail ring). */
  avail: bigint;
  size: number;
  /** Largest chain (device-readable bytes) whose buffers are pushed; 0: ring and table only. */
  dataMax: number;
  indirect: boolean;
}

export type PushRule = NvmeSqRule | VirtqRule;

/**
 * The end of a round of service of the virtqueue behind push rule `rule`, done by the host
 * (HostPort.virtqRound; docs/PUSH.md "Virtqueue rounds") after the used-ring and avail_event writes
 * the device made before it: what one more ring read over the network would have told the device.
 */
export interface VirtqRound {
  rule: number;
  /** Raise this vector if the driver wants an interrupt for used idx having moved from oldUsed to
   *  newUsed (used_event with eventIdx, else avail.flags); undefined: no decision. */
  vector: number | undefined;
  oldUsed: number;
  newUsed: number;
  eventIdx: boolean;
  /** If the driver made buffers available past what the rule last pushed (no notify announced
   *  them), push them and write this value to the rule's doorbell; undefined: no recheck. */
  kick: number | undefined;
}
