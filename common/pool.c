/* pool.c — worker threads for numbered items (pool.h). */
#include "pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    ap_pool_item_fn fn;
    void *ctx;
    int n_items, next;
    ap_status st;
    ap_error err;
} pool_job;

struct ap_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake, all_done;
    long generation; /* bumped to start a job */
    int quit, n_started, n_done;
    pool_job *job;
    pthread_t *threads;
};

/* Claims and runs items of the job until none is left or one failed. */
static void work(ap_pool *p, pool_job *job)
{
    for (;;) {
        pthread_mutex_lock(&p->lock);
        const int item = job->st ? job->n_items : job->next++;
        pthread_mutex_unlock(&p->lock);
        if (item >= job->n_items) return;
        ap_error e;
        ap_status st = job->fn(job->ctx, item, &e);
        if (st) {
            pthread_mutex_lock(&p->lock);
            if (!job->st) {
                job->st = st;
                job->err = e;
            }
            pthread_mutex_unlock(&p->lock);
            return;
        }
    }
}

static void *worker(void *arg)
{
    ap_pool *p = arg;
    long seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->generation == seen && !p->quit) pthread_cond_wait(&p->wake, &p->lock);
        if (p->quit) break;
        seen = p->generation;
        pool_job *job = p->job;
        pthread_mutex_unlock(&p->lock);
        work(p, job);
        pthread_mutex_lock(&p->lock);
        if (++p->n_done == p->n_started) pthread_cond_signal(&p->all_done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

ap_status ap_pool_create(int n_threads, ap_pool **out, ap_error *err)
{
    *out = NULL;
    if (n_threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cores < 1 ? 1 : (int)cores;
    }
    ap_pool *p = calloc(1, sizeof *p);
    if (p) p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p || !p->threads) {
        free(p);
        return ap_error_set(err, AP_ERR_RUNTIME, "out of memory for %d worker threads", n_threads);
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->all_done, NULL);
    /* a thread that cannot start leaves the work to the others */
    for (int i = 1; i < n_threads; i++)
        if (pthread_create(&p->threads[p->n_started], NULL, worker, p) == 0) p->n_started++;
    *out = p;
    return AP_OK;
}

int ap_pool_threads(const ap_pool *p) { return p->n_started + 1; }

ap_status ap_pool_run(ap_pool *p, int n_items, ap_pool_item_fn fn, void *ctx, ap_error *err)
{
    pool_job job = {fn, ctx, n_items, 0, AP_OK, {{0}}};
    pthread_mutex_lock(&p->lock);
    p->job = &job;
    p->n_done = 0;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    work(p, &job);
    pthread_mutex_lock(&p->lock);
    while (p->n_done < p->n_started) pthread_cond_wait(&p->all_done, &p->lock);
    pthread_mutex_unlock(&p->lock);
    if (job.st && err) *err = job.err;
    return job.st;
}

void ap_pool_free(ap_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->all_done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p);
}
