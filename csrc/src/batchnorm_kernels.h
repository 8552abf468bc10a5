/* The batch-norm kernels of one instruction-set variant, f32 and f64, named
 * dn_batchnorm_*_f32_<DN_VARIANT>: batchnorm_portable.c and batchnorm_avx2.c
 * include this file, each compiled for its ISA, and batchnorm.c calls the
 * one the CPU runs. The arithmetic is the same in each
 * (explicit lanes, no contraction, no reassociation), so they give the same
 * bits; the vector width only changes how fast. */
#include "common.h"

#define DN_CAT3(a, b, c) a##b##c
#define DN_XCAT3(a, b, c) DN_CAT3(a, b, c)

#define T float
#define FN(name) DN_XCAT3(name, _f32_, DN_VARIANT)
#include "batchnorm_impl.h"
#undef T
#undef FN

#define T double
#define FN(name) DN_XCAT3(name, _f64_, DN_VARIANT)
#include "batchnorm_impl.h"
#undef T
#undef FN
