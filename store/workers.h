/*
 * workers.h - running jobs 0..n-1 on a few threads, the first error
 * stopping the rest: how import and absorb read files into the store.
 *
 * Each thread takes the next job number until none is left or a job has
 * failed. The first job to fail wins: its negative errno and its message
 * (vf_last_error(), which is per thread) are what workers_run() returns
 * and sets in the calling thread; jobs not taken yet are not run, jobs
 * already running finish. The calling thread is one of the workers, so
 * the jobs run even where no thread can be created. While they run, a
 * progress line (util.h) counts the jobs done and the bytes they report.
 */
#ifndef VENVFS_WORKERS_H
#define VENVFS_WORKERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* The most threads workers_run() uses, the caller's included. */
#define WORKERS_MAX 16

/*
 * Job k: 0, or a negative errno with vf_error() set. *bytes is what it
 * read, for the progress line. scratch is its thread's buffer, kept from
 * one job to the next (freed by workers_run()).
 */
typedef int (*workers_job_fn)(void *ctx, size_t k, struct buf *scratch, uint64_t *bytes);

struct workers {
	size_t n;           /* jobs 0..n-1 */
	unsigned threads;   /* threads to use, the caller's included (1..WORKERS_MAX, clamped) */
	workers_job_fn job; /* runs one job */
	void *ctx;          /* passed to job */
	const char *what;   /* the progress line: "what: done/n files, N MB" */
	bool progress;      /* show it (on a terminal only) */
};

/* Run every job: 0, or the first error (see above). */
int workers_run(const struct workers *w);

/* The number of CPUs online (at least 1): a default for workers.threads. */
unsigned workers_cpus(void);

#endif
