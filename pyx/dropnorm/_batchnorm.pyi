# Type stubs for dropnorm._batchnorm (compiled from _batchnorm.pyx); the
# docstrings are in the module. tests/test_typing.py checks that these
# signatures match the runtime's (inspect.signature) and runs mypy --strict.
from typing import Any, Literal, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

_F = TypeVar("_F", np.float32, np.float64)
_FloatArray = NDArray[np.floating[Any]]
_Real = float | np.floating[Any] | np.integer[Any]
_Activation = Literal["relu"] | None
_Mask = NDArray[np.uint8]

@overload
def batch_norm_train(
    x: NDArray[_F],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    running_mean: NDArray[_F] | None = None,
    running_var: NDArray[_F] | None = None,
    momentum: _Real = 0.1,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    residual: ArrayLike | None = None,
    activation: _Activation = None,
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    return_mask: Literal[False] = False,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def batch_norm_train(
    x: ArrayLike,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    running_mean: _FloatArray | None = None,
    running_var: _FloatArray | None = None,
    momentum: _Real = 0.1,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    residual: ArrayLike | None = None,
    activation: _Activation = None,
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    return_mask: Literal[False] = False,
) -> tuple[_FloatArray, _FloatArray, _FloatArray]: ...
@overload
def batch_norm_train(
    x: NDArray[_F],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    running_mean: NDArray[_F] | None = None,
    running_var: NDArray[_F] | None = None,
    momentum: _Real = 0.1,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    residual: ArrayLike | None = None,
    activation: _Activation = None,
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    *,
    return_mask: Literal[True],
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F], _Mask]: ...
@overload
def batch_norm_train(
    x: ArrayLike,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    running_mean: _FloatArray | None = None,
    running_var: _FloatArray | None = None,
    momentum: _Real = 0.1,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    residual: ArrayLike | None = None,
    activation: _Activation = None,
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    *,
    return_mask: Literal[True],
) -> tuple[_FloatArray, _FloatArray, _FloatArray, _Mask]: ...
@overload
def batch_norm_infer(
    x: NDArray[_F],
    running_mean: ArrayLike,
    running_var: ArrayLike,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    residual: ArrayLike | None = None,
    activation: _Activation = None,
) -> NDArray[_F]: ...
@overload
def batch_norm_infer(
    x: ArrayLike,
    running_mean: ArrayLike,
    running_var: ArrayLike,
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    residual: ArrayLike | None = None,
    activation: _Activation = None,
) -> _FloatArray: ...
@overload
def batch_norm_backward(
    dy: ArrayLike,
    x: NDArray[_F],
    save_mean: ArrayLike,
    save_invstd: ArrayLike,
    weight: ArrayLike | None = None,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    activation: _Activation = None,
    y: ArrayLike | None = None,
    residual: Literal[False] = False,
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mask: ArrayLike | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def batch_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    save_mean: ArrayLike,
    save_invstd: ArrayLike,
    weight: ArrayLike | None = None,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    activation: _Activation = None,
    y: ArrayLike | None = None,
    residual: Literal[False] = False,
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mask: ArrayLike | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray]: ...
@overload
def batch_norm_backward(
    dy: ArrayLike,
    x: NDArray[_F],
    save_mean: ArrayLike,
    save_invstd: ArrayLike,
    weight: ArrayLike | None = None,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    activation: _Activation = None,
    y: ArrayLike | None = None,
    *,
    residual: Literal[True],
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mask: ArrayLike | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def batch_norm_backward(
    dy: ArrayLike,
    x: ArrayLike,
    save_mean: ArrayLike,
    save_invstd: ArrayLike,
    weight: ArrayLike | None = None,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    activation: _Activation = None,
    y: ArrayLike | None = None,
    *,
    residual: Literal[True],
    dropout: _Real = 0.0,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mask: ArrayLike | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray, _FloatArray]: ...
@overload
def batch_norm_infer_backward(
    dy: ArrayLike,
    x: NDArray[_F],
    running_mean: ArrayLike,
    running_var: ArrayLike,
    weight: ArrayLike | None = None,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F]]: ...
@overload
def batch_norm_infer_backward(
    dy: ArrayLike,
    x: ArrayLike,
    running_mean: ArrayLike,
    running_var: ArrayLike,
    weight: ArrayLike | None = None,
    eps: _Real = 1e-05,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
) -> tuple[_FloatArray, _FloatArray, _FloatArray]: ...
