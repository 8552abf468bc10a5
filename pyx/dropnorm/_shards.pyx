# cython: language_level=3
"""Batch normalization over shards of a batch: the training forward and
backward in pieces, for data-parallel training (SyncBatchNorm), where each
process holds a shard and the caller communicates the per-channel partials.

    forward:  batch_norm_partial_stats on each shard; gather the (3, C)
              partials in one fixed shard order; batch_norm_merge_stats;
              batch_norm_forward_apply on each shard
    backward: batch_norm_backward_reduce on each shard; add the (3, C) sums
              in one fixed shard order; batch_norm_backward_apply on each
              shard with the whole batch's count

With one shard the pieces give bitwise what batch_norm_train and
batch_norm_backward give. A shard may be empty (N == 0).
"""

from libc.stdint cimport int64_t, uint16_t

cimport numpy as cnp

from dropnorm._checks cimport (
    as_eps,
    as_momentum,
    as_vector,
    output_like,
    param_dtype,
    same_tensor,
    tensor_extents,
    writable_vector,
)
from dropnorm._spans cimport Spans, spans_of
from dropnorm.libdropnorm cimport *

import numpy as np

from dropnorm._checks import _read, as_int, as_shard
from dropnorm._runtime import raise_status

cnp.import_array()

ctypedef fused floating:
    float
    double

_APPLY_NAMES = ("running_mean", "running_var", "out", "save_mean", "save_invstd",
                "x", "weight", "bias")
_BACKWARD_APPLY_NAMES = ("out", "dweight", "dbias", "dy", "x", "save_mean", "save_invstd",
                         "weight")
_OUT_IS_X = (("out", "x"),)
_OUT_IS_X_OR_DY = (("out", "x"), ("out", "dy"))


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


cdef cnp.ndarray _planar(name, value, int64_t c, bint optional=False):
    """A (3, C) float64 array of per-channel partials (C-contiguous)."""
    if value is None and optional:
        return None
    arr = _read(name, value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a float64 array of shape (3, {c}), "
                        f"got dtype {arr.dtype}")
    if arr.shape != (3, c):
        raise ValueError(f"{name}: expected shape (3, {c}) (the partials of {c} channels), "
                         f"got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


cdef dn_status _partial_c(const floating *x, int64_t n, int64_t c, int64_t s,
                          bint channels_last, double *stats) noexcept nogil:
    if floating is float:
        return dn_batchnorm_partial_stats_f32(n, c, s, _layout(channels_last), x, stats)
    return dn_batchnorm_partial_stats_f64(n, c, s, _layout(channels_last), x, stats)


def batch_norm_partial_stats(x, axis=1):
    """One shard's per-channel statistics, reduced as batch_norm_train
    reduces a batch: a (3, C) float64 array of the count N*prod(spatial), the
    mean and M2 (the sum of squared deviations from the mean) of each
    channel; all 0 for an empty shard (N == 0).

    x is (N, C, *spatial) for axis=1 or (N, *spatial, C) for axis=-1,
    float32, float64, float16 or bfloat16, N >= 0. (The per-channel arrays
    of the pieces below are float32 for float16 and bfloat16, as in
    batch_norm_train.)
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef dn_status st
    cdef cnp.ndarray stats
    cdef double *out
    x = as_shard("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    stats = np.empty((3, c), np.float64)
    out = <double *>cnp.PyArray_DATA(stats)
    cdef const void *xp = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef int typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typ == cnp.NPY_DOUBLE:
        with nogil:
            st = _partial_c(<const double *>xp, n, c, s, channels_last, out)
    elif typ == cnp.NPY_FLOAT:
        with nogil:
            st = _partial_c(<const float *>xp, n, c, s, channels_last, out)
    else:
        with nogil:
            st = dn_batchnorm_partial_stats_half(_is_bf16(typ), n, c, s, _layout(channels_last),
                                                 <const uint16_t *>xp, out)
    if st != DN_OK:
        raise_status(st, "batch_norm_partial_stats")
    return stats


def batch_norm_merge_stats(stats):
    """Merge K shards' partials in the order given (Chan et al.; empty
    shards are skipped) as batch_norm_train merges its blocks.

    stats: (K, 3, C), the shards' batch_norm_partial_stats stacked in shard
    order. Returns (mean, var, var_unbiased), float64 vectors of C values:
    the whole batch's mean, biased variance and var*M/(M - 1) over its M
    values (what the running variance takes). ValueError if a channel has
    fewer than 2 values in all, or a count is not a whole number >= 0.
    """
    cdef int64_t k, c
    cdef dn_status st
    arr = _read("stats", stats)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"stats: expected real numbers, got dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[1] != 3 or arr.shape[0] < 1 or arr.shape[2] < 1:
        raise ValueError(f"stats: expected shape (K, 3, C) with K, C >= 1 (the shards' "
                         f"batch_norm_partial_stats stacked), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    k, c = arr.shape[0], arr.shape[2]
    mean = np.empty(c, np.float64)
    var = np.empty(c, np.float64)
    var_unbiased = np.empty(c, np.float64)
    st = dn_batchnorm_merge_stats(k, c, <const double *>cnp.PyArray_DATA(arr),
                                  <double *>cnp.PyArray_DATA(mean),
                                  <double *>cnp.PyArray_DATA(var),
                                  <double *>cnp.PyArray_DATA(var_unbiased))
    if st == DN_ERR_BATCH_TOO_SMALL:
        raise ValueError("stats: training statistics need more than 1 value per channel "
                         "in the whole batch")
    if st == DN_ERR_BAD_VALUE:
        raise ValueError("stats: every count (stats[:, 0]) must be a whole number >= 0")
    if st != DN_OK:
        raise_status(st, "batch_norm_merge_stats")
    return mean, var, var_unbiased


cdef dn_status _apply_c(const floating *x, const Spans *a, int64_t n, int64_t c, int64_t s,
                        bint channels_last, const double *mean, const double *var,
                        const double *vu, double eps, double momentum) noexcept nogil:
    if floating is float:
        return dn_batchnorm_forward_apply_f32(
            n, c, s, _layout(channels_last), x, mean, var, vu, <const float *>a.data[6],
            <const float *>a.data[7], eps, momentum, <float *>a.data[0], <float *>a.data[1],
            <float *>a.data[2], <float *>a.data[3], <float *>a.data[4])
    return dn_batchnorm_forward_apply_f64(
        n, c, s, _layout(channels_last), x, mean, var, vu, <const double *>a.data[6],
        <const double *>a.data[7], eps, momentum, <double *>a.data[0], <double *>a.data[1],
        <double *>a.data[2], <double *>a.data[3], <double *>a.data[4])


cdef dn_status _apply_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                        bint channels_last, const double *mean, const double *var,
                        const double *vu, double eps, double momentum) noexcept nogil:
    return dn_batchnorm_forward_apply_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[5], mean, var, vu,
        <const float *>a.data[6], <const float *>a.data[7], eps, momentum, <float *>a.data[0],
        <float *>a.data[1], <uint16_t *>a.data[2], <float *>a.data[3], <float *>a.data[4])


cdef cnp.ndarray _stat_vector(name, value, int64_t c):
    arr = _read(name, value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if arr.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def batch_norm_forward_apply(x, mean, var, weight=None, bias=None, running_mean=None,
                             running_var=None, var_unbiased=None, momentum=0.1, eps=1e-5,
                             axis=1, out=None):
    """The training forward of one shard with the whole batch's statistics
    (batch_norm_merge_stats): invstd = 1/sqrt(var + eps),
    y = weight*(x - mean)*invstd + bias.

    x: the shard, (N, C, *spatial) for axis=1 or (N, *spatial, C) for
    axis=-1, float32 or float64; N may be 0 (an empty shard). mean, var,
    var_unbiased: C values each (float64 is exact; others are converted).
    weight, bias: C values of x's dtype, or None (1 and 0). running_mean /
    running_var, if given, are updated in place as by batch_norm_train
    (momentum in [0, 1]), var_unbiased (required with running_var) going into
    running_var. eps: finite, >= 0. out: an array like x for y (it may be x
    itself). Returns (y, save_mean, save_invstd) of x's dtype.
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef double eps_c, momentum_c
    cdef dn_status st
    cdef Spans a
    cdef cnp.ndarray mean_c, var_c, vu_c
    x = as_shard("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = param_dtype(x)
    mean_c = _stat_vector("mean", mean, c)
    var_c = _stat_vector("var", var, c)
    weight = as_vector("weight", weight, c, dt)
    bias = as_vector("bias", bias, c, dt)
    running_mean = writable_vector("running_mean", running_mean, c, dt)
    running_var = writable_vector("running_var", running_var, c, dt)
    if var_unbiased is None:
        if running_var is not None:
            raise ValueError("var_unbiased: required with running_var (the third result of "
                             "batch_norm_merge_stats)")
        vu_c = None
    else:
        vu_c = _stat_vector("var_unbiased", var_unbiased, c)
    eps_c = as_eps(eps)
    momentum_c = as_momentum(momentum)
    y = output_like("out", out, x)
    save_mean = _per_channel(c, dt)
    save_invstd = _per_channel(c, dt)
    spans_of(&a, (running_mean, running_var, y, save_mean, save_invstd, x, weight, bias), 5,
             0b100100, _APPLY_NAMES, _OUT_IS_X)
    cdef const double *m = <const double *>cnp.PyArray_DATA(mean_c)
    cdef const double *v = <const double *>cnp.PyArray_DATA(var_c)
    cdef const double *u = NULL if vu_c is None else <const double *>cnp.PyArray_DATA(vu_c)
    cdef int typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typ == cnp.NPY_DOUBLE:
        with nogil:
            st = _apply_c(<const double *>a.data[5], &a, n, c, s, channels_last, m, v, u, eps_c,
                          momentum_c)
    elif typ == cnp.NPY_FLOAT:
        with nogil:
            st = _apply_c(<const float *>a.data[5], &a, n, c, s, channels_last, m, v, u, eps_c,
                          momentum_c)
    else:
        with nogil:
            st = _apply_h(_is_bf16(typ), &a, n, c, s, channels_last, m, v, u, eps_c, momentum_c)
    if st != DN_OK:
        raise_status(st, "batch_norm_forward_apply")
    return y, save_mean, save_invstd


cdef dn_status _reduce_c(const floating *x, const floating *dy, const floating *mean,
                         int64_t n, int64_t c, int64_t s, bint channels_last,
                         double *sums) noexcept nogil:
    if floating is float:
        return dn_batchnorm_backward_reduce_f32(n, c, s, _layout(channels_last), dy, x, mean,
                                                sums)
    return dn_batchnorm_backward_reduce_f64(n, c, s, _layout(channels_last), dy, x, mean, sums)


def batch_norm_backward_reduce(dy, x, save_mean, axis=1):
    """One shard's gradient sums about the saved mean h (save_mean, the
    forward's, the same on every shard): a (3, C) float64 array of sum(dy),
    sum(x - h) and sum(dy*(x - h)) per channel; all 0 for an empty shard.
    dy and x: the shard's upstream gradient and forward input, of one shape,
    channels on axis (1 or -1). Add the shards' sums in one fixed order and
    pass them to batch_norm_backward_apply.
    """
    cdef int64_t n, c, s
    cdef bint channels_last
    cdef dn_status st
    cdef cnp.ndarray sums
    cdef double *out
    x = as_shard("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dy = same_tensor("dy", dy, x)
    save_mean = as_vector("save_mean", save_mean, c, param_dtype(x), optional=False)
    sums = np.empty((3, c), np.float64)
    out = <double *>cnp.PyArray_DATA(sums)
    cdef const void *xp = cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef const void *dyp = cnp.PyArray_DATA(<cnp.ndarray>dy)
    cdef const void *mp = cnp.PyArray_DATA(<cnp.ndarray>save_mean)
    cdef int typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typ == cnp.NPY_DOUBLE:
        with nogil:
            st = _reduce_c(<const double *>xp, <const double *>dyp, <const double *>mp, n, c,
                           s, channels_last, out)
    elif typ == cnp.NPY_FLOAT:
        with nogil:
            st = _reduce_c(<const float *>xp, <const float *>dyp, <const float *>mp, n, c, s,
                           channels_last, out)
    else:
        with nogil:
            st = dn_batchnorm_backward_reduce_half(
                _is_bf16(typ), n, c, s, _layout(channels_last), <const uint16_t *>dyp,
                <const uint16_t *>xp, <const float *>mp, out)
    if st != DN_OK:
        raise_status(st, "batch_norm_backward_reduce")
    return sums


cdef dn_status _backward_apply_c(const floating *x, const Spans *a, int64_t n, int64_t c,
                                 int64_t s, bint channels_last, const double *sums,
                                 int64_t count, const double *local) noexcept nogil:
    if floating is float:
        return dn_batchnorm_backward_apply_f32(
            n, c, s, _layout(channels_last), <const float *>a.data[3], x,
            <const float *>a.data[5], <const float *>a.data[6], <const float *>a.data[7],
            sums, count, local, <float *>a.data[0], <float *>a.data[1], <float *>a.data[2])
    return dn_batchnorm_backward_apply_f64(
        n, c, s, _layout(channels_last), <const double *>a.data[3], x,
        <const double *>a.data[5], <const double *>a.data[6], <const double *>a.data[7],
        sums, count, local, <double *>a.data[0], <double *>a.data[1], <double *>a.data[2])


cdef dn_status _backward_apply_h(bint bf16, const Spans *a, int64_t n, int64_t c, int64_t s,
                                 bint channels_last, const double *sums, int64_t count,
                                 const double *local) noexcept nogil:
    return dn_batchnorm_backward_apply_half(
        bf16, n, c, s, _layout(channels_last), <const uint16_t *>a.data[3],
        <const uint16_t *>a.data[4], <const float *>a.data[5], <const float *>a.data[6],
        <const float *>a.data[7], sums, count, local, <uint16_t *>a.data[0], <float *>a.data[1],
        <float *>a.data[2])


def batch_norm_backward_apply(dy, x, save_mean, save_invstd, sums, count, weight=None,
                              local_sums=None, axis=1, out=None):
    """dx of one shard from the whole batch's gradient sums, as
    batch_norm_backward forms it from its own: (dx, dweight, dbias).

    dy, x: the shard's upstream gradient and forward input (channels on
    axis, 1 or -1); save_mean, save_invstd: the forward's
    (batch_norm_forward_apply); weight: C values or None (1). sums: (3, C)
    float64, the shards' batch_norm_backward_reduce added in one fixed
    order; count: the whole batch's values per channel, M (an integer >= 1
    and at least this shard's). dweight and dbias are this shard's part (sum
    over the shard of dy*xhat and of dy, from local_sums, this shard's own
    batch_norm_backward_reduce; sums when None): added over the shards they
    are the batch's, as in PyTorch's SyncBatchNorm. out: where dx goes (it
    may be dy or x itself).
    """
    cdef int64_t n, c, s, count_c
    cdef bint channels_last
    cdef dn_status st
    cdef Spans a
    cdef cnp.ndarray sums_c, local_c
    x = as_shard("x", x)
    n, c, s, channels_last = tensor_extents(x, axis)
    dt = param_dtype(x)
    dy = same_tensor("dy", dy, x)
    save_mean = as_vector("save_mean", save_mean, c, dt, optional=False)
    save_invstd = as_vector("save_invstd", save_invstd, c, dt, optional=False)
    weight = as_vector("weight", weight, c, dt)
    sums_c = _planar("sums", sums, c)
    local_c = _planar("local_sums", local_sums, c, True)
    count_c = as_int("count", count)
    if count_c < max(1, n * s):
        raise ValueError(f"count: expected the whole batch's values per channel, at least "
                         f"this shard's {n * s} and at least 1, got {count_c}")
    dx = output_like("out", out, x)
    dweight = _per_channel(c, dt)
    dbias = _per_channel(c, dt)
    spans_of(&a, (dx, dweight, dbias, dy, x, save_mean, save_invstd, weight), 3, 0b11001,
             _BACKWARD_APPLY_NAMES, _OUT_IS_X_OR_DY)
    cdef const double *sp = <const double *>cnp.PyArray_DATA(sums_c)
    cdef const double *lp = NULL if local_c is None else <const double *>cnp.PyArray_DATA(local_c)
    cdef int typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typ == cnp.NPY_DOUBLE:
        with nogil:
            st = _backward_apply_c(<const double *>a.data[4], &a, n, c, s, channels_last, sp,
                                   count_c, lp)
    elif typ == cnp.NPY_FLOAT:
        with nogil:
            st = _backward_apply_c(<const float *>a.data[4], &a, n, c, s, channels_last, sp,
                                   count_c, lp)
    else:
        with nogil:
            st = _backward_apply_h(_is_bf16(typ), &a, n, c, s, channels_last, sp, count_c, lp)
    if st != DN_OK:
        raise_status(st, "batch_norm_backward_apply")
    return dx, dweight, dbias
