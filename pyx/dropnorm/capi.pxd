# cython: language_level=3
# The C kernels of dropnorm for other Cython modules:
#
#     from dropnorm cimport capi
#
#     with nogil:
#         st = capi.dn_batchnorm_forward_train_f32(n, c, s, capi.DN_LAYOUT_NCS, x, ...)
#
# Each dn_* function here is the C API function of the same name (see
# dropnorm/dropnorm.h, `python -m dropnorm --includedir`, for each one's
# contract), `noexcept nogil`, reached through Cython's exported-function
# capsules (dropnorm.capi.__pyx_capi__) as scipy.linalg.cython_blas does: a
# module that cimports capi needs no include path and no link flags; it
# imports dropnorm.capi when it is loaded and calls the library inside that
# module. Status, layout and mode arguments are plain ints with the DN_*
# constants below (their values are pinned by the C API). Keep this file in
# step with libdropnorm.pxd and the header.
#
# The fused functions at the end (batchnorm_forward_train, ..., without the
# dn_ prefix and the _f32/_f64 suffix) pick the variant from the pointer type,
# float or double, at compile time.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

# Status codes (dn_status). The C names carry a prefix so they cannot clash
# with the header in a module that includes it too.
cdef enum:
    DN_OK "__pyx_dn_capi_OK" = 0
    DN_ERR_NULL_POINTER "__pyx_dn_capi_ERR_NULL_POINTER" = 1
    DN_ERR_BAD_SHAPE "__pyx_dn_capi_ERR_BAD_SHAPE" = 2
    DN_ERR_SIZE_OVERFLOW "__pyx_dn_capi_ERR_SIZE_OVERFLOW" = 3
    DN_ERR_BAD_LAYOUT "__pyx_dn_capi_ERR_BAD_LAYOUT" = 4
    DN_ERR_BAD_VALUE "__pyx_dn_capi_ERR_BAD_VALUE" = 5
    DN_ERR_BATCH_TOO_SMALL "__pyx_dn_capi_ERR_BATCH_TOO_SMALL" = 6
    DN_ERR_OUT_OF_MEMORY "__pyx_dn_capi_ERR_OUT_OF_MEMORY" = 7
    DN_ERR_BAD_MODE "__pyx_dn_capi_ERR_BAD_MODE" = 8

# Layouts (dn_layout) and dropout modes (dn_dropout_mode).
cdef enum:
    DN_LAYOUT_NCS "__pyx_dn_capi_LAYOUT_NCS" = 0
    DN_LAYOUT_NSC "__pyx_dn_capi_LAYOUT_NSC" = 1
cdef enum:
    DN_DROPOUT_INVERTED "__pyx_dn_capi_DROPOUT_INVERTED" = 0
    DN_DROPOUT_CLASSIC "__pyx_dn_capi_DROPOUT_CLASSIC" = 1

# ---- Library ----------------------------------------------------------------
cdef const char *dn_status_str(int status) noexcept nogil
cdef const char *dn_version() noexcept nogil
cdef int dn_version_number() noexcept nogil
cdef int dn_openmp_enabled() noexcept nogil
cdef int dn_get_max_threads() noexcept nogil
cdef int dn_set_num_threads(int n) noexcept nogil

# Raises the exception dropnorm's own functions raise for a status (needs
# the GIL): MemoryError for DN_ERR_OUT_OF_MEMORY, ValueError otherwise, with
# `where` and the status text. Returns 0 for DN_OK.
cdef int dn_check(int status, const char *where) except -1

# ---- Batch normalization ----------------------------------------------------
cdef int dn_batchnorm_forward_train_f32(
    int64_t n, int64_t c, int64_t s, int layout,
    const float *x, const float *gamma, const float *beta,
    double eps, double momentum, float *running_mean, float *running_var,
    float *y, float *save_mean, float *save_invstd) noexcept nogil
cdef int dn_batchnorm_forward_train_f64(
    int64_t n, int64_t c, int64_t s, int layout,
    const double *x, const double *gamma, const double *beta,
    double eps, double momentum, double *running_mean, double *running_var,
    double *y, double *save_mean, double *save_invstd) noexcept nogil

cdef int dn_batchnorm_forward_infer_f32(
    int64_t n, int64_t c, int64_t s, int layout,
    const float *x, const float *running_mean, const float *running_var,
    const float *gamma, const float *beta, double eps, float *y) noexcept nogil
cdef int dn_batchnorm_forward_infer_f64(
    int64_t n, int64_t c, int64_t s, int layout,
    const double *x, const double *running_mean, const double *running_var,
    const double *gamma, const double *beta, double eps, double *y) noexcept nogil

cdef int dn_batchnorm_backward_f32(
    int64_t n, int64_t c, int64_t s, int layout,
    const float *dy, const float *x, const float *save_mean, const float *save_invstd,
    const float *gamma, float *dx, float *dgamma, float *dbeta) noexcept nogil
cdef int dn_batchnorm_backward_f64(
    int64_t n, int64_t c, int64_t s, int layout,
    const double *dy, const double *x, const double *save_mean, const double *save_invstd,
    const double *gamma, double *dx, double *dgamma, double *dbeta) noexcept nogil

cdef int dn_batchnorm_backward_infer_f32(
    int64_t n, int64_t c, int64_t s, int layout,
    const float *dy, const float *x, const float *running_mean, const float *running_var,
    const float *gamma, double eps, float *dx, float *dgamma, float *dbeta) noexcept nogil
cdef int dn_batchnorm_backward_infer_f64(
    int64_t n, int64_t c, int64_t s, int layout,
    const double *dy, const double *x, const double *running_mean, const double *running_var,
    const double *gamma, double eps, double *dx, double *dgamma, double *dbeta) noexcept nogil

# ---- Dropout ----------------------------------------------------------------
cdef void dn_philox4x32_10(const uint32_t *ctr, const uint32_t *key,
                           uint32_t *out) noexcept nogil
cdef int dn_dropout_mask(int64_t n, double p, uint64_t seed, uint64_t stream,
                         uint8_t *mask) noexcept nogil

cdef int dn_dropout_forward_f32(
    int64_t n, int64_t c, int64_t s, int layout, int channelwise,
    const float *x, double p, uint64_t seed, uint64_t stream,
    int mode, int training, float *y, uint8_t *mask) noexcept nogil
cdef int dn_dropout_forward_f64(
    int64_t n, int64_t c, int64_t s, int layout, int channelwise,
    const double *x, double p, uint64_t seed, uint64_t stream,
    int mode, int training, double *y, uint8_t *mask) noexcept nogil

cdef int dn_dropout_apply_mask_f32(
    int64_t n, int64_t c, int64_t s, int layout, int channelwise,
    const float *x, const uint8_t *mask, double p, int mode, float *y) noexcept nogil
cdef int dn_dropout_apply_mask_f64(
    int64_t n, int64_t c, int64_t s, int layout, int channelwise,
    const double *x, const uint8_t *mask, double p, int mode, double *y) noexcept nogil

cdef int dn_dropout_backward_f32(
    int64_t n, int64_t c, int64_t s, int layout, int channelwise,
    const float *dy, double p, uint64_t seed, uint64_t stream,
    int mode, const uint8_t *mask, float *dx) noexcept nogil
cdef int dn_dropout_backward_f64(
    int64_t n, int64_t c, int64_t s, int layout, int channelwise,
    const double *dy, double p, uint64_t seed, uint64_t stream,
    int mode, const uint8_t *mask, double *dx) noexcept nogil

# ---- Fused over float and double (compiled into the cimporting module) -------
ctypedef fused dn_real:
    float
    double

cdef inline int batchnorm_forward_train(
        int64_t n, int64_t c, int64_t s, int layout,
        const dn_real *x, const dn_real *gamma, const dn_real *beta,
        double eps, double momentum, dn_real *running_mean, dn_real *running_var,
        dn_real *y, dn_real *save_mean, dn_real *save_invstd) noexcept nogil:
    if dn_real is float:
        return dn_batchnorm_forward_train_f32(n, c, s, layout, x, gamma, beta, eps, momentum,
                                              running_mean, running_var, y, save_mean,
                                              save_invstd)
    else:
        return dn_batchnorm_forward_train_f64(n, c, s, layout, x, gamma, beta, eps, momentum,
                                              running_mean, running_var, y, save_mean,
                                              save_invstd)

cdef inline int batchnorm_forward_infer(
        int64_t n, int64_t c, int64_t s, int layout,
        const dn_real *x, const dn_real *running_mean, const dn_real *running_var,
        const dn_real *gamma, const dn_real *beta, double eps, dn_real *y) noexcept nogil:
    if dn_real is float:
        return dn_batchnorm_forward_infer_f32(n, c, s, layout, x, running_mean, running_var,
                                              gamma, beta, eps, y)
    else:
        return dn_batchnorm_forward_infer_f64(n, c, s, layout, x, running_mean, running_var,
                                              gamma, beta, eps, y)

cdef inline int batchnorm_backward(
        int64_t n, int64_t c, int64_t s, int layout,
        const dn_real *dy, const dn_real *x, const dn_real *save_mean,
        const dn_real *save_invstd, const dn_real *gamma,
        dn_real *dx, dn_real *dgamma, dn_real *dbeta) noexcept nogil:
    if dn_real is float:
        return dn_batchnorm_backward_f32(n, c, s, layout, dy, x, save_mean, save_invstd,
                                         gamma, dx, dgamma, dbeta)
    else:
        return dn_batchnorm_backward_f64(n, c, s, layout, dy, x, save_mean, save_invstd,
                                         gamma, dx, dgamma, dbeta)

cdef inline int batchnorm_backward_infer(
        int64_t n, int64_t c, int64_t s, int layout,
        const dn_real *dy, const dn_real *x, const dn_real *running_mean,
        const dn_real *running_var, const dn_real *gamma, double eps,
        dn_real *dx, dn_real *dgamma, dn_real *dbeta) noexcept nogil:
    if dn_real is float:
        return dn_batchnorm_backward_infer_f32(n, c, s, layout, dy, x, running_mean,
                                               running_var, gamma, eps, dx, dgamma, dbeta)
    else:
        return dn_batchnorm_backward_infer_f64(n, c, s, layout, dy, x, running_mean,
                                               running_var, gamma, eps, dx, dgamma, dbeta)

cdef inline int dropout_forward(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const dn_real *x, double p, uint64_t seed, uint64_t stream,
        int mode, int training, dn_real *y, uint8_t *mask) noexcept nogil:
    if dn_real is float:
        return dn_dropout_forward_f32(n, c, s, layout, channelwise, x, p, seed, stream,
                                      mode, training, y, mask)
    else:
        return dn_dropout_forward_f64(n, c, s, layout, channelwise, x, p, seed, stream,
                                      mode, training, y, mask)

cdef inline int dropout_apply_mask(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const dn_real *x, const uint8_t *mask, double p, int mode, dn_real *y) noexcept nogil:
    if dn_real is float:
        return dn_dropout_apply_mask_f32(n, c, s, layout, channelwise, x, mask, p, mode, y)
    else:
        return dn_dropout_apply_mask_f64(n, c, s, layout, channelwise, x, mask, p, mode, y)

cdef inline int dropout_backward(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const dn_real *dy, double p, uint64_t seed, uint64_t stream,
        int mode, const uint8_t *mask, dn_real *dx) noexcept nogil:
    if dn_real is float:
        return dn_dropout_backward_f32(n, c, s, layout, channelwise, dy, p, seed, stream,
                                       mode, mask, dx)
    else:
        return dn_dropout_backward_f64(n, c, s, layout, channelwise, dy, p, seed, stream,
                                       mode, mask, dx)
