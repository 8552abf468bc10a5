"""Builds bn_relu.pyx against the installed dropnorm, with nothing but Cython.

    pip install dropnorm cython setuptools
    python setup.py build_ext --inplace
    python -c "import bn_relu; print(bn_relu.version())"

No include_dirs, no libraries: Cython finds dropnorm/capi.pxd in the
installed package, and the kernels come through dropnorm.capi's capsules.
"""

from Cython.Build import cythonize
from setuptools import setup

setup(
    name="bn-relu-example",
    ext_modules=cythonize("bn_relu.pyx"),
    zip_safe=False,
)
