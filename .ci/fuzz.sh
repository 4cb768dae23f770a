#!/usr/bin/env bash
# .ci/fuzz.sh -- build csrc/fuzz/fuzz_attnx.c with libFuzzer + ASan + UBSan
# (clang) against the attnx C core, replay the corpus kept in
# csrc/fuzz/corpus/, then fuzz for a bounded time from it.
#
# Meant for CI on Debian bookworm x86-64 (CI=true, root, no state). Installs
# clang when missing, and libFuzzer with it: in Debian the libFuzzer archive
# (libclang_rt.fuzzer-<arch>.a) is in libclang-rt-<major>-dev (bookworm:
# libclang-rt-14-dev), only a Recommends of clang's dependencies, so an
# install without recommends lacks it. Builds into a temporary directory,
# never into the source tree. Exits non-zero when any input fails a check
# or trips a sanitizer; the failing input is then kept (its path printed).
#
#   .ci/fuzz.sh                        60 s
#   FUZZ_SECONDS=3600 .ci/fuzz.sh      an hour
#   FUZZ_JOBS=2 .ci/fuzz.sh            libFuzzer's fork mode, 2 processes
#   FUZZ_KEEP=1 .ci/fuzz.sh            keep the build and the inputs found
#   FUZZ_NO_SIMD=1 .ci/fuzz.sh         portable kernels only (-DATTNX_NO_SIMD)
#   FUZZ_CC=clang-16 .ci/fuzz.sh       another clang
#
# The harness header (csrc/fuzz/fuzz_attnx.c) explains the input format,
# the checks, and how to replay or minimise one input by hand.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
csrc=$root/csrc
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
cc=${FUZZ_CC:-clang}
t_start=$(date +%s)
say() { printf '\n=== fuzz: %s (+%ds)\n' "$*" $(($(date +%s) - t_start)); }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/attnx-fuzz.XXXXXX")
keep=${FUZZ_KEEP:-0}
cleanup() { if [ "$keep" = 1 ]; then echo "fuzz: kept $tmp"; else rm -rf "$tmp"; fi; }
trap cleanup EXIT
fail() {
    keep=1   # the build and the failing input stay for a look
    printf '\nFUZZ: FAILED -- %s (%ds)\n' "$*" $(($(date +%s) - t_start))
    exit 1
}

apt_install() {
    sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "fuzz: installing $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- clang and libFuzzer
if ! command -v "$cc" >/dev/null 2>&1; then
    [ "$cc" = clang ] || fail "$cc not found"
    apt_install clang
fi
probe() {   # can $cc link a libFuzzer target?
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)\n{ (void)d; (void)n; return 0; }\n' \
        >"$tmp/probe.c"
    "$cc" -fsanitize=fuzzer,address,undefined "$tmp/probe.c" -o "$tmp/probe" >/dev/null 2>&1
}
if ! probe; then
    major=$("$cc" -dumpversion | cut -d. -f1)
    apt_install "libclang-rt-$major-dev"
    probe || fail "$cc cannot link -fsanitize=fuzzer even with libclang-rt-$major-dev"
fi

# ---- build: the core as the Makefile builds it (per-file ISA flags), with
# coverage instrumentation; without threads (-DATTNX_NO_THREADS), so that
# every run of an input is deterministic (the threaded paths are covered by
# .ci/sanitize.sh)
say "building with $("$cc" --version | head -1)"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="-std=c99 -ffp-contract=off -g -O2 -DATTNX_NO_THREADS $san"
# The sources as csrc/Makefile takes them: the entry points (api/), dispatch
# and the level files (levels/), a *_avx2.c / *_avx512.c file with that
# level's ISA flags (x86-64 only).
# FUZZ_NO_SIMD=1: the portable kernels alone, as setup.py's ATTNX_NO_SIMD.
defs=
srcs=
incs="-I$csrc -I$csrc/include -I$csrc/api -I$csrc/kernels"   # as the Makefile's INCLUDES
for f in "$csrc"/api/*.c "$csrc"/dispatch/*.c "$csrc"/levels/*.c; do
    f=${f#"$csrc"/}
    if [ "${FUZZ_NO_SIMD:-0}" = 1 ]; then
        case "$f" in *_avx2.c | *_avx512.c | *_neon.c) continue ;; esac
    fi
    srcs="$srcs $f"
done
[ "${FUZZ_NO_SIMD:-0}" = 1 ] && defs=-DATTNX_NO_SIMD
x86=0
case "$("$cc" -dumpmachine)" in x86_64*) x86=1 ;; esac
echo "fuzz: core sources:$srcs"
pids=()
for src in $srcs; do
    isa=
    if [ "$x86" = 1 ]; then
        case "$src" in
            *_avx2.c) isa="-mavx2 -mfma" ;;
            *_avx512.c) isa="-mavx512f -mavx2 -mfma" ;;
        esac
    fi
    # shellcheck disable=SC2086  # flag lists
    obj=$(echo "${src%.c}" | tr / _)
    "$cc" $cflags -fsanitize=fuzzer-no-link $isa $defs $incs -c "$csrc/$src" -o "$tmp/$obj.o" \
        2>"$tmp/$obj.log" &
    pids+=($!)
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { cat "$tmp"/*.log; fail "compiling the core"; }
done
# shellcheck disable=SC2086
"$cc" $cflags -Wall -Wextra -fsanitize=fuzzer $defs $incs "$csrc/fuzz/fuzz_attnx.c" "$tmp"/*.o -lm \
    -o "$tmp/fuzz_attnx" || fail "building the harness"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# ---- every input of the kept corpus, once: the regression suite
say "replaying csrc/fuzz/corpus ($(find "$csrc/fuzz/corpus" -type f | wc -l) inputs)"
mkdir -p "$tmp/corpus" "$tmp/artifacts"
"$tmp/fuzz_attnx" -artifact_prefix="$tmp/artifacts/" "$csrc/fuzz/corpus"/* >"$tmp/replay.log" 2>&1 || {
    tail -40 "$tmp/replay.log"
    fail "an input of csrc/fuzz/corpus fails (log: $tmp/replay.log)"
}
grep -m1 'attnx fuzz: levels' "$tmp/replay.log" || true

# ---- fuzz: new inputs go to $tmp/corpus, the kept corpus is read only
say "fuzzing for ${seconds}s (jobs: $jobs)"
fork=()
[ "$jobs" -gt 1 ] && fork=(-fork="$jobs" -ignore_crashes=0)
rc=0
"$tmp/fuzz_attnx" -max_total_time="$seconds" -timeout=20 -max_len=4096 -print_final_stats=1 \
    -artifact_prefix="$tmp/artifacts/" "${fork[@]}" "$tmp/corpus" "$csrc/fuzz/corpus" \
    >"$tmp/fuzz.log" 2>&1 || rc=$?

# the last status line and the final stats (executions, coverage)
status=$(grep -E '^#[0-9]+' "$tmp/fuzz.log" | tail -1 || true)
echo "$status"
grep -E '^stat::' "$tmp/fuzz.log" || true
found=$(find "$tmp/corpus" -type f | wc -l)
echo "fuzz: $found new corpus input(s) this run (in $tmp/corpus: FUZZ_KEEP=1 keeps them)"
if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$tmp/artifacts")" ]; then
    grep -E -A3 'CHECK FAILED|ERROR: (Address|Leak|libFuzzer)|runtime error' "$tmp/fuzz.log" | head -40 || true
    ls -l "$tmp/artifacts"
    fail "libFuzzer exit status $rc; input(s) in $tmp/artifacts, log $tmp/fuzz.log"
fi
# "#N DONE cov: C ft: F corp: K/S lim: L exec/s: E ..." (fork mode: "#N: cov: C
# ft: F corp: K exec/s E ...") -> "N runs, cov C, ft F, corpus K, E exec/s"
summary=$(sed -E 's/^#([0-9]+)[^c]*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+)[^e]*exec\/s:? ([0-9]+).*/\1 runs, cov \2, ft \3, corpus \4, \5 exec\/s/' <<<"$status")
printf '\nFUZZ: OK -- %ss of fuzzing: %s (%ds in all)\n' "$seconds" "$summary" $(($(date +%s) - t_start))
