// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: MSI-X.
 *
 * The MSI-X table and PBA live here, not on the device: the driver's accesses to them (trapped
 * like any BAR access) are served from this copy, and a raise from the endpoint (W_INTERRUPT)
 * is delivered or left pending according to the vector's mask bit, the function mask and the
 * enable bit, as a PCIe function would. Unmasking a pending vector delivers it.
 *
 * Delivery does not go through the APIC: the function gets an MSI irq domain of its own, a
 * PCI-MSI domain like the x86 one as far as the PCI core and drivers can tell
 * (pci_alloc_irq_vectors() and the MSI-X table programming work unchanged), whose messages name
 * the Linux interrupt instead of a CPU vector. A raise then runs that interrupt's flow handler
 * from an irq_work on another CPU, in hard interrupt context, exactly once per raise: no vector
 * is consumed and two raises never collapse into one as two writes of the same vector into a
 * local APIC's IRR can. Raises are queued in order in a bounded ring; only one that finds it
 * empty sends an inter-processor interrupt. The raising write() waits when the ring is half
 * full, and a raise that still finds it full leaves its vector pending in the PBA, whence the
 * delivery work sends it once there is room.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/irq.h>
#include <linux/irqdomain.h>
#include <linux/moduleparam.h>
#include <linux/msi.h>
#include <linux/slab.h>

#include "internal.h"

/* What our MSI messages carry as address: a marker (the data is the interrupt's hwirq). */
#define PCINET_MSI_ADDRESS	0xfee0c0deu
#define PCINET_RING_WAIT	(PCINET_RING_SIZE / 2)
/* Handlers one run of the delivery work calls before it hands the rest to the next CPU: bounds
 * its time in hard interrupt context (NAPI's default budget, for want of a better measure).
 */
#define PCINET_IRQ_BUDGET	64

/* A test hook (test/e2e/kernel-msix.test.ts): without it a burst of raises does not fill the ring,
 * since the raising write() waits once it is half full. Root only; 0, the default: the whole ring.
 */
static unsigned int test_msix_ring;
module_param(test_msix_ring, uint, 0600);
MODULE_PARM_DESC(test_msix_ring,
		 "Test hook: the MSI-X raise ring holds this many raises (0: all of it)");

static u32 *pcinet_entry(struct pcinet_fn *fn, u32 v)
{
	return &fn->msix_entries[v * 4];
}

static u16 pcinet_msix_control(struct pcinet_fn *fn)
{
	return fn->config[fn->msix_cap + PCI_MSIX_FLAGS] |
	       fn->config[fn->msix_cap + PCI_MSIX_FLAGS + 1] << 8;
}

/* ---- the function's MSI irq domain ---- */

static void pcinet_msi_compose(struct irq_data *d, struct msi_msg *msg)
{
	msg->address_hi = 0;
	msg->address_lo = PCINET_MSI_ADDRESS;
	msg->data = irqd_to_hwirq(d);
}

static int pcinet_msi_set_affinity(struct irq_data *d, const struct cpumask *mask, bool force)
{
	/* Delivery runs wherever the raise is handled; any mask is fine. */
	irq_data_update_effective_affinity(d, mask);
	return IRQ_SET_MASK_OK;
}

static void pcinet_msi_ack(struct irq_data *d)
{
}

static struct irq_chip pcinet_msi_chip = {
	.name = "pcinet-MSI",
	.irq_ack = pcinet_msi_ack,
	.irq_compose_msi_msg = pcinet_msi_compose,
	.irq_set_affinity = pcinet_msi_set_affinity,
};

static int pcinet_msi_prepare(struct irq_domain *domain, struct device *dev, int nvec,
			      msi_alloc_info_t *arg)
{
	memset(arg, 0, sizeof(*arg));
	return 0;
}

static void pcinet_msi_set_desc(msi_alloc_info_t *arg, struct msi_desc *desc)
{
	arg->desc = desc;
	arg->hwirq = desc->msi_index;
}

static irq_hw_number_t pcinet_msi_get_hwirq(struct msi_domain_info *info, msi_alloc_info_t *arg)
{
	return arg->hwirq;
}

static struct msi_domain_ops pcinet_msi_ops = {
	.msi_prepare = pcinet_msi_prepare,
	.set_desc = pcinet_msi_set_desc,
	.get_hwirq = pcinet_msi_get_hwirq,
};

static struct msi_domain_info pcinet_msi_info = {
	.flags = MSI_FLAG_USE_DEF_DOM_OPS | MSI_FLAG_USE_DEF_CHIP_OPS | MSI_FLAG_PCI_MSIX,
	.ops = &pcinet_msi_ops,
	.chip = &pcinet_msi_chip,
	.handler = handle_edge_irq,
	.handler_name = "edge",
};

/* ---- delivery ---- */

/* Queues vector v for delivery. msix_lock held. False if the ring is full. */
static bool pcinet_ring_push(struct pcinet_fn *fn, u32 v)
{
	unsigned int size = READ_ONCE(test_msix_ring);

	if (!size || size > PCINET_RING_SIZE)
		size = PCINET_RING_SIZE;
	if (fn->ring_count >= size)
		return false;
	fn->ring[(fn->ring_head + fn->ring_count) % PCINET_RING_SIZE] = v;
	fn->ring_ns[(fn->ring_head + fn->ring_count) % PCINET_RING_SIZE] = ktime_get_ns();
	fn->ring_count++;
	return true;
}

/* True if vector v may send now. msix_lock held. */
static bool pcinet_may_send(struct pcinet_fn *fn, u32 v)
{
	u16 ctl = pcinet_msix_control(fn);

	return (ctl & PCI_MSIX_FLAGS_ENABLE) && !(ctl & PCI_MSIX_FLAGS_MASKALL) &&
	       !(pcinet_entry(fn, v)[3] & PCI_MSIX_ENTRY_CTRL_MASKBIT);
}

/*
 * Queues every pending vector that may now send. msix_lock held. What does not fit stays pending
 * with msix_overflow set, and the delivery work comes back for it once it has made room.
 */
static void pcinet_release_pending(struct pcinet_fn *fn)
{
	u32 v;

	fn->msix_overflow = false;
	for_each_set_bit(v, fn->msix_pending, fn->msix_vectors) {
		if (!pcinet_may_send(fn, v))
			continue;
		if (!pcinet_ring_push(fn, v)) {
			fn->msix_overflow = true;
			break;
		}
		clear_bit(v, fn->msix_pending);
	}
	if (fn->ring_count)
		irq_work_queue(&fn->irq_work);
}

/*
 * Hard interrupt context: runs the handlers of the queued raises, in order, at most
 * PCINET_IRQ_BUDGET of them; the rest go on at the CPU's next timer tick (irq_work_more is a lazy
 * irq_work), so that a device raising faster than its handlers run cannot keep a CPU in interrupt
 * context: the CPU's timer and other interrupts, softirqs and tasks get their turn in between. A
 * raise that found the ring full left its vector pending (pcinet_msix_raise()): once the ring is
 * empty the vectors that may send are queued again from the PBA, as a function sends a pending
 * message.
 */
static void pcinet_deliver(struct pcinet_fn *fn)
{
	unsigned int irq, budget = PCINET_IRQ_BUDGET;
	u32 v, *e;
	u64 raised;

	/* One CPU at a time, so a handler never finds its interrupt in progress elsewhere. */
	raw_spin_lock(&fn->deliver_lock);
	for (;;) {
		spin_lock(&fn->msix_lock);
		if (!fn->ring_count && fn->msix_overflow)
			pcinet_release_pending(fn);
		if (!fn->ring_count) {
			spin_unlock(&fn->msix_lock);
			break;
		}
		if (!budget--) {
			spin_unlock(&fn->msix_lock);
			irq_work_queue(&fn->irq_work_more);
			break;
		}
		v = fn->ring[fn->ring_head];
		raised = fn->ring_ns[fn->ring_head];
		fn->ring_head = (fn->ring_head + 1) % PCINET_RING_SIZE;
		fn->ring_count--;
		irq = 0;
		if (!pcinet_may_send(fn, v)) {
			/* Masked since it was raised: it waits in the PBA. */
			if (pcinet_msix_control(fn) & PCI_MSIX_FLAGS_ENABLE) {
				set_bit(v, fn->msix_pending);
				atomic64_inc(&fn->stats.interrupts_pending);
			} else {
				atomic64_inc(&fn->stats.interrupts_dropped);
			}
		} else {
			e = pcinet_entry(fn, v);
			if (e[0] == PCINET_MSI_ADDRESS && !e[1] && fn->msi_domain)
				irq = irq_find_mapping(fn->msi_domain, e[2]);
			if (!irq)
				atomic64_inc(&fn->stats.interrupts_dropped);
		}
		spin_unlock(&fn->msix_lock);
		if (irq) {
			pcinet_timing_add(&fn->stats.t_irq_ns, &fn->stats.t_irq_n, raised);
			generic_handle_irq(irq);
			atomic64_inc(&fn->stats.interrupts);
		}
	}
	raw_spin_unlock(&fn->deliver_lock);
	wake_up(&fn->ring_wait);
}

static void pcinet_irq_work(struct irq_work *work)
{
	pcinet_deliver(container_of(work, struct pcinet_fn, irq_work));
}

static void pcinet_irq_work_more(struct irq_work *work)
{
	pcinet_deliver(container_of(work, struct pcinet_fn, irq_work_more));
}

/*
 * Delivery runs on another CPU than the host-agent's write(): a driver's handler may wait (busy,
 * interrupts off) for the host-agent — a volatile read of an interrupt status register, a read
 * fence — and the host-agent writes records from its event loop, so a handler run on top of that
 * write() would wait for the very thread it interrupted until atomic_timeout_ms.
 */
static void pcinet_msix_kick_here(void *info)
{
	struct pcinet_fn *fn = info;

	irq_work_queue(&fn->irq_work);
}

static void pcinet_msix_kick(struct pcinet_fn *fn)
{
	int self = get_cpu();
	unsigned int other = cpumask_any_but(cpu_online_mask, self);

	/* Not waiting: the IPI queues the irq_work there; pcinet_msix_stop() flushes both. */
	if (other >= nr_cpu_ids || smp_call_function_single(other, pcinet_msix_kick_here, fn, 0))
		irq_work_queue(&fn->irq_work);
	put_cpu();
}

/* W_INTERRUPT: process context (write()). */
int pcinet_msix_raise(struct pcinet_fn *fn, u32 vector)
{
	unsigned long flags;
	bool queued, idle;

	if (READ_ONCE(fn->ring_count) >= PCINET_RING_WAIT) {
		atomic64_inc(&fn->stats.queue_waits);
		wait_event_interruptible_timeout(fn->ring_wait,
						 READ_ONCE(fn->ring_count) < PCINET_RING_WAIT, HZ);
	}
	spin_lock_irqsave(&fn->msix_lock, flags);
	/*
	 * Raises that find others queued ride with them: the delivery that takes those looks at the
	 * ring again (under this lock) before it stops, or was kicked and has not started yet.
	 */
	idle = !fn->ring_count;
	queued = pcinet_ring_push(fn, vector);
	if (!queued && (pcinet_msix_control(fn) & PCI_MSIX_FLAGS_ENABLE)) {
		/* The driver is not taking interrupts: what a function does then is set the PBA. The
		 * delivery work sends it from there once the ring has room (an unmasked vector has no
		 * unmask coming to release it).
		 */
		set_bit(vector, fn->msix_pending);
		fn->msix_overflow = true;
		atomic64_inc(&fn->stats.interrupts_pending);
	} else if (!queued) {
		atomic64_inc(&fn->stats.interrupts_dropped);
	}
	spin_unlock_irqrestore(&fn->msix_lock, flags);
	if (idle)
		pcinet_msix_kick(fn);
	return 0;
}

/* ---- the table, the PBA, the capability ---- */

bool pcinet_msix_owns(struct pcinet_fn *fn, u32 bar, u64 off, u32 size)
{
	if (!fn->msix_cap || bar != fn->msix_bar)
		return false;
	return (off >= fn->msix_table && off + size <= fn->msix_table + fn->msix_vectors * 16ull) ||
	       (off >= fn->msix_pba && off + size <= fn->msix_pba + BITS_TO_LONGS(fn->msix_vectors) * 8ull);
}

void pcinet_msix_read(struct pcinet_fn *fn, u64 off, void *val, u32 size)
{
	unsigned long flags;

	spin_lock_irqsave(&fn->msix_lock, flags);
	if (off >= fn->msix_table && off + size <= fn->msix_table + fn->msix_vectors * 16ull)
		memcpy(val, (u8 *)fn->msix_entries + (off - fn->msix_table), size);
	else
		memcpy(val, (u8 *)fn->msix_pending + (off - fn->msix_pba), size);
	spin_unlock_irqrestore(&fn->msix_lock, flags);
}

void pcinet_msix_write(struct pcinet_fn *fn, u64 off, const void *val, u32 size)
{
	unsigned long flags;

	if (!(off >= fn->msix_table && off + size <= fn->msix_table + fn->msix_vectors * 16ull))
		return;		/* the PBA is read-only */
	spin_lock_irqsave(&fn->msix_lock, flags);
	memcpy((u8 *)fn->msix_entries + (off - fn->msix_table), val, size);
	/* Only the mask bit of vector control is writable. */
	fn->msix_entries[(off - fn->msix_table) / 16 * 4 + 3] &= PCI_MSIX_ENTRY_CTRL_MASKBIT;
	if (size > 4 && (off - fn->msix_table) % 16 + size > 16)
		fn->msix_entries[(off - fn->msix_table) / 16 * 4 + 7] &= PCI_MSIX_ENTRY_CTRL_MASKBIT;
	pcinet_release_pending(fn);
	spin_unlock_irqrestore(&fn->msix_lock, flags);
}

/* A config write (pci_lock held) may have touched the enable or function mask bit. */
void pcinet_msix_config_written(struct pcinet_fn *fn, int where, int size)
{
	unsigned long flags;

	if (!fn->msix_cap || where + size <= fn->msix_cap + PCI_MSIX_FLAGS ||
	    where > fn->msix_cap + PCI_MSIX_FLAGS + 1)
		return;
	spin_lock_irqsave(&fn->msix_lock, flags);
	pcinet_release_pending(fn);
	spin_unlock_irqrestore(&fn->msix_lock, flags);
}

/* Function-level reset: every vector masked, nothing pending. pci_lock held. */
void pcinet_msix_reset(struct pcinet_fn *fn)
{
	unsigned long flags;
	u32 v;

	if (!fn->msix_cap)
		return;
	spin_lock_irqsave(&fn->msix_lock, flags);
	memset(fn->msix_entries, 0, fn->msix_vectors * 16);
	for (v = 0; v < fn->msix_vectors; v++)
		pcinet_entry(fn, v)[3] = PCI_MSIX_ENTRY_CTRL_MASKBIT;
	bitmap_zero(fn->msix_pending, fn->msix_vectors);
	fn->msix_overflow = false;
	fn->ring_count = 0;
	spin_unlock_irqrestore(&fn->msix_lock, flags);
}

/* W_ATTACH: finds the capability, checks it against msix_vectors and the BARs. */
int pcinet_msix_attach(struct pcinet_fn *fn)
{
	u16 cap = pcinet_find_cap(fn, PCI_CAP_ID_MSIX);
	u32 table, pba, n;

	init_irq_work(&fn->irq_work, pcinet_irq_work);
	fn->irq_work_more = IRQ_WORK_INIT_LAZY(pcinet_irq_work_more);
	init_waitqueue_head(&fn->ring_wait);
	raw_spin_lock_init(&fn->deliver_lock);
	if (!cap) {
		if (fn->msix_vectors)
			pr_warn_ratelimited("attach: msix_vectors is %u but there is no MSI-X capability\n",
					    fn->msix_vectors);
		return fn->msix_vectors ? -EINVAL : 0;
	}
	if (cap + PCI_CAP_MSIX_SIZEOF > PCI_CFG_SPACE_SIZE)
		return -EINVAL;
	n = ((fn->config[cap + PCI_MSIX_FLAGS] | fn->config[cap + PCI_MSIX_FLAGS + 1] << 8) &
	     PCI_MSIX_FLAGS_QSIZE) + 1;
	table = le32_to_cpup((__le32 *)&fn->config[cap + PCI_MSIX_TABLE]);
	pba = le32_to_cpup((__le32 *)&fn->config[cap + PCI_MSIX_PBA]);
	if (n != fn->msix_vectors) {
		pr_warn_ratelimited("attach: msix_vectors is %u but the MSI-X capability says %u\n",
				    fn->msix_vectors, n);
		return -EINVAL;
	}
	if ((table & PCI_MSIX_TABLE_BIR) != (pba & PCI_MSIX_PBA_BIR)) {
		pr_warn_ratelimited("attach: MSI-X table and PBA in different BARs are not supported\n");
		return -EOPNOTSUPP;
	}
	fn->msix_bar = table & PCI_MSIX_TABLE_BIR;
	fn->msix_table = table & PCI_MSIX_TABLE_OFFSET;
	fn->msix_pba = pba & PCI_MSIX_PBA_OFFSET;
	if (fn->msix_bar >= PCINET_NUM_BARS || !fn->bars[fn->msix_bar].size ||
	    fn->msix_table + n * 16ull > fn->bars[fn->msix_bar].size ||
	    fn->msix_pba + BITS_TO_LONGS(n) * 8ull > fn->bars[fn->msix_bar].size ||
	    (fn->msix_table < fn->msix_pba + BITS_TO_LONGS(n) * 8ull &&
	     fn->msix_pba < fn->msix_table + n * 16ull)) {
		pr_warn_ratelimited("attach: the MSI-X table or PBA does not fit its BAR\n");
		return -EINVAL;
	}
	fn->msix_entries = kcalloc(n, 16, GFP_KERNEL);
	fn->msix_pending = bitmap_zalloc(n, GFP_KERNEL);
	fn->ring = kcalloc(PCINET_RING_SIZE, sizeof(*fn->ring), GFP_KERNEL);
	fn->ring_ns = kcalloc(PCINET_RING_SIZE, sizeof(*fn->ring_ns), GFP_KERNEL);
	if (!fn->msix_entries || !fn->msix_pending || !fn->ring || !fn->ring_ns) {
		pcinet_msix_free(fn);
		return -ENOMEM;
	}
	fn->msix_cap = cap;
	pcinet_msix_reset(fn);
	return 0;
}

/* W_START, before the scan: the bus (and so the function) gets our MSI domain. */
int pcinet_msix_start(struct pcinet_fn *fn)
{
	if (!fn->msix_cap)
		return 0;
	fn->msi_fwnode = irq_domain_alloc_named_id_fwnode("pcinet-msi", fn->domain);
	if (!fn->msi_fwnode)
		return -ENOMEM;
	fn->msi_domain = pci_msi_create_irq_domain(fn->msi_fwnode, &pcinet_msi_info, NULL);
	if (!fn->msi_domain) {
		irq_domain_free_fwnode(fn->msi_fwnode);
		fn->msi_fwnode = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* After the function left the bus (its interrupts are freed): no more deliveries. */
void pcinet_msix_stop(struct pcinet_fn *fn)
{
	unsigned long flags;

	spin_lock_irqsave(&fn->msix_lock, flags);
	fn->ring_count = 0;
	fn->msix_overflow = false;
	spin_unlock_irqrestore(&fn->msix_lock, flags);
	/* Every CPU has run its queued IPIs (a kick may still name fn), then the work they queued. */
	kick_all_cpus_sync();
	irq_work_sync(&fn->irq_work);
	irq_work_sync(&fn->irq_work_more);
	if (fn->msi_domain) {
		irq_domain_remove(fn->msi_domain);
		irq_domain_free_fwnode(fn->msi_fwnode);
		fn->msi_domain = NULL;
		fn->msi_fwnode = NULL;
	}
}

void pcinet_msix_free(struct pcinet_fn *fn)
{
	kfree(fn->msix_entries);
	bitmap_free(fn->msix_pending);
	kfree(fn->ring);
	kfree(fn->ring_ns);
	fn->msix_entries = NULL;
	fn->msix_pending = NULL;
	fn->ring = NULL;
	fn->ring_ns = NULL;
	fn->msix_cap = 0;
}
