/* The AVX-512 keep window: all 16 Philox blocks of a window in one register
 * per counter word, then a 4x16 transpose so that keep comes out in element
 * order (keep_window_avx512.h). Compiled with -mavx512f; called only after
 * a CPU check. */
#include "keep_window_avx512.h"

void dn_keep_window_avx512(const dn_philox_stream *ps, uint64_t block0,
                           uint32_t *DN_RESTRICT keep, uint64_t *bits)
{
    const __m512i one = _mm512_set1_epi32(1);
    __mmask16 q[4];
    dn_window_masks_avx512(ps, block0, 1, q);
    for (int v = 0; v < 4; v++)
        _mm512_storeu_si512((void *)(keep + 16 * v), _mm512_maskz_mov_epi32(q[v], one));
    if (bits != NULL) *bits = dn_bits_avx512(q);
}

/* `count` windows (a constant where this is inlined, so that the loops
 * unroll and the masks stay in mask registers). */
static inline void dn_drop_some_avx512_f32(const dn_philox_stream *ps, uint64_t block0,
                                           int count, const float *x, float *y, __m512 s,
                                           int mul, uint64_t *bits)
{
    __mmask16 q[4 * DN_AVX512_WINDOWS];
    dn_prefetch_ahead(x, count * DN_WIN * (int64_t)sizeof *x);
    dn_window_masks_avx512(ps, block0, count, q);
    for (int v = 0; v < 4 * count; v++) {
        const __m512 val = _mm512_loadu_ps(x + 16 * v);
        /* zero-masking: a dropped element is +0 whatever x holds */
        _mm512_storeu_ps(y + 16 * v, mul ? _mm512_maskz_mul_ps(q[v], val, s)
                                         : _mm512_maskz_mov_ps(q[v], val));
    }
    dn_store_bits_avx512(q, count, bits);
}

static inline void dn_drop_some_avx512_f64(const dn_philox_stream *ps, uint64_t block0, int count,
                                           const double *x, double *y, __m512d s, int mul,
                                           uint64_t *bits)
{
    __mmask16 q[4 * DN_AVX512_WINDOWS];
    dn_prefetch_ahead(x, count * DN_WIN * (int64_t)sizeof *x);
    dn_window_masks_avx512(ps, block0, count, q);
    for (int v = 0; v < 8 * count; v++) {
        const __mmask8 k = (__mmask8)(q[v / 2] >> (8 * (v % 2)));
        const __m512d val = _mm512_loadu_pd(x + 8 * v);
        _mm512_storeu_pd(y + 8 * v, mul ? _mm512_maskz_mul_pd(k, val, s)
                                        : _mm512_maskz_mov_pd(k, val));
    }
    dn_store_bits_avx512(q, count, bits);
}

/* The public windows functions: pairs of windows, then the odd one. */
#define DN_DEFINE_DROP_WINDOWS(SFX, T, VEC, SET1)                                               \
    void dn_drop_windows_avx512_##SFX(const dn_philox_stream *ps, uint64_t block0,              \
                                      int64_t windows, const T *x, T *y, T scale,               \
                                      int mul, uint64_t *bits)                                  \
    {                                                                                           \
        const VEC s = SET1(scale);                                                              \
        int64_t w = 0;                                                                          \
        for (; w + DN_AVX512_WINDOWS <= windows; w += DN_AVX512_WINDOWS)                        \
            dn_drop_some_avx512_##SFX(ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS),               \
                                      DN_AVX512_WINDOWS, x + w * DN_WIN, y + w * DN_WIN,        \
                                      s, mul, bits ? bits + w : NULL);                          \
        for (; w < windows; w++)                                                                \
            dn_drop_some_avx512_##SFX(ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS), 1,            \
                                      x + w * DN_WIN, y + w * DN_WIN, s, mul,                   \
                                      bits ? bits + w : NULL);                                  \
    }

DN_DEFINE_DROP_WINDOWS(f32, float, __m512, _mm512_set1_ps)
DN_DEFINE_DROP_WINDOWS(f64, double, __m512d, _mm512_set1_pd)

void dn_drop_windows_avx512_f16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                                const uint16_t *x, uint16_t *y, float scale, int mul,
                                uint64_t *bits)
{
    dn_drop_windows_half_avx512(ps, block0, windows, 0, x, y, scale, mul, bits);
}

/* bfloat16 rounded in AVX-512F integer arithmetic (keep_window_avx512bf16.c
 * has vcvtneps2bf16) */
void dn_drop_windows_avx512_bf16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                                 const uint16_t *x, uint16_t *y, float scale, int mul,
                                 uint64_t *bits)
{
    dn_drop_windows_half_avx512(ps, block0, windows, 1, x, y, scale, mul, bits);
}
