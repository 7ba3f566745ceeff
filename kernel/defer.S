/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pcinet: the way back into a sleepable context for an MMIO access that must wait.
 *
 * When a trapped access faults in a context that may sleep and the access has to wait for the
 * device (a read behind a write fence, a volatile read), mmio.c does not spin in the fault
 * handler: it notes the faulting instruction and address for the task and returns from the fault
 * to pcinet_defer_tramp instead, with every register as the instruction left them. The
 * trampoline saves them as a struct pt_regs (offsets checked in mmio.c), calls
 * pcinet_deferred_access(regs), which may sleep and emulates the instruction on regs, then
 * restores the registers and flags and continues at regs->ip with the original stack pointer.
 *
 * Stack, from the original stack pointer S down:
 *   S-8    flags on entry; then the continuation address (regs->ip)
 *   S-16   regs->flags to restore
 *   S-184  struct pt_regs (168 bytes)
 */
#include <linux/linkage.h>
#include <asm/nospec-branch.h>
#include <asm/unwind_hints.h>

#define PT_R15		0
#define PT_R14		8
#define PT_R13		16
#define PT_R12		24
#define PT_BP		32
#define PT_BX		40
#define PT_R11		48
#define PT_R10		56
#define PT_R9		64
#define PT_R8		72
#define PT_AX		80
#define PT_CX		88
#define PT_DX		96
#define PT_SI		104
#define PT_DI		112
#define PT_ORIG_AX	120
#define PT_IP		128
#define PT_CS		136
#define PT_FLAGS	144
#define PT_SP		152
#define PT_SS		160
#define PT_SIZE		168

	.text
SYM_CODE_START(pcinet_defer_tramp)
	UNWIND_HINT_EMPTY
	pushfq
	lea	-(PT_SIZE + 8)(%rsp), %rsp
	mov	%r15, PT_R15(%rsp)
	mov	%r14, PT_R14(%rsp)
	mov	%r13, PT_R13(%rsp)
	mov	%r12, PT_R12(%rsp)
	mov	%rbp, PT_BP(%rsp)
	mov	%rbx, PT_BX(%rsp)
	mov	%r11, PT_R11(%rsp)
	mov	%r10, PT_R10(%rsp)
	mov	%r9, PT_R9(%rsp)
	mov	%r8, PT_R8(%rsp)
	mov	%rax, PT_AX(%rsp)
	mov	%rcx, PT_CX(%rsp)
	mov	%rdx, PT_DX(%rsp)
	mov	%rsi, PT_SI(%rsp)
	mov	%rdi, PT_DI(%rsp)
	mov	(PT_SIZE + 8)(%rsp), %rax
	mov	%rax, PT_FLAGS(%rsp)
	lea	(PT_SIZE + 16)(%rsp), %rax
	mov	%rax, PT_SP(%rsp)
	movq	$-1, PT_ORIG_AX(%rsp)

	mov	%rsp, %rbp
	mov	%rsp, %rdi
	and	$-16, %rsp
	call	pcinet_deferred_access
	mov	%rbp, %rsp

	mov	PT_IP(%rsp), %rax
	mov	%rax, (PT_SIZE + 8)(%rsp)
	mov	PT_FLAGS(%rsp), %rax
	mov	%rax, PT_SIZE(%rsp)
	mov	PT_R15(%rsp), %r15
	mov	PT_R14(%rsp), %r14
	mov	PT_R13(%rsp), %r13
	mov	PT_R12(%rsp), %r12
	mov	PT_BP(%rsp), %rbp
	mov	PT_BX(%rsp), %rbx
	mov	PT_R11(%rsp), %r11
	mov	PT_R10(%rsp), %r10
	mov	PT_R9(%rsp), %r9
	mov	PT_R8(%rsp), %r8
	mov	PT_AX(%rsp), %rax
	mov	PT_CX(%rsp), %rcx
	mov	PT_DX(%rsp), %rdx
	mov	PT_SI(%rsp), %rsi
	mov	PT_DI(%rsp), %rdi
	lea	PT_SIZE(%rsp), %rsp
	popfq
	/* A plain return: a return thunk may change the flags we just restored. */
	ANNOTATE_UNRET_SAFE
	ret
	int3
SYM_CODE_END(pcinet_defer_tramp)
