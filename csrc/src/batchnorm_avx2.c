/* Batch-norm kernels, avx2 variant (see batchnorm_kernels.h). */
#define DN_VARIANT avx2
#include "batchnorm_kernels.h"
