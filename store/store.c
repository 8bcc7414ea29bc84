/*
 * store.c - store directory, objects, insert transactions, locks.
 *
 * The layout and the crash-safety argument are in store.h.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

/* ---- object ids --------------------------------------------------------- */

void store_hash_xxh3(const void *data, size_t len, uint8_t out[16])
{
	XXH128_canonical_t c;

	XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
	memcpy(out, c.digest, 16);
}

void objid_format(const struct objid *id, char out[OBJID_STR_MAX])
{
	hex_encode(id->hash, 16, out);
	if (id->seq)
		snprintf(out + 32, OBJID_STR_MAX - 32, ".%u", id->seq);
}

void objid_path(const struct objid *id, char out[OBJID_STR_MAX])
{
	char hex[OBJID_STR_MAX];

	objid_format(id, hex);
	out[0] = hex[0];
	out[1] = hex[1];
	out[2] = '/';
	strcpy(out + 3, hex + 2);
}

int objid_parse(const char *s, size_t n, struct objid *id)
{
	memset(id, 0, sizeof(*id));
	if (n < 32 || hex_decode(s, 16, id->hash) < 0)
		return -EINVAL;
	if (n == 32)
		return 0;
	if (s[32] != '.' || n == 33 || n > 32 + 1 + 9)
		return -EINVAL;
	uint32_t v = 0;
	for (size_t i = 33; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint32_t)(s[i] - '0');
	}
	if (v == 0)
		return -EINVAL;
	id->seq = v;
	return 0;
}

bool objid_equal(const struct objid *a, const struct objid *b)
{
	return a->seq == b->seq && memcmp(a->hash, b->hash, 16) == 0;
}

bool objid_is_zero(const struct objid *id)
{
	static const uint8_t zero[16];

	return id->seq == 0 && memcmp(id->hash, zero, 16) == 0;
}

/* ---- opening the store --------------------------------------------------- */

char *store_default_home(const char *explicit_home)
{
	const char *e;

	if (explicit_home && *explicit_home)
		return path_absolute(explicit_home);
	if ((e = getenv("VENVFS_HOME")) && *e)
		return path_absolute(e);
	if ((e = getenv("XDG_DATA_HOME")) && *e) {
		_cleanup_free_ char *p = path_join(e, "venvfs");
		return path_absolute(p);
	}
	e = getenv("HOME");
	_cleanup_free_ char *p = path_join(e && *e ? e : "/", ".local/share/venvfs");
	return path_absolute(p);
}

/*
 * What is under HOME is never followed through a symlink: HOME itself may
 * be one (the user named it), but a symlink in place of objects/, envs/ or
 * the lock would make every command read, create and lock files outside
 * the store, with the rights of whoever runs it.
 */
static int open_subdir(struct store *s, const char *name, bool create, int *out)
{
	/* objects/ itself gets no entries but its 256 fan-out directories */
	int r = !create                                             ? 0
		: strcmp(name, "objects")                           ? store_mkdir_shared(s, s->fd, name)
		: mkdirat(s->fd, name, 0755) < 0 && errno != EEXIST ? -errno
								    : 0;
	if (r < 0)
		return vf_error_errno(-r, "%s/%s", s->home, name);
	*out = openat(s->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (*out < 0 && (errno == ELOOP || errno == ENOTDIR))
		return vf_error(EIO,
				"%s/%s: not a directory (a symbolic link or another file took its place; "
				"a store never has one there)",
				s->home, name);
	if (*out < 0)
		return vf_error_errno(errno, "%s/%s", s->home, name);
	return 0;
}

/* The format marker, read without following a symlink. */
static int read_marker(struct store *s, struct buf *out)
{
	_cleanup_close_ int fd = openat(s->fd, "venvfs-store", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;

	buf_reset(out);
	if (fd < 0 && errno == ENOENT)
		return -ENOENT;
	if (fd < 0 && errno != ELOOP)
		return vf_error_errno(errno, "%s/venvfs-store", s->home);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > 4096)
		return vf_error(EPROTO, "%s/venvfs-store: not a store's format marker", s->home);
	buf_grow(out, (size_t)st.st_size);
	ssize_t n = read_full(fd, out->data, (size_t)st.st_size);
	if (n < 0)
		return vf_error_errno((int)-n, "%s/venvfs-store", s->home);
	out->len = (size_t)n;
	out->data[n] = '\0';
	return 0;
}

/* "venvfs store 1\n", then "group GID\n" in a group store. */
static int parse_marker(struct store *s, const char *text)
{
	size_t n = strlen(STORE_FORMAT_MARKER);
	unsigned gid;
	char end;

	if (strncmp(text, STORE_FORMAT_MARKER, n) != 0)
		return vf_error(EPROTO, "%s/venvfs-store: unsupported store format", s->home);
	if (!text[n])
		return 0;
	if (sscanf(text + n, "group %u%c", &gid, &end) != 2 || end != '\n' || strchr(text + n, '\n')[1])
		return vf_error(EPROTO, "%s/venvfs-store: unsupported store format", s->home);
	s->shared = true;
	s->group = (gid_t)gid;
	return 0;
}

/* What the directory holds, for a store without its marker: nothing
 * (DIR_EMPTY), only what a store's own init makes before its marker (an
 * init that was killed: DIR_PARTIAL_STORE; a store may be made there), or
 * other things (DIR_OTHER). */
enum dir_state { DIR_EMPTY, DIR_PARTIAL_STORE, DIR_OTHER };

static enum dir_state dir_state(int fd)
{
	static const char *const own[] = {"objects", "packages", "envs", "tmp", "cache", "log", "run", "lock"};
	int dfd = dup(fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;
	enum dir_state st = d ? DIR_EMPTY : DIR_OTHER;

	if (!d && dfd >= 0)
		close(dfd);
	while (st != DIR_OTHER && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		st = str_has_prefix(de->d_name, "venvfs-store") ? DIR_PARTIAL_STORE : DIR_OTHER;
		for (size_t i = 0; st == DIR_OTHER && i < ARRAY_SIZE(own); i++)
			if (!strcmp(de->d_name, own[i]))
				st = DIR_PARTIAL_STORE;
	}
	if (d)
		closedir(d);
	return st;
}

/* store_open(); with group >= 0, a new store is a group store. */
static int open_store_as(const char *home, bool create, long group, struct store **out)
{
	struct store *s = xcalloc(1, sizeof(*s));
	_cleanup_buf_ struct buf marker = {0};
	int r;

	s->fd = s->objects_fd = s->packages_fd = s->envs_fd = s->tmp_fd = s->lock_fd = -1;
	s->hash = store_hash_xxh3;
	s->home = path_absolute(home);
	if (!s->home) {
		r = vf_error_errno(errno, "%s", home);
		goto fail;
	}
	if (create) {
		r = mkdir_p_at(AT_FDCWD, s->home, 0755);
		if (r < 0) {
			r = vf_error_errno(-r, "creating store %s", s->home);
			goto fail;
		}
	}
	s->fd = open(s->home, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->fd < 0) {
		r = errno == ENOENT ? vf_error(ENOENT,
					       "%s: no store here (venvfs import, create or mount make one; "
					       "or give --home an existing store)",
					       s->home)
				    : vf_error_errno(errno, "%s", s->home);
		goto fail;
	}
	/* The marker is written last, when everything below exists: a store
	 * with a marker is complete, and opening it creates nothing. */
	bool fresh = false;
	r = read_marker(s, &marker);
	if (r == -ENOENT && create && dir_state(s->fd) == DIR_OTHER) {
		r = vf_error(ENOTEMPTY,
			     "%s is not a venvfs store and not empty: a store is made in an empty or new "
			     "directory (give --home one, or VENVFS_HOME)",
			     s->home);
		goto fail;
	} else if (r == -ENOENT && create) {
		fresh = true;
		if (group >= 0) {
			/* HOME's own entries are all made now: no account adds to it */
			s->shared = true;
			s->group = (gid_t)group;
			if (fchown(s->fd, (uid_t)-1, s->group) < 0 || fchmod(s->fd, 02755) < 0) {
				r = vf_error_errno(errno, "%s: giving it to group %ld", s->home, group);
				goto fail;
			}
		}
	} else if (r == 0 && group >= 0) {
		r = vf_error(EEXIST, "%s is a store already; a group store is made new, in an empty or new directory",
			     s->home);
		goto fail;
	} else if (r < 0) {
		r = r != -ENOENT ? r
		    : dir_state(s->fd) == DIR_PARTIAL_STORE
			    ? vf_error(ENOENT,
				       "%s: a store whose making was interrupted (no venvfs-store "
				       "marker yet); venvfs import, create or mount finish it",
				       s->home)
			    : vf_error(ENOENT,
				       "%s: not a venvfs store (no venvfs-store marker); venvfs "
				       "import, create or mount make one in an empty or new directory",
				       s->home);
		goto fail;
	} else if ((r = parse_marker(s, marker.data)) < 0) {
		goto fail;
	}
	if ((r = open_subdir(s, "objects", fresh, &s->objects_fd)) < 0 ||
	    (r = open_subdir(s, "packages", fresh, &s->packages_fd)) < 0 ||
	    (r = open_subdir(s, "envs", fresh, &s->envs_fd)) < 0 || (r = open_subdir(s, "tmp", fresh, &s->tmp_fd)) < 0)
		goto fail;
	if (fresh) {
		/* All 256 fan-out directories exist from the start, so an insert
		 * never has to create (and fsync) a directory. */
		for (int i = 0; i < 256; i++) {
			char d[3];
			snprintf(d, sizeof(d), "%02x", i);
			if (store_mkdir_shared(s, s->objects_fd, d) < 0) {
				r = vf_error_errno(errno, "%s/objects/%s", s->home, d);
				goto fail;
			}
		}
		static const char *const more[] = {"cache", "log", "run"};
		for (size_t i = 0; i < ARRAY_SIZE(more); i++)
			if (store_mkdir_shared(s, s->fd, more[i]) < 0 && s->shared) {
				r = vf_error_errno(errno, "%s/%s", s->home, more[i]);
				goto fail;
			}
		/* the lock: opened for writing by every account of a group store */
		int lfd = openat(s->fd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (lfd < 0 || (s->shared && fchmod(lfd, 0664) < 0)) {
			r = vf_error_errno(errno, "%s/lock", s->home);
			if (lfd >= 0)
				close(lfd);
			goto fail;
		}
		close(lfd);
		if (fsync(s->objects_fd) < 0 || fsync(s->fd) < 0) {
			r = vf_error_errno(errno, "fsync of %s", s->home);
			goto fail;
		}
		_cleanup_free_ char *text = s->shared
						    ? xasprintf("%sgroup %u\n", STORE_FORMAT_MARKER, (unsigned)s->group)
						    : xstrdup(STORE_FORMAT_MARKER);
		r = write_file_atomic(s->fd, "venvfs-store", text, strlen(text), 0644);
		if (r < 0)
			goto fail;
	}
	/* A store on a read-only file system (an image, a shared cache) is
	 * read without the lock (readers never take it); its lock file, if
	 * any, is opened read-only, and store_lock() says why it cannot be
	 * taken. */
	s->lock_fd = openat(s->fd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
	if (s->lock_fd < 0 && errno == EROFS) {
		s->lock_fd = openat(s->fd, "lock", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (s->lock_fd < 0 && errno == ENOENT) {
			*out = s;
			return 0;
		}
	}
	if (s->lock_fd < 0 && errno != ELOOP) {
		r = vf_error_errno(errno, "%s/lock", s->home);
		goto fail;
	}
	struct stat lst;
	if (s->lock_fd < 0 || fstat(s->lock_fd, &lst) < 0 || !S_ISREG(lst.st_mode)) {
		r = vf_error(EIO,
			     "%s/lock is a symbolic link or another file, which the store layout never makes "
			     "(run venvfs store verify)",
			     s->home);
		goto fail;
	}
	*out = s;
	return 0;
fail:
	store_close(s);
	return r;
}

int store_open(const char *home, bool create, struct store **out)
{
	return open_store_as(home, create, -1, out);
}

int store_init_group(const char *home, const char *group)
{
	struct group *g = getgrnam(group);
	char *end;
	unsigned long gid = g ? g->gr_gid : strtoul(group, &end, 10);
	struct store *s;

	if (!g && (!*group || *end || gid > UINT32_MAX - 1))
		return vf_error(EINVAL, "%s: no such group", group);
	if (geteuid() != 0 && getegid() != (gid_t)gid) {
		gid_t groups[NGROUPS_MAX];
		int n = getgroups(NGROUPS_MAX, groups), i = 0;
		while (i < n && groups[i] != (gid_t)gid)
			i++;
		if (i >= n)
			return vf_error(EPERM,
					"you are not in group %s: a group store is made by one of its members "
					"(or root)",
					group);
	}
	int r = open_store_as(home, true, (long)gid, &s);
	if (r == 0)
		store_close(s);
	return r;
}

int store_mkdir_shared(struct store *s, int dirfd, const char *name)
{
	if (!s->shared)
		return mkdirat(dirfd, name, 0755) < 0 && errno != EEXIST ? -errno : 0;
	if (mkdirat(dirfd, name, 03775) < 0)
		return errno == EEXIST ? 0 : -errno;
	/* the umask took bits away; the parent's setgid gave the group */
	return fchmodat(dirfd, name, 03775, 0) < 0 ? -errno : 0;
}

bool store_object_foreign(const struct store *s, const struct stat *st)
{
	return s->shared && st->st_uid != 0 && st->st_uid != geteuid();
}

char *store_account_file(const struct store *s, const char *name)
{
	return s->shared ? xasprintf("%s.u%u", name, (unsigned)geteuid()) : xstrdup(name);
}

bool store_account_file_ours(const struct store *s, const char *name)
{
	struct stat st;

	return !s->shared || (fstatat(s->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == geteuid());
}

void store_close(struct store *s)
{
	if (!s)
		return;
	int fds[] = {s->fd, s->objects_fd, s->packages_fd, s->envs_fd, s->tmp_fd, s->lock_fd};
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(s->home);
	free(s);
}

int store_lock(struct store *s, int how, bool wait)
{
	/* nested: the outer lock covers an inner one of its mode or weaker
	 * (gc's EX covers the SH of an env_remove it calls); a flock of
	 * another mode on the same descriptor would convert it instead */
	if (s->lock_depth) {
		if (how == LOCK_EX && s->lock_held != LOCK_EX)
			return vf_error(EDEADLK, "%s/lock: exclusive lock asked under a shared one", s->home);
		s->lock_depth++;
		return 0;
	}
	/* only writers lock: a lock file opened read-only (store_open) is a
	 * store that cannot be written */
	if (s->lock_fd < 0 || (fcntl(s->lock_fd, F_GETFL) & O_ACCMODE) == O_RDONLY)
		return vf_error_read_only_store(s->home);
	if (flock(s->lock_fd, how | (wait ? 0 : LOCK_NB)) < 0) {
		if (errno == EWOULDBLOCK)
			return -EWOULDBLOCK;
		return vf_error_errno(errno, "%s/lock", s->home);
	}
	s->lock_held = how;
	s->lock_depth = 1;
	return 0;
}

void store_unlock(struct store *s)
{
	if (!s->lock_depth || --s->lock_depth)
		return;
	flock(s->lock_fd, LOCK_UN);
	s->lock_held = 0;
}

/* ---- objects ------------------------------------------------------------- */

/*
 * Objects are never reached through a symbolic link. Whoever may write the
 * store (a group of CI accounts) could otherwise put a symlink in place of
 * an object or of a fan-out directory, pointing at a file they may not read
 * (/etc/shadow), and have another user's export copy it out or a daemon
 * serve it; or, in place of a fan-out directory, make inserts create files
 * wherever it points. Every path under objects/ is "ab/name": one fan-out
 * directory, one file. It is opened with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS) where the kernel has it (Linux 5.6: one system
 * call, as before), else the fan-out directory and then the file each with
 * O_NOFOLLOW; creating, linking and renaming go through the fan-out
 * directory opened that way. A symlink met on the way, or an object that
 * is not a regular file, is damage: EIO, and the message says so.
 */

static bool errno_is_in_the_way(int e)
{
	return e == ELOOP || e == ENOTDIR || e == EXDEV;
}

/* -errno for objects/<path>, with a message; EIO for a symlink in the way. */
static int object_error(const char *path, int neg_errno)
{
	if (errno_is_in_the_way(-neg_errno))
		return vf_error(EIO,
				"objects/%s: a symbolic link or another file is in the object's place "
				"(the store is damaged or was tampered with; run venvfs store verify)",
				path);
	return vf_error_errno(-neg_errno, "objects/%s", path);
}

/* The fan-out directory of path ("ab/..."), opened without following a
 * symlink; an fd or -errno. */
static int fanout_open(struct store *s, const char *path)
{
	char d[3] = {path[0], path[1], '\0'};
	int fd = openat(s->objects_fd, d, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	return fd < 0 ? -errno : fd;
}

/* open(objects/<path>) following no symlink (util.c); an fd or -errno. */
static int objects_openat(struct store *s, const char *path, int flags, mode_t mode)
{
	if (__atomic_load_n(&s->no_openat2, __ATOMIC_RELAXED))
		return openat_nofollow_steps(s->objects_fd, path, flags, mode);
	return openat_beneath(s->objects_fd, path, flags, mode);
}

/* unlink(objects/<path>) through its fan-out directory. */
static void objects_unlink(struct store *s, const char *path)
{
	_cleanup_close_ int dfd = fanout_open(s, path);

	if (dfd >= 0)
		unlinkat(dfd, path + 3, 0);
}

int store_object_open(struct store *s, const struct objid *id)
{
	char path[OBJID_STR_MAX];
	struct stat st;
	int fd;

	objid_path(id, path);
	/* O_NONBLOCK: a FIFO in an object's place must not hang the opener;
	 * cleared again (io_uring would fail reads with EAGAIN) */
	fd = objects_openat(s, path, O_RDONLY | O_NONBLOCK, 0);
	if (fd < 0)
		return object_error(path, fd);
	if (fstat(fd, &st) < 0 || fcntl(fd, F_SETFL, 0) < 0) {
		int e = errno;
		close(fd);
		return vf_error_errno(e, "objects/%s", path);
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return vf_error(EIO,
				"objects/%s: not a regular file (the store is damaged or was tampered with; "
				"run venvfs store verify)",
				path);
	}
	return fd;
}

bool store_object_exists(struct store *s, const struct objid *id)
{
	char path[OBJID_STR_MAX];
	struct stat st;

	objid_path(id, path);
	_cleanup_close_ int fd = objects_openat(s, path, O_PATH, 0);
	return fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

/* Do data hash to id's name? 0, or -EIO with a message. */
static int check_content(struct store *s, const struct objid *id, const void *data, size_t len)
{
	char path[OBJID_STR_MAX];
	uint8_t h[16];

	s->hash(data, len, h);
	if (memcmp(h, id->hash, 16) == 0)
		return 0;
	objid_path(id, path);
	return vf_error(EIO,
			"objects/%s: content does not match its name (corrupt: damaged or changed "
			"after it was stored; run venvfs store verify)",
			path);
}

/* Read objects/<id> into out; with check (or when another account of a
 * group store wrote it), checked against its name. */
static int read_object(struct store *s, const struct objid *id, size_t max, bool check, struct buf *out)
{
	char path[OBJID_STR_MAX];
	_cleanup_close_ int fd = store_object_open(s, id);
	struct stat st;

	buf_reset(out);
	if (fd < 0)
		return fd;
	objid_path(id, path);
	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "objects/%s", path);
	if ((size_t)st.st_size > max)
		return vf_error(EFBIG, "objects/%s: too large (%lld bytes)", path, (long long)st.st_size);
	buf_grow(out, (size_t)st.st_size);
	ssize_t n = read_full(fd, out->data, (size_t)st.st_size);
	if (n < 0)
		return vf_error_errno((int)-n, "objects/%s: read", path);
	out->len = (size_t)n;
	out->data[out->len] = '\0';
	int r;
	if ((check || store_object_foreign(s, &st)) && (r = check_content(s, id, out->data, out->len)) < 0) {
		buf_reset(out);
		return r;
	}
	return 0;
}

int store_object_read(struct store *s, const struct objid *id, size_t max, struct buf *out)
{
	return read_object(s, id, max, false, out);
}

int store_object_read_checked(struct store *s, const struct objid *id, size_t max, struct buf *out)
{
	return read_object(s, id, max, true, out);
}

/* Map a file read-only; empty files map to a static empty buffer. */
static int map_fd(int fd, size_t size, void **out)
{
	static char empty[1];

	if (size == 0) {
		*out = empty;
		return 0;
	}
	void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

static void unmap(void *p, size_t size)
{
	if (size)
		munmap(p, size);
}

int store_object_check_fd(struct store *s, const struct objid *id, int fd)
{
	char path[OBJID_STR_MAX];
	struct stat st;
	void *p = NULL;

	objid_path(id, path);
	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "checking a copy of objects/%s", path);
	int r = map_fd(fd, (size_t)st.st_size, &p);
	if (r < 0)
		return vf_error_errno(-r, "checking a copy of objects/%s: mmap", path);
	r = check_content(s, id, p, (size_t)st.st_size);
	unmap(p, (size_t)st.st_size);
	return r;
}

int store_object_verify(struct store *s, const struct objid *id, uint64_t *size_out)
{
	char path[OBJID_STR_MAX];
	_cleanup_close_ int fd = -1;
	struct stat st;
	uint8_t h[16];
	void *p = NULL;
	int r;

	objid_path(id, path);
	fd = objects_openat(s, path, O_RDONLY | O_NONBLOCK, 0);
	if (fd < 0 && errno_is_in_the_way(-fd))
		return vf_error(EIO, "objects/%s: a symbolic link or another file is in the object's place", path);
	if (fd < 0)
		return vf_error_errno(-fd, "objects/%s", path);
	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "objects/%s", path);
	if (!S_ISREG(st.st_mode))
		return vf_error(EIO, "objects/%s: not a regular file", path);
	r = map_fd(fd, (size_t)st.st_size, &p);
	if (r < 0)
		return vf_error_errno(-r, "objects/%s: mmap", path);
	s->hash(p, (size_t)st.st_size, h);
	unmap(p, (size_t)st.st_size);
	if (memcmp(h, id->hash, 16) != 0)
		return vf_error(EIO, "objects/%s: content does not match its name (corrupt)", path);
	if (size_out)
		*size_out = (uint64_t)st.st_size;
	return 0;
}

/* Compare objects/<path> with data; 1 equal, 0 different, -errno. */
static int file_equals(struct store *s, const char *path, const void *data, size_t len)
{
	_cleanup_close_ int fd = objects_openat(s, path, O_RDONLY | O_NONBLOCK, 0);
	struct stat st;
	void *p = NULL;
	int r;

	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != len)
		return 0;
	r = map_fd(fd, len, &p);
	if (r < 0)
		return r;
	r = memcmp(p, data, len) == 0;
	unmap(p, len);
	return r;
}

/* ---- insert transactions ------------------------------------------------- */

/*
 * A new content is written to a temp file ".tmp.<txn>.<n>" in its fan-out
 * directory (small directories: creating and renaming there is cheap, and
 * the rename stays in one directory). A flush seals what was written so
 * far, waits for it to be durable (syncfs) without holding the lock, so
 * other threads go on reading and hashing meanwhile, then renames each file
 * into place without replacing anything. The final flush also makes the
 * names durable (a second syncfs) before any manifest refers to them.
 * Measured alternatives, slower on ext4: O_TMPFILE + linkat (the orphan
 * list serialises), sync_file_range() per file (many small writes).
 */

enum pend_state { PEND_WRITING, PEND_WRITTEN, PEND_SEALED, PEND_DONE, PEND_FAILED };

struct pending {
	struct objid id;
	uint64_t tmp_no; /* unique per transaction, 0 marks an empty slot */
	size_t len;
	enum pend_state state;
};

struct store_txn {
	struct store *s;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct pending *pend; /* open-addressing table keyed by objid */
	size_t pend_cap, pend_n;
	uint64_t next_tmp;
	uint64_t pending_bytes;
	bool flushing;               /* a flush is running (one at a time) */
	pthread_t flusher;           /* background flusher (store_txn_begin_background) */
	pthread_cond_t flusher_cond; /* wakes it: enough pending, kick, stop */
	bool has_flusher, stop, kick;
	uint64_t flush_every;
	char prefix[40];     /* unique temp-name prefix of this transaction */
	int error;           /* first asynchronous error */
	char error_msg[512]; /* its message, from the thread that met it */
	unsigned waiters;    /* threads waiting on cond */
};

/* Record the first error of any thread (under t->lock), with its message:
 * vf_last_error() is per thread, and the flusher's would be lost. */
static void txn_fail(struct store_txn *t, int r)
{
	if (t->error)
		return;
	t->error = r;
	snprintf(t->error_msg, sizeof(t->error_msg), "%s", vf_last_error());
}

struct store_txn *store_txn_begin(struct store *s)
{
	struct store_txn *t = xcalloc(1, sizeof(*t));

	t->s = s;
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	pthread_cond_init(&t->flusher_cond, NULL);
	snprintf(t->prefix, sizeof(t->prefix), "%d.%016llx", (int)getpid(), (unsigned long long)random_u64());
	return t;
}

static size_t pend_slot(const struct objid *id, size_t cap)
{
	uint64_t h;

	memcpy(&h, id->hash, 8);
	return (size_t)((h ^ id->seq * 0x9e3779b97f4a7c15ull) & (cap - 1));
}

static struct pending *pend_find(struct store_txn *t, const struct objid *id)
{
	if (!t->pend_cap)
		return NULL;
	for (size_t i = pend_slot(id, t->pend_cap);; i = (i + 1) & (t->pend_cap - 1)) {
		struct pending *p = &t->pend[i];
		if (p->tmp_no == 0)
			return NULL;
		if (objid_equal(&p->id, id))
			return p;
	}
}

static struct pending *pend_insert(struct store_txn *t, const struct objid *id)
{
	if ((t->pend_n + 1) * 2 > t->pend_cap) {
		size_t ncap = t->pend_cap ? t->pend_cap * 2 : 1024;
		struct pending *np = xcalloc(ncap, sizeof(*np));
		for (size_t i = 0; i < t->pend_cap; i++) {
			if (!t->pend[i].tmp_no)
				continue;
			size_t j = pend_slot(&t->pend[i].id, ncap);
			while (np[j].tmp_no)
				j = (j + 1) & (ncap - 1);
			np[j] = t->pend[i];
		}
		free(t->pend);
		t->pend = np;
		t->pend_cap = ncap;
	}
	size_t i = pend_slot(id, t->pend_cap);
	while (t->pend[i].tmp_no)
		i = (i + 1) & (t->pend_cap - 1);
	t->pend[i].id = *id;
	t->pend[i].tmp_no = ++t->next_tmp;
	t->pend_n++;
	return &t->pend[i];
}

/* "ab/.tmp.<txn>.<no>": next to the place the object will have. */
static void tmp_name(struct store_txn *t, const struct objid *id, uint64_t no, char out[96])
{
	char path[OBJID_STR_MAX];

	objid_path(id, path);
	snprintf(out, 96, "%.2s/.tmp.%s.%llu", path, t->prefix, (unsigned long long)no);
}

static int write_tmp(struct store_txn *t, const struct objid *id, uint64_t no, const void *data, size_t len,
		     mode_t perm)
{
	char name[96];
	int fd, r;

	tmp_name(t, id, no, name);
	fd = objects_openat(t->s, name, O_WRONLY | O_CREAT | O_EXCL, perm);
	if (fd < 0)
		return errno_is_in_the_way(-fd) ? object_error(name, fd)
						: vf_error_errno(-fd, "%s/objects/%s", t->s->home, name);
	r = write_full(fd, data, len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0) {
		objects_unlink(t->s, name);
		return vf_error_errno(-r, "%s/objects/%s", t->s->home, name);
	}
	return 0;
}

/* Where content comes from: the read bits its object may have, and a file
 * that already holds it, to link rather than copy (name NULL: none). */
struct insert_src {
	mode_t perm;
	int dirfd;
	const char *name;
	bool linked;
};

mode_t store_object_perm(const struct store *s, mode_t file_mode)
{
	if (s->shared)
		return file_mode & 0004 ? 0444 : 0400;
	return 0400 | (file_mode & 0044);
}

/* The same content from a file others may read: they may read the object. */
static void widen_object(struct store *s, const char *path, mode_t perm)
{
	struct stat st;
	_cleanup_close_ int fd = objects_openat(s, path, O_RDONLY | O_NONBLOCK, 0);

	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & perm) != perm)
		fchmod(fd, (st.st_mode | perm) & 0444); /* not ours to change: stays as it is */
}

/* Make the temp file of a new object: a link to src if possible, else a copy. */
static int make_tmp(struct store_txn *t, const struct objid *id, uint64_t no, const void *data, size_t len,
		    struct insert_src *src)
{
	if (src->name) {
		char name[96];
		tmp_name(t, id, no, name);
		_cleanup_close_ int dfd = fanout_open(t->s, name);
		if (dfd >= 0 && linkat(src->dirfd, src->name, dfd, name + 3, 0) == 0) {
			src->linked = true;
			return 0;
		}
		/* another file system, a hard-link limit...: copy (and a
		 * fan-out directory that cannot be opened fails there) */
	}
	return write_tmp(t, id, no, data, len, src->perm);
}

static int txn_insert(struct store_txn *t, const void *data, size_t len, struct objid *id, uint64_t *added,
		      struct insert_src *src)
{
	struct objid cand = {0};
	int r;

	*added = 0;
	t->s->hash(data, len, cand.hash);
	for (cand.seq = 0;; cand.seq++) {
		char path[OBJID_STR_MAX], name[96];

		/* Already in the store under this name? Same bytes: done. */
		objid_path(&cand, path);
		r = file_equals(t->s, path, data, len);
		if (r == 1) {
			widen_object(t->s, path, src->perm);
			break;
		}
		if (r < 0 && r != -ENOENT && r != -EACCES)
			return object_error(path, r);
		/* a different content holds this name, or one we may not read
		 * (another account's private file in a group store): next seq */
		if (r == 0 || r == -EACCES)
			continue;

		/* Not in the store: is it pending in this transaction? */
		pthread_mutex_lock(&t->lock);
		struct pending *p = pend_find(t, &cand);
		/* a running flush walks the table: it must not be rehashed */
		while (!p && t->flushing && (t->pend_n + 1) * 2 > t->pend_cap) {
			t->waiters++;
			pthread_cond_wait(&t->cond, &t->lock);
			t->waiters--;
			p = pend_find(t, &cand);
		}
		if (!p) {
			p = pend_insert(t, &cand);
			p->len = len;
			p->state = PEND_WRITING;
			uint64_t no = p->tmp_no;
			pthread_mutex_unlock(&t->lock);
			r = make_tmp(t, &cand, no, data, len, src);
			pthread_mutex_lock(&t->lock);
			p = pend_find(t, &cand);
			if (r < 0) {
				p->state = PEND_FAILED;
				txn_fail(t, r);
			} else {
				p->state = PEND_WRITTEN;
				if (t->flush_every && t->pending_bytes < t->flush_every &&
				    t->pending_bytes + len >= t->flush_every)
					pthread_cond_signal(&t->flusher_cond);
				t->pending_bytes += len;
				*added = len;
			}
			if (t->waiters)
				pthread_cond_broadcast(&t->cond);
			pthread_mutex_unlock(&t->lock);
			if (r < 0)
				return r;
			break;
		}
		/* (an entry stays in the table until the transaction ends) */
		while ((p = pend_find(t, &cand)) && p->state == PEND_WRITING) {
			t->waiters++;
			pthread_cond_wait(&t->cond, &t->lock);
			t->waiters--;
		}
		if (!p) {
			pthread_mutex_unlock(&t->lock);
			return vf_error(EIO, "an insert of the same content vanished from its transaction");
		}
		enum pend_state st = p->state;
		uint64_t no = p->tmp_no;
		size_t plen = p->len;
		pthread_mutex_unlock(&t->lock);
		if (st == PEND_FAILED)
			return vf_error(EIO, "an earlier write of the same content failed");
		if (plen != len)
			continue;
		r = -ENOENT;
		if (st == PEND_WRITTEN || st == PEND_SEALED) {
			tmp_name(t, &cand, no, name);
			r = file_equals(t->s, name, data, len);
		}
		if (r == -ENOENT) /* placed meanwhile: it is an object now */
			r = file_equals(t->s, path, data, len);
		if (r < 0)
			return vf_error_errno(-r, "comparing with a pending insert");
		if (r == 1)
			break;
	}
	*id = cand;
	return 0;
}

int store_txn_put(struct store_txn *t, const void *data, size_t len, struct objid *id, uint64_t *added)
{
	struct insert_src src = {.perm = 0444};

	return txn_insert(t, data, len, id, added, &src);
}

int store_txn_put_file(struct store_txn *t, const void *data, size_t len, mode_t mode, struct objid *id,
		       uint64_t *added)
{
	struct insert_src src = {.perm = store_object_perm(t->s, mode)};

	return txn_insert(t, data, len, id, added, &src);
}

int store_txn_link(struct store_txn *t, int dirfd, const char *name, const void *data, size_t len, mode_t mode,
		   struct objid *id, uint64_t *added, bool *linked)
{
	struct insert_src src = {store_object_perm(t->s, mode), dirfd, name, false};
	int r = txn_insert(t, data, len, id, added, &src);

	*linked = src.linked;
	return r;
}

uint64_t store_txn_pending_bytes(struct store_txn *t)
{
	pthread_mutex_lock(&t->lock);
	uint64_t n = t->flushing ? 0 : t->pending_bytes;
	pthread_mutex_unlock(&t->lock);
	return n;
}

/* Rename pending p into place; 0, or -errno with a message. */
static int place(struct store_txn *t, const struct pending *p)
{
	char path[OBJID_STR_MAX], name[96];
	int r;

	objid_path(&p->id, path);
	tmp_name(t, &p->id, p->tmp_no, name);
	/* both names in one fan-out directory, opened following no symlink */
	_cleanup_close_ int dfd = fanout_open(t->s, path);
	if (dfd < 0)
		return object_error(path, dfd);
	r = renameat2(dfd, name + 3, dfd, path + 3, RENAME_NOREPLACE);
	if (r < 0 && errno == EINVAL) {
		/* no RENAME_NOREPLACE here (some NFS): link + unlink never replaces */
		r = linkat(dfd, name + 3, dfd, path + 3, 0);
		if (r == 0)
			unlinkat(dfd, name + 3, 0);
	}
	if (r == 0)
		return 0;
	if (errno != EEXIST)
		return vf_error_errno(errno, "placing objects/%s", path);
	/* Someone else inserted this name meanwhile: fine if the same bytes. */
	int eq = -EIO;
	_cleanup_close_ int fd = openat(dfd, name + 3, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	void *m = NULL;
	if (fd >= 0 && map_fd(fd, p->len, &m) == 0) {
		eq = file_equals(t->s, path, m, p->len);
		unmap(m, p->len);
	}
	unlinkat(dfd, name + 3, 0);
	if (eq != 1)
		return vf_error(EAGAIN,
				"objects/%s: another writer stored a different content with the same hash "
				"at the same time; run the command again",
				path);
	return 0;
}

/* Rename the sealed entries at start, start + step, ... into place. */
struct place_job {
	struct store_txn *t;
	size_t start, step;
	int r;
};

static void *place_part(void *arg)
{
	struct place_job *j = arg;
	struct store_txn *t = j->t;

	for (size_t i = j->start; i < t->pend_cap; i += j->step) {
		pthread_mutex_lock(&t->lock);
		struct pending p = t->pend[i];
		pthread_mutex_unlock(&t->lock);
		if (!p.tmp_no || p.state != PEND_SEALED)
			continue;
		int r = place(t, &p);
		pthread_mutex_lock(&t->lock);
		t->pend[i].state = r < 0 ? PEND_FAILED : PEND_DONE;
		pthread_mutex_unlock(&t->lock);
		if (r < 0) {
			j->r = r;
			break;
		}
	}
	return NULL;
}

/* Flush; with names_durable, also make the new names durable. */
static int txn_flush(struct store_txn *t, bool names_durable)
{
	size_t sealed = 0;
	int r = 0;

	pthread_mutex_lock(&t->lock);
	while (t->flushing) {
		t->waiters++;
		pthread_cond_wait(&t->cond, &t->lock);
		t->waiters--;
	}
	if (t->error) {
		r = vf_error(-t->error, "%s", t->error_msg);
		pthread_mutex_unlock(&t->lock);
		return r;
	}
	for (size_t i = 0; i < t->pend_cap; i++)
		if (t->pend[i].tmp_no && t->pend[i].state == PEND_WRITTEN) {
			t->pend[i].state = PEND_SEALED;
			sealed++;
		}
	t->flushing = true;
	t->pending_bytes = 0;
	pthread_mutex_unlock(&t->lock);

	/* 1. every sealed file durable (others go on writing meanwhile) */
	if (sealed && syncfs(t->s->objects_fd) < 0)
		r = vf_error_errno(errno, "syncfs %s", t->s->home);
	/* 2. into place, never replacing anything (on two threads: renames
	 * are most of a flush's CPU time); the table does not move while
	 * flushing is set (inserts wait for it to grow) */
	if (r == 0 && sealed) {
		struct place_job jobs[2] = {{t, 0, 2, 0}, {t, 1, 2, 0}};
		pthread_t th;
		bool two = sealed > 256 && pthread_create(&th, NULL, place_part, &jobs[1]) == 0;
		if (!two)
			jobs[0].step = 1;
		place_part(&jobs[0]);
		if (two)
			pthread_join(th, NULL);
		r = jobs[0].r ? jobs[0].r : jobs[1].r;
		if (r < 0 && !jobs[0].r) {
			/* the message was set on the other thread */
			r = vf_error(-r, "placing new objects failed");
		}
	}
	/* 3. names durable before anything references them */
	if (r == 0 && sealed && names_durable && syncfs(t->s->objects_fd) < 0)
		r = vf_error_errno(errno, "syncfs %s", t->s->home);

	pthread_mutex_lock(&t->lock);
	t->flushing = false;
	if (r < 0)
		txn_fail(t, r);
	pthread_cond_broadcast(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return r;
}

int store_txn_flush(struct store_txn *t)
{
	return txn_flush(t, false);
}

/*
 * The background flusher: whenever flush_every new bytes are waiting, make
 * them durable and place them, so that writeback runs while the inserting
 * threads go on reading and hashing, and the final flush has little left.
 */
static void *flusher_main(void *arg)
{
	struct store_txn *t = arg;

	pthread_mutex_lock(&t->lock);
	for (;;) {
		while (!t->stop && !t->kick && t->pending_bytes < t->flush_every && !t->error)
			pthread_cond_wait(&t->flusher_cond, &t->lock);
		if (t->stop || t->error)
			break;
		t->kick = false;
		pthread_mutex_unlock(&t->lock);
		txn_flush(t, false);
		pthread_mutex_lock(&t->lock);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

struct store_txn *store_txn_begin_background(struct store *s, uint64_t flush_every)
{
	struct store_txn *t = store_txn_begin(s);

	t->flush_every = flush_every;
	t->has_flusher = pthread_create(&t->flusher, NULL, flusher_main, t) == 0;
	return t;
}

void store_txn_flush_background(struct store_txn *t)
{
	pthread_mutex_lock(&t->lock);
	t->kick = true;
	pthread_cond_signal(&t->flusher_cond);
	pthread_mutex_unlock(&t->lock);
}

static void stop_flusher(struct store_txn *t)
{
	if (!t->has_flusher)
		return;
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_signal(&t->flusher_cond);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->flusher, NULL);
	t->has_flusher = false;
}

static void txn_free(struct store_txn *t)
{
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	pthread_cond_destroy(&t->flusher_cond);
	free(t->pend);
	free(t);
}

int store_txn_commit(struct store_txn *t)
{
	stop_flusher(t);
	int r = txn_flush(t, true);

	if (r < 0)
		store_txn_abort(t);
	else
		txn_free(t);
	return r;
}

void store_txn_abort(struct store_txn *t)
{
	stop_flusher(t);
	for (size_t i = 0; i < t->pend_cap; i++) {
		struct pending *p = &t->pend[i];
		char name[96];
		if (!p->tmp_no || (p->state != PEND_WRITTEN && p->state != PEND_SEALED))
			continue;
		tmp_name(t, &p->id, p->tmp_no, name);
		objects_unlink(t->s, name);
	}
	txn_free(t);
}

/* ---- packages ------------------------------------------------------------ */

int store_package_register(struct store *s, const char *name, const struct objid *id)
{
	char hex[OBJID_STR_MAX];
	_cleanup_close_ int dfd = -1, fd = -1;

	int r = store_mkdir_shared(s, s->packages_fd, name);
	if (r < 0)
		return vf_error_errno(-r, "%s/packages/%s", s->home, name);
	/* never through a symlink: it would create files outside the store */
	dfd = openat(s->packages_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return vf_error_errno(errno, "%s/packages/%s", s->home, name);
	objid_format(id, hex);
	/* an entry that exists (whoever made it, whatever its mode) is done */
	fd = openat(dfd, hex, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
	if (fd < 0 && errno != EEXIST)
		return vf_error_errno(errno, "%s/packages/%s/%s", s->home, name, hex);
	return 0;
}
