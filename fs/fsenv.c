/*
 * fsenv.c - the envs the daemon serves: loading one when it is first looked
 * up, its lock (the daemon changes only envs it holds the lock of), its
 * views file, and bringing its nodes up to date after an absorb.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_i.h"
#include "tree.h"

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
		char *to = env_layer_trash(fsd.s, e->name, e->retired_layer);
		if (to)
			fs_defer(rm_trash, to);
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

void fsenv_put(struct fsenv *e)
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
 * A store on a read-only file system is mounted read-only (main.c, fs_mount()): no
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
static int fsenv_dir_open(const char *name)
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
static bool fsenv_ours(const char *name)
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
	_cleanup_free_ char *where = xasprintf("%s/envs/%s", fsd.s->home, name);
	_cleanup_close_ int efd = -1;

	if (store_read_only() || !fsenv_ours(name))
		return;
	efd = fsenv_dir_open(name);
	if (efd >= 0 && env_views_add(efd, where, path) < 0)
		fs_log("env %s: %s", name, vf_last_error());
}

/* The identity of envs/NAME/env now, to notice replacement: 0, -ENOENT,
 * or -EIO (a symlink in the way, logged). */
static int fsenv_file_stat(const char *name, struct stat *st)
{
	_cleanup_close_ int dfd = fsenv_dir_open(name);
	_cleanup_free_ char *where = xasprintf("%s/envs/%s", fsd.s->home, name);
	int r = dfd >= 0 ? env_manifest_stat(dfd, where, st) : dfd;

	if (r == -ENOENT)
		return -ENOENT;
	if (r < 0 && dfd >= 0)
		fs_log("env %s: %s", name, vf_last_error());
	return r < 0 ? -EIO : 0;
}

static void fsenv_make_root(struct fsenv *e)
{
	struct node *r = node_new_root(e);
	const struct tree_node *tn;

	view_root(e->view, &r->dir);
	tn = view_node(e->view, r->dir.src[0]);
	r->mode = tn->mode;
	view_dir_mtime(e->view, &r->dir, &r->mtime);
	_cleanup_free_ char *up = xasprintf("%s/%s", e->name, env_upper(e->env));
	_cleanup_close_ int efd = fsenv_dir_open(e->name);
	if (layer_dir_open(efd, env_upper(e->env), &r->up) < 0 || r->up.fd < 0)
		fs_log("env %s: its writable layer %s/envs/%s cannot be opened (a symbolic link, or missing)", e->name,
		       fsd.s->home, up);
	e->root = r;
}

/*
 * The env was replaced: the old one lives on, read-only, for whoever still
 * holds its nodes (a shell's working directory, open files); new lookups
 * get the new one.
 */
void fsenv_retire(struct fsenv *e)
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
struct fsenv *fsenv_current(const char *name)
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
 * by then (fsenv_claim()).
 */
static bool fsenv_lock_once(const char *name)
{
	bool created;
	uint64_t *slot = strmap_put(&fsd.env_locks, name, strlen(name), &created);

	if (*slot >= 2)
		return true;
	if (!fsenv_ours(name)) {
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

bool fsenv_claim(struct fsenv *e)
{
	if (fsenv_lock_once(e->name))
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

/* fsenv_absorbed()'s plan for one directory node (as dirs[i]), and where to find it. */
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
int fsenv_absorbed(struct fsenv *e, bool (*took)(void *, dev_t, ino_t), void *ctx, char **trash)
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
			_cleanup_close_ int efd = fsenv_dir_open(e->name);
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
	if (fsenv_file_stat(e->name, &st) == 0) {
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
	*trash = env_layer_trash(fsd.s, e->name, old_layer);
	return 0;
}

struct fsenv *fsenv_get(const char *name, size_t len, int *err)
{
	_cleanup_free_ char *n = xstrndup(name, len);
	struct stat st;
	struct fsenv *e;

	*err = ENOENT;
	if (!env_valid_name(n))
		return NULL;
	int r = fsenv_file_stat(n, &st);
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
		fsenv_retire(e);
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
		e->readonly = store_read_only() || !fsenv_lock_once(n);
		e->loaded_ino = st.st_ino;
		e->loaded_mtime = st.st_mtim;
		e->workfd = -1;
		_cleanup_close_ int efd = store_read_only() || !fsenv_ours(n) ? -1 : fsenv_dir_open(n);
		if (efd >= 0) {
			_cleanup_free_ char *where = xasprintf("%s/envs/%s", fsd.s->home, n);
			e->workfd = env_work_open(efd, where);
			if (e->workfd < 0) {
				fs_log("env %s: %s", n, vf_last_error());
				e->workfd = -1;
			}
		}
		record_view_path(n, e->path);
		e->next = fsd.envs;
		fsd.envs = e;
	}
	if (!e->root)
		fsenv_make_root(e);
	return e;
}

/* The list of envs changed (housekeeping.c saw it): list them again. */
void envs_changed(void)
{
	struct stat st;

	fsd.env_names_stale = true;
	if (fstat(fsd.s->envs_fd, &st) == 0)
		fsd.envs_mtime = st.st_mtim;
}

/* Changing env e: 0, or -ESTALE (replaced) / -EROFS (not ours to change) /
 * -EIO (its work directory could not be opened: logged when it was met). */
int fsenv_writable(struct fsenv *e)
{
	return e->stale ? -ESTALE : e->readonly && !fsenv_claim(e) ? -EROFS : e->workfd < 0 ? -EIO : 0;
}

/* Changing through node n: also -ESTALE if it names nothing any more. */
int node_writable(const struct node *n)
{
	return n->gone ? -ESTALE : fsenv_writable(n->env);
}
