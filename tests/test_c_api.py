"""C-level reuse: the Cython cimport API, the capsule API for C, their
agreement with csrc/include/attnx_api.def, the frozen ABI, and the downstream examples
built against the installed attnx in a temporary directory."""
import ctypes
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import attnx
from attnx import kernels

pytestmark = pytest.mark.simd_independent
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ABI_FILE = os.path.join(HERE, "abi", "kernels_capi.txt")
PKG = os.path.dirname(attnx.__file__)

_GetName = ctypes.pythonapi.PyCapsule_GetName
_GetName.restype = ctypes.c_char_p
_GetName.argtypes = [ctypes.py_object]


def exported():
    """{name: C signature} of attnx.kernels' C-level exports (__pyx_capi__):
    Cython checks exactly these strings when a downstream module cimports."""
    return {name: _GetName(cap).decode() for name, cap in kernels.__pyx_capi__.items()}


def test_abi_frozen():
    """Adding an export is fine; changing or removing a frozen one breaks
    every downstream extension built against it, so it fails here."""
    frozen = {}
    for line in open(ABI_FILE):
        line = line.strip()
        if line and not line.startswith("#"):
            name, sig = line.split(None, 1)
            frozen[name] = sig
    now = exported()
    for name, sig in frozen.items():
        assert name in now, f"C-level export {name!r} was removed"
        assert now[name] == sig, f"signature of {name!r} changed: {now[name]!r} != {sig!r}"
    new = sorted(set(now) - set(frozen))
    if new:
        print(f"\nnew C-level exports not yet frozen (add them to {ABI_FILE}): {new}")


# --- one source of truth: attnx_api.def; kernels.pxd and the ABI agree with it ---

def _params(text):
    """'const double *q, size_t T' -> ('const double *', 'size_t')"""
    out = []
    for p in text.replace("\n", " ").split(","):
        p = " ".join(p.split())
        if p in ("", "void"):
            continue
        p = re.sub(r"\s*\b\w+$", "", p) if not p.endswith("*") else p   # drop the name
        out.append(p.replace(" *", "*").replace("*", " *").strip())
    return tuple(out)


def _src(*parts):
    for base in (ROOT, PKG):
        path = os.path.join(base, *parts)
        if os.path.exists(path):
            return open(path).read()
    pytest.skip(f"{os.path.join(*parts)} not found (not a source checkout)")


API_ENTRY = re.compile(r"^ATTNX_FN\((int|const char \*),\s*attnx_(\w+),\s*(\w+),\s*"
                       r"\(([^)]*)\),\s*\(([^)]*)\)\)", re.M | re.S)


def api_entries():
    """The entries of csrc/include/attnx_api.def: (name, member, return, params, args),
    in table order."""
    d = _src("csrc", "include", "attnx_api.def")
    return [(name, member, ret, params, args)
            for ret, name, member, params, args in API_ENTRY.findall(d)]


def header_prototypes():
    """name -> (return, parameter types): the prototypes attnx.h makes from
    attnx_api.def (and the table members, made from the same entries)."""
    return {name: (ret.strip(), _params(params)) for name, _, ret, params, _ in api_entries()}


def pxd_functions():
    pxd = open(os.path.join(PKG, "kernels.pxd")).read()
    return {name: (ret.strip(), _params(args))
            for ret, name, args in re.findall(r"^cdef (int|const char \*)\s*(\w+)\(([^)]*)\)\s*"
                                              r"noexcept nogil", pxd, re.M | re.S)}


PXD_ALIASES = {"simd_level_name": "simd_level"}


def test_pxd_matches_header():
    proto, pxd = header_prototypes(), pxd_functions()
    assert {"dot_scores", "softmax", "context", "attend"} <= set(pxd)
    for name, sig in pxd.items():
        cname = PXD_ALIASES.get(name, name)
        assert cname in proto, f"kernels.pxd declares {name} but attnx.h has no attnx_{cname}"
        assert proto[cname] == sig, f"{name}: pxd {sig} vs attnx.h {proto[cname]}"


def test_api_list_entries_are_consistent():
    """attnx_api.def is the one list: attnx.h, api_table.c and attnx_capi.h
    each expand it (so they agree by construction, and a prototype that does
    not match its body fails to compile). What the compiler cannot see: an
    entry's member is its name without attnx_, and its arguments are its
    parameters, in order, so attnx_capi.h's callers pass each one through."""
    entries = api_entries()
    d = _src("csrc", "include", "attnx_api.def")
    assert len(entries) == d.count("ATTNX_FN(") - 1   # every entry parsed (one is the usage line)
    assert [e[0] for e in entries][:5] == ["strerror", "dot_scores", "softmax", "context", "attend"]
    assert len({e[0] for e in entries}) == len(entries)
    for name, member, _, params, args in entries:
        assert member == name, f"attnx_{name}: table member {member}"
        names = [re.findall(r"(\w+)$", p.strip())[0] for p in params.split(",")
                 if p.strip() not in ("", "void")]
        assert [a.strip() for a in args.split(",") if a.strip()] == names, f"attnx_{name}: {args}"
    for f in ("include/attnx.h", "api/api_table.c", "include/attnx_capi.h"):
        assert '#include "attnx_api.def"' in _src("csrc", *f.split("/")), f


def _c_struct(text):
    """The fields of attnx_attention_params in a C text, comments and
    layout dropped: [(type, name), ...]."""
    body = re.search(r"typedef struct attnx_attention_params \{(.*?)\} attnx_attention_params;",
                     text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    fields = []
    for decl in filter(None, (" ".join(d.split()) for d in body.split(";"))):
        base, names = re.match(r"((?:const )?(?:unsigned )?\w+)\s+(.*)", decl).groups()
        for n in names.split(","):
            n = n.strip()
            fields.append((base + " " + "*" * n.count("*"), n.strip("* ")))
    return fields


def test_attention_params_agree_in_header_and_pxd():
    """The struct is written in attnx.h and, for Cython users who have no
    include path, in kernels.pxd (C text and Cython fields): all three the
    same fields in the same order."""
    header = _c_struct(_src("csrc", "include", "attnx.h"))
    pxd = open(os.path.join(PKG, "kernels.pxd")).read()
    assert _c_struct(pxd) == header
    block = re.search(r"ctypedef struct attnx_attention_params:\n((?:        .*\n)+)", pxd).group(1)
    cy = []
    for line in block.splitlines():
        decl = " ".join(line.split())
        base, name = re.match(r"((?:const )?(?:unsigned )?\w+)\s+(.*)", decl).groups()
        cy.append((base + " " + "*" * name.count("*"), name.strip("* ")))
    assert cy == header
    assert [n for _, n in header][:2] == ["size", "query"]


def test_capsule():
    cap = attnx._C_API
    assert _GetName(cap) == b"attnx._C_API"


# --- the downstream examples, built against the installed attnx --------------

def build_example(name, tmp_path, *extra_args):
    src = os.path.join(ROOT, "examples", name)
    if not os.path.isdir(src):
        pytest.skip("examples/ not present (not a source checkout)")
    pytest.importorskip("setuptools")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    env = {**os.environ, "CFLAGS": " ".join(extra_args)} if extra_args else None
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dst,
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return dst


def run_in(directory, code):
    p = subprocess.run([sys.executable, "-c", code], cwd=directory, capture_output=True,
                       text=True, timeout=120)
    return p


CHECK = """
import numpy as np, attnx
rng = np.random.default_rng(5)
q, K, V = rng.standard_normal((4, 16)), rng.standard_normal((33, 16)), rng.standard_normal((33, 7))
"""


def test_cython_downstream(tmp_path):
    pytest.importorskip("Cython")
    d = build_example("cython_downstream", tmp_path)
    p = run_in(d, CHECK + """
import beam_attention as ba
got = ba.attend_beams(q, K, V, 0.25)
want = attnx.attend(q, K, V, scale=0.25)
np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
x = rng.standard_normal(50) * 100
np.testing.assert_array_equal(ba.beam_scores(x.copy()), attnx.softmax(x))
print("ok")
""")
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_c_downstream(tmp_path):
    d = build_example("c_downstream", tmp_path)
    p = run_in(d, CHECK + """
import attnx_client as c
for i in range(4):
    np.testing.assert_allclose(c.attend(q[i], K, V, 0.5), attnx.attend(q[i], K, V, scale=0.5),
                               rtol=1e-15, atol=1e-15)
assert c.simd_level() == attnx.simd_level()
print(c.api_version())
""")
    assert p.returncode == 0, p.stdout + p.stderr
    assert int(p.stdout.strip()) >= 1


def test_c_downstream_refuses_an_older_attnx(tmp_path):
    d = build_example("c_downstream", tmp_path, "-DATTNX_CAPI_REQUIRED_VERSION=999")
    p = run_in(d, "import attnx_client")
    assert p.returncode != 0
    assert "ImportError" in p.stderr and "upgrade attnx" in p.stderr


def test_wheel_ships_headers_and_pxd():
    inc = attnx.get_include()
    for f in ("attnx.h", "attnx_api.def", "attnx_capi.h"):
        assert os.path.isfile(os.path.join(inc, f)), f
    assert os.path.isfile(os.path.join(PKG, "kernels.pxd"))


if __name__ == "__main__" and sys.argv[1:] == ["--freeze"]:
    # regenerate the frozen list after *adding* an export (never edit lines)
    with open(ABI_FILE, "w") as f:
        f.write("# C-level exports of attnx.kernels (__pyx_capi__): name, signature.\n"
                "# Append only: tests/test_c_api.py fails if a line changes or goes.\n")
        for name, sig in sorted(exported().items()):
            f.write(f"{name} {sig}\n")
