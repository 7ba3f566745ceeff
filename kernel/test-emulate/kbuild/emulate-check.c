// SPDX-License-Identifier: GPL-2.0
/*
 * Compiles kernel/emulate.c as kernel code (see Kbuild), and checks on load the paths that the
 * userspace harness can only shim: instruction fetch and string operands through the real
 * copy_from_kernel_nofault() and __put_kernel_nofault() (including an unmapped page), and xmm
 * registers inside kernel_fpu_begin(). Loading fails (-EINVAL) if a check fails.
 *
 *   insmod pcinet_emulate_check.ko && rmmod pcinet_emulate_check
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>
#include <asm/fpu/api.h>

#include "../../emulate.c"

/* A fake MMIO region: any address in [FAKE_BASE, FAKE_BASE + FAKE_LEN) is served from fake[]. */
#define FAKE_BASE 0xffffc90012340000UL
#define FAKE_LEN 256

static u8 fake[FAKE_LEN];

static int fake_read(void *ctx, unsigned long addr, void *val, unsigned int size)
{
	if (addr < FAKE_BASE || addr - FAKE_BASE > FAKE_LEN - size)
		return -ERANGE;
	memcpy(val, fake + (addr - FAKE_BASE), size);
	return 0;
}

static int fake_write(void *ctx, unsigned long addr, const void *val, unsigned int size)
{
	if (addr < FAKE_BASE || addr - FAKE_BASE > FAKE_LEN - size)
		return -ERANGE;
	memcpy(fake + (addr - FAKE_BASE), val, size);
	return 0;
}

static const struct pcinet_mmio_ops fake_ops = { .read = fake_read, .write = fake_write };

static int failures;

static void check(bool ok, const char *what)
{
	pr_info("%s %s\n", ok ? "ok  " : "FAIL", what);
	failures += !ok;
}

static int emulate(const u8 *code, struct pt_regs *regs, unsigned long fault)
{
	regs->ip = (unsigned long)code;
	return pcinet_emulate(regs, fault, &fake_ops, NULL);
}

static int __init check_init(void)
{
	static const u8 mov_store[] = { 0x89, 0x03 };		/* mov %eax, (%rbx) */
	static const u8 rep_movsb[] = { 0xf3, 0xa4 };
	static const u8 movdqu_load[] = { 0xf3, 0x0f, 0x6f, 0x03 };	/* movdqu (%rbx), %xmm0 */
	static const u8 movdqu_store[] = { 0xf3, 0x0f, 0x7f, 0x03 };	/* movdqu %xmm0, (%rbx) */
	struct pt_regs regs = {};
	u8 *buf, *vbuf;
	int ret, i;
	u32 v;

	buf = kmalloc(64, GFP_KERNEL);
	vbuf = vmalloc(PAGE_SIZE);	/* followed by an unmapped guard page */
	if (!buf || !vbuf) {
		kfree(buf);
		vfree(vbuf);
		return -ENOMEM;
	}

	regs.ax = 0x1234abcd;
	regs.bx = FAKE_BASE + 8;
	ret = emulate(mov_store, &regs, regs.bx);
	memcpy(&v, fake + 8, 4);
	check(!ret && v == 0x1234abcd && regs.ip == (unsigned long)mov_store + 2,
	      "mov %eax, (%rbx) fetched from module data");

	/* rep movsb plain -> MMIO: the source through copy_from_kernel_nofault() */
	for (i = 0; i < 64; i++)
		buf[i] = i * 7;
	regs = (struct pt_regs){ .si = (unsigned long)buf, .di = FAKE_BASE + 64, .cx = 64 };
	ret = emulate(rep_movsb, &regs, regs.di);
	check(!ret && !memcmp(fake + 64, buf, 64) && !regs.cx, "rep movsb to MMIO");

	/* rep movsb MMIO -> plain: the destination through __put_kernel_nofault() */
	memset(buf, 0, 64);
	regs = (struct pt_regs){ .si = FAKE_BASE + 64, .di = (unsigned long)buf, .cx = 64 };
	ret = emulate(rep_movsb, &regs, regs.si);
	check(!ret && !memcmp(fake + 64, buf, 64), "rep movsb from MMIO");

	/* ... into an unmapped page: -EFAULT after the elements before it */
	regs = (struct pt_regs){ .si = FAKE_BASE, .di = (unsigned long)vbuf + PAGE_SIZE - 4, .cx = 16 };
	ret = emulate(rep_movsb, &regs, regs.si);
	check(ret == -EFAULT && regs.cx == 12 && regs.ip == (unsigned long)rep_movsb,
	      "rep movsb into an unmapped page: -EFAULT, rcx says how far");

	/* ... from an unmapped page */
	regs = (struct pt_regs){ .si = (unsigned long)vbuf + PAGE_SIZE, .di = FAKE_BASE, .cx = 4 };
	ret = emulate(rep_movsb, &regs, regs.di);
	check(ret == -EFAULT && regs.cx == 4, "rep movsb from an unmapped page: -EFAULT");

	/* instruction bytes running into an unmapped page */
	memcpy(vbuf + PAGE_SIZE - 1, movdqu_load, 1);
	regs = (struct pt_regs){ .bx = FAKE_BASE };
	ret = emulate(vbuf + PAGE_SIZE - 1, &regs, regs.bx);
	check(ret == -EFAULT, "instruction running into an unmapped page: -EFAULT");

	/* xmm0 live inside kernel_fpu_begin(): load 16 bytes of MMIO into it, store them back */
	for (i = 0; i < 16; i++)
		fake[128 + i] = 0xa0 + i;
	kernel_fpu_begin();
	regs = (struct pt_regs){ .bx = FAKE_BASE + 128 };
	ret = emulate(movdqu_load, &regs, regs.bx);
	regs.bx = FAKE_BASE + 160;
	ret = ret ? ret : emulate(movdqu_store, &regs, regs.bx);
	kernel_fpu_end();
	check(!ret && !memcmp(fake + 128, fake + 160, 16), "movdqu through xmm0 in kernel_fpu_begin()");

	kfree(buf);
	vfree(vbuf);
	pr_info("%s\n", failures ? "FAILED" : "PASSED");
	return failures ? -EINVAL : 0;
}

static void __exit check_exit(void)
{
}

module_init(check_init);
module_exit(check_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pcinet: build and in-kernel check of the MMIO instruction emulator");
