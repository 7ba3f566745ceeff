// SPDX-License-Identifier: GPL-2.0
/*
 * Differential test of kernel/emulate.c: every generated instruction (cases.S) runs natively on
 * plain memory and through pcinet_emulate() on a fake MMIO region at the same addresses (ops
 * backed by a shadow buffer), from the same random registers, flags, xmm registers and memory;
 * registers, flags, xmm registers, memory and the new ip must match. Then targeted tests of the
 * error paths: refused instructions, a fault address that is not the operand, unreadable
 * instruction bytes, unreadable string operands, ops failing in the middle of a rep, and rep
 * moves longer than PCINET_EMULATE_MAX_REP.
 *
 *   harness [-n CASES] [-s SEED] [-v]
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cases.h"
#include "fake-mmio.h"

#define ARENA_LEN 16384
#define MMIO_OFF 4096
#define MMIO_LEN 8192
#define ARITH_FLAGS (X86_EFLAGS_CF | X86_EFLAGS_PF | X86_EFLAGS_AF | X86_EFLAGS_ZF | \
		     X86_EFLAGS_SF | X86_EFLAGS_OF)
/* Failures printed in full before the rest are only counted. */
#define MAX_REPORTS 20

struct xmm {
	u64 q[2];
};

struct cpu {
	u64 gpr[16];	/* encoding order: ax cx dx bx sp bp si di r8..r15 */
	u64 flags;
	u64 pad;
	struct xmm xmm[16];
};

void run_native(struct cpu *c, const void *insn);
int emulate_with_xmm(struct pt_regs *regs, unsigned long fault, const struct pcinet_mmio_ops *ops,
		     const void *xmm_in, void *xmm_out);
extern unsigned char arena[], arena_m[];

static const char *const names[16] = { "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15" };

static u64 rng;
static unsigned long failures, reports;
static int verbose;
static unsigned char shadow[MMIO_LEN];

static u64 rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dULL;
}

/* Register and memory values with the edges of every operand size well represented. */
static u64 interesting(void)
{
	switch (rnd() % 10) {
	case 0: return 0;
	case 1: return ~0ULL;
	case 2: return 1ULL << (rnd() % 64);
	case 3: return (1ULL << (rnd() % 64)) - 1;
	case 4: return rnd() & 0xff;
	case 5: return (u64)(s64)(s8)rnd();
	case 6: return 0x80ULL << (8 * (rnd() % 8));
	default: return rnd();
	}
}

static unsigned long *gpr(struct pt_regs *r, int n)
{
	unsigned long *const p[16] = { &r->ax, &r->cx, &r->dx, &r->bx, &r->sp, &r->bp, &r->si,
		&r->di, &r->r8, &r->r9, &r->r10, &r->r11, &r->r12, &r->r13, &r->r14, &r->r15 };

	return p[n];
}

static void to_regs(const struct cpu *c, struct pt_regs *r, const void *ip)
{
	memset(r, 0, sizeof(*r));
	for (int i = 0; i < 16; i++)
		*gpr(r, i) = c->gpr[i];
	r->flags = c->flags;
	r->ip = (unsigned long)ip;
}

static void random_cpu(struct cpu *c)
{
	for (int i = 0; i < 16; i++) {
		c->gpr[i] = interesting();
		c->xmm[i].q[0] = rnd();
		c->xmm[i].q[1] = rnd();
	}
	c->flags = 0x202 | (rnd() & ARITH_FLAGS);
	c->pad = 0;
}

static void reset_fm(void)
{
	memset(&fm, 0, sizeof(fm));
	fm.base = (unsigned long)arena_m;
	fm.len = MMIO_LEN;
	fm.shadow = shadow;
	fm.fail_after = -1;
}

static int report(const struct tcase *c, unsigned long iter, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int report(const struct tcase *c, unsigned long iter, const char *fmt, ...)
{
	va_list ap;

	failures++;
	if (reports++ >= MAX_REPORTS)
		return 1;
	printf("FAIL %s (iteration %lu): ", c ? c->text : "", iter);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	return 1;
}

/* The emulator's result against the native one; returns the number of differences. */
static int compare(const struct tcase *c, unsigned long iter, const struct cpu *in,
		   const struct cpu *nat, const struct pt_regs *emu, const struct xmm *emu_xmm,
		   const unsigned char *mem_nat, const unsigned char *init)
{
	unsigned long mask = ARITH_FLAGS | X86_EFLAGS_DF;
	int bad = 0, i;

	if (c->af_undefined)
		mask &= ~X86_EFLAGS_AF;
	if (emu->ip != (unsigned long)c->end)
		bad += report(c, iter, "ip %+ld, want %+ld", (long)(emu->ip - (unsigned long)c->start),
			      (long)(c->end - c->start));
	for (i = 0; i < 16; i++)
		if (*gpr((struct pt_regs *)emu, i) != nat->gpr[i])
			bad += report(c, iter, "%s = %#lx, native %#llx (was %#llx)", names[i],
				      *gpr((struct pt_regs *)emu, i), (unsigned long long)nat->gpr[i],
				      (unsigned long long)in->gpr[i]);
	if ((emu->flags ^ nat->flags) & mask)
		bad += report(c, iter, "flags %#lx, native %#llx (was %#llx)", emu->flags & mask,
			      (unsigned long long)(nat->flags & mask),
			      (unsigned long long)(in->flags & mask));
	for (i = 0; i < 16; i++)
		if (memcmp(&emu_xmm[i], &nat->xmm[i], sizeof(struct xmm)))
			bad += report(c, iter, "xmm%d = %016llx%016llx, native %016llx%016llx", i,
				      (unsigned long long)emu_xmm[i].q[1], (unsigned long long)emu_xmm[i].q[0],
				      (unsigned long long)nat->xmm[i].q[1], (unsigned long long)nat->xmm[i].q[0]);
	for (i = 0; i < ARENA_LEN; i++) {
		bool in_mmio = i >= MMIO_OFF && i < MMIO_OFF + MMIO_LEN;
		unsigned char got = in_mmio ? shadow[i - MMIO_OFF] : arena[i];

		if (got != mem_nat[i]) {
			bad += report(c, iter, "memory at %s+%#x: %#x, native %#x (was %#x)",
				      in_mmio ? "mmio" : "arena", in_mmio ? i - MMIO_OFF : i, got,
				      mem_nat[i], init[i]);
			break;
		}
		if (in_mmio && arena[i] != init[i]) {
			bad += report(c, iter, "the emulator wrote MMIO directly at mmio+%#x", i - MMIO_OFF);
			break;
		}
	}
	if (fm.stray)
		bad += report(c, iter, "%lu ops calls outside MMIO or of a bad size", fm.stray);
	return bad;
}

/*
 * Registers that put the operand of a K_MEM case at a random MMIO spot; returns its address and
 * a fault address (some byte of it: an access that crosses a page faults past its start).
 */
static unsigned long place_operand(const struct tcase *c, struct cpu *cpu, unsigned long *fault)
{
	unsigned long m = (unsigned long)arena_m, t, align = c->align;
	u64 idx;

	if (c->form == F_ABS || c->form == F_RIP || c->form == F_MOFFS) {
		t = m + c->off;
	} else {
		if (c->form == F_NOBASE && c->scale > align)
			align = c->scale;
		t = m + rnd() % ((MMIO_LEN - c->size) / align + 1) * align;
	}
	switch (c->form) {
	case F_BASE: case F_DISP8: case F_DISP32: case F_NOINDEX:
		cpu->gpr[c->base] = t - c->disp;
		break;
	case F_SIB: case F_SIB8: case F_SIB32:
		idx = rnd() % 2 ? interesting() : rnd() % 64;
		cpu->gpr[c->index] = idx;
		cpu->gpr[c->base] = t - idx * c->scale - c->disp;
		break;
	case F_NOBASE:
		cpu->gpr[c->index] = (t - c->disp) / c->scale;
		break;
	}
	/* operands equal to a register or at an edge now and then: ZF, CF, OF on both sides */
	if (rnd() % 4 == 0) {
		u64 v = rnd() % 2 ? interesting() : cpu->gpr[rnd() % 16];

		memcpy((void *)t, &v, c->size < 8 ? c->size : 8);
	}
	*fault = t + rnd() % c->size;
	return t;
}

struct run {
	struct cpu in, nat;
	struct pt_regs emu;
	struct xmm emu_xmm[16];
	unsigned char init[ARENA_LEN], mem_nat[ARENA_LEN];
	unsigned long fault;
	int ret;
};

/* String moves: one operand in MMIO (maybe starting in the plain page before it), one plain. */
static unsigned long place_string(const struct tcase *c, struct cpu *cpu)
{
	unsigned long m = (unsigned long)arena_m, m_end = m + MMIO_LEN, s = c->size;
	unsigned long n = c->rep ? rnd() % 41 : 1, ne = n ? n : 1, len = ne * s;
	bool down = rnd() % 2, cross = n >= 2 && rnd() % 6 == 0;
	bool src_mmio = c->str_op == S_LODS || (c->str_op == S_MOVS && rnd() % 2);
	unsigned long a, b, lo, k = cross ? 1 + rnd() % (n - 1) : 0, fault;

	if (!down) {
		a = cross ? m - k * s : m + rnd() % (MMIO_LEN - len + 1);
		fault = cross ? m : a;
	} else {
		a = cross ? m_end - s + k * s : m + (ne - 1) * s + rnd() % (MMIO_LEN - len + 1);
		fault = cross ? m_end - s : a;
	}
	if (cross)
		lo = down ? (unsigned long)arena : m_end;
	else
		lo = rnd() % 2 ? (unsigned long)arena : m_end;
	b = lo + (down ? (ne - 1) * s : 0) + rnd() % (4096 - len + 1);

	cpu->flags = (cpu->flags & ~X86_EFLAGS_DF) | (down ? X86_EFLAGS_DF : 0);
	if (c->rep)
		cpu->gpr[1] = n;
	switch (c->str_op) {
	case S_MOVS:
		cpu->gpr[6] = src_mmio ? a : b;
		cpu->gpr[7] = src_mmio ? b : a;
		break;
	case S_STOS:
		cpu->gpr[7] = a;
		break;
	default:
		cpu->gpr[6] = a;
		break;
	}
	return fault;
}

static void run_one(const struct tcase *c, struct run *r, bool fresh)
{
	if (fresh) {
		random_cpu(&r->in);
		for (int i = 0; i < ARENA_LEN; i += 8) {
			u64 v = rnd() % 8 ? rnd() : interesting();

			memcpy(arena + i, &v, 8);
		}
		if (c->kind == K_STRING)
			r->fault = place_string(c, &r->in);
		else
			place_operand(c, &r->in, &r->fault);
		memcpy(r->init, arena, ARENA_LEN);
		r->nat = r->in;
		run_native(&r->nat, c->start);
		memcpy(r->mem_nat, arena, ARENA_LEN);
	}
	memcpy(arena, r->init, ARENA_LEN);
	reset_fm();
	memcpy(shadow, r->init + MMIO_OFF, MMIO_LEN);
	to_regs(&r->in, &r->emu, c->start);
	r->ret = emulate_with_xmm(&r->emu, r->fault, &fake_ops, r->in.xmm, r->emu_xmm);
}

static unsigned long differential(unsigned long total)
{
	static struct run r;
	unsigned long runs = 0, per, i, j, before;
	unsigned int nmem = 0;

	for (i = 0; i < ncases; i++)
		nmem += cases[i].kind != K_REJECT;
	per = total / nmem + 1;
	for (i = 0; i < ncases; i++) {
		const struct tcase *c = &cases[i];

		if (c->kind == K_REJECT)
			continue;
		before = failures;
		for (j = 0; j < per && failures - before < 3; j++, runs++) {
			run_one(c, &r, true);
			if (r.ret) {
				report(c, j, "returned %d", r.ret);
				continue;
			}
			compare(c, j, &r.in, &r.nat, &r.emu, r.emu_xmm, r.mem_nat, r.init);
		}
		if (verbose)
			printf("%-60s %lu runs%s\n", c->text, j, failures > before ? "  FAILED" : "");
	}
	return runs;
}

static int check(bool ok, const char *what)
{
	printf("%s %s\n", ok ? "ok  " : "FAIL", what);
	if (!ok)
		failures++;
	return ok;
}

static const struct tcase *find(const char *text)
{
	for (unsigned int i = 0; i < ncases; i++)
		if (!strcmp(cases[i].text, text))
			return &cases[i];
	fprintf(stderr, "no case %s\n", text);
	exit(2);
}

static bool regs_equal(const struct pt_regs *a, const struct pt_regs *b)
{
	return !memcmp(a, b, sizeof(*a));
}

/* Instructions that must be refused, with no access made and nothing changed. */
static void test_rejected(void)
{
	unsigned long bad = 0, n = 0;

	for (unsigned int i = 0; i < ncases; i++) {
		const struct tcase *c = &cases[i];
		struct pt_regs regs, before;
		struct cpu cpu;
		int ret;

		if (c->kind != K_REJECT)
			continue;
		n++;
		random_cpu(&cpu);
		cpu.gpr[0] = cpu.gpr[3] = cpu.gpr[6] = cpu.gpr[7] = (unsigned long)arena_m;
		cpu.gpr[1] = 1;
		reset_fm();
		to_regs(&cpu, &regs, c->start);
		before = regs;
		ret = pcinet_emulate(&regs, (unsigned long)arena_m, &fake_ops, NULL);
		if (ret != c->expect || !regs_equal(&regs, &before) || fm.reads || fm.writes) {
			printf("     %s: returned %d, want %d%s\n", c->text, ret, c->expect,
			       regs_equal(&regs, &before) ? "" : " (registers changed)");
			bad++;
		}
	}
	printf("     %lu refused instructions\n", n);
	check(!bad, "refused: lock, fs/gs, 67, register operands, unsupported opcodes");
}

/* A fault address outside the decoded operand: -EFAULT, no access, nothing changed. */
static void test_mismatch(void)
{
	static struct run r;
	unsigned long bad = 0, n = 0;

	for (unsigned int i = 0; i < ncases; i++) {
		const struct tcase *c = &cases[i];
		unsigned long t, fault;
		struct pt_regs before;

		if (c->kind != K_MEM)
			continue;
		random_cpu(&r.in);
		t = place_operand(c, &r.in, &fault);
		for (int side = 0; side < 2; side++, n++) {
			int ret;

			reset_fm();
			to_regs(&r.in, &r.emu, c->start);
			before = r.emu;
			fault = side ? t + c->size : t - 1;
			ret = emulate_with_xmm(&r.emu, fault, &fake_ops, r.in.xmm, r.emu_xmm);
			if (ret != -EFAULT || !regs_equal(&r.emu, &before) || fm.reads || fm.writes) {
				if (bad++ < 5)
					printf("     %s: fault at operand %s: returned %d\n", c->text,
					       side ? "+ size" : "- 1", ret);
			}
		}
	}
	printf("     %lu fault addresses outside the operand\n", n);
	check(!bad, "a fault address outside the decoded operand gives -EFAULT");
}

/* Instruction bytes: fetched page by page; an unreadable page only matters if the insn reaches it. */
static void test_fetch(void)
{
	static unsigned char page[3 * 4096] __attribute__((aligned(4096)));
	unsigned char *boundary = page + 2 * 4096;
	unsigned long bad = 0, n = 0;
	static struct run r;

	for (unsigned int i = 0; i < ncases; i++) {
		const struct tcase *c = &cases[i];
		unsigned long len = c->end - c->start;
		struct pt_regs ref;

		if (c->kind != K_MEM || c->form == F_RIP || i % 7)
			continue;
		run_one(c, &r, true);
		ref = r.emu;
		for (unsigned long k = 1; k <= len; k++, n++) {
			unsigned char *ip = boundary - k;
			struct pt_regs regs, before;
			int ret;

			memcpy(ip, c->start, len);
			for (int unreadable = 0; unreadable < 2; unreadable++) {
				memcpy(arena, r.init, ARENA_LEN);
				memcpy(shadow, r.init + MMIO_OFF, MMIO_LEN);
				reset_fm();
				if (unreadable) {
					fm.bad = (unsigned long)boundary;
					fm.bad_len = 4096;
				}
				to_regs(&r.in, &regs, ip);
				before = regs;
				ret = emulate_with_xmm(&regs, r.fault, &fake_ops, r.in.xmm, r.emu_xmm);
				if (unreadable && k < len) {
					if (ret != -EFAULT || !regs_equal(&regs, &before))
						bad++;
				} else {
					bool at_end = regs.ip == (unsigned long)ip + len;

					regs.ip = ref.ip;
					if (ret || !at_end || !regs_equal(&regs, &ref))
						bad++;
				}
			}
		}
	}
	/* ip itself unreadable */
	{
		struct pt_regs regs = { 0 };

		reset_fm();
		fm.bad = (unsigned long)boundary;
		fm.bad_len = 4096;
		regs.ip = (unsigned long)boundary;
		bad += pcinet_emulate(&regs, (unsigned long)arena_m, &fake_ops, NULL) != -EFAULT;
	}
	printf("     %lu placements of instructions against a page boundary\n", n);
	check(!bad, "instruction bytes up to an unreadable page: -EFAULT only when needed");
}

/* 15 bytes is the limit: 13 prefixes + 89 03 is fine, 14 prefixes + 89 03 is not. */
static void test_length(void)
{
	unsigned char code[32];
	struct pt_regs regs = { 0 };
	int ret15, ret16;
	u32 v = 0;

	memset(code, 0x3e, sizeof(code));
	code[13] = 0x89;
	code[14] = 0x03;
	reset_fm();
	regs.bx = (unsigned long)arena_m;
	regs.ax = 0x12345678;
	regs.ip = (unsigned long)code;
	ret15 = pcinet_emulate(&regs, (unsigned long)arena_m, &fake_ops, NULL);
	memcpy(&v, shadow, 4);
	check(!ret15 && regs.ip == (unsigned long)code + 15 && v == 0x12345678,
	      "a 15-byte instruction is emulated");
	code[13] = 0x3e;
	code[14] = 0x89;
	code[15] = 0x03;
	regs.ip = (unsigned long)code;
	ret16 = pcinet_emulate(&regs, (unsigned long)arena_m, &fake_ops, NULL);
	check(ret16 == -EOPNOTSUPP && regs.ip == (unsigned long)code, "a 16-byte instruction is refused");
}

/* The plain operand of a string move unreadable: -EFAULT before any MMIO access. */
static void test_string_fault(void)
{
	const struct tcase *c = find("rep movsb");
	struct pt_regs regs = { 0 }, before;
	int ret;

	reset_fm();
	fm.bad = (unsigned long)arena;
	fm.bad_len = 4096;
	regs.si = (unsigned long)arena + 100;
	regs.di = (unsigned long)arena_m + 8;
	regs.cx = 10;
	regs.ip = (unsigned long)c->start;
	before = regs;
	ret = pcinet_emulate(&regs, regs.di, &fake_ops, NULL);
	check(ret == -EFAULT && regs_equal(&regs, &before) && !fm.writes,
	      "rep movsb from an unreadable page: -EFAULT, registers unchanged");
}

/*
 * A string move with both operands trapped (memcpy_fromio() into another BAR, or between two
 * pages of one): with ops->mapped both go through the ops, forwards and backwards; without it the
 * operand that did not fault is plain memory, and here unreadable (-EFAULT, nothing done).
 */
static void test_string_both_mmio(void)
{
	const struct tcase *c = find("rep movsl");
	unsigned long src = MMIO_LEN / 2 - 64, dst = 100 * 4;
	struct pt_regs regs = { 0 }, before;
	bool same = true;
	int ret, i;

	for (int down = 0; down < 2; down++) {
		reset_fm();
		for (i = 0; i < MMIO_LEN; i++)
			shadow[i] = (unsigned char)(i * 7 + down);
		regs = (struct pt_regs){ 0 };
		regs.flags = down ? X86_EFLAGS_DF : 0;
		regs.si = (unsigned long)arena_m + src + (down ? 99 * 4 : 0);
		regs.di = (unsigned long)arena_m + dst + (down ? 99 * 4 : 0);
		regs.cx = 100;
		regs.ip = (unsigned long)c->start;
		ret = pcinet_emulate(&regs, regs.si, &fake_ops_mapped, NULL);
		for (i = 0; i < 400; i++)
			same &= shadow[dst + i] == (unsigned char)((src + i) * 7 + down);
		check(!ret && regs.cx == 0 && regs.ip == (unsigned long)c->end && same &&
		      fm.reads == 100 && fm.writes == 100 && !fm.stray,
		      down ? "rep movsl between two MMIO pages, backwards: both through the ops" :
			     "rep movsl between two MMIO pages: both through the ops");
	}
	reset_fm();
	regs = (struct pt_regs){ 0 };
	regs.si = (unsigned long)arena_m + src;
	regs.di = (unsigned long)arena_m + dst;
	regs.cx = 100;
	regs.ip = (unsigned long)c->start;
	before = regs;
	ret = pcinet_emulate(&regs, regs.si, &fake_ops, NULL);
	check(ret == -EFAULT && regs_equal(&regs, &before) && !fm.writes,
	      "rep movsl between two MMIO pages without mapped(): -EFAULT, nothing written");
}

/* ops failing in the middle of a rep: registers say how far it got; calling again finishes it. */
static void test_rep_error(void)
{
	static const char *const texts[] = { "rep movsl", "rep stosq", "rep lodsw", "rep movsb" };
	static struct run r;
	unsigned long bad = 0, n = 0;

	for (unsigned int t = 0; t < 4; t++) {
		const struct tcase *c = find(texts[t]);

		for (int iter = 0; iter < 200; iter++) {
			unsigned long cx, done;

			run_one(c, &r, true);
			if (r.in.gpr[1] < 2)
				continue;
			n++;
			/* again, with ops failing after `done` accesses */
			done = rnd() % r.in.gpr[1];
			memcpy(arena, r.init, ARENA_LEN);
			reset_fm();
			fm.fail_after = done;
			memcpy(shadow, r.init + MMIO_OFF, MMIO_LEN);
			to_regs(&r.in, &r.emu, c->start);
			/* elements before MMIO (a run crossing into it) cost no ops call */
			r.ret = emulate_with_xmm(&r.emu, r.fault, &fake_ops, r.in.xmm, r.emu_xmm);
			cx = r.emu.cx;
			if (!r.ret && fm.reads + fm.writes <= done) {
				/* a run crossing into MMIO: fewer ops calls than elements */
				if (compare(c, iter, &r.in, &r.nat, &r.emu, r.emu_xmm, r.mem_nat, r.init))
					bad++;
				continue;
			}
			if (r.ret != -EIO || r.emu.ip != (unsigned long)c->start || cx == 0 ||
			    cx > r.in.gpr[1] - done) {
				if (bad++ < 5)
					printf("     %s: returned %d, rcx %lu of %llu after %lu accesses\n",
					       c->text, r.ret, cx, (unsigned long long)r.in.gpr[1], done);
				continue;
			}
			/* resume: the CPU would re-execute and fault on the next MMIO element */
			fm.fail_after = -1;
			{
				unsigned long mm = (unsigned long)arena_m;
				bool down = r.emu.flags & X86_EFLAGS_DF;
				unsigned long a = c->str_op == S_STOS ? r.emu.di :
					c->str_op == S_LODS ? r.emu.si :
					(r.emu.si >= mm && r.emu.si < mm + MMIO_LEN) ? r.emu.si : r.emu.di;
				unsigned long f = a;

				/* still in the plain page before (or after) MMIO: fault where it starts */
				if (!down && a < mm)
					f = mm;
				if (down && a >= mm + MMIO_LEN)
					f = mm + MMIO_LEN - c->size;
				r.ret = emulate_with_xmm(&r.emu, f, &fake_ops, r.in.xmm, r.emu_xmm);
			}
			if (r.ret || compare(c, iter, &r.in, &r.nat, &r.emu, r.emu_xmm, r.mem_nat, r.init))
				bad++;
		}
	}
	printf("     %lu interrupted rep moves\n", n);
	check(!bad && n > 100, "ops failing mid-rep: -EIO, progress in rcx/rsi/rdi, resumable");
}

/* More than PCINET_EMULATE_MAX_REP elements: done in pieces, each leaving ip on the instruction. */
static void test_rep_split(void)
{
	static const unsigned char code[] = { 0xf3, 0xaa };	/* rep stosb */
	unsigned long len = PCINET_EMULATE_MAX_REP + 5;
	unsigned char *big = calloc(1, len + 64), *big_shadow = calloc(1, len + 64);
	struct pt_regs regs = { 0 };
	unsigned long i, wrong = 0;
	int ret1, ret2;
	bool first;

	reset_fm();
	fm.base = (unsigned long)big;
	fm.len = len + 64;
	fm.shadow = big_shadow;
	regs.ip = (unsigned long)code;
	regs.cx = len;
	regs.di = (unsigned long)big;
	regs.ax = 0x5a;
	regs.flags = 0x202;
	ret1 = pcinet_emulate(&regs, regs.di, &fake_ops, NULL);
	first = !ret1 && regs.ip == (unsigned long)code && regs.cx == 5 &&
		regs.di == (unsigned long)big + PCINET_EMULATE_MAX_REP;
	ret2 = pcinet_emulate(&regs, regs.di, &fake_ops, NULL);
	for (i = 0; i < len + 64; i++)
		wrong += big_shadow[i] != (i < len ? 0x5a : 0);
	check(first && !ret2 && regs.ip == (unsigned long)code + 2 && regs.cx == 0 && !wrong &&
	      !fm.stray, "rep stosb of MAX_REP + 5 bytes: two calls, ip advanced by the second");
	free(big);
	free(big_shadow);
}

int main(int argc, char **argv)
{
	unsigned long total = 200000, runs, seed = 1;
	int opt;

	while ((opt = getopt(argc, argv, "n:s:v")) != -1) {
		switch (opt) {
		case 'n': total = strtoul(optarg, NULL, 0); break;
		case 's': seed = strtoul(optarg, NULL, 0); break;
		case 'v': verbose = 1; break;
		default:
			fprintf(stderr, "usage: %s [-n CASES] [-s SEED] [-v]\n", argv[0]);
			return 2;
		}
	}
	rng = seed * 0x9e3779b97f4a7c15ULL | 1;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("emulate harness: %u generated instructions, seed %lu\n", ncases, seed);

	runs = differential(total);
	check(!failures, "differential: emulator == CPU");
	printf("     %lu differential cases\n", runs);
	test_rejected();
	test_mismatch();
	test_fetch();
	test_length();
	test_string_fault();
	test_string_both_mmio();
	test_rep_error();
	test_rep_split();

	printf("%s: %lu failure%s\n", failures ? "FAILED" : "PASSED", failures, failures == 1 ? "" : "s");
	return failures ? 1 : 0;
}
