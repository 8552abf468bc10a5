/* The batch-norm inner loops for one element type and one instruction-set
 * variant: the reductions over a group and the elementwise passes. The
 * variant files (batchnorm_portable.c, batchnorm_avx2.c,
 * batchnorm_avx512bf16.c) include this template once per element type,
 * each compiled for its ISA, with
 *   T          the compute type (float, double): per-channel values, sums
 *   S          the storage type of the tensors, when it is not T: uint16_t
 *              for the half types (f16, bf16), which compute in float
 *   DN_TSFX    the element type's suffix (f32, f64, f16, bf16)
 *   DN_VARIANT the variant (portable, avx2, avx512bf16)
 * and every function here is named name_<DN_TSFX>_<DN_VARIANT> (FN; zfp's
 * way: macros only paste names), e.g. group_moments_f32_avx2. The table
 * dn_bn_kernels_<DN_TSFX>_<DN_VARIANT> at the end is what dispatch.c
 * chooses from.
 *
 * Tensors are read and written through DN_LD / DN_ST (one value) and
 * FN(lanes_load_s) / FN(lanes_store_s) (DN_LANES values): plain loads and
 * stores when S is T, so that the float and double code is what it was
 * without S; for the half types the conversions of half.h, rounding once
 * on the way out. The arithmetic is T's whatever S is.
 *
 * Sums run in T over blocks of at most DN_INNER values (so that they
 * vectorise at the element type's width) and in double between blocks; the
 * arithmetic is the same in every variant (explicit lanes, no contraction,
 * no reassociation), so they give the same bits; the vector width only
 * changes how fast. */
#include <float.h>

#include "half.h"
#include "kernels.h"

#ifndef DN_BATCHNORM_KERNELS_ONCE
#  define DN_BATCHNORM_KERNELS_ONCE
#  define DN_PASTE3(a, b, c) a##_##b##_##c
#  define DN_NAME3(a, b, c) DN_PASTE3(a, b, c)
/* The lanes live in GCC/Clang vector types, or in plain arrays; both add
 * the same values in the same lanes and order. On x86-64 the portable
 * variant keeps the arrays, so the test that the portable and AVX2 variants
 * give the same bits also checks the two forms against each other (the
 * array form is what MSVC builds). */
#  if defined(__GNUC__) && (defined(DN_VARIANT_SIMD) || !(defined(__x86_64__) || defined(__i386__)))
#    define DN_VECTOR_SUMS 1
#  endif
/* Values summed in T before the sum moves to double. */
#  define DN_INNER 1024
#  define DN_CAT2(a, b) a##b
#  define DN_PASTE2(a, b) DN_CAT2(a, b)
#endif

#define FN(name) DN_NAME3(name, DN_TSFX, DN_VARIANT)
/* One tensor value to T and back (half.h's dn_f16_to_f32, dn_f32_to_f16,
 * ... when S is a half type) */
#if defined(S)
#  define DN_HALF 1
#  define DN_LD(v) DN_PASTE2(dn_, DN_PASTE2(DN_TSFX, _to_f32))(v)
#  define DN_ST(v) DN_PASTE2(dn_f32_to_, DN_TSFX)(v)
#  define DN_LD8(src, dst) DN_PASTE2(dn_, DN_PASTE2(DN_TSFX, _to_f32_x8))(src, dst)
#  define DN_ST8(src, dst) DN_PASTE2(dn_f32_to_, DN_PASTE2(DN_TSFX, _x8))(src, dst)
#  define DN_LDV8(src) DN_PASTE2(dn_, DN_PASTE2(DN_TSFX, _load_v8))(src)
#  define DN_STV16(dst, lo, hi) DN_PASTE2(dn_, DN_PASTE2(DN_TSFX, _store_v16))(dst, lo, hi)
#else
#  define S T
#  define DN_LD(v) (v)
#  define DN_ST(v) (v)
#endif
/* 64 bytes of independent lanes (two AVX2 registers, so that the adds'
 * latency overlaps), combined in a fixed order. */
#define DN_LANES (64 / (int)sizeof(T))
#if (defined(__AVX2__) || defined(DN_WIDE_VECTORS)) && !defined(DN_HALF)
#  include <immintrin.h> /* the fused backward's gate (dn_gate_values_avx2), the v64 passes */
#endif

/* ---- Lanes: DN_LANES partial sums of T. --------------------------------- */

#if defined(DN_VECTOR_SUMS)
typedef T FN(vec) __attribute__((vector_size(32), aligned(sizeof(T))));
typedef struct FN(lanes) {
    FN(vec) lo, hi;
} FN(lanes);

static inline FN(lanes) FN(lanes_splat)(T v)
{
    FN(lanes) r;
    r.lo = (FN(vec)){0} + v;
    r.hi = r.lo;
    return r;
}

static inline FN(lanes) FN(lanes_load)(const T *q)
{
    FN(lanes) r;
    r.lo = *(const FN(vec) *)q;
    r.hi = *(const FN(vec) *)(q + 32 / sizeof(T));
    return r;
}

static inline FN(lanes) FN(lanes_add)(FN(lanes) a, FN(lanes) b)
{
    a.lo += b.lo;
    a.hi += b.hi;
    return a;
}

static inline FN(lanes) FN(lanes_sub)(FN(lanes) a, FN(lanes) b)
{
    a.lo -= b.lo;
    a.hi -= b.hi;
    return a;
}

static inline FN(lanes) FN(lanes_mul)(FN(lanes) a, FN(lanes) b)
{
    a.lo *= b.lo;
    a.hi *= b.hi;
    return a;
}

static inline void FN(lanes_store)(T *out, FN(lanes) a)
{
#if defined(DN_HALF)
    /* in the half types' loops (half_add, ...): a store from registers */
    *(FN(vec) *)out = a.lo;
    *(FN(vec) *)(out + 32 / sizeof(T)) = a.hi;
#else
    memcpy(out, &a.lo, sizeof a.lo);
    memcpy(out + 32 / sizeof(T), &a.hi, sizeof a.hi);
#endif
}
#else
typedef struct FN(lanes) {
    T v[DN_LANES];
} FN(lanes);

static inline FN(lanes) FN(lanes_splat)(T v)
{
    FN(lanes) r;
    for (int j = 0; j < DN_LANES; j++) r.v[j] = v;
    return r;
}

static inline FN(lanes) FN(lanes_load)(const T *q)
{
    FN(lanes) r;
    for (int j = 0; j < DN_LANES; j++) r.v[j] = q[j];
    return r;
}

static inline FN(lanes) FN(lanes_add)(FN(lanes) a, FN(lanes) b)
{
    for (int j = 0; j < DN_LANES; j++) a.v[j] += b.v[j];
    return a;
}

static inline FN(lanes) FN(lanes_sub)(FN(lanes) a, FN(lanes) b)
{
    for (int j = 0; j < DN_LANES; j++) a.v[j] -= b.v[j];
    return a;
}

static inline FN(lanes) FN(lanes_mul)(FN(lanes) a, FN(lanes) b)
{
    for (int j = 0; j < DN_LANES; j++) a.v[j] *= b.v[j];
    return a;
}

static inline void FN(lanes_store)(T *out, FN(lanes) a) { memcpy(out, a.v, sizeof a.v); }
#endif

/* DN_LANES tensor values as lanes of T, and back: the lanes themselves
 * when S is T; converted (two blocks of eight, through registers in the
 * SIMD variants) for the half types. */
static inline FN(lanes) FN(lanes_load_s)(const S *q)
{
#if defined(DN_HALF) && defined(DN_VECTOR_SUMS) && defined(DN_HALF_V8)
    /* register to register: the lanes' vectors are AVX registers here */
    FN(lanes) r;
    r.lo = (FN(vec))DN_LDV8(q);
    r.hi = (FN(vec))DN_LDV8(q + 8);
    return r;
#elif defined(DN_HALF)
    T v[DN_LANES];
    for (int j = 0; j < DN_LANES; j += 8) DN_LD8(q + j, v + j);
    return FN(lanes_load)(v);
#else
    return FN(lanes_load)(q);
#endif
}

static inline void FN(lanes_store_s)(S *out, FN(lanes) a)
{
#if defined(DN_HALF) && defined(DN_VECTOR_SUMS) && defined(DN_HALF_V8)
    DN_STV16(out, (__m256)a.lo, (__m256)a.hi);
#elif defined(DN_HALF)
    T v[DN_LANES];
    FN(lanes_store)(v, a);
    for (int j = 0; j < DN_LANES; j += 8) DN_ST8(v + j, out + j);
#else
    FN(lanes_store)(out, a);
#endif
}

/* The lanes' sum, halving (a fixed tree, whatever the vector width), plus
 * the tail that did not fill the lanes. */
static DN_ALWAYS_INLINE double FN(lanes_tree)(const T *lanes, T tail)
{
    double t[DN_LANES];
    for (int j = 0; j < DN_LANES; j++) t[j] = (double)lanes[j];
    /* the halvings one loop each, of a constant length, which the
     * compilers unroll (a loop over the widths stayed a loop at run time) */
    if (DN_LANES > 8)
        for (int j = 0; j < 8; j++) t[j] += t[j + 8];
    for (int j = 0; j < 4; j++) t[j] += t[j + 4];
    for (int j = 0; j < 2; j++) t[j] += t[j + 2];
    t[0] += t[1];
    return t[0] + (double)tail;
}

static DN_ALWAYS_INLINE double FN(lanes_total)(FN(lanes) a, T tail)
{
    T lanes[DN_LANES];
    FN(lanes_store)(lanes, a);
    return FN(lanes_tree)(lanes, tail);
}

/* ---- Reductions over rows. ----------------------------------------------
 * `rows` rows of len <= DN_INNER values, row r at x + r*stride, summed in
 * lanes of T over at most DN_INNER values at a time (whole rows), each such
 * partial sum added in double, in order. A contiguous run (run_*) is
 * blocks of DN_INNER values, one row each. */

/* total[0] += sum(x); with `two` (a constant where it is inlined), also
 * total[1] += the sum of the rows at x + next (the next channel's, in
 * channels first): each in its own lanes, the same additions in the same
 * order as alone, while the two chains of dependent adds overlap. */
static DN_ALWAYS_INLINE void FN(rows_sum_k)(const S *x, int64_t next, int two, int64_t stride,
                                            int64_t rows, int64_t len, double *total)
{
    FN(lanes) s = FN(lanes_splat)(0), s2 = s;
    T tail = 0, tail2 = 0;
    int64_t held = 0;
    for (int64_t r = 0; r < rows; r++) {
        const S *q = x + r * stride, *q2 = q + next;
        int64_t i = 0;
        if (held + len > DN_INNER) {
            total[0] += FN(lanes_total)(s, tail);
            if (two) total[1] += FN(lanes_total)(s2, tail2);
            s = s2 = FN(lanes_splat)(0);
            tail = tail2 = 0;
            held = 0;
        }
        for (; i + DN_LANES <= len; i += DN_LANES) {
            s = FN(lanes_add)(s, FN(lanes_load_s)(q + i));
            if (two) s2 = FN(lanes_add)(s2, FN(lanes_load_s)(q2 + i));
        }
        for (; i < len; i++) {
            tail += DN_LD(q[i]);
            if (two) tail2 += DN_LD(q2[i]);
        }
        held += len;
    }
    if (held > 0) {
        total[0] += FN(lanes_total)(s, tail);
        if (two) total[1] += FN(lanes_total)(s2, tail2);
    }
}

/* sum(x) */
static double FN(rows_sum)(const S *x, int64_t stride, int64_t rows, int64_t len)
{
    double total = 0.0;
    FN(rows_sum_k)(x, 0, 0, stride, rows, len, &total);
    return total;
}

/* sums[0] += sum(x - c), sums[1] += sum((x - c)^2); with `two`, sums[2]
 * and sums[3] the same of the rows at x + next about c2 (as rows_sum_k) */
static DN_ALWAYS_INLINE void FN(rows_deviations_k)(const S *x, int64_t next, int two,
                                                   int64_t stride, int64_t rows, int64_t len,
                                                   T c, T c2, double *sums)
{
    const FN(lanes) cv = FN(lanes_splat)(c), cv2 = FN(lanes_splat)(c2);
    FN(lanes) s0 = FN(lanes_splat)(0), s1 = s0, u0 = s0, u1 = s0;
    T t0 = 0, t1 = 0, v0 = 0, v1 = 0;
    int64_t held = 0;
    for (int64_t r = 0; r < rows; r++) {
        const S *q = x + r * stride, *q2 = q + next;
        int64_t i = 0;
        if (held + len > DN_INNER) {
            sums[0] += FN(lanes_total)(s0, t0);
            sums[1] += FN(lanes_total)(s1, t1);
            if (two) {
                sums[2] += FN(lanes_total)(u0, v0);
                sums[3] += FN(lanes_total)(u1, v1);
            }
            s0 = s1 = u0 = u1 = FN(lanes_splat)(0);
            t0 = t1 = v0 = v1 = 0;
            held = 0;
        }
        for (; i + DN_LANES <= len; i += DN_LANES) {
            const FN(lanes) d = FN(lanes_sub)(FN(lanes_load_s)(q + i), cv);
            s0 = FN(lanes_add)(s0, d);
            s1 = FN(lanes_add)(s1, FN(lanes_mul)(d, d));
            if (two) {
                const FN(lanes) e = FN(lanes_sub)(FN(lanes_load_s)(q2 + i), cv2);
                u0 = FN(lanes_add)(u0, e);
                u1 = FN(lanes_add)(u1, FN(lanes_mul)(e, e));
            }
        }
        for (; i < len; i++) {
            t0 += DN_LD(q[i]) - c;
            t1 += (DN_LD(q[i]) - c) * (DN_LD(q[i]) - c);
            if (two) {
                v0 += DN_LD(q2[i]) - c2;
                v1 += (DN_LD(q2[i]) - c2) * (DN_LD(q2[i]) - c2);
            }
        }
        held += len;
    }
    if (held > 0) {
        sums[0] += FN(lanes_total)(s0, t0);
        sums[1] += FN(lanes_total)(s1, t1);
        if (two) {
            sums[2] += FN(lanes_total)(u0, v0);
            sums[3] += FN(lanes_total)(u1, v1);
        }
    }
}

/* sums[0] += sum(x - c), sums[1] += sum((x - c)^2) */
static void FN(rows_deviations)(const S *x, int64_t stride, int64_t rows, int64_t len, T c,
                                double *sums)
{
    FN(rows_deviations_k)(x, 0, 0, stride, rows, len, c, c, sums);
}

/* sums[0] += sum(dy), sums[1] += sum(x - h), sums[2] += sum(dy*(x - h)); dy's
 * rows at the same offsets as x's */
static DN_ALWAYS_INLINE void FN(rows_grad_sums)(const S *dy, const S *x, int64_t stride,
                                                int64_t rows, int64_t len, T h, double *sums)
{
    const FN(lanes) hv = FN(lanes_splat)(h);
    FN(lanes) s0 = FN(lanes_splat)(0), s1 = s0, s2 = s0;
    T t0 = 0, t1 = 0, t2 = 0;
    int64_t held = 0;
    for (int64_t r = 0; r < rows; r++) {
        const S *g = dy + r * stride, *q = x + r * stride;
        int64_t i = 0;
        if (held + len > DN_INNER) {
            sums[0] += FN(lanes_total)(s0, t0);
            sums[1] += FN(lanes_total)(s1, t1);
            sums[2] += FN(lanes_total)(s2, t2);
            s0 = s1 = s2 = FN(lanes_splat)(0);
            t0 = t1 = t2 = 0;
            held = 0;
        }
        for (; i + DN_LANES <= len; i += DN_LANES) {
            const FN(lanes) gi = FN(lanes_load_s)(g + i);
            const FN(lanes) d = FN(lanes_sub)(FN(lanes_load_s)(q + i), hv);
            s0 = FN(lanes_add)(s0, gi);
            s1 = FN(lanes_add)(s1, d);
            s2 = FN(lanes_add)(s2, FN(lanes_mul)(gi, d));
        }
        for (; i < len; i++) {
            t0 += DN_LD(g[i]);
            t1 += DN_LD(q[i]) - h;
            t2 += DN_LD(g[i]) * (DN_LD(q[i]) - h);
        }
        held += len;
    }
    if (held > 0) {
        sums[0] += FN(lanes_total)(s0, t0);
        sums[1] += FN(lanes_total)(s1, t1);
        sums[2] += FN(lanes_total)(s2, t2);
    }
}

static double FN(run_sum)(const S *x, int64_t len)
{
    double total = 0.0;
    for (int64_t b = 0; b < len; b += DN_INNER)
        total += FN(rows_sum)(x + b, 0, 1, dn_min64(DN_INNER, len - b));
    return total;
}

/* The half types also ask for the memory that follows the run (in channels
 * first, the next piece: pieces come in memory order), a block ahead, so
 * that memory keeps streaming while the run, in L1, has its deviations
 * summed: halving the bytes leaves the arithmetic, and memory would idle
 * longer in this second pass. (A prefetch never faults: addresses past the
 * tensor are only asked for.) */
static void FN(run_deviations)(const S *x, int64_t len, T c, double *sums)
{
#if defined(DN_HALF) && defined(__GNUC__)
    const uintptr_t next = (uintptr_t)(x + len);
#endif
    for (int64_t b = 0; b < len; b += DN_INNER) {
#if defined(DN_HALF) && defined(__GNUC__)
        const uintptr_t bytes = (uintptr_t)dn_min64(DN_INNER, len - b) * sizeof(S);
        for (uintptr_t k = 0; k < bytes; k += DN_CACHE_LINE)
            __builtin_prefetch((const void *)(next + (uintptr_t)b * sizeof(S) + k));
#endif
        FN(rows_deviations)(x + b, 0, 1, dn_min64(DN_INNER, len - b), c, sums);
    }
}

static void FN(run_grad_sums)(const S *dy, const S *x, int64_t len, T h, double *sums)
{
    for (int64_t b = 0; b < len; b += DN_INNER)
        FN(rows_grad_sums)(dy + b, x + b, 0, 1, dn_min64(DN_INNER, len - b), h, sums);
}

/* ---- Statistics of one group. ------------------------------------------- */

/* Channels first: for group g, every channel's mean and squared deviations,
 * from a two-pass over each piece (in L1), merged in order into
 * gmean/gm2[ch*groups + g]. The second pass centres on the first pass's
 * mean rounded to T and also sums the deviations, which corrects that
 * rounding (the corrected two-pass algorithm). count: scratch of p->c. */
static void FN(ncs_group_moments)(const dn_plan *p, const S *x, int64_t g, double *gmean,
                                  double *gm2, double *DN_RESTRICT count)
{
    const int64_t G = p->groups;
    dn_ncs_pieces it;
    dn_ncs_piece pc;
    for (int64_t ch = 0; ch < p->c; ch++) count[ch] = 0.0;
    /* not short_rows: one task per group, task g */
    for (dn_ncs_pieces_start(p, g, &it); dn_ncs_pieces_next(p, &it, &pc);) {
        const S *run = x + pc.off;
        const int64_t at = pc.ch * G + g;
        const double rows = (double)pc.len;
        const T centre = (T)(FN(run_sum)(run, pc.len) / rows);
        double dev[2] = {0.0, 0.0};
        FN(run_deviations)(run, pc.len, centre, dev);
        if (count[pc.ch] == 0.0) gmean[at] = gm2[at] = 0.0;
        dn_merge_moments(&count[pc.ch], &gmean[at], &gm2[at], rows,
                         (double)centre + dev[0] / rows, dev[1] - dev[0] * dev[0] / rows);
    }
}

/* Channels last: v[ch] += v[k*c + ch] for k = 1 .. per-1, in k order (the
 * sums of a wide row's positions into its channels; channels inner, so
 * that it vectorises). */
static void FN(fold_wide)(T *DN_RESTRICT v, int64_t c, int64_t per)
{
    for (int64_t k = 1; k < per; k++) {
        const T *DN_RESTRICT part = v + k * c;
        for (int64_t ch = 0; ch < c; ch++) v[ch] += part[ch];
    }
}

#if defined(DN_HALF)
/* Channels last, the half types: the accumulations of nsc_group_moments and
 * nsc_grad_sums over columns [j0, j1) of tensor rows, the values converted
 * in registers, DN_LANES columns at a time. Column j gets the arithmetic of
 * the float loops they stand for (which the compiler vectorises when S is
 * T), so the bits are those of float on the converted values. */

/* sum[j] += row[j] */
static inline void FN(half_add)(T *DN_RESTRICT sum, const S *DN_RESTRICT row, int64_t j0,
                                int64_t j1)
{
    int64_t j = j0;
    for (; j + DN_LANES <= j1; j += DN_LANES)
        FN(lanes_store)(sum + j, FN(lanes_add)(FN(lanes_load)(sum + j), FN(lanes_load_s)(row + j)));
    for (; j < j1; j++) sum[j] += DN_LD(row[j]);
}

/* d = row[j] - centre[j]; sum[j] += d, dev[j] += d*d */
static inline void FN(half_dev)(T *DN_RESTRICT sum, T *DN_RESTRICT dev, const S *DN_RESTRICT row,
                                const T *DN_RESTRICT centre, int64_t j0, int64_t j1)
{
    int64_t j = j0;
    for (; j + DN_LANES <= j1; j += DN_LANES) {
        const FN(lanes) d = FN(lanes_sub)(FN(lanes_load_s)(row + j), FN(lanes_load)(centre + j));
        FN(lanes_store)(sum + j, FN(lanes_add)(FN(lanes_load)(sum + j), d));
        FN(lanes_store)(dev + j, FN(lanes_add)(FN(lanes_load)(dev + j), FN(lanes_mul)(d, d)));
    }
    for (; j < j1; j++) {
        const T d = DN_LD(row[j]) - centre[j];
        sum[j] += d;
        dev[j] += d * d;
    }
}

/* The same for four rows W apart, summed as (d0 + d1) + (d2 + d3) */
static inline void FN(half_dev4)(T *DN_RESTRICT sum, T *DN_RESTRICT dev, const S *DN_RESTRICT r0w,
                                 int64_t W, const T *DN_RESTRICT centre, int64_t j0, int64_t j1)
{
    const S *DN_RESTRICT r1w = r0w + W, *DN_RESTRICT r2w = r0w + 2 * W;
    const S *DN_RESTRICT r3w = r0w + 3 * W;
    int64_t j = j0;
    for (; j + DN_LANES <= j1; j += DN_LANES) {
        /* rows 0 and 1, then 2 and 3: fewer values live at once */
        const FN(lanes) c = FN(lanes_load)(centre + j);
        FN(lanes) d0 = FN(lanes_sub)(FN(lanes_load_s)(r0w + j), c);
        FN(lanes) d1 = FN(lanes_sub)(FN(lanes_load_s)(r1w + j), c);
        const FN(lanes) s01 = FN(lanes_add)(d0, d1);
        const FN(lanes) q01 = FN(lanes_add)(FN(lanes_mul)(d0, d0), FN(lanes_mul)(d1, d1));
        d0 = FN(lanes_sub)(FN(lanes_load_s)(r2w + j), c);
        d1 = FN(lanes_sub)(FN(lanes_load_s)(r3w + j), c);
        FN(lanes_store)(sum + j, FN(lanes_add)(FN(lanes_load)(sum + j),
                                               FN(lanes_add)(s01, FN(lanes_add)(d0, d1))));
        FN(lanes_store)(dev + j,
                        FN(lanes_add)(FN(lanes_load)(dev + j),
                                      FN(lanes_add)(q01, FN(lanes_add)(FN(lanes_mul)(d0, d0),
                                                                       FN(lanes_mul)(d1, d1)))));
    }
    for (; j < j1; j++) {
        const T d0 = DN_LD(r0w[j]) - centre[j], d1 = DN_LD(r1w[j]) - centre[j];
        const T d2 = DN_LD(r2w[j]) - centre[j], d3 = DN_LD(r3w[j]) - centre[j];
        sum[j] += (d0 + d1) + (d2 + d3);
        dev[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
}

/* d = xr[j] - hw[j]; a0[j] += gr[j], a1[j] += d, a2[j] += gr[j]*d */
static inline void FN(half_grad)(T *DN_RESTRICT a0, T *DN_RESTRICT a1, T *DN_RESTRICT a2,
                                 const S *DN_RESTRICT gr, const S *DN_RESTRICT xr,
                                 const T *DN_RESTRICT hw, int64_t j0, int64_t j1)
{
    int64_t j = j0;
    for (; j + DN_LANES <= j1; j += DN_LANES) {
        const FN(lanes) g = FN(lanes_load_s)(gr + j);
        const FN(lanes) d = FN(lanes_sub)(FN(lanes_load_s)(xr + j), FN(lanes_load)(hw + j));
        FN(lanes_store)(a0 + j, FN(lanes_add)(FN(lanes_load)(a0 + j), g));
        FN(lanes_store)(a1 + j, FN(lanes_add)(FN(lanes_load)(a1 + j), d));
        FN(lanes_store)(a2 + j, FN(lanes_add)(FN(lanes_load)(a2 + j), FN(lanes_mul)(g, d)));
    }
    for (; j < j1; j++) {
        const T g = DN_LD(gr[j]), d = DN_LD(xr[j]) - hw[j];
        a0[j] += g;
        a1[j] += d;
        a2[j] += g * d;
    }
}
#endif

/* Repeats the c values of v to fill p->wide (channels last, wide rows). */
static void FN(widen)(const dn_plan *p, T *v)
{
    for (int64_t j = p->c; j < p->wide; j++) v[j] = v[j - p->c];
}

#if defined(DN_WIDE_VECTORS)
/* ---- 64-byte vectors (AVX-512): see "Elementwise passes in 64-byte
 * vectors" below for where they run and why. ---------------------------- */
#  define DN_V64 (64 / (int64_t)sizeof(T))
#  define DN_W(op) DN_PASTE2(_mm512_##op##_, DN_WIDE_VECTORS)
#  define DN_AVX512_FN __attribute__((target("avx512f")))
/* Channels first in the caches, runs of fewer values than this go
 * through FN(v64_cf_range): 4-9% faster at 7x7 to 28x28 positions,
 * nothing gained at 56x56 and 112x112 */
#  ifndef DN_CF_MAX_RUN
#    define DN_CF_MAX_RUN 1024
#  endif

/* Values of T from p to the next line boundary (p at a multiple of T) */
static inline int64_t FN(v64_head)(const void *p)
{
    return (int64_t)((DN_CACHE_LINE - (uintptr_t)p % DN_CACHE_LINE) % DN_CACHE_LINE / sizeof(T));
}

/* The input's vector at i: lanes m (masked) when part, else all (aligned
 * when al) */
static DN_ALWAYS_INLINE DN_AVX512_FN DN_WIDE_TYPE FN(v64_load)(const T *p, int64_t i,
                                                               unsigned m, int part, int al)
{
    return part ? DN_W(maskz_loadu)(m, p + i) : al ? DN_W(load)(p + i) : DN_W(loadu)(p + i);
}

/* nsc_group_moments' sums of `rows` (1, 2 or 4) rows at stride W from
 * row, at element j (lanes m when part), the scalar loops' additions in
 * their order: sum += d, dev += d*d with d = x - centre; or, dev NULL (the
 * first pass), sum += x row by row. sum, dev and centre sit at row's place
 * in their lines. */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(moments_v64_step)(T *sum, T *dev, const T *row,
                                                               int64_t W, const T *centre,
                                                               int64_t j, unsigned m, int part,
                                                               int rows)
{
    DN_WIDE_TYPE s = FN(v64_load)(sum, j, m, part, 1), q, c, d0;
    if (dev == NULL) {
        for (int k = 0; k < rows; k++) s = DN_W(add)(s, FN(v64_load)(row + k * W, j, m, part, 1));
        if (part) DN_W(mask_storeu)(sum + j, m, s);
        else DN_W(store)(sum + j, s);
        return;
    }
    c = FN(v64_load)(centre, j, m, part, 1);
    d0 = DN_W(sub)(FN(v64_load)(row, j, m, part, 1), c);
    q = FN(v64_load)(dev, j, m, part, 1);
    if (rows == 1) {
        s = DN_W(add)(s, d0);
        q = DN_W(add)(q, DN_W(mul)(d0, d0));
    } else if (rows == 2) {
        const DN_WIDE_TYPE d1 = DN_W(sub)(FN(v64_load)(row + W, j, m, part, 1), c);
        s = DN_W(add)(DN_W(add)(s, d0), d1);
        q = DN_W(add)(DN_W(add)(q, DN_W(mul)(d0, d0)), DN_W(mul)(d1, d1));
    } else {
        const DN_WIDE_TYPE d1 = DN_W(sub)(FN(v64_load)(row + W, j, m, part, 1), c);
        const DN_WIDE_TYPE d2 = DN_W(sub)(FN(v64_load)(row + 2 * W, j, m, part, 1), c);
        const DN_WIDE_TYPE d3 = DN_W(sub)(FN(v64_load)(row + 3 * W, j, m, part, 1), c);
        s = DN_W(add)(s, DN_W(add)(DN_W(add)(d0, d1), DN_W(add)(d2, d3)));
        q = DN_W(add)(q, DN_W(add)(DN_W(add)(DN_W(mul)(d0, d0), DN_W(mul)(d1, d1)),
                                   DN_W(add)(DN_W(mul)(d2, d2), DN_W(mul)(d3, d3))));
    }
    if (part) {
        DN_W(mask_storeu)(sum + j, m, s);
        DN_W(mask_storeu)(dev + j, m, q);
    } else {
        DN_W(store)(sum + j, s);
        DN_W(store)(dev + j, q);
    }
}

/* moments_v64_step over n values: to row's first line boundary masked,
 * whole vectors, the rest masked */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(moments_v64_pass)(T *sum, T *dev, const T *row,
                                                               int64_t W, const T *centre,
                                                               int64_t n, int rows)
{
    int64_t j = dn_min64(FN(v64_head)(row), n);
    if (j > 0) FN(moments_v64_step)(sum, dev, row, W, centre, 0, (1u << j) - 1u, 1, rows);
    for (; j + DN_V64 <= n; j += DN_V64)
        FN(moments_v64_step)(sum, dev, row, W, centre, j, 0, 0, rows);
    if (j < n) FN(moments_v64_step)(sum, dev, row, W, centre, j, (1u << (n - j)) - 1u, 1, rows);
}

static DN_AVX512_FN void FN(moments_rows_v64)(T *sum, T *dev, const T *row, int64_t W,
                                              const T *centre, int64_t n, int rows)
{
    if (dev == NULL && rows == 4) FN(moments_v64_pass)(sum, NULL, row, W, NULL, n, 4);
    else if (dev == NULL) FN(moments_v64_pass)(sum, NULL, row, W, NULL, n, 1);
    else if (rows == 4) FN(moments_v64_pass)(sum, dev, row, W, centre, n, 4);
    else if (rows == 2) FN(moments_v64_pass)(sum, dev, row, W, centre, n, 2);
    else FN(moments_v64_pass)(sum, dev, row, W, centre, n, 1);
}

/* short_moments_k's sums for DN_QUAD channels `next` apart, each channel's
 * rows_sum_k (c NULL: total[k]) or rows_deviations_k (about c[k]:
 * sums[2k], sums[2k + 1]) in the same lanes, additions and order, so the
 * same bits; four chains of dependent adds in flight, not two (channels-first
 * training of 7x7 and 14x14 rows 4-7% faster; eight channels measured 2-4%
 * slower than four, and the next quad's sum pass run in the same loop as
 * this one's deviation pass no faster). */
#  define DN_QUAD 4
static DN_ALWAYS_INLINE DN_AVX512_FN double FN(v64_total)(DN_WIDE_TYPE a, T tail)
{
    T lanes[DN_V64];
    DN_W(storeu)(lanes, a);
    return FN(lanes_tree)(lanes, tail);
}

static DN_ALWAYS_INLINE DN_AVX512_FN void FN(quad_rows_v64_k)(const T *x, int64_t next,
                                                               int64_t stride, int64_t rows,
                                                               int64_t len, const T *c,
                                                               double *sums)
{
    DN_WIDE_TYPE s[DN_QUAD], q[DN_QUAD], cv[DN_QUAD];
    T ts[DN_QUAD], tq[DN_QUAD];
    int64_t held = 0;
    for (int k = 0; k < DN_QUAD; k++) {
        s[k] = q[k] = DN_W(setzero)();
        ts[k] = tq[k] = 0;
        cv[k] = DN_W(set1)(c == NULL ? 0 : c[k]);
    }
    for (int64_t r = 0; r <= rows; r++) {
        const T *row = x + r * stride;
        int64_t i = 0;
        if (held > 0 && (r == rows || held + len > DN_INNER)) {
            for (int k = 0; k < DN_QUAD; k++) {
                if (c == NULL) {
                    sums[k] += FN(v64_total)(s[k], ts[k]);
                } else {
                    sums[2 * k] += FN(v64_total)(s[k], ts[k]);
                    sums[2 * k + 1] += FN(v64_total)(q[k], tq[k]);
                }
                s[k] = q[k] = DN_W(setzero)();
                ts[k] = tq[k] = 0;
            }
            held = 0;
        }
        if (r == rows) break;
        for (; i + DN_V64 <= len; i += DN_V64)
            for (int k = 0; k < DN_QUAD; k++) {
                const DN_WIDE_TYPE v = DN_W(loadu)(row + k * next + i);
                if (c == NULL) {
                    s[k] = DN_W(add)(s[k], v);
                } else {
                    const DN_WIDE_TYPE d = DN_W(sub)(v, cv[k]);
                    s[k] = DN_W(add)(s[k], d);
                    q[k] = DN_W(add)(q[k], DN_W(mul)(d, d));
                }
            }
        for (; i < len; i++)
            for (int k = 0; k < DN_QUAD; k++) {
                if (c == NULL) {
                    ts[k] += row[k * next + i];
                } else {
                    ts[k] += row[k * next + i] - c[k];
                    tq[k] += (row[k * next + i] - c[k]) * (row[k * next + i] - c[k]);
                }
            }
        held += len;
    }
}

static DN_AVX512_FN void FN(quad_rows_v64)(const T *x, int64_t next, int64_t stride, int64_t rows,
                                           int64_t len, const T *c, double *sums)
{
    if (c == NULL) FN(quad_rows_v64_k)(x, next, stride, rows, len, NULL, sums);
    else FN(quad_rows_v64_k)(x, next, stride, rows, len, c, sums);
}

/* rows_grad_sums for DN_QUAD channels `next` apart (about h[k]; channel k's
 * three sums at sums + k*at), the same lanes, additions and order (the
 * channels-first backward of 16x2048x7x7 8% faster, of 16x512x7x7 1-2%) */
static DN_AVX512_FN void FN(quad_grad_rows_v64)(const T *dy, const T *x, int64_t next,
                                                int64_t stride, int64_t rows, int64_t len,
                                                const T *h, double *sums, int64_t at)
{
    DN_WIDE_TYPE s0[DN_QUAD], s1[DN_QUAD], s2[DN_QUAD], hv[DN_QUAD];
    T t0[DN_QUAD], t1[DN_QUAD], t2[DN_QUAD];
    int64_t held = 0;
    for (int k = 0; k < DN_QUAD; k++) {
        s0[k] = s1[k] = s2[k] = DN_W(setzero)();
        t0[k] = t1[k] = t2[k] = 0;
        hv[k] = DN_W(set1)(h[k]);
    }
    for (int64_t r = 0; r <= rows; r++) {
        const T *g = dy + r * stride, *q = x + r * stride;
        int64_t i = 0;
        if (held > 0 && (r == rows || held + len > DN_INNER)) {
            for (int k = 0; k < DN_QUAD; k++) {
                sums[k * at] += FN(v64_total)(s0[k], t0[k]);
                sums[k * at + 1] += FN(v64_total)(s1[k], t1[k]);
                sums[k * at + 2] += FN(v64_total)(s2[k], t2[k]);
                s0[k] = s1[k] = s2[k] = DN_W(setzero)();
                t0[k] = t1[k] = t2[k] = 0;
            }
            held = 0;
        }
        if (r == rows) break;
        for (; i + DN_V64 <= len; i += DN_V64)
            for (int k = 0; k < DN_QUAD; k++) {
                const DN_WIDE_TYPE gi = DN_W(loadu)(g + k * next + i);
                const DN_WIDE_TYPE d = DN_W(sub)(DN_W(loadu)(q + k * next + i), hv[k]);
                s0[k] = DN_W(add)(s0[k], gi);
                s1[k] = DN_W(add)(s1[k], d);
                s2[k] = DN_W(add)(s2[k], DN_W(mul)(gi, d));
            }
        for (; i < len; i++)
            for (int k = 0; k < DN_QUAD; k++) {
                const T gi = g[k * next + i];
                t0[k] += gi;
                t1[k] += q[k * next + i] - h[k];
                t2[k] += gi * (q[k * next + i] - h[k]);
            }
        held += len;
    }
}
#endif

/* Channels first, short rows (p->short_rows): channel ch's moments of
 * group g's images, and with nch 2 (or DN_QUAD, in the AVX-512 variant)
 * those of the channels after it, the same operations in the same order on
 * each; in chunks of whole rows of at most DN_CHUNK_ELEMS values reduced by
 * the corrected two-pass and merged in order. At gmean/gm2[ch*G + g]. */
static DN_ALWAYS_INLINE void FN(short_moments_k)(const dn_plan *p, const S *x, int64_t g,
                                                 int64_t ch, int nch, double *gmean,
                                                 double *gm2)
{
    const int64_t G = p->groups, sp = p->s, stride = p->c * sp;
    const int64_t per = dn_max64(1, DN_CHUNK_ELEMS / sp); /* rows per chunk */
    int64_t lo, hi;
    double count[4] = {0.0, 0.0, 0.0, 0.0}, mean[4] = {0.0, 0.0, 0.0, 0.0};
    double m2[4] = {0.0, 0.0, 0.0, 0.0};
    dn_group_range(p, g, &lo, &hi);
    for (int64_t img = lo / sp; img < hi / sp; img += per) {
        const int64_t rows = dn_min64(per, hi / sp - img);
        const S *first = x + (img * p->c + ch) * sp;
        const double vals = (double)(rows * sp);
        double total[4] = {0.0, 0.0, 0.0, 0.0}, dev[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        T centre[4];
#if defined(DN_WIDE_VECTORS)
        if (nch == DN_QUAD) FN(quad_rows_v64)(first, sp, stride, rows, sp, NULL, total);
        else
#endif
            FN(rows_sum_k)(first, sp, nch == 2, stride, rows, sp, total);
        for (int k = 0; k < nch; k++) centre[k] = (T)(total[k] / vals);
#if defined(DN_WIDE_VECTORS)
        if (nch == DN_QUAD) FN(quad_rows_v64)(first, sp, stride, rows, sp, centre, dev);
        else
#endif
            FN(rows_deviations_k)(first, sp, nch == 2, stride, rows, sp, centre[0],
                                  centre[nch - 1], dev);
        for (int k = 0; k < nch; k++)
            dn_merge_moments(&count[k], &mean[k], &m2[k], vals,
                             (double)centre[k] + dev[2 * k] / vals,
                             dev[2 * k + 1] - dev[2 * k] * dev[2 * k] / vals);
    }
    for (int k = 0; k < nch; k++) {
        gmean[(ch + k) * G + g] = mean[k];
        gm2[(ch + k) * G + g] = m2[k];
    }
}

/* Short rows: channels two at a time, whose chains of adds then overlap
 * (one channel's alone is a chain of dependent adds per lane: 16x2048x7x7
 * moments 17% faster in pairs); four at a time in 64-byte vectors where the
 * variant has them */
static void FN(ncs_short_moments)(const dn_plan *p, const S *x, int64_t t, double *gmean,
                                  double *gm2)
{
    int64_t g, c0, c1, ch;
    dn_reduce_task(p, t, &g, &c0, &c1);
    ch = c0;
#if defined(DN_WIDE_VECTORS)
    for (; ch + DN_QUAD <= c1; ch += DN_QUAD)
        FN(short_moments_k)(p, x, g, ch, DN_QUAD, gmean, gm2);
#endif
    for (; ch + 1 < c1; ch += 2) FN(short_moments_k)(p, x, g, ch, 2, gmean, gm2);
    if (ch < c1) FN(short_moments_k)(p, x, g, ch, 1, gmean, gm2);
}

/* Channels last: per-channel mean and squared deviations of the rows of
 * group g, from chunks of rows merged in order (as ncs_group_moments, but
 * vectorised across a wide row: p->wide / c rows side by side, folded into
 * channels after each pass). Each chunk sums its deviations from a centre
 * and corrects for the centre's offset (the corrected two-pass algorithm);
 * the group's first chunk takes its own mean as the centre (a first pass),
 * the others the previous chunk's mean, so that they read memory once.
 * That costs no accuracy against the result: the correction cancels (mean
 * - centre)^2 within the chunk, which, when large, is between-chunk
 * variance that the merged variance holds too. w: scratch of 3*p->wide
 * values. gmean/gm2: group g's c values. */
static void FN(nsc_group_moments)(const dn_plan *p, const S *x, int64_t t,
                                  double *gmean, double *gm2, T *DN_RESTRICT w)
{
    const int64_t C = p->c, W = p->wide, per = W / C;
    /* columns reduced at a time: a wide row, or a task's page of channels */
    const int64_t tile = per > 1 ? W : p->cblock;
    T *DN_RESTRICT sum = w, *DN_RESTRICT dev = w + W, *DN_RESTRICT centre = w + 2 * W;
#if !defined(DN_HALF)
    const int pairs = dn_pair_rows(tile, p->total * (int64_t)sizeof(S));
#endif
#if defined(DN_WIDE_VECTORS)
    /* 64-byte sums where the rows are whole lines, in tensors below
     * DN_STREAM_MIN_BYTES (two rows per load and store of the sums there
     * too: 7-11% faster training at 12.8 MB than the AVX2 loop's one; in
     * 51 MB tensors 16-20% slower, and neutral one row at a time): the sums
     * at x's place in its lines (the scratch has a line to spare), so that
     * both load aligned */
    const int v64 = p->total * (int64_t)sizeof(S) < DN_STREAM_MIN_BYTES
                    && C * (int64_t)sizeof(T) % DN_CACHE_LINE == 0  /* and so W's */
                    && (uintptr_t)x % sizeof(T) == 0;
#endif
    int64_t g, c0, c1, w1, lo, hi;
    double cnt = 0.0;
#if defined(DN_WIDE_VECTORS)
    if (v64) {
        w = (T *)dn_line_like(w, x, sizeof(T));
        sum = w, dev = w + W, centre = w + 2 * W;
    }
#endif
    /* channels [c0, c1): the wide row's columns [c0, w1) (a block of a
     * row when p->cblocks > 1, which needs per == 1; else all) */
    dn_reduce_task(p, t, &g, &c0, &c1);
    w1 = c1 == C ? W : c1;
    gmean += g * C;
    gm2 += g * C;
    dn_group_range(p, g, &lo, &hi);
    for (int64_t r0 = lo; r0 < hi; r0 += p->chunk) {
        const int64_t r1 = dn_min64(r0 + p->chunk, hi);
        const int64_t full = (r1 - r0) / per; /* whole wide rows */
        const double rows = (double)(r1 - r0), nt = cnt + rows;
        /* a multiply per channel, not a divide: wide rows make chunks short */
        const double inv_rows = 1.0 / rows;
        if (r0 == lo) {
            const S *DN_RESTRICT first_row = x + r0 * C;
            /* the bound on the error of a sum of `rows` values in T,
             * relative to their magnitude */
            const T snap = (T)(rows * (sizeof(T) == sizeof(float) ? FLT_EPSILON : DBL_EPSILON));
            const T snap2 = snap * snap;
            for (int64_t j = c0; j < w1; j++) sum[j] = 0;
            /* a tile of the row at a time (the accumulators stay in L1) */
            for (int64_t j0 = c0; j0 < w1; j0 += tile) {
                const int64_t j1 = dn_min64(j0 + tile, w1);
                int64_t q = 0;
#if defined(DN_WIDE_VECTORS)
                if (v64) {
                    for (; q + 4 <= full; q += 4)
                        FN(moments_rows_v64)(sum + j0, NULL, x + (r0 + q * per) * C + j0, W,
                                             NULL, j1 - j0, 4);
                    for (; q < full; q++)
                        FN(moments_rows_v64)(sum + j0, NULL, x + (r0 + q * per) * C + j0, W,
                                             NULL, j1 - j0, 1);
                }
#endif
                for (; q < full; q++) {
#if defined(DN_HALF)
                    FN(half_add)(sum, x + (r0 + q * per) * C, j0, j1);
#else
                    const T *DN_RESTRICT row = x + (r0 + q * per) * C;
                    for (int64_t j = j0; j < j1; j++) sum[j] += row[j];
#endif
                }
            }
            for (int64_t r = r0 + full * per; r < r1; r++) {
#if defined(DN_HALF)
                FN(half_add)(sum, x + r * C, c0, c1);
#else
                const T *DN_RESTRICT row = x + r * C;
                for (int64_t ch = c0; ch < c1; ch++) sum[ch] += row[ch];
#endif
            }
            FN(fold_wide)(sum, C, per);
            /* A centre within the sum's rounding of the chunk's first value
             * is taken as that value: any centre near the mean serves, and
             * a constant channel then has deviations, and a variance, of
             * exactly 0. */
            for (int64_t ch = c0; ch < c1; ch++) centre[ch] = (T)((double)sum[ch] * inv_rows);
            for (int64_t ch = c0; ch < c1; ch++) {
                const T v = DN_LD(first_row[ch]), d = centre[ch] - v;
                centre[ch] = d * d <= snap2 * (v * v) ? v : centre[ch];
            }
        }
        FN(widen)(p, centre);
        for (int64_t j = c0; j < w1; j++) sum[j] = dev[j] = 0;
        /* From the cache (a first chunk) four wide rows per sweep, a quarter
         * of the accumulator traffic; from memory one, since one sequential
         * stream is what the prefetchers follow best (four measured 25%
         * slower over the whole kernel). */
        for (int64_t j0 = c0; j0 < w1; j0 += tile) {
            const int64_t j1 = dn_min64(j0 + tile, w1);
            int64_t q = 0;
#if defined(DN_WIDE_VECTORS)
            if (v64) {
                const int rows = r0 == lo ? 4 : 2;
                for (; q + rows <= full; q += rows)
                    FN(moments_rows_v64)(sum + j0, dev + j0, x + (r0 + q * per) * C + j0, W,
                                         centre + j0, j1 - j0, rows);
                for (; q < full; q++)
                    FN(moments_rows_v64)(sum + j0, dev + j0, x + (r0 + q * per) * C + j0, W,
                                         centre + j0, j1 - j0, 1);
            }
#endif
            if (r0 == lo) {
                for (; q + 4 <= full; q += 4) {
#if defined(DN_HALF)
                    FN(half_dev4)(sum, dev, x + (r0 + q * per) * C, W, centre, j0, j1);
#else
                    const T *DN_RESTRICT r0w = x + (r0 + q * per) * C;
                    const T *DN_RESTRICT r1w = r0w + W, *DN_RESTRICT r2w = r0w + 2 * W;
                    const T *DN_RESTRICT r3w = r0w + 3 * W;
                    for (int64_t j = j0; j < j1; j++) {
                        const T d0 = r0w[j] - centre[j], d1 = r1w[j] - centre[j];
                        const T d2 = r2w[j] - centre[j], d3 = r3w[j] - centre[j];
                        sum[j] += (d0 + d1) + (d2 + d3);
                        dev[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
                    }
#endif
                }
            }
#if !defined(DN_HALF)
            /* rows in the caches (dn_pair_rows): two rows per load and store
             * of the sums, the same additions in the same order */
            if (pairs)
                for (; q + 1 < full; q += 2) {
                    const T *DN_RESTRICT ra = x + (r0 + q * per) * C, *DN_RESTRICT rb = ra + W;
                    for (int64_t j = j0; j < j1; j++) {
                        const T da = ra[j] - centre[j], db = rb[j] - centre[j];
                        sum[j] = (sum[j] + da) + db;
                        dev[j] = (dev[j] + da * da) + db * db;
                    }
                }
#endif
            for (; q < full; q++) {
#if defined(DN_HALF)
                FN(half_dev)(sum, dev, x + (r0 + q * per) * C, centre, j0, j1);
#else
                const T *DN_RESTRICT row = x + (r0 + q * per) * C;
                for (int64_t j = j0; j < j1; j++) {
                    const T d = row[j] - centre[j];
                    sum[j] += d;
                    dev[j] += d * d;
                }
#endif
            }
        }
        for (int64_t r = r0 + full * per; r < r1; r++) {
#if defined(DN_HALF)
            FN(half_dev)(sum, dev, x + r * C, centre, c0, c1);
#else
            const T *DN_RESTRICT row = x + r * C;
            for (int64_t ch = c0; ch < c1; ch++) {
                const T d = row[ch] - centre[ch];
                sum[ch] += d;
                dev[ch] += d * d;
            }
#endif
        }
        FN(fold_wide)(sum, C, per);
        FN(fold_wide)(dev, C, per);
        /* dn_merge_moments, vectorised over channels */
        for (int64_t ch = c0; ch < c1; ch++) {
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

static void FN(group_moments)(const dn_plan *p, const void *x, int64_t t, double *gmean,
                              double *gm2, void *scratch)
{
    if (p->nsc)
        FN(nsc_group_moments)(p, (const S *)x, t, gmean, gm2, (T *)scratch);
    else if (p->short_rows)
        FN(ncs_short_moments)(p, (const S *)x, t, gmean, gm2);
    else
        FN(ncs_group_moments)(p, (const S *)x, t, gmean, gm2, (double *)scratch);
}

/* ---- The fused backward's gradient (dn_grad_gate). ---------------------
 * g[i] = gate(i) ? dy[i]*scale rounded to S (dy[i] when !mul) : +0 for the
 * len elements from flat index i0: what dn_dropout_backward_*() and a
 * ReLU's backward (dy where the output is positive, +0 elsewhere) give in
 * turn. g may be dy itself (iteration k reads and writes index k only). */
#ifndef DN_GATE_UINT_ONCE
#  define DN_GATE_UINT_ONCE
/* the unsigned integer type of each storage type's width */
#  define DN_UINT_f32 uint32_t
#  define DN_UINT_f64 uint64_t
#  define DN_UINT_f16 uint16_t
#  define DN_UINT_bf16 uint16_t
#endif

/* The select is a bitwise AND with all ones or all zeros, as dropout's
 * (dropout_impl.h): no branch on a random mask, and +0 where not kept. */
static inline S FN(gated)(S d, T scale, int mul, int keep)
{
    S v = mul ? DN_ST(DN_LD(d) * scale) : d;
    DN_PASTE2(DN_UINT_, DN_TSFX) bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= (DN_PASTE2(DN_UINT_, DN_TSFX))0 - (DN_PASTE2(DN_UINT_, DN_TSFX))(keep != 0);
    memcpy(&v, &bits, sizeof bits);
    return v;
}

/* g[k] = keep[k] ? dy[k]*scale (dy[k] when !mul) : +0 for k < len; the two
 * loops are separate so that each vectorises without a test inside. */
static inline void FN(gate_select)(const S *dy, const uint8_t *DN_RESTRICT keep, int64_t len,
                                   T scale, int mul, S *g)
{
    if (mul) {
        DN_IVDEP
        for (int64_t k = 0; k < len; k++) g[k] = FN(gated)(dy[k], scale, 1, (int)keep[k]);
    } else {
        DN_IVDEP
        for (int64_t k = 0; k < len; k++) g[k] = FN(gated)(dy[k], scale, 0, (int)keep[k]);
    }
}

#ifndef DN_SPREAD_ONCE
#  define DN_SPREAD_ONCE
/* The 8 bits of a mask byte, LSB first, as 8 bytes of 0 or 1: byte j of
 * the result is bit j (each byte of the product holds the mask byte; the
 * AND keeps bit j of byte j; adding 0x7F carries a set bit into the byte's
 * top bit). */
#  if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) \
      && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#    define DN_LITTLE_ENDIAN 1
#  endif
/* ... the same, for every byte, as a constant table (one load instead of
 * the arithmetic) */
#  define DN_SPREAD(b) ((((((uint64_t)(b)) * 0x0101010101010101u) & 0x8040201008040201u) \
                        + 0x7F7F7F7F7F7F7F7Fu) >> 7 & 0x0101010101010101u)
#  define DN_SPREAD4(b) DN_SPREAD(b), DN_SPREAD((b) + 1), DN_SPREAD((b) + 2), DN_SPREAD((b) + 3)
#  define DN_SPREAD16(b) DN_SPREAD4(b), DN_SPREAD4((b) + 4), DN_SPREAD4((b) + 8), \
                         DN_SPREAD4((b) + 12)
#  define DN_SPREAD64(b) DN_SPREAD16(b), DN_SPREAD16((b) + 16), DN_SPREAD16((b) + 32), \
                         DN_SPREAD16((b) + 48)
static const uint64_t dn_spread_table[256] = {
    DN_SPREAD64(0), DN_SPREAD64(64), DN_SPREAD64(128), DN_SPREAD64(192),
};

static inline void dn_spread_byte(unsigned byte, uint8_t *DN_RESTRICT out)
{
    const uint64_t v = dn_spread_table[byte & 255u];
#  if defined(DN_LITTLE_ENDIAN)
    memcpy(out, &v, 8); /* byte j of v is out[j]: one store */
#  else
    for (int j = 0; j < 8; j++) out[j] = (uint8_t)(v >> (8 * j));
#  endif
}

/* The inverse: 8 bytes of 0 or 1 packed LSB first (byte j of v, moved to
 * bit 56 + j by the product, whose partial products do not overlap). */
static inline unsigned dn_pack_byte(const uint8_t *DN_RESTRICT in)
{
    uint64_t v = 0;
#  if defined(DN_LITTLE_ENDIAN)
    memcpy(&v, in, 8); /* one load */
#  else
    for (int j = 0; j < 8; j++) v |= (uint64_t)in[j] << (8 * j);
#  endif
    return (unsigned)((v * 0x0102040810204080u) >> 56);
}

/* keep[0 .. n) from packed bits starting at bit `bit` of b */
static inline void dn_unpack_bits(const uint8_t *DN_RESTRICT b, int64_t bit, int64_t n,
                                  uint8_t *DN_RESTRICT keep)
{
    int64_t q = 0;
    for (; q < n && ((bit + q) & 7) != 0; q++)
        keep[q] = (uint8_t)((b[(bit + q) >> 3] >> ((bit + q) & 7)) & 1u);
    for (; q + 8 <= n; q += 8) dn_spread_byte(b[(bit + q) >> 3], keep + q);
    for (; q < n; q++) keep[q] = (uint8_t)((b[(bit + q) >> 3] >> ((bit + q) & 7)) & 1u);
}
#endif

/* The gate of flat elements [i0, i0 + len) into keep[0 .. len) (len at
 * most DN_GATE_CHUNK), from y, the mask or Philox. */
#ifndef DN_GATE_CHUNK
#  define DN_GATE_CHUNK 256
#endif
static void FN(gate_keep)(const dn_grad_gate *gt, int64_t i0, int64_t len,
                          uint8_t *DN_RESTRICT keep)
{
    switch (gt->kind) {
    case DN_GATE_Y: {
        const S *DN_RESTRICT y = (const S *)gt->y + i0;
        for (int64_t k = 0; k < len; k++) keep[k] = (uint8_t)(DN_LD(y[k]) > (T)0);
        break;
    }
    case DN_GATE_BITS:
        dn_unpack_bits(gt->bits, i0, len, keep);
        break;
    case DN_GATE_PHILOX: {
        /* whole windows from the one holding i0 (a window starts at a
         * multiple of DN_WIN, so at a Philox block) */
        uint32_t win[DN_WIN];
        for (int64_t base = i0 - i0 % DN_WIN; base < i0 + len; base += DN_WIN) {
            const int64_t lo = dn_max64(base, i0), hi = dn_min64(base + DN_WIN, i0 + len);
            gt->gen(&gt->ps, (uint64_t)base >> 2, win, NULL);
            for (int64_t i = lo; i < hi; i++) keep[i - i0] = (uint8_t)win[i - base];
        }
        break;
    }
    case DN_GATE_ROWBITS: {
        /* row by row: element (r, j) at bit j of row r's bytes */
        for (int64_t k = 0; k < len;) {
            const int64_t i = i0 + k, r = i / gt->row, j = i - r * gt->row;
            const int64_t n = dn_min64(len - k, gt->row - j);
            dn_unpack_bits(gt->rowbits + r * gt->rowbytes, j, n, keep + k);
            k += n;
        }
        break;
    }
    case DN_GATE_NONE:
        memset(keep, 0, (size_t)len);
        break;
    default: /* DN_GATE_ALL */
        memset(keep, 1, (size_t)len);
        break;
    }
}

/* Packs keep[0 .. n) into the row masks from flat element i (i within one
 * row, at a multiple of 8 in it: the reduction's blocks). */
static void FN(gate_pack)(const dn_grad_gate *gt, int64_t i, int64_t n,
                          const uint8_t *DN_RESTRICT keep)
{
    const int64_t r = i / gt->row, j = i - r * gt->row;
    uint8_t *DN_RESTRICT b = gt->rowbits_out + r * gt->rowbytes + j / 8;
    int64_t q = 0;
    for (; q + 8 <= n; q += 8) b[q / 8] = (uint8_t)dn_pack_byte(keep + q);
    if (q < n) {
        unsigned v = 0;
        for (int64_t t = q; t < n; t++) v |= (unsigned)keep[t] << (t - q);
        b[q / 8] = (uint8_t)v;
    }
}

#if defined(__AVX2__) && !defined(DN_HALF) && !defined(DN_GATE_AVX2_ONCE)
#  define DN_GATE_AVX2_ONCE /* float32 only: one copy, whichever T comes first */
/* float32 with AVX2: the gate and its select 8 values at a time, from a
 * compare of y (the mask byte from the same compare) or from a mask byte:
 * the values of gate_keep, gate_pack and gate_select (an exact compare, an
 * AND with all ones or zeros, the same product). n8: a multiple of 8.
 *
 * dn_gated8_avx2: the gradient of the 8 values from q, dy (times the scale
 * with mul) where the gate passes, +0 elsewhere. The gate is the mask byte
 * bits[q / 8] when bits != NULL, else y > 0 (its byte then packed into
 * packed[q / 8] when packed != NULL). */
static DN_ALWAYS_INLINE __m256 dn_gated8_avx2(const uint8_t *DN_RESTRICT bits,
                                              const float *DN_RESTRICT y,
                                              uint8_t *DN_RESTRICT packed, const float *dy,
                                              __m256 scale, int mul, int64_t q)
{
    __m256 m, g = _mm256_loadu_ps(dy + q);
    if (bits != NULL) {
        const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        const __m256i v = _mm256_and_si256(_mm256_set1_epi32(bits[q / 8]), lane);
        m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, lane));
    } else {
        m = _mm256_cmp_ps(_mm256_loadu_ps(y + q), _mm256_setzero_ps(), _CMP_GT_OQ);
        if (packed != NULL) packed[q / 8] = (uint8_t)_mm256_movemask_ps(m);
    }
    if (mul) g = _mm256_mul_ps(g, scale);
    return _mm256_and_ps(m, g);
}

static void dn_gate_y_avx2(const float *DN_RESTRICT y, const float *dy, int64_t n8,
                            float scale, int mul, float *g, uint8_t *DN_RESTRICT bits)
{
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t k = 0; k < n8; k += 8)
        _mm256_storeu_ps(g + k, dn_gated8_avx2(NULL, y, bits, dy, sc, mul, k));
}

static void dn_gate_bits_avx2(const uint8_t *DN_RESTRICT bits, const float *dy, int64_t n8,
                               float scale, int mul, float *g)
{
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t k = 0; k < n8; k += 8)
        _mm256_storeu_ps(g + k, dn_gated8_avx2(bits, NULL, NULL, dy, sc, mul, k));
}

/* Where the AVX2 loops read the gate of flat elements [i0, i0 + len):
 * from y (its bytes packed into the row masks when the gate keeps them, as
 * gate_pack does), or from whole bytes of a mask; returns how many leading
 * values they can take (a multiple of 8, within one row of row masks),
 * 0 when none: the gate is not a mask or y, or i0 is inside a byte. */
typedef struct dn_gate_source {
    const float *y;
    const uint8_t *bits;
    uint8_t *packed;
} dn_gate_source;

static int64_t dn_gate_source_avx2(const dn_grad_gate *gt, int64_t i0, int64_t len,
                                   dn_gate_source *src)
{
    src->y = NULL;
    src->bits = NULL;
    src->packed = NULL;
    switch (gt->kind) {
    case DN_GATE_Y:
        src->y = (const float *)gt->y + i0;
        if (gt->rowbits_out != NULL) {
            const int64_t r = i0 / gt->row, j = i0 - r * gt->row;
            if (j % 8 != 0) return 0;
            len = dn_min64(len, gt->row - j);
            src->packed = gt->rowbits_out + r * gt->rowbytes + j / 8;
        }
        break;
    case DN_GATE_BITS:
        if (i0 % 8 != 0) return 0;
        src->bits = gt->bits + i0 / 8;
        break;
    case DN_GATE_ROWBITS: {
        const int64_t r = i0 / gt->row, j = i0 - r * gt->row;
        if (j % 8 != 0) return 0;
        len = dn_min64(len, gt->row - j);
        src->bits = gt->rowbits + r * gt->rowbytes + j / 8;
        break;
    }
    default:
        return 0;
    }
    return len / 8 * 8;
}

/* backward_run_gated's loop, 8 values at a time, the gate from whole
 * bytes of a mask (bits != NULL) or from y: the same operations in the same
 * order (no contraction), so the same values. The terms are t[0..3][0]
 * for every value (a channel's run), or t[0..3][q] for value q (wide:
 * channels last). */
static DN_ALWAYS_INLINE void dn_backward_gated_avx2(const uint8_t *DN_RESTRICT bits,
                                                    const float *DN_RESTRICT y, const float *dy,
                                                    float scale, int mul, const float *x,
                                                    const float *const t[4], int wide,
                                                    int64_t n8, float *dx)
{
    const __m256 sc = _mm256_set1_ps(scale);
    __m256 a = _mm256_set1_ps(t[0][0]), b = _mm256_set1_ps(t[1][0]);
    __m256 h = _mm256_set1_ps(t[2][0]), k = _mm256_set1_ps(t[3][0]);
    for (int64_t q = 0; q < n8; q += 8) {
        const __m256 g = dn_gated8_avx2(bits, y, NULL, dy, sc, mul, q);
        if (wide) {
            a = _mm256_loadu_ps(t[0] + q);
            b = _mm256_loadu_ps(t[1] + q);
            h = _mm256_loadu_ps(t[2] + q);
            k = _mm256_loadu_ps(t[3] + q);
        }
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + q), h);
        const __m256 u = _mm256_add_ps(_mm256_mul_ps(a, g), _mm256_mul_ps(b, d));
        _mm256_storeu_ps(dx + q, _mm256_add_ps(u, k));
    }
}

/* The leading values of a run, flat elements [i0, i0 + len) with the
 * terms at `at` (channel at, or position at of a wide row when wide), that
 * dn_backward_gated_avx2 can take: whole bytes of the mask, or y; returns
 * how many it wrote to dx. */
static int64_t dn_backward_run_gated_avx2(const dn_grad_gate *gt, int64_t i0, int64_t len,
                                          const float *x, const dn_backward_terms *terms,
                                          int64_t at, int wide, float *dx)
{
    const float *const t[4] = {(const float *)terms->dy_scale + at,
                               (const float *)terms->x_scale + at,
                               (const float *)terms->centre + at,
                               (const float *)terms->offset + at};
    const float *dy = (const float *)gt->dy + i0;
    dn_gate_source src;
    const int64_t n8 = dn_gate_source_avx2(gt, i0, len, &src);
    if (wide)
        dn_backward_gated_avx2(src.bits, src.y, dy, (float)gt->scale, gt->mul, x, t, 1, n8, dx);
    else
        dn_backward_gated_avx2(src.bits, src.y, dy, (float)gt->scale, gt->mul, x, t, 0, n8, dx);
    return n8;
}

/* wide_grad_row with the gradient made in registers: from whole bytes of
 * a mask (bits != NULL) or from y (and packed into `packed` when not
 * NULL), n8 values. Inlined with constant arguments: one loop each. */
static DN_ALWAYS_INLINE void dn_grad_row_avx2(const uint8_t *DN_RESTRICT bits,
                                              const float *DN_RESTRICT y,
                                              uint8_t *DN_RESTRICT packed, const float *dy,
                                              float scale, int mul, const float *DN_RESTRICT x,
                                              const float *DN_RESTRICT h, float *DN_RESTRICT a0,
                                              float *DN_RESTRICT a1, float *DN_RESTRICT a2,
                                              int64_t n8)
{
    const __m256 sc = _mm256_set1_ps(scale);
    for (int64_t q = 0; q < n8; q += 8) {
        const __m256 g = dn_gated8_avx2(bits, y, packed, dy, sc, mul, q);
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + q), _mm256_loadu_ps(h + q));
        _mm256_storeu_ps(a0 + q, _mm256_add_ps(_mm256_loadu_ps(a0 + q), g));
        _mm256_storeu_ps(a1 + q, _mm256_add_ps(_mm256_loadu_ps(a1 + q), d));
        _mm256_storeu_ps(a2 + q, _mm256_add_ps(_mm256_loadu_ps(a2 + q), _mm256_mul_ps(g, d)));
    }
}

/* A wide row's gradient sums (wide_grad_row) with its gradient made in
 * registers from the gate, flat elements [i0, i0 + n): the leading values
 * that whole bytes of a mask, or y, give; y's gate also packed into the
 * row masks as gate_pack does. Returns how many it summed. */
static int64_t dn_grad_row_gated_avx2(const dn_grad_gate *gt, int64_t i0, int64_t n,
                                      const float *DN_RESTRICT x, const float *DN_RESTRICT h,
                                      float *DN_RESTRICT a0, float *DN_RESTRICT a1,
                                      float *DN_RESTRICT a2)
{
    const float *dy = (const float *)gt->dy + i0;
    const float scale = (float)gt->scale;
    dn_gate_source src;
    const int64_t n8 = dn_gate_source_avx2(gt, i0, n, &src);
    /* one loop per kind of gate and scale (constant arguments) */
    if (src.bits != NULL) {
        if (gt->mul) dn_grad_row_avx2(src.bits, NULL, NULL, dy, scale, 1, x, h, a0, a1, a2, n8);
        else dn_grad_row_avx2(src.bits, NULL, NULL, dy, scale, 0, x, h, a0, a1, a2, n8);
    } else if (src.packed != NULL) {
        if (gt->mul) dn_grad_row_avx2(NULL, src.y, src.packed, dy, scale, 1, x, h, a0, a1, a2, n8);
        else dn_grad_row_avx2(NULL, src.y, src.packed, dy, scale, 0, x, h, a0, a1, a2, n8);
    } else if (gt->mul) {
        dn_grad_row_avx2(NULL, src.y, NULL, dy, scale, 1, x, h, a0, a1, a2, n8);
    } else {
        dn_grad_row_avx2(NULL, src.y, NULL, dy, scale, 0, x, h, a0, a1, a2, n8);
    }
    return n8;
}

/* gate_values' leading values that the AVX2 loops can take (whole bytes
 * of a mask, y's gate); returns how many it made, the rest left to the
 * portable loops. */
static int64_t dn_gate_values_avx2(const dn_grad_gate *gt, int64_t i0, int64_t len, float *g)
{
    const float *dy = (const float *)gt->dy + i0;
    const float scale = (float)gt->scale;
    dn_gate_source src;
    const int64_t n8 = dn_gate_source_avx2(gt, i0, len, &src);
    if (src.bits != NULL) dn_gate_bits_avx2(src.bits, dy, n8, scale, gt->mul, g);
    else dn_gate_y_avx2(src.y, dy, n8, scale, gt->mul, g, src.packed);
    return n8;
}
#endif

static void FN(gate_values)(const dn_grad_gate *gt, int64_t i0, int64_t len, S *g)
{
    const S *dy;
    const T scale = (T)gt->scale;
    uint8_t keep[DN_GATE_CHUNK];
#if defined(__AVX2__) && !defined(DN_HALF)
    if (sizeof(T) == sizeof(float)) {
        const int64_t done = dn_gate_values_avx2(gt, i0, len, (float *)g);
        i0 += done;
        len -= done;
        g += done;
    }
#endif
    dy = (const S *)gt->dy + i0;
    if (gt->kind == DN_GATE_NONE) {
        for (int64_t k = 0; k < len; k++) g[k] = (S)0;
        return;
    }
    if (gt->kind == DN_GATE_ALL && !gt->mul) {
        /* a loop, not memmove: glibc's copies of a few KiB from memory
         * (rep movsb) ran at a third of the loop's speed here */
        if ((const void *)g != (const void *)dy) {
            DN_IVDEP
            for (int64_t k = 0; k < len; k++) g[k] = dy[k];
        }
        return;
    }
#if !defined(DN_HALF)
    if (gt->kind == DN_GATE_Y && gt->rowbits_out == NULL) {
        /* the select straight from y, no bytes between */
        const S *DN_RESTRICT y = (const S *)gt->y + i0;
        if (gt->mul) {
            DN_IVDEP
            for (int64_t k = 0; k < len; k++) g[k] = FN(gated)(dy[k], scale, 1, y[k] > (T)0);
        } else {
            DN_IVDEP
            for (int64_t k = 0; k < len; k++) g[k] = FN(gated)(dy[k], scale, 0, y[k] > (T)0);
        }
        return;
    }
#endif
    for (int64_t k0 = 0; k0 < len; k0 += DN_GATE_CHUNK) {
        const int64_t n = dn_min64(DN_GATE_CHUNK, len - k0);
        FN(gate_keep)(gt, i0 + k0, n, keep);
        if (gt->rowbits_out != NULL) FN(gate_pack)(gt, i0 + k0, n, keep);
        FN(gate_select)(dy + k0, keep, n, scale, gt->mul, g + k0);
    }
}

/* g of elements [i0, i0 + len) into the gate's buffer, at the same places */
static void FN(gate_run)(const dn_grad_gate *gt, int64_t i0, int64_t len)
{
    FN(gate_values)(gt, i0, len, (S *)gt->g + i0);
}

/* ---- Gradient sums of one group. ---------------------------------------- */

/* Channels first: per (channel, group) of task t, as run_grad_sums over
 * its pieces in memory order; short_rows channel by channel, all of a
 * channel's rows in the group summed together. */
static void FN(ncs_grad_sums)(const dn_plan *p, const S *dy, const S *x, const T *h,
                              int64_t t, double *sums, const dn_grad_gate *gate)
{
    const int64_t G = p->groups, sp = p->s;
    dn_ncs_pieces it;
    dn_ncs_piece pc;
    dn_ncs_pieces_start(p, t, &it);
    for (int64_t ch = it.c0; ch < it.c1; ch++) {
        double *w = sums + 3 * (ch * G + it.g);
        w[0] = w[1] = w[2] = 0.0;
    }
    if (p->short_rows) {
        /* short_rows groups are whole images: rows img*c + ch, img in [it.img, hi/sp) */
        const int64_t rows = it.hi / sp - it.img;
        int64_t ch = it.c0;
#if defined(DN_WIDE_VECTORS)
        if (gate == NULL)
            for (; ch + DN_QUAD <= it.c1; ch += DN_QUAD) {
                const int64_t first = (it.img * p->c + ch) * sp;
                FN(quad_grad_rows_v64)(dy + first, x + first, sp, p->c * sp, rows, sp, h + ch,
                                       sums + 3 * (ch * G + it.g), 3 * G);
            }
#endif
        for (; ch < it.c1; ch++) {
            const int64_t first = (it.img * p->c + ch) * sp;
            if (gate)
                for (int64_t r = 0; r < rows; r++) FN(gate_run)(gate, first + r * p->c * sp, sp);
            FN(rows_grad_sums)(dy + first, x + first, p->c * sp, rows, sp, h[ch],
                               sums + 3 * (ch * G + it.g));
        }
        return;
    }
    while (dn_ncs_pieces_next(p, &it, &pc)) {
        if (gate && gate->tiles) {
            /* run_grad_sums' blocks, each made on the stack first */
            S gb[DN_INNER];
            for (int64_t b = 0; b < pc.len; b += DN_INNER) {
                const int64_t len = dn_min64(DN_INNER, pc.len - b);
                FN(gate_values)(gate, pc.off + b, len, gb);
                FN(rows_grad_sums)(gb, x + pc.off + b, 0, 1, len, h[pc.ch],
                                   sums + 3 * (pc.ch * G + it.g));
            }
            continue;
        }
        if (gate) FN(gate_run)(gate, pc.off, pc.len);
        FN(run_grad_sums)(dy + pc.off, x + pc.off, pc.len, h[pc.ch],
                          sums + 3 * (pc.ch * G + it.g));
    }
}

#if defined(DN_WIDE_VECTORS)
/* ---- Elementwise passes in 64-byte vectors (AVX-512). -----------------
 * DN_WIDE_VECTORS is ps or pd (T float or double), DN_WIDE_TYPE __m512 or
 * __m512d. A thread's whole range of a channels-last pass goes through
 * FN(v64_range) instead of run by run: the wide rows follow one another
 * without a break, the terms' index wrapping at the row's end. The pass's
 * input (x; dy for the backward) and the terms are loaded aligned, so this
 * runs only where the wide rows are whole cache lines and the terms sit
 * where the input does in their lines (the workspaces put them there,
 * dn_line_like): AVX-512 pays twice for a 64-byte load that straddles two
 * lines, and a 64-byte vector is aligned or always straddles. The output
 * and the backward's x may be anywhere (stores that straddle cost little;
 * x is loaded aligned where it lines up with dy). The range's part of its
 * first and last lines goes through masked loads and stores. Each value
 * sees the scalar loop's operations in its order (no contraction), so the
 * bits are the other variants'. Channels first, FN(v64_cf_range) does the
 * same across the runs of a range: the vector that holds the end of one
 * run takes the next channel's terms in its later lanes (runs one at a
 * time, each with a partial vector at both ends, measured slower than the
 * AVX2 loop). Outputs beyond the caches (streamed), in either layout, are
 * written whole lines at a time with streaming stores straight from the
 * registers where they sit at the input's place in their lines (else
 * through the L1 tile and dn_stream_store): 10-25% faster than the tile at
 * 25-51 MB channels last, up to 10% channels first. Only these functions
 * are compiled for AVX-512: the rest of the variant is the AVX2 build's
 * code (an -mavx512f build of the reductions measured slower). */

/* The terms t[at ..] of the vector's lanes m (all when !part) along a wide
 * row of W values that repeats: lanes past the row's end take t[0 ..]
 * (t + at and t + at - W are aligned: W is a whole number of lines). wrap:
 * the vector may pass the row's end (else it does not). */
static DN_ALWAYS_INLINE DN_AVX512_FN DN_WIDE_TYPE FN(v64_term)(const T *t, int64_t at,
                                                               int64_t W, unsigned m, int part,
                                                               int wrap)
{
    unsigned here;
    if (!wrap || at + DN_V64 <= W)
        return part ? DN_W(maskz_loadu)(m, t + at) : DN_W(load)(t + at);
    here = ((1u << (W - at)) - 1u) & (part ? m : ~0u);
    return DN_W(mask_loadu)(DN_W(maskz_loadu)(here, t + at), (part ? m : ~0u) & ~here,
                            t + at - W);
}

/* The pass's arithmetic on one vector: v the input (x; dy for the
 * backward, whose x is xv), k the terms' vectors; the scalar loops'
 * operations in their order */
static DN_ALWAYS_INLINE DN_AVX512_FN DN_WIDE_TYPE FN(v64_value)(dn_elementwise_kind kind,
                                                                DN_WIDE_TYPE v, DN_WIDE_TYPE xv,
                                                                const DN_WIDE_TYPE *k)
{
    switch (kind) {
    case DN_ELEMENTWISE_AFFINE: /* x*scale + shift */
        return DN_W(add)(DN_W(mul)(v, k[0]), k[1]);
    case DN_ELEMENTWISE_TRAIN: /* ((x - mean_hi) - mean_lo)*scale + shift */
        return DN_W(add)(DN_W(mul)(DN_W(sub)(DN_W(sub)(v, k[0]), k[1]), k[2]), k[3]);
    default: /* dy_scale*dy + x_scale*(x - centre) + offset */
        return DN_W(add)(DN_W(add)(DN_W(mul)(k[0], v), DN_W(mul)(k[1], DN_W(sub)(xv, k[2]))),
                         k[3]);
    }
}

/* The vector's result r at out + i: lanes m when part, else whole (with a
 * streaming store when nt) */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(v64_store)(T *out, int64_t i, unsigned m, int part,
                                                        int nt, DN_WIDE_TYPE r)
{
    if (part) DN_W(mask_storeu)(out + i, m, r);
    else if (nt) DN_W(stream)(out + i, r);
    else DN_W(storeu)(out + i, r);
}

/* One vector of an elementwise pass (values i ..; lanes m when part) on in
 * (x, or dy for the backward, whose x is aligned when xal) with the terms
 * k at position `at` of their wide row */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(v64_step)(dn_elementwise_kind kind, const T *in,
                                                       const T *x, int xal,
                                                       const T *const *k, int64_t i,
                                                       int64_t at, int64_t W, unsigned m,
                                                       int part, int wrap, int nt, T *out)
{
    const int terms = kind == DN_ELEMENTWISE_AFFINE ? 2 : 4;
    DN_WIDE_TYPE kv[4], xv = DN_W(setzero)();
    for (int j = 0; j < terms; j++) kv[j] = FN(v64_term)(k[j], at, W, m, part, wrap);
    if (kind == DN_ELEMENTWISE_BACKWARD) xv = FN(v64_load)(x, i, m, part, xal);
    FN(v64_store)(out, i, m, part, nt,
                  FN(v64_value)(kind, FN(v64_load)(in, i, m, part, 1), xv, kv));
}

/* An elementwise pass over len values from position `at` of the wide row
 * (W values) on: `head` values to in's first line boundary, masked, then
 * whole vectors, then the rest masked; the rows follow one another without
 * a break (the terms wrap, FN(v64_term)) */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(v64_pass)(dn_elementwise_kind kind, const T *in,
                                                       const T *x, int xal,
                                                       const T *const *t, int64_t len,
                                                       int64_t at, int64_t W, int64_t head,
                                                       int nt, T *out)
{
    /* the terms' addresses in locals: the stores (through types that may
     * alias anything) would otherwise make the loop reload them from t */
    const T *const k[4] = {t[0], t[1], kind == DN_ELEMENTWISE_AFFINE ? NULL : t[2],
                           kind == DN_ELEMENTWISE_AFFINE ? NULL : t[3]};
    int64_t i = dn_min64(head, len);
    if (i > 0) {
        FN(v64_step)(kind, in, x, xal, k, 0, at, W, (1u << i) - 1u, 1, 1, nt, out);
        at = at + i < W ? at + i : at + i - W;
    }
    while (i + DN_V64 <= len) {
        /* the whole vectors before the row's end, then the one across it */
        const int64_t n = dn_min64((W - at) / DN_V64, (len - i) / DN_V64);
        for (int64_t q = 0; q < n; q++, i += DN_V64, at += DN_V64)
            FN(v64_step)(kind, in, x, xal, k, i, at, W, 0, 0, 0, nt, out);
        if (at == W) {
            at = 0;
        } else if (i + DN_V64 <= len) {
            FN(v64_step)(kind, in, x, xal, k, i, at, W, 0, 0, 1, nt, out);
            i += DN_V64;
            at += DN_V64 - W;
        }
    }
    if (i < len) FN(v64_step)(kind, in, x, xal, k, i, at, W, (1u << (len - i)) - 1u, 1, 1, nt, out);
}

/* nt: whole vectors stored with streaming stores (y at x's place in its
 * lines) */
static DN_AVX512_FN void FN(affine_rows_v64)(const T *x, const T *const *t, int64_t len,
                                             int64_t at, int64_t W, int64_t head, int nt, T *y)
{
    if (nt) FN(v64_pass)(DN_ELEMENTWISE_AFFINE, x, NULL, 1, t, len, at, W, head, 1, y);
    else FN(v64_pass)(DN_ELEMENTWISE_AFFINE, x, NULL, 1, t, len, at, W, head, 0, y);
}

static DN_AVX512_FN void FN(train_rows_v64)(const T *x, const T *const *t, int64_t len,
                                            int64_t at, int64_t W, int64_t head, int nt, T *y)
{
    if (nt) FN(v64_pass)(DN_ELEMENTWISE_TRAIN, x, NULL, 1, t, len, at, W, head, 1, y);
    else FN(v64_pass)(DN_ELEMENTWISE_TRAIN, x, NULL, 1, t, len, at, W, head, 0, y);
}

/* x at dy's place in its lines (aligned loads) or not */
static DN_AVX512_FN void FN(backward_rows_v64)(const T *dy, const T *x, const T *const *t,
                                               int64_t len, int64_t at, int64_t W,
                                               int64_t head, int nt, T *dx)
{
    const int xal = (uintptr_t)x % 64 == (uintptr_t)dy % 64;
    if (nt && xal) FN(v64_pass)(DN_ELEMENTWISE_BACKWARD, dy, x, 1, t, len, at, W, head, 1, dx);
    else if (nt) FN(v64_pass)(DN_ELEMENTWISE_BACKWARD, dy, x, 0, t, len, at, W, head, 1, dx);
    else if (xal) FN(v64_pass)(DN_ELEMENTWISE_BACKWARD, dy, x, 1, t, len, at, W, head, 0, dx);
    else FN(v64_pass)(DN_ELEMENTWISE_BACKWARD, dy, x, 0, t, len, at, W, head, 0, dx);
}

/* The channels-last gradient sums of n values of one or two rows (g1, x1
 * NULL: one), a0 += g, a1 += d, a2 += g*d with d = x - hw, rows in order:
 * wide_grad_row / wide_grad_rows2's additions. g0 (and g1), a0, a1, a2 and
 * hw at the same place in their lines; x aligned when xal. */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(grad_v64_step)(T *a0, T *a1, T *a2,
                                                            const T *g0, const T *g1,
                                                            const T *x0, const T *x1,
                                                            const T *hw, int64_t j, unsigned m,
                                                            int part, int xal)
{
    const DN_WIDE_TYPE h = FN(v64_load)(hw, j, m, part, 1);
    const DN_WIDE_TYPE ga = FN(v64_load)(g0, j, m, part, 1);
    const DN_WIDE_TYPE da = DN_W(sub)(FN(v64_load)(x0, j, m, part, xal), h);
    DN_WIDE_TYPE s0 = DN_W(add)(FN(v64_load)(a0, j, m, part, 1), ga);
    DN_WIDE_TYPE s1 = DN_W(add)(FN(v64_load)(a1, j, m, part, 1), da);
    DN_WIDE_TYPE s2 = DN_W(add)(FN(v64_load)(a2, j, m, part, 1), DN_W(mul)(ga, da));
    if (g1 != NULL) {
        const DN_WIDE_TYPE gb = FN(v64_load)(g1, j, m, part, 1);
        const DN_WIDE_TYPE db = DN_W(sub)(FN(v64_load)(x1, j, m, part, xal), h);
        s0 = DN_W(add)(s0, gb);
        s1 = DN_W(add)(s1, db);
        s2 = DN_W(add)(s2, DN_W(mul)(gb, db));
    }
    if (part) {
        DN_W(mask_storeu)(a0 + j, m, s0);
        DN_W(mask_storeu)(a1 + j, m, s1);
        DN_W(mask_storeu)(a2 + j, m, s2);
    } else {
        DN_W(store)(a0 + j, s0);
        DN_W(store)(a1 + j, s1);
        DN_W(store)(a2 + j, s2);
    }
}

static DN_ALWAYS_INLINE DN_AVX512_FN void FN(grad_v64_pass)(T *a0, T *a1, T *a2, const T *g0,
                                                            const T *g1, const T *x0,
                                                            const T *x1, const T *hw,
                                                            int64_t n, int xal)
{
    int64_t j = dn_min64(FN(v64_head)(g0), n);
    if (j > 0) FN(grad_v64_step)(a0, a1, a2, g0, g1, x0, x1, hw, 0, (1u << j) - 1u, 1, xal);
    for (; j + DN_V64 <= n; j += DN_V64)
        FN(grad_v64_step)(a0, a1, a2, g0, g1, x0, x1, hw, j, 0, 0, xal);
    if (j < n) FN(grad_v64_step)(a0, a1, a2, g0, g1, x0, x1, hw, j, (1u << (n - j)) - 1u, 1, xal);
}

static DN_AVX512_FN void FN(grad_rows_v64)(T *a0, T *a1, T *a2, const T *g0, const T *g1,
                                           const T *x0, const T *x1, const T *hw, int64_t n)
{
    if ((uintptr_t)x0 % 64 == (uintptr_t)g0 % 64)
        FN(grad_v64_pass)(a0, a1, a2, g0, g1, x0, x1, hw, n, 1);
    else
        FN(grad_v64_pass)(a0, a1, a2, g0, g1, x0, x1, hw, n, 0);
}

/* The pass's per-channel terms (affine: scale, shift, and scale again
 * for the unused two) */
static void FN(v64_terms)(const dn_elementwise *op, const T **k)
{
    switch (op->kind) {
    case DN_ELEMENTWISE_AFFINE:
        k[0] = (const T *)op->affine.scale, k[1] = (const T *)op->affine.shift;
        k[2] = k[0], k[3] = k[0];
        break;
    case DN_ELEMENTWISE_TRAIN:
        k[0] = (const T *)op->train.mean_hi, k[1] = (const T *)op->train.mean_lo;
        k[2] = (const T *)op->train.scale, k[3] = (const T *)op->train.shift;
        break;
    default:
        k[0] = (const T *)op->backward.dy_scale, k[1] = (const T *)op->backward.x_scale;
        k[2] = (const T *)op->backward.centre, k[3] = (const T *)op->backward.offset;
        break;
    }
}

/* The terms' vectors for channel ch (one value each, broadcast) */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(v64_channel_terms)(dn_elementwise_kind kind,
                                                                const T *const *k, int64_t ch,
                                                                DN_WIDE_TYPE *kv)
{
    const int terms = kind == DN_ELEMENTWISE_AFFINE ? 2 : 4;
    for (int j = 0; j < terms; j++) kv[j] = DN_W(set1)(k[j][ch]);
}

/* One vector of a channels-first pass at in + i, its first n values (n <
 * a vector: masked) with the terms kv, of which only the first `left`
 * remain in this run: the lanes past them take the next channel's, and
 * kv, ch and left move on to that channel when the run ends here. */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(v64_cf_step)(dn_elementwise_kind kind,
                                                          const T *in, const T *x,
                                                          const T *const *k, int64_t i,
                                                          int64_t n, int64_t s, int64_t C,
                                                          int nt, DN_WIDE_TYPE *kv,
                                                          int64_t *ch, int64_t *left, T *out)
{
    const unsigned m = n < DN_V64 ? (1u << n) - 1u : (1u << DN_V64) - 1u;
    const int part = n < DN_V64, terms = kind == DN_ELEMENTWISE_AFFINE ? 2 : 4;
    DN_WIDE_TYPE use[4], xv = DN_W(setzero)();
    for (int j = 0; j < terms; j++) use[j] = kv[j];
    if (*left <= n) {
        /* the run ends in this vector: the next channel's terms from lane left */
        const unsigned from = ~((1u << *left) - 1u);
        *ch = *ch + 1 == C ? 0 : *ch + 1;
        FN(v64_channel_terms)(kind, k, *ch, kv);
        for (int j = 0; j < terms; j++) use[j] = DN_W(mask_blend)(from, use[j], kv[j]);
        *left += s;
    }
    *left -= n;
    if (kind == DN_ELEMENTWISE_BACKWARD) xv = FN(v64_load)(x, i, m, part, 0);
    FN(v64_store)(out, i, m, part, nt,
                  FN(v64_value)(kind, FN(v64_load)(in, i, m, part, 1), xv, use));
}

/* Channels first, runs of s >= DN_V64 values: len values from flat
 * element e on in 64-byte vectors from in's line boundaries, across the
 * runs (a vector that holds the end of one run takes the next channel's
 * terms in its later lanes), so that only the range's first and last
 * vectors are partial. */
static DN_ALWAYS_INLINE DN_AVX512_FN void FN(v64_cf_pass)(dn_elementwise_kind kind,
                                                          const T *in, const T *x,
                                                          const T *const *k, int64_t len,
                                                          int64_t e, int64_t s, int64_t C,
                                                          int nt, T *out)
{
    int64_t ch = (e / s) % C, left = s - e % s, i = dn_min64(FN(v64_head)(in), len);
    DN_WIDE_TYPE kv[4];
    FN(v64_channel_terms)(kind, k, ch, kv);
    if (i > 0) FN(v64_cf_step)(kind, in, x, k, 0, i, s, C, nt, kv, &ch, &left, out);
    while (i < len) {
        /* the whole vectors inside this run, then the one where it ends (or the range's last) */
        const int64_t whole = (dn_min64(left, len - i) - 1) / DN_V64;
        for (int64_t q = 0; q < whole; q++, i += DN_V64) {
            const DN_WIDE_TYPE xv = kind == DN_ELEMENTWISE_BACKWARD
                                        ? FN(v64_load)(x, i, 0, 0, 0) : DN_W(setzero)();
            FN(v64_store)(out, i, 0, 0, nt,
                          FN(v64_value)(kind, FN(v64_load)(in, i, 0, 0, 1), xv, kv));
        }
        left -= whole * DN_V64;
        /* a whole vector (n a constant: no masks) or the range's last */
        if (i + DN_V64 <= len) {
            FN(v64_cf_step)(kind, in, x, k, i, DN_V64, s, C, nt, kv, &ch, &left, out);
            i += DN_V64;
        } else if (i < len) {
            FN(v64_cf_step)(kind, in, x, k, i, len - i, s, C, nt, kv, &ch, &left, out);
            i = len;
        }
    }
}

static DN_AVX512_FN int FN(v64_cf_range)(const dn_plan *p, const dn_elementwise *op,
                                         int64_t i0, int64_t i1, int nt, S *out)
{
    const S *in = (const S *)op->in + (i0 - op->in_from);
    const S *x = op->kind == DN_ELEMENTWISE_BACKWARD ? (const S *)op->x + i0 : NULL;
    const T *k[4];
    if (p->s < DN_V64 || (!nt && p->s >= DN_CF_MAX_RUN) || (uintptr_t)in % sizeof(T) != 0
        || (nt && (uintptr_t)out % DN_CACHE_LINE != (uintptr_t)in % DN_CACHE_LINE))
        return 0;
    FN(v64_terms)(op, k);
    switch (op->kind) {
    case DN_ELEMENTWISE_AFFINE:
        if (nt) FN(v64_cf_pass)(DN_ELEMENTWISE_AFFINE, in, x, k, i1 - i0, i0, p->s, p->c, 1, out);
        else FN(v64_cf_pass)(DN_ELEMENTWISE_AFFINE, in, x, k, i1 - i0, i0, p->s, p->c, 0, out);
        break;
    case DN_ELEMENTWISE_TRAIN:
        if (nt) FN(v64_cf_pass)(DN_ELEMENTWISE_TRAIN, in, x, k, i1 - i0, i0, p->s, p->c, 1, out);
        else FN(v64_cf_pass)(DN_ELEMENTWISE_TRAIN, in, x, k, i1 - i0, i0, p->s, p->c, 0, out);
        break;
    default:
        if (nt) FN(v64_cf_pass)(DN_ELEMENTWISE_BACKWARD, in, x, k, i1 - i0, i0, p->s, p->c, 1, out);
        else FN(v64_cf_pass)(DN_ELEMENTWISE_BACKWARD, in, x, k, i1 - i0, i0, p->s, p->c, 0, out);
        break;
    }
    return 1;
}

/* Channels last: op over flat elements [i0, i1) into out in 64-byte
 * vectors, when the wide rows are whole lines and the terms sit where the
 * input does in their lines (else 0, nothing done) */
static int FN(v64_range)(const dn_plan *p, const dn_elementwise *op, int64_t i0, int64_t i1,
                         int nt, S *out)
{
    const int64_t W = p->wide, at = i0 % W, len = i1 - i0;
    const S *in = (const S *)op->in + (i0 - op->in_from);
    const uintptr_t a = (uintptr_t)in % DN_CACHE_LINE;
    const T *k[4];
    FN(v64_terms)(op, k);
    /* beyond the caches (streamed outputs) they measured no faster, up to 9%
     * slower */
    if (len < DN_MIN_V64_RUN || W * (int64_t)sizeof(T) % DN_CACHE_LINE != 0
        || a % sizeof(T) != 0
        || (nt ? (uintptr_t)out % DN_CACHE_LINE != a
               : p->total * (int64_t)sizeof(S) >= DN_STREAM_MIN_BYTES))
        return 0;
    for (int j = 0; j < 4; j++)
        if ((uintptr_t)(k[j] + at) % DN_CACHE_LINE != a) return 0;
    switch (op->kind) {
    case DN_ELEMENTWISE_AFFINE:
        FN(affine_rows_v64)(in, k, len, at, W, FN(v64_head)(in), nt, out);
        break;
    case DN_ELEMENTWISE_TRAIN:
        FN(train_rows_v64)(in, k, len, at, W, FN(v64_head)(in), nt, out);
        break;
    default:
        FN(backward_rows_v64)(in, (const S *)op->x + i0, k, len, at, W, FN(v64_head)(in), nt, out);
        break;
    }
    return 1;
}
#endif

/* a0[j] += g[j], a1[j] += d, a2[j] += g[j]*d for j < n, d = x[j] - h[j] */
static DN_ALWAYS_INLINE void FN(wide_grad_row)(T *DN_RESTRICT a0, T *DN_RESTRICT a1,
                                               T *DN_RESTRICT a2, const S *DN_RESTRICT gr,
                                               const S *DN_RESTRICT xr, const T *DN_RESTRICT hw,
                                               int64_t n)
{
#if defined(DN_HALF)
    FN(half_grad)(a0, a1, a2, gr, xr, hw, 0, n);
#else
    for (int64_t j = 0; j < n; j++) {
        const T d = xr[j] - hw[j];
        a0[j] += gr[j];
        a1[j] += d;
        a2[j] += gr[j] * d;
    }
#endif
}

/* wide_grad_row on two rows, g0/x0 then g1/x1, each accumulator loaded
 * and stored once for both: the same additions in the same order. */
static DN_ALWAYS_INLINE void FN(wide_grad_rows2)(T *DN_RESTRICT a0, T *DN_RESTRICT a1,
                                                 T *DN_RESTRICT a2, const S *DN_RESTRICT g0,
                                                 const S *DN_RESTRICT g1,
                                                 const S *DN_RESTRICT x0,
                                                 const S *DN_RESTRICT x1,
                                                 const T *DN_RESTRICT hw, int64_t n)
{
#if defined(DN_HALF)
    FN(wide_grad_row)(a0, a1, a2, g0, x0, hw, n);
    FN(wide_grad_row)(a0, a1, a2, g1, x1, hw, n);
#else
    for (int64_t j = 0; j < n; j++) {
        const T d0 = x0[j] - hw[j], d1 = x1[j] - hw[j];
        a0[j] = (a0[j] + g0[j]) + g1[j];
        a1[j] = (a1[j] + d0) + d1;
        a2[j] = (a2[j] + g0[j] * d0) + g1[j] * d1;
    }
#endif
}

/* The place in buf (DN_ALIAS_BYTES more than it needs) with the low 12
 * address bits of `like`: a store there and a load from the tensors at
 * the next elements never look like the same address to the CPU (4K
 * aliasing stalls the load until the store retires). */
static inline S *FN(unaliased)(S *buf, const S *like)
{
    const uintptr_t off = ((uintptr_t)like - (uintptr_t)buf) % DN_ALIAS_BYTES;
    return (S *)(void *)((char *)buf + off);
}

/* The fused backward's gradient of rows [r, r + rows), channels [c0, c1),
 * into g (row k at g + k*(c1 - c0)); the gate's row masks written with it. */
static void FN(gate_rows)(const dn_grad_gate *gate, int64_t C, int64_t r, int64_t rows,
                          int64_t c0, int64_t c1, S *g)
{
    if (c1 - c0 == C) {
        FN(gate_values)(gate, r * C, rows * C, g);
        return;
    }
    for (int64_t k = 0; k < rows; k++)
        FN(gate_values)(gate, (r + k) * C + c0, c1 - c0, g + k * (c1 - c0));
}

/* Whether this T has the AVX2 gated loops (float32 in the AVX2 build). */
#undef DN_GATED_AVX2
#if defined(__AVX2__) && !defined(DN_HALF)
#  define DN_GATED_AVX2 (sizeof(T) == sizeof(float))
#else
#  define DN_GATED_AVX2 0
#endif

/* dn_grad_row_gated_avx2 where it exists: how many of the n values it
 * summed; 0 elsewhere. */
static inline int64_t FN(grad_row_gated)(const dn_grad_gate *gt, int64_t i0, int64_t n,
                                         const S *x, const T *h, T *a0, T *a1, T *a2)
{
#if defined(__AVX2__) && !defined(DN_HALF)
    if (sizeof(T) == sizeof(float))
        return dn_grad_row_gated_avx2(gt, i0, n, (const float *)x, (const float *)h,
                                      (float *)a0, (float *)a1, (float *)a2);
#endif
    (void)gt, (void)i0, (void)n, (void)x, (void)h, (void)a0, (void)a1, (void)a2;
    return 0;
}

/* dn_backward_run_gated_avx2 where it exists: how many of the run's len
 * values it wrote to dx; 0 elsewhere. */
static inline int64_t FN(backward_run_gated_avx2)(const dn_grad_gate *gt, int64_t i0,
                                                  int64_t len, const S *x,
                                                  const dn_backward_terms *terms, int64_t at,
                                                  int wide, S *dx)
{
#if defined(__AVX2__) && !defined(DN_HALF)
    if (sizeof(T) == sizeof(float))
        return dn_backward_run_gated_avx2(gt, i0, len, (const float *)x, terms, at, wide,
                                          (float *)dx);
#endif
    (void)gt, (void)i0, (void)len, (void)x, (void)terms, (void)at, (void)wide, (void)dx;
    return 0;
}

/* Channels last: per channel, rows summed in T over wide rows (as
 * nsc_group_moments) in blocks of p->chunk rows, each block then added to
 * w in double. A task's columns [c0, w1) are one tile (nsc_group_moments'),
 * so each column sums its rows in order. acc: scratch of 4*p->wide values,
 * then (with the gate) room for max(DN_GRAD_TILE_ELEMS, p->wide) values of
 * S: the gradient of a few wide rows at a time, made from the gate in L1
 * and summed from there instead of from memory. */
static void FN(nsc_grad_sums)(const dn_plan *p, const S *dy, const S *x, const T *h,
                              int64_t t, double *DN_RESTRICT w, T *DN_RESTRICT acc,
                              const dn_grad_gate *gate)
{
    const int64_t C = p->c, W = p->wide, per = W / C;
    T *DN_RESTRICT a0, *DN_RESTRICT a1, *DN_RESTRICT a2, *DN_RESTRICT hw;
#if defined(DN_WIDE_VECTORS)
    /* 64-byte sums where the rows are whole lines, in tensors below
     * DN_STREAM_MIN_BYTES, two rows per load and store of the sums (also
     * beyond dn_pair_rows, where the AVX2 loop takes one: 10-18% faster
     * backward at 12.8 MB; one row at a time there they measured 15-24%
     * slower): the accumulators at dy's place in its lines (the scratch has
     * a line to spare), so that both load aligned */
    const int v64 = !gate && C * (int64_t)sizeof(T) % DN_CACHE_LINE == 0  /* and so W's */
                    && (uintptr_t)dy % sizeof(T) == 0
                    && p->total * (int64_t)sizeof(S) < DN_STREAM_MIN_BYTES;
    if (v64) acc = (T *)dn_line_like(acc, dy, sizeof(T));
#endif
    a0 = acc, a1 = acc + W, a2 = acc + 2 * W, hw = acc + 3 * W;
    /* tiles: the gradient made in gbuf; else written where gate->g is
     * (gate_run), and dy is that */
    S *const gbuf = gate && gate->tiles ? (S *)(acc + 4 * W) : NULL;
    int pairs;
    int64_t g, c0, c1, w1, lo, hi, cols, stride, step;
    /* channels [c0, c1): columns [c0, w1) (see nsc_group_moments) */
    dn_reduce_task(p, t, &g, &c0, &c1);
    w1 = c1 == C ? W : c1;
    cols = w1 - c0;
    /* rows in the caches: two rows per load and store of the sums */
    pairs = dn_pair_rows(cols, p->total * (int64_t)sizeof(S));
    /* a wide row of the gradient in gbuf: per rows of the task's channels */
    stride = gbuf ? per * (c1 - c0) : W;
    step = gbuf ? dn_max64(1, DN_GRAD_TILE_ELEMS / stride) : DN_CHUNK_ROWS;
    w += 3 * C * g;
    dn_group_range(p, g, &lo, &hi);
    for (int64_t ch = c0; ch < c1; ch++) hw[ch] = h[ch];
    FN(widen)(p, hw);
    for (int64_t i = 3 * c0; i < 3 * c1; i++) w[i] = 0.0;
    for (int64_t r0 = lo; r0 < hi; r0 += p->chunk) {
        const int64_t r1 = dn_min64(r0 + p->chunk, hi);
        const int64_t full = (r1 - r0) / per, rest = r0 + full * per;
        if (gate && !gbuf)
            for (int64_t r = r0; r < r1; r++) FN(gate_run)(gate, r * C + c0, c1 - c0);
        for (int64_t j = c0; j < w1; j++) a0[j] = a1[j] = a2[j] = 0;
        if (gbuf && DN_GATED_AVX2) {
            /* row by row, the gradient in registers where it can be */
            for (int64_t q = 0; q < full; q++) {
                const int64_t i = (r0 + q * per) * C + c0;
                const int64_t done = FN(grad_row_gated)(gate, i, cols, x + i, hw + c0, a0 + c0,
                                                        a1 + c0, a2 + c0);
                if (done < cols) {
                    S *gb = FN(unaliased)(gbuf, dy + i + done);
                    FN(gate_values)(gate, i + done, cols - done, gb);
                    FN(wide_grad_row)(a0 + c0 + done, a1 + c0 + done, a2 + c0 + done, gb,
                                      x + i + done, hw + c0 + done, cols - done);
                }
            }
        } else {
            for (int64_t q0 = 0; q0 < full; q0 += step) {
                const int64_t q1 = dn_min64(q0 + step, full);
                const S *src = dy + (r0 + q0 * per) * C + c0;
                if (gbuf) {
                    S *gb = FN(unaliased)(gbuf, src);
                    FN(gate_rows)(gate, C, r0 + q0 * per, (q1 - q0) * per, c0, c1, gb);
                    src = gb;
                }
                int64_t q = q0;
#if defined(DN_WIDE_VECTORS)
                if (v64) {
                    for (; q + 1 < q1; q += 2)
                        FN(grad_rows_v64)(a0 + c0, a1 + c0, a2 + c0, src + (q - q0) * stride,
                                          src + (q + 1 - q0) * stride,
                                          x + (r0 + q * per) * C + c0,
                                          x + (r0 + (q + 1) * per) * C + c0, hw + c0, cols);
                    if (q < q1)
                        FN(grad_rows_v64)(a0 + c0, a1 + c0, a2 + c0, src + (q - q0) * stride,
                                          NULL, x + (r0 + q * per) * C + c0, NULL, hw + c0,
                                          cols);
                    continue;
                }
#endif
                if (pairs)
                    for (; q + 1 < q1; q += 2)
                        FN(wide_grad_rows2)(a0 + c0, a1 + c0, a2 + c0, src + (q - q0) * stride,
                                            src + (q + 1 - q0) * stride,
                                            x + (r0 + q * per) * C + c0,
                                            x + (r0 + (q + 1) * per) * C + c0, hw + c0, cols);
                for (; q < q1; q++)
                    FN(wide_grad_row)(a0 + c0, a1 + c0, a2 + c0, src + (q - q0) * stride,
                                      x + (r0 + q * per) * C + c0, hw + c0, cols);
            }
        }
        /* the rows after the last wide one (per > 1: the task has every channel) */
        if (rest < r1) {
            const S *src = dy + rest * C;
            if (gbuf) {
                S *gb = FN(unaliased)(gbuf, src);
                FN(gate_rows)(gate, C, rest, r1 - rest, 0, C, gb);
                src = gb;
            }
            for (int64_t r = rest; r < r1; r++)
                FN(wide_grad_row)(a0, a1, a2, src + (r - rest) * C, x + r * C, hw, C);
        }
        FN(fold_wide)(a0, C, per);
        FN(fold_wide)(a1, C, per);
        FN(fold_wide)(a2, C, per);
        for (int64_t ch = c0; ch < c1; ch++) {
            w[3 * ch] += (double)a0[ch];
            w[3 * ch + 1] += (double)a1[ch];
            w[3 * ch + 2] += (double)a2[ch];
        }
    }
}

static void FN(group_grad_sums)(const dn_plan *p, const void *dy, const void *x,
                                const void *shift, int64_t t, double *sums, void *scratch)
{
    if (p->nsc)
        FN(nsc_grad_sums)(p, (const S *)dy, (const S *)x, (const T *)shift, t, sums,
                          (T *)scratch, NULL);
    else
        FN(ncs_grad_sums)(p, (const S *)dy, (const S *)x, (const T *)shift, t, sums, NULL);
}

/* The fused backward's sums: each piece's gradient made by the gate (in
 * L1, or written by gate_run), then summed from there exactly as
 * group_grad_sums sums dy. */
static void FN(group_gated_sums)(const dn_plan *p, const dn_grad_gate *gate, const void *x,
                                 const void *shift, int64_t t, double *sums, void *scratch)
{
    if (p->nsc)
        FN(nsc_grad_sums)(p, (const S *)(gate->tiles ? gate->dy : gate->g), (const S *)x,
                          (const T *)shift, t, sums, (T *)scratch, gate);
    else
        FN(ncs_grad_sums)(p, (const S *)gate->g, (const S *)x, (const T *)shift, t, sums, gate);
}

/* ---- Elementwise passes. -------------------------------------------------
 * One run of each pass: with the terms of a wide row, one per element
 * (channels last, *_wide), or one term for the run (channels first). The
 * output may be an input (in place): iteration i reads and writes index i
 * only, so the loops are DN_IVDEP rather than restrict. */

static void FN(train_wide)(const S *x, const T *DN_RESTRICT mh, const T *DN_RESTRICT ml,
                           const T *DN_RESTRICT scale, const T *DN_RESTRICT shift, int64_t len,
                           S *y)
{
    int64_t i = 0;
#if defined(DN_HALF)
    for (; i + DN_LANES <= len; i += DN_LANES) {
        const FN(lanes) d = FN(lanes_sub)(FN(lanes_sub)(FN(lanes_load_s)(x + i),
                                                        FN(lanes_load)(mh + i)),
                                          FN(lanes_load)(ml + i));
        FN(lanes_store_s)(y + i, FN(lanes_add)(FN(lanes_mul)(d, FN(lanes_load)(scale + i)),
                                               FN(lanes_load)(shift + i)));
    }
#endif
    DN_IVDEP
    for (; i < len; i++) y[i] = DN_ST(((DN_LD(x[i]) - mh[i]) - ml[i]) * scale[i] + shift[i]);
}

#if !defined(DN_HALF)
/* train_wide on two wide rows (row 1 at +W of row 0 in x and y), each
 * term loaded once for both: the same expression, the same values. */
static void FN(train_wide2)(const S *x, const dn_train_terms *t, int64_t W, S *y)
{
    const T *DN_RESTRICT mh = (const T *)t->mean_hi, *DN_RESTRICT ml = (const T *)t->mean_lo;
    const T *DN_RESTRICT scale = (const T *)t->scale, *DN_RESTRICT shift = (const T *)t->shift;
    const S *DN_RESTRICT x1 = x + W;
    S *DN_RESTRICT y1 = y + W;
    DN_IVDEP
    for (int64_t i = 0; i < W; i++) {
        y[i] = ((x[i] - mh[i]) - ml[i]) * scale[i] + shift[i];
        y1[i] = ((x1[i] - mh[i]) - ml[i]) * scale[i] + shift[i];
    }
}
#endif

static void FN(train_run)(const S *x, T mh, T ml, T scale, T shift, int64_t len, S *y)
{
    int64_t i = 0;
#if defined(DN_HALF)
    const FN(lanes) vmh = FN(lanes_splat)(mh), vml = FN(lanes_splat)(ml);
    const FN(lanes) vscale = FN(lanes_splat)(scale), vshift = FN(lanes_splat)(shift);
    for (; i + DN_LANES <= len; i += DN_LANES) {
        const FN(lanes) d = FN(lanes_sub)(FN(lanes_sub)(FN(lanes_load_s)(x + i), vmh), vml);
        FN(lanes_store_s)(y + i, FN(lanes_add)(FN(lanes_mul)(d, vscale), vshift));
    }
#endif
    DN_IVDEP
    for (; i < len; i++) y[i] = DN_ST(((DN_LD(x[i]) - mh) - ml) * scale + shift);
}

static void FN(affine_wide)(const S *x, const T *DN_RESTRICT scale, const T *DN_RESTRICT shift,
                            int64_t len, S *y)
{
    int64_t i = 0;
#if defined(DN_HALF)
    for (; i + DN_LANES <= len; i += DN_LANES)
        FN(lanes_store_s)(y + i, FN(lanes_add)(FN(lanes_mul)(FN(lanes_load_s)(x + i),
                                                             FN(lanes_load)(scale + i)),
                                               FN(lanes_load)(shift + i)));
#endif
    DN_IVDEP
    for (; i < len; i++) y[i] = DN_ST(DN_LD(x[i]) * scale[i] + shift[i]);
}

static void FN(affine_run)(const S *x, T scale, T shift, int64_t len, S *y)
{
    int64_t i = 0;
#if defined(DN_HALF)
    const FN(lanes) vscale = FN(lanes_splat)(scale), vshift = FN(lanes_splat)(shift);
    for (; i + DN_LANES <= len; i += DN_LANES)
        FN(lanes_store_s)(y + i,
                          FN(lanes_add)(FN(lanes_mul)(FN(lanes_load_s)(x + i), vscale), vshift));
#endif
    DN_IVDEP
    for (; i < len; i++) y[i] = DN_ST(DN_LD(x[i]) * scale + shift);
}

static void FN(backward_wide)(const S *dy, const S *x, const dn_backward_terms *t, int64_t at,
                              int64_t len, S *dx)
{
    const T *DN_RESTRICT a = (const T *)t->dy_scale + at;
    const T *DN_RESTRICT b = (const T *)t->x_scale + at;
    const T *DN_RESTRICT h = (const T *)t->centre + at;
    const T *DN_RESTRICT k = (const T *)t->offset + at;
    int64_t i = 0;
#if defined(DN_HALF)
    for (; i + DN_LANES <= len; i += DN_LANES) {
        const FN(lanes) g = FN(lanes_mul)(FN(lanes_load)(a + i), FN(lanes_load_s)(dy + i));
        const FN(lanes) d = FN(lanes_sub)(FN(lanes_load_s)(x + i), FN(lanes_load)(h + i));
        const FN(lanes) bd = FN(lanes_mul)(FN(lanes_load)(b + i), d);
        FN(lanes_store_s)(dx + i, FN(lanes_add)(FN(lanes_add)(g, bd), FN(lanes_load)(k + i)));
    }
#endif
    DN_IVDEP
    for (; i < len; i++)
        dx[i] = DN_ST(a[i] * DN_LD(dy[i]) + b[i] * (DN_LD(x[i]) - h[i]) + k[i]);
}

#if !defined(DN_HALF)
/* backward_wide on two wide rows (row 1 at +W of row 0 in dy, x and dx),
 * each term loaded once for both: the same expression, the same values. */
static void FN(backward_wide2)(const S *dy, const S *x, const dn_backward_terms *t, int64_t W,
                               S *dx)
{
    const T *DN_RESTRICT a = (const T *)t->dy_scale, *DN_RESTRICT b = (const T *)t->x_scale;
    const T *DN_RESTRICT h = (const T *)t->centre, *DN_RESTRICT k = (const T *)t->offset;
    const S *DN_RESTRICT dy1 = dy + W, *DN_RESTRICT x1 = x + W;
    S *DN_RESTRICT dx1 = dx + W;
    DN_IVDEP
    for (int64_t i = 0; i < W; i++) {
        dx[i] = a[i] * dy[i] + b[i] * (x[i] - h[i]) + k[i];
        dx1[i] = a[i] * dy1[i] + b[i] * (x1[i] - h[i]) + k[i];
    }
}
#endif

static void FN(backward_run)(const S *dy, const S *x, const dn_backward_terms *t, int64_t ch,
                             int64_t len, S *dx)
{
    const T a = ((const T *)t->dy_scale)[ch], b = ((const T *)t->x_scale)[ch];
    const T h = ((const T *)t->centre)[ch], k = ((const T *)t->offset)[ch];
    int64_t i = 0;
#if defined(DN_HALF)
    const FN(lanes) va = FN(lanes_splat)(a), vb = FN(lanes_splat)(b);
    const FN(lanes) vh = FN(lanes_splat)(h), vk = FN(lanes_splat)(k);
    for (; i + DN_LANES <= len; i += DN_LANES) {
        const FN(lanes) g = FN(lanes_mul)(va, FN(lanes_load_s)(dy + i));
        const FN(lanes) d = FN(lanes_sub)(FN(lanes_load_s)(x + i), vh);
        FN(lanes_store_s)(dx + i, FN(lanes_add)(FN(lanes_add)(g, FN(lanes_mul)(vb, d)), vk));
    }
#endif
    DN_IVDEP
    for (; i < len; i++) dx[i] = DN_ST(a * DN_LD(dy[i]) + b * (DN_LD(x[i]) - h) + k);
}

#if !defined(DN_HALF)
/* backward_run on the gradient g of the gate's keep bytes, g made in
 * registers from dy (the same arithmetic on the same values: g is a value
 * of T here, as the stored one would be). */
static void FN(backward_run_gated)(const S *dy, const uint8_t *DN_RESTRICT keep, T scale,
                                   int mul, const S *x, const dn_backward_terms *t, int64_t ch,
                                   int64_t len, S *dx)
{
    const T a = ((const T *)t->dy_scale)[ch], b = ((const T *)t->x_scale)[ch];
    const T h = ((const T *)t->centre)[ch], k = ((const T *)t->offset)[ch];
    if (mul) {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++)
            dx[i] = a * FN(gated)(dy[i], scale, 1, (int)keep[i]) + b * (x[i] - h) + k;
    } else {
        DN_IVDEP
        for (int64_t i = 0; i < len; i++)
            dx[i] = a * FN(gated)(dy[i], scale, 0, (int)keep[i]) + b * (x[i] - h) + k;
    }
}
#endif

/* op over flat elements [i0, i1) into out[0 .. i1 - i0), run by run. */
static void FN(elementwise_range)(const dn_plan *p, const dn_elementwise *op, int64_t i0,
                                  int64_t i1, S *out)
{
    /* in + k is flat element in_from + k */
    const S *in = (const S *)op->in, *x = (const S *)op->x;
    const int64_t from = op->in_from;
    const dn_train_terms *tr = &op->train;
    const dn_affine_terms *af = &op->affine;
    dn_runs runs;
    int64_t i, len, at;
#if defined(DN_WIDE_VECTORS)
    if (p->nsc && FN(v64_range)(p, op, i0, i1, 0, out)) return;
    if (!p->nsc && FN(v64_cf_range)(p, op, i0, i1, 0, out)) return;
#endif
    for (dn_runs_start(p, i0, &runs); dn_runs_next(p, &runs, i1, &i, &len, &at);) {
        S *dst = out + (i - i0);
        switch (op->kind) {
        case DN_ELEMENTWISE_TRAIN:
            if (p->nsc)
                FN(train_wide)(in + (i - from), (const T *)tr->mean_hi + at, (const T *)tr->mean_lo + at,
                               (const T *)tr->scale + at, (const T *)tr->shift + at, len, dst);
            else
                FN(train_run)(in + (i - from), ((const T *)tr->mean_hi)[at], ((const T *)tr->mean_lo)[at],
                              ((const T *)tr->scale)[at], ((const T *)tr->shift)[at], len, dst);
            break;
        case DN_ELEMENTWISE_AFFINE:
            if (p->nsc)
                FN(affine_wide)(in + (i - from), (const T *)af->scale + at, (const T *)af->shift + at, len,
                                dst);
            else
                FN(affine_run)(in + (i - from), ((const T *)af->scale)[at], ((const T *)af->shift)[at], len,
                               dst);
            break;
        case DN_ELEMENTWISE_BACKWARD:
            if (p->nsc) FN(backward_wide)(in + (i - from), x + i, &op->backward, at, len, dst);
            else FN(backward_run)(in + (i - from), x + i, &op->backward, at, len, dst);
            break;
        }
    }
}

/* The fused steps (dn_fused_terms) on a tile of the normalised values
 * y0[0 .. len), flat elements i0 .. i0 + len (i0 a multiple of DN_WIN and
 * of 8: the tiles of a block): residual add, relu, dropout, the gradient
 * mask. */
static void FN(fused_tile)(const dn_fused_terms *f, int64_t i0, int64_t len, S *DN_RESTRICT y0)
{
    uint32_t keep[DN_STREAM_TILE];
    uint32_t pass[DN_STREAM_TILE];
    const S *DN_RESTRICT r = f->residual ? (const S *)f->residual + i0 : NULL;
    /* one loop over the tile per step that needs one: the add and the
     * ReLU share theirs where no gradient mask is kept */
    if (r != NULL && f->relu && !f->mask) {
        DN_IVDEP
        for (int64_t k = 0; k < len; k++) {
            const S v = DN_ST(DN_LD(y0[k]) + DN_LD(r[k]));
            y0[k] = DN_LD(v) <= (T)0 ? (S)0 : v;
        }
    } else if (r != NULL) {
        DN_IVDEP
        for (int64_t k = 0; k < len; k++) y0[k] = DN_ST(DN_LD(y0[k]) + DN_LD(r[k]));
    }
    if (f->relu && f->mask) {
        DN_IVDEP
        for (int64_t k = 0; k < len; k++) {
            const T v = DN_LD(y0[k]);
            /* the gradient passes where t > 0; NaN stays NaN in y */
            pass[k] = v > (T)0;
            y0[k] = v <= (T)0 ? (S)0 : y0[k];
        }
    } else if (f->relu && r == NULL) {
        DN_IVDEP
        for (int64_t k = 0; k < len; k++) y0[k] = DN_LD(y0[k]) <= (T)0 ? (S)0 : y0[k];
    } else if (f->mask) {
        for (int64_t k = 0; k < len; k++) pass[k] = 1;
    }
    if (f->drop == DN_DROP_PHILOX) {
        const T scale = (T)f->scale;
        int64_t k0 = 0;
#if defined(DN_HALF)
        const dn_drop_windows_fn_f16 dw = f->windows_half;
#else
        const DN_PASTE2(dn_drop_windows_fn_, DN_TSFX) dw = f->DN_PASTE2(windows_, DN_TSFX);
#endif
        if (dw != NULL) {
            /* the whole windows in registers, as dn_dropout_forward_*() does */
            const int64_t windows = len / DN_WIN;
            uint64_t bits[DN_STREAM_TILE / DN_WIN];
            dw(&f->ps, (uint64_t)i0 >> 2, windows, y0, y0, scale, f->mul, f->mask ? bits : NULL);
            if (f->mask)
                for (int64_t w = 0; w < windows; w++)
                    for (int k = 0; k < DN_WIN; k++)
                        pass[w * DN_WIN + k] &= (uint32_t)(bits[w] >> k) & 1u;
            k0 = windows * DN_WIN;
        }
        for (int64_t w = k0; w < len; w += DN_WIN)
            f->gen(&f->ps, (uint64_t)(i0 + w) >> 2, keep + w, NULL);
        if (f->mul) {
            DN_IVDEP
            for (int64_t k = k0; k < len; k++) {
                const S v = DN_ST(DN_LD(y0[k]) * scale);
                y0[k] = keep[k] ? v : (S)0;
            }
        } else {
            DN_IVDEP
            for (int64_t k = k0; k < len; k++) y0[k] = keep[k] ? y0[k] : (S)0;
        }
        if (f->mask)
            for (int64_t k = k0; k < len; k++) pass[k] &= keep[k];
    } else if (f->drop == DN_DROP_ALL) {
        for (int64_t k = 0; k < len; k++) y0[k] = (S)0;
        if (f->mask)
            for (int64_t k = 0; k < len; k++) pass[k] = 0;
    }
    if (f->mask) {
        uint8_t *DN_RESTRICT m = f->mask + i0 / 8;
        for (int64_t b = 0; b < (len + 7) / 8; b++) {
            uint32_t v = 0;
            for (int64_t k = 8 * b; k < dn_min64(8 * b + 8, len); k++) v |= pass[k] << (k - 8 * b);
            m[b] = (uint8_t)v;
        }
    }
}

/* elementwise_range over [i0, i1) into out + i0; in the caches, the
 * channels-last backward over wide rows of DN_PAIR_MIN_TERMS or more, and
 * training over rows of DN_PAIR_MIN_TRAIN_TERMS or more, take their whole
 * rows two at a time (backward_wide2, train_wide2). */
static void FN(elementwise_rows)(const dn_plan *p, const dn_elementwise *op, int64_t i0,
                                 int64_t i1, S *out)
{
#if !defined(DN_HALF)
    const int64_t W = p->wide;
    const int64_t min_terms = op->kind == DN_ELEMENTWISE_BACKWARD ? DN_PAIR_MIN_TERMS
                              : op->kind == DN_ELEMENTWISE_TRAIN    ? DN_PAIR_MIN_TRAIN_TERMS
                                                                    : INT64_MAX;
    if (p->nsc && W >= min_terms && p->total * (int64_t)sizeof(S) < DN_STREAM_MIN_BYTES) {
        const int64_t r0 = (i0 + W - 1) / W, r1 = i1 / W;
        const S *in = (const S *)op->in - op->in_from, *x = (const S *)op->x;
        int64_t r = r0;
        if (r0 >= r1) {
            FN(elementwise_range)(p, op, i0, i1, out + i0);
            return;
        }
        if (i0 < r0 * W) FN(elementwise_range)(p, op, i0, r0 * W, out + i0);
        for (; r + 1 < r1; r += 2) {
            if (op->kind == DN_ELEMENTWISE_TRAIN)
                FN(train_wide2)(in + r * W, &op->train, W, out + r * W);
            else
                FN(backward_wide2)(in + r * W, x + r * W, &op->backward, W, out + r * W);
        }
        if (r < r1) FN(elementwise_range)(p, op, r * W, (r + 1) * W, out + r * W);
        if (r1 * W < i1) FN(elementwise_range)(p, op, r1 * W, i1, out + r1 * W);
        return;
    }
#endif
    FN(elementwise_range)(p, op, i0, i1, out + i0);
}

/* The table's elementwise entry: directly into out, or (stream) through a
 * small buffer with streaming stores, which skip reading the destination
 * lines first (for outputs larger than the caches). */
static void FN(elementwise)(const dn_plan *p, const dn_elementwise *op, int64_t i0, int64_t i1,
                            void *out, int stream)
{
    S *y = (S *)out;
#if !defined(DN_HALF)
    if (op->gate && op->gate->g == NULL && (!p->nsc || DN_GATED_AVX2)) {
        /* the backward's tiles without d_residual: g made in registers in
         * dx's loop, from the mask's bytes or y (AVX2), else from the gate
         * of the tile as bytes (channels first) or in L1 (channels last) */
        uint8_t keep[DN_STREAM_TILE];
        S buf[DN_STREAM_TILE], gb[DN_STREAM_TILE];
        const dn_grad_gate *gt = op->gate;
        const S *dy = (const S *)gt->dy, *x = (const S *)op->x;
        for (int64_t t0 = i0; t0 < i1; t0 += DN_STREAM_TILE) {
            const int64_t t1 = dn_min64(t0 + DN_STREAM_TILE, i1);
            dn_runs runs;
            int64_t i, len, at;
            int keep_made = 0; /* the tile's keep bytes, made when a run needs them */
            for (dn_runs_start(p, t0, &runs); dn_runs_next(p, &runs, t1, &i, &len, &at);) {
                S *const dst = stream ? buf + (i - t0) : y + i;
                const int64_t done = FN(backward_run_gated_avx2)(gt, i, len, x + i,
                                                                 &op->backward, at, p->nsc, dst);
                if (done == len) continue;
                if (p->nsc) {
                    FN(gate_values)(gt, i + done, len - done, gb);
                    FN(backward_wide)(gb, x + i + done, &op->backward, at + done, len - done,
                                      dst + done);
                    continue;
                }
                if (!keep_made) FN(gate_keep)(gt, t0, t1 - t0, keep);
                keep_made = 1;
                FN(backward_run_gated)(dy + i + done, keep + (i + done - t0), (T)gt->scale,
                                       gt->mul, x + i + done, &op->backward, at, len - done,
                                       dst + done);
            }
            if (stream) dn_stream_store(y + t0, buf, (size_t)(t1 - t0) * sizeof(S));
        }
        return;
    }
#endif
    if (op->gate) {
        /* the backward's tiles: g made in an L1 tile (and d_residual
         * written from it), then dx from the tile and x */
        S gb[DN_STREAM_TILE], buf[DN_STREAM_TILE];
        dn_elementwise tile = *op;
        S *dres = (S *)op->gate->g;
        tile.gate = NULL;
        tile.in = gb;
        for (int64_t t0 = i0; t0 < i1; t0 += DN_STREAM_TILE) {
            const int64_t t1 = dn_min64(t0 + DN_STREAM_TILE, i1);
            const size_t bytes = (size_t)(t1 - t0) * sizeof(S);
            FN(gate_values)(op->gate, t0, t1 - t0, gb);
            tile.in_from = t0;
            if (dres != NULL) {
                if (stream) dn_stream_store(dres + t0, gb, bytes);
                else memcpy(dres + t0, gb, bytes);
            }
            if (stream) {
                FN(elementwise_range)(p, &tile, t0, t1, buf);
                dn_stream_store(y + t0, buf, bytes);
            } else {
                FN(elementwise_range)(p, &tile, t0, t1, y + t0);
            }
        }
    } else if (op->fused) {
        /* through an L1 tile: the normalised values, then the fused steps */
        S buf[DN_STREAM_TILE];
        for (int64_t t0 = i0; t0 < i1; t0 += DN_STREAM_TILE) {
            const int64_t t1 = dn_min64(t0 + DN_STREAM_TILE, i1);
            FN(elementwise_range)(p, op, t0, t1, buf);
            FN(fused_tile)(op->fused, t0, t1 - t0, buf);
            if (stream) dn_stream_store(y + t0, buf, (size_t)(t1 - t0) * sizeof(S));
            else memcpy(y + t0, buf, (size_t)(t1 - t0) * sizeof(S));
        }
    } else if (stream) {
        S buf[DN_STREAM_TILE];
#if defined(DN_WIDE_VECTORS)
        if (p->nsc ? FN(v64_range)(p, op, i0, i1, 1, y + i0)
                   : FN(v64_cf_range)(p, op, i0, i1, 1, y + i0))
            return;
#endif
        for (int64_t t0 = i0; t0 < i1; t0 += DN_STREAM_TILE) {
            const int64_t t1 = dn_min64(t0 + DN_STREAM_TILE, i1);
            FN(elementwise_range)(p, op, t0, t1, buf);
            dn_stream_store(y + t0, buf, (size_t)(t1 - t0) * sizeof(S));
        }
    } else {
        FN(elementwise_rows)(p, op, i0, i1, y);
    }
}

/* ---- Finishing channels: the per-channel arithmetic, in double. -------- */

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
 * vectorised across the channels: sdy[j], sxc[j], sdyxc[j] for channel
 * c0 + j (the sums of dy, x - shift and dy*(x - shift)). */
static void FN(add_grad_groups)(const dn_plan *p, const double *work, int64_t c0, int64_t c1,
                                double *DN_RESTRICT sdy, double *DN_RESTRICT sxc,
                                double *DN_RESTRICT sdyxc)
{
    const int64_t G = p->groups, C = p->c, nc = c1 - c0;
    for (int64_t j = 0; j < nc; j++) sdy[j] = sxc[j] = sdyxc[j] = 0.0;
    for (int64_t g = 0; g < G; g++)
        for (int64_t j = 0; j < nc; j++) {
            const double *w = work + 3 * (p->nsc ? g * C + c0 + j : (c0 + j) * G + g);
            sdy[j] += w[0];
            sxc[j] += w[1];
            sdyxc[j] += w[2];
        }
}

/* The terms of the elementwise pass and the saved and running statistics of
 * channels [c0, c1) from their mean, biased and unbiased variance (j = ch -
 * c0; vu is read only when running_var is updated). */
static void FN(train_terms)(const dn_train_finish *f, int64_t c0, int64_t c1,
                            const double *mean, const double *var, const double *vu)
{
    const T *gamma = (const T *)f->gamma, *beta = (const T *)f->beta;
    T *running_mean = (T *)f->running_mean, *running_var = (T *)f->running_var;
    T *save_mean = (T *)f->save_mean, *save_invstd = (T *)f->save_invstd;
    T *mean_hi = (T *)f->mean_hi, *mean_lo = (T *)f->mean_lo;
    T *scale = (T *)f->scale, *shift = (T *)f->shift;
    for (int64_t ch = c0; ch < c1; ch++) {
        const double mu = mean[ch - c0];
        const double invstd = 1.0 / sqrt(var[ch - c0] + f->eps);
        if (mean_hi) {
            mean_hi[ch] = (T)mu;
            mean_lo[ch] = (T)(mu - (double)mean_hi[ch]);
            scale[ch] = (T)((gamma ? (double)gamma[ch] : 1.0) * invstd);
            shift[ch] = beta ? beta[ch] : (T)0;
        }
        if (save_mean) save_mean[ch] = (T)mu;
        if (save_invstd) save_invstd[ch] = (T)invstd;
        if (running_mean)
            running_mean[ch] =
                (T)((1.0 - f->momentum) * (double)running_mean[ch] + f->momentum * mu);
        if (running_var)
            running_var[ch] = (T)((1.0 - f->momentum) * (double)running_var[ch]
                                  + f->momentum * vu[ch - c0]);
    }
}

/* From the group moments merged in group order, or (forward_apply) from
 * the given statistics. */
static void FN(finish_train)(const dn_plan *p, const dn_train_finish *f, int64_t c0, int64_t c1)
{
    double mean[DN_FINISH_CHANNELS], m2[DN_FINISH_CHANNELS];
    double var[DN_FINISH_CHANNELS], vu[DN_FINISH_CHANNELS];
    if (f->mean != NULL) {
        FN(train_terms)(f, c0, c1, f->mean + c0, f->var + c0,
                        f->var_unbiased ? f->var_unbiased + c0 : NULL);
        return;
    }
    FN(merge_groups)(p, f->gmean, f->gm2, f->weights, c0, c1, mean, m2);
    for (int64_t j = 0; j < c1 - c0; j++) {
        var[j] = dn_biased_var(m2[j], (double)p->m);
        vu[j] = dn_unbiased_var(var[j], (double)p->m);
    }
    FN(train_terms)(f, c0, c1, mean, var, vu);
}

/* Through batch statistics: dx = dy_scale*dy + x_scale*(x - centre) + offset
 * with the saved mean as the centre (a shift: the exact mean of x is
 * centre + off). The sums are the group sums added in group order, or
 * (backward_apply) the given ones; dgamma and dbeta come from the local
 * sums (the given ones unless local_sums is set). */
static void FN(finish_backward)(const dn_plan *p, const dn_grad_finish *f, int64_t c0,
                                int64_t c1)
{
    const T *h = (const T *)f->shift, *save_invstd = (const T *)f->save_invstd;
    const T *gamma = (const T *)f->gamma;
    T *dgamma = (T *)f->dgamma, *dbeta = (T *)f->dbeta;
    T *dy_scale = (T *)f->dy_scale, *x_scale = (T *)f->x_scale;
    T *centre = (T *)f->centre, *offset = (T *)f->offset;
    double sums[3 * DN_FINISH_CHANNELS];
    const double *sdy, *sxc, *sdyxc, *ldy, *ldyxc;
    double m;
    if (f->given_sums != NULL) {
        const double *loc = f->local_sums ? f->local_sums : f->given_sums;
        sdy = f->given_sums + c0;
        sxc = sdy + p->c;
        sdyxc = sxc + p->c;
        ldy = loc + c0;
        ldyxc = ldy + 2 * p->c;
        m = f->count;
    } else {
        const int64_t nc = c1 - c0;
        FN(add_grad_groups)(p, f->sums, c0, c1, sums, sums + nc, sums + 2 * nc);
        sdy = ldy = sums;
        sxc = sums + nc;
        sdyxc = ldyxc = sums + 2 * nc;
        m = (double)p->m;
    }
    for (int64_t ch = c0; ch < c1; ch++) {
        const int64_t j = ch - c0;
        const double istd = (double)save_invstd[ch];
        const double g = gamma ? (double)gamma[ch] : 1.0;
        const double off = sxc[j] / m;
        const double dg = (sdyxc[j] - off * sdy[j]) * istd;
        const double A = g * istd, B = -g * istd * istd * dg / m;
        if (dy_scale) {
            dy_scale[ch] = (T)A;
            x_scale[ch] = (T)B;
            centre[ch] = h[ch];
            offset[ch] = (T)(-A * sdy[j] / m - B * off);
        }
        if (dgamma) dgamma[ch] = (T)((ldyxc[j] - off * ldy[j]) * istd);
        if (dbeta) dbeta[ch] = (T)ldy[j];
    }
}

/* Through frozen statistics: dgamma and dbeta only (dx = scale*dy needs no
 * sums). */
static void FN(finish_backward_infer)(const dn_plan *p, const dn_grad_finish *f, int64_t c0,
                                      int64_t c1)
{
    const T *running_var = (const T *)f->running_var;
    T *dgamma = (T *)f->dgamma, *dbeta = (T *)f->dbeta;
    double sums[3 * DN_FINISH_CHANNELS];
    const int64_t nc = c1 - c0;
    FN(add_grad_groups)(p, f->sums, c0, c1, sums, sums + nc, sums + 2 * nc);
    for (int64_t ch = c0; ch < c1; ch++) {
        const double istd = 1.0 / sqrt((double)running_var[ch] + f->eps);
        if (dgamma) dgamma[ch] = (T)(sums[2 * nc + ch - c0] * istd);
        if (dbeta) dbeta[ch] = (T)sums[ch - c0];
    }
}

/* The divisions and square roots in loops of their own, which the SIMD
 * builds vectorise (the same correctly rounded operations, so the same
 * bits): one per channel and call made small inference calls cost up to
 * a third more. */
static void FN(finish_frozen)(const dn_frozen_finish *f, int64_t c0, int64_t c1)
{
    const T *gamma = (const T *)f->gamma, *beta = (const T *)f->beta;
    const T *mean = (const T *)f->running_mean, *var = (const T *)f->running_var;
    T *scale = (T *)f->scale, *shift = (T *)f->shift;
    const double eps = f->eps;
    const int64_t nc = c1 - c0;
    double a[DN_FINISH_CHANNELS];
    if (gamma)
        for (int64_t j = 0; j < nc; j++) a[j] = (double)gamma[c0 + j] / sqrt((double)var[c0 + j] + eps);
    else
        for (int64_t j = 0; j < nc; j++) a[j] = 1.0 / sqrt((double)var[c0 + j] + eps);
    for (int64_t j = 0; j < nc; j++) scale[c0 + j] = (T)a[j];
    if (shift)
        for (int64_t j = 0; j < nc; j++)
            shift[c0 + j] = (T)((beta ? (double)beta[c0 + j] : 0.0)
                                - (mean ? (double)mean[c0 + j] * a[j] : 0.0));
}

const dn_bn_kernels DN_NAME3(dn_bn_kernels, DN_TSFX, DN_VARIANT) = {
    FN(group_moments),
    FN(group_grad_sums),
    FN(group_gated_sums),
    FN(elementwise),
    FN(finish_train),
    FN(finish_backward),
    FN(finish_backward_infer),
    FN(finish_frozen),
    FN(merge_groups),
    FN(add_grad_groups),
};

#undef DN_LANES
#if defined(DN_WIDE_VECTORS)
#  undef DN_V64
#  undef DN_QUAD
#  undef DN_W
#  undef DN_AVX512_FN
#  undef DN_WIDE_VECTORS
#  undef DN_WIDE_TYPE
#endif
#undef FN
#undef T
#undef S
#undef DN_TSFX
#undef DN_LD
#undef DN_ST
#if defined(DN_HALF)
#  undef DN_HALF
#  undef DN_LD8
#  undef DN_ST8
#  undef DN_LDV8
#  undef DN_STV16
#endif
