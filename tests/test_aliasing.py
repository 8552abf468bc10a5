"""Aliasing: every array a call writes is checked against every array it
reads and every other array it writes. Only the exact in-place use the C
header allows (out is x; dx is dy or x) is accepted; any other overlap
raises a ValueError that names both arguments, before anything is written."""

import re

import numpy as np
import pytest
from test_alignment import SHAPE, C
from test_alignment import arguments as _alignment_arguments

import dropnorm

DTYPES = [np.float32, np.float64]


def arguments(dtype):
    """Fresh arrays for every argument (channels first), and an ``out``."""
    a = _alignment_arguments(dtype)
    del a["axis"]
    a["out"] = np.full(SHAPE, 7.0, dtype)
    return a


# name: (call, the arrays it writes, the arrays it only reads)
FUNCTIONS = {
    "batch_norm_train": (
        lambda a: dropnorm.batch_norm_train(a["x"], a["weight"], a["bias"], a["running_mean"],
                                            a["running_var"], momentum=0.25, out=a["out"]),
        ["running_mean", "running_var", "out"], ["x", "weight", "bias"]),
    "batch_norm_infer": (
        lambda a: dropnorm.batch_norm_infer(a["x"], a["running_mean"], a["running_var"],
                                            a["weight"], a["bias"], out=a["out"]),
        ["out"], ["x", "running_mean", "running_var", "weight", "bias"]),
    "batch_norm_backward": (
        lambda a: dropnorm.batch_norm_backward(a["dy"], a["x"], a["save_mean"], a["save_invstd"],
                                               a["weight"], out=a["out"]),
        ["out"], ["dy", "x", "save_mean", "save_invstd", "weight"]),
    "batch_norm_infer_backward": (
        lambda a: dropnorm.batch_norm_infer_backward(a["dy"], a["x"], a["running_mean"],
                                                     a["running_var"], a["weight"], out=a["out"]),
        ["out"], ["dy", "x", "running_mean", "running_var", "weight"]),
    "dropout": (
        lambda a: dropnorm.dropout(a["x"], 0.5, seed=1, out=a["out"]),
        ["out"], ["x"]),
    "dropout_apply_mask": (
        lambda a: dropnorm.dropout_apply_mask(a["x"], a["mask"], 0.5, out=a["out"]),
        ["out"], ["x", "mask"]),
    "dropout_backward": (
        lambda a: dropnorm.dropout_backward(a["dy"], 0.5, seed=1, mask=a["mask"], out=a["out"]),
        ["out"], ["dy", "mask"]),
}

# the exact in-place uses the C header allows: a tensor output may be the very
# same array as a tensor input
IN_PLACE = {("out", "x"), ("out", "dy")}
KIND = {"x": "tensor", "dy": "tensor", "out": "tensor", "mask": "mask"}
RANK = {"mask": 0, "vector": 1, "tensor": 2}


def kind(name):
    return KIND.get(name, "vector")


def overlap_cases():
    """(function, written, other, how) for every array a function writes
    against every earlier written array and every array it reads:
    ``same`` (one object for both), ``partial`` (views of one buffer, one
    element apart) or ``view`` (the smaller one inside the larger's bytes)."""
    for fname, (_, written, read) in FUNCTIONS.items():
        for i, w in enumerate(written):
            for o in written[:i] + read:
                if kind(w) == kind(o):
                    hows = ["partial"] if (w, o) in IN_PLACE else ["same", "partial"]
                else:
                    hows = ["view"]
                for how in hows:
                    yield fname, w, o, how


def make_overlap(args, w, o, how):
    a = dict(args)
    if how == "same":
        a[o] = a[w]
    elif how == "partial":
        ref = a[w]
        big = np.ones(ref.size + 1, ref.dtype)
        a[w] = big[1:].reshape(ref.shape)
        a[o] = big[:-1].reshape(ref.shape)
    else:
        small, host = (w, o) if RANK[kind(w)] < RANK[kind(o)] else (o, w)
        flat = a[host].reshape(-1)
        if kind(small) == "mask":  # at an odd byte offset: a mask needs no alignment
            view = flat.view(np.uint8)[3:3 + a[small].size]
        else:
            view = flat[1:1 + a[small].size]
        view[...] = a[small]
        a[small] = view
        assert np.shares_memory(a[small], a[host])
    return a


def snapshot(args):
    return {k: v.tobytes() for k, v in args.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fname,written,other,how", list(overlap_cases()))
def test_overlap_with_a_written_array_raises_and_writes_nothing(fname, written, other, how,
                                                                 dtype):
    a = make_overlap(arguments(dtype), written, other, how)
    before = snapshot(a)
    with pytest.raises(ValueError) as info:
        FUNCTIONS[fname][0](a)
    text = str(info.value)
    # named: the written array first, then the other one
    assert re.match(rf"{written}: (shares memory with|partly overlaps) {other}\b", text), text
    assert snapshot(a) == before


def test_every_function_and_pair_is_covered():
    cases = list(overlap_cases())
    assert {c[0] for c in cases} == set(FUNCTIONS)
    pairs = {(c[0], c[1], c[2]) for c in cases}
    # the cases the issue reports
    assert ("batch_norm_train", "running_var", "running_mean") in pairs
    assert ("batch_norm_train", "running_mean", "x") in pairs
    assert ("batch_norm_train", "out", "running_mean") in pairs
    assert ("dropout_backward", "out", "mask") in pairs


# ---- the cases of the issue, as reported ------------------------------------------

def test_running_mean_is_running_var():
    a = arguments(np.float32)
    stats = np.zeros(C, np.float32)
    with pytest.raises(ValueError, match="^running_var: shares memory with running_mean"):
        dropnorm.batch_norm_train(a["x"], running_mean=stats, running_var=stats)
    assert not stats.any()


@pytest.mark.parametrize("host", ["x", "out"])
def test_running_mean_a_view_of_x_or_out(host):
    a = arguments(np.float64)
    before = snapshot(a)
    rm = a[host][0, 0, :C]
    with pytest.raises(ValueError, match="running_mean") as info:
        dropnorm.batch_norm_train(a["x"], running_mean=rm, running_var=a["running_var"],
                                  out=a["out"])
    assert host in str(info.value)
    assert snapshot(a) == before


def test_dropout_backward_mask_inside_out():
    n = 65536
    dy = np.ones(n, np.float32)
    out = np.zeros(n, np.float32)
    mask = out.view(np.uint8)[: n // 8]
    mask[...] = dropnorm.dropout_mask(n, 0.5, seed=3)
    before = out.tobytes()
    with pytest.raises(ValueError, match="^out: shares memory with mask"):
        dropnorm.dropout_backward(dy, 0.5, mask=mask, out=out)
    assert out.tobytes() == before
    # with a separate out the same call is right
    dx = dropnorm.dropout_backward(dy, 0.5, mask=mask.copy())
    keep = np.unpackbits(mask, bitorder="little")[:n].astype(bool)
    np.testing.assert_array_equal(dx, np.where(keep, np.float32(2), np.float32(0)))


# ---- what stays allowed -----------------------------------------------------------

def results(fname, a):
    """The outputs of a call and the arrays it updates, as bytes."""
    got = FUNCTIONS[fname][0](a)
    got = got if isinstance(got, tuple) else (got,)
    return [g.tobytes() for g in got] + [a[w].tobytes() for w in FUNCTIONS[fname][1]
                                          if w != "out"]


IN_PLACE_CASES = [(f, t) for f, (_, written, read) in FUNCTIONS.items()
                  for t in read if ("out", t) in IN_PLACE and "out" in written]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fname,tensor", IN_PLACE_CASES)
def test_exact_in_place_use_is_allowed(fname, tensor, dtype):
    a = arguments(dtype)
    expected = results(fname, {**arguments(dtype), "out": None})
    a["out"] = a[tensor]
    assert results(fname, a) == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fname", list(FUNCTIONS))
def test_disjoint_views_of_one_buffer_are_accepted(fname, dtype):
    """Adjacent views of one buffer do not overlap: no false alarm."""
    expected = results(fname, arguments(dtype))
    a = arguments(dtype)
    size = a["x"].size
    tensors = np.empty(3 * size + 8, dtype)
    vectors = np.empty(7 * C, dtype)
    names = [k for k in a if kind(k) == "vector"]
    for i, k in enumerate(names):
        vectors[i * C:(i + 1) * C] = a[k]
        a[k] = vectors[i * C:(i + 1) * C]
    for i, k in enumerate(["x", "dy", "out"]):
        tensors[i * size:(i + 1) * size] = a[k].reshape(-1)
        a[k] = tensors[i * size:(i + 1) * size].reshape(SHAPE)
    mask = tensors[3 * size:].view(np.uint8)[: a["mask"].size]
    mask[...] = a["mask"]
    a["mask"] = mask
    assert results(fname, a) == expected


def test_read_only_arguments_may_share_memory():
    a = arguments(np.float32)
    w = a["weight"]
    y, _, _ = dropnorm.batch_norm_train(a["x"], w, w.copy())
    y2, _, _ = dropnorm.batch_norm_train(a["x"], w, w)  # weight is bias: both read
    np.testing.assert_array_equal(y, y2)
    x = a["x"]
    dx, dw, db = dropnorm.batch_norm_backward(x.copy(), x, a["save_mean"], a["save_invstd"])
    dx2, dw2, db2 = dropnorm.batch_norm_backward(x, x, a["save_mean"], a["save_invstd"])
    assert dx.tobytes() == dx2.tobytes() and dw.tobytes() == dw2.tobytes()
    # a per-channel input inside x, both read only
    wx = x.reshape(-1)[1:1 + C]
    y, _, _ = dropnorm.batch_norm_train(x, wx.copy())
    y2, _, _ = dropnorm.batch_norm_train(x, wx)
    assert y.tobytes() == y2.tobytes()


def test_copied_inputs_do_not_count_as_overlap():
    """A read-only input dropnorm copies first (here a non-contiguous x) is
    read from the copy, so out may share the original's memory."""
    base = arguments(np.float64)["x"]
    buf = np.zeros((4, 3, 10))
    buf[:, :, ::2] = base
    x = buf[:, :, ::2]
    expected, _, _ = dropnorm.batch_norm_train(base)
    out = buf.reshape(-1)[: base.size].reshape(SHAPE)  # contiguous, inside x's bytes
    assert np.shares_memory(out, x)
    y, _, _ = dropnorm.batch_norm_train(x, out=out)
    assert y is out and y.tobytes() == expected.tobytes()
