"""A user's Cython module on dropnorm's C kernels: examples/cython (batch norm
fused with ReLU, dropout) built as a new user would, with plain cythonize and
setuptools in a temporary directory, against the installed package: no
include path, no link flags; `from dropnorm cimport capi` reaches the
kernels through dropnorm.capi's function capsules. Its numbers are checked
against the NumPy oracle.
"""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import dropnorm
import dropnorm.capi

import oracle

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cython"
PKG_DIR = Path(dropnorm.__file__).parent
DTYPES = [np.float32, np.float64]
TOL = {np.float32: {"rtol": 2e-5, "atol": 2e-5}, np.float64: {"rtol": 1e-11, "atol": 1e-11}}


def test_pxd_files_are_installed():
    for name in ("capi.pxd", "libdropnorm.pxd"):
        assert (PKG_DIR / name).is_file(), f"{name} is missing from the installed package"


def test_every_capi_function_has_a_capsule():
    """What capi.pxd declares is exported in dropnorm.capi.__pyx_capi__."""
    pxd = (PKG_DIR / "capi.pxd").read_text()
    declared = set(re.findall(r"^cdef [^=\n]*?\b(dn_\w+)\(", pxd, re.M))
    assert len(declared) >= 20, declared
    assert declared <= set(dropnorm.capi.__pyx_capi__)


def _missing(what):
    """Skip for a tool this machine lacks; fail instead where the tools are
    required (.ci/run sets DROPNORM_TEST_REQUIRE_TOOLS=1)."""
    if os.environ.get("DROPNORM_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what}, and DROPNORM_TEST_REQUIRE_TOOLS=1")
    pytest.skip(what)


@pytest.fixture(scope="module")
def bn_relu(tmp_path_factory):
    """examples/cython built in a temporary directory and imported."""
    for module in ("Cython", "setuptools"):
        if importlib.util.find_spec(module) is None:
            _missing(f"{module} is not installed (pip install cython setuptools)")
    if sys.platform != "win32":
        cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
        if not shutil.which(cc[0]):
            _missing(f"no C compiler ({cc[0]})")
    work = tmp_path_factory.mktemp("cython_example")
    for name in ("bn_relu.pyx", "setup.py"):
        shutil.copy(EXAMPLE / name, work / name)
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                          cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"building examples/cython failed\n{proc.stdout}\n{proc.stderr}")
    generated = (work / "bn_relu.c").read_text()
    assert "dropnorm.h" not in generated  # no header: the kernels come through capsules
    (module_path,) = [p for p in work.glob("bn_relu*") if p.suffix in (".so", ".pyd")]
    spec = importlib.util.spec_from_file_location("bn_relu", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_version(bn_relu):
    assert bn_relu.version() == dropnorm.__version__


@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_relu_forward_backward(bn_relu, dtype):
    rng = np.random.default_rng(7)
    x = (3.0 + 2.0 * rng.standard_normal((4, 3, 10))).astype(dtype)
    gamma = np.array([1.0, 0.5, 2.0], dtype)
    beta = np.array([0.0, 0.3, -0.4], dtype)
    y, mean, invstd = bn_relu.bn_relu_train(x, gamma, beta, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    y_bn, mean_ref, invstd_ref = oracle.bn_train(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(y, np.maximum(y_bn, 0.0), **TOL[dtype])
    np.testing.assert_allclose(mean, mean_ref, **TOL[dtype])
    np.testing.assert_allclose(invstd, invstd_ref, **TOL[dtype])
    assert (y == 0).any() and (y > 0).any()  # the ReLU did something

    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dgamma, dbeta = bn_relu.bn_relu_backward(dy, x, y, mean, invstd, gamma)
    dz = np.where(y > 0, dy, 0).astype(dtype)  # back through the ReLU
    dx_ref, dgamma_ref, dbeta_ref = oracle.bn_backward(dz, x, gamma, eps=1e-5)
    np.testing.assert_allclose(dx, dx_ref, **TOL[dtype])
    np.testing.assert_allclose(dgamma, dgamma_ref, **TOL[dtype])
    np.testing.assert_allclose(dbeta, dbeta_ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout(bn_relu, dtype):
    x = np.linspace(-3.0, 5.0, 37).astype(dtype)
    y, mask = bn_relu.dropout(x, 0.3, 1234, 5)
    y_ref, mask_ref = oracle.dropout_forward(x, 0.3, seed=1234, stream=5)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(mask, mask_ref)


def test_status_becomes_exception(bn_relu):
    one = np.ones((1, 3, 1))
    with pytest.raises(ValueError, match="bn_relu_train: .*2 values per channel"):
        bn_relu.bn_relu_train(one, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="dropout: .*out of range"):
        bn_relu.dropout(np.ones(4), 1.5, 0)
    assert bn_relu.status_text(0) == "success"
