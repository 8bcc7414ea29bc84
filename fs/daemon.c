/*
 * daemon.c - the ground the daemon's parts stand on: its log, its counters,
 * helper threads, and the pool of workers that run requests which may wait
 * for the disk (main.c says why there is a pool, above serve()).
 *
 * The log is opened without following a symlink under HOME (a symlink
 * there would have the daemon append to, and create, files anywhere); a
 * store on a read-only file system logs to the user's run directory
 * (env.h store_run_open()).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fs_i.h"
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

/* The daemon's log: --log FILE as given, else the default one, opened
 * without following a symlink under HOME. */
FILE *log_open(struct store *s, const char *explicit_path, char **path)
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

void pool_start(unsigned n)
{
	pool.n = n;
	pool.threads = xcalloc(pool.n, sizeof(*pool.threads));
	for (unsigned i = 0; i < pool.n; i++)
		if (fs_thread_create(&pool.threads[i], worker, NULL) != 0)
			pool.n = i;
}

void pool_stop(void)
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

/* Answer req with err, counted by operation and errno. */
void reply_err(fuse_req_t req, enum fs_op op, int err)
{
	static bool told_emfile;

	__atomic_add_fetch(&fsd.st.errors[op], 1, __ATOMIC_RELAXED);
	if (err > 0 && err < STAT_ERRNO_MAX)
		__atomic_add_fetch(&fsd.st.by_errno[err], 1, __ATOMIC_RELAXED);
	if (err == EMFILE && !__atomic_exchange_n(&told_emfile, true, __ATOMIC_RELAXED)) {
		struct rlimit rl;
		getrlimit(RLIMIT_NOFILE, &rl);
		fs_log("out of file descriptors (limit %llu; each file of a writable layer the kernel caches holds "
		       "one): requests fail with EMFILE; raise the hard limit (ulimit -Hn) before mounting",
		       (unsigned long long)rl.rlim_cur);
	}
	fuse_reply_err(req, err);
}
