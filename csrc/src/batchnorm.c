/* Batch normalization: the public functions for float and double
 * (batchnorm_impl.h), which run the inner loops of the instruction-set
 * variant dispatch.c chose (batchnorm_kernels.h). */
#include "kernels.h"

#define T float
#define FN(name) name##_f32
#define BN_TABLE bn_f32
#include "batchnorm_impl.h"
#undef T
#undef FN
#undef BN_TABLE

#define T double
#define FN(name) name##_f64
#define BN_TABLE bn_f64
#include "batchnorm_impl.h"
#undef T
#undef FN
#undef BN_TABLE
