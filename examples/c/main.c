/* A small program on dropnorm's C API: batch norm forward and backward on a
 * (2, 3, 4) tensor, dropout with a seed, and what a failing call returns.
 *
 * It prints one line per result, "name: v0 v1 ...", with enough digits to
 * read the float32 values back exactly (tests/test_use_c.py compares them
 * with NumPy), and exits non-zero if a call that should work fails.
 *
 * Build it against an installed dropnorm with the CMakeLists.txt beside it,
 * with pkg-config, or with `python -m dropnorm --cflags --libs`
 * (README, "Use it from anywhere"). */
#include <dropnorm/dropnorm.h>

#include <stdio.h>

#define N 2
#define C 3
#define S 4
#define COUNT (N * C * S)
#define DROP 16

static void print_floats(const char *name, const float *v, int count)
{
    printf("%s:", name);
    for (int i = 0; i < count; i++) printf(" %.9g", (double)v[i]);
    printf("\n");
}

/* Any failing call: report it and stop. */
#define TRY(call)                                                              \
    do {                                                                       \
        dn_status st_ = (call);                                                \
        if (st_ != DN_OK) {                                                    \
            fprintf(stderr, "%s failed: %s\n", #call, dn_status_str(st_));     \
            return 1;                                                          \
        }                                                                      \
    } while (0)

int main(void)
{
    float x[COUNT], dy[COUNT], y[COUNT], dx[COUNT];
    float gamma[C] = {1.0f, 0.5f, 2.0f}, beta[C] = {0.0f, 1.0f, -1.0f};
    float mean[C], invstd[C], dgamma[C], dbeta[C];
    float running_mean[C] = {0.0f, 0.0f, 0.0f}, running_var[C] = {1.0f, 1.0f, 1.0f};
    float xd[DROP], yd[DROP];
    uint8_t mask[(DROP + 7) / 8];
    dn_status st;

    printf("dropnorm %s (header %s), OpenMP %s\n", dn_version(), DN_VERSION_STRING,
           dn_openmp_enabled() ? "on" : "off");

    /* x, channels first: element (n, c, s) at (n*C + c)*S + s */
    for (int i = 0; i < COUNT; i++) {
        x[i] = (float)((i * 37) % 11 - 5) * 0.5f;
        dy[i] = (float)((i * 13) % 7 - 3) * 0.25f;
    }

    /* Batch norm, training: y, the batch statistics, running statistics. */
    TRY(dn_batchnorm_forward_train_f32(N, C, S, DN_LAYOUT_NCS, x, gamma, beta, 1e-5, 0.1,
                                       running_mean, running_var, y, mean, invstd));
    print_floats("bn_y", y, COUNT);
    print_floats("bn_mean", mean, C);
    print_floats("bn_invstd", invstd, C);
    print_floats("bn_running_mean", running_mean, C);
    print_floats("bn_running_var", running_var, C);

    /* Backward through the training statistics. */
    TRY(dn_batchnorm_backward_f32(N, C, S, DN_LAYOUT_NCS, dy, x, mean, invstd, gamma,
                                  dx, dgamma, dbeta));
    print_floats("bn_dx", dx, COUNT);
    print_floats("bn_dgamma", dgamma, C);
    print_floats("bn_dbeta", dbeta, C);

    /* Dropout with a seed: the same mask for the same (seed, stream). */
    for (int i = 0; i < DROP; i++) xd[i] = (float)(i + 1);
    TRY(dn_dropout_forward_f32(DROP, 1, 1, DN_LAYOUT_NCS, 0, xd, 0.5, 42, 0,
                               DN_DROPOUT_INVERTED, 1, yd, mask));
    print_floats("dropout_y", yd, DROP);
    printf("dropout_mask: %u %u\n", (unsigned)mask[0], (unsigned)mask[1]);

    /* Status handling: a batch of one value per channel has no variance,
     * and p outside [0, 1] is refused. Nothing is written then. */
    st = dn_batchnorm_forward_train_f32(1, C, 1, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1,
                                        NULL, NULL, y, NULL, NULL);
    printf("status_batch_of_one: %d %s\n", (int)st, dn_status_str(st));
    st = dn_dropout_forward_f32(DROP, 1, 1, DN_LAYOUT_NCS, 0, xd, 1.5, 42, 0,
                                DN_DROPOUT_INVERTED, 1, yd, NULL);
    printf("status_bad_p: %d %s\n", (int)st, dn_status_str(st));
    if (st != DN_ERR_BAD_VALUE) return 1;
    return 0;
}
