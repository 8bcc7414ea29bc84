/*
 * env.h - environments: the small description of one venv.
 *
 *   HOME/envs/NAME/env      the manifest (text, below), replaced atomically
 *   HOME/envs/NAME/upper/   the env's writable layer (files of its own
 *                           written through the mount); absorb replaces
 *                           it with a new one, upper-XXXX/, named by the
 *                           manifest's "upper" line
 *   HOME/envs/NAME/work/    scratch space for copy-up, same file system
 *
 * The manifest is line-oriented text, one "key value" per line, values
 * %-escaped (util.h text_escape) so any byte but NUL survives:
 *
 *   venvfs-env 2
 *   name web
 *   uid 5f0c3a0e9d1b2c44          random, fixed for life: inode numbers
 *   python.home /usr/bin
 *   python.executable /usr/bin/python3.11
 *   python.version 3.11.7
 *   system-site-packages false
 *   prompt web                    optional ("--prompt")
 *   origin /home/me/proj/.venv    optional: where it was imported from
 *   created 1763712000
 *   tree <objid>                  env tree (tree.h): files in no package
 *   mtimes <objid>                optional: original times of package files
 *   upper upper-5f0c3a0e          optional: the writable layer's directory
 *                                 (default "upper")
 *   package <objid> <name> <version>
 *   ...
 *   end <xxh3-64>                 of every byte before this line, in hex;
 *                                 last (version 1 manifests have none)
 *
 * Packages listed later take precedence over earlier ones where two ship
 * the same path (pip's "last installed wins"); the env tree takes
 * precedence over all packages, the upper layer over everything.
 *
 * Nothing under HOME/envs is ever followed through a symbolic link (util.h
 * openat_beneath()): an env directory, its manifest, views, work or
 * layer directory made a symlink is damage, named in the error, never a
 * way out of the store.
 *
 * Env directories appear and disappear atomically: a new env is built as
 * envs/.new-NAME-RANDOM and renamed into place; a removed one is renamed to
 * envs/.trash-NAME-RANDOM before it is deleted. Names starting with "."
 * are never envs.
 */
#ifndef VENVFS_ENV_H
#define VENVFS_ENV_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

struct env_pkg {
	struct objid id;
	char *name; /* PEP 503 normalised */
	char *version;
};

struct env {
	char *name;
	uint64_t uid;
	char *python_home;       /* directory of the base interpreter */
	char *python_executable; /* base interpreter */
	char *python_version;    /* "3.11.7" */
	bool system_site_packages;
	char *prompt; /* NULL: the directory name */
	char *origin; /* imported from, or NULL */
	int64_t created;
	struct objid tree;
	bool has_mtimes;
	struct objid mtimes;
	char *upper; /* writable layer directory, NULL: "upper" */
	struct env_pkg *pkgs;
	size_t n_pkgs;
};

/* Is name acceptable for an env ([A-Za-z0-9._+-], not starting with '.')? */
bool env_valid_name(const char *name);

int env_load(struct store *s, const char *name, struct env **out);
/* The same from the env's directory env_fd (name: what it is called). */
int env_load_at(struct store *s, int env_fd, const char *name, struct env **out);
int env_parse(const char *text, size_t len, const char *what, struct env **out);
void env_format(const struct env *e, struct buf *out);
void env_free(struct env *e);
void env_add_package(struct env *e, const struct objid *id, const char *name, const char *version);

/* The name of the env's writable layer directory in HOME/envs/NAME/. */
const char *env_upper(const struct env *e);

/* "lib/python3.11/site-packages" for this env's Python. */
char *env_site_dir(const struct env *e);
/* "3.11" from "3.11.7" */
char *env_python_xy(const struct env *e);

/*
 * Everything under HOME/envs/NAME/ is named here, and only here: the
 * manifest ("env"), the views file, the work directory, layer directories
 * ("upper", "upper-XXXXXXXX") and their trash (".trash-upper-..."), and the
 * temporary env directories of envs/ (".new-", ".trash-", ".clone-").
 * env_fd is the env's directory (openat_beneath(s->envs_fd, NAME)).
 */

/* The paths mounts showed an env at (envs/NAME/views, one a line, as the
 * daemon records them): a script rendered for one of them is a template.
 * Never through a symlink. */
void env_views(int env_fd, char ***views, size_t *n);
/* Record that the env was shown at path (once); 0 or -errno with a message
 * naming the file (where: "HOME/envs/NAME", for messages). */
int env_views_add(int env_fd, const char *where, const char *path);

/* envs/NAME/work/, made (0700) if missing, open; never through a symlink.
 * A descriptor or -errno with a message (where: "HOME/envs/NAME"). */
int env_work_open(int env_fd, const char *where);

/* The identity of envs/NAME/env, never through a symlink: 0, -ENOENT, or
 * another -errno with a message (where: "HOME/envs/NAME"). */
int env_manifest_stat(int env_fd, const char *where, struct stat *st);
/* Its bytes. */
int env_manifest_read(int env_fd, struct buf *out);

/* A new writable layer's directory name ("upper-XXXXXXXX"). */
char *env_layer_new_name(void);
/* Is this entry of envs/NAME a layer directory, or a layer moved aside? */
bool env_is_layer_name(const char *entry, bool *trash);
/* Move layer directory layer of env name aside (envs/NAME/.trash-LAYER):
 * the path relative to envs/ to delete it by (rm_rf_at(s->envs_fd, ...)),
 * or NULL if it could not be moved. */
char *env_layer_trash(struct store *s, const char *name, const char *layer);
/* Is this entry of envs/NAME one the store layout makes? */
bool env_is_own_entry(const char *entry);

/* A temporary directory name in envs/ for env name: kind "new" (being
 * installed), "trash" (being removed), "clone" (being cloned). */
char *env_tmp_name(const char *kind, const char *name);
/* Is this entry of envs/ such a temporary directory? */
bool env_is_tmp_name(const char *entry);

/* Sorted names of all envs. */
int env_list(struct store *s, char ***names, size_t *n);
void env_list_free(char **names, size_t n);

/*
 * Install e as envs/<e->name>, atomically, without waiting for the disk
 * (env_make_durable). If an env of that name exists: with replace, it is
 * swapped out and deleted (its upper layer with it), the new one durable
 * first; without, -EEXIST, unless it is torn (env_torn), which is replaced.
 * If upper_from is given, that directory becomes the new env's upper layer
 * (it is renamed, so it must be on the store's fs).
 */
int env_install(struct store *s, const struct env *e, bool replace, const char *upper_from);

/* fsync the env's manifest, its directory and envs/: what the first fsync
 * into an env waits for. Returns 0 or -errno. */
int env_make_durable(struct store *s, const char *name);

/*
 * A manifest with no end line (empty, zeros, cut short: what a crash soon
 * after a create can leave) in an env holding nothing else but empty layer
 * and work directories. Such an env never held anything of its own: create
 * replaces it, gc removes it.
 */
bool env_torn(struct store *s, const char *name);

/* Does the env's writable layer hold anything (but a uv .lock)? */
bool env_has_layer_content(struct store *s, const struct env *e);

/*
 * Rewrite the manifest of the env whose directory env_fd is (atomically).
 * By descriptor, never by name: an env removed and created again under
 * the same name while an absorb prepared is not the env it prepared.
 */
int env_save_at(int env_fd, const struct env *e);

/* The name the manifest of envs/NAME gives itself (malloc'd): `store
 * verify` tells an env directory renamed by hand. */
int env_manifest_name(struct store *s, const char *name, char **out);

int env_remove(struct store *s, const char *name);

/*
 * Rename env from as to: its directory first (atomic, never over an
 * existing env), then its manifest's name. The directory is the env (a
 * crash between the two leaves a name `store verify` reports, nothing
 * else). Refused (-EBUSY) while either name's env lock is held: a daemon
 * serving it, or an absorb.
 */
int env_rename(struct store *s, const char *from, const char *to);

bool env_exists(struct store *s, const char *name);

/*
 * The directory of a store's running daemons (pid files, control sockets,
 * counters) and env locks: HOME/run, made if missing and never followed
 * through a symlink. A store on a read-only file system has none: its
 * daemon's files go to a directory of the user's
 * (util.h user_runtime_dir_open(), "store-<XXH3-64 of HOME>"), where
 * `venvfs umount` and `stats` find them too. An fd and, with path, its
 * path (malloc'd); or a negative errno with a message.
 */
int store_run_open(struct store *s, char **path);

/*
 * The env's lock (HOME/run/env-NAME.lock), held by whoever may change its
 * writable layer: the daemon serving it, or absorb when no daemon does.
 * Returns a descriptor (close it to release) or -EWOULDBLOCK; -EROFS on
 * a read-only store (nobody may change it). The lock is never reached
 * through a symlink (run/ or the lock file itself one: -EIO, named).
 */
int env_lock(struct store *s, const char *name);

/*
 * Delete writable layers of env name that its manifest no longer names
 * (left by an absorb that crashed, before or after its switch). Only the
 * holder of the env lock may.
 */
void env_sweep_layers(struct store *s, const char *name);

#endif
