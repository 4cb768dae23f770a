"""Dask is optional: importing attnx never imports it, and attnx.dask
without it says how to install it. Runs whether or not Dask is installed."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.simd_independent


def run(code):
    # run from / so that the repository root (a source attnx/) stays off
    # sys.path: this is the installed attnx (-P would do it, but not on 3.10)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")


def test_importing_attnx_never_imports_dask():
    r = run("import sys, attnx, numpy as np\n"
            "attnx.attend(np.ones(3), np.ones((4, 3)))\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
            "print(bad)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_attnx_dask_without_dask_says_how_to_install_it():
    # sys.modules[name] = None makes `import name` raise ImportError
    r = run("import sys\n"
            "sys.modules['dask'] = None\n"
            "import attnx\n"
            "try:\n"
            "    import attnx.dask\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert 'pip install "attnx[dask]"' in r.stdout
