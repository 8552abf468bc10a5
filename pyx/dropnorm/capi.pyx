# cython: language_level=3
"""The C kernels of dropnorm, exported to other Cython modules.

``from dropnorm cimport capi`` in a .pyx gives the dn_* functions declared in
capi.pxd as ``noexcept nogil`` C functions, through the function capsules in
``dropnorm.capi.__pyx_capi__`` (as scipy.linalg.cython_blas): no header path
and no link flags for the user. Each one calls the C library linked into this
module; see dropnorm/dropnorm.h for the contracts.
"""

cimport dropnorm.libdropnorm as lib
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from dropnorm._runtime import raise_status

# The constants in capi.pxd are copies of the header's pinned values.
assert (DN_OK, DN_ERR_NULL_POINTER, DN_ERR_BAD_SHAPE, DN_ERR_SIZE_OVERFLOW,
        DN_ERR_BAD_LAYOUT, DN_ERR_BAD_VALUE, DN_ERR_BATCH_TOO_SMALL,
        DN_ERR_OUT_OF_MEMORY, DN_ERR_BAD_MODE) == (
    lib.DN_OK, lib.DN_ERR_NULL_POINTER, lib.DN_ERR_BAD_SHAPE, lib.DN_ERR_SIZE_OVERFLOW,
    lib.DN_ERR_BAD_LAYOUT, lib.DN_ERR_BAD_VALUE, lib.DN_ERR_BATCH_TOO_SMALL,
    lib.DN_ERR_OUT_OF_MEMORY, lib.DN_ERR_BAD_MODE)
assert (DN_LAYOUT_NCS, DN_LAYOUT_NSC) == (lib.DN_LAYOUT_NCS, lib.DN_LAYOUT_NSC)
assert (DN_DROPOUT_INVERTED, DN_DROPOUT_CLASSIC) == (
    lib.DN_DROPOUT_INVERTED, lib.DN_DROPOUT_CLASSIC)


# ---- Library ------------------------------------------------------------------
cdef const char *dn_status_str(int status) noexcept nogil:
    return lib.dn_status_str(<lib.dn_status>status)

cdef const char *dn_version() noexcept nogil:
    return lib.dn_version()

cdef int dn_version_number() noexcept nogil:
    return lib.dn_version_number()

cdef int dn_openmp_enabled() noexcept nogil:
    return lib.dn_openmp_enabled()

cdef int dn_get_max_threads() noexcept nogil:
    return lib.dn_get_max_threads()

cdef int dn_set_num_threads(int n) noexcept nogil:
    return lib.dn_set_num_threads(n)

cdef int dn_check(int status, const char *where) except -1:
    if status != DN_OK:
        raise_status(status, where.decode())
    return 0


# ---- Batch normalization ------------------------------------------------------
cdef int dn_batchnorm_forward_train_f32(
        int64_t n, int64_t c, int64_t s, int layout,
        const float *x, const float *gamma, const float *beta,
        double eps, double momentum, float *running_mean, float *running_var,
        float *y, float *save_mean, float *save_invstd) noexcept nogil:
    return lib.dn_batchnorm_forward_train_f32(
        n, c, s, <lib.dn_layout>layout, x, gamma, beta, eps, momentum,
        running_mean, running_var, y, save_mean, save_invstd)

cdef int dn_batchnorm_forward_train_f64(
        int64_t n, int64_t c, int64_t s, int layout,
        const double *x, const double *gamma, const double *beta,
        double eps, double momentum, double *running_mean, double *running_var,
        double *y, double *save_mean, double *save_invstd) noexcept nogil:
    return lib.dn_batchnorm_forward_train_f64(
        n, c, s, <lib.dn_layout>layout, x, gamma, beta, eps, momentum,
        running_mean, running_var, y, save_mean, save_invstd)

cdef int dn_batchnorm_forward_infer_f32(
        int64_t n, int64_t c, int64_t s, int layout,
        const float *x, const float *running_mean, const float *running_var,
        const float *gamma, const float *beta, double eps, float *y) noexcept nogil:
    return lib.dn_batchnorm_forward_infer_f32(
        n, c, s, <lib.dn_layout>layout, x, running_mean, running_var, gamma, beta, eps, y)

cdef int dn_batchnorm_forward_infer_f64(
        int64_t n, int64_t c, int64_t s, int layout,
        const double *x, const double *running_mean, const double *running_var,
        const double *gamma, const double *beta, double eps, double *y) noexcept nogil:
    return lib.dn_batchnorm_forward_infer_f64(
        n, c, s, <lib.dn_layout>layout, x, running_mean, running_var, gamma, beta, eps, y)

cdef int dn_batchnorm_backward_f32(
        int64_t n, int64_t c, int64_t s, int layout,
        const float *dy, const float *x, const float *save_mean, const float *save_invstd,
        const float *gamma, float *dx, float *dgamma, float *dbeta) noexcept nogil:
    return lib.dn_batchnorm_backward_f32(
        n, c, s, <lib.dn_layout>layout, dy, x, save_mean, save_invstd, gamma, dx, dgamma, dbeta)

cdef int dn_batchnorm_backward_f64(
        int64_t n, int64_t c, int64_t s, int layout,
        const double *dy, const double *x, const double *save_mean, const double *save_invstd,
        const double *gamma, double *dx, double *dgamma, double *dbeta) noexcept nogil:
    return lib.dn_batchnorm_backward_f64(
        n, c, s, <lib.dn_layout>layout, dy, x, save_mean, save_invstd, gamma, dx, dgamma, dbeta)

cdef int dn_batchnorm_backward_infer_f32(
        int64_t n, int64_t c, int64_t s, int layout,
        const float *dy, const float *x, const float *running_mean, const float *running_var,
        const float *gamma, double eps, float *dx, float *dgamma, float *dbeta) noexcept nogil:
    return lib.dn_batchnorm_backward_infer_f32(
        n, c, s, <lib.dn_layout>layout, dy, x, running_mean, running_var, gamma, eps,
        dx, dgamma, dbeta)

cdef int dn_batchnorm_backward_infer_f64(
        int64_t n, int64_t c, int64_t s, int layout,
        const double *dy, const double *x, const double *running_mean, const double *running_var,
        const double *gamma, double eps, double *dx, double *dgamma, double *dbeta) noexcept nogil:
    return lib.dn_batchnorm_backward_infer_f64(
        n, c, s, <lib.dn_layout>layout, dy, x, running_mean, running_var, gamma, eps,
        dx, dgamma, dbeta)


# ---- Dropout ------------------------------------------------------------------
cdef void dn_philox4x32_10(const uint32_t *ctr, const uint32_t *key,
                           uint32_t *out) noexcept nogil:
    lib.dn_philox4x32_10(ctr, key, out)

cdef int dn_dropout_mask(int64_t n, double p, uint64_t seed, uint64_t stream,
                         uint8_t *mask) noexcept nogil:
    return lib.dn_dropout_mask(n, p, seed, stream, mask)

cdef int dn_dropout_forward_f32(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const float *x, double p, uint64_t seed, uint64_t stream,
        int mode, int training, float *y, uint8_t *mask) noexcept nogil:
    return lib.dn_dropout_forward_f32(
        n, c, s, <lib.dn_layout>layout, channelwise, x, p, seed, stream,
        <lib.dn_dropout_mode>mode, training, y, mask)

cdef int dn_dropout_forward_f64(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const double *x, double p, uint64_t seed, uint64_t stream,
        int mode, int training, double *y, uint8_t *mask) noexcept nogil:
    return lib.dn_dropout_forward_f64(
        n, c, s, <lib.dn_layout>layout, channelwise, x, p, seed, stream,
        <lib.dn_dropout_mode>mode, training, y, mask)

cdef int dn_dropout_apply_mask_f32(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const float *x, const uint8_t *mask, double p, int mode, float *y) noexcept nogil:
    return lib.dn_dropout_apply_mask_f32(
        n, c, s, <lib.dn_layout>layout, channelwise, x, mask, p, <lib.dn_dropout_mode>mode, y)

cdef int dn_dropout_apply_mask_f64(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const double *x, const uint8_t *mask, double p, int mode, double *y) noexcept nogil:
    return lib.dn_dropout_apply_mask_f64(
        n, c, s, <lib.dn_layout>layout, channelwise, x, mask, p, <lib.dn_dropout_mode>mode, y)

cdef int dn_dropout_backward_f32(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const float *dy, double p, uint64_t seed, uint64_t stream,
        int mode, const uint8_t *mask, float *dx) noexcept nogil:
    return lib.dn_dropout_backward_f32(
        n, c, s, <lib.dn_layout>layout, channelwise, dy, p, seed, stream,
        <lib.dn_dropout_mode>mode, mask, dx)

cdef int dn_dropout_backward_f64(
        int64_t n, int64_t c, int64_t s, int layout, int channelwise,
        const double *dy, double p, uint64_t seed, uint64_t stream,
        int mode, const uint8_t *mask, double *dx) noexcept nogil:
    return lib.dn_dropout_backward_f64(
        n, c, s, <lib.dn_layout>layout, channelwise, dy, p, seed, stream,
        <lib.dn_dropout_mode>mode, mask, dx)
