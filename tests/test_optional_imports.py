"""The integrations are optional: importing attnx (and using it) must not
import torch or jax, whether or not they are installed."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.simd_independent


def test_importing_attnx_imports_neither_torch_nor_jax():
    code = ("import sys, attnx, attnx.demo; attnx.attend([1.0], [[1.0]]); "
            "print(sorted(m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules))")
    # from /: the installed attnx, not the source tree (-P is 3.11+)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd="/")
    assert res.stdout.strip() == "[]"
