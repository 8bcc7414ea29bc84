/*
 * fs.h - the venvfs FUSE daemon, as the CLI sees it: mount a store,
 * unmount, and find running mounts.
 */
#ifndef VENVFS_FS_H
#define VENVFS_FS_H

#include <stdbool.h>

#include "store.h"
#include "venv.h"

struct fs_opts {
	const char *mountpoint;
	bool foreground;           /* stay attached, log to stderr too */
	bool allow_other;          /* let other users in (default_permissions applies) */
	bool debug;                /* libfuse's request tracing */
	bool libfuse_mt;           /* libfuse's multithreaded loop instead of ours */
	bool no_uring;             /* /dev/fuse even where the kernel offers io_uring */
	unsigned max_threads;      /* workers (ours) or threads (libfuse's); 0: default */
	unsigned spin_us;          /* keep polling for requests this long after one */
	const char *log_path;      /* NULL: HOME/log/mount.log */
	unsigned absorb_idle_s;    /* absorb changed envs after this long idle; 0: never */
	bool no_absorb_on_unmount; /* do not absorb changed envs when unmounted */
	unsigned max_fds;          /* descriptors the daemon may use; 0: as many as allowed */
	bool xattrs;               /* serve extended attributes (ops.c, above op_getxattr(): what they cost) */
};

/*
 * Mount every env of store s at o->mountpoint and serve until unmounted
 * or signalled (SIGTERM, SIGINT, SIGHUP). Without foreground, returns in
 * the parent once the mount is up (0) or failed, and serves in a daemon.
 * A dead mount left by a killed daemon is cleaned up first.
 */
int fs_mount(struct store *s, const struct fs_opts *o);

/* Unmount (the daemon then exits). */
int fs_unmount(const char *mountpoint);

/* Unmount, then wait for the daemon of store s to exit (it may absorb
 * what was installed first). */
int fs_unmount_and_wait(struct store *s, const char *mountpoint);

/* Where the daemon of a store logs by default. */
char *fs_default_log(struct store *s);

/*
 * Ask the daemon serving mountpoint for its counters (text, malloc'd in
 * *out): requests, errors by errno, nodes, envs.
 */
int fs_stats(struct store *s, const char *mountpoint, char **out);

/*
 * Absorb env name (store/venv.h): directly, or, if a daemon serves the env
 * (holding its lock), by asking that daemon. say gets the report lines.
 */
int fs_absorb(struct store *s, const char *name, void (*say)(void *, const char *), void *ctx, struct absorb_stats *st);

/*
 * Clone env src as dst (store/venv.h venv_clone()), absorbing src first
 * (fs_absorb(): by its daemon if one serves it), so that what was installed
 * into it is shared with the clone rather than copied, and its scripts are
 * rendered for the clone. *absorbed: the distributions that took.
 */
int fs_clone(struct store *s, const char *src, const char *dst, uint64_t *absorbed);

/* ---- shared by the daemon and its clients (client.c) ---- */

/* "mount-<hash of the mount point>.EXT": the daemon's files in the run
 * directory (ext: "pid", "stats", "sock"). */
char *fs_run_name(const char *mountpoint, const char *ext);

/* The control socket's path (for messages). */
char *fs_socket_path(struct store *s, const char *mountpoint);

/* The address of name in the directory open at dirfd: its path through
 * /proc/self/fd, short whatever HOME is, and never through a symlink in
 * place of the directory. False if it does not fit. */
struct sockaddr_un;
bool fs_socket_address(int dirfd, const char *name, struct sockaddr_un *sa);

/* The mount point as every command names it: symlinks resolved (a dead
 * mount, which cannot be resolved: made absolute). malloc'd. */
char *fs_mount_path(const char *mountpoint);

/* Refuse (-EBUSY, with a message) a mount at mp if it is a FUSE mount
 * already, or if a daemon of this account serves store s. */
int fs_check_not_served(struct store *s, const char *mp);

/* A mount whose daemon was killed answers ENOTCONN: detach it. */
int fs_cleanup_dead_mount(const char *mp);

#endif
