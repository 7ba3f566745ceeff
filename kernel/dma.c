// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: the DMA sandbox. Not built yet: every endpoint DMA request is refused (an error
 * completion for reads) and counted, as an IOMMU with no mappings would.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "internal.h"

int pcinet_dma_init(struct pcinet_fn *fn)
{
	return 0;
}

void pcinet_dma_set_ops(struct pcinet_fn *fn, struct pci_dev *pdev)
{
}

int pcinet_dma_read(struct pcinet_fn *fn, const struct pcinet_w_dma_read *d)
{
	struct pcinet_r_dma_read_cpl rec = {};

	atomic64_inc(&fn->stats.dma_refused);
	pcinet_hdr(&rec.hdr, PCINET_R_DMA_READ_CPL, sizeof(rec));
	rec.tag = d->tag;
	rec.status = cpu_to_le32(PCINET_STATUS_ERROR);
	pcinet_queue(fn, &rec, sizeof(rec));
	return 0;
}

int pcinet_dma_write(struct pcinet_fn *fn, const struct pcinet_w_dma_write *d)
{
	atomic64_inc(&fn->stats.dma_refused);
	return 0;
}

void pcinet_dma_exit(struct pcinet_fn *fn)
{
}
