// For unit tests: records a model's session as replay records (records.ts), the way a trace on the
// endpoint records one — what the host (a FakeBus with its FakeHost) sends the device, and what the
// device sends back, with its shadow updates ahead of each message as the runtime sends them.
// Wrap a model in a Recorder, drive it as usual, then replay `recording()`.
import type { DeviceModel, DirtyRange, HostPort } from '../host-port.js';
import type { RecordAt, ReplayRecord, ReplayRecording } from './records.js';

type Host = Extract<ReplayRecord, { toHost: false }>;
type Device = Extract<ReplayRecord, { toHost: true }>;
type Without<T> = T extends unknown ? Omit<T, keyof RecordAt | 'toHost'> : never;

export class Recorder implements DeviceModel {
  readonly records: ReplayRecord[] = [];
  /** Shadow updates taken from the model to be recorded in order, not yet handed to the bus. */
  #taken: DirtyRange[] = [];
  #tag = 0;
  #dmaTag = 0;

  constructor(readonly inner: DeviceModel) {}

  get description() {
    return this.inner.description;
  }

  /** What was recorded, as the endpoint would load it from the capture. */
  recording(source = 'recorder'): ReplayRecording {
    return { source, description: this.inner.description, records: [...this.records], attachN: 0 };
  }

  #n(): RecordAt {
    const n = this.records.length + 1;
    return { n, us: n * 10 };
  }
  #host(r: Without<Host>): void {
    this.records.push({ ...this.#n(), toHost: false, ...r } as ReplayRecord);
  }
  #device(r: Without<Device>): void {
    this.#shadow();
    this.records.push({ ...this.#n(), toHost: true, ...r } as ReplayRecord);
  }
  /** The model's changed BAR bytes, recorded (and kept for the bus). */
  #shadow(): void {
    for (const d of this.inner.takeDirty()) {
      this.records.push({
        ...this.#n(),
        toHost: true,
        kind: 'shadow',
        bar: d.bar,
        offset: d.offset,
        data: d.data.slice(),
      });
      this.#taken.push(d);
    }
  }

  attach(port: HostPort): void {
    const p: HostPort = {
      ...port,
      dmaRead: async (iova, len) => {
        const tag = this.#dmaTag++;
        this.#device({ kind: 'dmaRead', tag, iova, len });
        try {
          const data = await port.dmaRead(iova, len);
          this.#host({ kind: 'dmaReadCpl', tag, ok: true, data: data.slice() });
          return data;
        } catch (e) {
          this.#host({ kind: 'dmaReadCpl', tag, ok: false, data: new Uint8Array(0) });
          throw e;
        }
      },
      dmaWrite: (iova, data) => {
        this.#device({ kind: 'dmaWrite', iova, data: data.slice() });
        port.dmaWrite(iova, data);
      },
      raiseMsix: (vector) => {
        this.#device({ kind: 'interrupt', vector });
        port.raiseMsix(vector);
      },
      setPushRule: (id, rule) => {
        this.#device({ kind: 'pushRule', id, rule });
        port.setPushRule(id, rule);
      },
      trace: (e, f) => port.trace(e, f),
      changed: () => port.changed(),
      drain: () => port.drain(),
    };
    if (port.virtqRound) {
      const round = port.virtqRound.bind(port);
      p.virtqRound = (r) => {
        this.#device({ kind: 'virtqRound', round: r });
        round(r);
      };
    }
    this.inner.attach(p);
  }

  detach(): void {
    this.#host({ kind: 'detach' });
    this.inner.detach();
  }

  mmioWrite(bar: number, offset: number, data: Uint8Array): void {
    this.#host({ kind: 'mmioWrite', bar, offset, data: data.slice() });
    this.inner.mmioWrite(bar, offset, data);
    this.#shadow();
  }

  mmioRead(bar: number, offset: number, size: number): Uint8Array {
    const tag = this.#tag++;
    this.#host({ kind: 'mmioRead', tag, bar, offset, size });
    const data = this.inner.mmioRead(bar, offset, size);
    this.#device({ kind: 'mmioReadCpl', tag, ok: true, data: data.slice() });
    return data;
  }

  configWrite(offset: number, size: number, value: number): void {
    this.#host({ kind: 'configWrite', offset, size, value });
    this.inner.configWrite(offset, size, value);
    this.#shadow();
  }

  reset(): void {
    this.#host({ kind: 'functionReset' });
    this.inner.reset();
    this.#shadow();
  }

  takeDirty(): DirtyRange[] {
    this.#shadow();
    const d = this.#taken;
    this.#taken = [];
    return d;
  }

  counters(): Record<string, number> {
    return this.inner.counters();
  }
}
