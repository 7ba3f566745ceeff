import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { askCard } from '../../lab/card-control.js';
import { repoRoot } from '../../lab/paths.js';
import { type LabAssets, prepareLab } from '../../lab/prepare.js';
import { testBudget } from '../../lab/run.js';
import { runNicOutage } from '../net-outage.js';

const root = process.getuid?.() === 0;
const OUTAGE_S = Number(process.env.PCINET_NIC_OUTAGE_S ?? 60);
const KIND = (['hold', 'mixed'] as const).find((k) => k === process.env.PCINET_NIC_OUTAGE_KIND) ?? 'cut';
/** Boot, the stream before and after, TCP's retransmission backoff after the outage (its timer
 *  may have backed off to a minute by then), teardown: generous, TCG on a busy machine. */
const RUN_TIMEOUT_MS = OUTAGE_S * 1000 + 480_000;
const TAP = 'pn1';
const MAC = '52:54:00:7e:57:03';
const CARD = '10.78.0.1';
const GUEST = '10.78.0.2';
const ECHO_PORT = 7996;
const STREAM = join(repoRoot(), 'test/e2e/fixtures/nic-stream.mjs');
/** Guest bounds (seconds), each ended early by the progress it waits for. */
const CARRIER_DOWN_S = 60;
const CARRIER_UP_S = 120;
const FLOWING_S = 240;

const outage =
  KIND === 'mixed'
    ? [askCard('net-hold'), 'sleep_until $((down + OUTAGE / 2))', askCard('net-cut')]
    : [askCard(`net-${KIND}`)];

const guestScript = [
  'set -e',
  `OUTAGE=${OUTAGE_S}`,
  'dev=$PCINET_LAB_DEVICES',
  'for i in $(seq 100); do ls /sys/bus/pci/devices/$dev/virtio*/net/ > /dev/null 2>&1 && break; sleep 0.1; done',
  'ifc=$(ls /sys/bus/pci/devices/$dev/virtio*/net/)',
  `ip addr add ${GUEST}/24 dev $ifc && ip link set $ifc up`,
  // carrier V S: wait up to S seconds for the carrier to read V.
  'carrier() { for i in $(seq $(($2 * 10))); do [ "$(cat /sys/class/net/$ifc/carrier 2>/dev/null)" = "$1" ] && return 0; sleep 0.1; done; return 1; }',
  'sleep_until() { while [ "$(date +%s)" -lt "$1" ]; do sleep 1; done; }',
  'echoed() { cut -d" " -f2 /tmp/progress 2>/dev/null || echo 0; }',
  // flowing N S: wait up to S seconds for the echo to pass N bytes.
  'flowing() { for i in $(seq $(($2 * 4))); do [ "$(echoed)" -gt "$1" ] && return 0; sleep 0.25; done; return 1; }',
  'carrier 1 20 && echo carrier-up-at-start',
  'before=$(cat /sys/class/net/$ifc/ifindex)',
  'echo "recovers=$(cat /sys/bus/pci/devices/$dev/pcinet_recovers)"',
  `ping -c 3 -i 0.2 -W 2 ${CARD} | grep "packets transmitted"`,
  `node ${STREAM} ${CARD} ${ECHO_PORT} /tmp/progress /tmp/stop ${OUTAGE_S + 600} > /tmp/tcp.log 2>&1 & client=$!`,
  'flowing 65536 60 && echo "flowing-before: $(cat /tmp/progress)"',
  'down=$(date +%s)',
  ...outage,
  `carrier 0 ${CARRIER_DOWN_S} && echo "carrier-down-during-outage after $(($(date +%s) - down)) s"`,
  'ip -o link show $ifc | grep -o "<[^>]*>.*state [A-Z]*" | sed "s/^/during: /"',
  'echo "during: driver=$(basename $(readlink /sys/bus/pci/devices/$dev/driver))"',
  'sleep_until $((down + OUTAGE))',
  'at_up=$(echoed)',
  'echo "outage-over: $(cat /tmp/progress)"',
  askCard('net-up'),
  `carrier 1 ${CARRIER_UP_S} && echo "carrier-up-after after $(($(date +%s) - down - OUTAGE)) s"`,
  `flowing $((at_up + 65536)) ${FLOWING_S} && echo "flowing-after after $(($(date +%s) - down - OUTAGE)) s: $(cat /tmp/progress)"`,
  'touch /tmp/stop',
  'if wait $client; then echo tcp-survived; fi; cat /tmp/tcp.log',
  'echo "after: same-interface=$([ "$(cat /sys/class/net/$ifc/ifindex 2>/dev/null)" = "$before" ] && echo yes || echo no)"',
  `ping -c 3 -i 0.2 -W 5 ${CARD} | grep "packets transmitted"`,
  'echo "warnings=$(dmesg | grep -ciE "NETDEV WATCHDOG|transmit queue [0-9]+ timed out|blocked for more than|WARNING:|Call Trace")"',
  'dmesg | grep -E "pcinet|virtio|$ifc" | grep -viE "pcinet: loaded" || true',
].join('\n');

describe.skipIf(!root)('the NIC through a long outage', () => {
  let assets: LabAssets;
  beforeAll(async () => {
    assets = await prepareLab({ modules: true });
  }, 30 * 60_000);

  it(`a ${OUTAGE_S} s outage (${KIND}): carrier down, then up; the same TCP connection, its stream intact`, {
    timeout: testBudget(RUN_TIMEOUT_MS),
  }, async () => {
    const { r, out, events } = await runNicOutage({
      assets,
      tap: TAP,
      mac: MAC,
      address: CARD,
      port: ECHO_PORT,
      command: guestScript,
      timeoutMs: RUN_TIMEOUT_MS,
    });
    expect(r.code, out).toBe(0);
    expect(r.stdout).toMatch(/^carrier-up-at-start$/m);
    expect(r.stdout).toMatch(/^recovers=1$/m);
    expect(r.stdout, out).toMatch(/^flowing-before: /m);
    // Carrier down while the card is away, the driver still bound.
    expect(r.stdout, out).toMatch(/^carrier-down-during-outage /m);
    expect(r.stdout, out).toMatch(/^during: <NO-CARRIER[^>]*\bUP\b/m);
    expect(r.stdout, out).toMatch(/^during: driver=virtio-pci$/m);
    const down = events.find((e) => e.word === (KIND === 'cut' ? 'net-cut' : 'net-hold'));
    const up = events.find((e) => e.word === 'net-up');
    expect(down && up).toBeTruthy();
    expect(up!.at - down!.at).toBeGreaterThanOrEqual(OUTAGE_S * 1000 * 0.9);
    // Back: carrier, the same interface, the same connection with every byte in order.
    expect(r.stdout, out).toMatch(/^carrier-up-after /m);
    expect(r.stdout, out).toMatch(/^flowing-after /m);
    expect(r.stdout, out).toMatch(/^tcp: sent (\d+) echoed \1 matching intact$/m);
    expect(r.stdout, out).toMatch(/^tcp-survived$/m);
    expect(r.stdout, out).toMatch(/^after: same-interface=yes$/m);
    expect(r.stdout, out).toMatch(/^3 packets transmitted, 3 received/m);
    expect(r.stdout, out).toMatch(/^warnings=0$/m);
    expect(r.guestLog).toMatch(/link down: the driver stays bound/);
    expect(r.guestLog).toMatch(/carrier off until the link is back/);
    expect(r.guestLog).toMatch(/link up: recovered/);
    expect(r.guestLog).not.toMatch(/unbinding it|did not recover|stays frozen/);
    expect(r.hostAgentLog).toMatch(/recovered after [\d.]+ s link down/);
  });
});
