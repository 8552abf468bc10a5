/* The team (csrc/src/parallel.c): every task of every phase runs exactly
 * once, a phase starts only after the previous one is done, worker indices
 * stay below the thread count, and a thread that stalls does not stall the
 * others: they finish its share, and repeated stalls make later calls run
 * on fewer threads for a while. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L /* nanosleep */
#endif
#include <stdlib.h>
#include <string.h>
#if !defined(_WIN32)
#  include <time.h>
#endif

#include "../../csrc/src/common.h"
#include "check.h"

#define MAX_TASKS 1000

/* The tasks run on the library's threads: the counters must be atomic even
 * where this file is compiled without OpenMP. */
#if defined(__GNUC__) || defined(__clang__)
#  define ADD(p) __atomic_fetch_add((p), 1, __ATOMIC_ACQ_REL)
#  define READ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define MAX_INTO(p, v)                                                              \
    do {                                                                              \
        int seen_ = READ(p);                                                          \
        while ((v) > seen_ &&                                                         \
               !__atomic_compare_exchange_n((p), &seen_, (v), 0, __ATOMIC_ACQ_REL,    \
                                            __ATOMIC_ACQUIRE)) {                      \
        }                                                                             \
    } while (0)
#  define FIRST(p) (__atomic_exchange_n((p), 1, __ATOMIC_ACQ_REL) == 0)
#else
#  include <windows.h>
#  define ADD(p) InterlockedIncrement((volatile LONG *)(p))
#  define READ(p) InterlockedCompareExchange((volatile LONG *)(p), 0, 0)
#  define MAX_INTO(p, v)                                                              \
    do {                                                                              \
        LONG seen_ = READ(p);                                                         \
        while ((v) > seen_ &&                                                         \
               InterlockedCompareExchange((volatile LONG *)(p), (v), seen_) != seen_) \
            seen_ = READ(p);                                                          \
    } while (0)
#  define FIRST(p) (InterlockedExchange((volatile LONG *)(p), 1) == 0)
#endif

typedef struct record {
    int phase;
    int64_t tasks[DN_MAX_PHASES];
    int runs[DN_MAX_PHASES][MAX_TASKS];   /* times each task ran */
    int done[DN_MAX_PHASES];              /* tasks finished per phase */
    int early;                            /* tasks started before the last phase was done */
    int bad_worker;
    int max_worker;
    int threads;
    int stall_worker; /* this worker sleeps in its first task (-1: none) */
    int stalled;
} record;

typedef struct phase_ctx {
    record *rec;
    int phase;
} phase_ctx;

static void sleep_ms(int ms)
{
#if !defined(_WIN32)
    const struct timespec t = {0, (long)ms * 1000000L};
    nanosleep(&t, NULL);
#else
    (void)ms;
#endif
}

static void run_task(const void *ctx, int64_t task, int worker)
{
    const phase_ctx *pc = (const phase_ctx *)ctx;
    record *r = pc->rec;
    if (pc->phase > 0 && READ(&r->done[pc->phase - 1]) != r->tasks[pc->phase - 1])
        ADD(&r->early);
    if (worker < 0 || worker >= r->threads) ADD(&r->bad_worker);
    MAX_INTO(&r->max_worker, worker);
    if (worker == r->stall_worker && FIRST(&r->stalled)) sleep_ms(20);
    ADD(&r->runs[pc->phase][task]);
    ADD(&r->done[pc->phase]);
}

/* Runs nphases phases of the given task counts; 1 if each ran once, in order. */
static int run_phases(int threads, const int64_t *tasks, int nphases, int stall_worker,
                      int *max_worker)
{
    record *r = (record *)calloc(1, sizeof *r);
    phase_ctx ctx[DN_MAX_PHASES];
    dn_phase phases[DN_MAX_PHASES];
    int ok = 1;
    r->threads = threads;
    r->stall_worker = stall_worker;
    for (int ph = 0; ph < nphases; ph++) {
        r->tasks[ph] = tasks[ph];
        ctx[ph].rec = r;
        ctx[ph].phase = ph;
        phases[ph].tasks = tasks[ph];
        phases[ph].run = run_task;
        phases[ph].ctx = &ctx[ph];
    }
    dn_parallel_phases(threads, phases, nphases);
    for (int ph = 0; ph < nphases; ph++)
        for (int64_t t = 0; t < tasks[ph]; t++) ok &= r->runs[ph][t] == 1;
    ok &= r->early == 0 && r->bad_worker == 0;
    *max_worker = r->max_worker;
    free(r);
    return ok;
}

int main(void)
{
    static const int threads[] = {1, 2, 3, 7, 40};
    static const int64_t counts[] = {0, 1, 2, 5, 33, 1000};
    const int ncounts = (int)(sizeof counts / sizeof counts[0]);
    int parallel_seen = 0;
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++)
        for (int a = 0; a < ncounts; a++)
            for (int nph = 1; nph <= DN_MAX_PHASES; nph++) {
                int64_t tasks[DN_MAX_PHASES];
                int most;
                for (int ph = 0; ph < nph; ph++) tasks[ph] = counts[(a + 2 * ph) % ncounts];
                CHECK(run_phases(threads[t], tasks, nph, -1, &most));
                CHECK(most < threads[t]);
                if (most > 0) parallel_seen = 1;
            }
    if (dn_openmp_enabled()) {
        /* the first calls of a process run as a team */
        CHECK(parallel_seen);
        /* a worker that stalls 20 ms in its first task: the others do the
         * rest; two such calls in a row make the next calls run alone */
        for (int wait = 0; wait < 300 && dn_parallel_backing_off(); wait++) sleep_ms(10);
        CHECK(!dn_parallel_backing_off());
        {
            const int64_t tasks[3] = {64, 3, 500};
            int most;
            CHECK(run_phases(2, tasks, 3, 1, &most));
            CHECK(run_phases(2, tasks, 3, 1, &most));
            CHECK(dn_parallel_backing_off());
            /* ... and while backing off, half the team does everything:
             * one thread of two, at most two of four (at most one once
             * the back-off has doubled) */
            CHECK(run_phases(2, tasks, 3, -1, &most));
            CHECK(most == 0);
            CHECK(run_phases(4, tasks, 3, -1, &most));
            CHECK(most <= 1);
        }
    } else {
        CHECK(!parallel_seen);
        CHECK(!dn_parallel_backing_off());
    }
    return check_report("test_team");
}
