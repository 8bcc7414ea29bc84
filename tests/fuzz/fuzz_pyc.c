/*
 * fuzz_pyc.c - bytecode: pyc_timestamp_header(), pyc_rewrite_strings()
 * (the marshalled co_filename strings import normalises and export writes
 * back), pyc_source_path().
 *
 * The whole input is one pyc. Its strings are rewritten as export does
 * (the canonical prefix to an env's site-packages, longer) and back, and
 * as import does (one exact path to its canonical name, shorter). The
 * input is also taken as a path for pyc_source_path().
 */
#include <string.h>

#include "fuzz.h"
#include "pyc.h"

#define SITE   "/home/me/proj/.venv/lib/python3.11/site-packages/"
#define SOURCE "/tmp/venvfs-seeds/tiny/lib/python3.11/site-packages/tinypkg/__init__.py"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_buf_ struct buf a = {0}, b = {0}, c = {0};
	uint32_t mtime, src_size;

	if (pyc_timestamp_header(data, size, &mtime, &src_size)) {
		_cleanup_free_ uint8_t *copy = xmemdup(data, size);
		pyc_set_mtime(copy, mtime + 1);
		if (!pyc_timestamp_header(copy, size, &mtime, &src_size))
			abort();
	}

	size_t n = pyc_rewrite_strings(data, size, PYC_CANON_PREFIX "site-packages/", false, SITE, &a);
	/* nothing rewritten: the same bytes */
	if (!n && (a.len != size || (size && memcmp(a.data, data, size))))
		abort();
	pyc_rewrite_strings(a.data, a.len, SITE, false, PYC_CANON_PREFIX "site-packages/", &b);
	pyc_rewrite_strings(data, size, SOURCE, true, PYC_CANON_PREFIX "site-packages/tinypkg/__init__.py", &c);

	free(pyc_source_path((const char *)data, size));
	return 0;
}
