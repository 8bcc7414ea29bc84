/*
 * uring.c - FUSE over io_uring: a request is served on the CPU that made it.
 *
 * Through /dev/fuse, a request a process waits for wakes the daemon's
 * thread on some other CPU, and the answer wakes the process again: on
 * these machines (virtual CPUs that halt as soon as they are idle) those
 * two wake-ups are most of what a round trip costs (docs/design.md,
 * "Request loop and round trips"). Since Linux 6.14 the kernel can instead
 * hand requests over io_uring, one queue per CPU: a request made on CPU n
 * goes to the queue of CPU n, whose thread here is pinned to that CPU. The
 * process blocks, its CPU switches to our thread, which answers and goes
 * back to waiting, and the CPU switches back. No CPU halts in between.
 *
 * The kernel offers it in the INIT request while the fuse module's
 * enable_uring parameter is set (uring_ask_offer() below); libfuse 3.14
 * (Debian's) predates it, so the daemon speaks it itself, through the
 * session's I/O hooks (passthrough.c owns them):
 *
 *  - at INIT: if the kernel offers FUSE_OVER_IO_URING, uring_accept()
 *    starts a thread per possible CPU, which sets up its io_uring and DEPTH
 *    entries, and accepts in the reply if all could; once the reply is
 *    written, uring_start() lets them register their entries. Until every
 *    queue has one the kernel holds new requests; if registering fails it
 *    falls back to /dev/fuse by itself. Forgets and interrupts always come
 *    by /dev/fuse.
 *  - an entry is a header buffer (the request's fuse_in_header, its
 *    per-operation header, its payload size) and a payload buffer. The
 *    thread copies the two headers to just before the payload, so libfuse
 *    sees the request as one buffer, as read from /dev/fuse, and dispatches
 *    it as usual (fuse_session_process_buf()).
 *  - a reply goes through the writev hook: if its unique id is a request
 *    held by an entry, uring_reply() copies it into that entry and commits
 *    it (COMMIT_AND_FETCH: the answer, and the entry ready for the next
 *    request). A reply from the worker pool (fs_defer()) is handed to the
 *    entry's own thread instead (a list and an eventfd): a command belongs
 *    to the thread that submitted it, and the kernel wakes that thread for
 *    the entry's next request, which must be the pinned one.
 *
 * The threads run at SCHED_IDLE. When our thread answers, it wakes the
 * process on its own CPU, which is busy at that moment (our thread is
 * still running), so the scheduler would move the process to an idle CPU:
 * measured, 0.85 migrations per open+close, each the wake-up of a halted CPU
 * this design is meant to avoid (45 us an open+close, against 19 us through
 * /dev/fuse). A CPU running only SCHED_IDLE threads counts as idle, so the
 * process stays (16 us; no migrations). The risk is a CPU busy with other
 * work starving our thread. Measured by hand on the two CPUs (import of
 * numpy, requests and three stdlib modules): with two CPU-bound loops, an
 * open+close 21 us (/dev/fuse 148 us), the import 0.42 s (/dev/fuse 0.37,
 * native 0.30); with four, the import 0.44-0.51 s (/dev/fuse 0.54-0.60,
 * native 0.47-0.60): slower than /dev/fuse at times, never starved; with
 * a CPU-bound loop pinned to each CPU, an open+close 15 us at the median,
 * 29 us at the 99th percentile, 25 ms at worst (/dev/fuse: 19, 123 us, 12 ms).
 * libfuse's io_uring client carries the same idea, switched off.
 *
 * Handlers still run one at a time (fsd.dispatch), as they did on the one
 * thread that read /dev/fuse: with a thread per CPU, two ran at once, and a
 * concurrent install + absorb test once crashed the daemon (heap corruption,
 * not reproduced since). The ring's gain is where a request is answered,
 * not parallel handlers.
 *
 * Work that may wait for the disk (a store file's first read or open: the
 * object opened, checked, read) is the workers' (fs_defer()), unless the
 * ring has nothing else to serve: then uring_run_here() does it on the
 * ring's thread, without fsd.dispatch (worker jobs never need it). The
 * process that made the request waits for it either way; done here, its
 * disk wait is its own, as on a native file system, instead of a wake-up
 * of a worker and of this thread again for the answer. Measured, cold
 * heavy import on a RAM-backed store (so the software path shows), large
 * store files in passthrough (shared.c), medians of 16 paired runs: 1.21x
 * native with these jobs on the workers, 1.15x on the ring. A request that
 * comes meanwhile waits for the disk too: the cost of a busy ring, which is
 * why it must be idle.
 *
 * Only replies from the ring's entries go through the ring; notifications
 * (inval_entry, inval_inode) still go to /dev/fuse. Splicing read replies
 * to /dev/fuse cannot reach an entry, so with a ring op_init() does not ask
 * for it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/io_uring.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs_i.h"

/* From the kernel's <linux/fuse.h> (7.42, Linux 6.14), newer than Debian's. */
#define UR_CMD_REGISTER         1
#define UR_CMD_COMMIT_AND_FETCH 2

/* From <linux/io_uring.h> of Linux 6.15: a wait that is not counted as
 * iowait. Our threads wait for requests with commands in flight, which the
 * kernel otherwise counts as waiting for I/O: every CPU of an idle machine
 * shows 100% iowait in top for as long as the mount lives. */
#define UR_FEAT_NO_IOWAIT  (1u << 17)
#define UR_ENTER_NO_IOWAIT (1u << 7)

struct ur_ent_in_out {
	uint64_t flags;
	uint64_t commit_id; /* the request's unique id */
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct ur_req_header {
	char in_out[128]; /* fuse_in_header in, fuse_out_header out */
	char op_in[128];  /* the operation's own header (fuse_open_in...) */
	struct ur_ent_in_out ent;
};

struct ur_cmd_req { /* in the SQE's 80-byte command area */
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

struct ur_in_header {
	uint32_t len, opcode;
	uint64_t unique, nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};

struct ur_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

#define DEPTH      8    /* entries per queue: requests in hand at once */
#define HEAD_SPACE 4096 /* header buffer, then room to rebuild the request */
#define EV_TAG     1    /* user_data of the eventfd read */

struct ring_q;

struct ring_ent {
	struct ring_q *q;
	char *mem; /* header at mem, payload at mem + HEAD_SPACE */
	struct iovec iov[2];
	uint64_t unique;       /* the request in hand, 0 if none (atomic) */
	bool live;             /* registered and not torn down */
	struct ring_ent *next; /* on q->done */
};

struct ring_q {
	unsigned qid;
	int fd, evfd;
	pthread_t thread;
	bool started;
	void *sq_map, *cq_map;
	size_t sq_map_len, cq_map_len, sqes_len;
	char *sqes;
	unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, sq_entries;
	unsigned *cq_head, *cq_tail, *cq_mask;
	struct io_uring_cqe *cqes;
	unsigned to_submit;
	unsigned enter_flags; /* for every io_uring_enter() */
	uint64_t ev_val;
	pthread_mutex_t lock;  /* done, go, stop */
	pthread_cond_t cond;   /* go */
	struct ring_ent *done; /* answered by another thread, to commit */
	unsigned serving;      /* the CQ index of the request being served */
	bool go, stop;
	int init; /* 1 set up, <0 failed (-errno), 0 not yet */
	struct ring_ent ent[DEPTH];
};

static struct {
	bool offered; /* the kernel offered it at INIT */
	bool on;      /* we accepted: the threads run */
	bool refused; /* an entry was refused: the kernel went back to /dev/fuse */
	int devfd;
	size_t payload; /* payload buffer size */
	unsigned nq;
	struct ring_q *q;
} ur = {.devfd = -1};

static __thread struct ring_q *self_q;     /* the queue this thread serves */
static __thread struct ring_ent *self_ent; /* the request it is handling */

static int ur_setup(unsigned entries, struct io_uring_params *p)
{
	return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int ur_enter(int fd, unsigned submit, unsigned wait, unsigned flags)
{
	return (int)syscall(__NR_io_uring_enter, fd, submit, wait, flags, NULL, 0);
}

/* Possible CPUs, as the kernel counts queues (num_possible_cpus()). */
static unsigned possible_cpus(void)
{
	char b[256];
	int fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, b, sizeof(b) - 1) : -1;
	unsigned max = 0;

	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return 0;
	b[n] = 0;
	for (char *s = b; *s;) { /* "0-3,8-11": the last number is the highest */
		if (*s >= '0' && *s <= '9') {
			unsigned v = (unsigned)strtoul(s, &s, 10);
			if (v > max)
				max = v;
		} else {
			s++;
		}
	}
	return max + 1;
}

static void ring_q_free(struct ring_q *q)
{
	if (q->fd >= 0)
		close(q->fd);
	if (q->evfd >= 0)
		close(q->evfd);
	if (q->sq_map)
		munmap(q->sq_map, q->sq_map_len);
	if (q->cq_map && q->cq_map != q->sq_map)
		munmap(q->cq_map, q->cq_map_len);
	if (q->sqes)
		munmap(q->sqes, q->sqes_len);
	for (int i = 0; i < DEPTH; i++)
		if (q->ent[i].mem)
			munmap(q->ent[i].mem, HEAD_SPACE + ur.payload);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->cond);
}

static int ring_q_init(struct ring_q *q)
{
	struct io_uring_params p = {0};

	p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
	p.cq_entries = 4 * DEPTH;
	q->fd = ur_setup(2 * DEPTH, &p);
	if (q->fd < 0)
		return -errno;
	if (!(p.features & IORING_FEAT_SINGLE_MMAP))
		return -ENOTSUP;
	q->enter_flags = IORING_ENTER_GETEVENTS | (p.features & UR_FEAT_NO_IOWAIT ? UR_ENTER_NO_IOWAIT : 0);
	q->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	q->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (q->cq_map_len > q->sq_map_len)
		q->sq_map_len = q->cq_map_len;
	q->sq_map =
		mmap(NULL, q->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->fd, IORING_OFF_SQ_RING);
	if (q->sq_map == MAP_FAILED) {
		q->sq_map = NULL;
		return -errno;
	}
	q->cq_map = q->sq_map;
	q->sqes_len = p.sq_entries * 128;
	q->sqes = mmap(NULL, q->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->fd, IORING_OFF_SQES);
	if (q->sqes == MAP_FAILED) {
		q->sqes = NULL;
		return -errno;
	}
	char *sq = q->sq_map, *cq = q->cq_map;
	q->sq_head = (unsigned *)(sq + p.sq_off.head);
	q->sq_tail = (unsigned *)(sq + p.sq_off.tail);
	q->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
	q->sq_array = (unsigned *)(sq + p.sq_off.array);
	q->sq_entries = p.sq_entries;
	q->cq_head = (unsigned *)(cq + p.cq_off.head);
	q->cq_tail = (unsigned *)(cq + p.cq_off.tail);
	q->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
	q->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	if (syscall(__NR_io_uring_register, q->fd, IORING_REGISTER_FILES, &ur.devfd, 1) < 0)
		return -errno;
	q->evfd = eventfd(0, EFD_CLOEXEC);
	if (q->evfd < 0)
		return -errno;
	for (int i = 0; i < DEPTH; i++) {
		struct ring_ent *e = &q->ent[i];
		e->q = q;
		e->mem =
			mmap(NULL, HEAD_SPACE + ur.payload, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (e->mem == MAP_FAILED) {
			e->mem = NULL;
			return -errno;
		}
		e->iov[0] = (struct iovec){e->mem, sizeof(struct ur_req_header)};
		e->iov[1] = (struct iovec){e->mem + HEAD_SPACE, ur.payload};
	}
	return 0;
}

/* A free SQE (there is always one: at most one command per entry). */
static struct io_uring_sqe *sqe_get(struct ring_q *q)
{
	unsigned tail = *q->sq_tail;
	unsigned idx = tail & *q->sq_mask;
	struct io_uring_sqe *sqe = (struct io_uring_sqe *)(q->sqes + (size_t)idx * 128);

	memset(sqe, 0, 128);
	q->sq_array[idx] = idx;
	__atomic_store_n(q->sq_tail, tail + 1, __ATOMIC_RELEASE);
	q->to_submit++;
	return sqe;
}

static void sqe_cmd(struct ring_q *q, struct ring_ent *e, uint32_t op, uint64_t commit_id)
{
	struct io_uring_sqe *sqe = sqe_get(q);
	struct ur_cmd_req *c = (struct ur_cmd_req *)sqe->cmd;

	sqe->opcode = IORING_OP_URING_CMD;
	sqe->flags = IOSQE_FIXED_FILE;
	sqe->fd = 0; /* the registered /dev/fuse */
	sqe->cmd_op = op;
	sqe->user_data = (uint64_t)(uintptr_t)e;
	if (op == UR_CMD_REGISTER) {
		sqe->addr = (uint64_t)(uintptr_t)e->iov;
		sqe->len = 2;
	}
	c->commit_id = commit_id;
	c->qid = (uint16_t)q->qid;
}

static void sqe_wait_event(struct ring_q *q)
{
	struct io_uring_sqe *sqe = sqe_get(q);

	sqe->opcode = IORING_OP_READ;
	sqe->fd = q->evfd;
	sqe->addr = (uint64_t)(uintptr_t)&q->ev_val;
	sqe->len = sizeof(q->ev_val);
	sqe->off = (uint64_t)-1;
	sqe->user_data = EV_TAG;
}

/* Hand one request of entry e to libfuse, which replies (uring_reply()). */
static void serve_ent(struct ring_ent *e)
{
	struct ur_req_header *h = (struct ur_req_header *)e->mem;
	struct ur_in_header in;
	char *payload = e->mem + HEAD_SPACE;

	memcpy(&in, h->in_out, sizeof(in));
	size_t psz = h->ent.payload_sz;
	size_t op = in.len - sizeof(in) - psz;
	if (in.len < sizeof(in) + psz || op > sizeof(h->op_in) || psz > ur.payload || !in.unique) {
		fs_log("io_uring: malformed request (opcode %u, length %u, payload %zu)", in.opcode, in.len, psz);
		struct ur_out_header oh = {sizeof(oh), -EIO, in.unique};
		struct iovec v = {&oh, sizeof(oh)};
		__atomic_store_n(&e->unique, in.unique, __ATOMIC_RELAXED);
		self_ent = e; /* find_ent() must not take another entry for it */
		uring_reply(&v, 1);
		self_ent = NULL;
		return;
	}
	char *start = payload - op - sizeof(in);
	memcpy(start, &in, sizeof(in));
	memcpy(start + sizeof(in), h->op_in, op);
	__atomic_store_n(&e->unique, in.unique, __ATOMIC_RELAXED);
	struct fuse_buf fb = {.size = in.len, .mem = start};
	self_ent = e;
	pthread_mutex_lock(&fsd.dispatch);
	fuse_session_process_buf(fsd.se, &fb);
	pthread_mutex_unlock(&fsd.dispatch);
	self_ent = NULL;
}

/* Commit the entries other threads answered. */
static void commit_done(struct ring_q *q)
{
	pthread_mutex_lock(&q->lock);
	struct ring_ent *d = q->done;
	q->done = NULL;
	pthread_mutex_unlock(&q->lock);
	for (; d; d = d->next) {
		struct ur_out_header oh;
		memcpy(&oh, ((struct ur_req_header *)d->mem)->in_out, sizeof(oh));
		sqe_cmd(q, d, UR_CMD_COMMIT_AND_FETCH, oh.unique);
	}
}

static void *ring_thread(void *arg)
{
	struct ring_q *q = arg;
	cpu_set_t cpus;
	unsigned live = DEPTH;

	CPU_ZERO(&cpus);
	CPU_SET(q->qid, &cpus);
	sched_setaffinity(0, sizeof(cpus), &cpus); /* an offline CPU: no harm */
	struct sched_param sp = {0};
	if (sched_setscheduler(0, SCHED_IDLE, &sp) < 0) /* see the top of this file */
		fs_log("io_uring queue %u: cannot run at SCHED_IDLE: %s", q->qid, strerror(errno));
	self_q = q;
	int r = ring_q_init(q); /* here: the ring's one submitter is this thread */
	pthread_mutex_lock(&q->lock);
	q->init = r < 0 ? r : 1;
	pthread_cond_broadcast(&q->cond);
	while (!q->go && !q->stop && r == 0) /* until the kernel has our INIT reply */
		pthread_cond_wait(&q->cond, &q->lock);
	bool quit = q->stop || r < 0;
	pthread_mutex_unlock(&q->lock);
	if (quit)
		return NULL;
	for (int i = 0; i < DEPTH; i++) {
		q->ent[i].live = true;
		sqe_cmd(q, &q->ent[i], UR_CMD_REGISTER, 0);
	}
	sqe_wait_event(q);
	while (live) {
		int n = ur_enter(q->fd, q->to_submit, 1, q->enter_flags);
		if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
			fs_log("io_uring queue %u: %s; its requests wait for the unmount", q->qid, strerror(errno));
			break;
		}
		if (n > 0)
			q->to_submit -= (unsigned)n < q->to_submit ? (unsigned)n : q->to_submit;
		unsigned head = *q->cq_head, tail = __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE);
		for (; head != tail; head++) {
			struct io_uring_cqe *c = &q->cqes[head & *q->cq_mask];
			if (c->user_data == EV_TAG) {
				pthread_mutex_lock(&q->lock);
				bool stop = q->stop;
				pthread_mutex_unlock(&q->lock);
				if (stop)
					live = 0;
				commit_done(q);
				sqe_wait_event(q);
				continue;
			}
			struct ring_ent *e = (struct ring_ent *)(uintptr_t)c->user_data;
			if (c->res == 0) {
				q->serving = head;
				serve_ent(e);
			} else if (c->res == -EINTR || c->res == -EAGAIN) {
				sqe_cmd(q, e, UR_CMD_REGISTER, 0); /* before the kernel was ready */
			} else {
				/* -ENOTCONN, -ECANCELED: unmounted; else a refusal, after
				 * which the kernel serves requests through /dev/fuse */
				if (c->res != -ENOTCONN && c->res != -ECANCELED) {
					fs_log("io_uring queue %u: entry refused (%s): requests come through /dev/fuse",
					       q->qid, strerror(-c->res));
					__atomic_store_n(&ur.refused, true, __ATOMIC_RELAXED);
				}
				e->live = false;
				live--;
			}
		}
		__atomic_store_n(q->cq_head, head, __ATOMIC_RELEASE);
	}
	return NULL;
}

/*
 * The kernel offers io_uring at INIT only while the fuse module's
 * enable_uring is set; it checks it again when it takes our reply, and not
 * after: a connection that took io_uring keeps it. So a daemon running as
 * root sets it just for its own mount, from before the mount (when the
 * kernel writes INIT) until our INIT reply is written, then puts it back.
 * Another FUSE daemon mounting in that moment is offered io_uring too; it
 * is an offer, which only a daemon asking for it takes. Two venvfs daemons
 * mounting at once take turns (an flock on the parameter's file, held
 * from the read to the put back): else the second saw "Y", left it alone,
 * and the first put "N" back before the kernel took the second's INIT
 * reply, and the second mount was served through /dev/fuse.
 */
#define ENABLE_URING "/sys/module/fuse/parameters/enable_uring"
static bool offer_set;      /* we set enable_uring: put it back */
static int offer_lock = -1; /* the parameter's file, flocked until done */

static int write_param(const char *v)
{
	int fd = open(ENABLE_URING, O_WRONLY | O_CLOEXEC);
	int r = fd >= 0 && write(fd, v, 1) == 1 ? 0 : -errno;

	if (fd >= 0)
		close(fd);
	return r;
}

void uring_ask_offer(void)
{
	char v = 0;
	int fd;

	if (!fsd.use_uring || geteuid() != 0 || (fd = open(ENABLE_URING, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	/* the other daemon holds it for a few ms; a stuck one not forever */
	for (int ms = 0; flock(fd, LOCK_EX | LOCK_NB) < 0; ms++) {
		if (ms == 2000) {
			fs_log("%s stayed locked by another daemon for 2 s: mounting without waiting", ENABLE_URING);
			break;
		}
		usleep(1000);
	}
	offer_lock = fd;
	if (read(fd, &v, 1) != 1)
		v = 0;
	if (v == 'N') {
		int r = write_param("Y");
		if (r == 0)
			offer_set = true;
		else
			fs_log("cannot set %s (%s): requests come through /dev/fuse", ENABLE_URING, strerror(-r));
	}
}

void uring_offer_done(void)
{
	if (offer_set) {
		offer_set = false;
		int r = write_param("N");
		if (r < 0)
			fs_log("cannot put %s back to N: %s", ENABLE_URING, strerror(-r));
	}
	if (offer_lock >= 0) {
		close(offer_lock); /* and with it the flock */
		offer_lock = -1;
	}
}

void uring_offered(bool offered)
{
	ur.offered = offered;
}

bool uring_planned(void)
{
	return ur.offered && fsd.use_uring;
}

bool uring_accept(int devfd, uint32_t max_write, uint16_t max_pages)
{
	if (!uring_planned())
		return false;
	unsigned nq = possible_cpus();
	long page = sysconf(_SC_PAGESIZE);
	size_t payload = 32 * (size_t)page; /* the kernel's default max_pages */
	if (max_write > payload)
		payload = max_write;
	if ((size_t)max_pages * (size_t)page > payload)
		payload = (size_t)max_pages * (size_t)page;
	if (!nq || nq > 4096)
		return false;
	ur.devfd = devfd;
	ur.payload = payload;
	ur.q = xcalloc(nq, sizeof(*ur.q));
	for (unsigned i = 0; i < nq; i++) {
		struct ring_q *q = &ur.q[i];
		q->qid = i;
		q->fd = q->evfd = -1;
		pthread_mutex_init(&q->lock, NULL);
		pthread_cond_init(&q->cond, NULL);
		ur.nq = i + 1;
		int r = fs_thread_create(&q->thread, ring_thread, q) == 0 ? 0 : -EAGAIN;
		if (r == 0) {
			q->started = true;
			pthread_mutex_lock(&q->lock);
			while (!q->init)
				pthread_cond_wait(&q->cond, &q->lock);
			r = q->init < 0 ? q->init : 0;
			pthread_mutex_unlock(&q->lock);
		}
		if (r < 0) {
			fs_log("io_uring offered but not usable (%s): requests come through /dev/fuse", strerror(-r));
			uring_stop();
			uring_free();
			return false;
		}
	}
	return true;
}

void uring_start(void)
{
	for (unsigned i = 0; i < ur.nq; i++) {
		pthread_mutex_lock(&ur.q[i].lock);
		ur.q[i].go = true;
		pthread_cond_signal(&ur.q[i].cond);
		pthread_mutex_unlock(&ur.q[i].lock);
	}
	ur.on = true;
	fs_log("requests come through io_uring: %u queues of %d", ur.nq, DEPTH);
}

bool uring_on(void)
{
	return ur.on && !__atomic_load_n(&ur.refused, __ATOMIC_RELAXED);
}

static struct ring_ent *find_ent(uint64_t unique)
{
	if (self_ent && __atomic_load_n(&self_ent->unique, __ATOMIC_RELAXED) == unique)
		return self_ent;
	for (unsigned i = 0; i < ur.nq; i++)
		for (int j = 0; j < DEPTH; j++)
			if (__atomic_load_n(&ur.q[i].ent[j].unique, __ATOMIC_RELAXED) == unique)
				return &ur.q[i].ent[j];
	return NULL;
}

/* Wake q's thread from another one: its io_uring waits on the eventfd. */
static void ring_wake(struct ring_q *q)
{
	uint64_t one = 1;

	if (q->evfd >= 0 && write(q->evfd, &one, sizeof(one)) != sizeof(one))
		fs_log("io_uring queue %u: cannot wake its thread: %s", q->qid, strerror(errno));
}

ssize_t uring_reply(const struct iovec *iov, int count)
{
	const struct ur_out_header *oh = iov[0].iov_base;
	struct ring_ent *e;

	if (!ur.nq || !oh->unique || !(e = find_ent(oh->unique)))
		return -1;
	struct ur_req_header *h = (struct ur_req_header *)e->mem;
	char *payload = e->mem + HEAD_SPACE;
	size_t len = 0;
	struct ur_out_header out = *oh;
	for (int i = 1; i < count; i++) {
		if (len + iov[i].iov_len > ur.payload) {
			fs_log("io_uring: a reply of more than %zu bytes (unique %" PRIu64 ")", ur.payload, oh->unique);
			out.error = -EIO;
			len = 0;
			break;
		}
		memmove(payload + len, iov[i].iov_base, iov[i].iov_len);
		len += iov[i].iov_len;
	}
	out.len = (uint32_t)(sizeof(out) + len);
	memcpy(h->in_out, &out, sizeof(out));
	h->ent.payload_sz = (uint32_t)len;
	__atomic_store_n(&e->unique, 0, __ATOMIC_RELAXED);
	struct ring_q *q = e->q;
	if (self_q == q) {
		sqe_cmd(q, e, UR_CMD_COMMIT_AND_FETCH, out.unique); /* submitted as it waits */
	} else {
		pthread_mutex_lock(&q->lock);
		e->next = q->done;
		q->done = e;
		pthread_mutex_unlock(&q->lock);
		ring_wake(q);
	}
	return (ssize_t)(sizeof(out) + len);
}

void uring_stop(void)
{
	for (unsigned i = 0; i < ur.nq; i++) {
		struct ring_q *q = &ur.q[i];
		if (!q->started)
			continue;
		pthread_mutex_lock(&q->lock);
		q->stop = true;
		pthread_cond_signal(&q->cond);
		pthread_mutex_unlock(&q->lock);
		ring_wake(q); /* it waits for go (above) or for its io_uring */
		pthread_join(q->thread, NULL);
		q->started = false;
	}
}

void uring_free(void)
{
	for (unsigned i = 0; i < ur.nq; i++)
		ring_q_free(&ur.q[i]);
	free(ur.q);
	ur.q = NULL;
	ur.nq = 0;
	ur.on = false;
}

bool uring_run_here(void (*fn)(void *), void *arg)
{
	struct ring_q *q = self_q;

	/* nothing in the CQ after this request: no request, no worker's answer */
	if (!q || !self_ent || __atomic_load_n(q->cq_tail, __ATOMIC_ACQUIRE) != q->serving + 1)
		return false;
	pthread_mutex_unlock(&fsd.dispatch);
	fn(arg);
	pthread_mutex_lock(&fsd.dispatch);
	return true;
}

/*
 * Run a job that may wait for the disk and replies to its request: on the
 * ring thread that holds the request if it is idle (uring.c explains why),
 * else on a worker.
 */
void run_blocking(void (*fn)(void *), void *arg)
{
	if (!uring_run_here(fn, arg))
		fs_defer(fn, arg);
}
