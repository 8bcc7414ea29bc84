/*
 * ingest.c - reading a file's content into the store (see ingest.h).
 */
#include "ingest.h"

#include <errno.h>
#include <sys/mman.h>

#define SMALL_FILE (1u << 20) /* larger files are mapped, not read */

int ingest_read(struct ingest_file *c, int fd, uint64_t size, struct buf *scratch)
{
	if (fstat(fd, &c->st) < 0)
		return vf_error_errno(errno, "%s/%s", c->top, c->path);
	if (!S_ISREG(c->st.st_mode) || (uint64_t)c->st.st_size != size)
		return vf_error(EAGAIN, "%s/%s %s", c->top, c->path, c->changed);
	c->len = (size_t)c->st.st_size;
	if (c->len > SMALL_FILE) {
		void *data = mmap(NULL, c->len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (data == MAP_FAILED)
			return vf_error_errno(errno, "%s/%s: mmap", c->top, c->path);
		madvise(data, c->len, MADV_SEQUENTIAL);
		c->data = data;
		c->mapped = true;
	} else {
		buf_grow(scratch, c->len);
		ssize_t n = read_full(fd, scratch->data, c->len);
		if (n < 0)
			return vf_error_errno((int)-n, "%s/%s", c->top, c->path);
		if ((size_t)n != c->len)
			return vf_error(EAGAIN, "%s/%s %s", c->top, c->path, c->changed);
		c->data = scratch->data;
	}
	c->put = c->data;
	c->put_len = c->len;
	return 0;
}

void ingest_use_alt(struct ingest_file *c)
{
	c->put = c->alt.data;
	c->put_len = c->alt.len;
}

bool ingest_template(struct ingest_file *c, const struct tpl_paths *tp)
{
	if (tpl_make_subst(c->data, c->len, tp, &c->alt) != 1)
		return false;
	ingest_use_alt(c);
	return true;
}

int ingest_put(struct store_txn *txn, const struct ingest_file *c, mode_t mode, int dirfd, const char *name,
	       struct objid *id, uint64_t *added, bool *linked)
{
	bool made_link = false;
	int r;

	if (dirfd >= 0 && c->put == c->data)
		r = store_txn_link(txn, dirfd, name, c->data, c->len, mode, id, added, &made_link);
	else
		r = store_txn_put_file(txn, c->put, c->put_len, mode, id, added);
	if (linked)
		*linked = made_link;
	if (r < 0)
		return vf_error_prefix(-r, "%s/%s: ", c->top, c->path);
	return 0;
}

void ingest_release(struct ingest_file *c)
{
	if (c->mapped)
		munmap(c->data, c->len);
	c->mapped = false;
	buf_free(&c->alt);
}
