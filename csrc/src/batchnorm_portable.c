/* Batch-norm inner loops, portable build (batchnorm_kernels.h). */
#define DN_VARIANT portable
#define T float
#define DN_TSFX f32
#include "batchnorm_kernels.h"
#define T double
#define DN_TSFX f64
#include "batchnorm_kernels.h"
