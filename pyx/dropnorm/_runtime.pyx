# cython: language_level=3
"""Version, build facts and thread control of the C core."""

from dropnorm.libdropnorm cimport *


def c_version():
    """The version string of the compiled C core."""
    return dn_version().decode()


def build_info():
    """How this copy of dropnorm was built and how it runs, as a dict:
    version, compiler, openmp (on/off), max_threads (threads a kernel may use
    now: 1 in a child of fork()), kernel_variant (the instruction-set level
    chosen once per process: "avx512", "avx2" or "portable";
    DROPNORM_SIMD=portable, avx2 or avx512 caps it) and kernel_variants (the
    build each kernel family runs at that level: {"batchnorm": ...,
    "dropout": ..., "half": ...}; batch norm runs its AVX2 build under
    "avx512"; "half" is how float16 and bfloat16 convert: "avx2" (F16C),
    "avx512bf16" (bfloat16 rounded by AVX512-BF16) or "portable")."""
    return {
        "version": dn_version().decode(),
        "compiler": dn_compiler().decode(),
        "openmp": bool(dn_openmp_enabled()),
        "max_threads": dn_get_max_threads(),
        "kernel_variant": dn_kernel_variant().decode(),
        "kernel_variants": {
            "batchnorm": dn_batchnorm_kernel_variant().decode(),
            "dropout": dn_dropout_kernel_variant().decode(),
            "half": dn_half_kernel_variant().decode(),
        },
    }


def set_num_threads(int n):
    """Set n (an integer >= 1), the number of OpenMP threads the kernels
    use, for the calling thread (no effect without OpenMP). Results do not
    depend on it."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 thread, got {n}")
    dn_set_num_threads(n)


def get_max_threads():
    """The number of threads a kernel called from this thread may use."""
    return dn_get_max_threads()


def set_output_cache_limit(nbytes):
    """Set nbytes, how many bytes of freed outputs dropnorm may keep for
    reuse (an integer >= 0; 0 keeps none and frees what is held).

    Outputs of 1 MiB or more that dropnorm's functions allocate (``out``
    not given) come from an output cache: when such an array is freed its
    memory is kept, up to this limit (default 256 MiB, or the environment
    variable DROPNORM_OUTPUT_CACHE_MB read at import) and at most 8 blocks,
    and the next output of exactly that size reuses it. A fresh block
    costs the page faults that zero it, about as much time as a kernel's
    pass over it; a loop that calls the same layers again pays them once.
    The arrays are ordinary NumPy arrays (NumPy's memory-handler protocol,
    NEP 49). PyTorch's CUDA caching allocator works the same way."""
    import operator
    from dropnorm._checks import output_cache_set_limit
    try:
        n = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"nbytes: expected an integer, got {type(nbytes).__name__}") from None
    if n < 0:
        raise ValueError(f"nbytes: expected a number of bytes >= 0, got {n}")
    output_cache_set_limit(min(n, (1 << 62)))


def output_cache_info():
    """The output cache (see set_output_cache_limit) as a dict: limit (bytes
    it may hold) and held (bytes of freed outputs it holds now)."""
    from dropnorm._checks import output_cache_state
    limit, held = output_cache_state()
    return {"limit": limit, "held": held}


def raise_status(int status, str where):
    """Raise the Python exception for a failed C call (status != DN_OK)."""
    text = dn_status_str(<dn_status>status).decode()
    if status == DN_ERR_OUT_OF_MEMORY:
        raise MemoryError(f"{where}: {text}")
    raise ValueError(f"{where}: {text}")
