/*
 * store.h - the content-addressed store: its directory layout, objects,
 * insert transactions and locks.
 *
 * A store is one directory and nothing else (no server):
 *
 *   HOME/venvfs-store          format marker ("venvfs store 1")
 *   HOME/lock                  flock: shared by writers, exclusive for gc
 *   HOME/objects/ab/cdef...    immutable file contents, named by XXH3-128
 *   HOME/packages/NAME/ID      index of package manifests (which are objects)
 *   HOME/envs/NAME/            one environment (env.h)
 *   HOME/tmp/                  scratch space (cleared by gc)
 *   HOME/cache/                disposable caches (import stat cache)
 *   HOME/log/                  daemon logs
 *
 * A group store (store_init_group()) is one shared by the accounts of a
 * group; docs/design.md, "Group stores", says what it promises. Its marker
 * says so ("group GID" after the format line).
 *
 * Objects are named by the 128-bit XXH3 hash of their content, written as
 * 32 hex digits and fanned out on the first two ("ab/" + 30 digits).
 * XXH3 is fast but not collision-resistant, so a name is a claim, not a
 * proof: an insert that finds an object of the same name compares bytes,
 * and a different content with the same hash gets the next free suffix
 * ("ab/cdef....1", ".2", ...). An object id is therefore (hash, seq).
 *
 * Crash safety of inserts: an object only ever appears under its final
 * name complete and durable. Inserts are grouped in a transaction: each
 * new content is written to a temp file in its fan-out directory, then
 * one syncfs() makes all of them durable, then each is renamed into place
 * without replacing anything, then a second syncfs() makes the names
 * durable before any manifest that references them is written. This is
 * the "temp file, fsync, rename" protocol with the fsyncs batched, as
 * ostree does. A crash leaves at most ".tmp.*" files, which are never
 * taken for objects and which gc removes.
 */
#ifndef VENVFS_STORE_H
#define VENVFS_STORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "util.h"

#define STORE_FORMAT_MARKER "venvfs store 1\n"

/* Object ids ------------------------------------------------------------- */

struct objid {
	uint8_t hash[16]; /* XXH3-128 of the content, canonical big-endian form */
	uint32_t seq;     /* 0, or n for the n-th distinct content with this hash */
};

/* "ab..." (32 hex) or "ab....N" */
#define OBJID_STR_MAX 48
void objid_format(const struct objid *id, char out[OBJID_STR_MAX]);
/* Relative path in objects/: "ab/cdef..." */
void objid_path(const struct objid *id, char out[OBJID_STR_MAX]);
int objid_parse(const char *s, size_t n, struct objid *id);
bool objid_equal(const struct objid *a, const struct objid *b);
bool objid_is_zero(const struct objid *id);

/* The content hash function; tests replace it to force collisions. */
typedef void (*store_hash_fn)(const void *data, size_t len, uint8_t out[16]);
void store_hash_xxh3(const void *data, size_t len, uint8_t out[16]);

/* The store ------------------------------------------------------------- */

struct store {
	char *home;          /* absolute path of the store directory */
	int fd;              /* HOME */
	int objects_fd;      /* HOME/objects */
	int packages_fd;     /* HOME/packages */
	int envs_fd;         /* HOME/envs */
	int tmp_fd;          /* HOME/tmp */
	int lock_fd;         /* HOME/lock */
	int lock_held;       /* 0, LOCK_SH or LOCK_EX */
	unsigned lock_depth; /* store_lock() calls not yet unlocked (one thread) */
	store_hash_fn hash;  /* store_hash_xxh3 unless a test says otherwise */
	/* openat2() failed with ENOSYS (or EPERM from a seccomp filter): objects
	 * are opened one O_NOFOLLOW step at a time (tests set it to check that) */
	bool no_openat2;
	/* a group store: shared by the accounts of group `group` */
	bool shared;
	gid_t group;
};

/*
 * The store directory to use: explicit (--home), else $VENVFS_HOME, else
 * ${XDG_DATA_HOME:-$HOME/.local/share}/venvfs. Returns a malloc'd string.
 */
char *store_default_home(const char *explicit_home);

/* Open (and with create, initialise) the store at home. */
int store_open(const char *home, bool create, struct store **out);
void store_close(struct store *s);

/* Group stores ----------------------------------------------------------- */

/*
 * Make a new group store at home for the accounts of group (a name or a
 * number; the caller must be in it). Refused where a store is already.
 */
int store_init_group(const char *home, const char *group);

/*
 * Make directory name under dirfd for everyone of the store to add to:
 * 0755 in a store of one account; in a group store 03775 whatever the
 * umask (group-writable, setgid so entries stay in the group, sticky so
 * an account removes or renames only its own entries). EEXIST is fine.
 */
int store_mkdir_shared(struct store *s, int dirfd, const char *name);

/*
 * Was this object file (stat st) written by another account of a group
 * store? Whoever inserts an object owns it and could change it, so what
 * such a file holds is checked against its name on every read path that
 * serves or keeps it: read into memory and checked, or checked and then
 * watched (its ctime) while it is read. Root's and our own are trusted.
 */
bool store_object_foreign(const struct store *s, const struct stat *st);

/*
 * The name of a file each account keeps for itself (name is relative to
 * HOME: caches, the daemon's log): name as it is, or in a group store
 * with ".u<uid>" appended; and whether the file found under that name is
 * ours to believe (in a group store, another account's file put under our
 * name is ignored, and the sticky directory keeps it from replacing ours).
 */
char *store_account_file(const struct store *s, const char *name);
bool store_account_file_ours(const struct store *s, const char *name);

/*
 * Take the store lock: LOCK_SH for anything that adds content or changes
 * which envs exist (import, create, clone, absorb, rm), LOCK_EX for gc
 * (docs/design.md, "Locks"). With wait, blocks (printing nothing);
 * without, fails with -EWOULDBLOCK. Calls nest: an inner lock the outer
 * one covers is counted, and only the last store_unlock() releases it.
 * Not for concurrent use by several threads of one struct store.
 */
int store_lock(struct store *s, int how, bool wait);
void store_unlock(struct store *s);

/* Objects ----------------------------------------------------------------- */

/*
 * Nothing under objects/ is ever followed through a symbolic link, neither
 * an object nor its fan-out directory (openat2 RESOLVE_NO_SYMLINKS, else
 * O_NOFOLLOW at each step). A symlink in the way, or an object that is not
 * a regular file, is damage: -EIO, with a message in vf_last_error().
 */

/* Open an object for reading; returns an fd or a negative errno (with a
 * message). */
int store_object_open(struct store *s, const struct objid *id);

/* Read a whole object (at most max bytes) into out. */
int store_object_read(struct store *s, const struct objid *id, size_t max, struct buf *out);

/*
 * The same, and the bytes read hash to the object's name: -EIO otherwise
 * (damaged, or changed by someone since it was stored). For what is
 * rendered or rewritten from an object (templates, bytecode), where no
 * later check sees the object's own bytes.
 */
int store_object_read_checked(struct store *s, const struct objid *id, size_t max, struct buf *out);

/*
 * Does the file open at fd (readable; a copy of the object just written,
 * say) hold exactly the content id is named for? 0, or -EIO with a message
 * naming the object. Checking the copy checks what was really written.
 */
int store_object_check_fd(struct store *s, const struct objid *id, int fd);

/*
 * The mode of the object of a file of mode file_mode: readable by no one
 * the file was not readable by (a venv's 0600 .env must not become
 * readable by every user from objects/), never writable. In a group store
 * (its own group, not the file's) an object is either readable by all or
 * by its inserter alone.
 */
mode_t store_object_perm(const struct store *s, mode_t file_mode);

/* True if the object exists (stat only). */
bool store_object_exists(struct store *s, const struct objid *id);

/*
 * Check one object: it exists, is a regular file, its content hashes to its
 * name. Returns 0, or a negative errno with the reason in vf_last_error().
 */
int store_object_verify(struct store *s, const struct objid *id, uint64_t *size_out);

/* Insert transactions ---------------------------------------------------- */

struct store_txn;

struct store_txn *store_txn_begin(struct store *s);

/*
 * The same, with a background thread that flushes every flush_every new
 * bytes, so writeback overlaps the caller's work (large imports).
 */
struct store_txn *store_txn_begin_background(struct store *s, uint64_t flush_every);

/* Ask the background flusher to flush what is pending now (and return). */
void store_txn_flush_background(struct store_txn *t);

/*
 * Add content to the store (thread-safe). Sets *id to the object that
 * holds exactly these bytes: an existing one (after comparing bytes) or a
 * new one, visible after the next store_txn_flush(). *added is set to the
 * number of bytes newly written (0 if deduplicated).
 */
int store_txn_put(struct store_txn *t, const void *data, size_t len, struct objid *id, uint64_t *added);

/*
 * The same for the content of a file of mode `mode`: the object is
 * readable by no one the file was not (0400, plus group and other read
 * where the file had them); an object already there is widened to that.
 */
int store_txn_put_file(struct store_txn *t, const void *data, size_t len, mode_t mode, struct objid *id,
		       uint64_t *added);

/*
 * The same for content that is already a file on the store's file system
 * (dirfd/name, holding exactly data): a new object is made by hard-linking
 * that file rather than writing a copy (*linked then says so). The file
 * becomes the object: it must never change again. Falls back to a copy
 * where a link cannot be made (another file system).
 */
int store_txn_link(struct store_txn *t, int dirfd, const char *name, const void *data, size_t len, mode_t mode,
		   struct objid *id, uint64_t *added, bool *linked);

/*
 * Make what was inserted so far durable and visible under its name (other
 * threads may go on inserting meanwhile). The names themselves are made
 * durable by store_txn_commit().
 */
int store_txn_flush(struct store_txn *t);

/* Bytes written to temp files and not yet flushed. */
uint64_t store_txn_pending_bytes(struct store_txn *t);

/* Flush, then free. Returns the flush result. */
int store_txn_commit(struct store_txn *t);

/* Drop pending temp files and free. */
void store_txn_abort(struct store_txn *t);

/* Packages --------------------------------------------------------------- */

/*
 * A package manifest is an object like any other; packages/NAME/ID is an
 * empty file that indexes it by name (for `store ls` and `create`). The
 * index is written after the manifest is durable and is not itself
 * synced: an env refers to its packages by object id, and a lost index
 * entry only hides a package from listings until the next import.
 */
int store_package_register(struct store *s, const char *name, const struct objid *id);

#endif
