/* Batch-norm kernels, portable variant (see batchnorm_kernels.h). */
#define DN_VARIANT portable
#include "batchnorm_kernels.h"
