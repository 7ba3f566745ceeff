#!/bin/sh
# The long variant of test/e2e/kernel-lifecycle.test.ts, which the suite does not run: 100
# attach/detach cycles then rmmod, and 10^5 random and malformed records (issue 13's reliability
# goals); any oops, WARN, BUG or splat in the guest log fails a run. Needs root (the lab) and a
# build (npm run build).
#   test/kernel-long.sh [CYCLES] [RECORDS]
set -e
cd "$(dirname "$0")/.."
export PCINET_LIFECYCLE_CYCLES="${1:-100}"
export PCINET_FUZZ_RECORDS="${2:-100000}"
exec npx vitest run test/e2e/kernel-lifecycle.test.ts -t "cycles|records"
