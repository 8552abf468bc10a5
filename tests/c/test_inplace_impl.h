/* test_inplace.c's checks for one element type: T (the tensors' type), P
 * (the per-channel arrays' type: T, or float for the half types), TV(v)
 * (a double as a T), and FN(name) pasting its suffix (name##_f32). */

/* Every function that documents in-place use gives, in place, the bits it
 * gives out of place, for the shape (n, c, s) in both layouts. */
static void FN(check_inplace)(int64_t n, int64_t c, int64_t s)
{
    const int64_t total = n * c * s;
    T *x = malloc(sizeof(T) * (size_t)total), *dy = malloc(sizeof(T) * (size_t)total);
    T *want = malloc(sizeof(T) * (size_t)total), *got = malloc(sizeof(T) * (size_t)total);
    P *gamma = malloc(sizeof(P) * (size_t)c), *beta = malloc(sizeof(P) * (size_t)c);
    P *mean = malloc(sizeof(P) * (size_t)c), *invstd = malloc(sizeof(P) * (size_t)c);
    P *rv = malloc(sizeof(P) * (size_t)c);
    uint8_t *mask = malloc((size_t)(total + 7) / 8);
    const size_t bytes = sizeof(T) * (size_t)total;
    CHECK(x && dy && want && got && gamma && beta && mean && invstd && rv && mask);
    if (!(x && dy && want && got && gamma && beta && mean && invstd && rv && mask)) return;
    for (int64_t i = 0; i < total; i++) {
        x[i] = TV(100.0 + (double)((i * 7919) % 2003) * 0.01);
        dy[i] = TV((double)((i * 104729) % 1009) * 0.001 - 0.5);
    }
    for (int64_t ch = 0; ch < c; ch++) {
        gamma[ch] = (P)(1.0 + 0.01 * (double)ch);
        beta[ch] = (P)(0.1 * (double)(ch % 7));
        rv[ch] = (P)(1.0 + 0.5 * (double)(ch % 3));
    }
    for (int layout = 0; layout < 2; layout++) {
        const dn_layout lay = (dn_layout)layout;
        /* batch norm, training: y == x */
        CHECK(FN(dn_batchnorm_forward_train)(n, c, s, lay, x, gamma, beta, 1e-5, 0.1, NULL, NULL,
                                             want, mean, invstd) == DN_OK);
        memcpy(got, x, bytes);
        CHECK(FN(dn_batchnorm_forward_train)(n, c, s, lay, got, gamma, beta, 1e-5, 0.1, NULL,
                                             NULL, got, NULL, NULL) == DN_OK);
        CHECK(memcmp(want, got, bytes) == 0);
        /* inference: y == x */
        CHECK(FN(dn_batchnorm_forward_infer)(n, c, s, lay, x, mean, rv, gamma, beta, 1e-5, want)
              == DN_OK);
        memcpy(got, x, bytes);
        CHECK(FN(dn_batchnorm_forward_infer)(n, c, s, lay, got, mean, rv, gamma, beta, 1e-5, got)
              == DN_OK);
        CHECK(memcmp(want, got, bytes) == 0);
        /* backward: dx == dy, and dx == x */
        CHECK(FN(dn_batchnorm_backward)(n, c, s, lay, dy, x, mean, invstd, gamma, want, NULL,
                                        NULL) == DN_OK);
        memcpy(got, dy, bytes);
        CHECK(FN(dn_batchnorm_backward)(n, c, s, lay, got, x, mean, invstd, gamma, got, NULL,
                                        NULL) == DN_OK);
        CHECK(memcmp(want, got, bytes) == 0);
        memcpy(got, x, bytes);
        CHECK(FN(dn_batchnorm_backward)(n, c, s, lay, dy, got, mean, invstd, gamma, got, NULL,
                                        NULL) == DN_OK);
        CHECK(memcmp(want, got, bytes) == 0);
        /* backward through frozen statistics: dx == dy */
        CHECK(FN(dn_batchnorm_backward_infer)(n, c, s, lay, dy, x, mean, rv, gamma, 1e-5, want,
                                              NULL, NULL) == DN_OK);
        memcpy(got, dy, bytes);
        CHECK(FN(dn_batchnorm_backward_infer)(n, c, s, lay, got, x, mean, rv, gamma, 1e-5, got,
                                              NULL, NULL) == DN_OK);
        CHECK(memcmp(want, got, bytes) == 0);
        for (int channelwise = 0; channelwise < 2; channelwise++) {
            /* dropout forward, with a mask, backward: y == x, dx == dy */
            CHECK(FN(dn_dropout_forward)(n, c, s, lay, channelwise, x, 0.3, 11, 5,
                                         DN_DROPOUT_INVERTED, 1, want, mask) == DN_OK);
            memcpy(got, x, bytes);
            CHECK(FN(dn_dropout_forward)(n, c, s, lay, channelwise, got, 0.3, 11, 5,
                                         DN_DROPOUT_INVERTED, 1, got, NULL) == DN_OK);
            CHECK(memcmp(want, got, bytes) == 0);
            memcpy(got, x, bytes);
            CHECK(FN(dn_dropout_apply_mask)(n, c, s, lay, channelwise, got, mask, 0.3,
                                            DN_DROPOUT_INVERTED, got) == DN_OK);
            CHECK(memcmp(want, got, bytes) == 0);
            CHECK(FN(dn_dropout_backward)(n, c, s, lay, channelwise, dy, 0.3, 11, 5,
                                          DN_DROPOUT_CLASSIC, NULL, want) == DN_OK);
            memcpy(got, dy, bytes);
            CHECK(FN(dn_dropout_backward)(n, c, s, lay, channelwise, got, 0.3, 11, 5,
                                          DN_DROPOUT_CLASSIC, NULL, got) == DN_OK);
            CHECK(memcmp(want, got, bytes) == 0);
        }
    }
    free(x);
    free(dy);
    free(want);
    free(got);
    free(gamma);
    free(beta);
    free(mean);
    free(invstd);
    free(rv);
    free(mask);
}
