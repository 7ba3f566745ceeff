// SPDX-License-Identifier: GPL-2.0
/*
 * Userspace harness of kernel/push-walk.c, for the differential test against
 * host-agent/sim/push.ts (host-agent/sim/push-diff.test.ts), which builds random rings, runs
 * them through both walkers and compares what they push, line by line.
 *
 *   harness MEMFILE < script   MEMFILE is host memory from IOVA 0; the script's lines are
 *       map IOVA LEN READABLE          a DMA mapping (hex, hex, 0/1)
 *       rule ID KIND BAR OFFSET RING AVAIL ENTRIES DATA_MAX LBA_SHIFT FLAGS
 *       poke IOVA HEXBYTES             the driver writes memory
 *       write BAR OFFSET HEXBYTES      the driver writes a doorbell: walk every matching rule
 *     and for each write it prints the pushes ("P RULE IOVA HEXBYTES", contiguous ranges of a rule
 *     merged, then cut every 64 KiB like the kernel's records), every rule's "L ID LAST", and
 *     "E" ("E exhausted" when the step bound cut the walk short). Statistics go to stderr.
 *   harness hostile            hostile rings (descriptor cycles, self-chained PRP lists,
 *     addresses near 2^64): the walk must end within its step and byte budgets.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "push-shim.h"
#include "uapi/pcinet.h"
#include "push-walk.h"

#define MAX_MAPS 256
#define MAX_RUNS 100000
#define RECORD_BYTES 65536

static struct { u64 iova, len; int readable; } maps[MAX_MAPS];
static int nmaps;
static u8 *mem;
static u64 memsize;

static void die(const char *what)
{
	fprintf(stderr, "harness: %s\n", what);
	exit(2);
}

/* Every byte of [iova, iova + len) is inside the image and in a readable mapping. */
static bool readable(u64 iova, u64 len)
{
	u64 at = iova;

	if (iova + len < iova || iova + len > memsize)
		return false;
	while (at < iova + len) {
		int i, hit = -1;

		for (i = 0; i < nmaps; i++)
			if (at >= maps[i].iova && at - maps[i].iova < maps[i].len)
				hit = i;
		if (hit < 0 || !maps[hit].readable)
			return false;
		at = maps[hit].iova + maps[hit].len;
	}
	return true;
}

static bool peek(void *ctx, u64 iova, void *buf, u32 len)
{
	(void)ctx;
	if (!readable(iova, len))
		return false;
	memcpy(buf, mem + iova, len);
	return true;
}

/* Ranges as the kernel builds records: same-rule contiguous ranges merged. */
static struct run { u32 rule; u64 iova; u64 len; } runs[MAX_RUNS];
static int nruns;
static u8 *pushed;	/* the pushed bytes, in order */
static u64 npushed;

static u32 push(void *ctx, u32 rule, u64 iova, u32 len, bool stable)
{
	(void)ctx;
	(void)stable;	/* when the bytes are taken: the kernel's business, not the walk's */
	if (!readable(iova, len))
		return 0;
	if (npushed + len > 2 * PCINET_PUSH_MAX_BYTES)
		die("pushed more than twice the byte budget");
	memcpy(pushed + npushed, mem + iova, len);
	npushed += len;
	if (nruns && runs[nruns - 1].rule == rule && runs[nruns - 1].iova + runs[nruns - 1].len == iova) {
		runs[nruns - 1].len += len;
	} else {
		if (nruns == MAX_RUNS)
			die("too many ranges");
		runs[nruns++] = (struct run){ rule, iova, len };
	}
	return len;
}

static const struct pcinet_push_walk_ops ops = { .peek = peek, .push = push };
/* A doorbell's byte budget: PCINET_PUSH_MAX_BYTES unless a `budget` line lowers it. */
static u32 budget = PCINET_PUSH_MAX_BYTES;
static struct pcinet_push_rule rules[PCINET_MAX_PUSH_RULES];

static int hexval(int c)
{
	return c <= '9' ? c - '0' : (c | 32) - 'a' + 10;
}

static void do_write(const char *args)
{
	static char hex[64];
	struct pcinet_push_walker w = { .ops = &ops, .left = budget,
					.steps = PCINET_PUSH_MAX_STEPS };
	unsigned bar;
	unsigned long long off;
	u8 val[16];
	u32 size = 0, id;
	u64 at = 0;
	int r;

	if (sscanf(args, "%u %llx %63s", &bar, &off, hex) != 3)
		die("bad write line");
	for (; hex[2 * size] && size < sizeof(val); size++)
		val[size] = hexval(hex[2 * size]) << 4 | hexval(hex[2 * size + 1]);
	nruns = 0;
	npushed = 0;
	for (id = 0; id < PCINET_MAX_PUSH_RULES; id++)
		if (rules[id].kind && rules[id].bar == bar && rules[id].offset == off)
			pcinet_push_walk(&w, id, &rules[id], val, size);
	for (r = 0; r < nruns; r++) {
		u64 o, i;

		for (o = 0; o < runs[r].len; o += RECORD_BYTES) {
			u64 n = runs[r].len - o < RECORD_BYTES ? runs[r].len - o : RECORD_BYTES;

			printf("P %u %llx ", runs[r].rule, (unsigned long long)(runs[r].iova + o));
			for (i = 0; i < n; i++)
				printf("%02x", pushed[at + o + i]);
			printf("\n");
		}
		at += runs[r].len;
	}
	for (id = 0; id < PCINET_MAX_PUSH_RULES; id++)
		if (rules[id].kind)
			printf("L %u %u\n", id, rules[id].last);
	/* Where a doorbell rung for the driver a lap on would split (quiet SQs). */
	for (id = 0; id < PCINET_MAX_PUSH_RULES; id++)
		if (rules[id].kind == PCINET_PUSH_NVME_SQ)
			printf("F %u %u\n", id, pcinet_push_nvme_fits(&ops, NULL, &rules[id],
					(rules[id].last + rules[id].entries - 1) % rules[id].entries,
					budget < PCINET_PUSH_PART_BYTES ?
					budget : PCINET_PUSH_PART_BYTES));
	fprintf(stderr, "S %u %u\n", w.over_budget, w.unreadable);
	printf("E%s\n", w.exhausted ? " exhausted" : "");
}

static int script(const char *memfile)
{
	static char line[1 << 22], hex[1 << 22];
	FILE *f = fopen(memfile, "rb");
	long size;

	if (!f || fseek(f, 0, SEEK_END) || (size = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET))
		die("cannot read the memory image");
	memsize = size;
	mem = malloc(memsize);
	pushed = malloc(2 * PCINET_PUSH_MAX_BYTES);
	if (!mem || !pushed || fread(mem, 1, memsize, f) != memsize)
		die("cannot load the memory image");
	fclose(f);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strncmp(line, "map ", 4)) {
			unsigned long long a, l;
			int rd;

			if (nmaps == MAX_MAPS || sscanf(line + 4, "%llx %llx %d", &a, &l, &rd) != 3)
				die("bad map line");
			maps[nmaps].iova = a;
			maps[nmaps].len = l;
			maps[nmaps].readable = rd;
			nmaps++;
		} else if (!strncmp(line, "rule ", 5)) {
			unsigned id, kind, bar, entries, dm, ls, fl;
			unsigned long long off, ring, avail;

			if (sscanf(line + 5, "%u %u %u %llx %llx %llx %u %u %u %u", &id, &kind, &bar, &off,
				   &ring, &avail, &entries, &dm, &ls, &fl) != 10 || id >= PCINET_MAX_PUSH_RULES)
				die("bad rule line");
			rules[id] = (struct pcinet_push_rule){
				.kind = kind, .bar = bar, .offset = off, .ring = ring, .avail = avail,
				.entries = entries, .data_max = dm, .lba_shift = ls, .flags = fl,
			};
		} else if (!strncmp(line, "poke ", 5)) {
			unsigned long long a;
			size_t i;

			if (sscanf(line + 5, "%llx %s", &a, hex) != 2)
				die("bad poke line");
			for (i = 0; hex[2 * i]; i++) {
				if (a + i >= memsize)
					die("poke outside the memory image");
				mem[a + i] = hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]);
			}
		} else if (!strncmp(line, "budget ", 7)) {
			unsigned int b;

			if (sscanf(line + 7, "%u", &b) != 1 || b < PCINET_MAX_DATA ||
			    b > PCINET_PUSH_MAX_BYTES)
				die("bad budget line");
			budget = b;
		} else if (!strncmp(line, "write ", 6)) {
			do_write(line + 6);
		} else if (line[0] != '\n') {
			die("unknown line");
		}
	}
	return 0;
}

/* Hostile rings: memory [4 KiB, 4 MiB) is mapped, the rest is not. */
#define HOSTILE_MEM (4u << 20)
static u64 peeks, pushes, pushed_bytes;
static int failures;

static bool hostile_peek(void *ctx, u64 iova, void *buf, u32 len)
{
	(void)ctx;
	peeks++;
	if (iova < 4096 || iova + len > HOSTILE_MEM || iova + len < iova)
		return false;
	memcpy(buf, mem + iova, len);
	return true;
}

static u32 hostile_push(void *ctx, u32 rule, u64 iova, u32 len, bool stable)
{
	(void)ctx;
	(void)rule;
	(void)stable;
	pushes++;
	if (iova < 4096 || iova + len > HOSTILE_MEM || iova + len < iova)
		return 0;
	pushed_bytes += len;
	return len;
}

static const struct pcinet_push_walk_ops hostile_ops = { hostile_peek, hostile_push };

static void w16(u64 a, u16 v) { mem[a] = v; mem[a + 1] = v >> 8; }
static void w32(u64 a, u32 v) { w16(a, v); w16(a + 2, v >> 16); }
static void w64(u64 a, u64 v) { w32(a, v); w32(a + 4, v >> 32); }

/* Walks rule r for a 4-byte doorbell write of val; the walk must stay within its budgets. */
static void hostile(const char *name, struct pcinet_push_rule *r, u32 val, bool exhausts)
{
	struct pcinet_push_walker w = { .ops = &hostile_ops, .left = PCINET_PUSH_MAX_BYTES,
					.steps = PCINET_PUSH_MAX_STEPS };
	bool ok;

	peeks = pushes = pushed_bytes = 0;
	pcinet_push_walk(&w, 0, r, &val, 4);
	ok = peeks + pushes <= PCINET_PUSH_MAX_STEPS && pushed_bytes <= PCINET_PUSH_MAX_BYTES &&
	     w.exhausted == exhausts;
	printf("%s %-26s exhausted=%d peeks=%llu pushes=%llu bytes=%llu over_budget=%u last=%u\n",
	       ok ? "ok  " : "FAIL", name, w.exhausted, (unsigned long long)peeks,
	       (unsigned long long)pushes, (unsigned long long)pushed_bytes, w.over_budget, r->last);
	failures += !ok;
}

static int hostile_rings(void)
{
	u64 desc = 0x100000, avail = 0x80000, ind = 0x300000, sq = 0x100000;
	u32 i, size = 8192;

	mem = calloc(1, HOSTILE_MEM);
	if (!mem)
		die("out of memory");

	/* virtq: one cycle through all 8192 descriptors, every head 0, idx = size. */
	for (i = 0; i < size; i++) {
		w64(desc + 16 * i, 0x200000);
		w32(desc + 16 * i + 8, 1);
		w16(desc + 16 * i + 12, 1);
		w16(desc + 16 * i + 14, (i + 1) % size);
	}
	w16(avail + 2, size);
	struct pcinet_push_rule v = {
		.kind = PCINET_PUSH_VIRTQ,
		.ring = desc,
		.avail = avail,
		.entries = size,
		.data_max = 65536,
		.flags = PCINET_PUSH_F_INDIRECT,
	};
	hostile("virtq cycle", &v, 0, true);

	/* virtq: every descriptor an indirect table of 16384 descriptors in one cycle. */
	for (i = 0; i < 16384; i++) {
		w64(ind + 16 * i, 0x200000);
		w32(ind + 16 * i + 8, 1);
		w16(ind + 16 * i + 12, 1);
		w16(ind + 16 * i + 14, (i + 1) % 1024);
	}
	for (i = 0; i < 64; i++) {
		w64(desc + 16 * i, ind);
		w32(desc + 16 * i + 8, 16 * 1024);
		w16(desc + 16 * i + 12, 4);
	}
	struct pcinet_push_rule v2 = {
		.kind = PCINET_PUSH_VIRTQ,
		.ring = desc,
		.avail = avail,
		.entries = 64,
		.data_max = 65536,
		.flags = PCINET_PUSH_F_INDIRECT,
	};
	w16(avail + 2, 64);
	for (i = 0; i < 64; i++)
		w16(avail + 4 + 2 * i, i);
	hostile("virtq indirect cycles", &v2, 0, false);

	/* virtq: addresses near 2^64. */
	struct pcinet_push_rule v3 = {
		.kind = PCINET_PUSH_VIRTQ,
		.ring = ~0ull - 8,
		.avail = ~0ull - 1,
		.entries = 32768,
		.data_max = 262144,
		.flags = PCINET_PUSH_F_INDIRECT,
	};
	hostile("virtq wrapped addresses", &v3, 0, false);

	/* NVMe: 256 KiB writes whose PRP list starts in its last slot and chains to itself. */
	memset(mem + sq, 0, HOSTILE_MEM - sq);
	for (i = 0; i < 16384; i++) {
		u64 e = sq + 64 * i;

		mem[e] = 1;
		w16(e + 48, 255);
		w64(e + 24, 0x80000);
		w64(e + 32, 0x81ff8);
	}
	w64(0x81ff8, 0x81000 + 0xff8);
	struct pcinet_push_rule n = {
		.kind = PCINET_PUSH_NVME_SQ,
		.ring = sq,
		.entries = 65536,
		.data_max = 262144,
		.lba_shift = 9,
	};
	hostile("nvme self-chained lists", &n, 500, false);

	/* NVMe: the same lists chained to a page of pointers to distinct pages. */
	w64(0x81ff8, 0x82000);
	for (i = 0; i < 512; i++)
		w64(0x82000 + 8 * i, 0x83000 + 4096ull * i);
	struct pcinet_push_rule n2 = {
		.kind = PCINET_PUSH_NVME_SQ,
		.ring = sq,
		.entries = 65536,
		.data_max = 262144,
		.lba_shift = 9,
	};
	hostile("nvme 128K writes", &n2, 500, false);

	/* NVMe: a ring near 2^64. */
	struct pcinet_push_rule n3 = {
		.kind = PCINET_PUSH_NVME_SQ,
		.ring = ~0ull - 100,
		.entries = 65536,
		.data_max = 262144,
		.lba_shift = 12,
		.last = 60000,
	};
	hostile("nvme wrapped ring", &n3, 10, false);

	printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "hostile"))
		return hostile_rings();
	if (argc == 2)
		return script(argv[1]);
	fprintf(stderr, "usage: harness MEMFILE < script | harness hostile\n");
	return 2;
}
