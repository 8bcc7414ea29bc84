/*
 * test_store.c - unit tests of the store library (Check).
 *
 * Objects (dedup, forced hash collisions, corruption, symlinks and other
 * files in an object's place), tree manifests
 * (round trip, lookups, damaged input), the Python format parsers
 * (RECORD, pyvenv.cfg, METADATA, pyc, PEP 440), templates (shebangs,
 * trampolines, RECORD rows) and env manifests.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "distinfo.h"
#include "env.h"
#include "maint.h"
#include "package.h"
#include "pyc.h"
#include "requirement.h"
#include "store.h"
#include "template.h"
#include "tree.h"
#include "util.h"
#include "view.h"

static char *tmp_home;

static void setup_home(void)
{
	char tmpl[] = "/tmp/venvfs-unit-XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(tmpl));
	tmp_home = xstrdup(tmpl);
}

static void teardown_home(void)
{
	rm_rf_at(AT_FDCWD, tmp_home);
	free(tmp_home);
}

static struct store *open_test_store(void)
{
	struct store *s;
	_cleanup_free_ char *home = path_join(tmp_home, "store");
	ck_assert_int_eq(store_open(home, true, &s), 0);
	return s;
}

static int count_files(const char *dir)
{
	_cleanup_free_ char *cmd = xasprintf("find '%s' -type f | wc -l", dir);
	FILE *f = popen(cmd, "r");
	int n = -1;
	ck_assert_int_eq(fscanf(f, "%d", &n), 1);
	pclose(f);
	return n;
}

/* ---- objects -------------------------------------------------------------- */

START_TEST(test_object_dedup)
{
	struct store *s = open_test_store();
	struct store_txn *t = store_txn_begin(s);
	struct objid a, b, c;
	uint64_t added;

	ck_assert_int_eq(store_txn_put(t, "hello", 5, &a, &added), 0);
	ck_assert_uint_eq(added, 5);
	ck_assert_int_eq(store_txn_put(t, "hello", 5, &b, &added), 0);
	ck_assert_uint_eq(added, 0);
	ck_assert(objid_equal(&a, &b));
	ck_assert_int_eq(store_txn_put(t, "world", 5, &c, &added), 0);
	ck_assert(!objid_equal(&a, &c));
	/* not visible before the flush, visible after */
	ck_assert(!store_object_exists(s, &a));
	ck_assert_int_eq(store_txn_commit(t), 0);
	ck_assert(store_object_exists(s, &a));
	ck_assert_int_eq(store_object_verify(s, &a, NULL), 0);

	/* a later transaction finds it and writes nothing */
	t = store_txn_begin(s);
	ck_assert_int_eq(store_txn_put(t, "hello", 5, &b, &added), 0);
	ck_assert_uint_eq(added, 0);
	ck_assert(objid_equal(&a, &b));
	ck_assert_int_eq(store_txn_commit(t), 0);

	struct buf got = {0};
	ck_assert_int_eq(store_object_read(s, &a, 100, &got), 0);
	ck_assert_str_eq(got.data, "hello");
	buf_free(&got);
	store_close(s);
}
END_TEST

/* Every content hashes the same: every insert is a collision. */
static void weak_hash(const void *data, size_t len, uint8_t out[16])
{
	(void)data;
	(void)len;
	memset(out, 0xab, 16);
}

START_TEST(test_object_forced_collision)
{
	struct store *s = open_test_store();
	struct objid a, b, a2, c;
	uint64_t added;

	s->hash = weak_hash;
	struct store_txn *t = store_txn_begin(s);
	ck_assert_int_eq(store_txn_put(t, "first", 5, &a, &added), 0);
	ck_assert_int_eq(store_txn_put(t, "other", 5, &b, &added), 0); /* same length, same "hash" */
	ck_assert_uint_eq(a.seq, 0);
	ck_assert_uint_eq(b.seq, 1);
	ck_assert_int_eq(store_txn_put(t, "first", 5, &a2, &added), 0);
	ck_assert(objid_equal(&a, &a2));
	ck_assert_int_eq(store_txn_commit(t), 0);

	/* across transactions too: a third content gets .2, never aliases */
	t = store_txn_begin(s);
	ck_assert_int_eq(store_txn_put(t, "third!", 6, &c, &added), 0);
	ck_assert_uint_eq(c.seq, 2);
	ck_assert_int_eq(store_txn_put(t, "other", 5, &a2, &added), 0);
	ck_assert(objid_equal(&a2, &b));
	ck_assert_int_eq(store_txn_commit(t), 0);

	struct buf got = {0};
	ck_assert_int_eq(store_object_read(s, &a, 100, &got), 0);
	ck_assert_str_eq(got.data, "first");
	ck_assert_int_eq(store_object_read(s, &b, 100, &got), 0);
	ck_assert_str_eq(got.data, "other");
	ck_assert_int_eq(store_object_read(s, &c, 100, &got), 0);
	ck_assert_str_eq(got.data, "third!");
	buf_free(&got);

	char path[OBJID_STR_MAX];
	objid_path(&c, path);
	ck_assert(str_has_suffix(path, ".2"));
	store_close(s);
}
END_TEST

START_TEST(test_object_corruption_detected)
{
	struct store *s = open_test_store();
	struct store_txn *t = store_txn_begin(s);
	struct objid a;
	uint64_t added;
	char path[OBJID_STR_MAX];

	ck_assert_int_eq(store_txn_put(t, "precious content", 16, &a, &added), 0);
	ck_assert_int_eq(store_txn_commit(t), 0);
	objid_path(&a, path);
	/* flip a byte behind the store's back */
	ck_assert_int_eq(fchmodat(s->objects_fd, path, 0644, 0), 0);
	int fd = openat(s->objects_fd, path, O_WRONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, "P", 1, 0), 1);
	close(fd);
	ck_assert_int_eq(store_object_verify(s, &a, NULL), -EIO);
	ck_assert_ptr_nonnull(strstr(vf_last_error(), path));

	/* an insert of the right content must not accept the damaged file */
	t = store_txn_begin(s);
	struct objid b;
	ck_assert_int_eq(store_txn_put(t, "precious content", 16, &b, &added), 0);
	ck_assert_uint_eq(b.seq, 1);
	ck_assert_int_eq(store_txn_commit(t), 0);
	store_close(s);
}
END_TEST

START_TEST(test_txn_abort_leaves_nothing)
{
	struct store *s = open_test_store();
	struct store_txn *t = store_txn_begin(s);
	struct objid a;
	uint64_t added;

	ck_assert_int_eq(store_txn_put(t, "abandoned", 9, &a, &added), 0);
	store_txn_abort(t);
	ck_assert(!store_object_exists(s, &a));
	_cleanup_free_ char *tmp = path_join(s->home, "tmp");
	_cleanup_free_ char *obj = path_join(s->home, "objects");
	ck_assert_int_eq(count_files(tmp), 0);
	ck_assert_int_eq(count_files(obj), 0);
	store_close(s);
}
END_TEST

/* Put one object and return its id and path. */
static void put_one(struct store *s, const char *content, struct objid *id, char path[OBJID_STR_MAX])
{
	struct store_txn *t = store_txn_begin(s);
	uint64_t added;

	ck_assert_int_eq(store_txn_put(t, content, strlen(content), id, &added), 0);
	ck_assert_int_eq(store_txn_commit(t), 0);
	objid_path(id, path);
}

/*
 * Nothing under objects/ is followed through a symlink: not an object (a
 * symlink to a file its planter may not read), not a fan-out directory
 * (inserts would create files wherever it points). Loop 0 with openat2,
 * loop 1 with the O_NOFOLLOW-per-step fallback.
 */
START_TEST(test_object_symlinks_refused)
{
	struct store *s = open_test_store();
	struct objid a;
	char path[OBJID_STR_MAX];
	struct buf got = {0};
	uint64_t added;

	s->no_openat2 = _i == 1;
	put_one(s, "the real content", &a, path);
	_cleanup_free_ char *secret = path_join(tmp_home, "secret");
	ck_assert_int_eq(write_file_atomic(AT_FDCWD, secret, "root's secret", 13, 0600), 0);

	/* the object itself is a symlink: what it points at is never read */
	ck_assert_int_eq(unlinkat(s->objects_fd, path, 0), 0);
	ck_assert_int_eq(symlinkat(secret, s->objects_fd, path), 0);
	ck_assert_int_lt(store_object_read(s, &a, 100, &got), 0);
	ck_assert_int_eq(store_object_open(s, &a), -EIO);
	ck_assert_ptr_nonnull(strstr(vf_last_error(), path));
	ck_assert_int_eq(store_object_read(s, &a, 100, &got), -EIO);
	ck_assert_int_eq(store_object_read_checked(s, &a, 100, &got), -EIO);
	ck_assert(!store_object_exists(s, &a));
	ck_assert_int_eq(store_object_verify(s, &a, NULL), -EIO);
	/* an insert of the same content does not take (or follow) it */
	struct store_txn *t = store_txn_begin(s);
	struct objid a2;
	ck_assert_int_lt(store_txn_put(t, "the real content", 16, &a2, &added), 0);
	store_txn_abort(t);

	/* a FIFO or a directory in an object's place: EIO, and no hang */
	ck_assert_int_eq(unlinkat(s->objects_fd, path, 0), 0);
	ck_assert_int_eq(mkfifoat(s->objects_fd, path, 0444), 0);
	ck_assert_int_eq(store_object_open(s, &a), -EIO);
	ck_assert_int_eq(store_object_read(s, &a, 100, &got), -EIO);
	ck_assert(!store_object_exists(s, &a));
	ck_assert_int_eq(store_object_verify(s, &a, NULL), -EIO);
	ck_assert_int_eq(unlinkat(s->objects_fd, path, 0), 0);
	ck_assert_int_eq(mkdirat(s->objects_fd, path, 0755), 0);
	ck_assert_int_eq(store_object_open(s, &a), -EIO);
	ck_assert_int_eq(unlinkat(s->objects_fd, path, AT_REMOVEDIR), 0);
	buf_free(&got);
	store_close(s);
}
END_TEST

START_TEST(test_fanout_symlinks_refused)
{
	struct store *s = open_test_store();
	struct objid b;
	char bpath[OBJID_STR_MAX];
	struct buf got = {0};
	uint64_t added;

	s->no_openat2 = _i == 1;
	put_one(s, "another object", &b, bpath);
	/* b's fan-out directory is a symlink to a copy of it elsewhere */
	_cleanup_free_ char *elsewhere = path_join(tmp_home, "elsewhere");
	_cleanup_free_ char *fan = xasprintf("%s/objects/%.2s", s->home, bpath);
	_cleanup_free_ char *cmd =
		xasprintf("cp -a '%s' '%s' && rm -rf '%s' && ln -s '%s' '%s'", fan, elsewhere, fan, elsewhere, fan);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(count_files(elsewhere), 1);
	ck_assert_int_lt(store_object_open(s, &b), 0);
	ck_assert_int_eq(store_object_open(s, &b), -EIO);
	ck_assert_int_eq(store_object_read(s, &b, 100, &got), -EIO);
	ck_assert(!store_object_exists(s, &b));
	ck_assert_int_eq(store_object_verify(s, &b, NULL), -EIO);
	struct store_txn *t = store_txn_begin(s);
	struct objid b2;
	ck_assert_int_lt(store_txn_put(t, "another object", 14, &b2, &added), 0);
	store_txn_abort(t);
	ck_assert_int_eq(count_files(elsewhere), 1); /* nothing created there */
	buf_free(&got);
	store_close(s);
}
END_TEST

/* Reads that render or rewrite an object check it against its name. */
START_TEST(test_object_read_checked)
{
	struct store *s = open_test_store();
	struct objid a;
	char path[OBJID_STR_MAX];
	struct buf got = {0};

	put_one(s, "#!/env/bin/python\nprint('hi')\n", &a, path);
	ck_assert_int_eq(store_object_read_checked(s, &a, 100, &got), 0);
	ck_assert_str_eq(got.data, "#!/env/bin/python\nprint('hi')\n");

	/* a copy is checked as the object is */
	_cleanup_free_ char *copy = path_join(tmp_home, "copy");
	_cleanup_close_ int fd = open(copy, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write_full(fd, got.data, got.len), 0);
	ck_assert_int_eq(store_object_check_fd(s, &a, fd), 0);
	ck_assert_int_eq(pwrite(fd, "X", 1, 3), 1);
	ck_assert_int_eq(store_object_check_fd(s, &a, fd), -EIO);
	ck_assert_ptr_nonnull(strstr(vf_last_error(), path));

	/* one byte changed behind the store's back */
	ck_assert_int_eq(fchmodat(s->objects_fd, path, 0644, 0), 0);
	int ofd = openat(s->objects_fd, path, O_WRONLY);
	ck_assert_int_ge(ofd, 0);
	ck_assert_int_eq(pwrite(ofd, "X", 1, 3), 1);
	close(ofd);
	ck_assert_int_eq(store_object_read(s, &a, 100, &got), 0); /* unchecked: as it is */
	ck_assert_int_eq(store_object_read_checked(s, &a, 100, &got), -EIO);
	ck_assert_uint_eq(got.len, 0);
	ck_assert_ptr_nonnull(strstr(vf_last_error(), path));
	ck_assert_ptr_nonnull(strstr(vf_last_error(), "store verify"));
	buf_free(&got);
	store_close(s);
}
END_TEST

/* HOME's own entries are never followed through a symlink either. */
START_TEST(test_store_open_refuses_symlinks)
{
	struct store *s = open_test_store();
	_cleanup_free_ char *home = xstrdup(s->home);
	_cleanup_free_ char *elsewhere = path_join(tmp_home, "elsewhere");
	store_close(s);
	ck_assert_int_eq(mkdir(elsewhere, 0755), 0);

	const char *subdirs[] = {"objects", "packages", "envs", "tmp"};
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		_cleanup_free_ char *p = path_join(home, subdirs[i]);
		_cleanup_free_ char *aside = xasprintf("%s.aside", p);
		ck_assert_int_eq(rename(p, aside), 0);
		ck_assert_int_eq(symlink(elsewhere, p), 0);
		ck_assert_int_eq(store_open(home, false, &s), -EIO);
		ck_assert_ptr_nonnull(strstr(vf_last_error(), subdirs[i]));
		ck_assert_int_eq(unlink(p), 0);
		ck_assert_int_eq(rename(aside, p), 0);
	}
	/* the lock: not created through a dangling symlink, not taken */
	_cleanup_free_ char *lock = path_join(home, "lock");
	_cleanup_free_ char *target = path_join(elsewhere, "lock");
	unlink(lock);
	ck_assert_int_eq(symlink(target, lock), 0);
	ck_assert_int_eq(store_open(home, false, &s), -EIO);
	ck_assert_int_eq(access(target, F_OK), -1);

	/* a package index directory that is a symlink gets nothing */
	ck_assert_int_eq(unlink(lock), 0);
	ck_assert_int_eq(store_open(home, false, &s), 0);
	_cleanup_free_ char *pkg = path_join(home, "packages/six");
	ck_assert_int_eq(symlink(elsewhere, pkg), 0);
	struct objid id = {.hash = {1, 2, 3}};
	ck_assert_int_lt(store_package_register(s, "six", &id), 0);
	ck_assert_int_eq(count_files(elsewhere), 0);
	/* an entry that is there already is fine, whatever its mode */
	ck_assert_int_eq(store_package_register(s, "seven", &id), 0);
	ck_assert_int_eq(store_package_register(s, "seven", &id), 0);
	store_close(s);
}
END_TEST

START_TEST(test_objid_format_parse)
{
	struct objid a = {.seq = 0}, b;
	char hex[OBJID_STR_MAX], path[OBJID_STR_MAX];

	for (int i = 0; i < 16; i++)
		a.hash[i] = (uint8_t)(i * 17);
	objid_format(&a, hex);
	ck_assert_uint_eq(strlen(hex), 32);
	ck_assert_int_eq(objid_parse(hex, strlen(hex), &b), 0);
	ck_assert(objid_equal(&a, &b));
	a.seq = 7;
	objid_format(&a, hex);
	ck_assert(str_has_suffix(hex, ".7"));
	ck_assert_int_eq(objid_parse(hex, strlen(hex), &b), 0);
	ck_assert(objid_equal(&a, &b));
	objid_path(&a, path);
	ck_assert_int_eq(path[2], '/');
	ck_assert_int_eq(objid_parse("zz", 2, &b), -EINVAL);
	ck_assert_int_eq(objid_parse("00112233445566778899aabbccddeeff.0", 34, &b), -EINVAL);
	ck_assert_int_eq(objid_parse("00112233445566778899aabbccddeeffX", 33, &b), -EINVAL);
}
END_TEST

/* ---- trees ------------------------------------------------------------------ */

static void add_file(struct tree_builder *tb, unsigned root, const char *path, uint8_t tag)
{
	struct tree_entry e = {.mode = S_IFREG | 0644, .size = tag, .mtime_sec = TREE_STORE_MTIME};
	memset(e.obj.hash, tag, 16);
	ck_assert_int_eq(tree_builder_add(tb, root, path, strlen(path), &e), 0);
}

START_TEST(test_tree_roundtrip)
{
	struct tree_builder *tb = tree_builder_new(TREE_PACKAGE);
	struct buf out = {0}, out2 = {0}, p = {0};
	struct tree *t;

	tree_builder_set_str(tb, TREE_STR_NAME, "demo", 4);
	tree_builder_set_str(tb, TREE_STR_VERSION, "1.0", 3);
	add_file(tb, TREE_ROOT_SITE, "demo/__init__.py", 1);
	add_file(tb, TREE_ROOT_SITE, "demo/sub/mod.py", 2);
	add_file(tb, TREE_ROOT_SITE, "demo/b.py", 3);
	add_file(tb, TREE_ROOT_SITE, "demo/a.py", 4);
	add_file(tb, TREE_ROOT_ENV, "bin/demo", 5);
	struct tree_entry l = {.mode = S_IFLNK | 0777, .target = "demo/a.py", .target_len = 9};
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_SITE, "link", 4, &l), 0);
	/* a second file at the same path is refused */
	struct tree_entry dup = {.mode = S_IFREG | 0644};
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_SITE, "demo/a.py", 9, &dup), -EEXIST);
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_SITE, "demo/../x", 9, &dup), -EINVAL);
	ck_assert_int_eq(tree_builder_finish(tb, &out), 0);
	tree_builder_free(tb);

	ck_assert_int_eq(tree_load(out.data, out.len, false, &t), 0);
	ck_assert_uint_eq(t->hdr->n_files, 5);
	size_t n;
	const char *name = tree_str(t, TREE_STR_NAME, &n);
	ck_assert_int_eq((int)n, 4);
	ck_assert(!memcmp(name, "demo", 4));

	uint32_t demo = tree_lookup(t, TREE_ROOT_SITE, "demo", 4);
	ck_assert_uint_ne(demo, TREE_NONE);
	ck_assert(S_ISDIR(tree_node(t, demo)->mode));
	ck_assert_uint_eq(tree_node(t, demo)->u.dir.n_children, 4);
	/* children come out sorted */
	const struct tree_node *first = tree_node(t, tree_node(t, demo)->u.dir.first_child);
	ck_assert(!memcmp(tree_name(t, first), "__init__.py", first->name_len));
	uint32_t m = tree_lookup_path(t, TREE_ROOT_SITE, "demo/sub/mod.py", 15);
	ck_assert_uint_ne(m, TREE_NONE);
	ck_assert_uint_eq(tree_node(t, m)->obj_hash[0], 2);
	ck_assert_uint_eq(tree_path(t, m, &p), TREE_ROOT_SITE);
	ck_assert_str_eq(p.data, "demo/sub/mod.py");
	ck_assert_uint_eq(tree_lookup_path(t, TREE_ROOT_SITE, "demo/nope.py", 12), TREE_NONE);
	ck_assert_uint_eq(tree_lookup_path(t, TREE_ROOT_ENV, "bin/demo", 8) != TREE_NONE, 1);
	uint32_t li = tree_lookup(t, TREE_ROOT_SITE, "link", 4);
	ck_assert(S_ISLNK(tree_node(t, li)->mode));
	ck_assert(!memcmp(tree_link_target(t, tree_node(t, li)), "demo/a.py", 9));
	tree_free(t);

	/* the header alone, from a file: what create reads of each candidate */
	FILE *f = tmpfile();
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(out.data, 1, out.len, f), out.len);
	fflush(f);
	struct tree_head h;
	ck_assert_int_eq(tree_read_head(fileno(f), "demo", &h), 0);
	ck_assert_str_eq(h.str[TREE_STR_NAME], "demo");
	ck_assert_str_eq(h.str[TREE_STR_VERSION], "1.0");
	ck_assert_str_eq(h.str[TREE_STR_TAGS], "");
	ck_assert_uint_eq(h.hdr.n_files, 5);
	tree_head_free(&h);
	/* a cut manifest no longer matches its header's offsets */
	ck_assert_int_eq(ftruncate(fileno(f), (off_t)out.len - 1), 0);
	ck_assert_int_lt(tree_read_head(fileno(f), "demo", &h), 0);
	ck_assert_int_eq(ftruncate(fileno(f), 10), 0);
	ck_assert_int_lt(tree_read_head(fileno(f), "demo", &h), 0);
	fclose(f);

	/* canonical: the same input in another order gives the same bytes */
	tb = tree_builder_new(TREE_PACKAGE);
	tree_builder_set_str(tb, TREE_STR_VERSION, "1.0", 3);
	tree_builder_set_str(tb, TREE_STR_NAME, "demo", 4);
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_SITE, "link", 4, &l), 0);
	add_file(tb, TREE_ROOT_ENV, "bin/demo", 5);
	add_file(tb, TREE_ROOT_SITE, "demo/a.py", 4);
	add_file(tb, TREE_ROOT_SITE, "demo/b.py", 3);
	add_file(tb, TREE_ROOT_SITE, "demo/sub/mod.py", 2);
	add_file(tb, TREE_ROOT_SITE, "demo/__init__.py", 1);
	ck_assert_int_eq(tree_builder_finish(tb, &out2), 0);
	tree_builder_free(tb);
	ck_assert_uint_eq(out.len, out2.len);
	ck_assert(!memcmp(out.data, out2.data, out.len));
	buf_free(&out);
	buf_free(&out2);
	buf_free(&p);
}
END_TEST

START_TEST(test_tree_damage_rejected)
{
	struct tree_builder *tb = tree_builder_new(TREE_ENV);
	struct buf out = {0};
	struct tree *t;

	add_file(tb, TREE_ROOT_ENV, "pyvenv.cfg", 1);
	add_file(tb, TREE_ROOT_ENV, "lib/python3.11/site-packages/x.py", 2);
	ck_assert_int_eq(tree_builder_finish(tb, &out), 0);
	tree_builder_free(tb);

	/* every single-byte change anywhere is caught (checksum or header) */
	for (size_t i = 0; i < out.len; i += 7) {
		char *copy = xmemdup(out.data, out.len);
		copy[i] ^= 0x5a;
		ck_assert_int_lt(tree_load(copy, out.len, false, &t), 0);
		free(copy);
	}
	/* truncation */
	ck_assert_int_lt(tree_load(out.data, out.len - 1, false, &t), 0);
	ck_assert_int_lt(tree_load(out.data, 10, false, &t), 0);
	ck_assert_int_eq(tree_load(out.data, out.len, false, &t), 0);
	tree_free(t);
	buf_free(&out);
}
END_TEST

/* ---- Python formats --------------------------------------------------------- */

START_TEST(test_record_parse)
{
	const char *text = "pkg/__init__.py,sha256=abc,12\n"
			   "\"pkg/with,comma.py\",sha256=def,3\r\n"
			   "\"pkg/quo\"\"te.py\",,\n"
			   "pkg-1.0.dist-info/RECORD,,\n";
	struct record r;

	ck_assert_int_eq(record_parse(text, strlen(text), "RECORD", &r), 0);
	ck_assert_uint_eq(r.n, 4);
	ck_assert_str_eq(r.rows[0].path, "pkg/__init__.py");
	ck_assert_str_eq(r.rows[0].hash, "sha256=abc");
	ck_assert_int_eq(r.rows[0].size, 12);
	ck_assert_str_eq(r.rows[1].path, "pkg/with,comma.py");
	ck_assert_int_eq(r.rows[1].line, 2);
	ck_assert_str_eq(r.rows[2].path, "pkg/quo\"te.py");
	ck_assert_int_eq(r.rows[2].size, -1);
	/* the hash field offsets let a template replace "hash,size" */
	ck_assert(!strncmp(text + r.rows[0].hash_off, "sha256=abc,12", r.rows[0].row_end - r.rows[0].hash_off));
	record_free(&r);

	const char *bad[] = {
		"a.py,sha256=x\n",          /* two fields */
		"a.py,sha256=x,12,extra\n", /* four */
		"\"a.py,sha256=x,1\n",      /* unterminated quote */
		"a.py,sha256=x,-3\n",       /* negative size */
		"a.py,sha256=x,12abc\n",    /* not a number */
		",sha256=x,1\n",            /* empty path */
		"a.py,nohash,1\n",          /* hash without '=' */
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *t2 = xasprintf("ok.py,,\n%s", bad[i]);
		ck_assert_int_eq(record_parse(t2, strlen(t2), "x/RECORD", &r), -EINVAL);
		ck_assert_ptr_nonnull(strstr(vf_last_error(), "x/RECORD:2:"));
	}
}
END_TEST

START_TEST(test_pyvenv_cfg)
{
	const char *text = "home = /usr/bin\ninclude-system-site-packages = false\nVersion = 3.11.7\n"
			   "prompt = 'my env'\ngarbage line\nexecutable=/usr/bin/python3.11\n";
	struct pyvenv_cfg c;

	ck_assert_int_eq(pyvenv_cfg_parse(text, strlen(text), &c), 0);
	ck_assert_str_eq(pyvenv_cfg_get(&c, "home"), "/usr/bin");
	ck_assert_str_eq(pyvenv_cfg_get(&c, "version"), "3.11.7");
	ck_assert_str_eq(pyvenv_cfg_get(&c, "prompt"), "'my env'");
	ck_assert_str_eq(pyvenv_cfg_get(&c, "executable"), "/usr/bin/python3.11");
	ck_assert_ptr_null(pyvenv_cfg_get(&c, "command"));
	pyvenv_cfg_free(&c);
}
END_TEST

START_TEST(test_metadata)
{
	const char *meta = "Metadata-Version: 2.1\nName: Foo_Bar.baz\nVersion: 2.0.1\n"
			   "Requires-Dist: idna (>=2.5)\nRequires-Dist: urllib3 ; extra == 'x'\n\nBody\nName: no\n";
	struct buf b = {0};
	_cleanup_free_ char *norm = NULL;

	ck_assert_uint_eq(rfc822_get(meta, strlen(meta), "name", ' ', &b), 1);
	ck_assert_str_eq(b.data, "Foo_Bar.baz");
	norm = pep503_normalize(b.data, b.len);
	ck_assert_str_eq(norm, "foo-bar-baz");
	ck_assert_uint_eq(rfc822_get(meta, strlen(meta), "Requires-Dist", '\n', &b), 2);
	ck_assert_str_eq(b.data, "idna (>=2.5)\nurllib3 ; extra == 'x'");
	buf_free(&b);
}
END_TEST

START_TEST(test_pyc)
{
	uint8_t hdr[16] = {0xa7, 0x0d, '\r', '\n', 0, 0, 0, 0, 0x10, 0x20, 0x30, 0x40, 5, 0, 0, 0};
	uint32_t m, s;
	_cleanup_free_ char *a = NULL, *b = NULL, *c = NULL, *d = NULL;

	ck_assert(pyc_timestamp_header(hdr, 16, &m, &s));
	ck_assert_uint_eq(m, 0x40302010);
	ck_assert_uint_eq(s, 5);
	pyc_set_mtime(hdr, 0x01020304);
	ck_assert(pyc_timestamp_header(hdr, 16, &m, &s));
	ck_assert_uint_eq(m, 0x01020304);
	hdr[4] = 1; /* hash-based */
	ck_assert(!pyc_timestamp_header(hdr, 16, &m, &s));
	ck_assert(!pyc_timestamp_header(hdr, 8, &m, &s));

	a = pyc_source_path("pkg/__pycache__/mod.cpython-311.pyc", 35);
	ck_assert_str_eq(a, "pkg/mod.py");
	b = pyc_source_path("__pycache__/top.cpython-311.opt-1.pyc", 37);
	ck_assert_str_eq(b, "top.py");
	c = pyc_source_path("pkg/mod.cpython-311.pyc", 23);
	ck_assert_ptr_null(c);
	d = pyc_source_path("x__pycache__/m.cpython-311.pyc", 30);
	ck_assert_ptr_null(d);
}
END_TEST

START_TEST(test_pep440)
{
	ck_assert_int_lt(pep440_cmp("1.0", "1.0.1"), 0);
	ck_assert_int_eq(pep440_cmp("1.0", "1.0.0"), 0);
	ck_assert_int_lt(pep440_cmp("1.0a1", "1.0"), 0);
	ck_assert_int_lt(pep440_cmp("1.0.dev1", "1.0a1"), 0);
	ck_assert_int_lt(pep440_cmp("1.0rc2", "1.0"), 0);
	ck_assert_int_gt(pep440_cmp("1.0.post1", "1.0"), 0);
	ck_assert_int_gt(pep440_cmp("2.10", "2.9"), 0);
	ck_assert_int_gt(pep440_cmp("1!0.1", "9.9"), 0);
	ck_assert(pep440_match("2.31.0", "==", "2.31.0"));
	ck_assert(pep440_match("2.31.0", "==", "2.31.*"));
	ck_assert(!pep440_match("2.32.0", "==", "2.31.*"));
	ck_assert(pep440_match("1.4.5", "~=", "1.4.2"));
	ck_assert(!pep440_match("1.5.0", "~=", "1.4.2"));
	ck_assert(pep440_match_set("1.26.4", ">=1.20,<2"));
	ck_assert(!pep440_match_set("2.0.0", ">=1.20,<2"));
	ck_assert(pep440_match_set("3.0", ""));
	ck_assert(pep440_match_set("1.0+local", "==1.0"));
}
END_TEST

/* ---- templates ---------------------------------------------------------------- */

static int render_str(const struct buf *blob, const char *env, struct buf *out)
{
	struct tpl_ctx c = {.env = env};

	return tpl_render(blob->data, blob->len, &c, out);
}

START_TEST(test_template_subst)
{
	const char *act = "VIRTUAL_ENV=\"/srv/envs/web\"\nPS1=\"(web) ${PS1:-}\"\nX=/srv/envs/webby\n";
	struct tpl_paths p = {.env = "/srv/envs/web", .env_real = "/srv/envs/web", .prompt = "web"};
	struct buf blob = {0}, out = {0};

	ck_assert_int_eq(tpl_make_subst(act, strlen(act), &p, &blob), 1);
	ck_assert_int_eq(render_str(&blob, "/srv/envs/web", &out), 0);
	ck_assert_str_eq(out.data, act); /* same path: same bytes */
	ck_assert_int_eq(render_str(&blob, "/mnt/v/api", &out), 0);
	/* "/srv/envs/webby" is another path and stays */
	ck_assert_str_eq(out.data, "VIRTUAL_ENV=\"/mnt/v/api\"\nPS1=\"(api) ${PS1:-}\"\nX=/srv/envs/webby\n");

	const char *plain = "nothing to see\n";
	ck_assert_int_eq(tpl_make_subst(plain, strlen(plain), &p, &blob), 0);
	buf_free(&blob);
	buf_free(&out);
}
END_TEST

START_TEST(test_template_shebang)
{
	const char *script = "#!/srv/e/bin/python3\nimport sys\nsys.exit(0)\n";
	struct tpl_paths p = {.env = "/srv/e", .env_real = "/srv/e"};
	struct buf blob = {0}, out = {0};

	ck_assert_int_eq(tpl_make_subst(script, strlen(script), &p, &blob), 1);
	ck_assert_int_eq(render_str(&blob, "/srv/e", &out), 0);
	ck_assert_str_eq(out.data, script);
	ck_assert_int_eq(render_str(&blob, "/a/b", &out), 0);
	ck_assert_str_eq(out.data, "#!/a/b/bin/python3\nimport sys\nsys.exit(0)\n");

	/* a path with a space: the /bin/sh trampoline, quoted */
	ck_assert_int_eq(render_str(&blob, "/a b", &out), 0);
	ck_assert_str_eq(out.data,
			 "#!/bin/sh\n'''exec' \"/a b/bin/python3\" \"$0\" \"$@\"\n' '''\nimport sys\nsys.exit(0)\n");

	/* a path that makes the line longer than 127 bytes */
	char longp[200];
	memset(longp, 'x', sizeof(longp));
	longp[0] = '/';
	longp[130] = '\0';
	ck_assert_int_eq(render_str(&blob, longp, &out), 0);
	ck_assert(str_has_prefix(out.data, "#!/bin/sh\n'''exec' /xxx"));
	ck_assert_ptr_nonnull(strstr(out.data, "/bin/python3 \"$0\" \"$@\"\n' '''\nimport sys\n"));
	buf_free(&blob);
	buf_free(&out);
}
END_TEST

static int fake_render(void *cb, unsigned root, const char *path, size_t n, struct buf *out)
{
	(void)cb;
	ck_assert_uint_eq(root, 0);
	ck_assert(n == 7 && !memcmp(path, "bin/foo", 7));
	buf_reset(out);
	buf_adds(out, "abc"); /* sha256("abc") is well known */
	return 0;
}

START_TEST(test_template_record)
{
	const char *rec = "../../../bin/foo,sha256=OLD,99\nfoo/__init__.py,sha256=keep,1\n";
	struct buf blob = {0}, out = {0};

	tpl_record_begin(&blob);
	tpl_record_literal(&blob, rec, 17);
	tpl_record_row(&blob, 0, "bin/foo", 7);
	tpl_record_literal(&blob, rec + 30, strlen(rec) - 30);
	tpl_record_end(&blob);
	struct tpl_ctx c = {.env = "/x", .render_file = fake_render};
	ck_assert_int_eq(tpl_render(blob.data, blob.len, &c, &out), 0);
	ck_assert_str_eq(out.data, "../../../bin/foo,sha256=ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0,3\n"
				   "foo/__init__.py,sha256=keep,1\n");
	buf_free(&blob);
	buf_free(&out);
}
END_TEST

/* ---- env manifests ----------------------------------------------------------- */

START_TEST(test_env_manifest)
{
	struct env *e = xcalloc(1, sizeof(*e)), *f;
	struct buf text = {0};
	struct objid id = {.seq = 3};

	e->name = xstrdup("web");
	e->uid = 0x1234;
	e->python_home = xstrdup("/opt/py 3/bin");
	e->python_executable = xstrdup("/opt/py 3/bin/python3.11");
	e->python_version = xstrdup("3.11.7");
	e->origin = xstrdup("/home/me/odd\nname/.venv");
	memset(id.hash, 0x42, 16);
	e->tree = id;
	env_add_package(e, &id, "requests", "2.31.0");
	env_format(e, &text);
	ck_assert_int_eq(env_parse(text.data, text.len, "env", &f), 0);
	ck_assert_str_eq(f->python_home, "/opt/py 3/bin");
	ck_assert_str_eq(f->origin, "/home/me/odd\nname/.venv");
	ck_assert_uint_eq(f->uid, 0x1234);
	ck_assert_uint_eq(f->n_pkgs, 1);
	ck_assert_str_eq(f->pkgs[0].version, "2.31.0");
	ck_assert(objid_equal(&f->pkgs[0].id, &id));
	char *site = env_site_dir(f);
	ck_assert_str_eq(site, "lib/python3.11/site-packages");
	free(site);
	env_free(f);

	/* cut short anywhere (what a crash soon after a create can leave),
	 * zeros, one byte changed: refused; a version 1 manifest (no end
	 * line) still reads */
	for (size_t n = 0; n < text.len; n++) {
		ck_assert_int_eq(env_parse(text.data, n, "env", &f), -EIO);
		ck_assert_ptr_nonnull(strstr(vf_last_error(), "incomplete"));
	}
	char *zeros = xcalloc(1, text.len);
	ck_assert_int_eq(env_parse(zeros, text.len, "env", &f), -EIO);
	free(zeros);
	char *flip = xstrndup(text.data, text.len);
	*strstr(flip, "2.31.0") = '3';
	ck_assert_int_eq(env_parse(flip, text.len, "env", &f), -EIO);
	ck_assert_ptr_nonnull(strstr(vf_last_error(), "checksum"));
	free(flip);
	char *end = strstr(text.data, "\nend ");
	ck_assert_ptr_nonnull(end);
	ck_assert_str_eq(end + 21, "\n"); /* the last line */
	size_t body = (size_t)(end + 1 - text.data);
	_cleanup_free_ char *v1 = xasprintf("venvfs-env 1\n%.*s", (int)(body - 13), text.data + 13);
	ck_assert_int_eq(env_parse(v1, strlen(v1), "env", &f), 0);
	ck_assert_uint_eq(f->n_pkgs, 1);
	env_free(f);
	ck_assert_int_lt(env_parse("junk\n", 5, "env", &f), 0);
	ck_assert(!env_valid_name(".hidden"));
	ck_assert(!env_valid_name("a/b"));
	ck_assert(env_valid_name("py3.11-web_1"));
	env_free(e);
	buf_free(&text);
}
END_TEST

START_TEST(test_env_install_and_gc)
{
	struct store *s = open_test_store();
	struct store_txn *t = store_txn_begin(s);
	struct tree_builder *tb = tree_builder_new(TREE_ENV);
	struct buf out = {0};
	struct objid tid, junk;
	uint64_t added;

	add_file(tb, TREE_ROOT_ENV, "lib/python3.11/site-packages/x.py", 0);
	/* the file's object must exist for the env to verify */
	struct objid fid;
	ck_assert_int_eq(store_txn_put(t, "", 0, &fid, &added), 0);
	tree_builder_free(tb);
	tb = tree_builder_new(TREE_ENV);
	struct tree_entry fe = {.mode = S_IFREG | 0644, .obj = fid};
	ck_assert_int_eq(tree_builder_add(tb, 0, "lib/python3.11/site-packages/x.py", 33, &fe), 0);
	ck_assert_int_eq(tree_builder_finish(tb, &out), 0);
	tree_builder_free(tb);
	ck_assert_int_eq(store_txn_put(t, out.data, out.len, &tid, &added), 0);
	ck_assert_int_eq(store_txn_put(t, "garbage", 7, &junk, &added), 0);
	ck_assert_int_eq(store_txn_commit(t), 0);

	struct env *e = xcalloc(1, sizeof(*e));
	e->name = xstrdup("unit");
	e->python_version = xstrdup("3.11.7");
	e->python_home = xstrdup("/usr/bin");
	e->tree = tid;
	ck_assert_int_eq(env_install(s, e, false, NULL), 0);
	ck_assert_int_eq(env_install(s, e, false, NULL), -EEXIST);
	ck_assert_int_eq(env_install(s, e, true, NULL), 0);
	ck_assert(env_exists(s, "unit"));

	struct verify_stats vs;
	ck_assert_int_eq(store_verify(s, false, NULL, NULL, &vs), 0);
	ck_assert_uint_eq(vs.envs, 1);

	struct gc_stats gs;
	ck_assert_int_eq(store_gc(s, false, &gs), 0);
	ck_assert_uint_eq(gs.objects, 1); /* "garbage" only */
	ck_assert(!store_object_exists(s, &junk));
	ck_assert(store_object_exists(s, &tid));
	ck_assert(store_object_exists(s, &fid));

	ck_assert_int_eq(env_remove(s, "unit"), 0);
	ck_assert(!env_exists(s, "unit"));
	ck_assert_int_eq(store_gc(s, false, &gs), 0);
	ck_assert_uint_eq(gs.objects, 2);
	env_free(e);
	buf_free(&out);
	store_close(s);
}
END_TEST

/*
 * A create returns before the disk has its env (store/env.c env_install): a
 * crash can leave the name with an empty or cut manifest. Such an env reads
 * as damaged, is replaced by a create of that name and removed by gc; one
 * whose writable layer holds files is neither (its files are the user's).
 */
/* An env named name of an empty env tree (in s), not installed. */
static struct env *empty_env(struct store *s, const char *name)
{
	struct store_txn *t = store_txn_begin(s);
	struct tree_builder *tb = tree_builder_new(TREE_ENV);
	struct buf out = {0};
	uint64_t added;
	struct env *e = xcalloc(1, sizeof(*e));

	ck_assert_int_eq(tree_builder_finish(tb, &out), 0);
	tree_builder_free(tb);
	ck_assert_int_eq(store_txn_put(t, out.data, out.len, &e->tree, &added), 0);
	ck_assert_int_eq(store_txn_commit(t), 0);
	buf_free(&out);
	e->name = xstrdup(name);
	e->python_version = xstrdup("3.11.7");
	e->python_home = xstrdup("/usr/bin");
	return e;
}

/* The names under envs/ and envs/NAME/ (store/env.c alone spells them)
 * and venvfs mv: a rename never over an env, the manifest named anew. */
START_TEST(test_env_names_and_rename)
{
	struct store *s = open_test_store();
	struct env *e, *f;
	bool trash;
	char *n = env_tmp_name("clone", "web");
	char *said;

	ck_assert(str_has_prefix(n, ".clone-web-") && env_is_tmp_name(n));
	free(n);
	ck_assert(!env_is_tmp_name("web") && !env_is_tmp_name(".lock"));
	n = env_layer_new_name();
	ck_assert(env_is_layer_name(n, &trash) && !trash && env_is_own_entry(n));
	free(n);
	ck_assert(env_is_layer_name(".trash-upper-1234abcd", &trash) && trash);
	ck_assert(!env_is_own_entry(".trash-upper") && !env_is_own_entry("notes.txt"));
	ck_assert(env_is_own_entry("env") && env_is_own_entry("views") && env_is_own_entry("work"));

	e = empty_env(s, "a");
	ck_assert_int_eq(env_install(s, e, false, NULL), 0);
	free(e->name);
	e->name = xstrdup("b");
	ck_assert_int_eq(env_install(s, e, false, NULL), 0);
	ck_assert_int_eq(env_rename(s, "a", "b"), -EEXIST);
	ck_assert_int_eq(env_rename(s, "nope", "c"), -ENOENT);
	ck_assert_int_eq(env_rename(s, "a", "../c"), -EINVAL);
	ck_assert_int_eq(env_rename(s, "a", "c"), 0);
	ck_assert(!env_exists(s, "a") && env_exists(s, "c"));
	ck_assert_int_eq(env_manifest_name(s, "c", &said), 0);
	ck_assert_str_eq(said, "c");
	free(said);
	ck_assert_int_eq(env_load(s, "c", &f), 0);
	ck_assert_str_eq(f->python_version, "3.11.7");
	env_free(f);
	/* the env lock of either name held (a daemon serving it): refused */
	int lock = env_lock(s, "c");
	ck_assert_int_ge(lock, 0);
	ck_assert_int_eq(env_rename(s, "c", "d"), -EBUSY);
	close(lock);
	env_free(e);
	store_close(s);
}
END_TEST

START_TEST(test_env_torn_by_a_crash)
{
	struct store *s = open_test_store();
	struct buf text = {0};
	struct env *e = empty_env(s, "torn"), *f;
	struct gc_stats gs;

	env_format(e, &text);

	for (int round = 0; round < 3; round++) {
		ck_assert_int_eq(env_install(s, e, false, NULL), 0);
		ck_assert(!env_torn(s, "torn"));
		/* round 0: emptied; 1: cut inside the end line; 2: zeros */
		int fd = openat(s->envs_fd, "torn/env", O_WRONLY | O_TRUNC | O_CLOEXEC);
		ck_assert_int_ge(fd, 0);
		if (round == 1)
			ck_assert_int_eq(write_full(fd, text.data, text.len - 5), 0);
		if (round == 2) {
			char *z = xcalloc(1, text.len);
			ck_assert_int_eq(write_full(fd, z, text.len), 0);
			free(z);
		}
		close(fd);
		ck_assert(env_exists(s, "torn"));
		ck_assert(env_torn(s, "torn"));
		ck_assert_int_eq(env_load(s, "torn", &f), -EIO);
		if (round < 2) {
			ck_assert_int_eq(env_install(s, e, false, NULL), 0); /* created again over it */
			ck_assert_int_eq(env_load(s, "torn", &f), 0);
			env_free(f);
			ck_assert_int_eq(env_remove(s, "torn"), 0);
		} else {
			ck_assert_int_eq(store_gc(s, false, &gs), 0);
			ck_assert_uint_eq(gs.leftover_envs, 1);
			ck_assert(!env_exists(s, "torn"));
		}
	}

	/* files in its writable layer: not torn, kept; gc refuses to guess */
	ck_assert_int_eq(env_install(s, e, false, NULL), 0);
	int fd = openat(s->envs_fd, "torn/env", O_WRONLY | O_TRUNC | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	close(fd);
	fd = openat(s->envs_fd, "torn/upper/mine.py", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert(!env_torn(s, "torn"));
	ck_assert_int_eq(env_install(s, e, false, NULL), -EEXIST);
	ck_assert_int_eq(store_gc(s, false, &gs), -EIO);
	ck_assert(env_exists(s, "torn"));
	ck_assert_int_eq(env_make_durable(s, "torn"), 0);

	env_free(e);
	buf_free(&text);
	store_close(s);
}
END_TEST

/* ---- util ----------------------------------------------------------------------- */

START_TEST(test_util_paths)
{
	_cleanup_free_ char *a = path_absolute("/a/./b//c/../d/");
	_cleanup_free_ char *b = path_absolute("/..");
	_cleanup_free_ char *c = text_escape("a b%\n\xff", 6);
	struct buf d = {0};

	ck_assert_str_eq(a, "/a/b/d");
	ck_assert_str_eq(b, "/");
	ck_assert_str_eq(c, "a%20b%25%0A%FF");
	ck_assert_int_eq(text_unescape(c, &d), 0);
	ck_assert(d.len == 6 && !memcmp(d.data, "a b%\n\xff", 6));
	ck_assert_int_eq(text_unescape("%zz", &d), -EINVAL);
	ck_assert_int_eq(text_unescape("%00", &d), -EINVAL);
	buf_free(&d);

	struct strmap m = {0};
	for (int i = 0; i < 1000; i++) {
		char k[16];
		snprintf(k, sizeof(k), "k%d", i);
		*strmap_put(&m, k, strlen(k), NULL) = (uint64_t)i;
	}
	ck_assert_uint_eq(*strmap_get(&m, "k777", 4), 777);
	ck_assert_ptr_null(strmap_get(&m, "k1000", 5));
	strmap_free(&m);
}
END_TEST

/* ---- package equivalence ---------------------------------------------------- */

/* A package "demo" 1.0: a source, its pyc (flags, object tag), a data file. */
static void demo_package(struct store *s, uint16_t pyc_flags, uint8_t pyc_tag, uint8_t data_tag, int64_t src_mtime,
			 struct buf *out, struct objid *id)
{
	struct tree_builder *tb = tree_builder_new(TREE_PACKAGE);
	struct tree_entry src = {.mode = S_IFREG | 0644, .size = 10, .mtime_sec = src_mtime};
	struct tree_entry pyc = {
		.mode = S_IFREG | 0644, .size = 20u + pyc_tag, .flags = pyc_flags, .mtime_sec = TREE_STORE_MTIME};
	struct store_txn *t = store_txn_begin(s);
	uint64_t added;

	tree_builder_set_str(tb, TREE_STR_NAME, "demo", 4);
	tree_builder_set_str(tb, TREE_STR_VERSION, "1.0", 3);
	memset(src.obj.hash, 1, 16);
	memset(pyc.obj.hash, pyc_tag, 16);
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_SITE, "demo/m.py", 9, &src), 0);
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_SITE, "demo/__pycache__/m.cpython-311.pyc", 34, &pyc), 0);
	add_file(tb, TREE_ROOT_SITE, "demo/data.txt", data_tag);
	buf_reset(out);
	ck_assert_int_eq(tree_builder_finish(tb, out), 0);
	tree_builder_free(tb);
	if (id) {
		ck_assert_int_eq(store_txn_put(t, out->data, out->len, id, &added), 0);
		ck_assert_int_eq(store_txn_commit(t), 0);
		ck_assert_int_eq(store_package_register(s, "demo", id), 0);
	} else {
		store_txn_abort(t);
	}
}

static bool has_equivalent(struct store *s, const struct buf *m, struct objid *found)
{
	struct tree *t;
	ck_assert_int_eq(tree_load(m->data, m->len, false, &t), 0);
	bool r = package_find_equivalent(s, t, found);
	tree_free(t);
	return r;
}

START_TEST(test_package_equivalence)
{
	struct store *s = open_test_store();
	struct buf m = {0};
	struct objid imported, found;

	/* nothing of that name yet */
	demo_package(s, TREE_F_PYC_NORM, 7, 3, TREE_STORE_MTIME, &m, NULL);
	ck_assert(!has_equivalent(s, &m, &found));
	/* an imported package: canonical bytecode */
	demo_package(s, TREE_F_PYC_NORM, 7, 3, TREE_STORE_MTIME, &m, &imported);
	/* the same wheel absorbed from an env: bytecode kept as pip wrote it,
	 * other bytes, the source at its install time: the same package */
	demo_package(s, TREE_F_PYC_KEPT, 9, 3, 1700000000, &m, NULL);
	ck_assert(has_equivalent(s, &m, &found));
	ck_assert(objid_equal(&found, &imported));
	/* another data file: another package */
	demo_package(s, TREE_F_PYC_KEPT, 9, 4, 1700000000, &m, NULL);
	ck_assert(!has_equivalent(s, &m, &found));
	/* bytecode not valid for its source must be the same bytes */
	demo_package(s, 0, 9, 3, 1700000000, &m, NULL);
	ck_assert(!has_equivalent(s, &m, &found));
	buf_free(&m);
	store_close(s);
}
END_TEST

static Suite *store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc;

	tc = tcase_create("objects");
	tcase_add_checked_fixture(tc, setup_home, teardown_home);
	tcase_add_test(tc, test_object_dedup);
	tcase_add_test(tc, test_object_forced_collision);
	tcase_add_test(tc, test_object_corruption_detected);
	tcase_add_test(tc, test_txn_abort_leaves_nothing);
	tcase_add_loop_test(tc, test_object_symlinks_refused, 0, 2);
	tcase_add_loop_test(tc, test_fanout_symlinks_refused, 0, 2);
	tcase_add_test(tc, test_object_read_checked);
	tcase_add_test(tc, test_store_open_refuses_symlinks);
	tcase_add_test(tc, test_objid_format_parse);
	suite_add_tcase(s, tc);

	tc = tcase_create("trees");
	tcase_add_test(tc, test_tree_roundtrip);
	tcase_add_test(tc, test_tree_damage_rejected);
	suite_add_tcase(s, tc);

	tc = tcase_create("formats");
	tcase_add_test(tc, test_record_parse);
	tcase_add_test(tc, test_pyvenv_cfg);
	tcase_add_test(tc, test_metadata);
	tcase_add_test(tc, test_pyc);
	tcase_add_test(tc, test_pep440);
	suite_add_tcase(s, tc);

	tc = tcase_create("templates");
	tcase_add_test(tc, test_template_subst);
	tcase_add_test(tc, test_template_shebang);
	tcase_add_test(tc, test_template_record);
	suite_add_tcase(s, tc);

	tc = tcase_create("envs");
	tcase_add_checked_fixture(tc, setup_home, teardown_home);
	tcase_add_test(tc, test_env_manifest);
	tcase_add_test(tc, test_env_install_and_gc);
	tcase_add_test(tc, test_env_torn_by_a_crash);
	tcase_add_test(tc, test_env_names_and_rename);
	tcase_add_test(tc, test_package_equivalence);
	tcase_add_test(tc, test_util_paths);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(store_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
