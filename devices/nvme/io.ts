// The NVM command set (NVMe 1.4 §6): Read and Write, done at once where the data and the storage
// allow (no promise), Flush, Write Zeroes and Dataset Management (deallocate). Storage is the
// controller's BlockBackend; data moves through its Transfer (transfer.ts).
import { rd32, rd64 } from '../pci/index.js';
import { Abandoned, type CommandContext, type Done, fail, NSID, OK, ok } from './command.js';
import type { Seg } from './prp.js';
import { FEAT, IO, SC } from './spec.js';
import { MAX_TRANSFER, type Transfer } from './transfer.js';

/** The NVM commands of one controller. */
export class NvmCommands {
  readonly #c: CommandContext;
  readonly #data: Transfer;

  constructor(c: CommandContext) {
    this.#c = c;
    this.#data = c.data;
  }

  /** An NVM command: reads and writes through #read and #write (done at once where they can be),
   *  the others asynchronously. */
  run(sqe: Uint8Array, epoch: number): Done | Promise<Done> {
    const opcode = sqe[0]!;
    if (opcode !== IO.READ && opcode !== IO.WRITE) return this.#ioOther(sqe, epoch);
    if ((sqe[1]! >>> 6) & 3) return fail(SC.INVALID_FIELD); // SGLs: not offered
    if (rd32(sqe, 4) !== NSID) return fail(SC.INVALID_NS);
    const cdw12 = rd32(sqe, 48);
    const nlb = (cdw12 & 0xffff) + 1;
    // SLBA in plain numbers: past 2^53 (high dword past 2^21) it is past any namespace.
    const slbaHigh = rd32(sqe, 44);
    const slba = rd32(sqe, 40) + slbaHigh * 2 ** 32;
    if (slbaHigh >= 1 << 21 || slba + nlb > this.#c.blocks) return fail(SC.LBA_RANGE);
    const offset = slba * this.#c.lbaSize;
    const len = nlb * this.#c.lbaSize;
    if (len > MAX_TRANSFER) return fail(SC.INVALID_FIELD);
    if (opcode === IO.READ) return this.#read(sqe, offset, len, epoch);
    return this.#write(sqe, offset, len, (cdw12 & (1 << 30)) !== 0, epoch);
  }

  #read(sqe: Uint8Array, offset: number, len: number, epoch: number): Done | Promise<Done> {
    if (!this.#c.current(epoch)) throw new Abandoned(); // as backendCall: no new call after a reset
    const data = this.#c.backend.readNow?.(offset, len, this.#data.scratch(len));
    if (!data) return this.#readWait(sqe, offset, len, epoch);
    const segs = this.#data.dataPrps(sqe, len);
    // The transfer buffer is copied by the port as it is written; a backend's own buffer is
    // handed over. Data that must wait for its PRP list leaves the transfer buffer first.
    const own = !this.#data.inScratch(data);
    if (segs instanceof Promise) {
      const kept = own ? data : data.slice();
      return segs.then((s) => {
        this.#data.place(s, kept, epoch, true);
        return this.#readDone(len);
      });
    }
    this.#data.place(segs, data, epoch, own);
    return this.#readDone(len);
  }

  async #readWait(sqe: Uint8Array, offset: number, len: number, epoch: number): Promise<Done> {
    const data = await this.#c.backendCall(epoch, () => this.#c.backend.read(offset, len));
    await this.#data.toHost(sqe, data, epoch);
    return this.#readDone(len);
  }

  #readDone(len: number): Done {
    this.#c.stats.readCommands++;
    this.#c.stats.readBytes += len;
    return OK;
  }

  #write(sqe: Uint8Array, offset: number, len: number, fua: boolean, epoch: number): Done | Promise<Done> {
    const segs = this.#data.dataPrps(sqe, len);
    if (segs instanceof Promise) return segs.then((s) => this.#writeFrom(s, offset, len, fua, epoch));
    return this.#writeFrom(segs, offset, len, fua, epoch);
  }

  /** The data from the segments to storage; from the transfer buffer only within this call. */
  #writeFrom(segs: Seg[], offset: number, len: number, fua: boolean, epoch: number): Done | Promise<Done> {
    const data = this.#data.gather(segs, len);
    if (data instanceof Promise) return data.then((d) => this.#store(offset, d, fua, epoch));
    return this.#store(offset, data, fua, epoch);
  }

  /** A write's data to storage, then a flush if FUA or no volatile write cache. */
  #store(offset: number, data: Uint8Array, fua: boolean, epoch: number): Done | Promise<Done> {
    // Its data may have come after a reset: then it is abandoned here, before the backend.
    if (!this.#c.current(epoch)) throw new Abandoned();
    if (!this.#c.backend.writeNow?.(offset, data))
      return this.#storeWait(offset, this.#data.inScratch(data) ? data.slice() : data, fua, epoch);
    if (fua || this.#c.features.get(FEAT.VOLATILE_WC) === 0)
      return this.#c
        .backendCall(epoch, () => this.#c.backend.flush())
        .then(() => this.#writeDone(data.length));
    return this.#writeDone(data.length);
  }

  async #storeWait(offset: number, data: Uint8Array, fua: boolean, epoch: number): Promise<Done> {
    await this.#c.backendCall(epoch, () => this.#c.backend.write(offset, data));
    if (fua || this.#c.features.get(FEAT.VOLATILE_WC) === 0)
      await this.#c.backendCall(epoch, () => this.#c.backend.flush());
    return this.#writeDone(data.length);
  }

  #writeDone(len: number): Done {
    this.#c.stats.writeCommands++;
    this.#c.stats.writtenBytes += len;
    return OK;
  }

  /** NVM commands other than Read and Write. */
  async #ioOther(sqe: Uint8Array, epoch: number): Promise<Done> {
    const opcode = sqe[0]!;
    const nsid = rd32(sqe, 4);
    if ((sqe[1]! >>> 6) & 3) return fail(SC.INVALID_FIELD);
    if (opcode === IO.FLUSH) {
      if (nsid !== NSID && nsid !== 0xffffffff) return fail(SC.INVALID_NS);
      this.#c.stats.otherCommands++;
      await this.#c.backendCall(epoch, () => this.#c.backend.flush());
      return ok();
    }
    if (opcode !== IO.WRITE_ZEROES && opcode !== IO.DSM) {
      this.#c.trace('nvme.io.bad-opcode', { opcode });
      return fail(SC.INVALID_OPCODE);
    }
    if (nsid !== NSID) return fail(SC.INVALID_NS);
    if (opcode === IO.DSM) return this.#dsm(sqe, epoch);
    const slba = rd64(sqe, 40);
    const nlb = (rd32(sqe, 48) & 0xffff) + 1;
    if (slba + BigInt(nlb) > BigInt(this.#c.blocks)) return fail(SC.LBA_RANGE);
    this.#c.stats.otherCommands++;
    await this.#c.backendCall(epoch, () =>
      this.#c.backend.writeZeroes(Number(slba) * this.#c.lbaSize, nlb * this.#c.lbaSize),
    );
    return ok();
  }

  async #dsm(sqe: Uint8Array, epoch: number): Promise<Done> {
    const ranges = (rd32(sqe, 40) & 0xff) + 1;
    const attrs = rd32(sqe, 44);
    this.#c.stats.otherCommands++;
    const list = await this.#data.fromHost(sqe, ranges * 16);
    if (!(attrs & 4)) return ok(); // only deallocate does anything here
    for (let i = 0; i < ranges; i++) {
      const nlb = rd32(list, i * 16 + 4);
      const slba = rd64(list, i * 16 + 8);
      if (nlb === 0) continue;
      if (slba + BigInt(nlb) > BigInt(this.#c.blocks)) return fail(SC.LBA_RANGE);
      await this.#c.backendCall(epoch, () =>
        this.#c.backend.discard(Number(slba) * this.#c.lbaSize, nlb * this.#c.lbaSize),
      );
    }
    return ok();
  }
}
