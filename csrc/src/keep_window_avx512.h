/* The AVX-512 Philox pieces of the keep windows and the fused dropout
 * windows of the half types, shared by keep_window_avx512.c (-mavx512f)
 * and keep_window_avx512bf16.c (also AVX512-BF16, whose vcvtneps2bf16
 * rounds to bfloat16 there: half.h). Static inline: each includer
 * compiles them with its own flags. Not installed. */
#ifndef DROPNORM_KEEP_WINDOW_AVX512_H
#define DROPNORM_KEEP_WINDOW_AVX512_H

#include <immintrin.h>

#include "half.h"
#include "keep_window.h"

/* The high words of the 32x32 -> 64-bit products from the even and odd
 * lanes' multiplies; the low words from one vpmulld (one instruction where
 * a shift and a blend were two: 9% faster here). */
static inline void dn_mulhilo_avx512(__m512i a, __m512i m, __m512i *hi, __m512i *lo)
{
    const __m512i even = _mm512_mul_epu32(a, m);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *hi = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(even, 32), odd);
    *lo = _mm512_mullo_epi32(a, m);
}

/* One Philox4x32-10 round on 16 blocks at once: word k of block j in lane
 * j of x[k]. */
static inline void dn_philox_round_avx512(__m512i x[4], __m512i m0, __m512i m1, __m512i key0,
                                          __m512i key1)
{
    __m512i h0, l0, h1, l1;
    dn_mulhilo_avx512(x[0], m0, &h0, &l0);
    dn_mulhilo_avx512(x[2], m1, &h1, &l1);
    x[0] = _mm512_xor_si512(_mm512_xor_si512(h1, x[1]), key0);
    x[1] = l1;
    x[2] = _mm512_xor_si512(_mm512_xor_si512(h0, x[3]), key1);
    x[3] = l0;
}

/* The counter of blocks block0 .. block0 + 15, the stream in words 2, 3. */
static inline void dn_counters_avx512(const dn_philox_stream *ps, uint64_t block0, __m512i x[4])
{
    const __m512i base = _mm512_set1_epi32((int)(uint32_t)block0);
    const __m512i hi = _mm512_set1_epi32((int)(uint32_t)(block0 >> 32));
    const __m512i lo = _mm512_add_epi32(
        base, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    /* lanes whose low counter word wrapped past 2^32 carry into word 1 */
    const __mmask16 wrapped = _mm512_cmplt_epu32_mask(lo, base);
    x[0] = lo;
    x[1] = _mm512_mask_add_epi32(hi, wrapped, hi, _mm512_set1_epi32(1));
    x[2] = _mm512_set1_epi32((int)ps->s0);
    x[3] = _mm512_set1_epi32((int)ps->s1);
}

/* The keep masks of a window's 64 elements from its 16 blocks' words, in
 * element order: q[v] holds elements 16v .. 16v+15. */
static inline void dn_masks_avx512(const __m512i x[4], __m512i thr, __mmask16 q[4])
{
    /* in each 128-bit lane q: u_j = block 4q + j's four words */
    const __m512i t0 = _mm512_unpacklo_epi32(x[0], x[1]), t1 = _mm512_unpackhi_epi32(x[0], x[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(x[2], x[3]), t3 = _mm512_unpackhi_epi32(x[2], x[3]);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    /* u0 = [b0 b4 b8 b12], u1 = [b1 b5 ...], u2 = [b2 ...], u3 = [b3 ...] */
    const __m512i s0 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(1, 0, 1, 0)); /* b0 b4 b1 b5 */
    const __m512i s1 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(1, 0, 1, 0)); /* b2 b6 b3 b7 */
    const __m512i s2 = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 2, 3, 2)); /* b8 b12 b9 b13 */
    const __m512i s3 = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 2, 3, 2));
    q[0] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(s0, s1, _MM_SHUFFLE(2, 0, 2, 0)), thr);
    q[1] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(s0, s1, _MM_SHUFFLE(3, 1, 3, 1)), thr);
    q[2] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(s2, s3, _MM_SHUFFLE(2, 0, 2, 0)), thr);
    q[3] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(s2, s3, _MM_SHUFFLE(3, 1, 3, 1)), thr);
}

/* The keep masks of `count` (1 .. DN_AVX512_WINDOWS) consecutive windows
 * from block0: q[4w + v] holds elements 16v .. 16v+15 of window w. Two
 * windows side by side measured faster than one and than four (which
 * runs out of registers). */
#define DN_AVX512_WINDOWS 2
static inline void dn_window_masks_avx512(const dn_philox_stream *ps, uint64_t block0,
                                          int count, __mmask16 *q)
{
    const __m512i m0 = _mm512_set1_epi32((int)DN_PHILOX_M0);
    const __m512i m1 = _mm512_set1_epi32((int)DN_PHILOX_M1);
    const __m512i thr = _mm512_set1_epi32((int)ps->thr);
    __m512i x[DN_AVX512_WINDOWS][4];
    uint32_t k0 = ps->k0, k1 = ps->k1;
    for (int c = 0; c < count; c++)
        dn_counters_avx512(ps, block0 + (uint64_t)(c * DN_WIN_BLOCKS), x[c]);
    for (int r = 0; r < 10; r++) {
        const __m512i key0 = _mm512_set1_epi32((int)k0), key1 = _mm512_set1_epi32((int)k1);
        /* the windows side by side: each is a chain of dependent rounds */
        for (int c = 0; c < count; c++) dn_philox_round_avx512(x[c], m0, m1, key0, key1);
        k0 += DN_PHILOX_W0;
        k1 += DN_PHILOX_W1;
    }
    for (int c = 0; c < count; c++) dn_masks_avx512(x[c], thr, q + 4 * c);
}

static inline uint64_t dn_bits_avx512(const __mmask16 q[4])
{
    return (uint64_t)q[0] | ((uint64_t)q[1] << 16) | ((uint64_t)q[2] << 32)
         | ((uint64_t)q[3] << 48);
}

/* The packed bits of `count` windows' masks, when bits is not NULL. */
static inline void dn_store_bits_avx512(const __mmask16 *q, int count, uint64_t *bits)
{
    if (bits != NULL)
        for (int c = 0; c < count; c++) bits[c] = dn_bits_avx512(q + 4 * c);
}

/* `count` windows of a half type (bf16: 0 binary16, 1 bfloat16; constants
 * where this is inlined): kept values x*s in float rounded once (x's bits
 * when !mul), dropped ones +0, selected on the 16-bit lanes. */
static inline void dn_drop_some_avx512_half(const dn_philox_stream *ps, uint64_t block0,
                                            int count, int bf16, const uint16_t *x, uint16_t *y,
                                            __m512 s, int mul, uint64_t *bits)
{
    __mmask16 q[4 * DN_AVX512_WINDOWS];
    dn_prefetch_ahead(x, count * DN_WIN * (int64_t)sizeof *x);
    dn_window_masks_avx512(ps, block0, count, q);
    for (int v = 0; v < 4 * count; v++) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(x + 16 * v));
        const __m256i keep = _mm512_cvtepi32_epi16(_mm512_maskz_mov_epi32(q[v],
                                                                          _mm512_set1_epi32(-1)));
        if (mul) {
            const __m512 val = _mm512_mul_ps(bf16 ? dn_bf16_widen16(h) : _mm512_cvtph_ps(h), s);
            h = bf16 ? dn_bf16_round16(val) : _mm512_cvtps_ph(val, _MM_FROUND_TO_NEAREST_INT);
        }
        _mm256_storeu_si256((__m256i *)(void *)(y + 16 * v), _mm256_and_si256(h, keep));
    }
    dn_store_bits_avx512(q, count, bits);
}

/* The windows of a half type: pairs, then the odd one. */
static inline void dn_drop_windows_half_avx512(const dn_philox_stream *ps, uint64_t block0,
                                               int64_t windows, int bf16, const uint16_t *x,
                                               uint16_t *y, float scale, int mul, uint64_t *bits)
{
    const __m512 s = _mm512_set1_ps(scale);
    int64_t w = 0;
    for (; w + DN_AVX512_WINDOWS <= windows; w += DN_AVX512_WINDOWS)
        dn_drop_some_avx512_half(ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS), DN_AVX512_WINDOWS,
                                 bf16, x + w * DN_WIN, y + w * DN_WIN, s, mul,
                                 bits ? bits + w : NULL);
    for (; w < windows; w++)
        dn_drop_some_avx512_half(ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS), 1, bf16,
                                 x + w * DN_WIN, y + w * DN_WIN, s, mul, bits ? bits + w : NULL);
}

#endif
