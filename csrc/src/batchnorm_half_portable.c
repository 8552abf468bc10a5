/* Batch-norm inner loops of the half types (f16, bf16: uint16_t storage,
 * float arithmetic), portable build (batchnorm_kernels.h), and their
 * portable conversions. Apart from batchnorm_portable.c, so that the float
 * and double code is compiled as it was without them. */
#define DN_VARIANT portable
#define T float
#define S uint16_t
#define DN_TSFX f16
#include "batchnorm_kernels.h"
#define T float
#define S uint16_t
#define DN_TSFX bf16
#include "batchnorm_kernels.h"

const dn_half_convert dn_half_convert_portable = {
    dn_f16_to_f32_n, dn_f32_to_f16_n, dn_bf16_to_f32_n, dn_f32_to_bf16_n,
};
