/*
 * pyfmt.c - parsers for the Python packaging formats (see pyfmt.h).
 */
#include "pyfmt.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

/* ---- RECORD -------------------------------------------------------------- */

/* Parse one CSV field starting at *pp; stops at ',' or end of line. */
static int csv_field(const char **pp, const char *end, struct buf *out)
{
	const char *p = *pp;

	buf_reset(out);
	if (p < end && *p == '"') {
		p++;
		for (;;) {
			if (p >= end)
				return -1; /* unterminated quote */
			if (*p == '"') {
				if (p + 1 < end && p[1] == '"') {
					buf_addc(out, '"');
					p += 2;
					continue;
				}
				p++;
				break;
			}
			buf_addc(out, *p++);
		}
		if (p < end && *p != ',' && *p != '\n' && *p != '\r')
			return -1; /* text after the closing quote */
	} else {
		while (p < end && *p != ',' && *p != '\n' && *p != '\r') {
			if (*p == '"')
				return -1;
			buf_addc(out, *p++);
		}
	}
	if (!out->data)
		buf_grow(out, 0), out->data[0] = '\0';
	*pp = p;
	return 0;
}

int record_parse(const char *text, size_t len, const char *what, struct record *out)
{
	const char *p = text, *end = text + len;
	_cleanup_buf_ struct buf f = {0};
	unsigned line = 0;
	size_t cap = 0;

	memset(out, 0, sizeof(*out));
	if (memchr(text, '\0', len))
		return vf_error(EINVAL, "%s: NUL byte in RECORD", what);
	while (p < end) {
		line++;
		const char *row = p;
		if (*p == '\n' || *p == '\r') { /* blank line */
			p += (*p == '\r' && p + 1 < end && p[1] == '\n') ? 2 : 1;
			continue;
		}
		char *fields[3] = {0};
		size_t hash_off = 0;
		int nf = 0;
		for (;;) {
			if (nf == 1)
				hash_off = (size_t)(p - text);
			if (csv_field(&p, end, &f) < 0) {
				for (int i = 0; i < nf && i < 3; i++)
					free(fields[i]);
				record_free(out);
				return vf_error(EINVAL, "%s:%u: malformed CSV quoting", what, line);
			}
			if (nf < 3)
				fields[nf] = xstrndup(f.data, f.len);
			nf++;
			if (p < end && *p == ',') {
				p++;
				continue;
			}
			break;
		}
		size_t row_end = (size_t)(p - text);
		if (p < end && *p == '\r')
			p++;
		if (p < end && *p == '\n')
			p++;
		const char *err = NULL;
		int64_t size = -1;
		if (nf != 3)
			err = "expected 3 fields (path,hash,size)";
		else if (!fields[0][0])
			err = "empty path";
		else if (fields[1][0] && !strchr(fields[1], '='))
			err = "hash is not of the form algorithm=digest";
		else if (fields[2][0]) {
			char *e;
			errno = 0;
			long long v = strtoll(fields[2], &e, 10);
			if (errno || *e || v < 0 || !isdigit((unsigned char)fields[2][0]))
				err = "size is not a non-negative integer";
			else
				size = v;
		}
		if (err) {
			for (int i = 0; i < 3; i++)
				free(fields[i]);
			record_free(out);
			return vf_error(EINVAL, "%s:%u: %s", what, line, err);
		}
		if (out->n == cap) {
			cap = cap ? cap * 2 : 64;
			out->rows = xrealloc(out->rows, cap * sizeof(*out->rows));
		}
		struct record_row *r = &out->rows[out->n++];
		r->path = fields[0];
		r->hash = fields[1];
		free(fields[2]);
		r->size = size;
		r->line = line;
		r->row_off = (size_t)(row - text);
		r->hash_off = hash_off;
		r->row_end = row_end;
	}
	return 0;
}

void record_free(struct record *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->rows[i].path);
		free(r->rows[i].hash);
	}
	free(r->rows);
	r->rows = NULL;
	r->n = 0;
}

/* ---- pyvenv.cfg ---------------------------------------------------------- */

static char *strip(const char *s, size_t n)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	return xstrndup(s, n);
}

int pyvenv_cfg_parse(const char *text, size_t len, struct pyvenv_cfg *out)
{
	const char *p = text, *end = text + len;
	size_t cap = 0;

	memset(out, 0, sizeof(*out));
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		const char *eq = memchr(p, '=', (size_t)(le - p));
		if (eq) {
			if (out->n == cap) {
				cap = cap ? cap * 2 : 16;
				out->e = xrealloc(out->e, cap * sizeof(*out->e));
			}
			struct cfg_entry *e = &out->e[out->n++];
			e->key = strip(p, (size_t)(eq - p));
			for (char *k = e->key; *k; k++)
				*k = (char)tolower((unsigned char)*k);
			e->value = strip(eq + 1, (size_t)(le - eq - 1));
		}
		p = nl ? nl + 1 : end;
	}
	return 0;
}

const char *pyvenv_cfg_get(const struct pyvenv_cfg *c, const char *key)
{
	/* the last occurrence wins, as in CPython's site.py */
	for (size_t i = c->n; i-- > 0;)
		if (!strcmp(c->e[i].key, key))
			return c->e[i].value;
	return NULL;
}

void pyvenv_cfg_free(struct pyvenv_cfg *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->e[i].key);
		free(c->e[i].value);
	}
	free(c->e);
	memset(c, 0, sizeof(*c));
}

/* ---- METADATA / WHEEL ---------------------------------------------------- */

size_t rfc822_get(const char *text, size_t len, const char *field, char sep, struct buf *out)
{
	const char *p = text, *end = text + len;
	size_t flen = strlen(field), found = 0;

	buf_reset(out);
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		if (le == p || (le == p + 1 && *p == '\r'))
			break; /* end of headers */
		if ((size_t)(le - p) > flen && strncasecmp(p, field, flen) == 0 && p[flen] == ':') {
			_cleanup_free_ char *v = strip(p + flen + 1, (size_t)(le - p - flen - 1));
			if (found++)
				buf_addc(out, sep);
			buf_adds(out, v);
		}
		p = nl ? nl + 1 : end;
	}
	if (!out->data)
		buf_grow(out, 0), out->data[0] = '\0';
	return found;
}

char *pep503_normalize(const char *name, size_t len)
{
	struct buf b = {0};
	bool sep = false;

	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (c == '-' || c == '_' || c == '.') {
			sep = true;
			continue;
		}
		if (sep && b.len)
			buf_addc(&b, '-');
		sep = false;
		buf_addc(&b, (char)tolower((unsigned char)c));
	}
	if (!b.data)
		buf_grow(&b, 0), b.data[0] = '\0';
	return b.data;
}

/* ---- bytecode ------------------------------------------------------------ */

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

bool pyc_timestamp_header(const void *data, size_t len, uint32_t *mtime, uint32_t *size)
{
	const uint8_t *p = data;

	if (len < PYC_HEADER_SIZE || p[2] != '\r' || p[3] != '\n')
		return false;
	if (le32(p + 4) != 0) /* hash-based pyc */
		return false;
	*mtime = le32(p + 8);
	*size = le32(p + 12);
	return true;
}

void pyc_set_mtime(void *data, uint32_t mtime)
{
	uint8_t *p = data;

	p[8] = (uint8_t)mtime;
	p[9] = (uint8_t)(mtime >> 8);
	p[10] = (uint8_t)(mtime >> 16);
	p[11] = (uint8_t)(mtime >> 24);
}

/* marshal.c type codes of str objects, and its "remember me" bit */
#define M_FLAG_REF 0x80

static bool m_short(int t)
{
	return t == 'z' || t == 'Z';
}

static bool m_str(int t)
{
	return m_short(t) || t == 'a' || t == 'A' || t == 'u' || t == 't';
}

static bool is_ascii(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] >= 0x80)
			return false;
	return true;
}

static void m_put_str(struct buf *out, int type, int ref, const char *s, size_t n)
{
	bool interned = type == 'A' || type == 'Z' || type == 't';
	int t;

	if (!is_ascii(s, n))
		t = interned ? 't' : 'u';
	else if (type == 'u' || type == 't')
		t = type;
	else if (n < 256)
		t = interned ? 'Z' : 'z';
	else
		t = interned ? 'A' : 'a';
	buf_addc(out, (char)(t | ref));
	if (m_short(t)) {
		buf_addc(out, (char)n);
	} else {
		uint8_t l[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
		buf_add(out, l, 4);
	}
	buf_add(out, s, n);
}

size_t pyc_rewrite_strings(const void *data, size_t len, const char *needle, bool exact, const char *repl,
			   struct buf *out)
{
	const char *d = data, *p = d + PYC_HEADER_SIZE, *end = d + len, *copied = d;
	size_t nl = strlen(needle), rl = strlen(repl), count = 0;

	buf_reset(out);
	if (len < PYC_HEADER_SIZE || nl == 0)
		goto done;
	while ((p = memmem(p, (size_t)(end - p), needle, nl))) {
		/* a str object is [type][len8] or [type][len32] just before */
		const char *hdr = NULL;
		size_t slen = 0;
		int t2 = p - d >= PYC_HEADER_SIZE + 2 ? (unsigned char)p[-2] & ~M_FLAG_REF : 0;
		int t5 = p - d >= PYC_HEADER_SIZE + 5 ? (unsigned char)p[-5] & ~M_FLAG_REF : 0;
		if (m_short(t2)) {
			hdr = p - 2;
			slen = (unsigned char)p[-1];
		}
		if (!hdr && m_str(t5) && !m_short(t5)) {
			hdr = p - 5;
			slen = le32((const uint8_t *)p - 4);
		}
		if (!hdr || hdr < copied || slen < nl || slen > (size_t)(end - p) || (exact && slen != nl)) {
			p++;
			continue;
		}
		int type = (unsigned char)hdr[0] & ~M_FLAG_REF, ref = (unsigned char)hdr[0] & M_FLAG_REF;
		_cleanup_buf_ struct buf s = {0};
		buf_add(&s, repl, rl);
		buf_add(&s, p + nl, slen - nl);
		buf_add(out, copied, (size_t)(hdr - copied));
		m_put_str(out, type, ref, s.data, s.len);
		copied = p = p + slen;
		count++;
	}
done:
	buf_add(out, copied, (size_t)(end - copied));
	return count;
}

char *pyc_source_path(const char *path, size_t len)
{
	static const char cache[] = "__pycache__/";
	const char *slash = memrchr(path, '/', len);
	const char *file = slash ? slash + 1 : path;
	size_t flen = (size_t)(path + len - file), dlen = (size_t)(file - path);

	if (!mem_has_suffix(file, flen, ".pyc") || dlen < sizeof(cache) - 1 ||
	    memcmp(file - (sizeof(cache) - 1), cache, sizeof(cache) - 1) != 0)
		return NULL;
	if (dlen > sizeof(cache) - 1 && file[-(int)sizeof(cache)] != '/')
		return NULL;
	/* name.tag.pyc or name.tag.opt-N.pyc, as importlib's source_from_cache */
	size_t dots = 0;
	for (size_t i = 0; i < flen; i++)
		dots += file[i] == '.';
	if (dots != 2 && dots != 3)
		return NULL;
	if (dots == 3) {
		const char *opt = memrchr(file, '.', flen - 4);
		if (!opt || strncmp(opt + 1, "opt-", 4) != 0)
			return NULL;
	}
	const char *dot = memchr(file, '.', flen);
	if (dot == file)
		return NULL;
	return xasprintf("%.*s%.*s.py", (int)(dlen - (sizeof(cache) - 1)), path, (int)(dot - file), file);
}

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
		_cleanup_free_ char *spec = strip(p, (size_t)(e - p));
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
		out->extras = strip(p + 1, (size_t)(close - p - 1));
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
	out->marker = semi ? strip(semi + 1, strlen(semi + 1)) : xstrdup("");
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
