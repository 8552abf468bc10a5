"""dropnorm: dropout and batch normalization on the CPU.

A C99 core (OpenMP-parallel, bitwise identical for every thread count) with
Cython wrappers that hand NumPy arrays straight to C. Tensors are
(N, C, *spatial) with axis=1 or (N, *spatial, C) with axis=-1, float32 or
float64, or float16 and bfloat16 (ml_dtypes), computed in float32 with
float32 parameters and statistics.

Functions: batch_norm_train, batch_norm_backward, batch_norm_infer,
batch_norm_infer_backward; the same over shards of a batch
(batch_norm_partial_stats, batch_norm_merge_stats, batch_norm_forward_apply,
batch_norm_backward_reduce, batch_norm_backward_apply); dropout,
dropout_backward, dropout_mask, dropout_apply_mask, philox4x32_10;
manual_seed and draw_seed (the default generator of dropout calls without a
seed). Layers with PyTorch's behaviour: BatchNorm1d/2d/3d, SyncBatchNorm (over
MPI), Dropout, Dropout1d/2d/3d. The package is typed (.pyi stubs and
py.typed): mypy and editors see NumPy array types.
Inputs may also be any CPU object with __dlpack__ or the buffer protocol
(read zero-copy); outputs are NumPy arrays. dropnorm.torch (optional; it
needs PyTorch, which this package never imports) has the kernels as PyTorch
operators and modules.
"""

from dropnorm._batchnorm import (
    batch_norm_backward,
    batch_norm_infer,
    batch_norm_infer_backward,
    batch_norm_train,
)
from dropnorm._dropout import (
    draw_seed,
    dropout,
    dropout_apply_mask,
    dropout_backward,
    dropout_mask,
    manual_seed,
    philox4x32_10,
)
from dropnorm._layers import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
)
from dropnorm._paths import (
    get_cmake_dir,
    get_include,
    get_library_dir,
    get_pkgconfig_dir,
    get_runtime_dir,
)
from dropnorm._runtime import (
    build_info,
    c_version,
    get_max_threads,
    output_cache_info,
    set_num_threads,
    set_output_cache_limit,
)
from dropnorm._shards import (
    batch_norm_backward_apply,
    batch_norm_backward_reduce,
    batch_norm_forward_apply,
    batch_norm_merge_stats,
    batch_norm_partial_stats,
)
from dropnorm._sync import SyncBatchNorm

__version__ = c_version()

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "SyncBatchNorm",
    "__version__",
    "batch_norm_backward",
    "batch_norm_backward_apply",
    "batch_norm_backward_reduce",
    "batch_norm_forward_apply",
    "batch_norm_infer",
    "batch_norm_infer_backward",
    "batch_norm_merge_stats",
    "batch_norm_partial_stats",
    "batch_norm_train",
    "build_info",
    "draw_seed",
    "dropout",
    "dropout_apply_mask",
    "dropout_backward",
    "dropout_mask",
    "get_cmake_dir",
    "get_include",
    "get_library_dir",
    "get_max_threads",
    "get_pkgconfig_dir",
    "get_runtime_dir",
    "manual_seed",
    "output_cache_info",
    "philox4x32_10",
    "set_num_threads",
    "set_output_cache_limit",
]
