/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * pcinet: the record format of /dev/pcinet, the channel between pcinet.ko and the host-agent.
 * docs/KERNEL-ABI.md explains every record; proto/kernel-abi.ts mirrors this file.
 *
 * One open file is one PCI function. The host-agent write()s records (PCINET_W_*) and read()s
 * records (PCINET_R_*); poll() says when a read would return something. Every record starts with
 * struct pcinet_hdr; `len` is the whole record in bytes including the header, a multiple of 8.
 * A write() carries one or more whole records; a read() returns as many whole records as fit in
 * the buffer (at least one: a buffer smaller than the next record gets -EINVAL). All integers are
 * little-endian. Reserved fields and padding must be zero.
 */
#ifndef _UAPI_PCINET_H
#define _UAPI_PCINET_H

#include <linux/types.h>

#define PCINET_ABI_VERSION	4

/* Largest data payload of one record (MMIO string moves, DMA). Bigger DMA is split by the agent. */
#define PCINET_MAX_DATA		65536
#define PCINET_CONFIG_SIZE	4096
#define PCINET_NUM_BARS		6

struct pcinet_hdr {
	__le16 type;		/* PCINET_W_* or PCINET_R_* */
	__le16 flags;		/* zero */
	__le32 len;		/* whole record, multiple of 8, >= 8 */
};

/* ---- host-agent -> kernel (write) ---- */
enum {
	PCINET_W_ATTACH = 1,		/* first record on a file: the device description */
	PCINET_W_RANGE = 2,		/* volatile or doorbell range of a BAR; before START only */
	PCINET_W_SHADOW = 3,		/* new contents of a BAR range (initial shadow, updates) */
	PCINET_W_START = 4,		/* put the device on the bus; then R_ATTACHED is readable */
	PCINET_W_WRITES_APPLIED = 5,	/* the device applied this many non-doorbell MMIO writes */
	PCINET_W_MMIO_READ_CPL = 6,	/* answer to R_MMIO_READ */
	PCINET_W_DMA_READ = 7,		/* device reads host memory; answered by R_DMA_READ_CPL */
	PCINET_W_DMA_WRITE = 8,		/* device writes host memory (posted) */
	PCINET_W_INTERRUPT = 9,		/* device raises an MSI-X vector */
	PCINET_W_DETACH = 10,		/* remove the device now; read() then returns 0 (end of file) */
	PCINET_W_LINK_DOWN = 11,	/* the device is unreachable (endpoint lost); error recovery */
	PCINET_W_LINK_UP = 12,		/* a fresh device (in its power-on state) is behind it again */
	PCINET_W_PUSH_RULE = 13,	/* install, replace or remove a push rule (docs/PUSH.md) */
	PCINET_W_CONNECT = 14,		/* carry the data plane on a TCP connection of the module's */
	PCINET_W_VIRTQ_DONE = 15,	/* a virtqueue round ended: interrupt decision, missed kicks */
};

enum pcinet_bar_kind {
	PCINET_BAR_NONE = 0,
	PCINET_BAR_MEM32 = 1,
	PCINET_BAR_MEM64 = 2,		/* occupies index and index + 1 */
	PCINET_BAR_IO = 3,		/* refused by this version */
};

#define PCINET_BAR_PREFETCH	0x1

struct pcinet_bar_desc {
	__le64 size;		/* power of two, >= 4096 for memory BARs; 0 for none */
	__le32 kind;		/* enum pcinet_bar_kind */
	__le32 flags;		/* PCINET_BAR_PREFETCH */
};

struct pcinet_w_attach {
	struct pcinet_hdr hdr;
	__le32 abi_version;	/* PCINET_ABI_VERSION */
	__le32 msix_vectors;	/* must match the MSI-X capability in config (0: none) */
	struct pcinet_bar_desc bars[PCINET_NUM_BARS];
	__u8 config[PCINET_CONFIG_SIZE];	/* BAR registers hold flag bits only */
	__u8 wmask[PCINET_CONFIG_SIZE];		/* bits the driver may write */
	__u8 w1cmask[PCINET_CONFIG_SIZE];	/* bits a driver write of 1 clears */
};

enum pcinet_range_kind {
	PCINET_RANGE_VOLATILE = 1,	/* reads go to the device (R_MMIO_READ) */
	PCINET_RANGE_DOORBELL = 2,	/* writes do not change readable state: no read fence */
};

struct pcinet_w_range {
	struct pcinet_hdr hdr;
	__le32 bar;
	__le32 kind;		/* enum pcinet_range_kind */
	__le64 offset;
	__le64 length;
};

struct pcinet_w_shadow {
	struct pcinet_hdr hdr;
	__le32 bar;
	__le32 size;		/* bytes of data, 1..PCINET_MAX_DATA */
	__le64 offset;
	__u8 data[];		/* size bytes, then zero padding to a multiple of 8 */
};

struct pcinet_w_writes_applied {
	struct pcinet_hdr hdr;
	__le64 count;		/* cumulative since START (never decreases) */
};

enum pcinet_status {
	PCINET_STATUS_OK = 0,
	PCINET_STATUS_ERROR = 1,	/* completion with error: reads return all-ones */
};

struct pcinet_w_mmio_read_cpl {
	struct pcinet_hdr hdr;
	__le32 tag;		/* from R_MMIO_READ */
	__le32 status;		/* enum pcinet_status */
	__le64 data;		/* the first `size` bytes are the value */
};

struct pcinet_w_dma_read {
	struct pcinet_hdr hdr;
	__le32 tag;		/* echoed in R_DMA_READ_CPL */
	__le32 size;		/* 1..PCINET_MAX_DATA */
	__le64 iova;
};

struct pcinet_w_dma_write {
	struct pcinet_hdr hdr;
	__le32 size;		/* 1..PCINET_MAX_DATA */
	__le32 reserved;
	__le64 iova;
	__u8 data[];		/* size bytes, then zero padding to a multiple of 8 */
};

struct pcinet_w_interrupt {
	struct pcinet_hdr hdr;
	__le32 vector;		/* < msix_vectors */
	__le32 reserved;
};

/*
 * Push rules (docs/PUSH.md). A rule names a doorbell (a BAR offset) and the ring behind it. When
 * the driver writes that doorbell, the module copies what the device is about to read — the new
 * ring entries and, up to data_max bytes each, the buffers they name that the device reads — from
 * live device-readable mappings into R_PUSH records queued *before* the R_MMIO_WRITE of the
 * doorbell. Bytes that are not in such mappings are not pushed (the device falls back to a DMA
 * read). A mapping that was pushed from sends R_PUSH_DROP when the driver unmaps it. Every
 * W_PUSH_RULE applied is answered by R_PUSH_RULE_SET.
 */
#define PCINET_MAX_PUSH_RULES	128
/*
 * Most bytes pushed for one doorbell write, all records together (pcinet.ko's parameter
 * push_budget may set a lower budget).
 */
#define PCINET_PUSH_MAX_BYTES	(2048 * 1024)

enum pcinet_push_kind {
	PCINET_PUSH_NONE = 0,		/* removes rule `id` */
	PCINET_PUSH_NVME_SQ = 1,	/* NVMe submission queue: 64-byte SQEs, tail doorbell */
	PCINET_PUSH_VIRTQ = 2,		/* virtio split virtqueue: notify register */
};

#define PCINET_PUSH_F_INDIRECT	0x1	/* virtq: the device accepts indirect descriptor tables */

struct pcinet_w_push_rule {
	struct pcinet_hdr hdr;
	__le32 id;		/* < PCINET_MAX_PUSH_RULES; a rule with this id is replaced */
	__le32 kind;		/* enum pcinet_push_kind */
	__le32 bar;
	__le32 entries;		/* NVMe: SQ size (2..65536); virtq: queue size (power of two <= 32768) */
	__le64 offset;		/* BAR offset of the doorbell (NVMe SQ tail; virtio notify address) */
	__le64 ring;		/* IOVA: NVMe SQ base; virtq descriptor table */
	__le64 avail;		/* IOVA: virtq driver area (avail ring); NVMe (ABI 3): the SQ's event
				 * index, written with each doorbell value (0: none)
				 */
	__le32 data_max;	/* most payload bytes pushed per entry (0: entries only) */
	__le32 lba_shift;	/* NVMe: log2 of the LBA size (9..12); 0 for virtq */
	__le32 flags;		/* PCINET_PUSH_F_* */
	__le32 reserved;
	__le64 shadow;		/* NVMe with avail (ABI 4): IOVA of the SQ tail's shadow doorbell; the
				 * device ends rounds of this SQ (W_VIRTQ_DONE), and the SQ may go quiet
				 * (docs/PUSH.md "Quiet submission queues"). 0: none; virtq: 0
				 */
};

/*
 * W_VIRTQ_DONE (ABI 2; docs/PUSH.md, "Virtqueue rounds"): the device ended a round of service of
 * the virtqueue behind PCINET_PUSH_VIRTQ rule `id`. The records before it (the used elements, used
 * idx and avail_event it wrote) are applied first; then, after a full barrier, the module does what
 * the device would otherwise do with one more ring read over the network:
 * - F_INTERRUPT: raises `vector` if the driver wants an interrupt for used idx having moved from
 *   old_used to new_used: vring_need_event(used_event, new, old) with F_EVENT_IDX, else unless
 *   avail.flags has VRING_AVAIL_F_NO_INTERRUPT;
 * - F_RECHECK: if avail idx moved past what the rule last pushed (the driver made buffers available
 *   after reading an avail_event older than the device's, so it did not notify), pushes them and
 *   queues a doorbell write of `kick` (2 bytes) at the rule's doorbell, as if the driver had written it.
 * A rule that is gone (a reset crossed the record) gets the interrupt raised and nothing else.
 *
 * On an NVMe SQ rule with a shadow doorbell (ABI 4) only F_RECHECK means anything: `kick` is the
 * SQ tail the device has taken (it answers every tail doorbell write with a round, after the
 * completions it made at once); the module then rings, from the shadow tail, what the driver
 * submitted without ringing, and lets the SQ go quiet or not (docs/PUSH.md "Quiet submission
 * queues").
 */
#define PCINET_VQ_F_INTERRUPT	0x1
#define PCINET_VQ_F_EVENT_IDX	0x2
#define PCINET_VQ_F_RECHECK	0x4

struct pcinet_w_virtq_done {
	struct pcinet_hdr hdr;
	__le32 id;		/* < PCINET_MAX_PUSH_RULES */
	__le32 flags;		/* PCINET_VQ_F_* */
	__le32 vector;		/* with F_INTERRUPT: < msix_vectors */
	__le16 old_used;
	__le16 new_used;
	__le16 kick;		/* with F_RECHECK: the doorbell value (virtio: the queue index) */
	__le16 reserved[3];
};

/* ---- kernel -> host-agent (read) ---- */
enum {
	PCINET_R_ATTACHED = 0x81,	/* the device is on the bus at this address */
	PCINET_R_MMIO_WRITE = 0x82,	/* a driver write to a BAR (posted) */
	PCINET_R_MMIO_READ = 0x83,	/* a driver read of a volatile range; answer with W_MMIO_READ_CPL */
	PCINET_R_CONFIG_WRITE = 0x84,	/* a driver config write (not BARs or ROM), value after masks */
	PCINET_R_DMA_READ_CPL = 0x85,	/* answer to W_DMA_READ */
	PCINET_R_FUNCTION_RESET = 0x86,	/* function-level reset by the driver or the PCI core */
	PCINET_R_PUSH = 0x87,		/* host memory the device is about to read (push rules) */
	PCINET_R_PUSH_DROP = 0x88,	/* a mapping pushed from is gone: forget its pushed bytes */
	PCINET_R_PUSH_RULE_SET = 0x89,	/* a W_PUSH_RULE was applied: later R_PUSH of `id` follow it */
	PCINET_R_LINK_CLOSED = 0x8a,	/* the data connection failed; the link is down (read() only) */
};

struct pcinet_r_attached {
	struct pcinet_hdr hdr;
	__le32 domain;
	__u8 bus;
	__u8 devfn;
	__le16 reserved;
};

struct pcinet_r_mmio_write {
	struct pcinet_hdr hdr;
	__le32 bar;
	__le32 size;		/* 1, 2, 4, 8, or longer for string moves (<= PCINET_MAX_DATA) */
	__le64 offset;
	__u8 data[];		/* size bytes, then zero padding to a multiple of 8 */
};

struct pcinet_r_mmio_read {
	struct pcinet_hdr hdr;
	__le32 tag;
	__le32 bar;
	__le32 size;		/* 1, 2, 4 or 8 */
	__le32 reserved;
	__le64 offset;
};

struct pcinet_r_config_write {
	struct pcinet_hdr hdr;
	__le32 offset;
	__le32 size;		/* 1, 2 or 4 */
	__le32 value;		/* the register's new contents */
	__le32 reserved;
};

struct pcinet_r_dma_read_cpl {
	struct pcinet_hdr hdr;
	__le32 tag;
	__le32 status;		/* enum pcinet_status: ERROR when the IOMMU refused */
	__le32 size;		/* bytes of data (the requested size; 0 on error) */
	__le32 reserved;
	__u8 data[];		/* size bytes, then zero padding to a multiple of 8 */
};

struct pcinet_r_push {
	struct pcinet_hdr hdr;
	__le32 size;		/* bytes of data, 1..PCINET_MAX_DATA */
	__le32 rule;		/* the rule that pushed it */
	__le64 iova;
	__u8 data[];		/* size bytes, then zero padding to a multiple of 8 */
};

struct pcinet_r_push_drop {
	struct pcinet_hdr hdr;
	__le64 iova;		/* the unmapped mapping */
	__le64 length;
};

/* One per W_PUSH_RULE applied (set, replace or remove), in order: every R_PUSH of rule `id`
 * queued before it was made under the rule as it was before.
 */
struct pcinet_r_push_rule_set {
	struct pcinet_hdr hdr;
	__le32 id;
	__le32 reserved;
};

/* ---- the kernel link: the data plane on a TCP connection (docs/KERNEL-ABI.md) ---- */

/*
 * W_CONNECT: the module connects to the endpoint itself and, from then on, every data-plane
 * record of the function travels on that connection instead of read()/write(): R_* records
 * (all but R_ATTACHED and R_LINK_CLOSED, which stay on the file) are sent as they are queued,
 * and W_WRITES_APPLIED, W_MMIO_READ_CPL, W_DMA_READ, W_DMA_WRITE, W_INTERRUPT, W_SHADOW and
 * W_PUSH_RULE records received on it are applied as if written to the file. The connection
 * starts with struct pcinet_link_hello from the module; the endpoint answers with the 8 bytes
 * of PCINET_LINK_MAGIC or closes it. Allowed before W_START, or while the link is down.
 */
#define PCINET_LINK_MAGIC	"PCINETL1"	/* 8 bytes, no terminator on the wire */
#define PCINET_LINK_TOKEN	16
#define PCINET_LINK_KEY		32

#define PCINET_LINK_F_SEAL	0x1	/* sealed frames (below) */

/*
 * Sealed frames (PCINET_LINK_F_SEAL), after the hello and its answer, both ways: le32 length of
 * what follows, the frame's records encrypted with AES-256-GCM under `key`, the 16-byte tag. The
 * length counts ciphertext and tag (at most PCINET_SEAL_MAX + 16) and is the additional data. The
 * nonce: 0 (module to endpoint) or 1 (endpoint to module), three zero bytes, then the frame's
 * number in its direction as le64, from 0. A frame holds whole records.
 */
#define PCINET_SEAL_MAX		(256 * 1024 - 64)
#define PCINET_SEAL_TAG		16

struct pcinet_w_connect {
	struct pcinet_hdr hdr;
	__le16 family;		/* AF_INET (2) or AF_INET6 (10) */
	__be16 port;		/* network byte order */
	__le32 timeout_ms;	/* connect and hello, 1..60000 */
	__u8 addr[16];		/* IPv4: the first 4 bytes, the rest zero */
	__u8 token[PCINET_LINK_TOKEN];	/* from the endpoint: names the device */
	__le32 flags;		/* PCINET_LINK_F_* */
	__le32 reserved;
	__u8 key[PCINET_LINK_KEY];	/* PCINET_LINK_F_SEAL: the frames' key; zero otherwise */
};

struct pcinet_link_hello {
	__u8 magic[8];		/* PCINET_LINK_MAGIC */
	__u8 token[PCINET_LINK_TOKEN];
	__le32 abi_version;	/* PCINET_ABI_VERSION */
	__le32 reserved;
};

struct pcinet_r_link_closed {
	struct pcinet_hdr hdr;
	__le32 error;		/* positive errno: ECONNRESET the peer closed it, EPROTO it broke
				 * the record format, or what the socket reported
				 */
	__le32 reserved;
};

#endif /* _UAPI_PCINET_H */
