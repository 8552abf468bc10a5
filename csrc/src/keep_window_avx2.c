/* The AVX2 keep window: 8 Philox blocks per register, 32x32->64-bit
 * products of the even and odd lanes, then a 4x8 transpose so that keep
 * comes out in element order. Compiled with -mavx2 -mf16c (the half types'
 * conversions, half.h); called only after a CPU check. */
#include <immintrin.h>

#include "half.h"
#include "keep_window.h"

/* The high words of the 32x32 -> 64-bit products from the even and odd
 * lanes' multiplies; the low words from one vpmulld (a shift and a blend
 * were two instructions; 5% faster on this AMD, and as many micro-ops as
 * before on Intel's). */
static inline void dn_mulhilo_avx2(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_mullo_epi32(a, m);
}

/* The Philox words of the window's 64 elements, in element order: w[v]
 * holds elements 8v .. 8v+7. The two halves' rounds run side by side: one
 * half is a chain of dependent instructions. */
static inline void dn_window_words_avx2(const dn_philox_stream *ps, uint64_t block0,
                                        __m256i w[8])
{
    const __m256i m0 = _mm256_set1_epi32((int)DN_PHILOX_M0);
    const __m256i m1 = _mm256_set1_epi32((int)DN_PHILOX_M1);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i x[2][4];
    uint32_t k0 = ps->k0, k1 = ps->k1;
    for (int half = 0; half < 2; half++) {
        const uint64_t b = block0 + (uint64_t)(8 * half);
        /* counter word 0 = lo32(b + j), word 1 = hi32(b + j); the low word
         * wraps within the 8 lanes only if lo32(b) > 2^32 - 8 */
        const __m256i lo = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)b), lane);
        const __m256i wrapped = _mm256_cmpgt_epi32(
            _mm256_xor_si256(_mm256_set1_epi32((int)(uint32_t)b), _mm256_set1_epi32(INT32_MIN)),
            _mm256_xor_si256(lo, _mm256_set1_epi32(INT32_MIN)));
        x[half][0] = lo;
        x[half][1] = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(b >> 32)), wrapped);
        x[half][2] = _mm256_set1_epi32((int)ps->s0);
        x[half][3] = _mm256_set1_epi32((int)ps->s1);
    }
    for (int r = 0; r < 10; r++) {
        const __m256i key0 = _mm256_set1_epi32((int)k0), key1 = _mm256_set1_epi32((int)k1);
        for (int half = 0; half < 2; half++) {
            __m256i h0, l0, h1, l1;
            dn_mulhilo_avx2(x[half][0], m0, &h0, &l0);
            dn_mulhilo_avx2(x[half][2], m1, &h1, &l1);
            x[half][0] = _mm256_xor_si256(_mm256_xor_si256(h1, x[half][1]), key0);
            x[half][1] = l1;
            x[half][2] = _mm256_xor_si256(_mm256_xor_si256(h0, x[half][3]), key1);
            x[half][3] = l0;
        }
        k0 += DN_PHILOX_W0;
        k1 += DN_PHILOX_W1;
    }
    for (int half = 0; half < 2; half++) {
        /* x_k holds word k of blocks 0..7; element 4j + k is word k of block j */
        const __m256i *xh = x[half];
        const __m256i t0 = _mm256_unpacklo_epi32(xh[0], xh[1]);
        const __m256i t1 = _mm256_unpackhi_epi32(xh[0], xh[1]);
        const __m256i t2 = _mm256_unpacklo_epi32(xh[2], xh[3]);
        const __m256i t3 = _mm256_unpackhi_epi32(xh[2], xh[3]);
        const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        w[4 * half + 0] = _mm256_permute2x128_si256(u0, u1, 0x20);
        w[4 * half + 1] = _mm256_permute2x128_si256(u2, u3, 0x20);
        w[4 * half + 2] = _mm256_permute2x128_si256(u0, u1, 0x31);
        w[4 * half + 3] = _mm256_permute2x128_si256(u2, u3, 0x31);
    }
}

/* All ones where the word is >= thr (unsigned): the element is kept. */
static inline __m256i dn_kept_avx2(__m256i w, __m256i thr)
{
    return _mm256_cmpeq_epi32(_mm256_max_epu32(w, thr), w);
}

static inline uint64_t dn_bits_avx2(const __m256i kept[8])
{
    uint64_t bits = 0;
    for (int v = 0; v < 8; v++)
        bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(kept[v])) << (8 * v);
    return bits;
}

void dn_keep_window_avx2(const dn_philox_stream *ps, uint64_t block0,
                         uint32_t *DN_RESTRICT keep, uint64_t *bits)
{
    const __m256i thr = _mm256_set1_epi32((int)ps->thr);
    __m256i w[8], kept[8];
    dn_window_words_avx2(ps, block0, w);
    for (int v = 0; v < 8; v++) {
        kept[v] = dn_kept_avx2(w[v], thr);
        _mm256_storeu_si256((__m256i *)(keep + 8 * v),
                            _mm256_and_si256(kept[v], _mm256_set1_epi32(1)));
    }
    if (bits != NULL) *bits = dn_bits_avx2(kept);
}

/* y[0..8) = kept ? x*s : +0 (x when !mul), for float and for double (two
 * halves of four, the 32-bit masks sign-extended to 64 bits). */
static inline void dn_drop8_avx2_f32(const float *x, float *y, __m256i kept, __m256 s, int mul)
{
    __m256 val = _mm256_loadu_ps(x);
    if (mul) val = _mm256_mul_ps(val, s);
    _mm256_storeu_ps(y, _mm256_and_ps(_mm256_castsi256_ps(kept), val));
}

static inline void dn_drop8_avx2_f64(const double *x, double *y, __m256i kept, __m256d s,
                                     int mul)
{
    for (int h = 0; h < 2; h++) {
        const __m256i k64 = _mm256_cvtepi32_epi64(h == 0 ? _mm256_castsi256_si128(kept)
                                                         : _mm256_extracti128_si256(kept, 1));
        __m256d val = _mm256_loadu_pd(x + 4 * h);
        if (mul) val = _mm256_mul_pd(val, s);
        _mm256_storeu_pd(y + 4 * h, _mm256_and_pd(_mm256_castsi256_pd(k64), val));
    }
}

/* The windows of either element type (f64: 0 float, 1 double; a constant
 * where this is inlined into the two public functions below). */
static inline void dn_drop_windows_avx2(const dn_philox_stream *ps, uint64_t block0,
                                        int64_t windows, int f64, const void *x, void *y,
                                        double scale, int mul, uint64_t *bits)
{
    const __m256i thr = _mm256_set1_epi32((int)ps->thr);
    const __m256 s32 = _mm256_set1_ps((float)scale);
    const __m256d s64 = _mm256_set1_pd(scale);
    for (int64_t w = 0; w < windows; w++) {
        __m256i words[8], kept[8];
        if (f64) dn_prefetch_ahead((const double *)x + w * DN_WIN, DN_WIN * (int64_t)sizeof(double));
        else dn_prefetch_ahead((const float *)x + w * DN_WIN, DN_WIN * (int64_t)sizeof(float));
        dn_window_words_avx2(ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS), words);
        for (int v = 0; v < 8; v++) {
            const int64_t at = w * DN_WIN + 8 * v;
            kept[v] = dn_kept_avx2(words[v], thr);
            if (f64) dn_drop8_avx2_f64((const double *)x + at, (double *)y + at, kept[v], s64, mul);
            else dn_drop8_avx2_f32((const float *)x + at, (float *)y + at, kept[v], s32, mul);
        }
        if (bits != NULL) bits[w] = dn_bits_avx2(kept);
    }
}

void dn_drop_windows_avx2_f32(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                              const float *x, float *y, float scale, int mul, uint64_t *bits)
{
    dn_drop_windows_avx2(ps, block0, windows, 0, x, y, scale, mul, bits);
}

void dn_drop_windows_avx2_f64(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                              const double *x, double *y, double scale, int mul, uint64_t *bits)
{
    dn_drop_windows_avx2(ps, block0, windows, 1, x, y, scale, mul, bits);
}

/* y[0..8) of a half type (bf16: 0 binary16, 1 bfloat16): kept values x*s
 * in float rounded once (x's bits when !mul), dropped ones +0, selected on
 * the 16-bit lanes (the 32-bit masks narrowed with signed saturation: all
 * ones stays all ones). */
static inline void dn_drop8_avx2_half(const uint16_t *x, uint16_t *y, __m256i kept, __m256 s,
                                      int mul, int bf16)
{
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)x);
    const __m128i keep = _mm_packs_epi32(_mm256_castsi256_si128(kept),
                                         _mm256_extracti128_si256(kept, 1));
    if (mul) {
        const __m256 val = _mm256_mul_ps(bf16 ? dn_bf16_widen8(h) : _mm256_cvtph_ps(h), s);
        h = bf16 ? dn_bf16_round8(val) : _mm256_cvtps_ph(val, _MM_FROUND_TO_NEAREST_INT);
    }
    _mm_storeu_si128((__m128i *)(void *)y, _mm_and_si128(h, keep));
}

static inline void dn_drop_windows_half_avx2(const dn_philox_stream *ps, uint64_t block0,
                                             int64_t windows, int bf16, const uint16_t *x,
                                             uint16_t *y, float scale, int mul, uint64_t *bits)
{
    const __m256i thr = _mm256_set1_epi32((int)ps->thr);
    const __m256 s = _mm256_set1_ps(scale);
    for (int64_t w = 0; w < windows; w++) {
        __m256i words[8], kept[8];
        dn_prefetch_ahead(x + w * DN_WIN, DN_WIN * (int64_t)sizeof *x);
        dn_window_words_avx2(ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS), words);
        for (int v = 0; v < 8; v++) {
            const int64_t at = w * DN_WIN + 8 * v;
            kept[v] = dn_kept_avx2(words[v], thr);
            dn_drop8_avx2_half(x + at, y + at, kept[v], s, mul, bf16);
        }
        if (bits != NULL) bits[w] = dn_bits_avx2(kept);
    }
}

void dn_drop_windows_avx2_f16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                              const uint16_t *x, uint16_t *y, float scale, int mul,
                              uint64_t *bits)
{
    dn_drop_windows_half_avx2(ps, block0, windows, 0, x, y, scale, mul, bits);
}

void dn_drop_windows_avx2_bf16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                               const uint16_t *x, uint16_t *y, float scale, int mul,
                               uint64_t *bits)
{
    dn_drop_windows_half_avx2(ps, block0, windows, 1, x, y, scale, mul, bits);
}
