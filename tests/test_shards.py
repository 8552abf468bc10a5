"""Batch normalization over shards of a batch (the pieces SyncBatchNorm runs
between its collectives), without MPI: with one shard they are bitwise
batch_norm_train and batch_norm_backward, for every schedule; with several
uneven shards (empty ones and single images included) they match the NumPy
oracle on the whole batch; bad arguments raise and name themselves."""

import numpy as np
import pytest
from test_batchnorm import DTYPES, SCHEDULE_SHAPES, SHAPES, assert_close, channel_params, make

import dropnorm

import oracle


def _pieces_train(x, w, b, rm, rv, axis, cuts):
    """The training forward over the shards x[cuts[k]:cuts[k+1]], each
    updating its own copy of the running statistics (the last one's kept)."""
    parts = np.stack([dropnorm.batch_norm_partial_stats(x[lo:hi], axis)
                      for lo, hi in zip(cuts, cuts[1:])])
    mean, var, var_unbiased = dropnorm.batch_norm_merge_stats(parts)
    ys, saved = [], None
    for lo, hi in zip(cuts, cuts[1:]):
        rm_k, rv_k = rm.copy(), rv.copy()
        y, save_mean, save_invstd = dropnorm.batch_norm_forward_apply(
            x[lo:hi], mean, var, w, b, rm_k, rv_k, var_unbiased, momentum=0.25, axis=axis)
        ys.append(y)
        saved = (save_mean, save_invstd, rm_k, rv_k)
    return np.concatenate(ys), saved, int(parts[:, 0, 0].sum())


def _pieces_backward(dy, x, save_mean, save_invstd, w, axis, cuts, count):
    sums = [dropnorm.batch_norm_backward_reduce(dy[lo:hi], x[lo:hi], save_mean, axis)
            for lo, hi in zip(cuts, cuts[1:])]
    total = sums[0].copy()
    for part in sums[1:]:
        total += part
    out = [dropnorm.batch_norm_backward_apply(dy[lo:hi], x[lo:hi], save_mean, save_invstd,
                                               total, count, w, local_sums=part, axis=axis)
           for (lo, hi), part in zip(zip(cuts, cuts[1:]), sums)]
    dx = np.concatenate([o[0] for o in out])
    dw = sum(o[1].astype(np.float64) for o in out)
    db = sum(o[2].astype(np.float64) for o in out)
    return dx, dw, db, out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", SHAPES + SCHEDULE_SHAPES)
def test_one_shard_is_the_single_process_functions_bitwise(shape, axis, dtype):
    if shape[0] * int(np.prod(shape[2:])) < 2:
        pytest.skip("a training batch needs 2 values per channel")
    x = make(shape, dtype, axis, loc=40.0)
    dy = make(shape, dtype, axis, seed=5)
    c = shape[1]
    w, b = channel_params(c, dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    y, save_mean, save_invstd = dropnorm.batch_norm_train(x, w, b, rm, rv, momentum=0.25,
                                                         axis=axis)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, save_mean, save_invstd, w, axis=axis)
    y1, (sm1, si1, rm1, rv1), count = _pieces_train(x, w, b, np.zeros(c, dtype),
                                                    np.ones(c, dtype), axis, [0, shape[0]])
    assert count == x.size // c
    for got, want in ((y1, y), (sm1, save_mean), (si1, save_invstd), (rm1, rm), (rv1, rv)):
        assert np.array_equal(got, want)
    _, _, _, out = _pieces_backward(dy, x, sm1, si1, w, axis, [0, shape[0]], count)
    for got, want in zip(out[0], (dx, dw, db)):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", [(9, 3, 5, 4), (7, 40), (12, 300, 7, 7), (6, 5, 300)])
def test_uneven_shards_match_the_oracle(shape, axis, dtype):
    n = shape[0]
    # a single image, an empty shard, and the rest
    cuts = [0, 1, 1, n // 2, n]
    x = make(shape, dtype, axis, loc=40.0, scale=1.0)
    dy = make(shape, dtype, axis, seed=9)
    c = shape[1]
    w, b = channel_params(c, dtype)
    y, (save_mean, save_invstd, rm, rv), count = _pieces_train(
        x, w, b, np.zeros(c, dtype), np.ones(c, dtype), axis, cuts)
    y_ref, mean_ref, invstd_ref = oracle.bn_train(x, w, b, axis=axis)
    assert_close(y, y_ref, dtype, scale=3.0)
    assert_close(save_invstd, invstd_ref, dtype, scale=float(np.max(invstd_ref)))
    rm_ref, rv_ref = oracle.bn_running_update(np.zeros(c), np.ones(c), x, 0.25, axis=axis)
    assert_close(rm, rm_ref, dtype, scale=40.0)
    assert_close(rv, rv_ref, dtype)
    dx, dw, db, _ = _pieces_backward(dy, x, save_mean, save_invstd, w, axis, cuts, count)
    dx_ref, dw_ref, db_ref = oracle.bn_backward(dy, x, w, axis=axis)
    assert_close(dx, dx_ref, dtype, scale=float(np.abs(dx_ref).max()))
    assert_close(dw, dw_ref, dtype, scale=float(np.abs(dw_ref).max()))
    assert_close(db, db_ref, dtype, scale=float(np.abs(db_ref).max()))


def test_empty_shard():
    x = np.zeros((0, 3, 4), np.float32)
    stats = dropnorm.batch_norm_partial_stats(x)
    assert stats.shape == (3, 3) and stats.dtype == np.float64 and not stats.any()
    mean, var = np.array([1.0, 2.0, 3.0]), np.array([4.0, 1.0, 0.25])
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, save_mean, save_invstd = dropnorm.batch_norm_forward_apply(
        x, mean, var, running_mean=rm, running_var=rv, var_unbiased=var * 2, momentum=0.5)
    # an empty shard updates the running statistics like the others
    assert y.shape == x.shape and rm.tolist() == [0.5, 1.0, 1.5] and rv.tolist() == [4.5, 1.5, 0.75]
    assert save_mean.tolist() == [1.0, 2.0, 3.0]
    sums = dropnorm.batch_norm_backward_reduce(x, x, save_mean)
    assert sums.shape == (3, 3) and not sums.any()
    # its part of dweight and dbias is 0 (from its own sums)
    dx, dw, db = dropnorm.batch_norm_backward_apply(x, x, save_mean, save_invstd,
                                                    np.ones((3, 3)), 10, local_sums=sums)
    assert dx.shape == x.shape and not dw.any() and not db.any()


def test_bad_arguments_name_themselves():
    x = np.ones((4, 3, 2), np.float32)
    with pytest.raises(ValueError, match="every extent but N"):
        dropnorm.batch_norm_partial_stats(np.ones((4, 0, 2), np.float32))
    with pytest.raises(TypeError, match="x: expected a float32 or float64"):
        dropnorm.batch_norm_partial_stats(np.ones((4, 3), np.int32))
    with pytest.raises(ValueError, match=r"stats: expected shape \(K, 3, C\)"):
        dropnorm.batch_norm_merge_stats(np.ones((3, 4)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        dropnorm.batch_norm_merge_stats(np.array([[[1.0], [2.0], [0.0]]]))
    with pytest.raises(ValueError, match="whole number"):
        dropnorm.batch_norm_merge_stats(np.array([[[2.5], [2.0], [0.0]]]))
    mean, var = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="var_unbiased: required with running_var"):
        dropnorm.batch_norm_forward_apply(x, mean, var, running_var=np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"mean: expected shape \(3,\)"):
        dropnorm.batch_norm_forward_apply(x, np.zeros(4), var)
    sm, si = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="count: expected the whole batch's values"):
        dropnorm.batch_norm_backward_apply(x, x, sm, si, np.ones((3, 3)), 7)
    with pytest.raises(ValueError, match=r"sums: expected shape \(3, 3\)"):
        dropnorm.batch_norm_backward_apply(x, x, sm, si, np.ones((2, 3)), 8)
    with pytest.raises(TypeError, match="count"):
        dropnorm.batch_norm_backward_apply(x, x, sm, si, np.ones((3, 3)), 8.5)
    with pytest.raises(ValueError, match="dy: shape"):
        dropnorm.batch_norm_backward_reduce(np.ones((3, 3, 2), np.float32), x, sm)
