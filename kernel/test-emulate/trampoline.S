/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Runs one generated instruction natively with every register taken from a struct cpu (harness.c)
 * and stores every register back; and calls the emulator with given xmm contents. Layout of
 * struct cpu: gpr[16] in encoding order at 0, flags at 128, xmm[16] at 144.
 */
#define FLAGS 128
#define XMM 144

	.bss
	.balign 4096
	.globl arena, arena_m
arena:		.skip 4096	/* plain memory below the fake MMIO */
arena_m:	.skip 8192	/* the fake MMIO region */
		.skip 4096	/* plain memory above it */
g_cpu:		.skip 8
g_target:	.skip 8
g_rsp:		.skip 8
g_rdi:		.skip 8

	.text
/* void run_native(struct cpu *c, const void *insn) */
	.globl run_native
run_native:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rdi, g_cpu(%rip)
	mov %rsi, g_target(%rip)
	mov %rsp, g_rsp(%rip)
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	movdqu XMM+16*\n(%rdi), %xmm\n
	.endr
	pushq FLAGS(%rdi)
	popfq
	mov 0*8(%rdi), %rax
	mov 1*8(%rdi), %rcx
	mov 2*8(%rdi), %rdx
	mov 3*8(%rdi), %rbx
	mov 4*8(%rdi), %rsp
	mov 5*8(%rdi), %rbp
	mov 6*8(%rdi), %rsi
	mov 8*8(%rdi), %r8
	mov 9*8(%rdi), %r9
	mov 10*8(%rdi), %r10
	mov 11*8(%rdi), %r11
	mov 12*8(%rdi), %r12
	mov 13*8(%rdi), %r13
	mov 14*8(%rdi), %r14
	mov 15*8(%rdi), %r15
	mov 7*8(%rdi), %rdi
	jmp *g_target(%rip)

/* Every generated instruction jumps here. Only moves until the flags are saved. */
	.globl native_return
native_return:
	mov %rdi, g_rdi(%rip)
	mov g_cpu(%rip), %rdi
	mov %rax, 0*8(%rdi)
	mov %rcx, 1*8(%rdi)
	mov %rdx, 2*8(%rdi)
	mov %rbx, 3*8(%rdi)
	mov %rsp, 4*8(%rdi)
	mov %rbp, 5*8(%rdi)
	mov %rsi, 6*8(%rdi)
	mov %r8, 8*8(%rdi)
	mov %r9, 9*8(%rdi)
	mov %r10, 10*8(%rdi)
	mov %r11, 11*8(%rdi)
	mov %r12, 12*8(%rdi)
	mov %r13, 13*8(%rdi)
	mov %r14, 14*8(%rdi)
	mov %r15, 15*8(%rdi)
	mov g_rdi(%rip), %rax
	mov %rax, 7*8(%rdi)
	mov g_rsp(%rip), %rsp
	pushfq
	popq FLAGS(%rdi)
	cld
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	movdqu %xmm\n, XMM+16*\n(%rdi)
	.endr
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret

/*
 * int emulate_with_xmm(struct pt_regs *regs, unsigned long fault, const struct pcinet_mmio_ops *ops,
 *                      const void *xmm_in, void *xmm_out)
 * Nothing but the emulator (built with -mgeneral-regs-only) runs between loading and storing.
 */
	.globl emulate_with_xmm
emulate_with_xmm:
	push %rbx
	mov %r8, %rbx
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	movdqu 16*\n(%rcx), %xmm\n
	.endr
	xor %ecx, %ecx
	call pcinet_emulate
	.irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	movdqu %xmm\n, 16*\n(%rbx)
	.endr
	pop %rbx
	ret

	.section .note.GNU-stack, "", @progbits
