/*
 * tree.h - tree manifests: the immutable, mmap-able description of a file
 * tree. One format serves two uses:
 *
 *   - a package (TREE_PACKAGE): one installed distribution. Two roots:
 *     node 0 is the env root (bin/, include/, share/ ...), node 1 is the
 *     env's site-packages directory, so a package does not depend on the
 *     lib/pythonX.Y path of the env that first held it;
 *   - an env tree (TREE_ENV): the files of one environment that are not in
 *     any package (pyvenv.cfg, bin/activate, bin/python, egg-info installs,
 *     user files). One root: the env root.
 *
 * On-disk layout (little-endian, every offset from the start of the file):
 *
 *   struct tree_hdr                 128 bytes
 *   struct tree_node[n_nodes]       64 bytes each
 *   string table                    names, symlink targets, header strings
 *
 * Nodes are ordered so that the children of every directory are contiguous
 * and sorted by name (bytewise): roots first, then breadth-first. A lookup
 * in a directory is a binary search over its child range, a listing is a
 * walk over it, and nothing needs to be built in memory to use a tree: the
 * daemon maps the file and answers from the mapping. A checksum (XXH3-64)
 * covers the whole manifest; tree_load() checks it and every
 * offset and index, so a damaged manifest is rejected, never followed.
 *
 * Regular files name their content by object id. Files flagged
 * TREE_F_TEMPLATE name a template (template.h) rendered per env path.
 * Package trees record modes, and times only where bytecode needs them:
 * every file and directory of a package presents mtime TREE_STORE_MTIME,
 * and imported bytecode was normalised to agree with it (package.h),
 * except a source whose bytecode was kept as its installer wrote it
 * (TREE_F_PYC_KEPT, absorb): it presents the mtime that bytecode names.
 * Env trees record real times.
 */
#ifndef VENVFS_TREE_H
#define VENVFS_TREE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "store.h"
#include "util.h"

#define TREE_MAGIC "VFSTREE1"
#define TREE_NONE  UINT32_MAX

/* mtime presented for every store-backed file: 2020-01-01T00:00:00Z */
#define TREE_STORE_MTIME 1577836800

enum tree_kind {
	TREE_PACKAGE = 1,
	TREE_ENV = 2,
};

enum tree_root {
	TREE_ROOT_ENV = 0,  /* the env's root directory */
	TREE_ROOT_SITE = 1, /* the env's site-packages (packages only) */
};

enum tree_node_flags {
	TREE_F_TEMPLATE = 1 << 0, /* content is a template object, rendered per env */
	TREE_F_PYC_NORM = 1 << 1, /* pyc whose header mtime was set to TREE_STORE_MTIME */
	TREE_F_PYC_KEPT = 1 << 2, /* pyc as installed, valid for the mtime its source presents */
};

/* Header strings (package metadata), each {offset, length} in the strtab. */
enum tree_str {
	TREE_STR_NAME,            /* normalised distribution name */
	TREE_STR_VERSION,         /* version as in METADATA */
	TREE_STR_DIST_INFO,       /* the *.dist-info directory name */
	TREE_STR_TAGS,            /* WHEEL "Tag:" values, space-separated */
	TREE_STR_REQUIRES,        /* METADATA Requires-Dist values, newline-separated */
	TREE_STR_REQUIRES_PYTHON, /* METADATA Requires-Python */
	TREE_STR_COUNT
};

struct tree_strref {
	uint32_t off;
	uint32_t len;
};

struct tree_hdr {
	char magic[8];        /* TREE_MAGIC */
	uint32_t kind;        /* enum tree_kind */
	uint32_t n_nodes;     /* number of nodes, roots included */
	uint32_t n_roots;     /* 2 for packages, 1 for env trees */
	uint32_t flags;       /* reserved, 0 */
	uint64_t nodes_off;   /* offset of the node array (128) */
	uint64_t strtab_off;  /* offset of the string table */
	uint64_t strtab_len;  /* its length */
	uint64_t total_bytes; /* sum of the sizes of regular files */
	uint64_t n_files;     /* number of regular files */
	struct tree_strref str[TREE_STR_COUNT];
	uint64_t checksum; /* XXH3-64 of the manifest, this field as 0 */
	uint64_t reserved;
};

struct tree_node {
	uint32_t name_off; /* name in the string table (roots: empty) */
	uint16_t name_len; /* 1..255 */
	uint16_t flags;    /* enum tree_node_flags */
	uint32_t mode;     /* st_mode, file type included */
	uint32_t parent;   /* index of the parent directory; a root is its own */
	uint64_t size;     /* regular: content size; template: 0 (rendered); symlink: target length */
	int64_t mtime_sec; /* modification time (in packages: see above) */
	uint32_t mtime_nsec;
	union {
		struct {
			uint32_t first_child; /* index of the first child */
			uint32_t n_children;  /* children are [first, first + n) */
		} dir;
		struct {
			uint32_t off; /* symlink target in the string table */
			uint32_t len;
		} link;
		struct {
			uint32_t major; /* device numbers of char/block nodes */
			uint32_t minor;
		} dev;
	} u;
	uint32_t obj_seq; /* regular files: object id (hash, seq) */
	uint8_t obj_hash[16];
};

_Static_assert(sizeof(struct tree_hdr) == 128, "tree_hdr is 128 bytes");
_Static_assert(sizeof(struct tree_node) == 64, "tree_node is 64 bytes");

/* Reading ------------------------------------------------------------------ */

struct tree {
	const uint8_t *base; /* the whole manifest */
	size_t len;
	void *map;   /* munmap()ed by tree_free if set */
	void *owned; /* free()d by tree_free if set */
	const struct tree_hdr *hdr;
	const struct tree_node *nodes;
	const char *strtab;
	uint32_t n;
};

/* XXH3-64 of a whole manifest (len >= the header) with its checksum field
 * taken as zero: what the header's checksum holds. */
uint64_t tree_checksum(const void *data, size_t len);

/* Validate a manifest held in memory; with copy, the tree owns a copy. */
int tree_load(const void *data, size_t len, bool copy, struct tree **out);
/* Map and validate a manifest from an open file ("what" names it in errors). */
int tree_map_fd(int fd, const char *what, struct tree **out);
/* The same, read into memory (stays resident: no page-ins later). */
int tree_read_fd(int fd, const char *what, struct tree **out);
void tree_free(struct tree *t);

/*
 * A manifest's header and header strings alone, in two reads whatever the
 * package's size: what choosing among packages needs (compose.c). The
 * checksum covers the whole file and is not checked; whatever goes on to
 * use the nodes loads the manifest with tree_map_fd(), which checks it.
 */
struct tree_head {
	struct tree_hdr hdr;
	char *str[TREE_STR_COUNT]; /* NUL-terminated copies */
};
int tree_read_head(int fd, const char *what, struct tree_head *out);
void tree_head_free(struct tree_head *h);

static inline const struct tree_node *tree_node(const struct tree *t, uint32_t i)
{
	return &t->nodes[i];
}

static inline const char *tree_name(const struct tree *t, const struct tree_node *n)
{
	return t->strtab + n->name_off;
}

static inline const char *tree_link_target(const struct tree *t, const struct tree_node *n)
{
	return t->strtab + n->u.link.off;
}

static inline void tree_node_objid(const struct tree_node *n, struct objid *id)
{
	memcpy(id->hash, n->obj_hash, 16);
	id->seq = n->obj_seq;
}

/* A header string (not NUL-terminated); *len is set. */
const char *tree_str(const struct tree *t, enum tree_str which, size_t *len);
/* The same, as a malloc'd NUL-terminated copy. */
char *tree_strdup(const struct tree *t, enum tree_str which);

/* The child of dir called name, or TREE_NONE. */
uint32_t tree_lookup(const struct tree *t, uint32_t dir, const char *name, size_t len);
/* Resolve a '/'-separated path below a root (""/"." is the root itself). */
uint32_t tree_lookup_path(const struct tree *t, uint32_t root, const char *path, size_t len);
/* The path of node i relative to its root; returns the root index. */
uint32_t tree_path(const struct tree *t, uint32_t i, struct buf *out);

/* Building ----------------------------------------------------------------- */

struct tree_entry {
	uint32_t mode;  /* st_mode with type */
	uint16_t flags; /* enum tree_node_flags */
	uint64_t size;  /* regular files: content size */
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	struct objid obj;   /* regular files */
	const char *target; /* symlinks */
	size_t target_len;
	uint32_t dev_major, dev_minor;
};

struct tree_builder;

struct tree_builder *tree_builder_new(enum tree_kind kind);
void tree_builder_free(struct tree_builder *tb);

/*
 * Add an entry at path (relative to root, '/'-separated). Missing parent
 * directories are created with mode 0755 and mtime TREE_STORE_MTIME; adding
 * a directory that exists only implicitly sets its attributes. Adding over
 * an existing non-directory fails with -EEXIST.
 */
int tree_builder_add(struct tree_builder *tb, unsigned root, const char *path, size_t len, const struct tree_entry *e);
/* Attributes of directories created implicitly from now on. */
void tree_builder_set_dir_defaults(struct tree_builder *tb, uint32_t mode, int64_t mtime);
void tree_builder_set_str(struct tree_builder *tb, enum tree_str which, const char *s, size_t len);
/* Is there an entry at path? (directories included) */
bool tree_builder_has(struct tree_builder *tb, unsigned root, const char *path, size_t len);
/* Serialise: canonical bytes (same input, same bytes, same id). */
int tree_builder_finish(struct tree_builder *tb, struct buf *out);

/* Is a path component acceptable in a tree ('/', NUL, ".", ".." are not)? */
bool tree_valid_name(const char *name, size_t len);

#endif
