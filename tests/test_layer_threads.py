"""Layers shared by several Python threads: every training forward of a
Dropout layer reserves its own stream, the running statistics of a batch
norm get every batch exactly once, and each thread's backward pairs with
that thread's last forward (the contracts in the layers' docstrings)."""

import copy
import os
import pickle
import threading
import time
import warnings

import numpy as np
import pytest

import dropnorm
import dropnorm._layers

import oracle


def run_threads(count, work):
    """Run work(i) in count threads started together; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors = []

    def target(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: B036 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def same(layer):
    return layer


def pickled(layer):
    return pickle.loads(pickle.dumps(layer))


# a clone's lock is its own, made again when it is unpickled or copied
@pytest.mark.parametrize("make", [same, pickled, copy.deepcopy, copy.copy])
def test_concurrent_dropout_forwards_use_distinct_streams(make):
    threads, calls = 4, 100
    x = np.ones((64, 256), np.float32)
    stream_of = {(dropnorm.dropout(x, 0.5, seed=2024, stream=s) != 0).tobytes(): s
                 for s in range(threads * calls)}
    assert len(stream_of) == threads * calls
    for _ in range(5):  # a race shows in most rounds, not in every one
        layer = make(dropnorm.Dropout(p=0.5, seed=2024))
        masks = [[] for _ in range(threads)]

        def work(i, layer=layer, masks=masks):
            for _ in range(calls):
                masks[i].append((layer(x) != 0).tobytes())

        run_threads(threads, work)
        assert layer.stream == threads * calls
        # every stream 0 .. 399 used exactly once, each thread's in increasing order
        used = [[stream_of[m] for m in ms] for ms in masks]
        assert sorted(s for streams in used for s in streams) == list(range(threads * calls))
        for streams in used:
            assert streams == sorted(streams)


@pytest.mark.parametrize("cls, shape", [(dropnorm.Dropout, (16, 40)),
                                        (dropnorm.Dropout2d, (8, 16, 3, 3))])
def test_each_threads_dropout_backward_uses_its_own_forward(cls, shape):
    layer = cls(p=0.5, seed=7)
    x = np.ones(shape, np.float32)
    mismatches = []

    def work(i):
        for _ in range(100):
            y = layer(x)
            dx = layer.backward(np.ones_like(x))
            if not np.array_equal(dx, y):
                mismatches.append(i)

    run_threads(4, work)
    assert mismatches == [] and layer.stream == 400


def test_backward_in_a_thread_without_a_forward_uses_the_last_forward():
    layer = dropnorm.Dropout(p=0.5, seed=3)
    x = np.ones((8, 40))
    y = layer(x)
    result = {}

    def work(i):
        result["dx"] = layer.backward(np.ones_like(x))

    run_threads(1, work)
    np.testing.assert_array_equal(result["dx"], y)


def batches_with_distinct_means(count, shape, dtype):
    rng = np.random.default_rng(5)
    return [(10.0 * k + (1.0 + k % 7) * rng.standard_normal(shape)).astype(dtype)
            for k in range(count)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_threads_sharing_a_cumulative_batchnorm(dtype):
    per_thread, m = 40, 256
    batches = batches_with_distinct_means(2 * per_thread, (m, 8), dtype)
    rng = np.random.default_rng(6)
    dys = [rng.standard_normal((m, 8)).astype(dtype) for _ in batches]
    # the gradient of each batch, through the functions
    dxs = [dropnorm.batch_norm_backward(dy, x, *dropnorm.batch_norm_train(x)[1:])[0]
           for x, dy in zip(batches, dys)]
    # momentum=None: the plain average of the batch statistics, in any order
    means = np.array([oracle.bn_stats(x)[0] for x in batches])
    variances = np.array([oracle.bn_stats(x)[1] for x in batches]) * m / (m - 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for _ in range(3):  # a race shows in most rounds, not in every one
        bn = dropnorm.BatchNorm1d(8, momentum=None, dtype=dtype)
        wrong_dx = []

        def work(i, bn=bn, wrong_dx=wrong_dx):
            for x, dy, want in zip(batches[i::2], dys[i::2], dxs[i::2]):
                bn(x)
                # the backward of this thread's own forward, not the other thread's
                if not np.array_equal(bn.backward(dy), want):
                    wrong_dx.append(i)

        run_threads(2, work)
        assert bn.num_batches_tracked == 2 * per_thread and wrong_dx == []
        np.testing.assert_allclose(bn.running_mean, means.mean(axis=0), rtol=tol)
        np.testing.assert_allclose(bn.running_var, variances.mean(axis=0), rtol=tol)


def test_threads_sharing_a_batchnorm_with_fixed_momentum_lose_no_update():
    # the same batch every time: any order of the updates gives the same result
    x = batches_with_distinct_means(2, (32, 5), np.float64)[1]
    serial = dropnorm.BatchNorm1d(5, momentum=0.05, dtype=np.float64)
    for _ in range(60):
        serial(x)
    shared = dropnorm.BatchNorm1d(5, momentum=0.05, dtype=np.float64)

    def work(i):
        for _ in range(20):
            shared(x)

    run_threads(3, work)
    assert shared.num_batches_tracked == 60
    np.testing.assert_allclose(shared.running_mean, serial.running_mean, rtol=1e-13)
    np.testing.assert_allclose(shared.running_var, serial.running_var, rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_update_committed_during_a_forward_is_not_lost(dtype, monkeypatch):
    # A second forward that starts and ends while the first one's kernel runs
    # (made certain here by running it from inside the kernel call): the first
    # forward's batch is applied after it, with the momentum of batch 2.
    first, second = batches_with_distinct_means(2, (16, 3, 5), dtype)
    bn = dropnorm.BatchNorm1d(3, momentum=None, dtype=dtype)
    kernel = dropnorm._layers.batch_norm_train
    nested = []

    def kernel_with_a_forward_inside(x, *args, **kwargs):
        if not nested:
            nested.append(True)
            bn(second)
        return kernel(x, *args, **kwargs)

    monkeypatch.setattr(dropnorm._layers, "batch_norm_train", kernel_with_a_forward_inside)
    y = bn(first)
    monkeypatch.undo()
    assert nested and bn.num_batches_tracked == 2
    np.testing.assert_array_equal(y, dropnorm.batch_norm_train(first)[0])
    # the serial order second, first through the C kernel's own update
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    dropnorm.batch_norm_train(second, running_mean=rm, running_var=rv, momentum=1.0)
    dropnorm.batch_norm_train(first, running_mean=rm, running_var=rv, momentum=0.5)
    if dtype == np.float64:
        # the batch mean is exact in float64, so the update is the kernel's to the bit
        np.testing.assert_array_equal(bn.running_mean, rm)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(bn.running_mean, rm, rtol=tol)
    np.testing.assert_allclose(bn.running_var, rv, rtol=tol)
    # and the backward pairs with this thread's last forward: the nested one
    dy = np.ones_like(second)
    np.testing.assert_allclose(bn.backward(dy), oracle.bn_backward(dy, second)[0], atol=1e-4)


def test_gradients_accumulated_from_threads_are_all_kept():
    bn = dropnorm.BatchNorm1d(4, dtype=np.float64)
    x = batches_with_distinct_means(2, (16, 4), np.float64)[1]
    dy = np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape)
    bn(x)
    bn.backward(dy)
    one = bn.grad_weight.copy(), bn.grad_bias.copy()
    bn.zero_grad()

    def work(i):
        for _ in range(50):
            bn(x)
            bn.backward(dy)

    run_threads(4, work)
    np.testing.assert_allclose(bn.grad_weight, 200 * one[0], rtol=1e-12)
    np.testing.assert_allclose(bn.grad_bias, 200 * one[1], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_can_use_a_layer_whose_lock_a_thread_held(monkeypatch):
    # a thread of the parent is inside the layer's lock (stopped there by a
    # patched helper) when the parent forks: the child, where that thread does
    # not exist, must get a lock that is free
    bn = dropnorm.BatchNorm1d(3)
    x = np.ones((4, 3), np.float32)
    inside, release = threading.Event(), threading.Event()
    copy_or_none = dropnorm._layers._copy_or_none

    def stopping_copy(a):
        if threading.current_thread() is worker:
            inside.set()
            release.wait()
        return copy_or_none(a)

    monkeypatch.setattr(dropnorm._layers, "_copy_or_none", stopping_copy)
    worker = threading.Thread(target=bn, args=(x,))
    worker.start()
    try:
        assert inside.wait(30)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:
            try:
                os._exit(0 if bn(x).shape == x.shape else 1)
            finally:
                os._exit(2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the layer's lock")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        worker.join()
    assert bn.num_batches_tracked == 1
