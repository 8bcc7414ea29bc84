/*
 * pyfmt.h - the Python packaging formats venvfs reads: RECORD (PEP 376 /
 * PEP 627 CSV), pyvenv.cfg, METADATA and WHEEL headers, distribution name
 * normalisation (PEP 503), bytecode headers (PEP 552) and PEP 440 versions.
 * Parsers here never touch the file system: they take bytes and report
 * the line of anything they cannot accept.
 */
#ifndef VENVFS_PYFMT_H
#define VENVFS_PYFMT_H

#include <stdbool.h>
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

/* ---- bytecode ------------------------------------------------------------ */

#define PYC_HEADER_SIZE 16

/* Timestamp-based pyc (PEP 552 flags == 0): fills source mtime and size. */
bool pyc_timestamp_header(const void *data, size_t len, uint32_t *mtime, uint32_t *size);
void pyc_set_mtime(void *data, uint32_t mtime);

/*
 * Bytecode also embeds the path it was compiled at (co_filename, a
 * marshalled str), so one package compiled in two venvs gives two pycs.
 * CPython replaces co_filename when it loads a pyc (_imp._fix_co_filename),
 * so the store keeps a canonical name and export writes the real one back:
 * PYC_CANON_PREFIX "site-packages/<rel>" or PYC_CANON_PREFIX "env/<rel>".
 */
#define PYC_CANON_PREFIX "/@venvfs/"

/*
 * Rewrite the marshalled str objects of a pyc (after its header) that
 * equal needle (exact) or start with it (!exact): needle is replaced by
 * repl. Only strings with a well-formed marshal header around them are
 * touched. Returns how many were rewritten; out gets the result.
 */
size_t pyc_rewrite_strings(const void *data, size_t len, const char *needle, bool exact, const char *repl,
			   struct buf *out);

/*
 * For "dir/__pycache__/mod.cpython-311.opt-1.pyc" the source path
 * "dir/mod.py"; NULL if path is not a cached pyc.
 */
char *pyc_source_path(const char *path, size_t len);

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

/* Does a wheel tag set ("cp311-cp311-manylinux_2_17_x86_64 ...") fit this
 * Python ("3.11") on this machine? Empty tags fit. */
bool tags_compatible(const char *tags, const char *python_xy);

#endif
