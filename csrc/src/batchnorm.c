/* Batch normalization: the f32 and f64 variants come from batchnorm_impl.h. */
#include "common.h"

#define T float
#define FN(name) name##_f32
#include "batchnorm_impl.h"
#undef T
#undef FN

#define T double
#define FN(name) name##_f64
#include "batchnorm_impl.h"
#undef T
#undef FN
