# cython: language_level=3
"""Batch normalization: wrappers over the C kernels."""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint64_t

cimport numpy as cnp

from dropnorm._checks cimport (
    as_activation,
    as_eps,
    as_flag,
    as_mask,
    as_momentum,
    as_probability,
    as_uint,
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

from dropnorm._dropout import draw_seed
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
# The fused blocks (residual, activation, dropout): y may also be the residual
# itself; the backward's dx may be dy only (its gradient at bn's output goes
# into dx or d_residual before x is read again).
_TRAIN_FUSED_NAMES = ("running_mean", "running_var", "out", "save_mean", "save_invstd", "mask",
                      "x", "residual", "weight", "bias")
_INFER_FUSED_NAMES = ("out", "x", "residual", "running_mean", "running_var", "weight", "bias")
_BACKWARD_FUSED_NAMES = ("out", "dweight", "dbias", "d_residual", "dy", "x", "y", "mask",
                         "save_mean", "save_invstd", "weight")
_OUT_IS_X_OR_RESIDUAL = (("out", "x"), ("out", "residual"))
_OUT_IS_DY = (("out", "dy"),)

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


# The fused blocks' C calls; the arrays in _TRAIN_FUSED_NAMES,
# _INFER_FUSED_NAMES and _BACKWARD_FUSED_NAMES order.

cdef struct Fusion:
    dn_activation activation
    double p
    uint64_t seed, stream


cdef dn_status _train_fused_c(const floating *x, const Spans *a, int64_t n, int64_t c,
                              int64_t s, bint channels_last, double eps, double momentum,
                              const Fusion *f) noexcept nogil:
    return dn_batchnorm_forward_train_fused(
        n, c, s, _layout(channels_last), x, <const floating *>a.data[7],
        <const floating *>a.data[8], <const floating *>a.data[9], eps, momentum,
        <floating *>a.data[0], <floating *>a.data[1], f.activation, f.p, f.seed, f.stream,
        <floating *>a.data[2], <floating *>a.data[3], <floating *>a.data[4],
        <uint8_t *>a.data[5])


cdef dn_status _train_fused_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                              bint channels_last, double eps, double momentum,
                              const Fusion *f) noexcept nogil:
    return dn_batchnorm_forward_train_fused_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[6],
        <const uint16_t *>a.data[7], <const float *>a.data[8], <const float *>a.data[9], eps,
        momentum, <float *>a.data[0], <float *>a.data[1], f.activation, f.p, f.seed, f.stream,
        <uint16_t *>a.data[2], <float *>a.data[3], <float *>a.data[4], <uint8_t *>a.data[5])


cdef dn_status _infer_fused_c(const floating *x, const Spans *a, int64_t n, int64_t c,
                              int64_t s, bint channels_last, double eps,
                              dn_activation act) noexcept nogil:
    return dn_batchnorm_forward_infer_fused(
        n, c, s, _layout(channels_last), x, <const floating *>a.data[2],
        <const floating *>a.data[3], <const floating *>a.data[4], <const floating *>a.data[5],
        <const floating *>a.data[6], eps, act, <floating *>a.data[0])


cdef dn_status _infer_fused_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                              bint channels_last, double eps, dn_activation act) noexcept nogil:
    return dn_batchnorm_forward_infer_fused_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[1],
        <const uint16_t *>a.data[2], <const float *>a.data[3], <const float *>a.data[4],
        <const float *>a.data[5], <const float *>a.data[6], eps, act, <uint16_t *>a.data[0])


cdef dn_status _backward_fused_c(const floating *x, const Spans *a, int64_t n, int64_t c,
                                 int64_t s, bint channels_last, const Fusion *f) noexcept nogil:
    return dn_batchnorm_backward_fused(
        n, c, s, _layout(channels_last), <const floating *>a.data[4], x,
        <const floating *>a.data[6], <const uint8_t *>a.data[7], <const floating *>a.data[8],
        <const floating *>a.data[9], <const floating *>a.data[10], f.activation, f.p, f.seed,
        f.stream, <floating *>a.data[0], <floating *>a.data[1], <floating *>a.data[2],
        <floating *>a.data[3])


cdef dn_status _backward_fused_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                                 bint channels_last, const Fusion *f) noexcept nogil:
    return dn_batchnorm_backward_fused_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[4],
        <const uint16_t *>a.data[5], <const uint16_t *>a.data[6], <const uint8_t *>a.data[7],
        <const float *>a.data[8], <const float *>a.data[9], <const float *>a.data[10],
        f.activation, f.p, f.seed, f.stream, <uint16_t *>a.data[0], <float *>a.data[1],
        <float *>a.data[2], <uint16_t *>a.data[3])


cdef inline cnp.ndarray _mask_for(x):
    """A new packed mask of x.size bits."""
    cdef cnp.npy_intp nbytes = (cnp.PyArray_SIZE(<cnp.ndarray>x) + 7) // 8
    return cnp.PyArray_EMPTY(1, &nbytes, cnp.NPY_UINT8, 0)


def batch_norm_train(x, weight=None, bias=None, running_mean=None, running_var=None,
                     momentum=0.1, eps=1e-5, axis=1, out=None, residual=None, activation=None,
                     dropout=0.0, seed=None, stream=None, return_mask=False):
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

    Fused block (one pass over the tensor, bit for bit the separate steps):
    y = dropout(activation(bn(x) + residual)), i.e. exactly
    ``dropnorm.dropout(np.maximum(batch_norm_train(x)[0] + residual, 0),
    dropout, seed=seed, stream=stream)`` (the add in x's dtype: float32
    arithmetic rounded once for a half type, as NumPy and ml_dtypes add).

    residual: an array of x's shape and dtype added after the normalisation,
      or None. out may be residual itself.
    activation: None or "relu" (max(t, 0); -0 gives +0, NaN stays NaN).
    dropout: drop probability in [0, 1] (0: none), inverted dropout with
      dropnorm.dropout's mask rule: decision i for flat element i of x.
    seed, stream: the mask's, as in dropnorm.dropout; both None with
      dropout > 0 draws a fresh pair from the default generator. For the
      backward: with activation="relu" the output y is enough; otherwise
      pass seed and stream yourself (``draw_seed()``) or keep the mask.
    return_mask: also return the packed gradient mask (uint8, (x.size+7)//8
      bytes; bit i = 1 where the gradient passes: t > 0 with the ReLU, and
      kept), which batch_norm_backward takes as mask=.

    Returns (y, save_mean, save_invstd), for batch_norm_backward: y of x's
    dtype, save_mean and save_invstd of x's (float32 for a half type); with
    return_mask=True also the mask, fourth.
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c, momentum_c
    cdef dn_status st
    cdef int typ
    cdef Spans a
    cdef Fusion f
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
    if (residual is not None or activation is not None or seed is not None
            or stream is not None or return_mask is not False
            or not (type(dropout) is float and dropout == 0.0)):
        return _train_fused(x, n, c, s, channels_last, dt, weight, bias, running_mean,
                            running_var, eps_c, momentum_c, out, residual, activation, dropout,
                            seed, stream, return_mask)
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
                     axis=1, out=None, residual=None, activation=None):
    """Batch normalization with frozen statistics (inference forward).

    y = a*x + b per channel with a = weight/sqrt(running_var + eps) and
    b = bias - running_mean*a, folded once per channel. running_mean and
    running_var are required and read only (float32, as weight and bias, for a
    float16 or bfloat16 x). x, weight, bias, eps, axis and out as in
    batch_norm_train (out may be x itself).

    residual, activation: the fused block of batch_norm_train in inference
    (dropout is the identity there): y = activation(bn(x) + residual), bit
    for bit ``np.maximum(batch_norm_infer(x, ...) + residual, 0)``; out may
    be residual itself.

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
    if residual is not None or activation is not None:
        return _infer_fused(x, n, c, s, channels_last, running_mean, running_var, weight, bias,
                            eps_c, out, residual, activation)
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


def batch_norm_backward(dy, x, save_mean, save_invstd, weight=None, axis=1, out=None,
                        activation=None, y=None, residual=False, dropout=0.0, seed=None,
                        stream=None, mask=None):
    """Gradients of batch_norm_train: (dx, dweight, dbias).

    With xhat = (x - mean)*invstd: dbias = sum(dy), dweight = sum(dy*xhat),
    dx = weight*invstd/M * (M*dy - dbias - xhat*dweight). save_mean and
    save_invstd come from batch_norm_train on the same x; save_mean serves as
    a shift only (the exact batch mean is recovered from x). dweight and
    dbias are returned also when weight is None (float32 for a float16 or
    bfloat16 x, whose dx is rounded once to its dtype). axis: the forward's
    channel axis (1 or -1). out: where dx goes; it may be dy or x itself, and
    must not share memory with any other argument.

    Backward of a fused block (batch_norm_train with residual, activation
    or dropout): pass the forward's activation, dropout, seed and stream,
    and residual=True if it had a residual. The gradient at bn's output is
    g = dropout_backward(dy) masked by the ReLU (dy*scale where the
    gradient passes, rounded to x's dtype; +0 elsewhere); the result is bit
    for bit batch_norm_backward(g, x, ...), and with residual=True
    d_residual = g comes fourth. Where the gradient passes comes from mask
    (the forward's return_mask=True) if given; else with
    activation="relu" from y, the forward's output (y > 0: kept and
    positive); else from the dropout mask regenerated from (seed, stream),
    which must then be given. Here out may be dy itself (not x or y).

    Returns (dx, dweight, dbias), or (dx, dweight, dbias, d_residual) with
    residual=True.
    """
    if (activation is not None or y is not None or residual is not False or seed is not None
            or stream is not None or mask is not None
            or not (type(dropout) is float and dropout == 0.0)):
        return _backward_fused(dy, x, save_mean, save_invstd, weight, axis, out, activation,
                               y, residual, dropout, seed, stream, mask)
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


cdef int _fusion_of(Fusion *f, activation, dropout, seed, stream) except -1:
    cdef int act = as_activation(activation)
    f.activation = <dn_activation>act
    f.p = as_probability("dropout", dropout)
    f.seed = 0 if seed is None else as_uint("seed", seed, 64)
    f.stream = 0 if stream is None else as_uint("stream", stream, 64)
    return 0


cdef tuple _train_fused(x, int64_t n, int64_t c, int64_t s, bint channels_last, dt, weight,
                        bias, running_mean, running_var, double eps_c, double momentum_c, out,
                        residual, activation, dropout, seed, stream, return_mask):
    """batch_norm_train's fused block (its checks of the plain arguments done)."""
    cdef Fusion f
    cdef Spans a
    cdef dn_status st
    cdef int typ
    _fusion_of(&f, activation, dropout, seed, stream)
    return_mask = as_flag("return_mask", return_mask)
    if residual is not None:
        residual = same_tensor("residual", residual, x)
    y = output_like("out", out, x)
    save_mean = _per_channel(c, dt)
    save_invstd = _per_channel(c, dt)
    mask = _mask_for(x) if return_mask else None
    spans_of(&a, (running_mean, running_var, y, save_mean, save_invstd, mask, x, residual,
                  weight, bias), 6, 0b11000100, _TRAIN_FUSED_NAMES, _OUT_IS_X_OR_RESIDUAL)
    if f.p > 0.0 and f.p < 1.0 and seed is None and stream is None:
        # after every check: a call that raises draws nothing
        f.seed, f.stream = draw_seed()
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    with nogil:
        if typ == cnp.NPY_DOUBLE:
            st = _train_fused_c(<const double *>a.data[6], &a, n, c, s, channels_last, eps_c,
                                momentum_c, &f)
        elif typ == cnp.NPY_FLOAT:
            st = _train_fused_c(<const float *>a.data[6], &a, n, c, s, channels_last, eps_c,
                                momentum_c, &f)
        else:
            st = _train_fused_h(_is_bf16(typ), &a, n, c, s, channels_last, eps_c, momentum_c,
                                &f)
    if st != DN_OK:
        raise_status(st, "batch_norm_train")
    if return_mask:
        return y, save_mean, save_invstd, mask
    return y, save_mean, save_invstd


cdef _infer_fused(x, int64_t n, int64_t c, int64_t s, bint channels_last, running_mean,
                  running_var, weight, bias, double eps_c, out, residual, activation):
    """batch_norm_infer's fused block (its checks of the plain arguments done)."""
    cdef Spans a
    cdef dn_status st
    cdef int typ
    cdef int act_c = as_activation(activation)
    cdef dn_activation act = <dn_activation>act_c
    if residual is not None:
        residual = same_tensor("residual", residual, x)
    y = output_like("out", out, x)
    spans_of(&a, (y, x, residual, running_mean, running_var, weight, bias), 1, 0b111,
             _INFER_FUSED_NAMES, _OUT_IS_X_OR_RESIDUAL)
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    with nogil:
        if typ == cnp.NPY_DOUBLE:
            st = _infer_fused_c(<const double *>a.data[1], &a, n, c, s, channels_last, eps_c,
                                act)
        elif typ == cnp.NPY_FLOAT:
            st = _infer_fused_c(<const float *>a.data[1], &a, n, c, s, channels_last, eps_c,
                                act)
        else:
            st = _infer_fused_h(_is_bf16(typ), &a, n, c, s, channels_last, eps_c, act)
    if st != DN_OK:
        raise_status(st, "batch_norm_infer")
    return y


cdef tuple _backward_fused(dy, x, save_mean, save_invstd, weight, axis, out, activation, y,
                           residual, dropout, seed, stream, mask):
    """batch_norm_backward through a fused block."""
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef Fusion f
    cdef Spans a
    cdef dn_status st
    cdef int typ
    x = as_tensor("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = param_dtype(x)
    dy = same_tensor("dy", dy, x)
    save_mean = as_vector("save_mean", save_mean, c, dt, optional=False)
    save_invstd = as_vector("save_invstd", save_invstd, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    _fusion_of(&f, activation, dropout, seed, stream)
    residual = as_flag("residual", residual)
    if y is not None:
        y = same_tensor("y", y, x)
    if mask is not None:
        mask = as_mask("mask", mask, cnp.PyArray_SIZE(<cnp.ndarray>x))
    if f.activation == DN_ACTIVATION_RELU and y is None and mask is None:
        raise ValueError("y: the backward of activation='relu' needs the fused output y "
                         "(or the forward's mask)")
    if (f.activation != DN_ACTIVATION_RELU and mask is None and 0.0 < f.p < 1.0
            and seed is None and stream is None):
        raise ValueError("seed: the backward of dropout without the ReLU needs the forward's "
                         "seed and stream (or its mask=)")
    dx = output_like("out", out, x)
    d_residual = output_like("d_residual", None, x) if residual else None
    dweight = _per_channel(c, dt)
    dbias = _per_channel(c, dt)
    spans_of(&a, (dx, dweight, dbias, d_residual, dy, x, y, mask, save_mean, save_invstd,
                  weight), 4, 0b1111001, _BACKWARD_FUSED_NAMES, _OUT_IS_DY)
    if dx is x or (a.data[0] != NULL and (a.data[0] == a.data[5] or a.data[0] == a.data[6])):
        raise ValueError("out: in the fused backward out may be dy itself, not x or y")
    typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    with nogil:
        if typ == cnp.NPY_DOUBLE:
            st = _backward_fused_c(<const double *>a.data[5], &a, n, c, s, channels_last, &f)
        elif typ == cnp.NPY_FLOAT:
            st = _backward_fused_c(<const float *>a.data[5], &a, n, c, s, channels_last, &f)
        else:
            st = _backward_fused_h(_is_bf16(typ), &a, n, c, s, channels_last, &f)
    if st != DN_OK:
        raise_status(st, "batch_norm_backward")
    if residual:
        return dx, dweight, dbias, d_residual
    return dx, dweight, dbias
