"""One rank of the SyncBatchNorm and offset-dropout checks; tests/test_sync.py
launches it under mpiexec with K ranks.

Every rank makes the whole batch from the seed, keeps its shard (uneven
sizes, some with one sample or none) and trains a SyncBatchNorm on it for
several steps (an SGD step on weight and bias with the gradients summed over
the ranks), beside a BatchNorm2d (BatchNorm1d for 2-D input) that trains in
this process on the whole batch. It measures the largest relative
differences (max |a - b| / max |b|) of y, dx, the running statistics and the
rank-summed grad_weight / grad_bias, checks that the results do not depend on
the thread count, and that the shards' dropout masks at their offsets put
together are the whole batch's. Rank 0 writes a JSON report (argv[1]): the
differences, and a digest of every rank's outputs for run-to-run checks.
"""

import hashlib
import json
import sys

import numpy as np
from mpi4py import MPI

import dropnorm

SHARDS = {1: [9], 2: [6, 3], 3: [1, 0, 8], 4: [2, 3, 1, 3]}
STEPS = 4


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def gathered(comm, a):
    """Every rank's array, in rank order."""
    return comm.allgather(np.asarray(a))


def run_case(comm, dtype, axis, shape_tail, digest):
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = SHARDS[size]
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    n = sum(sizes)
    channels = shape_tail[0] if axis == 1 else shape_tail[-1]
    reference_cls = {1: dropnorm.BatchNorm1d, 2: dropnorm.BatchNorm1d, 3: dropnorm.BatchNorm2d,
                     4: dropnorm.BatchNorm3d}[len(shape_tail)]
    sync = dropnorm.SyncBatchNorm(channels, momentum=0.3, axis=axis, dtype=dtype, comm=comm)
    ref = reference_cls(channels, momentum=0.3, axis=axis, dtype=dtype)
    worst = {}

    def note(key, value):
        worst[key] = max(worst.get(key, 0.0), value)

    rng = np.random.default_rng(1234)
    for _ in range(STEPS):
        x = (5.0 + 2.0 * rng.standard_normal((n,) + shape_tail)).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        y_ref = ref.forward(x)
        dx_ref = ref.backward(dy)
        outputs = []
        for threads in (1, 2):
            dropnorm.set_num_threads(threads)
            state = sync.state_dict()
            y = sync.forward(x[lo:hi].copy())
            sync.grad_weight = sync.grad_bias = None
            dx = sync.backward(dy[lo:hi])
            outputs.append((y, dx, sync.grad_weight, sync.grad_bias, sync.running_mean.copy(),
                            sync.running_var.copy()))
            if threads == 1:
                sync.load_state_dict(state)  # the same step again, with 2 threads
        for a, b in zip(outputs[0], outputs[1]):
            assert np.array_equal(a, b), "results differ between 1 and 2 threads"
        y, dx, gw, gb, rmean, rvar = outputs[1]
        note("y", rel(y, y_ref[lo:hi]))
        note("dx", rel(dx, dx_ref[lo:hi]))
        note("running_mean", rel(rmean, ref.running_mean))
        note("running_var", rel(rvar, ref.running_var))
        gw_all = sum(np.asarray(g, np.float64) for g in gathered(comm, gw))
        gb_all = sum(np.asarray(g, np.float64) for g in gathered(comm, gb))
        note("grad_weight", rel(gw_all, ref.grad_weight))
        note("grad_bias", rel(gb_all, ref.grad_bias))
        for part in (y, dx, gw, gb, rmean, rvar):
            digest.update(np.ascontiguousarray(part).tobytes())
        # an SGD step with the whole batch's gradients, the same on both
        for layer, (w, b) in ((sync, (gw_all, gb_all)), (ref, (ref.grad_weight, ref.grad_bias))):
            layer.weight -= (0.1 * np.asarray(w, np.float64)).astype(dtype)
            layer.bias -= (0.1 * np.asarray(b, np.float64)).astype(dtype)
            layer.grad_weight = layer.grad_bias = None
    # eval mode: the running statistics, no communication
    sync.eval()
    ref.eval()
    x = (5.0 + 2.0 * rng.standard_normal((n,) + shape_tail)).astype(dtype)
    note("y_eval", rel(sync.forward(x[lo:hi]), ref.forward(x)[lo:hi]))
    return worst


def check_dropout(comm):
    """The shards' masks and outputs at their offsets, put together, are the
    whole batch's, elementwise and channelwise."""
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = SHARDS[size]
    lo = sum(sizes[:rank])
    hi = lo + sizes[rank]
    n = sum(sizes)
    x = np.random.default_rng(7).standard_normal((n, 3, 5, 7)).astype(np.float32)
    per = 3 * 5 * 7
    for channelwise, offset_of in ((False, lo * per), (True, lo * 3)):
        layer = (dropnorm.Dropout2d if channelwise else dropnorm.Dropout)(0.4, seed=11)
        whole = layer.forward(x)
        shard_layer = (dropnorm.Dropout2d if channelwise else dropnorm.Dropout)(0.4, seed=11)
        shard = (shard_layer.forward(x[lo:hi], offset=offset_of) if hi > lo
                 else x[lo:hi])
        together = np.concatenate(gathered(comm, shard))
        assert np.array_equal(together, whole), f"dropout shards (channelwise={channelwise})"
        bits = n * (3 if channelwise else per)
        mine = (hi - lo) * (3 if channelwise else per)
        whole_mask = np.unpackbits(dropnorm.dropout_mask(bits, 0.4, 11, 0), bitorder="little")
        if mine:
            shard_mask = np.unpackbits(dropnorm.dropout_mask(mine, 0.4, 11, 0, offset=offset_of),
                                       bitorder="little")[:mine]
            assert np.array_equal(shard_mask, whole_mask[offset_of:offset_of + mine])


def main():
    comm = MPI.COMM_WORLD
    digest = hashlib.sha256()
    report = {"ranks": comm.Get_size(), "cases": {}}
    for dtype in (np.float32, np.float64):
        for axis, tail in ((1, (3, 4, 5)), (-1, (4, 5, 3)), (1, (6,))):
            key = f"{np.dtype(dtype).name} axis={axis} shape=(N,{','.join(map(str, tail))})"
            report["cases"][key] = run_case(comm, dtype, axis, tail, digest)
    check_dropout(comm)
    digests = comm.gather(digest.hexdigest(), root=0)
    if comm.Get_rank() == 0:
        report["digest"] = hashlib.sha256("".join(digests).encode()).hexdigest()
        with open(sys.argv[1], "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
