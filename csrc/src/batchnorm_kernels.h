/* The batch-norm kernels of one instruction-set variant, f32 and f64, named
 * dn_batchnorm_*_f32_<DN_VARIANT>: batchnorm_portable.c and batchnorm_avx2.c
 * include this file, each compiled for its ISA, and batchnorm.c calls the
 * one the CPU runs. The arithmetic is the same in each
 * (explicit lanes, no contraction, no reassociation), so they give the same
 * bits; the vector width only changes how fast. */
#include "common.h"

/* The reductions sweep once for several sums with GCC/Clang vector types
 * (DN_VECTOR_SUMS) or run one plain loop per sum; both add the same values
 * in the same lanes and order. On x86-64 the portable variant keeps the
 * plain loops, so the test that the portable and AVX2 variants give the
 * same bits also checks the two forms against each other (the plain one is
 * what MSVC builds). */
#if defined(__GNUC__) && (defined(DN_VARIANT_SIMD) || !(defined(__x86_64__) || defined(__i386__)))
#  define DN_VECTOR_SUMS 1
#endif

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
