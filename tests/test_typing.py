"""Type stubs: a strict-typed usage file passes mypy, and stubtest finds the
stubs and the compiled modules in step."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.simd_independent
HERE = os.path.dirname(os.path.abspath(__file__))


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=600, cwd=os.path.join(HERE, "typing"))


def test_mypy_strict_on_usage():
    pytest.importorskip("mypy")
    p = run("mypy", "--strict", "--no-incremental", "usage.py")
    assert p.returncode == 0, p.stdout + p.stderr


def test_stubtest():
    pytest.importorskip("mypy")
    p = run("mypy.stubtest", "attnx._core", "attnx.kernels", "--ignore-missing-stub")
    assert p.returncode == 0, p.stdout + p.stderr
