/*
 * maint.c - store listing, du, verify and gc (see maint.h).
 */
#include "maint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "distinfo.h"
#include "env.h"
#include "layer.h"
#include "requirement.h"
#include "tree.h"
#include "util.h"
#include "view.h"

/* ---- iterating the store's directories -------------------------------------- */

typedef int (*dir_fn)(void *ctx, int dfd, const char *name, const struct stat *st);

/* Call fn for each entry of dirfd/path (not "." and ".."). */
static int each_entry(int at, const char *path, dir_fn fn, void *ctx)
{
	DIR *d = opendir_beneath(at, path);
	struct dirent *de;
	int r = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d)) && r == 0) {
		struct stat st;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		r = fn(ctx, dirfd(d), de->d_name, &st);
	}
	closedir(d);
	return r;
}

/* ---- packages --------------------------------------------------------------- */

struct pkg_list {
	struct store *s;
	struct pkg_info *v;
	size_t n, cap;
	const char *name; /* current package directory */
};

static int add_pkg(void *p, int dfd, const char *file, const struct stat *st)
{
	struct pkg_list *l = p;
	struct objid id;
	struct tree *t;
	_cleanup_close_ int fd = -1;

	(void)dfd;
	if (!S_ISREG(st->st_mode) || objid_parse(file, strlen(file), &id) < 0)
		return 0;
	fd = store_object_open(l->s, &id);
	_cleanup_free_ char *what = xasprintf("packages/%s/%s", l->name, file);
	if (fd < 0)
		return 0; /* an index entry whose manifest never landed (gc drops it) */
	if (tree_map_fd(fd, what, &t) < 0)
		t = NULL; /* listed anyway, so the damage is visible */
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	struct pkg_info *pi = &l->v[l->n++];
	memset(pi, 0, sizeof(*pi));
	pi->id = id;
	pi->name = xstrdup(l->name);
	pi->version = t ? tree_strdup(t, TREE_STR_VERSION) : xstrdup("(damaged)");
	pi->tags = t ? tree_strdup(t, TREE_STR_TAGS) : xstrdup("");
	pi->files = t ? t->hdr->n_files : 0;
	pi->bytes = t ? t->hdr->total_bytes : 0;
	tree_free(t);
	return 0;
}

static int add_pkg_dir(void *p, int dfd, const char *name, const struct stat *st)
{
	struct pkg_list *l = p;

	(void)dfd;
	if (!S_ISDIR(st->st_mode) || name[0] == '.')
		return 0;
	l->name = name;
	return each_entry(l->s->packages_fd, name, add_pkg, l);
}

static int pkg_cmp(const void *a, const void *b)
{
	const struct pkg_info *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	return pep440_cmp(x->version, y->version);
}

int store_list_packages(struct store *s, struct pkg_info **out, size_t *n)
{
	struct pkg_list l = {.s = s};
	char **names;
	size_t nn;
	int r = each_entry(s->packages_fd, ".", add_pkg_dir, &l);

	if (r < 0)
		return vf_error_errno(-r, "%s/packages", s->home);
	if (l.n)
		qsort(l.v, l.n, sizeof(*l.v), pkg_cmp);
	if (env_list(s, &names, &nn) == 0) {
		for (size_t i = 0; i < nn; i++) {
			struct env *e;
			if (env_load(s, names[i], &e) < 0)
				continue;
			for (size_t k = 0; k < e->n_pkgs; k++)
				for (size_t j = 0; j < l.n; j++)
					if (objid_equal(&l.v[j].id, &e->pkgs[k].id) &&
					    !strcmp(l.v[j].name, e->pkgs[k].name))
						l.v[j].refs++;
			env_free(e);
		}
		env_list_free(names, nn);
	}
	*out = l.v;
	*n = l.n;
	return 0;
}

void pkg_info_free(struct pkg_info *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(p[i].name);
		free(p[i].version);
		free(p[i].tags);
	}
	free(p);
}

/* ---- marking ------------------------------------------------------------------ */

static void mark(struct strmap *m, const struct objid *id)
{
	char hex[OBJID_STR_MAX];

	objid_format(id, hex);
	strmap_put(m, hex, strlen(hex), NULL);
}

static void report(maint_report_fn fn, void *ctx, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void report(maint_report_fn fn, void *ctx, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (fn)
		fn(ctx, msg);
}

/* Mark the objects a tree refers to; report the ones that are missing. */
static int mark_tree(struct store *s, struct tree *t, const char *what, struct strmap *objects, maint_report_fn fn,
		     void *ctx)
{
	int problems = 0;

	for (uint32_t i = 0; i < t->n; i++) {
		const struct tree_node *n = tree_node(t, i);
		struct objid id;
		if (!S_ISREG(n->mode))
			continue;
		tree_node_objid(n, &id);
		if (objects)
			mark(objects, &id);
		if (fn && !store_object_exists(s, &id)) {
			char hex[OBJID_STR_MAX];
			_cleanup_buf_ struct buf p = {0};
			objid_path(&id, hex);
			tree_path(t, i, &p);
			report(fn, ctx, "%s: %s: object objects/%s is missing", what, p.data, hex);
			problems++;
		}
	}
	return problems;
}

int store_mark_env(struct store *s, const char *name, struct strmap *objects, struct strmap *packages,
		   maint_report_fn fn, void *ctx, bool *unreadable)
{
	struct env *e;
	struct tree *t;
	int problems = 0, r;

	r = env_load(s, name, &e);
	if (r == -ENOENT && !env_exists(s, name)) {
		/* removed since it was listed: it holds nothing to keep */
		vf_clear_error();
		return 0;
	}
	if (r < 0) {
		report(fn, ctx, "%s", vf_last_error());
		*unreadable = true;
		return 1;
	}
	if (fn) {
		_cleanup_free_ char *said = NULL;
		if (env_manifest_name(s, name, &said) == 0 && strcmp(said, name)) {
			report(fn, ctx,
			       "env %s: its manifest calls it %s (its directory was renamed by hand?): "
			       "`venvfs absorb %s` or `venvfs mv` puts its own name in it",
			       name, said, name);
			problems++;
		}
		vf_clear_error();
	}
	if (objects) {
		mark(objects, &e->tree);
		if (e->has_mtimes)
			mark(objects, &e->mtimes);
	}
	_cleanup_free_ char *what = xasprintf("env %s tree", name);
	if (view_map_tree(s, &e->tree, what, &t) < 0) {
		char hex[OBJID_STR_MAX];
		objid_path(&e->tree, hex);
		report(fn, ctx, "env %s: its tree objects/%s is missing or damaged", name, hex);
		problems++;
		*unreadable = true;
	} else {
		problems += mark_tree(s, t, what, objects, fn, ctx);
		tree_free(t);
	}
	if (fn && e->has_mtimes && !store_object_exists(s, &e->mtimes)) {
		char hex[OBJID_STR_MAX];
		objid_path(&e->mtimes, hex);
		report(fn, ctx, "env %s: its mtimes record objects/%s is missing", name, hex);
		problems++;
	}
	for (size_t k = 0; k < e->n_pkgs; k++) {
		char hex[OBJID_STR_MAX], path[OBJID_STR_MAX];
		objid_format(&e->pkgs[k].id, hex);
		objid_path(&e->pkgs[k].id, path);
		_cleanup_free_ char *key = xasprintf("%s/%s", e->pkgs[k].name, hex);
		bool created = true;
		if (packages)
			strmap_put(packages, key, strlen(key), &created);
		if (!created)
			continue; /* already marked through another env */
		if (objects)
			mark(objects, &e->pkgs[k].id);
		_cleanup_free_ char *pwhat =
			xasprintf("package %s %s (objects/%s)", e->pkgs[k].name, e->pkgs[k].version, path);
		if (view_map_tree(s, &e->pkgs[k].id, pwhat, &t) < 0) {
			report(fn, ctx, "env %s: package %s %s (objects/%s) is missing or damaged", name,
			       e->pkgs[k].name, e->pkgs[k].version, path);
			problems++;
			*unreadable = true;
			continue;
		}
		problems += mark_tree(s, t, pwhat, objects, fn, ctx);
		tree_free(t);
	}
	env_free(e);
	return problems;
}

/* ---- du ----------------------------------------------------------------------- */

struct du_walk {
	uint64_t blocks, apparent, objects;
};

static int du_entry(void *p, int dfd, const char *name, const struct stat *st)
{
	struct du_walk *w = p;

	w->blocks += (uint64_t)st->st_blocks * 512;
	if (S_ISREG(st->st_mode))
		w->apparent += (uint64_t)st->st_size;
	if (S_ISDIR(st->st_mode))
		return each_entry(dfd, name, du_entry, w);
	return 0;
}

static int count_object(void *p, int dfd, const char *name, const struct stat *st)
{
	struct du_walk *w = p;

	(void)name;
	(void)dfd;
	if (S_ISREG(st->st_mode))
		w->objects++;
	return 0;
}

static int count_fanout(void *p, int dfd, const char *name, const struct stat *st)
{
	(void)dfd;
	if (!S_ISDIR(st->st_mode))
		return 0;
	struct du_walk *w = p;
	return each_entry(dfd, name, count_object, w);
}

/* The version pyvenv.cfg (in the writable layer's directory up) names, or NULL. */
static char *layer_python(const struct layer_dir *up)
{
	_cleanup_buf_ struct buf text = {0};
	struct pyvenv_cfg cfg = {0};
	char *v = NULL;

	if (up->fd < 0 || read_file_beneath(up->fd, NULL, "pyvenv.cfg", 1 << 16, &text) < 0) {
		vf_clear_error();
		return NULL;
	}
	if (pyvenv_cfg_parse(text.data, text.len, &cfg) == 0) {
		/* venv writes "version", virtualenv and uv "version_info" (3.11.7.final.0) */
		const char *val = pyvenv_cfg_get(&cfg, "version_info");
		val = val ? val : pyvenv_cfg_get(&cfg, "version");
		size_t len = 0;
		for (int dots = 0; val && val[len] && (val[len] != '.' || ++dots < 3); len++) {
		}
		v = val && len ? xstrndup(val, len) : NULL;
	}
	pyvenv_cfg_free(&cfg);
	return v;
}

int env_summary(struct store *s, struct env *e, struct env_summary *out)
{
	struct view *v = NULL;
	struct layer_dir up = {.fd = -1};
	struct view_dir vd = {0};

	memset(out, 0, sizeof(*out));
	if (!env_has_layer_content(s, e)) {
		/* as its manifest says: a listing of 1,000 envs stays 0.1 s */
		out->python = xstrdup(e->python_version ? e->python_version : "?");
		out->distributions = e->n_pkgs;
		return 0;
	}
	int r = view_open(s, e, NULL, &v);
	if (r < 0)
		return r;
	_cleanup_close_ int efd = openat_beneath(s->envs_fd, e->name, O_RDONLY | O_DIRECTORY, 0);
	if (efd >= 0)
		layer_dir_open(efd, env_upper(e), &up);
	out->python = layer_python(&up);
	if (!out->python)
		out->python = xstrdup(e->python_version ? e->python_version : "?");
	if (up.fd >= 0) {
		struct du_walk w = {0};
		each_entry(efd, env_upper(e), du_entry, &w);
		out->layer_bytes = w.blocks;
	}
	/* lib/pythonX.Y/site-packages of that Python, through both layers */
	const char *dot = strchr(out->python, '.');
	const char *dot2 = dot ? strchr(dot + 1, '.') : NULL;
	_cleanup_free_ char *pyxy = dot2 ? xasprintf("python%.*s", (int)(dot2 - out->python), out->python)
					 : xasprintf("python%s", out->python);
	const char *parts[] = {"lib", pyxy, "site-packages"};
	view_root(v, &vd);
	for (size_t i = 0; i < ARRAY_SIZE(parts); i++) {
		struct layer_dir cu = {.fd = -1};
		struct view_dir cv = {0};
		layer_dir_open(up.fd, parts[i], &cu);
		layer_child_lower(v, &vd, parts[i], &cu, &cv);
		layer_dir_close(&up);
		view_dir_free(&vd);
		up = cu;
		vd = cv;
	}
	struct merged_name *names = NULL;
	size_t n = 0;
	if (layer_merge_list(v, &up, &vd, &names, &n) == 0)
		for (size_t i = 0; i < n; i++)
			out->distributions += str_has_suffix(names[i].name, ".dist-info");
	vf_clear_error();
	layer_merge_list_free(names, n);
	layer_dir_close(&up);
	view_dir_free(&vd);
	view_free(v);
	return 0;
}

void env_summary_free(struct env_summary *sum)
{
	free(sum->python);
	sum->python = NULL;
}

/* What a tree's files would take as plain files (4 KiB blocks). */
static void tree_usage(struct tree *t, uint64_t *blocks, uint64_t *apparent)
{
	for (uint32_t i = 0; i < t->n; i++) {
		const struct tree_node *n = tree_node(t, i);
		if (S_ISREG(n->mode)) {
			*blocks += (n->size + 4095) / 4096 * 4096;
			*apparent += n->size;
		} else if (S_ISDIR(n->mode) && i >= t->hdr->n_roots) {
			*blocks += 4096;
		}
	}
}

int store_du(struct store *s, struct store_du *out)
{
	struct du_walk w = {0};
	struct pkg_info *pkgs;
	size_t np, ne;
	char **names;
	int r;

	memset(out, 0, sizeof(*out));
	r = each_entry(s->fd, ".", du_entry, &w);
	if (r < 0)
		return vf_error_errno(-r, "%s", s->home);
	out->stored_bytes = w.blocks;
	out->stored_apparent = w.apparent;
	each_entry(s->objects_fd, ".", count_fanout, &w);
	out->objects = w.objects;
	r = store_list_packages(s, &pkgs, &np);
	if (r < 0)
		return r;
	out->packages = np;
	pkg_info_free(pkgs, np);

	r = env_list(s, &names, &ne);
	if (r < 0)
		return r;
	out->envs = ne;
	struct strmap usage = {0}; /* package key -> index into cache */
	uint64_t *cache = NULL;
	size_t ncache = 0;
	for (size_t i = 0; i < ne; i++) {
		struct env *e;
		struct tree *t;
		if (env_load(s, names[i], &e) < 0)
			continue;
		_cleanup_close_ int fd = store_object_open(s, &e->tree);
		if (fd >= 0 && tree_map_fd(fd, "env tree", &t) == 0) {
			tree_usage(t, &out->logical_bytes, &out->logical_apparent);
			tree_free(t);
		}
		for (size_t k = 0; k < e->n_pkgs; k++) {
			char hex[OBJID_STR_MAX];
			objid_format(&e->pkgs[k].id, hex);
			_cleanup_free_ char *key = xasprintf("%s/%s", e->pkgs[k].name, hex);
			bool created;
			uint64_t *v = strmap_put(&usage, key, strlen(key), &created);
			if (created) {
				uint64_t b = 0, a = 0;
				_cleanup_close_ int pfd = store_object_open(s, &e->pkgs[k].id);
				if (pfd >= 0 && tree_map_fd(pfd, key, &t) == 0) {
					tree_usage(t, &b, &a);
					tree_free(t);
				}
				cache = xrealloc(cache, (ncache + 1) * 2 * sizeof(uint64_t));
				cache[2 * ncache] = b;
				cache[2 * ncache + 1] = a;
				*v = ncache++;
			}
			out->logical_bytes += cache[2 * *v];
			out->logical_apparent += cache[2 * *v + 1];
		}
		env_free(e);
	}
	free(cache);
	strmap_free(&usage);
	env_list_free(names, ne);
	return 0;
}

/* ---- verify -------------------------------------------------------------------- */

struct verifier {
	struct store *s;
	maint_report_fn fn;
	void *ctx;
	char (*names)[OBJID_STR_MAX]; /* every object, as "ab/cdef..." */
	size_t n, cap, next;
	uint64_t done, problems;
	pthread_mutex_t lock;
	struct progress prog;
	const char *dir; /* fan-out directory being collected, "ab" */
};

static int collect_object(void *p, int dfd, const char *name, const struct stat *st)
{
	struct verifier *v = p;
	(void)dfd;
	if (name[0] == '.')
		return 0; /* ".tmp.*": an interrupted insert, not an object (gc removes it) */
	if (!S_ISREG(st->st_mode)) {
		/* never followed nor served (store.c opens objects without
		 * following anything): planted, or damage */
		report(v->fn, v->ctx, "objects/%s/%s is not a regular file (a symlink?), which the layout never makes",
		       v->dir, name);
		v->problems++;
		return 0;
	}
	if (v->n == v->cap) {
		v->cap = v->cap ? v->cap * 2 : 4096;
		v->names = xrealloc(v->names, v->cap * sizeof(*v->names));
	}
	snprintf(v->names[v->n++], OBJID_STR_MAX, "%s", name); /* fan-out prepended by caller */
	return 0;
}

static int collect_fanout(void *p, int dfd, const char *name, const struct stat *st)
{
	struct verifier *v = p;
	size_t before = v->n;

	if (!S_ISDIR(st->st_mode)) {
		report(v->fn, v->ctx, "objects/%s is not a directory (a symlink?), which the layout never makes", name);
		v->problems++;
		return 0;
	}
	v->dir = name;
	int r = each_entry(dfd, name, collect_object, v);
	for (size_t i = before; i < v->n; i++) {
		char tmp[OBJID_STR_MAX];
		snprintf(tmp, sizeof(tmp), "%.2s/%.40s", name, v->names[i]);
		memcpy(v->names[i], tmp, OBJID_STR_MAX);
	}
	return r;
}

static void *verify_worker(void *p)
{
	struct verifier *v = p;

	for (;;) {
		size_t i = __atomic_fetch_add(&v->next, 1, __ATOMIC_RELAXED);
		if (i >= v->n)
			break;
		const char *path = v->names[i];
		char hex[OBJID_STR_MAX];
		struct objid id;
		snprintf(hex, sizeof(hex), "%.2s%s", path, path + 3);
		int r;
		if (strlen(path) < 3 || path[2] != '/' || objid_parse(hex, strlen(hex), &id) < 0) {
			pthread_mutex_lock(&v->lock);
			report(v->fn, v->ctx, "objects/%s: not an object name", path);
			v->problems++;
			pthread_mutex_unlock(&v->lock);
			continue;
		}
		r = store_object_verify(v->s, &id, NULL);
		pthread_mutex_lock(&v->lock);
		if (r < 0) {
			report(v->fn, v->ctx, "%s", vf_last_error());
			v->problems++;
		}
		v->done++;
		progress_update(&v->prog, v->done, v->n, 0);
		pthread_mutex_unlock(&v->lock);
	}
	return NULL;
}

struct pkgdir_ctx {
	struct verifier *v;
	struct verify_stats *st;
	const char *name;
};

static int verify_pkg(void *p, int dfd, const char *file, const struct stat *st)
{
	struct pkgdir_ctx *c = p;
	struct objid id;
	struct tree *t;
	_cleanup_free_ char *what = xasprintf("packages/%s/%s", c->name, file);

	(void)dfd;
	if (!S_ISREG(st->st_mode) || file[0] == '.')
		return 0;
	if (objid_parse(file, strlen(file), &id) < 0) {
		report(c->v->fn, c->v->ctx, "%s: not a package name", what);
		c->v->problems++;
		return 0;
	}
	_cleanup_close_ int fd = store_object_open(c->v->s, &id);
	if (fd == -ENOENT)
		return 0; /* an index entry whose manifest never landed: harmless, gc drops it */
	c->st->packages++;
	if (fd < 0 || tree_map_fd(fd, what, &t) < 0) {
		report(c->v->fn, c->v->ctx, "%s", vf_last_error());
		c->v->problems++;
		return 0;
	}
	size_t nl;
	const char *hn = tree_str(t, TREE_STR_NAME, &nl);
	if (t->hdr->kind != TREE_PACKAGE || nl != strlen(c->name) || memcmp(hn, c->name, nl) != 0) {
		report(c->v->fn, c->v->ctx, "%s: not a package of %s", what, c->name);
		c->v->problems++;
	} else {
		c->v->problems += (uint64_t)mark_tree(c->v->s, t, what, NULL, c->v->fn, c->v->ctx);
	}
	tree_free(t);
	return 0;
}

static int verify_pkg_dir(void *p, int dfd, const char *name, const struct stat *st)
{
	struct pkgdir_ctx *c = p;

	(void)dfd;
	if (!S_ISDIR(st->st_mode) || name[0] == '.')
		return 0;
	c->name = name;
	return each_entry(c->v->s->packages_fd, name, verify_pkg, c);
}

/*
 * Symbolic links where the layout has a file or a directory of its own:
 * nothing under HOME is ever followed through one (util.h
 * openat_beneath()), so an env, its manifest, views, work or layer
 * directory, or run/, log/, cache/ or what is in them, made a symlink is
 * refused where it is used; verify names each. (What is inside a
 * writable layer is the env's own files, symlinks included.)
 */
static void verify_link(struct verifier *v, int at, const char *path, const char *shown)
{
	struct stat st;

	if (fstatat(at, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
		report(v->fn, v->ctx, "%s is a symbolic link, which the store layout never makes", shown);
		v->problems++;
	}
}

/* dir (a directory of HOME) and the entries in it: no symlink. */
static void verify_dir_links(struct verifier *v, const char *dir)
{
	DIR *d = opendir_beneath(v->s->fd, dir);
	struct dirent *de;

	verify_link(v, v->s->fd, dir, dir);
	while (d && (de = readdir(d))) {
		_cleanup_free_ char *shown = xasprintf("%s/%s", dir, de->d_name);
		verify_link(v, dirfd(d), de->d_name, shown);
	}
	if (d)
		closedir(d);
}

static void verify_env_links(struct verifier *v)
{
	DIR *d = opendir_at(v->s->envs_fd, ".");
	struct dirent *de;

	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		_cleanup_free_ char *shown = xasprintf("envs/%s", de->d_name);
		verify_link(v, dirfd(d), de->d_name, shown);
		DIR *e = opendir_beneath(dirfd(d), de->d_name);
		struct dirent *ee;
		while (e && (ee = readdir(e))) {
			if (!env_is_own_entry(ee->d_name))
				continue;
			_cleanup_free_ char *sub = xasprintf("envs/%s/%s", de->d_name, ee->d_name);
			verify_link(v, dirfd(e), ee->d_name, sub);
		}
		if (e)
			closedir(e);
	}
	if (d)
		closedir(d);
}

int store_verify(struct store *s, bool progress, maint_report_fn fn, void *ctx, struct verify_stats *st)
{
	struct verifier v = {.s = s, .fn = fn, .ctx = ctx};
	pthread_t th[8];
	unsigned nt = (unsigned)MIN(MAX(sysconf(_SC_NPROCESSORS_ONLN), 1), (long)ARRAY_SIZE(th));
	char **names;
	size_t ne;

	memset(st, 0, sizeof(*st));
	pthread_mutex_init(&v.lock, NULL);
	each_entry(s->objects_fd, ".", collect_fanout, &v);
	progress_init(&v.prog, "verifying objects", progress);
	unsigned started = 0;
	for (unsigned t = 0; t < nt; t++)
		if (pthread_create(&th[t], NULL, verify_worker, &v) == 0)
			started++;
	if (!started)
		verify_worker(&v);
	for (unsigned t = 0; t < started; t++)
		pthread_join(th[t], NULL);
	progress_done(&v.prog);
	st->objects = v.n;

	struct pkgdir_ctx pc = {.v = &v, .st = st};
	each_entry(s->packages_fd, ".", verify_pkg_dir, &pc);

	verify_env_links(&v);
	verify_dir_links(&v, "run");
	verify_dir_links(&v, "log");
	verify_dir_links(&v, "cache");

	if (env_list(s, &names, &ne) == 0) {
		for (size_t i = 0; i < ne; i++) {
			bool unreadable = false;
			v.problems += (uint64_t)store_mark_env(s, names[i], NULL, NULL, fn, ctx, &unreadable);
			st->envs++;
		}
		env_list_free(names, ne);
	}
	st->problems = v.problems;
	free(v.names);
	pthread_mutex_destroy(&v.lock);
	return st->problems ? -EIO : 0;
}

/* ---- gc --------------------------------------------------------------------------- */

struct sweeper {
	struct store *s;
	struct strmap *objects, *packages;
	struct gc_stats *st;
	const char *dir;
};

static int sweep_object(void *p, int dfd, const char *name, const struct stat *st)
{
	struct sweeper *w = p;
	char hex[OBJID_STR_MAX];

	if (!S_ISREG(st->st_mode))
		return 0;
	if (name[0] == '.') {
		/* a named temp file of an interrupted insert */
		if (unlinkat(dfd, name, 0) == 0)
			w->st->temp_files++;
		return 0;
	}
	snprintf(hex, sizeof(hex), "%s%s", w->dir, name);
	if (strmap_get(w->objects, hex, strlen(hex)))
		return 0;
	if (unlinkat(dfd, name, 0) == 0) {
		w->st->objects++;
		w->st->object_bytes += (uint64_t)st->st_size;
	}
	return 0;
}

static int sweep_fanout(void *p, int dfd, const char *name, const struct stat *st)
{
	struct sweeper *w = p;

	if (!S_ISDIR(st->st_mode))
		return 0;
	w->dir = name;
	return each_entry(dfd, name, sweep_object, w);
}

static int sweep_package(void *p, int dfd, const char *name, const struct stat *st)
{
	struct sweeper *w = p;
	_cleanup_free_ char *key = xasprintf("%s/%s", w->dir, name);

	if (!S_ISREG(st->st_mode))
		return 0;
	if (strmap_get(w->packages, key, strlen(key)))
		return 0;
	if (unlinkat(dfd, name, 0) == 0)
		w->st->packages++;
	return 0;
}

static int sweep_package_dir(void *p, int dfd, const char *name, const struct stat *st)
{
	struct sweeper *w = p;

	if (!S_ISDIR(st->st_mode))
		return 0;
	w->dir = name;
	each_entry(dfd, name, sweep_package, w);
	unlinkat(dfd, name, AT_REMOVEDIR); /* fails if still in use: fine */
	return 0;
}

/* Interpreter skeletons create composes from (compose.c): no env names
 * their trees, so they go with the index, before any object does. */
static int sweep_skeleton(void *p, int dfd, const char *name, const struct stat *st)
{
	(void)p;
	(void)st;
	if (str_has_prefix(name, "python-"))
		unlinkat(dfd, name, 0);
	return 0;
}

static int sweep_tmp(void *p, int dfd, const char *name, const struct stat *st)
{
	struct sweeper *w = p;

	(void)st;
	if (rm_rf_at(dfd, name) == 0)
		w->st->temp_files++;
	return 0;
}

static int sweep_env_leftover(void *p, int dfd, const char *name, const struct stat *st)
{
	struct sweeper *w = p;

	if (S_ISDIR(st->st_mode) && env_is_tmp_name(name) && rm_rf_at(dfd, name) == 0)
		w->st->leftover_envs++;
	return 0;
}

static int mark_layer(void *p, int dfd, const char *name, const struct stat *st)
{
	bool trash;

	if (!S_ISDIR(st->st_mode) || !env_is_layer_name(name, &trash))
		return 0;
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = layer_mark_objects(fd, p);
	close(fd);
	return r;
}

/* Objects named by metacopies in the writable layers of env name. */
static int mark_env_layers(struct store *s, const char *name, struct strmap *objects)
{
	int r = each_entry(s->envs_fd, name, mark_layer, objects);

	return r == -ENOENT ? 0 : r;
}

int store_gc(struct store *s, bool progress, struct gc_stats *st)
{
	struct strmap objects = {0}, packages = {0};
	struct sweeper w = {.s = s, .objects = &objects, .packages = &packages, .st = st};
	char **names;
	size_t ne;
	int r;

	(void)progress;
	memset(st, 0, sizeof(*st));
	/* In a group store, only the store's owner (who owns every sticky
	 * directory) or root may delete what other accounts put there. */
	struct stat home = {0};
	if (s->shared && geteuid() != 0 && (fstat(s->fd, &home) < 0 || home.st_uid != geteuid()))
		return vf_error(EPERM, "%s is a group store: it is collected by its owner (uid %u) or root", s->home,
				(unsigned)home.st_uid);
	r = store_lock(s, LOCK_EX, false);
	if (r == -EWOULDBLOCK) {
		if (isatty(STDERR_FILENO))
			fputs("venvfs gc: waiting for other venvfs commands to finish...\n", stderr);
		r = store_lock(s, LOCK_EX, true);
	}
	if (r < 0)
		return r;
	r = env_list(s, &names, &ne);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < ne; i++) {
		bool unreadable = false;
		if (env_torn(s, names[i])) {
			/* a create cut short by a crash: nothing of its own */
			if (env_remove(s, names[i]) == 0)
				st->leftover_envs++;
			continue;
		}
		store_mark_env(s, names[i], &objects, &packages, NULL, NULL, &unreadable);
		/* files renamed inside a writable layer still name their
		 * objects (in every layer directory: a daemon may still show
		 * one that absorb replaced) */
		if (mark_env_layers(s, names[i], &objects) < 0)
			unreadable = true;
		if (unreadable) {
			/* an env we cannot read: deleting what it might use would
			 * turn a damaged env into a lost one */
			r = vf_error_prefix(EIO, "env %s cannot be read, not collecting garbage: ", names[i]);
			env_list_free(names, ne);
			goto out;
		}
	}
	env_list_free(names, ne);
	/*
	 * The index first, and the skeleton cache, durably, then the
	 * objects: `create` composes from indexed packages and cached
	 * skeletons, so a gc killed mid-sweep must never leave one that has
	 * lost objects.
	 */
	each_entry(s->packages_fd, ".", sweep_package_dir, &w);
	each_entry(s->fd, "cache", sweep_skeleton, &w);
	if (syncfs(s->fd) < 0) {
		r = vf_error_errno(errno, "syncfs %s", s->home);
		goto out;
	}
	each_entry(s->objects_fd, ".", sweep_fanout, &w);
	each_entry(s->tmp_fd, ".", sweep_tmp, &w);
	each_entry(s->envs_fd, ".", sweep_env_leftover, &w);
	syncfs(s->fd);
out:
	store_unlock(s);
	strmap_free(&objects);
	strmap_free(&packages);
	return r;
}
