"""Property-based tests: Hypothesis over shapes, layouts, dtypes, p, eps,
seeds and modes, against the NumPy oracle (tests/oracle.py) and the laws of
the library (in place, thread count, layout).

Shapes are drawn in the canonical (N, C, *spatial) order, 2 to 5 dimensions
of extents 1..9 and at most 4096 elements, with now and then a large one
(65536 to 262144 elements, up to 320 channels: several reduction groups,
several blocks of channels, two threads); for axis=-1 the tensor is laid out
channels last with np.moveaxis. The data come from a NumPy generator seeded
by Hypothesis, with the structure (offset, spread, constant channels, special
values) drawn by Hypothesis, so a failure prints a reproducible example.

Tolerances follow tests/test_batchnorm.py: TOL per dtype (2e-5, 1e-11, a
result of order 1), scaled per channel by the magnitude of the terms that
make up each result (so that |mean| >> std, large invstd and offset
gradients are measured on the right scale), plus the kernels' error of a
mean carried in double, eps(double)*|mean|*invstd. The oracle gets x less an
exact per-channel shift where a result depends on x - mean (centred()), so
that its own float64 mean does not set the error. Constant channels are
exact: y is the bias (NaN with eps == 0, as in the oracle), the variance 0.
Dropout is compared bit for bit.

Profiles: "dropnorm-ci" (selected when the environment variable CI is set:
derandomized, so CI is reproducible) and "dropnorm-dev" (random); both have
no deadline. HYPOTHESIS_PROFILE picks one by name, e.g. "dropnorm-thorough"
for ten times the examples. Run with --hypothesis-show-statistics to see the
examples per test.
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="the property tests need hypothesis (the [test] extra)")

from hypothesis import event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dropnorm  # noqa: E402

import oracle  # noqa: E402

# ---- Settings ------------------------------------------------------------------

_EXAMPLES = 150
settings.register_profile("dropnorm-ci", deadline=None, max_examples=_EXAMPLES,
                          derandomize=True, print_blob=True)
settings.register_profile("dropnorm-dev", deadline=None, max_examples=_EXAMPLES)
settings.register_profile("dropnorm-thorough", deadline=None, max_examples=10 * _EXAMPLES)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("dropnorm-ci" if os.environ.get("CI") else "dropnorm-dev"))


def examples(factor):
    """Settings with ``factor`` times the profile's max_examples (the other
    settings, derandomize included, come from the loaded profile)."""
    return settings(max_examples=max(5, int(settings.default.max_examples * factor)))


# ---- Strategies ------------------------------------------------------------------

MAX_SMALL = 4096
LARGE_MIN, LARGE_MAX = 1 << 16, 1 << 18  # 2 threads need >= 2*32768 elements

DTYPES = st.sampled_from([np.float32, np.float64])
AXES = st.sampled_from([1, -1])
MODES = st.sampled_from(["inverted", "classic"])
UINT64 = st.one_of(
    st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
PROBABILITIES = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 5e-324, 2.0**-32, 1e-12, 1 - 1e-12,
                     1 - 2.0**-32, 1 - 2.0**-53]),
    st.integers(0, 2**32).map(lambda k: k / 2**32),  # on a threshold: a word is p*2**32
    st.floats(0.0, 1.0),
)
# eps in [0, 0.1]: 0 itself, and from 1e-10 up (below, 1/sqrt(eps) of a constant
# channel overflows float32, which is not what these tests are about)
EPSILONS = st.one_of(st.sampled_from([0.0, 1e-5, 1e-3, 0.1]), st.floats(1e-10, 0.1))
MOMENTA = st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0))


@st.composite
def small_shapes(draw, min_ndim=2, max_ndim=5, max_extent=9, max_elems=MAX_SMALL):
    """(N, C, *spatial) with extents 1..max_extent and at most max_elems elements."""
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape, total = [], 1
    for _ in range(ndim):
        e = draw(st.integers(1, min(max_extent, max_elems // total)))
        shape.append(e)
        total *= e
    return tuple(shape)


@st.composite
def large_shapes(draw):
    """(N, C, *spatial) of LARGE_MIN..LARGE_MAX elements, C up to 320."""
    c = draw(st.one_of(st.integers(1, 9), st.integers(250, 320)))
    spatial = draw(small_shapes(0, 3, 17, max(1, 1024 // c)))
    total = draw(st.integers(LARGE_MIN, LARGE_MAX))
    n = -(-total // (c * math.prod(spatial)))
    return (n, c) + spatial


@st.composite
def shapes(draw):
    """Mostly small shapes, a large one about once in 32 draws."""
    if draw(st.integers(0, 31)) == 17:
        event("large shape")
        return draw(large_shapes())
    return draw(small_shapes())


def m_of(shape):
    return shape[0] * math.prod(shape[2:])


def layout(a, axis):
    """A canonical (N, C, *sp) array laid out for axis (channels last for -1)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if axis == -1 else a


@dataclass(frozen=True)
class BNProblem:
    """The drawn structure of a batch-norm case; arrays come from make()."""
    dtype: type
    axis: int
    shape: tuple      # canonical (N, C, *spatial)
    eps: float
    momentum: float
    affine: bool
    loc_exp: object   # None (mean near 0) or the decade of |offset|
    std_exp: int      # decade of the spread within a channel
    constant: tuple   # per channel: all values equal
    zero_rv: bool     # some running variances are 0 (only with eps > 0)
    dy_offset: int    # dy = dy_scale*(dy_offset + N(0, 1))
    seed: int

    def make(self):
        """x, dy (laid out for axis), weight, bias, running mean and variance."""
        rng = np.random.default_rng(self.seed)
        dt = self.dtype
        n, c = self.shape[:2]
        s = math.prod(self.shape[2:])
        std = 10.0**self.std_exp
        loc = 0.0
        if self.loc_exp is not None:
            loc = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 10.0) * 10.0**self.loc_exp
        chan_loc = loc + 2 * std * rng.standard_normal(c)
        chan_std = std * 2.0**rng.uniform(-1, 1, c)
        x = (chan_loc[None, :, None]
             + chan_std[None, :, None] * rng.standard_normal((n, c, s))).astype(dt)
        for k in range(c):
            if self.constant[k]:
                # a float32 value, so that float64 sums of it are exact too
                x[:, k] = np.float32(chan_loc[k])
            elif np.all(x[:, k] == x[0, k, 0]):  # collapsed by rounding: spread it
                x[0, k, 0] = np.nextafter(x[0, k, 0], dt(np.inf))
        x = layout(x.reshape(self.shape), self.axis)
        dy_scale = 10.0**rng.uniform(-2, 2)
        dy = (dy_scale * (self.dy_offset + rng.standard_normal(self.shape))).astype(dt)
        dy = layout(dy, self.axis)
        w = b = None
        if self.affine:
            w = (1 + 0.5 * rng.standard_normal(c)).astype(dt)
            b = (10.0**rng.uniform(-1, 1) * rng.standard_normal(c)).astype(dt)
        rm = (chan_loc + chan_std * rng.standard_normal(c)).astype(dt)
        rv = (chan_std**2 * 2.0**rng.uniform(-2, 2, c)).astype(dt)
        if self.zero_rv:
            rv[rng.random(c) < 0.5] = 0
        return x, dy, w, b, rm, rv


@st.composite
def bn_problems(draw, shape_strategy=None):
    shape = draw(shapes() if shape_strategy is None else shape_strategy)
    if m_of(shape) < 2:  # training needs 2 values per channel
        shape = (2,) + shape[1:]
    c = shape[1]
    eps = draw(EPSILONS)
    constant = (False,) * c
    if draw(st.booleans()):
        constant = tuple(draw(st.lists(st.booleans(), min_size=c, max_size=c)))
    loc_exp = draw(st.one_of(st.none(), st.integers(0, 4)))
    if loc_exp is not None and loc_exp >= 2:
        event("|mean| >> std")
    if eps == 0.0 and any(constant):
        event("eps = 0 with a constant channel (NaN, inf)")
    return BNProblem(
        dtype=draw(DTYPES), axis=draw(AXES), shape=shape, eps=eps, momentum=draw(MOMENTA),
        affine=draw(st.booleans()), loc_exp=loc_exp, std_exp=draw(st.integers(-3, 2)),
        constant=constant, zero_rv=eps > 0 and draw(st.booleans()),
        dy_offset=draw(st.sampled_from([0, 0, 3, -3])), seed=draw(st.integers(0, 2**32 - 1)))


@dataclass(frozen=True)
class DropoutProblem:
    dtype: type
    shape: tuple      # as laid out (for channelwise axis=-1: (N, *spatial, C))
    axis: int
    channelwise: bool
    p: float
    seed: int         # Philox key
    stream: int
    mode: str
    training: bool
    specials: bool    # NaN (with a payload), +-inf and -0.0 in the data
    data_seed: int

    def data(self, which=0):
        rng = np.random.default_rng((self.data_seed, which))
        x = (10.0**rng.uniform(-3, 3) * rng.standard_normal(self.shape)).astype(self.dtype)
        if self.specials and x.size:
            flat = x.reshape(-1)
            for value in (np.nan, np.inf, -np.inf, -0.0):
                flat[rng.random(flat.size) < 0.05] = value
            bits = flat.view(np.uint32 if self.dtype == np.float32 else np.uint64)
            bits[np.isnan(flat)] |= 0x5  # NaN payloads
        return x

    @property
    def bits(self):
        """Decisions of a call: x.size, or N*C with channelwise."""
        return oracle.dropout_decisions(np.empty(self.shape, np.uint8), self.channelwise,
                                        self.axis)


@st.composite
def dropout_problems(draw, shape_strategy=None):
    canonical = draw(shapes() if shape_strategy is None else shape_strategy)
    axis = draw(AXES)
    p = draw(PROBABILITIES)
    if p in (0.0, 1.0):
        event(f"p = {p}")
    return DropoutProblem(
        dtype=draw(DTYPES), shape=layout_shape(canonical, axis),
        axis=axis, channelwise=draw(st.booleans()), p=p, seed=draw(UINT64),
        stream=draw(UINT64), mode=draw(MODES), training=draw(st.booleans()),
        specials=draw(st.booleans()), data_seed=draw(st.integers(0, 2**32 - 1)))


def layout_shape(canonical, axis):
    if axis == -1:
        return (canonical[0],) + tuple(canonical[2:]) + (canonical[1],)
    return tuple(canonical)


# ---- Comparison helpers -----------------------------------------------------------

TOL = {np.float32: 2e-5, np.float64: 1e-11}  # as tests/test_batchnorm.py
EPS64 = float(np.finfo(np.float64).eps)


def bits_equal(a, b):
    """Exact equality: dtype, shape and every bit (sign of zero, NaN payloads)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_close(name, actual, expected, rtol, atol, axis=1):
    """|actual - expected| <= atol + rtol*|expected| elementwise, with NaN and
    inf in the same places. Tensors are compared in the (N, C, S) view, and
    atol is per channel (C,) or a scalar."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    atol = np.where(np.isfinite(atol), atol, 0.0)
    if actual.ndim >= 2:
        actual, expected = oracle.to_ncs(actual, axis), oracle.to_ncs(expected, axis)
        if np.ndim(atol):
            atol = atol[None, :, None]
    actual = actual.astype(np.float64)
    same_special = (np.isnan(actual) & np.isnan(expected)) | (
        np.isinf(expected) & (actual == expected))
    with np.errstate(invalid="ignore"):
        ok = same_special | (np.abs(actual - expected) <= atol + rtol * np.abs(expected))
    if not ok.all():
        bad = np.argwhere(~ok)[:5]
        detail = [(tuple(int(i) for i in ix), actual[tuple(ix)], expected[tuple(ix)],
                   np.broadcast_to(atol, ok.shape)[tuple(ix)]) for ix in bad]
        raise AssertionError(f"{name}: {int((~ok).sum())} of {ok.size} values off "
                             f"(index, actual, expected, atol): {detail}")


def centred(x, axis):
    """(x - shift, shift): x in float64 less a per-channel shift, the channel's
    first value, laid out as x.

    The oracle is given x - shift wherever a result depends on x - mean (y,
    invstd, the gradients): those do not change under the shift, which is
    exact where |mean| >> std (Sterbenz's lemma) and otherwise off by a
    rounding of |x - shift| ~ std. Unshifted, the oracle's own mean would
    carry the error of its float64 sum of the offsets (NumPy adds along a
    strided axis one by one: some sqrt(m) ulps of |mean|), which x - mean
    then passes on at first order, to y and, times sum(dy), to dweight."""
    x3 = oracle.to_ncs(x, axis)
    shift = x3[0, :, 0].copy()
    return oracle.from_ncs(x3 - shift[None, :, None], x, axis), shift


class Stats:
    """Oracle statistics and per-channel magnitudes of one batch-norm case
    (x and dy laid out for axis)."""

    def __init__(self, problem, x, dy, w, axis):
        dt = problem.dtype
        self.x3 = oracle.to_ncs(x, axis)
        self.g3 = oracle.to_ncs(dy, axis)
        n, c, s = self.x3.shape
        self.m = n * s
        self.w = np.ones(c) if w is None else w.astype(np.float64)
        xc, shift = centred(x, axis)
        with np.errstate(all="ignore"):
            mean_c, self.var = oracle.bn_stats(xc, axis)
            self.mean = mean_c + shift
            self.invstd = 1.0 / np.sqrt(self.var + problem.eps)
            self.xhat = (oracle.to_ncs(xc, axis) - mean_c[None, :, None]) * self.invstd[
                None, :, None]
            self.xmax = np.abs(self.xhat).max(axis=(0, 2))
            # |mean|*invstd: how much the mean's rounding costs x - mean
            self.cond = np.abs(self.mean) * self.invstd
            # the kernels' error of xhat from their mean carried as one double
            # (in float32, as two floats): 16 roundings of it. The same relative
            # error bounds their invstd: they merge the moments of pieces
            # (Chan et al.) with means rounded to double, which costs the
            # variance eps64*cond where rows are short (float64 channels first)
            self.xhat_err = 16 * (EPS64 + float(np.finfo(dt).eps) ** 2) * self.cond
            # and so the variance's relative error is that times |mean|/std
            # (eps does not shrink it)
            self.var_err = np.where(self.var > 0, 16 * (EPS64 + float(np.finfo(dt).eps) ** 2)
                                    * np.abs(self.mean) / np.sqrt(self.var), 0.0)
        self.tol = TOL[dt]
        self.eps_t = float(np.finfo(dt).eps)


# ---- Batch norm against the oracle --------------------------------------------------

# found by this test: channels last, the variance of a constant channel (all
# 1.2808453) is not 0 but the residue of the chunks' corrected two-pass sums:
# -2e-30 here, so a negative running_var and, with eps == 0, a NaN save_invstd
# (the oracle: inf)
@example(BNProblem(dtype=np.float32, axis=-1, shape=(3, 3, 5, 7), eps=0.0, momentum=1.0,
                   affine=False, loc_exp=None, std_exp=0, constant=(False, False, True),
                   zero_rv=False, dy_offset=0, seed=0))
# and, in larger tensors, a variance of +1e-29: invstd 2.7e14 and y == 0 where the
# oracle (and channels first) give inf and NaN
@example(BNProblem(dtype=np.float32, axis=-1, shape=(5949, 2, 2, 10), eps=0.0, momentum=0.0,
                   affine=False, loc_exp=None, std_exp=0, constant=(False, True),
                   zero_rv=False, dy_offset=0, seed=0))
@examples(1)
@given(bn_problems())
def test_batch_norm_train_matches_oracle(pb):
    x, _, w, b, rm0, rv0 = pb.make()
    rm, rv = rm0.copy(), rv0.copy()
    y, save_mean, save_invstd = dropnorm.batch_norm_train(
        x, w, b, running_mean=rm, running_var=rv, momentum=pb.momentum, eps=pb.eps,
        axis=pb.axis)
    with np.errstate(all="ignore"):
        xc, shift = centred(x, pb.axis)
        y_ref, mean_ref, invstd_ref = oracle.bn_train(xc, w, b, eps=pb.eps, axis=pb.axis)
        mean_ref = mean_ref + shift
        rm_ref, rv_ref = oracle.bn_running_update(rm0, rv0, x, pb.momentum, axis=pb.axis)
    st_ = Stats(pb, x, x, w, pb.axis)
    tol = st_.tol
    assert y.dtype == x.dtype and y.shape == x.shape
    assert save_mean.dtype == x.dtype and save_invstd.dtype == x.dtype
    # laws without the oracle: a variance is never negative, and invstd is
    # NaN only where x is (x is finite here; 1/sqrt(0 + 0) is inf)
    assert np.all(rv >= 0), ("running_var", rv)
    assert not np.isnan(save_invstd).any(), ("save_invstd", save_invstd)

    bias = np.zeros_like(st_.w) if b is None else np.abs(b.astype(np.float64))
    w_abs = np.abs(st_.w)
    atol_y = 4 * tol * (w_abs * (1 + st_.xmax) + bias) + st_.xhat_err * w_abs
    assert_close("y", y, y_ref, tol, atol_y, pb.axis)
    sd = np.sqrt(st_.var)
    assert_close("save_mean", save_mean, mean_ref, tol, 4 * tol * sd)
    assert_close("save_invstd", save_invstd, invstd_ref, tol, st_.xhat_err * invstd_ref)
    # a constant channel: x - mean is exactly 0, so y is exactly the bias
    # (and NaN when eps == 0, as in the oracle: 0*inf)
    for k in np.flatnonzero(pb.constant):
        yk = oracle.to_ncs(y, pb.axis)[:, k]
        if pb.eps > 0:
            assert np.all(yk == (0.0 if b is None else b[k])), k
            assert save_mean[k] == x.dtype.type(oracle.to_ncs(x, pb.axis)[0, k, 0])
        else:
            assert np.all(np.isnan(yk)) and np.isinf(save_invstd[k]), k
    atol_rm = tol * (np.abs(rm0) + np.abs(st_.mean) + 4 * sd)
    assert_close("running_mean", rm, rm_ref, tol, atol_rm)
    atol_rv = (2 * tol * (np.abs(rv0) + st_.var * st_.m / (st_.m - 1))
               + st_.var_err * st_.var * st_.m / (st_.m - 1))
    assert_close("running_var", rv, rv_ref, 2 * tol, atol_rv)


def backward_tolerances(st_, dbias, dweight, k_shift):
    """Per-channel atol of (dx, dweight, dbias) of the training backward from
    the magnitude of their terms. k_shift: 1 + eps_T*|mean|*invstd, the part
    of x - save_mean that is the rounding of save_mean."""
    tol, m, g3 = st_.tol, st_.m, st_.g3
    l2_g = np.sqrt((g3**2).sum(axis=(0, 2)))
    with np.errstate(all="ignore"):
        l2_gx = np.sqrt(((g3 * st_.xhat) ** 2).sum(axis=(0, 2)))
        l1_g = np.abs(g3).sum(axis=(0, 2))
        atol_db = 4 * tol * l2_g
        atol_dw = 4 * tol * (l2_gx + k_shift * l2_g) + st_.xhat_err * l1_g
        scale = np.abs(st_.w) * st_.invstd
        gmax = np.abs(g3).max(axis=(0, 2))
        terms = gmax + np.abs(dbias) / m + st_.xmax * np.abs(dweight) / m
        carried = (atol_db + st_.xmax * atol_dw + st_.xhat_err * np.abs(dweight)) / m
        atol_dx = scale * ((4 * tol * k_shift + st_.xhat_err) * terms + carried)
    return atol_dx, atol_dw, atol_db


@examples(1)
@given(bn_problems())
def test_batch_norm_backward_matches_oracle(pb):
    x, dy, w, b, _, _ = pb.make()
    _, save_mean, save_invstd = dropnorm.batch_norm_train(x, w, b, eps=pb.eps, axis=pb.axis)
    dx, dw, db = dropnorm.batch_norm_backward(dy, x, save_mean, save_invstd, w, axis=pb.axis)
    with np.errstate(all="ignore"):
        dx_ref, dw_ref, db_ref = oracle.bn_backward(dy, centred(x, pb.axis)[0], w, eps=pb.eps,
                                                    axis=pb.axis)
    st_ = Stats(pb, x, dy, w, pb.axis)
    assert dx.dtype == x.dtype and dw.dtype == x.dtype and db.dtype == x.dtype
    k_shift = 1 + st_.eps_t * np.nan_to_num(st_.cond)
    atol_dx, atol_dw, atol_db = backward_tolerances(st_, db_ref, dw_ref, k_shift)
    tol = st_.tol
    assert_close("dbias", db, db_ref, tol, atol_db)
    assert_close("dweight", dw, dw_ref, tol, atol_dw)
    assert_close("dx", dx, dx_ref, tol, atol_dx, pb.axis)


@examples(1)
@given(bn_problems())
def test_batch_norm_infer_matches_oracle(pb):
    x, _, w, b, rm, rv = pb.make()
    y = dropnorm.batch_norm_infer(x, rm, rv, w, b, eps=pb.eps, axis=pb.axis)
    y_ref = oracle.bn_infer(x, rm, rv, w, b, eps=pb.eps, axis=pb.axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    # y = a*x + (b - a*rm), folded per channel: errors of a*x, a*rm and b
    x3 = oracle.to_ncs(x, pb.axis)
    c = x3.shape[1]
    a = np.abs(np.ones(c) if w is None else w.astype(np.float64)) / np.sqrt(
        rv.astype(np.float64) + pb.eps)
    bias = np.zeros(c) if b is None else np.abs(b.astype(np.float64))
    tol = TOL[pb.dtype]
    atol = 4 * tol * (a * (np.abs(x3).max(axis=(0, 2)) + np.abs(rm)) + bias)
    assert_close("y", y, y_ref, tol, atol, pb.axis)


@examples(1)
@given(bn_problems())
def test_batch_norm_infer_backward_matches_oracle(pb):
    x, dy, w, _, rm, rv = pb.make()
    dx, dw, db = dropnorm.batch_norm_infer_backward(dy, x, rm, rv, w, eps=pb.eps, axis=pb.axis)
    dx_ref, dw_ref, db_ref = oracle.bn_infer_backward(dy, x, rm, rv, w, eps=pb.eps,
                                                      axis=pb.axis)
    x3, g3 = oracle.to_ncs(x, pb.axis), oracle.to_ncs(dy, pb.axis)
    c = x3.shape[1]
    tol = TOL[pb.dtype]
    invstd = 1 / np.sqrt(rv.astype(np.float64) + pb.eps)
    scale = np.abs(np.ones(c) if w is None else w.astype(np.float64)) * invstd
    atol_dx = 4 * tol * scale * np.abs(g3).max(axis=(0, 2))
    dev = x3 - rm.astype(np.float64)[None, :, None]
    atol_dw = 4 * tol * invstd * np.sqrt(((g3 * dev) ** 2).sum(axis=(0, 2)))
    atol_db = 4 * tol * np.sqrt((g3**2).sum(axis=(0, 2)))
    assert_close("dx", dx, dx_ref, tol, atol_dx, pb.axis)
    assert_close("dweight", dw, dw_ref, tol, atol_dw)
    assert_close("dbias", db, db_ref, tol, atol_db)


# ---- Batch-norm laws ---------------------------------------------------------------

def bn_all(pb, x, dy, w, b, rm0, rv0, axis, out=None):
    """Every batch-norm result of a case: train (y, stats, running), backward,
    infer, infer backward. out: "x" or "dy" to run each call in place (on
    copies)."""
    rm, rv = rm0.copy(), rv0.copy()
    xo = x.copy() if out == "x" else x
    y, mean, invstd = dropnorm.batch_norm_train(
        xo, w, b, running_mean=rm, running_var=rv, momentum=pb.momentum, eps=pb.eps,
        axis=axis, out=xo if out == "x" else None)
    if out is None:
        dx = dropnorm.batch_norm_backward(dy, x, mean, invstd, w, axis=axis)
        yi = dropnorm.batch_norm_infer(x, rm0, rv0, w, b, eps=pb.eps, axis=axis)
        dxi = dropnorm.batch_norm_infer_backward(dy, x, rm0, rv0, w, eps=pb.eps, axis=axis)
    else:
        def target():
            return (x.copy(), dy) if out == "x" else (x, dy.copy())

        xs, dys = target()
        o = xs if out == "x" else dys
        dx = dropnorm.batch_norm_backward(dys, xs, mean, invstd, w, axis=axis, out=o)
        assert dx[0] is o
        xs = x.copy()
        yi = dropnorm.batch_norm_infer(xs, rm0, rv0, w, b, eps=pb.eps, axis=axis, out=xs)
        assert yi is xs
        xs, dys = target()
        o = xs if out == "x" else dys
        dxi = dropnorm.batch_norm_infer_backward(dys, xs, rm0, rv0, w, eps=pb.eps, axis=axis,
                                                 out=o)
        assert dxi[0] is o
    return [y, mean, invstd, rm, rv, *dx, yi, *dxi]


@examples(0.5)
@given(bn_problems(), st.sampled_from(["x", "dy"]))
def test_batch_norm_in_place_gives_the_same_bits(pb, where):
    x, dy, w, b, rm0, rv0 = pb.make()
    want = bn_all(pb, x, dy, w, b, rm0, rv0, pb.axis)
    got = bn_all(pb, x, dy, w, b, rm0, rv0, pb.axis, out=where)
    for i, (u, v) in enumerate(zip(got, want)):
        assert bits_equal(u, v), i


def bn_layout_results(pb, x, dy, w, b, rm0, rv0, axis):
    """bn_all with the tensors in the (N, C, S) view, to compare layouts."""
    r = bn_all(pb, x, dy, w, b, rm0, rv0, axis)
    for i in (0, 5, 8, 9):
        r[i] = oracle.to_ncs(r[i], axis)
    return r


@examples(0.5)
@given(bn_problems())
def test_batch_norm_channels_last_equals_moved_channels_first(pb):
    # x channels first, and the same values moved to channels last: the same
    # results up to the reduction order (the tolerances of the oracle tests),
    # and the same bits when c == 1 or s == 1 (then the layouts are one memory)
    x, dy, w, b, rm0, rv0 = pb.make()
    if pb.axis == -1:  # make() laid it out channels last; start from channels first
        x, dy = np.ascontiguousarray(np.moveaxis(x, -1, 1)), np.ascontiguousarray(
            np.moveaxis(dy, -1, 1))
    first = bn_layout_results(pb, x, dy, w, b, rm0, rv0, 1)
    last = bn_layout_results(pb, layout(x, -1), layout(dy, -1), w, b, rm0, rv0, -1)
    names = ["y", "save_mean", "save_invstd", "running_mean", "running_var", "dx", "dweight",
             "dbias", "y_infer", "dx_infer", "dweight_infer", "dbias_infer"]
    if pb.shape[1] == 1 or math.prod(pb.shape[2:]) == 1:
        for name, u, v in zip(names, last, first):
            assert bits_equal(u, v), name
        return
    st_ = Stats(pb, x, dy, w, 1)
    tol = st_.tol
    w_abs = np.abs(st_.w)
    bias = np.zeros_like(w_abs) if b is None else np.abs(b.astype(np.float64))
    k_shift = 1 + st_.eps_t * np.nan_to_num(st_.cond)
    atol_dx, atol_dw, atol_db = backward_tolerances(st_, first[7], first[6], k_shift)
    invstd0 = 1 / np.sqrt(rv0.astype(np.float64) + pb.eps)
    a = w_abs * invstd0
    atol_yi = 4 * tol * (a * (np.abs(st_.x3).max(axis=(0, 2)) + np.abs(rm0)) + bias)
    atols = {
        "y": 4 * tol * (w_abs * (1 + st_.xmax) + bias) + st_.xhat_err * w_abs,
        "save_mean": 4 * tol * np.sqrt(st_.var),
        "save_invstd": st_.xhat_err * st_.invstd,
        "running_mean": tol * (np.abs(rm0) + np.abs(st_.mean) + 4 * np.sqrt(st_.var)),
        "running_var": (2 * tol * (np.abs(rv0) + st_.var * st_.m / (st_.m - 1))
                        + st_.var_err * st_.var * st_.m / (st_.m - 1)),
        "dx": atol_dx, "dweight": atol_dw, "dbias": atol_db, "y_infer": atol_yi,
        "dx_infer": 4 * tol * a * np.abs(st_.g3).max(axis=(0, 2)),
        "dweight_infer": 4 * tol * invstd0 * np.sqrt(
            ((st_.g3 * (st_.x3 - rm0[None, :, None])) ** 2).sum(axis=(0, 2))),
        "dbias_infer": atol_db,
    }
    # both are within the oracle's tolerance of the truth: twice it of each other
    for name, u, v in zip(names, last, first):
        rtol = 2 * tol if name == "running_var" else tol
        assert_close(name, u, v, 2 * rtol, 2 * atols.get(name, 0.0))


# ---- Dropout against the oracle -------------------------------------------------------

@st.composite
def mask_lengths(draw):
    if draw(st.integers(0, 31)) == 17:
        event("large mask")
        return draw(st.integers(LARGE_MIN, LARGE_MAX))
    return draw(st.integers(0, 5000))


@examples(1)
@given(mask_lengths(), PROBABILITIES, UINT64, UINT64)
def test_dropout_mask_matches_oracle_philox(n, p, seed, stream):
    mask = dropnorm.dropout_mask(n, p, seed, stream)
    assert mask.dtype == np.uint8 and mask.shape == ((n + 7) // 8,)
    assert np.array_equal(mask, oracle.dropout_mask(n, p, seed, stream))
    if n % 8:  # the unused high bits of the last byte are 0
        assert mask[-1] >> (n % 8) == 0


@examples(1)
@given(dropout_problems())
def test_dropout_matches_oracle_exactly(pb):
    x = pb.data()
    y, mask = dropnorm.dropout(x, pb.p, pb.seed, pb.stream, mode=pb.mode, training=pb.training,
                               channelwise=pb.channelwise, axis=pb.axis, return_mask=True)
    want_y, want_mask = oracle.dropout_forward(x, pb.p, pb.seed, pb.stream, pb.mode,
                                               pb.training, pb.channelwise, pb.axis)
    assert bits_equal(y, want_y)
    assert np.array_equal(mask, want_mask)
    assert bits_equal(dropnorm.dropout(x, pb.p, pb.seed, pb.stream, mode=pb.mode,
                                       training=pb.training, channelwise=pb.channelwise,
                                       axis=pb.axis), y)
    # the law itself: dropped places exactly +0.0, kept ones x*scale with the
    # scale rounded once to the dtype (classic inference: x*(1 - p))
    dt = x.dtype.type
    keep = oracle.unpack_mask(mask, pb.bits)
    if not pb.training:
        assert keep.all()  # the mask of an inference call keeps everything
        if pb.mode == "classic" and pb.p >= 1.0:
            keep = np.zeros_like(keep)  # classic inference with p == 1: zeros
        factor = dt(1.0 - pb.p) if pb.mode == "classic" else dt(1)
    else:
        if pb.p > 0:
            assert np.array_equal(mask, dropnorm.dropout_mask(pb.bits, pb.p, pb.seed, pb.stream))
        assert not keep.any() or pb.p < 1.0
        factor = dt(1.0 / (1.0 - pb.p)) if pb.mode == "inverted" and pb.p < 1.0 else dt(1)
    keep = oracle._keep_like(x, keep, pb.channelwise, pb.axis)
    with np.errstate(invalid="ignore", over="ignore"):  # inf*0 where nothing is kept
        kept = x if factor == 1 else x * factor  # a factor of 1 leaves x as it is, bit for bit
    assert bits_equal(y[keep], kept[keep])
    assert bits_equal(y[~keep], np.zeros((~keep).sum(), x.dtype))


@examples(1)
@given(dropout_problems())
def test_dropout_backward_stored_mask_equals_regenerated(pb):
    x, dy = pb.data(0), pb.data(1)
    _, mask = dropnorm.dropout(x, pb.p, pb.seed, pb.stream, mode=pb.mode,
                               channelwise=pb.channelwise, axis=pb.axis, return_mask=True)
    want = oracle.dropout_backward(dy, pb.p, pb.seed, pb.stream, pb.mode, pb.channelwise,
                                   pb.axis)
    kw = dict(mode=pb.mode, channelwise=pb.channelwise, axis=pb.axis)
    regenerated = dropnorm.dropout_backward(dy, pb.p, pb.seed, pb.stream, **kw)
    # with the mask, seed and stream are ignored
    stored = dropnorm.dropout_backward(dy, pb.p, pb.seed ^ 1, ~pb.stream & (2**64 - 1),
                                       mask=mask, **kw)
    assert bits_equal(regenerated, want)
    assert bits_equal(stored, regenerated)


@examples(1)
@given(dropout_problems(), st.data())
def test_dropout_apply_mask_equals_dropout(pb, data):
    x = pb.data()
    kw = dict(mode=pb.mode, channelwise=pb.channelwise, axis=pb.axis)
    y, mask = dropnorm.dropout(x, pb.p, pb.seed, pb.stream, return_mask=True, **kw)
    assert bits_equal(dropnorm.dropout_apply_mask(x, mask, pb.p, **kw), y)
    # any caller mask, with junk in the unused high bits: the oracle's
    # where(keep, x*scale, 0); and the backward with it gives the same
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=pb.bits, max_size=pb.bits)),
                    dtype=bool) if pb.bits <= 256 else (
        np.random.default_rng(pb.data_seed).random(pb.bits) < 0.5)
    caller = oracle.pack_mask(keep)
    if pb.bits % 8:
        caller[-1] |= data.draw(st.integers(0, 255)) & (0xFF << (pb.bits % 8)) & 0xFF
    want = oracle.dropout_train_apply(x, keep, pb.p, pb.mode, pb.channelwise, pb.axis)
    assert bits_equal(dropnorm.dropout_apply_mask(x, caller, pb.p, **kw), want)
    assert bits_equal(dropnorm.dropout_backward(x, pb.p, mask=caller, **kw), want)


# ---- Dropout laws ------------------------------------------------------------------

@examples(0.5)
@given(dropout_problems())
def test_dropout_in_place_gives_the_same_bits(pb):
    x = pb.data()
    kw = dict(mode=pb.mode, channelwise=pb.channelwise, axis=pb.axis)
    y, mask = dropnorm.dropout(x, pb.p, pb.seed, pb.stream, training=pb.training,
                               return_mask=True, **kw)
    z = x.copy()
    assert dropnorm.dropout(z, pb.p, pb.seed, pb.stream, training=pb.training, out=z,
                            **kw) is z
    assert bits_equal(z, y)
    y_train, mask = dropnorm.dropout(x, pb.p, pb.seed, pb.stream, return_mask=True, **kw)
    z = x.copy()
    assert dropnorm.dropout_apply_mask(z, mask, pb.p, out=z, **kw) is z
    assert bits_equal(z, y_train)
    for m in (None, mask):  # backward of x itself: the training forward's values
        z = x.copy()
        assert dropnorm.dropout_backward(z, pb.p, pb.seed, pb.stream, mask=m, out=z, **kw) is z
        assert bits_equal(z, y_train)


@examples(0.5)
@given(dropout_problems())
def test_channelwise_dropout_channels_last_equals_moved_channels_first(pb):
    # decision n*C + c for the pair (n, c) in both layouts: the same bits
    x = pb.data()
    first = np.ascontiguousarray(np.moveaxis(x, -1, 1)) if pb.axis == -1 else x
    last = layout(first, -1)
    kw = dict(mode=pb.mode, training=pb.training, channelwise=True, return_mask=True)
    y1, m1 = dropnorm.dropout(first, pb.p, pb.seed, pb.stream, axis=1, **kw)
    y2, m2 = dropnorm.dropout(last, pb.p, pb.seed, pb.stream, axis=-1, **kw)
    assert bits_equal(y2, layout(y1, -1))
    assert np.array_equal(m1, m2)
    kw = dict(mode=pb.mode, channelwise=True)
    d1 = dropnorm.dropout_backward(first, pb.p, pb.seed, pb.stream, axis=1, **kw)
    d2 = dropnorm.dropout_backward(last, pb.p, pb.seed, pb.stream, axis=-1, **kw)
    assert bits_equal(d2, layout(d1, -1))


# ---- Thread count --------------------------------------------------------------------

@examples(0.25)
@given(bn_problems(large_shapes()), dropout_problems(large_shapes()),
       st.integers(LARGE_MIN, LARGE_MAX))
def test_thread_count_does_not_change_the_bits(bn, do, n_mask):
    # shapes of 65536 elements and more, so that two threads really share the work
    x, dy, w, b, rm0, rv0 = bn.make()
    xd, dyd = do.data(0), do.data(1)

    def everything():
        out = bn_all(bn, x, dy, w, b, rm0, rv0, bn.axis)
        kw = dict(mode=do.mode, channelwise=do.channelwise, axis=do.axis)
        y, mask = dropnorm.dropout(xd, do.p, do.seed, do.stream, training=do.training,
                                   return_mask=True, **kw)
        out += [y, mask, dropnorm.dropout_backward(dyd, do.p, do.seed, do.stream, **kw),
                dropnorm.dropout_apply_mask(xd, mask, do.p, **kw),
                dropnorm.dropout_mask(n_mask, do.p, do.seed, do.stream)]
        return out

    saved = dropnorm.get_max_threads()
    results = {}
    try:
        for threads in (1, 2):
            dropnorm.set_num_threads(threads)
            if dropnorm.build_info()["openmp"]:
                assert dropnorm.get_max_threads() == threads
            results[threads] = everything()
    finally:
        dropnorm.set_num_threads(saved)
    for i, (u, v) in enumerate(zip(results[1], results[2])):
        assert bits_equal(u, v), i
