"""Kernels called from several Python threads at once (the GIL is released
in every kernel) give the same results as when called one at a time."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import dropnorm


def _work(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 8, 33, 31)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    y, mean, invstd = dropnorm.batch_norm_train(x, running_mean=rm, running_var=rv)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd)
    yi = dropnorm.batch_norm_infer(x, rm, rv)
    yd, mask = dropnorm.dropout(x, 0.3, seed=seed, stream=seed + 1, return_mask=True)
    dxd = dropnorm.dropout_backward(dy, 0.3, seed=seed, stream=seed + 1)
    return [y, mean, invstd, rm, rv, dx, dw, db, yi, yd, mask, dxd]


def test_concurrent_calls_match_serial_calls():
    seeds = list(range(12))
    serial = [_work(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(_work, seeds))
    for a, b in zip(serial, concurrent):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
