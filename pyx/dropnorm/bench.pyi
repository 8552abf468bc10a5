# Type stubs for dropnorm.bench (python -m dropnorm.bench); the docstrings are
# in bench.py. tests/test_typing.py checks that these names and signatures
# match the module's.
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from numpy.typing import DTypeLike

_Row = dict[str, Any]
_Result = dict[str, Any]
_Shape = tuple[int, ...]
_ProgressMode = bool | str | None

LEAST_TRAFFIC: dict[str, float]
MAIN_SHAPE: _Shape
SMALL_SHAPES: list[_Shape]
RESNET50_LAYERS: tuple[tuple[int, int, int], ...]
RESNET50_PASSES: dict[str, str]
RESNET50_BATCH: int
SPEEDUP_GOAL: float
LAYOUT_GOAL: float
MLP_SHAPES: list[tuple[int, int]]
OVERHEAD_SHAPE: tuple[int, int]
OVERHEAD_KERNELS: tuple[str, ...]
OVERHEAD_GOAL: float
OVERHEAD_CALLS: int
UNDER_LOAD_SHAPES: list[_Shape]
UNDER_LOAD_KERNELS: tuple[str, ...]
UNDER_LOAD_SAMPLES: int
UNDER_LOAD_TIME_LIMIT: float
SYNC_SHAPES: list[_Shape]
SYNC_RANKS: tuple[int, ...]
TORCH_MLP: tuple[int, int, int]
TORCH_CLASSES: int
TORCH_CNN_INPUT: tuple[int, int, int, int]
TORCH_CNN_WIDTHS: tuple[int, ...]
TORCH_GOAL: float

class Progress:
    MODES: tuple[str, ...]
    stream: TextIO
    mode: str
    total: int
    title: str
    every: float
    done: int
    start: float
    def __init__(
        self,
        total: int,
        title: str,
        mode: _ProgressMode = "auto",
        stream: TextIO | None = None,
        every: float = 5.0,
    ) -> None: ...
    def step(self, label: str) -> None: ...
    def close(self) -> None: ...

def measure(case: Any, threads: int, repeats: int) -> dict[str, Any]: ...
def run(
    quick: bool = False,
    repeats: int | None = None,
    torch_threads: bool = True,
    progress: _ProgressMode = True,
    dtypes: Sequence[DTypeLike] | None = None,
) -> list[_Row]: ...
def format_table(rows: Iterable[_Row]) -> str: ...
def run_resnet50(
    layers: Iterable[tuple[int, int, int]] | None = None,
    batch: int = 16,
    layouts: Sequence[str] = ("NCHW", "NHWC"),
    dtype: DTypeLike = ...,
    repeats: int = 11,
    use_torch: bool = True,
    progress: _ProgressMode = "auto",
) -> _Result: ...
def format_resnet50(result: _Result) -> str: ...
def measure_overhead(
    fn: Callable[[], object], reference: Callable[[], object], repeats: int, calls: int = 200
) -> dict[str, float]: ...
def run_mlp(
    shapes: Iterable[tuple[int, int]] | None = None,
    overhead_shape: tuple[int, int] | None = None,
    dtype: DTypeLike = ...,
    repeats: int = 11,
    use_torch: bool = True,
    progress: _ProgressMode = "auto",
    calls: int = 200,
) -> _Result: ...
def format_mlp(result: _Result) -> str: ...
def start_load(lifetime_s: float) -> subprocess.Popen[bytes]: ...
def stop_load(proc: subprocess.Popen[bytes]) -> int | None: ...
def run_under_load(
    shapes: Iterable[Sequence[int]] | None = None,
    kernels: Iterable[str] | None = None,
    samples: int = 100,
    time_limit: float = 60.0,
    dtype: DTypeLike = ...,
    progress: _ProgressMode = "auto",
) -> _Result: ...
def format_under_load(result: _Result) -> str: ...
def describe_machine() -> dict[str, Any]: ...
HALF_KERNELS: tuple[str, ...]
HALF_GOALS: dict[str, float]
HALF_TORCH_GOAL: float

def run_half(
    shape: _Shape = ...,
    layouts: Sequence[str] = ("NCHW", "NHWC"),
    repeats: int = 11,
    use_torch: bool = True,
    progress: _ProgressMode = "auto",
) -> _Result: ...
def format_half(result: _Result) -> str: ...
FUSED_P: float
FUSED_GOALS: dict[str, tuple[str, float | None]]

def run_fused(
    shape: _Shape = ...,
    layouts: Sequence[str] = ("NCHW",),
    dtype: DTypeLike = ...,
    repeats: int = 11,
    progress: _ProgressMode = "auto",
) -> _Result: ...
def format_fused(result: _Result) -> str: ...
def mpiexec_command() -> list[str] | None: ...

MPI_LAUNCH_FAILURES: tuple[str, ...]

def run_mpiexec(
    cmd: Sequence[str], attempts: int = 3, **kwargs: Any
) -> subprocess.CompletedProcess[str]: ...
def run_sync(
    ranks: Sequence[int] = ...,
    shapes: Sequence[_Shape] | None = None,
    repeats: int = 11,
    progress: _ProgressMode = "auto",
) -> _Result: ...
def format_sync(result: _Result) -> str: ...
def run_torch(
    mlp: Sequence[int] | None = None,
    cnn_input: Sequence[int] | None = None,
    cnn_widths: Sequence[int] | None = None,
    layouts: Sequence[str] = ("NCHW", "NHWC"),
    dtype: DTypeLike = ...,
    repeats: int = 11,
    progress: _ProgressMode = "auto",
) -> _Result: ...
def format_torch(result: _Result) -> str: ...
def main(argv: Sequence[str] | None = None) -> int: ...
