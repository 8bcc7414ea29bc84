/*
 * pyc.c - reading and rewriting Python bytecode files (see pyc.h).
 */
#include "pyc.h"

#include <string.h>

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
