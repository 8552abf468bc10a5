/* Times dropnorm's batch-norm training forward, inference and backward on
 * one shape from C, outputs preallocated, exactly the way
 * ../shared/anchors/onednn_bn.c times oneDNN's: each pass on its own, two
 * calls to warm up, then the median of REPEATS calls on the same buffers.
 * (Timing the three passes in turn instead leaves each one the caches the
 * other two left, which oneDNN's timer does not.) For the README's
 * comparison:
 *   cmake -S . -B build -DDROPNORM_PYTHON=OFF && cmake --build build --target time_batchnorm
 *   OMP_NUM_THREADS=2 build/time_batchnorm 16 64 56 56 nhwc */
#include "timing.h"

#define WARMUP 2
#define REPEATS 15

enum { TRAIN, INFER, BACKWARD, PASSES };

static void run_pass(int pass, int64_t n, int64_t c, int64_t s, dn_layout layout,
                     const bn_buffers *b, const float *rmean, const float *rvar)
{
    switch (pass) {
    case TRAIN:
        dn_batchnorm_forward_train_f32(n, c, s, layout, b->x, b->gamma, b->beta, 1e-5, 0.1, NULL,
                                       NULL, b->y, b->mean, b->invstd);
        break;
    case INFER:
        dn_batchnorm_forward_infer_f32(n, c, s, layout, b->x, rmean, rvar, b->gamma, b->beta,
                                       1e-5, b->y);
        break;
    default:
        dn_batchnorm_backward_f32(n, c, s, layout, b->dy, b->x, b->mean, b->invstd, b->gamma,
                                  b->dx, b->dgamma, b->dbeta);
    }
}

int main(int argc, char **argv)
{
    int64_t n, c, s;
    dn_layout layout;
    bn_buffers b;
    float *rmean, *rvar;
    double t[PASSES][REPEATS];
    if (!shape_args(argc, argv, &n, &c, &s, &layout)) return 2;
    bn_buffers_make(&b, n * c * s, c);
    rmean = floats(c);
    rvar = floats(c);
    ones_and_zeros(rvar, rmean, c); /* running variance 1, mean 0 */
    /* in this order, so that the backward has the training's statistics */
    for (int pass = 0; pass < PASSES; pass++) {
        for (int r = 0; r < WARMUP; r++) run_pass(pass, n, c, s, layout, &b, rmean, rvar);
        for (int r = 0; r < REPEATS; r++) {
            const double t0 = now();
            run_pass(pass, n, c, s, layout, &b, rmean, rvar);
            t[pass][r] = now() - t0;
        }
    }
    print_shape(layout, argv);
    printf(" bn_train %.3f ms | bn_infer %.3f ms | bn_bwd %.3f ms\n",
           median(t[TRAIN], REPEATS) * 1e3, median(t[INFER], REPEATS) * 1e3,
           median(t[BACKWARD], REPEATS) * 1e3);
    return 0;
}
