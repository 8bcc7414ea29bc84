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
	fsd.root.up.fd = -1;
}

uint64_t node_root_ino(const char *name, size_t len)
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
	struct node *n = xcalloc(1, kind == N_DIR ? NODE_DIR_SIZE : NODE_FILE_SIZE);

	n->kind = kind;
	if (node_is_dir(n)) {
		n->up.fd = -1;
	} else {
		n->fd = -1;
		n->backing_fd = -1;
	}
	fsd.nodes_alive++;
	fsd.nodes_made++;
	return n;
}

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

void node_free(struct node *n)
{
	struct node *parent = n->parent;
	struct fsenv *e = n->env;

	table_del(n);
	if (e)
		node_detach(n);
	if (node_is_dir(n)) {
		layer_dir_close(&n->up);
		view_dir_free(&n->dir);
		layer_merge_list_free(n->list, n->nlist);
		free(n->cookies);
	} else {
		if (n->fd >= 0)
			close(n->fd);
		if (n->backing_id) {
			passthrough_close(n->backing_id);
			if (n->backing_fd >= 0) /* N_SHARED: its object, n->fd */
				close(n->backing_fd);
		}
		buf_free(&n->rendered);
		free(n->seen_as);
		free(n->met_as);
	}
	free(n->name);
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

static void empty_view_dir(struct view_dir *d)
{
	d->src = xmalloc(sizeof(*d->src));
	d->n = 0;
	d->site_depth = -1;
}

/* The node no longer names anything in its env (absorb.c moved it). */
void node_gone(struct node *n)
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

/* The top directory of env e: a node of e, numbered from e's name. */
struct node *node_new_root(struct fsenv *e)
{
	struct node *r = node_new(N_DIR);

	node_attach(r, e);
	r->ino = node_root_ino(e->name, strlen(e->name));
	r->hash = key_named(e, NULL, "", 0);
	r->name = xstrdup(e->name);
	r->name_len = (uint16_t)strlen(e->name);
	table_add(r);
	return r;
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
		fsd.many_new_nodes = true; /* fd_pressure(): many files may be coming */
	return n;
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
		struct fsenv *e = fsenv_get(name, len, &err);
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
			fsd.many_new_nodes = true; /* fd_pressure() */
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
			if (node_render(n) == 0)
				n->size = n->rendered.len;
			buf_free(&n->rendered); /* rendered again when read (node_render()) */
		}
	}
	table_add(n);
	*out = n;
	return 0;
}

/*
 * The content of template n (an N_FILE regular file), rendered for where its
 * env is shown. Not kept: rendered at lookup for its size, then again when
 * it is read, and dropped once read to its end (the kernel's page cache
 * has it then). Kept, the templates of 1,000 envs (pip's RECORD alone is 80
 * KB an env) were 138 MB of a 370 MB daemon after a scan of them all
 * (docs/benchmarks.md, bytes per node).
 */
int node_render(struct node *n)
{
	if (n->rendered.data)
		return 0;
	if (n->state < 0)
		return n->state;
	int r = view_render(n->env->view, n->src, n->env->path, NULL, &n->rendered);
	if (r < 0 || (n->size && n->rendered.len != n->size)) {
		fs_log("%s: %s", n->seen_as ? n->seen_as : n->name,
		       r < 0 ? vf_last_error() : "rendered to another size than before");
		buf_free(&n->rendered);
		n->state = -EIO;
		fsd.st.damaged_objects++;
		return -EIO;
	}
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
