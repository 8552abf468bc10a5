"""Batch-norm functions against the NumPy oracle, finite differences and the
accuracy and determinism laws of the issue."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dropnorm

import oracle

DTYPES = [np.float32, np.float64]
# relative tolerance of a result of order 1, per dtype
TOL = {np.float32: 2e-5, np.float64: 1e-11}

# (N, C, *spatial): no spatial dims, 1-D, 2-D, 3-D, and awkward sizes
SHAPES = [
    (8, 3),
    (5, 1),
    (2, 7),
    (4, 5, 13),
    (3, 1, 17),
    (7, 4, 1),
    (2, 3, 5, 7),
    (1, 6, 11, 3),
    (3, 2, 3, 5, 2),
    (2, 130, 3, 3),
    (3, 2, 71, 67),
]

# Channels-first schedules change at rows of 128 (gradient sums) and 256
# (statistics) values: below, a reduction task is a block of channels over
# groups of whole images; so too with fewer than 16 images whose rows, shorter
# than 4096 values, would be split. Channels last with at least 256 channels, a task is
# a block of 512 channels of a group of rows. Shapes on both sides, with a
# last channel block shorter than the others, several groups, one channel.
# Channels last in the caches, rows of 1024 channels or more take two rows at
# a time in the sums, of 2048 or more in the backward's elementwise pass and
# of 4096 or more in training's (an odd count of rows, and elementwise
# blocks that start inside a row).
SCHEDULE_SHAPES = [
    (40, 255),
    (600, 256),
    (300, 1030),
    (3, 1100, 5, 7),
    (9, 40, 127),
    (9, 40, 128),
    (5, 33, 255),
    (5, 33, 256),
    (17, 300, 7, 7),
    (2, 1000, 5, 5),
    (300, 5, 127),
    (70, 1, 9, 9),
    (3, 40, 1000),
    (2, 13, 4095),
    (2, 13, 4096),
    (27, 2050),
    (5, 2049, 1, 3),
    (9, 4097),
    # channels-first short rows, statistics two channels at a time (four in
    # the AVX-512 variant, and the gradient sums too): blocks of 41 channels
    # (ten quads and one left) and a last block of one; rows shorter than a
    # 64-byte vector, 9 channels (two quads and one)
    (16, 83, 7, 7),
    (40, 9, 3, 5),
]


def make(shape, dtype, axis, seed=0, loc=0.5, scale=2.0):
    """A random tensor of ``shape`` = (N, C, *sp) laid out for ``axis``."""
    rng = np.random.default_rng(seed)
    x = (loc + scale * rng.standard_normal(shape)).astype(dtype)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if axis == -1 else x


def channel_params(c, dtype, seed=1):
    rng = np.random.default_rng(seed)
    w = (1.0 + 0.5 * rng.standard_normal(c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    return w, b


def assert_close(actual, expected, dtype, scale=1.0):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                               rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("shape", SHAPES + SCHEDULE_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_train_forward_and_backward_match_oracle(shape, axis, dtype, affine):
    x = make(shape, dtype, axis)
    c = shape[1]
    m = x.size // c
    w, b = channel_params(c, dtype) if affine else (None, None)
    rm = np.linspace(-1, 1, c).astype(dtype)
    rv = np.linspace(0.5, 2, c).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()

    y, save_mean, save_invstd = dropnorm.batch_norm_train(
        x, w, b, running_mean=rm, running_var=rv, momentum=0.1, eps=1e-5, axis=axis)
    y_ref, mean_ref, invstd_ref = oracle.bn_train(x, w, b, eps=1e-5, axis=axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert save_mean.dtype == x.dtype and save_invstd.dtype == x.dtype
    assert_close(y, y_ref, dtype, scale=4)
    assert_close(save_mean, mean_ref, dtype, scale=4)
    assert_close(save_invstd, invstd_ref, dtype)
    rm_ref, rv_ref = oracle.bn_running_update(rm0, rv0, x, 0.1, axis=axis)
    assert_close(rm, rm_ref, dtype)
    assert_close(rv, rv_ref, dtype)

    dy = make(shape, dtype, axis, seed=5, loc=0.0, scale=1.0)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, save_mean, save_invstd, w, axis=axis)
    dx_ref, dw_ref, db_ref = oracle.bn_backward(dy, x, w, eps=1e-5, axis=axis)
    assert_close(dx, dx_ref, dtype, scale=4)
    assert_close(dw, dw_ref, dtype, scale=np.sqrt(m) * 4)
    assert_close(db, db_ref, dtype, scale=np.sqrt(m) * 4)

    y_inf = dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=1e-5, axis=axis)
    assert_close(y_inf, oracle.bn_infer(x, rm, rv, w, b, eps=1e-5, axis=axis), dtype, scale=8)
    dx_i, dw_i, db_i = dropnorm.batch_norm_infer_backward(dy, x, rm, rv, w, eps=1e-5, axis=axis)
    dx_iref, dw_iref, db_iref = oracle.bn_infer_backward(dy, x, rm, rv, w, eps=1e-5, axis=axis)
    assert_close(dx_i, dx_iref, dtype, scale=4)
    assert_close(dw_i, dw_iref, dtype, scale=np.sqrt(m) * 8)
    assert_close(db_i, db_iref, dtype, scale=np.sqrt(m) * 4)


@pytest.mark.parametrize("axis", [1, -1])
def test_gradients_match_finite_differences(axis):
    shape = (3, 2, 4)
    x = make(shape, np.float64, axis)
    w, b = channel_params(2, np.float64)
    r = make(shape, np.float64, axis, seed=9, loc=0.0, scale=1.0)

    def loss(x_, w_, b_):
        return float(np.sum(dropnorm.batch_norm_train(x_, w_, b_, axis=axis)[0] * r))

    _, mean, invstd = dropnorm.batch_norm_train(x, w, b, axis=axis)
    dx, dw, db = dropnorm.batch_norm_backward(r, x, mean, invstd, w, axis=axis)
    h = 1e-6
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = loss(x, w, b)
            arr[i] = saved - h
            down = loss(x, w, b)
            arr[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("axis", [1, -1])
def test_infer_gradients_match_finite_differences(axis):
    shape = (2, 3, 5)
    x = make(shape, np.float64, axis)
    w, b = channel_params(3, np.float64)
    rm = np.array([0.1, -0.3, 2.0])
    rv = np.array([0.5, 1.5, 3.0])
    r = make(shape, np.float64, axis, seed=9, loc=0.0, scale=1.0)

    def loss(x_, w_):
        return float(np.sum(dropnorm.batch_norm_infer(x_, rm, rv, w_, b, axis=axis) * r))

    dx, dw, _ = dropnorm.batch_norm_infer_backward(r, x, rm, rv, w, axis=axis)
    h = 1e-6
    for arr, grad in ((x, dx), (w, dw)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = loss(x, w)
            arr[i] = saved - h
            down = loss(x, w)
            arr[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("loc, scale", [(3e4, 1e-3), (1e4, 1e-2), (1e5, 1.0)])
def test_float32_accuracy_when_mean_dominates(loc, scale, axis):
    # |mean| >> std: y must stay within 1e-5 of a float64 computation on the
    # same float32 input
    x = make((16, 4, 32, 32), np.float32, axis, seed=3, loc=loc, scale=scale)
    y, _, _ = dropnorm.batch_norm_train(x, eps=0.0, axis=axis)
    y_ref, _, _ = oracle.bn_train(x, eps=0.0, axis=axis)
    err = np.max(np.abs(y.astype(np.float64) - y_ref))
    assert err <= 1e-5, err


@pytest.mark.parametrize("spatial", [(32, 32), (7, 7)])
@pytest.mark.parametrize("offset", [1e2, 1e4])
@pytest.mark.parametrize("axis", [1, -1])
def test_float32_accuracy_when_images_differ(offset, axis, spatial):
    # each image has its own per-channel offset, far above the spread within
    # it; channels last, the chunks of rows after a group's first centre on
    # the previous chunk's mean (here often another image's), which must not
    # cost accuracy. (64, 64, 32, 32) gives groups of two chunks. Channels
    # first over short rows (7x7) each chunk takes its own mean as the centre:
    # centred instead on a first chunk of two images, the mean here was 6x
    # further off (1.6e-3) and invstd 9x (4.4e-7).
    rng = np.random.default_rng(6)
    x64 = offset * rng.standard_normal((64, 64, 1, 1)) + 1e-2 * rng.standard_normal(
        (64, 64) + spatial)
    x = np.ascontiguousarray(np.moveaxis(x64, 1, -1) if axis == -1 else x64, np.float32)
    y, mean, invstd = dropnorm.batch_norm_train(x, eps=0.0, axis=axis)
    y_ref, mean_ref, invstd_ref = oracle.bn_train(x, eps=0.0, axis=axis)
    assert np.max(np.abs(y.astype(np.float64) - y_ref)) <= 1e-5
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-6)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6, atol=offset * 1e-7)


@pytest.mark.parametrize("axis", [1, -1])
def test_float32_backward_accuracy_when_mean_dominates(axis):
    # save_mean is rounded to float32 (an error of ~1e-3 here); the backward
    # recovers the exact mean from x
    x = make((16, 4, 32, 32), np.float32, axis, seed=3, loc=3e4, scale=1e-3)
    dy = make((16, 4, 32, 32), np.float32, axis, seed=4, loc=0.0, scale=1.0)
    _, mean, invstd = dropnorm.batch_norm_train(x, eps=0.0, axis=axis)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd, axis=axis)
    dx_ref, dw_ref, db_ref = oracle.bn_backward(dy, x, eps=0.0, axis=axis)
    # dx is of order invstd = 1e3; relative error at float32 level
    assert np.max(np.abs(dx - dx_ref)) <= 1e-5 * np.max(np.abs(dx_ref))
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [1, -1])
def test_constant_channel_normalises_to_exact_zero(dtype, axis):
    x = make((6, 3, 5, 7), dtype, axis)
    ch = (slice(None), 1) if axis == 1 else (Ellipsis, 1)
    x[ch] = 1e7
    y, mean, _ = dropnorm.batch_norm_train(x, axis=axis)
    assert np.all(y[ch] == 0.0)
    assert mean[1] == 1e7


@pytest.mark.parametrize("axis", [1, -1])
def test_nan_stays_in_its_channel(axis):
    x = make((4, 3, 6), np.float32, axis)
    if axis == 1:
        x[2, 1, 3] = np.nan
    else:
        x[2, 3, 1] = np.nan
    y, mean, invstd = dropnorm.batch_norm_train(x, axis=axis)
    y = np.moveaxis(y, -1, 1) if axis == -1 else y
    assert np.all(np.isnan(y[:, 1]))
    assert np.all(np.isfinite(y[:, [0, 2]]))
    assert np.isfinite(mean[[0, 2]]).all() and np.isnan(mean[1])


def test_eps_zero_is_accepted():
    x = make((4, 3, 5), np.float64, 1)
    y, _, _ = dropnorm.batch_norm_train(x, eps=0.0)
    y_ref, _, _ = oracle.bn_train(x, eps=0.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_and_out(dtype):
    x = make((4, 3, 9), dtype, 1)
    expected, _, _ = dropnorm.batch_norm_train(x)
    out = np.empty_like(x)
    y, _, _ = dropnorm.batch_norm_train(x, out=out)
    assert y is out
    np.testing.assert_array_equal(out, expected)
    y, _, _ = dropnorm.batch_norm_train(x, out=x)
    assert y is x
    np.testing.assert_array_equal(x, expected)


def test_non_contiguous_input_is_copied():
    base = make((4, 6, 10), np.float64, 1)
    x = base[:, ::2, ::3]
    assert not x.flags.c_contiguous
    y, mean, invstd = dropnorm.batch_norm_train(x)
    y2, _, _ = dropnorm.batch_norm_train(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y2)
    dx, _, _ = dropnorm.batch_norm_backward(x, x, mean, invstd)
    dx2, _, _ = dropnorm.batch_norm_backward(np.ascontiguousarray(x), np.ascontiguousarray(x),
                                             mean, invstd)
    np.testing.assert_array_equal(dx, dx2)


def test_read_only_inputs_are_accepted():
    x = make((4, 3, 5), np.float32, 1)
    x.flags.writeable = False
    y, mean, invstd = dropnorm.batch_norm_train(x)
    mean.flags.writeable = False
    dropnorm.batch_norm_backward(x, x, mean, invstd)


def _snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def _assert_unchanged(before, arrays):
    for b, a in zip(before, arrays):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_bad_input_raises_and_changes_nothing():
    x = make((4, 3, 5), np.float32, 1)
    rm = np.zeros(3, np.float32)
    rv = np.ones(3, np.float32)
    out = np.full_like(x, 7.0)
    arrays = (x, rm, rv, out)
    before = _snapshot(*arrays)

    def fails(exc, match, **kw):
        args = {"x": x, "running_mean": rm, "running_var": rv, "out": out}
        args.update(kw)
        with pytest.raises(exc, match=match):
            dropnorm.batch_norm_train(**args)
        _assert_unchanged(before, arrays)

    fails(TypeError, "x: expected a float32 or float64", x=x.astype(np.int32))
    fails(ValueError, "x: expected at least 2 dimensions", x=x[0, 0])
    fails(ValueError, "x: every extent", x=x[:0])
    fails(TypeError, "weight: dtype float64", weight=np.ones(3))
    fails(ValueError, r"weight: expected shape \(3,\)", weight=np.ones(4, np.float32))
    fails(ValueError, r"bias: expected shape \(3,\)", bias=np.ones((3, 1), np.float32))
    fails(TypeError, "running_mean: dtype float64", running_mean=np.zeros(3))
    fails(ValueError, "running_var: the array is read-only",
          running_var=np.broadcast_to(np.float32(1), (3,)))
    fails(TypeError, "running_mean: expected a numpy array", running_mean=[0.0, 0.0, 0.0])
    fails(ValueError, "axis: expected 1", axis=3)
    fails(ValueError, "axis: expected 1", axis=0)
    fails(TypeError, "axis: expected an integer", axis=1.0)
    fails(ValueError, "eps: expected a finite value", eps=-1e-5)
    fails(ValueError, "eps: expected a finite value", eps=float("nan"))
    fails(ValueError, r"momentum: expected a value in \[0, 1\]", momentum=1.5)
    fails(ValueError, r"momentum: expected a value in \[0, 1\]", momentum=float("nan"))
    fails(ValueError, "more than 1 value per channel", x=x[:1, :, :1])
    fails(ValueError, "out: shape", out=np.empty((4, 3, 6), np.float32))
    fails(TypeError, "out: dtype float64", out=np.empty((4, 3, 5)))
    fails(ValueError, "out: the array must be C-contiguous",
          out=np.empty((4, 3, 10), np.float32)[:, :, ::2])
    ro = np.empty_like(x)
    ro.flags.writeable = False
    fails(ValueError, "out: the array is read-only", out=ro)

    mean, invstd = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="dy: shape"):
        dropnorm.batch_norm_backward(x[:2], x, mean, invstd)
    with pytest.raises(TypeError, match="dy: dtype float64"):
        dropnorm.batch_norm_backward(x.astype(np.float64), x, mean, invstd)
    with pytest.raises(TypeError, match="save_mean: expected an array"):
        dropnorm.batch_norm_backward(x, x, None, invstd)
    with pytest.raises(ValueError, match=r"save_invstd: expected shape \(3,\)"):
        dropnorm.batch_norm_backward(x, x, mean, invstd[:2])
    with pytest.raises(ValueError, match="out: partly overlaps"):
        big = np.zeros(x.size + 1, np.float32)
        dropnorm.batch_norm_backward(big[:-1].reshape(x.shape), x, mean, invstd,
                                     out=big[1:].reshape(x.shape))
    with pytest.raises(TypeError, match="running_var: expected an array"):
        dropnorm.batch_norm_infer(x, rm, None)
    with pytest.raises(TypeError, match="running_mean: dtype float64"):
        dropnorm.batch_norm_infer(x, np.zeros(3), rv)
    _assert_unchanged(before, arrays)


def test_channels_last_two_dims_equals_channels_first():
    x = make((9, 4), np.float32, 1)
    a = dropnorm.batch_norm_train(x, axis=1)
    b = dropnorm.batch_norm_train(x, axis=-1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


_DETERMINISM_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, dropnorm
    h = hashlib.sha256()
    rng = np.random.default_rng(7)
    for shape, axis in [((16, 5, 96, 97), 1), ((16, 96, 97, 5), -1), ((6000, 70), 1),
                        ((3, 1, 300001), 1), ((40, 3, 160, 180), 1), ((17, 300, 7, 7), 1),
                        ((300, 5, 127), 1), ((16, 64, 200), 1), ((600, 1100), 1),
                        ((5, 9, 11, 1030), -1), ((3, 40, 1000), 1),
                        ((2, 130, 128, 64), -1), ((4, 33, 17, 64), -1), ((3, 9, 7, 512), -1),
                        ((2, 6, 5, 96), -1), ((50, 9, 15), 1), ((16, 46, 7, 7), 1)]:
        for dtype in (np.float32, np.float64):
            x = (1.5 + rng.standard_normal(shape)).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            c = shape[axis]
            rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
            y, m, s = dropnorm.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis)
            dx, dw, db = dropnorm.batch_norm_backward(dy, x, m, s, axis=axis)
            yi = dropnorm.batch_norm_infer(x, rm, rv, axis=axis)
            dxi, dwi, dbi = dropnorm.batch_norm_infer_backward(dy, x, rm, rv, axis=axis)
            for a in (y, m, s, rm, rv, dx, dw, db, yi, dxi, dwi, dbi):
                h.update(a.tobytes())
    print(dropnorm.get_max_threads(), h.hexdigest())
""")


def test_results_are_bitwise_identical_for_any_thread_count():
    digests = {}
    for threads in (1, 2, 3, 5):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], env=env,
                             capture_output=True, text=True, check=True)
        used, digest = out.stdout.split()
        if dropnorm.build_info()["openmp"]:
            assert int(used) == threads
        digests[threads] = digest
    assert len(set(digests.values())) == 1, digests


def test_build_info():
    info = dropnorm.build_info()
    assert info["version"] == dropnorm.__version__
    assert isinstance(info["openmp"], bool)
    assert info["max_threads"] >= 1


@pytest.mark.parametrize("spatial", [(128, 128), (129, 128)])
def test_channels_last_sums_either_side_of_the_two_row_limit(spatial):
    # channels last, rows of 256 positions: the sums take two rows at a time
    # up to 8 MiB (float32) and one row at a time above
    shape = (2, 64) + spatial
    x = make(shape, np.float32, -1, seed=13)
    dy = make(shape, np.float32, -1, seed=14, loc=0.0, scale=1.0)
    w, b = channel_params(64, np.float32)
    assert (x.nbytes <= 8 << 20) == (spatial == (128, 128))
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b, axis=-1)
    y_ref, mean_ref, invstd_ref = oracle.bn_train(x, w, b, axis=-1)
    assert_close(y, y_ref, np.float32, scale=4)
    assert_close(mean, mean_ref, np.float32, scale=4)
    assert_close(invstd, invstd_ref, np.float32)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=-1)
    dx_ref, dw_ref, db_ref = oracle.bn_backward(dy, x, w, axis=-1)
    m = x.size // 64
    assert_close(dx, dx_ref, np.float32, scale=4)
    assert_close(dw, dw_ref, np.float32, scale=np.sqrt(m) * 4)
    assert_close(db, db_ref, np.float32, scale=np.sqrt(m) * 4)


def _placed(a, offset):
    """A copy of ``a`` whose data starts ``offset`` elements past a 64-byte line."""
    buf = np.empty(a.size + 64, a.dtype)
    start = (-buf.ctypes.data % 64) // a.itemsize + offset
    view = buf[start:start + a.size].reshape(a.shape)
    view[...] = a
    return view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 7, 7, 2048), (2, 5, 9, 64), (3, 11, 13, 5), (1, 3, 37, 96)])
def test_channels_last_inference_at_every_place_in_a_cache_line(shape, dtype):
    """Inference is x*scale + shift per value, scale and shift rounded from
    double, bit for bit wherever x and y start in their cache lines (the
    AVX-512 pass aligns its loads to x's lines and masks the first and last
    ones), in place too."""
    c = shape[-1]
    rng = np.random.default_rng(3)
    x0 = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    w, b = channel_params(c, dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = (0.5 + rng.random(c)).astype(dtype)
    a = w.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-5)
    scale, shift = a.astype(dtype), (b - rm.astype(np.float64) * a).astype(dtype)
    expected = x0 * scale + shift
    per_line = 64 // x0.itemsize
    for xo in range(per_line):
        x = _placed(x0, xo)
        for yo in sorted({0, xo, (xo + 3) % per_line}):
            y = _placed(np.zeros_like(x0), yo)
            dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=1e-5, axis=-1, out=y)
            np.testing.assert_array_equal(y, expected)
        dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=1e-5, axis=-1, out=x)
        np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 7, 7, 512), (2, 5, 9, 64), (3, 11, 13, 5)])
def test_channels_last_training_and_backward_at_every_place_in_a_cache_line(shape, dtype):
    """Training and the backward give the same bits wherever x, dy and the
    outputs start in their cache lines (the AVX-512 passes align their loads
    to the input's lines, the backward's x aligned or not), and match the
    oracle."""
    rng = np.random.default_rng(5)
    x0 = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    w, b = channel_params(shape[-1], dtype)
    y_ref, mean, invstd = dropnorm.batch_norm_train(x0, w, b, axis=-1)
    dx_ref, dw_ref, db_ref = dropnorm.batch_norm_backward(dy0, x0, mean, invstd, w, axis=-1)
    assert_close(y_ref, oracle.bn_train(x0, w, b, axis=-1)[0], dtype, scale=4)
    assert_close(dx_ref, oracle.bn_backward(dy0, x0, w, axis=-1)[0], dtype, scale=4)
    per_line = 64 // x0.itemsize
    for xo in range(per_line):
        x = _placed(x0, xo)
        y = _placed(np.zeros_like(x0), (xo + 5) % per_line)
        got = dropnorm.batch_norm_train(x, w, b, axis=-1, out=y)
        np.testing.assert_array_equal(got[0], y_ref)
        for dyo in sorted({xo, (xo + 1) % per_line}):
            dy = _placed(dy0, dyo)
            dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=-1)
            np.testing.assert_array_equal(dx, dx_ref)
            np.testing.assert_array_equal(dw, dw_ref)
            np.testing.assert_array_equal(db, db_ref)


@pytest.mark.parametrize("axis", [1, -1])
def test_outputs_larger_than_the_caches(axis):
    # above 16 MiB the elementwise passes write with streaming stores
    shape = (18, 4, 256, 256)
    x = make(shape, np.float32, axis, seed=11)
    dy = make(shape, np.float32, axis, seed=12, loc=0.0, scale=1.0)
    w, b = channel_params(4, np.float32)
    assert x.nbytes > 16 << 20
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b, axis=axis)
    y_ref, _, _ = oracle.bn_train(x, w, b, axis=axis)
    assert_close(y, y_ref, np.float32, scale=4)
    dx, _, _ = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    assert_close(dx, oracle.bn_backward(dy, x, w, axis=axis)[0], np.float32, scale=4)
    yi = dropnorm.batch_norm_infer(x, mean, invstd, w, b, axis=axis)
    assert_close(yi, oracle.bn_infer(x, mean, invstd, w, b, axis=axis), np.float32, scale=8)
    y2, _, _ = dropnorm.batch_norm_train(x, w, b, axis=axis, out=x)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 33, 7, 7), (3, 5, 4, 4), (2, 7, 17, 1), (1, 9, 14, 14),
                                   (2, 3, 3, 5), (1, 4, 31, 33), (1, 3, 32, 32), (2, 6, 3, 3)])
def test_channels_first_passes_at_every_place_in_a_cache_line(shape, dtype):
    """Channels first, the AVX-512 passes run across the channels' rows in
    vectors from the input's line boundaries, a vector that holds the end
    of one row taking the next channel's terms in its later lanes (rows of
    at least a vector and fewer than 1024 positions; 15 and 1024 are the
    edges). Inference is x*scale + shift bit for bit wherever x and y
    start in their lines; training and the backward give the same bits
    wherever x, dy and the outputs start, in place too, and match the
    oracle."""
    c = shape[1]
    rng = np.random.default_rng(7)
    x0 = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    w, b = channel_params(c, dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = (0.5 + rng.random(c)).astype(dtype)
    a = w.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-5)
    scale, shift = a.astype(dtype), (b - rm.astype(np.float64) * a).astype(dtype)
    along = (1, c) + (1,) * (len(shape) - 2)
    expected = x0 * scale.reshape(along) + shift.reshape(along)
    y_ref, mean, invstd = dropnorm.batch_norm_train(x0, w, b, axis=1)
    dx_ref, dw_ref, db_ref = dropnorm.batch_norm_backward(dy0, x0, mean, invstd, w, axis=1)
    assert_close(y_ref, oracle.bn_train(x0, w, b, axis=1)[0], dtype, scale=4)
    assert_close(dx_ref, oracle.bn_backward(dy0, x0, w, axis=1)[0], dtype, scale=4)
    per_line = 64 // x0.itemsize
    for xo in range(per_line):
        x = _placed(x0, xo)
        for yo in sorted({0, xo, (xo + 3) % per_line}):
            y = _placed(np.zeros_like(x0), yo)
            dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=1e-5, axis=1, out=y)
            np.testing.assert_array_equal(y, expected)
            dropnorm.batch_norm_train(x, w, b, axis=1, out=y)
            np.testing.assert_array_equal(y, y_ref)
        for dyo in sorted({xo, (xo + 1) % per_line}):
            dy = _placed(dy0, dyo)
            dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=1)
            np.testing.assert_array_equal(dx, dx_ref)
            np.testing.assert_array_equal(dw, dw_ref)
            np.testing.assert_array_equal(db, db_ref)
            dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=1, out=dy)
            np.testing.assert_array_equal(dy, dx_ref)
        dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=1e-5, axis=1, out=x)
        np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis, short_rows", [(1, False), (1, True), (-1, False)])
def test_outputs_larger_than_the_caches_at_every_place_in_a_cache_line(axis, short_rows, dtype):
    """Beyond 16 MiB the AVX-512 passes write whole lines with streaming
    stores straight from registers where the output sits at the input's
    place in its cache lines, else through an L1 tile: the same bits either
    way (and in place), inference exactly x*scale + shift."""
    shape = (40, 2200, 7, 7) if short_rows else (5, 64, 128, 128)
    x0 = make(shape, dtype, axis, seed=21)
    dy0 = make(shape, dtype, axis, seed=22, loc=0.0, scale=1.0)
    assert x0.nbytes > 16 << 20
    c = shape[1]
    w, b = channel_params(c, dtype)
    rng = np.random.default_rng(23)
    rm = rng.standard_normal(c).astype(dtype)
    rv = (0.5 + rng.random(c)).astype(dtype)
    a = w.astype(np.float64) / np.sqrt(rv.astype(np.float64) + 1e-5)
    scale, shift = a.astype(dtype), (b - rm.astype(np.float64) * a).astype(dtype)
    along = (1, c, 1, 1) if axis == 1 else (c,)
    expected = x0 * scale.reshape(along) + shift.reshape(along)
    per_line = 64 // x0.itemsize
    y_ref = dx_ref = None
    for xo in (0, 3, per_line - 1):
        x, dy = _placed(x0, xo), _placed(dy0, xo)
        # an output elsewhere in its lines first (the tile), then at x's place
        for yo in ((xo + 5) % per_line, xo):
            y = _placed(np.zeros_like(x0), yo)
            dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=1e-5, axis=axis, out=y)
            np.testing.assert_array_equal(y, expected)
            _, mean, invstd = dropnorm.batch_norm_train(x, w, b, axis=axis, out=y)
            if y_ref is None:
                y_ref, mean_ref, invstd_ref = y.copy(), mean, invstd
                assert_close(y_ref, oracle.bn_train(x0, w, b, axis=axis)[0], dtype, scale=4)
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(mean, mean_ref)
            np.testing.assert_array_equal(invstd, invstd_ref)
            dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis, out=y)
            if dx_ref is None:
                dx_ref = y.copy()
                assert_close(dx_ref, oracle.bn_backward(dy0, x0, w, axis=axis)[0], dtype,
                             scale=4)
            np.testing.assert_array_equal(y, dx_ref)
        dropnorm.batch_norm_backward(dy, x, mean_ref, invstd_ref, w, axis=axis, out=dy)
        np.testing.assert_array_equal(dy, dx_ref)
        dropnorm.batch_norm_train(x, w, b, axis=axis, out=x)
        np.testing.assert_array_equal(x, y_ref)


def test_every_kernel_variant_gives_the_same_bits():
    # DROPNORM_SIMD=portable forces the portable C kernels; the default runs
    # the AVX2 build of the same loops where the CPU has it
    digests = {}
    for cap in ("portable", "avx2", None):
        env = dict(os.environ, OMP_NUM_THREADS="2")
        env.pop("DROPNORM_SIMD", None)
        if cap is not None:
            env["DROPNORM_SIMD"] = cap
        out = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], env=env,
                             capture_output=True, text=True, check=True)
        digests[cap] = out.stdout.split()[1]
    assert len(set(digests.values())) == 1, digests
