// SPDX-License-Identifier: GPL-2.0
/*
 * Writes cases.S (real instructions for `as`, one per case, each followed by a jump back into
 * the native runner) and cases-table.h (what the harness needs to know about each).
 *
 * Every template is instantiated in several variants with registers, addressing forms,
 * displacements and immediates drawn from a fixed-seed PRNG, so the build is reproducible.
 *
 *   gen-cases VARIANTS cases.S cases-table.h
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cases.h"

/* Size of the fake MMIO region (arena_m in trampoline.S). */
#define MMIO_LEN 8192

static const char *const r64[16] = { "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15" };
static const char *const r32[16] = { "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
	"r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d" };
static const char *const r16[16] = { "ax", "cx", "dx", "bx", "sp", "bp", "si", "di",
	"r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w", "r15w" };
/* 0-15 as with REX (spl..dil), 16-19 the high bytes ah..bh (no REX possible) */
static const char *const r8[20] = { "al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil",
	"r8b", "r9b", "r10b", "r11b", "r12b", "r13b", "r14b", "r15b", "ah", "ch", "dh", "bh" };

static unsigned long long rng = 0x9e3779b97f4a7c15ULL;

static unsigned long long rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dULL;
}

static long rnd_range(long lo, long hi)	/* inclusive */
{
	return lo + (long)(rnd() % (unsigned long long)(hi - lo + 1));
}

enum imm { I_NONE, I_8, I_16, I_32, I_S8 /* fits imm8: the 83 form */, I_S32 /* sign-extended */ };

struct template {
	const char *fmt;	/* %R data register, %M memory, %I immediate, %X xmm register */
	unsigned char size;	/* bytes accessed */
	unsigned char rsize;	/* size of %R */
	unsigned char align;
	unsigned char imm;
	unsigned char af_undefined;
	unsigned char only_form;	/* 0: any form; else form + 1 */
};

static FILE *out_s, *out_h;	/* out_h: the table's entries, in memory until n is known */
static unsigned int n;

static void emit_case(const char *text, const char *fmt, ...)
{
	va_list ap;

	fprintf(out_s, "\t.globl insn_%u, insn_%u_end\ninsn_%u:\n\t%s\ninsn_%u_end:\n\tjmp native_return\n",
		n, n, n, text, n);
	fprintf(out_h, "\t{ \"%s\", insn_%u, insn_%u_end, ", text, n, n);
	va_start(ap, fmt);
	vfprintf(out_h, fmt, ap);
	va_end(ap);
	fprintf(out_h, " },\n");
	n++;
}

static void declare(void)
{
	fprintf(out_h, "extern const unsigned char ");
	for (unsigned int i = 0; i < n; i++)
		fprintf(out_h, "insn_%u[], insn_%u_end[]%s", i, i, i + 1 < n ? ", " : ";\n");
}

static long rnd_imm(int kind, int size)
{
	switch (kind) {
	case I_8:
		return rnd_range(0, 255);
	case I_16:
		return rnd_range(0, 65535);
	case I_32:
		return (long)(rnd() & 0xffffffff);
	case I_S8:
		return rnd_range(-128, 127);
	case I_S32:
		/* mostly outside imm8 range, so that 81 rather than 83 is used */
		return rnd() % 4 ? (long)(int)rnd() | 0x100 : rnd_range(-0x80000000L, 0x7fffffffL);
	}
	(void)size;
	return 0;
}

static const char *reg_name(int size, int r)
{
	switch (size) {
	case 1: return r8[r];
	case 2: return r16[r];
	case 4: return r32[r];
	default: return r64[r];
	}
}

/* One variant of a K_MEM template; returns 0 if the drawn combination cannot be encoded. */
static int instantiate(const struct template *t, int form)
{
	char mem[96], text[160], *o = text;
	int data = -1, base = -1, index = -1, scale = 1 << rnd_range(0, 3), xmm = rnd_range(0, 15);
	long disp = 0, imm = rnd_imm(t->imm, t->size);
	unsigned long off = 0;
	const char *f;

	if (strstr(t->fmt, "%R"))
		data = t->rsize == 1 ? rnd_range(0, 19) : rnd_range(0, 15);
	if (strstr(t->fmt, "movabs"))
		data = 0;

	switch (form) {
	case F_BASE: case F_DISP8: case F_DISP32: case F_NOINDEX:
		base = rnd_range(0, 15);
		break;
	case F_SIB: case F_SIB8: case F_SIB32:
		base = rnd_range(0, 15);
		do
			index = rnd_range(0, 15);
		while (index == 4 || index == base);
		break;
	case F_NOBASE:
		do
			index = rnd_range(0, 15);
		while (index == 4);
		break;
	}
	/* ah..bh cannot be encoded with a REX prefix, which r8-r15 and 64-bit operands need */
	if (data >= 16 && (base >= 8 || index >= 8))
		return 0;
	if (form == F_DISP8 || form == F_SIB8 || form == F_NOINDEX)
		disp = rnd_range(-128, 127);
	else if (form == F_DISP32 || form == F_SIB32)
		disp = rnd() % 2 ? (long)(int)rnd() : rnd_range(-0x10000, 0x10000);
	else if (form == F_NOBASE)
		disp = rnd_range(-0x1000, 0x1000) * 16;	/* multiple of 16: keeps alignment */
	off = rnd_range(0, (MMIO_LEN - t->size) / t->align) * t->align;

	switch (form) {
	case F_BASE: snprintf(mem, sizeof(mem), "(%%%s)", r64[base]); break;
	case F_DISP8: case F_DISP32: snprintf(mem, sizeof(mem), "%ld(%%%s)", disp, r64[base]); break;
	case F_SIB: snprintf(mem, sizeof(mem), "(%%%s,%%%s,%d)", r64[base], r64[index], scale); break;
	case F_SIB8: case F_SIB32:
		snprintf(mem, sizeof(mem), "%ld(%%%s,%%%s,%d)", disp, r64[base], r64[index], scale);
		break;
	case F_NOBASE: snprintf(mem, sizeof(mem), "%ld(,%%%s,%d)", disp, r64[index], scale); break;
	case F_ABS: case F_MOFFS: snprintf(mem, sizeof(mem), "arena_m+%lu", off); break;
	case F_RIP: snprintf(mem, sizeof(mem), "arena_m+%lu(%%rip)", off); break;
	}

	if (form == F_NOINDEX) {
		/* mov r, d8(base) with a SIB byte whose index is 100: gas has no syntax for it */
		int w = t->size == 8, load = strstr(t->fmt, "%M, %R") != NULL;
		int rex = (w ? 8 : 0) | (data >= 8 && data < 16 ? 4 : 0) | (base >= 8 ? 1 : 0);

		if (data >= 16)
			return 0;
		o += sprintf(o, ".byte ");
		if (rex)
			o += sprintf(o, "0x%x, ", 0x40 | rex);
		sprintf(o, "0x%x, 0x%x, 0x%x, 0x%x  /* mov%s %%%s, %ld(%%%s,<none>,%d) */",
			load ? 0x8b : 0x89, 0x44 | (data & 7) << 3, (__builtin_ctz(scale) << 6) | 0x20 |
			(base & 7), (unsigned int)(disp & 0xff), load ? " (load)" : "",
			reg_name(t->size, data), disp, r64[base], scale);
	} else {
		for (f = t->fmt; *f; f++) {
			if (*f != '%') {
				*o++ = *f;
				continue;
			}
			f++;
			if (*f == 'R')
				o += sprintf(o, "%%%s", reg_name(t->rsize, data));
			else if (*f == 'M')
				o += sprintf(o, "%s", mem);
			else if (*f == 'I')
				o += sprintf(o, "%ld", imm);
			else if (*f == 'X')
				o += sprintf(o, "%%xmm%d", xmm);
			else
				o += sprintf(o, "%%%c", *f);	/* a literal register */
		}
		*o = 0;
	}
	emit_case(text, "K_MEM, %d, %d, %d, %d, %ldL, %luUL, %d, %d, %d, 0, 0, 0",
		  form, base, index, scale, disp, off, t->size, t->align, t->af_undefined);
	return 1;
}

#define T(fmt, size, rsize, ...) { fmt, size, rsize, 1, __VA_ARGS__ }

static void mem_templates(int variants)
{
	static const char *const alu[] = { "add", "or", "adc", "sbb", "and", "sub", "xor", "cmp" };
	static const char sfx[] = "bwlq";
	static const int imms[] = { I_8, I_16, I_32, I_S32 };
	struct template ts[400];
	char fmts[400][48];
	unsigned int nt = 0, i, s, a;
	int v, form;

#define ADD(fmtstr, sz, rsz, imm_, af) do {						\
		snprintf(fmts[nt], sizeof(fmts[nt]), "%s", fmtstr);			\
		ts[nt] = (struct template){ fmts[nt], sz, rsz, 1, imm_, af, 0 };	\
		nt++;									\
	} while (0)
	char buf[48];

	for (s = 0; s < 4; s++) {
		int sz = 1 << s;

		snprintf(buf, sizeof(buf), "mov%c %%R, %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), "mov%c %%M, %%R", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), "mov%c $%%I, %%M", sfx[s]); ADD(buf, sz, sz, imms[s], 0);
		for (a = 0; a < 8; a++) {
			int af = a == 1 || a == 4 || a == 6;

			snprintf(buf, sizeof(buf), "%s%c %%R, %%M", alu[a], sfx[s]); ADD(buf, sz, sz, I_NONE, af);
			snprintf(buf, sizeof(buf), "%s%c %%M, %%R", alu[a], sfx[s]); ADD(buf, sz, sz, I_NONE, af);
			snprintf(buf, sizeof(buf), "%s%c $%%I, %%M", alu[a], sfx[s]); ADD(buf, sz, sz, imms[s], af);
			if (s) {
				snprintf(buf, sizeof(buf), "%s%c $%%I, %%M", alu[a], sfx[s]);
				ADD(buf, sz, sz, I_S8, af);
			}
		}
		snprintf(buf, sizeof(buf), "test%c %%R, %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 1);
		snprintf(buf, sizeof(buf), "test%c $%%I, %%M", sfx[s]); ADD(buf, sz, sz, imms[s], 1);
		snprintf(buf, sizeof(buf), "xchg%c %%R, %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), "not%c %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), "neg%c %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), "inc%c %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), "dec%c %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		/* segment prefixes other than fs/gs are ignored; 66 before REX.W loses */
		snprintf(buf, sizeof(buf), ".byte 0x3e; mov%c %%R, %%M", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
		snprintf(buf, sizeof(buf), ".byte 0x2e, 0x26; mov%c %%M, %%R", sfx[s]); ADD(buf, sz, sz, I_NONE, 0);
	}
	ADD(".byte 0x36; movq %R, %M", 8, 8, I_NONE, 0);
	ADD(".byte 0x66; movq %R, %M", 8, 8, I_NONE, 0);
	ADD(".byte 0x66; movq %M, %R", 8, 8, I_NONE, 0);
	ADD(".byte 0x66; addq %R, %M", 8, 8, I_NONE, 0);
	ADD("movzbw %M, %R", 1, 2, I_NONE, 0);
	ADD("movzbl %M, %R", 1, 4, I_NONE, 0);
	ADD("movzbq %M, %R", 1, 8, I_NONE, 0);
	ADD("movzwl %M, %R", 2, 4, I_NONE, 0);
	ADD("movzwq %M, %R", 2, 8, I_NONE, 0);
	ADD(".byte 0x66; movzwl %M, %R", 2, 4, I_NONE, 0);	/* movzww */
	ADD("movsbw %M, %R", 1, 2, I_NONE, 0);
	ADD("movsbl %M, %R", 1, 4, I_NONE, 0);
	ADD("movsbq %M, %R", 1, 8, I_NONE, 0);
	ADD("movswl %M, %R", 2, 4, I_NONE, 0);
	ADD("movswq %M, %R", 2, 8, I_NONE, 0);
	ADD("movslq %M, %R", 4, 8, I_NONE, 0);
	ADD("movsxd %M, %R", 4, 4, I_NONE, 0);
	ADD("movnti %R, %M", 4, 4, I_NONE, 0);
	ADD("movnti %R, %M", 8, 8, I_NONE, 0);
	/* SSE: %R unused; the harness compares all xmm registers */
	ADD("movd %M, %X", 4, 0, I_NONE, 0);
	ADD("movd %X, %M", 4, 0, I_NONE, 0);
	ADD("movq %M, %X", 8, 0, I_NONE, 0);
	ADD("movq %X, %M", 8, 0, I_NONE, 0);
	ADD("movdqu %M, %X", 16, 0, I_NONE, 0);
	ADD("movdqu %X, %M", 16, 0, I_NONE, 0);
	ADD("movups %M, %X", 16, 0, I_NONE, 0);
	ADD("movups %X, %M", 16, 0, I_NONE, 0);
	ADD("movupd %M, %X", 16, 0, I_NONE, 0);
	ADD("movupd %X, %M", 16, 0, I_NONE, 0);
	ADD("movss %M, %X", 4, 0, I_NONE, 0);
	ADD("movss %X, %M", 4, 0, I_NONE, 0);
	ADD("movsd %M, %X", 8, 0, I_NONE, 0);
	ADD("movsd %X, %M", 8, 0, I_NONE, 0);
	for (i = 0; i < 4; i++) {
		static const char *const aligned[] = { "movdqa %M, %X", "movdqa %X, %M",
			"movaps %M, %X", "movapd %X, %M" };

		ADD(aligned[i], 16, 0, I_NONE, 0);
		ts[nt - 1].align = 16;
	}
	for (s = 0; s < 4; s++) {
		snprintf(buf, sizeof(buf), "movabs %%M, %%%s", reg_name(1 << s, 0));
		ADD(buf, 1 << s, 1 << s, I_NONE, 0);
		ts[nt - 1].only_form = F_MOFFS + 1;
		snprintf(buf, sizeof(buf), "movabs %%%s, %%M", reg_name(1 << s, 0));
		ADD(buf, 1 << s, 1 << s, I_NONE, 0);
		ts[nt - 1].only_form = F_MOFFS + 1;
	}
#undef ADD

	for (i = 0; i < nt; i++) {
		const struct template *t = &ts[i];
		unsigned int tries = 0;

		for (v = 0; v < variants && tries < 1000; tries++) {
			if (t->only_form)
				form = t->only_form - 1;
			else
				form = (v + tries) % F_NFORMS == F_MOFFS ? F_RIP : (v + tries) % F_NFORMS;
			/* a SIB without index only for the plain 32/64-bit moves (hand-encoded) */
			if (form == F_NOINDEX && (strncmp(t->fmt, "mov", 3) || t->fmt[4] != ' ' ||
						  (t->fmt[3] != 'l' && t->fmt[3] != 'q')))
				form = F_SIB8;
			v += instantiate(t, form);
		}
	}
}

/* movq between memory and xmm with 66 REX.W 0F 6E/7E: gas prefers other encodings. */
static void raw_sse(void)
{
	emit_case(".byte 0x66, 0x48, 0x0f, 0x6e, 0x03  /* movq (%rbx), %xmm0 */",
		  "K_MEM, F_BASE, 3, -1, 1, 0L, 0UL, 8, 1, 0, 0, 0, 0");
	emit_case(".byte 0x66, 0x4d, 0x0f, 0x7e, 0x4e, 0x10  /* movq %xmm9, 0x10(%r14) */",
		  "K_MEM, F_DISP8, 14, -1, 1, 16L, 0UL, 8, 1, 0, 0, 0, 0");
	emit_case(".byte 0x66, 0x0f, 0x7e, 0x58, 0xfc  /* movd %xmm3, -4(%rax) */",
		  "K_MEM, F_DISP8, 0, -1, 1, -4L, 0UL, 4, 1, 0, 0, 0, 0");
	/* REX followed by a legacy prefix is ignored: this is mov %eax, (%rbx), not (%r11) */
	emit_case(".byte 0x41, 0x3e, 0x89, 0x03", "K_MEM, F_BASE, 3, -1, 1, 0L, 0UL, 4, 1, 0, 0, 0, 0");
	emit_case(".byte 0x40, 0x3e, 0x88, 0x23  /* mov %ah, (%rbx): the REX is ignored */",
		  "K_MEM, F_BASE, 3, -1, 1, 0L, 0UL, 1, 1, 0, 0, 0, 0");
	/* two REX prefixes: only the last counts (mov %eax, (%r11)) */
	emit_case(".byte 0x48, 0x41, 0x89, 0x03", "K_MEM, F_BASE, 11, -1, 1, 0L, 0UL, 4, 1, 0, 0, 0, 0");
	/* REX.X with index 100 is r12 */
	emit_case("movl %eax, 8(%rbx,%r12,4)", "K_MEM, F_SIB8, 3, 12, 4, 8L, 0UL, 4, 1, 0, 0, 0, 0");
	/* REX.B with base 101 and mod 00 is still disp32 without base */
	emit_case(".byte 0x41, 0x89, 0x04, 0x25; .long arena_m+40  /* mov %eax, abs (REX.B) */",
		  "K_MEM, F_ABS, -1, -1, 1, 0L, 40UL, 4, 1, 0, 0, 0, 0");
	/* the longest legal instruction: 15 bytes */
	emit_case("ds; ds; ds; ds; movq $-2, arena_m+64(%rip)",
		  "K_MEM, F_RIP, -1, -1, 1, 0L, 64UL, 8, 1, 0, 0, 0, 0");
}

static void string_templates(void)
{
	static const char *const ops[] = { "movs", "stos", "lods" };
	static const char sfx[] = "bwlq";
	char text[64];
	int op, s, rep;

	for (op = 0; op < 3; op++)
		for (s = 0; s < 4; s++)
			for (rep = 0; rep < 2; rep++) {
				snprintf(text, sizeof(text), "%s%s%c", rep ? "rep " : "", ops[op], sfx[s]);
				emit_case(text, "K_STRING, 0, -1, -1, 1, 0L, 0UL, %d, 1, 0, %d, %d, 0",
					  1 << s, op, rep);
			}
	emit_case("repne movsb", "K_STRING, 0, -1, -1, 1, 0L, 0UL, 1, 1, 0, S_MOVS, 1, 0");
	emit_case("ds; rep movsl", "K_STRING, 0, -1, -1, 1, 0L, 0UL, 4, 1, 0, S_MOVS, 1, 0");
}

/* Run with rax, rbx, rsi, rdi pointing at the start of MMIO. */
static void reject_templates(void)
{
	static const char *const rejected[] = {
		"lock addl %eax, (%rbx)",		/* lock */
		"movl %eax, %fs:(%rbx)",		/* fs */
		"movl %eax, %gs:8(%rbx)",		/* gs */
		"addr32 movl %eax, (%ebx)",		/* 67 */
		"movl %eax, %ebx",			/* register operand */
		"imull (%rbx), %eax",
		"mull (%rbx)",
		"shll (%rbx)",
		"lea (%rbx), %eax",
		"call *(%rbx)",
		"pushq (%rbx)",
		"cmpsb",
		"rep cmpsb",
		"scasl",
		"vmovdqu (%rbx), %xmm0",		/* VEX */
		"movq (%rbx), %mm0",			/* MMX */
		"movd %mm1, (%rbx)",
		".byte 0xf3; movl %eax, (%rbx)",	/* rep on a non-string op */
		".byte 0x66; movnti %eax, (%rbx)",
		"bts %eax, (%rbx)",
		"cmpxchgl %ecx, (%rbx)",
	};
	unsigned int i;

	for (i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++)
		emit_case(rejected[i], "K_REJECT, 0, -1, -1, 1, 0L, 0UL, 4, 1, 0, 0, 0, -EOPNOTSUPP");
}

int main(int argc, char **argv)
{
	FILE *out_table;
	char *table;
	size_t table_len;
	int variants;

	if (argc != 4) {
		fprintf(stderr, "usage: gen-cases VARIANTS cases.S cases-table.h\n");
		return 2;
	}
	variants = atoi(argv[1]);
	out_s = fopen(argv[2], "w");
	out_h = open_memstream(&table, &table_len);
	out_table = fopen(argv[3], "w");
	if (!out_s || !out_h || !out_table) {
		perror("gen-cases");
		return 1;
	}
	fprintf(out_s, "/* generated by gen-cases.c */\n\t.text\n");
	mem_templates(variants);
	raw_sse();
	string_templates();
	reject_templates();
	fprintf(out_s, "\t.section .note.GNU-stack, \"\", @progbits\n");
	if (fclose(out_h))
		return 1;
	fprintf(out_table, "/* generated by gen-cases.c */\n");
	out_h = out_table;
	declare();
	fprintf(out_table, "const struct tcase cases[] = {\n%s};\nconst unsigned int ncases = %u;\n",
		table, n);
	free(table);
	return fclose(out_s) || fclose(out_table);
}
