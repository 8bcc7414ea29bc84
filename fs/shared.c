/*
 * shared.c - serving store files (N_SHARED nodes): each object checked
 * against its name before it is served, small files put in the page cache
 * at their first open, large ones handed to the kernel in passthrough.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs_i.h"

/*
 * Open a shared node's object and check it once: a missing object, or a
 * size other than the manifest's, makes every read fail with EIO, and the
 * log names the object. Content is checked against the object's name too,
 * once per daemon and object file (checked_before(), below): before the
 * first byte is served for objects up to CHECK_SYNC_MAX, in
 * the background for larger ones (a cold import reads only parts of big
 * shared libraries; hashing all of them first cost 10% of its time). A
 * large object found damaged fails from then on and the kernel's cached
 * pages of it are dropped.
 *
 * Large files keep their object open in the node while the kernel knows
 * them (their passthrough backing file, below). Small ones keep none: the
 * caller gets the descriptor (fd_out) and closes it, and the next one opens
 * the object again (a lookup; checked_before() spares the hash). A kernel
 * caching every file of a 29k-file env (an editor indexing it) would
 * otherwise hold more descriptors here than the daemon may have, and
 * opens past the limit failed the files with EIO. Out of descriptors is
 * not damage: the request fails (ENFILE), the file does not.
 *
 * In a group store, another account's object (store_object_foreign()) is
 * one its owner could still change: it is checked before its first byte is
 * served whatever its size, never handed to the kernel (no passthrough, no
 * splice), and each read of it is followed by a look at the file's identity
 * (shared_still_checked()). A write moves the file's ctime before its
 * bytes change, so bytes read are the checked ones if the identity read
 * after them is still the checked one; otherwise the read fails with EIO
 * and so does every later one. What the kernel cached before stays good.
 */
#define CHECK_SYNC_MAX (1u << 20)

static const char *hash_check(int fd, const struct node *n, size_t size)
{
	uint8_t h[16];

	if (size == 0)
		return NULL;
	void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (m == MAP_FAILED)
		return "cannot be read";
	madvise(m, size, MADV_SEQUENTIAL);
	fsd.s->hash(m, size, h);
	munmap(m, size);
	return memcmp(h, n->obj.hash, 16) ? "does not match its name (corrupt)" : NULL;
}

/*
 * Objects this daemon has hashed and found whole, by id, with the object
 * file's identity at the time (inode, ctime, size). An object is never
 * written after its insert, so its content can only change by a write to
 * that file, which moves its ctime, or by another file under its name, a
 * new inode: a node made again for a checked object after the kernel forgot
 * the last one (memory pressure, drop_caches) is served without hashing
 * the whole file again. Hashing again each file a cold heavy import opens
 * was a tenth of its time (1.21x native with it, 1.08x without, per-round
 * medians of 9). A daemon started afresh checks every object on first use.
 * Under fsd.lock.
 */
static struct strmap checked;

static uint64_t object_identity(const struct stat *st)
{
	uint64_t v[4] = {st->st_ino, (uint64_t)st->st_ctim.tv_sec, (uint64_t)st->st_ctim.tv_nsec,
			 (uint64_t)st->st_size};

	return XXH3_64bits(v, sizeof(v)) | 1; /* never 0, a new slot's value */
}

/* Under fsd.lock. */
static bool checked_before(const struct node *n, uint64_t identity)
{
	uint64_t *v = strmap_get(&checked, (const char *)&n->obj, sizeof(n->obj));

	return v && *v == identity;
}

/* Under fsd.lock. */
static void checked_now(const struct node *n, uint64_t identity)
{
	*strmap_put(&checked, (const char *)&n->obj, sizeof(n->obj), NULL) = identity;
}

static void mark_damaged(struct node *n, const char *why)
{
	char path[OBJID_STR_MAX];

	objid_path(&n->obj, path);
	if (n->state >= 0) {
		n->state = -EIO;
		fsd.st.damaged_objects++;
		fs_log("objects/%s %s: reads of %s fail with EIO (venvfs store verify lists the damage)", path, why,
		       n->seen_as ? n->seen_as : "it");
	}
}

static void background_check(void *arg)
{
	struct node *n = arg;
	int fd;

	struct stat st;
	uint64_t identity = 0;

	pthread_mutex_lock(&fsd.lock);
	fd = n->fd >= 0 ? dup(n->fd) : -1;
	pthread_mutex_unlock(&fsd.lock);
	const char *why = fd >= 0 ? hash_check(fd, n, n->size) : NULL;
	if (fd >= 0) {
		if (!why && fstat(fd, &st) == 0)
			identity = object_identity(&st);
		/* the hash read all of it; the view's inode caches what is used,
		 * unless the object itself is the page cache (passthrough, below) */
		pthread_mutex_lock(&fsd.lock);
		bool backing = n->backing_id != 0;
		pthread_mutex_unlock(&fsd.lock);
		if (!backing)
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
	pthread_mutex_lock(&fsd.lock);
	if (why)
		mark_damaged(n, why);
	else if (identity)
		checked_now(n, identity);
	uintptr_t ino = (uintptr_t)n;
	node_unref(n);
	pthread_mutex_unlock(&fsd.lock);
	if (why)
		fuse_lowlevel_notify_inval_inode(fsd.se, ino, 0, 0);
}

int shared_open_object(struct node *n, int *fd_out)
{
	int fd, state;
	struct stat st;

	pthread_mutex_lock(&fsd.lock);
	state = n->state;
	fd = n->fd;
	if (state >= 0 && fd >= 0 && fd_out && (*fd_out = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)
		state = -ENFILE;
	pthread_mutex_unlock(&fsd.lock);
	if (state < 0 || fd >= 0)
		return state < 0 ? state : 0;

	fd = store_object_open(fsd.s, &n->obj);
	const char *why = NULL;
	uint64_t identity = 0;
	bool known = false, foreign = false;
	if (fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM) {
		/* not the object's fault: fail this request, not the file */
		fs_log("objects: out of descriptors or memory opening an object of %s: %s",
		       n->seen_as ? n->seen_as : "a store file", strerror(-fd));
		return -ENFILE;
	} else if (fd < 0) {
		why = fd == -ENOENT ? "is missing" : "cannot be opened";
	} else if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != n->size) {
		why = "has the wrong size (damaged)";
	} else {
		identity = object_identity(&st);
		foreign = store_object_foreign(fsd.s, &st);
		pthread_mutex_lock(&fsd.lock);
		known = checked_before(n, identity);
		pthread_mutex_unlock(&fsd.lock);
		if (!known && (n->size <= CHECK_SYNC_MAX || fd_out || foreign))
			why = hash_check(fd, n, n->size);
	}
	bool later = !why && !known && n->size > CHECK_SYNC_MAX && !fd_out && !foreign;

	pthread_mutex_lock(&fsd.lock);
	if (foreign) {
		n->foreign = true;
		n->no_passthrough = true;
	}
	if (!why && !known && !later)
		checked_now(n, identity);
	if (why) {
		if (fd >= 0)
			close(fd);
		mark_damaged(n, why);
		state = n->state;
	} else if (fd_out) {
		*fd_out = fd; /* the caller's; the node keeps none */
		n->state = 1;
		state = 0;
	} else if (n->fd < 0) {
		n->fd = fd;
		n->state = 1;
		state = 0;
		if (later)
			n->refs++; /* held by the background check */
	} else {
		close(fd); /* another thread got there first */
		state = 0;
		later = false;
	}
	pthread_mutex_unlock(&fsd.lock);
	if (later)
		fs_defer(background_check, n);
	return state < 0 ? state : 0;
}

bool shared_still_checked(struct node *n, int fd)
{
	struct stat st;
	bool ok;

	pthread_mutex_lock(&fsd.lock);
	bool foreign = n->foreign;
	pthread_mutex_unlock(&fsd.lock);
	if (!foreign)
		return true;
	ok = fstat(fd, &st) == 0;
	pthread_mutex_lock(&fsd.lock);
	ok = ok && checked_before(n, object_identity(&st));
	if (!ok)
		mark_damaged(n, "changed after it was checked (its owner wrote to it)");
	pthread_mutex_unlock(&fsd.lock);
	return ok;
}

/* ---- opening ---------------------------------------------------------------------- */

/*
 * Large store files are opened in passthrough mode, their object the
 * backing file: the kernel reads and maps them straight from the object,
 * with its own readahead, as natively, and its page cache is the object's,
 * one copy for every env and for the store. Small ones are served from the
 * view inode's page cache (READ requests the first time): the kernel
 * invalidates a passthrough file's atime at each read or mmap, so the next
 * stat of it is a GETATTR round trip, one per module a warm import would
 * pay (Python opens, fstats, reads each .pyc). Shared libraries and other
 * large files are few (54 of the 900 files a heavy import opens are 256
 * KiB or more, 80% of the bytes) and mostly mapped, where what passthrough
 * saves counts most. Measured, cold heavy import on a RAM-backed store,
 * medians of 12 paired runs: 1.16x native with no store file passthrough,
 * 1.07x from 256 KiB, 1.08x from 64 KiB, 1.04x for every file; warm 1.04x,
 * 1.04x, 1.06x, 1.06x.
 *
 * The node keeps its backing file for as long as the kernel knows it, so
 * every open of the inode uses the same one (the kernel refuses to mix
 * passthrough and cached opens of an inode). The object is opened and
 * checked (above) before the first open is answered, since the kernel
 * then reads it without us: one whose check runs in the background (over
 * CHECK_SYNC_MAX) and fails is refused to later opens, but files already
 * open read on, as reads served before the check ended did already.
 */
static bool shared_passthrough(const struct node *n)
{
	return n->size >= SHARED_PASSTHROUGH_MIN && !n->no_passthrough && passthrough_on();
}

struct open_job {
	fuse_req_t req;
	struct node *n;
	struct fuse_file_info fi;
};

/* The first passthrough open of a shared node: its object, its backing id. */
static void shared_open_run(void *arg)
{
	struct open_job *j = arg;
	struct node *n = j->n;
	int r = shared_open_object(n, NULL);

	pthread_mutex_lock(&fsd.lock);
	if (r == 0 && !n->backing_id && !n->no_passthrough) {
		n->backing_id = passthrough_open(n->fd);
		n->no_passthrough = !n->backing_id;
	}
	if (r == 0 && n->backing_id)
		fh_set_backing(&j->fi, n->backing_id);
	node_unref(n);
	pthread_mutex_unlock(&fsd.lock);
	reply_open(j->req, r, &j->fi);
	free(j);
}

/*
 * Pages of a store file are cached by the kernel in the view's inode, which
 * every env shares; the object's own copy, read to fill it, would be a
 * second one, so it is dropped once served (a hint: pages in use elsewhere
 * stay). Measured over a cold heavy import: page cache +459 MB kept, +430
 * MB dropped, +410 MB natively; no change in time. Large objects, hashed
 * whole in the background (above), are dropped whole when it is done.
 */
void shared_drop_pages(int fd, off_t off, size_t size)
{
	posix_fadvise(fd, off, (off_t)size, POSIX_FADV_DONTNEED);
}

/*
 * A small store file's first open puts the whole file in the page cache
 * (FUSE_NOTIFY_STORE) before it is answered: the node is new, so is the
 * kernel's inode, and nothing has cached a page of it yet. The caller was
 * waiting for this open anyway; its read then finds the pages, where a READ
 * request would have been one more round trip for each file a cold import
 * opens (961 of them). Opens after the first, and every open of a warm
 * cache, cost nothing more. The object is checked first
 * (shared_open_object()), so what is stored is what its name says, and a
 * damaged one fails the open with EIO, as later opens of it fail.
 *
 * Other opens of the node wait until the pages are stored, with the first:
 * the kernel stores into a page under its lock, and a reader holds the
 * locks of the pages it asked us for until the READ is answered, which a
 * ring busy storing would never do. No open file, no reader.
 */
enum { FILL_NOT, FILL_RUNNING, FILL_DONE };

struct fill_wait {
	struct fill_wait *next;
	struct node *n;
	fuse_req_t req;
	struct fuse_file_info fi;
};

static struct fill_wait *fill_waiters; /* under fsd.lock */

static void fill_page_cache(struct node *n, int fd)
{
	size_t size = n->size;
	char *b = xmalloc(size);
	if (pread_full(fd, b, size, 0) == (ssize_t)size && shared_still_checked(n, fd)) {
		struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
		buf.buf[0].mem = b;
		/* fails only if the kernel forgot the inode meanwhile: then READs fill it */
		if (fuse_lowlevel_notify_store(fsd.se, (fuse_ino_t)(uintptr_t)n, 0, &buf, 0) == 0)
			__atomic_add_fetch(&fsd.st.filled_at_open, 1, __ATOMIC_RELAXED);
		shared_drop_pages(fd, 0, size);
	}
	free(b);
}

static void shared_fill_run(void *arg)
{
	struct open_job *j = arg;
	struct node *n = j->n;
	int fd = -1;
	int r = shared_open_object(n, &fd);

	if (r == 0) {
		fill_page_cache(n, fd);
		close(fd);
	}
	struct fill_wait *w = NULL;
	pthread_mutex_lock(&fsd.lock);
	n->fill = FILL_DONE;
	for (struct fill_wait **p = &fill_waiters; *p;) {
		struct fill_wait *x = *p;
		if (x->n == n) {
			*p = x->next;
			x->next = w;
			w = x;
			node_unref(n);
		} else {
			p = &x->next;
		}
	}
	node_unref(n);
	pthread_mutex_unlock(&fsd.lock);
	reply_open(j->req, r, &j->fi);
	free(j);
	while (w) {
		struct fill_wait *x = w;
		w = x->next;
		reply_open(x->req, r, &x->fi);
		free(x);
	}
}

/* Under fsd.lock, which it releases: answer the open from a job (run_blocking()). */
static void open_later(fuse_req_t req, struct node *n, struct fuse_file_info *fi, void (*fn)(void *))
{
	struct open_job *j = xmalloc(sizeof(*j));

	*j = (struct open_job){req, n, *fi};
	n->refs++;
	pthread_mutex_unlock(&fsd.lock);
	run_blocking(fn, j);
}

/*
 * An open for reading of store file n, under fsd.lock: true if it was taken
 * over (the lock released, the reply to come from a job), else *r is the
 * answer (0: fi is ready) and the caller replies.
 */
bool shared_open(fuse_req_t req, struct node *n, struct fuse_file_info *fi, int *r)
{
	*r = 0;
	if (n->state < 0) {
		*r = n->state;
	} else if (n->backing_id) {
		fh_set_backing(fi, n->backing_id);
	} else if (shared_passthrough(n)) {
		open_later(req, n, fi, shared_open_run);
		return true;
	} else if (n->fill == FILL_RUNNING) {
		struct fill_wait *w = xmalloc(sizeof(*w));
		*w = (struct fill_wait){fill_waiters, n, req, *fi};
		fill_waiters = w;
		n->refs++;
		pthread_mutex_unlock(&fsd.lock);
		return true;
	} else if (n->fill == FILL_NOT && n->size && n->size < SHARED_PASSTHROUGH_MIN) {
		n->fill = FILL_RUNNING;
		open_later(req, n, fi, shared_fill_run);
		return true;
	}
	return false;
}
