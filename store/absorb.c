/*
 * absorb.c - moving what pip and uv installed through the mount into the
 * store (see venv.h).
 *
 * An env shows V = its writable layer U over its read-only layers M (the
 * env tree and its packages). After `pip install` through the mount, U
 * holds whole distributions; after `pip uninstall`, whiteouts hide
 * packages of M. Absorb computes
 *
 *   M'  the package list with every complete distribution of U added as a
 *       package, and every package no file of which still shows removed;
 *   U'  the smallest writable layer with U' over M' == V;
 *
 * and switches the env to (M', U') in one step: the env manifest names
 * its writable layer directory, so renaming the new manifest into place
 * replaces both at once. The env shows the same files before and after,
 * with two differences the design accepts (docs/design.md, "Absorb"):
 * absorbed files show the store's time (TREE_STORE_MTIME) except sources
 * with bytecode, and a distribution the store has already, compiled
 * elsewhere, shows that package's bytecode (package.h), which is what
 * lets the same package installed into two envs be stored once.
 *
 * Phases:
 *   1. find     *.dist-info directories of site-packages with a writable
 *               part and a RECORD;
 *   2. check    each RECORD row: inside the env, present, not behind a
 *               symlink, of the size and SHA-256 RECORD says. A
 *               distribution failing any check stays in the writable
 *               layer, and the report says why; the rest go on. Unlisted
 *               bytecode joins the package of its source;
 *   3. store    each file's stored form goes into the store. A file of
 *               the writable layer stored as it is becomes the object by
 *               a hard link: no data is copied (the store and the
 *               writable layers share HOME's file system). Valid bytecode
 *               waits: a distribution the store has already in an
 *               equivalent package takes that package instead, and its
 *               bytecode is not stored again;
 *   4. build    package manifests, the new package list and mtimes;
 *   5. diff     U' is built beside U: hard links of what stays (the same
 *               inodes: open files and file identities survive),
 *               whiteouts and metacopies for the rest;
 *   6. commit   objects and manifests durable, then the env manifest
 *               renamed into place (the switch), then U deleted.
 *
 * Crash safety: until the switch, nothing the env uses has changed (new
 * objects are temp files or unreferenced, U' is a directory nothing
 * names); after it, only the old layer is left to delete, which the next
 * absorb (or mount) sweeps. A full disk fails the absorb cleanly, with
 * nothing changed, and the next one starts again.
 *
 * Concurrency: the store lock (shared) keeps gc out. An env is absorbed by
 * whoever holds its env lock: the daemon serving it writable, or the
 * command when no daemon does. The daemon runs absorb_prepare() while it
 * goes on serving, then, under its own lock, checks that the env did not
 * change meanwhile (absorb_changed() and its own change counter) and
 * runs absorb_commit().
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "distinfo.h"
#include "env.h"
#include "ingest.h"
#include "layer.h"
#include "package.h"
#include "pyc.h"
#include "store.h"
#include "template.h"
#include "tree.h"
#include "venv.h"
#include "view.h"
#include "workers.h"

#define NONE UINT32_MAX
/* directories kept open while absorbing: at most this, and at most an
 * eighth of the descriptor limit (the daemon's nodes use the rest) */
#define MAX_OPEN_DIRS 256

/* A directory of the view V (writable part and read-only sources). */
struct vdir {
	bool ok;             /* a directory shows there */
	bool has_up;         /* it has a writable part */
	struct layer_dir up; /* that part (fd opened on demand, see up_fd()) */
	struct view_dir lo;  /* its read-only sources */
	uint32_t mode;
	struct timespec mtime;
	char *path; /* env-relative */
};

enum asrc {
	A_UPPER, /* a file of the writable layer */
	A_META,  /* a metacopy: a store object under a new name */
	A_LOWER, /* a file of the read-only layers */
};

/* One file of a distribution being absorbed. */
struct afile {
	char *path;       /* env-relative */
	const char *name; /* its last component (into path) */
	struct vdir *dir;
	unsigned root;   /* TREE_ROOT_* */
	const char *rel; /* path relative to root (into path) */
	int32_t row;     /* its RECORD row, -1 if unlisted */
	enum asrc src;
	uint32_t mode; /* as V shows it, type included */
	uint64_t size;
	struct timespec mtime;
	struct objid obj; /* A_META, A_LOWER: known; A_UPPER: once stored */
	char *target;     /* symlinks */
	uint32_t pyc_src; /* bytecode: index of its source in the dist */
	bool optional;    /* unlisted bytecode: left out if not valid */
	bool deferred;    /* valid bytecode not stored yet (phase 3) */
	bool keeps_mtime; /* a source with kept bytecode: presents its mtime */
	bool dropped;
	bool is_record;
	uint16_t tflags;
	uint64_t stored_size;
	bool linked; /* became its object by a hard link */
	dev_t dev;   /* A_UPPER: identity, and ctime once stored */
	ino_t ino;
	struct timespec ctime;
	uint8_t sha[32];
};

struct adist {
	char *dir;  /* env-relative path of the dist-info */
	char *what; /* "NAME: lib/.../foo-1.0.dist-info" for messages */
	struct buf record_text;
	struct record rec;
	unsigned *row_root;
	char **row_rel;
	struct afile *f;
	size_t nf, capf;
	uint32_t record_file; /* index of RECORD in f */
	struct dist_why why;  /* why it stays in the writable layer (why.any) */
	struct dist_meta meta;
	struct buf manifest;
	struct objid pkg_id;
	bool reused; /* pkg_id is an equivalent package the store had */
	int64_t *orig_mtimes;
	uint32_t n_nodes;
	uint64_t bytes;
};

struct absorb {
	struct store *s;
	const struct absorb_opts *o;
	struct absorb_stats *st;
	char *name;
	struct env *env, *env2;
	struct view *v, *v2;
	int env_fd;   /* HOME/envs/NAME */
	int upper_fd; /* its writable layer */
	int work_fd;  /* HOME/envs/NAME/work */
	char *site;
	char **views; /* paths the env was shown at */
	size_t n_views;
	struct strmap dirs; /* env path -> struct vdir * */
	struct vdir **dirv;
	size_t n_dirv;
	unsigned open_dirs, max_open_dirs;
	struct strmap owner; /* env path -> (dist index + 1) << 32 | file index */
	struct adist *d;
	size_t nd;
	struct store_txn *txn;
	bool store_kept; /* phase 3: store valid bytecode too */
	bool locked;
	char *new_upper; /* name of U' in HOME/envs/NAME */
	bool committed;
	bool nothing;            /* nothing to absorb or drop */
	bool *drop;              /* per package of env: dropped */
	struct strmap took;      /* "dev:ino" of writable-layer files absorbed */
	bool leftovers_found;    /* find_leftovers() ran */
	struct strmap leftovers; /* "dev:ino" -> links a killed absorb left */
	struct leftover *leftover;
	size_t n_leftover;
	/* phase 3 */
	pthread_mutex_t lock; /* the directory cache, leftovers, dist_why() while workers run */
	struct {
		uint32_t d, f;
	} * jobs;
	size_t n_jobs;
};

static void say(struct absorb *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(struct absorb *a, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (!msg)
		return;
	if (a->o && a->o->say)
		a->o->say(a->o->say_ctx, msg);
	else
		fprintf(stderr, "venvfs absorb: %s\n", msg);
}

/* ---- the view V, directory by directory --------------------------------------- */

/*
 * The writable part of d, open (at most MAX_OPEN_DIRS stay open: opening one
 * more closes the others, so a descriptor from here is good until the next
 * call only; dup() it to keep it longer).
 */
static void close_open_dirs(struct absorb *a)
{
	for (size_t i = 0; i < a->n_dirv; i++)
		if (a->dirv[i]->up.fd >= 0) {
			close(a->dirv[i]->up.fd);
			a->dirv[i]->up.fd = -1;
		}
	a->open_dirs = 0;
}

static int up_fd(struct absorb *a, struct vdir *d)
{
	if (!d->has_up)
		return -1;
	if (d->up.fd >= 0)
		return d->up.fd;
	if (a->open_dirs >= a->max_open_dirs)
		close_open_dirs(a);
	for (int again = 0; again < 2; again++) {
		d->up.fd = d->path[0] ? openat(a->upper_fd, d->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
				      : dup(a->upper_fd);
		if (d->up.fd >= 0 || (errno != EMFILE && errno != ENFILE) || !a->open_dirs)
			break;
		close_open_dirs(a); /* out of descriptors: ours go first */
	}
	if (d->up.fd >= 0)
		a->open_dirs++;
	return d->up.fd;
}

static void empty_dir(struct view_dir *d)
{
	d->src = xmalloc(sizeof(*d->src));
	d->n = 0;
	d->site_depth = -1;
}

/* The directory at path in V (cached; ok false if no directory shows there). */
static struct vdir *vdir_at(struct absorb *a, const char *path, size_t len)
{
	uint64_t *slot = strmap_get(&a->dirs, path, len);

	if (slot)
		return (struct vdir *)(uintptr_t)*slot;
	struct vdir *d = xcalloc(1, sizeof(*d));
	d->up.fd = -1;
	d->path = xstrndup(path, len);
	if (len == 0) {
		const struct tree_node *rn = tree_node(a->v->layers[0].tree, 0);
		d->ok = true;
		d->has_up = true;
		if (layer_dir_open(a->upper_fd, ".", &d->up) == 0 && d->up.fd >= 0)
			a->open_dirs++;
		view_root(a->v, &d->lo);
		d->mode = rn->mode;
		d->mtime = (struct timespec){rn->mtime_sec, rn->mtime_nsec};
	} else {
		const char *slash = memrchr(path, '/', len);
		struct vdir *p = vdir_at(a, path, slash ? (size_t)(slash - path) : 0);
		_cleanup_free_ char *name =
			slash ? xstrndup(slash + 1, len - (size_t)(slash + 1 - path)) : xstrndup(path, len);
		struct merged m;
		if (p->ok) {
			struct layer_dir pl = p->up;
			pl.fd = up_fd(a, p);
			if (layer_merge_lookup(a->v, &pl, &p->lo, name, &m) == 0) {
				if (m.upper == L_DIR) {
					d->ok = d->has_up = true;
					if (layer_dir_open(pl.fd, name, &d->up) == 0 && d->up.fd >= 0)
						a->open_dirs++;
					layer_child_lower(a->v, &p->lo, name, &d->up, &d->lo);
					d->mode = m.ent.st.st_mode;
					d->mtime = m.ent.st.st_mtim;
				} else if (m.upper == L_NONE && m.lower && S_ISDIR(view_node(a->v, m.src)->mode)) {
					const struct tree_node *tn = view_node(a->v, m.src);
					d->ok = true;
					layer_child_lower(a->v, &p->lo, name, NULL, &d->lo);
					d->mode = tn->mode;
					d->mtime = (struct timespec){tn->mtime_sec, tn->mtime_nsec};
				}
			}
		}
		if (!d->ok)
			empty_dir(&d->lo);
	}
	a->dirv = xrealloc(a->dirv, (a->n_dirv + 1) * sizeof(*a->dirv));
	a->dirv[a->n_dirv++] = d;
	*strmap_put(&a->dirs, path, len, NULL) = (uintptr_t)d;
	return d;
}

/*
 * What V shows at path: 0 and *m (its directory in *dirp), -ENOENT,
 * -ELOOP (a symlink on the way), -ENOTDIR (a file on the way).
 */
static int vlookup(struct absorb *a, const char *path, struct vdir **dirp, struct merged *m)
{
	const char *slash = strrchr(path, '/');
	size_t plen = slash ? (size_t)(slash - path) : 0;
	const char *name = slash ? slash + 1 : path;

	struct vdir *d = vdir_at(a, path, plen); /* resolves the way there */
	if (!d->ok)
		return -ENOENT;
	struct layer_dir pl = d->up;
	pl.fd = up_fd(a, d);
	int r = layer_merge_lookup(a->v, &pl, &d->lo, name, m);
	if (r < 0)
		return r;
	*dirp = d;
	if (!layer_merged_shows(m))
		return -ENOENT;
	return 0;
}

/* Is some component of path (not the last) a symlink in V? */
static bool behind_symlink(struct absorb *a, const char *path)
{
	for (const char *p = strchr(path, '/'); p; p = strchr(p + 1, '/')) {
		_cleanup_free_ char *pre = xstrndup(path, (size_t)(p - path));
		struct vdir *d;
		struct merged m;
		if (vlookup(a, pre, &d, &m) < 0)
			return false;
		if ((m.upper == L_FILE && S_ISLNK(m.ent.st.st_mode)) ||
		    (m.upper == L_NONE && m.lower && S_ISLNK(view_node(a->v, m.src)->mode)))
			return true;
	}
	return false;
}

/* Open the content of a regular file of V for reading. */
static int open_content(struct absorb *a, const struct afile *f)
{
	for (int again = 0;; again++) {
		int fd;
		if (f->src == A_UPPER) {
			int dfd = up_fd(a, f->dir);
			fd = dfd >= 0 ? openat(dfd, f->name, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
				      : -1;
			fd = fd >= 0 ? fd : -errno;
		} else {
			fd = store_object_open(a->s, &f->obj);
		}
		if ((fd != -EMFILE && fd != -ENFILE) || again || !a->open_dirs)
			return fd;
		close_open_dirs(a); /* out of descriptors: ours go first (under a->lock) */
	}
}

/* A whole small file of V (METADATA, RECORD...). */
static int read_small(struct absorb *a, const char *path, size_t max, struct buf *out)
{
	struct vdir *d;
	struct merged m;
	int r = vlookup(a, path, &d, &m);

	buf_reset(out);
	if (r < 0)
		return r;
	struct afile f = {.dir = d, .name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path};
	if (m.upper == L_FILE && S_ISREG(m.ent.st.st_mode)) {
		f.src = A_UPPER;
	} else if (m.upper == L_META) {
		f.src = A_META;
		f.obj = m.ent.obj;
	} else if (m.upper == L_NONE && S_ISREG(view_node(a->v, m.src)->mode) &&
		   !(view_node(a->v, m.src)->flags & TREE_F_TEMPLATE)) {
		f.src = A_LOWER;
		tree_node_objid(view_node(a->v, m.src), &f.obj);
	} else {
		return -EINVAL;
	}
	_cleanup_close_ int fd = open_content(a, &f);
	struct stat st;
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size > max)
		return -EFBIG;
	buf_grow(out, (size_t)st.st_size);
	ssize_t n = read_full(fd, out->data, (size_t)st.st_size);
	if (n < 0)
		return (int)n;
	out->len = (size_t)n;
	out->data[n] = '\0';
	return 0;
}

/* ---- 1. find ---------------------------------------------------------------------- */

static int find_dists(struct absorb *a)
{
	struct vdir *site = vdir_at(a, a->site, strlen(a->site));
	struct merged_name *names = NULL;
	size_t n = 0;

	if (!site->ok || !site->has_up)
		return 0;
	/* its own descriptor: reading each RECORD may evict site's (up_fd()) */
	struct layer_dir sl = site->up;
	_cleanup_close_ int sfd = dup(up_fd(a, site));
	sl.fd = sfd;
	int r = sfd < 0 ? -errno : layer_merge_list(a->v, &sl, &site->lo, &names, &n);
	if (r < 0)
		return vf_error_errno(-r, "%s/envs/%s: listing %s", a->s->home, a->name, a->site);
	for (size_t i = 0; i < n; i++) {
		struct merged m;
		if (!names[i].upper || !str_has_suffix(names[i].name, ".dist-info"))
			continue;
		if (layer_merge_lookup(a->v, &sl, &site->lo, names[i].name, &m) < 0 || m.upper != L_DIR)
			continue;
		_cleanup_free_ char *dir = xasprintf("%s/%s", a->site, names[i].name);
		_cleanup_free_ char *rp = xasprintf("%s/RECORD", dir);
		struct adist d = {0};
		r = read_small(a, rp, RECORD_MAX_BYTES, &d.record_text);
		if (r == -EFBIG) {
			dist_why(&d.why, "its RECORD is larger than %u MiB", RECORD_MAX_BYTES >> 20);
		} else if (r < 0) {
			/* no RECORD (yet): an install in progress, or not pip's */
			buf_free(&d.record_text);
			continue;
		}
		d.dir = steal_pointer(&dir);
		d.what = xasprintf("%s: %s", a->name, d.dir);
		d.record_file = NONE;
		a->d = xrealloc(a->d, (a->nd + 1) * sizeof(*a->d));
		a->d[a->nd++] = d;
	}
	layer_merge_list_free(names, n);
	return 0;
}

/* ---- 2. check ----------------------------------------------------------------------- */

static struct afile *add_file(struct adist *d, const char *path)
{
	if (d->nf == d->capf) {
		d->capf = d->capf ? d->capf * 2 : 64;
		d->f = xrealloc(d->f, d->capf * sizeof(*d->f));
	}
	struct afile *f = &d->f[d->nf++];
	memset(f, 0, sizeof(*f));
	f->path = xstrdup(path);
	f->row = -1;
	f->pyc_src = NONE;
	return f;
}

/* Is the symlink at path (target) inside the env? */
static bool link_inside(struct absorb *a, const char *path, const char *target)
{
	_cleanup_buf_ struct buf out = {0};
	const char *slash = strrchr(path, '/');
	_cleanup_free_ char *dir = slash ? xstrndup(path, (size_t)(slash - path)) : xstrdup("");

	if (target[0] != '/')
		return path_resolve_rel(dir, target, &out) == 0;
	for (size_t i = 0; i < a->n_views; i++) {
		size_t vl = strlen(a->views[i]);
		if (!strncmp(target, a->views[i], vl) && (target[vl] == '/' || !target[vl]))
			return path_resolve_rel("", target + vl, &out) == 0;
	}
	return false;
}

/* Fill f from what V shows at its path; false (and a reason) if it cannot be packaged. */
static bool describe_file(struct absorb *a, struct adist *d, struct afile *f, bool quiet)
{
	struct merged m;
	struct vdir *dir;
	const char *shown = f->row >= 0 ? d->rec.rows[f->row].path : f->path;
	int r = vlookup(a, f->path, &dir, &m);

	if (r == -ENOENT && behind_symlink(a, f->path))
		r = -ELOOP;
	if (r < 0) {
		if (!quiet)
			dist_why(&d->why,
				 r == -ENOENT  ? "%s is missing"
				 : r == -ELOOP ? "%s is behind a symlink"
					       : "%s: %s",
				 shown, strerror(-r));
		return false;
	}
	f->dir = dir;
	f->name = strrchr(f->path, '/') ? strrchr(f->path, '/') + 1 : f->path;
	f->root = package_root_of(f->path, a->site, &f->rel);
	if (m.upper == L_FILE) {
		f->src = A_UPPER;
		f->mode = m.ent.st.st_mode;
		f->size = (uint64_t)m.ent.st.st_size;
		f->mtime = m.ent.st.st_mtim;
		f->dev = m.ent.st.st_dev;
		f->ino = m.ent.st.st_ino;
	} else if (m.upper == L_META) {
		f->src = A_META;
		f->mode = m.ent.mode;
		f->size = m.ent.size;
		f->mtime = m.ent.mtime;
		f->obj = m.ent.obj;
	} else if (m.upper == L_DIR) {
		if (!quiet)
			dist_why(&d->why, "%s is a directory", shown);
		return false;
	} else {
		const struct tree_node *tn = view_node(a->v, m.src);
		if (tn->flags & TREE_F_TEMPLATE) {
			if (!quiet)
				dist_why(&d->why, "%s belongs to another package (a per-env template)", shown);
			return false;
		}
		f->src = A_LOWER;
		f->mode = tn->mode;
		f->size = S_ISREG(tn->mode) ? tn->size : 0;
		f->mtime = (struct timespec){tn->mtime_sec, tn->mtime_nsec};
		if (S_ISREG(tn->mode))
			tree_node_objid(tn, &f->obj);
		else if (S_ISLNK(tn->mode))
			f->target = xstrndup(tree_link_target(a->v->layers[m.src.layer].tree, tn), tn->u.link.len);
		else if (S_ISDIR(tn->mode)) {
			if (!quiet)
				dist_why(&d->why, "%s is a directory", shown);
			return false;
		}
	}
	if (S_ISLNK(f->mode)) {
		if (f->src == A_UPPER) {
			char t[PATH_MAX + 1];
			int dfd = up_fd(a, dir);
			ssize_t n = dfd >= 0 ? readlinkat(dfd, f->name, t, sizeof(t) - 1) : -1;
			if (n < 0) {
				dist_why(&d->why, "%s: %s", shown, strerror(errno));
				return false;
			}
			t[n] = '\0';
			f->target = xstrdup(t);
		}
		if (!link_inside(a, f->path, f->target)) {
			dist_why(&d->why, "%s is a symlink pointing outside the env", shown);
			return false;
		}
	} else if (!S_ISREG(f->mode)) {
		if (!quiet)
			dist_why(&d->why, "%s is not a regular file", shown);
		return false;
	}
	return true;
}

static void check_dist(struct absorb *a, size_t k)
{
	struct adist *d = &a->d[k];
	_cleanup_buf_ struct buf full = {0};
	int r = record_parse(d->record_text.data, d->record_text.len, d->what, &d->rec);

	if (r < 0) {
		dist_why(&d->why, "%s", vf_last_error());
		return;
	}
	d->row_root = xcalloc(d->rec.n + 1, sizeof(*d->row_root));
	d->row_rel = xcalloc(d->rec.n + 1, sizeof(*d->row_rel));
	for (size_t j = 0; j < d->rec.n; j++) {
		struct record_row *row = &d->rec.rows[j];
		const char *rel;
		if (row->path[0] == '/') {
			dist_why(&d->why, "RECORD line %u: absolute path %s", row->line, row->path);
			continue;
		}
		if (path_resolve_rel(a->site, row->path, &full) < 0 || full.len == 0) {
			dist_why(&d->why, "RECORD line %u: %s escapes the env", row->line, row->path);
			continue;
		}
		d->row_root[j] = package_root_of(full.data, a->site, &rel);
		d->row_rel[j] = xstrdup(rel);
		_cleanup_free_ char *source = pyc_source_path(full.data, full.len);
		bool is_pyc = source != NULL;
		uint64_t *own = strmap_get(&a->owner, full.data, full.len);
		if (own) {
			if ((*own >> 32) != k + 1 && !is_pyc)
				dist_why(&d->why, "%s is also listed by %s", row->path, a->d[(*own >> 32) - 1].dir);
			continue;
		}
		struct afile *f = add_file(d, full.data);
		f->row = (int32_t)j;
		if (!describe_file(a, d, f, is_pyc)) {
			free(f->path);
			free(f->target);
			d->nf--;
			continue;
		}
		if (row->size >= 0 && S_ISREG(f->mode) && (uint64_t)row->size != f->size)
			dist_why(&d->why, "%s has changed (size %" PRIu64 ", RECORD says %lld)", row->path, f->size,
				 (long long)row->size);
		if (row->hash[0] && S_ISLNK(f->mode))
			dist_why(&d->why, "%s is a symlink with a hash", row->path);
		else if (row->hash[0] && !str_has_prefix(row->hash, "sha256="))
			dist_why(&d->why, "%s: unsupported hash %s", row->path, row->hash);
		*strmap_put(&a->owner, full.data, full.len, NULL) = (k + 1) << 32 | (d->nf - 1);
	}
	/* RECORD belongs to its distribution even where it is not listed */
	_cleanup_free_ char *rp = xasprintf("%s/RECORD", d->dir);
	for (size_t i = 0; i < d->nf; i++)
		if (!strcmp(d->f[i].path, rp))
			d->record_file = (uint32_t)i;
	if (d->record_file == NONE) {
		struct afile *f = add_file(d, rp);
		if (describe_file(a, d, f, false)) {
			d->record_file = (uint32_t)(d->nf - 1);
			*strmap_put(&a->owner, rp, strlen(rp), NULL) = (k + 1) << 32 | (d->nf - 1);
		}
	}
	if (d->record_file != NONE)
		d->f[d->record_file].is_record = true;
}

/* Bytecode follows its source: listed or not, it joins the source's package. */
static void add_bytecode(struct absorb *a, size_t k)
{
	struct adist *d = &a->d[k];
	struct strmap src = {0};  /* source path -> file index */
	struct strmap seen = {0}; /* __pycache__ directories listed */

	for (size_t i = 0; i < d->nf; i++)
		if (S_ISREG(d->f[i].mode) && str_has_suffix(d->f[i].path, ".py"))
			*strmap_put(&src, d->f[i].path, strlen(d->f[i].path), NULL) = i;
	size_t nf0 = d->nf;
	for (size_t i = 0; i < nf0; i++) {
		struct afile *f = &d->f[i];
		_cleanup_free_ char *sp = pyc_source_path(f->path, strlen(f->path));
		if (sp) {
			uint64_t *si = strmap_get(&src, sp, strlen(sp));
			if (si)
				d->f[i].pyc_src = (uint32_t)*si;
			continue;
		}
		if (!strmap_get(&src, f->path, strlen(f->path)))
			continue;
		const char *slash = strrchr(f->path, '/');
		_cleanup_free_ char *pc =
			slash ? xasprintf("%.*s/__pycache__", (int)(slash - f->path), f->path) : xstrdup("__pycache__");
		bool created;
		strmap_put(&seen, pc, strlen(pc), &created);
		if (!created)
			continue;
		struct vdir *pd = vdir_at(a, pc, strlen(pc));
		if (!pd->ok)
			continue;
		struct merged_name *names;
		size_t n;
		struct layer_dir pl = pd->up;
		pl.fd = up_fd(a, pd);
		if (layer_merge_list(a->v, &pl, &pd->lo, &names, &n) < 0)
			continue;
		for (size_t j = 0; j < n; j++) {
			_cleanup_free_ char *p = xasprintf("%s/%s", pc, names[j].name);
			_cleanup_free_ char *s = pyc_source_path(p, strlen(p));
			uint64_t *si = s ? strmap_get(&src, s, strlen(s)) : NULL;
			if (!si || strmap_get(&a->owner, p, strlen(p)))
				continue;
			struct afile *g = add_file(d, p);
			g->optional = true;
			if (!describe_file(a, d, g, true) || !S_ISREG(g->mode)) {
				free(g->path);
				free(g->target);
				d->nf--;
				continue;
			}
			g->pyc_src = (uint32_t)*si;
			*strmap_put(&a->owner, p, strlen(p), NULL) = (k + 1) << 32 | (d->nf - 1);
		}
		layer_merge_list_free(names, n);
	}
	strmap_free(&src);
	strmap_free(&seen);
}

/* ---- 3. store ---------------------------------------------------------------------- */

static size_t took_key(dev_t dev, ino_t ino, char out[48])
{
	return (size_t)snprintf(out, 48, "%llx:%llx", (unsigned long long)dev, (unsigned long long)ino);
}

/*
 * Hard links a killed absorb of this env left in objects/ (".tmp.*" names
 * of files of its writable layer), so that the next absorb links those
 * files again rather than copying them (a file with other names is
 * copied: it could change through them). Only absorb links a layer's
 * files into objects/, and the env lock keeps any other absorb of this
 * env from running, so such a link is a leftover. Found once, when a file
 * to store first has more than one link.
 */
struct leftover {
	char key[48];           /* took_key() of its inode */
	char name[2 * 256 + 2]; /* "ab/.tmp...." in objects/ */
};

static void find_leftovers(struct absorb *a)
{
	DIR *top = opendir_at(a->s->objects_fd, ".");
	struct dirent *fan;

	if (!top)
		return;
	while ((fan = readdir(top))) {
		DIR *d = fan->d_name[0] == '.' ? NULL : opendir_at(a->s->objects_fd, fan->d_name);
		struct dirent *de;
		while (d && (de = readdir(d))) {
			struct stat st;
			if (!str_has_prefix(de->d_name, ".tmp.") ||
			    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
			    st.st_nlink < 2)
				continue;
			a->leftover = xrealloc(a->leftover, (a->n_leftover + 1) * sizeof(*a->leftover));
			struct leftover *l = &a->leftover[a->n_leftover++];
			size_t n = took_key(st.st_dev, st.st_ino, l->key);
			snprintf(l->name, sizeof(l->name), "%s/%s", fan->d_name, de->d_name);
			(*strmap_put(&a->leftovers, l->key, n, NULL))++;
		}
		if (d)
			closedir(d);
	}
	closedir(top);
}

/* Remove what killed absorbs left linked to st's file: whether it has one link now. */
static bool drop_leftover_links(struct absorb *a, const struct stat *st)
{
	char key[48];
	size_t n = took_key(st->st_dev, st->st_ino, key);
	bool alone = false;

	pthread_mutex_lock(&a->lock);
	if (!a->leftovers_found) {
		find_leftovers(a); /* unreadable: none found, the file is copied */
		a->leftovers_found = true;
	}
	uint64_t *count = strmap_get(&a->leftovers, key, n);
	if (count && *count == st->st_nlink - 1) { /* its other names are all leftovers */
		alone = true;
		for (size_t i = 0; i < a->n_leftover; i++)
			if (!strcmp(a->leftover[i].key, key) &&
			    unlinkat(a->s->objects_fd, a->leftover[i].name, 0) < 0 && errno != ENOENT)
				alone = false;
		*count = 0;
	}
	pthread_mutex_unlock(&a->lock);
	return alone;
}

/* What the daemon checks before the switch: an A_UPPER file unchanged since it was read. */
static int note_identity(struct absorb *a, struct afile *f, int fd, const struct stat *st0)
{
	struct stat st1;

	if (fstat(fd, &st1) < 0)
		return vf_error_errno(errno, "%s/%s", a->name, f->path);
	if (st1.st_size != st0->st_size || st1.st_mtim.tv_sec != st0->st_mtim.tv_sec ||
	    st1.st_mtim.tv_nsec != st0->st_mtim.tv_nsec)
		return vf_error(EAGAIN, "%s/%s changed during the absorb", a->name, f->path);
	f->ctime = st1.st_ctim;
	f->dev = st1.st_dev;
	f->ino = st1.st_ino;
	return 0;
}

/* Has the open file extended attributes of its own (an SELinux label is
 * the system's, which every file has)? */
static bool has_xattrs(int fd)
{
	char names[1024];
	ssize_t n = flistxattr(fd, names, sizeof(names));

	if (n < 0)
		return errno == ERANGE; /* more than fit: some */
	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1)
		if (strcmp(names + i, "security.selinux"))
			return true;
	return false;
}

/*
 * Read one file, check its hash, and (store pass) put its stored form
 * into the store. The directory fds of the cache are not thread-safe: the
 * file is opened under a->lock.
 */
static int do_file(struct absorb *a, struct adist *d, struct afile *f, bool store_pass, struct buf *scratch)
{
	const char *shown = f->row >= 0 ? d->rec.rows[f->row].path : f->path;
	_cleanup_ingest_ struct ingest_file c = {
		.top = a->name,
		.path = f->path,
		.changed = "changed during the absorb",
	};
	int r = 0;

	pthread_mutex_lock(&a->lock);
	_cleanup_close_ int fd = open_content(a, f);
	_cleanup_close_ int dfd = f->src == A_UPPER ? dup(up_fd(a, f->dir)) : -1;
	pthread_mutex_unlock(&a->lock);
	if (fd < 0)
		return vf_error_errno(-fd, "%s/%s", a->name, f->path);
	r = ingest_read(&c, fd, f->size, scratch);
	if (r < 0)
		return r;

	if (!store_pass) {
		/* check: the content is what RECORD says */
		const struct record_row *row = &d->rec.rows[f->row];
		char want[RECORD_HASH_MAX];
		sha256_raw(c.data, c.len, f->sha);
		memcpy(want, "sha256=", 7);
		b64url_nopad(f->sha, 32, want + 7);
		if (strcmp(want, row->hash) != 0) {
			pthread_mutex_lock(&a->lock);
			dist_why(&d->why, "%s does not match its RECORD hash", shown);
			pthread_mutex_unlock(&a->lock);
		}
		/* the store keeps no extended attributes: a file someone gave
		 * one (mount --xattrs) keeps it by staying */
		if (f->src == A_UPPER && has_xattrs(fd)) {
			pthread_mutex_lock(&a->lock);
			dist_why(&d->why, "%s has extended attributes, which the store does not keep", shown);
			pthread_mutex_unlock(&a->lock);
		}
		return 0;
	}

	uint64_t added = 0;
	f->tflags = 0;
	if (package_is_script(f->path)) {
		for (size_t i = 0; i < a->n_views; i++) {
			struct tpl_paths tp = {.env = a->views[i], .env_real = a->views[i]};
			if (ingest_template(&c, &tp)) {
				f->tflags |= TREE_F_TEMPLATE;
				break;
			}
		}
	} else if (f->pyc_src != NONE) {
		const struct afile *src = &d->f[f->pyc_src];
		if (package_pyc_valid(c.data, c.len, src->mtime.tv_sec, src->size)) {
			/* kept as the installer wrote it (package.h), once the
			 * store turns out not to have the package already */
			f->tflags |= TREE_F_PYC_KEPT;
			if (!a->store_kept && f->src == A_UPPER) {
				f->deferred = true;
				return note_identity(a, f, fd, &c.st);
			}
			f->deferred = false;
		} else if (f->optional) {
			f->dropped = true; /* stale bytecode stays the env's own */
		}
	}
	if (f->dropped)
		return 0;
	if (c.put == c.data && f->src != A_UPPER) {
		/* a store file already: nothing to insert */
		f->stored_size = c.len;
		__atomic_add_fetch(&a->st->dedup_bytes, c.len, __ATOMIC_RELAXED);
		return 0;
	}
	/* a hard link where the file has no other name: the env gives the
	 * writable layer's file up (a name elsewhere could change it) */
	bool alone = c.put == c.data && (c.st.st_nlink == 1 || drop_leftover_links(a, &c.st));
	r = ingest_put(a->txn, &c, f->mode, alone ? dfd : -1, f->name, &f->obj, &added, &f->linked);
	if (r < 0)
		return r;
	f->stored_size = c.put_len;
	if (f->linked)
		__atomic_add_fetch(&a->st->linked_bytes, c.len, __ATOMIC_RELAXED);
	else if (added)
		__atomic_add_fetch(&a->st->copied_bytes, added, __ATOMIC_RELAXED);
	else
		__atomic_add_fetch(&a->st->dedup_bytes, c.put_len, __ATOMIC_RELAXED);
	if (f->src == A_UPPER)
		r = note_identity(a, f, fd, &c.st);
	return r;
}

/* Worker job k: do_file() of the k-th file queued (queue()). */
static int file_job(void *ctx, size_t k, struct buf *scratch, uint64_t *bytes)
{
	struct absorb *a = ctx;
	struct adist *d = &a->d[a->jobs[k].d];
	struct afile *f = &d->f[a->jobs[k].f];

	*bytes = f->size;
	return do_file(a, d, f, a->txn != NULL, scratch);
}

/* Run do_file over the jobs queued: the store pass once a->txn is begun. */
static int run_jobs(struct absorb *a, const char *what)
{
	struct workers w = {
		.n = a->n_jobs,
		/* one per CPU, four at most: absorb is bound by I/O */
		.threads = MIN(workers_cpus(), 4u),
		.job = file_job,
		.ctx = a,
		.what = what,
		.progress = a->o && a->o->progress,
	};

	return workers_run(&w);
}

static void add_job(struct absorb *a, size_t k, size_t i)
{
	a->jobs = xrealloc(a->jobs, (a->n_jobs + 1) * sizeof(*a->jobs));
	a->jobs[a->n_jobs].d = (uint32_t)k;
	a->jobs[a->n_jobs].f = (uint32_t)i;
	a->n_jobs++;
}

/* Queue the files of the good distributions that want() picks. */
static void queue(struct absorb *a, bool (*want)(const struct adist *d, const struct afile *f))
{
	a->n_jobs = 0;
	for (size_t k = 0; k < a->nd; k++)
		for (size_t i = 0; i < a->d[k].nf && !a->d[k].why.any; i++)
			if (want(&a->d[k], &a->d[k].f[i]))
				add_job(a, k, i);
}

static bool has_hash(const struct adist *d, const struct afile *f)
{
	return f->row >= 0 && S_ISREG(f->mode) && d->rec.rows[f->row].hash[0];
}

static bool to_store(const struct adist *d, const struct afile *f)
{
	(void)d;
	return S_ISREG(f->mode) && !f->is_record; /* RECORD: when its template is known */
}

static bool deferred(const struct adist *d, const struct afile *f)
{
	return f->deferred && !d->reused && !f->dropped;
}

/* ---- 4. build ------------------------------------------------------------------------- */

static int store_record(struct absorb *a, struct adist *d)
{
	struct afile *rf = &d->f[d->record_file];
	_cleanup_free_ bool *tpl = xcalloc(d->rec.n + 1, sizeof(bool));
	_cleanup_buf_ struct buf blob = {0}, scratch = {0};
	uint64_t added;

	for (size_t i = 0; i < d->nf; i++)
		if (d->f[i].row >= 0 && (d->f[i].tflags & TREE_F_TEMPLATE))
			tpl[d->f[i].row] = true;
	if (package_record_template(d->record_text.data, d->record_text.len, &d->rec, tpl, d->row_root, d->row_rel,
				    &blob)) {
		int r = store_txn_put_file(a->txn, blob.data, blob.len, rf->mode, &rf->obj, &added);
		if (r < 0)
			return vf_error_prefix(-r, "%s/RECORD: ", d->dir);
		rf->tflags = TREE_F_TEMPLATE;
		rf->stored_size = blob.len;
		a->st->copied_bytes += added;
		/* for absorb_changed(): as it was when read */
		struct stat st;
		if (rf->src == A_UPPER && fstatat(a->upper_fd, rf->path, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			rf->dev = st.st_dev;
			rf->ino = st.st_ino;
			rf->ctime = st.st_ctim;
		}
		return 0;
	}
	return do_file(a, d, rf, true, &scratch);
}

static int64_t shown_mtime(struct absorb *a, struct strmap *files, struct adist *d, const char *path)
{
	uint64_t *fi = strmap_get(files, path, strlen(path));

	if (fi)
		return d->f[*fi].mtime.tv_sec;
	struct vdir *vd = vdir_at(a, path, strlen(path));
	return vd->ok ? vd->mtime.tv_sec : TREE_STORE_MTIME;
}

/* METADATA, WHEEL and RECORD of distribution k: once, before its manifest. */
static int dist_record(struct absorb *a, size_t k)
{
	struct adist *d = &a->d[k];
	_cleanup_buf_ struct buf meta = {0}, wheel = {0};
	_cleanup_free_ char *mp = xasprintf("%s/METADATA", d->dir), *wp = xasprintf("%s/WHEEL", d->dir);

	read_small(a, mp, 1 << 24, &meta);
	read_small(a, wp, 1 << 20, &wheel);
	dist_meta_parse(d->dir, meta.data, meta.len, wheel.data, wheel.len, &d->meta);
	return store_record(a, d);
}

/* The times the files of d->manifest showed in V, for export. */
static int dist_mtimes(struct absorb *a, struct adist *d)
{
	_cleanup_buf_ struct buf full = {0};
	struct strmap files = {0};
	struct tree *t;
	int r = tree_load(d->manifest.data, d->manifest.len, false, &t);

	if (r < 0)
		return r;
	for (size_t i = 0; i < d->nf; i++)
		if (!d->f[i].dropped)
			*strmap_put(&files, d->f[i].path, strlen(d->f[i].path), NULL) = i;
	free(d->orig_mtimes);
	d->n_nodes = t->n;
	d->orig_mtimes = xmalloc((t->n + 1) * sizeof(int64_t));
	for (uint32_t i = 0; i < t->n; i++) {
		uint32_t root = tree_path(t, i, &full);
		_cleanup_free_ char *p =
			root == TREE_ROOT_SITE ? (full.len ? xasprintf("%s/%s", a->site, full.data) : xstrdup(a->site))
					       : xstrdup(full.len ? full.data : "");
		d->orig_mtimes[i] = i < 2 ? TREE_STORE_MTIME : shown_mtime(a, &files, d, p);
	}
	tree_free(t);
	strmap_free(&files);
	return 0;
}

/* The manifest of distribution k from its files as stored so far (deferred
 * bytecode has no object yet: enough to compare, not to store). */
static int build_manifest(struct absorb *a, size_t k)
{
	struct adist *d = &a->d[k];
	struct strmap dirs = {0};
	struct tree_entry te;
	int r = 0;

	for (size_t i = 0; i < d->nf; i++)
		if ((d->f[i].tflags & TREE_F_PYC_KEPT) && !d->f[i].dropped)
			d->f[d->f[i].pyc_src].keeps_mtime = true;
	struct tree_builder *tb = package_builder_new(&d->meta, d->dir);
	struct vdir *site = vdir_at(a, a->site, strlen(a->site));
	memset(&te, 0, sizeof(te));
	te.mode = vdir_at(a, "", 0)->mode;
	te.mtime_sec = TREE_STORE_MTIME;
	tree_builder_add(tb, TREE_ROOT_ENV, "", 0, &te);
	te.mode = site->mode;
	tree_builder_add(tb, TREE_ROOT_SITE, "", 0, &te);
	d->bytes = 0;
	for (size_t i = 0; i < d->nf && r == 0; i++) {
		struct afile *f = &d->f[i];
		if (f->dropped)
			continue;
		/* the directories on the way, with the modes V shows */
		for (const char *s = strchr(f->rel, '/'); s; s = strchr(s + 1, '/')) {
			bool created;
			size_t rl = (size_t)(s - f->rel);
			size_t pl = (size_t)(s - f->path);
			strmap_put(&dirs, f->path, pl, &created);
			if (!created)
				continue;
			struct vdir *vd = vdir_at(a, f->path, pl);
			memset(&te, 0, sizeof(te));
			te.mode = vd->mode ? vd->mode : (S_IFDIR | 0755);
			te.mtime_sec = TREE_STORE_MTIME;
			r = tree_builder_add(tb, f->root, f->rel, rl, &te);
			if (r < 0)
				break;
		}
		if (r < 0)
			break;
		memset(&te, 0, sizeof(te));
		te.mode = f->mode;
		te.mtime_sec = f->keeps_mtime ? f->mtime.tv_sec : TREE_STORE_MTIME;
		te.mtime_nsec = f->keeps_mtime ? (uint32_t)f->mtime.tv_nsec : 0;
		if (S_ISLNK(f->mode)) {
			te.target = f->target;
			te.target_len = strlen(f->target);
		} else {
			te.obj = f->obj;
			te.flags = f->tflags;
			te.size = (f->tflags & TREE_F_TEMPLATE) ? 0 : f->deferred ? f->size : f->stored_size;
			d->bytes += f->size;
		}
		r = tree_builder_add(tb, f->root, f->rel, strlen(f->rel), &te);
	}
	buf_reset(&d->manifest);
	if (r < 0)
		r = vf_error_errno(-r, "%s: cannot build its package", d->what);
	else
		r = tree_builder_finish(tb, &d->manifest);
	tree_builder_free(tb);
	strmap_free(&dirs);
	return r;
}

/*
 * Does the store have distribution k already, compiled elsewhere
 * (package.h)? Then the env takes that package, and the bytecode waiting
 * in phase 3 is not stored at all.
 */
static int find_equivalent(struct absorb *a, size_t k)
{
	struct adist *d = &a->d[k];
	int r = dist_record(a, k);

	if (r == 0)
		r = build_manifest(a, k);
	if (r == 0 && (r = package_take_equivalent(a->s, &d->manifest, &d->pkg_id)) < 0)
		return vf_error_prefix(-r, "%s: ", d->what);
	if (r <= 0)
		return r;
	d->reused = true;
	for (size_t i = 0; i < d->nf; i++)
		if (d->f[i].deferred)
			__atomic_add_fetch(&a->st->dedup_bytes, d->f[i].size, __ATOMIC_RELAXED);
	return dist_mtimes(a, d);
}

/* Phase 4: the package of distribution k, complete now, into the store. */
static int put_package(struct absorb *a, size_t k)
{
	struct adist *d = &a->d[k];
	uint64_t added;
	int r;

	if (d->reused)
		return 0;
	if ((r = build_manifest(a, k)) < 0 || (r = dist_mtimes(a, d)) < 0)
		return r;
	r = store_txn_put(a->txn, d->manifest.data, d->manifest.len, &d->pkg_id, &added);
	a->st->copied_bytes += added;
	return r;
}

/*
 * Does anything of package layer i still show in V? Its dist-info first
 * (the usual answer), else every file it has.
 */
static bool node_shows(struct absorb *a, uint16_t i, uint32_t n, struct buf *p)
{
	struct tree *t = a->v->layers[i].tree;
	uint32_t root = tree_path(t, n, p);
	_cleanup_free_ char *full = root == TREE_ROOT_SITE ? xasprintf("%s/%s", a->site, p->data) : xstrdup(p->data);
	struct vdir *d;
	struct merged m;

	return vlookup(a, full, &d, &m) == 0 && m.upper == L_NONE && m.lower && m.src.layer == i;
}

static bool package_shows(struct absorb *a, uint16_t i)
{
	struct tree *t = a->v->layers[i].tree;
	_cleanup_buf_ struct buf p = {0};
	size_t dl;
	const char *di = tree_str(t, TREE_STR_DIST_INFO, &dl);
	uint32_t dn = dl ? tree_lookup_path(t, TREE_ROOT_SITE, di, dl) : TREE_NONE;

	if (dn != TREE_NONE && S_ISDIR(tree_node(t, dn)->mode)) {
		const struct tree_node *dnode = tree_node(t, dn);
		for (uint32_t c = dnode->u.dir.first_child; c < dnode->u.dir.first_child + dnode->u.dir.n_children; c++)
			if (!S_ISDIR(tree_node(t, c)->mode) && node_shows(a, i, c, &p))
				return true;
	}
	for (uint32_t n = 2; n < t->n; n++)
		if (!S_ISDIR(tree_node(t, n)->mode) && node_shows(a, i, n, &p))
			return true;
	return false;
}

/* The trees of the new view: new manifests from memory, others mapped. */
static int v2_get(void *ctx, const struct objid *id, const char *what, struct tree **out)
{
	struct absorb *a = ctx;

	for (size_t k = 0; k < a->nd; k++)
		if (!a->d[k].why.any && objid_equal(&a->d[k].pkg_id, id))
			return tree_load(a->d[k].manifest.data, a->d[k].manifest.len, false, out);
	return view_map_tree(a->s, id, what, out);
}

static void v2_put(void *ctx, struct tree *t)
{
	(void)ctx;
	tree_free(t);
}

/* M': the packages that still show, then the new ones; their mtimes. */
static int new_env(struct absorb *a)
{
	struct env *e = a->env;
	struct env *n = NULL;
	_cleanup_buf_ struct buf mt = {0}, text = {0};
	int r;

	/* a copy of the env, then its package list replaced */
	env_format(e, &text);
	r = env_parse(text.data, text.len, a->name, &n);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n->n_pkgs; i++) {
		free(n->pkgs[i].name);
		free(n->pkgs[i].version);
	}
	n->n_pkgs = 0;
	a->drop = xcalloc(e->n_pkgs + 1, sizeof(bool));
	r = view_load_orig_mtimes(a->v);
	if (r < 0)
		vf_clear_error(); /* only export needs them */
	uint32_t count = 0;
	for (uint16_t i = 1; i < a->v->n_layers; i++) {
		size_t pi = (size_t)(a->v->layers[i].pkg - e->pkgs);
		a->drop[pi] = !package_shows(a, i);
	}
	for (size_t pi = 0; pi < e->n_pkgs; pi++)
		count += !a->drop[pi];
	for (size_t k = 0; k < a->nd; k++)
		count += !a->d[k].why.any;
	view_mtimes_encode_begin(&mt, count);
	for (size_t pi = 0; pi < e->n_pkgs; pi++) {
		if (a->drop[pi]) {
			a->st->dropped++;
			say(a, "dropped %s %s (no file of it shows any more)", e->pkgs[pi].name, e->pkgs[pi].version);
			continue;
		}
		env_add_package(n, &e->pkgs[pi].id, e->pkgs[pi].name, e->pkgs[pi].version);
		/* its layer's original mtimes, or its tree's */
		for (uint16_t i = 1; i < a->v->n_layers; i++) {
			if ((size_t)(a->v->layers[i].pkg - e->pkgs) != pi)
				continue;
			struct tree *t = a->v->layers[i].tree;
			int64_t *m = a->v->layers[i].orig_mtimes;
			_cleanup_free_ int64_t *own = NULL;
			if (!m) {
				own = xmalloc((t->n + 1) * sizeof(int64_t));
				for (uint32_t j = 0; j < t->n; j++)
					own[j] = tree_node(t, j)->mtime_sec;
				m = own;
			}
			view_mtimes_encode_pkg(&mt, m, t->n);
		}
	}
	for (size_t k = 0; k < a->nd; k++) {
		struct adist *d = &a->d[k];
		if (d->why.any)
			continue;
		env_add_package(n, &d->pkg_id, d->meta.name, d->meta.version);
		view_mtimes_encode_pkg(&mt, d->orig_mtimes, d->n_nodes);
	}
	uint64_t added;
	r = store_txn_put(a->txn, mt.data, mt.len, &n->mtimes, &added);
	if (r < 0) {
		env_free(n);
		return r;
	}
	n->has_mtimes = true;
	free(n->upper);
	n->upper = xstrdup(a->new_upper);
	a->env2 = n;
	struct view_trees trees = {v2_get, v2_put, a};
	return view_open(a->s, n, &trees, &a->v2);
}

/* ---- 5. diff -------------------------------------------------------------------------- */

/* The file of a distribution being absorbed at path, or NULL. */
static struct afile *absorbed_file(struct absorb *a, const char *path, struct adist **dp)
{
	uint64_t *o = strmap_get(&a->owner, path, strlen(path));

	if (!o)
		return NULL;
	struct adist *d = &a->d[(*o >> 32) - 1];
	struct afile *f = &d->f[*o & 0xffffffffu];
	if (d->why.any || f->dropped)
		return NULL;
	if (dp)
		*dp = d;
	return f;
}

/* The file at path was absorbed into a package the new view shows there? */
static bool absorbed_here(struct absorb *a, const char *path, struct view_src s2)
{
	struct adist *d;
	const struct env_pkg *p = a->v2->layers[s2.layer].pkg;

	return absorbed_file(a, path, &d) && p && objid_equal(&p->id, &d->pkg_id);
}

/* Do the old V entry m and the new read-only entry s2 look the same? */
static bool same_entry(struct absorb *a, int odfd, const char *name, const char *path, const struct merged *m,
		       struct view_src s2)
{
	const struct tree_node *n2 = view_node(a->v2, s2);

	if (S_ISDIR(n2->mode))
		return false;
	if (m->upper == L_FILE) {
		if (S_ISREG(m->ent.st.st_mode))
			return S_ISREG(n2->mode) && absorbed_here(a, path, s2);
		if (S_ISLNK(m->ent.st.st_mode) && S_ISLNK(n2->mode)) {
			char t[PATH_MAX + 1];
			ssize_t len = readlinkat(odfd, name, t, sizeof(t));
			return len == (ssize_t)n2->u.link.len &&
			       !memcmp(t, tree_link_target(a->v2->layers[s2.layer].tree, n2), (size_t)len);
		}
		return false;
	}
	if (m->upper == L_META) {
		struct objid id;
		tree_node_objid(n2, &id);
		return S_ISREG(n2->mode) && !(n2->flags & TREE_F_TEMPLATE) && objid_equal(&id, &m->ent.obj) &&
		       (n2->mode & 07777) == (m->ent.mode & 07777) && n2->mtime_sec == m->ent.mtime.tv_sec &&
		       n2->mtime_nsec == (uint32_t)m->ent.mtime.tv_nsec;
	}
	const struct tree_node *n1 = view_node(a->v, m->src);
	/* shown from a package of an earlier absorb, and part of a
	 * distribution absorbed now (checked against its RECORD) into the
	 * package that shows it next: it looks as that package says, as every
	 * absorbed file does. (An absorb that met an install still compiling
	 * its bytecode took the distribution without it; the next one takes
	 * it whole, often as an equivalent package with other times. Kept as
	 * metacopies, the old times left sources newer than the package's
	 * bytecode, which Python then compiled again.) */
	if (S_ISREG(n1->mode) && S_ISREG(n2->mode) && absorbed_here(a, path, s2))
		return true;
	if (n1->mode != n2->mode || n1->flags != n2->flags || n1->size != n2->size || n1->mtime_sec != n2->mtime_sec ||
	    n1->mtime_nsec != n2->mtime_nsec)
		return false;
	if (S_ISREG(n1->mode))
		return !memcmp(n1->obj_hash, n2->obj_hash, 16) && n1->obj_seq == n2->obj_seq;
	if (S_ISLNK(n1->mode))
		return n1->u.link.len == n2->u.link.len &&
		       !memcmp(tree_link_target(a->v->layers[m->src.layer].tree, n1),
			       tree_link_target(a->v2->layers[s2.layer].tree, n2), n1->u.link.len);
	return n1->u.dev.major == n2->u.dev.major && n1->u.dev.minor == n2->u.dev.minor;
}

/*
 * A file of the writable layer that stays the env's own is also a name
 * (hard link) of a file being absorbed: linking it into the new layer
 * changed that inode's ctime. Ours, not a writer's: the daemon's check
 * before the switch (absorb_changed()) takes the new one.
 */
static void took_relinked(struct absorb *a, const struct stat *st)
{
	for (size_t k = 0; k < a->nd; k++)
		for (size_t i = 0; i < a->d[k].nf; i++) {
			struct afile *f = &a->d[k].f[i];
			if (f->src == A_UPPER && f->ino == st->st_ino && f->dev == st->st_dev)
				f->ctime = st->st_ctim;
		}
}

/* Put V's entry m at outfd/name in the new writable layer. */
static int put_entry(struct absorb *a, int odfd, const char *name, const char *path, const struct merged *m, int outfd)
{
	struct afile *af = m->upper == L_FILE ? absorbed_file(a, path, NULL) : NULL;
	if (af && af->linked) {
		/* its inode is an object now, which must never change: a copy */
		_cleanup_close_ int in = openat(odfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		_cleanup_close_ int fd = openat(outfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		struct timespec ts[2] = {m->ent.st.st_mtim, m->ent.st.st_mtim};
		if (in < 0 || fd < 0 || copy_file(in, fd, (uint64_t)m->ent.st.st_size) < 0 ||
		    fchmod(fd, m->ent.st.st_mode & 07777) < 0 || futimens(fd, ts) < 0)
			return vf_error_errno(errno, "%s: copying %s", a->name, path);
		if (geteuid() == 0)
			fchown(fd, m->ent.st.st_uid, m->ent.st.st_gid);
		return 0;
	}
	if (m->upper == L_FILE || m->upper == L_META) {
		/* the same inode: an open file stays the env's file */
		struct stat st;
		if (linkat(odfd, name, outfd, name, 0) < 0)
			return vf_error_errno(errno, "%s/envs/%s/%s/%s", a->s->home, a->name, a->new_upper, path);
		if (fstatat(outfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_nlink > 2 &&
		    absorb_took(a, st.st_dev, st.st_ino))
			took_relinked(a, &st);
		return 0;
	}
	const struct tree_node *n = view_node(a->v, m->src);
	struct timespec ts[2] = {{n->mtime_sec, n->mtime_nsec}, {n->mtime_sec, n->mtime_nsec}};
	int r = 0;

	switch (n->mode & S_IFMT) {
	case S_IFREG:
		if (!(n->flags & TREE_F_TEMPLATE)) {
			struct objid id;
			tree_node_objid(n, &id);
			r = layer_metacopy(outfd, name, a->work_fd, &id, n->size, n->mode, &ts[1]);
			return r < 0 ? vf_error_errno(-r, "%s: metacopy of %s", a->name, path) : 0;
		} else {
			/* a template whose package goes: its rendering, as shown */
			_cleanup_buf_ struct buf out = {0};
			if (!a->n_views)
				return vf_error(EINVAL, "%s/%s: a template, and the env was never shown anywhere",
						a->name, path);
			r = view_render(a->v, m->src, a->views[0], NULL, &out);
			if (r < 0)
				return vf_error_prefix(-r, "%s/%s: ", a->name, path);
			_cleanup_close_ int fd =
				openat(outfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, n->mode & 0777);
			if (fd < 0 || write_full(fd, out.data, out.len) < 0 || futimens(fd, ts) < 0)
				return vf_error_errno(errno, "%s: %s", a->name, path);
			return 0;
		}
	case S_IFLNK: {
		_cleanup_free_ char *t = xstrndup(tree_link_target(a->v->layers[m->src.layer].tree, n), n->u.link.len);
		r = symlinkat(t, outfd, name);
		break;
	}
	default:
		r = mknodat(outfd, name, n->mode, makedev(n->u.dev.major, n->u.dev.minor));
		break;
	}
	if (r < 0)
		return vf_error_errno(errno, "%s: %s", a->name, path);
	utimensat(outfd, name, ts, AT_SYMLINK_NOFOLLOW);
	return 0;
}

/*
 * Fill the new writable layer's directory outfd so that over the new
 * read-only sources nlo it shows what V shows at path (writable part oup,
 * old sources olo). *needed: something had to be written there.
 */
static int diff_dir(struct absorb *a, const struct layer_dir *oup, const struct view_dir *olo,
		    const struct view_dir *nlo, int outfd, struct buf *path, bool *needed)
{
	struct merged_name *names = NULL;
	struct view_ent *ents = NULL;
	size_t n = 0, ne = 0, base = path->len;
	int r = layer_merge_list(a->v, oup, olo, &names, &n);

	*needed = false;
	if (r < 0)
		return vf_error_errno(-r, "%s: listing %s", a->name, path->data);
	for (size_t i = 0; i < n && r == 0; i++) {
		const char *name = names[i].name;
		struct merged m;
		struct view_src s2;
		path->len = base;
		if (base)
			buf_addc(path, '/');
		buf_adds(path, name);
		r = layer_merge_lookup(a->v, oup, olo, name, &m);
		if (r < 0) {
			r = vf_error_errno(-r, "%s: %s", a->name, path->data);
			break;
		}
		if (!layer_merged_shows(&m)) {
			/* listed a moment ago, gone now */
			r = vf_error(EAGAIN, "%s: %s changed during the absorb", a->name, path->data);
			break;
		}
		bool have2 = nlo->n && view_lookup(a->v2, nlo, name, strlen(name), &s2);
		bool vdir = m.upper == L_DIR || (m.upper == L_NONE && S_ISDIR(view_node(a->v, m.src)->mode));
		if (!vdir) {
			if (have2 && same_entry(a, oup->fd, name, path->data, &m, s2))
				continue;
			r = put_entry(a, oup->fd, name, path->data, &m, outfd);
			*needed = true;
			continue;
		}
		/* a directory: recurse */
		struct layer_dir cup = {.fd = -1};
		struct view_dir colo, cnlo;
		uint32_t mode;
		struct timespec mtime;
		if (m.upper == L_DIR) {
			r = layer_dir_open(oup->fd, name, &cup);
			if (r < 0) {
				r = vf_error_errno(-r, "%s: %s", a->name, path->data);
				break;
			}
			layer_child_lower(a->v, olo, name, &cup, &colo);
			mode = m.ent.st.st_mode;
			mtime = m.ent.st.st_mtim;
		} else {
			const struct tree_node *tn = view_node(a->v, m.src);
			layer_child_lower(a->v, olo, name, NULL, &colo);
			mode = tn->mode;
			mtime = (struct timespec){tn->mtime_sec, tn->mtime_nsec};
		}
		bool dir2 = have2 && S_ISDIR(view_node(a->v2, s2)->mode);
		if (dir2)
			view_child_dir(a->v2, nlo, name, strlen(name), &cnlo);
		else
			empty_dir(&cnlo);
		bool child_needed = false;
		_cleanup_close_ int cfd = -1;
		if (mkdirat(outfd, name, 0700) < 0 ||
		    (cfd = openat(outfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
			r = vf_error_errno(errno, "%s/envs/%s/%s/%s", a->s->home, a->name, a->new_upper, path->data);
		if (r == 0)
			r = diff_dir(a, &cup, &colo, &cnlo, cfd, path, &child_needed);
		if (r == 0) {
			bool keep = child_needed || !dir2 || view_node(a->v2, s2)->mode != mode;
			if (keep) {
				struct timespec ts[2] = {mtime, mtime};
				struct stat ust;
				if (fchmod(cfd, mode & 07777) < 0 || futimens(cfd, ts) < 0)
					r = vf_error_errno(errno, "%s: %s", a->name, path->data);
				if (cup.fd >= 0 && fstat(cup.fd, &ust) == 0 && geteuid() == 0)
					fchown(cfd, ust.st_uid, ust.st_gid);
				*needed = true;
			} else if (unlinkat(outfd, name, AT_REMOVEDIR) < 0) {
				r = vf_error_errno(errno, "%s: %s", a->name, path->data);
			}
		}
		layer_dir_close(&cup);
		view_dir_free(&colo);
		view_dir_free(&cnlo);
	}
	/* what the new read-only layers have and V does not show: whiteouts */
	path->len = base;
	if (path->data)
		path->data[base] = '\0';
	if (r == 0 && nlo->n && (r = view_list(a->v2, nlo, &ents, &ne)) == 0) {
		for (size_t i = 0; i < ne && r == 0; i++) {
			_cleanup_free_ char *name = xstrndup(ents[i].name, ents[i].name_len);
			struct merged m;
			r = layer_merge_lookup(a->v, oup, olo, name, &m);
			if (r < 0)
				break;
			if (!layer_merged_shows(&m)) {
				r = layer_whiteout(outfd, name, a->work_fd);
				if (r < 0)
					r = vf_error_errno(-r, "%s: whiteout %s in %s", a->name, name, path->data);
				*needed = true;
			}
		}
		free(ents);
	}
	path->len = base;
	if (path->data)
		path->data[base] = '\0';
	layer_merge_list_free(names, n);
	return r;
}

static int build_layer(struct absorb *a)
{
	_cleanup_buf_ struct buf path = {0};
	_cleanup_close_ int out = -1;
	struct layer_dir up;
	struct view_dir olo, nlo;
	bool needed;
	int r;

	if (mkdirat(a->env_fd, a->new_upper, 0755) < 0)
		return vf_error_errno(errno, "%s/envs/%s/%s", a->s->home, a->name, a->new_upper);
	out = openat(a->env_fd, a->new_upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (out < 0)
		return vf_error_errno(errno, "%s/envs/%s/%s", a->s->home, a->name, a->new_upper);
	r = layer_dir_open(a->upper_fd, ".", &up);
	if (r < 0)
		return vf_error_errno(-r, "%s: its writable layer", a->name);
	view_root(a->v, &olo);
	view_root(a->v2, &nlo);
	buf_grow(&path, 256);
	path.data[0] = '\0';
	r = diff_dir(a, &up, &olo, &nlo, out, &path, &needed);
	if (r == 0) {
		/* the env's top directory shows the writable layer's attributes */
		struct stat st;
		if (fstat(up.fd, &st) == 0) {
			struct timespec ts[2] = {st.st_atim, st.st_mtim};
			if (fchmod(out, st.st_mode & 07777) < 0 || futimens(out, ts) < 0)
				r = vf_error_errno(errno, "%s/envs/%s/%s", a->s->home, a->name, a->new_upper);
		}
	}
	layer_dir_close(&up);
	view_dir_free(&olo);
	view_dir_free(&nlo);
	return r;
}

/* ---- the absorb ------------------------------------------------------------------------ */

void absorb_free(struct absorb *a)
{
	if (!a)
		return;
	if (a->txn)
		store_txn_abort(a->txn);
	if (!a->committed && a->new_upper && a->env_fd >= 0)
		rm_rf_at(a->env_fd, a->new_upper);
	if (a->locked)
		store_unlock(a->s);
	for (size_t i = 0; i < a->n_dirv; i++) {
		layer_dir_close(&a->dirv[i]->up);
		view_dir_free(&a->dirv[i]->lo);
		free(a->dirv[i]->path);
		free(a->dirv[i]);
	}
	free(a->dirv);
	strmap_free(&a->dirs);
	strmap_free(&a->owner);
	strmap_free(&a->took);
	strmap_free(&a->leftovers);
	free(a->leftover);
	for (size_t k = 0; k < a->nd; k++) {
		struct adist *d = &a->d[k];
		for (size_t i = 0; i < d->nf; i++) {
			free(d->f[i].path);
			free(d->f[i].target);
		}
		free(d->f);
		for (size_t j = 0; j < d->rec.n && d->row_rel; j++)
			free(d->row_rel[j]);
		free(d->row_rel);
		free(d->row_root);
		record_free(&d->rec);
		buf_free(&d->record_text);
		buf_free(&d->why.text);
		dist_meta_free(&d->meta);
		buf_free(&d->manifest);
		free(d->orig_mtimes);
		free(d->dir);
		free(d->what);
	}
	free(a->d);
	free(a->jobs);
	free(a->drop);
	view_free(a->v2);
	view_free(a->v);
	env_free(a->env2);
	env_free(a->env);
	for (size_t i = 0; i < a->n_views; i++)
		free(a->views[i]);
	free(a->views);
	free(a->site);
	free(a->name);
	free(a->new_upper);
	if (a->env_fd >= 0)
		close(a->env_fd);
	if (a->upper_fd >= 0)
		close(a->upper_fd);
	if (a->work_fd >= 0)
		close(a->work_fd);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

int absorb_prepare(struct store *s, const char *name, const struct absorb_opts *o, struct absorb_stats *st,
		   struct absorb **out)
{
	struct absorb *a = xcalloc(1, sizeof(*a));
	int r;

	memset(st, 0, sizeof(*st));
	a->s = s;
	a->o = o;
	a->st = st;
	a->name = xstrdup(name);
	a->env_fd = a->upper_fd = a->work_fd = -1;
	pthread_mutex_init(&a->lock, NULL);
	*out = NULL;
	struct rlimit nofile;
	a->max_open_dirs = MAX_OPEN_DIRS;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur / 8 < MAX_OPEN_DIRS)
		a->max_open_dirs = (unsigned)MAX(nofile.rlim_cur / 8, 8);

	r = store_lock(s, LOCK_SH, true);
	if (r < 0)
		goto fail;
	a->locked = true;
	/* the directory first, and everything from it: the env we prepare
	 * from is the env we commit to (env_save_at), whatever happens to
	 * its name meanwhile */
	a->env_fd = openat(s->envs_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (a->env_fd < 0) {
		r = errno == ENOENT ? vf_error(ENOENT, "no env named %s in %s", name, s->home)
				    : vf_error_errno(errno, "%s/envs/%s", s->home, name);
		goto fail;
	}
	r = env_load_at(s, a->env_fd, name, &a->env);
	if (r < 0)
		goto fail;
	r = view_open(s, a->env, NULL, &a->v);
	if (r < 0)
		goto fail;
	if (!(o && o->keep_old_layer))
		env_sweep_layers(s, name);
	a->upper_fd = openat(a->env_fd, env_upper(a->env), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (a->upper_fd < 0) {
		r = vf_error_errno(errno, "%s/envs/%s/%s", s->home, name, env_upper(a->env));
		goto fail;
	}
	{
		_cleanup_free_ char *where = xasprintf("%s/envs/%s", s->home, name);
		a->work_fd = env_work_open(a->env_fd, where);
	}
	if (a->work_fd < 0) {
		r = a->work_fd;
		goto fail;
	}
	a->site = env_site_dir(a->env);
	env_views(a->env_fd, &a->views, &a->n_views);

	/* 1, 2: find and check */
	r = find_dists(a);
	if (r < 0)
		goto fail;
	for (size_t k = 0; k < a->nd; k++)
		check_dist(a, k);
	for (size_t k = 0; k < a->nd; k++)
		if (!a->d[k].why.any)
			add_bytecode(a, k);
	queue(a, has_hash);
	r = run_jobs(a, "checking");
	if (r < 0)
		goto fail;
	for (size_t k = 0; k < a->nd; k++) {
		struct adist *d = &a->d[k];
		if (d->why.any) {
			st->left++;
			say(a, "left %s in the writable layer: %s%s", d->dir, d->why.text.data, dist_why_more(&d->why));
		}
	}

	/* 3, 4: store and build */
	a->txn = store_txn_begin(s);
	queue(a, to_store);
	r = run_jobs(a, "absorbing");
	if (r < 0)
		goto fail;
	for (size_t k = 0; k < a->nd; k++) {
		if (!a->d[k].why.any && (r = find_equivalent(a, k)) < 0)
			goto fail;
	}
	a->store_kept = true;
	queue(a, deferred);
	r = run_jobs(a, "absorbing bytecode");
	if (r < 0)
		goto fail;
	for (size_t k = 0; k < a->nd; k++) {
		if (!a->d[k].why.any && (r = put_package(a, k)) < 0)
			goto fail;
	}
	a->new_upper = env_layer_new_name();
	r = new_env(a);
	if (r < 0)
		goto fail;
	a->nothing = st->dropped == 0;
	for (size_t k = 0; k < a->nd; k++)
		if (!a->d[k].why.any)
			a->nothing = false;
	if (a->nothing)
		goto done;

	/* 5: the new writable layer */
	r = build_layer(a);
	if (r < 0)
		goto fail;
	/* what pip wrote, and the new layer, to disk now (not later, when the
	 * daemon holds its lock for the switch) */
	if (syncfs(a->env_fd) < 0) {
		r = vf_error_errno(errno, "syncfs %s", s->home);
		goto fail;
	}
done:
	*out = a;
	return 0;
fail:
	absorb_free(a);
	return r;
}

bool absorb_empty(const struct absorb *a)
{
	return a->nothing;
}

const char *absorb_changed(const struct absorb *a, bool (*in_use)(void *ctx, dev_t dev, ino_t ino), void *ctx)
{
	for (size_t k = 0; k < a->nd; k++) {
		const struct adist *d = &a->d[k];
		if (d->why.any)
			continue;
		for (size_t i = 0; i < d->nf; i++) {
			const struct afile *f = &d->f[i];
			struct stat st;
			if (f->src != A_UPPER || !S_ISREG(f->mode) || f->dropped)
				continue;
			if (fstatat(a->upper_fd, f->path, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_ino != f->ino ||
			    st.st_ctim.tv_sec != f->ctime.tv_sec || st.st_ctim.tv_nsec != f->ctime.tv_nsec)
				return f->path;
			if (in_use && in_use(ctx, f->dev, f->ino))
				return f->path;
		}
	}
	return NULL;
}

bool absorb_took(struct absorb *a, dev_t dev, ino_t ino)
{
	char key[48];

	if (!a->took.cap) {
		for (size_t k = 0; k < a->nd; k++) {
			struct adist *d = &a->d[k];
			for (size_t i = 0; i < d->nf && !d->why.any; i++)
				if (d->f[i].src == A_UPPER && !d->f[i].dropped && d->f[i].ino)
					strmap_put(&a->took, key, took_key(d->f[i].dev, d->f[i].ino, key), NULL);
		}
		strmap_put(&a->took, "", 0, NULL); /* built, even if empty */
	}
	return strmap_get(&a->took, key, took_key(dev, ino, key)) != NULL;
}

/* A file that became an object is the store's now: read-only, the store's. */
static void seal_objects(struct absorb *a)
{
	struct stat home;
	bool own = geteuid() == 0 && fstat(a->s->fd, &home) == 0;

	for (size_t k = 0; k < a->nd; k++) {
		struct adist *d = &a->d[k];
		if (d->why.any)
			continue;
		for (size_t i = 0; i < d->nf; i++) {
			char p[OBJID_STR_MAX];
			if (!d->f[i].linked)
				continue;
			objid_path(&d->f[i].obj, p);
			fchmodat(a->s->objects_fd, p, store_object_perm(a->s, d->f[i].mode), 0);
			if (own)
				fchownat(a->s->objects_fd, p, home.st_uid, home.st_gid, AT_SYMLINK_NOFOLLOW);
		}
	}
}

int absorb_commit(struct absorb *a)
{
	int r;

	if (a->nothing) {
		store_txn_abort(a->txn);
		a->txn = NULL;
		return 0;
	}
	/* objects and manifests durable under their names */
	r = store_txn_commit(a->txn);
	a->txn = NULL;
	if (r < 0)
		return r;
	for (size_t k = 0; k < a->nd; k++) {
		struct adist *d = &a->d[k];
		if (d->why.any)
			continue;
		r = store_package_register(a->s, d->meta.name, &d->pkg_id);
		if (r < 0)
			return r;
	}
	/* the switch */
	r = env_save_at(a->env_fd, a->env2);
	if (r < 0)
		return r;
	a->committed = true;
	seal_objects(a);
	for (size_t k = 0; k < a->nd; k++) {
		struct adist *d = &a->d[k];
		if (d->why.any)
			continue;
		a->st->absorbed++;
		a->st->files += d->nf;
		a->st->bytes += d->bytes;
		say(a, "absorbed %s %s (%zu files, %.1f MB)", d->meta.name, d->meta.version, d->nf,
		    (double)d->bytes / 1e6);
	}
	if (a->o && a->o->keep_old_layer)
		a->st->old_layer = xstrdup(env_upper(a->env));
	else
		rm_rf_at(a->env_fd, env_upper(a->env));
	return 0;
}

int venv_absorb(struct store *s, const char *name, const struct absorb_opts *o, struct absorb_stats *st)
{
	struct absorb *a;
	int lock = env_lock(s, name);

	if (lock == -EWOULDBLOCK)
		return vf_error(EBUSY, "env %s is locked: a venvfs daemon serves it, or another absorb runs", name);
	if (lock < 0)
		return lock;
	int r = absorb_prepare(s, name, o, st, &a);
	if (r == 0) {
		r = absorb_commit(a);
		absorb_free(a);
	}
	close(lock);
	return r;
}
