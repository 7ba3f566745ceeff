// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet_test: DMA both ways through pcinet's sandbox, checked by the driver: streaming and
 * coherent mappings, and DMA that must be refused (README.md, "debugfs interface").
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/crc32.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/slab.h>

#include "pcinet_test.h"

/* The zlib/IEEE CRC-32 the device computes. */
static u32 zlib_crc32(const void *buf, size_t len)
{
	return ~crc32_le(~0U, buf, len);
}

/*
 * Runs DMA command `cmd` on [iova, iova + size) (DMA_WRITE fills it with testPattern(seed)):
 * STATUS, or -ETIMEDOUT.
 */
static int dma_command(struct ptest *t, u32 cmd, dma_addr_t iova, u32 size, u32 seed)
{
	writeq(iova, t->regs + (cmd == CMD_DMA_READ ? REG_SRC_ADDR : REG_DST_ADDR));
	writel(size, t->regs + REG_SIZE);
	if (cmd == CMD_DMA_WRITE)
		writel(seed, t->regs + REG_ARG);
	return run_command(t, cmd);
}

/* dma_read: the device reads a buffer we filled (streaming mapping) and checksums it. */
int op_dma_read(struct ptest *t, u64 size, u64 seed, char *result)
{
	struct device *dev = &t->pdev->dev;
	u32 want, got;
	dma_addr_t iova;
	u8 *buf;
	int status;

	if (size < 1 || size > TEST_MAX_DMA)
		return -EINVAL;
	buf = kmalloc(size, GFP_KERNEL | __GFP_NOWARN);
	if (!buf)
		return -ENOMEM;
	test_pattern(buf, size, seed ^ 0x5a5a5a5a);
	want = zlib_crc32(buf, size);
	iova = dma_map_single(dev, buf, size, DMA_TO_DEVICE);
	if (dma_mapping_error(dev, iova)) {
		kfree(buf);
		return -ENOMEM;
	}
	status = dma_command(t, CMD_DMA_READ, iova, size, 0);
	dma_unmap_single(dev, iova, size, DMA_TO_DEVICE);
	kfree(buf);
	if (status < 0)
		return status;
	got = readl(t->regs + REG_CHECKSUM);
	if (status != STATUS_DONE || got != want) {
		snprintf(result, RESULT_LEN, "fail size=%llu status=%#x error=%u crc=%#010x want=%#010x\n",
			 size, status, readl(t->regs + REG_ERROR), got, want);
		return -EIO;
	}
	snprintf(result, RESULT_LEN, "ok size=%llu crc=%#010x\n", size, got);
	return 0;
}

/* dma_write: the device writes its test pattern into a coherent buffer; we check every byte. */
int op_dma_write(struct ptest *t, u64 size, u64 seed, char *result)
{
	struct device *dev = &t->pdev->dev;
	u8 *buf, *want;
	dma_addr_t iova;
	size_t i;
	int status, ret = 0;

	if (size < 1 || size > TEST_MAX_DMA)
		return -EINVAL;
	want = kvmalloc(size, GFP_KERNEL);
	if (!want)
		return -ENOMEM;
	buf = dma_alloc_coherent(dev, size, &iova, GFP_KERNEL | __GFP_NOWARN);
	if (!buf) {
		kvfree(want);
		return -ENOMEM;
	}
	test_pattern(want, size, seed);
	memset(buf, ~want[0], size);	/* so that a missing write shows */
	status = dma_command(t, CMD_DMA_WRITE, iova, size, seed);
	if (status < 0) {
		ret = status;
	} else {
		for (i = 0; i < size && buf[i] == want[i]; i++)
			;
		if (status != STATUS_DONE || i < size) {
			snprintf(result, RESULT_LEN,
				 "fail size=%llu seed=%llu status=%#x first-difference=%zu\n",
				 size, seed, status, i);
			ret = -EIO;
		} else {
			snprintf(result, RESULT_LEN, "ok size=%llu seed=%llu\n", size, seed);
		}
	}
	dma_free_coherent(dev, size, buf, iova);
	kvfree(want);
	return ret;
}

/* dma_fault: DMA_READ at an IOVA with no live mapping must fail with DMA_FAULT. */
int op_dma_fault(struct ptest *t, u64 iova, u64 unused, char *result)
{
	struct device *dev = &t->pdev->dev;
	int status;
	u32 error;

	if (!iova) {		/* use after unmap */
		void *page = (void *)__get_free_page(GFP_KERNEL);
		dma_addr_t a;

		if (!page)
			return -ENOMEM;
		a = dma_map_single(dev, page, PAGE_SIZE, DMA_TO_DEVICE);
		if (dma_mapping_error(dev, a)) {
			free_page((unsigned long)page);
			return -ENOMEM;
		}
		dma_unmap_single(dev, a, PAGE_SIZE, DMA_TO_DEVICE);
		free_page((unsigned long)page);
		iova = a;
	}
	status = dma_command(t, CMD_DMA_READ, iova, PAGE_SIZE, 0);
	if (status < 0)
		return status;
	error = readl(t->regs + REG_ERROR);
	if (status != (STATUS_DONE | STATUS_ERROR) || error != TEST_ERR_DMA_FAULT) {
		snprintf(result, RESULT_LEN, "fail iova=%#llx status=%#x error=%u\n", iova, status, error);
		return -EIO;
	}
	snprintf(result, RESULT_LEN, "ok iova=%#llx status=%#x error=%u\n", iova, status, error);
	return 0;
}

/*
 * dma_write_fault: a DMA_WRITE of SIZE bytes the host must refuse as a whole. Mode 0: into a
 * streaming mapping one byte shorter (the last byte is outside it); mode 1: into a mapping of the
 * right size that the device may only read. Either way not one byte of the buffer may change,
 * however the write reaches the host: up to 64 KiB it is one W_DMA_WRITE, which on a kernel link
 * arrives in many network segments.
 */
int op_dma_write_fault(struct ptest *t, u64 size, u64 mode, char *result)
{
	struct device *dev = &t->pdev->dev;
	enum dma_data_direction dir = mode ? DMA_TO_DEVICE : DMA_FROM_DEVICE;
	size_t mapped = mode ? size : size - 1, i;
	dma_addr_t iova;
	int status;
	u8 *buf;

	if (size < 2 || size > SZ_64K || mode > 1)
		return -EINVAL;
	buf = kvmalloc(size, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	memset(buf, 0xa5, size);
	iova = dma_map_single(dev, buf, mapped, dir);
	if (dma_mapping_error(dev, iova)) {
		kvfree(buf);
		return -ENOMEM;
	}
	status = dma_command(t, CMD_DMA_WRITE, iova, size, 7);
	dma_unmap_single(dev, iova, mapped, dir);
	for (i = 0; i < size && buf[i] == 0xa5; i++)
		;
	kvfree(buf);
	if (status < 0)
		return status;
	/* A posted write: the device finishes, the host drops it. */
	if (status != STATUS_DONE || i < size) {
		snprintf(result, RESULT_LEN, "fail size=%llu mode=%llu status=%#x first-change=%zu\n",
			 size, mode, status, i);
		return -EIO;
	}
	snprintf(result, RESULT_LEN, "ok size=%llu mode=%llu\n", size, mode);
	return 0;
}

/*
 * dma_sg: PAGES pages, every other one of twice as many (so no two neighbour physically), mapped
 * as one scatterlist. pcinet gives the segments one IOVA range (dma.c), so the device reaches all
 * of them with one DMA_READ (the CRC of every page in order) and one DMA_WRITE (its pattern, read
 * back page by page): each across every segment boundary of the list.
 */
int op_dma_sg(struct ptest *t, u64 npages, u64 seed, char *result)
{
	struct device *dev = &t->pdev->dev;
	u32 size = npages * PAGE_SIZE, crc = ~0U, got, i;
	struct page **pages = NULL;
	struct scatterlist *sgl = NULL, *sg;
	int status = -ENOMEM, mapped = 0;
	u8 *want = NULL;
	dma_addr_t base;

	if (npages < 2 || npages > 256)
		return -EINVAL;
	pages = kcalloc(2 * npages, sizeof(*pages), GFP_KERNEL);
	sgl = kcalloc(npages, sizeof(*sgl), GFP_KERNEL);
	want = kvmalloc(size, GFP_KERNEL);
	if (!pages || !sgl || !want)
		goto out;
	sg_init_table(sgl, npages);
	for (i = 0; i < 2 * npages; i++) {
		pages[i] = alloc_page(GFP_KERNEL);
		if (!pages[i])
			goto out;
	}
	for_each_sg(sgl, sg, npages, i) {
		test_pattern(page_address(pages[2 * i]), PAGE_SIZE, seed + i);
		crc = crc32_le(crc, page_address(pages[2 * i]), PAGE_SIZE);
		sg_set_page(sg, pages[2 * i], PAGE_SIZE, 0);
	}
	mapped = dma_map_sg(dev, sgl, npages, DMA_BIDIRECTIONAL);
	if (!mapped)
		goto out;
	base = sg_dma_address(sgl);
	for_each_sg(sgl, sg, mapped, i) {
		if (sg_dma_address(sg) != base + i * PAGE_SIZE || sg_dma_len(sg) != PAGE_SIZE) {
			snprintf(result, RESULT_LEN,
				 "fail pages=%llu segments=%d segment %u at %pad, the first at %pad\n",
				 npages, mapped, i, &sg_dma_address(sg), &base);
			status = -EIO;
			goto out;
		}
	}
	status = dma_command(t, CMD_DMA_READ, base, size, 0);
	got = readl(t->regs + REG_CHECKSUM);
	if (status != STATUS_DONE || got != ~crc) {
		snprintf(result, RESULT_LEN, "fail pages=%llu read status=%#x crc=%#010x want=%#010x\n",
			 npages, status, got, ~crc);
		status = status < 0 ? status : -EIO;
		goto out;
	}
	test_pattern(want, size, seed);
	status = dma_command(t, CMD_DMA_WRITE, base, size, seed);
	if (status != STATUS_DONE) {
		snprintf(result, RESULT_LEN, "fail pages=%llu write status=%#x\n", npages, status);
		status = status < 0 ? status : -EIO;
		goto out;
	}
	for (i = 0; i < npages; i++) {
		if (memcmp(page_address(pages[2 * i]), want + i * PAGE_SIZE, PAGE_SIZE)) {
			snprintf(result, RESULT_LEN, "fail pages=%llu write differs in page %u\n",
				 npages, i);
			status = -EIO;
			goto out;
		}
	}
	snprintf(result, RESULT_LEN, "ok pages=%llu segments=%d contiguous crc=%#010x\n", npages,
		 mapped, got);
	status = 0;
out:
	if (mapped)
		dma_unmap_sg(dev, sgl, npages, DMA_BIDIRECTIONAL);
	for (i = 0; pages && i < 2 * npages; i++)
		if (pages[i])
			__free_page(pages[i]);
	kvfree(want);
	kfree(sgl);
	kfree(pages);
	return status;
}
