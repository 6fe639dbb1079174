#!/bin/bash
# pkcs11-tool (OpenSC): list slots, list objects, sign with the RSA key (id 01) and verify the
# signature with openssl against the public key read from the token.
. "$(dirname "$0")/common.sh"
P=(pkcs11-tool --module "$MODULE")
out=$("${P[@]}" -L) || fail "-L: $out"
grep -q "token label *: $LABEL\$" <<<"$out" || fail "-L does not show token $LABEL: $out"
out=$("${P[@]}" --token-label "$LABEL" -O --login --pin "$PIN") || fail "-O: $out"
for want in "Private Key Object; RSA" "Private Key Object; EC" "Secret Key Object; AES"; do
    grep -q "$want" <<<"$out" || fail "-O lacks '$want': $out"
done
"${P[@]}" --token-label "$LABEL" --login --pin "$PIN" --sign --mechanism SHA256-RSA-PKCS \
    --id 01 -i "$WORK/data" -o "$WORK/sig" || fail "--sign"
"${P[@]}" --token-label "$LABEL" --read-object --type pubkey --id 01 -o "$WORK/pub.der" \
    || fail "--read-object pubkey"
openssl dgst -sha256 -verify "$WORK/pub.der" -keyform DER -signature "$WORK/sig" "$WORK/data" \
    || fail "openssl does not verify the signature"
echo "$NAME: OK"
