/*
 * import.c - turning a real venv into an env (see venv.h).
 *
 * The import runs in phases, and nothing is written to the store before
 * the venv has been checked for fatal problems:
 *
 *   1. walk      every entry of the venv, lstat() only; no symlink is ever
 *                followed, and every later open goes through openat2()
 *                with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so nothing
 *                outside the venv is read, whatever a RECORD says;
 *   2. records   parse each *.dist-info/RECORD and resolve its rows in the
 *                walked tree. A path escaping the env, an absolute path,
 *                a symlink pointing out of the env or a malformed row is a
 *                fatal error naming the file and line;
 *   3. read      (parallel) read each regular file once: SHA-256 where a
 *                RECORD row has a hash, a template for path-dependent
 *                files, normalised bytecode for package pycs, then insert
 *                the stored form into the store (a transaction);
 *   4. classify  a distribution whose files all match its RECORD becomes a
 *                package; any other keeps its files as the env's own
 *                content, with a warning naming them. Bytecode listed but
 *                gone is just absent; bytecode not listed joins the
 *                package that owns its source when it is valid for it.
 *                Only then is each RECORD stored (store_records());
 *   5. build     package manifests, the env tree (everything else, with
 *                real modes and times), the original-mtimes record;
 *   6. commit    objects durable, then package manifests, then the env
 *                directory, renamed into place in one step.
 *
 * A stat cache (HOME/cache/import-*) remembers, per file of a venv, the
 * (dev, ino, size, mtime, ctime) it had and what was stored for it, so a
 * re-import reads only files that changed. Files modified within two
 * seconds of an import are never cached (the "racy git" problem).
 *
 * Bytecode normalisation: package.h (and pyc.h for when a pyc is valid
 * for its source). The original times are kept per env (the mtimes
 * object) and restored by export.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <xxhash.h>
#include <dirent.h>

#include "distinfo.h"
#include "env.h"
#include "ingest.h"
#include "package.h"
#include "pyc.h"
#include "statcache.h"
#include "store.h"
#include "template.h"
#include "tree.h"
#include "venv.h"
#include "view.h"
#include "workers.h"

#define NO_ENT      UINT32_MAX
#define FLUSH_BYTES (128ull << 20) /* flush (make durable, visible) every 128 MiB */

/* One entry of the walked venv. */
struct ient {
	char *path; /* relative to the venv root; "" is the root */
	uint32_t len;
	uint32_t parent; /* index of the parent directory */
	uint32_t n_children;
	struct stat st;
	int32_t owner;        /* distribution that lists it, -1: the env's own */
	int32_t pyc_cand;     /* unlisted pyc whose source a distribution owns */
	int32_t row;          /* its RECORD row in the owner, -1 if none */
	uint32_t src;         /* pyc: the entry of its source .py, or NO_ENT */
	bool has_own;         /* directory with an own entry below it */
	int32_t dir_added_by; /* last package that added this directory */
	bool site_chain;      /* lib, lib/pythonX.Y, site-packages */
	bool is_record;       /* a dist-info's RECORD: stored by store_records() */
	/* filled by the read phase (regular files) */
	bool needs_sha; /* a RECORD row has a hash for it */
	bool norm_considered;
	bool have_sha;
	uint16_t tflags; /* TREE_F_* of the stored form */
	uint8_t sha[32];
	struct objid obj;
	uint64_t stored_size; /* size of what was stored (differs for pycs) */
};

/* One *.dist-info with a RECORD. */
struct dist {
	uint32_t dir_ent; /* the dist-info directory */
	uint32_t record_ent;
	char *record_what; /* "<venv>/lib/.../RECORD" for messages */
	struct buf record_text;
	struct record rec;
	uint32_t *row_ent;   /* per row: entry index, or NO_ENT */
	unsigned *row_root;  /* per row: TREE_ROOT_* */
	char **row_rel;      /* per row: path relative to that root */
	struct dist_why why; /* why it cannot be a package (why.any) */
	struct dist_meta meta;
	struct objid pkg_id;
	struct buf manifest;
	int64_t *orig_mtimes;
	uint32_t n_nodes;
};

struct imp {
	struct store *s;
	const struct import_opts *o;
	struct import_stats *st;
	char *abs, *real; /* the venv's path, as given and resolved */
	int rootfd;
	struct ient *e;
	size_t n, cap;
	struct strmap index; /* path -> entry */
	struct dist *d;
	size_t nd;
	struct pyvenv_cfg cfg;
	char *site;   /* "lib/python3.11/site-packages" */
	char *prompt; /* default prompt spelled in activate scripts */
	struct store_txn *txn;
	/* read phase */
	uint32_t *work; /* the entries to read (regular files) */
	size_t n_work;
	/* stat cache (statcache.h) */
	struct statcache *cache;
	char *cache_name;
	uint64_t cache_key;
	uint8_t digest[16]; /* of this walk */
	int64_t start_sec;
};

static void warn(struct imp *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* VENVFS_DEBUG_TIMING=1: phase durations on stderr, for profiling. */
static void phase(const char *name)
{
	static uint64_t last;
	static int on = -1;
	uint64_t now = now_ns();

	if (on < 0)
		on = getenv("VENVFS_DEBUG_TIMING") != NULL;
	if (on && last)
		fprintf(stderr, "venvfs import: %-10s %7.1f ms\n", name, (double)(now - last) / 1e6);
	last = now;
}

static void warn(struct imp *im, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	if (!msg)
		return;
	im->st->warnings++;
	if (im->o->warn)
		im->o->warn(im->o->warn_ctx, msg);
	else
		fprintf(stderr, "venvfs: warning: %s\n", msg);
}

/* ---- safe opening ----------------------------------------------------------- */

/* Open a file of the venv without following any symlink or leaving it. */
static int open_beneath(int rootfd, const char *path, int flags)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW),
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	long fd = syscall(SYS_openat2, rootfd, path, &how, sizeof(how));

	if (fd < 0 && errno == ENOSYS) {
		/* pre-5.6 kernel: the walk saw no symlink on this path, and the
		 * last component is opened with O_NOFOLLOW */
		fd = openat(rootfd, path, flags | O_CLOEXEC | O_NOFOLLOW);
	}
	return fd < 0 ? -errno : (int)fd;
}

/* ---- 1. walk ---------------------------------------------------------------- */

static uint32_t add_ent(struct imp *im, const char *path, size_t len, uint32_t parent, const struct stat *st)
{
	if (im->n == im->cap) {
		im->cap = im->cap ? im->cap * 2 : 4096;
		im->e = xrealloc(im->e, im->cap * sizeof(*im->e));
	}
	uint32_t i = (uint32_t)im->n++;
	struct ient *e = &im->e[i];
	memset(e, 0, sizeof(*e));
	e->path = xstrndup(path, len);
	e->len = (uint32_t)len;
	e->parent = parent;
	e->st = *st;
	e->owner = -1;
	e->pyc_cand = -1;
	e->row = -1;
	e->src = NO_ENT;
	e->dir_added_by = -1;
	*strmap_put(&im->index, path, len, NULL) = i;
	statcache_digest_add(im->digest, path, len, st);
	if (parent != i)
		im->e[parent].n_children++;
	if (S_ISREG(st->st_mode))
		im->st->files++;
	else if (S_ISDIR(st->st_mode))
		im->st->dirs++;
	else if (S_ISLNK(st->st_mode))
		im->st->symlinks++;
	else
		im->st->special++;
	return i;
}

static int walk_dir(struct imp *im, int dfd, uint32_t dir)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	int r = 0;

	if (!d) {
		close(dfd);
		return vf_error_errno(errno, "%s/%s", im->abs, im->e[dir].path);
	}
	while ((de = readdir(d))) {
		struct stat st;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			r = vf_error_errno(errno, "%s/%s/%s", im->abs, im->e[dir].path, de->d_name);
			break;
		}
		_cleanup_free_ char *p =
			im->e[dir].len ? xasprintf("%s/%s", im->e[dir].path, de->d_name) : xstrdup(de->d_name);
		uint32_t i = add_ent(im, p, strlen(p), dir, &st);
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0) {
				r = vf_error_errno(errno, "%s/%s", im->abs, p);
				break;
			}
			r = walk_dir(im, sub, i);
			if (r < 0)
				break;
		}
	}
	closedir(d);
	return r;
}

static uint32_t find_ent(struct imp *im, const char *path, size_t len)
{
	uint64_t *v = strmap_get(&im->index, path, len);

	return v ? (uint32_t)*v : NO_ENT;
}

/* ---- 2. records --------------------------------------------------------------- */

/* Where does symlink entry i point, relative to the env root? -1: outside. */
static int symlink_inside(struct imp *im, uint32_t i, struct buf *target_out)
{
	char target[PATH_MAX + 1];
	_cleanup_close_ int pfd = -1;
	struct ient *e = &im->e[i];
	_cleanup_free_ char *dir = NULL;
	const char *slash = strrchr(e->path, '/');
	ssize_t n;

	dir = slash ? xstrndup(e->path, (size_t)(slash - e->path)) : xstrdup("");
	pfd = dir[0] ? open_beneath(im->rootfd, dir, O_RDONLY | O_DIRECTORY) : dup(im->rootfd);
	if (pfd < 0)
		return -1;
	n = readlinkat(pfd, slash ? slash + 1 : e->path, target, sizeof(target) - 1);
	if (n < 0)
		return -1;
	target[n] = '\0';
	if (target[0] == '/') {
		const char *roots[2] = {im->abs, im->real};
		for (int k = 0; k < 2; k++) {
			size_t rl = strlen(roots[k]);
			if (!strncmp(target, roots[k], rl) && (target[rl] == '/' || target[rl] == '\0'))
				return path_resolve_rel("", target + rl, target_out) < 0 ? -1 : 0;
		}
		return -1;
	}
	return path_resolve_rel(dir, target, target_out) < 0 ? -1 : 0;
}

static int read_records(struct imp *im)
{
	_cleanup_buf_ struct buf full = {0}, tgt = {0};
	size_t site_len = strlen(im->site);
	uint32_t site_ent = find_ent(im, im->site, site_len);

	/* Every *.dist-info directory directly in site-packages with a RECORD. */
	for (uint32_t i = 0; i < im->n; i++) {
		struct ient *e = &im->e[i];
		if (e->parent != site_ent || !S_ISDIR(e->st.st_mode) || !str_has_suffix(e->path, ".dist-info"))
			continue;
		_cleanup_free_ char *rp = xasprintf("%s/RECORD", e->path);
		uint32_t ri = find_ent(im, rp, strlen(rp));
		if (ri == NO_ENT || !S_ISREG(im->e[ri].st.st_mode))
			continue;
		im->d = xrealloc(im->d, (im->nd + 1) * sizeof(*im->d));
		struct dist *d = &im->d[im->nd++];
		memset(d, 0, sizeof(*d));
		d->dir_ent = i;
		d->record_ent = ri;
		im->e[ri].is_record = true;
		d->record_what = xasprintf("%s/%s", im->abs, rp);
	}

	for (size_t k = 0; k < im->nd; k++) {
		struct dist *d = &im->d[k];
		_cleanup_close_ int fd = open_beneath(im->rootfd, im->e[d->record_ent].path, O_RDONLY);
		int r;

		if (fd < 0)
			return vf_error_errno(-fd, "%s", d->record_what);
		struct stat st;
		if (fstat(fd, &st) < 0)
			return vf_error_errno(errno, "%s", d->record_what);
		if ((uint64_t)st.st_size > RECORD_MAX_BYTES) {
			dist_why(&d->why, "its RECORD is larger than %u MiB", RECORD_MAX_BYTES >> 20);
			st.st_size = 0; /* no rows: nothing of it is read as a list */
		}
		buf_grow(&d->record_text, (size_t)st.st_size);
		ssize_t n = read_full(fd, d->record_text.data, (size_t)st.st_size);
		if (n < 0)
			return vf_error_errno((int)-n, "%s", d->record_what);
		d->record_text.len = (size_t)n;
		d->record_text.data[n] = '\0';
		r = record_parse(d->record_text.data, d->record_text.len, d->record_what, &d->rec);
		if (r < 0)
			return r;
		d->row_ent = xmalloc((d->rec.n + 1) * sizeof(uint32_t));
		d->row_root = xmalloc((d->rec.n + 1) * sizeof(unsigned));
		d->row_rel = xcalloc(d->rec.n + 1, sizeof(char *));

		for (size_t j = 0; j < d->rec.n; j++) {
			struct record_row *row = &d->rec.rows[j];
			d->row_ent[j] = NO_ENT;
			if (row->path[0] == '/')
				return vf_error(EINVAL,
						"%s:%u: absolute path %s (files outside the env cannot be imported)",
						d->record_what, row->line, row->path);
			if (path_resolve_rel(im->site, row->path, &full) < 0)
				return vf_error(EINVAL, "%s:%u: path %s escapes the env", d->record_what, row->line,
						row->path);
			if (full.len > site_len && !strncmp(full.data, im->site, site_len) &&
			    full.data[site_len] == '/') {
				d->row_root[j] = TREE_ROOT_SITE;
				d->row_rel[j] = xstrdup(full.data + site_len + 1);
			} else {
				d->row_root[j] = TREE_ROOT_ENV;
				d->row_rel[j] = xstrdup(full.data);
			}
			_cleanup_free_ char *src_of_pyc = pyc_source_path(full.data, full.len);
			bool is_pyc = src_of_pyc != NULL;
			uint32_t ei = full.len ? find_ent(im, full.data, full.len) : NO_ENT;
			if (ei == NO_ENT) {
				/* Not in the tree: through a symlink? Never follow it;
				 * pointing outside the env is an error. */
				for (size_t p = 0; p < full.len; p++) {
					if (full.data[p] != '/')
						continue;
					uint32_t pi = find_ent(im, full.data, p);
					if (pi != NO_ENT && S_ISLNK(im->e[pi].st.st_mode)) {
						if (symlink_inside(im, pi, &tgt) < 0)
							return vf_error(
								EINVAL,
								"%s:%u: %s goes through symlink %s, which points "
								"outside the env",
								d->record_what, row->line, row->path, im->e[pi].path);
						dist_why(&d->why, "%s is behind a symlink", row->path);
						goto next_row;
					}
				}
				if (!is_pyc)
					dist_why(&d->why, "%s is missing", row->path);
				goto next_row;
			}
			struct ient *fe = &im->e[ei];
			if (S_ISLNK(fe->st.st_mode) && symlink_inside(im, ei, &tgt) < 0)
				return vf_error(EINVAL, "%s:%u: %s is a symlink pointing outside the env",
						d->record_what, row->line, row->path);
			if (fe->owner >= 0) {
				if (!is_pyc)
					dist_why(&d->why, "%s is also listed by %s", row->path,
						 im->e[im->d[fe->owner].dir_ent].path);
				goto next_row;
			}
			if (S_ISDIR(fe->st.st_mode)) {
				dist_why(&d->why, "%s is a directory", row->path);
				goto next_row;
			}
			if (!S_ISREG(fe->st.st_mode) && !S_ISLNK(fe->st.st_mode)) {
				dist_why(&d->why, "%s is not a regular file", row->path);
				goto next_row;
			}
			fe->owner = (int32_t)k;
			fe->row = (int32_t)j;
			fe->needs_sha = S_ISREG(fe->st.st_mode) && row->hash[0];
			d->row_ent[j] = ei;
next_row:;
		}
		/* the RECORD file belongs to its distribution even if unlisted */
		if (im->e[d->record_ent].owner < 0)
			im->e[d->record_ent].owner = (int32_t)k;
	}

	/* Unlisted bytecode follows its source. */
	for (uint32_t i = 0; i < im->n; i++) {
		struct ient *e = &im->e[i];
		if (!S_ISREG(e->st.st_mode))
			continue;
		_cleanup_free_ char *src = pyc_source_path(e->path, e->len);
		if (!src)
			continue;
		uint32_t si = find_ent(im, src, strlen(src));
		if (si == NO_ENT || !S_ISREG(im->e[si].st.st_mode))
			continue;
		e->src = si;
		if (e->owner < 0 && im->e[si].owner >= 0)
			e->pyc_cand = im->e[si].owner;
	}
	return 0;
}

/* ---- stat cache ------------------------------------------------------------- */

/* What the cached results depend on besides each file's own stat. */
static uint64_t cache_key(struct imp *im)
{
	struct buf k = {0};

	buf_printf(&k, "%s%c%s%c%s%c%s", im->abs, 0, im->real, 0, im->prompt ? im->prompt : "", 0, im->site);
	uint64_t h = XXH3_64bits(k.data, k.len);
	buf_free(&k);
	return h;
}

static bool cache_lookup(struct imp *im, struct ient *e, bool want_norm)
{
	const struct statcache_ent *c = statcache_get(im->cache, e->path, e->len);

	if (!c || !statcache_key_matches(c, &e->st))
		return false;
	if (e->needs_sha && !c->have_sha)
		return false;
	if ((bool)c->norm_considered != want_norm)
		return false;
	if (want_norm) {
		struct statcache_ent src;
		statcache_key_from(&src, &im->e[e->src].st);
		if (c->src_mtime_ns != src.mtime_ns || c->src_size != src.size)
			return false;
	}
	memcpy(e->obj.hash, c->obj_hash, 16);
	e->obj.seq = c->obj_seq;
	if (!store_object_exists(im->s, &e->obj))
		return false;
	e->tflags = c->tflags;
	e->stored_size = c->stored_size;
	e->have_sha = c->have_sha;
	e->norm_considered = c->norm_considered;
	memcpy(e->sha, c->sha, 32);
	return true;
}

static void cache_save(struct imp *im, const struct env *env)
{
	struct statcache *c = statcache_new(im->cache_key);
	_cleanup_buf_ struct buf text = {0};

	memcpy(c->digest, im->digest, 16);
	env_format(env, &text);
	statcache_set_env(c, text.data, text.len);
	for (size_t i = 0; i < im->n; i++) {
		struct ient *e = &im->e[i];
		if (!S_ISREG(e->st.st_mode) || e->is_record)
			continue;
		/* racy: modified too recently to trust a later equal stat */
		if (e->st.st_mtim.tv_sec >= im->start_sec - 2 || e->st.st_ctim.tv_sec >= im->start_sec - 2) {
			memset(c->digest, 0, 16); /* and the whole-walk shortcut is off */
			continue;
		}
		struct statcache_ent *ce = statcache_add(c, e->path, e->len);
		statcache_key_from(ce, &e->st);
		if (e->norm_considered && e->src != NO_ENT) {
			struct statcache_ent src;
			statcache_key_from(&src, &im->e[e->src].st);
			ce->src_mtime_ns = src.mtime_ns;
			ce->src_size = src.size;
		}
		memcpy(ce->obj_hash, e->obj.hash, 16);
		ce->obj_seq = e->obj.seq;
		ce->tflags = e->tflags;
		ce->stored_size = e->stored_size;
		ce->have_sha = e->have_sha;
		ce->norm_considered = e->norm_considered;
		memcpy(ce->sha, e->sha, 32);
	}
	statcache_save(im->s, im->cache_name, c);
	statcache_free(c);
}

/*
 * Nothing in the venv changed since the import that made the current env,
 * and the env is still what that import made: the result would be the
 * same, so there is nothing to do.
 */
static bool unchanged_since_last_import(struct imp *im, const char *env_name)
{
	_cleanup_buf_ struct buf text = {0};
	_cleanup_free_ char *p = xasprintf("%s/env", env_name);
	static const uint8_t zero[16];

	if (!im->cache || !memcmp(im->cache->digest, zero, 16) || memcmp(im->cache->digest, im->digest, 16))
		return false;
	if (read_file_at(im->s->envs_fd, p, 1 << 24, &text) < 0)
		return false;
	return im->cache->env_text && !strcmp(text.data, im->cache->env_text);
}

/* ---- 3. read ----------------------------------------------------------------- */

static bool rel_to_root(struct imp *im, const struct ient *e, unsigned *root, const char **rel);

static bool is_template_candidate(const struct ient *e)
{
	return !strcmp(e->path, "pyvenv.cfg") || package_is_script(e->path);
}

static bool is_activate(const struct ient *e)
{
	return str_has_prefix(e->path, "bin/activate");
}

/* Should this pyc be normalised, if its header is valid for its source? */
static bool want_norm(struct imp *im, const struct ient *e)
{
	int32_t d = e->owner >= 0 ? e->owner : e->pyc_cand;

	return d >= 0 && e->src != NO_ENT && im->e[e->src].owner == d;
}

/* Read entry i, and store its content in the form the env will need. */
static int read_one(struct imp *im, uint32_t i, struct buf *scratch, bool allow_norm)
{
	struct ient *e = &im->e[i];
	bool norm = allow_norm && want_norm(im, e);
	_cleanup_close_ int fd = -1;
	_cleanup_ingest_ struct ingest_file c = {
		.top = im->abs,
		.path = e->path,
		.changed = "changed during the import; run it again",
	};
	uint64_t added = 0;
	int r = 0;

	if (allow_norm && cache_lookup(im, e, norm)) {
		__atomic_add_fetch(&im->st->cache_hits, 1, __ATOMIC_RELAXED);
		return 0;
	}
	fd = open_beneath(im->rootfd, e->path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return vf_error_errno(-fd, "%s/%s", im->abs, e->path);
	r = ingest_read(&c, fd, (uint64_t)e->st.st_size, scratch);
	if (r < 0)
		return r;

	if (e->needs_sha) {
		sha256_raw(c.data, c.len, e->sha);
		e->have_sha = true;
	}
	e->tflags = 0;
	e->norm_considered = norm;
	if (is_template_candidate(e)) {
		struct tpl_paths tp = {
			.env = im->abs,
			.env_real = im->real,
			.prompt = is_activate(e) ? im->prompt : NULL,
		};
		if (ingest_template(&c, &tp))
			e->tflags |= TREE_F_TEMPLATE;
	} else if (norm) {
		const struct ient *src = &im->e[e->src];
		unsigned root;
		const char *rel;
		rel_to_root(im, src, &root, &rel);
		_cleanup_free_ char *p1 = xasprintf("%s/%s", im->abs, src->path);
		_cleanup_free_ char *p2 = xasprintf("%s/%s", im->real, src->path);
		const char *at[2] = {p1, p2};
		if (package_pyc_normalise(c.data, c.len, src->st.st_mtim.tv_sec, (uint64_t)src->st.st_size, at,
					  strcmp(p1, p2) ? 2 : 1, root, rel, &c.alt)) {
			ingest_use_alt(&c);
			e->tflags |= TREE_F_PYC_NORM;
		}
	}
	/* never a hard link: the venv's files stay the user's, who may change them */
	r = ingest_put(im->txn, &c, e->st.st_mode, -1, NULL, &e->obj, &added, NULL);
	e->stored_size = c.put_len;
	if (r < 0)
		return r;
	__atomic_add_fetch(&im->st->new_bytes, added, __ATOMIC_RELAXED);
	return 0;
}

/* Worker job k: read_one() of the k-th entry to read. */
static int read_job(void *ctx, size_t k, struct buf *scratch, uint64_t *bytes)
{
	struct imp *im = ctx;
	uint32_t i = im->work[k];

	*bytes = (uint64_t)im->e[i].st.st_size;
	return read_one(im, i, scratch, true);
}

static int read_all(struct imp *im)
{
	struct workers w = {
		.threads = im->o->threads ? im->o->threads : workers_cpus(),
		.job = read_job,
		.ctx = im,
		.what = "importing",
		.progress = im->o->progress,
	};

	im->work = xmalloc((im->n + 1) * sizeof(uint32_t));
	for (uint32_t i = 0; i < im->n; i++)
		if (S_ISREG(im->e[i].st.st_mode) && !im->e[i].is_record) {
			im->work[im->n_work++] = i;
			im->st->bytes += (uint64_t)im->e[i].st.st_size;
		}
	w.n = im->n_work;
	return workers_run(&w);
}

/* ---- 4. classify --------------------------------------------------------------- */

static int classify(struct imp *im)
{
	_cleanup_buf_ struct buf scratch = {0};
	char want[RECORD_HASH_MAX];

	for (size_t k = 0; k < im->nd; k++) {
		struct dist *d = &im->d[k];
		for (size_t j = 0; j < d->rec.n; j++) {
			uint32_t ei = d->row_ent[j];
			struct record_row *row = &d->rec.rows[j];
			if (ei == NO_ENT)
				continue;
			struct ient *e = &im->e[ei];
			if (S_ISLNK(e->st.st_mode)) {
				if (row->hash[0])
					dist_why(&d->why, "%s is a symlink with a hash", row->path);
				continue;
			}
			if (row->size >= 0 && row->size != e->st.st_size) {
				dist_why(&d->why, "%s has changed (size %lld, RECORD says %lld)", row->path,
					 (long long)e->st.st_size, (long long)row->size);
				continue;
			}
			if (!row->hash[0])
				continue;
			if (!str_has_prefix(row->hash, "sha256=")) {
				dist_why(&d->why, "%s: unsupported hash %s", row->path, row->hash);
				continue;
			}
			memcpy(want, "sha256=", 7);
			b64url_nopad(e->sha, 32, want + 7);
			if (strcmp(want, row->hash) != 0)
				dist_why(&d->why, "%s has changed since it was installed", row->path);
		}
	}

	/* Decide, then undo package-only transformations of what stays own. */
	for (size_t i = 0; i < im->n; i++) {
		struct ient *e = &im->e[i];
		int32_t d = e->owner >= 0 ? e->owner : e->pyc_cand;
		if (d < 0)
			continue;
		bool pkg = !im->d[d].why.any;
		if (e->owner < 0) {
			/* an unlisted pyc joins its package only if it was valid */
			if (pkg && (e->tflags & TREE_F_PYC_NORM))
				e->owner = d;
			e->pyc_cand = -1;
		}
		if (!pkg) {
			e->owner = -1;
			if (e->tflags & TREE_F_PYC_NORM) {
				int r = read_one(im, (uint32_t)i, &scratch, false);
				if (r < 0)
					return r;
			}
		}
	}
	for (size_t k = 0; k < im->nd; k++) {
		struct dist *d = &im->d[k];
		if (d->why.any) {
			im->st->own_dists++;
			warn(im, "%s/%s: kept as this env's own files, not shared: %s%s", im->abs,
			     im->e[d->dir_ent].path, d->why.text.data, dist_why_more(&d->why));
		}
	}
	return 0;
}

/* ---- 5. build ------------------------------------------------------------------ */

/* A small file of the venv, or nothing. */
static void read_small(struct imp *im, const char *path, struct buf *out)
{
	int fd = open_beneath(im->rootfd, path, O_RDONLY);
	struct stat st;

	buf_reset(out);
	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (1 << 24)) {
		buf_grow(out, (size_t)st.st_size);
		ssize_t n = read_full(fd, out->data, (size_t)st.st_size);
		out->len = n > 0 ? (size_t)n : 0;
		out->data[out->len] = '\0';
	}
	close(fd);
}

static void read_metadata(struct imp *im, struct dist *d)
{
	_cleanup_buf_ struct buf meta = {0}, wheel = {0};
	_cleanup_free_ char *mp = xasprintf("%s/METADATA", im->e[d->dir_ent].path);
	_cleanup_free_ char *wp = xasprintf("%s/WHEEL", im->e[d->dir_ent].path);

	read_small(im, mp, &meta);
	read_small(im, wp, &wheel);
	dist_meta_parse(im->e[d->dir_ent].path, meta.data, meta.len, wheel.data, wheel.len, &d->meta);
}

static void entry_from(const struct ient *e, struct tree_entry *te, bool package)
{
	memset(te, 0, sizeof(*te));
	te->mode = e->st.st_mode;
	te->mtime_sec = package ? TREE_STORE_MTIME : e->st.st_mtim.tv_sec;
	te->mtime_nsec = package ? 0 : (uint32_t)e->st.st_mtim.tv_nsec;
	if (S_ISREG(e->st.st_mode)) {
		/* what the view serves: the stored content; a template's
		 * size depends on where it is rendered, so it records none
		 * (and the same package from two paths is one package) */
		te->size = (e->tflags & TREE_F_TEMPLATE) ? 0 : e->stored_size;
		te->obj = e->obj;
		te->flags = e->tflags;
	} else if (S_ISCHR(e->st.st_mode) || S_ISBLK(e->st.st_mode)) {
		te->dev_major = major(e->st.st_rdev);
		te->dev_minor = minor(e->st.st_rdev);
	}
}

static int add_symlink(struct imp *im, struct tree_builder *tb, unsigned root, const char *rel, const struct ient *e,
		       struct tree_entry *te)
{
	char target[PATH_MAX + 1];
	_cleanup_free_ char *dir = NULL;
	const char *slash = strrchr(e->path, '/');
	_cleanup_close_ int pfd = -1;

	dir = slash ? xstrndup(e->path, (size_t)(slash - e->path)) : xstrdup("");
	pfd = dir[0] ? open_beneath(im->rootfd, dir, O_RDONLY | O_DIRECTORY) : dup(im->rootfd);
	ssize_t n = pfd >= 0 ? readlinkat(pfd, slash ? slash + 1 : e->path, target, sizeof(target) - 1) : -1;
	if (n <= 0)
		return vf_error_errno(errno, "%s/%s: readlink", im->abs, e->path);
	te->target = target;
	te->target_len = (size_t)n;
	return tree_builder_add(tb, root, rel, strlen(rel), te);
}

/*
 * Store each RECORD, once classify has decided: a package's RECORD becomes
 * a template if rows of path-dependent files (scripts) need one; any other
 * is stored as read. Storing it in the read phase would leave the original
 * behind, unreferenced, whenever the template replaces it.
 */
static int store_records(struct imp *im)
{
	for (size_t k = 0; k < im->nd; k++) {
		struct dist *d = &im->d[k];
		struct ient *e = &im->e[d->record_ent];
		_cleanup_buf_ struct buf blob = {0};
		_cleanup_free_ bool *tpl = xcalloc(d->rec.n + 1, sizeof(bool));
		char want[RECORD_HASH_MAX];
		const struct buf *put = &d->record_text;
		uint64_t added;

		e->tflags = 0;
		for (size_t j = 0; j < d->rec.n && !d->why.any; j++) {
			uint32_t ei = d->row_ent[j];
			if (ei == NO_ENT || !(im->e[ei].tflags & TREE_F_TEMPLATE))
				continue;
			memcpy(want, "sha256=", 7);
			b64url_nopad(im->e[ei].sha, 32, want + 7);
			tpl[j] = !strcmp(want, d->rec.rows[j].hash);
		}
		if (!d->why.any && package_record_template(d->record_text.data, d->record_text.len, &d->rec, tpl,
							   d->row_root, d->row_rel, &blob)) {
			put = &blob;
			e->tflags = TREE_F_TEMPLATE;
		}
		int r = store_txn_put_file(im->txn, put->data, put->len, e->st.st_mode, &e->obj, &added);
		if (r < 0)
			return vf_error_prefix(-r, "%s: ", d->record_what);
		e->stored_size = put->len;
		im->st->bytes += d->record_text.len;
		im->st->new_bytes += added;
	}
	return 0;
}

/* Path of an entry relative to a package root. */
static bool rel_to_root(struct imp *im, const struct ient *e, unsigned *root, const char **rel)
{
	*root = package_root_of(e->path, im->site, rel);
	return true;
}

static int build_package(struct imp *im, size_t k)
{
	struct dist *d = &im->d[k];
	struct tree_entry te;
	uint32_t site_ent = find_ent(im, im->site, strlen(im->site));
	_cleanup_buf_ struct buf path = {0}, full = {0}; /* (before any goto out) */
	int r = 0;

	read_metadata(im, d);
	struct tree_builder *tb = package_builder_new(&d->meta, im->e[d->dir_ent].path);

	/* the two roots take the modes of the env root and site-packages */
	entry_from(&im->e[0], &te, true);
	tree_builder_add(tb, TREE_ROOT_ENV, "", 0, &te);
	entry_from(&im->e[site_ent], &te, true);
	tree_builder_add(tb, TREE_ROOT_SITE, "", 0, &te);

	for (uint32_t i = 0; i < im->n; i++) {
		struct ient *e = &im->e[i];
		unsigned root;
		const char *rel;
		if (e->owner != (int32_t)k)
			continue;
		rel_to_root(im, e, &root, &rel);
		/* directories on the way, with the modes they really have */
		for (uint32_t p = e->parent; p != 0 && p != site_ent; p = im->e[p].parent) {
			unsigned proot;
			const char *prel;
			if (im->e[p].dir_added_by == (int32_t)k)
				break;
			im->e[p].dir_added_by = (int32_t)k;
			rel_to_root(im, &im->e[p], &proot, &prel);
			entry_from(&im->e[p], &te, true);
			r = tree_builder_add(tb, proot, prel, strlen(prel), &te);
			if (r < 0) {
				r = vf_error_errno(-r, "%s/%s: cannot add to package %s", im->abs, im->e[p].path,
						   d->meta.name);
				goto out;
			}
		}
		entry_from(e, &te, true);
		if (S_ISLNK(e->st.st_mode))
			r = add_symlink(im, tb, root, rel, e, &te);
		else
			r = tree_builder_add(tb, root, rel, strlen(rel), &te);
		if (r < 0) {
			r = vf_error_errno(-r, "%s/%s: cannot add to package %s", im->abs, e->path, d->meta.name);
			goto out;
		}
	}
	r = tree_builder_finish(tb, &d->manifest);
	if (r < 0)
		goto out;

	/* the store may have it already, absorbed from an env where pip
	 * compiled it (package.h): the env takes that package */
	struct objid eq;
	r = package_take_equivalent(im->s, &d->manifest, &eq);
	if (r < 0)
		goto out;
	/* original mtimes of every node, for export */
	struct tree *t;
	r = tree_load(d->manifest.data, d->manifest.len, false, &t);
	if (r < 0)
		goto out;
	d->n_nodes = t->n;
	d->orig_mtimes = xmalloc((t->n + 1) * sizeof(int64_t));
	for (uint32_t i = 0; i < t->n; i++) {
		uint32_t root = tree_path(t, i, &path);
		buf_reset(&full);
		if (root == TREE_ROOT_SITE)
			buf_adds(&full, im->site);
		if (path.len) {
			if (full.len)
				buf_addc(&full, '/');
			buf_add(&full, path.data, path.len);
		}
		uint32_t ei = find_ent(im, full.data ? full.data : "", full.len);
		d->orig_mtimes[i] = ei != NO_ENT ? im->e[ei].st.st_mtim.tv_sec : TREE_STORE_MTIME;
	}
	tree_free(t);
out:
	tree_builder_free(tb);
	return r;
}

static int build_env_tree(struct imp *im, struct objid *id)
{
	struct tree_builder *tb = tree_builder_new(TREE_ENV);
	struct tree_entry te;
	_cleanup_buf_ struct buf out = {0};
	uint64_t added;
	int r = 0;

	/* Which directories does the env tree need? Empty ones, those with
	 * own entries below, and the way to site-packages. */
	for (uint32_t i = 1; i < im->n; i++) {
		struct ient *e = &im->e[i];
		if (e->owner >= 0 || (S_ISDIR(e->st.st_mode) && e->n_children))
			continue;
		for (uint32_t p = e->parent;; p = im->e[p].parent) {
			if (im->e[p].has_own)
				break;
			im->e[p].has_own = true;
			if (p == 0)
				break;
		}
	}
	for (uint32_t i = 0; i < im->n; i++) {
		struct ient *e = &im->e[i];
		if (e->owner >= 0)
			continue;
		if (S_ISDIR(e->st.st_mode) && e->n_children && !e->has_own && !e->site_chain && i != 0)
			continue;
		entry_from(e, &te, false);
		if (S_ISLNK(e->st.st_mode))
			r = add_symlink(im, tb, TREE_ROOT_ENV, e->path, e, &te);
		else
			r = tree_builder_add(tb, TREE_ROOT_ENV, e->path, e->len, &te);
		if (r < 0) {
			r = vf_error_errno(-r, "%s/%s: cannot add to the env tree", im->abs, e->path);
			goto out;
		}
	}
	r = tree_builder_finish(tb, &out);
	if (r < 0)
		goto out;
	r = store_txn_put(im->txn, out.data, out.len, id, &added);
	im->st->new_bytes += added;
out:
	tree_builder_free(tb);
	return r;
}

/* ---- the import --------------------------------------------------------------- */

char *venv_default_name(const char *venv_dir)
{
	_cleanup_free_ char *abs = path_absolute(venv_dir);
	const char *base, *slash;
	struct buf name = {0};

	if (!abs)
		return xstrdup("env");
	slash = strrchr(abs, '/');
	base = slash ? slash + 1 : abs;
	/* "proj/.venv", "proj/venv": the project's name says more */
	if ((base[0] == '.' || !strcmp(base, "venv") || !strcmp(base, "env")) && slash && slash != abs) {
		const char *pslash = memrchr(abs, '/', (size_t)(slash - abs));
		const char *pbase = pslash ? pslash + 1 : abs;
		buf_add(&name, pbase, (size_t)(slash - pbase));
	} else {
		buf_adds(&name, base);
	}
	for (size_t i = 0; i < name.len; i++) {
		char c = name.data[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-' || c == '+'))
			name.data[i] = '_';
	}
	while (name.len && (name.data[0] == '.' || name.data[0] == '-'))
		memmove(name.data, name.data + 1, name.len--);
	if (!name.len)
		buf_adds(&name, "env");
	return name.data;
}

static char *cfg_version(struct imp *im)
{
	const char *v = pyvenv_cfg_get(&im->cfg, "version");
	if (!v)
		v = pyvenv_cfg_get(&im->cfg, "version_info");
	if (!v)
		return NULL;
	/* "3.11.7.final.0" -> "3.11.7" */
	int dots = 0;
	size_t n = 0;
	while (v[n] && (v[n] == '.' || (v[n] >= '0' && v[n] <= '9'))) {
		if (v[n] == '.' && ++dots == 3)
			break;
		n++;
	}
	while (n && v[n - 1] == '.')
		n--;
	return n ? xstrndup(v, n) : NULL;
}

static void imp_free(struct imp *im)
{
	for (size_t i = 0; i < im->n; i++)
		free(im->e[i].path);
	free(im->e);
	strmap_free(&im->index);
	for (size_t k = 0; k < im->nd; k++) {
		struct dist *d = &im->d[k];
		free(d->record_what);
		buf_free(&d->record_text);
		for (size_t j = 0; j < d->rec.n; j++)
			free(d->row_rel[j]);
		record_free(&d->rec);
		free(d->row_ent);
		free(d->row_root);
		free(d->row_rel);
		buf_free(&d->why.text);
		dist_meta_free(&d->meta);
		buf_free(&d->manifest);
		free(d->orig_mtimes);
	}
	free(im->d);
	pyvenv_cfg_free(&im->cfg);
	free(im->abs);
	free(im->real);
	free(im->site);
	free(im->prompt);
	free(im->work);
	if (im->rootfd >= 0)
		close(im->rootfd);
	statcache_free(im->cache);
	free(im->cache_name);
}

static int check_venv(struct imp *im, struct env *env)
{
	_cleanup_buf_ struct buf text = {0};
	int r;

	r = read_file_at(im->rootfd, "pyvenv.cfg", 1 << 20, &text);
	if (r == -ENOENT)
		return vf_error(EINVAL, "%s: not a virtual environment (no pyvenv.cfg)", im->abs);
	if (r < 0)
		return vf_error_prefix(-r, "%s: ", im->abs);
	pyvenv_cfg_parse(text.data, text.len, &im->cfg);
	const char *home = pyvenv_cfg_get(&im->cfg, "home");
	if (!home || !home[0])
		return vf_error(EINVAL, "%s/pyvenv.cfg: no 'home' key: not a virtual environment", im->abs);
	env->python_home = xstrdup(home);
	env->python_version = cfg_version(im);
	if (!env->python_version) {
		/* derive X.Y from the lib/pythonX.Y directory */
		for (uint32_t i = 0; i < im->n; i++)
			if (im->e[i].parent != i && !strncmp(im->e[i].path, "lib/python", 10) &&
			    !strchr(im->e[i].path + 4, '/') && S_ISDIR(im->e[i].st.st_mode))
				env->python_version = xstrdup(im->e[i].path + 10);
		if (!env->python_version)
			return vf_error(EINVAL, "%s/pyvenv.cfg: no Python version and no lib/pythonX.Y", im->abs);
	}
	const char *exe = pyvenv_cfg_get(&im->cfg, "executable");
	if (!exe)
		exe = pyvenv_cfg_get(&im->cfg, "base-executable");
	uint32_t pe = find_ent(im, "bin/python", 10);
	if (!exe && pe != NO_ENT && S_ISLNK(im->e[pe].st.st_mode)) {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(im->rootfd, "bin/python", target, sizeof(target) - 1);
		if (n > 0 && target[0] == '/') {
			target[n] = '\0';
			env->python_executable = xstrdup(target);
		}
	}
	if (!env->python_executable) {
		_cleanup_free_ char *xy = env_python_xy(env);
		env->python_executable = exe ? xstrdup(exe) : xasprintf("%s/python%s", home, xy);
	}
	const char *ssp = pyvenv_cfg_get(&im->cfg, "include-system-site-packages");
	env->system_site_packages = ssp && !strcasecmp(ssp, "true");
	const char *prompt = pyvenv_cfg_get(&im->cfg, "prompt");
	if (prompt) {
		/* venv writes prompt = 'name' (repr) */
		size_t pl = strlen(prompt);
		if (pl >= 2 && (prompt[0] == '\'' || prompt[0] == '"') && prompt[pl - 1] == prompt[0])
			env->prompt = xstrndup(prompt + 1, pl - 2);
		else
			env->prompt = xstrdup(prompt);
	} else {
		/* activate scripts spell "(<dir name>) " */
		const char *base = strrchr(im->abs, '/');
		im->prompt = xstrdup(base && base[1] ? base + 1 : im->abs);
	}
	im->site = env_site_dir(env);
	uint32_t si = find_ent(im, im->site, strlen(im->site));
	if (si == NO_ENT || !S_ISDIR(im->e[si].st.st_mode))
		return vf_error(EINVAL, "%s: not a virtual environment (no %s directory)", im->abs, im->site);
	for (uint32_t p = si; p != 0; p = im->e[p].parent)
		im->e[p].site_chain = true;
	return 0;
}

int venv_import(struct store *s, const char *venv_dir, const struct import_opts *o, struct import_stats *st)
{
	struct imp im;
	struct env *env = xcalloc(1, sizeof(*env));
	struct stat rst;
	_cleanup_close_ int env_lock_fd = -1;
	_cleanup_buf_ struct buf mt = {0};
	int r;

	memset(&im, 0, sizeof(im));
	memset(st, 0, sizeof(*st));
	im.s = s;
	im.o = o;
	im.st = st;
	im.rootfd = -1;
	im.start_sec = time(NULL);

	im.abs = path_absolute(venv_dir);
	im.real = realpath(venv_dir, NULL);
	if (!im.abs || !im.real) {
		r = vf_error_errno(errno, "%s", venv_dir);
		goto out;
	}
	im.rootfd = open(im.real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (im.rootfd < 0 || fstat(im.rootfd, &rst) < 0) {
		r = errno == ENOTDIR ? vf_error(EINVAL, "%s: not a directory", venv_dir)
				     : vf_error_errno(errno, "%s", venv_dir);
		goto out;
	}
	env->name = o->built ? xstrdup("skeleton") : o->name ? xstrdup(o->name) : venv_default_name(venv_dir);
	if (!env_valid_name(env->name)) {
		r = vf_error(EINVAL, "%s: not a valid env name (use letters, digits, '.', '_', '-', '+')", env->name);
		goto out;
	}
	st->env_name = xstrdup(env->name);

	phase("start");
	/* 1. walk */
	add_ent(&im, "", 0, 0, &rst);
	st->dirs = 1;
	r = walk_dir(&im, dup(im.rootfd), 0);
	if (r < 0)
		goto out;
	r = check_venv(&im, env);
	if (r < 0)
		goto out;
	phase("walk");
	im.cache_name = statcache_name(s, im.abs);
	im.cache_key = cache_key(&im);
	if (!o->no_cache && !o->built)
		im.cache = statcache_load(s, im.cache_name, im.cache_key);
	if (!o->built && unchanged_since_last_import(&im, env->name)) {
		struct env *cur = NULL;
		if (env_load(s, env->name, &cur) == 0) {
			st->packages = cur->n_pkgs;
			st->cache_hits = st->files;
			env_free(cur);
			r = 0;
			goto out;
		}
	}
	vf_clear_error();
	struct env *old = NULL;
	if (!o->built && env_load(s, env->name, &old) == 0) {
		/* Importing the same venv again updates its env; another venv
		 * must not silently take over the name. */
		bool same = old->origin && !strcmp(old->origin, im.abs);
		char *from = old->origin ? xstrdup(old->origin) : xstrdup("(created, not imported)");
		bool layer = env_has_layer_content(s, old);
		env->uid = old->uid;
		env_free(old);
		if (!same) {
			r = vf_error(EEXIST, "an env named %s already exists (from %s); choose another with --name",
				     env->name, from);
			free(from);
			goto out;
		}
		free(from);
		/* Replacing it: what was changed through a mount would be lost.
		 * Checked again under the env lock, which keeps anyone (a daemon
		 * serving it) from writing until the new env is in place. */
		if (!layer) {
			env_lock_fd = env_lock(s, env->name);
			if (env_lock_fd == -EWOULDBLOCK)
				r = vf_error(EBUSY,
					     "env %s is in use (a venvfs daemon serves it, or an absorb runs) "
					     "and may be written meanwhile; `venvfs umount` its mount first, or "
					     "import under another --name",
					     env->name);
			else if ((r = env_lock_fd) >= 0 && (r = env_load(s, env->name, &old)) == 0) {
				layer = env_has_layer_content(s, old);
				env_free(old);
			}
			if (r < 0)
				goto out;
		}
		if (layer) {
			r = vf_error(EEXIST,
				     "env %s was changed through a mount (its writable layer holds files); "
				     "`venvfs export` or `venvfs rm` it first, or import under another --name",
				     env->name);
			goto out;
		}
	}
	vf_clear_error();

	/* 2. records: all fatal checks happen here, before any write */
	r = read_records(&im);
	if (r < 0)
		goto out;
	phase("records");

	/* Writers share the store lock; gc waits for us, and we for it
	 * (a skeleton's caller holds it already). */
	if (!o->built && (r = store_lock(s, LOCK_SH, true)) < 0)
		goto out;
	im.txn = store_txn_begin_background(s, FLUSH_BYTES);

	/* 3. read */
	r = read_all(&im);
	if (r < 0)
		goto out;
	/* the data goes to disk while the manifests are built */
	store_txn_flush_background(im.txn);
	phase("read");

	/* 4. classify */
	r = classify(&im);
	if (r < 0)
		goto out;
	r = store_records(&im);
	if (r < 0)
		goto out;
	phase("classify");

	/* 5. build */
	while (!env->uid)
		env->uid = random_u64();
	env->origin = xstrdup(im.abs);
	env->created = (int64_t)time(NULL);
	uint32_t n_pkgs = 0;
	for (size_t k = 0; k < im.nd; k++)
		n_pkgs += !im.d[k].why.any;
	view_mtimes_encode_begin(&mt, n_pkgs);
	for (size_t k = 0; k < im.nd; k++) {
		if (im.d[k].why.any)
			continue;
		r = build_package(&im, k);
		if (r < 0)
			goto out;
		view_mtimes_encode_pkg(&mt, im.d[k].orig_mtimes, im.d[k].n_nodes);
	}
	r = build_env_tree(&im, &env->tree);
	if (r < 0)
		goto out;
	uint64_t added;
	r = store_txn_put(im.txn, mt.data, mt.len, &env->mtimes, &added);
	if (r < 0)
		goto out;
	env->has_mtimes = true;
	for (size_t k = 0; k < im.nd; k++) {
		struct dist *d = &im.d[k];
		if (d->why.any)
			continue;
		r = store_txn_put(im.txn, d->manifest.data, d->manifest.len, &d->pkg_id, &added);
		if (r < 0)
			goto out;
		env_add_package(env, &d->pkg_id, d->meta.name, d->meta.version);
		st->packages++;
	}
	phase("build");

	/* 6. commit: objects (manifests included) durable, then the env */
	r = store_txn_commit(im.txn);
	im.txn = NULL;
	if (r < 0)
		goto out;
	phase("objects");
	for (size_t k = 0; k < im.nd; k++)
		if (!im.d[k].why.any && (r = store_package_register(s, im.d[k].meta.name, &im.d[k].pkg_id)) < 0)
			goto out;
	phase("packages");
	if (o->built) {
		*o->built = steal_pointer(&env);
		goto out;
	}
	r = env_install(s, env, true, NULL);
	if (r < 0)
		goto out;
	phase("env");
	cache_save(&im, env);
	phase("cache save");
out:
	if (im.txn)
		store_txn_abort(im.txn);
	if (!o->built)
		store_unlock(s);
	env_free(env);
	imp_free(&im);
	return r;
}
