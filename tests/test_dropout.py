"""Dropout: kernels, masks and Philox4x32-10 against the NumPy oracle, exactly."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dropnorm

import oracle

DTYPES = [np.float32, np.float64]
MODES = ["inverted", "classic"]
BIG_SEED = 0x0123456789ABCDEF  # both 32-bit halves non-zero
BIG_STREAM = (1 << 63) + 12345

KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 3).astype(dtype)


def bits_equal(a, b):
    """Exact equality including the sign of zero and NaN positions."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- Philox4x32-10 -------------------------------------------------------------

@pytest.mark.parametrize("ctr, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(ctr, key, expected):
    assert dropnorm.philox4x32_10(ctr, key) == expected
    assert tuple(int(w) for w in oracle.philox4x32_10(ctr, key)) == expected
    # numpy integers and arrays are accepted too
    assert dropnorm.philox4x32_10(np.array(ctr, np.uint32), np.array(key, np.uint64)) == expected


def test_philox_matches_oracle_on_random_counters():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 1 << 32, size=(6, 200), dtype=np.uint64)
    want = oracle.philox4x32_10(words[:4], (0, 0))
    got = np.array([dropnorm.philox4x32_10(words[:4, i], (0, 0)) for i in range(200)])
    assert np.array_equal(got.T, np.array(want))
    for i in range(20):
        key = (int(words[4, i]), int(words[5, i]))
        want = tuple(int(w) for w in oracle.philox4x32_10(words[:4, i], key))
        assert dropnorm.philox4x32_10(words[:4, i], key) == want


@pytest.mark.parametrize("ctr, key, exc, name", [
    ((0, 0, 0), (0, 0), ValueError, "ctr"),
    ((0, 0, 0, 0, 0), (0, 0), ValueError, "ctr"),
    ((0, 0, 0, -1), (0, 0), ValueError, "ctr"),
    ((0, 1 << 32, 0, 0), (0, 0), ValueError, "ctr"),
    ((0, 0.5, 0, 0), (0, 0), TypeError, "ctr"),
    (5, (0, 0), TypeError, "ctr"),
    ((0, 0, 0, 0), (0,), ValueError, "key"),
    ((0, 0, 0, 0), (0, 1 << 32), ValueError, "key"),
    ((0, 0, 0, 0), (0, "1"), TypeError, "key"),
    ((0, 0, 0, 0), None, TypeError, "key"),
])
def test_philox_bad_arguments(ctr, key, exc, name):
    with pytest.raises(exc, match=name):
        dropnorm.philox4x32_10(ctr, key)


# ---- Masks ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 5, 7, 8, 9, 31, 63, 64, 65, 127, 1001, 16383, 16385, 70001])
@pytest.mark.parametrize("p", [0.0, 1e-12, 0.1, 0.5, 0.9, 1.0 - 2.0**-53, 1.0])
def test_mask_matches_oracle(n, p):
    for seed, stream in [(0, 0), (7, 3), (BIG_SEED, BIG_STREAM), (2**64 - 1, 2**64 - 1)]:
        got = dropnorm.dropout_mask(n, p, seed, stream)
        assert got.dtype == np.uint8 and got.shape == ((n + 7) // 8,)
        assert np.array_equal(got, oracle.dropout_mask(n, p, seed, stream))


def test_mask_threshold_boundary():
    # a word equal to floor(p * 2**32) is kept, one just below it dropped
    seed, stream = 11, 2**40 + 7
    words = oracle.dropout_words(4, seed, stream)
    for w in range(4):
        word = int(words[w])
        kept = oracle.unpack_mask(dropnorm.dropout_mask(4, word / 2**32, seed, stream), 4)
        assert kept[w]
        dropped = oracle.unpack_mask(dropnorm.dropout_mask(4, (word + 1) / 2**32, seed, stream), 4)
        assert not dropped[w]


def test_mask_empty():
    m = dropnorm.dropout_mask(0, 0.5)
    assert m.dtype == np.uint8 and m.shape == (0,)


def test_mask_is_prefix_stable():
    # decision i depends on i only: a longer mask extends a shorter one
    long = oracle.unpack_mask(dropnorm.dropout_mask(1000, 0.3, 5, 6), 1000)
    short = oracle.unpack_mask(dropnorm.dropout_mask(333, 0.3, 5, 6), 333)
    assert np.array_equal(long[:333], short)


# ---- Forward, elementwise -----------------------------------------------------

SHAPES = [(1,), (7,), (65,), (3, 5), (2, 3, 5, 7), (4, 1, 9), (16411,), (3, 70, 67)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_oracle(dtype, mode, training, shape):
    x = data(shape, dtype)
    for p, seed, stream in [(0.5, 0, 0), (0.1, BIG_SEED, BIG_STREAM), (0.9, 3, 2**32 + 1)]:
        y, mask = dropnorm.dropout(x, p, seed, stream, mode=mode, training=training,
                                   return_mask=True)
        want_y, want_mask = oracle.dropout_forward(x, p, seed, stream, mode, training)
        assert bits_equal(y, want_y)
        assert np.array_equal(mask, want_mask)
        assert np.array_equal(dropnorm.dropout(x, p, seed, stream, mode=mode, training=training),
                              y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_default_arguments(dtype):
    # p=0.5; seed=None, stream=None: a fresh pair from the default generator,
    # which after manual_seed(n) gives (n, 0), (n, 1), ...
    x = data((4, 33), dtype)
    dropnorm.manual_seed(0)
    assert bits_equal(dropnorm.dropout(x), oracle.dropout_forward(x, 0.5, 0, 0)[0])
    assert bits_equal(dropnorm.dropout(x), oracle.dropout_forward(x, 0.5, 0, 1)[0])
    # a seed alone is stream 0, a stream alone seed 0 (as before seed=None)
    assert bits_equal(dropnorm.dropout(x, seed=7), oracle.dropout_forward(x, 0.5, 7, 0)[0])
    assert bits_equal(dropnorm.dropout(x, stream=7), oracle.dropout_forward(x, 0.5, 0, 7)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_is_rounded_once_to_the_dtype(dtype):
    x = np.ones(4096, dtype)
    p = 0.3
    y, mask = dropnorm.dropout(x, p, 1, 2, return_mask=True)
    keep = oracle.unpack_mask(mask, x.size)
    assert np.all(y[keep] == dtype(1.0 / (1.0 - p)))
    assert np.all(y[~keep] == 0)
    y = dropnorm.dropout(x, p, 1, 2, mode="classic", training=False)
    assert np.all(y == dtype(1.0 - p))


# ---- Forward, channel dropout --------------------------------------------------

CHANNEL_CASES = [
    ((2, 3), 1), ((2, 3), -1), ((4, 5, 7), 1), ((4, 5, 7), -1), ((2, 3, 4, 5), 1),
    ((2, 4, 5, 3), -1), ((3, 1, 17), 1), ((3, 17, 1), -1), ((2, 70, 3), 1), ((2, 3, 70), -1),
    ((2, 3, 2, 2, 5), 1), ((2, 2, 2, 5, 3), -1), ((1, 2, 9000), 1), ((1, 9000, 2), -1),
    ((5, 130, 1), 1), ((5, 1, 130), -1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, axis", CHANNEL_CASES)
def test_channelwise_matches_oracle(dtype, mode, shape, axis):
    x = data(shape, dtype)
    for p, seed, stream in [(0.5, 1, 2), (0.2, BIG_SEED, BIG_STREAM)]:
        y, mask = dropnorm.dropout(x, p, seed, stream, mode=mode, channelwise=True, axis=axis,
                                   return_mask=True)
        want_y, want_mask = oracle.dropout_forward(x, p, seed, stream, mode, True, True, axis)
        assert bits_equal(y, want_y)
        assert np.array_equal(mask, want_mask)
        n, c = shape[0], (shape[1] if axis == 1 else shape[-1])
        assert mask.shape == ((n * c + 7) // 8,)
        # the mask holds exactly the (n, c) decisions of dropout_mask
        assert np.array_equal(mask, dropnorm.dropout_mask(n * c, p, seed, stream))
        # backward, both ways, and apply-mask agree with the forward
        dy = data(shape, dtype, 9)
        want_dx = oracle.dropout_backward(dy, p, seed, stream, mode, True, axis)
        for m in (None, mask):
            dx = dropnorm.dropout_backward(dy, p, seed, stream, mode=mode, channelwise=True,
                                           axis=axis, mask=m)
            assert bits_equal(dx, want_dx)
        assert bits_equal(dropnorm.dropout_apply_mask(x, mask, p, mode=mode, channelwise=True,
                                                      axis=axis), y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channelwise_whole_channels(dtype):
    x = data((6, 8, 5, 5), dtype) + 100  # no zeros in x
    y = dropnorm.dropout(x, 0.5, 4, 5, channelwise=True)
    zero = (y == 0).reshape(6, 8, 25)
    assert np.all(zero.all(axis=2) | (~zero).all(axis=2))
    assert 0 < zero.all(axis=2).sum() < 48
    y = dropnorm.dropout(x, 0.5, 4, 5, channelwise=True, axis=-1)
    zero = (y == 0).reshape(6, 40, 5)
    assert np.all(zero.all(axis=1) | (~zero).all(axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_channelwise_eval(dtype, mode):
    x = data((3, 4, 5), dtype)
    y, mask = dropnorm.dropout(x, 0.25, 1, 1, mode=mode, training=False, channelwise=True,
                               return_mask=True)
    want, want_mask = oracle.dropout_forward(x, 0.25, 1, 1, mode, False, True)
    assert bits_equal(y, want)
    assert np.array_equal(mask, want_mask)


# ---- Backward and apply-mask ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1,), (9,), (5, 13), (2, 3, 4, 5), (20011,)])
def test_backward_matches_oracle(dtype, mode, shape):
    dy = data(shape, dtype, 3)
    x = data(shape, dtype, 4)
    for p, seed, stream in [(0.5, 0, 0), (0.3, BIG_SEED, BIG_STREAM)]:
        want = oracle.dropout_backward(dy, p, seed, stream, mode)
        assert bits_equal(dropnorm.dropout_backward(dy, p, seed, stream, mode=mode), want)
        _, mask = dropnorm.dropout(x, p, seed, stream, mode=mode, return_mask=True)
        # from the stored mask: seed and stream are then ignored
        assert bits_equal(dropnorm.dropout_backward(dy, p, 99, 98, mode=mode, mask=mask), want)
        # the stored mask under an inexact forward is the same as regenerated
        assert np.array_equal(mask, dropnorm.dropout_mask(dy.size, p, seed, stream))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_apply_mask_matches_forward_and_oracle(dtype, mode):
    x = data((7, 11, 3), dtype)
    p = 0.4
    y, mask = dropnorm.dropout(x, p, 8, 9, mode=mode, return_mask=True)
    assert bits_equal(dropnorm.dropout_apply_mask(x, mask, p, mode=mode), y)
    # an arbitrary caller mask, with junk in the unused high bits
    rng = np.random.default_rng(5)
    keep = rng.random(x.size) < 0.7
    mask = oracle.pack_mask(keep)
    assert x.size % 8
    mask[-1] |= (0xFF << (x.size % 8)) & 0xFF
    want = oracle.dropout_train_apply(x, keep, p, mode)
    assert bits_equal(dropnorm.dropout_apply_mask(x, mask, p, mode=mode), want)
    assert bits_equal(dropnorm.dropout_backward(x, p, mode=mode, mask=mask), want)
    # p == 1 gives zeros whatever the mask
    assert bits_equal(dropnorm.dropout_apply_mask(x, mask, 1.0, mode=mode), np.zeros_like(x))


def test_apply_mask_accepts_noncontiguous_mask():
    x = data((100,), np.float64)
    _, mask = dropnorm.dropout(x, 0.5, 1, 2, return_mask=True)
    strided = np.zeros(2 * mask.size, np.uint8)
    strided[::2] = mask
    assert bits_equal(dropnorm.dropout_apply_mask(x, strided[::2], 0.5),
                      dropnorm.dropout(x, 0.5, 1, 2))


# ---- In place and memory order -------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channelwise", [False, True])
def test_in_place(dtype, channelwise):
    x = data((5, 6, 7), dtype)
    want, mask = dropnorm.dropout(x, 0.3, 1, 2, channelwise=channelwise, return_mask=True)
    z = x.copy()
    assert dropnorm.dropout(z, 0.3, 1, 2, channelwise=channelwise, out=z) is z
    assert bits_equal(z, want)
    z = x.copy()
    assert dropnorm.dropout_apply_mask(z, mask, 0.3, channelwise=channelwise, out=z) is z
    assert bits_equal(z, want)
    for m in (None, mask):
        z = x.copy()
        assert dropnorm.dropout_backward(z, 0.3, 1, 2, channelwise=channelwise, mask=m,
                                         out=z) is z
        assert bits_equal(z, want)
    for mode in MODES:  # inference and classic too
        want = dropnorm.dropout(x, 0.3, mode=mode, training=False)
        z = x.copy()
        dropnorm.dropout(z, 0.3, mode=mode, training=False, out=z)
        assert bits_equal(z, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_argument(dtype):
    x = data((4, 9), dtype)
    out = np.full_like(x, 7)
    y = dropnorm.dropout(x, 0.5, 3, 4, out=out)
    assert y is out
    assert bits_equal(out, oracle.dropout_forward(x, 0.5, 3, 4)[0])


@pytest.mark.parametrize("channelwise", [False, True])
def test_noncontiguous_input_is_copied(channelwise):
    base = data((6, 10, 8), np.float32)
    x = base[:, ::2, 1:]
    assert not x.flags.c_contiguous
    y = dropnorm.dropout(x, 0.5, 1, 2, channelwise=channelwise)
    assert bits_equal(y, dropnorm.dropout(np.ascontiguousarray(x), 0.5, 1, 2,
                                          channelwise=channelwise))
    dx = dropnorm.dropout_backward(x, 0.5, 1, 2, channelwise=channelwise)
    assert bits_equal(dx, y)
    xf = np.asfortranarray(base)
    assert bits_equal(dropnorm.dropout(xf, 0.5, 1, 2), dropnorm.dropout(base, 0.5, 1, 2))


def test_read_only_input():
    x = data((50,), np.float64)
    x.flags.writeable = False
    y = dropnorm.dropout(x, 0.5, 1, 2)
    assert bits_equal(y, oracle.dropout_forward(x, 0.5, 1, 2)[0])


def test_empty_input():
    for x in (np.zeros(0, np.float32), np.zeros((0, 3, 4), np.float64)):
        y, mask = dropnorm.dropout(x, 0.5, return_mask=True)
        assert y.shape == x.shape and y.dtype == x.dtype and mask.shape == (0,)
        assert dropnorm.dropout_backward(x, 0.5, seed=1).shape == x.shape
        assert dropnorm.dropout_apply_mask(x, mask, 0.5).shape == x.shape
    y, mask = dropnorm.dropout(np.zeros((0, 3, 4)), 0.5, channelwise=True, return_mask=True)
    assert y.shape == (0, 3, 4) and mask.shape == (0,)


# ---- Special values ------------------------------------------------------------

def special_input(dtype, n=1003):
    x = data((n,), dtype)
    x[::5] = np.nan
    x[1::5] = np.inf
    x[2::5] = -np.inf
    x[3::7] = -0.0
    # a NaN with a payload: p == 0 must keep it bit for bit
    bits = x.view(np.uint32 if dtype == np.float32 else np.uint64)
    bits[10] |= 0x5
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_p_zero_is_bitwise_identity(dtype, mode):
    x = special_input(dtype)
    y, mask = dropnorm.dropout(x, 0.0, 5, 6, mode=mode, return_mask=True)
    assert bits_equal(y, x)
    assert np.array_equal(mask, oracle.pack_mask(np.ones(x.size, bool)))
    assert bits_equal(dropnorm.dropout_backward(x, 0.0, 5, 6, mode=mode), x)
    assert bits_equal(dropnorm.dropout(x, 0.0, mode=mode, training=False), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channelwise", [False, True])
def test_p_one_gives_zeros(dtype, mode, channelwise):
    x = special_input(dtype, 1000).reshape(10, 10, 10)
    zeros = np.zeros_like(x)
    y, mask = dropnorm.dropout(x, 1.0, 5, 6, mode=mode, channelwise=channelwise,
                               return_mask=True)
    assert bits_equal(y, zeros)
    assert not mask.any()
    assert bits_equal(dropnorm.dropout_backward(x, 1.0, 5, 6, mode=mode,
                                                channelwise=channelwise), zeros)
    ones = np.full_like(mask, 0xFF)
    assert bits_equal(dropnorm.dropout_apply_mask(x, ones, 1.0, mode=mode,
                                                  channelwise=channelwise), zeros)
    if mode == "classic":
        assert bits_equal(dropnorm.dropout(x, 1.0, mode=mode, training=False), zeros)
    else:
        assert bits_equal(dropnorm.dropout(x, 1.0, mode=mode, training=False), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_at_dropped_places_give_zero(dtype):
    x = special_input(dtype)
    y, mask = dropnorm.dropout(x, 0.5, 5, 6, return_mask=True)
    keep = oracle.unpack_mask(mask, x.size)
    assert 300 < keep.sum() < 700
    assert bits_equal(y[~keep], np.zeros((~keep).sum(), dtype))  # +0.0 exactly
    assert np.array_equal(np.isnan(y[keep]), np.isnan(x[keep]))
    assert bits_equal(y, oracle.dropout_forward(x, 0.5, 5, 6)[0])


# ---- Thread-count independence -------------------------------------------------

_HASH_SCRIPT = textwrap.dedent("""
    import hashlib, numpy as np, dropnorm
    h = hashlib.sha256()
    x = np.random.default_rng(0).standard_normal(1 << 21).astype(np.float32)
    y, m = dropnorm.dropout(x, 0.3, 12345, 2**40 + 1, return_mask=True)
    h.update(y.tobytes()); h.update(m.tobytes())
    xd = x[: 1 << 20].astype(np.float64)
    h.update(dropnorm.dropout_backward(xd, 0.7, 3, 4, mode="classic").tobytes())
    x4 = x.reshape(32, 64, 32, 32)
    for axis in (1, -1):
        y, m = dropnorm.dropout(x4, 0.5, 7, 8, channelwise=True, axis=axis, return_mask=True)
        h.update(y.tobytes()); h.update(m.tobytes())
    h.update(dropnorm.dropout(x.reshape(4096, 64, 8), 0.4, 1, 2, channelwise=True).tobytes())
    h.update(dropnorm.dropout_mask(3_000_001, 0.9, 2**64 - 1, 5).tobytes())
    print(dropnorm.get_max_threads(), h.hexdigest())
""")


def test_bitwise_identical_for_any_thread_count():
    hashes = {}
    for threads in (1, 2, 3, 7):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        if dropnorm.build_info()["openmp"]:
            assert int(out[0]) == threads  # the threads really ran
        hashes[threads] = out[1]
    assert len(set(hashes.values())) == 1, hashes


def test_set_num_threads_does_not_change_results():
    x = data((1 << 20,), np.float32)
    saved = dropnorm.get_max_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            dropnorm.set_num_threads(threads)
            y, m = dropnorm.dropout(x, 0.5, 1, 2, return_mask=True)
            outs.append(hashlib.sha256(y.tobytes() + m.tobytes()).hexdigest())
    finally:
        dropnorm.set_num_threads(saved)
    assert len(set(outs)) == 1


# ---- Statistics ----------------------------------------------------------------

N_STAT = 2_000_000


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_within_six_sigma(p):
    keep = oracle.unpack_mask(dropnorm.dropout_mask(N_STAT, p, 2024, 1), N_STAT)
    sigma = np.sqrt(N_STAT * p * (1 - p))
    assert abs(keep.sum() - N_STAT * (1 - p)) < 6 * sigma


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_word_positions_equally_kept(p):
    # chi-square with 3 degrees of freedom over the kept counts of i mod 4;
    # 16.27 is the critical value for alpha = 0.001
    keep = oracle.unpack_mask(dropnorm.dropout_mask(N_STAT, p, 99, 5), N_STAT)
    counts = keep.reshape(-1, 4).sum(axis=0)
    expected = counts.sum() / 4
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 16.27, (counts, chi2)


def test_successive_streams_and_seeds_differ():
    n, p = 100_000, 0.5
    masks = [oracle.unpack_mask(dropnorm.dropout_mask(n, p, 1, s), n) for s in range(4)]
    masks.append(oracle.unpack_mask(dropnorm.dropout_mask(n, p, 2, 0), n))
    masks.append(oracle.unpack_mask(dropnorm.dropout_mask(n, p, 1, 1 << 32), n))
    for i in range(len(masks)):
        for j in range(i):
            # independent masks disagree on about 2p(1-p) = half the places
            frac = np.mean(masks[i] != masks[j])
            assert abs(frac - 0.5) < 6 * np.sqrt(0.25 / n), (i, j, frac)
    x = np.ones(n)
    assert not np.array_equal(dropnorm.dropout(x, p, 1, 0), dropnorm.dropout(x, p, 1, 1))


# ---- Errors: they name the argument and change nothing -------------------------

ERROR_CASES = [
    # (function, kwargs, exception, name in message)
    ("dropout", dict(p=-0.1), ValueError, "p"),
    ("dropout", dict(p=1.5), ValueError, "p"),
    ("dropout", dict(p=float("nan")), ValueError, "p"),
    ("dropout", dict(p=float("inf")), ValueError, "p"),
    ("dropout", dict(p="0.5"), TypeError, "p"),
    ("dropout", dict(p=None), TypeError, "p"),
    ("dropout", dict(mode="bogus"), ValueError, "mode"),
    ("dropout", dict(mode=1), TypeError, "mode"),
    ("dropout", dict(seed=-1), ValueError, "seed"),
    ("dropout", dict(seed=2**64), ValueError, "seed"),
    ("dropout", dict(seed=1.0), TypeError, "seed"),
    ("dropout", dict(seed=True), TypeError, "seed"),
    ("dropout", dict(stream=-5), ValueError, "stream"),
    ("dropout", dict(stream=2**70), ValueError, "stream"),
    ("dropout", dict(stream="3"), TypeError, "stream"),
    ("dropout", dict(channelwise=True, axis=0), ValueError, "axis"),
    ("dropout", dict(channelwise=True, axis=5), ValueError, "axis"),
    ("dropout", dict(channelwise=True, axis="1"), TypeError, "axis"),
    ("dropout", dict(out="bad"), TypeError, "out"),
    ("dropout", dict(out=np.zeros((4, 5, 6), np.float32)), TypeError, "out"),
    ("dropout", dict(out=np.zeros((4, 5, 7))), ValueError, "out"),
    ("dropout", dict(out=np.zeros((4, 6, 5)).transpose(0, 2, 1)), ValueError, "out"),
    ("dropout", dict(out="readonly"), ValueError, "out"),
    ("apply", dict(mask=np.zeros(14, np.uint8)), ValueError, "mask"),
    ("apply", dict(mask=np.zeros(16, np.uint8)), ValueError, "mask"),
    ("apply", dict(mask=np.zeros((3, 5), np.uint8)), ValueError, "mask"),
    ("apply", dict(mask=np.zeros(15, np.int8)), TypeError, "mask"),
    ("apply", dict(mask=np.zeros(15, bool)), TypeError, "mask"),
    ("apply", dict(mask=np.zeros(15, np.uint8), channelwise=True), ValueError, "mask"),
    ("apply", dict(p=2.0), ValueError, "p"),
    ("apply", dict(mode="Inverted"), ValueError, "mode"),
    ("backward", dict(mask=np.zeros(14, np.uint8)), ValueError, "mask"),
    ("backward", dict(mask=np.zeros(15, np.uint16)), TypeError, "mask"),
    ("backward", dict(p=-1e-300), ValueError, "p"),
    ("backward", dict(seed=-1), ValueError, "seed"),
    ("backward", dict(mode="hinton"), ValueError, "mode"),
    ("backward", dict(channelwise=True, axis=3), ValueError, "axis"),
    ("backward", dict(out=np.zeros((4, 5, 6), np.float32)), TypeError, "out"),
]


@pytest.mark.parametrize("func, kwargs, exc, name", ERROR_CASES)
def test_errors_name_the_argument_and_change_nothing(func, kwargs, exc, name):
    x = data((4, 5, 6), np.float64)
    x_before = x.copy()
    out = kwargs.pop("out", None)
    if isinstance(out, str) and out == "readonly":
        out = np.zeros_like(x)
        out.flags.writeable = False
    out_before = out.copy() if isinstance(out, np.ndarray) else None
    mask = kwargs.pop("mask", None)
    mask_before = None if mask is None else mask.copy()
    args = dict(p=0.5, seed=1, stream=2)
    args.update(kwargs)
    with pytest.raises(exc, match=rf"^{name}\b"):
        if func == "dropout":
            dropnorm.dropout(x, out=out, **args)
        elif func == "apply":
            args.pop("seed")
            args.pop("stream")
            dropnorm.dropout_apply_mask(x, np.zeros(15, np.uint8) if mask is None else mask,
                                        out=out, **args)
        else:
            dropnorm.dropout_backward(x, mask=mask, out=out, **args)
    assert bits_equal(x, x_before)
    if out_before is not None:
        assert bits_equal(out, out_before)
    if mask_before is not None:
        assert np.array_equal(mask, mask_before)


def test_error_bad_x():
    with pytest.raises(TypeError, match="^x"):
        dropnorm.dropout(np.arange(5), 0.5)
    with pytest.raises(ValueError, match="^x"):
        dropnorm.dropout(np.float64(1.0), 0.5)
    with pytest.raises(ValueError, match="^x"):
        dropnorm.dropout(np.ones(5), 0.5, channelwise=True)  # channelwise on 1-d
    with pytest.raises(ValueError, match="^dy"):
        dropnorm.dropout_backward(np.ones(5), 0.5, channelwise=True)
    with pytest.raises(TypeError, match="^dy"):
        dropnorm.dropout_backward(np.ones(5, np.int16), 0.5)
    with pytest.raises(ValueError, match="^x"):
        dropnorm.dropout_apply_mask(np.ones(5), np.zeros(1, np.uint8), 0.5, channelwise=True)


def test_error_partial_overlap():
    x = data((100,), np.float64)
    before = x.copy()
    with pytest.raises(ValueError, match="^out"):
        dropnorm.dropout(x[:50], 0.5, out=x[10:60])
    assert bits_equal(x, before)


def test_error_dropout_mask_arguments():
    with pytest.raises(ValueError, match="^n"):
        dropnorm.dropout_mask(-1, 0.5)
    with pytest.raises(TypeError, match="^n"):
        dropnorm.dropout_mask(10.0, 0.5)
    with pytest.raises(ValueError, match="^p"):
        dropnorm.dropout_mask(10, 1.01)
    with pytest.raises(ValueError, match="^seed"):
        dropnorm.dropout_mask(10, 0.5, seed=2**64)
    with pytest.raises(TypeError, match="^stream"):
        dropnorm.dropout_mask(10, 0.5, stream=1.0)
    # stream=None is the default: with a seed, stream 0
    assert np.array_equal(dropnorm.dropout_mask(10, 0.5, seed=3, stream=None),
                          dropnorm.dropout_mask(10, 0.5, seed=3, stream=0))


def test_numpy_scalars_are_accepted():
    x = data((40,), np.float32)
    want = dropnorm.dropout(x, 0.25, 3, 4)
    got = dropnorm.dropout(x, np.float32(0.25), np.uint64(3), np.int8(4))
    assert bits_equal(got, want)
    assert np.array_equal(dropnorm.dropout_mask(np.int64(40), np.float64(0.25), 3, 4),
                          dropnorm.dropout_mask(40, 0.25, 3, 4))


def test_public_api_is_documented():
    for name in ("dropout", "dropout_backward", "dropout_apply_mask", "dropout_mask",
                 "philox4x32_10"):
        assert name in dropnorm.__all__
        assert getattr(dropnorm, name).__doc__


# ---- Instruction-set variants -----------------------------------------------------

def test_every_kernel_variant_gives_the_same_bits():
    # DROPNORM_SIMD caps the variant chosen at run time; all must agree
    results = {}
    for cap in ("portable", "avx2", "avx512"):
        env = dict(os.environ, DROPNORM_SIMD=cap, OMP_NUM_THREADS="2")
        script = "import dropnorm; print(dropnorm.build_info()['kernel_variant'])\n" + _HASH_SCRIPT
        out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        variant, digest = out[0], out[2]
        if cap == "portable":
            assert variant == "portable"
        results[variant] = digest
    assert len(set(results.values())) == 1, results


# ---- shards of a batch: offset -------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("cuts", [[0, 1, 2, 3, 70, 300], [0, 64, 128, 300], [0, 5, 299, 300]])
def test_shards_at_their_offsets_are_slices_of_the_whole_batch(cuts, dtype):
    """Elementwise, any split: each shard's output, mask and gradient at its
    offset is exactly its slice of one call on the whole batch."""
    x = np.random.default_rng(4).standard_normal((300,)).astype(dtype)
    y, mask = dropnorm.dropout(x, 0.3, seed=5, stream=2, return_mask=True)
    keep = np.unpackbits(mask, bitorder="little")[:300]
    dx = dropnorm.dropout_backward(x, 0.3, seed=5, stream=2)
    for lo, hi in zip(cuts, cuts[1:]):
        ys, ms = dropnorm.dropout(x[lo:hi], 0.3, seed=5, stream=2, offset=lo, return_mask=True)
        assert np.array_equal(ys, y[lo:hi])
        assert np.array_equal(np.unpackbits(ms, bitorder="little")[:hi - lo], keep[lo:hi])
        assert np.array_equal(dropnorm.dropout_mask(hi - lo, 0.3, 5, 2, offset=lo), ms)
        assert np.array_equal(dropnorm.dropout_backward(x[lo:hi], 0.3, seed=5, stream=2,
                                                        offset=lo), dx[lo:hi])


@pytest.mark.parametrize("axis", [1, -1])
def test_channel_shards_count_offsets_in_channels(axis):
    x = np.random.default_rng(6).standard_normal((7, 5, 3, 4)).astype(np.float32)
    if axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    whole = dropnorm.dropout(x, 0.5, seed=9, stream=1, channelwise=True, axis=axis)
    parts = [dropnorm.dropout(x[lo:hi], 0.5, seed=9, stream=1, channelwise=True, axis=axis,
                              offset=lo * 5) for lo, hi in ((0, 2), (2, 3), (3, 7))]
    assert np.array_equal(np.concatenate(parts), whole)
    layer, shard = dropnorm.Dropout2d(0.5, seed=9, axis=axis), dropnorm.Dropout2d(0.5, seed=9,
                                                                                  axis=axis)
    layer.stream = shard.stream = 1
    y = layer(x)
    ys = shard.forward(x[3:], offset=15)
    assert np.array_equal(ys, y[3:])
    dy = np.ones_like(ys)
    assert np.array_equal(shard.backward(dy), layer.backward(np.ones_like(y))[3:])


def test_offset_against_the_oracle_far_out():
    # offsets past 2**32 and not multiples of 4: the mask rule on the global index
    offset = 2**40 + 3
    got = dropnorm.dropout_mask(50, 0.4, 7, 1, offset=offset)
    words = [oracle.philox4x32_10(((offset + i) // 4 & 0xFFFFFFFF, (offset + i) // 4 >> 32,
                                   1, 0), (7, 0))[(offset + i) % 4] for i in range(50)]
    keep = [w >= int(0.4 * 2**32) for w in words]
    assert np.unpackbits(got, bitorder="little")[:50].tolist() == keep


def test_bad_offset():
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="offset"):
        dropnorm.dropout(x, 0.5, seed=1, offset=-1)
    with pytest.raises(ValueError, match="offset: decisions"):
        dropnorm.dropout(x, 0.5, seed=1, offset=2**64 - 5)
    with pytest.raises(TypeError, match="offset"):
        dropnorm.dropout_mask(10, 0.5, 1, 0, offset=1.5)
    with pytest.raises(ValueError, match="offset"):
        dropnorm.dropout_backward(x, 0.5, seed=1, offset=2**64)
    layer = dropnorm.Dropout(0.5, seed=1)
    with pytest.raises(ValueError, match="offset"):
        layer.forward(x, offset=-3)
    assert layer.stream == 0  # the failed call reserved nothing
