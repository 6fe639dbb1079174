#!/bin/bash
# GnuTLS p11tool: list all objects after login, then --test-sign with the RSA private key.
. "$(dirname "$0")/common.sh"
export GNUTLS_PIN=$PIN
P=(p11tool --provider "$MODULE")
out=$("${P[@]}" --login --list-all "pkcs11:token=$LABEL") || fail "--list-all: $out"
url=$(grep -o "URL: pkcs11:.*" <<<"$out" | sed 's/^URL: //' \
      | grep "object=rsa" | grep "type=private" | head -n1) || true
[ -n "$url" ] || fail "no RSA private key URL in: $out"
"${P[@]}" --login --test-sign "$url" || fail "--test-sign $url"
echo "$NAME: OK"
