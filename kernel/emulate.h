/* SPDX-License-Identifier: GPL-2.0 */
/*
 * pcinet: emulation of the x86-64 instruction that faulted on a trapped MMIO mapping.
 *
 * The module maps a device's BARs so that every access faults; the fault handler hands the
 * faulting instruction to pcinet_emulate(), which decodes it, performs its memory access through
 * the ops below (which carry it to the device) and applies its effects to the registers.
 */
#ifndef PCINET_EMULATE_H
#define PCINET_EMULATE_H

struct pt_regs;

struct pcinet_mmio_ops {
	/* addr: inside the faulting trapped mapping, or (string moves) one mapped() says is trapped */
	int (*read)(void *ctx, unsigned long addr, void *val, unsigned int size);
	int (*write)(void *ctx, unsigned long addr, const void *val, unsigned int size);
	/* Optional: whether addr is in a trapped mapping too, so that a string move between two
	 * (memcpy_fromio() into another BAR) reaches both through the ops; without it, the operand
	 * that did not fault is taken for plain memory.
	 */
	bool (*mapped)(void *ctx, unsigned long addr);
};

/*
 * Elements of one rep string move done per call. A longer one (rcx beyond this) is done in
 * pieces: pcinet_emulate() returns 0 with rcx/rsi/rdi advanced and regs->ip unchanged, exactly
 * the state the CPU leaves when it interrupts a rep string instruction; returning to it resumes
 * the move, which faults again. 1M elements is a 4 MiB memcpy_toio() in 32-bit moves.
 */
#define PCINET_EMULATE_MAX_REP (1UL << 20)

/*
 * Emulates the instruction at regs->ip, which faulted accessing fault_addr. On success applies
 * its effects (registers, flags, memory via ops), advances regs->ip and returns 0; returns
 * -EOPNOTSUPP for an instruction it does not handle, -EFAULT if the instruction bytes or a
 * non-MMIO operand cannot be read/written, or if the decoded memory operand does not contain
 * fault_addr. String moves (rep movs/stos/lods, with any direction flag, either operand in MMIO,
 * or both when ops->mapped says so) are handled completely in one call (see
 * PCINET_EMULATE_MAX_REP), calling ops per element.
 *
 * Accesses go to ops with the instruction's operand size: 1, 2, 4, 8, or 16 for 128-bit SSE
 * moves. An error from ops is returned as is, with the registers unchanged (for string moves:
 * advanced past the elements already done, so that re-executing the instruction continues it).
 *
 * SSE moves read and write the xmm registers directly: valid in the fault handler, which runs
 * with the interrupted context's registers live (kernel_fpu_begin() sections do not sleep), as
 * long as nothing between the fault and this call used the FPU or scheduled.
 */
int pcinet_emulate(struct pt_regs *regs, unsigned long fault_addr,
		   const struct pcinet_mmio_ops *ops, void *ctx);

#endif /* PCINET_EMULATE_H */
