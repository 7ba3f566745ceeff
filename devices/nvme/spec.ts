// NVMe 1.4 constants the controller model uses: register offsets and fields, opcodes, status codes,
// feature and log identifiers. Names follow the specification's (NVM Express Base Specification 1.4,
// sections 3.1 registers, 5 admin commands, 6 NVM commands, figure 126ff status codes).

export const NVME_VENDOR_ID = 0x7063; // pcinet's, shared with the test device
export const NVME_DEVICE_ID = 0x0002;
export const NVME_CLASS_CODE = 0x010802; // mass storage, NVM, NVMe I/O controller

export const REG = {
  CAP: 0x00,
  VS: 0x08,
  INTMS: 0x0c,
  INTMC: 0x10,
  CC: 0x14,
  CSTS: 0x1c,
  NSSR: 0x20,
  AQA: 0x24,
  ASQ: 0x28,
  ACQ: 0x30,
  DOORBELLS: 0x1000,
} as const;

export const BAR_SIZE = 0x4000;
export const MSIX_TABLE = 0x2000;
export const MSIX_PBA = 0x3000;

export const CC = {
  EN: 1 << 0,
  SHN_SHIFT: 14,
  SHN_MASK: 3 << 14,
  MPS_SHIFT: 7,
  AMS_SHIFT: 11,
  IOSQES_SHIFT: 16,
  IOCQES_SHIFT: 20,
} as const;

export const CSTS = {
  RDY: 1 << 0,
  CFS: 1 << 1,
  SHST_OCCURRING: 1 << 2,
  SHST_COMPLETE: 2 << 2,
} as const;

export const ADMIN = {
  DELETE_SQ: 0x00,
  CREATE_SQ: 0x01,
  GET_LOG_PAGE: 0x02,
  DELETE_CQ: 0x04,
  CREATE_CQ: 0x05,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
  GET_FEATURES: 0x0a,
  ASYNC_EVENT: 0x0c,
  /** Doorbell Buffer Config: shadow doorbells and event indices in host memory (OACS bit 8). */
  DBBUF: 0x7c,
} as const;

/** Identify Controller OACS: Doorbell Buffer Config supported. */
export const OACS_DBBUF = 1 << 8;

export const IO = {
  FLUSH: 0x00,
  WRITE: 0x01,
  READ: 0x02,
  WRITE_ZEROES: 0x08,
  DSM: 0x09,
} as const;

export const CNS = { NAMESPACE: 0x00, CONTROLLER: 0x01, ACTIVE_NS_LIST: 0x02, NS_DESCRIPTORS: 0x03 } as const;

export const FEAT = {
  ARBITRATION: 0x01,
  POWER_MGMT: 0x02,
  TEMP_THRESHOLD: 0x04,
  ERROR_RECOVERY: 0x05,
  VOLATILE_WC: 0x06,
  NUM_QUEUES: 0x07,
  IRQ_COALESCE: 0x08,
  IRQ_CONFIG: 0x09,
  WRITE_ATOMIC: 0x0a,
  ASYNC_EVENT: 0x0b,
} as const;

export const LOG = { ERROR: 0x01, SMART: 0x02, FW_SLOT: 0x03 } as const;

/** Status code type (SCT) << 8 | status code (SC). */
export const SC = {
  SUCCESS: 0x000,
  INVALID_OPCODE: 0x001,
  INVALID_FIELD: 0x002,
  CMDID_CONFLICT: 0x003,
  DATA_XFER_ERROR: 0x004,
  ABORT_POWER_LOSS: 0x005,
  INTERNAL: 0x006,
  ABORT_REQUESTED: 0x007,
  ABORT_SQ_DELETED: 0x008,
  INVALID_NS: 0x00b,
  INVALID_PRP_OFFSET: 0x013,
  LBA_RANGE: 0x080,
  CAP_EXCEEDED: 0x081,
  NS_NOT_READY: 0x082,
  // command specific (SCT 1)
  CQ_INVALID: 0x100,
  QID_INVALID: 0x101,
  QUEUE_SIZE: 0x102,
  ABORT_LIMIT: 0x103,
  AER_LIMIT: 0x105,
  INVALID_LOG_PAGE: 0x109,
  INVALID_VECTOR: 0x108,
  INVALID_QUEUE_DELETION: 0x10c,
  FEATURE_NOT_SAVEABLE: 0x10d,
  // media and data integrity (SCT 2)
  WRITE_FAULT: 0x280,
  UNRECOVERED_READ: 0x281,
} as const;

/** Do Not Retry: set on errors that repeating the command cannot fix. */
export const DNR = 0x4000;

export const SQE_SIZE = 64;
export const CQE_SIZE = 16;
export const PAGE = 4096;
