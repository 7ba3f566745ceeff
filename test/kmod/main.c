// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet_test: a plain PCI driver for the pcinet conformance device (docs/devices.md, register
 * map in pcinet_test_regs.h), in the spirit of Linux's pci-endpoint-test. It exercises every path
 * through pcinet the way a real driver does (MMIO of every size, string MMIO, MSI-X, coherent and
 * streaming DMA) and exposes each as a debugfs file under
 * /sys/kernel/debug/pcinet_test/<pci address>/ for the end-to-end tests (README.md). The DMA
 * checks are in dma.c.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/debugfs.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/sched/task.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "pcinet_test.h"

static struct dentry *ptest_root;

static irqreturn_t ptest_irq(int irq, void *data)
{
	struct ptest_vec *v = data;
	u32 delay = READ_ONCE(v->t->irq_delay_us);

	if (delay)
		udelay(delay);
	atomic_inc(&v->count);
	wake_up_all(&v->t->irq_wait);
	return IRQ_HANDLED;
}

/* testPattern() of devices/test/regs.ts: xorshift32 seeded by seed (0 counts as 1). */
void test_pattern(u8 *out, size_t len, u32 seed)
{
	u32 x = seed ? seed : 1;
	size_t i, b;

	for (i = 0; i < len; i += 4) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		for (b = 0; b < 4 && i + b < len; b++)
			out[i + b] = x >> (8 * b);
	}
}

/*
 * Starts a command with the registers already set, and waits (bounded) for its completion
 * interrupt on CMD_VECTOR. Returns STATUS, or -ETIMEDOUT.
 */
int run_command(struct ptest *t, u32 cmd)
{
	int before = atomic_read(&t->vec[CMD_VECTOR].count);
	u32 status;

	writel(STATUS_DONE | STATUS_ERROR, t->regs + REG_STATUS);
	writel(CMD_VECTOR, t->regs + REG_IRQ_VECTOR);
	writel(cmd, t->regs + REG_COMMAND);
	if (!wait_event_timeout(t->irq_wait, atomic_read(&t->vec[CMD_VECTOR].count) != before,
				CMD_TIMEOUT)) {
		status = readl(t->regs + REG_STATUS);
		dev_warn(&t->pdev->dev, "command %u: no interrupt (STATUS %#x)\n", cmd, status);
		return -ETIMEDOUT;
	}
	return readl(t->regs + REG_STATUS);
}

struct stress_ctx {
	struct ptest *t;
	struct task_struct *task;
	unsigned int cpu;
	unsigned long iterations;
	unsigned long mismatches;
	char first[96];
	struct completion done;
};

/* One CPU's share: 32- and 64-bit writes and read-backs in its own slice of BAR 2, and MAGIC. */
static int stress_thread(void *data)
{
	struct stress_ctx *c = data;
	void __iomem *slice = c->t->mem + c->cpu * STRESS_STRIDE;
	unsigned long i;

	for (i = 0; i < c->iterations; i++) {
		unsigned int off = (i * 8) % STRESS_STRIDE;
		u64 want = ((u64)c->cpu << 56) | ((u64)i << 20) | off, got;
		u32 magic;

		if (i & 1) {
			writeq(want, slice + off);
			got = readq(slice + off);
		} else {
			writel((u32)want, slice + off);
			got = readl(slice + off);
			want = (u32)want;
		}
		magic = readl(c->t->regs + REG_MAGIC);
		if (got != want || magic != TEST_MAGIC) {
			if (!c->mismatches++)
				snprintf(c->first, sizeof(c->first),
					 "cpu %u offset %#x wrote %#llx read %#llx magic %#x",
					 c->cpu, off, want, got, magic);
		}
	}
	complete(&c->done);
	/* wait for kthread_stop() so that the caller owns our exit */
	set_current_state(TASK_INTERRUPTIBLE);
	while (!kthread_should_stop()) {
		schedule();
		set_current_state(TASK_INTERRUPTIBLE);
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

/* stress: a kthread per online CPU (up to what BAR 2 has room for), all doing MMIO at once. */
static int op_stress(struct ptest *t, u64 iterations, u64 unused, char *result)
{
	unsigned int max = min_t(u64, t->mem_size, TEST_MEM_BAR_SIZE) / STRESS_STRIDE, n = 0, i, cpu;
	unsigned long mismatches = 0;
	struct stress_ctx *ctx;
	const char *first = "";
	int ret = 0;

	if (iterations < 1 || iterations > STRESS_MAX_ITERATIONS)
		return -EINVAL;
	ctx = kcalloc(max, sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	for_each_online_cpu(cpu) {
		if (n == max)
			break;
		ctx[n] = (struct stress_ctx){ .t = t, .cpu = n, .iterations = iterations };
		init_completion(&ctx[n].done);
		ctx[n].task = kthread_create_on_cpu(stress_thread, &ctx[n], cpu, "pcinet_stress/%u");
		if (IS_ERR(ctx[n].task)) {
			ret = PTR_ERR(ctx[n].task);
			break;
		}
		get_task_struct(ctx[n].task);	/* kthread_stop() below may come after it exited */
		n++;
	}
	for (i = 0; i < n; i++)
		wake_up_process(ctx[i].task);
	for (i = 0; i < n; i++) {
		/* each access is bounded by pcinet; this only reports a test that got stuck */
		if (!wait_for_completion_timeout(&ctx[i].done, CMD_TIMEOUT + iterations * HZ / 100))
			dev_warn(&t->pdev->dev, "stress: slot %u did not finish in time\n", i);
	}
	for (i = 0; i < n; i++) {
		kthread_stop(ctx[i].task);
		put_task_struct(ctx[i].task);
		if (ctx[i].mismatches && !mismatches)
			first = ctx[i].first;
		mismatches += ctx[i].mismatches;
	}
	if (!ret && mismatches) {
		snprintf(result, RESULT_LEN, "fail cpus=%u iterations=%llu mismatches=%lu first: %s\n",
			 n, iterations, mismatches, first);
		ret = -EIO;
	} else if (!ret) {
		snprintf(result, RESULT_LEN, "ok cpus=%u iterations=%llu\n", n, iterations);
	}
	kfree(ctx);
	return ret;
}

/* String MMIO (memcpy_toio, memcpy_fromio, memset_io) on BAR 2 at [off, off + size). */
static int memtest_range(struct ptest *t, u64 off, u64 size, char *result)
{
	u8 *want, *got;
	u64 i;
	int ret = 0;

	if (size < 1 || size > MEMTEST_MAX || off >= t->mem_size || size > t->mem_size - off)
		return -EINVAL;
	want = kvmalloc(size, GFP_KERNEL);
	got = kvmalloc(size, GFP_KERNEL);
	if (!want || !got) {
		ret = -ENOMEM;
		goto out;
	}
	memset_io(t->mem + off, 0xa5, size);
	memcpy_fromio(got, t->mem + off, size);
	for (i = 0; i < size && got[i] == 0xa5; i++)
		;
	if (i < size) {
		snprintf(result, RESULT_LEN, "fail memset_io size=%llu offset=%llu read=%#x\n",
			 size, off + i, got[i]);
		ret = -EIO;
		goto out;
	}
	test_pattern(want, size, (u32)off);
	memcpy_toio(t->mem + off, want, size);
	memcpy_fromio(got, t->mem + off, size);
	for (i = 0; i < size && got[i] == want[i]; i++)
		;
	if (i < size) {
		snprintf(result, RESULT_LEN, "fail memcpy size=%llu offset=%llu read=%#x want=%#x\n",
			 size, off + i, got[i], want[i]);
		ret = -EIO;
		goto out;
	}
out:
	kvfree(got);
	kvfree(want);
	return ret;
}

/*
 * bar_copy SIZE: a string move with both operands in BAR 2, from its first half to its second
 * (memcpy_fromio() whose destination is the BAR too: rep movs between two trapped pages, as
 * between two BARs), then the copy read back and compared with what was written to the source.
 */
static int op_bar_copy(struct ptest *t, u64 size, u64 unused, char *result)
{
	u64 half = t->mem_size / 2, i;
	u8 *want, *got;
	int ret = 0;

	if (size < 1 || size > half - 3 || size > MEMTEST_MAX)
		return -EINVAL;
	want = kvmalloc(size, GFP_KERNEL);
	got = kvmalloc(size, GFP_KERNEL);
	if (!want || !got) {
		ret = -ENOMEM;
		goto out;
	}
	test_pattern(want, size, (u32)size);
	memset_io(t->mem + half + 1, 0, size);
	memcpy_toio(t->mem + 3, want, size);
	/* A read waits until the device applied those writes: with nothing outstanding, the copy's
	 * first access is served in the fault handler itself, where the destination's page, trapped
	 * too, would fault again inside it.
	 */
	readb(t->mem + half + 1);
	memcpy_fromio((void __force *)(t->mem + half + 1), t->mem + 3, size);
	memcpy_fromio(got, t->mem + half + 1, size);
	for (i = 0; i < size && got[i] == want[i]; i++)
		;
	if (i < size) {
		snprintf(result, RESULT_LEN, "fail size=%llu offset=%llu read=%#x want=%#x\n", size, i,
			 got[i], want[i]);
		ret = -EIO;
	} else {
		snprintf(result, RESULT_LEN, "ok size=%llu\n", size);
	}
out:
	kvfree(got);
	kvfree(want);
	return ret;
}

/* memtest: string MMIO on BAR 2 at an odd offset (the accessors' unaligned head and tail). */
static int op_memtest(struct ptest *t, u64 size, u64 unused, char *result)
{
	int ret = memtest_range(t, 3, size, result);

	if (!ret)
		snprintf(result, RESULT_LEN, "ok size=%llu\n", size);
	return ret;
}

/* memtest_at OFFSET SIZE: the same anywhere in BAR 2 (across 2 MiB boundaries of a large one). */
static int op_memtest_at(struct ptest *t, u64 off, u64 size, char *result)
{
	int ret = memtest_range(t, off, size, result);

	if (!ret)
		snprintf(result, RESULT_LEN, "ok offset=%#llx size=%llu\n", off, size);
	return ret;
}

/*
 * atomic_read SIZE: memcpy_fromio() of BAR 2 with interrupts off, as an interrupt handler or code
 * under a spinlock would do it; reports how long it took and how many bytes read all-ones (what a
 * device that does not answer gives). A stalled device must not keep the CPU for long.
 */
static int op_atomic_read(struct ptest *t, u64 size, u64 unused, char *result)
{
	unsigned long flags;
	u64 i, ones = 0;
	ktime_t start;
	s64 us;
	u8 *buf;

	if (size < 1 || size > t->mem_size || size > MEMTEST_MAX)
		return -EINVAL;
	buf = kvmalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	local_irq_save(flags);
	start = ktime_get();
	memcpy_fromio(buf, t->mem, size);
	us = ktime_us_delta(ktime_get(), start);
	local_irq_restore(flags);
	for (i = 0; i < size; i++)
		ones += buf[i] == 0xff;
	kvfree(buf);
	snprintf(result, RESULT_LEN, "ok size=%llu ms=%lld all-ones=%llu\n", size, us / 1000, ones);
	return 0;
}

/* atomic_write SIZE TIMES: memcpy_toio() of BAR 2 with interrupts off, TIMES times over. */
static int op_atomic_write(struct ptest *t, u64 size, u64 times, char *result)
{
	unsigned long flags;
	ktime_t start;
	s64 us;
	u64 n;
	u8 *buf;

	if (size < 1 || size > t->mem_size || size > MEMTEST_MAX || times < 1 || times > 64)
		return -EINVAL;
	buf = kvmalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	memset(buf, 0x3c, size);
	local_irq_save(flags);
	start = ktime_get();
	for (n = 0; n < times; n++)
		memcpy_toio(t->mem, buf, size);
	us = ktime_us_delta(ktime_get(), start);
	local_irq_restore(flags);
	kvfree(buf);
	snprintf(result, RESULT_LEN, "ok size=%llu times=%llu ms=%lld\n", size, times, us / 1000);
	return 0;
}

/*
 * locked_inc OFFSET: a locked read-modify-write of BAR 2, which pcinet's emulator refuses (it
 * cannot make an MMIO read-modify-write atomic): pcinet gives that page back untrapped and the
 * instruction runs against the bare window. The kernel must go on.
 */
static int op_locked_inc(struct ptest *t, u64 off, u64 unused, char *result)
{
	u32 __iomem *p;

	if (off >= t->mem_size || off + 4 > t->mem_size || (off & 3))
		return -EINVAL;
	p = (u32 __iomem *)(t->mem + off);
	asm volatile("lock incl %0" : "+m" (*(u32 __force *)p) : : "memory");
	snprintf(result, RESULT_LEN, "ok offset=%#llx\n", off);
	return 0;
}

/*
 * burst VECTOR COUNT: the device raises VECTOR COUNT times at once (RAISE_BURST). Raises of a
 * vector that is already pending may merge, as on any MSI-X function, but the last one must
 * arrive: waits (bounded) until the handler has run after the command completed and the vector's
 * PBA bit is clear.
 */
static int op_burst(struct ptest *t, u64 vector, u64 count, char *result)
{
	int before, status, seen;
	unsigned long until;
	u64 pba;

	if (vector >= t->nvec || vector == CMD_VECTOR || count < 1 || count > TEST_MAX_BURST)
		return -EINVAL;
	before = atomic_read(&t->vec[vector].count);
	writel(vector, t->regs + REG_ARG);
	writel(count, t->regs + REG_SIZE);
	status = run_command(t, CMD_RAISE_BURST);
	if (status < 0)
		return status;
	/* Delivered raises may still be on their way: wait until the count settles with the PBA
	 * bit clear. A lost interrupt leaves the bit set and the count short.
	 */
	until = jiffies + BURST_TIMEOUT;
	do {
		seen = atomic_read(&t->vec[vector].count);
		pba = readq(t->regs + TEST_MSIX_PBA);
		if (!(pba & BIT_ULL(vector)) && seen != before)
			break;
		msleep(20);
	} while (time_before(jiffies, until));
	if (pba & BIT_ULL(vector) || seen == before) {
		snprintf(result, RESULT_LEN, "fail vector=%llu raised=%llu delivered=%d pba=%#llx status=%#x\n",
			 vector, count, seen - before, pba, status);
		return -EIO;
	}
	snprintf(result, RESULT_LEN, "ok vector=%llu raised=%llu delivered=%d status=%#x\n",
		 vector, count, seen - before, status);
	return 0;
}

/* Operation files: write "ARG [ARG2]" to run, read the last result. */
static ssize_t op_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	struct ptest_op *op = file->private_data;
	char buf[64], result[RESULT_LEN] = "", *p = buf, *word;
	u64 args[2] = { 0, 0 };
	int ret, n = 0;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = 0;
	while ((word = strsep(&p, " \t\n")) != NULL) {
		if (!*word)
			continue;
		if (n == ARRAY_SIZE(args) || kstrtou64(word, 0, &args[n++]))
			return -EINVAL;
	}
	if (!n)
		return -EINVAL;
	mutex_lock(&op->t->lock);
	ret = op->run(op->t, args[0], args[1], result);
	if (!result[0])
		snprintf(result, RESULT_LEN, "fail %d\n", ret);
	strscpy(op->result, result, RESULT_LEN);
	mutex_unlock(&op->t->lock);
	return ret ? ret : len;
}

static ssize_t op_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	struct ptest_op *op = file->private_data;
	char result[RESULT_LEN];

	mutex_lock(&op->t->lock);
	strscpy(result, op->result[0] ? op->result : "none\n", RESULT_LEN);
	mutex_unlock(&op->t->lock);
	return simple_read_from_buffer(ubuf, len, ppos, result, strlen(result));
}

static const struct file_operations op_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.read = op_read,
	.write = op_write,
	.llseek = default_llseek,
};

/* Register files */
static int magic_get(void *data, u64 *val)
{
	struct ptest *t = data;

	*val = readl(t->regs + REG_MAGIC);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(magic_fops, magic_get, NULL, "0x%08llx\n");

static int scratch_get(void *data, u64 *val)
{
	struct ptest *t = data;

	*val = readl(t->regs + REG_SCRATCH);
	return 0;
}

static int scratch_set(void *data, u64 val)
{
	struct ptest *t = data;

	writel(val, t->regs + REG_SCRATCH);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(scratch_fops, scratch_get, scratch_set, "0x%08llx\n");

static int counter_get(void *data, u64 *val)
{
	struct ptest *t = data;

	*val = readl(t->regs + REG_COUNTER);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(counter_fops, counter_get, NULL, "%llu\n");

/* raise: doorbell vector N, then wait for it, unless it is masked (it stays pending). */
static int raise_set(void *data, u64 n)
{
	struct ptest *t = data;
	void __iomem *ctrl;
	int before;

	if (n >= t->nvec)
		return -EINVAL;
	ctrl = t->regs + TEST_MSIX_TABLE + n * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL;
	before = atomic_read(&t->vec[n].count);
	writel(n, t->regs + REG_IRQ_DOORBELL);
	if (readl(ctrl) & PCI_MSIX_ENTRY_CTRL_MASKBIT)
		return 0;
	if (!wait_event_timeout(t->irq_wait, atomic_read(&t->vec[n].count) != before, RAISE_TIMEOUT))
		return -ETIMEDOUT;
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(raise_fops, NULL, raise_set, "%llu\n");

/*
 * mask/unmask: the vector control bit of the MSI-X table entry, written directly so that the
 * device-side semantics (PBA, delivery on unmask) are what is tested, not the IRQ core's lazy
 * disable. The MSI core does not know; it may rewrite the bit when it reprograms the entry.
 */
static int msix_mask(struct ptest *t, u64 n, bool mask)
{
	void __iomem *ctrl;
	u32 v;

	if (n >= t->nvec)
		return -EINVAL;
	ctrl = t->regs + TEST_MSIX_TABLE + n * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL;
	v = readl(ctrl);
	v = mask ? v | PCI_MSIX_ENTRY_CTRL_MASKBIT : v & ~PCI_MSIX_ENTRY_CTRL_MASKBIT;
	writel(v, ctrl);
	return 0;
}

/* Masked vectors as a bit mask, read from the table. */
static int mask_get(void *data, u64 *val)
{
	struct ptest *t = data;
	int i;

	*val = 0;
	for (i = 0; i < t->nvec; i++)
		if (readl(t->regs + TEST_MSIX_TABLE + i * PCI_MSIX_ENTRY_SIZE +
			  PCI_MSIX_ENTRY_VECTOR_CTRL) & PCI_MSIX_ENTRY_CTRL_MASKBIT)
			*val |= BIT_ULL(i);
	return 0;
}

static int mask_set(void *data, u64 n)
{
	return msix_mask(data, n, true);
}
DEFINE_DEBUGFS_ATTRIBUTE(mask_fops, mask_get, mask_set, "0x%016llx\n");

/* unmask: if the vector was pending, its interrupt must arrive (bounded wait). */
static int unmask_set(void *data, u64 n)
{
	struct ptest *t = data;
	bool pending;
	int before, ret;

	if (n >= t->nvec)
		return -EINVAL;
	pending = readq(t->regs + TEST_MSIX_PBA) & BIT_ULL(n);
	before = atomic_read(&t->vec[n].count);
	ret = msix_mask(t, n, false);
	if (ret || !pending)
		return ret;
	if (!wait_event_timeout(t->irq_wait, atomic_read(&t->vec[n].count) != before, RAISE_TIMEOUT))
		return -ETIMEDOUT;
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(unmask_fops, mask_get, unmask_set, "0x%016llx\n");

static int pba_get(void *data, u64 *val)
{
	struct ptest *t = data;

	*val = readq(t->regs + TEST_MSIX_PBA);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(pba_fops, pba_get, NULL, "0x%016llx\n");

/* irq_delay_us: how long every handler run busy-waits (0..IRQ_DELAY_MAX_US), to make delivery
 * slower than a burst of raises.
 */
static int irq_delay_get(void *data, u64 *val)
{
	*val = READ_ONCE(((struct ptest *)data)->irq_delay_us);
	return 0;
}

static int irq_delay_set(void *data, u64 val)
{
	if (val > IRQ_DELAY_MAX_US)
		return -EINVAL;
	WRITE_ONCE(((struct ptest *)data)->irq_delay_us, val);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(irq_delay_fops, irq_delay_get, irq_delay_set, "%llu\n");

static int irq_counts_show(struct seq_file *s, void *unused)
{
	struct ptest *t = s->private;
	int i;

	for (i = 0; i < t->nvec; i++)
		seq_printf(s, "%d %d\n", i, atomic_read(&t->vec[i].count));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(irq_counts);

static int info_show(struct seq_file *s, void *unused)
{
	struct ptest *t = s->private;

	seq_printf(s, "magic 0x%08x\nversion %u\nvectors %u\nmsix %d\nstatus %#x\nerror %u\ndone_count %u\nmem_size %llu\nuntrusted %u\n",
		   readl(t->regs + REG_MAGIC), readl(t->regs + REG_VERSION),
		   readl(t->regs + REG_VECTORS), t->nvec, readl(t->regs + REG_STATUS),
		   readl(t->regs + REG_ERROR), readl(t->regs + REG_DONE_COUNT), t->mem_size,
		   t->pdev->untrusted);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(info);

static void ptest_debugfs(struct ptest *t)
{
	static const char *const names[OP_COUNT] = {
		"dma_read", "dma_write", "dma_fault", "dma_write_fault", "stress", "memtest",
		"memtest_at", "atomic_read", "atomic_write", "locked_inc", "burst", "bar_copy",
		"dma_sg" };
	static int (*const runs[OP_COUNT])(struct ptest *, u64, u64, char *) = {
		op_dma_read, op_dma_write, op_dma_fault, op_dma_write_fault, op_stress, op_memtest,
		op_memtest_at, op_atomic_read, op_atomic_write, op_locked_inc, op_burst, op_bar_copy,
		op_dma_sg };
	int i;

	t->dir = debugfs_create_dir(pci_name(t->pdev), ptest_root);
	debugfs_create_file("info", 0444, t->dir, t, &info_fops);
	debugfs_create_file_unsafe("magic", 0444, t->dir, t, &magic_fops);
	debugfs_create_file_unsafe("scratch", 0644, t->dir, t, &scratch_fops);
	debugfs_create_file_unsafe("counter", 0444, t->dir, t, &counter_fops);
	debugfs_create_file("irq_counts", 0444, t->dir, t, &irq_counts_fops);
	debugfs_create_file_unsafe("raise", 0200, t->dir, t, &raise_fops);
	debugfs_create_file_unsafe("mask", 0644, t->dir, t, &mask_fops);
	debugfs_create_file_unsafe("unmask", 0644, t->dir, t, &unmask_fops);
	debugfs_create_file_unsafe("pba", 0444, t->dir, t, &pba_fops);
	debugfs_create_file_unsafe("irq_delay_us", 0644, t->dir, t, &irq_delay_fops);
	for (i = 0; i < OP_COUNT; i++) {
		t->ops[i].t = t;
		t->ops[i].run = runs[i];
		debugfs_create_file(names[i], 0644, t->dir, &t->ops[i], &op_fops);
	}
}

static void ptest_free_irqs(struct ptest *t, int n)
{
	while (n-- > 0)
		free_irq(pci_irq_vector(t->pdev, n), &t->vec[n]);
}

static int ptest_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct ptest *t;
	u32 magic;
	int ret, i;

	t = devm_kzalloc(dev, sizeof(*t), GFP_KERNEL);
	if (!t)
		return -ENOMEM;
	t->pdev = pdev;
	init_waitqueue_head(&t->irq_wait);
	mutex_init(&t->lock);
	pci_set_drvdata(pdev, t);

	ret = pci_enable_device(pdev);
	if (ret)
		return ret;
	ret = pci_request_regions(pdev, KBUILD_MODNAME);
	if (ret)
		goto err_disable;
	t->regs = pci_iomap(pdev, TEST_REG_BAR, 0);
	t->mem = pci_iomap(pdev, TEST_MEM_BAR, 0);
	t->mem_size = pci_resource_len(pdev, TEST_MEM_BAR);
	if (!t->regs || !t->mem) {
		ret = -ENOMEM;
		goto err_unmap;
	}
	magic = readl(t->regs + REG_MAGIC);
	if (magic != TEST_MAGIC) {
		dev_err(dev, "bad MAGIC %#x\n", magic);
		ret = -ENODEV;
		goto err_unmap;
	}
	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_unmap;
	pci_set_master(pdev);

	t->nvec = pci_alloc_irq_vectors(pdev, 1, TEST_MAX_VECTORS, PCI_IRQ_MSIX);
	if (t->nvec < 0) {
		ret = t->nvec;
		goto err_master;
	}
	t->vec = devm_kcalloc(dev, t->nvec, sizeof(*t->vec), GFP_KERNEL);
	if (!t->vec) {
		ret = -ENOMEM;
		goto err_vectors;
	}
	for (i = 0; i < t->nvec; i++) {
		t->vec[i].t = t;
		snprintf(t->vec[i].name, sizeof(t->vec[i].name), "pcinet_test-%s-%d", pci_name(pdev), i);
		ret = request_irq(pci_irq_vector(pdev, i), ptest_irq, 0, t->vec[i].name, &t->vec[i]);
		if (ret) {
			ptest_free_irqs(t, i);
			goto err_vectors;
		}
	}
	ptest_debugfs(t);
	dev_info(dev, "version %u, %d MSI-X vectors\n", readl(t->regs + REG_VERSION), t->nvec);
	return 0;

err_vectors:
	pci_free_irq_vectors(pdev);
err_master:
	pci_clear_master(pdev);
err_unmap:
	if (t->mem)
		pci_iounmap(pdev, t->mem);
	if (t->regs)
		pci_iounmap(pdev, t->regs);
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
	return ret;
}

static void ptest_remove(struct pci_dev *pdev)
{
	struct ptest *t = pci_get_drvdata(pdev);

	debugfs_remove_recursive(t->dir);	/* waits for file operations in progress */
	ptest_free_irqs(t, t->nvec);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	pci_iounmap(pdev, t->mem);
	pci_iounmap(pdev, t->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
}

static const struct pci_device_id ptest_ids[] = {
	{ PCI_DEVICE(TEST_VENDOR_ID, TEST_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, ptest_ids);

static struct pci_driver ptest_driver = {
	.name = KBUILD_MODNAME,
	.id_table = ptest_ids,
	.probe = ptest_probe,
	.remove = ptest_remove,
};

static int __init ptest_init(void)
{
	int ret;

	ptest_root = debugfs_create_dir(KBUILD_MODNAME, NULL);
	ret = pci_register_driver(&ptest_driver);
	if (ret)
		debugfs_remove_recursive(ptest_root);
	return ret;
}

static void __exit ptest_exit(void)
{
	pci_unregister_driver(&ptest_driver);
	debugfs_remove_recursive(ptest_root);
}

module_init(ptest_init);
module_exit(ptest_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pcinet conformance test device driver");
