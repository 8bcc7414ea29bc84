/*
 * main.c - mounting: the FUSE session, the daemon's life, and the loop that
 * serves requests.
 *
 * `venvfs mount MOUNTPOINT` cleans up a dead mount left at MOUNTPOINT by a
 * killed daemon, mounts, then detaches into the background (unless -f) and
 * serves requests on libfuse's multithreaded loop. SIGTERM, SIGINT, SIGHUP
 * or an unmount end the loop; the daemon then unmounts and exits.
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

/* ---- counters ------------------------------------------------------------------- */

/* ---- mounting ------------------------------------------------------------------------ */

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

	pool_start(o->max_threads ? o->max_threads : 8);
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

/*
 * Every file and directory of a writable layer that the kernel keeps in its
 * inode cache holds a descriptor here (the node's O_PATH handle, fs_i.h): a
 * pip install of 25k files into an env is 25k descriptors until the kernel
 * forgets them (or fd_pressure() asks it to, housekeeping.c). So allow as many as
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

/*
 * A mount that failed: say why, and what to do. libfuse has printed its
 * own line to stderr already (the terminal: the daemon has not detached).
 */
static int why_no_mount(const char *mp)
{
	struct stat st;
	int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);

	if (fd >= 0)
		close(fd);
	if (fd < 0 && errno == ENOENT)
		return vf_error(ENODEV,
				"cannot mount at %s: there is no /dev/fuse (load the module: modprobe fuse; "
				"in a container, give it the device: --device /dev/fuse)",
				mp);
	if (fd < 0 && (errno == EACCES || errno == EPERM) && geteuid() == 0)
		return vf_error(EPERM,
				"cannot mount at %s: /dev/fuse cannot be opened even as root (%s): a container "
				"needs --device /dev/fuse and CAP_SYS_ADMIN",
				mp, strerror(errno));
	if (geteuid() != 0) {
		_cleanup_free_ char *fm = NULL;
		const char *path = getenv("PATH");
		_cleanup_free_ char *dirs = xstrdup(path ? path : "/usr/bin:/bin");
		for (char *save, *d = strtok_r(dirs, ":", &save); d && !fm; d = strtok_r(NULL, ":", &save)) {
			_cleanup_free_ char *c = path_join(d, "fusermount3");
			if (access(c, X_OK) == 0)
				fm = steal_pointer(&c);
		}
		if (!fm)
			return vf_error(ENOENT,
					"cannot mount at %s: fusermount3 is not installed, and an ordinary user "
					"mounts through it (apt-get install fuse3)",
					mp);
		if (stat(fm, &st) == 0 && !(st.st_mode & S_ISUID))
			return vf_error(EPERM,
					"cannot mount at %s: %s is not setuid root, so it cannot mount for an "
					"ordinary user (reinstall fuse3, or chmod u+s %s as root)",
					mp, fm, fm);
		if (fd < 0)
			return vf_error(EACCES,
					"cannot mount at %s: /dev/fuse is not open to you (%s); usually it is "
					"mode 0666: ask root to chmod 0666 /dev/fuse, or to let your group use it",
					mp, strerror(errno));
	}
	return vf_error(EIO, "cannot mount at %s (libfuse's reason is above; is it a directory you own?)", mp);
}

int fs_mount(struct store *s, const struct fs_opts *o)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	_cleanup_free_ char *mp = NULL, *log_path = NULL, *pidf = NULL, *opts = NULL;
	_cleanup_free_ char *given = path_absolute(o->mountpoint);
	struct stat st;
	int r = 0;

	mp = fs_mount_path(o->mountpoint);
	if (!mp)
		return vf_error_errno(errno, "%s", o->mountpoint);
	r = fs_cleanup_dead_mount(mp);
	if (r < 0)
		return r;
	r = fs_check_not_served(s, mp);
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
	fsd.mountpoint = given;
	fsd.mount_key = mp;
	fsd.uid = getuid();
	fsd.gid = getgid();
	fsd.log_stderr = o->foreground;
	fsd.use_uring = !o->no_uring && !o->libfuse_mt;
	node_init_root();
	envs_changed();

	bool ro = fd_on_read_only_fs(s->fd);
	fsd.log = log_open(s, o->log_path, &log_path);
	if (!fsd.log)
		return vf_error_prefix(EIO, "log file: ");
	fsd.run_fd = store_run_open(s, NULL);
	if (fsd.run_fd < 0) {
		fclose(fsd.log);
		fsd.log = NULL;
		return fsd.run_fd;
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
		return why_no_mount(mp);
	}
	passthrough_setup(fsd.se);
	fs_log("mounted store %s at %s%s%s", s->home, mp, o->allow_other ? " (allow_other)" : "",
	       ro ? " read-only (the store is on a read-only file system)" : "");
	r = daemonize(o->foreground);
	if (r < 0)
		goto out;

	pidf = fs_run_name(mp, "pid");
	{
		_cleanup_free_ char *pid = xasprintf("%d\n%s\n", (int)getpid(), mp); /* resolved */
		if (write_file_atomic(fsd.run_fd, pidf, pid, strlen(pid), 0644) < 0)
			fs_log("pid file: %s (venvfs umount and stats cannot find this daemon)", vf_last_error());
	}
	daemon_ready();
	/* SIGUSR1 is the housekeeping thread's (signalfd); block it everywhere */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);
	housekeeping_start();
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

	housekeeping_stop();
	control_stop();
	{
		_cleanup_buf_ struct buf b = {0};
		stats_format(&b);
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
		unlinkat(fsd.run_fd, pidf, 0);
	fs_log("exited");
	fclose(fsd.log);
	fsd.log = NULL;
	close(fsd.run_fd);
	fsd.run_fd = -1;
	return r;
}
