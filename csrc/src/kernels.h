/* The kernels that exist in several instruction-set variants, and the one
 * table of them that dispatch.c fills once per process. The drivers
 * (batchnorm.c, dropout.c: validation, workspace, threads, per-channel
 * arithmetic) are compiled once; only these inner loops are compiled per
 * instruction set. Every variant gives the same bits. Not installed. */
#ifndef DROPNORM_KERNELS_H
#define DROPNORM_KERNELS_H

#include "common.h"
#include "keep_window.h"

/* Per-channel terms of the batch-norm elementwise passes: p->wide values
 * each (in channels last, the c values repeated over a wide row), of the
 * compute type (void pointers, so that one table type serves float and
 * double; the half types, stored as uint16_t, compute in float). */

/* Training forward: y = ((x - mean_hi) - mean_lo)*scale + shift. The mean
 * is carried as two values so that x - mean keeps full precision when
 * |mean| >> std (x - mean_hi is exact there, by Sterbenz's lemma). */
typedef struct dn_train_terms {
    const void *mean_hi, *mean_lo, *scale, *shift;
} dn_train_terms;

/* Inference forward, and backward through frozen statistics (shift 0):
 * y = scale*x + shift (PyTorch's alpha and beta). */
typedef struct dn_affine_terms {
    const void *scale, *shift;
} dn_affine_terms;

/* Training backward: dx = dy_scale*dy + x_scale*(x - centre) + offset,
 * where centre is the saved mean (used as a shift; batchnorm_impl.h). */
typedef struct dn_backward_terms {
    const void *dy_scale, *x_scale, *centre, *offset;
} dn_backward_terms;

typedef enum dn_elementwise_kind {
    DN_ELEMENTWISE_TRAIN,
    DN_ELEMENTWISE_AFFINE,
    DN_ELEMENTWISE_BACKWARD
} dn_elementwise_kind;

/* The fused forward's steps after the normalisation (dn_batchnorm_*_fused),
 * on each tile of the normalised values y0 (rounded to the storage type S):
 *   t = y0 + residual, computed in T and rounded to S (as NumPy adds two
 *       float16 or bfloat16 arrays: in float32, rounded once);
 *   t = t <= 0 ? +0 : t (relu; NaN passes, -0 becomes +0);
 *   y = kept ? t*scale rounded to S (t itself when !mul) : +0, with the
 *       keep decision of the element's flat index from Philox (as
 *       dn_dropout_forward_*() on the whole tensor: offset 0).
 * mask (may be NULL) gets the packed gradient mask: bit i = 1 iff the
 * gradient passes element i (t > 0 with relu, and kept). */
typedef enum dn_drop_kind {
    DN_DROP_NONE = 0, /* p == 0: everything kept, nothing multiplied */
    DN_DROP_PHILOX,   /* 0 < p < 1 */
    DN_DROP_ALL       /* p == 1: everything dropped */
} dn_drop_kind;

typedef struct dn_fused_terms {
    const void *residual; /* n*c*s values of S, or NULL */
    int relu;
    dn_drop_kind drop;
    dn_philox_stream ps;  /* DN_DROP_PHILOX: key, stream, threshold */
    dn_keep_window_fn gen;
    /* the type's fused dropout windows of the dispatch table (whole
     * windows generated and applied in registers), or NULL (portable) */
    dn_drop_windows_fn_f32 windows_f32;
    dn_drop_windows_fn_f64 windows_f64;
    dn_drop_windows_fn_f16 windows_half; /* f16 and bf16 */
    double scale;         /* the kept values' scale, a value of T */
    int mul;              /* scale != 1 */
    uint8_t *mask;        /* the gradient mask, written; may be NULL */
} dn_fused_terms;

/* The fused backward's gradient at the normalisation's output:
 * g = gate ? dy*scale rounded to S (dy itself when !mul) : +0, with the
 * gate of each element from the fused output (y > 0: relu, with or
 * without dropout, since a kept positive value stays positive), a
 * gradient mask, the Philox decisions (dropout without relu), or all/none.
 * Two schedules, the same sums of the same values:
 *   tiles (channels first with long rows): the reduction makes g of each
 *     block of at most DN_INNER values on the stack and sums it from there;
 *     the elementwise pass makes g again, tile by tile, and writes
 *     d_residual (`g`, may be NULL) from the tile;
 *   buffer (the other schedules, whose reductions read rows with a
 *     stride): the reduction writes g into `g` (d_residual, or dx) just
 *     before summing it, and the elementwise pass reads it back as dy. */
typedef enum dn_gate_kind {
    DN_GATE_ALL = 0, /* g = dy */
    DN_GATE_NONE,    /* g = +0 (p == 1) */
    DN_GATE_Y,       /* y > 0 */
    DN_GATE_BITS,    /* a packed gradient mask */
    DN_GATE_PHILOX,  /* the dropout decisions */
    DN_GATE_ROWBITS  /* the reduction's row masks (rowbits) */
} dn_gate_kind;

typedef struct dn_grad_gate {
    dn_gate_kind kind;
    const void *dy;       /* the upstream gradient (S) */
    const void *y;        /* DN_GATE_Y: the fused output (S) */
    const uint8_t *bits;  /* DN_GATE_BITS */
    dn_philox_stream ps;  /* DN_GATE_PHILOX */
    dn_keep_window_fn gen;
    double scale;         /* a value of T */
    int mul;
    int tiles;            /* the tiles schedule */
    void *g;              /* written (S): d_residual (tiles: may be NULL), or dx */
    /* Row masks (tiles, channels first, whole rows per reduction task): the
     * reduction writes each row's gate packed from a byte of its own, row r
     * (of s = row values) at rowbits + r*rowbytes, so that no byte has two
     * writers; the elementwise pass reads them (DN_GATE_ROWBITS) instead of
     * y: a 32nd of a float tensor instead of a whole one. */
    uint8_t *rowbits_out; /* the reduction's, or NULL */
    const uint8_t *rowbits;
    int64_t row, rowbytes;
} dn_grad_gate;

/* One elementwise pass: out = f(in[, x]) with the kind's terms. */
typedef struct dn_elementwise {
    dn_elementwise_kind kind;
    const void *in; /* x (forward passes), dy (backward) */
    int64_t in_from; /* in points at flat element in_from (a tile), 0 otherwise */
    const void *x;  /* backward: the forward input */
    dn_train_terms train;
    dn_affine_terms affine;
    dn_backward_terms backward;
    const dn_fused_terms *fused; /* forward passes: the fused steps after, or NULL */
    const dn_grad_gate *gate;    /* backward, tiles schedule: `in` is made from it */
} dn_elementwise;

/* The per-channel arithmetic after the group reductions ("finishing" a
 * block of channels): in double, vectorised across channels, which is why
 * it is compiled per instruction set too. Element-type arrays are void
 * pointers; those marked "may be NULL" are optional. */

/* Training forward: the group moments merged in group order, mean and
 * biased variance, invstd = 1/sqrt(var + eps); the terms of the
 * elementwise pass (written), saved and running statistics. With mean set
 * (dn_batchnorm_forward_apply), the statistics are given instead. */
typedef struct dn_train_finish {
    double *gmean, *gm2;       /* group moments, written by group_moments */
    const double *weights;     /* dn_group_weights */
    const double *mean, *var, *var_unbiased; /* given statistics (c each), or NULL */
    const void *gamma, *beta;  /* may be NULL: 1 and 0 */
    double eps, momentum;
    void *running_mean, *running_var, *save_mean, *save_invstd; /* may be NULL */
    void *mean_hi, *mean_lo, *scale, *shift; /* the dn_train_terms, written; may be NULL */
} dn_train_finish;

/* Backward: the group sums added in group order; dgamma and dbeta (may be
 * NULL). Through batch statistics also the dn_backward_terms (written);
 * through frozen ones (running_var set) only dgamma and dbeta. Through
 * batch statistics the sums may be given instead (dn_batchnorm_backward_apply:
 * given_sums over `count` values, dgamma and dbeta from local_sums). */
typedef struct dn_grad_finish {
    double *sums;              /* written by group_grad_sums */
    const double *given_sums, *local_sums; /* planar, 3*c each, or NULL */
    double count;              /* values per channel of given_sums */
    const void *shift;         /* the h of x - h: saved or running mean */
    const void *save_invstd;   /* batch statistics */
    const void *running_var;   /* frozen statistics */
    const void *gamma;         /* may be NULL: 1 */
    double eps;                /* frozen statistics */
    void *dgamma, *dbeta;      /* may be NULL */
    void *dy_scale, *x_scale, *centre, *offset; /* batch statistics: written; may be NULL */
} dn_grad_finish;

/* Frozen statistics (inference, and the backward through them): the
 * affine terms scale = gamma/sqrt(running_var + eps) and
 * shift = beta - running_mean*scale, in double, each rounded once to T. */
typedef struct dn_frozen_finish {
    const void *running_mean;  /* may be NULL: 0 */
    const void *running_var;
    const void *gamma, *beta;  /* may be NULL: 1 and 0 */
    double eps;
    void *scale, *shift;       /* written; shift may be NULL */
} dn_frozen_finish;

/* The batch-norm kernels of one element type: tensor pointers point to
 * its storage type (float, double, or uint16_t for f16 and bf16), the
 * per-channel arrays and the terms to its compute type (float for f16 and
 * bf16); the group layout is dn_group_range's (common.h). */
typedef struct dn_bn_kernels {
    /* Reduction task t (dn_reduce_task: group g, channels [c0, c1)): the
     * per-channel count-weighted mean and sum of squared deviations of
     * group g, at gmean/gm2[ch*groups + g] (channels first) or [g*c + ch]
     * (channels last). scratch: the calling thread's. */
    void (*group_moments)(const dn_plan *p, const void *x, int64_t t, double *gmean,
                          double *gm2, void *scratch);
    /* Reduction task t's per-channel sums of dy, x - shift[ch] and
     * dy*(x - shift[ch]), three doubles at sums + 3*(ch*groups + g)
     * (channels first) or 3*(g*c + ch) (channels last). */
    void (*group_grad_sums)(const dn_plan *p, const void *dy, const void *x,
                            const void *shift, int64_t t, double *sums, void *scratch);
    /* The same sums of the gradient gate->g (dn_grad_gate), which the task
     * first writes for the elements it sums, piece by piece. */
    void (*group_gated_sums)(const dn_plan *p, const dn_grad_gate *gate, const void *x,
                             const void *shift, int64_t t, double *sums, void *scratch);
    /* The pass over flat elements [i0, i1) into out (which may be op->in or
     * op->x itself); with stream, through an L1 tile and streaming stores
     * (the caller fences). */
    void (*elementwise)(const dn_plan *p, const dn_elementwise *op, int64_t i0, int64_t i1,
                        void *out, int stream);
    /* Channels [c0, c1), at most DN_FINISH_CHANNELS of them. */
    void (*finish_train)(const dn_plan *p, const dn_train_finish *f, int64_t c0, int64_t c1);
    void (*finish_backward)(const dn_plan *p, const dn_grad_finish *f, int64_t c0, int64_t c1);
    void (*finish_backward_infer)(const dn_plan *p, const dn_grad_finish *f, int64_t c0,
                                  int64_t c1);
    void (*finish_frozen)(const dn_frozen_finish *f, int64_t c0, int64_t c1);
    /* The group moments of channels [c0, c1) merged in group order (mean,
     * m2: c1 - c0 values each) and the group sums added in group order
     * (sdy, sxc, sdyxc), as the finishes above merge and add them. */
    void (*merge_moments)(const dn_plan *p, const double *gmean, const double *gm2,
                          const double *weights, int64_t c0, int64_t c1, double *mean,
                          double *m2);
    void (*add_grad_sums)(const dn_plan *p, const double *sums, int64_t c0, int64_t c1,
                          double *sdy, double *sxc, double *sdyxc);
} dn_bn_kernels;

extern const dn_bn_kernels dn_bn_kernels_f32_portable, dn_bn_kernels_f64_portable;
extern const dn_bn_kernels dn_bn_kernels_f16_portable, dn_bn_kernels_bf16_portable;
#if defined(DN_HAVE_AVX2)
extern const dn_bn_kernels dn_bn_kernels_f32_avx2, dn_bn_kernels_f64_avx2;
extern const dn_bn_kernels dn_bn_kernels_f16_avx2, dn_bn_kernels_bf16_avx2;
#endif
#if defined(DN_HAVE_AVX512)
extern const dn_bn_kernels dn_bn_kernels_f32_avx512, dn_bn_kernels_f64_avx512;
#endif
#if defined(DN_HAVE_AVX512BF16)
extern const dn_bn_kernels dn_bn_kernels_bf16_avx512bf16;
#endif

/* The half types' conversions of arrays, as the kernels of one variant
 * convert (half.h, compiled with the variant's flags): tests compare the
 * variants, and the portable conversions, exhaustively. */
typedef struct dn_half_convert {
    void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n);
    void (*bf16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_bf16)(const float *src, uint16_t *dst, int64_t n);
} dn_half_convert;

extern const dn_half_convert dn_half_convert_portable;
#if defined(DN_HAVE_AVX2)
extern const dn_half_convert dn_half_convert_avx2;
#endif
#if defined(DN_HAVE_AVX512BF16)
extern const dn_half_convert dn_half_convert_avx512bf16;
#endif

/* Everything that depends on the instruction set, chosen together. */
typedef struct dn_kernel_table {
    const dn_bn_kernels *bn_f32, *bn_f64, *bn_f16, *bn_bf16;
    dn_keep_window_fn keep_window;
    /* NULL in the portable variant, which applies keep[] with plain loops */
    dn_drop_windows_fn_f32 drop_windows_f32;
    dn_drop_windows_fn_f64 drop_windows_f64;
    dn_drop_windows_fn_f16 drop_windows_f16;
    dn_drop_windows_fn_bf16 drop_windows_bf16;
    const dn_half_convert *half_convert; /* what the half kernels convert with */
    const char *level;             /* the level chosen: "avx512", "avx2", "portable" */
    const char *batchnorm_variant; /* the build each family runs at that level */
    const char *dropout_variant;
    const char *half_variant;      /* the conversions: "avx512bf16", "avx2" (F16C), "portable" */
} dn_kernel_table;

/* The table for this CPU, capped by the environment variable DROPNORM_SIMD
 * ("portable", "avx2", "avx512"), both read on the first call only.
 * Thread-safe. */
const dn_kernel_table *dn_kernels(void);

#endif
