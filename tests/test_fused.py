"""The fused blocks (issue 19): batch_norm_train / batch_norm_infer /
batch_norm_backward with residual, activation and dropout are bit for bit
the composition of the plain functions, for every option, both layouts,
1-D, 2-D and 3-D spatial shapes and none, float32, float64, float16 and
bfloat16, any thread count and every instruction-set variant; bad
arguments raise and change nothing; the layers run the fused block."""

import copy
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dropnorm

DTYPES = ["float32", "float64", "float16", "bfloat16"]
# (shape, axis): no spatial extent, 1-D, 2-D, 3-D, channels first and last
SHAPES = [((24, 6), 1), ((24, 6), -1), ((6, 5, 37), 1), ((6, 37, 5), -1),
          ((4, 3, 9, 11), 1), ((4, 9, 11, 3), -1), ((2, 3, 4, 5, 6), 1), ((2, 4, 5, 6, 3), -1),
          # the backward's schedules (batchnorm_impl.h): short rows and channels last store
          # the gradient; long rows make it in tiles, with row masks from whole-image groups
          # (16 images or more) and without them when few images split their rows
          ((17, 3, 130), 1), ((2, 2, 4100), 1)]
OPTIONS = list(itertools.product([False, True], [None, "relu"], [0.0, 0.3]))
SEED, STREAM = 1234, 56


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip(
            "ml_dtypes", reason="ml_dtypes is not installed (pip install ml_dtypes)").bfloat16)
    return np.dtype(name)


def _param_dtype(dt):
    return np.dtype(np.float32) if dt.itemsize == 2 else dt


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _same(a, b):
    """Bitwise equality (so +0 and -0 differ, and NaN payloads count)."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))


def _data(shape, axis, dt, seed):
    rng = np.random.default_rng(seed)
    c = shape[axis]
    pdt = _param_dtype(dt)
    x = (0.5 + 2.0 * rng.standard_normal(shape)).astype(dt)
    r = rng.standard_normal(shape).astype(dt)
    dy = rng.standard_normal(shape).astype(dt)
    w = (1.0 + 0.5 * rng.standard_normal(c)).astype(pdt)
    b = (0.3 * rng.standard_normal(c)).astype(pdt)
    return x, r, dy, w, b


def _composition(x, w, b, axis, r, act, p):
    """The unfused forward: batch_norm_train, then the add and np.maximum in
    x's dtype, then dropnorm.dropout; also t (before the ReLU)."""
    y0, mean, invstd = dropnorm.batch_norm_train(x, w, b, axis=axis)
    t = y0 + r if r is not None else y0
    u = np.maximum(t, np.zeros((), t.dtype)) if act == "relu" else t
    y = dropnorm.dropout(u, p, seed=SEED, stream=STREAM) if p else u
    return y, mean, invstd, t


def _gradient(dy, t, act, p):
    """The unfused backward down to bn's output: dropout_backward, then the
    ReLU's backward (dy where t > 0, +0 elsewhere)."""
    g = dropnorm.dropout_backward(dy, p, seed=SEED, stream=STREAM) if p else dy
    if act == "relu":
        g = np.where(t > 0, g, np.zeros((), g.dtype))
    return g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_fused_is_the_composition_bit_for_bit(dtype, shape, axis):
    _check_composition(dtype, shape, axis, OPTIONS)


# Channels last, the backward makes the gradient in L1 tiles (instead of
# storing it) where the tensor is 16 MiB or more and a task's row at most
# 2 KiB of the compute type (batchnorm_impl.h): row masks of y's gate when
# c is a multiple of 8 (64; 512, one task's row), none otherwise (60); 520
# channels are past the row limit and store it. float64 and float16 at 64.
LARGE = [("float32", (64, 32, 32, 64)), ("float32", (70, 32, 32, 60)),
         ("float32", (8, 32, 32, 512)), ("float32", (8, 32, 32, 520)),
         ("float64", (64, 32, 32, 64)), ("float16", (128, 32, 32, 64))]
LARGE_OPTIONS = [(False, "relu", 0.3), (True, "relu", 0.0), (False, None, 0.3)]


@pytest.mark.parametrize("dtype, shape", LARGE)
def test_fused_backward_tiles_channels_last(dtype, shape):
    _check_composition(dtype, shape, -1, LARGE_OPTIONS)


def _check_composition(dtype, shape, axis, options):
    """Each (residual, activation, p) of options: the fused forward, mask,
    backward (from the mask, and from y or (seed, stream)) and inference
    against the composition of the plain functions, bit for bit."""
    dt = _dtype(dtype)
    x, r0, dy, w, b = _data(shape, axis, dt, seed=len(shape) * 7 + axis)
    for res, act, p in options:
        r = r0 if res else None
        want, mean, invstd, t = _composition(x, w, b, axis, r, act, p)
        rm, rv = np.zeros_like(w), np.ones_like(w)
        rm2, rv2 = np.zeros_like(w), np.ones_like(w)
        dropnorm.batch_norm_train(x, w, b, rm, rv, axis=axis)
        y, m2, i2, mask = dropnorm.batch_norm_train(
            x, w, b, rm2, rv2, axis=axis, residual=r, activation=act, dropout=p, seed=SEED,
            stream=STREAM, return_mask=True)
        where = (dtype, shape, axis, res, act, p)
        assert _same(y, want), where
        assert _same(m2, mean) and _same(i2, invstd) and _same(rm2, rm) and _same(rv2, rv), where
        # the mask: where the gradient passes (t > 0 with the ReLU, and kept)
        passes = np.ones(x.shape, bool)
        if act == "relu":
            passes &= t > 0
        if p:
            keep = np.unpackbits(dropnorm.dropout_mask(x.size, p, seed=SEED, stream=STREAM),
                                 bitorder="little")[:x.size].reshape(x.shape).astype(bool)
            passes &= keep
        assert np.array_equal(mask, np.packbits(passes.ravel(), bitorder="little")), where
        # the backward, from y (with the ReLU), the mask, or (seed, stream)
        g = _gradient(dy, t, act, p)
        wdx, wdw, wdb = dropnorm.batch_norm_backward(g, x, mean, invstd, w, axis=axis)
        sources = [{"mask": mask}]
        sources.append({"y": y} if act == "relu" else {"seed": SEED, "stream": STREAM})
        for src in sources:
            got = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis,
                                               activation=act, residual=res, dropout=p, **src)
            assert len(got) == (4 if res else 3), where
            assert _same(got[0], wdx) and _same(got[1], wdw) and _same(got[2], wdb), (where, src)
            if res:
                assert _same(got[3], g), (where, src)
        # inference: the plain inference, the add, the ReLU
        yi = dropnorm.batch_norm_infer(x, rm, rv, w, b, axis=axis)
        ti = yi + r if res else yi
        wi = np.maximum(ti, np.zeros((), ti.dtype)) if act == "relu" else ti
        gi = dropnorm.batch_norm_infer(x, rm, rv, w, b, axis=axis, residual=r, activation=act)
        assert _same(gi, wi), where


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_in_place_outputs(dtype):
    dt = _dtype(dtype)
    x, r, dy, w, b = _data((5, 4, 33), 1, dt, seed=3)
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b, residual=r, activation="relu",
                                                dropout=0.2, seed=SEED, stream=STREAM)
    for target in ("x", "residual"):
        xc, rc = x.copy(), r.copy()
        out = xc if target == "x" else rc
        got = dropnorm.batch_norm_train(xc, w, b, residual=rc, activation="relu", dropout=0.2,
                                        seed=SEED, stream=STREAM, out=out)[0]
        assert got is out and _same(got, y)
    want = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, activation="relu", y=y,
                                        residual=True, dropout=0.2)
    dyc = dy.copy()
    got = dropnorm.batch_norm_backward(dyc, x, mean, invstd, w, activation="relu", y=y,
                                       residual=True, dropout=0.2, out=dyc)
    assert got[0] is dyc
    for u, v in zip(got, want):
        assert _same(u, v)


def test_drop_everything_and_nan():
    x, r, dy, w, b = _data((8, 3, 10), 1, np.dtype(np.float32), seed=5)
    y, mean, invstd, mask = dropnorm.batch_norm_train(x, w, b, residual=r, activation="relu",
                                                      dropout=1.0, return_mask=True)
    assert _same(y, np.zeros_like(x)) and not mask.any()
    dx, dw, db, dr = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, activation="relu",
                                                  y=y, residual=True, dropout=1.0)
    assert _same(dr, np.zeros_like(x)) and not dw.any() and not db.any()
    # NaN passes the ReLU (as np.maximum), and its gradient is masked (t > 0 is False)
    r2 = r.copy()
    r2[0, 0, 0] = np.nan
    y, mean, invstd, mask = dropnorm.batch_norm_train(x, w, b, residual=r2, activation="relu",
                                                      return_mask=True)
    assert np.isnan(y[0, 0, 0]) and not (mask[0] & 1)


def test_seedless_dropout_draws_from_the_default_generator():
    x, r, dy, w, b = _data((6, 4, 20), 1, np.dtype(np.float32), seed=9)
    dropnorm.manual_seed(77)
    y1 = dropnorm.batch_norm_train(x, w, b, activation="relu", dropout=0.5)[0]
    y2 = dropnorm.batch_norm_train(x, w, b, activation="relu", dropout=0.5)[0]
    assert _same(y1, dropnorm.batch_norm_train(x, w, b, activation="relu", dropout=0.5,
                                               seed=77, stream=0)[0])
    assert _same(y2, dropnorm.batch_norm_train(x, w, b, activation="relu", dropout=0.5,
                                               seed=77, stream=1)[0])


_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, dropnorm
    try:
        import ml_dtypes
        halves = (np.float16, ml_dtypes.bfloat16)
    except ImportError:
        halves = (np.float16,)
    h = hashlib.sha256()
    rng = np.random.default_rng(3)
    for shape, axis in [((16, 5, 96, 97), 1), ((16, 96, 97, 5), -1), ((3000, 70), 1),
                        ((17, 300, 7, 7), 1), ((5, 9, 11, 1030), -1), ((3, 40, 1000), 1),
                        ((8, 16, 6, 7, 9), 1)]:
        for dtype in (np.float32, np.float64) + halves:
            pd = np.float32 if np.dtype(dtype).itemsize == 2 else dtype
            x = (0.5 + rng.standard_normal(shape)).astype(dtype)
            r = rng.standard_normal(shape).astype(dtype)
            dy = rng.standard_normal(shape).astype(dtype)
            c = shape[axis]
            w = (1 + 0.1 * rng.standard_normal(c)).astype(pd)
            for act, p in ((None, 0.25), ("relu", 0.25), ("relu", 0.0)):
                y, m, s, mask = dropnorm.batch_norm_train(
                    x, w, None, axis=axis, residual=r, activation=act, dropout=p, seed=9,
                    stream=4, return_mask=True)
                grads = dropnorm.batch_norm_backward(
                    dy, x, m, s, w, axis=axis, activation=act, y=y, residual=True, dropout=p,
                    seed=9, stream=4)
                yi = dropnorm.batch_norm_infer(x, m, s, w, axis=axis, residual=r,
                                               activation=act)
                for a in (y, m, s, mask, yi) + tuple(grads):
                    h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    # 16 MiB of float32 channels last: the backward's tiles, from y, the mask and Philox
    for shape in ((64, 32, 32, 64), (8, 32, 32, 512)):
        x = (0.5 + rng.standard_normal(shape)).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        w = (1 + 0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
        for act in (None, "relu"):
            y, m, s, mask = dropnorm.batch_norm_train(x, w, None, axis=-1, activation=act,
                                                      dropout=0.25, seed=9, stream=4,
                                                      return_mask=True)
            gate = {"y": y} if act else {"seed": 9, "stream": 4}
            for src in (gate, {"mask": mask}):
                grads = dropnorm.batch_norm_backward(dy, x, m, s, w, axis=-1, activation=act,
                                                     dropout=0.25, **src)
                for a in (y, mask) + tuple(grads):
                    h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    print(dropnorm.get_max_threads(), h.hexdigest())
""")


def _digest(threads, cap):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("DROPNORM_SIMD", None)
    if cap is not None:
        env["DROPNORM_SIMD"] = cap
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


def test_same_bits_for_every_thread_count_and_variant():
    digests = {}
    for threads, cap in [(1, None), (2, None), (3, None), (2, "portable"), (2, "avx2"),
                         (2, "avx512")]:
        used, digest = _digest(threads, cap)
        if dropnorm.build_info()["openmp"]:
            assert int(used) == threads
        digests[(threads, cap)] = digest
    assert len(set(digests.values())) == 1, digests


# ---- bad arguments: an error names the argument and changes nothing -------------------

def _plain():
    x, r, dy, w, b = _data((6, 4, 5), 1, np.dtype(np.float32), seed=1)
    return x, r, dy, w, b


@pytest.mark.parametrize("kwargs, exc, text", [
    ({"residual": np.ones((6, 4, 4), np.float32)}, ValueError, "residual"),
    ({"residual": np.ones((6, 4, 5), np.float64)}, TypeError, "residual"),
    ({"activation": "gelu"}, ValueError, "activation"),
    ({"activation": 1}, TypeError, "activation"),
    ({"dropout": 1.5}, ValueError, "dropout"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"dropout": float("nan")}, ValueError, "dropout"),
    ({"dropout": "0.5"}, TypeError, "dropout"),
    ({"seed": -1, "dropout": 0.5}, ValueError, "seed"),
    ({"return_mask": "yes"}, TypeError, "return_mask"),
])
def test_train_rejects_bad_arguments_and_changes_nothing(kwargs, exc, text):
    x, r, dy, w, b = _plain()
    rm, rv, out = np.zeros(4, np.float32), np.ones(4, np.float32), np.full_like(x, 7.0)
    with pytest.raises(exc, match=text):
        dropnorm.batch_norm_train(x, w, b, rm, rv, out=out, **kwargs)
    assert not rm.any() and (rv == 1).all() and (out == 7).all()
    infer_kwargs = {k: v for k, v in kwargs.items() if k in ("residual", "activation")}
    if infer_kwargs:
        with pytest.raises(exc, match=text):
            dropnorm.batch_norm_infer(x, rm, rv, w, b, out=out, **infer_kwargs)
        assert (out == 7).all()


def test_aliasing_rules():
    x, r, dy, w, b = _plain()
    # out may be x or residual exactly, never part of another argument
    rr = np.zeros(x.size + 1, np.float32)
    res_view, out_view = rr[:-1].reshape(x.shape), rr[1:].reshape(x.shape)
    res_view[...] = r
    with pytest.raises(ValueError, match="out"):
        dropnorm.batch_norm_train(x, w, b, residual=res_view, activation="relu", out=out_view)
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b, residual=r, activation="relu")
    # the fused backward's out may be dy, not x or y
    for other in (x, y):
        keep = other.copy()
        with pytest.raises(ValueError, match="out"):
            dropnorm.batch_norm_backward(dy, x, mean, invstd, w, activation="relu", y=y,
                                         out=other)
        assert _same(other, keep)


@pytest.mark.parametrize("kwargs, exc, text", [
    ({"activation": "relu"}, ValueError, "y"),
    ({"activation": "relu", "y": np.ones((6, 4, 4), np.float32)}, ValueError, "y"),
    ({"activation": "relu", "y": np.ones((6, 4, 5), np.float64)}, TypeError, "y"),
    ({"activation": "relu", "mask": np.ones(3, np.uint8)}, ValueError, "mask"),
    ({"activation": "relu", "mask": np.ones(15, np.int32)}, TypeError, "mask"),
    ({"dropout": 0.5}, ValueError, "seed"),
    ({"dropout": 2.0, "seed": 1}, ValueError, "dropout"),
    ({"activation": "tanh"}, ValueError, "activation"),
    ({"residual": "yes"}, TypeError, "residual"),
])
def test_backward_rejects_bad_arguments(kwargs, exc, text):
    x, r, dy, w, b = _plain()
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b)
    out = np.full_like(x, 7.0)
    with pytest.raises(exc, match=text):
        dropnorm.batch_norm_backward(dy, x, mean, invstd, w, out=out, **kwargs)
    assert (out == 7).all()


# ---- layers ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls, shape", [(dropnorm.BatchNorm1d, (16, 4, 9)),
                                        (dropnorm.BatchNorm2d, (4, 4, 5, 6)),
                                        (dropnorm.BatchNorm3d, (2, 4, 3, 5, 6))])
@pytest.mark.parametrize("axis", [1, -1])
def test_layer_runs_the_fused_block(cls, shape, axis):
    if axis == -1:
        shape = (shape[0],) + shape[2:] + (shape[1],)
    x, r, dy, w, b = _data(shape, axis, np.dtype(np.float32), seed=21)
    layer = cls(4, axis=axis, activation="relu")
    plain = cls(4, axis=axis)
    layer.weight[...], layer.bias[...] = w, b
    plain.weight[...], plain.bias[...] = w, b
    # training, with a shortcut
    y = layer.forward(x, residual=r)
    t = plain.forward(x) + r
    assert _same(y, np.maximum(t, np.float32(0)))
    assert _same(layer.running_mean, plain.running_mean)
    assert _same(layer.running_var, plain.running_var)
    dx, dres = layer.backward(dy)
    g = np.where(t > 0, dy, np.float32(0))
    assert _same(dres, g) and _same(dx, plain.backward(g))
    assert _same(layer.grad_weight, plain.grad_weight)
    assert _same(layer.grad_bias, plain.grad_bias)
    # without a shortcut, backward returns dx alone
    y = layer(x)
    t = plain(x)
    assert _same(y, np.maximum(t, np.float32(0)))
    assert _same(layer.backward(dy), plain.backward(np.where(t > 0, dy, np.float32(0))))
    # eval
    layer.eval()
    plain.eval()
    y = layer.forward(x, residual=r)
    t = plain.forward(x) + r
    assert _same(y, np.maximum(t, np.float32(0)))
    dx, dres = layer.backward(dy)
    g = np.where(t > 0, dy, np.float32(0))
    assert _same(dres, g) and _same(dx, plain.backward(g))
    # a copy keeps the activation
    assert copy.deepcopy(layer).activation == "relu" and "activation='relu'" in repr(layer)


def test_layer_fold_into_and_calibrate_with_activation():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((64, 3))
    lin_w, lin_b = rng.standard_normal((5, 3)), rng.standard_normal(5)
    batches = [(z[i::4] @ lin_w.T + lin_b).astype(np.float32) for i in range(4)]
    layer = dropnorm.BatchNorm1d(5, activation="relu")
    plain = dropnorm.BatchNorm1d(5)
    layer.weight[...] = plain.weight[...] = rng.standard_normal(5).astype(np.float32)
    layer.calibrate(batches)
    plain.calibrate(batches)
    assert _same(layer.running_mean, plain.running_mean)
    assert _same(layer.running_var, plain.running_var)
    assert layer.num_batches_tracked == 4
    layer.eval()
    x = (z @ lin_w.T + lin_b).astype(np.float32)
    w2, b2 = layer.fold_into(lin_w.astype(np.float32), lin_b)
    # the folded linear layer, then the activation, is the layer's output
    folded = np.maximum(z.astype(np.float32) @ w2.T + b2, 0)
    np.testing.assert_allclose(folded, layer(x), rtol=1e-4, atol=1e-4)


def test_layer_rejects_a_bad_activation_and_residual():
    with pytest.raises(ValueError, match="activation"):
        dropnorm.BatchNorm2d(3, activation="sigmoid")
    with pytest.raises(TypeError, match="activation"):
        dropnorm.BatchNorm2d(3, activation=True)
    layer = dropnorm.BatchNorm2d(3, activation="relu")
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="residual"):
        layer.forward(x, residual=np.ones((2, 3, 4, 5), np.float32))
    assert layer.num_batches_tracked == 0
