#!/usr/bin/env bash
# p11ha demo: three SoftHSM "HSMs" behind p11-kit servers, one HA group, two threads signing
# through libp11ha.so while one member is killed and restarted. Ends with the HA log and a
# summary; exits non-zero if any signature failed or the member was not recovered.
#
#   scripts/demo.sh
#
# Installs the system packages it needs first (scripts/install-deps.sh; root or sudo the first
# time). Takes well under a minute once built.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
    echo "demo: cargo not found: install Rust (https://rustup.rs; scripts/test.sh does it when missing)" >&2
    exit 1
}

echo "==> cargo build --release"
cargo build --release
echo "==> cargo run --release -p p11ha-testkit --example demo"
exec timeout -k 10 180 cargo run --release -p p11ha-testkit --example demo </dev/null
