// SPDX-License-Identifier: GPL-2.0
/*
 * bench/pagefault's workload, run in the lab's guest: maps MIB MiB of anonymous memory, writes one
 * byte per page (one minor fault each), unmaps it; PASSES times. Prints the faults taken
 * (getrusage) and the time they took, for bench/pagefault.ts to read:
 *   pagefault faults=N ns=T
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t len = (size_t)(argc > 1 ? atol(argv[1]) : 64) << 20;
	int passes = argc > 2 ? atoi(argv[2]) : 8;
	struct rusage before, after;
	long long start, ns;
	int p;

	getrusage(RUSAGE_SELF, &before);
	start = now_ns();
	for (p = 0; p < passes; p++) {
		volatile char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		size_t i;

		if (m == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		madvise((void *)m, len, MADV_NOHUGEPAGE);	/* one fault per 4 KiB page */
		for (i = 0; i < len; i += page)
			m[i] = 1;
		munmap((void *)m, len);
	}
	ns = now_ns() - start;
	getrusage(RUSAGE_SELF, &after);
	printf("pagefault faults=%ld ns=%lld\n", after.ru_minflt - before.ru_minflt, ns);
	return 0;
}
