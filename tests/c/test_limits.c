/* Extents that pass the size check (n*c*s elements fit the address space)
 * but whose workspace does not: every batch-norm function returns
 * DN_ERR_SIZE_OVERFLOW (the byte count overflows size_t) or
 * DN_ERR_OUT_OF_MEMORY (it fits but cannot be had), and writes nothing.
 * The first two calls are the ones that used to wrap the workspace size to
 * a small allocation and crash. */
#include <string.h>

#include "dropnorm/dropnorm.h"
#include "check.h"

static int refused(dn_status st)
{
    return st == DN_ERR_SIZE_OVERFLOW || st == DN_ERR_OUT_OF_MEMORY;
}

int main(void)
{
    /* each extent triple: n*c*s*8 fits a ptrdiff_t, the workspace does not */
    static const int64_t shapes[][3] = {
        {2, 256204778801521549LL, 1},  /* forward_train: used to crash */
        {2, 192153584101141162LL, 1},  /* backward: used to crash */
        {2, (int64_t)1 << 58, 1},
        {3, (int64_t)1 << 58, 1},
        {2, (int64_t)1 << 45, 2},
        {1, (int64_t)1 << 46, 2},
        {16, (int64_t)1 << 44, 1},
    };
    float f[8] = {1, 2, 3, 4, 5, 6, 7, 8}, keep[8];
    double d[8] = {1, 2, 3, 4, 5, 6, 7, 8}, keepd[8];
    int cases = 0;
    dn_set_num_threads(2);
    memcpy(keep, f, sizeof f);
    memcpy(keepd, d, sizeof d);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int layout = 0; layout < 2; layout++) {
            const int64_t n = shapes[i][0], c = shapes[i][1], s = shapes[i][2];
            const dn_layout lay = (dn_layout)layout;
            CHECK(refused(dn_batchnorm_forward_train_f32(n, c, s, lay, f, NULL, NULL, 1e-5, 0.1,
                                                         NULL, NULL, f, NULL, NULL)));
            CHECK(refused(dn_batchnorm_forward_train_f64(n, c, s, lay, d, NULL, NULL, 1e-5, 0.1,
                                                         NULL, NULL, d, NULL, NULL)));
            CHECK(refused(dn_batchnorm_forward_infer_f32(n, c, s, lay, f, f, f, NULL, NULL, 1e-5,
                                                         f)));
            CHECK(refused(dn_batchnorm_forward_infer_f64(n, c, s, lay, d, d, d, NULL, NULL, 1e-5,
                                                         d)));
            CHECK(refused(dn_batchnorm_backward_f32(n, c, s, lay, f, f, f, f, NULL, f, NULL,
                                                    NULL)));
            CHECK(refused(dn_batchnorm_backward_f64(n, c, s, lay, d, d, d, d, NULL, d, NULL,
                                                    NULL)));
            CHECK(refused(dn_batchnorm_backward_infer_f32(n, c, s, lay, f, f, f, f, NULL, 1e-5,
                                                          f, f, f)));
            CHECK(refused(dn_batchnorm_backward_infer_f64(n, c, s, lay, d, d, d, d, NULL, 1e-5,
                                                          d, d, d)));
            CHECK(refused(dn_batchnorm_backward_infer_f32(n, c, s, lay, f, NULL, f, f, NULL, 1e-5,
                                                          f, NULL, NULL)));
            cases += 9;
        }
    CHECK(memcmp(keep, f, sizeof f) == 0);
    CHECK(memcmp(keepd, d, sizeof d) == 0);
    printf("test_limits: %d refused calls\n", cases);
    return check_report("test_limits");
}
