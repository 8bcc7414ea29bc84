/*
 * statcache.c - the import stat cache (see statcache.h).
 *
 * File format (host endianness; a cache is never shared between
 * machines of different kinds, and a mismatch only costs a re-read):
 *
 *   "VFSSTAT1" | u64 key | u64 checksum of what follows | u64 n |
 *   digest[16] | u64 env_len | u64 strtab_len |
 *   statcache_ent[n] | strtab | env text
 */
#include "statcache.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define STATCACHE_MAGIC "VFSSTAT1"
#define HDR_SIZE        (8 + 8 + 8 + 8 + 16 + 8 + 8)

char *statcache_name(struct store *s, const char *venv_abs)
{
	_cleanup_free_ char *name = xasprintf("cache/import-%016" PRIx64, XXH3_64bits(venv_abs, strlen(venv_abs)));

	return store_account_file(s, name);
}

static int64_t ts_ns(const struct timespec *t)
{
	return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

void statcache_key_from(struct statcache_ent *e, const struct stat *st)
{
	e->dev = st->st_dev;
	e->ino = st->st_ino;
	e->size = (uint64_t)st->st_size;
	e->mtime_ns = ts_ns(&st->st_mtim);
	e->ctime_ns = ts_ns(&st->st_ctim);
}

bool statcache_key_matches(const struct statcache_ent *e, const struct stat *st)
{
	return e->dev == st->st_dev && e->ino == st->st_ino && e->size == (uint64_t)st->st_size &&
	       e->mtime_ns == ts_ns(&st->st_mtim) && e->ctime_ns == ts_ns(&st->st_ctim);
}

void statcache_digest_add(uint8_t digest[16], const char *path, size_t len, const struct stat *st)
{
	struct {
		uint64_t dev, ino, mode, size, rdev;
		int64_t mtime, ctime;
	} k = {st->st_dev,  st->st_ino,          st->st_mode,        (uint64_t)st->st_size,
	       st->st_rdev, ts_ns(&st->st_mtim), ts_ns(&st->st_ctim)};
	XXH3_state_t *s = XXH3_createState();
	XXH128_hash_t h;
	uint64_t lo, hi;

	XXH3_128bits_reset(s);
	XXH3_128bits_update(s, path, len);
	XXH3_128bits_update(s, "", 1);
	XXH3_128bits_update(s, &k, sizeof(k));
	h = XXH3_128bits_digest(s);
	XXH3_freeState(s);
	/* a sum does not depend on the order entries come in */
	memcpy(&lo, digest, 8);
	memcpy(&hi, digest + 8, 8);
	lo += h.low64;
	hi += h.high64;
	memcpy(digest, &lo, 8);
	memcpy(digest + 8, &hi, 8);
}

struct statcache *statcache_new(uint64_t key)
{
	struct statcache *c = xcalloc(1, sizeof(*c));

	c->key = key;
	return c;
}

void statcache_free(struct statcache *c)
{
	if (!c)
		return;
	free(c->env_text);
	free(c->ents);
	buf_free(&c->strtab);
	strmap_free(&c->index);
	free(c);
}

struct statcache_ent *statcache_add(struct statcache *c, const char *path, size_t len)
{
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 1024;
		c->ents = xrealloc(c->ents, c->cap * sizeof(*c->ents));
	}
	struct statcache_ent *e = &c->ents[c->n++];
	memset(e, 0, sizeof(*e));
	e->path_off = (uint32_t)c->strtab.len;
	e->path_len = (uint32_t)len;
	buf_add(&c->strtab, path, len);
	return e;
}

void statcache_set_env(struct statcache *c, const char *text, size_t len)
{
	free(c->env_text);
	c->env_text = xstrndup(text, len);
}

const struct statcache_ent *statcache_get(const struct statcache *c, const char *path, size_t len)
{
	uint64_t *v = c ? strmap_get(&c->index, path, len) : NULL;

	return v ? &c->ents[*v] : NULL;
}

struct statcache *statcache_load(struct store *s, const char *name, uint64_t key)
{
	_cleanup_buf_ struct buf b = {0};
	uint64_t k, sum, n, env_len, str_len;
	struct statcache *c;

	/* (another account's file under our name in a group store is no cache of ours) */
	if (!store_account_file_ours(s, name) || read_file_beneath(s->fd, NULL, name, 1u << 30, &b) < 0 ||
	    b.len < HDR_SIZE || memcmp(b.data, STATCACHE_MAGIC, 8)) {
		vf_clear_error();
		return NULL;
	}
	memcpy(&k, b.data + 8, 8);
	memcpy(&sum, b.data + 16, 8);
	memcpy(&n, b.data + 24, 8);
	memcpy(&env_len, b.data + 48, 8);
	memcpy(&str_len, b.data + 56, 8);
	/* (each length checked alone first: their sum must not wrap around) */
	if (k != key || XXH3_64bits(b.data + 24, b.len - 24) != sum || n > b.len / sizeof(struct statcache_ent) ||
	    str_len > b.len || env_len > b.len ||
	    HDR_SIZE + n * sizeof(struct statcache_ent) + str_len + env_len != b.len)
		return NULL;
	c = statcache_new(key);
	memcpy(c->digest, b.data + 32, 16);
	c->n = c->cap = n;
	c->ents = xcalloc(n ? n : 1, sizeof(struct statcache_ent));
	memcpy(c->ents, b.data + HDR_SIZE, n * sizeof(struct statcache_ent));
	const char *strtab = b.data + HDR_SIZE + n * sizeof(struct statcache_ent);
	buf_add(&c->strtab, strtab, str_len);
	c->env_text = xstrndup(strtab + str_len, env_len);
	for (size_t i = 0; i < n; i++) {
		struct statcache_ent *e = &c->ents[i];
		if ((uint64_t)e->path_off + e->path_len > str_len) {
			statcache_free(c);
			return NULL;
		}
		*strmap_put(&c->index, c->strtab.data + e->path_off, e->path_len, NULL) = i;
	}
	return c;
}

void statcache_save(struct store *s, const char *name, const struct statcache *c)
{
	_cleanup_buf_ struct buf out = {0};
	/* in HOME/cache, never through a symlink */
	const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
	_cleanup_free_ char *dir = base > name ? xstrndup(name, (size_t)(base - 1 - name)) : xstrdup(".");
	_cleanup_close_ int dfd = openat_beneath(s->fd, dir, O_RDONLY | O_DIRECTORY, 0);
	_cleanup_free_ char *tmp = xasprintf("%s.%016llx", base, (unsigned long long)random_u64());
	uint64_t n = c->n, env_len = c->env_text ? strlen(c->env_text) : 0, str_len = c->strtab.len, sum = 0;

	buf_add(&out, STATCACHE_MAGIC, 8);
	buf_add(&out, &c->key, 8);
	buf_add(&out, &sum, 8);
	buf_add(&out, &n, 8);
	buf_add(&out, c->digest, 16);
	buf_add(&out, &env_len, 8);
	buf_add(&out, &str_len, 8);
	buf_add(&out, c->ents, n * sizeof(*c->ents));
	buf_add(&out, c->strtab.data, str_len);
	buf_add(&out, c->env_text, env_len);
	sum = XXH3_64bits(out.data + 24, out.len - 24);
	memcpy(out.data + 16, &sum, 8);

	int fd = dfd < 0 ? -1 : openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		vf_clear_error();
		return; /* a cache: none is fine */
	}
	int r = write_full(fd, out.data, out.len);
	close(fd);
	if (r < 0 || renameat(dfd, tmp, dfd, base) < 0)
		unlinkat(dfd, tmp, 0);
}
