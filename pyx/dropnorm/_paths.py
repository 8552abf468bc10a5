"""Where the installed C library is: the header, the shared and static
library, the CMake package and the pkg-config file.

A wheel (and ``pip install .``) carries the C library inside the package:
``dropnorm/include/dropnorm/dropnorm.h``, ``dropnorm/lib/libdropnorm.so``
(``.dylib``; ``dropnorm.lib`` + ``bin/dropnorm.dll`` on Windows),
``dropnorm/lib/cmake/dropnorm/dropnormConfig.cmake`` and
``dropnorm/lib/pkgconfig/dropnorm.pc``. ``python -m dropnorm --help`` prints
the same facts for build scripts.
"""

import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def get_include() -> str:
    """The directory to add to the include path for ``#include <dropnorm/dropnorm.h>``."""
    return os.path.join(_PKG_DIR, "include")


def get_library_dir() -> str:
    """The directory holding the dropnorm libraries (``-L``); on Windows the
    import library ``dropnorm.lib`` (the DLL is in :func:`get_runtime_dir`)."""
    return os.path.join(_PKG_DIR, "lib")


def get_runtime_dir() -> str:
    """The directory of the shared library a program loads at run time:
    ``bin`` on Windows (the DLL), the library directory elsewhere."""
    if sys.platform == "win32":
        return os.path.join(_PKG_DIR, "bin")
    return get_library_dir()


def get_cmake_dir() -> str:
    """The directory of ``dropnormConfig.cmake`` (for ``-Ddropnorm_DIR=``)."""
    return os.path.join(get_library_dir(), "cmake", "dropnorm")


def get_pkgconfig_dir() -> str:
    """The directory of ``dropnorm.pc`` (for ``PKG_CONFIG_PATH``)."""
    return os.path.join(get_library_dir(), "pkgconfig")


def get_cflags() -> list[str]:
    """Compiler flags for the C API, as a list."""
    flags = ["-I" + get_include()]
    if sys.platform == "win32":
        flags.append("-DDROPNORM_SHARED")  # dllimport
    return flags


def get_libs() -> list[str]:
    """Linker flags for the shared library, as a list."""
    return ["-L" + get_library_dir(), "-ldropnorm"]
