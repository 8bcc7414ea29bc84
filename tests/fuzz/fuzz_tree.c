/*
 * fuzz_tree.c - tree manifests: tree_load() (validate() in store/tree.c)
 * and tree_read_head(), then the lookups the daemon makes on what they
 * accepted.
 *
 * The whole input is one manifest. Its checksum is set to match before
 * tree_load() sees it, or nearly every mutation would stop at the checksum
 * and the checks behind it would never run (the unit tests cover the
 * checksum itself). On an accepted tree every node's path must lead back
 * to the node, and every string read must stay inside the manifest.
 */
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "tree.h"

#define MAX_WALK 4096

static void set_checksum(uint8_t *m, size_t len)
{
	uint64_t sum = tree_checksum(m, len);

	memcpy(m + offsetof(struct tree_hdr, checksum), &sum, sizeof(sum));
}

static void walk(const struct tree *t)
{
	_cleanup_buf_ struct buf path = {0};
	volatile char sink = 0;

	for (int i = 0; i < TREE_STR_COUNT; i++)
		free(tree_strdup(t, (enum tree_str)i));
	for (uint32_t i = 0; i < t->n && i < MAX_WALK; i++) {
		const struct tree_node *n = tree_node(t, i);
		uint32_t root = tree_path(t, i, &path);
		if (root >= t->hdr->n_roots || tree_lookup_path(t, root, path.data, path.len) != i)
			abort();
		if (S_ISLNK(n->mode))
			sink ^= tree_link_target(t, n)[n->u.link.len - 1];
		if (n->name_len)
			sink ^= tree_name(t, n)[n->name_len - 1];
	}
	(void)sink;
}

/* tree_read_head() reads from a file: a memfd holds the input. */
static void read_head(const uint8_t *data, size_t size)
{
	static int fd = -1;
	struct tree_head h;

	if (fd < 0 && (fd = memfd_create("fuzz-tree", MFD_CLOEXEC)) < 0)
		abort();
	if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	if (tree_read_head(fd, "manifest", &h) == 0)
		tree_head_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	_cleanup_free_ uint8_t *m = xmemdup(data, size ? size : 1);
	struct tree *t;

	read_head(data, size);
	if (size >= sizeof(struct tree_hdr))
		set_checksum(m, size);
	if (tree_load(m, size, true, &t) < 0)
		return 0;
	walk(t);
	tree_free(t);
	return 0;
}
