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
)

missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} packages already installed"
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
