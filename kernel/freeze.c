// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: network drivers without PCI error handlers through a link down. Linux's virtio_pci
 * (under virtio_net) has no error_detected()/slot_reset(), so AER's way (core.c) would unbind it:
 * a NIC's interface, its addresses and every TCP connection through it gone. What such drivers do
 * have is hibernation: dev_pm_ops freeze() quiesces the device and forgets its state, restore()
 * sets up a device whose state is unknown, the interface and its sockets untouched.
 *
 * While the link is down the driver is left bound and untouched (its accesses read the function
 * as absent: non-volatile registers their power-on contents, so nothing waits; writes go nowhere);
 * its network interfaces lose their carrier (the stack stops handing them frames, and the transmit
 * watchdog looks only at interfaces with one). When the link is back with a new device behind the
 * function, the driver is frozen and restored at once, under the device lock, as across a
 * hibernation: freezing while the link is down would leave a frozen driver to a removal (the
 * endpoint never came back), which virtio_net's remove does not survive. A restore that fails
 * (the endpoint lost again during it) leaves the driver frozen until the next link up; unbound
 * before that, it is first restored against a stand-in for the device (pcinet_driver_unbinding()).
 */
#define pr_fmt(fmt) "pcinet: " fmt

#include <linux/netdevice.h>
#include <linux/pci.h>
#include <linux/pm.h>

#include "internal.h"

/* The network interfaces of the function: net class devices anywhere below it. */
struct pcinet_netdev_walk {
	struct pcinet_fn *fn;
	void (*f)(struct pcinet_fn *fn, struct net_device *nd);
};

static int pcinet_netdev_visit(struct device *dev, void *data)
{
	struct pcinet_netdev_walk *w = data;

	if (dev->class && !strcmp(dev->class->name, "net"))
		w->f(w->fn, to_net_dev(dev));
	else
		device_for_each_child(dev, data, pcinet_netdev_visit);
	return 0;
}

/* Calls w->f for every network interface of pdev's function (w->fn). */
static void pcinet_walk_netdevs(struct pci_dev *pdev, struct pcinet_netdev_walk *w)
{
	device_for_each_child(&pdev->dev, w, pcinet_netdev_visit);
}

static int pcinet_netdev_find(struct device *dev, void *data)
{
	if (dev->class && !strcmp(dev->class->name, "net"))
		return 1;
	return device_for_each_child(dev, data, pcinet_netdev_find);
}

/*
 * Whether the driver bound to `pdev` rides out a link down this way: it has freeze() and
 * restore(), and the function is a network card (an interface below it). What a NIC had in flight
 * is frames, which the protocols above retransmit; a block driver's freeze would wait for, or
 * lose, requests the old device never completed (virtio_blk is left to be unbound, as before).
 */
bool pcinet_driver_parks(struct pci_dev *pdev, const struct device_driver *drv)
{
	const struct dev_pm_ops *pm = drv ? drv->pm : NULL;

	return pm && pm->freeze && pm->restore &&
	       device_for_each_child(&pdev->dev, NULL, pcinet_netdev_find);
}

static void pcinet_netdev_down(struct pcinet_fn *fn, struct net_device *nd)
{
	unsigned int i;

	/* Not detached (netif_device_detach()): linkwatch leaves an absent interface alone, so its
	 * operstate would stay up and the qdisc keep taking frames.
	 */
	if (!netif_carrier_ok(nd))
		return;
	netif_carrier_off(nd);
	for (i = 0; i < ARRAY_SIZE(fn->link_carrier); i++) {
		if (!fn->link_carrier[i]) {
			fn->link_carrier[i] = nd;
			break;
		}
	}
	netdev_info(nd, "pcinet: link down: carrier off until the link is back\n");
}

static void pcinet_netdev_up(struct pcinet_fn *fn, struct net_device *nd)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(fn->link_carrier); i++) {
		if (fn->link_carrier[i] == nd) {
			fn->link_carrier[i] = NULL;
			netif_carrier_on(nd);
		}
	}
}

/*
 * The link went down and the bound driver has no error handlers but freezes: leave it bound.
 * Device lock held.
 */
void pcinet_link_park_driver(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	memset(fn->link_carrier, 0, sizeof(fn->link_carrier));
	pcinet_walk_netdevs(pdev, &(struct pcinet_netdev_walk){ .fn = fn, .f = pcinet_netdev_down });
}

/*
 * The link is back with a new device behind the function, at its power-on state: the driver
 * parked at link down is frozen (its device was reset by the power-on; what it frees it frees
 * against the new device) and restored. Device lock held. 0, or the callback's error: a driver
 * whose freeze failed is as it was (unbind it); one whose restore failed stays frozen
 * (`fn->link_frozen`) and is restored again at the next link up.
 */
int pcinet_link_restore_driver(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	const struct dev_pm_ops *pm = pdev->driver->driver.pm;
	u16 cmd;
	int err;

	/* Its registers must answer while it quiesces them (virtio waits for its status to read 0
	 * after a reset, and all-ones never does); bus mastering stays off, so the new device
	 * cannot write into buffers the driver is freeing. restore() enables the rest.
	 */
	pci_read_config_word(pdev, PCI_COMMAND, &cmd);
	pci_write_config_word(pdev, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY);
	if (!fn->link_frozen) {
		err = pm->freeze(&pdev->dev);
		if (err) {
			dev_warn_ratelimited(&pdev->dev, "link up: the driver's freeze failed (%d)\n", err);
			return err;
		}
		fn->link_frozen = true;
	}
	/* Its carrier back while the interface is detached (freeze() detached it): linkwatch
	 * applies it once restore() attaches the interface again, after whatever the driver
	 * itself then makes of the device's link status (virtio-net raises a config change at
	 * DRIVER_OK, and virtio_net reads it) — the driver's word is the last.
	 */
	pcinet_walk_netdevs(pdev, &(struct pcinet_netdev_walk){ .fn = fn, .f = pcinet_netdev_up });
	err = pm->restore(&pdev->dev);
	if (err) {
		dev_warn_ratelimited(&pdev->dev, "link up: the driver's restore failed (%d): it stays frozen until the next link up\n",
				     err);
		return err;
	}
	fn->link_frozen = false;
	return 0;
}

/*
 * A driver is about to be unbound from the function (BUS_NOTIFY_UNBIND_DRIVER, device lock held):
 * the function is being removed (W_DETACH: the host-agent's --ctrl-loss-tmo ran out, or it exits)
 * or an admin unbinds the driver. One that is frozen (its restore at a link up failed, and no link
 * up came since) would meet its remove() frozen, which remove() is not written for: virtio_net's
 * removes its CPU hotplug instance, closes its queues and frees its buffers a second time, after
 * freeze() did — a general protection fault in __cpuhp_state_remove_instance(). So it is restored
 * first, against a stand-in for the device (mmio.c; config space from the image): registers that
 * read back what the driver wrote, from their power-on contents on, and nothing that answers a
 * queue or interrupts — nothing a restore waits for. remove() then finds a running driver on a
 * device that is gone (or, unbound by an admin with the endpoint there, on the device, which it
 * resets), as after any surprise removal.
 */
void pcinet_driver_unbinding(struct pcinet_fn *fn, struct pci_dev *pdev)
{
	const struct dev_pm_ops *pm = pdev->driver ? pdev->driver->driver.pm : NULL;
	int err;

	if (!fn->link_frozen)
		return;
	/* Whatever happens here, the frozen driver goes with the unbind. */
	fn->link_frozen = false;
	if (!pm || !pm->restore)
		return;		/* not ours to freeze: pcinet_driver_parks() asked for both */
	err = pcinet_mmio_standin(fn);
	if (err)
		goto fail;
	err = pm->restore(&pdev->dev);
	pcinet_mmio_standin_end(fn);
	if (err)
		goto fail;
	pci_info(pdev, "unbinding a frozen driver: restored against a stand-in for the device first\n");
	return;

fail:
	pci_err(pdev, "unbinding a frozen driver: its restore against a stand-in failed (%d): its remove() meets it frozen\n",
		err);
}
