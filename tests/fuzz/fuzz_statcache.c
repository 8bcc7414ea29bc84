/*
 * fuzz_statcache.c - the import stat cache file: statcache_load().
 *
 * statcache_load() reads the file from a store, so the target makes one
 * store in a temporary directory (removed at exit; on /dev/shm if it can)
 * and writes each input there as a cache file. The input's key is the one
 * asked for and its checksum is set to match, or nearly every mutation
 * would stop at them. Every entry of a loaded cache must be found again by
 * its path.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "fuzz.h"
#include "statcache.h"

#define NAME "cache/import-fuzz"

static char *home;
static struct store *store;

static void cleanup(void)
{
	store_close(store);
	if (home)
		rm_rf_at(AT_FDCWD, home);
	free(home);
}

static struct store *fuzz_store(void)
{
	if (store)
		return store;
	/* in memory where there is a tmpfs: writing each input to a disk's
	 * file system is ten times slower */
	home = xstrdup(access("/dev/shm", W_OK) == 0 ? "/dev/shm/venvfs-fuzz-XXXXXX" : "/tmp/venvfs-fuzz-XXXXXX");
	if (!mkdtemp(home))
		abort();
	atexit(cleanup);
	if (store_open(home, true, &store) < 0)
		abort();
	return store;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct store *s = fuzz_store();
	_cleanup_free_ uint8_t *m = xmemdup(data, size ? size : 1);
	uint64_t key = 0;

	if (size >= 24) {
		uint64_t sum = XXH3_64bits(m + 24, size - 24);
		memcpy(&key, m + 8, 8);
		memcpy(m + 16, &sum, 8);
	}
	_cleanup_close_ int fd = openat(s->fd, NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write_full(fd, m, size) < 0)
		abort();
	struct statcache *c = statcache_load(s, NAME, key);
	if (!c)
		return 0;
	for (size_t i = 0; i < c->n; i++) {
		const struct statcache_ent *e = &c->ents[i];
		const struct statcache_ent *found = statcache_get(c, c->strtab.data + e->path_off, e->path_len);
		/* (two entries of one path: the later one wins) */
		if (!found || found->path_len != e->path_len ||
		    memcmp(c->strtab.data + found->path_off, c->strtab.data + e->path_off, e->path_len))
			abort();
	}
	if (!c->env_text)
		abort();
	statcache_free(c);
	return 0;
}
