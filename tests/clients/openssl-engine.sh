#!/bin/bash
# OpenSSL 3 with the libp11 pkcs11 engine: sign with the RSA key by PKCS#11 URI, export the
# public key through the engine and verify with plain openssl.
. "$(dirname "$0")/common.sh"
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
[ -r "$ENGINE" ] || fail "$ENGINE missing (libengine-pkcs11-openssl)"
cat > "$WORK/openssl.cnf" <<CNF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE
MODULE_PATH = $MODULE
init = 0
CNF
export OPENSSL_CONF="$WORK/openssl.cnf"
URI="pkcs11:token=$LABEL;object=rsa"
openssl dgst -sha256 -engine pkcs11 -keyform engine \
    -sign "$URI;type=private;pin-value=$PIN" -out "$WORK/sig" "$WORK/data" || fail "engine sign"
openssl pkey -engine pkcs11 -inform engine -pubin -in "$URI;type=public" -pubout -out "$WORK/pub.pem" \
    || fail "engine public key export"
openssl dgst -sha256 -verify "$WORK/pub.pem" -signature "$WORK/sig" "$WORK/data" \
    || fail "signature does not verify"
echo "$NAME: OK"
