# Type stubs for dropnorm._bench_sync (one MPI process of the benchmark's sync
# suite); the docstrings are in _bench_sync.py.
from collections.abc import Sequence
from typing import Any

def measure(comm: Any, shape: Sequence[int], repeats: int) -> dict[str, float]: ...
def main(argv: Sequence[str]) -> None: ...
