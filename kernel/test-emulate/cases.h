/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What gen-cases writes about each generated instruction (cases.S holds the instructions,
 * cases-table.h this table), shared with the harness.
 */
#ifndef CASES_H
#define CASES_H

/* How the memory operand is addressed; the harness picks register values that put it in MMIO. */
enum form {
	F_BASE,		/* (base) */
	F_DISP8,	/* d8(base) */
	F_DISP32,	/* d32(base) */
	F_SIB,		/* (base,index,scale) */
	F_SIB8,		/* d8(base,index,scale) */
	F_SIB32,	/* d32(base,index,scale) */
	F_NOBASE,	/* d32(,index,scale): SIB base 101 with mod 00 */
	F_NOINDEX,	/* d8(base) through a SIB byte with index 100 (hand-encoded) */
	F_ABS,		/* arena_m+off: SIB with neither base nor index, disp32 */
	F_RIP,		/* arena_m+off(%rip) */
	F_MOFFS,	/* movabs: 64-bit absolute address */
	F_NFORMS
};

enum kind {
	K_MEM,		/* one memory operand, in MMIO */
	K_STRING,	/* movs/stos/lods, maybe rep */
	K_REJECT,	/* must be refused (expect) with rsi/rbx/rax... pointing at MMIO */
};

enum str_op { S_MOVS, S_STOS, S_LODS };

struct tcase {
	const char *text;
	const unsigned char *start, *end;
	unsigned char kind;
	unsigned char form;
	signed char base, index;	/* register numbers; -1 for none */
	unsigned char scale;		/* 1, 2, 4, 8 */
	long disp;
	unsigned long off;		/* F_ABS, F_RIP, F_MOFFS: offset of the operand in MMIO */
	unsigned char size;		/* bytes accessed (string ops: element size) */
	unsigned char align;
	unsigned char af_undefined;	/* logical ops leave AF undefined */
	unsigned char str_op, rep;	/* K_STRING */
	int expect;			/* K_REJECT: the error */
};

extern const struct tcase cases[];
extern const unsigned int ncases;

#endif
