// A recorded session of one device, as the replay model (devices/replay/device.ts) is given it: the
// messages `pcinet trace --for-replay` captured between the device's Attach and the end of that
// session, in plain types. The endpoint reads the capture and translates each message
// (endpoint/replay-trace.ts); models never see a file or the wire's encoding.
import type { DeviceDescription } from '../description.js';
import type { PushRule, VirtqRound } from '../push.js';

/** Where a record was in the capture: its packet number (1-based, Wireshark's frame.number and the
 *  line of `pcinet trace -r`) and its time in µs after the device's Attach. */
export interface RecordAt {
  n: number;
  us: number;
}

/** A message the host sent the device. */
export type HostRecord =
  | { kind: 'mmioWrite'; bar: number; offset: number; data: Uint8Array }
  /** A volatile read; the device's MmioReadCpl with the same tag answered it. */
  | { kind: 'mmioRead'; tag: number; bar: number; offset: number; size: number }
  | { kind: 'configWrite'; offset: number; size: number; value: number }
  | { kind: 'functionReset' }
  /** The host removed the device: the end of the session. */
  | { kind: 'detach' }
  | { kind: 'dmaReadCpl'; tag: number; ok: boolean; data: Uint8Array }
  /** Host memory the host sent in front of a doorbell write (docs/PUSH.md). */
  | { kind: 'push'; rule: number; iova: bigint; data: Uint8Array }
  /** Messages of the runtime's own that the model never sees (PushDrop, PushRuleSet,
   *  AttachResult): kept so record numbers and times stay the capture's. */
  | { kind: 'hostOther'; what: string };

/** A message the device sent the host. */
export type DeviceRecord =
  | { kind: 'shadow'; bar: number; offset: number; data: Uint8Array }
  | { kind: 'mmioReadCpl'; tag: number; ok: boolean; data: Uint8Array }
  | { kind: 'dmaRead'; tag: number; iova: bigint; len: number }
  | { kind: 'dmaWrite'; iova: bigint; data: Uint8Array }
  | { kind: 'interrupt'; vector: number }
  /** A push rule set (rule) or removed (undefined). */
  | { kind: 'pushRule'; id: number; rule: PushRule | undefined }
  | { kind: 'virtqRound'; round: VirtqRound }
  /** The endpoint unplugged the device (it shut down): the end of the session. */
  | { kind: 'unplug' }
  /** WritesApplied and the like: the runtime makes its own. */
  | { kind: 'deviceOther'; what: string };

export type ReplayRecord = RecordAt & ((HostRecord & { toHost: false }) | (DeviceRecord & { toHost: true }));

export interface ReplayRecording {
  /** The capture it came from, for messages: "/tmp/rng.pcapng, device 1". */
  source: string;
  /** The device as its Attach described it: what the replay presents. */
  description: DeviceDescription;
  /** The session's records after the Attach, in the capture's order. */
  records: readonly ReplayRecord[];
  /** Packet number of the Attach. */
  attachN: number;
}
