// virtio_net's TX NAPI as a guest shell step (bench/net, bench/param-ab): virtio_net switches it
// only while the interface is down (EBUSY otherwise), so the step brings the interface down, sets
// it, brings it up, waits for the carrier and the peer, and checks that the setting took.
export function napiTxShell(ifc: string, peer: string, frames: 0 | 1): string[] {
  return [
    `ip link set ${ifc} down`,
    `ethtool -C ${ifc} tx-frames ${frames}`,
    `ip link set ${ifc} up`,
    `for i in $(seq 100); do [ "$(cat /sys/class/net/${ifc}/carrier)" = 1 ] && break; sleep 0.1; done`,
    `ping -c 2 -W 2 ${peer} > /dev/null`,
    `[ "$(ethtool -c ${ifc} | sed -n 's/^tx-frames: *//p')" = ${frames} ]`,
  ];
}
