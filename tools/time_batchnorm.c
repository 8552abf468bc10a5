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
    int64_t n, c, s, total;
    dn_layout layout;
    float *x, *y, *dy, *dx, *gamma, *beta, *mean, *invstd, *dgamma, *dbeta, *rmean, *rvar;
    double t[3][REPEATS];
    if (!shape_args(argc, argv, &n, &c, &s, &layout)) return 2;
    total = n * c * s;
    x = malloc(sizeof(float) * (size_t)total);
    y = malloc(sizeof(float) * (size_t)total);
    dy = malloc(sizeof(float) * (size_t)total);
    dx = malloc(sizeof(float) * (size_t)total);
    gamma = malloc(sizeof(float) * (size_t)c);
    beta = malloc(sizeof(float) * (size_t)c);
    mean = malloc(sizeof(float) * (size_t)c);
    invstd = malloc(sizeof(float) * (size_t)c);
    dgamma = malloc(sizeof(float) * (size_t)c);
    dbeta = malloc(sizeof(float) * (size_t)c);
    rmean = malloc(sizeof(float) * (size_t)c);
    rvar = malloc(sizeof(float) * (size_t)c);
    if (!x || !y || !dy || !dx || !gamma || !beta || !mean || !invstd || !dgamma || !dbeta
        || !rmean || !rvar)
        return 1;
    fill_values(x, total);
    for (int64_t i = 0; i < total; i++) dy[i] = x[(i * 7) % total];
    for (int64_t i = 0; i < c; i++) {
        gamma[i] = 1.f;
        beta[i] = 0.f;
        rmean[i] = 0.f;
        rvar[i] = 1.f;
    }
    for (int r = 0; r < REPEATS; r++) {
        const double t0 = now();
        dn_batchnorm_forward_train_f32(n, c, s, layout, x, gamma, beta, 1e-5, 0.1, NULL, NULL, y,
                                       mean, invstd);
        const double t1 = now();
        dn_batchnorm_forward_infer_f32(n, c, s, layout, x, rmean, rvar, gamma, beta, 1e-5, y);
        const double t2 = now();
        dn_batchnorm_backward_f32(n, c, s, layout, dy, x, mean, invstd, gamma, dx, dgamma, dbeta);
        t[0][r] = t1 - t0;
        t[1][r] = t2 - t1;
        t[2][r] = now() - t2;
    }
    printf("dropnorm %s %sx%sx%sx%s bn_train %.3f ms | bn_infer %.3f ms | bn_bwd %.3f ms\n",
           layout == DN_LAYOUT_NSC ? "nhwc" : "nchw", argv[1], argv[2], argv[3], argv[4],
           median(t[0], REPEATS) * 1e3, median(t[1], REPEATS) * 1e3,
           median(t[2], REPEATS) * 1e3);
    return 0;
}
