/*
 * union.c - the union of an env's layers as the daemon changes it: copy-up
 * (how a file of the read-only layers becomes the env's own before it
 * changes), and making, removing and renaming names over the layers
 * (store/layer.h has the union rule: whiteouts, opaque directories).
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
	fsenv_touch(dir->env);
	return r;
}

static char *work_name(void)
{
	return xasprintf("cu.%016llx", (unsigned long long)random_u64());
}

/* Put the work file tmp at dir/name if it was finished (r == 0), else
 * drop it: r, or why it could not be put there. */
static int place(struct node *dir, const char *tmp, const char *name, int r)
{
	struct fsenv *e = dir->env;

	if (r < 0) {
		unlinkat(e->workfd, tmp, 0);
		return r;
	}
	if (renameat(e->workfd, tmp, dir->up.fd, name) < 0) {
		int err = errno;
		unlinkat(e->workfd, tmp, 0);
		return -err;
	}
	node_list_drop(dir);
	fsenv_touch(e);
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
	r = place(dir, tmp, name, r);
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
	if (S_ISREG(n->mode) && (r = node_render(n)) < 0)
		return r;
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
	r = place(dir, tmp, name, r);
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

/* ---- making, removing and renaming names -------------------------------------------- */

/*
 * Prepare dir for a new entry name: a writable part, and nothing of that
 * name showing. *whiteout says a whiteout holds the name (the new entry
 * replaces it; a new directory then hides what is below: opaque).
 */
int union_prepare_new(struct node *dir, const char *name, bool *whiteout)
{
	struct merged m;
	int r;

	if (dir->kind == N_ROOT)
		return -EPERM; /* envs are made with venvfs create/clone/import */
	if (dir->kind != N_DIR)
		return -ENOTDIR;
	if (strlen(name) > 255)
		return -ENAMETOOLONG;
	if ((r = node_writable(dir)) < 0)
		return r;
	if ((r = copy_up_dir(dir)) < 0)
		return r;
	if ((r = layer_merge_lookup(dir->env->view, &dir->up, &dir->dir, name, &m)) < 0)
		return r;
	if (m.upper != L_NONE && m.upper != L_WHITEOUT)
		return -EEXIST;
	if (m.upper == L_NONE && m.lower)
		return -EEXIST;
	*whiteout = m.upper == L_WHITEOUT;
	return 0;
}

/* Give a newly made entry to its creator (as root, with allow_other). */
/*
 * A new entry at dirfd/name, made for the caller in directory dir: the
 * caller's (a root daemon makes it as root), and, as ext4 does, in dir's
 * group if dir is setgid, a new directory setgid too. (Entries made in
 * work/ and renamed over a whiteout get none of that from the kernel.)
 */
void union_own(struct node *dir, int dirfd, const char *name, const struct fuse_ctx *ctx)
{
	struct stat d, st;
	bool setgid = dir->up.fd >= 0 && fstat(dir->up.fd, &d) == 0 && (d.st_mode & S_ISGID);
	gid_t gid = setgid ? d.st_gid : ctx->gid;

	if (fsd.uid == 0 && (ctx->uid != 0 || gid != 0))
		fchownat(dirfd, name, ctx->uid, gid, AT_SYMLINK_NOFOLLOW);
	if (setgid && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode) &&
	    !(st.st_mode & S_ISGID))
		fchmodat(dirfd, name, (st.st_mode & 07777) | S_ISGID, 0);
}

/*
 * Where a new entry is made: at dir/name itself when the name is free (an
 * O_EXCL open, mknod, mkdir, symlink and link fail rather than replace),
 * as overlayfs does; over a whiteout, as work/TMP, set up there and then
 * renamed over the whiteout by union_place_new(), so that what the whiteout
 * hides never shows through. Returns the name to make, in *dirfd.
 */
const char *union_new_at(struct node *dir, const char *name, bool whiteout, char tmp[32], int *dirfd)
{
	if (!whiteout) {
		*dirfd = dir->up.fd;
		return name;
	}
	snprintf(tmp, 32, "new.%016llx", (unsigned long long)random_u64());
	*dirfd = dir->env->workfd;
	return tmp;
}

/* Put work/tmp at dir/name, over the whiteout there (atomically). */
int union_place_new(struct node *dir, const char *tmp, const char *name, bool is_dir)
{
	struct fsenv *e = dir->env;

	if (!is_dir) {
		if (renameat(e->workfd, tmp, dir->up.fd, name) < 0)
			return -errno;
		return 0;
	}
	/* a directory cannot be renamed over a file: swap, then drop it */
	if (renameat2(e->workfd, tmp, dir->up.fd, name, RENAME_EXCHANGE) < 0)
		return -errno;
	unlinkat(e->workfd, tmp, 0);
	return 0;
}

/* Does the read-only side of dir have name (showing through)? */
bool union_lower_has(struct node *dir, const char *name)
{
	struct view_src s;

	return !dir->up.opaque && dir->dir.n && view_lookup(dir->env->view, &dir->dir, name, strlen(name), &s);
}

/*
 * A new entry made, but its answer failed (out of descriptors for its
 * node): take it back, so a failed create leaves nothing behind, and what
 * it had replaced (a whiteout) is whiteout again.
 */
void union_undo_new(struct node *dir, const char *name)
{
	struct stat st;
	bool is_dir = fstatat(dir->up.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);

	if (unlinkat(dir->up.fd, name, is_dir ? AT_REMOVEDIR : 0) == 0 && union_lower_has(dir, name))
		layer_whiteout(dir->up.fd, name, dir->env->workfd);
	node_list_drop(dir);
}

/* Forget what names dir/name stood for (the name now means something else). */
void union_unhash_name(struct node *dir, const char *name)
{
	struct node *n;

	if (node_child(dir, name, strlen(name), &n) == 0 && (n->kind == N_DIR || n->kind == N_FILE))
		node_unhash(n);
}

/* Remove the (merged-empty) directory child from the writable layer. */
int union_remove_dir(struct node *dir, const char *name, struct node *child)
{
	struct fsenv *e = dir->env;
	int r = 0;

	node_unhash(child);
	if (child->up.fd >= 0) {
		/* move it aside first (it holds whiteouts at most), then delete */
		_cleanup_free_ char *tmp = xasprintf("rm.%016llx", (unsigned long long)random_u64());
		if (renameat(dir->up.fd, name, e->workfd, tmp) < 0)
			return -errno;
		rm_rf_at(e->workfd, tmp);
	}
	if (union_lower_has(dir, name))
		r = layer_whiteout(dir->up.fd, name, e->workfd);
	node_list_drop(dir);
	fsenv_touch(e);
	return r;
}

int union_dir_is_empty(struct node *child)
{
	int r = node_list(child);

	if (r < 0)
		return r;
	return child->nlist == 0 ? 0 : -ENOTEMPTY;
}

/* What every rename starts with: both directories of one env, writable,
 * each with its writable part, and what each name shows there. */
static int rename_prepare(struct node *od, const char *on, struct node *nd, const char *nn, struct merged *src,
			  struct merged *dst)
{
	int r;

	if (od->kind != N_DIR || nd->kind != N_DIR)
		return -EPERM; /* envs are renamed by no one: the mount root is the store's */
	if (od->env != nd->env)
		return -EXDEV;
	if ((r = node_writable(od)) < 0 || (r = node_writable(nd)) < 0 || (r = copy_up_dir(od)) < 0 ||
	    (r = copy_up_dir(nd)) < 0)
		return r;
	struct view *v = od->env->view;
	if ((r = layer_merge_lookup(v, &od->up, &od->dir, on, src)) < 0)
		return r;
	return layer_merge_lookup(v, &nd->up, &nd->dir, nn, dst);
}

int union_rename(struct node *od, const char *on, struct node *nd, const char *nn, unsigned int flags)
{
	struct merged src, dst;
	struct node *sn = NULL, *dn = NULL;
	int r;

	if (flags == RENAME_EXCHANGE)
		return union_exchange(od, on, nd, nn);
	if (flags & ~RENAME_NOREPLACE)
		return -EINVAL;
	if ((r = rename_prepare(od, on, nd, nn, &src, &dst)) < 0)
		return r;
	bool dst_there = layer_merged_shows(&dst);
	if (!layer_merged_shows(&src))
		return -ENOENT;
	if ((r = node_child(od, on, strlen(on), &sn)) < 0)
		return r;
	if (dst_there && (flags & RENAME_NOREPLACE))
		return -EEXIST;
	if (od == nd && !strcmp(on, nn))
		return 0;
	bool src_dir = sn->kind == N_DIR;
	if (dst_there) {
		if ((r = node_child(nd, nn, strlen(nn), &dn)) < 0)
			return r;
		if (dn == sn)
			return 0; /* two names of one file: nothing to do */
		if (src_dir && dn->kind != N_DIR)
			return -ENOTDIR;
		if (!src_dir && dn->kind == N_DIR)
			return -EISDIR;
		if (src_dir && (r = union_dir_is_empty(dn)) < 0)
			return r;
	}
	/* a directory cannot move below itself */
	for (struct node *p = nd; src_dir && p; p = p->parent)
		if (p == sn)
			return -EINVAL;

	bool src_lower = union_lower_has(od, on);
	if (!src_dir) {
		if (sn->kind == N_FILE && (r = copy_up_node(sn)) < 0)
			return r;
		if (dst_there && dn->kind != N_DIR)
			union_unhash_name(nd, nn);
		if (sn->kind == N_UPPER || src.upper == L_META) {
			if (renameat(od->up.fd, on, nd->up.fd, nn) < 0)
				return -errno;
		} else if (sn->kind == N_SHARED) {
			r = layer_metacopy(nd->up.fd, nn, nd->env->workfd, &sn->obj, sn->size, sn->mode, &sn->mtime);
			if (r < 0)
				return r;
		} else {
			return -EIO;
		}
		if (src_lower && (r = layer_whiteout(od->up.fd, on, od->env->workfd)) < 0)
			return r;
	} else {
		/* where the read-only part of the moving directory lives */
		_cleanup_free_ char *lowerpath = sn->dir.n && !sn->up.opaque ? dir_lower_path(sn) : NULL;
		if (dst_there && (r = union_remove_dir(nd, nn, dn)) < 0)
			return r;
		bool dst_lower = union_lower_has(nd, nn);
		struct layer_ent at_dst;
		if ((r = layer_lookup(&nd->up, nn, &at_dst)) < 0)
			return r;
		bool over_whiteout = at_dst.kind == L_WHITEOUT, src_hidden = false;
		if (sn->up.fd >= 0 && over_whiteout) {
			/* a directory cannot replace a file: swap it with the
			 * whiteout, which then hides the old name, or goes */
			if (renameat2(od->up.fd, on, nd->up.fd, nn, RENAME_EXCHANGE) < 0)
				return -errno;
			if (!src_lower)
				unlinkat(od->up.fd, on, 0);
			src_hidden = true;
		} else if (sn->up.fd >= 0) {
			if (renameat(od->up.fd, on, nd->up.fd, nn) < 0)
				return -errno;
		} else {
			char tmp[32];
			int at;
			const char *nm = union_new_at(nd, nn, over_whiteout, tmp, &at);
			if (mkdirat(at, nm, sn->mode & 07777) < 0 || fchmodat(at, nm, sn->mode & 07777, 0) < 0)
				return -errno;
			if (over_whiteout && (r = union_place_new(nd, tmp, nn, true)) < 0) {
				unlinkat(at, tmp, AT_REMOVEDIR);
				return r;
			}
		}
		if (src_lower && !src_hidden && (r = layer_whiteout(od->up.fd, on, od->env->workfd)) < 0)
			return r;
		struct layer_dir moved;
		if ((r = layer_dir_open(nd->up.fd, nn, &moved)) < 0 || moved.fd < 0)
			return r < 0 ? r : -EIO;
		if (lowerpath && !moved.opaque) {
			if ((r = layer_set_dir(moved.fd, false, lowerpath)) == 0) {
				free(moved.redirect);
				moved.redirect = steal_pointer(&lowerpath);
			}
		} else if (!lowerpath && dst_lower) {
			if ((r = layer_set_dir(moved.fd, true, NULL)) == 0) {
				free(moved.redirect);
				moved.redirect = NULL;
				moved.opaque = true;
			}
		}
		if (r < 0) {
			layer_dir_close(&moved);
			return r;
		}
		/* the node moves with its new key and the descriptor just
		 * opened (no second open that could fail with EMFILE); its
		 * read-only part stays */
		layer_dir_close(&sn->up);
		sn->up = moved;
		node_rehash_named(sn, nd, nn);
	}
	node_list_drop(od);
	node_list_drop(nd);
	fsenv_touch(od->env);
	return 0;
}

/* Make the entry at dir/name (node n) one of the writable layer, ready to be
 * renamed there: a file copied up, a store file as a metacopy. */
static int exchange_side(struct node *dir, const char *name, struct node *n, const struct merged *m)
{
	if (n->kind == N_DIR)
		/* only a directory of the writable layer alone moves as it is */
		return n->dir.n || n->up.redirect || m->lower ? -EXDEV : 0;
	if (n->kind == N_FILE)
		return copy_up_node(n);
	if (n->kind == N_SHARED && m->upper == L_NONE)
		return layer_metacopy(dir->up.fd, name, dir->env->workfd, &n->obj, n->size, n->mode, &n->mtime);
	return 0;
}

/* A directory n just put at dir/name: opaque if the read-only layers have
 * something there, which would otherwise show through it. */
static int exchange_landed(struct node *dir, const char *name, struct node *n)
{
	if (n->kind != N_DIR || !union_lower_has(dir, name) || n->up.opaque)
		return 0;
	int r = layer_set_dir(n->up.fd, true, NULL);
	if (r == 0)
		n->up.opaque = true;
	return r;
}

int union_exchange(struct node *od, const char *on, struct node *nd, const char *nn)
{
	struct merged src, dst;
	struct node *sn, *dn;
	int r;

	if ((r = rename_prepare(od, on, nd, nn, &src, &dst)) < 0)
		return r;
	if (!layer_merged_shows(&src) || !layer_merged_shows(&dst))
		return -ENOENT;
	if ((r = node_child(od, on, strlen(on), &sn)) < 0 || (r = node_child(nd, nn, strlen(nn), &dn)) < 0)
		return r;
	if (sn == dn)
		return 0;
	/* neither may end up below itself */
	for (struct node *p = nd; p; p = p->parent)
		if (p == sn)
			return -EINVAL;
	for (struct node *p = od; p; p = p->parent)
		if (p == dn)
			return -EINVAL;
	if ((r = exchange_side(od, on, sn, &src)) < 0 || (r = exchange_side(nd, nn, dn, &dst)) < 0)
		return r;
	if (renameat2(od->up.fd, on, nd->up.fd, nn, RENAME_EXCHANGE) < 0)
		return -errno;
	if (sn->kind == N_DIR)
		node_rehash_named(sn, nd, nn);
	if (dn->kind == N_DIR)
		node_rehash_named(dn, od, on);
	if ((r = exchange_landed(nd, nn, sn)) < 0 || (r = exchange_landed(od, on, dn)) < 0)
		return r;
	node_list_drop(od);
	node_list_drop(nd);
	fsenv_touch(od->env);
	return 0;
}
