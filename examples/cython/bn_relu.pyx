# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""A user's own layer on dropnorm's C kernels: batch norm fused with ReLU.

Nothing here needs dropnorm's header or library: ``from dropnorm cimport
capi`` brings the kernels as ``noexcept nogil`` C functions through function
capsules, and the module imports ``dropnorm.capi`` when it is loaded.
Build: ``python setup.py build_ext --inplace`` (see setup.py).

Tensors are C-contiguous (N, C, S) arrays, channels first, float32 or
float64 (one compiled variant each: capi.dn_real is a fused type).
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t

from dropnorm cimport capi

import numpy as np


def version():
    """The version of the dropnorm C library this module calls."""
    return capi.dn_version().decode()


def _outputs(n, c, s, dtype):
    """An (n, c, s) tensor and two per-channel vectors to write into."""
    return np.empty((n, c, s), dtype), np.empty(c, dtype), np.empty(c, dtype)


def bn_relu_train(const capi.dn_real[:, :, ::1] x, const capi.dn_real[::1] gamma,
                  const capi.dn_real[::1] beta, double eps=1e-5):
    """y = max(0, batch_norm(x)) with batch statistics.

    Returns (y, save_mean, save_invstd), the last two for bn_relu_backward."""
    cdef int64_t n = x.shape[0], c = x.shape[1], s = x.shape[2], i, total = n * c * s
    y_arr, mean_arr, invstd_arr = _outputs(
        n, c, s, np.float32 if capi.dn_real is float else np.float64)
    cdef capi.dn_real[:, :, ::1] y = y_arr
    cdef capi.dn_real[::1] mean = mean_arr, invstd = invstd_arr
    cdef capi.dn_real *out = &y[0, 0, 0]
    cdef int st
    with nogil:
        st = capi.batchnorm_forward_train(n, c, s, capi.DN_LAYOUT_NCS, &x[0, 0, 0],
                                          &gamma[0], &beta[0], eps, 0.0, NULL, NULL,
                                          out, &mean[0], &invstd[0])
        if st == capi.DN_OK:
            for i in range(total):  # the fused ReLU, in place
                if out[i] < 0:
                    out[i] = 0
    capi.dn_check(st, b"bn_relu_train")
    return y_arr, mean_arr, invstd_arr


def bn_relu_backward(const capi.dn_real[:, :, ::1] dy, const capi.dn_real[:, :, ::1] x,
                     const capi.dn_real[:, :, ::1] y, const capi.dn_real[::1] save_mean,
                     const capi.dn_real[::1] save_invstd, const capi.dn_real[::1] gamma):
    """Gradients of bn_relu_train: (dx, dgamma, dbeta). y is its output."""
    cdef int64_t n = x.shape[0], c = x.shape[1], s = x.shape[2], i, total = n * c * s
    cdef const capi.dn_real *yy = &y[0, 0, 0]
    cdef const capi.dn_real *d = &dy[0, 0, 0]
    cdef int st
    dx_arr, dgamma_arr, dbeta_arr = _outputs(
        n, c, s, np.float32 if capi.dn_real is float else np.float64)
    cdef capi.dn_real[:, :, ::1] dx = dx_arr
    cdef capi.dn_real[::1] dgamma = dgamma_arr, dbeta = dbeta_arr
    cdef capi.dn_real *g = &dx[0, 0, 0]
    with nogil:
        for i in range(total):  # back through the ReLU: the gradient where y > 0
            g[i] = d[i] if yy[i] > 0 else 0
        st = capi.batchnorm_backward(n, c, s, capi.DN_LAYOUT_NCS, g, &x[0, 0, 0],
                                     &save_mean[0], &save_invstd[0], &gamma[0],
                                     g, &dgamma[0], &dbeta[0])
    capi.dn_check(st, b"bn_relu_backward")
    return dx_arr, dgamma_arr, dbeta_arr


def dropout(const capi.dn_real[::1] x, double p, uint64_t seed, uint64_t stream=0):
    """Inverted dropout of a 1-d array: (y, packed keep mask)."""
    cdef int64_t count = x.shape[0]
    dtype = np.float32 if capi.dn_real is float else np.float64
    y_arr = np.empty(count, dtype)
    mask_arr = np.empty((count + 7) // 8, np.uint8)
    cdef capi.dn_real[::1] y = y_arr
    cdef uint8_t[::1] mask = mask_arr
    cdef int st
    with nogil:
        st = capi.dropout_forward(count, 1, 1, capi.DN_LAYOUT_NCS, 0, &x[0], p, seed, stream,
                                  capi.DN_DROPOUT_INVERTED, 1, &y[0], &mask[0])
    capi.dn_check(st, b"dropout")
    return y_arr, mask_arr


def status_text(int status):
    """The C library's text for a status code."""
    return capi.dn_status_str(status).decode()
