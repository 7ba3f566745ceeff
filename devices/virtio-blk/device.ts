// virtio-blk (virtio 1.2 §5.2, Block Device): one request queue; each request is a 16-byte header
// (type, reserved, sector), its data, and a status byte the device writes last. Storage is the
// injected BlockBackend NVMe uses (a file, a block device, memory); requests run concurrently.
// Offered: SEG_MAX, BLK_SIZE, FLUSH (a volatile write cache: flush is fdatasync), DISCARD and
// WRITE_ZEROES (hole punching). Guest mistakes (a bad range, size or type) are traced and answered
// IOERR or UNSUPP; backend errors are IOERR.
import { DmaError } from '../host-port.js';
import { type BlockBackend, BlockError } from '../nvme/backend.js';
import type { Register } from '../pci/index.js';
import { rd32, rd64 } from '../pci/le.js';
import { blockOptions, blockSource, deviceSpec, textOption } from '../spec.js';
import { type ChainRequest, VirtioPciDevice } from '../virtio/pci.js';

export const VIRTIO_ID_BLOCK = 2;
/** Feature bits (VIRTIO_BLK_F_*), request types (VIRTIO_BLK_T_*), statuses (VIRTIO_BLK_S_*). */
export const VIRTIO_BLK_F = { SEG_MAX: 2, BLK_SIZE: 6, FLUSH: 9, DISCARD: 13, WRITE_ZEROES: 14 } as const;
export const BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const SECTOR = 512;
export const BLK_QUEUE_SIZE = 256;
/** Data bytes one request may carry, a bound on what a request holds in the card's memory; Linux's
 *  default max_sectors_kb (1280) stays well under it. */
export const BLK_MAX_IO = 4 << 20;
/** Sectors one discard or write-zeroes request may cover (2 GiB, one fallocate), in one range. */
export const BLK_MAX_ZERO_SECTORS = 0x400000;
const ID_BYTES = 20;
const HDR = 16;
/** Config layout (§5.2.4); the discard and write-zeroes limits follow BLK_SIZE. */
export const BLK_CFG = { CAPACITY: 0, SEG_MAX: 12, BLK_SIZE: 20, MAX_DISCARD_SECTORS: 36 } as const;
type Ro = [string, number, 1 | 4 | 8, number | bigint];
const ro = ([name, at, size, reset]: Ro) => ({ name, at, size, access: 'ro', reset }) as Register<VirtioBlk>;
const LIMITS: Ro[] = [
  ['SEG_MAX', BLK_CFG.SEG_MAX, 4, BLK_QUEUE_SIZE - 2], // a header and a status besides
  ['BLK_SIZE', BLK_CFG.BLK_SIZE, 4, SECTOR],
  ['MAX_DISCARD_SECTORS', BLK_CFG.MAX_DISCARD_SECTORS, 4, BLK_MAX_ZERO_SECTORS],
  ['MAX_DISCARD_SEG', 40, 4, 1],
  ['DISCARD_SECTOR_ALIGNMENT', 44, 4, 8], // 4 KiB, what a file system punches
  ['MAX_WRITE_ZEROES_SECTORS', 48, 4, BLK_MAX_ZERO_SECTORS],
  ['MAX_WRITE_ZEROES_SEG', 52, 4, 1],
  ['WRITE_ZEROES_MAY_UNMAP', 56, 1, 1],
];

export class VirtioBlk extends VirtioPciDevice<VirtioBlk> {
  readonly backend: BlockBackend;
  readonly serial: string;
  readonly #c = { reads: 0, writes: 0, flushes: 0, discards: 0, errors: 0 };

  constructor(o: { backend: BlockBackend; serial?: string }) {
    const { size, name } = o.backend;
    if (size < SECTOR || size % SECTOR)
      throw new Error(`virtio-blk: ${name} has ${size} bytes, not a multiple of 512`);
    super({
      model: 'virtio-blk',
      deviceType: VIRTIO_ID_BLOCK,
      features: Object.values(VIRTIO_BLK_F).reduce((f, b) => f | (1n << BigInt(b)), 0n),
      queues: [{ size: BLK_QUEUE_SIZE, serve: (d, req) => d.#request(req) }],
      config: [ro(['CAPACITY', BLK_CFG.CAPACITY, 8, BigInt(size / SECTOR)]), ...LIMITS.map(ro)],
      configSize: 60,
    });
    this.backend = o.backend;
    this.serial = o.serial ?? 'PCINET0001';
  }

  override counters(): Record<string, number> {
    return { ...this.#c };
  }

  /** One request: the status byte is the chain's last writable byte; returns bytes written. */
  async #request(req: ChainRequest): Promise<number> {
    if (req.readable < HDR || req.writable < 1) {
      this.trace('virtio-blk.req.malformed', { readable: req.readable, writable: req.writable });
      return 0;
    }
    let [status, written]: number[] = [BLK_S.IOERR, 0];
    try {
      [status, written] = await this.#do(req, await req.read());
    } catch (e) {
      if (e instanceof DmaError) this.trace('virtio-blk.req.dma-refused', { err: e.message });
      else if (!(e instanceof BlockError)) throw e;
      else this.trace('virtio-blk.backend.error', { code: e.code, err: e.message });
      this.#c.errors++;
    }
    req.write(Uint8Array.of(status), req.writable - 1);
    return written + 1;
  }

  /** Runs a request whose readable bytes are `data`: [status, data bytes written]. */
  async #do(req: ChainRequest, data: Uint8Array): Promise<[number, number]> {
    const [b, type, out, room] = [this.backend, rd32(data, 0), data.subarray(HDR), req.writable - 1];
    if (type === BLK_T.IN || type === BLK_T.OUT) {
      const len = type === BLK_T.IN ? room : out.length;
      const at = this.#range(rd64(data, 8), len, BLK_MAX_IO);
      if (at === undefined) return [BLK_S.IOERR, 0];
      if (type === BLK_T.IN) {
        req.write(await b.read(at, len));
        this.#c.reads++;
        return [BLK_S.OK, len];
      }
      await b.write(at, out);
      if (!this.has(VIRTIO_BLK_F.FLUSH)) await b.flush(); // no write cache negotiated: write through
      this.#c.writes++;
    } else if (type === BLK_T.FLUSH) {
      await b.flush();
      this.#c.flushes++;
    } else if (type === BLK_T.GET_ID) {
      const id = new Uint8Array(ID_BYTES); // NUL-padded; no NUL when it fills all 20
      id.set(new TextEncoder().encode(this.serial).subarray(0, ID_BYTES));
      return [BLK_S.OK, req.write(id.subarray(0, Math.min(room, ID_BYTES)))];
    } else if (type === BLK_T.DISCARD || type === BLK_T.WRITE_ZEROES) {
      const zero = type === BLK_T.WRITE_ZEROES;
      if (!this.has(zero ? VIRTIO_BLK_F.WRITE_ZEROES : VIRTIO_BLK_F.DISCARD))
        return this.#refuse(BLK_S.UNSUPP, 'unsupported', { type });
      // One range (MAX_*_SEG); flags: bit 0 (unmap) is defined for write zeroes only (§5.2.6.2).
      if (out.length !== HDR) return this.#refuse(BLK_S.IOERR, 'bad-segments', { type, bytes: out.length });
      const flags = rd32(out, 12);
      if (flags & ~(zero ? 1 : 0)) return this.#refuse(BLK_S.UNSUPP, 'bad-flags', { type, flags });
      const len = rd32(out, 8) * SECTOR;
      const at = this.#range(rd64(out, 0), len, BLK_MAX_ZERO_SECTORS * SECTOR);
      if (at === undefined) return [BLK_S.IOERR, 0];
      await (zero ? b.writeZeroes(at, len) : b.discard(at, len));
      this.#c.discards++;
    } else return this.#refuse(BLK_S.UNSUPP, 'unsupported', { type });
    return [BLK_S.OK, 0];
  }

  /** A guest mistake: traced (virtio-blk.req.WHY), answered `status`. */
  #refuse(status: number, why: string, fields: Record<string, unknown>): [number, number] {
    this.trace(`virtio-blk.req.${why}`, fields);
    return [status, 0];
  }

  /** Byte offset of `len` bytes at `sector`, or undefined (traced) when they do not fit. */
  #range(sector: bigint, len: number, max: number): number | undefined {
    const at = sector <= BigInt(this.backend.size / SECTOR) ? Number(sector) * SECTOR : Number.NaN;
    if (len % SECTOR === 0 && len <= max && at + len <= this.backend.size) return at;
    this.trace('virtio-blk.req.bad-range', { sector: sector.toString(), bytes: len });
    return undefined;
  }
}

export const virtioBlkSpec = deviceSpec({
  name: 'virtio-blk',
  summary: 'a virtio disk stored in a file, a block device or memory (docs/devices.md)',
  options: { ...blockOptions, serial: textOption(ID_BYTES, 'serial number (default PCINET0001)') },
  create: (o, card) => new VirtioBlk({ backend: card.block(blockSource('virtio-blk', o)), serial: o.serial }),
});
