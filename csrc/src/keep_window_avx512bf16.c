/* The fused dropout windows of bfloat16 with AVX512-BF16: those of
 * keep_window_avx512.c (keep_window_avx512.h), rounding to bfloat16 with
 * vcvtneps2bf16 (half.h). Compiled with -mavx512f -mavx512vl -mavx512dq
 * -mavx512bf16; called only after a CPU check. */
#include "keep_window_avx512.h"

void dn_drop_windows_avx512bf16_bf16(const dn_philox_stream *ps, uint64_t block0,
                                     int64_t windows, const uint16_t *x, uint16_t *y,
                                     float scale, int mul, uint64_t *bits)
{
    dn_drop_windows_half_avx512(ps, block0, windows, 1, x, y, scale, mul, bits);
}
