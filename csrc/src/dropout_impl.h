/* Dropout kernels for one element type: the single source of the f32 and
 * f64 variants. dropout.c includes this file once per type with
 *   T        the element type (float or double)
 *   U        the unsigned integer type of its width (uint32_t, uint64_t)
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
static inline T FN(dn_kept)(T v, uint32_t keep)
{
    U bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= (U)0 - (U)keep;
    memcpy(&v, &bits, sizeof bits);
    return v;
}

/* y[i] = keep[i] ? x[i]*scale : +0 for i < len (x[i] without the multiply
 * if !mul); keep[i] is 0 or 1. */
static inline void FN(dn_sel)(const T *x, T *y, const uint32_t *DN_RESTRICT keep,
                              int64_t len, T scale, int mul)
{
    if (mul) {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(x[i] * scale, keep[i]);
    } else {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(x[i], keep[i]);
    }
}

/* The same with one decision for the whole run (channel dropout). */
static inline void FN(dn_run)(const T *x, T *y, uint32_t keep, int64_t len, T scale, int mul)
{
    if (mul) {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(x[i] * scale, keep);
    } else {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++) y[i] = FN(dn_kept)(x[i], keep);
    }
}

/* ---- Whole-tensor passes. ----------------------------------------------- */

/* y = x*a over all elements (classic eval), in parallel fixed blocks. */
static void FN(dn_scale_all)(const dn_drop_plan *dp, const T *x, T *y, T a)
{
    const int64_t total = dp->t.total;
    const int64_t blocks = dn_ceil_div(total, DN_APPLY_BLOCK);
    DN_OMP(parallel for num_threads(dp->t.threads) schedule(static))
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t i0 = blk * DN_APPLY_BLOCK;
        FN(dn_run)(x + i0, y + i0, 1u, dn_min64(DN_APPLY_BLOCK, total - i0), a, 1);
    }
}

/* y = x (nothing to do in place) or y = 0. */
static void FN(dn_copy_or_zero)(const dn_drop_plan *dp, const T *x, T *y, int copy)
{
    if (!copy) memset(y, 0, sizeof(T) * (size_t)dp->t.total);
    else if (x != y) memcpy(y, x, sizeof(T) * (size_t)dp->t.total);
}

/* Elementwise: decision i for element i (flat index). Windows never cross a
 * thread block, so each byte of mask_out (may be NULL) has one writer. */
static void FN(dn_drop_flat)(const dn_drop_plan *dp, const dn_keep_src *src, const T *x,
                             T *y, T scale, int mul, uint8_t *mask_out)
{
    const int64_t total = dp->t.total;
    const int64_t blocks = dn_ceil_div(total, DN_APPLY_BLOCK);
    /* the SIMD variants generate and apply whole windows in registers */
    const FN(dn_drop_windows_fn) fused = src->mask == NULL ? dn_kernels()->FN(drop_windows) : NULL;
    DN_OMP(parallel for num_threads(dp->t.threads) schedule(static))
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t i0 = blk * DN_APPLY_BLOCK;
        const int64_t i1 = dn_min64(i0 + DN_APPLY_BLOCK, total);
        int64_t base = i0;
        uint32_t keep[DN_WIN];
        if (fused != NULL) {
            /* i0 is a multiple of DN_WIN (DN_APPLY_BLOCK is) */
            const int64_t windows = (i1 - i0) / DN_WIN;
            uint64_t bits[DN_APPLY_BLOCK / DN_WIN];
            fused(&src->ps, (uint64_t)i0 >> 2, windows, x + i0, y + i0, scale, mul,
                  mask_out ? bits : NULL);
            if (mask_out)
                for (int64_t w = 0; w < windows; w++)
                    dn_store_bits(bits[w], DN_WIN, mask_out + (i0 + w * DN_WIN) / 8);
            base += windows * DN_WIN;
        }
        for (; base < i1; base += DN_WIN) {
            const int len = (int)dn_min64(DN_WIN, i1 - base);
            dn_window_keep(src, base, len, keep, mask_out ? mask_out + base / 8 : NULL);
            FN(dn_sel)(x + base, y + base, keep, len, scale, mul);
        }
    }
}

/* Channel dropout, channels first: row r = n*C + c holds the s values of
 * decision r. Thread blocks are flat element ranges (they may split rows);
 * the window of decisions is regenerated only when a row leaves it. */
static void FN(dn_drop_chan_ncs)(const dn_drop_plan *dp, const dn_keep_src *src,
                                 const T *x, T *y, T scale, int mul)
{
    const int64_t total = dp->t.total, S = dp->t.s;
    const int64_t blocks = dn_ceil_div(total, DN_APPLY_BLOCK);
    DN_OMP(parallel for num_threads(dp->t.threads) schedule(static))
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t e1 = dn_min64(blk * DN_APPLY_BLOCK + DN_APPLY_BLOCK, total);
        int64_t wbase = -1;
        uint32_t keep[DN_WIN];
        for (int64_t e = blk * DN_APPLY_BLOCK; e < e1;) {
            const int64_t r = e / S;
            const int64_t len = dn_min64(S - e % S, e1 - e);
            const int64_t wb = r - r % DN_WIN;
            if (wb != wbase) {
                dn_window_keep(src, wb, (int)dn_min64(DN_WIN, src->nbits - wb), keep, NULL);
                wbase = wb;
            }
            FN(dn_run)(x + e, y + e, keep[r - wb], len, scale, mul);
            e += len;
        }
    }
}

/* Channel dropout, channels first, short rows (s < DN_NCS_SHORT): per
 * window of DN_WIN decisions, the decisions are spread over the DN_WIN*s
 * elements they cover, then one select runs over them all, instead of one
 * tiny run per row. Tasks are fixed runs of windows. */
static void FN(dn_drop_chan_ncs_short)(const dn_drop_plan *dp, const dn_keep_src *src,
                                       const T *x, T *y, T scale, int mul)
{
    const int64_t S = dp->t.s, nbits = src->nbits;
    const int64_t per = dn_max64(1, DN_APPLY_BLOCK / (S * DN_WIN)); /* windows per task */
    const int64_t windows = dn_ceil_div(nbits, DN_WIN), tasks = dn_ceil_div(windows, per);
    DN_OMP(parallel for num_threads(dp->t.threads) schedule(static))
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t w1 = dn_min64((t + 1) * per, windows);
        uint32_t win[DN_WIN], wide[DN_WIN * DN_NCS_SHORT];
        for (int64_t w = t * per; w < w1; w++) {
            const int64_t wb = w * DN_WIN;
            const int len = (int)dn_min64(DN_WIN, nbits - wb);
            dn_window_keep(src, wb, len, win, NULL);
            for (int k = 0; k < len; k++)
                for (int64_t j = 0; j < S; j++) wide[k * S + j] = win[k];
            FN(dn_sel)(x + wb * S, y + wb * S, wide, len * S, scale, mul);
        }
    }
}

/* Channel dropout, channels last: row q = n*S + s holds the C values of
 * decisions n*C .. n*C + C-1. A task is a tile (n, up to DN_NSC_CHUNK
 * channels, a run of rows of that n): it generates the decisions of its
 * channels once and applies them to each of its rows, so the Philox work
 * stays a small fraction of the elements whatever the shape. */
static void FN(dn_drop_chan_nsc)(const dn_drop_plan *dp, const dn_keep_src *src,
                                 const T *x, T *y, T scale, int mul)
{
    const int64_t S = dp->t.s, C = dp->t.c;
    const int64_t width = dn_min64(C, DN_NSC_CHUNK);
    const int64_t rows = dn_min64(S, dn_max64(DN_NSC_MIN_ROWS, DN_APPLY_BLOCK / width));
    const int64_t chunks = dn_ceil_div(C, width), runs = dn_ceil_div(S, rows);
    const int64_t tasks = dp->t.n * chunks * runs;
    DN_OMP(parallel for num_threads(dp->t.threads) schedule(static))
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t nn = t / (chunks * runs), rem = t % (chunks * runs);
        const int64_t c0 = rem / runs * width, c1 = dn_min64(c0 + width, C);
        const int64_t s0 = rem % runs * rows, s1 = dn_min64(s0 + rows, S);
        const int64_t d0 = nn * C + c0, d1 = nn * C + c1;
        uint32_t keep[DN_NSC_CHUNK], win[DN_WIN];
        for (int64_t wb = d0 - d0 % DN_WIN; wb < d1; wb += DN_WIN) {
            const int64_t lo = dn_max64(wb, d0), hi = dn_min64(wb + DN_WIN, d1);
            dn_window_keep(src, wb, (int)dn_min64(DN_WIN, src->nbits - wb), win, NULL);
            memcpy(keep + (lo - d0), win + (lo - wb), sizeof(uint32_t) * (size_t)(hi - lo));
        }
        for (int64_t s = s0; s < s1; s++) {
            const int64_t e = (nn * S + s) * C + c0;
            FN(dn_sel)(x + e, y + e, keep, c1 - c0, scale, mul);
        }
    }
}

/* Applies src's decisions to x: dispatch on elementwise / layout. */
static void FN(dn_drop_apply)(const dn_drop_plan *dp, const dn_keep_src *src, const T *x,
                              T *y, T scale, int mul, uint8_t *mask_out)
{
    if (!dp->chan) {
        FN(dn_drop_flat)(dp, src, x, y, scale, mul, mask_out);
        return;
    }
    if (mask_out) dn_mask_from_src(src, mask_out);
    if (dp->t.nsc) FN(dn_drop_chan_nsc)(dp, src, x, y, scale, mul);
    else if (dp->t.s < DN_NCS_SHORT) FN(dn_drop_chan_ncs_short)(dp, src, x, y, scale, mul);
    else FN(dn_drop_chan_ncs)(dp, src, x, y, scale, mul);
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
                                   dn_dropout_mode mode, const T *x, T *y, uint8_t *mask_out)
{
    int mul;
    const T scale = FN(dn_train_scale)(p, mode, &mul);
    FN(dn_drop_apply)(dp, src, x, y, scale, mul, mask_out);
    return DN_OK;
}

/* ---- Public API. -------------------------------------------------------- */

dn_status FN(dn_dropout_forward)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                 int channelwise, const T *x, double p, uint64_t seed,
                                 uint64_t stream, dn_dropout_mode mode, int training, T *y,
                                 uint8_t *mask)
{
    dn_drop_plan dp;
    dn_keep_src src;
    dn_status st = dn_drop_plan_make(n, c, s, layout, channelwise, sizeof(T),
                                     x != NULL && y != NULL, p, mode, &dp);
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
    dn_src_generate(&src, dp.nbits, p, seed, stream);
    return FN(dn_drop_train)(&dp, &src, p, mode, x, y, mask);
}

dn_status FN(dn_dropout_apply_mask)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                    int channelwise, const T *x, const uint8_t *mask,
                                    double p, dn_dropout_mode mode, T *y)
{
    dn_drop_plan dp;
    dn_keep_src src;
    dn_status st = dn_drop_plan_make(n, c, s, layout, channelwise, sizeof(T),
                                     x != NULL && y != NULL && mask != NULL, p, mode, &dp);
    if (st != DN_OK) return st;
    if (p == 1.0) {
        FN(dn_copy_or_zero)(&dp, x, y, 0);
        return DN_OK;
    }
    dn_src_mask(&src, dp.nbits, mask);
    return FN(dn_drop_train)(&dp, &src, p, mode, x, y, NULL);
}

dn_status FN(dn_dropout_backward)(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                  int channelwise, const T *dy, double p, uint64_t seed,
                                  uint64_t stream, dn_dropout_mode mode, const uint8_t *mask,
                                  T *dx)
{
    /* the training forward's map, applied to dy: with the stored mask, or
     * with the decisions regenerated from (seed, stream) */
    if (mask != NULL)
        return FN(dn_dropout_apply_mask)(n, c, s, layout, channelwise, dy, mask, p, mode, dx);
    return FN(dn_dropout_forward)(n, c, s, layout, channelwise, dy, p, seed, stream, mode, 1, dx,
                                  NULL);
}
