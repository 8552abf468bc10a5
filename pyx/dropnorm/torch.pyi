# Type stubs for dropnorm.torch (torch.py); the docstrings are in the module.
# tests/test_typing.py checks that these names and signatures match the
# module's (where PyTorch is installed) and runs mypy --strict on them.
from typing import Any

from torch import Tensor, nn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormReLU1d",
    "BatchNormReLU2d",
    "BatchNormReLU3d",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "SyncBatchNorm",
    "batch_norm",
    "convert",
    "dropout",
]

def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-05,
) -> Tensor: ...
def dropout(
    input: Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    seed: int | None = None,
    stream: int = 0,
    channelwise: bool = False,
    offset: int = 0,
) -> Tensor: ...
def convert(module: nn.Module, comm: Any = None, fuse_relu: bool = False) -> nn.Module: ...

class _DropnormBatchNorm:
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-05,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None: ...
    def forward(self, input: Tensor) -> Tensor: ...

class BatchNorm1d(_DropnormBatchNorm, nn.BatchNorm1d): ...
class BatchNorm2d(_DropnormBatchNorm, nn.BatchNorm2d): ...
class BatchNorm3d(_DropnormBatchNorm, nn.BatchNorm3d): ...

class _DropnormBatchNormReLU:
    def forward(self, input: Tensor) -> Tensor: ...

class BatchNormReLU1d(_DropnormBatchNormReLU, BatchNorm1d): ...
class BatchNormReLU2d(_DropnormBatchNormReLU, BatchNorm2d): ...
class BatchNormReLU3d(_DropnormBatchNormReLU, BatchNorm3d): ...

class SyncBatchNorm(nn.SyncBatchNorm):
    comm: Any
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-05,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        comm: Any = None,
    ) -> None: ...
    def forward(self, input: Tensor) -> Tensor: ...
    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module: ...

class _DropnormDropout:
    stream: Tensor
    def __init__(self, p: float = 0.5, inplace: bool = False, seed: int | None = None) -> None: ...
    @property
    def seed(self) -> int | None: ...
    @seed.setter
    def seed(self, value: int | None) -> None: ...
    def extra_repr(self) -> str: ...

class Dropout(_DropnormDropout, nn.Dropout):
    def forward(self, input: Tensor, offset: int = 0) -> Tensor: ...

class Dropout1d(_DropnormDropout, nn.Dropout1d):
    def forward(self, input: Tensor, offset: int = 0) -> Tensor: ...

class Dropout2d(_DropnormDropout, nn.Dropout2d):
    def forward(self, input: Tensor, offset: int = 0) -> Tensor: ...

class Dropout3d(_DropnormDropout, nn.Dropout3d):
    def forward(self, input: Tensor, offset: int = 0) -> Tensor: ...
