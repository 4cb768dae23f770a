"""Build the downstream C example: `python setup.py build_ext --inplace`.
The only thing it takes from attnx is the include directory."""
import attnx
from setuptools import Extension, setup

setup(
    name="attnx-client",
    ext_modules=[Extension("attnx_client", ["attnx_client.c"],
                           include_dirs=[attnx.get_include()])],
)
