// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: config space, served from the function's image by its bus's pci_ops. Reads come from
 * the image; writes change it through the write masks, size and place the BARs, and go to the
 * endpoint as R_CONFIG_WRITE records (docs/KERNEL.md, "Config space").
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "internal.h"

static int pcinet_bar_of(struct pcinet_fn *fn, int where, bool *hi)
{
	int i;

	if (where < PCI_BASE_ADDRESS_0 || where >= PCI_BASE_ADDRESS_5 + 4)
		return -1;
	i = (where - PCI_BASE_ADDRESS_0) / 4;
	*hi = false;
	if (fn->bars[i].size)
		return i;
	if (i > 0 && fn->bars[i - 1].kind == PCINET_BAR_MEM64) {
		*hi = true;
		return i - 1;
	}
	return -2;	/* a BAR register no BAR uses */
}

static u32 pcinet_bar_dword(struct pcinet_bar *b, bool hi)
{
	u64 mask = ~(b->size - 1);
	u32 flags = (b->kind == PCINET_BAR_MEM64 ? PCI_BASE_ADDRESS_MEM_TYPE_64 : 0) |
		    (b->flags & PCINET_BAR_PREFETCH ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0);

	if (hi)
		return b->sizing_hi ? upper_32_bits(mask) : upper_32_bits(b->addr);
	return ((b->sizing_lo ? lower_32_bits(mask) : lower_32_bits(b->addr)) &
		PCI_BASE_ADDRESS_MEM_MASK) | flags;
}

/*
 * Config space is read and written under cfg_lock: x86 selects PCI_LOCKLESS_CONFIG, so the PCI core
 * calls these without pci_lock, from any CPU at once. A write is then whole to every reader (as a
 * dword write is on a device), and its R_CONFIG_WRITE records leave in the order the image changed.
 */
static int pcinet_cfg_read(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 *val)
{
	struct pcinet_fn *fn = pcinet_fn_of(bus);
	unsigned long flags;
	bool hi;
	int bar;
	u32 v = 0;
	int i;

	if (devfn != 0 || where < 0 || where + size > PCINET_CONFIG_SIZE) {
		*val = ~0u;
		return PCIBIOS_DEVICE_NOT_FOUND;
	}
	if ((READ_ONCE(fn->link_down) || READ_ONCE(fn->state) == PN_DETACHED) &&
	    !READ_ONCE(fn->standin)) {
		/* As over a PCIe link that is down, or from a surprise-removed function: all-ones, so
		 * pci_device_is_present() says no and drivers take their surprise-removal paths. (A
		 * stand-in for the device, freeze.c, answers from the image.)
		 */
		*val = size == 4 ? ~0u : (1u << (8 * size)) - 1;
		return PCIBIOS_SUCCESSFUL;
	}
	raw_spin_lock_irqsave(&fn->cfg_lock, flags);
	bar = pcinet_bar_of(fn, where & ~3, &hi);
	if (bar >= 0) {
		v = pcinet_bar_dword(&fn->bars[bar], hi) >> (8 * (where & 3));
	} else if (bar == -2 || (where >= PCI_ROM_ADDRESS && where < PCI_ROM_ADDRESS + 4)) {
		v = 0;
	} else {
		for (i = 0; i < size; i++)
			v |= (u32)fn->config[where + i] << (8 * i);
	}
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
	*val = size == 4 ? v : v & ((1u << (8 * size)) - 1);
	return PCIBIOS_SUCCESSFUL;
}

static void pcinet_bar_write(struct pcinet_bar *b, bool hi, int shift, int size, u32 val)
{
	u32 all = size == 4 ? ~0u : (1u << (8 * size)) - 1;
	u32 cur = pcinet_bar_dword(b, hi);

	/* Merge a partial write into the dword as it reads now. */
	val = (cur & ~(all << shift)) | ((val & all) << shift);
	if (hi) {
		b->sizing_hi = val == ~0u;
		if (!b->sizing_hi)
			b->addr = ((u64)val << 32) | lower_32_bits(b->addr);
	} else {
		b->sizing_lo = (val | 0xf) == ~0u;
		if (!b->sizing_lo)
			b->addr = (b->addr & ~0xffffffffull) | (val & ~(u32)0xf & lower_32_bits(~(b->size - 1)));
	}
}

/*
 * The function's registers as at power-on, as after an FLR: config space from the attached image,
 * the MSI-X table masked, write counters from 0, no push rules. The BAR registers keep their
 * addresses (the PCI core restores them anyway).
 */
static void pcinet_power_on(struct pcinet_fn *fn)
{
	lockdep_assert_held(&fn->cfg_lock);
	memcpy(fn->config, fn->config_init, PCINET_CONFIG_SIZE);
	pcinet_msix_reset(fn);
	pcinet_push_clear(fn);
	atomic64_set(&fn->writes_sent, 0);
	atomic64_set(&fn->writes_applied, 0);
}

/* pcinet_power_on() from outside a config access. */
void pcinet_power_on_locked(struct pcinet_fn *fn)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&fn->cfg_lock, flags);
	pcinet_power_on(fn);
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
}

static int pcinet_cfg_write(struct pci_bus *bus, unsigned int devfn, int where, int size, u32 val)
{
	struct pcinet_fn *fn = pcinet_fn_of(bus);
	struct pcinet_r_config_write rec = {};
	bool hi, flr = false;
	unsigned long flags;
	u32 now = 0;
	int bar, i;

	if (devfn != 0 || where < 0 || where + size > PCINET_CONFIG_SIZE)
		return PCIBIOS_DEVICE_NOT_FOUND;
	if ((READ_ONCE(fn->link_down) || READ_ONCE(fn->state) == PN_DETACHED) &&
	    !READ_ONCE(fn->standin))
		return PCIBIOS_SUCCESSFUL;	/* goes nowhere; W_LINK_UP resets the image */
	raw_spin_lock_irqsave(&fn->cfg_lock, flags);
	bar = pcinet_bar_of(fn, where & ~3, &hi);
	if (bar >= 0) {
		pcinet_bar_write(&fn->bars[bar], hi, 8 * (where & 3), size, val);
		goto out;
	}
	if (bar == -2 || (where >= PCI_ROM_ADDRESS && where < PCI_ROM_ADDRESS + 4))
		goto out;
	for (i = 0; i < size; i++) {
		u8 b = val >> (8 * i);
		u8 *c = &fn->config[where + i];

		*c = (*c & ~fn->wmask[where + i]) | (b & fn->wmask[where + i]);
		*c &= ~(b & fn->w1cmask[where + i]);
		now |= (u32)*c << (8 * i);
	}
	if (fn->pcie_cap && where <= fn->pcie_cap + PCI_EXP_DEVCTL + 1 &&
	    where + size > fn->pcie_cap + PCI_EXP_DEVCTL + 1) {
		u8 *hi_byte = &fn->config[fn->pcie_cap + PCI_EXP_DEVCTL + 1];

		if (*hi_byte & (PCI_EXP_DEVCTL_BCR_FLR >> 8)) {
			/* FLR itself reads 0 afterwards: it is in no image. */
			pcinet_power_on(fn);
			flr = true;
		}
	}
	if (READ_ONCE(fn->standin))
		goto local;	/* the image is all a stand-in has (freeze.c): nobody to tell */
	pcinet_hdr(&rec.hdr, PCINET_R_CONFIG_WRITE, sizeof(rec));
	rec.offset = cpu_to_le32(where);
	rec.size = cpu_to_le32(size);
	rec.value = cpu_to_le32(now);
	pcinet_queue_atomic(fn, &rec, sizeof(rec));
	if (flr) {
		struct pcinet_hdr reset;

		pcinet_hdr(&reset, PCINET_R_FUNCTION_RESET, sizeof(reset));
		pcinet_queue_atomic(fn, &reset, sizeof(reset));
	}
local:
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
	pcinet_msix_config_written(fn, where, size);
	return PCIBIOS_SUCCESSFUL;
out:
	raw_spin_unlock_irqrestore(&fn->cfg_lock, flags);
	return PCIBIOS_SUCCESSFUL;
}

struct pci_ops pcinet_pci_ops = {
	.read = pcinet_cfg_read,
	.write = pcinet_cfg_write,
};
