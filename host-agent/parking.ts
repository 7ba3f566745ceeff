// Devices kept on the bus while their endpoint is away. When the agent reconnects and its endpoint
// is declared unreachable (the session's dead-peer timeout, a failed redial) or the session ends
// for good (the endpoint was restarted and refused to resume), a device whose channel can do it
// goes "link down" instead of being removed: the driver hears of it through PCI error recovery,
// quiesces and keeps its state (a mounted filesystem on an NVMe disk with its I/O queued, a
// configured network interface). When the endpoint is back and attaches the same device again,
// the parked device comes back "link up" with the new instance behind it; the driver resets it and
// retries what it had queued. Devices that do not come back within `lossMs` (`--ctrl-loss-tmo`,
// as NVMe/TCP's ctrl_loss_tmo; 0: wait forever), or that the returning endpoint no longer has, are
// removed as before.
import type { Logger } from 'pino';
import { type DeviceDescription, ErrorCode } from '../proto/wire.js';
import type { ChannelDevice } from './channel.js';

export interface ParkedDevice {
  device: ChannelDevice;
  model: string;
  desc: DeviceDescription;
  /** When its link went down (Date.now()); set by park(). */
  downAt?: number;
}

/** How long a device waits link down for its endpoint by default: NVMe/TCP's ctrl_loss_tmo. */
export const DEFAULT_LOSS_MS = 600_000;

export class Parking {
  readonly #parked = new Map<number, ParkedDevice>();
  readonly #lossMs: number;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | undefined;

  /** `lossMs`: parked devices are removed this long after the first of them went down; 0 never. */
  constructor(o: { lossMs: number; log: Logger }) {
    this.#lossMs = o.lossMs;
    this.#log = o.log;
  }

  get size(): number {
    return this.#parked.size;
  }

  /** When the device parked longest went link down, if any is parked. */
  get downSince(): number | undefined {
    let first: number | undefined;
    for (const p of this.#parked.values()) if (first === undefined || p.downAt! < first) first = p.downAt;
    return first;
  }

  /** When parked devices are removed unless their endpoint is back (undefined: never, or none). */
  get removeAt(): number | undefined {
    const since = this.downSince;
    return since === undefined || this.#lossMs === 0 ? undefined : since + this.#lossMs;
  }

  /** The devices waiting, link down (for `pcinet status`). */
  get list(): { dev: number; model: string; address: string }[] {
    return [...this.#parked.entries()].map(([dev, p]) => ({
      dev,
      model: p.model,
      address: p.device.address,
    }));
  }

  /** Takes the device's link down and keeps it; false if the channel cannot (remove it then). */
  async park(dev: number, p: ParkedDevice): Promise<boolean> {
    if (!p.device.linkDown) return false;
    try {
      await p.device.linkDown();
    } catch (e) {
      this.#log.error(
        { dev, address: p.device.address, err: (e as Error).message },
        'cannot take the link down',
      );
      return false;
    }
    this.#parked.set(dev, { ...p, downAt: Date.now() });
    this.#log.warn(
      { dev, model: p.model, address: p.device.address, ctrlLossTmoS: this.#lossMs / 1000 },
      this.#lossMs
        ? 'endpoint lost: device kept on the bus, link down, until it is back or ctrl-loss-tmo ends'
        : 'endpoint lost: device kept on the bus, link down, until it is back',
    );
    if (this.#lossMs > 0)
      this.#timer ??= setTimeout(() => {
        this.#timer = undefined;
        void this.evictAll(`the endpoint did not come back within ctrl-loss-tmo (${this.#lossMs / 1000} s)`);
      }, this.#lossMs);
    return true;
  }

  /** The parked device `dev` if `desc` describes the same device; an incompatible one is removed. */
  async take(dev: number, desc: DeviceDescription, model: string): Promise<ParkedDevice | undefined> {
    const p = this.#parked.get(dev);
    if (!p) return undefined;
    this.#parked.delete(dev);
    this.#stopTimerIfEmpty();
    const why = p.model !== model ? `model ${model}, was ${p.model}` : differs(p.desc, desc);
    if (why === undefined) return p;
    this.#log.warn({ dev, address: p.device.address, why }, 'the endpoint came back with another device');
    await this.#remove(p);
    return undefined;
  }

  /** Removes every parked device (surprise removal). */
  async evictAll(why: string): Promise<void> {
    const all = [...this.#parked.values()];
    this.#parked.clear();
    this.#stopTimerIfEmpty();
    if (all.length) this.#log.warn({ devices: all.length, why }, 'removing parked devices');
    await Promise.all(all.map((p) => this.#remove(p)));
  }

  async #remove(p: ParkedDevice): Promise<void> {
    await p.device
      .remove(ErrorCode.TIMEOUT)
      .catch((e: Error) => this.#log.error({ err: e.message, address: p.device.address }, 'remove failed'));
  }

  #stopTimerIfEmpty(): void {
    if (this.#parked.size > 0 || !this.#timer) return;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

const bytesEqual = (a?: Uint8Array | null, b?: Uint8Array | null) =>
  Buffer.compare(Buffer.from(a ?? []), Buffer.from(b ?? [])) === 0;

const rangesKey = (r?: readonly { offset?: unknown; length?: unknown }[] | null) =>
  (r ?? []).map((x) => `${String(x.offset)}+${String(x.length)}`).join(',');

/** Why `b` is not the device `a` describes (its driver could not simply reset it), or undefined. */
export function differs(a: DeviceDescription, b: DeviceDescription): string | undefined {
  if ((a.msixVectors ?? 0) !== (b.msixVectors ?? 0)) return 'MSI-X vector count';
  if (!bytesEqual(a.config, b.config)) return 'config space';
  if (!bytesEqual(a.configWmask, b.configWmask) || !bytesEqual(a.configW1cmask, b.configW1cmask))
    return 'config write masks';
  const bars = (d: DeviceDescription) =>
    (d.bars ?? [])
      .map(
        (x) =>
          `${x.index}:${String(x.size)}:${x.kind}:${x.prefetchable ?? false}:` +
          `${rangesKey(x.volatile)}:${rangesKey(x.doorbell)}`,
      )
      .join(';');
  if (bars(a) !== bars(b)) return 'BAR layout';
  return undefined;
}
