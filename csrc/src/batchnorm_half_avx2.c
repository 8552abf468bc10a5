/* Batch-norm inner loops of the half types, AVX2 build
 * (batchnorm_kernels.h), compiled with -mavx2 -mf16c and run only where
 * the CPU has both (dispatch.c): binary16 converts with F16C
 * (vcvtph2ps/vcvtps2ph), bfloat16 with AVX2 integer arithmetic (half.h).
 * Apart from batchnorm_avx2.c, so that the float and double code is
 * compiled as it was without them. */
#define DN_VARIANT avx2
#define DN_VARIANT_SIMD 1
#define T float
#define S uint16_t
#define DN_TSFX f16
#include "batchnorm_kernels.h"
#define T float
#define S uint16_t
#define DN_TSFX bf16
#include "batchnorm_kernels.h"

const dn_half_convert dn_half_convert_avx2 = {
    dn_f16_to_f32_n, dn_f32_to_f16_n, dn_bf16_to_f32_n, dn_f32_to_bf16_n,
};
