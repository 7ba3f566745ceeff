/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pcinet: what the parts of the module share. file.c owns the file, core.c the bus and config
 * space; mmio.c traps the BAR mappings and serve.c serves their accesses; msix.c keeps the MSI-X
 * table and delivers interrupts; dma.c is the DMA sandbox; push.c (with push-walk.c and
 * push-sq.c) pushes what a doorbell makes the device read; link.c carries the data plane on a TCP
 * connection of its own (W_CONNECT).
 * Records: uapi/pcinet.h, docs/KERNEL-ABI.md.
 *
 * Spinlocks that nest, outermost first: cfg_lock, msix_lock; cfg_lock, push_lock, the DMA table's
 * lock, qlock.
 */
#ifndef PCINET_INTERNAL_H
#define PCINET_INTERNAL_H

#include <linux/atomic.h>
#include <linux/ioport.h>
#include <linux/irq_work.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "uapi/pcinet.h"

struct net_device;
#include "push-walk.h"

/* Bytes of records waiting for read() before producers wait for the reader (bounded). */
#define PCINET_QUEUE_BYTES	(1u << 20)
/* ... and past which they drop records (counted) instead: a reader that stopped reading cannot
 * make the module allocate without bound, in atomic context least of all.
 */
#define PCINET_QUEUE_CAP	(16u << 20)
/* The largest record either way: an attach (three config images) or a data record. */
#define PCINET_MAX_RECORD	max_t(size_t, sizeof(struct pcinet_w_attach), \
				      sizeof(struct pcinet_w_dma_write) + PCINET_MAX_DATA)
#define PCINET_MAX_RANGES	64
#define PCINET_MAX_VECTORS	2048
#define PCINET_MAX_BAR		(1ull << 28)	/* 256 MiB: a shadow of each BAR is kept in memory */
/* BAR windows live above 512 GiB, where RAM and firmware never are on the machines we target,
 * and below 1 TiB, the smallest physical address width (40 bits) of x86-64 CPUs we support.
 */
#define PCINET_WINDOW_MIN	(1ull << 39)
#define PCINET_WINDOW_MAX	((1ull << 40) - 1)
#define PCINET_DOMAIN_FIRST	0x10
#define PCINET_DOMAIN_LAST	0xffff
/* Volatile MMIO reads in flight per function (one per CPU is the most a driver can do). */
#define PCINET_READ_SLOTS	64
/* Interrupt raises queued for delivery per function. */
#define PCINET_RING_SIZE	4096

enum pcinet_state { PN_NEW, PN_ATTACHED, PN_STARTED, PN_DETACHED };

struct pcinet_rec {
	struct list_head node;
	size_t len;
	u64 queued_ns;		/* when it went on the read queue (timing) */
	u8 data[];
};

struct pcinet_range {
	u32 bar;
	u32 kind;
	u64 offset;
	u64 length;
};

struct pcinet_bar {
	u64 size;		/* 0: no BAR */
	u32 kind;
	u32 flags;
	u64 addr;		/* what the BAR register holds */
	bool sizing_lo;		/* the driver wrote all-ones: reads return the size mask */
	bool sizing_hi;
	u8 *shadow;
	u8 *reset;		/* the shadow as it was at W_START: what a gone function reads */
	u8 *standin;		/* shadow_lock: the stand-in's registers (pcinet_mmio_standin()) */
};

/* A volatile MMIO read waiting for its W_MMIO_READ_CPL. */
struct pcinet_read_slot {
	u32 tag;		/* 0: free */
	u32 size;
	int status;		/* 0 waiting, 1 done, -1 error completion */
	u64 data;
};

struct pcinet_counters {
	atomic64_t mmio_writes;		/* forwarded to the host-agent */
	atomic64_t mmio_reads;		/* served from the shadow */
	atomic64_t volatile_reads;	/* round trips */
	atomic64_t read_timeouts;	/* volatile reads and fences that got all-ones */
	atomic64_t queue_waits;		/* writers that found the queue full and waited */
	atomic64_t queue_overruns;	/* ... and gave up waiting (the record was still queued) */
	atomic64_t lost_records;	/* out of memory in atomic context */
	atomic64_t emulate_failures;	/* instructions the emulator refused */
	atomic64_t nested_faults;	/* BAR accesses inside the fault handler: failed */
	atomic64_t deferred;		/* accesses that waited asleep in the faulting task */
	atomic64_t spun;		/* accesses that waited busy in the fault handler */
	atomic64_t interrupts;		/* delivered to the driver */
	atomic64_t interrupts_pending;	/* raised while masked (delivered on unmask) */
	atomic64_t interrupts_dropped;	/* raised while MSI-X was disabled */
	atomic64_t dma_refused;		/* DMA outside live mappings or against their direction */
	atomic64_t dma_bytes;		/* DMA done, both directions */
	atomic64_t link_downs;		/* W_LINK_DOWN: the endpoint was lost */
	atomic64_t link_dropped;	/* MMIO writes and records dropped while the link was down */
	atomic64_t pushes;		/* R_PUSH records queued */
	atomic64_t push_bytes;		/* ... and their data bytes */
	atomic64_t push_refused;	/* ranges not pushed: not all in live device-readable maps */
	atomic64_t push_over_budget;	/* ranges not pushed: past a doorbell's bytes or steps */
	atomic64_t push_nomem;		/* ranges not pushed: no memory (GFP_ATOMIC) */
	atomic64_t push_busy;		/* doorbells that pushed nothing: the read queue was full */
	atomic64_t push_drops;		/* R_PUSH_DROP records queued */
	atomic64_t vq_rounds;		/* W_VIRTQ_DONE applied */
	atomic64_t vq_irqs_skipped;	/* ... whose interrupt the driver did not want */
	atomic64_t vq_kicks;		/* ... that found buffers no notify announced: kicked */
	atomic64_t stalls;		/* a wait for the device ran out: it stopped answering */
	atomic64_t stall_fails;		/* accesses failed at once while it was stalled */
	atomic64_t queue_drops;		/* records dropped past PCINET_QUEUE_CAP */
	/* Timing (ns, with how many they add up; the pcinet_timing sysfs file): */
	atomic64_t t_mmio_ns, t_mmio_n;		/* the fault handler serving one BAR access */
	atomic64_t t_queue_ns, t_queue_n;	/* a record queued -> taken by the link */
	atomic64_t t_send_ns, t_send_n;		/* a batch taken -> sent (sealed) */
	atomic64_t t_rtt_ns, t_rtt_n;		/* the last send -> the next bytes back */
	atomic64_t t_apply_ns, t_apply_n;	/* bytes received -> their records applied */
	atomic64_t t_irq_ns, t_irq_n;		/* an MSI-X raised -> its handler runs */
	atomic64_t t_push_ns, t_push_n;		/* a doorbell's pushes walked and copied */
	atomic64_t t_kick_ns, t_kick_n;		/* W_VIRTQ_DONE's own notify, pushes and queueing */
	atomic64_t t_room_ns, t_room_n;		/* a producer waited for room in the queue */
	atomic64_t t_map_ns, t_map_n;		/* a streaming DMA map or unmap call */
	atomic64_t t_reply_ns, t_reply_n;	/* a reply's first bytes -> its last record applied */
};

struct pcinet_dma;

struct pcinet_fn {
	struct mutex lock;	/* write() and state changes */
	void *wbuf;		/* one record being written; under lock */
	enum pcinet_state state;

	spinlock_t qlock;	/* the read queue; taken in atomic context (pci_lock, MMIO faults) */
	struct list_head queue;
	size_t queued;
	wait_queue_head_t readq;
	wait_queue_head_t writeq;

	u32 msix_vectors;
	raw_spinlock_t cfg_lock;	/* config (the image, BAR registers) against config accesses
					 * on other CPUs: x86 makes them without pci_lock
					 */
	struct pcinet_bar bars[PCINET_NUM_BARS];
	u8 config[PCINET_CONFIG_SIZE];
	u8 config_init[PCINET_CONFIG_SIZE];	/* the image as attached, for FLR */
	u8 wmask[PCINET_CONFIG_SIZE];
	u8 w1cmask[PCINET_CONFIG_SIZE];
	u16 pcie_cap;		/* offset of the PCIe capability, 0 if none */
	struct pcinet_range ranges[PCINET_MAX_RANGES];
	unsigned int nranges;

	int domain;
	struct resource window;		/* the 64-bit BARs, above 512 GiB */
	struct resource window32;	/* the 32-bit BARs, in a host bridge window below 4 GiB */
	struct resource busn;
	struct pci_sysdata sysdata;
	struct pci_bus *bus;
	struct pci_dev *pdev;	/* the function once scanned (a reference is held) */
	struct work_struct add_work;	/* binds drivers after W_START */

	/* Link loss and recovery (W_LINK_DOWN, W_LINK_UP): the driver's PCI error handlers. */
	bool link_down;			/* READ_ONCE: accesses do not reach the endpoint */
	struct workqueue_struct *link_wq;	/* ordered: the down work runs before the up work */
	struct work_struct link_down_work;
	struct work_struct link_up_work;
	bool link_recoverable;		/* error_detected() asked for a reset */
	bool timing_file;		/* the pcinet_timing sysfs file exists */
	bool counters_file;		/* ... and pcinet_counters */
	bool recovers_file;		/* ... and pcinet_recovers */
	struct pci_driver *link_driver;	/* ... this driver's: only it gets slot_reset (never
					 * dereferenced, only compared: it may be gone)
					 */
	bool link_parked;		/* ... or it has none, but freezes: a NIC (freeze.c) */
	bool link_frozen;		/* its restore failed: restore it at the next link up, or
					 * against a stand-in before it is unbound (freeze.c)
					 */
	struct net_device *link_carrier[4];	/* interfaces whose carrier the link down took
						 * (only compared, under the device lock)
						 */

	/* MMIO (mmio.c) */
	bool standin;		/* READ_ONCE: a stand-in answers config and BAR accesses, not the
				 * endpoint (pcinet_mmio_standin())
				 */
	struct list_head live;	/* on the list of started functions (RCU) */
	spinlock_t shadow_lock;	/* BAR shadows against W_SHADOW */
	atomic_t stalled;	/* 1: a wait for the device ran out; waits fail at once until it
				 * answers again (pcinet_stall(), pcinet_unstall())
				 */
	atomic64_t writes_sent;	/* non-doorbell MMIO writes queued */
	atomic64_t writes_applied;
	wait_queue_head_t mmioq;	/* deferred accesses waiting for fences and completions */
	spinlock_t reads_lock;
	u32 next_tag;
	struct pcinet_read_slot reads[PCINET_READ_SLOTS];

	/* MSI-X (msix.c) */
	u16 msix_cap;		/* offset of the MSI-X capability, 0 if none */
	int msix_bar;
	u64 msix_table;		/* offset of the table in msix_bar */
	u64 msix_pba;		/* offset of the PBA in msix_bar */
	spinlock_t msix_lock;	/* entries, pending, ring */
	u32 *msix_entries;	/* vectors * 4 dwords: address lo/hi, data, vector control */
	unsigned long *msix_pending;
	u16 *ring;		/* raises waiting for delivery, in order */
	u64 *ring_ns;		/* ... and when each was raised */
	unsigned int ring_head, ring_count;
	bool msix_overflow;	/* a raise found the ring full: vectors wait in the PBA for room */
	wait_queue_head_t ring_wait;
	struct irq_work irq_work;
	struct irq_work irq_work_more;	/* lazy: delivery past its budget goes on at the next tick */
	raw_spinlock_t deliver_lock;
	struct fwnode_handle *msi_fwnode;
	struct irq_domain *msi_domain;

	/* DMA (dma.c) */
	struct pcinet_dma *dma;

	/* Push rules (push.c): taken in the MMIO fault path, interrupts off, and by DMA unmaps. */
	spinlock_t push_lock;
	unsigned int push_count;	/* rules set; READ_ONCE: none, nothing to look at */
	struct pcinet_push_rule push_rules[PCINET_MAX_PUSH_RULES];
	/* SQ event indices the driver's shadow doorbells read, kept across resets (push.c). */
	unsigned int kept_ei_count;	/* READ_ONCE */
	struct pcinet_kept_ei {
		u32 bar;
		u64 offset;		/* the SQ tail doorbell */
		u64 iova;		/* its event index */
	} kept_ei[PCINET_MAX_PUSH_RULES];

	/* The kernel link (link.c), under lock. */
	struct pcinet_link *link;	/* the data connection, or NULL */
	bool linked;			/* W_CONNECT was applied: the data plane is on links */
	struct list_head dead_links;	/* closed links, stopped by pcinet_link_reap() */
	struct list_head ctl;		/* records read() serves even when linked (qlock) */
	struct pcinet_link *tx_link;	/* qlock: the link a new record's send goes to */

	struct pcinet_counters stats;
};

/*
 * In a queued record's pcinet_hdr.flags, never on the wire: an R_PUSH whose data is copied when
 * it is sent (pcinet_push_fill(), which clears it).
 */
#define PCINET_REC_F_FILL	0x8000

static inline void pcinet_hdr(struct pcinet_hdr *h, u16 type, size_t len)
{
	h->type = cpu_to_le16(type);
	h->flags = 0;
	h->len = cpu_to_le32(len);
}

/* core.c: what the host-agent's records do to the function (file.c applies them) */
int pcinet_attach(struct pcinet_fn *fn, const struct pcinet_w_attach *a);
int pcinet_range(struct pcinet_fn *fn, const struct pcinet_w_range *r);
int pcinet_shadow(struct pcinet_fn *fn, const struct pcinet_w_shadow *s, size_t len);
int pcinet_start(struct pcinet_fn *fn);
void pcinet_add_work(struct work_struct *work);
int pcinet_link_down(struct pcinet_fn *fn);
int pcinet_link_up(struct pcinet_fn *fn);
void pcinet_link_down_work(struct work_struct *work);
void pcinet_link_up_work(struct work_struct *work);
void pcinet_remove(struct pcinet_fn *fn);

/* file.c: /dev/pcinet */
extern const struct file_operations pcinet_fops;
int pcinet_link_record(struct pcinet_fn *fn, const void *buf, size_t len);

static inline struct pcinet_fn *pcinet_fn_of(struct pci_bus *bus)
{
	return container_of(bus->sysdata, struct pcinet_fn, sysdata);
}

/* queue.c: records out */
void pcinet_queue(struct pcinet_fn *fn, const void *rec, size_t len);
void pcinet_queue_atomic(struct pcinet_fn *fn, const void *rec, size_t len);
void pcinet_rec_add(struct pcinet_fn *fn, struct pcinet_rec *r);
void pcinet_rec_add_lazy(struct pcinet_fn *fn, struct pcinet_rec *r);
void pcinet_rec_add_list(struct pcinet_fn *fn, struct list_head *recs);
struct pcinet_rec *pcinet_rec_alloc(struct pcinet_fn *fn, size_t len);
void pcinet_rec_queue(struct pcinet_fn *fn, struct pcinet_rec *r);
void pcinet_queue_ctl(struct pcinet_fn *fn, const void *rec, size_t len);

/* config.c */
extern struct pci_ops pcinet_pci_ops;
void pcinet_power_on_locked(struct pcinet_fn *fn);

/* sysfs.c */
void pcinet_timing_add(atomic64_t *ns, atomic64_t *n, u64 since);
void pcinet_sysfs_add(struct pcinet_fn *fn, struct pci_dev *pdev);
void pcinet_sysfs_remove(struct pcinet_fn *fn, struct pci_dev *pdev);

/* freeze.c: network drivers without error handlers through a link down */
bool pcinet_driver_parks(struct pci_dev *pdev, const struct device_driver *drv);
void pcinet_link_park_driver(struct pcinet_fn *fn, struct pci_dev *pdev);
int pcinet_link_restore_driver(struct pcinet_fn *fn, struct pci_dev *pdev);
void pcinet_driver_unbinding(struct pcinet_fn *fn, struct pci_dev *pdev);
u16 pcinet_find_cap(struct pcinet_fn *fn, u8 id);
const struct pcinet_range *pcinet_range_at(struct pcinet_fn *fn, u32 bar, u64 off, u32 size,
					   u32 kind);

/* mmio.c */
int pcinet_mmio_init(void);
void pcinet_mmio_exit(void);
void pcinet_mmio_start(struct pcinet_fn *fn);
void pcinet_mmio_stop(struct pcinet_fn *fn);
/* defer.S: the trampoline a deferred access returns into, and what it calls (mmio.c). */
void pcinet_defer_tramp(void);
void pcinet_deferred_access(struct pt_regs *regs);

/* serve.c: one trapped access, for mmio.c; what the device's records do to MMIO. */
/* How an access may wait for the device. */
enum pcinet_wait {
	PN_SPIN,	/* atomic context: busy-wait, bounded */
	PN_NOWAIT,	/* first try in the fault handler: -EAGAIN instead of waiting */
	PN_SLEEP,	/* the faulting task, back from defer.S: sleep, bounded */
};
bool pcinet_fn_live(struct pcinet_fn *fn);
int pcinet_serve_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size,
		      enum pcinet_wait how);
int pcinet_serve_write(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size,
		       enum pcinet_wait how);
void pcinet_gone_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size);
bool pcinet_standin_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size);
bool pcinet_standin_write(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size);
int pcinet_mmio_read_cpl(struct pcinet_fn *fn, const struct pcinet_w_mmio_read_cpl *c);
void pcinet_mmio_link_down(struct pcinet_fn *fn);
void pcinet_mmio_kick(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size);
int pcinet_shadow_update(struct pcinet_fn *fn, u32 bar, u64 off, const void *data, u32 size);
int pcinet_mmio_standin(struct pcinet_fn *fn);
void pcinet_mmio_standin_end(struct pcinet_fn *fn);
void pcinet_stall(struct pcinet_fn *fn);
void pcinet_unstall(struct pcinet_fn *fn);

static inline bool pcinet_stalled(struct pcinet_fn *fn)
{
	return atomic_read(&fn->stalled);
}

/* msix.c */
int pcinet_msix_attach(struct pcinet_fn *fn);
void pcinet_msix_free(struct pcinet_fn *fn);
bool pcinet_msix_owns(struct pcinet_fn *fn, u32 bar, u64 off, u32 size);
void pcinet_msix_read(struct pcinet_fn *fn, u64 off, void *val, u32 size);
void pcinet_msix_write(struct pcinet_fn *fn, u64 off, const void *val, u32 size);
void pcinet_msix_config_written(struct pcinet_fn *fn, int where, int size);
int pcinet_msix_raise(struct pcinet_fn *fn, u32 vector);
void pcinet_msix_reset(struct pcinet_fn *fn);
int pcinet_msix_start(struct pcinet_fn *fn);
void pcinet_msix_stop(struct pcinet_fn *fn);

/* dma.c */
int pcinet_dma_init(struct pcinet_fn *fn);
void pcinet_dma_set_ops(struct pcinet_fn *fn, struct pci_dev *pdev);
int pcinet_dma_read(struct pcinet_fn *fn, const struct pcinet_w_dma_read *d);
int pcinet_dma_write(struct pcinet_fn *fn, const struct pcinet_w_dma_write *d);
void pcinet_dma_exit(struct pcinet_fn *fn);
bool pcinet_dma_peek(struct pcinet_fn *fn, u64 iova, void *buf, u32 size, bool mark);
int pcinet_dma_store(struct pcinet_fn *fn, u64 iova, const void *buf, u32 size);
void pcinet_dma_forget_pushes(struct pcinet_fn *fn);

/* push.c */
int pcinet_push_rule(struct pcinet_fn *fn, const struct pcinet_w_push_rule *w);
void pcinet_push_doorbell(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size);
bool pcinet_push_fill(struct pcinet_fn *fn, struct pcinet_rec **rp);
void pcinet_push_unmapped(struct pcinet_fn *fn, u64 iova, u64 len);
void pcinet_push_clear(struct pcinet_fn *fn);
void pcinet_push_ei_unmapped(struct pcinet_fn *fn, u64 iova, u64 len);
int pcinet_virtq_done(struct pcinet_fn *fn, const struct pcinet_w_virtq_done *w);

/* link.c */
int pcinet_link_connect(struct pcinet_fn *fn, const struct pcinet_w_connect *w);
void pcinet_link_close(struct pcinet_fn *fn);
void pcinet_link_reap(struct pcinet_fn *fn);
void pcinet_link_kick(struct pcinet_link *l);
int pcinet_link_init(void);
void pcinet_link_exit(void);

/*
 * A record from the endpoint that reached write() after the link went down (the host-agent read
 * it from the session before it wrote W_LINK_DOWN): a device off its link neither touches the
 * host's memory nor interrupts it, so the record is dropped and counted like the host's own
 * records then (link_dropped). Not refused: an error would make the host-agent give the device
 * up. Call after the record was found well-formed.
 */
static inline bool pcinet_down_drop(struct pcinet_fn *fn)
{
	if (!READ_ONCE(fn->link_down) || READ_ONCE(fn->state) != PN_STARTED)
		return false;
	atomic64_inc(&fn->stats.link_dropped);
	return true;
}

#endif /* PCINET_INTERNAL_H */
