# Sourced by the client scripts: argument check, a private work dir, failure helper.
# usage: <script> MODULE TOKEN_LABEL   (environment for the module, e.g. P11HA_CONF,
#        SOFTHSM2_CONF or P11_KIT_SERVER_ADDRESS, is passed through unchanged)
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 MODULE TOKEN_LABEL" >&2
    exit 2
fi
MODULE=$1
LABEL=$2
PIN=${PIN:-1234}
NAME=$(basename "$0")
fail() { echo "$NAME: FAIL: $*" >&2; exit 1; }
[ -r "$MODULE" ] || fail "module $MODULE not readable"
WORK=$(mktemp -d /tmp/p11ha-client.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
head -c 1000 /dev/urandom > "$WORK/data"
