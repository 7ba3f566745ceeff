/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A fake trapped mapping: addresses [base, base + len) are "MMIO", served by ops from a shadow
 * buffer; the nofault accessors refuse them (and the range [bad, bad + bad_len)) the way a trapped
 * or unmapped page would fault. Runs between the xmm load and store of emulate_with_xmm(), so
 * fake-mmio.c is built with -mgeneral-regs-only and calls no libc.
 */
#ifndef FAKE_MMIO_H
#define FAKE_MMIO_H

#include "emulate-shim.h"
#include "../emulate.h"

struct fake_mmio {
	unsigned long base, len;
	unsigned char *shadow;
	unsigned long bad, bad_len;
	long fail_after;		/* ops calls before they fail with -EIO; -1: never */
	unsigned long reads, writes;	/* ops calls */
	unsigned long stray;		/* ops calls outside [base, base + len) or of a bad size */
	unsigned long nofault;		/* accessor calls */
	unsigned long last_read_size, last_write_size;
};

extern struct fake_mmio fm;
extern const struct pcinet_mmio_ops fake_ops, fake_ops_mapped;

#endif
