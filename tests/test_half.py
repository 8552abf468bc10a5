"""The half types, float16 and bfloat16 (ml_dtypes), against the float64
oracle on the same half-precision inputs, and against the float32 kernels.

Issue 17's laws: batch-norm training forward, inference and dropout give
the exact result rounded once to the storage type, give or take one
neighbouring value; the backward's dx is within a few units in the last
place of the largest |dx|; dropout masks are bitwise the float32 masks and
kept values the float32 result rounded once. Per-channel arrays (weight,
bias, running and saved statistics, their gradients) are float32. Every
instruction-set variant and thread count gives the same bits."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import dropnorm
from dropnorm import _checks

import oracle

HALF = ["float16", "bfloat16"]
# (N, C, *spatial): no spatial dims, 1-D, 2-D, 3-D, odd sizes
SHAPES = [(8, 3), (2, 7), (4, 5, 13), (3, 1, 17), (2, 3, 5, 7), (1, 6, 11, 3), (3, 2, 3, 5, 2),
          (33, 5, 49), (2, 300, 3)]


def half_dtype(name):
    """np.float16, or ml_dtypes.bfloat16 (the test is skipped without it)."""
    if name == "float16":
        return np.dtype(np.float16)
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)


def wide(a):
    """Half-precision values as float64, exactly (from their bits)."""
    a = np.asarray(a)
    return oracle.half_value(bits(a), a.dtype.name).reshape(a.shape)


def rounded(v, name):
    """float64 values rounded once to the half type, as its bit patterns."""
    return oracle.round_half(v, name)


def neighbours(got, want_bits):
    """How many values apart each half result is from the wanted bits (NaN
    and NaN are 0 apart)."""
    g, w = bits(got).reshape(-1), np.asarray(want_bits).reshape(-1)
    d = np.abs(oracle.half_ordinal(g) - oracle.half_ordinal(w))
    gnan, wnan = np.isnan(oracle.half_value(g, got.dtype.name)), np.isnan(
        oracle.half_value(w, got.dtype.name))
    return np.where(gnan | wnan, np.where(gnan == wnan, 0, 1 << 20), d)


def assert_rounded_once(y, exact, terms, name, exact_share=0.98):
    """y (a half type) is the exact result rounded once, give or take one
    neighbouring value, wherever float32's own rounding is below half a unit
    of the half type; where a result is much smaller than the terms it came
    from (cancellation: gamma*(x - mean)*invstd against beta), it is within
    float32's error bound, a few units of 2**-24 of |terms|. Most results
    (exact_share) are exactly the rounded exact result."""
    d = neighbours(y, rounded(exact, y.dtype.name))
    err = np.abs(wide(y).reshape(-1) - np.asarray(exact, np.float64).reshape(-1))
    bound = 2.0**-21 * np.asarray(terms, np.float64).reshape(-1)
    both_nan = np.isnan(err) & np.isnan(np.asarray(exact, np.float64).reshape(-1))
    ok = (d <= 1) | (err <= bound) | both_nan
    assert ok.all(), (d[~ok][:5], err[~ok][:5], bound[~ok][:5])
    assert (d == 0).mean() >= exact_share


def train_terms(xw, weight, bias, axis):
    """|gamma*(x - mean)*invstd| + |beta| of each output (float64)."""
    xhat = oracle.bn_train(xw, None, None, axis=axis)[0]
    c = xw.shape[axis]
    shape = [1] * xw.ndim
    shape[axis] = c
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    return np.abs(xhat * w.reshape(shape)) + np.abs(b.reshape(shape))


def infer_terms(xw, rm, rv, weight, bias, axis, eps=1e-5):
    """|a*x| + |b - rm*a| with a = gamma/sqrt(rv + eps): the terms of y = a*x + b'."""
    c = xw.shape[axis]
    shape = [1] * xw.ndim
    shape[axis] = c
    a = np.asarray(weight, np.float64) / np.sqrt(np.asarray(rv, np.float64) + eps)
    shift = np.asarray(bias, np.float64) - np.asarray(rm, np.float64) * a
    return np.abs(xw * a.reshape(shape)) + np.abs(shift.reshape(shape))


def ulp(v, name):
    """The unit in the last place of a half of magnitude v."""
    mant, bias = oracle.HALF_FORMATS[name]
    _, e = np.frexp(v)
    return np.ldexp(1.0, max(e - 1, 1 - bias) - mant)


def data(shape, dt, seed=0, scale=2.0, shift=0.5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + shift).astype(dt)


def params(c, seed=1):
    rng = np.random.default_rng(seed)
    return ((1 + 0.5 * rng.standard_normal(c)).astype(np.float32),
            rng.standard_normal(c).astype(np.float32))


def axes(shape):
    return [1, -1] if len(shape) > 2 else [1]


def cases():
    return [(name, shape, axis) for name in HALF for shape in SHAPES for axis in axes(shape)]


# ---- the oracle's rounding -------------------------------------------------------------

def test_oracle_rounding_agrees_with_numpy_and_ml_dtypes():
    """The oracle's own rounding rule against NumPy's float64 -> float16 and
    ml_dtypes' float32 -> bfloat16 (both round to nearest even), and every
    half value decoded and rounded back to itself."""
    rng = np.random.default_rng(5)
    every = np.arange(65536).astype(np.uint16)
    v = rng.standard_normal(200_000) * np.exp(rng.uniform(-25, 12, 200_000))
    with np.errstate(over="ignore"):
        assert np.array_equal(oracle.round_half(v, "float16"), v.astype(np.float16).view(np.uint16))
    val = oracle.half_value(every, "float16")
    assert np.array_equal(val, every.view(np.float16).astype(np.float64), equal_nan=True)
    ok = ~np.isnan(val)
    assert np.array_equal(oracle.round_half(val, "float16")[ok], every[ok])
    ml_dtypes = pytest.importorskip("ml_dtypes")
    f = (rng.standard_normal(200_000) * np.exp(rng.uniform(-88, 88, 200_000)))
    with np.errstate(over="ignore"):
        f = f.astype(np.float32)  # the largest become infinities
    assert np.array_equal(oracle.round_half(f.astype(np.float64), "bfloat16"),
                          f.astype(ml_dtypes.bfloat16).view(np.uint16))
    val = oracle.half_value(every, "bfloat16")
    ok = ~np.isnan(val)
    assert np.array_equal(oracle.round_half(val, "bfloat16")[ok], every[ok])


# ---- batch norm against the oracle -------------------------------------------------------

@pytest.mark.parametrize("name,shape,axis", cases())
def test_train_is_the_exact_result_rounded_once(name, shape, axis):
    dt = half_dtype(name)
    full = shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x = data(full, dt)
    c = shape[1]
    w, b = params(c)
    rm, rv = np.full(c, 0.25, np.float32), np.full(c, 2.0, np.float32)
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b, rm, rv, momentum=0.2, axis=axis)
    assert y.dtype == dt and y.shape == x.shape
    assert mean.dtype == invstd.dtype == rm.dtype == rv.dtype == np.float32
    xw = wide(x)
    want, omean, oinvstd = oracle.bn_train(xw, w, b, axis=axis)
    assert_rounded_once(y, want, train_terms(xw, w, b, axis), name)
    np.testing.assert_allclose(mean, omean, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(invstd, oinvstd, rtol=2e-7)
    orm, orv = oracle.bn_running_update(np.full(c, 0.25), np.full(c, 2.0), xw, 0.2, axis)
    np.testing.assert_allclose(rm, orm, rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(rv, orv, rtol=2e-7)


@pytest.mark.parametrize("name,shape,axis", cases())
def test_infer_is_the_exact_result_rounded_once(name, shape, axis):
    dt = half_dtype(name)
    full = shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x = data(full, dt, seed=2)
    c = shape[1]
    w, b = params(c, 3)
    rm = np.linspace(-1, 1, c).astype(np.float32)
    rv = np.linspace(0.5, 3, c).astype(np.float32)
    y = dropnorm.batch_norm_infer(x, rm, rv, w, b, axis=axis)
    assert y.dtype == dt
    assert_rounded_once(y, oracle.bn_infer(wide(x), rm, rv, w, b, axis=axis),
                        infer_terms(wide(x), rm, rv, w, b, axis), name)


@pytest.mark.parametrize("name,shape,axis", cases())
def test_backward_within_ulps_of_the_largest_dx(name, shape, axis):
    dt = half_dtype(name)
    full = shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x, dy = data(full, dt, seed=4), data(full, dt, seed=5, scale=1.0, shift=0.0)
    w, _ = params(shape[1], 6)
    _, mean, invstd = dropnorm.batch_norm_train(x, axis=axis)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    assert dx.dtype == dt and dw.dtype == db.dtype == np.float32
    odx, odw, odb = oracle.bn_backward(wide(dy), wide(x), w, axis=axis)
    big = np.abs(odx).max()
    assert np.abs(wide(dx) - odx).max() <= 4 * ulp(big, name)
    m = x.size // shape[1]
    np.testing.assert_allclose(db, odb, rtol=1e-5, atol=1e-5 * m)
    np.testing.assert_allclose(dw, odw, rtol=1e-5, atol=1e-5 * np.sqrt(m))


@pytest.mark.parametrize("name,shape,axis", cases()[::3])
def test_infer_backward(name, shape, axis):
    dt = half_dtype(name)
    full = shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x, dy = data(full, dt, seed=7), data(full, dt, seed=8, scale=1.0, shift=0.0)
    c = shape[1]
    w, _ = params(c, 9)
    rm, rv = np.linspace(-1, 1, c).astype(np.float32), np.linspace(0.5, 3, c).astype(np.float32)
    dx, dw, db = dropnorm.batch_norm_infer_backward(dy, x, rm, rv, w, axis=axis)
    odx, odw, odb = oracle.bn_infer_backward(wide(dy), wide(x), rm, rv, w, axis=axis)
    assert neighbours(dx, rounded(odx, name)).max() <= 1  # a product: no cancellation
    np.testing.assert_allclose(db, odb, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, odw, rtol=1e-5, atol=1e-4)


def _as_half(y32, dt):
    """float32 results rounded once to the half type (by the oracle's rule)."""
    return rounded(y32.astype(np.float64), dt.name).view(dt).reshape(y32.shape)


@pytest.mark.parametrize("name,shape,axis", cases())
def test_the_float32_kernels_rounded_once(name, shape, axis):
    """A half type computes as float32 does on its values, bit for bit, and
    rounds once: every output is the float32 kernel's, rounded."""
    dt = half_dtype(name)
    full = shape if axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x, dy = data(full, dt, seed=10), data(full, dt, seed=11, scale=1.0, shift=0.0)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    w, b = params(shape[1], 12)
    y, mean, invstd = dropnorm.batch_norm_train(x, w, b, axis=axis)
    y32, mean32, invstd32 = dropnorm.batch_norm_train(x32, w, b, axis=axis)
    assert np.array_equal(bits(y), bits(_as_half(y32, dt)))
    assert np.array_equal(mean, mean32) and np.array_equal(invstd, invstd32)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
    dx32, dw32, db32 = dropnorm.batch_norm_backward(dy32, x32, mean, invstd, w, axis=axis)
    assert np.array_equal(bits(dx), bits(_as_half(dx32, dt)))
    assert np.array_equal(dw, dw32) and np.array_equal(db, db32)
    y = dropnorm.batch_norm_infer(x, mean, 1 / invstd**2, w, b, axis=axis)
    y32 = dropnorm.batch_norm_infer(x32, mean, 1 / invstd**2, w, b, axis=axis)
    assert np.array_equal(bits(y), bits(_as_half(y32, dt)))


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("axis", [1, -1])
def test_a_large_batch_rounded_once(name, axis):
    """(16, 64, 30, 30): almost a million outputs, so that some are results of
    cancellation (gamma*(x - mean)*invstd against beta), which float32 gives
    to within its own rounding of the terms, not to one neighbour."""
    dt = half_dtype(name)
    shape = (16, 64, 30, 30) if axis == 1 else (16, 30, 30, 64)
    x = data(shape, dt, seed=25)
    w, b = params(64, 26)
    y, _, _ = dropnorm.batch_norm_train(x, w, b, axis=axis)
    xw = wide(x)
    assert_rounded_once(y, oracle.bn_train(xw, w, b, axis=axis)[0], train_terms(xw, w, b, axis),
                        name, exact_share=0.999)


@pytest.mark.parametrize("name", HALF)
def test_mean_much_larger_than_std(name):
    """The exact statistics: |mean| >> std costs no accuracy."""
    dt = half_dtype(name)
    centre, spread = (1000.0, 4.0) if name == "float16" else (300.0, 8.0)
    rng = np.random.default_rng(13)
    x = (centre + spread * rng.uniform(-1, 1, (16, 4, 100))).astype(dt)
    y, mean, invstd = dropnorm.batch_norm_train(x)
    want, omean, oinvstd = oracle.bn_train(wide(x))
    assert_rounded_once(y, want, train_terms(wide(x), None, None, 1), name)
    # float32's statistics: the deviations are summed in float over blocks
    np.testing.assert_allclose(invstd, oinvstd, rtol=1e-6)
    np.testing.assert_allclose(mean, oracle.bn_stats(wide(x))[0], rtol=2e-7)


@pytest.mark.parametrize("name", HALF)
def test_values_at_the_limits(name):
    """binary16 inputs near +-65504 and subnormal ones; outputs that overflow
    to infinity (weight 5e4: float16 overflows above 65504) and subnormal
    outputs (a tiny weight); a NaN makes its channel NaN. bfloat16: values
    far outside binary16's range, subnormal inputs and outputs. (bfloat16
    has float32's range, and computes as float32 does: a block's squared
    deviations must stay finite in float32, std below about 1e17.)"""
    dt = half_dtype(name)
    rng = np.random.default_rng(14)
    if name == "float16":
        x = np.concatenate([rng.uniform(6.0e4, 65504, (8, 1, 50)),
                            -rng.uniform(6.0e4, 65504, (8, 1, 50)),
                            rng.uniform(-1, 1, (8, 1, 50)) * 2.0**-20,  # subnormal inputs
                            rng.standard_normal((8, 1, 50)),
                            rng.standard_normal((8, 1, 50))], axis=1).astype(dt)
        w = np.array([1, 1, 1, 5e4, 1e-6], np.float32)
    else:
        x = np.concatenate([rng.uniform(1e15, 3e15, (8, 1, 50)),
                            rng.uniform(-1, 1, (8, 1, 50)) * 1e-30,
                            rng.uniform(-1, 1, (8, 1, 50)) * 1e-38,  # subnormal inputs
                            rng.standard_normal((8, 1, 50)),
                            rng.standard_normal((8, 1, 50))], axis=1).astype(dt)
        w = np.array([1, 1, 1, 5e37, 1e-38], np.float32)
    x[3, 4, 7] = np.nan
    b = np.zeros(5, np.float32)
    y, _, _ = dropnorm.batch_norm_train(x, w, b)
    assert_rounded_once(y, oracle.bn_train(wide(x), w, b)[0], train_terms(wide(x), w, b, 1),
                        name, exact_share=0.95)
    yw = wide(y)
    assert np.isnan(yw[:, 4]).all() and not np.isnan(yw[:, :4]).any()
    if name == "float16":
        assert np.isinf(yw[:, 3]).any()  # overflow to infinity
    mant, bias = oracle.HALF_FORMATS[name]
    assert ((np.abs(yw) < 2.0 ** (1 - bias)) & (yw != 0)).any()  # subnormal results
    # dropout: kept values that overflow when scaled, and subnormal ones
    d, mask = dropnorm.dropout(x, 0.5, seed=3, return_mask=True)
    d32 = dropnorm.dropout(x.astype(np.float32), 0.5, seed=3)
    assert np.array_equal(bits(d), bits(_as_half(d32, dt)))


# ---- dropout ------------------------------------------------------------------------

@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("channelwise,axis,shape", [(False, 1, (1000,)), (False, 1, (7, 9, 11)),
                                                    (True, 1, (6, 5, 31)),
                                                    (True, -1, (6, 4, 3, 5)),
                                                    (True, 1, (9, 3))])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_masks_and_kept_values(name, channelwise, axis, shape, mode):
    """The mask is the float32 one (and the oracle's); kept values are the
    float32 product rounded once (x's bits in classic mode); dropped +0."""
    dt = half_dtype(name)
    x = data(shape, dt, seed=15, scale=10.0, shift=0.0)
    p = 0.3
    y, mask = dropnorm.dropout(x, p, seed=9, stream=4, mode=mode, channelwise=channelwise,
                               axis=axis, return_mask=True)
    y32, mask32 = dropnorm.dropout(x.astype(np.float32), p, seed=9, stream=4, mode=mode,
                                   channelwise=channelwise, axis=axis, return_mask=True)
    assert y.dtype == dt
    assert np.array_equal(mask, mask32)
    nbits = oracle.dropout_decisions(x, channelwise, axis)
    assert np.array_equal(mask, oracle.dropout_mask(nbits, p, 9, 4))
    keep = oracle._keep_like(x, oracle.unpack_mask(mask, nbits), channelwise, axis)
    scale = np.float32(1 / (1 - p)) if mode == "inverted" else np.float32(1)
    product = (x.astype(np.float32) * scale).astype(np.float64)
    want = np.where(keep, rounded(product, name).reshape(x.shape), 0)
    assert np.array_equal(bits(y), want.astype(np.uint16))
    if mode == "classic":
        assert np.array_equal(bits(y)[keep], bits(x)[keep])
    # the same from the stored mask, and the backward regenerated or from the mask
    assert np.array_equal(bits(dropnorm.dropout_apply_mask(x, mask, p, mode, channelwise, axis)),
                          bits(y))
    assert np.array_equal(bits(dropnorm.dropout_backward(x, p, 9, 4, mode, channelwise, axis)),
                          bits(y))
    assert np.array_equal(bits(dropnorm.dropout_backward(x, p, 9, 4, mode, channelwise, axis,
                                                         mask=mask)), bits(y))
    assert np.array_equal(bits(y), bits(_as_half(y32, dt)))


@pytest.mark.parametrize("name", HALF)
def test_dropout_inference_and_extremes(name):
    dt = half_dtype(name)
    x = data((5, 40), dt, seed=16)
    assert np.array_equal(bits(dropnorm.dropout(x, 0.25, training=False)), bits(x))
    classic = dropnorm.dropout(x, 0.25, mode="classic", training=False)
    product = (x.astype(np.float32) * np.float32(0.75)).astype(np.float64)
    assert np.array_equal(bits(classic), rounded(product, name).reshape(x.shape))
    assert np.array_equal(bits(dropnorm.dropout(x, 0.0, seed=1)), bits(x))
    assert not bits(dropnorm.dropout(x, 1.0, seed=1)).any()


# ---- determinism: variants and threads ---------------------------------------------

_VARIANT_SCRIPT = r"""
import hashlib, json, sys
import numpy as np
import dropnorm
names = ["float16"]
try:
    import ml_dtypes
    names.append("bfloat16")
except ImportError:
    pass
out = {"half": dropnorm.build_info()["kernel_variants"]["half"]}
for name in names:
    dt = np.float16 if name == "float16" else ml_dtypes.bfloat16
    h = hashlib.sha256()
    for shape, axis in [((64, 16, 300), 1), ((40, 7, 9, 300), -1), ((500, 37), 1),
                        ((8, 700, 5), -1)]:
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(shape) * 3 + 1).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        w = np.linspace(0.5, 2, x.shape[axis]).astype(np.float32)
        y, m, s = dropnorm.batch_norm_train(x, w, w, axis=axis)
        dx, dw, db = dropnorm.batch_norm_backward(dy, x, m, s, w, axis=axis)
        yi = dropnorm.batch_norm_infer(x, m, s, w, w, axis=axis)
        dxi, _, _ = dropnorm.batch_norm_infer_backward(dy, x, m, s, w, axis=axis)
        d, mask = dropnorm.dropout(x, 0.4, seed=5, stream=2, return_mask=True)
        dc = dropnorm.dropout(x, 0.4, seed=5, channelwise=True, axis=axis)
        for a in (y, m, s, dx, dw, db, yi, dxi, d, mask, dc):
            h.update(np.ascontiguousarray(a).view(np.uint8).tobytes())
    out[name] = h.hexdigest()
print(json.dumps(out))
"""


def _variant_run(cap):
    env = dict(os.environ)
    env.pop("DROPNORM_SIMD", None)
    if cap:
        env["DROPNORM_SIMD"] = cap
    proc = subprocess.run([sys.executable, "-c", _VARIANT_SCRIPT], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


def test_every_variant_gives_the_same_bits():
    """portable C, AVX2 with F16C, AVX-512 (bfloat16 in integers) and
    AVX512-BF16 (vcvtneps2bf16), wherever this CPU has them."""
    runs = {cap: _variant_run(cap) for cap in ("portable", "avx2", "avx512", None)}
    first = runs["portable"]
    assert first["half"] == "portable"
    for cap, run in runs.items():
        assert {k: v for k, v in run.items() if k != "half"} == \
            {k: v for k, v in first.items() if k != "half"}, cap


@pytest.mark.parametrize("name", HALF)
def test_every_thread_count_gives_the_same_bits(name):
    dt = half_dtype(name)
    x = data((64, 16, 700), dt, seed=17)
    results = []
    for threads in (1, 2):
        dropnorm.set_num_threads(threads)
        try:
            y, m, s = dropnorm.batch_norm_train(x, axis=-1)
            dx, dw, db = dropnorm.batch_norm_backward(x, x, m, s, axis=-1)
            d = dropnorm.dropout(x, 0.5, seed=1)
            results.append([bits(y), m, s, bits(dx), dw, db, bits(d)])
        finally:
            dropnorm.set_num_threads(os.cpu_count() or 1)
    for a, b in zip(*results):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8))


# ---- arrays: out=, in place, shards ------------------------------------------------------

@pytest.mark.parametrize("name", HALF)
def test_out_and_in_place(name):
    dt = half_dtype(name)
    x = data((6, 4, 33), dt, seed=18)
    y, m, s = dropnorm.batch_norm_train(x)
    z = x.copy()
    dropnorm.batch_norm_train(z, out=z)
    assert np.array_equal(bits(z), bits(y))
    out = np.empty_like(x)
    assert dropnorm.batch_norm_infer(x, m, s, out=out) is out
    with pytest.raises(TypeError, match="^out"):
        dropnorm.batch_norm_train(x, out=np.empty(x.shape, np.float32))
    d = x.copy()
    dropnorm.dropout(d, 0.5, seed=2, out=d)
    assert np.array_equal(bits(d), bits(dropnorm.dropout(x, 0.5, seed=2)))


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("axis", [1, -1])
def test_one_shard_is_the_whole_batch(name, axis):
    dt = half_dtype(name)
    x, dy = data((5, 6, 7, 3), dt, seed=19), data((5, 6, 7, 3), dt, seed=20)
    c = x.shape[axis]
    w, b = params(c, 21)
    y, m, s = dropnorm.batch_norm_train(x, w, b, axis=axis)
    stats = dropnorm.batch_norm_partial_stats(x, axis=axis)
    mean, var, vu = dropnorm.batch_norm_merge_stats(stats[None])
    y2, m2, s2 = dropnorm.batch_norm_forward_apply(x, mean, var, w, b, var_unbiased=vu,
                                                   axis=axis)
    assert np.array_equal(bits(y), bits(y2)) and np.array_equal(m, m2) and np.array_equal(s, s2)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, m, s, w, axis=axis)
    sums = dropnorm.batch_norm_backward_reduce(dy, x, m, axis=axis)
    dx2, dw2, db2 = dropnorm.batch_norm_backward_apply(dy, x, m, s, sums, x.size // c, w,
                                                       axis=axis)
    assert np.array_equal(bits(dx), bits(dx2))
    assert np.array_equal(dw, dw2) and np.array_equal(db, db2)


# ---- dtypes and their errors -------------------------------------------------------------

@pytest.mark.parametrize("name", HALF)
def test_per_channel_arrays_are_float32(name):
    dt = half_dtype(name)
    x = data((4, 3, 5), dt)
    with pytest.raises(TypeError, match="^weight: dtype .* float32, the dtype of the per-channel"):
        dropnorm.batch_norm_train(x, weight=np.ones(3, dt))
    with pytest.raises(TypeError, match="^running_mean"):
        dropnorm.batch_norm_train(x, running_mean=np.zeros(3, np.float64))
    with pytest.raises(TypeError, match="^dy"):
        dropnorm.batch_norm_backward(x.astype(np.float32), x, np.zeros(3, np.float32),
                                     np.ones(3, np.float32))
    # a big-endian float16 input is read (copied), as a byte-swapped float32 one is
    if name == "float16":
        y = dropnorm.batch_norm_train(x.astype(">f2"))[0]
        assert y.dtype == np.float16
        assert np.array_equal(bits(y), bits(dropnorm.batch_norm_train(x)[0]))


def test_uint16_bits_are_refused_with_a_hint():
    x = np.zeros((4, 3), np.uint16)
    with pytest.raises(TypeError, match=r"x: expected .*float16 or bfloat16.*view\(ml_dtypes"):
        dropnorm.batch_norm_train(x)
    with pytest.raises(TypeError, match="^x: expected"):
        dropnorm.dropout(np.zeros(4, np.int8), 0.5)


def test_a_bfloat16_that_is_not_ml_dtypes():
    """A dtype named bfloat16 from another package: refused, naming it and
    what to pass (dropnorm reads ml_dtypes' bfloat16 only)."""
    fake = types.SimpleNamespace(name="bfloat16", type=type("bfloat16", (), {}))
    fake.type.__module__ = "tensorflow.python.framework"
    err = _checks._dtype_error("x", fake)
    assert isinstance(err, TypeError)
    text = str(err)
    assert text.startswith("x: ") and "tensorflow" in text and "ml_dtypes" in text


def test_bfloat16_without_ml_dtypes():
    """Without ml_dtypes: a layer asked for "bfloat16" says what to install,
    and the message for a bfloat16 array from elsewhere does too."""
    script = textwrap.dedent("""
        import sys
        sys.modules["ml_dtypes"] = None  # not importable
        import types
        import dropnorm
        from dropnorm import _checks
        try:
            dropnorm.BatchNorm1d(3, dtype="bfloat16")
        except ImportError as e:
            print("layer:", e)
        fake = types.SimpleNamespace(name="bfloat16", type=type("bfloat16", (), {}))
        fake.type.__module__ = "somepackage"
        print("array:", _checks._dtype_error("x", fake))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert "layer: bfloat16 needs the package ml_dtypes" in out and "pip install" in out
    assert "array: x: a bfloat16 array (dtype from somepackage) needs the package ml_dtypes" in out


# ---- layers -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("layer,shape", [("BatchNorm1d", (8, 4)), ("BatchNorm1d", (8, 4, 9)),
                                         ("BatchNorm2d", (4, 4, 5, 6)),
                                         ("BatchNorm3d", (2, 4, 3, 4, 5))])
def test_batchnorm_layers_keep_float32_parameters(name, layer, shape):
    dt = half_dtype(name)
    bn = getattr(dropnorm, layer)(4, dtype=dt)
    assert bn.dtype == dt and bn.param_dtype == np.float32
    assert bn.weight.dtype == bn.bias.dtype == bn.running_mean.dtype == np.float32
    x, dy = data(shape, dt, seed=22), data(shape, dt, seed=23)
    y = bn.forward(x)
    want, m, s = dropnorm.batch_norm_train(x, np.ones(4, np.float32), np.zeros(4, np.float32))
    assert y.dtype == dt and np.array_equal(bits(y), bits(want))
    dx = bn.backward(dy)
    assert dx.dtype == dt and bn.grad_weight.dtype == bn.grad_bias.dtype == np.float32
    state = bn.state_dict()
    assert all(v.dtype == np.float32 for k, v in state.items() if k != "num_batches_tracked")
    rm = bn.running_mean.copy()
    bn.eval()
    assert np.array_equal(bits(bn.forward(x)),
                          bits(dropnorm.batch_norm_infer(x, rm, bn.running_var, bn.weight,
                                                         bn.bias)))
    other = getattr(dropnorm, layer)(4, dtype=dt)
    other.load_state_dict(state)
    assert np.array_equal(other.running_var, bn.running_var)
    assert other.running_var.dtype == np.float32
    with pytest.raises(TypeError, match="x: dtype"):
        bn.forward(x.astype(np.float32))
    assert f"dtype={name}" in repr(bn)


@pytest.mark.parametrize("name", HALF)
def test_dropout_layers_take_half_inputs(name):
    dt = half_dtype(name)
    x = data((4, 3, 5, 5), dt, seed=24)
    layer = dropnorm.Dropout2d(0.5, seed=7)
    y = layer.forward(x)
    assert y.dtype == dt
    assert np.array_equal(bits(layer.backward(x)), bits(y))


def test_layer_dtype_names():
    assert dropnorm.BatchNorm1d(2, dtype="float16").param_dtype == np.float32
    assert dropnorm.BatchNorm1d(2, dtype=np.float64).param_dtype == np.float64
    with pytest.raises(TypeError, match="dtype: expected float32, float64, float16 or bfloat16"):
        dropnorm.BatchNorm1d(2, dtype=np.int16)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert dropnorm.BatchNorm1d(2, dtype="bfloat16").dtype == ml_dtypes.bfloat16


# ---- properties ---------------------------------------------------------------------------

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:  # the properties need hypothesis (the [test] extra has it)
    hypothesis = None


def _half_problems():
    """The strategy below, or nothing without hypothesis."""
    return _half_problem() if hypothesis is not None else None


def _composite(fn):
    return st.composite(fn) if hypothesis is not None else fn


@_composite
def _half_problem(draw):
    """A half type, a shape (N, C, *spatial) with N*prod(spatial) >= 2, an
    axis, data of any magnitude (also near the format's limits and with
    |mean| >> std), p and a seed."""
    name = draw(st.sampled_from(HALF))
    ndim = draw(st.integers(2, 5))
    shape = [draw(st.integers(1, 9)) for _ in range(ndim)]
    shape[0] = max(shape[0], 2)
    axis = draw(st.sampled_from([1, -1])) if ndim > 2 else 1
    # float16 up to 2**15 (its largest binade); bfloat16 as float32's sums allow
    exponent = draw(st.integers(-20, 15 if name == "float16" else 30))
    shift = draw(st.sampled_from([0.0, 1.0, 100.0]))
    p = draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)))
    return name, tuple(shape), axis, exponent, shift, p, draw(st.integers(0, 2**32))


def _given(fn):
    if hypothesis is None:
        return pytest.mark.skip(reason="hypothesis is not installed")(fn)
    return hypothesis.settings(max_examples=60, deadline=None)(
        hypothesis.given(_half_problems())(fn))


@_given
def test_property_half_is_float32_rounded_once(problem):
    """For any shape, layout, magnitude and p: every output of a half type is
    the float32 kernel's on the converted input, rounded once; per-channel
    outputs are float32's bit for bit; the mask is float32's."""
    name, shape, axis, exponent, shift, p, seed = problem
    dt = half_dtype(name)
    rng = np.random.default_rng(seed)
    scale = 2.0**exponent
    with np.errstate(over="ignore"):
        x = ((rng.standard_normal(shape) + shift) * scale).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
    if axis == -1:
        x, dy = np.moveaxis(x, 1, -1).copy(), np.moveaxis(dy, 1, -1).copy()
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    c = x.shape[axis]
    w = rng.uniform(0.5, 2.0, c).astype(np.float32)
    y, m, s = dropnorm.batch_norm_train(x, w, None, axis=axis)
    y32, m32, s32 = dropnorm.batch_norm_train(x32, w, None, axis=axis)
    assert np.array_equal(neighbours(y, bits(_as_half(y32, dt))), np.zeros(y.size))
    assert np.array_equal(m, m32, equal_nan=True) and np.array_equal(s, s32, equal_nan=True)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, m, s, w, axis=axis)
    dx32, dw32, db32 = dropnorm.batch_norm_backward(dy32, x32, m, s, w, axis=axis)
    assert np.array_equal(neighbours(dx, bits(_as_half(dx32, dt))), np.zeros(dx.size))
    assert np.array_equal(dw, dw32, equal_nan=True) and np.array_equal(db, db32, equal_nan=True)
    d, mask = dropnorm.dropout(x, p, seed=seed, return_mask=True)
    d32, mask32 = dropnorm.dropout(x32, p, seed=seed, return_mask=True)
    assert np.array_equal(mask, mask32)
    if p == 0.0:  # x's bits
        assert np.array_equal(bits(d), bits(x))
    elif p < 1.0:  # kept values: the float32 product rounded once
        assert np.array_equal(neighbours(d, bits(_as_half(d32, dt))), np.zeros(d.size))
    else:
        assert not bits(d).any()
