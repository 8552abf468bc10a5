/* test_fused.c's checks for one element type: T (the tensors' type), P
 * (the per-channel arrays' type: T, or float for the half types), C (the
 * compute type), LD(v) / ST(v) (a tensor value to C and back, rounding
 * once), TV(v) (a double as a T), and FN(name) pasting its suffix. */

/* The fused forward and backward against the composition of the plain
 * functions (dn_batchnorm_forward_train_*, the add and the ReLU written
 * here, dn_dropout_forward_*; dn_dropout_backward_*, the ReLU's mask,
 * dn_batchnorm_backward_*), bit for bit, for every option in both layouts,
 * on one and two threads. */
static void FN(check_fused)(int64_t n, int64_t c, int64_t s)
{
    const int64_t total = n * c * s;
    const size_t bytes = sizeof(T) * (size_t)total, mbytes = (size_t)(total + 7) / 8;
    T *x = malloc(bytes), *r = malloc(bytes), *dy = malloc(bytes), *t = malloc(bytes);
    T *want = malloc(bytes), *got = malloc(bytes), *g = malloc(bytes);
    T *wdx = malloc(bytes), *gdx = malloc(bytes), *gdr = malloc(bytes), *y = malloc(bytes);
    P *gamma = malloc(sizeof(P) * (size_t)c), *beta = malloc(sizeof(P) * (size_t)c);
    P *mean = malloc(sizeof(P) * (size_t)c), *invstd = malloc(sizeof(P) * (size_t)c);
    P *m2 = malloc(sizeof(P) * (size_t)c), *i2 = malloc(sizeof(P) * (size_t)c);
    P *wdg = malloc(sizeof(P) * 2 * (size_t)c), *gdg = malloc(sizeof(P) * 2 * (size_t)c);
    uint8_t *mask = malloc(mbytes);
    static const double ps[] = {0.0, 0.3, 1.0};
    if (!(x && r && dy && t && want && got && g && wdx && gdx && gdr && y && gamma && beta
          && mean && invstd && m2 && i2 && wdg && gdg && mask)) {
        CHECK(0);
        return;
    }
    for (int64_t i = 0; i < total; i++) {
        x[i] = TV(uniform() * 3.0 + 0.5);
        r[i] = TV(uniform());
        dy[i] = TV(uniform());
    }
    for (int64_t ch = 0; ch < c; ch++) {
        gamma[ch] = (P)(1.0 + 0.5 * uniform());
        beta[ch] = (P)(0.3 * uniform());
    }
    for (int threads = 1; threads <= 2; threads++) {
        dn_set_num_threads(threads);
        for (int layout = 0; layout < 2; layout++)
            for (int res = 0; res < 2; res++)
                for (int relu = 0; relu < 2; relu++)
                    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
                        const dn_layout lay = (dn_layout)layout;
                        const dn_activation act = relu ? DN_ACTIVATION_RELU : DN_ACTIVATION_NONE;
                        const double p = ps[pi];
                        const uint64_t seed = 11, stream = 3;
                        /* the composition */
                        CHECK(FN(dn_batchnorm_forward_train)(n, c, s, lay, x, gamma, beta, 1e-5,
                                                             0.1, NULL, NULL, t, mean, invstd)
                              == DN_OK);
                        for (int64_t i = 0; i < total; i++) {
                            if (res) t[i] = ST(LD(t[i]) + LD(r[i]));
                            if (relu && LD(t[i]) <= (C)0) t[i] = TV(0.0);
                        }
                        CHECK(FN(dn_dropout_forward)(total, 1, 1, DN_LAYOUT_NCS, 0, t, p, seed,
                                                     stream, DN_DROPOUT_INVERTED, 1, want, NULL)
                              == DN_OK);
                        /* fused */
                        memset(got, 0xA5, bytes);
                        CHECK(FN(dn_batchnorm_forward_train_fused)(
                                  n, c, s, lay, x, res ? r : NULL, gamma, beta, 1e-5, 0.1, NULL,
                                  NULL, act, p, seed, stream, got, m2, i2, mask)
                              == DN_OK);
                        CHECK(memcmp(want, got, bytes) == 0);
                        CHECK(memcmp(mean, m2, sizeof(P) * (size_t)c) == 0);
                        CHECK(memcmp(invstd, i2, sizeof(P) * (size_t)c) == 0);
                        memcpy(y, got, bytes);
                        /* the backward's composition: dropout's backward, the ReLU's mask */
                        CHECK(FN(dn_dropout_backward)(total, 1, 1, DN_LAYOUT_NCS, 0, dy, p, seed,
                                                      stream, DN_DROPOUT_INVERTED, NULL, g)
                              == DN_OK);
                        if (relu) {
                            /* t > 0 before the ReLU: recomputed */
                            CHECK(FN(dn_batchnorm_forward_train)(n, c, s, lay, x, gamma, beta,
                                                                 1e-5, 0.1, NULL, NULL, t, NULL,
                                                                 NULL) == DN_OK);
                            for (int64_t i = 0; i < total; i++) {
                                const C ti = res ? LD(ST(LD(t[i]) + LD(r[i]))) : LD(t[i]);
                                if (!(ti > (C)0)) g[i] = TV(0.0);
                            }
                        }
                        CHECK(FN(dn_batchnorm_backward)(n, c, s, lay, g, x, mean, invstd, gamma,
                                                        wdx, wdg, wdg + c) == DN_OK);
                        for (int src = 0; src < 3; src++) {
                            /* 0: y (relu) or Philox; 1: the mask; 2: dx == dy in place */
                            const T *yy = relu ? y : NULL;
                            T *dxo = gdx;
                            if (src == 2) {
                                memcpy(gdx, dy, bytes);
                                dxo = gdx;
                            }
                            memset(gdr, 0x5A, bytes);
                            CHECK(FN(dn_batchnorm_backward_fused)(
                                      n, c, s, lay, src == 2 ? gdx : dy, x, yy,
                                      src == 1 ? mask : NULL, mean, invstd, gamma, act, p, seed,
                                      stream, dxo, gdg, gdg + c, res ? gdr : NULL) == DN_OK);
                            CHECK(memcmp(wdx, gdx, bytes) == 0);
                            CHECK(memcmp(wdg, gdg, sizeof(P) * 2 * (size_t)c) == 0);
                            if (res) CHECK(memcmp(g, gdr, bytes) == 0);
                        }
                        /* inference: the plain inference, the add, the ReLU */
                        CHECK(FN(dn_batchnorm_forward_infer)(n, c, s, lay, x, mean, invstd, gamma,
                                                             beta, 1e-5, want) == DN_OK);
                        for (int64_t i = 0; i < total; i++) {
                            if (res) want[i] = ST(LD(want[i]) + LD(r[i]));
                            if (relu && LD(want[i]) <= (C)0) want[i] = TV(0.0);
                        }
                        CHECK(FN(dn_batchnorm_forward_infer_fused)(n, c, s, lay, x,
                                                                   res ? r : NULL, mean, invstd,
                                                                   gamma, beta, 1e-5, act, got)
                              == DN_OK);
                        CHECK(memcmp(want, got, bytes) == 0);
                    }
    }
    /* statuses: nothing written on error */
    memset(got, 0x33, bytes);
    memcpy(want, got, bytes);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, c, s, DN_LAYOUT_NCS, x, r, gamma, beta, 1e-5,
                                               0.1, NULL, NULL, (dn_activation)2, 0.0, 0, 0, got,
                                               NULL, NULL, NULL) == DN_ERR_BAD_MODE);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, c, s, DN_LAYOUT_NCS, x, r, gamma, beta, 1e-5,
                                               0.1, NULL, NULL, DN_ACTIVATION_RELU, 1.5, 0, 0,
                                               got, NULL, NULL, NULL) == DN_ERR_BAD_VALUE);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, c, s, DN_LAYOUT_NCS, x, r, gamma, beta, 1e-5,
                                               0.1, NULL, NULL, DN_ACTIVATION_RELU, NAN, 0, 0,
                                               got, NULL, NULL, NULL) == DN_ERR_BAD_VALUE);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, c, s, DN_LAYOUT_NCS, x, r, gamma, beta, 1e-5,
                                               0.1, NULL, NULL, DN_ACTIVATION_RELU, -0.1, 0, 0,
                                               got, NULL, NULL, NULL) == DN_ERR_BAD_VALUE);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, c, s, DN_LAYOUT_NCS, NULL, r, gamma, beta,
                                               1e-5, 0.1, NULL, NULL, DN_ACTIVATION_RELU, 0.0, 0,
                                               0, got, NULL, NULL, NULL) == DN_ERR_NULL_POINTER);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, c, s, (dn_layout)7, x, r, gamma, beta, 1e-5,
                                               0.1, NULL, NULL, DN_ACTIVATION_RELU, 0.0, 0, 0,
                                               got, NULL, NULL, NULL) == DN_ERR_BAD_LAYOUT);
    CHECK(FN(dn_batchnorm_forward_train_fused)(n, 0, s, DN_LAYOUT_NCS, x, r, gamma, beta, 1e-5,
                                               0.1, NULL, NULL, DN_ACTIVATION_RELU, 0.0, 0, 0,
                                               got, NULL, NULL, NULL) == DN_ERR_BAD_SHAPE);
    CHECK(FN(dn_batchnorm_forward_infer_fused)(n, c, s, DN_LAYOUT_NCS, x, r, mean, invstd, gamma,
                                               beta, 1e-5, (dn_activation)-1, got)
          == DN_ERR_BAD_MODE);
    CHECK(FN(dn_batchnorm_forward_infer_fused)(n, c, s, DN_LAYOUT_NCS, x, r, NULL, invstd, gamma,
                                               beta, 1e-5, DN_ACTIVATION_RELU, got)
          == DN_ERR_NULL_POINTER);
    CHECK(FN(dn_batchnorm_backward_fused)(n, c, s, DN_LAYOUT_NCS, dy, x, NULL, NULL, mean, invstd,
                                          gamma, DN_ACTIVATION_RELU, 0.0, 0, 0, got, NULL, NULL,
                                          NULL) == DN_ERR_NULL_POINTER);
    CHECK(FN(dn_batchnorm_backward_fused)(n, c, s, DN_LAYOUT_NCS, dy, x, y, NULL, mean, invstd,
                                          gamma, (dn_activation)5, 0.0, 0, 0, got, NULL, NULL,
                                          NULL) == DN_ERR_BAD_MODE);
    CHECK(FN(dn_batchnorm_backward_fused)(n, c, s, DN_LAYOUT_NCS, dy, x, y, NULL, mean, invstd,
                                          gamma, DN_ACTIVATION_RELU, 2.0, 0, 0, got, NULL, NULL,
                                          NULL) == DN_ERR_BAD_VALUE);
    CHECK(FN(dn_batchnorm_backward_fused)(n, c, s, DN_LAYOUT_NCS, dy, x, y, NULL, NULL, invstd,
                                          gamma, DN_ACTIVATION_RELU, 0.0, 0, 0, got, NULL, NULL,
                                          NULL) == DN_ERR_NULL_POINTER);
    CHECK(FN(dn_batchnorm_backward_fused)(n, c, s, DN_LAYOUT_NCS, dy, x, y, NULL, mean, invstd,
                                          gamma, DN_ACTIVATION_RELU, 0.0, 0, 0, NULL, NULL, NULL,
                                          got) == DN_ERR_NULL_POINTER);
    CHECK(memcmp(want, got, bytes) == 0);
    free(x); free(r); free(dy); free(t); free(want); free(got); free(g);
    free(wdx); free(gdx); free(gdr); free(y); free(gamma); free(beta); free(mean);
    free(invstd); free(m2); free(i2); free(wdg); free(gdg); free(mask);
}
