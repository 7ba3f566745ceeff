// virtio-rng (virtio 1.2 §5.4, Entropy Device): one request queue, no configuration, no features.
// Every buffer the driver posts is filled with bytes from an injected EntropySource (node:crypto
// on the card). Linux's virtio-rng registers it as a hwrng: /dev/hwrng reads come from here.

import { deviceSpec } from '../spec.js';
import { type ChainRequest, VirtioPciDevice } from '../virtio/pci.js';

export const VIRTIO_ID_RNG = 4;
/** Entries of the request queue; Linux keeps one buffer posted at a time. */
export const RNG_QUEUE_SIZE = 64;
/** Bytes given for one buffer at most: a bound on what one request costs the card. */
export const RNG_MAX_REQUEST = 64 * 1024;

/** Where the bytes come from. */
export interface EntropySource {
  /** Fills `buf` with random bytes. */
  fill(buf: Uint8Array): void;
}

export class VirtioRng extends VirtioPciDevice<VirtioRng> {
  readonly #source: EntropySource;
  #bytes = 0;
  #requests = 0;

  constructor(o: { source: EntropySource }) {
    super({
      model: 'virtio-rng',
      deviceType: VIRTIO_ID_RNG,
      queues: [{ size: RNG_QUEUE_SIZE, serve: (d, req) => d.#fill(req) }],
    });
    this.#source = o.source;
  }

  #fill(req: ChainRequest): number {
    // §5.4.6.1: the driver gives writable buffers only. A readable part is ignored, not read.
    if (req.readable > 0) this.trace('virtio-rng.readable-buffer', { bytes: req.readable });
    const buf = new Uint8Array(Math.min(req.writable, RNG_MAX_REQUEST));
    this.#source.fill(buf);
    this.#requests++;
    this.#bytes += buf.length;
    return req.write(buf);
  }

  override counters(): Record<string, number> {
    return { requests: this.#requests, bytes: this.#bytes };
  }
}

export const virtioRngSpec = deviceSpec({
  name: 'virtio-rng',
  summary: 'a virtio entropy source: /dev/hwrng on the host reads random bytes made on this machine',
  options: {},
  create: (_o, card) => new VirtioRng({ source: card.entropy() }),
});
