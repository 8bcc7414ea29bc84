/*
 * util.h - small helpers shared by the store, the daemon and the CLI.
 *
 * Cleanup attributes in the composefs/systemd style, a per-thread "last
 * error" message (every store function returns 0 or a negative errno and,
 * on failure, leaves a human-readable message naming the file involved),
 * growable byte buffers, hex and hashing helpers, and the few file-system
 * primitives everything else is built on (full reads and writes, durable
 * writes, recursive removal).
 */
#ifndef VENVFS_UTIL_H
#define VENVFS_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- cleanup helpers ---------------------------------------------------- */

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void freep(void *p)
{
	free(*(void **)p);
}

/* Cleanups run on every way out, error paths included: they leave errno
 * as the failure set it, and mark what they released (a second run, or a
 * later look at the variable, sees nothing to release). */
static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int e = errno;
		close(*fd);
		*fd = -1;
		errno = e;
	}
}

static inline void fclosep(FILE **f)
{
	if (*f) {
		int e = errno;
		fclose(*f);
		*f = NULL;
		errno = e;
	}
}

static inline void closedirp(DIR **d)
{
	if (*d) {
		int e = errno;
		closedir(*d);
		*d = NULL;
		errno = e;
	}
}

#define _cleanup_free_     _cleanup_(freep)
#define _cleanup_close_    _cleanup_(closep)
#define _cleanup_fclose_   _cleanup_(fclosep)
#define _cleanup_closedir_ _cleanup_(closedirp)

/* Take ownership of a pointer held by a cleanup variable. */
#define steal_pointer(pp)                                                                                              \
	({                                                                                                             \
		__typeof__(*(pp)) _p = *(pp);                                                                          \
		*(pp) = NULL;                                                                                          \
		_p;                                                                                                    \
	})

/* Take ownership of a file descriptor held by a cleanup variable. */
#define steal_fd(fdp)                                                                                                  \
	({                                                                                                             \
		int _fd = *(fdp);                                                                                      \
		*(fdp) = -1;                                                                                           \
		_fd;                                                                                                   \
	})

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b)     ((a) < (b) ? (a) : (b))
#define MAX(a, b)     ((a) > (b) ? (a) : (b))

/* ---- errors ------------------------------------------------------------- */

/*
 * Record "msg" as this thread's last error and return -err (err > 0), so a
 * failing function can end with `return vf_error(EINVAL, "%s: ...", path)`.
 */
int vf_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like vf_error() with ": strerror(err)" appended. */
int vf_error_errno(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepend context ("importing X: ") to the current message; returns -err. */
int vf_error_prefix(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "the store HOME is on a read-only file system; ..." (EROFS): what every
 * command that would write a store that cannot be written says. */
int vf_error_read_only_store(const char *home);

/* The last error message of this thread ("" if none). */
const char *vf_last_error(void);
void vf_clear_error(void);

/* ---- memory ------------------------------------------------------------- */

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* s[0..n) without surrounding white space, in a new string */
char *xstrndup_trim(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *xmemdup(const void *p, size_t n);

/* A growable byte buffer; data is always NUL-terminated for convenience. */
struct buf {
	char *data;
	size_t len;
	size_t cap;
};

void buf_grow(struct buf *b, size_t extra);
void buf_add(struct buf *b, const void *p, size_t n);
void buf_adds(struct buf *b, const char *s);
void buf_addc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(struct buf *b);
void buf_reset(struct buf *b);
static inline void buf_freep(struct buf *b)
{
	buf_free(b);
}
#define _cleanup_buf_ _cleanup_(buf_freep)

/*
 * A hash map from byte strings (copied in) to 64-bit values, open
 * addressing with linear probing. Keys are never removed.
 */
struct strmap_slot {
	char *key; /* NULL: empty slot */
	size_t len;
	uint64_t hash;
	uint64_t val;
};

struct strmap {
	struct strmap_slot *slots;
	size_t cap, n;
};

/* The value slot for key, or NULL. */
uint64_t *strmap_get(const struct strmap *m, const char *key, size_t len);
/* The value slot for key, inserting it (value 0) if new; *created tells. */
uint64_t *strmap_put(struct strmap *m, const char *key, size_t len, bool *created);
void strmap_free(struct strmap *m);

/* ---- strings and paths -------------------------------------------------- */

bool str_has_prefix(const char *s, const char *prefix);
bool str_has_suffix(const char *s, const char *suffix);
bool mem_has_suffix(const char *s, size_t n, const char *suffix);

/* Join two path pieces with exactly one '/' (either may be empty). */
char *path_join(const char *a, const char *b);

/* Absolute, '.'/'..'-normalised form of path without resolving symlinks. */
char *path_absolute(const char *path);

/* Encode bytes for a one-line text format: %XX for '%', controls, space
 * and non-ASCII; decode back. Names may be any bytes but NUL. */
char *text_escape(const char *s, size_t n);
int text_unescape(const char *s, struct buf *out);

/* ---- hashing ------------------------------------------------------------ */

void hex_encode(const uint8_t *in, size_t n, char *out); /* writes 2n+1 bytes */
int hex_decode(const char *in, size_t n, uint8_t *out);  /* in has 2n chars */

/* SHA-256 as RECORD files write it: "sha256=" + urlsafe base64, no padding. */
#define RECORD_HASH_MAX 64
void sha256_record(const void *data, size_t len, char out[RECORD_HASH_MAX]);
void sha256_raw(const void *data, size_t len, uint8_t out[32]);
void b64url_nopad(const uint8_t *in, size_t n, char *out);

/* ---- file helpers ------------------------------------------------------- */

/* Read/write everything, retrying on EINTR and short counts. */
ssize_t read_full(int fd, void *buf, size_t n);
ssize_t pread_full(int fd, void *buf, size_t n, off_t off);
int write_full(int fd, const void *buf, size_t n);

/* Read a whole file (at most max bytes) relative to dirfd; NUL-terminated. */
int read_file_at(int dirfd, const char *path, size_t max, struct buf *out);

/*
 * Write a file atomically and durably: temp file in the same directory,
 * fsync, rename over name, fsync the directory. Nothing half-written is
 * ever visible under name.
 */
int write_file_atomic(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

/*
 * Create a new file (O_EXCL), write it and, if durable, fsync it; removed
 * again on failure. For a file inside a directory nothing names yet (the
 * directory is renamed into place afterwards), where a rename of its own
 * would only cost one more journal commit.
 */
int write_file_new(int dirfd, const char *name, const void *data, size_t len, mode_t mode, bool durable);

int fsync_dir_at(int dirfd, const char *path);

/* opendir() of path relative to dirfd; NULL with errno set on failure. */
DIR *opendir_at(int dirfd, const char *path);

/*
 * Opening what is under a directory without ever leaving it (the store:
 * nothing under HOME is followed through a symbolic link; HOME itself may
 * be one, the user named it).
 *
 * openat_beneath() opens dirfd/path with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS) where the kernel has it (Linux 5.6), else one
 * O_NOFOLLOW step at a time (openat_nofollow_steps(), which the first
 * ENOSYS or seccomp EPERM switches every later call to). A symbolic link
 * anywhere on the way, the last component included (O_PATH too), fails
 * with -ELOOP, a ".." with -EXDEV. O_NOFOLLOW and O_CLOEXEC are added.
 * Returns an fd or a negative errno (no message: see beneath_error()).
 */
int openat_beneath(int dirfd, const char *path, int flags, mode_t mode);
int openat_nofollow_steps(int dirfd, const char *path, int flags, mode_t mode);

/*
 * The error of an openat_beneath(dirfd, path) that returned neg, where
 * names dirfd in the message ("/home/me/store", NULL: nothing): a symbolic
 * link on the way is named and is damage, -EIO ("HOME/envs/web is a
 * symbolic link, which the store layout never makes; run venvfs store
 * verify"); anything else is vf_error_errno().
 */
int beneath_error(int dirfd, const char *where, const char *path, int neg);

/* read_file_at() and opendir_at(), opened with openat_beneath() (a FIFO in
 * the way is opened non-blocking, so it cannot hang the reader). */
int read_file_beneath(int dirfd, const char *where, const char *path, size_t max, struct buf *out);
DIR *opendir_beneath(int dirfd, const char *path);

/* Is the file system of fd mounted read-only (or is fd's mount)? */
bool fd_on_read_only_fs(int fd);

/*
 * A directory of this user's for files a process must write outside a
 * store that cannot be written (a read-only store's daemon: pid file,
 * control socket, log): $XDG_RUNTIME_DIR/venvfs/SUB, else
 * /tmp/venvfs-UID/SUB, made 0700 if missing. Each level must be a
 * directory (no symlink) that this user owns and nobody else may write.
 * Returns an fd (and, with path, its path) or a negative errno with a
 * message.
 */
int user_runtime_dir_open(const char *sub, char **path);

/* mkdir -p relative to dirfd (existing directories are fine). */
int mkdir_p_at(int dirfd, const char *path, mode_t mode);

/*
 * cp -a of a directory's contents: regular files (reflinked where the file
 * system can, else copied in the kernel), directories, symlinks, FIFOs,
 * sockets, devices; modes, times and user.* extended attributes.
 */
/* Copy size bytes of in to out (reflink, copy_file_range, or read/write). */
int copy_file(int in, int out, uint64_t size);
int copy_tree(int src_dirfd, int dst_dirfd);

/* rm -rf relative to dirfd; missing is not an error. */
int rm_rf_at(int dirfd, const char *path);

/*
 * Progress on a terminal: "\r<what>: done/total files, N MB" at most ten
 * times a second, on stderr, only if stderr is a terminal. Thread-safe.
 */
struct progress {
	bool on;
	const char *what;
	uint64_t last_ns;
	int busy;
};

void progress_init(struct progress *p, const char *what, bool enabled);
void progress_update(struct progress *p, uint64_t done, uint64_t total, uint64_t bytes);
void progress_done(struct progress *p);

/* A random 64-bit value (getrandom). */
uint64_t random_u64(void);

/* Current time in nanoseconds (CLOCK_MONOTONIC) for progress and stats. */
uint64_t now_ns(void);

#endif
