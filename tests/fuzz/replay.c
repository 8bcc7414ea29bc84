/*
 * replay.c - the driver that replaces libFuzzer where there is none (gcc
 * builds): runs a fuzz target once on each file named, or on each file of
 * each directory named (names starting with '.' skipped), in name order.
 * meson registers one such replay per target in the unit suite, over its
 * kept corpus and regression inputs, so every unit pass (plain, ASan,
 * valgrind) replays them.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Run the target on one file; 0 or -1 (unreadable). */
static int replay_file(const char *path)
{
	_cleanup_buf_ struct buf b = {0};

	if (read_file_at(AT_FDCWD, path, 64u << 20, &b) < 0) {
		fprintf(stderr, "replay: %s: %s\n", path, vf_last_error());
		return -1;
	}
	/* an exact-size copy: a read one byte past the input is an ASan report */
	_cleanup_free_ uint8_t *data = xmemdup(b.data ? b.data : "", b.len ? b.len : 1);
	LLVMFuzzerTestOneInput(data, b.len);
	return 0;
}

static int name_cmp(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_hidden(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int main(int argc, char **argv)
{
	unsigned runs = 0;
	int failed = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "replay: %s: %m\n", argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			failed |= replay_file(argv[i]);
			runs++;
			continue;
		}
		struct dirent **ents;
		int n = scandir(argv[i], &ents, skip_hidden, name_cmp);
		if (n < 0) {
			fprintf(stderr, "replay: %s: %m\n", argv[i]);
			return 1;
		}
		for (int k = 0; k < n; k++) {
			_cleanup_free_ char *path = path_join(argv[i], ents[k]->d_name);
			failed |= replay_file(path);
			runs++;
			free(ents[k]);
		}
		free(ents);
	}
	printf("replay: %u inputs\n", runs);
	return failed ? 1 : 0;
}
