/* Keep decisions of one window of DN_WIN = 64 consecutive dropout indices
 * (16 Philox4x32-10 blocks), in several instruction-set variants chosen at
 * run time. Every variant returns the same bits: keep[i] = 1 if index
 * base + i is kept (its Philox word >= thr), else 0. Not installed. */
#ifndef DROPNORM_KEEP_WINDOW_H
#define DROPNORM_KEEP_WINDOW_H

#include <stdint.h>

#include "philox.h"

#define DN_WIN 64                  /* indices per window */
#define DN_WIN_BLOCKS (DN_WIN / 4) /* Philox blocks per window */

/* The window loops run ten Philox rounds between one window's loads and
 * the next's: more instructions than the out-of-order window reaches, and
 * this CPU's hardware prefetchers did not keep the lines coming (one thread,
 * float32, 51 MB: 1.10 ns per element without, 0.31 with, which is the
 * in-cache speed). So each window first prefetches the input a fixed
 * distance ahead. A prefetch never faults; the address is formed as an
 * integer, so near the end of the tensor it is no pointer arithmetic past
 * the array. */
#define DN_PREFETCH_AHEAD 1024 /* bytes */

static inline void dn_prefetch_ahead(const void *at, int64_t bytes)
{
#if defined(__GNUC__)
    const uintptr_t a = (uintptr_t)at + DN_PREFETCH_AHEAD;
    for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch((const void *)(a + (uintptr_t)o));
#else
    (void)at;
    (void)bytes;
#endif
}

/* What a window needs: key, the stream's counter words and the threshold. */
typedef struct dn_philox_stream {
    uint32_t k0, k1; /* key: lo32(seed), hi32(seed) */
    uint32_t s0, s1; /* counter words 2 and 3: lo32(stream), hi32(stream) */
    uint32_t thr;    /* dropped iff word < thr */
} dn_philox_stream;

/* The stream of (seed, stream) at drop probability 0 <= p < 1: the key,
 * the counter's words 2 and 3, and threshold = floor(p * 2^32) (the
 * product is exact, a power of two, and below 2^32, so the conversion
 * truncates exactly). The one place this rule is written: dropout.c and
 * the fused batch norm take their streams from here. */
static inline dn_philox_stream dn_philox_stream_of(double p, uint64_t seed, uint64_t stream)
{
    dn_philox_stream ps;
    ps.k0 = (uint32_t)seed;
    ps.k1 = (uint32_t)(seed >> 32);
    ps.s0 = (uint32_t)stream;
    ps.s1 = (uint32_t)(stream >> 32);
    ps.thr = (uint32_t)(p * 4294967296.0);
    return ps;
}

/* block0 = base / 4, the first Philox block of the window. If bits is not
 * NULL it also gets the window packed: bit i set iff keep[i]. */
typedef void (*dn_keep_window_fn)(const dn_philox_stream *ps, uint64_t block0,
                                  uint32_t *DN_RESTRICT keep, uint64_t *bits);

/* The portable variant: plain C the compiler may vectorise. */
static inline void dn_keep_window_portable(const dn_philox_stream *ps, uint64_t block0,
                                           uint32_t *DN_RESTRICT keep, uint64_t *bits)
{
    uint32_t c0[DN_WIN_BLOCKS], c1[DN_WIN_BLOCKS], c2[DN_WIN_BLOCKS], c3[DN_WIN_BLOCKS];
    const uint32_t thr = ps->thr;
    for (int j = 0; j < DN_WIN_BLOCKS; j++) {
        const uint64_t b = block0 + (uint64_t)j;
        c0[j] = (uint32_t)b;
        c1[j] = (uint32_t)(b >> 32);
        c2[j] = ps->s0;
        c3[j] = ps->s1;
    }
    dn_philox4x32_10_lanes(DN_WIN_BLOCKS, c0, c1, c2, c3, ps->k0, ps->k1);
    for (int j = 0; j < DN_WIN_BLOCKS; j++) {
        keep[4 * j + 0] = c0[j] >= thr;
        keep[4 * j + 1] = c1[j] >= thr;
        keep[4 * j + 2] = c2[j] >= thr;
        keep[4 * j + 3] = c3[j] >= thr;
    }
    if (bits != NULL) {
        uint64_t b = 0;
        for (int i = 0; i < DN_WIN; i++) b |= (uint64_t)keep[i] << i;
        *bits = b;
    }
}

/* Dropout of `windows` consecutive whole windows from block0, fused with
 * their keep decisions (SIMD variants only): y[i] = keep ? x[i]*scale : +0
 * (x[i] when !mul) for the windows' elements; x may be y. bits, if not
 * NULL, gets one word per window, as dn_keep_window_fn's. One call for
 * many windows lets a variant overlap their Philox rounds. */
typedef void (*dn_drop_windows_fn_f32)(const dn_philox_stream *ps, uint64_t block0,
                                       int64_t windows, const float *x, float *y, float scale,
                                       int mul, uint64_t *bits);
typedef void (*dn_drop_windows_fn_f64)(const dn_philox_stream *ps, uint64_t block0,
                                       int64_t windows, const double *x, double *y,
                                       double scale, int mul, uint64_t *bits);
/* The half types (binary16, bfloat16 in uint16_t): kept values are
 * x*scale computed in float and rounded once (half.h); with !mul their
 * bits are copied. */
typedef void (*dn_drop_windows_fn_f16)(const dn_philox_stream *ps, uint64_t block0,
                                       int64_t windows, const uint16_t *x, uint16_t *y,
                                       float scale, int mul, uint64_t *bits);
typedef dn_drop_windows_fn_f16 dn_drop_windows_fn_bf16;

#if defined(DN_HAVE_AVX2)
void dn_drop_windows_avx2_f32(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                              const float *x, float *y, float scale, int mul, uint64_t *bits);
void dn_drop_windows_avx2_f64(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                              const double *x, double *y, double scale, int mul, uint64_t *bits);
void dn_drop_windows_avx2_f16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                              const uint16_t *x, uint16_t *y, float scale, int mul,
                              uint64_t *bits);
void dn_drop_windows_avx2_bf16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                               const uint16_t *x, uint16_t *y, float scale, int mul,
                               uint64_t *bits);
#endif
#if defined(DN_HAVE_AVX512)
void dn_drop_windows_avx512_f32(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                                const float *x, float *y, float scale, int mul, uint64_t *bits);
void dn_drop_windows_avx512_f64(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                                const double *x, double *y, double scale, int mul,
                                uint64_t *bits);
void dn_drop_windows_avx512_f16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                                const uint16_t *x, uint16_t *y, float scale, int mul,
                                uint64_t *bits);
void dn_drop_windows_avx512_bf16(const dn_philox_stream *ps, uint64_t block0, int64_t windows,
                                 const uint16_t *x, uint16_t *y, float scale, int mul,
                                 uint64_t *bits);
#endif
#if defined(DN_HAVE_AVX512BF16)
void dn_drop_windows_avx512bf16_bf16(const dn_philox_stream *ps, uint64_t block0,
                                     int64_t windows, const uint16_t *x, uint16_t *y,
                                     float scale, int mul, uint64_t *bits);
#endif

#if defined(DN_HAVE_AVX2)
void dn_keep_window_avx2(const dn_philox_stream *ps, uint64_t block0,
                         uint32_t *DN_RESTRICT keep, uint64_t *bits);
#endif
#if defined(DN_HAVE_AVX512)
void dn_keep_window_avx512(const dn_philox_stream *ps, uint64_t block0,
                           uint32_t *DN_RESTRICT keep, uint64_t *bits);
#endif


#endif
