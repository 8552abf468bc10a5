# Type stubs for dropnorm._sync (SyncBatchNorm; Python, whose internals lean
# on the compiled modules' private helpers); the docstrings are in _sync.py.
# tests/test_typing.py checks that these names and signatures match the
# module's and runs mypy --strict.
from collections.abc import Iterable
from typing import Any, Protocol, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from dropnorm._layers import _BatchNorm

__all__ = ["SyncBatchNorm"]

_Self = TypeVar("_Self", bound="SyncBatchNorm")
_F = TypeVar("_F", np.float32, np.float64)
_FloatArray = NDArray[np.floating[Any]]
_Real = float | np.floating[Any] | np.integer[Any]
_Flag = bool | np.bool_

class _Communicator(Protocol):
    def Get_size(self) -> int: ...
    def Allgather(self, sendbuf: Any, recvbuf: Any, /) -> Any: ...

class SyncBatchNorm(_BatchNorm):
    comm: _Communicator
    def __init__(
        self,
        num_features: SupportsIndex,
        eps: _Real = 1e-05,
        momentum: _Real | None = 0.1,
        affine: _Flag = True,
        track_running_stats: _Flag = True,
        comm: _Communicator | None = None,
        axis: SupportsIndex = 1,
        dtype: DTypeLike = "float32",
    ) -> None: ...
    # no residual or activation here: the shard's forward and backward only
    @overload  # type: ignore[override]
    def forward(self, x: NDArray[_F]) -> NDArray[_F]: ...
    @overload
    def forward(self, x: ArrayLike) -> _FloatArray: ...
    @overload
    def backward(self, dy: NDArray[_F]) -> NDArray[_F]: ...
    @overload
    def backward(self, dy: ArrayLike) -> _FloatArray: ...
    def calibrate(self: _Self, batches: Iterable[ArrayLike]) -> _Self: ...
