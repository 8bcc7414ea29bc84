/*
 * passthrough.c - FUSE passthrough for the files of writable layers.
 *
 * Since Linux 6.9 a FUSE daemon can name, when a file is opened, a
 * "backing" file of its own (FOPEN_PASSTHROUGH): the kernel then serves
 * that open file's reads, writes and mmaps straight from the backing file,
 * with no request per read or write and no copy through the daemon. A file
 * of an env's writable layer is then read and written at the speed of the
 * file system under the store (dd of 1 GiB through the daemon instead: two
 * more copies and a round trip per MiB).
 *
 * libfuse 3.14 (Debian's) predates the interface, so the daemon speaks its
 * two small parts itself, through the session's I/O hooks
 * (fuse_session_custom_io): it sees whether the kernel offers passthrough
 * in the INIT request and accepts it in the INIT reply (FUSE_PASSTHROUGH,
 * max_stack_depth); and in an open or create reply for which the handler
 * registered a backing file (FUSE_DEV_IOC_BACKING_OPEN, on the same thread
 * just before replying) it sets FOPEN_PASSTHROUGH and the backing id. The
 * id is released when the file is (FUSE_DEV_IOC_BACKING_CLOSE).
 *
 * The same hooks carry FUSE over io_uring (uring.c): the kernel's offer is
 * seen in INIT and accepted in its reply, and every reply goes to the
 * io_uring entry that holds its request, if one does, else to /dev/fuse.
 *
 * Passthrough needs CAP_SYS_ADMIN and a kernel that offers it; otherwise,
 * or if registering a backing file fails, files go through the daemon as
 * before. Every open of a file of the writable layer asks for it, so an
 * inode's opens never mix the two modes (the kernel refuses that).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs_i.h"

/* From the kernel's <linux/fuse.h> (7.40), newer than Debian's headers. */
#define PT_INIT_FLAG2  (1u << 5)  /* FUSE_PASSTHROUGH (1ULL << 37), in flags2 */
#define PT_FOPEN       (1u << 7)  /* FOPEN_PASSTHROUGH */
#define PT_OP_INIT     26         /* FUSE_INIT */
#define PT_INIT_EXT    (1u << 30) /* FUSE_INIT_EXT */
#define PT_STACK_DEPTH 1          /* the store is on a plain file system */
#define UR_INIT_FLAG2  (1u << 9)  /* FUSE_OVER_IO_URING (1ULL << 41), in flags2 (uring.c) */

struct pt_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define PT_IOC_BACKING_OPEN  _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

struct pt_in_header {
	uint32_t len, opcode;
	uint64_t unique, nodeid;
	uint32_t uid, gid, pid;
	uint16_t total_extlen, padding;
};

struct pt_init_in {
	uint32_t major, minor, max_readahead, flags, flags2;
};

struct pt_out_header {
	uint32_t len;
	int32_t error;
	uint64_t unique;
};

struct pt_init_out {
	uint32_t major, minor, max_readahead, flags;
	uint16_t max_background, congestion_threshold;
	uint32_t max_write, time_gran;
	uint16_t max_pages, map_alignment;
	uint32_t flags2, max_stack_depth;
};

struct pt_open_out {
	uint64_t fh;
	uint32_t open_flags;
	uint32_t backing_id;
};

static int dev_fd = -1;
static bool offered; /* the kernel offered passthrough at INIT */
static bool on;      /* and we accepted */
static uint64_t init_unique;
static __thread uint32_t next_reply_id; /* the next open/create reply carries it */

static ssize_t pt_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);

	(void)userdata;
	if (!init_unique && n >= (ssize_t)(sizeof(struct pt_in_header) + sizeof(struct pt_init_in))) {
		const struct pt_in_header *ih = buf;
		const struct pt_init_in *ii = (const void *)(ih + 1);
		if (ih->opcode == PT_OP_INIT) {
			init_unique = ih->unique;
			offered = (ii->flags & PT_INIT_EXT) && (ii->flags2 & PT_INIT_FLAG2);
			uring_offered((ii->flags & PT_INIT_EXT) && (ii->flags2 & UR_INIT_FLAG2));
		}
	}
	return n;
}

/* A reply: to its io_uring entry if it came that way (uring.c), else to /dev/fuse. */
static ssize_t dev_send(int fd, struct iovec *iov, int count)
{
	ssize_t n = uring_reply(iov, count);

	return n >= 0 ? n : writev(fd, iov, count);
}

static ssize_t pt_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const struct pt_out_header *oh = iov[0].iov_base;
	char patched[512];
	struct iovec v[8];
	bool ring = false, init = false;

	(void)userdata;
	if (count < 2 || count > 8 || oh->error != 0 || iov[1].iov_len > sizeof(patched) ||
	    (!next_reply_id && (!init_unique || oh->unique != init_unique)))
		return dev_send(fd, iov, count);
	memcpy(v, iov, (size_t)count * sizeof(*v));
	memcpy(patched, iov[1].iov_base, iov[1].iov_len);
	v[1].iov_base = patched;
	if (next_reply_id && iov[1].iov_len >= sizeof(struct pt_open_out)) {
		/* an open reply, or a create reply (entry, then open) */
		struct pt_open_out *oo = (void *)(patched + iov[1].iov_len - sizeof(*oo));
		oo->open_flags |= PT_FOPEN;
		oo->backing_id = next_reply_id;
		next_reply_id = 0;
	} else if (oh->unique == init_unique && iov[1].iov_len >= sizeof(struct pt_init_out)) {
		struct pt_init_out *io = (void *)patched;
		init_unique = 0;
		init = true;
		if (offered && geteuid() == 0) {
			io->flags2 |= PT_INIT_FLAG2;
			io->max_stack_depth = PT_STACK_DEPTH;
			on = true;
		}
		if (uring_accept(fd, io->max_write, io->max_pages)) {
			io->flags2 |= UR_INIT_FLAG2;
			ring = true;
		}
	}
	ssize_t n = dev_send(fd, v, count);
	if (init)
		uring_offer_done();
	if (ring && n >= 0)
		uring_start(); /* the kernel has the reply: it now takes registrations */
	return n;
}

static ssize_t pt_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags,
			      void *userdata)
{
	(void)userdata;
	return splice(fdin, offin, fdout, offout, len, flags);
}

void passthrough_setup(struct fuse_session *se)
{
	static const struct fuse_custom_io io = {
		.writev = pt_writev,
		.read = pt_read,
		.splice_send = pt_splice_send,
	};

	dev_fd = fuse_session_fd(se);
	if (fuse_session_custom_io(se, &io, dev_fd) < 0)
		fs_log("cannot hook the session's I/O: no passthrough");
}

bool passthrough_on(void)
{
	return on;
}

uint32_t passthrough_open(int fd)
{
	struct pt_backing_map map = {.fd = fd};

	if (!on)
		return 0;
	int id = ioctl(dev_fd, PT_IOC_BACKING_OPEN, &map);
	if (id <= 0) {
		static bool told;
		if (!told) {
			told = true;
			fs_log("passthrough refused (%s): files of writable layers go through the daemon",
			       strerror(errno));
		}
		return 0;
	}
	return (uint32_t)id;
}

void passthrough_reply_next(uint32_t id)
{
	next_reply_id = id;
}

void passthrough_close(uint32_t id)
{
	if (id && ioctl(dev_fd, PT_IOC_BACKING_CLOSE, &id) < 0)
		fs_log("releasing backing file %u: %s", id, strerror(errno));
}

/* ---- passthrough as the handlers use it ------------------------------------------ */

/*
 * Ask for passthrough of the open file fi of node n (under the lock). The
 * kernel wants one backing file per inode, for all its opens: the node
 * keeps one, opened for reading and writing, while any open file uses it.
 */
void want_passthrough(struct node *n, struct fuse_file_info *fi)
{
	if (n->no_passthrough || !passthrough_on())
		return;
	if (!n->backing_id) {
		char p[32];
		fd_path(n->fd, p);
		int fd = open(p, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			fd = open(p, O_RDONLY | O_CLOEXEC);
		n->backing_id = fd >= 0 ? passthrough_open(fd) : 0;
		if (!n->backing_id) {
			if (fd >= 0)
				close(fd);
			n->no_passthrough = true;
			return;
		}
		n->backing_fd = fd;
	}
	n->backing_users++;
	fh_set_backing(fi, n->backing_id);
}

/* An open file that used n's backing file was released (under the lock):
 * the last one hands back the backing file, for close_later(). */
void drop_passthrough(struct node *n, uint32_t *id, int *fd)
{
	if (n->backing_users && --n->backing_users == 0) {
		*id = n->backing_id;
		*fd = n->backing_fd;
		n->backing_id = 0;
		n->backing_fd = -1;
	}
}

/*
 * What a released file held: its descriptor and, from the node's last
 * passthrough user, the backing file (FUSE_DEV_IOC_BACKING_CLOSE alone costs
 * ~40 us, more than the rest of a release). Over io_uring a release is
 * handled on the CPU of the process that closed the file, which it would
 * slow down (a pip install: ~1,200 releases), so a worker closes them, a
 * batch per wake-up. Through /dev/fuse the serving thread is on another
 * CPU already: closed at once.
 */
struct closing {
	int fd, backing_fd;
	uint32_t backing_id;
	struct closing *next;
};

static pthread_mutex_t closing_lock = PTHREAD_MUTEX_INITIALIZER;
static struct closing *closing_list;
static unsigned closing_n; /* on the list: descriptors still held */
#define CLOSING_MAX 256    /* past this, close at once (descriptor pressure) */

static void close_now(int fd, uint32_t backing_id, int backing_fd)
{
	if (fd >= 0)
		close(fd);
	if (backing_id) {
		passthrough_close(backing_id);
		close(backing_fd);
	}
}

static void closing_run(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&closing_lock);
	struct closing *c = closing_list;
	closing_list = NULL;
	__atomic_store_n(&closing_n, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&closing_lock);
	while (c) {
		struct closing *next = c->next;
		close_now(c->fd, c->backing_id, c->backing_fd);
		free(c);
		c = next;
	}
}

void close_later(int fd, uint32_t backing_id, int backing_fd)
{
	if (!uring_on() || __atomic_load_n(&closing_n, __ATOMIC_RELAXED) >= CLOSING_MAX) {
		close_now(fd, backing_id, backing_fd);
		return;
	}
	struct closing *c = xmalloc(sizeof(*c));
	*c = (struct closing){fd, backing_fd, backing_id, NULL};
	pthread_mutex_lock(&closing_lock);
	bool first = !closing_list;
	c->next = closing_list;
	closing_list = c;
	__atomic_add_fetch(&closing_n, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&closing_lock);
	if (first)
		fs_defer(closing_run, NULL);
}

/* The open reply about to be sent for fi carries its backing file. */
void reply_passthrough(struct fuse_file_info *fi)
{
	if (fh_backing(fi)) {
		fi->keep_cache = 0;
		passthrough_reply_next(fh_backing(fi));
	}
}

/* Answer an open: r, or fi with its caching flags and backing file. */
void reply_open(fuse_req_t req, int r, struct fuse_file_info *fi)
{
	if (r < 0) {
		reply_err(req, OP_OPEN, -r);
		return;
	}
	fi->keep_cache = 1; /* every change to the file goes through us */
	fi->noflush = 1;    /* nothing to flush on close */
	reply_passthrough(fi);
	fuse_reply_open(req, fi);
}
