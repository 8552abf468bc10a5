# cython: language_level=3
"""Argument checks shared by the wrappers.

Every check runs before any kernel, so bad input raises and changes nothing.
Errors name the argument and say what was expected.

Policy for memory order: read-only inputs that are not C-contiguous, not
aligned (a float32 view at an odd byte offset), or whose byte order is not
the machine's (``>f4`` on a little-endian machine), are copied to native,
aligned, C-contiguous arrays (as NumPy would); arrays that dropnorm writes
into (``out=``, running statistics) must already be C-contiguous, aligned,
writeable, of the right dtype and of native byte order, and are rejected
otherwise, since a copy would silently not be updated.

Policy for other array types: a read-only input may be any CPU object that
exports ``__dlpack__`` (a torch tensor, JAX, CuPy on the host, ...; taken
zero-copy with np.from_dlpack) or the buffer protocol, or anything else
np.asarray reads (``_read``). An input that cannot be read (a torch tensor
that requires grad, one on another device) raises an error that names the
argument and says what to pass instead. Outputs are always NumPy arrays.

Policy for aliasing (the C header's contract): every array a call writes
must not share memory with any other array argument, read or written
(``check_disjoint``), except that a tensor output may be the very same array
as a tensor input (out is x; dx is dy or x). Arrays that are only read may
share memory with each other.

Policy for scalars: real-valued arguments (p, eps, momentum) take a real
number: a Python int or float, a NumPy integer or floating scalar (or 0-d
array), or another ``numbers.Real``; bool, str, None, complex and sequences
raise TypeError. Integer arguments (seed, stream, counts, axis,
num_features) take anything with ``__index__`` except bool. Flags
(training, channelwise, ...) take only bool or numpy.bool_. The same
functions check the functional API and the layer classes, so both accept
and reject the same values with the same messages.

Policy for element types: tensors are float32 or float64, or a half type,
float16 (IEEE binary16) or bfloat16 (ml_dtypes.bfloat16, the NumPy dtype
of JAX and TensorFlow; dropnorm never imports ml_dtypes to read an array:
one of its arrays exists only once ml_dtypes is imported). A half type
computes in float32: its per-channel arrays (weight, bias, running and saved
statistics, their gradients) are float32 (``param_dtype``). A bfloat16 that
is not ml_dtypes' (another package's dtype of that name), or bfloat16 bits
in a uint16 array, is refused with a message that says what to pass.

Speed: the kernel of a small tensor takes a microsecond or two, so the
checks of a call must cost far less. This module is compiled, the wrappers
call its checks as C functions (cpdef, declared in _checks.pxd), and each
check starts with a fast path for the common, valid case: an exact float,
int or bool, or an exact ndarray of the float32/float64 dtype object whose
NumPy flags (read in C) say C-contiguous and aligned, and writeable for an
array written in place. The fast path returns the argument itself, as the
full check after it would; anything else takes the full check.
"""

import math
import numbers
import operator
import sys
from collections.abc import Mapping

import numpy as np

cimport numpy as cnp
from libc.math cimport isfinite
from libc.string cimport memcmp

cnp.import_array()


cdef extern from "_output_cache.h":
    size_t DN_CACHE_MIN
    void *_cache_handler "(&dn_cache_handler)"
    void dn_cache_set_limit(size_t limit) nogil
    size_t dn_cache_get_limit() nogil
    size_t dn_cache_get_held() nogil

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

from cpython.pycapsule cimport PyCapsule_New

# NumPy's memory handler for the large outputs (_output_cache.h)
cdef object _CACHE_HANDLER = PyCapsule_New(_cache_handler, "mem_handler", NULL)


def _cache_limit_from_environment():
    value = __import__("os").environ.get("DROPNORM_OUTPUT_CACHE_MB")
    if value is None:
        return
    try:
        mib = int(value)
        if mib < 0:
            raise ValueError
    except ValueError:
        import warnings
        warnings.warn(f"DROPNORM_OUTPUT_CACHE_MB: expected a whole number of MiB >= 0, got "
                      f"{value!r}; the default limit applies", RuntimeWarning, stacklevel=2)
        return
    dn_cache_set_limit(<size_t>mib << 20)


_cache_limit_from_environment()


def output_cache_set_limit(size_t nbytes):
    """Sets the output cache's limit in bytes (0: keep nothing)."""
    dn_cache_set_limit(nbytes)


def output_cache_state():
    """(limit, held): the output cache's limit and the bytes it holds."""
    return dn_cache_get_limit(), dn_cache_get_held()


cdef object _cached_empty_like(x):
    """np.empty_like(x) from the output cache's handler."""
    old = PyDataMem_SetHandler(_CACHE_HANDLER)
    try:
        return np.empty_like(x)
    finally:
        PyDataMem_SetHandler(old)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
cdef object _FLOAT32 = FLOAT_DTYPES[0]
cdef object _FLOAT64 = FLOAT_DTYPES[1]
# the half types: stored in 2 bytes, computed in float32
cdef object _FLOAT16 = np.dtype(np.float16)
cdef object _BFLOAT16 = None  # ml_dtypes.bfloat16's dtype, once ml_dtypes is imported


cdef object _bfloat16():
    """ml_dtypes.bfloat16's dtype when ml_dtypes has been imported (by anyone:
    before that no array of it exists), else None."""
    global _BFLOAT16
    if _BFLOAT16 is None:
        module = sys.modules.get("ml_dtypes")
        bf16 = getattr(module, "bfloat16", None) if module is not None else None
        if bf16 is not None:
            _BFLOAT16 = np.dtype(bf16)
    return _BFLOAT16


def bfloat16_dtype(required=False):
    """ml_dtypes.bfloat16 as a NumPy dtype, importing ml_dtypes if needed;
    None when it is not installed (ImportError naming the package with
    required=True)."""
    if _bfloat16() is None:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            pass
    if _bfloat16() is None and required:
        raise ImportError("bfloat16 needs the package ml_dtypes (the NumPy dtype of JAX and "
                          "TensorFlow): pip install ml_dtypes, or pip install dropnorm[half]")
    return _bfloat16()


cdef inline bint _is_half_dtype(dt):
    """Whether dt is float16 or ml_dtypes.bfloat16 (native byte order)."""
    if dt is _FLOAT16 or dt == _FLOAT16:
        return True
    bf16 = _bfloat16()
    return bf16 is not None and (dt is bf16 or dt == bf16)


def is_half(dtype):
    """Whether dtype is one of the half types (float16, ml_dtypes.bfloat16)."""
    return _is_half_dtype(dtype)


cpdef param_dtype(x):
    """The dtype of the per-channel arrays (weight, bias, statistics,
    gradients) of a call on the tensor x: x's own, float32 for a half type."""
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE:
        return (<cnp.ndarray>x).descr
    return _FLOAT32


def _dtype_error(name, dt):
    """The TypeError for a tensor of dtype dt, which dropnorm does not take."""
    want = "a float32 or float64 array, or float16 or bfloat16 (half precision)"
    module = getattr(dt.type, "__module__", "") or ""
    if dt.name == "bfloat16" or "bfloat16" in str(dt):
        source = module.split(".")[0] or "an unknown package"
        if bfloat16_dtype() is None:
            return TypeError(f"{name}: a bfloat16 array (dtype from {source}) needs the package "
                             "ml_dtypes, whose bfloat16 dropnorm reads: pip install ml_dtypes "
                             "(or dropnorm[half])")
        return TypeError(f"{name}: dtype bfloat16 from {source} is not ml_dtypes.bfloat16, the "
                         "bfloat16 dropnorm reads; pass x.view(ml_dtypes.bfloat16) (the same bits)")
    if dt == np.uint16:
        return TypeError(f"{name}: expected {want}, got dtype uint16 (bfloat16 or float16 bits "
                         "held in uint16: pass x.view(ml_dtypes.bfloat16) or x.view(np.float16))")
    return TypeError(f"{name}: expected {want}, got dtype {dt}")

# NumPy flags of arrays that go to C as they are: C-contiguous and aligned;
# writeable too for those written in place
cdef int _READ_FLAGS = cnp.NPY_ARRAY_CARRAY_RO
cdef int _WRITE_FLAGS = cnp.NPY_ARRAY_CARRAY


cdef inline bint _has(value, dtype, int flags):
    """Whether value is an exact ndarray of the dtype object ``dtype`` (the
    very object: a swapped or merely equal dtype takes the full check) with
    the NumPy flags ``flags``."""
    return (type(value) is cnp.ndarray
            and <void *>cnp.PyArray_DESCR(<cnp.ndarray>value) == <void *>dtype
            and cnp.PyArray_FLAGS(<cnp.ndarray>value) & flags == flags)


cdef inline bint _is_float(value, int flags):
    """_has(value, float32, float64, float16 or bfloat16, flags)."""
    return (_has(value, _FLOAT32, flags) or _has(value, _FLOAT64, flags)
            or _has(value, _FLOAT16, flags)
            or (_BFLOAT16 is not None and _has(value, _BFLOAT16, flags)))


cdef inline bint _like(cnp.ndarray a, cnp.ndarray x):
    """Whether a has x's dtype object and shape."""
    cdef int ndim = cnp.PyArray_NDIM(x)
    return (<void *>cnp.PyArray_DESCR(a) == <void *>cnp.PyArray_DESCR(x)
            and cnp.PyArray_NDIM(a) == ndim
            and (ndim == 0  # no dims pointer to compare
                 or memcmp(cnp.PyArray_DIMS(a), cnp.PyArray_DIMS(x),
                           ndim * sizeof(cnp.npy_intp)) == 0))


cdef inline bint _is_vector(cnp.ndarray a, c):
    """Whether a has shape (c,)."""
    return cnp.PyArray_NDIM(a) == 1 and cnp.PyArray_DIMS(a)[0] == c


cdef inline cnp.npy_intp _prod(const cnp.npy_intp *dims, int lo, int hi) noexcept:
    """dims[lo] * ... * dims[hi - 1] (1 when lo >= hi); NumPy keeps every
    product of an array's extents within npy_intp."""
    cdef cnp.npy_intp p = 1
    cdef int i
    for i in range(lo, hi):
        p *= dims[i]
    return p


def _native(arr):
    """arr itself, or a copy in native byte order if its floats are swapped."""
    if not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _unreadable(name, value, exc):
    """The error for an input ``np.asarray`` could not read: it names the
    argument and, for a torch tensor (or anything like one), says what to
    pass instead. dropnorm never imports torch: it looks at attributes only."""
    def attr(attr_name):
        try:
            return getattr(value, attr_name, None)
        except Exception:
            return None

    module = getattr(type(value), "__module__", None) or ""
    what = ("torch tensor" if module.split(".")[0] == "torch"
            else f"{type(value).__name__} object")
    reasons, fix = [], name
    if attr("requires_grad") is True:
        reasons.append("it requires grad")
        fix += ".detach()"
    device = attr("device")
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        reasons.append(f"it is on device {device}")
        fix += ".cpu()"
    cls = ValueError if isinstance(exc, ValueError) else TypeError
    if reasons:
        # the torch module is where gradients flow through dropnorm's kernels
        # (on the CPU)
        hint = (" (or, for gradients, use dropnorm.torch's functions and modules)"
                if what == "torch tensor" and reasons == ["it requires grad"] else "")
        return cls(f"{name}: cannot read this {what} as a NumPy array "
                   f"({'; '.join(reasons)}): pass {fix}{hint}")
    return cls(f"{name}: cannot read this {what} as a NumPy array ({type(exc).__name__}: "
               f"{exc}); pass a NumPy array or anything numpy.asarray accepts")


def _read(name, value):
    """value as an ndarray, zero-copy where it can be: an object that exports
    ``__dlpack__`` (a torch tensor, a JAX or CuPy array, ...) through
    np.from_dlpack, anything else (the buffer protocol, ``__array__``,
    ``__array_interface__``, sequences) through np.asarray; or an error naming
    the argument (the original error as its __cause__). The ndarray may share
    memory with value: the callers only read it (copies are the checks' part).

    An exporter that np.from_dlpack rejects (another device, a dtype DLPack
    cannot carry, a torch tensor that requires grad) is read by np.asarray
    when it also offers ``__array__``; if that fails too, the error says why.
    Only exact ndarrays avoid this function (the checks' fast paths); an
    ndarray subclass goes to np.asarray, as before."""
    try:
        if hasattr(type(value), "__dlpack__") and not isinstance(value, np.ndarray):
            try:
                return np.from_dlpack(value)
            except MemoryError:
                raise
            except Exception:
                if not _has_array_interface(value):
                    raise
        return np.asarray(value)
    except MemoryError:
        raise
    except Exception as exc:
        raise _unreadable(name, value, exc) from exc


def _has_array_interface(value):
    """Whether np.asarray has another way to read value than as an object."""
    t = type(value)
    return (hasattr(t, "__array__") or hasattr(t, "__array_interface__")
            or hasattr(t, "__array_struct__"))


def _c_aligned(arr):
    """arr itself if C-contiguous and aligned, else an (aligned) C-contiguous
    copy: C gets a float*/double* and must never see a misaligned one."""
    flags = arr.flags
    if flags.c_contiguous and flags.aligned:
        return arr
    return np.array(arr, order="C")


def as_float_array(name, value):
    """A read-only input as a float32/float64 (or float16/bfloat16) array of
    native byte order (not yet made contiguous or aligned)."""
    arr = value if type(value) is np.ndarray else _read(name, value)
    if arr.dtype is _FLOAT32 or arr.dtype is _FLOAT64:
        return arr
    arr = _native(arr)
    if arr.dtype not in FLOAT_DTYPES and not _is_half_dtype(arr.dtype):
        raise _dtype_error(name, arr.dtype)
    return arr


cpdef as_tensor(name, value):
    """The input tensor as a C-contiguous, aligned float32/float64 (or
    float16/bfloat16) array, ndim >= 2."""
    if (_is_float(value, _READ_FLAGS) and cnp.PyArray_NDIM(<cnp.ndarray>value) >= 2
            and cnp.PyArray_SIZE(<cnp.ndarray>value) > 0):
        return value
    arr = as_float_array(name, value)
    if arr.ndim < 2:
        raise ValueError(
            f"{name}: expected at least 2 dimensions (N, C, *spatial), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name}: every extent must be at least 1, got shape {arr.shape}")
    return _c_aligned(arr)


def as_shard(name, value):
    """A shard of a batch: as as_tensor, but N may be 0 (an empty shard)."""
    arr = as_float_array(name, value)
    if arr.ndim < 2:
        raise ValueError(
            f"{name}: expected at least 2 dimensions (N, C, *spatial), got shape {arr.shape}"
        )
    if 0 in arr.shape[1:]:
        raise ValueError(f"{name}: every extent but N must be at least 1, got shape {arr.shape}")
    return _c_aligned(arr)


cpdef tensor_extents(x, axis):
    """(n, c, s, channels_last) for the ndarray x with its channel axis at
    ``axis``.

    axis=1 is channels first, (N, C, *spatial); axis=-1 (or ndim-1) is
    channels last, (N, *spatial, C). Errors report the axis as given."""
    axis = as_int("axis", axis)
    cdef cnp.ndarray arr = x
    cdef int ndim = cnp.PyArray_NDIM(arr)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(arr)
    k = axis + ndim if axis < 0 else axis
    if k == 1 and ndim >= 2:
        return dims[0], dims[1], _prod(dims, 2, ndim), False
    if k == ndim - 1 and ndim >= 1:
        return dims[0], dims[ndim - 1], _prod(dims, 1, ndim - 1), True
    raise ValueError(
        f"axis: expected 1 (channels first) or -1 (channels last) for a {ndim}-d input, got {axis}"
    )


def as_layer_axis(axis):
    """A layer's channel axis: exactly 1 (channels first) or -1 (channels last)."""
    axis = as_int("axis", axis)
    if axis not in (1, -1):
        raise ValueError(f"axis: expected 1 (channels first) or -1 (channels last), got {axis}")
    return axis


def check_dtype(name, arr, dtype, per_channel=False):
    """TypeError unless arr has exactly ``dtype`` (native byte order included);
    per_channel: arr is a per-channel array, whose dtype is the input's or,
    for a half type's input, float32."""
    if arr.dtype is not dtype and arr.dtype != dtype:
        if arr.dtype.newbyteorder("=") == dtype:
            raise TypeError(f"{name}: dtype {arr.dtype.str} is not in the machine's byte order; "
                            f"dropnorm writes this array in place, so it must be {dtype} of "
                            f"native byte order ({dtype.str})")
        if per_channel and dtype is _FLOAT32:
            raise TypeError(f"{name}: dtype {arr.dtype} does not match float32, the dtype of the "
                            "per-channel arrays of a float32, float16 or bfloat16 input")
        raise TypeError(f"{name}: dtype {arr.dtype} does not match the input's dtype {dtype}")


cpdef as_vector(name, value, c, dtype, optional=True):
    """A read-only per-channel vector of c values with the input's dtype."""
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name}: expected an array of {c} values, got None")
    if _has(value, dtype, _READ_FLAGS) and _is_vector(value, c):
        return value
    arr = value if type(value) is np.ndarray else _read(name, value)
    if arr.dtype is not dtype:
        arr = _native(arr)
        check_dtype(name, arr, dtype, True)
    if arr.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},), one value per channel, got {arr.shape}")
    return _c_aligned(arr)


cpdef writable_vector(name, value, c, dtype):
    """A per-channel vector dropnorm updates in place (running statistics)."""
    if value is None or (_has(value, dtype, _WRITE_FLAGS) and _is_vector(value, c)):
        return value
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array (it is updated in place), "
                        f"got {type(value).__name__}")
    check_dtype(name, value, dtype, True)
    if value.shape != (c,):
        raise ValueError(f"{name}: expected shape ({c},), one value per channel, got {value.shape}")
    check_writable(name, value)
    return value


def check_writable(name, arr):
    """ValueError unless arr can be written in place (writeable, C-contiguous,
    aligned)."""
    flags = arr.flags
    if flags.carray:  # C-contiguous, aligned and writeable
        return
    if not flags.writeable:
        raise ValueError(f"{name}: the array is read-only")
    if not flags.c_contiguous:
        raise ValueError(f"{name}: the array must be C-contiguous (it is written in place)")
    raise ValueError(f"{name}: the array must be aligned to its {arr.dtype.alignment}-byte "
                     f"{arr.dtype} elements (it is written in place), but its data starts "
                     "at a misaligned address (e.g. a view at an odd byte offset)")


cpdef same_tensor(name, value, x):
    """A second input of x's shape and dtype (dy beside x)."""
    if (type(x) is cnp.ndarray and _is_float(value, _READ_FLAGS)
            and _like(value, x)):
        return value
    arr = as_float_array(name, value)
    check_dtype(name, arr, x.dtype)
    if arr.shape != x.shape:
        raise ValueError(f"{name}: shape {arr.shape} does not match x's shape {x.shape}")
    return _c_aligned(arr)


cpdef output_like(name, out, x):
    """The output array: a new one like x, or ``out`` checked to fit.

    Whether ``out`` overlaps another argument is check_disjoint's part."""
    if out is None:
        if type(x) is cnp.ndarray and <size_t>cnp.PyArray_NBYTES(x) >= DN_CACHE_MIN:
            return _cached_empty_like(x)
        return np.empty_like(x)
    if (type(x) is cnp.ndarray and _is_float(out, _WRITE_FLAGS)
            and _like(out, x)):
        return out
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(out).__name__}")
    check_dtype(name, out, x.dtype)
    if out.shape != x.shape:
        raise ValueError(f"{name}: shape {out.shape} does not match the input's shape {x.shape}")
    check_writable(name, out)
    return out


def _address(arr):
    return arr.__array_interface__["data"][0]


def check_disjoint(written, read, in_place=()):
    """ValueError unless every array the call writes is disjoint from every
    array it reads and from every other array it writes.

    written, read: sequences of (name, array or None), the arrays as they go
    to C (C-contiguous: the checks above made them so). Running statistics,
    read and written, are in ``written``. in_place: the (written name, read
    name) pairs that may be the very same array (out and x: y == x in the C
    header's terms); a partial overlap of such a pair raises too. The message
    names the written array first, then the other one.

    The wrappers call it only when their byte-range test in C (_overlap in
    _batchnorm.pyx, _dropout.pyx) finds a written array that meets another
    one: a call that passes spends nanoseconds on aliasing, not this
    function's microsecond. Here two arrays that each own their data (their
    own allocation) are disjoint unless they are one object; other pairs go
    to np.may_share_memory, which compares byte bounds in O(1) (exact for
    contiguous arrays)."""
    seen = []  # (name, array, owns its data) of the written arrays so far
    others = None
    for wname, w in written:
        if w is None:
            continue
        wown = w.flags.owndata
        if others is None:
            others = [(n, a, a.flags.owndata) for n, a in read if a is not None]
        for oname, o, oown in seen + others:
            if o is not w and ((wown and oown) or not np.may_share_memory(w, o)):
                continue
            if (wname, oname) in in_place:
                if o is w or (_address(o) == _address(w) and o.nbytes == w.nbytes):
                    continue
                raise ValueError(f"{wname}: partly overlaps {oname}; it may be {oname} itself "
                                 "(in place) but must not share only part of its memory")
            allowed = [r for (n, r) in in_place if n == wname]
            hint = f" ({wname} may only be {' or '.join(allowed)} itself)" if allowed else ""
            raise ValueError(f"{wname}: shares memory with {oname}; an array dropnorm writes "
                             f"must not overlap any other array argument{hint}")
        seen.append((wname, w, wown))


cpdef as_real(name, value, what="a real number"):
    """A real number as a Python float.

    Accepted: int, float, NumPy integer and floating scalars, 0-d arrays of
    those, and any other ``numbers.Real``. Rejected with a TypeError that
    names the argument: bool (also numpy.bool_), str, bytes, None, complex,
    sequences and arrays of other shapes. ``what`` is the expectation the
    message states. An int too large for a float becomes +-inf (and fails the
    caller's range check)."""
    if type(value) is float:
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


cpdef as_int(name, value):
    """An integer as a Python int: anything with ``__index__`` (int, NumPy
    integer scalars) except bool and numpy.bool_; TypeError naming the
    argument otherwise (float, str, None, ...)."""
    if type(value) is int:
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None


cpdef as_flag(name, value):
    """A flag: True or False (bool or numpy.bool_) as a Python bool.

    Anything else, 0 and 1 and strings like 'False' included, raises a
    TypeError naming the argument: a truthiness test would silently read
    'False' or 'no' as true."""
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool (True or False), got {type(value).__name__}")
    return bool(value)


def as_positive_int(name, value):
    """An integer >= 1 (num_features), as a Python int; bool is rejected."""
    value = as_int(name, value)
    if value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value}")
    return value


def as_float_dtype(name, dtype):
    """A layer's dtype: float32 or float64, or float16 or bfloat16 (half
    precision: ml_dtypes.bfloat16, or the name "bfloat16" with ml_dtypes
    installed); either byte order given, native returned; as a numpy dtype."""
    want = "float32, float64, float16 or bfloat16"
    if dtype is None:
        raise TypeError(f"{name}: expected {want}, got None")
    if isinstance(dtype, str) and dtype.strip().lower() == "bfloat16":
        dt = bfloat16_dtype(required=True)
    else:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{name}: expected {want}, got {dtype!r}") from None
    dt = dt.newbyteorder("=") if not dt.isnative else dt
    if dt not in FLOAT_DTYPES and not _is_half_dtype(dt):
        raise TypeError(f"{name}: expected {want}, got {dt}")
    return dt


def as_mapping(name, value):
    """A mapping (dict, OrderedDict, ...) such as a state dict."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a mapping of names to arrays (a dict), "
                        f"got {type(value).__name__}")
    return value


cpdef as_eps(eps):
    """eps: a finite real number >= 0, as a float."""
    eps = as_real("eps", eps)
    cdef double e = eps
    if not (isfinite(e) and e >= 0.0):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps}")
    return eps


cpdef as_momentum(momentum, allow_none=False):
    """momentum: a real number in [0, 1], as a float; None too (returned as
    None) with allow_none, for layers, where it means a cumulative average.

    Without allow_none (the functions), None is a ValueError that says why:
    the cumulative average needs the count of batches seen, which only a
    layer keeps (num_batches_tracked)."""
    if momentum is None:
        if allow_none:
            return None
        raise ValueError(
            "momentum: None means a cumulative average over the batches seen, which needs "
            "their count; only a layer keeps it: use BatchNorm1d/2d/3d(num_features, "
            "momentum=None), or pass momentum=1/k for the k-th batch (k = 1, 2, ...) here")
    what = "a real number or None" if allow_none else "a real number"
    momentum = as_real("momentum", momentum, what)
    cdef double m = momentum
    if not (0.0 <= m <= 1.0):
        raise ValueError(f"momentum: expected a value in [0, 1], got {momentum}")
    return momentum


# ---- Dropout -----------------------------------------------------------------

DROPOUT_MODES = {"inverted": 0, "classic": 1}


cpdef as_array(name, value, min_ndim=1):
    """A C-contiguous, aligned float32/float64/float16/bfloat16 array with at least
    ``min_ndim`` dimensions; empty arrays are allowed (the caller handles
    them)."""
    if _is_float(value, _READ_FLAGS) and cnp.PyArray_NDIM(<cnp.ndarray>value) >= min_ndim:
        return value
    arr = as_float_array(name, value)
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimension(s), got shape {arr.shape}")
    return _c_aligned(arr)


def as_float_input(name, value, min_ndim=1):
    """An input that an identity may return as it is (a Dropout layer in
    eval mode): a float32/float64 ndarray of native byte order is returned
    itself, whatever its strides (float16 and bfloat16 too); anything else is
    converted (or rejected) as as_array does."""
    if (isinstance(value, np.ndarray) and value.ndim >= min_ndim
            and (value.dtype in FLOAT_DTYPES or is_half(value.dtype))):
        return value
    return as_array(name, value, min_ndim)


cpdef as_inplace_array(name, value):
    """An input the caller asked to be overwritten (a layer's inplace=True):
    a float32/float64/float16/bfloat16 numpy array of native byte order,
    C-contiguous, aligned and writeable, returned as it is; TypeError or
    ValueError naming it (and inplace) otherwise, since a copy would leave
    the caller's array as it was."""
    if _is_float(value, _WRITE_FLAGS):
        return value
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name}: inplace=True writes the result into {name}, so it must be "
                        f"a numpy array, got {type(value).__name__}")
    if not (value.dtype in FLOAT_DTYPES or is_half(value.dtype)) or not value.dtype.isnative:
        raise TypeError(f"{name}: inplace=True writes the result into {name}, so it must be "
                        f"float32, float64, float16 or bfloat16 of native byte order, got "
                        f"dtype {value.dtype.str}")
    check_writable(name, value)
    return value


cpdef as_probability(name, p):
    """A drop probability: a real number in [0, 1] (not NaN)."""
    p = as_real(name, p, "a real number in [0, 1]")
    cdef double q = p
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
    return p


cpdef as_uint(name, value, bits):
    """A Python int in [0, 2**bits) (seed, stream, Philox words)."""
    value = as_int(name, value)
    if not (0 <= value < (1 << bits)):
        raise ValueError(f"{name}: expected an integer in [0, 2**{bits}), got {value}")
    return value


def as_words(name, value, count):
    """``count`` 32-bit words (a Philox counter or key) as a tuple of ints."""
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of {count} integers, "
                        f"got {type(value).__name__}") from None
    if len(items) != count:
        raise ValueError(f"{name}: expected {count} words, got {len(items)}")
    return tuple(as_uint(f"{name}[{i}]", v, 32) for i, v in enumerate(items))


cpdef as_dropout_mode(mode):
    """The C value of a dropout mode name: "inverted" or "classic"."""
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected 'inverted' or 'classic', got {type(mode).__name__}")
    if mode not in DROPOUT_MODES:
        raise ValueError(f"mode: expected 'inverted' or 'classic', got {mode!r}")
    return DROPOUT_MODES[mode]


ACTIVATIONS = {None: 0, "relu": 1}


cpdef as_activation(activation):
    """The C value (dn_activation) of a fused block's activation: None or "relu"."""
    if activation is None:
        return 0
    if not isinstance(activation, str):
        raise TypeError(f"activation: expected None or 'relu', got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected None or 'relu', got {activation!r}")
    return ACTIVATIONS[activation]


def as_count(name, n):
    """A non-negative integer count."""
    n = as_int(name, n)
    if n < 0:
        raise ValueError(f"{name}: expected a count >= 0, got {n}")
    return n


cpdef as_mask(name, mask, nbits):
    """A packed keep mask for ``nbits`` decisions: uint8, shape ((nbits + 7)//8,).
    (uint8 needs no alignment.)"""
    arr = mask if type(mask) is np.ndarray else _read(name, mask)
    if arr.dtype != np.uint8:
        raise TypeError(f"{name}: expected a uint8 array of packed bits, got dtype {arr.dtype}")
    nbytes = (nbits + 7) // 8
    if arr.shape != (nbytes,):
        raise ValueError(f"{name}: expected shape ({nbytes},), the packed bits of {nbits} "
                         f"decisions, got {arr.shape}")
    return np.ascontiguousarray(arr)


cpdef raise_overlap(names, written, in_place, arrays):
    """check_disjoint on ``arrays`` (named ``names``; the first ``written``
    are written): raises ValueError naming the two arguments. Called by the
    wrappers once their byte-range test (_spans.pxd) has found an overlap."""
    named = list(zip(names, arrays))
    check_disjoint(named[:written], named[written:], in_place)
