// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: x86-64 instruction emulation for trapped MMIO (see emulate.h).
 *
 * Intel SDM Vol. 2, chapter 2 (instruction format) and the opcode map of appendix A. Only 64-bit
 * mode, and only what kernel MMIO accessors and drivers compile to: moves (mov, movzx/movsx,
 * movsxd, movnti, moffs, string moves), the ALU ops of the 00-3F and 80-83 rows, test, xchg,
 * not/neg/inc/dec, and SSE moves between memory and xmm registers. Everything else, and every
 * form that cannot address MMIO (register operands, fs/gs, lock, 32-bit addressing, VEX), is
 * refused with -EOPNOTSUPP rather than guessed at.
 *
 * Effects are committed only after the MMIO access succeeded, so a failed call leaves the
 * registers as they were (string moves: as they are after the elements already done).
 *
 * Userspace builds (kernel/test-emulate/) compile this file unmodified against a shim header.
 */
#ifdef __KERNEL__
#include <linux/errno.h>
#include <linux/types.h>
#include <linux/uaccess.h>
#include <asm/page.h>
#include <asm/processor-flags.h>
#include <asm/ptrace.h>
#else
#include "emulate-shim.h"
#endif
#include "emulate.h"

/* SDM Vol. 2, 2.3.11: an instruction is at most 15 bytes long. */
#define MAX_INSN_LEN 15

#define FLAGS_ARITH (X86_EFLAGS_CF | X86_EFLAGS_PF | X86_EFLAGS_AF | X86_EFLAGS_ZF | \
		     X86_EFLAGS_SF | X86_EFLAGS_OF)

/* General-purpose registers in encoding order (SDM Vol. 2, table 2-2 and 3.1.1.3). */
enum {
	REG_AX, REG_CX, REG_DX, REG_BX, REG_SP, REG_BP, REG_SI, REG_DI,
	REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
};

/* The ALU operations, numbered as the reg field of opcodes 80-83 and bits 5:3 of 00-3F. */
enum alu_op {
	ALU_ADD, ALU_OR, ALU_ADC, ALU_SBB, ALU_AND, ALU_SUB, ALU_XOR, ALU_CMP,
	ALU_TEST, ALU_INC, ALU_DEC, ALU_NEG,
};

struct emu {
	struct pt_regs *regs;
	unsigned long fault;
	const struct pcinet_mmio_ops *ops;
	void *ctx;

	u8 buf[MAX_INSN_LEN];
	unsigned int fetched;	/* bytes of buf read from regs->ip on */
	unsigned int len;	/* bytes of buf decoded */

	bool has_rex;
	u8 rex;
	bool opsize;		/* 66 */
	u8 rep;			/* 0, or the last of F2/F3 */

	/* the memory operand of the ModRM byte */
	u8 reg;			/* ModRM.reg, with REX.R */
	u8 reg_field;		/* ModRM.reg alone: the sub-opcode of group opcodes */
	bool rip_relative;
	unsigned long ea;
};

#define REX_W(e) ((e)->rex & 8)
#define REX_R(e) ((e)->rex & 4)
#define REX_X(e) ((e)->rex & 2)
#define REX_B(e) ((e)->rex & 1)

static unsigned long *gpr(struct pt_regs *regs, unsigned int n)
{
	switch (n) {
	case REG_AX: return &regs->ax;
	case REG_CX: return &regs->cx;
	case REG_DX: return &regs->dx;
	case REG_BX: return &regs->bx;
	case REG_SP: return &regs->sp;
	case REG_BP: return &regs->bp;
	case REG_SI: return &regs->si;
	case REG_DI: return &regs->di;
	case REG_R8: return &regs->r8;
	case REG_R9: return &regs->r9;
	case REG_R10: return &regs->r10;
	case REG_R11: return &regs->r11;
	case REG_R12: return &regs->r12;
	case REG_R13: return &regs->r13;
	case REG_R14: return &regs->r14;
	default: return &regs->r15;
	}
}

static u64 size_mask(unsigned int size)
{
	return size >= 8 ? ~0ULL : (1ULL << (size * 8)) - 1;
}

static u64 sign_extend(u64 v, unsigned int size)
{
	unsigned int shift = 64 - size * 8;

	return size >= 8 ? v : (u64)((s64)(v << shift) >> shift);
}

/* Without a REX prefix, byte registers 4-7 are AH, CH, DH, BH (SDM Vol. 2, 3.7.2.1). */
static bool high_byte(const struct emu *e, unsigned int n, unsigned int size)
{
	return size == 1 && !e->has_rex && n >= 4 && n < 8;
}

static u64 get_reg(const struct emu *e, unsigned int n, unsigned int size)
{
	if (high_byte(e, n, size))
		return (*gpr(e->regs, n - 4) >> 8) & 0xff;
	return *gpr(e->regs, n) & size_mask(size);
}

/* 8- and 16-bit writes keep the rest of the register; 32-bit writes zero-extend to 64. */
static void set_reg(struct emu *e, unsigned int n, unsigned int size, u64 v)
{
	unsigned long *r;

	if (high_byte(e, n, size)) {
		r = gpr(e->regs, n - 4);
		*r = (*r & ~0xff00UL) | (unsigned long)(v & 0xff) << 8;
		return;
	}
	r = gpr(e->regs, n);
	if (size == 4)
		*r = (u32)v;
	else if (size < 4)
		*r = (*r & ~size_mask(size)) | (v & size_mask(size));
	else
		*r = v;
}

/* Instruction bytes are read page by page: the instruction may end just before an unmapped one. */
static int fetch(struct emu *e, u8 *b)
{
	unsigned long at;
	unsigned int n;

	if (e->len == e->fetched) {
		if (e->fetched == MAX_INSN_LEN)
			return -EOPNOTSUPP;	/* the CPU would have raised #GP */
		at = e->regs->ip + e->fetched;
		n = PAGE_SIZE - (at & (PAGE_SIZE - 1));
		if (n > MAX_INSN_LEN - e->fetched)
			n = MAX_INSN_LEN - e->fetched;
		if (copy_from_kernel_nofault(e->buf + e->fetched, (const void *)at, n))
			return -EFAULT;
		e->fetched += n;
	}
	*b = e->buf[e->len++];
	return 0;
}

/* A little-endian immediate or displacement of size bytes, zero-extended. */
static int fetch_imm(struct emu *e, unsigned int size, u64 *v)
{
	unsigned int i;
	u8 b;
	int ret;

	*v = 0;
	for (i = 0; i < size; i++) {
		ret = fetch(e, &b);
		if (ret)
			return ret;
		*v |= (u64)b << (8 * i);
	}
	return 0;
}

/*
 * ModRM and SIB (SDM Vol. 2, 2.1.5 and 2.2.1): only memory forms; a register operand (mod 11)
 * cannot be what faulted. RIP-relative addresses are completed by finish() once the length of
 * the instruction is known.
 */
static int decode_modrm(struct emu *e)
{
	unsigned int mod, rm, base, index, disp_size = 0;
	u8 modrm, sib;
	u64 disp;
	int ret;

	ret = fetch(e, &modrm);
	if (ret)
		return ret;
	mod = modrm >> 6;
	rm = modrm & 7;
	e->reg_field = (modrm >> 3) & 7;
	e->reg = e->reg_field | (REX_R(e) ? 8 : 0);
	if (mod == 3)
		return -EOPNOTSUPP;

	e->ea = 0;
	if (rm == 4) {
		ret = fetch(e, &sib);
		if (ret)
			return ret;
		index = ((sib >> 3) & 7) | (REX_X(e) ? 8 : 0);
		base = (sib & 7) | (REX_B(e) ? 8 : 0);
		if (index != REG_SP)	/* 100 without REX.X: no index */
			e->ea += *gpr(e->regs, index) << (sib >> 6);
		if ((sib & 7) == 5 && mod == 0)	/* no base, disp32 (also with REX.B) */
			disp_size = 4;
		else
			e->ea += *gpr(e->regs, base);
	} else if (rm == 5 && mod == 0) {
		e->rip_relative = true;
		disp_size = 4;
	} else {
		e->ea += *gpr(e->regs, rm | (REX_B(e) ? 8 : 0));
	}
	if (mod == 1)
		disp_size = 1;
	else if (mod == 2)
		disp_size = 4;
	if (disp_size) {
		ret = fetch_imm(e, disp_size, &disp);
		if (ret)
			return ret;
		e->ea += sign_extend(disp, disp_size);
	}
	return 0;
}

/* Called when the whole instruction is decoded: RIP-relative is relative to the next one. */
static unsigned long finish(struct emu *e)
{
	if (e->rip_relative) {
		e->ea += e->regs->ip + e->len;
		e->rip_relative = false;
	}
	return e->regs->ip + e->len;
}

/* The decoded operand must be the access that faulted, or our decoding disagrees with the CPU's. */
static int check_operand(const struct emu *e, unsigned long addr, unsigned int size)
{
	return e->fault - addr < size ? 0 : -EFAULT;
}

static int mmio_read(struct emu *e, u64 *v, unsigned int size)
{
	int ret = check_operand(e, e->ea, size);

	*v = 0;		/* x86 is little-endian: the low bytes of v hold the value */
	return ret ? ret : e->ops->read(e->ctx, e->ea, v, size);
}

static int mmio_write(struct emu *e, u64 v, unsigned int size)
{
	int ret = check_operand(e, e->ea, size);

	return ret ? ret : e->ops->write(e->ctx, e->ea, &v, size);
}

static bool parity_even(u64 v)
{
	v &= 0xff;
	v ^= v >> 4;
	v ^= v >> 2;
	v ^= v >> 1;
	return !(v & 1);
}

/*
 * dst op src on size bytes; returns the result and stores the new arithmetic flags in *flags
 * (SDM Vol. 1, 3.4.3.1 and each instruction's "Flags Affected"). AF is undefined after the
 * logical ops; it is cleared, as current CPUs do.
 */
static u64 alu(enum alu_op op, u64 dst, u64 src, unsigned int size, unsigned long *flags)
{
	u64 mask = size_mask(size), sign = 1ULL << (size * 8 - 1);
	u64 cf_in = *flags & X86_EFLAGS_CF ? 1 : 0;
	bool carry = false, overflow = false, arith = true;
	unsigned long f = 0;
	u64 res;

	dst &= mask;
	src &= mask;
	switch (op) {
	case ALU_INC:
	case ALU_ADD:
	case ALU_ADC:
		res = dst + src + (op == ALU_ADC ? cf_in : 0);
		carry = ((dst & src) | ((dst | src) & ~res)) & sign;
		overflow = ((dst ^ res) & (src ^ res)) & sign;
		break;
	case ALU_DEC:
	case ALU_NEG:
	case ALU_SUB:
	case ALU_SBB:
	case ALU_CMP:
		res = dst - src - (op == ALU_SBB ? cf_in : 0);
		carry = ((~dst & src) | ((~dst | src) & res)) & sign;
		overflow = ((dst ^ src) & (dst ^ res)) & sign;
		break;
	case ALU_OR:
		res = dst | src;
		arith = false;
		break;
	case ALU_XOR:
		res = dst ^ src;
		arith = false;
		break;
	default:	/* ALU_AND, ALU_TEST */
		res = dst & src;
		arith = false;
		break;
	}
	res &= mask;

	if (carry)
		f |= X86_EFLAGS_CF;
	if (overflow)
		f |= X86_EFLAGS_OF;
	if (arith && ((dst ^ src ^ res) & 0x10))
		f |= X86_EFLAGS_AF;
	if (!res)
		f |= X86_EFLAGS_ZF;
	if (res & sign)
		f |= X86_EFLAGS_SF;
	if (parity_even(res))
		f |= X86_EFLAGS_PF;
	if (op == ALU_INC || op == ALU_DEC)	/* they keep CF */
		f = (f & ~X86_EFLAGS_CF) | (*flags & X86_EFLAGS_CF);
	*flags = (*flags & ~FLAGS_ARITH) | f;
	return res;
}

static bool alu_writes(enum alu_op op)
{
	return op != ALU_CMP && op != ALU_TEST;
}

/* op [mem], src: read-modify-write (or only read, for cmp and test). */
static int alu_to_mem(struct emu *e, enum alu_op op, u64 src, unsigned int size, unsigned long next)
{
	unsigned long flags = e->regs->flags;
	u64 v;
	int ret;

	ret = mmio_read(e, &v, size);
	if (ret)
		return ret;
	if (op == ALU_NEG) {
		src = v;
		v = 0;
	}
	v = alu(op, v, src, size, &flags);
	if (alu_writes(op)) {
		ret = mmio_write(e, v, size);
		if (ret)
			return ret;
	}
	e->regs->flags = flags;
	e->regs->ip = next;
	return 0;
}

/* op reg, [mem] */
static int alu_to_reg(struct emu *e, enum alu_op op, unsigned int size, unsigned long next)
{
	unsigned long flags = e->regs->flags;
	u64 v;
	int ret;

	ret = mmio_read(e, &v, size);
	if (ret)
		return ret;
	v = alu(op, get_reg(e, e->reg, size), v, size, &flags);
	if (alu_writes(op))
		set_reg(e, e->reg, size, v);
	e->regs->flags = flags;
	e->regs->ip = next;
	return 0;
}

static int load(struct emu *e, unsigned int reg, unsigned int size, unsigned int dst_size,
		bool sign, unsigned long next)
{
	u64 v;
	int ret;

	ret = mmio_read(e, &v, size);
	if (ret)
		return ret;
	set_reg(e, reg, dst_size, sign ? sign_extend(v, size) : v);
	e->regs->ip = next;
	return 0;
}

static int store(struct emu *e, u64 v, unsigned int size, unsigned long next)
{
	int ret;

	ret = mmio_write(e, v, size);
	if (ret)
		return ret;
	e->regs->ip = next;
	return 0;
}

static int exchange(struct emu *e, unsigned int size, unsigned long next)
{
	u64 old;
	int ret;

	ret = mmio_read(e, &old, size);
	if (ret)
		return ret;
	ret = mmio_write(e, get_reg(e, e->reg, size), size);
	if (ret)
		return ret;
	set_reg(e, e->reg, size, old);
	e->regs->ip = next;
	return 0;
}

/*
 * The non-MMIO operand of a string move. copy_to_kernel_nofault() is not exported to modules;
 * this is what it does, for one element of 1, 2, 4 or 8 bytes.
 */
static int read_nofault(unsigned long addr, u64 *v, unsigned int size)
{
	*v = 0;
	return copy_from_kernel_nofault(v, (const void *)addr, size) ? -EFAULT : 0;
}

static int write_nofault(unsigned long addr, u64 v, unsigned int size)
{
	u8 b = v;
	u16 w = v;
	u32 l = v;

	pagefault_disable();
	switch (size) {
	case 1:
		__put_kernel_nofault((void *)addr, &b, u8, fault);
		break;
	case 2:
		__put_kernel_nofault((void *)addr, &w, u16, fault);
		break;
	case 4:
		__put_kernel_nofault((void *)addr, &l, u32, fault);
		break;
	default:
		__put_kernel_nofault((void *)addr, &v, u64, fault);
		break;
	}
	pagefault_enable();
	return 0;
fault:
	pagefault_enable();
	return -EFAULT;
}

/*
 * Does fault_addr lie in the bytes that n elements from start touch? (Fast-string moves may
 * fault on a later element than the next one; registers still point at the next one.)
 */
static bool in_run(const struct emu *e, unsigned long start, unsigned long n,
		   unsigned int size, bool down)
{
	unsigned long lo = down ? start - (n - 1) * size : start;

	return e->fault - lo < n * size;
}

/*
 * Whether a string element at addr is MMIO. The faulting operand's run is from the faulting page
 * on, in the direction of the move (mappings are trapped whole pages at a time, so any elements
 * before that page are plain memory); any element is MMIO where ops->mapped() says its address is
 * trapped: a move between two BARs (or two pages of one) has both operands there.
 */
struct mapped_page {
	unsigned long page;	/* the page last asked about (~0: none yet) */
	bool mapped;		/* ... and the answer: ops->mapped() once per page, not per element */
};

static bool string_elem_mmio(struct emu *e, unsigned long addr, unsigned int size, bool faulted,
			     unsigned long page, bool down, struct mapped_page *seen)
{
	if (faulted && (down ? addr < page + PAGE_SIZE : addr + size > page))
		return true;
	if (!e->ops->mapped)
		return false;
	if ((addr & PAGE_MASK) != seen->page) {
		seen->page = addr & PAGE_MASK;
		seen->mapped = e->ops->mapped(e->ctx, addr);
	}
	return seen->mapped;
}

/*
 * rep movs/stos/lods (SDM Vol. 2, MOVS, STOS, LODS, REP). The operand whose run contains
 * fault_addr is MMIO; the other is plain memory unless it is trapped too (string_elem_mmio()).
 */
static int string_op(struct emu *e, u8 op, unsigned int size, unsigned long next)
{
	struct pt_regs *regs = e->regs;
	bool down = regs->flags & X86_EFLAGS_DF;
	bool reads = op != 0xaa, writes = op != 0xac;	/* stos only writes, lods only reads */
	unsigned long page = e->fault & ~(PAGE_SIZE - 1);
	unsigned long n = e->rep ? regs->cx : 1;
	struct mapped_page src_seen = { ~0UL, false }, dst_seen = { ~0UL, false };
	unsigned long i;
	bool src_mmio;
	int ret;

	if (n > PCINET_EMULATE_MAX_REP)
		n = PCINET_EMULATE_MAX_REP;
	if (n == 0) {
		regs->ip = next;
		return 0;
	}
	if (reads && in_run(e, regs->si, n, size, down))
		src_mmio = true;
	else if (writes && in_run(e, regs->di, n, size, down))
		src_mmio = false;
	else
		return -EFAULT;

	for (i = 0; i < n; i++) {
		u64 v;

		ret = 0;
		if (!reads) {
			v = regs->ax & size_mask(size);
		} else if (string_elem_mmio(e, regs->si, size, src_mmio, page, down, &src_seen)) {
			v = 0;
			ret = e->ops->read(e->ctx, regs->si, &v, size);
		} else {
			ret = read_nofault(regs->si, &v, size);
		}
		if (reads && ret)
			return ret;

		if (!writes)
			set_reg(e, REG_AX, size, v);
		else if (string_elem_mmio(e, regs->di, size, !src_mmio, page, down, &dst_seen))
			ret = e->ops->write(e->ctx, regs->di, &v, size);
		else
			ret = write_nofault(regs->di, v, size);
		if (writes && ret)
			return ret;

		if (reads)
			regs->si += down ? -(unsigned long)size : size;
		if (writes)
			regs->di += down ? -(unsigned long)size : size;
		if (e->rep)
			regs->cx--;
	}
	if (!e->rep || !regs->cx)
		regs->ip = next;
	return 0;
}

/*
 * SSE moves between memory and xmm registers. The registers are read and written directly
 * (see emulate.h); the kernel is built without SSE, so only these asm statements touch them.
 */
struct xmm {
	u64 q[2];
};

static void xmm_get(unsigned int n, struct xmm *x)
{
	switch (n) {
	case 0:
		asm volatile("movdqu %%xmm0, %0" : "=m" (*x));
		break;
	case 1:
		asm volatile("movdqu %%xmm1, %0" : "=m" (*x));
		break;
	case 2:
		asm volatile("movdqu %%xmm2, %0" : "=m" (*x));
		break;
	case 3:
		asm volatile("movdqu %%xmm3, %0" : "=m" (*x));
		break;
	case 4:
		asm volatile("movdqu %%xmm4, %0" : "=m" (*x));
		break;
	case 5:
		asm volatile("movdqu %%xmm5, %0" : "=m" (*x));
		break;
	case 6:
		asm volatile("movdqu %%xmm6, %0" : "=m" (*x));
		break;
	case 7:
		asm volatile("movdqu %%xmm7, %0" : "=m" (*x));
		break;
	case 8:
		asm volatile("movdqu %%xmm8, %0" : "=m" (*x));
		break;
	case 9:
		asm volatile("movdqu %%xmm9, %0" : "=m" (*x));
		break;
	case 10:
		asm volatile("movdqu %%xmm10, %0" : "=m" (*x));
		break;
	case 11:
		asm volatile("movdqu %%xmm11, %0" : "=m" (*x));
		break;
	case 12:
		asm volatile("movdqu %%xmm12, %0" : "=m" (*x));
		break;
	case 13:
		asm volatile("movdqu %%xmm13, %0" : "=m" (*x));
		break;
	case 14:
		asm volatile("movdqu %%xmm14, %0" : "=m" (*x));
		break;
	default:
		asm volatile("movdqu %%xmm15, %0" : "=m" (*x));
		break;
	}
}

static void xmm_set(unsigned int n, const struct xmm *x)
{
	switch (n) {
	case 0:
		asm volatile("movdqu %0, %%xmm0" : : "m" (*x));
		break;
	case 1:
		asm volatile("movdqu %0, %%xmm1" : : "m" (*x));
		break;
	case 2:
		asm volatile("movdqu %0, %%xmm2" : : "m" (*x));
		break;
	case 3:
		asm volatile("movdqu %0, %%xmm3" : : "m" (*x));
		break;
	case 4:
		asm volatile("movdqu %0, %%xmm4" : : "m" (*x));
		break;
	case 5:
		asm volatile("movdqu %0, %%xmm5" : : "m" (*x));
		break;
	case 6:
		asm volatile("movdqu %0, %%xmm6" : : "m" (*x));
		break;
	case 7:
		asm volatile("movdqu %0, %%xmm7" : : "m" (*x));
		break;
	case 8:
		asm volatile("movdqu %0, %%xmm8" : : "m" (*x));
		break;
	case 9:
		asm volatile("movdqu %0, %%xmm9" : : "m" (*x));
		break;
	case 10:
		asm volatile("movdqu %0, %%xmm10" : : "m" (*x));
		break;
	case 11:
		asm volatile("movdqu %0, %%xmm11" : : "m" (*x));
		break;
	case 12:
		asm volatile("movdqu %0, %%xmm12" : : "m" (*x));
		break;
	case 13:
		asm volatile("movdqu %0, %%xmm13" : : "m" (*x));
		break;
	case 14:
		asm volatile("movdqu %0, %%xmm14" : : "m" (*x));
		break;
	default:
		asm volatile("movdqu %0, %%xmm15" : : "m" (*x));
		break;
	}
}

/*
 * 0F 10/11 movups/movupd/movss/movsd, 0F 28/29 movaps/movapd, 66 0F 6E/7E movd/movq,
 * F3 0F 7E and 66 0F D6 movq, 66/F3 0F 6F/7F movdqa/movdqu. Without 66/F2/F3 the 6E-7F and D6
 * rows are MMX (refused). Loads of less than 16 bytes zero the rest of the register.
 * size: bytes moved; 0 when the prefix/opcode pair is not one of these.
 */
static unsigned int sse_size(const struct emu *e, u8 op)
{
	bool p66 = e->opsize && !e->rep;

	switch (op) {
	case 0x10: case 0x11:
		return e->rep == 0xf3 ? 4 : e->rep == 0xf2 ? 8 : 16;
	case 0x28: case 0x29:
		return e->rep ? 0 : 16;
	case 0x6e: case 0x7e:
		if (op == 0x7e && e->rep == 0xf3 && !e->opsize)
			return 8;
		return p66 ? (REX_W(e) ? 8 : 4) : 0;
	case 0xd6:
		return p66 ? 8 : 0;
	case 0x6f: case 0x7f:
		return p66 || (e->rep == 0xf3 && !e->opsize) ? 16 : 0;
	}
	return 0;
}

static bool sse_is_load(const struct emu *e, u8 op)
{
	return op == 0x10 || op == 0x28 || op == 0x6e || op == 0x6f ||
	       (op == 0x7e && e->rep == 0xf3);
}

static int sse_move(struct emu *e, u8 op, unsigned long next)
{
	unsigned int size = sse_size(e, op);
	struct xmm x = { { 0, 0 } };
	int ret;

	if (!size)
		return -EOPNOTSUPP;
	ret = check_operand(e, e->ea, size);
	if (ret)
		return ret;
	if (sse_is_load(e, op)) {
		ret = e->ops->read(e->ctx, e->ea, &x, size);
		if (ret)
			return ret;
		xmm_set(e->reg, &x);
	} else {
		xmm_get(e->reg, &x);
		ret = e->ops->write(e->ctx, e->ea, &x, size);
		if (ret)
			return ret;
	}
	e->regs->ip = next;
	return 0;
}

/* Two-byte opcodes, 0F xx. */
static int emulate_0f(struct emu *e, unsigned int opsz)
{
	unsigned long next;
	u8 op;
	int ret;

	ret = fetch(e, &op);
	if (ret)
		return ret;
	switch (op) {
	case 0xb6: case 0xb7: case 0xbe: case 0xbf:	/* movzx, movsx */
	case 0xc3:					/* movnti */
		if (e->rep || (op == 0xc3 && e->opsize))
			return -EOPNOTSUPP;
		break;
	case 0x10: case 0x11: case 0x28: case 0x29:
	case 0x6e: case 0x6f: case 0x7e: case 0x7f: case 0xd6:
		if (!sse_size(e, op))
			return -EOPNOTSUPP;
		break;
	default:
		return -EOPNOTSUPP;
	}
	ret = decode_modrm(e);
	if (ret)
		return ret;
	next = finish(e);

	switch (op) {
	case 0xb6: case 0xb7:
		return load(e, e->reg, op & 1 ? 2 : 1, opsz, false, next);
	case 0xbe: case 0xbf:
		return load(e, e->reg, op & 1 ? 2 : 1, opsz, true, next);
	case 0xc3:
		return store(e, get_reg(e, e->reg, opsz), opsz, next);
	default:
		return sse_move(e, op, next);
	}
}

/* Opcodes after which the ModRM byte, and maybe an immediate, follow. */
static int emulate_modrm(struct emu *e, u8 op, unsigned int opsz)
{
	unsigned int size = op & 1 ? opsz : 1, imm_size = 0;
	unsigned long next;
	u64 imm = 0;
	int ret;

	ret = decode_modrm(e);
	if (ret)
		return ret;
	switch (op) {
	case 0x80: case 0xc6:
		imm_size = 1;
		break;
	case 0x81: case 0xc7:
		imm_size = size == 2 ? 2 : 4;
		break;
	case 0x83:
		imm_size = 1;
		break;
	case 0xf6: case 0xf7:
		if (e->reg_field >= 4)		/* mul, imul, div, idiv */
			return -EOPNOTSUPP;
		if (e->reg_field < 2)		/* test has an immediate, not and neg do not */
			imm_size = size == 1 ? 1 : size == 2 ? 2 : 4;
		break;
	case 0xfe: case 0xff:
		if (e->reg_field >= 2)		/* call, jmp, push through memory */
			return -EOPNOTSUPP;
		break;
	}
	if (imm_size) {
		ret = fetch_imm(e, imm_size, &imm);
		if (ret)
			return ret;
		imm = sign_extend(imm, imm_size);	/* imm32 for 64-bit operands, imm8 of 83 */
	}
	next = finish(e);

	if (op < 0x40) {
		enum alu_op alu_op = op >> 3;

		if (op & 2)
			return alu_to_reg(e, alu_op, size, next);
		return alu_to_mem(e, alu_op, get_reg(e, e->reg, size), size, next);
	}
	switch (op) {
	case 0x63:	/* movsxd; without REX.W a plain 16/32-bit load */
		return load(e, e->reg, opsz == 8 ? 4 : opsz, opsz, true, next);
	case 0x80: case 0x81: case 0x83:
		return alu_to_mem(e, e->reg_field, imm, size, next);
	case 0x84: case 0x85:
		return alu_to_mem(e, ALU_TEST, get_reg(e, e->reg, size), size, next);
	case 0x86: case 0x87:
		return exchange(e, size, next);
	case 0x88: case 0x89:
		return store(e, get_reg(e, e->reg, size), size, next);
	case 0x8a: case 0x8b:
		return load(e, e->reg, size, size, false, next);
	case 0xc6: case 0xc7:
		if (e->reg_field != 0)
			return -EOPNOTSUPP;
		return store(e, imm, size, next);
	case 0xf6: case 0xf7:
		if (e->reg_field == 2) {	/* not: no flags */
			u64 v;

			ret = mmio_read(e, &v, size);
			if (ret)
				return ret;
			return store(e, ~v, size, next);
		}
		if (e->reg_field == 3)
			return alu_to_mem(e, ALU_NEG, 0, size, next);
		return alu_to_mem(e, ALU_TEST, imm, size, next);
	default:	/* fe, ff: inc, dec */
		return alu_to_mem(e, e->reg_field ? ALU_DEC : ALU_INC, 1, size, next);
	}
}

static int emulate_moffs(struct emu *e, u8 op, unsigned int opsz)
{
	unsigned int size = op & 1 ? opsz : 1;
	unsigned long next;
	u64 addr;
	int ret;

	ret = fetch_imm(e, 8, &addr);	/* 64-bit absolute address */
	if (ret)
		return ret;
	e->ea = addr;
	next = finish(e);
	if (op & 2)
		return store(e, get_reg(e, REG_AX, size), size, next);
	return load(e, REG_AX, size, size, false, next);
}

int pcinet_emulate(struct pt_regs *regs, unsigned long fault_addr,
		   const struct pcinet_mmio_ops *ops, void *ctx)
{
	struct emu e = { .regs = regs, .fault = fault_addr, .ops = ops, .ctx = ctx };
	unsigned int i, opsz;
	u8 op = 0;
	int ret;

	/* Legacy prefixes in any order, then at most one REX, which must come last. */
	for (i = 0; i < MAX_INSN_LEN; i++) {
		ret = fetch(&e, &op);
		if (ret)
			return ret;
		if ((op & 0xf0) == 0x40) {
			e.has_rex = true;
			e.rex = op;
			continue;
		}
		switch (op) {
		case 0x66:
			e.opsize = true;
			break;
		case 0xf2: case 0xf3:
			e.rep = op;
			break;
		case 0x26: case 0x2e: case 0x36: case 0x3e:	/* null segments in 64-bit mode */
			break;
		case 0x64: case 0x65:	/* fs, gs: we do not know their bases */
		case 0xf0:		/* lock: we cannot make an MMIO read-modify-write atomic */
		case 0x67:		/* 32-bit addressing: no kernel code uses it */
			return -EOPNOTSUPP;
		default:
			goto opcode;
		}
		e.has_rex = false;	/* a REX followed by a legacy prefix is ignored */
		e.rex = 0;
	}
	return -EOPNOTSUPP;

opcode:
	opsz = REX_W(&e) ? 8 : e.opsize ? 2 : 4;
	if (op == 0x0f)
		return emulate_0f(&e, opsz);

	/* F2/F3 only mean rep for string moves; elsewhere they are other instructions or hints. */
	switch (op) {
	case 0xa4: case 0xa5: case 0xaa: case 0xab: case 0xac: case 0xad:
		return string_op(&e, op & ~1, op & 1 ? opsz : 1, finish(&e));
	}
	if (e.rep)
		return -EOPNOTSUPP;

	switch (op) {
	case 0x00 ... 0x03: case 0x08 ... 0x0b: case 0x10 ... 0x13: case 0x18 ... 0x1b:
	case 0x20 ... 0x23: case 0x28 ... 0x2b: case 0x30 ... 0x33: case 0x38 ... 0x3b:
	case 0x63: case 0x80: case 0x81: case 0x83: case 0x84 ... 0x8b:
	case 0xc6: case 0xc7: case 0xf6: case 0xf7: case 0xfe: case 0xff:
		return emulate_modrm(&e, op, opsz);
	case 0xa0 ... 0xa3:
		return emulate_moffs(&e, op, opsz);
	}
	return -EOPNOTSUPP;
}
