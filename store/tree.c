/*
 * tree.c - reading and building tree manifests (format in tree.h).
 */
#include "tree.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <xxhash.h>

/* ---- reading -------------------------------------------------------------- */

uint64_t tree_checksum(const void *data, size_t len)
{
	struct tree_hdr h;
	XXH3_state_t *st = XXH3_createState();
	uint64_t r;

	memcpy(&h, data, sizeof(h));
	h.checksum = 0;
	XXH3_64bits_reset(st);
	XXH3_64bits_update(st, &h, sizeof(h));
	XXH3_64bits_update(st, (const char *)data + sizeof(h), len - sizeof(h));
	r = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return r;
}

static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, MIN(alen, blen));

	if (c)
		return c;
	return alen < blen ? -1 : alen > blen;
}

bool tree_valid_name(const char *name, size_t len)
{
	if (len == 0 || len > 255)
		return false;
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return false;
	return memchr(name, '/', len) == NULL && memchr(name, '\0', len) == NULL;
}

static bool valid_type(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFIFO:
	case S_IFSOCK:
	case S_IFCHR:
	case S_IFBLK:
		return true;
	}
	return false;
}

/* The header's own fields, against a manifest of len bytes. */
static int check_layout(const struct tree_hdr *h, uint64_t len, const char *what)
{
	if (memcmp(h->magic, TREE_MAGIC, 8) != 0)
		return vf_error(EIO, "%s: not a venvfs manifest (bad magic)", what);
	if (h->kind != TREE_PACKAGE && h->kind != TREE_ENV)
		return vf_error(EIO, "%s: unknown manifest kind %u", what, h->kind);
	if (h->n_roots != (h->kind == TREE_PACKAGE ? 2u : 1u) || h->n_nodes < h->n_roots)
		return vf_error(EIO, "%s: bad root count", what);
	if (h->nodes_off != sizeof(*h) || h->n_nodes > (len - sizeof(*h)) / sizeof(struct tree_node) ||
	    h->strtab_off != h->nodes_off + (uint64_t)h->n_nodes * sizeof(struct tree_node) ||
	    h->strtab_len > len - h->strtab_off || h->strtab_off + h->strtab_len != len)
		return vf_error(EIO, "%s: bad section offsets", what);
	return 0;
}

static int check_strings(const struct tree_hdr *h, const char *what)
{
	if (h->flags != 0 || h->reserved != 0)
		return vf_error(EIO, "%s: unknown header flags", what);
	for (int i = 0; i < TREE_STR_COUNT; i++)
		if ((uint64_t)h->str[i].off + h->str[i].len > h->strtab_len)
			return vf_error(EIO, "%s: bad header string", what);
	return 0;
}

static int validate(struct tree *t, const char *what)
{
	const struct tree_hdr *h;
	int r;

	if (t->len < sizeof(*h))
		return vf_error(EIO, "%s: truncated manifest", what);
	h = (const struct tree_hdr *)t->base;
	if ((r = check_layout(h, t->len, what)) < 0)
		return r;
	if (tree_checksum(t->base, t->len) != h->checksum)
		return vf_error(EIO, "%s: checksum mismatch (corrupt manifest)", what);
	if ((r = check_strings(h, what)) < 0)
		return r;

	t->hdr = h;
	t->nodes = (const struct tree_node *)(t->base + h->nodes_off);
	t->strtab = (const char *)(t->base + h->strtab_off);
	t->n = h->n_nodes;

	/* every name first: the sort check below compares children not reached yet */
	for (uint32_t i = 0; i < t->n; i++)
		if ((uint64_t)t->nodes[i].name_off + t->nodes[i].name_len > h->strtab_len)
			return vf_error(EIO, "%s: node %u: name out of range", what, i);
	for (uint32_t i = 0; i < t->n; i++) {
		const struct tree_node *n = &t->nodes[i];
		bool root = i < h->n_roots;

		if (root ? (n->parent != i || n->name_len != 0 || !S_ISDIR(n->mode))
			 : (n->parent >= i || !tree_valid_name(tree_name(t, n), n->name_len)))
			return vf_error(EIO, "%s: node %u: bad name or parent", what, i);
		if (!valid_type(n->mode))
			return vf_error(EIO, "%s: node %u: bad file type", what, i);
		if (!root && !S_ISDIR(t->nodes[n->parent].mode))
			return vf_error(EIO, "%s: node %u: parent is not a directory", what, i);
		if (S_ISDIR(n->mode)) {
			uint32_t f = n->u.dir.first_child, c = n->u.dir.n_children;
			if (c && (f <= i || f > t->n || c > t->n - f))
				return vf_error(EIO, "%s: node %u: bad child range", what, i);
			for (uint32_t k = f; c && k < f + c; k++) {
				if (t->nodes[k].parent != i)
					return vf_error(EIO, "%s: node %u: child %u has another parent", what, i, k);
				if (k > f && name_cmp(tree_name(t, &t->nodes[k - 1]), t->nodes[k - 1].name_len,
						      tree_name(t, &t->nodes[k]), t->nodes[k].name_len) >= 0)
					return vf_error(EIO, "%s: node %u: children not sorted", what, i);
			}
		} else if (S_ISLNK(n->mode)) {
			if ((uint64_t)n->u.link.off + n->u.link.len > h->strtab_len || n->u.link.len == 0)
				return vf_error(EIO, "%s: node %u: bad symlink target", what, i);
		}
	}
	/* Every non-root node must be listed by its parent (no orphans). */
	for (uint32_t i = h->n_roots; i < t->n; i++) {
		const struct tree_node *p = &t->nodes[t->nodes[i].parent];
		if (i < p->u.dir.first_child || i >= p->u.dir.first_child + p->u.dir.n_children)
			return vf_error(EIO, "%s: node %u is not listed by its parent", what, i);
	}
	return 0;
}

int tree_load(const void *data, size_t len, bool copy, struct tree **out)
{
	struct tree *t = xcalloc(1, sizeof(*t));
	int r;

	if (copy) {
		t->owned = xmemdup(data, len);
		data = t->owned;
	}
	t->base = data;
	t->len = len;
	r = validate(t, "manifest");
	if (r < 0) {
		tree_free(t);
		return r;
	}
	*out = t;
	return 0;
}

int tree_map_fd(int fd, const char *what, struct tree **out)
{
	struct stat st;
	struct tree *t;
	void *p;
	int r;

	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "%s", what);
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(struct tree_hdr))
		return vf_error(EIO, "%s: truncated manifest", what);
	p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return vf_error_errno(errno, "%s: mmap", what);
	t = xcalloc(1, sizeof(*t));
	t->map = p;
	t->base = p;
	t->len = (size_t)st.st_size;
	r = validate(t, what);
	if (r < 0) {
		tree_free(t);
		return r;
	}
	*out = t;
	return 0;
}

int tree_read_head(int fd, const char *what, struct tree_head *out)
{
	struct tree_hdr *h = &out->hdr;
	struct stat st;
	uint64_t lo = UINT64_MAX, hi = 0;
	int r;

	memset(out, 0, sizeof(*out));
	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "%s", what);
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(*h) || pread_full(fd, h, sizeof(*h), 0) != sizeof(*h))
		return vf_error(EIO, "%s: truncated manifest", what);
	if ((r = check_layout(h, (uint64_t)st.st_size, what)) < 0 || (r = check_strings(h, what)) < 0)
		return r;
	for (int i = 0; i < TREE_STR_COUNT; i++) {
		lo = MIN(lo, (uint64_t)h->str[i].off);
		hi = MAX(hi, (uint64_t)h->str[i].off + h->str[i].len);
	}
	/* the builder puts the header strings side by side: one read */
	_cleanup_free_ char *span = xmalloc(hi - lo + 1);
	if (pread_full(fd, span, hi - lo, (off_t)(h->strtab_off + lo)) != (ssize_t)(hi - lo))
		return vf_error(EIO, "%s: truncated manifest", what);
	for (int i = 0; i < TREE_STR_COUNT; i++)
		out->str[i] = xstrndup(span + (h->str[i].off - lo), h->str[i].len);
	return 0;
}

void tree_head_free(struct tree_head *h)
{
	for (int i = 0; i < TREE_STR_COUNT; i++) {
		free(h->str[i]);
		h->str[i] = NULL;
	}
}

int tree_read_fd(int fd, const char *what, struct tree **out)
{
	struct stat st;
	struct tree *t;
	int r;

	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "%s", what);
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)sizeof(struct tree_hdr))
		return vf_error(EIO, "%s: truncated manifest", what);
	void *p = xmalloc((size_t)st.st_size);
	ssize_t n = pread_full(fd, p, (size_t)st.st_size, 0);
	if (n != st.st_size) {
		free(p);
		return n < 0 ? vf_error_errno((int)-n, "%s", what) : vf_error(EIO, "%s: short read", what);
	}
	t = xcalloc(1, sizeof(*t));
	t->owned = p;
	t->base = p;
	t->len = (size_t)st.st_size;
	r = validate(t, what);
	if (r < 0) {
		tree_free(t);
		return r;
	}
	*out = t;
	return 0;
}

void tree_free(struct tree *t)
{
	if (!t)
		return;
	if (t->map)
		munmap(t->map, t->len);
	free(t->owned);
	free(t);
}

const char *tree_str(const struct tree *t, enum tree_str which, size_t *len)
{
	*len = t->hdr->str[which].len;
	return t->strtab + t->hdr->str[which].off;
}

char *tree_strdup(const struct tree *t, enum tree_str which)
{
	size_t n;
	const char *s = tree_str(t, which, &n);

	return xstrndup(s, n);
}

uint32_t tree_lookup(const struct tree *t, uint32_t dir, const char *name, size_t len)
{
	const struct tree_node *d = &t->nodes[dir];
	uint32_t lo, hi;

	if (!S_ISDIR(d->mode))
		return TREE_NONE;
	lo = d->u.dir.first_child;
	hi = lo + d->u.dir.n_children;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct tree_node *n = &t->nodes[mid];
		int c = name_cmp(tree_name(t, n), n->name_len, name, len);
		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return TREE_NONE;
}

uint32_t tree_lookup_path(const struct tree *t, uint32_t root, const char *path, size_t len)
{
	uint32_t cur = root;
	const char *end = path + len;

	while (path < end && cur != TREE_NONE) {
		const char *slash = memchr(path, '/', (size_t)(end - path));
		const char *e = slash ? slash : end;
		size_t n = (size_t)(e - path);
		if (n && !(n == 1 && path[0] == '.'))
			cur = tree_lookup(t, cur, path, n);
		path = slash ? slash + 1 : end;
	}
	return cur;
}

uint32_t tree_path(const struct tree *t, uint32_t i, struct buf *out)
{
	uint32_t chain[4096], depth = 0;

	buf_reset(out);
	while (i >= t->hdr->n_roots && depth < ARRAY_SIZE(chain)) {
		chain[depth++] = i;
		i = t->nodes[i].parent;
	}
	while (depth--) {
		// cppcheck-suppress uninitvar ; chain[0, depth) was filled above
		const struct tree_node *n = &t->nodes[chain[depth]];
		if (out->len)
			buf_addc(out, '/');
		buf_add(out, tree_name(t, n), n->name_len);
	}
	if (!out->data)
		buf_grow(out, 0), out->data[0] = '\0';
	return i;
}

/* ---- building ------------------------------------------------------------- */

struct tb_node {
	uint32_t parent;
	uint32_t root;
	char *name;
	size_t name_len;
	struct tree_entry e;
	char *target;
	bool implicit;
	uint32_t *children;
	uint32_t n_children, cap_children;
};

struct tree_builder {
	enum tree_kind kind;
	struct tb_node *nodes;
	size_t n, cap;
	struct strmap index; /* "<root byte><path>" -> node index */
	uint32_t dir_mode;
	int64_t dir_mtime;
	char *str[TREE_STR_COUNT];
	size_t str_len[TREE_STR_COUNT];
	struct buf key; /* scratch */
};

static uint32_t tb_new_node(struct tree_builder *tb, uint32_t parent, uint32_t root, const char *name, size_t len)
{
	if (tb->n == tb->cap) {
		tb->cap = tb->cap ? tb->cap * 2 : 256;
		tb->nodes = xrealloc(tb->nodes, tb->cap * sizeof(*tb->nodes));
	}
	uint32_t idx = (uint32_t)tb->n++;
	struct tb_node *n = &tb->nodes[idx];
	memset(n, 0, sizeof(*n));
	n->parent = parent;
	n->root = root;
	n->name = xstrndup(name, len);
	n->name_len = len;
	if (parent != idx) {
		struct tb_node *p = &tb->nodes[parent];
		if (p->n_children == p->cap_children) {
			p->cap_children = p->cap_children ? p->cap_children * 2 : 4;
			p->children = xrealloc(p->children, p->cap_children * sizeof(uint32_t));
		}
		p->children[p->n_children++] = idx;
	}
	return idx;
}

struct tree_builder *tree_builder_new(enum tree_kind kind)
{
	struct tree_builder *tb = xcalloc(1, sizeof(*tb));
	unsigned roots = kind == TREE_PACKAGE ? 2 : 1;

	tb->kind = kind;
	tb->dir_mode = 0755;
	tb->dir_mtime = TREE_STORE_MTIME;
	for (unsigned r = 0; r < roots; r++) {
		uint32_t i = tb_new_node(tb, r, r, "", 0);
		tb->nodes[i].e.mode = S_IFDIR | 0755;
		tb->nodes[i].e.mtime_sec = TREE_STORE_MTIME;
		tb->nodes[i].implicit = true;
	}
	return tb;
}

void tree_builder_free(struct tree_builder *tb)
{
	if (!tb)
		return;
	for (size_t i = 0; i < tb->n; i++) {
		free(tb->nodes[i].name);
		free(tb->nodes[i].target);
		free(tb->nodes[i].children);
	}
	free(tb->nodes);
	strmap_free(&tb->index);
	for (int i = 0; i < TREE_STR_COUNT; i++)
		free(tb->str[i]);
	buf_free(&tb->key);
	free(tb);
}

void tree_builder_set_dir_defaults(struct tree_builder *tb, uint32_t mode, int64_t mtime)
{
	tb->dir_mode = mode & 07777;
	tb->dir_mtime = mtime;
}

void tree_builder_set_str(struct tree_builder *tb, enum tree_str which, const char *s, size_t len)
{
	free(tb->str[which]);
	tb->str[which] = xstrndup(s, len);
	tb->str_len[which] = len;
}

static void set_entry(struct tb_node *n, const struct tree_entry *e)
{
	free(n->target);
	n->target = NULL;
	n->e = *e;
	if (S_ISLNK(e->mode)) {
		n->target = xstrndup(e->target, e->target_len);
		n->e.size = e->target_len;
	}
	n->e.target = NULL;
	n->implicit = false;
}

/* Find the node at (root, path[0..len)); with create, make missing dirs. */
static int tb_walk(struct tree_builder *tb, unsigned root, const char *path, size_t len, bool create, uint32_t *out)
{
	uint32_t cur = root;
	size_t pos = 0;

	while (pos < len) {
		const char *slash = memchr(path + pos, '/', len - pos);
		size_t end = slash ? (size_t)(slash - path) : len;
		size_t n = end - pos;

		if (!tree_valid_name(path + pos, n))
			return -EINVAL;
		buf_reset(&tb->key);
		buf_addc(&tb->key, (char)('0' + root));
		buf_add(&tb->key, path, end);
		bool created;
		uint64_t *v = create ? strmap_put(&tb->index, tb->key.data, tb->key.len, &created)
				     : strmap_get(&tb->index, tb->key.data, tb->key.len);
		if (!v)
			return -ENOENT;
		if (create && created) {
			if (!S_ISDIR(tb->nodes[cur].e.mode))
				return -ENOTDIR;
			uint32_t idx = tb_new_node(tb, cur, root, path + pos, n);
			struct tb_node *nn = &tb->nodes[idx];
			nn->e.mode = S_IFDIR | tb->dir_mode;
			nn->e.mtime_sec = tb->dir_mtime;
			nn->implicit = true;
			*v = idx;
		}
		cur = (uint32_t)*v;
		pos = end + 1;
	}
	*out = cur;
	return 0;
}

bool tree_builder_has(struct tree_builder *tb, unsigned root, const char *path, size_t len)
{
	uint32_t idx;

	return tb_walk(tb, root, path, len, false, &idx) == 0;
}

int tree_builder_add(struct tree_builder *tb, unsigned root, const char *path, size_t len, const struct tree_entry *e)
{
	unsigned roots = tb->kind == TREE_PACKAGE ? 2 : 1;
	uint32_t idx;
	int r;

	if (root >= roots || !valid_type(e->mode))
		return -EINVAL;
	if (len == 0) {
		if (!S_ISDIR(e->mode))
			return -EINVAL;
		set_entry(&tb->nodes[root], e);
		return 0;
	}
	/* Parents first (implicitly), then the entry itself. */
	const char *slash = memrchr(path, '/', len);
	size_t plen = slash ? (size_t)(slash - path) : 0;
	uint32_t parent = root;
	if (plen) {
		r = tb_walk(tb, root, path, plen, true, &parent);
		if (r < 0)
			return r;
	}
	if (!S_ISDIR(tb->nodes[parent].e.mode))
		return -ENOTDIR;
	r = tb_walk(tb, root, path, len, false, &idx);
	if (r == 0) {
		struct tb_node *n = &tb->nodes[idx];
		if (!S_ISDIR(n->e.mode) || !S_ISDIR(e->mode))
			return -EEXIST;
		uint32_t *ch = n->children;
		uint32_t nch = n->n_children, cap = n->cap_children;
		set_entry(n, e);
		n->children = ch, n->n_children = nch, n->cap_children = cap;
		return 0;
	}
	r = tb_walk(tb, root, path, len, true, &idx);
	if (r < 0)
		return r;
	set_entry(&tb->nodes[idx], e);
	return 0;
}

/* qsort has no context argument; builders are used by one thread at a time. */
static __thread struct tree_builder *sort_ctx;

static int child_cmp(const void *a, const void *b)
{
	const struct tb_node *x = &sort_ctx->nodes[*(const uint32_t *)a];
	const struct tb_node *y = &sort_ctx->nodes[*(const uint32_t *)b];

	return name_cmp(x->name, x->name_len, y->name, y->name_len);
}

static uint32_t strtab_add(struct buf *strtab, struct strmap *dedup, const char *s, size_t len)
{
	bool created;
	uint64_t *v;

	if (len == 0)
		return 0;
	v = strmap_put(dedup, s, len, &created);
	if (created) {
		*v = strtab->len;
		buf_add(strtab, s, len);
	}
	return (uint32_t)*v;
}

int tree_builder_finish(struct tree_builder *tb, struct buf *out)
{
	unsigned roots = tb->kind == TREE_PACKAGE ? 2 : 1;
	uint32_t *order = xmalloc(tb->n * sizeof(uint32_t));  /* new index -> builder index */
	uint32_t *newidx = xmalloc(tb->n * sizeof(uint32_t)); /* builder index -> new index */
	struct buf strtab = {0};
	struct strmap dedup = {0};
	struct tree_hdr hdr;
	size_t n = 0;

	sort_ctx = tb;
	for (unsigned r = 0; r < roots; r++)
		order[n++] = r;
	for (size_t q = 0; q < n; q++) {
		struct tb_node *d = &tb->nodes[order[q]];
		if (!S_ISDIR(d->e.mode) || !d->n_children)
			continue;
		qsort(d->children, d->n_children, sizeof(uint32_t), child_cmp);
		for (uint32_t k = 0; k < d->n_children; k++)
			order[n++] = d->children[k];
	}
	for (size_t i = 0; i < n; i++)
		newidx[order[i]] = (uint32_t)i;

	memset(&hdr, 0, sizeof(hdr));
	memcpy(hdr.magic, TREE_MAGIC, 8);
	hdr.kind = tb->kind;
	hdr.n_nodes = (uint32_t)n;
	hdr.n_roots = roots;
	hdr.nodes_off = sizeof(hdr);
	buf_addc(&strtab, '\0'); /* offset 0: the empty string */
	for (int i = 0; i < TREE_STR_COUNT; i++) {
		hdr.str[i].off = tb->str[i] ? strtab_add(&strtab, &dedup, tb->str[i], tb->str_len[i]) : 0;
		hdr.str[i].len = tb->str[i] ? (uint32_t)tb->str_len[i] : 0;
	}

	struct tree_node *nodes = xcalloc(n, sizeof(*nodes));
	for (size_t i = 0; i < n; i++) {
		struct tb_node *b = &tb->nodes[order[i]];
		struct tree_node *o = &nodes[i];
		o->name_off = strtab_add(&strtab, &dedup, b->name, b->name_len);
		o->name_len = (uint16_t)b->name_len;
		o->flags = b->e.flags;
		o->mode = b->e.mode;
		o->parent = i < roots ? (uint32_t)i : newidx[b->parent];
		o->mtime_sec = b->e.mtime_sec;
		o->mtime_nsec = b->e.mtime_nsec;
		if (S_ISDIR(b->e.mode)) {
			o->u.dir.n_children = b->n_children;
			o->u.dir.first_child = b->n_children ? newidx[b->children[0]] : 0;
		} else if (S_ISLNK(b->e.mode)) {
			o->u.link.off = strtab_add(&strtab, &dedup, b->target, b->e.size);
			o->u.link.len = (uint32_t)b->e.size;
			o->size = b->e.size;
		} else if (S_ISCHR(b->e.mode) || S_ISBLK(b->e.mode)) {
			o->u.dev.major = b->e.dev_major;
			o->u.dev.minor = b->e.dev_minor;
		} else if (S_ISREG(b->e.mode)) {
			o->size = b->e.size;
			memcpy(o->obj_hash, b->e.obj.hash, 16);
			o->obj_seq = b->e.obj.seq;
			hdr.n_files++;
			hdr.total_bytes += b->e.size;
		}
	}
	hdr.strtab_off = hdr.nodes_off + n * sizeof(struct tree_node);
	hdr.strtab_len = strtab.len;

	buf_reset(out);
	buf_add(out, &hdr, sizeof(hdr));
	buf_add(out, nodes, n * sizeof(*nodes));
	buf_add(out, strtab.data, strtab.len);
	((struct tree_hdr *)out->data)->checksum = tree_checksum(out->data, out->len);

	free(nodes);
	free(order);
	free(newidx);
	buf_free(&strtab);
	strmap_free(&dedup);
	return 0;
}
