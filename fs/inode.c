/*
 * inode.c - the daemon's nodes: what each FUSE inode is, how it is
 * numbered, and how it lives and dies.
 *
 * The inode model
 * ---------------
 * The mount shows one directory per env; inside, each env is the union of
 * its read-only layers (store/view.h) and, later, its writable layer. A
 * node is one inode the kernel knows, and its fuse_ino_t is the node's
 * address (the root is FUSE_ROOT_ID). There are four kinds:
 *
 *   N_ROOT    the mount point; lists the envs of the store.
 *   N_DIR     a directory of one env, keyed by (env, parent node, name).
 *             Directories are never shared between envs: the kernel allows
 *             a directory inode one parent only.
 *   N_SHARED  a store file: regular, not a template. Keyed by (object,
 *             mode, mtime) and shared by every env that has it. The kernel
 *             then keeps one inode and one page cache for numpy's .so
 *             files however many envs import numpy, as hardlinks would,
 *             but without their flaw: a shared inode is never written.
 *             Writing one env's copy goes through copy-up (layer.c).
 *   N_FILE    any other read-only non-directory of one env: rendered
 *             templates (scripts, activate, pyvenv.cfg, RECORD), symlinks,
 *             FIFOs, sockets. Keyed like N_DIR.
 *   N_UPPER   a non-directory in one env's writable layer, keyed by (env,
 *             device, inode) so hard links are one node; it holds an
 *             O_PATH descriptor of the file.
 *
 * Inode numbers (st_ino) are not node addresses: they are hashes that do
 * not depend on the mount, so a path has the same st_ino across remounts:
 *
 *   env root           XXH3-64(env name)
 *   N_DIR, N_FILE      XXH3-64(name, seed = parent's st_ino)
 *   N_SHARED           XXH3-64(object id, mode, mtime)
 *   N_UPPER            XXH3-64(device, inode, seed = the env's root st_ino)
 *                      (changes on copy-up, as overlayfs without xino)
 *
 * (Collisions of 64-bit hashes are possible in principle; tools only
 * compare st_ino of files they already opened, where a collision between
 * two envs' files does no harm.)
 *
 * Lifetime: the kernel takes a reference with each lookup reply (and each
 * readdirplus entry) and drops them with forget; a node also holds a
 * reference on its parent. A node is freed when both counts reach zero.
 * Everything here runs under fsd.lock.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs_i.h"
#include "tree.h"

/* ---- the node table ---------------------------------------------------------- */

static uint64_t key_named(const struct fsenv *e, const struct node *parent, const char *name, size_t len)
{
	return XXH3_64bits_withSeed(name, len, (uint64_t)(uintptr_t)e * 0x9e3779b97f4a7c15ull ^ (uintptr_t)parent);
}

static uint64_t key_shared(const struct objid *id, uint32_t mode, const struct timespec *mtime)
{
	struct {
		uint8_t h[16];
		uint32_t seq, mode;
		int64_t sec, nsec;
	} k;

	memset(&k, 0, sizeof(k));
	memcpy(k.h, id->hash, 16);
	k.seq = id->seq;
	k.mode = mode;
	k.sec = mtime->tv_sec;
	k.nsec = mtime->tv_nsec;
	return XXH3_64bits(&k, sizeof(k));
}

static void table_grow(void)
{
	size_t ncap = fsd.table_cap ? fsd.table_cap * 2 : 4096;
	struct node **nt = xcalloc(ncap, sizeof(*nt));

	for (size_t i = 0; i < fsd.table_cap; i++) {
		struct node *n = fsd.table[i], *next;
		for (; n; n = next) {
			next = n->hnext;
			n->hnext = nt[n->hash & (ncap - 1)];
			nt[n->hash & (ncap - 1)] = n;
		}
	}
	free(fsd.table);
	fsd.table = nt;
	fsd.table_cap = ncap;
}

static void table_add(struct node *n)
{
	n->hashed = true;
	if (fsd.table_n + 1 > fsd.table_cap)
		table_grow();
	n->hnext = fsd.table[n->hash & (fsd.table_cap - 1)];
	fsd.table[n->hash & (fsd.table_cap - 1)] = n;
	fsd.table_n++;
}

static void table_del(struct node *n)
{
	if (!n->hashed)
		return;
	n->hashed = false;
	struct node **p = &fsd.table[n->hash & (fsd.table_cap - 1)];

	while (*p && *p != n)
		p = &(*p)->hnext;
	if (*p) {
		*p = n->hnext;
		fsd.table_n--;
	}
}

static struct node *find_named(struct fsenv *e, struct node *parent, const char *name, size_t len, uint64_t h)
{
	if (!fsd.table_cap)
		return NULL;
	for (struct node *n = fsd.table[h & (fsd.table_cap - 1)]; n; n = n->hnext)
		if (n->hash == h && (n->kind == N_DIR || n->kind == N_FILE) && n->env == e && n->parent == parent &&
		    n->name_len == len && memcmp(n->name, name, len) == 0)
			return n;
	return NULL;
}

static uint64_t key_upper(const struct fsenv *e, dev_t dev, ino_t ino)
{
	uint64_t k[3] = {(uint64_t)(uintptr_t)e, (uint64_t)dev, (uint64_t)ino};

	return XXH3_64bits(k, sizeof(k));
}

static struct node *find_upper(struct fsenv *e, dev_t dev, ino_t ino, uint64_t h)
{
	if (!fsd.table_cap)
		return NULL;
	for (struct node *n = fsd.table[h & (fsd.table_cap - 1)]; n; n = n->hnext)
		if (n->hash == h && n->kind == N_UPPER && n->env == e && n->dev == dev && n->upper_ino == ino)
			return n;
	return NULL;
}

struct node *upper_lookup(struct fsenv *e, dev_t dev, ino_t ino)
{
	return find_upper(e, dev, ino, key_upper(e, dev, ino));
}

static struct node *find_shared(const struct objid *id, uint32_t mode, const struct timespec *mt, uint64_t h)
{
	if (!fsd.table_cap)
		return NULL;
	for (struct node *n = fsd.table[h & (fsd.table_cap - 1)]; n; n = n->hnext)
		if (n->hash == h && n->kind == N_SHARED && n->mode == mode && objid_equal(&n->obj, id) &&
		    n->mtime.tv_sec == mt->tv_sec && n->mtime.tv_nsec == mt->tv_nsec)
			return n;
	return NULL;
}

/* ---- nodes ----------------------------------------------------------------------- */

void node_init_root(void)
{
	memset(&fsd.root, 0, sizeof(fsd.root));
	fsd.root.kind = N_ROOT;
	fsd.root.ino = FUSE_ROOT_ID;
	fsd.root.mode = S_IFDIR | 0755;
	fsd.root.nlookup = 1;
	fsd.root.fd = -1;
}

uint64_t env_root_ino(const char *name, size_t len)
{
	return XXH3_64bits_withSeed(name, len, 0x656e76) | 2;
}

struct node *node_of(fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? &fsd.root : (struct node *)(uintptr_t)ino;
}

void node_unhash(struct node *n)
{
	table_del(n);
}

/* Re-key a node that became N_UPPER (its dev/upper_ino are set). */
void node_rehash_upper(struct node *n)
{
	table_del(n);
	n->hash = key_upper(n->env, n->dev, n->upper_ino);
	table_add(n);
}

/* Re-key a directory or file node moved to (parent, name). */
void node_rehash_named(struct node *n, struct node *parent, const char *name)
{
	table_del(n);
	if (n->parent != parent) {
		parent->refs++;
		struct node *old = n->parent;
		n->parent = parent;
		node_unref(old);
	}
	free(n->name);
	n->name = xstrdup(name);
	n->name_len = (uint16_t)strlen(name);
	n->hash = key_named(n->env, parent, name, n->name_len);
	table_add(n);
}

static struct node *node_new(enum node_kind kind)
{
	struct node *n = xcalloc(1, sizeof(*n));

	n->kind = kind;
	n->fd = -1;
	n->up.fd = -1;
	n->backing_fd = -1;
	fsd.nodes_alive++;
	fsd.nodes_made++;
	return n;
}

static void fsenv_put(struct fsenv *e);

/* n belongs to env e from now on (e's node list, e's count). */
static void node_attach(struct node *n, struct fsenv *e)
{
	n->env = e;
	e->refs++;
	n->env_next = e->nodes;
	n->env_prev = NULL;
	if (e->nodes)
		e->nodes->env_prev = n;
	e->nodes = n;
}

static void node_detach(struct node *n)
{
	struct fsenv *e = n->env;

	if (n->env_prev)
		n->env_prev->env_next = n->env_next;
	else
		e->nodes = n->env_next;
	if (n->env_next)
		n->env_next->env_prev = n->env_prev;
}

static void node_free(struct node *n)
{
	struct node *parent = n->parent;
	struct fsenv *e = n->env;

	table_del(n);
	if (e)
		node_detach(n);
	if (n->fd >= 0)
		close(n->fd);
	if (n->backing_id) {
		passthrough_close(n->backing_id);
		if (n->backing_fd >= 0) /* N_SHARED: its object, n->fd */
			close(n->backing_fd);
	}
	layer_dir_close(&n->up);
	view_dir_free(&n->dir);
	layer_merge_list_free(n->list, n->nlist);
	free(n->cookies);
	buf_free(&n->rendered);
	free(n->name);
	free(n->seen_as);
	free(n->met_as);
	free(n);
	fsd.nodes_alive--;
	if (parent && --parent->refs == 0 && parent->nlookup == 0)
		node_free(parent);
	if (e)
		fsenv_put(e);
}

void node_ref_lookup(struct node *n, uint64_t count)
{
	n->nlookup += count;
}

void node_unref(struct node *n)
{
	if (--n->refs == 0 && n->nlookup == 0 && n->kind != N_ROOT) {
		if (n->env && n->env->root == n)
			n->env->root = NULL;
		node_free(n);
	}
}

void node_forget(struct node *n, uint64_t count)
{
	if (n->kind == N_ROOT)
		return;
	n->nlookup = count > n->nlookup ? 0 : n->nlookup - count;
	if (n->nlookup == 0 && n->refs == 0) {
		if (n->env && n->env->root == n)
			n->env->root = NULL;
		node_free(n);
	}
}

static void set_mtime(struct node *n, int64_t sec, uint32_t nsec)
{
	n->mtime.tv_sec = sec;
	n->mtime.tv_nsec = nsec;
}

/*
 * Attributes as the env shows them. A directory with a writable part is
 * that directory: its owner, mode and times (it was made with the
 * read-only directory's mtime, and every listing change happens there).
 */
int node_stat(struct node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	if (n->kind == N_UPPER) {
		if (fstatat(n->fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		st->st_ino = n->ino;
		st->st_dev = 0;
		st->st_uid = fsd.uid == 0 ? st->st_uid : fsd.uid;
		st->st_gid = fsd.uid == 0 ? st->st_gid : fsd.gid;
		return 0;
	}
	if (n->kind == N_DIR && n->up.fd >= 0) {
		if (fstat(n->up.fd, st) < 0)
			return -errno;
		n->mode = st->st_mode;
		n->mtime = st->st_mtim;
		st->st_ino = n->ino;
		st->st_dev = 0;
		/* a directory the writable layer alone has counts its links (2 +
		 * subdirectories) as on disk; one merged with the store's says 1,
		 * "unknown", as overlayfs says for merged directories (below) */
		if (n->dir.n)
			st->st_nlink = 1;
		st->st_size = 0;
		st->st_uid = fsd.uid == 0 ? st->st_uid : fsd.uid;
		st->st_gid = fsd.uid == 0 ? st->st_gid : fsd.gid;
		return 0;
	}
	st->st_ino = n->ino;
	st->st_mode = n->mode;
	st->st_nlink = 1; /* directories too: "unknown", which stops find's leaf guess */
	st->st_uid = fsd.uid;
	st->st_gid = fsd.gid;
	st->st_size = (off_t)n->size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
	st->st_mtim = n->mtime;
	st->st_atim = n->mtime;
	st->st_ctim = n->mtime;
	if (n->kind == N_ROOT) {
		st->st_mtim = fsd.envs_mtime;
		st->st_atim = st->st_ctim = fsd.envs_mtime;
	}
	return 0;
}

/* ---- envs ------------------------------------------------------------------------- */

static void rm_trash(void *arg)
{
	char *p = arg;

	rm_rf_at(fsd.s->envs_fd, p);
	free(p);
}

static void fsenv_free(struct fsenv *e)
{
	struct fsenv **p = &fsd.envs;

	while (*p && *p != e)
		p = &(*p)->next;
	if (*p)
		*p = e->next;
	if (e->retired_layer) {
		/* replaced by absorb and no longer shown to anyone: delete it
		 * (moved aside now, deleted on a worker) */
		_cleanup_free_ char *from = xasprintf("%s/%s", e->name, e->retired_layer);
		_cleanup_free_ char *to = xasprintf("%s/.trash-%s", e->name, e->retired_layer);
		if (renameat(fsd.s->envs_fd, from, fsd.s->envs_fd, to) == 0)
			fs_defer(rm_trash, steal_pointer(&to));
		free(e->retired_layer);
	}
	view_free(e->view);
	env_free(e->env);
	if (e->workfd >= 0)
		close(e->workfd);
	free(e->name);
	free(e->path);
	free(e);
}

static void fsenv_put(struct fsenv *e)
{
	if (--e->refs == 0 && e->stale)
		fsenv_free(e);
}

/*
 * Manifests (package trees, env trees) are shared by every env that uses
 * them, and read into memory once: lookups never wait for a manifest page
 * to come back from disk, and a thousand envs made of the same packages
 * hold one copy. They stay until unmount.
 */
static int tree_get(void *ctx, const struct objid *id, const char *what, struct tree **out)
{
	char hex[OBJID_STR_MAX];
	bool created;

	(void)ctx;
	objid_format(id, hex);
	uint64_t *v = strmap_put(&fsd.trees, hex, strlen(hex), &created);
	if (*v) {
		*out = (struct tree *)(uintptr_t)*v;
		return 0;
	}
	int r = view_read_tree(fsd.s, id, what, out);
	if (r < 0) {
		*v = 0; /* remembered as bad; a later load tries again */
		return r;
	}
	*v = (uint64_t)(uintptr_t)*out;
	return 0;
}

static void tree_put(void *ctx, struct tree *t)
{
	(void)ctx;
	(void)t; /* shared, kept */
}

static const struct view_trees shared_trees = {tree_get, tree_put, NULL};

/*
 * What the daemon opens under HOME/envs (an env's directory, manifest,
 * views, work and layer directories) is opened with openat_beneath()
 * (util.h): a symlink in their place is never followed (it would have
 * the daemon serve, create and append to files outside the store), the
 * env reads as damaged (EIO) and the log names the link.
 *
 * A store on a read-only file system is mounted read-only (main.c): no
 * env lock, no views, no work directory; layers are shown as they are.
 */
static bool store_read_only(void)
{
	static int ro = -1;

	if (ro < 0)
		ro = fd_on_read_only_fs(fsd.s->fd);
	return ro;
}

/* envs/NAME, a directory never reached through a symlink; an fd or -errno (logged). */
static int env_dir_open(const char *name)
{
	int fd = openat_beneath(fsd.s->envs_fd, name, O_RDONLY | O_DIRECTORY, 0);

	if (fd < 0 && fd != -ENOENT) {
		_cleanup_free_ char *where = path_join(fsd.s->home, "envs");
		fs_log("env %s: %s", name, (beneath_error(fsd.s->envs_fd, where, name, fd), vf_last_error()));
	}
	return fd;
}

/* In a group store, an env is written by its owner's daemon only: the
 * others show it read-only (and leave its lock and work directory alone). */
static bool env_ours(const char *name)
{
	struct stat st;

	return !fsd.s->shared ||
	       (fstatat(fsd.s->envs_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == geteuid());
}

/*
 * Remember that env name was shown at path: pip and uv write that path into
 * the scripts they install through the mount, and export and absorb turn
 * it back into a template (envs/NAME/views, one path a line).
 */
static void record_view_path(const char *name, const char *path)
{
	_cleanup_buf_ struct buf text = {0};
	_cleanup_free_ char *p = xasprintf("%s/views", name);
	_cleanup_free_ char *where = path_join(fsd.s->home, "envs");

	if (store_read_only() || !env_ours(name))
		return;
	int r = read_file_beneath(fsd.s->envs_fd, where, p, 1 << 20, &text);
	if (r == 0) {
		for (char *save, *l = strtok_r(text.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
			if (!strcmp(l, path))
				return;
	} else if (r != -ENOENT) {
		fs_log("env %s: %s", name, vf_last_error());
		return;
	}
	/* O_NONBLOCK: a FIFO in its place must not hang the daemon */
	int fd = openat_beneath(fsd.s->envs_fd, p, O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, 0644);
	struct stat st;
	if (fd < 0) {
		fs_log("env %s: %s", name, (beneath_error(fsd.s->envs_fd, where, p, fd), vf_last_error()));
		return;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		fs_log("env %s: %s/%s is not a regular file, which the store layout never makes", name, where, p);
		close(fd);
		return;
	}
	_cleanup_free_ char *line = xasprintf("%s\n", path);
	if (write_full(fd, line, strlen(line)) < 0)
		fs_log("env %s: cannot record %s in %s", name, path, p);
	close(fd);
}

/* The identity of envs/NAME/env now, to notice replacement: 0, -ENOENT,
 * or -EIO (a symlink in the way, logged). */
static int env_file_stat(const char *name, struct stat *st)
{
	_cleanup_close_ int dfd = env_dir_open(name);
	_cleanup_close_ int fd = dfd >= 0 ? openat_beneath(dfd, "env", O_PATH, 0) : dfd;

	if (fd == -ENOENT)
		return -ENOENT;
	if (fd < 0 && dfd >= 0) {
		_cleanup_free_ char *where = xasprintf("%s/envs/%s", fsd.s->home, name);
		fs_log("env %s: %s", name, (beneath_error(dfd, where, "env", fd), vf_last_error()));
	}
	if (fd < 0 || fstat(fd, st) < 0)
		return -EIO;
	return 0;
}

static void env_make_root(struct fsenv *e)
{
	struct node *r = node_new(N_DIR);
	const struct tree_node *tn;

	node_attach(r, e);
	view_root(e->view, &r->dir);
	tn = view_node(e->view, r->dir.src[0]);
	r->mode = tn->mode;
	view_dir_mtime(e->view, &r->dir, &r->mtime);
	_cleanup_free_ char *up = xasprintf("%s/%s", e->name, env_upper(e->env));
	_cleanup_close_ int efd = env_dir_open(e->name);
	if (layer_dir_open(efd, env_upper(e->env), &r->up) < 0 || r->up.fd < 0)
		fs_log("env %s: its writable layer %s/envs/%s cannot be opened (a symbolic link, or missing)", e->name,
		       fsd.s->home, up);
	r->ino = env_root_ino(e->name, strlen(e->name));
	r->hash = key_named(e, NULL, "", 0);
	r->name = xstrdup(e->name);
	r->name_len = (uint16_t)strlen(e->name);
	table_add(r);
	e->root = r;
}

/*
 * The env was replaced: the old one lives on, read-only, for whoever still
 * holds its nodes (a shell's working directory, open files); new lookups
 * get the new one.
 */
void env_retire(struct fsenv *e)
{
	e->stale = true;
	if (e->root && e->root->nlookup == 0 && e->root->refs == 0) {
		struct node *r = e->root;
		e->root = NULL;
		node_free(r);
	} else if (e->refs == 0) {
		fsenv_free(e);
	}
}

/* The env being served under name now (not a replaced one), or NULL. */
struct fsenv *env_current(const char *name)
{
	for (struct fsenv *e = fsd.envs; e; e = e->next)
		if (!e->stale && !strcmp(e->name, name))
			return e;
	return NULL;
}

/*
 * Take the env's lock when it is first served: whoever holds it may change
 * the env's writable layer (env.h). If it is busy (another daemon serves
 * the same store, or `venvfs absorb` works on the env without a daemon),
 * the env is served read-only until a change is tried and the lock is free
 * by then (env_claim()).
 */
static bool env_lock_once(const char *name)
{
	bool created;
	uint64_t *slot = strmap_put(&fsd.env_locks, name, strlen(name), &created);

	if (*slot >= 2)
		return true;
	if (!env_ours(name)) {
		if (*slot == 0)
			fs_log("env %s: another account's env in this group store: served read-only", name);
		*slot = 1;
		return false;
	}
	int fd = env_lock(fsd.s, name);
	if (fd < 0) {
		if (*slot == 0) /* say it once */
			fs_log("env %s: %s; served read-only until it is free", name,
			       fd == -EWOULDBLOCK ? "its lock is held (another venvfs daemon, or venvfs absorb)"
						  : vf_last_error());
		*slot = 1;
		return false;
	}
	*slot = (uint64_t)fd + 2;
	env_sweep_layers(fsd.s, name);
	return true;
}

bool env_claim(struct fsenv *e)
{
	if (env_lock_once(e->name))
		e->readonly = false;
	return !e->readonly;
}

/* An env's manifest and view (shared trees); -EIO, logged. */
static int load_env(const char *name, struct env **mp, struct view **vp)
{
	if (env_load(fsd.s, name, mp) < 0) {
		fs_log("env %s: %s", name, vf_last_error());
		return -EIO;
	}
	if (view_open(fsd.s, *mp, &shared_trees, vp) < 0) {
		fs_log("env %s: %s", name, vf_last_error());
		env_free(*mp);
		return -EIO;
	}
	return 0;
}

static void empty_view_dir(struct view_dir *d)
{
	d->src = xmalloc(sizeof(*d->src));
	d->n = 0;
	d->site_depth = -1;
}

/* The node no longer names anything in its env (absorb.c moved it). */
static void node_gone(struct node *n)
{
	n->gone = true;
	table_del(n);
	if (n->kind == N_DIR) {
		layer_dir_close(&n->up);
		view_dir_free(&n->dir);
		empty_view_dir(&n->dir);
		node_list_drop(n);
	}
}

static unsigned node_depth(const struct node *n)
{
	unsigned d = 0;

	for (; n->parent; n = n->parent)
		d++;
	return d;
}

static int depth_cmp(const void *a, const void *b)
{
	unsigned x = node_depth(*(struct node *const *)a), y = node_depth(*(struct node *const *)b);

	return x < y ? -1 : x > y;
}

/* env_absorbed()'s plan for one directory node (as dirs[i]), and where to find it. */
struct dir_redo {
	struct layer_dir up;
	struct view_dir lo;
	bool gone;
};

struct dir_index {
	const struct node *d;
	size_t i;
};

static int index_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct dir_index *)a)->d, y = (uintptr_t)((const struct dir_index *)b)->d;

	return x < y ? -1 : x > y;
}

/*
 * Env e was absorbed (control.c): it shows the same files, from a new
 * manifest and a new writable layer. Its nodes are brought up to date in
 * place, parents first, so whoever holds them (a shell's working
 * directory, a process's open files) goes on seeing the same env:
 * directories get their new writable part and read-only sources, per-env
 * files their new source; a file of the writable layer that went into the
 * store (took) is "gone": it still reads (its inode lives on), but a
 * change through it gets ESTALE, and the kernel looks the name up again
 * and finds the store file. The old writable layer is moved aside, to
 * *trash (HOME/envs-relative), for the caller to delete without the lock.
 */
int env_absorbed(struct fsenv *e, bool (*took)(void *, dev_t, ino_t), void *ctx, char **trash)
{
	struct env *m;
	struct view *v;
	struct stat st;
	int r = 0;

	if (load_env(e->name, &m, &v) < 0)
		return -EIO;

	/* First the new parts of every directory, parents first, into a plan
	 * that changes no node: a descriptor that cannot be had (EMFILE) fails
	 * the update here, with every node as it was, and the caller retires
	 * the env instead. */
	size_t nd = 0;
	for (struct node *n = e->nodes; n; n = n->env_next)
		nd += n->kind == N_DIR;
	_cleanup_free_ struct node **dirs = xmalloc((nd + 1) * sizeof(*dirs));
	_cleanup_free_ struct dir_redo *plan = xcalloc(nd + 1, sizeof(*plan));
	_cleanup_free_ struct dir_index *index = xcalloc(nd + 1, sizeof(*index));
	nd = 0;
	for (struct node *n = e->nodes; n; n = n->env_next)
		if (n->kind == N_DIR)
			dirs[nd++] = n;
	qsort(dirs, nd, sizeof(*dirs), depth_cmp);
	for (size_t i = 0; i < nd; i++)
		index[i] = (struct dir_index){dirs[i], i};
	qsort(index, nd, sizeof(*index), index_cmp);
	for (size_t i = 0; i < nd && r == 0; i++) {
		struct node *d = dirs[i];
		struct dir_index key = {d->parent, 0},
				 *pk = d->parent ? bsearch(&key, index, nd, sizeof(key), index_cmp) : NULL;
		struct dir_redo *w = &plan[i], *pw = pk ? &plan[pk->i] : NULL;
		struct merged mm;
		w->up = (struct layer_dir){.fd = -1};
		if (!d->parent) {
			_cleanup_close_ int efd = env_dir_open(e->name);
			r = efd < 0 ? efd : layer_dir_open(efd, env_upper(m), &w->up);
			view_root(v, &w->lo);
		} else if (d->gone || !pw || pw->gone || layer_merge_lookup(v, &pw->up, &pw->lo, d->name, &mm) < 0 ||
			   !(mm.upper == L_DIR ||
			     (mm.upper == L_NONE && mm.lower && S_ISDIR(view_node(v, mm.src)->mode)))) {
			w->gone = true;
		} else {
			if (mm.upper == L_DIR)
				r = layer_dir_open(pw->up.fd, d->name, &w->up);
			if (r == 0)
				layer_child_lower(v, &pw->lo, d->name, w->up.fd >= 0 ? &w->up : NULL, &w->lo);
		}
	}
	if (r < 0) {
		for (size_t i = 0; i < nd; i++) {
			layer_dir_close(&plan[i].up);
			view_dir_free(&plan[i].lo);
		}
		env_free(m);
		view_free(v);
		fs_log("absorb %s: cannot show the new layer in place: %s", e->name, strerror(-r));
		return r;
	}

	/* Then the switch, which cannot fail. */
	_cleanup_free_ char *old_layer = xstrdup(env_upper(e->env));
	view_free(e->view);
	env_free(e->env);
	e->env = m;
	e->view = v;
	if (env_file_stat(e->name, &st) == 0) {
		e->loaded_ino = st.st_ino;
		e->loaded_mtime = st.st_mtim;
	}
	for (size_t i = 0; i < nd; i++) {
		struct node *d = dirs[i];
		if (plan[i].gone) {
			node_gone(d);
			continue;
		}
		layer_dir_close(&d->up);
		view_dir_free(&d->dir);
		node_list_drop(d);
		d->up = plan[i].up;
		d->dir = plan[i].lo;
		if (d->up.fd < 0 && d->dir.n) {
			d->mode = view_node(v, d->dir.src[0])->mode;
			view_dir_mtime(v, &d->dir, &d->mtime);
		}
	}
	for (struct node *n = e->nodes; n; n = n->env_next) {
		struct merged mm;
		if (n->kind == N_FILE) {
			struct node *p = n->parent;
			if (p->gone || layer_merge_lookup(v, &p->up, &p->dir, n->name, &mm) < 0 || mm.upper != L_NONE ||
			    !mm.lower || (view_node(v, mm.src)->mode & S_IFMT) != (n->mode & S_IFMT))
				node_gone(n);
			else
				n->src = mm.src;
		} else if (n->kind == N_UPPER && took(ctx, n->dev, n->upper_ino)) {
			node_gone(n);
		}
	}

	/* the old layer: out of the way now; the caller deletes it */
	_cleanup_free_ char *from = xasprintf("%s/%s", e->name, old_layer);
	_cleanup_free_ char *to = xasprintf("%s/.trash-%s", e->name, old_layer);
	if (renameat(fsd.s->envs_fd, from, fsd.s->envs_fd, to) == 0)
		*trash = steal_pointer(&to);
	return 0;
}

struct fsenv *env_get(const char *name, size_t len, int *err)
{
	_cleanup_free_ char *n = xstrndup(name, len);
	struct stat st;
	struct fsenv *e;

	*err = ENOENT;
	if (!env_valid_name(n))
		return NULL;
	int r = env_file_stat(n, &st);
	if (r < 0) {
		*err = -r;
		return NULL;
	}
	for (e = fsd.envs; e; e = e->next) {
		if (e->stale || strcmp(e->name, n))
			continue;
		if (e->loaded_ino == st.st_ino && e->loaded_mtime.tv_sec == st.st_mtim.tv_sec &&
		    e->loaded_mtime.tv_nsec == st.st_mtim.tv_nsec)
			break;
		/* replaced (re-imported, absorbed...) */
		env_retire(e);
		e = NULL;
		break;
	}
	if (!e) {
		struct env *m;
		struct view *v;
		if (load_env(n, &m, &v) < 0) {
			*err = EIO;
			return NULL;
		}
		e = xcalloc(1, sizeof(*e));
		e->name = xstrdup(n);
		e->env = m;
		e->view = v;
		e->path = xasprintf("%s/%s", fsd.mountpoint, n);
		e->readonly = store_read_only() || !env_lock_once(n);
		e->loaded_ino = st.st_ino;
		e->loaded_mtime = st.st_mtim;
		e->workfd = -1;
		_cleanup_close_ int efd = store_read_only() || !env_ours(n) ? -1 : env_dir_open(n);
		if (efd >= 0 && mkdirat(efd, "work", 0700) < 0 && errno != EEXIST)
			fs_log("env %s: %s/envs/%s/work: %s", n, fsd.s->home, n, strerror(errno));
		if (efd >= 0) {
			e->workfd = openat_beneath(efd, "work", O_RDONLY | O_DIRECTORY, 0);
			if (e->workfd < 0) {
				_cleanup_free_ char *where = xasprintf("%s/envs/%s", fsd.s->home, n);
				fs_log("env %s: %s", n,
				       (beneath_error(efd, where, "work", e->workfd), vf_last_error()));
				e->workfd = -1;
			}
		}
		record_view_path(n, e->path);
		e->next = fsd.envs;
		fsd.envs = e;
	}
	if (!e->root)
		env_make_root(e);
	return e;
}

/* ---- lookup ----------------------------------------------------------------------- */

static char *describe(struct node *dir, const char *name, size_t len)
{
	struct buf b = {0};
	const struct node *chain[256];
	int depth = 0;

	for (const struct node *p = dir; p && depth < 256; p = p->parent)
		chain[depth++] = p;
	while (depth--) {
		if (b.len)
			buf_addc(&b, '/');
		// cppcheck-suppress uninitvar ; chain[0, depth) was filled above
		buf_add(&b, chain[depth]->name, chain[depth]->name_len);
	}
	buf_addc(&b, '/');
	buf_add(&b, name, len);
	return b.data;
}

static int new_named(struct node *dir, const char *name, size_t len, enum node_kind kind, uint64_t h, struct node **out)
{
	struct fsenv *e = dir->env;
	struct node *n = node_new(kind);

	node_attach(n, e);
	n->parent = dir;
	dir->refs++;
	n->name = xstrndup(name, len);
	n->name_len = (uint16_t)len;
	n->hash = h;
	n->ino = XXH3_64bits_withSeed(name, len, dir->ino) | 2;
	*out = n;
	return 0;
}

static uint64_t upper_st_ino(struct fsenv *e, dev_t dev, ino_t ino)
{
	uint64_t k[2] = {(uint64_t)dev, (uint64_t)ino};

	return XXH3_64bits_withSeed(k, sizeof(k), e->root ? e->root->ino : 0) | 2;
}

/* What a stat of dir/name in the writable layer shows, without a node. */
int upper_stat(struct node *dir, const char *name, struct stat *st)
{
	if (fstatat(dir->up.fd, name, st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	st->st_ino = upper_st_ino(dir->env, st->st_dev, st->st_ino);
	return 0;
}

/* The node of a file in the writable layer (find or make; NULL and errno on error). */
struct node *upper_node(struct fsenv *e, struct node *dir, const char *name)
{
	struct stat st;
	int fd = openat(dir->up.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0) {
		int err = errno;
		close(fd);
		errno = err;
		return NULL;
	}
	uint64_t h = key_upper(e, st.st_dev, st.st_ino);
	struct node *n = find_upper(e, st.st_dev, st.st_ino, h);
	if (n) {
		close(fd);
		return n;
	}
	n = node_new(N_UPPER);
	node_attach(n, e);
	n->fd = fd;
	n->dev = st.st_dev;
	n->upper_ino = st.st_ino;
	n->mode = st.st_mode;
	n->hash = h;
	n->ino = upper_st_ino(e, st.st_dev, st.st_ino);
	n->seen_as = describe(dir, name, strlen(name));
	n->met_in = dir == &fsd.root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)dir;
	n->met_as = xstrdup(name);
	table_add(n);
	if (fsd.nodes_made % 64 == 0)
		fs_wake_housekeeping(); /* fd_pressure(): many files may be coming */
	return n;
}

/*
 * Descriptor pressure. Every file and directory of a writable layer that the
 * kernel keeps in its inode cache holds a descriptor here (the node's O_PATH
 * handle, or its directory's), and the kernel keeps inodes as long as memory
 * allows: a pip install of 25k files is 25k descriptors (django alone has 2k
 * locale directories), past RLIMIT_NOFILE on many machines. So the
 * housekeeping thread calls this a few times a second: when the descriptors
 * in use pass 3/4 of the limit, it asks the kernel to drop its entries for
 * the oldest such files and directories that nothing has open
 * (FUSE_NOTIFY_INVAL_ENTRY; a directory's go with it), down to half the
 * limit. The kernel then forgets their inodes, which frees the nodes and
 * their descriptors; a later lookup finds the file again, under the same
 * inode number. Never called with fsd.lock held, nor from a request
 * handler: invalidating an entry waits for the directory's lock, which a
 * request in that directory may hold until it is answered.
 */
static void fd_pressure_locked(bool urgent);

static size_t fds_in_use(void)
{
	struct stat st;

	/* since Linux 6.2 the size of /proc/self/fd is the count: no listing */
	if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0)
		return (size_t)st.st_size;

	DIR *d = opendir("/proc/self/fd");
	size_t n = 0;

	if (!d)
		return 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n > 2 ? n - 3 : 0; /* ".", "..", and d's own */
}

void fd_pressure(bool urgent)
{
	static pthread_mutex_t one_at_a_time = PTHREAD_MUTEX_INITIALIZER;

	pthread_mutex_lock(&one_at_a_time); /* housekeeping, and an absorb */
	fd_pressure_locked(urgent);
	pthread_mutex_unlock(&one_at_a_time);
}

/*
 * Room for a job of the daemon's own that met EMFILE: the kernel is asked to
 * forget, and its forgets come back as requests, so wait (at most two
 * seconds) until the descriptors in use are under half the limit.
 */
void fd_room(void)
{
	struct rlimit rl;

	fd_pressure(true);
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return;
	for (int i = 0; i < 40 && fds_in_use() >= (size_t)rl.rlim_cur / 2; i++)
		usleep(50000);
}

static void fd_pressure_locked(bool urgent)
{
	struct rlimit rl;
	struct victim {
		fuse_ino_t dir;
		char *name;
	} *v = NULL;
	size_t nv = 0, cap = 0;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return;
	size_t limit = (size_t)rl.rlim_cur;
	pthread_mutex_lock(&fsd.lock);
	uint64_t nodes = fsd.nodes_alive, made = fsd.nodes_made;
	pthread_mutex_unlock(&fsd.lock);
	if (nodes < limit / 4 && !urgent)
		return; /* far from it: spare the count */
	/*
	 * Counting is a stat of /proc/self/fd, but before Linux 6.2 a listing
	 * of it (a millisecond with 15k descriptors, and this runs every 64 new
	 * nodes during a pip install). A node holds at
	 * most 3 descriptors (an O_PATH or directory handle, a passthrough
	 * backing file, its env's), so while the last count plus what the
	 * nodes made since could hold stays under the mark, skip it (made,
	 * not alive: the kernel's forgets lag behind, and a node it forgot may
	 * have held none); count at least once a second regardless.
	 */
	static size_t last_used;
	static uint64_t last_made, last_ns;
	uint64_t now = now_ns();
	size_t bound = last_used + 3 * (size_t)(made - last_made);
	if (!urgent && last_ns && bound < limit / 4 * 3 && now - last_ns < 1000000000ull)
		return;
	size_t used = fds_in_use();
	last_used = used;
	last_made = made;
	last_ns = now;
	/* urgent: a job of the daemon's own (an absorb) met EMFILE; it
	 * needs room beside the nodes, so down to a quarter */
	size_t mark = urgent ? limit / 4 : limit / 2;
	if (used < (urgent ? mark : limit / 4 * 3))
		return;
	size_t want = used - mark;

	pthread_mutex_lock(&fsd.lock);
	for (struct fsenv *e = fsd.envs; e; e = e->next)
		for (struct node *n = e->nodes; n; n = n->env_next) {
			bool is_file = n->kind == N_UPPER && n->fd >= 0 && !n->writers && !n->backing_users;
			bool is_dir = n->kind == N_DIR && n->up.fd >= 0 && n != e->root && n->parent != &fsd.root;
			if ((!is_file && !is_dir) || n->gone)
				continue;
			fuse_ino_t dir = n->met_as                ? n->met_in
					 : n->parent == &fsd.root ? FUSE_ROOT_ID
								  : (fuse_ino_t)(uintptr_t)n->parent;
			const char *name = n->met_as ? n->met_as : n->name;
			if (!dir || !name)
				continue;
			if (nv == cap) {
				cap = cap ? 2 * cap : 1024;
				v = xrealloc(v, cap * sizeof(*v));
			}
			v[nv++] = (struct victim){dir, xstrdup(name)};
		}
	pthread_mutex_unlock(&fsd.lock);
	/* each env's list runs newest first: drop from its end */
	size_t from = nv > want ? nv - want : 0;
	for (size_t i = 0; i < nv; i++) {
		if (i >= from)
			fuse_lowlevel_notify_inval_entry(fsd.se, v[i].dir, v[i].name, strlen(v[i].name));
		free(v[i].name);
	}
	free(v);
	if (nv)
		fs_log("descriptors: %zu of %zu in use; asked the kernel to forget %zu files and directories of "
		       "writable layers",
		       used, limit, nv - from);
}

static struct node *shared_node(const struct objid *id, uint32_t mode, uint64_t size, const struct timespec *mt,
				struct node *dir, const char *name, size_t len)
{
	uint64_t h = key_shared(id, mode, mt);
	struct node *n = find_shared(id, mode, mt, h);

	if (!n) {
		n = node_new(N_SHARED);
		n->obj = *id;
		n->mode = mode;
		n->size = size;
		n->mtime = *mt;
		n->hash = h;
		n->ino = h | 2;
		n->seen_as = describe(dir, name, len);
		table_add(n);
	}
	return n;
}

int node_child(struct node *dir, const char *name, size_t len, struct node **out)
{
	struct merged m;
	int err;

	if (dir->kind == N_ROOT) {
		struct fsenv *e = env_get(name, len, &err);
		if (!e)
			return -err;
		*out = e->root;
		return 0;
	}
	if (dir->kind != N_DIR)
		return -ENOTDIR;
	if (len > 255)
		return -ENAMETOOLONG;
	struct fsenv *e = dir->env;
	struct view *v = e->view;
	_cleanup_free_ char *z = xstrndup(name, len);
	int r = layer_merge_lookup(v, &dir->up, &dir->dir, z, &m);
	if (r < 0)
		return r;
	if (!layer_merged_shows(&m))
		return -ENOENT;
	if (m.upper == L_FILE) {
		struct node *n = upper_node(e, dir, z);
		if (!n)
			return upper_open_errno();
		*out = n;
		return 0;
	}
	if (m.upper == L_META) {
		*out = shared_node(&m.ent.obj, m.ent.mode, m.ent.size, &m.ent.mtime, dir, name, len);
		return 0;
	}

	uint64_t h = key_named(e, dir, name, len);
	struct node *n = find_named(e, dir, name, len, h);
	if (n) {
		*out = n;
		return 0;
	}
	if (m.upper == L_DIR) {
		/* opened first: a node without its writable part (EMFILE)
		 * would show an empty directory for as long as it lives */
		struct layer_dir up;
		r = layer_dir_open(dir->up.fd, z, &up);
		if (r < 0 || up.fd < 0) {
			layer_dir_close(&up);
			return r < 0 ? r : -ENOENT;
		}
		new_named(dir, name, len, N_DIR, h, &n);
		n->up = up;
		if (fsd.nodes_made % 64 == 0)
			fs_wake_housekeeping(); /* fd_pressure() */
		layer_child_lower(v, &dir->dir, z, &n->up, &n->dir);
		n->mode = m.ent.st.st_mode;
		n->mtime = m.ent.st.st_mtim;
		table_add(n);
		*out = n;
		return r;
	}

	const struct tree_node *tn = view_node(v, m.src);
	if (S_ISREG(tn->mode) && !(tn->flags & TREE_F_TEMPLATE)) {
		struct objid id;
		struct timespec mt = {tn->mtime_sec, tn->mtime_nsec};
		tree_node_objid(tn, &id);
		*out = shared_node(&id, tn->mode, tn->size, &mt, dir, name, len);
		return 0;
	}
	if (S_ISDIR(tn->mode)) {
		new_named(dir, name, len, N_DIR, h, &n);
		view_child_dir(v, &dir->dir, name, len, &n->dir);
		n->mode = tn->mode;
		view_dir_mtime(v, &n->dir, &n->mtime);
	} else {
		new_named(dir, name, len, N_FILE, h, &n);
		n->src = m.src;
		n->mode = tn->mode;
		set_mtime(n, tn->mtime_sec, tn->mtime_nsec);
		if (S_ISLNK(tn->mode)) {
			n->size = tn->u.link.len;
		} else if (S_ISREG(tn->mode)) {
			/* a template: its size depends on where it is shown */
			r = view_render(v, m.src, e->path, NULL, &n->rendered);
			if (r < 0) {
				fs_log("%s/%.*s: %s", e->name, (int)len, name, vf_last_error());
				n->state = -EIO;
				fsd.st.damaged_objects++;
			}
			n->size = n->rendered.len;
		}
	}
	table_add(n);
	*out = n;
	return 0;
}

char *node_path(const struct node *dir, const char *name)
{
	return describe((struct node *)dir, name, strlen(name));
}

/* ---- listings -------------------------------------------------------------------- */

/*
 * Directory offsets. A listing is read in pieces, and entries may be
 * created or removed between two pieces (`rm -r` deletes while it lists),
 * so an offset cannot be a position in the listing: it is a cookie, a
 * hash of the entry's name, and a listing is ordered by cookie. Reading
 * on from a cookie returns every entry after it that still exists, and
 * none twice. Offsets 1 and 2 are "." and "..".
 */
static uint64_t name_cookie(const char *name)
{
	return (XXH3_64bits(name, strlen(name)) >> 2) + 3;
}

static int cookie_cmp(const void *a, const void *b)
{
	uint64_t x = name_cookie(((const struct merged_name *)a)->name);
	uint64_t y = name_cookie(((const struct merged_name *)b)->name);

	return x < y ? -1 : x > y;
}

static int cookie_cmp_str(const void *a, const void *b)
{
	uint64_t x = name_cookie(*(char *const *)a), y = name_cookie(*(char *const *)b);

	return x < y ? -1 : x > y;
}

/* Cookies of a listing sorted by cookie (equal ones made distinct). */
static uint64_t *make_cookies(size_t n, const char *(*name_of)(void *, size_t), void *ctx)
{
	uint64_t *c = xmalloc((n + 1) * sizeof(*c));

	for (size_t i = 0; i < n; i++) {
		c[i] = name_cookie(name_of(ctx, i));
		if (i && c[i] <= c[i - 1])
			c[i] = c[i - 1] + 1;
	}
	return c;
}

static const char *list_name(void *ctx, size_t i)
{
	return ((struct merged_name *)ctx)[i].name;
}

static const char *names_name(void *ctx, size_t i)
{
	return ((char **)ctx)[i];
}

int node_list(struct node *dir)
{
	if (dir->listed)
		return 0;
	int r = layer_merge_list(dir->env->view, &dir->up, &dir->dir, &dir->list, &dir->nlist);
	if (r < 0)
		return r;
	if (dir->nlist)
		qsort(dir->list, dir->nlist, sizeof(*dir->list), cookie_cmp);
	dir->cookies = make_cookies(dir->nlist, list_name, dir->list);
	dir->listed = true;
	return 0;
}

void node_list_drop(struct node *dir)
{
	layer_merge_list_free(dir->list, dir->nlist);
	free(dir->cookies);
	dir->cookies = NULL;
	dir->list = NULL;
	dir->nlist = 0;
	dir->listed = false;
}

size_t list_seek(const uint64_t *cookies, size_t n, uint64_t off)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (cookies[mid] <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int root_list(void)
{
	if (fsd.env_names && !fsd.env_names_stale)
		return 0;
	env_list_free(fsd.env_names, fsd.n_env_names);
	fsd.env_names = NULL;
	fsd.n_env_names = 0;
	struct stat st;
	if (fstat(fsd.s->envs_fd, &st) == 0)
		fsd.envs_mtime = st.st_mtim;
	if (env_list(fsd.s, &fsd.env_names, &fsd.n_env_names) < 0) {
		fs_log("listing envs: %s", vf_last_error());
		return -EIO;
	}
	if (fsd.n_env_names)
		qsort(fsd.env_names, fsd.n_env_names, sizeof(char *), cookie_cmp_str);
	free(fsd.env_cookies);
	fsd.env_cookies = make_cookies(fsd.n_env_names, names_name, fsd.env_names);
	fsd.env_names_stale = false;
	return 0;
}

void envs_changed(void)
{
	struct stat st;

	fsd.env_names_stale = true;
	if (fstat(fsd.s->envs_fd, &st) == 0)
		fsd.envs_mtime = st.st_mtim;
}

/* ---- store files ------------------------------------------------------------------ */

/*
 * Open a shared node's object and check it once: a missing object, or a
 * size other than the manifest's, makes every read fail with EIO, and the
 * log names the object. Content is checked against the object's name too,
 * once per daemon and object file (checked_before(), below): before the
 * first byte is served for objects up to CHECK_SYNC_MAX, in
 * the background for larger ones (a cold import reads only parts of big
 * shared libraries; hashing all of them first cost 10% of its time). A
 * large object found damaged fails from then on and the kernel's cached
 * pages of it are dropped.
 *
 * Large files keep their object open in the node while the kernel knows
 * them (ops.c: their passthrough backing file). Small ones keep none: the
 * caller gets the descriptor (fd_out) and closes it, and the next one opens
 * the object again (a lookup; checked_before() spares the hash). A kernel
 * caching every file of a 29k-file env (an editor indexing it) would
 * otherwise hold more descriptors here than the daemon may have, and
 * opens past the limit failed the files with EIO. Out of descriptors is
 * not damage: the request fails (ENFILE), the file does not.
 *
 * In a group store, another account's object (store_object_foreign()) is
 * one its owner could still change: it is checked before its first byte is
 * served whatever its size, never handed to the kernel (no passthrough, no
 * splice), and each read of it is followed by a look at the file's identity
 * (shared_still_checked()). A write moves the file's ctime before its
 * bytes change, so bytes read are the checked ones if the identity read
 * after them is still the checked one; otherwise the read fails with EIO
 * and so does every later one. What the kernel cached before stays good.
 */
#define CHECK_SYNC_MAX (1u << 20)

static const char *hash_check(int fd, const struct node *n, size_t size)
{
	uint8_t h[16];

	if (size == 0)
		return NULL;
	void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return "cannot be read";
	madvise(m, size, MADV_SEQUENTIAL);
	fsd.s->hash(m, size, h);
	munmap(m, size);
	return memcmp(h, n->obj.hash, 16) ? "does not match its name (corrupt)" : NULL;
}

/*
 * Objects this daemon has hashed and found whole, by id, with the object
 * file's identity at the time (inode, ctime, size). An object is never
 * written after its insert, so its content can only change by a write to
 * that file, which moves its ctime, or by another file under its name, a
 * new inode: a node made again for a checked object after the kernel forgot
 * the last one (memory pressure, drop_caches) is served without hashing
 * the whole file again. Hashing again each file a cold heavy import opens
 * was a tenth of its time (1.21x native with it, 1.08x without, per-round
 * medians of 9). A daemon started afresh checks every object on first use.
 * Under fsd.lock.
 */
static struct strmap checked;

static uint64_t object_identity(const struct stat *st)
{
	uint64_t v[4] = {st->st_ino, (uint64_t)st->st_ctim.tv_sec, (uint64_t)st->st_ctim.tv_nsec,
			 (uint64_t)st->st_size};

	return XXH3_64bits(v, sizeof(v)) | 1; /* never 0, a new slot's value */
}

/* Under fsd.lock. */
static bool checked_before(const struct node *n, uint64_t identity)
{
	uint64_t *v = strmap_get(&checked, (const char *)&n->obj, sizeof(n->obj));

	return v && *v == identity;
}

/* Under fsd.lock. */
static void checked_now(const struct node *n, uint64_t identity)
{
	*strmap_put(&checked, (const char *)&n->obj, sizeof(n->obj), NULL) = identity;
}

static void mark_damaged(struct node *n, const char *why)
{
	char path[OBJID_STR_MAX];

	objid_path(&n->obj, path);
	if (n->state >= 0) {
		n->state = -EIO;
		fsd.st.damaged_objects++;
		fs_log("objects/%s %s: reads of %s fail with EIO (venvfs store verify lists the damage)", path, why,
		       n->seen_as ? n->seen_as : "it");
	}
}

static void background_check(void *arg)
{
	struct node *n = arg;
	int fd;

	struct stat st;
	uint64_t identity = 0;

	pthread_mutex_lock(&fsd.lock);
	fd = n->fd >= 0 ? dup(n->fd) : -1;
	pthread_mutex_unlock(&fsd.lock);
	const char *why = fd >= 0 ? hash_check(fd, n, n->size) : NULL;
	if (fd >= 0) {
		if (!why && fstat(fd, &st) == 0)
			identity = object_identity(&st);
		/* the hash read all of it; the view's inode caches what is used,
		 * unless the object itself is the page cache (passthrough, ops.c) */
		pthread_mutex_lock(&fsd.lock);
		bool backing = n->backing_id != 0;
		pthread_mutex_unlock(&fsd.lock);
		if (!backing)
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
	pthread_mutex_lock(&fsd.lock);
	if (why)
		mark_damaged(n, why);
	else if (identity)
		checked_now(n, identity);
	uintptr_t ino = (uintptr_t)n;
	node_unref(n);
	pthread_mutex_unlock(&fsd.lock);
	if (why)
		fuse_lowlevel_notify_inval_inode(fsd.se, ino, 0, 0);
}

int shared_open_object(struct node *n, int *fd_out)
{
	int fd, state;
	struct stat st;

	pthread_mutex_lock(&fsd.lock);
	state = n->state;
	fd = n->fd;
	if (state >= 0 && fd >= 0 && fd_out && (*fd_out = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
		state = -ENFILE;
	pthread_mutex_unlock(&fsd.lock);
	if (state < 0 || fd >= 0)
		return state < 0 ? state : 0;

	fd = store_object_open(fsd.s, &n->obj);
	const char *why = NULL;
	uint64_t identity = 0;
	bool known = false, foreign = false;
	if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM) {
		/* not the object's fault: fail this request, not the file */
		fs_log("objects: out of descriptors or memory opening an object of %s: %s",
		       n->seen_as ? n->seen_as : "a store file", strerror(-fd));
		return -ENFILE;
	} else if (fd < 0) {
		why = fd == -ENOENT ? "is missing" : "cannot be opened";
	} else if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != n->size) {
		why = "has the wrong size (damaged)";
	} else {
		identity = object_identity(&st);
		foreign = store_object_foreign(fsd.s, &st);
		pthread_mutex_lock(&fsd.lock);
		known = checked_before(n, identity);
		pthread_mutex_unlock(&fsd.lock);
		if (!known && (n->size <= CHECK_SYNC_MAX || fd_out || foreign))
			why = hash_check(fd, n, n->size);
	}
	bool later = !why && !known && n->size > CHECK_SYNC_MAX && !fd_out && !foreign;

	pthread_mutex_lock(&fsd.lock);
	if (foreign) {
		n->foreign = true;
		n->no_passthrough = true;
	}
	if (!why && !known && !later)
		checked_now(n, identity);
	if (why) {
		if (fd >= 0)
			close(fd);
		mark_damaged(n, why);
		state = n->state;
	} else if (fd_out) {
		*fd_out = fd; /* the caller's; the node keeps none */
		n->state = 1;
		state = 0;
	} else if (n->fd < 0) {
		n->fd = fd;
		n->state = 1;
		state = 0;
		if (later)
			n->refs++; /* held by the background check */
	} else {
		close(fd); /* another thread got there first */
		state = 0;
		later = false;
	}
	pthread_mutex_unlock(&fsd.lock);
	if (later)
		fs_defer(background_check, n);
	return state < 0 ? state : 0;
}

bool shared_still_checked(struct node *n, int fd)
{
	struct stat st;
	bool ok;

	pthread_mutex_lock(&fsd.lock);
	bool foreign = n->foreign;
	pthread_mutex_unlock(&fsd.lock);
	if (!foreign)
		return true;
	ok = fstat(fd, &st) == 0;
	pthread_mutex_lock(&fsd.lock);
	ok = ok && checked_before(n, object_identity(&st));
	if (!ok)
		mark_damaged(n, "changed after it was checked (its owner wrote to it)");
	pthread_mutex_unlock(&fsd.lock);
	return ok;
}
