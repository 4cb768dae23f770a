#!/bin/sh
# .ci/neon.sh -- cross-compile the attnx C core for aarch64 and run its C unit
# tests under qemu-user, once per SIMD level the binary reports ("neon" and
# "scalar"), so the NEON kernels are checked on an x86-64 machine.
#
# Meant for CI on Debian bookworm x86-64, as root (or with sudo): installs
# gcc-aarch64-linux-gnu, qemu-user (and make) with apt-get when missing.
# Builds into a temporary directory, never into the source tree. Prints each
# level's closing "N passed, N failed" line; exits non-zero on any failure,
# or when the neon level did not run.
#
#   .ci/neon.sh                  -Werror on (NEON_WERROR=0 turns it off)
#   ATTNX_CSRC=/path .ci/neon.sh another copy of csrc
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
csrc=${ATTNX_CSRC:-$root/csrc}
cross=aarch64-linux-gnu
sysroot=/usr/$cross
werror=${NEON_WERROR:-1}

# ---- toolchain: only what is missing, no recommends (qemu-user-binfmt is
# not needed: the tests run through qemu-aarch64 explicitly)
need=
command -v "$cross-gcc" >/dev/null 2>&1 || need="$need gcc-$cross"
[ -e "$sysroot/include/stdio.h" ] || need="$need libc6-dev-arm64-cross"
command -v qemu-aarch64 >/dev/null 2>&1 || need="$need qemu-user"
command -v make >/dev/null 2>&1 || need="$need make"
if [ -n "$need" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "neon.sh: missing$need and no apt-get to install them" >&2
        exit 2
    fi
    sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "neon.sh: installing$need"
    aptlog=$(mktemp "${TMPDIR:-/tmp}/attnx-neon-apt.XXXXXX")
    # shellcheck disable=SC2086  # $need is a word list
    if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
               --no-install-recommends $need; } >"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        echo "neon.sh: apt-get failed" >&2
        rm -f "$aptlog"
        exit 2
    fi
    rm -f "$aptlog"
fi

# ---- cross build and tests (the Makefile's test target runs every level
# the test binary lists, each through $(RUNNER))
build=$(mktemp -d "${TMPDIR:-/tmp}/attnx-neon.XXXXXX")
trap 'rm -rf "$build"' EXIT
trap 'exit 130' INT TERM
log=$build/make.log
echo "neon.sh: $("$cross-gcc" --version | head -n 1); $(qemu-aarch64 --version | head -n 1)"
status=0
make -C "$csrc" BUILD="$build" CC="$cross-gcc" AR="$cross-ar" WERROR="$werror" \
    RUNNER="qemu-aarch64 -L $sysroot" test >"$log" 2>&1 || status=$?

# the levels, any failures, and each level's closing line
grep -E '^(== ATTNX_SIMD=|attnx C tests;|FAIL |level .* done|[0-9]+ passed, [0-9]+ failed)' "$log" |
    head -n 80 || true
if [ "$status" -ne 0 ]; then
    echo "neon.sh: FAILED (make exit status $status); last lines of the log:" >&2
    tail -n 30 "$log" >&2
    exit 1
fi
if ! grep -Eq '^level neon +done' "$log"; then
    echo "neon.sh: FAILED: the neon level did not run (levels: $(grep -m1 'levels available' "$log" || echo '?'))" >&2
    exit 1
fi
echo "neon.sh: OK (aarch64 build, WERROR=$werror, tests passed under qemu for every level)"
