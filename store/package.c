/*
 * package.c - the rules import and absorb share (see package.h).
 */
#include "package.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "template.h"

void dist_meta_parse(const char *dist_info, const char *metadata, size_t mlen, const char *wheel, size_t wlen,
		     struct dist_meta *m)
{
	_cleanup_buf_ struct buf val = {0};

	memset(m, 0, sizeof(*m));
	/* dist-info name: {name}-{version}.dist-info */
	const char *base = strrchr(dist_info, '/');
	base = base ? base + 1 : dist_info;
	size_t blen = strlen(base);
	if (str_has_suffix(base, ".dist-info"))
		blen -= strlen(".dist-info");
	const char *dash = memchr(base, '-', blen);
	_cleanup_free_ char *dname = xstrndup(base, dash ? (size_t)(dash - base) : blen);

	if (mlen && rfc822_get(metadata, mlen, "Name", ' ', &val))
		m->name = pep503_normalize(val.data, val.len);
	else
		m->name = pep503_normalize(dname, strlen(dname));
	if (mlen && rfc822_get(metadata, mlen, "Version", ' ', &val))
		m->version = xstrdup(val.data);
	else
		m->version = dash ? xstrndup(dash + 1, blen - (size_t)(dash + 1 - base)) : xstrdup("0");
	if (mlen) {
		rfc822_get(metadata, mlen, "Requires-Dist", '\n', &m->requires);
		rfc822_get(metadata, mlen, "Requires-Python", ' ', &m->requires_python);
	}
	if (wlen)
		rfc822_get(wheel, wlen, "Tag", ' ', &m->tags);
	/* names become directory names in the store */
	if (!m->name[0] || strchr(m->name, '/') || m->name[0] == '.') {
		free(m->name);
		m->name = xstrdup("unnamed");
	}
}

void dist_meta_free(struct dist_meta *m)
{
	free(m->name);
	free(m->version);
	buf_free(&m->tags);
	buf_free(&m->requires);
	buf_free(&m->requires_python);
	memset(m, 0, sizeof(*m));
}

void dist_why(struct dist_why *w, const char *fmt, ...)
{
	va_list ap;
	char msg[1024];

	w->any = true;
	if (w->n++ >= 5)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (w->text.len)
		buf_adds(&w->text, "; ");
	buf_adds(&w->text, msg);
}

const char *dist_why_more(const struct dist_why *w)
{
	return w->n > 5 ? " (and more)" : "";
}

static void set_str(struct tree_builder *tb, enum tree_str which, const struct buf *b)
{
	tree_builder_set_str(tb, which, b->data ? b->data : "", b->len);
}

struct tree_builder *package_builder_new(const struct dist_meta *m, const char *dist_info)
{
	struct tree_builder *tb = tree_builder_new(TREE_PACKAGE);
	const char *base = strrchr(dist_info, '/');

	base = base ? base + 1 : dist_info;
	tree_builder_set_str(tb, TREE_STR_NAME, m->name, strlen(m->name));
	tree_builder_set_str(tb, TREE_STR_VERSION, m->version, strlen(m->version));
	tree_builder_set_str(tb, TREE_STR_DIST_INFO, base, strlen(base));
	set_str(tb, TREE_STR_TAGS, &m->tags);
	set_str(tb, TREE_STR_REQUIRES, &m->requires);
	set_str(tb, TREE_STR_REQUIRES_PYTHON, &m->requires_python);
	return tb;
}

int path_resolve_rel(const char *base, const char *path, struct buf *out)
{
	buf_reset(out);
	buf_grow(out, strlen(base) + strlen(path) + 1);
	out->data[0] = '\0';
	buf_adds(out, base);
	for (const char *p = path; *p;) {
		const char *e = strchrnul(p, '/');
		size_t n = (size_t)(e - p);
		if (n == 0 || (n == 1 && p[0] == '.')) {
			/* skip */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			if (out->len == 0)
				return -1;
			char *slash = memrchr(out->data, '/', out->len);
			out->len = slash ? (size_t)(slash - out->data) : 0;
			out->data[out->len] = '\0';
		} else {
			if (out->len)
				buf_addc(out, '/');
			buf_add(out, p, n);
		}
		p = *e ? e + 1 : e;
	}
	return 0;
}

unsigned package_root_of(const char *env_path, const char *site_dir, const char **rel)
{
	size_t sl = strlen(site_dir);

	if (!strncmp(env_path, site_dir, sl) && (env_path[sl] == '/' || env_path[sl] == '\0')) {
		*rel = env_path[sl] ? env_path + sl + 1 : env_path + sl;
		return TREE_ROOT_SITE;
	}
	*rel = env_path;
	return TREE_ROOT_ENV;
}

bool package_is_script(const char *env_path)
{
	return str_has_prefix(env_path, "bin/") && env_path[4] && !strchr(env_path + 4, '/');
}

bool package_record_template(const char *text, size_t len, const struct record *rec, const bool *row_tpl,
			     const unsigned *row_root, char *const *row_rel, struct buf *blob)
{
	size_t pos = 0;
	bool made = false;

	buf_reset(blob);
	tpl_record_begin(blob);
	for (size_t j = 0; j < rec->n; j++) {
		const struct record_row *row = &rec->rows[j];
		if (!row_tpl[j] || !row->hash[0])
			continue;
		tpl_record_literal(blob, text + pos, row->hash_off - pos);
		tpl_record_row(blob, row_root[j], row_rel[j], strlen(row_rel[j]));
		pos = row->row_end;
		made = true;
	}
	if (!made)
		return false;
	tpl_record_literal(blob, text + pos, len - pos);
	tpl_record_end(blob);
	return true;
}

bool package_pyc_valid(const void *data, size_t len, int64_t src_mtime, uint64_t src_size)
{
	uint32_t hm, hs;

	return pyc_timestamp_header(data, len, &hm, &hs) && hm == (uint32_t)src_mtime && hs == (uint32_t)src_size;
}

bool package_pyc_normalise(const void *data, size_t len, int64_t src_mtime, uint64_t src_size,
			   const char *const *compiled_at, size_t n_paths, unsigned canon_root, const char *canon_rel,
			   struct buf *out)
{
	if (!package_pyc_valid(data, len, src_mtime, src_size))
		return false;
	/* the compile path (co_filename) becomes canonical too */
	_cleanup_free_ char *canon = xasprintf("%s%s%s", PYC_CANON_PREFIX,
					       canon_root == TREE_ROOT_SITE ? "site-packages/" : "env/", canon_rel);
	bool done = false;
	for (size_t i = 0; i < n_paths && !done; i++)
		done = pyc_rewrite_strings(data, len, compiled_at[i], true, canon, out) > 0;
	if (!done) {
		buf_reset(out);
		buf_add(out, data, len);
	}
	pyc_set_mtime(out->data, (uint32_t)TREE_STORE_MTIME);
	return true;
}

static bool valid_pyc(const struct tree_node *n)
{
	return n->flags & (TREE_F_PYC_NORM | TREE_F_PYC_KEPT);
}

static bool same_str(const struct tree *a, const struct tree *b, enum tree_str which)
{
	size_t la, lb;
	const char *sa = tree_str(a, which, &la), *sb = tree_str(b, which, &lb);

	return la == lb && !memcmp(sa, sb, la);
}

/* Nodes are in a canonical order (tree.h), so equal trees align index by index. */
static bool equivalent(const struct tree *a, const struct tree *b)
{
	if (a->hdr->kind != b->hdr->kind || a->n != b->n || a->hdr->n_roots != b->hdr->n_roots)
		return false;
	for (int i = 0; i < TREE_STR_COUNT; i++)
		if (!same_str(a, b, (enum tree_str)i))
			return false;
	for (uint32_t i = 0; i < a->n; i++) {
		const struct tree_node *x = &a->nodes[i], *y = &b->nodes[i];
		if (x->name_len != y->name_len || memcmp(tree_name(a, x), tree_name(b, y), x->name_len) ||
		    x->mode != y->mode || x->parent != y->parent)
			return false;
		switch (x->mode & S_IFMT) {
		case S_IFDIR:
			if (x->u.dir.first_child != y->u.dir.first_child || x->u.dir.n_children != y->u.dir.n_children)
				return false;
			break;
		case S_IFLNK:
			if (x->u.link.len != y->u.link.len ||
			    memcmp(tree_link_target(a, x), tree_link_target(b, y), x->u.link.len))
				return false;
			break;
		case S_IFREG:
			if (valid_pyc(x) && valid_pyc(y))
				break;
			if (x->flags != y->flags || x->size != y->size || x->obj_seq != y->obj_seq ||
			    memcmp(x->obj_hash, y->obj_hash, 16))
				return false;
			break;
		default:
			if (x->u.dev.major != y->u.dev.major || x->u.dev.minor != y->u.dev.minor)
				return false;
		}
	}
	return true;
}

/*
 * Call fn with the id and an open descriptor of each manifest indexed under
 * packages/NAME until it returns true; an index entry whose object is gone
 * is skipped (gc's business). Returns whether fn stopped the walk.
 */
static bool each_manifest(struct store *s, const char *name,
			  bool (*fn)(void *ctx, const struct objid *id, int fd, const char *what), void *ctx)
{
	DIR *d = opendir_at(s->packages_fd, name);
	struct dirent *de;
	bool stop = false;

	if (!d)
		return false;
	while (!stop && (de = readdir(d))) {
		struct objid id;
		if (de->d_name[0] == '.' || objid_parse(de->d_name, strlen(de->d_name), &id) < 0)
			continue;
		_cleanup_close_ int fd = store_object_open(s, &id);
		if (fd >= 0)
			stop = fn(ctx, &id, fd, de->d_name);
	}
	closedir(d);
	vf_clear_error();
	return stop;
}

struct each_tree {
	struct store *s;
	bool (*fn)(void *ctx, const struct objid *id, const struct tree *t);
	void *ctx;
};

static bool each_tree_one(void *ctx, const struct objid *id, int fd, const char *what)
{
	struct each_tree *q = ctx;
	struct tree *t;
	struct stat st;

	/* Another account's package in a group store is never taken in place
	 * of what was installed: its bytecode is whatever that account put
	 * there (equivalence compares sources, not compiled code). */
	if (fstat(fd, &st) < 0 || store_object_foreign(q->s, &st))
		return false;
	if (tree_map_fd(fd, what, &t) < 0)
		return false; /* a damaged manifest is no candidate */
	bool stop = q->fn(q->ctx, id, t);
	tree_free(t);
	return stop;
}

bool package_each(struct store *s, const char *name,
		  bool (*fn)(void *ctx, const struct objid *id, const struct tree *t), void *ctx)
{
	struct each_tree q = {s, fn, ctx};

	return each_manifest(s, name, each_tree_one, &q);
}

struct each_head {
	bool (*fn)(void *ctx, const struct objid *id, const struct tree_head *h);
	void *ctx;
};

static bool each_head_one(void *ctx, const struct objid *id, int fd, const char *what)
{
	struct each_head *q = ctx;
	struct tree_head h;

	if (tree_read_head(fd, what, &h) < 0)
		return false;
	bool stop = q->fn(q->ctx, id, &h);
	tree_head_free(&h);
	return stop;
}

bool package_each_head(struct store *s, const char *name,
		       bool (*fn)(void *ctx, const struct objid *id, const struct tree_head *h), void *ctx)
{
	struct each_head q = {fn, ctx};

	return each_manifest(s, name, each_head_one, &q);
}

struct equivalent_search {
	const struct tree *t;
	struct objid *out;
};

static bool equivalent_one(void *ctx, const struct objid *id, const struct tree *c)
{
	struct equivalent_search *q = ctx;

	if (!equivalent(q->t, c))
		return false;
	*q->out = *id;
	return true;
}

bool package_find_equivalent(struct store *s, const struct tree *t, struct objid *out)
{
	_cleanup_free_ char *name = tree_strdup(t, TREE_STR_NAME);
	struct equivalent_search q = {t, out};

	return package_each(s, name, equivalent_one, &q);
}

int package_take_equivalent(struct store *s, struct buf *m, struct objid *id)
{
	struct tree *t;
	int r = tree_load(m->data, m->len, false, &t);

	if (r < 0)
		return r;
	bool found = package_find_equivalent(s, t, id);
	tree_free(t);
	if (!found)
		return 0;
	buf_reset(m);
	r = store_object_read(s, id, 1u << 30, m);
	return r < 0 ? r : 1;
}
