// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: NVMe shadow doorbells (docs/PUSH.md, "Shadow doorbells" and "Quiet submission queues").
 * An NVMe rule with an event index gets, at each tail doorbell, the EventIdx write the device
 * would make: at the new tail, so that the driver's next submission rings; or, while a doorbell
 * is unanswered (sq_quiet), past every tail, so that the driver stops ringing. The device's round
 * for that doorbell (W_VIRTQ_DONE, push.c) brings us back to the shadow tail, and what the driver
 * submitted meanwhile is rung for it here, with its pushes (built by push.c), in parts.
 *
 * All under fn->push_lock, in the order push.c's header describes.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/list.h>
#include <linux/slab.h>

#include "internal.h"
#include "push.h"

static bool sq_quiet = true;
module_param(sq_quiet, bool, 0644);
MODULE_PARM_DESC(sq_quiet,
		 "NVMe SQs with shadow doorbells go quiet while a tail doorbell is unanswered (docs/PUSH.md)");

/* The event index of a quiet SQ: past any tail, so the driver rings only when its tail wraps. */
#define PCINET_SQ_QUIET_EI	0xffff

/* One part of a doorbell rung for the driver: PCINET_PUSH_PART_BYTES within the budget. */
static u32 pcinet_push_part(void)
{
	return min_t(u32, pcinet_push_budget(), PCINET_PUSH_PART_BYTES);
}

/*
 * An NVMe rule with an event index (docs/PUSH.md, "Shadow doorbells"): the value the driver just
 * wrote to the SQ tail doorbell goes to the SQ's shadow-doorbell EventIdx, before the driver goes
 * on, so its next submission sees the index at its old tail and rings. It is the device's own
 * write, made here because over the network it would come too late; a range the device may not
 * write is refused and counted like any DMA write of its.
 */
void pcinet_push_event_idx(struct pcinet_fn *fn, u64 iova, const void *val, u32 size)
{
	__le32 v = 0;

	memcpy(&v, val, min_t(u32, size, sizeof(v)));
	pcinet_dma_store(fn, iova, &v, sizeof(v));
}

/*
 * A tail doorbell of NVMe rule r is going to the device (the driver's, or one rung for it), with
 * its pushes: the event index the driver reads next. Unanswered and allowed, the SQ goes quiet:
 * the driver stops ringing, and the device's round for this doorbell brings us back to look at
 * the shadow tail (pcinet_sq_round()). Otherwise, as always, the index at the new tail: the next
 * submission rings. Under push_lock.
 */
void pcinet_sq_rung(struct pcinet_fn *fn, struct pcinet_push_rule *r, const void *val,
		    u32 size)
{
	__le32 v = 0;

	memcpy(&v, val, min_t(u32, size, sizeof(v)));
	r->quiet = r->shadow && READ_ONCE(sq_quiet) && le32_to_cpu(v) != r->answered;
	if (r->quiet)
		v = cpu_to_le32(PCINET_SQ_QUIET_EI);
	pcinet_push_event_idx(fn, r->avail, &v, sizeof(v));
}

/* The driver's shadow tail of rule r; false if unreadable or not a slot of the SQ. */
static bool pcinet_sq_shadow(struct pcinet_fn *fn, const struct pcinet_push_rule *r, u32 *tail)
{
	__le32 v;

	/* Our event index write before the read: pairs with the driver's full barrier between
	 * writing its shadow and reading the index. One of us sees the other.
	 */
	smp_mb();
	if (!pcinet_dma_peek(fn, r->shadow, &v, sizeof(v), false))
		return false;
	*tail = le32_to_cpu(v);
	return *tail < r->entries;
}

/*
 * A quiet SQ whose device forgets it (reset, link loss) or whose rule goes: the index back at the
 * driver's tail, so its next submission rings. The driver may move the shadow meanwhile, hence
 * the loop (bounded: a driver that outruns it still crosses an index at one of its tails). Under
 * push_lock.
 */
void pcinet_sq_unquiet(struct pcinet_fn *fn, struct pcinet_push_rule *r)
{
	u32 tail = r->last, now;
	__le32 v;
	int i;

	if (r->kind != PCINET_PUSH_NVME_SQ || !r->quiet)
		return;
	r->quiet = false;
	for (i = 0; i < 4; i++) {
		v = cpu_to_le32(tail);
		pcinet_push_event_idx(fn, r->avail, &v, sizeof(v));
		if (!pcinet_sq_shadow(fn, r, &now) || now == tail)
			break;
		tail = now;
	}
}

/* Rings `tail` of rule r on the driver's behalf: its pushes, then the doorbell write, queued
 * together under push_lock. False if out of memory (the SQ is no longer quiet then).
 */
static bool pcinet_sq_ring(struct pcinet_fn *fn, u32 id, struct pcinet_push_rule *r, u32 tail)
{
	struct pcinet_push_ctx c = { .fn = fn };
	struct pcinet_push_walker w;
	struct pcinet_counters *s = &fn->stats;
	struct pcinet_r_mmio_write *m;
	size_t len = ALIGN(sizeof(*m) + sizeof(__le32), 8);
	__le32 v = cpu_to_le32(tail);
	struct pcinet_rec *rec;

	rec = kmalloc(struct_size(rec, data, len), GFP_ATOMIC | __GFP_NOWARN);
	if (!rec) {
		/* The driver's next crossing of the index rings it; meanwhile it waits. */
		atomic64_inc(&s->lost_records);
		pcinet_sq_unquiet(fn, r);
		return false;
	}
	pcinet_push_start(&w, &c);
	pcinet_push_walk(&w, id, r, &v, sizeof(v));
	pcinet_sq_rung(fn, r, &v, sizeof(v));
	pcinet_push_close(&c);

	rec->len = len;
	m = (struct pcinet_r_mmio_write *)rec->data;
	memset(m, 0, len);
	pcinet_hdr(&m->hdr, PCINET_R_MMIO_WRITE, len);
	m->bar = cpu_to_le32(r->bar);
	m->size = cpu_to_le32(sizeof(v));
	m->offset = cpu_to_le64(r->offset);
	memcpy(m + 1, &v, sizeof(v));
	list_add_tail(&rec->node, &c.recs);
	pcinet_rec_add_list(fn, &c.recs);

	atomic64_inc(&s->mmio_writes);
	atomic64_inc(&s->vq_kicks);
	pcinet_push_count_walk(fn, &c, &w);
	return true;
}

/*
 * Rings the driver's shadow tail for it: what it submitted unrung may be many commands, so it
 * goes as several doorbells of at most a part's bytes of entries and write data
 * (pcinet_push_nvme_fits(), pcinet_push_part()), each pushed whole, in order. Under push_lock.
 */
static void pcinet_sq_kick(struct pcinet_fn *fn, u32 id, struct pcinet_push_rule *r, u32 tail)
{
	struct pcinet_push_ctx c = { .fn = fn };
	u32 i;

	/* At most one doorbell per entry: each one moves `last` on by at least one. */
	for (i = 0; i < r->entries && r->last != tail; i++) {
		u32 from = r->last;

		if (!pcinet_sq_ring(fn, id, r, pcinet_push_nvme_fits(&pcinet_push_ops, &c, r, tail,
								 pcinet_push_part())) ||
		    r->last == from)
			return;
	}
}

/*
 * The device's round of NVMe rule `id`: it took the SQ up to `taken`. What the driver submitted
 * meanwhile without ringing is rung now; with nothing left unanswered the SQ stops being quiet:
 * the index goes back to the tail, then the shadow is read once more, since the driver may have
 * submitted before it saw the index (it writes its shadow, then reads the index; we write the
 * index, then read its shadow). Without bus mastering nothing is rung: the rule stays as it is,
 * as for a doorbell. Under push_lock.
 */
void pcinet_sq_round(struct pcinet_fn *fn, u32 id, u32 taken)
{
	struct pcinet_push_rule *r = &fn->push_rules[id];
	u32 tail;
	__le32 v;
	int i;

	r->answered = taken;
	if (!(READ_ONCE(fn->config[PCI_COMMAND]) & PCI_COMMAND_MASTER))
		return;
	for (i = 0; i < 4 && pcinet_sq_shadow(fn, r, &tail); i++) {
		if (tail != r->last) {
			pcinet_sq_kick(fn, id, r, tail);
			if (r->quiet)
				return;		/* this kick's round comes back here */
			continue;
		}
		if (!r->quiet)
			return;
		if (r->last != r->answered)
			return;		/* a doorbell is still unanswered: its round comes */
		r->quiet = false;
		v = cpu_to_le32(r->last);
		pcinet_push_event_idx(fn, r->avail, &v, sizeof(v));
	}
	/* Unreadable shadow or a driver outrunning us: ringing is the driver's again. */
	pcinet_sq_unquiet(fn, r);
}
