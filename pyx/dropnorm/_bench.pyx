# cython: language_level=3
"""Helpers for dropnorm.bench: the parallel memcpy yardstick."""

from libc.stdint cimport int64_t


cdef extern from "_parallel_copy.h" nogil:
    void dn_parallel_copy(void *dst, const void *src, int64_t nbytes, int threads)


def parallel_copy(unsigned char[::1] dst, const unsigned char[::1] src, int threads):
    """Copy src into dst (bytes views of equal size) split over ``threads``."""
    if dst.shape[0] != src.shape[0]:
        raise ValueError("dst: size differs from src")
    if threads < 1:
        raise ValueError(f"threads: expected at least 1, got {threads}")
    with nogil:
        dn_parallel_copy(&dst[0], &src[0], dst.shape[0], threads)
