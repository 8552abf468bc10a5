/* Batch-norm kernels for one element type: the single source of the f32 and
 * f64 variants. batchnorm.c includes this file once per type with
 *   T        the element type (float or double)
 *   FN(name) the name with its type suffix (name##_f32)
 * Sums run in T over short blocks and in double between them; the merge of
 * statistics is in double; elementwise passes are in T. */

/* ---- Runs: contiguous stretches of memory, plain vectorisable loops. ----
 * Sums run in T over blocks of at most DN_INNER values (so they vectorise at
 * the element type's width) and move to double between blocks; eight
 * independent lanes, combined in a fixed order. */
#define DN_LANES 8
#define DN_INNER 1024

static inline double FN(fold)(const T *a)
{
    return (((double)a[0] + (double)a[4]) + ((double)a[1] + (double)a[5]))
         + (((double)a[2] + (double)a[6]) + ((double)a[3] + (double)a[7]));
}

static double FN(run_sum)(const T *DN_RESTRICT p, int64_t len)
{
    double total = 0.0;
    for (int64_t b = 0; b < len; b += DN_INNER) {
        const T *DN_RESTRICT q = p + b;
        const int64_t n = dn_min64(DN_INNER, len - b);
        T acc[DN_LANES] = {0}, tail = 0;
        int64_t i = 0;
        for (; i + DN_LANES <= n; i += DN_LANES)
            for (int j = 0; j < DN_LANES; j++) acc[j] += q[i + j];
        for (; i < n; i++) tail += q[i];
        total += FN(fold)(acc) + (double)tail;
    }
    return total;
}

/* sums[0] += sum(x - c), sums[1] += sum((x - c)^2) */
static void FN(run_dev)(const T *DN_RESTRICT p, int64_t len, T c, double *sums)
{
    for (int64_t b = 0; b < len; b += DN_INNER) {
        const T *DN_RESTRICT q = p + b;
        const int64_t n = dn_min64(DN_INNER, len - b);
        T a1[DN_LANES] = {0}, a2[DN_LANES] = {0}, t1 = 0, t2 = 0;
        int64_t i = 0;
        for (; i + DN_LANES <= n; i += DN_LANES)
            for (int j = 0; j < DN_LANES; j++) {
                const T d = q[i + j] - c;
                a1[j] += d;
                a2[j] += d * d;
            }
        for (; i < n; i++) {
            const T d = q[i] - c;
            t1 += d;
            t2 += d * d;
        }
        sums[0] += FN(fold)(a1) + (double)t1;
        sums[1] += FN(fold)(a2) + (double)t2;
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
        T a0[DN_LANES] = {0}, a1[DN_LANES] = {0}, a2[DN_LANES] = {0};
        T t0 = 0, t1 = 0, t2 = 0;
        int64_t i = 0;
        for (; i + DN_LANES <= n; i += DN_LANES)
            for (int j = 0; j < DN_LANES; j++) {
                const T d = q[i + j] - h;
                a0[j] += g[i + j];
                a1[j] += d;
                a2[j] += g[i + j] * d;
            }
        for (; i < n; i++) {
            const T d = q[i] - h;
            t0 += g[i];
            t1 += d;
            t2 += g[i] * d;
        }
        sums[0] += FN(fold)(a0) + (double)t0;
        sums[1] += FN(fold)(a1) + (double)t1;
        sums[2] += FN(fold)(a2) + (double)t2;
    }
}

/* ---- Elementwise passes over a flat range, one source for both layouts. --
 * DN_DEFINE_APPLY(name, EXPR) defines FN(name)(p, i0, i1, a, b, k, out),
 * computing out[i] = EXPR over [i0, i1), where EXPR reads a[i], b[i] (the
 * inputs) and K(q)[ch], the per-channel constant q of channel ch. In NCS a
 * run has one channel (constants broadcast); in NSC each element its own. */
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
                const int64_t c0 = i % p->c;                                   \
                const int64_t len = dn_min64(p->c - c0, i1 - i);               \
                for (int64_t j = 0; j < len; j++) {                            \
                    const int64_t e = i + j, ch = c0 + j;                      \
                    out[e] = (EXPR);                                           \
                }                                                              \
                i += len;                                                      \
            }                                                                  \
        } else {                                                               \
            for (int64_t i = i0; i < i1;) {                                    \
                const int64_t ch = (i / p->s) % p->c;                          \
                const int64_t len = dn_min64(p->s - i % p->s, i1 - i);         \
                for (int64_t e = i; e < i + len; e++) out[e] = (EXPR);         \
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

/* Runs FN(apply)(...) over all elements in fixed blocks, in parallel. */
typedef void (*FN(apply_fn))(const dn_plan *, int64_t, int64_t, const T *,
                             const T *, const T *const *, T *);

static void FN(apply_all)(const dn_plan *p, FN(apply_fn) fn, const T *a,
                          const T *b, const T *const *k, T *out)
{
    const int64_t blocks = dn_ceil_div(p->total, DN_APPLY_BLOCK);
    (void)blocks;
    DN_OMP(parallel for num_threads(p->threads) schedule(static))
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t i0 = blk * DN_APPLY_BLOCK;
        fn(p, i0, dn_min64(i0 + DN_APPLY_BLOCK, p->total), a, b, k, out);
    }
}

/* ---- Statistics. -------------------------------------------------------- */

/* NCS: the piece [idx, hi) of channel ch (in the channel's own n*s order)
 * that is contiguous in memory; its length goes to *len. */
static inline const T *FN(ncs_run)(const dn_plan *p, const T *base, int64_t ch,
                                   int64_t idx, int64_t hi, int64_t *len)
{
    const int64_t row = idx / p->s, col = idx % p->s;
    *len = dn_min64(p->s - col, hi - idx);
    return base + (row * p->c + ch) * p->s + col;
}

/* NCS: mean and squared deviations of group g of channel ch, from two-pass
 * chunks merged in order. The second pass centres on the first pass's mean
 * rounded to T and also sums the deviations, which corrects that rounding
 * (the corrected two-pass algorithm). */
static void FN(ncs_group_moments)(const dn_plan *p, const T *x, int64_t ch,
                                  int64_t g, double *mean, double *m2)
{
    int64_t lo, hi, len = 0;
    double cnt = 0.0, gm = 0.0, gq = 0.0;
    dn_split(p->m, p->groups, g, &lo, &hi);
    for (int64_t c0 = lo; c0 < hi; c0 += p->chunk) {
        const int64_t c1 = dn_min64(c0 + p->chunk, hi);
        const double rows = (double)(c1 - c0);
        double sum = 0.0, dev[2] = {0.0, 0.0};
        T centre;
        for (int64_t i = c0; i < c1; i += len) {
            const T *run = FN(ncs_run)(p, x, ch, i, c1, &len);
            sum += FN(run_sum)(run, len);
        }
        centre = (T)(sum / rows);
        for (int64_t i = c0; i < c1; i += len) {
            const T *run = FN(ncs_run)(p, x, ch, i, c1, &len);
            FN(run_dev)(run, len, centre, dev);
        }
        dn_merge_moments(&cnt, &gm, &gq, rows, (double)centre + dev[0] / rows,
                         dev[1] - dev[0] * dev[0] / rows);
    }
    *mean = gm;
    *m2 = gq;
}

/* NSC: per-channel mean and squared deviations of the rows of group g,
 * from two-pass chunks of rows merged in order (as ncs_group_moments, but
 * vectorised across the channels of a row). sum, dev and centre are
 * scratch of p->c values each. */
static void FN(nsc_group_moments)(const dn_plan *p, const T *x, int64_t g,
                                  double *gmean, double *gm2, T *DN_RESTRICT sum,
                                  T *DN_RESTRICT dev, T *DN_RESTRICT centre)
{
    const int64_t C = p->c;
    int64_t lo, hi;
    double cnt = 0.0;
    dn_split(p->m, p->groups, g, &lo, &hi);
    for (int64_t r0 = lo; r0 < hi; r0 += p->chunk) {
        const int64_t r1 = dn_min64(r0 + p->chunk, hi);
        const double rows = (double)(r1 - r0), nt = cnt + rows;
        for (int64_t ch = 0; ch < C; ch++) sum[ch] = 0;
        for (int64_t r = r0; r < r1; r++) {
            const T *DN_RESTRICT row = x + r * C;
            for (int64_t ch = 0; ch < C; ch++) sum[ch] += row[ch];
        }
        for (int64_t ch = 0; ch < C; ch++) {
            centre[ch] = (T)((double)sum[ch] / rows);
            sum[ch] = 0;
            dev[ch] = 0;
        }
        for (int64_t r = r0; r < r1; r++) {
            const T *DN_RESTRICT row = x + r * C;
            for (int64_t ch = 0; ch < C; ch++) {
                const T d = row[ch] - centre[ch];
                sum[ch] += d;
                dev[ch] += d * d;
            }
        }
        /* dn_merge_moments, vectorised over channels */
        for (int64_t ch = 0; ch < C; ch++) {
            const double s1 = (double)sum[ch];
            const double cm = (double)centre[ch] + s1 / rows;
            const double cq = (double)dev[ch] - s1 * s1 / rows;
            const double prev_m = cnt > 0.0 ? gmean[ch] : 0.0;
            const double prev_q = cnt > 0.0 ? gm2[ch] : 0.0;
            const double delta = cm - prev_m;
            gmean[ch] = prev_m + delta * (rows / nt);
            gm2[ch] = prev_q + cq + delta * delta * (cnt * (rows / nt));
        }
        cnt = nt;
    }
}

/* ---- Public API. -------------------------------------------------------- */

/* Applies fn to every element of channel ch (NCS): one run per row. */
static void FN(apply_channel)(const dn_plan *p, FN(apply_fn) fn, int64_t ch, const T *a,
                              const T *b, const T *const *k, T *out)
{
    for (int64_t row = 0; row < p->n; row++) {
        const int64_t i0 = (row * p->c + ch) * p->s;
        fn(p, i0, i0 + p->s, a, b, k, out);
    }
}

/* What the training forward writes besides y. */
typedef struct FN(train_outputs) {
    const T *gamma, *beta;
    double eps, momentum;
    T *running_mean, *running_var, *save_mean, *save_invstd;
} FN(train_outputs);

/* Channel ch's statistics from its group moments (merged in group order):
 * the elementwise constants k[0..3][ch], the saved and running statistics. */
static void FN(train_channel)(const dn_plan *p, int64_t ch, const double *gmean,
                              const double *gm2, const FN(train_outputs) *o, T *const *k)
{
    const int64_t G = p->groups;
    double cnt = 0.0, mean = 0.0, m2 = 0.0, var, invstd;
    for (int64_t g = 0; g < G; g++) {
        const int64_t at = p->nsc ? g * p->c + ch : ch * G + g;
        int64_t lo, hi;
        dn_split(p->m, G, g, &lo, &hi);
        dn_merge_moments(&cnt, &mean, &m2, (double)(hi - lo), gmean[at], gm2[at]);
    }
    var = m2 / (double)p->m;
    invstd = 1.0 / sqrt(var + o->eps);
    k[0][ch] = (T)mean;
    k[1][ch] = (T)(mean - (double)k[0][ch]);
    k[2][ch] = (T)((o->gamma ? (double)o->gamma[ch] : 1.0) * invstd);
    k[3][ch] = o->beta ? o->beta[ch] : (T)0;
    if (o->save_mean) o->save_mean[ch] = (T)mean;
    if (o->save_invstd) o->save_invstd[ch] = (T)invstd;
    if (o->running_mean)
        o->running_mean[ch] =
            (T)((1.0 - o->momentum) * (double)o->running_mean[ch] + o->momentum * mean);
    if (o->running_var)
        o->running_var[ch] = (T)((1.0 - o->momentum) * (double)o->running_var[ch]
                                 + o->momentum * var * ((double)p->m / (double)(p->m - 1)));
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
    double *gmean, *gm2, *scratch;
    T *k[4];
    int64_t G;
    FN(train_outputs) o;
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps) || !(momentum >= 0.0 && momentum <= 1.0)) return DN_ERR_BAD_VALUE;
    if (p.m < 2) return DN_ERR_BATCH_TOO_SMALL;
    o.gamma = gamma;
    o.beta = beta;
    o.eps = eps;
    o.momentum = momentum;
    o.running_mean = running_mean;
    o.running_var = running_var;
    o.save_mean = save_mean;
    o.save_invstd = save_invstd;

    G = p.groups;
    /* groups x channels moments, per-thread chunk scratch (NSC), then the
     * four per-channel constants of the elementwise pass */
    gmean = (double *)malloc(sizeof(double) * (size_t)(2 * G * c + (p.nsc ? 3 * c * p.threads : 0))
                             + sizeof(T) * (size_t)(4 * c));
    if (gmean == NULL) return DN_ERR_OUT_OF_MEMORY;
    gm2 = gmean + G * c;
    scratch = gm2 + G * c;
    k[0] = (T *)(scratch + (p.nsc ? 3 * c * p.threads : 0));
    for (int q = 1; q < 4; q++) k[q] = k[q - 1] + c;

    if (!p.nsc && c >= p.threads) {
        /* a channel at a time: its values are still in cache when y is
         * written. Same blocks, same merge order: the same bits. */
        DN_OMP(parallel for num_threads(p.threads) schedule(dynamic, 1))
        for (int64_t ch = 0; ch < c; ch++) {
            for (int64_t g = 0; g < G; g++)
                FN(ncs_group_moments)(&p, x, ch, g, gmean + ch * G + g, gm2 + ch * G + g);
            FN(train_channel)(&p, ch, gmean, gm2, &o, k);
            FN(apply_channel)(&p, FN(apply_train), ch, x, NULL, (const T *const *)k, y);
        }
        free(gmean);
        return DN_OK;
    }
    if (p.nsc) {
        DN_OMP(parallel for num_threads(p.threads) schedule(static))
        for (int64_t g = 0; g < G; g++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            T *mine = (T *)(scratch + 3 * c * tid);
            FN(nsc_group_moments)(&p, x, g, gmean + g * c, gm2 + g * c, mine, mine + c,
                                  mine + 2 * c);
        }
    } else {
        /* moments of (channel, group) pairs; stored channel-major */
        DN_OMP(parallel for num_threads(p.threads) schedule(static))
        for (int64_t u = 0; u < c * G; u++)
            FN(ncs_group_moments)(&p, x, u / G, u % G, gmean + u, gm2 + u);
    }
    for (int64_t ch = 0; ch < c; ch++) FN(train_channel)(&p, ch, gmean, gm2, &o, k);
    FN(apply_all)(&p, FN(apply_train), x, NULL, (const T *const *)k, y);
    free(gmean);
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
    k[2] = (T *)malloc(sizeof(T) * (size_t)(2 * c));
    if (k[2] == NULL) return DN_ERR_OUT_OF_MEMORY;
    k[3] = k[2] + c;
    k[0] = k[1] = NULL;
    for (int64_t ch = 0; ch < c; ch++) {
        const double a = (gamma ? (double)gamma[ch] : 1.0) / sqrt((double)running_var[ch] + eps);
        k[2][ch] = (T)a;
        k[3][ch] = (T)((beta ? (double)beta[ch] : 0.0) - (double)running_mean[ch] * a);
    }
    FN(apply_all)(&p, FN(apply_affine), x, NULL, (const T *const *)k, y);
    free(k[2]);
    return DN_OK;
}

/* Gradient sums of dy, x - h and dy*(x - h): per (channel, group) for NCS,
 * per group for NSC (all channels), and combined in group order. */
static void FN(ncs_grad_group)(const dn_plan *p, const T *dy, const T *x, T h,
                               int64_t ch, int64_t g, double *w)
{
    int64_t lo, hi, len = 0;
    dn_split(p->m, p->groups, g, &lo, &hi);
    w[0] = w[1] = w[2] = 0.0;
    for (int64_t i = lo; i < hi; i += len) {
        const T *xr = FN(ncs_run)(p, x, ch, i, hi, &len);
        FN(run_grad_sums)(dy + (xr - x), xr, len, h, w);
    }
}

/* NSC: per channel, rows summed in T (acc: scratch of 3*p->c values) in
 * blocks of p->chunk rows, each block then added to w in double. */
static void FN(nsc_grad_group)(const dn_plan *p, const T *dy, const T *x, const T *h,
                               int64_t g, double *DN_RESTRICT w, T *DN_RESTRICT acc)
{
    const int64_t C = p->c;
    T *DN_RESTRICT a0 = acc, *DN_RESTRICT a1 = acc + C, *DN_RESTRICT a2 = acc + 2 * C;
    int64_t lo, hi;
    dn_split(p->m, p->groups, g, &lo, &hi);
    for (int64_t i = 0; i < 3 * C; i++) w[i] = 0.0;
    for (int64_t r0 = lo; r0 < hi; r0 += p->chunk) {
        const int64_t r1 = dn_min64(r0 + p->chunk, hi);
        for (int64_t ch = 0; ch < C; ch++) a0[ch] = a1[ch] = a2[ch] = 0;
        for (int64_t r = r0; r < r1; r++) {
            const T *DN_RESTRICT gr = dy + r * C;
            const T *DN_RESTRICT xr = x + r * C;
            for (int64_t ch = 0; ch < C; ch++) {
                const T d = xr[ch] - h[ch];
                a0[ch] += gr[ch];
                a1[ch] += d;
                a2[ch] += gr[ch] * d;
            }
        }
        for (int64_t ch = 0; ch < C; ch++) {
            w[3 * ch] += (double)a0[ch];
            w[3 * ch + 1] += (double)a1[ch];
            w[3 * ch + 2] += (double)a2[ch];
        }
    }
}

/* Channel ch's three sums from the group sums in work, in group order. */
static void FN(grad_channel_sums)(const dn_plan *p, const double *work, int64_t ch,
                                  double *sums)
{
    sums[0] = sums[1] = sums[2] = 0.0;
    for (int64_t g = 0; g < p->groups; g++) {
        const double *w = work + 3 * (p->nsc ? g * p->c + ch : ch * p->groups + g);
        sums[0] += w[0];
        sums[1] += w[1];
        sums[2] += w[2];
    }
}

/* All group sums into work (3*c*groups doubles), in parallel; scratch
 * holds 3*c values of T per thread (NSC). */
static void FN(grad_groups)(const dn_plan *p, const T *dy, const T *x, const T *h, double *work,
                            T *scratch)
{
    const int64_t C = p->c, G = p->groups;
    if (p->nsc) {
        DN_OMP(parallel for num_threads(p->threads) schedule(static))
        for (int64_t g = 0; g < G; g++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            FN(nsc_grad_group)(p, dy, x, h, g, work + 3 * C * g, scratch + 3 * C * tid);
        }
    } else {
        DN_OMP(parallel for num_threads(p->threads) schedule(static))
        for (int64_t u = 0; u < C * G; u++)
            FN(ncs_grad_group)(p, dy, x, h[u / G], u / G, u % G, work + 3 * u);
    }
}

/* Bytes of the workspace of the backward kernels: group sums, per-thread
 * scratch, and `consts` per-channel constants. */
static size_t FN(grad_workspace)(const dn_plan *p, int consts)
{
    return sizeof(double) * (size_t)(3 * p->c * p->groups)
         + sizeof(T) * (size_t)(3 * p->c * p->threads + consts * p->c);
}

/* Training backward constants of channel ch: dx = k0*dy + k1*(x - k2) + k3. */
static void FN(backward_channel)(const dn_plan *p, int64_t ch, const double *sums,
                                 const T *save_mean, const T *save_invstd, const T *gamma,
                                 T *dgamma, T *dbeta, T *const *k)
{
    const double m = (double)p->m, istd = (double)save_invstd[ch];
    const double g = gamma ? (double)gamma[ch] : 1.0;
    const double sdy = sums[0];
    /* save_mean is a shift: the exact mean of x is save_mean + off */
    const double off = sums[1] / m;
    const double dg = (sums[2] - off * sdy) * istd;
    const double A = g * istd, B = -g * istd * istd * dg / m;
    k[0][ch] = (T)A;
    k[1][ch] = (T)B;
    k[2][ch] = save_mean[ch];
    k[3][ch] = (T)(-A * sdy / m - B * off);
    if (dgamma) dgamma[ch] = (T)dg;
    if (dbeta) dbeta[ch] = (T)sdy;
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
    T *scratch, *k[4];
    if (st != DN_OK) return st;
    if (dy == NULL || x == NULL || save_mean == NULL || save_invstd == NULL || dx == NULL)
        return DN_ERR_NULL_POINTER;
    work = (double *)malloc(FN(grad_workspace)(&p, 4));
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    scratch = (T *)(work + 3 * c * p.groups);
    k[0] = scratch + 3 * c * p.threads;
    for (int q = 1; q < 4; q++) k[q] = k[q - 1] + c;

    if (!p.nsc && c >= p.threads) {
        /* a channel at a time, so dy and x are re-read from cache */
        DN_OMP(parallel for num_threads(p.threads) schedule(dynamic, 1))
        for (int64_t ch = 0; ch < c; ch++) {
            double sums[3];
            for (int64_t g = 0; g < p.groups; g++)
                FN(ncs_grad_group)(&p, dy, x, save_mean[ch], ch, g,
                                   work + 3 * (ch * p.groups + g));
            FN(grad_channel_sums)(&p, work, ch, sums);
            FN(backward_channel)(&p, ch, sums, save_mean, save_invstd, gamma, dgamma, dbeta, k);
            FN(apply_channel)(&p, FN(apply_backward), ch, dy, x, (const T *const *)k, dx);
        }
    } else {
        FN(grad_groups)(&p, dy, x, save_mean, work, scratch);
        for (int64_t ch = 0; ch < c; ch++) {
            double sums[3];
            FN(grad_channel_sums)(&p, work, ch, sums);
            FN(backward_channel)(&p, ch, sums, save_mean, save_invstd, gamma, dgamma, dbeta, k);
        }
        FN(apply_all)(&p, FN(apply_backward), dy, x, (const T *const *)k, dx);
    }
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
    T *scratch, *k[4];
    if (st != DN_OK) return st;
    if (dy == NULL || running_mean == NULL || running_var == NULL) return DN_ERR_NULL_POINTER;
    if (dgamma != NULL && x == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    work = (double *)malloc(FN(grad_workspace)(&p, 2));
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    scratch = (T *)(work + 3 * c * p.groups);
    k[0] = k[1] = NULL;
    k[2] = scratch + 3 * c * p.threads;
    k[3] = k[2] + c;

    if (dgamma != NULL || dbeta != NULL)
        /* without dgamma only sum(dy) is used, and x may be absent */
        FN(grad_groups)(&p, dy, x ? x : dy, running_mean, work, scratch);
    for (int64_t ch = 0; ch < c; ch++) {
        const double istd = 1.0 / sqrt((double)running_var[ch] + eps);
        double sums[3];
        k[2][ch] = (T)((gamma ? (double)gamma[ch] : 1.0) * istd);
        k[3][ch] = (T)0;
        if (dgamma != NULL || dbeta != NULL) {
            FN(grad_channel_sums)(&p, work, ch, sums);
            if (dgamma) dgamma[ch] = (T)(sums[2] * istd);
            if (dbeta) dbeta[ch] = (T)sums[0];
        }
    }
    if (dx) FN(apply_all)(&p, FN(apply_affine), dy, NULL, (const T *const *)k, dx);
    free(work);
    return DN_OK;
}

#undef DN_LANES
#undef DN_FOLD
#undef DN_DEFINE_APPLY
