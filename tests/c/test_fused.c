/* The fused blocks (dn_batchnorm_*_fused_*): batch norm, residual add,
 * ReLU and dropout in one pass give the composition of the plain functions
 * bit for bit, in both layouts, every element type, one and two threads;
 * and every error status, with nothing written. Shapes reach each
 * schedule: long and short channels-first rows, few images (rows split),
 * wide channels-last rows and row tiles, tensors whose size is not a
 * multiple of 8 or of a dropout window, and one large enough for
 * streaming stores and for the channels-last backward's tiles. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dropnorm/dropnorm.h"
#include "half.h"
#include "check.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static double uniform(void) /* in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

#define T float
#define P float
#define C float
#define LD(v) (v)
#define ST(v) (v)
#define TV(v) ((float)(v))
#define FN(name) name##_f32
#include "test_fused_impl.h"
#undef T
#undef P
#undef C
#undef LD
#undef ST
#undef TV
#undef FN

#define T double
#define P double
#define C double
#define LD(v) (v)
#define ST(v) (v)
#define TV(v) ((double)(v))
#define FN(name) name##_f64
#include "test_fused_impl.h"
#undef T
#undef P
#undef C
#undef LD
#undef ST
#undef TV
#undef FN

#define T uint16_t
#define P float
#define C float
#define LD(v) dn_f16_to_f32(v)
#define ST(v) dn_f32_to_f16(v)
#define TV(v) dn_f32_to_f16((float)(v))
#define FN(name) name##_f16
#include "test_fused_impl.h"
#undef LD
#undef ST
#undef TV
#undef FN

#define LD(v) dn_bf16_to_f32(v)
#define ST(v) dn_f32_to_bf16(v)
#define TV(v) dn_f32_to_bf16((float)(v))
#define FN(name) name##_bf16
#include "test_fused_impl.h"
#undef T
#undef P
#undef C
#undef LD
#undef ST
#undef TV
#undef FN

int main(void)
{
    static const int64_t shapes[][3] = {
        {2, 3, 5}, {16, 40, 49}, {3, 5, 1023}, {40, 17, 9}, {128, 300, 1},
        {2, 700, 33}, {1, 7, 7001}, {4, 16, 96 * 96},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        check_fused_f32(shapes[i][0], shapes[i][1], shapes[i][2]);
        check_fused_f64(shapes[i][0], shapes[i][1], shapes[i][2]);
        check_fused_f16(shapes[i][0], shapes[i][1], shapes[i][2]);
        check_fused_bf16(shapes[i][0], shapes[i][1], shapes[i][2]);
    }
    /* 16 MiB of float32: channels last, the backward's gradient in tiles */
    check_fused_f32(64, 64, 1024);
    return check_report("test_fused");
}
