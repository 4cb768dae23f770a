"""Build attnx.

The C core (csrc/) is compiled file by file: the portable sources at the
baseline ISA, and each levels/<dtype>_<isa>.c with its own ISA flags, so one binary
holds every SIMD level and picks one at run time. The objects are linked into
attnx.kernels, the single module that owns the kernels; attnx._core (the NumPy
API) reaches them through attnx.kernels' C-level exports.

Environment:
  ATTNX_NO_SIMD=1   portable kernels only (any C99 compiler)
  ATTNX_THREADS=0   build without threads (every call serial)
"""
import concurrent.futures
import glob
import os
import platform
import subprocess
import sys
import sysconfig
import time

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.modified import newer_group

CSRC = "csrc"
# The C core as the Makefile builds it: the entry points (csrc/api), dispatch
# (csrc/dispatch) and the level files (csrc/levels/<dtype>_<isa>.c, which
# compile csrc/kernels over the vocabulary csrc/simd); a file named
# *_<isa>.c holds the kernels of one SIMD level and gets that level's flags.
SOURCES = sorted(os.path.relpath(p, CSRC) for folder in ("api", "dispatch", "levels")
                 for p in glob.glob(os.path.join(CSRC, folder, "*.c")))
# the public headers (csrc/include) and the internal ones, by folder
INCLUDE = os.path.join(CSRC, "include")
CORE_INCLUDE_DIRS = [CSRC, INCLUDE, os.path.join(CSRC, "api"), os.path.join(CSRC, "kernels")]
# Everything a core object depends on (setuptools only watches `sources`).
CORE_DEPENDS = sorted(glob.glob(os.path.join(CSRC, "*", "*.[ch]")) +
                      glob.glob(os.path.join(INCLUDE, "*.def")))
ISA_SUFFIXES = {"_avx2.c": "avx2", "_avx512.c": "avx512", "_neon.c": "neon"}
PUBLIC_HEADERS = ["attnx.h", "attnx_api.def", "attnx_capi.h"]


def source_isa(name):
    return next((isa for suffix, isa in ISA_SUFFIXES.items() if name.endswith(suffix)), None)

ISA_FLAGS = {
    "unix": {"avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f", "-mavx2", "-mfma"]},
    "msvc": {"avx2": ["/arch:AVX2"], "avx512": ["/arch:AVX512"]},
}


def _env_flag(name, default):
    return os.environ.get(name, default).strip().lower() not in ("0", "", "no", "false")


def target_arch():
    """x86_64, arm64 or the machine name, for the wheel being built (honours
    ARCHFLAGS on macOS, where cibuildwheel may cross-compile)."""
    archflags = os.environ.get("ARCHFLAGS", "")
    if "arm64" in archflags and "x86_64" not in archflags:
        return "arm64"
    if "x86_64" in archflags and "arm64" not in archflags:
        return "x86_64"
    plat = sysconfig.get_platform().lower()
    if plat.endswith(("x86_64", "amd64")):
        return "x86_64"
    if plat.endswith(("aarch64", "arm64")):
        return "arm64"
    return platform.machine().lower()


# examples that `python -m attnx demo ...` runs, shipped as attnx/examples/<name>
PACKAGED_EXAMPLES = ["train_alignment.py"]


class BuildPy(build_py):
    """Ship the public C headers inside the package (attnx.get_include()), and
    the examples the demo runs (one source: examples/)."""

    def run(self):
        super().run()
        ex = os.path.join(self.build_lib, "attnx", "examples")
        self.mkpath(ex)
        for name in PACKAGED_EXAMPLES:
            self.copy_file(os.path.join("examples", name), os.path.join(ex, name))
        dest = os.path.join(self.build_lib, "attnx", "include")
        self.mkpath(dest)
        for h in PUBLIC_HEADERS:
            src = os.path.join(INCLUDE, h)
            if os.path.exists(src):
                self.copy_file(src, os.path.join(dest, h))


class BuildExt(build_ext):
    """Compile every C file of both extensions (the C core and the two
    Cython-generated modules) in one pool, one compiler per core, longest
    first, printing a line per file; then link. `pip install -v .` shows the
    lines (pip hides a build's output without -v)."""

    def _kind(self):
        return "msvc" if self.compiler.compiler_type == "msvc" else "unix"

    def _thread_flags(self):
        """(compile, link) flags for the thread pool (csrc/api/threads.c): POSIX
        threads, or OpenMP on MSVC (Windows has no fork, so libgomp's fork
        hang cannot happen there); ATTNX_THREADS=0 builds every call serial."""
        if not _env_flag("ATTNX_THREADS", "1"):
            return ["-DATTNX_NO_THREADS"] if self._kind() != "msvc" else ["/DATTNX_NO_THREADS"], []
        if self._kind() == "msvc":
            return ["/openmp"], []
        return ["-pthread"], ["-pthread"]

    @staticmethod
    def _threads_name(cflags):
        if any("ATTNX_NO_THREADS" in f for f in cflags):
            return "none"
        return "openmp" if "/openmp" in cflags else "pthreads"

    def _compiler_version(self):
        if self._kind() == "msvc":
            return "MSVC"
        cc = (getattr(self.compiler, "compiler_so", None) or ["cc"])[0]
        try:
            out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
            return out.stdout.splitlines()[0].strip()
        except Exception:
            return cc

    def _core_jobs(self, thread_cflags):
        """(source, macros, include dirs, extra flags, depends) for every C
        file of the core."""
        kind = self._kind()
        arch = target_arch()
        no_simd = _env_flag("ATTNX_NO_SIMD", "0")
        if kind == "msvc":
            base = ["/O2", "/fp:precise", "/W3"]
        else:
            base = ["-std=c99", "-O3", "-ffp-contract=off", "-Wall", "-Wextra"]
        macros = [("ATTNX_NO_SIMD", "1")] if no_simd else []
        gen = os.path.join(self.build_temp, "attnx_generated")
        self.mkpath(gen)
        info = (f"{sys.platform} {arch}; compiler: {self._compiler_version()}; "
                f"flags: {' '.join(base)}; threads: {self._threads_name(thread_cflags)}; "
                f"simd: {'portable only' if no_simd else 'dispatched'}")
        with open(os.path.join(gen, "attnx_build_info.h"), "w") as f:
            f.write("#define ATTNX_BUILD_INFO " + '"' + info.replace('\\', '/').replace('"', "'") + '"\n')
        jobs = []
        for name in SOURCES:
            isa = source_isa(name)
            if isa and no_simd:
                continue       # with ATTNX_NO_SIMD they would compile to nothing
            extra = list(base)
            if name.startswith("api" + os.sep) or name.startswith("api/"):
                extra += thread_cflags
            if isa and not no_simd and arch == "x86_64":
                extra += ISA_FLAGS[kind].get(isa, [])
            defs = macros + ([("ATTNX_HAVE_BUILD_INFO_H", "1")]
                             if os.path.basename(name) == "api.c" else [])
            jobs.append((os.path.join(CSRC, name), defs, CORE_INCLUDE_DIRS + [gen], extra, []))
        return jobs

    @staticmethod
    def _cost(src):
        """Rough compile time, for longest-first scheduling: the Cython
        modules are by far the slowest, then the vector kernels."""
        name = os.path.basename(src)
        if not src.startswith(CSRC):
            return 3
        return 2 if source_isa(name) else 1

    def build_extensions(self):
        self.check_extensions_list(self.extensions)
        todo = [ext for ext in self.extensions
                if self.force or newer_group(sorted(ext.sources) + ext.depends,
                                             self.get_ext_fullpath(ext.name), "newer")]
        jobs = []           # (extension name, source, macros, include dirs, flags, depends)
        for ext in todo:
            if ext.name == "attnx.kernels":
                thr_c, thr_l = self._thread_flags()
                ext.extra_link_args = list(ext.extra_link_args or []) + thr_l
                jobs += [("core",) + job for job in self._core_jobs(thr_c)]
            macros = ext.define_macros[:] + [(u,) for u in ext.undef_macros]
            jobs += [(ext.name, src, macros, ext.include_dirs, ext.extra_compile_args or [],
                      ext.depends) for src in sorted(ext.sources)]
        jobs.sort(key=lambda j: -self._cost(j[1]))
        objects = {}
        workers = max(1, self.parallel if isinstance(self.parallel, int) and self.parallel > 1
                      else os.cpu_count() or 1)
        print(f"attnx: compiling {len(jobs)} C files, {workers} at a time", flush=True)
        t0 = time.monotonic()

        def compile_one(job):
            owner, src, macros, incs, extra, depends = job
            t = time.monotonic()
            objs = self.compiler.compile([src], output_dir=self.build_temp, macros=macros,
                                         include_dirs=incs, debug=self.debug,
                                         extra_postargs=extra, depends=depends)
            return owner, src, objs, time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(compile_one, job) for job in jobs]
            for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                owner, src, objs, dt = fut.result()
                objects.setdefault(owner, []).extend(objs)
                print(f"attnx: [{i:{len(str(len(jobs)))}d}/{len(jobs)}] {src} ({dt:.1f} s, "
                      f"{time.monotonic() - t0:.0f} s elapsed)", flush=True)
        for ext in todo:
            if ext.name == "attnx.kernels":
                ext.extra_objects = list(ext.extra_objects or []) + objects.get("core", [])
            # setuptools links; its compile step returns the objects built above
            compile_fn = self.compiler.compile
            self.compiler.compile = lambda sources, *a, _o=objects.get(ext.name, []), **k: list(_o)
            try:
                self.build_extension(ext)
            finally:
                self.compiler.compile = compile_fn
        print(f"attnx: built in {time.monotonic() - t0:.0f} s", flush=True)


directives = {"language_level": 3}
if sys.version_info >= (3, 13):
    directives["freethreading_compatible"] = True

extensions = [
    # depends: relink when any C source or header changes (setuptools only
    # looks at `sources` otherwise, and the core objects are extra_objects)
    Extension("attnx.kernels", ["attnx/kernels.pyx"], include_dirs=[INCLUDE],
              depends=CORE_DEPENDS),
    Extension(
        "attnx._core",
        ["attnx/_core.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          build_dir=os.path.join("build", "cython")),
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
)
