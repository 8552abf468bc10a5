/* Batch-norm C API: kernels against a naive double-precision reference in
 * both layouts and both types, and every error status. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dropnorm/dropnorm.h"
#include "check.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static double uniform(void) /* in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

static int64_t at(int nsc, int64_t C, int64_t S, int64_t n, int64_t c, int64_t s)
{
    return nsc ? (n * S + s) * C + c : (n * C + c) * S + s;
}

/* Naive reference: mean/var/y, and the backward, all in double. */
static void reference(int nsc, int64_t N, int64_t C, int64_t S, const double *x,
                      const double *dy, const double *gamma, const double *beta,
                      double eps, double *y, double *mean, double *var,
                      double *dx, double *dgamma, double *dbeta)
{
    const double M = (double)(N * S);
    for (int64_t c = 0; c < C; c++) {
        double sum = 0, q = 0, sdy = 0, sdyx = 0, istd;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) sum += x[at(nsc, C, S, n, c, s)];
        mean[c] = sum / M;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                const double d = x[at(nsc, C, S, n, c, s)] - mean[c];
                q += d * d;
            }
        var[c] = q / M;
        istd = 1.0 / sqrt(var[c] + eps);
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                const int64_t i = at(nsc, C, S, n, c, s);
                const double xh = (x[i] - mean[c]) * istd;
                y[i] = gamma[c] * xh + beta[c];
                sdy += dy[i];
                sdyx += dy[i] * xh;
            }
        dgamma[c] = sdyx;
        dbeta[c] = sdy;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                const int64_t i = at(nsc, C, S, n, c, s);
                const double xh = (x[i] - mean[c]) * istd;
                dx[i] = gamma[c] * istd / M * (M * dy[i] - sdy - xh * sdyx);
            }
    }
}

static double max_abs_diff_f(const float *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static double max_abs_diff_d(const double *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static void check_shape(int64_t N, int64_t C, int64_t S, int nsc)
{
    const int64_t T = N * C * S;
    const dn_layout L = nsc ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
    const double eps = 1e-5, mom = 0.1, M = (double)(N * S);
    double *x = malloc(sizeof(double) * T), *dy = malloc(sizeof(double) * T);
    double *y = malloc(sizeof(double) * T), *dx = malloc(sizeof(double) * T);
    double *yd = malloc(sizeof(double) * T), *dxd = malloc(sizeof(double) * T);
    float *xf = malloc(sizeof(float) * T), *dyf = malloc(sizeof(float) * T);
    float *yf = malloc(sizeof(float) * T), *dxf = malloc(sizeof(float) * T);
    double *g = malloc(sizeof(double) * C * 12);
    double *b = g + C, *mean = g + 2 * C, *var = g + 3 * C, *dg = g + 4 * C, *db = g + 5 * C;
    double *sm = g + 6 * C, *si = g + 7 * C, *rm = g + 8 * C, *rv = g + 9 * C;
    double *dgd = g + 10 * C, *dbd = g + 11 * C;
    float *gf = malloc(sizeof(float) * C * 8);
    float *bf = gf + C, *smf = gf + 2 * C, *sif = gf + 3 * C, *rmf = gf + 4 * C;
    float *rvf = gf + 5 * C, *dgf = gf + 6 * C, *dbf = gf + 7 * C;

    for (int64_t i = 0; i < T; i++) {
        xf[i] = (float)(3.0 * uniform() + 0.5);
        x[i] = xf[i];
        dyf[i] = (float)uniform();
        dy[i] = dyf[i];
    }
    for (int64_t c = 0; c < C; c++) {
        gf[c] = (float)(1.0 + 0.5 * uniform());
        bf[c] = (float)uniform();
        g[c] = gf[c];
        b[c] = bf[c];
    }
    reference(nsc, N, C, S, x, dy, g, b, eps, y, mean, var, dx, dg, db);

    /* f64 training forward with running statistics */
    for (int64_t c = 0; c < C; c++) { rm[c] = 0.5; rv[c] = 2.0; }
    CHECK(dn_batchnorm_forward_train_f64(N, C, S, L, x, g, b, eps, mom, rm, rv, yd, sm, si) == DN_OK);
    CHECK(max_abs_diff_d(yd, y, T) < 1e-12);
    for (int64_t c = 0; c < C; c++) {
        CHECK_CLOSE(sm[c], mean[c], 1e-13);
        CHECK_CLOSE(si[c], 1.0 / sqrt(var[c] + eps), 1e-12);
        CHECK_CLOSE(rm[c], 0.9 * 0.5 + 0.1 * mean[c], 1e-13);
        CHECK_CLOSE(rv[c], 0.9 * 2.0 + 0.1 * var[c] * M / (M - 1), 1e-13);
    }
    CHECK(dn_batchnorm_backward_f64(N, C, S, L, dy, x, sm, si, g, dxd, dgd, dbd) == DN_OK);
    CHECK(max_abs_diff_d(dxd, dx, T) < 1e-12);
    CHECK(max_abs_diff_d(dgd, dg, C) < 1e-9 * M);
    CHECK(max_abs_diff_d(dbd, db, C) < 1e-9 * M);

    /* f32: same data */
    for (int64_t c = 0; c < C; c++) { rmf[c] = 0.5f; rvf[c] = 2.0f; }
    CHECK(dn_batchnorm_forward_train_f32(N, C, S, L, xf, gf, bf, eps, mom, rmf, rvf, yf, smf, sif) == DN_OK);
    CHECK(max_abs_diff_f(yf, y, T) < 2e-6);
    CHECK(max_abs_diff_f(smf, mean, C) < 1e-6);
    CHECK(dn_batchnorm_backward_f32(N, C, S, L, dyf, xf, smf, sif, gf, dxf, dgf, dbf) == DN_OK);
    CHECK(max_abs_diff_f(dxf, dx, T) < 1e-5);
    CHECK(max_abs_diff_f(dgf, dg, C) < 1e-6 * M);
    CHECK(max_abs_diff_f(dbf, db, C) < 1e-6 * M);

    /* inference and its backward, from the running statistics just updated */
    CHECK(dn_batchnorm_forward_infer_f64(N, C, S, L, x, rm, rv, g, b, eps, yd) == DN_OK);
    CHECK(dn_batchnorm_backward_infer_f64(N, C, S, L, dy, x, rm, rv, g, eps, dxd, dgd, dbd) == DN_OK);
    {
        double err_y = 0, err_dx = 0, err_dg = 0;
        for (int64_t c = 0; c < C; c++) {
            const double a = g[c] / sqrt(rv[c] + eps);
            double sdyx = 0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t s = 0; s < S; s++) {
                    const int64_t i = at(nsc, C, S, n, c, s);
                    err_y = fmax(err_y, fabs(yd[i] - (a * (x[i] - rm[c]) + b[c])));
                    err_dx = fmax(err_dx, fabs(dxd[i] - a * dy[i]));
                    sdyx += dy[i] * (x[i] - rm[c]) / sqrt(rv[c] + eps);
                }
            err_dg = fmax(err_dg, fabs(dgd[c] - sdyx));
        }
        CHECK(err_y < 1e-12);
        CHECK(err_dx < 1e-14);
        CHECK(err_dg < 1e-9 * M);
        CHECK(max_abs_diff_d(dbd, db, C) < 1e-9 * M);
    }
    /* the terms of frozen statistics are per channel, in blocks: dx alone
     * (no dgamma, dbeta) is the dx of the full call, and no gamma and beta
     * are gamma 1 and beta 0 */
    {
        double *dx_only = malloc(sizeof(double) * T);
        float *ones = malloc(sizeof(float) * C * 2), *zeros = ones + C;
        for (int64_t c = 0; c < C; c++) { ones[c] = 1.f; zeros[c] = 0.f; }
        CHECK(dn_batchnorm_backward_infer_f64(N, C, S, L, dy, x, rm, rv, g, eps, dx_only, NULL, NULL) == DN_OK);
        CHECK(memcmp(dx_only, dxd, sizeof(double) * T) == 0);
        CHECK(dn_batchnorm_forward_infer_f32(N, C, S, L, xf, rmf, rvf, NULL, NULL, eps, yf) == DN_OK);
        CHECK(dn_batchnorm_forward_infer_f32(N, C, S, L, xf, rmf, rvf, ones, zeros, eps, dxf) == DN_OK);
        CHECK(memcmp(yf, dxf, sizeof(float) * T) == 0);
        CHECK(dn_batchnorm_backward_infer_f32(N, C, S, L, dyf, NULL, rmf, rvf, NULL, eps, yf, NULL, NULL) == DN_OK);
        CHECK(dn_batchnorm_backward_infer_f32(N, C, S, L, dyf, xf, rmf, rvf, ones, eps, dxf, dgf, dbf) == DN_OK);
        CHECK(memcmp(yf, dxf, sizeof(float) * T) == 0);
        free(dx_only);
        free(ones);
    }
    /* in place: y written over x gives the same as out of place; yf again */
    CHECK(dn_batchnorm_forward_train_f32(N, C, S, L, xf, gf, bf, eps, mom, NULL, NULL, yf, NULL, NULL) == DN_OK);
    memcpy(dxf, xf, sizeof(float) * T);
    CHECK(dn_batchnorm_forward_train_f32(N, C, S, L, dxf, gf, bf, eps, mom, NULL, NULL, dxf, NULL, NULL) == DN_OK);
    CHECK(memcmp(dxf, yf, sizeof(float) * T) == 0);

    free(x); free(dy); free(y); free(dx); free(yd); free(dxd);
    free(xf); free(dyf); free(yf); free(dxf); free(g); free(gf);
}

static void check_errors(void)
{
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, y[12], m[3], v[3];
    float rm[3] = {0, 0, 0}, rv[3] = {1, 1, 1};
    float sentinel[12];
    for (int i = 0; i < 12; i++) y[i] = sentinel[i] = -7.0f;
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, NULL, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, NULL, m, v) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_forward_train_f32(0, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_BAD_SHAPE);
    CHECK(dn_batchnorm_forward_train_f32(2, -3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_BAD_SHAPE);
    CHECK(dn_batchnorm_forward_train_f32(INT64_MAX / 2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_SIZE_OVERFLOW);
    CHECK(dn_batchnorm_forward_train_f32(((int64_t)1 << 40), ((int64_t)1 << 20), 4, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_SIZE_OVERFLOW);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, (dn_layout)7, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_BAD_LAYOUT);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, -1e-5, 0.1, NULL, NULL, y, m, v) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, NAN, 0.1, NULL, NULL, y, m, v) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, INFINITY, 0.1, NULL, NULL, y, m, v) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 1.5, rm, rv, y, m, v) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, NAN, rm, rv, y, m, v) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_forward_train_f32(1, 12, 1, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, rm, rv, y, m, v) == DN_ERR_BATCH_TOO_SMALL);
    CHECK(memcmp(y, sentinel, sizeof y) == 0);
    CHECK(rm[0] == 0 && rv[0] == 1);
    /* eps == 0 is allowed */
    CHECK(dn_batchnorm_forward_train_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, NULL, 0.0, 0.1, NULL, NULL, y, NULL, NULL) == DN_OK);

    CHECK(dn_batchnorm_forward_infer_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, rv, NULL, NULL, 1e-5, y) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_forward_infer_f32(2, 3, 2, DN_LAYOUT_NCS, x, rm, rv, NULL, NULL, -1.0, y) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_backward_f32(2, 3, 2, DN_LAYOUT_NCS, x, x, NULL, v, NULL, y, NULL, NULL) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_backward_f32(2, 3, 2, DN_LAYOUT_NSC, x, x, m, v, NULL, NULL, NULL, NULL) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_backward_infer_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, rm, rv, NULL, 1e-5, y, m, NULL) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_backward_infer_f32(2, 3, 2, DN_LAYOUT_NCS, x, NULL, rm, rv, NULL, 1e-5, y, NULL, m) == DN_OK);
    CHECK(m[0] == 1 + 2 + 7 + 8 && m[2] == 5 + 6 + 11 + 12);
}

static void check_special_values(void)
{
    /* a constant channel of 1e7 normalises to exactly 0; NaN stays in its channel */
    enum { N = 5, C = 3, S = 7 };
    float x[N * C * S], y[N * C * S];
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int s = 0; s < S; s++)
                x[(n * C + c) * S + s] = c == 0 ? 1e7f : (float)uniform();
    x[(2 * C + 1) * S + 3] = NAN;
    CHECK(dn_batchnorm_forward_train_f32(N, C, S, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL, NULL, y, NULL, NULL) == DN_OK);
    for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) {
            CHECK(y[(n * C + 0) * S + s] == 0.0f);
            CHECK(isnan(y[(n * C + 1) * S + s]));
            CHECK(isfinite(y[(n * C + 2) * S + s]));
        }
}

int main(void)
{
    static const int64_t shapes[][3] = {
        {2, 3, 5}, {7, 1, 13}, {5, 11, 1}, {1, 4, 9}, {3, 2, 4100}, {64, 130, 3}, {2, 3, 70001},
        {3, 600, 5}, {4, 513, 3}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int nsc = 0; nsc < 2; nsc++) check_shape(shapes[i][0], shapes[i][1], shapes[i][2], nsc);
    check_errors();
    check_special_values();
    return check_report("test_batchnorm");
}
