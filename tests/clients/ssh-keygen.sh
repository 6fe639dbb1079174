#!/bin/bash
# ssh-keygen -D: the module's public keys in OpenSSH form; expects the RSA and EC keys.
# (ssh-keygen lists every token of the module; the label is only reported.)
. "$(dirname "$0")/common.sh"
out=$(ssh-keygen -D "$MODULE") || fail "ssh-keygen -D: $out"
grep -q "^ssh-rsa " <<<"$out" || fail "no ssh-rsa key: $out"
grep -q "^ecdsa-sha2-nistp256 " <<<"$out" || fail "no ecdsa-sha2-nistp256 key: $out"
echo "$out"
echo "$NAME: OK (token $LABEL)"
