/* The one place where kernels meet threads: a team runs phases of
 * independent tasks, each phase after the last one's tasks are all done.
 *
 * Why not `omp for schedule(static)` with its barriers: on a busy machine
 * one of the team's threads is often descheduled for a whole time slice
 * (several ms). A static share then waits for it, and so does every
 * barrier, while libgomp's waiters spin (about 3 ms) on the core the late
 * thread needs. Here
 *   - tasks are claimed one at a time: each thread starts on its own home
 *     range (the memory a static schedule would give it, so caches stay
 *     warm) and then takes what is left of the others', so a late thread's
 *     share is done by the threads that run;
 *   - a thread waits only for tasks that another thread is running, never
 *     for a thread that has not started, and after a short spin it sleeps
 *     (a futex on Linux, a yield elsewhere), which frees its core for the
 *     thread it waits for;
 *   - the team leaves together only after every thread has checked in, so
 *     libgomp's own join does not spin either;
 *   - OpenMP's join still waits for a thread that was not running when the
 *     team was formed (libgomp's idle threads spin ~3 ms after each region,
 *     so on a busy machine they are the ones queued behind other work).
 *     So a call that waited on a straggler for more than DN_STRAGGLE_NS and
 *     a quarter of its time, soon after another such call, makes the next
 *     calls run on half the threads for a while (the back-off below,
 *     doubled while stragglers keep coming, up to DN_BACKOFF_MAX_NS, and
 *     the team halved again with each doubling, down to one). A slow fork
 *     of the process's new threads is their start, not a straggler
 *     (dn_fork_started_threads). The hint is the one piece of process-wide
 *     mutable state: it decides speed only, never a result, which is the
 *     same for every thread count.
 * What each task computes depends only on its index, never on the thread
 * that runs it, so the bits do not depend on the team or the schedule. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#  define _GNU_SOURCE /* syscall() under -std=c99 */
#endif
#include "common.h"

#if defined(__linux__)
#  include <linux/futex.h>
#  include <sys/syscall.h>
#  include <time.h>
#  include <unistd.h>
#elif defined(_WIN32)
#  include <windows.h>
#elif defined(__unix__) || defined(__APPLE__)
#  include <sched.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define DN_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define DN_FETCH_ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#  define DN_FETCH_ADD32(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#  define DN_LOAD32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#  define DN_FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#elif defined(_MSC_VER)
#  include <intrin.h>
#  define DN_LOAD(p) (*(volatile int64_t *)(p))
#  define DN_FETCH_ADD(p, v) _InterlockedExchangeAdd64((volatile int64_t *)(p), (v))
#  define DN_FETCH_ADD32(p, v) _InterlockedExchangeAdd((volatile long *)(p), (v))
#  define DN_LOAD32(p) (*(volatile int32_t *)(p))
#  define DN_FENCE() MemoryBarrier()
#elif !defined(_OPENMP)
/* one thread: plain memory is enough */
#  define DN_LOAD(p) (*(p))
#  define DN_FETCH_ADD(p, v) ((*(p) += (v)) - (v))
#  define DN_FETCH_ADD32(p, v) DN_FETCH_ADD(p, v)
#  define DN_LOAD32(p) (*(p))
#  define DN_FENCE() ((void)0)
#else
#  error "dropnorm needs GCC/Clang __atomic builtins or MSVC intrinsics with OpenMP"
#endif

/* Home ranges a phase's tasks are split into (threads beyond share them). */
#define DN_MAX_RANGES 32
/* Polls of a counter before a waiting thread goes to sleep: long enough
 * for a task a running thread is finishing (tens of microseconds), short
 * against a time slice. */
#define DN_SPIN_POLLS 20000
/* A sleeping waiter looks again at least this often (ns), in case a wake-up
 * was missed. */
#define DN_SLEEP_NS 200000

/* A wait this long (ns) on another thread is a straggler... */
#define DN_STRAGGLE_NS 1000000
/* ...and makes the next calls run on half the threads for this long at
 * first (dn_backoff_threads), */
#define DN_BACKOFF_MIN_NS 20000000
/* doubling while stragglers keep coming, up to this. */
#define DN_BACKOFF_MAX_NS 1000000000
/* The first few teams of a process start its threads: their forks are
 * not stragglers (three of 4-8 ms each were seen on an idle machine). */
#define DN_NEW_TEAMS 4

typedef struct dn_cursor {
    int64_t next, end; /* the range's next unclaimed task, its end */
    char pad[DN_CACHE_LINE - 2 * sizeof(int64_t)];
} dn_cursor;

typedef struct dn_counter {
    int64_t value;
    char pad[DN_CACHE_LINE - sizeof(int64_t)];
} dn_counter;

typedef struct dn_team {
    const dn_phase *phases;
    int nphases, ranges;
    dn_cursor cursor[DN_MAX_PHASES][DN_MAX_RANGES];
    dn_counter done[DN_MAX_PHASES]; /* tasks finished in each phase */
    dn_counter checked_in;          /* threads that have finished every phase */
    int32_t wake;     /* bumped when a wait may be over (a futex word) */
    int32_t sleepers; /* threads in dn_sleep or about to be */
    int32_t straggled; /* a wait on another thread was long (see DN_STRAGGLE_NS) */
    int32_t late_fork; /* OpenMP's fork took that long */
    int64_t start_ns;  /* when the team was formed */
    int64_t joined_ns; /* when the first thread saw every thread checked in */
} dn_team;

/* ---- The back-off hint (process-wide; speed only). ---------------------- */
#if defined(_OPENMP)
static int64_t dn_backoff_until_ns; /* calls before this run on fewer threads */
static int64_t dn_backoff_ns;     /* the next back-off */
static int64_t dn_straggler_ns;   /* when the last straggler came */
static int64_t dn_teams_formed;   /* teams of more than one thread so far */

static int64_t dn_now_ns(void) { return (int64_t)(omp_get_wtime() * 1e9); }

#  if defined(__GNUC__) || defined(__clang__)
#    define DN_LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#    define DN_STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#  else
#    define DN_LOAD_RELAXED(p) (*(volatile int64_t *)(p))
#    define DN_STORE_RELAXED(p, v) (*(volatile int64_t *)(p) = (v))
#  endif

int dn_parallel_backing_off(void) { return dn_now_ns() < DN_LOAD_RELAXED(&dn_backoff_until_ns); }

/* Whether a slow OpenMP fork was the start of the process's threads
 * rather than a load: one of its first DN_NEW_TEAMS teams. On a virtual
 * machine starting them wakes its idle CPUs, which held each of those
 * forks up 4-8 ms on an otherwise quiet machine here. (A fork after the
 * threads had slept was exempted too, once; but a load's stalls then went
 * unseen wherever other work came between the calls, and the 64x64x56x56
 * dropout's p90 under load rose from 1.0x to 1.4-1.6x one thread's.) */
static int dn_fork_started_threads(void)
{
    return DN_LOAD_RELAXED(&dn_teams_formed) <= DN_NEW_TEAMS;
}

/* The team while backing off: half the threads at the first back-off, a
 * quarter once it has doubled, and so on down to one. A load that keeps
 * stragglers coming soon reaches one thread; an occasional stall of a
 * virtual machine's CPU, which starts the back-off again from its least,
 * halves a large team instead of leaving it one thread. */
static int dn_backoff_threads(int threads)
{
    int64_t backoff = DN_LOAD_RELAXED(&dn_backoff_ns);
    int shift = 1;
    for (; backoff > DN_BACKOFF_MIN_NS && shift < 30; backoff /= 2) shift++;
    return (threads >> shift) > 1 ? threads >> shift : 1;
}

/* A straggler counts when another came less than DN_BACKOFF_MAX_NS before
 * it (the first region of a process waits for its threads to be created);
 * then the next calls run on fewer threads for the back-off, which doubles
 * with each straggler that comes soon after the last back-off, and starts
 * again from DN_BACKOFF_MIN_NS otherwise. Races between calls only blur the
 * hint. */
static void dn_learn_straggler(int64_t now)
{
    const int64_t last = DN_LOAD_RELAXED(&dn_straggler_ns);
    int64_t backoff = DN_LOAD_RELAXED(&dn_backoff_ns);
    DN_STORE_RELAXED(&dn_straggler_ns, now);
    if (last == 0 || now - last > DN_BACKOFF_MAX_NS) {
        DN_STORE_RELAXED(&dn_backoff_ns, (int64_t)0);
        return;
    }
    /* a load keeps stragglers coming as soon as a back-off ends; a virtual
     * machine's occasional stalls come long after it: those start again */
    if (now - last > 4 * backoff + DN_BACKOFF_MIN_NS) backoff = 0;
    backoff = backoff < DN_BACKOFF_MIN_NS ? DN_BACKOFF_MIN_NS
                                          : dn_min64(2 * backoff, DN_BACKOFF_MAX_NS);
    DN_STORE_RELAXED(&dn_backoff_ns, backoff);
    DN_STORE_RELAXED(&dn_backoff_until_ns, now + backoff);
}
#endif

static void dn_cpu_relax(void)
{
#if defined(DN_STREAMING)
    _mm_pause();
#endif
}

/* Sleeps until team->wake may have changed from `seen` (or a while). */
static void dn_sleep(dn_team *team, int32_t seen)
{
#if defined(__linux__)
    const struct timespec limit = {0, DN_SLEEP_NS};
    syscall(SYS_futex, &team->wake, FUTEX_WAIT_PRIVATE, seen, &limit, NULL, 0);
#elif defined(_WIN32)
    (void)team;
    (void)seen;
    SwitchToThread();
#elif defined(__unix__) || defined(__APPLE__)
    (void)team;
    (void)seen;
    sched_yield();
#else
    (void)team;
    (void)seen;
#endif
}

/* Wakes the sleepers after a counter reached what they wait for. */
static void dn_notify(dn_team *team)
{
    DN_FETCH_ADD32(&team->wake, 1);
    DN_FENCE();
    if (DN_LOAD32(&team->sleepers) > 0) {
#if defined(__linux__)
        syscall(SYS_futex, &team->wake, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#endif
    }
}

/* Returns when *counter >= target. */
static void dn_wait(dn_team *team, const int64_t *counter, int64_t target)
{
    for (int i = 0; i < DN_SPIN_POLLS; i++) {
        if (DN_LOAD(counter) >= target) return;
        dn_cpu_relax();
    }
    {
#if defined(_OPENMP)
        const int64_t from = dn_now_ns();
#endif
        while (DN_LOAD(counter) < target) {
            int32_t seen;
            DN_FETCH_ADD32(&team->sleepers, 1);
            seen = DN_LOAD32(&team->wake);
            DN_FENCE();
            if (DN_LOAD(counter) < target) dn_sleep(team, seen);
            DN_FETCH_ADD32(&team->sleepers, -1);
        }
#if defined(_OPENMP)
        {
            const int64_t to = dn_now_ns(), waited = to - from;
            if (waited > DN_STRAGGLE_NS && 4 * waited > to - team->start_ns)
                DN_FETCH_ADD32(&team->straggled, 1);
        }
#endif
    }
}

/* Runs what is left of phase ph's tasks, starting with range `home`. */
static void dn_run_phase(dn_team *team, int ph, int home, int worker)
{
    const dn_phase *phase = &team->phases[ph];
    for (int k = 0; k < team->ranges; k++) {
        dn_cursor *cur = &team->cursor[ph][(home + k) % team->ranges];
        while (DN_LOAD(&cur->next) < cur->end) {
            const int64_t task = DN_FETCH_ADD(&cur->next, 1);
            if (task >= cur->end) break;
            phase->run(phase->ctx, task, worker);
            if (DN_FETCH_ADD(&team->done[ph].value, 1) + 1 == phase->tasks) dn_notify(team);
        }
    }
}

static void dn_team_member(dn_team *team, int worker, int size)
{
#if defined(_OPENMP)
    /* libgomp's fork itself waits for its idle threads to be parked */
    if (worker == 0 && size > 1 && dn_now_ns() - team->start_ns > DN_STRAGGLE_NS)
        team->late_fork = 1;
#endif
    for (int ph = 0; ph < team->nphases; ph++) {
        if (ph > 0) dn_wait(team, &team->done[ph - 1].value, team->phases[ph - 1].tasks);
        dn_run_phase(team, ph, worker % team->ranges, worker);
    }
    if (size > 1) {
        if (DN_FETCH_ADD(&team->checked_in.value, 1) + 1 == size) dn_notify(team);
        if (worker == 0) {
            dn_wait(team, &team->checked_in.value, size);
#if defined(_OPENMP)
            team->joined_ns = dn_now_ns();
#endif
        }
    }
}

void dn_parallel_phases(int threads, const dn_phase *phases, int nphases)
{
    dn_team team;
    int64_t most = 0;
    if (threads < 1) threads = 1;
#if defined(_OPENMP)
    if (threads > 1 && dn_parallel_backing_off()) threads = dn_backoff_threads(threads);
#endif
    for (int ph = 0; ph < nphases; ph++) most = dn_max64(most, phases[ph].tasks);
    if (threads > most) threads = (int)dn_max64(1, most);
    team.phases = phases;
    team.nphases = nphases;
    team.ranges = threads < DN_MAX_RANGES ? threads : DN_MAX_RANGES;
    for (int ph = 0; ph < nphases; ph++) {
        for (int r = 0; r < team.ranges; r++)
            dn_split(phases[ph].tasks, team.ranges, r, &team.cursor[ph][r].next,
                     &team.cursor[ph][r].end);
        team.done[ph].value = 0;
    }
    team.checked_in.value = 0;
    team.wake = 0;
    team.sleepers = 0;
    team.straggled = 0;
    team.late_fork = 0;
    team.start_ns = 0;
    team.joined_ns = 0;
#if defined(_OPENMP)
    if (threads > 1) {
        int64_t left_ns;
        team.start_ns = dn_now_ns();
        if (DN_LOAD_RELAXED(&dn_teams_formed) <= DN_NEW_TEAMS)
            DN_STORE_RELAXED(&dn_teams_formed, DN_LOAD_RELAXED(&dn_teams_formed) + 1);
        DN_OMP(parallel num_threads(threads))
        dn_team_member(&team, omp_get_thread_num(), omp_get_num_threads());
        /* a straggler held up a wait (team.straggled) or the fork, or
         * OpenMP's join waited for one to leave; a slow fork of the
         * process's new threads is their start, not a load */
        left_ns = dn_now_ns();
        if (team.straggled > 0 || left_ns - team.joined_ns > DN_STRAGGLE_NS
            || (team.late_fork && !dn_fork_started_threads()))
            dn_learn_straggler(left_ns);
        return;
    }
#endif
    dn_team_member(&team, 0, 1);
}

#if !defined(_OPENMP)
int dn_parallel_backing_off(void) { return 0; }
#endif

void dn_parallel_tasks(int threads, int64_t tasks, dn_task_fn run, const void *ctx)
{
    const dn_phase phase = {tasks, run, ctx};
    dn_parallel_phases(threads, &phase, 1);
}
