/*
 * cmd_mount.c - the subcommands around the daemon: mount, umount, stats,
 * absorb (which a daemon serving the env does itself).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "env.h"
#include "fs.h"

static int mount_opt(int opt, const char *arg, void *ctx)
{
	struct fs_opts *o = ctx;

	switch (opt) {
	case 'f':
		o->foreground = true;
		return 0;
	case 1001:
		o->allow_other = true;
		return 0;
	case 'd':
		o->debug = true;
		o->foreground = true;
		return 0;
	case 1003:
		o->libfuse_mt = true;
		return 0;
	case 1008:
		o->no_uring = true;
		return 0;
	case 1009:
		o->xattrs = true;
		return 0;
	case 1004:
		o->spin_us = (unsigned)atoi(arg);
		return 0;
	case 1002:
		o->log_path = arg;
		return 0;
	case 'j':
		o->max_threads = (unsigned)atoi(arg);
		return 0;
	case 1005:
		o->absorb_idle_s = (unsigned)atoi(arg);
		return 0;
	case 1006:
		o->no_absorb_on_unmount = true;
		return 0;
	case 1007:
		o->max_fds = (unsigned)atoi(arg);
		return 0;
	}
	return -1;
}

static int run_mount(const struct command *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"foreground", no_argument, NULL, 'f'},
		{"allow-other", no_argument, NULL, 1001},
		{"debug", no_argument, NULL, 'd'},
		{"libfuse-mt", no_argument, NULL, 1003},
		{"spin-us", required_argument, NULL, 1004},
		{"log", required_argument, NULL, 1002},
		{"threads", required_argument, NULL, 'j'},
		{"absorb-idle", required_argument, NULL, 1005},
		{"no-absorb-on-unmount", no_argument, NULL, 1006},
		{"max-fds", required_argument, NULL, 1007},
		{"no-uring", no_argument, NULL, 1008},
		{"xattrs", no_argument, NULL, 1009},
		{0},
	};
	struct fs_opts o = {.spin_us = 50, .absorb_idle_s = 60};
	struct store *s;
	int i = parse_opts(c, argc, argv, opts, "fdj:", mount_opt, &o);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 1)
		return usage_error(c->name, "expected one MOUNTPOINT");
	o.mountpoint = argv[i];
	if (open_store(c->name, true, &s))
		return 1;
	int r = fs_mount(s, &o);
	store_close(s);
	if (r < 0)
		return fail(c->name);
	return 0;
}

const struct command cmd_mount = {
	.name = "mount",
	.summary = "show every env of the store as a venv under MOUNTPOINT",
	.usage = "mount MOUNTPOINT [-f] [--allow-other] [--log FILE] [--absorb-idle SECONDS]",
	.help = "Serves every env of the store as an ordinary venv directory, MOUNTPOINT/NAME/,\n"
		"composed on the fly from the store. Envs created, cloned or removed later\n"
		"appear and disappear without a remount. Runs in the background and logs to\n"
		"HOME/log/mount.log (mount.log.uUID in a group store); stops on SIGTERM or `venvfs umount MOUNTPOINT`. A dead\n"
		"mount left by a killed daemon is cleaned up first.\n\n"
		"Options:\n"
		"  -f, --foreground  stay in the foreground and log to stderr too\n"
		"  --allow-other     let other users in (permissions are then enforced by the\n"
		"                    kernel from each file's mode); default: only the mounting user\n"
		"  --log FILE        log here instead of HOME/log/mount.log\n"
		"  --absorb-idle S   absorb what was installed into envs once the mount has been\n"
		"                    idle S seconds (default 60; 0: never)\n"
		"  --no-absorb-on-unmount  do not absorb changed envs when unmounted\n"
		"  --max-fds N       use at most N file descriptors (default: as many as allowed);\n"
		"                    past 3/4 of them, the kernel is asked to forget files\n"

		"  -j, --threads N   worker threads for disk I/O (default 8)\n"
		"  --spin-us N       keep polling for requests N us after each one (default 50;\n"
		"                    0: sleep at once; cuts latency where idle CPUs halt)\n"
		"  --no-uring        take requests from /dev/fuse even where the kernel offers\n"
		"                    FUSE over io_uring (fuse module parameter enable_uring=Y,\n"
		"                    Linux 6.14+), which serves each request on its caller's CPU\n"
		"  --libfuse-mt      serve with libfuse's multithreaded loop instead (no io_uring)\n"
		"  --xattrs          extended attributes (user.*, security.*, trusted.*) on the\n"
		"                    envs' files, as on disk; off by default: the kernel then asks\n"
		"                    the daemon about security.capability at every write (small\n"
		"                    writes measured 3x slower)\n"
		"  -d, --debug       trace every request (implies -f)",
	.run = run_mount,
};

static int run_umount(const struct command *c, int argc, char **argv)
{
	struct store *s;
	int i = parse_opts(c, argc, argv, NULL, NULL, NULL, NULL);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 1)
		return usage_error(c->name, "expected one MOUNTPOINT");
	if (open_store(c->name, false, &s))
		return 1;
	int r = fs_unmount_and_wait(s, argv[i]);
	store_close(s);
	return r < 0 ? fail(c->name) : 0;
}

const struct command cmd_umount = {
	.name = "umount",
	.summary = "unmount a venvfs mount (the daemon exits)",
	.usage = "umount MOUNTPOINT",
	.help = "Unmounts MOUNTPOINT and waits for its daemon to exit. Also detaches a dead\n"
		"mount left by a daemon that was killed.",
	.run = run_umount,
};

/* A value of the counters as JSON: a number if it is one, else a string. */
static void json_value(const char *v)
{
	char *end;

	strtoull(v, &end, 10);
	if (*v && !*end && (v[0] != '0' || !v[1]))
		fputs(v, stdout);
	else
		print_json_str(v);
}

/* The daemon's counters ("key value", "op NAME calls N errors M", "errno
 * NAME N" lines) as one JSON object: ops and errnos nested. */
static void stats_json(char *text)
{
	const char *sep = "";

	printf("{");
	for (int pass = 0; pass < 3; pass++) {
		const char *psep = "";
		if (pass == 1)
			printf("%s\"ops\": {", sep);
		if (pass == 2)
			printf("%s\"errnos\": {", sep);
		for (char *l = text; l && *l;) {
			char *nl = strchr(l, '\n');
			_cleanup_free_ char *line = nl ? xstrndup(l, (size_t)(nl - l)) : xstrdup(l);
			l = nl ? nl + 1 : NULL;
			/* the value of a plain line: all after the key (a mount
			 * point may hold spaces), without a " kB" unit */
			char *sp = strchr(line, ' ');
			_cleanup_free_ char *value = xstrdup(sp ? sp + 1 + strspn(sp + 1, " ") : "");
			if (str_has_suffix(value, " kB"))
				value[strlen(value) - 3] = '\0';
			char *save, *k = strtok_r(line, " \t", &save), *a = strtok_r(NULL, " \t", &save);
			if (!k || !a)
				continue;
			bool op = !strcmp(k, "op"), err = !strcmp(k, "errno");
			if (pass == 0 && !op && !err) {
				printf("%s", sep);
				print_json_str(k);
				printf(": ");
				json_value(value);
				sep = ", ";
			} else if (pass == 1 && op) {
				strtok_r(NULL, " \t", &save); /* "calls" */
				char *calls = strtok_r(NULL, " \t", &save);
				strtok_r(NULL, " \t", &save); /* "errors" */
				char *errors = strtok_r(NULL, " \t", &save);
				printf("%s", psep);
				print_json_str(a);
				printf(": {\"calls\": %s, \"errors\": %s}", calls ? calls : "0", errors ? errors : "0");
				psep = ", ";
			} else if (pass == 2 && err) {
				char *count = strtok_r(NULL, " \t", &save);
				printf("%s", psep);
				print_json_str(a);
				printf(": %s", count ? count : "0");
				psep = ", ";
			}
		}
		if (pass)
			printf("}");
		sep = ", ";
	}
	printf("}\n");
}

static int run_stats(const struct command *c, int argc, char **argv)
{
	struct store *s;
	char *text;
	bool json = false;
	int i = parse_opts(c, argc, argv, json_options, NULL, json_opt, &json);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 1)
		return usage_error(c->name, "expected one MOUNTPOINT");
	if (open_store(c->name, false, &s))
		return 1;
	int r = fs_stats(s, argv[i], &text);
	store_close(s);
	if (r < 0)
		return fail(c->name);
	if (json)
		stats_json(text);
	else
		fputs(text, stdout);
	free(text);
	return 0;
}

const struct command cmd_stats = {
	.name = "stats",
	.summary = "counters of a running mount: requests, errors by errno, memory",
	.usage = "stats MOUNTPOINT [--json]",
	.help = "Asks the daemon serving MOUNTPOINT for its counters: requests and failures\n"
		"per operation, failures per errno, damaged objects met, nodes and envs in\n"
		"memory, resident memory.\n\n"
		"Options:\n"
		"  --json      one JSON object (\"ops\": calls and errors per operation,\n"
		"              \"errnos\": failures per errno)",
	.run = run_stats,
};

static void say_line(void *ctx, const char *msg)
{
	const char *name = ctx;

	printf("%s: %s\n", name, msg);
	fflush(stdout);
}

static int run_absorb(const struct command *c, int argc, char **argv)
{
	struct store *s;
	char **names = NULL;
	size_t n = 0;
	int i = parse_opts(c, argc, argv, NULL, NULL, NULL, NULL), failed = 0;

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (open_store_to_write(c->name, false, &s))
		return 1;
	if (i < argc) {
		names = argv + i;
		n = (size_t)(argc - i);
	} else if (env_list(s, &names, &n) < 0) {
		store_close(s);
		return fail(c->name);
	}
	for (size_t k = 0; k < n; k++) {
		struct absorb_stats st;
		char linked[32], copied[32];
		if (fs_absorb(s, names[k], say_line, names[k], &st) < 0) {
			fprintf(stderr, "venvfs absorb: %s\n", vf_last_error());
			failed = 1;
			continue;
		}
		if (!st.absorbed && !st.dropped && !st.left)
			continue;
		human_bytes(st.linked_bytes, linked);
		human_bytes(st.copied_bytes, copied);
		printf("%s: %" PRIu64 " absorbed, %" PRIu64 " left in the writable layer, %" PRIu64
		       " dropped; %s moved into the store without copying, %s written\n",
		       names[k], st.absorbed, st.left, st.dropped, linked, copied);
	}
	if (i >= argc)
		env_list_free(names, n);
	store_close(s);
	return failed;
}

const struct command cmd_absorb = {
	.name = "absorb",
	.summary = "move packages installed into envs (pip, uv) into the store",
	.usage = "absorb [NAME...]",
	.help = "Every complete distribution that pip or uv installed into an env through the\n"
		"mount (a *.dist-info with a RECORD whose files are all there and match) becomes\n"
		"a package of the store, shared by every env that has it; packages uninstalled\n"
		"from the env are dropped from it. The env looks the same before and after, and\n"
		"running programs keep working. A distribution whose RECORD does not match its\n"
		"files stays in the env's writable layer, and the report says why. Without NAME,\n"
		"every env. A mounted env is absorbed by its daemon (this command asks it), which\n"
		"also does so by itself when idle and when unmounted.",
	.run = run_absorb,
};