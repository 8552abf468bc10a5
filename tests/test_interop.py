"""Array interop of the plain functions and layers (issue 18): a read-only
input may be any CPU object that exports ``__dlpack__`` (np.from_dlpack) or
the buffer protocol, taken zero-copy; outputs are NumPy arrays. The exact
ndarray path (the checks' fast path) is unchanged; torch tensors are
checked where PyTorch is installed."""

import array

import numpy as np
import pytest

import dropnorm
from dropnorm import _checks

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


class DLPackOnly:
    """Exports its array through DLPack and nothing else (no __array__, no
    buffer): np.asarray would make a 0-d object array of it."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class OtherDevice:
    """A DLPack exporter whose memory is not on the CPU."""

    def __dlpack__(self, **kwargs):
        raise BufferError("the data is on device cuda:0")

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA


def _data(shape=(6, 3, 4), dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_a_dlpack_only_object_is_read_zero_copy():
    x = _data()
    obj = DLPackOnly(x)
    assert np.asarray(obj).dtype == object  # what NumPy alone would make of it
    view = _checks.as_tensor("x", obj)
    assert type(view) is np.ndarray and np.shares_memory(view, x)
    # eval-mode inverted dropout returns its (read) input: x's own memory
    y = dropnorm.Dropout(0.5).eval()(obj)
    assert type(y) is np.ndarray and np.shares_memory(y, x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functions_and_layers_take_dlpack_inputs(dtype):
    x, dy = _data(dtype=dtype), _data(dtype=dtype, seed=1)
    w, b = np.linspace(0.5, 1.5, 3).astype(dtype), np.linspace(-1, 1, 3).astype(dtype)
    wrap = DLPackOnly
    y, mean, invstd = dropnorm.batch_norm_train(wrap(x), wrap(w), wrap(b))
    want = dropnorm.batch_norm_train(x, w, b)
    for got, ref in zip((y, mean, invstd), want):
        assert type(got) is np.ndarray and np.array_equal(got, ref)
    got = dropnorm.batch_norm_backward(wrap(dy), wrap(x), wrap(mean), wrap(invstd), wrap(w))
    for g, r in zip(got, dropnorm.batch_norm_backward(dy, x, mean, invstd, w)):
        assert np.array_equal(g, r)
    assert np.array_equal(dropnorm.batch_norm_infer(wrap(x), wrap(mean), wrap(invstd)),
                          dropnorm.batch_norm_infer(x, mean, invstd))
    assert np.array_equal(dropnorm.dropout(wrap(x), 0.5, seed=3),
                          dropnorm.dropout(x, 0.5, seed=3))
    _, mask = dropnorm.dropout(x, 0.5, seed=3, return_mask=True)
    assert np.array_equal(dropnorm.dropout_backward(wrap(dy), 0.5, mask=wrap(mask)),
                          dropnorm.dropout_backward(dy, 0.5, seed=3))
    stats = dropnorm.batch_norm_partial_stats(wrap(x))
    assert np.array_equal(stats, dropnorm.batch_norm_partial_stats(x))
    merged = dropnorm.batch_norm_merge_stats(wrap(stats[None].copy()))
    assert all(np.array_equal(a, c) for a, c in zip(merged, dropnorm.batch_norm_merge_stats(
        stats[None])))
    # layers, channel dropout included (its unbatched test reads the shape)
    bn = dropnorm.BatchNorm1d(3, dtype=dtype)
    assert np.array_equal(bn(wrap(x)), dropnorm.BatchNorm1d(3, dtype=dtype)(x))
    assert np.array_equal(bn.backward(wrap(dy)), dropnorm.batch_norm_backward(
        dy, x, *dropnorm.batch_norm_train(x)[1:])[0])
    drop = dropnorm.Dropout1d(0.5, seed=4)
    got = drop(wrap(x))
    assert np.array_equal(got, dropnorm.dropout(x, 0.5, seed=4, stream=0, channelwise=True))
    assert np.array_equal(drop.backward(wrap(dy)), dropnorm.dropout_backward(
        dy, 0.5, seed=4, stream=0, channelwise=True))
    assert drop(wrap(x[0])).shape == (3, 4)  # unbatched (C, L)


def test_buffer_protocol_inputs_are_zero_copy():
    buf = array.array("d", [1.0, -2.0, 3.0, 0.5])
    y = dropnorm.Dropout(0.5).eval()(buf)
    assert type(y) is np.ndarray and np.shares_memory(y, np.frombuffer(buf))
    x = _data((4, 2))
    assert np.array_equal(dropnorm.batch_norm_train(memoryview(x))[0],
                          dropnorm.batch_norm_train(x)[0])


def test_unreadable_exporters_name_the_argument():
    with pytest.raises(TypeError, match=r"^x: cannot read this OtherDevice object as a NumPy "
                                        r"array \(BufferError: the data is on device cuda:0\)"):
        dropnorm.dropout(OtherDevice(), 0.5)
    with pytest.raises(TypeError, match="^weight: cannot read this OtherDevice"):
        dropnorm.batch_norm_train(_data(), OtherDevice())


def test_exact_ndarrays_keep_their_fast_path():
    x = _data()
    assert _checks.as_tensor("x", x) is x
    drop = dropnorm.Dropout(0.5).eval()
    assert drop(x) is x
    # an ndarray subclass is still read by np.asarray (not through DLPack)
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, bool))
    assert np.array_equal(dropnorm.batch_norm_train(masked)[0], dropnorm.batch_norm_train(x)[0])


@needs_torch
def test_torch_tensors_are_read_zero_copy():
    t = torch.randn(6, 3, 4)
    view = _checks.as_tensor("x", t)
    assert type(view) is np.ndarray and np.shares_memory(view, t.numpy())
    y, _, _ = dropnorm.batch_norm_train(t)
    assert type(y) is np.ndarray  # outputs are NumPy arrays
    assert np.array_equal(y, dropnorm.batch_norm_train(t.numpy())[0])
    assert np.shares_memory(dropnorm.Dropout(0.5).eval()(t), t.numpy())
    # channels_last: another stride order, copied to C order, the same result
    t4 = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    assert np.array_equal(dropnorm.batch_norm_train(t4)[0],
                          dropnorm.batch_norm_train(t4.contiguous().numpy())[0])
    # a layer and its backward
    bn = dropnorm.BatchNorm2d(3)
    bn(t4)
    assert bn.backward(torch.ones_like(t4)).shape == (2, 3, 4, 5)


@needs_torch
def test_torch_tensors_that_cannot_be_read_name_the_argument():
    x = torch.ones(4, 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"^x: .*\(it requires grad\): pass x\.detach\(\) \(or, "
                                        r"for gradients, use dropnorm\.torch's"):
        dropnorm.dropout(x, 0.5)
    with pytest.raises(TypeError, match=r"^dy: .*requires grad"):
        dropnorm.dropout_backward(x, 0.5, seed=1)
    with pytest.raises(TypeError, match=r"^x: cannot read this torch tensor as a NumPy array"):
        dropnorm.dropout(torch.ones(4, 3, dtype=torch.bfloat16), 0.5)
    with pytest.raises(TypeError, match=r"^x: expected a float32 or float64 array, or float16 "
                                        r"or bfloat16 \(half precision\), got dtype int64"):
        dropnorm.dropout(torch.ones(4, 3, dtype=torch.int64), 0.5)
