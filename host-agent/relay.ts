// The relay: connects a session to a channel. Attach messages become devices on the channel (and
// an AttachResult back); device -> host messages go to their device in session order; what the
// channel's devices send goes out on the session, batched once per tick. A device message is never
// processed before the Attach in front of it has finished: inbound batches are handled strictly in
// order, one at a time, and the session is paused while too many wait.
//
// Endpoint mistakes (messages for a device that is not attached, host -> device messages) throw
// ProtocolError from the session's 'messages' listener: the session closes with that code. When the
// session ends for good, every device is removed (a surprise removal unless the close was orderly),
// or, given a Parking (the agent reconnects), kept on the bus with its link down; an Attach of the
// same device by the next session brings it back (host-agent/parking.ts).
//
// With a Parking, devices do not wait for the session's grace period either: as soon as the session
// declares the endpoint unreachable ('unreachable': its connection went silent, or a redial failed)
// those whose drivers ride out a link down go link down, so the drivers quiesce and keep their I/O
// queued instead of timing it out (nvme's I/O timeout, 30 s, is no longer than the grace period).
// (pcinet.ko keeps even a NIC's virtio driver bound through it.) Their state on the endpoint is
// then stale: if the session resumes anyway, the relay ends it (TIMEOUT) and the next session
// attaches the devices afresh, which brings the parked ones back up. The others (a driver that
// would be unbound, losing its addresses and connections) wait for the resume as before.
import type { EventEmitter } from 'node:events';
import pino, { type Logger } from 'pino';
import { isLoan, type Loan } from '../proto/replay.js';
import type { PlaceDmaWrite } from '../proto/session.js';
import { ErrorCode, kindOf, type Msg, ProtocolError, type pcinet } from '../proto/wire.js';
import type { AttachOptions, Channel, ChannelDevice, DeviceSink, LinkEndpoint } from './channel.js';
import type { Parking } from './parking.js';

/** What the relay needs of a session (proto/session.ts satisfies it). */
export interface RelaySession extends EventEmitter {
  /** `byRef`: the message's payload, handed over (sent by reference, never copied); `release`:
   *  called once it is no longer needed (proto/session.ts). */
  send(m: Msg, byRef?: Uint8Array | Loan, release?: () => void): void;
  flush(): void;
  pause(): void;
  resume(): void;
  close(err?: Error): Promise<void>;
  readonly closed: boolean;
  /** Where a DmaWrite's data may be read straight into (proto/session.ts), when it can place. */
  placeDmaWrite?: PlaceDmaWrite | undefined;
}

/** Inbound batches waiting behind an attach before the session is paused. */
const MAX_QUEUED_BATCHES = 64;

export interface AttachedDevice {
  dev: number;
  model: string;
  address: string;
}

export interface FailedAttach {
  dev: number;
  model: string;
  code: ErrorCode;
  message: string;
}

export class Relay {
  readonly #session: RelaySession;
  readonly #channel: Channel;
  readonly #log: Logger;
  readonly #devices = new Map<
    number,
    { device: ChannelDevice; model: string; desc: pcinet.IDeviceDescription }
  >();
  readonly #parking: Parking | undefined;
  /** Devices the endpoint or we removed: late messages for them crossed the Detach. */
  readonly #gone = new Set<number>();
  readonly #failed: FailedAttach[] = [];
  readonly #queue: Msg[][] = [];
  #pumping = false;
  #paused = false;
  #flushScheduled = false;
  #closed = false;
  #attaching = 0;
  #sawAttach = false;
  /** Devices went link down while this session was still open (the endpoint unreachable). */
  #parkedWhileOpen = false;
  /** Settles once the devices taken link down by #unreachable are parked. */
  #parkingDone: Promise<void> = Promise.resolve();
  /** Settles once the attach under way (one at a time) has finished, whatever its outcome. */
  #attachDone: Promise<void> = Promise.resolve();
  #closeError: Error | undefined;
  readonly #done: Promise<Error | undefined>;
  #finish!: (e: Error | undefined) => void;
  /** Called once every Attach received so far has been answered (at least one was). */
  onSettled: (devices: AttachedDevice[], failed: readonly FailedAttach[]) => void = () => {};

  /** Where kernel links go (the endpoint's address), when the channel may open them. */
  readonly #link: LinkEndpoint | undefined;

  constructor(session: RelaySession, channel: Channel, log?: Logger, parking?: Parking, link?: LinkEndpoint) {
    this.#session = session;
    this.#channel = channel;
    this.#log = log ?? pino({ level: 'silent' });
    this.#parking = parking;
    this.#link = link;
    this.#done = new Promise((r) => {
      this.#finish = r;
    });
    session.on('messages', (msgs: Msg[]) => this.#receive(msgs));
    if (channel.placesDmaWrites && 'placeDmaWrite' in session)
      session.placeDmaWrite = (dev, iova, length, cancel) => this.#placeDmaWrite(dev, iova, length, cancel);
    session.on('close', (err?: Error) => void this.#sessionClosed(err));
    if (parking) {
      session.on('unreachable', (err: Error) => {
        this.#parkingDone = this.#unreachable(err);
      });
      session.on('resumed', () => void this.#resumed());
    }
  }

  get failed(): readonly FailedAttach[] {
    return this.#failed;
  }

  get devices(): AttachedDevice[] {
    return [...this.#devices.entries()].map(([dev, d]) => ({
      dev,
      model: d.model,
      address: d.device.address,
    }));
  }

  /** The attached devices and whether each one's data plane is on a kernel link (`pcinet status`). */
  get linked(): Map<number, boolean> {
    return new Map([...this.#devices.entries()].map(([dev, d]) => [dev, d.device.linked ?? false]));
  }

  /** Resolves when the session has ended and every device is removed: undefined for an orderly
   *  end, else the session's error. */
  get done(): Promise<Error | undefined> {
    return this.#done;
  }

  #receive(msgs: Msg[]): void {
    for (const m of msgs) if (m.attach) this.#attaching++;
    if (!this.#pumping && this.#queue.length === 0) {
      // Fast path: nothing waits, handle it now (errors go straight back to the session).
      this.#handle(msgs, 0);
      return;
    }
    this.#queue.push(msgs);
    if (this.#queue.length >= MAX_QUEUED_BATCHES && !this.#paused) {
      this.#paused = true;
      this.#session.pause();
    }
  }

  /** Handles a batch from message `from`; an Attach makes the rest wait for it. */
  #handle(msgs: Msg[], from: number): void {
    for (let i = from; i < msgs.length; i++) {
      const m = msgs[i]!;
      if (m.attach) {
        const rest = msgs.slice(i + 1);
        this.#pumping = true;
        const attached = this.#attach(m.attach);
        this.#attachDone = attached.catch(() => {});
        attached.then(
          () => this.#pump(rest),
          (e: Error) => this.#fail(e),
        );
        return;
      }
      this.#dispatch(m);
    }
    this.#scheduleFlush();
  }

  /** After an attach: the rest of its batch, then queued batches, until another attach waits. */
  #pump(rest: Msg[]): void {
    this.#pumping = false;
    if (this.#closed) return;
    const batches = [rest, ...this.#queue.splice(0)];
    try {
      for (let b = 0; b < batches.length; b++) {
        this.#handle(batches[b]!, 0);
        if (this.#pumping) {
          // Another attach: put back what follows its batch.
          this.#queue.unshift(...batches.slice(b + 1));
          return;
        }
      }
    } catch (e) {
      this.#fail(e as Error);
      return;
    }
    if (this.#paused) {
      this.#paused = false;
      this.#session.resume();
    }
  }

  #fail(e: Error): void {
    if (!(e instanceof ProtocolError)) this.#log.error({ err: e }, 'relay: internal error');
    void this.#session.close(e);
  }

  async #attach(a: pcinet.IAttach): Promise<void> {
    const dev = a.dev ?? 0;
    const model = a.desc?.model ?? '?';
    if (this.#devices.has(dev))
      throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `Attach of device ${dev}, which is attached`);
    this.#sawAttach = true;
    try {
      if (!a.desc) throw new ProtocolError(ErrorCode.BAD_CONFIG, 'Attach without a description');
      // The bus may talk about the device before attach() returns (config writes while the kernel
      // scans it): those go out after our AttachResult, which the endpoint must see first.
      let early: Parameters<DeviceSink>[] | undefined = [];
      const sink: DeviceSink = (m, handOver, release) =>
        early ? early.push([m, handOver, release]) : this.#fromDevice(dev, m, handOver, release);
      const parked = await this.#parking?.take(dev, a.desc, model);
      const opts = this.#linkOptions(dev, a);
      let recovered: ChannelDevice | undefined;
      if (parked) {
        try {
          await parked.device.linkUp!(a.desc, sink, opts);
          recovered = parked.device;
          const downS = parked.downAt ? Math.round((Date.now() - parked.downAt) / 100) / 10 : undefined;
          this.#log.info(
            { dev, model, address: recovered.address, downS },
            `endpoint back: link up, recovered after ${downS ?? '?'} s link down`,
          );
        } catch (e) {
          this.#log.error({ dev, err: (e as Error).message }, 'link up failed: attaching afresh');
          await parked.device.remove(ErrorCode.INTERNAL).catch(() => {});
        }
      }
      const device = recovered ?? (await this.#channel.attach(dev, a.desc, sink, opts));
      const held = early;
      early = undefined;
      if (this.#closed) {
        for (const [, lent] of held) if (isLoan(lent)) lent.end();
        // The session ended while the device came up (a link up lost again at once, say): lost,
        // not closed, the device waits for the next session parked, as its others do
        // (#sessionClosed, which waits for this). Removing it here would take a parked NIC's
        // interface away long before --ctrl-loss-tmo.
        const entry = { device, model, desc: a.desc };
        if (this.#closeError && (await this.#parking?.park(dev, entry))) return;
        await device.remove(ErrorCode.SHUTDOWN);
        return;
      }
      this.#gone.delete(dev);
      this.#devices.set(dev, { device, model, desc: a.desc });
      this.#session.send({
        attachResult: { dev, code: ErrorCode.OK, address: device.address, link: device.linked ?? false },
      });
      for (const [m, handOver, release] of held) this.#fromDevice(dev, m, handOver, release);
      this.#log.info({ dev, model, address: device.address }, 'device attached');
    } catch (e) {
      const code =
        e instanceof ProtocolError && (e.code === ErrorCode.BAD_CONFIG || e.code === ErrorCode.ATTACH_FAILED)
          ? e.code
          : ErrorCode.ATTACH_FAILED;
      const message = e instanceof ProtocolError ? e.message : `${(e as Error).message}`;
      this.#failed.push({ dev, model, code, message });
      this.#session.send({ attachResult: { dev, code, message: message.slice(0, 500) } });
      this.#log.error({ dev, model, code: ErrorCode[code], err: message }, 'attach failed');
    } finally {
      this.#attaching--;
      this.#scheduleFlush();
    }
    if (this.#attaching === 0 && this.#sawAttach) this.onSettled(this.devices, this.#failed);
  }

  /** A kernel link for the device when the endpoint offered one (a token) and we can open it.
   *  Its failure ends the session: the device is link down already, and what follows (parking
   *  until the endpoint is back, or removal) is what any lost session gets. */
  #linkOptions(dev: number, a: pcinet.IAttach): AttachOptions {
    const token = a.linkToken;
    if (!this.#link || !token || token.length === 0) return {};
    const { sealed, ...target } = this.#link;
    const key = a.linkKey?.length ? a.linkKey : undefined;
    if (sealed && key?.length !== 32) {
      // An encrypted session's data plane never goes out in the clear.
      this.#log.warn(
        { dev },
        'the endpoint offered a kernel link without a key: keeping the data plane here',
      );
      return {};
    }
    return {
      link: { ...target, token, key },
      onLinkLost: (why) => {
        if (this.#closed) return;
        this.#log.warn({ dev, why }, 'kernel link lost: ending the session');
        void this.#session.close(new ProtocolError(ErrorCode.LINK_LOST, why));
      },
    };
  }

  /** A message from a device on the channel, towards the endpoint. */
  #fromDevice(dev: number, m: Msg, handOver?: Uint8Array | Loan, release?: () => void): void {
    // After Detach the endpoint must hear nothing more of the device: what the bus still says
    // while the driver unbinds (a write, a config notice) has no device to go to.
    if (this.#closed || this.#gone.has(dev)) {
      release?.();
      if (isLoan(handOver)) handOver.end();
      return;
    }
    this.#session.send(m, handOver, release);
    if (m.detach) {
      // The host side removed it (e.g. the kernel unplugged it).
      this.#devices.delete(dev);
      this.#gone.add(dev);
    }
    this.#scheduleFlush();
  }

  /** A place for the data of a DmaWrite that is the next message: only when it would be
   *  dispatched at once (no attach under way, nothing queued behind one), from its device. */
  #placeDmaWrite(dev: number, iova: bigint, length: number, cancel: () => void): Uint8Array | undefined {
    if (this.#closed || this.#pumping || this.#queue.length > 0) return undefined;
    return this.#devices.get(dev)?.device.placeDmaWrite?.(iova, length, cancel);
  }

  #dispatch(m: Msg): void {
    const kind = kindOf(m);
    switch (kind) {
      case 'detach': {
        const dev = m.detach!.dev ?? 0;
        const d = this.#devices.get(dev);
        if (!d) {
          if (this.#gone.has(dev)) return;
          throw new ProtocolError(ErrorCode.UNKNOWN_DEVICE, `Detach of device ${dev}, which is not attached`);
        }
        this.#devices.delete(dev);
        this.#gone.add(dev);
        this.#log.info(
          { dev, address: d.device.address, reason: ErrorCode[m.detach!.reason ?? 0] },
          'endpoint detached device',
        );
        d.device
          .remove(m.detach!.reason ?? ErrorCode.SHUTDOWN)
          .catch((e: Error) => this.#log.error({ err: e }, 'remove failed'));
        return;
      }
      case 'shadowUpdate':
      case 'writesApplied':
      case 'mmioReadCpl':
      case 'dmaRead':
      case 'dmaWrite':
      case 'interrupt':
      case 'pushRule':
      case 'virtqDone': {
        const dev = (m[kind] as { dev?: number | null }).dev ?? 0;
        const d = this.#devices.get(dev);
        if (!d) {
          if (this.#gone.has(dev)) return;
          throw new ProtocolError(
            ErrorCode.UNKNOWN_DEVICE,
            `${kind} for device ${dev}, which is not attached`,
          );
        }
        d.device.deliver(m);
        return;
      }
      case 'stats':
        return; // answers to our StatsRequests: the agent listens on the session itself
      case 'hello':
      case 'resume':
      case 'keepAlive':
      case 'error':
        return;
      case undefined:
        throw new ProtocolError(ErrorCode.UNKNOWN_MESSAGE, 'message with no body');
      default:
        throw new ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, `${kind} is sent by hosts, not endpoints`);
    }
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#closed) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      if (!this.#closed) this.#session.flush();
    });
  }

  /** Orderly: Detach{SHUTDOWN} for every device, removed from the channel. The caller then closes
   *  the session. */
  async detachAll(): Promise<void> {
    const all = [...this.#devices.entries()];
    this.#devices.clear();
    for (const [dev, d] of all) {
      this.#gone.add(dev);
      this.#session.send({ detach: { dev, reason: ErrorCode.SHUTDOWN, message: 'host shutting down' } });
      await d.device.remove(ErrorCode.SHUTDOWN);
    }
    if (!this.#session.closed) this.#session.flush();
  }

  /** The endpoint is declared unreachable: every device whose driver rides out a link down goes
   *  link down now; the others (their drivers would be unbound) wait for the resume. */
  async #unreachable(why: Error): Promise<void> {
    const parking = this.#parking!;
    if (this.#closed) return;
    const candidates = [...this.#devices.entries()].filter(([, d]) => d.device.linkDown);
    const recovers = await Promise.all(
      candidates.map(([, d]) => d.device.recoversFromLinkDown?.() ?? Promise.resolve(true)),
    );
    // The session may have ended (or the device gone) while we asked.
    const all = candidates.filter(([dev, d], i) => recovers[i] && this.#devices.get(dev) === d);
    const waiting = candidates.length - all.length;
    if (waiting > 0)
      this.#log.warn(
        { devices: waiting },
        'endpoint unreachable: devices whose drivers cannot ride out a link down wait for the session to resume',
      );
    if (this.#closed || all.length === 0) return;
    this.#parkedWhileOpen = true;
    for (const [dev] of all) {
      this.#devices.delete(dev);
      this.#gone.add(dev);
    }
    this.#log.warn(
      { devices: all.length, why: why.message },
      'endpoint unreachable: taking the devices’ links down until it is back (drivers quiesce, I/O waits)',
    );
    const kept = await Promise.all(
      all.map(([dev, d]) => parking.park(dev, { device: d.device, model: d.model, desc: d.desc })),
    );
    await Promise.all(
      all
        .filter((_, i) => !kept[i])
        .map(([, d]) =>
          d.device
            .remove(ErrorCode.TIMEOUT)
            .catch((e: Error) => this.#log.error({ err: e }, 'remove failed')),
        ),
    );
  }

  /** Resumed after devices went link down: the endpoint's instances of them are stale (their DMA,
   *  interrupts and completions went nowhere). Ending the session frees them on the endpoint; the
   *  next session attaches them again and the parked devices come back up. */
  async #resumed(): Promise<void> {
    if (!this.#parkedWhileOpen || this.#closed) return;
    await this.#parkingDone;
    if (this.#closed) return;
    this.#log.info('endpoint reachable again: ending this session to attach its devices afresh');
    void this.#session.close(
      new ProtocolError(
        ErrorCode.TIMEOUT,
        'the devices were taken link down while the endpoint was unreachable',
      ),
    );
  }

  async #sessionClosed(err?: Error): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    // The next session must find what went link down parked, and what came up as this one
    // ended parked again (#attach).
    await this.#parkingDone;
    await this.#attachDone;
    const reason = err ? ((err as ProtocolError).code ?? ErrorCode.TIMEOUT) : ErrorCode.SHUTDOWN;
    let all = [...this.#devices.entries()];
    this.#devices.clear();
    if (err && this.#parking) {
      // Lost, not closed: keep what can wait for the endpoint's return.
      const kept = await Promise.all(
        all.map(([dev, d]) => this.#parking!.park(dev, { device: d.device, model: d.model, desc: d.desc })),
      );
      all = all.filter((_, i) => !kept[i]);
    }
    if (all.length)
      this.#log.warn({ err: err?.message, devices: all.length }, 'session ended: removing devices');
    await Promise.all(
      all.map(([, d]) =>
        d.device.remove(reason).catch((e: Error) => this.#log.error({ err: e }, 'remove failed')),
      ),
    );
    this.#finish(this.#closeError);
  }
}
