// The data pages the NVMe controller returns: Identify (controller, namespace, namespace
// identification descriptors) and the log pages (SMART / health, firmware slot), built from the
// controller's identity and counters. NVMe 1.4: Identify is 5.15, log pages 5.14.1.
import { wr16, wr32, wr64 } from '../pci/index.js';
import { NVME_VENDOR_ID, OACS_DBBUF } from './spec.js';

/** What the pages say about the controller and its one namespace. */
export interface Identity {
  serial: string;
  model: string;
  firmware: string;
  blocks: number;
  lbaSize: number;
}

/** The counters the SMART / health log reports. */
export interface HealthCounters {
  readBytes: number;
  writtenBytes: number;
  readCommands: number;
  writeCommands: number;
  busyMs: number;
  resets: number;
  unsafeShutdowns: number;
  mediaErrors: number;
  errors: number;
}

/** An ASCII field of identify data: space padded, never NUL. */
export function ascii(b: Uint8Array, at: number, len: number, text: string): void {
  for (let i = 0; i < len; i++) b[at + i] = i < text.length ? text.charCodeAt(i) & 0x7f : 0x20;
}

/** Data units of the SMART log: thousands of 512-byte units, rounded up. */
function dataUnits(bytes: number): bigint {
  return BigInt(Math.ceil(bytes / 512_000));
}

/** `len` bytes derived from the serial (FNV-1a): the namespace's EUI-64, NGUID and UUID, stable
 *  across restarts of the endpoint. */
export function uid(serial: string, len: number, salt = 0): Uint8Array {
  const out = new Uint8Array(len);
  let h = 0x811c9dc5 ^ salt;
  for (let i = 0; i < len; i++) {
    for (const c of `${serial}/${i}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
    out[i] = h & 0xff;
  }
  return out;
}

/** Identify Controller (CNS 01h) into `b` (4 KiB, zeroed). `dbbuf`: offer Doorbell Buffer Config. */
export function identifyController(
  b: Uint8Array,
  id: Identity,
  o: { mdts: number; aerLimit: number; dbbuf: boolean },
): void {
  wr16(b, 0, NVME_VENDOR_ID);
  wr16(b, 2, NVME_VENDOR_ID);
  ascii(b, 4, 20, id.serial);
  ascii(b, 24, 40, id.model);
  ascii(b, 64, 8, id.firmware);
  b[72] = 6; // recommended arbitration burst
  b[77] = o.mdts;
  wr16(b, 78, 1); // controller id
  wr32(b, 80, 0x00010400); // version 1.4
  // Shadow doorbells only where the host keeps SQ event indices (docs/PUSH.md "Shadow doorbells").
  if (o.dbbuf) wr16(b, 256, OACS_DBBUF);
  b[258] = 3; // abort limit: 4
  b[259] = o.aerLimit - 1;
  b[260] = 0x03; // one firmware slot, read-only
  b[262] = 63; // error log entries: 64
  wr16(b, 266, 343); // warning temperature: 70 C
  wr16(b, 268, 358); // critical temperature: 85 C
  b[512] = 0x66; // SQ entries: 64 bytes
  b[513] = 0x44; // CQ entries: 16 bytes
  wr32(b, 516, 1); // namespaces
  wr16(b, 520, (1 << 2) | (1 << 3)); // ONCS: dataset management, write zeroes
  b[525] = 1; // volatile write cache present
  const nqn = `nqn.2026-11.dev.pcinet:nvme:${id.serial}`;
  ascii(b, 768, 256, nqn);
  for (let i = 768 + nqn.length; i < 1024; i++) b[i] = 0;
  wr16(b, 2048, 500); // power state 0: 5 W
}

/** Identify Namespace (CNS 00h) of the one namespace into `b` (4 KiB, zeroed). */
export function identifyNamespace(b: Uint8Array, id: Identity): void {
  const blocks = BigInt(id.blocks);
  wr64(b, 0, blocks);
  wr64(b, 8, blocks);
  wr64(b, 16, blocks);
  b[24] = 1; // NSFEAT: thin provisioning (deallocate frees space)
  b[25] = 0; // one LBA format
  b[26] = 0; // format 0 in use
  b[33] = 0x09; // DLFEAT: deallocated blocks read zeros; write zeroes may deallocate
  b.set(uid(id.serial, 16), 104); // NGUID
  b.set(uid(id.serial, 8), 120); // EUI-64
  b[130] = id.lbaSize === 4096 ? 12 : 9; // LBA format 0: data size 2^n
}

/** Namespace Identification Descriptor list (CNS 03h) into `b`: EUI-64, NGUID, UUID. */
export function nsDescriptors(b: Uint8Array, serial: string): void {
  b.set([1, 8, 0, 0], 0);
  b.set(uid(serial, 8), 4);
  b.set([2, 16, 0, 0], 12);
  b.set(uid(serial, 16), 16);
  b.set([3, 16, 0, 0], 32);
  b.set(uid(serial, 16, 0x40), 36);
}

/** SMART / Health Information (log 02h); `uptimeMs` gives the power-on hours. */
export function smartLog(s: HealthCounters, uptimeMs: number): Uint8Array {
  const b = new Uint8Array(512);
  wr16(b, 1, 300); // composite temperature: 27 C
  b[3] = 100; // available spare
  b[4] = 10; // spare threshold
  // 128-bit counters; the high halves stay zero.
  const u128 = (at: number, v: bigint) => wr64(b, at, v);
  u128(32, dataUnits(s.readBytes));
  u128(48, dataUnits(s.writtenBytes));
  u128(64, BigInt(s.readCommands));
  u128(80, BigInt(s.writeCommands));
  u128(96, BigInt(Math.floor(s.busyMs / 60_000)));
  u128(112, BigInt(1 + s.resets));
  u128(128, BigInt(Math.floor(uptimeMs / 3_600_000)));
  u128(144, BigInt(s.unsafeShutdowns));
  u128(160, BigInt(s.mediaErrors));
  u128(176, BigInt(s.errors));
  return b;
}

/** Firmware Slot Information (log 03h): slot 1 active, holding `firmware`. */
export function firmwareSlotLog(firmware: string): Uint8Array {
  const page = new Uint8Array(512);
  page[0] = 1;
  ascii(page, 8, 8, firmware);
  return page;
}
