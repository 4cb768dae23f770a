#!/usr/bin/env bash
# .ci/sanitize.sh -- attnx under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   1. the C unit tests at every SIMD level (make -C csrc SANITIZE=1 test);
#   2. the Python extension built with -fsanitize=address,undefined into a
#      fresh venv, and the whole pytest suite run against it (every SIMD level
#      is exercised by the suite itself, see tests/conftest.py).
#
# Meant for CI on Debian bookworm x86-64 (CI=true, root, no state); installs
# a C toolchain with apt-get when one is missing. Everything it builds goes to
# a temporary directory, never into the source tree. Exits non-zero on any
# test failure or sanitizer report, including one in a subprocess that a test
# spawned (reports are logged to files and checked at the end).
#
#   .ci/sanitize.sh                    both stages
#   SANITIZE_STAGES=c .ci/sanitize.sh  only the C tests (c, py, or "c py")
#   KEEP_TMP=1 .ci/sanitize.sh         keep the temporary directory
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
stages=${SANITIZE_STAGES:-c py}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
t_start=$(date +%s)
step() { printf '\n=== sanitize: %s (+%ds)\n' "$*" $(($(date +%s) - t_start)); }
fail() { printf '\nSANITIZE: FAILED -- %s (%ds)\n' "$*" $(($(date +%s) - t_start)); exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/attnx-sanitize.XXXXXX")
cleanup() { if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi; }
trap cleanup EXIT

# ---- toolchain (gcc ships libasan/libubsan; python3-venv for a bare Debian)
need=
command -v gcc >/dev/null 2>&1 || need="$need build-essential"
command -v make >/dev/null 2>&1 || need="$need make"
command -v python3 >/dev/null 2>&1 || need="$need python3 python3-venv python3-dev"
if [ -n "$need" ]; then
    step "installing$need"
    sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    # shellcheck disable=SC2086  # $need is a word list
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $need >/dev/null
fi
libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
# -print-file-name echoes the bare name when it finds nothing
[ -f "$libasan" ] && [ -f "$libubsan" ] || fail "gcc has no libasan.so/libubsan.so"

# Sanitizer runtime options shared by both stages. Every report is fatal
# (abort_on_error: a signal, not a plain exit code a caller could mistake)
# and is also written to $tmp/reports/, so that a report from a subprocess
# whose exit status no test looks at still fails this script.
# allocator_may_return_null: an impossible allocation returns NULL as libc's
# malloc would (tests/test_edges.py expects MemoryError for a 2^49-byte
# copy), instead of ASan aborting on it.
mkdir -p "$tmp/reports"
asan_opts="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1"
asan_opts="$asan_opts:detect_stack_use_after_return=1:strict_string_checks=1"
ubsan_opts="print_stacktrace=1:halt_on_error=1:abort_on_error=1"
with_logs() {   # with_logs NAME: the options, with reports also logged to files
    printf 'ASAN_OPTIONS=%s:log_path=%s UBSAN_OPTIONS=%s:log_path=%s' \
        "$asan_opts" "$tmp/reports/$1-asan" "$ubsan_opts" "$tmp/reports/$1-ubsan"
}
check_reports() {   # fail when any sanitizer wrote an error report
    # (warnings, such as ASan's "failed to allocate" for the deliberately
    # impossible allocations in tests/test_edges.py, are shown, not fatal)
    local f bad=
    for f in $(find "$tmp/reports" -type f -size +0 | sort); do
        if grep -qE 'ERROR: [A-Za-z]+Sanitizer|runtime error:|^SUMMARY: ' "$f"; then
            bad=1; printf '\n--- sanitizer report %s\n' "$f"; cat "$f"
        else
            printf -- '--- sanitizer warnings (not errors) in %s:\n' "$f"; sort "$f" | uniq -c
        fi
        rm -f "$f"
    done
    [ -z "$bad" ] || fail "sanitizer report(s) above, from $1"
}

# ---- 1. C unit tests, every SIMD level ---------------------------------------
if [[ " $stages " == *" c "* ]]; then
    step "C unit tests under ASan+UBSan, every SIMD level"
    # shellcheck disable=SC2046  # with_logs prints NAME=VALUE words
    env $(with_logs ctests) make -C "$root/csrc" -j"$(nproc)" BUILD="$tmp/c" SANITIZE=1 test \
        || { check_reports "the C tests"; fail "C unit tests"; }
    check_reports "the C tests"
fi

# ---- 2. the Python extension and the pytest suite ----------------------------
if [[ " $stages " == *" py "* ]]; then
    step "snapshot of the source tree"
    # pip builds in the directory it is given (setup.py's cythonize writes
    # build/ there) and pytest/hypothesis write caches beside the tests: both
    # happen in a copy. Tracked and new files, as git sees them, else all.
    mkdir "$tmp/src"
    if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$root" && git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
            tar --null -T - -cf -) | tar -xf - -C "$tmp/src"
    else
        tar -C "$root" --exclude=./build --exclude='./.venv*' --exclude=./.git -cf - . |
            tar -xf - -C "$tmp/src"
    fi

    step "building the extension with -fsanitize=address,undefined"
    python3 -m venv "$tmp/venv"
    san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
    # -g: reports name source lines. CC carries -fsanitize as well because
    # setuptools links executables with plain $CC (no CFLAGS, no LDFLAGS):
    # it links any probe with the sanitizers' symbols. Nothing instrumented
    # runs during the build, so pip needs no preloaded runtime.
    (cd "$tmp/src" && CC="gcc -fsanitize=address,undefined" CFLAGS="$san -g" \
        LDFLAGS="-fsanitize=address,undefined" \
        "$tmp/venv/bin/pip" install -q ".[test]") || fail "pip install of the sanitized build"
    # both extensions must really carry the sanitizers (nm output captured:
    # grep -q would close the pipe early and pipefail would report nm's SIGPIPE)
    for so in $(find "$tmp/venv/lib" -path '*/site-packages/attnx/*.so'); do
        syms=$(nm -D "$so")
        grep -q '__asan_report' <<<"$syms" || fail "$so is not ASan-instrumented"
        grep -q '__ubsan_handle' <<<"$syms" || fail "$so is not UBSan-instrumented"
    done
    [ -n "${so:-}" ] || fail "no attnx extension found in the venv"

    step "pytest under ASan+UBSan"
    # LD_PRELOAD: the python binary is not instrumented, so the runtimes must
    # be loaded first. PYTHONMALLOC=malloc routes Python's small objects
    # through malloc too, where ASan can see them. ATTNX_LEAK_CALLS: the
    # leak test's million calls are too slow under ASan; 20000 still cover
    # its warm-up and measurement loops.
    # shellcheck disable=SC2046  # with_logs prints NAME=VALUE words
    py_env=(
        "LD_PRELOAD=$libasan $libubsan"
        PYTHONMALLOC=malloc
        ATTNX_LEAK_CALLS=20000
        $(with_logs pytest)
    )
    # (python -c runs outside the source tree: it puts the current directory
    # first on sys.path, and the tree's attnx/ has no compiled modules)
    (cd "$tmp" && env "${py_env[@]}" "$tmp/venv/bin/python" -c \
        'import attnx, sys; print("attnx", attnx.__version__, attnx.__file__); print(attnx.build_info()); print("levels:", " ".join(attnx.simd_available()))') \
        || { check_reports "the import check"; fail "importing the sanitized attnx"; }
    # the threaded paths (the pthread pool) must be part of what is sanitized
    (cd "$tmp" && env "${py_env[@]}" "$tmp/venv/bin/python" -c \
        'import attnx, sys; sys.exit("threads: pthreads" not in attnx.build_info())') \
        || fail "the sanitized build has no threads"
    # The suite in two runs. tests/test_memory.py asserts that RSS does not
    # grow over many calls, but ASan deliberately keeps freed memory out of
    # reuse (a quarantine of up to 256 MB, to catch use-after-free), so RSS
    # grows with every byte freed, leak or not (measured: +3 to +5 MiB over
    # 20000 calls against the test's 4 MiB bound; with the quarantine off,
    # +0 KiB). That file runs with the quarantine off, every other check on;
    # the rest of the suite runs with it on.
    mem_test=tests/test_memory.py
    rc=0
    (cd "$tmp/src" && env "${py_env[@]}" "$tmp/venv/bin/pytest" -p no:cacheprovider -q \
        --ignore="$mem_test") || rc=$?
    check_reports "the pytest run"
    [ "$rc" -eq 0 ] || fail "pytest (exit status $rc)"
    if [ -f "$tmp/src/$mem_test" ]; then
        step "pytest $mem_test under ASan+UBSan, ASan's quarantine off"
        (cd "$tmp/src" && env "${py_env[@]}" \
            "ASAN_OPTIONS=$asan_opts:quarantine_size_mb=0:thread_local_quarantine_size_kb=0:log_path=$tmp/reports/memtest-asan" \
            "$tmp/venv/bin/pytest" -p no:cacheprovider -q "$mem_test") || rc=$?
        check_reports "the $mem_test run"
        [ "$rc" -eq 0 ] || fail "pytest $mem_test (exit status $rc)"
    fi
fi

printf '\nSANITIZE: OK -- stages: %s; no sanitizer reports (%ds)\n' "$stages" \
    $(($(date +%s) - t_start))
