/*
 * control.c - absorbing envs the daemon serves, and the control socket
 * through which `venvfs absorb` asks for it.
 *
 * An env served writable is the daemon's to change (it holds the env's
 * lock, env.h), so the daemon absorbs it (store/absorb.c): when asked on
 * its control socket (HOME/run/mount-<hash>.sock, env.h store_run_open();
 * bound and reached through the run directory's descriptor, so a symlink
 * in place of HOME/run is never followed), when it has been idle
 * for --absorb-idle seconds, and after unmounting. The expensive part,
 * absorb_prepare(), runs while requests are served; then, under fsd.lock,
 * the daemon checks nothing changed meanwhile (the env's change counter,
 * and the files about to become objects: not written since, not open for
 * writing: absorb_changed()) and commits. A change in the meantime means
 * starting again, a few times, then giving up until later: an install in
 * progress is left alone. After the switch the env's nodes are brought up
 * to date in place (fsenv.c, fsenv_absorbed()), and the kernel is told to
 * drop what it cached about the env.
 *
 * Protocol (one request a connection, text): the client sends
 * "absorb NAME\n"; the daemon answers with report lines "say <text>\n",
 * then "ok <counters>\n", "error <message>\n" or "not-served\n".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs_i.h"
#include "venv.h"

#define ABSORB_TRIES 3

static int ctl_listen = -1;
static int ctl_stop[2] = {-1, -1};
static pthread_t ctl_thread;
static bool ctl_running;
static char *ctl_path;   /* for messages */
static int ctl_run = -1; /* the run directory the socket is in */
static char *ctl_name;   /* its name there */

struct report {
	int fd; /* client socket, or -1 (log only) */
	const char *env;
};

static void report_line(void *ctx, const char *msg)
{
	struct report *rp = ctx;

	fs_log("absorb %s: %s", rp->env, msg);
	if (rp->fd >= 0) {
		_cleanup_free_ char *l = xasprintf("say %s\n", msg);
		if (write_full(rp->fd, l, strlen(l)) < 0)
			rp->fd = -1;
	}
}

static bool took(void *ctx, dev_t dev, ino_t ino)
{
	return absorb_took(ctx, dev, ino);
}

static bool writer_open(void *ctx, dev_t dev, ino_t ino)
{
	struct node *n = upper_lookup(ctx, dev, ino);

	return n && n->writers > 0;
}

/*
 * Absorb env name. 0 (st filled), -EAGAIN (kept changing), -ENOENT (no
 * such env, or another daemon serves it), or another error with a message.
 */
static int absorb_one(const char *name, struct report *rp, bool unmounting, struct absorb_stats *st)
{
	struct absorb_opts o = {.say = report_line, .say_ctx = rp, .keep_old_layer = true};
	int r = -EAGAIN;

	for (int attempt = 0; attempt < ABSORB_TRIES && r == -EAGAIN; attempt++) {
		struct absorb *a = NULL;
		_cleanup_free_ char *trash = NULL;
		int err;

		pthread_mutex_lock(&fsd.lock);
		struct fsenv *e = fsenv_get(name, strlen(name), &err);
		uint64_t gen = e ? e->gen : 0;
		bool ours = e && (!e->readonly || fsenv_claim(e));
		pthread_mutex_unlock(&fsd.lock);
		if (!e)
			return err == ENOENT ? -ENOENT : vf_error(err, "env %s cannot be loaded (see the log)", name);
		if (!ours)
			return -ENOENT; /* another daemon serves it writable: ask that one */

		r = absorb_prepare(fsd.s, name, &o, st, &a);
		if (r < 0 && r != -EAGAIN) {
			/* a failure while the env was being written (a file
			 * gone between listing and reading it...) is a change */
			pthread_mutex_lock(&fsd.lock);
			if (fsenv_current(name) != e || e->gen != gen) {
				fs_log("absorb %s: %s (the env changed meanwhile); again", name, vf_last_error());
				r = -EAGAIN;
			}
			pthread_mutex_unlock(&fsd.lock);
		}
		if ((r == -EMFILE || r == -ENFILE) && attempt + 1 < ABSORB_TRIES) {
			/* the nodes hold the descriptors: the kernel forgets some */
			fs_log("absorb %s: %s; again, with descriptors given back", name, vf_last_error());
			fd_room();
			r = -EAGAIN;
			continue;
		}
		if (r == -EAGAIN) {
			/* a file changed under it: again, after a pause */
			usleep(100000u << attempt);
			continue;
		}
		if (r < 0)
			return r;

		pthread_mutex_lock(&fsd.lock);
		const char *changed = NULL;
		if (fsenv_current(name) != e || e->gen != gen || (changed = absorb_changed(a, writer_open, e))) {
			r = -EAGAIN; /* written meanwhile: again */
			fs_log("absorb %s: the env changed while it was prepared (%s); again", name,
			       changed                    ? changed
			       : fsenv_current(name) != e ? "replaced"
							  : "written");
		} else {
			r = absorb_commit(a);
			if (r == 0)
				e->absorbed_gen = gen;
			if (r == 0 && !absorb_empty(a)) {
				fsd.st.absorbs += st->absorbed;
				if (fsenv_absorbed(e, took, a, &trash) < 0) {
					/* cannot show the new one in place: new lookups
					 * load it, the old one stays for its holders */
					e->retired_layer = steal_pointer(&st->old_layer);
					fsenv_retire(e);
				}
			}
		}
		bool switched = r == 0 && !absorb_empty(a);
		pthread_mutex_unlock(&fsd.lock);
		absorb_free(a);
		if (trash) /* deleted before the caller hears back: `store du` is right at once */
			rm_rf_at(fsd.s->envs_fd, trash);
		free(st->old_layer);
		st->old_layer = NULL;
		if (switched && !unmounting)
			fuse_lowlevel_notify_inval_entry(fsd.se, FUSE_ROOT_ID, name, strlen(name));
		if (r == -EAGAIN)
			usleep(100000u << attempt);
	}
	if (r == -EAGAIN)
		return vf_error(EAGAIN,
				"env %s kept changing while it was absorbed (an install in progress?); "
				"try again later",
				name);
	return r;
}

static void format_counters(struct buf *b, const struct absorb_stats *st)
{
	buf_printf(b,
		   "absorbed=%" PRIu64 " left=%" PRIu64 " dropped=%" PRIu64 " files=%" PRIu64 " bytes=%" PRIu64
		   " linked=%" PRIu64 " copied=%" PRIu64 " dedup=%" PRIu64,
		   st->absorbed, st->left, st->dropped, st->files, st->bytes, st->linked_bytes, st->copied_bytes,
		   st->dedup_bytes);
}

void absorb_dirty_envs(bool unmounting)
{
	for (;;) {
		_cleanup_free_ char *name = NULL;
		pthread_mutex_lock(&fsd.lock);
		for (struct fsenv *e = fsd.envs; e && !name; e = e->next)
			if (!e->stale && !e->readonly && e->gen != e->absorbed_gen)
				name = xstrdup(e->name);
		pthread_mutex_unlock(&fsd.lock);
		if (!name)
			return;
		struct report rp = {-1, name};
		struct absorb_stats st;
		_cleanup_buf_ struct buf b = {0};
		uint64_t t0 = now_ns();
		int r = absorb_one(name, &rp, unmounting, &st);
		if (r < 0) {
			fs_log("absorb %s: %s", name, vf_last_error());
			/* try again after the next change, not in a loop */
			pthread_mutex_lock(&fsd.lock);
			struct fsenv *e = fsenv_current(name);
			if (e)
				e->absorbed_gen = e->gen;
			pthread_mutex_unlock(&fsd.lock);
			continue;
		}
		format_counters(&b, &st);
		fs_log("absorb %s: done in %.0f ms: %s", name, (double)(now_ns() - t0) / 1e6, b.data);
	}
}

/* ---- the control socket ------------------------------------------------------------ */

static void serve_client(int fd)
{
	char req[512] = "";
	size_t got = 0;
	struct pollfd p = {fd, POLLIN, 0};

	while (got < sizeof(req) - 1 && !memchr(req, '\n', got)) {
		if (poll(&p, 1, 5000) <= 0)
			return;
		ssize_t n = read(fd, req + got, sizeof(req) - 1 - got);
		if (n <= 0)
			return;
		got += (size_t)n;
	}
	req[got] = '\0';
	char *nl = strchr(req, '\n');
	if (!nl)
		return;
	*nl = '\0';
	_cleanup_buf_ struct buf out = {0};
	if (strncmp(req, "absorb ", 7) != 0 || !env_valid_name(req + 7)) {
		buf_printf(&out, "error bad request\n");
	} else {
		const char *name = req + 7;
		struct report rp = {fd, name};
		struct absorb_stats st;
		int r = absorb_one(name, &rp, false, &st);
		if (r == -ENOENT)
			buf_printf(&out, "not-served\n");
		else if (r < 0)
			buf_printf(&out, "error %s\n", vf_last_error());
		else {
			buf_adds(&out, "ok ");
			format_counters(&out, &st);
			buf_addc(&out, '\n');
		}
	}
	if (write_full(fd, out.data, out.len) < 0)
		fs_log("control socket: the client went away");
}

static void *control_main(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd p[2] = {{ctl_stop[0], POLLIN, 0}, {ctl_listen, POLLIN, 0}};
		int n = poll(p, 2, 1000);
		if (n < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			break;
		if (p[1].revents & POLLIN) {
			int c = accept4(ctl_listen, NULL, NULL, SOCK_CLOEXEC);
			if (c >= 0) {
				serve_client(c);
				close(c);
			}
			continue;
		}
		/* the last request first: one that comes after now_ns() was read
		 * would make the difference negative, a huge unsigned idle time */
		uint64_t last = __atomic_load_n(&fsd.last_request_ns, __ATOMIC_RELAXED);
		uint64_t now = now_ns();
		if (fsd.absorb_idle_s && now > last && now - last >= (uint64_t)fsd.absorb_idle_s * 1000000000ull)
			absorb_dirty_envs(false);
	}
	return NULL;
}

void control_start(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	ctl_path = fs_socket_path(fsd.s, fsd.mount_key);
	ctl_name = xstrdup(strrchr(ctl_path, '/') + 1);
	ctl_run = store_run_open(fsd.s, NULL);
	fsd.last_request_ns = now_ns();
	if (ctl_run < 0) {
		fs_log("control socket: %s: `venvfs absorb` cannot reach this daemon", vf_last_error());
	} else if (!fs_socket_address(ctl_run, ctl_name, &sa)) {
		fs_log("control socket path %s is too long: `venvfs absorb` cannot reach this daemon", ctl_path);
	} else {
		unlinkat(ctl_run, ctl_name, 0);
		ctl_listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (ctl_listen < 0 || bind(ctl_listen, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    listen(ctl_listen, 8) < 0) {
			fs_log("control socket %s: %s", ctl_path, strerror(errno));
			if (ctl_listen >= 0)
				close(ctl_listen);
			ctl_listen = -1;
		}
	}
	if (pipe2(ctl_stop, O_CLOEXEC) == 0 && fs_thread_create(&ctl_thread, control_main, NULL) == 0)
		ctl_running = true;
}

void control_stop(void)
{
	if (ctl_running && write(ctl_stop[1], "x", 1) == 1)
		pthread_join(ctl_thread, NULL);
	ctl_running = false;
	if (ctl_listen >= 0) {
		close(ctl_listen);
		unlinkat(ctl_run, ctl_name, 0);
		ctl_listen = -1;
	}
	if (ctl_run >= 0)
		close(ctl_run);
	ctl_run = -1;
	free(ctl_name);
	ctl_name = NULL;
	for (int i = 0; i < 2; i++)
		if (ctl_stop[i] >= 0) {
			close(ctl_stop[i]);
			ctl_stop[i] = -1;
		}
	free(ctl_path);
	ctl_path = NULL;
}

/* ---- the client side (`venvfs absorb` while an env is mounted) ---------------------- */
