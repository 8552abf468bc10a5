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


def raise_status(int status, str where):
    """Raise the Python exception for a failed C call (status != DN_OK)."""
    text = dn_status_str(<dn_status>status).decode()
    if status == DN_ERR_OUT_OF_MEMORY:
        raise MemoryError(f"{where}: {text}")
    raise ValueError(f"{where}: {text}")
