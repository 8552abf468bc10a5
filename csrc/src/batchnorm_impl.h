/* Batch-norm kernels for one element type: the single source of the f32 and
 * f64 variants. batchnorm.c includes this file once per type with
 *   T        the element type (float or double)
 *   FN(name) the name with its type suffix (name##_f32)
 * Sums run in T over short blocks and in double between them; the merge of
 * statistics is in double; elementwise passes are in T. */

/* ---- Runs: contiguous stretches of memory, plain vectorisable loops. ----
 * Sums run in T over blocks of at most DN_INNER values (so they vectorise at
 * the element type's width) and move to double between blocks; 64 bytes of
 * independent lanes (two AVX2 registers, so that the adds' latency
 * overlaps), combined in a fixed order. */
#define DN_LANES (64 / (int)sizeof(T))
#define DN_INNER 1024

/* The lanes' sum, halving: a fixed tree, whatever the vector width. */
static inline double FN(fold)(const T *a)
{
    double t[DN_LANES];
    for (int j = 0; j < DN_LANES; j++) t[j] = (double)a[j];
    for (int w = DN_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) t[j] += t[j + w];
    return t[0];
}

/* out += the sum of EXPR over i in [0, n), in DN_LANES lanes of T. One
 * accumulator array per loop: GCC vectorises that form, not several. */
#define DN_LANE_SUM(n, EXPR, out)                                              \
    do {                                                                       \
        T acc_[DN_LANES] = {0}, tail_ = 0;                                     \
        int64_t i_ = 0;                                                        \
        for (; i_ + DN_LANES <= (n); i_ += DN_LANES)                           \
            for (int j_ = 0; j_ < DN_LANES; j_++) {                            \
                const int64_t i = i_ + j_;                                     \
                acc_[j_] += (EXPR);                                            \
            }                                                                  \
        for (; i_ < (n); i_++) {                                               \
            const int64_t i = i_;                                              \
            tail_ += (EXPR);                                                   \
        }                                                                      \
        (out) += FN(fold)(acc_) + (double)tail_;                               \
    } while (0)

static double FN(run_sum)(const T *DN_RESTRICT p, int64_t len)
{
    double total = 0.0;
    for (int64_t b = 0; b < len; b += DN_INNER) {
        const T *DN_RESTRICT q = p + b;
        DN_LANE_SUM(dn_min64(DN_INNER, len - b), q[i], total);
    }
    return total;
}

#if defined(DN_VECTOR_SUMS)
/* The lane sums of several expressions in one sweep, with GCC/Clang vector
 * types: two 32-byte vectors hold the DN_LANES lanes, each lane adds the
 * same values in the same order as DN_LANE_SUM, so the bits are the same
 * (batchnorm_kernels.h). One sweep loads each input once, not once per
 * sum, which is what keeps the reductions up with memory. */
typedef T FN(vec) __attribute__((vector_size(32), aligned(sizeof(T))));
#  define DN_VLEN (32 / (int)sizeof(T))
/* the lanes of (lo, hi) folded, plus a tail, into out */
#  define DN_VEC_FOLD(lo, hi, tail, out)                                       \
    do {                                                                       \
        T lanes_[DN_LANES];                                                    \
        memcpy(lanes_, &(lo), sizeof(lo));                                     \
        memcpy(lanes_ + DN_VLEN, &(hi), sizeof(hi));                           \
        (out) += FN(fold)(lanes_) + (double)(tail);                            \
    } while (0)
#endif

/* sums[0] += sum(x - c), sums[1] += sum((x - c)^2) */
static void FN(run_dev)(const T *DN_RESTRICT p, int64_t len, T c, double *sums)
{
    for (int64_t b = 0; b < len; b += DN_INNER) {
        const T *DN_RESTRICT q = p + b;
        const int64_t n = dn_min64(DN_INNER, len - b);
#if defined(DN_VECTOR_SUMS)
        const FN(vec) cv = (FN(vec)){0} + c;
        FN(vec) s0a = {0}, s0b = {0}, s1a = {0}, s1b = {0};
        T t0 = 0, t1 = 0;
        int64_t i = 0;
        for (; i + DN_LANES <= n; i += DN_LANES) {
            const FN(vec) da = *(const FN(vec) *)(q + i) - cv;
            const FN(vec) db = *(const FN(vec) *)(q + i + DN_VLEN) - cv;
            s0a += da;
            s0b += db;
            s1a += da * da;
            s1b += db * db;
        }
        for (; i < n; i++) {
            t0 += q[i] - c;
            t1 += (q[i] - c) * (q[i] - c);
        }
        DN_VEC_FOLD(s0a, s0b, t0, sums[0]);
        DN_VEC_FOLD(s1a, s1b, t1, sums[1]);
#else
        DN_LANE_SUM(n, q[i] - c, sums[0]);
        DN_LANE_SUM(n, (q[i] - c) * (q[i] - c), sums[1]);
#endif
    }
}

/* sums[0] += sum(dy), sums[1] += sum(x - h), sums[2] += sum(dy*(x - h)) */
static void FN(run_grad_sums)(const T *DN_RESTRICT dy, const T *DN_RESTRICT x,
                              int64_t len, T h, double *sums)
{
    for (int64_t b = 0; b < len; b += DN_INNER) {
        const T *DN_RESTRICT g = dy + b;
        const T *DN_RESTRICT q = x + b;
        const int64_t n = dn_min64(DN_INNER, len - b);
#if defined(DN_VECTOR_SUMS)
        const FN(vec) hv = (FN(vec)){0} + h;
        FN(vec) s0a = {0}, s0b = {0}, s1a = {0}, s1b = {0}, s2a = {0}, s2b = {0};
        T t0 = 0, t1 = 0, t2 = 0;
        int64_t i = 0;
        for (; i + DN_LANES <= n; i += DN_LANES) {
            const FN(vec) ga = *(const FN(vec) *)(g + i);
            const FN(vec) gb = *(const FN(vec) *)(g + i + DN_VLEN);
            const FN(vec) da = *(const FN(vec) *)(q + i) - hv;
            const FN(vec) db = *(const FN(vec) *)(q + i + DN_VLEN) - hv;
            s0a += ga;
            s0b += gb;
            s1a += da;
            s1b += db;
            s2a += ga * da;
            s2b += gb * db;
        }
        for (; i < n; i++) {
            t0 += g[i];
            t1 += q[i] - h;
            t2 += g[i] * (q[i] - h);
        }
        DN_VEC_FOLD(s0a, s0b, t0, sums[0]);
        DN_VEC_FOLD(s1a, s1b, t1, sums[1]);
        DN_VEC_FOLD(s2a, s2b, t2, sums[2]);
#else
        DN_LANE_SUM(n, g[i], sums[0]);
        DN_LANE_SUM(n, q[i] - h, sums[1]);
        DN_LANE_SUM(n, g[i] * (q[i] - h), sums[2]);
#endif
    }
}

/* ---- Elementwise passes over a flat range, one source for both layouts. --
 * DN_DEFINE_APPLY(name, EXPR) defines FN(name)(p, i0, i1, a, b, k, out),
 * computing out[i - i0] = EXPR over [i0, i1), where EXPR reads a[i], b[i] (the
 * inputs) and K(q)[ch], the per-channel constant q of channel ch. In NCS a
 * run has one channel (constants broadcast); in NSC each element its own,
 * over wide rows: the constants are repeated to p->wide values
 * (FN(widen)), so that runs are long even when channels are few. */
#define DN_DEFINE_APPLY(name, EXPR)                                            \
    static void FN(name)(const dn_plan *p, int64_t i0, int64_t i1,             \
                         const T *DN_RESTRICT a, const T *DN_RESTRICT b,       \
                         const T *const *k, T *out)                            \
    {                                                                          \
        const T *DN_RESTRICT k0 = k[0];                                        \
        const T *DN_RESTRICT k1 = k[1];                                        \
        const T *DN_RESTRICT k2 = k[2];                                        \
        const T *DN_RESTRICT k3 = k[3];                                        \
        (void)a; (void)b; (void)k0; (void)k1; (void)k2; (void)k3;              \
        if (p->nsc) {                                                          \
            for (int64_t i = i0; i < i1;) {                                    \
                const int64_t c0 = i % p->wide;                                \
                const int64_t len = dn_min64(p->wide - c0, i1 - i);            \
                for (int64_t j = 0; j < len; j++) {                            \
                    const int64_t e = i + j, ch = c0 + j;                      \
                    out[e - i0] = (EXPR);                                      \
                }                                                              \
                i += len;                                                      \
            }                                                                  \
        } else {                                                               \
            for (int64_t i = i0; i < i1;) {                                    \
                const int64_t ch = (i / p->s) % p->c;                          \
                const int64_t len = dn_min64(p->s - i % p->s, i1 - i);         \
                for (int64_t e = i; e < i + len; e++) out[e - i0] = (EXPR);    \
                i += len;                                                      \
            }                                                                  \
        }                                                                      \
    }

/* Training forward: ((x - mean_hi) - mean_lo)*scale + shift. The mean is
 * carried as two T values so that x - mean keeps full precision in T when
 * |mean| >> std (x - mean_hi is exact there, by Sterbenz's lemma). */
DN_DEFINE_APPLY(apply_train, ((a[e] - k0[ch]) - k1[ch]) * k2[ch] + k3[ch])
/* Inference forward (and frozen backward, with shift 0): one multiply-add. */
DN_DEFINE_APPLY(apply_affine, a[e] * k2[ch] + k3[ch])
/* Training backward: dx = A*dy + B*(x - mean_saved) + K. */
DN_DEFINE_APPLY(apply_backward, k0[ch] * a[e] + k1[ch] * (b[e] - k2[ch]) + k3[ch])

/* Repeats the c values of v to fill p->wide (NSC wide rows). */
static void FN(widen)(const dn_plan *p, T *v)
{
    for (int64_t j = p->c; j < p->wide; j++) v[j] = v[j - p->c];
}

typedef void (*FN(apply_fn))(const dn_plan *, int64_t, int64_t, const T *,
                             const T *, const T *const *, T *);

/* fn over [i0, i1) into out. With stream, through a small buffer with
 * streaming stores, which skip reading the destination lines first (for
 * outputs larger than the caches); the caller fences. */
static void FN(apply_range)(const dn_plan *p, FN(apply_fn) fn, int64_t i0, int64_t i1,
                            const T *a, const T *b, const T *const *k, T *out, int stream)
{
    if (stream) {
        T buf[DN_STREAM_TILE];
        for (int64_t t0 = i0; t0 < i1; t0 += DN_STREAM_TILE) {
            const int64_t t1 = dn_min64(t0 + DN_STREAM_TILE, i1);
            fn(p, t0, t1, a, b, k, buf);
            dn_stream_store(out + t0, buf, (size_t)(t1 - t0) * sizeof(T));
        }
    } else {
        fn(p, i0, i1, a, b, k, out + i0);
    }
}

/* The constants kc[q][0..c) repeated over a wide row (NSC). */
static void FN(widen_all)(const dn_plan *p, T *const *kc)
{
    for (int q = 0; q < 4; q++)
        if (kc[q] != NULL) FN(widen)(p, kc[q]);
}

/* Runs fn over all elements in fixed blocks, in parallel, with the constants
 * kc (widened here first). */
static void FN(apply_all)(const dn_plan *p, FN(apply_fn) fn, const T *a,
                          const T *b, T *const *kc, T *out)
{
    const int64_t blocks = dn_ceil_div(p->total, DN_APPLY_BLOCK);
    const int stream = dn_stream_worthwhile(p->total * (int64_t)sizeof(T));
    FN(widen_all)(p, kc);
    (void)blocks;
    DN_OMP(parallel num_threads(p->threads))
    {
        DN_OMP(for schedule(static))
        for (int64_t blk = 0; blk < blocks; blk++)
            FN(apply_range)(p, fn, blk * DN_APPLY_BLOCK,
                            dn_min64((blk + 1) * DN_APPLY_BLOCK, p->total), a, b,
                            (const T *const *)kc, out, stream);
        if (stream) dn_stream_fence();
    }
}

/* ---- Statistics. -------------------------------------------------------- */

/* NCS: the group's rows in memory order. Group g is the range [lo, hi) of
 * the per-channel index n*s + j; DN_NCS_GROUP_PIECES runs a body
 * for each contiguous piece (at most p->chunk values of one row of one
 * channel), for n, then channel, then piece: a sequential sweep of memory.
 * The body (the variadic argument) sees ch, off (the piece's first element)
 * and len. */
#define DN_NCS_GROUP_PIECES(p, g, ...)                                         \
    do {                                                                       \
        int64_t lo_, hi_;                                                      \
        dn_group_range((p), (g), &lo_, &hi_);                                  \
        for (int64_t n_ = lo_ / (p)->s; n_ * (p)->s < hi_; n_++) {             \
            const int64_t s0_ = dn_max64(lo_ - n_ * (p)->s, 0);                \
            const int64_t s1_ = dn_min64(hi_ - n_ * (p)->s, (p)->s);           \
            for (int64_t ch = 0; ch < (p)->c; ch++) {                          \
                const int64_t row_ = (n_ * (p)->c + ch) * (p)->s;              \
                for (int64_t j_ = s0_; j_ < s1_; j_ += (p)->chunk) {           \
                    const int64_t off = row_ + j_;                             \
                    const int64_t len = dn_min64((p)->chunk, s1_ - j_);        \
                    __VA_ARGS__                                                \
                }                                                              \
            }                                                                  \
        }                                                                      \
    } while (0)

/* NCS: for group g, every channel's mean and squared deviations, from a
 * two-pass over each piece (in L1), merged in order into
 * gmean/gm2[ch*groups + g]. The second pass centres on the first pass's
 * mean rounded to T and also sums the deviations, which corrects that
 * rounding (the corrected two-pass algorithm). cnt: scratch of p->c. */
static void FN(ncs_group_moments)(const dn_plan *p, const T *x, int64_t g, double *gmean,
                                  double *gm2, double *DN_RESTRICT cnt)
{
    const int64_t G = p->groups;
    for (int64_t ch = 0; ch < p->c; ch++) cnt[ch] = 0.0;
    DN_NCS_GROUP_PIECES(p, g, {
        const T *run = x + off;
        const double rows = (double)len;
        const T centre = (T)(FN(run_sum)(run, len) / rows);
        double dev[2] = {0.0, 0.0};
        FN(run_dev)(run, len, centre, dev);
        if (cnt[ch] == 0.0) {
            gmean[ch * G + g] = 0.0;
            gm2[ch * G + g] = 0.0;
        }
        dn_merge_moments(&cnt[ch], &gmean[ch * G + g], &gm2[ch * G + g], rows,
                         (double)centre + dev[0] / rows, dev[1] - dev[0] * dev[0] / rows);
    });
}

/* NSC: v[ch] += v[k*c + ch] for k = 1 .. per-1, in k order (the sums of
 * a wide row's positions into its channels; channels inner, so that it
 * vectorises). */
static void FN(fold_wide)(T *DN_RESTRICT v, int64_t c, int64_t per)
{
    for (int64_t k = 1; k < per; k++) {
        const T *DN_RESTRICT part = v + k * c;
        for (int64_t ch = 0; ch < c; ch++) v[ch] += part[ch];
    }
}

/* NSC: per-channel mean and squared deviations of the rows of group g,
 * from chunks of rows merged in order (as ncs_group_moments, but vectorised
 * across a wide row: p->wide / c rows side by side, folded into channels
 * after each pass). Each chunk sums its deviations from a centre and
 * corrects for the centre's offset (the corrected two-pass algorithm); the
 * group's first chunk takes its own mean as the centre (a first pass), the
 * others the previous chunk's mean, so that they read memory once. That
 * costs no accuracy against the result: the correction cancels (mean -
 * centre)^2 within the chunk, which, when large, is between-chunk variance
 * that the merged variance holds too. w: scratch of 3*p->wide values. */
static void FN(nsc_group_moments)(const dn_plan *p, const T *x, int64_t g,
                                  double *gmean, double *gm2, T *DN_RESTRICT w)
{
    const int64_t C = p->c, W = p->wide, per = W / C;
    T *DN_RESTRICT sum = w, *DN_RESTRICT dev = w + W, *DN_RESTRICT centre = w + 2 * W;
    int64_t lo, hi;
    double cnt = 0.0;
    dn_group_range(p, g, &lo, &hi);
    for (int64_t r0 = lo; r0 < hi; r0 += p->chunk) {
        const int64_t r1 = dn_min64(r0 + p->chunk, hi);
        const int64_t full = (r1 - r0) / per; /* whole wide rows */
        const double rows = (double)(r1 - r0), nt = cnt + rows;
        /* a multiply per channel, not a divide: wide rows make chunks short */
        const double inv_rows = 1.0 / rows;
        if (r0 == lo) {
            for (int64_t j = 0; j < W; j++) sum[j] = 0;
            /* a tile of the row at a time (the accumulators stay in L1) */
            for (int64_t j0 = 0; j0 < W; j0 += DN_ROW_TILE) {
                const int64_t j1 = dn_min64(j0 + DN_ROW_TILE, W);
                for (int64_t q = 0; q < full; q++) {
                    const T *DN_RESTRICT row = x + (r0 + q * per) * C;
                    for (int64_t j = j0; j < j1; j++) sum[j] += row[j];
                }
            }
            for (int64_t r = r0 + full * per; r < r1; r++) {
                const T *DN_RESTRICT row = x + r * C;
                for (int64_t ch = 0; ch < C; ch++) sum[ch] += row[ch];
            }
            FN(fold_wide)(sum, C, per);
            for (int64_t ch = 0; ch < C; ch++) centre[ch] = (T)((double)sum[ch] * inv_rows);
        }
        FN(widen)(p, centre);
        for (int64_t j = 0; j < W; j++) sum[j] = dev[j] = 0;
        /* From the cache (a first chunk) four wide rows per sweep, a quarter
         * of the accumulator traffic; from memory one, since one sequential
         * stream is what the prefetchers follow best (four measured 25%
         * slower over the whole kernel). */
        for (int64_t j0 = 0; j0 < W; j0 += DN_ROW_TILE) {
            const int64_t j1 = dn_min64(j0 + DN_ROW_TILE, W);
            int64_t q = 0;
            if (r0 == lo) {
                for (; q + 4 <= full; q += 4) {
                    const T *DN_RESTRICT r0w = x + (r0 + q * per) * C;
                    const T *DN_RESTRICT r1w = r0w + W, *DN_RESTRICT r2w = r0w + 2 * W;
                    const T *DN_RESTRICT r3w = r0w + 3 * W;
                    for (int64_t j = j0; j < j1; j++) {
                        const T d0 = r0w[j] - centre[j], d1 = r1w[j] - centre[j];
                        const T d2 = r2w[j] - centre[j], d3 = r3w[j] - centre[j];
                        sum[j] += (d0 + d1) + (d2 + d3);
                        dev[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
                    }
                }
            }
            for (; q < full; q++) {
                const T *DN_RESTRICT row = x + (r0 + q * per) * C;
                for (int64_t j = j0; j < j1; j++) {
                    const T d = row[j] - centre[j];
                    sum[j] += d;
                    dev[j] += d * d;
                }
            }
        }
        for (int64_t r = r0 + full * per; r < r1; r++) {
            const T *DN_RESTRICT row = x + r * C;
            for (int64_t ch = 0; ch < C; ch++) {
                const T d = row[ch] - centre[ch];
                sum[ch] += d;
                dev[ch] += d * d;
            }
        }
        FN(fold_wide)(sum, C, per);
        FN(fold_wide)(dev, C, per);
        /* dn_merge_moments, vectorised over channels */
        for (int64_t ch = 0; ch < C; ch++) {
            const double s1 = (double)sum[ch];
            const double cm = (double)centre[ch] + s1 * inv_rows;
            const double cq = (double)dev[ch] - s1 * s1 * inv_rows;
            const double prev_m = cnt > 0.0 ? gmean[ch] : 0.0;
            const double prev_q = cnt > 0.0 ? gm2[ch] : 0.0;
            const double delta = cm - prev_m;
            gmean[ch] = prev_m + delta * (rows / nt);
            gm2[ch] = prev_q + cq + delta * delta * (cnt * (rows / nt));
            centre[ch] = (T)cm; /* the next chunk's */
        }
        cnt = nt;
    }
}

/* ---- The two-pass schedule of training and backward. -------------------
 * One parallel region (three fork/joins measured slower on small tensors):
 * every group reduced, then every channel finished (its elementwise
 * constants, from the group reductions merged in group order), then the
 * elementwise pass. The bits do not depend on the threads: each group's
 * reduction and each channel's merge runs in the same order whatever the
 * team. */
typedef struct FN(pass) {
    /* group g's reduction; scratch is the calling thread's */
    void (*reduce)(const void *ctx, int64_t g, void *scratch);
    /* the constants k[q][ch] and per-channel outputs of channels [c0, c1)
     * (at most DN_FINISH_CHANNELS) */
    void (*finish)(const void *ctx, int64_t c0, int64_t c1);
    const void *ctx;
    char *scratch; /* scratch_bytes per thread */
    size_t scratch_bytes;
    FN(apply_fn) apply; /* out = apply(a, b, k); NULL: no elementwise pass */
    const T *a, *b;
    T *const *k;        /* the constants: NULL or p->wide values each */
    T *out;
} FN(pass);

static void FN(run_pass)(const dn_plan *p, const FN(pass) *ps)
{
    const int64_t G = p->groups;
    const int64_t fblocks = dn_ceil_div(p->c, DN_FINISH_CHANNELS);
    const int64_t blocks = dn_ceil_div(p->total, DN_APPLY_BLOCK);
    const int stream = dn_stream_worthwhile(p->total * (int64_t)sizeof(T));
    (void)blocks;
    DN_OMP(parallel num_threads(p->threads))
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        DN_OMP(for schedule(static))
        for (int64_t g = 0; g < G; g++)
            ps->reduce(ps->ctx, g, ps->scratch + ps->scratch_bytes * (size_t)tid);
        DN_OMP(for schedule(static))
        for (int64_t f = 0; f < fblocks; f++)
            ps->finish(ps->ctx, f * DN_FINISH_CHANNELS,
                       dn_min64((f + 1) * DN_FINISH_CHANNELS, p->c));
        if (ps->apply != NULL) {
            if (p->wide > p->c) {
                DN_OMP(single)
                FN(widen_all)(p, ps->k);
            }
            DN_OMP(for schedule(static))
            for (int64_t blk = 0; blk < blocks; blk++)
                FN(apply_range)(p, ps->apply, blk * DN_APPLY_BLOCK,
                                dn_min64((blk + 1) * DN_APPLY_BLOCK, p->total), ps->a,
                                ps->b, (const T *const *)ps->k, ps->out, stream);
            if (stream) dn_stream_fence();
        }
    }
}

/* Merges the group moments of channels [c0, c1) in group order, vectorised
 * across the channels: mean[j], m2[j] for channel c0 + j. */
static void FN(merge_groups)(const dn_plan *p, const double *gmean, const double *gm2,
                             const double *weights, int64_t c0, int64_t c1,
                             double *DN_RESTRICT mean, double *DN_RESTRICT m2)
{
    const int64_t G = p->groups, C = p->c, nc = c1 - c0;
    for (int64_t j = 0; j < nc; j++) mean[j] = m2[j] = 0.0;
    for (int64_t g = 0; g < G; g++) {
        const double w0 = weights[2 * g], w1 = weights[2 * g + 1];
        for (int64_t j = 0; j < nc; j++) {
            const int64_t at = p->nsc ? g * C + c0 + j : (c0 + j) * G + g;
            const double delta = gmean[at] - mean[j];
            mean[j] += delta * w0;
            m2[j] += gm2[at] + delta * delta * w1;
        }
    }
}

/* Adds up the three gradient sums of channels [c0, c1) in group order,
 * vectorised across the channels: sums[3*j + q] for channel c0 + j. */
static void FN(add_grad_groups)(const dn_plan *p, const double *work, int64_t c0, int64_t c1,
                                double *DN_RESTRICT sums)
{
    const int64_t G = p->groups, C = p->c, nc = c1 - c0;
    for (int64_t j = 0; j < 3 * nc; j++) sums[j] = 0.0;
    for (int64_t g = 0; g < G; g++)
        for (int64_t j = 0; j < nc; j++) {
            const double *w = work + 3 * (p->nsc ? g * C + c0 + j : (c0 + j) * G + g);
            sums[3 * j] += w[0];
            sums[3 * j + 1] += w[1];
            sums[3 * j + 2] += w[2];
        }
}

/* ---- Public API. -------------------------------------------------------- */

/* The training forward's pass: group moments in, the constants and what
 * it writes besides y out. */
typedef struct FN(train_ctx) {
    const dn_plan *p;
    const T *x;
    double *gmean, *gm2, *weights;
    const T *gamma, *beta;
    double eps, momentum;
    T *running_mean, *running_var, *save_mean, *save_invstd;
    T *const *k;
} FN(train_ctx);

static void FN(train_reduce)(const void *ctx, int64_t g, void *scratch)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    const int64_t C = o->p->c;
    if (o->p->nsc)
        FN(nsc_group_moments)(o->p, o->x, g, o->gmean + g * C, o->gm2 + g * C, (T *)scratch);
    else
        FN(ncs_group_moments)(o->p, o->x, g, o->gmean, o->gm2, (double *)scratch);
}

/* Channels [c0, c1): statistics from the group moments (merged in group
 * order), the elementwise constants k[0..3], the saved and running
 * statistics. */
static void FN(train_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    const dn_plan *p = o->p;
    T *const *k = o->k;
    double mean[DN_FINISH_CHANNELS], m2[DN_FINISH_CHANNELS];
    FN(merge_groups)(p, o->gmean, o->gm2, o->weights, c0, c1, mean, m2);
    for (int64_t ch = c0; ch < c1; ch++) {
        const double mu = mean[ch - c0];
        const double var = m2[ch - c0] / (double)p->m;
        const double invstd = 1.0 / sqrt(var + o->eps);
        k[0][ch] = (T)mu;
        k[1][ch] = (T)(mu - (double)k[0][ch]);
        k[2][ch] = (T)((o->gamma ? (double)o->gamma[ch] : 1.0) * invstd);
        k[3][ch] = o->beta ? o->beta[ch] : (T)0;
        if (o->save_mean) o->save_mean[ch] = (T)mu;
        if (o->save_invstd) o->save_invstd[ch] = (T)invstd;
        if (o->running_mean)
            o->running_mean[ch] =
                (T)((1.0 - o->momentum) * (double)o->running_mean[ch] + o->momentum * mu);
        if (o->running_var)
            o->running_var[ch] =
                (T)((1.0 - o->momentum) * (double)o->running_var[ch]
                    + o->momentum * var * ((double)p->m / (double)(p->m - 1)));
    }
}

dn_status FN(dn_batchnorm_forward_train)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *DN_RESTRICT x, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, double momentum,
    T *running_mean, T *running_var,
    T *y, T *save_mean, T *save_invstd)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    T *k[4];
    int64_t G;
    size_t scratch_bytes;
    FN(train_ctx) o;
    FN(pass) ps;
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps) || !(momentum >= 0.0 && momentum <= 1.0)) return DN_ERR_BAD_VALUE;
    if (p.m < 2) return DN_ERR_BATCH_TOO_SMALL;
    G = p.groups;
    /* per thread: NSC 3 wide rows of T, NCS c doubles (wide == c); a whole
     * number of cache lines, so that every thread's doubles stay aligned */
    scratch_bytes = dn_round_up(sizeof(T) * (size_t)(3 * p.wide), DN_CACHE_LINE);
    /* groups x channels moments, merge weights, the four per-channel
     * constants of the elementwise pass, per-thread scratch */
    o.gmean = (double *)malloc(sizeof(double) * (size_t)(2 * G * c + 2 * G)
                               + sizeof(T) * (size_t)(4 * p.wide)
                               + scratch_bytes * (size_t)p.threads);
    if (o.gmean == NULL) return DN_ERR_OUT_OF_MEMORY;
    o.gm2 = o.gmean + G * c;
    o.weights = o.gm2 + G * c;
    k[0] = (T *)(o.weights + 2 * G);
    for (int q = 1; q < 4; q++) k[q] = k[q - 1] + p.wide;
    o.p = &p;
    o.x = x;
    o.gamma = gamma;
    o.beta = beta;
    o.eps = eps;
    o.momentum = momentum;
    o.running_mean = running_mean;
    o.running_var = running_var;
    o.save_mean = save_mean;
    o.save_invstd = save_invstd;
    o.k = k;
    dn_group_weights(&p, o.weights);

    ps.reduce = FN(train_reduce);
    ps.finish = FN(train_channels);
    ps.ctx = &o;
    ps.scratch = (char *)(k[3] + p.wide);
    ps.scratch_bytes = scratch_bytes;
    ps.apply = FN(apply_train);
    ps.a = x;
    ps.b = NULL;
    ps.k = k;
    ps.out = y;
    FN(run_pass)(&p, &ps);
    free(o.gmean);
    return DN_OK;
}

dn_status FN(dn_batchnorm_forward_infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *DN_RESTRICT x, const T *DN_RESTRICT running_mean,
    const T *DN_RESTRICT running_var, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, T *y)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    T *k[4];
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL || running_mean == NULL || running_var == NULL)
        return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    k[2] = (T *)malloc(sizeof(T) * (size_t)(2 * p.wide));
    if (k[2] == NULL) return DN_ERR_OUT_OF_MEMORY;
    k[3] = k[2] + p.wide;
    k[0] = k[1] = NULL;
    for (int64_t ch = 0; ch < c; ch++) {
        const double a = (gamma ? (double)gamma[ch] : 1.0) / sqrt((double)running_var[ch] + eps);
        k[2][ch] = (T)a;
        k[3][ch] = (T)((beta ? (double)beta[ch] : 0.0) - (double)running_mean[ch] * a);
    }
    FN(apply_all)(&p, FN(apply_affine), x, NULL, k, y);
    free(k[2]);
    return DN_OK;
}

/* Gradient sums of dy, x - h and dy*(x - h): per (channel, group) for NCS,
 * per group for NSC (all channels), and combined in group order. */
static void FN(ncs_grad_group)(const dn_plan *p, const T *dy, const T *x, const T *h,
                               int64_t g, double *work)
{
    const int64_t G = p->groups;
    for (int64_t ch = 0; ch < p->c; ch++) {
        double *w = work + 3 * (ch * G + g);
        w[0] = w[1] = w[2] = 0.0;
    }
    DN_NCS_GROUP_PIECES(p, g, {
        FN(run_grad_sums)(dy + off, x + off, len, h[ch], work + 3 * (ch * G + g));
    });
}

/* NSC: per channel, rows summed in T over wide rows (as nsc_group_moments)
 * in blocks of p->chunk rows, each block then added to w in double.
 * acc: scratch of 4*p->wide values. */
static void FN(nsc_grad_group)(const dn_plan *p, const T *dy, const T *x, const T *h,
                               int64_t g, double *DN_RESTRICT w, T *DN_RESTRICT acc)
{
    const int64_t C = p->c, W = p->wide, per = W / C;
    T *DN_RESTRICT a0 = acc, *DN_RESTRICT a1 = acc + W, *DN_RESTRICT a2 = acc + 2 * W;
    T *DN_RESTRICT hw = acc + 3 * W;
    int64_t lo, hi;
    dn_group_range(p, g, &lo, &hi);
    for (int64_t ch = 0; ch < C; ch++) hw[ch] = h[ch];
    FN(widen)(p, hw);
    for (int64_t i = 0; i < 3 * C; i++) w[i] = 0.0;
    for (int64_t r0 = lo; r0 < hi; r0 += p->chunk) {
        const int64_t r1 = dn_min64(r0 + p->chunk, hi);
        const int64_t full = (r1 - r0) / per;
        for (int64_t j = 0; j < W; j++) a0[j] = a1[j] = a2[j] = 0;
        /* a tile of the row at a time: the accumulators stay in L1 */
        for (int64_t j0 = 0; j0 < W; j0 += DN_ROW_TILE) {
            const int64_t j1 = dn_min64(j0 + DN_ROW_TILE, W);
            for (int64_t q = 0; q < full; q++) {
                const T *DN_RESTRICT gr = dy + (r0 + q * per) * C;
                const T *DN_RESTRICT xr = x + (r0 + q * per) * C;
                for (int64_t j = j0; j < j1; j++) {
                    const T d = xr[j] - hw[j];
                    a0[j] += gr[j];
                    a1[j] += d;
                    a2[j] += gr[j] * d;
                }
            }
        }
        for (int64_t r = r0 + full * per; r < r1; r++) {
            const T *DN_RESTRICT gr = dy + r * C;
            const T *DN_RESTRICT xr = x + r * C;
            for (int64_t ch = 0; ch < C; ch++) {
                const T d = xr[ch] - hw[ch];
                a0[ch] += gr[ch];
                a1[ch] += d;
                a2[ch] += gr[ch] * d;
            }
        }
        FN(fold_wide)(a0, C, per);
        FN(fold_wide)(a1, C, per);
        FN(fold_wide)(a2, C, per);
        for (int64_t ch = 0; ch < C; ch++) {
            w[3 * ch] += (double)a0[ch];
            w[3 * ch + 1] += (double)a1[ch];
            w[3 * ch + 2] += (double)a2[ch];
        }
    }
}

/* The backward passes: gradient sums in, the constants and the per-channel
 * outputs out. */
typedef struct FN(grad_ctx) {
    const dn_plan *p;
    const T *dy, *x, *h; /* h: the shift of x in the sums */
    double *work;        /* 3 sums per (channel, group) */
    const T *save_invstd, *gamma;
    const T *running_var; /* frozen statistics (backward_infer) */
    double eps;
    T *dgamma, *dbeta;
    T *const *k;
} FN(grad_ctx);

static void FN(grad_reduce)(const void *ctx, int64_t g, void *scratch)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    if (o->p->nsc)
        FN(nsc_grad_group)(o->p, o->dy, o->x, o->h, g, o->work + 3 * o->p->c * g, (T *)scratch);
    else
        FN(ncs_grad_group)(o->p, o->dy, o->x, o->h, g, o->work);
}

/* Training backward, channels [c0, c1): dx = k0*dy + k1*(x - k2) + k3,
 * dgamma and dbeta. */
static void FN(backward_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    const double m = (double)o->p->m;
    T *const *k = o->k;
    double sums[3 * DN_FINISH_CHANNELS];
    FN(add_grad_groups)(o->p, o->work, c0, c1, sums);
    for (int64_t ch = c0; ch < c1; ch++) {
        const double *su = sums + 3 * (ch - c0);
        const double istd = (double)o->save_invstd[ch];
        const double g = o->gamma ? (double)o->gamma[ch] : 1.0;
        const double sdy = su[0];
        /* the saved mean is a shift: the exact mean of x is h + off */
        const double off = su[1] / m;
        const double dg = (su[2] - off * sdy) * istd;
        const double A = g * istd, B = -g * istd * istd * dg / m;
        k[0][ch] = (T)A;
        k[1][ch] = (T)B;
        k[2][ch] = o->h[ch];
        k[3][ch] = (T)(-A * sdy / m - B * off);
        if (o->dgamma) o->dgamma[ch] = (T)dg;
        if (o->dbeta) o->dbeta[ch] = (T)sdy;
    }
}

/* Frozen statistics, channels [c0, c1): dgamma and dbeta (dx = k2*dy needs
 * no sums). */
static void FN(backward_infer_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    double sums[3 * DN_FINISH_CHANNELS];
    FN(add_grad_groups)(o->p, o->work, c0, c1, sums);
    for (int64_t ch = c0; ch < c1; ch++) {
        const double istd = 1.0 / sqrt((double)o->running_var[ch] + o->eps);
        if (o->dgamma) o->dgamma[ch] = (T)(sums[3 * (ch - c0) + 2] * istd);
        if (o->dbeta) o->dbeta[ch] = (T)sums[3 * (ch - c0)];
    }
}

/* Allocates the backward workspace (group sums, `consts` per-channel
 * constants into k, per-thread scratch) and fills what ps and o share. */
static double *FN(grad_setup)(const dn_plan *p, int consts, T **k, FN(grad_ctx) *o,
                              FN(pass) *ps)
{
    /* per thread: NSC 4 wide rows of T, a whole number of cache lines */
    const size_t scratch_bytes = dn_round_up(sizeof(T) * (size_t)(4 * p->wide), DN_CACHE_LINE);
    double *work = (double *)malloc(sizeof(double) * (size_t)(3 * p->c * p->groups)
                                    + sizeof(T) * (size_t)(consts * p->wide)
                                    + scratch_bytes * (size_t)p->threads);
    if (work == NULL) return NULL;
    k[0] = (T *)(work + 3 * p->c * p->groups);
    for (int q = 1; q < consts; q++) k[q] = k[q - 1] + p->wide;
    o->p = p;
    o->work = work;
    ps->reduce = FN(grad_reduce);
    ps->ctx = o;
    ps->scratch = (char *)(k[0] + consts * p->wide);
    ps->scratch_bytes = scratch_bytes;
    return work;
}

dn_status FN(dn_batchnorm_backward)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *DN_RESTRICT dy, const T *DN_RESTRICT x,
    const T *DN_RESTRICT save_mean, const T *DN_RESTRICT save_invstd,
    const T *DN_RESTRICT gamma, T *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    double *work;
    T *k[4];
    FN(grad_ctx) o;
    FN(pass) ps;
    if (st != DN_OK) return st;
    if (dy == NULL || x == NULL || save_mean == NULL || save_invstd == NULL || dx == NULL)
        return DN_ERR_NULL_POINTER;
    work = FN(grad_setup)(&p, 4, k, &o, &ps);
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    o.dy = dy;
    o.x = x;
    o.h = save_mean;
    o.save_invstd = save_invstd;
    o.gamma = gamma;
    o.running_var = NULL;
    o.eps = 0.0;
    o.dgamma = dgamma;
    o.dbeta = dbeta;
    o.k = k;
    ps.finish = FN(backward_channels);
    ps.apply = FN(apply_backward);
    ps.a = dy;
    ps.b = x;
    ps.k = k;
    ps.out = dx;
    FN(run_pass)(&p, &ps);
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_backward_infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *DN_RESTRICT dy, const T *DN_RESTRICT x,
    const T *DN_RESTRICT running_mean, const T *DN_RESTRICT running_var,
    const T *DN_RESTRICT gamma, double eps, T *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    double *work;
    T *k[4] = {NULL, NULL, NULL, NULL};
    FN(grad_ctx) o;
    FN(pass) ps;
    if (st != DN_OK) return st;
    if (dy == NULL || running_mean == NULL || running_var == NULL) return DN_ERR_NULL_POINTER;
    if (dgamma != NULL && x == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    /* dx = k2*dy + k3, with k3 = 0 */
    work = FN(grad_setup)(&p, 2, k + 2, &o, &ps);
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    for (int64_t ch = 0; ch < c; ch++) {
        k[2][ch] = (T)((gamma ? (double)gamma[ch] : 1.0) / sqrt((double)running_var[ch] + eps));
        k[3][ch] = (T)0;
    }
    if (dgamma != NULL || dbeta != NULL) {
        /* without dgamma only sum(dy) is used, and x may be absent */
        o.dy = dy;
        o.x = x ? x : dy;
        o.h = running_mean;
        o.save_invstd = NULL;
        o.gamma = gamma;
        o.running_var = running_var;
        o.eps = eps;
        o.dgamma = dgamma;
        o.dbeta = dbeta;
        o.k = k;
        ps.finish = FN(backward_infer_channels);
        ps.apply = dx ? FN(apply_affine) : NULL;
        ps.a = dy;
        ps.b = NULL;
        ps.k = k;
        ps.out = dx;
        FN(run_pass)(&p, &ps);
    } else if (dx != NULL) {
        FN(apply_all)(&p, FN(apply_affine), dy, NULL, k, dx);
    }
    free(work);
    return DN_OK;
}

#undef DN_LANES
#undef DN_VLEN
#undef DN_VEC_FOLD
#undef DN_NCS_GROUP_PIECES
#undef DN_LANE_SUM
#undef DN_INNER
#undef DN_DEFINE_APPLY
