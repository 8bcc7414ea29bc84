/*
 * fuzz_requirement.c - requirements, markers and versions (PEP 508,
 * PEP 440): requirement_parse(), marker_eval(), pep440_match_set(),
 * pep440_match(), pep440_cmp().
 *
 * Input: lines of a requirements file or of Requires-Dist values, cut at
 * FUZZ_SEP (fuzz.h). Each is parsed as a requirement (its marker evaluated
 * for a few interpreters and extras, its specifiers matched against a few
 * versions and the next line) and evaluated as a marker on its own.
 * pep440_cmp() sorts versions (maint.c hands it to qsort): over the
 * lines it must be a total order (reflexive and antisymmetric; transitive
 * over the first four lines).
 */
#include <string.h>

#include "fuzz.h"
#include "requirement.h"

#define MAX_LINES 6

static int sign(int c)
{
	return (c > 0) - (c < 0);
}

static void eval_marker(const char *marker)
{
	static const struct marker_env envs[] = {
		{"3.11", "3.11.7", ""},
		{"3.8", "3.8.10", "test"},
		{"3.13", "3.13.0rc1", "socks"},
	};
	bool result;

	for (size_t i = 0; i < ARRAY_SIZE(envs); i++)
		if (marker_eval(marker, &envs[i], &result) < 0)
			return;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const versions[] = {"1.0", "2.31.0", "1.0a1", "1!2.0.post1.dev3+local.7", "3.11.7"};
	static const char *const ops[] = {"==", "!=", "<=", ">=", "<", ">", "~=", "==="};
	char *line[MAX_LINES];
	size_t n = 0;
	const char *piece;
	size_t len;

	while (n < MAX_LINES && fuzz_next(&data, &size, &piece, &len))
		line[n++] = fuzz_cstr(piece, len);

	for (size_t i = 0; i < n; i++) {
		struct requirement r;
		if (requirement_parse(line[i], &r) == 0) {
			if (!r.name[0] || strchr(r.specs, ' '))
				abort();
			if (r.marker[0])
				eval_marker(r.marker);
			for (size_t k = 0; k < ARRAY_SIZE(versions); k++)
				pep440_match_set(versions[k], r.specs);
			pep440_match_set(line[(i + 1) % n], r.specs);
			requirement_free(&r);
		}
		eval_marker(line[i]);
	}
	for (size_t i = 0; i < n; i++) {
		if (pep440_cmp(line[i], line[i]) != 0)
			abort();
		for (size_t o = 0; o < ARRAY_SIZE(ops); o++)
			pep440_match(line[i], ops[o], line[(i + 1) % n]);
		for (size_t j = 0; j < n; j++) {
			int ij = sign(pep440_cmp(line[i], line[j]));
			if (ij != -sign(pep440_cmp(line[j], line[i])))
				abort();
			/* (transitivity over the first few: it is the costly part) */
			for (size_t k = 0; k < MIN(n, 4) && i < 4 && j < 4 && ij <= 0; k++)
				if (sign(pep440_cmp(line[j], line[k])) <= 0 && sign(pep440_cmp(line[i], line[k])) > 0)
					abort();
		}
	}
	for (size_t i = 0; i < n; i++)
		free(line[i]);
	return 0;
}
