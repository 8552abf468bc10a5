# cython: language_level=3
"""Version, build facts and thread control of the C core."""

from dropnorm.libdropnorm cimport *


def c_version():
    """The version string of the compiled C core."""
    return dn_version().decode()


def build_info():
    """How this copy of dropnorm was built and how it runs, as a dict."""
    return {
        "version": dn_version().decode(),
        "openmp": bool(dn_openmp_enabled()),
        "max_threads": dn_get_max_threads(),
    }


def set_num_threads(int n):
    """Set the number of OpenMP threads the kernels use, for the calling
    thread (no effect without OpenMP). Results do not depend on it."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 thread, got {n}")
    dn_set_num_threads(n)


def get_max_threads():
    """The number of threads a kernel called from this thread may use."""
    return dn_get_max_threads()
