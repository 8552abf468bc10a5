# cython: language_level=3
# The arrays of one call as C gets them, for the wrappers in _batchnorm.pyx
# and _dropout.pyx: their data pointers and byte ranges. Every array a call
# writes must not share a byte with another array of the call, except a
# tensor output that is exactly a tensor input (the C header's contract).
# The arrays here are the contiguous ones the checks return, so comparing
# byte ranges is exact and costs nanoseconds; only when a written range
# meets another does _checks.raise_overlap look at the arrays, name them and
# raise.

from libc.stdint cimport uintptr_t

cimport numpy as cnp

from dropnorm._checks cimport raise_overlap

cdef enum:
    SPANS_MAX = 12


cdef struct Spans:
    int count
    int written  # spans [0, written) are the arrays the call writes
    void *data[SPANS_MAX]  # the pointer C gets: the array's first byte, NULL for None
    uintptr_t lo[SPANS_MAX]
    uintptr_t hi[SPANS_MAX]
    bint tensor[SPANS_MAX]


cdef inline bint spans_overlap(const Spans *sp) noexcept nogil:
    """Whether a written span meets another span, other than a tensor that is
    exactly another tensor (in place)."""
    cdef int i, j
    for i in range(sp.written):
        for j in range(sp.count):
            if (j != i and sp.lo[i] < sp.hi[j] and sp.lo[j] < sp.hi[i]
                    and sp.lo[j] < sp.hi[j] and sp.lo[i] < sp.hi[i]
                    and not (sp.tensor[i] and sp.tensor[j]
                             and sp.lo[i] == sp.lo[j] and sp.hi[i] == sp.hi[j])):
                return True
    return False


cdef inline int spans_of(Spans *sp, tuple arrays, int written, int tensors, names,
                         in_place) except -1:
    """Fill sp with ``arrays`` (at most SPANS_MAX ndarrays as the checks
    return them, C-contiguous and aligned, or None), the first ``written`` of
    them written by the call, arrays[k] a tensor if bit k of ``tensors`` is
    set. ValueError (naming both, ``names``) if a written array shares a byte
    with another array, other than a tensor that is exactly another tensor
    in one of the ``in_place`` pairs of names."""
    cdef Py_ssize_t k
    cdef cnp.ndarray a
    sp.count = <int>len(arrays)
    sp.written = written
    for k in range(sp.count):
        if arrays[k] is None:
            sp.data[k] = NULL
            sp.lo[k] = sp.hi[k] = 0
        else:
            a = <cnp.ndarray?>arrays[k]
            sp.data[k] = cnp.PyArray_DATA(a)
            sp.lo[k] = <uintptr_t>sp.data[k]
            sp.hi[k] = sp.lo[k] + <size_t>cnp.PyArray_NBYTES(a)
        sp.tensor[k] = (tensors >> k) & 1
    if spans_overlap(sp):
        raise_overlap(names, written, in_place, arrays)
    return 0
