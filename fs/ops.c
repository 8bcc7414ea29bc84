/*
 * ops.c - the FUSE low-level handlers: each request turned into calls on
 * nodes (inode.c), envs (fsenv.c), store files (shared.c) and the union of
 * layers (union.c), and answered.
 *
 * Every handler replies exactly once, through reply_err() or one of the
 * fuse_reply_* calls at its end; every failure goes through reply_err(),
 * which counts it by operation and errno (`venvfs stats` shows them).
 * Handlers run under fsd.lock, except the data path (reads and writes of
 * open files) and the jobs workers run (daemon.c).
 *
 * Caching (the kernel does most of the work, the daemon stays out of the
 * way): env content changes only through this daemon (or absorb, which
 * tells the kernel), so entries, attributes and negative lookups are
 * cached "forever" (TIMEOUT_FOREVER); opendir is answered ENOSYS once,
 * after which the kernel opens directories without asking and caches
 * their listings; open keeps the page cache and asks for no flush on
 * close; readdirplus primes the entry cache while listing.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs_i.h"
#include "tree.h"

static void lock(void)
{
	pthread_mutex_lock(&fsd.lock);
	fsd.last_request_ns = now_ns();
}

static void unlock(void)
{
	bool wake = fsd.many_new_nodes;

	fsd.many_new_nodes = false;
	pthread_mutex_unlock(&fsd.lock);
	if (wake)
		fs_wake_housekeeping();
}

static double entry_timeout(const struct node *parent)
{
	return parent->kind == N_ROOT ? TIMEOUT_ROOT : TIMEOUT_FOREVER;
}

static int fill_entry(struct fuse_entry_param *e, struct node *n, double timeout)
{
	memset(e, 0, sizeof(*e));
	e->ino = (fuse_ino_t)(uintptr_t)n;
	e->attr_timeout = timeout;
	e->entry_timeout = timeout;
	return node_stat(n, &e->attr);
}

/* ---- lookup and attributes ---------------------------------------------------- */

/*
 * Resolve name in dir; a lookup that follows a refused write-open of a
 * shared store file (union.c) copies it into this env first.
 */
static int lookup_locked(fuse_req_t req, struct node *dir, const char *name, struct node **out)
{
	int r = node_child(dir, name, strlen(name), out);
	bool trunc;

	if (r == 0 && (*out)->kind == N_SHARED && dir->kind == N_DIR &&
	    intent_take(fuse_req_ctx(req)->pid, *out, &trunc)) {
		r = node_writable(dir);
		if (r == 0)
			r = copy_up_shared(dir, name, *out, trunc, out);
	}
	return r;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	struct node *dir = node_of(parent), *n;
	int r;

	fs_count(OP_LOOKUP);
	lock();
	r = lookup_locked(req, dir, name, &n);
	if (r == 0 && (r = fill_entry(&e, n, entry_timeout(dir))) == 0)
		node_ref_lookup(n, 1);
	unlock();
	if (r == -ENOENT) {
		/* a negative entry: the kernel remembers the name is not there */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = entry_timeout(dir);
		fuse_reply_entry(req, &e);
		return;
	}
	if (r < 0) {
		reply_err(req, OP_LOOKUP, -r);
		return;
	}
	fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_count(OP_FORGET);
	lock();
	node_forget(node_of(ino), nlookup);
	unlock();
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count_, struct fuse_forget_data *forgets)
{
	fs_count(OP_FORGET);
	lock();
	for (size_t i = 0; i < count_; i++)
		node_forget(node_of(forgets[i].ino), forgets[i].nlookup);
	unlock();
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);
	struct stat st;
	int r;

	(void)fi;
	fs_count(OP_GETATTR);
	lock();
	if (n->kind == N_ROOT)
		root_list();
	r = node_stat(n, &st);
	unlock();
	if (r < 0)
		reply_err(req, OP_GETATTR, -r);
	else
		fuse_reply_attr(req, &st, n->kind == N_ROOT ? TIMEOUT_ROOT : TIMEOUT_FOREVER);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct node *n = node_of(ino);
	char target[PATH_MAX + 1];

	fs_count(OP_READLINK);
	lock();
	if (n->kind == N_FILE && S_ISLNK(n->mode)) {
		struct tree *t = n->env->view->layers[n->src.layer].tree;
		const struct tree_node *tn = tree_node(t, n->src.node);
		size_t len = MIN(tn->u.link.len, PATH_MAX);
		memcpy(target, tree_link_target(t, tn), len);
		target[len] = '\0';
	} else if (n->kind == N_UPPER) {
		ssize_t len = readlinkat(n->fd, "", target, PATH_MAX);
		if (len < 0) {
			int e = errno;
			unlock();
			reply_err(req, OP_READLINK, e == ENOENT ? EINVAL : e);
			return;
		}
		target[len] = '\0';
	} else {
		unlock();
		reply_err(req, OP_READLINK, EINVAL);
		return;
	}
	unlock();
	fuse_reply_readlink(req, target);
}

static bool wants_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/*
 * The flags a file of the writable layer is opened with for a request's
 * flags. O_DIRECT: the kernel already sends each such read and write to
 * us, and our buffers are not aligned for the disk. O_NOFOLLOW: the kernel
 * already refused a symlink at the caller's last component; we reopen
 * through /proc/self/fd, a link that O_NOFOLLOW would refuse (ELOOP:
 * sqlite, tar, cp -a and git reopening files with it all failed).
 */
static int open_flags(int flags)
{
	return (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT | O_NOFOLLOW)) | O_CLOEXEC;
}

/* The times a setattr sets, for utimensat(): false if it sets none. */
static bool setattr_times(const struct stat *a, int to_set, struct timespec ts[2])
{
	ts[0] = ts[1] = (struct timespec){0, UTIME_OMIT};
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		ts[0].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		ts[0] = a->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		ts[1].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		ts[1] = a->st_mtim;
	return to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW);
}

/* Apply a setattr to an N_UPPER node (fd: an open file, or -1). */
static int setattr_upper(struct node *n, const struct stat *a, int to_set, int fd, const struct fuse_ctx *ctx)
{
	char p[32];

	fd_path(n->fd, p);
	if (to_set & FUSE_SET_ATTR_MODE) {
		mode_t m = a->st_mode & 07777;
		if (fchmodat(AT_FDCWD, p, m, 0) < 0)
			return -errno;
	}
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t u = to_set & FUSE_SET_ATTR_UID ? a->st_uid : (uid_t)-1;
		gid_t g = to_set & FUSE_SET_ATTR_GID ? a->st_gid : (gid_t)-1;
		if (fsd.uid != 0 && ctx->uid != 0 && u != (uid_t)-1 && u != ctx->uid)
			return -EPERM;
		if (fchownat(n->fd, "", u, g, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 && fsd.uid == 0)
			return -errno;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		int r = fd >= 0 ? ftruncate(fd, a->st_size) : truncate(p, a->st_size);
		if (r < 0)
			return -errno;
	}
	struct timespec ts[2];
	if (setattr_times(a, to_set, ts)) {
		if (S_ISLNK(n->mode)) {
			if (utimensat(n->fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 && errno != EINVAL)
				return -errno;
		} else if (utimensat(AT_FDCWD, p, ts, 0) < 0) {
			return -errno;
		}
	}
	fsenv_touch(n->env);
	return 0;
}

static int setattr_dir(struct node *n, const struct stat *a, int to_set)
{
	int r = copy_up_dir(n);

	if (r < 0)
		return r;
	if (to_set & FUSE_SET_ATTR_SIZE)
		return -EISDIR;
	if ((to_set & FUSE_SET_ATTR_MODE) && fchmod(n->up.fd, a->st_mode & 07777) < 0)
		return -errno;
	if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) && fsd.uid == 0 &&
	    fchown(n->up.fd, to_set & FUSE_SET_ATTR_UID ? a->st_uid : (uid_t)-1,
		   to_set & FUSE_SET_ATTR_GID ? a->st_gid : (gid_t)-1) < 0)
		return -errno;
	struct timespec ts[2];
	if (setattr_times(a, to_set, ts)) {
		if (futimens(n->up.fd, ts) < 0)
			return -errno;
	}
	fsenv_touch(n->env);
	return 0;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);
	struct stat st;
	int r = 0;

	fs_count(OP_SETATTR);
	lock();
	if (n->kind != N_ROOT && n->kind != N_SHARED)
		r = node_writable(n);
	switch (r ? N_ROOT : n->kind) {
	case N_ROOT:
		r = r ? r : -EPERM;
		break;
	case N_SHARED:
		/* which env? the retried lookup will say (union.c) */
		intent_add(fuse_req_ctx(req)->pid, n, (to_set & FUSE_SET_ATTR_SIZE) && attr->st_size == 0);
		r = -ESTALE;
		break;
	case N_DIR:
		r = setattr_dir(n, attr, to_set);
		break;
	case N_FILE:
		r = copy_up_node(n);
		if (r < 0)
			break;
		/* it is an N_UPPER node now */
		__attribute__((fallthrough));
	case N_UPPER:
		r = setattr_upper(n, attr, to_set, fi ? fh_fd(fi) : -1, fuse_req_ctx(req));
		break;
	}
	if (r == 0)
		r = node_stat(n, &st);
	unlock();
	if (r < 0)
		reply_err(req, OP_SETATTR, -r);
	else
		fuse_reply_attr(req, &st, TIMEOUT_FOREVER);
}

/* ---- files ------------------------------------------------------------------------- */

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);
	int r = 0;

	fs_count(OP_OPEN);
	lock();
	if (n->kind == N_DIR || n->kind == N_ROOT) {
		r = -EISDIR;
	} else if (n->kind == N_SHARED) {
		if (wants_write(fi->flags)) {
			intent_add(fuse_req_ctx(req)->pid, n, fi->flags & O_TRUNC);
			r = -ESTALE;
		} else if (shared_open(req, n, fi, &r)) {
			return;
		}
	} else if (n->kind == N_FILE) {
		if (wants_write(fi->flags) && (r = node_writable(n)) == 0)
			r = copy_up_node(n);
		else if (n->state < 0)
			r = n->state;
	}
	if (r == 0 && n->kind == N_UPPER && wants_write(fi->flags))
		r = node_writable(n);
	if (r == 0 && n->kind == N_UPPER) {
		char p[32];
		fd_path(n->fd, p);
		int fd = open(p, open_flags(fi->flags));
		if (fd < 0) {
			r = -errno;
		} else {
			fi->fh = (uint64_t)fd;
			want_passthrough(n, fi);
			if (wants_write(fi->flags)) {
				n->writers++;
				fsenv_touch(n->env);
			}
		}
	}
	unlock();
	reply_open(req, r, fi);
}

/* A read that may wait for the disk, on a worker. */
struct read_job {
	fuse_req_t req;
	struct node *n;
	int fd; /* N_UPPER: the open file */
	size_t size;
	off_t off;
};

static void read_job_run(void *arg)
{
	struct read_job *j = arg;
	struct node *n = j->n;
	int own = -1, fd = j->fd, r = 0;

	if (fd < 0) { /* a store file: small ones hold no descriptor (shared.c) */
		r = shared_open_object(n, n->size < SHARED_PASSTHROUGH_MIN ? &own : NULL);
		fd = own >= 0 ? own : n->fd;
	}
	pthread_mutex_lock(&fsd.lock);
	bool foreign = n->foreign;
	pthread_mutex_unlock(&fsd.lock);
	if (r < 0) {
		reply_err(j->req, OP_READ, r == -ENFILE ? EIO : -r);
	} else if (foreign) {
		/* read here, then looked at: never spliced (shared.c) */
		size_t want = j->off >= 0 && (uint64_t)j->off < n->size ? MIN(j->size, n->size - (uint64_t)j->off) : 0;
		char *b = xmalloc(want + 1);
		ssize_t got = pread_full(fd, b, want, j->off);
		if (got < 0 || !shared_still_checked(n, fd))
			reply_err(j->req, OP_READ, EIO);
		else
			fuse_reply_buf(j->req, b, (size_t)got);
		free(b);
	} else {
		struct fuse_bufvec buf = FUSE_BUFVEC_INIT(j->size);
		buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		buf.buf[0].fd = fd;
		buf.buf[0].pos = j->off;
		fuse_reply_data(j->req, &buf, FUSE_BUF_SPLICE_MOVE);
		if (j->fd < 0)
			shared_drop_pages(fd, j->off, j->size);
	}
	if (own >= 0)
		close(own);
	pthread_mutex_lock(&fsd.lock);
	node_unref(n);
	pthread_mutex_unlock(&fsd.lock);
	free(j);
}

/*
 * Read what the page cache has without blocking (RWF_NOWAIT); true if the
 * request was answered, false if it has to wait for the disk.
 */
static bool read_cached(fuse_req_t req, int fd, uint64_t size, size_t want_size, off_t off)
{
	if ((uint64_t)off >= size) {
		fuse_reply_buf(req, NULL, 0);
		return true;
	}
	size_t want = MIN(want_size, size - (uint64_t)off);
	char *b = xmalloc(want);
	struct iovec iov = {b, want};
	ssize_t got = preadv2(fd, &iov, 1, off, RWF_NOWAIT);
	if (got == (ssize_t)want) {
		fuse_reply_buf(req, b, want);
		free(b);
		return true;
	}
	free(b);
	return false;
}

/* A read of template n (node_render()); false if it was copied up meanwhile. */
static bool read_template(fuse_req_t req, struct node *n, size_t size, off_t off)
{
	char *part = NULL;
	size_t got = 0;

	lock();
	if (n->kind != N_FILE) {
		unlock();
		return false;
	}
	int r = node_render(n);
	if (r == 0 && (uint64_t)off < n->rendered.len) {
		got = MIN(size, n->rendered.len - (size_t)off);
		part = xmalloc(got);
		memcpy(part, n->rendered.data + off, got);
	}
	if (r == 0 && (uint64_t)off + size >= n->rendered.len)
		buf_free(&n->rendered); /* read to its end: the page cache has it */
	unlock();
	if (r < 0)
		reply_err(req, OP_READ, EIO);
	else
		fuse_reply_buf(req, part, got);
	free(part);
	return true;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);
	int fd = -1;

	fs_count(OP_READ);
	if (n->kind == N_FILE && S_ISREG(n->mode) && read_template(req, n, size, off))
		return;
	if (n->kind == N_UPPER) {
		struct stat st;
		fd = fh_fd(fi);
		if (fstat(fd, &st) == 0 && read_cached(req, fd, (uint64_t)st.st_size, size, off))
			return;
	} else if (n->kind == N_SHARED) {
		if (n->fd >= 0 && n->state > 0 && !n->foreign && read_cached(req, n->fd, n->size, size, off)) {
			shared_drop_pages(n->fd, off, size);
			return;
		}
	} else {
		reply_err(req, OP_READ, EINVAL);
		return;
	}
	struct read_job *j = xmalloc(sizeof(*j));
	*j = (struct read_job){req, n, fd, size, off};
	pthread_mutex_lock(&fsd.lock);
	n->refs++;
	pthread_mutex_unlock(&fsd.lock);
	run_blocking(read_job_run, j);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);

	fs_count(OP_WRITE);
	if (n->kind != N_UPPER) {
		reply_err(req, OP_WRITE, EBADF);
		return;
	}
	__atomic_store_n(&fsd.last_request_ns, now_ns(), __ATOMIC_RELAXED);
	ssize_t w = pwrite(fh_fd(fi), buf, size, off);
	if (w < 0)
		reply_err(req, OP_WRITE, errno);
	else
		fuse_reply_write(req, (size_t)w);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);

	fs_count(OP_RELEASE);
	if (n->kind == N_UPPER && fi->fh) {
		uint32_t backing_id = 0;
		int backing_fd = -1;
		if (wants_write(fi->flags) || fh_backing(fi)) {
			lock();
			if (wants_write(fi->flags) && n->writers)
				n->writers--;
			if (fh_backing(fi))
				drop_passthrough(n, &backing_id, &backing_fd);
			unlock();
		}
		fuse_reply_err(req, 0);
		close_later(fh_fd(fi), backing_id, backing_fd);
		return;
	}
	fuse_reply_err(req, 0);
}

struct fsync_job {
	fuse_req_t req;
	int fd;
	int datasync;
	struct fsenv *env;
};

/*
 * A created env is not durable when create returns (store/env.c
 * env_install): the first fsync into an env makes it so (its manifest, its
 * directory, its name), or a power cut could take away the env and with it
 * the file the caller made durable. The open file keeps its node, and so
 * its env, alive until the reply.
 */
static void fsync_job_run(void *arg)
{
	struct fsync_job *j = arg;
	int r = 0;

	if (!__atomic_load_n(&j->env->durable, __ATOMIC_ACQUIRE)) {
		r = env_make_durable(fsd.s, j->env->name);
		if (r == 0)
			__atomic_store_n(&j->env->durable, true, __ATOMIC_RELEASE);
	}
	if (r == 0 && (j->datasync ? fdatasync(j->fd) : fsync(j->fd)) < 0)
		r = -errno;

	if (r < 0)
		reply_err(j->req, OP_FSYNC, -r);
	else
		fuse_reply_err(j->req, 0);
	free(j);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);

	fs_count(OP_FSYNC);
	if (n->kind != N_UPPER || !fi || !fi->fh) {
		fuse_reply_err(req, 0); /* store content is durable already */
		return;
	}
	struct fsync_job *j = xmalloc(sizeof(*j));
	*j = (struct fsync_job){req, fh_fd(fi), datasync, n->env};
	fs_defer(fsync_job_run, j);
}

/* ---- making and removing names ---------------------------------------------------- */

static void reply_new(fuse_req_t req, enum fs_op op, struct node *dir, const char *name, int r,
		      struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	struct node *n = NULL;
	bool made = r == 0;

	if (r == 0) {
		node_list_drop(dir);
		fsenv_touch(dir->env);
		r = node_child(dir, name, strlen(name), &n);
	}
	if (r == 0 && (r = fill_entry(&e, n, TIMEOUT_FOREVER)) == 0) {
		node_ref_lookup(n, 1);
		if (fi && n->kind == N_UPPER) {
			n->writers++;
			want_passthrough(n, fi);
		}
	}
	if (r < 0 && made && !n) /* no node was made for it: nothing names it */
		union_undo_new(dir, name);
	unlock();
	if (r < 0) {
		if (fi && fi->fh)
			close(fh_fd(fi));
		reply_err(req, op, -r);
	} else if (fi) {
		fi->keep_cache = 1;
		fi->noflush = 1;
		reply_passthrough(fi);
		fuse_reply_create(req, &e, fi);
	} else {
		fuse_reply_entry(req, &e);
	}
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	struct node *dir = node_of(parent);
	bool wh;
	int r;

	fs_count(OP_MKNOD);
	lock();
	r = union_prepare_new(dir, name, &wh);
	if (r == 0) {
		char tmp[32];
		int at;
		const char *nm = union_new_at(dir, name, wh, tmp, &at);
		if (mknodat(at, nm, mode, rdev) < 0) {
			r = -errno;
		} else {
			union_own(dir, at, nm, fuse_req_ctx(req));
			if (wh && (r = union_place_new(dir, tmp, name, false)) < 0)
				unlinkat(at, tmp, 0);
		}
	}
	reply_new(req, OP_MKNOD, dir, name, r, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct node *dir = node_of(parent);
	bool wh;
	int r;

	fs_count(OP_MKDIR);
	lock();
	r = union_prepare_new(dir, name, &wh);
	if (r == 0) {
		char tmp[32];
		int at, fd;
		const char *nm = union_new_at(dir, name, wh, tmp, &at);
		if (mkdirat(at, nm, mode & 07777) < 0) {
			r = -errno;
		} else if (wh) {
			/* over a whiteout: what is below stays hidden (opaque) */
			if ((fd = openat(at, tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
				r = -errno;
			} else {
				r = layer_set_dir(fd, true, NULL);
				close(fd);
			}
		}
		if (r == 0) {
			union_own(dir, at, nm, fuse_req_ctx(req));
			if (wh)
				r = union_place_new(dir, tmp, name, true);
		}
		if (r < 0 && wh)
			unlinkat(at, tmp, AT_REMOVEDIR);
	}
	reply_new(req, OP_MKDIR, dir, name, r, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct node *dir = node_of(parent);
	bool wh;
	int r;

	fs_count(OP_SYMLINK);
	lock();
	r = union_prepare_new(dir, name, &wh);
	if (r == 0) {
		char tmp[32];
		int at;
		const char *nm = union_new_at(dir, name, wh, tmp, &at);
		if (symlinkat(link, at, nm) < 0) {
			r = -errno;
		} else {
			union_own(dir, at, nm, fuse_req_ctx(req));
			if (wh && (r = union_place_new(dir, tmp, name, false)) < 0)
				unlinkat(at, tmp, 0);
		}
	}
	reply_new(req, OP_SYMLINK, dir, name, r, NULL);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	struct node *dir = node_of(parent);
	bool wh;
	int r;

	fs_count(OP_CREATE);
	lock();
	fi->fh = 0;
	r = union_prepare_new(dir, name, &wh);
	if (r == 0) {
		char tmp[32];
		int at;
		const char *nm = union_new_at(dir, name, wh, tmp, &at);
		int flags = (open_flags(fi->flags) & ~O_TRUNC) | O_CREAT | O_EXCL;
		int fd = openat(at, nm, flags, mode & 07777);
		if (fd < 0) {
			r = -errno;
		} else {
			union_own(dir, at, nm, fuse_req_ctx(req));
			if (wh && (r = union_place_new(dir, tmp, name, false)) < 0) {
				close(fd);
				unlinkat(at, tmp, 0);
			} else {
				fi->fh = (uint64_t)fd;
			}
		}
	}
	reply_new(req, OP_CREATE, dir, name, r, fi);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct node *dir = node_of(parent);
	struct merged m;
	int r;

	fs_count(OP_UNLINK);
	lock();
	r = dir->kind != N_DIR ? -EPERM : node_writable(dir);
	if (r == 0)
		r = copy_up_dir(dir);
	if (r == 0)
		r = layer_merge_lookup(dir->env->view, &dir->up, &dir->dir, name, &m);
	if (r == 0) {
		bool shows_upper = m.upper == L_FILE || m.upper == L_META;
		bool shows_lower = m.upper == L_NONE && m.lower;
		bool is_dir = m.upper == L_DIR || (shows_lower && S_ISDIR(view_node(dir->env->view, m.src)->mode));
		if (!shows_upper && !shows_lower && m.upper != L_DIR)
			r = -ENOENT;
		else if (is_dir)
			r = -EISDIR;
		else {
			union_unhash_name(dir, name);
			if (union_lower_has(dir, name))
				r = layer_whiteout(dir->up.fd, name, dir->env->workfd); /* atomic: replaces */
			else if (unlinkat(dir->up.fd, name, 0) < 0)
				r = -errno;
			node_list_drop(dir);
			fsenv_touch(dir->env);
		}
	}
	unlock();
	if (r < 0)
		reply_err(req, OP_UNLINK, -r);
	else
		fuse_reply_err(req, 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct node *dir = node_of(parent), *child;
	int r;

	fs_count(OP_RMDIR);
	lock();
	r = dir->kind != N_DIR ? -EPERM : node_writable(dir);
	if (r == 0)
		r = copy_up_dir(dir);
	if (r == 0)
		r = node_child(dir, name, strlen(name), &child);
	if (r == 0 && child->kind != N_DIR)
		r = -ENOTDIR;
	if (r == 0)
		r = union_dir_is_empty(child);
	if (r == 0)
		r = union_remove_dir(dir, name, child);
	unlock();
	if (r < 0)
		reply_err(req, OP_RMDIR, -r);
	else
		fuse_reply_err(req, 0);
}

/*
 * rename(2) in the union:
 *   - an entry of the writable layer is renamed there;
 *   - a store file is re-created at the new name as a metacopy (no data
 *     copied), and a per-env read-only file is copied up first;
 *   - a directory with read-only content gets a writable part at the new
 *     name marked "redirect" to where that content is (overlayfs's
 *     redirect_dir): pip renames whole package directories while
 *     upgrading, and kernel overlayfs answering EXDEV there broke it
 *     (pip#6943);
 *   - the old name is whited out if something below would show through.
 * RENAME_NOREPLACE works; RENAME_EXCHANGE too (union_exchange()), but for a
 * directory with read-only content (EXDEV: callers copy); RENAME_WHITEOUT
 * answers EINVAL (it is overlayfs's own, and needs CAP_MKNOD on ext4).
 */

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	int r;

	fs_count(OP_RENAME);
	lock();
	r = union_rename(node_of(parent), name, node_of(newparent), newname, flags);
	unlock();
	if (r < 0)
		reply_err(req, OP_RENAME, -r);
	else
		fuse_reply_err(req, 0);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct node *n = node_of(ino), *dir = node_of(newparent);
	bool wh;
	int r;

	fs_count(OP_LINK);
	lock();
	/* a store file has no single place to link from: callers copy (uv does) */
	r = n->kind != N_UPPER ? -EXDEV : dir->kind != N_DIR || dir->env != n->env ? -EXDEV : 0;
	if (r == 0)
		r = node_writable(n); /* gone: its inode may be a store object now */
	if (r == 0)
		r = union_prepare_new(dir, newname, &wh);
	if (r == 0) {
		char tmp[32], p[32];
		int at;
		const char *nm = union_new_at(dir, newname, wh, tmp, &at);
		fd_path(n->fd, p);
		if (linkat(AT_FDCWD, p, at, nm, AT_SYMLINK_FOLLOW) < 0)
			r = -errno;
		else if (wh && (r = union_place_new(dir, tmp, newname, false)) < 0)
			unlinkat(at, tmp, 0);
	}
	reply_new(req, OP_LINK, dir, newname, r, NULL);
}

/* ---- directories ----------------------------------------------------------------- */

/*
 * ENOSYS once: from then on the kernel opens directories without asking,
 * never sends releasedir, and caches their listings (FOPEN_CACHE_DIR is the
 * default without opendir); a cached listing is dropped when the
 * directory changes through the mount, or when we invalidate it.
 */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino, (void)fi;
	fuse_reply_err(req, ENOSYS);
}

/* One listing entry of dir at position i (after "." and ".."). */
/* Entry i of a listing (ordered by cookie), and the offset after it. */
static int dir_entry(struct node *dir, size_t i, const char **name, size_t *len, uint64_t *next)
{
	if (dir->kind == N_ROOT) {
		if (i >= fsd.n_env_names)
			return 0;
		*name = fsd.env_names[i];
		*next = fsd.env_cookies[i];
	} else {
		if (i >= dir->nlist)
			return 0;
		*name = dir->list[i].name;
		*next = dir->cookies[i];
	}
	*len = strlen(*name);
	return 1;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	enum fs_op op = plus ? OP_READDIRPLUS : OP_READDIR;
	struct node *dir = node_of(ino);
	char *buf = xmalloc(size), *p = buf;
	size_t rem = size;
	bool end = false;
	int r;

	fs_count(op);
	lock();
	r = dir->kind == N_ROOT ? root_list() : dir->kind == N_DIR ? node_list(dir) : -ENOTDIR;
	if (r < 0) {
		unlock();
		free(buf);
		reply_err(req, op, -r);
		return;
	}
	/* positions: 0 ".", 1 "..", 2 + i entry i; offsets are cookies */
	size_t start = off <= 2 ? (size_t)off
				: 2 + (dir->kind == N_ROOT ? list_seek(fsd.env_cookies, fsd.n_env_names, (uint64_t)off)
							   : list_seek(dir->cookies, dir->nlist, (uint64_t)off));
	for (size_t i = start;; i++) {
		struct fuse_entry_param e;
		struct stat st;
		const char *name;
		size_t len;
		size_t need;
		uint64_t next;

		memset(&e, 0, sizeof(e));
		memset(&st, 0, sizeof(st));
		if (i < 2) {
			name = i == 0 ? "." : "..";
			len = i + 1;
			next = i + 1;
			st.st_mode = S_IFDIR;
			st.st_ino = i == 0 ? dir->ino : 1;
		} else if (!dir_entry(dir, i - 2, &name, &len, &next)) {
			end = true;
			break;
		}
		_cleanup_free_ char *z = xstrndup(name, len);
		struct node *n = NULL;
		if (i >= 2 && dir->kind == N_ROOT) {
			/* listing the envs loads none of them (1,000 envs stay cheap):
			 * names and types only, no readdirplus attributes */
			st.st_mode = S_IFDIR;
			st.st_ino = node_root_ino(name, len);
		} else if (i >= 2) {
			int cr = node_child(dir, name, len, &n);
			if ((cr == -EMFILE || cr == -ENFILE) && upper_stat(dir, z, &st) == 0) {
				/* out of descriptors (fd_pressure() is on it): the
				 * name without a node; a lookup makes one later */
				n = NULL;
			} else if (cr < 0 || node_stat(n, &st) < 0) {
				if (n)
					node_forget(n, 0);
				continue; /* gone meanwhile */
			}
		}
		if (plus) {
			if (n)
				fill_entry(&e, n, entry_timeout(dir));
			else
				e.attr = st; /* ino 0: a name without attributes */
			need = fuse_add_direntry_plus(req, p, rem, z, &e, (off_t)next);
		} else {
			need = fuse_add_direntry(req, p, rem, z, &st, (off_t)next);
		}
		if (need > rem) {
			/* does not fit: not sent, so no reference taken; a node
			 * made only for this entry is dropped again */
			if (n)
				node_forget(n, 0);
			break;
		}
		if (plus && n)
			node_ref_lookup(n, 1);
		else if (n)
			node_forget(n, 0);
		p += need;
		rem -= need;
	}
	/*
	 * Nothing left to send: the caller has the whole listing, and the
	 * kernel caches it. Drop ours (a full scan of 1,000 envs kept 72 MB of
	 * listings): offsets are cookies of names (inode.c), so a later
	 * readdir at any offset finds its place in a listing made again.
	 */
	if (end && p == buf && dir->kind == N_DIR)
		node_list_drop(dir);
	unlock();
	fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	fs_count(OP_STATFS);
	if (fstatvfs(fsd.s->fd, &sv) < 0) {
		reply_err(req, OP_STATFS, errno);
		return;
	}
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

/* ---- session ------------------------------------------------------------------------ */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO; /* always plus: primes lookups */
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;                   /* O_TRUNC comes with open */
	if ((conn->capable & FUSE_CAP_SPLICE_WRITE) && !uring_planned()) /* an io_uring entry is memory */
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
	/* no POSIX or flock locks of our own: the kernel keeps them locally,
	 * which is what one host needs (uv locks <venv>/.lock) */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	/* no writeback cache: measured no faster here (the kernel throttles
	 * a FUSE file's dirty pages to the daemon's pace anyway), and every
	 * write reaching the layer at once is what absorb relies on */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	conn->time_gran = 1;
}

/*
 * access(2) and chdir, asked only where the mount has no default_permissions
 * (main.c: a root daemon serving root alone): what a directory on disk
 * answers root. Anything may be read, written and searched; a file may be
 * executed only if one of its x bits is set.
 */
static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct node *n = node_of(ino);
	struct stat st;
	int r;

	fs_count(OP_ACCESS);
	lock();
	r = node_stat(n, &st);
	unlock();
	if (r == 0 && (mask & X_OK) && !S_ISDIR(st.st_mode) && !(st.st_mode & (S_IXUSR | S_IXGRP | S_IXOTH)))
		r = -EACCES;
	if (r < 0)
		reply_err(req, OP_ACCESS, -r);
	else
		fuse_reply_err(req, 0);
}

/* ---- extended attributes ------------------------------------------------------------ */

/*
 * Extended attributes (user.*, security.*, trusted.* as root, and POSIX
 * ACLs as data: the kernel does not enforce them, docs/design.md) live on
 * the writable layer's entries, as on overlayfs. Store files have none
 * (import does not record them); setting one copies the entry up, as chmod
 * does. LAYER_XATTR is the layer's own marker (store/layer.h): it is never
 * shown and cannot be set or removed through the mount.
 *
 * Served only with `venvfs mount --xattrs` (fs/main.c). Once a file system
 * answers getxattr, the kernel asks it for security.capability before
 * every write to a file (file_remove_privs(): FUSE inodes never get
 * S_NOSEC unless the daemon takes over killing privileges with
 * FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 cannot ask for): one more
 * round trip per write(2), passthrough writes included. Measured, 20,000
 * writes of 4 KiB, medians of 5: 0.18-0.25 s without, 0.63-0.78 s with,
 * 0.14 s natively. Without the handlers the kernel hears ENOSYS once and
 * answers EOPNOTSUPP itself from then on.
 */
static bool xattr_reserved(const char *name)
{
	return strcmp(name, LAYER_XATTR) == 0;
}

/* Where n's attributes are, for reading: *fd (a directory's writable part)
 * or the path p of an N_UPPER file; -ENODATA if n has none. */
static int xattr_where(struct node *n, char p[32], int *fd)
{
	struct stat st;

	*fd = -1;
	if (n->kind == N_DIR && n->up.fd >= 0) {
		*fd = n->up.fd;
		return 0;
	}
	if (n->kind != N_UPPER)
		return -ENODATA;
	/* through /proc/self/fd, a link to the file itself; a symlink has
	 * no user.* attributes on Linux, and this path would follow it */
	if (fstatat(n->fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (S_ISLNK(st.st_mode))
		return -ENODATA;
	fd_path(n->fd, p);
	return 0;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct node *n = node_of(ino);
	char p[32], *b = size ? xmalloc(size) : NULL;
	ssize_t r;
	int fd = -1;

	fs_count(OP_GETXATTR);
	lock();
	r = xattr_reserved(name) ? -ENODATA : xattr_where(n, p, &fd);
	if (r == 0 && (r = fd >= 0 ? fgetxattr(fd, name, b, size) : getxattr(p, name, b, size)) < 0)
		r = -errno;
	unlock();
	if (r < 0)
		reply_err(req, OP_GETXATTR, (int)-r);
	else if (!size)
		fuse_reply_xattr(req, (size_t)r);
	else
		fuse_reply_buf(req, b, (size_t)r);
	free(b);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct node *n = node_of(ino);
	char p[32];
	ssize_t r;
	int fd = -1;
	_cleanup_free_ char *all = NULL;

	fs_count(OP_LISTXATTR);
	lock();
	r = xattr_where(n, p, &fd);
	if (r == 0) {
		r = fd >= 0 ? flistxattr(fd, NULL, 0) : listxattr(p, NULL, 0);
		all = r > 0 ? xmalloc((size_t)r) : NULL;
		if (r > 0)
			r = fd >= 0 ? flistxattr(fd, all, (size_t)r) : listxattr(p, all, (size_t)r);
		if (r < 0)
			r = -errno;
	}
	unlock();
	if (r == -ENODATA)
		r = 0; /* none */
	if (r < 0) {
		reply_err(req, OP_LISTXATTR, (int)-r);
		return;
	}
	/* the list without the layer's own name */
	size_t len = 0;
	for (ssize_t i = 0; i < r; i += (ssize_t)strlen(all + i) + 1) {
		if (xattr_reserved(all + i))
			continue;
		size_t l = strlen(all + i) + 1;
		memmove(all + len, all + i, l);
		len += l;
	}
	if (!size)
		fuse_reply_xattr(req, len);
	else if (size < len)
		reply_err(req, OP_LISTXATTR, ERANGE);
	else
		fuse_reply_buf(req, all, len);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags)
{
	struct node *n = node_of(ino);
	char p[32];
	int r = 0, fd = -1;

	fs_count(OP_SETXATTR);
	lock();
	if (xattr_reserved(name))
		r = -EPERM;
	else if (n->kind == N_ROOT)
		r = -EPERM;
	else if (n->kind != N_SHARED)
		r = node_writable(n);
	if (r == 0 && n->kind == N_SHARED) {
		/* which env? the retried lookup says (union.c), as for chmod */
		intent_add(fuse_req_ctx(req)->pid, n, false);
		r = -ESTALE;
	}
	if (r == 0 && n->kind == N_DIR)
		r = copy_up_dir(n);
	if (r == 0 && n->kind == N_FILE)
		r = copy_up_node(n); /* an N_UPPER node now */
	if (r == 0 && (r = xattr_where(n, p, &fd)) == -ENODATA)
		r = -EPERM; /* a symlink: as Linux answers for user.* */
	if (r == 0 && (fd >= 0 ? fsetxattr(fd, name, value, size, flags) : setxattr(p, name, value, size, flags)) < 0)
		r = -errno;
	if (r == 0)
		fsenv_touch(n->env);
	unlock();
	if (r < 0)
		reply_err(req, OP_SETXATTR, -r);
	else
		fuse_reply_err(req, 0);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct node *n = node_of(ino);
	char p[32];
	int r = 0, fd = -1;

	fs_count(OP_REMOVEXATTR);
	lock();
	if (xattr_reserved(name))
		r = -ENODATA;
	else if (n->kind == N_DIR || n->kind == N_UPPER)
		r = node_writable(n);
	if (r == 0)
		r = xattr_where(n, p, &fd); /* store entries have none to remove */
	if (r == 0 && (fd >= 0 ? fremovexattr(fd, name) : removexattr(p, name)) < 0)
		r = -errno;
	if (r == 0)
		fsenv_touch(n->env);
	unlock();
	if (r < 0)
		reply_err(req, OP_REMOVEXATTR, -r);
	else
		fuse_reply_err(req, 0);
}

/* fallocate(2) on an open file of a writable layer (store files are never
 * open for writing: opening one for writing copies it up). */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			 struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);

	fs_count(OP_FALLOCATE);
	if (n->kind != N_UPPER || !fi) {
		reply_err(req, OP_FALLOCATE, EBADF);
		return;
	}
	__atomic_store_n(&fsd.last_request_ns, now_ns(), __ATOMIC_RELAXED);
	if (fallocate(fh_fd(fi), mode, offset, length) < 0) {
		reply_err(req, OP_FALLOCATE, errno);
		return;
	}
	lock();
	fsenv_touch(n->env);
	unlock();
	fuse_reply_err(req, 0);
}

/*
 * The kernel forwards every ioctl on our files and remembers no refusal:
 * Python's isatty() in each open() is one (TCGETS). None applies to a venv's
 * files; ENOTTY is what a regular file on disk answers (libfuse's default
 * would be ENOSYS, which no caller expects).
 */
static void op_ioctl(fuse_req_t req, fuse_ino_t ino, int cmd, void *arg, struct fuse_file_info *fi, unsigned flags,
		     const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	(void)ino, (void)cmd, (void)arg, (void)fi, (void)flags, (void)in_buf, (void)in_bufsz, (void)out_bufsz;
	fs_count(OP_IOCTL);
	reply_err(req, OP_IOCTL, ENOTTY);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.statfs = op_statfs,
	.create = op_create,
	.ioctl = op_ioctl,
	.access = op_access,
	.getxattr = op_getxattr,
	.setxattr = op_setxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.fallocate = op_fallocate,
	/* no flush: ENOSYS once, then never asked again */
};
