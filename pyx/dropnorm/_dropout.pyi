# Type stubs for dropnorm._dropout (compiled from _dropout.pyx); the
# docstrings are in the module. tests/test_typing.py checks that these
# signatures match the runtime's (inspect.signature) and runs mypy --strict.
from collections.abc import Iterable
from typing import Any, Literal, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

_F = TypeVar("_F", np.float32, np.float64)
_FloatArray = NDArray[np.floating[Any]]
_Mask = NDArray[np.uint8]
_Real = float | np.floating[Any] | np.integer[Any]
_Flag = bool | np.bool_
_Mode = Literal["inverted", "classic"]

def philox4x32_10(
    ctr: Iterable[SupportsIndex], key: Iterable[SupportsIndex]
) -> tuple[int, int, int, int]: ...
def manual_seed(seed: SupportsIndex) -> None: ...
def draw_seed() -> tuple[int, int]: ...
def dropout_mask(
    n: SupportsIndex,
    p: _Real,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    offset: SupportsIndex = 0,
) -> _Mask: ...
@overload
def dropout(
    x: NDArray[_F],
    p: _Real = 0.5,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    training: _Flag = True,
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    return_mask: Literal[False] = False,
    offset: SupportsIndex = 0,
) -> NDArray[_F]: ...
@overload
def dropout(
    x: ArrayLike,
    p: _Real = 0.5,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    training: _Flag = True,
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    return_mask: Literal[False] = False,
    offset: SupportsIndex = 0,
) -> _FloatArray: ...
@overload
def dropout(
    x: NDArray[_F],
    p: _Real = 0.5,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    training: _Flag = True,
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
    *,
    return_mask: Literal[True],
    offset: SupportsIndex = 0,
) -> tuple[NDArray[_F], _Mask]: ...
@overload
def dropout(
    x: ArrayLike,
    p: _Real = 0.5,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    training: _Flag = True,
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    *,
    return_mask: Literal[True],
    offset: SupportsIndex = 0,
) -> tuple[_FloatArray, _Mask]: ...
@overload
def dropout(
    x: ArrayLike,
    p: _Real = 0.5,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    training: _Flag = True,
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
    return_mask: _Flag = False,
    offset: SupportsIndex = 0,
) -> _FloatArray | tuple[_FloatArray, _Mask]: ...
@overload
def dropout_apply_mask(
    x: NDArray[_F],
    mask: ArrayLike,
    p: _Real,
    mode: _Mode = "inverted",
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: NDArray[_F] | None = None,
) -> NDArray[_F]: ...
@overload
def dropout_apply_mask(
    x: ArrayLike,
    mask: ArrayLike,
    p: _Real,
    mode: _Mode = "inverted",
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    out: _FloatArray | None = None,
) -> _FloatArray: ...
@overload
def dropout_backward(
    dy: NDArray[_F],
    p: _Real,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    mask: ArrayLike | None = None,
    out: NDArray[_F] | None = None,
    offset: SupportsIndex = 0,
) -> NDArray[_F]: ...
@overload
def dropout_backward(
    dy: ArrayLike,
    p: _Real,
    seed: SupportsIndex | None = None,
    stream: SupportsIndex | None = None,
    mode: _Mode = "inverted",
    channelwise: _Flag = False,
    axis: SupportsIndex = 1,
    mask: ArrayLike | None = None,
    out: _FloatArray | None = None,
    offset: SupportsIndex = 0,
) -> _FloatArray: ...
