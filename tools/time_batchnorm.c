/* Times dropnorm's batch-norm training forward, inference and backward on
 * one shape from C, outputs preallocated, the way
 * ../shared/anchors/onednn_bn.c times oneDNN's (the median of repeated
 * calls on the same buffers), for the README's comparison:
 *   cmake -S . -B build -DDROPNORM_PYTHON=OFF && cmake --build build --target time_batchnorm
 *   OMP_NUM_THREADS=2 build/time_batchnorm 16 64 56 56 nhwc */
#include "timing.h"

#define REPEATS 31

int main(int argc, char **argv)
{
    int64_t n, c, s;
    dn_layout layout;
    bn_buffers b;
    float *rmean, *rvar;
    double t[3][REPEATS];
    if (!shape_args(argc, argv, &n, &c, &s, &layout)) return 2;
    bn_buffers_make(&b, n * c * s, c);
    rmean = floats(c);
    rvar = floats(c);
    ones_and_zeros(rvar, rmean, c); /* running variance 1, mean 0 */
    for (int r = 0; r < REPEATS; r++) {
        const double t0 = now();
        dn_batchnorm_forward_train_f32(n, c, s, layout, b.x, b.gamma, b.beta, 1e-5, 0.1, NULL,
                                       NULL, b.y, b.mean, b.invstd);
        const double t1 = now();
        dn_batchnorm_forward_infer_f32(n, c, s, layout, b.x, rmean, rvar, b.gamma, b.beta, 1e-5,
                                       b.y);
        const double t2 = now();
        dn_batchnorm_backward_f32(n, c, s, layout, b.dy, b.x, b.mean, b.invstd, b.gamma, b.dx,
                                  b.dgamma, b.dbeta);
        t[0][r] = t1 - t0;
        t[1][r] = t2 - t1;
        t[2][r] = now() - t2;
    }
    print_shape(layout, argv);
    printf(" bn_train %.3f ms | bn_infer %.3f ms | bn_bwd %.3f ms\n", median(t[0], REPEATS) * 1e3,
           median(t[1], REPEATS) * 1e3, median(t[2], REPEATS) * 1e3);
    return 0;
}
