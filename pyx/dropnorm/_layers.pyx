# cython: language_level=3
"""Layer classes with PyTorch's behaviour: BatchNorm1d/2d/3d and
Dropout/Dropout1d/2d/3d, each with forward/backward and training state.

Threads: each layer has a lock that guards its state (the stream, the
running statistics and num_batches_tracked, the accumulated gradients, the
settings a forward reads) and is never held around a kernel; each thread
keeps its own record of its last forward for backward. The contract of each
class is in its docstring."""

import os
import threading
import weakref
from collections import namedtuple

import numpy as np

from dropnorm._batchnorm import (
    batch_norm_backward,
    batch_norm_infer,
    batch_norm_infer_backward,
    batch_norm_train,
)
from dropnorm._checks import (
    as_activation,
    as_dropout_mode,
    as_eps,
    as_flag,
    as_array,
    as_float_dtype,
    as_float_input,
    as_inplace_array,
    as_int,
    as_layer_axis,
    as_mapping,
    as_momentum,
    as_positive_int,
    as_probability,
    as_tensor,
    as_uint,
    is_half,
    same_tensor,
    tensor_extents,
    writable_vector,
)
from dropnorm._dropout import _draw_layer_seed, dropout, dropout_backward

# Every argument of a constructor, a setter, forward or backward is checked
# by the functions of dropnorm._checks that the functional API uses, so a
# layer and a function accept and reject the same values with the same
# messages, and a rejected value changes nothing.

# Every layer alive, so that a forked child can give each a fresh lock: a
# lock that another thread held at the fork would stay locked in the child.
_live_layers = weakref.WeakSet()


def _renew_locks_after_fork():
    """A new lock for every layer, in a forked child."""
    for layer in list(_live_layers):
        (<_Layer>layer)._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks_after_fork)


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What load_state_dict returns, as PyTorch's result does: the named tuple
    (missing_keys, unexpected_keys), two lists of keys; its repr is
    ``<All keys matched successfully>`` when both are empty."""

    __slots__ = ()

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


cdef class _Layer:
    """What every layer shares: the channel axis, the training flag,
    ``layer(x)`` as ``layer.forward(x)``, the lock and the records of the
    last forwards.

    The lock guards the layer's state; it is held only while that state is
    read or written, never around a kernel, so forwards and backwards of
    one layer in several threads run their kernels at the same time. A
    forward reads the settings it uses (training, axis, ...) once, under the
    lock, and stores what its backward needs in a record: one per thread (a
    ``threading.local``) and the last one of any thread. backward takes the
    calling thread's record, or the last forward's of any thread when the
    calling thread has made none (so a forward in one thread and its
    backward in another still pair when they alternate).
    """

    cdef int _axis
    cdef bint _training
    cdef object _lock     # threading.Lock: held around state, never around a kernel
    cdef object _local    # threading.local: .record, this thread's last forward
    cdef object _record   # the last forward's record of any thread
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        # in __cinit__, so that every instance has them however it is made
        # (constructor, unpickling, copy)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._record = None
        _live_layers.add(self)

    @property
    def axis(self):
        """The channel axis: 1 (channels first) or -1 (channels last)."""
        return self._axis

    @axis.setter
    def axis(self, value):
        value = as_layer_axis(value)
        with self._lock:
            self._axis = value

    @property
    def training(self):
        """True in training mode, False in eval mode."""
        return self._training

    @training.setter
    def training(self, value):
        value = as_flag("training", value)
        with self._lock:
            self._training = value

    def train(self, mode=True):
        """Training mode or, with mode=False, eval mode (mode must be a bool);
        returns the layer."""
        mode = as_flag("mode", mode)
        with self._lock:
            self._training = mode
        return self

    def eval(self):
        """Eval mode (the same as ``train(False)``); returns the layer."""
        return self.train(False)

    def __call__(self, x):
        """``layer(x)`` is ``layer.forward(x)``."""
        return self.forward(x)

    cdef _remember(self, record):
        """Keep what backward needs, for this thread and as the last forward."""
        self._local.record = record
        with self._lock:
            self._record = record

    cdef _recall(self):
        """The record of this thread's last forward, else of the last forward."""
        record = getattr(self._local, "record", None)
        if record is None:
            with self._lock:
                record = self._record
        if record is None:
            raise RuntimeError("backward called before forward")
        return record


# ---- batch norm: the input-lifetime check -----------------------------------

# backward reads the forward's x again (copying it would cost a full pass),
# so x must not change in between. A fingerprint taken at forward and
# compared at backward catches most changes for about a microsecond: x's shape
# and strides (the same object reshaped in place) and the bytes of at most
# _FINGERPRINT_SAMPLES elements, at the positions of a Weyl sequence (steps
# of the golden ratio), which spread over the whole array, so over every
# image and, in either layout, over most channels; every element when x is
# that small. A write that misses every sampled element goes unnoticed.
_FINGERPRINT_SAMPLES = 256
_sample_positions_of_size = {}


def _sample_positions(size):
    """The sampled flat positions of an array of ``size`` elements (cached)."""
    positions = _sample_positions_of_size.get(size)
    if positions is None:
        steps = np.arange(_FINGERPRINT_SAMPLES - 1, dtype=np.float64) * 0.6180339887498949
        positions = np.append((steps % 1.0 * size).astype(np.intp), size - 1)
        if len(_sample_positions_of_size) >= 64:
            _sample_positions_of_size.clear()
        _sample_positions_of_size[size] = positions
    return positions


def _fingerprint(x):
    """(shape, strides, sampled bytes) of x."""
    size = x.size
    if size <= _FINGERPRINT_SAMPLES:
        return x.shape, x.strides, x.tobytes()
    positions = _sample_positions_of_size.get(size)
    if positions is None:
        positions = _sample_positions(size)
    return x.shape, x.strides, x.take(positions).tobytes()


def _copy_or_none(a):
    """A copy of a (an array, or anything np.array takes), or None."""
    if type(a) is np.ndarray:
        return a.copy()
    return None if a is None else np.array(a, copy=True)


cdef class _BatchNorm(_Layer):
    """Batch normalization over the channel axis (Ioffe & Szegedy 2015).

    Training mode normalises with the batch's statistics and updates the
    running statistics; eval mode uses the running statistics. With
    ``momentum=None`` the running statistics are the cumulative average over
    the batches seen (the population statistics of the paper's Algorithm 2).

    num_features: an integer >= 1 (not bool); eps: a finite real number
    >= 0; momentum: a real number in [0, 1] or None; affine and
    track_running_stats: bool; axis: 1 or -1; dtype: float32 or float64, or
    a half type, float16 or bfloat16 (ml_dtypes.bfloat16, or "bfloat16"),
    whose layer keeps float32 weight, bias, gradients and running statistics
    (``param_dtype``), as PyTorch's mixed precision does, and computes in
    float32. num_features, affine, track_running_stats and dtype are fixed
    at construction; eps, momentum, axis and training may be set later and
    are checked as in the constructor.

    The input's lifetime: the layer keeps a reference to x (not a copy) from
    forward to backward, as NumPy-based frameworks do; x must not be written
    to, through any view, until the backward that uses it (give forward a
    copy otherwise). backward checks a fingerprint of x (its shape, strides
    and up to 256 sampled values; every value of an x that small) and raises
    RuntimeError naming x if it changed; a write that misses every sampled
    value is not detected. Everything else backward needs is a snapshot taken
    at forward: the batch (or running) statistics, weight, eps and axis, so
    changing them between forward and backward does not change the gradient
    (the next forward uses the new values).

    Threads: one layer may be shared by threads for forwards and backwards.
    The running statistics get every training batch exactly once: the kernel
    runs (without the lock) on a private copy of them, and the update is
    committed under the lock; if another thread committed a batch meanwhile,
    this batch's update is made instead on top of that one, from its saved
    mean and invstd, with the momentum of its place (1/(k+1) for
    momentum=None), by the kernel's formula in double, rounded once; the mean
    saved in float32 and the variance recovered from invstd may then differ
    from a serial run's in the last bit. With momentum=None the result is
    the average over all batches in any order; with a fixed momentum it is
    that of one of the serial orders. num_batches_tracked, grad_weight and
    grad_bias lose no update. Each thread's backward pairs with that thread's
    last forward (or with the last forward of any thread if the calling
    thread has made none). state_dict, calibrate, load_state_dict,
    reset_running_stats, zero_grad, the setters and pickling are atomic with
    respect to forwards; a setting changed while a forward runs applies from
    the next forward. Not safe: writing into weight, bias, the running
    statistics or an x yourself while another thread's forward reads them
    (the forward copies weight and bias, but your writes do not take the
    layer's lock), e.g. an optimizer step during another thread's forward.
    """

    cdef readonly object num_features
    cdef double _eps
    cdef object _momentum
    cdef readonly bint affine
    cdef readonly bint track_running_stats
    cdef readonly object dtype
    cdef readonly object param_dtype
    cdef readonly object activation
    cdef public object weight
    cdef public object bias
    cdef public object grad_weight
    cdef public object grad_bias
    cdef public object running_mean
    cdef public object running_var
    cdef public object num_batches_tracked
    # how many times the running statistics were changed by this layer: a
    # forward commits the kernel's update of its private copy only if no
    # other change came in between
    cdef unsigned long long _stats_version

    _ndims = ()
    _shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, axis=1, dtype="float32", activation=None):
        """Initialize self; the parameters are in help(type(self))."""
        # every check first: a bad argument raises before anything is set
        num_features = as_positive_int("num_features", num_features)
        eps = as_eps(eps)
        momentum = as_momentum(momentum, allow_none=True)
        affine = as_flag("affine", affine)
        track_running_stats = as_flag("track_running_stats", track_running_stats)
        axis = as_layer_axis(axis)
        dtype = as_float_dtype("dtype", dtype)
        as_activation(activation)
        self.num_features = num_features
        self._eps = eps
        self._momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self._axis = axis
        self.dtype = dtype
        self.activation = activation
        # the per-channel arrays: float32 for the half types
        self.param_dtype = np.dtype(np.float32) if is_half(dtype) else dtype
        self._training = True
        self.weight = np.ones(self.num_features, self.param_dtype) if self.affine else None
        self.bias = np.zeros(self.num_features, self.param_dtype) if self.affine else None
        self.grad_weight = None
        self.grad_bias = None
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.param_dtype)
            self.running_var = np.ones(self.num_features, self.param_dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None
        self._stats_version = 0

    # ---- checked attributes ---------------------------------------------------
    @property
    def eps(self):
        """Added to the variance before the square root: a finite real >= 0."""
        return self._eps

    @eps.setter
    def eps(self, value):
        value = as_eps(value)
        with self._lock:
            self._eps = value

    @property
    def momentum(self):
        """Weight of the new batch in the running statistics, in [0, 1], or
        None for the cumulative average over the batches seen."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        value = as_momentum(value, allow_none=True)
        with self._lock:
            self._momentum = value

    # ---- forward / backward -----------------------------------------------
    def _check_input(self, x, axis):
        x = as_tensor("x", x)
        if x.ndim not in self._ndims:
            raise ValueError(
                f"x: {type(self).__name__} expects {self._shape_text}, got shape {x.shape}")
        if x.dtype != self.dtype:
            channels_last = ", axis=-1" if axis == -1 else ""
            raise TypeError(
                f"x: dtype {x.dtype} does not match the layer's dtype {self.dtype}: make the "
                f"layer for it, {type(self).__name__}({self.num_features}{channels_last}, "
                f"dtype=np.{x.dtype}), or convert the input, x.astype(np.{self.dtype})")
        _, c, _, _ = tensor_extents(x, axis)
        if c != self.num_features:
            raise ValueError(f"x: expected {self.num_features} channels on axis {axis}, "
                             f"got shape {x.shape}")
        return x

    def forward(self, x, residual=None):
        """Normalise x, then add residual (an array of x's shape and dtype,
        or None) and apply the layer's activation, in one pass (the fused
        block of batch_norm_train: bit for bit the separate steps);
        remembers what backward needs (x itself, which must not change until
        then, and a snapshot of the rest: the statistics, and with the
        activation the packed mask of where the gradient passes)."""
        with self._lock:
            training, eps, axis = self._training, self._eps, self._axis
            weight, bias = _copy_or_none(self.weight), _copy_or_none(self.bias)
        x = self._check_input(x, axis)
        act = self.activation
        if residual is not None:
            residual = same_tensor("residual", residual, x)
        use_batch = training or not self.track_running_stats
        gate = None
        fused = act is not None or residual is not None
        if use_batch and training and self.track_running_stats:
            y, mean, invstd, gate = self._train_and_update(x, weight, bias, eps, axis, residual)
            stats = (mean, invstd)
        elif use_batch:
            if fused:
                y, mean, invstd, gate = batch_norm_train(x, weight, bias, eps=eps, axis=axis,
                                                         residual=residual, activation=act,
                                                         return_mask=True)
            else:
                y, mean, invstd = batch_norm_train(x, weight, bias, eps=eps, axis=axis)
            stats = (mean, invstd)
        else:
            # the backward must use the statistics of this forward
            with self._lock:
                stats = (_copy_or_none(self.running_mean), _copy_or_none(self.running_var))
            y = batch_norm_infer(x, *stats, weight, bias, eps=eps, axis=axis,
                                 residual=residual, activation=act)
            if act is not None:
                # where the gradient passes: t > 0 is y > 0 after the ReLU
                gate = y > 0
        if act is None:
            gate = None
        self._remember((x, _fingerprint(x), stats, use_batch, weight, eps, axis, gate,
                        residual is not None))
        return y

    def _train_and_update(self, x, weight, bias, eps, axis, residual):
        """The training forward with the update of the running statistics,
        atomic with respect to other forwards, without the lock around the
        kernel: see the class docstring."""
        c = self.num_features
        with self._lock:
            version, k, setting = self._stats_version, self.num_batches_tracked, self._momentum
            shared_mean, shared_var = self.running_mean, self.running_var
            next_mean, next_var = _copy_or_none(shared_mean), _copy_or_none(shared_var)
        # the kernel's checks (and messages) of the arrays it would have updated
        writable_vector("running_mean", shared_mean, c, self.param_dtype)
        writable_vector("running_var", shared_var, c, self.param_dtype)
        momentum = 1.0 / (k + 1) if setting is None else setting
        gate = None
        if self.activation is not None or residual is not None:
            y, mean, invstd, gate = batch_norm_train(
                x, weight, bias, next_mean, next_var, momentum=momentum, eps=eps, axis=axis,
                residual=residual, activation=self.activation, return_mask=True)
        else:
            y, mean, invstd = batch_norm_train(x, weight, bias, next_mean, next_var,
                                               momentum=momentum, eps=eps, axis=axis)
        with self._lock:
            if (self._stats_version == version and self.num_batches_tracked == k
                    and self.running_mean is shared_mean and self.running_var is shared_var):
                # nothing changed the statistics meanwhile: the kernel's update
                if shared_mean is not None:
                    np.copyto(shared_mean, next_mean)
                if shared_var is not None:
                    np.copyto(shared_var, next_var)
            else:
                self._apply_batch_statistics(mean, invstd, x.size // c, setting, eps)
            self.num_batches_tracked += 1
            self._stats_version += 1
        return y, mean, invstd, gate

    cdef _apply_batch_statistics(self, mean, invstd, m, setting, eps):
        """The kernel's running-statistics update from a batch's saved mean
        and invstd, with the momentum of the next batch; under the lock."""
        k = self.num_batches_tracked
        momentum = 1.0 / (k + 1) if setting is None else setting
        # the biased variance back from invstd = 1/sqrt(var + eps)
        var = np.maximum(1.0 / np.square(invstd.astype(np.float64)) - eps, 0.0)
        # the kernel's expressions, in double, rounded once to the param_dtype
        if self.running_mean is not None:
            self.running_mean[...] = ((1.0 - momentum) * self.running_mean.astype(np.float64)
                                      + momentum * mean.astype(np.float64))
        if self.running_var is not None:
            self.running_var[...] = ((1.0 - momentum) * self.running_var.astype(np.float64)
                                     + momentum * var * (float(m) / float(m - 1)))

    def backward(self, dy):
        """dx for dy (the gradient of the output, of its shape and dtype):
        the gradient with respect to the input of the calling thread's last
        forward (which must not have changed since; RuntimeError if it did);
        accumulates grad_weight and grad_bias (like PyTorch's .grad) when
        affine. Through the activation, dy is first masked where the
        gradient does not pass (+0 there). When that forward had a
        residual, returns (dx, d_residual), d_residual being the masked
        gradient."""
        x, fingerprint, stats, used_batch_stats, weight, eps, axis, gate, has_residual = (
            self._recall())
        if _fingerprint(x) != fingerprint:
            raise RuntimeError(
                "x: the input of the forward was changed (written or reshaped in place) "
                "before backward, which needs it as it was; give forward a copy of x if "
                "x must change")
        act = "relu" if gate is not None else None
        d_residual = None
        if used_batch_stats and (gate is not None or has_residual):
            grads = batch_norm_backward(dy, x, *stats, weight, axis=axis, activation=act,
                                        mask=gate, residual=has_residual)
            dx, dw, db = grads[:3]
            if has_residual:
                d_residual = grads[3]
        elif used_batch_stats:
            dx, dw, db = batch_norm_backward(dy, x, *stats, weight, axis=axis)
        else:
            if gate is not None or has_residual:
                dy = same_tensor("dy", dy, x)
                if gate is not None:
                    # the ReLU's backward: dy where y > 0, +0 elsewhere
                    dy = np.where(gate, dy, np.zeros((), dy.dtype))
                d_residual = dy.copy() if has_residual else None
            dx, dw, db = batch_norm_infer_backward(dy, x, *stats, weight, eps=eps, axis=axis)
        if self.affine:
            with self._lock:
                self.grad_weight = dw if self.grad_weight is None else self.grad_weight + dw
                self.grad_bias = db if self.grad_bias is None else self.grad_bias + db
        return (dx, d_residual) if has_residual else dx

    def zero_grad(self):
        """Forget accumulated gradients (set them to None, as PyTorch does)."""
        with self._lock:
            self.grad_weight = None
            self.grad_bias = None

    # ---- statistics ---------------------------------------------------------
    def reset_running_stats(self):
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            with self._lock:
                self.running_mean[...] = 0
                self.running_var[...] = 1
                self.num_batches_tracked = 0
                self._stats_version += 1

    def reset_parameters(self):
        """Running statistics reset, weight 1, bias 0."""
        self.reset_running_stats()
        if self.affine:
            self.weight[...] = 1
            self.bias[...] = 0

    def calibrate(self, batches):
        """Reset the running statistics and estimate them as the cumulative
        average over ``batches`` (an iterable of inputs): the population
        statistics E[x] = mean of batch means, Var[x] = M/(M-1) * mean of batch
        variances of the paper's Algorithm 2. Weights and mode are untouched.
        Returns self."""
        if not self.track_running_stats:
            raise ValueError("calibrate: the layer has track_running_stats=False")
        try:
            batches = iter(batches)
        except TypeError:
            raise TypeError(f"batches: expected an iterable of inputs, "
                            f"got {type(batches).__name__}") from None
        with self._lock:
            eps, axis = self._eps, self._axis
        # accumulate into new arrays: a bad batch raises and changes nothing
        mean = np.zeros(self.num_features, self.param_dtype)
        var = np.ones(self.num_features, self.param_dtype)
        count = 0
        for batch in batches:
            x = self._check_input(batch, axis)
            batch_norm_train(x, None, None, mean, var, momentum=1.0 / (count + 1),
                             eps=eps, axis=axis)
            count += 1
        with self._lock:
            self.running_mean[...] = mean
            self.running_var[...] = var
            self.num_batches_tracked = count
            self._stats_version += 1
        return self

    # ---- parameters and state ---------------------------------------------------
    def _state_keys(self):
        keys = []
        if self.affine:
            keys += ["weight", "bias"]
        if self.track_running_stats:
            keys += ["running_mean", "running_var", "num_batches_tracked"]
        return keys

    def state_dict(self):
        """A dict with PyTorch's key names and shapes, values as NumPy arrays
        (copies); num_batches_tracked is a 0-d int64 array. The running
        statistics and num_batches_tracked are read together, under the lock."""
        state = {}
        with self._lock:
            for key in self._state_keys():
                if key == "num_batches_tracked":
                    state[key] = np.array(self.num_batches_tracked, dtype=np.int64)
                else:
                    state[key] = np.array(getattr(self, key), copy=True)
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Load a mapping like state_dict()'s (values may be anything with
        __array__, e.g. CPU tensors), as PyTorch's load_state_dict does.

        strict=True: the keys must be exactly those of state_dict(): missing
        or unexpected keys raise ValueError. strict=False: the keys given are
        loaded, missing ones keep their values and unexpected ones are
        ignored. Either way a value of the wrong shape or type raises
        (ValueError, TypeError), and something that is not a mapping raises
        TypeError, all before anything is changed.

        Returns a named tuple (missing_keys, unexpected_keys) of two lists,
        like PyTorch's result (missing in state_dict() order, unexpected in
        the mapping's order); both are empty when the keys matched.
        """
        state = as_mapping("state_dict", state_dict)
        strict = as_flag("strict", strict)
        keys = self._state_keys()
        missing = [key for key in keys if key not in state]
        unexpected = [key for key in state.keys() if key not in keys]
        if strict and (missing or unexpected):
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected} "
                             "(strict=False loads the keys that match)")
        values = {}
        for key in keys:
            if key not in state:
                continue
            value = np.asarray(state[key])
            want = () if key == "num_batches_tracked" else (self.num_features,)
            if value.shape != want:
                raise ValueError(f"state[{key!r}]: expected shape {want}, got {value.shape}")
            if key == "num_batches_tracked":
                if value.dtype.kind not in "iu" or int(value) < 0:
                    raise ValueError(f"state[{key!r}]: expected a non-negative integer, "
                                     f"got {value!r}")
                values[key] = int(value)
            else:
                if value.dtype.kind not in "fiu":
                    raise TypeError(f"state[{key!r}]: expected real numbers, got {value.dtype}")
                values[key] = value.astype(self.param_dtype)
        with self._lock:
            for key, value in values.items():
                if key == "num_batches_tracked":
                    self.num_batches_tracked = value
                else:
                    np.copyto(getattr(self, key), value)
            self._stats_version += 1
        return _IncompatibleKeys(missing, unexpected)

    def fold_into(self, weight, bias=None, axis=0):
        """Fold this (eval-mode) batch norm into the preceding linear or
        convolution layer, given its weight W and bias b (None: zeros):
        returns (W', b') with
        W' = W * gamma/sqrt(var + eps) along ``axis`` (the output features) and
        b' = (b - mean) * gamma/sqrt(var + eps) + beta, so that the layer alone
        gives the output of layer followed by this batch norm."""
        if not self.track_running_stats:
            raise ValueError("fold_into: the layer has no running statistics to fold")
        axis = as_int("axis", axis)
        w = np.asarray(weight)
        if w.dtype.kind != "f":
            raise TypeError(f"weight: expected a floating-point array, got {w.dtype}")
        if w.ndim < 1:
            raise ValueError("weight: expected at least 1 dimension")
        ax = axis + w.ndim if axis < 0 else axis
        if not 0 <= ax < w.ndim or w.shape[ax] != self.num_features:
            raise ValueError(f"weight: expected {self.num_features} output features on axis "
                             f"{axis}, got shape {w.shape}")
        if bias is not None and np.asarray(bias).dtype.kind not in "fiu":
            raise TypeError(f"bias: expected real numbers, got dtype {np.asarray(bias).dtype}")
        b = np.zeros(self.num_features) if bias is None else np.asarray(bias, np.float64)
        if b.shape != (self.num_features,):
            raise ValueError(f"bias: expected shape ({self.num_features},), got {b.shape}")
        with self._lock:
            eps = self._eps
            running_mean = self.running_mean.astype(np.float64)
            running_var = self.running_var.astype(np.float64)
        gamma = np.ones(self.num_features) if self.weight is None else self.weight.astype(float)
        beta = np.zeros(self.num_features) if self.bias is None else self.bias.astype(float)
        a = gamma / np.sqrt(running_var + eps)
        shape = [1] * w.ndim
        shape[ax] = self.num_features
        w_folded = (w.astype(np.float64) * a.reshape(shape)).astype(w.dtype)
        b_folded = (b - running_mean) * a + beta
        return w_folded, b_folded.astype(w.dtype)

    # ---- Python protocol --------------------------------------------------------
    def __repr__(self):
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, axis={self.axis}, "
                f"dtype={self.dtype.name}"
                + (f", activation={self.activation!r})" if self.activation else ")"))

    def __reduce__(self):
        # the running statistics as copies taken together under the lock, so
        # that a pickle or copy of a layer that other threads train is a
        # consistent state; the clone gets its own lock (see __cinit__)
        with self._lock:
            state = {
                "training": self._training,
                "weight": self.weight, "bias": self.bias,
                "grad_weight": self.grad_weight, "grad_bias": self.grad_bias,
                "running_mean": _copy_or_none(self.running_mean),
                "running_var": _copy_or_none(self.running_var),
                "num_batches_tracked": self.num_batches_tracked,
            }
            args = (self.num_features, self._eps, self._momentum, self.affine,
                    self.track_running_stats, self._axis, self.dtype, self.activation)
        return (type(self), args, state)

    def __setstate__(self, state):
        for key, value in state.items():
            setattr(self, key, value)


cdef class BatchNorm1d(_BatchNorm):
    """BatchNorm1d(num_features, eps=1e-05, momentum=0.1, affine=True,
    track_running_stats=True, axis=1, dtype='float32', activation=None)
--

    Batch norm over (N, C) or (N, C, L) input; (N, C) or (N, L, C) with axis=-1.

    Training mode (the default) normalises with the batch's statistics and
    updates the running statistics; eval mode (``eval()``) uses the running
    statistics. forward(x) (or layer(x)) returns y; backward(dy) returns dx
    and accumulates grad_weight and grad_bias.

    Parameters (eps, momentum, axis and training may be set later as
    attributes, checked the same way; the others are fixed):
      num_features: C, the number of channels, an integer >= 1 (not bool).
      eps: added to the variance before the square root, a finite real
        number >= 0.
      momentum: the weight of each training batch in the running statistics,
        running = (1 - momentum)*running + momentum*batch (PyTorch's
        convention; running_var takes the unbiased batch variance), a real
        number in [0, 1]; or None for the cumulative average over all the
        batches seen (batch k gets weight 1/k; num_batches_tracked counts
        them): the population statistics of the paper's Algorithm 2.
      affine: learn a per-channel weight (gamma, initially 1) and bias
        (beta, initially 0), with gradients in grad_weight and grad_bias.
      track_running_stats: keep running_mean, running_var and
        num_batches_tracked, and normalise with them in eval mode; with
        False, eval mode uses the batch's statistics too.
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      dtype: float32 (default) or float64, as a NumPy dtype or its name: the
        dtype of weight, bias and the running statistics, and the dtype x
        must have (a float64 x needs BatchNorm1d(C, dtype=np.float64), or
        x.astype(np.float32) for the default).
      activation: None, or "relu": the fused block y = relu(bn(x) + residual)
        in one pass (forward(x, residual=r) adds the shortcut r, an array of
        x's shape and dtype; backward then returns (dx, d_residual)), bit for
        bit np.maximum(bn(x) + r, 0). fold_into and calibrate concern the
        normalisation only: after a folded layer apply the activation.

    Threads may share the layer for forwards and backwards: every training
    batch updates the running statistics once (momentum=None: the average of
    all batches in any order), and each thread's backward pairs with its own
    last forward. x must not change between forward and backward (checked by
    a fingerprint: RuntimeError). In detail: dropnorm._layers._BatchNorm.__doc__.
    """
    _ndims = (2, 3)
    _shape_text = "2-d (N, C) or 3-d (N, C, L) input"


cdef class BatchNorm2d(_BatchNorm):
    """BatchNorm2d(num_features, eps=1e-05, momentum=0.1, affine=True,
    track_running_stats=True, axis=1, dtype='float32', activation=None)
--

    Batch norm over (N, C, H, W) input; (N, H, W, C) with axis=-1.

    Training mode (the default) normalises with the batch's statistics and
    updates the running statistics; eval mode (``eval()``) uses the running
    statistics. forward(x) (or layer(x)) returns y; backward(dy) returns dx
    and accumulates grad_weight and grad_bias.

    Parameters (eps, momentum, axis and training may be set later as
    attributes, checked the same way; the others are fixed):
      num_features: C, the number of channels, an integer >= 1 (not bool).
      eps: added to the variance before the square root, a finite real
        number >= 0.
      momentum: the weight of each training batch in the running statistics,
        running = (1 - momentum)*running + momentum*batch (PyTorch's
        convention; running_var takes the unbiased batch variance), a real
        number in [0, 1]; or None for the cumulative average over all the
        batches seen (batch k gets weight 1/k; num_batches_tracked counts
        them): the population statistics of the paper's Algorithm 2.
      affine: learn a per-channel weight (gamma, initially 1) and bias
        (beta, initially 0), with gradients in grad_weight and grad_bias.
      track_running_stats: keep running_mean, running_var and
        num_batches_tracked, and normalise with them in eval mode; with
        False, eval mode uses the batch's statistics too.
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      dtype: float32 (default) or float64, as a NumPy dtype or its name: the
        dtype of weight, bias and the running statistics, and the dtype x
        must have (a float64 x needs BatchNorm2d(C, dtype=np.float64), or
        x.astype(np.float32) for the default).
      activation: None, or "relu": the fused block y = relu(bn(x) + residual)
        in one pass (forward(x, residual=r) adds the shortcut r, an array of
        x's shape and dtype; backward then returns (dx, d_residual)), bit for
        bit np.maximum(bn(x) + r, 0). fold_into and calibrate concern the
        normalisation only: after a folded layer apply the activation.

    Threads may share the layer for forwards and backwards: every training
    batch updates the running statistics once (momentum=None: the average of
    all batches in any order), and each thread's backward pairs with its own
    last forward. x must not change between forward and backward (checked by
    a fingerprint: RuntimeError). In detail: dropnorm._layers._BatchNorm.__doc__.
    """
    _ndims = (4,)
    _shape_text = "4-d (N, C, H, W) input"


cdef class BatchNorm3d(_BatchNorm):
    """BatchNorm3d(num_features, eps=1e-05, momentum=0.1, affine=True,
    track_running_stats=True, axis=1, dtype='float32', activation=None)
--

    Batch norm over (N, C, D, H, W) input; (N, D, H, W, C) with axis=-1.

    Training mode (the default) normalises with the batch's statistics and
    updates the running statistics; eval mode (``eval()``) uses the running
    statistics. forward(x) (or layer(x)) returns y; backward(dy) returns dx
    and accumulates grad_weight and grad_bias.

    Parameters (eps, momentum, axis and training may be set later as
    attributes, checked the same way; the others are fixed):
      num_features: C, the number of channels, an integer >= 1 (not bool).
      eps: added to the variance before the square root, a finite real
        number >= 0.
      momentum: the weight of each training batch in the running statistics,
        running = (1 - momentum)*running + momentum*batch (PyTorch's
        convention; running_var takes the unbiased batch variance), a real
        number in [0, 1]; or None for the cumulative average over all the
        batches seen (batch k gets weight 1/k; num_batches_tracked counts
        them): the population statistics of the paper's Algorithm 2.
      affine: learn a per-channel weight (gamma, initially 1) and bias
        (beta, initially 0), with gradients in grad_weight and grad_bias.
      track_running_stats: keep running_mean, running_var and
        num_batches_tracked, and normalise with them in eval mode; with
        False, eval mode uses the batch's statistics too.
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      dtype: float32 (default) or float64, as a NumPy dtype or its name: the
        dtype of weight, bias and the running statistics, and the dtype x
        must have (a float64 x needs BatchNorm3d(C, dtype=np.float64), or
        x.astype(np.float32) for the default).
      activation: None, or "relu": the fused block y = relu(bn(x) + residual)
        in one pass (forward(x, residual=r) adds the shortcut r, an array of
        x's shape and dtype; backward then returns (dx, d_residual)), bit for
        bit np.maximum(bn(x) + r, 0). fold_into and calibrate concern the
        normalisation only: after a folded layer apply the activation.

    Threads may share the layer for forwards and backwards: every training
    batch updates the running statistics once (momentum=None: the average of
    all batches in any order), and each thread's backward pairs with its own
    last forward. x must not change between forward and backward (checked by
    a fingerprint: RuntimeError). In detail: dropnorm._layers._BatchNorm.__doc__.
    """
    _ndims = (5,)
    _shape_text = "5-d (N, C, D, H, W) input"


_LAST_STREAM = 2**64 - 1


def _as_seed(seed):
    """A dropout seed: an integer in [0, 2**64), or None for one drawn from
    the default generator (dropnorm.manual_seed makes it repeatable)."""
    if seed is None:
        return _draw_layer_seed()
    return as_uint("seed", seed, 64)


cdef class Dropout(_Layer):
    """Dropout(p=0.5, mode='inverted', seed=None, axis=1, inplace=False)
--

    Dropout (Hinton et al. 2012; Srivastava et al. 2014) with counter-based
    masks: each element is dropped (set to exactly 0) with probability p.

    Parameters (each may be set later as an attribute, checked the same way):
      p: the drop probability, a real number in [0, 1] (not bool).
      mode: "inverted" (default) scales kept values by 1/(1-p) in training
        and is the identity in eval; "classic" (the 2012 paper) keeps
        values unscaled in training and scales by (1-p) in eval.
      seed: the Philox key of every mask, an integer in [0, 2**64) (not
        bool); None (default) draws one from dropnorm's default generator,
        which dropnorm.manual_seed(n) makes repeatable.
      axis: the channel axis, 1 (channels first) or -1 (channels last);
        used by Dropout1d/2d/3d.
      inplace: write the result into x and return x itself, as PyTorch's
        inplace=True; x must then be a writeable, C-contiguous float32 or
        float64 numpy array (TypeError or ValueError naming x otherwise).

    Every training forward uses a new stream of the layer's seed (stream
    0, 1, 2, ...; the attribute ``stream`` is the next one), so no two calls
    share a mask, and the same seed gives the same sequence of masks in any
    process. backward regenerates the mask of its forward from (seed,
    stream) and stores no mask.

    Eval mode with mode="inverted" returns its input itself, not a copy
    (``layer.eval()(x) is x``), as PyTorch does: for a float32 or float64
    numpy array of native byte order, whatever its strides; anything else
    is converted to one. Writing into the result then writes into x.

    backward uses a snapshot taken at forward (p, mode, seed, stream,
    training, axis and the output's shape), not the current attributes:
    changing them between forward and backward does not change the gradient
    (the next forward uses the new values). backward needs nothing of x, so x
    may change after forward.

    Threads: one layer may be shared by threads for forwards and backwards.
    Each training forward reserves its stream (reads and advances it) under
    the layer's lock before its kernel runs, so N concurrent forwards use N
    distinct streams, each thread's in increasing order, and the stream ends
    N further on (which forward gets which stream depends on the timing).
    Each thread's backward pairs with that thread's last forward (or with the
    last forward of any thread if the calling thread has made none).
    Attribute setters are atomic; a forward uses the values it read at its
    start. A forward that raises gives its stream back unless another
    forward has reserved one since.
    """

    cdef double _p
    cdef str _mode
    cdef object _seed
    cdef object _stream
    cdef bint _inplace

    _channelwise = False
    _ndims = None        # the accepted ndim of batched input (channel dropouts)
    _shape_text = ""

    def __init__(self, p=0.5, mode="inverted", seed=None, axis=1, inplace=False):
        """Initialize self; the parameters are in help(type(self))."""
        # every check first: a bad argument raises before anything is set
        p = as_probability("p", p)
        if mode is True or mode is False:
            # Dropout(0.5, True) is PyTorch's Dropout(p, inplace); here the
            # second argument is the mode
            raise TypeError("mode: expected 'inverted' or 'classic', got bool (for PyTorch's "
                            f"Dropout(p, inplace) write {type(self).__name__}(p, inplace=...))")
        as_dropout_mode(mode)
        axis = as_layer_axis(axis)
        inplace = as_flag("inplace", inplace)
        seed = _as_seed(seed)   # last: a draw only for a layer that is made
        self._p = p
        self._mode = mode
        self._seed = seed
        self._stream = 0
        self._training = True
        self._axis = axis
        self._inplace = inplace

    # ---- checked attributes ---------------------------------------------------
    @property
    def p(self):
        """The drop probability, in [0, 1]."""
        return self._p

    @p.setter
    def p(self, value):
        value = as_probability("p", value)
        with self._lock:
            self._p = value

    @property
    def mode(self):
        """"inverted" (scale in training) or "classic" (scale in eval)."""
        return self._mode

    @mode.setter
    def mode(self, value):
        as_dropout_mode(value)
        with self._lock:
            self._mode = value

    @property
    def seed(self):
        """The Philox key of every mask, an integer in [0, 2**64); setting
        None draws a new one from the default generator."""
        return self._seed

    @seed.setter
    def seed(self, value):
        value = _as_seed(value)
        with self._lock:
            self._seed = value

    @property
    def stream(self):
        """The stream of the next training forward, an integer in [0, 2**64)."""
        return self._stream

    @stream.setter
    def stream(self, value):
        value = as_uint("stream", value, 64)
        with self._lock:
            self._stream = value

    @property
    def inplace(self):
        """Whether forward writes its result into x and returns x (a bool)."""
        return self._inplace

    @inplace.setter
    def inplace(self, value):
        value = as_flag("inplace", value)
        with self._lock:
            self._inplace = value

    cdef bint _unbatched(self, x) except -1:
        """Whether x is a channel dropout's input without the batch axis
        ((C, L), (C, H, W) or (C, D, H, W), or channels last); ValueError if
        its ndim fits neither form."""
        if self._ndims is None:
            return False
        # anything but an ndarray is read as the kernel will read it (zero-copy
        # for DLPack exporters and the buffer protocol), or raises naming x
        shape = x.shape if type(x) is np.ndarray else as_array("x", x, 0).shape
        ndim = len(shape)
        if ndim == self._ndims[0]:
            return False
        if ndim != self._ndims[0] - 1:
            raise ValueError(f"x: {type(self).__name__} expects {self._shape_text}, "
                             f"got shape {shape}")
        return True

    def forward(self, x, offset=0):
        """Apply dropout to x and return the result; a training call
        reserves the next stream. Eval mode with mode="inverted" returns x
        itself; inplace=True writes into x and returns x. offset: x is a
        shard of a batch whose decisions start there (elements, or (n, c)
        pairs for Dropout1d/2d/3d), as in dropnorm.dropout: the shards of a
        batch get exactly their slices of the whole batch's mask
        (data-parallel training); backward uses the same offset."""
        unbatched = self._unbatched(x)
        with self._lock:
            p, mode, seed, stream = self._p, self._mode, self._seed, self._stream
            training, axis, inplace = self._training, self._axis, self._inplace
            if training:
                if stream == _LAST_STREAM:
                    # the stream after this one would not fit in 64 bits
                    raise ValueError(f"stream: the streams of seed {seed} are used up "
                                     f"(stream {stream}); set another seed or stream")
                self._stream = stream + 1
        try:
            if not training and mode == "inverted":
                y = as_float_input("x", x)  # the identity: x itself
            else:
                y = self._apply(x, p, mode, seed, stream, training, axis, inplace, unbatched,
                                offset)
        except BaseException:
            if training:
                with self._lock:
                    if self._stream == stream + 1:
                        self._stream = stream
            raise
        self._remember((p, mode, seed, stream, training, axis, y.shape, unbatched, offset))
        return y

    cdef _apply(self, x, p, mode, seed, stream, training, axis, bint inplace, bint unbatched,
                offset):
        """The kernel's part of forward: y, or x written in place."""
        if inplace:
            x = as_inplace_array("x", x)
        elif unbatched:
            x = as_array("x", x)
        # channel dropout of unbatched input: a batch of one (a view)
        xb = x[None] if unbatched else x
        y = dropout(xb, p=p, seed=seed, stream=stream, mode=mode, training=training,
                    channelwise=self._channelwise, axis=axis, out=xb if inplace else None,
                    offset=offset)
        if inplace:
            return x
        return y[0] if unbatched else y

    def backward(self, dy):
        """dx for dy (the gradient of the output, of its shape): the
        gradient for the calling thread's last forward, with that forward's
        p, mode and axis and its mask regenerated from its (seed, stream)."""
        p, mode, seed, stream, training, axis, shape, unbatched, offset = self._recall()
        dy_shape = dy.shape if type(dy) is np.ndarray else as_array("dy", dy, 0).shape
        if dy_shape != shape:
            raise ValueError(f"dy: shape {dy_shape} does not match the last forward's "
                             f"output shape {shape}")
        if not training:
            # eval: the forward was the identity or a scale by 1-p; its
            # gradient is the same map (elementwise: no decisions)
            return dropout(dy, p=p, mode=mode, training=False)
        dy = as_array("dy", dy)
        dx = dropout_backward(dy[None] if unbatched else dy, p, seed=seed, stream=stream,
                              mode=mode, channelwise=self._channelwise, axis=axis,
                              offset=offset)
        return dx[0] if unbatched else dx

    def __repr__(self):
        text = (f"{type(self).__name__}(p={self.p}, mode={self.mode!r}, seed={self.seed}, "
                f"axis={self.axis}")
        return text + (", inplace=True)" if self.inplace else ")")

    def __reduce__(self):
        # read together under the lock; the clone gets its own lock (see __cinit__)
        with self._lock:
            state = {"training": self._training, "stream": self._stream}
            args = (self._p, self._mode, self._seed, self._axis, self._inplace)
        return (type(self), args, state)

    def __setstate__(self, state):
        for key, value in state.items():
            setattr(self, key, value)


cdef class Dropout1d(Dropout):
    """Dropout1d(p=0.5, mode='inverted', seed=None, axis=1, inplace=False)
--

    Channel (spatial) dropout over (N, C, L), or unbatched (C, L): whole
    channels are dropped, one decision per (n, c), as PyTorch's Dropout1d.
    With axis=-1 (channels last): (N, L, C), or unbatched (L, C).

    Parameters (as in Dropout; each may be set later as an attribute):
      p: the drop probability of a channel, a real number in [0, 1].
      mode: "inverted" (scale kept channels by 1/(1-p) in training, the
        identity in eval) or "classic" (no scale in training, 1-p in eval).
      seed: an integer in [0, 2**64), or None (default) for one from the
        default generator (dropnorm.manual_seed makes it repeatable).
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      inplace: write the result into x (a writeable, C-contiguous float
        array) and return x.

    Unbatched input is a batch of one: its decisions are those of x[None].
    Eval mode with mode="inverted" returns x itself. Threads and backward as
    in Dropout: concurrent forwards reserve distinct streams, each thread's
    backward pairs with its own last forward and uses that forward's
    snapshot of p, mode, seed, stream and axis.
    """
    _channelwise = True
    _ndims = (3,)
    _shape_text = "3-d (N, C, L) input or 2-d (C, L) unbatched input"


cdef class Dropout2d(Dropout):
    """Dropout2d(p=0.5, mode='inverted', seed=None, axis=1, inplace=False)
--

    Channel (spatial) dropout over (N, C, H, W), or unbatched (C, H, W):
    whole channels are dropped, one decision per (n, c). With axis=-1
    (channels last): (N, H, W, C), or unbatched (H, W, C).

    Parameters (as in Dropout; each may be set later as an attribute):
      p: the drop probability of a channel, a real number in [0, 1].
      mode: "inverted" (scale kept channels by 1/(1-p) in training, the
        identity in eval) or "classic" (no scale in training, 1-p in eval).
      seed: an integer in [0, 2**64), or None (default) for one from the
        default generator (dropnorm.manual_seed makes it repeatable).
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      inplace: write the result into x (a writeable, C-contiguous float
        array) and return x.

    Unbatched input is a batch of one: its decisions are those of x[None].
    (PyTorch 2.13 still reads a 3-d input to Dropout2d as (N, C, L), with a
    warning that it will become (C, H, W); dropnorm reads it as (C, H, W).)
    Eval mode with mode="inverted" returns x itself. Threads and backward as
    in Dropout: concurrent forwards reserve distinct streams, each thread's
    backward pairs with its own last forward and uses that forward's
    snapshot of p, mode, seed, stream and axis.
    """
    _channelwise = True
    _ndims = (4,)
    _shape_text = "4-d (N, C, H, W) input or 3-d (C, H, W) unbatched input"


cdef class Dropout3d(Dropout):
    """Dropout3d(p=0.5, mode='inverted', seed=None, axis=1, inplace=False)
--

    Channel (spatial) dropout over (N, C, D, H, W), or unbatched
    (C, D, H, W): whole channels are dropped, one decision per (n, c), as
    PyTorch's Dropout3d. With axis=-1 (channels last): (N, D, H, W, C), or
    unbatched (D, H, W, C).

    Parameters (as in Dropout; each may be set later as an attribute):
      p: the drop probability of a channel, a real number in [0, 1].
      mode: "inverted" (scale kept channels by 1/(1-p) in training, the
        identity in eval) or "classic" (no scale in training, 1-p in eval).
      seed: an integer in [0, 2**64), or None (default) for one from the
        default generator (dropnorm.manual_seed makes it repeatable).
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      inplace: write the result into x (a writeable, C-contiguous float
        array) and return x.

    Unbatched input is a batch of one: its decisions are those of x[None].
    Eval mode with mode="inverted" returns x itself. Threads and backward as
    in Dropout: concurrent forwards reserve distinct streams, each thread's
    backward pairs with its own last forward and uses that forward's
    snapshot of p, mode, seed, stream and axis.
    """
    _channelwise = True
    _ndims = (5,)
    _shape_text = "5-d (N, C, D, H, W) input or 4-d (C, D, H, W) unbatched input"
