/*
 * util.c - helpers shared by every part of venvfs (see util.h).
 */
#include "util.h"

#include <dirent.h>
#include <dlfcn.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <xxhash.h>

/* ---- errors ------------------------------------------------------------- */

static __thread char last_error[2048];

static void error_vset(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

static void error_vset(const char *fmt, va_list ap)
{
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
}

int vf_error(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	error_vset(fmt, ap);
	va_end(ap);
	return -(err > 0 ? err : EIO);
}

int vf_error_errno(int err, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	error_vset(fmt, ap);
	va_end(ap);
	n = strlen(last_error);
	snprintf(last_error + n, sizeof(last_error) - n, ": %s", strerror(err > 0 ? err : EIO));
	return -(err > 0 ? err : EIO);
}

int vf_error_prefix(int err, const char *fmt, ...)
{
	char prefix[1024], old[sizeof(last_error)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, last_error, sizeof(old));
	snprintf(last_error, sizeof(last_error), "%s%s", prefix, old[0] ? old : strerror(err > 0 ? err : EIO));
	return -(err > 0 ? err : EIO);
}

const char *vf_last_error(void)
{
	return last_error;
}

void vf_clear_error(void)
{
	last_error[0] = '\0';
}

/* ---- memory ------------------------------------------------------------- */

static void oom(void)
{
	fputs("venvfs: out of memory\n", stderr);
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p)
		oom();
	return p;
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

char *xstrndup_trim(const char *s, size_t n)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	return xstrndup(s, n);
}

void *xmemdup(const void *p, size_t n)
{
	void *q = xmalloc(n);

	memcpy(q, p, n);
	return q;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		oom();
	va_end(ap);
	return s;
}

void buf_grow(struct buf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 64;
	while (cap < b->len + extra + 1)
		cap *= 2;
	b->data = xrealloc(b->data, cap);
	b->cap = cap;
	b->data[b->len] = '\0';
}

void buf_add(struct buf *b, const void *p, size_t n)
{
	buf_grow(b, n);
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

void buf_addc(struct buf *b, char c)
{
	buf_add(b, &c, 1);
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap, ap2;
	char probe[1];
	int n;

	if (!fmt) /* tells gcc's -fsanitize build that fmt is not NULL below */
		return;
	va_start(ap, fmt);
	va_copy(ap2, ap);
	n = vsnprintf(probe, sizeof(probe), fmt, ap);
	va_end(ap);
	if (n < 0)
		oom();
	buf_grow(b, (size_t)n);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
	va_end(ap2);
	b->len += (size_t)n;
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* ---- string map --------------------------------------------------------- */

static uint64_t *strmap_find(const struct strmap *m, const char *key, size_t len, uint64_t h, size_t *slot)
{
	size_t i = (size_t)h & (m->cap - 1);

	for (;; i = (i + 1) & (m->cap - 1)) {
		struct strmap_slot *s = &m->slots[i];
		if (!s->key) {
			*slot = i;
			return NULL;
		}
		if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)
			return &s->val;
	}
}

uint64_t *strmap_get(const struct strmap *m, const char *key, size_t len)
{
	size_t slot;

	if (!m->cap)
		return NULL;
	return strmap_find(m, key, len, XXH3_64bits(key, len), &slot);
}

uint64_t *strmap_put(struct strmap *m, const char *key, size_t len, bool *created)
{
	uint64_t h = XXH3_64bits(key, len), *v;
	size_t slot;

	if ((m->n + 1) * 4 > m->cap * 3) {
		struct strmap old = *m;
		m->cap = old.cap ? old.cap * 2 : 64;
		m->slots = xcalloc(m->cap, sizeof(*m->slots));
		for (size_t i = 0; i < old.cap; i++) {
			if (!old.slots[i].key)
				continue;
			strmap_find(m, old.slots[i].key, old.slots[i].len, old.slots[i].hash, &slot);
			m->slots[slot] = old.slots[i];
		}
		free(old.slots);
	}
	v = strmap_find(m, key, len, h, &slot);
	if (created)
		*created = !v;
	if (v)
		return v;
	struct strmap_slot *s = &m->slots[slot];
	s->key = xstrndup(key, len);
	s->len = len;
	s->hash = h;
	s->val = 0;
	m->n++;
	return &s->val;
}

void strmap_free(struct strmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->slots[i].key);
	free(m->slots);
	m->slots = NULL;
	m->cap = m->n = 0;
}

/* ---- strings and paths -------------------------------------------------- */

bool str_has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool mem_has_suffix(const char *s, size_t n, const char *suffix)
{
	size_t m = strlen(suffix);

	return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

bool str_has_suffix(const char *s, const char *suffix)
{
	return mem_has_suffix(s, strlen(s), suffix);
}

char *path_join(const char *a, const char *b)
{
	size_t la = strlen(a);

	while (*b == '/')
		b++;
	if (la == 0)
		return xstrdup(b);
	if (*b == '\0')
		return xstrdup(a);
	if (a[la - 1] == '/')
		return xasprintf("%s%s", a, b);
	return xasprintf("%s/%s", a, b);
}

char *path_absolute(const char *path)
{
	_cleanup_free_ char *joined = NULL;
	struct buf out = {0};

	if (path[0] != '/') {
		_cleanup_free_ char *cwd = getcwd(NULL, 0);
		if (!cwd)
			return NULL;
		joined = path_join(cwd, path);
		path = joined;
	}
	/* Walk components, dropping "." and folding "..". */
	buf_addc(&out, '/');
	for (const char *p = path; *p;) {
		while (*p == '/')
			p++;
		const char *e = strchrnul(p, '/');
		size_t n = (size_t)(e - p);
		if (n == 0 || (n == 1 && p[0] == '.')) {
			/* skip */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (out.len > 1 && out.data[out.len - 1] != '/')
				out.len--;
			if (out.len > 1)
				out.len--;
			out.data[out.len] = '\0';
		} else {
			if (out.len > 1)
				buf_addc(&out, '/');
			buf_add(&out, p, n);
		}
		p = e;
	}
	return out.data;
}

char *text_escape(const char *s, size_t n)
{
	struct buf b = {0};

	buf_grow(&b, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c >= 0x7f || c == '%' || c == '=')
			buf_printf(&b, "%%%02X", c);
		else
			buf_addc(&b, (char)c);
	}
	if (!b.data)
		buf_grow(&b, 0), b.data[0] = '\0';
	return b.data;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int text_unescape(const char *s, struct buf *out)
{
	buf_reset(out);
	for (; *s; s++) {
		if (*s != '%') {
			buf_addc(out, *s);
			continue;
		}
		int hi = hexval(s[1]), lo = hi >= 0 ? hexval(s[2]) : -1;
		if (hi < 0 || lo < 0)
			return -EINVAL;
		char c = (char)(hi << 4 | lo);
		if (c == '\0')
			return -EINVAL;
		buf_addc(out, c);
		s += 2;
	}
	if (!out->data)
		buf_grow(out, 0), out->data[0] = '\0';
	return 0;
}

/* ---- hashing ------------------------------------------------------------ */

void hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

int hex_decode(const char *in, size_t n, uint8_t *out)
{
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/*
 * libcrypto is opened on the first hash, not linked: loading and relocating
 * it cost every venvfs process ~1 ms at exec (an empty program here: 0.65 ms
 * alone, 1.6 ms linked with it), a sixth of a `venvfs create`, which hashes
 * nothing. The pointers keep OpenSSL's own prototypes, so the compiler still
 * checks every call.
 */
static __typeof__(&EVP_Digest) crypto_digest;
static __typeof__(&EVP_sha256) crypto_sha256;
static pthread_once_t crypto_once = PTHREAD_ONCE_INIT;

static void crypto_open(void)
{
	void *h = dlopen(LIBCRYPTO_SONAME, RTLD_NOW | RTLD_LOCAL);

	if (h) {
		crypto_digest = (__typeof__(crypto_digest))dlsym(h, "EVP_Digest");
		crypto_sha256 = (__typeof__(crypto_sha256))dlsym(h, "EVP_sha256");
	}
	if (!crypto_digest || !crypto_sha256) {
		fprintf(stderr, "venvfs: cannot load SHA-256 from %s: %s\n", LIBCRYPTO_SONAME, dlerror());
		abort();
	}
}

void sha256_raw(const void *data, size_t len, uint8_t out[32])
{
	unsigned int n = 32;

	pthread_once(&crypto_once, crypto_open);
	if (!crypto_digest(data, len, out, &n, crypto_sha256(), NULL))
		abort();
}

void b64url_nopad(const uint8_t *in, size_t n, char *out)
{
	static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0, i;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = tbl[v >> 18];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = tbl[(v >> 6) & 63];
		out[o++] = tbl[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		out[o++] = tbl[v >> 18];
		out[o++] = tbl[(v >> 12) & 63];
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = tbl[v >> 18];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = tbl[(v >> 6) & 63];
	}
	out[o] = '\0';
}

void sha256_record(const void *data, size_t len, char out[RECORD_HASH_MAX])
{
	uint8_t d[32];

	sha256_raw(data, len, d);
	memcpy(out, "sha256=", 7);
	b64url_nopad(d, sizeof(d), out + 7);
}

/* ---- file helpers ------------------------------------------------------- */

ssize_t read_full(int fd, void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = read(fd, (char *)buf + done, n - done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

ssize_t pread_full(int fd, void *buf, size_t n, off_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

int write_full(int fd, const void *buf, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = write(fd, (const char *)buf + done, n - done);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)r;
	}
	return 0;
}

/* The rest of read_file_at() once path is open (fd), or failed (-errno). */
static int read_file_fd(int fd, const char *path, size_t max, struct buf *out)
{
	struct stat st;
	ssize_t r;

	if (fstat(fd, &st) < 0)
		return vf_error_errno(errno, "%s", path);
	if (!S_ISREG(st.st_mode))
		return vf_error(EINVAL, "%s: not a regular file", path);
	if ((size_t)st.st_size > max)
		return vf_error(EFBIG, "%s: file too large (%lld bytes)", path, (long long)st.st_size);
	buf_grow(out, (size_t)st.st_size);
	r = read_full(fd, out->data, (size_t)st.st_size);
	if (r < 0)
		return vf_error_errno((int)-r, "%s: read", path);
	out->len = (size_t)r;
	out->data[out->len] = '\0';
	return 0;
}

int read_file_at(int dirfd, const char *path, size_t max, struct buf *out)
{
	_cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

	buf_reset(out);
	if (fd < 0)
		return vf_error_errno(errno, "%s", path);
	return read_file_fd(fd, path, max, out);
}

static DIR *opendir_fd(int fd)
{
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (!d && fd >= 0) {
		int e = errno;
		close(fd);
		errno = e;
	}
	return d;
}

DIR *opendir_at(int dirfd, const char *path)
{
	return opendir_fd(openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
}

int vf_error_read_only_store(const char *home)
{
	return vf_error(EROFS,
			"the store %s is on a read-only file system; it can be listed, verified, "
			"exported and mounted read-only, not changed",
			home);
}

/* ---- never leaving a directory ------------------------------------------ */

/* set once openat2() is found missing (ENOSYS) or filtered (EPERM) */
static bool no_openat2;

int openat_nofollow_steps(int dirfd, const char *path, int flags, mode_t mode)
{
	_cleanup_free_ char *p = xstrdup(path);
	_cleanup_close_ int cur = -1;
	char *name = p, *slash;
	int at = dirfd, fd;

	flags |= O_NOFOLLOW | O_CLOEXEC;
	while ((slash = strchr(name, '/'))) {
		*slash = '\0';
		if (!strcmp(name, ".."))
			return -EXDEV;
		if (*name && strcmp(name, ".")) {
			int next = openat(at, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (next < 0)
				return -errno;
			closep(&cur);
			at = cur = next;
		}
		name = slash + 1;
	}
	if (!strcmp(name, ".."))
		return -EXDEV;
	fd = openat(at, *name ? name : ".", flags, mode);
	if (fd < 0)
		return -errno;
	/* O_PATH | O_NOFOLLOW opens a symlink itself: refused like openat2 does */
	struct stat st;
	if ((flags & O_PATH) && (fstat(fd, &st) < 0 || S_ISLNK(st.st_mode))) {
		close(fd);
		return -ELOOP;
	}
	return fd;
}

int openat_beneath(int dirfd, const char *path, int flags, mode_t mode)
{
	flags |= O_NOFOLLOW | O_CLOEXEC;
#ifdef SYS_openat2
	if (!__atomic_load_n(&no_openat2, __ATOMIC_RELAXED)) {
		struct open_how how = {
			.flags = (uint64_t)flags,
			.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
		};
		int fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
		if (fd >= 0)
			return fd;
		if (errno != ENOSYS && errno != EPERM)
			return -errno;
		__atomic_store_n(&no_openat2, true, __ATOMIC_RELAXED);
	}
#endif
	return openat_nofollow_steps(dirfd, path, flags, mode);
}

int beneath_error(int dirfd, const char *where, const char *path, int neg)
{
	const char *sep = where ? "/" : "";

	if (!where)
		where = "";
	if (neg == -ELOOP || neg == -ENOTDIR || neg == -EXDEV) {
		/* which component is the link: the first one that is */
		_cleanup_free_ char *p = xstrdup(path);
		for (char *s = p;; s++) {
			bool end = !*s;
			struct stat st;
			if (*s && *s != '/')
				continue;
			*s = '\0';
			if (*p && fstatat(dirfd, p, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
				return vf_error(EIO,
						"%s%s%s is a symbolic link, which the store layout never makes "
						"(run venvfs store verify)",
						where, sep, p);
			if (end)
				break;
			*s = '/';
		}
		if (neg == -EXDEV)
			return vf_error(EIO, "%s%s%s: leads out of its directory", where, sep, path);
	}
	return vf_error_errno(-neg, "%s%s%s", where, sep, path);
}

int read_file_beneath(int dirfd, const char *where, const char *path, size_t max, struct buf *out)
{
	_cleanup_close_ int fd = openat_beneath(dirfd, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0);

	buf_reset(out);
	if (fd < 0)
		return beneath_error(dirfd, where, path, fd);
	return read_file_fd(fd, path, max, out);
}

DIR *opendir_beneath(int dirfd, const char *path)
{
	int fd = openat_beneath(dirfd, path, O_RDONLY | O_DIRECTORY, 0);

	if (fd < 0) {
		errno = -fd;
		return NULL;
	}
	return opendir_fd(fd);
}

bool fd_on_read_only_fs(int fd)
{
	struct statvfs sv;

	return fstatvfs(fd, &sv) == 0 && (sv.f_flag & ST_RDONLY);
}

/* mkdir name in at (0700) and open it: a directory of ours nobody else may write */
static int private_dir(int at, const char *name, const char *path)
{
	struct stat st;

	if (mkdirat(at, name, 0700) < 0 && errno != EEXIST)
		return vf_error_errno(errno, "%s", path);
	int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return vf_error_errno(errno, "%s", path);
	if (fstat(fd, &st) < 0 || st.st_uid != geteuid() || (st.st_mode & 022)) {
		close(fd);
		return vf_error(EPERM, "%s: not a directory of this user's that only it may write", path);
	}
	return fd;
}

int user_runtime_dir_open(const char *sub, char **path)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	_cleanup_free_ char *base = NULL, *top = NULL;
	_cleanup_close_ int bfd = -1, tfd = -1;

	if (xdg && xdg[0] == '/') {
		base = xstrdup(xdg);
		top = path_join(base, "venvfs");
	} else {
		base = xstrdup("/tmp");
		top = xasprintf("/tmp/venvfs-%u", (unsigned)geteuid());
	}
	bfd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (bfd < 0)
		return vf_error_errno(errno, "%s", base);
	tfd = private_dir(bfd, top + strlen(base) + 1, top);
	if (tfd < 0)
		return tfd;
	_cleanup_free_ char *full = path_join(top, sub);
	int fd = private_dir(tfd, sub, full);
	if (fd >= 0 && path)
		*path = steal_pointer(&full);
	return fd;
}

int fsync_dir_at(int dirfd, const char *path)
{
	_cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || fsync(fd) < 0)
		return -errno;
	return 0;
}

int write_file_new(int dirfd, const char *name, const void *data, size_t len, mode_t mode, bool durable)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	int r;

	if (fd < 0)
		return vf_error_errno(errno, "%s", name);
	r = write_full(fd, data, len);
	if (r == 0 && fchmod(fd, mode) < 0)
		r = -errno;
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dirfd, name, 0);
		return vf_error_errno(-r, "writing %s", name);
	}
	return 0;
}

int write_file_atomic(int dirfd, const char *name, const void *data, size_t len, mode_t mode)
{
	_cleanup_free_ char *tmp = NULL;
	_cleanup_free_ char *dir = NULL;
	const char *slash = strrchr(name, '/');
	int r;

	if (slash) {
		dir = xstrndup(name, (size_t)(slash - name));
		tmp = xasprintf("%s/.tmp.%s.%016llx", dir, slash + 1, (unsigned long long)random_u64());
	} else {
		tmp = xasprintf(".tmp.%s.%016llx", name, (unsigned long long)random_u64());
	}
	r = write_file_new(dirfd, tmp, data, len, mode, true);
	if (r < 0)
		return vf_error_prefix(-r, "writing %s: ", name);
	if (renameat(dirfd, tmp, dirfd, name) < 0) {
		r = vf_error_errno(errno, "writing %s", name);
		unlinkat(dirfd, tmp, 0);
		return r;
	}
	r = fsync_dir_at(dirfd, dir ? dir : ".");
	if (r < 0)
		return vf_error_errno(-r, "fsync of the directory of %s", name);
	return 0;
}

int mkdir_p_at(int dirfd, const char *path, mode_t mode)
{
	_cleanup_free_ char *p = xstrdup(path);

	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdirat(dirfd, p, mode) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdirat(dirfd, p, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int rm_rf_fd(int dfd)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	int r = 0;

	if (!d) {
		close(dfd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) == 0)
			continue;
		if (errno == EISDIR || errno == EPERM) {
			int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0) {
				if (errno != ENOENT)
					r = -errno;
				continue;
			}
			int rr = rm_rf_fd(sub);
			if (rr < 0)
				r = rr;
			if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0 && errno != ENOENT)
				r = -errno;
		} else if (errno != ENOENT) {
			r = -errno;
		}
	}
	closedir(d);
	return r;
}

int rm_rf_at(int dirfd, const char *path)
{
	int fd;

	if (unlinkat(dirfd, path, 0) == 0 || errno == ENOENT)
		return 0;
	fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	/* Directories we made read-only must be writable to be emptied. */
	fchmod(fd, 0700);
	int r = rm_rf_fd(fd);
	if (unlinkat(dirfd, path, AT_REMOVEDIR) < 0 && errno != ENOENT)
		return r < 0 ? r : -errno;
	return r;
}

void progress_init(struct progress *p, const char *what, bool enabled)
{
	p->on = enabled && isatty(STDERR_FILENO);
	p->what = what;
	p->last_ns = 0;
	p->busy = 0;
}

void progress_update(struct progress *p, uint64_t done, uint64_t total, uint64_t bytes)
{
	if (!p->on)
		return;
	uint64_t now = now_ns();
	if (now - __atomic_load_n(&p->last_ns, __ATOMIC_RELAXED) < 100000000ull && done != total)
		return;
	if (__atomic_exchange_n(&p->busy, 1, __ATOMIC_ACQUIRE))
		return;
	p->last_ns = now;
	fprintf(stderr, "\r%s: %llu/%llu files, %.1f MB   ", p->what, (unsigned long long)done,
		(unsigned long long)total, (double)bytes / 1e6);
	fflush(stderr);
	__atomic_store_n(&p->busy, 0, __ATOMIC_RELEASE);
}

void progress_done(struct progress *p)
{
	if (p->on && p->last_ns) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
}

static int copy_xattrs(int from, int to)
{
	char names[4096], value[4096];
	ssize_t n = flistxattr(from, names, sizeof(names));

	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1) {
		if (strncmp(names + i, "user.", 5) != 0)
			continue;
		ssize_t v = fgetxattr(from, names + i, value, sizeof(value));
		if (v >= 0 && fsetxattr(to, names + i, value, (size_t)v, 0) < 0)
			return -errno;
	}
	return 0;
}

int copy_file(int in, int out, uint64_t size)
{
	if (size == 0 || ioctl(out, FICLONE, in) == 0)
		return 0;
	loff_t off = 0;
	while ((uint64_t)off < size) {
		ssize_t n = copy_file_range(in, &off, out, NULL, (size_t)(size - (uint64_t)off), 0);
		if (n > 0)
			continue;
		if (n == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
			return -errno;
		char buf[1 << 16];
		for (;;) {
			ssize_t rn = pread(in, buf, sizeof(buf), off);
			if (rn < 0)
				return -errno;
			if (rn == 0)
				break;
			int w = write_full(out, buf, (size_t)rn);
			if (w < 0)
				return w;
			off += rn;
		}
		break;
	}
	return (uint64_t)off == size ? 0 : -EIO;
}

int copy_tree(int src_dirfd, int dst_dirfd)
{
	DIR *d = opendir_at(src_dirfd, ".");
	struct dirent *de;
	int r = 0;

	if (!d)
		return -errno;
	while (r == 0 && (de = readdir(d))) {
		const char *n = de->d_name;
		struct stat st;
		if (!strcmp(n, ".") || !strcmp(n, ".."))
			continue;
		if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			r = -errno;
			break;
		}
		struct timespec ts[2] = {st.st_atim, st.st_mtim};
		if (S_ISDIR(st.st_mode)) {
			if (mkdirat(dst_dirfd, n, 0700) < 0) {
				r = -errno;
				break;
			}
			int s2 = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			int d2 = openat(dst_dirfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (s2 < 0 || d2 < 0)
				r = -errno;
			if (r == 0)
				r = copy_tree(s2, d2);
			if (r == 0)
				r = copy_xattrs(s2, d2);
			if (r == 0 && (fchmod(d2, st.st_mode & 07777) < 0 || futimens(d2, ts) < 0))
				r = -errno;
			if (s2 >= 0)
				close(s2);
			if (d2 >= 0)
				close(d2);
		} else if (S_ISREG(st.st_mode)) {
			int in = openat(dirfd(d), n, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			int out = openat(dst_dirfd, n, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (in < 0 || out < 0)
				r = -errno;
			if (r == 0)
				r = copy_file(in, out, st.st_size);
			if (r == 0)
				r = copy_xattrs(in, out);
			if (r == 0 && (fchmod(out, st.st_mode & 07777) < 0 || futimens(out, ts) < 0))
				r = -errno;
			if (in >= 0)
				close(in);
			if (out >= 0)
				close(out);
		} else if (S_ISLNK(st.st_mode)) {
			char target[PATH_MAX + 1];
			ssize_t l = readlinkat(dirfd(d), n, target, sizeof(target) - 1);
			if (l < 0 || (target[l] = '\0', symlinkat(target, dst_dirfd, n) < 0) ||
			    utimensat(dst_dirfd, n, ts, AT_SYMLINK_NOFOLLOW) < 0)
				r = -errno;
		} else {
			if (mknodat(dst_dirfd, n, st.st_mode, st.st_rdev) < 0 ||
			    utimensat(dst_dirfd, n, ts, AT_SYMLINK_NOFOLLOW) < 0)
				r = -errno;
		}
	}
	closedir(d);
	return r;
}

uint64_t random_u64(void)
{
	uint64_t v;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		v = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
	}
	return v;
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
