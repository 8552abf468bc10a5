/* In-place calls (y == x, dx == dy, dx == x) give the bits of out-of-place
 * ones, for every element type. The tensor inputs an output may alias are not restrict in the API
 * and the kernels, so an optimiser (this test runs in CI's -O3 builds with
 * gcc and clang) may not reorder their loads past the stores. Shapes reach
 * each schedule: short and long rows, wide rows, row tiles, and outputs
 * large enough for streaming stores. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dropnorm/dropnorm.h"
#include "half.h"
#include "check.h"

#define T float
#define P float
#define TV(v) ((float)(v))
#define FN(name) name##_f32
#include "test_inplace_impl.h"
#undef T
#undef P
#undef TV
#undef FN

#define T double
#define P double
#define TV(v) ((double)(v))
#define FN(name) name##_f64
#include "test_inplace_impl.h"
#undef T
#undef P
#undef TV
#undef FN

#define T uint16_t
#define P float
#define TV(v) dn_f32_to_f16((float)(v))
#define FN(name) name##_f16
#include "test_inplace_impl.h"
#undef TV
#undef FN

#define TV(v) dn_f32_to_bf16((float)(v))
#define FN(name) name##_bf16
#include "test_inplace_impl.h"
#undef T
#undef P
#undef TV
#undef FN

int main(void)
{
    static const int64_t shapes[][3] = {
        {2, 3, 5}, {16, 512, 49}, {3, 5, 1023}, {40, 17, 9}, {128, 300, 1},
        {2, 700, 33}, {1, 7, 70001}, {8, 64, 96 * 96}, /* 18.9 MB in float: streaming */
    };
    dn_set_num_threads(2);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        check_inplace_f32(shapes[i][0], shapes[i][1], shapes[i][2]);
        check_inplace_f64(shapes[i][0], shapes[i][1], shapes[i][2]);
        check_inplace_f16(shapes[i][0], shapes[i][1], shapes[i][2]);
        check_inplace_bf16(shapes[i][0], shapes[i][1], shapes[i][2]);
    }
    return check_report("test_inplace");
}
