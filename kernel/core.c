// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: a PCI function whose device lives on another machine.
 *
 * One open file of /dev/pcinet is one PCI function. The host-agent writes the function's
 * description (config space image, write masks, BARs), then START: the function appears on a
 * virtual PCI root bus of its own, in a PCI domain of its own, with its config space served from
 * the image by this module's pci_ops and its BARs in an unused physical window. Closing the file
 * removes it. Records: kernel/uapi/pcinet.h, explained in docs/KERNEL-ABI.md.
 *
 * This file: what the host-agent's records do to the function (attach, start, link loss and
 * recovery), the bus, removal, the module. The channel (the file, records in and out) is
 * file.c's, the queue of records out queue.c's, config space config.c's, the sysfs files
 * sysfs.c's; the BARs are trapped and served by mmio.c, MSI-X by msix.c, DMA by dma.c
 * (internal.h).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/idr.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "internal.h"

static DEFINE_IDA(pcinet_domains);

/* The range of `kind` that holds [off, off + size) of a BAR, or NULL. */
const struct pcinet_range *pcinet_range_at(struct pcinet_fn *fn, u32 bar, u64 off, u32 size,
					   u32 kind)
{
	unsigned int i;

	for (i = 0; i < fn->nranges; i++) {
		const struct pcinet_range *r = &fn->ranges[i];

		if (r->bar == bar && r->kind == kind && off >= r->offset &&
		    off + size <= r->offset + r->length)
			return r;
	}
	return NULL;
}

/* ---- records from the host-agent ---- */

/* Offset of the first capability with this ID in the config image, or 0. */
u16 pcinet_find_cap(struct pcinet_fn *fn, u8 id)
{
	u8 pos = 0;
	int ttl;

	if (fn->config[PCI_STATUS] & PCI_STATUS_CAP_LIST)
		pos = fn->config[PCI_CAPABILITY_LIST] & ~3;
	for (ttl = 48; pos >= 0x40 && ttl; ttl--) {
		if (fn->config[pos] == id)
			return pos;
		pos = fn->config[pos + 1] & ~3;
	}
	return 0;
}

int pcinet_attach(struct pcinet_fn *fn, const struct pcinet_w_attach *a)
{
	int i, ret;

	if (fn->state != PN_NEW)
		return -EBUSY;
	if (le32_to_cpu(a->abi_version) != PCINET_ABI_VERSION) {
		pr_warn_ratelimited("attach: ABI version %u, this module speaks %u\n",
				    le32_to_cpu(a->abi_version), PCINET_ABI_VERSION);
		return -EPROTO;
	}
	fn->msix_vectors = le32_to_cpu(a->msix_vectors);
	if (fn->msix_vectors > PCINET_MAX_VECTORS)
		return -EINVAL;
	if ((a->config[PCI_HEADER_TYPE] & 0x7f) != PCI_HEADER_TYPE_NORMAL)
		return -EINVAL;
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		u64 size = le64_to_cpu(a->bars[i].size);
		u32 kind = le32_to_cpu(a->bars[i].kind);
		u32 flags = le32_to_cpu(a->bars[i].flags);

		if (kind == PCINET_BAR_NONE) {
			if (size || flags)
				return -EINVAL;
			continue;
		}
		if (kind == PCINET_BAR_IO) {
			pr_warn_ratelimited("attach: BAR %d: I/O BARs are not supported\n", i);
			return -EOPNOTSUPP;
		}
		if ((kind != PCINET_BAR_MEM64 && kind != PCINET_BAR_MEM32) ||
		    !is_power_of_2(size) || size < PAGE_SIZE || size > PCINET_MAX_BAR ||
		    (flags & ~PCINET_BAR_PREFETCH))
			return -EINVAL;
		/* A 64-bit BAR takes the next register for its upper half. */
		if (kind == PCINET_BAR_MEM64 && (i == PCINET_NUM_BARS - 1 ||
						 le32_to_cpu(a->bars[i + 1].kind) != PCINET_BAR_NONE))
			return -EINVAL;
	}
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		struct pcinet_bar *b = &fn->bars[i];

		b->size = le64_to_cpu(a->bars[i].size);
		b->kind = le32_to_cpu(a->bars[i].kind);
		b->flags = le32_to_cpu(a->bars[i].flags);
		if (!b->size)
			continue;
		b->shadow = vzalloc(b->size);
		if (!b->shadow)
			goto err_shadow;
	}
	memcpy(fn->config, a->config, PCINET_CONFIG_SIZE);
	memcpy(fn->config_init, a->config, PCINET_CONFIG_SIZE);
	memcpy(fn->wmask, a->wmask, PCINET_CONFIG_SIZE);
	memcpy(fn->w1cmask, a->w1cmask, PCINET_CONFIG_SIZE);
	/* The capability chain is the device's business, but we need the PCIe one for FLR. */
	fn->pcie_cap = pcinet_find_cap(fn, PCI_CAP_ID_EXP);
	ret = pcinet_msix_attach(fn);
	if (ret)
		goto err_free;
	fn->state = PN_ATTACHED;
	return 0;

err_shadow:
	ret = -ENOMEM;
err_free:
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		vfree(fn->bars[i].shadow);
		fn->bars[i] = (struct pcinet_bar){};
	}
	return ret;
}

int pcinet_range(struct pcinet_fn *fn, const struct pcinet_w_range *r)
{
	u32 bar = le32_to_cpu(r->bar), kind = le32_to_cpu(r->kind);
	u64 off = le64_to_cpu(r->offset), len = le64_to_cpu(r->length);

	if (fn->state != PN_ATTACHED)
		return -EBUSY;
	if (bar >= PCINET_NUM_BARS || !fn->bars[bar].size || !len ||
	    off >= fn->bars[bar].size || len > fn->bars[bar].size - off ||
	    (kind != PCINET_RANGE_VOLATILE && kind != PCINET_RANGE_DOORBELL))
		return -EINVAL;
	if (fn->nranges == PCINET_MAX_RANGES)
		return -ENOSPC;
	fn->ranges[fn->nranges++] = (struct pcinet_range){ bar, kind, off, len };
	return 0;
}

int pcinet_shadow(struct pcinet_fn *fn, const struct pcinet_w_shadow *s, size_t len)
{
	u32 bar = le32_to_cpu(s->bar), size = le32_to_cpu(s->size);
	u64 off = le64_to_cpu(s->offset);

	if (fn->state == PN_NEW)
		return -EBUSY;
	if (bar >= PCINET_NUM_BARS || !fn->bars[bar].size || !size || size > PCINET_MAX_DATA ||
	    sizeof(*s) + size > len || len - sizeof(*s) - size >= 8 ||
	    off >= fn->bars[bar].size || size > fn->bars[bar].size - off)
		return -EINVAL;
	return pcinet_shadow_update(fn, bar, off, s->data, size);
}

/*
 * A window below 4 GiB for the 32-bit BARs: free space in a window of a host bridge, where the
 * firmware would put a 32-bit BAR (the 64-bit window above 512 GiB is out of their reach). Every
 * access to it is trapped like the other window's, so nothing there needs to answer.
 */
static int pcinet_alloc_window32(struct pcinet_fn *fn, resource_size_t size, resource_size_t align)
{
	struct pci_bus *bus = NULL;
	struct resource *r;
	int i, ret = -ENOSPC;

	fn->window32.name = "pcinet 32-bit BARs";
	fn->window32.flags = IORESOURCE_MEM;
	pci_lock_rescan_remove();
	while (ret && (bus = pci_find_next_bus(bus)) != NULL) {
		if (bus->ops == &pcinet_pci_ops)
			continue;
		pci_bus_for_each_resource(bus, r, i) {
			if (!r || !(r->flags & IORESOURCE_MEM) || r->start > U32_MAX ||
			    !r->parent)
				continue;
			ret = allocate_resource(r, &fn->window32, size, r->start,
						min_t(resource_size_t, r->end, U32_MAX), align,
						NULL, NULL);
			if (!ret)
				break;
		}
	}
	pci_unlock_rescan_remove();
	if (ret)
		pr_warn_ratelimited("no free space of %llu bytes below 4 GiB in a host bridge window for the 32-bit BARs\n",
				    (u64)size);
	return ret;
}

/* Firmware-style assignment of the BARs of one kind: largest first, each naturally aligned. */
static void pcinet_assign_bars(struct pcinet_fn *fn, u32 kind, u64 at)
{
	int i;

	for (;;) {
		int best = -1;

		for (i = 0; i < PCINET_NUM_BARS; i++)
			if (fn->bars[i].size && fn->bars[i].kind == kind && !fn->bars[i].addr &&
			    (best < 0 || fn->bars[i].size > fn->bars[best].size))
				best = i;
		if (best < 0)
			break;
		fn->bars[best].addr = at;
		at += fn->bars[best].size;
	}
}

int pcinet_start(struct pcinet_fn *fn)
{
	struct pcinet_r_attached rec = {};
	resource_size_t total = 0, align = PAGE_SIZE, total32 = 0, align32 = PAGE_SIZE;
	LIST_HEAD(resources);
	struct pci_bus *bus;
	int i, ret;

	if (fn->state != PN_ATTACHED)
		return -EBUSY;
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		if (fn->bars[i].kind == PCINET_BAR_MEM32) {
			total32 += fn->bars[i].size;
			align32 = max_t(resource_size_t, align32, fn->bars[i].size);
		} else {
			total += fn->bars[i].size;
			align = max_t(resource_size_t, align, fn->bars[i].size);
		}
	}
	if (!total)
		total = PAGE_SIZE;	/* a function without BARs still gets a (tiny) window */
	total = roundup_pow_of_two(total);
	if (total32)
		total32 = roundup_pow_of_two(total32);

	for (i = 0; i < PCINET_NUM_BARS; i++) {
		if (!fn->bars[i].size)
			continue;
		if (!fn->bars[i].reset)
			fn->bars[i].reset = vmalloc(fn->bars[i].size);
		if (!fn->bars[i].reset)
			return -ENOMEM;	/* freed with the shadows at release */
		memcpy(fn->bars[i].reset, fn->bars[i].shadow, fn->bars[i].size);
	}
	ret = pcinet_dma_init(fn);
	if (ret)
		return ret;
	ret = ida_alloc_range(&pcinet_domains, PCINET_DOMAIN_FIRST, PCINET_DOMAIN_LAST, GFP_KERNEL);
	if (ret < 0)
		goto err_dma;
	fn->domain = ret;

	fn->window.name = "pcinet BARs";
	fn->window.flags = IORESOURCE_MEM | IORESOURCE_MEM_64;
	ret = allocate_resource(&iomem_resource, &fn->window, total, PCINET_WINDOW_MIN,
				min_t(u64, PCINET_WINDOW_MAX,
				      (1ull << boot_cpu_data.x86_phys_bits) - 1),
				align, NULL, NULL);
	if (ret) {
		pr_warn_ratelimited("no free physical window of %llu bytes for the BARs\n", (u64)total);
		goto err_domain;
	}
	if (total32) {
		ret = pcinet_alloc_window32(fn, total32, align32);
		if (ret)
			goto err_window;
	}
	pcinet_assign_bars(fn, PCINET_BAR_MEM64, fn->window.start);
	pcinet_assign_bars(fn, PCINET_BAR_MEM32, fn->window32.start);

	fn->busn.name = "pcinet bus";
	fn->busn.start = 0;
	fn->busn.end = 0;
	fn->busn.flags = IORESOURCE_BUS;
	pci_add_resource(&resources, &fn->window);
	if (total32)
		pci_add_resource(&resources, &fn->window32);
	pci_add_resource(&resources, &fn->busn);
	fn->sysdata.domain = fn->domain;
	fn->sysdata.node = NUMA_NO_NODE;

	ret = pcinet_msix_start(fn);
	if (ret) {
		pci_free_resource_list(&resources);
		goto err_window;
	}
	pci_lock_rescan_remove();
	bus = pci_create_root_bus(NULL, 0, &pcinet_pci_ops, &fn->sysdata, &resources);
	if (!bus) {
		pci_unlock_rescan_remove();
		pci_free_resource_list(&resources);
		ret = -ENOMEM;
		goto err_msix;
	}
	fn->bus = bus;
	/* The function inherits the bus's MSI domain when it is added (pcibios_device_add). */
	if (fn->msi_domain)
		dev_set_msi_domain(&bus->dev, fn->msi_domain);
	/* The bus notifier (pcinet_bus_notify) sets fn->pdev and the DMA ops as the scan adds it. */
	pci_scan_child_bus(bus);
	pci_bus_claim_resources(bus);
	pci_unlock_rescan_remove();
	if (!fn->pdev) {
		pr_warn_ratelimited("the PCI core did not find the function on the new bus\n");
		ret = -ENODEV;
		goto err_bus;
	}

	pcinet_mmio_start(fn);
	fn->state = PN_STARTED;
	pcinet_hdr(&rec.hdr, PCINET_R_ATTACHED, sizeof(rec));
	rec.domain = cpu_to_le32(fn->domain);
	rec.bus = bus->number;
	rec.devfn = 0;
	pcinet_queue_ctl(fn, &rec, sizeof(rec));
	pr_info("%04x:%02x:00.0 attached (%04x:%04x)\n", fn->domain, bus->number,
		fn->config[0] | fn->config[1] << 8, fn->config[2] | fn->config[3] << 8);
	/* Drivers bind from a worker: their probe does MMIO, which needs the host-agent reading
	 * this file, and it is still in the write() that carried W_START.
	 */
	schedule_work(&fn->add_work);
	return 0;

err_bus:
	pci_lock_rescan_remove();
	pci_stop_root_bus(bus);
	pci_remove_root_bus(bus);
	pci_unlock_rescan_remove();
	fn->bus = NULL;
err_msix:
	pcinet_msix_stop(fn);

err_window:
	if (fn->window32.parent)
		release_resource(&fn->window32);
	release_resource(&fn->window);
err_domain:
	ida_free(&pcinet_domains, fn->domain);
	for (i = 0; i < PCINET_NUM_BARS; i++)
		fn->bars[i].addr = 0;
err_dma:
	pcinet_dma_exit(fn);
	return ret;
}


void pcinet_add_work(struct work_struct *work)
{
	struct pcinet_fn *fn = container_of(work, struct pcinet_fn, add_work);

	pci_lock_rescan_remove();
	pci_bus_add_devices(fn->bus);
	pci_unlock_rescan_remove();
}

/* ---- the function on and off the bus ---- */

/*
 * The PCI core adds the function when it scans the bus (W_START, and every rescan after an admin
 * removed it: `echo 1 > .../remove; echo 1 > /sys/bus/pci/rescan`) and deletes it when it is
 * removed (by an admin, or by pcinet_remove()). Each new pci_dev gets the DMA sandbox's ops and
 * the timing file, and becomes fn->pdev. Under pci_lock_rescan_remove(), which every add and
 * removal holds: fn->pdev changes only under it.
 */
static void pcinet_dev_added(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	pcinet_dma_set_ops(fn, pdev);
	/* Behind it is whatever a remote endpoint says: to the kernel, an external device (like a
	 * Thunderbolt one), which code that distinguishes them treats with suspicion.
	 */
	pdev->untrusted = 1;
	WARN_ON_ONCE(fn->pdev);
	pci_dev_put(fn->pdev);
	fn->pdev = pci_dev_get(pdev);
	pcinet_sysfs_add(fn, pdev);
}

/*
 * The function leaves the bus, its driver already unbound. Taken off by an admin while the device
 * is still there (state PN_STARTED), it returns to its power-on state, as in a slot whose power is
 * cut, and the endpoint is told (R_FUNCTION_RESET): queues, rings and push rules of the driver that
 * is gone must not meet the one a rescan binds.
 */
static void pcinet_dev_deleted(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	struct pcinet_hdr reset;

	if (fn->pdev != pdev)
		return;
	pcinet_sysfs_remove(fn, pdev);
	fn->pdev = NULL;
	pci_dev_put(pdev);
	if (READ_ONCE(fn->state) != PN_STARTED || READ_ONCE(fn->link_down))
		return;
	pcinet_power_on_locked(fn);
	pcinet_hdr(&reset, PCINET_R_FUNCTION_RESET, sizeof(reset));
	pcinet_queue(fn, &reset, sizeof(reset));
	pr_info("%04x:%02x:00.0 removed from the bus: reset to its power-on state\n", fn->domain,
		fn->bus->number);
}

static int pcinet_bus_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	struct pci_dev *pdev = to_pci_dev(data);

	if (pdev->bus->ops != &pcinet_pci_ops)
		return NOTIFY_DONE;
	if (action == BUS_NOTIFY_ADD_DEVICE)
		pcinet_dev_added(pcinet_fn_of(pdev->bus), pdev);
	else if (action == BUS_NOTIFY_DEL_DEVICE)
		pcinet_dev_deleted(pcinet_fn_of(pdev->bus), pdev);
	else if (action == BUS_NOTIFY_UNBIND_DRIVER)
		pcinet_driver_unbinding(pcinet_fn_of(pdev->bus), pdev);
	return NOTIFY_DONE;
}

static struct notifier_block pcinet_bus_nb = {
	.notifier_call = pcinet_bus_notify,
};

/* The function's pci_dev with a reference, or NULL while it is off the bus. */
static struct pci_dev *pcinet_get_pdev(struct pcinet_fn *fn)
{
	struct pci_dev *pdev;

	pci_lock_rescan_remove();
	pdev = pci_dev_get(fn->pdev);
	pci_unlock_rescan_remove();
	return pdev;
}

/* ---- link loss and recovery ---- */

/* Drops every record not yet read: they were for the endpoint that is gone. */
static void pcinet_purge_queue(struct pcinet_fn *fn)
{
	struct pcinet_rec *r, *tmp;
	LIST_HEAD(old);

	spin_lock_irq(&fn->qlock);
	list_splice_init(&fn->queue, &old);
	fn->queued = 0;
	spin_unlock_irq(&fn->qlock);
	list_for_each_entry_safe(r, tmp, &old, node) {
		atomic64_inc(&fn->stats.link_dropped);
		kvfree(r);
	}
	wake_up_interruptible_all(&fn->writeq);
}

/*
 * What AER does when a link fails (drivers/pci/pcie/err.c): the channel is frozen and the driver
 * is told, so it stops touching the device and parks its I/O until a reset. A NIC's driver without
 * error handlers that can hibernate stays bound too (freeze.c: its interfaces lose their carrier).
 * One that cannot recover either way (or says so) is unbound now, while the function reads as
 * absent, so its remove path gives up on the device instead of waiting for it; it is bound again
 * when the link is back.
 */
void pcinet_link_down_work(struct work_struct *work)
{
	struct pcinet_fn *fn = container_of(work, struct pcinet_fn, link_down_work);
	struct pci_dev *pdev = pcinet_get_pdev(fn);
	const struct pci_error_handlers *eh;
	pci_ers_result_t vote = PCI_ERS_RESULT_NONE;
	bool bound;

	fn->link_recoverable = false;
	fn->link_parked = false;
	fn->link_driver = NULL;
	if (!pdev)
		return;	/* an admin removed it from the bus: no driver to tell */
	device_lock(&pdev->dev);
	pdev->error_state = pci_channel_io_frozen;
	bound = pdev->driver;
	eh = bound ? pdev->driver->err_handler : NULL;
	if (eh && eh->error_detected)
		vote = eh->error_detected(pdev, pci_channel_io_frozen);
	fn->link_recoverable = bound && (vote == PCI_ERS_RESULT_NEED_RESET ||
					 vote == PCI_ERS_RESULT_CAN_RECOVER);
	fn->link_parked = bound && !(eh && eh->error_detected) &&
			  pcinet_driver_parks(pdev, &pdev->driver->driver);
	if (fn->link_parked)
		pcinet_link_park_driver(fn, pdev);
	fn->link_driver = fn->link_recoverable || fn->link_parked ? pdev->driver : NULL;
	device_unlock(&pdev->dev);
	if (fn->link_recoverable) {
		pci_info(pdev, "link down: the driver waits for a reset\n");
	} else if (fn->link_parked) {
		pci_info(pdev, "link down: the driver stays bound; frozen and restored when the link is back\n");
	} else if (bound) {
		pci_info(pdev, "link down: the driver cannot recover; unbinding it until the link is back\n");
		device_release_driver(&pdev->dev);
	}
	pci_dev_put(pdev);
}

/*
 * A fresh device is behind the function. A driver waiting for a reset gets slot_reset() and
 * resume(), as after a secondary bus reset; one parked without error handlers is frozen and
 * restored (freeze.c); if it fails to recover, it is unbound. Only the driver
 * that was told of the failure: an admin may have bound another while the link was down (pci-stub,
 * vfio-pci — often without error handlers), and that one probed the function as it was then, so it
 * is left alone. Then any function without a driver is offered to the drivers again.
 */
void pcinet_link_up_work(struct work_struct *work)
{
	struct pcinet_fn *fn = container_of(work, struct pcinet_fn, link_up_work);
	struct pci_dev *pdev = pcinet_get_pdev(fn);
	const struct pci_error_handlers *eh;
	pci_ers_result_t vote = PCI_ERS_RESULT_RECOVERED;
	bool failed = false, frozen = false, told;
	int err;

	if (!pdev) {
		/* Removed while the link was down: a rescan finds it again. */
		pr_info("%04x:00:00.0 link up: the function is off the bus\n", fn->domain);
		return;
	}
	device_lock(&pdev->dev);
	pdev->error_state = pci_channel_io_normal;
	told = (fn->link_recoverable || fn->link_parked) && pdev->driver &&
	       pdev->driver == fn->link_driver;
	if (told && fn->link_parked) {
		err = pcinet_link_restore_driver(fn, pdev);
		/* Frozen and not restored: unbinding would run its remove on a frozen device. */
		failed = err && !fn->link_frozen;
		frozen = fn->link_frozen;
	} else if (told) {
		eh = pdev->driver->err_handler;
		if (eh && eh->slot_reset)
			vote = eh->slot_reset(pdev);
		if (vote == PCI_ERS_RESULT_RECOVERED && eh && eh->resume)
			eh->resume(pdev);
		failed = vote != PCI_ERS_RESULT_RECOVERED;
	} else if ((fn->link_recoverable || fn->link_parked) && pdev->driver) {
		pci_info(pdev, "link up: %s was bound while the link was down; leaving it\n",
			 pdev->driver->name);
	}
	fn->link_driver = NULL;
	device_unlock(&pdev->dev);
	if (failed) {
		pci_warn(pdev, "link up: the driver did not recover; binding it again\n");
		device_release_driver(&pdev->dev);
	}
	if (!pdev->dev.driver && device_attach(&pdev->dev) < 0)
		pci_warn(pdev, "link up: binding a driver failed\n");
	pci_info(pdev, "link up: %s\n", !pdev->dev.driver ? "no driver" :
		 frozen ? "the driver stays frozen" :
		 told && !failed ? "recovered" : "driver bound again");
	pci_dev_put(pdev);
}

/* W_LINK_DOWN, or the kernel link failed. Under lock. */
int pcinet_link_down(struct pcinet_fn *fn)
{
	if (fn->state != PN_STARTED || fn->link_down)
		return -EBUSY;
	pcinet_link_close(fn);
	if (!fn->link_wq) {
		fn->link_wq = alloc_ordered_workqueue("pcinet%d-link", 0, fn->domain);
		if (!fn->link_wq)
			return -ENOMEM;
	}
	atomic64_inc(&fn->stats.link_downs);
	WRITE_ONCE(fn->link_down, true);
	/* After link_down is set: a doorbell still pushing finishes first, its records dropped. */
	pcinet_push_clear(fn);
	pcinet_purge_queue(fn);
	pcinet_mmio_link_down(fn);
	queue_work(fn->link_wq, &fn->link_down_work);
	return 0;
}

/*
 * The agent has written the new device's initial shadow (W_SHADOW) before this. The function
 * returns to its power-on state; the driver's recovery restores the rest.
 */
int pcinet_link_up(struct pcinet_fn *fn)
{
	if (fn->state != PN_STARTED || !fn->link_down)
		return -EBUSY;
	/* A record that raced W_LINK_DOWN (queued by a CPU that had not yet seen it) is stale. */
	pcinet_purge_queue(fn);
	pcinet_power_on_locked(fn);
	/* Without a new W_CONNECT the data plane comes back to read() and write(). */
	fn->linked = fn->link != NULL;
	WRITE_ONCE(fn->link_down, false);
	queue_work(fn->link_wq, &fn->link_up_work);
	return 0;
}

/*
 * Surprise removal: from now on the function answers nothing (MMIO reads return all-ones,
 * writes go nowhere, waiting reads give up), the driver unbinds, the function and its bus go.
 */
void pcinet_remove(struct pcinet_fn *fn)
{
	struct pcinet_counters *c = &fn->stats;

	pcinet_link_close(fn);
	if (fn->state == PN_STARTED) {
		WRITE_ONCE(fn->state, PN_DETACHED);
		pcinet_push_clear(fn);
		wake_up_interruptible_all(&fn->writeq);
		wake_up_all(&fn->mmioq);
		cancel_work_sync(&fn->add_work);
		if (fn->link_wq) {
			/* Recovery still running finds the function gone and finishes quickly. */
			flush_workqueue(fn->link_wq);
			destroy_workqueue(fn->link_wq);
			fn->link_wq = NULL;
		}
		pci_lock_rescan_remove();
		pci_stop_root_bus(fn->bus);
		pci_remove_root_bus(fn->bus);
		pci_unlock_rescan_remove();
		pcinet_mmio_stop(fn);
		pcinet_msix_stop(fn);
		pcinet_dma_exit(fn);
		release_resource(&fn->window);
		if (fn->window32.parent)
			release_resource(&fn->window32);
		ida_free(&pcinet_domains, fn->domain);
		pr_info("%04x:00:00.0 removed: mmio writes %lld reads %lld volatile %lld timeouts %lld; queue waits %lld overruns %lld lost %lld; emulation failures %lld; nested faults %lld; waits asleep %lld busy %lld; interrupts %lld pending %lld dropped %lld; dma bytes %lld refused %lld; link downs %lld dropped %lld; pushes %lld bytes %lld skipped refused %lld budget %lld nomem %lld busy %lld; push drops %lld; virtq rounds %lld irqs skipped %lld kicks %lld; stalls %lld fast fails %lld queue drops %lld\n",
			fn->domain, atomic64_read(&c->mmio_writes), atomic64_read(&c->mmio_reads),
			atomic64_read(&c->volatile_reads), atomic64_read(&c->read_timeouts),
			atomic64_read(&c->queue_waits), atomic64_read(&c->queue_overruns),
			atomic64_read(&c->lost_records), atomic64_read(&c->emulate_failures),
			atomic64_read(&c->nested_faults),
			atomic64_read(&c->deferred), atomic64_read(&c->spun),
			atomic64_read(&c->interrupts), atomic64_read(&c->interrupts_pending),
			atomic64_read(&c->interrupts_dropped), atomic64_read(&c->dma_bytes),
			atomic64_read(&c->dma_refused), atomic64_read(&c->link_downs),
			atomic64_read(&c->link_dropped), atomic64_read(&c->pushes),
			atomic64_read(&c->push_bytes), atomic64_read(&c->push_refused),
			atomic64_read(&c->push_over_budget), atomic64_read(&c->push_nomem),
			atomic64_read(&c->push_busy), atomic64_read(&c->push_drops),
			atomic64_read(&c->vq_rounds), atomic64_read(&c->vq_irqs_skipped),
			atomic64_read(&c->vq_kicks), atomic64_read(&c->stalls),
			atomic64_read(&c->stall_fails), atomic64_read(&c->queue_drops));
	}
	WRITE_ONCE(fn->state, PN_DETACHED);
	wake_up_interruptible_all(&fn->readq);
}

static struct miscdevice pcinet_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "pcinet",
	.fops = &pcinet_fops,
	.mode = 0600,
};

static int __init pcinet_init(void)
{
	BUILD_BUG_ON(sizeof(struct pcinet_w_attach) % 8);
	BUILD_BUG_ON(sizeof(struct pcinet_r_attached) % 8);
	int ret;

	BUILD_BUG_ON(sizeof(struct pcinet_w_mmio_read_cpl) % 8);
	/* The push records' sizes are part of the ABI (proto/kernel-abi.ts). */
	BUILD_BUG_ON(sizeof(struct pcinet_w_push_rule) != 72);
	BUILD_BUG_ON(sizeof(struct pcinet_r_push) != 24);
	BUILD_BUG_ON(sizeof(struct pcinet_r_push_drop) != 24);
	BUILD_BUG_ON(sizeof(struct pcinet_r_push_rule_set) != 16);
	BUILD_BUG_ON(sizeof(struct pcinet_w_connect) != 88);
	BUILD_BUG_ON(sizeof(struct pcinet_link_hello) != 32);
	BUILD_BUG_ON(sizeof(struct pcinet_r_link_closed) != 16);
	ret = pcinet_link_init();
	if (ret)
		return ret;
	ret = pcinet_mmio_init();
	if (ret)
		goto err_link;
	ret = bus_register_notifier(&pci_bus_type, &pcinet_bus_nb);
	if (ret)
		goto err_mmio;
	ret = misc_register(&pcinet_misc);
	if (ret)
		goto err_notifier;
	return 0;

err_notifier:
	bus_unregister_notifier(&pci_bus_type, &pcinet_bus_nb);
err_mmio:
	pcinet_mmio_exit();
err_link:
	pcinet_link_exit();
	return ret;
}

static void __exit pcinet_exit(void)
{
	misc_deregister(&pcinet_misc);
	bus_unregister_notifier(&pci_bus_type, &pcinet_bus_nb);
	pcinet_mmio_exit();
	pcinet_link_exit();
	ida_destroy(&pcinet_domains);
}

module_init(pcinet_init);
module_exit(pcinet_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("pcinet: PCIe devices over the network");
MODULE_AUTHOR("pcinet developers");
/* The package version: dkms.conf and package.json say the same (test/packaging.test.ts). */
MODULE_VERSION("0.1.0");
