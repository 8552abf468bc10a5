/* The storage-only element types: IEEE binary16 ("f16") and bfloat16
 * ("bf16", the upper half of a float32), both held in uint16_t, and their
 * conversions to and from float32. Not installed.
 *
 * Every conversion exists as portable C and, where the translation unit is
 * compiled for it, as SIMD (F16C vcvtph2ps/vcvtps2ph; AVX2 integer
 * arithmetic for bfloat16; AVX512-BF16 vcvtneps2bf16). They give the same
 * bits (tests/c/test_half.c compares them exhaustively):
 *
 *   to float32    exact. A binary16 NaN becomes a quiet float32 NaN with its
 *                 payload (vcvtph2ps's rule: the quiet bit set); a bfloat16
 *                 NaN keeps its bits (the conversion is a shift), so a
 *                 signalling one stays signalling until arithmetic quiets it.
 *   from float32  round to nearest, ties to even, subnormals included (no
 *                 flush to zero); overflow gives infinity (binary16: from
 *                 65520 up); a NaN gives a quiet NaN of its sign with the
 *                 top bits of its payload (the float32 quiet bit is the
 *                 16-bit one).
 *
 * The names take the type's suffix (dn_f16_to_f32, dn_f32_to_bf16, ...) so
 * that the kernel templates reach them by pasting DN_TSFX. */
#ifndef DROPNORM_HALF_H
#define DROPNORM_HALF_H

#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) || defined(__F16C__) || defined(__AVX512F__)
#  include <immintrin.h>
#endif

static inline uint32_t dn_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float dn_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- Portable scalar conversions. ------------------------------------- */

static inline float dn_bf16_to_f32(uint16_t h) { return dn_bits_f32((uint32_t)h << 16); }

static inline uint16_t dn_f32_to_bf16(float f)
{
    const uint32_t u = dn_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    /* the 16 dropped bits rounded to nearest even: a carry may run into the
     * exponent (the next binade, or infinity), which is right */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__F16C__)
/* One value with F16C (the same bits as the portable code below, which
 * tests/c/test_half.c compares with these through the variants' tables). */
static inline float dn_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }

static inline uint16_t dn_f32_to_f16(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#else
static inline float dn_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = ((uint32_t)h >> 10) & 0x1Fu, m = (uint32_t)h & 0x3FFu;
    if (e == 0x1Fu) /* infinity, or NaN made quiet */
        return dn_bits_f32(sign | 0x7F800000u | (m != 0 ? 0x400000u | (m << 13) : 0u));
    if (e != 0) return dn_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
    /* zero or subnormal: m * 2^-24, exact in float32 */
    return dn_bits_f32(sign | dn_f32_bits((float)m * 5.9604644775390625e-08f));
}

static inline uint16_t dn_f32_to_f16(float f)
{
    const uint32_t u = dn_f32_bits(f), a = u & 0x7FFFFFFFu;
    const uint32_t sign = (u >> 16) & 0x8000u;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a >> 13) & 0x3FFu)); /* NaN */
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520: infinity */
    if (a >= 0x38800000u) {
        /* normal (>= 2^-14): the exponent rebiased by 127 - 15, then the 13
         * dropped bits rounded to nearest even (a carry is right here too) */
        const uint32_t r = a - (112u << 23);
        return (uint16_t)(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13));
    }
    if (a <= 0x33000000u) return (uint16_t)sign; /* <= 2^-25: zero (2^-25 a tie to even 0) */
    {
        /* subnormal: the value in units of 2^-24, rounded to nearest even
         * (1024 is the smallest normal, 0x0400, which is right) */
        const uint32_t shift = 126u - (a >> 23); /* 14 .. 24 */
        const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
        const uint32_t q = mant >> shift, rest = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        return (uint16_t)(sign | (q + (rest > half || (rest == half && (q & 1u)))));
    }
}
#endif

/* ---- Eight values at a time, through registers where there are some. ---- */

#if defined(__F16C__)
static inline void dn_f16_to_f32_x8(const uint16_t *src, float *dst)
{
    _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)src)));
}

static inline void dn_f32_to_f16_x8(const float *src, uint16_t *dst)
{
    _mm_storeu_si128((__m128i *)(void *)dst,
                     _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT));
}
#else
static inline void dn_f16_to_f32_x8(const uint16_t *src, float *dst)
{
    for (int j = 0; j < 8; j++) dst[j] = dn_f16_to_f32(src[j]);
}

static inline void dn_f32_to_f16_x8(const float *src, uint16_t *dst)
{
    for (int j = 0; j < 8; j++) dst[j] = dn_f32_to_f16(src[j]);
}
#endif

#if defined(__AVX2__)
/* eight bfloat16 values (a vector of 16-bit lanes) as float */
static inline __m256 dn_bf16_widen8(__m128i h)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* the same from memory: the eight in both halves of a register (a load,
 * no shuffle), each moved to the top of its 32-bit lane by one in-lane byte
 * shuffle (zeros below), instead of a widening shuffle and a shift */
static inline __m256 dn_bf16_load8(const uint16_t *src)
{
    const __m256i top = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                         -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1,
                                         14, 15);
    const __m256i both = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)(const void *)src));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(both, top));
}

static inline void dn_bf16_to_f32_x8(const uint16_t *src, float *dst)
{
    _mm256_storeu_ps(dst, dn_bf16_load8(src));
}

/* dn_f32_to_bf16 on eight lanes, in integer arithmetic */
static inline __m128i dn_bf16_round_avx2(__m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i top = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(top, _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i quiet = _mm256_or_si256(top, _mm256_set1_epi32(0x40));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
    /* each lane < 2^16: the unsigned saturating pack keeps it */
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

#  if defined(__AVX512BF16__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
/* vcvtneps2bf16 rounds to nearest even and quiets NaN as above, but takes a
 * subnormal input as zero: the rare vector that holds one is rounded in
 * integer arithmetic instead. */
static inline __m128i dn_bf16_round8(__m256 v)
{
    if (_mm256_fpclass_ps_mask(v, 0x20) != 0) return dn_bf16_round_avx2(v);
    return (__m128i)_mm256_cvtneps_pbh(v);
}
#  else
static inline __m128i dn_bf16_round8(__m256 v) { return dn_bf16_round_avx2(v); }
#  endif

static inline void dn_f32_to_bf16_x8(const float *src, uint16_t *dst)
{
    _mm_storeu_si128((__m128i *)(void *)dst, dn_bf16_round8(_mm256_loadu_ps(src)));
}
#else
static inline void dn_bf16_to_f32_x8(const uint16_t *src, float *dst)
{
    for (int j = 0; j < 8; j++) dst[j] = dn_bf16_to_f32(src[j]);
}

static inline void dn_f32_to_bf16_x8(const float *src, uint16_t *dst)
{
    for (int j = 0; j < 8; j++) dst[j] = dn_f32_to_bf16(src[j]);
}
#endif

#if defined(__AVX512F__)
/* Sixteen at a time in AVX-512 registers (the dropout windows). */
static inline __m512 dn_bf16_widen16(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m256i dn_bf16_round16_avx512(__m512 v)
{
    const __m512i u = _mm512_castps_si512(v);
    const __m512i top = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(top, _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    /* lanes < 2^16: the truncating narrowing keeps them */
    return _mm512_cvtepi32_epi16(
        _mm512_mask_or_epi32(rounded, nan, top, _mm512_set1_epi32(0x40)));
}

#  if defined(__AVX512BF16__) && defined(__AVX512DQ__)
static inline __m256i dn_bf16_round16(__m512 v)
{
    if (_mm512_fpclass_ps_mask(v, 0x20) != 0) return dn_bf16_round16_avx512(v);
    return (__m256i)_mm512_cvtneps_pbh(v);
}
#  else
static inline __m256i dn_bf16_round16(__m512 v) { return dn_bf16_round16_avx512(v); }
#  endif
#endif

/* Eight values between memory and an AVX register, for the kernels' lanes
 * (batchnorm_kernels.h): where both formats have them, DN_HALF_V8. */
#if defined(__AVX2__) && defined(__F16C__)
#  define DN_HALF_V8 1
static inline __m256 dn_f16_load_v8(const uint16_t *src)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)src));
}

static inline void dn_f16_store_v8(uint16_t *dst, __m256 v)
{
    _mm_storeu_si128((__m128i *)(void *)dst, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline __m256 dn_bf16_load_v8(const uint16_t *src) { return dn_bf16_load8(src); }

static inline void dn_bf16_store_v8(uint16_t *dst, __m256 v)
{
    _mm_storeu_si128((__m128i *)(void *)dst, dn_bf16_round8(v));
}

/* Sixteen, from two registers of eight: bfloat16 with AVX512-BF16 rounds
 * the sixteen in one 512-bit instruction (and one subnormal check). */
static inline void dn_f16_store_v16(uint16_t *dst, __m256 lo, __m256 hi)
{
    dn_f16_store_v8(dst, lo);
    dn_f16_store_v8(dst + 8, hi);
}

#  if defined(__AVX512BF16__) && defined(__AVX512DQ__)
static inline void dn_bf16_store_v16(uint16_t *dst, __m256 lo, __m256 hi)
{
    const __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    _mm256_storeu_si256((__m256i *)(void *)dst, dn_bf16_round16(v));
}
#  else
static inline void dn_bf16_store_v16(uint16_t *dst, __m256 lo, __m256 hi)
{
    dn_bf16_store_v8(dst, lo);
    dn_bf16_store_v8(dst + 8, hi);
}
#  endif
#endif

/* ---- Arrays: eight at a time, then one at a time. ------------------------ */

static inline void dn_f16_to_f32_n(const uint16_t *src, float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) dn_f16_to_f32_x8(src + i, dst + i);
    for (; i < n; i++) dst[i] = dn_f16_to_f32(src[i]);
}

static inline void dn_f32_to_f16_n(const float *src, uint16_t *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) dn_f32_to_f16_x8(src + i, dst + i);
    for (; i < n; i++) dst[i] = dn_f32_to_f16(src[i]);
}

static inline void dn_bf16_to_f32_n(const uint16_t *src, float *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) dn_bf16_to_f32_x8(src + i, dst + i);
    for (; i < n; i++) dst[i] = dn_bf16_to_f32(src[i]);
}

static inline void dn_f32_to_bf16_n(const float *src, uint16_t *dst, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) dn_f32_to_bf16_x8(src + i, dst + i);
    for (; i < n; i++) dst[i] = dn_f32_to_bf16(src[i]);
}

#endif
