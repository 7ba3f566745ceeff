// SPDX-License-Identifier: GPL-2.0
/*
 * pcinet: the kernel link. W_CONNECT makes the module connect to the endpoint itself; from then
 * on the function's data plane travels on that TCP connection as the same records /dev/pcinet
 * carries, and the host-agent only keeps the control plane (attach, link state, removal). A
 * transmit thread sends the read queue as it fills; a receive thread applies what the endpoint
 * sends exactly as write() would. This takes the host-agent's process off the path of every
 * I/O: one trip through the network stack each way and no user-space wake-up per record.
 *
 * Lifetime: a link belongs to fn->link under fn->lock. Closing it (peer error, EOF, W_LINK_DOWN,
 * removal) shuts the socket down and moves it to fn->dead_links; its threads are stopped and it
 * is freed by pcinet_link_reap(), called with fn->lock *not* held (the receive thread takes it
 * to apply records). A link that fails on its own takes the function's link down (PCI error
 * recovery) and tells the host-agent with R_LINK_CLOSED on the file.
 */
#define pr_fmt(fmt) "pcinet: " fmt

#include <crypto/aead.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/kthread.h>
#include <linux/net.h>
#include <linux/scatterlist.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/socket.h>
#include <linux/tcp.h>
#include <linux/uio.h>
#include <linux/workqueue.h>
#include <asm/unaligned.h>
#include <net/sock.h>

#include "internal.h"

/* Records sent with one sendmsg(): a doorbell's pushes and write arrive as one segment train. */
#define PCINET_LINK_BATCH	64
/* The receive buffer: many completions, and always one whole record. */
#define PCINET_LINK_RXBUF	(256 * 1024)
/*
 * The first read of what arrived takes at most this much, the rest is read right after: a read
 * that copies anything sends the window update the peer may be waiting for (tcp_cleanup_rbuf()),
 * and a read of all that came sends it only after copying it all. Behind QEMU's user networking
 * (slirp offers no window scaling: 64 KiB in flight) a 128 KiB reply waited for that update twice.
 * A small reply (a 4 KiB read's is ~4.2 KB) still comes in one read: a second read per reply cost
 * its time on a busy machine.
 */
#define PCINET_LINK_RX_FIRST	(8 * 1024)
#define PCINET_LINK_TIMEOUT_MAX	60000

static atomic_t pcinet_link_ids = ATOMIC_INIT(0);

struct pcinet_link {
	struct pcinet_fn *fn;
	struct socket *sock;
	struct task_struct *rx;
	struct task_struct *tx;
	struct list_head node;	/* on fn->dead_links once closed */
	bool closing;		/* READ_ONCE: the threads stop */
	u8 *rxbuf;
	/* Sealed links (PCINET_LINK_F_SEAL): AES-256-GCM, one frame per send. */
	struct crypto_aead *aead;
	struct aead_request *txreq;	/* one per direction: each thread reuses its own */
	struct aead_request *rxreq;
	u8 *txbuf;
	u64 tx_seq;
	u64 rx_seq;
	u64 sent_ns;		/* the last send, until bytes come back (timing) */
	/* Sending: the work on the submitting CPU and the thread take turns under tx_mutex, which
	 * keeps the records in queue order on the wire (and guards txbuf and tx_seq).
	 */
	struct mutex tx_mutex;
	struct work_struct tx_work;
	int tx_err;		/* READ_ONCE: the work's send failed; the thread closes the link */
};

/* The links' send work: high priority, bound to the CPU that queued it, and able to make
 * progress under memory pressure (a disk's writeback goes through it).
 */
static struct workqueue_struct *pcinet_tx_wq;

enum { PCINET_SEAL_TO_ENDPOINT = 0, PCINET_SEAL_TO_HOST = 1 };

/*
 * Seals or opens one frame in place: frame[0..4) the length (additional data), then `textlen`
 * bytes of records and the tag. Process context. Opening fails with -EBADMSG on a bad tag.
 */
static int pcinet_seal(struct pcinet_link *l, u8 *frame, size_t textlen, bool seal)
{
	struct aead_request *req = seal ? l->txreq : l->rxreq;
	struct scatterlist sg;
	DECLARE_CRYPTO_WAIT(wait);
	u8 iv[12] = {};

	iv[0] = seal ? PCINET_SEAL_TO_ENDPOINT : PCINET_SEAL_TO_HOST;
	put_unaligned_le64(seal ? l->tx_seq++ : l->rx_seq++, iv + 4);
	sg_init_one(&sg, frame, 4 + textlen + PCINET_SEAL_TAG);
	aead_request_set_callback(req, CRYPTO_TFM_REQ_MAY_SLEEP, crypto_req_done, &wait);
	aead_request_set_ad(req, 4);
	aead_request_set_crypt(req, &sg, &sg, seal ? textlen : textlen + PCINET_SEAL_TAG, iv);
	return crypto_wait_req(seal ? crypto_aead_encrypt(req) : crypto_aead_decrypt(req), &wait);
}

/* Threads end only through kthread_stop(): once their work is over they wait for it. */
static void pcinet_link_idle(void)
{
	set_current_state(TASK_INTERRUPTIBLE);
	while (!kthread_should_stop()) {
		schedule();
		set_current_state(TASK_INTERRUPTIBLE);
	}
	__set_current_state(TASK_RUNNING);
}

/* Under fn->lock. Shuts the socket down (wakes both threads) and retires the link. */
static void pcinet_link_retire(struct pcinet_fn *fn, struct pcinet_link *l)
{
	WRITE_ONCE(l->closing, true);
	kernel_sock_shutdown(l->sock, SHUT_RDWR);
	list_add_tail(&l->node, &fn->dead_links);
	fn->link = NULL;
	spin_lock_irq(&fn->qlock);
	if (fn->tx_link == l)
		fn->tx_link = NULL;
	spin_unlock_irq(&fn->qlock);
	wake_up_interruptible_all(&fn->readq);
	wake_up_interruptible_all(&fn->writeq);
}

/* Under fn->lock: the host-agent closes the link (W_LINK_DOWN, removal). */
void pcinet_link_close(struct pcinet_fn *fn)
{
	if (fn->link)
		pcinet_link_retire(fn, fn->link);
}

/* A thread of `l` saw the connection fail: the endpoint is unreachable. */
static void pcinet_link_failed(struct pcinet_link *l, int err)
{
	struct pcinet_fn *fn = l->fn;
	struct pcinet_r_link_closed rec = {};

	mutex_lock(&fn->lock);
	if (fn->link != l) {
		mutex_unlock(&fn->lock);
		return;		/* already closed by someone else */
	}
	pcinet_link_retire(fn, l);
	if (fn->state == PN_STARTED && !fn->link_down)
		pcinet_link_down(fn);
	pcinet_hdr(&rec.hdr, PCINET_R_LINK_CLOSED, sizeof(rec));
	rec.error = cpu_to_le32(-err);
	pcinet_queue_ctl(fn, &rec, sizeof(rec));
	mutex_unlock(&fn->lock);
	pr_warn_ratelimited("%04x:00:00.0 kernel link lost (error %d): link down\n", fn->domain, err);
}

/*
 * Sends one batch of queued records (up to PCINET_LINK_BATCH, or one sealed frame's worth):
 * returns how many, 0 when the queue was empty, or the send's error. Process context.
 */
static int pcinet_link_send(struct pcinet_link *l)
{
	struct pcinet_fn *fn = l->fn;
	struct pcinet_rec *recs[PCINET_LINK_BATCH];
	struct kvec vec[PCINET_LINK_BATCH];
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
	unsigned int n = 0, n_vec, i;
	size_t bytes = 0;
	u64 taken;
	int err = 0;

	/* Interruptible: a send blocked by a frozen peer must not make the other sender a hung task
	 * (no signal comes to a kernel thread or a worker; closing the link ends the send).
	 */
	if (mutex_lock_interruptible(&l->tx_mutex))
		return 0;
	if (READ_ONCE(l->closing)) {
		mutex_unlock(&l->tx_mutex);
		return 0;
	}
	spin_lock_irq(&fn->qlock);
	while (n < PCINET_LINK_BATCH && !list_empty(&fn->queue)) {
		struct pcinet_rec *r = list_first_entry(&fn->queue, struct pcinet_rec, node);

		/* A sealed frame holds whole records, at most PCINET_SEAL_MAX bytes. */
		if (l->aead && n && bytes + r->len > PCINET_SEAL_MAX)
			break;
		list_del(&r->node);
		fn->queued -= r->len;
		recs[n] = r;
		bytes += r->len;
		n++;
	}
	spin_unlock_irq(&fn->qlock);
	if (!n) {
		mutex_unlock(&l->tx_mutex);
		return 0;
	}
	taken = ktime_get_ns();
	/* Pushes whose bytes are taken now; one whose memory went meanwhile does not go. */
	for (i = 0, n_vec = 0; i < n; i++) {
		size_t len = recs[i]->len;

		if (!pcinet_push_fill(fn, &recs[i])) {
			bytes -= len;
			continue;
		}
		recs[n_vec] = recs[i];
		vec[n_vec].iov_base = recs[i]->data;
		vec[n_vec].iov_len = recs[i]->len;
		n_vec++;
	}
	n = n_vec;
	if (!n) {
		mutex_unlock(&l->tx_mutex);
		return 1;	/* nothing left to send of this batch; the queue may hold more */
	}
	for (i = 0; i < n; i++) {
		if (!recs[i]->queued_ns)
			continue;	/* lazy: it waited for company on purpose */
		atomic64_add(taken - recs[i]->queued_ns, &fn->stats.t_queue_ns);
		atomic64_inc(&fn->stats.t_queue_n);
	}
	wake_up_interruptible(&fn->writeq);
	if (l->aead) {
		u8 *p = l->txbuf + 4;

		for (i = 0; i < n; i++) {
			memcpy(p, recs[i]->data, recs[i]->len);
			p += recs[i]->len;
		}
		put_unaligned_le32(bytes + PCINET_SEAL_TAG, l->txbuf);
		err = pcinet_seal(l, l->txbuf, bytes, true);
		vec[0].iov_base = l->txbuf;
		vec[0].iov_len = 4 + bytes + PCINET_SEAL_TAG;
		bytes = vec[0].iov_len;
		n_vec = 1;
	} else {
		n_vec = n;
	}
	iov_iter_kvec(&msg.msg_iter, ITER_SOURCE, vec, n_vec, bytes);
	while (msg_data_left(&msg) && !err) {
		int ret = sock_sendmsg(l->sock, &msg);

		if (ret <= 0)
			err = ret ? ret : -EPIPE;
	}
	pcinet_timing_add(&fn->stats.t_send_ns, &fn->stats.t_send_n, taken);
	WRITE_ONCE(l->sent_ns, ktime_get_ns());
	mutex_unlock(&l->tx_mutex);
	for (i = 0; i < n; i++)
		kvfree(recs[i]);
	return err ? err : n;
}

/* The send work, queued on the CPU that queued records: sends until the queue is empty. */
static void pcinet_link_tx_work(struct work_struct *work)
{
	struct pcinet_link *l = container_of(work, struct pcinet_link, tx_work);
	int ret;

	do {
		ret = pcinet_link_send(l);
	} while (ret > 0);
	if (ret < 0 && !READ_ONCE(l->tx_err)) {
		/* Closing the link takes fn->lock, which the thread may take; the work may not. */
		WRITE_ONCE(l->tx_err, ret);
		wake_up_interruptible_all(&l->fn->readq);
	}
}

/* Records were queued (qlock held): send them from this CPU, soon. Any context. */
void pcinet_link_kick(struct pcinet_link *l)
{
	queue_work_on(raw_smp_processor_id(), pcinet_tx_wq, &l->tx_work);
}

/*
 * The link's thread: sends when the queue runs long (from whichever CPU is free, while producers
 * wait for room) and closes the link when a send failed, its own or the work's.
 */
static int pcinet_link_tx(void *arg)
{
	struct pcinet_link *l = arg;
	struct pcinet_fn *fn = l->fn;
	int err = 0;

	while (!kthread_should_stop() && !READ_ONCE(l->closing)) {
		wait_event_interruptible(fn->readq, READ_ONCE(fn->queued) > 0 ||
					 READ_ONCE(l->tx_err) || READ_ONCE(l->closing) ||
					 kthread_should_stop());
		err = READ_ONCE(l->tx_err);
		if (err)
			break;
		err = pcinet_link_send(l);
		if (err < 0)
			break;
		err = 0;
	}
	if (err && !READ_ONCE(l->closing))
		pcinet_link_failed(l, err);
	pcinet_link_idle();
	return 0;
}

/* Applies the whole records at the start of buf[0, have); returns the bytes used or an error. */
static int pcinet_link_apply(struct pcinet_link *l, const u8 *buf, size_t have)
{
	struct pcinet_fn *fn = l->fn;
	size_t done = 0;
	int ret = 0;

	mutex_lock(&fn->lock);
	while (have - done >= sizeof(struct pcinet_hdr)) {
		const struct pcinet_hdr *h = (const void *)(buf + done);
		size_t len = le32_to_cpu(h->len);

		if (len < sizeof(*h) || len % 8 || len > PCINET_MAX_RECORD + 8 || h->flags) {
			ret = -EPROTO;
			break;
		}
		if (len > have - done)
			break;
		if (fn->link != l) {
			ret = -ECANCELED;
			break;
		}
		ret = pcinet_link_record(fn, buf + done, len);
		if (ret)
			break;
		done += len;
	}
	mutex_unlock(&fn->lock);
	return ret ? ret : done;
}

/* Opens and applies the whole sealed frames at the start of rxbuf[0, have); returns the bytes
 * used or an error (-EBADMSG: forged or damaged).
 */
static int pcinet_link_open(struct pcinet_link *l, size_t have)
{
	size_t done = 0;

	while (have - done >= 4) {
		u8 *frame = l->rxbuf + done;
		size_t len = get_unaligned_le32(frame), text;
		int ret;

		if (len < PCINET_SEAL_TAG + sizeof(struct pcinet_hdr) ||
		    len > PCINET_SEAL_MAX + PCINET_SEAL_TAG)
			return -EPROTO;
		if (len > have - done - 4)
			break;
		text = len - PCINET_SEAL_TAG;
		ret = pcinet_seal(l, frame, text, false);
		if (ret)
			return ret;
		ret = pcinet_link_apply(l, frame + 4, text);
		if (ret < 0)
			return ret;
		if (ret != text)
			return -EPROTO;	/* a frame holds whole records */
		done += 4 + len;
	}
	return done;
}

static int pcinet_link_rx(void *arg)
{
	struct pcinet_link *l = arg;
	struct pcinet_fn *fn = l->fn;
	u64 received, sent, reply = 0;
	size_t have = 0;
	int err = 0;

	while (!kthread_should_stop() && !READ_ONCE(l->closing)) {
		struct msghdr msg = {};
		struct kvec vec = {
			.iov_base = l->rxbuf + have,
			.iov_len = min_t(size_t, PCINET_LINK_RXBUF - have, PCINET_LINK_RX_FIRST),
		};
		int ret = kernel_recvmsg(l->sock, &msg, &vec, 1, vec.iov_len, 0);

		if (ret <= 0) {
			err = ret ? ret : -ECONNRESET;
			break;
		}
		if (ret == PCINET_LINK_RX_FIRST && have + ret < PCINET_LINK_RXBUF) {
			/* The rest of what is there; an error or the end shows in the next read. */
			int more;

			memset(&msg, 0, sizeof(msg));
			vec.iov_base = l->rxbuf + have + ret;
			vec.iov_len = PCINET_LINK_RXBUF - have - ret;
			more = kernel_recvmsg(l->sock, &msg, &vec, 1, vec.iov_len, MSG_DONTWAIT);
			if (more > 0)
				ret += more;
		}
		received = ktime_get_ns();
		sent = xchg(&l->sent_ns, 0);
		if (sent) {
			pcinet_timing_add(&fn->stats.t_rtt_ns, &fn->stats.t_rtt_n, sent);
			if (!reply)
				reply = received;
		}
		have += ret;
		ret = l->aead ? pcinet_link_open(l, have) : pcinet_link_apply(l, l->rxbuf, have);
		pcinet_timing_add(&fn->stats.t_apply_ns, &fn->stats.t_apply_n, received);
		if (ret < 0) {
			err = ret;
			break;
		}
		have -= ret;
		memmove(l->rxbuf, l->rxbuf + ret, have);
		/* A reply is in once no record is left half received. */
		if (reply && !have) {
			pcinet_timing_add(&fn->stats.t_reply_ns, &fn->stats.t_reply_n, reply);
			reply = 0;
		}
	}
	if (err == -EBADMSG)
		pr_warn_ratelimited("kernel link: a sealed frame failed authentication\n");
	if (err == -EPROTO || err == -EINVAL || err == -EBUSY)
		pr_warn_ratelimited("kernel link: the endpoint sent a bad record (error %d)\n", err);
	if (err && err != -ECANCELED && !READ_ONCE(l->closing))
		pcinet_link_failed(l, err);
	pcinet_link_idle();
	return 0;
}

/* Sends the hello and waits for the endpoint's answer (the socket's timeouts bound both). */
static int pcinet_link_hello(struct socket *sock, const struct pcinet_w_connect *w)
{
	struct pcinet_link_hello hello = {};
	struct kvec vec = { .iov_base = &hello, .iov_len = sizeof(hello) };
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
	u8 ack[8];
	int ret;

	memcpy(hello.magic, PCINET_LINK_MAGIC, sizeof(hello.magic));
	memcpy(hello.token, w->token, sizeof(hello.token));
	hello.abi_version = cpu_to_le32(PCINET_ABI_VERSION);
	ret = kernel_sendmsg(sock, &msg, &vec, 1, sizeof(hello));
	if (ret != sizeof(hello))
		return ret < 0 ? ret : -EPIPE;
	memset(&msg, 0, sizeof(msg));
	vec.iov_base = ack;
	vec.iov_len = sizeof(ack);
	ret = kernel_recvmsg(sock, &msg, &vec, 1, sizeof(ack), MSG_WAITALL);
	if (ret < 0)
		return ret == -EAGAIN ? -ETIMEDOUT : ret;
	if (ret != sizeof(ack) || memcmp(ack, PCINET_LINK_MAGIC, sizeof(ack)))
		return -ECONNREFUSED;	/* the endpoint does not know the token */
	return 0;
}

static void pcinet_link_free(struct pcinet_link *l)
{
	aead_request_free(l->txreq);
	aead_request_free(l->rxreq);
	if (l->aead)
		crypto_free_aead(l->aead);
	kfree(l->txbuf);
	kvfree(l->rxbuf);
	kfree(l);
}

/* W_CONNECT, under fn->lock. */
int pcinet_link_connect(struct pcinet_fn *fn, const struct pcinet_w_connect *w)
{
	struct sockaddr_storage ss = {};
	u16 family = le16_to_cpu(w->family);
	u32 timeout = le32_to_cpu(w->timeout_ms);
	struct pcinet_link *l;
	struct socket *sock;
	int addrlen, id, ret;

	if (!(fn->state == PN_ATTACHED || (fn->state == PN_STARTED && fn->link_down)) || fn->link)
		return -EBUSY;
	if (!timeout || timeout > PCINET_LINK_TIMEOUT_MAX || !w->port || w->reserved ||
	    (le32_to_cpu(w->flags) & ~PCINET_LINK_F_SEAL))
		return -EINVAL;
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		if (memchr_inv(w->addr + 4, 0, sizeof(w->addr) - 4))
			return -EINVAL;
		sin->sin_family = AF_INET;
		sin->sin_port = w->port;
		memcpy(&sin->sin_addr, w->addr, 4);
		addrlen = sizeof(*sin);
	} else if (family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = w->port;
		memcpy(&sin6->sin6_addr, w->addr, 16);
		addrlen = sizeof(*sin6);
	} else {
		return -EAFNOSUPPORT;
	}

	l = kzalloc(sizeof(*l), GFP_KERNEL);
	if (!l)
		return -ENOMEM;
	l->fn = fn;
	INIT_LIST_HEAD(&l->node);
	mutex_init(&l->tx_mutex);
	INIT_WORK(&l->tx_work, pcinet_link_tx_work);
	if (le32_to_cpu(w->flags) & PCINET_LINK_F_SEAL) {
		l->aead = crypto_alloc_aead("gcm(aes)", 0, 0);
		if (IS_ERR(l->aead)) {
			ret = PTR_ERR(l->aead);
			l->aead = NULL;
			goto err_free;
		}
		ret = crypto_aead_setkey(l->aead, w->key, sizeof(w->key));
		if (!ret)
			ret = crypto_aead_setauthsize(l->aead, PCINET_SEAL_TAG);
		if (ret)
			goto err_free;
		l->txreq = aead_request_alloc(l->aead, GFP_KERNEL);
		l->rxreq = aead_request_alloc(l->aead, GFP_KERNEL);
		/* Linear buffers: each frame is one scatterlist entry. */
		l->txbuf = kmalloc(4 + PCINET_SEAL_MAX + PCINET_SEAL_TAG, GFP_KERNEL);
		l->rxbuf = kmalloc(PCINET_LINK_RXBUF, GFP_KERNEL);
	} else {
		l->rxbuf = kvmalloc(PCINET_LINK_RXBUF, GFP_KERNEL);
	}
	if (!l->rxbuf || (l->aead && (!l->txbuf || !l->txreq || !l->rxreq))) {
		ret = -ENOMEM;
		goto err_free;
	}
	/* In the writer's network namespace, holding a reference to it like any socket. */
	ret = sock_create(family, SOCK_STREAM, IPPROTO_TCP, &sock);
	if (ret)
		goto err_free;
	l->sock = sock;
	sock->sk->sk_sndtimeo = msecs_to_jiffies(timeout);
	sock->sk->sk_rcvtimeo = msecs_to_jiffies(timeout);
	tcp_sock_set_nodelay(sock->sk);
	ret = kernel_connect(sock, (struct sockaddr *)&ss, addrlen, 0);
	if (ret) {
		if (ret == -EINPROGRESS || ret == -EAGAIN)
			ret = -ETIMEDOUT;
		goto err_sock;
	}
	ret = pcinet_link_hello(sock, w);
	if (ret)
		goto err_sock;
	/* From now on the threads block as long as the peer makes them; closing wakes them. */
	sock->sk->sk_sndtimeo = MAX_SCHEDULE_TIMEOUT;
	sock->sk->sk_rcvtimeo = MAX_SCHEDULE_TIMEOUT;
	/* A peer that vanishes without a FIN is noticed within a minute, not TCP's fifteen. */
	tcp_sock_set_keepidle(sock->sk, 10);
	tcp_sock_set_keepintvl(sock->sk, 5);
	tcp_sock_set_keepcnt(sock->sk, 6);
	sock_set_keepalive(sock->sk);

	id = atomic_inc_return(&pcinet_link_ids);
	l->rx = kthread_create(pcinet_link_rx, l, "pcinet-rx/%d", id);
	if (IS_ERR(l->rx)) {
		ret = PTR_ERR(l->rx);
		goto err_sock;
	}
	l->tx = kthread_create(pcinet_link_tx, l, "pcinet-tx/%d", id);
	if (IS_ERR(l->tx)) {
		ret = PTR_ERR(l->tx);
		kthread_stop(l->rx);
		goto err_sock;
	}
	fn->link = l;
	fn->linked = true;
	wake_up_process(l->rx);
	wake_up_process(l->tx);
	spin_lock_irq(&fn->qlock);
	fn->tx_link = l;
	if (fn->queued)
		pcinet_link_kick(l);
	spin_unlock_irq(&fn->qlock);
	return 0;

err_sock:
	sock_release(sock);
err_free:
	pcinet_link_free(l);
	return ret;
}

/* Stops the threads of closed links and frees them; fn->lock must not be held. */
void pcinet_link_reap(struct pcinet_fn *fn)
{
	struct pcinet_link *l, *tmp;
	LIST_HEAD(dead);

	mutex_lock(&fn->lock);
	list_splice_init(&fn->dead_links, &dead);
	mutex_unlock(&fn->lock);
	list_for_each_entry_safe(l, tmp, &dead, node) {
		/* No new kicks since it was retired (fn->tx_link); one queued may still run. */
		cancel_work_sync(&l->tx_work);
		kthread_stop(l->rx);
		kthread_stop(l->tx);
		sock_release(l->sock);
		pcinet_link_free(l);
	}
}

int pcinet_link_init(void)
{
	pcinet_tx_wq = alloc_workqueue("pcinet_tx", WQ_HIGHPRI | WQ_MEM_RECLAIM, 0);
	return pcinet_tx_wq ? 0 : -ENOMEM;
}

void pcinet_link_exit(void)
{
	destroy_workqueue(pcinet_tx_wq);
}
