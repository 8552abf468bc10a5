# Type stubs for dropnorm.demo (python -m dropnorm.demo); the docstrings are
# in demo.py. tests/test_typing.py checks that these names and signatures
# match the module's.
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropnorm import BatchNorm1d, Dropout

_Array = NDArray[Any]
_Results = dict[str, Any]
_ProgressFn = Callable[[str, int, int, dict[str, Any]], object]

DTYPE: type[np.float32]
EPOCHS: int
SEED: int
HIDDEN: tuple[int, ...]
LEARNING_RATE: float
BATCH_SIZE: int
N_TRAIN: int
DROPOUT_HIDDEN: float
DROPOUT_INPUT: float
TRACKED_LAYER: int
TRACKED_UNIT: int
TARGET_ACCURACY: float
RUNS: dict[str, tuple[str, bool, bool]]
COLORS: dict[str, str]
LAST: int

def load_data(
    seed: int = 0, n_train: int = 160
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]: ...
def sigmoid(z: _Array) -> _Array: ...

class Linear:
    weight: _Array
    bias: _Array | None
    grad_weight: _Array | None
    grad_bias: _Array | None
    def __init__(
        self, n_in: int, n_out: int, rng: np.random.Generator, bias: bool = True
    ) -> None: ...
    def forward(self, x: _Array) -> _Array: ...
    def backward(self, dy: _Array) -> _Array: ...
    def params(self) -> Iterator[tuple[_Array, _Array]]: ...

class Net:
    linears: list[Linear]
    norms: list[BatchNorm1d]
    drops: list[Dropout]
    input_drop: Dropout | None
    def __init__(
        self,
        hidden: Sequence[int],
        batch_norm: bool,
        dropout: bool,
        seed: int,
        p_hidden: float = 0.1,
        p_input: float = 0.2,
    ) -> None: ...
    def train(self, mode: bool = True) -> None: ...
    def forward(self, x: _Array, keep: int | None = None) -> Any: ...
    def backward(self, dlogits: _Array) -> None: ...
    def sgd_step(self, lr: float) -> None: ...
    def calibrate(self, x: _Array, batch_size: int) -> None: ...

def softmax_cross_entropy(logits: _Array, y: _Array) -> tuple[float, _Array, float]: ...
def train_one(
    key: str,
    data: tuple[_Array, _Array, _Array, _Array],
    epochs: int,
    seed: int,
    lr: float,
    hidden: Sequence[int],
    batch_size: int,
    p_hidden: float = 0.1,
    p_input: float = 0.2,
    progress: _ProgressFn | None = None,
) -> dict[str, Any]: ...
def run(
    epochs: int = 80,
    seed: int = 0,
    lr: float = 0.2,
    hidden: Iterable[int] = (128, 128, 128, 128, 128, 128),
    batch_size: int = 32,
    n_train: int = 160,
    p_hidden: float = 0.1,
    p_input: float = 0.2,
    runs: Iterable[str] = ("plain", "bn", "dropout", "bn+dropout"),
    progress: _ProgressFn | None = None,
) -> _Results: ...
def epochs_to(accs: Iterable[float], target: float = 0.85) -> int | None: ...
def loss_gap(r: dict[str, Any], last: int = 5) -> float: ...
def acc_gap(r: dict[str, Any], last: int = 5) -> float: ...
def claims(results: _Results) -> list[dict[str, Any]]: ...
def format_table(results: _Results, width: int = 100) -> str: ...
def plot(results: _Results, path: str) -> str: ...
def main(argv: Sequence[str] | None = None) -> int: ...
