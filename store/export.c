/*
 * export.c - writing an env out as a real venv directory (see venv.h).
 *
 * The env is composed with the same view code the daemon uses, written
 * into a temp directory next to the destination and renamed into place
 * when complete, so a failed export leaves nothing behind. Templates are
 * rendered for the destination's path; package files get back the times
 * they had in the venv they were imported from, and normalised bytecode
 * gets back the header that matches them, so exporting to the path an env
 * was imported from reproduces it file for file.
 *
 * Hostile content. An export is often run by another user than the ones
 * who imported the env or can write the store (root, a CI account), so it
 * grants nothing the files did not have for them and writes nothing it has
 * not checked:
 * - every byte copied from an object is checked against the object's name
 *   (the copy is hashed, so what is checked is what was written); a
 *   mismatch fails the export with EIO, naming the object and the file;
 * - setuid and setgid bits are dropped: the store does not record who owned
 *   a file (tree nodes have no owner; a writable layer's files all belong
 *   to whoever ran the daemon), so it cannot tell that the exporting user
 *   owned the original, and an export as root would otherwise turn a user's
 *   setuid file into a setuid-root one. A directory keeps setgid: there it
 *   only gives new entries the directory's group, the exporter's own;
 * - device nodes (block, character) are not created unless asked for
 *   (--devices): each is named on stderr instead. FIFOs and sockets are, as
 *   `cp -a` by an ordinary user does (creating them needs no privilege and
 *   they hold no data).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "env.h"
#include "layer.h"
#include "template.h"
#include "pyc.h"
#include "venv.h"
#include "view.h"

struct exporter {
	struct store *s;
	struct view *v;
	const char *name; /* the env */
	bool devices;     /* create device nodes (export_opts.devices) */
	const char *dest; /* final absolute path */
	char *dest_real;  /* its realpath-to-be */
	char **views;     /* paths the env was shown at (envs/NAME/views) */
	size_t n_views;
	struct progress prog;
	uint64_t files, bytes;
};

static void node_time(struct exporter *x, struct view_src src, struct timespec *ts)
{
	const struct tree_node *n = view_node(x->v, src);

	if (src.layer == 0) {
		ts->tv_sec = n->mtime_sec;
		ts->tv_nsec = n->mtime_nsec;
	} else {
		ts->tv_sec = view_orig_mtime(x->v, src);
		ts->tv_nsec = 0;
	}
}

/* The mode an exported file gets: no setuid, no setgid but on directories. */
static mode_t export_mode(uint32_t mode)
{
	mode_t m = mode & 07777 & ~(mode_t)S_ISUID;

	return S_ISDIR(mode) ? m : m & ~(mode_t)S_ISGID;
}

/*
 * Copy an object to out (opened for reading too), then check what was
 * written against the object's name: a damaged or planted object is never
 * exported silently. The copy is hashed, not the object, so the check
 * holds even if the object changes meanwhile, and reflinks still work.
 */
static int copy_object(struct exporter *x, const struct objid *id, int out, const char *path)
{
	_cleanup_close_ int in = store_object_open(x->s, id);
	char hex[OBJID_STR_MAX];
	struct stat st;

	objid_path(id, hex);
	if (in < 0)
		return vf_error_prefix(-in, "env %s, %s: ", x->name, path);
	if (fstat(in, &st) < 0)
		return vf_error_errno(errno, "objects/%s", hex);
	int r = copy_file(in, out, (uint64_t)st.st_size);
	if (r < 0)
		return vf_error_errno(-r, "%s: copying objects/%s", path, hex);
	r = store_object_check_fd(x->s, id, out);
	if (r < 0)
		return vf_error_prefix(-r, "env %s, %s: ", x->name, path);
	return 0;
}

/* A block or character device of the env: created only with --devices,
 * else named on stderr. */
static int export_device(struct exporter *x, int dfd, const char *name, const char *path, uint32_t mode, dev_t dev)
{
	if (!x->devices) {
		fprintf(stderr, "venvfs export: %s/%s: %s device %u,%u not created (--devices creates it)\n", x->dest,
			path, S_ISBLK(mode) ? "block" : "character", major(dev), minor(dev));
		return 1;
	}
	if (mknodat(dfd, name, (mode & S_IFMT) | export_mode(mode), dev) < 0)
		return vf_error_errno(errno, "%s/%s: device node", x->dest, path);
	return 0;
}

/*
 * A valid pyc gets back what it had in the venv: the header mtime of its
 * source as imported or absorbed (the source is written with that time),
 * and, if normalised, the path it was compiled at (here, the export's
 * path, as a fresh compile there would have). Bytecode kept as installed
 * names the path it was compiled at already.
 */
static int write_pyc(struct exporter *x, struct view_src src, const struct objid *id, int fd, const char *path)
{
	struct tree *t = x->v->layers[src.layer].tree;
	_cleanup_buf_ struct buf obj = {0}, a = {0}, b = {0}, p = {0};
	int r = store_object_read_checked(x->s, id, 1u << 30, &obj);

	if (r < 0)
		return vf_error_prefix(-r, "env %s, %s: ", x->name, path);
	uint32_t root = tree_path(t, src.node, &p);
	_cleanup_free_ char *source = pyc_source_path(p.data, p.len);
	uint32_t sn = source ? tree_lookup_path(t, root, source, strlen(source)) : TREE_NONE;
	if (sn != TREE_NONE && x->v->layers[src.layer].orig_mtimes && obj.len >= PYC_HEADER_SIZE)
		pyc_set_mtime(obj.data,
			      (uint32_t)view_orig_mtime(x->v, (struct view_src){.layer = src.layer, .node = sn}));
	_cleanup_free_ char *site = xasprintf("%s/%s/", x->dest, x->v->site_dir);
	_cleanup_free_ char *envp = xasprintf("%s/", x->dest);
	pyc_rewrite_strings(obj.data, obj.len, PYC_CANON_PREFIX "site-packages/", false, site, &a);
	pyc_rewrite_strings(a.data, a.len, PYC_CANON_PREFIX "env/", false, envp, &b);
	r = write_full(fd, b.data, b.len);
	if (r < 0)
		return vf_error_errno(-r, "%s", path);
	return 0;
}

static int export_dir(struct exporter *x, int dfd, const struct layer_dir *ld, const struct view_dir *d,
		      struct buf *path);

/* An entry of the read-only layers (ld: the writable part of its parent,
 * for directories that continue there). */
static int export_entry(struct exporter *x, int dfd, const struct layer_dir *ld, const struct view_dir *d,
			const struct view_ent *ent, struct buf *path)
{
	const struct tree_node *n = view_node(x->v, ent->top);
	_cleanup_free_ char *name = xstrndup(ent->name, ent->name_len);
	struct timespec ts[2];
	int r = 0;

	node_time(x, ent->top, &ts[1]);
	ts[0] = ts[1];
	switch (n->mode & S_IFMT) {
	case S_IFDIR: {
		struct view_dir child;
		_cleanup_close_ int cfd = -1;
		if (mkdirat(dfd, name, 0700) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (cfd < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		struct layer_dir none = {.fd = -1};
		(void)ld;
		view_child_dir(x->v, d, ent->name, ent->name_len, &child);
		r = export_dir(x, cfd, &none, &child, path);
		view_dir_free(&child);
		if (r < 0)
			return r;
		if (fchmod(cfd, export_mode(n->mode)) < 0 || futimens(cfd, ts) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		return 0;
	}
	case S_IFREG: {
		_cleanup_close_ int fd = openat(dfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		struct objid id;
		if (fd < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		if (n->flags & TREE_F_TEMPLATE) {
			_cleanup_buf_ struct buf out = {0};
			r = view_render(x->v, ent->top, x->dest, x->dest_real, &out);
			if (r < 0)
				return vf_error_prefix(-r, "env %s, %s: ", x->name, path->data);
			r = write_full(fd, out.data, out.len);
			if (r < 0)
				return vf_error_errno(-r, "%s/%s", x->dest, path->data);
		} else {
			tree_node_objid(n, &id);
			if (n->flags & (TREE_F_PYC_NORM | TREE_F_PYC_KEPT))
				r = write_pyc(x, ent->top, &id, fd, path->data);
			else
				r = copy_object(x, &id, fd, path->data);
			if (r < 0)
				return r;
		}
		if (fchmod(fd, export_mode(n->mode)) < 0 || futimens(fd, ts) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		x->files++;
		x->bytes += n->size;
		progress_update(&x->prog, x->files, x->v->layers[0].tree->hdr->n_files, x->bytes);
		return 0;
	}
	case S_IFLNK: {
		_cleanup_free_ char *target =
			xstrndup(tree_link_target(x->v->layers[ent->top.layer].tree, n), n->u.link.len);
		if (symlinkat(target, dfd, name) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		break;
	}
	case S_IFIFO:
		if (mkfifoat(dfd, name, export_mode(n->mode)) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		break;
	case S_IFSOCK:
		if (mknodat(dfd, name, S_IFSOCK | export_mode(n->mode), 0) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		break;
	case S_IFCHR:
	case S_IFBLK:
		r = export_device(x, dfd, name, path->data, n->mode, makedev(n->u.dev.major, n->u.dev.minor));
		if (r != 0)
			return r < 0 ? r : 0;
		break;
	}
	if (utimensat(dfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return vf_error_errno(errno, "%s/%s", x->dest, path->data);
	return 0;
}

/*
 * Files pip or uv wrote through a mount name the mount's path (script
 * shebangs): re-render them for the destination, as the store's templates
 * are.
 */
static int export_upper_content(struct exporter *x, int in, const struct stat *st, int out, const char *path)
{
	_cleanup_buf_ struct buf data = {0}, blob = {0}, next = {0};

	bool in_bin = str_has_prefix(path, "bin/") && !strchr(path + 4, '/');
	if (!in_bin || !x->n_views || st->st_size > (1 << 24)) {
		int r = copy_file(in, out, (uint64_t)st->st_size);
		return r < 0 ? vf_error_errno(-r, "%s/%s", x->dest, path) : 0;
	}
	buf_grow(&data, (size_t)st->st_size);
	ssize_t n = pread_full(in, data.data, (size_t)st->st_size, 0);
	if (n < 0)
		return vf_error_errno((int)-n, "%s/%s", x->dest, path);
	data.len = (size_t)n;
	for (size_t i = 0; i < x->n_views; i++) {
		struct tpl_paths tp = {.env = x->views[i], .env_real = x->views[i]};
		if (tpl_make_subst(data.data, data.len, &tp, &blob) != 1)
			continue;
		struct tpl_ctx ctx = {.env = x->dest, .env_real = x->dest_real};
		if (tpl_render(blob.data, blob.len, &ctx, &next) < 0)
			return vf_error_prefix(EIO, "%s/%s: ", x->dest, path);
		buf_free(&data);
		data = next;
		memset(&next, 0, sizeof(next));
	}
	int r = write_full(out, data.data, data.len);
	return r < 0 ? vf_error_errno(-r, "%s/%s", x->dest, path) : 0;
}

/* An entry of the writable layer. */
static int export_upper(struct exporter *x, int dfd, const struct layer_dir *ld, const struct view_dir *d,
			const char *name, const struct layer_ent *e, struct buf *path)
{
	struct timespec ts[2] = {e->st.st_mtim, e->st.st_mtim};
	uint32_t mode = e->st.st_mode;
	int r = 0;

	if (e->kind == L_DIR) {
		struct layer_dir cld;
		struct view_dir child;
		_cleanup_close_ int cfd = -1;
		if ((r = layer_dir_open(ld->fd, name, &cld)) < 0)
			return vf_error_errno(-r, "%s", path->data);
		layer_child_lower(x->v, d, name, &cld, &child);
		if (mkdirat(dfd, name, 0700) < 0 || (cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
			r = vf_error_errno(errno, "%s/%s", x->dest, path->data);
		if (r == 0)
			r = export_dir(x, cfd, &cld, &child, path);
		layer_dir_close(&cld);
		view_dir_free(&child);
		if (r == 0 && (fchmod(cfd, export_mode(mode)) < 0 || futimens(cfd, ts) < 0))
			r = vf_error_errno(errno, "%s/%s", x->dest, path->data);
		return r;
	}
	if (e->kind == L_META) {
		_cleanup_close_ int fd = openat(dfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		struct timespec mt[2] = {e->mtime, e->mtime};
		if (fd < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		if ((r = copy_object(x, &e->obj, fd, path->data)) < 0)
			return r;
		if (fchmod(fd, export_mode(e->mode)) < 0 || futimens(fd, mt) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		return 0;
	}
	if (S_ISREG(mode)) {
		_cleanup_close_ int in = openat(ld->fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		_cleanup_close_ int out = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (in < 0 || out < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		if ((r = export_upper_content(x, in, &e->st, out, path->data)) < 0)
			return r;
		if (fchmod(out, export_mode(mode)) < 0 || futimens(out, ts) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
		return 0;
	}
	if (S_ISLNK(mode)) {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(ld->fd, name, target, sizeof(target) - 1);
		if (n < 0)
			return vf_error_errno(errno, "%s", path->data);
		target[n] = '\0';
		if (symlinkat(target, dfd, name) < 0)
			return vf_error_errno(errno, "%s/%s", x->dest, path->data);
	} else if (S_ISCHR(mode) || S_ISBLK(mode)) {
		r = export_device(x, dfd, name, path->data, mode, e->st.st_rdev);
		if (r != 0)
			return r < 0 ? r : 0;
	} else if (mknodat(dfd, name, (mode & S_IFMT) | export_mode(mode), 0) < 0) {
		return vf_error_errno(errno, "%s/%s", x->dest, path->data);
	}
	if (utimensat(dfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return vf_error_errno(errno, "%s/%s", x->dest, path->data);
	return 0;
}

static int export_dir(struct exporter *x, int dfd, const struct layer_dir *ld, const struct view_dir *d,
		      struct buf *path)
{
	struct merged_name *names;
	size_t n, base = path->len;
	int r = layer_merge_list(x->v, ld, d, &names, &n);

	if (r < 0)
		return vf_error_errno(-r, "listing %s", path->data);
	for (size_t i = 0; i < n && r == 0; i++) {
		struct merged m;
		path->len = base;
		if (base)
			buf_addc(path, '/');
		buf_adds(path, names[i].name);
		r = layer_merge_lookup(x->v, ld, d, names[i].name, &m);
		if (r < 0) {
			r = vf_error_errno(-r, "%s", path->data);
			break;
		}
		if (m.upper == L_DIR || m.upper == L_FILE || m.upper == L_META) {
			r = export_upper(x, dfd, ld, d, names[i].name, &m.ent, path);
		} else if (m.lower) {
			struct view_ent ent = {names[i].name, (uint16_t)strlen(names[i].name), m.src};
			r = export_entry(x, dfd, ld, d, &ent, path);
		}
	}
	path->len = base;
	if (path->data)
		path->data[base] = '\0';
	layer_merge_list_free(names, n);
	return r;
}

int venv_export(struct store *s, const char *name, const char *dir, const struct export_opts *o)
{
	struct exporter x = {.s = s, .name = name, .devices = o && o->devices};
	struct env *env = NULL;
	_cleanup_free_ char *dest = path_absolute(dir);
	_cleanup_free_ char *parent = NULL, *parent_real = NULL, *tmp = NULL;
	_cleanup_close_ int tfd = -1;
	struct view_dir root;
	struct stat st;
	int r;

	if (!dest)
		return vf_error_errno(errno, "%s", dir);
	if (lstat(dest, &st) == 0) {
		_cleanup_close_ int fd = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		DIR *dd = fd >= 0 ? fdopendir(fd) : NULL;
		struct dirent *de;
		bool empty = dd != NULL;
		if (dd) {
			fd = -1;
			while ((de = readdir(dd)))
				if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
					empty = false;
			closedir(dd);
		}
		if (!empty)
			return vf_error(EEXIST, "%s: already exists and is not an empty directory", dest);
	}
	const char *slash = strrchr(dest, '/');
	parent = slash == dest ? xstrdup("/") : xstrndup(dest, (size_t)(slash - dest));
	parent_real = realpath(parent, NULL);
	if (!parent_real)
		return vf_error_errno(errno, "%s", parent);
	x.dest = dest;
	x.dest_real = path_join(parent_real, slash + 1);

	r = env_load(s, name, &env);
	if (r < 0)
		goto out;
	r = view_open(s, env, NULL, &x.v);
	if (r < 0)
		goto out;
	r = view_load_orig_mtimes(x.v);
	if (r < 0)
		goto out;

	tmp = xasprintf("%s/.%s.venvfs-export-%08llx", parent, slash + 1,
			(unsigned long long)(random_u64() & 0xffffffff));
	if (mkdir(tmp, 0700) < 0) {
		r = vf_error_errno(errno, "%s", tmp);
		goto out;
	}
	tfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (tfd < 0) {
		r = vf_error_errno(errno, "%s", tmp);
		goto out;
	}
	progress_init(&x.prog, "exporting", o && o->progress);
	{
		_cleanup_close_ int efd = openat_beneath(s->envs_fd, name, O_RDONLY | O_DIRECTORY, 0);
		if (efd >= 0)
			env_views(efd, &x.views, &x.n_views);
	}
	view_root(x.v, &root);
	{
		struct buf path = {0};
		struct layer_dir up;
		_cleanup_free_ char *upname = xasprintf("%s/%s", name, env_upper(env));
		buf_grow(&path, 256);
		path.data[0] = '\0';
		r = layer_dir_open(s->envs_fd, upname, &up);
		if (r == 0)
			r = export_dir(&x, tfd, &up, &root, &path);
		else
			r = vf_error_errno(-r, "%s/envs/%s", s->home, upname);
		layer_dir_close(&up);
		buf_free(&path);
	}
	view_dir_free(&root);
	progress_done(&x.prog);
	if (r < 0)
		goto out;
	{
		const struct tree_node *rn = tree_node(x.v->layers[0].tree, 0);
		struct timespec ts[2] = {{rn->mtime_sec, rn->mtime_nsec}, {rn->mtime_sec, rn->mtime_nsec}};
		if (fchmod(tfd, export_mode(rn->mode)) < 0 || futimens(tfd, ts) < 0) {
			r = vf_error_errno(errno, "%s", tmp);
			goto out;
		}
	}
	/* one step: rename(2) replaces an empty directory, and a failure
	 * leaves it as it was */
	if (rename(tmp, dest) < 0) {
		r = vf_error_errno(errno, "%s", dest);
		goto out;
	}
	free(tmp);
	tmp = NULL;
out:
	if (tmp)
		rm_rf_at(AT_FDCWD, tmp);
	view_free(x.v);
	env_free(env);
	free(x.dest_real);
	for (size_t i = 0; i < x.n_views; i++)
		free(x.views[i]);
	free(x.views);
	return r;
}
