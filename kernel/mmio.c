// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: trapping the BAR mappings (serving the accesses is serve.c's).
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

/* A test hook (test/e2e/kernel-fault.test.ts): there is no other way to make code inside the
 * fault handler touch a BAR. Root only; 0, the default, costs one READ_ONCE per BAR access.
 */
static unsigned int test_nested_fault;
module_param(test_nested_fault, uint, 0600);
MODULE_PARM_DESC(test_nested_fault,
		 "Test hook: the next N BAR accesses first read their BAR page again from inside the fault handler (a nested fault, answered all-ones)");

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
