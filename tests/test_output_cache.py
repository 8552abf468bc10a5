"""The output cache (_output_cache.h): large outputs come from NumPy's
memory-handler protocol, freed ones are reused for the next output of the
same size, within the limit; results never depend on it."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import dropnorm as dn

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

MIB = 1 << 20
DEFAULT_LIMIT = 256 * MIB


@pytest.fixture(autouse=True)
def _default_limit():
    dn.set_output_cache_limit(0)  # empty
    dn.set_output_cache_limit(DEFAULT_LIMIT)
    yield
    dn.set_output_cache_limit(DEFAULT_LIMIT)


def _big(shape=(4, 64, 32, 32), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_large_outputs_use_the_handler_small_ones_do_not():
    x = _big()
    assert x.nbytes >= MIB
    assert get_handler_name(dn.batch_norm_train(x)[0]) == "dropnorm_output_cache"
    assert get_handler_name(dn.dropout(x, 0.5, seed=1, stream=0)) == "dropnorm_output_cache"
    small = x[:1, :4]
    assert get_handler_name(dn.batch_norm_train(small)[0]) != "dropnorm_output_cache"


def test_a_freed_output_is_reused_for_the_same_size():
    x = _big()
    y = dn.batch_norm_infer(x, np.zeros(64, np.float32), np.ones(64, np.float32))
    address = y.ctypes.data
    del y
    assert dn.output_cache_info()["held"] == x.nbytes
    y = dn.batch_norm_infer(x, np.zeros(64, np.float32), np.ones(64, np.float32))
    assert y.ctypes.data == address
    assert dn.output_cache_info()["held"] == 0
    # another size does not take it
    del y
    z = dn.dropout(x[:2], 0.5, seed=3, stream=0)
    assert dn.output_cache_info()["held"] == x.nbytes
    del z


def test_results_do_not_depend_on_the_cache():
    x, dy = _big(seed=1), _big(seed=2)
    outs = []
    for limit in (0, DEFAULT_LIMIT, DEFAULT_LIMIT):
        dn.set_output_cache_limit(limit)
        # garbage in a reused block must not show through
        junk = dn.dropout(np.full_like(x, np.nan), 0.0, seed=0, stream=0)
        del junk
        y, mean, invstd = dn.batch_norm_train(x)
        dx = dn.batch_norm_backward(dy, x, mean, invstd)[0]
        d = dn.dropout(x, 0.3, seed=7, stream=1)
        outs.append((y.copy(), dx.copy(), d.copy()))
        del y, dx, d
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(outs[0], outs[2]):
        np.testing.assert_array_equal(a, b)


def test_the_limit_bounds_what_is_held():
    dn.set_output_cache_limit(3 * MIB)
    arrays = [dn.dropout(_big((MIB // 4 + i,)), 0.5, seed=0, stream=i) for i in range(8)]
    del arrays
    info = dn.output_cache_info()
    assert info["limit"] == 3 * MIB
    assert 0 < info["held"] <= 3 * MIB
    dn.set_output_cache_limit(0)
    assert dn.output_cache_info() == {"limit": 0, "held": 0}
    y = dn.dropout(_big(), 0.5, seed=0, stream=0)
    del y
    assert dn.output_cache_info()["held"] == 0


def test_at_most_eight_blocks_are_held():
    arrays = [dn.dropout(_big((MIB // 4 + i,)), 0.5, seed=0, stream=i) for i in range(12)]
    sizes = sorted(a.nbytes for a in arrays)
    del arrays
    held = dn.output_cache_info()["held"]
    assert held <= sum(sizes[-8:])
    assert held >= sum(sizes[:8])


def test_threads_share_the_cache_safely():
    x = _big()
    expect = dn.dropout(x, 0.5, seed=5, stream=9)
    errors = []

    def work():
        try:
            for _ in range(30):
                y = dn.dropout(x, 0.5, seed=5, stream=9)
                if not np.array_equal(y, expect):
                    errors.append("wrong values")
                del y
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert dn.output_cache_info()["held"] <= DEFAULT_LIMIT


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_allocates_and_frees():
    x = _big()
    held = dn.dropout(x, 0.5, seed=1, stream=0)
    del held  # the child inherits a full slot
    code = (
        "import dropnorm as dn, numpy as np, os, sys\n"
        "x = np.ones((4, 64, 32, 32), np.float32)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    for i in range(5):\n"
        "        y = dn.batch_norm_train(x + i)[0]\n"
        "        del y\n"
        "    os._exit(0 if dn.output_cache_info()['held'] > 0 else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert run.returncode == 0


def test_environment_sets_the_limit():
    code = "import dropnorm as dn; print(dn.output_cache_info()['limit'])"
    env = dict(os.environ, DROPNORM_OUTPUT_CACHE_MB="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert int(out.stdout) == 3 * MIB
    env["DROPNORM_OUTPUT_CACHE_MB"] = "lots"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert int(out.stdout) == DEFAULT_LIMIT
    assert "DROPNORM_OUTPUT_CACHE_MB" in out.stderr


@pytest.mark.parametrize("bad, exc, match", [
    (-1, ValueError, "nbytes: expected a number of bytes >= 0"),
    (1.5, TypeError, "nbytes: expected an integer"),
    ("1", TypeError, "nbytes: expected an integer"),
    (None, TypeError, "nbytes: expected an integer"),
])
def test_bad_limits_are_refused_and_change_nothing(bad, exc, match):
    dn.set_output_cache_limit(5 * MIB)
    with pytest.raises(exc, match=match):
        dn.set_output_cache_limit(bad)
    assert dn.output_cache_info()["limit"] == 5 * MIB
