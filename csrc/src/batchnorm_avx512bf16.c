/* Batch-norm inner loops for bfloat16 (batchnorm_kernels.h) with
 * AVX512-BF16's vcvtneps2bf16 for the rounding to bfloat16 (half.h),
 * compiled with the AVX2 variant's flags plus -mavx512f -mavx512vl
 * -mavx512dq -mavx512bf16 and run only where the CPU has them (dispatch.c).
 * The other types stay on their AVX2 build. */
#define DN_VARIANT avx512bf16
#define DN_VARIANT_SIMD 1
#define T float
#define S uint16_t
#define DN_TSFX bf16
#include "batchnorm_kernels.h"

const dn_half_convert dn_half_convert_avx512bf16 = {
    dn_f16_to_f32_n, dn_f32_to_f16_n, dn_bf16_to_f32_n, dn_f32_to_bf16_n,
};
