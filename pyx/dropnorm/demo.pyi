# Type stubs for dropnorm.demo (python -m dropnorm.demo); the docstrings are
# in demo.py. tests/test_typing.py checks that these names and signatures
# match the module's.
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from dropnorm import BatchNorm1d, Dropout

_Array = NDArray[Any]
_Results = dict[str, Any]
_Data = tuple[_Array, _Array, _Array, _Array]
_ProgressFn = Callable[[str, int, int, dict[str, Any]], object]

DTYPE: type[np.float32]
SEED: int
N_TRAIN: int
BATCH_SIZE: int
EPOCHS: int
HIDDEN: tuple[int, ...]
LEARNING_RATE: float
TRACKED_LAYER: int
TRACKED_UNIT: int
TARGET_ACCURACY: float
RUNS: dict[str, tuple[str, bool, str]]
DROPOUT_EPOCHS: int
DROPOUT_HIDDEN: tuple[int, ...]
DROPOUT_LR: float
DROPOUT_SEEDS: int
P_INPUT: float
P_HIDDEN: float
EVAL_EVERY: int
MC_SAMPLES: int
MC_KS: tuple[int, ...]
MC_SHOWN: tuple[int, ...]
LAST: int
ROUNDING: float
PARTS: tuple[str, ...]
STYLES: dict[str, dict[str, str]]
DROPOUT_LABELS: dict[str, str]

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
        self,
        n_in: int,
        n_out: int,
        rng: np.random.Generator,
        bias: bool = True,
        init: str = "glorot",
        dtype: DTypeLike = ...,
    ) -> None: ...
    def forward(self, x: _Array) -> _Array: ...
    def backward(self, dy: _Array) -> _Array: ...
    def params(self) -> Iterator[tuple[_Array, _Array]]: ...

class Net:
    linears: list[Linear]
    norms: list[BatchNorm1d]
    relu: bool
    def __init__(
        self, hidden: Sequence[int], batch_norm: bool, seed: int, activation: str = "sigmoid"
    ) -> None: ...
    def train(self, mode: bool = True) -> None: ...
    def forward(self, x: _Array, keep: int | None = None) -> Any: ...
    def backward(self, dlogits: _Array) -> None: ...
    def sgd_step(self, lr: float) -> None: ...
    def calibrate(self, x: _Array, batch_size: int) -> None: ...

def dropout_seed(seed: int, layer: int) -> int: ...
def sample_seed(seed: int, layer: int) -> int: ...

class ReluNet:
    linears: list[Linear]
    ps: tuple[float, ...]
    mode: str
    drops: list[Dropout | None]
    lr_scale: list[float]
    def __init__(
        self,
        hidden: Sequence[int],
        seed: int,
        p_input: float = 0.0,
        p_hidden: float = 0.0,
        mode: str = "inverted",
        dtype: DTypeLike = ...,
    ) -> None: ...
    def train(self, mode: bool = True) -> None: ...
    def forward(self, x: _Array) -> _Array: ...
    def forward_sampled(self, x: _Array, seed: int, stream: int) -> _Array: ...
    def backward(self, dlogits: _Array) -> None: ...
    def sgd_step(self, lr: float) -> None: ...

def log_softmax(logits: _Array) -> NDArray[np.float64]: ...
def softmax_cross_entropy(logits: _Array, y: _Array) -> tuple[float, _Array, float]: ...
def train_one(
    key: str,
    data: _Data,
    epochs: int,
    seed: int,
    lr: float,
    hidden: Sequence[int],
    batch_size: int,
    progress: _ProgressFn | None = None,
) -> dict[str, Any]: ...
def evaluated_epochs(epochs: int, every: int = 10) -> list[int]: ...
def train_relu(
    data: _Data,
    seed: int,
    epochs: int,
    lr: float,
    hidden: Sequence[int],
    batch_size: int,
    p_input: float,
    p_hidden: float,
    mode: str = "inverted",
    every: int = 10,
    keep_probs: bool = False,
    dtype: DTypeLike = ...,
    label: str = "",
    progress: _ProgressFn | None = None,
) -> dict[str, Any]: ...
def model_averaging(
    net: ReluNet,
    x: _Array,
    y: _Array,
    seed: int,
    samples: int = 100,
    ks: Iterable[int] = (1, 2, 5, 10, 20, 50, 100),
) -> dict[str, Any]: ...
def compare_probs(a: Sequence[_Array], b: Sequence[_Array]) -> dict[str, list[float]]: ...
def run_dropout(
    seed: int = 0,
    seeds: int = 5,
    epochs: int = 400,
    lr: float = 0.1,
    hidden: Sequence[int] = (256, 256, 256),
    batch_size: int = 32,
    n_train: int = 160,
    p_input: float = 0.2,
    p_hidden: float = 0.5,
    every: int = 10,
    mc_samples: int = 100,
    progress: _ProgressFn | None = None,
) -> dict[str, Any]: ...
def run(
    epochs: int = 80,
    seed: int = 0,
    lr: float = 0.2,
    hidden: Iterable[int] = (128, 128, 128, 128, 128, 128),
    batch_size: int = 32,
    n_train: int = 160,
    runs: Iterable[str] = ("plain", "bn", "bn_relu"),
    parts: Iterable[str] = ("batchnorm", "dropout"),
    dropout_epochs: int = 400,
    dropout_lr: float = 0.1,
    dropout_hidden: Iterable[int] = (256, 256, 256),
    seeds: int = 5,
    p_input: float = 0.2,
    p_hidden: float = 0.5,
    eval_every: int = 10,
    mc_samples: int = 100,
    progress: _ProgressFn | None = None,
) -> _Results: ...
def epochs_to(accs: Iterable[float], target: float = 0.85) -> int | None: ...
def claims(results: _Results) -> list[dict[str, Any]]: ...
def format_table(results: _Results, width: int = 100) -> str: ...
def plot(results: _Results, path: str) -> str: ...
def main(argv: Sequence[str] | None = None) -> int: ...
