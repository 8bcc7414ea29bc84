/*
 * main.c - mounting: the FUSE session, the daemon's life, and its
 * housekeeping thread.
 *
 * `venvfs mount MOUNTPOINT` cleans up a dead mount left at MOUNTPOINT by a
 * killed daemon, mounts, then detaches into the background (unless -f) and
 * serves requests on libfuse's multithreaded loop. SIGTERM, SIGINT, SIGHUP
 * or an unmount end the loop; the daemon then unmounts and exits.
 *
 * The housekeeping thread watches HOME/envs with inotify, so envs created,
 * cloned, replaced or removed while mounted appear and disappear at once
 * (the kernel is told to drop what it cached about the root), and answers
 * SIGUSR1 by writing the daemon's counters to HOME/run/mount-*.stats.
 * Files in HOME/run: mount-<hash of the mount point>.pid, .stats; the
 * default log is HOME/log/mount.log. Both are opened without following a
 * symlink under HOME (a symlink there would have the daemon append to,
 * and create, files anywhere).
 *
 * A store on a read-only file system (an image, a shared cache) is mounted
 * read-only ("ro": the kernel answers EROFS to every change): its daemon
 * takes no env lock, writes nothing to the store, absorbs nothing, and
 * keeps its pid file, counters, control socket and default log in a
 * directory of the user's instead of HOME/run and HOME/log (env.h
 * store_run_open()), where umount and stats look for them.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs_i.h"

struct fsd fsd;
extern const struct fuse_lowlevel_ops fs_ops;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void fs_log(const char *fmt, ...)
{
	char msg[2048], when[64];
	struct timespec ts;
	struct tm tm;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	pthread_mutex_lock(&log_lock);
	if (fsd.log) {
		fprintf(fsd.log, "%s.%03ld venvfs[%d]: %s\n", when, ts.tv_nsec / 1000000, (int)getpid(), msg);
		fflush(fsd.log);
	}
	if (fsd.log_stderr)
		fprintf(stderr, "venvfs: %s\n", msg);
	pthread_mutex_unlock(&log_lock);
}

char *fs_default_log(struct store *s)
{
	_cleanup_free_ char *run = NULL;

	if (fd_on_read_only_fs(s->fd)) {
		_cleanup_close_ int fd = store_run_open(s, &run);
		if (fd >= 0)
			return path_join(run, "mount.log");
	}
	_cleanup_free_ char *name = store_account_file(s, "log/mount.log"); /* one per account in a group store */
	return path_join(s->home, name);
}

/* The daemon's log: --log FILE as given, else the default one, opened
 * without following a symlink under HOME. */
static FILE *open_log(struct store *s, const char *explicit_path, char **path)
{
	int fd;

	if (explicit_path) {
		*path = xstrdup(explicit_path);
		FILE *f = fopen(explicit_path, "ae");
		if (!f)
			vf_error_errno(errno, "log file %s", explicit_path);
		return f;
	}
	if (fd_on_read_only_fs(s->fd)) {
		_cleanup_free_ char *run = NULL;
		_cleanup_close_ int rfd = store_run_open(s, &run);
		if (rfd < 0)
			return NULL;
		*path = path_join(run, "mount.log");
		fd = openat_beneath(rfd, "mount.log", O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK, 0644);
		if (fd < 0)
			beneath_error(rfd, run, "mount.log", fd);
	} else {
		_cleanup_free_ char *name = store_account_file(s, "log/mount.log");
		*path = path_join(s->home, name);
		store_mkdir_shared(s, s->fd, "log");
		fd = openat_beneath(s->fd, name, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK, 0644);
		if (fd < 0)
			beneath_error(s->fd, s->home, name, fd);
	}
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		vf_error(EIO, "%s: not a regular file, which the store layout never makes (run venvfs store verify)",
			 *path);
		close(fd);
		return NULL;
	}
	FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
	if (fd >= 0 && !f) {
		vf_error_errno(errno, "%s", *path);
		close(fd);
	}
	if (f)
		fcntl(fd, F_SETFL, O_APPEND);
	return f;
}

/* The daemon's own run directory (store_run_open()), open while it runs. */
static int daemon_run_fd = -1;

/* "mount-<hash of the mount point>.EXT", in the store's run directory. */
static char *run_name(const char *mountpoint, const char *ext)
{
	return xasprintf("mount-%016" PRIx64 ".%s", XXH3_64bits(mountpoint, strlen(mountpoint)), ext);
}

/* ---- counters ------------------------------------------------------------------- */

static const char *op_names[OP_COUNT] = {
	"lookup", "forget",  "getattr",  "setattr",  "readlink",    "mknod",       "mkdir",
	"unlink", "rmdir",   "symlink",  "rename",   "link",        "open",        "read",
	"write",  "release", "fsync",    "readdir",  "readdirplus", "statfs",      "create",
	"ioctl",  "access",  "getxattr", "setxattr", "listxattr",   "removexattr", "fallocate",
};

static void format_stats(struct buf *b)
{
	buf_printf(b, "mount %s\nstore %s\npid %d\n", fsd.mountpoint, fsd.s->home, (int)getpid());
	pthread_mutex_lock(&fsd.lock);
	size_t envs = 0;
	for (struct fsenv *e = fsd.envs; e; e = e->next)
		envs++;
	buf_printf(b, "nodes %" PRIu64 "\nenvs_loaded %zu\n", fsd.nodes_alive, envs);
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

static void write_stats(void)
{
	_cleanup_buf_ struct buf b = {0};
	_cleanup_free_ char *p = run_name(fsd.mountpoint, "stats");
	_cleanup_free_ char *tmp = xasprintf("%s.tmp", p);

	format_stats(&b);
	unlinkat(daemon_run_fd, tmp, 0);
	int fd = openat(daemon_run_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	int r = write_full(fd, b.data, b.len);
	if (close(fd) < 0 || r < 0 || renameat(daemon_run_fd, tmp, daemon_run_fd, p) < 0)
		unlinkat(daemon_run_fd, tmp, 0);
}

/*
 * Start a helper thread with SIGTERM, SIGINT and SIGHUP blocked from its
 * first instruction: they must land in the thread serving requests, whose
 * poll() they interrupt to end the loop at once. (A helper that blocked
 * them itself could take one in its first moments and leave the loop
 * asleep until the next request.)
 */
int fs_thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t set, old;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	int r = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return r;
}

/* ---- housekeeping ------------------------------------------------------------------ */

static int hk_stop[2] = {-1, -1};
static int hk_wake[2] = {-1, -1};
static pthread_t hk_thread;

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
				write_stats();
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

/* ---- mounting ------------------------------------------------------------------------ */

static int run_program(char *const argv[])
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, STDOUT_FILENO);
			dup2(devnull, STDERR_FILENO);
		}
		execvp(argv[0], argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* umount2 as root, fusermount3 (setuid) otherwise; lazy: MNT_DETACH. */
static int do_unmount(const char *mp, bool lazy)
{
	char *lazy_argv[] = {"fusermount3", "-u", "-q", "-z", (char *)mp, NULL};
	char *argv[] = {"fusermount3", "-u", "-q", (char *)mp, NULL};

	if (geteuid() == 0 && umount2(mp, lazy ? MNT_DETACH : 0) == 0)
		return 0;
	return run_program(lazy ? lazy_argv : argv);
}

int fs_unmount(const char *mountpoint)
{
	_cleanup_free_ char *mp = path_absolute(mountpoint);
	int r = do_unmount(mp, false);

	if (r < 0) {
		struct stat st;
		if (stat(mp, &st) < 0 && errno == ENOTCONN)
			r = do_unmount(mp, true); /* a dead daemon's mount */
	}
	if (r < 0)
		return vf_error(EBUSY, "%s: cannot unmount (in use, or not a venvfs mount)", mp);
	return 0;
}

/* A mount whose daemon was killed answers ENOTCONN: detach it. */
static int cleanup_dead_mount(const char *mp)
{
	struct stat st;

	if (stat(mp, &st) == 0 || errno != ENOTCONN)
		return 0;
	if (do_unmount(mp, true) < 0)
		return vf_error(EBUSY, "%s: a dead venvfs mount is still there and could not be detached", mp);
	return 0;
}

/* The daemon absorbs what was installed before it exits: that may take a
 * while (a minute for gigabytes), so wait up to ten. */
static void wait_for_exit(pid_t pid)
{
	for (int i = 0; i < 60000 && kill(pid, 0) == 0; i++)
		usleep(10000);
}

int fs_stats(struct store *s, const char *mountpoint, char **out)
{
	_cleanup_free_ char *mp = realpath(mountpoint, NULL);
	if (!mp)
		return vf_error_errno(errno, "%s", mountpoint);
	_cleanup_free_ char *pidf = run_name(mp, "pid"), *statf = run_name(mp, "stats");
	_cleanup_buf_ struct buf b = {0};
	_cleanup_close_ int run = store_run_open(s, NULL);
	if (run < 0)
		return run;
	if (read_file_beneath(run, NULL, pidf, 4096, &b) < 0)
		return vf_error(ENOENT, "%s: no venvfs daemon of store %s serves it", mp, s->home);
	pid_t pid = (pid_t)atoi(b.data);
	struct stat before = {0}, after;
	fstatat(run, statf, &before, AT_SYMLINK_NOFOLLOW);
	if (pid <= 0 || kill(pid, SIGUSR1) < 0)
		return vf_error(ESRCH, "%s: its daemon (pid %d) is gone", mp, (int)pid);
	for (int i = 0; i < 300; i++) {
		if (fstatat(run, statf, &after, AT_SYMLINK_NOFOLLOW) == 0 &&
		    (after.st_mtim.tv_sec != before.st_mtim.tv_sec || after.st_mtim.tv_nsec != before.st_mtim.tv_nsec ||
		     after.st_ino != before.st_ino))
			break;
		usleep(10000);
	}
	if (read_file_beneath(run, NULL, statf, 1 << 20, &b) < 0)
		return vf_error(EIO, "%s: the daemon did not answer", mp);
	*out = steal_pointer(&b.data);
	return 0;
}

/*
 * Detach into the background: the parent waits until the daemon says it is
 * ready (pid file written, about to serve), then leaves with its status,
 * so `venvfs mount` returns when the mount can be used. The daemon's stdout
 * and stderr go to its log: libfuse's own messages, and a sanitizer's
 * report when built with one, land there too.
 */
static int ready_pipe = -1;

/* ---- the request loop ------------------------------------------------------------- */

/*
 * Why not libfuse's multithreaded loop: every request a process waits for
 * is a round trip, and on these machines (virtual CPUs that halt at once
 * when idle) a round trip costs mostly the wake-ups of halted CPUs. Measured
 * here, an open+close of a cached file: 75 us through libfuse's mt loop
 * (any thread count), 39 us through one thread, 16 us if that thread was
 * still running when the request came. So one thread answers requests,
 * keeps polling the device for spin_us after each one before it sleeps,
 * and passes anything that may block on the disk (reads that miss the page
 * cache, first-time object checks, writes, copy-up) to a pool of workers,
 * which reply themselves. Requests that only touch memory (lookup, getattr,
 * open, readdir, the ioctl Python's isatty() sends) never wait behind one
 * that reads the disk. Where the kernel has FUSE over io_uring, requests
 * come that way instead, each on its caller's CPU (uring.c), with the same
 * pool behind them; this loop then only sees forgets and interrupts.
 */

struct job {
	void (*fn)(void *);
	void *arg;
	struct job *next;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;
	bool stop;
	pthread_t *threads;
	unsigned n;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

void fs_defer(void (*fn)(void *), void *arg)
{
	struct job *j = xmalloc(sizeof(*j));

	j->fn = fn;
	j->arg = arg;
	j->next = NULL;
	pthread_mutex_lock(&pool.lock);
	if (pool.tail)
		pool.tail->next = j;
	else
		pool.head = j;
	pool.tail = j;
	pthread_cond_signal(&pool.cond);
	pthread_mutex_unlock(&pool.lock);
	if (!pool.n) { /* no pool (libfuse's loop): do it here */
		pthread_mutex_lock(&pool.lock);
		struct job *k = pool.head;
		pool.head = k ? k->next : NULL;
		if (!pool.head)
			pool.tail = NULL;
		pthread_mutex_unlock(&pool.lock);
		if (k) {
			k->fn(k->arg);
			free(k);
		}
	}
}

static void *worker(void *arg)
{
	(void)arg;
	for (;;) {
		pthread_mutex_lock(&pool.lock);
		while (!pool.head && !pool.stop)
			pthread_cond_wait(&pool.cond, &pool.lock);
		struct job *j = pool.head;
		if (j) {
			pool.head = j->next;
			if (!pool.head)
				pool.tail = NULL;
		}
		bool stop = pool.stop && !j;
		pthread_mutex_unlock(&pool.lock);
		if (stop)
			return NULL;
		j->fn(j->arg);
		free(j);
	}
}

/* A spin-wait's pause: lets the sibling hyperthread run, saves power. */
static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

static int serve(const struct fs_opts *o)
{
	struct fuse_buf buf = {0};
	int fd = fuse_session_fd(fsd.se);
	unsigned spin_us = o->spin_us;
	uint64_t until = 0;

	pool.n = o->max_threads ? o->max_threads : 8;
	pool.threads = xcalloc(pool.n, sizeof(*pool.threads));
	for (unsigned i = 0; i < pool.n; i++)
		if (fs_thread_create(&pool.threads[i], worker, NULL) != 0)
			pool.n = i;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	while (!fuse_session_exited(fsd.se)) {
		int r = fuse_session_receive_buf(fsd.se, &buf);
		if (r == -EAGAIN) {
			if (now_ns() < until) {
				cpu_relax();
				continue;
			}
			struct pollfd p = {fd, POLLIN, 0};
			if (poll(&p, 1, -1) < 0 && errno != EINTR)
				break;
			continue;
		}
		if (r == -EINTR)
			continue;
		if (r <= 0)
			break;
		pthread_mutex_lock(&fsd.dispatch);
		fuse_session_process_buf(fsd.se, &buf);
		pthread_mutex_unlock(&fsd.dispatch);
		if (spin_us && !uring_on()) /* over io_uring only forgets come here */
			until = now_ns() + (uint64_t)spin_us * 1000;
	}
	free(buf.mem);
	return 0;
}

/* After the unmount: io_uring threads may hand jobs to the pool until then. */
static void pool_stop(void)
{
	pthread_mutex_lock(&pool.lock);
	pool.stop = true;
	pthread_cond_broadcast(&pool.cond);
	pthread_mutex_unlock(&pool.lock);
	for (unsigned i = 0; i < pool.n; i++)
		pthread_join(pool.threads[i], NULL);
	free(pool.threads);
	pool.threads = NULL;
	pool.n = 0;
}

/*
 * Every file and directory of a writable layer that the kernel keeps in its
 * inode cache holds a descriptor here (the node's O_PATH handle, fs_i.h): a
 * pip install of 25k files into an env is 25k descriptors until the kernel
 * forgets them (or fd_pressure() asks it to, inode.c). So allow as many as
 * we may: fs.nr_open when privileged (CAP_SYS_RESOURCE), else the hard
 * limit; or what --max-fds says.
 */
static void raise_nofile(unsigned max_fds)
{
	struct rlimit nofile;
	unsigned long nr_open = 0;
	FILE *f;

	if (max_fds && getrlimit(RLIMIT_NOFILE, &nofile) == 0) { /* --max-fds */
		nofile.rlim_cur = MIN((rlim_t)max_fds, nofile.rlim_max);
		setrlimit(RLIMIT_NOFILE, &nofile);
		return;
	}
	if ((f = fopen("/proc/sys/fs/nr_open", "re"))) {
		if (fscanf(f, "%lu", &nr_open) != 1)
			nr_open = 0;
		fclose(f);
	}
	nofile.rlim_cur = nofile.rlim_max = (rlim_t)nr_open;
	if (nr_open && setrlimit(RLIMIT_NOFILE, &nofile) == 0)
		return;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
		nofile.rlim_cur = nofile.rlim_max;
		setrlimit(RLIMIT_NOFILE, &nofile);
	}
}

static int daemonize(bool foreground)
{
	int p[2];
	pid_t pid;

	if (foreground)
		return 0;
	if (pipe2(p, O_CLOEXEC) < 0)
		return vf_error_errno(errno, "pipe");
	pid = fork();
	if (pid < 0)
		return vf_error_errno(errno, "fork");
	if (pid > 0) {
		char c = 1;
		close(p[1]);
		if (read(p[0], &c, 1) != 1)
			c = 1;
		_exit(c); /* not return: the session belongs to the child now */
	}
	close(p[0]);
	ready_pipe = p[1];
	setsid();
	if (chdir("/") < 0)
		return vf_error_errno(errno, "chdir /");
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		close(null);
	}
	fflush(fsd.log);
	dup2(fileno(fsd.log), STDOUT_FILENO);
	dup2(fileno(fsd.log), STDERR_FILENO);
	return 0;
}

static void daemon_ready(void)
{
	char ok = 0;

	if (ready_pipe >= 0) {
		if (write(ready_pipe, &ok, 1) != 1)
			fs_log("could not tell the parent we are ready");
		close(ready_pipe);
		ready_pipe = -1;
	}
}

int fs_mount(struct store *s, const struct fs_opts *o)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	_cleanup_free_ char *mp = NULL, *log_path = NULL, *pidf = NULL, *opts = NULL;
	struct stat st;
	int r = 0;

	mp = path_absolute(o->mountpoint);
	if (!mp)
		return vf_error_errno(errno, "%s", o->mountpoint);
	r = cleanup_dead_mount(mp);
	if (r < 0)
		return r;
	if (stat(mp, &st) < 0)
		return vf_error_errno(errno, "mount point %s", mp);
	if (!S_ISDIR(st.st_mode))
		return vf_error(ENOTDIR, "mount point %s is not a directory", mp);

	raise_nofile(o->max_fds);
	/* The kernel applied the caller's umask to the modes it sends; ours
	 * on top turned a umask-0 caller's 0666 into 0644. What the daemon
	 * makes for itself has explicit modes. */
	umask(0);

	memset(&fsd, 0, sizeof(fsd));
	pthread_mutex_init(&fsd.lock, NULL);
	pthread_mutex_init(&fsd.dispatch, NULL);
	fsd.s = s;
	fsd.mountpoint = mp;
	fsd.uid = getuid();
	fsd.gid = getgid();
	fsd.log_stderr = o->foreground;
	fsd.use_uring = !o->no_uring && !o->libfuse_mt;
	node_init_root();
	envs_changed();

	bool ro = fd_on_read_only_fs(s->fd);
	fsd.log = open_log(s, o->log_path, &log_path);
	if (!fsd.log)
		return vf_error_prefix(EIO, "log file: ");
	daemon_run_fd = store_run_open(s, NULL);
	if (daemon_run_fd < 0) {
		fclose(fsd.log);
		fsd.log = NULL;
		return daemon_run_fd;
	}

	/*
	 * Permissions. With allow_other, or a daemon that is not root, the
	 * kernel checks each access against the modes we report
	 * (default_permissions). A root daemon without allow_other is entered
	 * by root alone (uid and gid 0: the kernel turns everyone else away),
	 * whom a directory on disk lets do anything but execute a file with no
	 * x bit; the kernel still checks that bit itself, and access(2) asks
	 * op_access(). Checking every access there would cost a request for
	 * each directory a change was made in since (its attributes are stale):
	 * 9,400 of the 119,000 requests of a pip install.
	 */
	bool perms = o->allow_other || fsd.uid != 0;
	opts = xasprintf("fsname=venvfs,subtype=venvfs,%snoatime%s%s", perms ? "default_permissions," : "",
			 o->allow_other ? ",allow_other" : "", ro ? ",ro" : "");
	if (fuse_opt_add_arg(&args, "venvfs") || fuse_opt_add_arg(&args, "-o") || fuse_opt_add_arg(&args, opts) ||
	    (o->debug && fuse_opt_add_arg(&args, "-d")))
		return vf_error(ENOMEM, "fuse arguments");
	/* extended attributes only when asked for (ops.c, above op_getxattr()) */
	static struct fuse_lowlevel_ops ops;
	ops = fs_ops;
	if (!o->xattrs)
		ops.getxattr = NULL, ops.setxattr = NULL, ops.listxattr = NULL, ops.removexattr = NULL;
	fsd.se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	fuse_opt_free_args(&args);
	if (!fsd.se)
		return vf_error(EIO, "cannot start a FUSE session (is /dev/fuse there?)");
	if (fuse_set_signal_handlers(fsd.se) < 0) {
		fuse_session_destroy(fsd.se);
		return vf_error(EIO, "cannot install signal handlers");
	}
	uring_ask_offer();
	if (fuse_session_mount(fsd.se, mp) < 0) {
		uring_offer_done();
		fuse_remove_signal_handlers(fsd.se);
		fuse_session_destroy(fsd.se);
		return vf_error(EIO, "cannot mount at %s (see %s)", mp, log_path);
	}
	passthrough_setup(fsd.se);
	fs_log("mounted store %s at %s%s%s", s->home, mp, o->allow_other ? " (allow_other)" : "",
	       ro ? " read-only (the store is on a read-only file system)" : "");
	r = daemonize(o->foreground);
	if (r < 0)
		goto out;

	pidf = run_name(mp, "pid");
	{
		_cleanup_free_ char *pid = xasprintf("%d\n%s\n", (int)getpid(), mp);
		if (write_file_atomic(daemon_run_fd, pidf, pid, strlen(pid), 0644) < 0)
			fs_log("pid file: %s (venvfs umount and stats cannot find this daemon)", vf_last_error());
	}
	daemon_ready();
	/* SIGUSR1 is the housekeeping thread's (signalfd); block it everywhere */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	if (pipe2(hk_wake, O_CLOEXEC | O_NONBLOCK) < 0)
		hk_wake[0] = hk_wake[1] = -1;
	if (pipe2(hk_stop, O_CLOEXEC) == 0)
		fs_thread_create(&hk_thread, housekeeping, NULL);
	fsd.absorb_idle_s = ro ? 0 : o->absorb_idle_s;
	fsd.absorb_on_unmount = !ro && !o->no_absorb_on_unmount;
	control_start();

	if (o->libfuse_mt) {
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_max_threads(cfg, o->max_threads ? o->max_threads : 16);
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		r = fuse_session_loop_mt(fsd.se, cfg);
		fuse_loop_cfg_destroy(cfg);
	} else {
		r = serve(o);
	}
	if (r != 0)
		fs_log("request loop ended with %d", r);
	r = 0;

	if (hk_stop[1] >= 0) {
		if (write(hk_stop[1], "x", 1) == 1)
			pthread_join(hk_thread, NULL);
	}
	control_stop();
	{
		_cleanup_buf_ struct buf b = {0};
		format_stats(&b);
		fs_log("unmounting; counters:\n%s", b.data);
	}
	/* unmounted first: absorbing may take a while, and nothing is served */
	fuse_session_unmount(fsd.se);
	uring_stop();
	pool_stop();
	uring_free();
	if (fsd.absorb_on_unmount)
		absorb_dirty_envs(true);
out:
	uring_offer_done(); /* if INIT never came */
	fuse_session_unmount(fsd.se);
	fuse_remove_signal_handlers(fsd.se);
	fuse_session_destroy(fsd.se);
	if (pidf)
		unlinkat(daemon_run_fd, pidf, 0);
	fs_log("exited");
	fclose(fsd.log);
	fsd.log = NULL;
	close(daemon_run_fd);
	daemon_run_fd = -1;
	return r;
}

int fs_unmount_and_wait(struct store *s, const char *mountpoint)
{
	_cleanup_free_ char *mp = path_absolute(mountpoint);
	_cleanup_free_ char *pidf = run_name(mp, "pid");
	_cleanup_buf_ struct buf b = {0};
	_cleanup_close_ int run = store_run_open(s, NULL);
	pid_t pid = run >= 0 && read_file_beneath(run, NULL, pidf, 4096, &b) == 0 ? (pid_t)atoi(b.data) : 0;
	vf_clear_error();
	int r = fs_unmount(mp);

	if (r == 0 && pid > 0)
		wait_for_exit(pid);
	return r;
}
