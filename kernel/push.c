// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: push rules (docs/PUSH.md). The endpoint declares rules (W_PUSH_RULE): "this doorbell
 * makes the device read that ring". When the driver writes the doorbell, mmio.c calls
 * pcinet_push_doorbell() before it queues the R_MMIO_WRITE, and the bytes the device is about to
 * read go in front of it as R_PUSH records, copied from the DMA sandbox at that moment. Which
 * bytes is push-walk.c's business; this file keeps the rules, copies, builds and queues records.
 * NVMe shadow doorbells (event indices, quiet SQs rung for the driver) are push-sq.c's.
 *
 * Pushes are an optimisation: they never wait and never fail the write. When the read queue is
 * full they are skipped; when memory is short (GFP_ATOMIC: this runs in the MMIO fault path with
 * interrupts off) a range is skipped; every skip is counted.
 *
 * Ordering, all under fn->push_lock, which is taken with interrupts off and nests outside the
 * DMA table's lock and the read queue's lock:
 * - a doorbell holds it from its first copy until its records are on the read queue, so the
 *   R_PUSH_DROP of an unmap that raced with the copy (pcinet_push_unmapped() takes the lock
 *   before queueing) comes after the pushes it cancels;
 * - W_PUSH_RULE installs the rule and queues R_PUSH_RULE_SET under it, so every push of the old
 *   rule is before the answer and every push of the new one after it, as the endpoint expects;
 * - a quiet SQ's round reads the shadow tail and queues the doorbell it rings under it, so the tail
 *   values the endpoint receives never go back: the driver's own rings come with its SQ lock held,
 *   the shadow holding the very value it rings until its trap has queued it.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/log2.h>
#include <linux/slab.h>
#include <uapi/linux/virtio_ring.h>

#include "internal.h"
#include "push.h"

static bool push_defer = true;
module_param(push_defer, bool, 0644);
MODULE_PARM_DESC(push_defer,
		 "Data pushes are copied when their record is sent, not in the doorbell's trap (docs/PUSH.md)");

static uint push_budget = PCINET_PUSH_MAX_BYTES;
module_param(push_budget, uint, 0644);
MODULE_PARM_DESC(push_budget,
		 "Most bytes pushed per doorbell write, 65536..2097152 (docs/PUSH.md)");

/* One doorbell write's budget: push_budget within its bounds. */
u32 pcinet_push_budget(void)
{
	return clamp_t(u32, READ_ONCE(push_budget), PCINET_MAX_DATA, PCINET_PUSH_MAX_BYTES);
}

/*
 * A doorbell write's walk, its records to go into c (whose fn is set): the budget, the steps,
 * and whether it may push at all.
 */
void pcinet_push_start(struct pcinet_push_walker *w, struct pcinet_push_ctx *c)
{
	INIT_LIST_HEAD(&c->recs);
	*w = (struct pcinet_push_walker){
		.ops = &pcinet_push_ops,
		.ctx = c,
		.left = pcinet_push_budget(),
		.steps = PCINET_PUSH_MAX_STEPS,
		/* The reader is behind: push nothing, but move `last` on as if pushed, so a later
		 * doorbell does not push entries the device has long read (stale bytes it might be
		 * served later).
		 */
		.dry = READ_ONCE(c->fn->queued) > PCINET_QUEUE_BYTES,
	};
}

/* ---- W_PUSH_RULE ---- */

/*
 * Kept event indices. A controller reset (the driver's, an FLR, link down and up) makes the
 * device forget its shadow-doorbell buffer and its rules their event index, but the driver's
 * queues keep using the buffer until it gives the buffer to the new controller: Linux does that
 * only after its I/O queues are back and the I/O it had queued before the reset has completed
 * (nvme_reset_work(): nvme_wait_freeze() before nvme_dbbuf_set()). Meanwhile the driver rings an
 * SQ tail doorbell only if the stale event index asks, which after the first submission it does
 * not: requeued I/O sat in the SQ unseen until nvme's timeout (lab, after a card's outage). So the
 * event index of every SQ doorbell that had one is kept, and written at each write to that
 * doorbell that no rule with an event index serves, exactly as a rule would: every submission
 * rings. It is forgotten when the memory is unmapped (dma.c), before its IOVA can be reused.
 * Under push_lock.
 */
static void pcinet_push_keep_ei(struct pcinet_fn *fn, const struct pcinet_push_rule *r)
{
	unsigned int i, n = fn->kept_ei_count;

	for (i = 0; i < n; i++)
		if (fn->kept_ei[i].bar == r->bar && fn->kept_ei[i].offset == r->offset)
			break;
	if (i == ARRAY_SIZE(fn->kept_ei))
		return;		/* more doorbells than rules can name: an endpoint's mistake */
	fn->kept_ei[i] = (struct pcinet_kept_ei){ .bar = r->bar, .offset = r->offset,
						  .iova = r->avail };
	if (i == n)
		WRITE_ONCE(fn->kept_ei_count, n + 1);
}

/* The driver unmapped [iova, iova + len): kept event indices in it are forgotten. Any context. */
void pcinet_push_ei_unmapped(struct pcinet_fn *fn, u64 iova, u64 len)
{
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&fn->push_lock, flags);
	for (i = 0; i < fn->kept_ei_count;) {
		if (fn->kept_ei[i].iova - iova < len) {
			fn->kept_ei[i] = fn->kept_ei[fn->kept_ei_count - 1];
			WRITE_ONCE(fn->kept_ei_count, fn->kept_ei_count - 1);
		} else {
			i++;
		}
	}
	spin_unlock_irqrestore(&fn->push_lock, flags);
}

/* Rule slots in use; READ_ONCE in the write path, which skips everything when it is 0. */
static void pcinet_push_count(struct pcinet_fn *fn)
{
	unsigned int i, n = 0;

	for (i = 0; i < PCINET_MAX_PUSH_RULES; i++)
		n += fn->push_rules[i].kind != PCINET_PUSH_NONE;
	WRITE_ONCE(fn->push_count, n);
}

static int pcinet_push_check(struct pcinet_fn *fn, const struct pcinet_w_push_rule *w,
			     struct pcinet_push_rule *r)
{
	r->kind = le32_to_cpu(w->kind);
	r->bar = le32_to_cpu(w->bar);
	r->entries = le32_to_cpu(w->entries);
	r->offset = le64_to_cpu(w->offset);
	r->ring = le64_to_cpu(w->ring);
	r->avail = le64_to_cpu(w->avail);
	r->data_max = le32_to_cpu(w->data_max);
	r->lba_shift = le32_to_cpu(w->lba_shift);
	r->flags = le32_to_cpu(w->flags);
	r->shadow = le64_to_cpu(w->shadow);
	r->last = 0;
	r->answered = 0;
	r->quiet = false;

	switch (r->kind) {
	case PCINET_PUSH_NONE:
		/* A removal names only its id: the other fields are whatever the endpoint's
		 * message held (the host-agent checks nothing else either, push-rule.ts).
		 */
		*r = (struct pcinet_push_rule){};
		return 0;
	case PCINET_PUSH_NVME_SQ:
		if (r->entries < 2 || r->entries > 65536 || r->lba_shift < 9 || r->lba_shift > 12 ||
		    (r->avail & 3) || r->flags || (r->shadow & 3) || (r->shadow && !r->avail))
			return -EINVAL;
		break;
	case PCINET_PUSH_VIRTQ:
		if (!is_power_of_2(r->entries) || r->entries > 32768 || r->lba_shift || r->shadow ||
		    (r->flags & ~PCINET_PUSH_F_INDIRECT))
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	/* The doorbell's 4 bytes inside the BAR; ring addresses are the driver's business: a
	 * wrong one is refused by the DMA check at every push, like the device's own reads.
	 */
	if (r->bar >= PCINET_NUM_BARS || !fn->bars[r->bar].size ||
	    r->offset >= fn->bars[r->bar].size || fn->bars[r->bar].size - r->offset < 4 ||
	    r->data_max > PCINET_PUSH_MAX_BYTES)
		return -EINVAL;
	return 0;
}

/*
 * A replacement for the same ring keeps the old rule's position: the driver's index has moved on
 * since the ring was set up, and starting again from 0 would push entries long consumed (with
 * what they point to, freed since), which nothing would read and a later miss could be served
 * (docs/PUSH.md "Rules"). NVMe's Doorbell Buffer Config adds an event index that way while I/O
 * runs, after a reset.
 */
static bool pcinet_push_same_ring(const struct pcinet_push_rule *old, const struct pcinet_push_rule *r)
{
	return r->kind != PCINET_PUSH_NONE && old->kind == r->kind && old->bar == r->bar &&
	       old->offset == r->offset && old->ring == r->ring && old->entries == r->entries &&
	       (r->kind != PCINET_PUSH_VIRTQ || old->avail == r->avail);
}

/* W_PUSH_RULE: installs, replaces or removes rule `id`, and answers R_PUSH_RULE_SET. */
int pcinet_push_rule(struct pcinet_fn *fn, const struct pcinet_w_push_rule *w)
{
	struct pcinet_r_push_rule_set *set;
	struct pcinet_push_rule r;
	struct pcinet_rec *rec;
	unsigned long flags;
	u32 id = le32_to_cpu(w->id);
	int ret;

	if (fn->state == PN_NEW)
		return -EBUSY;
	if (id >= PCINET_MAX_PUSH_RULES || w->reserved)
		return -EINVAL;
	ret = pcinet_push_check(fn, w, &r);
	if (ret)
		return ret;
	if (pcinet_down_drop(fn))
		return 0;
	/* Removed: nothing triggers rules any more, and nobody waits for the answer. */
	if (fn->state == PN_DETACHED)
		return 0;
	rec = pcinet_rec_alloc(fn, sizeof(*set));
	if (!rec)
		return -ENOMEM;
	set = (struct pcinet_r_push_rule_set *)rec->data;
	pcinet_hdr(&set->hdr, PCINET_R_PUSH_RULE_SET, sizeof(*set));
	set->id = cpu_to_le32(id);
	set->reserved = 0;

	spin_lock_irqsave(&fn->push_lock, flags);
	/* The old rule's SQ may be quiet: the driver rings again before the rule goes. */
	pcinet_sq_unquiet(fn, &fn->push_rules[id]);
	if (pcinet_push_same_ring(&fn->push_rules[id], &r))
		r.last = fn->push_rules[id].last;
	r.answered = r.last;	/* nothing of the new rule's is unanswered */
	fn->push_rules[id] = r;
	pcinet_push_count(fn);
	if (r.kind == PCINET_PUSH_NVME_SQ && r.avail)
		pcinet_push_keep_ei(fn, &r);
	pcinet_rec_add(fn, rec);
	spin_unlock_irqrestore(&fn->push_lock, flags);
	return 0;
}

/*
 * Function reset, link down or up, removal: the endpoint forgets every push and its models set
 * their rules again, so the rules go, and so do the marks that would send R_PUSH_DROP. Any
 * context (an FLR comes through a config write, under pci_lock).
 */
void pcinet_push_clear(struct pcinet_fn *fn)
{
	unsigned long flags;
	u32 id;

	spin_lock_irqsave(&fn->push_lock, flags);
	/* The device forgets what it was to answer: quiet SQs ring again (the kept event index
	 * then does the rest).
	 */
	for (id = 0; id < PCINET_MAX_PUSH_RULES; id++)
		pcinet_sq_unquiet(fn, &fn->push_rules[id]);
	memset(fn->push_rules, 0, sizeof(fn->push_rules));
	WRITE_ONCE(fn->push_count, 0);
	pcinet_dma_forget_pushes(fn);
	spin_unlock_irqrestore(&fn->push_lock, flags);
}

/* ---- W_VIRTQ_DONE ---- */

/* vring_need_event(): has used idx, moving from old to new, passed the driver's used_event? */
static bool pcinet_need_event(u16 event, u16 new, u16 old)
{
	return (u16)(new - event - 1) < (u16)(new - old);
}

/*
 * The device ended a round of the virtqueue behind rule `id` (uapi pcinet.h, docs/PUSH.md
 * "Virtqueue rounds"). Its used-ring and avail_event writes came before this record and are
 * applied; the barrier pairs with the driver's between publishing avail idx or used_event and
 * reading avail_event or used idx, so either the driver sees our writes or we see its.
 * Process context (write() or the link's receive thread).
 */
int pcinet_virtq_done(struct pcinet_fn *fn, const struct pcinet_w_virtq_done *w)
{
	u32 id = le32_to_cpu(w->id), flags = le32_to_cpu(w->flags);
	u32 vector = le32_to_cpu(w->vector);
	u16 old = le16_to_cpu(w->old_used), new = le16_to_cpu(w->new_used);
	struct pcinet_push_rule r;
	unsigned long irqf;
	bool want = true;
	__le16 v;

	if (id >= PCINET_MAX_PUSH_RULES ||
	    (flags & ~(PCINET_VQ_F_INTERRUPT | PCINET_VQ_F_EVENT_IDX | PCINET_VQ_F_RECHECK)) ||
	    w->reserved[0] || w->reserved[1] || w->reserved[2] ||
	    ((flags & PCINET_VQ_F_INTERRUPT) && vector >= fn->msix_vectors))
		return -EINVAL;
	if (fn->state != PN_STARTED)
		return -EBUSY;
	if (pcinet_down_drop(fn))
		return 0;
	atomic64_inc(&fn->stats.vq_rounds);
	spin_lock_irqsave(&fn->push_lock, irqf);
	r = fn->push_rules[id];
	if (r.kind == PCINET_PUSH_NVME_SQ && r.shadow && (flags & PCINET_VQ_F_RECHECK))
		pcinet_sq_round(fn, id, le16_to_cpu(w->kick));
	spin_unlock_irqrestore(&fn->push_lock, irqf);
	/* The device's ring writes before our reads of the driver's: pairs with virtio_mb() in the
	 * driver (see above).
	 */
	smp_mb();

	if ((flags & PCINET_VQ_F_INTERRUPT) && old != new) {
		/* An unreadable driver area (a rule gone, the ring unmapped) gets the interrupt: one
		 * too many is harmless, one too few hangs the driver.
		 */
		if (r.kind == PCINET_PUSH_VIRTQ) {
			if (flags & PCINET_VQ_F_EVENT_IDX) {
				if (pcinet_dma_peek(fn, r.avail + 4 + 2 * (u64)r.entries, &v, sizeof(v), false))
					want = pcinet_need_event(le16_to_cpu(v), new, old);
			} else if (pcinet_dma_peek(fn, r.avail, &v, sizeof(v), false)) {
				want = !(le16_to_cpu(v) & VRING_AVAIL_F_NO_INTERRUPT);
			}
		}
		if (want)
			pcinet_msix_raise(fn, vector);
		else
			atomic64_inc(&fn->stats.vq_irqs_skipped);
	}

	/* Without bus mastering a notify pushes nothing and `last` stays: a kick would only bring
	 * the device back here, round after round.
	 */
	if ((flags & PCINET_VQ_F_RECHECK) && r.kind == PCINET_PUSH_VIRTQ &&
	    (READ_ONCE(fn->config[PCI_COMMAND]) & PCI_COMMAND_MASTER) &&
	    pcinet_dma_peek(fn, r.avail + 2, &v, sizeof(v), false)) {
		u16 n = le16_to_cpu(v) - (u16)r.last;

		/* A jump past the ring size is a broken ring: the device finds it on its next
		 * notify; kicking it here would not help.
		 */
		if (n && n <= r.entries) {
			__le16 kick = w->kick;
			u64 start = ktime_get_ns();

			atomic64_inc(&fn->stats.vq_kicks);
			pcinet_mmio_kick(fn, r.bar, r.offset, &kick, sizeof(kick));
			pcinet_timing_add(&fn->stats.t_kick_ns, &fn->stats.t_kick_n, start);
		}
	}
	return 0;
}

/* ---- building R_PUSH records ---- */

static struct pcinet_r_push *pcinet_push_of(struct pcinet_rec *r)
{
	return (struct pcinet_r_push *)r->data;
}

/* A record with room for `cap` data bytes: new (old NULL) or old grown; NULL if no memory. */
static struct pcinet_rec *pcinet_push_alloc(struct pcinet_rec *old, u32 cap)
{
	struct pcinet_rec *r;

	return krealloc(old, struct_size(r, data, sizeof(struct pcinet_r_push) + ALIGN(cap, 8)),
			GFP_ATOMIC | __GFP_NOWARN);
}

void pcinet_push_close(struct pcinet_push_ctx *c)
{
	struct pcinet_rec *r = c->cur;
	struct pcinet_r_push *p;

	if (!r)
		return;
	p = pcinet_push_of(r);
	r->len = ALIGN(sizeof(*p) + c->size, 8);
	pcinet_hdr(&p->hdr, PCINET_R_PUSH, r->len);
	p->size = cpu_to_le32(c->size);
	p->rule = cpu_to_le32(c->rule);
	p->iova = cpu_to_le64(c->iova);
	if (c->fill)
		p->hdr.flags = cpu_to_le16(PCINET_REC_F_FILL);	/* no room for data yet */
	else
		memset(p->data + c->size, 0, r->len - sizeof(*p) - c->size);
	list_add_tail(&r->node, &c->recs);
	c->records++;
	c->bytes += c->size;
	c->cur = NULL;
}

static bool pcinet_push_peek(void *ctx, u64 iova, void *buf, u32 len)
{
	struct pcinet_push_ctx *c = ctx;

	return pcinet_dma_peek(c->fn, iova, buf, len, false);
}

/*
 * Copies [iova, iova + len) into records: appended to the current one when it is the same
 * rule's and this range continues it, cut every PCINET_MAX_DATA bytes from the start of such a
 * run (as host-agent/sim/push.ts cuts them). A range that is not pushed leaves the current record
 * open, so the next one may still continue it. Returns the bytes pushed.
 *
 * A stable range (push-walk.h) is only checked here: its record is the header alone, and gets
 * its bytes when it is sent (pcinet_push_fill()). The trap, which runs with interrupts off, and
 * push_lock, which every doorbell and the receive thread's rounds take, are then held for the
 * walk only, not for allocating and copying up to a budget of a write's data. Such
 * a record holds stable bytes only.
 */
static u32 pcinet_push_copy(void *ctx, u32 rule, u64 iova, u32 len, bool stable)
{
	struct pcinet_push_ctx *c = ctx;
	bool fill = stable && READ_ONCE(push_defer);
	bool join = c->cur && c->rule == rule && c->iova + c->size == iova && c->fill == fill;
	u32 room = join ? PCINET_MAX_DATA - c->size : PCINET_MAX_DATA;
	u32 done = 0;

	/* A range that goes into more than one record is checked whole first: a range is pushed
	 * whole or not at all (only a mapping going away meanwhile can cut it short).
	 */
	if ((len > room || fill) && !pcinet_dma_peek(c->fn, iova, NULL, len, false)) {
		c->refused++;
		return 0;
	}
	while (done < len) {
		struct pcinet_rec *r;
		u32 n;

		if (join && c->size < PCINET_MAX_DATA) {
			n = min_t(u32, len - done, PCINET_MAX_DATA - c->size);
			if (!fill && c->size + n > c->cap) {
				/* Runs are rare (contiguous pages) and short: grow by doubling. */
				u32 cap = min_t(u32, PCINET_MAX_DATA, max(c->size + n, 2 * c->cap));

				r = pcinet_push_alloc(c->cur, cap);
				if (!r)
					goto nomem;
				c->cur = r;
				c->cap = cap;
			}
			if (!fill && !pcinet_dma_peek(c->fn, iova + done,
						      pcinet_push_of(c->cur)->data + c->size, n, true))
				goto refused;
			c->size += n;
		} else {
			n = min_t(u32, len - done, PCINET_MAX_DATA);
			r = pcinet_push_alloc(NULL, fill ? 0 : n);
			if (!r)
				goto nomem;
			if (!fill && !pcinet_dma_peek(c->fn, iova + done, pcinet_push_of(r)->data, n,
						      true)) {
				kfree(r);
				goto refused;
			}
			pcinet_push_close(c);
			c->cur = r;
			c->cap = n;
			c->rule = rule;
			c->iova = iova + done;
			c->size = n;
			c->fill = fill;
			join = true;
		}
		done += n;
	}
	return done;

refused:
	c->refused++;
	return done;
nomem:
	c->nomem++;
	return done;
}

const struct pcinet_push_walk_ops pcinet_push_ops = {
	.peek = pcinet_push_peek,
	.push = pcinet_push_copy,
};

/*
 * A record is about to be sent (the link) or read (the host-agent): an R_PUSH of stable bytes
 * gets them now, in a record of its full size that replaces *rp, checked and copied as at the
 * doorbell, and its mappings are marked pushed from (an unmap after this queues its
 * R_PUSH_DROP behind the record, which is already off the queue). False, *rp freed and NULL, if
 * they are no longer all readable by the device (the driver unmapped meanwhile, which for a write
 * in flight only a reset or an abort does) or memory is short: the push does not go (the device
 * reads the memory itself then), counted as refused or out of memory. Process context; GFP_NOIO,
 * as the link's sender carries a disk's writeback.
 */
bool pcinet_push_fill(struct pcinet_fn *fn, struct pcinet_rec **rp)
{
	struct pcinet_rec *old = *rp, *r;
	struct pcinet_r_push *p = pcinet_push_of(old), *q;
	u32 size;

	if (old->len < sizeof(*p) || p->hdr.type != cpu_to_le16(PCINET_R_PUSH) ||
	    !(p->hdr.flags & cpu_to_le16(PCINET_REC_F_FILL)))
		return true;
	size = le32_to_cpu(p->size);
	r = kvmalloc(struct_size(r, data, old->len), GFP_NOIO | __GFP_NOWARN);
	if (!r) {
		atomic64_inc(&fn->stats.push_nomem);
		goto dropped;
	}
	r->len = old->len;
	r->queued_ns = old->queued_ns;
	q = pcinet_push_of(r);
	*q = *p;
	q->hdr.flags = 0;
	memset(q->data + size, 0, r->len - sizeof(*q) - size);
	if (!pcinet_dma_peek(fn, le64_to_cpu(q->iova), q->data, size, true)) {
		kvfree(r);
		atomic64_inc(&fn->stats.push_refused);
		goto dropped;
	}
	kvfree(old);
	*rp = r;
	return true;

dropped:
	kvfree(old);
	*rp = NULL;
	return false;
}

/* A doorbell's walk, counted: what it pushed, and what it skipped and why. */
void pcinet_push_count_walk(struct pcinet_fn *fn, const struct pcinet_push_ctx *c,
			    const struct pcinet_push_walker *w)
{
	struct pcinet_counters *s = &fn->stats;

	if (w->dry)
		atomic64_inc(&s->push_busy);
	if (c->records) {
		atomic64_add(c->records, &s->pushes);
		atomic64_add(c->bytes, &s->push_bytes);
	}
	if (c->refused || w->unreadable)
		atomic64_add(c->refused + w->unreadable, &s->push_refused);
	if (w->over_budget || w->exhausted)
		atomic64_add(w->over_budget + w->exhausted, &s->push_over_budget);
	if (c->nomem)
		atomic64_add(c->nomem, &s->push_nomem);
}

/*
 * The driver is writing `size` bytes `val` at `off` of BAR `bar`, and the write is about to be
 * queued (mmio.c calls this once per write, on the attempt that queues it). Queues the pushes of
 * every rule on that doorbell, in id order, sharing one budget. Any context; never waits.
 */
void pcinet_push_doorbell(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size)
{
	struct pcinet_push_ctx c = { .fn = fn };
	struct pcinet_push_walker w;
	struct pcinet_counters *s = &fn->stats;
	unsigned long flags;
	bool hit = false, ei_done = false;
	u64 start;
	u32 id;

	if (!READ_ONCE(fn->push_count) && !READ_ONCE(fn->kept_ei_count))
		return;
	/* No bus mastering: the device could not read the memory now, so no push may either. The
	 * rules stay where they are, as in the sim channel.
	 */
	if (!(READ_ONCE(fn->config[PCI_COMMAND]) & PCI_COMMAND_MASTER))
		return;
	pcinet_push_start(&w, &c);

	start = ktime_get_ns();
	spin_lock_irqsave(&fn->push_lock, flags);
	for (id = 0; id < PCINET_MAX_PUSH_RULES; id++) {
		struct pcinet_push_rule *r = &fn->push_rules[id];

		if (r->kind == PCINET_PUSH_NONE || r->bar != bar || r->offset != off)
			continue;
		hit = true;
		pcinet_push_walk(&w, id, r, val, size);
		if (r->kind == PCINET_PUSH_NVME_SQ && r->avail) {
			pcinet_sq_rung(fn, r, val, size);
			ei_done = true;
		}
	}
	for (id = 0; !ei_done && id < fn->kept_ei_count; id++) {
		if (fn->kept_ei[id].bar == bar && fn->kept_ei[id].offset == off) {
			pcinet_push_event_idx(fn, fn->kept_ei[id].iova, val, size);
			break;
		}
	}
	pcinet_push_close(&c);
	if (!list_empty(&c.recs))
		pcinet_rec_add_list(fn, &c.recs);
	spin_unlock_irqrestore(&fn->push_lock, flags);

	if (!hit)
		return;
	pcinet_timing_add(&s->t_push_ns, &s->t_push_n, start);
	pcinet_push_count_walk(fn, &c, &w);
}

/*
 * The driver unmapped [iova, iova + len), which a push copied from: tell the endpoint to forget
 * those bytes. Called by dma.c after it dropped its lock, from any context (drivers unmap in
 * interrupt handlers), never waits: the queue may run over its bound by these 24-byte records,
 * at most one per mapping pushed from.
 */
/*
 * Grows the R_PUSH_DROP at the tail of the read queue, if there is one and [iova, iova + len)
 * touches it: a scatterlist is unmapped segment by segment, and its IOVAs are neighbours, so a
 * 128 KiB write costs one drop, not 32. push_lock held (as for queueing); the reader takes
 * records off the queue under qlock, so the tail is ours while we hold it.
 */
static bool pcinet_push_drop_merge(struct pcinet_fn *fn, u64 iova, u64 len)
{
	struct pcinet_r_push_drop *d;
	struct pcinet_rec *tail;
	bool merged = false;
	unsigned long flags;
	u64 at, n;

	spin_lock_irqsave(&fn->qlock, flags);
	if (!list_empty(&fn->queue)) {
		tail = list_last_entry(&fn->queue, struct pcinet_rec, node);
		d = (struct pcinet_r_push_drop *)tail->data;
		if (tail->len == sizeof(*d) && le16_to_cpu(d->hdr.type) == PCINET_R_PUSH_DROP) {
			at = le64_to_cpu(d->iova);
			n = le64_to_cpu(d->length);
			if (iova + len == at) {
				d->iova = cpu_to_le64(iova);
				d->length = cpu_to_le64(n + len);
				merged = true;
			} else if (at + n == iova) {
				d->length = cpu_to_le64(n + len);
				merged = true;
			}
		}
	}
	spin_unlock_irqrestore(&fn->qlock, flags);
	return merged;
}

void pcinet_push_unmapped(struct pcinet_fn *fn, u64 iova, u64 len)
{
	struct pcinet_r_push_drop *d;
	struct pcinet_rec *r;
	unsigned long flags;
	bool merged;

	/* The endpoint forgets everything on removal and link loss. */
	if (READ_ONCE(fn->state) != PN_STARTED || READ_ONCE(fn->link_down))
		return;
	spin_lock_irqsave(&fn->push_lock, flags);
	merged = pcinet_push_drop_merge(fn, iova, len);
	spin_unlock_irqrestore(&fn->push_lock, flags);
	if (merged) {
		atomic64_inc(&fn->stats.push_drops);
		return;
	}
	r = kmalloc(struct_size(r, data, sizeof(*d)), GFP_ATOMIC | __GFP_NOWARN);
	if (!r) {
		/* The endpoint may then serve the copy to a read issued later, as a device that
		 * prefetched would; say so, it is the one case where a push outlives its mapping.
		 */
		atomic64_inc(&fn->stats.lost_records);
		pr_warn_ratelimited("%04x:00:00.0: out of memory: R_PUSH_DROP for 0x%llx+0x%llx lost\n",
				    fn->domain, iova, len);
		return;
	}
	r->len = sizeof(*d);
	d = (struct pcinet_r_push_drop *)r->data;
	pcinet_hdr(&d->hdr, PCINET_R_PUSH_DROP, sizeof(*d));
	d->iova = cpu_to_le64(iova);
	d->length = cpu_to_le64(len);
	/* A doorbell that copied from this mapping before it was unmapped still holds the lock
	 * until its R_PUSH records are queued: the drop goes after them. It goes out with the next
	 * record that wakes the sender: only reads a later doorbell asks for can need it.
	 */
	spin_lock_irqsave(&fn->push_lock, flags);
	pcinet_rec_add_lazy(fn, r);
	spin_unlock_irqrestore(&fn->push_lock, flags);
	atomic64_inc(&fn->stats.push_drops);
}
