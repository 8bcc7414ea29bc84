/*
 * ingest.h - reading a file's content into the store: what import (the
 * files of a venv) and absorb (the files of an env's writable layer) do
 * with each regular file they take.
 *
 *   1. the caller opens the file, its own way: import beneath the venv
 *      following no symlink (the venv is anyone's), absorb through its
 *      cache of writable-layer directories (under its lock);
 *   2. ingest_read() reads it whole, mapped if large, and fails with
 *      EAGAIN if it is no longer the regular file of the size the walk saw;
 *   3. the caller picks the stored form: the file as it is, its template
 *      form (ingest_template()) or a bytecode form of its own (c->alt,
 *      ingest_use_alt()), and hashes it where a RECORD needs it;
 *   4. ingest_put() puts the stored form into the store, which hashes it
 *      (XXH3-128) and compares bytes with an object of that hash, so equal
 *      content is stored once; a new object is a hard link to the file
 *      where the caller allows it, else a copy;
 *   5. ingest_release() (or _cleanup_ingest_) unmaps and frees.
 *
 * Messages name the file "top/path" (import: the venv's path, absorb: the
 * env's name).
 */
#ifndef VENVFS_INGEST_H
#define VENVFS_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "store.h"
#include "template.h"
#include "util.h"

/* One regular file's content, read whole, and the form the store gets. */
struct ingest_file {
	/* set by the caller */
	const char *top, *path; /* messages name the file "top/path" */
	const char *changed;    /* said of it if it changed while read ("changed during the absorb") */
	/* set by ingest_read() */
	struct stat st; /* of the open file */
	void *data;     /* its bytes: mapped, or in the caller's scratch buffer */
	size_t len;
	bool mapped;
	const void *put; /* the stored form: data, or alt.data */
	size_t put_len;
	struct buf alt; /* a form rewritten from data (template, bytecode) */
};

/*
 * Read the open file fd whole into c (c->data; c->put is it as it is). A
 * file no longer regular or not of size bytes fails with EAGAIN and
 * c->changed. Files up to 1 MiB are read into scratch, larger ones mapped.
 */
int ingest_read(struct ingest_file *c, int fd, uint64_t size, struct buf *scratch);

/* c->alt, filled by the caller, becomes the stored form. */
void ingest_use_alt(struct ingest_file *c);

/*
 * A script or pyvenv.cfg that spells the env's path as tp gives it: its
 * template form (template.h) becomes the stored form, and true (the
 * caller marks it TREE_F_TEMPLATE). False: tp is not in it.
 */
bool ingest_template(struct ingest_file *c, const struct tpl_paths *tp);

/*
 * Put c's stored form into the store as the content of a file of mode
 * `mode`: *id is its object, *added the bytes newly written (0: the store
 * had it). With dirfd >= 0 and the stored form the file as it is, the
 * file (dirfd/name) becomes the object by a hard link (*linked), not a
 * copy: only for a file nothing will change again. linked may be NULL.
 * On failure, the message starts "top/path: ".
 */
int ingest_put(struct store_txn *txn, const struct ingest_file *c, mode_t mode, int dirfd, const char *name,
	       struct objid *id, uint64_t *added, bool *linked);

/* Unmap and free what c holds (c itself is the caller's). */
void ingest_release(struct ingest_file *c);
#define _cleanup_ingest_ _cleanup_(ingest_release)

#endif
