"""Argument checks: the functions and the layer classes go through the same
checks in dropnorm._checks, so they accept and reject the same values, raise
the same exception with a message that starts with the argument's name, and
change nothing when they raise."""

import math
import re
import sys

import numpy as np
import pytest

import dropnorm

SHAPE = (4, 3, 5)
SWAPPED = ">" if sys.byteorder == "little" else "<"  # the non-native byte order


def data(shape=SHAPE, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (0.5 + rng.standard_normal(shape)).astype(dtype)


def swapped(a):
    """a with the same values in the other byte order."""
    return a.astype(a.dtype.newbyteorder(SWAPPED))


def error_of(call):
    """The exception call() raises (TypeError or ValueError)."""
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return info.value


def assert_same_error(name, exc, *calls, same_text=True):
    """Every call raises exc, its message starts with ``name:``, and (with
    same_text) all the messages are the same."""
    errors = [error_of(call) for call in calls]
    for err in errors:
        assert type(err) is exc, (type(err), err)
        assert re.match(rf"{re.escape(name)}:", str(err)), str(err)
    if same_text:
        assert len({str(err) for err in errors}) == 1, [str(err) for err in errors]
    return errors


class Snapshot:
    """Copies of arrays, to show that a failed call wrote nothing."""

    def __init__(self, *arrays):
        self.arrays = arrays
        self.copies = [a.copy() for a in arrays]

    def unchanged(self):
        return all(np.array_equal(a, c, equal_nan=True) and a.tobytes() == c.tobytes()
                   for a, c in zip(self.arrays, self.copies))


def bn_fixture():
    x = data()
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = np.full_like(x, 7.0)
    return x, rm, rv, out


# ---- Item A: the layers check as the functions do ---------------------------------

BAD_P = [
    (True, TypeError), (np.bool_(False), TypeError), ("0.5", TypeError), (None, TypeError),
    ([0.5], TypeError), (0.5j, TypeError), (np.complex128(0.5), TypeError),
    (-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError), (math.inf, ValueError),
]


@pytest.mark.parametrize("value, exc", BAD_P)
def test_bad_p_layer_and_function_agree(value, exc):
    x = data()
    snap = Snapshot(x)
    d = dropnorm.Dropout(0.25, seed=1)
    assert_same_error(
        "p", exc,
        lambda: dropnorm.dropout(x, p=value),
        lambda: dropnorm.dropout_backward(x, value),
        lambda: dropnorm.dropout_mask(10, value),
        lambda: dropnorm.Dropout(p=value),
        lambda: dropnorm.Dropout2d(p=value),
        lambda: setattr(d, "p", value),
    )
    assert snap.unchanged()
    assert d.p == 0.25


BAD_SEED = [
    (True, TypeError), (np.bool_(True), TypeError), (1.5, TypeError), (np.float64(3), TypeError),
    ("7", TypeError), (b"7", TypeError), (-1, ValueError), (2**64, ValueError),
]


@pytest.mark.parametrize("value, exc", BAD_SEED)
def test_bad_seed_layer_and_function_agree(value, exc):
    x = data()
    d = dropnorm.Dropout(0.5, seed=3)
    assert_same_error(
        "seed", exc,
        lambda: dropnorm.dropout(x, 0.5, seed=value),
        lambda: dropnorm.dropout_mask(10, 0.5, seed=value),
        lambda: dropnorm.Dropout(0.5, seed=value),
        lambda: dropnorm.Dropout1d(0.5, seed=value),
        lambda: setattr(d, "seed", value),
    )
    assert d.seed == 3


def test_stream_none_is_the_functions_default_only():
    # the functions take stream=None (their default: with seed=None a fresh
    # pair, with a seed stream 0); a layer's stream is always an integer
    x = data()
    d = dropnorm.Dropout(0.5, seed=3)
    np.testing.assert_array_equal(dropnorm.dropout(x, 0.5, seed=3, stream=None),
                                  dropnorm.dropout(x, 0.5, seed=3, stream=0))
    with pytest.raises(TypeError, match="^stream: expected an integer, got NoneType"):
        d.stream = None
    assert d.stream == 0


@pytest.mark.parametrize("value, exc", BAD_SEED)
def test_bad_stream_layer_and_function_agree(value, exc):
    x = data()
    d = dropnorm.Dropout(0.5, seed=3)
    d(x)
    assert_same_error(
        "stream", exc,
        lambda: dropnorm.dropout(x, 0.5, stream=value),
        lambda: dropnorm.dropout_backward(x, 0.5, stream=value),
        lambda: setattr(d, "stream", value),
    )
    assert d.stream == 1


@pytest.mark.parametrize("value, exc", [
    (2.7, TypeError), (3.0, TypeError), (True, TypeError), (np.bool_(True), TypeError),
    ("3", TypeError), (None, TypeError), (0, ValueError), (-2, ValueError),
])
@pytest.mark.parametrize("cls", [dropnorm.BatchNorm1d, dropnorm.BatchNorm2d,
                                 dropnorm.BatchNorm3d])
def test_bad_num_features(cls, value, exc):
    err = error_of(lambda: cls(value))
    assert type(err) is exc and str(err).startswith("num_features:")


def test_numpy_integers_are_accepted_as_integers():
    bn = dropnorm.BatchNorm1d(np.int64(3), axis=np.int8(-1))
    assert bn.num_features == 3 and type(bn.num_features) is int and bn.axis == -1
    d = dropnorm.Dropout(np.float32(0.25), seed=np.uint64(2**63), axis=np.int16(1))
    d.stream = np.uint8(5)
    assert d.p == 0.25 and d.seed == 2**63 and d.stream == 5 and d.axis == 1
    x = data()
    np.testing.assert_array_equal(d(x), dropnorm.dropout(x, 0.25, seed=2**63, stream=5))


def test_layer_p_takes_what_the_function_takes():
    # 0-d arrays and numpy floats are real numbers for both
    x = data()
    for p in (np.float32(0.5), np.array(0.5), 1, 0):
        np.testing.assert_array_equal(dropnorm.Dropout(p, seed=4)(x),
                                      dropnorm.dropout(x, p, seed=4))


# ---- Item B: eps and momentum --------------------------------------------------

BAD_REAL = [
    ("abc", TypeError), (None, TypeError), ([1e-3], TypeError), ((1e-3,), TypeError),
    (1e-3 + 0j, TypeError), (np.complex64(1e-3), TypeError), ("1e-5", TypeError),
    (True, TypeError), (np.bool_(False), TypeError), (np.array([1e-3]), TypeError),
]


@pytest.mark.parametrize("value, exc", BAD_REAL + [
    (-1e-5, ValueError), (math.nan, ValueError), (math.inf, ValueError),
    (np.float32("nan"), ValueError), pytest.param(10**400, ValueError, id="10**400"),
])
def test_bad_eps_functions_and_layers_agree(value, exc):
    x, rm, rv, out = bn_fixture()
    dy = data(seed=1)
    snap = Snapshot(x, rm, rv, out, dy)
    bn = dropnorm.BatchNorm1d(3, eps=1e-3)
    bn_state = Snapshot(bn.running_mean, bn.running_var, bn.weight, bn.bias)
    errors = assert_same_error(
        "eps", exc,
        lambda: dropnorm.batch_norm_train(x, None, None, rm, rv, eps=value, out=out),
        lambda: dropnorm.batch_norm_infer(x, rm, rv, eps=value, out=out),
        lambda: dropnorm.batch_norm_infer_backward(dy, x, rm, rv, eps=value, out=out),
        lambda: dropnorm.BatchNorm1d(3, eps=value),
        lambda: dropnorm.BatchNorm2d(3, eps=value),
        lambda: setattr(bn, "eps", value),
    )
    if exc is TypeError:
        assert "expected a real number" in str(errors[0])
    assert snap.unchanged() and bn_state.unchanged()
    assert bn.eps == 1e-3


@pytest.mark.parametrize("value, exc", [(v, e) for v, e in BAD_REAL if v is not None] + [
    ("0.1", TypeError), (-0.1, ValueError), (1.5, ValueError), (math.nan, ValueError),
])
def test_bad_momentum_functions_and_layers_agree(value, exc):
    x, rm, rv, out = bn_fixture()
    snap = Snapshot(x, rm, rv, out)
    bn = dropnorm.BatchNorm1d(3, momentum=0.3)
    errors = assert_same_error(
        "momentum", exc,
        lambda: dropnorm.batch_norm_train(x, None, None, rm, rv, momentum=value, out=out),
        lambda: dropnorm.BatchNorm1d(3, momentum=value),
        lambda: dropnorm.BatchNorm3d(3, momentum=value),
        lambda: setattr(bn, "momentum", value),
        same_text=False,  # a layer also takes None, and says so
    )
    if exc is ValueError:
        assert len({str(e) for e in errors}) == 1
    assert snap.unchanged()
    assert bn.momentum == 0.3


def test_momentum_none_is_for_layers_only():
    x, rm, rv, out = bn_fixture()
    snap = Snapshot(rm, rv, out)
    # a ValueError that says why (a cumulative average needs the count of
    # batches, which the layer keeps) and what to do instead
    with pytest.raises(ValueError, match=r"^momentum: None means a cumulative average") as info:
        dropnorm.batch_norm_train(x, None, None, rm, rv, momentum=None, out=out)
    assert "BatchNorm1d/2d/3d(num_features, momentum=None)" in str(info.value)
    assert "momentum=1/k" in str(info.value)
    assert snap.unchanged()
    bn = dropnorm.BatchNorm1d(3, momentum=0.5)
    bn.momentum = None
    assert bn.momentum is None and dropnorm.BatchNorm1d(3, momentum=None).momentum is None


def test_numpy_real_scalars_are_accepted_for_eps_and_momentum():
    x = data(dtype=np.float64)
    rm1, rv1 = np.zeros(3), np.ones(3)
    rm2, rv2 = np.zeros(3), np.ones(3)
    y1, _, _ = dropnorm.batch_norm_train(x, None, None, rm1, rv1, momentum=0.25, eps=0.5)
    y2, _, _ = dropnorm.batch_norm_train(x, None, None, rm2, rv2, momentum=np.float32(0.25),
                                         eps=np.array(0.5))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(rv1, rv2)
    bn = dropnorm.BatchNorm1d(np.int64(3), eps=np.float16(0.5), momentum=np.float64(0.25),
                              dtype=np.float64)
    assert type(bn.momentum) is float and bn.eps == 0.5
    np.testing.assert_array_equal(bn(x), y1)
    np.testing.assert_array_equal(bn.running_var, rv1)


# ---- Item B: axis ------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-4, 3, 7, -7])
def test_axis_error_reports_the_value_given(axis):
    x, rm, rv, out = bn_fixture()
    snap = Snapshot(rm, rv, out)
    errors = assert_same_error(
        "axis", ValueError,
        lambda: dropnorm.batch_norm_train(x, None, None, rm, rv, axis=axis, out=out),
        lambda: dropnorm.batch_norm_infer(x, rm, rv, axis=axis, out=out),
        lambda: dropnorm.dropout(x, channelwise=True, axis=axis, out=out),
        lambda: dropnorm.dropout_backward(x, 0.5, channelwise=True, axis=axis, out=out),
    )
    assert str(errors[0]).endswith(f"got {axis}")
    assert snap.unchanged()


@pytest.mark.parametrize("axis", [True, False, np.bool_(True), 1.0, "1", None])
def test_non_integer_axis_is_rejected_by_functions_and_layers(axis):
    x, rm, rv, out = bn_fixture()
    snap = Snapshot(rm, rv, out)
    bn = dropnorm.BatchNorm1d(3)
    d = dropnorm.Dropout1d(0.5, seed=0)
    assert_same_error(
        "axis", TypeError,
        lambda: dropnorm.batch_norm_train(x, None, None, rm, rv, axis=axis, out=out),
        lambda: dropnorm.batch_norm_backward(x, x, rm, rv, axis=axis, out=out),
        lambda: dropnorm.dropout(x, channelwise=True, axis=axis, out=out),
        lambda: dropnorm.dropout(x, axis=axis, out=out),  # a type error even if unused
        lambda: dropnorm.dropout_apply_mask(x, np.zeros(8, np.uint8), 0.5, channelwise=True,
                                            axis=axis, out=out),
        lambda: dropnorm.BatchNorm1d(3, axis=axis),
        lambda: dropnorm.Dropout2d(axis=axis),
        lambda: setattr(bn, "axis", axis),
        lambda: setattr(d, "axis", axis),
    )
    assert snap.unchanged()
    assert bn.axis == 1 and d.axis == 1


@pytest.mark.parametrize("axis", [0, 2, -2])
def test_layer_axis_must_be_1_or_minus_1(axis):
    bn = dropnorm.BatchNorm2d(3, axis=-1)
    d = dropnorm.Dropout(seed=0)
    assert_same_error(
        "axis", ValueError,
        lambda: dropnorm.BatchNorm2d(3, axis=axis),
        lambda: dropnorm.Dropout(axis=axis),
        lambda: setattr(bn, "axis", axis),
        lambda: setattr(d, "axis", axis),
    )
    assert bn.axis == -1 and d.axis == 1


# ---- Item B: flags ---------------------------------------------------------------

BAD_FLAGS = ["False", "no", "", 0, 1, None, 1.0, [True]]


@pytest.mark.parametrize("value", BAD_FLAGS)
def test_training_flag_must_be_a_bool(value):
    x = data()
    out = np.full_like(x, 7.0)
    snap = Snapshot(x, out)
    d = dropnorm.Dropout(0.5, seed=0)
    bn = dropnorm.BatchNorm1d(3)
    assert_same_error(
        "training", TypeError,
        lambda: dropnorm.dropout(x, 0.5, training=value, out=out),
        lambda: setattr(d, "training", value),
        lambda: setattr(bn, "training", value),
    )
    # train(mode) names its own argument
    assert_same_error("mode", TypeError, lambda: d.train(value), lambda: bn.train(value))
    assert snap.unchanged()
    assert d.training is True and bn.training is True


@pytest.mark.parametrize("value", BAD_FLAGS)
def test_channelwise_and_return_mask_must_be_bools(value):
    x = data()
    out = np.full_like(x, 7.0)
    snap = Snapshot(x, out)
    mask = np.zeros(8, np.uint8)
    assert_same_error(
        "channelwise", TypeError,
        lambda: dropnorm.dropout(x, 0.5, channelwise=value, out=out),
        lambda: dropnorm.dropout_backward(x, 0.5, channelwise=value, out=out),
        lambda: dropnorm.dropout_apply_mask(x, mask, 0.5, channelwise=value, out=out),
    )
    assert_same_error("return_mask", TypeError,
                      lambda: dropnorm.dropout(x, 0.5, return_mask=value, out=out))
    assert snap.unchanged()


@pytest.mark.parametrize("name", ["affine", "track_running_stats"])
@pytest.mark.parametrize("value", BAD_FLAGS)
def test_batchnorm_flags_must_be_bools(name, value):
    err = error_of(lambda: dropnorm.BatchNorm2d(3, **{name: value}))
    assert type(err) is TypeError and str(err).startswith(f"{name}:")


def test_numpy_bools_are_flags():
    x = data()
    np.testing.assert_array_equal(dropnorm.dropout(x, 0.5, 1, 2, training=np.bool_(False)), x)
    y = dropnorm.dropout(x, 0.5, 1, 2, channelwise=np.bool_(True), return_mask=np.bool_(False))
    np.testing.assert_array_equal(y, dropnorm.dropout(x, 0.5, 1, 2, channelwise=True))
    bn = dropnorm.BatchNorm1d(3, affine=np.bool_(False)).train(np.bool_(False))
    assert bn.training is False and bn.affine is False and bn.weight is None


# ---- Item B: byte order ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swapped_inputs_are_converted(dtype):
    x = data(dtype=dtype)
    dy = data(dtype=dtype, seed=1)
    w, b = np.linspace(0.5, 2, 3).astype(dtype), np.linspace(-1, 1, 3).astype(dtype)
    xs, dys, ws, bs = swapped(x), swapped(dy), swapped(w), swapped(b)
    assert not xs.dtype.isnative
    # dropout
    np.testing.assert_array_equal(dropnorm.dropout(xs, 0.5, 1, 2), dropnorm.dropout(x, 0.5, 1, 2))
    np.testing.assert_array_equal(dropnorm.dropout_backward(dys, 0.5, 1, 2),
                                  dropnorm.dropout_backward(dy, 0.5, 1, 2))
    y = dropnorm.dropout(xs[:, ::2], 0.5, 1, 2, channelwise=True)  # swapped and strided
    assert y.dtype == dtype and y.dtype.isnative
    np.testing.assert_array_equal(y, dropnorm.dropout(x[:, ::2], 0.5, 1, 2, channelwise=True))
    # batch norm, every read-only argument swapped
    want = dropnorm.batch_norm_train(x, w, b)
    got = dropnorm.batch_norm_train(xs, ws, bs)
    for g, e in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_array_equal(g, e)
    _, mean, invstd = want
    np.testing.assert_array_equal(
        dropnorm.batch_norm_backward(dys, xs, swapped(mean), swapped(invstd), ws)[0],
        dropnorm.batch_norm_backward(dy, x, mean, invstd, w)[0])
    rm, rv = np.full(3, 0.5, dtype), np.full(3, 2.0, dtype)
    np.testing.assert_array_equal(dropnorm.batch_norm_infer(xs, swapped(rm), swapped(rv), ws, bs),
                                  dropnorm.batch_norm_infer(x, rm, rv, w, b))
    # layers
    np.testing.assert_array_equal(dropnorm.BatchNorm1d(3, dtype=dtype)(xs),
                                  dropnorm.BatchNorm1d(3, dtype=dtype)(x))
    np.testing.assert_array_equal(dropnorm.Dropout1d(0.5, seed=9)(xs),
                                  dropnorm.Dropout1d(0.5, seed=9)(x))


def test_swapped_arrays_written_in_place_are_rejected():
    x, rm, rv, out = bn_fixture()
    out_s, rm_s, rv_s = swapped(out), swapped(rm), swapped(rv)
    snap = Snapshot(x, rm, rv, out, out_s, rm_s, rv_s)
    for name, call in [
        ("out", lambda: dropnorm.batch_norm_train(x, out=out_s)),
        ("out", lambda: dropnorm.batch_norm_infer(x, rm, rv, out=out_s)),
        ("out", lambda: dropnorm.batch_norm_backward(x, x, rm, rv, out=out_s)),
        ("out", lambda: dropnorm.dropout(x, 0.5, out=out_s)),
        ("out", lambda: dropnorm.dropout_backward(x, 0.5, out=out_s)),
        ("running_mean", lambda: dropnorm.batch_norm_train(x, None, None, rm_s, rv, out=out)),
        ("running_var", lambda: dropnorm.batch_norm_train(x, None, None, rm, rv_s, out=out)),
    ]:
        err = error_of(call)
        assert type(err) is TypeError
        assert str(err).startswith(f"{name}:") and "byte order" in str(err)
    assert snap.unchanged()


def test_layer_with_swapped_running_stats_rejects_and_keeps_state():
    bn = dropnorm.BatchNorm1d(3)
    bn.running_mean = swapped(bn.running_mean)
    snap = Snapshot(bn.running_mean, bn.running_var)
    with pytest.raises(TypeError, match="^running_mean: .*byte order"):
        bn(data())
    assert snap.unchanged() and bn.num_batches_tracked == 0


def test_layer_dtype_is_checked_and_made_native():
    bn = dropnorm.BatchNorm1d(3, dtype=np.dtype(np.float32).newbyteorder(SWAPPED))
    assert bn.dtype == np.float32 and bn.dtype.isnative and bn.running_mean.dtype.isnative
    for value in ("abc", None, np.int32, "complex64"):
        with pytest.raises(TypeError) as info:
            dropnorm.BatchNorm1d(3, dtype=value)
        err = info.value
        assert type(err) is TypeError and str(err).startswith("dtype:")


# ---- Item B: load_state_dict ------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "abc", [("weight", np.ones(3))], 3])
def test_load_state_dict_rejects_a_non_mapping(value):
    bn = dropnorm.BatchNorm1d(3)
    bn(data())
    before = bn.state_dict()
    with pytest.raises(TypeError, match="^state_dict: expected a mapping"):
        bn.load_state_dict(value)
    for key, arr in bn.state_dict().items():
        np.testing.assert_array_equal(arr, before[key])


# ---- Layer attributes stay consistent ---------------------------------------------------

def test_structural_attributes_are_fixed():
    bn = dropnorm.BatchNorm1d(3)
    for name, value in [("num_features", 4), ("affine", False), ("track_running_stats", False),
                        ("dtype", np.float64)]:
        with pytest.raises(AttributeError):
            setattr(bn, name, value)
    assert bn.num_features == 3 and bn.affine and bn.track_running_stats
    assert bn.dtype == np.float32


def test_valid_settings_take_effect():
    x = data(dtype=np.float64)
    bn = dropnorm.BatchNorm1d(3, dtype=np.float64)
    bn.eps, bn.momentum, bn.training = 0.5, 0.25, False
    assert (bn.eps, bn.momentum, bn.training) == (0.5, 0.25, False)
    bn.training = True
    rm, rv = np.zeros(3), np.ones(3)
    y, _, _ = dropnorm.batch_norm_train(x, np.ones(3), np.zeros(3), rm, rv, momentum=0.25,
                                        eps=0.5)
    np.testing.assert_array_equal(bn(x), y)
    np.testing.assert_array_equal(bn.running_var, rv)
    d = dropnorm.Dropout(0.5, seed=1)
    d.p, d.seed, d.stream, d.mode = 0.25, 7, 3, "classic"
    np.testing.assert_array_equal(d(x), dropnorm.dropout(x, 0.25, 7, 3, mode="classic"))
    assert d.stream == 4
    with pytest.raises(ValueError, match="^mode: expected"):
        d.mode = "scaled"
    with pytest.raises(TypeError, match="^mode: expected"):
        d.mode = 1
    assert d.mode == "classic"


def test_dropout_layer_stops_before_the_stream_overflows():
    x = data()
    d = dropnorm.Dropout(0.5, seed=5)
    d.stream = 2**64 - 2
    np.testing.assert_array_equal(d(x), dropnorm.dropout(x, 0.5, 5, 2**64 - 2))
    assert d.stream == 2**64 - 1
    with pytest.raises(ValueError, match="^stream: "):
        d(x)
    assert d.stream == 2**64 - 1
    np.testing.assert_array_equal(d.backward(x), dropnorm.dropout_backward(x, 0.5, 5, 2**64 - 2))
