// The `sim` channel: a software root complex. Devices become SimFunctions on bus "sim:00", sharing
// one simulated host memory and software IOMMU; drivers written against SimFunction (the test
// device's in test-driver.ts) play the part a kernel driver plays with pcinet.ko.
import pino, { type Logger } from 'pino';
import type { DeviceDescription } from '../../proto/wire.js';
import { ErrorCode, ProtocolError } from '../../proto/wire.js';
import type { Channel, ChannelDevice, DeviceSink } from '../channel.js';
import { SimFunction } from './function.js';
import { SimMemory, SoftIommu } from './iommu.js';

export interface SimOptions {
  /** Bytes of host memory; default 64 MiB. */
  memory?: number;
  log?: Logger;
}

/** Each function's BARs live in their own 4 GiB window above 64 GiB (addresses are only shown in
 *  config space; the sim never dereferences them). */
const WINDOW_BASE = 0x10_0000_0000n;
const WINDOW_SIZE = 0x1_0000_0000n;
const MAX_FUNCTIONS = 32;

export class SimChannel implements Channel {
  readonly name = 'sim';
  /** DmaWrite data may be read straight into sim host memory (SimFunction.placeDmaWrite). */
  readonly placesDmaWrites = true;
  readonly memory: SimMemory;
  readonly iommu: SoftIommu;
  readonly #log: Logger;
  readonly #functions = new Map<number, SimFunction>();
  #slots = 0;
  #closed = false;
  /** Called for every function that attached (drivers bind here). */
  onAttach: (fn: SimFunction) => void = () => {};

  constructor(o: SimOptions = {}) {
    this.memory = new SimMemory(o.memory ?? 64 << 20);
    this.iommu = new SoftIommu(this.memory);
    this.#log = o.log ?? pino({ level: 'silent' });
  }

  get functions(): SimFunction[] {
    return [...this.#functions.values()].filter((f) => !f.removed);
  }

  async attach(dev: number, desc: DeviceDescription, sink: DeviceSink): Promise<ChannelDevice> {
    if (this.#closed) throw new ProtocolError(ErrorCode.ATTACH_FAILED, 'the sim channel is closed');
    if (this.#functions.get(dev)?.removed === false)
      throw new ProtocolError(ErrorCode.ATTACH_FAILED, `device ${dev} is already attached`);
    if (this.#slots >= MAX_FUNCTIONS)
      throw new ProtocolError(ErrorCode.ATTACH_FAILED, `the sim bus is full (${MAX_FUNCTIONS} slots)`);
    const slot = this.#slots++;
    const address = `sim:00:${slot.toString(16).padStart(2, '0')}.0`;
    const fn = new SimFunction(
      dev,
      desc,
      address,
      sink,
      this.iommu,
      this.#log,
      WINDOW_BASE + BigInt(slot) * WINDOW_SIZE,
    );
    this.#functions.set(dev, fn);
    this.onAttach(fn);
    return fn;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.functions.map((f) => f.remove(ErrorCode.SHUTDOWN)));
  }
}
