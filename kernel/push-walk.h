/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pcinet: the push rule walkers (docs/PUSH.md). Given a rule and the doorbell write that
 * triggered it, they decide which host memory ranges to push, in order, and move the rule's
 * `last` on. They read driver memory only through ops->peek and push only through ops->push, so
 * they know nothing of mappings, locks or records: push.c gives them the DMA sandbox and the read
 * queue, and a user-space test can give them an array. Every number they read is the driver's
 * and may be hostile: nothing here can loop without bound, overflow an index, or touch memory
 * other than through ops.
 */
#ifndef PCINET_PUSH_WALK_H
#define PCINET_PUSH_WALK_H

/*
 * Most units of work (ring entries, descriptors or PRP entries read, ranges offered) one doorbell
 * write may cost, all rules together. A driver that follows the specifications needs well under
 * half of it: the table must fit the byte budget, so a virtqueue whose chains are walked has at
 * most 8192 entries, read twice per chain, plus at most 16384 indirect descriptors; an NVMe SQ
 * at most 65535 new entries. A hostile ring (chains sharing their descriptors) could otherwise
 * cost entries x entries steps with interrupts off.
 */
#define PCINET_PUSH_MAX_STEPS	(1u << 17)

/*
 * Most bytes of one part of a doorbell the module rings for the driver (quiet SQs): a smaller
 * budget than a doorbell's, so the device starts on the first part while the others travel.
 */
#define PCINET_PUSH_PART_BYTES	(256u * 1024)

/* One rule of a function; kind PCINET_PUSH_NONE marks an unused slot. */
struct pcinet_push_rule {
	u32 kind;
	u32 bar;
	u64 offset;		/* the doorbell */
	u64 ring;		/* NVMe: SQ base; virtq: descriptor table */
	u64 avail;		/* virtq: driver area */
	u32 entries;
	u32 data_max;
	u32 lba_shift;
	u32 flags;
	u32 last;		/* pushed up to: an SQ slot, or a 16-bit avail index */
	u64 shadow;		/* NVMe: the SQ tail's shadow doorbell (0: none); push.c's */
	u32 answered;		/* NVMe with shadow: the tail the device last said it took */
	bool quiet;		/* NVMe with shadow: the event index says "do not ring" */
};

struct pcinet_push_walk_ops {
	/* Copies [iova, iova + len) to buf if the device may read every byte; else false. */
	bool (*peek)(void *ctx, u64 iova, void *buf, u32 len);
	/*
	 * Pushes [iova, iova + len) for rule `rule`, if the device may read every byte. Returns the
	 * bytes pushed: len, 0 when refused, or less when it ran out of memory part way. `stable`:
	 * memory the driver leaves alone while the device may read it (a write's data and PRP
	 * lists, a chain's buffers and indirect table), whose bytes may be taken later than now; not
	 * the rings themselves, which the driver goes on writing.
	 */
	u32 (*push)(void *ctx, u32 rule, u64 iova, u32 len, bool stable);
};

/* The state of one doorbell write, shared by every rule it triggers. */
struct pcinet_push_walker {
	const struct pcinet_push_walk_ops *ops;
	void *ctx;
	bool dry;		/* push nothing, only move `last` on (the reader is behind) */
	u32 left;		/* bytes that may still be pushed: the budget at first */
	u32 steps;		/* units of work left: PCINET_PUSH_MAX_STEPS at first */
	/* Out: */
	u32 over_budget;	/* ranges (or whole NVMe writes) that did not fit `left` */
	u32 unreadable;		/* avail indexes that could not be read */
	bool exhausted;		/* `steps` ran out: the rest was not walked */
};

/*
 * Runs rule `r` (number `id`) for a driver write of `size` bytes `val` to its doorbell: pushes
 * through w->ops what docs/PUSH.md says, in order, and updates r->last.
 */
void pcinet_push_walk(struct pcinet_push_walker *w, u32 id, struct pcinet_push_rule *r,
		      const void *val, u32 size);
u32 pcinet_push_nvme_fits(const struct pcinet_push_walk_ops *ops, void *ctx,
			  const struct pcinet_push_rule *r, u32 tail, u32 budget);

#endif /* PCINET_PUSH_WALK_H */
