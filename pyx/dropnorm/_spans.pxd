# cython: language_level=3
# Overlap of the arrays of one call, for the wrappers in _batchnorm.pyx and
# _dropout.pyx. Every array a call writes must not share a byte with another
# array of the call, except a tensor output that is exactly a tensor input
# (the C header's contract). The arrays here are the contiguous ones C gets,
# so comparing byte ranges is exact and costs nanoseconds; only when a
# written range meets another does _checks.raise_overlap look at the arrays,
# name them and raise.

from libc.stdint cimport uintptr_t

cdef enum:
    SPANS_MAX = 6


cdef struct Spans:
    int count
    int written  # spans [0, written) are the arrays the call writes
    uintptr_t lo[SPANS_MAX]
    uintptr_t hi[SPANS_MAX]
    bint tensor[SPANS_MAX]


cdef inline void spans_start(Spans *sp, int written) noexcept nogil:
    """No spans yet; the first ``written`` added are written by the call."""
    sp.count = 0
    sp.written = written


cdef inline void span(Spans *sp, const void *p, size_t nbytes, bint tensor) noexcept nogil:
    """Add the bytes [p, p + nbytes) (none when p is NULL)."""
    cdef uintptr_t lo = <uintptr_t>p
    sp.lo[sp.count] = lo
    sp.hi[sp.count] = lo + nbytes if p != NULL else lo
    sp.tensor[sp.count] = tensor
    sp.count += 1


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
