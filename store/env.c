/*
 * env.c - environment manifests and env directories (see env.h).
 */
#include "env.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <xxhash.h>

/* The names of what envs/NAME/ holds (env.h: made here only). */
#define MANIFEST_FILE "env"
#define VIEWS_FILE    "views"
#define WORK_DIR      "work"
#define LAYER_DEFAULT "upper" /* and "upper-XXXXXXXX" after an absorb */

#define ENV_HEADER "venvfs-env 2"
/* written before the end line existed, always fsynced before its name was */
#define ENV_HEADER_V1 "venvfs-env 1"
#define ENV_END       "end "
#define ENV_END_LEN   (sizeof(ENV_END) - 1 + 16 + 1) /* "end " + 16 hex + '\n' */

bool env_valid_name(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 128 || name[0] == '.' || name[0] == '-')
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
		      *p == '_' || *p == '-' || *p == '+'))
			return false;
	return true;
}

void env_free(struct env *e)
{
	if (!e)
		return;
	free(e->name);
	free(e->python_home);
	free(e->python_executable);
	free(e->python_version);
	free(e->prompt);
	free(e->origin);
	free(e->upper);
	for (size_t i = 0; i < e->n_pkgs; i++) {
		free(e->pkgs[i].name);
		free(e->pkgs[i].version);
	}
	free(e->pkgs);
	free(e);
}

void env_add_package(struct env *e, const struct objid *id, const char *name, const char *version)
{
	e->pkgs = xrealloc(e->pkgs, (e->n_pkgs + 1) * sizeof(*e->pkgs));
	struct env_pkg *p = &e->pkgs[e->n_pkgs++];
	p->id = *id;
	p->name = xstrdup(name);
	p->version = xstrdup(version);
}

static void put_kv(struct buf *b, const char *key, const char *value)
{
	_cleanup_free_ char *v = text_escape(value, strlen(value));

	buf_printf(b, "%s %s\n", key, v);
}

void env_format(const struct env *e, struct buf *b)
{
	char id[OBJID_STR_MAX];

	buf_reset(b);
	buf_printf(b, "%s\n", ENV_HEADER);
	put_kv(b, "name", e->name);
	buf_printf(b, "uid %016" PRIx64 "\n", e->uid);
	put_kv(b, "python.home", e->python_home ? e->python_home : "");
	put_kv(b, "python.executable", e->python_executable ? e->python_executable : "");
	put_kv(b, "python.version", e->python_version ? e->python_version : "");
	buf_printf(b, "system-site-packages %s\n", e->system_site_packages ? "true" : "false");
	if (e->prompt)
		put_kv(b, "prompt", e->prompt);
	if (e->origin)
		put_kv(b, "origin", e->origin);
	buf_printf(b, "created %" PRId64 "\n", e->created);
	objid_format(&e->tree, id);
	buf_printf(b, "tree %s\n", id);
	if (e->has_mtimes) {
		objid_format(&e->mtimes, id);
		buf_printf(b, "mtimes %s\n", id);
	}
	if (e->upper && strcmp(e->upper, LAYER_DEFAULT))
		put_kv(b, "upper", e->upper);
	for (size_t i = 0; i < e->n_pkgs; i++) {
		_cleanup_free_ char *n = text_escape(e->pkgs[i].name, strlen(e->pkgs[i].name));
		_cleanup_free_ char *v = text_escape(e->pkgs[i].version, strlen(e->pkgs[i].version));
		objid_format(&e->pkgs[i].id, id);
		buf_printf(b, "package %s %s %s\n", id, n, v);
	}
	buf_printf(b, ENV_END "%016" PRIx64 "\n", (uint64_t)XXH3_64bits(b->data, b->len));
}

static bool version_1(const char *text, size_t len)
{
	return len >= sizeof(ENV_HEADER_V1) && !memcmp(text, ENV_HEADER_V1 "\n", sizeof(ENV_HEADER_V1));
}

/*
 * The end line of a version 2 manifest: 1 if text ends with it and its
 * checksum of everything before it holds (*body: the length before it),
 * 0 if there is none (empty, zeros, a manifest cut short), -1 if there is
 * one and the checksum fails (damage after the fact).
 */
static int manifest_end(const char *text, size_t len, size_t *body)
{
	char want[17];

	if (len < ENV_END_LEN || (len > ENV_END_LEN && text[len - ENV_END_LEN - 1] != '\n') ||
	    memcmp(text + len - ENV_END_LEN, ENV_END, sizeof(ENV_END) - 1) || text[len - 1] != '\n')
		return 0;
	*body = len - ENV_END_LEN;
	snprintf(want, sizeof(want), "%016" PRIx64, (uint64_t)XXH3_64bits(text, *body));
	return memcmp(text + *body + sizeof(ENV_END) - 1, want, 16) ? -1 : 1;
}

int env_parse(const char *text, size_t len, const char *what, struct env **out)
{
	struct env *e = xcalloc(1, sizeof(*e));
	_cleanup_buf_ struct buf val = {0};
	const char *p = text, *end = text + len;
	unsigned line = 0;
	bool have_tree = false;
	size_t body;
	int r = 0;

	if (!version_1(text, len)) {
		switch (manifest_end(text, len, &body)) {
		case 0:
			r = vf_error(EIO,
				     "%s: incomplete env manifest, no end line (cut short by a crash "
				     "before it reached the disk?)",
				     what);
			goto fail;
		case -1:
			r = vf_error(EIO, "%s: damaged env manifest: its checksum does not match", what);
			goto fail;
		}
		end = text + body;
	}
	/* values are %-escaped: a NUL is damage, and would end its line early */
	if (memchr(text, '\0', (size_t)(end - text))) {
		r = vf_error(EIO, "%s: damaged env manifest: a NUL byte", what);
		goto fail;
	}
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		_cleanup_free_ char *l = xstrndup(p, (size_t)(le - p));
		line++;
		p = nl ? nl + 1 : end;
		if (line == 1) {
			if (strcmp(l, ENV_HEADER) && strcmp(l, ENV_HEADER_V1)) {
				r = vf_error(EIO, "%s:1: not a venvfs env manifest", what);
				goto fail;
			}
			continue;
		}
		if (!l[0] || l[0] == '#')
			continue;
		char *sp = strchr(l, ' ');
		if (!sp) {
			r = vf_error(EIO, "%s:%u: malformed line", what, line);
			goto fail;
		}
		*sp = '\0';
		const char *key = l, *raw = sp + 1;
		if (!strcmp(key, "package")) {
			char *f[3] = {0};
			f[0] = (char *)raw;
			f[1] = f[0] ? strchr(f[0], ' ') : NULL;
			if (f[1])
				*f[1]++ = '\0';
			f[2] = f[1] ? strchr(f[1], ' ') : NULL;
			if (f[2])
				*f[2]++ = '\0';
			struct objid id;
			_cleanup_buf_ struct buf n = {0}, v = {0};
			if (!f[2] || objid_parse(f[0], strlen(f[0]), &id) < 0 || text_unescape(f[1], &n) < 0 ||
			    text_unescape(f[2], &v) < 0) {
				r = vf_error(EIO, "%s:%u: malformed package line", what, line);
				goto fail;
			}
			env_add_package(e, &id, n.data, v.data);
			continue;
		}
		if (text_unescape(raw, &val) < 0) {
			r = vf_error(EIO, "%s:%u: bad escape", what, line);
			goto fail;
		}
		if (!strcmp(key, "name")) {
			free(e->name);
			e->name = xstrdup(val.data);
		} else if (!strcmp(key, "uid")) {
			e->uid = strtoull(val.data, NULL, 16);
		} else if (!strcmp(key, "python.home")) {
			free(e->python_home);
			e->python_home = xstrdup(val.data);
		} else if (!strcmp(key, "python.executable")) {
			free(e->python_executable);
			e->python_executable = xstrdup(val.data);
		} else if (!strcmp(key, "python.version")) {
			free(e->python_version);
			e->python_version = xstrdup(val.data);
		} else if (!strcmp(key, "system-site-packages")) {
			e->system_site_packages = !strcmp(val.data, "true");
		} else if (!strcmp(key, "prompt")) {
			free(e->prompt);
			e->prompt = xstrdup(val.data);
		} else if (!strcmp(key, "origin")) {
			free(e->origin);
			e->origin = xstrdup(val.data);
		} else if (!strcmp(key, "upper")) {
			if (!str_has_prefix(val.data, LAYER_DEFAULT) || strchr(val.data, '/')) {
				r = vf_error(EIO, "%s:%u: bad writable layer name", what, line);
				goto fail;
			}
			free(e->upper);
			e->upper = xstrdup(val.data);
		} else if (!strcmp(key, "created")) {
			e->created = strtoll(val.data, NULL, 10);
		} else if (!strcmp(key, "tree") || !strcmp(key, "mtimes")) {
			struct objid id;
			if (objid_parse(val.data, val.len, &id) < 0) {
				r = vf_error(EIO, "%s:%u: bad object id", what, line);
				goto fail;
			}
			if (key[0] == 't') {
				e->tree = id;
				have_tree = true;
			} else {
				e->mtimes = id;
				e->has_mtimes = true;
			}
		}
		/* unknown keys are ignored: newer writers may add some */
	}
	if (line == 0 || !e->name || !have_tree || !e->python_version) {
		r = vf_error(EIO, "%s: incomplete env manifest", what);
		goto fail;
	}
	if (!env_valid_name(e->name)) {
		r = vf_error(EIO, "%s: damaged env manifest: its name is not a valid env name", what);
		goto fail;
	}
	*out = e;
	return 0;
fail:
	env_free(e);
	return r;
}

/* envs/NAME/env read from at/path (where: at's name in messages), never
 * through a symlink: parsed, and named after its directory */
static int load_from(struct store *s, int at, const char *where, const char *path, const char *name, struct env **out)
{
	_cleanup_buf_ struct buf text = {0};
	int r;

	if (!env_valid_name(name))
		return vf_error(EINVAL, "%s: not a valid env name", name);
	r = read_file_beneath(at, where, path, 1 << 24, &text);
	if (r == -ENOENT)
		return vf_error(ENOENT, "no env named %s in %s", name, s->home);
	if (r < 0)
		return vf_error_prefix(-r, "env %s: ", name);
	_cleanup_free_ char *what = xasprintf("%s/envs/%s/" MANIFEST_FILE, s->home, name);
	r = env_parse(text.data, text.len, what, out);
	if (r == 0 && strcmp((*out)->name, name)) {
		/* moved by hand: the directory is the env, whatever its
		 * manifest says (every write goes to the directory it was
		 * read from; `store verify` reports the mismatch) */
		free((*out)->name);
		(*out)->name = xstrdup(name);
	}
	return r;
}

int env_load(struct store *s, const char *name, struct env **out)
{
	_cleanup_free_ char *path = xasprintf("%s/" MANIFEST_FILE, name);
	_cleanup_free_ char *where = path_join(s->home, "envs");

	return load_from(s, s->envs_fd, where, path, name, out);
}

int env_load_at(struct store *s, int env_fd, const char *name, struct env **out)
{
	_cleanup_free_ char *where = xasprintf("%s/envs/%s", s->home, name);

	return load_from(s, env_fd, where, MANIFEST_FILE, name, out);
}

int env_manifest_name(struct store *s, const char *name, char **out)
{
	_cleanup_buf_ struct buf text = {0};
	_cleanup_free_ char *path = xasprintf("%s/" MANIFEST_FILE, name);
	_cleanup_free_ char *what = xasprintf("%s/envs/%s/" MANIFEST_FILE, s->home, name);
	_cleanup_free_ char *where = path_join(s->home, "envs");
	struct env *e;
	int r = read_file_beneath(s->envs_fd, where, path, 1 << 24, &text);

	if (r < 0)
		return r;
	r = env_parse(text.data, text.len, what, &e);
	if (r < 0)
		return r;
	*out = steal_pointer(&e->name);
	env_free(e);
	return 0;
}

/* Whether envs/PATH holds an entry but except (NULL: none); -1 if it cannot be read. */
static int holds_entries(struct store *s, const char *path, const char *except)
{
	DIR *d = opendir_beneath(s->envs_fd, path);
	struct dirent *de;
	int any = 0;

	if (!d)
		return -1;
	while (!any && (de = readdir(d)))
		any = strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && !(except && !strcmp(de->d_name, except));
	closedir(d);
	return any;
}

/* Nothing in envs/NAME but its manifest and empty layer and work directories. */
static bool holds_nothing_of_its_own(struct store *s, const char *name)
{
	DIR *d = opendir_beneath(s->envs_fd, name);
	struct dirent *de;
	bool empty = d != NULL;

	while (empty && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || !strcmp(de->d_name, MANIFEST_FILE))
			continue;
		_cleanup_free_ char *sub = xasprintf("%s/%s", name, de->d_name);
		empty = (!strcmp(de->d_name, WORK_DIR) || str_has_prefix(de->d_name, LAYER_DEFAULT)) &&
			holds_entries(s, sub, NULL) == 0;
	}
	if (d)
		closedir(d);
	return empty;
}

bool env_torn(struct store *s, const char *name)
{
	_cleanup_buf_ struct buf text = {0};
	_cleanup_free_ char *path = xasprintf("%s/" MANIFEST_FILE, name);
	size_t body;

	if (!env_valid_name(name) || read_file_beneath(s->envs_fd, NULL, path, 1 << 24, &text) < 0) {
		vf_clear_error();
		return false;
	}
	return !version_1(text.data, text.len) && manifest_end(text.data, text.len, &body) == 0 &&
	       holds_nothing_of_its_own(s, name);
}

int env_make_durable(struct store *s, const char *name)
{
	_cleanup_close_ int dfd = openat_beneath(s->envs_fd, name, O_RDONLY | O_DIRECTORY, 0);
	_cleanup_close_ int fd = dfd >= 0 ? openat_beneath(dfd, MANIFEST_FILE, O_RDONLY, 0) : dfd;

	if (fd < 0)
		return fd;
	if (fsync(fd) < 0 || fsync(dfd) < 0 || fsync(s->envs_fd) < 0)
		return -errno;
	return 0;
}

bool env_exists(struct store *s, const char *name)
{
	_cleanup_free_ char *path = xasprintf("%s/" MANIFEST_FILE, name);
	_cleanup_close_ int fd = env_valid_name(name) ? openat_beneath(s->envs_fd, path, O_PATH, 0) : -EINVAL;
	struct stat st;

	return fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

const char *env_upper(const struct env *e)
{
	return e->upper ? e->upper : LAYER_DEFAULT;
}

char *env_python_xy(const struct env *e)
{
	const char *v = e->python_version ? e->python_version : "3";
	const char *dot = strchr(v, '.');
	const char *dot2 = dot ? strchr(dot + 1, '.') : NULL;

	return dot2 ? xstrndup(v, (size_t)(dot2 - v)) : xstrdup(v);
}

char *env_site_dir(const struct env *e)
{
	_cleanup_free_ char *xy = env_python_xy(e);

	return xasprintf("lib/python%s/site-packages", xy);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int env_list(struct store *s, char ***names, size_t *n)
{
	DIR *d = opendir_at(s->envs_fd, ".");
	struct dirent *de;
	char **v = NULL;
	size_t cnt = 0, cap = 0;

	if (!d)
		return vf_error_errno(errno, "%s/envs", s->home);
	while ((de = readdir(d))) {
		/* envs appear and go by renames (env_install(), env_remove()):
		 * a directory not hidden is a whole env, no need to stat its
		 * manifest (a cold listing of 1,000 envs: 1,000 disk reads) */
		/* a symlink in an env's place is listed: it is there, and
		 * reading it fails, naming it (gc then refuses to run) */
		unsigned char type = de->d_type;
		struct stat st;
		if (type == DT_UNKNOWN && fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			type = S_ISLNK(st.st_mode) ? DT_LNK : S_ISDIR(st.st_mode) ? DT_DIR : DT_REG;
		if (de->d_name[0] == '.' || !env_valid_name(de->d_name) ||
		    (type != DT_DIR && type != DT_LNK && !env_exists(s, de->d_name)))
			continue;
		if (cnt == cap) {
			cap = cap ? cap * 2 : 16;
			v = xrealloc(v, cap * sizeof(*v));
		}
		v[cnt++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (cnt)
		qsort(v, cnt, sizeof(*v), cmp_str);
	*names = v;
	*n = cnt;
	return 0;
}

void env_list_free(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

int env_save_at(int env_fd, const struct env *e)
{
	_cleanup_buf_ struct buf text = {0};

	env_format(e, &text);
	return write_file_atomic(env_fd, MANIFEST_FILE, text.data, text.len, 0644);
}

int env_install(struct store *s, const struct env *e, bool replace, const char *upper_from)
{
	_cleanup_free_ char *tmp = env_tmp_name("new", e->name);
	_cleanup_free_ char *p = NULL;
	_cleanup_buf_ struct buf text = {0};
	int r;

	if (!env_valid_name(e->name))
		return vf_error(EINVAL, "%s: not a valid env name (letters, digits, '.', '_', '-', '+')", e->name);
	if (mkdirat(s->envs_fd, tmp, 0755) < 0)
		return vf_error_errno(errno, "%s/envs/%s", s->home, tmp);
	p = xasprintf("%s/%s", tmp, env_upper(e));
	if (upper_from) {
		if (renameat(AT_FDCWD, upper_from, s->envs_fd, p) < 0) {
			r = vf_error_errno(errno, "moving %s into the env", upper_from);
			goto fail;
		}
	} else if (mkdirat(s->envs_fd, p, 0755) < 0) {
		r = vf_error_errno(errno, "%s/envs/%s", s->home, p);
		goto fail;
	}
	free(p);
	p = xasprintf("%s/work", tmp);
	if (mkdirat(s->envs_fd, p, 0700) < 0) {
		r = vf_error_errno(errno, "%s/envs/%s", s->home, p);
		goto fail;
	}
	free(p);
	p = xasprintf("%s/" MANIFEST_FILE, tmp);
	env_format(e, &text);
	/*
	 * Atomic, not durable: like python -m venv and uv, a create waits for
	 * no disk write (an fsync here was the journal commit that took most
	 * of a `venvfs create`: 1 ms idle, 4-7 ms after a large install, on a
	 * loop-mounted ext4). The directory is complete before its name
	 * appears, so a running system sees the env whole or not at all; a
	 * crash before the file system's next commit (ext4: 5 s) can leave the
	 * name without its manifest's contents (delayed allocation), which the
	 * manifest's end line tells apart: env_torn(). Such an env held
	 * nothing of its own; it reads as damaged (EIO) until it is created
	 * again over it or gc removes it. The first fsync into an env through
	 * the mount makes it durable first (env_make_durable), so nothing a
	 * program made durable inside an env can outlive the env.
	 */
	r = write_file_new(s->envs_fd, p, text.data, text.len, 0644, false);
	if (r < 0)
		goto fail;
	if (renameat2(s->envs_fd, tmp, s->envs_fd, e->name, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EEXIST) {
		r = vf_error_errno(errno, "%s/envs/%s", s->home, e->name);
		goto fail;
	}
	if (!replace && !env_torn(s, e->name)) {
		r = vf_error(EEXIST, "an env named %s already exists", e->name);
		goto fail;
	}
	/* replacing an env: the new one is durable before the old one's files
	 * can go (a torn one, replaced below too, held nothing to lose) */
	if (replace && (r = env_make_durable(s, tmp)) < 0) {
		r = vf_error_errno(-r, "fsync %s/envs/%s", s->home, tmp);
		goto fail;
	}
	if (renameat2(s->envs_fd, tmp, s->envs_fd, e->name, RENAME_EXCHANGE) < 0) {
		r = vf_error_errno(errno, "replacing %s/envs/%s", s->home, e->name);
		goto fail;
	}
	/* tmp now holds the old env: the new one's name durable before the
	 * old one's files go */
	if (replace)
		fsync_dir_at(s->envs_fd, ".");
	rm_rf_at(s->envs_fd, tmp);
	return 0;
fail:
	rm_rf_at(s->envs_fd, tmp);
	return r;
}

int env_remove(struct store *s, const char *name)
{
	_cleanup_free_ char *trash = NULL;
	struct stat st;
	int r;

	/* a symlink in an env's place (never followed) may be removed too */
	bool link =
		env_valid_name(name) && fstatat(s->envs_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
	if (!link && !env_exists(s, name))
		return vf_error(ENOENT, "no env named %s in %s", name, s->home);
	/* gc's list of envs holds still while it marks */
	r = store_lock(s, LOCK_SH, true);
	if (r < 0)
		return r;
	trash = env_tmp_name("trash", name);
	if (renameat(s->envs_fd, name, s->envs_fd, trash) < 0) {
		r = errno == ENOENT ? vf_error(ENOENT, "no env named %s in %s", name, s->home)
				    : vf_error_errno(errno, "removing %s/envs/%s", s->home, name);
		store_unlock(s);
		return r;
	}
	fsync_dir_at(s->envs_fd, ".");
	r = rm_rf_at(s->envs_fd, trash); /* before gc may sweep it too */
	store_unlock(s);
	if (r < 0)
		return vf_error_errno(-r, "deleting %s/envs/%s", s->home, trash);
	return 0;
}

int env_rename(struct store *s, const char *from, const char *to)
{
	struct env *e = NULL;
	int r;

	if (!env_valid_name(to))
		return vf_error(EINVAL, "%s: not a valid env name (use letters, digits, '.', '_', '-', '+')", to);
	if (!env_exists(s, from))
		return vf_error(ENOENT, "no env named %s in %s", from, s->home);
	_cleanup_close_ int lock_from = env_lock(s, from);
	_cleanup_close_ int lock_to = lock_from >= 0 ? env_lock(s, to) : -1;
	if (lock_from < 0 || lock_to < 0) {
		const char *busy = lock_from < 0 ? from : to;
		int err = lock_from < 0 ? lock_from : lock_to;
		return err == -EWOULDBLOCK ? vf_error(EBUSY,
						      "env %s is in use (a mount serves it, or it is being "
						      "absorbed): venvfs umount it first",
						      busy)
					   : err;
	}
	/* gc's list of envs holds still meanwhile */
	r = store_lock(s, LOCK_SH, true);
	if (r < 0)
		return r;
	if (renameat2(s->envs_fd, from, s->envs_fd, to, RENAME_NOREPLACE) < 0) {
		r = errno == EEXIST ? vf_error(EEXIST, "an env named %s exists already in %s", to, s->home)
				    : vf_error_errno(errno, "renaming %s/envs/%s", s->home, from);
		store_unlock(s);
		return r;
	}
	fsync_dir_at(s->envs_fd, ".");
	_cleanup_close_ int efd = openat_beneath(s->envs_fd, to, O_RDONLY | O_DIRECTORY, 0);
	r = efd < 0 ? beneath_error(s->envs_fd, s->home, to, efd) : env_load_at(s, efd, to, &e);
	if (r == 0)
		r = env_save_at(efd, e); /* load_from() named it after its directory */
	store_unlock(s);
	env_free(e);
	return r;
}

int store_run_open(struct store *s, char **path)
{
	if (fd_on_read_only_fs(s->fd)) {
		char sub[32];
		snprintf(sub, sizeof(sub), "store-%016" PRIx64, XXH3_64bits(s->home, strlen(s->home)));
		return user_runtime_dir_open(sub, path);
	}
	int r = store_mkdir_shared(s, s->fd, "run");
	if (r < 0)
		return vf_error_errno(-r, "%s/run", s->home);
	int fd = openat_beneath(s->fd, "run", O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0)
		return beneath_error(s->fd, s->home, "run", fd);
	if (path)
		*path = path_join(s->home, "run");
	return fd;
}

int env_lock(struct store *s, const char *name)
{
	_cleanup_free_ char *p = xasprintf("env-%s.lock", name);
	_cleanup_free_ char *where = path_join(s->home, "run");
	struct stat st;
	int fd;

	if (!env_valid_name(name))
		return vf_error(EINVAL, "%s: not a valid env name", name);
	if (fd_on_read_only_fs(s->fd))
		return vf_error_read_only_store(s->home);
	_cleanup_close_ int run = store_run_open(s, NULL);
	if (run < 0)
		return run;
	/* O_NONBLOCK: a FIFO in its place must not hang us */
	fd = openat_beneath(run, p, O_RDWR | O_CREAT | O_NONBLOCK, 0644);
	if (fd < 0)
		return beneath_error(run, where, p, fd);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return vf_error(EIO,
				"%s/%s: not a regular file, which the store layout never makes "
				"(run venvfs store verify)",
				where, p);
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		return e == EWOULDBLOCK ? -EWOULDBLOCK : vf_error_errno(e, "%s/%s", where, p);
	}
	return fd;
}

void env_sweep_layers(struct store *s, const char *name)
{
	struct env *e;
	_cleanup_close_ int efd = openat_beneath(s->envs_fd, name, O_RDONLY | O_DIRECTORY, 0);
	DIR *dir = efd >= 0 ? opendir_at(efd, ".") : NULL;
	struct dirent *de;

	if (!dir)
		return;
	if (env_load(s, name, &e) < 0) {
		vf_clear_error();
		closedir(dir);
		return;
	}
	while ((de = readdir(dir))) {
		bool trash;
		if (env_is_layer_name(de->d_name, &trash) && (trash || strcmp(de->d_name, env_upper(e))))
			rm_rf_at(efd, de->d_name);
	}
	closedir(dir);
	env_free(e);
}

bool env_has_layer_content(struct store *s, const struct env *e)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", e->name, env_upper(e));

	return holds_entries(s, p, ".lock") > 0;
}

void env_views(int env_fd, char ***views, size_t *n)
{
	_cleanup_buf_ struct buf text = {0};

	*views = NULL;
	*n = 0;
	if (read_file_beneath(env_fd, NULL, VIEWS_FILE, 1 << 20, &text) < 0) {
		vf_clear_error(); /* none recorded (or not readable): scripts name the env as it is */
		return;
	}
	for (char *save, *l = strtok_r(text.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		*views = xrealloc(*views, (*n + 1) * sizeof(char *));
		(*views)[(*n)++] = xstrdup(l);
	}
}

int env_views_add(int env_fd, const char *where, const char *path)
{
	_cleanup_buf_ struct buf text = {0};
	struct stat st;
	int r = read_file_beneath(env_fd, where, VIEWS_FILE, 1 << 20, &text);

	if (r == 0) {
		for (char *save, *l = strtok_r(text.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
			if (!strcmp(l, path))
				return 0;
	} else if (r != -ENOENT) {
		return r;
	}
	/* O_NONBLOCK: a FIFO in its place must not hang the daemon */
	_cleanup_close_ int fd = openat_beneath(env_fd, VIEWS_FILE, O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, 0644);
	if (fd < 0)
		return beneath_error(env_fd, where, VIEWS_FILE, fd);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return vf_error(EIO, "%s/%s is not a regular file, which the store layout never makes", where,
				VIEWS_FILE);
	_cleanup_free_ char *line = xasprintf("%s\n", path);
	if (write_full(fd, line, strlen(line)) < 0)
		return vf_error_errno(errno, "cannot record %s in %s/%s", path, where, VIEWS_FILE);
	return 0;
}

int env_work_open(int env_fd, const char *where)
{
	if (mkdirat(env_fd, WORK_DIR, 0700) < 0 && errno != EEXIST)
		return vf_error_errno(errno, "%s/%s", where, WORK_DIR);
	int fd = openat_beneath(env_fd, WORK_DIR, O_RDONLY | O_DIRECTORY, 0);
	return fd < 0 ? beneath_error(env_fd, where, WORK_DIR, fd) : fd;
}

int env_manifest_stat(int env_fd, const char *where, struct stat *st)
{
	_cleanup_close_ int fd = openat_beneath(env_fd, MANIFEST_FILE, O_PATH, 0);

	if (fd == -ENOENT)
		return fd;
	if (fd < 0)
		return beneath_error(env_fd, where, MANIFEST_FILE, fd);
	return fstat(fd, st) < 0 ? vf_error_errno(errno, "%s/%s", where, MANIFEST_FILE) : 0;
}

int env_manifest_read(int env_fd, struct buf *out)
{
	return read_file_beneath(env_fd, NULL, MANIFEST_FILE, 1 << 24, out);
}

char *env_layer_new_name(void)
{
	return xasprintf(LAYER_DEFAULT "-%08llx", (unsigned long long)(random_u64() & 0xffffffffu));
}

bool env_is_layer_name(const char *entry, bool *trash)
{
	*trash = str_has_prefix(entry, ".trash-" LAYER_DEFAULT);
	return *trash || str_has_prefix(entry, LAYER_DEFAULT);
}

char *env_layer_trash(struct store *s, const char *name, const char *layer)
{
	_cleanup_free_ char *from = xasprintf("%s/%s", name, layer);
	char *to = xasprintf("%s/.trash-%s", name, layer);

	if (renameat(s->envs_fd, from, s->envs_fd, to) == 0)
		return to;
	free(to);
	return NULL;
}

bool env_is_own_entry(const char *entry)
{
	bool trash;

	return !strcmp(entry, MANIFEST_FILE) || !strcmp(entry, VIEWS_FILE) || !strcmp(entry, WORK_DIR) ||
	       (env_is_layer_name(entry, &trash) && !trash);
}

char *env_tmp_name(const char *kind, const char *name)
{
	return xasprintf(".%s-%s-%016llx", kind, name, (unsigned long long)random_u64());
}

bool env_is_tmp_name(const char *entry)
{
	return str_has_prefix(entry, ".new-") || str_has_prefix(entry, ".trash-") || str_has_prefix(entry, ".clone-");
}
