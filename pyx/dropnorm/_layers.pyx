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
from dropnorm._checks import (
    as_dropout_mode,
    as_eps,
    as_flag,
    as_float_dtype,
    as_int,
    as_layer_axis,
    as_mapping,
    as_momentum,
    as_positive_int,
    as_probability,
    as_tensor,
    as_uint,
    tensor_extents,
)
from dropnorm._dropout import dropout, dropout_backward

# Every argument of a constructor, a setter, forward or backward is checked
# by the functions of dropnorm._checks that the functional API uses, so a
# layer and a function accept and reject the same values with the same
# messages, and a rejected value changes nothing.


cdef class _Layer:
    """What every layer shares: the channel axis, the training flag, and
    ``layer(x)`` as ``layer.forward(x)``."""

    cdef int _axis
    cdef bint _training

    @property
    def axis(self):
        """The channel axis: 1 (channels first) or -1 (channels last)."""
        return self._axis

    @axis.setter
    def axis(self, value):
        self._axis = as_layer_axis(value)

    @property
    def training(self):
        """True in training mode, False in eval mode."""
        return self._training

    @training.setter
    def training(self, value):
        self._training = as_flag("training", value)

    def train(self, mode=True):
        """Training mode or, with mode=False, eval mode (mode must be a bool);
        returns the layer."""
        self._training = as_flag("mode", mode)
        return self

    def eval(self):
        """Eval mode (the same as ``train(False)``); returns the layer."""
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)


cdef class _BatchNorm(_Layer):
    """Batch normalization over the channel axis (Ioffe & Szegedy 2015).

    Training mode normalises with the batch's statistics and updates the
    running statistics; eval mode uses the running statistics. With
    ``momentum=None`` the running statistics are the cumulative average over
    the batches seen (the population statistics of the paper's Algorithm 2).

    num_features: an integer >= 1 (not bool); eps: a finite real number
    >= 0; momentum: a real number in [0, 1] or None; affine and
    track_running_stats: bool; axis: 1 or -1; dtype: float32 or float64.
    num_features, affine, track_running_stats and dtype are fixed at
    construction; eps, momentum, axis and training may be set later and are
    checked as in the constructor.
    """

    cdef readonly object num_features
    cdef double _eps
    cdef object _momentum
    cdef readonly bint affine
    cdef readonly bint track_running_stats
    cdef readonly object dtype
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
        # every check first: a bad argument raises before anything is set
        num_features = as_positive_int("num_features", num_features)
        eps = as_eps(eps)
        momentum = as_momentum(momentum, allow_none=True)
        affine = as_flag("affine", affine)
        track_running_stats = as_flag("track_running_stats", track_running_stats)
        axis = as_layer_axis(axis)
        dtype = as_float_dtype("dtype", dtype)
        self.num_features = num_features
        self._eps = eps
        self._momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self._axis = axis
        self.dtype = dtype
        self._training = True
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

    # ---- checked attributes ---------------------------------------------------
    @property
    def eps(self):
        """Added to the variance before the square root: a finite real >= 0."""
        return self._eps

    @eps.setter
    def eps(self, value):
        self._eps = as_eps(value)

    @property
    def momentum(self):
        """Weight of the new batch in the running statistics, in [0, 1], or
        None for the cumulative average over the batches seen."""
        return self._momentum

    @momentum.setter
    def momentum(self, value):
        self._momentum = as_momentum(value, allow_none=True)

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
        try:
            batches = iter(batches)
        except TypeError:
            raise TypeError(f"batches: expected an iterable of inputs, "
                            f"got {type(batches).__name__}") from None
        # accumulate into new arrays: a bad batch raises and changes nothing
        mean = np.zeros(self.num_features, self.dtype)
        var = np.ones(self.num_features, self.dtype)
        count = 0
        for batch in batches:
            x = self._check_input(batch)
            batch_norm_train(x, None, None, mean, var, momentum=1.0 / (count + 1),
                             eps=self.eps, axis=self.axis)
            count += 1
        self.running_mean[...] = mean
        self.running_var[...] = var
        self.num_batches_tracked = count
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

    def load_state_dict(self, state_dict):
        """Load a mapping like state_dict()'s (values may be anything with
        __array__, e.g. CPU tensors). Something that is not a mapping raises
        TypeError; missing or extra keys and wrong shapes raise ValueError;
        all before anything is changed."""
        state = as_mapping("state_dict", state_dict)
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


_LAST_STREAM = 2**64 - 1


def _as_seed(seed):
    """A dropout seed: an integer in [0, 2**64), or None for one from the OS."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    return as_uint("seed", seed, 64)


cdef class Dropout(_Layer):
    """Dropout (Hinton et al. 2012; Srivastava et al. 2014) with
    counter-based masks.

    Every training forward uses a new stream of the layer's seed (the stream
    advances by one per call), so no two calls share a mask, and the same seed
    gives the same sequence of masks in any process. backward regenerates the
    last forward's mask from (seed, stream) and stores no mask.
    mode="inverted" scales kept values by 1/(1-p) in training and is the
    identity in eval; mode="classic" keeps values unscaled in training and
    scales by (1-p) in eval. seed=None draws a seed from the OS once.

    p: a real number in [0, 1] (not bool); mode: "inverted" or "classic";
    seed and stream: integers in [0, 2**64) (not bool); axis: 1 or -1 (used
    by the channel dropouts). They may be set later and are checked as in
    the constructor and in ``dropout``.
    """

    cdef double _p
    cdef str _mode
    cdef object _seed
    cdef object _stream
    # the stream and kind of the last forward, for backward
    cdef object _last_stream
    cdef bint _last_training
    cdef object _last_shape

    _channelwise = False
    _ndims = None
    _shape_text = ""

    def __init__(self, p=0.5, mode="inverted", seed=None, axis=1):
        # every check first: a bad argument raises before anything is set
        p = as_probability("p", p)
        as_dropout_mode(mode)
        seed = _as_seed(seed)
        axis = as_layer_axis(axis)
        self._p = p
        self._mode = mode
        self._seed = seed
        self._stream = 0
        self._training = True
        self._axis = axis
        self._last_stream = None
        self._last_shape = None

    # ---- checked attributes ---------------------------------------------------
    @property
    def p(self):
        """The drop probability, in [0, 1]."""
        return self._p

    @p.setter
    def p(self, value):
        self._p = as_probability("p", value)

    @property
    def mode(self):
        """"inverted" (scale in training) or "classic" (scale in eval)."""
        return self._mode

    @mode.setter
    def mode(self, value):
        as_dropout_mode(value)
        self._mode = value

    @property
    def seed(self):
        """The Philox key of every mask, an integer in [0, 2**64); setting
        None draws a new one from the OS."""
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = _as_seed(value)

    @property
    def stream(self):
        """The stream of the next training forward, an integer in [0, 2**64)."""
        return self._stream

    @stream.setter
    def stream(self, value):
        self._stream = as_uint("stream", value, 64)

    def forward(self, x):
        """Apply dropout to x; a training call uses the next stream."""
        if self._ndims is not None:
            arr = np.asarray(x)
            if arr.ndim not in self._ndims:
                raise ValueError(
                    f"x: {type(self).__name__} expects {self._shape_text}, got shape {arr.shape}")
        stream = self._stream
        if self._training and stream == _LAST_STREAM:
            # the stream after this one would not fit in 64 bits
            raise ValueError(f"stream: the streams of seed {self._seed} are used up "
                             f"(stream {stream}); set another seed or stream")
        y = dropout(x, p=self.p, seed=self.seed, stream=stream, mode=self.mode,
                    training=self.training, channelwise=self._channelwise, axis=self.axis)
        if self._training:
            self._stream = stream + 1
        self._last_stream = stream
        self._last_training = self.training
        self._last_shape = y.shape
        return y

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
