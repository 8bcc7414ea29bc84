/*
 * fuzz_metadata.c - METADATA and WHEEL headers: rfc822_get(),
 * dist_meta_parse() (what import and absorb take from a *.dist-info),
 * pep503_normalize().
 *
 * Input: the dist-info directory name, METADATA and WHEEL, cut at
 * FUZZ_SEP (fuzz.h); missing pieces are empty.
 */
#include <string.h>

#include "distinfo.h"
#include "fuzz.h"
#include "package.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const fields[] = {"Name",          "Version", "Requires-Dist",    "Requires-Python",
					     "Tag",           "Summary", "Metadata-Version", "N",
					     "Provides-Extra"};
	const char *piece[3] = {"", "", ""};
	size_t len[3] = {0, 0, 0};
	_cleanup_buf_ struct buf v = {0};

	for (int i = 0; i < 3 && fuzz_next(&data, &size, &piece[i], &len[i]); i++)
		;
	_cleanup_free_ char *dist_info = fuzz_cstr(piece[0], len[0]);
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
		size_t n = rfc822_get(piece[1], len[1], fields[i], i % 2 ? ' ' : '\n', &v);
		if (!v.data || strlen(v.data) != v.len || (n == 0 && v.len))
			abort();
		free(pep503_normalize(v.data, v.len));
	}
	struct dist_meta m;
	dist_meta_parse(dist_info, piece[1], len[1], piece[2], len[2], &m);
	/* names become directory names in the store */
	if (!m.name[0] || strchr(m.name, '/') || m.name[0] == '.')
		abort();
	dist_meta_free(&m);
	return 0;
}
