/*
 * maint.h - looking after a store: listing packages, measuring it,
 * verifying it, collecting garbage.
 *
 * gc is a mark-and-sweep from the roots (every env's manifest: its tree,
 * its mtimes record, its packages and, in its upper layer, the store
 * objects that renamed store files still refer to). It holds the store
 * lock exclusively, so it waits for imports, creates and absorbs in
 * progress (they hold it shared) and they wait for it: content inserted
 * but not yet referenced by an env is never swept (the failure ostree had
 * when it computed reachability without a lock).
 */
#ifndef VENVFS_MAINT_H
#define VENVFS_MAINT_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

struct pkg_info {
	char *name;
	char *version;
	char *tags;
	struct objid id;
	uint64_t files;
	uint64_t bytes;
	unsigned refs; /* envs using it */
};

int store_list_packages(struct store *s, struct pkg_info **out, size_t *n);
void pkg_info_free(struct pkg_info *p, size_t n);

/*
 * An env as it is now, writable layer included (what `venvfs ls` shows
 * while it is mounted and written): the Python its pyvenv.cfg names (a
 * tool that remade the env with another interpreter wrote a new one into
 * the layer), the distributions its site-packages shows, the disk its
 * writable layer takes.
 */
struct env_summary {
	char *python; /* "3.12.1" */
	size_t distributions;
	uint64_t layer_bytes;
};
struct env;
int env_summary(struct store *s, struct env *e, struct env_summary *out);
void env_summary_free(struct env_summary *sum);

struct store_du {
	uint64_t objects;  /* files in objects/ */
	uint64_t packages; /* package manifests */
	uint64_t envs;
	uint64_t logical_bytes;    /* disk the envs would take as plain directories */
	uint64_t logical_apparent; /* the same in file sizes */
	uint64_t stored_bytes;     /* disk the store takes (st_blocks) */
	uint64_t stored_apparent;  /* the same in file sizes */
};

int store_du(struct store *s, struct store_du *out);

/* Called for every problem found ("objects/ab/cd..: corrupt"). */
typedef void (*maint_report_fn)(void *ctx, const char *msg);

struct verify_stats {
	uint64_t objects, packages, envs;
	uint64_t problems;
};

/* Re-hash every object, check every manifest and env. 0 if all is well. */
int store_verify(struct store *s, bool progress, maint_report_fn report, void *ctx, struct verify_stats *st);

struct gc_stats {
	uint64_t objects, object_bytes;
	uint64_t packages;
	uint64_t temp_files;
	uint64_t leftover_envs;
};

int store_gc(struct store *s, bool progress, struct gc_stats *st);

/*
 * Mark what env name references (objects and "name/id" package keys, either
 * map may be NULL) and report what is missing. Returns the number of
 * problems; *unreadable is set if a manifest could not be read at all.
 */
int store_mark_env(struct store *s, const char *name, struct strmap *objects, struct strmap *packages,
		   maint_report_fn report, void *ctx, bool *unreadable);

#endif
