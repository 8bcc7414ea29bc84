/*
 * client.c - the daemon as its clients (the CLI) reach it: unmounting,
 * counters, and asking it to absorb an env. No FUSE here.
 *
 * A daemon keeps in its store's run directory (env.h store_run_open())
 * files named after a hash of its mount point: mount-<hash>.pid (pid and
 * mount point), .stats (counters, rewritten when it gets SIGUSR1) and .sock
 * (its control socket, control.c). Each is reached through the run
 * directory's descriptor: a symlink in place of HOME/run is never followed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#ifndef FUSE_SUPER_MAGIC
#define FUSE_SUPER_MAGIC 0x65735546
#endif

#include "env.h"
#include "fs.h"
#include "util.h"
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

char *fs_run_name(const char *mountpoint, const char *ext)
{
	return xasprintf("mount-%016" PRIx64 ".%s", XXH3_64bits(mountpoint, strlen(mountpoint)), ext);
}

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

char *fs_mount_path(const char *mountpoint)
{
	char *mp = realpath(mountpoint, NULL);

	return mp ? mp : path_absolute(mountpoint); /* a dead mount: ENOTCONN */
}

int fs_unmount(const char *mountpoint)
{
	_cleanup_free_ char *mp = fs_mount_path(mountpoint);
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

int fs_cleanup_dead_mount(const char *mp)
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
	_cleanup_free_ char *mp = fs_mount_path(mountpoint);
	if (!mp)
		return vf_error_errno(errno, "%s", mountpoint);
	_cleanup_free_ char *pidf = fs_run_name(mp, "pid"), *statf = fs_run_name(mp, "stats");
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

int fs_unmount_and_wait(struct store *s, const char *mountpoint)
{
	_cleanup_free_ char *mp = fs_mount_path(mountpoint);
	_cleanup_free_ char *pidf = fs_run_name(mp, "pid");
	_cleanup_buf_ struct buf b = {0};
	_cleanup_close_ int run = store_run_open(s, NULL);
	pid_t pid = run >= 0 && read_file_beneath(run, NULL, pidf, 4096, &b) == 0 ? (pid_t)atoi(b.data) : 0;
	vf_clear_error();
	int r = fs_unmount(mp);

	if (r == 0 && pid > 0)
		wait_for_exit(pid);
	return r;
}

char *fs_socket_path(struct store *s, const char *mountpoint)
{
	_cleanup_free_ char *run = NULL, *name = fs_run_name(mountpoint, "sock");
	_cleanup_close_ int fd = store_run_open(s, &run);

	if (fd < 0)
		run = path_join(s->home, "run");
	return path_join(run, name);
}

bool fs_socket_address(int dirfd, const char *name, struct sockaddr_un *sa)
{
	int n = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", dirfd, name);

	sa->sun_family = AF_UNIX;
	return n > 0 && (size_t)n < sizeof(sa->sun_path);
}

/* Ask the daemon whose socket is sock_name in the run directory run (its
 * path: sock) to absorb env name. */
static int ask_daemon(int run, const char *sock, const char *sock_name, const char *name,
		      void (*say)(void *, const char *), void *ctx, struct absorb_stats *st)
{
	struct sockaddr_un sa;
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	_cleanup_free_ char *req = xasprintf("absorb %s\n", name);
	_cleanup_buf_ struct buf in = {0};

	if (fd < 0 || !fs_socket_address(run, sock_name, &sa))
		return -ENOENT;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || write_full(fd, req, strlen(req)) < 0)
		return -ENOENT; /* a dead daemon's socket */
	for (;;) {
		char chunk[4096];
		ssize_t n = read(fd, chunk, sizeof(chunk));
		if (n <= 0)
			break;
		buf_add(&in, chunk, (size_t)n);
	}
	if (!in.len)
		return vf_error(EIO, "the daemon (%s) did not answer; see its log", sock);
	int r = vf_error(EIO, "the daemon (%s) answered nonsense", sock);
	for (char *save, *l = strtok_r(in.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(l, "say ", 4)) {
			say(ctx, l + 4);
		} else if (!strcmp(l, "not-served")) {
			r = -ENOENT;
		} else if (!strncmp(l, "error ", 6)) {
			r = vf_error(EIO, "%s", l + 6);
		} else if (!strncmp(l, "ok ", 3)) {
			memset(st, 0, sizeof(*st));
			sscanf(l + 3,
			       "absorbed=%" SCNu64 " left=%" SCNu64 " dropped=%" SCNu64 " files=%" SCNu64
			       " bytes=%" SCNu64 " linked=%" SCNu64 " copied=%" SCNu64 " dedup=%" SCNu64,
			       &st->absorbed, &st->left, &st->dropped, &st->files, &st->bytes, &st->linked_bytes,
			       &st->copied_bytes, &st->dedup_bytes);
			r = 0;
		}
	}
	return r;
}

/*
 * `venvfs absorb NAME`: a daemon of this store, if one runs, absorbs the env
 * (loading it if it did not serve it yet, which takes its lock); only
 * without one does the command absorb it itself.
 */
int fs_absorb(struct store *s, const char *name, void (*say)(void *, const char *), void *ctx, struct absorb_stats *st)
{
	struct absorb_opts o = {.say = say, .say_ctx = ctx, .progress = true};
	_cleanup_free_ char *run = NULL;
	_cleanup_close_ int run_fd = store_run_open(s, &run);
	DIR *d = run_fd >= 0 ? opendir_at(run_fd, ".") : NULL;
	struct dirent *de;
	int r = -ENOENT;

	if (run_fd < 0)
		return run_fd;
	while (d && r == -ENOENT && (de = readdir(d))) {
		if (!str_has_prefix(de->d_name, "mount-") || !str_has_suffix(de->d_name, ".sock"))
			continue;
		_cleanup_free_ char *sock = path_join(run, de->d_name);
		r = ask_daemon(run_fd, sock, de->d_name, name, say, ctx, st);
	}
	if (d)
		closedir(d);
	if (r != -ENOENT)
		return r;
	r = venv_absorb(s, name, &o, st);
	if (r == -EBUSY)
		return vf_error(EBUSY, "env %s is locked (%s/run/env-%s.lock: another venvfs absorb?); try again", name,
				s->home, name);
	return r;
}

static void quiet(void *ctx, const char *msg)
{
	(void)ctx;
	(void)msg;
}

int fs_clone(struct store *s, const char *src, const char *dst, uint64_t *absorbed)
{
	struct absorb_stats st;

	*absorbed = 0;
	/* an absorb that fails (locked, changing) leaves a copy to the clone */
	if (env_exists(s, src) && fs_absorb(s, src, quiet, NULL, &st) == 0)
		*absorbed = st.absorbed;
	vf_clear_error();
	return venv_clone(s, src, dst);
}

/* A live daemon serves mp: its control socket (in the run directory run)
 * answers, and mp is a FUSE mount. (Not its pid: a killed daemon's may be
 * another process's now.) */
static bool daemon_alive(int run, const char *mp)
{
	_cleanup_free_ char *sock = fs_run_name(mp, "sock");
	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa;
	struct statfs sf;

	return fd >= 0 && fs_socket_address(run, sock, &sa) && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	       statfs(mp, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC;
}

int fs_check_not_served(struct store *s, const char *mp)
{
	_cleanup_close_ int run = store_run_open(s, NULL);
	DIR *d = run >= 0 ? opendir_at(run, ".") : NULL;
	struct dirent *de;
	struct statfs sf;
	int r = 0;

	if (statfs(mp, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC) {
		if (d)
			closedir(d);
		return vf_error(EBUSY, "%s is a FUSE mount already (venvfs umount %s, or fusermount3 -u, first)", mp,
				mp);
	}
	while (d && r == 0 && (de = readdir(d))) {
		_cleanup_buf_ struct buf b = {0};
		struct stat st;
		if (!str_has_prefix(de->d_name, "mount-") || !str_has_suffix(de->d_name, ".pid") ||
		    fstatat(run, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_uid != geteuid() ||
		    read_file_beneath(run, NULL, de->d_name, 8192, &b) < 0)
			continue;
		char *nl = strchr(b.data, '\n');
		const char *other = nl ? nl + 1 : "";
		if (nl && strchr(nl + 1, '\n'))
			*strchr(nl + 1, '\n') = '\0';
		if (*other && daemon_alive(run, other))
			r = vf_error(EBUSY,
				     "store %s is served at %s already (pid %d): one daemon serves a store for each "
				     "account; use that mount, or venvfs umount %s first",
				     s->home, other, atoi(b.data), other);
	}
	if (d)
		closedir(d);
	return r;
}
