"""The NumPy oracle: plain float64 reference implementations.

Short and obviously right; the kernels are compared with it, never with
themselves. Tensors are reduced to the (N, C, S) model of DESIGN.md.
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
