/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What kernel/emulate.c needs from the kernel, for the userspace harness. The nofault accessors
 * are implemented in fake-mmio.c, which refuses the fake MMIO region the way a trapped mapping
 * would fault.
 */
#ifndef EMULATE_SHIM_H
#define EMULATE_SHIM_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;

/* Same field names as arch/x86/include/asm/ptrace.h (64-bit). */
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx;
	unsigned long r11, r10, r9, r8, ax, cx, dx, si, di;
	unsigned long orig_ax, ip, cs, flags, sp, ss;
};

#define PAGE_SIZE 4096UL
#define PAGE_MASK (~(PAGE_SIZE - 1))

#define X86_EFLAGS_CF 0x0001UL
#define X86_EFLAGS_PF 0x0004UL
#define X86_EFLAGS_AF 0x0010UL
#define X86_EFLAGS_ZF 0x0040UL
#define X86_EFLAGS_SF 0x0080UL
#define X86_EFLAGS_DF 0x0400UL
#define X86_EFLAGS_OF 0x0800UL

long copy_from_kernel_nofault(void *dst, const void *src, size_t size);
int shim_put_nofault(void *dst, const void *src, size_t size);

#define pagefault_disable() do { } while (0)
#define pagefault_enable() do { } while (0)
#define __put_kernel_nofault(dst, src, type, err_label)			\
	do {								\
		if (shim_put_nofault((dst), (src), sizeof(type)))	\
			goto err_label;					\
	} while (0)

#endif
