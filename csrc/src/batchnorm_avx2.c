/* Batch-norm kernels, avx2 variant (see batchnorm_kernels.h). */
#define DN_VARIANT avx2
#define DN_VARIANT_SIMD 1
#include "batchnorm_kernels.h"
