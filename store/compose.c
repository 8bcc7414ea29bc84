/*
 * compose.c - envs made from what the store already holds: create, clone.
 *
 * An env is a manifest: its interpreter, its env tree and its list of
 * packages. Creating one copies no file, so it takes time in the number of
 * packages (reading their manifests' headers to resolve requirements), not
 * in the number of files they hold.
 *
 * The env tree of a new env (pyvenv.cfg, bin/python*, bin/activate*,
 * include/, lib/pythonX.Y/site-packages, lib64) is the interpreter's own
 * work: the first time an interpreter is used, venvfs runs
 * `PYTHON -m venv --without-pip` on a probe directory and imports the
 * result as an env tree, templates and all, so every Python version's own
 * activate scripts and pyvenv.cfg keys come out right. The result is kept
 * in HOME/cache/python-* (keyed by the interpreter's path, inode, size and
 * mtime, and the options that change the skeleton) and shared by every env
 * created with that interpreter.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>
#include <dirent.h>

#include "distinfo.h"
#include "env.h"
#include "package.h"
#include "requirement.h"
#include "store.h"
#include "tree.h"
#include "venv.h"

/* ---- the interpreter and its skeleton ------------------------------------------ */

/* The interpreter as given: a path, or a command looked up in $PATH. */
static char *find_python(const char *python)
{
	if (strchr(python, '/'))
		return path_absolute(python);
	const char *path = getenv("PATH");
	_cleanup_free_ char *copy = xstrdup(path ? path : "/usr/bin:/bin");
	for (char *save, *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		_cleanup_free_ char *p = path_join(d, python);
		if (access(p, X_OK) == 0)
			return path_absolute(p);
	}
	return NULL;
}

static int run_quiet(char *const argv[], struct buf *err)
{
	int pipefd[2];
	pid_t pid;
	int status;

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		dup2(pipefd[1], STDERR_FILENO);
		dup2(pipefd[1], STDOUT_FILENO);
		execv(argv[0], argv);
		_exit(127);
	}
	close(pipefd[1]);
	char b[4096];
	ssize_t n;
	while ((n = read(pipefd[0], b, sizeof(b))) > 0)
		buf_add(err, b, (size_t)n);
	close(pipefd[0]);
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/*
 * The skeleton env (tree + interpreter fields) for python with these
 * options, from the cache or made now with the interpreter's venv module.
 */
static int skeleton(struct store *s, const char *python, const char *prompt, bool ssp, struct env **out)
{
	_cleanup_free_ char *exe = find_python(python);
	struct stat st;
	int r;

	if (!exe || stat(exe, &st) < 0 || !S_ISREG(st.st_mode))
		return vf_error(ENOENT, "%s: no such interpreter", python);
	_cleanup_free_ char *real = realpath(exe, NULL);
	_cleanup_buf_ struct buf key = {0}, text = {0};
	buf_printf(&key, "skeleton 1\n%s\n%s\n%llu %llu %lld.%09ld\n%s\n%d\n", exe, real ? real : exe,
		   (unsigned long long)st.st_ino, (unsigned long long)st.st_size, (long long)st.st_mtim.tv_sec,
		   st.st_mtim.tv_nsec, prompt ? prompt : "", ssp);
	_cleanup_free_ char *name = xasprintf("cache/python-%016" PRIx64, XXH3_64bits(key.data, key.len));
	_cleanup_free_ char *cache = store_account_file(s, name);

	if (store_account_file_ours(s, cache) && read_file_beneath(s->fd, NULL, cache, 1 << 20, &text) == 0 &&
	    env_parse(text.data, text.len, cache, out) == 0) {
		if (store_object_exists(s, &(*out)->tree))
			return 0;
		env_free(*out); /* its tree was collected: make it again */
	}
	vf_clear_error();

	/* python -m venv --without-pip HOME/tmp/probe-N/venvfs-probe */
	_cleanup_free_ char *dir = xasprintf("%s/tmp/probe-%016llx", s->home, (unsigned long long)random_u64());
	_cleanup_free_ char *probe = path_join(dir, "venvfs-probe");
	_cleanup_buf_ struct buf err = {0};
	char *argv[8];
	int a = 0;
	_cleanup_free_ char *prompt_arg = prompt ? xasprintf("--prompt=%s", prompt) : NULL;
	argv[a++] = exe;
	argv[a++] = "-m";
	argv[a++] = "venv";
	argv[a++] = "--without-pip";
	if (ssp)
		argv[a++] = "--system-site-packages";
	if (prompt_arg)
		argv[a++] = prompt_arg;
	argv[a++] = probe;
	argv[a] = NULL;
	if (mkdir(dir, 0700) < 0)
		return vf_error_errno(errno, "%s", dir);
	r = run_quiet(argv, &err);
	if (r < 0) {
		rm_rf_at(AT_FDCWD, dir);
		return vf_error(EINVAL, "%s -m venv failed: %s", exe, err.len ? err.data : "(no output)");
	}
	struct import_opts io = {.built = out, .threads = 1};
	struct import_stats ist;
	r = venv_import(s, probe, &io, &ist);
	free(ist.env_name);
	rm_rf_at(AT_FDCWD, dir);
	if (r < 0)
		return vf_error_prefix(-r, "making an env skeleton with %s: ", exe);
	(*out)->has_mtimes = false; /* the probe's times mean nothing */
	free((*out)->origin);
	(*out)->origin = NULL;
	env_format(*out, &text);
	_cleanup_close_ int cfd = openat_beneath(s->fd, "cache", O_RDONLY | O_DIRECTORY, 0);
	if (cfd >= 0)
		write_file_atomic(cfd, cache + strlen("cache/"), text.data, text.len, 0644);
	vf_clear_error(); /* a cache: none is fine */
	return 0;
}

/* ---- the store's packages ----------------------------------------------------------- */

struct candidate {
	struct objid id;
	char *version;
	char *tags;
	char *requires;
	char *requires_python;
};

struct resolver {
	struct store *s;
	const char *python_xy;   /* "3.11" */
	const char *python_full; /* "3.11.7" */
	bool no_deps;
	struct env *out;      /* packages chosen, in order */
	struct strmap chosen; /* name -> index in out->pkgs + 1 */
	struct buf why;       /* who asked for what, for conflicts */
};

static void cand_free(struct candidate *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(c[i].version);
		free(c[i].tags);
		free(c[i].requires);
		free(c[i].requires_python);
	}
	free(c);
}

struct candidate_list {
	struct candidate *c;
	size_t n, cap;
};

static bool add_candidate(void *ctx, const struct objid *id, const struct tree_head *h)
{
	struct candidate_list *l = ctx;

	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 8;
		l->c = xrealloc(l->c, l->cap * sizeof(*l->c));
	}
	struct candidate *c = &l->c[l->n++];
	c->id = *id;
	c->version = xstrdup(h->str[TREE_STR_VERSION]);
	c->tags = xstrdup(h->str[TREE_STR_TAGS]);
	c->requires = xstrdup(h->str[TREE_STR_REQUIRES]);
	c->requires_python = xstrdup(h->str[TREE_STR_REQUIRES_PYTHON]);
	return false;
}

/* Every package of that name in the store, with its header strings. */
static int candidates(struct store *s, const char *name, struct candidate **out, size_t *n)
{
	struct candidate_list l = {0};

	package_each_head(s, name, add_candidate, &l);
	*out = l.c;
	*n = l.n;
	return 0;
}

static bool fits_python(struct resolver *rs, const struct candidate *c)
{
	return tags_compatible(c->tags, rs->python_xy) && pep440_match_set(rs->python_full, c->requires_python);
}

static int resolve(struct resolver *rs, const struct requirement *req, const char *asked_by);

/* The dependencies of a chosen package, with the extras asked for. */
static int add_dependencies(struct resolver *rs, const char *name, const char *requires, const char *extras)
{
	_cleanup_free_ char *copy = xstrdup(requires);
	_cleanup_free_ char *by = xstrdup(name);

	for (char *save, *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		struct requirement dep;
		if (requirement_parse(line, &dep) < 0)
			continue; /* METADATA we cannot read: pip would install it anyway */
		bool want = true;
		if (dep.marker[0]) {
			/* with no extra, then with each extra asked for */
			struct marker_env me = {rs->python_xy, rs->python_full, ""};
			if (marker_eval(dep.marker, &me, &want) < 0)
				want = false;
			_cleanup_free_ char *ex = xstrdup(extras);
			for (char *s2, *x = strtok_r(ex, ",", &s2); x && !want; x = strtok_r(NULL, ",", &s2)) {
				_cleanup_free_ char *xn = pep503_normalize(x, strlen(x));
				me.extra = xn;
				if (marker_eval(dep.marker, &me, &want) < 0)
					want = false;
			}
		}
		int r = want ? resolve(rs, &dep, by) : 0;
		requirement_free(&dep);
		if (r < 0)
			return r;
	}
	return 0;
}

static int resolve(struct resolver *rs, const struct requirement *req, const char *asked_by)
{
	uint64_t *chosen = strmap_get(&rs->chosen, req->name, strlen(req->name));
	struct candidate *c;
	size_t n;
	int r;

	if (chosen) {
		const struct env_pkg *p = &rs->out->pkgs[*chosen - 1];
		if (pep440_match_set(p->version, req->specs))
			return 0;
		return vf_error(EINVAL, "%s (asked by %s) conflicts with %s %s, already chosen", req->text, asked_by,
				p->name, p->version);
	}
	r = candidates(rs->s, req->name, &c, &n);
	if (r < 0)
		return r;
	struct candidate *best = NULL;
	for (size_t i = 0; i < n; i++) {
		if (!fits_python(rs, &c[i]) || !pep440_match_set(c[i].version, req->specs))
			continue;
		int cmp = best ? pep440_cmp(c[i].version, best->version) : 1;
		/* highest version; for equal versions, the smallest id (stable) */
		if (cmp > 0 || (cmp == 0 && memcmp(c[i].id.hash, best->id.hash, 16) < 0))
			best = &c[i];
	}
	if (!best) {
		struct buf have = {0};
		for (size_t i = 0; i < n; i++) {
			bool dup = false;
			for (size_t k = 0; k < i; k++)
				dup |= !strcmp(c[k].version, c[i].version);
			if (dup)
				continue;
			buf_printf(&have, "%s%s%s", have.len ? ", " : "", c[i].version,
				   fits_python(rs, &c[i]) ? "" : " (not for this Python)");
		}
		_cleanup_free_ char *who =
			strcmp(asked_by, "command line") ? xasprintf(" (required by %s)", asked_by) : xstrdup("");
		if (have.len)
			r = vf_error(ENOENT, "%s%s: not in the store; the store has %s %s", req->text, who, req->name,
				     have.data);
		else
			r = vf_error(ENOENT,
				     "%s%s: not in the store, which has no %s at all (import a venv that "
				     "has it, or install it into a mounted env)",
				     req->text, who, req->name);
		buf_free(&have);
		cand_free(c, n);
		return r;
	}
	env_add_package(rs->out, &best->id, req->name, best->version);
	*strmap_put(&rs->chosen, req->name, strlen(req->name), NULL) = rs->out->n_pkgs;
	r = rs->no_deps ? 0 : add_dependencies(rs, req->name, best->requires, req->extras);
	cand_free(c, n);
	return r;
}

/* Requirement lines of a file (-r nested, options and hashes ignored). */
static int read_requirements(const char *path, int depth, struct buf *lines)
{
	_cleanup_buf_ struct buf text = {0};

	if (depth > 8)
		return vf_error(ELOOP, "%s: -r nested too deeply", path);
	if (read_file_at(AT_FDCWD, path, 1 << 24, &text) < 0)
		return vf_error_prefix(ENOENT, "requirements file ");
	/* join continuation lines */
	for (size_t i = 0; i + 1 < text.len; i++)
		if (text.data[i] == '\\' && text.data[i + 1] == '\n')
			text.data[i] = text.data[i + 1] = ' ';
	unsigned lineno = 0;
	for (char *save, *l = strtok_r(text.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		lineno++;
		char *hash = strstr(l, " #");
		if (l[0] == '#')
			continue;
		if (hash)
			*hash = '\0';
		char *h = strstr(l, "--hash");
		if (h)
			*h = '\0';
		while (*l == ' ' || *l == '\t')
			l++;
		size_t n = strlen(l);
		while (n && (l[n - 1] == ' ' || l[n - 1] == '\t' || l[n - 1] == '\r'))
			l[--n] = '\0';
		if (!n)
			continue;
		if (!strncmp(l, "-r", 2) || !strncmp(l, "--requirement", 13)) {
			char *f = l + (l[1] == 'r' ? 2 : 13);
			while (*f == ' ' || *f == '=')
				f++;
			_cleanup_free_ char *dir = xstrdup(path);
			char *slash = strrchr(dir, '/');
			_cleanup_free_ char *sub =
				f[0] == '/' || !slash ? xstrdup(f) : (slash[1] = '\0', path_join(dir, f));
			int r = read_requirements(sub, depth + 1, lines);
			if (r < 0)
				return r;
			continue;
		}
		if (l[0] == '-') {
			if (!strncmp(l, "-e", 2) || !strncmp(l, "--editable", 10))
				return vf_error(EINVAL, "%s:%u: editable requirements cannot come from the store", path,
						lineno);
			continue; /* --index-url and friends mean nothing here */
		}
		buf_add(lines, l, n + 1); /* with its NUL: a list of strings */
	}
	return 0;
}

/* ---- create and clone ---------------------------------------------------------------- */

int venv_create(struct store *s, const struct create_opts *o, struct create_stats *st)
{
	struct env *from = NULL, *skel = NULL, *e = NULL;
	struct resolver rs = {.s = s, .no_deps = o->no_deps};
	_cleanup_buf_ struct buf lines = {0};
	_cleanup_free_ char *xy = NULL;
	int r;

	memset(st, 0, sizeof(*st));
	if (!env_valid_name(o->name))
		return vf_error(EINVAL, "%s: not a valid env name (letters, digits, '.', '_', '-', '+')", o->name);
	if (env_exists(s, o->name) && !env_torn(s, o->name))
		return vf_error(EEXIST, "an env named %s already exists", o->name);
	/* from the first package read to the env in place: gc cannot take
	 * away what we read (nor the skeleton we make in HOME/tmp) */
	r = store_lock(s, LOCK_SH, true);
	if (r < 0)
		return r;
	if (o->from && (r = env_load(s, o->from, &from)) < 0)
		goto out;
	const char *python = o->python ? o->python : from ? from->python_executable : NULL;
	if (!python) {
		r = vf_error(EINVAL, "which Python? give --python PYTHON (or --from ENV)");
		goto out;
	}
	r = skeleton(s, python, o->prompt, o->system_site_packages, &skel);
	if (r < 0)
		goto out;

	e = xcalloc(1, sizeof(*e));
	e->name = xstrdup(o->name);
	while (!e->uid)
		e->uid = random_u64();
	e->python_home = xstrdup(skel->python_home);
	e->python_executable = xstrdup(skel->python_executable);
	e->python_version = xstrdup(skel->python_version);
	e->system_site_packages = o->system_site_packages;
	e->prompt = o->prompt ? xstrdup(o->prompt) : NULL;
	e->created = (int64_t)time(NULL);
	e->tree = skel->tree;

	xy = env_python_xy(e);
	rs.python_xy = xy;
	rs.python_full = e->python_version;
	rs.out = e;

	/* requirements: the command line's and the file's first, so they pin
	 * their versions before dependencies ask */
	for (size_t i = 0; i < o->n_reqs; i++)
		buf_add(&lines, o->reqs[i], strlen(o->reqs[i]) + 1);
	if (o->req_file && (r = read_requirements(o->req_file, 0, &lines)) < 0)
		goto out;
	struct requirement *reqs = NULL;
	size_t nreq = 0;
	for (size_t off = 0; off < lines.len; off += strlen(lines.data + off) + 1) {
		reqs = xrealloc(reqs, (nreq + 1) * sizeof(*reqs));
		r = requirement_parse(lines.data + off, &reqs[nreq]);
		if (r < 0)
			break;
		nreq++;
	}
	/* the --from env's packages stay unless asked for by name */
	for (size_t k = 0; r == 0 && from && k < from->n_pkgs; k++) {
		bool replaced = false;
		for (size_t i = 0; i < nreq; i++)
			replaced |= !strcmp(reqs[i].name, from->pkgs[k].name);
		if (replaced)
			continue;
		env_add_package(e, &from->pkgs[k].id, from->pkgs[k].name, from->pkgs[k].version);
		*strmap_put(&rs.chosen, from->pkgs[k].name, strlen(from->pkgs[k].name), NULL) = e->n_pkgs;
	}
	for (size_t i = 0; r == 0 && i < nreq; i++) {
		struct marker_env me = {xy, e->python_version, ""};
		bool want = true;
		if (reqs[i].marker[0] && (r = marker_eval(reqs[i].marker, &me, &want)) < 0)
			break;
		if (want)
			r = resolve(&rs, &reqs[i], "command line");
	}
	for (size_t i = 0; i < nreq; i++)
		requirement_free(&reqs[i]);
	free(reqs);
	if (r < 0)
		goto out;

	/* what the index lists is whole (gc unlists before it deletes);
	 * a package manifest gone is damage, not a race */
	for (size_t k = 0; k < e->n_pkgs; k++) {
		if (!store_object_exists(s, &e->pkgs[k].id)) {
			r = vf_error(
				EIO,
				"package %s %s: its manifest is missing from the store (damage: venvfs store verify)",
				e->pkgs[k].name, e->pkgs[k].version);
			goto out;
		}
	}
	r = env_install(s, e, false, NULL);
	if (r < 0)
		goto out;
	st->packages = e->n_pkgs;
	st->python_version = xstrdup(e->python_version);
out:
	store_unlock(s);
	strmap_free(&rs.chosen);
	env_free(from);
	env_free(skel);
	env_free(e);
	return r;
}

/*
 * Copy the writable layer of env src into dir/<its layer name>, and load
 * the manifest that names it. The daemon serving src may absorb it
 * meanwhile (a new layer, the old one deleted soon after): the copy
 * counts only if src's manifest is the same before and after it, else it
 * starts again.
 */
#define CLONE_TRIES 5
static int copy_env_layer(struct store *s, const char *src, int dirfd, struct env **out)
{
	for (int attempt = 0; attempt < CLONE_TRIES; attempt++) {
		_cleanup_buf_ struct buf before = {0}, after = {0};
		struct env *e;
		int r;

		if (attempt)
			usleep(20000u << attempt);
		/* the directory first, then its manifest: the one compared below */
		_cleanup_close_ int efd = openat(s->envs_fd, src, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (efd < 0)
			return errno == ENOENT ? vf_error(ENOENT, "no env named %s in %s", src, s->home)
					       : vf_error_errno(errno, "%s/envs/%s", s->home, src);
		r = env_load_at(s, efd, src, &e);
		if (r < 0)
			return r;
		if (env_manifest_read(efd, &before) < 0) {
			env_free(e);
			return vf_error(ENOENT, "env %s was removed while it was cloned", src);
		}
		rm_rf_at(dirfd, env_upper(e));
		if (mkdirat(dirfd, env_upper(e), 0755) < 0) {
			r = vf_error_errno(errno, "making the clone's writable layer");
			env_free(e);
			return r;
		}
		_cleanup_close_ int dfd = openat(dirfd, env_upper(e), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		_cleanup_close_ int sfd = openat(efd, env_upper(e), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dfd < 0)
			r = -errno;
		else if (sfd < 0)
			r = errno == ENOENT ? 0 : -errno; /* none: the manifest check below tells why */
		else
			r = copy_tree(sfd, dfd);
		/* the copy counts if the directory's manifest did not change */
		bool same = env_manifest_read(efd, &after) == 0 && before.len == after.len &&
			    !memcmp(before.data, after.data, before.len);
		if (same && r == 0) {
			*out = e;
			return 0;
		}
		env_free(e);
		if (same && r != -ENOENT)
			return vf_error_errno(-r, "copying the writable layer of %s", src);
		/* absorbed (or a file gone mid-copy): again */
	}
	return vf_error(EAGAIN, "env %s kept changing while it was cloned; try again", src);
}

int venv_clone(struct store *s, const char *src, const char *dst)
{
	struct env *e = NULL;
	_cleanup_free_ char *tmp = NULL, *upper = NULL;
	_cleanup_close_ int tfd = -1;
	int r;

	if (!env_valid_name(dst))
		return vf_error(EINVAL, "%s: not a valid env name (letters, digits, '.', '_', '-', '+')", dst);
	if (env_exists(s, dst) && !env_torn(s, dst))
		return vf_error(EEXIST, "an env named %s already exists", dst);
	/* gc waits until the clone is in place: what src's manifest names is
	 * named by the clone's before gc may look again */
	r = store_lock(s, LOCK_SH, true);
	if (r < 0)
		return r;
	/* the writable layer is copied (reflinked where possible) into a
	 * directory gc removes if we are killed (it waits for our lock) */
	tmp = env_tmp_name("clone", dst);
	if (mkdirat(s->envs_fd, tmp, 0700) < 0 ||
	    (tfd = openat(s->envs_fd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		r = vf_error_errno(errno, "%s/envs/%s", s->home, tmp);
		goto out;
	}
	r = copy_env_layer(s, src, tfd, &e);
	if (r < 0)
		goto out;
	free(e->name);
	e->name = xstrdup(dst);
	e->uid = 0;
	while (!e->uid)
		e->uid = random_u64();
	e->created = (int64_t)time(NULL);
	upper = xasprintf("%s/envs/%s/%s", s->home, tmp, env_upper(e));
	r = env_install(s, e, false, upper);
out:
	store_unlock(s);
	rm_rf_at(s->envs_fd, tmp);
	env_free(e);
	return r;
}
