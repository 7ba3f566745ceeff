// glibc's allocator, told to keep memory it gets back. pcinet's processes move data through
// short-lived buffers of 64 KiB to 4 MiB (frames, DMA payloads, device data). By default glibc
// gives every buffer of 128 KiB or more its own mmap() and returns freed heap tops to the kernel,
// so each such buffer costs a page fault per 4 KiB; measured here, that was most of a 4 MiB DMA
// command's CPU time (docs/PERFORMANCE.md "Memory"). With these thresholds freed buffers are
// reused, and up to MALLOC_TRIM_THRESHOLD_ of free heap stays with the process.
//
// glibc reads them only at process start, so they are set by whoever starts node: bin/pcinet (the
// `pcinet` command; keep its values equal to these, cli/allocator.test.ts checks) and the lab and
// benches when they start an endpoint or host-agent.

export const ALLOCATOR_ENV = {
  /** Buffers below 32 MiB come from the heap (and return to it). */
  MALLOC_MMAP_THRESHOLD_: String(32 << 20),
  /** Up to 64 MiB of free heap is kept instead of trimmed. */
  MALLOC_TRIM_THRESHOLD_: String(64 << 20),
} as const;

/** `env` with ALLOCATOR_ENV added where it sets nothing of its own. */
export function withAllocatorEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out = { ...env };
  for (const [k, v] of Object.entries(ALLOCATOR_ENV)) out[k] ??= v;
  return out;
}

/** `argv` run through env(1) with ALLOCATOR_ENV: for command lines that run elsewhere (in the lab's
 *  guest, through nsenter), where no environment of ours reaches. */
export function withAllocatorArgv(argv: readonly string[]): string[] {
  return ['env', ...Object.entries(ALLOCATOR_ENV).map(([k, v]) => `${k}=${v}`), ...argv];
}
