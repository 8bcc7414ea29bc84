/*
 * layer.c - the writable layer and the union rule (see layer.h).
 */
#include "layer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MARK_MAX 256

/* Read the marker attribute of name in dirfd (or of dirfd itself). */
static ssize_t read_mark(int dirfd, const char *name, char *buf, size_t size)
{
	ssize_t n;

	if (name) {
		char path[64 + NAME_MAX];
		snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dirfd, name);
		n = lgetxattr(path, LAYER_XATTR, buf, size - 1);
	} else {
		n = fgetxattr(dirfd, LAYER_XATTR, buf, size - 1);
	}
	if (n < 0)
		return errno == ENODATA || errno == ENOTSUP ? 0 : -errno;
	buf[n] = '\0';
	return n;
}

int layer_dir_open(int parent_fd, const char *name, struct layer_dir *d)
{
	char mark[PATH_MAX + 8];

	memset(d, 0, sizeof(*d));
	d->fd = -1;
	if (parent_fd < 0)
		return 0;
	d->fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (d->fd < 0) {
		int e = errno;
		d->fd = -1;
		return e == ENOENT || e == ENOTDIR ? 0 : -e;
	}
	ssize_t n = read_mark(d->fd, NULL, mark, sizeof(mark));
	if (n > 0 && mark[0] == 'o')
		d->opaque = true;
	else if (n > 2 && mark[0] == 'r' && mark[1] == ':')
		d->redirect = xstrdup(mark + 2);
	return 0;
}

void layer_dir_close(struct layer_dir *d)
{
	if (d->fd >= 0)
		close(d->fd);
	free(d->redirect);
	memset(d, 0, sizeof(*d));
	d->fd = -1;
}

static int parse_meta(const char *s, struct layer_ent *e)
{
	char id[OBJID_STR_MAX];
	unsigned long long size;
	long long sec;
	long nsec;
	unsigned mode;

	if (sscanf(s, "m:%47s %llu %lld.%ld %o", id, &size, &sec, &nsec, &mode) != 5 ||
	    objid_parse(id, strlen(id), &e->obj) < 0)
		return -EIO;
	e->size = size;
	e->mtime.tv_sec = sec;
	e->mtime.tv_nsec = nsec;
	e->mode = S_IFREG | (mode & 07777);
	return 0;
}

int layer_lookup(const struct layer_dir *d, const char *name, struct layer_ent *out)
{
	char mark[MARK_MAX];

	memset(out, 0, sizeof(*out));
	out->kind = L_NONE;
	if (d->fd < 0)
		return 0;
	if (fstatat(d->fd, name, &out->st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(out->st.st_mode)) {
		out->kind = L_DIR;
		return 0;
	}
	out->kind = L_FILE;
	if (out->st.st_mode != LAYER_MARK_MODE || out->st.st_size != 0)
		return 0;
	ssize_t n = read_mark(d->fd, name, mark, sizeof(mark));
	if (n < 0)
		return (int)n;
	if (n == 1 && mark[0] == 'w')
		out->kind = L_WHITEOUT;
	else if (n > 2 && mark[0] == 'm' && parse_meta(mark, out) == 0)
		out->kind = L_META;
	return 0;
}

/* Make a marker file in work, then put it at dirfd/name (replacing). */
static int put_marker(int dirfd, const char *name, int workfd, const char *mark)
{
	char tmp[64];
	int fd, r = 0;

	snprintf(tmp, sizeof(tmp), "mark.%016llx", (unsigned long long)random_u64());
	/* the attribute first: a user.* attribute needs write permission
	 * (root alone needs none), which mode 01400 takes away */
	fd = openat(workfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (fsetxattr(fd, LAYER_XATTR, mark, strlen(mark), 0) < 0 || fchmod(fd, LAYER_MARK_MODE & 07777) < 0)
		r = -errno;
	close(fd);
	if (r == 0 && renameat(workfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r < 0)
		unlinkat(workfd, tmp, 0);
	return r;
}

int layer_whiteout(int dirfd, const char *name, int workfd)
{
	return put_marker(dirfd, name, workfd, "w");
}

int layer_metacopy(int dirfd, const char *name, int workfd, const struct objid *obj, uint64_t size, uint32_t mode,
		   const struct timespec *mtime)
{
	char id[OBJID_STR_MAX], mark[MARK_MAX];

	objid_format(obj, id);
	snprintf(mark, sizeof(mark), "m:%s %" PRIu64 " %lld.%09ld %o", id, size, (long long)mtime->tv_sec,
		 mtime->tv_nsec, mode & 07777);
	return put_marker(dirfd, name, workfd, mark);
}

int layer_set_dir(int fd, bool opaque, const char *redirect)
{
	if (opaque)
		return fsetxattr(fd, LAYER_XATTR, "o", 1, 0) < 0 ? -errno : 0;
	if (redirect) {
		_cleanup_free_ char *v = xasprintf("r:%s", redirect);
		return fsetxattr(fd, LAYER_XATTR, v, strlen(v), 0) < 0 ? -errno : 0;
	}
	if (fremovexattr(fd, LAYER_XATTR) < 0 && errno != ENODATA)
		return -errno;
	return 0;
}

/* ---- the union rule ----------------------------------------------------------- */

int layer_merge_lookup(struct view *v, const struct layer_dir *ld, const struct view_dir *vd, const char *name,
		       struct merged *out)
{
	int r = layer_lookup(ld, name, &out->ent);

	if (r < 0)
		return r;
	out->upper = out->ent.kind;
	out->lower = false;
	if (out->upper == L_WHITEOUT || out->upper == L_FILE || out->upper == L_META)
		return 0;
	/* nothing above, or a directory above: what is below? */
	if (!ld->opaque && view_lookup(v, vd, name, strlen(name), &out->src)) {
		const struct tree_node *tn = view_node(v, out->src);
		/* below a directory of the writable layer only a directory shows */
		out->lower = out->upper == L_NONE || S_ISDIR(tn->mode);
	}
	return 0;
}

void layer_lower_dir_at(struct view *v, const char *path, struct view_dir *out)
{
	struct view_dir cur, next;

	view_root(v, &cur);
	for (const char *p = path; *p;) {
		const char *e = strchrnul(p, '/');
		if (e > p) {
			view_child_dir(v, &cur, p, (size_t)(e - p), &next);
			view_dir_free(&cur);
			cur = next;
		}
		p = *e ? e + 1 : e;
	}
	*out = cur;
}

void layer_child_lower(struct view *v, const struct view_dir *parent, const char *name, const struct layer_dir *child,
		       struct view_dir *out)
{
	if (child && child->opaque) {
		out->src = xmalloc(sizeof(*out->src));
		out->n = 0;
		out->site_depth = -1;
	} else if (child && child->redirect) {
		layer_lower_dir_at(v, child->redirect, out);
	} else {
		view_child_dir(v, parent, name, strlen(name), out);
	}
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(((const struct merged_name *)a)->name, ((const struct merged_name *)b)->name);
}

int layer_merge_list(struct view *v, const struct layer_dir *ld, const struct view_dir *vd, struct merged_name **out,
		     size_t *n)
{
	struct merged_name *l = NULL;
	size_t cnt = 0, cap = 0;
	struct strmap upper = {0}; /* names the writable layer decides: 1 shows, 2 whiteout */

	if (ld->fd >= 0) {
		DIR *d = opendir_at(ld->fd, ".");
		struct dirent *de;
		if (!d)
			return -errno;
		while ((de = readdir(d))) {
			struct layer_ent e;
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			if (layer_lookup(ld, de->d_name, &e) < 0 || e.kind == L_NONE)
				continue;
			*strmap_put(&upper, de->d_name, strlen(de->d_name), NULL) = e.kind == L_WHITEOUT ? 2 : 1;
			if (e.kind == L_WHITEOUT)
				continue;
			if (cnt == cap) {
				cap = cap ? cap * 2 : 32;
				l = xrealloc(l, cap * sizeof(*l));
			}
			l[cnt++] = (struct merged_name){xstrdup(de->d_name), true};
		}
		closedir(d);
	}
	if (!ld->opaque && vd->n) {
		struct view_ent *ents;
		size_t ne;
		int r = view_list(v, vd, &ents, &ne);
		if (r < 0) {
			layer_merge_list_free(l, cnt);
			strmap_free(&upper);
			return r;
		}
		for (size_t i = 0; i < ne; i++) {
			if (strmap_get(&upper, ents[i].name, ents[i].name_len))
				continue; /* decided above: shown from there, or whited out */
			if (cnt == cap) {
				cap = cap ? cap * 2 : 32;
				l = xrealloc(l, cap * sizeof(*l));
			}
			l[cnt++] = (struct merged_name){xstrndup(ents[i].name, ents[i].name_len), false};
		}
		free(ents);
	}
	strmap_free(&upper);
	if (cnt)
		qsort(l, cnt, sizeof(*l), name_cmp);
	*out = l;
	*n = cnt;
	return 0;
}

void layer_merge_list_free(struct merged_name *l, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(l[i].name);
	free(l);
}

int layer_mark_objects(int upper_fd, struct strmap *objects)
{
	DIR *d = opendir_at(upper_fd, ".");
	struct dirent *de;
	int r = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d)) && r == 0) {
		struct layer_dir ld = {.fd = dirfd(d)};
		struct layer_ent e;
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (layer_lookup(&ld, de->d_name, &e) < 0)
			continue;
		if (e.kind == L_META) {
			char id[OBJID_STR_MAX];
			objid_format(&e.obj, id);
			strmap_put(objects, id, strlen(id), NULL);
		} else if (e.kind == L_DIR) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0) {
				r = layer_mark_objects(sub, objects);
				close(sub);
			}
		}
	}
	closedir(d);
	return r;
}
