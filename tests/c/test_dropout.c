/* Dropout C API: Philox4x32-10 known answers, masks and outputs against a
 * scalar reference built on dn_philox4x32_10() (one counter at a time),
 * both types, both modes, channel dropout in both layouts, thread-count
 * independence, special values and every error status. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dropnorm/dropnorm.h"
#include "check.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static double uniform(void) /* in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

/* ---- The reference: the rule of docs/ARCHITECTURE.md, one decision at a time. ---- */

static int ref_keep(int64_t i, double p, uint64_t seed, uint64_t stream)
{
    const uint64_t j = (uint64_t)i / 4;
    const uint32_t ctr[4] = {(uint32_t)j, (uint32_t)(j >> 32), (uint32_t)stream,
                             (uint32_t)(stream >> 32)};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    if (p >= 1.0) return 0;
    dn_philox4x32_10(ctr, key, out);
    return out[i % 4] >= (uint32_t)floor(p * 4294967296.0);
}

static int mask_bit(const uint8_t *mask, int64_t i) { return (mask[i / 8] >> (i % 8)) & 1; }

/* the decision index of element e of an (N, C, S) tensor */
static int64_t decision(int64_t e, int64_t C, int64_t S, int nsc, int channelwise)
{
    int64_t n, c;
    if (!channelwise) return e;
    if (nsc) {
        n = e / (S * C);
        c = e % C;
    } else {
        n = e / (C * S);
        c = (e / S) % C;
    }
    return n * C + c;
}

static void check_philox(void)
{
    static const uint32_t kat[3][10] = {
        {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
         0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        dn_philox4x32_10(kat[t], kat[t] + 4, out);
        for (int w = 0; w < 4; w++) CHECK(out[w] == kat[t][6 + w]);
    }
}

static void check_masks(void)
{
    static const int64_t sizes[] = {1, 3, 4, 7, 8, 9, 63, 64, 65, 127, 1000, 16383, 16385, 100003};
    static const double ps[] = {0.0, 1e-12, 0.1, 0.5, 0.9, 0.999999, 1.0 - 1.0 / 9007199254740992.0, 1.0};
    static const uint64_t seeds[][2] = {{0, 0}, {42, 7}, {0x123456789abcdefULL, 0xfedcba9876543210ULL}};
    uint8_t *mask = malloc(100003 / 8 + 2);
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++)
        for (size_t b = 0; b < sizeof ps / sizeof ps[0]; b++)
            for (size_t c = 0; c < 3; c++) {
                const int64_t n = sizes[a], nbytes = (n + 7) / 8;
                int bad = 0;
                mask[nbytes] = 0xA5;
                memset(mask, 0xCC, (size_t)nbytes);
                CHECK(dn_dropout_mask(n, ps[b], seeds[c][0], seeds[c][1], mask) == DN_OK);
                for (int64_t i = 0; i < n; i++)
                    bad += mask_bit(mask, i) != ref_keep(i, ps[b], seeds[c][0], seeds[c][1]);
                for (int64_t i = n; i < 8 * nbytes; i++) bad += mask_bit(mask, i) != 0;
                CHECK(bad == 0);
                CHECK(mask[nbytes] == 0xA5); /* nothing written past the end */
            }
    free(mask);

    /* the threshold boundary: a word equal to floor(p * 2^32) is kept, one
     * below it dropped */
    {
        const uint32_t ctr[4] = {0, 0, 7, 0}, key[2] = {11, 0};
        uint32_t out[4];
        uint8_t m;
        dn_philox4x32_10(ctr, key, out);
        for (int w = 0; w < 4; w++) {
            CHECK(dn_dropout_mask(4, (double)out[w] / 4294967296.0, 11, 7, &m) == DN_OK);
            CHECK((m >> w) & 1);
            CHECK(dn_dropout_mask(4, ((double)out[w] + 1.0) / 4294967296.0, 11, 7, &m) == DN_OK);
            CHECK(!((m >> w) & 1));
        }
    }
}

/* Forward (elementwise or channel), apply-mask and both backwards of one
 * shape, f32 and f64, against the reference. */
static void check_shape(int64_t N, int64_t C, int64_t S, int nsc, int channelwise, double p,
                        dn_dropout_mode mode)
{
    const int64_t T = N * C * S, bits = channelwise ? N * C : T, nbytes = (bits + 7) / 8;
    const dn_layout L = nsc ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
    const uint64_t seed = 0x9e3779b97f4a7c15ULL, stream = 0x100000003ULL;
    const float sf = mode == DN_DROPOUT_INVERTED ? (float)(1.0 / (1.0 - p)) : 1.0f;
    const double sd = mode == DN_DROPOUT_INVERTED ? 1.0 / (1.0 - p) : 1.0;
    float *xf = malloc(sizeof(float) * T), *yf = malloc(sizeof(float) * T);
    float *zf = malloc(sizeof(float) * T);
    double *xd = malloc(sizeof(double) * T), *yd = malloc(sizeof(double) * T);
    double *zd = malloc(sizeof(double) * T);
    uint8_t *m1 = malloc((size_t)nbytes), *m2 = malloc((size_t)nbytes);
    int bad_f = 0, bad_d = 0, bad_m = 0;

    for (int64_t i = 0; i < T; i++) {
        xf[i] = (float)(4.0 * uniform());
        xd[i] = 4.0 * uniform();
    }
    CHECK(dn_dropout_forward_f32(N, C, S, L, channelwise, xf, p, seed, stream, mode, 1, yf, m1) == DN_OK);
    CHECK(dn_dropout_forward_f64(N, C, S, L, channelwise, xd, p, seed, stream, mode, 1, yd, m2) == DN_OK);
    CHECK(memcmp(m1, m2, (size_t)nbytes) == 0);
    for (int64_t i = 0; i < bits; i++) bad_m += mask_bit(m1, i) != ref_keep(i, p, seed, stream);
    for (int64_t e = 0; e < T; e++) {
        const int k = ref_keep(decision(e, C, S, nsc, channelwise), p, seed, stream);
        const float ef = k ? xf[e] * sf : 0.0f;
        const double ed = k ? xd[e] * sd : 0.0;
        bad_f += memcmp(&ef, &yf[e], sizeof ef) != 0;
        bad_d += memcmp(&ed, &yd[e], sizeof ed) != 0;
    }
    CHECK(bad_m == 0);
    CHECK(bad_f == 0);
    CHECK(bad_d == 0);

    /* apply-mask and both backwards reproduce the forward exactly */
    CHECK(dn_dropout_apply_mask_f32(N, C, S, L, channelwise, xf, m1, p, mode, zf) == DN_OK);
    CHECK(memcmp(zf, yf, sizeof(float) * T) == 0);
    CHECK(dn_dropout_backward_f32(N, C, S, L, channelwise, xf, p, seed, stream, mode, NULL, zf) == DN_OK);
    CHECK(memcmp(zf, yf, sizeof(float) * T) == 0);
    CHECK(dn_dropout_backward_f64(N, C, S, L, channelwise, xd, p, 1, 2, mode, m2, zd) == DN_OK);
    CHECK(memcmp(zd, yd, sizeof(double) * T) == 0);
    CHECK(dn_dropout_backward_f64(N, C, S, L, channelwise, xd, p, seed, stream, mode, NULL, zd) == DN_OK);
    CHECK(memcmp(zd, yd, sizeof(double) * T) == 0);

    /* in place */
    memcpy(zd, xd, sizeof(double) * T);
    CHECK(dn_dropout_forward_f64(N, C, S, L, channelwise, zd, p, seed, stream, mode, 1, zd, NULL) == DN_OK);
    CHECK(memcmp(zd, yd, sizeof(double) * T) == 0);
    memcpy(zf, xf, sizeof(float) * T);
    CHECK(dn_dropout_apply_mask_f32(N, C, S, L, channelwise, zf, m1, p, mode, zf) == DN_OK);
    CHECK(memcmp(zf, yf, sizeof(float) * T) == 0);
    memcpy(zf, xf, sizeof(float) * T);
    CHECK(dn_dropout_backward_f32(N, C, S, L, channelwise, zf, p, seed, stream, mode, NULL, zf) == DN_OK);
    CHECK(memcmp(zf, yf, sizeof(float) * T) == 0);

    /* inference: identity (inverted) or x*(1-p) (classic); mask all ones */
    CHECK(dn_dropout_forward_f32(N, C, S, L, channelwise, xf, p, seed, stream, mode, 0, yf, m1) == DN_OK);
    bad_f = 0;
    for (int64_t e = 0; e < T; e++) {
        const float ef = mode == DN_DROPOUT_INVERTED ? xf[e] : xf[e] * (float)(1.0 - p);
        bad_f += memcmp(&ef, &yf[e], sizeof ef) != 0;
    }
    CHECK(bad_f == 0);
    bad_m = 0;
    for (int64_t i = 0; i < bits; i++) bad_m += mask_bit(m1, i) != 1;
    CHECK(bad_m == 0);

    free(xf); free(yf); free(zf); free(xd); free(yd); free(zd); free(m1); free(m2);
}

/* Outputs are bitwise the same for 1, 2, 3 and 7 threads. */
static void check_threads(void)
{
    enum { N = 1 << 20, CN = 64, CC = 1021, CS = 16 }; /* CN*CC*CS < N */
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * 2 * N);
    float *y1 = malloc(sizeof(float) * 2 * N);
    uint8_t *m = malloc(N / 8), *m1 = malloc(N / 8);
    static const int threads[] = {1, 2, 3, 7};
    const int saved = dn_get_max_threads();
    for (int64_t i = 0; i < N; i++) x[i] = (float)uniform();
    for (int t = 0; t < 4; t++) {
        CHECK(dn_set_num_threads(threads[t]) == DN_OK);
        /* elementwise with a mask, channel dropout in both layouts */
        CHECK(dn_dropout_forward_f32(N - 5, 1, 1, DN_LAYOUT_NCS, 0, x, 0.3, 5, 6, DN_DROPOUT_INVERTED, 1, y, m) == DN_OK);
        CHECK(dn_dropout_forward_f32(CN, CC, CS, DN_LAYOUT_NSC, 1, x, 0.3, 5, 6, DN_DROPOUT_INVERTED, 1, y + N, NULL) == DN_OK);
        CHECK(dn_dropout_backward_f32(CN, CS, CC, DN_LAYOUT_NCS, 1, x, 0.3, 5, 6, DN_DROPOUT_CLASSIC, NULL, y + 2 * N - CN * CC * CS) == DN_OK);
        CHECK(dn_dropout_forward_f32(CN * CC, CS / 2, 2, DN_LAYOUT_NCS, 1, x, 0.6, 5, 6, DN_DROPOUT_INVERTED, 1, y + N / 2, NULL) == DN_OK);
        if (t == 0) {
            memcpy(y1, y, sizeof(float) * 2 * N);
            memcpy(m1, m, N / 8);
        } else {
            CHECK(memcmp(y, y1, sizeof(float) * 2 * N) == 0);
            CHECK(memcmp(m, m1, N / 8) == 0);
        }
    }
    dn_set_num_threads(saved);
    free(x); free(y); free(y1); free(m); free(m1);
}

static void check_special_values(void)
{
    enum { T = 203 };
    double x[T], y[T], inf = INFINITY;
    uint8_t m[(T + 7) / 8];
    int bad = 0, dropped = 0;
    for (int i = 0; i < T; i++) x[i] = i % 3 == 0 ? NAN : (i % 3 == 1 ? -inf : uniform());
    x[5] = -0.0;
    /* p = 0: x unchanged, bitwise (NaN payloads and -0 included) */
    CHECK(dn_dropout_forward_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, 0.0, 1, 2, DN_DROPOUT_INVERTED, 1, y, m) == DN_OK);
    CHECK(memcmp(x, y, sizeof x) == 0);
    CHECK(m[0] == 0xFF && m[(T + 7) / 8 - 1] == (1u << (T % 8)) - 1u);
    CHECK(dn_dropout_backward_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, 0.0, 1, 2, DN_DROPOUT_INVERTED, NULL, y) == DN_OK);
    CHECK(memcmp(x, y, sizeof x) == 0);
    /* p = 1: +0 everywhere, in every mode and pass */
    for (int mode = 0; mode < 2; mode++) {
        for (int training = 0; training < 2; training++) {
            if (mode == DN_DROPOUT_INVERTED && !training) continue;
            CHECK(dn_dropout_forward_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, 1.0, 1, 2, (dn_dropout_mode)mode, training, y, NULL) == DN_OK);
            for (int i = 0; i < T; i++) bad += !(y[i] == 0.0 && !signbit(y[i]));
        }
        memset(m, 0xFF, sizeof m);
        CHECK(dn_dropout_apply_mask_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, m, 1.0, (dn_dropout_mode)mode, y) == DN_OK);
        for (int i = 0; i < T; i++) bad += !(y[i] == 0.0 && !signbit(y[i]));
        CHECK(dn_dropout_backward_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, 1.0, 1, 2, (dn_dropout_mode)mode, NULL, y) == DN_OK);
        for (int i = 0; i < T; i++) bad += !(y[i] == 0.0 && !signbit(y[i]));
    }
    CHECK(bad == 0);
    CHECK(dn_dropout_mask(T, 1.0, 1, 2, m) == DN_OK);
    bad = 0;
    for (size_t i = 0; i < sizeof m; i++) bad += m[i] != 0;
    CHECK(bad == 0);
    /* NaN and inf at a dropped place give +0; at a kept place stay */
    CHECK(dn_dropout_forward_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, 0.5, 3, 4, DN_DROPOUT_INVERTED, 1, y, m) == DN_OK);
    bad = 0;
    for (int i = 0; i < T; i++) {
        if (mask_bit(m, i)) {
            bad += isnan(x[i]) ? !isnan(y[i]) : !(y[i] == 2.0 * x[i]);
        } else {
            dropped++;
            bad += !(y[i] == 0.0 && !signbit(y[i]));
        }
    }
    CHECK(bad == 0);
    CHECK(dropped > 50 && dropped < 150);
    /* a classic forward at p = 0 in inference is the identity as well */
    CHECK(dn_dropout_forward_f64(T, 1, 1, DN_LAYOUT_NCS, 0, x, 0.0, 1, 2, DN_DROPOUT_CLASSIC, 0, y, NULL) == DN_OK);
    CHECK(memcmp(x, y, sizeof x) == 0);
}

static void check_errors(void)
{
    float x[24], y[24], sentinel[24];
    uint8_t m[3] = {0xA5, 0xA5, 0xA5}, mask[3] = {0xFF, 0x0F, 0xF0};
    const dn_dropout_mode inv = DN_DROPOUT_INVERTED, bad_mode = (dn_dropout_mode)2;
    for (int i = 0; i < 24; i++) {
        x[i] = (float)i;
        y[i] = sentinel[i] = -7.0f;
    }
#define FWD(n, c, s, layout, xx, p, mode, yy, mm) \
    dn_dropout_forward_f32(n, c, s, layout, 0, xx, p, 1, 2, mode, 1, yy, mm)
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, NULL, 0.5, inv, y, m) == DN_ERR_NULL_POINTER);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, 0.5, inv, NULL, m) == DN_ERR_NULL_POINTER);
    CHECK(FWD(0, 3, 4, DN_LAYOUT_NCS, x, 0.5, inv, y, m) == DN_ERR_BAD_SHAPE);
    CHECK(FWD(2, 3, -4, DN_LAYOUT_NCS, x, 0.5, inv, y, m) == DN_ERR_BAD_SHAPE);
    CHECK(FWD(INT64_MAX / 2, 3, 4, DN_LAYOUT_NCS, x, 0.5, inv, y, m) == DN_ERR_SIZE_OVERFLOW);
    CHECK(FWD(2, 3, 4, (dn_layout)5, x, 0.5, inv, y, m) == DN_ERR_BAD_LAYOUT);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, -0.1, inv, y, m) == DN_ERR_BAD_VALUE);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, 1.5, inv, y, m) == DN_ERR_BAD_VALUE);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, NAN, inv, y, m) == DN_ERR_BAD_VALUE);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, INFINITY, inv, y, m) == DN_ERR_BAD_VALUE);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, 0.5, bad_mode, y, m) == DN_ERR_BAD_MODE);
    CHECK(FWD(2, 3, 4, DN_LAYOUT_NCS, x, 0.5, (dn_dropout_mode)-1, y, m) == DN_ERR_BAD_MODE);
#undef FWD
    CHECK(dn_dropout_forward_f32(2, 3, 4, DN_LAYOUT_NCS, 1, x, 0.5, 1, 2, bad_mode, 0, y, m) == DN_ERR_BAD_MODE);
    CHECK(dn_dropout_forward_f64(2, 3, 4, DN_LAYOUT_NSC, 1, NULL, 0.5, 1, 2, inv, 0, NULL, m) == DN_ERR_NULL_POINTER);

    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, NULL, 0.5, inv, y) == DN_ERR_NULL_POINTER);
    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 0, NULL, mask, 0.5, inv, y) == DN_ERR_NULL_POINTER);
    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, mask, 0.5, inv, NULL) == DN_ERR_NULL_POINTER);
    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, mask, 2.0, inv, y) == DN_ERR_BAD_VALUE);
    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, mask, 0.5, bad_mode, y) == DN_ERR_BAD_MODE);
    CHECK(dn_dropout_apply_mask_f64(2, 0, 4, DN_LAYOUT_NCS, 0, NULL, mask, 0.5, inv, NULL) == DN_ERR_BAD_SHAPE);
    CHECK(dn_dropout_apply_mask_f64(2, 3, 4, (dn_layout)-1, 1, NULL, mask, 0.5, inv, NULL) == DN_ERR_BAD_LAYOUT);

    CHECK(dn_dropout_backward_f32(2, 3, 4, DN_LAYOUT_NCS, 0, NULL, 0.5, 1, 2, inv, NULL, y) == DN_ERR_NULL_POINTER);
    CHECK(dn_dropout_backward_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, 0.5, 1, 2, inv, mask, NULL) == DN_ERR_NULL_POINTER);
    CHECK(dn_dropout_backward_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, -1e-300, 1, 2, inv, NULL, y) == DN_ERR_BAD_VALUE);
    CHECK(dn_dropout_backward_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, 0.5, 1, 2, bad_mode, NULL, y) == DN_ERR_BAD_MODE);
    CHECK(dn_dropout_backward_f64(-1, 3, 4, DN_LAYOUT_NCS, 0, NULL, 0.5, 1, 2, inv, NULL, NULL) == DN_ERR_BAD_SHAPE);
    CHECK(dn_dropout_backward_f64(((int64_t)1 << 40), ((int64_t)1 << 20), 8, DN_LAYOUT_NSC, 1, NULL, 0.5, 1, 2, inv, NULL, NULL) == DN_ERR_SIZE_OVERFLOW);

    CHECK(dn_dropout_mask(0, 0.5, 1, 2, m) == DN_ERR_BAD_SHAPE);
    CHECK(dn_dropout_mask(-8, 0.5, 1, 2, m) == DN_ERR_BAD_SHAPE);
    CHECK(dn_dropout_mask(24, 0.5, 1, 2, NULL) == DN_ERR_NULL_POINTER);
    CHECK(dn_dropout_mask(24, 1.0000001, 1, 2, m) == DN_ERR_BAD_VALUE);
    CHECK(dn_dropout_mask(24, NAN, 1, 2, m) == DN_ERR_BAD_VALUE);

    /* nothing was written by any failing call */
    CHECK(memcmp(y, sentinel, sizeof y) == 0);
    CHECK(m[0] == 0xA5 && m[1] == 0xA5 && m[2] == 0xA5);
    CHECK(mask[0] == 0xFF && mask[1] == 0x0F && mask[2] == 0xF0);

    /* and the valid calls work on the same arguments */
    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 0, x, mask, 0.5, DN_DROPOUT_CLASSIC, y) == DN_OK);
    for (int i = 0; i < 24; i++) CHECK(y[i] == (mask_bit(mask, i) ? x[i] : 0.0f));
    CHECK(dn_dropout_apply_mask_f32(2, 3, 4, DN_LAYOUT_NCS, 1, x, mask, 0.75, DN_DROPOUT_INVERTED, y) == DN_OK);
    for (int i = 0; i < 24; i++) CHECK(y[i] == (mask_bit(mask, i / 4) ? 4.0f * x[i] : 0.0f));
}

int main(void)
{
    static const int64_t shapes[][3] = {
        {1, 1, 1}, {2, 3, 5}, {7, 1, 13}, {5, 11, 1}, {1, 4, 9}, {3, 2, 4100},
        {64, 130, 3}, {2, 3, 70001}, {3, 70, 67}, {2, 9000, 3}, {1, 1, 100003},
        {2, 40000, 2}, {3, 12000, 2}, {2, 16384, 3}};
    static const double ps[] = {0.1, 0.5, 0.9};
    check_philox();
    check_masks();
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int nsc = 0; nsc < 2; nsc++)
            for (int cw = 0; cw < 2; cw++)
                for (int mode = 0; mode < 2; mode++)
                    check_shape(shapes[i][0], shapes[i][1], shapes[i][2], nsc, cw,
                                ps[(i + (size_t)mode) % 3], (dn_dropout_mode)mode);
    check_threads();
    check_special_values();
    check_errors();
    return check_report("test_dropout");
}
