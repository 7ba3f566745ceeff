// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: serving the MMIO accesses mmio.c traps.
 *
 * An access is served in the faulting context, which cannot sleep:
 * - writes become R_MMIO_WRITE records (posted; pcinet_queue_atomic() waits, bounded, for a slow
 *   reader and never drops); a write to a push rule's doorbell is preceded by its R_PUSH records
 *   (push.c);
 * - reads of ranges the device declared volatile become R_MMIO_READ and wait for the completion,
 *   bounded (read_timeout_ms, atomic_timeout_ms, counted from the device's last progress on the
 *   writes queued before the read), then read all-ones like a PCIe completion timeout;
 * - other reads come from the shadow the endpoint keeps current, after a read fence: the device
 *   must have applied every earlier non-doorbell write (W_WRITES_APPLIED), so a driver that writes
 *   a register and reads it back sees the device's answer;
 * - the MSI-X table and PBA are served by msix.c.
 * A function that is gone (removed, or memory decoding off) reads all-ones and ignores writes.
 * While the link is down (W_LINK_DOWN) a function reads as a removed one does (pcinet_gone_read)
 * and its writes are dropped and counted: nothing reaches an endpoint that is not there. While a
 * frozen driver is restored before it is unbound (freeze.c), a stand-in answers every access
 * (pcinet_mmio_standin()), whatever the function's state.
 *
 * Waiting: an access that has to wait for the device (fence, volatile read, a full queue) in a
 * context that may sleep (interrupts on, no locks, not atomic: preempt_count() equal to what the
 * fault path shows for a sleepable context, measured at load time) leaves the fault handler
 * through defer.S and waits asleep in the faulting task, so every CPU of the machine can be in
 * such a wait while the host-agent still runs. Only atomic contexts (interrupt handlers, code
 * under spinlocks) busy-wait in the fault handler, bounded by atomic_timeout_ms; those need
 * another CPU to run the host-agent. A wait that runs out marks the device stalled, and until it
 * answers again no access waits at all (pcinet_stall()): a string move or a polling loop over a
 * device that stopped answering costs one timeout, not one per access.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/ktime.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/slab.h>

#include "internal.h"

static unsigned int read_timeout_ms = 5000;
module_param(read_timeout_ms, uint, 0644);
MODULE_PARM_DESC(read_timeout_ms,
		 "How long a driver's MMIO read waits (asleep) for the device before it reads all-ones (ms)");
static unsigned int atomic_timeout_ms = 1000;
module_param(atomic_timeout_ms, uint, 0644);
MODULE_PARM_DESC(atomic_timeout_ms,
		 "The same for reads in atomic context, which wait busy with interrupts off (ms)");

bool pcinet_fn_live(struct pcinet_fn *fn)
{
	return READ_ONCE(fn->state) == PN_STARTED &&
	       (READ_ONCE(fn->config[PCI_COMMAND]) & PCI_COMMAND_MEMORY);
}

/*
 * A wait for the device ran out (docs/KERNEL.md, "A device that stops answering"): like a PCIe
 * completion timeout, the access fails, and until the device is heard from again every access
 * that would wait for it fails at once instead. Without that, a string move over a stalled
 * device, or a driver polling it under a spinlock, would wait the full timeout once per element,
 * with interrupts off in atomic context. Any context.
 */
void pcinet_stall(struct pcinet_fn *fn)
{
	if (READ_ONCE(fn->state) != PN_STARTED || READ_ONCE(fn->link_down) ||
	    atomic_cmpxchg(&fn->stalled, 0, 1))
		return;
	atomic64_inc(&fn->stats.stalls);
	pr_warn_ratelimited("%04x:00:00.0: the device stopped answering: accesses that wait for it fail at once (reads all-ones) until it answers again\n",
			    fn->domain);
}

/* A record from the device arrived: it answers again. */
void pcinet_unstall(struct pcinet_fn *fn)
{
	if (atomic_read(&fn->stalled) && atomic_cmpxchg(&fn->stalled, 1, 0))
		pr_info_ratelimited("%04x:00:00.0: the device answers again\n", fn->domain);
}

/*
 * The bound of a wait counts from the device's last progress on the writes sent before the access,
 * not from the access: a read behind a long queue of posted writes (a memset_io() of 64 KiB is
 * 65536 of them) waits while the device works through them, however long that takes on a slow
 * link, as a PCIe read waits behind the posted writes it may not pass. Only a device that applied
 * none of that backlog for a whole bound has stopped answering. *seen is writes_applied at the
 * start of the interval that just ran out; true if the backlog (writes_sent when the access
 * began) was not yet applied then and some of it was applied since.
 */
static bool pcinet_progressed(struct pcinet_fn *fn, s64 *seen, s64 backlog)
{
	s64 was = *seen;

	*seen = atomic64_read(&fn->writes_applied);
	return was < backlog && *seen != was;
}

/* A busy wait ends after this many atomic_timeout_ms bounds even while the device progresses:
 * a CPU with interrupts off must not wait long enough for a lockup report, whatever the link.
 */
#define PCINET_ATOMIC_PROGRESS_BOUNDS	5

/* Whether a wait should stop for good: the function went, or its link. */
static bool pcinet_wait_over(struct pcinet_fn *fn)
{
	return READ_ONCE(fn->state) != PN_STARTED || READ_ONCE(fn->link_down);
}

/*
 * Waits until done(fn, arg), bounded by read_timeout_ms asleep or atomic_timeout_ms busy, each
 * bound counted from the device's last progress on `backlog` (pcinet_progressed()). False when
 * done() is still false: on timeout, or when the function or its link goes.
 */
static bool pcinet_wait(struct pcinet_fn *fn, bool (*done)(struct pcinet_fn *fn, void *arg),
			void *arg, s64 backlog, enum pcinet_wait how)
{
	s64 seen = atomic64_read(&fn->writes_applied);
	unsigned int bounds = 0;
	u64 bound, until;

	if (how == PN_SLEEP) {
		do {
			if (wait_event_timeout(fn->mmioq, done(fn, arg) || pcinet_wait_over(fn),
					       msecs_to_jiffies(READ_ONCE(read_timeout_ms))))
				return done(fn, arg);
		} while (pcinet_progressed(fn, &seen, backlog));
		return done(fn, arg);
	}
	bound = (u64)READ_ONCE(atomic_timeout_ms) * NSEC_PER_MSEC;
	until = ktime_get_ns() + bound;
	for (;;) {
		if (done(fn, arg))
			return true;
		if (pcinet_wait_over(fn))
			return false;
		if (ktime_get_ns() > until) {
			if (++bounds >= PCINET_ATOMIC_PROGRESS_BOUNDS ||
			    !pcinet_progressed(fn, &seen, backlog))
				return done(fn, arg);
			until = ktime_get_ns() + bound;
		}
		cpu_relax();
	}
}

static bool pcinet_applied(struct pcinet_fn *fn, void *target)
{
	return atomic64_read_acquire(&fn->writes_applied) >= *(s64 *)target;
}

/* The read fence: waits until the device applied `target` writes; false on timeout, when the
 * function goes, or (at once) while the device is stalled.
 */
static bool pcinet_wait_applied(struct pcinet_fn *fn, s64 target, enum pcinet_wait how)
{
	bool ok;

	if (pcinet_applied(fn, &target))
		return true;
	if (pcinet_stalled(fn)) {
		atomic64_inc(&fn->stats.stall_fails);
		return false;
	}
	atomic64_inc(how == PN_SLEEP ? &fn->stats.deferred : &fn->stats.spun);
	ok = pcinet_wait(fn, pcinet_applied, &target, target, how);
	if (!ok)
		pcinet_stall(fn);
	return ok;
}

static bool pcinet_read_answered(struct pcinet_fn *fn, void *slot)
{
	/* Acquire: the data stored before the status (pcinet_mmio_read_cpl()) is seen with it. */
	return smp_load_acquire(&((struct pcinet_read_slot *)slot)->status);
}

static void pcinet_volatile_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size,
				 enum pcinet_wait how)
{
	struct pcinet_r_mmio_read rec = {};
	struct pcinet_read_slot *slot = NULL;
	u64 data = ~0ull;
	unsigned long flags;
	unsigned int i;
	s64 backlog;
	int status;
	u32 tag;

	atomic64_inc(&fn->stats.volatile_reads);
	if (pcinet_stalled(fn)) {
		atomic64_inc(&fn->stats.stall_fails);
		atomic64_inc(&fn->stats.read_timeouts);
		memset(val, 0xff, size);
		return;
	}
	spin_lock_irqsave(&fn->reads_lock, flags);
	for (i = 0; i < PCINET_READ_SLOTS; i++) {
		if (!fn->reads[i].tag) {
			slot = &fn->reads[i];
			break;
		}
	}
	if (slot) {
		/* The slot index in the low bits, a generation above, never 0. */
		fn->next_tag = (fn->next_tag + 1) & 0x3ffffff;
		if (!fn->next_tag)
			fn->next_tag = 1;
		tag = fn->next_tag << 6 | i;
		slot->tag = tag;
		slot->size = size;
		slot->status = 0;
	}
	spin_unlock_irqrestore(&fn->reads_lock, flags);
	if (!slot) {
		atomic64_inc(&fn->stats.read_timeouts);
		memset(val, 0xff, size);
		return;
	}

	pcinet_hdr(&rec.hdr, PCINET_R_MMIO_READ, sizeof(rec));
	rec.tag = cpu_to_le32(tag);
	rec.bar = cpu_to_le32(bar);
	rec.size = cpu_to_le32(size);
	rec.offset = cpu_to_le64(off);
	/* Answered after the writes sent before it: those are its backlog. */
	backlog = atomic64_read(&fn->writes_sent);
	if (how == PN_SLEEP)
		pcinet_queue(fn, &rec, sizeof(rec));
	else
		pcinet_queue_atomic(fn, &rec, sizeof(rec));
	pcinet_wait(fn, pcinet_read_answered, slot, backlog, how);
	spin_lock_irqsave(&fn->reads_lock, flags);
	status = slot->status;
	if (status > 0)
		data = slot->data;
	slot->tag = 0;
	spin_unlock_irqrestore(&fn->reads_lock, flags);
	if (!status && READ_ONCE(fn->link_down)) {
		status = -1;	/* the link went down: no completion will come */
	} else if (!status) {
		atomic64_inc(&fn->stats.read_timeouts);
		pr_warn_ratelimited("%04x:00:00.0: MMIO read of BAR %u +0x%llx timed out: all-ones\n",
				    fn->domain, bar, off);
		pcinet_stall(fn);
	}
	memcpy(val, &data, size);
}

int pcinet_mmio_read_cpl(struct pcinet_fn *fn, const struct pcinet_w_mmio_read_cpl *c)
{
	u32 tag = le32_to_cpu(c->tag), status = le32_to_cpu(c->status);
	struct pcinet_read_slot *slot = &fn->reads[tag % PCINET_READ_SLOTS];
	unsigned long flags;

	if (status != PCINET_STATUS_OK && status != PCINET_STATUS_ERROR)
		return -EINVAL;
	spin_lock_irqsave(&fn->reads_lock, flags);
	/* A completion for a read that already timed out finds its slot reused or free. */
	if (tag && slot->tag == tag && !slot->status) {
		slot->data = le64_to_cpu(c->data);
		/* Release: the waiter that sees the status sees the data (pcinet_read_answered()). */
		smp_store_release(&slot->status, status == PCINET_STATUS_OK ? 1 : -1);
	}
	spin_unlock_irqrestore(&fn->reads_lock, flags);
	wake_up_all(&fn->mmioq);
	return 0;
}

/*
 * The link went down: reads waiting for the device get error completions (all-ones), and the
 * shadows start over from zero, ready for the next device's initial contents (W_SHADOW before
 * W_LINK_UP; like an Attach description, bytes it does not give are zero). Meanwhile reads are
 * served by pcinet_gone_read(), not from the shadows.
 */
void pcinet_mmio_link_down(struct pcinet_fn *fn)
{
	unsigned long flags;
	unsigned int i;

	/* Not under shadow_lock (a BAR may be large): from here on nobody reads the shadows, and
	 * W_SHADOW comes in under fn->lock, which we hold. A read that began before link_down was
	 * set may see a mix, which is what a read racing a dying device deserves.
	 */
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		if (fn->bars[i].shadow)
			memset(fn->bars[i].shadow, 0, fn->bars[i].size);
	}

	spin_lock_irqsave(&fn->reads_lock, flags);
	for (i = 0; i < PCINET_READ_SLOTS; i++) {
		if (fn->reads[i].tag && !fn->reads[i].status) {
			/* Release, as a completion's: the waiter reads all-ones, not stale data. */
			smp_store_release(&fn->reads[i].status, -1);
		}
	}
	spin_unlock_irqrestore(&fn->reads_lock, flags);
	wake_up_all(&fn->mmioq);
}

int pcinet_shadow_update(struct pcinet_fn *fn, u32 bar, u64 off, const void *data, u32 size)
{
	unsigned long flags;

	spin_lock_irqsave(&fn->shadow_lock, flags);
	memcpy(fn->bars[bar].shadow + off, data, size);
	spin_unlock_irqrestore(&fn->shadow_lock, flags);
	return 0;
}

/*
 * A stand-in for the device, while a frozen driver is restored so that its remove() finds it
 * running (freeze.c): each BAR reads what was last written to it, from its power-on contents on
 * (a copy of the shadow as at W_START), and config space is the image (core.c). Nothing reaches
 * the endpoint, nothing waits, nothing interrupts; doorbell writes go nowhere. The device may be
 * gone, its link down, or there: the shadow is left alone either way. Process context; 0 or
 * -ENOMEM.
 */
int pcinet_mmio_standin(struct pcinet_fn *fn)
{
	u8 *regs[PCINET_NUM_BARS] = {};
	unsigned long flags;
	unsigned int i;

	for (i = 0; i < PCINET_NUM_BARS; i++) {
		if (!fn->bars[i].reset)
			continue;
		regs[i] = vmalloc(fn->bars[i].size);
		if (!regs[i])
			goto nomem;
		memcpy(regs[i], fn->bars[i].reset, fn->bars[i].size);
	}
	spin_lock_irqsave(&fn->shadow_lock, flags);
	for (i = 0; i < PCINET_NUM_BARS; i++)
		fn->bars[i].standin = regs[i];
	WRITE_ONCE(fn->standin, true);
	spin_unlock_irqrestore(&fn->shadow_lock, flags);
	return 0;

nomem:
	while (i--)
		vfree(regs[i]);
	return -ENOMEM;
}

/* The stand-in leaves; accesses on other CPUs that still find it served are over on return. */
void pcinet_mmio_standin_end(struct pcinet_fn *fn)
{
	u8 *regs[PCINET_NUM_BARS];
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&fn->shadow_lock, flags);
	WRITE_ONCE(fn->standin, false);
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		regs[i] = fn->bars[i].standin;
		fn->bars[i].standin = NULL;
	}
	spin_unlock_irqrestore(&fn->shadow_lock, flags);
	for (i = 0; i < PCINET_NUM_BARS; i++)
		vfree(regs[i]);
}

static bool pcinet_standin_decodes(struct pcinet_fn *fn)
{
	return READ_ONCE(fn->config[PCI_COMMAND]) & PCI_COMMAND_MEMORY;
}

/* A read the stand-in serves (the MSI-X table is msix.c's); false if it left meanwhile. */
bool pcinet_standin_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size)
{
	unsigned long flags;
	u8 *regs;

	if (pcinet_msix_owns(fn, bar, off, size)) {
		pcinet_msix_read(fn, off, val, size);
		return true;
	}
	spin_lock_irqsave(&fn->shadow_lock, flags);
	regs = fn->bars[bar].standin;
	if (regs && pcinet_standin_decodes(fn))
		memcpy(val, regs + off, size);
	else if (regs)
		memset(val, 0xff, size);	/* master abort */
	spin_unlock_irqrestore(&fn->shadow_lock, flags);
	return regs;
}

bool pcinet_standin_write(struct pcinet_fn *fn, u32 bar, u64 off, const void *val,
				 u32 size)
{
	bool doorbell = pcinet_range_at(fn, bar, off, size, PCINET_RANGE_DOORBELL);
	unsigned long flags;
	u8 *regs;

	if (pcinet_msix_owns(fn, bar, off, size)) {
		pcinet_msix_write(fn, off, val, size);
		return true;
	}
	spin_lock_irqsave(&fn->shadow_lock, flags);
	regs = fn->bars[bar].standin;
	if (regs && !doorbell && pcinet_standin_decodes(fn))
		memcpy(regs + off, val, size);
	spin_unlock_irqrestore(&fn->shadow_lock, flags);
	return regs;
}

/*
 * A read of a function that is gone (removed while its driver unbinds): the MSI-X table as the
 * driver left it, all-ones for volatile ranges, and the power-on contents of the rest (the shadow
 * as it was at W_START). Drivers that wait for a reset to show (Linux 6.1's virtio_pci polls the
 * device status for 0 with no end) then finish unbinding instead of spinning on all-ones.
 */
void pcinet_gone_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size)
{
	if (pcinet_msix_owns(fn, bar, off, size))
		pcinet_msix_read(fn, off, val, size);
	else if (!fn->bars[bar].reset || pcinet_range_at(fn, bar, off, size, PCINET_RANGE_VOLATILE))
		memset(val, 0xff, size);
	else
		memcpy(val, fn->bars[bar].reset + off, size);
}

int pcinet_serve_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size,
			     enum pcinet_wait how)
{
	unsigned long flags;
	s64 target;

	if (pcinet_msix_owns(fn, bar, off, size)) {
		pcinet_msix_read(fn, off, val, size);
		return 0;
	}
	if (READ_ONCE(fn->link_down)) {
		pcinet_gone_read(fn, bar, off, val, size);
		return 0;
	}
	if (pcinet_range_at(fn, bar, off, size, PCINET_RANGE_VOLATILE)) {
		if (how == PN_NOWAIT)
			return -EAGAIN;
		if (size > 8) {		/* a 16-byte SSE load: two device reads */
			pcinet_volatile_read(fn, bar, off, val, 8, how);
			pcinet_volatile_read(fn, bar, off + 8, val + 8, size - 8, how);
		} else {
			pcinet_volatile_read(fn, bar, off, val, size, how);
		}
		return 0;
	}
	/* The fence: every write sent before this read, by any CPU, applied by the device. */
	target = atomic64_read(&fn->writes_sent);
	if (how == PN_NOWAIT && atomic64_read_acquire(&fn->writes_applied) < target)
		return -EAGAIN;
	atomic64_inc(&fn->stats.mmio_reads);
	if (!pcinet_wait_applied(fn, target, how)) {
		if (READ_ONCE(fn->state) != PN_STARTED || READ_ONCE(fn->link_down)) {
			pcinet_gone_read(fn, bar, off, val, size);
			return 0;
		}
		atomic64_inc(&fn->stats.read_timeouts);
		pr_warn_ratelimited("%04x:00:00.0: the device did not apply earlier writes in time: BAR %u +0x%llx reads all-ones\n",
				    fn->domain, bar, off);
		memset(val, 0xff, size);
		return 0;
	}
	spin_lock_irqsave(&fn->shadow_lock, flags);
	memcpy(val, fn->bars[bar].shadow + off, size);
	spin_unlock_irqrestore(&fn->shadow_lock, flags);
	return 0;
}

int pcinet_serve_write(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size,
			      enum pcinet_wait how)
{
	struct {
		struct pcinet_r_mmio_write w;
		u8 data[16];
	} rec = {};
	size_t len = ALIGN(sizeof(rec.w) + size, 8);

	if (pcinet_msix_owns(fn, bar, off, size)) {
		pcinet_msix_write(fn, off, val, size);
		return 0;
	}
	if (READ_ONCE(fn->link_down)) {
		atomic64_inc(&fn->stats.link_dropped);
		return 0;
	}
	if (how == PN_NOWAIT && READ_ONCE(fn->queued) > PCINET_QUEUE_BYTES)
		return -EAGAIN;
	/* This attempt queues the write (an -EAGAIN above is retried asleep, and pushes nothing):
	 * what a doorbell makes the device read goes in front of it.
	 */
	pcinet_push_doorbell(fn, bar, off, val, size);
	pcinet_hdr(&rec.w.hdr, PCINET_R_MMIO_WRITE, len);
	rec.w.bar = cpu_to_le32(bar);
	rec.w.size = cpu_to_le32(size);
	rec.w.offset = cpu_to_le64(off);
	memcpy(rec.data, val, size);
	atomic64_inc(&fn->stats.mmio_writes);
	if (!pcinet_range_at(fn, bar, off, size, PCINET_RANGE_DOORBELL))
		atomic64_inc(&fn->writes_sent);
	if (how == PN_SLEEP)
		pcinet_queue(fn, &rec, len);
	else
		pcinet_queue_atomic(fn, &rec, len);
	return 0;
}

/*
 * A doorbell write the module makes on the driver's behalf (push.c, W_VIRTQ_DONE): queued, its
 * pushes in front, exactly as the driver's own write of `val` at `off` would be. Process context.
 */
void pcinet_mmio_kick(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size)
{
	pcinet_serve_write(fn, bar, off, val, size, PN_SLEEP);
}
