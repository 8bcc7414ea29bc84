/*
 * distinfo.c - parsers for the files of a dist-info directory and for
 * pyvenv.cfg (see distinfo.h).
 */
#include "distinfo.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
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
			e->key = xstrndup_trim(p, (size_t)(eq - p));
			for (char *k = e->key; *k; k++)
				*k = (char)tolower((unsigned char)*k);
			e->value = xstrndup_trim(eq + 1, (size_t)(le - eq - 1));
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
			_cleanup_free_ char *v = xstrndup_trim(p + flen + 1, (size_t)(le - p - flen - 1));
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
