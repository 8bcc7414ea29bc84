/*
 * fuzz_template.c - console scripts, activate scripts and other files
 * that name their env: tpl_make_subst() (what import and absorb make of
 * them) and tpl_render() (what the mount and export show).
 *
 * venvfs has no entry_points.txt parser of its own: pip and uv write the
 * console scripts, and venvfs reads them as files that mention the env's
 * path (shebangs, VIRTUAL_ENV=, the "(prompt) "). The input is such a
 * file, made into a template for the env it was found in and rendered at
 * that env's path (the same bytes again, unless a shebang had to become
 * the /bin/sh trampoline), at one with a space and at a long one. The
 * input is also rendered as a template blob itself (a blob's bytes are
 * checked against its object id before rendering, so this is defence in
 * depth: a malformed one must fail cleanly).
 */
#include <string.h>

#include "fuzz.h"
#include "template.h"

#define ENV      "/tmp/venvfs-seeds/tiny"
#define ENV_REAL "/private/tmp/venvfs-seeds/tiny"

static int render_file(void *cb, unsigned root, const char *path, size_t n, struct buf *out)
{
	(void)cb;
	buf_reset(out);
	if (root > 1 || !n)
		return vf_error(EIO, "no such file");
	buf_add(out, path, n);
	return 0;
}

static void render(const void *blob, size_t len, const char *env, const char *env_real, struct buf *out)
{
	struct tpl_ctx ctx = {.env = env, .env_real = env_real, .render_file = render_file};

	if (tpl_render(blob, len, &ctx, out) == 0 && (!out->data || strlen(out->data) > out->len))
		abort();
}

/* Does content start with a direct shebang into env that does not fit? */
static bool shebang_needs_trampoline(const uint8_t *data, size_t size)
{
	static const char direct[] = "#!" ENV "/bin/";
	const uint8_t *nl = memchr(data, '\n', size);
	size_t line = nl ? (size_t)(nl - data) : size;

	return size >= sizeof(direct) - 1 && !memcmp(data, direct, sizeof(direct) - 1) && line + 1 > 127;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct tpl_paths paths = {.env = ENV, .env_real = ENV_REAL, .prompt = "tiny"};
	_cleanup_buf_ struct buf blob = {0}, out = {0};
	char longp[300];

	memset(longp, 'x', sizeof(longp) - 1);
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '\0';

	if (tpl_make_subst((const char *)data, size, &paths, &blob) == 1) {
		render(blob.data, blob.len, ENV, ENV_REAL, &out);
		if ((out.len != size || memcmp(out.data, data, size)) && !shebang_needs_trampoline(data, size))
			abort();
		render(blob.data, blob.len, "/mnt/my envs/tiny", NULL, &out);
		render(blob.data, blob.len, longp, NULL, &out);
		render(blob.data, blob.len, "/", NULL, &out);
	} else if (blob.len) {
		abort();
	}
	render(data, size, ENV, NULL, &out);
	render(data, size, "/mnt/my envs/tiny", ENV_REAL, &out);
	return 0;
}
