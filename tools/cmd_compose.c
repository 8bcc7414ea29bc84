/*
 * cmd_compose.c - envs from what the store holds: create, clone.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "env.h"
#include "fs.h"
#include "venv.h"

struct create_args {
	struct create_opts o;
};

static int create_opt(int opt, const char *arg, void *ctx)
{
	struct create_args *a = ctx;

	switch (opt) {
	case 'p':
		a->o.python = arg;
		return 0;
	case 1001:
		a->o.from = arg;
		return 0;
	case 'r':
		a->o.req_file = arg;
		return 0;
	case 1002:
		a->o.prompt = arg;
		return 0;
	case 1003:
		a->o.system_site_packages = true;
		return 0;
	case 1004:
		a->o.no_deps = true;
		return 0;
	}
	return -1;
}

static int run_create(const struct command *c, int argc, char **argv)
{
	static const struct option opts[] = {
		{"python", required_argument, NULL, 'p'},
		{"from", required_argument, NULL, 1001},
		{"requirement", required_argument, NULL, 'r'},
		{"prompt", required_argument, NULL, 1002},
		{"system-site-packages", no_argument, NULL, 1003},
		{"no-deps", no_argument, NULL, 1004},
		{0},
	};
	struct create_args a = {0};
	struct create_stats st;
	struct store *s;
	int i = parse_opts(c, argc, argv, opts, "p:r:", create_opt, &a);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i < 1)
		return usage_error(c->name, "expected NAME");
	a.o.name = argv[i];
	a.o.reqs = (const char **)argv + i + 1;
	a.o.n_reqs = (size_t)(argc - i - 1);
	if (open_store_to_write(c->name, true, &s))
		return 1;
	int r = venv_create(s, &a.o, &st);
	store_close(s);
	if (r < 0)
		return fail(c->name);
	printf("created env %s: Python %s, %zu packages\n", a.o.name, st.python_version, st.packages);
	free(st.python_version);
	return 0;
}

const struct command cmd_create = {
	.name = "create",
	.summary = "compose a new env from packages already in the store",
	.usage = "create NAME --python PYTHON [--from ENV] [-r requirements.txt] [NAME==VERSION ...]",
	.help = "Makes env NAME from packages the store already has: nothing is copied, so it\n"
		"takes time in the number of packages, not files. Requirements are resolved\n"
		"against the store with their dependencies (Requires-Dist, environment\n"
		"markers, extras), taking the highest version that fits; a requirement the\n"
		"store cannot satisfy is an error that lists the versions it has, and nothing\n"
		"is created. The env's pyvenv.cfg, bin/python and activate scripts are those\n"
		"`PYTHON -m venv` writes (made once per interpreter, then reused).\n\n"
		"Options:\n"
		"  -p, --python PYTHON      base interpreter (path or command; default: --from's)\n"
		"  --from ENV               start from ENV's packages (requirements given by\n"
		"                           name replace ENV's version of that package)\n"
		"  -r, --requirement FILE   read requirements from FILE (-r nesting works;\n"
		"                           options and --hash are ignored)\n"
		"  --prompt PROMPT          as python -m venv --prompt\n"
		"  --system-site-packages   as python -m venv --system-site-packages\n"
		"  --no-deps                only the packages asked for",
	.run = run_create,
};

static int run_clone(const struct command *c, int argc, char **argv)
{
	struct store *s;
	int i = parse_opts(c, argc, argv, NULL, NULL, NULL, NULL);

	if (i < 0)
		return i == -1 ? 0 : 2;
	if (argc - i != 2)
		return usage_error(c->name, "expected SRC and DST");
	if (open_store_to_write(c->name, false, &s))
		return 1;
	uint64_t absorbed = 0;
	int r = fs_clone(s, argv[i], argv[i + 1], &absorbed);
	store_close(s);
	if (absorbed)
		printf("absorbed %" PRIu64 " distributions of %s first\n", absorbed, argv[i]);
	if (r < 0)
		return fail(c->name);
	printf("cloned env %s as %s\n", argv[i], argv[i + 1]);
	return 0;
}

const struct command cmd_clone = {
	.name = "clone",
	.summary = "a new env identical to another, independent from then on",
	.usage = "clone SRC DST",
	.help = "Makes env DST identical to SRC: same interpreter and packages (shared in the\n"
		"store), and a copy of SRC's writable layer. SRC is absorbed first (venvfs\n"
		"absorb), so what was installed into it is shared, not copied. Changes to\n"
		"either later do not show in the other.",
	.run = run_clone,
};
