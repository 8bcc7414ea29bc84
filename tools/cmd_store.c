/*
 * cmd_store.c - the subcommands that work on the store alone: import,
 * export, ls, rm, store ls|du|verify, gc.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "env.h"
#include "maint.h"
#include "venv.h"

void human_bytes(uint64_t n, char out[32])
{
	const char *unit[] = {"B", "KB", "MB", "GB", "TB"};
	double v = (double)n;
	int u = 0;

	while (v >= 1000 && u < 4) {
		v /= 1000;
		u++;
	}
	snprintf(out, 32, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
}

/* ---- import -------------------------------------------------------------------- */

struct import_args {
	struct import_opts o;
};

static int import_opt(int opt, const char *arg, void *ctx)
{
	struct import_args *a = ctx;

	switch (opt) {
	case 'n':
		a->o.name = arg;
		return 0;
	case 'j':
		a->o.threads = (unsigned)atoi(arg);
		return 0;
	case 1001:
		a->o.no_cache = true;
		return 0;
	case 'q':
		a->o.progress = false;
		return 0;
	}
	return -1;
}

static int run_import(const struct command *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"name", required_argument, NULL, 'n'},
		{"jobs", required_argument, NULL, 'j'},
		{"no-cache", no_argument, NULL, 1001},
		{"quiet", no_argument, NULL, 'q'},
		{0},
	};
	struct import_args a = {.o = {.progress = true}};
	struct import_stats st;
	struct store *s;
	char b1[32], b2[32];
	int i = parse_opts(c, argc, argv, opts, "n:j:q", import_opt, &a);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 1)
		return usage_error(c->name, "expected one VENV_DIR");
	if (open_store_to_write(c->name, true, &s))
		return 1;
	int r = venv_import(s, argv[i], &a.o, &st);
	store_close(s);
	if (r < 0) {
		free(st.env_name);
		return fail(c->name);
	}
	human_bytes(st.bytes, b1);
	human_bytes(st.new_bytes, b2);
	printf("imported %s as env %s: %" PRIu64 " files (%s), %" PRIu64 " packages", argv[i], st.env_name, st.files,
	       b1, st.packages);
	if (st.own_dists)
		printf(" + %" PRIu64 " distributions kept as env files", st.own_dists);
	printf("; %s new in the store", b2);
	if (st.cache_hits)
		printf(", %" PRIu64 " files unchanged since the last import", st.cache_hits);
	printf("\n");
	free(st.env_name);
	return 0;
}

const struct command cmd_import = {
	.name = "import",
	.summary = "record an existing venv in the store as an env",
	.usage = "import VENV_DIR [--name NAME] [-j N] [--no-cache] [-q]",
	.help = "Takes a venv made by `python -m venv`, virtualenv or uv. Each *.dist-info with a\n"
		"RECORD becomes a package in the store (stored once, shared by every env that has\n"
		"it); every other file (egg-info installs, stray and user files) is kept as the\n"
		"env's own content. The venv itself is left untouched. Importing the same venv\n"
		"again updates its env and only reads files that changed.\n\n"
		"Options:\n"
		"  -n, --name NAME   env name (default: the directory's name; for .venv or venv,\n"
		"                    the name of the project directory that holds it)\n"
		"  -j, --jobs N      reader threads (default: one per CPU)\n"
		"  --no-cache        re-read every file even if unchanged since the last import\n"
		"  -q, --quiet       no progress display",
	.run = run_import,
};

/* ---- export -------------------------------------------------------------------- */

static int export_opt(int opt, const char *arg, void *ctx)
{
	struct export_opts *o = ctx;

	(void)arg;
	if (opt != 1001)
		return -1;
	o->devices = true;
	return 0;
}

static int run_export(const struct command *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"devices", no_argument, NULL, 1001},
		{0},
	};
	struct export_opts o = {.progress = true};
	struct store *s;
	int i = parse_opts(c, argc, argv, opts, "", export_opt, &o);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 2)
		return usage_error(c->name, "expected NAME and DIR");
	if (open_store(c->name, false, &s))
		return 1;
	int r = venv_export(s, argv[i], argv[i + 1], &o);
	store_close(s);
	if (r < 0)
		return fail(c->name);
	printf("exported env %s to %s\n", argv[i], argv[i + 1]);
	return 0;
}

const struct command cmd_export = {
	.name = "export",
	.summary = "write an env out as a real, standalone venv",
	.usage = "export NAME DIR [--devices]",
	.help = "Writes env NAME as an ordinary venv directory at DIR (which must not exist, or\n"
		"be empty). Paths inside scripts and activate files name DIR. Exporting to the\n"
		"path an env was imported from reproduces that venv file for file. Every byte\n"
		"copied from the store is checked against its object's name; setuid and setgid\n"
		"bits are dropped (the store does not record owners), and device nodes are\n"
		"named on stderr, not created (unless --devices).\n\n"
		"Options:\n"
		"  --devices   create the env's block and character devices too",
	.run = run_export,
};

/* ---- ls ------------------------------------------------------------------------ */

static int run_ls(const struct command *c, int argc, char **argv)
{
	struct store *s;
	char **names;
	size_t n;
	bool json = false;
	int i = parse_opts(c, argc, argv, json_options, NULL, json_opt, &json);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc != i)
		return usage_error(c->name, "unexpected argument %s", argv[i]);
	if (open_store(c->name, false, &s))
		return 1;
	if (env_list(s, &names, &n) < 0) {
		store_close(s);
		return fail(c->name);
	}
	if (n && !json)
		printf("%-24s %-8s %8s %10s  %s\n", "NAME", "PYTHON", "PACKAGES", "LAYER", "ORIGIN");
	if (json)
		printf("[");
	for (size_t k = 0; k < n; k++) {
		struct env *e;
		struct env_summary sum = {0};
		int r = env_load(s, names[k], &e);
		if (r == 0 && (r = env_summary(s, e, &sum)) < 0)
			env_free(e);
		if (json) {
			printf("%s\n {\"name\": ", k ? "," : "");
			print_json_str(names[k]);
			if (r < 0) {
				printf(", \"error\": ");
				print_json_str(vf_last_error());
			} else {
				printf(", \"python\": ");
				print_json_str(sum.python);
				printf(", \"packages\": %zu, \"store_packages\": %zu, \"layer_bytes\": %" PRIu64
				       ", \"origin\": ",
				       sum.distributions, e->n_pkgs, sum.layer_bytes);
				if (e->origin)
					print_json_str(e->origin);
				else
					printf("null");
			}
			printf("}");
		} else if (r < 0) {
			printf("%-24s (unreadable: %s)\n", names[k], vf_last_error());
		} else {
			char b[32];
			human_bytes(sum.layer_bytes, b);
			printf("%-24s %-8s %8zu %10s  %s\n", e->name, sum.python, sum.distributions, b,
			       e->origin ? e->origin : "-");
		}
		if (r == 0)
			env_free(e);
		env_summary_free(&sum);
	}
	if (json)
		printf("%s]\n", n ? "\n" : "");
	env_list_free(names, n);
	store_close(s);
	return 0;
}

const struct command cmd_ls = {
	.name = "ls",
	.summary = "list envs",
	.usage = "ls [--json]",
	.help = "Lists the envs of the store as they are now, mounted and written or not: the\n"
		"Python their pyvenv.cfg names, the distributions their site-packages shows,\n"
		"the disk their writable layer takes, and where they were imported from.\n\n"
		"Options:\n"
		"  --json      one JSON array of objects (name, python, packages,\n"
		"              store_packages, layer_bytes, origin)",
	.run = run_ls,
};

/* ---- rm ------------------------------------------------------------------------ */

static int run_rm(const struct command *c, int argc, char **argv)
{
	struct store *s;
	int i = parse_opts(c, argc, argv, NULL, NULL, NULL, NULL), ret = 0;

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc == i)
		return usage_error(c->name, "expected NAME");
	if (open_store_to_write(c->name, false, &s))
		return 1;
	for (; i < argc; i++)
		if (env_remove(s, argv[i]) < 0)
			ret = fail(c->name);
	store_close(s);
	return ret;
}

const struct command cmd_rm = {
	.name = "rm",
	.summary = "remove envs (their packages stay until gc)",
	.usage = "rm NAME...",
	.help = "Removes the named envs, including their writable layers. Packages and objects\n"
		"they used stay in the store until `venvfs gc`.",
	.run = run_rm,
};

/* ---- mv ------------------------------------------------------------------------ */

static int run_mv(const struct command *c, int argc, char **argv)
{
	struct store *s;
	int i = parse_opts(c, argc, argv, NULL, NULL, NULL, NULL);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 2)
		return usage_error(c->name, "expected OLD and NEW");
	if (open_store_to_write(c->name, false, &s))
		return 1;
	int r = env_rename(s, argv[i], argv[i + 1]);
	store_close(s);
	if (r < 0)
		return fail(c->name);
	printf("renamed env %s to %s\n", argv[i], argv[i + 1]);
	return 0;
}

const struct command cmd_mv = {
	.name = "mv",
	.summary = "rename an env",
	.usage = "mv OLD NEW",
	.help = "Renames env OLD to NEW, its writable layer with it. Never over an existing\n"
		"env; not while a mount serves OLD (venvfs umount it first).",
	.run = run_mv,
};

/* ---- store ls|du|verify -------------------------------------------------------- */

static int store_ls(struct store *s, bool json)
{
	struct pkg_info *p;
	size_t n;
	char b[32], hex[OBJID_STR_MAX];

	if (store_list_packages(s, &p, &n) < 0)
		return fail("store ls");
	if (n && !json)
		printf("%-28s %-16s %7s %10s %5s  %s\n", "NAME", "VERSION", "FILES", "SIZE", "ENVS", "ID");
	if (json)
		printf("[");
	for (size_t i = 0; i < n; i++) {
		human_bytes(p[i].bytes, b);
		objid_format(&p[i].id, hex);
		if (json) {
			printf("%s\n {\"name\": ", i ? "," : "");
			print_json_str(p[i].name);
			printf(", \"version\": ");
			print_json_str(p[i].version);
			printf(", \"files\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"envs\": %u, \"id\": \"%s\"}",
			       p[i].files, p[i].bytes, p[i].refs, hex);
		} else {
			printf("%-28s %-16s %7" PRIu64 " %10s %5u  %.12s\n", p[i].name, p[i].version, p[i].files, b,
			       p[i].refs, hex);
		}
	}
	if (json)
		printf("%s]\n", n ? "\n" : "");
	pkg_info_free(p, n);
	return 0;
}

static int store_du_cmd(struct store *s, bool json)
{
	struct store_du d;
	char a[32], b[32];

	if (store_du(s, &d) < 0)
		return fail("store du");
	if (json) {
		printf("{\"objects\": %" PRIu64 ", \"packages\": %" PRIu64 ", \"envs\": %" PRIu64
		       ", \"logical_bytes\": %" PRIu64 ", \"stored_bytes\": %" PRIu64
		       ", \"logical_apparent_bytes\": %" PRIu64 ", \"stored_apparent_bytes\": %" PRIu64 "}\n",
		       d.objects, d.packages, d.envs, d.logical_bytes, d.stored_bytes, d.logical_apparent,
		       d.stored_apparent);
		return 0;
	}
	human_bytes(d.logical_bytes, a);
	human_bytes(d.stored_bytes, b);
	printf("objects   %" PRIu64 "\npackages  %" PRIu64 "\nenvs      %" PRIu64 "\n", d.objects, d.packages, d.envs);
	printf("logical   %s  (the envs as plain directories)\nstored    %s  (the store on disk)\n", a, b);
	if (d.logical_bytes)
		printf("ratio     %.3f\n", (double)d.stored_bytes / (double)d.logical_bytes);
	return 0;
}

static void print_problem(void *ctx, const char *msg)
{
	(void)ctx;
	printf("%s\n", msg);
	fflush(stdout);
}

static int store_verify_cmd(struct store *s)
{
	struct verify_stats st;
	int r = store_verify(s, true, print_problem, NULL, &st);

	printf("checked %" PRIu64 " objects, %" PRIu64 " packages, %" PRIu64 " envs: ", st.objects, st.packages,
	       st.envs);
	if (r < 0) {
		printf("%" PRIu64 " problems\n", st.problems);
		return 1;
	}
	printf("all good\n");
	return 0;
}

struct store_cli {
	bool json;
	const char *group;
};

static int store_opt(int opt, const char *arg, void *ctx)
{
	struct store_cli *o = ctx;

	if (opt == 'J') {
		o->json = true;
		return 0;
	}
	if (opt == 'G') {
		o->group = arg;
		return 0;
	}
	return -1;
}

/* `venvfs store init [--group G]` */
static int store_init_cmd(const struct command *c, const struct store_cli *o)
{
	_cleanup_free_ char *home = store_default_home(opt_home);
	struct store *s;

	if (o->group) {
		if (store_init_group(home, o->group) < 0)
			return fail(c->name);
		printf("made group store %s for group %s: its members import, create and mount in it; "
		       "gc is for its owner or root\n",
		       home, o->group);
		return 0;
	}
	if (store_open(home, true, &s) < 0)
		return fail(c->name);
	store_close(s);
	printf("store %s is ready\n", home);
	return 0;
}

static int run_store(const struct command *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, NULL, 'J'}, {"group", required_argument, NULL, 'G'}, {0}};
	struct store_cli o = {0};
	struct store *s;
	int i = parse_opts(c, argc, argv, opts, NULL, store_opt, &o), r;
	bool json = o.json;

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i < 1)
		return usage_error(c->name, "expected init, ls, du or verify");
	const char *sub = argv[i];
	if (argc - i > 1)
		return usage_error(c->name, "unexpected argument %s", argv[i + 1]);
	if (strcmp(sub, "init") && strcmp(sub, "ls") && strcmp(sub, "du") && strcmp(sub, "verify"))
		return usage_error(c->name, "unknown subcommand %s (expected init, ls, du or verify)", sub);
	if (o.group && strcmp(sub, "init"))
		return usage_error(c->name, "--group goes with init");
	if (json && strcmp(sub, "ls") && strcmp(sub, "du"))
		return usage_error(c->name, "--json goes with ls or du");
	if (!strcmp(sub, "init"))
		return store_init_cmd(c, &o);
	if (open_store(c->name, false, &s))
		return 1;
	if (!strcmp(sub, "ls"))
		r = store_ls(s, json);
	else if (!strcmp(sub, "du"))
		r = store_du_cmd(s, json);
	else
		r = store_verify_cmd(s);
	store_close(s);
	return r;
}

const struct command cmd_store = {
	.name = "store",
	.summary = "make or inspect the store: init [--group G], ls, du, verify",
	.usage = "store init [--group GROUP] | store ls [--json] | store du [--json] | store verify",
	.help = "store init     make the store (any other command makes one when needed);\n"
		"               --group GROUP makes a new group store, shared by the accounts\n"
		"               of GROUP: each imports, creates and mounts its own envs, and no\n"
		"               account can change what another's envs show or run\n"
		"               (docs/design.md, \"Group stores\"); gc is for its owner or root\n"
		"store ls       packages in the store, with the number of envs using each\n"
		"store du       objects, packages, envs; logical bytes (what the envs would\n"
		"               take as plain directories) and stored bytes (what the store\n"
		"               takes on disk); --json for machines\n"
		"store verify   re-hash every object, check every manifest and env; exits 1\n"
		"               and names every damaged object or manifest if anything is wrong",
	.run = run_store,
};

/* ---- gc ------------------------------------------------------------------------ */

static int run_gc(const struct command *c, int argc, char **argv)
{
	struct store *s;
	struct gc_stats st;
	char b[32];
	int i = parse_opts(c, argc, argv, NULL, NULL, NULL, NULL);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc != i)
		return usage_error(c->name, "unexpected argument %s", argv[i]);
	if (open_store_to_write(c->name, false, &s))
		return 1;
	int r = store_gc(s, true, &st);
	store_close(s);
	if (r < 0)
		return fail(c->name);
	human_bytes(st.object_bytes, b);
	printf("removed %" PRIu64 " objects (%s), %" PRIu64 " packages, %" PRIu64 " temp files, %" PRIu64
	       " unfinished envs\n",
	       st.objects, b, st.packages, st.temp_files, st.leftover_envs);
	return 0;
}

const struct command cmd_gc = {
	.name = "gc",
	.summary = "delete what no env references",
	.usage = "gc",
	.help = "Deletes objects and packages no env references, and leftovers of interrupted\n"
		"commands. Safe while imports run: gc waits for them, and they for it.",
	.run = run_gc,
};
