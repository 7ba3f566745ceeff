#!/bin/sh
# The long variant of test/e2e/outage.test.ts, which the suite does not run: the card's network
# gone for 10 minutes (by default; first argument: seconds) during fio verify, half silent, half
# broken. The host-agent is given a ctrl-loss-tmo longer than the outage (NVMe/TCP's default, 600 s,
# would remove the disk at the very end of it). Needs root (the lab) and a build (npm run build).
#   test/outage-long.sh [SECONDS] [hold|cut|mixed]
set -e
cd "$(dirname "$0")/.."
seconds=${1:-600}
export PCINET_OUTAGE_S="$seconds"
export PCINET_OUTAGE_KIND="${2:-mixed}"
export PCINET_OUTAGE_HOST_ARGS="--ctrl-loss-tmo $((seconds + 300))"
exec npx vitest run test/e2e/outage.test.ts
