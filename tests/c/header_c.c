/* The public header on its own, compiled as strict C99 and C11 (ctest
 * header_c99, header_c11) and linked against the shared library. */
#include <dropnorm/dropnorm.h>
#include <dropnorm/dropnorm.h> /* include guards */

#include <stdio.h>
#include <string.h>

#if DN_EXPECT_C_STD == 99 && __STDC_VERSION__ != 199901L
#  error "expected to be compiled as C99"
#elif DN_EXPECT_C_STD == 11 && __STDC_VERSION__ != 201112L
#  error "expected to be compiled as C11"
#endif

int main(void)
{
    const float x[4] = {1.0f, 2.0f, 3.0f, 6.0f};
    float y[4], mean[1], invstd[1];
    dn_status st = dn_batchnorm_forward_train_f32(1, 1, 4, DN_LAYOUT_NCS, x, NULL, NULL, 0.0, 0.1,
                                                  NULL, NULL, y, mean, invstd);
    if (st != DN_OK || mean[0] != 3.0f) {
        fprintf(stderr, "batch norm: %s\n", dn_status_str(st));
        return 1;
    }
    if (strcmp(dn_version(), DN_VERSION_STRING) != 0 || dn_version_number() != DN_VERSION_NUMBER) {
        fprintf(stderr, "header %s, library %s\n", DN_VERSION_STRING, dn_version());
        return 1;
    }
    printf("header C%d: dropnorm %s, OK\n", DN_EXPECT_C_STD, dn_version());
    return 0;
}
