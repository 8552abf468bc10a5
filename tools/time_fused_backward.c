/* Times dropnorm's fused backward (batch norm + ReLU + dropout 0.1) against
 * the plain backward on one float32 shape from C, outputs preallocated,
 * each call timed in turn with the plain one (medians of repeated calls):
 * the README's figures for the fused backward from y and from the kept
 * mask, paired in one process.
 *   cmake -S . -B build -DDROPNORM_PYTHON=OFF && cmake --build build --target time_fused_backward
 *   OMP_NUM_THREADS=2 build/time_fused_backward 64 64 56 56 nhwc */
#include "timing.h"

#define REPEATS 21
#define P_DROP 0.1

int main(int argc, char **argv)
{
    int64_t n, c, s, total;
    dn_layout layout;
    float *x, *r, *y, *dy, *dx, *gamma, *beta, *mean, *invstd, *dgamma, *dbeta;
    uint8_t *mask;
    double t[3][REPEATS], plain, y_gate, mask_gate;
    if (!shape_args(argc, argv, &n, &c, &s, &layout)) return 2;
    total = n * c * s;
    x = malloc(sizeof(float) * (size_t)total);
    r = malloc(sizeof(float) * (size_t)total);
    y = malloc(sizeof(float) * (size_t)total);
    dy = malloc(sizeof(float) * (size_t)total);
    dx = malloc(sizeof(float) * (size_t)total);
    mask = malloc((size_t)(total + 7) / 8);
    gamma = malloc(sizeof(float) * (size_t)c);
    beta = malloc(sizeof(float) * (size_t)c);
    mean = malloc(sizeof(float) * (size_t)c);
    invstd = malloc(sizeof(float) * (size_t)c);
    dgamma = malloc(sizeof(float) * (size_t)c);
    dbeta = malloc(sizeof(float) * (size_t)c);
    if (!x || !r || !y || !dy || !dx || !mask || !gamma || !beta || !mean || !invstd || !dgamma
        || !dbeta)
        return 1;
    fill_values(x, total);
    for (int64_t i = 0; i < total; i++) {
        r[i] = x[(i * 3) % total];
        dy[i] = x[(i * 7) % total];
    }
    for (int64_t i = 0; i < c; i++) {
        gamma[i] = 1.f;
        beta[i] = 0.f;
    }
    /* the block's forward: y and the gradient mask for the backward */
    if (dn_batchnorm_forward_train_fused_f32(n, c, s, layout, x, r, gamma, beta, 1e-5, 0.1, NULL,
                                             NULL, DN_ACTIVATION_RELU, P_DROP, 1, 2, y, mean,
                                             invstd, mask) != DN_OK)
        return 1;
    for (int k = 0; k < REPEATS; k++) {
        double t0 = now();
        dn_batchnorm_backward_f32(n, c, s, layout, dy, x, mean, invstd, gamma, dx, dgamma, dbeta);
        t[0][k] = now() - t0;
        t0 = now();
        dn_batchnorm_backward_fused_f32(n, c, s, layout, dy, x, y, NULL, mean, invstd, gamma,
                                        DN_ACTIVATION_RELU, P_DROP, 1, 2, dx, dgamma, dbeta, NULL);
        t[1][k] = now() - t0;
        t0 = now();
        dn_batchnorm_backward_fused_f32(n, c, s, layout, dy, x, NULL, mask, mean, invstd, gamma,
                                        DN_ACTIVATION_RELU, P_DROP, 1, 2, dx, dgamma, dbeta, NULL);
        t[2][k] = now() - t0;
    }
    plain = median(t[0], REPEATS);
    y_gate = median(t[1], REPEATS);
    mask_gate = median(t[2], REPEATS);
    printf("dropnorm %s %sx%sx%sx%s plain %.3f ms | gate from y %.3f ms (%.2fx) | "
           "kept mask %.3f ms (%.2fx)\n",
           layout == DN_LAYOUT_NSC ? "nhwc" : "nchw", argv[1], argv[2], argv[3], argv[4],
           plain * 1e3, y_gate * 1e3, y_gate / plain, mask_gate * 1e3, mask_gate / plain);
    return 0;
}
