"""Layer classes: training sequences against the NumPy oracle (and PyTorch
where installed), state dicts, folding, pickling, and the dropout layers."""

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dropnorm

import oracle

TOL = {np.float32: 3e-5, np.float64: 1e-10}

LAYERS = [
    (dropnorm.BatchNorm1d, (6, 5)),
    (dropnorm.BatchNorm1d, (4, 5, 7)),
    (dropnorm.BatchNorm2d, (3, 5, 4, 6)),
    (dropnorm.BatchNorm3d, (2, 5, 3, 4, 2)),
]


def batch(shape, dtype, axis, seed):
    rng = np.random.default_rng(seed)
    x = (0.3 + 1.7 * rng.standard_normal(shape)).astype(dtype)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)) if axis == -1 else x


def close(actual, expected, dtype, scale=1.0):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                               rtol=TOL[dtype], atol=TOL[dtype] * scale)


def training_sequence_cases(test):
    """Every layer class and shape, with and without affine, with momentum
    0.1 and None (cumulative), in both layouts and both dtypes."""
    for mark in (pytest.mark.parametrize("dtype", [np.float32, np.float64]),
                 pytest.mark.parametrize("axis", [1, -1]),
                 pytest.mark.parametrize("momentum", [0.1, None]),
                 pytest.mark.parametrize("affine", [True, False]),
                 pytest.mark.parametrize("cls, shape", LAYERS)):
        test = mark(test)
    return test


@training_sequence_cases
def test_batchnorm_training_sequence_matches_oracle(cls, shape, affine, momentum, axis, dtype):
    c = shape[1]
    bn = cls(c, momentum=momentum, affine=affine, axis=axis, dtype=dtype)
    w = np.ones(c)
    b = np.zeros(c)
    rm, rv = np.zeros(c), np.ones(c)
    lr = 0.1
    for step in range(4):
        x = batch(shape, dtype, axis, seed=step)
        dy = batch(shape, dtype, axis, seed=100 + step)
        y = bn(x)
        dx = bn.backward(dy)
        m = x.size // c
        y_ref, _, _ = oracle.bn_train(x, w if affine else None, b if affine else None, axis=axis)
        dx_ref, dw_ref, db_ref = oracle.bn_backward(dy, x, w if affine else None, axis=axis)
        k = step + 1
        rm, rv = oracle.bn_running_update(rm, rv, x, 1.0 / k if momentum is None else momentum,
                                          axis=axis)
        close(y, y_ref, dtype, 4)
        close(dx, dx_ref, dtype, 4)
        close(bn.running_mean, rm, dtype)
        close(bn.running_var, rv, dtype)
        assert bn.num_batches_tracked == k
        if affine:
            close(bn.grad_weight, dw_ref, dtype, np.sqrt(m) * 4)
            close(bn.grad_bias, db_ref, dtype, np.sqrt(m) * 4)
            # an SGD step, so later steps see other weights
            bn.weight -= (lr * bn.grad_weight).astype(dtype)
            bn.bias -= (lr * bn.grad_bias).astype(dtype)
            w, b = bn.weight.astype(np.float64), bn.bias.astype(np.float64)
            bn.zero_grad()
            assert bn.grad_weight is None
        else:
            assert bn.weight is None and bn.grad_weight is None
    bn.eval()
    x = batch(shape, dtype, axis, seed=50)
    y = bn(x)
    close(y, oracle.bn_infer(x, rm, rv, w if affine else None, b if affine else None,
                             axis=axis), dtype, 8)
    dy = batch(shape, dtype, axis, seed=51)
    dx = bn.backward(dy)
    dx_ref, dw_ref, _ = oracle.bn_infer_backward(dy, x, bn.running_mean, bn.running_var,
                                                 w if affine else None, axis=axis)
    close(dx, dx_ref, dtype, 4)
    assert bn.num_batches_tracked == 4


def test_batchnorm_gradients_accumulate():
    bn = dropnorm.BatchNorm1d(3, dtype=np.float64)
    x = batch((8, 3), np.float64, 1, 0)
    dy = batch((8, 3), np.float64, 1, 1)
    bn(x)
    bn.backward(dy)
    g1 = bn.grad_weight.copy()
    bn(x)
    bn.backward(dy)
    np.testing.assert_allclose(bn.grad_weight, 2 * g1)


def test_no_running_stats_always_uses_batch_statistics():
    bn = dropnorm.BatchNorm2d(3, track_running_stats=False, dtype=np.float64).eval()
    assert bn.running_mean is None and bn.num_batches_tracked is None
    x = batch((4, 3, 5, 5), np.float64, 1, 0)
    y_ref, _, _ = oracle.bn_train(x)
    np.testing.assert_allclose(bn(x), y_ref, atol=1e-12)
    dy = batch((4, 3, 5, 5), np.float64, 1, 1)
    np.testing.assert_allclose(bn.backward(dy), oracle.bn_backward(dy, x)[0], atol=1e-12)
    assert bn.state_dict().keys() == {"weight", "bias"}


def test_calibrate_gives_population_statistics():
    bn = dropnorm.BatchNorm1d(4, momentum=0.1, dtype=np.float64)
    bn.weight[:] = 3.0
    batches = [batch((10, 4, 6), np.float64, 1, s) for s in range(5)]
    bn(batches[0])  # some history that calibrate must forget
    bn.calibrate(batches)
    means = np.array([oracle.bn_stats(b)[0] for b in batches])
    vars_ = np.array([oracle.bn_stats(b)[1] for b in batches])
    m = 10 * 6
    np.testing.assert_allclose(bn.running_mean, means.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.running_var, m / (m - 1) * vars_.mean(axis=0), rtol=1e-12)
    assert bn.num_batches_tracked == 5
    assert np.all(bn.weight == 3.0) and bn.training


def test_state_dict_round_trip_and_errors():
    a = dropnorm.BatchNorm2d(3)
    for s in range(3):
        a(batch((4, 3, 5, 5), np.float32, 1, s))
    a.weight[:] = [1.5, 2.0, 0.5]
    state = a.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert state["running_mean"].shape == (3,) and state["num_batches_tracked"].shape == ()
    assert state["num_batches_tracked"].dtype == np.int64 and int(state["num_batches_tracked"]) == 3
    b = dropnorm.BatchNorm2d(3)
    b.load_state_dict(state)
    x = batch((4, 3, 5, 5), np.float32, 1, 9)
    np.testing.assert_array_equal(a.eval()(x), b.eval()(x))
    assert b.num_batches_tracked == 3

    before = b.state_dict()
    bad = dict(state)
    del bad["running_var"]
    with pytest.raises(ValueError, match=r"missing keys \['running_var'\]"):
        b.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        b.load_state_dict(dict(state, extra=np.zeros(3)))
    with pytest.raises(ValueError, match=r"state\['weight'\]: expected shape \(3,\)"):
        b.load_state_dict(dict(state, weight=np.ones(4)))
    for key, value in before.items():
        np.testing.assert_array_equal(b.state_dict()[key], value)


def test_fold_into_linear_layer():
    rng = np.random.default_rng(0)
    n_in, n_out = 7, 5
    w = rng.standard_normal((n_out, n_in))
    bias = rng.standard_normal(n_out)
    bn = dropnorm.BatchNorm1d(n_out, dtype=np.float64)
    bn.weight[:] = rng.uniform(0.5, 2, n_out)
    bn.bias[:] = rng.standard_normal(n_out)
    for _ in range(3):
        bn(rng.standard_normal((16, n_in)) @ w.T + bias)
    bn.eval()
    x = rng.standard_normal((9, n_in))
    expected = bn(x @ w.T + bias)
    w2, b2 = bn.fold_into(w, bias)
    np.testing.assert_allclose(x @ w2.T + b2, expected, rtol=1e-12, atol=1e-12)
    # a convolution weight (out, in, kh, kw), folded along axis 0
    conv = rng.standard_normal((n_out, 2, 3, 3))
    cw, cb = bn.fold_into(conv)
    a = bn.weight / np.sqrt(bn.running_var + bn.eps)
    np.testing.assert_allclose(cw, conv * a[:, None, None, None])
    np.testing.assert_allclose(cb, bn.bias - bn.running_mean * a)
    with pytest.raises(ValueError, match="weight: expected 5 output features"):
        bn.fold_into(w.T)


def test_pickle_copy_and_repr():
    bn = dropnorm.BatchNorm3d(2, momentum=None, axis=-1, dtype=np.float64)
    x = batch((2, 2, 3, 4, 5), np.float64, -1, 0)
    bn(x)
    for clone in (pickle.loads(pickle.dumps(bn)), copy.deepcopy(bn)):
        assert type(clone) is dropnorm.BatchNorm3d
        assert clone.momentum is None and clone.axis == -1 and clone.num_batches_tracked == 1
        np.testing.assert_array_equal(clone.running_var, bn.running_var)
        assert clone.running_var is not bn.running_var
        np.testing.assert_array_equal(clone.eval()(x), copy.copy(bn).eval()(x))
    assert repr(bn) == ("BatchNorm3d(2, eps=1e-05, momentum=None, affine=True, "
                        "track_running_stats=True, axis=-1, dtype=float64)")


def test_layer_input_errors():
    bn = dropnorm.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"x: BatchNorm2d expects 4-d"):
        bn(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="x: expected 3 channels on axis 1"):
        bn(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(TypeError, match="x: dtype float64 does not match"):
        bn(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.zeros((1, 3, 1, 1), np.float32))
    assert bn.num_batches_tracked == 0
    with pytest.raises(RuntimeError, match="backward called before forward"):
        dropnorm.BatchNorm1d(2).backward(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        dropnorm.BatchNorm1d(2, momentum=2.0)
    with pytest.raises(TypeError, match="dtype"):
        dropnorm.BatchNorm1d(2, dtype=np.int32)


# ---- PyTorch, where installed -------------------------------------------------

@training_sequence_cases
def test_batchnorm_training_sequence_matches_pytorch(cls, shape, affine, momentum, axis, dtype):
    torch = pytest.importorskip("torch")
    c = shape[1]
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    ref = getattr(torch.nn, cls.__name__)(c, momentum=momentum, affine=affine, dtype=tdt)
    bn = cls(c, momentum=momentum, affine=affine, axis=axis, dtype=dtype)

    def to_torch(a):  # our layout -> torch's channels-first tensor
        a = np.moveaxis(a, -1, 1) if axis == -1 else a
        return torch.tensor(np.ascontiguousarray(a), requires_grad=True)

    def from_torch(t):
        a = t.detach().numpy()
        return np.moveaxis(a, 1, -1) if axis == -1 else a

    opt = torch.optim.SGD(ref.parameters(), lr=0.1) if affine else None
    for step in range(3):
        x = batch(shape, dtype, axis, seed=step)
        dy = batch(shape, dtype, axis, seed=100 + step)
        xt = to_torch(x)
        yt = ref(xt)
        yt.backward(to_torch(dy))
        y = bn(x)
        dx = bn.backward(dy)
        close(y, from_torch(yt), dtype, 8)
        close(dx, from_torch(xt.grad), dtype, 8)
        close(bn.running_mean, ref.running_mean.numpy(), dtype, 4)
        close(bn.running_var, ref.running_var.numpy(), dtype, 4)
        assert bn.num_batches_tracked == int(ref.num_batches_tracked)
        if affine:
            close(bn.grad_weight, ref.weight.grad.numpy(), dtype, 64)
            close(bn.grad_bias, ref.bias.grad.numpy(), dtype, 64)
            opt.step()
            opt.zero_grad()
            bn.weight -= (0.1 * bn.grad_weight).astype(dtype)
            bn.bias -= (0.1 * bn.grad_bias).astype(dtype)
            bn.zero_grad()
    bn.eval()
    ref.eval()
    x = batch(shape, dtype, axis, seed=77)
    close(bn(x), from_torch(ref(to_torch(x))), dtype, 8)
    # and the state dict goes both ways
    other = cls(c, momentum=momentum, affine=affine, axis=axis, dtype=dtype).eval()
    other.load_state_dict(ref.state_dict())
    close(other(x), from_torch(ref(to_torch(x))), dtype, 8)
    ref2 = getattr(torch.nn, cls.__name__)(c, affine=affine, dtype=tdt).eval()
    ref2.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    close(bn(x), from_torch(ref2(to_torch(x))), dtype, 8)


# ---- Dropout layers -------------------------------------------------------------

def test_dropout_stream_advances_and_backward_regenerates_mask():
    d = dropnorm.Dropout(p=0.5, seed=1234)
    x = np.random.default_rng(0).standard_normal((8, 100)).astype(np.float32) + 5.0
    y1 = d(x)
    dx1 = d.backward(np.ones_like(x))
    y2 = d(x)
    dx2 = d.backward(np.ones_like(x))
    assert d.stream == 2
    assert not np.array_equal(y1 == 0, y2 == 0)
    np.testing.assert_array_equal(y1, dropnorm.dropout(x, 0.5, seed=1234, stream=0))
    np.testing.assert_array_equal(y2, dropnorm.dropout(x, 0.5, seed=1234, stream=1))
    # the gradient uses the same mask and scale as the forward
    np.testing.assert_array_equal(dx1, np.where(y1 == 0, 0, np.float32(2.0)))
    np.testing.assert_array_equal(dx2, np.where(y2 == 0, 0, np.float32(2.0)))


def test_dropout_eval_behaviour():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float64)
    inv = dropnorm.Dropout(0.3, seed=0).eval()
    np.testing.assert_array_equal(inv(x), x)
    np.testing.assert_array_equal(inv.backward(x), x)
    classic = dropnorm.Dropout(0.3, mode="classic", seed=0).eval()
    np.testing.assert_array_equal(classic(x), x * 0.7)
    np.testing.assert_array_equal(classic.backward(x), x * 0.7)
    assert inv.stream == 0 and classic.stream == 0


def test_dropout_same_seed_same_masks_in_another_process():
    script = textwrap.dedent("""
        import numpy as np, dropnorm
        d = dropnorm.Dropout2d(p=0.4, seed=2**40 + 17)
        x = np.ones((6, 8, 3, 3), np.float32)
        print("".join(str(int(v)) for v in (d(x) != 0).ravel()[::9]))
        print("".join(str(int(v)) for v in (d(x) != 0).ravel()[::9]))
    """)
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, env=dict(os.environ, OMP_NUM_THREADS=str(t))).stdout
            for t in (1, 2)]
    d = dropnorm.Dropout2d(p=0.4, seed=2**40 + 17)
    x = np.ones((6, 8, 3, 3), np.float32)
    here = "".join("".join(str(int(v)) for v in (d(x) != 0).ravel()[::9]) + "\n"
                   for _ in range(2))
    assert outs[0] == outs[1] == here
    first, second = here.split()
    assert first != second


@pytest.mark.parametrize("cls, shape", [(dropnorm.Dropout1d, (5, 7, 11)),
                                        (dropnorm.Dropout2d, (5, 7, 3, 4)),
                                        (dropnorm.Dropout3d, (5, 7, 2, 3, 2))])
@pytest.mark.parametrize("axis", [1, -1])
def test_channel_dropout_drops_whole_channels(cls, shape, axis):
    d = cls(p=0.5, seed=99, axis=axis)
    x = np.ones(shape, np.float32)
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    y = d(x)
    y3 = oracle.to_ncs(y, axis)
    kept = y3[:, :, 0] != 0
    assert np.all((y3 != 0) == kept[:, :, None])
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(y3[kept], 2.0)
    dx = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, y)
    with pytest.raises(ValueError, match=f"x: {cls.__name__} expects"):
        d(np.ones((2, 3, 1, 1, 1, 1), np.float32))  # 6-d: neither form


def test_dropout_layer_errors_and_pickle():
    with pytest.raises(ValueError, match="p: expected a probability"):
        dropnorm.Dropout(1.5)
    with pytest.raises(ValueError, match="mode: expected"):
        dropnorm.Dropout(0.5, mode="scaled")
    with pytest.raises(ValueError, match="seed: expected an integer"):
        dropnorm.Dropout(0.5, seed=-1)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        dropnorm.Dropout(0.5, seed=0).backward(np.ones(3))
    d = dropnorm.Dropout(0.25, seed=5)
    x = np.ones((4, 9))
    d(x)
    clone = pickle.loads(pickle.dumps(d))
    assert clone.stream == 1 and clone.seed == 5 and clone.p == 0.25
    np.testing.assert_array_equal(clone(x), d(x))
    assert repr(d) == "Dropout(p=0.25, mode='inverted', seed=5, axis=1)"
    a, b = dropnorm.Dropout(0.5), dropnorm.Dropout(0.5)
    assert a.seed != b.seed


# ---- Argument checks shared with the functions (more in test_checks.py) ---------

def test_layers_reject_what_the_functions_reject():
    # the values of the issue: each was accepted by the layer, rejected by the function
    x = np.ones((4, 6), np.float32)
    for layer_call, function_call in [
        (lambda: dropnorm.Dropout(p=True), lambda: dropnorm.dropout(x, p=True)),
        (lambda: dropnorm.Dropout(seed=1.5), lambda: dropnorm.dropout(x, seed=1.5)),
        (lambda: dropnorm.Dropout(seed="7"), lambda: dropnorm.dropout(x, seed="7")),
    ]:
        with pytest.raises(TypeError) as from_layer:
            layer_call()
        with pytest.raises(TypeError) as from_function:
            function_call()
        assert str(from_layer.value) == str(from_function.value)
    with pytest.raises(TypeError, match="^num_features: expected an integer, got float"):
        dropnorm.BatchNorm1d(2.7)


def test_calibrate_with_a_bad_batch_changes_nothing():
    bn = dropnorm.BatchNorm1d(3, dtype=np.float64)
    bn(batch((8, 3), np.float64, 1, 0))
    before = bn.state_dict()
    good = [batch((8, 3), np.float64, 1, s) for s in (1, 2)]
    with pytest.raises(ValueError, match="^x: expected 3 channels"):
        bn.calibrate(good + [np.zeros((8, 4))])
    with pytest.raises(TypeError, match="^batches: expected an iterable"):
        bn.calibrate(None)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    # and a good calibration still gives the cumulative average
    bn.calibrate(iter(good))
    assert bn.num_batches_tracked == 2
    means = np.mean([oracle.bn_stats(b)[0] for b in good], axis=0)
    np.testing.assert_allclose(bn.running_mean, means, rtol=1e-12, atol=1e-15)


def test_fold_into_checks_its_arguments():
    bn = dropnorm.BatchNorm1d(3, dtype=np.float64).eval()
    w = np.ones((3, 2))
    with pytest.raises(TypeError, match="^axis: expected an integer, got bool"):
        bn.fold_into(w, axis=False)
    with pytest.raises(TypeError, match="^bias: expected real numbers"):
        bn.fold_into(w, bias=np.array(["a", "b", "c"]))
    np.testing.assert_array_equal(bn.fold_into(w, axis=np.int64(0))[0], w / np.sqrt(1 + bn.eps))


# ---- What backward uses: the forward's snapshot, and x unchanged ------------------

DROPOUT_CHANGES = [("p", 0.2), ("seed", 99), ("stream", 17), ("mode", "classic"),
                   ("axis", -1), ("training", False)]


@pytest.mark.parametrize("name, value", DROPOUT_CHANGES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cls, shape", [(dropnorm.Dropout, (6, 40)),
                                        (dropnorm.Dropout2d, (4, 6, 3, 3))])
def test_dropout_backward_uses_the_forwards_settings(cls, shape, training, name, value):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    layers = [cls(p=0.5, seed=11).train(training) for _ in range(2)]
    for layer in layers:
        layer(x)
    setattr(layers[1], name, value)
    want = layers[0].backward(dy)
    np.testing.assert_array_equal(layers[1].backward(dy), want)
    if training:
        expected = dropnorm.dropout_backward(dy, 0.5, seed=11, stream=0,
                                             channelwise=cls is not dropnorm.Dropout)
        np.testing.assert_array_equal(want, expected)
    else:
        np.testing.assert_array_equal(want, dy)


def bn_pair(training):
    """Two identical layers after the same forward, and that forward's x and dy."""
    x = batch((6, 5, 4), np.float64, 1, 0)
    layers = [dropnorm.BatchNorm1d(5, dtype=np.float64).train(training) for _ in range(2)]
    for layer in layers:
        layer.weight[:] = np.linspace(0.5, 2.0, 5)
        layer.bias[:] = 0.25
        layer.running_mean[:] = 0.5
        layer.running_var[:] = 2.0
        layer(x)
    return layers, x, batch((6, 5, 4), np.float64, 1, 1)


def set_weight_in_place(bn):
    bn.weight[:] = 3.0


def replace_weight(bn):
    bn.weight = np.full(5, -1.0)


def set_running_stats(bn):
    bn.running_mean[:] = 9.0
    bn.running_var = np.full(5, 7.0)


@pytest.mark.parametrize("change", [
    lambda bn: setattr(bn, "eps", 0.5),
    lambda bn: setattr(bn, "axis", -1),
    lambda bn: setattr(bn, "momentum", None),
    lambda bn: setattr(bn, "training", not bn.training),
    set_weight_in_place, replace_weight, set_running_stats,
], ids=["eps", "axis", "momentum", "training", "weight in place", "new weight",
        "running stats"])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward_uses_the_forwards_settings(training, change):
    (bn, ref), x, dy = bn_pair(training)
    change(bn)
    for got, want in zip((bn.backward(dy), bn.grad_weight, bn.grad_bias),
                         (ref.backward(dy), ref.grad_weight, ref.grad_bias)):
        np.testing.assert_array_equal(got, want)


def add_one(x):
    x += 1


def set_one_value(x):
    x[3, 2, 1] = 100.0


def relu_in_place(x):
    np.maximum(x, 0, out=x)


def write_through_a_view(x):
    x.reshape(-1)[-1] = 0.0


def reshape_in_place(x):
    x.shape = (6, 4, 5)


@pytest.mark.parametrize("modify", [add_one, set_one_value, relu_in_place, write_through_a_view,
                                    reshape_in_place])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward_detects_a_changed_input(training, modify):
    bn = dropnorm.BatchNorm1d(5, dtype=np.float64).train(training)
    x = batch((6, 5, 4), np.float64, 1, 0)
    dy = batch((6, 5, 4), np.float64, 1, 1)
    bn(x)
    modify(x)
    with pytest.raises(RuntimeError, match="^x: the input of the forward was changed"):
        bn.backward(dy)
    assert bn.grad_weight is None
    # a forward of the changed x starts again
    bn(np.ascontiguousarray(x.reshape(6, 5, 4)))
    bn.backward(dy)


@pytest.mark.parametrize("modify", [add_one, relu_in_place, lambda x: x.__imul__(2)])
def test_batchnorm_detects_a_large_input_changed_in_bulk(modify):
    bn = dropnorm.BatchNorm2d(64)
    x = batch((16, 64, 8, 8), np.float32, 1, 0)
    bn(x)
    modify(x)
    with pytest.raises(RuntimeError, match="^x: "):
        bn.backward(np.ones_like(x))


def test_batchnorm_detects_a_channel_overwritten_in_a_large_input():
    # a write into whole channels: the sampled values reach every channel
    for axis, cut in [(1, np.s_[:, 5]), (-1, np.s_[..., 5])]:
        bn = dropnorm.BatchNorm2d(64, axis=axis)
        x = batch((16, 64, 8, 8), np.float32, axis, 0)
        bn(x)
        x[cut] = 0
        with pytest.raises(RuntimeError, match="^x: "):
            bn.backward(np.ones_like(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("axis", [1, -1])
def test_running_statistics_are_the_kernels_to_the_bit(axis, momentum, dtype):
    bn = dropnorm.BatchNorm2d(3, momentum=momentum, axis=axis, dtype=dtype)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    for k in range(5):
        x = batch((4, 3, 5, 6), dtype, axis, seed=k)
        bn(x)
        dropnorm.batch_norm_train(x, running_mean=rm, running_var=rv, axis=axis,
                                  momentum=1.0 / (k + 1) if momentum is None else momentum)
        np.testing.assert_array_equal(bn.running_mean, rm)
        np.testing.assert_array_equal(bn.running_var, rv)


# ---- PyTorch-compatible details (issue 14, item 5) ---------------------------------

CHANNEL_DROPOUTS = [(dropnorm.Dropout1d, (5, 7, 11)), (dropnorm.Dropout2d, (5, 7, 3, 4)),
                    (dropnorm.Dropout3d, (5, 7, 2, 3, 2))]


def positive(shape, dtype=np.float32, seed=0):
    """Values in [1, 2): y == 0 marks exactly the dropped places."""
    return (1.0 + np.random.default_rng(seed).random(shape)).astype(dtype)


@pytest.mark.parametrize("cls, shape", [(dropnorm.Dropout, (6, 40))] + CHANNEL_DROPOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_inplace_writes_into_x_and_returns_it(cls, shape, dtype):
    x = positive(shape, dtype)
    want = cls(0.5, seed=21)(x)
    d = cls(0.5, seed=21, inplace=True)
    assert d.inplace is True
    y = d(x)
    assert y is x
    np.testing.assert_array_equal(x, want)
    dy = positive(shape, dtype, seed=1)
    np.testing.assert_array_equal(d.backward(dy), np.where(want != 0, dy * dtype(2), dtype(0)))
    assert d.stream == 1


def test_dropout_inplace_in_eval_mode():
    x = positive((4, 6))
    x0 = x.copy()
    assert dropnorm.Dropout(0.25, inplace=True).eval()(x) is x
    np.testing.assert_array_equal(x, x0)
    y = dropnorm.Dropout(0.25, mode="classic", inplace=True).eval()(x)
    assert y is x
    np.testing.assert_array_equal(x, x0 * np.float32(0.75))


def read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("make, exc, match", [
    (lambda: [[1.0, 2.0], [3.0, 4.0]], TypeError, "^x: inplace=True writes the result into x"),
    (lambda: np.ones((2, 4), np.int32), TypeError, "^x: inplace=True .* float32, float64, float16"),
    (lambda: np.ones((2, 4), ">f4"), TypeError, "^x: inplace=True .* native byte order"),
    (lambda: np.ones((2, 8), np.float32)[:, ::2], ValueError, "^x: the array must be C-contig"),
    (lambda: read_only(np.ones((2, 4), np.float32)), ValueError, "^x: the array is read-only"),
])
def test_dropout_inplace_rejects_what_it_cannot_write(make, exc, match):
    if sys.byteorder == "big" and "native" in match:
        pytest.skip("'>f4' is native here")
    d = dropnorm.Dropout(0.5, seed=1, inplace=True)
    x = make()
    before = np.array(x, copy=True)
    with pytest.raises(exc, match=match):
        d(x)
    np.testing.assert_array_equal(np.asarray(x), before)
    assert d.stream == 0  # the failed forward gave its stream back


@pytest.mark.parametrize("cls, shape", CHANNEL_DROPOUTS)
@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("inplace", [False, True])
def test_channel_dropout_of_unbatched_input_drops_whole_channels(cls, shape, axis, inplace):
    # (C, L), (C, H, W), (C, D, H, W) (channels last: (L, C), ...) are a batch of one
    x = positive(shape[1:])  # (7, ...)
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 0, -1))
    x0 = x.copy()
    want = cls(0.5, seed=5, axis=axis)(x[None].copy())[0]
    d = cls(0.5, seed=5, axis=axis, inplace=inplace)
    y = d(x)
    assert y.shape == x.shape
    assert (y is x) == inplace
    np.testing.assert_array_equal(y, want)
    kept = (np.moveaxis(y, -1, 0) if axis == -1 else y).reshape(7, -1) != 0
    assert np.all(kept == kept[:, :1])          # a channel is kept or dropped whole
    assert 0 < kept[:, 0].sum() < 7
    dy = positive(x.shape, seed=2)
    np.testing.assert_array_equal(d.backward(dy), np.where(want != 0, dy * np.float32(2), 0))
    # and the same decisions as the functional channel dropout of x[None]
    np.testing.assert_array_equal(
        want, dropnorm.dropout(x0[None], 0.5, seed=5, stream=0, channelwise=True, axis=axis)[0])
    with pytest.raises(ValueError, match=r"dy: shape .* does not match"):
        d.backward(dy[None])


@pytest.mark.parametrize("cls, shape", CHANNEL_DROPOUTS)
def test_channel_dropout_names_both_input_forms(cls, shape):
    d = cls(0.5, seed=1)
    for bad in [(3,) * (len(shape) - 2), (3,) * (len(shape) + 1)]:
        with pytest.raises(ValueError, match=rf"^x: {cls.__name__} expects .* unbatched input"):
            d(np.ones(bad, np.float32))
    assert d.stream == 0


@pytest.mark.parametrize("cls, shape", [(dropnorm.Dropout, (6, 40))] + CHANNEL_DROPOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_in_eval_mode_returns_its_input_itself(cls, shape, dtype):
    d = cls(0.3, seed=0).eval()
    x = positive(shape, dtype)
    assert d(x) is x
    strided = positive((2 * shape[0],) + shape[1:], dtype)[::2]  # not contiguous: still x
    assert d(strided) is strided
    assert d.backward(np.ones(shape, dtype)).shape == shape
    as_list = d(x.tolist())  # not an array: converted, as in training
    assert type(as_list) is np.ndarray and np.array_equal(as_list, x)
    with pytest.raises(TypeError, match="^x: expected a float32 or float64 array, or float16"):
        d(x.astype(np.int32))
    half = x.astype(np.float16)
    assert d(half) is half
    # "classic" scales by 1-p in eval: a new array
    classic = cls(0.3, mode="classic", seed=0).eval()
    y = classic(x)
    assert y is not x and np.array_equal(y, x * dtype(0.7))
    assert d.stream == 0 and classic.stream == 0


def test_dropout_inplace_attribute_is_checked_copied_and_shown():
    with pytest.raises(TypeError, match="^inplace: expected a bool"):
        dropnorm.Dropout(0.5, inplace=1)
    d = dropnorm.Dropout(0.5, seed=3)
    with pytest.raises(TypeError, match="^inplace: expected a bool"):
        d.inplace = "yes"
    d.inplace = True
    assert repr(d) == "Dropout(p=0.5, mode='inverted', seed=3, axis=1, inplace=True)"
    for clone in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        assert clone.inplace is True and clone.seed == 3
    # PyTorch's Dropout(p, inplace) positionally: here the second argument is the mode
    with pytest.raises(TypeError, match=r"^mode: .*got bool .*Dropout\(p, inplace=\.\.\.\)"):
        dropnorm.Dropout(0.5, True)


def test_load_state_dict_strict_false_returns_missing_and_unexpected_keys():
    bn = dropnorm.BatchNorm1d(3)
    state = {"weight": np.full(3, 2.0), "running_mean": np.arange(3.0),
             "num_batches_tracked": np.array(4), "foo": np.ones(1)}
    result = bn.load_state_dict(state, strict=False)
    assert result.missing_keys == ["bias", "running_var"]
    assert result.unexpected_keys == ["foo"]
    assert result == (["bias", "running_var"], ["foo"])  # a named tuple
    np.testing.assert_array_equal(bn.weight, [2, 2, 2])
    np.testing.assert_array_equal(bn.running_mean, [0, 1, 2])
    np.testing.assert_array_equal(bn.bias, [0, 0, 0])   # missing: unchanged
    np.testing.assert_array_equal(bn.running_var, [1, 1, 1])
    assert bn.num_batches_tracked == 4
    # the keys matched: empty lists, and PyTorch's text for it
    full = bn.load_state_dict(bn.state_dict())
    assert full == ([], []) and repr(full) == str(full) == "<All keys matched successfully>"
    assert "missing_keys=['bias', 'running_var']" in repr(result)


def test_load_state_dict_strict_true_and_bad_values():
    bn = dropnorm.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"missing keys .*\(strict=False loads"):
        bn.load_state_dict({"weight": np.ones(3)})
    before = bn.state_dict()
    # a wrong shape raises with strict=False too, and nothing is loaded
    with pytest.raises(ValueError, match=r"^state\['bias'\]: expected shape \(3,\)"):
        bn.load_state_dict({"weight": np.full(3, 5.0), "bias": np.ones(4)}, strict=False)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(TypeError, match="^strict: expected a bool"):
        bn.load_state_dict(before, strict="no")


def test_load_state_dict_result_matches_pytorch():
    torch = pytest.importorskip("torch")
    state = {"weight": np.full(3, 2.0, np.float32), "running_mean": np.zeros(3, np.float32),
             "num_batches_tracked": np.array(4), "foo": np.ones(1, np.float32)}
    ours = dropnorm.BatchNorm1d(3).load_state_dict(state, strict=False)
    theirs = torch.nn.BatchNorm1d(3).load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert ours.missing_keys == theirs.missing_keys
    assert ours.unexpected_keys == theirs.unexpected_keys
    bn = dropnorm.BatchNorm1d(3)
    assert (repr(bn.load_state_dict(bn.state_dict()))
            == repr(torch.nn.BatchNorm1d(3).load_state_dict(torch.nn.BatchNorm1d(3).state_dict())))


@pytest.mark.parametrize("cls, shape, dtype, other", [
    (dropnorm.BatchNorm1d, (8, 4), np.float32, np.float64),
    (dropnorm.BatchNorm2d, (2, 3, 4, 4), np.float64, np.float32),
])
def test_dtype_mismatch_says_how_to_fix_it(cls, shape, dtype, other):
    c = shape[1]
    x = np.ones(shape, other)
    with pytest.raises(TypeError) as info:
        cls(c, dtype=dtype)(x)
    text = str(info.value)
    make = f"{cls.__name__}({c}, dtype=np.{np.dtype(other).name})"
    convert = f"x.astype(np.{np.dtype(dtype).name})"
    assert text.startswith("x: dtype") and make in text and convert in text
    # and both fixes work, as written
    assert eval(make, {"np": np, cls.__name__: cls})(x).dtype == other
    assert cls(c, dtype=dtype)(eval(convert, {"np": np, "x": x})).dtype == dtype


@pytest.mark.parametrize("cls", [dropnorm.Dropout, dropnorm.Dropout2d])
def test_dropout_layers_say_how_to_pass_a_tensor_that_requires_grad(cls):
    torch = pytest.importorskip("torch")
    d = cls(0.5, seed=1)
    with pytest.raises(TypeError, match=r"^x: cannot read this torch tensor .*x\.detach\(\)"):
        d(torch.ones(2, 3, 4, 4, requires_grad=True))
    assert d.stream == 0


def test_dropout_inplace_half_precision():
    # float16 is written in place like float32: the same values as a copy gets
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float16)
    want = dropnorm.Dropout(0.5, seed=3)(x.copy())
    y = dropnorm.Dropout(0.5, seed=3, inplace=True)(x)
    assert y is x and y.dtype == np.float16
    assert np.array_equal(x, want)
