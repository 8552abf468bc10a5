/* The half types (f16: IEEE binary16, bf16: bfloat16, in uint16_t).
 *
 * Conversions: every binary16 and bfloat16 value to float and back,
 * against a decoding written here with ldexp; rounding from float at every
 * tie, just above and below it, at the largest finite values, overflow,
 * subnormals and NaN payloads; and every instruction-set variant of the
 * conversions (F16C, AVX2 integers, AVX512-BF16) against the portable C
 * on all 2^16 half values and 4M floats.
 *
 * Kernels: each _f16/_bf16 function gives the bits of its _f32 twin run on
 * the inputs converted to float, rounded once (the same blocks, lanes and
 * merges), in both layouts, with 1 and 2 threads; the results are within
 * one neighbouring value of the exact (double) result rounded once, or
 * within float32's own error where that is larger (results much smaller
 * than their terms) (dx: a few units in the last place of the largest
 * |dx|); dropout masks are
 * the _f32 masks, kept values the float products rounded once; values at
 * the limits of each format (overflow to infinity, subnormal results, NaN)
 * pass through as the float path and one rounding give them. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dropnorm/dropnorm.h"
#include "half.h"
#include "kernels.h"
#include "check.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(DN_HAVE_AVX2)
#  include <cpuid.h>
static int cpu_has_f16c_avx2(void)
{
    unsigned a, b, c, d;
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1u);
}

static int cpu_has_avx512bf16(void)
{
    unsigned a, b, c, d;
    if (!cpu_has_f16c_avx2() || !__builtin_cpu_supports("avx512f")) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((b >> 17) & 1u) || !((b >> 31) & 1u))
        return 0;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1u);
}
#else
static int cpu_has_f16c_avx2(void) { return 0; }
static int cpu_has_avx512bf16(void) { return 0; }
#endif

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- The two formats, described independently of half.h. -------------- */

typedef struct format {
    const char *name;
    int mant;    /* explicit mantissa bits */
    int ebits;   /* exponent bits */
    uint16_t (*to_half)(float);   /* half.h's portable conversions, under test */
    float (*to_float)(uint16_t);
} format;

static const format F16 = {"f16", 10, 5, dn_f32_to_f16, dn_f16_to_f32};
static const format BF16 = {"bf16", 7, 8, dn_f32_to_bf16, dn_bf16_to_f32};

static int is_nan_h(const format *f, uint16_t h)
{
    const uint16_t emask = (uint16_t)(((1u << f->ebits) - 1u) << f->mant);
    return (h & emask) == emask && (h & ((1u << f->mant) - 1u)) != 0;
}

static int is_inf_h(const format *f, uint16_t h)
{
    const uint16_t emask = (uint16_t)(((1u << f->ebits) - 1u) << f->mant);
    return (h & 0x7FFFu) == emask;
}

/* The value of a finite half, from its fields. */
static double decode(const format *f, uint16_t h)
{
    const int bias = (1 << (f->ebits - 1)) - 1;
    const int e = (h >> f->mant) & ((1 << f->ebits) - 1);
    const double m = (double)(h & ((1u << f->mant) - 1u));
    const double sign = (h & 0x8000u) ? -1.0 : 1.0;
    if (e == 0) return sign * ldexp(m, 1 - bias - f->mant);
    return sign * ldexp(1.0 + ldexp(m, -f->mant), e - bias);
}

/* Halves in value order (for "one neighbouring value"): positive halves
 * count up from 0, negative ones down from -0 = 0. */
static int32_t ordinal(uint16_t h)
{
    return (h & 0x8000u) ? -(int32_t)(h & 0x7FFFu) : (int32_t)h;
}

/* The half of an ordinal (positive: itself; negative: -0 down). */
static uint16_t of_ordinal(int32_t o)
{
    return o >= 0 ? (uint16_t)o : (uint16_t)(0x8000u | (uint32_t)(-o));
}

/* The half nearest to v, ties to even: the exact rounding of a double
 * (the float rounding, then its neighbours compared in double). */
static uint16_t round_once(const format *f, double v)
{
    const uint16_t maxf = (uint16_t)((((1u << f->ebits) - 1u) << f->mant) - 1u);
    const uint16_t sign = v < 0 ? 0x8000u : 0u;
    uint16_t best;
    if (isnan(v)) return f->to_half(NAN);
    {
        /* beyond the largest finite value: compare with the midpoint to
         * the next binade (a tie goes to the even one, infinity) */
        const double top = decode(f, maxf), ulp = top - decode(f, (uint16_t)(maxf - 1));
        if (fabs(v) >= top) return (uint16_t)(sign | (fabs(v) < top + ulp / 2 ? maxf : maxf + 1u));
    }
    best = f->to_half((float)v);
    for (int step = -1; step <= 1; step += 2) {
        const uint16_t other = of_ordinal(ordinal(best) + step);
        double db, dother;
        if ((other & 0x7FFFu) > maxf) continue;
        db = fabs(decode(f, best) - v);
        dother = fabs(decode(f, other) - v);
        if (dother < db || (dother == db && !(other & 1u) && (best & 1u))) best = other;
    }
    if ((best & 0x7FFFu) == 0) best = sign; /* zero keeps the sign of v */
    return best;
}

/* ---- Conversions. -------------------------------------------------------- */

static void check_to_float(const format *f)
{
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
        const uint16_t h = (uint16_t)i;
        const float v = f->to_float(h);
        if (is_nan_h(f, h)) {
            /* NaN: the sign and payload kept; binary16 made quiet */
            const uint32_t payload = (uint32_t)(h & ((1u << f->mant) - 1u)) << (23 - f->mant);
            uint32_t want = ((uint32_t)(h & 0x8000u) << 16) | 0x7F800000u | payload;
            if (f == &F16) want |= 0x400000u;
            bad += fbits(v) != want;
        } else if (is_inf_h(f, h)) {
            bad += !(isinf(v) && (signbit(v) != 0) == ((h & 0x8000u) != 0));
        } else {
            bad += (double)v != decode(f, h) || (signbit(v) != 0) != ((h & 0x8000u) != 0);
        }
        /* and back: the same bits (a signalling binary16 NaN comes back quiet) */
        {
            const uint16_t back = f->to_half(v);
            const uint16_t quiet = f == &F16 ? 0x200u : 0x40u;
            const uint16_t want = (uint16_t)(is_nan_h(f, h) ? h | quiet : h);
            bad += back != want;
        }
    }
    printf("%s: every half to float and back, %d wrong\n", f->name, bad);
    CHECK(bad == 0);
}

/* Ties, just above and just below them between every pair of neighbouring
 * finite halves (of both signs), and beyond the largest finite one. */
static void check_rounding(const format *f)
{
    int bad = 0;
    const uint16_t maxf = (uint16_t)((((1u << f->ebits) - 1u) << f->mant) - 1u);
    for (uint32_t h = 0; h <= maxf; h++) {
        for (int neg = 0; neg < 2; neg++) {
            const double lo = decode(f, (uint16_t)h);
            const double hi = h < maxf ? decode(f, (uint16_t)(h + 1))
                                       : 2 * lo - decode(f, (uint16_t)(h - 1)); /* "infinity" */
            const uint16_t up = (uint16_t)(h + 1), sign = neg ? 0x8000u : 0u;
            const uint16_t even = (h & 1u) ? up : (uint16_t)h;
            const float tie = (float)((lo + hi) / 2); /* exact: a few bits more than the half */
            const float t = neg ? -tie : tie;
            CHECK((double)tie == (lo + hi) / 2);
            bad += f->to_half(t) != (uint16_t)(sign | even);
            bad += f->to_half(nextafterf(t, neg ? -INFINITY : INFINITY)) != (uint16_t)(sign | up);
            bad += f->to_half(nextafterf(t, 0.0f)) != (uint16_t)(sign | h);
        }
    }
    /* overflow, infinity, the largest floats */
    bad += f->to_half(FLT_MAX) != (uint16_t)(maxf + 1u);
    bad += f->to_half(-FLT_MAX) != (uint16_t)(0x8000u | (maxf + 1u));
    bad += f->to_half(INFINITY) != (uint16_t)(maxf + 1u);
    bad += f->to_half(-INFINITY) != (uint16_t)(0x8000u | (maxf + 1u));
    bad += f->to_half(0.0f) != 0 || f->to_half(-0.0f) != 0x8000u;
    /* the smallest floats: subnormal float32s (bfloat16 keeps them) */
    bad += f->to_half(bitsf(1u)) != 0 || f->to_half(-bitsf(1u)) != 0x8000u;
    if (f == &BF16) {
        bad += f->to_half(bitsf(0x007FFFFFu)) != 0x0080u; /* rounds up to the smallest normal */
        bad += f->to_half(bitsf(0x00008000u)) != 0x0000u; /* a tie to even 0 */
        bad += f->to_half(bitsf(0x00018000u)) != 0x0002u; /* a tie to even 2 */
        bad += f->to_half(bitsf(0x00010001u)) != 0x0001u;
    } else {
        bad += f->to_half(65504.0f) != 0x7BFFu || f->to_half(65519.99f) != 0x7BFFu;
        bad += f->to_half(65520.0f) != 0x7C00u || f->to_half(1e5f) != 0x7C00u;
        bad += f->to_half(ldexpf(1.0f, -24)) != 0x0001u;   /* the smallest subnormal */
        bad += f->to_half(ldexpf(1.0f, -25)) != 0x0000u;   /* half of it: a tie to 0 */
        bad += f->to_half(ldexpf(1.5f, -25)) != 0x0001u;
        bad += f->to_half(ldexpf(1.0f, -14)) != 0x0400u;   /* the smallest normal */
        bad += f->to_half(ldexpf(1023.5f, -24)) != 0x0400u; /* a tie up to it */
    }
    /* NaN payloads: quiet, the sign and the payload's top bits kept */
    {
        static const uint32_t nans[] = {0x7F800001u, 0x7FC00000u, 0xFF812345u, 0x7FBFFFFFu,
                                        0xFFFFFFFFu, 0x7FA00000u, 0x7F802000u, 0x7F810000u};
        for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
            const uint32_t u = nans[i];
            const uint16_t got = f->to_half(bitsf(u));
            uint16_t want;
            if (f == &F16)
                want = (uint16_t)(((u >> 16) & 0x8000u) | 0x7E00u | ((u >> 13) & 0x3FFu));
            else
                want = (uint16_t)((u >> 16) | 0x40u);
            bad += got != want || !is_nan_h(f, got);
        }
    }
    printf("%s: rounding at every tie, overflow, subnormals, NaN: %d wrong\n", f->name, bad);
    CHECK(bad == 0);
}

/* The floats a variant comparison converts: every high half with these low
 * halves (each bit position's tie, just above and below it, the ends, and
 * a few arbitrary ones). */
static size_t probe_floats(float *out)
{
    uint16_t lows[64];
    size_t nl = 0, n = 0;
    lows[nl++] = 0;
    lows[nl++] = 0xFFFFu;
    for (int k = 0; k < 16; k++) {
        lows[nl++] = (uint16_t)(1u << k);
        lows[nl++] = (uint16_t)((1u << k) - 1u + (k == 0));
        lows[nl++] = (uint16_t)((1u << k) + 1u);
    }
    while (nl < 64) lows[nl] = (uint16_t)(0x9E37u * (unsigned)nl + 0x7F4Au), nl++;
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (size_t l = 0; l < nl; l++) out[n++] = bitsf(hi << 16 | lows[l]);
    return n;
}

static void compare_convert(const dn_half_convert *cv, const char *name)
{
    const size_t nmax = (size_t)65536 * 64;
    float *f = malloc(sizeof(float) * nmax), *f2 = malloc(sizeof(float) * 65536);
    uint16_t *h = malloc(sizeof(uint16_t) * nmax), *h2 = malloc(sizeof(uint16_t) * nmax);
    uint16_t *all = malloc(sizeof(uint16_t) * 65536);
    float *want = malloc(sizeof(float) * 65536);
    size_t n;
    int bad = 0;
    if (!f || !f2 || !h || !h2 || !all || !want) {
        CHECK(0);
        return;
    }
    n = probe_floats(f);
    for (uint32_t i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    for (int fmt = 0; fmt < 2; fmt++) {
        const format *F = fmt ? &BF16 : &F16;
        void (*to_f32)(const uint16_t *, float *, int64_t) = fmt ? cv->bf16_to_f32 : cv->f16_to_f32;
        void (*to_h)(const float *, uint16_t *, int64_t) = fmt ? cv->f32_to_bf16 : cv->f32_to_f16;
        /* odd lengths and offsets: the eight-wide body and the tail */
        for (size_t at = 0; at < 65536; at += 4093) {
            const size_t len = at + 4093 <= 65536 ? 4093 : 65536 - at;
            to_f32(all + at, f2 + at, (int64_t)len);
        }
        for (uint32_t i = 0; i < 65536; i++) {
            want[i] = F->to_float((uint16_t)i);
            bad += fbits(f2[i]) != fbits(want[i]);
        }
        for (size_t at = 0; at < n; at += 100003) {
            const size_t len = at + 100003 <= n ? 100003 : n - at;
            to_h(f + at, h + at, (int64_t)len);
        }
        for (size_t i = 0; i < n; i++) bad += h[i] != F->to_half(f[i]);
    }
    printf("%s conversions against the portable ones: %d wrong\n", name, bad);
    CHECK(bad == 0);
    free(f);
    free(f2);
    free(h);
    free(h2);
    free(all);
    free(want);
}

/* ---- Kernels. -------------------------------------------------------------- */

typedef dn_status (*train_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                              const float *, const float *, double, double, float *, float *,
                              uint16_t *, float *, float *);
typedef dn_status (*infer_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                              const float *, const float *, const float *, const float *, double,
                              uint16_t *);
typedef dn_status (*backward_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                                 const uint16_t *, const float *, const float *, const float *,
                                 uint16_t *, float *, float *);
typedef dn_status (*backward_infer_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                                       const uint16_t *, const float *, const float *,
                                       const float *, double, uint16_t *, float *, float *);
typedef dn_status (*partial_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *, double *);
typedef dn_status (*apply_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                              const double *, const double *, const double *, const float *,
                              const float *, double, double, float *, float *, uint16_t *,
                              float *, float *);
typedef dn_status (*reduce_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                               const uint16_t *, const float *, double *);
typedef dn_status (*backward_apply_fn)(int64_t, int64_t, int64_t, dn_layout, const uint16_t *,
                                       const uint16_t *, const float *, const float *,
                                       const float *, const double *, int64_t, const double *,
                                       uint16_t *, float *, float *);
typedef dn_status (*drop_fn)(int64_t, int64_t, int64_t, dn_layout, int, const uint16_t *, double,
                             uint64_t, uint64_t, uint64_t, dn_dropout_mode, int, uint16_t *,
                             uint8_t *);
typedef dn_status (*apply_mask_fn)(int64_t, int64_t, int64_t, dn_layout, int, const uint16_t *,
                                   const uint8_t *, double, dn_dropout_mode, uint16_t *);
typedef dn_status (*drop_backward_fn)(int64_t, int64_t, int64_t, dn_layout, int,
                                      const uint16_t *, double, uint64_t, uint64_t, uint64_t,
                                      dn_dropout_mode, const uint8_t *, uint16_t *);

typedef struct half_api {
    const format *fmt;
    train_fn train;
    infer_fn infer;
    backward_fn backward;
    backward_infer_fn backward_infer;
    partial_fn partial;
    apply_fn apply;
    reduce_fn reduce;
    backward_apply_fn backward_apply;
    drop_fn drop;
    apply_mask_fn apply_mask;
    drop_backward_fn drop_backward;
} half_api;

static const half_api API_F16 = {
    &F16, dn_batchnorm_forward_train_f16, dn_batchnorm_forward_infer_f16,
    dn_batchnorm_backward_f16, dn_batchnorm_backward_infer_f16, dn_batchnorm_partial_stats_f16,
    dn_batchnorm_forward_apply_f16, dn_batchnorm_backward_reduce_f16,
    dn_batchnorm_backward_apply_f16, dn_dropout_forward_offset_f16, dn_dropout_apply_mask_f16,
    dn_dropout_backward_offset_f16,
};
static const half_api API_BF16 = {
    &BF16, dn_batchnorm_forward_train_bf16, dn_batchnorm_forward_infer_bf16,
    dn_batchnorm_backward_bf16, dn_batchnorm_backward_infer_bf16, dn_batchnorm_partial_stats_bf16,
    dn_batchnorm_forward_apply_bf16, dn_batchnorm_backward_reduce_bf16,
    dn_batchnorm_backward_apply_bf16, dn_dropout_forward_offset_bf16, dn_dropout_apply_mask_bf16,
    dn_dropout_backward_offset_bf16,
};

static uint64_t rng_state = 0x243F6A8885A308D3ULL;

static double uniform(void) /* in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

static int64_t at(int nsc, int64_t C, int64_t S, int64_t n, int64_t c, int64_t s)
{
    return nsc ? (n * S + s) * C + c : (n * C + c) * S + s;
}

/* The accuracy figures over all shapes, per type (index 0 f16, 1 bf16):
 * values compared, exactly the rounded exact result, one neighbour away;
 * the largest backward error in units of ulp(max |dx|). */
static int64_t acc_total[2], acc_same[2], acc_one[2];
static double acc_dx_ulps[2];
/* outputs further than one neighbour, within float32's error (cancellation) */
static int64_t acc_cancel[2];
/* outputs of the training forward that were subnormal, infinite */
static int64_t acc_subnormal[2], acc_infinite[2];

/* round(f32 results) == half results, bitwise (a NaN as any NaN: where two
 * NaNs meet, which one an operation returns depends on the order the
 * compiler gave its operands); counts mismatches */
static int64_t rounded_differ(const format *f, const float *want, const uint16_t *got, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad += f->to_half(want[i]) != got[i] && !(isnan(want[i]) && is_nan_h(f, got[i]));
    return bad;
}

static int64_t bits_differ(const void *a, const void *b, size_t bytes)
{
    return memcmp(a, b, bytes) != 0;
}

/* Within one neighbouring value of the exact result rounded once, except
 * where float32's own rounding error (a few units of 2^-24 of the terms the
 * result is made of: terms[i]) is above half a unit of the half type, as
 * for a result much smaller than its terms (cancellation): there within
 * that error. Returns the largest distance in values of the results not
 * within float32's error, and counts the exact ones. */
static int32_t neighbour_distance(const format *f, const double *exact, const double *terms,
                                  const uint16_t *got, int64_t n, int64_t *same)
{
    int32_t worst = 0;
    *same = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t want = round_once(f, exact[i]);
        int32_t d;
        if (is_nan_h(f, want) || is_nan_h(f, got[i])) {
            d = is_nan_h(f, want) == is_nan_h(f, got[i]) ? 0 : 1000;
        } else {
            d = abs(ordinal(want) - ordinal(got[i]));
            if (d > 1 && fabs((double)f->to_float(got[i]) - exact[i]) <= ldexp(terms[i], -21)) {
                acc_cancel[f == &BF16]++;
                d = 1;
            }
        }
        *same += d == 0;
        if (d > worst) worst = d;
    }
    return worst;
}

/* The unit in the last place of a half of magnitude v. */
static double half_ulp(const format *f, double v)
{
    int e;
    const int bias = (1 << (f->ebits - 1)) - 1;
    frexp(v, &e); /* v = m 2^e, 0.5 <= m < 1 */
    if (e - 1 < 1 - bias) e = 2 - bias;
    return ldexp(1.0, e - 1 - f->mant);
}

/* One shape, one layout: every batch-norm function of a half type against
 * its _f32 twin (bits) and the double reference (accuracy). kind selects the
 * data: 0 ordinary, 1 |mean| >> std, 2 values at the format's limits. */
static void check_batchnorm(const half_api *api, int64_t N, int64_t C, int64_t S, int nsc,
                            int kind)
{
    const format *f = api->fmt;
    const int64_t T = N * C * S;
    const dn_layout L = nsc ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
    const double eps = 1e-5, mom = 0.1, M = (double)(N * S);
    uint16_t *x = malloc(2 * (size_t)T), *dy = malloc(2 * (size_t)T), *y = malloc(2 * (size_t)T);
    uint16_t *y2 = malloc(2 * (size_t)T);
    float *xf = malloc(4 * (size_t)T), *dyf = malloc(4 * (size_t)T), *yf = malloc(4 * (size_t)T);
    double *ref = malloc(8 * (size_t)T), *tm = malloc(8 * (size_t)T);
    float *v = malloc(sizeof(float) * (size_t)C * 24);
    double *d = malloc(sizeof(double) * (size_t)C * 16);
    float *g = v, *b = v + C, *sm = v + 2 * C, *si = v + 3 * C, *smf = v + 4 * C;
    float *sif = v + 5 * C, *rm = v + 6 * C, *rv = v + 7 * C, *rmf = v + 8 * C, *rvf = v + 9 * C;
    float *dg = v + 10 * C, *db = v + 11 * C, *dgf = v + 12 * C, *dbf = v + 13 * C;
    float *sm2 = v + 14 * C, *si2 = v + 15 * C, *dg2 = v + 16 * C, *db2 = v + 17 * C;
    double *mean = d, *var = d + C, *stats = d + 2 * C, *sums = d + 5 * C, *mv = d + 8 * C;
    int64_t same;
    int32_t dist;
    double worst_dx = 0, max_dx = 0;
    if (!x || !dy || !y || !y2 || !xf || !dyf || !yf || !ref || !tm || !v || !d) {
        CHECK(0);
        return;
    }
    for (int64_t c = 0; c < C; c++) {
        g[c] = (float)(1.0 + 0.5 * uniform());
        b[c] = (float)uniform();
        if (kind == 2) {
            /* outputs that overflow to infinity, and subnormal ones */
            const float big = f == &F16 ? 5e4f : 5e37f, tiny = f == &F16 ? 1e-6f : 1e-38f;
            g[c] = c % 3 == 0 ? big : (c % 3 == 1 ? tiny : 1.0f);
            b[c] = 0.0f;
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t s = 0; s < S; s++) {
                const int64_t i = at(nsc, C, S, n, c, s);
                double val = 3.0 * uniform() + 0.5;
                /* |mean| >> std: a few steps of the format's spacing */
                if (kind == 1) val = (f == &F16 ? 1000.0 : 300.0) + uniform() * (f == &F16 ? 4 : 8);
                /* binary16 near its largest values. bfloat16 has float32's
                 * range, and its kernels are exact where _f32's are (the
                 * scale gamma*invstd and a block's squared deviations
                 * finite in float): unit values scaled to large and to
                 * subnormal outputs, and values far beyond binary16's */
                if (kind == 2 && f == &F16) val = (c % 2 ? 6.0e4 : -6.0e4) + 2000.0 * uniform();
                if (kind == 2 && f == &BF16)
                    val = c % 3 == 2 ? 1e16 * (1.5 + uniform()) : 2 * uniform();
                x[i] = f->to_half((float)val);
                dy[i] = f->to_half((float)uniform());
                xf[i] = f->to_float(x[i]);
                dyf[i] = f->to_float(dy[i]);
            }
    if (kind == 2 && T > 3) {
        x[T / 2] = f->to_half(NAN); /* a NaN: its channel's statistics are NaN */
        xf[T / 2] = f->to_float(x[T / 2]);
    }

    /* training forward: the _f32 bits rounded once */
    for (int64_t c = 0; c < C; c++) rm[c] = rmf[c] = 0.5f, rv[c] = rvf[c] = 2.0f;
    CHECK(api->train(N, C, S, L, x, g, b, eps, mom, rm, rv, y, sm, si) == DN_OK);
    CHECK(dn_batchnorm_forward_train_f32(N, C, S, L, xf, g, b, eps, mom, rmf, rvf, yf, smf, sif)
          == DN_OK);
    CHECK(rounded_differ(f, yf, y, T) == 0);
    CHECK(!bits_differ(sm, smf, 4 * (size_t)C) && !bits_differ(si, sif, 4 * (size_t)C));
    CHECK(!bits_differ(rm, rmf, 4 * (size_t)C) && !bits_differ(rv, rvf, 4 * (size_t)C));
    /* ... and the exact result rounded once, give or take one neighbour */
    for (int64_t c = 0; c < C; c++) {
        double sum = 0, q = 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) sum += xf[at(nsc, C, S, n, c, s)];
        mean[c] = sum / M;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                const double e = xf[at(nsc, C, S, n, c, s)] - mean[c];
                q += e * e;
            }
        var[c] = q / M;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                const int64_t i = at(nsc, C, S, n, c, s);
                ref[i] = (double)g[c] * (xf[i] - mean[c]) / sqrt(var[c] + eps) + (double)b[c];
                tm[i] = fabs((double)g[c] * (xf[i] - mean[c]) / sqrt(var[c] + eps))
                        + fabs((double)b[c]);
            }
        if (kind != 2) {
            CHECK_CLOSE(sm[c], mean[c], 1e-6 * fabs(mean[c]) + 1e-6);
            CHECK(fabs(si[c] * sqrt(var[c] + eps) - 1.0) < 1e-6);
        }
    }
    dist = neighbour_distance(f, ref, tm, y, T, &same);
    CHECK(dist <= 1);
    if (dist > 1) printf("  %s train %lldx%lldx%lld %s kind %d: %d values away\n", f->name,
                         (long long)N, (long long)C, (long long)S, nsc ? "nsc" : "ncs", kind, dist);
    acc_total[f == &BF16] += T;
    acc_same[f == &BF16] += same;
    acc_one[f == &BF16] += T - same;
    for (int64_t i = 0; i < T; i++) {
        acc_subnormal[f == &BF16] +=
            (y[i] & 0x7FFFu) != 0 && ((y[i] >> f->mant) & ((1u << f->ebits) - 1u)) == 0;
        acc_infinite[f == &BF16] += is_inf_h(f, y[i]);
    }

    /* the shards' pieces, one shard: the same bits */
    CHECK(api->partial(N, C, S, L, x, stats) == DN_OK);
    CHECK(dn_batchnorm_merge_stats(1, C, stats, mv, mv + C, mv + 2 * C) == DN_OK);
    for (int64_t c = 0; c < C; c++) rmf[c] = 0.5f, rvf[c] = 2.0f;
    CHECK(api->apply(N, C, S, L, x, mv, mv + C, mv + 2 * C, g, b, eps, mom, rmf, rvf, y2, sm2,
                     si2) == DN_OK);
    CHECK(!bits_differ(y, y2, 2 * (size_t)T) && !bits_differ(sm, sm2, 4 * (size_t)C));
    CHECK(!bits_differ(si, si2, 4 * (size_t)C) && !bits_differ(rm, rmf, 4 * (size_t)C));
    CHECK(!bits_differ(rv, rvf, 4 * (size_t)C));

    /* inference, from the running statistics */
    CHECK(api->infer(N, C, S, L, x, rm, rv, g, b, eps, y) == DN_OK);
    CHECK(dn_batchnorm_forward_infer_f32(N, C, S, L, xf, rm, rv, g, b, eps, yf) == DN_OK);
    CHECK(rounded_differ(f, yf, y, T) == 0);
    for (int64_t c = 0; c < C; c++) {
        const double a = (double)g[c] / sqrt((double)rv[c] + eps);
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                const int64_t i = at(nsc, C, S, n, c, s);
                ref[i] = a * ((double)xf[i] - (double)rm[c]) + (double)b[c];
                tm[i] = fabs(a * (double)xf[i]) + fabs((double)b[c] - (double)rm[c] * a);
            }
    }
    dist = neighbour_distance(f, ref, tm, y, T, &same);
    CHECK(dist <= 1);
    acc_total[f == &BF16] += T;
    acc_same[f == &BF16] += same;
    acc_one[f == &BF16] += T - same;

    /* backward through batch statistics */
    CHECK(api->backward(N, C, S, L, dy, x, sm, si, g, y, dg, db) == DN_OK);
    CHECK(dn_batchnorm_backward_f32(N, C, S, L, dyf, xf, sm, si, g, yf, dgf, dbf) == DN_OK);
    CHECK(rounded_differ(f, yf, y, T) == 0);
    CHECK(!bits_differ(dg, dgf, 4 * (size_t)C) && !bits_differ(db, dbf, 4 * (size_t)C));
    if (kind != 2) {
        for (int64_t c = 0; c < C; c++) {
            const double istd = 1.0 / sqrt(var[c] + eps);
            double sdy = 0, sdyx = 0, adx = 0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t s = 0; s < S; s++) {
                    const int64_t i = at(nsc, C, S, n, c, s);
                    sdy += dyf[i];
                    sdyx += dyf[i] * (xf[i] - mean[c]) * istd;
                }
            for (int64_t n = 0; n < N; n++)
                for (int64_t s = 0; s < S; s++) {
                    const int64_t i = at(nsc, C, S, n, c, s);
                    const double xh = (xf[i] - mean[c]) * istd;
                    ref[i] = (double)g[c] * istd / M * (M * dyf[i] - sdy - xh * sdyx);
                    if (fabs(ref[i]) > adx) adx = fabs(ref[i]);
                }
            if (adx > max_dx) max_dx = adx;
            CHECK_CLOSE(db[c], sdy, 1e-5 * (fabs(sdy) + M * 1e-2));
            CHECK_CLOSE(dg[c], sdyx, 1e-4 * (fabs(sdyx) + sqrt(M)));
        }
        for (int64_t i = 0; i < T; i++) {
            const double e = fabs((double)f->to_float(y[i]) - ref[i]);
            if (e > worst_dx) worst_dx = e;
        }
        /* within a few units in the last place of the largest |dx| */
        CHECK(worst_dx <= 4 * half_ulp(f, max_dx));
        if (worst_dx / half_ulp(f, max_dx) > acc_dx_ulps[f == &BF16])
            acc_dx_ulps[f == &BF16] = worst_dx / half_ulp(f, max_dx);
        if (worst_dx > 4 * half_ulp(f, max_dx))
            printf("  %s backward: %g from the exact dx, ulp(max |dx|) %g\n", f->name, worst_dx,
                   half_ulp(f, max_dx));
    }
    /* the shards' backward pieces, one shard */
    CHECK(api->reduce(N, C, S, L, dy, x, sm, sums) == DN_OK);
    CHECK(api->backward_apply(N, C, S, L, dy, x, sm, si, g, sums, N * S, NULL, y2, dg2, db2)
          == DN_OK);
    CHECK(!bits_differ(y, y2, 2 * (size_t)T) && !bits_differ(dg, dg2, 4 * (size_t)C));
    CHECK(!bits_differ(db, db2, 4 * (size_t)C));

    /* backward through frozen statistics */
    CHECK(api->backward_infer(N, C, S, L, dy, x, rm, rv, g, eps, y, dg, db) == DN_OK);
    CHECK(dn_batchnorm_backward_infer_f32(N, C, S, L, dyf, xf, rm, rv, g, eps, yf, dgf, dbf)
          == DN_OK);
    CHECK(rounded_differ(f, yf, y, T) == 0);
    CHECK(!bits_differ(dg, dgf, 4 * (size_t)C) && !bits_differ(db, dbf, 4 * (size_t)C));

    free(x);
    free(dy);
    free(y);
    free(y2);
    free(xf);
    free(dyf);
    free(yf);
    free(ref);
    free(tm);
    free(v);
    free(d);
}

/* The same calls with 1 thread and with 2 give the same bits. */
static void check_threads(const half_api *api, int64_t N, int64_t C, int64_t S, int nsc)
{
    const int64_t T = N * C * S;
    const dn_layout L = nsc ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
    uint16_t *x = malloc(2 * (size_t)T), *y[2], *dx[2];
    float *v = malloc(sizeof(float) * (size_t)C * 8);
    float *sm[2] = {v, v + C}, *si[2] = {v + 2 * C, v + 3 * C};
    float *dg[2] = {v + 4 * C, v + 5 * C}, *db[2] = {v + 6 * C, v + 7 * C};
    uint8_t *mask[2];
    y[0] = malloc(2 * (size_t)T);
    y[1] = malloc(2 * (size_t)T);
    dx[0] = malloc(2 * (size_t)T);
    dx[1] = malloc(2 * (size_t)T);
    mask[0] = malloc((size_t)(T + 7) / 8);
    mask[1] = malloc((size_t)(T + 7) / 8);
    for (int64_t i = 0; i < T; i++) x[i] = api->fmt->to_half((float)(5.0 * uniform() - 1.0));
    for (int k = 0; k < 2; k++) {
        dn_set_num_threads(k + 1);
        CHECK(api->train(N, C, S, L, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y[k], sm[k], si[k])
              == DN_OK);
        CHECK(api->backward(N, C, S, L, y[k], x, sm[k], si[k], NULL, dx[k], dg[k], db[k])
              == DN_OK);
    }
    CHECK(!bits_differ(y[0], y[1], 2 * (size_t)T) && !bits_differ(dx[0], dx[1], 2 * (size_t)T));
    CHECK(!bits_differ(v, v + C, 4 * (size_t)C));
    CHECK(!bits_differ(v + 2 * C, v + 3 * C, 4 * (size_t)C));
    CHECK(!bits_differ(v + 4 * C, v + 5 * C, 4 * (size_t)C));
    CHECK(!bits_differ(v + 6 * C, v + 7 * C, 4 * (size_t)C));
    for (int k = 0; k < 2; k++) {
        dn_set_num_threads(k + 1);
        CHECK(api->drop(N, C, S, L, 0, x, 0.3, 5, 9, 0, DN_DROPOUT_INVERTED, 1, y[k], mask[k])
              == DN_OK);
    }
    CHECK(!bits_differ(y[0], y[1], 2 * (size_t)T));
    CHECK(!bits_differ(mask[0], mask[1], (size_t)(T + 7) / 8));
    dn_set_num_threads(2);
    free(x);
    free(v);
    free(y[0]);
    free(y[1]);
    free(dx[0]);
    free(dx[1]);
    free(mask[0]);
    free(mask[1]);
}

/* A tensor of more than DN_STREAM_MIN_BYTES (16 MB) in the half type:
 * its outputs go out through the streaming stores, and are still the _f32
 * results rounded once. */
static void check_streaming(const half_api *api)
{
    const int64_t N = 33, C = 64, S = 4000, T = N * C * S;
    const format *f = api->fmt;
    uint16_t *x = malloc(2 * (size_t)T), *y = malloc(2 * (size_t)T);
    float *xf = malloc(4 * (size_t)T), *yf = malloc(4 * (size_t)T);
    float *v = malloc(sizeof(float) * 6 * (size_t)C);
    if (!x || !y || !xf || !yf || !v) {
        CHECK(0);
        return;
    }
    CHECK(2 * T >= ((int64_t)16 << 20));
    for (int64_t i = 0; i < T; i++) {
        x[i] = f->to_half((float)(2.0 * uniform() + 0.25));
        xf[i] = f->to_float(x[i]);
    }
    CHECK(api->train(N, C, S, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, v, v + C)
          == DN_OK);
    CHECK(dn_batchnorm_forward_train_f32(N, C, S, DN_LAYOUT_NCS, xf, NULL, NULL, 1e-5, 0.1, NULL,
                                         NULL, yf, v + 2 * C, v + 3 * C) == DN_OK);
    CHECK(rounded_differ(f, yf, y, T) == 0);
    CHECK(api->backward(N, C, S, DN_LAYOUT_NSC, y, x, v, v + 1 * C, NULL, y, v + 4 * C, v + 5 * C)
          == DN_OK); /* in place: dx == dy */
    for (int64_t i = 0; i < T; i++) yf[i] = f->to_float(f->to_half(yf[i]));
    CHECK(dn_batchnorm_backward_f32(N, C, S, DN_LAYOUT_NSC, yf, xf, v, v + C, NULL, yf, v + 2 * C,
                                    v + 3 * C) == DN_OK);
    CHECK(rounded_differ(f, yf, y, T) == 0);
    CHECK(!bits_differ(v + 2 * C, v + 4 * C, 8 * (size_t)C));
    free(x);
    free(y);
    free(xf);
    free(yf);
    free(v);
}

/* Dropout: the _f32 masks, kept values x*scale in float rounded once (the
 * bits of x when nothing is multiplied), dropped ones +0; elementwise and
 * channelwise, both layouts, at offsets, from a stored mask and
 * regenerated. */
static void check_dropout(const half_api *api, int64_t N, int64_t C, int64_t S, int nsc)
{
    const format *f = api->fmt;
    const int64_t T = N * C * S;
    const dn_layout L = nsc ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
    uint16_t *x = malloc(2 * (size_t)T), *y = malloc(2 * (size_t)T), *y2 = malloc(2 * (size_t)T);
    float *xf = malloc(4 * (size_t)T), *yf = malloc(4 * (size_t)T);
    uint8_t *mask = malloc((size_t)(T + 7) / 8), *maskf = malloc((size_t)(T + 7) / 8);
    for (int64_t i = 0; i < T; i++) {
        x[i] = f->to_half((float)(10.0 * uniform()));
        if (i % 97 == 3) x[i] = f->to_half(NAN);
        if (i % 89 == 5) x[i] = f->to_half(f == &F16 ? 60000.0f : 3e38f); /* overflows *2 */
        if (i % 83 == 7) x[i] = (uint16_t)(i % 2 ? 0x0001u : 0x8003u);   /* subnormal */
        xf[i] = f->to_float(x[i]);
    }
    for (int chan = 0; chan < 2; chan++)
        for (int mode = 0; mode < 2; mode++)
            for (int oi = 0; oi < 3; oi++) {
                static const uint64_t offsets[] = {0, 4096, 13};
                const uint64_t off = offsets[oi];
                const dn_dropout_mode md = (dn_dropout_mode)mode;
                const int64_t bits = chan && S > 1 ? N * C : T;
                const size_t mbytes = (size_t)(bits + 7) / 8;
                int64_t bad = 0;
                CHECK(api->drop(N, C, S, L, chan, x, 0.5, 77, 3, off, md, 1, y, mask) == DN_OK);
                CHECK(dn_dropout_forward_offset_f32(N, C, S, L, chan, xf, 0.5, 77, 3, off, md, 1,
                                                    yf, maskf) == DN_OK);
                CHECK(memcmp(mask, maskf, mbytes) == 0);
                for (int64_t i = 0; i < T; i++) {
                    /* element i's decision: i, or (n, c) as n*C + c */
                    const int64_t n = nsc ? i / (S * C) : i / (S * C);
                    const int64_t c = nsc ? i % C : i / S % C;
                    const int64_t k = chan && S > 1 ? n * C + c : i;
                    const int kept = (maskf[k / 8] >> (k % 8)) & 1;
                    /* kept: the float product rounded once (the bits with
                     * no multiply, classic); dropped: +0 */
                    const uint16_t want =
                        !kept ? 0u : md == DN_DROPOUT_CLASSIC ? x[i] : f->to_half(yf[i]);
                    bad += y[i] != want;
                }
                CHECK(bad == 0);
                if (bad) printf("  %s dropout chan %d mode %d offset %llu: %lld wrong\n", f->name,
                                chan, mode, (unsigned long long)off, (long long)bad);
                /* from the stored mask, and the backward both ways */
                CHECK(api->apply_mask(N, C, S, L, chan, x, mask, 0.5, md, y2) == DN_OK);
                CHECK(memcmp(y, y2, 2 * (size_t)T) == 0);
                CHECK(api->drop_backward(N, C, S, L, chan, x, 0.5, 77, 3, off, md, NULL, y2)
                      == DN_OK);
                CHECK(memcmp(y, y2, 2 * (size_t)T) == 0);
                CHECK(api->drop_backward(N, C, S, L, chan, x, 0.5, 77, 3, off, md, mask, y2)
                      == DN_OK);
                CHECK(memcmp(y, y2, 2 * (size_t)T) == 0);
            }
    /* inference: inverted copies, classic scales by (1-p) rounded once */
    CHECK(api->drop(N, C, S, L, 0, x, 0.25, 1, 2, 0, DN_DROPOUT_INVERTED, 0, y, NULL) == DN_OK);
    CHECK(memcmp(x, y, 2 * (size_t)T) == 0);
    CHECK(api->drop(N, C, S, L, 0, x, 0.25, 1, 2, 0, DN_DROPOUT_CLASSIC, 0, y, NULL) == DN_OK);
    {
        int64_t bad = 0;
        for (int64_t i = 0; i < T; i++) {
            const uint16_t want = f->to_half(xf[i] * 0.75f);
            bad += y[i] != want && !(is_nan_h(f, y[i]) && is_nan_h(f, want));
        }
        CHECK(bad == 0);
    }
    /* p == 0 copies the bits, p == 1 gives zeros */
    CHECK(api->drop(N, C, S, L, 0, x, 0.0, 1, 2, 0, DN_DROPOUT_INVERTED, 1, y, NULL) == DN_OK);
    CHECK(memcmp(x, y, 2 * (size_t)T) == 0);
    CHECK(api->drop(N, C, S, L, 1, x, 1.0, 1, 2, 0, DN_DROPOUT_INVERTED, 1, y, NULL) == DN_OK);
    {
        int64_t nonzero = 0;
        for (int64_t i = 0; i < T; i++) nonzero += y[i] != 0;
        CHECK(nonzero == 0);
    }
    free(x);
    free(y);
    free(y2);
    free(xf);
    free(yf);
    free(mask);
    free(maskf);
}

/* A failed call writes nothing, and reports what the _f32 call reports. */
static void check_errors(const half_api *api)
{
    uint16_t x[8] = {0}, y[8];
    float v[2] = {1, 1}, out[2];
    memset(y, 0xA5, sizeof y);
    memcpy(out, (float[2]){7, 7}, sizeof out);
    CHECK(api->train(1, 2, 1, DN_LAYOUT_NCS, x, v, v, 1e-5, 0.1, NULL, NULL, y, out, NULL)
          == DN_ERR_BATCH_TOO_SMALL);
    CHECK(api->train(2, 2, 2, DN_LAYOUT_NCS, NULL, v, v, 1e-5, 0.1, NULL, NULL, y, out, NULL)
          == DN_ERR_NULL_POINTER);
    CHECK(api->train(2, 2, 2, (dn_layout)5, x, v, v, 1e-5, 0.1, NULL, NULL, y, out, NULL)
          == DN_ERR_BAD_LAYOUT);
    CHECK(api->infer(2, 2, 2, DN_LAYOUT_NCS, x, v, v, v, v, -1.0, y) == DN_ERR_BAD_VALUE);
    CHECK(api->backward(2, 2, 2, DN_LAYOUT_NCS, x, x, NULL, v, v, y, out, NULL)
          == DN_ERR_NULL_POINTER);
    CHECK(api->drop(8, 1, 1, DN_LAYOUT_NCS, 0, x, 1.5, 0, 0, 0, DN_DROPOUT_INVERTED, 1, y, NULL)
          == DN_ERR_BAD_VALUE);
    CHECK(api->drop(0, 1, 1, DN_LAYOUT_NCS, 0, x, 0.5, 0, 0, 0, DN_DROPOUT_INVERTED, 1, y, NULL)
          == DN_ERR_BAD_SHAPE);
    for (int i = 0; i < 8; i++) CHECK(y[i] == 0xA5A5u);
    CHECK(out[0] == 7 && out[1] == 7);
}

int main(void)
{
    static const int64_t shapes[][3] = {
        {2, 3, 5},       {16, 5, 49},  {3, 7, 300},   {5, 3, 1},     {7, 300, 1},
        {2, 17, 1023},   {33, 4, 9},   {1, 2, 5000},  {4, 600, 3},   {20, 3, 130},
    };
    dn_set_num_threads(2);
    check_to_float(&F16);
    check_to_float(&BF16);
    check_rounding(&F16);
    check_rounding(&BF16);
    compare_convert(&dn_half_convert_portable, "portable");
#if defined(DN_HAVE_AVX2)
    if (cpu_has_f16c_avx2()) compare_convert(&dn_half_convert_avx2, "avx2 (F16C)");
    else printf("avx2 conversions: no AVX2 with F16C here, skipped\n");
#endif
#if defined(DN_HAVE_AVX512BF16)
    if (cpu_has_avx512bf16()) compare_convert(&dn_half_convert_avx512bf16, "avx512bf16");
    else printf("avx512bf16 conversions: no AVX512-BF16 here, skipped\n");
#endif
    printf("kernels run the \"%s\" half conversions\n", dn_half_kernel_variant());
    for (int t = 0; t < 2; t++) {
        const half_api *api = t ? &API_BF16 : &API_F16;
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            for (int nsc = 0; nsc < 2; nsc++) {
                for (int kind = 0; kind < 3; kind++)
                    check_batchnorm(api, shapes[i][0], shapes[i][1], shapes[i][2], nsc, kind);
                check_dropout(api, shapes[i][0], shapes[i][1], shapes[i][2], nsc);
            }
        check_streaming(api);
        check_threads(api, 64, 16, 1000, 0);
        check_threads(api, 256, 40, 30, 1);
        check_errors(api);
    }
    /* the limits were reached: subnormal outputs, and binary16's overflow */
    CHECK(acc_subnormal[0] > 0 && acc_subnormal[1] > 0 && acc_infinite[0] > 0);
    for (int t = 0; t < 2; t++)
        printf("%s: forward outputs %lld, %.4f%% the exact result rounded once, the rest one "
               "neighbour away but %lld (within float32's error of their terms); backward dx "
               "within %.3f ulp of max |dx|\n",
               t ? "bf16" : "f16", (long long)acc_total[t],
               100.0 * (double)acc_same[t] / (double)acc_total[t], (long long)acc_cancel[t],
               acc_dx_ulps[t]);
    return check_report("test_half");
}
