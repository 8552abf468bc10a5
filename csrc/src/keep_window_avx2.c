/* The AVX2 keep window: 8 Philox blocks per register, 32x32->64-bit
 * products of the even and odd lanes, then a 4x8 transpose so that keep
 * comes out in element order. Compiled with -mavx2; called only after a
 * CPU check. */
#include <immintrin.h>

#include "keep_window.h"

static inline void dn_mulhilo_avx2(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    const __m256i even = _mm256_mul_epu32(a, m);
    const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* Stores 1 where v >= thr (unsigned), else 0, to out; returns those 8 bits. */
static inline uint64_t dn_keep_avx2(__m256i v, __m256i thr, uint32_t *out)
{
    const __m256i kept = _mm256_cmpeq_epi32(_mm256_max_epu32(v, thr), v);
    _mm256_storeu_si256((__m256i *)out, _mm256_and_si256(kept, _mm256_set1_epi32(1)));
    return (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(kept));
}

void dn_keep_window_avx2(const dn_philox_stream *ps, uint64_t block0,
                         uint32_t *DN_RESTRICT keep, uint64_t *bits)
{
    uint64_t packed = 0;
    const __m256i m0 = _mm256_set1_epi32((int)DN_PHILOX_M0);
    const __m256i m1 = _mm256_set1_epi32((int)DN_PHILOX_M1);
    const __m256i thr = _mm256_set1_epi32((int)ps->thr);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int half = 0; half < 2; half++) {
        const uint64_t b = block0 + (uint64_t)(8 * half);
        /* counter word 0 = lo32(b + j), word 1 = hi32(b + j); the low word
         * wraps within the 8 lanes only if lo32(b) > 2^32 - 8 */
        const __m256i lo = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)b), lane);
        const __m256i wrapped = _mm256_cmpgt_epi32(
            _mm256_xor_si256(_mm256_set1_epi32((int)(uint32_t)b), _mm256_set1_epi32(INT32_MIN)),
            _mm256_xor_si256(lo, _mm256_set1_epi32(INT32_MIN)));
        __m256i x0 = lo;
        __m256i x1 = _mm256_sub_epi32(_mm256_set1_epi32((int)(uint32_t)(b >> 32)), wrapped);
        __m256i x2 = _mm256_set1_epi32((int)ps->s0);
        __m256i x3 = _mm256_set1_epi32((int)ps->s1);
        uint32_t k0 = ps->k0, k1 = ps->k1;
        for (int r = 0; r < 10; r++) {
            __m256i h0, l0, h1, l1;
            dn_mulhilo_avx2(x0, m0, &h0, &l0);
            dn_mulhilo_avx2(x2, m1, &h1, &l1);
            x0 = _mm256_xor_si256(_mm256_xor_si256(h1, x1), _mm256_set1_epi32((int)k0));
            x1 = l1;
            x2 = _mm256_xor_si256(_mm256_xor_si256(h0, x3), _mm256_set1_epi32((int)k1));
            x3 = l0;
            k0 += DN_PHILOX_W0;
            k1 += DN_PHILOX_W1;
        }
        {
            /* x_k holds word k of blocks 0..7; element 4j + k is word k of block j */
            const __m256i t0 = _mm256_unpacklo_epi32(x0, x1), t1 = _mm256_unpackhi_epi32(x0, x1);
            const __m256i t2 = _mm256_unpacklo_epi32(x2, x3), t3 = _mm256_unpackhi_epi32(x2, x3);
            const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
            const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
            uint32_t *out = keep + 32 * half;
            const int at = 32 * half;
            packed |= dn_keep_avx2(_mm256_permute2x128_si256(u0, u1, 0x20), thr, out) << at;
            packed |= dn_keep_avx2(_mm256_permute2x128_si256(u2, u3, 0x20), thr, out + 8)
                      << (at + 8);
            packed |= dn_keep_avx2(_mm256_permute2x128_si256(u0, u1, 0x31), thr, out + 16)
                      << (at + 16);
            packed |= dn_keep_avx2(_mm256_permute2x128_si256(u2, u3, 0x31), thr, out + 24)
                      << (at + 24);
        }
    }
    if (bits != NULL) *bits = packed;
}
