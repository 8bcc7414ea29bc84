/*
 * venvfs.c - the venvfs command: a thin layer over the store library
 * (store/) and the daemon (fs/). Each subcommand parses its options,
 * calls one library function and prints what happened.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "cli.h"

const char *opt_home;

int usage_error(const char *cmd, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "venvfs %s: ", cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'venvfs %s --help'.\n", cmd);
	return 2;
}

int fail(const char *cmd)
{
	fprintf(stderr, "venvfs %s: %s\n", cmd, vf_last_error());
	return 1;
}

void print_json_str(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

const struct option json_options[] = {{"json", no_argument, NULL, 'J'}, {0}};

int json_opt(int opt, const char *arg, void *ctx)
{
	(void)arg;
	if (opt != 'J')
		return -1;
	*(bool *)ctx = true;
	return 0;
}

int open_store(const char *cmd, bool create, struct store **s)
{
	_cleanup_free_ char *home = store_default_home(opt_home);

	if (store_open(home, create, s) < 0)
		return fail(cmd);
	return 0;
}

int open_store_to_write(const char *cmd, bool create, struct store **s)
{
	if (open_store(cmd, create, s))
		return 1;
	if (fd_on_read_only_fs((*s)->fd)) {
		vf_error_read_only_store((*s)->home);
		store_close(*s);
		*s = NULL;
		return fail(cmd);
	}
	return 0;
}

/*
 * Parse the options of a subcommand: every subcommand takes --help and
 * --home; extra holds its own. Returns the getopt index of the first
 * operand, or -1 after printing help (exit 0), -2 on a usage error.
 */
int parse_opts(const struct command *c, int argc, char **argv, const struct option *extra, const char *shortopts,
	       int (*on_opt)(int opt, const char *arg, void *ctx), void *ctx)
{
	struct option all[32];
	size_t n = 0;
	_cleanup_free_ char *so = xasprintf("h%s", shortopts ? shortopts : "");

	all[n++] = (struct option){"help", no_argument, NULL, 'h'};
	all[n++] = (struct option){"home", required_argument, NULL, 1000};
	for (const struct option *o = extra; o && o->name; o++)
		all[n++] = *o;
	all[n] = (struct option){0};
	optind = 1;
	opterr = 0;
	for (;;) {
		int opt = getopt_long(argc, argv, so, all, NULL);
		if (opt == -1)
			break;
		if (opt == 'h') {
			printf("usage: venvfs %s\n\n%s\n", c->usage, c->help);
			printf("\nCommon options:\n  --home DIR   the store (default $VENVFS_HOME, else "
			       "${XDG_DATA_HOME:-~/.local/share}/venvfs)\n  -h, --help   this text\n");
			return -1;
		}
		if (opt == 1000) {
			opt_home = optarg;
			continue;
		}
		if (opt == '?' || opt == ':' || !on_opt || on_opt(opt, optarg, ctx) < 0) {
			const char *bad = argv[optind - 1];
			usage_error(c->name, "unknown or incomplete option %s", bad ? bad : "");
			return -2;
		}
	}
	return optind;
}

static const struct command *commands[] = {
	&cmd_import, &cmd_export, &cmd_mount, &cmd_umount, &cmd_absorb, &cmd_create, &cmd_clone,
	&cmd_ls,     &cmd_rm,     &cmd_mv,    &cmd_store,  &cmd_gc,     &cmd_stats,
};

static void main_usage(FILE *f)
{
	fprintf(f, "usage: venvfs [--home DIR] COMMAND [ARGS]\n\n"
		   "venvfs keeps every file of every installed Python package once, in a\n"
		   "content-addressed store, and shows each environment as an ordinary venv.\n\nCommands:\n");
	for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
		fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
	fprintf(f, "\nRun 'venvfs COMMAND --help' for the options of a command.\n");
}

int main(int argc, char **argv)
{
	int i = 1;

	while (i < argc && argv[i][0] == '-') {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			main_usage(stdout);
			return 0;
		}
		if (!strcmp(argv[i], "--version")) {
			printf("venvfs %s\n", VENVFS_VERSION);
			return 0;
		}
		if (!strcmp(argv[i], "--home") && i + 1 < argc) {
			opt_home = argv[i + 1];
			i += 2;
			continue;
		}
		if (str_has_prefix(argv[i], "--home=")) {
			opt_home = argv[i] + 7;
			i++;
			continue;
		}
		fprintf(stderr, "venvfs: unknown option %s\n", argv[i]);
		main_usage(stderr);
		return 2;
	}
	if (i >= argc) {
		main_usage(stderr);
		return 2;
	}
	for (size_t k = 0; k < ARRAY_SIZE(commands); k++)
		if (!strcmp(argv[i], commands[k]->name))
			return commands[k]->run(commands[k], argc - i, argv + i);
	fprintf(stderr, "venvfs: unknown command '%s'\n", argv[i]);
	main_usage(stderr);
	return 2;
}
