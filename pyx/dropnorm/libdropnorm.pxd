# Declarations of the public C API in csrc/include/dropnorm/dropnorm.h.
# Keep in step with that header: it is the source of truth.
from libc.stdint cimport int64_t

cdef extern from "dropnorm/dropnorm.h" nogil:
    const char *DN_VERSION_STRING

    ctypedef enum dn_status:
        DN_OK
        DN_ERR_NULL_POINTER
        DN_ERR_BAD_SHAPE
        DN_ERR_SIZE_OVERFLOW
        DN_ERR_BAD_LAYOUT
        DN_ERR_BAD_VALUE
        DN_ERR_BATCH_TOO_SMALL
        DN_ERR_OUT_OF_MEMORY
        DN_ERR_BAD_MODE

    ctypedef enum dn_layout:
        DN_LAYOUT_NCS
        DN_LAYOUT_NSC

    const char *dn_status_str(dn_status status)
    const char *dn_version()
    int dn_version_number()
    int dn_openmp_enabled()
    const char *dn_compiler()
    const char *dn_kernel_variant()
    int dn_get_max_threads()
    dn_status dn_set_num_threads(int n)

    dn_status dn_batchnorm_forward_train_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const float *x, const float *gamma, const float *beta,
        double eps, double momentum, float *running_mean, float *running_var,
        float *y, float *save_mean, float *save_invstd)
    dn_status dn_batchnorm_forward_train_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const double *x, const double *gamma, const double *beta,
        double eps, double momentum, double *running_mean, double *running_var,
        double *y, double *save_mean, double *save_invstd)

    dn_status dn_batchnorm_forward_infer_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const float *x, const float *running_mean, const float *running_var,
        const float *gamma, const float *beta, double eps, float *y)
    dn_status dn_batchnorm_forward_infer_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const double *x, const double *running_mean, const double *running_var,
        const double *gamma, const double *beta, double eps, double *y)

    dn_status dn_batchnorm_backward_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const float *dy, const float *x, const float *save_mean,
        const float *save_invstd, const float *gamma,
        float *dx, float *dgamma, float *dbeta)
    dn_status dn_batchnorm_backward_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const double *dy, const double *x, const double *save_mean,
        const double *save_invstd, const double *gamma,
        double *dx, double *dgamma, double *dbeta)

    dn_status dn_batchnorm_backward_infer_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const float *dy, const float *x, const float *running_mean,
        const float *running_var, const float *gamma, double eps,
        float *dx, float *dgamma, float *dbeta)
    dn_status dn_batchnorm_backward_infer_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout,
        const double *dy, const double *x, const double *running_mean,
        const double *running_var, const double *gamma, double eps,
        double *dx, double *dgamma, double *dbeta)

# ---- Dropout (the "Dropout" section of dropnorm.h) ----
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "dropnorm/dropnorm.h" nogil:
    ctypedef enum dn_dropout_mode:
        DN_DROPOUT_INVERTED
        DN_DROPOUT_CLASSIC

    void dn_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out)

    dn_status dn_dropout_mask(int64_t n, double p, uint64_t seed, uint64_t stream,
                              uint8_t *mask)

    dn_status dn_dropout_forward_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
        const float *x, double p, uint64_t seed, uint64_t stream,
        dn_dropout_mode mode, int training, float *y, uint8_t *mask)
    dn_status dn_dropout_forward_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
        const double *x, double p, uint64_t seed, uint64_t stream,
        dn_dropout_mode mode, int training, double *y, uint8_t *mask)

    dn_status dn_dropout_apply_mask_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
        const float *x, const uint8_t *mask, double p, dn_dropout_mode mode, float *y)
    dn_status dn_dropout_apply_mask_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
        const double *x, const uint8_t *mask, double p, dn_dropout_mode mode, double *y)

    dn_status dn_dropout_backward_f32(
        int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
        const float *dy, double p, uint64_t seed, uint64_t stream,
        dn_dropout_mode mode, const uint8_t *mask, float *dx)
    dn_status dn_dropout_backward_f64(
        int64_t n, int64_t c, int64_t s, dn_layout layout, int channelwise,
        const double *dy, double p, uint64_t seed, uint64_t stream,
        dn_dropout_mode mode, const uint8_t *mask, double *dx)
