/*
 * fuzz_pyvenv_cfg.c - pyvenv.cfg: pyvenv_cfg_parse(), pyvenv_cfg_get().
 *
 * Keys come out lower-case, keys and values stripped, with no newline.
 */
#include <ctype.h>
#include <string.h>

#include "distinfo.h"
#include "fuzz.h"

/* (only the start: a NUL inside a value ends the C string before its end) */
static bool stripped(const char *s)
{
	return !isspace((unsigned char)s[0]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = {
		"home",    "version", "version_info", "prompt", "executable", "include-system-site-packages",
		"command", ""};
	struct pyvenv_cfg c;

	if (pyvenv_cfg_parse((const char *)data, size, &c) < 0)
		return 0;
	for (size_t i = 0; i < c.n; i++) {
		for (const char *k = c.e[i].key; *k; k++)
			if (isupper((unsigned char)*k))
				abort();
		if (!stripped(c.e[i].key) || !stripped(c.e[i].value) || strchr(c.e[i].value, '\n'))
			abort();
	}
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		const char *v = pyvenv_cfg_get(&c, keys[i]);
		if (v && strlen(v) > size)
			abort();
	}
	pyvenv_cfg_free(&c);
	return 0;
}
