/*
 * housekeeping.c - the daemon's housekeeping thread: envs appearing and
 * going, counters on request, descriptor pressure, and the heap.
 *
 * The housekeeping thread watches HOME/envs with inotify, so envs created,
 * cloned, replaced or removed while mounted appear and disappear at once
 * (the kernel is told to drop what it cached about the root), and answers
 * SIGUSR1 by writing the daemon's counters to its run directory (client.c).
 *
 * Descriptor pressure. Every file and directory of a writable layer that the
 * kernel keeps in its inode cache holds a descriptor here (the node's O_PATH
 * handle, or its directory's), and the kernel keeps inodes as long as memory
 * allows: a pip install of 25k files is 25k descriptors (django alone has 2k
 * locale directories), past RLIMIT_NOFILE on many machines. So the
 * housekeeping thread calls this a few times a second: when the descriptors
 * in use pass 3/4 of the limit, it asks the kernel to drop its entries for
 * the oldest such files and directories that nothing has open
 * (FUSE_NOTIFY_INVAL_ENTRY; a directory's go with it), down to half the
 * limit. The kernel then forgets their inodes, which frees the nodes and
 * their descriptors; a later lookup finds the file again, under the same
 * inode number. fd_pressure() is never called with fsd.lock held, nor from
 * a request handler: invalidating an entry waits for the directory's lock, which a
 * request in that directory may hold until it is answered.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_i.h"

static size_t fds_in_use(void)
{
	struct stat st;

	/* since Linux 6.2 the size of /proc/self/fd is the count: no listing */
	if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0)
		return (size_t)st.st_size;

	DIR *d = opendir("/proc/self/fd");
	size_t n = 0;

	if (!d)
		return 0;
	while (readdir(d))
		n++;
	closedir(d);
	return n > 2 ? n - 3 : 0; /* ".", "..", and d's own */
}

static void fd_pressure_locked(bool urgent)
{
	struct rlimit rl;
	struct victim {
		fuse_ino_t dir;
		char *name;
	} *v = NULL;
	size_t nv = 0, cap = 0;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return;
	size_t limit = (size_t)rl.rlim_cur;
	pthread_mutex_lock(&fsd.lock);
	uint64_t nodes = fsd.nodes_alive, made = fsd.nodes_made;
	pthread_mutex_unlock(&fsd.lock);
	if (nodes < limit / 4 && !urgent)
		return; /* far from it: spare the count */
	/*
	 * Counting is a stat of /proc/self/fd, but before Linux 6.2 a listing
	 * of it (a millisecond with 15k descriptors, and this runs every 64 new
	 * nodes during a pip install). A node holds at
	 * most 3 descriptors (an O_PATH or directory handle, a passthrough
	 * backing file, its env's), so while the last count plus what the
	 * nodes made since could hold stays under the mark, skip it (made,
	 * not alive: the kernel's forgets lag behind, and a node it forgot may
	 * have held none); count at least once a second regardless.
	 */
	static size_t last_used;
	static uint64_t last_made, last_ns;
	uint64_t now = now_ns();
	size_t bound = last_used + 3 * (size_t)(made - last_made);
	if (!urgent && last_ns && bound < limit / 4 * 3 && now - last_ns < 1000000000ull)
		return;
	size_t used = fds_in_use();
	last_used = used;
	last_made = made;
	last_ns = now;
	/* urgent: a job of the daemon's own (an absorb) met EMFILE; it
	 * needs room beside the nodes, so down to a quarter */
	size_t mark = urgent ? limit / 4 : limit / 2;
	if (used < (urgent ? mark : limit / 4 * 3))
		return;
	size_t want = used - mark;

	pthread_mutex_lock(&fsd.lock);
	for (struct fsenv *e = fsd.envs; e; e = e->next)
		for (struct node *n = e->nodes; n; n = n->env_next) {
			bool is_file = n->kind == N_UPPER && n->fd >= 0 && !n->writers && !n->backing_users;
			bool is_dir = n->kind == N_DIR && n->up.fd >= 0 && n != e->root && n->parent != &fsd.root;
			if ((!is_file && !is_dir) || n->gone)
				continue;
			const char *met_as = is_file ? n->met_as : NULL;
			fuse_ino_t dir = met_as                   ? n->met_in
					 : n->parent == &fsd.root ? FUSE_ROOT_ID
								  : (fuse_ino_t)(uintptr_t)n->parent;
			const char *name = met_as ? met_as : n->name;
			if (!dir || !name)
				continue;
			if (nv == cap) {
				cap = cap ? 2 * cap : 1024;
				v = xrealloc(v, cap * sizeof(*v));
			}
			v[nv++] = (struct victim){dir, xstrdup(name)};
		}
	pthread_mutex_unlock(&fsd.lock);
	/* each env's list runs newest first: drop from its end */
	size_t from = nv > want ? nv - want : 0;
	for (size_t i = 0; i < nv; i++) {
		if (i >= from)
			fuse_lowlevel_notify_inval_entry(fsd.se, v[i].dir, v[i].name, strlen(v[i].name));
		free(v[i].name);
	}
	free(v);
	if (nv)
		fs_log("descriptors: %zu of %zu in use; asked the kernel to forget %zu files and directories of "
		       "writable layers",
		       used, limit, nv - from);
}

static int hk_stop[2] = {-1, -1};
static int hk_wake[2] = {-1, -1};
static pthread_t hk_thread;

void fd_pressure(bool urgent)
{
	static pthread_mutex_t one_at_a_time = PTHREAD_MUTEX_INITIALIZER;

	pthread_mutex_lock(&one_at_a_time); /* housekeeping, and an absorb */
	fd_pressure_locked(urgent);
	pthread_mutex_unlock(&one_at_a_time);
}

/*
 * Room for a job of the daemon's own that met EMFILE: the kernel is asked to
 * forget, and its forgets come back as requests, so wait (at most two
 * seconds) until the descriptors in use are under half the limit.
 */
void fd_room(void)
{
	struct rlimit rl;

	fd_pressure(true);
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return;
	for (int i = 0; i < 40 && fds_in_use() >= (size_t)rl.rlim_cur / 2; i++)
		usleep(50000);
}

/*
 * Hand back to the system the heap of nodes the kernel had us forget: after
 * it drops its inode cache (memory pressure, drop_caches) the daemon frees
 * most nodes, and glibc keeps the pages, inside its arenas, for what comes
 * next. Allocations of the next burst land in other pages as often as not,
 * so RSS crept up scan after scan while the heap in use stayed the same
 * (bench_mount, 1,000 envs: +1.5% over five scans, heap +0.1%).
 * malloc_trim() returns free pages to the system (MADV_DONTNEED); done once
 * the nodes alive fell to half their peak, by at least 10,000.
 */
static void trim_heap(void)
{
	static uint64_t peak;

	pthread_mutex_lock(&fsd.lock);
	uint64_t alive = fsd.nodes_alive;
	pthread_mutex_unlock(&fsd.lock);
	if (alive > peak)
		peak = alive;
	if (peak - alive >= 10000 && alive <= peak / 2) {
		malloc_trim(0);
		peak = alive;
	}
}

/* Have the housekeeping thread look at descriptor pressure now. */
void fs_wake_housekeeping(void)
{
	if (hk_wake[1] >= 0 && write(hk_wake[1], "w", 1) < 0) {
		/* full: a wake-up is pending already */
	}
}

static void *housekeeping(void *arg)
{
	int ino = inotify_init1(IN_CLOEXEC);
	sigset_t usr1;
	(void)arg;

	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	int sfd = signalfd(-1, &usr1, SFD_CLOEXEC);
	_cleanup_free_ char *envs = path_join(fsd.s->home, "envs");
	if (ino >= 0 && inotify_add_watch(ino, envs, IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO) < 0)
		fs_log("inotify on %s: %s (new envs show after a second)", envs, strerror(errno));
	for (;;) {
		struct pollfd p[4] = {
			{hk_stop[0], POLLIN, 0}, {ino, POLLIN, 0}, {sfd, POLLIN, 0}, {hk_wake[0], POLLIN, 0}};
		if (poll(p, 4, 250) < 0 && errno != EINTR)
			break;
		if (p[3].revents & POLLIN) {
			char drain[64];
			while (read(hk_wake[0], drain, sizeof(drain)) > 0) {
			}
		}
		fd_pressure(false);
		trim_heap();
		if (p[0].revents)
			break;
		if (p[2].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) > 0)
				stats_write();
		}
		if (!(p[1].revents & POLLIN))
			continue;
		char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
		ssize_t n = read(ino, buf, sizeof(buf));
		bool changed = false;
		for (char *q = buf; n > 0 && q < buf + n;) {
			struct inotify_event *ev = (struct inotify_event *)q;
			q += sizeof(*ev) + ev->len;
			if (!ev->len || ev->name[0] == '.')
				continue;
			changed = true;
			/* drop the cached entry (positive or negative) of that env */
			fuse_lowlevel_notify_inval_entry(fsd.se, FUSE_ROOT_ID, ev->name, strlen(ev->name));
		}
		if (changed) {
			pthread_mutex_lock(&fsd.lock);
			envs_changed();
			pthread_mutex_unlock(&fsd.lock);
			fuse_lowlevel_notify_inval_inode(fsd.se, FUSE_ROOT_ID, 0, 0);
		}
	}
	if (ino >= 0)
		close(ino);
	if (sfd >= 0)
		close(sfd);
	return NULL;
}

void housekeeping_start(void)
{
	if (pipe2(hk_wake, O_CLOEXEC | O_NONBLOCK) < 0)
		hk_wake[0] = hk_wake[1] = -1;
	if (pipe2(hk_stop, O_CLOEXEC) == 0)
		fs_thread_create(&hk_thread, housekeeping, NULL);
}

void housekeeping_stop(void)
{
	if (hk_stop[1] >= 0 && write(hk_stop[1], "x", 1) == 1)
		pthread_join(hk_thread, NULL);
}

/* ---- counters ---------------------------------------------------------------------- */

static const char *op_names[OP_COUNT] = {
	"lookup", "forget",  "getattr",  "setattr",  "readlink",    "mknod",       "mkdir",
	"unlink", "rmdir",   "symlink",  "rename",   "link",        "open",        "read",
	"write",  "release", "fsync",    "readdir",  "readdirplus", "statfs",      "create",
	"ioctl",  "access",  "getxattr", "setxattr", "listxattr",   "removexattr", "fallocate",
};

void stats_format(struct buf *b)
{
	buf_printf(b, "mount %s\nstore %s\npid %d\n", fsd.mountpoint, fsd.s->home, (int)getpid());
	pthread_mutex_lock(&fsd.lock);
	size_t envs = 0;
	for (struct fsenv *e = fsd.envs; e; e = e->next)
		envs++;
	buf_printf(b, "nodes %" PRIu64 "\nenvs_loaded %zu\n", fsd.nodes_alive, envs);
	/* what the nodes hold besides themselves: per kind, and the bytes of
	 * rendered templates, directory listings and names (docs/benchmarks.md,
	 * bytes per node) */
	uint64_t kinds[N_UPPER + 1] = {0}, rendered = 0, listed = 0, names = 0;
	for (struct fsenv *e = fsd.envs; e; e = e->next)
		for (struct node *n = e->nodes; n; n = n->env_next) {
			kinds[n->kind]++;
			names += n->name ? n->name_len + 1u : 0;
			if (!node_is_dir(n)) {
				rendered += n->rendered.cap;
				names += (n->seen_as ? strlen(n->seen_as) + 1 : 0) +
					 (n->met_as ? strlen(n->met_as) + 1 : 0);
			} else {
				listed += n->nlist * (sizeof(*n->list) + sizeof(*n->cookies)) +
					  n->dir.n * sizeof(*n->dir.src);
				for (size_t i = 0; i < n->nlist; i++)
					listed += strlen(n->list[i].name) + 1;
			}
		}
	kinds[N_SHARED] = fsd.nodes_alive - kinds[N_DIR] - kinds[N_FILE] - kinds[N_UPPER];
	buf_printf(b,
		   "nodes_dir %" PRIu64 "\nnodes_file %" PRIu64 "\nnodes_shared %" PRIu64 "\nnodes_upper %" PRIu64
		   "\nnode_bytes_dir %zu\nnode_bytes_file %zu\nrendered_kb %" PRIu64 "\nlisted_kb %" PRIu64
		   "\nnames_kb %" PRIu64 "\n",
		   kinds[N_DIR], kinds[N_FILE], kinds[N_SHARED], kinds[N_UPPER], NODE_DIR_SIZE, NODE_FILE_SIZE,
		   rendered / 1024, listed / 1024, names / 1024);
	buf_printf(b, "transport %s\n", uring_on() ? "io_uring" : "/dev/fuse");
	pthread_mutex_unlock(&fsd.lock);
	buf_printf(b, "damaged_objects %" PRIu64 "\nwrite_redirects %" PRIu64 "\nfilled_at_open %" PRIu64 "\n",
		   fsd.st.damaged_objects, fsd.st.estale_retries, fsd.st.filled_at_open);
	for (int i = 0; i < OP_COUNT; i++)
		if (fsd.st.calls[i] || fsd.st.errors[i])
			buf_printf(b, "op %-12s calls %-10" PRIu64 " errors %" PRIu64 "\n", op_names[i],
				   fsd.st.calls[i], fsd.st.errors[i]);
	for (int e = 1; e < STAT_ERRNO_MAX; e++)
		if (fsd.st.by_errno[e])
			buf_printf(b, "errno %-16s %" PRIu64 "\n", strerrorname_np(e) ? strerrorname_np(e) : "?",
				   fsd.st.by_errno[e]);
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmRSS:", 6))
			buf_printf(b, "rss_kb %s", line + 6 + strspn(line + 6, " \t"));
	if (f)
		fclose(f);
	/* what of it the heap holds in use (the rest: free, not yet returned) */
	struct mallinfo2 mi = mallinfo2();
	buf_printf(b, "heap_in_use_kb %zu kB\n", (mi.uordblks + mi.hblkhd) / 1024);
}

void stats_write(void)
{
	_cleanup_buf_ struct buf b = {0};
	_cleanup_free_ char *p = fs_run_name(fsd.mount_key, "stats");
	_cleanup_free_ char *tmp = xasprintf("%s.tmp", p);

	stats_format(&b);
	unlinkat(fsd.run_fd, tmp, 0);
	int fd = openat(fsd.run_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	int r = write_full(fd, b.data, b.len);
	if (close(fd) < 0 || r < 0 || renameat(fsd.run_fd, tmp, fsd.run_fd, p) < 0)
		unlinkat(fsd.run_fd, tmp, 0);
}
