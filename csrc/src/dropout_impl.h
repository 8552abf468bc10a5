/* Dropout kernels for one element type: the single source of the f32,
 * f64, f16 and bf16 variants. dropout.c includes this file once per type
 * with
 *   T        the compute type (float or double): the scale, the products
 *   S        the storage type of the tensors (T, or uint16_t for the half
 *            types, which compute in float)
 *   U        the unsigned integer type of S's width (uint32_t, uint64_t,
 *            uint16_t)
 *   DN_LD(v), DN_ST(v)  one value of S to T and back (the identity when S
 *            is T; half.h's conversions, rounding once, for the half types)
 *   FN(name) the name with its type suffix (name##_f32)
 *
 * In-place use (y == x) is allowed, so x and y are not restrict; the
 * elementwise loops read and write index i only in iteration i (DN_IVDEP). */

/* ---- Runs: the branch-free select over contiguous memory. --------------- */

/* v if keep is 1, +0 if it is 0. The select is a bitwise AND of the
 * value's bits with an all-ones or all-zeros mask: no control flow at all,
 * so it vectorises to a blend (a ternary lets GCC sink the multiply into a
 * branch it then cannot if-convert), and a dropped place is exactly +0
 * whatever x holds (NaN, inf). */
static inline S FN(dn_kept)(S v, uint32_t keep)
{
    U bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= (U)0 - (U)keep;
    memcpy(&v, &bits, sizeof bits);
    return v;
}

/* y[i] = keep[i] ? x[i]*scale : +0 for i < len (x[i] without the multiply
 * if !mul: its bits); keep[i] is 0 or 1. */
static inline void FN(dn_sel)(const S *x, S *y, const uint32_t *DN_RESTRICT keep,
                              int64_t len, T scale, int mul)
{
    if (mul) {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(DN_ST(DN_LD(x[i]) * scale), keep[i]);
    } else {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(x[i], keep[i]);
    }
}

/* The same with one decision for the whole run (channel dropout). */
static inline void FN(dn_run)(const S *x, S *y, uint32_t keep, int64_t len, T scale, int mul)
{
    if (mul) {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(DN_ST(DN_LD(x[i]) * scale), keep);
    } else {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(x[i], keep);
    }
}

/* ---- Whole-tensor passes: fixed tasks run by the team (parallel.c). ---- */

/* What the tasks of one pass share; the task-shape fields are those of the
 * pass that uses them. */
typedef struct FN(drop_job) {
    const dn_drop_plan *dp;
    const dn_keep_src *src;
    const S *x;
    S *y;
    T scale;
    int mul;
    uint8_t *mask_out;
    FN(dn_drop_windows_fn) fused;
    int64_t per, windows;              /* short NCS rows: windows per task, in all */
    int64_t width, rows, chunks, runs; /* NSC: a task's channels and rows; tiles */
} FN(drop_job);

static void FN(dn_scale_task)(const void *ctx, int64_t blk, int worker)
{
    const FN(drop_job) *j = (const FN(drop_job) *)ctx;
    const int64_t i0 = blk * DN_APPLY_BLOCK;
    (void)worker;
    FN(dn_run)(j->x + i0, j->y + i0, 1u, dn_min64(DN_APPLY_BLOCK, j->dp->t.total - i0), j->scale,
               1);
}

/* y = x*a over all elements (classic eval), in fixed blocks. */
static void FN(dn_scale_all)(const dn_drop_plan *dp, const S *x, S *y, T a)
{
    const FN(drop_job) job = {.dp = dp, .x = x, .y = y, .scale = a};
    dn_parallel_tasks(dp->t.threads, dn_ceil_div(dp->t.total, DN_APPLY_BLOCK), FN(dn_scale_task),
                      &job);
}

/* y = x (nothing to do in place) or y = 0. */
static void FN(dn_copy_or_zero)(const dn_drop_plan *dp, const S *x, S *y, int copy)
{
    if (!copy) memset(y, 0, sizeof(S) * (size_t)dp->t.total);
    else if (x != y) memcpy(y, x, sizeof(S) * (size_t)dp->t.total);
}

/* Elementwise: decision i for element i (flat index). Windows never cross a
 * task, so each byte of mask_out (may be NULL) has one writer. */
static void FN(dn_drop_flat_task)(const void *ctx, int64_t blk, int worker)
{
    const FN(drop_job) *j = (const FN(drop_job) *)ctx;
    const int64_t i0 = blk * DN_APPLY_BLOCK;
    const int64_t i1 = dn_min64(i0 + DN_APPLY_BLOCK, j->dp->t.total);
    const S *x = j->x;
    S *y = j->y;
    uint8_t *mask_out = j->mask_out;
    int64_t base = i0;
    uint32_t keep[DN_WIN];
    (void)worker;
    if (j->fused != NULL) {
        /* i0 is a multiple of DN_WIN (DN_APPLY_BLOCK is) */
        const int64_t windows = (i1 - i0) / DN_WIN;
        uint64_t bits[DN_APPLY_BLOCK / DN_WIN];
        j->fused(&j->src->ps, (j->src->offset + (uint64_t)i0) >> 2, windows, x + i0, y + i0, j->scale, j->mul,
                 mask_out ? bits : NULL);
        if (mask_out)
            for (int64_t w = 0; w < windows; w++)
                dn_store_bits(bits[w], DN_WIN, mask_out + (i0 + w * DN_WIN) / 8);
        base += windows * DN_WIN;
    }
    for (; base < i1; base += DN_WIN) {
        const int len = (int)dn_min64(DN_WIN, i1 - base);
        dn_prefetch_ahead(x + base, len * (int64_t)sizeof(S));
        dn_window_keep(j->src, base, len, keep, mask_out ? mask_out + base / 8 : NULL);
        FN(dn_sel)(x + base, y + base, keep, len, j->scale, j->mul);
    }
}

/* Channel dropout, channels first: row r = n*C + c holds the s values of
 * decision r. Tasks are flat element ranges (they may split rows); the
 * window of decisions is regenerated only when a row leaves it. */
static void FN(dn_drop_chan_ncs_task)(const void *ctx, int64_t blk, int worker)
{
    const FN(drop_job) *j = (const FN(drop_job) *)ctx;
    const int64_t sp = j->dp->t.s;
    const int64_t e1 = dn_min64(blk * DN_APPLY_BLOCK + DN_APPLY_BLOCK, j->dp->t.total);
    int64_t wbase = -1;
    uint32_t keep[DN_WIN];
    (void)worker;
    for (int64_t e = blk * DN_APPLY_BLOCK; e < e1;) {
        const int64_t r = e / sp;
        const int64_t len = dn_min64(sp - e % sp, e1 - e);
        const int64_t wb = r - r % DN_WIN;
        if (wb != wbase) {
            dn_window_keep(j->src, wb, (int)dn_min64(DN_WIN, j->src->nbits - wb), keep, NULL);
            wbase = wb;
        }
        FN(dn_run)(j->x + e, j->y + e, keep[r - wb], len, j->scale, j->mul);
        e += len;
    }
}

/* Channel dropout, channels first, short rows (s < DN_NCS_SHORT): per
 * window of DN_WIN decisions, the decisions are spread over the DN_WIN*s
 * elements they cover, then one select runs over them all, instead of one
 * tiny run per row. Tasks are fixed runs of windows. */
static void FN(dn_drop_chan_ncs_short_task)(const void *ctx, int64_t t, int worker)
{
    const FN(drop_job) *j = (const FN(drop_job) *)ctx;
    const int64_t sp = j->dp->t.s, nbits = j->src->nbits;
    const int64_t w1 = dn_min64((t + 1) * j->per, j->windows);
    uint32_t win[DN_WIN], wide[DN_WIN * DN_NCS_SHORT];
    (void)worker;
    for (int64_t w = t * j->per; w < w1; w++) {
        const int64_t wb = w * DN_WIN;
        const int len = (int)dn_min64(DN_WIN, nbits - wb);
        dn_window_keep(j->src, wb, len, win, NULL);
        for (int k = 0; k < len; k++)
            for (int64_t i = 0; i < sp; i++) wide[k * sp + i] = win[k];
        FN(dn_sel)(j->x + wb * sp, j->y + wb * sp, wide, len * sp, j->scale, j->mul);
    }
}

/* Channel dropout, channels last: row q = n*S + s holds the C values of
 * decisions n*C .. n*C + C-1. A task is a tile (n, up to DN_NSC_CHUNK
 * channels, a run of rows of that n): it generates the decisions of its
 * channels once and applies them to each of its rows, so the Philox work
 * stays a small fraction of the elements whatever the shape. */
static void FN(dn_drop_chan_nsc_task)(const void *ctx, int64_t t, int worker)
{
    const FN(drop_job) *j = (const FN(drop_job) *)ctx;
    const int64_t sp = j->dp->t.s, C = j->dp->t.c;
    const int64_t nn = t / (j->chunks * j->runs), rem = t % (j->chunks * j->runs);
    const int64_t c0 = rem / j->runs * j->width, c1 = dn_min64(c0 + j->width, C);
    const int64_t s0 = rem % j->runs * j->rows, s1 = dn_min64(s0 + j->rows, sp);
    const int64_t d0 = nn * C + c0, d1 = nn * C + c1;
    uint32_t keep[DN_NSC_CHUNK], win[DN_WIN];
    (void)worker;
    for (int64_t wb = d0 - d0 % DN_WIN; wb < d1; wb += DN_WIN) {
        const int64_t lo = dn_max64(wb, d0), hi = dn_min64(wb + DN_WIN, d1);
        dn_window_keep(j->src, wb, (int)dn_min64(DN_WIN, j->src->nbits - wb), win, NULL);
        memcpy(keep + (lo - d0), win + (lo - wb), sizeof(uint32_t) * (size_t)(hi - lo));
    }
    for (int64_t s = s0; s < s1; s++) {
        const int64_t e = (nn * sp + s) * C + c0;
        FN(dn_sel)(j->x + e, j->y + e, keep, c1 - c0, j->scale, j->mul);
    }
}

/* Applies src's decisions to x: dispatch on elementwise / layout. */
static void FN(dn_drop_apply)(const dn_drop_plan *dp, const dn_keep_src *src, const S *x,
                              S *y, T scale, int mul, uint8_t *mask_out)
{
    FN(drop_job) job = {.dp = dp, .src = src, .x = x, .y = y, .scale = scale, .mul = mul};
    const int64_t sp = dp->t.s;
    if (!dp->chan) {
        /* the SIMD variants generate and apply whole windows in registers,
         * windows that start at a Philox block */
        job.fused = src->mask == NULL && (src->offset & 3u) == 0 ? dn_kernels()->FN(drop_windows)
                                                                 : NULL;
        job.mask_out = mask_out;
        dn_parallel_tasks(dp->t.threads, dn_ceil_div(dp->t.total, DN_APPLY_BLOCK),
                          FN(dn_drop_flat_task), &job);
        return;
    }
    if (mask_out) dn_mask_from_src(src, mask_out);
    if (dp->t.nsc) {
        job.width = dn_min64(dp->t.c, DN_NSC_CHUNK);
        job.rows = dn_min64(sp, dn_max64(DN_NSC_MIN_ROWS, DN_APPLY_BLOCK / job.width));
        job.chunks = dn_ceil_div(dp->t.c, job.width);
        job.runs = dn_ceil_div(sp, job.rows);
        dn_parallel_tasks(dp->t.threads, dp->t.n * job.chunks * job.runs,
                          FN(dn_drop_chan_nsc_task), &job);
    } else if (sp < DN_NCS_SHORT) {
        job.per = dn_max64(1, DN_APPLY_BLOCK / (sp * DN_WIN)); /* windows per task */
        job.windows = dn_ceil_div(src->nbits, DN_WIN);
        dn_parallel_tasks(dp->t.threads, dn_ceil_div(job.windows, job.per),
                          FN(dn_drop_chan_ncs_short_task), &job);
    } else {
        dn_parallel_tasks(dp->t.threads, dn_ceil_div(dp->t.total, DN_APPLY_BLOCK),
                          FN(dn_drop_chan_ncs_task), &job);
    }
}

/* The training scale of kept values: 1/(1-p) rounded once to T (inverted),
 * 1 (classic). *mul is 0 when the scale is 1: kept values are copied. */
static T FN(dn_train_scale)(double p, dn_dropout_mode mode, int *mul)
{
    const T scale = (mode == DN_DROPOUT_INVERTED && p < 1.0) ? (T)(1.0 / (1.0 - p)) : (T)1;
    *mul = scale != (T)1;
    return scale;
}

/* Training dropout with src's decisions, the mask (may be NULL) too. */
static dn_status FN(dn_drop_train)(const dn_drop_plan *dp, const dn_keep_src *src, double p,
                                   dn_dropout_mode mode, const S *x, S *y, uint8_t *mask_out)
{
    int mul;
    const T scale = FN(dn_train_scale)(p, mode, &mul);
    FN(dn_drop_apply)(dp, src, x, y, scale, mul, mask_out);
    return DN_OK;
}

/* ---- Public API. -------------------------------------------------------- */

dn_status FN(dn_dropout_forward_offset)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                        int channelwise, const S *x, double p, uint64_t seed,
                                        uint64_t stream, uint64_t offset, dn_dropout_mode mode,
                                        int training, S *y, uint8_t *mask)
{
    dn_drop_plan dp;
    dn_keep_src src;
    dn_status st = dn_drop_plan_make(n, c, s, layout, channelwise, sizeof(S),
                                     x != NULL && y != NULL, p, mode, offset, &dp);
    if (st != DN_OK) return st;
    if (!training) {
        if (mask) dn_mask_fill(dp.nbits, 1, mask);
        if (mode == DN_DROPOUT_INVERTED || p == 0.0 || p == 1.0)
            FN(dn_copy_or_zero)(&dp, x, y, mode == DN_DROPOUT_INVERTED || p == 0.0);
        else
            FN(dn_scale_all)(&dp, x, y, (T)(1.0 - p));
        return DN_OK;
    }
    if (p == 0.0 || p == 1.0) {
        if (mask) dn_mask_fill(dp.nbits, p == 0.0, mask);
        FN(dn_copy_or_zero)(&dp, x, y, p == 0.0);
        return DN_OK;
    }
    dn_src_generate(&src, dp.nbits, p, seed, stream, offset);
    return FN(dn_drop_train)(&dp, &src, p, mode, x, y, mask);
}

dn_status FN(dn_dropout_forward)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                 int channelwise, const S *x, double p, uint64_t seed,
                                 uint64_t stream, dn_dropout_mode mode, int training, S *y,
                                 uint8_t *mask)
{
    return FN(dn_dropout_forward_offset)(n, c, s, layout, channelwise, x, p, seed, stream, 0,
                                         mode, training, y, mask);
}

dn_status FN(dn_dropout_apply_mask)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                    int channelwise, const S *x, const uint8_t *mask,
                                    double p, dn_dropout_mode mode, S *y)
{
    dn_drop_plan dp;
    dn_keep_src src;
    dn_status st = dn_drop_plan_make(n, c, s, layout, channelwise, sizeof(S),
                                     x != NULL && y != NULL && mask != NULL, p, mode, 0, &dp);
    if (st != DN_OK) return st;
    if (p == 1.0) {
        FN(dn_copy_or_zero)(&dp, x, y, 0);
        return DN_OK;
    }
    dn_src_mask(&src, dp.nbits, mask);
    return FN(dn_drop_train)(&dp, &src, p, mode, x, y, NULL);
}

dn_status FN(dn_dropout_backward_offset)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                         int channelwise, const S *dy, double p, uint64_t seed,
                                         uint64_t stream, uint64_t offset, dn_dropout_mode mode,
                                         const uint8_t *mask, S *dx)
{
    /* the training forward's map, applied to dy: with the stored mask, or
     * with the decisions regenerated from (seed, stream) */
    if (mask != NULL) {
        dn_drop_plan dp;
        /* the offset is checked even though a stored mask does not use it */
        const dn_status st = dn_drop_plan_make(n, c, s, layout, channelwise, sizeof(S),
                                               dy != NULL && dx != NULL, p, mode, offset, &dp);
        if (st != DN_OK) return st;
        return FN(dn_dropout_apply_mask)(n, c, s, layout, channelwise, dy, mask, p, mode, dx);
    }
    return FN(dn_dropout_forward_offset)(n, c, s, layout, channelwise, dy, p, seed, stream,
                                         offset, mode, 1, dx, NULL);
}

dn_status FN(dn_dropout_backward)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                  int channelwise, const S *dy, double p, uint64_t seed,
                                  uint64_t stream, dn_dropout_mode mode, const uint8_t *mask,
                                  S *dx)
{
    return FN(dn_dropout_backward_offset)(n, c, s, layout, channelwise, dy, p, seed, stream, 0,
                                          mode, mask, dx);
}
