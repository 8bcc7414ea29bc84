/*
 * fuzz_env.c - env manifests: env_parse() (store/env.c).
 *
 * The whole input is one manifest. If it ends with an "end <16 hex>" line,
 * the checksum there is set to match what comes before (else nearly every
 * mutation would stop at the checksum); without one, the input is taken
 * as it is. An accepted manifest must survive env_format() and env_parse()
 * again unchanged.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "env.h"
#include "fuzz.h"

#define END_LEN (4 + 16 + 1) /* "end " + 16 hex + '\n' */

static void set_checksum(char *m, size_t len)
{
	char hex[17];

	if (len < END_LEN || memcmp(m + len - END_LEN, "end ", 4) || m[len - 1] != '\n' ||
	    (len > END_LEN && m[len - END_LEN - 1] != '\n'))
		return;
	snprintf(hex, sizeof(hex), "%016" PRIx64, (uint64_t)XXH3_64bits(m, len - END_LEN));
	memcpy(m + len - END_LEN + 4, hex, 16);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ char *m = xmemdup(data, size ? size : 1);
	_cleanup_buf_ struct buf text = {0}, again = {0};
	struct env *e, *e2;

	set_checksum(m, size);
	if (env_parse(m, size, "env", &e) < 0)
		return 0;
	free(env_python_xy(e));
	free(env_site_dir(e));
	if (!env_valid_name(e->name) || !env_upper(e)[0])
		abort();
	env_format(e, &text);
	if (env_parse(text.data, text.len, "formatted", &e2) < 0)
		abort();
	env_format(e2, &again);
	if (again.len != text.len || memcmp(again.data, text.data, text.len))
		abort();
	env_free(e);
	env_free(e2);
	return 0;
}
