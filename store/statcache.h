/*
 * statcache.h - what an import stored for each file of a venv, keyed by
 * the file's stat, so that importing the same venv again reads only the
 * files that changed (git's index does the same for `git status`).
 *
 *   HOME/cache/import-<xxh64 of the venv's path>
 *
 * An entry is trusted only if (dev, ino, size, mtime, ctime) are all
 * unchanged; files modified within two seconds of an import are never
 * recorded, because a change in the same clock tick would not show (the
 * "racy git" problem). The cache also keeps a digest of the whole walk and
 * the env manifest the import produced: if neither changed, a re-import
 * has nothing to do. It is a cache: written without fsync, checksummed,
 * ignored when anything about it is off.
 */
#ifndef VENVFS_STATCACHE_H
#define VENVFS_STATCACHE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "store.h"

struct statcache_ent {
	uint32_t path_off, path_len;
	/* the key */
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
	/* what was stored */
	uint8_t obj_hash[16];
	uint32_t obj_seq;
	uint16_t tflags;
	uint8_t have_sha;        /* sha holds the SHA-256 of the file */
	uint8_t norm_considered; /* a pyc, normalised if valid for its source... */
	int64_t src_mtime_ns;    /* ...whose source then had this mtime */
	uint64_t src_size;       /* ...and size */
	uint64_t stored_size;
	uint8_t sha[32];
};

struct statcache {
	uint64_t key;       /* paths and prompt the entries were made with */
	uint8_t digest[16]; /* of the whole walk (statcache_digest_*) */
	char *env_text;     /* the env manifest the import wrote */
	struct statcache_ent *ents;
	size_t n, cap;
	struct buf strtab;
	struct strmap index; /* path -> entry */
};

/* The cache file name for a venv (relative to HOME; one per account in a
 * group store, store_account_file()). */
char *statcache_name(struct store *s, const char *venv_abs);

/* Load; NULL (no error) if missing, damaged or made with another key. */
struct statcache *statcache_load(struct store *s, const char *name, uint64_t key);
void statcache_free(struct statcache *c);

const struct statcache_ent *statcache_get(const struct statcache *c, const char *path, size_t len);
bool statcache_key_matches(const struct statcache_ent *e, const struct stat *st);
void statcache_key_from(struct statcache_ent *e, const struct stat *st);

/* Building a new cache. */
struct statcache *statcache_new(uint64_t key);
struct statcache_ent *statcache_add(struct statcache *c, const char *path, size_t len);
void statcache_set_env(struct statcache *c, const char *text, size_t len);
/* Write it (no fsync: it is a cache). */
void statcache_save(struct store *s, const char *name, const struct statcache *c);

/* Order-independent digest of a walk: add every entry, then compare. */
void statcache_digest_add(uint8_t digest[16], const char *path, size_t len, const struct stat *st);

#endif
