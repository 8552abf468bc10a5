"""One rank of the dropnorm.torch.SyncBatchNorm check; tests/test_torch.py
launches it under mpiexec with K ranks.

Every rank makes the whole batch from a seed, keeps its shard (uneven sizes;
one rank's empty with 3 ranks) and trains dropnorm.torch.SyncBatchNorm on it
over MPI.COMM_WORLD for a few steps (an SGD step with the weight and bias
gradients summed over the ranks), beside torch.nn.BatchNorm2d trained in
this process on the whole batch, in float64, contiguous and channels_last.
It measures the largest relative differences (max |a - b| / max |b|) of y,
dx, the running statistics, the rank-summed gradients and an eval forward;
rank 0 writes them as JSON to argv[1].
"""

import json
import sys

import numpy as np
import torch
from mpi4py import MPI

import dropnorm.torch as dt

SHARDS = {1: [7], 2: [4, 3], 3: [3, 0, 4], 4: [2, 2, 1, 2]}
STEPS = 3


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    diff = np.abs(a - b).max() if b.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def main(path):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    sizes = SHARDS[size]
    lo = sum(sizes[:rank])
    mine = slice(lo, lo + sizes[rank])
    cases = {}
    for fmt in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        c = 5
        sync = dt.SyncBatchNorm(c, momentum=None, dtype=torch.float64, comm=comm)
        ref = torch.nn.BatchNorm2d(c, momentum=None, dtype=torch.float64)
        worst = {}

        def note(key, value, worst=worst):
            worst[key] = max(worst.get(key, 0.0), value)

        gen = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            x = torch.randn(sum(sizes), c, 4, 3, generator=gen, dtype=torch.float64) * 3 + 1
            dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            if fmt == "channels_last":
                x = x.to(memory_format=torch.channels_last)
                dy = dy.to(memory_format=torch.channels_last)
            xs = x[mine].clone().requires_grad_()
            xr = x.clone().requires_grad_()
            ys, yr = sync(xs), ref(xr)
            ys.backward(dy[mine])
            yr.backward(dy)
            note("y", rel(ys.detach(), yr.detach()[mine]))
            note("dx", rel(xs.grad, xr.grad[mine]))
            for name in ("running_mean", "running_var"):
                note(name, rel(getattr(sync, name), getattr(ref, name)))
            for name, p, q in (("grad_weight", sync.weight, ref.weight),
                               ("grad_bias", sync.bias, ref.bias)):
                summed = comm.allreduce(p.grad.numpy())
                note(name, rel(summed, q.grad))
            with torch.no_grad():
                for p, q in ((sync.weight, ref.weight), (sync.bias, ref.bias)):
                    p -= 0.1 * torch.from_numpy(comm.allreduce(p.grad.numpy()))
                    q -= 0.1 * q.grad
                    p.grad = q.grad = None
        sync.eval()
        ref.eval()
        note("y_eval", rel(sync(x[mine]).detach(), ref(x).detach()[mine]))
        every = comm.allgather(worst)
        cases[fmt] = {k: max(w[k] for w in every) for k in worst}
    if rank == 0:
        with open(path, "w") as f:
            json.dump({"ranks": size, "cases": cases}, f)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except BaseException:
        # one failing rank must not leave the others waiting in a collective
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
