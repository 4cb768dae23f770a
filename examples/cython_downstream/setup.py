"""Build the downstream Cython example: `python setup.py build_ext --inplace`.
Needs attnx installed (for attnx/kernels.pxd) and Cython; no include path."""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="beam-attention",
    ext_modules=cythonize([Extension("beam_attention", ["beam_attention.pyx"],
                                     include_dirs=[np.get_include()])],
                          compiler_directives={"language_level": 3}),
)
