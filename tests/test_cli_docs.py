"""The user-facing surface: docstring examples (run as doctests), the demo's
printed numbers and plots, `python -m attnx info`, ATTNX_SIMD, and the README
commands that CI runs."""
import doctest
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import attnx
from attnx import demo

pytestmark = pytest.mark.simd_independent
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every public callable: each documents an example that runs
PUBLIC = [getattr(attnx, n) for n in attnx.__all__ if callable(getattr(attnx, n))]


def run_module(*args, env=None):
    # -P keeps the current directory off sys.path: the installed attnx runs
    cmd = [sys.executable, "-P", "-m", "attnx", *args] if sys.version_info >= (3, 11) else \
        [sys.executable, "-m", "attnx", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("func", PUBLIC, ids=lambda f: f.__name__)
def test_docstring_examples_run(func):
    doc = func.__doc__
    assert doc and "Examples" in doc, f"{func.__name__} has no Examples section"
    parser = doctest.DocTestParser()
    test = parser.get_doctest(doc, {}, func.__name__, None, 0)
    assert test.examples, f"{func.__name__} has no runnable example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing example(s) in {func.__name__}"


def test_package_docstring_example():
    test = doctest.DocTestParser().get_doctest(attnx.__doc__, {}, "attnx", None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert test.examples and runner.failures == 0


def test_numpydoc_sections():
    for f in (attnx.attend, attnx.softmax, attnx.context, attnx.dot_score):
        for section in ("Parameters", "Returns", "Examples"):
            assert section in f.__doc__, (f.__name__, section)


def test_demo_numbers():
    p = run_module("demo")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for expected in ["[927, 397, 148, 929]", "naive weights = [nan, 0, 0, nan]",
                     "1.19202922e-01", "7.94715151e-232", "0.00000000e+00", "8.80797078e-01",
                     "[3.88079708, 4.07282630, 45.26423912]", "[-2, -532, -781, 0]"]:
        assert expected in out, expected
    # and the numbers printed are the numbers computed
    r = demo.compute()
    np.testing.assert_allclose(r["context"], [3.88079708, 4.0728263, 45.26423912], rtol=1e-8)
    assert np.isnan(r["naive_weights"][[0, 3]]).all()
    np.testing.assert_array_equal(r["attend"], r["context"])
    # part 2: the toy decoder finds the mirrored position at every step
    assert "Part 2: a 20-step toy decoder" in out
    assert "found the mirrored position at 20 of 20 steps" in out
    w = demo.toy_decoder()
    assert (w.argmax(axis=1) == np.arange(19, -1, -1)).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-14)


PLOTS = {   # name: (min width, min height) in pixels at >= 150 dpi
    "decoder_state": (400, 600), "annotations": (1000, 600),
    "weighted_annotations": (1000, 600), "context": (400, 600),
    "overview": (1800, 800), "decoder_alignment": (900, 900),
}


def test_demo_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image             # matplotlib depends on Pillow
    p = run_module("demo", "--plot", str(tmp_path))
    assert p.returncode == 0, p.stderr
    for name, (min_w, min_h) in PLOTS.items():
        f = tmp_path / f"{name}.png"
        assert f.exists() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert str(f) in p.stdout, name
        with Image.open(f) as im:
            assert im.info.get("dpi", (0, 0))[0] >= 150, (name, im.info.get("dpi"))
            w, h = im.size
            assert w >= min_w and h >= min_h, (name, im.size)
            px = np.asarray(im.convert("RGB"), dtype=np.int32)
        # a picture, not a blank page: many colours, mostly not background
        colours = np.unique(px.reshape(-1, 3) @ np.array([1 << 16, 1 << 8, 1]))
        assert colours.size > 50, (name, colours.size)
        inked = (px.sum(axis=2) < 3 * 235).mean()
        assert inked > 0.2, (name, inked)
        # heatmap colours (viridis: dark purple to yellow) cover a good share
        assert px.std() > 40, (name, px.std())


def test_plot_colour_scales_are_shared_where_compared():
    pytest.importorskip("matplotlib")
    from attnx import plotting
    r = demo.compute()
    panels = {name: k for name, _, _, k, *_ in plotting._panels(r)}
    assert panels["annotations"] == panels["weighted_annotations"] == panels["context"]
    q_norm, shared = plotting._norms(r)
    # one scale spans every value drawn with it
    for key in ("annotations", "weighted", "context"):
        assert shared.vmin <= r[key].min() and r[key].max() <= shared.vmax
    assert shared.vmax == r["annotations"].max()
    assert q_norm.vmax == r["query"].max()


def test_demo_plot_without_matplotlib_says_what_to_install():
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from attnx.__main__ import main; sys.exit(main(['demo', '--plot', 'unused']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd="/")
    assert p.returncode == 2
    assert p.stdout == ""                      # checked before the demo runs
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "matplotlib" in lines[0], p.stderr


def test_version_and_help():
    for args in (["--version"],):
        p = run_module(*args)
        assert p.returncode == 0 and p.stdout.strip() == f"attnx {attnx.__version__}", p
    p = run_module()
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout and "demo" in p.stdout and "bench" in p.stdout
    assert "float32" in p.stdout               # not "float64" alone


def test_console_script():
    exe = os.path.join(os.path.dirname(sys.executable), "attnx")
    if not os.path.exists(exe):
        pytest.skip("the attnx console script is not installed beside this Python")
    p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == f"attnx {attnx.__version__}"
    p = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("usage: attnx"), p.stdout + p.stderr


def test_descriptions_name_both_dtypes():
    from importlib.metadata import metadata
    assert "float32" in metadata("attnx")["Summary"]
    doc = attnx.__doc__
    assert "float32" in doc
    for name in attnx.__all__:
        if name != "__version__":
            assert name in doc, f"the package docstring does not mention {name}"


def run_bench(*args, block=()):
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
            + f"from attnx.__main__ import main; sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd="/")


def test_bench_runs_without_threadpoolctl():
    p = run_bench("bench", "--quick", "--only", "tiny", block=("threadpoolctl", "torch"))
    assert p.returncode == 0, p.stderr
    assert "skipped: threadpoolctl is not installed" in p.stdout
    assert 'pip install "attnx[bench]"' in p.stdout


def test_bench_prints_one_table():
    p = run_bench("bench", "--quick", "--only", "tiny,cache", block=("torch",))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.count("time per call") == 1          # one table, not text then markdown
    assert "|---" not in out
    assert "floor" not in "".join(l.split("  ")[1] for l in out.splitlines()
                                  if l.startswith("  ") and "  " in l.strip())
    p = run_bench("bench", "--quick", "--only", "tiny", "--markdown", block=("torch",))
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("| case |") == 1 and p.stdout.count("time per call") == 1
    p = run_bench("bench", "--only", "nonsense")
    assert p.returncode == 2 and "unknown bench rows" in p.stderr


def test_bench_table_floors_are_notes_and_columns_align():
    from attnx import bench
    t = bench.Table()
    t.add("a case with a rather long label, longer than any other", {
        "attnx": 1e-6, "numpy stable pipeline": 2e-6}, note=bench._floor_note(1e-6, 2e-6, 8e-7, 1e6))
    t.add("short", {"attnx KVCache": 3e-3, "a competitor with a long name too": 9e-3},
          base="attnx KVCache")
    names = [r[1] for r in t.rows]
    assert not any("floor" in n for n in names)           # a bound, not a competitor
    assert "read floor" in t.rows[0][4] and "NumPy / floor = 2.50x" in t.rows[0][4]
    lines = t.text().splitlines()
    # the time column's right edge is the same on every line
    ends = {line.index(t_) + len(t_) for line, t_ in zip(lines[2:], [r[2] for r in t.rows])}
    assert len(ends) == 1, t.text()
    starts = {line.index(r[1]) for line, r in zip(lines[2:], t.rows)}
    assert len(starts) == 1, t.text()
    assert "| case |" in t.markdown() and t.markdown().count("\n") == len(t.rows) + 1


def test_info():
    p = run_module("info")
    assert p.returncode == 0, p.stderr
    assert attnx.__version__ in p.stdout
    assert attnx.simd_level() in p.stdout
    assert "build:" in p.stdout and "compiler" in p.stdout


@pytest.mark.parametrize("level", attnx.simd_available())
def test_env_var_forces_a_level(level):
    code = "import attnx; print(attnx.simd_level())"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "ATTNX_SIMD": level}, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == level


def test_env_var_unknown_level_warns_and_falls_back():
    code = "import attnx; print(attnx.simd_level())"
    p = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                       text=True, env={**os.environ, "ATTNX_SIMD": "sse9"}, cwd="/")
    assert p.returncode == 0
    assert p.stdout.strip() == attnx.simd_available()[0]
    assert "ATTNX_SIMD" in p.stderr


def test_get_include_has_headers():
    inc = attnx.get_include()
    assert os.path.isfile(os.path.join(inc, "attnx.h"))


def _readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S)
    return text, blocks


def _readme_blocks():
    if not os.path.exists(os.path.join(ROOT, "README.md")):
        pytest.skip("not a source checkout")
    return re.findall(r"^```(\w*)\n(.*?)^```", open(os.path.join(ROOT, "README.md")).read(),
                      re.S | re.M)


def test_readme_has_only_code_blocks_the_suite_runs():
    """Every fenced block is run by a test here: sh (the two commands, by CI,
    checked below), python, cython and c (built and run below)."""
    langs = [lang for lang, _ in _readme_blocks()]
    assert set(langs) <= {"sh", "python", "cython", "c"}, langs
    assert langs.count("cython") == 1 and langs.count("c") == 1 and langs.count("sh") == 1


def _build(tmp_path, name, source, pyx):
    pytest.importorskip("setuptools")
    (tmp_path / (name + (".pyx" if pyx else ".c"))).write_text(source)
    (tmp_path / "setup.py").write_text(
        "import attnx, numpy as np\n"
        "from setuptools import Extension, setup\n"
        + ("from Cython.Build import cythonize\n" if pyx else "")
        + f"ext = Extension({name!r}, [{name + ('.pyx' if pyx else '.c')!r}], "
          "include_dirs=[attnx.get_include(), np.get_include()])\n"
        + ("setup(name='readme', ext_modules=cythonize([ext], compiler_directives="
           "{'language_level': 3}))\n" if pyx else "setup(name='readme', ext_modules=[ext])\n"))
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_readme_cython_block_builds_and_runs(tmp_path):
    pytest.importorskip("Cython")
    (src,) = [b for lang, b in _readme_blocks() if lang == "cython"]
    _build(tmp_path, "beams", src, pyx=True)
    p = subprocess.run([sys.executable, "-c", """
import numpy as np, attnx, beams
rng = np.random.default_rng(3)
Q, K, V = rng.standard_normal((5, 8)), rng.standard_normal((11, 8)), rng.standard_normal((11, 3))
np.testing.assert_allclose(beams.attend_beams(Q, K, V), [attnx.attend(q, K, V) for q in Q],
                           rtol=1e-15, atol=1e-15)
# shapes that do not fit are refused before any kernel reads past an array
for bad in ((Q, K, V[:-1]), (Q[:, :-1], K, V)):
    try:
        beams.attend_beams(*bad)
    except ValueError as e:
        print("refused:", e)
# no keys: an exception, never a crash
try:
    beams.attend_beams(Q, K[:0], V[:0])
except (ValueError, IndexError):
    print("refused")
"""], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("refused") == 3, p.stdout


def test_readme_c_block_builds_and_runs(tmp_path):
    (src,) = [b for lang, b in _readme_blocks() if lang == "c"]
    _build(tmp_path, "mymod", src, pyx=False)
    p = subprocess.run([sys.executable, "-c", """
import numpy as np, attnx, mymod
q = np.array([5.0, 1.0, 20.0])
K = np.array([[3, 12, 45], [59, 2, 5], [1, 43, 5], [4, 3, 45.3]])
np.testing.assert_array_equal(mymod.worked_example(), attnx.attend(q, K))
print("ok")
"""], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_readme_times_name_a_cpu():
    """A time quoted in the README (ns, us, ms, s) sits in a section that
    names the CPU it was measured on, or points to the per-CPU tables."""
    if not os.path.exists(os.path.join(ROOT, "README.md")):
        pytest.skip("not a source checkout")
    text = open(os.path.join(ROOT, "README.md")).read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for section in re.split(r"^## ", text, flags=re.M):
        for para in re.split(r"\n\s*\n", section):
            if re.search(r"\b\d+(\.\d+)?\s?(ns|us|µs|ms)\b", para):
                # the paragraph itself, or (a table) its section's opening
                where = para if not para.lstrip().startswith("|") else section
                assert re.search(r"EPYC|Xeon|Core i|Ryzen|Apple M|RESULTS\.md", where), para


def test_test_group_and_extra_agree():
    """pyproject's [dependency-groups] test (the README's command 2) and the
    test extra (wheel tests) list the same packages."""
    path = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("not a source checkout")
    try:
        import tomllib
    except ImportError:
        pytest.skip("tomllib needs Python 3.11")
    with open(path, "rb") as f:
        py = tomllib.load(f)
    assert py["dependency-groups"]["test"] == py["project"]["optional-dependencies"]["test"]
    assert "threadpoolctl" not in " ".join(py["project"]["dependencies"])


def test_readme_starts_with_the_two_commands_ci_runs():
    if not os.path.exists(os.path.join(ROOT, ".ci", "run")):
        pytest.skip("not a git checkout (an sdist has no .ci/)")
    text, blocks = _readme_commands()
    first = blocks[0]
    assert "python -m attnx demo" in first
    assert "--group test" in first and "pytest" in first
    # command 2 installs the test tools only: attnx is not built again
    second = [ln for ln in first.strip().splitlines() if "pytest" in ln][0]
    assert "pip install ." not in second and ".[" not in second
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    for line in first.strip().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert line in ci, f".ci/run does not run the README command: {line}"


def test_readme_python_examples_run():
    if not os.path.exists(os.path.join(ROOT, "README.md")):
        pytest.skip("not a source checkout")
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    ns = {}                       # blocks continue one another, as a reader's session
    for block in blocks:
        if ">>>" in block:
            test = doctest.DocTestParser().get_doctest(block, ns, "README", None, 0)
            runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
            runner.run(test, clear_globs=False)
            assert runner.failures == 0
            ns.update(test.globs)         # DocTest ran on a copy
        else:
            exec(compile(block, "README.md", "exec"), ns)


def test_readme_demo_command_from_the_repository_root():
    """The README's `python -m attnx demo` runs in the repository root, where
    `-m` puts the (unbuilt) source tree first on sys.path: the source package
    must take its compiled modules from the installed attnx."""
    if not os.path.isdir(os.path.join(ROOT, "attnx")):
        pytest.skip("not a source tree")
    p = subprocess.run([sys.executable, "-m", "attnx", "demo"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "[3.88079708, 4.07282630, 45.26423912]" in p.stdout


def test_env_var_best_is_the_default_and_does_not_warn():
    code = "import attnx; print(attnx.simd_level())"
    p = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                       text=True, env={**os.environ, "ATTNX_SIMD": "best"}, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == attnx.simd_available()[0]
