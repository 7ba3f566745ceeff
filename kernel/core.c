// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: a PCI function whose device lives on another machine.
 *
 * One open file of /dev/pcinet is one PCI function. The host-agent writes the function's
 * description (config space image, write masks, BARs), then START: the function appears on a
 * virtual PCI root bus of its own, in a PCI domain of its own, with its config space served from
 * the image by this module's pci_ops and its BARs in an unused physical window. Closing the file
 * removes it. Records: kernel/uapi/pcinet.h, explained in docs/KERNEL-ABI.md.
 *
 * This file: the channel (records in and out), the bus, config space, removal. The BARs are
 * trapped and served by mmio.c, MSI-X by msix.c, DMA by dma.c (internal.h).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "internal.h"

static DEFINE_IDA(pcinet_domains);

/* ---- the read queue ---- */

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

/* The range of `kind` that holds [off, off + size) of a BAR, or NULL. */
const struct pcinet_range *pcinet_range_at(struct pcinet_fn *fn, u32 bar, u64 off, u32 size,
					   u32 kind)
{
	unsigned int i;

	for (i = 0; i < fn->nranges; i++) {
		const struct pcinet_range *r = &fn->ranges[i];

		if (r->bar == bar && r->kind == kind && off >= r->offset &&
		    off + size <= r->offset + r->length)
			return r;
	}
	return NULL;
}

/* ---- config space ---- */

static int pcinet_bar_of(struct pcinet_fn *fn, int where, bool *hi)
{
	int i;

	if (where < PCI_BASE_ADDRESS_0 || where >= PCI_BASE_ADDRESS_5 + 4)
		return -1;
	i = (where - PCI_BASE_ADDRESS_0) / 4;
	*hi = false;
	if (fn->bars[i].size)
		return i;
	if (i > 0 && fn->bars[i - 1].kind == PCINET_BAR_MEM64) {
		*hi = true;
		return i - 1;
	}
	return -2;	/* a BAR register no BAR uses */
}

static u32 pcinet_bar_dword(struct pcinet_bar *b, bool hi)
{
	u64 mask = ~(b->size - 1);
	u32 flags = (b->kind == PCINET_BAR_MEM64 ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0) |
		    (b->flags & PCINET_BAR_PREFETCH ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0);

	if (hi)
		return b->sizing_hi ? upper_32_bits(mask) : upper_32_bits(b->addr);
	return ((b->sizing_lo ? lower_32_bits(mask) : lower_32_bits(b->addr)) &
		PCI_BASE_ADDRESS_MEM_MASK) | flags;
}

static struct pcinet_fn *pcinet_fn_of(struct pci_bus *bus)
{
	return container_of(bus->sysdata, struct pcinet_fn, sysdata);
}

/*
 * Config space is read and written under cfg_lock: x86 selects PCI_LOCKLESS_CONFIG, so the PCI core
 * calls these without pci_lock, from any CPU at once. A write is then whole to every reader (as a
 * dword write is on a device), and its R_CONFIG_WRITE records leave in the order the image changed.
 */
static int pcinet_cfg_read(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 *val)
{
	struct pcinet_fn *fn = pcinet_fn_of(bus);
	unsigned long flags;
	bool hi;
	int bar;
	u32 v = 0;
	int i;

	if (devfn != 0 || where < 0 || where + size > PCINET_CONFIG_SIZE) {
		*val = ~0u;
		return PCIBIOS_DEVICE_NOT_FOUND;
	}
	if ((READ_ONCE(fn->link_down) || READ_ONCE(fn->state) == PN_DETACHED) &&
	    !READ_ONCE(fn->standin)) {
		/* As over a PCIe link that is down, or from a surprise-removed function: all-ones, so
		 * pci_device_is_present() says no and drivers take their surprise-removal paths. (A
		 * stand-in for the device, freeze.c, answers from the image.)
		 */
		*val = size == 4 ? ~0u : (1u << (8 * size)) - 1;
		return PCIBIOS_SUCCESSFUL;
	}
	raw_spin_lock_irqsave(&fn->cfg_lock, flags);
	bar = pcinet_bar_of(fn, where & ~3, &hi);
	if (bar >= 0) {
		v = pcinet_bar_dword(&fn->bars[bar], hi) >> (8 * (where & 3));
	} else if (bar == -2 || (where >= PCI_ROM_ADDRESS && where < PCI_ROM_ADDRESS + 4)) {
		v = 0;
	} else {
		for (i = 0; i < size; i++)
			v |= (u32)fn->config[where + i] << (8 * i);
	}
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
	*val = size == 4 ? v : v & ((1u << (8 * size)) - 1);
	return PCIBIOS_SUCCESSFUL;
}

static void pcinet_bar_write(struct pcinet_bar *b, bool hi, int shift, int size, u32 val)
{
	u32 all = size == 4 ? ~0u : (1u << (8 * size)) - 1;
	u32 cur = pcinet_bar_dword(b, hi);

	/* Merge a partial write into the dword as it reads now. */
	val = (cur & ~(all << shift)) | ((val & all) << shift);
	if (hi) {
		b->sizing_hi = val == ~0u;
		if (!b->sizing_hi)
			b->addr = ((u64)val << 32) | lower_32_bits(b->addr);
	} else {
		b->sizing_lo = (val | 0xf) == ~0u;
		if (!b->sizing_lo)
			b->addr = (b->addr & ~0xffffffffull) | (val & ~(u32)0xf & lower_32_bits(~(b->size - 1)));
	}
}

/*
 * The function's registers as at power-on, as after an FLR: config space from the attached image,
 * the MSI-X table masked, write counters from 0, no push rules. The BAR registers keep their
 * addresses (the PCI core restores them anyway).
 */
static void pcinet_power_on(struct pcinet_fn *fn)
{
	lockdep_assert_held(&fn->cfg_lock);
	memcpy(fn->config, fn->config_init, PCINET_CONFIG_SIZE);
	pcinet_msix_reset(fn);
	pcinet_push_clear(fn);
	atomic64_set(&fn->writes_sent, 0);
	atomic64_set(&fn->writes_applied, 0);
}

/* pcinet_power_on() from outside a config access. */
static void pcinet_power_on_locked(struct pcinet_fn *fn)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&fn->cfg_lock, flags);
	pcinet_power_on(fn);
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
}

static int pcinet_cfg_write(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 val)
{
	struct pcinet_fn *fn = pcinet_fn_of(bus);
	struct pcinet_r_config_write rec = {};
	bool hi, flr = false;
	unsigned long flags;
	u32 now = 0;
	int bar, i;

	if (devfn != 0 || where < 0 || where + size > PCINET_CONFIG_SIZE)
		return PCIBIOS_DEVICE_NOT_FOUND;
	if ((READ_ONCE(fn->link_down) || READ_ONCE(fn->state) == PN_DETACHED) &&
	    !READ_ONCE(fn->standin))
		return PCIBIOS_SUCCESSFUL;	/* goes nowhere; W_LINK_UP resets the image */
	raw_spin_lock_irqsave(&fn->cfg_lock, flags);
	bar = pcinet_bar_of(fn, where & ~3, &hi);
	if (bar >= 0) {
		pcinet_bar_write(&fn->bars[bar], hi, 8 * (where & 3), size, val);
		goto out;
	}
	if (bar == -2 || (where >= PCI_ROM_ADDRESS && where < PCI_ROM_ADDRESS + 4))
		goto out;
	for (i = 0; i < size; i++) {
		u8 b = val >> (8 * i);
		u8 *c = &fn->config[where + i];

		*c = (*c & ~fn->wmask[where + i]) | (b & fn->wmask[where + i]);
		*c &= ~(b & fn->w1cmask[where + i]);
		now |= (u32)*c << (8 * i);
	}
	if (fn->pcie_cap && where <= fn->pcie_cap + PCI_EXP_DEVCTL + 1 &&
	    where + size > fn->pcie_cap + PCI_EXP_DEVCTL + 1) {
		u8 *hi_byte = &fn->config[fn->pcie_cap + PCI_EXP_DEVCTL + 1];

		if (*hi_byte & (PCI_EXP_DEVCTL_BCR_FLR >> 8)) {
			/* FLR itself reads 0 afterwards: it is in no image. */
			pcinet_power_on(fn);
			flr = true;
		}
	}
	if (READ_ONCE(fn->standin))
		goto local;	/* the image is all a stand-in has (freeze.c): nobody to tell */
	pcinet_hdr(&rec.hdr, PCINET_R_CONFIG_WRITE, sizeof(rec));
	rec.offset = cpu_to_le32(where);
	rec.size = cpu_to_le32(size);
	rec.value = cpu_to_le32(now);
	pcinet_queue_atomic(fn, &rec, sizeof(rec));
	if (flr) {
		struct pcinet_hdr reset;

		pcinet_hdr(&reset, PCINET_R_FUNCTION_RESET, sizeof(reset));
		pcinet_queue_atomic(fn, &reset, sizeof(reset));
	}
local:
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
	pcinet_msix_config_written(fn, where, size);
	return PCIBIOS_SUCCESSFUL;
out:
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
	return PCIBIOS_SUCCESSFUL;
}

static struct pci_ops pcinet_pci_ops = {
	.read = pcinet_cfg_read,
	.write = pcinet_cfg_write,
};

/* ---- records from the host-agent ---- */

/* Offset of the first capability with this ID in the config image, or 0. */
u16 pcinet_find_cap(struct pcinet_fn *fn, u8 id)
{
	u8 pos = 0;
	int ttl;

	if (fn->config[PCI_STATUS] & PCI_STATUS_CAP_LIST)
		pos = fn->config[PCI_CAPABILITY_LIST] & ~3;
	for (ttl = 48; pos >= 0x40 && ttl; ttl--) {
		if (fn->config[pos] == id)
			return pos;
		pos = fn->config[pos + 1] & ~3;
	}
	return 0;
}

static int pcinet_attach(struct pcinet_fn *fn, const struct pcinet_w_attach *a)
{
	int i, ret;

	if (fn->state != PN_NEW)
		return -EBUSY;
	if (le32_to_cpu(a->abi_version) != PCINET_ABI_VERSION) {
		pr_warn_ratelimited("attach: ABI version %u, this module speaks %u\n",
				    le32_to_cpu(a->abi_version), PCINET_ABI_VERSION);
		return -EPROTO;
	}
	fn->msix_vectors = le32_to_cpu(a->msix_vectors);
	if (fn->msix_vectors > PCINET_MAX_VECTORS)
		return -EINVAL;
	if ((a->config[PCI_HEADER_TYPE] & 0x7f) != PCI_HEADER_TYPE_NORMAL)
		return -EINVAL;
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		u64 size = le64_to_cpu(a->bars[i].size);
		u32 kind = le32_to_cpu(a->bars[i].kind);
		u32 flags = le32_to_cpu(a->bars[i].flags);

		if (kind == PCINET_BAR_NONE) {
			if (size || flags)
				return -EINVAL;
			continue;
		}
		if (kind == PCINET_BAR_IO) {
			pr_warn_ratelimited("attach: BAR %d: I/O BARs are not supported\n", i);
			return -EOPNOTSUPP;
		}
		if ((kind != PCINET_BAR_MEM64 && kind != PCINET_BAR_MEM32) ||
		    !is_power_of_2(size) || size < PAGE_SIZE || size > PCINET_MAX_BAR ||
		    (flags & ~PCINET_BAR_PREFETCH))
			return -EINVAL;
		/* A 64-bit BAR takes the next register for its upper half. */
		if (kind == PCINET_BAR_MEM64 && (i == PCINET_NUM_BARS - 1 ||
						 le32_to_cpu(a->bars[i + 1].kind) != PCINET_BAR_NONE))
			return -EINVAL;
	}
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		struct pcinet_bar *b = &fn->bars[i];

		b->size = le64_to_cpu(a->bars[i].size);
		b->kind = le32_to_cpu(a->bars[i].kind);
		b->flags = le32_to_cpu(a->bars[i].flags);
		if (!b->size)
			continue;
		b->shadow = vzalloc(b->size);
		if (!b->shadow)
			goto err_shadow;
	}
	memcpy(fn->config, a->config, PCINET_CONFIG_SIZE);
	memcpy(fn->config_init, a->config, PCINET_CONFIG_SIZE);
	memcpy(fn->wmask, a->wmask, PCINET_CONFIG_SIZE);
	memcpy(fn->w1cmask, a->w1cmask, PCINET_CONFIG_SIZE);
	/* The capability chain is the device's business, but we need the PCIe one for FLR. */
	fn->pcie_cap = pcinet_find_cap(fn, PCI_CAP_ID_EXP);
	ret = pcinet_msix_attach(fn);
	if (ret)
		goto err_free;
	fn->state = PN_ATTACHED;
	return 0;

err_shadow:
	ret = -ENOMEM;
err_free:
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		vfree(fn->bars[i].shadow);
		fn->bars[i] = (struct pcinet_bar){};
	}
	return ret;
}

static int pcinet_range(struct pcinet_fn *fn, const struct pcinet_w_range *r)
{
	u32 bar = le32_to_cpu(r->bar), kind = le32_to_cpu(r->kind);
	u64 off = le64_to_cpu(r->offset), len = le64_to_cpu(r->length);

	if (fn->state != PN_ATTACHED)
		return -EBUSY;
	if (bar >= PCINET_NUM_BARS || !fn->bars[bar].size || !len ||
	    off >= fn->bars[bar].size || len > fn->bars[bar].size - off ||
	    (kind != PCINET_RANGE_VOLATILE && kind != PCINET_RANGE_DOORBELL))
		return -EINVAL;
	if (fn->nranges == PCINET_MAX_RANGES)
		return -ENOSPC;
	fn->ranges[fn->nranges++] = (struct pcinet_range){ bar, kind, off, len };
	return 0;
}

static int pcinet_shadow(struct pcinet_fn *fn, const struct pcinet_w_shadow *s, size_t len)
{
	u32 bar = le32_to_cpu(s->bar), size = le32_to_cpu(s->size);
	u64 off = le64_to_cpu(s->offset);

	if (fn->state == PN_NEW)
		return -EBUSY;
	if (bar >= PCINET_NUM_BARS || !fn->bars[bar].size || !size || size > PCINET_MAX_DATA ||
	    sizeof(*s) + size > len || len - sizeof(*s) - size >= 8 ||
	    off >= fn->bars[bar].size || size > fn->bars[bar].size - off)
		return -EINVAL;
	return pcinet_shadow_update(fn, bar, off, s->data, size);
}

/*
 * A window below 4 GiB for the 32-bit BARs: free space in a window of a host bridge, where the
 * firmware would put a 32-bit BAR (the 64-bit window above 512 GiB is out of their reach). Every
 * access to it is trapped like the other window's, so nothing there needs to answer.
 */
static int pcinet_alloc_window32(struct pcinet_fn *fn, resource_size_t size, resource_size_t align)
{
	struct pci_bus *bus = NULL;
	struct resource *r;
	int i, ret = -ENOSPC;

	fn->window32.name = "pcinet 32-bit BARs";
	fn->window32.flags = IORESOURCE_MEM;
	pci_lock_rescan_remove();
	while (ret && (bus = pci_find_next_bus(bus)) != NULL) {
		if (bus->ops == &pcinet_pci_ops)
			continue;
		pci_bus_for_each_resource(bus, r, i) {
			if (!r || !(r->flags & IORESOURCE_MEM) || r->start > U32_MAX ||
			    !r->parent)
				continue;
			ret = allocate_resource(r, &fn->window32, size, r->start,
						min_t(resource_size_t, r->end, U32_MAX), align,
						NULL, NULL);
			if (!ret)
				break;
		}
	}
	pci_unlock_rescan_remove();
	if (ret)
		pr_warn_ratelimited("no free space of %llu bytes below 4 GiB in a host bridge window for the 32-bit BARs\n",
				    (u64)size);
	return ret;
}

/* Firmware-style assignment of the BARs of one kind: largest first, each naturally aligned. */
static void pcinet_assign_bars(struct pcinet_fn *fn, u32 kind, u64 at)
{
	int i;

	for (;;) {
		int best = -1;

		for (i = 0; i < PCINET_NUM_BARS; i++)
			if (fn->bars[i].size && fn->bars[i].kind == kind && !fn->bars[i].addr &&
			    (best < 0 || fn->bars[i].size > fn->bars[best].size))
				best = i;
		if (best < 0)
			break;
		fn->bars[best].addr = at;
		at += fn->bars[best].size;
	}
}

static int pcinet_start(struct pcinet_fn *fn)
{
	struct pcinet_r_attached rec = {};
	resource_size_t total = 0, align = PAGE_SIZE, total32 = 0, align32 = PAGE_SIZE;
	LIST_HEAD(resources);
	struct pci_bus *bus;
	int i, ret;

	if (fn->state != PN_ATTACHED)
		return -EBUSY;
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		if (fn->bars[i].kind == PCINET_BAR_MEM32) {
			total32 += fn->bars[i].size;
			align32 = max_t(resource_size_t, align32, fn->bars[i].size);
		} else {
			total += fn->bars[i].size;
			align = max_t(resource_size_t, align, fn->bars[i].size);
		}
	}
	if (!total)
		total = PAGE_SIZE;	/* a function without BARs still gets a (tiny) window */
	total = roundup_pow_of_two(total);
	if (total32)
		total32 = roundup_pow_of_two(total32);

	for (i = 0; i < PCINET_NUM_BARS; i++) {
		if (!fn->bars[i].size)
			continue;
		if (!fn->bars[i].reset)
			fn->bars[i].reset = vmalloc(fn->bars[i].size);
		if (!fn->bars[i].reset)
			return -ENOMEM;	/* freed with the shadows at release */
		memcpy(fn->bars[i].reset, fn->bars[i].shadow, fn->bars[i].size);
	}
	ret = pcinet_dma_init(fn);
	if (ret)
		return ret;
	ret = ida_alloc_range(&pcinet_domains, PCINET_DOMAIN_FIRST, PCINET_DOMAIN_LAST, GFP_KERNEL);
	if (ret < 0)
		goto err_dma;
	fn->domain = ret;

	fn->window.name = "pcinet BARs";
	fn->window.flags = IORESOURCE_MEM | IORESOURCE_MEM_64;
	ret = allocate_resource(&iomem_resource, &fn->window, total, PCINET_WINDOW_MIN,
				min_t(u64, PCINET_WINDOW_MAX,
				      (1ull << boot_cpu_data.x86_phys_bits) - 1),
				align, NULL, NULL);
	if (ret) {
		pr_warn_ratelimited("no free physical window of %llu bytes for the BARs\n", (u64)total);
		goto err_domain;
	}
	if (total32) {
		ret = pcinet_alloc_window32(fn, total32, align32);
		if (ret)
			goto err_window;
	}
	pcinet_assign_bars(fn, PCINET_BAR_MEM64, fn->window.start);
	pcinet_assign_bars(fn, PCINET_BAR_MEM32, fn->window32.start);

	fn->busn.name = "pcinet bus";
	fn->busn.start = 0;
	fn->busn.end = 0;
	fn->busn.flags = IORESOURCE_BUS;
	pci_add_resource(&resources, &fn->window);
	if (total32)
		pci_add_resource(&resources, &fn->window32);
	pci_add_resource(&resources, &fn->busn);
	fn->sysdata.domain = fn->domain;
	fn->sysdata.node = NUMA_NO_NODE;

	ret = pcinet_msix_start(fn);
	if (ret) {
		pci_free_resource_list(&resources);
		goto err_window;
	}
	pci_lock_rescan_remove();
	bus = pci_create_root_bus(NULL, 0, &pcinet_pci_ops, &fn->sysdata, &resources);
	if (!bus) {
		pci_unlock_rescan_remove();
		pci_free_resource_list(&resources);
		ret = -ENOMEM;
		goto err_msix;
	}
	fn->bus = bus;
	/* The function inherits the bus's MSI domain when it is added (pcibios_device_add). */
	if (fn->msi_domain)
		dev_set_msi_domain(&bus->dev, fn->msi_domain);
	/* The bus notifier (pcinet_bus_notify) sets fn->pdev and the DMA ops as the scan adds it. */
	pci_scan_child_bus(bus);
	pci_bus_claim_resources(bus);
	pci_unlock_rescan_remove();
	if (!fn->pdev) {
		pr_warn_ratelimited("the PCI core did not find the function on the new bus\n");
		ret = -ENODEV;
		goto err_bus;
	}

	pcinet_mmio_start(fn);
	fn->state = PN_STARTED;
	pcinet_hdr(&rec.hdr, PCINET_R_ATTACHED, sizeof(rec));
	rec.domain = cpu_to_le32(fn->domain);
	rec.bus = bus->number;
	rec.devfn = 0;
	pcinet_queue_ctl(fn, &rec, sizeof(rec));
	pr_info("%04x:%02x:00.0 attached (%04x:%04x)\n", fn->domain, bus->number,
		fn->config[0] | fn->config[1] << 8, fn->config[2] | fn->config[3] << 8);
	/* Drivers bind from a worker: their probe does MMIO, which needs the host-agent reading
	 * this file, and it is still in the write() that carried W_START.
	 */
	schedule_work(&fn->add_work);
	return 0;

err_bus:
	pci_lock_rescan_remove();
	pci_stop_root_bus(bus);
	pci_remove_root_bus(bus);
	pci_unlock_rescan_remove();
	fn->bus = NULL;
err_msix:
	pcinet_msix_stop(fn);

err_window:
	if (fn->window32.parent)
		release_resource(&fn->window32);
	release_resource(&fn->window);
err_domain:
	ida_free(&pcinet_domains, fn->domain);
	for (i = 0; i < PCINET_NUM_BARS; i++)
		fn->bars[i].addr = 0;
err_dma:
	pcinet_dma_exit(fn);
	return ret;
}

/* Adds the time since `since` to a timing sum (docs/KERNEL.md, "Timing"). Any context. */
void pcinet_timing_add(atomic64_t *ns, atomic64_t *n, u64 since)
{
	atomic64_add(ktime_get_ns() - since, ns);
	atomic64_inc(n);
}

/*
 * /sys/bus/pci/devices/<address>/pcinet_timing: where the time of the data path goes, as sums in
 * nanoseconds and how many they add up, one "name ns count" per line (bench/nvme takes the
 * differences around each phase).
 */
static ssize_t pcinet_timing_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct pcinet_counters *c = &pcinet_fn_of(to_pci_dev(dev)->bus)->stats;
	const struct {
		const char *name;
		atomic64_t *ns, *n;
	} t[] = {
		{ "mmio", &c->t_mmio_ns, &c->t_mmio_n },
		{ "queue", &c->t_queue_ns, &c->t_queue_n },
		{ "send", &c->t_send_ns, &c->t_send_n },
		{ "rtt", &c->t_rtt_ns, &c->t_rtt_n },
		{ "apply", &c->t_apply_ns, &c->t_apply_n },
		{ "irq", &c->t_irq_ns, &c->t_irq_n },
		{ "push", &c->t_push_ns, &c->t_push_n },
		{ "kick", &c->t_kick_ns, &c->t_kick_n },
		{ "room", &c->t_room_ns, &c->t_room_n },
		{ "map", &c->t_map_ns, &c->t_map_n },
	};
	int i, len = 0;

	for (i = 0; i < ARRAY_SIZE(t); i++)
		len += sysfs_emit_at(buf, len, "%s %lld %lld\n", t[i].name, atomic64_read(t[i].ns),
				     atomic64_read(t[i].n));
	return len;
}
static DEVICE_ATTR_RO(pcinet_timing);

/*
 * /sys/bus/pci/devices/<address>/pcinet_counters: every counter of the function, one "name value"
 * per line, the removal line's figures while the function is on the bus. The host-agent shows them
 * in `pcinet status` and logs a warning when one that means something was lost or refused grows
 * (records lost to memory or the queue cap, timeouts, stalls, refused DMA...): none is silent.
 */
static ssize_t pcinet_counters_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct pcinet_counters *c = &pcinet_fn_of(to_pci_dev(dev)->bus)->stats;
#define PCINET_COUNTER(name) { #name, &c->name }
	const struct {
		const char *name;
		atomic64_t *v;
	} t[] = {
		PCINET_COUNTER(mmio_writes), PCINET_COUNTER(mmio_reads),
		PCINET_COUNTER(volatile_reads), PCINET_COUNTER(read_timeouts),
		PCINET_COUNTER(queue_waits), PCINET_COUNTER(queue_overruns),
		PCINET_COUNTER(lost_records), PCINET_COUNTER(emulate_failures),
		PCINET_COUNTER(nested_faults), PCINET_COUNTER(deferred), PCINET_COUNTER(spun),
		PCINET_COUNTER(interrupts), PCINET_COUNTER(interrupts_pending),
		PCINET_COUNTER(interrupts_dropped), PCINET_COUNTER(dma_refused),
		PCINET_COUNTER(dma_bytes), PCINET_COUNTER(link_downs), PCINET_COUNTER(link_dropped),
		PCINET_COUNTER(pushes), PCINET_COUNTER(push_bytes), PCINET_COUNTER(push_refused),
		PCINET_COUNTER(push_over_budget), PCINET_COUNTER(push_nomem),
		PCINET_COUNTER(push_busy), PCINET_COUNTER(push_drops), PCINET_COUNTER(vq_rounds),
		PCINET_COUNTER(vq_irqs_skipped), PCINET_COUNTER(vq_kicks), PCINET_COUNTER(stalls),
		PCINET_COUNTER(stall_fails), PCINET_COUNTER(queue_drops),
	};
#undef PCINET_COUNTER
	int i, len = 0;

	for (i = 0; i < ARRAY_SIZE(t); i++)
		len += sysfs_emit_at(buf, len, "%s %lld\n", t[i].name, atomic64_read(t[i].v));
	return len;
}
static DEVICE_ATTR_RO(pcinet_counters);

/*
 * /sys/bus/pci/devices/<address>/pcinet_recovers: 1 if the driver bound now rides out a link
 * down: it has the PCI error handlers (error_detected() and slot_reset(): it quiesces, keeps its
 * I/O queued and resets the device at link up), or, a NIC's, none but hibernation's freeze() and
 * restore() (freeze.c: left bound, its interfaces without carrier, frozen and restored at link
 * up); else 0 (a link down unbinds it). The host-agent asks before it takes a link down only
 * because its endpoint went quiet: a driver that would be unbound is better left waiting for the
 * session to resume. A look without the device lock (taking it here could deadlock with a removal
 * waiting for this file): a hint, which the link-down work does not depend on.
 */
static ssize_t pcinet_recovers_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct device_driver *drv = READ_ONCE(dev->driver);
	const struct pci_error_handlers *eh = drv ? to_pci_driver(drv)->err_handler : NULL;

	if (eh && eh->error_detected)
		return sysfs_emit(buf, "%d\n", !!eh->slot_reset);
	return sysfs_emit(buf, "%d\n", pcinet_driver_parks(to_pci_dev(dev), drv));
}
static DEVICE_ATTR_RO(pcinet_recovers);

static void pcinet_add_work(struct work_struct *work)
{
	struct pcinet_fn *fn = container_of(work, struct pcinet_fn, add_work);

	pci_lock_rescan_remove();
	pci_bus_add_devices(fn->bus);
	pci_unlock_rescan_remove();
}

/* ---- the function on and off the bus ---- */

/*
 * The PCI core adds the function when it scans the bus (W_START, and every rescan after an admin
 * removed it: `echo 1 > .../remove; echo 1 > /sys/bus/pci/rescan`) and deletes it when it is
 * removed (by an admin, or by pcinet_remove()). Each new pci_dev gets the DMA sandbox's ops and
 * the timing file, and becomes fn->pdev. Under pci_lock_rescan_remove(), which every add and
 * removal holds: fn->pdev changes only under it.
 */
static void pcinet_dev_added(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	pcinet_dma_set_ops(fn, pdev);
	/* Behind it is whatever a remote endpoint says: to the kernel, an external device (like a
	 * Thunderbolt one), which code that distinguishes them treats with suspicion.
	 */
	pdev->untrusted = 1;
	WARN_ON_ONCE(fn->pdev);
	pci_dev_put(fn->pdev);
	fn->pdev = pci_dev_get(pdev);
	/* Statistics and hints only: the device works without the files. */
	fn->timing_file = !device_create_file(&pdev->dev, &dev_attr_pcinet_timing);
	fn->counters_file = !device_create_file(&pdev->dev, &dev_attr_pcinet_counters);
	fn->recovers_file = !device_create_file(&pdev->dev, &dev_attr_pcinet_recovers);
}

/*
 * The function leaves the bus, its driver already unbound. Taken off by an admin while the device
 * is still there (state PN_STARTED), it returns to its power-on state, as in a slot whose power is
 * cut, and the endpoint is told (R_FUNCTION_RESET): queues, rings and push rules of the driver that
 * is gone must not meet the one a rescan binds.
 */
static void pcinet_dev_deleted(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	struct pcinet_hdr reset;

	if (fn->pdev != pdev)
		return;
	if (fn->timing_file)
		device_remove_file(&pdev->dev, &dev_attr_pcinet_timing);
	if (fn->counters_file)
		device_remove_file(&pdev->dev, &dev_attr_pcinet_counters);
	if (fn->recovers_file)
		device_remove_file(&pdev->dev, &dev_attr_pcinet_recovers);
	fn->timing_file = false;
	fn->counters_file = false;
	fn->recovers_file = false;
	fn->pdev = NULL;
	pci_dev_put(pdev);
	if (READ_ONCE(fn->state) != PN_STARTED || READ_ONCE(fn->link_down))
		return;
	pcinet_power_on_locked(fn);
	pcinet_hdr(&reset, PCINET_R_FUNCTION_RESET, sizeof(reset));
	pcinet_queue(fn, &reset, sizeof(reset));
	pr_info("%04x:%02x:00.0 removed from the bus: reset to its power-on state\n", fn->domain,
		fn->bus->number);
}

static int pcinet_bus_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	struct pci_dev *pdev = to_pci_dev(data);

	if (pdev->bus->ops != &pcinet_pci_ops)
		return NOTIFY_DONE;
	if (action == BUS_NOTIFY_ADD_DEVICE)
		pcinet_dev_added(pcinet_fn_of(pdev->bus), pdev);
	else if (action == BUS_NOTIFY_DEL_DEVICE)
		pcinet_dev_deleted(pcinet_fn_of(pdev->bus), pdev);
	else if (action == BUS_NOTIFY_UNBIND_DRIVER)
		pcinet_driver_unbinding(pcinet_fn_of(pdev->bus), pdev);
	return NOTIFY_DONE;
}

static struct notifier_block pcinet_bus_nb = {
	.notifier_call = pcinet_bus_notify,
};

/* The function's pci_dev with a reference, or NULL while it is off the bus. */
static struct pci_dev *pcinet_get_pdev(struct pcinet_fn *fn)
{
	struct pci_dev *pdev;

	pci_lock_rescan_remove();
	pdev = pci_dev_get(fn->pdev);
	pci_unlock_rescan_remove();
	return pdev;
}

/* ---- link loss and recovery ---- */

/* Drops every record not yet read: they were for the endpoint that is gone. */
static void pcinet_purge_queue(struct pcinet_fn *fn)
{
	struct pcinet_rec *r, *tmp;
	LIST_HEAD(old);

	spin_lock_irq(&fn->qlock);
	list_splice_init(&fn->queue, &old);
	fn->queued = 0;
	spin_unlock_irq(&fn->qlock);
	list_for_each_entry_safe(r, tmp, &old, node) {
		atomic64_inc(&fn->stats.link_dropped);
		kvfree(r);
	}
	wake_up_interruptible_all(&fn->writeq);
}

/*
 * What AER does when a link fails (drivers/pci/pcie/err.c): the channel is frozen and the driver
 * is told, so it stops touching the device and parks its I/O until a reset. A NIC's driver without
 * error handlers that can hibernate stays bound too (freeze.c: its interfaces lose their carrier).
 * One that cannot recover either way (or says so) is unbound now, while the function reads as
 * absent, so its remove path gives up on the device instead of waiting for it; it is bound again
 * when the link is back.
 */
static void pcinet_link_down_work(struct work_struct *work)
{
	struct pcinet_fn *fn = container_of(work, struct pcinet_fn, link_down_work);
	struct pci_dev *pdev = pcinet_get_pdev(fn);
	const struct pci_error_handlers *eh;
	pci_ers_result_t vote = PCI_ERS_RESULT_NONE;
	bool bound;

	fn->link_recoverable = false;
	fn->link_parked = false;
	fn->link_driver = NULL;
	if (!pdev)
		return;	/* an admin removed it from the bus: no driver to tell */
	device_lock(&pdev->dev);
	pdev->error_state = pci_channel_io_frozen;
	bound = pdev->driver;
	eh = bound ? pdev->driver->err_handler : NULL;
	if (eh && eh->error_detected)
		vote = eh->error_detected(pdev, pci_channel_io_frozen);
	fn->link_recoverable = bound && (vote == PCI_ERS_RESULT_NEED_RESET ||
					 vote == PCI_ERS_RESULT_CAN_RECOVER);
	fn->link_parked = bound && !(eh && eh->error_detected) &&
			  pcinet_driver_parks(pdev, &pdev->driver->driver);
	if (fn->link_parked)
		pcinet_link_park_driver(fn, pdev);
	fn->link_driver = fn->link_recoverable || fn->link_parked ? pdev->driver : NULL;
	device_unlock(&pdev->dev);
	if (fn->link_recoverable) {
		pci_info(pdev, "link down: the driver waits for a reset\n");
	} else if (fn->link_parked) {
		pci_info(pdev, "link down: the driver stays bound; frozen and restored when the link is back\n");
	} else if (bound) {
		pci_info(pdev, "link down: the driver cannot recover; unbinding it until the link is back\n");
		device_release_driver(&pdev->dev);
	}
	pci_dev_put(pdev);
}

/*
 * A fresh device is behind the function. A driver waiting for a reset gets slot_reset() and
 * resume(), as after a secondary bus reset; one parked without error handlers is frozen and
 * restored (freeze.c); if it fails to recover, it is unbound. Only the driver
 * that was told of the failure: an admin may have bound another while the link was down (pci-stub,
 * vfio-pci — often without error handlers), and that one probed the function as it was then, so it
 * is left alone. Then any function without a driver is offered to the drivers again.
 */
static void pcinet_link_up_work(struct work_struct *work)
{
	struct pcinet_fn *fn = container_of(work, struct pcinet_fn, link_up_work);
	struct pci_dev *pdev = pcinet_get_pdev(fn);
	const struct pci_error_handlers *eh;
	pci_ers_result_t vote = PCI_ERS_RESULT_RECOVERED;
	bool failed = false, frozen = false, told;
	int err;

	if (!pdev) {
		/* Removed while the link was down: a rescan finds it again. */
		pr_info("%04x:00:00.0 link up: the function is off the bus\n", fn->domain);
		return;
	}
	device_lock(&pdev->dev);
	pdev->error_state = pci_channel_io_normal;
	told = (fn->link_recoverable || fn->link_parked) && pdev->driver &&
	       pdev->driver == fn->link_driver;
	if (told && fn->link_parked) {
		err = pcinet_link_restore_driver(fn, pdev);
		/* Frozen and not restored: unbinding would run its remove on a frozen device. */
		failed = err && !fn->link_frozen;
		frozen = fn->link_frozen;
	} else if (told) {
		eh = pdev->driver->err_handler;
		if (eh && eh->slot_reset)
			vote = eh->slot_reset(pdev);
		if (vote == PCI_ERS_RESULT_RECOVERED && eh && eh->resume)
			eh->resume(pdev);
		failed = vote != PCI_ERS_RESULT_RECOVERED;
	} else if ((fn->link_recoverable || fn->link_parked) && pdev->driver) {
		pci_info(pdev, "link up: %s was bound while the link was down; leaving it\n",
			 pdev->driver->name);
	}
	fn->link_driver = NULL;
	device_unlock(&pdev->dev);
	if (failed) {
		pci_warn(pdev, "link up: the driver did not recover; binding it again\n");
		device_release_driver(&pdev->dev);
	}
	if (!pdev->dev.driver && device_attach(&pdev->dev) < 0)
		pci_warn(pdev, "link up: binding a driver failed\n");
	pci_info(pdev, "link up: %s\n", !pdev->dev.driver ? "no driver" :
		 frozen ? "the driver stays frozen" :
		 told && !failed ? "recovered" : "driver bound again");
	pci_dev_put(pdev);
}

/* W_LINK_DOWN, or the kernel link failed. Under lock. */
int pcinet_link_down(struct pcinet_fn *fn)
{
	if (fn->state != PN_STARTED || fn->link_down)
		return -EBUSY;
	pcinet_link_close(fn);
	if (!fn->link_wq) {
		fn->link_wq = alloc_ordered_workqueue("pcinet%d-link", 0, fn->domain);
		if (!fn->link_wq)
			return -ENOMEM;
	}
	atomic64_inc(&fn->stats.link_downs);
	WRITE_ONCE(fn->link_down, true);
	/* After link_down is set: a doorbell still pushing finishes first, its records dropped. */
	pcinet_push_clear(fn);
	pcinet_purge_queue(fn);
	pcinet_mmio_link_down(fn);
	queue_work(fn->link_wq, &fn->link_down_work);
	return 0;
}

/*
 * The agent has written the new device's initial shadow (W_SHADOW) before this. The function
 * returns to its power-on state; the driver's recovery restores the rest.
 */
static int pcinet_link_up(struct pcinet_fn *fn)
{
	if (fn->state != PN_STARTED || !fn->link_down)
		return -EBUSY;
	/* A record that raced W_LINK_DOWN (queued by a CPU that had not yet seen it) is stale. */
	pcinet_purge_queue(fn);
	pcinet_power_on_locked(fn);
	/* Without a new W_CONNECT the data plane comes back to read() and write(). */
	fn->linked = fn->link != NULL;
	WRITE_ONCE(fn->link_down, false);
	queue_work(fn->link_wq, &fn->link_up_work);
	return 0;
}

/*
 * Surprise removal: from now on the function answers nothing (MMIO reads return all-ones,
 * writes go nowhere, waiting reads give up), the driver unbinds, the function and its bus go.
 */
static void pcinet_remove(struct pcinet_fn *fn)
{
	struct pcinet_counters *c = &fn->stats;

	pcinet_link_close(fn);
	if (fn->state == PN_STARTED) {
		WRITE_ONCE(fn->state, PN_DETACHED);
		pcinet_push_clear(fn);
		wake_up_interruptible_all(&fn->writeq);
		wake_up_all(&fn->mmioq);
		cancel_work_sync(&fn->add_work);
		if (fn->link_wq) {
			/* Recovery still running finds the function gone and finishes quickly. */
			flush_workqueue(fn->link_wq);
			destroy_workqueue(fn->link_wq);
			fn->link_wq = NULL;
		}
		pci_lock_rescan_remove();
		pci_stop_root_bus(fn->bus);
		pci_remove_root_bus(fn->bus);
		pci_unlock_rescan_remove();
		pcinet_mmio_stop(fn);
		pcinet_msix_stop(fn);
		pcinet_dma_exit(fn);
		release_resource(&fn->window);
		if (fn->window32.parent)
			release_resource(&fn->window32);
		ida_free(&pcinet_domains, fn->domain);
		pr_info("%04x:00:00.0 removed: mmio writes %lld reads %lld volatile %lld timeouts %lld; queue waits %lld overruns %lld lost %lld; emulation failures %lld; nested faults %lld; waits asleep %lld busy %lld; interrupts %lld pending %lld dropped %lld; dma bytes %lld refused %lld; link downs %lld dropped %lld; pushes %lld bytes %lld skipped refused %lld budget %lld nomem %lld busy %lld; push drops %lld; virtq rounds %lld irqs skipped %lld kicks %lld; stalls %lld fast fails %lld queue drops %lld\n",
			fn->domain, atomic64_read(&c->mmio_writes), atomic64_read(&c->mmio_reads),
			atomic64_read(&c->volatile_reads), atomic64_read(&c->read_timeouts),
			atomic64_read(&c->queue_waits), atomic64_read(&c->queue_overruns),
			atomic64_read(&c->lost_records), atomic64_read(&c->emulate_failures),
			atomic64_read(&c->nested_faults),
			atomic64_read(&c->deferred), atomic64_read(&c->spun),
			atomic64_read(&c->interrupts), atomic64_read(&c->interrupts_pending),
			atomic64_read(&c->interrupts_dropped), atomic64_read(&c->dma_bytes),
			atomic64_read(&c->dma_refused), atomic64_read(&c->link_downs),
			atomic64_read(&c->link_dropped), atomic64_read(&c->pushes),
			atomic64_read(&c->push_bytes), atomic64_read(&c->push_refused),
			atomic64_read(&c->push_over_budget), atomic64_read(&c->push_nomem),
			atomic64_read(&c->push_busy), atomic64_read(&c->push_drops),
			atomic64_read(&c->vq_rounds), atomic64_read(&c->vq_irqs_skipped),
			atomic64_read(&c->vq_kicks), atomic64_read(&c->stalls),
			atomic64_read(&c->stall_fails), atomic64_read(&c->queue_drops));
	}
	WRITE_ONCE(fn->state, PN_DETACHED);
	wake_up_interruptible_all(&fn->readq);
}

static int pcinet_record(struct pcinet_fn *fn, const void *buf, size_t len)
{
	const struct pcinet_hdr *h = buf;
	u16 type = le16_to_cpu(h->type);

	/* Anything the device says ends a stall (pcinet_stall()). */
	if (type != PCINET_W_LINK_DOWN && type != PCINET_W_DETACH)
		pcinet_unstall(fn);
	switch (type) {
	case PCINET_W_ATTACH:
		if (len != ALIGN(sizeof(struct pcinet_w_attach), 8))
			return -EINVAL;
		return pcinet_attach(fn, buf);
	case PCINET_W_RANGE:
		if (len != sizeof(struct pcinet_w_range))
			return -EINVAL;
		return pcinet_range(fn, buf);
	case PCINET_W_SHADOW:
		if (len < sizeof(struct pcinet_w_shadow))
			return -EINVAL;
		return pcinet_shadow(fn, buf, len);
	case PCINET_W_START:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		return pcinet_start(fn);
	case PCINET_W_WRITES_APPLIED: {
		const struct pcinet_w_writes_applied *w = buf;
		u64 count;

		if (len != sizeof(*w))
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		/* Counts restart at 0 on a function reset, and a count from before the reset can
		 * still be on its way: never move backwards, never past what was sent.
		 */
		count = min_t(u64, le64_to_cpu(w->count), atomic64_read(&fn->writes_sent));
		if (count > atomic64_read(&fn->writes_applied)) {
			atomic64_set_release(&fn->writes_applied, count);
			wake_up_all(&fn->mmioq);
		}
		return 0;
	}
	case PCINET_W_MMIO_READ_CPL:
		if (len != sizeof(struct pcinet_w_mmio_read_cpl))
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_mmio_read_cpl(fn, buf);
	case PCINET_W_DMA_READ:
	{
		const struct pcinet_w_dma_read *d = buf;

		if (len != sizeof(*d) || !d->size || le32_to_cpu(d->size) > PCINET_MAX_DATA)
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_dma_read(fn, d);
	}
	case PCINET_W_DMA_WRITE: {
		const struct pcinet_w_dma_write *d = buf;
		u32 size;

		if (len < sizeof(*d))
			return -EINVAL;
		size = le32_to_cpu(d->size);
		if (!size || size > PCINET_MAX_DATA || len != ALIGN(sizeof(*d) + size, 8))
			return -EINVAL;
		if (d->reserved)
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_dma_write(fn, d);
	}
	case PCINET_W_INTERRUPT: {
		const struct pcinet_w_interrupt *w = buf;

		if (len != sizeof(*w) || w->reserved)
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (le32_to_cpu(w->vector) >= fn->msix_vectors)
			return -EINVAL;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_msix_raise(fn, le32_to_cpu(w->vector));
	}
	case PCINET_W_LINK_DOWN:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		/* A failed kernel link may have taken it down before the host-agent heard of it. */
		if (fn->linked && fn->link_down && fn->state == PN_STARTED)
			return 0;
		return pcinet_link_down(fn);
	case PCINET_W_LINK_UP:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		return pcinet_link_up(fn);
	case PCINET_W_PUSH_RULE:
		if (len != sizeof(struct pcinet_w_push_rule))
			return -EINVAL;
		return pcinet_push_rule(fn, buf);
	case PCINET_W_VIRTQ_DONE:
		if (len != sizeof(struct pcinet_w_virtq_done))
			return -EINVAL;
		return pcinet_virtq_done(fn, buf);
	case PCINET_W_CONNECT: {
		struct pcinet_w_connect *w = (void *)buf;	/* fn->wbuf: ours to scrub */
		int ret;

		if (len != sizeof(*w))
			return -EINVAL;
		ret = pcinet_link_connect(fn, w);
		/* The transform has its own copy: the key does not linger in the write buffer. */
		memzero_explicit(w->key, sizeof(w->key));
		return ret;
	}
	case PCINET_W_DETACH:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		if (fn->state == PN_DETACHED)
			return -EBUSY;
		pcinet_remove(fn);
		return 0;
	default:
		return -EINVAL;
	}
}

/* A record the endpoint sent on the kernel link: data-plane records only. Under lock. */
int pcinet_link_record(struct pcinet_fn *fn, const void *buf, size_t len)
{
	const struct pcinet_hdr *h = buf;

	switch (le16_to_cpu(h->type)) {
	case PCINET_W_SHADOW:
	case PCINET_W_WRITES_APPLIED:
	case PCINET_W_MMIO_READ_CPL:
	case PCINET_W_DMA_READ:
	case PCINET_W_DMA_WRITE:
	case PCINET_W_INTERRUPT:
	case PCINET_W_PUSH_RULE:
	case PCINET_W_VIRTQ_DONE:
		if (fn->state != PN_STARTED || fn->link_down)
			return -EBUSY;
		return pcinet_record(fn, buf, len);
	default:
		return -EPROTO;
	}
}

static ssize_t pcinet_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	struct pcinet_fn *fn = file->private_data;
	struct pcinet_hdr h;
	size_t done = 0;
	void *buf = fn->wbuf;
	int ret = 0;

	mutex_lock(&fn->lock);
	while (done < count) {
		size_t len;

		if (count - done < sizeof(h) || copy_from_user(&h, ubuf + done, sizeof(h))) {
			ret = count - done < sizeof(h) ? -EINVAL : -EFAULT;
			break;
		}
		len = le32_to_cpu(h.len);
		if (len < sizeof(h) || len % 8 || len > count - done || len > PCINET_MAX_RECORD + 8 ||
		    h.flags) {
			ret = -EINVAL;
			break;
		}
		if (copy_from_user(buf, ubuf + done, len)) {
			ret = -EFAULT;
			break;
		}
		ret = pcinet_record(fn, buf, len);
		if (ret)
			break;
		done += len;
	}
	mutex_unlock(&fn->lock);
	pcinet_link_reap(fn);
	/* Records before a bad one were applied: report them; the next write() gets the error. */
	return done ? done : ret;
}

/* What read() serves: control records first, then (unless the data plane is on a link) the rest. */
static bool pcinet_readable(struct pcinet_fn *fn)
{
	return !list_empty_careful(&fn->ctl) || (!READ_ONCE(fn->linked) && READ_ONCE(fn->queued) > 0);
}

/* The next record for read(), or NULL; qlock held. */
static struct list_head *pcinet_read_list(struct pcinet_fn *fn)
{
	if (!list_empty(&fn->ctl))
		return &fn->ctl;
	if (!fn->linked && !list_empty(&fn->queue))
		return &fn->queue;
	return NULL;
}

static ssize_t pcinet_read(struct file *file, char __user *ubuf, size_t count, loff_t *ppos)
{
	struct pcinet_fn *fn = file->private_data;
	struct list_head *from;
	struct pcinet_rec *r;
	size_t done = 0;
	int ret;

	for (;;) {
		spin_lock_irq(&fn->qlock);
		if (pcinet_read_list(fn))
			break;
		spin_unlock_irq(&fn->qlock);
		if (READ_ONCE(fn->state) == PN_DETACHED)
			return 0;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(fn->readq, pcinet_readable(fn) ||
					       READ_ONCE(fn->state) == PN_DETACHED);
		if (ret)
			return ret;
	}
	/* qlock held, a record waiting. Copy whole records; never sleep with the lock held. */
	while ((from = pcinet_read_list(fn))) {
		r = list_first_entry(from, struct pcinet_rec, node);
		if (r->len > count - done)
			break;
		list_del(&r->node);
		if (from == &fn->queue)
			fn->queued -= r->len;
		spin_unlock_irq(&fn->qlock);
		if (copy_to_user(ubuf + done, r->data, r->len)) {
			/* Put it back: nothing is lost because the reader's buffer was bad. */
			spin_lock_irq(&fn->qlock);
			list_add(&r->node, from);
			if (from == &fn->queue)
				fn->queued += r->len;
			spin_unlock_irq(&fn->qlock);
			return done ? done : -EFAULT;
		}
		done += r->len;
		kvfree(r);
		spin_lock_irq(&fn->qlock);
	}
	spin_unlock_irq(&fn->qlock);
	wake_up_interruptible(&fn->writeq);
	return done ? done : -EINVAL;	/* the buffer cannot hold the next record */
}

static __poll_t pcinet_poll(struct file *file, poll_table *wait)
{
	struct pcinet_fn *fn = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &fn->readq, wait);
	if (pcinet_readable(fn))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (READ_ONCE(fn->state) == PN_DETACHED)
		mask |= EPOLLHUP;
	return mask;
}

static int pcinet_open(struct inode *inode, struct file *file)
{
	struct pcinet_fn *fn;

	/* Whoever holds the file presents devices to in-tree drivers: the administrator's
	 * business, whatever the node's mode says.
	 */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	fn = kvzalloc(sizeof(*fn), GFP_KERNEL);
	if (!fn)
		return -ENOMEM;
	/* Every write() copies its records through this: allocated once, not per call. */
	fn->wbuf = kvmalloc(PCINET_MAX_RECORD + 8, GFP_KERNEL);
	if (!fn->wbuf) {
		kvfree(fn);
		return -ENOMEM;
	}
	mutex_init(&fn->lock);
	spin_lock_init(&fn->qlock);
	raw_spin_lock_init(&fn->cfg_lock);
	spin_lock_init(&fn->shadow_lock);
	spin_lock_init(&fn->reads_lock);
	spin_lock_init(&fn->msix_lock);
	spin_lock_init(&fn->push_lock);
	INIT_LIST_HEAD(&fn->queue);
	INIT_LIST_HEAD(&fn->ctl);
	INIT_LIST_HEAD(&fn->dead_links);
	INIT_LIST_HEAD(&fn->live);
	INIT_WORK(&fn->add_work, pcinet_add_work);
	INIT_WORK(&fn->link_down_work, pcinet_link_down_work);
	INIT_WORK(&fn->link_up_work, pcinet_link_up_work);
	init_waitqueue_head(&fn->readq);
	init_waitqueue_head(&fn->writeq);
	init_waitqueue_head(&fn->mmioq);
	fn->state = PN_NEW;
	file->private_data = fn;
	return stream_open(inode, file);
}

static int pcinet_release(struct inode *inode, struct file *file)
{
	struct pcinet_fn *fn = file->private_data;
	struct pcinet_rec *r, *tmp;
	int i;

	/* The kernel link's receive thread applies records under the lock too. */
	mutex_lock(&fn->lock);
	pcinet_remove(fn);
	mutex_unlock(&fn->lock);
	pcinet_link_reap(fn);
	list_for_each_entry_safe(r, tmp, &fn->queue, node)
		kvfree(r);
	list_for_each_entry_safe(r, tmp, &fn->ctl, node)
		kvfree(r);
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		vfree(fn->bars[i].shadow);
		vfree(fn->bars[i].reset);
	}
	pcinet_msix_free(fn);
	kvfree(fn->wbuf);
	kvfree(fn);
	return 0;
}

static const struct file_operations pcinet_fops = {
	.owner = THIS_MODULE,
	.open = pcinet_open,
	.release = pcinet_release,
	.read = pcinet_read,
	.write = pcinet_write,
	.poll = pcinet_poll,
	.llseek = no_llseek,
};

static struct miscdevice pcinet_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "pcinet",
	.fops = &pcinet_fops,
	.mode = 0600,
};

static int __init pcinet_init(void)
{
	BUILD_BUG_ON(sizeof(struct pcinet_w_attach) % 8);
	BUILD_BUG_ON(sizeof(struct pcinet_r_attached) % 8);
	int ret;

	BUILD_BUG_ON(sizeof(struct pcinet_w_mmio_read_cpl) % 8);
	/* The push records' sizes are part of the ABI (proto/kernel-abi.ts). */
	BUILD_BUG_ON(sizeof(struct pcinet_w_push_rule) != 64);
	BUILD_BUG_ON(sizeof(struct pcinet_r_push) != 24);
	BUILD_BUG_ON(sizeof(struct pcinet_r_push_drop) != 24);
	BUILD_BUG_ON(sizeof(struct pcinet_r_push_rule_set) != 16);
	BUILD_BUG_ON(sizeof(struct pcinet_w_connect) != 88);
	BUILD_BUG_ON(sizeof(struct pcinet_link_hello) != 32);
	BUILD_BUG_ON(sizeof(struct pcinet_r_link_closed) != 16);
	ret = pcinet_link_init();
	if (ret)
		return ret;
	ret = pcinet_mmio_init();
	if (ret)
		goto err_link;
	ret = bus_register_notifier(&pci_bus_type, &pcinet_bus_nb);
	if (ret)
		goto err_mmio;
	ret = misc_register(&pcinet_misc);
	if (ret)
		goto err_notifier;
	return 0;

err_notifier:
	bus_unregister_notifier(&pci_bus_type, &pcinet_bus_nb);
err_mmio:
	pcinet_mmio_exit();
err_link:
	pcinet_link_exit();
	return ret;
}

static void __exit pcinet_exit(void)
{
	misc_deregister(&pcinet_misc);
	bus_unregister_notifier(&pci_bus_type, &pcinet_bus_nb);
	pcinet_mmio_exit();
	pcinet_link_exit();
	ida_destroy(&pcinet_domains);
}

module_init(pcinet_init);
module_exit(pcinet_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pcinet: PCIe devices over the network");
MODULE_AUTHOR("pcinet developers");
/* The package version: dkms.conf and package.json say the same (test/packaging.test.ts). */
MODULE_VERSION("0.1.0");
