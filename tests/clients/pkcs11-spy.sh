#!/bin/bash
# pkcs11-spy (OpenSC's call logger, what administrators put in front of a module to debug it)
# over the module, driven by pkcs11-tool: list slots, sign with the RSA key (id 01); the spy's
# log must show the calls. The spy asks for the PKCS#11 3.0 interface and writes into it.
. "$(dirname "$0")/common.sh"
SPY=
for f in /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib/pkcs11/pkcs11-spy.so; do
    if [ -e "$f" ]; then SPY=$f; break; fi
done
[ -n "$SPY" ] || fail "pkcs11-spy.so not installed (Debian package opensc-pkcs11)"
export PKCS11SPY="$MODULE" PKCS11SPY_OUTPUT="$WORK/spy.log"
P=(pkcs11-tool --module "$SPY")
out=$("${P[@]}" -L) || fail "-L: $out"
grep -q "token label *: $LABEL\$" <<<"$out" || fail "-L does not show token $LABEL: $out"
"${P[@]}" --token-label "$LABEL" --login --pin "$PIN" --sign --mechanism SHA256-RSA-PKCS \
    --id 01 -i "$WORK/data" -o "$WORK/sig" || fail "--sign"
grep -q "C_Sign" "$WORK/spy.log" || fail "the spy log shows no C_Sign"
echo "$NAME: OK"
