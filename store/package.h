/*
 * package.h - turning an installed distribution into a package: the rules
 * import (a venv on disk) and absorb (an env's writable layer) share.
 *
 * A distribution is a *.dist-info directory in site-packages with a
 * RECORD listing its files (PEP 376/627). Its package manifest (tree.h)
 * holds those files under two roots, the env root (scripts in bin/,
 * headers...) and site-packages, with the times TREE_STORE_MTIME, and in
 * the stored form the env needs:
 *
 *   - a script directly in bin/ that names the env's own path becomes a
 *     template (template.h), and so do the RECORD rows that hash it;
 *   - import (which copies every file anyway) normalises a timestamp pyc
 *     valid for its source: its header gets TREE_STORE_MTIME (the mtime
 *     the view shows for the source), its co_filename the canonical
 *     PYC_CANON_PREFIX name (TREE_F_PYC_NORM);
 *   - absorb, which moves files by hard link and writes none, keeps a valid
 *     pyc as it is (TREE_F_PYC_KEPT) and its source presents the mtime the
 *     pyc names.
 *
 * Either way, one package installed at two times, in two venvs, must be
 * one package, although pip compiled it twice, with each venv's path and
 * time inside: package_find_equivalent() dedups whole packages, treating
 * valid bytecode as the cache of its source that it is.
 */
#ifndef VENVFS_PACKAGE_H
#define VENVFS_PACKAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "distinfo.h"
#include "pyc.h"
#include "tree.h"
#include "util.h"

/* What METADATA and WHEEL say about a distribution. */
struct dist_meta {
	char *name; /* PEP 503 normalised, safe as a directory name */
	char *version;
	struct buf tags, requires, requires_python;
};

/* From the dist-info directory's name and its METADATA and WHEEL text
 * (either may be empty: the directory name decides then). */
void dist_meta_parse(const char *dist_info, const char *metadata, size_t mlen, const char *wheel, size_t wlen,
		     struct dist_meta *m);
void dist_meta_free(struct dist_meta *m);

/*
 * Why a distribution cannot become a package: the first few reasons, for
 * one report line ("x.py is missing; y.py does not match its RECORD hash
 * (and more)").
 */
struct dist_why {
	bool any;
	unsigned n;
	struct buf text;
};

void dist_why(struct dist_why *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The largest RECORD import and absorb read (torch's is 2 MB): a larger
 * one keeps its distribution the env's own, and costs no memory. */
#define RECORD_MAX_BYTES (64u << 20)
/* "reason; reason" and " (and more)" if some were left out */
const char *dist_why_more(const struct dist_why *w);

/* A package manifest builder with the header strings set. */
struct tree_builder *package_builder_new(const struct dist_meta *m, const char *dist_info);

/*
 * Resolve path lexically against base (both relative to the env root;
 * RECORD paths are relative to site-packages). Fails (-1) if it climbs
 * above the root; out gets the normalised path ("" for the root).
 */
int path_resolve_rel(const char *base, const char *path, struct buf *out);

/* The package root an env-relative path belongs to, and the rest. */
unsigned package_root_of(const char *env_path, const char *site_dir, const char **rel);

/* May this file name the env's path (and so become a template)? */
bool package_is_script(const char *env_path);

/*
 * RECORD as a template: row j is rendered again (hash and size of the file
 * as rendered) where row_tpl[j]. Returns true and fills blob if any row
 * needed it, false if RECORD can be stored as it is.
 */
bool package_record_template(const char *text, size_t len, const struct record *rec, const bool *row_tpl,
			     const unsigned *row_root, char *const *row_rel, struct buf *blob);

/* A timestamp pyc whose header names this source mtime and size? */
bool package_pyc_valid(const void *data, size_t len, int64_t src_mtime, uint64_t src_size);

/*
 * Normalise a pyc if it is a timestamp pyc valid for its source (source
 * mtime and size as the installer saw them): compiled_at lists the
 * absolute paths the source may have been compiled at; canon_root and
 * canon_rel name the source in its package. Returns true and fills out.
 */
bool package_pyc_normalise(const void *data, size_t len, int64_t src_mtime, uint64_t src_size,
			   const char *const *compiled_at, size_t n_paths, unsigned canon_root, const char *canon_rel,
			   struct buf *out);

/*
 * Call fn with every package of the store called name (its id and mapped
 * manifest) until it returns true; returns whether one did. In a group
 * store, packages another account stored are left out.
 */
bool package_each(struct store *s, const char *name,
		  bool (*fn)(void *ctx, const struct objid *id, const struct tree *t), void *ctx);
/* The same with each manifest's header only (tree_read_head()). */
bool package_each_head(struct store *s, const char *name,
		       bool (*fn)(void *ctx, const struct objid *id, const struct tree_head *h), void *ctx);

/*
 * A package of the store that shows the same distribution as manifest t:
 * the same header strings and the same nodes (names, modes, link targets,
 * the object of every file), except that bytecode valid for its source in
 * both (TREE_F_PYC_NORM or TREE_F_PYC_KEPT) may differ, and so may times.
 * Returns true with its id in out.
 */
bool package_find_equivalent(struct store *s, const struct tree *t, struct objid *out);

/*
 * The same for the manifest held in m: if the store has an equivalent
 * package, m becomes its manifest and id its id, and this returns 1; 0 if
 * it has none, < 0 on error.
 */
int package_take_equivalent(struct store *s, struct buf *m, struct objid *id);

#endif
