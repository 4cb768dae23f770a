"""Shared test setup.

Every test that touches the kernels runs once per SIMD level this CPU and
build support (attnx.simd_available()), switching the process-wide kernel
table before the test; ATTNX_SIMD pins the run to one level. Tests marked
``simd_independent`` run once.
"""
import os
import sys

import hypothesis
import pytest

import attnx
from attnx import kernels

hypothesis.settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                           hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture,
                           hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# tests import reference.py as a plain module; the repository root stays off
# sys.path, so `import attnx` always finds the installed package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

START_LEVEL = attnx.simd_level()
LEVELS = (START_LEVEL,) if os.environ.get("ATTNX_SIMD") else attnx.simd_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "simd_independent: run once, not per SIMD level")


def pytest_report_header(config):
    return (f"attnx {attnx.__version__} from {os.path.dirname(attnx.__file__)}; "
            f"SIMD levels under test: {', '.join(LEVELS)}; {attnx.build_info()}")


def pytest_generate_tests(metafunc):
    if "simd" in metafunc.fixturenames:
        once = metafunc.definition.get_closest_marker("simd_independent") is not None
        levels = (START_LEVEL,) if once else LEVELS
        metafunc.parametrize("simd", levels, indirect=True, ids=[f"simd={lv}" for lv in levels])


@pytest.fixture(autouse=True)
def simd(request):
    level = getattr(request, "param", START_LEVEL)
    kernels._set_simd_level(level)
    assert attnx.simd_level() == level
    yield level
    kernels._set_simd_level(START_LEVEL)
