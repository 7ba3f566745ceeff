// SPDX-License-Identifier: GPL-2.0
#include "fake-mmio.h"

struct fake_mmio fm;

static bool overlaps(unsigned long a, size_t n, unsigned long lo, unsigned long len)
{
	return a < lo + len && lo < a + n;
}

static void copy(volatile unsigned char *d, const volatile unsigned char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		d[i] = s[i];
}

static int access_ok_mmio(unsigned long addr, unsigned int size)
{
	if (size != 1 && size != 2 && size != 4 && size != 8 && size != 16)
		return 0;
	return addr >= fm.base && addr - fm.base <= fm.len - size;
}

static int fake_read(void *ctx, unsigned long addr, void *val, unsigned int size)
{
	(void)ctx;
	fm.last_read_size = size;
	if (!access_ok_mmio(addr, size)) {
		fm.stray++;
		return -ERANGE;
	}
	if (fm.fail_after >= 0 && fm.reads + fm.writes >= (unsigned long)fm.fail_after)
		return -EIO;
	fm.reads++;
	copy(val, fm.shadow + (addr - fm.base), size);
	return 0;
}

static int fake_write(void *ctx, unsigned long addr, const void *val, unsigned int size)
{
	(void)ctx;
	fm.last_write_size = size;
	if (!access_ok_mmio(addr, size)) {
		fm.stray++;
		return -ERANGE;
	}
	if (fm.fail_after >= 0 && fm.reads + fm.writes >= (unsigned long)fm.fail_after)
		return -EIO;
	fm.writes++;
	copy(fm.shadow + (addr - fm.base), val, size);
	return 0;
}

const struct pcinet_mmio_ops fake_ops = { .read = fake_read, .write = fake_write };

static bool fake_mapped(void *ctx, unsigned long addr)
{
	(void)ctx;
	return addr >= fm.base && addr - fm.base < fm.len;
}

/* The same region, with mapped(): a string move may have both operands in it. */
const struct pcinet_mmio_ops fake_ops_mapped = {
	.read = fake_read, .write = fake_write, .mapped = fake_mapped,
};

static bool refused(unsigned long a, size_t n)
{
	return overlaps(a, n, fm.base, fm.len) || overlaps(a, n, fm.bad, fm.bad_len);
}

long copy_from_kernel_nofault(void *dst, const void *src, size_t size)
{
	fm.nofault++;
	if (refused((unsigned long)src, size))
		return -EFAULT;
	copy(dst, src, size);
	return 0;
}

int shim_put_nofault(void *dst, const void *src, size_t size)
{
	fm.nofault++;
	if (refused((unsigned long)dst, size))
		return -EFAULT;
	copy(dst, src, size);
	return 0;
}
