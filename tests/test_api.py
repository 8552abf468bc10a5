"""The public API is discoverable (issue 14, item 2): every public function,
class and method has an ``inspect.signature``, and its docstring names every
parameter of it; ``help()`` of each layer class shows its signature and
documents every constructor argument."""

import inspect
import pydoc
import re

import numpy as np
import pytest

import dropnorm

PUBLIC = [name for name in dropnorm.__all__ if name != "__version__"]
CLASSES = [name for name in PUBLIC if isinstance(getattr(dropnorm, name), type)]
FUNCTIONS = [name for name in PUBLIC if name not in CLASSES]

# what each layer's constructor takes, as issue 14 lists them
BATCHNORM_ARGS = ["num_features", "eps", "momentum", "affine", "track_running_stats", "axis",
                  "dtype", "activation"]
DROPOUT_ARGS = ["p", "mode", "seed", "axis", "inplace"]
SYNC_ARGS = BATCHNORM_ARGS[:5] + ["comm"] + BATCHNORM_ARGS[5:7]  # no activation


def parameters(obj):
    """The names of obj's parameters, without self."""
    return [p for p in inspect.signature(obj).parameters if p != "self"]


def names_each(doc, params):
    """The parameters the docstring does not name (as a word)."""
    return [p for p in params if not re.search(rf"(?<![\w.]){re.escape(p)}\b", doc or "")]


def public_methods(cls):
    """(name, function) of the public methods of cls and its bases (not object's)."""
    out = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if callable(attr) and not isinstance(attr, type):
            out.append((name, getattr(cls, name)))
    return out


def test_the_public_names():
    assert set(CLASSES) == {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Dropout", "Dropout1d",
                            "Dropout2d", "Dropout3d", "SyncBatchNorm"}
    for name in ("manual_seed", "draw_seed", "dropout", "batch_norm_train"):
        assert name in FUNCTIONS
    assert sorted(dropnorm.__all__) == dropnorm.__all__
    for name in dropnorm.__all__:
        assert hasattr(dropnorm, name)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_signature_and_a_docstring_naming_each_parameter(name):
    obj = getattr(dropnorm, name)
    sig = inspect.signature(obj)  # raises ValueError where there is none
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 40, name
    assert not names_each(doc, parameters(obj)), (name, sig)
    if name in CLASSES:
        # the class docstring is the constructor's, after the text signature
        assert not doc.startswith(name + "("), doc[:80]


@pytest.mark.parametrize("name", CLASSES)
def test_every_method_of_a_layer_has_a_signature_and_a_docstring(name):
    cls = getattr(dropnorm, name)
    methods = public_methods(cls)
    assert {"forward", "backward", "train", "eval"} <= {m for m, _ in methods}
    for method, fn in methods:
        sig = inspect.signature(fn)
        assert list(sig.parameters)[0] == "self", (name, method, sig)
        doc = inspect.getdoc(fn)
        assert doc, (name, method)
        # a method's docstring names its parameters (the object passed on is x or dy)
        assert not names_each(doc, parameters(fn)), (name, method, sig)


@pytest.mark.parametrize("name, args",
                         [(n, SYNC_ARGS if n == "SyncBatchNorm" else BATCHNORM_ARGS)
                          for n in CLASSES if "Batch" in n]
                         + [(n, DROPOUT_ARGS) for n in CLASSES if "Drop" in n])
def test_layer_signatures_and_help(name, args):
    if name == "SyncBatchNorm":
        # comm=None, the default, is MPI.COMM_WORLD
        pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py)")
    cls = getattr(dropnorm, name)
    sig = inspect.signature(cls)
    assert list(sig.parameters) == args
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert f"{name}{sig}" in text  # help() shows the class's signature
    doc = inspect.getdoc(cls)
    for arg in args:
        # each argument has an entry of its own: "  name: what it is"
        assert re.search(rf"^\s+{arg}: \S", doc, re.M), (name, arg)
    if "Batch" in name:
        assert re.search(r"momentum: .*or None for the cumulative average", doc, re.S)
        assert "float64" in doc and "dtype" in doc
    # the signature is the constructor's: every default, passed by keyword, is accepted
    # and gives the same layer as no argument at all
    defaults = {k: p.default for k, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty}
    first = [3] if "Batch" in name else []
    explicit = cls(*first, **defaults)
    implicit = cls(*first)
    if "Batch" in name:
        assert repr(explicit) == repr(implicit)
        assert explicit.dtype == np.float32
    else:
        assert (explicit.p, explicit.mode, explicit.axis, explicit.inplace) == (
            implicit.p, implicit.mode, implicit.axis, implicit.inplace)


def test_function_signatures():
    sig = inspect.signature(dropnorm.dropout)
    assert sig.parameters["seed"].default is None
    assert sig.parameters["stream"].default is None
    assert list(sig.parameters)[:4] == ["x", "p", "seed", "stream"]
    assert inspect.signature(dropnorm.dropout_backward).parameters["seed"].default is None
    assert inspect.signature(dropnorm.dropout_mask).parameters["seed"].default is None
    assert list(inspect.signature(dropnorm.manual_seed).parameters) == ["seed"]
    assert list(inspect.signature(dropnorm.draw_seed).parameters) == []
