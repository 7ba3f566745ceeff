// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: /dev/pcinet, the channel to the host-agent. One open file is one PCI function (core.c):
 * open() sets it up, write() applies the host-agent's records one by one (pcinet_record(), which
 * hands each to the part it is for; the kernel link's records come through
 * pcinet_link_record()), read() and poll() serve the records out (queue.c), release() removes
 * the function. Records: kernel/uapi/pcinet.h, docs/KERNEL-ABI.md.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "internal.h"

static int pcinet_record(struct pcinet_fn *fn, const void *buf, size_t len)
{
	const struct pcinet_hdr *h = buf;
	u16 type = le16_to_cpu(h->type);

	/* Anything the device says ends a stall (pcinet_stall()). */
	if (type != PCINET_W_LINK_DOWN && type != PCINET_W_DETACH)
		pcinet_unstall(fn);
	switch (type) {
	case PCINET_W_ATTACH:
		if (len != ALIGN(sizeof(struct pcinet_w_attach), 8))
			return -EINVAL;
		return pcinet_attach(fn, buf);
	case PCINET_W_RANGE:
		if (len != sizeof(struct pcinet_w_range))
			return -EINVAL;
		return pcinet_range(fn, buf);
	case PCINET_W_SHADOW:
		if (len < sizeof(struct pcinet_w_shadow))
			return -EINVAL;
		return pcinet_shadow(fn, buf, len);
	case PCINET_W_START:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		return pcinet_start(fn);
	case PCINET_W_WRITES_APPLIED: {
		const struct pcinet_w_writes_applied *w = buf;
		u64 count;

		if (len != sizeof(*w))
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		/* Counts restart at 0 on a function reset, and a count from before the reset can
		 * still be on its way: never move backwards, never past what was sent.
		 */
		count = min_t(u64, le64_to_cpu(w->count), atomic64_read(&fn->writes_sent));
		if (count > atomic64_read(&fn->writes_applied)) {
			atomic64_set_release(&fn->writes_applied, count);
			wake_up_all(&fn->mmioq);
		}
		return 0;
	}
	case PCINET_W_MMIO_READ_CPL:
		if (len != sizeof(struct pcinet_w_mmio_read_cpl))
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_mmio_read_cpl(fn, buf);
	case PCINET_W_DMA_READ:
	{
		const struct pcinet_w_dma_read *d = buf;

		if (len != sizeof(*d) || !d->size || le32_to_cpu(d->size) > PCINET_MAX_DATA)
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_dma_read(fn, d);
	}
	case PCINET_W_DMA_WRITE: {
		const struct pcinet_w_dma_write *d = buf;
		u32 size;

		if (len < sizeof(*d))
			return -EINVAL;
		size = le32_to_cpu(d->size);
		if (!size || size > PCINET_MAX_DATA || len != ALIGN(sizeof(*d) + size, 8))
			return -EINVAL;
		if (d->reserved)
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_dma_write(fn, d);
	}
	case PCINET_W_INTERRUPT: {
		const struct pcinet_w_interrupt *w = buf;

		if (len != sizeof(*w) || w->reserved)
			return -EINVAL;
		if (fn->state != PN_STARTED)
			return -EBUSY;
		if (le32_to_cpu(w->vector) >= fn->msix_vectors)
			return -EINVAL;
		if (pcinet_down_drop(fn))
			return 0;
		return pcinet_msix_raise(fn, le32_to_cpu(w->vector));
	}
	case PCINET_W_LINK_DOWN:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		/* A failed kernel link may have taken it down before the host-agent heard of it. */
		if (fn->linked && fn->link_down && fn->state == PN_STARTED)
			return 0;
		return pcinet_link_down(fn);
	case PCINET_W_LINK_UP:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		return pcinet_link_up(fn);
	case PCINET_W_PUSH_RULE:
		if (len != sizeof(struct pcinet_w_push_rule))
			return -EINVAL;
		return pcinet_push_rule(fn, buf);
	case PCINET_W_VIRTQ_DONE:
		if (len != sizeof(struct pcinet_w_virtq_done))
			return -EINVAL;
		return pcinet_virtq_done(fn, buf);
	case PCINET_W_CONNECT: {
		struct pcinet_w_connect *w = (void *)buf;	/* fn->wbuf: ours to scrub */
		int ret;

		if (len != sizeof(*w))
			return -EINVAL;
		ret = pcinet_link_connect(fn, w);
		/* The transform has its own copy: the key does not linger in the write buffer. */
		memzero_explicit(w->key, sizeof(w->key));
		return ret;
	}
	case PCINET_W_DETACH:
		if (len != sizeof(struct pcinet_hdr))
			return -EINVAL;
		if (fn->state == PN_DETACHED)
			return -EBUSY;
		pcinet_remove(fn);
		return 0;
	default:
		return -EINVAL;
	}
}

/* A record the endpoint sent on the kernel link: data-plane records only. Under lock. */
int pcinet_link_record(struct pcinet_fn *fn, const void *buf, size_t len)
{
	const struct pcinet_hdr *h = buf;

	switch (le16_to_cpu(h->type)) {
	case PCINET_W_SHADOW:
	case PCINET_W_WRITES_APPLIED:
	case PCINET_W_MMIO_READ_CPL:
	case PCINET_W_DMA_READ:
	case PCINET_W_DMA_WRITE:
	case PCINET_W_INTERRUPT:
	case PCINET_W_PUSH_RULE:
	case PCINET_W_VIRTQ_DONE:
		if (fn->state != PN_STARTED || fn->link_down)
			return -EBUSY;
		return pcinet_record(fn, buf, len);
	default:
		return -EPROTO;
	}
}

static ssize_t pcinet_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	struct pcinet_fn *fn = file->private_data;
	struct pcinet_hdr h;
	size_t done = 0;
	void *buf = fn->wbuf;
	int ret = 0;

	mutex_lock(&fn->lock);
	while (done < count) {
		size_t len;

		if (count - done < sizeof(h) || copy_from_user(&h, ubuf + done, sizeof(h))) {
			ret = count - done < sizeof(h) ? -EINVAL : -EFAULT;
			break;
		}
		len = le32_to_cpu(h.len);
		if (len < sizeof(h) || len % 8 || len > count - done || len > PCINET_MAX_RECORD + 8 ||
		    h.flags) {
			ret = -EINVAL;
			break;
		}
		if (copy_from_user(buf, ubuf + done, len)) {
			ret = -EFAULT;
			break;
		}
		ret = pcinet_record(fn, buf, len);
		if (ret)
			break;
		done += len;
	}
	mutex_unlock(&fn->lock);
	pcinet_link_reap(fn);
	/* Records before a bad one were applied: report them; the next write() gets the error. */
	return done ? done : ret;
}

/* What read() serves: control records first, then (unless the data plane is on a link) the rest. */
static bool pcinet_readable(struct pcinet_fn *fn)
{
	return !list_empty_careful(&fn->ctl) || (!READ_ONCE(fn->linked) && READ_ONCE(fn->queued) > 0);
}

/* The next record for read(), or NULL; qlock held. */
static struct list_head *pcinet_read_list(struct pcinet_fn *fn)
{
	if (!list_empty(&fn->ctl))
		return &fn->ctl;
	if (!fn->linked && !list_empty(&fn->queue))
		return &fn->queue;
	return NULL;
}

static ssize_t pcinet_read(struct file *file, char __user *ubuf, size_t count, loff_t *ppos)
{
	struct pcinet_fn *fn = file->private_data;
	struct list_head *from;
	struct pcinet_rec *r;
	bool skipped = false;
	size_t done = 0;
	int ret;

again:
	for (;;) {
		spin_lock_irq(&fn->qlock);
		if (pcinet_read_list(fn))
			break;
		spin_unlock_irq(&fn->qlock);
		if (READ_ONCE(fn->state) == PN_DETACHED)
			return 0;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		ret = wait_event_interruptible(fn->readq, pcinet_readable(fn) ||
					       READ_ONCE(fn->state) == PN_DETACHED);
		if (ret)
			return ret;
	}
	/* qlock held, a record waiting. Copy whole records; never sleep with the lock held. */
	while ((from = pcinet_read_list(fn))) {
		r = list_first_entry(from, struct pcinet_rec, node);
		if (r->len > count - done)
			break;
		list_del(&r->node);
		if (from == &fn->queue)
			fn->queued -= r->len;
		spin_unlock_irq(&fn->qlock);
		/* A push whose memory went since its doorbell is not read (pcinet_push_fill()). */
		if (!pcinet_push_fill(fn, &r)) {
			skipped = true;
			spin_lock_irq(&fn->qlock);
			continue;
		}
		if (copy_to_user(ubuf + done, r->data, r->len)) {
			/* Put it back: nothing is lost because the reader's buffer was bad. */
			spin_lock_irq(&fn->qlock);
			list_add(&r->node, from);
			if (from == &fn->queue)
				fn->queued += r->len;
			spin_unlock_irq(&fn->qlock);
			return done ? done : -EFAULT;
		}
		done += r->len;
		kvfree(r);
		spin_lock_irq(&fn->qlock);
	}
	spin_unlock_irq(&fn->qlock);
	wake_up_interruptible(&fn->writeq);
	if (!done && skipped) {
		/* All there was were pushes that went: wait for the next record as if none came. */
		skipped = false;
		goto again;
	}
	return done ? done : -EINVAL;	/* the buffer cannot hold the next record */
}

static __poll_t pcinet_poll(struct file *file, poll_table *wait)
{
	struct pcinet_fn *fn = file->private_data;
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &fn->readq, wait);
	if (pcinet_readable(fn))
		mask |= EPOLLIN | EPOLLRDNORM;
	if (READ_ONCE(fn->state) == PN_DETACHED)
		mask |= EPOLLHUP;
	return mask;
}

static int pcinet_open(struct inode *inode, struct file *file)
{
	struct pcinet_fn *fn;

	/* Whoever holds the file presents devices to in-tree drivers: the administrator's
	 * business, whatever the node's mode says.
	 */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	fn = kvzalloc(sizeof(*fn), GFP_KERNEL);
	if (!fn)
		return -ENOMEM;
	/* Every write() copies its records through this: allocated once, not per call. */
	fn->wbuf = kvmalloc(PCINET_MAX_RECORD + 8, GFP_KERNEL);
	if (!fn->wbuf) {
		kvfree(fn);
		return -ENOMEM;
	}
	mutex_init(&fn->lock);
	spin_lock_init(&fn->qlock);
	raw_spin_lock_init(&fn->cfg_lock);
	spin_lock_init(&fn->shadow_lock);
	spin_lock_init(&fn->reads_lock);
	spin_lock_init(&fn->msix_lock);
	spin_lock_init(&fn->push_lock);
	INIT_LIST_HEAD(&fn->queue);
	INIT_LIST_HEAD(&fn->ctl);
	INIT_LIST_HEAD(&fn->dead_links);
	INIT_LIST_HEAD(&fn->live);
	INIT_WORK(&fn->add_work, pcinet_add_work);
	INIT_WORK(&fn->link_down_work, pcinet_link_down_work);
	INIT_WORK(&fn->link_up_work, pcinet_link_up_work);
	init_waitqueue_head(&fn->readq);
	init_waitqueue_head(&fn->writeq);
	init_waitqueue_head(&fn->mmioq);
	fn->state = PN_NEW;
	file->private_data = fn;
	return stream_open(inode, file);
}

static int pcinet_release(struct inode *inode, struct file *file)
{
	struct pcinet_fn *fn = file->private_data;
	struct pcinet_rec *r, *tmp;
	int i;

	/* The kernel link's receive thread applies records under the lock too. */
	mutex_lock(&fn->lock);
	pcinet_remove(fn);
	mutex_unlock(&fn->lock);
	pcinet_link_reap(fn);
	list_for_each_entry_safe(r, tmp, &fn->queue, node)
		kvfree(r);
	list_for_each_entry_safe(r, tmp, &fn->ctl, node)
		kvfree(r);
	for (i = 0; i < PCINET_NUM_BARS; i++) {
		vfree(fn->bars[i].shadow);
		vfree(fn->bars[i].reset);
	}
	pcinet_msix_free(fn);
	kvfree(fn->wbuf);
	kvfree(fn);
	return 0;
}

const struct file_operations pcinet_fops = {
	.owner = THIS_MODULE,
	.open = pcinet_open,
	.release = pcinet_release,
	.read = pcinet_read,
	.write = pcinet_write,
	.poll = pcinet_poll,
	.llseek = no_llseek,
};
