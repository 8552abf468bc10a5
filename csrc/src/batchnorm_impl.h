/* The batch-norm public functions for one element type: validation, the
 * workspace, the threads and the per-channel arithmetic, compiled once;
 * the inner loops they run are the instruction-set variant's
 * (batchnorm_kernels.h, chosen in dispatch.c). batchnorm.c includes this
 * file once per type with
 *   T          the compute type (float or double), also that of the
 *              per-channel arrays (parameters, saved and running statistics)
 *   S          the storage type of the tensors when it is not T (uint16_t:
 *              the half types f16 and bf16, which compute in float)
 *   FN(name)   the name with its type suffix (name##_f32)
 *   BN_TABLE   the kernel table's member for the type (bn_f32, ..., bn_bf16)
 *   DROP_WINDOWS  the table's member of the type's fused dropout windows
 *              (drop_windows_f32, ...), DROP_FIELD dn_fused_terms' field
 *              for it (windows_f32, windows_f64, windows_half)
 * Reductions are in double between blocks; the merge of statistics is in
 * double; elementwise passes are in T, rounded once to S. */
#if !defined(S)
#  define S T
#  define DN_IMPL_S_IS_T 1
#endif

/* ---- The two-pass schedule of training and backward. -------------------
 * One team (three fork/joins measured slower on small tensors), phase by
 * phase (parallel.c): every group reduced, then every channel finished (its
 * elementwise terms, from the group reductions merged in group order), then
 * the elementwise pass. The bits do not depend on the threads: each group's
 * reduction and each channel's merge runs in the same order whatever the
 * team. */
typedef struct FN(pass) {
    /* reduction task t (dn_reduce_task); scratch is the calling thread's;
     * NULL: no reduction (the statistics or sums are given) */
    void (*reduce)(const void *ctx, int64_t t, void *scratch);
    /* the terms and per-channel outputs of channels [c0, c1) (at most
     * DN_FINISH_CHANNELS) */
    void (*finish)(const void *ctx, int64_t c0, int64_t c1);
    const void *ctx;
    char *scratch; /* scratch_bytes per thread */
    size_t scratch_bytes;
    const dn_elementwise *op; /* NULL: no elementwise pass */
    T *wide_terms[4];         /* the op's per-channel arrays, to repeat over a wide row */
    S *out;
} FN(pass);

/* Channels [c0, c1) of each per-channel array repeated over a wide row. */
static void FN(widen_terms)(const dn_plan *p, T *const *terms, int64_t c0, int64_t c1)
{
    for (int q = 0; q < 4; q++)
        if (terms[q] != NULL)
            for (int64_t at = p->c; at < p->wide; at += p->c)
                memcpy(terms[q] + at + c0, terms[q] + c0, (size_t)(c1 - c0) * sizeof(T));
}

/* What the team's tasks share: the pass and how its output is stored. */
typedef struct FN(pass_job) {
    const dn_plan *p;
    const dn_bn_kernels *kern;
    const FN(pass) *ps;
    const dn_elementwise *op;
    S *out;
    int stream;
} FN(pass_job);

static void FN(reduce_task)(const void *ctx, int64_t t, int worker)
{
    const FN(pass) *ps = ((const FN(pass_job) *)ctx)->ps;
    ps->reduce(ps->ctx, t, ps->scratch + ps->scratch_bytes * (size_t)worker);
}

/* A block of channels finished, and its terms repeated over the wide row
 * in the same task (a phase of its own cost small calls a barrier). */
static void FN(finish_task)(const void *ctx, int64_t f, int worker)
{
    const FN(pass_job) *job = (const FN(pass_job) *)ctx;
    const int64_t c0 = f * DN_FINISH_CHANNELS, c1 = dn_min64(c0 + DN_FINISH_CHANNELS, job->p->c);
    (void)worker;
    job->ps->finish(job->ps->ctx, c0, c1);
    if (job->op != NULL && job->p->wide > job->p->c)
        FN(widen_terms)(job->p, job->ps->wide_terms, c0, c1);
}

static void FN(elementwise_task)(const void *ctx, int64_t blk, int worker)
{
    const FN(pass_job) *job = (const FN(pass_job) *)ctx;
    (void)worker;
    job->kern->elementwise(job->p, job->op, blk * DN_APPLY_BLOCK,
                           dn_min64((blk + 1) * DN_APPLY_BLOCK, job->p->total), job->out,
                           job->stream);
    /* the next reader may be another thread */
    if (job->stream) dn_stream_fence();
}

static void FN(run_pass)(const dn_plan *p, const dn_bn_kernels *kern, const FN(pass) *ps)
{
    const FN(pass_job) job = {
        .p = p, .kern = kern, .ps = ps, .op = ps->op, .out = ps->out,
        .stream = dn_stream_worthwhile(p->total * (int64_t)sizeof(S)),
    };
    dn_phase phases[DN_MAX_PHASES];
    int nphases = 0;
    if (ps->reduce != NULL)
        phases[nphases++] = (dn_phase){p->groups * p->cblocks, FN(reduce_task), &job};
    phases[nphases++] =
        (dn_phase){dn_ceil_div(p->c, DN_FINISH_CHANNELS), FN(finish_task), &job};
    if (ps->op != NULL)
        phases[nphases++] =
            (dn_phase){dn_ceil_div(p->total, DN_APPLY_BLOCK), FN(elementwise_task), &job};
    dn_parallel_phases(p->threads, phases, nphases);
}

/* A workspace of `nterms` per-channel terms (p->wide values each) for an
 * elementwise pass, placed at the same place in a cache line as `like` (the
 * tensor the pass reads; dn_line_like); NULL with *st set if it cannot be
 * had, else *work is what to free. */
static T *FN(terms_workspace)(const dn_plan *p, int nterms, const void *like, void **work,
                              dn_status *st)
{
    dn_bytes need = {0, 0};
    dn_bytes_add(&need, p->wide, (size_t)nterms * sizeof(T));
    dn_bytes_add(&need, 1, DN_CACHE_LINE);
    *work = dn_workspace(&need, st);
    return *work == NULL ? NULL : (T *)dn_line_like(*work, like, sizeof(T));
}

/* ---- Training forward. -------------------------------------------------- */

typedef struct FN(train_ctx) {
    const dn_plan *p;
    const dn_bn_kernels *kern;
    const S *x;
    dn_train_finish finish;
    double *stats; /* partial_stats: the caller's 3*c doubles */
} FN(train_ctx);

/* The statistics workspace: groups x channels moments (gmean, gm2), the
 * groups' merge weights (filled), `nterms` per-channel terms (at *terms,
 * at like's place in a cache line: FN(terms_workspace)), per-thread scratch
 * (at *scratch, from a line boundary, *scratch_bytes each: NSC 3 wide rows
 * of T and a line, NCS c doubles, wide == c); NULL with *st set if it
 * cannot be had. */
static double *FN(moments_workspace)(const dn_plan *p, int nterms, const void *like, T **terms,
                                     char **scratch, size_t *scratch_bytes, dn_status *st)
{
    const int64_t G = p->groups, c = p->c;
    double *work;
    dn_bytes need = {0, 0}, thread = {0, 0};
    dn_bytes_add(&thread, p->wide, 3 * sizeof(T));
    dn_bytes_add(&thread, 1, DN_CACHE_LINE);
    *scratch_bytes = dn_cache_lines_of(&need, thread);
    dn_bytes_add(&need, c, 2 * sizeof(double) * (size_t)G);
    dn_bytes_add(&need, G, 2 * sizeof(double));
    if (nterms > 0) dn_bytes_add(&need, p->wide, (size_t)nterms * sizeof(T));
    dn_bytes_add(&need, 2, DN_CACHE_LINE);
    dn_bytes_add(&need, p->threads, *scratch_bytes);
    work = (double *)dn_workspace(&need, st);
    if (work == NULL) return NULL;
    dn_group_weights(p, work + 2 * G * c);
    *terms = (T *)dn_line_like(work + 2 * G * c + 2 * G, like, sizeof(T));
    *scratch = (char *)dn_line_up(*terms + nterms * p->wide);
    return work;
}

static void FN(train_reduce)(const void *ctx, int64_t t, void *scratch)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    o->kern->group_moments(o->p, o->x, t, o->finish.gmean, o->finish.gm2, scratch);
}

static void FN(train_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    o->kern->finish_train(o->p, &o->finish, c0, c1);
}

/* The training forward, plain (fused NULL) or with the fused block's
 * terms in its elementwise pass. */
static dn_status FN(train)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, double momentum,
    T *running_mean, T *running_var,
    S *y, T *save_mean, T *save_invstd, const dn_fused_terms *fused)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(S), &p);
    int64_t G;
    size_t scratch_bytes;
    double *work;
    T *terms;
    char *scratch;
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps) || !(momentum >= 0.0 && momentum <= 1.0)) return DN_ERR_BAD_VALUE;
    if (p.m < 2) return DN_ERR_BATCH_TOO_SMALL;
    dn_plan_short_rows(&p, DN_SHORT_ROW);
    G = p.groups;
    /* with the four per-channel terms of the elementwise pass */
    work = FN(moments_workspace)(&p, 4, x, &terms, &scratch, &scratch_bytes, &st);
    if (work == NULL) return st;
    {
        T *const mean_hi = terms, *const mean_lo = terms + p.wide;
        T *const scale = terms + 2 * p.wide, *const shift = terms + 3 * p.wide;
        double *const gmean = work, *const gm2 = work + G * c, *const weights = work + 2 * G * c;
        const FN(train_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .x = x,
            .finish = {
                .gmean = gmean, .gm2 = gm2, .weights = weights,
                .gamma = gamma, .beta = beta, .eps = eps, .momentum = momentum,
                .running_mean = running_mean, .running_var = running_var,
                .save_mean = save_mean, .save_invstd = save_invstd,
                .mean_hi = mean_hi, .mean_lo = mean_lo, .scale = scale, .shift = shift,
            },
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_TRAIN, .in = x,
            .train = {mean_hi, mean_lo, scale, shift}, .fused = fused,
        };
        const FN(pass) ps = {
            .reduce = FN(train_reduce), .finish = FN(train_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes,
            .op = &op, .wide_terms = {mean_hi, mean_lo, scale, shift}, .out = y,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_forward_train)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, double momentum,
    T *running_mean, T *running_var,
    S *y, T *save_mean, T *save_invstd)
{
    return FN(train)(n, c, s, layout, x, gamma, beta, eps, momentum, running_mean, running_var,
                     y, save_mean, save_invstd, NULL);
}

/* ---- Inference forward. ------------------------------------------------- */

typedef struct FN(frozen_ctx) {
    const dn_bn_kernels *kern;
    dn_frozen_finish finish;
} FN(frozen_ctx);

static void FN(frozen_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(frozen_ctx) *o = (const FN(frozen_ctx) *)ctx;
    o->kern->finish_frozen(&o->finish, c0, c1);
}

/* The inference forward, plain (fused NULL) or with the fused block's
 * terms in its elementwise pass: the terms, then the pass, in one team. */
static dn_status FN(infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const T *DN_RESTRICT running_mean,
    const T *DN_RESTRICT running_var, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, S *y, const dn_fused_terms *fused)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(S), &p);
    T *scale, *shift;
    void *work;
    if (st != DN_OK) return st;
    if (x == NULL || y == NULL || running_mean == NULL || running_var == NULL)
        return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    scale = FN(terms_workspace)(&p, 2, x, &work, &st);
    if (scale == NULL) return st;
    shift = scale + p.wide;
    {
        const FN(frozen_ctx) o = {
            .kern = dn_kernels()->BN_TABLE,
            .finish = {.running_mean = running_mean, .running_var = running_var,
                       .gamma = gamma, .beta = beta, .eps = eps,
                       .scale = scale, .shift = shift},
        };
        const dn_elementwise op = {.kind = DN_ELEMENTWISE_AFFINE, .in = x,
                                   .affine = {scale, shift}, .fused = fused};
        const FN(pass) ps = {
            .finish = FN(frozen_channels), .ctx = &o,
            .op = &op, .wide_terms = {scale, shift, NULL, NULL}, .out = y,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_forward_infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const T *DN_RESTRICT running_mean,
    const T *DN_RESTRICT running_var, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, S *y)
{
    return FN(infer)(n, c, s, layout, x, running_mean, running_var, gamma, beta, eps, y, NULL);
}

/* ---- Backward. -----------------------------------------------------------
 * Gradient sums of dy, x - h and dy*(x - h) per group (h: the saved mean,
 * or the running mean through frozen statistics), combined per channel in
 * group order. */

typedef struct FN(grad_ctx) {
    const dn_plan *p;
    const dn_bn_kernels *kern;
    const S *dy, *x;
    dn_grad_finish finish; /* finish.shift: the h of x - h in the sums */
    double *sums;          /* backward_reduce: the caller's 3*c doubles */
    const dn_grad_gate *gate; /* the fused backward: the gradient summed instead of dy */
    dn_frozen_finish frozen;  /* through frozen statistics: dx's scale (may be NULL) */
} FN(grad_ctx);

static void FN(grad_reduce)(const void *ctx, int64_t t, void *scratch)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    o->kern->group_grad_sums(o->p, o->dy, o->x, o->finish.shift, t, o->finish.sums, scratch);
}

static void FN(gated_reduce)(const void *ctx, int64_t t, void *scratch)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    o->kern->group_gated_sums(o->p, o->gate, o->x, o->finish.shift, t, o->finish.sums, scratch);
}

static void FN(backward_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    o->kern->finish_backward(o->p, &o->finish, c0, c1);
}

static void FN(backward_infer_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    if (o->finish.dgamma != NULL || o->finish.dbeta != NULL)
        o->kern->finish_backward_infer(o->p, &o->finish, c0, c1);
    if (o->frozen.scale != NULL) o->kern->finish_frozen(&o->frozen, c0, c1);
}

/* The backward workspace: group sums, `nterms` per-channel terms (at
 * *terms, at like's place in a cache line: FN(terms_workspace)), per-thread
 * scratch (at *scratch, from a line boundary, *scratch_bytes each); NULL
 * with *st set if it cannot be had. gated: room for nsc_grad_sums'
 * gradient. */
static double *FN(grad_workspace)(const dn_plan *p, int nterms, int gated, const void *like,
                                  T **terms, char **scratch, size_t *scratch_bytes,
                                  dn_status *st)
{
    double *work;
    dn_bytes need = {0, 0}, thread = {0, 0};
    /* per thread: NSC 4 wide rows of T (and a line, to place them at dy's
     * place in a line), and the gradient's wide rows of S */
    dn_bytes_add(&thread, p->wide, 4 * sizeof(T));
    dn_bytes_add(&thread, 1, DN_CACHE_LINE);
    if (gated && p->nsc) {
        dn_bytes_add(&thread, dn_max64(DN_GRAD_TILE_ELEMS, p->wide), sizeof(S));
        dn_bytes_add(&thread, 1, DN_ALIAS_BYTES);
    }
    *scratch_bytes = dn_cache_lines_of(&need, thread);
    dn_bytes_add(&need, p->c, 3 * sizeof(double) * (size_t)p->groups);
    if (nterms > 0) dn_bytes_add(&need, p->wide, (size_t)nterms * sizeof(T));
    dn_bytes_add(&need, 2, DN_CACHE_LINE);
    dn_bytes_add(&need, p->threads, *scratch_bytes);
    work = (double *)dn_workspace(&need, st);
    if (work == NULL) return NULL;
    *terms = (T *)dn_line_like(work + 3 * p->c * p->groups, like, sizeof(T));
    *scratch = (char *)dn_line_up(*terms + nterms * p->wide);
    return work;
}

dn_status FN(dn_batchnorm_backward)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *dy, const S *x,
    const T *DN_RESTRICT save_mean, const T *DN_RESTRICT save_invstd,
    const T *DN_RESTRICT gamma, S *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(S), &p);
    double *work;
    T *terms;
    char *scratch;
    size_t scratch_bytes;
    if (st != DN_OK) return st;
    if (dy == NULL || x == NULL || save_mean == NULL || save_invstd == NULL || dx == NULL)
        return DN_ERR_NULL_POINTER;
    dn_plan_short_rows(&p, DN_SHORT_GRAD_ROW);
    work = FN(grad_workspace)(&p, 4, 0, dy, &terms, &scratch, &scratch_bytes, &st);
    if (work == NULL) return st;
    {
        T *const dy_scale = terms, *const x_scale = terms + p.wide;
        T *const centre = terms + 2 * p.wide, *const offset = terms + 3 * p.wide;
        const FN(grad_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x,
            .finish = {
                .sums = work, .shift = save_mean, .save_invstd = save_invstd, .gamma = gamma,
                .dgamma = dgamma, .dbeta = dbeta,
                .dy_scale = dy_scale, .x_scale = x_scale, .centre = centre, .offset = offset,
            },
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_BACKWARD, .in = dy, .x = x,
            .backward = {dy_scale, x_scale, centre, offset},
        };
        const FN(pass) ps = {
            .reduce = FN(grad_reduce), .finish = FN(backward_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes, .op = &op,
            .wide_terms = {dy_scale, x_scale, centre, offset}, .out = dx,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_backward_infer)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *dy, const S *x,
    const T *DN_RESTRICT running_mean, const T *DN_RESTRICT running_var,
    const T *DN_RESTRICT gamma, double eps, S *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(S), &p);
    double *work;
    T *scale, *shift;
    char *scratch;
    size_t scratch_bytes;
    if (st != DN_OK) return st;
    if (dy == NULL || running_mean == NULL || running_var == NULL) return DN_ERR_NULL_POINTER;
    if (dgamma != NULL && x == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps)) return DN_ERR_BAD_VALUE;
    dn_plan_short_rows(&p, DN_SHORT_GRAD_ROW);
    work = FN(grad_workspace)(&p, 2, 0, dy, &scale, &scratch, &scratch_bytes, &st);
    if (work == NULL) return st;
    shift = scale + p.wide;
    {
        /* without dgamma only sum(dy) is used, and x may be absent; the
         * sums only for dgamma or dbeta */
        const int sums = dgamma != NULL || dbeta != NULL;
        const FN(grad_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x ? x : dy,
            .finish = {
                .sums = work, .shift = running_mean, .running_var = running_var,
                .gamma = gamma, .eps = eps, .dgamma = dgamma, .dbeta = dbeta,
            },
            /* dx = scale*dy + shift, shift 0 (no mean, no beta) */
            .frozen = {.running_var = running_var, .gamma = gamma, .eps = eps,
                       .scale = dx ? scale : NULL, .shift = shift},
        };
        const dn_elementwise op = {.kind = DN_ELEMENTWISE_AFFINE, .in = dy,
                                   .affine = {scale, shift}};
        const FN(pass) ps = {
            .reduce = sums ? FN(grad_reduce) : NULL, .finish = FN(backward_infer_channels),
            .ctx = &o, .scratch = scratch, .scratch_bytes = scratch_bytes,
            .op = dx ? &op : NULL, .wide_terms = {scale, shift, NULL, NULL}, .out = dx,
        };
        if (sums || dx != NULL) FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}


/* ---- Fused blocks: batch norm, residual add, ReLU, dropout. -------------
 * The forward runs the plain schedule with the fused steps on each tile of
 * the elementwise pass (dn_fused_terms, batchnorm_kernels.h' fused_tile);
 * the backward writes the gradient at the normalisation's output (g,
 * dn_grad_gate) in the reduction tasks, piece by piece just before it is
 * summed, into d_residual (which is g) or into dx, and the elementwise
 * pass reads it back as the plain backward reads dy. Both are therefore
 * the unfused composition bit for bit: the same values in the same sums. */

static int FN(bad_activation)(dn_activation activation)
{
    return (int)activation != (int)DN_ACTIVATION_NONE
           && (int)activation != (int)DN_ACTIVATION_RELU;
}

/* dropout's scale of kept values, as dn_dropout_forward_*() rounds it
 * (inverted mode): 1/(1-p) rounded to T; *mul = 0 when that is 1. */
static T FN(fused_scale)(double p, int *mul)
{
    const T scale = (p > 0.0 && p < 1.0) ? (T)(1.0 / (1.0 - p)) : (T)1;
    *mul = scale != (T)1;
    return scale;
}

static dn_fused_terms FN(fused_terms)(const S *residual, dn_activation activation, double p,
                                      uint64_t seed, uint64_t stream, uint8_t *mask)
{
    dn_fused_terms f;
    memset(&f, 0, sizeof f);
    f.residual = residual;
    f.relu = activation == DN_ACTIVATION_RELU;
    f.drop = p == 0.0 ? DN_DROP_NONE : p == 1.0 ? DN_DROP_ALL : DN_DROP_PHILOX;
    if (f.drop == DN_DROP_PHILOX) {
        f.ps = dn_philox_stream_of(p, seed, stream);
        f.gen = dn_kernels()->keep_window;
        f.DROP_FIELD = dn_kernels()->DROP_WINDOWS;
    }
    f.scale = (double)FN(fused_scale)(p, &f.mul);
    f.mask = mask;
    return f;
}

dn_status FN(dn_batchnorm_forward_train_fused)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const S *residual, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, double momentum,
    T *running_mean, T *running_var, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    S *y, T *save_mean, T *save_invstd, uint8_t *mask)
{
    dn_fused_terms f;
    if (FN(bad_activation)(activation)) return DN_ERR_BAD_MODE;
    if (!(p >= 0.0 && p <= 1.0)) return DN_ERR_BAD_VALUE;
    f = FN(fused_terms)(residual, activation, p, seed, stream, mask);
    return FN(train)(n, c, s, layout, x, gamma, beta, eps, momentum, running_mean, running_var,
                     y, save_mean, save_invstd, &f);
}

dn_status FN(dn_batchnorm_forward_infer_fused)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const S *residual, const T *DN_RESTRICT running_mean,
    const T *DN_RESTRICT running_var, const T *DN_RESTRICT gamma,
    const T *DN_RESTRICT beta, double eps, dn_activation activation, S *y)
{
    dn_fused_terms f;
    if (FN(bad_activation)(activation)) return DN_ERR_BAD_MODE;
    f = FN(fused_terms)(residual, activation, 0.0, 0, 0, NULL);
    return FN(infer)(n, c, s, layout, x, running_mean, running_var, gamma, beta, eps, y, &f);
}

dn_status FN(dn_batchnorm_backward_fused)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *dy, const S *x, const S *y, const uint8_t *DN_RESTRICT mask,
    const T *DN_RESTRICT save_mean, const T *DN_RESTRICT save_invstd,
    const T *DN_RESTRICT gamma, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    S *dx, T *dgamma, T *dbeta, S *d_residual)
{
    dn_plan pl;
    dn_status st = dn_make_plan(n, c, s, layout, sizeof(S), &pl);
    double *work;
    T *terms;
    char *scratch;
    size_t scratch_bytes;
    dn_grad_gate gate, apply;
    uint8_t *rowbits = NULL;
    if (st != DN_OK) return st;
    if (dy == NULL || x == NULL || save_mean == NULL || save_invstd == NULL || dx == NULL)
        return DN_ERR_NULL_POINTER;
    if (FN(bad_activation)(activation)) return DN_ERR_BAD_MODE;
    if (!(p >= 0.0 && p <= 1.0)) return DN_ERR_BAD_VALUE;
    /* the ReLU's gate comes from y or from the mask */
    if (activation == DN_ACTIVATION_RELU && y == NULL && mask == NULL) return DN_ERR_NULL_POINTER;
    memset(&gate, 0, sizeof gate);
    gate.dy = dy;
    gate.scale = (double)FN(fused_scale)(p, &gate.mul);
    if (mask != NULL) {
        gate.kind = DN_GATE_BITS;
        gate.bits = mask;
    } else if (activation == DN_ACTIVATION_RELU) {
        /* y > 0 iff kept and positive before the dropout (its scale is >= 1) */
        gate.kind = DN_GATE_Y;
        gate.y = y;
    } else if (p == 0.0) {
        gate.kind = DN_GATE_ALL;
    } else if (p == 1.0) {
        gate.kind = DN_GATE_NONE;
    } else {
        gate.kind = DN_GATE_PHILOX;
        gate.ps = dn_philox_stream_of(p, seed, stream);
        gate.gen = dn_kernels()->keep_window;
    }
    dn_plan_short_rows(&pl, DN_SHORT_GRAD_ROW);
    /* the tiles schedule where the reduction reads contiguous pieces, or
     * channels last where the tensors are larger than the caches and a
     * task's columns short (the gradient made twice, never stored but as
     * d_residual); else g stored. Channels last, a tensor that the caches
     * partly hold is faster stored (the elementwise pass then reads two
     * tensors, not three), and so are rows of more than DN_GATED_ROW_BYTES
     * per task (the accumulators and the gradient's buffer then crowd L1). */
    gate.tiles = pl.nsc ? pl.total * (int64_t)sizeof(S) >= DN_STREAM_MIN_BYTES
                              && dn_min64(pl.wide, pl.cblock) * (int64_t)sizeof(T)
                                     <= DN_GATED_ROW_BYTES
                        : !pl.short_rows;
    gate.g = d_residual ? (void *)d_residual : gate.tiles ? NULL : (void *)dx;
    apply = gate;
    if (gate.tiles && (pl.nsc ? pl.c % 8 == 0 : pl.row_parts == 0)
        && gate.kind != DN_GATE_BITS && gate.kind != DN_GATE_ALL
        && gate.kind != DN_GATE_NONE) {
        /* each byte of the masks made by one reduction task (whole rows;
         * channels last, blocks of channels at multiples of 8): the
         * reduction keeps the gate of y (or of Philox) as row masks for
         * the elementwise pass. Channels last they are one row, the
         * tensor's flat mask. */
        dn_bytes need = {0, 0};
        const int64_t row = pl.nsc ? pl.total : pl.s, rowbytes = (row + 7) / 8;
        dn_bytes_add(&need, pl.total / row, (size_t)rowbytes);
        rowbits = (uint8_t *)dn_workspace(&need, &st);
        if (rowbits == NULL) return st;
        gate.rowbits_out = rowbits;
        gate.row = apply.row = row;
        gate.rowbytes = apply.rowbytes = rowbytes;
        apply.kind = DN_GATE_ROWBITS;
        apply.rowbits = rowbits;
    }
    work = FN(grad_workspace)(&pl, 4, gate.tiles, x, &terms, &scratch, &scratch_bytes, &st);
    if (work == NULL) {
        free(rowbits);
        return st;
    }
    {
        T *const dy_scale = terms, *const x_scale = terms + pl.wide;
        T *const centre = terms + 2 * pl.wide, *const offset = terms + 3 * pl.wide;
        const FN(grad_ctx) o = {
            .p = &pl, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x,
            .finish = {
                .sums = work, .shift = save_mean, .save_invstd = save_invstd, .gamma = gamma,
                .dgamma = dgamma, .dbeta = dbeta,
                .dy_scale = dy_scale, .x_scale = x_scale, .centre = centre, .offset = offset,
            },
            .gate = &gate,
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_BACKWARD, .in = gate.tiles ? (const void *)dy : gate.g,
            .x = x, .backward = {dy_scale, x_scale, centre, offset},
            .gate = gate.tiles ? &apply : NULL,
        };
        const FN(pass) ps = {
            .reduce = FN(gated_reduce), .finish = FN(backward_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes, .op = &op,
            .wide_terms = {dy_scale, x_scale, centre, offset}, .out = dx,
        };
        FN(run_pass)(&pl, o.kern, &ps);
    }
    free(work);
    free(rowbits);
    return DN_OK;
}

/* ---- Training over shards (SyncBatchNorm): the pieces. ------------------
 * Each is a part of the single-process functions above, with the same
 * plans, reductions and per-channel arithmetic: training forward =
 * partial_stats, merge_stats (one shard), forward_apply; backward =
 * backward_reduce, backward_apply with count n*s; both bitwise. A shard
 * may be empty (n == 0). */

static void FN(stats_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(train_ctx) *o = (const FN(train_ctx) *)ctx;
    const int64_t c = o->p->c;
    double *stats = o->stats;
    o->kern->merge_moments(o->p, o->finish.gmean, o->finish.gm2, o->finish.weights, c0, c1,
                           stats + c + c0, stats + 2 * c + c0);
    for (int64_t ch = c0; ch < c1; ch++) stats[ch] = (double)o->p->m;
}

dn_status FN(dn_batchnorm_partial_stats)(
    int64_t n, int64_t c, int64_t s, dn_layout layout, const S *x, double *stats)
{
    dn_plan p;
    dn_status st = dn_make_plan(n == 0 ? 1 : n, c, s, layout, sizeof(S), &p);
    int64_t G;
    size_t scratch_bytes;
    double *work;
    T *terms;
    char *scratch;
    if (st != DN_OK) return st;
    if ((x == NULL && n != 0) || stats == NULL) return DN_ERR_NULL_POINTER;
    if (n == 0) {
        memset(stats, 0, sizeof(double) * 3 * (size_t)c);
        return DN_OK;
    }
    dn_plan_short_rows(&p, DN_SHORT_ROW);
    G = p.groups;
    work = FN(moments_workspace)(&p, 0, x, &terms, &scratch, &scratch_bytes, &st);
    if (work == NULL) return st;
    {
        const FN(train_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .x = x,
            .finish = {.gmean = work, .gm2 = work + G * c, .weights = work + 2 * G * c},
            .stats = stats,
        };
        const FN(pass) ps = {
            .reduce = FN(train_reduce), .finish = FN(stats_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_forward_apply)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *x, const double *mean, const double *var, const double *var_unbiased,
    const T *DN_RESTRICT gamma, const T *DN_RESTRICT beta, double eps, double momentum,
    T *running_mean, T *running_var, S *y, T *save_mean, T *save_invstd)
{
    dn_plan p;
    dn_status st = dn_make_plan(n == 0 ? 1 : n, c, s, layout, sizeof(S), &p);
    T *terms;
    void *work;
    if (st != DN_OK) return st;
    if (((x == NULL || y == NULL) && n != 0) || mean == NULL || var == NULL
        || (running_var != NULL && var_unbiased == NULL))
        return DN_ERR_NULL_POINTER;
    if (dn_bad_eps(eps) || !(momentum >= 0.0 && momentum <= 1.0)) return DN_ERR_BAD_VALUE;
    terms = FN(terms_workspace)(&p, 4, x, &work, &st);
    if (terms == NULL) return st;
    {
        T *const mean_hi = terms, *const mean_lo = terms + p.wide;
        T *const scale = terms + 2 * p.wide, *const shift = terms + 3 * p.wide;
        const FN(train_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .x = x,
            .finish = {
                .mean = mean, .var = var, .var_unbiased = var_unbiased,
                .gamma = gamma, .beta = beta, .eps = eps, .momentum = momentum,
                .running_mean = running_mean, .running_var = running_var,
                .save_mean = save_mean, .save_invstd = save_invstd,
                .mean_hi = mean_hi, .mean_lo = mean_lo, .scale = scale, .shift = shift,
            },
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_TRAIN, .in = x,
            .train = {mean_hi, mean_lo, scale, shift},
        };
        const FN(pass) ps = {
            .finish = FN(train_channels), .ctx = &o, .op = n != 0 ? &op : NULL,
            .wide_terms = {mean_hi, mean_lo, scale, shift}, .out = y,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

static void FN(grad_sums_channels)(const void *ctx, int64_t c0, int64_t c1)
{
    const FN(grad_ctx) *o = (const FN(grad_ctx) *)ctx;
    const int64_t c = o->p->c;
    double *sums = o->sums;
    o->kern->add_grad_sums(o->p, o->finish.sums, c0, c1, sums + c0, sums + c + c0,
                           sums + 2 * c + c0);
}

dn_status FN(dn_batchnorm_backward_reduce)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *dy, const S *x, const T *DN_RESTRICT save_mean, double *sums)
{
    dn_plan p;
    dn_status st = dn_make_plan(n == 0 ? 1 : n, c, s, layout, sizeof(S), &p);
    double *work;
    T *terms;
    char *scratch;
    size_t scratch_bytes;
    if (st != DN_OK) return st;
    if (((dy == NULL || x == NULL) && n != 0) || save_mean == NULL || sums == NULL)
        return DN_ERR_NULL_POINTER;
    if (n == 0) {
        memset(sums, 0, sizeof(double) * 3 * (size_t)c);
        return DN_OK;
    }
    dn_plan_short_rows(&p, DN_SHORT_GRAD_ROW);
    work = FN(grad_workspace)(&p, 0, 0, x, &terms, &scratch, &scratch_bytes, &st);
    if (work == NULL) return st;
    {
        const FN(grad_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x,
            .finish = {.sums = work, .shift = save_mean},
            .sums = sums,
        };
        const FN(pass) ps = {
            .reduce = FN(grad_reduce), .finish = FN(grad_sums_channels), .ctx = &o,
            .scratch = scratch, .scratch_bytes = scratch_bytes,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

dn_status FN(dn_batchnorm_backward_apply)(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const S *dy, const S *x,
    const T *DN_RESTRICT save_mean, const T *DN_RESTRICT save_invstd,
    const T *DN_RESTRICT gamma, const double *sums, int64_t count, const double *local_sums,
    S *dx, T *dgamma, T *dbeta)
{
    dn_plan p;
    dn_status st = dn_make_plan(n == 0 ? 1 : n, c, s, layout, sizeof(S), &p);
    T *terms;
    void *work;
    if (st != DN_OK) return st;
    if (((dy == NULL || x == NULL || dx == NULL) && n != 0) || save_mean == NULL
        || save_invstd == NULL || sums == NULL)
        return DN_ERR_NULL_POINTER;
    /* the whole batch holds this shard */
    if (count < 1 || count < (n == 0 ? 1 : p.m)) return DN_ERR_BAD_VALUE;
    terms = FN(terms_workspace)(&p, 4, dy, &work, &st);
    if (terms == NULL) return st;
    {
        T *const dy_scale = terms, *const x_scale = terms + p.wide;
        T *const centre = terms + 2 * p.wide, *const offset = terms + 3 * p.wide;
        const FN(grad_ctx) o = {
            .p = &p, .kern = dn_kernels()->BN_TABLE, .dy = dy, .x = x,
            .finish = {
                .given_sums = sums, .local_sums = local_sums, .count = (double)count,
                .shift = save_mean, .save_invstd = save_invstd, .gamma = gamma,
                .dgamma = dgamma, .dbeta = dbeta,
                .dy_scale = dy_scale, .x_scale = x_scale, .centre = centre, .offset = offset,
            },
        };
        const dn_elementwise op = {
            .kind = DN_ELEMENTWISE_BACKWARD, .in = dy, .x = x,
            .backward = {dy_scale, x_scale, centre, offset},
        };
        const FN(pass) ps = {
            .finish = FN(backward_channels), .ctx = &o, .op = n != 0 ? &op : NULL,
            .wide_terms = {dy_scale, x_scale, centre, offset}, .out = dx,
        };
        FN(run_pass)(&p, o.kern, &ps);
    }
    free(work);
    return DN_OK;
}

#if defined(DN_IMPL_S_IS_T)
#  undef S
#  undef DN_IMPL_S_IS_T
#endif
