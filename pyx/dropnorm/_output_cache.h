/* The output cache: a NumPy memory handler (NEP 49) for the large arrays
 * dropnorm's functions allocate as outputs, which keeps a few freed blocks
 * for the next call of the same size instead of giving them back to the
 * system.
 *
 * Why: a fresh block of more than 32 MiB is always new pages from the
 * kernel (glibc maps it anew each time), and the kernel zeroes every page
 * at its first touch, inside the call that writes the output: on a
 * (16, 256, 56, 56) float32 batch that costs about as much as the kernel
 * itself. A loop that calls the same layer again (training, inference,
 * the benchmark) frees one output and asks for another of the same size.
 *
 * What it holds: at most DN_CACHE_SLOTS blocks of at least DN_CACHE_MIN
 * bytes and at most `limit` bytes in all (dropnorm.set_output_cache_limit,
 * DROPNORM_OUTPUT_CACHE_MB); a block is taken back only for a request of
 * exactly its size. Smaller arrays go to malloc as NumPy's own handler
 * would (which also keeps its small-block cache for them).
 *
 * Slots change hands by compare-and-swap, without a lock: a thread that is
 * descheduled, or a fork() in the middle of an exchange, can lose a slot
 * but never blocks another thread or the child. Without GCC-style atomics
 * (MSVC) the handler passes every call to malloc and free. */
/* Included by _checks.pyx after NumPy's headers (PyDataMem_Handler). */
#ifndef DROPNORM_OUTPUT_CACHE_H
#define DROPNORM_OUTPUT_CACHE_H

#include <stdint.h>
#include <stdlib.h>
#if defined(__linux__)
#  include <sys/mman.h>
#endif

#define DN_CACHE_SLOTS 8
#define DN_CACHE_MIN ((size_t)1 << 20)

#if defined(__GNUC__)
#  define DN_CACHE_ATOMICS 1
#endif

enum { DN_SLOT_EMPTY = 0, DN_SLOT_BUSY = 1, DN_SLOT_FULL = 2 };

typedef struct dn_cache_slot {
    int state;
    void *ptr;
    size_t size;
} dn_cache_slot;

/* The one cache of the process: its limit and contents change only through
 * the atomic operations below. */
static dn_cache_slot dn_cache_slots[DN_CACHE_SLOTS];
static size_t dn_cache_limit = (size_t)256 << 20;
static size_t dn_cache_held;
static unsigned dn_cache_victim;

#if defined(DN_CACHE_ATOMICS)
static int dn_slot_claim(dn_cache_slot *s, int from)
{
    int expected = from;
    return __atomic_compare_exchange_n(&s->state, &expected, DN_SLOT_BUSY, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

static void dn_slot_release(dn_cache_slot *s, int to)
{
    __atomic_store_n(&s->state, to, __ATOMIC_RELEASE);
}
#endif

/* As NumPy's default handler: the kernel may back large arrays with huge
 * pages (fewer faults). */
static void dn_cache_hugepages(void *p, size_t size)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p != NULL && size >= ((size_t)1 << 22)) {
        const size_t offset = 4096u - (size_t)((uintptr_t)p % 4096u);
        (void)madvise((char *)p + offset, size - offset, MADV_HUGEPAGE);
    }
#else
    (void)p;
    (void)size;
#endif
}

static void *dn_cache_malloc(void *ctx, size_t size)
{
    void *p;
    (void)ctx;
#if defined(DN_CACHE_ATOMICS)
    if (size >= DN_CACHE_MIN)
        for (int i = 0; i < DN_CACHE_SLOTS; i++) {
            dn_cache_slot *s = &dn_cache_slots[i];
            if (__atomic_load_n(&s->state, __ATOMIC_RELAXED) != DN_SLOT_FULL) continue;
            if (!dn_slot_claim(s, DN_SLOT_FULL)) continue;
            if (s->size == size) {
                p = s->ptr;
                s->ptr = NULL;
                __atomic_sub_fetch(&dn_cache_held, size, __ATOMIC_RELAXED);
                dn_slot_release(s, DN_SLOT_EMPTY);
                return p;
            }
            dn_slot_release(s, DN_SLOT_FULL);
        }
#endif
    p = malloc(size > 0 ? size : 1);
    dn_cache_hugepages(p, size);
    return p;
}

static void *dn_cache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    return calloc(nelem, elsize);
}

static void *dn_cache_realloc(void *ctx, void *ptr, size_t new_size)
{
    (void)ctx;
    return realloc(ptr, new_size > 0 ? new_size : 1);
}

#if defined(DN_CACHE_ATOMICS)
/* held += add - drop, if that stays within the limit (drop: a block held) */
static int dn_cache_reserve(size_t add, size_t drop)
{
    size_t now = __atomic_load_n(&dn_cache_held, __ATOMIC_RELAXED);
    do {
        if (now + add - drop > __atomic_load_n(&dn_cache_limit, __ATOMIC_RELAXED)) return 0;
    } while (!__atomic_compare_exchange_n(&dn_cache_held, &now, now + add - drop, 0,
                                          __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return 1;
}
#endif

/* Keeps the block if the limit allows: in an empty slot, or in place of
 * another block (taken round robin), whose memory is then freed. */
static void dn_cache_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
#if defined(DN_CACHE_ATOMICS)
    if (ptr != NULL && size >= DN_CACHE_MIN) {
        dn_cache_slot *s;
        for (int i = 0; i < DN_CACHE_SLOTS; i++) {
            s = &dn_cache_slots[i];
            if (!dn_slot_claim(s, DN_SLOT_EMPTY)) continue;
            if (dn_cache_reserve(size, 0)) {
                s->ptr = ptr;
                s->size = size;
                dn_slot_release(s, DN_SLOT_FULL);
                return;
            }
            dn_slot_release(s, DN_SLOT_EMPTY);
            break;
        }
        s = &dn_cache_slots[__atomic_fetch_add(&dn_cache_victim, 1u, __ATOMIC_RELAXED)
                            % DN_CACHE_SLOTS];
        if (dn_slot_claim(s, DN_SLOT_FULL)) {
            if (dn_cache_reserve(size, s->size)) {
                void *old = s->ptr;
                s->ptr = ptr;
                s->size = size;
                dn_slot_release(s, DN_SLOT_FULL);
                free(old);
                return;
            }
            dn_slot_release(s, DN_SLOT_FULL);
        }
    }
#endif
    (void)size;
    free(ptr);
}

/* Frees every block held; returns the bytes freed. */
static size_t dn_cache_release_all(void)
{
    size_t freed = 0;
#if defined(DN_CACHE_ATOMICS)
    for (int i = 0; i < DN_CACHE_SLOTS; i++) {
        dn_cache_slot *s = &dn_cache_slots[i];
        if (!dn_slot_claim(s, DN_SLOT_FULL)) continue;
        free(s->ptr);
        freed += s->size;
        __atomic_sub_fetch(&dn_cache_held, s->size, __ATOMIC_RELAXED);
        s->ptr = NULL;
        dn_slot_release(s, DN_SLOT_EMPTY);
    }
#endif
    return freed;
}

/* Sets the limit (0: keep nothing) and frees what is held beyond it. */
static void dn_cache_set_limit(size_t limit)
{
#if defined(DN_CACHE_ATOMICS)
    __atomic_store_n(&dn_cache_limit, limit, __ATOMIC_RELAXED);
    if (__atomic_load_n(&dn_cache_held, __ATOMIC_RELAXED) > limit) dn_cache_release_all();
#else
    (void)limit;
#endif
}

static size_t dn_cache_get_limit(void)
{
#if defined(DN_CACHE_ATOMICS)
    return __atomic_load_n(&dn_cache_limit, __ATOMIC_RELAXED);
#else
    return 0;
#endif
}

static size_t dn_cache_get_held(void)
{
#if defined(DN_CACHE_ATOMICS)
    return __atomic_load_n(&dn_cache_held, __ATOMIC_RELAXED);
#else
    return 0;
#endif
}

static PyDataMem_Handler dn_cache_handler = {
    "dropnorm_output_cache",
    1,
    {NULL, dn_cache_malloc, dn_cache_calloc, dn_cache_realloc, dn_cache_free},
};

#endif
