// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: the DMA sandbox, a software IOMMU for the function.
 *
 * The function gets dma_map_ops of its own. Every coherent allocation and streaming mapping gets
 * an I/O virtual address from the function's IOVA domain (below 4 GiB and below the device's DMA
 * mask, never 0), never a physical address, and is entered in the live mapping table with its
 * direction. The endpoint's DMA (W_DMA_READ, W_DMA_WRITE) is honoured only when every byte lies
 * in live mappings whose direction allows it (the device reads TO_DEVICE and BIDIRECTIONAL
 * mappings, writes FROM_DEVICE and BIDIRECTIONAL ones); an access may run across adjacent
 * mappings, as a scatterlist's segments are. Anything else is refused as a whole, counted, and
 * reads get an error completion. Copies happen under the table's lock, a page at a time, each
 * piece checked again, so no byte moves to or from a mapping after its unmap returned; the sync
 * ops have nothing to do, as the data is copied when the device accesses it.
 *
 * A scatterlist gets one IOVA range, its segments laid out in it one after the other, each on
 * pages of its own, as an IOMMU lays them out: the driver gets back as many DMA segments as it
 * gave (a device that walks them, PRP lists or descriptor chains, sees the addresses the driver
 * wrote), and page-aligned segments are contiguous for the device, so a 128 KiB request of 32
 * scattered pages is one range to push or write, not 32. The range is freed with its last
 * segment.
 *
 * Push rules (push.c) copy memory the device is about to read with pcinet_dma_peek(): the same
 * check as the device's reads, but a refusal is no error (the range is simply not pushed). A
 * mapping a push copied from is marked; when the driver unmaps it, push.c sends R_PUSH_DROP so
 * the endpoint forgets those bytes. That record is queued after the table's lock is dropped:
 * push.c holds its own lock around peeks and takes this one inside it, never the other way.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/dma-map-ops.h>
#include <linux/highmem.h>
#include <linux/iova.h>
#include <linux/rbtree.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>

#include "internal.h"

/* The IOVA space: [4 KiB, 4 GiB), whatever the device's mask (which must allow 32 bits). */
#define PCINET_IOVA_LIMIT	DMA_BIT_MASK(32)

/* Scatterlists in one IOVA range (0: a range per segment, as before; for comparison). */
static bool sg_contig = true;
module_param(sg_contig, bool, 0644);
MODULE_PARM_DESC(sg_contig,
		 "A scatterlist's segments get one contiguous IOVA range, as an IOMMU gives them");

/* One IOVA allocation: a mapping's own, or the one a scatterlist's segments share. */
struct pcinet_dma_span {
	unsigned long pfn;		/* its first IOVA page frame */
	unsigned int users;		/* mappings in it, under the lock; freed with the last */
};

struct pcinet_dma_map {
	struct rb_node node;
	dma_addr_t iova;		/* first byte (page offset of phys kept) */
	size_t size;
	phys_addr_t phys;		/* physically contiguous */
	enum dma_data_direction dir;
	struct pcinet_dma_span *span;	/* &own, or its scatterlist's */
	struct pcinet_dma_span own;
	bool pushed;			/* a push copied from it (under the lock): drop on unmap */
};

struct pcinet_dma {
	spinlock_t lock;		/* maps; taken from any context */
	struct rb_root maps;
	unsigned long live;
	struct iova_domain iovad;
};

static struct pcinet_fn *pcinet_dma_fn(struct device *dev)
{
	return pcinet_fn_of(to_pci_dev(dev)->bus);
}

/* The mapping holding iova, or NULL. Lock held. */
static struct pcinet_dma_map *pcinet_dma_find(struct pcinet_dma *d, dma_addr_t iova)
{
	struct rb_node *n = d->maps.rb_node;

	while (n) {
		struct pcinet_dma_map *m = rb_entry(n, struct pcinet_dma_map, node);

		if (iova < m->iova)
			n = n->rb_left;
		else if (iova - m->iova >= m->size)
			n = n->rb_right;
		else
			return m;
	}
	return NULL;
}

static void pcinet_dma_insert(struct pcinet_dma *d, struct pcinet_dma_map *m)
{
	struct rb_node **link = &d->maps.rb_node, *parent = NULL;

	while (*link) {
		parent = *link;
		if (m->iova < rb_entry(parent, struct pcinet_dma_map, node)->iova)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&m->node, parent, link);
	rb_insert_color(&m->node, &d->maps);
}

/* IOVA pages that [phys, phys + size) takes. */
static unsigned long pcinet_dma_pages(phys_addr_t phys, size_t size)
{
	return PAGE_ALIGN(offset_in_page(phys) + size) >> PAGE_SHIFT;
}

/* `pages` of IOVA space for span; false (warned) when there is no room. */
static bool pcinet_dma_span_alloc(struct device *dev, struct pcinet_dma *d,
				  struct pcinet_dma_span *span, unsigned long pages, u64 mask)
{
	struct iova *iova;

	iova = alloc_iova(&d->iovad, pages, min_t(u64, mask, PCINET_IOVA_LIMIT) >> PAGE_SHIFT, true);
	if (!iova) {
		dev_warn_ratelimited(dev, "pcinet: out of IOVA space (%lu pages wanted)\n", pages);
		return false;
	}
	span->pfn = iova->pfn_lo;
	span->users = 0;
	return true;
}

/* Gives back span's IOVA range, and span itself unless it is `own` (a mapping's embedded one). */
static void pcinet_dma_span_free(struct pcinet_dma *d, struct pcinet_dma_span *span,
				 struct pcinet_dma_span *own)
{
	free_iova(&d->iovad, span->pfn);
	if (span != own)
		kfree(span);
}

/*
 * Maps [phys, phys + size) for the device at page `at` of span (its own when span is NULL);
 * DMA_MAPPING_ERROR when out of space or memory.
 */
static dma_addr_t pcinet_dma_map_at(struct device *dev, struct pcinet_dma_span *span,
				    unsigned long at, phys_addr_t phys, size_t size,
				    enum dma_data_direction dir, u64 mask)
{
	struct pcinet_fn *fn = pcinet_dma_fn(dev);
	struct pcinet_dma *d = fn->dma;
	struct pcinet_dma_map *m;
	unsigned long flags;

	if (!d || !size || dir == DMA_NONE)
		return DMA_MAPPING_ERROR;
	m = kmalloc(sizeof(*m), GFP_ATOMIC);
	if (!m)
		return DMA_MAPPING_ERROR;
	if (!span) {
		span = &m->own;
		if (!pcinet_dma_span_alloc(dev, d, span, pcinet_dma_pages(phys, size), mask)) {
			kfree(m);
			return DMA_MAPPING_ERROR;
		}
		at = 0;
	}
	m->span = span;
	m->iova = ((dma_addr_t)(span->pfn + at) << PAGE_SHIFT) + offset_in_page(phys);
	m->size = size;
	m->phys = phys;
	m->dir = dir;
	m->pushed = false;
	spin_lock_irqsave(&d->lock, flags);
	pcinet_dma_insert(d, m);
	span->users++;
	d->live++;
	spin_unlock_irqrestore(&d->lock, flags);
	return m->iova;
}

static dma_addr_t pcinet_dma_map(struct device *dev, phys_addr_t phys, size_t size,
				 enum dma_data_direction dir, u64 mask)
{
	return pcinet_dma_map_at(dev, NULL, 0, phys, size, dir, mask);
}

static void pcinet_dma_unmap(struct device *dev, dma_addr_t iova, size_t size)
{
	struct pcinet_fn *fn = pcinet_dma_fn(dev);
	struct pcinet_dma *d = fn->dma;
	struct pcinet_dma_span *span = NULL;
	bool found = false, pushed = false;
	struct pcinet_dma_map *m;
	unsigned long flags;

	if (!d)
		return;
	spin_lock_irqsave(&d->lock, flags);
	m = pcinet_dma_find(d, iova);
	if (m && m->iova == iova) {
		rb_erase(&m->node, &d->maps);
		d->live--;
		found = true;
		pushed = m->pushed;
		if (!--m->span->users)
			span = m->span;		/* the last mapping in its IOVA range */
	}
	spin_unlock_irqrestore(&d->lock, flags);
	/* A driver unmapping what it never mapped is a driver bug, not ours. */
	if (!found) {
		dev_warn_ratelimited(dev, "pcinet: unmap of %pad, which is not mapped\n", &iova);
		return;
	}
	if (m->size != size)
		dev_warn_ratelimited(dev, "pcinet: unmap of %pad with size %zu, mapped with %zu\n",
				     &iova, size, m->size);
	/* Before the IOVA can be handed out again, so the drop cannot hit a newer mapping's pushes
	 * and no kept event index is written into a newer mapping.
	 */
	if (pushed)
		pcinet_push_unmapped(fn, m->iova, m->size);
	if (READ_ONCE(fn->kept_ei_count))
		pcinet_push_ei_unmapped(fn, m->iova, m->size);
	if (span)
		pcinet_dma_span_free(d, span, &m->own);
	kfree(m);
}

/* ---- dma_map_ops ---- */

static void *pcinet_dma_alloc(struct device *dev, size_t size, dma_addr_t *handle, gfp_t gfp,
			      unsigned long attrs)
{
	struct page *page;

	size = PAGE_ALIGN(size);
	page = alloc_pages(gfp | __GFP_ZERO, get_order(size));
	if (!page)
		return NULL;
	*handle = pcinet_dma_map(dev, page_to_phys(page), size, DMA_BIDIRECTIONAL,
				 dev->coherent_dma_mask);
	if (*handle == DMA_MAPPING_ERROR) {
		__free_pages(page, get_order(size));
		return NULL;
	}
	return page_address(page);
}

static void pcinet_dma_free(struct device *dev, size_t size, void *vaddr, dma_addr_t handle,
			    unsigned long attrs)
{
	size = PAGE_ALIGN(size);
	pcinet_dma_unmap(dev, handle, size);
	__free_pages(virt_to_page(vaddr), get_order(size));
}

/* The driver's streaming map and unmap calls, on pcinet.ko's clock ("map"). */
static void pcinet_dma_timing(struct device *dev, u64 start)
{
	struct pcinet_fn *fn = pcinet_dma_fn(dev);

	pcinet_timing_add(&fn->stats.t_map_ns, &fn->stats.t_map_n, start);
}

static dma_addr_t pcinet_dma_map_page(struct device *dev, struct page *page, unsigned long off,
				      size_t size, enum dma_data_direction dir,
				      unsigned long attrs)
{
	u64 start = ktime_get_ns();
	dma_addr_t iova = pcinet_dma_map(dev, page_to_phys(page) + off, size, dir,
					 dma_get_mask(dev));

	pcinet_dma_timing(dev, start);
	return iova;
}

static void pcinet_dma_unmap_page(struct device *dev, dma_addr_t handle, size_t size,
				  enum dma_data_direction dir, unsigned long attrs)
{
	u64 start = ktime_get_ns();

	pcinet_dma_unmap(dev, handle, size);
	pcinet_dma_timing(dev, start);
}

static void pcinet_dma_unmap_sg(struct device *dev, struct scatterlist *sgl, int nents,
				enum dma_data_direction dir, unsigned long attrs)
{
	u64 start = ktime_get_ns();
	struct scatterlist *sg;
	int i;

	for_each_sg(sgl, sg, nents, i)
		pcinet_dma_unmap(dev, sg_dma_address(sg), sg_dma_len(sg));
	pcinet_dma_timing(dev, start);
}

/* The mapper's own hold on a scatterlist's span ends: freed if no segment took it. */
static void pcinet_dma_span_put(struct pcinet_dma *d, struct pcinet_dma_span *span)
{
	unsigned long flags;
	bool last;

	spin_lock_irqsave(&d->lock, flags);
	last = !--span->users;
	spin_unlock_irqrestore(&d->lock, flags);
	if (last)
		pcinet_dma_span_free(d, span, NULL);
}

static int pcinet_dma_map_sg(struct device *dev, struct scatterlist *sgl, int nents,
			     enum dma_data_direction dir, unsigned long attrs)
{
	struct pcinet_dma *d = pcinet_dma_fn(dev)->dma;
	struct pcinet_dma_span *span = NULL;
	u64 start = ktime_get_ns();
	unsigned long pages = 0, at = 0;
	struct scatterlist *sg;
	int i, ret = nents;

	if (!d)
		return -EIO;
	if (nents > 1 && READ_ONCE(sg_contig)) {
		for_each_sg(sgl, sg, nents, i)
			pages += pcinet_dma_pages(sg_phys(sg), sg->length);
		span = kmalloc(sizeof(*span), GFP_ATOMIC);
		if (!span)
			return -ENOMEM;
		if (!pcinet_dma_span_alloc(dev, d, span, pages, dma_get_mask(dev))) {
			kfree(span);
			return -ENOMEM;
		}
		/* Held while mapping: an unmap racing the mapping cannot free it under us. */
		span->users = 1;
	}
	for_each_sg(sgl, sg, nents, i) {
		sg_dma_address(sg) = pcinet_dma_map_at(dev, span, at, sg_phys(sg), sg->length, dir,
						       dma_get_mask(dev));
		sg_dma_len(sg) = sg->length;
		at += pcinet_dma_pages(sg_phys(sg), sg->length);
		if (sg_dma_address(sg) == DMA_MAPPING_ERROR) {
			pcinet_dma_unmap_sg(dev, sgl, i, dir, attrs);
			ret = -ENOMEM;
			break;
		}
	}
	if (span)
		pcinet_dma_span_put(d, span);
	if (ret > 0)
		pcinet_dma_timing(dev, start);
	return ret;
}

static int pcinet_dma_supported(struct device *dev, u64 mask)
{
	return mask >= PCINET_IOVA_LIMIT;
}

static u64 pcinet_dma_required_mask(struct device *dev)
{
	return PCINET_IOVA_LIMIT;
}

static const struct dma_map_ops pcinet_dma_ops = {
	.alloc = pcinet_dma_alloc,
	.free = pcinet_dma_free,
	.map_page = pcinet_dma_map_page,
	.unmap_page = pcinet_dma_unmap_page,
	.map_sg = pcinet_dma_map_sg,
	.unmap_sg = pcinet_dma_unmap_sg,
	.dma_supported = pcinet_dma_supported,
	.get_required_mask = pcinet_dma_required_mask,
};

/* ---- the endpoint's accesses ---- */

/*
 * Whether every byte of [iova, iova + size) is in live mappings that allow `want`
 * (DMA_TO_DEVICE: the device reads; DMA_FROM_DEVICE: it writes). Lock held.
 */
static bool pcinet_dma_allowed(struct pcinet_dma *d, u64 iova, u32 size,
			       enum dma_data_direction want, const char **why)
{
	struct pcinet_dma_map *m;
	u64 at;

	*why = "no live mapping";
	if (iova + size < iova)
		return false;
	for (at = iova; at < iova + size; at = m->iova + m->size) {
		m = pcinet_dma_find(d, at);
		if (!m)
			return false;
		if (m->dir != DMA_BIDIRECTIONAL && m->dir != want) {
			*why = want == DMA_TO_DEVICE ? "read of a device-write-only mapping" :
						       "write to a device-read-only mapping";
			return false;
		}
	}
	return true;
}

/* Copies between buf and an allowed range (pcinet_dma_allowed); marks the mappings read from
 * when `mark`. Lock held.
 */
static void pcinet_dma_copy(struct pcinet_dma *d, u64 iova, void *buf, u32 size,
			    enum dma_data_direction want, bool mark)
{
	u32 done;

	for (done = 0; done < size; ) {
		struct pcinet_dma_map *m = pcinet_dma_find(d, iova + done);
		phys_addr_t phys = m->phys + (iova + done - m->iova);
		u32 n;
		void *p;

		n = min_t(u64, size - done, m->iova + m->size - (iova + done));
		n = min_t(u32, n, PAGE_SIZE - offset_in_page(phys));
		p = kmap_local_page(pfn_to_page(PHYS_PFN(phys)));
		if (want == DMA_TO_DEVICE)
			memcpy(buf + done, p + offset_in_page(phys), n);
		else
			memcpy(p + offset_in_page(phys), buf + done, n);
		kunmap_local(p);
		if (mark)
			m->pushed = true;
		done += n;
	}
}

/*
 * Bytes copied per hold of the table's lock. The lock is taken with interrupts off from any
 * context: one 64 KiB DMA write or push copied in a single hold kept that CPU's interrupts off for
 * the whole copy and made the driver's map and unmap calls on the other CPUs spin behind it.
 */
#define PCINET_DMA_CHUNK	PAGE_SIZE

/*
 * Checks [iova, iova + size) against the mappings and, with a buffer, copies it piece by piece,
 * the lock held for each piece. The whole range is checked first, so an access the mappings do
 * not allow copies nothing; every later piece is checked again, so a mapping the driver unmaps
 * while the copy runs stops the rest of it (as an IOMMU stops a transfer in flight) and no byte
 * moves after its unmap returned. Returns whether all of it was allowed (and copied).
 */
static bool pcinet_dma_xfer(struct pcinet_dma *d, u64 iova, void *buf, u32 size,
			    enum dma_data_direction want, bool mark, const char **why)
{
	u32 chunk = PCINET_DMA_CHUNK, done = 0;
	unsigned long flags;
	bool ok;

	spin_lock_irqsave(&d->lock, flags);
	ok = pcinet_dma_allowed(d, iova, size, want, why);
	while (ok && buf) {
		u32 n = min(size - done, chunk);

		pcinet_dma_copy(d, iova + done, buf + done, n, want, mark);
		done += n;
		if (done == size)
			break;
		spin_unlock_irqrestore(&d->lock, flags);
		spin_lock_irqsave(&d->lock, flags);
		ok = pcinet_dma_allowed(d, iova + done, min(size - done, chunk), want, why);
	}
	spin_unlock_irqrestore(&d->lock, flags);
	return ok;
}

/*
 * Copies between buf and [iova, iova + size) if every byte is in live mappings that allow
 * `want` (pcinet_dma_xfer()). Returns 0, or -EFAULT: nothing copied, or for an unmap racing
 * the copy, part of it.
 */
static int pcinet_dma_access(struct pcinet_fn *fn, u64 iova, void *buf, u32 size,
			     enum dma_data_direction want)
{
	struct pcinet_dma *d = fn->dma;
	const char *why = "no live mapping";

	if (!d || !pcinet_dma_xfer(d, iova, buf, size, want, false, &why))
		goto refused;
	atomic64_add(size, &fn->stats.dma_bytes);
	return 0;

refused:
	atomic64_inc(&fn->stats.dma_refused);
	pr_warn_ratelimited("%04x:00:00.0: DMA %s of %u bytes at 0x%llx refused: %s\n",
			    fn->domain, want == DMA_TO_DEVICE ? "read" : "write", size, iova, why);
	return -EFAULT;
}

/*
 * A device write made by the module itself (an NVMe SQ's event index, push.c): checked and
 * counted like the device's own. Any context.
 */
int pcinet_dma_store(struct pcinet_fn *fn, u64 iova, const void *buf, u32 size)
{
	return pcinet_dma_access(fn, iova, (void *)buf, size, DMA_FROM_DEVICE);
}

/*
 * For push rules: copies [iova, iova + size) to buf if the device may read every byte, as its
 * own reads are checked, but quietly (a range that cannot be pushed is no error, and is not a
 * DMA refusal). buf NULL: only checks. `mark`: the mappings are remembered as pushed from, for
 * R_PUSH_DROP. Any context.
 */
bool pcinet_dma_peek(struct pcinet_fn *fn, u64 iova, void *buf, u32 size, bool mark)
{
	const char *why;

	return fn->dma && pcinet_dma_xfer(fn->dma, iova, buf, size, DMA_TO_DEVICE, mark, &why);
}

/* The endpoint forgot every push (reset, link loss): unmaps need not tell it any more. */
void pcinet_dma_forget_pushes(struct pcinet_fn *fn)
{
	struct pcinet_dma *d = fn->dma;
	struct rb_node *n;
	unsigned long flags;

	if (!d)
		return;
	spin_lock_irqsave(&d->lock, flags);
	for (n = rb_first(&d->maps); n; n = rb_next(n))
		rb_entry(n, struct pcinet_dma_map, node)->pushed = false;
	spin_unlock_irqrestore(&d->lock, flags);
}

int pcinet_dma_read(struct pcinet_fn *fn, const struct pcinet_w_dma_read *r)
{
	u32 size = le32_to_cpu(r->size);
	struct pcinet_r_dma_read_cpl *c;
	struct pcinet_rec *rec;

	rec = pcinet_rec_alloc(fn, ALIGN(sizeof(*c) + size, 8));
	if (!rec)
		return -ENOMEM;
	c = (struct pcinet_r_dma_read_cpl *)rec->data;
	memset(c, 0, rec->len);
	c->tag = r->tag;
	if (pcinet_dma_access(fn, le64_to_cpu(r->iova), c->data, size, DMA_TO_DEVICE)) {
		rec->len = sizeof(*c);
		c->status = cpu_to_le32(PCINET_STATUS_ERROR);
	} else {
		c->size = cpu_to_le32(size);
	}
	pcinet_hdr(&c->hdr, PCINET_R_DMA_READ_CPL, rec->len);
	pcinet_rec_queue(fn, rec);
	return 0;
}

int pcinet_dma_write(struct pcinet_fn *fn, const struct pcinet_w_dma_write *w)
{
	/* A refused posted write is dropped, as a PCIe root complex drops it: counted above. */
	pcinet_dma_access(fn, le64_to_cpu(w->iova), (void *)w->data, le32_to_cpu(w->size),
			  DMA_FROM_DEVICE);
	return 0;
}

/* ---- lifetime ---- */

int pcinet_dma_init(struct pcinet_fn *fn)
{
	struct pcinet_dma *d;
	int ret;

	ret = iova_cache_get();
	if (ret)
		return ret;
	d = kzalloc(sizeof(*d), GFP_KERNEL);
	if (!d) {
		iova_cache_put();
		return -ENOMEM;
	}
	spin_lock_init(&d->lock);
	d->maps = RB_ROOT;
	/* IOVA page 0 stays unused: a zero DMA address is a classic driver bug to catch. */
	init_iova_domain(&d->iovad, PAGE_SIZE, 1);
	fn->dma = d;
	return 0;
}

void pcinet_dma_set_ops(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	set_dma_ops(&pdev->dev, &pcinet_dma_ops);
}

/* After the function left the bus: what is still mapped, the driver leaked. */
void pcinet_dma_exit(struct pcinet_fn *fn)
{
	struct pcinet_dma *d = fn->dma;
	struct pcinet_dma_map *m, *tmp;

	if (!d)
		return;
	if (fn->pdev)
		set_dma_ops(&fn->pdev->dev, NULL);
	if (d->live)
		pr_warn("%04x:00:00.0: the driver left %lu DMA mappings behind\n", fn->domain,
			d->live);
	rbtree_postorder_for_each_entry_safe(m, tmp, &d->maps, node) {
		if (m->span != &m->own && !--m->span->users)
			kfree(m->span);
		kfree(m);
	}
	put_iova_domain(&d->iovad);
	kfree(d);
	iova_cache_put();
	fn->dma = NULL;
}
