"""One rank of the benchmark's sync suite (python -m dropnorm.bench --suite
sync launches it under mpiexec): on this rank's shard of each batch, a
SyncBatchNorm training forward and backward against a BatchNorm2d's on the
same shard, timed alternately in the same process. The difference is what
the communication adds (the Allgather of the partials, the wait for the
slowest rank, the merge). Rank 0 writes the medians over the repeats, the
worst rank's, as JSON.

    mpiexec -n K python -m dropnorm._bench_sync OUT.json REPEATS N,C,H,W [N,C,H,W ...]
"""

import json
import statistics
import sys
import time

import numpy as np


def _time(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(comm, shape, repeats):
    """Medians (s) of this rank's forward and backward, synced and local."""
    import dropnorm

    rank, size = comm.Get_rank(), comm.Get_size()
    shards = np.array_split(np.arange(shape[0]), size)
    n = len(shards[rank])
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((n,) + tuple(shape[1:])).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    sync = dropnorm.SyncBatchNorm(shape[1], comm=comm)
    local = dropnorm.BatchNorm2d(shape[1])
    times = {"sync_forward": [], "local_forward": [], "sync_backward": [],
             "local_backward": []}
    for r in range(repeats + 2):  # two rounds of warm-up
        comm.Barrier()
        sf = _time(lambda: sync.forward(x))
        sb = _time(lambda: sync.backward(dy))
        comm.Barrier()
        lf = _time(lambda: local.forward(x))
        lb = _time(lambda: local.backward(dy))
        local.zero_grad()
        sync.zero_grad()
        if r >= 2:
            for key, value in zip(times, (sf, lf, sb, lb)):
                times[key].append(value)
    return {key: statistics.median(values) for key, values in times.items()}


def main(argv):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out, repeats = argv[0], int(argv[1])
    shapes = [tuple(int(v) for v in text.split(",")) for text in argv[2:]]
    rows = []
    for shape in shapes:
        mine = measure(comm, shape, repeats)
        every = comm.gather(mine, root=0)
        if comm.Get_rank() == 0:
            worst = {key: max(m[key] for m in every) for key in mine}
            rows.append({"shape": list(shape), "ranks": comm.Get_size(), **worst,
                         "added_forward": worst["sync_forward"] - worst["local_forward"],
                         "added_backward": worst["sync_backward"] - worst["local_backward"]})
    if comm.Get_rank() == 0:
        with open(out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
