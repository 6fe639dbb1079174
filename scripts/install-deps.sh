#!/bin/bash
# Install the system packages p11ha's tests need on Debian 12 (bookworm).
# Idempotent: does nothing (no apt-get update) when everything is already installed.
# Works as root, or through sudo otherwise.
set -euo pipefail

PACKAGES=(
    softhsm2                  # /usr/lib/softhsm/libsofthsm2.so, softhsm2-util
    p11-kit p11-kit-modules   # p11-kit server, p11-kit-client.so
    libp11-kit-dev            # pkcs11.h for tests/c/ha_client.c
    opensc                    # pkcs11-tool, pkcs11-spy.so
    gnutls-bin                # p11tool
    openssl libengine-pkcs11-openssl   # OpenSSL 3 + the pkcs11 engine
    openssh-client            # ssh-keygen -D
    python3 python3-pykcs11   # PyKCS11 client (/usr/bin/python3)
    build-essential gcc       # cc for the C client
    gdb                       # thread stacks in tests/ha_chaos.rs failure messages
)

# cargo-deb builds the .deb (packaging/build-deb.sh, tests/install_deb.rs). Needs cargo; about
# 3 minutes to build the first time (CARGO_BUILD_JOBS=1), nothing once installed.
install_cargo_deb() {
    local cargo
    cargo=$(command -v cargo || true)
    if [ -z "$cargo" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then cargo=$HOME/.cargo/bin/cargo; fi
    if [ -z "$cargo" ]; then
        echo "install-deps: cargo not found: cargo-deb not installed (the .deb test will skip)"
    elif "$cargo" deb --version >/dev/null 2>&1; then
        echo "install-deps: cargo-deb already installed"
    else
        echo "install-deps: cargo install cargo-deb --locked"
        "$cargo" install cargo-deb --locked
    fi
}

missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages already installed"
    install_cargo_deb
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null; then
    SUDO=(sudo)
else
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
install_cargo_deb
