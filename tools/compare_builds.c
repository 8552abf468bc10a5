/* Compares two builds of the library on one batch-norm pass and shape, in
 * one process: both loaded with dlopen, their calls alternated in rounds
 * (ABBA: neither build always goes first), on the same buffers. This
 * machine's speed moves by tens of percent from minute to minute, so two
 * programs run one after the other compare two moments; a ratio per round,
 * then their median, compares the builds.
 *
 * Each build must be a shared library with its own soname (the dynamic
 * loader hands back the first one for a second of the same soname), e.g.
 * from two build trees' static libraries:
 *   cc -shared -o before.so -Wl,-soname,before.so \
 *      -Wl,--whole-archive old/libdropnorm.a -Wl,--no-whole-archive -fopenmp -lm
 *   OMP_NUM_THREADS=2 build/compare_builds ./before.so ./after.so 16 64 56 56 nhwc backward
 * Pass: train, infer or backward; an optional last argument is the number
 * of rounds (30). */
#include "timing.h"

#include <dlfcn.h>

#define CALLS 7 /* per build and round; the first two warm up */

typedef dn_status (*train_fn)(int64_t, int64_t, int64_t, dn_layout, const float *,
                              const float *, const float *, double, double, float *, float *,
                              float *, float *, float *);
typedef dn_status (*infer_fn)(int64_t, int64_t, int64_t, dn_layout, const float *,
                              const float *, const float *, const float *, const float *,
                              double, float *);
typedef dn_status (*backward_fn)(int64_t, int64_t, int64_t, dn_layout, const float *,
                                 const float *, const float *, const float *, const float *,
                                 float *, float *, float *);

typedef struct build {
    void *handle;
    train_fn train;
    infer_fn infer;
    backward_fn backward;
} build;

/* dlsym's object pointer as a function pointer (POSIX guarantees the
 * conversion; memcpy keeps -Wpedantic quiet about it) */
static void *symbol(void *handle, const char *name)
{
    void *p = dlsym(handle, name);
    if (p == NULL) {
        fprintf(stderr, "%s: %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

static void load(build *b, const char *path)
{
    void *p;
    b->handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (b->handle == NULL) {
        fprintf(stderr, "%s\n", dlerror());
        exit(1);
    }
    p = symbol(b->handle, "dn_batchnorm_forward_train_f32");
    memcpy(&b->train, &p, sizeof p);
    p = symbol(b->handle, "dn_batchnorm_forward_infer_f32");
    memcpy(&b->infer, &p, sizeof p);
    p = symbol(b->handle, "dn_batchnorm_backward_f32");
    memcpy(&b->backward, &p, sizeof p);
}

int main(int argc, char **argv)
{
    int64_t n, c, s;
    dn_layout layout;
    bn_buffers buf;
    build builds[2];
    float *rmean, *rvar;
    double *t[2], *ratio, mid;
    int pass, rounds;
    if (argc < 8 || !shape_args(argc - 2, argv + 2, &n, &c, &s, &layout)) {
        fprintf(stderr, "usage: %s A.so B.so N C H W nchw|nhwc train|infer|backward [rounds]\n",
                argv[0]);
        return 2;
    }
    pass = argv[8][0]; /* 't', 'i' or 'b' */
    rounds = argc > 9 ? atoi(argv[9]) : 30;
    if ((pass != 't' && pass != 'i' && pass != 'b') || rounds < 1) return 2;
    load(&builds[0], argv[1]);
    load(&builds[1], argv[2]);
    if (builds[0].handle == builds[1].handle) {
        fprintf(stderr, "both paths load the same library (the same soname?)\n");
        return 1;
    }
    bn_buffers_make(&buf, n * c * s, c);
    rmean = floats(c);
    rvar = floats(c);
    ones_and_zeros(rvar, rmean, c);
    t[0] = allocated(sizeof(double) * (size_t)rounds * (CALLS - 2));
    t[1] = allocated(sizeof(double) * (size_t)rounds * (CALLS - 2));
    ratio = allocated(sizeof(double) * (size_t)rounds);
    /* the backward's statistics */
    builds[0].train(n, c, s, layout, buf.x, buf.gamma, buf.beta, 1e-5, 0.1, NULL, NULL, buf.y,
                    buf.mean, buf.invstd);
    for (int r = 0; r < rounds; r++) {
        double med[2];
        for (int k = 0; k < 2; k++) {
            const build *b = &builds[(r & 1) ? 1 - k : k];
            double *times = t[b == &builds[1]] + r * (CALLS - 2);
            for (int q = 0; q < CALLS; q++) {
                const double t0 = now();
                if (pass == 't')
                    b->train(n, c, s, layout, buf.x, buf.gamma, buf.beta, 1e-5, 0.1, NULL, NULL,
                             buf.y, buf.mean, buf.invstd);
                else if (pass == 'i')
                    b->infer(n, c, s, layout, buf.x, rmean, rvar, buf.gamma, buf.beta, 1e-5,
                             buf.y);
                else
                    b->backward(n, c, s, layout, buf.dy, buf.x, buf.mean, buf.invstd, buf.gamma,
                                buf.dx, buf.dgamma, buf.dbeta);
                if (q >= 2) times[q - 2] = now() - t0;
            }
        }
        for (int k = 0; k < 2; k++) {
            double round_times[CALLS - 2];
            memcpy(round_times, t[k] + r * (CALLS - 2), sizeof round_times);
            med[k] = median(round_times, CALLS - 2);
        }
        ratio[r] = med[1] / med[0];
    }
    mid = median(ratio, rounds); /* sorts ratio: its quartiles next */
    print_shape(layout, argv + 2);
    printf(" %s: A %.3f ms, B %.3f ms, B/A per round: median %.3f (quartiles %.3f - %.3f)\n",
           argv[8], median(t[0], rounds * (CALLS - 2)) * 1e3,
           median(t[1], rounds * (CALLS - 2)) * 1e3, mid, ratio[rounds / 4],
           ratio[(3 * rounds) / 4]);
    return 0;
}
