// The demo's tour, run in the guest as a shell script. PCINET_LAB_DEVICES holds the addresses of
// the pcinet devices (set by guest.sh from the host-agent's ready file).
export function demoScript(): string {
  return `
hr() { printf '\\n== %s\\n' "$*"; }
hr "the workstation: $(uname -sr), $(nproc) vCPUs, $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) MiB"
hr "lspci -nn"
lspci -nn
if [ -z "$PCINET_LAB_DEVICES" ]; then
  hr "no pcinet devices in this run (see the messages above)"
  exit 0
fi
hr "pcinet devices and their drivers"
for a in $PCINET_LAB_DEVICES; do
  d=/sys/bus/pci/devices/$a
  if [ -e "$d/driver" ]; then drv=$(basename "$(readlink "$d/driver")"); else drv="(none)"; fi
  printf '%s  %s  driver: %s\\n' "$a" "$(lspci -s "$a" | cut -d' ' -f2-)" "$drv"
done
for a in $PCINET_LAB_DEVICES; do
  hr "lspci -vv -s $a   (config space served by pcinet.ko from the endpoint's description)"
  lspci -vv -s "$a"
  d=/sys/bus/pci/devices/$a
  if [ -e "$d/msi_irqs" ]; then
    hr "$a: interrupts (MSI-X messages arrive from the endpoint over the network)"
    for irq in $(ls "$d/msi_irqs"); do grep -E "^ *$irq:" /proc/interrupts; done
  fi
done
for a in $PCINET_LAB_DEVICES; do
  t=/sys/kernel/debug/pcinet_test/$a
  [ -e /sys/kernel/debug/pcinet_test ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
  [ -d "$t" ] || continue
  hr "$a: the test driver (test/kmod) at work"
  echo "MAGIC register:            $(cat $t/magic)      (a shadow read: no round trip)"
  echo "COUNTER register:          $(cat $t/counter), $(cat $t/counter)  (volatile: each read asks the endpoint)"
  n=$(awk '/^msix/ { print $2 }' $t/info)
  for v in $(seq 0 $((n - 1))); do echo $v > $t/raise; done
  echo "raised every MSI-X vector: $(awk '{ s += $2 } END { print s }' $t/irq_counts) interrupts received"
  echo 1048576 > $t/dma_read 2>/dev/null; echo "DMA, device reads 1 MiB:  $(cat $t/dma_read)"
  echo 1048576 > $t/dma_write 2>/dev/null; echo "DMA, device writes 1 MiB: $(cat $t/dma_write)"
done
hr "pcinet.ko"
grep -E '^pcinet ' /proc/modules
hr "kernel messages about pcinet"
dmesg | grep -i pcinet | tail -n 15
hr "try it: pcinet lab run --device test -- lspci -vv"
`;
}
