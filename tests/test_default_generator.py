"""The default generator of dropout calls without a seed (issue 14, item 1).

``dropout(x, p)`` (seed=None, stream=None) draws a fresh (seed, stream) from
one process-wide generator: draw k is (seed, k), the seed from the OS at
import or from ``manual_seed(n)``. Layers made without a seed derive theirs
from one draw. Explicit seeds and streams never touch the generator and give
the masks they always gave. The backward of a seedless call runs from its
mask (``return_mask=True``) or from a pair drawn beforehand (``draw_seed``).
"""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import dropnorm

import oracle

DTYPES = [np.float32, np.float64]


def data(shape=(6, 40), dtype=np.float32, seed=0):
    # nonzero everywhere, so that y == 0 marks exactly the dropped places
    rng = np.random.default_rng(seed)
    return (2.0 + rng.random(shape)).astype(dtype)


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def layer_seed(seed, k):
    """The documented seed of a layer made from draw k = (seed, k)."""
    words = oracle.philox4x32_10((k & 0xFFFFFFFF, k >> 32, 0xFFFFFFFF, 0xFFFFFFFF),
                                 (seed & 0xFFFFFFFF, seed >> 32))
    return int(words[0]) | int(words[1]) << 32


def run_python(script, **env):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env=dict(os.environ, **env))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("dtype", DTYPES)
def test_seedless_calls_give_a_fresh_mask_each(dtype):
    x = data(dtype=dtype)
    masks = [dropnorm.dropout(x, 0.5) == 0 for _ in range(4)]
    for i in range(4):
        assert 0 < masks[i].sum() < masks[i].size
        for j in range(i):
            assert not np.array_equal(masks[i], masks[j])
    keep = [oracle.unpack_mask(dropnorm.dropout_mask(x.size, 0.5), x.size) for _ in range(2)]
    assert not np.array_equal(keep[0], keep[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_draws_follow_the_documented_rule(dtype):
    x = data(dtype=dtype)
    dropnorm.manual_seed(2**40 + 5)
    s = 2**40 + 5
    assert dropnorm.draw_seed() == (s, 0)
    assert bits_equal(dropnorm.dropout(x, 0.3), oracle.dropout_forward(x, 0.3, s, 1)[0])
    assert np.array_equal(dropnorm.dropout_mask(77, 0.4), oracle.dropout_mask(77, 0.4, s, 2))
    assert dropnorm.Dropout(0.5).seed == layer_seed(s, 3)
    y, mask = dropnorm.dropout(x, 0.5, channelwise=True, return_mask=True)
    want_y, want_mask = oracle.dropout_forward(x, 0.5, s, 4, channelwise=True)
    assert bits_equal(y, want_y) and np.array_equal(mask, want_mask)
    assert dropnorm.draw_seed() == (s, 5)


def test_manual_seed_makes_every_draw_repeatable():
    x = data()

    def sequence():
        out = [dropnorm.dropout(x, 0.5), dropnorm.dropout_mask(100, 0.2),
               np.array(dropnorm.draw_seed(), dtype=object)]
        layer = dropnorm.Dropout2d(0.5)
        out.append(np.array([layer.seed], dtype=object))
        out.append(layer(np.ones((2, 3, 4, 4))))
        out.append(dropnorm.dropout(x, 0.5, mode="classic"))
        return out

    dropnorm.manual_seed(1234)
    first = sequence()
    dropnorm.manual_seed(1234)
    second = sequence()
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    dropnorm.manual_seed(1235)
    assert not np.array_equal(sequence()[0], first[0])


def test_manual_seed_gives_the_same_masks_in_another_process_and_thread_count():
    script = """
        import numpy as np, dropnorm
        dropnorm.manual_seed(99)
        x = np.ones((64, 33), np.float32)
        ys = [dropnorm.dropout(x, 0.5) for _ in range(3)] + [dropnorm.Dropout1d(0.5)(x[None])]
        print("".join("".join(str(int(v)) for v in (y != 0).ravel()[::7]) for y in ys))
    """
    outs = {run_python(script, OMP_NUM_THREADS=str(t)) for t in (1, 2)}
    dropnorm.manual_seed(99)
    x = np.ones((64, 33), np.float32)
    ys = [dropnorm.dropout(x, 0.5) for _ in range(3)] + [dropnorm.Dropout1d(0.5)(x[None])]
    here = "".join("".join(str(int(v)) for v in (y != 0).ravel()[::7]) for y in ys) + "\n"
    assert outs == {here}


def test_the_generator_is_seeded_from_the_os_at_import():
    script = "import dropnorm; print(*dropnorm.draw_seed())"
    draws = [tuple(map(int, run_python(script).split())) for _ in range(3)]
    assert all(stream == 0 for _, stream in draws)  # a fresh generator
    assert len({seed for seed, _ in draws}) == 3    # 64 bits of entropy each


def test_explicit_seeds_and_streams_leave_the_generator_alone():
    x = data()
    dropnorm.manual_seed(2)
    y = dropnorm.dropout(x, 0.5, seed=5)
    dropnorm.dropout(x, 0.5, stream=3)
    dropnorm.dropout_mask(10, 0.5, seed=1, stream=2)
    dropnorm.dropout_backward(x, 0.5, seed=5)
    d = dropnorm.Dropout(0.5, seed=4)
    d(x)
    assert dropnorm.draw_seed() == (2, 0)
    # and they give the masks they always gave
    assert bits_equal(y, oracle.dropout_forward(x, 0.5, 5, 0)[0])
    assert d.seed == 4


def test_inference_and_failed_calls_draw_nothing():
    x = data()
    dropnorm.manual_seed(3)
    assert bits_equal(dropnorm.dropout(x, 0.5, training=False), x)
    y, mask = dropnorm.dropout(x, 0.5, training=False, return_mask=True)
    assert mask.tolist() == [255] * (x.size // 8)
    for bad in (dict(p=1.5), dict(mode="scaled"), dict(out=np.empty(3, np.float32)),
                dict(channelwise=True, axis=0)):
        with pytest.raises((TypeError, ValueError)):
            dropnorm.dropout(x, **{"p": 0.5, **bad})
    with pytest.raises(ValueError, match="^out: partly overlaps x"):
        dropnorm.dropout(x.reshape(-1)[1:], 0.5, out=x.reshape(-1)[:-1])
    with pytest.raises(ValueError, match="^p"):
        dropnorm.dropout_mask(10, -1)
    with pytest.raises(ValueError, match="^p"):
        dropnorm.Dropout(p=2)
    # nothing to drop, nothing drawn
    assert dropnorm.dropout(np.zeros((0, 3), np.float32), 0.5).shape == (0, 3)
    assert dropnorm.dropout_mask(0, 0.5).shape == (0,)
    assert dropnorm.draw_seed() == (3, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channelwise", [False, True])
def test_backward_of_a_seedless_call_from_its_mask(dtype, channelwise):
    x = data((6, 5, 7), dtype)
    dy = data((6, 5, 7), dtype, seed=1)
    y, mask = dropnorm.dropout(x, 0.4, channelwise=channelwise, return_mask=True)
    dx = dropnorm.dropout_backward(dy, 0.4, channelwise=channelwise, mask=mask)
    scale = dtype(1) / dtype(0.6)
    assert bits_equal(dx, np.where(y != 0, dy * scale, dtype(0)).astype(dtype))
    # the mask also replays the forward
    assert bits_equal(dropnorm.dropout_apply_mask(x, mask, 0.4, channelwise=channelwise), y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_from_a_drawn_pair_stores_nothing(dtype):
    x, dy = data(dtype=dtype), data(dtype=dtype, seed=1)
    seed, stream = dropnorm.draw_seed()
    y = dropnorm.dropout(x, 0.5, seed=seed, stream=stream)
    dx = dropnorm.dropout_backward(dy, 0.5, seed=seed, stream=stream)
    assert bits_equal(dx, np.where(y != 0, dy * dtype(2), dtype(0)).astype(dtype))
    assert (y == 0).any() and (y != 0).any()


def test_backward_without_mask_or_seed_says_what_to_do():
    x = data()
    dropnorm.manual_seed(4)
    with pytest.raises(ValueError, match=r"^seed: dropout_backward needs the forward's mask") as e:
        dropnorm.dropout_backward(x, 0.5)
    assert "return_mask=True" in str(e.value) and "draw_seed()" in str(e.value)
    assert dropnorm.draw_seed() == (4, 0)  # and drew nothing
    # the other arguments are checked first, with their own messages
    with pytest.raises(ValueError, match="^p"):
        dropnorm.dropout_backward(x, 2.0)


def test_manual_seed_checks_its_argument():
    for value, exc in [(-1, ValueError), (2**64, ValueError), (1.5, TypeError),
                       (True, TypeError), ("3", TypeError), (None, TypeError)]:
        with pytest.raises(exc, match="^seed"):
            dropnorm.manual_seed(value)
    dropnorm.manual_seed(np.uint64(2**64 - 1))
    assert dropnorm.draw_seed() == (2**64 - 1, 0)
    assert dropnorm.manual_seed(0) is None


def test_concurrent_draws_are_distinct():
    dropnorm.manual_seed(11)
    per_thread, threads = 3000, 4
    results = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def work(out):
        barrier.wait()
        for _ in range(per_thread):
            out.append(dropnorm.draw_seed())

    pool = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    draws = [d for r in results for d in r]
    assert {seed for seed, _ in draws} == {11}
    assert sorted(stream for _, stream in draws) == list(range(per_thread * threads))
    for r in results:  # each thread's draws in increasing order
        assert [s for _, s in r] == sorted(s for _, s in r)


def test_concurrent_seedless_dropouts_never_share_a_mask():
    x = data((4, 64))
    dropnorm.manual_seed(12)
    masks = [[] for _ in range(4)]

    def work(out):
        for _ in range(50):
            out.append((dropnorm.dropout(x, 0.5) != 0).tobytes())

    pool = [threading.Thread(target=work, args=(m,)) for m in masks]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seen = [m for ms in masks for m in ms]
    # the 200 masks are those of streams 0..199 of seed 12, each once
    want = {(oracle.dropout_forward(x, 0.5, 12, k)[0] != 0).tobytes() for k in range(200)}
    assert len(set(seen)) == 200 and set(seen) == want


def test_layers_without_a_seed_draw_from_the_generator():
    dropnorm.manual_seed(9)
    a, b = dropnorm.Dropout(0.5), dropnorm.Dropout3d(0.5)
    dropnorm.manual_seed(9)
    a2 = dropnorm.Dropout(0.5)
    assert a.seed == a2.seed == layer_seed(9, 0)
    assert b.seed == layer_seed(9, 1) != a.seed
    a2.seed = None  # the setter draws too
    assert a2.seed == layer_seed(9, 1)
    x = data()
    assert bits_equal(a(x), dropnorm.dropout(x, 0.5, seed=a.seed, stream=0))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_fork_reseeds_an_os_seeded_generator_and_keeps_a_manual_one():
    script = """
        import os, sys, dropnorm

        def child_draw():
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.write(w, repr(dropnorm.draw_seed()).encode())
                os._exit(0)
            os.close(w)
            text = os.read(r, 200).decode()
            os.waitpid(pid, 0)
            return eval(text)

        dropnorm.draw_seed()
        child = child_draw()
        parent = dropnorm.draw_seed()
        print(child[0] != parent[0], child[1] == 0, parent[1] == 1)
        dropnorm.manual_seed(5)
        dropnorm.draw_seed()
        child = child_draw()
        parent = dropnorm.draw_seed()
        print(child == parent == (5, 1))
    """
    assert run_python(script).split() == ["True", "True", "True", "True"]
