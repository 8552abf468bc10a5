/* Batch normalization: the public functions run the instruction-set variant
 * of the kernels (batchnorm_kernels.h) that this CPU supports: AVX2 where
 * there is AVX2 or AVX-512 (an -mavx512f build of these loops measured
 * slower here than either), portable C elsewhere. */
#include "common.h"

#if defined(DN_HAVE_AVX2)
#  define DN_IF_AVX2(...) __VA_ARGS__
#else
#  define DN_IF_AVX2(...)
#endif

/* The variants' prototypes and the public function that picks one. */
#define DN_DISPATCH(name, params, args)                                        \
    dn_status name##_portable params;                                          \
    DN_IF_AVX2(dn_status name##_avx2 params;)                                  \
    dn_status name params                                                      \
    {                                                                          \
        DN_IF_AVX2(if (dn_simd_level() >= 1) return name##_avx2 args;)         \
        return name##_portable args;                                           \
    }

#define DN_DISPATCH_TYPE(T, SFX)                                               \
    DN_DISPATCH(dn_batchnorm_forward_train_##SFX,                              \
        (int64_t n, int64_t c, int64_t s, dn_layout layout,                    \
         const T *DN_RESTRICT x, const T *DN_RESTRICT gamma,                   \
         const T *DN_RESTRICT beta, double eps, double momentum,               \
         T *running_mean, T *running_var, T *y, T *save_mean, T *save_invstd), \
        (n, c, s, layout, x, gamma, beta, eps, momentum, running_mean,         \
         running_var, y, save_mean, save_invstd))                              \
    DN_DISPATCH(dn_batchnorm_forward_infer_##SFX,                              \
        (int64_t n, int64_t c, int64_t s, dn_layout layout,                    \
         const T *DN_RESTRICT x, const T *DN_RESTRICT running_mean,            \
         const T *DN_RESTRICT running_var, const T *DN_RESTRICT gamma,         \
         const T *DN_RESTRICT beta, double eps, T *y),                         \
        (n, c, s, layout, x, running_mean, running_var, gamma, beta, eps, y))  \
    DN_DISPATCH(dn_batchnorm_backward_##SFX,                                   \
        (int64_t n, int64_t c, int64_t s, dn_layout layout,                    \
         const T *DN_RESTRICT dy, const T *DN_RESTRICT x,                      \
         const T *DN_RESTRICT save_mean, const T *DN_RESTRICT save_invstd,     \
         const T *DN_RESTRICT gamma, T *dx, T *dgamma, T *dbeta),              \
        (n, c, s, layout, dy, x, save_mean, save_invstd, gamma, dx, dgamma,    \
         dbeta))                                                               \
    DN_DISPATCH(dn_batchnorm_backward_infer_##SFX,                             \
        (int64_t n, int64_t c, int64_t s, dn_layout layout,                    \
         const T *DN_RESTRICT dy, const T *DN_RESTRICT x,                      \
         const T *DN_RESTRICT running_mean, const T *DN_RESTRICT running_var,  \
         const T *DN_RESTRICT gamma, double eps, T *dx, T *dgamma,             \
         T *dbeta),                                                            \
        (n, c, s, layout, dy, x, running_mean, running_var, gamma, eps, dx,    \
         dgamma, dbeta))

DN_DISPATCH_TYPE(float, f32)
DN_DISPATCH_TYPE(double, f64)
