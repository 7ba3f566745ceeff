// Tests' stand-in for pcinet.ko's side of a sealed kernel link.
import { createCipheriv } from 'node:crypto';
import { SEAL_TAG } from '../proto/kernel-abi.js';

/** What pcinet.ko does on a sealed link (kernel/link.c), written independently of endpoint/link.ts
 *  from the header's description: length, AES-256-GCM ciphertext, tag; the nonce is the
 *  direction byte, three zeros and the le64 frame number. */
export function sealFrame(key: Uint8Array, seq: number, text: Buffer, direction = 0): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(text.length + SEAL_TAG);
  const iv = Buffer.alloc(12);
  iv[0] = direction;
  iv.writeBigUInt64LE(BigInt(seq), 4);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(len);
  return Buffer.concat([len, c.update(text), c.final(), c.getAuthTag()]);
}
