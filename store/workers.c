/*
 * workers.c - running jobs on a few threads (see workers.h).
 */
#include "workers.h"

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

/* One workers_run(): what its threads share. */
struct run {
	const struct workers *w;
	size_t next;                     /* the next job to take */
	uint64_t done_files, done_bytes; /* for the progress line */
	pthread_mutex_t lock;            /* guards error and error_msg */
	int error;                       /* the first job error, 0 if none */
	char error_msg[2048];            /* its message */
	struct progress prog;
};

static void set_error(struct run *run, int r)
{
	pthread_mutex_lock(&run->lock);
	if (!run->error) {
		run->error = r;
		snprintf(run->error_msg, sizeof(run->error_msg), "%s", vf_last_error());
	}
	pthread_mutex_unlock(&run->lock);
}

static void *worker(void *arg)
{
	struct run *run = arg;
	const struct workers *w = run->w;
	struct buf scratch = {0};

	for (;;) {
		size_t k = __atomic_fetch_add(&run->next, 1, __ATOMIC_RELAXED);
		if (k >= w->n || __atomic_load_n(&run->error, __ATOMIC_RELAXED))
			break;
		uint64_t size = 0;
		int r = w->job(w->ctx, k, &scratch, &size);
		if (r < 0) {
			set_error(run, r);
			break;
		}
		uint64_t files = __atomic_add_fetch(&run->done_files, 1, __ATOMIC_RELAXED);
		uint64_t bytes = __atomic_add_fetch(&run->done_bytes, size, __ATOMIC_RELAXED);
		progress_update(&run->prog, files, w->n, bytes);
	}
	buf_free(&scratch);
	return NULL;
}

int workers_run(const struct workers *w)
{
	struct run run = {.w = w};
	pthread_t th[WORKERS_MAX - 1];
	unsigned nt = MAX(1u, MIN(w->threads, WORKERS_MAX));
	unsigned started = 0;

	pthread_mutex_init(&run.lock, NULL);
	progress_init(&run.prog, w->what, w->progress);
	for (unsigned t = 1; t < nt; t++)
		if (pthread_create(&th[started], NULL, worker, &run) == 0)
			started++;
	worker(&run);
	for (unsigned t = 0; t < started; t++)
		pthread_join(th[t], NULL);
	progress_done(&run.prog);
	pthread_mutex_destroy(&run.lock);
	if (run.error)
		return vf_error(-run.error, "%s", run.error_msg);
	return 0;
}

unsigned workers_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (unsigned)n : 1;
}
