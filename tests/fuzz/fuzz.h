/*
 * fuzz.h - what every fuzz target of tests/fuzz shares (docs/fuzzing.md).
 *
 * Each fuzz_*.c defines LLVMFuzzerTestOneInput: it feeds the bytes to one
 * group of parsers of outside input and frees everything they returned,
 * so that LeakSanitizer (and valgrind, through the replay driver) sees a
 * leak as a failure. Built with clang's -fsanitize=fuzzer it is a libFuzzer
 * target (meson -Dfuzz=true, tests/fuzz/run); linked with replay.c, by any
 * compiler, it replays the kept corpus and regression inputs as a unit test.
 *
 * A target that needs several inputs cuts the bytes into pieces at
 * FUZZ_SEP (fuzz_next()), so that seeds stay readable text files.
 */
#ifndef VENVFS_FUZZ_H
#define VENVFS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The separator between the pieces of one input. */
#define FUZZ_SEP "\n%%\n"

/*
 * The next piece of *data (up to FUZZ_SEP or the end), as *piece and *len;
 * false when nothing is left. Pieces may hold any byte, NUL included.
 */
static inline bool fuzz_next(const uint8_t **data, size_t *size, const char **piece, size_t *len)
{
	if (!*data)
		return false;
	const uint8_t *sep = memmem(*data, *size, FUZZ_SEP, sizeof(FUZZ_SEP) - 1);
	*piece = (const char *)*data;
	if (sep) {
		*len = (size_t)(sep - *data);
		*size -= *len + sizeof(FUZZ_SEP) - 1;
		*data = sep + sizeof(FUZZ_SEP) - 1;
	} else {
		*len = *size;
		*data = NULL;
		*size = 0;
	}
	return true;
}

/* A NUL-terminated copy, for the parsers that take C strings (they stop
 * at the first NUL, as they do on the strings their callers hand them). */
static inline char *fuzz_cstr(const void *data, size_t size)
{
	return xstrndup(data, size);
}

#endif
