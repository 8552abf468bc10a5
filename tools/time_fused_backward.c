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
    bn_buffers b;
    float *r;
    uint8_t *mask;
    double t[3][REPEATS], plain, y_gate, mask_gate;
    if (!shape_args(argc, argv, &n, &c, &s, &layout)) return 2;
    total = n * c * s;
    bn_buffers_make(&b, total, c);
    r = floats(total); /* the shortcut */
    mask = malloc((size_t)(total + 7) / 8);
    if (!mask) return 1;
    for (int64_t i = 0; i < total; i++) r[i] = b.x[(i * 3) % total];
    /* the block's forward: y and the gradient mask for the backward */
    if (dn_batchnorm_forward_train_fused_f32(n, c, s, layout, b.x, r, b.gamma, b.beta, 1e-5, 0.1,
                                             NULL, NULL, DN_ACTIVATION_RELU, P_DROP, 1, 2, b.y,
                                             b.mean, b.invstd, mask) != DN_OK)
        return 1;
    for (int k = 0; k < REPEATS; k++) {
        double t0 = now();
        dn_batchnorm_backward_f32(n, c, s, layout, b.dy, b.x, b.mean, b.invstd, b.gamma, b.dx,
                                  b.dgamma, b.dbeta);
        t[0][k] = now() - t0;
        t0 = now();
        dn_batchnorm_backward_fused_f32(n, c, s, layout, b.dy, b.x, b.y, NULL, b.mean, b.invstd,
                                        b.gamma, DN_ACTIVATION_RELU, P_DROP, 1, 2, b.dx, b.dgamma,
                                        b.dbeta, NULL);
        t[1][k] = now() - t0;
        t0 = now();
        dn_batchnorm_backward_fused_f32(n, c, s, layout, b.dy, b.x, NULL, mask, b.mean, b.invstd,
                                        b.gamma, DN_ACTIVATION_RELU, P_DROP, 1, 2, b.dx, b.dgamma,
                                        b.dbeta, NULL);
        t[2][k] = now() - t0;
    }
    plain = median(t[0], REPEATS);
    y_gate = median(t[1], REPEATS);
    mask_gate = median(t[2], REPEATS);
    print_shape(layout, argv);
    printf(" plain %.3f ms | gate from y %.3f ms (%.2fx) | kept mask %.3f ms (%.2fx)\n",
           plain * 1e3, y_gate * 1e3, y_gate / plain, mask_gate * 1e3, mask_gate / plain);
    return 0;
}
