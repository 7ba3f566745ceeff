/* SPDX-License-Identifier: GPL-2.0 */
/* pcinet_test: what main.c (probe, debugfs, MMIO and MSI-X checks) and dma.c share. */
#ifndef PCINET_TEST_H
#define PCINET_TEST_H

#include <linux/debugfs.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/wait.h>

#include "pcinet_test_regs.h"

/* An interrupt crosses the network and back: generous, but a lost one must not hang a test. */
#define RAISE_TIMEOUT		(2 * HZ)
/* A 4 MiB DMA through a TCG guest and TLS; still bounded. */
#define CMD_TIMEOUT		(30 * HZ)
/* stress: iterations per CPU are capped so that a write cannot start an endless test. */
#define STRESS_MAX_ITERATIONS	100000
/* stress: each CPU owns this many bytes of BAR 2, so their accesses never overlap. */
#define STRESS_STRIDE		256
/* The vector commands complete on. */
#define CMD_VECTOR		0
/* Room for one line of result text. */
#define RESULT_LEN		160

struct ptest;

struct ptest_vec {
	struct ptest *t;
	atomic_t count;
	char name[32];
};

/* One debugfs file that runs an operation on write and shows its last result on read. */
struct ptest_op {
	struct ptest *t;
	int (*run)(struct ptest *t, u64 arg, u64 arg2, char *result);
	char result[RESULT_LEN];
};

enum {
	OP_DMA_READ, OP_DMA_WRITE, OP_DMA_FAULT, OP_DMA_WRITE_FAULT, OP_STRESS, OP_MEMTEST,
	OP_MEMTEST_AT, OP_ATOMIC_READ, OP_ATOMIC_WRITE, OP_LOCKED_INC, OP_BURST, OP_BAR_COPY,
	OP_DMA_SG, OP_COUNT
};

/* memtest_at: the most bytes one run copies each way. */
#define MEMTEST_MAX		(4 << 20)
/* irq_delay_us: at most this, in hard interrupt context. */
#define IRQ_DELAY_MAX_US	5000
/* burst: how long the last raise of a burst may take to arrive. */
#define BURST_TIMEOUT		(10 * HZ)

struct ptest {
	struct pci_dev *pdev;
	void __iomem *regs;
	void __iomem *mem;
	u64 mem_size;		/* BAR 2's size (--device test:mem=…) */
	u32 irq_delay_us;	/* each handler run busy-waits this long: a slow handler */
	int nvec;
	struct ptest_vec *vec;
	wait_queue_head_t irq_wait;
	struct mutex lock;	/* one command (or stress run) at a time */
	struct dentry *dir;
	struct ptest_op ops[OP_COUNT];
};

void test_pattern(u8 *out, size_t len, u32 seed);
int run_command(struct ptest *t, u32 cmd);

/* dma.c */
int op_dma_read(struct ptest *t, u64 size, u64 seed, char *result);
int op_dma_write(struct ptest *t, u64 size, u64 seed, char *result);
int op_dma_fault(struct ptest *t, u64 iova, u64 unused, char *result);
int op_dma_write_fault(struct ptest *t, u64 size, u64 mode, char *result);
int op_dma_sg(struct ptest *t, u64 npages, u64 seed, char *result);

#endif /* PCINET_TEST_H */
