/* Batch-norm inner loops, AVX-512 variant (batchnorm_kernels.h): the AVX2
 * build's code, compiled with its flags, with the elementwise passes
 * (inference, training, backward), the channels-last sums and the
 * channels-first short-row sums in 64-byte vectors (DN_WIDE_VECTORS: those
 * functions alone carry target("avx512f")); run only where the CPU has
 * AVX-512F (dispatch.c). */
#define DN_VARIANT avx512
#define DN_VARIANT_SIMD 1
#define DN_WIDE_VECTORS ps
#define DN_WIDE_TYPE __m512
#define T float
#define DN_TSFX f32
#include "batchnorm_kernels.h"
#define DN_WIDE_VECTORS pd
#define DN_WIDE_TYPE __m512d
#define T double
#define DN_TSFX f64
#include "batchnorm_kernels.h"
