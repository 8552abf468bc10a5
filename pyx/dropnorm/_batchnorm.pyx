# cython: language_level=3
"""Batch normalization: wrappers over the C kernels."""

from libc.stdint cimport int64_t, uint16_t

cimport numpy as cnp

from dropnorm._checks cimport (
    as_eps,
    as_momentum,
    as_tensor,
    as_vector,
    output_like,
    param_dtype,
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


cdef inline cnp.ndarray _per_channel(int64_t c, cnp.dtype dt):
    """A new vector of c values of the per-channel dtype dt."""
    cdef cnp.npy_intp shape = c
    return cnp.PyArray_EMPTY(1, &shape, dt.type_num, 0)


cdef inline bint _is_bf16(int typ) noexcept nogil:
    """For the type number of a checked tensor of a half type: bfloat16 (a
    type number NumPy gives ml_dtypes at run time), or float16."""
    return typ != cnp.NPY_FLOAT16


# The C calls, one per kernel: x's pointer type (float or double) picks the
# C function; the other arrays are those of the Spans, in _TRAIN_NAMES or
# _INFER_NAMES order, or for the backward (out, dweight, dbias, dy, x, mean,
# var, weight). The half types (uint16_t tensors, float per-channel arrays)
# have their own (_train_h, ...): bf16 picks _bf16 or _f16.

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


cdef dn_status _train_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                        bint channels_last, double eps, double momentum) noexcept nogil:
    return dn_batchnorm_forward_train_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[5],
        <const float *>a.data[6], <const float *>a.data[7], eps, momentum, <float *>a.data[0],
        <float *>a.data[1], <uint16_t *>a.data[2], <float *>a.data[3], <float *>a.data[4])


cdef dn_status _infer_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                        bint channels_last, double eps) noexcept nogil:
    return dn_batchnorm_forward_infer_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[1],
        <const float *>a.data[2], <const float *>a.data[3], <const float *>a.data[4],
        <const float *>a.data[5], eps, <uint16_t *>a.data[0])


cdef dn_status _backward_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                           bint channels_last, bint frozen, double eps) noexcept nogil:
    if frozen:
        return dn_batchnorm_backward_infer_half(
            bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[3],
            <const uint16_t *>a.data[4], <const float *>a.data[5], <const float *>a.data[6],
            <const float *>a.data[7], eps, <uint16_t *>a.data[0], <float *>a.data[1],
            <float *>a.data[2])
    return dn_batchnorm_backward_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[3],
        <const uint16_t *>a.data[4], <const float *>a.data[5], <const float *>a.data[6],
        <const float *>a.data[7], <uint16_t *>a.data[0], <float *>a.data[1], <float *>a.data[2])


def batch_norm_train(x, weight=None, bias=None, running_mean=None, running_var=None,
                     momentum=0.1, eps=1e-5, axis=1, out=None):
    """Batch normalization with batch statistics (training forward).

    x is (N, C, *spatial) for axis=1 or (N, *spatial, C) for axis=-1, float32
    or float64; any number of spatial dimensions, including none. Per channel,
    over the M = N*prod(spatial) values: mean, biased variance var,
    invstd = 1/sqrt(var + eps), y = weight*(x - mean)*invstd + bias.

    x may also be float16 or bfloat16 (ml_dtypes.bfloat16): half precision,
    computed in float32 as for float32 and rounded once to x's dtype; then
    weight, bias, the running statistics, save_mean and save_invstd are
    float32 (PyTorch's mixed precision).

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

    Returns (y, save_mean, save_invstd), for batch_norm_backward: y of x's
    dtype, save_mean and save_invstd of x's (float32 for a half type).
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c, momentum_c
    cdef dn_status st
    cdef int typ
    cdef Spans a
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = param_dtype(x)
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
    save_mean = _per_channel(c, dt)
    save_invstd = _per_channel(c, dt)
    spans_of(&a, (running_mean, running_var, y, save_mean, save_invstd, x, weight, bias), 5,
             0b100100, _TRAIN_NAMES, _OUT_IS_X)
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    with nogil:
        if typ == cnp.NPY_DOUBLE:
            st = _train_c(<const double *>a.data[5], &a, n, c, s, channels_last, eps_c,
                          momentum_c)
        elif typ == cnp.NPY_FLOAT:
            st = _train_c(<const float *>a.data[5], &a, n, c, s, channels_last, eps_c,
                          momentum_c)
        else:
            st = _train_h(_is_bf16(typ), &a, n, c, s, channels_last, eps_c, momentum_c)
    if st != DN_OK:
        raise_status(st, "batch_norm_train")
    return y, save_mean, save_invstd


def batch_norm_infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5,
                     axis=1, out=None):
    """Batch normalization with frozen statistics (inference forward).

    y = a*x + b per channel with a = weight/sqrt(running_var + eps) and
    b = bias - running_mean*a, folded once per channel. running_mean and
    running_var are required and read only (float32, as weight and bias, for a
    float16 or bfloat16 x). x, weight, bias, eps, axis and out as in
    batch_norm_train (out may be x itself).

    Returns y, of x's dtype.
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c
    cdef dn_status st
    cdef int typ
    cdef Spans a
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = param_dtype(x)
    running_mean = as_vector("running_mean", running_mean, c, dt, optional=False)
    running_var = as_vector("running_var", running_var, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    bias = as_vector("bias", bias, c, dt)
    eps_c = as_eps(eps)
    y = output_like("out", out, x)
    spans_of(&a, (y, x, running_mean, running_var, weight, bias), 1, 0b11, _INFER_NAMES,
             _OUT_IS_X)
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    with nogil:
        if typ == cnp.NPY_DOUBLE:
            st = _infer_c(<const double *>a.data[1], &a, n, c, s, channels_last, eps_c)
        elif typ == cnp.NPY_FLOAT:
            st = _infer_c(<const float *>a.data[1], &a, n, c, s, channels_last, eps_c)
        else:
            st = _infer_h(_is_bf16(typ), &a, n, c, s, channels_last, eps_c)
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
    cdef int typ
    cdef Spans a
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = param_dtype(x)
    dy = same_tensor("dy", dy, x)
    mean = as_vector(names[5], mean, c, dt, optional=False)
    var = as_vector(names[6], var, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    dx = output_like("out", out, x)
    if frozen:
        eps_c = as_eps(eps)
    dweight = _per_channel(c, dt)
    dbias = _per_channel(c, dt)
    spans_of(&a, (dx, dweight, dbias, dy, x, mean, var, weight), 3, 0b11001, names,
             _OUT_IS_X_OR_DY)
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    with nogil:
        if typ == cnp.NPY_DOUBLE:
            st = _backward_c(<const double *>a.data[4], &a, n, c, s, channels_last, frozen,
                             eps_c)
        elif typ == cnp.NPY_FLOAT:
            st = _backward_c(<const float *>a.data[4], &a, n, c, s, channels_last, frozen,
                             eps_c)
        else:
            st = _backward_h(_is_bf16(typ), &a, n, c, s, channels_last, frozen, eps_c)
    if st != DN_OK:
        raise_status(st, "batch_norm_infer_backward" if frozen else "batch_norm_backward")
    return dx, dweight, dbias


def batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, axis=1, out=None):
    """Gradients of batch_norm_train: (dx, dweight, dbias).

    With xhat = (x - mean)*invstd: dbias = sum(dy), dweight = sum(dy*xhat),
    dx = weight*invstd/M * (M*dy - dbias - xhat*dweight). save_mean and
    save_invstd come from batch_norm_train on the same x; save_mean serves as
    a shift only (the exact batch mean is recovered from x). dweight and
    dbias are returned also when weight is None (float32 for a float16 or
    bfloat16 x, whose dx is rounded once to its dtype). axis: the forward's
    channel axis (1 or -1). out: where dx goes; it may be dy or x itself, and
    must not share memory with any other argument.
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
