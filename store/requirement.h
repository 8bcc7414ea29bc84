/*
 * requirement.h - what a distribution asks of others and of the
 * interpreter, and what fits: PEP 440 versions and specifiers, PEP 508
 * markers and requirements, and wheel tags (PEP 425).
 */
#ifndef VENVFS_REQUIREMENT_H
#define VENVFS_REQUIREMENT_H

#include <stdbool.h>

/* ---- versions (PEP 440) -------------------------------------------------- */

/* Compare two version strings; unparsable versions sort lexically, last. */
int pep440_cmp(const char *a, const char *b);

/* Does version satisfy one clause like ">=1.2", "==2.*", "~=1.4.2", "!=3"? */
bool pep440_match(const char *version, const char *op, const char *spec);

/* Does version satisfy a comma-separated specifier set ("" matches all)? */
bool pep440_match_set(const char *version, const char *specs);

/* ---- requirements and markers (PEP 508) -------------------------------- */

/* The values markers compare against, for one interpreter. */
struct marker_env {
	const char *python_version;      /* "3.11" */
	const char *python_full_version; /* "3.11.7" */
	const char *extra;               /* "" or the extra being evaluated */
};

/* Evaluate a marker expression; -EINVAL (with a message) if malformed. */
int marker_eval(const char *marker, const struct marker_env *env, bool *result);

struct requirement {
	char *name;   /* PEP 503 normalised */
	char *extras; /* "a,b" or "" */
	char *specs;  /* ">=1.2,<2" or "" */
	char *marker; /* "" if none */
	char *text;   /* as written, for messages */
};

/* Parse "name[extras] specs ; marker" (also "name (specs)"). */
int requirement_parse(const char *s, struct requirement *out);
void requirement_free(struct requirement *r);

/* ---- wheel tags (PEP 425) ------------------------------------------------ */

/* Does a wheel tag set ("cp311-cp311-manylinux_2_17_x86_64 ...") fit this
 * Python ("3.11") on this machine? Empty tags fit. */
bool tags_compatible(const char *tags, const char *python_xy);

#endif
