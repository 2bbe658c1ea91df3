/* pool.h — a pool of worker threads that run numbered items of a job.
 *
 * The caller's thread works too; items are claimed one at a time in
 * increasing order, so small items keep the threads evenly loaded. The pool
 * lives across jobs: a cascade runs one job per decode step, and creating
 * threads each step cost more than the work itself. */
#ifndef AP_POOL_H
#define AP_POOL_H

#include "status.h"

typedef struct ap_pool ap_pool;

/* Runs item `item` of a job; returns a status (err filled on failure). */
typedef ap_status (*ap_pool_item_fn)(void *ctx, int item, ap_error *err);

/* n_threads: threads in all, the caller's included (0: one per core). */
ap_status ap_pool_create(int n_threads, ap_pool **out, ap_error *err);
void ap_pool_free(ap_pool *pool);
int ap_pool_threads(const ap_pool *pool);

/* Runs items 0..n_items-1 and returns when all are done. After a failure no
 * new item starts; the first failure's status and message are returned. */
ap_status ap_pool_run(ap_pool *pool, int n_items, ap_pool_item_fn fn, void *ctx, ap_error *err);

#endif
