/*
 * view.h - an environment as one directory tree, composed from its layers.
 *
 * An env is shown as the union of:
 *
 *   layer 0       the env tree: pyvenv.cfg, bin/activate, bin/python,
 *                 files that belong to no package;
 *   layers 1..n   its packages, the last-listed package first: each has
 *                 an env-root part (bin/, include/ ...) and a site-packages
 *                 part, mounted at lib/pythonX.Y/site-packages;
 *
 * with the writable upper layer (layer.h) on top of all of them. This file
 * answers, for the read-only layers, "what is at this name in this
 * directory" and "what does this directory list", without building
 * anything per file: every answer is a binary search or a merge over the
 * mapped trees. The daemon (fs/) keeps a struct view_dir per directory
 * inode; export walks the same functions.
 *
 * Union rules: the first layer (in priority order) that has a name decides
 * what it is. If that is a directory, the directories of that name in all
 * layers merge; non-directories of that name in lower layers are hidden.
 */
#ifndef VENVFS_VIEW_H
#define VENVFS_VIEW_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "env.h"
#include "store.h"
#include "tree.h"

/*
 * Where a view gets its trees: by default each is mapped from the store;
 * the daemon shares one copy of each manifest among all the envs using it.
 */
struct view_trees {
	int (*get)(void *ctx, const struct objid *id, const char *what, struct tree **out);
	void (*put)(void *ctx, struct tree *t);
	void *ctx;
};

/*
 * The default get: map the manifest from the store ("what" names it); or
 * read it into memory (view_read_tree(): no page-ins later, the daemon's).
 * Another account's manifest in a group store is read into memory and
 * checked against its name: its own checksum proves nothing against its
 * owner, who could put another valid manifest in its place.
 */
int view_map_tree(struct store *s, const struct objid *id, const char *what, struct tree **out);
int view_read_tree(struct store *s, const struct objid *id, const char *what, struct tree **out);

struct view_layer {
	struct tree *tree;
	const struct env_pkg *pkg; /* NULL for the env tree */
	char *what;                /* for messages: "package numpy 2.1.0" */
	int64_t *orig_mtimes;      /* export: per node original mtime, or NULL */
};

struct view {
	struct store *s;
	struct env *env;
	char *site_dir;     /* "lib/python3.11/site-packages" */
	char *site_part[3]; /* its components */
	struct view_layer *layers;
	uint16_t n_layers;
	struct view_trees trees;
};

/* A position in a read-only layer. */
struct view_src {
	uint16_t layer;
	uint32_t node;
};

/* The read-only sources of one directory, highest priority first. */
struct view_dir {
	struct view_src *src;
	uint32_t n;
	int8_t site_depth; /* components of site_dir matched so far; -1: off the path */
};

struct view_ent {
	const char *name;
	uint16_t name_len;
	struct view_src top; /* the source that decides the entry */
};

/*
 * Load the env's trees (trees NULL: map them). A missing or damaged
 * package manifest is an error (EIO, naming it): leaving the package out
 * would make its files vanish, and tools take a vanished package for one
 * not installed.
 */
int view_open(struct store *s, struct env *env, const struct view_trees *trees, struct view **out);
void view_free(struct view *v);

static inline const struct tree_node *view_node(const struct view *v, struct view_src s)
{
	return tree_node(v->layers[s.layer].tree, s.node);
}

static inline const char *view_name(const struct view *v, struct view_src s)
{
	return tree_name(v->layers[s.layer].tree, view_node(v, s));
}

void view_root(struct view *v, struct view_dir *out);
void view_dir_free(struct view_dir *d);
void view_dir_copy(struct view_dir *dst, const struct view_dir *src);

/* Lookup: true and *top if some layer has name. */
bool view_lookup(struct view *v, const struct view_dir *d, const char *name, size_t len, struct view_src *top);

/* The merged sources of the child directory name (which must be a dir). */
void view_child_dir(struct view *v, const struct view_dir *d, const char *name, size_t len, struct view_dir *out);

/* Merged listing, sorted by name; free *out with free(). */
int view_list(struct view *v, const struct view_dir *d, struct view_ent **out, size_t *n);

/* Newest mtime over the directory's sources (a listing change shows). */
void view_dir_mtime(struct view *v, const struct view_dir *d, struct timespec *out);

/*
 * Render the template at src for an env shown at env_path (env_real: its
 * realpath, NULL if the same).
 */
int view_render(struct view *v, struct view_src src, const char *env_path, const char *env_real, struct buf *out);

/* Export: load the original mtimes of package files (env "mtimes"). */
int view_load_orig_mtimes(struct view *v);
/* The time a node had in the imported venv (package nodes: if known). */
int64_t view_orig_mtime(const struct view *v, struct view_src src);

/* mtimes object: the original mtimes of package nodes, run-length coded. */
void view_mtimes_encode_begin(struct buf *out, uint32_t n_pkgs);
void view_mtimes_encode_pkg(struct buf *out, const int64_t *mtimes, uint32_t n);

#endif
