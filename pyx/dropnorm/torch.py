"""dropnorm inside PyTorch: custom operators, drop-in modules and convert().

Importing this module needs PyTorch (``pip install "dropnorm[torch]"``);
``import dropnorm`` never imports torch.

Operators. dropnorm's kernels are registered as PyTorch custom operators
(``torch.library.custom_op``, namespace ``dropnorm``) with fake
implementations (shapes, strides and dtypes without data) and autograd
formulas, so autograd differentiates through them and
``torch.compile(model, fullgraph=True)`` traces through them without a graph
break. The training forward of batch norm, its backward, inference and its
backward, dropout and its backward, and the two collectives of
SyncBatchNorm are each one operator (``torch.ops.dropnorm.*``). In eager
mode, on plain tensors, the modules and functions call the same kernels
through a ``torch.autograd.Function`` instead, which costs less per call
(the results are bitwise the same). Gradients are first order: a double
backward (``create_graph=True`` through them, gradgradcheck) raises.

Modules. ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ``Dropout`` and
``Dropout1d/2d/3d`` are subclasses of their ``torch.nn`` namesakes (so of
``torch.nn.Module``) that replace only ``forward``: the constructor
arguments, parameters, buffers, ``state_dict`` keys, ``repr``, train()/eval(),
momentum=None (the cumulative average), track_running_stats, affine and
bias=False are torch.nn's, so a state dict loads in both directions.
``convert(model)`` swaps the torch.nn modules of a model for these,
keeping their parameters, buffers and mode.

Tensors. CPU tensors of float32, float64, float16 or bfloat16 (the dtypes
dropnorm's kernels have; a clear TypeError for the others and for tensors on
another device). The half types follow PyTorch's mixed precision: a float16
or bfloat16 input with float32 weight, bias and running statistics (the
default dtype of a module), or, as torch.nn allows on the CPU too, with all
of them in the input's own dtype (``dtype=torch.bfloat16``, ``.to()``,
``.half()``): the kernels then compute with float32 copies of them, and the
running statistics are rounded back to their dtype after each update.
Saved statistics and the gradients of weight and bias are float32 (autograd
rounds the latter to a half parameter's dtype). A bfloat16 tensor reaches the
kernels as its storage viewed as ``ml_dtypes.bfloat16`` (no copy), so it
needs the package ml_dtypes.
Batch-norm and channel-dropout input is (N, C, *spatial). A contiguous
tensor goes to the kernels as it is, and a channels_last (or
channels_last_3d, or any (N, *spatial, C)-ordered dense) tensor as its
(N, *spatial, C) memory, dropnorm's axis=-1 layout: no copy either way, and
the outputs have the input's memory format. A tensor with other strides
(a slice, a transpose) is copied to a contiguous one first.

Dropout masks come from dropnorm's Philox4x32-10 generator: a mask is a
pure function of (seed, stream, element index). A module or call without a
seed takes the key ``torch.initial_seed()`` and a stream drawn from
PyTorch's default CPU generator at each training forward, so
``torch.manual_seed(n)`` makes the masks repeatable, just as it does
PyTorch's own dropout, and no two calls share a mask; with ``seed=s`` the
key is s and the streams are the module's own, 0, 1, 2, ... The backward
regenerates the mask from that (seed, stream): no mask is stored. Element i
of a dropout is the i-th element in memory (flat C order for a contiguous
tensor, (N, *spatial, C) order for a channels_last one); a channel dropout's
decision for (n, c) is decision n*C + c in either memory format.

Differences from torch.nn: dropped elements are exactly 0 (p=1 gives zeros
even where the input is inf or NaN; PyTorch multiplies by 0), the masks
differ from PyTorch's (another generator), batch statistics are exact in
float32 also when |mean| >> std, and errors are ValueError/TypeError naming
the argument where PyTorch raises RuntimeError.
"""

import numbers
import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

import dropnorm
from dropnorm import _checks, _sync

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "SyncBatchNorm",
    "batch_norm",
    "convert",
    "dropout",
]

# ---- dtypes, devices and memory formats ----------------------------------------------------

# The one dispatch point on the dtype: the torch dtypes whose tensors the
# kernels take, each with the NumPy dtype of its zero-copy view: bfloat16
# (no NumPy dtype of its own) as ml_dtypes.bfloat16, through an int16 view
# of its storage (None without ml_dtypes: such a tensor is refused, naming
# it); and the dtype of the per-channel arrays (parameters, running and
# saved statistics) the kernels compute with: float32 for the half types.
_NUMPY_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
                torch.float16: np.dtype(np.float16),
                torch.bfloat16: _checks.bfloat16_dtype()}
_KERNEL_DTYPES = tuple(_NUMPY_DTYPE)
_HALF = (torch.float16, torch.bfloat16)
_DTYPE_NAMES = "float32, float64, float16 and bfloat16"
_U64 = (1 << 64) - 1


def _param_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels keep per-channel values in for tensors of dtype."""
    return torch.float32 if dtype in _HALF else dtype


def _check_tensor(name: str, t: Optional[Tensor]) -> None:
    """TypeError naming the argument unless t is None or a strided CPU
    tensor of a dtype the kernels take."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise TypeError(f"{name}: dropnorm runs on the CPU, got a tensor on {t.device}; "
                        f"move it with .cpu() (or use torch.nn's module on {t.device.type})")
    if t.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{name}: dropnorm's kernels take {_DTYPE_NAMES} tensors, got "
                        f"{t.dtype}")
    if _NUMPY_DTYPE[t.dtype] is None:
        raise TypeError(f"{name}: a bfloat16 tensor reaches dropnorm's kernels as "
                        "ml_dtypes.bfloat16, which needs the package ml_dtypes: "
                        "pip install ml_dtypes")


def _check_device(device: Any) -> None:
    """ValueError unless a module's device argument is None or the CPU."""
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"device: dropnorm runs on the CPU, got {device!r}")


def _check_dtype(dtype: Any) -> None:
    """TypeError unless a module's dtype argument is None or one the kernels take."""
    if dtype is not None and dtype not in _KERNEL_DTYPES:
        raise TypeError(f"dtype: dropnorm's kernels take {_DTYPE_NAMES}, got {dtype}")


def _last(ndim: int) -> tuple[int, ...]:
    """The permutation (N, C, *spatial) -> (N, *spatial, C)."""
    return (0, *range(2, ndim), 1)


def _first(ndim: int) -> tuple[int, ...]:
    """The permutation (N, *spatial, C) -> (N, C, *spatial)."""
    return (0, ndim - 1, *range(1, ndim - 1))


def _channels_last(t: Tensor) -> bool:
    """Whether t, (N, C, *spatial), is laid out as dense (N, *spatial, C)
    memory and not also contiguous: channels_last, channels_last_3d, or the
    permutation of an (N, L, C) tensor."""
    return t.dim() >= 3 and not t.is_contiguous() and t.permute(_last(t.dim())).is_contiguous()


def _numpy(t: Tensor) -> np.ndarray:
    """A detached tensor's memory as an ndarray (no copy): bfloat16 as
    ml_dtypes.bfloat16, through an int16 view."""
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(_NUMPY_DTYPE[torch.bfloat16])
    return t.numpy()


def _array(t: Tensor, channels_last: bool) -> np.ndarray:
    """t's data as a C-contiguous ndarray, (N, C, *spatial) or, channels_last,
    (N, *spatial, C): t's own memory when it is in that order, else a copy."""
    t = t.detach()
    if channels_last:
        t = t.permute(_last(t.dim()))
    if not t.is_contiguous():
        t = t.contiguous()
    return _numpy(t)


def _out(t: Tensor, channels_last: bool) -> Optional[np.ndarray]:
    """A new output tensor's memory as the ndarray the kernel writes
    (out=), in the layout of _array; None when its strides are in neither
    order (the result is then copied into it by _fill)."""
    if channels_last:
        t = t.permute(_last(t.dim()))
    return _numpy(t) if t.is_contiguous() else None


def _fill(t: Tensor, result: np.ndarray, channels_last: bool) -> None:
    """Copy a kernel's result (in the layout of _array, or flat) into t."""
    shape = tuple(t.shape[i] for i in _last(t.dim())) if channels_last else tuple(t.shape)
    result = result.reshape(shape)
    if t.dtype is torch.bfloat16:
        r = torch.from_numpy(result.view(np.int16)).view(torch.bfloat16)
    else:
        r = torch.from_numpy(result)
    t.copy_(r.permute(_first(r.dim())) if channels_last else r)


def _vector(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """A per-channel tensor as an ndarray (its own memory), or None; a half
    one (a module in the input's half dtype) as a float32 copy."""
    if t is None:
        return None
    t = t.detach()
    return t.float().numpy() if t.dtype in _HALF else t.numpy()


def _as_signed(value: int) -> int:
    """A 64-bit unsigned value as the int64 a schema `int` carries."""
    return value - (1 << 64) if value >= (1 << 63) else value


def _momentum(momentum: Optional[float], num_batches_tracked: Optional[Tensor]) -> float:
    """The factor of this batch in the running statistics: momentum, or
    1/(k+1) for the (k+1)-th batch with momentum=None (a cumulative average,
    as torch.nn's BatchNorm computes it)."""
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        return 0.0
    return 1.0 / (int(num_batches_tracked) + 1)


def _running(t: Optional[Tensor], x: Tensor) -> tuple[Tensor, Optional[np.ndarray]]:
    """A copy of a running statistic for the kernel to update (the operators
    are functional: the module copies the result back), and its ndarray; an
    empty tensor and None without one. A half one is copied to float32
    (_rounded_back rounds the update to its dtype)."""
    if t is None:
        return x.new_empty((0,)), None
    copy = t.detach().to(_param_dtype(t.dtype), memory_format=torch.contiguous_format,
                         copy=True)
    return copy, copy.numpy()


def _rounded_back(new: Tensor, t: Optional[Tensor]) -> Tensor:
    """An updated running statistic in the dtype of the original t."""
    return new if t is None or new.dtype == t.dtype else new.to(t.dtype)


def _check_bn_operands(x: Tensor, *vectors: tuple[str, Optional[Tensor]]) -> None:
    _check_tensor("input", x)
    for name, t in vectors:
        _check_tensor(name, t)


# ---- the kernels on tensors ----------------------------------------------------------------
#
# Each call is one of these, reached by two routes that give the same bits:
# the custom operators (torch.ops.dropnorm.*), which torch.compile and export
# trace, and, for plain tensors in eager mode, a torch.autograd.Function that
# skips the dispatcher's layers (_eager): a few tens of microseconds less per
# call, and the running statistics updated in place instead of through
# copies. tests/test_torch.py runs both routes against each other.

def _stat_views(running_mean: Optional[Tensor], running_var: Optional[Tensor]
                ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The running statistics' own memory for the kernel to update in place
    (the eager route), each or None; their version counters move, as
    PyTorch's in-place updates move them. Half ones (a module in the input's
    half dtype) as float32 copies, which _stat_commit rounds back."""
    stats = [t for t in (running_mean, running_var) if t is not None]
    if stats:
        torch.autograd.graph.increment_version(stats)
    return (None if running_mean is None else _vector(running_mean),
            None if running_var is None else _vector(running_var))


def _stat_commit(running_mean: Optional[Tensor], running_var: Optional[Tensor],
                 mean_a: Optional[np.ndarray], var_a: Optional[np.ndarray]) -> None:
    """After an update through _stat_views: half statistics get their
    float32 copies back, rounded (the others were updated in place)."""
    for t, a in ((running_mean, mean_a), (running_var, var_a)):
        if t is not None and a is not None and t.dtype in _HALF:
            t.detach().copy_(torch.from_numpy(a))


def _k_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
             mean_a: Optional[np.ndarray], var_a: Optional[np.ndarray], momentum: float,
             eps: float) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """y, save_mean, save_invstd of a training forward; mean_a, var_a (the
    running statistics, or None) are updated in place."""
    cl = _channels_last(x)
    y = torch.empty_like(x)
    out = _out(y, cl)
    result, save_mean, save_invstd = dropnorm.batch_norm_train(
        _array(x, cl), _vector(weight), _vector(bias), mean_a, var_a, momentum=momentum,
        eps=eps, axis=-1 if cl else 1, out=out)
    if out is None:
        _fill(y, result, cl)
    return y, save_mean, save_invstd


def _k_backward(dy: Tensor, x: Tensor, save_mean: np.ndarray, save_invstd: np.ndarray,
                weight: Optional[Tensor]) -> tuple[Tensor, np.ndarray, np.ndarray]:
    cl = _channels_last(x)
    dx = torch.empty_like(x)
    out = _out(dx, cl)
    result, dweight, dbias = dropnorm.batch_norm_backward(
        _array(dy, cl), _array(x, cl), save_mean, save_invstd, _vector(weight),
        axis=-1 if cl else 1, out=out)
    if out is None:
        _fill(dx, result, cl)
    return dx, dweight, dbias


def _k_infer(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor],
             bias: Optional[Tensor], eps: float) -> Tensor:
    cl = _channels_last(x)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y  # an empty shard of SyncBatchNorm in eval mode
    out = _out(y, cl)
    result = dropnorm.batch_norm_infer(
        _array(x, cl), _vector(running_mean), _vector(running_var), _vector(weight),
        _vector(bias), eps=eps, axis=-1 if cl else 1, out=out)
    if out is None:
        _fill(y, result, cl)
    return y


def _k_infer_backward(dy: Tensor, x: Tensor, running_mean: Tensor, running_var: Tensor,
                      weight: Optional[Tensor],
                      eps: float) -> tuple[Tensor, np.ndarray, np.ndarray]:
    cl = _channels_last(x)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        zeros = np.zeros(x.shape[1], _NUMPY_DTYPE[_param_dtype(x.dtype)])
        return dx, zeros, zeros.copy()
    out = _out(dx, cl)
    result, dweight, dbias = dropnorm.batch_norm_infer_backward(
        _array(dy, cl), _array(x, cl), _vector(running_mean), _vector(running_var),
        _vector(weight), eps=eps, axis=-1 if cl else 1, out=out)
    if out is None:
        _fill(dx, result, cl)
    return dx, dweight, dbias


# The fused batch norm + ReLU (BatchNormReLU1d/2d/3d): the kernels of the
# fused block, the gradient mask kept packed from the training forward.

def _k_train_relu(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  mean_a: Optional[np.ndarray], var_a: Optional[np.ndarray], momentum: float,
                  eps: float) -> tuple[Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """_k_train with the ReLU in the same pass: also the packed mask of
    where the gradient passes."""
    cl = _channels_last(x)
    y = torch.empty_like(x)
    out = _out(y, cl)
    result, save_mean, save_invstd, mask = dropnorm.batch_norm_train(
        _array(x, cl), _vector(weight), _vector(bias), mean_a, var_a, momentum=momentum,
        eps=eps, axis=-1 if cl else 1, out=out, activation="relu", return_mask=True)
    if out is None:
        _fill(y, result, cl)
    return y, save_mean, save_invstd, mask


def _k_backward_relu(dy: Tensor, x: Tensor, save_mean: np.ndarray, save_invstd: np.ndarray,
                     weight: Optional[Tensor],
                     mask: np.ndarray) -> tuple[Tensor, np.ndarray, np.ndarray]:
    cl = _channels_last(x)
    dx = torch.empty_like(x)
    out = _out(dx, cl)
    result, dweight, dbias = dropnorm.batch_norm_backward(
        _array(dy, cl), _array(x, cl), save_mean, save_invstd, _vector(weight),
        axis=-1 if cl else 1, out=out, activation="relu", mask=mask)
    if out is None:
        _fill(dx, result, cl)
    return dx, dweight, dbias


def _k_infer_relu(x: Tensor, running_mean: Tensor, running_var: Tensor,
                  weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    cl = _channels_last(x)
    y = torch.empty_like(x)
    out = _out(y, cl)
    result = dropnorm.batch_norm_infer(
        _array(x, cl), _vector(running_mean), _vector(running_var), _vector(weight),
        _vector(bias), eps=eps, axis=-1 if cl else 1, out=out, activation="relu")
    if out is None:
        _fill(y, result, cl)
    return y


# SyncBatchNorm's communicators, by the key their operators take (an
# operator's arguments are tensors and numbers, not objects).
_COMMS: dict[int, Any] = {}


def _comm_key(comm: Any) -> int:
    key = id(comm)
    _COMMS.setdefault(key, comm)
    return key


def _allgather(comm: Any, part: np.ndarray) -> np.ndarray:
    """The (3, C) float64 parts of every rank, stacked in rank order."""
    every = np.empty((comm.Get_size(),) + part.shape, np.float64)
    comm.Allgather(np.ascontiguousarray(part), every)
    return every


def _k_sync_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                  mean_a: Optional[np.ndarray], var_a: Optional[np.ndarray], momentum: float,
                  eps: float, comm: Any) -> tuple[Tensor, np.ndarray, np.ndarray, int]:
    """y, save_mean, save_invstd of this rank's shard normalised with the
    whole batch's statistics (one Allgather), and the batch's count."""
    cl = _channels_last(x)
    axis = -1 if cl else 1
    xa = _array(x, cl)
    every = _allgather(comm, dropnorm.batch_norm_partial_stats(xa, axis))
    mean, var, var_unbiased = dropnorm.batch_norm_merge_stats(every)
    y = torch.empty_like(x)
    out = _out(y, cl)
    result, save_mean, save_invstd = dropnorm.batch_norm_forward_apply(
        xa, mean, var, _vector(weight), _vector(bias), mean_a, var_a, var_unbiased=var_unbiased,
        momentum=momentum, eps=eps, axis=axis, out=out)
    if out is None:
        _fill(y, result, cl)
    return y, save_mean, save_invstd, int(every[:, 0, 0].sum())


def _k_sync_backward(dy: Tensor, x: Tensor, save_mean: np.ndarray, save_invstd: np.ndarray,
                     weight: Optional[Tensor], count: int,
                     comm: Any) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """dx of this rank's shard through the whole batch's statistics (one
    Allgather of the gradient sums, added in rank order), and this rank's
    part of dweight and dbias."""
    cl = _channels_last(x)
    axis = -1 if cl else 1
    dya, xa = _array(dy, cl), _array(x, cl)
    sums = dropnorm.batch_norm_backward_reduce(dya, xa, save_mean, axis)
    every = _allgather(comm, sums)
    total = every[0].copy()
    for part in every[1:]:
        total += part  # in rank order, the same on every rank
    dx = torch.empty_like(x)
    out = _out(dx, cl)
    result, dweight, dbias = dropnorm.batch_norm_backward_apply(
        dya, xa, save_mean, save_invstd, total, count, _vector(weight), local_sums=sums,
        axis=axis, out=out)
    if out is None:
        _fill(dx, result, cl)
    return dx, dweight, dbias


def _key(seed: Optional[int], stream: Any) -> tuple[int, int]:
    """(seed, stream) as unsigned 64-bit values: the given seed and stream
    (an int or a 0-d tensor), or without a seed torch.initial_seed() and a
    stream drawn from PyTorch's default CPU generator."""
    if seed is None:
        draw = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64))
        return torch.initial_seed() & _U64, draw & _U64
    return seed & _U64, int(stream) & _U64


def _k_dropout(x: Tensor, p: float, seed: int, stream: int, offset: int, channelwise: bool,
               cl: bool) -> Tensor:
    """Training dropout of x with the mask of (seed, stream); cl: x is a
    channels-last tensor, read as its (N, *spatial, C) memory (so element i
    is the i-th in memory, and channel decisions go by axis=-1)."""
    y = torch.empty_like(x)
    out = _out(y, cl)
    xa = _array(x, cl)
    if not channelwise:
        # element i is the i-th in memory: any shape, 0-d included, is a vector
        xa, out = xa.reshape(-1), None if out is None else out.reshape(-1)
    result = dropnorm.dropout(xa, p, seed=seed, stream=stream, channelwise=channelwise,
                              axis=-1 if cl else 1, out=out, offset=offset)
    if out is None:
        _fill(y, result, cl)
    return y


def _k_dropout_backward(dy: Tensor, p: float, seed: int, stream: int, offset: int,
                        channelwise: bool, cl: bool) -> Tensor:
    dx = torch.empty_like(dy)
    out = _out(dx, cl)
    dya = _array(dy, cl)
    if not channelwise:
        dya, out = dya.reshape(-1), None if out is None else out.reshape(-1)
    result = dropnorm.dropout_backward(dya, p, seed=seed, stream=stream,
                                       channelwise=channelwise, axis=-1 if cl else 1, out=out,
                                       offset=offset)
    if out is None:
        _fill(dx, result, cl)
    return dx


def _tensor(a: Optional[np.ndarray]) -> Optional[Tensor]:
    return None if a is None else torch.from_numpy(a)


# ---- the custom operators --------------------------------------------------------------------

@torch.library.custom_op("dropnorm::batch_norm_train", mutates_args=())
def _batch_norm_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      running_mean: Optional[Tensor], running_var: Optional[Tensor],
                      num_batches_tracked: Optional[Tensor], momentum: Optional[float],
                      eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training forward: (y, save_mean, save_invstd, new running_mean, new
    running_var); the last two are updated copies (empty without running
    statistics). momentum=None: 1/(num_batches_tracked + 1)."""
    _check_bn_operands(x, ("weight", weight), ("bias", bias), ("running_mean", running_mean),
                       ("running_var", running_var))
    new_mean, mean_a = _running(running_mean, x)
    new_var, var_a = _running(running_var, x)
    y, save_mean, save_invstd = _k_train(x, weight, bias, mean_a, var_a,
                                         _momentum(momentum, num_batches_tracked), eps)
    return (y, torch.from_numpy(save_mean), torch.from_numpy(save_invstd),
            _rounded_back(new_mean, running_mean), _rounded_back(new_var, running_var))


@_batch_norm_train.register_fake
def _batch_norm_train_fake(x, weight, bias, running_mean, running_var, num_batches_tracked,
                           momentum, eps):
    _check_bn_operands(x, ("weight", weight), ("bias", bias), ("running_mean", running_mean),
                       ("running_var", running_var))
    c, pdt = x.shape[1], _param_dtype(x.dtype)
    return (torch.empty_like(x), x.new_empty((c,), dtype=pdt), x.new_empty((c,), dtype=pdt),
            x.new_empty((0,)) if running_mean is None else torch.empty_like(running_mean),
            x.new_empty((0,)) if running_var is None else torch.empty_like(running_var))


@torch.library.custom_op("dropnorm::batch_norm_backward", mutates_args=())
def _batch_norm_backward(dy: Tensor, x: Tensor, save_mean: Tensor, save_invstd: Tensor,
                         weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Backward through batch statistics: (dx, dweight, dbias)."""
    dx, dweight, dbias = _k_backward(dy, x, _vector(save_mean), _vector(save_invstd), weight)
    return dx, torch.from_numpy(dweight), torch.from_numpy(dbias)


@_batch_norm_backward.register_fake
def _batch_norm_backward_fake(dy, x, save_mean, save_invstd, weight):
    c, pdt = x.shape[1], _param_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((c,), dtype=pdt), x.new_empty((c,), dtype=pdt)


def _setup_train(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.save_for_backward(x, weight, output[1], output[2])
    ctx.grad_bias = bias is not None
    ctx.mark_non_differentiable(*output[1:])


def _train_backward(ctx, dy, *unused):
    x, weight, save_mean, save_invstd = ctx.saved_tensors
    dx, dweight, dbias = _batch_norm_backward(dy, x, save_mean, save_invstd, weight)
    return (dx, dweight if weight is not None else None, dbias if ctx.grad_bias else None,
            None, None, None, None, None)


_batch_norm_train.register_autograd(_train_backward, setup_context=_setup_train)


@torch.library.custom_op("dropnorm::batch_norm_infer", mutates_args=())
def _batch_norm_infer(x: Tensor, running_mean: Tensor, running_var: Tensor,
                      weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """Inference forward with frozen statistics."""
    _check_bn_operands(x, ("running_mean", running_mean), ("running_var", running_var),
                       ("weight", weight), ("bias", bias))
    return _k_infer(x, running_mean, running_var, weight, bias, eps)


@_batch_norm_infer.register_fake
def _batch_norm_infer_fake(x, running_mean, running_var, weight, bias, eps):
    _check_bn_operands(x, ("running_mean", running_mean), ("running_var", running_var),
                       ("weight", weight), ("bias", bias))
    return torch.empty_like(x)


@torch.library.custom_op("dropnorm::batch_norm_infer_backward", mutates_args=())
def _batch_norm_infer_backward(dy: Tensor, x: Tensor, running_mean: Tensor,
                               running_var: Tensor, weight: Optional[Tensor],
                               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Backward through frozen statistics: (dx, dweight, dbias)."""
    dx, dweight, dbias = _k_infer_backward(dy, x, running_mean, running_var, weight, eps)
    return dx, torch.from_numpy(dweight), torch.from_numpy(dbias)


@_batch_norm_infer_backward.register_fake
def _batch_norm_infer_backward_fake(dy, x, running_mean, running_var, weight, eps):
    c, pdt = x.shape[1], _param_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((c,), dtype=pdt), x.new_empty((c,), dtype=pdt)


def _setup_infer(ctx, inputs, output):
    x, running_mean, running_var, weight, bias, eps = inputs
    ctx.save_for_backward(x, running_mean, running_var, weight)
    ctx.eps = eps
    ctx.grad_bias = bias is not None


def _infer_backward(ctx, dy):
    x, running_mean, running_var, weight = ctx.saved_tensors
    dx, dweight, dbias = _batch_norm_infer_backward(dy, x, running_mean, running_var, weight,
                                                    ctx.eps)
    return (dx, None, None, dweight if weight is not None else None,
            dbias if ctx.grad_bias else None, None)


_batch_norm_infer.register_autograd(_infer_backward, setup_context=_setup_infer)


@torch.library.custom_op("dropnorm::sync_batch_norm_train", mutates_args=())
def _sync_batch_norm_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                           running_mean: Optional[Tensor], running_var: Optional[Tensor],
                           num_batches_tracked: Optional[Tensor], momentum: Optional[float],
                           eps: float, comm: int) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                           Tensor, Tensor]:
    """Training forward of this rank's shard with the whole batch's
    statistics: batch_norm_train's outputs and the whole batch's count per
    channel (int64). comm: the communicator's key in _COMMS."""
    _check_bn_operands(x, ("weight", weight), ("bias", bias), ("running_mean", running_mean),
                       ("running_var", running_var))
    new_mean, mean_a = _running(running_mean, x)
    new_var, var_a = _running(running_var, x)
    y, save_mean, save_invstd, count = _k_sync_train(
        x, weight, bias, mean_a, var_a, _momentum(momentum, num_batches_tracked), eps,
        _COMMS[comm])
    return (y, torch.from_numpy(save_mean), torch.from_numpy(save_invstd),
            _rounded_back(new_mean, running_mean), _rounded_back(new_var, running_var),
            torch.tensor(count, dtype=torch.int64))


@_sync_batch_norm_train.register_fake
def _sync_batch_norm_train_fake(x, weight, bias, running_mean, running_var,
                                num_batches_tracked, momentum, eps, comm):
    return (*_batch_norm_train_fake(x, weight, bias, running_mean, running_var,
                                    num_batches_tracked, momentum, eps),
            x.new_empty((), dtype=torch.int64))


@torch.library.custom_op("dropnorm::sync_batch_norm_backward", mutates_args=())
def _sync_batch_norm_backward(dy: Tensor, x: Tensor, save_mean: Tensor, save_invstd: Tensor,
                              weight: Optional[Tensor], count: Tensor,
                              comm: int) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of this rank's shard through the whole batch's statistics:
    dx, and this rank's part of dweight and dbias."""
    dx, dweight, dbias = _k_sync_backward(dy, x, _vector(save_mean), _vector(save_invstd),
                                          weight, int(count), _COMMS[comm])
    return dx, torch.from_numpy(dweight), torch.from_numpy(dbias)


@_sync_batch_norm_backward.register_fake
def _sync_batch_norm_backward_fake(dy, x, save_mean, save_invstd, weight, count, comm):
    return _batch_norm_backward_fake(dy, x, save_mean, save_invstd, weight)


def _setup_sync(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.save_for_backward(x, weight, output[1], output[2], output[5])
    ctx.grad_bias = bias is not None
    ctx.comm = inputs[8]
    ctx.mark_non_differentiable(*output[1:])


def _sync_backward(ctx, dy, *unused):
    x, weight, save_mean, save_invstd, count = ctx.saved_tensors
    dx, dweight, dbias = _sync_batch_norm_backward(dy, x, save_mean, save_invstd, weight, count,
                                                   ctx.comm)
    return (dx, dweight if weight is not None else None, dbias if ctx.grad_bias else None,
            None, None, None, None, None, None)


_sync_batch_norm_train.register_autograd(_sync_backward, setup_context=_setup_sync)


@torch.library.custom_op("dropnorm::dropout", mutates_args=())
def _dropout(x: Tensor, p: float, seed: Optional[int], stream: Tensor, offset: int,
             channelwise: bool) -> tuple[Tensor, Tensor]:
    """Training dropout: (y, key), key the int64 pair (seed, stream) the mask
    came from (the backward's). seed=None draws the key (see _key); the
    stream tensor (int64, 0-d) is the stream with a seed, and with none
    still an input, so that no two calls look alike to a compiler."""
    _check_tensor("input", x)
    seed_u, stream_u = _key(seed, stream)
    y = _k_dropout(x, p, seed_u, stream_u, offset, channelwise, _channels_last(x))
    key = torch.tensor([_as_signed(seed_u), _as_signed(stream_u)], dtype=torch.int64)
    return y, key


@_dropout.register_fake
def _dropout_fake(x, p, seed, stream, offset, channelwise):
    _check_tensor("input", x)
    return torch.empty_like(x), x.new_empty((2,), dtype=torch.int64)


@torch.library.custom_op("dropnorm::dropout_backward", mutates_args=())
def _dropout_backward(dy: Tensor, p: float, key: Tensor, offset: int, channelwise: bool,
                      channels_last: bool) -> Tensor:
    """dx of a training dropout, its mask regenerated from key; channels_last:
    whether the forward read its input as (N, *spatial, C) memory."""
    seed_u, stream_u = (int(v) & _U64 for v in key)
    return _k_dropout_backward(dy, p, seed_u, stream_u, offset, channelwise, channels_last)


@_dropout_backward.register_fake
def _dropout_backward_fake(dy, p, key, offset, channelwise, channels_last):
    return torch.empty_like(dy)


def _setup_dropout(ctx, inputs, output):
    x, p, seed, stream, offset, channelwise = inputs
    ctx.p, ctx.offset, ctx.channelwise = p, offset, channelwise
    ctx.channels_last = _channels_last(x)
    ctx.save_for_backward(output[1])


def _dropout_grad(ctx, dy, unused):
    (key,) = ctx.saved_tensors
    dx = _dropout_backward(dy, ctx.p, key, ctx.offset, ctx.channelwise, ctx.channels_last)
    return dx, None, None, None, None, None


_dropout.register_autograd(_dropout_grad, setup_context=_setup_dropout)


# ---- the eager route -------------------------------------------------------------------------

# the tests of _eager, looked up once (a call's cost matters here)
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch._C._is_tracing
_transforms_active = torch._C._are_functorch_transforms_active


def _eager(x: Tensor) -> bool:
    """Whether a call on x takes the eager route (a plain tensor, not traced
    by torch.compile, export or torch.jit.trace, no torch.func transform)
    rather than the custom operators. (Under dynamo the first two tests
    decide: the others are never reached.)"""
    return (type(x) is Tensor and not _is_compiling() and not _is_tracing()
            and not _transforms_active())


class _TrainFunction(torch.autograd.Function):
    """batch_norm_train on the eager route: the running statistics (in
    `running`, not autograd inputs) are updated in place."""

    @staticmethod
    def forward(ctx, x, weight, bias, running, momentum, eps):
        running_mean, running_var, tracked = running
        views = _stat_views(running_mean, running_var)
        y, save_mean, save_invstd = _k_train(x, weight, bias, *views,
                                             _momentum(momentum, tracked), eps)
        _stat_commit(running_mean, running_var, *views)
        ctx.save_for_backward(x, weight)
        ctx.stats = (save_mean, save_invstd)
        ctx.grad_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dweight, dbias = _k_backward(dy, x, *ctx.stats, weight)
        return (dx, _tensor(dweight) if weight is not None else None,
                _tensor(dbias) if ctx.grad_bias else None, None, None, None)


class _InferFunction(torch.autograd.Function):
    """batch_norm_infer on the eager route."""

    @staticmethod
    def forward(ctx, x, weight, bias, running, eps):
        running_mean, running_var = running
        ctx.save_for_backward(x, weight, running_mean, running_var)
        ctx.eps = eps
        ctx.grad_bias = bias is not None
        return _k_infer(x, running_mean, running_var, weight, bias, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, running_mean, running_var = ctx.saved_tensors
        dx, dweight, dbias = _k_infer_backward(dy, x, running_mean, running_var, weight,
                                               ctx.eps)
        return (dx, _tensor(dweight) if weight is not None else None,
                _tensor(dbias) if ctx.grad_bias else None, None, None)


class _TrainReluFunction(torch.autograd.Function):
    """batch_norm_train with the fused ReLU, on the eager route; the
    backward masks dy with the forward's packed mask."""

    @staticmethod
    def forward(ctx, x, weight, bias, running, momentum, eps):
        running_mean, running_var, tracked = running
        y, save_mean, save_invstd, mask = _k_train_relu(
            x, weight, bias, *_stat_views(running_mean, running_var),
            _momentum(momentum, tracked), eps)
        ctx.save_for_backward(x, weight)
        ctx.stats = (save_mean, save_invstd, mask)
        ctx.grad_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        save_mean, save_invstd, mask = ctx.stats
        dx, dweight, dbias = _k_backward_relu(dy, x, save_mean, save_invstd, weight, mask)
        return (dx, _tensor(dweight) if weight is not None else None,
                _tensor(dbias) if ctx.grad_bias else None, None, None, None)


class _InferReluFunction(torch.autograd.Function):
    """batch_norm_infer with the fused ReLU, on the eager route; the
    backward masks dy where the output is not positive (+0 there)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running, eps):
        running_mean, running_var = running
        y = _k_infer_relu(x, running_mean, running_var, weight, bias, eps)
        ctx.save_for_backward(x, weight, running_mean, running_var, y)
        ctx.eps = eps
        ctx.grad_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, running_mean, running_var, y = ctx.saved_tensors
        g = torch.where(y > 0, dy, torch.zeros((), dtype=dy.dtype))
        dx, dweight, dbias = _k_infer_backward(g, x, running_mean, running_var, weight,
                                               ctx.eps)
        return (dx, _tensor(dweight) if weight is not None else None,
                _tensor(dbias) if ctx.grad_bias else None, None, None)


class _SyncFunction(torch.autograd.Function):
    """sync_batch_norm_train on the eager route."""

    @staticmethod
    def forward(ctx, x, weight, bias, running, momentum, eps, comm):
        running_mean, running_var, tracked = running
        views = _stat_views(running_mean, running_var)
        y, save_mean, save_invstd, count = _k_sync_train(
            x, weight, bias, *views, _momentum(momentum, tracked), eps, comm)
        _stat_commit(running_mean, running_var, *views)
        ctx.save_for_backward(x, weight)
        ctx.stats = (save_mean, save_invstd, count, comm)
        ctx.grad_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        save_mean, save_invstd, count, comm = ctx.stats
        dx, dweight, dbias = _k_sync_backward(dy, x, save_mean, save_invstd, weight, count, comm)
        return (dx, _tensor(dweight) if weight is not None else None,
                _tensor(dbias) if ctx.grad_bias else None, None, None, None, None)


class _DropoutFunction(torch.autograd.Function):
    """dropout on the eager route; the key drawn (or given) is kept for the
    backward, which regenerates the mask."""

    @staticmethod
    def forward(ctx, x, p, seed, stream, offset, channelwise):
        seed_u, stream_u = _key(seed, stream)
        cl = _channels_last(x)
        ctx.args = (p, seed_u, stream_u, offset, channelwise, cl)
        return _k_dropout(x, p, seed_u, stream_u, offset, channelwise, cl)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        return _k_dropout_backward(dy, *ctx.args), None, None, None, None, None


def _train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
           running_mean: Optional[Tensor], running_var: Optional[Tensor],
           tracked: Optional[Tensor], momentum: Optional[float], eps: float) -> Tensor:
    """y of a training forward; the running statistics, when given, are
    updated, and tracked (num_batches_tracked, when given) counts the batch."""
    if _eager(x):
        try:
            y = _TrainFunction.apply(x, weight, bias, (running_mean, running_var, tracked),
                                     momentum, eps)
        except Exception:
            # a tensor on another device or of another layout fails its
            # conversion to NumPy: say which, else the error as it is
            _check_bn_operands(x, ("weight", weight), ("bias", bias),
                               ("running_mean", running_mean), ("running_var", running_var))
            raise
    else:
        y, _, _, new_mean, new_var = _batch_norm_train(x, weight, bias, running_mean,
                                                       running_var, tracked, momentum, eps)
        _commit(running_mean, running_var, new_mean, new_var)
    if tracked is not None:
        tracked.add_(1)
    return y


def _train_relu(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor],
                tracked: Optional[Tensor], momentum: Optional[float], eps: float) -> Tensor:
    """_train followed by a ReLU: one fused pass on the eager route; traced
    (torch.compile, export), the batch_norm_train operator then torch.relu."""
    if not _eager(x):
        return torch.relu(_train(x, weight, bias, running_mean, running_var, tracked, momentum,
                                 eps))
    try:
        y = _TrainReluFunction.apply(x, weight, bias, (running_mean, running_var, tracked),
                                     momentum, eps)
    except Exception:
        _check_bn_operands(x, ("weight", weight), ("bias", bias),
                           ("running_mean", running_mean), ("running_var", running_var))
        raise
    if tracked is not None:
        tracked.add_(1)
    return y


def _infer_relu(x: Tensor, running_mean: Tensor, running_var: Tensor,
                weight: Optional[Tensor], bias: Optional[Tensor], eps: float) -> Tensor:
    """_infer followed by a ReLU (fused on the eager route, as _train_relu)."""
    if not _eager(x):
        return torch.relu(_infer(x, running_mean, running_var, weight, bias, eps))
    try:
        return _InferReluFunction.apply(x, weight, bias, (running_mean, running_var), eps)
    except Exception:
        _check_bn_operands(x, ("running_mean", running_mean),
                           ("running_var", running_var), ("weight", weight), ("bias", bias))
        raise


def _infer(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor],
           bias: Optional[Tensor], eps: float) -> Tensor:
    """y of an inference forward with the running statistics."""
    if _eager(x):
        try:
            return _InferFunction.apply(x, weight, bias, (running_mean, running_var), eps)
        except Exception:
            _check_bn_operands(x, ("running_mean", running_mean),
                               ("running_var", running_var), ("weight", weight), ("bias", bias))
            raise
    return _batch_norm_infer(x, running_mean, running_var, weight, bias, eps)


def _sync_train(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                running_mean: Optional[Tensor], running_var: Optional[Tensor],
                tracked: Optional[Tensor], momentum: Optional[float], eps: float,
                comm: Any) -> Tensor:
    """_train with the whole batch's statistics over comm."""
    if _eager(x):
        try:
            y = _SyncFunction.apply(x, weight, bias, (running_mean, running_var, tracked),
                                    momentum, eps, comm)
        except Exception:
            _check_bn_operands(x, ("weight", weight), ("bias", bias),
                               ("running_mean", running_mean), ("running_var", running_var))
            raise
    else:
        y, _, _, new_mean, new_var, _ = _sync_batch_norm_train(
            x, weight, bias, running_mean, running_var, tracked, momentum, eps,
            _comm_key(comm))
        _commit(running_mean, running_var, new_mean, new_var)
    if tracked is not None:
        tracked.add_(1)
    return y


def _commit(running_mean: Optional[Tensor], running_var: Optional[Tensor], new_mean: Tensor,
            new_var: Tensor) -> None:
    """The running statistics' update by an operator (its updated copies)."""
    if running_mean is not None:
        running_mean.copy_(new_mean.detach())
    if running_var is not None:
        running_var.copy_(new_var.detach())


def _apply_dropout(x: Tensor, p: float, seed: Optional[int], stream: Any, offset: int,
                   channelwise: bool, inplace: bool) -> Tensor:
    """Training dropout of x (p > 0). seed: a signed 64-bit key or None;
    stream: a module's int64 0-d counter, or an int (the functional form)."""
    if _eager(x):  # x is checked by the callers
        y = _DropoutFunction.apply(x, p, seed, stream, offset, channelwise)
    else:
        if not isinstance(stream, Tensor):
            # with a seed the stream's value; without, a fresh tensor
            # (torch.empty, which compilers never merge), so that two such
            # calls in one graph stay two calls with two masks
            stream = (torch.empty((), dtype=torch.int64) if seed is None
                      else torch.tensor(stream, dtype=torch.int64))
        y, _ = _dropout(x, p, seed, stream, offset, channelwise)
    if inplace:
        return x.copy_(y)
    return y


# ---- functions -----------------------------------------------------------------------------

# The functions' checks, in plain Python (dynamo traces them; it cannot trace
# the compiled ones of dropnorm._checks), with the same rules and messages:
# bool is not a number, flags are bools, integers are not floats.

def _real(name: str, value: Any, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    value = float(value)
    if not low <= value <= high:  # NaN fails too
        raise ValueError(f"{name}: expected {what}, got {value}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool (True or False), got {type(value).__name__}")
    return value


def _uint64(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= _U64:
        raise ValueError(f"{name}: expected an integer in [0, 2**64), got {value}")
    return value


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Batch normalization with dropnorm's kernels, as
    ``torch.nn.functional.batch_norm`` (the same arguments and results).

    input: (N, C, *spatial), a CPU float32/float64/float16/bfloat16 tensor, contiguous or
    channels_last (other strides are copied). running_mean, running_var:
    (C,) tensors or None. weight, bias: (C,) tensors or None (1 and 0).
    training: True normalises with the batch's statistics and, when
    running_mean/running_var are given, updates them in place:
    r = (1 - momentum)*r + momentum*batch (the unbiased variance into
    running_var); False uses the running statistics (required then).
    momentum: a real number in [0, 1]. eps: added to the variance, >= 0.
    Differentiable (first order) with respect to input, weight and bias.
    """
    _check_tensor("input", input)
    eps = _real("eps", eps, 0.0, float("inf"), "a finite value >= 0")
    if _flag("training", training):
        momentum = _real("momentum", momentum, 0.0, 1.0, "a value in [0, 1]")
        return _train(input, weight, bias, running_mean, running_var, None, momentum, eps)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean: training=False normalises with the running "
                         "statistics, so running_mean and running_var are required")
    return _infer(input, running_mean, running_var, weight, bias, eps)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
            seed: Optional[int] = None, stream: int = 0, channelwise: bool = False,
            offset: int = 0) -> Tensor:
    """Dropout with dropnorm's kernels, as ``torch.nn.functional.dropout``
    (and, with channelwise=True, ``dropout1d/2d/3d`` on batched input).

    input: a CPU float32/float64/float16/bfloat16 tensor of any shape (channelwise: (N, C,
    *spatial), one decision per (n, c)). p: the drop probability, in [0, 1].
    training: False (or p == 0) returns input itself, as PyTorch does.
    inplace: write the result into input and return input.
    seed: None draws the mask's key as the modules do (torch.initial_seed()
    and a stream from PyTorch's default generator, so torch.manual_seed makes
    it repeatable); an integer in [0, 2**64) fixes the mask to the one of
    (seed, stream), stream an integer in [0, 2**64) (ignored without a
    seed). offset: the index of this tensor's first decision in a larger
    batch (a shard's, in data-parallel training), >= 0.
    Kept values are scaled by 1/(1-p), dropped ones are exactly 0; the
    backward regenerates the mask, storing none.
    """
    _check_tensor("input", input)
    p = _real("p", p, 0.0, 1.0, "a probability in [0, 1]")
    training = _flag("training", training)
    inplace = _flag("inplace", inplace)
    channelwise = _flag("channelwise", channelwise)
    offset = _uint64("offset", offset)
    stream = _as_signed(_uint64("stream", stream))
    if seed is not None:
        seed = _as_signed(_uint64("seed", seed))
    if not training or p == 0.0:
        return input
    return _apply_dropout(input, p, seed, stream, offset, channelwise, inplace)


# ---- modules -------------------------------------------------------------------------------

def _batch_norm_forward(m: Any, x: Tensor, relu: bool = False) -> Tensor:
    """torch.nn's _BatchNorm.forward, on dropnorm's kernels (relu: followed
    by a ReLU, fused)."""
    _check_tensor("input", x)
    update = m.training and m.track_running_stats
    if m.training or (m.running_mean is None and m.running_var is None):
        return (_train_relu if relu else _train)(
            x, m.weight, m.bias, m.running_mean if update else None,
            m.running_var if update else None, m.num_batches_tracked if update else None,
            m.momentum, m.eps)
    return (_infer_relu if relu else _infer)(x, m.running_mean, m.running_var, m.weight,
                                             m.bias, m.eps)


_BATCHNORM_ARGS = """
    Parameters (those of torch.nn.{name}):
      num_features: C, the number of channels.
      eps: added to the variance before the square root (default 1e-5).
      momentum: the weight of each training batch in the running
        statistics, r = (1 - momentum)*r + momentum*batch (the unbiased
        variance into running_var); or None for the cumulative average over
        the batches seen (num_batches_tracked counts them).
      affine: learn a per-channel weight (1) and bias (0).
      track_running_stats: keep running_mean, running_var and
        num_batches_tracked and normalise with them in eval mode; with
        False, eval mode uses the batch's statistics too.
      device: None or the CPU (another device is a ValueError).
      dtype: the parameters' and buffers' dtype: None (the default dtype),
        torch.float32, torch.float64, torch.float16 or torch.bfloat16. The
        input has it, or is float16/bfloat16 with float32 parameters (mixed
        precision, as torch.nn on the CPU).
      bias: with affine, whether there is a bias (False: weight only).
"""


class _DropnormBatchNorm:
    """What BatchNorm1d/2d/3d add to torch.nn's: the device and dtype checks
    and dropnorm's forward."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        _check_device(device)
        _check_dtype(dtype)
        # torch.nn.BatchNorm1d/2d/3d's, next in the subclass's MRO
        super().__init__(num_features, eps, momentum, affine,  # type: ignore[call-arg]
                         track_running_stats, device, dtype, bias=bias)

    def forward(self, input: Tensor) -> Tensor:
        """Normalise input (N, C, *spatial) with the batch's statistics
        (training, updating the running ones) or the running ones (eval),
        as torch.nn does, with dropnorm's kernels."""
        self._check_input_dim(input)  # type: ignore[attr-defined]
        return _batch_norm_forward(self, input)


class BatchNorm1d(_DropnormBatchNorm, nn.BatchNorm1d):
    __doc__ = """torch.nn.BatchNorm1d on dropnorm's kernels: (N, C) or (N, C, L) input.

    Subclass of torch.nn.BatchNorm1d that replaces forward: the same
    constructor, parameters (weight, bias), buffers (running_mean,
    running_var, num_batches_tracked), state_dict keys and behaviour in
    train() and eval(). Input: a CPU float32/float64/float16/bfloat16 tensor, contiguous or
    with its channels last in memory ((N, L, C) permuted); other strides
    are copied.
""" + _BATCHNORM_ARGS.format(name="BatchNorm1d")


class BatchNorm2d(_DropnormBatchNorm, nn.BatchNorm2d):
    __doc__ = """torch.nn.BatchNorm2d on dropnorm's kernels: (N, C, H, W) input.

    Subclass of torch.nn.BatchNorm2d that replaces forward: the same
    constructor, parameters (weight, bias), buffers (running_mean,
    running_var, num_batches_tracked), state_dict keys and behaviour in
    train() and eval(). Input: a CPU float32/float64/float16/bfloat16 tensor, contiguous or
    torch.channels_last (its NHWC memory goes to the kernel as it is); other
    strides are copied. The output has the input's memory format.
""" + _BATCHNORM_ARGS.format(name="BatchNorm2d")


class BatchNorm3d(_DropnormBatchNorm, nn.BatchNorm3d):
    __doc__ = """torch.nn.BatchNorm3d on dropnorm's kernels: (N, C, D, H, W) input.

    Subclass of torch.nn.BatchNorm3d that replaces forward: the same
    constructor, parameters (weight, bias), buffers (running_mean,
    running_var, num_batches_tracked), state_dict keys and behaviour in
    train() and eval(). Input: a CPU float32/float64/float16/bfloat16 tensor, contiguous or
    torch.channels_last_3d (NDHWC memory, as it is); other strides are
    copied. The output has the input's memory format.
""" + _BATCHNORM_ARGS.format(name="BatchNorm3d")


class _DropnormBatchNormReLU:
    """What BatchNormReLU1d/2d/3d add: the ReLU fused into the forward."""

    def forward(self, input: Tensor) -> Tensor:
        """relu(batch_norm(input)) in one pass (see the class docstring)."""
        self._check_input_dim(input)  # type: ignore[attr-defined]
        return _batch_norm_forward(self, input, relu=True)


_RELU_DOC = """{name} followed by torch.nn.ReLU, fused: relu(bn(x)) in one pass.

    Subclass of dropnorm.torch.{name} (so of torch.nn.{name}: the same
    constructor, parameters, buffers and state_dict keys) whose forward
    applies the ReLU in the batch norm's own pass, bit for bit
    dropnorm.torch.{name} followed by the ReLU; the backward masks the
    gradient with a packed mask kept from the forward (1 bit per element).
    convert(model, fuse_relu=True) puts it where a batch norm is followed by
    a ReLU in an nn.Sequential. Under torch.compile or export it runs the
    batch-norm operator and then torch.relu (the same values).
"""


class BatchNormReLU1d(_DropnormBatchNormReLU, BatchNorm1d):
    __doc__ = _RELU_DOC.format(name="BatchNorm1d") + _BATCHNORM_ARGS.format(name="BatchNorm1d")


class BatchNormReLU2d(_DropnormBatchNormReLU, BatchNorm2d):
    __doc__ = _RELU_DOC.format(name="BatchNorm2d") + _BATCHNORM_ARGS.format(name="BatchNorm2d")


class BatchNormReLU3d(_DropnormBatchNormReLU, BatchNorm3d):
    __doc__ = _RELU_DOC.format(name="BatchNorm3d") + _BATCHNORM_ARGS.format(name="BatchNorm3d")


def _as_comm(comm: Any) -> Any:
    """A communicator argument: None (MPI.COMM_WORLD, resolved when first
    needed) or anything with Allgather and Get_size (an mpi4py communicator)."""
    if comm is None:
        return None
    return _sync._as_comm(comm)


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on dropnorm's kernels, over MPI (mpi4py).

    Batch norm of a batch split over processes (data-parallel training):
    every process (rank) holds a shard, and a training forward normalises
    it with the statistics of the whole batch, gathered with one Allgather
    of each rank's per-channel (count, mean, M2) and merged in rank order
    (Chan et al.), so every rank gets bitwise the same statistics, exact as
    in one process. The backward is one Allgather of the per-channel
    gradient sums. grad of weight and bias is this rank's part, as in
    PyTorch's SyncBatchNorm: summed over the ranks (the all-reduce of the
    gradients) it is the whole batch's. Shards may differ in size, down to
    none. Every rank must make the same training forwards and backwards in
    the same order. Eval mode uses the running statistics (or, without
    them, this rank's batch statistics, as PyTorch's) and communicates
    nothing. Subclass of torch.nn.SyncBatchNorm: its parameters, buffers and
    state_dict keys; (N, C, *spatial) input of any rank >= 2, contiguous or
    channels last.

    Parameters (those of torch.nn.SyncBatchNorm, and comm):
      num_features: C, the number of channels.
      eps: added to the variance before the square root (default 1e-5).
      momentum: the weight of each training batch in the running
        statistics (the unbiased variance of the whole batch into
        running_var); or None for the cumulative average over the batches
        seen.
      affine: learn a per-channel weight (1) and bias (0).
      track_running_stats: keep running_mean, running_var and
        num_batches_tracked (the same on every rank) and normalise with them
        in eval mode.
      process_group: the communicator: an mpi4py communicator (anything
        with Allgather and Get_size), or None for comm's.
      device: None or the CPU (another device is a ValueError).
      dtype: the parameters' and buffers' dtype: None (the default dtype),
        torch.float32, torch.float64, torch.float16 or torch.bfloat16.
      bias: with affine, whether there is a bias (False: weight only).
      comm: the communicator, by dropnorm.SyncBatchNorm's name (give it
        or process_group, not both); with both None, mpi4py's
        MPI.COMM_WORLD, taken at the first training forward (pip install
        "dropnorm[mpi]" and an MPI library).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Any = None, device: Any = None, dtype: Any = None, *,
                 bias: bool = True, comm: Any = None) -> None:
        _check_device(device)
        _check_dtype(dtype)
        if process_group is not None and comm is not None:
            raise ValueError("comm: give the communicator as comm or as process_group, "
                             "not both")
        comm = _as_comm(comm if comm is not None else process_group)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, None,
                         device, dtype, bias=bias)
        self.process_group = comm
        self.comm = comm

    def forward(self, input: Tensor) -> Tensor:
        """Normalise input, this rank's shard (N, C, *spatial), N >= 0: with
        the whole batch's statistics in training (a collective), else as
        BatchNorm2d does."""
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        _check_tensor("input", input)
        if not self.training:
            return _batch_norm_forward(self, input)
        if self.comm is None:
            self.comm = _sync._comm_world()
        update = self.track_running_stats
        return _sync_train(input, self.weight, self.bias,
                           self.running_mean if update else None,
                           self.running_var if update else None,
                           self.num_batches_tracked if update else None, self.momentum,
                           self.eps, self.comm)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module,
                               process_group: Any = None) -> nn.Module:
        """module with every torch.nn BatchNorm1d/2d/3d and SyncBatchNorm
        replaced, recursively, by this SyncBatchNorm over process_group (an
        mpi4py communicator; None: MPI.COMM_WORLD), keeping parameters,
        buffers and mode, as torch.nn.SyncBatchNorm.convert_sync_batchnorm
        does; dropout modules are left as they are (convert() swaps them
        too). Returns module, or the new module if module itself is one."""
        return _convert(module, _as_comm(process_group), True, False)


def _as_seed(seed: Any) -> Optional[int]:
    """A dropout module's seed: None, or an integer in [0, 2**64)."""
    return None if seed is None else _uint64("seed", seed)


class _DropnormDropout:
    """What Dropout and Dropout1d/2d/3d add to torch.nn's: the seed, the
    stream counter and dropnorm's forward."""

    p: float
    inplace: bool
    training: bool
    stream: Tensor

    _seed: Optional[int]

    def __init__(self, p: float = 0.5, inplace: bool = False, seed: Optional[int] = None) -> None:
        # torch.nn.Dropout/1d/2d/3d's, next in the subclass's MRO
        super().__init__(p, inplace)  # type: ignore[call-arg]
        self._setup_seed(seed)

    @property
    def seed(self) -> Optional[int]:
        """The key of every mask, an integer in [0, 2**64), or None for
        torch.initial_seed() with a stream drawn from PyTorch's generator
        at each training forward; settable, checked."""
        return self._seed

    @seed.setter
    def seed(self, value: Any) -> None:
        self._seed = _as_seed(value)

    def _setup_seed(self, seed: Any) -> None:
        self._seed = _as_seed(seed)
        # the stream of the next training forward, with a seed; a buffer, so
        # that torch.compile reads it at run time, not persistent (no
        # state_dict key: torch.nn's dropouts have none)
        self.register_buffer(  # type: ignore[attr-defined]
            "stream", torch.zeros((), dtype=torch.int64), persistent=False)

    def _drop(self, x: Tensor, channelwise: bool, offset: int) -> Tensor:
        seed = None if self._seed is None else _as_signed(self._seed)
        y = _apply_dropout(x, self.p, seed, self.stream, offset, channelwise, self.inplace)
        self.stream.add_(1)
        return y

    def extra_repr(self) -> str:
        seed = "" if self.seed is None else f", seed={self.seed}"
        return f"p={self.p}, inplace={self.inplace}{seed}"


_DROPOUT_ARGS = """
    Parameters (those of torch.nn.{name}, and seed):
      p: the probability of an element{what} to be zeroed, in [0, 1].
      inplace: write the result into the input and return it.
      seed: None (default): each training forward takes the key
        torch.initial_seed() and a stream drawn from PyTorch's default CPU
        generator, so torch.manual_seed(n) makes the masks repeatable and no
        two calls share one. An integer in [0, 2**64): the key of every mask,
        with the streams 0, 1, 2, ... of this module (the buffer ``stream``,
        not in the state_dict).

    forward(input, offset=0): offset is the index of the input's first
    decision in a larger batch (a shard's, in data-parallel training).
    The backward regenerates the mask from its (seed, stream): none is
    stored. Kept values are scaled by 1/(1-p), dropped ones are exactly 0.
    Eval mode (and p == 0) returns the input itself, as PyTorch does.
"""


def _check_offset(offset: int) -> int:
    return _uint64("offset", offset)


class Dropout(_DropnormDropout, nn.Dropout):
    __doc__ = """torch.nn.Dropout on dropnorm's kernels: each element is zeroed
    with probability p, any shape.

    Subclass of torch.nn.Dropout that replaces forward (and adds seed).
    Input: a CPU float32/float64/float16/bfloat16 tensor; element i is the i-th in memory.
""" + _DROPOUT_ARGS.format(name="Dropout", what="")

    def forward(self, input: Tensor, offset: int = 0) -> Tensor:
        """Dropout of input in training mode (offset: its first decision in a
        larger batch); input itself in eval mode or with p == 0."""
        _check_tensor("input", input)
        if not self.training or self.p == 0.0:
            return input
        return self._drop(input, False, _check_offset(offset))


def _channel_forward(m: Any, x: Tensor, batched: bool, offset: int) -> Tensor:
    """Channel dropout of x, (N, C, *spatial), or of x[None] when not batched."""
    _check_tensor("input", x)
    if not m.training or m.p == 0.0:
        return x
    if batched:
        return m._drop(x, True, _check_offset(offset))
    y = m._drop(x.unsqueeze(0), True, _check_offset(offset)).squeeze(0)
    return x if m.inplace else y


class Dropout1d(_DropnormDropout, nn.Dropout1d):
    __doc__ = """torch.nn.Dropout1d on dropnorm's kernels: whole channels of
    (N, C, L), or of unbatched (C, L), are zeroed, one decision per (n, c).

    Subclass of torch.nn.Dropout1d that replaces forward (and adds seed).
    Input: a CPU float32/float64/float16/bfloat16 tensor, contiguous or with its channels
    last in memory; other strides are copied. Other ranks than 2 and 3 are a
    ValueError (PyTorch: RuntimeError).
""" + _DROPOUT_ARGS.format(name="Dropout1d", what="'s channel")

    def forward(self, input: Tensor, offset: int = 0) -> Tensor:
        """Channel dropout of input, (N, C, L) or (C, L), in training mode
        (offset: its first (n, c) decision in a larger batch); input itself
        in eval mode or with p == 0."""
        if input.dim() not in (2, 3):
            raise ValueError(f"input: Dropout1d expects a 2-D (C, L) or 3-D (N, C, L) "
                             f"tensor, got {input.dim()}-D")
        return _channel_forward(self, input, input.dim() == 3, offset)


class Dropout2d(_DropnormDropout, nn.Dropout2d):
    __doc__ = """torch.nn.Dropout2d on dropnorm's kernels: whole channels of
    (N, C, H, W) are zeroed, one decision per (n, c).

    Subclass of torch.nn.Dropout2d that replaces forward (and adds seed).
    Input: a CPU float32/float64/float16/bfloat16 tensor, contiguous or channels_last (its
    NHWC memory, as it is); other strides are copied. As PyTorch 2.13, a
    3-D input is read as (N, C, L) with PyTorch's warning, and other ranks
    than 3 and 4 take a channel dropout over dimension 1 with its
    deprecation warning.
""" + _DROPOUT_ARGS.format(name="Dropout2d", what="'s channel")

    def forward(self, input: Tensor, offset: int = 0) -> Tensor:
        """Channel dropout of input, (N, C, H, W), in training mode (offset:
        its first (n, c) decision in a larger batch); input itself in eval
        mode or with p == 0."""
        ndim = input.dim()
        if ndim not in (3, 4):
            warnings.warn(
                f"dropout2d: Received a {ndim}-D input to dropout2d, which is deprecated "
                "and will result in an error in a future release. To retain the behavior "
                "and silence this warning, please use dropout instead. Note that dropout2d "
                "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
                "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).",
                stacklevel=2)
        if ndim == 3:
            warnings.warn(
                "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
                "1D dropout behavior is desired - input is interpreted as shape (N, C, L), "
                "where C is the channel dim. This behavior will change in a future release to "
                "interpret the input as one without a batch dimension, i.e. shape (C, H, W). "
                "To maintain the 1D channel-wise dropout behavior, please switch to using "
                "dropout1d instead.", stacklevel=2)
        if ndim < 2:
            raise ValueError(f"input: Dropout2d expects a 4-D (N, C, H, W) tensor, got "
                             f"{ndim}-D")
        return _channel_forward(self, input, True, offset)


class Dropout3d(_DropnormDropout, nn.Dropout3d):
    __doc__ = """torch.nn.Dropout3d on dropnorm's kernels: whole channels of
    (N, C, D, H, W), or of unbatched (C, D, H, W), are zeroed, one decision
    per (n, c).

    Subclass of torch.nn.Dropout3d that replaces forward (and adds seed).
    Input: a CPU float32/float64/float16/bfloat16 tensor, contiguous or channels_last_3d (its
    NDHWC memory, as it is); other strides are copied. As PyTorch 2.13,
    other ranks than 4 and 5 take a channel dropout of input[None] over
    dimension 1 with its deprecation warning.
""" + _DROPOUT_ARGS.format(name="Dropout3d", what="'s channel")

    def forward(self, input: Tensor, offset: int = 0) -> Tensor:
        """Channel dropout of input, (N, C, D, H, W) or (C, D, H, W), in
        training mode (offset: its first (n, c) decision in a larger batch);
        input itself in eval mode or with p == 0."""
        ndim = input.dim()
        if ndim not in (4, 5):
            warnings.warn(
                f"dropout3d: Received a {ndim}-D input to dropout3d, which is deprecated "
                "and will result in an error in a future release. To retain the behavior "
                "and silence this warning, please use dropout instead. Note that dropout3d "
                "exists to provide channel-wise dropout on inputs with 3 spatial dimensions, "
                "a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs).",
                stacklevel=2)
        if ndim < 1:
            raise ValueError("input: Dropout3d expects a 5-D (N, C, D, H, W) tensor, got 0-D")
        return _channel_forward(self, input, ndim == 5, offset)


# ---- convert -------------------------------------------------------------------------------

_BATCHNORMS = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d,
               nn.BatchNorm3d: BatchNorm3d}
_DROPOUTS = {nn.Dropout: Dropout, nn.Dropout1d: Dropout1d, nn.Dropout2d: Dropout2d,
             nn.Dropout3d: Dropout3d}


def _replacement(module: nn.Module, comm: Any, sync: bool, dropouts: bool) -> nn.Module:
    """dropnorm's module for one torch.nn module (sharing its parameters and
    buffers), or module itself when it is not one convert() swaps."""
    kind = type(module)
    new: Any
    if kind in _BATCHNORMS or kind is nn.SyncBatchNorm:
        bn: Any = module
        args = (bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        bias = bn.bias is not None or not bn.affine
        if sync or kind is nn.SyncBatchNorm:
            new = SyncBatchNorm(*args, bias=bias, comm=comm)
        else:
            new = _BATCHNORMS[kind](*args, bias=bias)
        with torch.no_grad():
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean = bn.running_mean
        new.running_var = bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    elif dropouts and kind in _DROPOUTS:
        new = _DROPOUTS[kind](module.p, module.inplace)  # type: ignore[arg-type]
    else:
        return module
    new.train(module.training)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new  # type: ignore[no-any-return]


_FUSED_RELU: dict[type, type] = {BatchNorm1d: BatchNormReLU1d, BatchNorm2d: BatchNormReLU2d,
                                 BatchNorm3d: BatchNormReLU3d}


def _fuse_relu(seq: nn.Sequential) -> None:
    """In an nn.Sequential, each dropnorm batch norm directly followed by an
    nn.ReLU becomes a BatchNormReLU (taking over its parameters and buffers)
    and the ReLU an nn.Identity: the same keys, the same values."""
    names = [name for name, _ in seq.named_children()]
    for a, b in zip(names, names[1:]):
        bn: Any = getattr(seq, a)
        if type(bn) in _FUSED_RELU and type(getattr(seq, b)) is nn.ReLU:
            new: Any = _FUSED_RELU[type(bn)](bn.num_features, bn.eps, bn.momentum, bn.affine,
                                             bn.track_running_stats,
                                             bias=bn.bias is not None or not bn.affine)
            with torch.no_grad():
                new.weight, new.bias = bn.weight, bn.bias
            new.running_mean = bn.running_mean
            new.running_var = bn.running_var
            new.num_batches_tracked = bn.num_batches_tracked
            new.train(bn.training)
            if hasattr(bn, "qconfig"):
                new.qconfig = bn.qconfig
            seq.add_module(a, new)
            seq.add_module(b, nn.Identity())


def _convert(module: nn.Module, comm: Any, sync: bool, dropouts: bool,
             fuse_relu: bool = False) -> nn.Module:
    out = _replacement(module, comm, sync, dropouts)
    for name, child in module.named_children():
        out.add_module(name, _convert(child, comm, sync, dropouts, fuse_relu))
    if fuse_relu and isinstance(out, nn.Sequential):
        _fuse_relu(out)
    return out


def convert(module: nn.Module, comm: Any = None, fuse_relu: bool = False) -> nn.Module:
    """Swap the torch.nn batch-norm and dropout modules of a model for
    dropnorm's, as torch.nn.SyncBatchNorm.convert_sync_batchnorm swaps
    batch norms for SyncBatchNorm.

    Every torch.nn.BatchNorm1d/2d/3d, SyncBatchNorm, Dropout and
    Dropout1d/2d/3d in module, at any depth, is replaced by dropnorm.torch's
    class of the same name, which takes over its parameters and buffers (the
    very tensors, so an optimizer made before keeps working), training mode,
    eps, momentum, affine, track_running_stats, bias, p and inplace (and
    qconfig). Exact types only: subclasses (lazy modules, your own, and
    dropnorm's) are left as they are, so converting twice changes nothing.
    The dropouts get seed=None (masks from torch.initial_seed() and
    PyTorch's generator).

    module: a torch.nn.Module. comm: None, or an mpi4py communicator
    (anything with Allgather and Get_size): with it every batch norm
    becomes a SyncBatchNorm over comm (data-parallel training over MPI);
    without it only torch.nn.SyncBatchNorm modules do, over MPI.COMM_WORLD.
    fuse_relu: also recognise, in every nn.Sequential, a batch norm directly
    followed by an nn.ReLU (BatchNorm1d/2d/3d, not SyncBatchNorm): the pair
    becomes a BatchNormReLU1d/2d/3d, which runs both in one pass, and an
    nn.Identity (the state_dict keys stay torch.nn's; the values are the
    same bits as without it on the eager route).
    Returns module, changed in place, or the new module if module itself is
    one of those replaced.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(fuse_relu, bool):
        raise TypeError(f"fuse_relu: expected a bool, got {type(fuse_relu).__name__}")
    comm = _as_comm(comm)
    return _convert(module, comm, comm is not None, True, fuse_relu)
