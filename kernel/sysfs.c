// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: the function's files in sysfs beside the PCI core's (docs/KERNEL.md, "Timing" and
 * "Counters"): statistics and hints only, the device works without them.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/pci.h>

#include "internal.h"

/* Adds the time since `since` to a timing sum (docs/KERNEL.md, "Timing"). Any context. */
void pcinet_timing_add(atomic64_t *ns, atomic64_t *n, u64 since)
{
	atomic64_add(ktime_get_ns() - since, ns);
	atomic64_inc(n);
}

/*
 * /sys/bus/pci/devices/<address>/pcinet_timing: where the time of the data path goes, as sums in
 * nanoseconds and how many they add up, one "name ns count" per line (bench/nvme takes the
 * differences around each phase).
 */
static ssize_t pcinet_timing_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct pcinet_counters *c = &pcinet_fn_of(to_pci_dev(dev)->bus)->stats;
	const struct {
		const char *name;
		atomic64_t *ns, *n;
	} t[] = {
		{ "mmio", &c->t_mmio_ns, &c->t_mmio_n },
		{ "queue", &c->t_queue_ns, &c->t_queue_n },
		{ "send", &c->t_send_ns, &c->t_send_n },
		{ "rtt", &c->t_rtt_ns, &c->t_rtt_n },
		{ "apply", &c->t_apply_ns, &c->t_apply_n },
		{ "irq", &c->t_irq_ns, &c->t_irq_n },
		{ "push", &c->t_push_ns, &c->t_push_n },
		{ "kick", &c->t_kick_ns, &c->t_kick_n },
		{ "room", &c->t_room_ns, &c->t_room_n },
		{ "map", &c->t_map_ns, &c->t_map_n },
		{ "reply", &c->t_reply_ns, &c->t_reply_n },
	};
	int i, len = 0;

	for (i = 0; i < ARRAY_SIZE(t); i++)
		len += sysfs_emit_at(buf, len, "%s %lld %lld\n", t[i].name, atomic64_read(t[i].ns),
				     atomic64_read(t[i].n));
	return len;
}
static DEVICE_ATTR_RO(pcinet_timing);

/*
 * /sys/bus/pci/devices/<address>/pcinet_counters: every counter of the function, one "name value"
 * per line, the removal line's figures while the function is on the bus. The host-agent shows them
 * in `pcinet status` and logs a warning when one that means something was lost or refused grows
 * (records lost to memory or the queue cap, timeouts, stalls, refused DMA...): none is silent.
 */
static ssize_t pcinet_counters_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct pcinet_counters *c = &pcinet_fn_of(to_pci_dev(dev)->bus)->stats;
#define PCINET_COUNTER(name) { #name, &c->name }
	const struct {
		const char *name;
		atomic64_t *v;
	} t[] = {
		PCINET_COUNTER(mmio_writes), PCINET_COUNTER(mmio_reads),
		PCINET_COUNTER(volatile_reads), PCINET_COUNTER(read_timeouts),
		PCINET_COUNTER(queue_waits), PCINET_COUNTER(queue_overruns),
		PCINET_COUNTER(lost_records), PCINET_COUNTER(emulate_failures),
		PCINET_COUNTER(nested_faults), PCINET_COUNTER(deferred), PCINET_COUNTER(spun),
		PCINET_COUNTER(interrupts), PCINET_COUNTER(interrupts_pending),
		PCINET_COUNTER(interrupts_dropped), PCINET_COUNTER(dma_refused),
		PCINET_COUNTER(dma_bytes), PCINET_COUNTER(link_downs), PCINET_COUNTER(link_dropped),
		PCINET_COUNTER(pushes), PCINET_COUNTER(push_bytes), PCINET_COUNTER(push_refused),
		PCINET_COUNTER(push_over_budget), PCINET_COUNTER(push_nomem),
		PCINET_COUNTER(push_busy), PCINET_COUNTER(push_drops), PCINET_COUNTER(vq_rounds),
		PCINET_COUNTER(vq_irqs_skipped), PCINET_COUNTER(vq_kicks), PCINET_COUNTER(stalls),
		PCINET_COUNTER(stall_fails), PCINET_COUNTER(queue_drops),
	};
#undef PCINET_COUNTER
	int i, len = 0;

	for (i = 0; i < ARRAY_SIZE(t); i++)
		len += sysfs_emit_at(buf, len, "%s %lld\n", t[i].name, atomic64_read(t[i].v));
	return len;
}
static DEVICE_ATTR_RO(pcinet_counters);

/*
 * /sys/bus/pci/devices/<address>/pcinet_recovers: 1 if the driver bound now rides out a link
 * down: it has the PCI error handlers (error_detected() and slot_reset(): it quiesces, keeps its
 * I/O queued and resets the device at link up), or, a NIC's, none but hibernation's freeze() and
 * restore() (freeze.c: left bound, its interfaces without carrier, frozen and restored at link
 * up); else 0 (a link down unbinds it). The host-agent asks before it takes a link down only
 * because its endpoint went quiet: a driver that would be unbound is better left waiting for the
 * session to resume. A look without the device lock (taking it here could deadlock with a removal
 * waiting for this file): a hint, which the link-down work does not depend on.
 */
static ssize_t pcinet_recovers_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct device_driver *drv = READ_ONCE(dev->driver);
	const struct pci_error_handlers *eh = drv ? to_pci_driver(drv)->err_handler : NULL;

	if (eh && eh->error_detected)
		return sysfs_emit(buf, "%d\n", !!eh->slot_reset);
	return sysfs_emit(buf, "%d\n", pcinet_driver_parks(to_pci_dev(dev), drv));
}
static DEVICE_ATTR_RO(pcinet_recovers);

/* When the function's pci_dev appears: its files (a failure leaves that file out). */
void pcinet_sysfs_add(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	fn->timing_file = !device_create_file(&pdev->dev, &dev_attr_pcinet_timing);
	fn->counters_file = !device_create_file(&pdev->dev, &dev_attr_pcinet_counters);
	fn->recovers_file = !device_create_file(&pdev->dev, &dev_attr_pcinet_recovers);
}

void pcinet_sysfs_remove(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	if (fn->timing_file)
		device_remove_file(&pdev->dev, &dev_attr_pcinet_timing);
	if (fn->counters_file)
		device_remove_file(&pdev->dev, &dev_attr_pcinet_counters);
	if (fn->recovers_file)
		device_remove_file(&pdev->dev, &dev_attr_pcinet_recovers);
	fn->timing_file = false;
	fn->counters_file = false;
	fn->recovers_file = false;
}
