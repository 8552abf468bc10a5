"""``python -m dropnorm``: where the C library of this installation is.

For build scripts, as ``numpy-config`` and ``pybind11 --cmakedir`` do::

    cc prog.c $(python -m dropnorm --cflags --libs) -Wl,-rpath,$(python -m dropnorm --libdir)
    cmake -Ddropnorm_DIR=$(python -m dropnorm --cmakedir) ...
    PKG_CONFIG_PATH=$(python -m dropnorm --pkgconfigdir) pkg-config --cflags --libs dropnorm

``--cflags`` and ``--libs`` print together on one line, as pkg-config does;
every other answer goes on a line of its own, in the order asked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dropnorm import _paths


def _version() -> str:
    from dropnorm import __version__  # the C core's version, as the package's

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dropnorm",
        description="Print where this installation's dropnorm C library is, "
        "for building C, C++ or Cython code against it.",
    )
    answers: dict[str, tuple[str, Callable[[], str]]] = {
        "version": ("the version", _version),
        "cflags": ("compiler flags: -I<include dir>", lambda: " ".join(_paths.get_cflags())),
        "libs": ("linker flags: -L<lib dir> -ldropnorm", lambda: " ".join(_paths.get_libs())),
        "includedir": ("the include directory", _paths.get_include),
        "libdir": ("the library directory", _paths.get_library_dir),
        "runtimedir": ("the directory of the shared library at run time (bin on Windows)",
                       _paths.get_runtime_dir),
        "cmakedir": ("the directory of dropnormConfig.cmake (dropnorm_DIR)",
                     _paths.get_cmake_dir),
        "pkgconfigdir": ("the directory of dropnorm.pc (PKG_CONFIG_PATH)",
                         _paths.get_pkgconfig_dir),
    }
    for name, (text, _) in answers.items():
        parser.add_argument(f"--{name}", action="append_const", const=name, dest="asked",
                            help=text)
    args = parser.parse_args(argv)
    if not args.asked:
        parser.print_help()
        return 2
    lines: list[str | list[str]] = []
    flags: list[str] = []
    for name in args.asked:
        value = answers[name][1]()
        if name in ("cflags", "libs"):
            if not flags:
                lines.append(flags)
            flags.append(value)
        else:
            lines.append(value)
    for line in lines:
        print(" ".join(line) if isinstance(line, list) else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
