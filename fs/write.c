/*
 * write.c - copy-up: how a file of the read-only layers becomes the env's
 * own before it changes.
 *
 * Directories are copied up (made in the writable layer, parents first)
 * when something is created, removed or renamed in them. Per-env files of
 * the read-only layers (rendered templates, symlinks) are copied up in
 * place: their node becomes an N_UPPER node and keeps its inode number in
 * the kernel, because it was never shared.
 *
 * Store files are shared: one inode for every env that has them (inode.c),
 * and a request to open one for writing does not say through which env it
 * came. So the daemon answers it with ESTALE and remembers (pid, node).
 * The kernel, on ESTALE, walks the path again with LOOKUP_REVAL, which
 * sends a fresh LOOKUP(directory, name) for it: the directory names the
 * env. That lookup, from the same pid, finds the remembered intent, copies
 * the file into that env's writable layer and answers with the new node;
 * the kernel then opens that instead. Other envs keep the shared inode and
 * its page cache, which is never written. Path-based truncate, chmod,
 * chown and utimes retry the same way (the kernel's retry_estale()); a
 * change through an fd opened read-only before, on a shared file, fails
 * with ESTALE, which nothing in pip or uv does.
 *
 * Every copy is made in HOME/envs/NAME/work/ and renamed into place, so
 * the writable layer never holds half a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "fs_i.h"
#include "tree.h"

/* ---- write intents ----------------------------------------------------------- */

#define INTENTS       64
#define INTENT_TTL_NS (5ull * 1000000000ull)

static struct {
	pid_t pid;
	struct node *n;
	bool trunc;
	uint64_t at;
} intents[INTENTS];

void intent_add(pid_t pid, struct node *n, bool trunc)
{
	uint64_t now = now_ns();
	int slot = 0;

	for (int i = 0; i < INTENTS; i++) {
		if ((intents[i].pid == pid && intents[i].n == n) || now - intents[i].at > INTENT_TTL_NS) {
			slot = i;
			break;
		}
		if (intents[i].at < intents[slot].at)
			slot = i;
	}
	intents[slot] = (typeof(intents[0])){pid, n, trunc, now};
	fsd.st.estale_retries++;
}

bool intent_take(pid_t pid, struct node *n, bool *trunc)
{
	uint64_t now = now_ns();

	for (int i = 0; i < INTENTS; i++) {
		if (intents[i].pid == pid && intents[i].n == n && now - intents[i].at <= INTENT_TTL_NS) {
			*trunc = intents[i].trunc;
			intents[i].pid = 0;
			intents[i].n = NULL;
			return true;
		}
	}
	return false;
}

/* ---- copy-up ------------------------------------------------------------------- */

int copy_up_dir(struct node *dir)
{
	if (dir->kind != N_DIR)
		return -ENOTDIR;
	if (dir->up.fd >= 0)
		return 0;
	struct node *p = dir->parent;
	if (!p)
		return -EIO;
	int r = copy_up_dir(p);
	if (r < 0)
		return r;
	_cleanup_free_ char *name = xstrndup(dir->name, dir->name_len);
	/* exactly the store directory's mode: mkdir drops setgid, adds the
	 * parent's, and the daemon's umask is 0 but a caller's is not */
	if ((mkdirat(p->up.fd, name, dir->mode & 07777) < 0 && errno != EEXIST) ||
	    fchmodat(p->up.fd, name, dir->mode & 07777, 0) < 0)
		return -errno;
	struct timespec ts[2] = {dir->mtime, dir->mtime};
	utimensat(p->up.fd, name, ts, AT_SYMLINK_NOFOLLOW);
	r = layer_dir_open(p->up.fd, name, &dir->up);
	if (r == 0 && dir->up.fd < 0)
		r = -EIO;
	node_list_drop(p);
	env_touch(dir->env);
	return r;
}

static char *work_name(void)
{
	return xasprintf("cu.%016llx", (unsigned long long)random_u64());
}

/* Put the finished work file tmp at dir/name and make its node. */
static int place(struct node *dir, const char *tmp, const char *name)
{
	struct fsenv *e = dir->env;

	if (renameat(e->workfd, tmp, dir->up.fd, name) < 0) {
		int err = errno;
		unlinkat(e->workfd, tmp, 0);
		return -err;
	}
	node_list_drop(dir);
	env_touch(e);
	fsd.st.copy_ups++;
	return 0;
}

int copy_up_shared(struct node *dir, const char *name, struct node *shared, bool empty, struct node **out)
{
	struct fsenv *e = dir->env;
	_cleanup_free_ char *tmp = work_name();
	int r = copy_up_dir(dir);

	if (r < 0)
		return r;
	int fd = openat(e->workfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (!empty) {
		_cleanup_close_ int src = store_object_open(fsd.s, &shared->obj);
		r = src < 0 ? -EIO : copy_file(src, fd, shared->size);
		/* the copy is the env's file from now on: what was copied is
		 * checked, not the object (damaged, or changed by its owner
		 * in a group store, since it was served) */
		if (r == 0 && store_object_check_fd(fsd.s, &shared->obj, fd) < 0) {
			fs_log("copy-up of %s/%s: %s", e->name, name, vf_last_error());
			r = -EIO;
		} else if (r < 0) {
			char path[OBJID_STR_MAX];
			objid_path(&shared->obj, path);
			fs_log("copy-up of %s/%s from objects/%s failed: %s", e->name, name, path, strerror(-r));
		}
	}
	struct timespec ts[2] = {shared->mtime, shared->mtime};
	if (r == 0 && (fchmod(fd, shared->mode & 07777) < 0 || (!empty && futimens(fd, ts) < 0)))
		r = -errno;
	close(fd);
	if (r == 0)
		r = place(dir, tmp, name);
	else
		unlinkat(e->workfd, tmp, 0);
	if (r < 0)
		return r;
	*out = upper_node(e, dir, name);
	return *out ? 0 : upper_open_errno();
}

int copy_up_node(struct node *n)
{
	struct fsenv *e = n->env;
	struct node *dir = n->parent;
	_cleanup_free_ char *tmp = work_name();
	_cleanup_free_ char *name = xstrndup(n->name, n->name_len);
	int r;

	if (n->kind != N_FILE || !dir)
		return n->kind == N_UPPER ? 0 : -EINVAL;
	if ((r = copy_up_dir(dir)) < 0)
		return r;
	struct timespec ts[2] = {n->mtime, n->mtime};
	uint32_t perm = n->mode & 07777;
	if (S_ISREG(n->mode)) {
		int fd = openat(e->workfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		r = write_full(fd, n->rendered.data ? n->rendered.data : "", n->rendered.len);
		if (r == 0 && (fchmod(fd, perm) < 0 || futimens(fd, ts) < 0))
			r = -errno;
		close(fd);
	} else if (S_ISLNK(n->mode)) {
		struct tree *t = e->view->layers[n->src.layer].tree;
		const struct tree_node *tn = tree_node(t, n->src.node);
		_cleanup_free_ char *target = xstrndup(tree_link_target(t, tn), tn->u.link.len);
		r = symlinkat(target, e->workfd, tmp) < 0 ? -errno : 0;
	} else {
		const struct tree_node *tn = view_node(e->view, n->src);
		dev_t dev = S_ISCHR(n->mode) || S_ISBLK(n->mode) ? makedev(tn->u.dev.major, tn->u.dev.minor) : 0;
		r = mknodat(e->workfd, tmp, n->mode, dev) < 0 ? -errno : 0;
	}
	if (r == 0 && utimensat(e->workfd, tmp, ts, AT_SYMLINK_NOFOLLOW) < 0)
		r = -errno;
	if (r == 0)
		r = place(dir, tmp, name);
	else
		unlinkat(e->workfd, tmp, 0);
	if (r < 0)
		return r;

	/* the same node, now in the writable layer */
	int fd = openat(dir->up.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return upper_open_errno();
	if (fstat(fd, &st) < 0) {
		close(fd);
		return -EIO;
	}
	node_unhash(n);
	n->kind = N_UPPER;
	n->no_passthrough = true; /* its kernel inode may still be open, cached */
	n->fd = fd;
	n->dev = st.st_dev;
	n->upper_ino = st.st_ino;
	buf_free(&n->rendered);
	node_rehash_upper(n);
	return 0;
}

char *dir_lower_path(const struct node *dir)
{
	if (dir->up.redirect)
		return xstrdup(dir->up.redirect);
	if (!dir->parent)
		return xstrdup("");
	_cleanup_free_ char *p = dir_lower_path(dir->parent);
	return p[0] ? xasprintf("%s/%.*s", p, dir->name_len, dir->name) : xstrndup(dir->name, dir->name_len);
}
