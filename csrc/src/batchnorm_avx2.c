/* Batch-norm inner loops, AVX2 build (batchnorm_kernels.h), compiled with
 * -mavx2 and run only where the CPU has AVX2 (dispatch.c). */
#define DN_VARIANT avx2
#define DN_VARIANT_SIMD 1
#define T float
#define DN_TSFX f32
#include "batchnorm_kernels.h"
#define T double
#define DN_TSFX f64
#include "batchnorm_kernels.h"
