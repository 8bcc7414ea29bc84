/*
 * distinfo.h - the files of an installed distribution's *.dist-info
 * directory that venvfs reads: RECORD (PEP 376 / PEP 627 CSV), METADATA
 * and WHEEL headers, and distribution name normalisation (PEP 503); and a
 * venv's pyvenv.cfg. Parsers here never touch the file system: they take
 * bytes and report the line of anything they cannot accept.
 */
#ifndef VENVFS_DISTINFO_H
#define VENVFS_DISTINFO_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* ---- RECORD -------------------------------------------------------------- */

struct record_row {
	char *path;      /* unquoted path field */
	char *hash;      /* "sha256=..." or "" */
	int64_t size;    /* -1 if empty */
	unsigned line;   /* 1-based line number */
	size_t row_off;  /* byte offset of the row in the RECORD text */
	size_t hash_off; /* offset of the hash field (after "path,") */
	size_t row_end;  /* offset just past the row's last field (before EOL) */
};

struct record {
	struct record_row *rows;
	size_t n;
};

/*
 * Parse RECORD text. On a malformed row, fails with -EINVAL and a message
 * "<what>:<line>: ..." in vf_last_error().
 */
int record_parse(const char *text, size_t len, const char *what, struct record *out);
void record_free(struct record *r);

/* ---- pyvenv.cfg ---------------------------------------------------------- */

struct cfg_entry {
	char *key; /* stripped, lower-case */
	char *value;
};

struct pyvenv_cfg {
	struct cfg_entry *e;
	size_t n;
};

int pyvenv_cfg_parse(const char *text, size_t len, struct pyvenv_cfg *out);
const char *pyvenv_cfg_get(const struct pyvenv_cfg *c, const char *key);
void pyvenv_cfg_free(struct pyvenv_cfg *c);

/* ---- METADATA / WHEEL ---------------------------------------------------- */

/* All values of an RFC 822 header field (until the first blank line),
 * joined with sep. Returns the number found. */
size_t rfc822_get(const char *text, size_t len, const char *field, char sep, struct buf *out);

/* PEP 503: lower-case, runs of "-_." become "-". */
char *pep503_normalize(const char *name, size_t len);

#endif
