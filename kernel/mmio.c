// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: trapping the BAR mappings and serving MMIO.
 *
 * The BARs sit in a physical window no memory or device answers. When a driver maps part of a
 * BAR (ioremap and friends all end in mmiotrace_ioremap(), which a kprobe watches), the mapping's
 * page table entries are cleared, so every access faults. A fault on a kernel address that
 * nothing else claims (not spurious, not a kprobe's own) reaches bad_area_nosemaphore(), the
 * start of the kernel's "this access is wrong" path; only such faults meet our second kprobe
 * there, so ordinary faults (user pages, demand paging) cost nothing. The kprobe does no more
 * than recognise a fault on one of our mappings and make the call go to pcinet_fault() instead,
 * which runs as an ordinary function in the fault handler, outside the kprobe: it emulates the
 * instruction (emulate.c) against the device and returns to the fault path's caller. A fault on
 * a BAR page taken while pcinet_fault() already runs on that CPU (code it calls, or an NMI, made
 * the access) is not served: it fails like a PCIe completion timeout, all-ones for a read and
 * dropped for a write, counted and logged once, since the outer access may hold the locks the
 * inner one needs. A fault inside some other kprobe's handler finds our kprobe busy and takes
 * the kernel's own path (an exception fixup or an oops, as without pcinet). iounmap() calls
 * mmiotrace_iounmap() first: a third kprobe restores the entries before the area is freed.
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

#include <linux/io.h>
#include <linux/kprobes.h>
#include <linux/ktime.h>
#include <linux/moduleparam.h>
#include <linux/percpu.h>
#include <linux/rculist.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/srcu.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <asm/pgtable.h>
#include <asm/tlbflush.h>

#include "emulate.h"
#include "internal.h"

static unsigned int read_timeout_ms = 5000;
module_param(read_timeout_ms, uint, 0644);
MODULE_PARM_DESC(read_timeout_ms,
		 "How long a driver's MMIO read waits (asleep) for the device before it reads all-ones (ms)");
static unsigned int atomic_timeout_ms = 1000;
module_param(atomic_timeout_ms, uint, 0644);
MODULE_PARM_DESC(atomic_timeout_ms,
		 "The same for reads in atomic context, which wait busy with interrupts off (ms)");
/* A test hook (test/e2e/kernel-fault.test.ts): there is no other way to make code inside the
 * fault handler touch a BAR. Root only; 0, the default, costs one READ_ONCE per BAR access.
 */
static unsigned int test_nested_fault;
module_param(test_nested_fault, uint, 0600);
MODULE_PARM_DESC(test_nested_fault,
		 "Test hook: the next N BAR accesses first read their BAR page again from inside the fault handler (a nested fault, answered all-ones)");

/* How an access may wait for the device. */
enum pcinet_wait {
	PN_SPIN,	/* atomic context: busy-wait, bounded */
	PN_NOWAIT,	/* first try in the fault handler: -EAGAIN instead of waiting */
	PN_SLEEP,	/* the faulting task, back from defer.S: sleep, bounded */
};

/* One trapped mapping of (part of) a BAR. */
struct pcinet_map {
	struct list_head node;
	struct pcinet_fn __rcu *fn;	/* NULL once the function is gone */
	unsigned long virt;		/* page-aligned start */
	unsigned long len;		/* page multiple */
	u64 phys;			/* physical address of virt */
	u32 bar;
	u64 bar_off;			/* BAR offset of virt */
	pteval_t pte_flags;		/* flags of the 4 KiB entries we cleared */
	bool calibrate;			/* the load-time probe of the fault path */
	struct rcu_head rcu;
};

/* A fault handed to the faulting task (defer.S): where it was, what it touched. */
struct pcinet_deferred {
	struct task_struct *task;	/* NULL: free */
	unsigned long ip;
	unsigned long addr;
};

static LIST_HEAD(pcinet_live);		/* started functions (RCU) */
static LIST_HEAD(pcinet_maps);		/* trapped mappings (RCU) */
static DEFINE_SPINLOCK(pcinet_lists_lock);
/* Deferred accesses and the maps and functions they use are protected by this SRCU. */
DEFINE_STATIC_SRCU(pcinet_srcu);
static DEFINE_SPINLOCK(pcinet_deferred_lock);
static struct pcinet_deferred pcinet_deferred[64];
/* preempt_count() in pcinet_fault() when the faulting context was preemptible; -1: unknown. */
static int pcinet_fault_preempt = -1;
/* pcinet_fault() is running on this CPU (interrupts are off there: no other task can see it). */
static DEFINE_PER_CPU(unsigned int, pcinet_fault_depth);
/* Nested faults on mappings whose function is gone (no counters left to count them in). */
static atomic64_t pcinet_nested_faults;


/* ---- page table entries of trapped mappings ---- */

static void pcinet_flush_tlb(void *unused)
{
	__flush_tlb_all();
}

/*
 * ioremap() maps the 2 MiB-aligned stretches of a BAR of 2 MiB or more with 2 MiB entries. A trap
 * needs 4 KiB ones: an emulation failure gives back one page, and lookup_address() must find each
 * entry again to put it back (a cleared 2 MiB entry is "none", which it does not return). So the
 * 2 MiB entry is replaced by a table of 512 entries mapping the same frames with the same
 * attributes (the PAT bit moves, as in the kernel's own large-page split). The mapping is the
 * caller's alone until ioremap() returns, and every TLB is flushed after. After iounmap() the
 * table stays in the kernel's page tables like that of any 4 KiB mapping; a later huge mapping
 * at that address frees it (pmd_free_pte_page()).
 */
static bool pcinet_split_pmd(pmd_t *pmd)
{
	pgprot_t prot = pgprot_large_2_4k(__pgprot(pmd_flags(*pmd)));
	unsigned long pfn = pmd_pfn(*pmd);
	pte_t *ptes;
	int i;

	ptes = (pte_t *)get_zeroed_page(GFP_ATOMIC | __GFP_NOWARN);
	if (!ptes)
		return false;
	for (i = 0; i < PTRS_PER_PTE; i++)
		set_pte(&ptes[i], pfn_pte(pfn + i, prot));
	set_pmd(pmd, __pmd(__pa(ptes) | _KERNPG_TABLE));
	return true;
}

/* Clears the entries of [m->virt, m->virt + m->len). Returns false if a level is unexpected. */
static bool pcinet_map_protect(struct pcinet_map *m)
{
	unsigned long addr = m->virt, end = m->virt + m->len;
	unsigned int level;
	pte_t *pte;

	while (addr < end) {
		pte = lookup_address(addr, &level);
		if (pte && level == PG_LEVEL_2M) {
			if (!pmd_large(*(pmd_t *)pte) || !pcinet_split_pmd((pmd_t *)pte))
				return false;
			pte = lookup_address(addr, &level);
		}
		if (!pte || level != PG_LEVEL_4K || !pte_present(*pte))
			return false;
		m->pte_flags = pte_flags(*pte);
		pte_clear(&init_mm, addr, pte);
		addr += PAGE_SIZE;
	}
	return true;
}

/* Puts back the entries of [from, to) of a mapping (those that were cleared). */
static void pcinet_map_unprotect(struct pcinet_map *m, unsigned long from, unsigned long to)
{
	unsigned long addr;
	unsigned int level;
	pte_t *pte;

	for (addr = from; addr < to; addr += PAGE_SIZE) {
		pte = lookup_address(addr, &level);
		if (pte && level == PG_LEVEL_4K && pte_none(*pte))
			set_pte(pte, __pte(((m->phys + (addr - m->virt)) & PTE_PFN_MASK) |
					   m->pte_flags));
	}
}

/* ---- serving an access ---- */

static bool pcinet_fn_live(struct pcinet_fn *fn)
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
static bool pcinet_standin_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size)
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

static bool pcinet_standin_write(struct pcinet_fn *fn, u32 bar, u64 off, const void *val,
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
static void pcinet_gone_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size)
{
	if (pcinet_msix_owns(fn, bar, off, size))
		pcinet_msix_read(fn, off, val, size);
	else if (!fn->bars[bar].reset || pcinet_range_at(fn, bar, off, size, PCINET_RANGE_VOLATILE))
		memset(val, 0xff, size);
	else
		memcpy(val, fn->bars[bar].reset + off, size);
}

static int pcinet_serve_read(struct pcinet_fn *fn, u32 bar, u64 off, void *val, u32 size,
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

static int pcinet_serve_write(struct pcinet_fn *fn, u32 bar, u64 off, const void *val, u32 size,
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

/* Translates a faulting address to its function and BAR offset; false if it is outside. */
static struct pcinet_fn *pcinet_map_target(struct pcinet_map *m, unsigned long addr, u32 size,
					   u64 *off)
{
	/* Under RCU in the fault handler, under pcinet_srcu in a deferred access. */
	struct pcinet_fn *fn = rcu_dereference_raw(m->fn);

	if (!fn)
		return NULL;
	*off = m->bar_off + (addr - m->virt);
	if (*off + size > fn->bars[m->bar].size)
		return NULL;
	return fn;
}

static struct pcinet_map *pcinet_map_find(unsigned long addr);

/*
 * The mapping an access of the emulated instruction is in: the faulting one (ctx), or for the
 * other operand of a string move between two trapped mappings, the one holding it (looked up
 * under RCU; freed only after an SRCU grace period too, so a deferred access, which holds
 * pcinet_srcu, may keep using it).
 */
static struct pcinet_map *pcinet_op_map(void *ctx, unsigned long addr)
{
	struct pcinet_map *m = ctx;

	if (addr - m->virt < m->len)
		return m;
	rcu_read_lock();
	m = pcinet_map_find(addr);
	rcu_read_unlock();
	return m;
}

static bool pcinet_op_mapped(void *ctx, unsigned long addr)
{
	return pcinet_op_map(ctx, addr);
}

static int pcinet_op_read(void *ctx, unsigned long addr, void *val, unsigned int size,
			  enum pcinet_wait how)
{
	struct pcinet_map *m = pcinet_op_map(ctx, addr);
	struct pcinet_fn *fn;
	u64 off;

	if (!m) {
		memset(val, 0xff, size);	/* unmapped meanwhile: nothing answers */
		return 0;
	}

	fn = pcinet_map_target(m, addr, size, &off);
	if (fn && READ_ONCE(fn->standin) && pcinet_standin_read(fn, m->bar, off, val, size))
		return 0;
	if (fn && READ_ONCE(fn->state) != PN_STARTED) {
		pcinet_gone_read(fn, m->bar, off, val, size);
		return 0;
	}
	if (!fn || !pcinet_fn_live(fn)) {
		memset(val, 0xff, size);	/* master abort */
		return 0;
	}
	return pcinet_serve_read(fn, m->bar, off, val, size, how);
}

static int pcinet_op_write(void *ctx, unsigned long addr, const void *val, unsigned int size,
			   enum pcinet_wait how)
{
	struct pcinet_map *m = pcinet_op_map(ctx, addr);
	struct pcinet_fn *fn;
	u64 off;

	if (!m)
		return 0;
	fn = pcinet_map_target(m, addr, size, &off);
	if (fn && READ_ONCE(fn->standin) && pcinet_standin_write(fn, m->bar, off, val, size))
		return 0;
	if (fn && pcinet_fn_live(fn))
		return pcinet_serve_write(fn, m->bar, off, val, size, how);
	return 0;
}

#define PCINET_OPS(name, how)								\
static int pcinet_##name##_read(void *ctx, unsigned long addr, void *val,		\
				unsigned int size)					\
{											\
	return pcinet_op_read(ctx, addr, val, size, how);				\
}											\
static int pcinet_##name##_write(void *ctx, unsigned long addr, const void *val,	\
				 unsigned int size)					\
{											\
	return pcinet_op_write(ctx, addr, val, size, how);				\
}											\
static const struct pcinet_mmio_ops pcinet_##name##_ops = {				\
	.read = pcinet_##name##_read,							\
	.write = pcinet_##name##_write,							\
	.mapped = pcinet_op_mapped,							\
}

PCINET_OPS(spin, PN_SPIN);
PCINET_OPS(nowait, PN_NOWAIT);
PCINET_OPS(sleep, PN_SLEEP);

/* ---- the kprobes ---- */

static struct pcinet_map *pcinet_map_find(unsigned long addr)
{
	struct pcinet_map *m;

	list_for_each_entry_rcu(m, &pcinet_maps, node)
		if (addr - m->virt < m->len)
			return m;
	return NULL;
}

/* Instruction emulation failed: let it run against the (unbacked) window. The page stays
 * unprotected and the device no longer sees it, but the kernel survives.
 */
static void pcinet_emulation_failed(struct pcinet_map *m, struct pt_regs *fregs,
				    unsigned long addr, int ret)
{
	struct pcinet_fn *fn = rcu_dereference_check(m->fn, 1);

	if (fn)
		atomic64_inc(&fn->stats.emulate_failures);
	pr_err_ratelimited("cannot emulate the instruction at %pS accessing 0x%lx (%d): that BAR page is no longer trapped\n",
			   (void *)fregs->ip, addr, ret);
	pcinet_map_unprotect(m, addr & PAGE_MASK, (addr & PAGE_MASK) + PAGE_SIZE);
}

/* May the faulting context (we run in the fault handler, interrupts off) sleep? */
static bool pcinet_may_sleep(struct pt_regs *fregs)
{
	return pcinet_fault_preempt >= 0 && preempt_count() == pcinet_fault_preempt &&
	       (fregs->flags & X86_EFLAGS_IF) && !pagefault_disabled() &&
	       !rcu_preempt_depth() && task_is_running(current) && !(current->flags & PF_EXITING);
}

/* Hands the access to the faulting task: the fault returns into defer.S. */
static bool pcinet_defer(struct pt_regs *fregs, unsigned long addr)
{
	struct pcinet_deferred *d = NULL;
	unsigned long flags;
	unsigned int i;

	spin_lock_irqsave(&pcinet_deferred_lock, flags);
	for (i = 0; i < ARRAY_SIZE(pcinet_deferred); i++) {
		if (!pcinet_deferred[i].task) {
			d = &pcinet_deferred[i];
			d->task = current;
			d->ip = fregs->ip;
			d->addr = addr;
			break;
		}
	}
	spin_unlock_irqrestore(&pcinet_deferred_lock, flags);
	if (!d)
		return false;
	fregs->ip = (unsigned long)pcinet_defer_tramp;
	return true;
}

/* Called by defer.S in the faulting task, which may sleep: emulates the access on regs. */
void pcinet_deferred_access(struct pt_regs *regs)
{
	struct pcinet_map *m;
	unsigned long flags, addr = 0;
	unsigned int i;
	int idx, ret;

	spin_lock_irqsave(&pcinet_deferred_lock, flags);
	for (i = 0; i < ARRAY_SIZE(pcinet_deferred); i++) {
		if (pcinet_deferred[i].task == current) {
			regs->ip = pcinet_deferred[i].ip;
			addr = pcinet_deferred[i].addr;
			pcinet_deferred[i].task = NULL;
			break;
		}
	}
	spin_unlock_irqrestore(&pcinet_deferred_lock, flags);
	/* defer.S is only ever entered through pcinet_defer() for this task. */
	BUG_ON(i == ARRAY_SIZE(pcinet_deferred));
	regs->cs = __KERNEL_CS;
	regs->ss = __KERNEL_DS;

	idx = srcu_read_lock(&pcinet_srcu);
	rcu_read_lock();
	m = pcinet_map_find(addr);
	rcu_read_unlock();
	/* Unmapped meanwhile: the instruction runs again and faults like any other access. */
	if (m) {
		ret = pcinet_emulate(regs, addr, &pcinet_sleep_ops, m);
		if (ret)
			pcinet_emulation_failed(m, regs, addr, ret);
	}
	srcu_read_unlock(&pcinet_srcu, idx);
}

/* A nested access is failed, never served: what it would wait for may be what we hold. */
static int pcinet_nested_read(void *ctx, unsigned long addr, void *val, unsigned int size)
{
	memset(val, 0xff, size);
	return 0;
}

static int pcinet_nested_write(void *ctx, unsigned long addr, const void *val, unsigned int size)
{
	return 0;
}

static const struct pcinet_mmio_ops pcinet_nested_ops = {
	.read = pcinet_nested_read,
	.write = pcinet_nested_write,
};

/* A BAR access faulted while pcinet_fault() was already running on this CPU. */
static void pcinet_fault_nested(struct pcinet_map *m, struct pt_regs *fregs, unsigned long addr)
{
	struct pcinet_fn *fn = rcu_dereference_raw(m->fn);
	int ret;

	atomic64_inc(fn ? &fn->stats.nested_faults : &pcinet_nested_faults);
	pr_warn_once("a BAR access at %pS (0x%lx) faulted inside the MMIO fault handler: failed like a completion timeout (reads all-ones, writes dropped)\n",
		     (void *)fregs->ip, addr);
	ret = pcinet_emulate(fregs, addr, &pcinet_nested_ops, m);
	if (ret)
		pcinet_emulation_failed(m, fregs, addr, ret);
}

/* The test hook: reads the faulting BAR page again, from inside the fault handler. */
static void pcinet_test_nested(unsigned long addr)
{
	unsigned int n = READ_ONCE(test_nested_fault);
	u32 v;

	if (!n || cmpxchg(&test_nested_fault, n, n - 1) != n)
		return;
	v = readl((void __iomem *)(addr & ~3ul));
	pr_info("test hook: a read of BAR page 0x%lx inside the fault handler read 0x%08x\n",
		addr & PAGE_MASK, v);
}

/*
 * Serves a fault on one of our mappings, in place of bad_area_nosemaphore(regs, error_code,
 * address), to whose caller it returns: the fault is then handled and the faulting context
 * resumes at fregs->ip (after the instruction, or in defer.S). Reached only from our kprobe.
 */
static void pcinet_fault(struct pt_regs *fregs, unsigned long error_code, unsigned long addr)
{
	struct pcinet_fn *fn;
	bool may_sleep;
	struct pcinet_map *m;
	u64 start;
	int ret;

	may_sleep = pcinet_may_sleep(fregs);
	rcu_read_lock();
	m = pcinet_map_find(addr);
	/* Unmapped since the kprobe saw it: the instruction runs again and faults like any other
	 * access (or finds its entries back).
	 */
	if (!m || fregs->ip - m->virt < m->len) {
		rcu_read_unlock();
		return;
	}
	if (__this_cpu_read(pcinet_fault_depth)) {
		pcinet_fault_nested(m, fregs, addr);
		rcu_read_unlock();
		return;
	}
	__this_cpu_inc(pcinet_fault_depth);
	if (unlikely(READ_ONCE(test_nested_fault)) && !m->calibrate)
		pcinet_test_nested(addr);
	/* Ours: only now the clock. */
	start = ktime_get_ns();
	if (m->calibrate) {
		WRITE_ONCE(pcinet_fault_preempt, preempt_count());
		ret = pcinet_emulate(fregs, addr, &pcinet_spin_ops, m);
	} else if (may_sleep) {
		unsigned long cx = fregs->cx, si = fregs->si, di = fregs->di;

		ret = pcinet_emulate(fregs, addr, &pcinet_nowait_ops, m);
		if (ret == -EAGAIN && (fregs->cx != cx || fregs->si != si || fregs->di != di))
			ret = 0;	/* a string move stopped part way: running it again goes on */
		else if (ret == -EAGAIN && pcinet_defer(fregs, addr))
			ret = 0;
		else if (ret == -EAGAIN)
			ret = pcinet_emulate(fregs, addr, &pcinet_spin_ops, m);
	} else {
		ret = pcinet_emulate(fregs, addr, &pcinet_spin_ops, m);
	}
	if (ret)
		pcinet_emulation_failed(m, fregs, addr, ret);
	fn = rcu_dereference_raw(m->fn);
	if (fn && !m->calibrate)
		pcinet_timing_add(&fn->stats.t_mmio_ns, &fn->stats.t_mmio_n, start);
	__this_cpu_dec(pcinet_fault_depth);
	rcu_read_unlock();
}
NOKPROBE_SYMBOL(pcinet_fault);

/*
 * bad_area_nosemaphore(struct pt_regs *regs, unsigned long error_code, unsigned long address),
 * at entry. Only recognises our faults: serving them here, inside the kprobe, would make a
 * fault nested in the serving a kprobe re-entry, which the kprobe machinery skips. The call
 * goes on in pcinet_fault() with the same arguments and return address.
 */
static int pcinet_bad_area_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct pt_regs *fregs = (struct pt_regs *)regs->di;
	unsigned long addr = regs->dx;
	struct pcinet_map *m;
	bool ours;

	if (user_mode(fregs))
		return 0;
	rcu_read_lock();
	m = pcinet_map_find(addr);
	/* An instruction fetch from a BAR is a bug like any other: let the fault path oops. */
	ours = m && fregs->ip - m->virt >= m->len;
	rcu_read_unlock();
	if (!ours)
		return 0;
	regs->ip = (unsigned long)pcinet_fault;
	return 1;
}

/*
 * Learns preempt_count() in pcinet_fault() for a fault taken where sleeping is fine (module load
 * is such a place), and checks that the fault path reaches us at all.
 */
static int pcinet_calibrate(void)
{
	struct pcinet_map *m;
	unsigned long flags;
	void *page;
	u32 v;

	page = vmalloc(PAGE_SIZE);
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!page || !m) {
		vfree(page);
		kfree(m);
		return -ENOMEM;
	}
	m->virt = (unsigned long)page;
	m->len = PAGE_SIZE;
	m->phys = page_to_phys(vmalloc_to_page(page));
	m->calibrate = true;
	if (!pcinet_map_protect(m)) {
		vfree(page);
		kfree(m);
		return -EFAULT;
	}
	on_each_cpu(pcinet_flush_tlb, NULL, 1);
	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_add_rcu(&m->node, &pcinet_maps);
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);

	v = READ_ONCE(*(u32 *)page);	/* faults; answered all-ones */

	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_del_rcu(&m->node);
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);
	pcinet_map_unprotect(m, m->virt, m->virt + m->len);
	synchronize_rcu();
	kfree(m);
	vfree(page);
	if (v != ~0u || pcinet_fault_preempt < 0) {
		pr_err("the MMIO fault path did not work at load time\n");
		return -EIO;
	}
	return 0;
}

/* mmiotrace_ioremap(resource_size_t offset, unsigned long size, void __iomem *addr), at entry:
 * the mapping exists and ioremap has not returned yet.
 */
static int pcinet_ioremap_pre(struct kprobe *p, struct pt_regs *regs)
{
	u64 phys = regs->di & PAGE_MASK;
	unsigned long virt = regs->dx & PAGE_MASK;
	unsigned long len = PAGE_ALIGN(regs->dx + regs->si) - virt;
	struct pcinet_map *m = NULL;
	struct pcinet_fn *fn;
	unsigned long flags;
	int i;

	rcu_read_lock();
	list_for_each_entry_rcu(fn, &pcinet_live, live) {
		for (i = 0; i < PCINET_NUM_BARS; i++) {
			struct pcinet_bar *b = &fn->bars[i];

			if (!b->size || phys - b->addr >= b->size)
				continue;
			m = kzalloc(sizeof(*m), GFP_ATOMIC);
			if (!m)
				break;
			RCU_INIT_POINTER(m->fn, fn);
			m->virt = virt;
			m->len = min_t(u64, len, b->addr + b->size - phys);
			m->phys = phys;
			m->bar = i;
			m->bar_off = phys - b->addr;
			break;
		}
		if (i < PCINET_NUM_BARS)
			break;
	}
	if (m && !pcinet_map_protect(m)) {
		pcinet_map_unprotect(m, m->virt, m->virt + m->len);
		pr_err("%04x:00:00.0: cannot trap the mapping of BAR %u +%#llx: the driver's accesses will not reach the device\n",
		       fn->domain, m->bar, m->bar_off);
		kfree(m);
		m = NULL;
	} else if (!m && i < PCINET_NUM_BARS) {
		pr_err("out of memory trapping a BAR mapping\n");
	}
	rcu_read_unlock();
	if (!m)
		return 0;
	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_add_rcu(&m->node, &pcinet_maps);
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);
	/* Nobody has used the mapping yet, but a CPU may have loaded its entries speculatively. */
	on_each_cpu(pcinet_flush_tlb, NULL, 1);
	return 0;
}

static void pcinet_map_free_srcu(struct rcu_head *head)
{
	struct pcinet_map *m = container_of(head, struct pcinet_map, rcu);

	/* Deferred accesses are done with it; now the fault handler's RCU readers. */
	kfree_rcu(m, rcu);
}

static void pcinet_map_free(struct pcinet_map *m)
{
	call_srcu(&pcinet_srcu, &m->rcu, pcinet_map_free_srcu);
}

/* mmiotrace_iounmap(volatile void __iomem *addr), at entry: the mapping still exists. */
static int pcinet_iounmap_pre(struct kprobe *p, struct pt_regs *regs)
{
	struct pcinet_map *m;
	unsigned long flags;

	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_for_each_entry(m, &pcinet_maps, node) {
		if (regs->di - m->virt < m->len) {
			list_del_rcu(&m->node);
			pcinet_map_unprotect(m, m->virt, m->virt + m->len);
			pcinet_map_free(m);
			break;
		}
	}
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);
	return 0;
}

static struct kprobe pcinet_kp_fault = {
	.symbol_name = "bad_area_nosemaphore",
	.pre_handler = pcinet_bad_area_pre,
};

static struct kprobe pcinet_kp_ioremap = {
	.symbol_name = "mmiotrace_ioremap",
	.pre_handler = pcinet_ioremap_pre,
};

static struct kprobe pcinet_kp_iounmap = {
	.symbol_name = "mmiotrace_iounmap",
	.pre_handler = pcinet_iounmap_pre,
};

static struct kprobe *pcinet_kprobes[] = {
	&pcinet_kp_fault, &pcinet_kp_ioremap, &pcinet_kp_iounmap,
};

void pcinet_mmio_start(struct pcinet_fn *fn)
{
	unsigned long flags;

	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_add_rcu(&fn->live, &pcinet_live);
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);
}

/* The function is gone: its mappings (drivers should have unmapped them) read all-ones. */
void pcinet_mmio_stop(struct pcinet_fn *fn)
{
	struct pcinet_map *m;
	unsigned long flags;
	int left = 0;

	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_del_rcu(&fn->live);
	list_for_each_entry(m, &pcinet_maps, node) {
		if (rcu_access_pointer(m->fn) == fn) {
			RCU_INIT_POINTER(m->fn, NULL);
			left++;
		}
	}
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);
	if (left)
		pr_warn("%04x:00:00.0: %d BAR mappings outlive the device; they read all-ones\n",
			fn->domain, left);
	/* No fault handler or deferred access is still serving this function when we return. */
	wake_up_all(&fn->mmioq);
	synchronize_rcu();
	synchronize_srcu(&pcinet_srcu);
}

int pcinet_mmio_init(void)
{
	int ret;

	/* defer.S lays out struct pt_regs by hand. */
	BUILD_BUG_ON(offsetof(struct pt_regs, r15) != 0 || offsetof(struct pt_regs, di) != 112 ||
		     offsetof(struct pt_regs, ip) != 128 || offsetof(struct pt_regs, flags) != 144 ||
		     offsetof(struct pt_regs, sp) != 152 || sizeof(struct pt_regs) != 168);
	ret = register_kprobes(pcinet_kprobes, ARRAY_SIZE(pcinet_kprobes));
	if (ret) {
		pr_err("cannot hook the MMIO fault path (kprobes: %d)\n", ret);
		return ret;
	}
	ret = pcinet_calibrate();
	if (ret) {
		pcinet_mmio_exit();
		return ret;
	}
	return 0;
}

void pcinet_mmio_exit(void)
{
	struct pcinet_map *m, *tmp;
	unsigned long flags;

	unregister_kprobes(pcinet_kprobes, ARRAY_SIZE(pcinet_kprobes));
	if (atomic64_read(&pcinet_nested_faults))
		pr_info("nested faults on mappings of removed functions: %lld\n",
			atomic64_read(&pcinet_nested_faults));
	/* Mappings a driver leaked: give them back their entries before our code goes away. */
	spin_lock_irqsave(&pcinet_lists_lock, flags);
	list_for_each_entry_safe(m, tmp, &pcinet_maps, node) {
		list_del_rcu(&m->node);
		pcinet_map_unprotect(m, m->virt, m->virt + m->len);
		pcinet_map_free(m);
	}
	spin_unlock_irqrestore(&pcinet_lists_lock, flags);
	srcu_barrier(&pcinet_srcu);
	rcu_barrier();
	/* No task is still between a fault and defer.S's return (it holds no lock we could wait
	 * on there, and may have been preempted): wait until every task has passed a voluntary
	 * context switch.
	 */
	synchronize_rcu_tasks();
}
