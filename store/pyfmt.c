/*
 * pyfmt.c - parsers for the Python packaging formats (see pyfmt.h).
 */
#include "pyfmt.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

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
		v = v * 10 + (**p - '0');
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
	/* pre-release key: dev-only releases sort before pre-releases,
	 * finals after them */
	long long pa = a->pre_phase ? a->pre_phase * 1000000000LL + a->pre
				    : (!a->has_post && a->has_dev ? -1 : 4000000000LL);
	long long pb = b->pre_phase ? b->pre_phase * 1000000000LL + b->pre
				    : (!b->has_post && b->has_dev ? -1 : 4000000000LL);
	if ((c = cmpll(pa, pb)))
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
