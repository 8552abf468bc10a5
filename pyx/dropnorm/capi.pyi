# Type stubs for dropnorm.capi (compiled from capi.pyx). The module's API is
# for Cython (`from dropnorm cimport capi`, declared in capi.pxd) and reaches
# it through the function capsules of __pyx_capi__; Python sees nothing else.
from typing import Any

__pyx_capi__: dict[str, Any]
