// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: the push rule walkers (see push-walk.h), docs/PUSH.md step by step. The devices they
 * predict are the endpoint's models: devices/nvme/controller.ts (#prps) and
 * devices/virtio/virtqueue.ts (refresh, #walk); host-agent/sim/push.ts is the same walk in
 * TypeScript, and both must push the same bytes.
 *
 * NVMe Base Specification 2.0: §4.1.1 (PRP entries and lists), §4.2 (the 64-byte SQE); NVM
 * Command Set Specification 1.0, §3.2.6 (Write: NLB in CDW12 bits 15:0, 0's based). virtio 1.2:
 * §2.7.5 (split virtqueue descriptors, §2.7.5.3 indirect tables), §2.7.6 (the available ring).
 *
 * Only bytes that were pushed are walked further (a pushed SQE is parsed, a pushed list page
 * followed, a pushed table walked), so the device is served what its own walk will find. They
 * are read again through ops->peek rather than from the records being built, which may still
 * move; a driver changing them in between is breaking the specifications anyway.
 *
 * Userspace builds compile this file unmodified after defining u8..u64 and bool.
 */
#ifdef __KERNEL__
#include <linux/types.h>
#endif
#include "uapi/pcinet.h"
#include "push-walk.h"

/* NVMe: the SQE, the Write opcode, the memory page size PRPs are walked in (CC.MPS = 0). */
#define SQE_SIZE		64
#define NVME_CMD_WRITE		0x01
#define NVME_CMD_READ		0x02
#define NVME_PAGE		4096u

/* virtio: a split-queue descriptor and its flags. */
#define DESC_SIZE		16
#define VIRTQ_DESC_F_NEXT	1
#define VIRTQ_DESC_F_WRITE	2
#define VIRTQ_DESC_F_INDIRECT	4

static u16 rd16(const u8 *p)
{
	return p[0] | (u16)p[1] << 8;
}

static u32 rd32(const u8 *p)
{
	return rd16(p) | (u32)rd16(p + 2) << 16;
}

static u64 rd64(const u8 *p)
{
	return rd32(p) | (u64)rd32(p + 4) << 32;
}

static u32 min_u32(u32 a, u32 b)
{
	return a < b ? a : b;
}

/* Spends one unit of work; false once the doorbell's allowance is gone. */
static bool walk_step(struct pcinet_push_walker *w)
{
	if (!w->steps) {
		w->exhausted = true;
		return false;
	}
	w->steps--;
	return true;
}

static bool walk_peek(struct pcinet_push_walker *w, u64 iova, void *buf, u32 len)
{
	if (!walk_step(w) || iova + len < iova)
		return false;
	return w->ops->peek(w->ctx, iova, buf, len);
}

/*
 * Pushes [iova, iova + len) whole or not at all: it must fit what is left of the budget
 * (docs/PUSH.md "Bounds"). True when all of it was pushed. len is 64 bits: callers multiply.
 */
static bool walk_push(struct pcinet_push_walker *w, u32 rule, u64 iova, u64 len, bool stable)
{
	u32 done;

	if (!len || !walk_step(w))
		return false;
	if (len > w->left) {
		w->over_budget++;
		return false;
	}
	done = w->ops->push(w->ctx, rule, iova, len, stable);
	w->left -= done;
	return done == len;
}

/* ---- NVME_SQ ---- */

/*
 * The PRP list pages of one NVM Read or Write and, for a Write that fits data_max and the budget,
 * its data, in the order the controller walks PRP1/PRP2 (controller.ts #prps).
 */
static void walk_nvme_rw(struct pcinet_push_walker *w, u32 id,
			 const struct pcinet_push_rule *r, const u8 *sqe)
{
	u64 prp1 = rd64(sqe + 24), prp2 = rd64(sqe + 32), list;
	u32 first, left, slots, need, take, pages, i;
	bool data = sqe[0] == NVME_CMD_WRITE;
	u8 e[8];
	u64 len;

	if (r->lba_shift > 12)
		return;		/* refused when the rule was set; the walk does not rely on it */
	len = (u64)(rd16(sqe + 48) + 1) << r->lba_shift;
	if (len > r->data_max) {
		data = false;
	} else if (data && len > w->left) {
		/* "if the push budget allows it": a command's data goes whole or not at all */
		w->over_budget++;
		data = false;
	}
	first = min_u32(len, NVME_PAGE - prp1 % NVME_PAGE);
	if (data)
		walk_push(w, id, prp1, first, true);
	left = len - first;
	if (!left)
		return;
	if (left <= NVME_PAGE) {
		/* PRP2 is the second page: offset bits make the controller fail the command */
		if (data && prp2 % NVME_PAGE == 0)
			walk_push(w, id, prp2, left, true);
		return;
	}
	/* PRP2 points at a list: it may start mid-page, but on an entry */
	list = prp2;
	if (list % 8)
		return;
	/*
	 * Each pass pushes a list page and moves on: at least one data page, or (a list starting
	 * in its last slot) only the chain to a page-aligned list of 511 data pages. left is at
	 * most 2^16 pages, and every pass costs steps, so this ends.
	 */
	while (left) {
		slots = (NVME_PAGE - list % NVME_PAGE) / 8;
		need = (left + NVME_PAGE - 1) / NVME_PAGE;
		take = min_u32(need, slots);
		/* A list that is not pushed is not seen: neither are the pages it names. */
		if (!walk_push(w, id, list, 8ull * take, true))
			return;
		pages = need <= slots ? take : take - 1;
		for (i = 0; i < pages; i++) {
			u64 page;
			u32 n;

			if (!walk_peek(w, list + 8ull * i, e, sizeof(e)))
				return;
			page = rd64(e);
			if (page % NVME_PAGE)
				return;
			n = min_u32(left, NVME_PAGE);
			if (data)
				walk_push(w, id, page, n, true);
			left -= n;
		}
		if (need <= slots)
			return;
		if (!walk_peek(w, list + 8ull * (take - 1), e, sizeof(e)))
			return;
		list = rd64(e);
		/* a chained list page is named by a PRP entry: no offset bits */
		if (list % NVME_PAGE)
			return;
	}
}

static void walk_nvme(struct pcinet_push_walker *w, u32 id, struct pcinet_push_rule *r, u32 tail)
{
	u32 from[2], to[2], spans, s, e, last = r->last;
	bool pushed[2];
	u8 sqe[SQE_SIZE];

	/* A tail past the queue: the device traces the bad doorbell, and we stay where we were. */
	if (tail >= r->entries || last >= r->entries)
		return;
	r->last = tail;
	if (tail == last || w->dry)
		return;
	from[0] = last;
	if (last < tail) {
		to[0] = tail;
		spans = 1;
	} else {
		to[0] = r->entries;
		from[1] = 0;
		to[1] = tail;
		spans = 2;
	}
	for (s = 0; s < spans; s++)
		pushed[s] = walk_push(w, id, r->ring + (u64)SQE_SIZE * from[s],
				      (u64)SQE_SIZE * (to[s] - from[s]), false);
	if (!r->data_max)
		return;		/* the admin queue: entries only */
	for (s = 0; s < spans; s++) {
		if (!pushed[s])
			continue;
		for (e = from[s]; e < to[s]; e++) {
			if (!walk_peek(w, r->ring + (u64)SQE_SIZE * e, sqe, sizeof(sqe))) {
				if (w->exhausted)
					return;
				continue;
			}
			if (sqe[0] == NVME_CMD_WRITE || sqe[0] == NVME_CMD_READ)
				walk_nvme_rw(w, id, r, sqe);
		}
	}
}

/*
 * How far from r->last towards `tail` one doorbell's pushes fit `budget` bytes: the tail
 * after the last entry that fits, at least one entry past r->last. What an entry costs is
 * estimated from its SQE as walk_nvme_rw() would push it (the SQE, a PRP list's entries, a
 * write's data up to data_max); an unreadable SQE costs its 64 bytes. For a doorbell the module
 * rings for the driver (push.c, quiet SQs), which may cover many submissions at once: split at
 * these tails, each part is pushed whole instead of the budget running out at the first large
 * write.
 */
u32 pcinet_push_nvme_fits(const struct pcinet_push_walk_ops *ops, void *ctx,
			  const struct pcinet_push_rule *r, u32 tail, u32 budget)
{
	u32 e = r->last, n = 0;
	u64 used = 0;
	u8 sqe[SQE_SIZE];

	if (tail >= r->entries || e >= r->entries || r->lba_shift > 12)
		return tail;
	while (e != tail) {
		u64 cost = SQE_SIZE;

		if (ops->peek(ctx, r->ring + (u64)SQE_SIZE * e, sqe, sizeof(sqe)) &&
		    (sqe[0] == NVME_CMD_WRITE || sqe[0] == NVME_CMD_READ)) {
			u64 len = (u64)(rd16(sqe + 48) + 1) << r->lba_shift;

			if (len > 2 * NVME_PAGE)
				cost += 8 * ((len + NVME_PAGE - 1) / NVME_PAGE);
			if (sqe[0] == NVME_CMD_WRITE && len <= r->data_max)
				cost += len;
		}
		if (n && used + cost > budget)
			break;
		used += cost;
		n++;
		e = e + 1 == r->entries ? 0 : e + 1;
	}
	return e;
}

/* ---- VIRTQ ---- */

/*
 * One pass over the chain at `head`, as virtqueue.ts #walk follows it. The first pass pushes the
 * indirect table it meets and adds up the readable bytes (descriptors without WRITE, nonzero
 * length, before the first writable one); the second, run only when the first found the chain
 * whole and the total within data_max, pushes those bytes. Two passes because the total is known
 * only at the end and a chain may have thousands of buffers: nothing is kept per buffer. Returns
 * true when the chain ended properly (a descriptor without NEXT).
 */
static bool walk_chain(struct pcinet_push_walker *w, u32 id, const struct pcinet_push_rule *r,
		       u32 head, bool data, u64 *total)
{
	u64 table = r->ring;
	u32 count = r->entries, i = head, steps = 0;
	bool indirect = false, writable = false;
	u8 d[DESC_SIZE];

	if (i >= count)
		return false;		/* a head past the table */
	for (;;) {
		u64 addr;
		u32 len;
		u16 flags, next;

		if (steps++ >= count)
			return false;	/* longer than its table: a loop */
		if (!walk_peek(w, table + (u64)DESC_SIZE * i, d, sizeof(d)))
			return false;
		addr = rd64(d);
		len = rd32(d + 8);
		flags = rd16(d + 12);
		next = rd16(d + 14);
		if (flags & VIRTQ_DESC_F_INDIRECT) {
			/* One table per chain, never nested, never with NEXT, a whole number of
			 * descriptors (virtio 1.2 §2.7.5.3.1): else the device stops here too.
			 */
			if (!(r->flags & PCINET_PUSH_F_INDIRECT) || indirect ||
			    (flags & VIRTQ_DESC_F_NEXT) || !len || len % DESC_SIZE)
				return false;
			/* The walk goes on only in a pushed table. */
			if (!data && !walk_push(w, id, addr, len, true))
				return false;
			table = addr;
			count = len / DESC_SIZE;
			indirect = true;
			i = 0;
			steps = 0;
			continue;
		}
		if (flags & VIRTQ_DESC_F_WRITE) {
			writable = true;
		} else if (len && !writable) {
			if (data)
				walk_push(w, id, addr, len, true);
			else
				*total += len;
		}
		if (!(flags & VIRTQ_DESC_F_NEXT))
			return true;
		if (next >= count)
			return false;	/* next past the table */
		i = next;
	}
}

static void walk_virtq(struct pcinet_push_walker *w, u32 id, struct pcinet_push_rule *r)
{
	u32 size = r->entries, n, i;
	bool area, table;
	u16 idx, last;
	u8 b[2];

	/* The index alone decides `last`, pushed or not: a budget spent by an earlier rule must
	 * not leave this rule behind the ring, where every later notify would look broken.
	 */
	if (!walk_peek(w, r->avail + 2, b, sizeof(b))) {
		w->unreadable++;
		return;
	}
	idx = rd16(b);
	last = r->last;
	n = (u16)(idx - last);
	if (n > size)
		return;		/* the device will find the ring broken */
	r->last = idx;
	if (w->dry)
		return;
	/*
	 * The table only with the driver area: a table pushed alone would outlive the ring it goes
	 * with, and a later ring read from memory would be paired with descriptors older than it.
	 */
	area = walk_push(w, id, r->avail, 6 + 2ull * size, false);
	table = area && walk_push(w, id, r->ring, (u64)DESC_SIZE * size, false);
	/* Without data or indirect tables to push, walking chains could push nothing. */
	if (!area || !table || (!r->data_max && !(r->flags & PCINET_PUSH_F_INDIRECT)))
		return;
	for (i = 0; i < n && w->left; i++) {
		u64 total = 0;
		u32 head;

		if (!walk_peek(w, r->avail + 4 + 2ull * ((last + i) % size), b, sizeof(b))) {
			if (w->exhausted)
				return;
			continue;
		}
		head = rd16(b);
		if (!walk_chain(w, id, r, head, false, &total))
			continue;
		if (r->data_max && total && total <= r->data_max)
			walk_chain(w, id, r, head, true, &total);
	}
}

void pcinet_push_walk(struct pcinet_push_walker *w, u32 id, struct pcinet_push_rule *r,
		      const void *val, u32 size)
{
	const u8 *v = val;
	u32 tail = 0;
	int i;

	switch (r->kind) {
	case PCINET_PUSH_NVME_SQ:
		/* the first 4 bytes of the write, little-endian; a shorter write gives what it has */
		for (i = (int)min_u32(size, 4) - 1; i >= 0; i--)
			tail = tail << 8 | v[i];
		walk_nvme(w, id, r, tail);
		break;
	case PCINET_PUSH_VIRTQ:
		walk_virtq(w, id, r);
		break;
	}
}
