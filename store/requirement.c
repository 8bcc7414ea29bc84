/*
 * requirement.c - versions, markers, requirements and wheel tags (see
 * requirement.h).
 */
#include "requirement.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#include "distinfo.h"
#include "util.h"

/* ---- versions (PEP 440) -------------------------------------------------- */

#define MAXREL 16

struct pver {
	bool ok;
	long long epoch;
	long long rel[MAXREL];
	int nrel;
	int pre_phase; /* 0 none, 1 a, 2 b, 3 rc */
	long long pre;
	bool has_post;
	long long post;
	bool has_dev;
	long long dev;
	char local[64];
};

static bool eat(const char **p, const char *word)
{
	size_t n = strlen(word);

	if (strncasecmp(*p, word, n) == 0) {
		*p += n;
		return true;
	}
	return false;
}

static long long num(const char **p, bool *any)
{
	long long v = 0;

	*any = false;
	while (isdigit((unsigned char)**p)) {
		int d = **p - '0';
		/* numbers past LLONG_MAX all compare equal to it */
		v = v > (LLONG_MAX - d) / 10 ? LLONG_MAX : v * 10 + d;
		(*p)++;
		*any = true;
	}
	return v;
}

static void sepopt(const char **p)
{
	if (**p == '.' || **p == '-' || **p == '_')
		(*p)++;
}

static struct pver pver_parse(const char *s)
{
	struct pver v;
	bool any;

	memset(&v, 0, sizeof(v));
	while (isspace((unsigned char)*s))
		s++;
	if (*s == 'v' || *s == 'V')
		s++;
	const char *p = s;
	long long first = num(&p, &any);
	if (!any)
		return v;
	if (*p == '!') {
		v.epoch = first;
		p++;
		first = num(&p, &any);
		if (!any)
			return v;
	}
	v.rel[v.nrel++] = first;
	while (*p == '.' && isdigit((unsigned char)p[1])) {
		p++;
		long long x = num(&p, &any);
		if (v.nrel < MAXREL)
			v.rel[v.nrel++] = x;
	}
	const char *save = p;
	sepopt(&p);
	if (eat(&p, "alpha") || eat(&p, "a"))
		v.pre_phase = 1;
	else if (eat(&p, "beta") || eat(&p, "b"))
		v.pre_phase = 2;
	else if (eat(&p, "rc") || eat(&p, "c") || eat(&p, "preview") || eat(&p, "pre"))
		v.pre_phase = 3;
	else
		p = save;
	if (v.pre_phase) {
		sepopt(&p);
		v.pre = num(&p, &any);
	}
	save = p;
	if (*p == '-' && isdigit((unsigned char)p[1])) {
		p++;
		v.has_post = true;
		v.post = num(&p, &any);
	} else {
		sepopt(&p);
		if (eat(&p, "post") || eat(&p, "rev") || eat(&p, "r")) {
			v.has_post = true;
			sepopt(&p);
			v.post = num(&p, &any);
		} else {
			p = save;
		}
	}
	save = p;
	sepopt(&p);
	if (eat(&p, "dev")) {
		v.has_dev = true;
		v.dev = num(&p, &any);
	} else {
		p = save;
	}
	if (*p == '+') {
		p++;
		size_t n = 0;
		while (*p && !isspace((unsigned char)*p) && n + 1 < sizeof(v.local))
			v.local[n++] = (char)tolower((unsigned char)*p++);
		v.local[n] = '\0';
	}
	while (isspace((unsigned char)*p))
		p++;
	v.ok = *p == '\0';
	return v;
}

static int cmpll(long long a, long long b)
{
	return a < b ? -1 : a > b;
}

/* pre-release phase: dev-only releases sort before pre-releases (a, b,
 * rc), finals after them */
static int pre_rank(const struct pver *v)
{
	if (v->pre_phase)
		return v->pre_phase;
	return !v->has_post && v->has_dev ? 0 : 4;
}

static int pver_cmp(const struct pver *a, const struct pver *b, bool with_local)
{
	int c;

	if ((c = cmpll(a->epoch, b->epoch)))
		return c;
	for (int i = 0; i < MAX(a->nrel, b->nrel); i++) {
		long long x = i < a->nrel ? a->rel[i] : 0, y = i < b->nrel ? b->rel[i] : 0;
		if ((c = cmpll(x, y)))
			return c;
	}
	if ((c = cmpll(pre_rank(a), pre_rank(b))))
		return c;
	if (a->pre_phase && (c = cmpll(a->pre, b->pre)))
		return c;
	if ((c = cmpll(a->has_post ? a->post : -1, b->has_post ? b->post : -1)))
		return c;
	if ((c = cmpll(a->has_dev ? a->dev : LLONG_MAX, b->has_dev ? b->dev : LLONG_MAX)))
		return c;
	if (with_local) {
		c = strcmp(a->local, b->local);
		return c < 0 ? -1 : c > 0;
	}
	return 0;
}

int pep440_cmp(const char *a, const char *b)
{
	struct pver va = pver_parse(a), vb = pver_parse(b);

	if (va.ok && vb.ok)
		return pver_cmp(&va, &vb, true);
	if (va.ok != vb.ok)
		return va.ok ? -1 : 1;
	int c = strcmp(a, b);
	return c < 0 ? -1 : c > 0;
}

/* "1.2.*" prefix match on release segments */
static bool prefix_match(const struct pver *v, const char *spec)
{
	_cleanup_free_ char *s = xstrdup(spec);
	size_t n = strlen(s);

	if (n >= 2 && !strcmp(s + n - 2, ".*"))
		s[n - 2] = '\0';
	struct pver p = pver_parse(s);
	if (!p.ok || p.epoch != v->epoch)
		return false;
	for (int i = 0; i < p.nrel; i++) {
		long long x = i < v->nrel ? v->rel[i] : 0;
		if (x != p.rel[i])
			return false;
	}
	return true;
}

bool pep440_match(const char *version, const char *op, const char *spec)
{
	struct pver v = pver_parse(version), s;
	size_t sl = strlen(spec);

	if (!strcmp(op, "==="))
		return !strcmp(version, spec);
	if (!v.ok)
		return !strcmp(op, "==") && !strcmp(version, spec);
	bool wildcard = sl >= 2 && !strcmp(spec + sl - 2, ".*");
	if (!strcmp(op, "==") || !strcmp(op, "!=")) {
		bool eq;
		if (wildcard) {
			eq = prefix_match(&v, spec);
		} else {
			s = pver_parse(spec);
			eq = s.ok && pver_cmp(&v, &s, s.local[0] != '\0') == 0;
		}
		return op[0] == '=' ? eq : !eq;
	}
	s = pver_parse(spec);
	if (!s.ok)
		return false;
	int c = pver_cmp(&v, &s, false);
	if (!strcmp(op, ">="))
		return c >= 0;
	if (!strcmp(op, "<="))
		return c <= 0;
	if (!strcmp(op, ">"))
		return c > 0;
	if (!strcmp(op, "<"))
		return c < 0;
	if (!strcmp(op, "~=")) {
		if (c < 0 || s.nrel < 2)
			return false;
		struct pver pre = s;
		pre.nrel--;
		for (int i = 0; i < pre.nrel; i++)
			if ((i < v.nrel ? v.rel[i] : 0) != pre.rel[i])
				return false;
		return v.epoch == s.epoch;
	}
	return false;
}

bool pep440_match_set(const char *version, const char *specs)
{
	const char *p = specs;

	while (*p) {
		while (*p == ',' || isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		const char *e = strchrnul(p, ',');
		char op[4] = {0};
		size_t on = 0;
		while (p < e && strchr("=!<>~", *p) && on < 3)
			op[on++] = *p++;
		while (p < e && isspace((unsigned char)*p))
			p++;
		_cleanup_free_ char *spec = xstrndup_trim(p, (size_t)(e - p));
		if (!on || !pep440_match(version, op, spec))
			return false;
		p = e;
	}
	return true;
}

/* ---- markers (PEP 508) ----------------------------------------------------- */

/* Parentheses nest at most this deep: each level is a recursion, and a
 * marker comes from any package's METADATA. */
#define MARKER_MAX_DEPTH 64

struct mparser {
	const char *p;
	const struct marker_env *env;
	const char *err;
	unsigned depth; /* of parentheses */
};

static void m_ws(struct mparser *m)
{
	while (isspace((unsigned char)*m->p))
		m->p++;
}

static bool m_word(struct mparser *m, const char *w)
{
	size_t n = strlen(w);

	m_ws(m);
	if (strncmp(m->p, w, n) == 0 && !isalnum((unsigned char)m->p[n]) && m->p[n] != '_') {
		m->p += n;
		return true;
	}
	return false;
}

static const char *machine(void)
{
	static __thread struct utsname u;
	static __thread bool done;

	if (!done) {
		uname(&u);
		done = true;
	}
	return u.machine;
}

/* A marker variable or string; *is_version tells how to compare it. */
static char *m_value(struct mparser *m, bool *is_version)
{
	m_ws(m);
	*is_version = false;
	if (*m->p == '"' || *m->p == '\'') {
		char q = *m->p++;
		const char *e = strchr(m->p, q);
		if (!e) {
			m->err = "unterminated string";
			return NULL;
		}
		char *s = xstrndup(m->p, (size_t)(e - m->p));
		m->p = e + 1;
		return s;
	}
	const char *s = m->p;
	while (isalnum((unsigned char)*m->p) || *m->p == '_' || *m->p == '.')
		m->p++;
	size_t n = (size_t)(m->p - s);
	char *var = xstrndup(s, n);
	const char *v = NULL;
	if (!strcmp(var, "python_version"))
		v = m->env->python_version, *is_version = true;
	else if (!strcmp(var, "python_full_version") || !strcmp(var, "implementation_version"))
		v = m->env->python_full_version, *is_version = true;
	else if (!strcmp(var, "os_name"))
		v = "posix";
	else if (!strcmp(var, "sys_platform"))
		v = "linux";
	else if (!strcmp(var, "platform_system"))
		v = "Linux";
	else if (!strcmp(var, "platform_machine"))
		v = machine();
	else if (!strcmp(var, "platform_python_implementation"))
		v = "CPython";
	else if (!strcmp(var, "implementation_name"))
		v = "cpython";
	else if (!strcmp(var, "extra"))
		v = m->env->extra ? m->env->extra : "";
	else if (!strcmp(var, "platform_release") || !strcmp(var, "platform_version"))
		v = "";
	free(var);
	if (!v) {
		m->err = "unknown marker variable";
		return NULL;
	}
	return xstrdup(v);
}

static bool m_or(struct mparser *m);

static bool m_atom(struct mparser *m)
{
	m_ws(m);
	if (*m->p == '(') {
		if (m->depth == MARKER_MAX_DEPTH) {
			m->err = "parentheses nested too deeply";
			return false;
		}
		m->p++;
		m->depth++;
		bool r = m_or(m);
		m->depth--;
		if (m->err)
			return false; /* (not hidden behind "missing )") */
		m_ws(m);
		if (*m->p != ')') {
			m->err = "missing )";
			return false;
		}
		m->p++;
		return r;
	}
	bool lv, rv;
	_cleanup_free_ char *l = m_value(m, &lv);
	if (!l)
		return false;
	m_ws(m);
	char op[4] = {0};
	bool not_in = false;
	if (m_word(m, "not")) {
		if (!m_word(m, "in")) {
			m->err = "expected 'not in'";
			return false;
		}
		not_in = true;
		strcpy(op, "in");
	} else if (m_word(m, "in")) {
		strcpy(op, "in");
	} else {
		size_t n = 0;
		while (n < 3 && m->p[n] && strchr("=!<>~", m->p[n]))
			n++;
		if (!n) {
			m->err = "expected a comparison";
			return false;
		}
		memcpy(op, m->p, n);
		m->p += n;
	}
	_cleanup_free_ char *r = m_value(m, &rv);
	if (!r)
		return false;
	if (!strcmp(op, "in"))
		return (strstr(r, l) != NULL) != not_in;
	if (lv || rv) {
		/* a variable holding a version: compare as versions */
		const char *ver = lv ? l : r, *spec = lv ? r : l;
		if (lv)
			return pep440_match(ver, op, spec);
		/* "3.8" < python_version: flip the operator */
		const char *flip = !strcmp(op, "<")    ? ">"
				   : !strcmp(op, ">")  ? "<"
				   : !strcmp(op, "<=") ? ">="
				   : !strcmp(op, ">=") ? "<="
						       : op;
		return pep440_match(ver, flip, spec);
	}
	int cmp = strcmp(l, r);
	if (!strcmp(op, "=="))
		return cmp == 0;
	if (!strcmp(op, "!="))
		return cmp != 0;
	if (!strcmp(op, "<"))
		return cmp < 0;
	if (!strcmp(op, "<="))
		return cmp <= 0;
	if (!strcmp(op, ">"))
		return cmp > 0;
	if (!strcmp(op, ">="))
		return cmp >= 0;
	return false;
}

static bool m_and(struct mparser *m)
{
	bool r = m_atom(m);

	while (!m->err && m_word(m, "and")) {
		bool b = m_atom(m);
		r = r && b;
	}
	return r;
}

static bool m_or(struct mparser *m)
{
	bool r = m_and(m);

	while (!m->err && m_word(m, "or")) {
		bool b = m_and(m);
		r = r || b;
	}
	return r;
}

int marker_eval(const char *marker, const struct marker_env *env, bool *result)
{
	struct mparser m = {.p = marker, .env = env};

	*result = m_or(&m);
	m_ws(&m);
	if (!m.err && *m.p)
		m.err = "unexpected text";
	if (m.err)
		return vf_error(EINVAL, "marker \"%s\": %s", marker, m.err);
	return 0;
}

/* ---- requirements ------------------------------------------------------------ */

void requirement_free(struct requirement *r)
{
	free(r->name);
	free(r->extras);
	free(r->specs);
	free(r->marker);
	free(r->text);
	memset(r, 0, sizeof(*r));
}

int requirement_parse(const char *s, struct requirement *out)
{
	const char *p = s;

	memset(out, 0, sizeof(*out));
	while (isspace((unsigned char)*p))
		p++;
	const char *semi = strchr(p, ';');
	const char *end = semi ? semi : p + strlen(p);
	const char *n = p;
	while (p < end && (isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.'))
		p++;
	/* PEP 508: a name starts with a letter or digit ("." or "-_" would
	 * normalise to an empty name) */
	if (p == n || !isalnum((unsigned char)*n))
		return vf_error(EINVAL, "\"%s\": not a requirement", s);
	out->text = xstrdup(s);
	out->name = pep503_normalize(n, (size_t)(p - n));
	while (p < end && isspace((unsigned char)*p))
		p++;
	if (p < end && *p == '[') {
		const char *close = memchr(p, ']', (size_t)(end - p));
		if (!close) {
			requirement_free(out);
			return vf_error(EINVAL, "\"%s\": missing ]", s);
		}
		out->extras = xstrndup_trim(p + 1, (size_t)(close - p - 1));
		p = close + 1;
	} else {
		out->extras = xstrdup("");
	}
	while (p < end && isspace((unsigned char)*p))
		p++;
	if (p < end && *p == '@') {
		requirement_free(out);
		return vf_error(EINVAL, "\"%s\": direct URL requirements cannot come from the store", s);
	}
	/* "(>=1, <2)" or ">=1,<2" */
	const char *sp = p, *se = end;
	if (sp < se && *sp == '(') {
		sp++;
		const char *c = memchr(sp, ')', (size_t)(se - sp));
		se = c ? c : se;
	}
	struct buf b = {0};
	for (const char *q = sp; q < se; q++)
		if (!isspace((unsigned char)*q))
			buf_addc(&b, *q);
	out->specs = b.data ? b.data : xstrdup("");
	out->marker = semi ? xstrndup_trim(semi + 1, strlen(semi + 1)) : xstrdup("");
	return 0;
}

/* ---- wheel tags ----------------------------------------------------------------- */

static bool in_dotted(const char *set, size_t n, bool (*ok)(const char *, size_t, const char *), const char *xy)
{
	const char *p = set, *e = set + n;

	while (p < e) {
		const char *d = memchr(p, '.', (size_t)(e - p));
		const char *q = d ? d : e;
		if (ok(p, (size_t)(q - p), xy))
			return true;
		p = q + 1;
	}
	return false;
}

static int minor_of(const char *xy)
{
	const char *d = strchr(xy, '.');
	return d ? atoi(d + 1) : 0;
}

/* The minor version of "py3NN"/"cp3NN" (s + 3, n - 3 bytes): -1 unless
 * it is all digits, and few enough not to overflow. */
static int tag_minor(const char *s, size_t n)
{
	int v = 0;

	if (n == 0 || n > 4)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static bool interp_ok(const char *s, size_t n, const char *xy)
{
	char want[16];
	int minor = minor_of(xy);

	snprintf(want, sizeof(want), "cp3%d", minor);
	if (n == strlen(want) && !memcmp(s, want, n))
		return true;
	if ((n == 3 && !memcmp(s, "py3", 3)) || (n == 3 && !memcmp(s, "cp3", 3)))
		return true;
	if (n > 3 && (!memcmp(s, "py3", 3) || !memcmp(s, "cp3", 3))) {
		/* py38 fits 3.11; cp38 too (with abi3) */
		int m = tag_minor(s + 3, n - 3);
		return m >= 0 && m <= minor;
	}
	return false;
}

static bool abi_ok(const char *s, size_t n, const char *xy)
{
	char want[16];

	snprintf(want, sizeof(want), "cp3%d", minor_of(xy));
	return (n == 4 && !memcmp(s, "none", 4)) || (n == 4 && !memcmp(s, "abi3", 4)) ||
	       (n == strlen(want) && !memcmp(s, want, n));
}

static bool plat_ok(const char *s, size_t n, const char *xy)
{
	const char *m = machine();
	size_t ml = strlen(m);

	(void)xy;
	if (n == 3 && !memcmp(s, "any", 3))
		return true;
	if (n < ml + 1 || memcmp(s + n - ml, m, ml) != 0 || s[n - ml - 1] != '_')
		return false;
	return (n >= 5 && !memcmp(s, "linux", 5)) || (n >= 9 && !memcmp(s, "manylinux", 9));
}

bool tags_compatible(const char *tags, const char *python_xy)
{
	const char *p = tags;
	bool any = false;

	while (*p) {
		while (isspace((unsigned char)*p))
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && !isspace((unsigned char)*e))
			e++;
		any = true;
		const char *d1 = memchr(p, '-', (size_t)(e - p));
		const char *d2 = d1 ? memchr(d1 + 1, '-', (size_t)(e - d1 - 1)) : NULL;
		if (d1 && d2 && in_dotted(p, (size_t)(d1 - p), interp_ok, python_xy) &&
		    in_dotted(d1 + 1, (size_t)(d2 - d1 - 1), abi_ok, python_xy) &&
		    in_dotted(d2 + 1, (size_t)(e - d2 - 1), plat_ok, python_xy))
			return true;
		p = e;
	}
	return !any;
}
