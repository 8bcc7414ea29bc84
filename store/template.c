/*
 * template.c - making and rendering path-dependent files (see template.h).
 */
#include "template.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define MAX_SHEBANG 127

static void put_u32(struct buf *b, uint32_t v)
{
	buf_add(b, &v, 4);
}

static void seg(struct buf *b, uint32_t type, const char *s, size_t n, uint32_t *count)
{
	if (type == TPL_SEG_LIT && n == 0)
		return;
	put_u32(b, type);
	put_u32(b, (uint32_t)n);
	buf_add(b, s, n);
	(*count)++;
}

static void header(struct buf *b, uint32_t kind, uint32_t flags)
{
	buf_reset(b);
	buf_add(b, TPL_MAGIC, 8); /* includes the NUL */
	put_u32(b, kind);
	put_u32(b, flags);
	put_u32(b, 0); /* segment count, patched at the end */
}

static void set_count(struct buf *b, uint32_t n)
{
	memcpy(b->data + 16, &n, 4);
}

/* A path ends at a character that cannot continue a file name component. */
static bool path_boundary(const char *p, const char *end)
{
	if (p == end)
		return true;
	unsigned char c = (unsigned char)*p;
	return !(c == '_' || c == '-' || c == '.' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		 (c >= 'A' && c <= 'Z') || c >= 0x80);
}

int tpl_make_subst(const char *data, size_t len, const struct tpl_paths *p, struct buf *blob)
{
	const char *cand[2] = {p->env, p->env_real && strcmp(p->env_real, p->env) ? p->env_real : NULL};
	uint32_t types[2] = {TPL_SEG_ENV, TPL_SEG_ENV_REAL};
	size_t clen[2] = {strlen(cand[0]), cand[1] ? strlen(cand[1]) : 0};
	_cleanup_free_ char *prompt = p->prompt ? xasprintf("(%s) ", p->prompt) : NULL;
	size_t plen = prompt ? strlen(prompt) : 0;
	const char *end = data + len, *lit = data;
	uint32_t count = 0, flags = 0;
	bool any = false;

	header(blob, TPL_SUBST, 0);
	for (const char *s = data; s < end;) {
		/* Longest env spelling first. */
		int best = -1;
		for (int i = 0; i < 2; i++) {
			if (!cand[i] || clen[i] == 0 || (size_t)(end - s) < clen[i] || memcmp(s, cand[i], clen[i]))
				continue;
			if (!path_boundary(s + clen[i], end))
				continue;
			if (best < 0 || clen[i] > clen[best])
				best = i;
		}
		if (best >= 0) {
			if (s == data + 2 && data[0] == '#' && data[1] == '!' && (size_t)(end - s) >= clen[best] + 5 &&
			    memcmp(s + clen[best], "/bin/", 5) == 0)
				flags |= TPL_F_SHEBANG;
			seg(blob, TPL_SEG_LIT, lit, (size_t)(s - lit), &count);
			seg(blob, types[best], NULL, 0, &count);
			s += clen[best];
			lit = s;
			any = true;
			continue;
		}
		if (prompt && (size_t)(end - s) >= plen && memcmp(s, prompt, plen) == 0) {
			seg(blob, TPL_SEG_LIT, lit, (size_t)(s - lit) + 1, &count); /* through "(" */
			seg(blob, TPL_SEG_PROMPT, NULL, 0, &count);
			s += plen - 2; /* ") " stays literal */
			lit = s;
			any = true;
			continue;
		}
		s++;
	}
	if (!any) {
		buf_reset(blob);
		return 0;
	}
	seg(blob, TPL_SEG_LIT, lit, (size_t)(end - lit), &count);
	set_count(blob, count);
	memcpy(blob->data + 12, &flags, 4);
	return 1;
}

void tpl_record_begin(struct buf *blob)
{
	header(blob, TPL_RECORD, 0);
}

static uint32_t get_count(struct buf *b)
{
	uint32_t n;

	memcpy(&n, b->data + 16, 4);
	return n;
}

void tpl_record_literal(struct buf *blob, const char *s, size_t n)
{
	uint32_t count = get_count(blob);

	seg(blob, TPL_SEG_LIT, s, n, &count);
	set_count(blob, count);
}

void tpl_record_row(struct buf *blob, unsigned root, const char *path, size_t n)
{
	uint32_t count = get_count(blob);
	_cleanup_free_ char *s = xmalloc(n + 1);

	s[0] = (char)('0' + root);
	memcpy(s + 1, path, n);
	seg(blob, TPL_SEG_RECORD_ROW, s, n + 1, &count);
	set_count(blob, count);
}

void tpl_record_end(struct buf *blob)
{
	(void)blob;
}

bool tpl_is_template(const void *blob, size_t len)
{
	return len >= 20 && memcmp(blob, TPL_MAGIC, 8) == 0;
}

static const char *basename_of(const char *path, size_t *n)
{
	size_t len = strlen(path);

	while (len > 1 && path[len - 1] == '/')
		len--;
	const char *s = path + len;
	while (s > path && s[-1] != '/')
		s--;
	*n = (size_t)(path + len - s);
	return s;
}

/*
 * A direct shebang that does not fit (or names a path with a space) is
 * rewritten into the trampoline form pip and uv use.
 */
static void fix_shebang(struct buf *out, const char *env)
{
	char *nl = memchr(out->data, '\n', out->len);
	size_t line = nl ? (size_t)(nl - out->data) : out->len;
	bool space = strchr(env, ' ') != NULL;
	size_t elen = strlen(env);

	if (line + 1 <= MAX_SHEBANG && !space)
		return;
	if (line < 2 + elen + 5)
		return;
	/* "#!" env "/bin/" interp [post] */
	const char *interp = out->data + 2 + elen + 5;
	const char *lend = out->data + line;
	const char *post = interp;
	while (post < lend && *post != ' ')
		post++;
	struct buf t = {0};
	buf_adds(&t, "#!/bin/sh\n'''exec' ");
	if (space)
		buf_addc(&t, '"');
	buf_add(&t, out->data + 2, (size_t)(post - (out->data + 2)));
	if (space)
		buf_addc(&t, '"');
	buf_add(&t, post, (size_t)(lend - post));
	buf_adds(&t, " \"$0\" \"$@\"\n' '''\n");
	if (nl)
		buf_add(&t, nl + 1, out->len - line - 1);
	buf_free(out);
	*out = t;
}

int tpl_render(const void *blob, size_t len, const struct tpl_ctx *c, struct buf *out)
{
	const uint8_t *p = blob, *end = p + len;
	uint32_t kind, flags, n;

	buf_reset(out);
	if (!tpl_is_template(blob, len))
		return vf_error(EIO, "not a template object");
	memcpy(&kind, p + 8, 4);
	memcpy(&flags, p + 12, 4);
	memcpy(&n, p + 16, 4);
	p += 20;
	const char *shebang_env = NULL; /* the spelling of the env in "#!<env>/bin/..." */
	for (uint32_t i = 0; i < n; i++) {
		uint32_t type, slen;
		if (end - p < 8)
			return vf_error(EIO, "truncated template");
		memcpy(&type, p, 4);
		memcpy(&slen, p + 4, 4);
		p += 8;
		if ((size_t)(end - p) < slen)
			return vf_error(EIO, "truncated template");
		switch (type) {
		case TPL_SEG_LIT:
			buf_add(out, p, slen);
			break;
		case TPL_SEG_ENV:
		case TPL_SEG_ENV_REAL: {
			const char *e = type == TPL_SEG_ENV || !c->env_real ? c->env : c->env_real;
			if (out->len == 2 && !shebang_env)
				shebang_env = e;
			buf_adds(out, e);
			break;
		}
		case TPL_SEG_PROMPT: {
			size_t bn;
			const char *b = basename_of(c->env, &bn);
			buf_add(out, b, bn);
			break;
		}
		case TPL_SEG_RECORD_ROW: {
			_cleanup_buf_ struct buf file = {0};
			char hash[RECORD_HASH_MAX];
			if (slen < 2 || !c->render_file)
				return vf_error(EIO, "bad RECORD row in template");
			int r = c->render_file(c->cb, (unsigned)(p[0] - '0'), (const char *)p + 1, slen - 1, &file);
			if (r < 0)
				return r;
			sha256_record(file.data ? file.data : "", file.len, hash);
			buf_printf(out, "%s,%zu", hash, file.len);
			break;
		}
		default:
			return vf_error(EIO, "unknown template segment %u", type);
		}
		p += slen;
	}
	if (!out->data)
		buf_grow(out, 0), out->data[0] = '\0';
	if (kind == TPL_SUBST && (flags & TPL_F_SHEBANG) && shebang_env)
		fix_shebang(out, shebang_env);
	return 0;
}
