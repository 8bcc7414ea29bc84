/*
 * ops.c - the FUSE low-level handlers: thin glue from requests to nodes
 * (inode.c) and views (store/view.h).
 *
 * Every handler replies exactly once, through reply_err() or one of the
 * fuse_reply_* calls at its end; every failure goes through reply_err(),
 * which counts it by operation and errno (`venvfs stats` shows them).
 *
 * Caching (the kernel does most of the work, the daemon stays out of the
 * way): env content is immutable until we change it ourselves, so entries,
 * attributes and negative lookups are cached "forever" (TIMEOUT_FOREVER,
 * retracted with notifications when something does change); opendir is
 * answered ENOSYS once, after which the kernel opens directories without
 * asking and caches their listings; open keeps the page cache and asks for
 * no flush on close; readdirplus primes the entry cache while listing.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs_i.h"
#include "tree.h"

#define count(op) __atomic_add_fetch(&fsd.st.calls[op], 1, __ATOMIC_RELAXED)

static void reply_err(fuse_req_t req, enum fs_op op, int err)
{
	__atomic_add_fetch(&fsd.st.errors[op], 1, __ATOMIC_RELAXED);
	if (err > 0 && err < STAT_ERRNO_MAX)
		__atomic_add_fetch(&fsd.st.by_errno[err], 1, __ATOMIC_RELAXED);
	fuse_reply_err(req, err);
}

static double entry_timeout(const struct node *parent)
{
	return parent->kind == N_ROOT ? TIMEOUT_ROOT : TIMEOUT_FOREVER;
}

static void fill_entry(struct fuse_entry_param *e, struct node *n, double timeout)
{
	memset(e, 0, sizeof(*e));
	e->ino = (fuse_ino_t)(uintptr_t)n;
	e->attr_timeout = timeout;
	e->entry_timeout = timeout;
	node_stat(n, &e->attr);
}

/* ---- lookup and attributes ---------------------------------------------------- */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	struct node *dir = node_of(parent), *n;
	int r;

	count(OP_LOOKUP);
	pthread_mutex_lock(&fsd.lock);
	r = node_child(dir, name, strlen(name), &n);
	if (r == 0) {
		node_ref_lookup(n, 1);
		fill_entry(&e, n, entry_timeout(dir));
	}
	pthread_mutex_unlock(&fsd.lock);
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
	count(OP_FORGET);
	pthread_mutex_lock(&fsd.lock);
	node_forget(node_of(ino), nlookup);
	pthread_mutex_unlock(&fsd.lock);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count_, struct fuse_forget_data *forgets)
{
	count(OP_FORGET);
	pthread_mutex_lock(&fsd.lock);
	for (size_t i = 0; i < count_; i++)
		node_forget(node_of(forgets[i].ino), forgets[i].nlookup);
	pthread_mutex_unlock(&fsd.lock);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);
	struct stat st;

	(void)fi;
	count(OP_GETATTR);
	pthread_mutex_lock(&fsd.lock);
	if (n->kind == N_ROOT)
		root_list();
	node_stat(n, &st);
	pthread_mutex_unlock(&fsd.lock);
	fuse_reply_attr(req, &st, n->kind == N_ROOT ? TIMEOUT_ROOT : TIMEOUT_FOREVER);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct node *n = node_of(ino);

	count(OP_READLINK);
	if (n->kind != N_FILE || !S_ISLNK(n->mode)) {
		reply_err(req, OP_READLINK, EINVAL);
		return;
	}
	struct tree *t = n->env->view->layers[n->src.layer].tree;
	const struct tree_node *tn = tree_node(t, n->src.node);
	_cleanup_free_ char *target = xstrndup(tree_link_target(t, tn), tn->u.link.len);
	fuse_reply_readlink(req, target);
}

/* ---- files ------------------------------------------------------------------------- */

static bool wants_write(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);

	count(OP_OPEN);
	if (n->kind == N_DIR || n->kind == N_ROOT) {
		reply_err(req, OP_OPEN, EISDIR);
		return;
	}
	if (wants_write(fi->flags)) {
		fs_log("refused a write-open of %s: envs are read-only in this version",
		       n->seen_as ? n->seen_as : n->name);
		reply_err(req, OP_OPEN, EROFS);
		return;
	}
	if (n->state < 0) {
		reply_err(req, OP_OPEN, -n->state);
		return;
	}
	fi->keep_cache = 1; /* the content never changes under an open inode */
	fi->noflush = 1;    /* nothing to flush on close */
	fuse_reply_open(req, fi);
}

/* A read of a store file that may wait for the disk, on a worker. */
struct read_job {
	fuse_req_t req;
	struct node *n;
	size_t size;
	off_t off;
};

static void read_job_run(void *arg)
{
	struct read_job *j = arg;
	int r = shared_open_object(j->n);

	if (r < 0) {
		reply_err(j->req, OP_READ, -r);
	} else {
		struct fuse_bufvec buf = FUSE_BUFVEC_INIT(j->size);
		buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		buf.buf[0].fd = j->n->fd;
		buf.buf[0].pos = j->off;
		fuse_reply_data(j->req, &buf, FUSE_BUF_SPLICE_MOVE);
	}
	pthread_mutex_lock(&fsd.lock);
	node_unref(j->n);
	pthread_mutex_unlock(&fsd.lock);
	free(j);
}

/*
 * Read what the page cache has without blocking (RWF_NOWAIT); 1 if the
 * request was answered, 0 if it has to wait for the disk.
 */
static int read_cached(fuse_req_t req, struct node *n, size_t size, off_t off)
{
	if (n->fd < 0 || n->state <= 0)
		return 0;
	if ((uint64_t)off >= n->size) {
		fuse_reply_buf(req, NULL, 0);
		return 1;
	}
	size_t want = MIN(size, n->size - (uint64_t)off);
	char *b = xmalloc(want);
	struct iovec iov = {b, want};
	ssize_t got = preadv2(n->fd, &iov, 1, off, RWF_NOWAIT);
	if (got == (ssize_t)want) {
		fuse_reply_buf(req, b, want);
		free(b);
		return 1;
	}
	free(b);
	return 0;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct node *n = node_of(ino);

	(void)fi;
	count(OP_READ);
	if (n->kind == N_SHARED) {
		if (read_cached(req, n, size, off))
			return;
		struct read_job *j = xmalloc(sizeof(*j));
		*j = (struct read_job){req, n, size, off};
		pthread_mutex_lock(&fsd.lock);
		n->refs++;
		pthread_mutex_unlock(&fsd.lock);
		fs_defer(read_job_run, j);
		return;
	}
	if (n->kind == N_FILE && S_ISREG(n->mode)) {
		if (n->state < 0) {
			reply_err(req, OP_READ, EIO);
			return;
		}
		size_t len = n->rendered.len;
		if ((uint64_t)off >= len) {
			fuse_reply_buf(req, NULL, 0);
			return;
		}
		fuse_reply_buf(req, n->rendered.data + off, MIN(size, len - (size_t)off));
		return;
	}
	reply_err(req, OP_READ, EINVAL);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	count(OP_RELEASE);
	fuse_reply_err(req, 0);
}

/* ---- directories ----------------------------------------------------------------- */

/* One listing entry of dir at position i (after "." and ".."). */
static int dir_entry(struct node *dir, size_t i, const char **name, size_t *len)
{
	if (dir->kind == N_ROOT) {
		if (i >= fsd.n_env_names)
			return 0;
		*name = fsd.env_names[i];
		*len = strlen(*name);
		return 1;
	}
	if (i >= dir->nlist)
		return 0;
	*name = dir->list[i].name;
	*len = dir->list[i].name_len;
	return 1;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	enum fs_op op = plus ? OP_READDIRPLUS : OP_READDIR;
	struct node *dir = node_of(ino);
	char *buf = xmalloc(size), *p = buf;
	size_t rem = size;
	int r;

	count(op);
	pthread_mutex_lock(&fsd.lock);
	r = dir->kind == N_ROOT ? root_list() : dir->kind == N_DIR ? node_list(dir) : -ENOTDIR;
	if (r < 0) {
		pthread_mutex_unlock(&fsd.lock);
		free(buf);
		reply_err(req, op, -r);
		return;
	}
	for (off_t i = off;; i++) {
		struct fuse_entry_param e;
		struct stat st;
		const char *name;
		size_t len;
		size_t need;

		memset(&e, 0, sizeof(e));
		memset(&st, 0, sizeof(st));
		if (i < 2) {
			name = i == 0 ? "." : "..";
			len = (size_t)i + 1;
			st.st_mode = S_IFDIR;
			st.st_ino = i == 0 ? dir->ino : 1;
		} else if (!dir_entry(dir, (size_t)i - 2, &name, &len)) {
			break;
		}
		_cleanup_free_ char *z = xstrndup(name, len);
		struct node *n = NULL;
		if (i >= 2 && dir->kind == N_ROOT) {
			/* listing the envs loads none of them (1,000 envs stay cheap):
			 * names and types only, no readdirplus attributes */
			st.st_mode = S_IFDIR;
			st.st_ino = env_root_ino(name, len);
		} else if (i >= 2) {
			if (node_child(dir, name, len, &n) < 0)
				continue;
			node_stat(n, &st);
		}
		if (plus) {
			if (n)
				fill_entry(&e, n, entry_timeout(dir));
			else
				e.attr = st; /* ino 0: a name without attributes */
			need = fuse_add_direntry_plus(req, p, rem, z, &e, i + 1);
		} else {
			need = fuse_add_direntry(req, p, rem, z, &st, i + 1);
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
	pthread_mutex_unlock(&fsd.lock);
	fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

/*
 * ENOSYS once: from then on the kernel opens directories without asking,
 * never sends releasedir, and caches their listings (FOPEN_CACHE_DIR is the
 * default without opendir); cached listings are dropped when a directory's
 * mtime changes or we invalidate it.
 */
static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino, (void)fi;
	fuse_reply_err(req, ENOSYS);
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
	count(OP_STATFS);
	if (fstatvfs(fsd.s->fd, &sv) < 0) {
		reply_err(req, OP_STATFS, errno);
		return;
	}
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

/* ---- writes (read-only for now) --------------------------------------------------- */

static void refuse(fuse_req_t req, enum fs_op op, const char *what)
{
	count(op);
	fs_log("refused %s: envs are read-only in this version", what);
	reply_err(req, op, EROFS);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	(void)ino, (void)attr, (void)to_set, (void)fi;
	refuse(req, OP_SETATTR, "setattr");
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	(void)parent, (void)name, (void)mode, (void)rdev;
	refuse(req, OP_MKNOD, "mknod");
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)parent, (void)name, (void)mode;
	refuse(req, OP_MKDIR, "mkdir");
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent, (void)name;
	refuse(req, OP_UNLINK, "unlink");
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent, (void)name;
	refuse(req, OP_RMDIR, "rmdir");
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	(void)link, (void)parent, (void)name;
	refuse(req, OP_SYMLINK, "symlink");
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	(void)parent, (void)name, (void)newparent, (void)newname, (void)flags;
	refuse(req, OP_RENAME, "rename");
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	(void)ino, (void)newparent, (void)newname;
	refuse(req, OP_LINK, "link");
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	(void)parent, (void)name, (void)mode, (void)fi;
	refuse(req, OP_CREATE, "create");
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino, (void)buf, (void)size, (void)off, (void)fi;
	refuse(req, OP_WRITE, "write");
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
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
	conn->time_gran = 1;
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
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.statfs = op_statfs,
	.create = op_create,
	/* no flush, getxattr, listxattr: ENOSYS once, then never asked again */
};
