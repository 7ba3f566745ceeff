// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: the function's records to the host-agent or the kernel link, queued in order and
 * bounded (docs/KERNEL.md, "Records out").
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "internal.h"

static struct pcinet_rec *pcinet_rec_new(struct pcinet_fn *fn, const void *rec, size_t len,
					 gfp_t gfp)
{
	struct pcinet_rec *r = kvmalloc(struct_size(r, data, len), gfp);

	if (!r) {
		atomic64_inc(&fn->stats.lost_records);
		pr_warn_ratelimited("out of memory: a record for the host-agent is lost\n");
		return NULL;
	}
	r->len = len;
	memcpy(r->data, rec, len);
	return r;
}

/*
 * Under qlock, after records were queued: who sends them. With a kernel link, its send work on
 * this CPU (the submitter is about to sleep or return: the work runs next, without waking another
 * CPU, which under a hypervisor is an inter-processor interrupt and a vCPU coming out of halt);
 * the link's own thread only when the queue runs long (it drains from any CPU, also while this
 * one spins for queue space). Without one, read() on the file. `now`: false for a lazy record,
 * which waits for the next one unless the queue is long.
 */
static void pcinet_rec_wake(struct pcinet_fn *fn, bool now)
{
	/* Lazy records alone never make the queue long enough for writers to wait on it. */
	bool backlog = fn->queued > PCINET_QUEUE_BYTES / 4;

	if (fn->tx_link) {
		if (now || backlog)
			pcinet_link_kick(fn->tx_link);
		if (!backlog)
			return;
	} else if (!now && !backlog) {
		return;
	}
	wake_up_interruptible(&fn->readq);
}

static void __pcinet_rec_add(struct pcinet_fn *fn, struct pcinet_rec *r, bool wake)
{
	unsigned long flags;

	if (READ_ONCE(fn->link_down)) {
		/* Nobody to tell: the endpoint that comes back starts from its power-on state. */
		atomic64_inc(&fn->stats.link_dropped);
		kvfree(r);
		return;
	}
	/* 0: not timed (a lazy record waits for company on purpose). */
	r->queued_ns = wake ? ktime_get_ns() : 0;
	spin_lock_irqsave(&fn->qlock, flags);
	list_add_tail(&r->node, &fn->queue);
	fn->queued += r->len;
	pcinet_rec_wake(fn, wake);
	spin_unlock_irqrestore(&fn->qlock, flags);
}

/* Queues a record without waiting (callers bound their own output); dropped while the link
 * is down. Any context.
 */
void pcinet_rec_add(struct pcinet_fn *fn, struct pcinet_rec *r)
{
	__pcinet_rec_add(fn, r, true);
}

/*
 * pcinet_rec_add() without waking the link's send thread: the record goes with the next one that
 * does (a reader of /dev/pcinet finds it as usual). For records nothing waits for, whose only
 * use is to precede later records: R_PUSH_DROP, which matters only to reads that a later doorbell
 * will ask for. Saves a wake-up and a send per unmap. Any context.
 */
void pcinet_rec_add_lazy(struct pcinet_fn *fn, struct pcinet_rec *r)
{
	__pcinet_rec_add(fn, r, false);
}

/* pcinet_rec_add() for a list of records, emptied: queued together, in order, one wake-up. */
void pcinet_rec_add_list(struct pcinet_fn *fn, struct list_head *recs)
{
	struct pcinet_rec *r, *tmp;
	unsigned long flags;
	size_t bytes = 0;
	u64 now;

	if (READ_ONCE(fn->link_down)) {
		list_for_each_entry_safe(r, tmp, recs, node) {
			list_del(&r->node);
			atomic64_inc(&fn->stats.link_dropped);
			kvfree(r);
		}
		return;
	}
	now = ktime_get_ns();
	list_for_each_entry(r, recs, node) {
		bytes += r->len;
		r->queued_ns = now;
	}
	spin_lock_irqsave(&fn->qlock, flags);
	list_splice_tail_init(recs, &fn->queue);
	fn->queued += bytes;
	pcinet_rec_wake(fn, true);
	spin_unlock_irqrestore(&fn->qlock, flags);
}

/* Past PCINET_QUEUE_CAP: the record is dropped, counted and logged. */
static bool pcinet_queue_capped(struct pcinet_fn *fn)
{
	if (READ_ONCE(fn->queued) <= PCINET_QUEUE_CAP)
		return false;
	atomic64_inc(&fn->stats.queue_drops);
	pr_warn_ratelimited("%04x:00:00.0: %u MiB of records wait for the host-agent or link: dropped\n",
			    fn->domain, PCINET_QUEUE_CAP >> 20);
	return true;
}

/*
 * Queues a record for read() from a context that cannot sleep: config accessors (pci_lock held)
 * and the MMIO fault path. When the reader is behind by more than PCINET_QUEUE_BYTES, waits for
 * it (busy, bounded by 100 ms: the fault path cannot sleep) and counts the wait; the record is
 * queued either way. A wait that runs out marks the device stalled (pcinet_stall()), and while it
 * is no one waits again: records are queued at once, up to PCINET_QUEUE_CAP, past which they are
 * dropped and counted.
 */
void pcinet_queue_atomic(struct pcinet_fn *fn, const void *rec, size_t len)
{
	struct pcinet_rec *r;

	if (READ_ONCE(fn->queued) > PCINET_QUEUE_BYTES && READ_ONCE(fn->state) == PN_STARTED &&
	    !pcinet_stalled(fn)) {
		u64 start = ktime_get_ns(), until = start + 100 * NSEC_PER_MSEC;

		atomic64_inc(&fn->stats.queue_waits);
		while (READ_ONCE(fn->queued) > PCINET_QUEUE_BYTES &&
		       READ_ONCE(fn->state) == PN_STARTED && !READ_ONCE(fn->link_down)) {
			if (ktime_get_ns() > until) {
				atomic64_inc(&fn->stats.queue_overruns);
				pcinet_stall(fn);
				break;
			}
			cpu_relax();
		}
		pcinet_timing_add(&fn->stats.t_room_ns, &fn->stats.t_room_n, start);
	}
	if (pcinet_queue_capped(fn))
		return;
	r = pcinet_rec_new(fn, rec, len, GFP_ATOMIC);
	if (r)
		pcinet_rec_add(fn, r);
}

/* A record of `len` bytes for the caller to fill and pcinet_rec_queue(); process context. */
struct pcinet_rec *pcinet_rec_alloc(struct pcinet_fn *fn, size_t len)
{
	struct pcinet_rec *r = kvmalloc(struct_size(r, data, len), GFP_KERNEL);

	if (r)
		r->len = len;
	return r;
}

/* Queues a record from process context: waits (interruptibly, bounded) while the reader is
 * behind, so a flood of completions cannot grow the queue without bound; as
 * pcinet_queue_atomic() for a stalled device and past PCINET_QUEUE_CAP.
 */
void pcinet_rec_queue(struct pcinet_fn *fn, struct pcinet_rec *r)
{
	if (READ_ONCE(fn->queued) > PCINET_QUEUE_BYTES && !pcinet_stalled(fn)) {
		u64 start = ktime_get_ns();

		atomic64_inc(&fn->stats.queue_waits);
		if (!wait_event_interruptible_timeout(fn->writeq,
						      READ_ONCE(fn->queued) <= PCINET_QUEUE_BYTES ||
						      READ_ONCE(fn->state) != PN_STARTED ||
						      READ_ONCE(fn->link_down), HZ)) {
			atomic64_inc(&fn->stats.queue_overruns);
			pcinet_stall(fn);
		}
		pcinet_timing_add(&fn->stats.t_room_ns, &fn->stats.t_room_n, start);
	}
	if (pcinet_queue_capped(fn)) {
		kvfree(r);
		return;
	}
	pcinet_rec_add(fn, r);
}

void pcinet_queue(struct pcinet_fn *fn, const void *rec, size_t len)
{
	struct pcinet_rec *r = pcinet_rec_new(fn, rec, len, GFP_KERNEL);

	if (r)
		pcinet_rec_queue(fn, r);
}

/* A record for read() only, ahead of the data records (R_ATTACHED, R_LINK_CLOSED); process
 * context.
 */
void pcinet_queue_ctl(struct pcinet_fn *fn, const void *rec, size_t len)
{
	struct pcinet_rec *r = pcinet_rec_new(fn, rec, len, GFP_KERNEL);

	if (!r)
		return;
	spin_lock_irq(&fn->qlock);
	list_add_tail(&r->node, &fn->ctl);
	spin_unlock_irq(&fn->qlock);
	wake_up_interruptible(&fn->readq);
}
