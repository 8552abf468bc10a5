"""The package is typed (issue 14, item 3): .pyi stubs for the compiled
modules and for demo/bench, annotations in the Python modules, and a
py.typed marker, all in the installed package (so in the wheel). The stubs
cannot drift: their names and signatures are compared with the runtime's
here, without mypy. Where mypy is installed (the [test] extra brings it), a
user's script is checked with ``mypy --strict`` and the revealed types must
be NumPy arrays, the stubs themselves pass ``mypy --strict``, and
``mypy.stubtest`` compares them with the runtime too.
"""

import ast
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dropnorm

PKG = Path(dropnorm.__file__).resolve().parent
HERE = Path(__file__).resolve().parent
# every module of the package is typed one way or another
STUBBED = ["_batchnorm", "_shards", "_dropout", "_layers", "_sync", "_runtime", "capi", "bench",
           "demo", "_bench_sync", "torch"]
# modules that import an optional dependency: their stubs are checked where it is installed
OPTIONAL = {"torch": "torch"}
ANNOTATED = ["__init__", "__main__", "_paths"]  # Python, annotated in place
# compiled helpers of the wrappers: no public signature names their types
PRIVATE_UNTYPED = ["_checks", "_bench"]


def _missing(what):
    """Skip for a tool this machine lacks; fail instead where the tools are
    required (.ci/run sets DROPNORM_TEST_REQUIRE_TOOLS=1)."""
    if os.environ.get("DROPNORM_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what}, and DROPNORM_TEST_REQUIRE_TOOLS=1")
    pytest.skip(what)


def _module_names():
    names = set()
    for path in PKG.iterdir():
        if path.suffix == ".py":
            names.add(path.stem)
        elif path.suffix in (".so", ".pyd"):
            names.add(path.name.split(".")[0])
    return names


def test_marker_and_stubs_are_installed():
    assert (PKG / "py.typed").is_file()
    assert _module_names() == set(STUBBED + ANNOTATED + PRIVATE_UNTYPED)
    for name in STUBBED:
        assert (PKG / f"{name}.pyi").is_file(), f"{name}.pyi is missing from {PKG}"


# ---- the stubs against the runtime, without mypy -----------------------------------------

def _stub(name):
    return ast.parse((PKG / f"{name}.pyi").read_text(), filename=f"{name}.pyi")


def _public(name):
    return not name.startswith("_")


def _runtime_defined(module):
    """The public names the module defines (not imports): functions and
    classes whose __module__ is this module, and other values that are not
    modules."""
    out = set()
    for name, obj in vars(module).items():
        if not _public(name) or inspect.ismodule(obj):
            continue
        if callable(obj) and getattr(obj, "__module__", module.__name__) != module.__name__:
            continue  # imported from elsewhere
        out.add(name)
    return out


def _stub_names(tree):
    """Public names the stub defines at module level."""
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in out if _public(n)}


def _has(dependency):
    return importlib.util.find_spec(dependency) is not None


def _import(name):
    """dropnorm.<name>, or a skip when the optional dependency it needs is
    not installed."""
    dependency = OPTIONAL.get(name)
    if dependency is not None and not _has(dependency):
        pytest.skip(f"dropnorm.{name} needs {dependency}, which is not installed")
    return importlib.import_module(f"dropnorm.{name}")


@pytest.mark.parametrize("name", STUBBED)
def test_stub_names_match_the_runtime(name):
    module = _import(name)
    stub = _stub_names(_stub(name))
    runtime = _runtime_defined(module)
    assert runtime - stub == set(), f"{name}.pyi lacks what the module defines"
    assert {n for n in stub if not hasattr(module, n)} == set(), f"{name}.pyi: not at runtime"


def _params(fn, drop_self=False):
    """[(name, kind, has default, default or Ellipsis)] of a stub function."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = [(p.arg, "positional", d is not None, d) for p, d in zip(positional, defaults)]
    if a.vararg:
        out.append((a.vararg.arg, "*", False, None))
    out += [(p.arg, "keyword", d is not None, d) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, "**", False, None))
    if drop_self and out and out[0][0] in ("self", "cls"):
        out = out[1:]
    return out


def _literal(node):
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return Ellipsis
    return value


def _check_signature(where, stub_fn, runtime_sig, drop_self=False):
    stub = _params(stub_fn, drop_self)
    runtime = list(runtime_sig.parameters.values())
    assert [p[0] for p in stub] == [p.name for p in runtime], (where, stub, runtime_sig)
    for (name, kind, has_default, default), p in zip(stub, runtime):
        runtime_has = p.default is not inspect.Parameter.empty
        if kind == "*":
            assert p.kind is inspect.Parameter.VAR_POSITIONAL, (where, name)
        elif kind == "**":
            assert p.kind is inspect.Parameter.VAR_KEYWORD, (where, name)
        elif has_default:
            assert runtime_has, (where, name, "the stub has a default, the runtime none")
            value = _literal(default)
            if value is not Ellipsis:
                assert value == p.default and type(value) is type(p.default), (
                    where, name, value, p.default)
        else:
            # an overload may make an argument required (keyword-only), never
            # the other way round
            assert not runtime_has or kind == "keyword", (where, name, "default missing")


def _stub_classes(tree):
    """The stub's classes, and those it imports from the package's other
    stubs (the bases of its own)."""
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dropnorm."):
            classes.update(_stub_classes(_stub(node.module.split(".", 1)[1])))
    classes.update({node.name: node for node in tree.body if isinstance(node, ast.ClassDef)})
    return classes


def _class_members(cls_node, classes):
    """{name: [FunctionDef, ...]} and annotated attributes of a stub class
    and its stub bases."""
    functions, attributes = {}, set()
    for base in cls_node.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            f, a = _class_members(classes[base.id], classes)
            for k, v in f.items():
                functions.setdefault(k, v)
            attributes |= a
    own = {}
    for node in cls_node.body:
        if isinstance(node, ast.FunctionDef):
            own.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            attributes.add(node.target.id)
    functions.update(own)
    return functions, attributes


def _is_property(fn):
    return any((isinstance(d, ast.Name) and d.id == "property")
               or (isinstance(d, ast.Attribute) and d.attr == "setter")
               for d in fn.decorator_list)


def _is_classmethod(fn):
    return any(isinstance(d, ast.Name) and d.id == "classmethod" for d in fn.decorator_list)


def _runtime_members(cls, module):
    """The public members of cls: all of them, or, for a subclass of a
    class from another package (dropnorm.torch's modules subclass
    torch.nn's), those that the module's own classes in its MRO define."""
    if all(k.__module__.split(".")[0] in ("dropnorm", "builtins") for k in cls.__mro__):
        return {m for m in dir(cls) if _public(m)}
    return {m for k in cls.__mro__ if k.__module__ == module.__name__
            for m in vars(k) if _public(m)}


@pytest.mark.parametrize("name", STUBBED)
def test_stub_signatures_match_the_runtime(name):
    module = _import(name)
    tree = _stub(name)
    classes = _stub_classes(tree)
    checked = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and _public(node.name):
            _check_signature(f"{name}.{node.name}", node,
                             inspect.signature(getattr(module, node.name)))
            checked += 1
    for cname, cnode in classes.items():
        if not _public(cname) or cnode not in tree.body:
            continue
        cls = getattr(module, cname)
        functions, attributes = _class_members(cnode, classes)
        runtime_members = _runtime_members(cls, module)
        stub_members = {m for m in functions if _public(m)}
        assert runtime_members - stub_members - attributes == set(), f"{name}.{cname}"
        assert stub_members - runtime_members == set(), f"{name}.{cname}: not at runtime"
        if "__init__" in functions:
            for fn in functions["__init__"]:
                _check_signature(f"{name}.{cname}", fn, inspect.signature(cls), drop_self=True)
                checked += 1
        for m in stub_members:
            for fn in functions[m]:
                if not _is_property(fn):
                    _check_signature(f"{name}.{cname}.{m}", fn,
                                     inspect.signature(getattr(cls, m)),
                                     drop_self=_is_classmethod(fn))
                    checked += 1
    if name != "capi":
        assert checked > 0


# ---- mypy, where installed -------------------------------------------------------------

USER_SCRIPT = '''
import numpy as np

import dropnorm

x = np.random.default_rng(0).standard_normal((8, 4, 5)).astype(np.float32)
x64 = x.astype(np.float64)

y, mean, invstd = dropnorm.batch_norm_train(x, momentum=0.1)
reveal_type(y)  # float32
reveal_type(invstd)  # float32
dx, dgamma, dbeta = dropnorm.batch_norm_backward(np.ones_like(y), x, mean, invstd)
reveal_type(dx)  # float32
reveal_type(dropnorm.batch_norm_infer(x64, np.zeros(4), np.ones(4)))  # float64
reveal_type(dropnorm.batch_norm_infer_backward(x64, x64, np.zeros(4), np.ones(4))[0])  # float64
reveal_type(dropnorm.batch_norm_train([[1.0, 2.0], [3.0, 4.0]])[0])  # array

yd = dropnorm.dropout(x, 0.5)
reveal_type(yd)  # float32
yd, mask = dropnorm.dropout(x, 0.5, return_mask=True)
reveal_type(mask)  # uint8
reveal_type(dropnorm.dropout_backward(np.ones_like(yd), 0.5, mask=mask))  # float32
seed, stream = dropnorm.draw_seed()
reveal_type(dropnorm.dropout_backward(x64, 0.5, seed=seed, stream=stream))  # float64
reveal_type(dropnorm.dropout_mask(10, 0.5))  # uint8
reveal_type(dropnorm.dropout_apply_mask(x, mask, 0.5))  # float32
dropnorm.manual_seed(0)

bn = dropnorm.BatchNorm2d(4, momentum=None, dtype=np.float64).eval()
drop = dropnorm.Dropout1d(0.2, inplace=True)
reveal_type(bn(x64[..., None]))  # float64
dxb = bn.backward(x64[..., None])  # dx, or (dx, d_residual) after a forward with a residual
assert not isinstance(dxb, tuple)
reveal_type(dxb)  # float64
reveal_type(drop(x))  # float32
reveal_type(drop.backward(x))  # float32
reveal_type(dropnorm.Dropout(0.1).train().forward([1.0, 2.0]))  # array
state = bn.state_dict()
reveal_type(state["running_mean"])  # array
result = bn.load_state_dict(state, strict=False)
missing: list[str] = result.missing_keys
w, b = bn.fold_into(np.ones((4, 3)))
reveal_type(w)  # array
if bn.running_var is not None:
    reveal_type(bn.running_var)  # array
print(dropnorm.get_include(), dropnorm.build_info()["openmp"], missing, drop.seed + 1)
'''

MISUSE_SCRIPT = '''
import numpy as np

import dropnorm

x = np.ones((4, 3), np.float32)
dropnorm.batch_norm_train(x, momentum=None)
dropnorm.dropout(x, 0.5, mode="scaled")
dropnorm.BatchNorm1d(3).load_state_dict(["weight"])
'''


def _no_torch_config(work):
    """A mypy configuration for a machine without torch: dropnorm.torch's
    stub imports torch, an optional dependency, so that one module is left
    out of the check."""
    path = work / "no_torch_mypy.ini"
    path.write_text("[mypy]\n[mypy-dropnorm.torch]\nignore_errors = True\n"
                    "[mypy-torch.*]\nignore_missing_imports = True\n")
    return path


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory):
    if importlib.util.find_spec("mypy") is None:
        _missing("mypy is not installed (pip install mypy, or pip install \".[test]\")")
    work = tmp_path_factory.mktemp("mypy")
    cache = work / ".mypy_cache"

    config = []
    if not _has("torch"):
        config = ["--config-file", str(_no_torch_config(work))]

    def run(*args):
        # outside the source tree: mypy finds the installed package and its py.typed
        return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir",
                               str(cache), *config, *args], cwd=work, capture_output=True,
                              text=True)

    return work, run


def test_mypy_strict_reveals_arrays_in_a_user_script(mypy_run):
    work, run = mypy_run
    (work / "user_script.py").write_text(USER_SCRIPT)
    proc = run("user_script.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    revealed = dict(re.findall(r'^user_script\.py:(\d+): note: Revealed type is "(.*)"$', out,
                               re.M))
    lines = USER_SCRIPT.splitlines()
    # mypy counts lines from 1; each reveal_type line ends with the expected kind
    expected = {str(i): line.split("# ")[-1] for i, line in enumerate(lines, start=1)
                if "reveal_type(" in line}
    assert len(expected) == 20 and set(revealed) == set(expected), out
    for line, kind in expected.items():
        text, source = revealed[line], lines[int(line) - 1]
        assert text.startswith("numpy.ndarray["), (source, text)
        dtype = re.search(r"numpy\.dtype\[(.*)\]\]$", text).group(1)
        if kind == "float32":
            assert "32Bit" in dtype or dtype == "numpy.float32", (source, text)
        elif kind == "float64":
            assert "64Bit" in dtype or dtype == "numpy.float64", (source, text)
        elif kind == "uint8":
            assert "8Bit" in dtype or dtype == "numpy.uint8", (source, text)
        else:
            assert kind == "array", source


def test_mypy_strict_catches_misuse(mypy_run):
    work, run = mypy_run
    (work / "misuse.py").write_text(MISUSE_SCRIPT)
    proc = run("misuse.py")
    out = proc.stdout
    assert proc.returncode == 1, out
    errors = re.findall(r"^misuse\.py:(\d+): error", out, re.M)
    assert sorted(set(map(int, errors))) == [7, 8, 9], out


def test_mypy_strict_passes_on_the_package(mypy_run):
    _, run = mypy_run
    proc = run("-p", "dropnorm")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_stubtest_finds_no_difference(mypy_run):
    work, _ = mypy_run
    help_text = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--help"],
                               capture_output=True, text=True).stdout
    flags = [f for f in ("--ignore-disjoint-bases",) if f in help_text]
    allowlists = [str(HERE / "stubtest_allowlist.txt")]
    if not _has("torch"):
        # dropnorm.torch cannot be imported without torch: only that module's
        # failure to import is allowed, and mypy leaves its stub out
        (work / "no_torch_allowlist.txt").write_text("dropnorm\\.torch\n")
        allowlists.append(str(work / "no_torch_allowlist.txt"))
        flags += ["--mypy-config-file", str(_no_torch_config(work))]
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "dropnorm",
                           *(a for path in allowlists for a in ("--allowlist", path)),
                           "--ignore-unused-allowlist", *flags],
                          cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, textwrap.shorten(proc.stdout + proc.stderr, 20000)
