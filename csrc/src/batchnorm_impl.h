/* The batch-norm public functions for one element type: validation, the
 * workspace, the threads and the per-channel arithmetic, compiled once;
 * the inner loops they run are the instruction-set variant's
 * (batchnorm_kernels.h, chosen in dispatch.c). batchnorm.c includes this
 * file once per type with
 *   T          the element type (float or double)
 *   FN(name)   the name with its type suffix (name##_f32)
 *   BN_TABLE   the kernel table's member for T (bn_f32, bn_f64)
 * Reductions are in double between blocks; the merge of statistics is in
 * double; elementwise passes are in T. */

/* ---- The two-pass schedule of training and backward. -------------------
 * One parallel region (three fork/joins measured slower on small tensors):
 * every group reduced, then every channel finished (its elementwise terms,
 * from the group reductions merged in group order), then the elementwise
 * pass. The bits do not depend on the threads: each group's reduction and
 * each channel's merge runs in the same order whatever the team. */
typedef struct FN(pass) {
    /* group g's reduction; scratch is the calling thread's */
    void (*reduce)(const void *ctx, int64_t g, void *scratch);
    /* the terms and per-channel outputs of channels [c0, c1) (at most
     * DN_FINISH_CHANNELS) */
    void (*finish)(const void *ctx, int64_t c0, int64_t c1);
    const void *ctx;
    char *scratch; /* scratch_bytes per thread */
    size_t scratch_bytes;
    const dn_elementwise *op; /* NULL: no elementwise pass */
    T *wide_terms[4];         /* the op's per-channel arrays, to repeat over a wide row */
    T *out;
} FN(pass);

static void FN(widen_terms)(const dn_plan *p, T *const *terms)
{
    for (int q = 0; q < 4; q++)
        if (terms[q] != NULL)
            for (int64_t j = p->c; j < p->wide; j++) terms[q][j] = terms[q][j - p->c];
}

/* The elementwise pass alone, in parallel fixed blocks. */
static void FN(elementwise_all)(const dn_plan *p, const dn_bn_kernels *kern,
                                const dn_elementwise *op, T *out)
{
    const int64_t blocks = dn_ceil_div(p->total, DN_APPLY_BLOCK);
    const int stream = dn_stream_worthwhile(p->total * (int64_t)sizeof(T));
    DN_OMP(parallel num_threads(p->threads))
    {
        DN_OMP(for schedule(static))
        for (int64_t blk = 0; blk < blocks; blk++)
            kern->elementwise(p, op, blk * DN_APPLY_BLOCK,
                              dn_min64((blk + 1) * DN_APPLY_BLOCK, p->total), out, stream);
        if (stream) dn_stream_fence();
    }
}

static void FN(run_pass)(const dn_plan *p, const dn_bn_kernels *kern, const FN(pass) *ps)
{
    const int64_t G = p->groups;
    const int64_t fblocks = dn_ceil_div(p->c, DN_FINISH_CHANNELS);
    const int64_t blocks = dn_ceil_div(p->total, DN_APPLY_BLOCK);
    const int stream = dn_stream_worthwhile(p->total * (int64_t)sizeof(T));
    (void)kern;
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
        if (ps->op != NULL) {
            if (p->wide > p->c) {
                DN_OMP(single)
                FN(widen_terms)(p, ps->wide_terms);
            }
            DN_OMP(for schedule(static))
            for (int64_t blk = 0; blk < blocks; blk++)
                kern->elementwise(p, ps->op, blk * DN_APPLY_BLOCK,
                                  dn_min64((blk + 1) * DN_APPLY_BLOCK, p->total), ps->out,
                                  stream);
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

/* ---- Training forward. -------------------------------------------------- */

typedef struct FN(train_ctx) {
    const dn_plan *p;
    const dn_bn_kernels *kern;
    const T *x;
    double *gmean, *gm2, *weights;
    const T *gamma, *beta;
    double eps, momentum;
    T *running_mean, *running_var, *save_mean, *save_invstd;
    T *mean_hi, *mean_lo, *scale, *shift; /* the elementwise terms */
} FN(train_ctx);

static void FN(train_reduce)(const void *ctx, int64_t g, void *scratch)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    o->kern->group_moments(o->p, o->x, g, o->gmean, o->gm2, scratch);
}

/* Channels [c0, c1): statistics from the group moments (merged in group
 * order), the elementwise terms, the saved and running statistics. */
static void FN(train_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    const dn_plan *p = o->p;
    double mean[DN_FINISH_CHANNELS], m2[DN_FINISH_CHANNELS];
    FN(merge_groups)(p, o->gmean, o->gm2, o->weights, c0, c1, mean, m2);
    for (int64_t ch = c0; ch < c1; ch++) {
        const double mu = mean[ch - c0];
        const double var = m2[ch - c0] / (double)p->m;
        const double invstd = 1.0 / sqrt(var + o->eps);
        o->mean_hi[ch] = (T)mu;
        o->mean_lo[ch] = (T)(mu - (double)o->mean_hi[ch]);
        o->scale[ch] = (T)((o->gamma ? (double)o->gamma[ch] : 1.0) * invstd);
        o->shift[ch] = o->beta ? o->beta[ch] : (T)0;
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
    const T *x, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, double momentum,
    T *running_mean, T *running_var,
    T *y, T *save_mean, T *save_invstd)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    int64_t G;
    size_t scratch_bytes;
    double *work;
    T *terms;
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps) || !(momentum >= 0.0 && momentum <= 1.0)) return DN_ERR_BAD_VALUE;
    if (p.m < 2) return DN_ERR_BATCH_TOO_SMALL;
    G = p.groups;
    /* per thread: NSC 3 wide rows of T, NCS c doubles (wide == c); a whole
     * number of cache lines, so that every thread's doubles stay aligned */
    scratch_bytes = dn_round_up(sizeof(T) * (size_t)(3 * p.wide), DN_CACHE_LINE);
    /* groups x channels moments, merge weights, the four per-channel terms
     * of the elementwise pass, per-thread scratch */
    work = (double *)malloc(sizeof(double) * (size_t)(2 * G * c + 2 * G)
                            + sizeof(T) * (size_t)(4 * p.wide)
                            + scratch_bytes * (size_t)p.threads);
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    terms = (T *)(work + 2 * G * c + 2 * G);
    {
        const FN(train_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .x = x,
            .gmean = work, .gm2 = work + G * c, .weights = work + 2 * G * c,
            .gamma = gamma, .beta = beta, .eps = eps, .momentum = momentum,
            .running_mean = running_mean, .running_var = running_var,
            .save_mean = save_mean, .save_invstd = save_invstd,
            .mean_hi = terms, .mean_lo = terms + p.wide,
            .scale = terms + 2 * p.wide, .shift = terms + 3 * p.wide,
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_TRAIN, .in = x,
            .train = {o.mean_hi, o.mean_lo, o.scale, o.shift},
        };
        const FN(pass) ps = {
            .reduce = FN(train_reduce), .finish = FN(train_channels), .ctx = &o,
            .scratch = (char *)(terms + 4 * p.wide), .scratch_bytes = scratch_bytes,
            .op = &op, .wide_terms = {o.mean_hi, o.mean_lo, o.scale, o.shift}, .out = y,
        };
        dn_group_weights(&p, o.weights);
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

/* ---- Inference forward. ------------------------------------------------- */

dn_status FN(dn_batchnorm_forward_infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *x, const T *DN_RESTRICT running_mean,
    const T *DN_RESTRICT running_var, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, T *y)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    T *scale, *shift;
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL || running_mean == NULL || running_var == NULL)
        return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    scale = (T *)malloc(sizeof(T) * (size_t)(2 * p.wide));
    if (scale == NULL) return DN_ERR_OUT_OF_MEMORY;
    shift = scale + p.wide;
    for (int64_t ch = 0; ch < c; ch++) {
        const double a = (gamma ? (double)gamma[ch] : 1.0) / sqrt((double)running_var[ch] + eps);
        scale[ch] = (T)a;
        shift[ch] = (T)((beta ? (double)beta[ch] : 0.0) - (double)running_mean[ch] * a);
    }
    {
        const dn_elementwise op = {.kind = DN_ELEMENTWISE_AFFINE, .in = x,
                                   .affine = {scale, shift}};
        T *const wide_terms[4] = {scale, shift, NULL, NULL};
        FN(widen_terms)(&p, wide_terms);
        FN(elementwise_all)(&p, dn_kernels()->BN_TABLE, &op, y);
    }
    free(scale);
    return DN_OK;
}

/* ---- Backward. -----------------------------------------------------------
 * Gradient sums of dy, x - h and dy*(x - h) per group (h: the saved mean,
 * or the running mean through frozen statistics), combined per channel in
 * group order. */

typedef struct FN(grad_ctx) {
    const dn_plan *p;
    const dn_bn_kernels *kern;
    const T *dy, *x, *h;  /* h: the shift of x in the sums */
    double *work;         /* 3 sums per (channel, group) */
    const T *save_invstd, *gamma;
    const T *running_var; /* frozen statistics (backward_infer) */
    double eps;
    T *dgamma, *dbeta;
    T *dy_scale, *x_scale, *centre, *offset; /* the training backward's terms */
} FN(grad_ctx);

static void FN(grad_reduce)(const void *ctx, int64_t g, void *scratch)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    o->kern->group_grad_sums(o->p, o->dy, o->x, o->h, g, o->work, scratch);
}

/* Training backward, channels [c0, c1): the terms of
 * dx = dy_scale*dy + x_scale*(x - centre) + offset, dgamma and dbeta. */
static void FN(backward_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    const double m = (double)o->p->m;
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
        o->dy_scale[ch] = (T)A;
        o->x_scale[ch] = (T)B;
        o->centre[ch] = o->h[ch];
        o->offset[ch] = (T)(-A * sdy / m - B * off);
        if (o->dgamma) o->dgamma[ch] = (T)dg;
        if (o->dbeta) o->dbeta[ch] = (T)sdy;
    }
}

/* Frozen statistics, channels [c0, c1): dgamma and dbeta (dx = scale*dy
 * needs no sums). */
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

/* The backward workspace: group sums, `nterms` per-channel terms (at
 * *terms), per-thread scratch (at *scratch, *scratch_bytes each). */
static double *FN(grad_workspace)(const dn_plan *p, int nterms, T **terms, char **scratch,
                                  size_t *scratch_bytes)
{
    double *work;
    /* per thread: NSC 4 wide rows of T, a whole number of cache lines */
    *scratch_bytes = dn_round_up(sizeof(T) * (size_t)(4 * p->wide), DN_CACHE_LINE);
    work = (double *)malloc(sizeof(double) * (size_t)(3 * p->c * p->groups)
                            + sizeof(T) * (size_t)(nterms * p->wide)
                            + *scratch_bytes * (size_t)p->threads);
    if (work == NULL) return NULL;
    *terms = (T *)(work + 3 * p->c * p->groups);
    *scratch = (char *)(*terms + nterms * p->wide);
    return work;
}

dn_status FN(dn_batchnorm_backward)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *dy, const T *x,
    const T *DN_RESTRICT save_mean, const T *DN_RESTRICT save_invstd,
    const T *DN_RESTRICT gamma, T *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    double *work;
    T *terms;
    char *scratch;
    size_t scratch_bytes;
    if (st != DN_OK) return st;
    if (dy == NULL || x == NULL || save_mean == NULL || save_invstd == NULL || dx == NULL)
        return DN_ERR_NULL_POINTER;
    work = FN(grad_workspace)(&p, 4, &terms, &scratch, &scratch_bytes);
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    {
        const FN(grad_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x, .h = save_mean,
            .work = work, .save_invstd = save_invstd, .gamma = gamma,
            .dgamma = dgamma, .dbeta = dbeta,
            .dy_scale = terms, .x_scale = terms + p.wide,
            .centre = terms + 2 * p.wide, .offset = terms + 3 * p.wide,
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_BACKWARD, .in = dy, .x = x,
            .backward = {o.dy_scale, o.x_scale, o.centre, o.offset},
        };
        const FN(pass) ps = {
            .reduce = FN(grad_reduce), .finish = FN(backward_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes, .op = &op,
            .wide_terms = {o.dy_scale, o.x_scale, o.centre, o.offset}, .out = dx,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_backward_infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const T *dy, const T *x,
    const T *DN_RESTRICT running_mean, const T *DN_RESTRICT running_var,
    const T *DN_RESTRICT gamma, double eps, T *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(T), &p);
    double *work;
    T *scale, *shift;
    char *scratch;
    size_t scratch_bytes;
    if (st != DN_OK) return st;
    if (dy == NULL || running_mean == NULL || running_var == NULL) return DN_ERR_NULL_POINTER;
    if (dgamma != NULL && x == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    /* dx = scale*dy + shift, with shift 0 */
    work = FN(grad_workspace)(&p, 2, &scale, &scratch, &scratch_bytes);
    if (work == NULL) return DN_ERR_OUT_OF_MEMORY;
    shift = scale + p.wide;
    for (int64_t ch = 0; ch < c; ch++) {
        scale[ch] = (T)((gamma ? (double)gamma[ch] : 1.0) / sqrt((double)running_var[ch] + eps));
        shift[ch] = (T)0;
    }
    {
        /* without dgamma only sum(dy) is used, and x may be absent */
        const FN(grad_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x ? x : dy,
            .h = running_mean, .work = work, .gamma = gamma, .running_var = running_var,
            .eps = eps, .dgamma = dgamma, .dbeta = dbeta,
        };
        const dn_elementwise op = {.kind = DN_ELEMENTWISE_AFFINE, .in = dy,
                                   .affine = {scale, shift}};
        const FN(pass) ps = {
            .reduce = FN(grad_reduce), .finish = FN(backward_infer_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes, .op = dx ? &op : NULL,
            .wide_terms = {scale, shift, NULL, NULL}, .out = dx,
        };
        if (dgamma != NULL || dbeta != NULL) {
            FN(run_pass)(&p, o.kern, &ps);
        } else if (dx != NULL) {
            FN(widen_terms)(&p, ps.wide_terms);
            FN(elementwise_all)(&p, o.kern, &op, dx);
        }
    }
    free(work);
    return DN_OK;
}
