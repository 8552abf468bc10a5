"""The NumPy oracle: plain float64 reference implementations.

Short and obviously right; the kernels are compared with it, never with
themselves. Tensors are reduced to the (N, C, S) model of docs/ARCHITECTURE.md.
"""

import numpy as np


def to_ncs(x, axis=1):
    """View x (N, C, *sp) for axis=1 or (N, *sp, C) for axis=-1 as float64 (N, C, S)."""
    x = np.asarray(x, dtype=np.float64)
    if axis in (-1, x.ndim - 1) and x.ndim > 2:
        x = np.moveaxis(x, -1, 1)
    return x.reshape(x.shape[0], x.shape[1], -1)


def from_ncs(y, like, axis=1):
    """Inverse of to_ncs: (N, C, S) back to the shape and layout of ``like``."""
    like = np.asarray(like)
    if axis in (-1, like.ndim - 1) and like.ndim > 2:
        moved = np.moveaxis(like, -1, 1).shape
        return np.moveaxis(y.reshape(moved), 1, -1)
    return y.reshape(like.shape)


def bn_stats(x, axis=1):
    """Per-channel batch mean and biased variance, (C,) each."""
    x3 = to_ncs(x, axis)
    mean = x3.mean(axis=(0, 2))
    var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    return mean, var


def bn_train(x, weight=None, bias=None, eps=1e-5, axis=1):
    """Training forward: (y, mean, invstd) with biased batch variance."""
    x3 = to_ncs(x, axis)
    c = x3.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    mean, var = bn_stats(x, axis)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x3 - mean[None, :, None]) * invstd[None, :, None] * w[None, :, None] + b[None, :, None]
    return from_ncs(y, x, axis), mean, invstd


def bn_running_update(running_mean, running_var, x, momentum, axis=1):
    """PyTorch's update: r = (1-momentum)*r + momentum*batch, unbiased variance."""
    mean, var = bn_stats(x, axis)
    m = to_ncs(x, axis).shape[0] * to_ncs(x, axis).shape[2]
    rm = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
    rv = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var * m / (m - 1)
    return rm, rv


def bn_infer(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, axis=1):
    """Inference forward: (x - running_mean)/sqrt(running_var + eps)*weight + bias."""
    x3 = to_ncs(x, axis)
    c = x3.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    rm = np.asarray(running_mean, np.float64)
    rv = np.asarray(running_var, np.float64)
    y = (x3 - rm[None, :, None]) / np.sqrt(rv + eps)[None, :, None] * w[None, :, None]
    return from_ncs(y + b[None, :, None], x, axis)


def bn_backward(dy, x, weight=None, eps=1e-5, axis=1):
    """Gradients of bn_train: (dx, dweight, dbias), statistics from x."""
    x3 = to_ncs(x, axis)
    g3 = to_ncs(dy, axis)
    n, c, s = x3.shape
    m = n * s
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    mean, var = bn_stats(x, axis)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x3 - mean[None, :, None]) * invstd[None, :, None]
    dbias = g3.sum(axis=(0, 2))
    dweight = (g3 * xhat).sum(axis=(0, 2))
    dx = (w * invstd / m)[None, :, None] * (
        m * g3 - dbias[None, :, None] - xhat * dweight[None, :, None])
    return from_ncs(dx, x, axis), dweight, dbias


def bn_infer_backward(dy, x, running_mean, running_var, weight=None, eps=1e-5, axis=1):
    """Gradients of bn_infer: (dx, dweight, dbias)."""
    x3 = to_ncs(x, axis)
    g3 = to_ncs(dy, axis)
    c = x3.shape[1]
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    xhat = (x3 - np.asarray(running_mean, np.float64)[None, :, None]) * invstd[None, :, None]
    dx = g3 * (w * invstd)[None, :, None]
    return from_ncs(dx, x, axis), (g3 * xhat).sum(axis=(0, 2)), g3.sum(axis=(0, 2))


# ---- Dropout -------------------------------------------------------------------
#
# Philox4x32-10 and the mask rule of docs/ARCHITECTURE.md, vectorised over uint64 arrays
# that hold 32-bit words (every product of two words fits in 64 bits). Dropout
# outputs are computed in x's own dtype, since they are compared exactly:
# y = where(keep, x*scale, 0) with the scale rounded once to that dtype.

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_LO32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """Philox4x32-10 of counters ctr = (c0, c1, c2, c3) (ints or uint64 arrays
    of 32-bit words, broadcast together) under key = (k0, k1) (ints).
    Returns the 4 output words as uint64 arrays."""
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64) for c in ctr))
    k0, k1 = int(key[0]), int(key[1])
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    for _ in range(10):
        p0 = c0 * m0
        p1 = c2 * m1
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _LO32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _LO32)
        k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def dropout_words(nbits, seed, stream):
    """The Philox word of each decision index 0 .. nbits-1: word i % 4 of the
    block with counter (lo32(i//4), hi32(i//4), lo32(stream), hi32(stream))
    and key (lo32(seed), hi32(seed))."""
    i = np.arange(nbits, dtype=np.uint64)
    j = i // np.uint64(4)
    words = philox4x32_10(
        (j & _LO32, j >> np.uint64(32), stream & 0xFFFFFFFF, stream >> 32),
        (seed & 0xFFFFFFFF, seed >> 32))
    return np.choose((i % np.uint64(4)).astype(np.intp), words)


def dropout_keep(nbits, p, seed, stream):
    """Keep decisions (bool) of indices 0 .. nbits-1: dropped iff the word is
    below floor(p * 2**32); p == 1 drops everything."""
    if p >= 1.0:
        return np.zeros(nbits, dtype=bool)
    threshold = np.uint64(int(p * 2.0**32))  # int() truncates: floor for p >= 0
    return dropout_words(nbits, seed, stream) >= threshold


def pack_mask(keep):
    """Packed keep bits, LSB first: (len + 7)//8 uint8."""
    return np.packbits(np.asarray(keep, dtype=bool).reshape(-1), bitorder="little")


def unpack_mask(mask, nbits):
    return np.unpackbits(np.asarray(mask, np.uint8), bitorder="little")[:nbits].astype(bool)


def dropout_mask(n, p, seed, stream):
    return pack_mask(dropout_keep(n, p, seed, stream))


def _keep_like(x, keep, channelwise, axis):
    """Per-element keep of x from decisions (x.size of them, or N*C)."""
    x = np.asarray(x)
    if not channelwise:
        return keep.reshape(x.shape)
    n = x.shape[0]
    if axis in (-1, x.ndim - 1) and x.ndim > 2:
        c = x.shape[-1]
        return np.broadcast_to(keep.reshape((n,) + (1,) * (x.ndim - 2) + (c,)), x.shape)
    c = x.shape[1]
    return np.broadcast_to(keep.reshape((n, c) + (1,) * (x.ndim - 2)), x.shape)


def dropout_decisions(x, channelwise=False, axis=1):
    """How many decisions a dropout call on x makes: x.size, or N*C."""
    x = np.asarray(x)
    if not channelwise:
        return x.size
    channels_last = axis in (-1, x.ndim - 1) and x.ndim > 2
    return x.shape[0] * (x.shape[-1] if channels_last else x.shape[1])


def dropout_train_apply(x, keep, p, mode="inverted", channelwise=False, axis=1):
    """Training output from decisions keep: where(keep, x*scale, 0) in x's dtype."""
    x = np.asarray(x)
    dt = x.dtype.type
    if p >= 1.0:
        return np.zeros_like(x)
    scale = dt(1.0 / (1.0 - p)) if mode == "inverted" else dt(1.0)
    kept = x * scale if scale != 1 else x
    return np.where(_keep_like(x, keep, channelwise, axis), kept, dt(0)).astype(x.dtype)


def dropout_forward(x, p, seed=0, stream=0, mode="inverted", training=True,
                    channelwise=False, axis=1):
    """Dropout forward: (y, mask) with the packed mask of the call."""
    x = np.asarray(x)
    dt = x.dtype.type
    nbits = dropout_decisions(x, channelwise, axis)
    if not training:
        if mode == "inverted" or p == 0.0:
            y = x.copy()
        elif p >= 1.0:
            y = np.zeros_like(x)
        else:
            y = x * dt(1.0 - p)
        return y, pack_mask(np.ones(nbits, dtype=bool))
    if p == 0.0:
        return x.copy(), pack_mask(np.ones(nbits, dtype=bool))
    keep = dropout_keep(nbits, p, seed, stream)
    return dropout_train_apply(x, keep, p, mode, channelwise, axis), pack_mask(keep)


def dropout_backward(dy, p, seed=0, stream=0, mode="inverted", channelwise=False, axis=1):
    """dx = dy*keep*scale for the decisions of (seed, stream)."""
    dy = np.asarray(dy)
    if p == 0.0:
        return dy.copy()
    keep = dropout_keep(dropout_decisions(dy, channelwise, axis), p, seed, stream)
    return dropout_train_apply(dy, keep, p, mode, channelwise, axis)


# ---- Half precision --------------------------------------------------------------
# The storage-only types: IEEE binary16 ("float16") and bfloat16 (the upper
# 16 bits of a float32), as (explicit mantissa bits, exponent bias). Their
# kernels compute in float32; the oracle computes in float64 on the same
# half-precision inputs (exactly widened) and rounds once, with the rule
# written here from the formats' definitions (no conversion of NumPy's or
# ml_dtypes' is used).

HALF_FORMATS = {"float16": (10, 15), "bfloat16": (7, 127)}


def half_value(bits, fmt):
    """The float64 values of half-precision bit patterns (uint16)."""
    mant, bias = HALF_FORMATS[fmt]
    b = np.asarray(bits, np.uint16).astype(np.int64)
    emask = (1 << (15 - mant)) - 1
    e = (b >> mant) & emask
    m = (b & ((1 << mant) - 1)).astype(np.float64)
    val = np.where(e == 0, np.ldexp(m, 1 - bias - mant),
                   np.ldexp(m + 2.0**mant, e - bias - mant))
    val = np.where(e == emask, np.where(m == 0, np.inf, np.nan), val)
    return np.where(b & 0x8000, -val, val)


def round_half(v, fmt):
    """float64 values rounded once to the half format: to nearest, ties to
    even, subnormals kept, overflow to infinity, NaN to a quiet NaN. Returns
    the uint16 bit patterns."""
    mant, bias = HALF_FORMATS[fmt]
    v = np.asarray(v, np.float64)
    a = np.abs(v)
    emin = 1 - bias
    with np.errstate(over="ignore", invalid="ignore"):
        _, e = np.frexp(a)  # a = f * 2**e with 0.5 <= f < 1
        quantum = np.ldexp(1.0, np.maximum(e - 1, emin) - mant)  # subnormals: emin's
        r = np.rint(a / quantum) * quantum  # np.rint: ties to even
        _, er = np.frexp(r)
        sub = r < np.ldexp(1.0, emin)
        field_e = np.where(sub, 0, er - 1 + bias)
        field_m = np.where(sub, r / np.ldexp(1.0, emin - mant),
                           r / np.ldexp(1.0, er - 1 - mant) - 2.0**mant)
        inf = ((1 << (15 - mant)) - 1) << mant
        bits = np.where(np.isfinite(field_m), (field_e.astype(np.int64) << mant)
                        | np.nan_to_num(field_m).astype(np.int64), inf)
        bits = np.where(r >= np.ldexp(1.0, bias + 1), inf, bits)  # past the largest: infinity
    bits = np.where(np.isnan(v), inf | (1 << (mant - 1)), bits)
    bits = np.where(np.signbit(v), bits | 0x8000, bits)
    return bits.astype(np.uint16)


def half_ordinal(bits):
    """Bit patterns in value order: neighbouring values differ by 1 (+0 and -0
    are both 0)."""
    b = np.asarray(bits, np.uint16).astype(np.int64)
    return np.where(b & 0x8000, -(b & 0x7FFF), b)
