#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Checks that the harness notices bugs: builds it against copies of ../emulate.c with one
# deliberate bug each and expects every such build to fail. `make mutants` (after `make`).
set -u
cd "$(dirname "$0")"
NOSSE="-mgeneral-regs-only -ffreestanding -fno-builtin -fno-tree-loop-distribute-patterns"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
survived=0

mutant() {
	sed "$1" ../emulate.c >"$tmp/emulate.c"
	if cmp -s ../emulate.c "$tmp/emulate.c"; then
		echo "STALE  $1 (no longer applies)"
		survived=$((survived + 1))
		return
	fi
	cp ../emulate.h "$tmp/"
	gcc -O2 -w -I. -I"$tmp" $NOSSE -c -o "$tmp/emulate.o" "$tmp/emulate.c" &&
		gcc -no-pie -o "$tmp/harness" out/harness.o "$tmp/emulate.o" out/fake-mmio.o \
			out/trampoline.o out/cases.o out/cases-table.o || exit 2
	if timeout 120 "$tmp/harness" -n 20000 >/dev/null; then
		echo "SURVIVED  $1"
		survived=$((survived + 1))
	else
		echo "killed    $1"
	fi
}

mutant 's/\*r = (u32)v;/*r = (*r \& ~0xffffffffUL) | (u32)v;/'
mutant 's/e->ea += e->regs->ip + e->len;/e->ea += e->regs->ip;/'
mutant 's/return size == 1 \&\& !e->has_rex \&\& n >= 4 \&\& n < 8;/return size == 1 \&\& n >= 4 \&\& n < 8;/'
mutant 's/imm = sign_extend(imm, imm_size);/imm = imm;/'
mutant 's/regs->si += down ? -(unsigned long)size : size;/regs->si += size;/'
mutant 's/if (index != REG_SP)/if (index != 100)/'
mutant 's/if ((sib \& 7) == 5 \&\& mod == 0)/if (base == 5 \&\& mod == 0)/'
mutant 's/carry = ((~dst \& src) | ((~dst | src) \& res)) \& sign;/carry = ((~dst \& src)) \& sign;/'
mutant 's/overflow = ((dst ^ res) \& (src ^ res)) \& sign;/overflow = 0;/'
mutant 's/e.has_rex = false;\t\/\* a REX/e.has_rex = e.has_rex;\t\/* a REX/'
mutant 's/e.rex = 0;$/e.rex = e.rex;/'
mutant 's/bool mmio = down ? addr < page + PAGE_SIZE : addr + size > page;/bool mmio = true;/'
mutant 's/return load(e, e->reg, op \& 1 ? 2 : 1, opsz, true, next);/return load(e, e->reg, op \& 1 ? 2 : 1, opsz, false, next);/'
mutant 's/if (op == 0x7e \&\& e->rep == 0xf3 \&\& !e->opsize)/if (0)/'
mutant 's/	if (parity_even(res))/	if (!parity_even(res))/'
mutant 's/res = dst + src + (op == ALU_ADC ? cf_in : 0);/res = dst + src;/'
mutant 's/opsz = REX_W(\&e) ? 8 : e.opsize ? 2 : 4;/opsz = e.opsize ? 2 : REX_W(\&e) ? 8 : 4;/'
mutant 's/n = PAGE_SIZE - (at \& (PAGE_SIZE - 1));/n = MAX_INSN_LEN;/'
mutant 's/return e->fault - addr < size ? 0 : -EFAULT;/return 0;/'
mutant 's/f = (f \& ~X86_EFLAGS_CF) | (\*flags \& X86_EFLAGS_CF);/f = f;/'
mutant 's/if (e->rep)$/if (1)/'
mutant 's/if (!e->rep || !regs->cx)/if (1)/'
mutant 's/*r = (\*r \& ~0xff00UL) | (unsigned long)(v \& 0xff) << 8;/*r = (*r \& ~0xffUL) | (v \& 0xff);/'
mutant 's/e->ea += \*gpr(e->regs, index) << (sib >> 6);/e->ea += *gpr(e->regs, index) << ((sib >> 6) \& 1);/'
mutant 's/return e->rep == 0xf3 ? 4 : e->rep == 0xf2 ? 8 : 16;/return e->rep == 0xf3 ? 4 : 16;/'

echo "$survived mutant(s) survived"
[ "$survived" -eq 0 ]
