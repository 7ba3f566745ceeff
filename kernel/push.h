/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pcinet: what push.c and push-sq.c share: the records one doorbell write builds, and the NVMe
 * shadow doorbells' part in a doorbell, a rule's change and a round (docs/PUSH.md).
 */
#ifndef PCINET_PUSH_H
#define PCINET_PUSH_H

#include "internal.h"

/* One doorbell write's records, built with push_lock held, queued all at once. */
struct pcinet_push_ctx {
	struct pcinet_fn *fn;
	struct list_head recs;		/* finished records, in order */
	struct pcinet_rec *cur;		/* the record being filled; off the list, it may move */
	u32 cap;			/* data bytes cur has room for */
	u32 rule, size;			/* cur's rule and data bytes so far */
	u64 iova;			/* cur's first byte */
	bool fill;			/* cur's bytes are copied when it is sent */
	u64 records, bytes;
	u32 refused, nomem;
};

/* push.c */
extern const struct pcinet_push_walk_ops pcinet_push_ops;
u32 pcinet_push_budget(void);
void pcinet_push_start(struct pcinet_push_walker *w, struct pcinet_push_ctx *c);
void pcinet_push_close(struct pcinet_push_ctx *c);
void pcinet_push_count_walk(struct pcinet_fn *fn, const struct pcinet_push_ctx *c,
			    const struct pcinet_push_walker *w);

/* push-sq.c: under push_lock */
void pcinet_push_event_idx(struct pcinet_fn *fn, u64 iova, const void *val, u32 size);
void pcinet_sq_rung(struct pcinet_fn *fn, struct pcinet_push_rule *r, const void *val,
		    u32 size);
void pcinet_sq_unquiet(struct pcinet_fn *fn, struct pcinet_push_rule *r);
void pcinet_sq_round(struct pcinet_fn *fn, u32 id, u32 taken);

#endif /* PCINET_PUSH_H */
