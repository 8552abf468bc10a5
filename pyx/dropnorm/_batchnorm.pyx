# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Batch normalization: typed-memoryview wrappers over the C kernels."""

from libc.stdint cimport int64_t

from dropnorm.libdropnorm cimport *
from dropnorm._spans cimport Spans, span, spans_overlap, spans_start

import numpy as np

from dropnorm._checks import (
    as_eps,
    as_momentum,
    as_tensor,
    as_vector,
    output_like,
    raise_overlap,
    same_tensor,
    tensor_extents,
    writable_vector,
)
from dropnorm._runtime import raise_status

# the exact in-place uses the C header allows (y == x; dx == dy or dx == x)
_OUT_IS_X = (("out", "x"),)
_OUT_IS_X_OR_DY = (("out", "x"), ("out", "dy"))

ctypedef fused floating:
    float
    double


cdef inline const floating *_in(const floating[::1] a) noexcept nogil:
    return NULL if a is None else &a[0]


cdef inline floating *_out(floating[::1] a) noexcept nogil:
    return NULL if a is None else &a[0]


cdef inline dn_layout _layout(bint channels_last) noexcept nogil:
    return DN_LAYOUT_NSC if channels_last else DN_LAYOUT_NCS


cdef inline size_t _nbytes(const floating[::1] a) noexcept nogil:
    return 0 if a is None else <size_t>a.shape[0] * sizeof(floating)


cdef _check_overlap(int written, names, int tensors, in_place,
                    const floating[::1] a0, const floating[::1] a1, const floating[::1] a2,
                    const floating[::1] a3, const floating[::1] a4, const floating[::1] a5):
    """ValueError (naming both) if one of the first ``written`` arrays shares
    a byte with another array, other than a tensor (bit k of ``tensors``:
    a<k> is one) that is exactly another tensor in one of the ``in_place``
    pairs; None arrays are absent."""
    cdef Spans sp
    spans_start(&sp, written)
    span(&sp, _in(a0), _nbytes(a0), tensors & 1)
    span(&sp, _in(a1), _nbytes(a1), tensors & 2)
    span(&sp, _in(a2), _nbytes(a2), tensors & 4)
    span(&sp, _in(a3), _nbytes(a3), tensors & 8)
    span(&sp, _in(a4), _nbytes(a4), tensors & 16)
    span(&sp, _in(a5), _nbytes(a5), tensors & 32)
    if spans_overlap(&sp):
        raise_overlap(names, written, in_place, a0, a1, a2, a3, a4, a5)


def _train(const floating[::1] x, const floating[::1] weight, const floating[::1] bias,
           floating[::1] running_mean, floating[::1] running_var,
           floating[::1] y, floating[::1] save_mean, floating[::1] save_invstd,
           int64_t n, int64_t c, int64_t s, bint channels_last, double eps, double momentum):
    cdef dn_status st
    _check_overlap(3, ("running_mean", "running_var", "out", "x", "weight", "bias"), 0b1100,
                   _OUT_IS_X, running_mean, running_var, y, x, weight, bias)
    with nogil:
        st = dn_batchnorm_forward_train(
            n, c, s, _layout(channels_last), &x[0], _in(weight), _in(bias), eps, momentum,
            _out(running_mean), _out(running_var), &y[0], &save_mean[0], &save_invstd[0])
    if st != DN_OK:
        raise_status(st, "batch_norm_train")


def _infer(const floating[::1] x, const floating[::1] running_mean,
           const floating[::1] running_var, const floating[::1] weight,
           const floating[::1] bias, floating[::1] y,
           int64_t n, int64_t c, int64_t s, bint channels_last, double eps):
    cdef dn_status st
    _check_overlap(1, ("out", "x", "running_mean", "running_var", "weight", "bias"), 0b11,
                   _OUT_IS_X, y, x, running_mean, running_var, weight, bias)
    with nogil:
        st = dn_batchnorm_forward_infer(
            n, c, s, _layout(channels_last), &x[0], &running_mean[0], &running_var[0],
            _in(weight), _in(bias), eps, &y[0])
    if st != DN_OK:
        raise_status(st, "batch_norm_infer")


def _backward(const floating[::1] dy, const floating[::1] x, const floating[::1] mean,
              const floating[::1] var, const floating[::1] weight, floating[::1] dx,
              floating[::1] dweight, floating[::1] dbias, int64_t n, int64_t c, int64_t s,
              bint channels_last, bint frozen, double eps, names):
    """Through batch statistics (mean, var: save_mean, save_invstd) or,
    frozen, through running ones (running_mean, running_var, eps); names:
    the six arguments' names for errors."""
    cdef dn_status st
    _check_overlap(1, names, 0b111, _OUT_IS_X_OR_DY, dx, dy, x, mean, var, weight)
    with nogil:
        if frozen:
            st = dn_batchnorm_backward_infer(
                n, c, s, _layout(channels_last), &dy[0], &x[0], &mean[0], &var[0],
                _in(weight), eps, &dx[0], &dweight[0], &dbias[0])
        else:
            st = dn_batchnorm_backward(
                n, c, s, _layout(channels_last), &dy[0], &x[0], &mean[0], &var[0],
                _in(weight), &dx[0], &dweight[0], &dbias[0])
    if st != DN_OK:
        raise_status(st, "batch_norm_infer_backward" if frozen else "batch_norm_backward")


def _flat(a):
    return None if a is None else a.reshape(-1)


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
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = x.dtype
    weight = as_vector("weight", weight, c, dt)
    bias = as_vector("bias", bias, c, dt)
    running_mean = writable_vector("running_mean", running_mean, c, dt)
    running_var = writable_vector("running_var", running_var, c, dt)
    eps = as_eps(eps)
    momentum = as_momentum(momentum)
    if n * s < 2:
        raise ValueError(
            f"x: training statistics need more than 1 value per channel, got shape {x.shape}")
    y = output_like("out", out, x)
    save_mean = np.empty(c, dt)
    save_invstd = np.empty(c, dt)
    _train(x.reshape(-1), weight, bias, running_mean, running_var, y.reshape(-1),
           save_mean, save_invstd, n, c, s, channels_last, eps, momentum)
    return y, save_mean, save_invstd


def batch_norm_infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5,
                     axis=1, out=None):
    """Batch normalization with frozen statistics (inference forward).

    y = a*x + b per channel with a = weight/sqrt(running_var + eps) and
    b = bias - running_mean*a, folded once per channel. Arguments as in
    batch_norm_train; running_mean and running_var are required and read only.
    """
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = x.dtype
    running_mean = as_vector("running_mean", running_mean, c, dt, optional=False)
    running_var = as_vector("running_var", running_var, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    bias = as_vector("bias", bias, c, dt)
    eps = as_eps(eps)
    y = output_like("out", out, x)
    _infer(x.reshape(-1), running_mean, running_var, weight, bias, y.reshape(-1),
           n, c, s, channels_last, eps)
    return y


def _backward_operands(dy, x, axis, statistics, weight, out):
    """The checked operands of a backward: x, dy, the per-channel statistics
    (a dict of name: value, required), weight, dx and (n, c, s,
    channels_last)."""
    x = as_tensor("x", x)
    extents = tensor_extents(x, axis)
    dy = same_tensor("dy", dy, x)
    stats = [as_vector(name, value, extents[1], x.dtype, optional=False)
             for name, value in statistics.items()]
    weight = as_vector("weight", weight, extents[1], x.dtype)
    return x, dy, stats, weight, output_like("out", out, x), extents


def _gradients(dy, x, axis, statistics, weight, out, frozen, eps):
    """(dx, dweight, dbias) through batch statistics or, frozen, through
    running ones with eps; statistics: the two per-channel arrays by name."""
    x, dy, (mean, var), weight, dx, extents = _backward_operands(
        dy, x, axis, statistics, weight, out)
    eps = as_eps(eps) if frozen else 0.0
    dweight = np.empty(extents[1], x.dtype)
    dbias = np.empty(extents[1], x.dtype)
    _backward(dy.reshape(-1), x.reshape(-1), mean, var, weight, dx.reshape(-1), dweight, dbias,
              *extents, frozen, eps, ("out", "dy", "x", *statistics, "weight"))
    return dx, dweight, dbias


def batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, axis=1, out=None):
    """Gradients of batch_norm_train: (dx, dweight, dbias).

    With xhat = (x - mean)*invstd: dbias = sum(dy), dweight = sum(dy*xhat),
    dx = weight*invstd/M * (M*dy - dbias - xhat*dweight). save_mean and
    save_invstd come from batch_norm_train on the same x; save_mean serves as
    a shift only (the exact batch mean is recovered from x). dweight and
    dbias are returned also when weight is None. out: where dx goes; it may
    be dy or x itself, and must not share memory with any other argument.
    """
    return _gradients(dy, x, axis, {"save_mean": save_mean, "save_invstd": save_invstd},
                      weight, out, False, 0.0)


def batch_norm_infer_backward(dy, x, running_mean, running_var, weight=None, eps=1e-5,
                              axis=1, out=None):
    """Gradients of batch_norm_infer (frozen statistics): (dx, dweight, dbias).

    dx = weight/sqrt(running_var + eps) * dy; dbias = sum(dy);
    dweight = sum(dy*(x - running_mean)/sqrt(running_var + eps)).
    """
    return _gradients(dy, x, axis, {"running_mean": running_mean, "running_var": running_var},
                      weight, out, True, eps)
