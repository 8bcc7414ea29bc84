/*
 * layer.h - an env's writable layer (HOME/envs/NAME/upper/) and how it
 * combines with the read-only layers of store/view.h.
 *
 * The writable layer is a directory tree that mirrors the env's paths, in
 * the manner of overlayfs: whatever it holds hides what the read-only
 * layers have under the same name. A few of its entries are markers, told
 * apart by the extended attribute "user.venvfs", only ever read on
 * directories and on empty regular files whose mode is exactly 01400
 * (sticky and owner-readable: rare enough that reading the attribute of
 * such files costs nothing; one without the attribute is an ordinary
 * file, and the mount refuses to set or show "user.venvfs"):
 *
 *   whiteout  empty 01400 file, "w": the name is deleted; the read-only
 *             layers' entry of that name is hidden.
 *   metacopy  empty 01400 file, "m:<object> <size> <sec>.<nsec> <mode>":
 *             a store file moved here without copying its data
 *             (pip renames whole trees while upgrading); it reads as the
 *             object, with that mode and mtime.
 *   opaque    directory, "o": the read-only layers' directory of that name
 *             is hidden (a directory deleted and made again).
 *   redirect  directory, "r:<path>": the read-only part of this directory
 *             is the one at <path> (env-relative), as after renaming a
 *             store directory; "o" and "r:" combine as "o" (opaque wins).
 *
 * Every change to the layer is atomic on its own: new files are made in
 * HOME/envs/NAME/work/ and renamed into place, so a crash never leaves a
 * half-copied file visible.
 */
#ifndef VENVFS_LAYER_H
#define VENVFS_LAYER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "store.h"
#include "view.h"

#define LAYER_XATTR     "user.venvfs"
#define LAYER_MARK_MODE (S_IFREG | 01400)

/* The writable part of one directory. */
struct layer_dir {
	int fd; /* O_RDONLY|O_DIRECTORY, -1 if the directory has none */
	bool opaque;
	char *redirect; /* or NULL */
};

enum layer_kind {
	L_NONE, /* nothing of that name in the writable layer */
	L_WHITEOUT,
	L_DIR,
	L_FILE, /* a real file, symlink, FIFO... of the env */
	L_META, /* metacopy: a store file with its own name/mode/mtime */
};

struct layer_ent {
	enum layer_kind kind;
	struct stat st; /* of the entry in the writable layer */
	/* L_META */
	struct objid obj;
	uint64_t size;
	uint32_t mode; /* presented mode */
	struct timespec mtime;
};

/* Open the writable part of dir entry name below parent (fd) and read its
 * markers. 0 (d->fd -1 if there is none), or -errno. */
int layer_dir_open(int parent_fd, const char *name, struct layer_dir *d);
void layer_dir_close(struct layer_dir *d);

/* What the writable layer holds at name in d. */
int layer_lookup(const struct layer_dir *d, const char *name, struct layer_ent *out);

/* Markers: make a whiteout, a metacopy, mark a directory. */
int layer_whiteout(int dirfd, const char *name, int workfd);
int layer_metacopy(int dirfd, const char *name, int workfd, const struct objid *obj, uint64_t size, uint32_t mode,
		   const struct timespec *mtime);
int layer_set_dir(int fd, bool opaque, const char *redirect);

/*
 * A merged directory: the writable part plus the read-only sources.
 * layer_merge_lookup() is THE union rule, used by the daemon, export and
 * absorb alike:
 *   1. the writable layer's entry wins; a whiteout means "not there";
 *   2. otherwise (and unless the directory is opaque) the read-only
 *      layers answer as in view.h;
 *   3. a directory in the writable layer merges with the read-only
 *      directory of the same name (or of its redirect), unless opaque.
 */
struct merged {
	enum layer_kind upper; /* what the writable layer has (L_NONE...) */
	struct layer_ent ent;  /* if upper != L_NONE */
	bool lower;            /* the read-only layers have it, and it shows */
	struct view_src src;   /* if lower */
};

int layer_merge_lookup(struct view *v, const struct layer_dir *ld, const struct view_dir *vd, const char *name,
		       struct merged *out);

/* Does the name show anything (not whited out, not absent)? */
static inline bool layer_merged_shows(const struct merged *m)
{
	return m->upper != L_WHITEOUT && (m->upper != L_NONE || m->lower);
}

/* The read-only sources of the directory at an env-relative path. */
void layer_lower_dir_at(struct view *v, const char *path, struct view_dir *out);

/* Merged listing of a directory: names (sorted, unique) that show. */
struct merged_name {
	char *name;
	bool upper; /* comes from the writable layer */
};
int layer_merge_list(struct view *v, const struct layer_dir *ld, const struct view_dir *vd, struct merged_name **out,
		     size_t *n);
void layer_merge_list_free(struct merged_name *l, size_t n);

/* The read-only sources of a child directory, given the parent's and the
 * child's own writable part (opaque: none; redirect: from there). */
void layer_child_lower(struct view *v, const struct view_dir *parent, const char *name, const struct layer_dir *child,
		       struct view_dir *out);

/* Objects that metacopies in an env's writable layer refer to (for gc). */
int layer_mark_objects(int upper_fd, struct strmap *objects);

#endif
