/*
 * view.c - composing an env's read-only layers (see view.h).
 */
#include "view.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "template.h"

static int load_tree(struct store *s, const struct objid *id, const char *what, bool resident, struct tree **out)
{
	char path[OBJID_STR_MAX];
	_cleanup_close_ int fd = store_object_open(s, id);
	struct stat st;

	objid_path(id, path);
	if (fd < 0)
		return vf_error_errno(-fd, "%s: objects/%s", what, path);
	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "%s: objects/%s", what, path);
	if (!store_object_foreign(s, &st))
		return resident ? tree_read_fd(fd, what, out) : tree_map_fd(fd, what, out);
	/* another account's (view.h); a mapping would show later writes */
	_cleanup_buf_ struct buf b = {0};
	int r = store_object_read_checked(s, id, 1u << 30, &b);
	return r < 0 ? vf_error_prefix(-r, "%s: ", what) : tree_load(b.data, b.len, true, out);
}

int view_map_tree(struct store *s, const struct objid *id, const char *what, struct tree **out)
{
	return load_tree(s, id, what, false, out);
}

int view_read_tree(struct store *s, const struct objid *id, const char *what, struct tree **out)
{
	return load_tree(s, id, what, true, out);
}

static int map_tree(void *ctx, const struct objid *id, const char *what, struct tree **out)
{
	return view_map_tree(ctx, id, what, out);
}

static void free_tree(void *ctx, struct tree *t)
{
	(void)ctx;
	tree_free(t);
}

int view_open(struct store *s, struct env *env, const struct view_trees *trees, struct view **out)
{
	struct view *v = xcalloc(1, sizeof(*v));
	int r;

	v->s = s;
	v->trees = trees ? *trees : (struct view_trees){map_tree, free_tree, s};
	v->env = env;
	v->site_dir = env_site_dir(env);
	{
		char *p = v->site_dir;
		for (int i = 0; i < 3; i++) {
			char *slash = strchr(p, '/');
			v->site_part[i] = slash ? xstrndup(p, (size_t)(slash - p)) : xstrdup(p);
			p = slash ? slash + 1 : p + strlen(p);
		}
	}
	v->layers = xcalloc(env->n_pkgs + 1, sizeof(*v->layers));
	v->layers[0].what = xasprintf("env %s tree", env->name);
	r = v->trees.get(v->trees.ctx, &env->tree, v->layers[0].what, &v->layers[0].tree);
	if (r < 0)
		goto fail;
	if (v->layers[0].tree->hdr->kind != TREE_ENV) {
		r = vf_error(EIO, "%s: not an env tree", v->layers[0].what);
		goto fail;
	}
	v->n_layers = 1;
	for (size_t i = env->n_pkgs; i-- > 0;) {
		const struct env_pkg *p = &env->pkgs[i];
		struct view_layer *l = &v->layers[v->n_layers];
		char hex[OBJID_STR_MAX];
		objid_format(&p->id, hex);
		char path[OBJID_STR_MAX];
		objid_path(&p->id, path);
		_cleanup_free_ char *what = xasprintf("package %s %s (objects/%s)", p->name, p->version, path);
		r = v->trees.get(v->trees.ctx, &p->id, what, &l->tree);
		if (r == 0 && l->tree->hdr->kind != TREE_PACKAGE)
			r = vf_error(EIO, "%s: not a package manifest", what);
		if (r < 0) {
			if (l->tree)
				v->trees.put(v->trees.ctx, l->tree);
			l->tree = NULL;
			goto fail;
		}
		l->pkg = p;
		l->what = steal_pointer(&what);
		v->n_layers++;
	}
	*out = v;
	return 0;
fail:
	view_free(v);
	return r;
}

void view_free(struct view *v)
{
	if (!v)
		return;
	for (uint16_t i = 0; i < v->n_layers; i++) {
		if (v->layers[i].tree)
			v->trees.put(v->trees.ctx, v->layers[i].tree);
		free(v->layers[i].what);
		free(v->layers[i].orig_mtimes);
	}
	if (v->n_layers == 0 && v->layers) {
		if (v->layers[0].tree)
			v->trees.put(v->trees.ctx, v->layers[0].tree);
		free(v->layers[0].what);
	}
	free(v->layers);
	free(v->site_dir);
	for (int i = 0; i < 3; i++)
		free(v->site_part[i]);
	free(v);
}

void view_root(struct view *v, struct view_dir *out)
{
	out->src = xmalloc(sizeof(*out->src));
	out->src[0] = (struct view_src){.layer = 0, .node = 0};
	out->n = 1;
	out->site_depth = 0;
	/* Packages' env-root parts merge at the env root too. */
	out->src = xrealloc(out->src, v->n_layers * sizeof(*out->src));
	for (uint16_t i = 1; i < v->n_layers; i++)
		out->src[out->n++] = (struct view_src){.layer = i, .node = TREE_ROOT_ENV};
}

void view_dir_free(struct view_dir *d)
{
	free(d->src);
	d->src = NULL;
	d->n = 0;
}

void view_dir_copy(struct view_dir *dst, const struct view_dir *src)
{
	dst->n = src->n;
	dst->site_depth = src->site_depth;
	dst->src = xmemdup(src->src, (src->n ? src->n : 1) * sizeof(*src->src));
}

bool view_lookup(struct view *v, const struct view_dir *d, const char *name, size_t len, struct view_src *top)
{
	for (uint32_t i = 0; i < d->n; i++) {
		struct tree *t = v->layers[d->src[i].layer].tree;
		uint32_t c = tree_lookup(t, d->src[i].node, name, len);
		if (c != TREE_NONE) {
			*top = (struct view_src){.layer = d->src[i].layer, .node = c};
			return true;
		}
	}
	return false;
}

void view_child_dir(struct view *v, const struct view_dir *d, const char *name, size_t len, struct view_dir *out)
{
	out->src = xmalloc((d->n + v->n_layers) * sizeof(*out->src));
	out->n = 0;
	out->site_depth = -1;
	for (uint32_t i = 0; i < d->n; i++) {
		struct tree *t = v->layers[d->src[i].layer].tree;
		uint32_t c = tree_lookup(t, d->src[i].node, name, len);
		if (c != TREE_NONE && S_ISDIR(tree_node(t, c)->mode))
			out->src[out->n++] = (struct view_src){.layer = d->src[i].layer, .node = c};
	}
	if (d->site_depth >= 0 && d->site_depth < 3 && strlen(v->site_part[d->site_depth]) == len &&
	    memcmp(v->site_part[d->site_depth], name, len) == 0) {
		out->site_depth = (int8_t)(d->site_depth + 1);
		if (out->site_depth == 3) {
			/* site-packages: the packages' site roots join, in priority
			 * order after the env tree's own directory */
			for (uint16_t i = 1; i < v->n_layers; i++)
				out->src[out->n++] = (struct view_src){.layer = i, .node = TREE_ROOT_SITE};
		}
	}
}

static int ent_cmp(const void *a, const void *b)
{
	const struct view_ent *x = a, *y = b;
	int c = memcmp(x->name, y->name, MIN(x->name_len, y->name_len));

	if (c)
		return c;
	if (x->name_len != y->name_len)
		return x->name_len < y->name_len ? -1 : 1;
	return 0;
}

/* An entry with the priority of its source, to keep the first of a name. */
struct ent_sort {
	struct view_ent e;
	uint32_t prio;
};

static int ent_sort_cmp(const void *a, const void *b)
{
	const struct ent_sort *x = a, *y = b;
	int c = ent_cmp(&x->e, &y->e);

	if (c)
		return c;
	return x->prio < y->prio ? -1 : x->prio > y->prio;
}

int view_list(struct view *v, const struct view_dir *d, struct view_ent **out, size_t *n)
{
	size_t total = 0, k = 0;

	for (uint32_t i = 0; i < d->n; i++)
		total += view_node(v, d->src[i])->u.dir.n_children;
	struct ent_sort *all = xmalloc((total ? total : 1) * sizeof(*all));
	for (uint32_t i = 0; i < d->n; i++) {
		struct tree *t = v->layers[d->src[i].layer].tree;
		const struct tree_node *dn = tree_node(t, d->src[i].node);
		for (uint32_t c = dn->u.dir.first_child; c < dn->u.dir.first_child + dn->u.dir.n_children; c++) {
			const struct tree_node *cn = tree_node(t, c);
			all[k].e.name = tree_name(t, cn);
			all[k].e.name_len = cn->name_len;
			all[k].e.top = (struct view_src){.layer = d->src[i].layer, .node = c};
			all[k].prio = i;
			k++;
		}
	}
	qsort(all, k, sizeof(*all), ent_sort_cmp);
	struct view_ent *res = xmalloc((k ? k : 1) * sizeof(*res));
	size_t m = 0;
	for (size_t i = 0; i < k; i++) {
		if (m && ent_cmp(&res[m - 1], &all[i].e) == 0)
			continue; /* a lower layer's entry of the same name */
		res[m++] = all[i].e;
	}
	free(all);
	*out = res;
	*n = m;
	return 0;
}

void view_dir_mtime(struct view *v, const struct view_dir *d, struct timespec *out)
{
	int64_t sec = 0;
	uint32_t nsec = 0;

	for (uint32_t i = 0; i < d->n; i++) {
		const struct tree_node *n = view_node(v, d->src[i]);
		if (n->mtime_sec > sec || (n->mtime_sec == sec && n->mtime_nsec > nsec)) {
			sec = n->mtime_sec;
			nsec = n->mtime_nsec;
		}
	}
	out->tv_sec = (time_t)sec;
	out->tv_nsec = (long)nsec;
}

struct render_cb {
	struct view *v;
	uint16_t layer;
	const char *env, *env_real;
	int depth;
};

static int render_node(struct render_cb *cb, uint32_t node, struct buf *out);

static int render_row(void *p, unsigned root, const char *path, size_t n, struct buf *out)
{
	struct render_cb *cb = p;
	struct tree *t = cb->v->layers[cb->layer].tree;
	unsigned roots = t->hdr->n_roots;
	uint32_t node = root < roots ? tree_lookup_path(t, root, path, n) : TREE_NONE;

	if (node == TREE_NONE || !S_ISREG(tree_node(t, node)->mode) || cb->depth > 2)
		return vf_error(EIO, "%s: RECORD template names a missing file %.*s", cb->v->layers[cb->layer].what,
				(int)n, path);
	return render_node(cb, node, out);
}

static int render_node(struct render_cb *cb, uint32_t node, struct buf *out)
{
	struct view *v = cb->v;
	const struct tree_node *tn = tree_node(v->layers[cb->layer].tree, node);
	struct objid id;
	_cleanup_buf_ struct buf blob = {0};
	int r;

	tree_node_objid(tn, &id);
	/* checked against its name: what a template renders is run (scripts,
	 * activate), and nothing after this sees the object's own bytes */
	r = store_object_read_checked(v->s, &id, 1 << 26, &blob);
	if (r < 0)
		return r;
	if (!(tn->flags & TREE_F_TEMPLATE)) {
		buf_reset(out);
		buf_add(out, blob.data, blob.len);
		return 0;
	}
	struct tpl_ctx ctx = {
		.env = cb->env,
		.env_real = cb->env_real,
		.render_file = render_row,
		.cb = cb,
	};
	cb->depth++;
	r = tpl_render(blob.data, blob.len, &ctx, out);
	cb->depth--;
	if (r < 0)
		return vf_error_prefix(-r, "%s: ", v->layers[cb->layer].what);
	return 0;
}

int view_render(struct view *v, struct view_src src, const char *env_path, const char *env_real, struct buf *out)
{
	struct render_cb cb = {.v = v, .layer = src.layer, .env = env_path, .env_real = env_real};

	return render_node(&cb, src.node, out);
}

/* ---- original mtimes ------------------------------------------------------ */

#define MTIMES_MAGIC "VFSMTIM1"

void view_mtimes_encode_begin(struct buf *out, uint32_t n_pkgs)
{
	buf_reset(out);
	buf_add(out, MTIMES_MAGIC, 8);
	buf_add(out, &n_pkgs, 4);
}

void view_mtimes_encode_pkg(struct buf *out, const int64_t *mtimes, uint32_t n)
{
	size_t at = out->len;
	uint32_t runs = 0;

	buf_add(out, &n, 4);
	buf_add(out, &runs, 4);
	for (uint32_t i = 0; i < n;) {
		uint32_t j = i + 1;
		while (j < n && mtimes[j] == mtimes[i])
			j++;
		uint32_t count = j - i;
		buf_add(out, &count, 4);
		buf_add(out, &mtimes[i], 8);
		runs++;
		i = j;
	}
	memcpy(out->data + at + 4, &runs, 4);
}

int view_load_orig_mtimes(struct view *v)
{
	_cleanup_buf_ struct buf b = {0};
	const char *p, *end;
	uint32_t n_pkgs;
	int r;

	if (!v->env->has_mtimes)
		return 0;
	r = store_object_read(v->s, &v->env->mtimes, 1 << 28, &b);
	if (r < 0)
		return r;
	p = b.data;
	end = b.data + b.len;
	if (b.len < 12 || memcmp(p, MTIMES_MAGIC, 8) != 0)
		return vf_error(EIO, "env %s: bad mtimes object", v->env->name);
	memcpy(&n_pkgs, p + 8, 4);
	p += 12;
	if (n_pkgs != v->env->n_pkgs)
		return vf_error(EIO, "env %s: mtimes object does not match the package list", v->env->name);
	for (uint32_t k = 0; k < n_pkgs; k++) {
		uint32_t n, runs;
		if (end - p < 8)
			return vf_error(EIO, "env %s: truncated mtimes object", v->env->name);
		memcpy(&n, p, 4);
		memcpy(&runs, p + 4, 4);
		p += 8;
		/* package k is layer n_pkgs - k (layers list the last package first) */
		struct view_layer *l = NULL;
		for (uint16_t i = 1; i < v->n_layers; i++)
			if (v->layers[i].pkg == &v->env->pkgs[k])
				l = &v->layers[i];
		int64_t *m = NULL;
		if (l && l->tree->n == n)
			m = xmalloc((n ? n : 1) * sizeof(*m));
		uint32_t at = 0;
		for (uint32_t i = 0; i < runs; i++) {
			uint32_t count;
			int64_t t;
			if (end - p < 12) {
				free(m);
				return vf_error(EIO, "env %s: truncated mtimes object", v->env->name);
			}
			memcpy(&count, p, 4);
			memcpy(&t, p + 4, 8);
			p += 12;
			for (uint32_t c = 0; c < count && m && at < n; c++)
				m[at++] = t;
		}
		if (l && m && at == n) {
			free(l->orig_mtimes);
			l->orig_mtimes = m;
		} else {
			free(m);
		}
	}
	return 0;
}

int64_t view_orig_mtime(const struct view *v, struct view_src src)
{
	const struct view_layer *l = &v->layers[src.layer];

	if (l->orig_mtimes)
		return l->orig_mtimes[src.node];
	return tree_node(l->tree, src.node)->mtime_sec;
}
