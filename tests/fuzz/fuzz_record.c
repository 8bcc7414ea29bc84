/*
 * fuzz_record.c - RECORD (PEP 376 CSV): record_parse().
 *
 * The whole input is one RECORD. Besides the sanitizers, the offsets a
 * row reports (a template replaces "hash,size" through them) must lie
 * inside the text, in order.
 */
#include <string.h>

#include "distinfo.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct record r;

	if (record_parse((const char *)data, size, "RECORD", &r) < 0)
		return 0;
	for (size_t i = 0; i < r.n; i++) {
		const struct record_row *row = &r.rows[i];
		if (!row->path[0] || row->size < -1 || (row->hash[0] && !strchr(row->hash, '=')))
			abort();
		if (!(row->row_off < row->hash_off && row->hash_off <= row->row_end && row->row_end <= size))
			abort();
		if (i && row->line <= r.rows[i - 1].line)
			abort();
	}
	record_free(&r);
	return 0;
}
