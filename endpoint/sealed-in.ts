// A sealed kernel link's inbound side (docs/KERNEL-ABI.md, "The kernel link"): frames — a le32
// length, the AES-256-GCM ciphertext of whole records, the tag — read into one buffer of ours and
// opened once whole. The socket reads straight into that buffer, so a frame of up to 256 KiB that
// arrives in many reads (slirp and real networks hand it over a segment at a time) is copied once;
// joining the pieces at every read cost the TLS endpoint ~5 ms per 128 KiB write.
import { createDecipheriv } from 'node:crypto';
import { AbiError, HDR, SEAL_MAX, SEAL_TAG } from '../proto/kernel-abi.js';
import { wholeRecords } from '../proto/kernel-link.js';

/** Room for one read beyond the longest frame, so a partial frame never stops reading. */
const READ_BYTES = 64 << 10;
const MAX_FRAME = 4 + SEAL_MAX + SEAL_TAG;

export class SealedFrames {
  readonly #key: Uint8Array;
  #seq = 0n;
  readonly #buf = Buffer.allocUnsafeSlow(MAX_FRAME + READ_BYTES);
  /** Bytes of #buf holding frames not opened yet (at most one, partial, between reads). */
  #have = 0;
  #given: Uint8Array | undefined;

  /** `key`: the link's; frames from pcinet.ko are numbered from 0 (nonce direction 0). */
  constructor(key: Uint8Array) {
    this.#key = key;
  }

  /** Where the next read goes: the free end of our buffer. */
  readBuffer(): Uint8Array {
    this.#given = this.#buf.subarray(this.#have);
    return this.#given;
  }

  /** `n` bytes were read into `into`: the records of the frames they complete, opened (one
   *  buffer per frame). `into` is normally what readBuffer() returned last; any other buffer is
   *  copied in. Throws AbiError for a frame no link sends, Error for one that fails
   *  authentication. */
  filled(into: Uint8Array, n: number): Buffer[] {
    if (into !== this.#given) return this.push(into.subarray(0, n));
    this.#given = undefined;
    this.#have += n;
    return this.#open();
  }

  /** `chunk` arrived (a socket's 'data'): as filled(). */
  push(chunk: Uint8Array): Buffer[] {
    const out: Buffer[] = [];
    for (let at = 0; at < chunk.length; ) {
      const k = Math.min(this.#buf.length - this.#have, chunk.length - at);
      this.#buf.set(chunk.subarray(at, at + k), this.#have);
      this.#have += k;
      at += k;
      out.push(...this.#open());
    }
    return out;
  }

  #open(): Buffer[] {
    const out: Buffer[] = [];
    let at = 0;
    while (this.#have - at >= 4) {
      const len = this.#buf.readUInt32LE(at);
      if (len < SEAL_TAG + HDR || len > SEAL_MAX + SEAL_TAG)
        throw new AbiError(`sealed frame of ${len} bytes`);
      if (this.#have - at - 4 < len) break;
      const d = createDecipheriv('aes-256-gcm', this.#key, sealNonce(0, this.#seq++));
      d.setAAD(this.#buf.subarray(at, at + 4));
      d.setAuthTag(this.#buf.subarray(at + 4 + len - SEAL_TAG, at + 4 + len));
      const text = Buffer.concat([d.update(this.#buf.subarray(at + 4, at + 4 + len - SEAL_TAG)), d.final()]);
      if (wholeRecords(text) !== text.length) throw new AbiError('a sealed frame ends inside a record');
      out.push(text);
      at += 4 + len;
    }
    if (at > 0) {
      this.#buf.copyWithin(0, at, this.#have);
      this.#have -= at;
    }
    return out;
  }
}

/** A sealed frame's nonce: direction (0 module to endpoint, 1 back), three zeros, le64 number. */
export function sealNonce(direction: 0 | 1, seq: bigint): Buffer {
  const n = Buffer.alloc(12);
  n[0] = direction;
  n.writeBigUInt64LE(seq, 4);
  return n;
}
