/*
 * fuzz_tags.c - wheel tags: tags_compatible().
 *
 * Input: a tag set (WHEEL "Tag:" values, space-separated) and, after
 * FUZZ_SEP (fuzz.h), a Python "X.Y" to check it against besides a few
 * real ones.
 */
#include "fuzz.h"
#include "requirement.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const pythons[] = {"3.11", "3.8", "3.13", "3", ""};
	const char *tags_p = "", *xy_p = "";
	size_t tags_n = 0, xy_n = 0;

	fuzz_next(&data, &size, &tags_p, &tags_n);
	fuzz_next(&data, &size, &xy_p, &xy_n);
	_cleanup_free_ char *tags = fuzz_cstr(tags_p, tags_n);
	_cleanup_free_ char *xy = fuzz_cstr(xy_p, xy_n);
	for (size_t i = 0; i < ARRAY_SIZE(pythons); i++)
		tags_compatible(tags, pythons[i]);
	tags_compatible(tags, xy);
	/* an empty tag set fits everything */
	if (!tags_compatible("", xy))
		abort();
	return 0;
}
