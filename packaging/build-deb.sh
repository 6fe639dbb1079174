#!/usr/bin/env bash
# Builds the p11ha .deb (and its p11ha-dbgsym .ddeb) into target/debian/.
#
#   packaging/build-deb.sh [cargo-deb options...]
#
# 1. cargo build --release (the workspace, as scripts/test.sh builds it, so nothing rebuilds);
# 2. the man page p11ha(1) from `p11ha --man` (the text of `p11ha --help`), gzipped;
# 3. cargo deb --no-build with [package.metadata.deb] of Cargo.toml.
# Needs cargo-deb (`cargo install cargo-deb --locked`), dpkg-dev, binutils, gzip.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb: cargo-deb is not installed: cargo install cargo-deb --locked" >&2
    exit 1
fi
# [package.metadata.deb] names the amd64 multiarch directory.
if command -v dpkg-architecture >/dev/null &&
    [ "$(dpkg-architecture -qDEB_HOST_MULTIARCH)" != x86_64-linux-gnu ]; then
    echo "build-deb: Cargo.toml's assets name usr/lib/x86_64-linux-gnu/pkcs11; this is $(dpkg-architecture -qDEB_HOST_MULTIARCH)" >&2
    exit 1
fi

cargo build --release --locked
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target/release/packaging"
"$target/release/p11ha" --man >"$target/release/packaging/p11ha.1"
# -n: no name or time stamp in the gzip header, so the same page gives the same bytes.
gzip -9nf "$target/release/packaging/p11ha.1"
cargo deb --no-build --locked -p p11ha "$@"
