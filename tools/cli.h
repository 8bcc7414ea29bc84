/*
 * cli.h - what the venvfs subcommands share: the command table entry,
 * option parsing, and error reporting conventions (exit 0 success, 1
 * failure with "venvfs CMD: message", 2 usage error).
 */
#ifndef VENVFS_CLI_H
#define VENVFS_CLI_H

#include <getopt.h>
#include <stdbool.h>

#include "store.h"
#include "util.h"

struct command {
	const char *name;
	const char *summary; /* one line for `venvfs --help` */
	const char *usage;   /* "import VENV_DIR [--name NAME]" */
	const char *help;    /* paragraph(s) for `venvfs CMD --help` */
	int (*run)(const struct command *c, int argc, char **argv);
};

extern const char *opt_home;

int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fail(const char *cmd);
/* s as a JSON string, quotes included, on stdout. */
void print_json_str(const char *s);
/* The --json option of a command (on_opt of parse_opts(), ctx: a bool). */
int json_opt(int opt, const char *arg, void *ctx);
extern const struct option json_options[];
int open_store(const char *cmd, bool create, struct store **s);
/* The same for a command that changes the store: a store on a read-only
 * file system is refused at once, saying so (reading commands, export and
 * mount use it as it is). */
int open_store_to_write(const char *cmd, bool create, struct store **s);
int parse_opts(const struct command *c, int argc, char **argv, const struct option *extra, const char *shortopts,
	       int (*on_opt)(int opt, const char *arg, void *ctx), void *ctx);

/* "12.3 MB" */
void human_bytes(uint64_t n, char out[32]);

extern const struct command cmd_import, cmd_export, cmd_ls, cmd_rm, cmd_mv, cmd_store, cmd_gc;
extern const struct command cmd_mount, cmd_umount, cmd_stats, cmd_absorb, cmd_create, cmd_clone;

#endif
