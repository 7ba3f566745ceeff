// The host-agent's view of "the PCI bus": a channel creates devices from Attach descriptions and
// exchanges data-plane messages with them. `sim` is a software root complex (host-agent/sim/);
// `kernel` is /dev/pcinet (kernel/). The relay (host-agent/relay.ts) connects a channel to a session.
import type { Loan } from '../proto/replay.js';
import type { DeviceDescription, ErrorCode, Msg } from '../proto/wire.js';

/** Sends a host -> device message (MmioWrite, MmioRead, DmaReadCpl, ConfigWrite, FunctionReset,
 *  Detach) into the session, in order. `handOver`: the message's payload, which the channel made
 *  for this message and does not touch again until `release` is called (never, without one), so
 *  the session may send it by reference instead of copying it (a channel that reuses its buffers
 *  otherwise passes nothing); or host memory lent for a DmaReadCpl's data (proto/replay.ts: the
 *  channel takes it back, as a copy, before the memory changes), ended by whoever drops the
 *  message. `release`: called once the payload is no longer needed (the endpoint has acknowledged
 *  a copy of it), when the session can tell. */
export type DeviceSink = (m: Msg, handOver?: Uint8Array | Loan, release?: () => void) => void;

/** Where a kernel link goes (docs/KERNEL-ABI.md, W_CONNECT): the endpoint's resolved address. */
export interface LinkTarget {
  host: string;
  family: 4 | 6;
  /** 4 or 16 bytes. */
  address: Uint8Array;
  port: number;
  /** The device's Attach.link_token. */
  token: Uint8Array;
  /** Attach.link_key: the link's frames are sealed with it (encrypted sessions). */
  key?: Uint8Array;
}

/** Where a channel's kernel links go, before the endpoint names a device (token, key); `sealed`:
 *  the session is encrypted, so a link must be too. */
export type LinkEndpoint = Omit<LinkTarget, 'token' | 'key'> & { sealed: boolean };

export interface AttachOptions {
  /** Carry the device's data plane on a kernel link to the endpoint, if the channel can. */
  link?: LinkTarget;
  /** The kernel link failed after it was open: the device is link down already. */
  onLinkLost?: (why: string) => void;
}

export interface Channel {
  readonly name: string;
  /** Its devices may give places for DmaWrite data (ChannelDevice.placeDmaWrite). */
  readonly placesDmaWrites?: boolean;
  /** Creates device `dev` from its description. Resolves once it is on the bus (the driver may
   *  already be probing). Rejects with a ProtocolError(ATTACH_FAILED | BAD_CONFIG) when it cannot. */
  attach(dev: number, desc: DeviceDescription, sink: DeviceSink, o?: AttachOptions): Promise<ChannelDevice>;
  /** Removes every device and releases the channel. */
  close(): Promise<void>;
}

export interface ChannelDevice {
  /** Bus address, e.g. "0000:10:00.0" (kernel) or "sim:00:01.0". */
  readonly address: string;
  /** Its data plane is on a kernel link: deliver() is not called for it. */
  readonly linked?: boolean;
  /** A device -> host message for this device: ShadowUpdate, WritesApplied, MmioReadCpl, DmaRead,
   *  DmaWrite, Interrupt. In session order. */
  deliver(m: Msg): void;
  /** Where the data of a DmaWrite of `length` bytes to `iova`, the next message for this device,
   *  may be read straight into: the host memory the write would land in, when it would be allowed
   *  now. deliver() then gets that DmaWrite with this place as its data, and must not copy it
   *  again. `cancel` is called, synchronously, as soon as the place may no longer be written (the
   *  mapping is unmapped, bus mastering turned off, the device removed) until then. Absent, or
   *  undefined: the data is read and delivered as usual. */
  placeDmaWrite?(iova: bigint, length: number, cancel: () => void): Uint8Array | undefined;
  /** Removes the device: the driver unbinds, in-flight work fails (reads all-ones). `reason` is
   *  SHUTDOWN for an orderly detach, anything else for a surprise removal. */
  remove(reason: ErrorCode): Promise<void>;
  /** The endpoint is gone for now: the device stays on the bus and its driver is told (PCI error
   *  recovery); nothing it does reaches anyone, and what it says is dropped. Absent when the
   *  channel cannot keep a device without its endpoint (host-agent/parking.ts). */
  linkDown?(): Promise<void>;
  /** Whether the driver bound now rides out a link down (PCI error recovery, or pcinet.ko's
   *  freeze and restore for drivers without error handlers: it quiesces and resets the device at
   *  link up) rather than being unbound. Asked before a link down taken only because the endpoint
   *  went quiet: a driver that would be unbound waits for the session to resume instead. Absent:
   *  it does. */
  recoversFromLinkDown?(): Promise<boolean>;
  /** A fresh instance of the same device (power-on state, description `desc`) is behind it again;
   *  its messages go to `sink` from now on. The driver resets and resumes it. */
  linkUp?(desc: DeviceDescription, sink: DeviceSink, o?: AttachOptions): Promise<void>;
}
