#!/usr/bin/env bash
# p11ha's full test suite: the README's test command and what CI (.ci/run) runs.
#
#   scripts/test.sh
#
# Installs the system packages the tests need (scripts/install-deps.sh; needs root or sudo the
# first time), then: cargo fmt --check, clippy (-D warnings), release build, every test
# (unit, integration, doc) in release, and cargo doc with warnings as errors.
# Bounded: each step has a time limit and the whole run at most P11HA_TEST_BUDGET seconds
# (default 1740, i.e. 29 minutes; a normal run takes about 10 minutes).
set -euo pipefail

cd "$(dirname "$0")/.."
started=$SECONDS
step_no=0
# The whole run gets at most this many seconds (each step also has its own limit).
BUDGET=${P11HA_TEST_BUDGET:-1740}

step() {
    # step <time limit in seconds> <description> <command...>
    local limit=$1 what=$2
    shift 2
    step_no=$((step_no + 1))
    echo
    echo "==> [$step_no] $what ($*)"
    local t0=$SECONDS rc=0 left=$((BUDGET - (SECONDS - started)))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -le 0 ]; then
        echo "p11ha tests: FAILED (time budget of ${BUDGET}s used up before: $what)"
        exit 1
    fi
    # timeout signals its whole process group (cargo and the test binaries); -k: then SIGKILL.
    timeout -k 10 "$limit" "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "scripts/test.sh: FAILED at step $step_no ($what): timed out after ${limit}s" >&2
        else
            echo "scripts/test.sh: FAILED at step $step_no ($what): exit code $rc" >&2
        fi
        echo "p11ha tests: FAILED ($what) after $((SECONDS - started))s"
        exit 1
    fi
    echo "    ok in $((SECONDS - t0))s"
}

ensure_cargo() {
    if command -v cargo >/dev/null 2>&1; then
        return
    fi
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
        return
    fi
    echo "scripts/test.sh: cargo not found; installing a Rust toolchain with rustup" >&2
    if ! command -v curl >/dev/null 2>&1; then
        echo "scripts/test.sh: need curl to fetch rustup (apt-get install curl), or install Rust yourself" >&2
        exit 1
    fi
    # Debian 12's own rustc (1.63) is older than this crate's rust-version, so rustup it is.
    curl --proto '=https' --tlsv1.2 -sSf --max-time 120 https://sh.rustup.rs |
        sh -s -- -y --profile minimal --component rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
}

# cargo first: install-deps.sh installs cargo-deb with it.
ensure_cargo
echo "==> system packages (scripts/install-deps.sh)"
scripts/install-deps.sh
cargo --version

# Tests start p11-kit servers and SoftHSM tokens under /tmp; a terminal is never needed.
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
exec </dev/null

step 120 "format" cargo fmt --all -- --check
step 600 "clippy" cargo clippy --all-targets -- -D warnings
# Integration tests load target/release/libp11ha.so: build it before the tests, same profile.
step 600 "release build" cargo build --release
step 1320 "tests" cargo test --release --no-fail-fast
step 300 "docs" env RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --document-private-items
# The benchmark must build and its short smoke run complete (numbers are not judged here).
step 180 "benchmark smoke run" target/release/p11ha-bench --quick

echo
echo "p11ha tests: ALL PASSED ($step_no steps in $((SECONDS - started))s)"
