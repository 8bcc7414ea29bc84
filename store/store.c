/*
 * store.c - store directory, objects, insert transactions, locks.
 *
 * The layout and the crash-safety argument are in store.h.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

static int open_subdir(struct store *s, const char *name, bool create, int *out)
{
	if (create && mkdirat(s->fd, name, 0755) < 0 && errno != EEXIST)
		return vf_error_errno(errno, "%s/%s", s->home, name);
	*out = openat(s->fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*out < 0)
		return vf_error_errno(errno, "%s/%s", s->home, name);
	return 0;
}

int store_open(const char *home, bool create, struct store **out)
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
		r = errno == ENOENT ? vf_error(ENOENT, "%s: no store here (run venvfs import first)", s->home)
				    : vf_error_errno(errno, "%s", s->home);
		goto fail;
	}
	r = read_file_at(s->fd, "venvfs-store", 4096, &marker);
	if (r == -ENOENT && create) {
		r = write_file_atomic(s->fd, "venvfs-store", STORE_FORMAT_MARKER, strlen(STORE_FORMAT_MARKER), 0644);
		if (r < 0)
			goto fail;
	} else if (r < 0) {
		r = r == -ENOENT ? vf_error(ENOENT, "%s: not a venvfs store (no venvfs-store marker)", s->home) : r;
		goto fail;
	} else if (strcmp(marker.data, STORE_FORMAT_MARKER) != 0) {
		r = vf_error(EPROTO, "%s/venvfs-store: unsupported store format", s->home);
		goto fail;
	}
	if ((r = open_subdir(s, "objects", create, &s->objects_fd)) < 0 ||
	    (r = open_subdir(s, "packages", create, &s->packages_fd)) < 0 ||
	    (r = open_subdir(s, "envs", create, &s->envs_fd)) < 0 ||
	    (r = open_subdir(s, "tmp", create, &s->tmp_fd)) < 0)
		goto fail;
	if (create) {
		/* All 256 fan-out directories exist from the start, so an insert
		 * never has to create (and fsync) a directory. */
		for (int i = 0; i < 256; i++) {
			char d[3];
			snprintf(d, sizeof(d), "%02x", i);
			if (mkdirat(s->objects_fd, d, 0755) < 0 && errno != EEXIST) {
				r = vf_error_errno(errno, "%s/objects/%s", s->home, d);
				goto fail;
			}
		}
		mkdirat(s->fd, "cache", 0755);
		mkdirat(s->fd, "log", 0755);
	}
	s->lock_fd = openat(s->fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (s->lock_fd < 0) {
		r = vf_error_errno(errno, "%s/lock", s->home);
		goto fail;
	}
	*out = s;
	return 0;
fail:
	store_close(s);
	return r;
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
	if (flock(s->lock_fd, how | (wait ? 0 : LOCK_NB)) < 0) {
		if (errno == EWOULDBLOCK)
			return -EWOULDBLOCK;
		return vf_error_errno(errno, "%s/lock", s->home);
	}
	s->lock_held = how;
	return 0;
}

void store_unlock(struct store *s)
{
	if (s->lock_held)
		flock(s->lock_fd, LOCK_UN);
	s->lock_held = 0;
}

/* ---- objects ------------------------------------------------------------- */

int store_object_open(struct store *s, const struct objid *id)
{
	char path[OBJID_STR_MAX];
	int fd;

	objid_path(id, path);
	fd = openat(s->objects_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	return fd < 0 ? -errno : fd;
}

bool store_object_exists(struct store *s, const struct objid *id)
{
	char path[OBJID_STR_MAX];
	struct stat st;

	objid_path(id, path);
	return fstatat(s->objects_fd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

int store_object_read(struct store *s, const struct objid *id, size_t max, struct buf *out)
{
	char path[OBJID_STR_MAX];
	int r;

	objid_path(id, path);
	r = read_file_at(s->objects_fd, path, max, out);
	if (r < 0)
		return vf_error_prefix(-r, "object %s: ", path);
	return 0;
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

int store_object_verify(struct store *s, const struct objid *id, uint64_t *size_out)
{
	char path[OBJID_STR_MAX];
	_cleanup_close_ int fd = -1;
	struct stat st;
	uint8_t h[16];
	void *p = NULL;
	int r;

	objid_path(id, path);
	fd = openat(s->objects_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return vf_error_errno(errno, "objects/%s", path);
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

/* Compare the file at dirfd/path with data; 1 equal, 0 different, -errno. */
static int file_equals(int dirfd, const char *path, const void *data, size_t len)
{
	_cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	void *p = NULL;
	int r;

	if (fd < 0)
		return -errno;
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

enum pend_state { PEND_WRITING, PEND_WRITTEN, PEND_DONE };

struct pending {
	struct objid id;
	uint64_t tmp_no; /* temp file HOME/tmp/<txn prefix>.<tmp_no> */
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
	char prefix[40]; /* unique temp-name prefix of this transaction */
	int error;       /* first asynchronous error */
};

struct store_txn *store_txn_begin(struct store *s)
{
	struct store_txn *t = xcalloc(1, sizeof(*t));

	t->s = s;
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
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

static void tmp_name(struct store_txn *t, uint64_t no, char out[64])
{
	snprintf(out, 64, "%s.%llu", t->prefix, (unsigned long long)no);
}

static int write_tmp(struct store_txn *t, uint64_t no, const void *data, size_t len)
{
	char name[64];
	int fd, r;

	tmp_name(t, no, name);
	fd = openat(t->s->tmp_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
	if (fd < 0)
		return vf_error_errno(errno, "%s/tmp/%s", t->s->home, name);
	r = write_full(fd, data, len);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0) {
		unlinkat(t->s->tmp_fd, name, 0);
		return vf_error_errno(-r, "%s/tmp/%s", t->s->home, name);
	}
	return 0;
}

int store_txn_put(struct store_txn *t, const void *data, size_t len, struct objid *id, uint64_t *added)
{
	struct objid cand = {0};
	int r;

	*added = 0;
	t->s->hash(data, len, cand.hash);
	for (cand.seq = 0;; cand.seq++) {
		char path[OBJID_STR_MAX];

		/* Already in the store under this name? Same bytes: done. */
		objid_path(&cand, path);
		r = file_equals(t->s->objects_fd, path, data, len);
		if (r == 1)
			break;
		if (r < 0 && r != -ENOENT)
			return vf_error_errno(-r, "objects/%s", path);
		if (r == 0)
			continue; /* a different content holds this name: next seq */

		/* Not in the store: is it pending in this transaction? */
		pthread_mutex_lock(&t->lock);
		struct pending *p = pend_find(t, &cand);
		if (!p) {
			p = pend_insert(t, &cand);
			p->len = len;
			p->state = PEND_WRITING;
			uint64_t no = p->tmp_no;
			pthread_mutex_unlock(&t->lock);
			r = write_tmp(t, no, data, len);
			pthread_mutex_lock(&t->lock);
			p = pend_find(t, &cand);
			if (r < 0) {
				/* leave the slot WRITING-failed as a tombstone */
				p->state = PEND_DONE;
				p->len = (size_t)-1;
				if (!t->error)
					t->error = r;
			} else {
				p->state = PEND_WRITTEN;
				t->pending_bytes += len;
				*added = len;
			}
			pthread_cond_broadcast(&t->cond);
			pthread_mutex_unlock(&t->lock);
			if (r < 0)
				return r;
			break;
		}
		while ((p = pend_find(t, &cand)) && p->state == PEND_WRITING)
			pthread_cond_wait(&t->cond, &t->lock);
		size_t plen = p->len;
		uint64_t no = p->tmp_no;
		enum pend_state st = p->state;
		pthread_mutex_unlock(&t->lock);
		if (plen == (size_t)-1)
			return vf_error(EIO, "an earlier write of the same content failed");
		if (plen != len)
			continue;
		char name[64];
		if (st == PEND_DONE) {
			/* flushed meanwhile: it is an object now */
			r = file_equals(t->s->objects_fd, path, data, len);
		} else {
			tmp_name(t, no, name);
			r = file_equals(t->s->tmp_fd, name, data, len);
		}
		if (r < 0)
			return vf_error_errno(-r, "comparing with a pending insert");
		if (r == 1)
			break;
	}
	*id = cand;
	return 0;
}

uint64_t store_txn_pending_bytes(struct store_txn *t)
{
	pthread_mutex_lock(&t->lock);
	uint64_t n = t->pending_bytes;
	pthread_mutex_unlock(&t->lock);
	return n;
}

int store_txn_flush(struct store_txn *t)
{
	int r = 0;

	pthread_mutex_lock(&t->lock);
	if (t->error) {
		r = t->error;
		goto out;
	}
	/* 1. every temp file durable */
	if (t->pending_bytes || t->pend_n) {
		if (syncfs(t->s->tmp_fd) < 0) {
			r = vf_error_errno(errno, "syncfs %s", t->s->home);
			goto out;
		}
	}
	/* 2. into place, never replacing anything */
	bool renamed = false;
	for (size_t i = 0; i < t->pend_cap; i++) {
		struct pending *p = &t->pend[i];
		char name[64], path[OBJID_STR_MAX];

		if (!p->tmp_no || p->state != PEND_WRITTEN)
			continue;
		tmp_name(t, p->tmp_no, name);
		objid_path(&p->id, path);
		if (renameat2(t->s->tmp_fd, name, t->s->objects_fd, path, RENAME_NOREPLACE) < 0) {
			int e = errno;
			if (e == EINVAL) {
				/* no RENAME_NOREPLACE here (e.g. NFS): link + unlink */
				if (linkat(t->s->tmp_fd, name, t->s->objects_fd, path, 0) == 0) {
					unlinkat(t->s->tmp_fd, name, 0);
					goto placed;
				}
				e = errno;
			}
			if (e != EEXIST) {
				r = vf_error_errno(e, "placing objects/%s", path);
				goto out;
			}
			/* Someone else inserted this name meanwhile. */
			_cleanup_close_ int fd = openat(t->s->tmp_fd, name, O_RDONLY | O_CLOEXEC);
			void *m = NULL;
			int eq = -EIO;
			if (fd >= 0 && map_fd(fd, p->len, &m) == 0) {
				eq = file_equals(t->s->objects_fd, path, m, p->len);
				unmap(m, p->len);
			}
			if (eq != 1) {
				r = vf_error(EAGAIN, "objects/%s: another writer stored a different content "
						     "with the same hash at the same time; run the command again",
					     path);
				goto out;
			}
			unlinkat(t->s->tmp_fd, name, 0);
		}
placed:
		p->state = PEND_DONE;
		renamed = true;
	}
	/* 3. names durable before anything references them */
	if (renamed && syncfs(t->s->objects_fd) < 0) {
		r = vf_error_errno(errno, "syncfs %s", t->s->home);
		goto out;
	}
	t->pending_bytes = 0;
out:
	pthread_mutex_unlock(&t->lock);
	return r;
}

static void txn_free(struct store_txn *t)
{
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	free(t->pend);
	free(t);
}

int store_txn_commit(struct store_txn *t)
{
	int r = store_txn_flush(t);

	if (r < 0)
		store_txn_abort(t);
	else
		txn_free(t);
	return r;
}

void store_txn_abort(struct store_txn *t)
{
	for (size_t i = 0; i < t->pend_cap; i++) {
		char name[64];
		if (!t->pend[i].tmp_no || t->pend[i].state != PEND_WRITTEN)
			continue;
		tmp_name(t, t->pend[i].tmp_no, name);
		unlinkat(t->s->tmp_fd, name, 0);
	}
	txn_free(t);
}

/* ---- packages ------------------------------------------------------------ */

int store_package_put(struct store *s, const char *name, const void *data, size_t len, struct objid *id)
{
	_cleanup_close_ int dfd = -1;
	struct objid cand = {0};
	int r;

	if (mkdirat(s->packages_fd, name, 0755) < 0 && errno != EEXIST)
		return vf_error_errno(errno, "%s/packages/%s", s->home, name);
	dfd = openat(s->packages_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return vf_error_errno(errno, "%s/packages/%s", s->home, name);
	s->hash(data, len, cand.hash);
	for (cand.seq = 0;; cand.seq++) {
		char hex[OBJID_STR_MAX];
		objid_format(&cand, hex);
		r = file_equals(dfd, hex, data, len);
		if (r == 1)
			break;
		if (r == 0)
			continue;
		if (r != -ENOENT)
			return vf_error_errno(-r, "%s/packages/%s/%s", s->home, name, hex);
		r = write_file_atomic(dfd, hex, data, len, 0444);
		if (r < 0)
			return vf_error_prefix(-r, "%s/packages/%s: ", s->home, name);
		break;
	}
	*id = cand;
	return 0;
}

int store_package_open(struct store *s, const char *name, const struct objid *id)
{
	char hex[OBJID_STR_MAX];
	_cleanup_free_ char *p = NULL;
	int fd;

	objid_format(id, hex);
	p = xasprintf("%s/%s", name, hex);
	fd = openat(s->packages_fd, p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	return fd < 0 ? -errno : fd;
}
