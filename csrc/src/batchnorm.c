/* Batch normalization: the public functions for float and double, and for
 * the half types stored in uint16_t (binary16, bfloat16) that compute in
 * float (batchnorm_impl.h), which run the inner loops of the
 * instruction-set variant dispatch.c chose (batchnorm_kernels.h). */
#include "kernels.h"

#define T float
#define FN(name) name##_f32
#define BN_TABLE bn_f32
#define DROP_WINDOWS drop_windows_f32
#define DROP_FIELD windows_f32
#include "batchnorm_impl.h"
#undef T
#undef FN
#undef BN_TABLE
#undef DROP_WINDOWS
#undef DROP_FIELD

#define T double
#define FN(name) name##_f64
#define BN_TABLE bn_f64
#define DROP_WINDOWS drop_windows_f64
#define DROP_FIELD windows_f64
#include "batchnorm_impl.h"
#undef T
#undef FN
#undef BN_TABLE
#undef DROP_WINDOWS
#undef DROP_FIELD

#define T float
#define S uint16_t
#define FN(name) name##_f16
#define BN_TABLE bn_f16
#define DROP_WINDOWS drop_windows_f16
#define DROP_FIELD windows_half
#include "batchnorm_impl.h"
#undef T
#undef S
#undef FN
#undef BN_TABLE
#undef DROP_WINDOWS
#undef DROP_FIELD

#define T float
#define S uint16_t
#define FN(name) name##_bf16
#define BN_TABLE bn_bf16
#define DROP_WINDOWS drop_windows_bf16
#define DROP_FIELD windows_half
#include "batchnorm_impl.h"
#undef T
#undef S
#undef FN
#undef BN_TABLE
#undef DROP_WINDOWS
#undef DROP_FIELD

dn_status dn_batchnorm_merge_stats(int64_t k, int64_t c, const double *stats, double *mean,
                                   double *var, double *var_unbiased)
{
    if (k < 1 || c < 1) return DN_ERR_BAD_SHAPE;
    if (k > (int64_t)(PTRDIFF_MAX / (ptrdiff_t)sizeof(double)) / 3 / c)
        return DN_ERR_SIZE_OVERFLOW;
    if (stats == NULL || mean == NULL || var == NULL) return DN_ERR_NULL_POINTER;
    for (int64_t ch = 0; ch < c; ch++) {
        double total = 0.0;
        for (int64_t r = 0; r < k; r++) {
            const double count = stats[r * 3 * c + ch];
            if (!(count >= 0.0) || !isfinite(count) || count != floor(count))
                return DN_ERR_BAD_VALUE;
            total += count;
        }
        if (total < 2.0) return DN_ERR_BATCH_TOO_SMALL;
    }
    for (int64_t ch = 0; ch < c; ch++) {
        double na = 0.0, ma = 0.0, qa = 0.0;
        for (int64_t r = 0; r < k; r++) {
            const double *part = stats + r * 3 * c;
            if (part[ch] == 0.0) continue;
            if (na == 0.0) {
                /* the first shard as it is: one shard merges to itself bitwise */
                na = part[ch];
                ma = part[c + ch];
                qa = part[2 * c + ch];
            } else {
                dn_merge_moments(&na, &ma, &qa, part[ch], part[c + ch], part[2 * c + ch]);
            }
        }
        mean[ch] = ma;
        var[ch] = dn_biased_var(qa, na);
        if (var_unbiased) var_unbiased[ch] = dn_unbiased_var(var[ch], na);
    }
    return DN_OK;
}
