/*
 * dropnorm: dropout and batch normalization for the CPU, in portable C99.
 *
 * This is the whole public C API. Every function:
 *   - has the prefix dn_, and an _f32 / _f64 / _f16 / _bf16 variant per
 *     element type (below);
 *   - returns a dn_status (DN_OK == 0); it never aborts, prints or exits,
 *     and on any error it returns before writing to any output;
 *   - takes int64_t extents and const inputs; optional arrays may be NULL.
 *
 * The tensor model: every input is viewed as three extents (n, c, s):
 * batch, channels and the product of all spatial extents (s == 1 for an
 * (N, C) input, L for (N, C, L), H*W for images, D*H*W for volumes).
 * Two C-contiguous layouts:
 *   DN_LAYOUT_NCS  channels first (NCHW): element (n, c, s) at (n*c_ + c)*s_ + s
 *   DN_LAYOUT_NSC  channels last  (NHWC): element (n, s, c) at (n*s_ + s)*c_ + c
 * Per-channel statistics are taken over the m = n*s values of a channel.
 *
 * Element types: _f32 (float) and _f64 (double) store and compute in their
 * own type. _f16 (IEEE binary16) and _bf16 (bfloat16, the upper 16 bits of
 * a float32) are storage types: C99 has none, so their tensors (x, y, dy,
 * dx) are uint16_t arrays holding the bits, while every per-channel array
 * (gamma, beta, running and saved statistics, dgamma, dbeta) is float, as
 * in PyTorch's mixed precision. They compute exactly as _f32 does (the
 * same blocks, lanes and double-precision merges, on the values converted
 * exactly to float) and round each tensor output once, to nearest even:
 * subnormals are kept (no flush to zero), overflow gives infinity
 * (binary16 from 65520 up), NaN stays a quiet NaN. So an output is the
 * exact result rounded once, give or take one neighbouring value, wherever
 * float's own rounding (about 2^-24 of the terms, e.g. gamma*(x - mu)*invstd
 * and beta) is below half a unit of the half type; a result much smaller
 * than its terms (cancellation) has float's error. A dropout mask is the
 * _f32 one of the same (seed, stream), and a kept value is the float
 * product x*scale rounded once (x's bits when nothing is multiplied).
 * Every instruction-set variant (F16C, AVX512-BF16, portable C) gives the
 * same bits. bfloat16 has float's range, and float's limits with it: a
 * block's squared deviations must stay finite in float.
 *
 * Threads: when built with OpenMP the kernels use omp_get_max_threads()
 * threads (OMP_NUM_THREADS, or dn_set_num_threads). Results are bitwise
 * identical for every thread count: reductions run over fixed blocks that
 * depend only on the shape, combined in a fixed order. A process made by
 * fork() runs the kernels on one thread: OpenMP's thread pool (libgomp's)
 * does not survive fork, and a threaded kernel in the child would wait for
 * it forever. Start worker processes with spawn (or fork and exec) to
 * give them threads.
 *
 * In-place use: a tensor output may be the very same array as a tensor
 * input of the same size (y == x; dx == dy or dx == x), which is why those
 * inputs are not declared restrict. Any other overlap between an output and
 * an input, or between two outputs, is not allowed: every array declared
 * DN_RESTRICT (per-channel vectors, packed masks) must not share a byte
 * with any array the call writes.
 */
#ifndef DROPNORM_H
#define DROPNORM_H

#include <stddef.h>
#include <stdint.h>

#include "dropnorm/version.h"

#if defined(_WIN32) && defined(DROPNORM_SHARED)
#  if defined(DROPNORM_BUILDING)
#    define DN_API __declspec(dllexport)
#  else
#    define DN_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define DN_API __attribute__((visibility("default")))
#else
#  define DN_API
#endif

/* restrict for C99 and later, and the common spelling in C++ compilers. */
#if defined(__cplusplus)
#  if defined(_MSC_VER)
#    define DN_RESTRICT __restrict
#  else
#    define DN_RESTRICT __restrict__
#  endif
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 199901L
#  define DN_RESTRICT restrict
#elif defined(_MSC_VER)
#  define DN_RESTRICT __restrict
#else
#  define DN_RESTRICT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status codes. The values are pinned: they never change between releases. */

typedef enum dn_status {
    DN_OK = 0,
    DN_ERR_NULL_POINTER = 1,     /* a required pointer is NULL */
    DN_ERR_BAD_SHAPE = 2,        /* an extent is zero or negative */
    DN_ERR_SIZE_OVERFLOW = 3,    /* n*c*s (in bytes) does not fit the address space */
    DN_ERR_BAD_LAYOUT = 4,       /* layout is not a dn_layout value */
    DN_ERR_BAD_VALUE = 5,        /* eps, momentum or p is out of range or NaN */
    DN_ERR_BATCH_TOO_SMALL = 6,  /* training statistics need m = n*s >= 2 */
    DN_ERR_OUT_OF_MEMORY = 7,    /* a small workspace could not be allocated */
    DN_ERR_BAD_MODE = 8          /* mode (activation) is not a dn_dropout_mode (dn_activation) value */
} dn_status;

/*! dn_status_str() :
 * @return a static, human-readable description of `status`
 *         ("unknown status" for a value that is not a dn_status). */
DN_API const char *dn_status_str(dn_status status);

/*! dn_version() :
 * @return the library's version as "MAJOR.MINOR.PATCH" (DN_VERSION_STRING of
 *         the build, which may differ from the header a program compiled with). */
DN_API const char *dn_version(void);

/*! dn_version_number() :
 * @return DN_VERSION_NUMBER of the build. */
DN_API int dn_version_number(void);

/* ------------------------------------------------------------------------ */
/* Threads. */

/*! dn_openmp_enabled() :
 * @return 1 if the library was built with OpenMP, 0 otherwise. */
DN_API int dn_openmp_enabled(void);

/*! dn_get_max_threads() :
 * @return the number of threads a kernel may use (1 without OpenMP, and 1
 *         in a child of fork()). */
DN_API int dn_get_max_threads(void);

/*! dn_set_num_threads() :
 * Sets the OpenMP thread count of the calling thread (omp_set_num_threads);
 * no effect without OpenMP. Results do not depend on it.
 * @return DN_OK, or DN_ERR_BAD_VALUE if n < 1. */
DN_API dn_status dn_set_num_threads(int n);

/*! dn_compiler() :
 * @return the compiler the library was built with, e.g. "GCC 12.2.0". */
DN_API const char *dn_compiler(void);

/*! dn_kernel_variant() :
 * @return the instruction-set level chosen for this process: "avx512",
 *         "avx2" (both with F16C) or "portable", the best this CPU runs
 *         unless the environment variable DROPNORM_SIMD=portable|avx2|avx512
 *         caps it (for testing). The choice is made once, on the first
 *         kernel call, and every variant gives the same bits. */
DN_API const char *dn_kernel_variant(void);

/*! dn_batchnorm_kernel_variant() :
 * @return the build of the batch-norm kernels that runs at that level:
 *         "avx2" (also under "avx512") or "portable". */
DN_API const char *dn_batchnorm_kernel_variant(void);

/*! dn_dropout_kernel_variant() :
 * @return the build of the dropout (Philox) kernels that runs at that
 *         level: "avx512", "avx2" or "portable". */
DN_API const char *dn_dropout_kernel_variant(void);

/*! dn_half_kernel_variant() :
 * @return how the _f16 and _bf16 kernels convert at that level: "avx2"
 *         (F16C for binary16, AVX2 integer arithmetic for bfloat16; also
 *         under "avx512"), "avx512bf16" (bfloat16 rounded by AVX512-BF16's
 *         vcvtneps2bf16, where the CPU has it) or "portable".
 *         DROPNORM_SIMD=avx512 keeps the level from using AVX512-BF16. */
DN_API const char *dn_half_kernel_variant(void);

/* ------------------------------------------------------------------------ */
/* Tensor layout. */

typedef enum dn_layout {
    DN_LAYOUT_NCS = 0, /* channels first: NCHW, NCL, NCDHW, NC */
    DN_LAYOUT_NSC = 1  /* channels last:  NHWC, NLC, NDHWC, NC */
} dn_layout;

/* ------------------------------------------------------------------------ */
/* Batch normalization (Ioffe & Szegedy 2015).
 *
 * Common arguments:
 *   n, c, s      extents (all >= 1); layout one of dn_layout
 *   x            input, n*c*s values
 *   gamma, beta  per-channel scale and shift (c values); NULL means 1 and 0
 *   eps          added to the variance; finite and >= 0 (0 is allowed)
 */

/*! dn_batchnorm_forward_train_f32() / _f64() / _f16() / _bf16() :
 * Training forward: per channel, the batch mean mu and biased variance var
 * over m = n*s values; invstd = 1/sqrt(var + eps);
 * y = gamma*(x - mu)*invstd + beta.
 * The statistics are exact to the element type even when |mu| >> std:
 * partial means and squared deviations per fixed block, in double, merged
 * exactly (Chan et al.).
 *   y            output, n*c*s values; may be x itself (in place)
 *   save_mean    output, c values: mu (for backward); may be NULL
 *   save_invstd  output, c values: invstd (for backward); may be NULL
 *   running_mean, running_var
 *                updated in place when not NULL (each may be NULL):
 *                running = (1 - momentum)*running + momentum*batch, with the
 *                unbiased variance var*m/(m-1) going into running_var
 *   momentum     in [0, 1]; for a cumulative average over k batches pass 1/k
 * @return DN_OK; DN_ERR_BATCH_TOO_SMALL if n*s == 1; DN_ERR_BAD_VALUE for a
 *         bad eps or momentum; DN_ERR_NULL_POINTER if x or y is NULL;
 *         DN_ERR_BAD_SHAPE, DN_ERR_SIZE_OVERFLOW, DN_ERR_BAD_LAYOUT,
 *         DN_ERR_OUT_OF_MEMORY. Nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_forward_train_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *x, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, double momentum,
    float *running_mean, float *running_var,
    float *y, float *save_mean, float *save_invstd);
DN_API dn_status dn_batchnorm_forward_train_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *x, const double *DN_RESTRICT gamma,
    const double *DN_RESTRICT beta, double eps, double momentum,
    double *running_mean, double *running_var,
    double *y, double *save_mean, double *save_invstd);
DN_API dn_status dn_batchnorm_forward_train_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, double momentum,
    float *running_mean, float *running_var,
    uint16_t *y, float *save_mean, float *save_invstd);
DN_API dn_status dn_batchnorm_forward_train_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, double momentum,
    float *running_mean, float *running_var,
    uint16_t *y, float *save_mean, float *save_invstd);

/*! dn_batchnorm_forward_infer_f32() / _f64() / _f16() / _bf16() :
 * Inference forward from frozen statistics, folded once per channel:
 * a = gamma/sqrt(running_var + eps), b = beta - running_mean*a, y = a*x + b.
 *   running_mean, running_var  c values each, required
 *   y            output, n*c*s values; may be x itself
 * @return DN_OK or an error status; nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_forward_infer_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *x, const float *DN_RESTRICT running_mean,
    const float *DN_RESTRICT running_var, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, float *y);
DN_API dn_status dn_batchnorm_forward_infer_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *x, const double *DN_RESTRICT running_mean,
    const double *DN_RESTRICT running_var, const double *DN_RESTRICT gamma,
    const double *DN_RESTRICT beta, double eps, double *y);
DN_API dn_status dn_batchnorm_forward_infer_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const float *DN_RESTRICT running_mean,
    const float *DN_RESTRICT running_var, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, uint16_t *y);
DN_API dn_status dn_batchnorm_forward_infer_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const float *DN_RESTRICT running_mean,
    const float *DN_RESTRICT running_var, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, uint16_t *y);

/*! dn_batchnorm_backward_f32() / _f64() / _f16() / _bf16() :
 * Backward through training statistics. With xhat = (x - mu)*invstd:
 * dbeta = sum(dy), dgamma = sum(dy*xhat),
 * dx = gamma*invstd/m * (m*dy - dbeta - xhat*dgamma).
 *   dy           upstream gradient, n*c*s values
 *   x            the forward input
 *   save_mean, save_invstd  c values each, from the training forward on x.
 *                save_mean is used as a shift only: the exact batch mean is
 *                recovered from x, so rounding save_mean to the element type
 *                costs no accuracy.
 *   dx           output, n*c*s values; may be dy or x itself
 *   dgamma, dbeta  outputs, c values each; each may be NULL
 * @return DN_OK or an error status; nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_backward_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *dy, const float *x,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, float *dx, float *dgamma, float *dbeta);
DN_API dn_status dn_batchnorm_backward_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *dy, const double *x,
    const double *DN_RESTRICT save_mean, const double *DN_RESTRICT save_invstd,
    const double *DN_RESTRICT gamma, double *dx, double *dgamma, double *dbeta);
DN_API dn_status dn_batchnorm_backward_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, uint16_t *dx, float *dgamma, float *dbeta);
DN_API dn_status dn_batchnorm_backward_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, uint16_t *dx, float *dgamma, float *dbeta);

/*! dn_batchnorm_backward_infer_f32() / _f64() / _f16() / _bf16() :
 * Backward through inference (frozen statistics): with
 * a = gamma/sqrt(running_var + eps), dx = a*dy; dbeta = sum(dy);
 * dgamma = sum(dy*(x - running_mean)/sqrt(running_var + eps)).
 *   x            the forward input; needed only for dgamma (may be NULL
 *                when dgamma is NULL)
 *   dx           output (may be NULL if only dgamma/dbeta are wanted; may
 *                be dy itself)
 *   dgamma, dbeta  outputs, c values each; each may be NULL
 * @return DN_OK or an error status; nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_backward_infer_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *dy, const float *x,
    const float *DN_RESTRICT running_mean, const float *DN_RESTRICT running_var,
    const float *DN_RESTRICT gamma, double eps,
    float *dx, float *dgamma, float *dbeta);
DN_API dn_status dn_batchnorm_backward_infer_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *dy, const double *x,
    const double *DN_RESTRICT running_mean, const double *DN_RESTRICT running_var,
    const double *DN_RESTRICT gamma, double eps,
    double *dx, double *dgamma, double *dbeta);
DN_API dn_status dn_batchnorm_backward_infer_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x,
    const float *DN_RESTRICT running_mean, const float *DN_RESTRICT running_var,
    const float *DN_RESTRICT gamma, double eps,
    uint16_t *dx, float *dgamma, float *dbeta);
DN_API dn_status dn_batchnorm_backward_infer_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x,
    const float *DN_RESTRICT running_mean, const float *DN_RESTRICT running_var,
    const float *DN_RESTRICT gamma, double eps,
    uint16_t *dx, float *dgamma, float *dbeta);

/* ------------------------------------------------------------------------ */
/* Batch normalization over shards (data-parallel training, SyncBatchNorm):
 * the training functions above in pieces, so that the statistics and the
 * gradient sums of several shards of one batch can be combined by the
 * caller's own communication (MPI, ...). The library does no communication.
 *
 *   forward:  dn_batchnorm_partial_stats_*() on each shard, gather the
 *             partials (3*c doubles per shard), dn_batchnorm_merge_stats()
 *             in one fixed shard order on every process, then
 *             dn_batchnorm_forward_apply_*() on each shard;
 *   backward: dn_batchnorm_backward_reduce_*() on each shard, add the sums
 *             (3*c doubles per shard) in one fixed shard order, then
 *             dn_batchnorm_backward_apply_*() on each shard with the whole
 *             batch's count.
 *
 * With one shard the pieces give bitwise what dn_batchnorm_forward_train_*()
 * and dn_batchnorm_backward_*() give. A shard may be empty (n == 0: the
 * pointers to its n*c*s values may be NULL); c, s and layout are checked as
 * elsewhere. All per-channel partials are double, in planar blocks of c. */

/*! dn_batchnorm_partial_stats_f32() / _f64() / _f16() / _bf16() :
 * One shard's per-channel statistics, reduced exactly as the training
 * forward reduces a batch.
 *   stats        output, 3*c doubles: stats[ch] the count n*s,
 *                stats[c + ch] the mean, stats[2*c + ch] the sum of squared
 *                deviations from it (M2); all 0 for an empty shard
 * @return DN_OK; DN_ERR_NULL_POINTER if stats (or x, for n > 0) is NULL;
 *         DN_ERR_BAD_SHAPE (n < 0, c < 1, s < 1), DN_ERR_SIZE_OVERFLOW,
 *         DN_ERR_BAD_LAYOUT, DN_ERR_OUT_OF_MEMORY. */
DN_API dn_status dn_batchnorm_partial_stats_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout, const float *x, double *stats);
DN_API dn_status dn_batchnorm_partial_stats_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout, const double *x, double *stats);
DN_API dn_status dn_batchnorm_partial_stats_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, const uint16_t *x, double *stats);
DN_API dn_status dn_batchnorm_partial_stats_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, const uint16_t *x, double *stats);

/*! dn_batchnorm_merge_stats() :
 * Merges k shards' partial statistics in the order given (Chan et al.;
 * empty shards are skipped), as the training forward merges its blocks.
 *   stats        k*3*c doubles: shard r's dn_batchnorm_partial_stats_*()
 *                output at stats + r*3*c
 *   mean, var    outputs, c doubles each: the whole batch's mean and biased
 *                variance
 *   var_unbiased output, c doubles, may be NULL: var*M/(M - 1) over the
 *                whole batch's M values (what running_var takes)
 * @return DN_OK; DN_ERR_BAD_SHAPE if k < 1 or c < 1; DN_ERR_SIZE_OVERFLOW;
 *         DN_ERR_NULL_POINTER; DN_ERR_BAD_VALUE if a count is negative, not
 *         a whole number or not finite; DN_ERR_BATCH_TOO_SMALL if a
 *         channel's counts add up to less than 2. Nothing is written unless
 *         DN_OK. */
DN_API dn_status dn_batchnorm_merge_stats(int64_t k, int64_t c, const double *stats,
                                          double *mean, double *var, double *var_unbiased);

/*! dn_batchnorm_forward_apply_f32() / _f64() / _f16() / _bf16() :
 * The training forward of one shard with the whole batch's statistics:
 * invstd = 1/sqrt(var + eps), y = gamma*(x - mean)*invstd + beta; saved and
 * running statistics as in dn_batchnorm_forward_train_*(), the unbiased
 * variance going into running_var.
 *   mean, var, var_unbiased  c doubles each (dn_batchnorm_merge_stats());
 *                var_unbiased may be NULL when running_var is NULL
 * Other arguments as in dn_batchnorm_forward_train_*().
 * @return as dn_batchnorm_forward_train_*() (never DN_ERR_BATCH_TOO_SMALL);
 *         DN_ERR_NULL_POINTER if mean or var is NULL, or var_unbiased with
 *         running_var set. Nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_forward_apply_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *x, const double *mean, const double *var, const double *var_unbiased,
    const float *DN_RESTRICT gamma, const float *DN_RESTRICT beta, double eps,
    double momentum, float *running_mean, float *running_var,
    float *y, float *save_mean, float *save_invstd);
DN_API dn_status dn_batchnorm_forward_apply_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *x, const double *mean, const double *var, const double *var_unbiased,
    const double *DN_RESTRICT gamma, const double *DN_RESTRICT beta, double eps,
    double momentum, double *running_mean, double *running_var,
    double *y, double *save_mean, double *save_invstd);
DN_API dn_status dn_batchnorm_forward_apply_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const double *mean, const double *var, const double *var_unbiased,
    const float *DN_RESTRICT gamma, const float *DN_RESTRICT beta, double eps,
    double momentum, float *running_mean, float *running_var,
    uint16_t *y, float *save_mean, float *save_invstd);
DN_API dn_status dn_batchnorm_forward_apply_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const double *mean, const double *var, const double *var_unbiased,
    const float *DN_RESTRICT gamma, const float *DN_RESTRICT beta, double eps,
    double momentum, float *running_mean, float *running_var,
    uint16_t *y, float *save_mean, float *save_invstd);

/*! dn_batchnorm_backward_reduce_f32() / _f64() / _f16() / _bf16() :
 * One shard's per-channel gradient sums about the saved mean h:
 *   sums         output, 3*c doubles: sums[ch] = sum(dy),
 *                sums[c + ch] = sum(x - h), sums[2*c + ch] = sum(dy*(x - h));
 *                all 0 for an empty shard. (sum(dy*xhat) over the batch is
 *                (S2 - S1*S0/M)*invstd from the batch's sums S0, S1, S2:
 *                centring on h keeps it exact when |mean| >> std.)
 *   save_mean    c values, the training forward's (the same on every shard)
 * @return DN_OK or an error status as dn_batchnorm_backward_*(). */
DN_API dn_status dn_batchnorm_backward_reduce_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *dy, const float *x, const float *DN_RESTRICT save_mean, double *sums);
DN_API dn_status dn_batchnorm_backward_reduce_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *dy, const double *x, const double *DN_RESTRICT save_mean, double *sums);
DN_API dn_status dn_batchnorm_backward_reduce_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x, const float *DN_RESTRICT save_mean, double *sums);
DN_API dn_status dn_batchnorm_backward_reduce_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x, const float *DN_RESTRICT save_mean, double *sums);

/*! dn_batchnorm_backward_apply_f32() / _f64() / _f16() / _bf16() :
 * dx of one shard from the whole batch's gradient sums, as
 * dn_batchnorm_backward_*() forms it from its own.
 *   sums         3*c doubles: the shards' dn_batchnorm_backward_reduce_*()
 *                outputs added in one fixed order
 *   count        the whole batch's values per channel, M (>= 1 and at least
 *                this shard's n*s)
 *   local_sums   3*c doubles, may be NULL (then sums): this shard's own,
 *                for dgamma and dbeta
 *   dgamma, dbeta  outputs, c values each, may be NULL: this shard's part,
 *                sum over the shard of dy*xhat and of dy (as in PyTorch's
 *                SyncBatchNorm: added over the shards they are the batch's)
 *   dx           output, n*c*s values; may be dy or x itself
 * Other arguments as in dn_batchnorm_backward_*().
 * @return DN_OK; DN_ERR_BAD_VALUE for a bad count; otherwise as
 *         dn_batchnorm_backward_*(). Nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_backward_apply_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *dy, const float *x,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, const double *sums, int64_t count,
    const double *local_sums, float *dx, float *dgamma, float *dbeta);
DN_API dn_status dn_batchnorm_backward_apply_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *dy, const double *x,
    const double *DN_RESTRICT save_mean, const double *DN_RESTRICT save_invstd,
    const double *DN_RESTRICT gamma, const double *sums, int64_t count,
    const double *local_sums, double *dx, double *dgamma, double *dbeta);
DN_API dn_status dn_batchnorm_backward_apply_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, const double *sums, int64_t count,
    const double *local_sums, uint16_t *dx, float *dgamma, float *dbeta);
DN_API dn_status dn_batchnorm_backward_apply_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, const double *sums, int64_t count,
    const double *local_sums, uint16_t *dx, float *dgamma, float *dbeta);

/* ------------------------------------------------------------------------ */
/* Fused blocks: batch norm, residual add, ReLU, dropout in one pass.
 *
 * In a residual network batch norm is followed by the shortcut's add and a
 * ReLU, and in a classifier head by a ReLU and dropout. The fused functions
 * compute, in the elementwise pass of the batch norm itself,
 *   y = dropout(act(bn(x) + residual))
 * bit for bit as the separate steps give it:
 *   y0 = bn(x), the plain function's output (rounded to the element type);
 *   t  = y0 + residual, added in the compute type and rounded once to the
 *        element type (as NumPy adds float16, and ml_dtypes bfloat16: in
 *        float32); no add when residual is NULL;
 *   u  = relu(t): +0 where t <= 0 (so -0 gives +0), t elsewhere (NaN stays
 *        NaN), with DN_ACTIVATION_RELU; u = t with DN_ACTIVATION_NONE;
 *   y  = dn_dropout_forward_*() of u in inverted mode with (p, seed,
 *        stream): decision i for the element at flat index i of the
 *        tensor in memory (either layout), kept values u*scale rounded
 *        once, scale = 1/(1-p) rounded to the compute type, dropped ones +0.
 * The gradient mask (optional, 1 bit per element, packed as dropout's
 * masks: (n*c*s + 7)/8 bytes, LSB first) has bit i = 1 iff the gradient
 * passes element i: t > 0 (with the ReLU) and kept.
 *
 * The backward gives the plain backward of the gradient at bn's output,
 *   g = gate ? dy*scale rounded to the element type (dy itself when the
 *       scale is 1) : +0,
 * as dn_dropout_backward_*() and then the ReLU's backward (dy where t > 0,
 * +0 elsewhere) give it: d_residual = g, and dx, dgamma, dbeta are
 * dn_batchnorm_backward_*() of g. The gate comes from the mask when one is
 * given; else with the ReLU from the fused output, y > 0 (kept and t > 0:
 * a kept positive value stays positive, as scale >= 1); else from the
 * dropout decisions regenerated from (seed, stream); else g = dy.
 *
 * Common arguments:
 *   residual     n*c*s values of x's layout and type, or NULL
 *   activation   DN_ACTIVATION_NONE or DN_ACTIVATION_RELU
 *   p            drop probability in [0, 1] (0: no dropout; 1: all zeros);
 *                NaN or outside is an error. seed and stream: the mask's,
 *                as in dn_dropout_forward_*()
 */

typedef enum dn_activation {
    DN_ACTIVATION_NONE = 0, /* y = t */
    DN_ACTIVATION_RELU = 1  /* y = max(t, 0), +0 where t <= 0 */
} dn_activation;

/*! dn_batchnorm_forward_train_fused_f32() / _f64() / _f16() / _bf16() :
 * dn_batchnorm_forward_train_*() followed by the fused steps above in the
 * same elementwise pass. save_mean, save_invstd and the running statistics
 * are those of dn_batchnorm_forward_train_*() on x.
 *   y            output, n*c*s values; may be x or residual itself
 *   mask         output, may be NULL: the gradient mask, (n*c*s + 7)/8 bytes
 * @return DN_OK; DN_ERR_BAD_MODE for an unknown activation;
 *         DN_ERR_BAD_VALUE for a bad eps, momentum or p; otherwise as
 *         dn_batchnorm_forward_train_*(). Nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_forward_train_fused_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *x, const float *residual, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, double momentum,
    float *running_mean, float *running_var, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    float *y, float *save_mean, float *save_invstd, uint8_t *mask);
DN_API dn_status dn_batchnorm_forward_train_fused_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *x, const double *residual, const double *DN_RESTRICT gamma,
    const double *DN_RESTRICT beta, double eps, double momentum,
    double *running_mean, double *running_var, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    double *y, double *save_mean, double *save_invstd, uint8_t *mask);
DN_API dn_status dn_batchnorm_forward_train_fused_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const uint16_t *residual, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, double momentum,
    float *running_mean, float *running_var, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    uint16_t *y, float *save_mean, float *save_invstd, uint8_t *mask);
DN_API dn_status dn_batchnorm_forward_train_fused_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const uint16_t *residual, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, double momentum,
    float *running_mean, float *running_var, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    uint16_t *y, float *save_mean, float *save_invstd, uint8_t *mask);

/*! dn_batchnorm_forward_infer_fused_f32() / _f64() / _f16() / _bf16() :
 * dn_batchnorm_forward_infer_*() followed by the residual add and the
 * activation (dropout is the identity in inference).
 *   y            output, n*c*s values; may be x or residual itself
 * @return DN_OK; DN_ERR_BAD_MODE for an unknown activation; otherwise as
 *         dn_batchnorm_forward_infer_*(). Nothing is written unless DN_OK. */
DN_API dn_status dn_batchnorm_forward_infer_fused_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *x, const float *residual, const float *DN_RESTRICT running_mean,
    const float *DN_RESTRICT running_var, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, dn_activation activation, float *y);
DN_API dn_status dn_batchnorm_forward_infer_fused_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *x, const double *residual, const double *DN_RESTRICT running_mean,
    const double *DN_RESTRICT running_var, const double *DN_RESTRICT gamma,
    const double *DN_RESTRICT beta, double eps, dn_activation activation, double *y);
DN_API dn_status dn_batchnorm_forward_infer_fused_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const uint16_t *residual, const float *DN_RESTRICT running_mean,
    const float *DN_RESTRICT running_var, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, dn_activation activation, uint16_t *y);
DN_API dn_status dn_batchnorm_forward_infer_fused_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *x, const uint16_t *residual, const float *DN_RESTRICT running_mean,
    const float *DN_RESTRICT running_var, const float *DN_RESTRICT gamma,
    const float *DN_RESTRICT beta, double eps, dn_activation activation, uint16_t *y);

/*! dn_batchnorm_backward_fused_f32() / _f64() / _f16() / _bf16() :
 * Backward of dn_batchnorm_forward_train_fused_*(): dx, dgamma, dbeta of g
 * (above) through the batch statistics, as dn_batchnorm_backward_*() gives
 * them for dy = g, and d_residual = g.
 *   dy           upstream gradient at the fused output y
 *   x            the forward input
 *   y            the fused output; needed with DN_ACTIVATION_RELU unless
 *                mask is given (may be NULL otherwise)
 *   mask         the forward's gradient mask, or NULL
 *   activation, p, seed, stream  the forward's
 *   save_mean, save_invstd, gamma  as in dn_batchnorm_backward_*()
 *   dx           output, n*c*s values; may be dy itself (not x)
 *   dgamma, dbeta  outputs, c values each; each may be NULL
 *   d_residual   output, n*c*s values, or NULL; may be dy itself when dx
 *                is not
 * @return DN_OK; DN_ERR_NULL_POINTER also for the ReLU without y or mask;
 *         DN_ERR_BAD_MODE for an unknown activation; DN_ERR_BAD_VALUE for
 *         a bad p; otherwise as dn_batchnorm_backward_*(). Nothing is
 *         written unless DN_OK. */
DN_API dn_status dn_batchnorm_backward_fused_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const float *dy, const float *x, const float *y, const uint8_t *DN_RESTRICT mask,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    float *dx, float *dgamma, float *dbeta, float *d_residual);
DN_API dn_status dn_batchnorm_backward_fused_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const double *dy, const double *x, const double *y, const uint8_t *DN_RESTRICT mask,
    const double *DN_RESTRICT save_mean, const double *DN_RESTRICT save_invstd,
    const double *DN_RESTRICT gamma, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    double *dx, double *dgamma, double *dbeta, double *d_residual);
DN_API dn_status dn_batchnorm_backward_fused_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x, const uint16_t *y, const uint8_t *DN_RESTRICT mask,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    uint16_t *dx, float *dgamma, float *dbeta, uint16_t *d_residual);
DN_API dn_status dn_batchnorm_backward_fused_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout,
    const uint16_t *dy, const uint16_t *x, const uint16_t *y, const uint8_t *DN_RESTRICT mask,
    const float *DN_RESTRICT save_mean, const float *DN_RESTRICT save_invstd,
    const float *DN_RESTRICT gamma, dn_activation activation,
    double p, uint64_t seed, uint64_t stream,
    uint16_t *dx, float *dgamma, float *dbeta, uint16_t *d_residual);

/* ------------------------------------------------------------------------ */
/* Dropout (Hinton et al. 2012; Srivastava et al. 2014).
 *
 * Keep decisions come from the counter-based generator Philox4x32-10, so a
 * mask is a pure function of (seed, stream, index): the same for any thread
 * count, and regenerated in backward instead of stored. Decision i (element
 * i, or pair (n, c) as i = n*c_ + c in channel dropout):
 *   key     = (lo32(seed), hi32(seed))
 *   counter = (lo32(i/4), hi32(i/4), lo32(stream), hi32(stream))
 *   i is dropped iff word i%4 of the output < threshold = floor(p * 2^32);
 *   p == 1 drops everything, p == 0 nothing.
 * Give successive calls with one seed successive streams (a layer advances
 * its stream by one per forward call) so that no two share a mask.
 *
 * Packed masks: 1 bit per decision, 1 = kept, LSB first within each byte,
 * (bits + 7)/8 bytes; the unused high bits of the last byte are written as 0
 * and ignored when read.
 *
 * Common arguments:
 *   n, c, s, layout  the tensor (extents >= 1, layout a dn_layout). For
 *                elementwise dropout only the count n*c*s matters (pass
 *                (count, 1, 1, DN_LAYOUT_NCS)): decision i is for the
 *                element at flat index i.
 *   channelwise  0: one decision per element (n*c*s bits);
 *                1: channel ("spatial") dropout as in Dropout1d/2d/3d, one
 *                decision per (n, c), applied to all s values of that
 *                channel in either layout (n*c bits)
 *   p            drop probability in [0, 1]; NaN or outside is an error
 *   mode         DN_DROPOUT_INVERTED: training y = x*keep*scale with
 *                scale = 1/(1-p) computed in double and rounded once to the
 *                compute type (float for _f16 and _bf16); inference y = x.
 *                DN_DROPOUT_CLASSIC (the 2012 paper): training y = x*keep;
 *                inference y = x*(1-p), (1-p) rounded to the compute type.
 * Dropped places are exactly +0 (selected, not multiplied: NaN or inf at a
 * dropped place gives 0). p == 0 in training copies x bitwise; p == 1 gives
 * all zeros (in classic inference too), never inf or NaN.
 */

typedef enum dn_dropout_mode {
    DN_DROPOUT_INVERTED = 0, /* scale kept values by 1/(1-p) in training */
    DN_DROPOUT_CLASSIC = 1   /* scale by (1-p) in inference */
} dn_dropout_mode;

/*! dn_philox4x32_10() :
 * The Philox4x32-10 block function (Salmon et al., SC'11; Random123):
 * out = philox4x32_10(ctr, key): 10 rounds, multipliers 0xD2511F53 and
 * 0xCD9E8D57, key increments 0x9E3779B9 and 0xBB67AE85. out may be ctr.
 * @return nothing; it cannot fail. */
DN_API void dn_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/*! dn_dropout_mask() :
 * The packed keep mask of decisions 0 .. n-1 for (p, seed, stream).
 *   n            number of decisions (>= 1)
 *   mask         output, (n + 7)/8 bytes
 * @return DN_OK; DN_ERR_BAD_SHAPE if n < 1; DN_ERR_SIZE_OVERFLOW;
 *         DN_ERR_NULL_POINTER if mask is NULL; DN_ERR_BAD_VALUE for a bad p.
 *         Nothing is written unless DN_OK. */
DN_API dn_status dn_dropout_mask(int64_t n, double p, uint64_t seed, uint64_t stream,
                                 uint8_t *mask);

/*! dn_dropout_mask_offset() :
 * dn_dropout_mask() of decisions offset .. offset + n - 1 of the whole
 * mask: bit i is decision offset + i, so a shard of a batch that starts at
 * decision `offset` gets exactly its slice of the whole batch's mask
 * (any offset, not only multiples of 4 or 8).
 * @return as dn_dropout_mask(); DN_ERR_BAD_VALUE also if offset + n
 *         exceeds 2^64. */
DN_API dn_status dn_dropout_mask_offset(int64_t n, double p, uint64_t seed, uint64_t stream,
                                        uint64_t offset, uint8_t *mask);

/*! dn_dropout_forward_f32() / _f64() / _f16() / _bf16() :
 * Dropout forward, training (training != 0) or inference (training == 0).
 *   x            input, n*c*s values
 *   y            output, n*c*s values; may be x itself (in place)
 *   mask         output, may be NULL: the packed keep mask of the call
 *                (n*c*s bits, or n*c with channelwise); all ones in
 *                inference. It is what dn_dropout_backward_*() and
 *                dn_dropout_apply_mask_*() take.
 * @return DN_OK; DN_ERR_NULL_POINTER if x or y is NULL; DN_ERR_BAD_VALUE for
 *         a bad p; DN_ERR_BAD_MODE; DN_ERR_BAD_SHAPE, DN_ERR_SIZE_OVERFLOW,
 *         DN_ERR_BAD_LAYOUT. Nothing is written unless DN_OK. */
DN_API dn_status dn_dropout_forward_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const float *x, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, int training, float *y, uint8_t *mask);
DN_API dn_status dn_dropout_forward_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const double *x, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, int training, double *y, uint8_t *mask);
DN_API dn_status dn_dropout_forward_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *x, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, int training, uint16_t *y, uint8_t *mask);
DN_API dn_status dn_dropout_forward_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *x, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, int training, uint16_t *y, uint8_t *mask);

/*! dn_dropout_forward_offset_f32() / _f64() / _f16() / _bf16() :
 * dn_dropout_forward_*() for a shard of a batch: decision i of this tensor
 * is decision offset + i of the whole batch's (elements, or (n, c) pairs
 * with channelwise), so the shards' outputs and masks, put together, are
 * bitwise those of one call on the whole batch. The returned mask holds
 * this tensor's decisions only (bit 0 is decision offset).
 * @return as dn_dropout_forward_*(); DN_ERR_BAD_VALUE also if offset plus
 *         the number of decisions exceeds 2^64. */
DN_API dn_status dn_dropout_forward_offset_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const float *x, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, int training, float *y, uint8_t *mask);
DN_API dn_status dn_dropout_forward_offset_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const double *x, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, int training, double *y, uint8_t *mask);
DN_API dn_status dn_dropout_forward_offset_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *x, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, int training, uint16_t *y, uint8_t *mask);
DN_API dn_status dn_dropout_forward_offset_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *x, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, int training, uint16_t *y, uint8_t *mask);

/*! dn_dropout_apply_mask_f32() / _f64() / _f16() / _bf16() :
 * Training forward with a caller's mask instead of (seed, stream):
 * y = x*keep*scale, scale = 1/(1-p) (inverted) or 1 (classic); p sets only
 * the scale (p == 1 gives zeros whatever the mask).
 *   mask         the packed keep mask, (bits + 7)/8 bytes with bits =
 *                n*c*s, or n*c with channelwise
 *   y            output, n*c*s values; may be x itself (in place)
 * @return DN_OK; DN_ERR_NULL_POINTER if x, mask or y is NULL; otherwise as
 *         dn_dropout_forward_*(). Nothing is written unless DN_OK. */
DN_API dn_status dn_dropout_apply_mask_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const float *x, const uint8_t *DN_RESTRICT mask, double p,
    dn_dropout_mode mode, float *y);
DN_API dn_status dn_dropout_apply_mask_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const double *x, const uint8_t *DN_RESTRICT mask, double p,
    dn_dropout_mode mode, double *y);
DN_API dn_status dn_dropout_apply_mask_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *x, const uint8_t *DN_RESTRICT mask, double p,
    dn_dropout_mode mode, uint16_t *y);
DN_API dn_status dn_dropout_apply_mask_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *x, const uint8_t *DN_RESTRICT mask, double p,
    dn_dropout_mode mode, uint16_t *y);

/*! dn_dropout_backward_f32() / _f64() / _f16() / _bf16() :
 * Backward of the training forward: dx = dy*keep*scale, scale = 1/(1-p)
 * (inverted) or 1 (classic). (Through inference it is dx = dy, or
 * dy*(1-p) for classic: dn_dropout_forward_*() with training == 0.)
 *   dy           upstream gradient, n*c*s values
 *   mask         the forward's packed mask, or NULL to regenerate the
 *                decisions from (seed, stream) with nothing stored; with a
 *                mask, seed and stream are ignored and p sets only the scale
 *   dx           output, n*c*s values; may be dy itself (in place)
 * @return DN_OK; DN_ERR_NULL_POINTER if dy or dx is NULL; otherwise as
 *         dn_dropout_forward_*(). Nothing is written unless DN_OK. */
DN_API dn_status dn_dropout_backward_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const float *dy, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, float *dx);
DN_API dn_status dn_dropout_backward_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const double *dy, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, double *dx);
DN_API dn_status dn_dropout_backward_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *dy, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, uint16_t *dx);
DN_API dn_status dn_dropout_backward_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *dy, double p, uint64_t seed, uint64_t stream,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, uint16_t *dx);

/*! dn_dropout_backward_offset_f32() / _f64() / _f16() / _bf16() :
 * dn_dropout_backward_*() of dn_dropout_forward_offset_*(): regenerated
 * decisions (mask NULL) are those of offset .. onwards; a stored mask is
 * this tensor's own (bit 0 is decision offset).
 * @return as dn_dropout_backward_*(); DN_ERR_BAD_VALUE also for an offset
 *         as in dn_dropout_forward_offset_*(). */
DN_API dn_status dn_dropout_backward_offset_f32(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const float *dy, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, float *dx);
DN_API dn_status dn_dropout_backward_offset_f64(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const double *dy, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, double *dx);
DN_API dn_status dn_dropout_backward_offset_f16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *dy, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, uint16_t *dx);
DN_API dn_status dn_dropout_backward_offset_bf16(
    int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
    const uint16_t *dy, double p, uint64_t seed, uint64_t stream, uint64_t offset,
    dn_dropout_mode mode, const uint8_t *DN_RESTRICT mask, uint16_t *dx);

#ifdef __cplusplus
}
#endif

#endif /* DROPNORM_H */
