# cython: language_level=3
"""Layer classes with PyTorch's behaviour: BatchNorm1d/2d/3d and
Dropout/Dropout1d/2d/3d, each with forward/backward and training state."""

import os

import numpy as np

from dropnorm._batchnorm import (
    batch_norm_backward,
    batch_norm_infer,
    batch_norm_infer_backward,
    batch_norm_train,
)
from dropnorm._checks import FLOAT_DTYPES, as_tensor, tensor_extents
from dropnorm._dropout import dropout, dropout_backward


def _layer_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


cdef class _BatchNorm:
    """Batch normalization over the channel axis (Ioffe & Szegedy 2015).

    Training mode normalises with the batch's statistics and updates the
    running statistics; eval mode uses the running statistics. With
    ``momentum=None`` the running statistics are the cumulative average over
    the batches seen (the population statistics of the paper's Algorithm 2).
    """

    cdef public int num_features
    cdef public double eps
    cdef public object momentum
    cdef public bint affine
    cdef public bint track_running_stats
    cdef public int axis
    cdef public object dtype
    cdef public bint training
    cdef public object weight
    cdef public object bias
    cdef public object grad_weight
    cdef public object grad_bias
    cdef public object running_mean
    cdef public object running_var
    cdef public object num_batches_tracked
    # what backward needs from the last forward
    cdef object _x
    cdef object _stats  # (save_mean, save_invstd) or (running_mean, running_var)
    cdef bint _used_batch_stats

    _ndims = ()
    _shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, axis=1, dtype=np.float32):
        if int(num_features) < 1:
            raise ValueError(f"num_features: expected a positive integer, got {num_features}")
        if axis not in (1, -1):
            raise ValueError(f"axis: expected 1 (channels first) or -1 (channels last), got {axis}")
        if momentum is not None and not (0.0 <= float(momentum) <= 1.0):
            raise ValueError(f"momentum: expected None or a value in [0, 1], got {momentum}")
        if not (float(eps) >= 0.0 and np.isfinite(float(eps))):
            raise ValueError(f"eps: expected a finite value >= 0, got {eps}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = int(axis)
        self.dtype = _layer_dtype(dtype)
        self.training = True
        self.weight = np.ones(self.num_features, self.dtype) if self.affine else None
        self.bias = np.zeros(self.num_features, self.dtype) if self.affine else None
        self.grad_weight = None
        self.grad_bias = None
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.dtype)
            self.running_var = np.ones(self.num_features, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None
        self._x = None

    # ---- mode -------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (batch statistics) or, with mode=False, eval mode."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Eval mode: normalise with the running statistics."""
        return self.train(False)

    # ---- forward / backward -----------------------------------------------
    def _check_input(self, x):
        x = as_tensor("x", x)
        if x.ndim not in self._ndims:
            raise ValueError(
                f"x: {type(self).__name__} expects {self._shape_text}, got shape {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"x: dtype {x.dtype} does not match the layer's dtype {self.dtype}")
        _, c, _, _ = tensor_extents(x, self.axis)
        if c != self.num_features:
            raise ValueError(f"x: expected {self.num_features} channels on axis {self.axis}, "
                             f"got shape {x.shape}")
        return x

    def forward(self, x):
        """Normalise x; remembers what backward needs."""
        x = self._check_input(x)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            update = self.training and self.track_running_stats
            momentum = 0.0
            if update:
                if self.momentum is None:
                    momentum = 1.0 / (self.num_batches_tracked + 1)
                else:
                    momentum = self.momentum
            y, mean, invstd = batch_norm_train(
                x, self.weight, self.bias,
                self.running_mean if update else None,
                self.running_var if update else None,
                momentum=momentum, eps=self.eps, axis=self.axis)
            if update:
                self.num_batches_tracked += 1
            self._stats = (mean, invstd)
        else:
            y = batch_norm_infer(x, self.running_mean, self.running_var, self.weight,
                                 self.bias, eps=self.eps, axis=self.axis)
            # the backward must use the statistics of this forward
            self._stats = (self.running_mean.copy(), self.running_var.copy())
        self._x = x
        self._used_batch_stats = use_batch
        return y

    def __call__(self, x):
        return self.forward(x)

    def backward(self, dy):
        """Gradient with respect to the last forward's input; accumulates
        grad_weight and grad_bias (like PyTorch's .grad) when affine."""
        if self._x is None:
            raise RuntimeError("backward called before forward")
        if self._used_batch_stats:
            dx, dw, db = batch_norm_backward(dy, self._x, *self._stats, self.weight,
                                             axis=self.axis)
        else:
            dx, dw, db = batch_norm_infer_backward(dy, self._x, *self._stats, self.weight,
                                                   eps=self.eps, axis=self.axis)
        if self.affine:
            self.grad_weight = dw if self.grad_weight is None else self.grad_weight + dw
            self.grad_bias = db if self.grad_bias is None else self.grad_bias + db
        return dx

    def zero_grad(self):
        """Forget accumulated gradients (set them to None, as PyTorch does)."""
        self.grad_weight = None
        self.grad_bias = None

    # ---- statistics ---------------------------------------------------------
    def reset_running_stats(self):
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

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
        self.reset_running_stats()
        for batch in batches:
            x = self._check_input(batch)
            batch_norm_train(x, None, None, self.running_mean, self.running_var,
                             momentum=1.0 / (self.num_batches_tracked + 1),
                             eps=self.eps, axis=self.axis)
            self.num_batches_tracked += 1
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
        (copies); num_batches_tracked is a 0-d int64 array."""
        state = {}
        for key in self._state_keys():
            if key == "num_batches_tracked":
                state[key] = np.array(self.num_batches_tracked, dtype=np.int64)
            else:
                state[key] = np.array(getattr(self, key), copy=True)
        return state

    def load_state_dict(self, state):
        """Load a dict like state_dict()'s (values may be anything with
        __array__, e.g. CPU tensors). Missing or extra keys and wrong shapes
        raise ValueError before anything is changed."""
        keys = set(self._state_keys())
        given = set(state.keys())
        if given != keys:
            missing, extra = sorted(keys - given), sorted(given - keys)
            raise ValueError(f"state: missing keys {missing}, unexpected keys {extra}")
        values = {}
        for key in keys:
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
                values[key] = value.astype(self.dtype)
        for key, value in values.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = value
            else:
                np.copyto(getattr(self, key), value)

    def fold_into(self, weight, bias=None, axis=0):
        """Fold this (eval-mode) batch norm into the preceding linear or
        convolution layer: returns (W', b') with
        W' = W * gamma/sqrt(var + eps) along ``axis`` (the output features) and
        b' = (b - mean) * gamma/sqrt(var + eps) + beta, so that the layer alone
        gives the output of layer followed by this batch norm."""
        if not self.track_running_stats:
            raise ValueError("fold_into: the layer has no running statistics to fold")
        w = np.asarray(weight)
        if w.dtype.kind != "f":
            raise TypeError(f"weight: expected a floating-point array, got {w.dtype}")
        if w.ndim < 1:
            raise ValueError("weight: expected at least 1 dimension")
        ax = axis + w.ndim if axis < 0 else axis
        if not 0 <= ax < w.ndim or w.shape[ax] != self.num_features:
            raise ValueError(f"weight: expected {self.num_features} output features on axis "
                             f"{axis}, got shape {w.shape}")
        b = np.zeros(self.num_features) if bias is None else np.asarray(bias, np.float64)
        if b.shape != (self.num_features,):
            raise ValueError(f"bias: expected shape ({self.num_features},), got {b.shape}")
        gamma = np.ones(self.num_features) if self.weight is None else self.weight.astype(float)
        beta = np.zeros(self.num_features) if self.bias is None else self.bias.astype(float)
        a = gamma / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        shape = [1] * w.ndim
        shape[ax] = self.num_features
        w_folded = (w.astype(np.float64) * a.reshape(shape)).astype(w.dtype)
        b_folded = (b - self.running_mean) * a + beta
        return w_folded, b_folded.astype(w.dtype)

    # ---- Python protocol --------------------------------------------------------
    def __repr__(self):
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, axis={self.axis}, "
                f"dtype={self.dtype.name})")

    def __reduce__(self):
        state = {
            "training": self.training,
            "weight": self.weight, "bias": self.bias,
            "grad_weight": self.grad_weight, "grad_bias": self.grad_bias,
            "running_mean": self.running_mean, "running_var": self.running_var,
            "num_batches_tracked": self.num_batches_tracked,
        }
        args = (self.num_features, self.eps, self.momentum, self.affine,
                self.track_running_stats, self.axis, self.dtype)
        return (type(self), args, state)

    def __setstate__(self, state):
        for key, value in state.items():
            setattr(self, key, value)


cdef class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) input; (N, C) or (N, L, C) with axis=-1."""
    _ndims = (2, 3)
    _shape_text = "2-d (N, C) or 3-d (N, C, L) input"


cdef class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) input; (N, H, W, C) with axis=-1."""
    _ndims = (4,)
    _shape_text = "4-d (N, C, H, W) input"


cdef class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W) input; (N, D, H, W, C) with axis=-1."""
    _ndims = (5,)
    _shape_text = "5-d (N, C, D, H, W) input"


_MODES = ("inverted", "classic")


cdef class Dropout:
    """Dropout (Hinton et al. 2012; Srivastava et al. 2014) with
    counter-based masks.

    Every training forward uses a new stream of the layer's seed (the stream
    advances by one per call), so no two calls share a mask, and the same seed
    gives the same sequence of masks in any process. backward regenerates the
    last forward's mask from (seed, stream) and stores no mask.
    mode="inverted" scales kept values by 1/(1-p) in training and is the
    identity in eval; mode="classic" keeps values unscaled in training and
    scales by (1-p) in eval. seed=None draws a seed from the OS once.
    """

    cdef public double p
    cdef public str mode
    cdef public object seed
    cdef public object stream
    cdef public bint training
    cdef public int axis
    # the stream and kind of the last forward, for backward
    cdef object _last_stream
    cdef bint _last_training
    cdef object _last_shape

    _channelwise = False
    _ndims = None
    _shape_text = ""

    def __init__(self, p=0.5, mode="inverted", seed=None, axis=1):
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        if mode not in _MODES:
            raise ValueError(f"mode: expected 'inverted' or 'classic', got {mode!r}")
        if axis not in (1, -1):
            raise ValueError(f"axis: expected 1 (channels first) or -1 (channels last), got {axis}")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed: expected an integer in [0, 2**64), got {seed}")
        self.p = p
        self.mode = mode
        self.seed = seed
        self.stream = 0
        self.training = True
        self.axis = int(axis)
        self._last_stream = None
        self._last_shape = None

    def train(self, mode=True):
        """Training mode (masks) or, with mode=False, eval mode."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Eval mode: identity (inverted) or scale by 1-p (classic)."""
        return self.train(False)

    def forward(self, x):
        """Apply dropout to x; a training call uses the next stream."""
        if self._ndims is not None:
            arr = np.asarray(x)
            if arr.ndim not in self._ndims:
                raise ValueError(
                    f"x: {type(self).__name__} expects {self._shape_text}, got shape {arr.shape}")
        stream = self.stream
        y = dropout(x, p=self.p, seed=self.seed, stream=stream, mode=self.mode,
                    training=self.training, channelwise=self._channelwise, axis=self.axis)
        if self.training:
            self.stream = stream + 1
        self._last_stream = stream
        self._last_training = self.training
        self._last_shape = y.shape
        return y

    def __call__(self, x):
        return self.forward(x)

    def backward(self, dy):
        """Gradient for the last forward, its mask regenerated from (seed, stream)."""
        if self._last_shape is None:
            raise RuntimeError("backward called before forward")
        dy_shape = np.shape(dy)
        if dy_shape != self._last_shape:
            raise ValueError(f"dy: shape {dy_shape} does not match the last forward's "
                             f"output shape {self._last_shape}")
        if not self._last_training:
            # eval: the forward was the identity or a scale by 1-p; its
            # gradient is the same map
            return dropout(dy, p=self.p, mode=self.mode, training=False,
                           channelwise=self._channelwise, axis=self.axis)
        return dropout_backward(dy, self.p, seed=self.seed, stream=self._last_stream,
                                mode=self.mode, channelwise=self._channelwise, axis=self.axis)

    def __repr__(self):
        return (f"{type(self).__name__}(p={self.p}, mode={self.mode!r}, seed={self.seed}, "
                f"axis={self.axis})")

    def __reduce__(self):
        state = {"training": self.training, "stream": self.stream}
        return (type(self), (self.p, self.mode, self.seed, self.axis), state)

    def __setstate__(self, state):
        for key, value in state.items():
            setattr(self, key, value)


cdef class Dropout1d(Dropout):
    """Channel (spatial) dropout over (N, C, L): whole channels are dropped."""
    _channelwise = True
    _ndims = (3,)
    _shape_text = "3-d (N, C, L) input"


cdef class Dropout2d(Dropout):
    """Channel (spatial) dropout over (N, C, H, W): whole channels are dropped."""
    _channelwise = True
    _ndims = (4,)
    _shape_text = "4-d (N, C, H, W) input"


cdef class Dropout3d(Dropout):
    """Channel (spatial) dropout over (N, C, D, H, W): whole channels are dropped."""
    _channelwise = True
    _ndims = (5,)
    _shape_text = "5-d (N, C, D, H, W) input"
