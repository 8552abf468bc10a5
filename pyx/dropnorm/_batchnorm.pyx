# cython: language_level=3
"""Batch normalization: wrappers over the C kernels."""

from libc.stdint cimport int64_t

cimport numpy as cnp

from dropnorm._checks cimport (
    as_eps,
    as_momentum,
    as_tensor,
    as_vector,
    output_like,
    same_tensor,
    tensor_extents,
    writable_vector,
)
from dropnorm._spans cimport Spans, spans_of
from dropnorm.libdropnorm cimport *

from dropnorm._runtime import raise_status

cnp.import_array()

# The arrays of each call as they go to spans_of, written ones first, and
# the exact in-place uses the C header allows (y == x; dx == dy or dx == x).
_TRAIN_NAMES = ("running_mean", "running_var", "out", "save_mean", "save_invstd",
                "x", "weight", "bias")
_INFER_NAMES = ("out", "x", "running_mean", "running_var", "weight", "bias")
_BACKWARD_NAMES = ("out", "dweight", "dbias", "dy", "x", "save_mean", "save_invstd", "weight")
_INFER_BACKWARD_NAMES = ("out", "dweight", "dbias", "dy", "x", "running_mean", "running_var",
                         "weight")
_OUT_IS_X = (("out", "x"),)
_OUT_IS_X_OR_DY = (("out", "x"), ("out", "dy"))

ctypedef fused floating:
    float
    double


cdef inline dn_layout _layout(bint channels_last) noexcept nogil:
    return DN_LAYOUT_NSC if channels_last else DN_LAYOUT_NCS


cdef inline cnp.ndarray _per_channel(int64_t c, cnp.ndarray x):
    """A new vector of c values of x's dtype."""
    cdef cnp.npy_intp shape = c
    return cnp.PyArray_EMPTY(1, &shape, cnp.PyArray_TYPE(x), 0)


# The C calls, one per kernel: x's pointer type (float or double) picks the
# C function; the other arrays are those of the Spans, in _TRAIN_NAMES or
# _INFER_NAMES order, or for the backward (out, dweight, dbias, dy, x, mean,
# var, weight).

cdef dn_status _train_c(const floating *x, const Spans *a, int64_t n, int64_t c, int64_t s,
                        bint channels_last, double eps, double momentum) noexcept nogil:
    return dn_batchnorm_forward_train(
        n, c, s, _layout(channels_last), x, <const floating *>a.data[6],
        <const floating *>a.data[7], eps, momentum, <floating *>a.data[0],
        <floating *>a.data[1], <floating *>a.data[2], <floating *>a.data[3],
        <floating *>a.data[4])


cdef dn_status _infer_c(const floating *x, const Spans *a, int64_t n, int64_t c, int64_t s,
                        bint channels_last, double eps) noexcept nogil:
    return dn_batchnorm_forward_infer(
        n, c, s, _layout(channels_last), x, <const floating *>a.data[2],
        <const floating *>a.data[3], <const floating *>a.data[4], <const floating *>a.data[5],
        eps, <floating *>a.data[0])


cdef dn_status _backward_c(const floating *x, const Spans *a, int64_t n, int64_t c, int64_t s,
                           bint channels_last, bint frozen, double eps) noexcept nogil:
    if frozen:
        return dn_batchnorm_backward_infer(
            n, c, s, _layout(channels_last), <const floating *>a.data[3], x,
            <const floating *>a.data[5], <const floating *>a.data[6],
            <const floating *>a.data[7], eps, <floating *>a.data[0], <floating *>a.data[1],
            <floating *>a.data[2])
    return dn_batchnorm_backward(
        n, c, s, _layout(channels_last), <const floating *>a.data[3], x,
        <const floating *>a.data[5], <const floating *>a.data[6], <const floating *>a.data[7],
        <floating *>a.data[0], <floating *>a.data[1], <floating *>a.data[2])


def batch_norm_train(x, weight=None, bias=None, running_mean=None, running_var=None,
                     momentum=0.1, eps=1e-5, axis=1, out=None):
    """Batch normalization with batch statistics (training forward).

    x is (N, C, *spatial) for axis=1 or (N, *spatial, C) for axis=-1, float32
    or float64; any number of spatial dimensions, including none. Per channel,
    over the M = N*prod(spatial) values: mean, biased variance var,
    invstd = 1/sqrt(var + eps), y = weight*(x - mean)*invstd + bias.

    running_mean / running_var, if given, are updated in place (PyTorch
    convention): r = (1 - momentum)*r + momentum*batch, with the unbiased
    variance var*M/(M-1). For a cumulative average over k batches pass
    momentum=1/k.

    out: an array like x to write y into; it may be x itself (in place).
    Every array written (out, running_mean, running_var) must not share
    memory with any other argument (ValueError), except out with x exactly.
    Non-contiguous, misaligned or byte-swapped (e.g. ``>f4``) read-only
    inputs are copied; arrays written in place must be C-contiguous, aligned
    and of native byte order.

    eps (finite, >= 0) and momentum (in [0, 1]) are real numbers: int,
    float or a NumPy integer/floating scalar; bool, str, None and complex
    raise TypeError.

    Returns (y, save_mean, save_invstd), all of x's dtype, for
    batch_norm_backward.
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c, momentum_c
    cdef dn_status st
    cdef bint f64
    cdef Spans a
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = (<cnp.ndarray>x).descr
    weight = as_vector("weight", weight, c, dt)
    bias = as_vector("bias", bias, c, dt)
    running_mean = writable_vector("running_mean", running_mean, c, dt)
    running_var = writable_vector("running_var", running_var, c, dt)
    eps_c = as_eps(eps)
    momentum_c = as_momentum(momentum)
    if n * s < 2:
        raise ValueError(
            f"x: training statistics need more than 1 value per channel, got shape {x.shape}")
    y = output_like("out", out, x)
    save_mean = _per_channel(c, x)
    save_invstd = _per_channel(c, x)
    spans_of(&a, (running_mean, running_var, y, save_mean, save_invstd, x, weight, bias), 5,
             0b100100, _TRAIN_NAMES, _OUT_IS_X)
    f64 = cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_DOUBLE
    with nogil:
        if f64:
            st = _train_c(<const double *>a.data[5], &a, n, c, s, channels_last, eps_c,
                          momentum_c)
        else:
            st = _train_c(<const float *>a.data[5], &a, n, c, s, channels_last, eps_c,
                          momentum_c)
    if st != DN_OK:
        raise_status(st, "batch_norm_train")
    return y, save_mean, save_invstd


def batch_norm_infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5,
                     axis=1, out=None):
    """Batch normalization with frozen statistics (inference forward).

    y = a*x + b per channel with a = weight/sqrt(running_var + eps) and
    b = bias - running_mean*a, folded once per channel. running_mean and
    running_var are required and read only. x, weight, bias, eps, axis and
    out as in batch_norm_train (out may be x itself).

    Returns y, of x's dtype.
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c
    cdef dn_status st
    cdef bint f64
    cdef Spans a
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = (<cnp.ndarray>x).descr
    running_mean = as_vector("running_mean", running_mean, c, dt, optional=False)
    running_var = as_vector("running_var", running_var, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    bias = as_vector("bias", bias, c, dt)
    eps_c = as_eps(eps)
    y = output_like("out", out, x)
    spans_of(&a, (y, x, running_mean, running_var, weight, bias), 1, 0b11, _INFER_NAMES,
             _OUT_IS_X)
    f64 = cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_DOUBLE
    with nogil:
        if f64:
            st = _infer_c(<const double *>a.data[1], &a, n, c, s, channels_last, eps_c)
        else:
            st = _infer_c(<const float *>a.data[1], &a, n, c, s, channels_last, eps_c)
    if st != DN_OK:
        raise_status(st, "batch_norm_infer")
    return y


cdef tuple _gradients(dy, x, axis, mean, var, weight, out, bint frozen, eps, tuple names):
    """(dx, dweight, dbias) through batch statistics (mean, var: save_mean,
    save_invstd) or, frozen, through running ones (running_mean,
    running_var, eps); names: the arguments' names (out, dweight, dbias, dy,
    x, mean, var, weight) for errors."""
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c = 0.0
    cdef dn_status st
    cdef bint f64
    cdef Spans a
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = (<cnp.ndarray>x).descr
    dy = same_tensor("dy", dy, x)
    mean = as_vector(names[5], mean, c, dt, optional=False)
    var = as_vector(names[6], var, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    dx = output_like("out", out, x)
    if frozen:
        eps_c = as_eps(eps)
    dweight = _per_channel(c, x)
    dbias = _per_channel(c, x)
    spans_of(&a, (dx, dweight, dbias, dy, x, mean, var, weight), 3, 0b11001, names,
             _OUT_IS_X_OR_DY)
    f64 = cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_DOUBLE
    with nogil:
        if f64:
            st = _backward_c(<const double *>a.data[4], &a, n, c, s, channels_last, frozen,
                             eps_c)
        else:
            st = _backward_c(<const float *>a.data[4], &a, n, c, s, channels_last, frozen,
                             eps_c)
    if st != DN_OK:
        raise_status(st, "batch_norm_infer_backward" if frozen else "batch_norm_backward")
    return dx, dweight, dbias


def batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, axis=1, out=None):
    """Gradients of batch_norm_train: (dx, dweight, dbias).

    With xhat = (x - mean)*invstd: dbias = sum(dy), dweight = sum(dy*xhat),
    dx = weight*invstd/M * (M*dy - dbias - xhat*dweight). save_mean and
    save_invstd come from batch_norm_train on the same x; save_mean serves as
    a shift only (the exact batch mean is recovered from x). dweight and
    dbias are returned also when weight is None. axis: the forward's channel
    axis (1 or -1). out: where dx goes; it may be dy or x itself, and must
    not share memory with any other argument.
    """
    return _gradients(dy, x, axis, save_mean, save_invstd, weight, out, False, 0.0,
                      _BACKWARD_NAMES)


def batch_norm_infer_backward(dy, x, running_mean, running_var, weight=None, eps=1e-5,
                              axis=1, out=None):
    """Gradients of batch_norm_infer (frozen statistics): (dx, dweight, dbias).

    dx = weight/sqrt(running_var + eps) * dy; dbias = sum(dy);
    dweight = sum(dy*(x - running_mean)/sqrt(running_var + eps)).
    running_mean, running_var, weight, eps and axis: the forward's. out:
    where dx goes; it may be dy or x itself.
    """
    return _gradients(dy, x, axis, running_mean, running_var, weight, out, True, eps,
                      _INFER_BACKWARD_NAMES)
