"""Alignment, and inputs NumPy cannot read.

A float32/float64 array whose data is not aligned to its element size (a
view at an odd byte offset) must never reach C as a float*/double*, which is
undefined behaviour (UBSan: misaligned load). Read-only inputs are copied to
aligned memory, like non-contiguous ones: the results are bitwise those of
an aligned copy. Arrays dropnorm writes in place (out=, running statistics)
cannot be copied, so a misaligned one raises a ValueError. Packed masks are
uint8 and need no alignment. .ci/run also runs this file against a build
with -fsanitize=undefined -fno-sanitize-recover=all.

Last, an input np.asarray cannot read (a torch tensor that requires grad, or
anything whose __array__ raises) raises an error that names the argument and
says what to pass instead, with NumPy's error as its __cause__."""

import sys

import numpy as np
import pytest

import dropnorm
from dropnorm import _checks

SHAPE = (4, 3, 5)
C = SHAPE[1]
DTYPES = [np.float32, np.float64]
SWAPPED = ">" if sys.byteorder == "little" else "<"


def misaligned(a, byteorder="="):
    """A writeable, C-contiguous copy of a whose data starts 1 byte past an
    aligned address."""
    dtype = a.dtype.newbyteorder(byteorder)
    buf = bytearray(a.nbytes + 16)
    start = -np.frombuffer(buf, np.uint8).ctypes.data % 16 + 1
    m = np.frombuffer(buf, dtype, count=a.size, offset=start).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and m.flags.writeable and not m.flags.aligned
    return m


def arguments(dtype, axis=1):
    rng = np.random.default_rng(0)
    shape = SHAPE if axis == 1 else (SHAPE[0], SHAPE[2], C)
    x = (0.5 + rng.standard_normal(shape)).astype(dtype)
    _, save_mean, save_invstd = dropnorm.batch_norm_train(x, axis=axis)
    _, mask = dropnorm.dropout(x, 0.5, seed=1, return_mask=True)
    return {
        "x": x,
        "dy": rng.standard_normal(shape).astype(dtype),
        "weight": (1 + rng.random(C)).astype(dtype),
        "bias": rng.standard_normal(C).astype(dtype),
        "running_mean": rng.standard_normal(C).astype(dtype),
        "running_var": (1 + rng.random(C)).astype(dtype),
        "save_mean": save_mean,
        "save_invstd": save_invstd,
        "mask": mask,
        "axis": axis,
    }


# name: (call, its read-only float arguments, the arrays it writes in place)
FUNCTIONS = {
    "batch_norm_train": (
        lambda a, **kw: dropnorm.batch_norm_train(
            a["x"], a["weight"], a["bias"], a.get("rm"), a.get("rv"), momentum=0.25,
            axis=a["axis"], **kw),
        ["x", "weight", "bias"], ["out", "running_mean", "running_var"]),
    "batch_norm_infer": (
        lambda a, **kw: dropnorm.batch_norm_infer(
            a["x"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
            axis=a["axis"], **kw),
        ["x", "running_mean", "running_var", "weight", "bias"], ["out"]),
    "batch_norm_backward": (
        lambda a, **kw: dropnorm.batch_norm_backward(
            a["dy"], a["x"], a["save_mean"], a["save_invstd"], a["weight"], axis=a["axis"],
            **kw),
        ["dy", "x", "save_mean", "save_invstd", "weight"], ["out"]),
    "batch_norm_infer_backward": (
        lambda a, **kw: dropnorm.batch_norm_infer_backward(
            a["dy"], a["x"], a["running_mean"], a["running_var"], a["weight"], axis=a["axis"],
            **kw),
        ["dy", "x", "running_mean", "running_var", "weight"], ["out"]),
    "dropout": (
        lambda a, **kw: dropnorm.dropout(a["x"], 0.5, seed=1, return_mask=True, **kw),
        ["x"], ["out"]),
    "dropout_channelwise": (
        lambda a, **kw: dropnorm.dropout(a["x"], 0.5, seed=1, channelwise=True, axis=a["axis"],
                                         **kw),
        ["x"], ["out"]),
    "dropout_apply_mask": (
        lambda a, **kw: dropnorm.dropout_apply_mask(a["x"], a["mask"], 0.5, **kw),
        ["x"], ["out"]),
    "dropout_backward": (
        lambda a, **kw: dropnorm.dropout_backward(a["dy"], 0.5, seed=1, **kw),
        ["dy"], ["out"]),
    "dropout_backward_mask": (
        lambda a, **kw: dropnorm.dropout_backward(a["dy"], 0.5, mask=a["mask"], **kw),
        ["dy"], ["out"]),
}


def run(fname, a, **kw):
    """Every output of the call, and the running statistics it updates, as bytes."""
    if fname == "batch_norm_train":
        a = {**a, "rm": a["running_mean"].copy(), "rv": a["running_var"].copy()}
    got = FUNCTIONS[fname][0](a, **kw)
    got = list(got) if isinstance(got, tuple) else [got]
    if fname == "batch_norm_train":
        got += [a["rm"], a["rv"]]
    return [g.dtype.str + g.tobytes().hex() for g in got]


INPUT_CASES = [(f, name) for f, (_, reads, _) in FUNCTIONS.items() for name in reads + ["*"]]


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fname,name", INPUT_CASES)
def test_misaligned_inputs_give_the_same_bits(fname, name, dtype, axis):
    """One read-only input misaligned (or all of them, "*")."""
    a = arguments(dtype, axis)
    expected = run(fname, a)
    names = FUNCTIONS[fname][1] if name == "*" else [name]
    b = dict(a, **{k: misaligned(a[k]) for k in names})
    before = {k: b[k].tobytes() for k in names}
    assert run(fname, b) == expected
    assert all(b[k].tobytes() == before[k] for k in names)  # inputs are not written


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_and_byte_swapped_input(dtype):
    a = arguments(dtype)
    expected = run("batch_norm_train", a)
    b = dict(a, x=misaligned(a["x"], SWAPPED), weight=misaligned(a["weight"], SWAPPED))
    assert run("batch_norm_train", b) == expected


def test_misaligned_in_place_input_and_output():
    """out=x with a misaligned x: out cannot be copied, so it raises."""
    x = misaligned(arguments(np.float32)["x"])
    before = x.tobytes()
    with pytest.raises(ValueError, match="^out: .*aligned"):
        dropnorm.dropout(x, 0.5, out=x)
    assert x.tobytes() == before


def test_mask_at_an_odd_byte_offset_is_fine():
    a = arguments(np.float64)
    expected = run("dropout_apply_mask", a)
    buf = bytearray(a["mask"].size + 1)
    mask = np.frombuffer(buf, np.uint8, offset=1)
    mask[...] = a["mask"]
    assert run("dropout_apply_mask", dict(a, mask=mask)) == expected
    assert run("dropout_backward_mask", dict(a, mask=mask)) == run("dropout_backward_mask", a)


WRITTEN_CASES = [(f, name) for f, (_, _, writes) in FUNCTIONS.items() for name in writes]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fname,name", WRITTEN_CASES)
def test_misaligned_written_arrays_are_rejected(fname, name, dtype):
    a = arguments(dtype)
    target = misaligned(np.full_like(a["x"], 7.0) if name == "out" else a[name])
    before = target.tobytes()
    if name == "out":
        call = lambda: FUNCTIONS[fname][0](a, out=target)  # noqa: E731
    else:
        key = {"running_mean": "rm", "running_var": "rv"}[name]
        call = lambda: FUNCTIONS[fname][0](dict(a, **{key: target}))  # noqa: E731
    with pytest.raises(ValueError, match=rf"^{name}: .*\baligned\b"):
        call()
    assert target.tobytes() == before


@pytest.mark.parametrize("dtype", DTYPES)
def test_checks_return_aligned_arrays(dtype):
    x = misaligned(arguments(dtype)["x"])
    v = misaligned(np.arange(C, dtype=dtype))
    for arr in (_checks.as_tensor("x", x), _checks.as_array("x", x),
                _checks.same_tensor("dy", x, _checks.as_tensor("x", x)),
                _checks.as_vector("weight", v, C, np.dtype(dtype))):
        assert arr.flags.aligned and arr.flags.c_contiguous
    np.testing.assert_array_equal(_checks.as_tensor("x", x), x)
    aligned = np.ones(SHAPE, dtype)
    assert _checks.as_tensor("x", aligned) is aligned  # no copy when none is needed


# ---- inputs NumPy cannot read ---------------------------------------------------

class Device:
    def __init__(self, name):
        self.type = name.split(":")[0]
        self.name = name

    def __str__(self):
        return self.name


class FakeTensor:
    """Stands in for a torch tensor (torch is optional): np.asarray fails
    the way torch's does for a tensor that requires grad."""

    __module__ = "torch"

    def __init__(self, requires_grad=True, device="cpu"):
        self.requires_grad = requires_grad
        self.device = Device(device)

    def __array__(self, dtype=None, copy=None):
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. "
                        "Use Tensor.cpu() to copy the tensor to host memory first.")


class Unreadable:
    def __array__(self, dtype=None, copy=None):
        raise ValueError("no array here")


# (function, the argument replaced): every kind of read-only array argument
READ_ARGUMENTS = [
    ("batch_norm_train", "x"), ("batch_norm_train", "weight"), ("batch_norm_train", "bias"),
    ("batch_norm_infer", "x"), ("batch_norm_infer", "running_mean"),
    ("batch_norm_backward", "dy"), ("batch_norm_backward", "x"),
    ("batch_norm_backward", "save_invstd"), ("batch_norm_infer_backward", "running_var"),
    ("dropout", "x"), ("dropout_apply_mask", "x"), ("dropout_apply_mask", "mask"),
    ("dropout_backward", "dy"), ("dropout_backward_mask", "mask"),
]


def unreadable_error(fname, name, value):
    a = dict(arguments(np.float32), **{name: value})
    with pytest.raises((TypeError, ValueError)) as info:
        FUNCTIONS[fname][0](a)
    return info.value


@pytest.mark.parametrize("fname,name", READ_ARGUMENTS)
def test_tensor_that_requires_grad_names_the_argument(fname, name):
    err = unreadable_error(fname, name, FakeTensor())
    assert type(err) is TypeError
    assert str(err) == (f"{name}: cannot read this torch tensor as a NumPy array "
                        f"(it requires grad): pass {name}.detach() (or, for gradients, use "
                        "dropnorm.torch's functions and modules)")
    assert isinstance(err.__cause__, RuntimeError)


def test_tensor_on_another_device_names_the_argument():
    err = unreadable_error("dropout", "x", FakeTensor(False, "cuda:0"))
    assert type(err) is TypeError
    assert str(err).startswith("x: cannot read this torch tensor as a NumPy array "
                               "(it is on device cuda")
    assert str(err).endswith("pass x.cpu()")
    err = unreadable_error("dropout", "x", FakeTensor(True, "cuda:0"))
    assert str(err).endswith("pass x.detach().cpu()")


@pytest.mark.parametrize("fname,name", READ_ARGUMENTS)
def test_other_unreadable_input_names_the_argument(fname, name):
    err = unreadable_error(fname, name, Unreadable())
    assert type(err) is ValueError
    assert str(err).startswith(f"{name}: cannot read this Unreadable object as a NumPy array")
    assert "no array here" in str(err)
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__) == "no array here"


def test_real_torch_tensor_that_requires_grad():
    torch = pytest.importorskip("torch")
    x = torch.ones((4, 3, 5), requires_grad=True)
    with pytest.raises(TypeError, match=r"^x: .*requires grad.*pass x\.detach\(\) \(or, for "
                                        r"gradients, use dropnorm\.torch's") as info:
        dropnorm.batch_norm_train(x)
    assert info.value.__cause__ is not None
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match=r"^weight: .*pass weight\.detach\(\) "):
        dropnorm.batch_norm_train(x.detach(), w)
    y, _, _ = dropnorm.batch_norm_train(x.detach(), w.detach())
    assert y.shape == (4, 3, 5)
