/*
 * fs_i.h - private to the daemon: nodes (our inodes), mounted envs, the
 * daemon's state, counters and logging; then what each file of fs/ offers
 * the others. inode.c explains the inode model, union.c copy-up, shared.c
 * how store files are checked and served, housekeeping.c descriptor
 * pressure.
 */
#ifndef VENVFS_FS_I_H
#define VENVFS_FS_I_H

#define FUSE_USE_VERSION 34

#include <errno.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "env.h"
#include "fs.h"
#include "layer.h"
#include "store.h"
#include "view.h"

/* Kernel cache lifetimes (seconds). */
#define TIMEOUT_FOREVER 1e6 /* env content: we invalidate it when it changes */
#define TIMEOUT_ROOT    1.0 /* the list of envs: others may change the store */

enum node_kind {
	N_ROOT,   /* the mount point: one directory per env */
	N_DIR,    /* a directory of an env */
	N_SHARED, /* a store file, one node for every env that has it */
	N_FILE,   /* a read-only non-directory of one env: template, symlink... */
	N_UPPER,  /* a non-directory in one env's writable layer */
};

struct fsenv;

/*
 * A node: what every kind has, then one of two parts. Directories (nine in
 * ten nodes of a scanned env) hold the dir part; every other kind the file
 * part. N_FILE becomes N_UPPER in place on copy-up (its fuse_ino_t is its
 * address), so both are the file part. node_new() allocates only the part
 * of the node's kind: a field of the other part is past the allocation,
 * which the ASan build reports at its first use. 1,000 scanned envs:
 * 328 bytes a node before the split, docs/benchmarks.md.
 */
struct node {
	enum node_kind kind;
	uint32_t refs;      /* ours: children naming it as parent, jobs */
	uint64_t ino;       /* st_ino: stable across mounts (inode.c) */
	uint64_t nlookup;   /* the kernel's references (lookups not forgotten) */
	struct node *hnext; /* hash chain */
	uint64_t hash;      /* of its key in the node table */

	/* N_DIR, N_FILE: where it is; all but N_SHARED: the env's node list */
	struct fsenv *env;
	struct node *env_prev, *env_next;
	struct node *parent;
	char *name;
	uint16_t name_len;
	bool hashed; /* in the table (unlinked nodes are not) */
	bool gone;   /* names nothing in its env any more (absorb) */

	/* attributes (N_UPPER: read from the file each time) */
	uint32_t mode;
	uint64_t size;
	struct timespec mtime;

	union {
		/* N_DIR (and N_ROOT): its writable part, its read-only sources,
		 * its listing */
		struct {
			struct layer_dir up;
			struct view_dir dir;
			struct merged_name *list; /* ordered by cookie (inode.c) */
			uint64_t *cookies;
			size_t nlist;
			bool listed;
		};
		/* N_FILE, N_SHARED, N_UPPER */
		struct {
			/* N_FILE: the tree node that defines it; templates:
			 * rendered while read (node_render()) */
			struct view_src src;
			struct buf rendered;

			/* N_SHARED: the object, opened on first read and checked once */
			struct objid obj;
			int fd;              /* N_SHARED: object; N_UPPER: O_PATH of the file */
			int state;           /* 0 unchecked, 1 good, <0 errno (damaged) */
			uint8_t fill;        /* FILL_*: its first open puts it in the page cache (shared.c) */
			bool foreign;        /* another account's object in a group store (shared.c) */
			bool no_passthrough; /* was an N_FILE (opens of it may be cached
						ones), or passthrough was refused */
			char *seen_as;       /* "env/path" where first met, for messages */

			/* N_UPPER: identity in the writable layer, open write handles */
			dev_t dev;
			ino_t upper_ino;
			fuse_ino_t met_in; /* the directory and name it was looked up by */
			char *met_as;      /* (fd_pressure(): what to ask the kernel to drop) */
			uint32_t writers;
			uint32_t backing_id; /* passthrough: the kernel's id of backing_fd */
			int backing_fd;
			uint32_t backing_users; /* open files using it */
		};
	};
};

/* The dir part and the file part: what node_new() allocates for each kind. */
#define NODE_DIR_SIZE  (offsetof(struct node, listed) + sizeof(bool))
#define NODE_FILE_SIZE sizeof(struct node)
static inline bool node_is_dir(const struct node *n)
{
	return n->kind == N_DIR || n->kind == N_ROOT;
}

/* One env being served. */
struct fsenv {
	char *name;
	struct env *env;
	struct view *view;
	char *path;            /* MOUNT/NAME: what templates are rendered for */
	struct node *root;     /* its top directory */
	struct node *nodes;    /* all its nodes (node_attach) */
	int workfd;            /* HOME/envs/NAME/work */
	uint32_t refs;         /* nodes of this env alive */
	bool stale;            /* replaced or removed: no new lookups, no writes */
	bool readonly;         /* another daemon holds its env lock */
	bool durable;          /* env_make_durable() done since loaded (op_fsync), atomic */
	uint64_t gen;          /* changes to its writable layer (absorb checks) */
	uint64_t absorbed_gen; /* gen when last absorbed: dirty if different */
	char *retired_layer;   /* replaced: a writable layer to delete with it */
	struct fsenv *next;
	struct timespec loaded_mtime; /* of envs/NAME/env when loaded */
	ino_t loaded_ino;
};

/* Counters: requests and failures per operation, failures per errno. */
enum fs_op {
	OP_LOOKUP,
	OP_FORGET,
	OP_GETATTR,
	OP_SETATTR,
	OP_READLINK,
	OP_MKNOD,
	OP_MKDIR,
	OP_UNLINK,
	OP_RMDIR,
	OP_SYMLINK,
	OP_RENAME,
	OP_LINK,
	OP_OPEN,
	OP_READ,
	OP_WRITE,
	OP_RELEASE,
	OP_FSYNC,
	OP_READDIR,
	OP_READDIRPLUS,
	OP_STATFS,
	OP_CREATE,
	OP_IOCTL,
	OP_ACCESS,
	OP_GETXATTR,
	OP_SETXATTR,
	OP_LISTXATTR,
	OP_REMOVEXATTR,
	OP_FALLOCATE,
	OP_COUNT
};

#define STAT_ERRNO_MAX 134

struct fs_stats {
	uint64_t calls[OP_COUNT];
	uint64_t errors[OP_COUNT];
	uint64_t by_errno[STAT_ERRNO_MAX];
	uint64_t damaged_objects; /* reads refused: object missing or corrupt */
	uint64_t filled_at_open;  /* store files put in the page cache at first open */
	uint64_t estale_retries;  /* write-opens of shared files redirected */
	uint64_t copy_ups;        /* files copied into a writable layer */
	uint64_t absorbs;         /* distributions absorbed into the store */
};

struct fsd {
	struct store *s;
	struct fuse_session *se;
	char *mountpoint;         /* as given (made absolute): what envs are rendered for, as a
			     venv made at a path through a symlink names that path */
	char *mount_key;          /* resolved: what the run directory's files are named by */
	pthread_mutex_t lock;     /* nodes, envs, layers: see ops.c */
	pthread_mutex_t dispatch; /* one request handler at a time (main.c, uring.c) */
	struct node root;
	struct node **table; /* all nodes but root, by key hash */
	size_t table_cap, table_n;
	struct fsenv *envs;  /* current and stale envs */
	struct strmap trees; /* object id -> struct tree *, shared */
	char **env_names;    /* root listing, rebuilt when stale */
	uint64_t *env_cookies;
	size_t n_env_names;
	bool env_names_stale;
	struct timespec envs_mtime;
	uid_t uid;
	gid_t gid;
	struct fs_stats st;
	FILE *log;
	bool log_stderr;
	bool use_uring; /* take FUSE over io_uring if offered (uring.c) */
	uint64_t nodes_alive;
	uint64_t nodes_made;      /* ever (fd_pressure()) */
	uint64_t last_request_ns; /* for absorb-when-idle */
	unsigned absorb_idle_s;   /* 0: never on idle */
	bool absorb_on_unmount;
	struct strmap env_locks; /* env name -> its lock's fd + 2 (1: busy) */
	int run_fd;              /* the store's run directory (store_run_open()) */
	bool many_new_nodes;     /* 64 more: housekeeping to look at fd_pressure() */
};

extern struct fsd fsd;

/* Open files */
/* /proc/self/fd/N: how to reach a file we hold an O_PATH descriptor of. */
static inline void fd_path(int fd, char out[32])
{
	snprintf(out, 32, "/proc/self/fd/%d", fd);
}

/*
 * An open file of a writable layer: fh holds its descriptor, and in its
 * high half the passthrough backing id, if the kernel serves its reads and
 * writes itself (passthrough.c). A large store file in passthrough: the id
 * alone.
 */
static inline int fh_fd(const struct fuse_file_info *fi)
{
	return (int)(uint32_t)fi->fh;
}

static inline uint32_t fh_backing(const struct fuse_file_info *fi)
{
	return (uint32_t)(fi->fh >> 32);
}

static inline void fh_set_backing(struct fuse_file_info *fi, uint32_t id)
{
	fi->fh |= (uint64_t)id << 32;
}

/* daemon.c: what every part of the daemon stands on */
/* logging: timestamped lines in the log (and stderr in the foreground) */
void fs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* the log: --log FILE as given, else the default one (fs.h) */
FILE *log_open(struct store *s, const char *explicit_path, char **path);
/* pthread_create() for helper threads: exit signals blocked from birth */
int fs_thread_create(pthread_t *t, void *(*fn)(void *), void *arg);
/* the worker pool: fs_defer() runs fn(arg) on a worker (it replies to its
 * request); without a pool (libfuse's loop), in the caller */
void pool_start(unsigned n);
void fs_defer(void (*fn)(void *), void *arg);
void pool_stop(void); /* after the unmount: io_uring threads may defer until then */
#define fs_count(op) __atomic_add_fetch(&fsd.st.calls[op], 1, __ATOMIC_RELAXED)
void reply_err(fuse_req_t req, enum fs_op op, int err);

/* inode.c: the node table */
void node_init_root(void);
struct node *node_of(fuse_ino_t ino);
uint64_t node_root_ino(const char *name, size_t len);
struct node *upper_lookup(struct fsenv *e, dev_t dev, ino_t ino);
int node_child(struct node *dir, const char *name, size_t len, struct node **out);
void node_ref_lookup(struct node *n, uint64_t count);
void node_forget(struct node *n, uint64_t count);
void node_unref(struct node *n);
void node_unhash(struct node *n);
void node_free(struct node *n);
void node_gone(struct node *n); /* names nothing in its env any more (absorb.c moved it) */
struct node *node_new_root(struct fsenv *e);
void node_rehash_upper(struct node *n);
void node_rehash_named(struct node *n, struct node *parent, const char *name);
int node_stat(struct node *n, struct stat *st);
int node_list(struct node *dir);
void node_list_drop(struct node *dir);
size_t list_seek(const uint64_t *cookies, size_t n, uint64_t off);
int root_list(void);
char *node_path(const struct node *dir, const char *name);
int node_render(struct node *n); /* a template's content in n->rendered */
struct node *upper_node(struct fsenv *e, struct node *dir, const char *name);

/* What to answer when a file of a writable layer could not be opened
 * (errno from openat): out of descriptors, or removed behind our back, as
 * they are; anything else is the layer's fault: EIO. */
static inline int upper_open_errno(void)
{
	return errno == EMFILE || errno == ENFILE || errno == ENOENT ? -errno : -EIO;
}
int upper_stat(struct node *dir, const char *name, struct stat *st);

/* fsenv.c: the envs being served */
void fsenv_put(struct fsenv *e);
struct fsenv *fsenv_get(const char *name, size_t len, int *err);
struct fsenv *fsenv_current(const char *name);
void fsenv_retire(struct fsenv *e);
int fsenv_absorbed(struct fsenv *e, bool (*took)(void *, dev_t, ino_t), void *ctx, char **trash);
bool fsenv_claim(struct fsenv *e);

int fsenv_writable(struct fsenv *e); /* 0, or why e cannot be changed now */
int node_writable(const struct node *n);
void envs_changed(void);

static inline void fsenv_touch(struct fsenv *e)
{
	e->gen++;
}

/* shared.c: serving store files */
#define SHARED_PASSTHROUGH_MIN (256u << 10) /* from this size, opened in passthrough */
int shared_open_object(struct node *n, int *fd_out);
/* After bytes of n's object were read from fd: were they the checked ones? */
bool shared_still_checked(struct node *n, int fd);
bool shared_open(fuse_req_t req, struct node *n, struct fuse_file_info *fi, int *r);
void shared_drop_pages(int fd, off_t off, size_t size);

/* housekeeping.c */
void housekeeping_start(void);
void housekeeping_stop(void);
void fs_wake_housekeeping(void); /* look at descriptor pressure now */
void fd_pressure(bool urgent);
void fd_room(void); /* a job of the daemon's own met EMFILE */
/* the counters, as `venvfs stats` shows them; written to the run directory */
void stats_format(struct buf *b);
void stats_write(void);

/* union.c: the union of an env's layers as the daemon changes it: copy-up,
 * and making, removing and renaming names */
int copy_up_dir(struct node *dir);
int copy_up_node(struct node *n);
int copy_up_shared(struct node *dir, const char *name, struct node *shared, bool empty, struct node **out);
void intent_add(pid_t pid, struct node *n, bool trunc);
bool intent_take(pid_t pid, struct node *n, bool *trunc);
char *dir_lower_path(const struct node *dir);
int union_prepare_new(struct node *dir, const char *name, bool *whiteout);
void union_own(struct node *dir, int dirfd, const char *name, const struct fuse_ctx *ctx);
const char *union_new_at(struct node *dir, const char *name, bool whiteout, char tmp[32], int *dirfd);
int union_place_new(struct node *dir, const char *tmp, const char *name, bool is_dir);
bool union_lower_has(struct node *dir, const char *name);
void union_undo_new(struct node *dir, const char *name);
void union_unhash_name(struct node *dir, const char *name);
int union_remove_dir(struct node *dir, const char *name, struct node *child);
int union_dir_is_empty(struct node *child);
int union_rename(struct node *od, const char *on, struct node *nd, const char *nn, unsigned int flags);
int union_exchange(struct node *od, const char *on, struct node *nd, const char *nn);

/* passthrough.c */
void passthrough_setup(struct fuse_session *se);
bool passthrough_on(void);
uint32_t passthrough_open(int fd);
void passthrough_reply_next(uint32_t id);
void passthrough_close(uint32_t id);
void want_passthrough(struct node *n, struct fuse_file_info *fi);
void drop_passthrough(struct node *n, uint32_t *id, int *fd);
void close_later(int fd, uint32_t backing_id, int backing_fd);
void reply_passthrough(struct fuse_file_info *fi);
void reply_open(fuse_req_t req, int r, struct fuse_file_info *fi);

/* uring.c: FUSE over io_uring, when the kernel offers it */
void uring_ask_offer(void);  /* before the mount */
void uring_offer_done(void); /* once INIT is answered, or the mount failed */
void uring_offered(bool offered);
bool uring_planned(void);
bool uring_accept(int devfd, uint32_t max_write, uint16_t max_pages);
void uring_start(void);
bool uring_on(void);
/* Run fn(arg) (a job that may wait for the disk and replies to its request)
 * on this ring thread if it has nothing else to serve: true if it ran. */
bool uring_run_here(void (*fn)(void *), void *arg);
ssize_t uring_reply(const struct iovec *iov, int count);
/* Run a job that may wait for the disk and replies to its request: on this
 * ring thread if idle (uring_run_here()), else on a worker. */
void run_blocking(void (*fn)(void *), void *arg);
void uring_stop(void); /* after the unmount: the threads */
void uring_free(void); /* after the workers: the memory */

/* control.c */
void control_start(void);
void control_stop(void);
void absorb_dirty_envs(bool unmounting);

#endif
