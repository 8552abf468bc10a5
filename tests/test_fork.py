"""Processes forked after the parent ran threaded kernels (multiprocessing's
fork start method, worker pools, pre-forking servers) run the kernels on one
thread and give the parent's bits, instead of hanging in libgomp, whose
thread pool does not survive fork()."""

import multiprocessing
import os
import time

import numpy as np
import pytest

import dropnorm

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

CHILD_SECONDS = 60  # far above the milliseconds the child needs


def _kernels(x):
    """Every extension module's kernels (each module links its own copy of
    the C library, so each must know it is in a child)."""
    y, mean, invstd = dropnorm.batch_norm_train(x)
    dx, _, _ = dropnorm.batch_norm_backward(x, x, mean, invstd)
    yd = dropnorm.dropout(x, 0.5, seed=3, stream=1)
    layer = dropnorm.BatchNorm2d(x.shape[1])
    yl = layer.forward(x)
    return [y, dx, yd, yl, np.array([dropnorm.get_max_threads()])]


def _threaded_parent(x):
    dropnorm.set_num_threads(2)
    want = _kernels(x)
    assert dropnorm.get_max_threads() == (2 if dropnorm.build_info()["openmp"] else 1)
    return want


def _wait(pid):
    """The child's exit code; kills it and fails if it outlives the deadline."""
    deadline = time.monotonic() + CHILD_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child hung for {CHILD_SECONDS} s")


@pytest.mark.parametrize("first", ["dropout", "batch_norm"])
def test_forked_child_runs_kernels_with_parents_bits(first):
    x = np.random.default_rng(0).standard_normal((16, 32, 32, 32)).astype(np.float32)
    dropnorm.set_num_threads(2)
    # the parent's threads were started by one module only
    if first == "dropout":
        dropnorm.dropout(x, 0.5)
    else:
        dropnorm.batch_norm_train(x)
    want = _threaded_parent(x)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 iff every result has the parent's bits
        code = 1
        try:
            got = _kernels(x)
            same = all(np.array_equal(a, b) for a, b in zip(got[:-1], want[:-1]))
            code = 0 if same and got[-1][0] == 1 else 3
        finally:
            os._exit(code)
    assert _wait(pid) == 0
    # the parent keeps its threads
    assert dropnorm.get_max_threads() == want[-1][0]


def _pool_task(seed):
    x = np.random.default_rng(seed).standard_normal((8, 16, 32, 32)).astype(np.float32)
    return dropnorm.dropout(x, 0.3, seed=seed), dropnorm.batch_norm_train(x)[0]


def test_fork_start_method_pool():
    x = np.ones(1 << 20, np.float32)
    dropnorm.set_num_threads(2)
    dropnorm.dropout(x, 0.5)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        result = pool.map_async(_pool_task, range(4))
        got = result.get(timeout=CHILD_SECONDS)
    for seed, (yd, yb) in zip(range(4), got):
        want_d, want_b = _pool_task(seed)
        np.testing.assert_array_equal(yd, want_d)
        np.testing.assert_array_equal(yb, want_b)
