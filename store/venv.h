/*
 * venv.h - moving real virtual environments into and out of the store.
 *
 * venv_import() takes a venv made by `python -m venv`, virtualenv or uv
 * and records it as an env: each *.dist-info with a consistent RECORD
 * becomes a package (shared by every env that has the same files), every
 * other file becomes part of the env's own tree. Nothing is lost and the
 * venv is not modified; nothing outside it is ever read. venv_export()
 * writes an env back out as a real venv directory.
 */
#ifndef VENVFS_VENV_H
#define VENVFS_VENV_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "store.h"

struct import_opts {
	const char *name; /* env name; NULL: derived from the directory */
	unsigned threads; /* 0: one per CPU */
	bool progress;    /* progress on a terminal */
	bool no_cache;    /* ignore the stat cache of earlier imports */
	/* warnings (files kept as env content, ...); NULL: stderr */
	void (*warn)(void *ctx, const char *msg);
	void *warn_ctx;
	/* internal: build the env but do not install it; it is returned here
	 * (compose.c makes env skeletons this way, holding the store lock) */
	struct env **built;
};

struct import_stats {
	uint64_t files, dirs, symlinks, special;
	uint64_t bytes;      /* content bytes read or reused */
	uint64_t new_bytes;  /* bytes newly written to the store */
	uint64_t packages;   /* distributions stored as packages */
	uint64_t own_dists;  /* distributions kept as env content */
	uint64_t cache_hits; /* files not re-read thanks to the stat cache */
	uint64_t warnings;
	char *env_name; /* malloc'd */
};

int venv_import(struct store *s, const char *venv_dir, const struct import_opts *o, struct import_stats *st);

struct export_opts {
	bool progress;
	bool devices; /* create block and character devices (--devices) */
};

/* Write env name as a real venv at dir (which must not exist, or be empty). */
int venv_export(struct store *s, const char *name, const char *dir, const struct export_opts *o);

/* The env name venv_import() derives from a directory. */
char *venv_default_name(const char *venv_dir);

/* ---- composing envs from the store (compose.c) ---------------------------- */

struct create_opts {
	const char *name;
	const char *python; /* interpreter: path or command; NULL: from's */
	const char *from;   /* start from this env's packages, or NULL */
	const char **reqs;  /* "name==1.2", "name>=1", "name[extra]" ... */
	size_t n_reqs;
	const char *req_file; /* -r requirements.txt, or NULL */
	const char *prompt;   /* --prompt, or NULL */
	bool system_site_packages;
	bool no_deps; /* only what was asked for */
};

struct create_stats {
	size_t packages;
	uint64_t files;
	char *python_version; /* malloc'd */
};

/*
 * A new env of packages already in the store. Time grows with the number
 * of packages, not files: nothing is copied. A requirement the store cannot
 * satisfy fails (naming the versions it has) and nothing is created.
 */
int venv_create(struct store *s, const struct create_opts *o, struct create_stats *st);

/* A new env identical to src (its writable layer copied), independent. */
int venv_clone(struct store *s, const char *src, const char *dst);

/* ---- absorbing what was installed through the mount (absorb.c) ------------ */

struct absorb_opts {
	bool progress;
	/* one line per distribution: absorbed, left (and why), dropped;
	 * NULL: stderr */
	void (*say)(void *ctx, const char *msg);
	void *say_ctx;
	/* the daemon: keep the replaced writable layer (it may still show
	 * it to processes that hold its files); its name is returned */
	bool keep_old_layer;
};

struct absorb_stats {
	uint64_t absorbed;     /* distributions that became packages */
	uint64_t left;         /* complete-looking ones left where they are */
	uint64_t dropped;      /* packages no file of which showed any more */
	uint64_t files, bytes; /* files absorbed and their size */
	uint64_t linked_bytes; /* that became objects by hard link: no copy */
	uint64_t copied_bytes; /* written to the store: normalised bytecode,
				   templates, manifests, copies */
	uint64_t dedup_bytes;  /* already in the store */
	char *old_layer;       /* keep_old_layer: the replaced layer (malloc'd) */
};

/*
 * Absorb env name: every complete distribution of its writable layer
 * becomes a package (see absorb.c). The env lock must be free (no daemon
 * serving the env): -EBUSY otherwise.
 */
int venv_absorb(struct store *s, const char *name, const struct absorb_opts *o, struct absorb_stats *st);

/*
 * The same in two steps, for the daemon: prepare while it goes on serving
 * the env; then, under its own lock, absorb_changed() (are the files that
 * become objects as they were read, and not open for writing: in_use?)
 * and absorb_commit(). absorb_free() undoes an uncommitted one.
 */
struct absorb;
int absorb_prepare(struct store *s, const char *name, const struct absorb_opts *o, struct absorb_stats *st,
		   struct absorb **out);
bool absorb_empty(const struct absorb *a);
/* NULL, or a file written (or open for writing: in_use) since it was read */
const char *absorb_changed(const struct absorb *a, bool (*in_use)(void *ctx, dev_t dev, ino_t ino), void *ctx);
int absorb_commit(struct absorb *a);
/* Did that file of the writable layer go into the store (commit done)? */
bool absorb_took(struct absorb *a, dev_t dev, ino_t ino);
void absorb_free(struct absorb *a);

#endif
