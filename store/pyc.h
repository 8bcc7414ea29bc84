/*
 * pyc.h - Python bytecode files: their names in __pycache__ (PEP 3147),
 * their headers (PEP 552) and the marshalled strings inside them.
 *
 * When a pyc is valid for its source. CPython's importlib loads a cached
 * pyc instead of compiling its source if the pyc's 16-byte header fits:
 *
 *   bytes  0-3   the magic number of the interpreter version (ending in
 *                "\r\n", all that pyc_timestamp_header() checks of it);
 *   bytes  4-7   flags: 0 for a timestamp pyc. A hash-based pyc (bit 0)
 *                holds a hash of the source in bytes 8-15 instead,
 *                checked or not as its flags and --check-hash-based-pycs
 *                say;
 *   bytes  8-11  the source's mtime in whole seconds, mod 2^32;
 *   bytes 12-15  the source's size, mod 2^32;
 *
 * otherwise it compiles the source again and tries to write the pyc. So a
 * timestamp pyc stays valid as long as its source presents the mtime and
 * size its header names, whatever the pyc's own times and whatever path
 * it was compiled at (co_filename, below). That is what lets import give
 * a package pyc the mtime the view shows for its source, absorb show a
 * source with the mtime its pyc names instead (package.h), and export
 * write a source with the time it had and its pyc's header to match.
 * pyc_timestamp_header() rejects a hash-based pyc: venvfs never rewrites
 * one, nor counts it valid.
 */
#ifndef VENVFS_PYC_H
#define VENVFS_PYC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

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

#endif
