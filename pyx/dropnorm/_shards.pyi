# Type stubs for dropnorm._shards (compiled from _shards.pyx); the docstrings
# are in the module. tests/test_typing.py checks that these signatures match
# the runtime's (inspect.signature) and runs mypy --strict.
from typing import Any, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

_F = TypeVar("_F", np.float32, np.float64)
_FloatArray = NDArray[np.floating[Any]]
_Float64Array = NDArray[np.float64]
_Real = float | np.floating[Any] | np.integer[Any]

def batch_norm_partial_stats(x: ArrayLike, axis: SupportsIndex = 1) -> _Float64Array: ...
def batch_norm_merge_stats(
    stats: ArrayLike,
) -> tuple[_Float64Array, _Float64Array, _Float64Array]: ...
@overload
def batch_norm_forward_apply(
    x: NDArray[_F],
    mean: ArrayLike,
    var: ArrayLike,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    running_mean: NDArray[_F] | None = None,
    running_var: NDArray[_F] | None = None,
    var_unbiased: ArrayLike | None = None,
    momentum: _Real = 0.1,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def batch_norm_forward_apply(
    x: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    running_mean: _FloatArray | None = None,
    running_var: _FloatArray | None = None,
    var_unbiased: ArrayLike | None = None,
    momentum: _Real = 0.1,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray]: ...
def batch_norm_backward_reduce(
    dy: ArrayLike, x: ArrayLike, save_mean: ArrayLike, axis: SupportsIndex = 1
) -> _Float64Array: ...
@overload
def batch_norm_backward_apply(
    dy: ArrayLike,
    x: NDArray[_F],
    save_mean: ArrayLike,
    save_invstd: ArrayLike,
    sums: ArrayLike,
    count: SupportsIndex,
    weight: ArrayLike | None = None,
    local_sums: ArrayLike | None = None,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def batch_norm_backward_apply(
    dy: ArrayLike,
    x: ArrayLike,
    save_mean: ArrayLike,
    save_invstd: ArrayLike,
    sums: ArrayLike,
    count: SupportsIndex,
    weight: ArrayLike | None = None,
    local_sums: ArrayLike | None = None,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray]: ...
