/*
 * template.h - files whose content depends on where an env lives.
 *
 * A venv embeds its own absolute path in a few files: console scripts'
 * shebangs ("#!/path/to/env/bin/python"), the activate scripts
 * (VIRTUAL_ENV="/path/to/env", and the "(env) " prompt taken from the
 * directory's name), pyvenv.cfg's "command" line, and, through their
 * hashes, the RECORD rows of those scripts. The store keeps such a file as
 * a template object: the content cut into literal segments and
 * placeholders, rendered again for each path the env is shown at (a mount
 * point, an export directory).
 *
 * Blob format (little-endian): "VFSTPL1\0", u32 kind, u32 flags, u32
 * n_segments, then n_segments times {u32 type, u32 len, len bytes}.
 *
 * Shebang rule (pip/distlib and uv agree): "#!<env>/bin/python" is used
 * when the line fits in 127 bytes and the path has no space; otherwise the
 * /bin/sh trampoline
 *     #!/bin/sh
 *     '''exec' "<env>/bin/python" "$0" "$@"
 *     ' '''
 * A direct shebang rendered at a path that needs the trampoline becomes
 * one; a trampoline stays a trampoline (it works everywhere), so rendering
 * at the original path reproduces the original bytes.
 */
#ifndef VENVFS_TEMPLATE_H
#define VENVFS_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define TPL_MAGIC "VFSTPL1"

enum tpl_kind {
	TPL_SUBST = 1,  /* literal text with path placeholders */
	TPL_RECORD = 2, /* a RECORD file with rows of rendered files */
};

enum tpl_flags {
	TPL_F_SHEBANG = 1 << 0, /* starts with a direct "#!<env>/bin/..." line */
};

enum tpl_seg {
	TPL_SEG_LIT = 0,        /* bytes as they are */
	TPL_SEG_ENV = 1,        /* the env's absolute path */
	TPL_SEG_ENV_REAL = 2,   /* the env's path with symlinks resolved */
	TPL_SEG_PROMPT = 3,     /* the env directory's name (default prompt) */
	TPL_SEG_RECORD_ROW = 4, /* "sha256=...,size" of another rendered file;
				   bytes: root digit ('0' env, '1' site) + path */
};

/* How an env's own path was spelled when a file was made. */
struct tpl_paths {
	const char *env;      /* absolute path, symlinks not resolved */
	const char *env_real; /* realpath (may equal env) */
	const char *prompt;   /* directory name used in "(name) ", or NULL */
};

/*
 * Build a TPL_SUBST template from content if it mentions the env's path
 * (or, with prompt set, contains "(<prompt>) "). Returns 1 and fills blob
 * if the content is a template, 0 if it is plain content.
 */
int tpl_make_subst(const char *data, size_t len, const struct tpl_paths *p, struct buf *blob);

/* Incremental construction of a TPL_RECORD template. */
void tpl_record_begin(struct buf *blob);
void tpl_record_literal(struct buf *blob, const char *s, size_t n);
void tpl_record_row(struct buf *blob, unsigned root, const char *path, size_t n);
void tpl_record_end(struct buf *blob);

/* Rendering context. */
struct tpl_ctx {
	const char *env;      /* path the env is shown at */
	const char *env_real; /* its realpath (NULL: same as env) */
	/* Render the file at (root, path) of the same tree; for RECORD rows. */
	int (*render_file)(void *cb, unsigned root, const char *path, size_t n, struct buf *out);
	void *cb;
};

bool tpl_is_template(const void *blob, size_t len);

/*
 * Render a template. The blob must have been checked against its object's
 * name (store_object_read_checked(), as store/view.c loads it): what a
 * template renders is run (console scripts, activate) or vouches for other
 * files (RECORD rows), and nothing after rendering sees the object's bytes.
 * A malformed blob fails with EIO, never reads past len.
 */
int tpl_render(const void *blob, size_t len, const struct tpl_ctx *c, struct buf *out);

#endif
