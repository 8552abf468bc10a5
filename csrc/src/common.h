/* Internal helpers shared by every kernel: argument checks, the threading
 * switch and the blocking plan. Not installed. */
#ifndef DROPNORM_COMMON_H
#define DROPNORM_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#  include <emmintrin.h>
#  define DN_STREAMING 1
#  if defined(__AVX__)
#    include <immintrin.h>
#  endif
#endif

#include "dropnorm/dropnorm.h"

#ifdef _OPENMP
#  include <omp.h>
#  if defined(_MSC_VER) && !defined(__clang__)
     /* MSVC's C compiler takes _Pragma only with /Zc:preprocessor */
#    define DN_OMP(directive) __pragma(omp directive)
#  else
#    define DN_STRINGIFY(x) #x
#    define DN_OMP(directive) _Pragma(DN_STRINGIFY(omp directive))
#  endif
#else
#  define DN_OMP(directive)
#endif

/* An elementwise loop whose iteration i reads only index i of its inputs
 * and writes index i of its output: it has no loop-carried dependence even
 * when the output is an input (in place), so the compiler may vectorise it
 * without restrict, which would make in-place calls undefined. */
#if defined(__clang__)
#  define DN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#  define DN_IVDEP _Pragma("GCC ivdep")
#else
#  define DN_IVDEP
#endif

/* ---- Blocking and threading: every decision lives here. -----------------
 *
 * Reductions (batch-norm statistics, gradient sums) are split into at most
 * DN_MAX_GROUPS groups per channel whose bounds depend only on the shape.
 * Each group is reduced by one thread, in order, and groups are combined in
 * group order, so results are bitwise identical for any thread count. */

/* Elements in one two-pass statistics chunk: small enough to be re-read from
 * L1/L2 for the squared deviations, large enough to amortise the merge. */
#define DN_CHUNK_ELEMS 4096
/* Channels last: values summed per accumulator in T within a chunk. */
#define DN_CHUNK_ROWS 256
/* Channels last with few channels: rows are taken DN_WIDE / c at a time
 * ("wide rows"), so that inner loops run over about DN_WIDE values. */
#define DN_WIDE 256
/* Channels last with many channels: a reduction task is a block of the
 * channels, whose part of each row is one 4 KiB page of the storage type:
 * the per-channel accumulators stay in L1, and the rows' pieces are whole
 * pages, which the hardware prefetchers follow (they stop at page
 * boundaries: with half-page pieces, 512 float32 channels, the reductions
 * of a (16, 1024, 14, 14) batch ran at half speed). */
#define DN_ROW_TILE_BYTES 4096
/* ... but when the rows make few groups, blocks of at least DN_MIN_CBLOCK
 * channels, small enough for DN_MIN_TASKS_PER_THREAD tasks per thread (a
 * (256, 1024) batch is one group: one page of channels was one task).
 * Blocks start at multiples of 8 channels (of 16 here), so that a fused
 * backward's mask bytes each have one writer (batchnorm_impl.h). */
#define DN_MIN_CBLOCK 64
#define DN_MIN_TASKS_PER_THREAD 2
/* ... and a chunk of rows (summed in T) is sized as for blocks of this many
 * channels, whatever the type (the bits of the sums do not depend on the
 * tile). */
#define DN_CHUNK_CHANNELS 512
/* Elements one reduction group aims at. */
#define DN_GROUP_ELEMS 32768
/* Upper bound on the groups of one channel (bounds the workspace). */
#define DN_MAX_GROUPS 64
/* Channels first: with at least this many images, a group is whole images
 * (splitting rows makes short runs); with fewer, rows are split. */
#define DN_WHOLE_IMAGE_GROUPS 16
/* Channels first, statistics over rows shorter than this: a reduction task
 * is a block of channels over a group's images, each channel's rows taken
 * together (a row per piece costs more in horizontal sums and merges than
 * in adds)... */
#define DN_SHORT_ROW 256
/* ...and the same for gradient sums (two strided streams per channel
 * measured slower than the per-piece sums from 14x14 rows on). */
#define DN_SHORT_GRAD_ROW 128
/* Channels finished together (their group merges vectorise across them). */
#define DN_FINISH_CHANNELS 256
/* Bytes of a cache line: per-thread scratch is a whole number of them. */
#define DN_CACHE_LINE 64
/* Channels-last sums take two rows at a time in tensors the caches hold:
 * rows of any length in tensors of at most DN_PAIR_SHORT_MAX_BYTES (3-14%
 * faster at 1.6-6.5 MB, channels 3 to 1000), and in larger ones (up to
 * DN_STREAM_MIN_BYTES) task rows of DN_PAIR_MIN_COLS positions or more:
 * shorter rows there were 8% slower at 9.4 MB and 30-40% at 12.8 MB
 * (16x64x48x48, 16x64x56x56). */
#ifndef DN_PAIR_MIN_COLS
#  define DN_PAIR_MIN_COLS 1024
#endif
#ifndef DN_PAIR_SHORT_MAX_BYTES
#  define DN_PAIR_SHORT_MAX_BYTES ((int64_t)8 << 20)
#endif
/* The channels-last backward's elementwise pass over wide rows of at
 * least this many positions, in tensors the caches hold, takes two rows
 * per load of the four per-position terms (which then no longer sit in L1
 * beside the rows; at 1024 positions they do, and two rows were slower). */
#ifndef DN_PAIR_MIN_TERMS
#  define DN_PAIR_MIN_TERMS 2048
#endif
/* The same for the training pass, which streams one tensor fewer through
 * L1: two rows measured no faster at 2048 positions, 15% faster at 4096. */
#ifndef DN_PAIR_MIN_TRAIN_TERMS
#  define DN_PAIR_MIN_TRAIN_TERMS 4096
#endif
/* Elements of one elementwise block handed to a thread. */
#define DN_APPLY_BLOCK 16384
/* Below this many elements per thread, extra threads cost more than they save. */
#define DN_MIN_ELEMS_PER_THREAD 32768

/* Outputs of at least this many bytes are written with streaming
 * (non-temporal) stores: they would not stay in the caches anyway. Tensors
 * this large also take the fused backward's channels-last tiles
 * (batchnorm_impl.h). */
#ifndef DN_STREAM_MIN_BYTES
#  define DN_STREAM_MIN_BYTES ((int64_t)16 << 20)
#endif
/* Elements computed into an L1 buffer before they are streamed out. */
#define DN_STREAM_TILE 1024
/* Channels last, the fused backward: the gradient of about this many
 * values (whole wide rows) is made in an L1 buffer and summed from there,
 * where a task's row is at most DN_GATED_ROW_BYTES of T. */
#define DN_GRAD_TILE_ELEMS 512
#define DN_GATED_ROW_BYTES 2048
/* the span of addresses whose low bits a load and an earlier store are
 * compared by (4K aliasing) */
#define DN_ALIAS_BYTES 4096

static inline int64_t dn_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t dn_max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t dn_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Threads for a kernel over `elems` elements: enough to pay for themselves,
 * never more than OpenMP allows. */
static inline int dn_threads_for(int64_t elems)
{
#ifdef _OPENMP
    /* OpenMP's count, or 1 in a child of fork() (core.c) */
    int64_t limit = dn_get_max_threads();
    int64_t want = elems / DN_MIN_ELEMS_PER_THREAD;
    if (want < 1) return 1;
    return (int)(want < limit ? want : limit);
#else
    (void)elems;
    return 1;
#endif
}

/* A hot loop the compiler must inline into its callers: GCC's -O3 heuristics
 * stopped inlining the backward's row sums when their caller grew (a clone
 * with constants propagated ran the NCHW backward 1.2-1.5x slower). */
#if defined(__GNUC__)
#  define DN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#  define DN_ALWAYS_INLINE inline
#endif

/* ---- The team (parallel.c): phases of independent tasks. --------------
 * run(ctx, task, worker) computes task `task`; its result must not depend
 * on `worker` (0 .. threads-1, the index of per-thread scratch). Every task
 * of a phase finishes before any task of the next one starts. At most
 * three: a batch-norm pass's reduction, finish and elementwise pass. */
#define DN_MAX_PHASES 3

typedef void (*dn_task_fn)(const void *ctx, int64_t task, int worker);

typedef struct dn_phase {
    int64_t tasks;
    dn_task_fn run;
    const void *ctx;
} dn_phase;

void dn_parallel_phases(int threads, const dn_phase *phases, int nphases);
void dn_parallel_tasks(int threads, int64_t tasks, dn_task_fn run, const void *ctx);
/* 1 while recent calls met stragglers and new ones run on fewer threads. */
int dn_parallel_backing_off(void);

/* ---- Streaming stores (x86-64: SSE2, always there; elsewhere memcpy). ---- */

static inline int dn_stream_worthwhile(int64_t bytes)
{
#if defined(DN_STREAMING)
    return bytes >= DN_STREAM_MIN_BYTES;
#else
    (void)bytes;
    return 0;
#endif
}

/* Whether channels-last sums over task rows of `cols` positions take two
 * rows at a time in a tensor of `bytes` (the same additions in the same
 * order as one row at a time, so the same bits). */
static inline int dn_pair_rows(int64_t cols, int64_t bytes)
{
    return bytes < DN_STREAM_MIN_BYTES
           && (cols >= DN_PAIR_MIN_COLS || bytes <= DN_PAIR_SHORT_MAX_BYTES);
}

/* Copies n bytes from an L1-resident buffer to dst, with non-temporal stores
 * for the 16-byte-aligned part. Call dn_stream_fence() before the data is
 * read by another thread. */
static inline void dn_stream_store(void *dst, const void *src, size_t n)
{
#if defined(DN_STREAMING)
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (16u - ((uintptr_t)d & 15u)) & 15u;
    if (head > n) head = n;
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
#  if defined(__AVX__)
    /* the AVX2 build: 32 bytes a store, as fast as streaming from registers */
    if (n >= 32 && ((uintptr_t)d & 31u) != 0) {
        _mm_stream_si128((__m128i *)(void *)d, _mm_loadu_si128((const __m128i *)(const void *)s));
        d += 16;
        s += 16;
        n -= 16;
    }
    for (; n >= 32; n -= 32, d += 32, s += 32)
        _mm256_stream_si256((__m256i *)(void *)d,
                            _mm256_loadu_si256((const __m256i *)(const void *)s));
#  endif
    for (; n >= 16; n -= 16, d += 16, s += 16)
        _mm_stream_si128((__m128i *)(void *)d, _mm_loadu_si128((const __m128i *)(const void *)s));
    memcpy(d, s, n);
#else
    memcpy(dst, src, n);
#endif
}

static inline void dn_stream_fence(void)
{
#if defined(DN_STREAMING)
    _mm_sfence();
#endif
}

/* ---- Workspace sizes: every product and sum checked. --------------------
 * Extents that pass dn_make_plan can still make a workspace of more than
 * SIZE_MAX bytes (c values per group); such a size must be an error, not a
 * wrapped-around small allocation. */
typedef struct dn_bytes {
    size_t total;
    int overflow; /* the true total does not fit size_t */
} dn_bytes;

/* b += count*unit bytes */
static inline void dn_bytes_add(dn_bytes *b, int64_t count, size_t unit)
{
    if (count < 0 || (uint64_t)count > SIZE_MAX / unit
        || (size_t)count * unit > SIZE_MAX - b->total)
        b->overflow = 1;
    else
        b->total += (size_t)count * unit;
}

/* one's bytes (or count*unit) rounded up to whole cache lines (per-thread scratch, so
 * that every thread's part keeps the alignment of the first); notes an
 * overflow in b. */
static inline size_t dn_cache_lines_of(dn_bytes *b, dn_bytes one)
{
    dn_bytes_add(&one, 1, DN_CACHE_LINE - 1);
    if (one.overflow) {
        b->overflow = 1;
        return 0;
    }
    return one.total / DN_CACHE_LINE * DN_CACHE_LINE;
}

static inline size_t dn_cache_lines_for(dn_bytes *b, int64_t count, size_t unit)
{
    dn_bytes one = {0, 0};
    dn_bytes_add(&one, count, unit);
    return dn_cache_lines_of(b, one);
}

/* The workspace of b bytes, or NULL with *st set: DN_ERR_SIZE_OVERFLOW when
 * the size does not fit size_t, DN_ERR_OUT_OF_MEMORY when malloc fails. */
static inline void *dn_workspace(const dn_bytes *b, dn_status *st)
{
    void *w = b->overflow ? NULL : malloc(b->total > 0 ? b->total : 1);
    if (w == NULL) *st = b->overflow ? DN_ERR_SIZE_OVERFLOW : DN_ERR_OUT_OF_MEMORY;
    return w;
}

/* The AVX-512 elementwise passes take a thread's range when it has this
 * many values or more (in shorter ones the masked first and last lines
 * cost more than they gain). */
#define DN_MIN_V64_RUN 64

/* The place in buf (DN_CACHE_LINE more than it needs) at the same place in
 * its line as `like`, rounded down to a multiple of align (the terms'
 * size): terms read beside a tensor's values then line up with them, and
 * the 64-byte vectors of the AVX-512 elementwise passes load both aligned. */
static inline void *dn_line_like(void *buf, const void *like, size_t align)
{
    const uintptr_t off = ((uintptr_t)like - (uintptr_t)buf) % DN_CACHE_LINE;
    return (char *)buf + (off - off % align);
}

/* The first line boundary at or after p (the per-thread scratch after the
 * terms: its sums' loads were slower where the terms' place moved it off
 * its usual alignment) */
static inline void *dn_line_up(void *p)
{
    return (char *)p + (DN_CACHE_LINE - (uintptr_t)p % DN_CACHE_LINE) % DN_CACHE_LINE;
}

/* Range g of `parts` near-equal parts of [0, total). */
static inline void dn_split(int64_t total, int64_t parts, int64_t g,
                            int64_t *lo, int64_t *hi)
{
    int64_t base = total / parts, rem = total % parts;
    *lo = g * base + dn_min64(g, rem);
    *hi = *lo + base + (g < rem ? 1 : 0);
}

/* The canonical view of an (n, c, s) tensor. When c == 1 or s == 1 the two
 * layouts are the same memory; the one whose contiguous runs are longest is
 * chosen, so (N, C) input runs as channels-last and (N, 1, L) as
 * channels-first. */
typedef struct dn_plan {
    int64_t n, c, s;
    int64_t m;        /* values per channel: n*s */
    int64_t total;    /* n*c*s */
    int nsc;          /* 1: channels last (rows of c), 0: channels first */
    int64_t groups;   /* reduction groups: ranges of each channel's n*s values */
    int64_t row_parts; /* NCS: 0 if groups are whole images, else parts per image */
    int64_t chunk;    /* NCS: elements per stats chunk; NSC: rows per chunk */
    int64_t wide;     /* NSC: values of a wide row (a multiple of c); NCS: c */
    int short_rows;   /* NCS with s < DN_SHORT_ROW: rows of a channel reduced together */
    int64_t cblock;   /* channels of one reduction task (c unless short_rows or rows >= DN_WIDE) */
    int64_t cblocks;  /* reduction tasks per group: ceil(c / cblock) */
    int threads;
} dn_plan;

/* Validates the extents and layout and fills the plan. */
static inline dn_status dn_make_plan(int64_t n, int64_t c, int64_t s,
                                     dn_layout layout, size_t elem_size,
                                     dn_plan *p)
{
    if (layout != DN_LAYOUT_NCS && layout != DN_LAYOUT_NSC) return DN_ERR_BAD_LAYOUT;
    if (n <= 0 || c <= 0 || s <= 0) return DN_ERR_BAD_SHAPE;
    /* n*c*s*elem_size must fit in a ptrdiff_t (and so in int64_t). */
    {
        const int64_t limit = (int64_t)(PTRDIFF_MAX / (ptrdiff_t)elem_size);
        if (n > limit / c || n * c > limit / s) return DN_ERR_SIZE_OVERFLOW;
    }
    p->n = n;
    p->c = c;
    p->s = s;
    p->m = n * s;
    p->total = n * c * s;
    p->threads = dn_threads_for(p->total);
    if (c == 1) p->nsc = 0;
    else if (s == 1) p->nsc = 1;
    else p->nsc = (layout == DN_LAYOUT_NSC);
    /* groups split each channel's m values (rows for NSC); a group is
     * reduced in memory order over all channels */
    p->groups = dn_max64(1, dn_min64(dn_min64(dn_ceil_div(p->total, DN_GROUP_ELEMS),
                                              DN_MAX_GROUPS), p->m));
    p->row_parts = 0;
    p->short_rows = 0;
    p->cblock = c;
    p->cblocks = 1;
    if (!p->nsc && p->groups > n) {
        if (n >= DN_WHOLE_IMAGE_GROUPS) {
            /* NCS: whole images, so that runs stay whole rows */
            p->groups = n;
        } else {
            /* NCS with few images: each image's rows split into row_parts */
            p->row_parts = dn_min64(dn_ceil_div(p->groups, n), s);
            p->groups = n * p->row_parts;
        }
    }
    if (p->nsc) {
        /* rows per chunk: whole wide rows, at most DN_CHUNK_ROWS of them
         * (each position sums that many values in T) */
        const int64_t per_wide = dn_max64(1, DN_WIDE / c);
        p->wide = c * per_wide;
        p->chunk = per_wide * dn_max64(1, dn_min64(DN_CHUNK_ROWS, DN_GROUP_ELEMS / p->wide));
        if (per_wide == 1) {
            /* long rows: a task is a page of channels of a group, so that
             * groups can be long (a chunk of DN_CHUNK_ROWS rows at least;
             * each group costs c partial sums in the workspace) */
            const int64_t tasks = dn_ceil_div(DN_MIN_TASKS_PER_THREAD * (int64_t)p->threads,
                                              p->groups);
            p->groups = dn_min64(p->groups, dn_ceil_div(p->m, DN_CHUNK_ROWS));
            p->cblock = dn_min64(c, (int64_t)(DN_ROW_TILE_BYTES / elem_size));
            if (dn_ceil_div(c, p->cblock) < tasks)
                /* few rows, so few groups: smaller blocks keep every thread busy */
                p->cblock = dn_max64(DN_MIN_CBLOCK, dn_ceil_div(dn_ceil_div(c, tasks), 16) * 16);
            p->chunk = dn_max64(1, dn_min64(DN_CHUNK_ROWS,
                                            DN_GROUP_ELEMS / dn_min64(c, DN_CHUNK_CHANNELS)));
        }
    } else {
        p->wide = c;
        p->chunk = DN_CHUNK_ELEMS;
    }
    p->cblocks = dn_ceil_div(c, p->cblock);
    return DN_OK;
}

/* A reduction over channels-first rows shorter than short_row
 * (DN_SHORT_ROW, DN_SHORT_GRAD_ROW), or over the rows of fewer than
 * DN_WHOLE_IMAGE_GROUPS images shorter than DN_CHUNK_ELEMS, runs as short_rows: groups of whole
 * images, as few as keep a task near DN_GROUP_ELEMS values per channel,
 * and tasks that split the channels. */
static inline void dn_plan_short_rows(dn_plan *p, int64_t short_row)
{
    /* also when few images would have their rows split into pieces
     * shorter than a chunk */
    if (p->nsc || (p->s >= short_row && !(p->row_parts > 0 && p->s < DN_CHUNK_ELEMS))) return;
    p->short_rows = 1;
    p->row_parts = 0;
    p->groups = dn_max64(1, dn_min64(dn_min64(dn_ceil_div(p->m, DN_GROUP_ELEMS), DN_MAX_GROUPS),
                                     p->n));
    p->cblock = dn_min64(p->c, dn_max64(1, DN_GROUP_ELEMS / dn_ceil_div(p->m, p->groups)));
    p->cblocks = dn_ceil_div(p->c, p->cblock);
    /* as many tasks for each thread, and blocks of whole quads of channels
     * (the AVX-512 sums take four at a time) where they have more than
     * four: 16x512x7x7 made 13 blocks of 41 for 2 threads, and 16 of 32
     * are 2-3% faster (training and backward; no block changes a bit) */
    if (p->threads > 1 && p->cblocks > 1)
        for (int64_t k = p->cblocks;; k++) {
            const int64_t cb = p->c / k > 4 ? dn_ceil_div(dn_ceil_div(p->c, k), 4) * 4
                                            : dn_ceil_div(p->c, k);
            p->cblock = cb;
            p->cblocks = dn_ceil_div(p->c, cb);
            if (p->groups * p->cblocks % p->threads == 0 || cb <= 4) break;
        }
}

/* The range [lo, hi) of each channel's m values (index n*s + j) that
 * group g reduces. NCS groups hold whole images where there are enough. */
static inline void dn_group_range(const dn_plan *p, int64_t g, int64_t *lo, int64_t *hi)
{
    if (p->nsc) {
        dn_split(p->m, p->groups, g, lo, hi);
    } else if (p->row_parts == 0) {
        dn_split(p->n, p->groups, g, lo, hi);
        *lo *= p->s;
        *hi *= p->s;
    } else {
        const int64_t img = g / p->row_parts;
        dn_split(p->s, p->row_parts, g % p->row_parts, lo, hi);
        *lo += img * p->s;
        *hi += img * p->s;
    }
}

/* Reduction task t (of groups * cblocks): group *g, channels [*c0, *c1). */
static inline void dn_reduce_task(const dn_plan *p, int64_t t, int64_t *g, int64_t *c0,
                                  int64_t *c1)
{
    *g = t / p->cblocks;
    *c0 = t % p->cblocks * p->cblock;
    *c1 = dn_min64(*c0 + p->cblock, p->c);
}

/* The runs of flat elements [i0, i1) that share their per-channel terms'
 * layout: channels first, stretches of one channel's row (at = the
 * channel, one term for the whole run); channels last, stretches of one
 * wide row (at = the position in it, one term per element). Divides once,
 * then steps:
 *   for (dn_runs_start(p, i0, &r); dn_runs_next(p, &r, i1, &i, &len, &at);) */
typedef struct dn_runs {
    int64_t i, at, left; /* the next run's first element, term, room in its row */
} dn_runs;

static inline void dn_runs_start(const dn_plan *p, int64_t i0, dn_runs *r)
{
    r->i = i0;
    if (p->nsc) {
        r->at = i0 % p->wide;
        r->left = p->wide - r->at;
    } else {
        r->at = (i0 / p->s) % p->c;
        r->left = p->s - i0 % p->s;
    }
}

static inline int dn_runs_next(const dn_plan *p, dn_runs *r, int64_t i1, int64_t *i,
                               int64_t *len, int64_t *at)
{
    if (r->i >= i1) return 0;
    *i = r->i;
    *at = r->at;
    *len = dn_min64(r->left, i1 - r->i);
    r->i += *len;
    if (p->nsc) {
        r->at = 0;
        r->left = p->wide;
    } else {
        r->at = r->at + 1 == p->c ? 0 : r->at + 1;
        r->left = p->s;
    }
    return 1;
}

/* Channels first: the pieces of reduction task t (group g, channels
 * [c0, c1)) in memory order (image, then channel, then at most p->chunk
 * values of that channel's row), each a contiguous run of one channel: a
 * sequential sweep of memory.
 *   for (dn_ncs_pieces_start(p, t, &it); dn_ncs_pieces_next(p, &it, &pc);) */
typedef struct dn_ncs_piece {
    int64_t ch, off, len; /* channel, first element, length */
} dn_ncs_piece;

typedef struct dn_ncs_pieces {
    int64_t g, c0, c1;                 /* the task's group and channels */
    int64_t hi, img, s0, s1, ch, j;    /* group end; position of the next piece */
} dn_ncs_pieces;

static inline void dn_ncs_pieces_start(const dn_plan *p, int64_t t, dn_ncs_pieces *it)
{
    int64_t lo;
    dn_reduce_task(p, t, &it->g, &it->c0, &it->c1);
    dn_group_range(p, it->g, &lo, &it->hi);
    it->img = lo / p->s;
    it->s0 = lo - it->img * p->s;
    it->s1 = dn_min64(it->hi - it->img * p->s, p->s);
    it->ch = it->c0;
    it->j = it->s0;
}

static inline int dn_ncs_pieces_next(const dn_plan *p, dn_ncs_pieces *it, dn_ncs_piece *pc)
{
    if (it->j >= it->s1) { /* this channel's row is done: the next channel, or image */
        it->j = it->s0;
        if (++it->ch == it->c1) {
            it->ch = it->c0;
            it->img++;
            if (it->img * p->s >= it->hi) return 0;
            it->s0 = 0;
            it->s1 = dn_min64(it->hi - it->img * p->s, p->s);
            it->j = 0;
        }
    }
    pc->ch = it->ch;
    pc->off = (it->img * p->c + it->ch) * p->s + it->j;
    pc->len = dn_min64(p->chunk, it->s1 - it->j);
    it->j += pc->len;
    return 1;
}

/* The weights that merge the groups' moments in order (dn_merge_moments
 * with the counts known in advance): w[2g] = nb/nt and w[2g+1] = na*(nb/nt)
 * for group g of nb values after na values (nt = na + nb). */
static inline void dn_group_weights(const dn_plan *p, double *w)
{
    for (int64_t g = 0; g < p->groups; g++) {
        int64_t lo, hi;
        dn_group_range(p, g, &lo, &hi);
        w[2 * g] = (double)(hi - lo) / (double)hi;
        w[2 * g + 1] = (double)lo * w[2 * g];
    }
}

/* The biased variance from the sum m2 of squared deviations of m values
 * (rounding can leave a zero variance a hair below 0; NaN stays), and the
 * unbiased one from it (m >= 2). */
static inline double dn_biased_var(double m2, double m) { return m2 < 0.0 ? 0.0 : m2 / m; }
static inline double dn_unbiased_var(double var, double m) { return var * (m / (m - 1.0)); }

static inline int dn_bad_eps(double eps) { return !(eps >= 0.0) || !isfinite(eps); }

/* Chan et al.: fold the statistics (nb, mb, qb) of a block into (na, ma, qa),
 * where m is a mean and q a sum of squared deviations from it. */
static inline void dn_merge_moments(double *na, double *ma, double *qa,
                                    double nb, double mb, double qb)
{
    const double nt = *na + nb;
    const double delta = mb - *ma;
    *ma += delta * (nb / nt);
    *qa += qb + delta * delta * (*na * (nb / nt));
    *na = nt;
}

#endif
