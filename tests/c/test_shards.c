/* Shards of a batch. Batch normalization: the pieces (partial_stats,
 * merge_stats, forward_apply, backward_reduce, backward_apply) compose
 * bitwise to the single-process training forward and backward with one
 * shard, and to within rounding of them with several uneven shards (empty
 * ones included); their argument checks. Dropout: a shard at its offset
 * gets exactly its slice of the whole batch's mask. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "dropnorm/dropnorm.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;

static double uniform(void) /* in [-1, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 4503599627370496.0 - 1.0;
}

/* The most shards a test splits a batch into. */
#define MAX_SHARDS 4

/* One element type's checks: the single-process functions against the
 * pieces, on shards of whole images [cut[r], cut[r+1]). */
#define DEFINE_SHARD_CHECKS(SFX, T)                                                             \
    static int same_##SFX(const T *a, const T *b, int64_t count)                                \
    {                                                                                           \
        return count == 0 || memcmp(a, b, sizeof(T) * (size_t)count) == 0;                     \
    }                                                                                           \
                                                                                                \
    static double rel_diff_##SFX(const T *a, const T *b, int64_t count)                         \
    {                                                                                           \
        double worst = 0.0, scale = 0.0;                                                        \
        for (int64_t i = 0; i < count; i++) {                                                   \
            const double d = fabs((double)a[i] - (double)b[i]);                                \
            if (d > worst) worst = d;                                                           \
            if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);                         \
        }                                                                                       \
        return scale > 0.0 ? worst / scale : worst;                                             \
    }                                                                                           \
                                                                                                \
    static void check_shards_##SFX(int64_t N, int64_t C, int64_t S, dn_layout layout,          \
                                   int shards, const int64_t *cut, double tol)                  \
    {                                                                                           \
        const int64_t total = N * C * S, per = C * S;                                           \
        T *x = malloc(sizeof(T) * (size_t)total), *dy = malloc(sizeof(T) * (size_t)total);      \
        T *y1 = malloc(sizeof(T) * (size_t)total), *yk = malloc(sizeof(T) * (size_t)total);     \
        T *dx1 = malloc(sizeof(T) * (size_t)total), *dxk = malloc(sizeof(T) * (size_t)total);   \
        T *gamma = malloc(sizeof(T) * (size_t)C), *beta = malloc(sizeof(T) * (size_t)C);        \
        T *st1 = malloc(sizeof(T) * 8 * (size_t)C), *stk = malloc(sizeof(T) * 8 * (size_t)C);   \
        double *parts = malloc(sizeof(double) * 3 * MAX_SHARDS * (size_t)C);                    \
        double *sums = malloc(sizeof(double) * 3 * MAX_SHARDS * (size_t)C);                     \
        double *gsum = malloc(sizeof(double) * 3 * (size_t)C);                                  \
        double *mv = malloc(sizeof(double) * 3 * (size_t)C);                                    \
        /* st: save_mean, save_invstd, running_mean, running_var, dgamma,       */              \
        /* dbeta (the last two as sums of the shards' parts in stk)             */              \
        for (int64_t i = 0; i < total; i++) {                                                   \
            x[i] = (T)(40.0 + 3.0 * uniform());                                                 \
            dy[i] = (T)uniform();                                                               \
        }                                                                                       \
        for (int64_t ch = 0; ch < C; ch++) {                                                    \
            gamma[ch] = (T)(1.0 + 0.5 * uniform());                                             \
            beta[ch] = (T)uniform();                                                            \
        }                                                                                       \
        for (int64_t i = 0; i < 8 * C; i++) st1[i] = stk[i] = (T)(i % 3 + 1);                   \
        CHECK(dn_batchnorm_forward_train_##SFX(N, C, S, layout, x, gamma, beta, 1e-5, 0.3,      \
                                               st1 + 2 * C, st1 + 3 * C, y1, st1, st1 + C)      \
              == DN_OK);                                                                        \
        CHECK(dn_batchnorm_backward_##SFX(N, C, S, layout, dy, x, st1, st1 + C, gamma, dx1,     \
                                          st1 + 4 * C, st1 + 5 * C) == DN_OK);                  \
        for (int r = 0; r < shards; r++)                                                        \
            CHECK(dn_batchnorm_partial_stats_##SFX(cut[r + 1] - cut[r], C, S, layout,           \
                                                   x + cut[r] * per, parts + 3 * r * C)         \
                  == DN_OK);                                                                    \
        CHECK(dn_batchnorm_merge_stats(shards, C, parts, mv, mv + C, mv + 2 * C) == DN_OK);     \
        for (int r = 0; r < shards; r++) {                                                      \
            /* every shard updates the running statistics; the last one's stay */              \
            T run[2 * 4096];                                                                    \
            memcpy(run, stk + 2 * C, sizeof(T) * 2 * (size_t)C);                                \
            CHECK(dn_batchnorm_forward_apply_##SFX(                                             \
                      cut[r + 1] - cut[r], C, S, layout, x + cut[r] * per, mv, mv + C,          \
                      mv + 2 * C, gamma, beta, 1e-5, 0.3, run, run + C, yk + cut[r] * per,      \
                      stk, stk + C) == DN_OK);                                                  \
            if (r == shards - 1) memcpy(stk + 2 * C, run, sizeof(T) * 2 * (size_t)C);           \
        }                                                                                       \
        for (int r = 0; r < shards; r++)                                                        \
            CHECK(dn_batchnorm_backward_reduce_##SFX(cut[r + 1] - cut[r], C, S, layout,         \
                                                     dy + cut[r] * per, x + cut[r] * per, stk,  \
                                                     sums + 3 * r * C) == DN_OK);               \
        for (int64_t i = 0; i < 3 * C; i++) {                                                   \
            gsum[i] = 0.0;                                                                      \
            for (int r = 0; r < shards; r++) gsum[i] += sums[3 * r * C + i];                    \
        }                                                                                       \
        for (int64_t i = 0; i < 2 * C; i++) stk[4 * C + i] = 0;                                 \
        for (int r = 0; r < shards; r++) {                                                      \
            T part[2 * 4096];                                                                   \
            CHECK(dn_batchnorm_backward_apply_##SFX(                                            \
                      cut[r + 1] - cut[r], C, S, layout, dy + cut[r] * per, x + cut[r] * per,   \
                      stk, stk + C, gamma, gsum, N * S, sums + 3 * r * C, dxk + cut[r] * per,   \
                      part, part + C) == DN_OK);                                                \
            for (int64_t i = 0; i < 2 * C; i++) stk[4 * C + i] += part[i];                      \
        }                                                                                       \
        if (shards == 1) {                                                                      \
            CHECK(same_##SFX(y1, yk, total));                                                   \
            CHECK(same_##SFX(st1, stk, 6 * C));                                                 \
            CHECK(same_##SFX(dx1, dxk, total));                                                 \
        } else {                                                                                \
            CHECK(rel_diff_##SFX(yk, y1, total) <= tol);                                        \
            CHECK(rel_diff_##SFX(stk, st1, 4 * C) <= tol);                                      \
            CHECK(rel_diff_##SFX(dxk, dx1, total) <= tol);                                      \
            CHECK(rel_diff_##SFX(stk + 4 * C, st1 + 4 * C, 2 * C) <= tol);                      \
        }                                                                                       \
        free(x), free(dy), free(y1), free(yk), free(dx1), free(dxk), free(gamma), free(beta);   \
        free(st1), free(stk), free(parts), free(sums), free(gsum), free(mv);                    \
    }

DEFINE_SHARD_CHECKS(f32, float)
DEFINE_SHARD_CHECKS(f64, double)

/* Shapes on both sides of the schedules' boundaries (short rows, few
 * images, wide channels-last rows, c == 1, s == 1), each as one shard and
 * as uneven shards with an empty one. */
static void check_shapes(void)
{
    static const int64_t shapes[][3] = {
        {2, 3, 5},    {8, 64, 49},  {16, 512, 7},  {3, 16, 3136}, {64, 1, 300},
        {300, 40, 1}, {33, 600, 1}, {5, 2048, 4},  {2, 7, 20000}, {40, 9, 130},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const int64_t N = shapes[i][0], C = shapes[i][1], S = shapes[i][2];
        const int64_t one[2] = {0, N};
        /* uneven, one shard empty, one of a single image */
        const int64_t four[5] = {0, N / 2, N / 2, N / 2 + 1, N};
        for (int l = 0; l < 2; l++) {
            const dn_layout layout = l ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
            check_shards_f32(N, C, S, layout, 1, one, 0.0);
            check_shards_f64(N, C, S, layout, 1, one, 0.0);
            if (N >= 2) {
                check_shards_f32(N, C, S, layout, 4, four, 2e-5);
                check_shards_f64(N, C, S, layout, 4, four, 1e-12);
            }
        }
    }
}

static void check_merge_errors(void)
{
    /* k = 1, c = 2: one value per channel in all, so no variance */
    double stats[6] = {1, 1, 1, 5.0, 6.0, 7.0}, mean[2], var[2], vu[2];
    CHECK(dn_batchnorm_merge_stats(1, 2, stats, mean, var, vu) == DN_ERR_BATCH_TOO_SMALL);
    {
        /* k = 2 shards, c = 1: one value each, 4 and 0 */
        double two[6] = {1, 4.0, 0, 1, 0.0, 0}, m[1] = {-7}, v[1] = {-7};
        CHECK(dn_batchnorm_merge_stats(2, 1, two, m, v, NULL) == DN_OK);
        CHECK(m[0] == 2.0 && v[0] == 4.0);
        two[0] = -1;
        m[0] = v[0] = -7;
        CHECK(dn_batchnorm_merge_stats(2, 1, two, m, v, NULL) == DN_ERR_BAD_VALUE);
        CHECK(m[0] == -7 && v[0] == -7);
        two[0] = 1.5;
        CHECK(dn_batchnorm_merge_stats(2, 1, two, m, v, NULL) == DN_ERR_BAD_VALUE);
        two[0] = INFINITY;
        CHECK(dn_batchnorm_merge_stats(2, 1, two, m, v, NULL) == DN_ERR_BAD_VALUE);
        two[0] = NAN;
        CHECK(dn_batchnorm_merge_stats(2, 1, two, m, v, NULL) == DN_ERR_BAD_VALUE);
    }
    CHECK(dn_batchnorm_merge_stats(0, 1, stats, mean, var, vu) == DN_ERR_BAD_SHAPE);
    CHECK(dn_batchnorm_merge_stats(1, 0, stats, mean, var, vu) == DN_ERR_BAD_SHAPE);
    CHECK(dn_batchnorm_merge_stats(1, 1, NULL, mean, var, vu) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_merge_stats(1, 1, stats, mean, NULL, vu) == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_merge_stats(INT64_MAX, 1, stats, mean, var, vu)
          == DN_ERR_SIZE_OVERFLOW);
}

static void check_piece_errors(void)
{
    float x[12], y[12], rm[3] = {0}, rv[3] = {1, 1, 1}, sm[3] = {0}, si[3] = {1, 1, 1};
    double stats[9], mean[3] = {0}, var[3] = {1, 1, 1}, sums[9] = {0};
    for (int i = 0; i < 12; i++) x[i] = y[i] = (float)i;
    CHECK(dn_batchnorm_partial_stats_f32(-1, 3, 2, DN_LAYOUT_NCS, x, stats) == DN_ERR_BAD_SHAPE);
    CHECK(dn_batchnorm_partial_stats_f32(2, 3, 2, DN_LAYOUT_NCS, NULL, stats)
          == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_partial_stats_f32(2, 3, 2, 7, x, stats) == DN_ERR_BAD_LAYOUT);
    /* an empty shard: pointers to no values may be NULL, the partials are 0 */
    for (int i = 0; i < 9; i++) stats[i] = -1.0;
    CHECK(dn_batchnorm_partial_stats_f32(0, 3, 2, DN_LAYOUT_NCS, NULL, stats) == DN_OK);
    CHECK(stats[0] == 0.0 && stats[4] == 0.0 && stats[8] == 0.0);
    CHECK(dn_batchnorm_backward_reduce_f32(0, 3, 2, DN_LAYOUT_NSC, NULL, NULL, sm, sums)
          == DN_OK);
    /* running_var without the unbiased variance */
    CHECK(dn_batchnorm_forward_apply_f32(2, 3, 2, DN_LAYOUT_NCS, x, mean, var, NULL, NULL, NULL,
                                         1e-5, 0.1, rm, rv, y, NULL, NULL)
          == DN_ERR_NULL_POINTER);
    CHECK(dn_batchnorm_forward_apply_f32(2, 3, 2, DN_LAYOUT_NCS, x, mean, var, var, NULL, NULL,
                                         1e-5, 1.5, rm, rv, y, NULL, NULL) == DN_ERR_BAD_VALUE);
    CHECK(y[5] == 5.0f && rv[0] == 1.0f);
    /* an empty shard still updates the running statistics */
    mean[0] = 4.0;
    CHECK(dn_batchnorm_forward_apply_f32(0, 3, 2, DN_LAYOUT_NCS, NULL, mean, var, var, NULL,
                                         NULL, 1e-5, 0.5, rm, rv, NULL, sm, si) == DN_OK);
    CHECK(rm[0] == 2.0f && sm[0] == 4.0f);
    /* the batch's count must hold this shard's n*s values */
    CHECK(dn_batchnorm_backward_apply_f32(2, 3, 2, DN_LAYOUT_NCS, x, x, sm, si, NULL, sums, 3,
                                          NULL, y, NULL, NULL) == DN_ERR_BAD_VALUE);
    CHECK(dn_batchnorm_backward_apply_f32(2, 3, 2, DN_LAYOUT_NCS, x, x, sm, si, NULL, sums, 0,
                                          NULL, y, NULL, NULL) == DN_ERR_BAD_VALUE);
    CHECK(y[5] == 5.0f);
    CHECK(dn_batchnorm_backward_apply_f32(2, 3, 2, DN_LAYOUT_NCS, x, x, sm, si, NULL, NULL, 4,
                                          NULL, y, NULL, NULL) == DN_ERR_NULL_POINTER);
}

static int mask_bit(const uint8_t *mask, int64_t i) { return (mask[i / 8] >> (i % 8)) & 1; }

/* Dropout shards: each shard, given its offset, gets exactly its slice of
 * the whole batch's output and mask, elementwise at any split and
 * channelwise at whole images, in both layouts; regenerated in backward. */
static void check_dropout_shards(int64_t N, int64_t C, int64_t S, dn_layout layout)
{
    const int64_t total = N * C * S;
    float *x = malloc(sizeof(float) * (size_t)total), *y = malloc(sizeof(float) * (size_t)total);
    float *ys = malloc(sizeof(float) * (size_t)total);
    uint8_t *mask = malloc((size_t)total / 8 + 1), *ms = malloc((size_t)total / 8 + 1);
    static const int64_t cuts[] = {0, 1, 2, 3, 5, 63, 64, 65, 100, 129, 1000};
    for (int64_t i = 0; i < total; i++) x[i] = (float)(1.0 + uniform());
    /* elementwise: any split of the flat elements */
    CHECK(dn_dropout_forward_f32(total, 1, 1, DN_LAYOUT_NCS, 0, x, 0.3, 11, 5,
                                 DN_DROPOUT_INVERTED, 1, y, mask) == DN_OK);
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        const int64_t a = cuts[k] % total, len = total - a;
        int bits_ok = 1;
        CHECK(dn_dropout_forward_offset_f32(len, 1, 1, DN_LAYOUT_NCS, 0, x + a, 0.3, 11, 5,
                                            (uint64_t)a, DN_DROPOUT_INVERTED, 1, ys, ms)
              == DN_OK);
        CHECK(memcmp(ys, y + a, sizeof(float) * (size_t)len) == 0);
        for (int64_t i = 0; i < len; i++) bits_ok &= mask_bit(ms, i) == mask_bit(mask, a + i);
        CHECK(bits_ok);
        memset(ms, 0xA5, (size_t)total / 8 + 1);
        CHECK(dn_dropout_mask_offset(len, 0.3, 11, 5, (uint64_t)a, ms) == DN_OK);
        bits_ok = 1;
        for (int64_t i = 0; i < len; i++) bits_ok &= mask_bit(ms, i) == mask_bit(mask, a + i);
        CHECK(bits_ok);
        /* regenerated in backward */
        CHECK(dn_dropout_backward_offset_f32(len, 1, 1, DN_LAYOUT_NCS, 0, x + a, 0.3, 11, 5,
                                             (uint64_t)a, DN_DROPOUT_INVERTED, NULL, ys)
              == DN_OK);
        CHECK(memcmp(ys, y + a, sizeof(float) * (size_t)len) == 0);
    }
    /* channelwise: shards of whole images, the offset counting (n, c) pairs */
    CHECK(dn_dropout_forward_f32(N, C, S, layout, 1, x, 0.5, 3, 9, DN_DROPOUT_CLASSIC, 1, y,
                                 mask) == DN_OK);
    for (int64_t n0 = 0; n0 < N; n0 += 1 + n0 / 2) {
        const int64_t len = (N - n0) * C * S;
        int bits_ok = 1;
        CHECK(dn_dropout_forward_offset_f32(N - n0, C, S, layout, 1, x + n0 * C * S, 0.5, 3, 9,
                                            (uint64_t)(n0 * C), DN_DROPOUT_CLASSIC, 1, ys, ms)
              == DN_OK);
        CHECK(memcmp(ys, y + n0 * C * S, sizeof(float) * (size_t)len) == 0);
        for (int64_t i = 0; i < (N - n0) * C; i++)
            bits_ok &= mask_bit(ms, i) == mask_bit(mask, n0 * C + i);
        CHECK(bits_ok);
    }
    free(x), free(y), free(ys), free(mask), free(ms);
}

/* Far offsets against the Philox definition itself, and the offset range. */
static void check_dropout_offsets(void)
{
    static const uint64_t offsets[] = {(1ull << 40) + 3, (1ull << 62) + 1, UINT64_MAX - 200};
    const double p = 0.4;
    const uint32_t thr = (uint32_t)(p * 4294967296.0), key[2] = {77, 0};
    uint8_t mask[32];
    double x[200], y[200];
    for (int i = 0; i < 200; i++) x[i] = 1.0 + i;
    for (size_t k = 0; k < sizeof offsets / sizeof offsets[0]; k++) {
        int ok = 1;
        CHECK(dn_dropout_mask_offset(200, p, 77, 4, offsets[k], mask) == DN_OK);
        CHECK(dn_dropout_forward_offset_f64(200, 1, 1, DN_LAYOUT_NCS, 0, x, p, 77, 4, offsets[k],
                                            DN_DROPOUT_CLASSIC, 1, y, NULL) == DN_OK);
        for (int i = 0; i < 200; i++) {
            const uint64_t g = offsets[k] + (uint64_t)i, b = g / 4;
            const uint32_t ctr[4] = {(uint32_t)b, (uint32_t)(b >> 32), 4, 0};
            uint32_t out[4];
            dn_philox4x32_10(ctr, key, out);
            ok &= mask_bit(mask, i) == (out[g % 4] >= thr);
            ok &= y[i] == (out[g % 4] >= thr ? x[i] : 0.0);
        }
        CHECK(ok);
    }
    CHECK(dn_dropout_mask_offset(200, p, 77, 4, UINT64_MAX - 199, mask) == DN_OK);
    /* past the last index, 2^64 - 1 */
    CHECK(dn_dropout_mask_offset(200, p, 77, 4, UINT64_MAX - 198, mask) == DN_ERR_BAD_VALUE);
    CHECK(dn_dropout_forward_offset_f64(200, 1, 1, DN_LAYOUT_NCS, 0, x, p, 77, 4, UINT64_MAX,
                                        DN_DROPOUT_CLASSIC, 1, y, NULL) == DN_ERR_BAD_VALUE);
    CHECK(dn_dropout_backward_offset_f64(200, 1, 1, DN_LAYOUT_NCS, 0, x, p, 77, 4, UINT64_MAX,
                                         DN_DROPOUT_CLASSIC, mask, y) == DN_ERR_BAD_VALUE);
    CHECK(y[0] == 0.0 || y[0] == 1.0);
}

int main(void)
{
    check_dropout_shards(6, 5, 37, DN_LAYOUT_NCS);
    check_dropout_shards(6, 5, 37, DN_LAYOUT_NSC);
    check_dropout_shards(9, 70, 3, DN_LAYOUT_NSC);
    check_dropout_shards(4, 1100, 20, DN_LAYOUT_NSC);
    check_dropout_shards(40, 3, 8, DN_LAYOUT_NCS);
    check_dropout_offsets();
    check_shapes();
    dn_set_num_threads(1);
    check_shapes();
    check_merge_errors();
    check_piece_errors();
    return check_report("test_shards");
}
