/*
 * test_parsers.c - table-driven tests of every parser of outside input
 * (Check): RECORD, METADATA and WHEEL headers, pyvenv.cfg, requirements,
 * markers and versions, wheel tags, pyc headers and marshalled strings,
 * templates (console scripts, activate), tree manifests, env manifests
 * and the import stat cache.
 *
 * Each parser gets a table of valid inputs with what they must give and a
 * table of bad ones (truncated, huge fields, NULs, bad UTF-8, quotes,
 * overflowing numbers, CRLF) with the error they must give. The fuzz
 * targets of tests/fuzz run the same parsers on generated inputs; each
 * bug they found is a case here too ("regression").
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <xxhash.h>

#include "distinfo.h"
#include "env.h"
#include "package.h"
#include "pyc.h"
#include "requirement.h"
#include "statcache.h"
#include "store.h"
#include "template.h"
#include "tree.h"
#include "util.h"

/* A literal and its length, NULs inside included. */
#define T(s) s, sizeof(s) - 1

/* Does the last error mention want? */
static bool error_says(const char *want)
{
	return strstr(vf_last_error(), want) != NULL;
}

/* A string of n copies of c (free it). */
static char *repeat(char c, size_t n)
{
	char *s = xmalloc(n + 1);

	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* ---- RECORD --------------------------------------------------------------- */

static const struct {
	const char *text;
	size_t len;
	size_t n;           /* rows */
	const char *path;   /* of the first row */
	const char *hash;   /* of the first row */
	int64_t size;       /* of the first row */
	const char *last;   /* path of the last row */
	unsigned last_line; /* its line */
} record_ok[] = {
	{T("a.py,sha256=x,1\n"), 1, "a.py", "sha256=x", 1, "a.py", 1},
	{T("a.py,sha256=x,1"), 1, "a.py", "sha256=x", 1, "a.py", 1}, /* no final newline */
	{T("a.py,sha256=x,1\r\nb.py,,\r\n"), 2, "a.py", "sha256=x", 1, "b.py", 2},
	{T("\n\r\na.py,,\n\nb.py,,\n"), 2, "a.py", "", -1, "b.py", 5}, /* blank lines count */
	{T("\"a,b.py\",,\n"), 1, "a,b.py", "", -1, "a,b.py", 1},
	{T("\"q\"\"x.py\",,\n"), 1, "q\"x.py", "", -1, "q\"x.py", 1},
	{T("a.py,\"sha256=x\",\"3\"\n"), 1, "a.py", "sha256=x", 3, "a.py", 1},
	{T("pkg/\xc3\xbcn\xc3\xaf.py,,0\n"), 1, "pkg/\xc3\xbcn\xc3\xaf.py", "", 0, "pkg/\xc3\xbcn\xc3\xaf.py", 1},
	/* paths are bytes: bad UTF-8 passes */
	{T("pkg/\xff\xfe.py,,\n"), 1, "pkg/\xff\xfe.py", "", -1, "pkg/\xff\xfe.py", 1},
	{T("a,,9223372036854775807\n"), 1, "a", "", INT64_MAX, "a", 1},
	{T("../../../bin/x,sha256=AAAA,0\n"), 1, "../../../bin/x", "sha256=AAAA", 0, "../../../bin/x", 1},
	{T(""), 0, NULL, NULL, 0, NULL, 0},
};

static const struct {
	const char *text;
	size_t len;
	const char *where; /* "RECORD:<line>:" */
	const char *error;
} record_bad[] = {
	{T("a.py,,\n\0b,,\n"), "RECORD", "NUL byte"},
	{T("a.py,sha256=x\n"), "RECORD:1:", "expected 3 fields"},
	{T("a.py,sha256=x,1,extra\n"), "RECORD:1:", "expected 3 fields"},
	{T("ok,,\r\nb.py,sha"), "RECORD:2:", "expected 3 fields"},  /* cut short */
	{T("\"a.py,,\n"), "RECORD:1:", "malformed CSV quoting"},    /* unterminated */
	{T("\"a\"b.py,,\n"), "RECORD:1:", "malformed CSV quoting"}, /* text after the quote */
	{T("a\"b.py,,\n"), "RECORD:1:", "malformed CSV quoting"},   /* quote inside */
	{T("a.py,sha256=x,-3\n"), "RECORD:1:", "size is not"},
	{T("a.py,sha256=x,99999999999999999999\n"), "RECORD:1:", "size is not"},
	{T("a.py,sha256=x,+5\n"), "RECORD:1:", "size is not"},
	{T("a.py,sha256=x, 5\n"), "RECORD:1:", "size is not"},
	{T("a.py,sha256=x,0x10\n"), "RECORD:1:", "size is not"},
	{T("a.py,sha256=x,12abc\n"), "RECORD:1:", "size is not"},
	{T(",sha256=x,1\n"), "RECORD:1:", "empty path"},
	{T("\"\",,\n"), "RECORD:1:", "empty path"},
	{T("a.py,nohash,1\n"), "RECORD:1:", "hash is not of the form"},
	{T("ok,,\nok2,,\r\n\"x,,\r\n"), "RECORD:3:", "malformed CSV quoting"},
};

START_TEST(test_record)
{
	struct record r;

	for (size_t i = 0; i < ARRAY_SIZE(record_ok); i++) {
		const char *text = record_ok[i].text;
		ck_assert_msg(record_parse(text, record_ok[i].len, "RECORD", &r) == 0, "record_ok[%zu]: %s", i,
			      vf_last_error());
		ck_assert_uint_eq(r.n, record_ok[i].n);
		if (r.n) {
			ck_assert_str_eq(r.rows[0].path, record_ok[i].path);
			ck_assert_str_eq(r.rows[0].hash, record_ok[i].hash);
			ck_assert_int_eq(r.rows[0].size, record_ok[i].size);
			ck_assert_str_eq(r.rows[r.n - 1].path, record_ok[i].last);
			ck_assert_uint_eq(r.rows[r.n - 1].line, record_ok[i].last_line);
		}
		for (size_t k = 0; k < r.n; k++) {
			ck_assert_uint_lt(r.rows[k].row_off, r.rows[k].hash_off);
			ck_assert_uint_le(r.rows[k].hash_off, r.rows[k].row_end);
			ck_assert_uint_le(r.rows[k].row_end, record_ok[i].len);
		}
		record_free(&r);
	}
	for (size_t i = 0; i < ARRAY_SIZE(record_bad); i++) {
		ck_assert_msg(record_parse(record_bad[i].text, record_bad[i].len, "RECORD", &r) == -EINVAL,
			      "record_bad[%zu] accepted", i);
		ck_assert_msg(error_says(record_bad[i].where) && error_says(record_bad[i].error), "record_bad[%zu]: %s",
			      i, vf_last_error());
		ck_assert_uint_eq(r.n, 0);
		ck_assert_ptr_null(r.rows);
	}
	/* a huge path, and many rows */
	_cleanup_free_ char *path = repeat('p', 100000);
	_cleanup_free_ char *big = xasprintf("%s,sha256=x,1\n", path);
	ck_assert_int_eq(record_parse(big, strlen(big), "RECORD", &r), 0);
	ck_assert_uint_eq(strlen(r.rows[0].path), 100000);
	record_free(&r);
	struct buf many = {0};
	for (int i = 0; i < 5000; i++)
		buf_printf(&many, "f%d.py,sha256=x,%d\n", i, i);
	ck_assert_int_eq(record_parse(many.data, many.len, "RECORD", &r), 0);
	ck_assert_uint_eq(r.n, 5000);
	ck_assert_int_eq(r.rows[4999].size, 4999);
	record_free(&r);
	buf_free(&many);
}
END_TEST

/* ---- METADATA and WHEEL ------------------------------------------------------ */

static const struct {
	const char *text;
	size_t len;
	const char *field;
	char sep;
	size_t count;
	const char *value;
} rfc822_cases[] = {
	{T("Name: foo\nVersion: 1.0\n"), "Name", ' ', 1, "foo"},
	{T("name: foo\n"), "NAME", ' ', 1, "foo"}, /* case-insensitive */
	{T("Requires-Dist: a\nRequires-Dist: b (>=1)\n"), "Requires-Dist", '\n', 2, "a\nb (>=1)"},
	{T("Tag: py2-none-any\nTag: py3-none-any\n"), "Tag", ' ', 2, "py2-none-any py3-none-any"},
	{T("Name: a\n\nName: b\n"), "Name", ' ', 1, "a"}, /* the body is not headers */
	{T("Name: a\r\nVersion: 2\r\n\r\nName: b\r\n"), "Name", ' ', 1, "a"},
	{T("Name: a\r\nVersion: 2\r\n"), "Version", ' ', 1, "2"},
	{T("Name-X: a\nNamex: b\n"), "Name", ' ', 0, ""}, /* another field */
	{T("Name foo\n"), "Name", ' ', 0, ""},            /* no colon */
	{T("Name:\n"), "Name", ' ', 1, ""},
	{T("Name:   a b  \t\n"), "Name", ' ', 1, "a b"},
	{T("Name: ab\0cd\n"), "Name", ' ', 1, "ab"}, /* a NUL ends the value */
	{T("Name: \xff\xfe\n"), "Name", ' ', 1, "\xff\xfe"},
	{T("Summary: a\n  continued\nName: x\n"), "Summary", ' ', 1, "a"}, /* no folding */
	{T(""), "Name", ' ', 0, ""},
	{T("\nName: a\n"), "Name", ' ', 0, ""},
	{T("Name: a"), "Name", ' ', 1, "a"},
	{T("Name"), "Name", ' ', 0, ""}, /* cut short */
};

static const struct {
	const char *dist_info;
	const char *metadata, *wheel;
	const char *name, *version, *tags, *requires;
} dist_meta_cases[] = {
	{"foo-1.0.dist-info", "Name: Foo_Bar\nVersion: 2.0\nRequires-Dist: a\nRequires-Dist: b; extra == 'x'\n",
	 "Tag: py3-none-any\nTag: cp311-cp311-linux_x86_64\n", "foo-bar", "2.0",
	 "py3-none-any cp311-cp311-linux_x86_64", "a\nb; extra == 'x'"},
	{"lib/site/Foo.Bar-3.1.dist-info", "", "", "foo-bar", "3.1", "", ""}, /* the name decides */
	{"noversion.dist-info", "", "", "noversion", "0", "", ""},
	{"x-1.dist-info", "Name: ../../etc\n", "", "unnamed", "1", "", ""}, /* never a path */
	{"x-1.dist-info", "Name: .hidden\n", "", "hidden", "1", "", ""},
	{"x-1.dist-info", "Name:\nVersion:\n", "", "unnamed", "", "", ""},
	{"x-1.dist-info", "Name: A\r\nVersion: 1.0\r\n\r\n", "Tag: py3-none-any\r\n", "a", "1.0", "py3-none-any", ""},
};

START_TEST(test_metadata)
{
	struct buf v = {0};

	for (size_t i = 0; i < ARRAY_SIZE(rfc822_cases); i++) {
		size_t n = rfc822_get(rfc822_cases[i].text, rfc822_cases[i].len, rfc822_cases[i].field,
				      rfc822_cases[i].sep, &v);
		ck_assert_msg(n == rfc822_cases[i].count, "rfc822_cases[%zu]: %zu values", i, n);
		ck_assert_msg(!strcmp(v.data, rfc822_cases[i].value), "rfc822_cases[%zu]: \"%s\"", i, v.data);
	}
	/* a huge value */
	_cleanup_free_ char *huge = repeat('x', 65536);
	_cleanup_free_ char *text = xasprintf("Requires-Dist: %s\n", huge);
	ck_assert_uint_eq(rfc822_get(text, strlen(text), "Requires-Dist", '\n', &v), 1);
	ck_assert_uint_eq(v.len, 65536);
	buf_free(&v);

	for (size_t i = 0; i < ARRAY_SIZE(dist_meta_cases); i++) {
		struct dist_meta m;
		dist_meta_parse(dist_meta_cases[i].dist_info, dist_meta_cases[i].metadata,
				strlen(dist_meta_cases[i].metadata), dist_meta_cases[i].wheel,
				strlen(dist_meta_cases[i].wheel), &m);
		ck_assert_msg(!strcmp(m.name, dist_meta_cases[i].name), "dist_meta_cases[%zu]: name %s", i, m.name);
		ck_assert_msg(!strcmp(m.version, dist_meta_cases[i].version), "dist_meta_cases[%zu]: version %s", i,
			      m.version);
		ck_assert_str_eq(m.tags.data ? m.tags.data : "", dist_meta_cases[i].tags);
		ck_assert_str_eq(m.requires.data ? m.requires.data : "", dist_meta_cases[i].requires);
		dist_meta_free(&m);
	}
}
END_TEST

/* ---- pyvenv.cfg ----------------------------------------------------------------- */

static const struct {
	const char *text;
	size_t len;
	const char *key;
	const char *value; /* NULL: absent */
	size_t n;          /* entries */
} cfg_cases[] = {
	{T("home = /usr/bin\n"), "home", "/usr/bin", 1},
	{T("home = /usr/bin\r\nversion = 3.11.7\r\n"), "version", "3.11.7", 2},
	{T("Home=/x\n"), "home", "/x", 1},
	{T("command = python -m venv --prompt a=b /x\n"), "command", "python -m venv --prompt a=b /x", 1},
	{T("prompt = a\nprompt = b\n"), "prompt", "b", 2}, /* the last wins, as in site.py */
	{T("garbage\nhome=/x\n"), "home", "/x", 1},
	{T("prompt =\n"), "prompt", "", 1},
	{T("= x\n"), "", "x", 1},
	{T("home = /usr\0bin\n"), "home", "/usr", 1}, /* a NUL ends the value */
	{T("prompt = \xff\xfe\n"), "prompt", "\xff\xfe", 1},
	{T("version = 3.12"), "version", "3.12", 1},
	{T("  version\t=\t3.12  \n"), "version", "3.12", 1},
	{T(""), "home", NULL, 0},
	{T("\n\n\n"), "home", NULL, 0},
};

START_TEST(test_pyvenv_cfg)
{
	struct pyvenv_cfg c;

	for (size_t i = 0; i < ARRAY_SIZE(cfg_cases); i++) {
		ck_assert_int_eq(pyvenv_cfg_parse(cfg_cases[i].text, cfg_cases[i].len, &c), 0);
		ck_assert_msg(c.n == cfg_cases[i].n, "cfg_cases[%zu]: %zu entries", i, c.n);
		const char *v = pyvenv_cfg_get(&c, cfg_cases[i].key);
		if (cfg_cases[i].value)
			ck_assert_msg(v && !strcmp(v, cfg_cases[i].value), "cfg_cases[%zu]: %s", i, v ? v : "(none)");
		else
			ck_assert_ptr_null(v);
		pyvenv_cfg_free(&c);
	}
	_cleanup_free_ char *huge = repeat('x', 100000);
	_cleanup_free_ char *text = xasprintf("prompt = %s\n", huge);
	ck_assert_int_eq(pyvenv_cfg_parse(text, strlen(text), &c), 0);
	ck_assert_uint_eq(strlen(pyvenv_cfg_get(&c, "prompt")), 100000);
	pyvenv_cfg_free(&c);
}
END_TEST

/* ---- requirements, markers, versions -------------------------------------------- */

static const struct {
	const char *text;
	const char *name, *extras, *specs, *marker;
} req_ok[] = {
	{"requests", "requests", "", "", ""},
	{"Foo_Bar.baz>=1.0", "foo-bar-baz", "", ">=1.0", ""},
	{"requests[socks, security] (>=2.0, <3) ; python_version >= '3.8'", "requests", "socks, security", ">=2.0,<3",
	 "python_version >= '3.8'"},
	{"  idna (>=2.5)", "idna", "", ">=2.5", ""},
	{"urllib3<3,>=1.21.1", "urllib3", "", "<3,>=1.21.1", ""},
	{"colorama ; sys_platform == \"win32\"", "colorama", "", "", "sys_platform == \"win32\""},
	{"x==1.0;extra=='test'", "x", "", "==1.0", "extra=='test'"},
	{"x (>=1", "x", "", ">=1", ""}, /* no closing parenthesis */
	{"pkg[]", "pkg", "", "", ""},
	{"pkg\r", "pkg", "", "", ""}, /* CRLF */
	{"3to2", "3to2", "", "", ""},
};

static const struct {
	const char *text;
	const char *error;
} req_bad[] = {
	{"", "not a requirement"},
	{"   ", "not a requirement"},
	{".", "not a requirement"}, /* regression: an empty name */
	{"-_", "not a requirement"},
	{"[x]", "not a requirement"},
	{";os_name=='posix'", "not a requirement"},
	{"\xff\xfe", "not a requirement"},
	{"foo[bar", "missing ]"},
	{"foo @ https://example.com/foo.whl", "direct URL"},
};

static const struct {
	const char *marker;
	const char *xy, *full, *extra;
	bool result;
} marker_ok[] = {
	{"python_version >= '3.8'", "3.11", "3.11.7", "", true},
	{"python_version < '3.8'", "3.11", "3.11.7", "", false},
	{"'3.8' < python_version", "3.11", "3.11.7", "", true},
	{"'3.12' <= python_version", "3.11", "3.11.7", "", false},
	{"sys_platform == 'win32'", "3.11", "3.11.7", "", false},
	{"os_name == 'posix' and (extra == 'test' or extra == 'dev')", "3.11", "3.11.7", "test", true},
	{"extra == 'test'", "3.11", "3.11.7", "", false},
	{"platform_system != 'Windows'", "3.11", "3.11.7", "", true},
	{"'linux' in sys_platform", "3.11", "3.11.7", "", true},
	{"'win' not in sys_platform", "3.11", "3.11.7", "", true},
	{"python_full_version == '3.11.*'", "3.11", "3.11.7", "", true},
	{"implementation_name == \"cpython\"", "3.11", "3.11.7", "", true},
	{"python_version >= '3.8' and python_version < '4'", "3.11", "3.11.7", "", true},
	{"((os_name == 'posix'))", "3.11", "3.11.7", "", true},
	{"os_name=='nt' or os_name=='posix'", "3.11", "3.11.7", "", true},
	{"\tos_name == 'posix'\r\n", "3.11", "3.11.7", "", true},
};

static const struct {
	const char *marker;
	const char *error;
} marker_bad[] = {
	{"os_name", "expected a comparison"}, /* regression: read past the end */
	{"'posix'", "expected a comparison"},
	{"os_name ==", "unknown marker variable"},
	{"os_name == 'posix", "unterminated string"},
	{"nonsense == 'x'", "unknown marker variable"},
	{"(os_name == 'posix'", "missing )"},
	{"(nonsense == 'x')", "unknown marker variable"}, /* not "missing )" */
	{"os_name == 'posix' xor", "unexpected text"},
	{"os_name not 'x'", "expected 'not in'"},
	{"", "unknown marker variable"},
	{"os_name == '\xff'\xff", "unexpected text"},
};

static char *nested_marker(size_t depth)
{
	struct buf b = {0};

	for (size_t i = 0; i < depth; i++)
		buf_addc(&b, '(');
	buf_adds(&b, "os_name == 'posix'");
	for (size_t i = 0; i < depth; i++)
		buf_addc(&b, ')');
	return b.data;
}

START_TEST(test_requirement)
{
	struct requirement r;

	for (size_t i = 0; i < ARRAY_SIZE(req_ok); i++) {
		ck_assert_msg(requirement_parse(req_ok[i].text, &r) == 0, "req_ok[%zu]: %s", i, vf_last_error());
		ck_assert_str_eq(r.name, req_ok[i].name);
		ck_assert_str_eq(r.extras, req_ok[i].extras);
		ck_assert_str_eq(r.specs, req_ok[i].specs);
		ck_assert_str_eq(r.marker, req_ok[i].marker);
		ck_assert_str_eq(r.text, req_ok[i].text);
		requirement_free(&r);
	}
	for (size_t i = 0; i < ARRAY_SIZE(req_bad); i++) {
		ck_assert_msg(requirement_parse(req_bad[i].text, &r) == -EINVAL, "req_bad[%zu] accepted", i);
		ck_assert_msg(error_says(req_bad[i].error), "req_bad[%zu]: %s", i, vf_last_error());
		ck_assert_ptr_null(r.name);
		ck_assert_ptr_null(r.text);
	}
}
END_TEST

START_TEST(test_marker)
{
	bool result;

	for (size_t i = 0; i < ARRAY_SIZE(marker_ok); i++) {
		struct marker_env env = {marker_ok[i].xy, marker_ok[i].full, marker_ok[i].extra};
		ck_assert_msg(marker_eval(marker_ok[i].marker, &env, &result) == 0, "marker_ok[%zu]: %s", i,
			      vf_last_error());
		ck_assert_msg(result == marker_ok[i].result, "marker_ok[%zu]: %d", i, result);
	}
	struct marker_env env = {"3.11", "3.11.7", ""};
	for (size_t i = 0; i < ARRAY_SIZE(marker_bad); i++) {
		ck_assert_msg(marker_eval(marker_bad[i].marker, &env, &result) == -EINVAL, "marker_bad[%zu] accepted",
			      i);
		ck_assert_msg(error_says(marker_bad[i].error), "marker_bad[%zu]: %s", i, vf_last_error());
	}
	/* regression: parentheses nest 64 deep, not until the stack ends */
	_cleanup_free_ char *ok = nested_marker(64);
	ck_assert_int_eq(marker_eval(ok, &env, &result), 0);
	ck_assert(result);
	_cleanup_free_ char *deep = nested_marker(65);
	ck_assert_int_eq(marker_eval(deep, &env, &result), -EINVAL);
	ck_assert(error_says("nested too deeply"));
	_cleanup_free_ char *very = nested_marker(1000000);
	ck_assert_int_eq(marker_eval(very, &env, &result), -EINVAL);
}
END_TEST

static const struct {
	const char *a, *b;
	int sign;
} cmp_cases[] = {
	{"1.0", "1.0.1", -1},
	{"1.0", "1.0.0", 0},
	{"1.0a1", "1.0", -1},
	{"1.0.dev1", "1.0a1", -1},
	{"1.0rc2", "1.0", -1},
	{"1.0.post1", "1.0", 1},
	{"2.10", "2.9", 1},
	{"1!0.1", "9.9", 1},
	{"1.0+local", "1.0", 1},
	{"v1.0", "1.0", 0},
	{"1.0-1", "1.0.post1", 0},
	{"1.0alpha1", "1.0a1", 0},
	{"1.0c1", "1.0rc1", 0},
	{"1.0.dev1", "1.0.post1.dev1", -1},
	{" 1.0 ", "1.0", 0},
	{"not a version", "1.0", 1}, /* unparsable versions sort last, lexically */
	{"abc", "abd", -1},
	{"", "1.0", 1},
	{"1.0a2000000000", "1.0b1", -1}, /* regression: a number spilled into the next phase */
	{"1.0rc99999999999", "1.0", -1},
	{"99999999999999999999", "99999999999999999998", 0}, /* regression: past LLONG_MAX, equal */
	{"99999999999999999999", "9223372036854775806", 1},
	{"1.0.post99999999999999999999", "1.0.post1", 1},
	{"1.0\xff", "1.0", 1},
};

static const struct {
	const char *version, *op, *spec;
	bool result;
} match_cases[] = {
	{"2.31.0", "==", "2.31.0", true},
	{"2.31.0", "==", "2.31.*", true},
	{"2.32.0", "==", "2.31.*", false},
	{"1.4.5", "~=", "1.4.2", true},
	{"1.5.0", "~=", "1.4.2", false},
	{"1.0", "~=", "1", false},
	{"1.0+local", "==", "1.0", true},
	{"1.0", "==", "1.0+local", false},
	{"1.0", "!=", "1.0", false},
	{"1.0", "===", "1.0", true},
	{"1.0.0", "===", "1.0", false},
	{"junk", "==", "junk", true},
	{"junk", ">=", "1.0", false},
	{"1.0", "<=", "junk", false},
	{"2.0", ">", "1.99999999999999999999", true},
	{"1.0", "<>", "2.0", false},
	{"1!1.0", "==", "1.*", false},
	{"1.0", "==", "", false},
};

static const struct {
	const char *version, *specs;
	bool result;
} match_set_cases[] = {
	{"1.26.4", ">=1.20,<2", true},
	{"2.0.0", ">=1.20,<2", false},
	{"3.0", "", true},
	{"3.0", " , ,", true},
	{"1.0", "1.0", false}, /* no operator */
	{"1.0", ">=1.0,", true},
	{"1.0", "====1.0", false},
	{"1.0", "!=1.0", false},
	{"3.11.7", ">=3.8", true},
	{"3.11.7", ">=3.8, !=3.11.*", false},
	{"3.11.7", ">=\xff", false},
};

START_TEST(test_versions)
{
	for (size_t i = 0; i < ARRAY_SIZE(cmp_cases); i++) {
		int c = pep440_cmp(cmp_cases[i].a, cmp_cases[i].b);
		int back = pep440_cmp(cmp_cases[i].b, cmp_cases[i].a);
		ck_assert_msg(c == cmp_cases[i].sign && back == -cmp_cases[i].sign, "cmp_cases[%zu]: %d, %d", i, c,
			      back);
	}
	for (size_t i = 0; i < ARRAY_SIZE(match_cases); i++)
		ck_assert_msg(pep440_match(match_cases[i].version, match_cases[i].op, match_cases[i].spec) ==
				      match_cases[i].result,
			      "match_cases[%zu]", i);
	for (size_t i = 0; i < ARRAY_SIZE(match_set_cases); i++)
		ck_assert_msg(pep440_match_set(match_set_cases[i].version, match_set_cases[i].specs) ==
				      match_set_cases[i].result,
			      "match_set_cases[%zu]", i);
	/* a huge version: more release segments than kept, a long local part */
	struct buf v = {0};
	for (int i = 0; i < 1000; i++)
		buf_printf(&v, "%s%d", i ? "." : "", i % 7);
	buf_adds(&v, "+");
	for (int i = 0; i < 1000; i++)
		buf_adds(&v, "loc");
	ck_assert_int_eq(pep440_cmp(v.data, v.data), 0);
	ck_assert_int_gt(pep440_cmp(v.data, "0.1.2"), 0);
	buf_free(&v);
}
END_TEST

/* ---- wheel tags ----------------------------------------------------------------- */

static const struct {
	const char *tags; /* "@M" stands for this machine (uname -m) */
	const char *xy;
	bool result;
} tags_cases[] = {
	{"py3-none-any", "3.11", true},
	{"", "3.11", true},
	{"   ", "3.11", true},
	{"cp311-cp311-manylinux_2_17_@M", "3.11", true},
	{"cp311-cp311-manylinux_2_17_@M.manylinux2014_@M", "3.11", true},
	{"cp312-cp312-manylinux_2_17_@M", "3.11", false},
	{"cp38-abi3-linux_@M", "3.11", true},
	{"cp312-abi3-linux_@M", "3.11", false},
	{"py2.py3-none-any", "3.11", true},
	{"py2-none-any", "3.11", false},
	{"cp311-cp311-win_amd64", "3.11", false},
	{"cp311-cp311-macosx_11_0_arm64", "3.11", false},
	{"cp311-cp311-musllinux_1_1_@Mx", "3.11", false},
	{"py3-none", "3.11", false}, /* two parts */
	{"py3-none-any-extra", "3.11", false},
	{"py38-none-any", "3.11", true},
	{"py311-none-any", "3.8", false},
	{"cp399999999999-none-any", "3.11", false}, /* overflowing number */
	{"cp34294967307-none-any", "3.11", false},  /* regression: it wrapped around to 11 */
	{"py3x-none-any", "3.11", false},           /* regression: "x" read as 0 */
	{"cp3+5-none-any", "3.11", false},
	{"\xff\xfe-none-any", "3.11", false},
	{"py3-none-any\r\n", "3.11", true},
	{"cp39-cp39-win32 py3-none-any", "3.11", true}, /* any tag of the set */
	{"py3-none-any", "", true},
};

static char *with_machine(const char *tags, const char *machine)
{
	struct buf b = {0};

	for (const char *p = tags; *p; p++) {
		if (p[0] == '@' && p[1] == 'M') {
			buf_adds(&b, machine);
			p++;
		} else {
			buf_addc(&b, *p);
		}
	}
	if (!b.data)
		buf_grow(&b, 0), b.data[0] = '\0';
	return b.data;
}

START_TEST(test_tags)
{
	struct utsname u;

	ck_assert_int_eq(uname(&u), 0);
	for (size_t i = 0; i < ARRAY_SIZE(tags_cases); i++) {
		_cleanup_free_ char *tags = with_machine(tags_cases[i].tags, u.machine);
		ck_assert_msg(tags_compatible(tags, tags_cases[i].xy) == tags_cases[i].result, "tags_cases[%zu]: %s", i,
			      tags);
	}
}
END_TEST

/* ---- bytecode ------------------------------------------------------------------- */

static const struct {
	uint8_t hdr[16];
	size_t len;
	bool ok;
	uint32_t mtime, size;
} pyc_hdr_cases[] = {
	{{0xa7, 0x0d, '\r', '\n', 0, 0, 0, 0, 0x10, 0x20, 0x30, 0x40, 5, 0, 0, 0}, 16, true, 0x40302010, 5},
	{{0xa7, 0x0d, '\r', '\n', 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	 16,
	 true,
	 0xffffffff,
	 0xffffffff},
	{{0xa7, 0x0d, '\r', '\n', 0, 0, 0, 0, 0x10, 0x20, 0x30, 0x40, 5, 0, 0, 0}, 15, false, 0, 0}, /* cut */
	{{0xa7, 0x0d, '\r', '\n'}, 0, false, 0, 0},
	{{0xa7, 0x0d, '\r', '\r', 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, 16, false, 0, 0}, /* not \r\n */
	{{0xa7, 0x0d, '\r', '\n', 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, 16, false, 0, 0}, /* hash-based */
	{{0xa7, 0x0d, '\r', '\n', 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}, 16, false, 0, 0}, /* other flags */
};

#define HDR16 "\xa7\x0d\r\n\0\0\0\0\0\0\0\0\0\0\0\0"

static const struct {
	const char *in; /* a pyc: HDR16 then marshalled objects */
	size_t in_len;
	const char *needle;
	bool exact;
	const char *repl;
	size_t count;
	const char *out;
	size_t out_len;
} rewrite_cases[] = {
	/* a short str ('z', one length byte) starting with the needle */
	{T(HDR16 "z\x05/a/bc"), "/a/", false, "/xyz/", 1, T(HDR16 "z\x07/xyz/bc")},
	/* the "remember me" flag stays */
	{T(HDR16 "\xfa\x05/a/bc"), "/a/", false, "/xyz/", 1, T(HDR16 "\xfa\x07/xyz/bc")},
	{T(HDR16 "z\x05/a/bc"), "/a/", true, "/xyz/", 0, T(HDR16 "z\x05/a/bc")},
	{T(HDR16 "z\x03/a/"), "/a/", true, "/xyz/", 1, T(HDR16 "z\x05/xyz/")},
	/* a long str ('a', 4 length bytes) that now fits a short one */
	{T(HDR16 "a\x04\0\0\0/a/b"), "/a/", false, "/xyz/", 1, T(HDR16 "z\x06/xyz/b")},
	/* non-ASCII: a unicode str ('u'), interned ('t') if it was */
	{T(HDR16 "z\x04/a/b"), "/a/", false, "/\xc3\xa9/", 1, T(HDR16 "u\x05\0\0\0/\xc3\xa9/b")},
	{T(HDR16 "Z\x04/a/b"), "/a/", false, "/\xc3\xa9/", 1, T(HDR16 "t\x05\0\0\0/\xc3\xa9/b")},
	/* a length past the end: not a str, untouched */
	{T(HDR16 "z\xc8/a/bc"), "/a/", false, "/xyz/", 0, T(HDR16 "z\xc8/a/bc")},
	{T(HDR16 "a\xff\xff\xff\xff/a/bc"), "/a/", false, "/xyz/", 0, T(HDR16 "a\xff\xff\xff\xff/a/bc")},
	/* no str header before it */
	{T(HDR16 "xx/a/bc"), "/a/", false, "/xyz/", 0, T(HDR16 "xx/a/bc")},
	/* two strs; a needle inside a rewritten str is not a str of its own */
	{T(HDR16 "z\x03/a/z\x03/a/"), "/a/", false, "/b/", 2, T(HDR16 "z\x03/b/z\x03/b/")},
	{T(HDR16 "z\x08/a/z\x03/a/"), "/a/", false, "/b/", 1, T(HDR16 "z\x08/b/z\x03/a/")},
	/* shorter than a header: as it is */
	{T("z\x03/a/"), "/a/", false, "/b/", 0, T("z\x03/a/")},
	{T(HDR16 "z\x03/a/"), "", false, "/b/", 0, T(HDR16 "z\x03/a/")},
};

static const struct {
	const char *path;
	const char *source; /* NULL: not a cached pyc */
} source_cases[] = {
	{"pkg/__pycache__/mod.cpython-311.pyc", "pkg/mod.py"},
	{"__pycache__/top.cpython-311.opt-1.pyc", "top.py"},
	{"pkg/__pycache__/mod.cpython-311.opt-2.pyc", "pkg/mod.py"},
	{"pkg/__pycache__/m\xff.cpython-311.pyc", "pkg/m\xff.py"},
	{"pkg/mod.cpython-311.pyc", NULL},
	{"x__pycache__/m.cpython-311.pyc", NULL},
	{"pkg/__pycache__/mod.pyc", NULL},
	{"pkg/__pycache__/.cpython-311.pyc", NULL},
	{"pkg/__pycache__/a.b.c.d.pyc", NULL},
	{"pkg/__pycache__/a.b.c.pyc", NULL},
	{"pkg/__pycache__/mod.cpython-311.py", NULL},
	{"__pycache__/", NULL},
	{"", NULL},
};

START_TEST(test_pyc)
{
	struct buf out = {0};
	uint32_t m, s;

	for (size_t i = 0; i < ARRAY_SIZE(pyc_hdr_cases); i++) {
		bool ok = pyc_timestamp_header(pyc_hdr_cases[i].hdr, pyc_hdr_cases[i].len, &m, &s);
		ck_assert_msg(ok == pyc_hdr_cases[i].ok, "pyc_hdr_cases[%zu]", i);
		if (ok) {
			ck_assert_uint_eq(m, pyc_hdr_cases[i].mtime);
			ck_assert_uint_eq(s, pyc_hdr_cases[i].size);
		}
	}
	for (size_t i = 0; i < ARRAY_SIZE(rewrite_cases); i++) {
		size_t n = pyc_rewrite_strings(rewrite_cases[i].in, rewrite_cases[i].in_len, rewrite_cases[i].needle,
					       rewrite_cases[i].exact, rewrite_cases[i].repl, &out);
		ck_assert_msg(n == rewrite_cases[i].count, "rewrite_cases[%zu]: %zu rewritten", i, n);
		ck_assert_msg(out.len == rewrite_cases[i].out_len &&
				      !memcmp(out.data, rewrite_cases[i].out, rewrite_cases[i].out_len),
			      "rewrite_cases[%zu]: other bytes", i);
	}
	/* a short str that grows past 255 bytes becomes a long one */
	struct buf in = {0};
	buf_add(&in, HDR16, 16);
	buf_addc(&in, 'z');
	buf_addc(&in, (char)250);
	buf_adds(&in, "/a/");
	for (int i = 0; i < 247; i++)
		buf_addc(&in, 'x');
	ck_assert_uint_eq(pyc_rewrite_strings(in.data, in.len, "/a/", false, "/0123456789/", &out), 1);
	ck_assert_uint_eq(out.len, 16 + 5 + 259);
	ck_assert_int_eq(out.data[16], 'a');
	ck_assert(!memcmp(out.data + 17, "\x03\x01\0\0/0123456789/", 16));
	buf_free(&in);
	buf_free(&out);

	for (size_t i = 0; i < ARRAY_SIZE(source_cases); i++) {
		_cleanup_free_ char *src = pyc_source_path(source_cases[i].path, strlen(source_cases[i].path));
		if (source_cases[i].source)
			ck_assert_msg(src && !strcmp(src, source_cases[i].source), "source_cases[%zu]: %s", i,
				      src ? src : "(none)");
		else
			ck_assert_msg(!src, "source_cases[%zu]: %s", i, src);
	}
}
END_TEST

/* ---- templates: console scripts, activate ------------------------------------------ */

static const struct {
	const char *content;
	size_t len;
	const char *env, *env_real, *prompt;
	int is_template;
	const char *at, *at_real; /* rendered at */
	const char *out;
	size_t out_len;
} tpl_cases[] = {
	{T("#!/e/bin/python\nimport sys\n"), "/e", "/e", NULL, 1, "/mnt/x", NULL,
	 T("#!/mnt/x/bin/python\nimport sys\n")},
	{T("#!/e/bin/python\r\nimport sys\r\n"), "/e", "/e", NULL, 1, "/mnt/x", NULL,
	 T("#!/mnt/x/bin/python\r\nimport sys\r\n")},
	/* another path that starts the same */
	{T("#!/e2/bin/python\n"), "/e", "/e", NULL, 0, NULL, NULL, T("")},
	{T("#!/bin/sh\n'''exec' '/e/bin/python' \"$0\" \"$@\"\n' '''\n"), "/e", "/e", NULL, 1, "/m", NULL,
	 T("#!/bin/sh\n'''exec' '/m/bin/python' \"$0\" \"$@\"\n' '''\n")},
	{T("VIRTUAL_ENV=/real/e\n"), "/e", "/real/e", NULL, 1, "/m", "/rm", T("VIRTUAL_ENV=/rm\n")},
	{T("PS1=\"(e) $PS1\"\n"), "/x/e", "/x/e", "e", 1, "/mnt/web", NULL, T("PS1=\"(web) $PS1\"\n")},
	/* a byte past 0x7f continues a name: the second is not the env */
	{T("#!/e/bin/python\n\xff/e\xff\n"), "/e", "/e", NULL, 1, "/m", NULL, T("#!/m/bin/python\n\xff/e\xff\n")},
	{T("#!/e/bin/python\n\0/e\0"), "/e", "/e", NULL, 1, "/m", NULL, T("#!/m/bin/python\n\0/m\0")},
	/* a path with a space: the /bin/sh trampoline */
	{T("#!/e/bin/python\nx\n"), "/e", "/e", NULL, 1, "/a b", NULL,
	 T("#!/bin/sh\n'''exec' \"/a b/bin/python\" \"$0\" \"$@\"\n' '''\nx\n")},
	{T(""), "/e", "/e", "e", 0, NULL, NULL, T("")},
};

static const struct {
	const char *blob;
	size_t len;
	const char *error;
} tpl_bad[] = {
	{T("VFSTPL1\0\1\0\0\0\0\0\0\0\1\0\0"), "not a template object"}, /* 19 bytes */
	{T("VFSTPL2\0\1\0\0\0\0\0\0\0\1\0\0\0"), "not a template object"},
	{T("VFSTPL1\0\1\0\0\0\0\0\0\0\1\0\0\0"), "truncated template"},
	{T("VFSTPL1\0\1\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\5\0\0\0ab"), "truncated template"},
	{T("VFSTPL1\0\1\0\0\0\0\0\0\0\1\0\0\0\x09\0\0\0\0\0\0\0"), "unknown template segment 9"},
	{T("VFSTPL1\0\2\0\0\0\0\0\0\0\1\0\0\0\4\0\0\0\1\0\0\0"
	   "0"),
	 "bad RECORD row"},
	{T("VFSTPL1\0\1\0\0\0\0\0\0\0\xff\xff\xff\xff\0\0\0\0\2\0\0\0ab"), "truncated template"},
};

START_TEST(test_template)
{
	struct buf blob = {0}, out = {0};

	for (size_t i = 0; i < ARRAY_SIZE(tpl_cases); i++) {
		struct tpl_paths p = {tpl_cases[i].env, tpl_cases[i].env_real, tpl_cases[i].prompt};
		int r = tpl_make_subst(tpl_cases[i].content, tpl_cases[i].len, &p, &blob);
		ck_assert_msg(r == tpl_cases[i].is_template, "tpl_cases[%zu]: %d", i, r);
		if (r != 1)
			continue;
		struct tpl_ctx c = {.env = tpl_cases[i].at, .env_real = tpl_cases[i].at_real};
		ck_assert_int_eq(tpl_render(blob.data, blob.len, &c, &out), 0);
		ck_assert_msg(out.len == tpl_cases[i].out_len && !memcmp(out.data, tpl_cases[i].out, out.len),
			      "tpl_cases[%zu]: \"%s\"", i, out.data);
		/* at the path it was made at: the same bytes */
		struct tpl_ctx same = {.env = tpl_cases[i].env, .env_real = tpl_cases[i].env_real};
		ck_assert_int_eq(tpl_render(blob.data, blob.len, &same, &out), 0);
		ck_assert_msg(out.len == tpl_cases[i].len && !memcmp(out.data, tpl_cases[i].content, out.len),
			      "tpl_cases[%zu]: not the same bytes", i);
	}
	struct tpl_ctx c = {.env = "/m"};
	for (size_t i = 0; i < ARRAY_SIZE(tpl_bad); i++) {
		ck_assert_msg(tpl_render(tpl_bad[i].blob, tpl_bad[i].len, &c, &out) == -EIO, "tpl_bad[%zu] rendered",
			      i);
		ck_assert_msg(error_says(tpl_bad[i].error), "tpl_bad[%zu]: %s", i, vf_last_error());
	}
	buf_free(&blob);
	buf_free(&out);
}
END_TEST

/* ---- tree manifests ------------------------------------------------------------- */

/*
 * The manifest damaged below: an env tree of
 *   0 /   1 a (file)   2 b/   3 l -> a   4 b/c (file)
 */
static void build_tree(struct buf *out)
{
	struct tree_builder *tb = tree_builder_new(TREE_ENV);
	struct tree_entry f = {.mode = S_IFREG | 0644, .size = 1};
	struct tree_entry l = {.mode = S_IFLNK | 0777, .target = "a", .target_len = 1};

	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_ENV, "a", 1, &f), 0);
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_ENV, "b/c", 3, &f), 0);
	ck_assert_int_eq(tree_builder_add(tb, TREE_ROOT_ENV, "l", 1, &l), 0);
	tree_builder_set_str(tb, TREE_STR_NAME, "demo", 4);
	ck_assert_int_eq(tree_builder_finish(tb, out), 0);
	tree_builder_free(tb);
}

static void tree_set_checksum(char *m, size_t len)
{
	struct tree_hdr h;
	XXH3_state_t *st = XXH3_createState();

	memcpy(&h, m, sizeof(h));
	h.checksum = 0;
	XXH3_64bits_reset(st);
	XXH3_64bits_update(st, &h, sizeof(h));
	XXH3_64bits_update(st, m + sizeof(h), len - sizeof(h));
	h.checksum = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	memcpy(m + offsetof(struct tree_hdr, checksum), &h.checksum, 8);
}

#define HDR(field) (int)offsetof(struct tree_hdr, field), (int)sizeof(((struct tree_hdr *)0)->field)
#define NODE(i, field)                                                                                                 \
	(int)(sizeof(struct tree_hdr) + (i) * sizeof(struct tree_node) + offsetof(struct tree_node, field)),           \
		(int)sizeof(((struct tree_node *)0)->field)
#define STRHDR(i, f)                                                                                                   \
	(int)(offsetof(struct tree_hdr, str) + (i) * sizeof(struct tree_strref) + offsetof(struct tree_strref, f)), 4

static const struct {
	int off, width; /* the field changed */
	uint64_t value;
	const char *error;
} tree_bad[] = {
	{HDR(magic), 0x58, "bad magic"},
	{HDR(kind), 7, "unknown manifest kind 7"},
	{HDR(n_roots), 2, "bad root count"},
	{HDR(n_nodes), 6, "bad section offsets"},
	{HDR(n_nodes), 0xffffffff, "bad section offsets"},
	{HDR(nodes_off), 64, "bad section offsets"},
	{HDR(strtab_off), 0xffffffffffffff00, "bad section offsets"},
	{HDR(strtab_len), 0xffffffffffffffff, "bad section offsets"},
	{HDR(flags), 1, "unknown header flags"},
	{HDR(reserved), 1, "unknown header flags"},
	{STRHDR(TREE_STR_NAME, off), 0xffffff00, "bad header string"},
	{STRHDR(TREE_STR_NAME, len), 0xffffffff, "bad header string"},
	{NODE(1, name_off), 0xfffffff0, "node 1: name out of range"},
	/* regression: a later child's name was compared before it was checked */
	{NODE(3, name_off), 0xfffffff0, "node 3: name out of range"},
	{NODE(3, name_len), 0xffff, "node 3: name out of range"},
	{NODE(1, name_len), 0, "node 1: bad name or parent"},
	{NODE(1, parent), 1, "node 0: child 1 has another parent"},
	{NODE(1, parent), 0xffffffff, "node 0: child 1 has another parent"},
	{NODE(0, parent), 1, "node 0: bad name or parent"},
	{NODE(0, mode), S_IFREG | 0644, "node 0: bad name or parent"},
	{NODE(1, mode), 0644, "node 1: bad file type"},
	{NODE(4, parent), 1, "node 2: child 4 has another parent"},
	{NODE(0, u.dir.first_child), 0, "node 0: bad child range"},
	{NODE(0, u.dir.n_children), 100, "node 0: bad child range"},
	{NODE(0, u.dir.n_children), 0xffffffff, "node 0: bad child range"},
	{NODE(2, u.dir.first_child), 5, "node 2: bad child range"},
	{NODE(0, u.dir.n_children), 2, "node 3 is not listed by its parent"},
	{NODE(3, u.link.len), 0, "node 3: bad symlink target"},
	{NODE(3, u.link.off), 0xfffffff0, "node 3: bad symlink target"},
};

START_TEST(test_tree)
{
	struct buf good = {0};
	struct tree *t;

	build_tree(&good);
	ck_assert_int_eq(tree_load(good.data, good.len, false, &t), 0);
	ck_assert_uint_eq(t->n, 5);
	ck_assert_uint_eq(tree_lookup_path(t, TREE_ROOT_ENV, "b/c", 3), 4);
	ck_assert(S_ISLNK(tree_node(t, 3)->mode));
	tree_free(t);

	for (size_t i = 0; i < ARRAY_SIZE(tree_bad); i++) {
		_cleanup_free_ char *m = xmemdup(good.data, good.len);
		memcpy(m + tree_bad[i].off, &tree_bad[i].value, (size_t)tree_bad[i].width);
		tree_set_checksum(m, good.len);
		ck_assert_msg(tree_load(m, good.len, true, &t) == -EIO, "tree_bad[%zu] loaded", i);
		ck_assert_msg(error_says(tree_bad[i].error), "tree_bad[%zu]: %s", i, vf_last_error());
	}

	/* names: sorted, not empty, no '/', no NUL, not "." or ".." */
	static const struct {
		const char *name; /* replaces "a", node 1's name */
		const char *error;
	} names[] = {{"b", "children not sorted"},
		     {"/", "bad name or parent"},
		     {"\0", "bad name or parent"},
		     {".", "bad name or parent"}};
	const struct tree_node *a = (const struct tree_node *)(good.data + sizeof(struct tree_hdr)) + 1;
	ck_assert_uint_eq(a->name_len, 1);
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		_cleanup_free_ char *m = xmemdup(good.data, good.len);
		const struct tree_hdr *h = (const struct tree_hdr *)m;
		m[h->strtab_off + a->name_off] = names[i].name[0];
		tree_set_checksum(m, good.len);
		ck_assert_msg(tree_load(m, good.len, false, &t) == -EIO, "names[%zu] loaded", i);
		ck_assert_msg(error_says(names[i].error), "names[%zu]: %s", i, vf_last_error());
	}

	/* cut short, a checksum that does not match */
	ck_assert_int_eq(tree_load(good.data, sizeof(struct tree_hdr) - 1, false, &t), -EIO);
	ck_assert(error_says("truncated manifest"));
	ck_assert_int_eq(tree_load(good.data, 0, false, &t), -EIO);
	ck_assert_int_eq(tree_load(good.data, good.len - 1, false, &t), -EIO);
	ck_assert(error_says("bad section offsets"));
	_cleanup_free_ char *flip = xmemdup(good.data, good.len);
	flip[good.len - 1] ^= 1;
	ck_assert_int_eq(tree_load(flip, good.len, false, &t), -EIO);
	ck_assert(error_says("checksum mismatch"));
	buf_free(&good);
}
END_TEST

/* ---- env manifests -------------------------------------------------------------- */

#define ENV_BODY                                                                                                       \
	"name web\nuid 00000000000000ff\npython.home /usr/bin\npython.executable /usr/bin/python3.11\n"                \
	"python.version 3.11.7\nsystem-site-packages false\ncreated 1700000000\n"                                      \
	"tree 4a05bff32692b065429175aa82b775e1\n"

/* A version 2 manifest: header (unless head is false), body, the end line
 * over both. */
static char *env_v2_head(bool head, const char *body, size_t len, size_t *out_len)
{
	struct buf b = {0};

	if (head)
		buf_adds(&b, "venvfs-env 2\n");
	buf_add(&b, body, len);
	buf_printf(&b, "end %016" PRIx64 "\n", (uint64_t)XXH3_64bits(b.data, b.len));
	*out_len = b.len;
	return b.data;
}

static char *env_v2(const char *body, size_t len, size_t *out_len)
{
	return env_v2_head(true, body, len, out_len);
}

static const struct {
	const char *body;
	size_t len;
	const char *name, *origin, *prompt, *upper;
	size_t n_pkgs;
} env_ok[] = {
	{T(ENV_BODY), "web", NULL, NULL, "upper", 0},
	{T(ENV_BODY "# a comment\n\nfuture-key some value\n"), "web", NULL, NULL, "upper", 0},
	{T(ENV_BODY "origin /a%20b%0Ac\n"), "web", "/a b\nc", NULL, "upper", 0},
	{T(ENV_BODY "prompt %FF%FE\n"), "web", NULL, "\xff\xfe", "upper", 0},
	{T(ENV_BODY "prompt \xff\xfe\n"), "web", NULL, "\xff\xfe", "upper", 0},
	{T(ENV_BODY "upper upper-5f0c3a0e\n"), "web", NULL, NULL, "upper-5f0c3a0e", 0},
	{T(ENV_BODY "mtimes 41a72cdf3adc65ce775e181f7bc87552\n"), "web", NULL, NULL, "upper", 0},
	{T(ENV_BODY "package 92c4d12055eae45fd04b23cad56d212f tiny%2Dpkg 1.0%2Blocal\n"
		    "package 92c4d12055eae45fd04b23cad56d212f.7 b 2\n"),
	 "web", NULL, NULL, "upper", 2},
	{T("name first\n" ENV_BODY), "web", NULL, NULL, "upper", 0}, /* the last wins */
};

/* What env_bad[] texts are: */
enum env_text {
	BODY, /* a version 2 body: the header and an end line are added */
	HEAD, /* a header and a body: an end line is added */
	RAW,  /* the whole manifest */
};

static const struct {
	const char *text;
	size_t len;
	enum env_text kind;
	const char *error;
} env_bad[] = {
	{T(""), RAW, "no end line"},
	{T("venvfs-env 2\n" ENV_BODY), RAW, "no end line"},
	{T("venvfs-env 2\n" ENV_BODY "end 0000000000000000\n"), RAW, "checksum does not match"},
	{T("venvfs-env 2\n" ENV_BODY "end 00000000\n"), RAW, "no end line"},
	{T("venvfs-env 1\n" ENV_BODY "name w\0eb\n"), RAW, "a NUL byte"}, /* regression */
	{T(ENV_BODY "name w\0eb\n"), BODY, "a NUL byte"},
	{T("venvfs-env 3\n" ENV_BODY), HEAD, "not a venvfs env manifest"},
	{T("venvfs-env 1\r\n" ENV_BODY), HEAD, "not a venvfs env manifest"},
	{T(ENV_BODY "name\n"), BODY, "malformed line"},
	{T(ENV_BODY "package 92c4d12055eae45fd04b23cad56d212f tiny\n"), BODY, "malformed package line"},
	{T(ENV_BODY "package xyz tiny 1.0\n"), BODY, "malformed package line"},
	{T(ENV_BODY "package 92c4d12055eae45fd04b23cad56d212f %zz 1.0\n"), BODY, "malformed package line"},
	{T(ENV_BODY "origin %zz\n"), BODY, "bad escape"},
	{T(ENV_BODY "origin %0\n"), BODY, "bad escape"},
	{T(ENV_BODY "origin a%00b\n"), BODY, "bad escape"},
	{T(ENV_BODY "tree xyz\n"), BODY, "bad object id"},
	{T(ENV_BODY "tree 4a05bff32692b065429175aa82b775e1.0\n"), BODY, "bad object id"},
	{T(ENV_BODY "tree 4a05bff32692b065429175aa82b775e1.99999999999\n"), BODY, "bad object id"},
	{T(ENV_BODY "mtimes 4a05bff32692b065429175aa82b775e\n"), BODY, "bad object id"},
	{T(ENV_BODY "upper ../x\n"), BODY, "bad writable layer name"},
	{T(ENV_BODY "upper upper/../../x\n"), BODY, "bad writable layer name"},
	{T("name web\npython.version 3.11\n"), BODY, "incomplete env manifest"},
	{T("tree 4a05bff32692b065429175aa82b775e1\npython.version 3.11\n"), BODY, "incomplete env manifest"},
	{T("name web\ntree 4a05bff32692b065429175aa82b775e1\n"), BODY, "incomplete env manifest"},
	{T(ENV_BODY "name .hidden\n"), BODY, "not a valid env name"},
	{T(ENV_BODY "name a%2Fb\n"), BODY, "not a valid env name"},
	{T(ENV_BODY "name web\r\n"), BODY, "not a valid env name"}, /* CRLF */
};

START_TEST(test_env)
{
	struct env *e;
	size_t len;

	for (size_t i = 0; i < ARRAY_SIZE(env_ok); i++) {
		_cleanup_free_ char *text = env_v2(env_ok[i].body, env_ok[i].len, &len);
		ck_assert_msg(env_parse(text, len, "env", &e) == 0, "env_ok[%zu]: %s", i, vf_last_error());
		ck_assert_str_eq(e->name, env_ok[i].name);
		ck_assert_str_eq(e->python_version, "3.11.7");
		ck_assert_uint_eq(e->uid, 0xff);
		if (env_ok[i].origin)
			ck_assert_str_eq(e->origin, env_ok[i].origin);
		if (env_ok[i].prompt)
			ck_assert_str_eq(e->prompt, env_ok[i].prompt);
		ck_assert_str_eq(env_upper(e), env_ok[i].upper);
		ck_assert_uint_eq(e->n_pkgs, env_ok[i].n_pkgs);
		/* the same with a version 1 header and no end line */
		_cleanup_free_ char *v1 = xasprintf("venvfs-env 1\n%.*s", (int)env_ok[i].len, env_ok[i].body);
		struct env *e1;
		ck_assert_int_eq(env_parse(v1, strlen(v1), "env", &e1), 0);
		ck_assert_str_eq(e1->name, e->name);
		env_free(e1);
		env_free(e);
	}
	_cleanup_free_ char *pkgs = env_v2(env_ok[7].body, env_ok[7].len, &len);
	ck_assert_int_eq(env_parse(pkgs, len, "env", &e), 0);
	ck_assert_str_eq(e->pkgs[0].name, "tiny-pkg");
	ck_assert_str_eq(e->pkgs[0].version, "1.0+local");
	ck_assert_uint_eq(e->pkgs[1].id.seq, 7);
	env_free(e);

	for (size_t i = 0; i < ARRAY_SIZE(env_bad); i++) {
		_cleanup_free_ char *text = NULL;
		if (env_bad[i].kind == RAW) {
			text = xmemdup(env_bad[i].text, env_bad[i].len ? env_bad[i].len : 1);
			len = env_bad[i].len;
		} else {
			text = env_v2_head(env_bad[i].kind == BODY, env_bad[i].text, env_bad[i].len, &len);
		}
		ck_assert_msg(env_parse(text, len, "env", &e) == -EIO, "env_bad[%zu] accepted", i);
		ck_assert_msg(error_says(env_bad[i].error), "env_bad[%zu]: %s", i, vf_last_error());
	}

	/* a huge field */
	_cleanup_free_ char *huge = repeat('o', 1 << 20);
	_cleanup_free_ char *body = xasprintf(ENV_BODY "origin /%s\n", huge);
	_cleanup_free_ char *text = env_v2(body, strlen(body), &len);
	ck_assert_int_eq(env_parse(text, len, "env", &e), 0);
	ck_assert_uint_eq(strlen(e->origin), (1 << 20) + 1);
	env_free(e);
}
END_TEST

/* ---- the import stat cache -------------------------------------------------------- */

static char *tmp_home;
static struct store *store;

static void setup_store(void)
{
	char tmpl[] = "/tmp/venvfs-unit-XXXXXX";

	ck_assert_ptr_nonnull(mkdtemp(tmpl));
	tmp_home = xstrdup(tmpl);
	ck_assert_int_eq(store_open(tmp_home, true, &store), 0);
}

static void teardown_store(void)
{
	store_close(store);
	rm_rf_at(AT_FDCWD, tmp_home);
	free(tmp_home);
}

#define SC_NAME "cache/import-test"
#define SC_KEY  0x1234

/* Offsets in the cache file (store/statcache.c). */
enum { SC_SUM = 16, SC_N = 24, SC_ENV_LEN = 48, SC_STR_LEN = 56, SC_HDR = 64 };

static void sc_write(const char *data, size_t len, bool fix_sum)
{
	_cleanup_free_ char *m = xmemdup(data, len ? len : 1);
	if (fix_sum && len >= SC_HDR) {
		uint64_t sum = XXH3_64bits(m + 24, len - 24);
		memcpy(m + SC_SUM, &sum, 8);
	}
	_cleanup_close_ int fd = openat(store->fd, SC_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write_full(fd, m, len), 0);
}

static const struct {
	int off; /* the u64 changed (-1: none) */
	uint64_t value;
	size_t cut;   /* bytes cut off the end */
	bool fix_sum; /* checksum set to match after the change */
	bool loads;
} sc_cases[] = {
	{-1, 0, 0, false, true},
	{0, 0x5858585858585858, 0, true, false}, /* magic */
	{8, SC_KEY + 1, 0, true, false},         /* another key */
	{SC_SUM, 1, 0, false, false},
	{SC_N, 3, 0, true, false},
	{SC_N, 0xffffffffffffffff, 0, true, false},
	{SC_N, 0x0200000000000000, 0, true, false}, /* n * entry size wraps */
	{SC_STR_LEN, 0xffffffffffffffff, 0, true, false},
	{SC_ENV_LEN, 0xffffffffffffffff, 0, true, false},
	{SC_HDR, 0xffffffff, 0, true, false}, /* entry 0's path_off */
	{-1, 0, 1, true, false},
	{-1, 0, 100, true, false},
};

START_TEST(test_statcache)
{
	struct statcache *c = statcache_new(SC_KEY), *l;
	_cleanup_buf_ struct buf file = {0};

	struct statcache_ent *e = statcache_add(c, "bin/python", 10);
	e->size = 7;
	e = statcache_add(c, "lib/\xff\xfe", 6);
	e->size = 9;
	statcache_set_env(c, "venvfs-env 2\n", 13);
	statcache_save(store, SC_NAME, c);
	statcache_free(c);
	ck_assert_int_eq(read_file_at(store->fd, SC_NAME, 1 << 20, &file), 0);

	for (size_t i = 0; i < ARRAY_SIZE(sc_cases); i++) {
		_cleanup_free_ char *m = xmemdup(file.data, file.len);
		if (sc_cases[i].off >= 0)
			memcpy(m + sc_cases[i].off, &sc_cases[i].value, 8);
		sc_write(m, file.len - sc_cases[i].cut, sc_cases[i].fix_sum);
		l = statcache_load(store, SC_NAME, SC_KEY);
		ck_assert_msg((l != NULL) == sc_cases[i].loads, "sc_cases[%zu]", i);
		if (l) {
			ck_assert_uint_eq(statcache_get(l, "bin/python", 10)->size, 7);
			ck_assert_uint_eq(statcache_get(l, "lib/\xff\xfe", 6)->size, 9);
			ck_assert_ptr_null(statcache_get(l, "bin", 3));
			ck_assert_str_eq(l->env_text, "venvfs-env 2\n");
		}
		statcache_free(l);
	}

	/* regression: a cache of no entries (every file changed within two
	 * seconds of its import) was read past its end */
	char none[SC_HDR + 4] = "VFSSTAT1";
	uint64_t key = SC_KEY, env_len = 4;
	memcpy(none + 8, &key, 8);
	memcpy(none + SC_ENV_LEN, &env_len, 8);
	memcpy(none + SC_HDR, "env\n", 4);
	sc_write(none, sizeof(none), true);
	l = statcache_load(store, SC_NAME, SC_KEY);
	ck_assert_ptr_nonnull(l);
	ck_assert_uint_eq(l->n, 0);
	ck_assert_str_eq(l->env_text, "env\n");
	statcache_free(l);
	/* regression: lengths whose sum wraps around to the file's size */
	uint64_t str_len = 0xffffffffffffffff, one = 1;
	memcpy(none + SC_ENV_LEN, &one, 8);
	memcpy(none + SC_STR_LEN, &str_len, 8);
	sc_write(none, SC_HDR, true);
	ck_assert_ptr_null(statcache_load(store, SC_NAME, SC_KEY));

	/* empty, missing */
	sc_write("", 0, false);
	ck_assert_ptr_null(statcache_load(store, SC_NAME, SC_KEY));
	ck_assert_int_eq(unlinkat(store->fd, SC_NAME, 0), 0);
	ck_assert_ptr_null(statcache_load(store, SC_NAME, SC_KEY));
}
END_TEST

static Suite *parsers_suite(void)
{
	Suite *s = suite_create("parsers");
	TCase *tc;

	tc = tcase_create("python formats");
	tcase_add_test(tc, test_record);
	tcase_add_test(tc, test_metadata);
	tcase_add_test(tc, test_pyvenv_cfg);
	tcase_add_test(tc, test_requirement);
	tcase_add_test(tc, test_marker);
	tcase_add_test(tc, test_versions);
	tcase_add_test(tc, test_tags);
	tcase_add_test(tc, test_pyc);
	tcase_add_test(tc, test_template);
	suite_add_tcase(s, tc);

	tc = tcase_create("manifests");
	tcase_add_test(tc, test_tree);
	tcase_add_test(tc, test_env);
	suite_add_tcase(s, tc);

	tc = tcase_create("stat cache");
	tcase_add_checked_fixture(tc, setup_store, teardown_store);
	tcase_add_test(tc, test_statcache);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(parsers_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
