/* Times dropnorm's batch-norm training forward, inference and backward on
 * one shape from C, outputs preallocated, the way
 * ../shared/anchors/onednn_bn.c times oneDNN's (the median of repeated
 * calls on the same buffers), for the README's comparison:
 *   cmake -S . -B build -DDROPNORM_PYTHON=OFF && cmake --build build --target time_batchnorm
 *   OMP_NUM_THREADS=2 build/time_batchnorm 16 64 56 56 nhwc */
#if !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif
#include <dropnorm/dropnorm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REPEATS 31

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int64_t n, c, s, total;
    dn_layout layout;
    float *x, *y, *dy, *dx, *gamma, *beta, *mean, *invstd, *dgamma, *dbeta, *rmean, *rvar;
    double t[3][REPEATS];
    if (argc < 5) {
        fprintf(stderr, "usage: %s N C H W [nchw|nhwc]\n", argv[0]);
        return 2;
    }
    n = atoll(argv[1]);
    c = atoll(argv[2]);
    s = atoll(argv[3]) * atoll(argv[4]);
    layout = argc > 5 && strcmp(argv[5], "nhwc") == 0 ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
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
    /* the values onednn_bn.c fills its buffers with */
    for (int64_t i = 0; i < total; i++) {
        x[i] = (float)((uint64_t)i * 2654435761u % 1000) / 500.f - 1.f;
        dy[i] = x[(i * 7) % total];
    }
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
    for (int k = 0; k < 3; k++) qsort(t[k], REPEATS, sizeof(double), by_value);
    printf("dropnorm %s %sx%sx%sx%s bn_train %.3f ms | bn_infer %.3f ms | bn_bwd %.3f ms\n",
           layout == DN_LAYOUT_NSC ? "nhwc" : "nchw", argv[1], argv[2], argv[3], argv[4],
           t[0][REPEATS / 2] * 1e3, t[1][REPEATS / 2] * 1e3, t[2][REPEATS / 2] * 1e3);
    return 0;
}
