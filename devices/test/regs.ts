// pcinet test device: register map. Shared by the device model (devices/test/device.ts), the
// simulated host's driver (host-agent/sim/test-driver.ts) and the kernel test driver (test/kmod/).
// docs/devices.md documents it for humans. In the spirit of Linux's pci-epf-test.

/** Experimental IDs: 0x7063 is "pc". Not assigned by PCI-SIG; synthetic devices only. */
export const TEST_VENDOR_ID = 0x7063;
export const TEST_DEVICE_ID = 0x0001;
/** Class 0xff (unassigned), subclass 0, prog-if 0. */
export const TEST_CLASS_CODE = 0xff0000;
export const TEST_REVISION = 1;

/** BAR 0: registers (64-bit memory BAR, 16 KiB). MSI-X table and PBA live in BAR 0 too. */
export const TEST_REG_BAR = 0;
export const TEST_REG_BAR_SIZE = 0x4000;
/** BAR 2: plain memory (64-bit memory BAR, 64 KiB): the driver may read and write it freely.
 *  `--device test:mem=SIZE,mem32=on,prefetch=on` makes it larger (up to 256 MiB, pcinet.ko's
 *  largest BAR), 32-bit or prefetchable; drivers take its size from the BAR. */
export const TEST_MEM_BAR = 2;
export const TEST_MEM_BAR_SIZE = 0x10000;
export const TEST_MAX_MEM_BAR_SIZE = 256 << 20;

export const TEST_MSIX_TABLE = 0x2000;
export const TEST_MSIX_PBA = 0x3000;
/** Default number of MSI-X vectors; `--device test:vectors=N` (1..64) changes it. */
export const TEST_DEFAULT_VECTORS = 8;
export const TEST_MAX_VECTORS = 64;

/** Register offsets in BAR 0. All registers are 32-bit little-endian unless noted. */
export const REG = {
  MAGIC: 0x00, // ro  TEST_MAGIC
  VERSION: 0x04, // ro  1
  SCRATCH: 0x08, // rw  plain storage
  COMMAND: 0x10, // rw  writing a CMD_* value starts that command
  STATUS: 0x14, // rw1c STATUS_* bits; write 1 to clear
  ARG: 0x18, // rw  command argument (vector for CMD_RAISE_MSIX, seed for CMD_DMA_WRITE[_COPY])
  IRQ_VECTOR: 0x1c, // rw  vector raised when a command completes; IRQ_NONE for none
  SRC_ADDR: 0x20, // rw  64-bit: host IOVA read by CMD_DMA_READ[_COPY]
  DST_ADDR: 0x28, // rw  64-bit: host IOVA written by CMD_DMA_WRITE[_COPY]
  SIZE: 0x30, // rw  bytes for the DMA commands (1..TEST_MAX_DMA)
  CHECKSUM: 0x34, // ro  CRC-32 (zlib/IEEE) of the bytes CMD_DMA_READ read
  ERROR: 0x38, // ro  TEST_ERR code of the last failed command (0 when the last succeeded)
  VECTORS: 0x3c, // ro  number of MSI-X vectors
  COUNTER: 0x40, // ro, volatile: increments on every read (proves reads reach the device)
  IRQ_DOORBELL: 0x44, // wo, doorbell: writing N raises vector N at once
  DONE_COUNT: 0x48, // ro  commands completed since reset
} as const;

export const TEST_MAGIC = 0x544e4350; // "PCNT" little-endian
export const TEST_VERSION = 1;
export const IRQ_NONE = 0xffffffff;
/** Largest DMA command; 4 MiB keeps a selftest quick while crossing many MAX_DMA_CHUNK splits. */
export const TEST_MAX_DMA = 4 << 20;

/** Most raises of one RAISE_BURST: twice pcinet.ko's raise ring (4096), so a burst can fill it. */
export const TEST_MAX_BURST = 8192;

export const CMD = {
  RAISE_MSIX: 1, // raise vector ARG
  DMA_READ: 2, // read SIZE bytes at SRC_ADDR, CRC-32 into CHECKSUM
  DMA_WRITE: 3, // write SIZE bytes of testPattern(ARG) to DST_ADDR
  RAISE_BURST: 4, // raise vector ARG SIZE times at once (1..TEST_MAX_BURST), then complete
  // The DMA commands without the device's own per-byte work, for measuring what moving memory
  // costs (an NVMe backend's copy, a NIC's frames do no more): bench/transport.
  DMA_READ_COPY: 5, // read SIZE bytes at SRC_ADDR as DMA_READ does; compute nothing (CHECKSUM unchanged)
  DMA_WRITE_COPY: 6, // write what DMA_WRITE writes, testPattern(ARG) up to SIZE, from a pattern made once per ARG
} as const;

export const STATUS = {
  DONE: 1 << 0, // the last command completed
  ERROR: 1 << 1, // the last command failed; ERROR holds the code
  BUSY: 1 << 2, // a command is running (read-only bit)
} as const;

/** Values of ERROR: the numbers of proto/pcinet.proto's ErrorCode, so one code means the same in the
 *  register and on the wire (test/kmod's TEST_ERR_*; endpoint/describe.test.ts checks they match). */
export const TEST_ERR = {
  OK: 0,
  BAD_ARGUMENT: 12, // a command argument is out of range
  DMA_FAULT: 13, // the host refused the DMA read
} as const;
export type TestErr = (typeof TEST_ERR)[keyof typeof TEST_ERR];

/** The bytes CMD_DMA_WRITE writes: a xorshift32 stream seeded by ARG (seed 0 is treated as 1), each
 *  32-bit state stored little-endian. */
export function testPattern(seed: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  const words = len >>> 2;
  // Whole words through a Uint32Array on little-endian machines (4x faster than bytes); the tail,
  // and everything on big-endian machines, byte by byte.
  const fast = LITTLE_ENDIAN ? words : 0;
  const w = new Uint32Array(out.buffer, out.byteOffset, fast);
  for (let i = 0; i < fast; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    w[i] = x;
  }
  for (let i = fast * 4; i < len; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    for (let b = 0; b < 4 && i + b < len; b++) out[i + b] = (x >>> (8 * b)) & 0xff;
  }
  return out;
}

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
